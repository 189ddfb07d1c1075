//! Issue 11, section 2 (Python's Pool API, complete) and the `terminate()` bug of section 4:
//! cancellation of queued and running tasks, `Imap` drop, the rest of Python's map family,
//! where a panic happened, the bounded drop of a non-daemon `Process`, and `Terminated` for
//! every task `terminate()` cuts short. Every test runs under a watchdog.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ipc_shm::{Offset, Segment, SegmentBuilder, TypeTag};
use ipc_tests::{ShmName, child, child_entry};
use pool::{CancelOutcome, Pool, PoolBuilder, ProcessBuilder, StartMethod, TaskError, WorkerState};

/// A limit no test here comes near unless it hangs.
const WATCHDOG: Duration = Duration::from_secs(120);

fn square(x: u64) -> u64 {
    x * x
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn my_pid(_: u64) -> u32 {
    std::process::id()
}

fn pid_of_pair((a, b): (u64, u64)) -> (u64, u32) {
    (a + b, std::process::id())
}

fn indexed_pid(i: u64) -> (u64, u32) {
    (i, std::process::id())
}

/// The line of the `panic!` in [`explode_here`] (the line after this constant).
const PANIC_LINE: u32 = line!() + 3;

fn explode_here(x: u64) -> u64 {
    panic!("exploded on {x}")
}

/// Catches a panic of its own for 0 (the hook records it, nobody takes it); panics for others.
fn catch_own_panic_or_explode(x: u64) -> u64 {
    if x == 0 {
        let caught = std::panic::catch_unwind(|| panic!("caught inside the task"));
        assert!(caught.is_err());
        return 0;
    }
    explode_here(x)
}

fn build(method: StartMethod, processes: usize) -> Pool {
    PoolBuilder::new()
        .processes(processes)
        .start_method(method)
        .build()
        .expect("pool")
}

/// Waits (bounded) until `n` workers of `pool` report a running task; returns their pids.
fn wait_running(pool: &Pool, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let busy: Vec<u32> = pool
            .stats()
            .workers
            .iter()
            .filter(|w| w.state == WorkerState::Busy && w.current_task.is_some())
            .map(|w| w.pid)
            .collect();
        if busy.len() >= n {
            return busy;
        }
        assert!(Instant::now() < deadline, "{n} tasks did not start");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits (bounded) until no worker of `pool` has the pid `gone`.
fn wait_replaced(pool: &Pool, gone: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while pool.stats().workers.iter().any(|w| w.pid == gone) {
        assert!(Instant::now() < deadline, "worker {gone} was not replaced");
        std::thread::sleep(Duration::from_millis(2));
    }
}

ipc_tests::per_start_method!(
    terminate_fails_running_and_queued_tasks_with_terminated,
    cancel_takes_out_a_queued_task_and_kills_a_running_one,
    panicked_points_at_the_panicking_line,
);

// ---------------------------------------------------------------------------------------------
// terminate()

fn terminate_fails_running_and_queued_tasks_with_terminated(method: StartMethod) {
    let _watchdog = ipc_tests::watchdog("terminate", WATCHDOG);
    let pool = build(method, 2);
    let running = pool.apply_async(sleep_ms, 60_000);
    let map = pool.map_async(sleep_ms, vec![60_000; 3], Some(1));
    let queued = pool.apply_async(sleep_ms, 60_000);
    wait_running(&pool, 2);
    pool.terminate();
    // Running and queued alike: `Terminated`, never `WorkerLost { Signal(9) }`.
    assert_eq!(running.get(), Err(TaskError::Terminated));
    assert_eq!(map.get(), Err(TaskError::Terminated));
    assert_eq!(queued.get(), Err(TaskError::Terminated));
    pool.join();

    // And through drop, for an imap in flight (every item, whether it was running or queued).
    let pool = build(method, 2);
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let pending = rx.recv().expect("the pool's results");
        let pending: Vec<pool::AsyncResult<u64>> = pending;
        pending.into_iter().map(|r| r.get()).collect::<Vec<_>>()
    });
    let pending: Vec<_> = (0..4).map(|_| pool.apply_async(sleep_ms, 60_000)).collect();
    wait_running(&pool, 2);
    tx.send(pending).unwrap();
    drop(pool);
    for outcome in waiter.join().unwrap() {
        assert_eq!(outcome, Err(TaskError::Terminated));
    }
}

// ---------------------------------------------------------------------------------------------
// cancel

fn cancel_takes_out_a_queued_task_and_kills_a_running_one(method: StartMethod) {
    let _watchdog = ipc_tests::watchdog("cancel", WATCHDOG);
    let pool = build(method, 1);
    let before = pool.apply(my_pid, 0).unwrap();
    let running = pool.apply_async(sleep_ms, 60_000);
    let queued = pool.apply_async(sleep_ms, 60_000);
    wait_running(&pool, 1);
    assert_eq!(queued.cancel(), CancelOutcome::Dequeued);
    assert_eq!(queued.get(), Err(TaskError::Cancelled));
    let outcome = running.cancel();
    assert_eq!(running.cancel(), CancelOutcome::AlreadyDone);
    let result = running.get();
    assert_eq!(outcome, CancelOutcome::KilledRunning, "{result:?}");
    assert_eq!(result, Err(TaskError::Cancelled));
    // The worker was replaced, and the queued 60 s task never ran: the next task is answered
    // at once by the new worker.
    let started = Instant::now();
    let after = pool.apply(my_pid, 0).unwrap();
    assert_ne!(before, after, "the running task's worker was not replaced");
    assert!(started.elapsed() < Duration::from_secs(30));
    // A finished task is left alone.
    let done = pool.apply_async(square, 3);
    done.wait();
    assert_eq!(done.cancel(), CancelOutcome::AlreadyDone);
    assert_eq!(done.get(), Ok(9));
    // The error callback hears of the cancel.
    let (tx, rx) = std::sync::mpsc::channel();
    let with = pool.apply_async_with(
        sleep_ms,
        60_000,
        |_| panic!("no result expected"),
        move |e| tx.send(e.clone()).unwrap(),
    );
    wait_running(&pool, 1);
    assert_eq!(with.cancel(), CancelOutcome::KilledRunning);
    assert_eq!(rx.recv().unwrap(), TaskError::Cancelled);
    assert_eq!(pool.stats().workers.len(), 1);
}

#[test]
fn cancels_never_trip_the_restart_breaker_nor_fail_other_tasks() {
    let _watchdog = ipc_tests::watchdog("cancel breaker", WATCHDOG);
    // A breaker that trips at the second failure within a minute.
    let pool = PoolBuilder::new()
        .processes(2)
        .restart_limit(2, Duration::from_secs(60))
        .build()
        .unwrap();
    let bystander = pool.apply_async(sleep_ms, 3_000);
    let bystander_pid = wait_running(&pool, 1)[0];
    for round in 0..5 {
        let victim = pool.apply_async(sleep_ms, 60_000);
        let busy = wait_running(&pool, 2);
        let outcome = victim.cancel();
        let result = victim.get();
        assert_eq!(
            outcome,
            CancelOutcome::KilledRunning,
            "round {round}: {result:?}"
        );
        assert_eq!(result, Err(TaskError::Cancelled));
        for pid in busy.into_iter().filter(|&p| p != bystander_pid) {
            wait_replaced(&pool, pid);
        }
    }
    assert_eq!(
        bystander.get(),
        Ok(3_000),
        "another task was failed by a cancel"
    );
    assert_eq!(pool.map(square, 0..10u64).unwrap()[9], 81);
    let stats = pool.stats();
    assert_eq!(stats.workers.len(), 2, "{stats:?}");
    assert!(stats.workers.iter().map(|w| w.restarts).sum::<u64>() >= 5);
}

#[test]
fn cancelling_a_map_cancels_all_its_chunks() {
    let _watchdog = ipc_tests::watchdog("cancel map", WATCHDOG);
    let pool = build(pool::default_start_method(), 2);
    let map = pool.map_async(sleep_ms, vec![60_000; 6], Some(1));
    wait_running(&pool, 2);
    assert_eq!(map.cancel(), CancelOutcome::KilledRunning);
    assert_eq!(map.get(), Err(TaskError::Cancelled));
    // The four queued chunks never run: both workers answer at once.
    let started = Instant::now();
    assert_eq!(
        pool.map_chunked(square, 0..4u64, 1).unwrap(),
        vec![0, 1, 4, 9]
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    pool.close();
    pool.join();
    let stats = pool.stats();
    assert_eq!(stats.in_flight, 0, "{stats:?}");
}

// ---------------------------------------------------------------------------------------------
// Imap drop

const MARKS: usize = 16;
const MARK_TAG: TypeTag = TypeTag::from_name("pool-tests/marks");
const MARKS_AT: Offset<[AtomicU64; MARKS]> = Offset::from_raw(0);

/// Sleeps `delay_ms`, then sets mark `index` in the segment `name` (a task that, once cut
/// short, must leave no mark).
fn mark_after((name, index, delay_ms): (String, u64, u64)) -> u64 {
    std::thread::sleep(Duration::from_millis(delay_ms));
    let segment = Segment::open(&name, MARK_TAG).expect("the marks segment");
    let marks = segment.get(MARKS_AT).expect("the marks");
    marks[index as usize].store(1, Ordering::SeqCst);
    index
}

fn imap_drop_cancels_in_flight_work(ordered: bool) {
    let _watchdog = ipc_tests::watchdog("imap drop", WATCHDOG);
    let name = ShmName::new("imap-drop");
    let segment = SegmentBuilder::new(std::mem::size_of::<[AtomicU64; MARKS]>())
        .name(&name)
        .type_tag(MARK_TAG)
        .create()
        .unwrap();
    let marks = segment.get(MARKS_AT).unwrap();
    let pool = PoolBuilder::new()
        .processes(2)
        .max_in_flight(8)
        .build()
        .unwrap();
    // Item 0 is quick; every other item would mark after 2 s.
    let args = (0..MARKS as u64).map(|i| (name.to_string(), i, if i == 0 { 0 } else { 2_000 }));
    let mut imap = if ordered {
        pool.imap(mark_after, args)
    } else {
        pool.imap_unordered(mark_after, args)
    };
    assert_eq!(imap.next(), Some(Ok(0)));
    // Drop while items run (on both workers) and others wait in the queue.
    wait_running(&pool, 2);
    drop(imap);
    // Once the pool has drained its queue and its workers exited, no task can mark any more.
    pool.close();
    pool.join();
    let marked: Vec<usize> = (0..MARKS)
        .filter(|&i| marks[i].load(Ordering::SeqCst) != 0)
        .collect();
    assert_eq!(marked, vec![0], "cancelled tasks ran to their end");
}

#[test]
fn dropping_an_imap_cancels_its_tasks() {
    imap_drop_cancels_in_flight_work(true);
}

#[test]
fn dropping_an_imap_unordered_cancels_its_tasks() {
    imap_drop_cancels_in_flight_work(false);
}

// ---------------------------------------------------------------------------------------------
// The map family

#[test]
fn map_async_with_runs_one_callback_in_the_parent() {
    let _watchdog = ipc_tests::watchdog("map_async_with", WATCHDOG);
    let pool = build(pool::default_start_method(), 2);
    let parent = std::process::id();
    let (tx, rx) = std::sync::mpsc::channel();
    let ok_tx = tx.clone();
    let ok = pool.map_async_with(
        square,
        0..10u64,
        Some(3),
        move |v: &Vec<u64>| ok_tx.send(("ok", v.len(), std::process::id())).unwrap(),
        |_| panic!("no error expected"),
    );
    assert_eq!(
        ok.get().unwrap(),
        (0..10u64).map(square).collect::<Vec<_>>()
    );
    assert_eq!(rx.recv().unwrap(), ("ok", 10, parent));

    let err_tx = tx.clone();
    let failed = pool.map_async_with(
        explode_here,
        vec![1, 2, 3],
        None,
        |_: &Vec<u64>| panic!("no result expected"),
        move |e| {
            let panicked = matches!(e, TaskError::Panicked { .. }) as usize;
            err_tx.send(("err", panicked, std::process::id())).unwrap()
        },
    );
    assert!(matches!(failed.get(), Err(TaskError::Panicked { .. })));
    assert_eq!(rx.recv().unwrap(), ("err", 1, parent));
    // Exactly one callback per map.
    drop(tx);
    assert!(rx.recv().is_err());
}

#[test]
fn starmap_async_and_chunk_sizes() {
    let _watchdog = ipc_tests::watchdog("starmap", WATCHDOG);
    let pool = build(pool::default_start_method(), 2);
    let pairs: Vec<(u64, u64)> = (0..10).map(|i| (i, 100)).collect();
    let got = pool
        .starmap_async(pid_of_pair, pairs.clone(), None)
        .get()
        .unwrap();
    let sums: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(sums, (100..110).collect::<Vec<_>>());
    // One chunk of ten: one worker ran every pair.
    let got = pool.starmap_chunked(pid_of_pair, pairs, 10).unwrap();
    assert!(got.iter().all(|(_, pid)| *pid == got[0].1), "{got:?}");
    // imap_unordered in chunks of 5: each chunk ran on one worker.
    let mut got: Vec<(u64, u32)> = pool
        .imap_unordered_chunked(indexed_pid, 0..10u64, 5)
        .collect::<Result<_, _>>()
        .unwrap();
    got.sort();
    assert_eq!(
        got.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    for chunk in got.chunks(5) {
        assert!(chunk.iter().all(|(_, pid)| *pid == chunk[0].1), "{got:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Where a panic happened

fn panicked_points_at_the_panicking_line(method: StartMethod) {
    let _watchdog = ipc_tests::watchdog("panic location", WATCHDOG);
    let pool = build(method, 1);
    let error = pool.apply(explode_here, 7).unwrap_err();
    let TaskError::Panicked {
        message, location, ..
    } = &error
    else {
        panic!("expected a panic, got {error:?}");
    };
    assert_eq!(message, "exploded on 7");
    let location = location.as_ref().expect("a location");
    assert!(location.file.ends_with("python_api.rs"), "{location}");
    assert_eq!(location.line, PANIC_LINE, "{location}");
    assert_eq!(error.panic_location(), Some(location));
    // The Display stays one short line: location and message, no backtrace.
    assert_eq!(
        error.to_string(),
        format!("the task panicked at {location}: exploded on 7")
    );
    // The same through a Process.
    let child = ProcessBuilder::new()
        .start_method(method)
        .spawn(explode_here, 8)
        .unwrap();
    let error = child.join().result.unwrap_err();
    assert_eq!(error.panic_location().map(|l| l.line), Some(PANIC_LINE));
    // In one chunk, a task that caught a panic of its own, then one that panics: the second is
    // given its own location, not the one the first left behind.
    let outcomes: Vec<_> = pool
        .imap_chunked(catch_own_panic_or_explode, [0, 3], 2)
        .collect();
    assert!(matches!(outcomes[0], Ok(0)), "{outcomes:?}");
    let Err(error) = &outcomes[1] else {
        panic!("{outcomes:?}")
    };
    assert_eq!(error.panic_location().map(|l| l.line), Some(PANIC_LINE));
}

child_entry! {
    fn backtraces_follow_rust_backtrace() {
        let wanted = std::env::var("RUST_BACKTRACE").unwrap() != "0";
        for method in [StartMethod::Fork, StartMethod::ForkServer, StartMethod::Spawn] {
            let pool = build(method, 1);
            let error = pool.apply(explode_here, 1).unwrap_err();
            if wanted {
                let trace = error.backtrace().expect("a backtrace");
                assert!(trace.contains("explode_here"), "{method:?}: {trace}");
                assert!(!error.to_string().contains("explode_here"));
            } else {
                assert_eq!(error.backtrace(), None, "{method:?}");
            }
        }
    }
}

#[test]
fn the_workers_backtrace_comes_with_rust_backtrace() {
    for setting in ["1", "0"] {
        let outcome = child!(backtraces_follow_rust_backtrace)
            .env("RUST_BACKTRACE", setting)
            .watchdog(WATCHDOG)
            .run();
        outcome.assert_success();
    }
}

// ---------------------------------------------------------------------------------------------
// Dropping a Process

fn forever(_: ()) {
    loop {
        std::thread::park();
    }
}

#[test]
fn dropping_a_running_non_daemon_process_is_bounded() {
    let _watchdog = ipc_tests::watchdog("process drop", WATCHDOG);
    for method in [
        StartMethod::Fork,
        StartMethod::ForkServer,
        StartMethod::Spawn,
    ] {
        let child = ProcessBuilder::new()
            .start_method(method)
            .drop_grace(Duration::from_millis(200))
            .spawn(forever, ())
            .unwrap_or_else(|e| panic!("{method:?}: {e}"));
        let child = child
            .join_timeout(Duration::from_millis(20))
            .expect_err("a child that never ends");
        let pid = child.pid();
        let started = Instant::now();
        drop(child);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200),
            "{method:?}: no grace ({took:?})"
        );
        assert!(
            took < Duration::from_secs(20),
            "{method:?}: drop took {took:?}"
        );
        assert!(
            !ipc_tests::process_is_running(pid),
            "{method:?}: the child outlived the drop"
        );
    }
    // A child that finishes within its grace is waited for, as before.
    let child = ProcessBuilder::new().spawn(sleep_ms, 50).unwrap();
    let pid = child.pid();
    drop(child);
    assert!(!ipc_tests::process_is_running(pid));
}

// ---------------------------------------------------------------------------------------------
// A panicking imap input

/// 0, 1, 2, 3, 4, then a panic.
fn panicking_input() -> impl Iterator<Item = u64> {
    (0..10u64).inspect(|x| assert!(*x < 5, "bad input {x}"))
}

#[test]
fn a_panicking_imap_input_yields_the_results_before_it_then_an_error() {
    let _watchdog = ipc_tests::watchdog("panicking input", WATCHDOG);
    let pool = build(pool::default_start_method(), 2);
    let expected_error = TaskError::InputPanicked {
        message: "bad input 5".into(),
    };
    for chunksize in [1, 3] {
        let items: Vec<_> = pool
            .imap_chunked(square, panicking_input(), chunksize)
            .collect();
        let mut expected: Vec<Result<u64, TaskError>> = (0..5u64).map(|x| Ok(x * x)).collect();
        expected.push(Err(expected_error.clone()));
        assert_eq!(items, expected, "chunksize {chunksize}");
    }
    let mut items: Vec<_> = pool.imap_unordered(square, panicking_input()).collect();
    assert_eq!(items.pop(), Some(Err(expected_error)));
    let mut squares: Vec<u64> = items.into_iter().map(Result::unwrap).collect();
    squares.sort();
    assert_eq!(squares, vec![0, 1, 4, 9, 16]);
}
