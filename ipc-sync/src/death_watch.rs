//! The death watch: a per-process service that wakes [`Lock`](crate::Lock) waiters the moment
//! their lock's owner exits, instead of at the end of a timed liveness slice.
//!
//! A waiter that has slept once without getting the lock *arms* a [`Watch`] on the owner named
//! by the lock word: a pidfd for the owner's thread (`PIDFD_THREAD`, Linux 6.9), or else for
//! its process when that is not the waiter's own (see [`arm`]). The pidfd goes into one
//! process-wide epoll set ([`ipc_shm::os::Epoll`], one-shot) that one background thread waits
//! on. Each sleep of the waiter then [`Watch::sleep`]s: it registers the word's address for the
//! duration of that one futex wait. When the pidfd fires, the thread sets the lock word's
//! `OWNER_DIED` hint (if the word still names that owner) and wakes every sleeper on the word
//! ([`crate::lock::hint_owner_died`]), in every process. Waiters then run the lock's usual
//! procfs liveness check, which finds the owner dead and hands the lock to exactly one of them.
//!
//! **The watch only wakes; it never decides.** A takeover still needs procfs to say "dead" and
//! a compare-exchange from the exact word observed, so a wrong pidfd (the owner's id reused
//! before it was opened) or a lost event costs at most one fallback slice, never a wrong
//! `OwnerDied`. Nothing is read from shared memory here except through the lock's atomics, and
//! no pointer or length from shared memory is followed: the registry holds addresses of words
//! this process's waiters are sleeping on, each only while that waiter is inside its wait.
//!
//! # State table (one watch)
//!
//! | state | entry in the registry | pidfd in the epoll set | a sleep |
//! |---|---|---|---|
//! | armed | `fired: false`, no sleepers | yes, one-shot | registers its word, waits |
//! | sleeping | `fired: false`, `{id, word}` per sleep | yes | woken by unlock, timeout, or fire |
//! | fired | `fired: true`, sleepers cleared | spent (one-shot) | returns [`Slept::Fired`] at once |
//! | dropped | removed | removed, closed | - |
//!
//! Transitions: `arm` (pidfd opened, entry inserted, then added to epoll) -> armed; a sleep
//! pushes and (in a guard, on every path out) pops its `{id, word}`; the thread's event ->
//! fired (it hints and wakes each registered word under the registry lock, then clears them);
//! drop -> removed. A `fired` flag set before a sleep registers makes that sleep return at once,
//! and a fire after it registered either finds it (and wakes it) or finds the hint already
//! keeping its futex wait from sleeping (the hint changes the word the waiter expects), so no
//! wake-up is lost.
//!
//! ## Memory ordering
//!
//! The registry is a `std::sync::Mutex`: registering, unregistering and firing are ordered by
//! it. The thread touches a registered word only while holding that mutex, and a sleep removes
//! its registration under the same mutex before its borrow of the word ends, so the word is
//! alive whenever the thread uses it. The hint itself is a compare-exchange on the lock word
//! (see [`crate::lock`]).
//!
//! # Fork and lifetime
//!
//! The service (epoll set, registry, thread) is created lazily by the first [`arm`] and tagged
//! with the fork generation and pid: a forked child has no such thread, so its first `arm`
//! builds a new service (the parent's is left untouched in the child's memory; its mutex may
//! have been held by a thread that does not exist there, so the child never locks it). The
//! thread is detached and never keeps the process alive. A watch closes its pidfd when
//! dropped: the lock drops it when its wait ends, so recoveries leak no descriptor. A forked
//! child inherits the parent's epoll descriptor (close-on-exec), as it inherits any other.
//!
//! Under `--cfg loom` the service is absent ([`arm`] answers `None`) and the lock sleeps in
//! slices, which the loom futex model turns into explicit time steps.
#![allow(unsafe_code)] // The thread forms `&AtomicU32` from a registered word's address.

#[cfg(not(loom))]
pub(crate) use imp::{Slept, Watch, arm, exits_seen};

#[cfg(loom)]
pub(crate) use model::{Slept, Watch, arm, exits_seen};

#[cfg(not(loom))]
mod imp {
    use std::collections::HashMap;
    use std::os::fd::{AsFd, OwnedFd};
    use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
    use std::sync::{Mutex, MutexGuard, PoisonError};

    use ipc_shm::os;

    use crate::futex::{Deadline, WaitOutcome};
    use crate::owner::OwnerRecord;
    use crate::sync::AtomicU32;
    use crate::waiter::{Futex, Waiter};

    /// How a [`Watch::sleep`] ended.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Slept {
        /// The futex wait ran and ended this way.
        Waited(WaitOutcome),
        /// The watched thread or process has exited (the pidfd fired): check the owner now.
        Fired,
    }

    /// One watch: a watched owner's pidfd in the service's epoll set.
    #[derive(Debug)]
    pub(crate) struct Watch {
        service: &'static Service,
        key: u64,
        pidfd: OwnedFd,
    }

    /// The registry entry of one watch.
    #[derive(Debug)]
    struct Entry {
        /// The owner's thread id, as in the lock word.
        tid: u32,
        /// The pidfd has fired.
        fired: bool,
        /// `(sleep id, word address)` of each sleep in progress.
        sleepers: Vec<(u64, usize)>,
    }

    #[derive(Debug, Default)]
    struct Registry {
        next_id: u64,
        watches: HashMap<u64, Entry>,
    }

    /// The per-process service: the epoll set, the registry, and (once started) the thread.
    #[derive(Debug)]
    struct Service {
        /// The fork generation and pid this service belongs to.
        generation: u64,
        pid: u32,
        epoll: os::Epoll,
        registry: Mutex<Registry>,
    }

    /// The current process's service (a leaked `Box`; replaced after a fork).
    static SERVICE: AtomicPtr<Service> = AtomicPtr::new(std::ptr::null_mut());

    /// Watched owners whose exit the thread saw (each woke its sleepers): see
    /// [`exits_seen`].
    static EXITS_SEEN: AtomicU64 = AtomicU64::new(0);

    /// How many watched lock owners this process's death watch has seen exit (a diagnostic,
    /// [`crate::lock::owner_exits_seen`]).
    pub(crate) fn exits_seen() -> u64 {
        EXITS_SEEN.load(Ordering::Relaxed)
    }

    impl Service {
        fn registry(&self) -> MutexGuard<'_, Registry> {
            // The registry's invariants hold between statements: a panic elsewhere cannot
            // leave it half-updated, so a poisoned lock is still usable.
            self.registry.lock().unwrap_or_else(PoisonError::into_inner)
        }

        /// This process's service, started on first use; `None` if it cannot be started.
        fn get() -> Option<&'static Service> {
            let generation = os::fork_generation();
            let pid = os::pid();
            let current = SERVICE.load(Ordering::Acquire);
            // SAFETY: a non-null `SERVICE` comes from `Box::leak` below and is never freed (a
            // leaked service stays valid for the rest of the process, in a forked child too,
            // where it is only read), so it is valid, aligned and immutable but for its mutex
            // and atomics.
            if let Some(s) = unsafe { current.as_ref() }
                && s.generation == generation
                && s.pid == pid
            {
                return Some(s);
            }
            let fresh = Box::new(Service {
                generation,
                pid,
                epoll: os::Epoll::new().ok()?,
                registry: Mutex::new(Registry::default()),
            });
            let fresh = Box::into_raw(fresh);
            if SERVICE
                .compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // SAFETY: `fresh` came from `Box::into_raw` just above and was never published
                // (the exchange failed), so this thread owns it alone.
                drop(unsafe { Box::from_raw(fresh) });
                // Another thread installed one; use it (or fail over to slices if it is stale).
                let s = SERVICE.load(Ordering::Acquire);
                // SAFETY: as for `current` above: a published pointer is never freed.
                return unsafe { s.as_ref() }
                    .filter(|s| s.generation == generation && s.pid == pid);
            }
            // SAFETY: `fresh` is now published and never freed: a `'static` shared reference.
            let service: &'static Service = unsafe { &*fresh };
            let spawned = std::thread::Builder::new()
                .name("ipc-sync-death-watch".into())
                .spawn(move || service.run());
            // Without the thread nothing would fire: unpublish, so later arms fail over to
            // slices (the service itself is leaked: another thread may already hold it).
            if spawned.is_err() {
                let _ = SERVICE.compare_exchange(
                    fresh,
                    std::ptr::null_mut(),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
                return None;
            }
            Some(service)
        }

        /// The thread: wait for pidfds to fire; hint and wake the words sleeping on them.
        fn run(&self) {
            let mut keys = Vec::new();
            loop {
                if self.epoll.wait(&mut keys, None).is_err() {
                    // epoll_wait fails only for a bad descriptor or buffer, neither possible
                    // here; give up rather than spin (waiters keep their fallback slices).
                    return;
                }
                let mut registry = self.registry();
                for key in &keys {
                    let Some(entry) = registry.watches.get_mut(key) else {
                        continue; // dropped in the meantime
                    };
                    entry.fired = true;
                    EXITS_SEEN.fetch_add(1, Ordering::Relaxed);
                    for &(_, addr) in &entry.sleepers {
                        // SAFETY: `addr` was registered by `Watch::sleep` from a live
                        // `&AtomicU32` and is removed, under this same mutex (held here), before
                        // that borrow ends; so the word is alive, aligned and an atomic for the
                        // whole use below. Only shared access is formed (atomics).
                        let word = unsafe { &*(addr as *const AtomicU32) };
                        crate::lock::hint_owner_died(word, entry.tid);
                    }
                    entry.sleepers.clear();
                }
            }
        }
    }

    /// Arms a watch on `owner` for a waiter of process `my_pid`, or `None` if this owner cannot
    /// be watched: no complete record, the thread is already gone (the caller's liveness check
    /// then finds it dead), no `PIDFD_THREAD` and the owner is in the waiter's own process, or
    /// the service cannot start.
    pub(crate) fn arm(owner: OwnerRecord, my_pid: u32) -> Option<Watch> {
        let (pid, _) = owner.detail?;
        let pidfd = match os::pidfd_thread(owner.tid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(os::ESRCH) => return None,
            // An older kernel: watch the whole process, if it is another one.
            Err(_) if pid != my_pid => os::pidfd(pid).ok()?,
            Err(_) => return None,
        };
        let service = Service::get()?;
        let key = {
            let mut registry = service.registry();
            registry.next_id += 1;
            let key = registry.next_id;
            registry.watches.insert(
                key,
                Entry {
                    tid: owner.tid,
                    fired: false,
                    sleepers: Vec::new(),
                },
            );
            key
        };
        let watch = Watch {
            service,
            key,
            pidfd,
        };
        // Inserted first, so an event that fires at once finds the entry.
        service
            .epoll
            .add_oneshot(watch.pidfd.as_fd(), key)
            .ok()
            .map(|()| watch)
    }

    impl Watch {
        /// One futex wait on `word` (see [`Waiter::wait`]), during which a fire of this watch
        /// hints and wakes it. Returns [`Slept::Fired`] without waiting if it already fired.
        pub(crate) fn sleep(
            &self,
            word: &AtomicU32,
            expected: u32,
            deadline: Option<Deadline>,
        ) -> Slept {
            let id = {
                let mut registry = self.service.registry();
                registry.next_id += 1;
                let id = registry.next_id;
                match registry.watches.get_mut(&self.key) {
                    Some(entry) if !entry.fired => {
                        entry.sleepers.push((id, word as *const AtomicU32 as usize));
                    }
                    _ => return Slept::Fired,
                }
                id
            };
            // Unregisters on every way out of this function (unwinding too), before the borrow
            // of `word` ends: the thread's `SAFETY` rests on it.
            let _registered = Registered { watch: self, id };
            Slept::Waited(Futex.wait(word, expected, deadline))
        }
    }

    /// A sleep's registration; removed when dropped.
    struct Registered<'a> {
        watch: &'a Watch,
        id: u64,
    }

    impl Drop for Registered<'_> {
        fn drop(&mut self) {
            let mut registry = self.watch.service.registry();
            if let Some(entry) = registry.watches.get_mut(&self.watch.key) {
                entry.sleepers.retain(|&(id, _)| id != self.id);
            }
        }
    }

    impl Drop for Watch {
        fn drop(&mut self) {
            // Out of the epoll set before the pidfd closes (the set would otherwise keep a
            // closed descriptor's interest until the file is released).
            let _ = self.service.epoll.remove(self.pidfd.as_fd());
            self.service.registry().watches.remove(&self.key);
        }
    }
}

#[cfg(loom)]
mod model {
    //! Under loom there is no service: nothing can be armed, and the lock sleeps in slices.

    use crate::futex::{Deadline, WaitOutcome};
    use crate::owner::OwnerRecord;
    use crate::sync::AtomicU32;

    /// How a sleep ended (no watch exists under loom, so it is never built).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[allow(dead_code)]
    pub(crate) enum Slept {
        /// The futex wait ran and ended this way.
        Waited(WaitOutcome),
        /// The watched owner exited.
        Fired,
    }

    /// Never constructed under loom.
    #[derive(Debug)]
    pub(crate) enum Watch {}

    /// Under loom: never armed.
    pub(crate) fn arm(_owner: OwnerRecord, _my_pid: u32) -> Option<Watch> {
        None
    }

    /// Under loom: nothing is watched, so nothing is seen.
    pub(crate) fn exits_seen() -> u64 {
        0
    }

    impl Watch {
        /// Unreachable: no watch exists.
        pub(crate) fn sleep(&self, _: &AtomicU32, _: u32, _: Option<Deadline>) -> Slept {
            match *self {}
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::owner::{OwnerRecord, current};
    use crate::sync::AtomicU32;

    #[test]
    fn a_watched_thread_that_exits_fires_and_wakes_its_sleeper() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let owner = std::thread::spawn(move || {
            tx.send(current()).unwrap();
            go_rx.recv().unwrap();
        });
        let who = rx.recv().unwrap();
        let me = current();
        let record = OwnerRecord {
            tid: who.tid,
            detail: Some((who.pid, who.start)),
        };
        let Some(watch) = arm(record, me.pid) else {
            // Kernels before 6.9 cannot watch a thread of our own process.
            return;
        };
        let word = AtomicU32::new(who.tid | crate::lock::WAITERS);
        let sleeper = std::thread::scope(|s| {
            let h = s.spawn(|| {
                // Loops over spurious ends; a fire either wakes a sleep or ends the next one.
                loop {
                    match watch.sleep(&word, who.tid | crate::lock::WAITERS, None) {
                        Slept::Fired => return true,
                        Slept::Waited(_) => {
                            if word.load(std::sync::atomic::Ordering::Acquire)
                                & crate::lock::OWNER_DIED
                                != 0
                            {
                                return true;
                            }
                        }
                    }
                }
            });
            go_tx.send(()).unwrap();
            owner.join().unwrap();
            h.join().unwrap()
        });
        assert!(sleeper);
    }
}
