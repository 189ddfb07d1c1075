//! [`Mutex<T>`]: a [`Lock`] and the data it protects, side by side in shared memory.
//!
//! The data sits in an `UnsafeCell` next to the lock; a [`MutexGuard`] is the only way to reach
//! it, and exists only while the lock is held, so at most one thread of one process touches the
//! data at a time. `T: ShmSafe` keeps the data itself valid in shared memory (no pointers, any
//! bit pattern valid), which also means a dead owner can never leave it *invalid*, only
//! *inconsistent*: that is what [`MutexGuard::mark_consistent`] is for.
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

#[cfg(not(loom))]
use ipc_shm::ShmSafe;

use crate::futex::Deadline;
use crate::lock::{Lock, LockError, LockGuard, LockTimeoutError, TryLockError};

/// A lock and the `T` it protects, for shared memory (Python's `multiprocessing.Value` with its
/// lock, generalised).
///
/// All-zero bytes are an unlocked mutex holding an all-zero `T` (valid, as `T: ShmSafe`), so a
/// mutex in a fresh segment needs no initialisation. The owner-death rules are [`Lock`]'s.
///
/// ```
/// use ipc_sync::Mutex;
///
/// let m = Mutex::new(5u64);
/// *m.lock().unwrap() += 1;
/// assert_eq!(*m.lock().unwrap(), 6);
/// ```
#[repr(C)]
pub struct Mutex<T> {
    lock: Lock,
    data: UnsafeCell<T>,
}

// SAFETY: the data is only reached through a guard, which exists only while the lock is held,
// so sharing a `&Mutex<T>` between threads gives one thread at a time access to the `T`,
// which may thus move between threads (`T: Send`).
unsafe impl<T: Send> Sync for Mutex<T> {}

#[cfg(not(loom))]
// SAFETY: (1) `#[repr(C)]` of a `Lock` (repr(C)) and an `UnsafeCell<T>` (repr(transparent) over
// a `T: ShmSafe`); (2) neither holds pointers; (3) any bytes are a valid `Lock` (see its impl)
// and a valid `T`; (4) the `Lock` is atomics, and the `T` is mutated only through a guard,
// that is under the lock, which excludes every other process's access (documented above);
// (5) no Drop logic (`T: ShmSafe` has none that matters). `Sync` by the impl above.
unsafe impl<T: ShmSafe + Send> ShmSafe for Mutex<T> {}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Self {
        Mutex::new(T::default())
    }
}

impl<T> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mutex")
            .field("lock", &self.lock)
            .finish_non_exhaustive()
    }
}

/// Holds a [`Mutex`] and gives access to its data; unlocks when dropped.
#[must_use = "the mutex is released when the guard is dropped"]
pub struct MutexGuard<'a, T> {
    guard: LockGuard<'a>,
    data: &'a UnsafeCell<T>,
}

impl<T: fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutexGuard")
            .field("data", &**self)
            .field("inconsistent", &self.guard.is_inconsistent())
            .finish()
    }
}

impl<T> Mutex<T> {
    /// An unlocked mutex holding `value`.
    pub fn new(value: T) -> Mutex<T> {
        Mutex {
            lock: Lock::new(),
            data: UnsafeCell::new(value),
        }
    }

    fn wrap<'a>(&'a self, guard: LockGuard<'a>) -> MutexGuard<'a, T> {
        MutexGuard {
            guard,
            data: &self.data,
        }
    }

    /// Locks, sleeping while another thread or process holds the mutex. See [`Lock::lock`].
    #[inline]
    pub fn lock(&self) -> Result<MutexGuard<'_, T>, LockError<MutexGuard<'_, T>>> {
        match self.lock.lock() {
            Ok(g) => Ok(self.wrap(g)),
            Err(LockError::OwnerDied(g)) => Err(LockError::OwnerDied(self.wrap(g))),
            Err(_) => Err(LockError::NotRecoverable),
        }
    }

    /// Locks if free right now. See [`Lock::try_lock`].
    #[inline]
    pub fn try_lock(&self) -> Result<MutexGuard<'_, T>, TryLockError<MutexGuard<'_, T>>> {
        match self.lock.try_lock() {
            Ok(g) => Ok(self.wrap(g)),
            Err(TryLockError::OwnerDied(g)) => Err(TryLockError::OwnerDied(self.wrap(g))),
            Err(TryLockError::WouldBlock) => Err(TryLockError::WouldBlock),
            Err(_) => Err(TryLockError::NotRecoverable),
        }
    }

    /// Locks, waiting at most `timeout`. See [`Lock::lock_timeout`].
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<MutexGuard<'_, T>, LockTimeoutError<MutexGuard<'_, T>>> {
        self.lock_deadline(Deadline::after(timeout))
    }

    /// Locks, waiting at most until `deadline`.
    pub fn lock_deadline(
        &self,
        deadline: Deadline,
    ) -> Result<MutexGuard<'_, T>, LockTimeoutError<MutexGuard<'_, T>>> {
        match self.lock.lock_deadline(deadline) {
            Ok(g) => Ok(self.wrap(g)),
            Err(LockTimeoutError::OwnerDied(g)) => Err(LockTimeoutError::OwnerDied(self.wrap(g))),
            Err(LockTimeoutError::Timeout) => Err(LockTimeoutError::Timeout),
            Err(_) => Err(LockTimeoutError::NotRecoverable),
        }
    }

    /// Whether the mutex is held right now (a snapshot).
    pub fn is_locked(&self) -> bool {
        self.lock.is_locked()
    }

    /// The underlying lock (for example to build a [`crate::Condition`] protocol on it).
    pub fn raw(&self) -> &Lock {
        &self.lock
    }

    /// The data, through exclusive access to the mutex (no locking needed).
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }
}

impl<'a, T> MutexGuard<'a, T> {
    /// See [`LockGuard::mark_consistent`].
    pub fn mark_consistent(&mut self) {
        self.guard.mark_consistent();
    }

    /// Whether this guard came from a dead owner and is not yet marked consistent.
    pub fn is_inconsistent(&self) -> bool {
        self.guard.is_inconsistent()
    }

    /// Splits into the lock guard and the data cell (for `Condition`).
    pub(crate) fn into_parts(self) -> (LockGuard<'a>, &'a UnsafeCell<T>) {
        (self.guard, self.data)
    }

    /// Rebuilds from parts (for `Condition`).
    pub(crate) fn from_parts(guard: LockGuard<'a>, data: &'a UnsafeCell<T>) -> Self {
        MutexGuard { guard, data }
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while this thread holds the mutex's lock, and the data
        // is reached only through guards, so no other thread or process accesses it now; the
        // cell lives as long as `'a`, which outlives the guard.
        unsafe { &*self.data.get() }
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference through this
        // guard, while the lock keeps every other guard (in any process) from existing.
        unsafe { &mut *self.data.get() }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn guards_serialise_access_between_threads() {
        let m = Arc::new(Mutex::new(0u64));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        *m.lock().unwrap() += 1;
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(*m.lock().unwrap(), 40_000);
    }

    #[test]
    fn owner_death_hands_the_data_over() {
        let m = Arc::new(Mutex::new(1u32));
        let m2 = m.clone();
        std::thread::spawn(move || {
            let mut g = m2.lock().unwrap();
            *g = 99; // half-done update
            std::mem::forget(g);
        })
        .join()
        .unwrap();
        let mut g = m.lock().unwrap_err().into_guard().unwrap();
        assert_eq!(*g, 99);
        *g = 2; // repair
        g.mark_consistent();
        drop(g);
        assert_eq!(*m.lock().unwrap(), 2);
    }
}
