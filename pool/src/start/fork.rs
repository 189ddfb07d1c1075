//! The `Fork` start method: `fork()` of the calling driver thread; the child becomes the worker.

use crate::error::PoolError;
use crate::slot::ProgressSlot;
use crate::start::{FORK_LOCK, Reaper, Worker, theirs_handed_over};
use crate::wire::transport;

/// Forks a worker serving a new pipe and `slot`.
pub(super) fn start(slot: ProgressSlot) -> Result<Worker, PoolError> {
    // Before the fork, in the parent: the child must not call `set_hook` (see there).
    crate::task::install_forwarding_hook();
    let mut guard = Some(FORK_LOCK.lock().unwrap_or_else(|p| p.into_inner()));
    let (ours, theirs) = transport::pair()?;
    // The closure runs only in the child; the parent keeps both ends (the closure borrows them).
    let (mut ours, mut theirs) = (Some(ours), Some(theirs));
    let pid = ipc_shm::os::fork_then(&[], || {
        // The child's copy of the lock, held by this very thread: released, or a pool this
        // worker's task makes would wait for it forever (nobody else here holds it).
        drop(guard.take());
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
    drop(guard);
    Ok(Worker::new(pid, ours, slot, Reaper::Child))
}
