//! Event, Semaphore, Barrier and Condition across real processes (forked children sharing an
//! anonymous segment), with watchdogs everywhere.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ipc_shm::os::Signal;
use ipc_shm::{Layout, Offset, Segment, SegmentBuilder, TypeTag};
use ipc_sync::{Barrier, BarrierWaitError, Condition, Event, Lock, Semaphore};
use ipc_tests::fork_child;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};

const TAG: TypeTag = TypeTag::from_name("ipc-sync/tests/primitives");
const WATCHDOG: Duration = Duration::from_secs(30);

struct Offsets {
    event: Offset<Event>,
    sem: Offset<Semaphore>,
    barrier: Offset<Barrier>,
    lock: Offset<Lock>,
    cond: Offset<Condition>,
    inside: Offset<AtomicU32>,
    max_inside: Offset<AtomicU32>,
    ready: Offset<AtomicU32>,
    value: Offset<AtomicU32>,
}

fn create(init: impl FnOnce(&Segment, &Offsets)) -> (Segment, Offsets) {
    let mut l = Layout::new();
    let o = Offsets {
        event: l.add().unwrap(),
        sem: l.add().unwrap(),
        barrier: l.add().unwrap(),
        lock: l.add().unwrap(),
        cond: l.add().unwrap(),
        inside: l.add().unwrap(),
        max_inside: l.add().unwrap(),
        ready: l.add().unwrap(),
        value: l.add().unwrap(),
    };
    let seg = SegmentBuilder::new(l.size())
        .type_tag(TAG)
        .create_with(|seg| {
            init(seg, &o);
            Ok::<(), std::convert::Infallible>(())
        })
        .unwrap();
    (seg, o)
}

/// Waits (with a watchdog) until `word` reaches `n`, without sleeping as synchronisation.
fn await_count(word: &AtomicU32, n: u32) {
    let deadline = ipc_sync::Deadline::after(WATCHDOG);
    loop {
        let v = word.load(Ordering::Acquire);
        if v >= n {
            return;
        }
        assert!(!deadline.has_passed(), "watchdog: count stuck at {v} < {n}");
        ipc_sync::futex::wait(
            word,
            v,
            Some(ipc_sync::Deadline::after(Duration::from_millis(50))),
        );
    }
}

fn bump(word: &AtomicU32) {
    word.fetch_add(1, Ordering::AcqRel);
    ipc_sync::futex::wake_all(word);
}

#[test]
fn event_set_in_one_process_wakes_waiters_in_three_others() {
    let (seg, o) = create(|_, _| {});
    let event = seg.get(o.event).unwrap();
    let ready = seg.get(o.ready).unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            fork_child(WATCHDOG, || {
                bump(ready);
                i32::from(!event.wait_timeout(Duration::from_secs(25)))
            })
        })
        .collect();
    await_count(ready, 3);
    // The setter is a fourth process.
    fork_child(WATCHDOG, || {
        event.set();
        0
    })
    .wait()
    .assert_success();
    for w in waiters {
        w.wait().assert_success();
    }
    assert!(event.is_set());
}

#[test]
fn semaphore_of_two_admits_at_most_two_of_six_processes() {
    let (seg, o) = create(|seg, o| {
        seg.get(o.sem).unwrap().release(2).unwrap();
    });
    let sem = seg.get(o.sem).unwrap();
    let inside = seg.get(o.inside).unwrap();
    let max_inside = seg.get(o.max_inside).unwrap();
    let children: Vec<_> = (0..6)
        .map(|_| {
            fork_child(WATCHDOG, || {
                for _ in 0..300 {
                    sem.acquire();
                    let now = inside.fetch_add(1, Ordering::AcqRel) + 1;
                    max_inside.fetch_max(now, Ordering::AcqRel);
                    std::hint::spin_loop();
                    inside.fetch_sub(1, Ordering::AcqRel);
                    sem.release(1).unwrap();
                }
                0
            })
        })
        .collect();
    for c in children {
        c.wait().assert_success();
    }
    let max = max_inside.load(Ordering::Relaxed);
    assert!(max <= 2, "{max} processes were inside at once");
    assert!(max >= 1);
    assert_eq!(sem.value(), 2);
}

#[test]
fn barrier_is_reused_for_many_generations_across_processes() {
    const GENERATIONS: u32 = 300;
    let (seg, o) = create(|seg, o| seg.get(o.barrier).unwrap().configure(3));
    let barrier = seg.get(o.barrier).unwrap();
    let value = seg.get(o.value).unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            fork_child(WATCHDOG, || {
                for g in 0..GENERATIONS {
                    // Everyone sees the counter of the previous generation complete.
                    if value.load(Ordering::Acquire) < g * 3 {
                        return 2;
                    }
                    value.fetch_add(1, Ordering::AcqRel);
                    if barrier.wait_timeout(Duration::from_secs(20)).is_err() {
                        return 1;
                    }
                    if value.load(Ordering::Acquire) < (g + 1) * 3 {
                        return 3;
                    }
                    if barrier.wait_timeout(Duration::from_secs(20)).is_err() {
                        return 1;
                    }
                }
                barrier.leave();
                0
            })
        })
        .collect();
    for g in 0..GENERATIONS {
        value.fetch_add(1, Ordering::AcqRel);
        barrier.wait_timeout(Duration::from_secs(20)).unwrap();
        assert!(value.load(Ordering::Acquire) >= (g + 1) * 3);
        barrier.wait_timeout(Duration::from_secs(20)).unwrap();
    }
    for c in children {
        c.wait().assert_success();
    }
    assert_eq!(value.load(Ordering::Relaxed), GENERATIONS * 3);
    assert!(!barrier.is_broken());
}

#[test]
fn a_killed_party_breaks_the_barrier() {
    let (seg, o) = create(|seg, o| seg.get(o.barrier).unwrap().configure(3));
    let barrier = seg.get(o.barrier).unwrap();
    let ready = seg.get(o.ready).unwrap();
    // Generation 0 with all three parties, so every process is known to the barrier.
    let doomed = fork_child(WATCHDOG, || {
        barrier.wait_timeout(Duration::from_secs(25)).unwrap();
        bump(ready);
        loop {
            ipc_sync::futex::wait(ready, u32::MAX, None);
        }
    });
    let survivor = fork_child(WATCHDOG, || {
        barrier.wait_timeout(Duration::from_secs(25)).unwrap();
        // Generation 1: the doomed party never arrives.
        match barrier.wait_timeout(Duration::from_secs(25)) {
            Err(BarrierWaitError::Broken) => 0,
            other => {
                eprintln!("survivor got {other:?}");
                1
            }
        }
    });
    barrier.wait_timeout(Duration::from_secs(25)).unwrap();
    await_count(ready, 1);
    doomed.kill();
    let r = barrier.wait_timeout(Duration::from_secs(25));
    assert_eq!(r, Err(BarrierWaitError::Broken));
    survivor.wait().assert_success();
    doomed.wait();
    assert!(barrier.is_broken());
}

#[test]
fn condition_notify_crosses_processes() {
    let (seg, o) = create(|_, _| {});
    let lock = seg.get(o.lock).unwrap();
    let cond = seg.get(o.cond).unwrap();
    let value = seg.get(o.value).unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            fork_child(WATCHDOG, || {
                let g = lock.lock().unwrap();
                let (g, ok) = cond
                    .wait_for_timeout(g, Duration::from_secs(25), |_| {
                        value.load(Ordering::Relaxed) == 7
                    })
                    .unwrap();
                drop(g);
                i32::from(!ok)
            })
        })
        .collect();
    let g = lock.lock().unwrap();
    value.store(7, Ordering::Relaxed);
    drop(g);
    cond.notify_all();
    for c in children {
        c.wait().assert_success();
    }
}

extern "C" fn noop(_: i32) {}

#[test]
fn signals_during_event_and_semaphore_waits_do_not_end_them_early() {
    let (seg, o) = create(|_, _| {});
    let event = seg.get(o.event).unwrap();
    let sem = seg.get(o.sem).unwrap();
    let ready = seg.get(o.ready).unwrap();
    let value = seg.get(o.value).unwrap();
    let mut child = fork_child(WATCHDOG, || {
        let action = SigAction::new(SigHandler::Handler(noop), SaFlags::empty(), SigSet::empty());
        // SAFETY: the handler does nothing, so it is async-signal-safe.
        unsafe { sigaction(Signal::SIGUSR1, &action) }.unwrap();
        bump(ready);
        let set = event.wait_timeout(Duration::from_secs(25));
        if !set || value.load(Ordering::Acquire) != 1 {
            return 1;
        }
        let got = sem.acquire_timeout(Duration::from_secs(25));
        if !got || value.load(Ordering::Acquire) != 2 {
            return 2;
        }
        0
    });
    await_count(ready, 1);
    for step in 1..=2 {
        for _ in 0..10 {
            child.signal(Signal::SIGUSR1);
            // Not synchronisation: spaces the signals so some land while the child sleeps.
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            child.wait_timeout(Duration::from_millis(30)).is_none(),
            "woke early"
        );
        value.store(step, Ordering::Release);
        if step == 1 {
            event.set();
        } else {
            sem.release(1).unwrap();
        }
    }
    child.wait().assert_success();
}
