//! The `Fork` start method: `fork()` of the calling driver thread; the child becomes the worker.

use crate::error::PoolError;
use crate::slot::ProgressSlot;
use crate::start::{FORK_LOCK, Reaper, Worker, forkserver, spawn, theirs_handed_over};
use crate::wire::transport;

/// Forks a worker serving a new pipe and `slot`.
pub(super) fn start(slot: ProgressSlot) -> Result<Worker, PoolError> {
    // Before the fork, in the parent: the child must not call `set_hook` (see there).
    crate::task::install_forwarding_hook();
    // Every process-wide lock that a pool made by one of the worker's tasks takes is held
    // across the fork, in the one order the pool takes them in (the spawn keeper's state, the
    // fork lock, the fork-server client): a copy the child got locked by another thread of
    // this process would stay locked forever there (that thread is not copied), and its
    // nested pool would hang. The child's copies are held by this thread only and released
    // first thing in the child.
    let mut held = Some((
        spawn::hold_for_fork(),
        FORK_LOCK.lock().unwrap_or_else(|p| p.into_inner()),
        forkserver::hold_for_fork(),
    ));
    let (ours, theirs) = transport::pair()?;
    // The closure runs only in the child; the parent keeps both ends (the closure borrows them).
    let (mut ours, mut theirs) = (Some(ours), Some(theirs));
    let pid = ipc_shm::os::fork_then(&[], || {
        // The child's copies of the locks, held by this very thread: released, or a pool this
        // worker's task makes would wait for them forever (nobody else here holds them).
        drop(held.take());
        // The child: the pool's end is not ours to use here.
        if let Some(ours) = ours.take() {
            ours.forget_in_child();
        }
        match theirs.take() {
            Some(link) => crate::worker::serve(link, &slot, crate::worker::JobWait::Futex, None),
            None => crate::worker::code::LINK,
        }
    })
    .map_err(|e| PoolError::os("fork", e))?;
    let (Some(ours), Some(theirs)) = (ours, theirs) else {
        unreachable!("the fork closure runs only in the child")
    };
    theirs_handed_over(theirs);
    drop(held);
    Ok(Worker::new(pid, ours, slot, Reaper::Child))
}
