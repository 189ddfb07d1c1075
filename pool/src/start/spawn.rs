//! The `Spawn` start method: re-execute `/proc/self/exe` with a role argument; the new program
//! becomes a worker in [`init`](super::init::init), on the pipe end and progress slot it
//! inherited.

use crate::error::PoolError;
use crate::slot::{PROGRESS_SLOT_TAG, ProgressSlot};
use crate::start::{FORK_LOCK, Reaper, Worker, theirs_handed_over};
use crate::wire::transport::{self, PipeLink};

/// The role argument (`argv[1]`) of a spawned worker. A role travels as an argument, not as an
/// environment variable, so that the programs a worker starts cannot inherit it, and nothing has
/// to remove it from the environment (which would be `unsafe` once threads may exist).
pub(super) const ROLE_SPAWN: &str = "--ipc-pool-role=spawn";
/// The variable that names a spawned worker's inherited pipe end.
const ENV_LINK: &str = "IPC_POOL_LINK";
/// The variable that names a spawned worker's inherited progress slot.
const ENV_SLOT: &str = "IPC_POOL_SLOT";
/// The variable that names the pool's process, which a spawned worker must die with.
pub(crate) const ENV_PARENT: &str = "IPC_POOL_PARENT";

/// Spawns a worker serving a new pipe and `slot`.
///
/// Through `posix_spawn` ([`ipc_shm::os::Spawn`]), not `std::process::Command`: with the
/// `pre_exec` closures that die-with-parent and descriptor passing need there, std forks, which
/// copies the page tables of the whole pool process (milliseconds for a large one). The worker
/// asks to die with its parent itself, first thing (see [`run_spawned_worker`]).
pub(super) fn start(slot: ProgressSlot) -> Result<Worker, PoolError> {
    let guard = FORK_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let (ours, theirs) = transport::pair()?;
    let mut cmd = ipc_shm::os::Spawn::new("/proc/self/exe")
        .and_then(|mut cmd| {
            cmd.arg(ROLE_SPAWN)?;
            Ok(cmd)
        })
        .map_err(|e| PoolError::os("spawning a worker", e))?;
    cmd.env(ENV_PARENT, ipc_shm::os::pid().to_string());
    theirs.pass_to_command(&mut cmd, ENV_LINK)?;
    slot.segment()
        .pass_to_command(&mut cmd, ENV_SLOT)
        .map_err(|e| PoolError::os("passing the progress slot", e))?;
    let pid = cmd
        .spawn()
        .map_err(|e| PoolError::os("spawning a worker", e))?;
    drop(cmd);
    theirs_handed_over(theirs);
    drop(guard);
    // The pool reaps the worker itself (waitpid by pid).
    Ok(Worker::new(pid, ours, slot, Reaper::Child))
}

/// In a program started by [`start`]: serve the pool on the inherited pipe and slot; returns
/// the exit code.
///
/// First of all it asks for SIGKILL when its parent dies and checks that the parent is still
/// the pool's process: one that died before the request leaves the worker with another parent,
/// and the worker exits at once with [`PARENT_GONE`](ipc_shm::os::PARENT_GONE).
pub(super) fn run_spawned_worker() -> i32 {
    let parent = std::env::var(ENV_PARENT)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok());
    match parent {
        Some(parent) if ipc_shm::os::die_with_parent(parent).is_ok() => {}
        Some(_) => return ipc_shm::os::PARENT_GONE,
        None => return crate::worker::code::LINK,
    }
    let link = PipeLink::from_inherited(ENV_LINK);
    let slot = ipc_shm::OpenOptions::new(PROGRESS_SLOT_TAG)
        .from_inherited(ENV_SLOT)
        .ok()
        .and_then(ProgressSlot::from_segment);
    match (link, slot) {
        (Ok(link), Some(slot)) => crate::worker::serve(link, &slot, crate::worker::JobWait::Poll),
        _ => crate::worker::code::LINK,
    }
}

/// Needs the `ctor` feature: the re-run test binary gets its worker role before `main`.
#[cfg(all(test, feature = "ctor"))]
mod tests {
    use std::process::Command;

    use super::{ENV_PARENT, ROLE_SPAWN};

    /// This test binary re-run as a spawned worker (the `ctor` feature gives it its role) whose
    /// pool process is `parent`; returns its exit code.
    fn worker_exit_code(parent: u32) -> Option<i32> {
        let status = Command::new("/proc/self/exe")
            .arg(ROLE_SPAWN)
            .env(ENV_PARENT, parent.to_string())
            .status()
            .expect("running this test binary as a worker");
        status.code()
    }

    /// A worker whose pool process died before the worker could ask to die with it has another
    /// parent by then: it exits at once with `PARENT_GONE` instead of serving anybody. One whose
    /// parent is the pool's gets past that check (and, with no pipe to serve here, exits with
    /// the link's code).
    #[test]
    fn spawned_worker_whose_pool_is_gone_exits() {
        // A pool process that is gone: a process that ended and was reaped.
        let mut gone = Command::new("/bin/true").spawn().expect("/bin/true");
        let gone_pid = gone.id();
        gone.wait().expect("reaping /bin/true");
        assert_eq!(worker_exit_code(gone_pid), Some(ipc_shm::os::PARENT_GONE));
        assert_eq!(
            worker_exit_code(ipc_shm::os::pid()),
            Some(crate::worker::code::LINK)
        );
    }
}
