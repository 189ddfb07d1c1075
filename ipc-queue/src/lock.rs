//! The robust lock the ring's two sides are guarded by, behind a small trait.
//!
//! Production uses `ipc_sync::Lock` (a futex lock in shared memory that reports the death of its
//! holder as `OwnerDied`). Under `--cfg loom` a model lock stands in: a loom `Mutex` plus a flag
//! that a "killed" holder sets, so loom explores what the next holder sees after a death at any
//! point of a critical section.

use ipc_sync::Deadline;

/// Why a lock could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockFail {
    /// The deadline passed (or, for a try-lock, the lock was held).
    Timeout,
    /// A holder died and nobody repaired the state: the lock is unusable.
    NotRecoverable,
}

/// A held lock.
pub(crate) trait RawGuard {
    /// Declares the protected state repaired after an owner death.
    fn mark_consistent(&mut self);
}

/// A lock that survives the death of its holder.
pub(crate) trait RawLock {
    /// The guard.
    type Guard<'a>: RawGuard
    where
        Self: 'a;

    /// Takes the lock, waiting until `deadline` (forever if `None`; not at all if `try_only`).
    /// The flag is `true` when the previous holder died holding it.
    fn acquire(
        &self,
        deadline: Option<Deadline>,
        try_only: bool,
    ) -> Result<(Self::Guard<'_>, bool), LockFail>;
}

#[cfg(not(loom))]
mod real {
    use super::{LockFail, RawGuard, RawLock};
    use ipc_sync::{Deadline, Lock, LockError, LockGuard, LockTimeoutError, TryLockError};

    impl RawGuard for LockGuard<'_> {
        #[inline]
        fn mark_consistent(&mut self) {
            LockGuard::mark_consistent(self);
        }
    }

    impl RawLock for Lock {
        type Guard<'a> = LockGuard<'a>;

        #[inline]
        fn acquire(
            &self,
            deadline: Option<Deadline>,
            try_only: bool,
        ) -> Result<(LockGuard<'_>, bool), LockFail> {
            if try_only {
                return match self.try_lock() {
                    Ok(g) => Ok((g, false)),
                    Err(TryLockError::OwnerDied(g)) => Ok((g, true)),
                    Err(TryLockError::WouldBlock) => Err(LockFail::Timeout),
                    Err(_) => Err(LockFail::NotRecoverable),
                };
            }
            match deadline {
                None => match self.lock() {
                    Ok(g) => Ok((g, false)),
                    Err(LockError::OwnerDied(g)) => Ok((g, true)),
                    Err(_) => Err(LockFail::NotRecoverable),
                },
                Some(d) => match self.lock_deadline(d) {
                    Ok(g) => Ok((g, false)),
                    Err(LockTimeoutError::OwnerDied(g)) => Ok((g, true)),
                    Err(LockTimeoutError::Timeout) => Err(LockFail::Timeout),
                    Err(_) => Err(LockFail::NotRecoverable),
                },
            }
        }
    }
}

/// The lock type stored in the control block.
#[cfg(not(loom))]
pub(crate) type QLock = ipc_sync::Lock;

#[cfg(loom)]
pub(crate) use model::ModelLock as QLock;

#[cfg(loom)]
pub(crate) mod model {
    //! A lock for loom: mutual exclusion from loom's `Mutex`, owner death from a flag.
    use super::{LockFail, RawGuard, RawLock};
    use ipc_sync::Deadline;
    use loom::sync::{Mutex, MutexGuard};

    /// A loom stand-in for `ipc_sync::Lock`.
    #[derive(Debug, Default)]
    pub(crate) struct ModelLock {
        /// `true` while the state is "the last holder died".
        died: Mutex<bool>,
    }

    /// Its guard.
    #[derive(Debug)]
    pub(crate) struct ModelGuard<'a>(MutexGuard<'a, bool>);

    impl ModelGuard<'_> {
        /// Releases the lock as a killed holder would: the next holder sees an owner death.
        pub(crate) fn die(mut self) {
            *self.0 = true;
        }
    }

    impl RawGuard for ModelGuard<'_> {
        fn mark_consistent(&mut self) {
            *self.0 = false;
        }
    }

    impl RawLock for ModelLock {
        type Guard<'a> = ModelGuard<'a>;

        fn acquire(
            &self,
            _deadline: Option<Deadline>,
            try_only: bool,
        ) -> Result<(ModelGuard<'_>, bool), LockFail> {
            let g = if try_only {
                match self.died.try_lock() {
                    Ok(g) => g,
                    Err(_) => return Err(LockFail::Timeout),
                }
            } else {
                self.died.lock().map_err(|_| LockFail::NotRecoverable)?
            };
            let died = *g;
            Ok((ModelGuard(g), died))
        }
    }
}
