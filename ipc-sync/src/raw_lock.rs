//! [`RawLock`]: a robust lock behind a small trait, so algorithms run on the real [`Lock`] in
//! production and on a loom model lock under `--cfg loom`.
//!
//! An algorithm that guards shared-memory state with a lock (the queue's two ring sides) is
//! written against [`RawLock`] and stores a [`SharedLock`]: that is [`Lock`] normally and
//! `ModelLock` under loom, where mutual exclusion comes from loom's `Mutex` and an owner death
//! from a flag that a "killed" holder sets (`ModelGuard::die`). Loom then explores what the
//! next holder sees after a death at any point of a critical section.
//!
//! | acquire result | meaning | the caller |
//! |---|---|---|
//! | `Ok((guard, false))` | locked, the state is consistent | proceeds |
//! | `Ok((guard, true))` | locked, but the previous holder died holding it | repairs the state, then [`RawGuard::mark_consistent`] (or drops the guard unrepaired: the lock becomes not recoverable) |
//! | `Err(LockFail::Timeout)` | the deadline passed (or, for a try, the lock was held) | gives up |
//! | `Err(LockFail::NotRecoverable)` | a holder died and nobody repaired the state | reports the state broken |

use crate::futex::Deadline;
use crate::lock::{Lock, LockError, LockGuard, LockTimeoutError, TryLockError};

/// Why [`RawLock::acquire`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LockFail {
    /// The deadline passed (or, for a try-lock, the lock was held).
    #[error("the lock was not acquired in time")]
    Timeout,
    /// A holder died and nobody repaired the state: the lock is unusable.
    #[error("a holder died without repairing the state: the lock is not recoverable")]
    NotRecoverable,
}

/// A held [`RawLock`]; dropping it unlocks.
pub trait RawGuard {
    /// Declares the protected state repaired after an owner death.
    fn mark_consistent(&mut self);
}

/// A lock that survives the death of its holder.
pub trait RawLock {
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

/// The lock type to store in shared state: [`Lock`], or `ModelLock` under loom.
#[cfg(not(loom))]
pub type SharedLock = Lock;

/// The lock type to store in shared state: [`Lock`], or `ModelLock` under loom.
#[cfg(loom)]
pub type SharedLock = ModelLock;

#[cfg(loom)]
pub use model::{ModelGuard, ModelLock};

#[cfg(loom)]
mod model {
    //! A lock for loom: mutual exclusion from loom's `Mutex`, owner death from a flag.
    use super::{LockFail, RawGuard, RawLock};
    use crate::futex::Deadline;
    use loom::sync::{Mutex, MutexGuard};

    /// A loom stand-in for [`Lock`] (only under `--cfg loom`).
    #[derive(Debug, Default)]
    pub struct ModelLock {
        /// `true` while the state is "the last holder died".
        died: Mutex<bool>,
    }

    impl ModelLock {
        /// An unlocked, consistent model lock.
        pub fn new() -> ModelLock {
            ModelLock::default()
        }
    }

    /// The guard of a `ModelLock`.
    #[derive(Debug)]
    pub struct ModelGuard<'a>(MutexGuard<'a, bool>);

    impl ModelGuard<'_> {
        /// Releases the lock as a killed holder would: the next holder sees an owner death.
        pub fn die(mut self) {
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lock_through_the_trait() {
        let lock: SharedLock = Lock::new();
        let (mut g, died) = lock.acquire(None, false).unwrap();
        assert!(!died);
        g.mark_consistent();
        assert_eq!(lock.acquire(None, true).err(), Some(LockFail::Timeout));
        let soon = Some(Deadline::after(Duration::from_millis(5)));
        assert_eq!(lock.acquire(soon, false).err(), Some(LockFail::Timeout));
        drop(g);
        assert!(lock.acquire(soon, false).is_ok());
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;

    #[test]
    fn model_lock_reports_a_death_until_repaired() {
        loom::model(|| {
            let lock = ModelLock::new();
            let (g, died) = lock.acquire(None, false).unwrap();
            assert!(!died);
            g.die();
            let (mut g, died) = lock.acquire(None, false).unwrap();
            assert!(died);
            g.mark_consistent();
            drop(g);
            assert!(!lock.acquire(None, true).unwrap().1);
        });
    }
}
