//! The `Spawn` start method: re-execute `/proc/self/exe` with a role argument; the new program
//! becomes a worker in [`init`](super::init::init), on the pipe end and progress slot it
//! inherited.
//!
//! # The standby
//!
//! An `exec` of the program costs about a millisecond before the new worker can greet its pool
//! (loading and starting a large executable), on the path from a worker's death to its
//! replacement. So, as the fork server keeps a blank child, this process keeps one *standby*: a
//! program already executed with [`ROLE_STANDBY`], waiting on a socket of its own for a
//! worker's descriptors (the fork server's request message, [`ToServer::Fork`]). A worker
//! start hands them to the standby (one `sendmsg`) and it becomes that worker; a thread of this
//! process ([`keeper`]) executes the next standby once no worker has started for
//! [`STANDBY_AFTER`] (made at once, it would compete with the worker just started for the CPUs).
//! The first standby is made after the first `Spawn` worker starts, so a program that never
//! uses `Spawn` has none, and one that does has one idle process at most. A standby that died
//! (killed from outside) is reaped silently and the worker spawned as before. Until it becomes a
//! worker, a standby is named `pool-blank`, like the fork server's blanks; it dies with this
//! process, as workers do.
//!
//! The keeper *primes* each standby as it executes it ([`Standby::prime`]): it hands it a new
//! worker's pipe and progress slot at once (`ToServer::Prime`, as the fork server's blanks are
//! primed), so that the standby greets this process as soon as it has started and waits on the
//! pipe, still named `pool-blank`. A worker start then takes a worker that is already up (and
//! tells it, `Seated`, so that it takes a worker's name): no pipe to make, no process to wake,
//! its greeting waiting. A primed standby killed while it waits is seen at the start (its
//! pidfd), reaped, and the worker spawned as before. The replacement (death seen -> replacement
//! ready) went from 375-465 us to 185-195 us (`compare --workloads crash_recovery`, slow spells
//! of the 2-vCPU VM; a scratch probe's 20 crashes: medians about 400 -> 130 us).
//!
//! A worker started on a standby is still a fresh execution of the program; only its start was
//! earlier. Its environment is this process's at the standby's start.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::error::PoolError;
use crate::slot::{PROGRESS_SLOT_TAG, ProgressSlot};
use crate::start::forkserver::{self, BLANK_NAME, ToServer};
use crate::start::{FORK_LOCK, Reaper, Worker, new_slot, theirs_handed_over};
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

/// The role argument of a standby (see the module docs).
pub(super) const ROLE_STANDBY: &str = "--ipc-pool-role=spawn-standby";
/// The variable that names a standby's inherited socket.
const ENV_STANDBY: &str = "IPC_POOL_STANDBY";
/// How long no worker must have started before the keeper executes the next standby.
const STANDBY_AFTER: Duration = Duration::from_millis(2);

/// Starts a worker: the ready standby, primed (see [`Standby::prime`]); else one serving a new pipe and
/// progress slot, on an unprimed standby or spawned; then asks the keeper for the next standby.
pub(super) fn start() -> Result<Worker, PoolError> {
    let standby = take_standby();
    let worker = match standby {
        Some(Standby {
            pid,
            primed: Some((ours, slot)),
            ..
        }) => {
            let mut worker = Worker::new(pid, ours, slot, Reaper::Child);
            if worker.wait_exit(Duration::ZERO) {
                // Killed from outside while it waited: reaped, and a worker spawned instead.
                let _ = worker.reap();
                spawn_new()?
            } else {
                worker.seated();
                worker
            }
        }
        standby => {
            let slot = new_slot()?;
            let on_standby = match standby {
                Some(standby) => start_on(standby, &slot)?,
                None => None,
            };
            match on_standby {
                Some((pid, ours)) => Worker::new(pid, ours, slot, Reaper::Child),
                None => spawn_worker(slot)?,
            }
        }
    };
    want_standby();
    Ok(worker)
}

/// Spawns a worker on a new progress slot.
fn spawn_new() -> Result<Worker, PoolError> {
    spawn_worker(new_slot()?)
}

/// A program executed ahead of the worker it will become (see the module docs).
struct Standby {
    pid: u32,
    /// This process's end of the standby's socket: the worker's descriptors go through it.
    sock: OwnedFd,
    /// The process that executed it: only that one can hand it work and reap it (a forked
    /// child inherits this record, not the standby).
    owner: u32,
    /// The pool's end of the pipe and the progress slot the standby was primed with, if it
    /// was (see [`Standby::prime`]).
    primed: Option<(PipeLink, ProgressSlot)>,
}

impl Standby {
    /// Executes a standby (the caller holds [`FORK_LOCK`], as for a worker).
    fn spawn() -> io::Result<Standby> {
        let (ours, theirs) = ipc_shm::os::seqpacket_pair()?;
        let mut cmd = ipc_shm::os::Spawn::new("/proc/self/exe")?;
        cmd.arg(ROLE_STANDBY)?;
        let owner = ipc_shm::os::pid();
        cmd.env(ENV_PARENT, owner.to_string());
        ipc_shm::pass_fd_to_command(&mut cmd, theirs.as_fd(), ENV_STANDBY)?;
        let pid = cmd.spawn()?;
        Ok(Standby {
            pid,
            sock: ours,
            owner,
            primed: None,
        })
    }

    /// Primes the standby just executed (the caller holds [`FORK_LOCK`]): hands it a new
    /// worker's pipe and progress slot at once (`ToServer::Prime`), so that it greets this
    /// process as soon as it runs and waits on the pipe, still named as a standby. A worker
    /// start then takes a worker that is already up: no pipe to make, no process to wake, its
    /// greeting waiting (as the fork server's blanks, `forkserver::prime`). Left unprimed if
    /// the pipe or slot cannot be made, or the standby cannot take them.
    fn prime(&mut self) {
        self.primed = forkserver::prime_over(self.sock.as_fd());
    }

    /// Ends a standby that will not be used (killed and reaped, silently).
    fn discard(self) {
        let _ = ipc_shm::os::kill(self.pid, ipc_shm::os::Signal::SIGKILL);
        let _ = ipc_shm::os::reap(self.pid);
    }
}

/// Hands a new pipe's worker end and `slot` to `standby`: its pid and the pool's end, or `None`
/// if the standby could not take them (it died; it is reaped here) and the caller spawns.
fn start_on(standby: Standby, slot: &ProgressSlot) -> Result<Option<(u32, PipeLink)>, PoolError> {
    let guard = FORK_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let parts = transport::pair().and_then(|(ours, theirs)| {
        let parts = theirs
            .into_raw_parts()
            .map_err(|e| PoolError::os("handing the worker pipe to a standby", e))?;
        Ok((ours, parts))
    });
    let (ours, (shm, sock, side)) = match parts {
        Ok(parts) => parts,
        Err(e) => {
            standby.discard();
            return Err(e);
        }
    };
    let fds: [BorrowedFd<'_>; 3] = [shm.as_fd(), sock.as_fd(), slot.segment().fd()];
    let sent = forkserver::send_msg(
        standby.sock.as_fd(),
        &ToServer::Fork { side: side as u32 },
        &fds,
    );
    // The standby holds its own copies now (or never will): ours close before other forks.
    drop((shm, sock));
    drop(guard);
    match sent {
        Ok(()) => Ok(Some((standby.pid, ours))),
        Err(_) => {
            standby.discard();
            Ok(None)
        }
    }
}

/// The standby and its keeper's state.
struct Keeper {
    ready: Option<Standby>,
    /// Worker starts so far (the keeper waits for a pause in them).
    starts: u64,
    /// The process whose keeper thread runs (0: none; a forked child inherits its parent's
    /// record, but not the thread).
    running_in: u32,
}

static KEEPER: Mutex<Keeper> = Mutex::new(Keeper {
    ready: None,
    starts: 0,
    running_in: 0,
});
static CHANGED: Condvar = Condvar::new();

fn keeper_state() -> std::sync::MutexGuard<'static, Keeper> {
    KEEPER.lock().unwrap_or_else(|p| p.into_inner())
}

/// The keeper's state held across a `Fork` worker's fork (see `fork::start`): the child's copy
/// is then held only by the forking thread, which drops it, so a `Spawn` pool made by one of
/// the worker's tasks can take it. Taken before [`FORK_LOCK`], the keeper's own order.
pub(super) fn hold_for_fork() -> impl Drop {
    keeper_state()
}

/// The ready standby, if this process made one.
fn take_standby() -> Option<Standby> {
    let standby = keeper_state().ready.take()?;
    if standby.owner == ipc_shm::os::pid() {
        return Some(standby);
    }
    // A forked child's copy of its parent's record: the standby is not ours to use or end,
    // nor is the pipe it was primed with (dropped here without disturbing the parent's).
    if let Some((ours, _slot)) = standby.primed {
        ours.forget_in_child();
    }
    None
}

/// Counts a worker start and wakes the keeper (starting it the first time).
fn want_standby() {
    let mut state = keeper_state();
    state.starts += 1;
    let me = ipc_shm::os::pid();
    if state.running_in != me {
        // A thread that lives as long as the process: a standby asks to die with the thread
        // that executed it (`PR_SET_PDEATHSIG` follows the creating thread).
        let started = std::thread::Builder::new()
            .name("pool-spawn-standby".into())
            .spawn(keeper);
        if started.is_ok() {
            state.running_in = me;
        }
    }
    drop(state);
    CHANGED.notify_all();
}

/// The keeper thread: whenever no standby is ready and worker starts have paused for
/// [`STANDBY_AFTER`], executes one. It holds the state's lock while it does, so the test
/// support ([`standby_pid`]) never misses a standby that already exists.
fn keeper() {
    let mut state = keeper_state();
    loop {
        if state.ready.is_some() || state.starts == 0 {
            state = CHANGED.wait(state).unwrap_or_else(|p| p.into_inner());
            continue;
        }
        let seen = state.starts;
        state = CHANGED
            .wait_timeout(state, STANDBY_AFTER)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        if state.starts != seen || state.ready.is_some() {
            continue;
        }
        let made = {
            let _fork = FORK_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            Standby::spawn().map(|mut standby| {
                standby.prime();
                standby
            })
        };
        match made {
            Ok(standby) => state.ready = Some(standby),
            // Not now (out of processes or descriptors): again after the next worker start.
            Err(_) => state.starts = 0,
        }
    }
}

/// The pid of this process's ready standby, if any (test support: a scan of `/proc` must not
/// take it for a worker or a spare; call it after the scan).
pub(crate) fn standby_pid() -> Option<u32> {
    let state = keeper_state();
    state
        .ready
        .as_ref()
        .filter(|s| s.owner == ipc_shm::os::pid())
        .map(|s| s.pid)
}

/// In a program started as a standby: waits for a worker's descriptors, then serves that pool
/// as a spawned worker does; returns the exit code (the link's, if the socket closes instead).
pub(super) fn run_standby() -> i32 {
    if let Some(code) = die_with_pool() {
        return code;
    }
    let own = ipc_shm::os::thread_name().ok();
    let _ = ipc_shm::os::set_thread_name(BLANK_NAME);
    let Ok(sock) = ipc_shm::take_inherited_fd(ENV_STANDBY) else {
        return crate::worker::code::LINK;
    };
    crate::worker::prewarm();
    match forkserver::recv_msg::<ToServer>(sock.as_fd()) {
        Ok(Some((ToServer::Fork { side }, fds))) => {
            drop(sock);
            if let Some(name) = own {
                let _ = ipc_shm::os::set_thread_name(&name);
            }
            forkserver::become_worker(side, fds, None)
        }
        // Primed: greets the pool now, takes its name once a seat takes it (`Seated`).
        Ok(Some((ToServer::Prime { side }, fds))) => {
            drop(sock);
            forkserver::become_worker(side, fds, own)
        }
        _ => crate::worker::code::LINK,
    }
}

/// First thing in a spawned worker or standby: asks for SIGKILL when the pool's process dies;
/// `Some(exit code)` if it cannot (the pool's process is already gone, or unnamed).
fn die_with_pool() -> Option<i32> {
    let parent = std::env::var(ENV_PARENT)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok());
    match parent {
        Some(parent) if ipc_shm::os::die_with_parent(parent).is_ok() => None,
        Some(_) => Some(ipc_shm::os::PARENT_GONE),
        None => Some(crate::worker::code::LINK),
    }
}

/// Spawns a worker serving a new pipe and `slot`.
///
/// Through `posix_spawn` ([`ipc_shm::os::Spawn`]), not `std::process::Command`: with the
/// `pre_exec` closures that die-with-parent and descriptor passing need there, std forks, which
/// copies the page tables of the whole pool process (milliseconds for a large one). The worker
/// asks to die with its parent itself, first thing (see [`run_spawned_worker`]).
fn spawn_worker(slot: ProgressSlot) -> Result<Worker, PoolError> {
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
    if let Some(code) = die_with_pool() {
        return code;
    }
    let link = PipeLink::from_inherited(ENV_LINK);
    let slot = ipc_shm::OpenOptions::new(PROGRESS_SLOT_TAG)
        .from_inherited(ENV_SLOT)
        .ok()
        .and_then(ProgressSlot::from_segment);
    match (link, slot) {
        (Ok(link), Some(slot)) => {
            crate::worker::serve(link, &slot, crate::worker::JobWait::Poll, None)
        }
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
