//! The death watch across real processes: a Lock waiter learns of its holder's death when it
//! happens (a pidfd fires), not at the end of a 20 ms liveness slice.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipc_shm::{Layout, Offset, Segment, SegmentBuilder};
use ipc_sync::futex::{self, Deadline};
use ipc_sync::{Lock, LockError};
use ipc_tests::{ChildProcess, fork_child};

const WATCHDOG: Duration = Duration::from_secs(30);

struct Shared {
    seg: Segment,
    lock: Offset<Lock>,
    /// Holders and waiters count themselves in here before they block.
    ready: Offset<AtomicU32>,
    /// Set to 1 to let a holder exit.
    go: Offset<AtomicU32>,
    /// Waiters that got the lock: `OwnerDied` in the high half, clean in the low half.
    outcomes: Offset<AtomicU32>,
}

const DIED: u32 = 1 << 16;

impl Shared {
    fn new() -> Shared {
        let mut l = Layout::new();
        let lock = l.add::<Lock>().unwrap();
        let ready = l.add::<AtomicU32>().unwrap();
        let go = l.add::<AtomicU32>().unwrap();
        let outcomes = l.add::<AtomicU32>().unwrap();
        Shared {
            seg: SegmentBuilder::new(l.size()).create().unwrap(),
            lock,
            ready,
            go,
            outcomes,
        }
    }
    fn lock(&self) -> &Lock {
        self.seg.get(self.lock).unwrap()
    }
    fn ready(&self) -> &AtomicU32 {
        self.seg.get(self.ready).unwrap()
    }
    fn go(&self) -> &AtomicU32 {
        self.seg.get(self.go).unwrap()
    }
    fn outcomes(&self) -> &AtomicU32 {
        self.seg.get(self.outcomes).unwrap()
    }
}

/// Bumps `word` and wakes its waiters.
fn bump(word: &AtomicU32, by: u32) {
    word.fetch_add(by, Ordering::AcqRel);
    futex::wake_all(word);
}

/// Waits (futex, under the test's watchdog) until `word` satisfies `done`.
fn wait_until(word: &AtomicU32, done: impl Fn(u32) -> bool) {
    let limit = Instant::now() + WATCHDOG;
    loop {
        let v = word.load(Ordering::Acquire);
        if done(v) {
            return;
        }
        assert!(Instant::now() < limit, "timed out waiting for the word");
        futex::wait(word, v, Some(Deadline::after(Duration::from_millis(50))));
    }
}

/// A process that takes the lock, counts itself ready, and holds the lock until `go` is set,
/// then exits without unlocking (or until it is killed).
fn holder(s: &Shared) -> ChildProcess {
    fork_child(WATCHDOG, || {
        std::mem::forget(s.lock().lock().unwrap());
        bump(s.ready(), 1);
        while s.go().load(Ordering::Acquire) == 0 {
            futex::wait(s.go(), 0, None);
        }
        0
    })
}

/// A process that counts itself ready, blocks in `lock()`, and records how it got the lock.
fn waiter(s: &Shared) -> ChildProcess {
    fork_child(WATCHDOG, || {
        bump(s.ready(), 1);
        match s.lock().lock() {
            Ok(g) => {
                drop(g);
                bump(s.outcomes(), 1);
                0
            }
            Err(LockError::OwnerDied(mut g)) => {
                g.mark_consistent();
                drop(g);
                bump(s.outcomes(), DIED);
                0
            }
            Err(_) => 1,
        }
    })
}

/// The holder dies (killed, or exiting) while `n` waiters in other processes block: the first
/// gets `OwnerDied`, the others the lock. Returns the time from the death to the last outcome.
fn holder_dies_with_waiters(n: u32, kill: bool) -> Duration {
    let s = Shared::new();
    let h = holder(&s);
    wait_until(s.ready(), |v| v == 1);
    let waiters: Vec<_> = (0..n).map(|_| waiter(&s)).collect();
    wait_until(s.ready(), |v| v == 1 + n);
    // Not synchronisation: lets the waiters fall asleep (past their first short sleep), the
    // case under test; the outcome must be the same if they have not.
    std::thread::sleep(Duration::from_millis(20));
    let died = Instant::now();
    if kill {
        h.kill();
    } else {
        bump(s.go(), 1);
    }
    wait_until(s.outcomes(), |v| v == DIED + (n - 1));
    let took = died.elapsed();
    for w in waiters {
        w.wait().assert_success();
    }
    h.wait();
    assert!(!s.lock().is_locked());
    // Repaired: a clean acquisition.
    assert!(matches!(s.lock().try_lock(), Ok(g) if !g.is_inconsistent()));
    took
}

#[test]
fn sigkilled_holder_with_one_waiter() {
    holder_dies_with_waiters(1, true);
}

#[test]
fn sigkilled_holder_with_three_waiters() {
    holder_dies_with_waiters(3, true);
}

#[test]
fn holder_exiting_normally_while_holding() {
    holder_dies_with_waiters(1, false);
    holder_dies_with_waiters(3, false);
}

/// How many pidfds on process `target` process `pid` holds open (an armed death watch is one;
/// a forked child also inherits its parent's, such as the harness's on its children).
fn pidfds_on(pid: u32, target: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    fds.flatten()
        .filter(|fd| {
            std::fs::read_to_string(fd.path()).is_ok_and(|info| {
                info.lines().any(|l| {
                    l.strip_prefix("Pid:")
                        .is_some_and(|p| p.trim() == target.to_string())
                })
            })
        })
        .count()
}

/// Waits (under the watchdog) until process `waiter` holds more pidfds on `holder` than the
/// `inherited` ones: its death watch on `holder` is armed.
#[track_caller]
fn wait_for_watch(waiter: u32, holder: u32, inherited: usize) {
    let limit = Instant::now() + WATCHDOG;
    while pidfds_on(waiter, holder) <= inherited {
        assert!(
            Instant::now() < limit,
            "the waiter never armed a death watch"
        );
        std::thread::yield_now();
    }
}

/// A waiter's body in a forked child: blocks in `lock()` until the holder dies; exits 0 if it
/// got `OwnerDied` with one more owner exit seen by this process's death watch, 3 if it found
/// the death some other way, 1 if it got no `OwnerDied`.
fn watched_waiter(s: &Shared) -> i32 {
    // Inherited from the test process, whose other tests may have watched owners.
    let before = ipc_sync::lock::owner_exits_seen();
    match s.lock().lock() {
        Err(LockError::OwnerDied(mut g)) => {
            g.mark_consistent();
            if ipc_sync::lock::owner_exits_seen() == before + 1 {
                0
            } else {
                3
            }
        }
        _ => 1,
    }
}

/// Forks a [`watched_waiter`] on the lock `holder` holds, and returns once its death watch on
/// `holder` is armed (a pidfd beside those it inherited from this process, which arms once the
/// waiter's first short sleep ends).
fn watched_waiter_of(s: &Shared, holder: &ChildProcess) -> ChildProcess {
    let inherited = pidfds_on(ipc_shm::os::pid(), holder.pid());
    let w = fork_child(WATCHDOG, || watched_waiter(s));
    wait_for_watch(w.pid(), holder.pid(), inherited);
    w
}

/// What this mechanism exists for, shown by the mechanism rather than by a clock (before it, a
/// waiter noticed after a median 13.6 ms, at the end of a 20 ms liveness slice; a timed check
/// failed on a loaded machine): a waiter asleep on a watched owner is woken by its death watch,
/// which counts the exit it saw (`owner_exits_seen`) before it wakes the waiter.
#[test]
fn a_sleeping_waiter_is_woken_by_its_death_watch() {
    for round in 0..3 {
        let s = Shared::new();
        let h = holder(&s);
        wait_until(s.ready(), |v| v == 1);
        let w = watched_waiter_of(&s, &h);
        h.kill();
        h.wait();
        let outcome = w.wait();
        assert_eq!(outcome.code(), Some(0), "round {round}: {outcome:?}");
        assert!(!s.lock().is_locked());
    }
}

/// A thread of another process takes the lock and exits while its process lives on: a thread
/// pidfd (Linux 6.9) sees it; without one, the procfs slice does. Either way it is recovered.
#[test]
fn a_holder_thread_that_exits_while_its_process_lives_is_recovered() {
    let s = Shared::new();
    let h = fork_child(WATCHDOG, || {
        std::thread::scope(|t| {
            t.spawn(|| std::mem::forget(s.lock().lock().unwrap()));
        });
        bump(s.ready(), 1);
        while s.go().load(Ordering::Acquire) == 0 {
            futex::wait(s.go(), 0, None);
        }
        0
    });
    wait_until(s.ready(), |v| v == 1);
    match s.lock().lock() {
        Err(LockError::OwnerDied(mut g)) => g.mark_consistent(),
        other => panic!("expected OwnerDied, got {other:?}"),
    }
    bump(s.go(), 1);
    h.wait().assert_success();
}

/// The parent has a watch registered (a thread waits on a live holder) when it forks; the
/// child's own wait on a killed holder must still be woken by a death watch (its own: the
/// parent's thread does not exist in the child), well before the fallback slice.
#[test]
fn a_forked_child_of_a_watching_process_gets_its_own_watch() {
    let parent_side = Shared::new();
    let child_side = Shared::new();
    let live_holder = holder(&parent_side);
    wait_until(parent_side.ready(), |v| v == 1);
    std::thread::scope(|t| {
        let parent_waiter = t.spawn(|| match parent_side.lock().lock() {
            Err(LockError::OwnerDied(mut g)) => g.mark_consistent(),
            other => panic!("expected OwnerDied, got {other:?}"),
        });
        // The parent's waiter arms its watch before the fork.
        wait_for_watch(ipc_shm::os::pid(), live_holder.pid(), 1);
        let doomed = holder(&child_side);
        wait_until(child_side.ready(), |v| v == 1);
        // The child's own watch must see the exit (not the 250 ms fallback slice).
        let child = watched_waiter_of(&child_side, &doomed);
        doomed.kill();
        child.wait().assert_success();
        doomed.wait();
        bump(parent_side.go(), 1);
        parent_waiter.join().unwrap();
    });
    live_holder.wait().assert_success();
}
