//! The `Spawn` start method: re-execute `/proc/self/exe` with a role argument; the new program
//! becomes a worker in [`init`](super::init::init), on the pipe end and progress slot it
//! inherited.

use std::process::Command;

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

/// Spawns a worker serving a new pipe and `slot`.
pub(super) fn start(slot: ProgressSlot) -> Result<Worker, PoolError> {
    let guard = FORK_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let (ours, theirs) = transport::pair()?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(ROLE_SPAWN);
    theirs.pass_to_command(&mut cmd, ENV_LINK)?;
    slot.segment()
        .pass_to_command(&mut cmd, ENV_SLOT)
        .map_err(|e| PoolError::os("passing the progress slot", e))?;
    ipc_shm::os::command_dies_with_parent(&mut cmd);
    let child = cmd
        .spawn()
        .map_err(|e| PoolError::os("spawning a worker", e))?;
    drop(cmd);
    theirs_handed_over(theirs);
    drop(guard);
    let pid = child.id();
    // The pool reaps the worker itself (waitpid by pid); std's handle is not needed.
    drop(child);
    Ok(Worker::new(pid, ours, slot, Reaper::Child))
}

/// In a program started by [`start`]: serve the pool on the inherited pipe and slot; returns
/// the exit code.
pub(super) fn run_spawned_worker() -> i32 {
    let link = PipeLink::from_inherited(ENV_LINK);
    let slot = ipc_shm::OpenOptions::new(PROGRESS_SLOT_TAG)
        .from_inherited(ENV_SLOT)
        .ok()
        .and_then(ProgressSlot::from_segment);
    match (link, slot) {
        (Ok(link), Some(slot)) => crate::worker::serve(link, &slot),
        _ => crate::worker::code::LINK,
    }
}
