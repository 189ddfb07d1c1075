//! EventCount: one conformance test body run on two backends (the heap and a shared-memory
//! segment), and a waiter SIGKILLed while asleep in another process.
#![cfg(not(loom))] // loom atomics are not shared-memory types

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ipc_shm::{Layout, Offset, Segment, SegmentBuilder, TypeTag};
use ipc_sync::{Deadline, EventCount, EventWait, Futex};
use ipc_tests::fork_child;

const TAG: TypeTag = TypeTag::from_name("ipc-sync/tests/eventcount");
const WATCHDOG: Duration = Duration::from_secs(30);

/// Where an event count and its condition word live.
trait Backend {
    fn parts(&self) -> (&EventCount, &AtomicU32);
}

/// On the heap, between threads.
struct Heap(Box<(EventCount, AtomicU32)>);

impl Heap {
    fn new() -> Heap {
        Heap(Box::new((EventCount::new(), AtomicU32::new(0))))
    }
}

impl Backend for Heap {
    fn parts(&self) -> (&EventCount, &AtomicU32) {
        (&self.0.0, &self.0.1)
    }
}

/// In a zero-filled shared-memory segment (all-zero bytes must be a valid event count).
struct Shm {
    seg: Segment,
    ec: Offset<EventCount>,
    word: Offset<AtomicU32>,
}

impl Shm {
    fn new() -> Shm {
        let mut l = Layout::new();
        let ec = l.add().unwrap();
        let word = l.add().unwrap();
        let seg = SegmentBuilder::new(l.size())
            .type_tag(TAG)
            .create()
            .unwrap();
        Shm { seg, ec, word }
    }
}

impl Backend for Shm {
    fn parts(&self) -> (&EventCount, &AtomicU32) {
        (
            self.seg.get(self.ec).unwrap(),
            self.seg.get(self.word).unwrap(),
        )
    }
}

/// The one test body: the contract every backend must meet.
fn conformance(b: &impl Backend) {
    let (ec, word) = b.parts();
    // Fresh (or zero-filled): nobody registered; a notify is free and wakes nobody.
    assert_eq!(ec.waiters(), 0);
    assert_eq!(ec.notify_all(), 0);

    // A timed-out wait takes its registration back.
    let t = ec.listen();
    assert_eq!(ec.waiters(), 1);
    let r = ec.wait(t, Some(Deadline::after(Duration::from_millis(2))));
    assert_eq!(r, EventWait::TimedOut);
    assert_eq!(ec.waiters(), 0);

    // A notify between listen and wait is not lost.
    let t = ec.listen();
    ec.notify_one();
    assert_eq!(ec.wait(t, None), EventWait::Notified);

    // An abandoned registration (a dead waiter) is cleared by the next notify.
    drop(ec.listen()); // never waited on nor cancelled
    assert_eq!(ec.waiters(), 1);
    ec.notify_one();
    assert_eq!(ec.waiters(), 0);

    // Ping-pong between two threads through the one event count: no lost wake-up, and the
    // count settles at zero.
    const ROUNDS: u32 = 2000;
    word.store(0, Ordering::Relaxed);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..ROUNDS {
                let deadline = Some(Deadline::after(WATCHDOG));
                let ok = ec.wait_until(&Futex, deadline, || {
                    word.load(Ordering::Acquire) == 2 * i + 1
                });
                assert!(ok, "watchdog: odd turn {i}");
                word.store(2 * i + 2, Ordering::Release);
                ec.notify_all();
            }
        });
        for i in 0..ROUNDS {
            word.store(2 * i + 1, Ordering::Release);
            ec.notify_all();
            let deadline = Some(Deadline::after(WATCHDOG));
            let ok = ec.wait_until(&Futex, deadline, || {
                word.load(Ordering::Acquire) == 2 * i + 2
            });
            assert!(ok, "watchdog: even turn {i}");
        }
    });
    ec.notify_all();
    assert_eq!(ec.waiters(), 0);
}

#[test]
fn conformance_on_the_heap() {
    conformance(&Heap::new());
}

#[test]
fn conformance_in_shared_memory() {
    conformance(&Shm::new());
}

/// Whether `pid` is asleep (state `S` in procfs).
fn is_sleeping(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('S'))
        })
        .unwrap_or(false)
}

/// Waits (with a watchdog) until `word` reaches `n`.
fn await_count(word: &AtomicU32, n: u32) {
    let deadline = Deadline::after(WATCHDOG);
    loop {
        let v = word.load(Ordering::Acquire);
        if v >= n {
            return;
        }
        assert!(!deadline.has_passed(), "watchdog: count stuck at {v} < {n}");
        ipc_sync::futex::wait(word, v, Some(Deadline::after(Duration::from_millis(50))));
    }
}

#[test]
fn a_waiter_killed_asleep_costs_one_notify() {
    let shm = Shm::new();
    let (ec, ready) = shm.parts();
    let victim = fork_child(WATCHDOG, || {
        let token = ec.listen();
        ready.fetch_add(1, Ordering::AcqRel);
        ipc_sync::futex::wake_all(ready);
        // Sleeps until killed (or the watchdog).
        i32::from(ec.wait(token, Some(Deadline::after(WATCHDOG))) != EventWait::TimedOut)
    });
    await_count(ready, 1);
    let deadline = Deadline::after(WATCHDOG);
    while !is_sleeping(victim.pid()) {
        assert!(!deadline.has_passed(), "watchdog: the victim never slept");
        std::thread::yield_now();
    }
    victim.kill();
    let outcome = victim.wait();
    assert_eq!(outcome.signal(), Some(9));

    // The dead waiter's registration is still counted ...
    assert_eq!(ec.waiters(), 1);
    // ... the next notify finds nobody to wake and clears it ...
    assert_eq!(ec.notify_one(), 0);
    assert_eq!(ec.waiters(), 0);
    // ... and from then on notifies are free again.
    assert_eq!(ec.notify_one(), 0);
    assert_eq!(ec.waiters(), 0);
}

#[test]
fn a_dead_waiter_does_not_hide_a_live_one() {
    let shm = Shm::new();
    let (ec, word) = shm.parts();
    // Two children register; one will be killed, the other waits for the word to become 2.
    let victim = fork_child(WATCHDOG, || {
        let token = ec.listen();
        word.fetch_add(1, Ordering::AcqRel);
        ipc_sync::futex::wake_all(word);
        i32::from(ec.wait(token, Some(Deadline::after(WATCHDOG))) != EventWait::TimedOut)
    });
    await_count(word, 1);
    victim.kill();
    assert_eq!(victim.wait().signal(), Some(9));
    let live = fork_child(WATCHDOG, || {
        let deadline = Some(Deadline::after(Duration::from_secs(25)));
        i32::from(!ec.wait_until(&Futex, deadline, || word.load(Ordering::Acquire) >= 2))
    });
    word.fetch_add(1, Ordering::AcqRel);
    ec.notify_one();
    live.wait().assert_success();
    // Both registrations are gone after at most one more notify.
    ec.notify_one();
    assert_eq!(ec.waiters(), 0);
}
