//! Python's Pool semantics under every start method, and failure containment with real crashes.

use std::collections::HashSet;
use std::time::Duration;

use ipc_shm::os;
use pool::{Exit, Pool, PoolBuilder, PoolError, StartMethod, TaskError, WorkerState};

fn square(x: u64) -> u64 {
    x * x
}

fn add(pair: (u64, u64)) -> u64 {
    pair.0 + pair.1
}

fn my_pid(_: u64) -> u32 {
    std::process::id()
}

fn explode(msg: String) -> u64 {
    panic!("{msg}");
}

fn crash(how: String) -> u64 {
    match how.as_str() {
        "abort" => std::process::abort(),
        "exit3" => std::process::exit(3),
        "segv" => loop {
            // The first SIGSEGV may meet std's stack-overflow handler, which restores the
            // default action and returns; the next one kills.
            os::kill(os::pid(), os::Signal::SIGSEGV).unwrap();
        },
        "kill" => {
            os::kill(os::pid(), os::Signal::SIGKILL).unwrap();
            unreachable!()
        }
        // A task long enough (>= 50 us) that the worker reports it before starting the next.
        "slow" => {
            std::thread::sleep(Duration::from_micros(200));
            7
        }
        _ => 7,
    }
}

/// The length and a position-weighted checksum of `bytes` (a swapped or stale byte changes it).
fn checksum(bytes: Vec<u8>) -> (usize, u64) {
    let sum = bytes.iter().enumerate().fold(0u64, |acc, (i, &b)| {
        acc.wrapping_mul(31).wrapping_add(u64::from(b) ^ i as u64)
    });
    (bytes.len(), sum)
}

/// `len` bytes that differ with `seed`.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn build(method: StartMethod, processes: usize) -> Pool {
    PoolBuilder::new()
        .processes(processes)
        .start_method(method)
        .build()
        .expect("pool")
}

ipc_tests::per_start_method!(
    apply_map_and_async,
    callbacks_run_in_the_parent,
    imap_is_lazy_and_ordered,
    panics_fail_one_task_and_the_worker_lives,
    crashes_fail_one_task_and_the_worker_is_replaced,
    a_worker_killed_from_outside_fails_its_task_only,
    timeouts_kill_and_replace_the_worker,
    recycling_changes_pids,
    close_join_and_terminate,
    large_arguments_arrive_whole_across_growth_and_replacement,
);

fn apply_map_and_async(method: StartMethod) {
    let pool = build(method, 2);
    assert_eq!(pool.apply(square, 12).unwrap(), 144);
    assert_eq!(
        pool.map(square, 0..10u64).unwrap(),
        (0..10u64).map(|x| x * x).collect::<Vec<_>>()
    );
    assert_eq!(pool.starmap(add, vec![(1, 2), (3, 4)]).unwrap(), vec![3, 7]);
    assert_eq!(pool.map_chunked(square, 0..7u64, 3).unwrap().len(), 7);
    let pending: Vec<_> = (0..20u64).map(|x| pool.apply_async(square, x)).collect();
    let got: Vec<u64> = pending.into_iter().map(|r| r.get().unwrap()).collect();
    assert_eq!(got, (0..20u64).map(|x| x * x).collect::<Vec<_>>());
    let r = pool.map_async(square, vec![3u64, 4], None);
    r.wait();
    assert!(r.ready());
    assert_eq!(r.successful(), Some(true));
    assert_eq!(r.get().unwrap(), vec![9, 16]);
    assert_eq!(
        pool.map(square, Vec::<u64>::new()).unwrap(),
        Vec::<u64>::new()
    );
    // A non-capturing closure is a plain function too.
    assert_eq!(pool.apply(|s: String| s.len(), "four".into()).unwrap(), 4);
}

fn callbacks_run_in_the_parent(method: StartMethod) {
    let pool = build(method, 1);
    let (tx, rx) = std::sync::mpsc::channel();
    let tx2 = tx.clone();
    let parent = std::process::id();
    let ok = pool.apply_async_with(
        square,
        5,
        move |v| tx.send(("ok", *v, std::process::id())).unwrap(),
        |_| panic!("no error expected"),
    );
    assert_eq!(ok.get().unwrap(), 25);
    assert_eq!(rx.recv().unwrap(), ("ok", 25, parent));
    let err = pool.apply_async_with(
        explode,
        "bang".to_string(),
        |_| panic!("no result expected"),
        move |e| {
            tx2.send((
                "err",
                matches!(e, TaskError::Panicked { .. }) as u64,
                std::process::id(),
            ))
            .unwrap()
        },
    );
    assert!(err.get().is_err());
    assert_eq!(rx.recv().unwrap(), ("err", 1, parent));
}

fn imap_is_lazy_and_ordered(method: StartMethod) {
    let pool = PoolBuilder::new()
        .processes(2)
        .start_method(method)
        .max_in_flight(8)
        .build()
        .unwrap();
    // An endless input: only a bounded look-ahead is ever submitted.
    let first: Vec<u64> = pool
        .imap(square, 0u64..)
        .take(50)
        .map(Result::unwrap)
        .collect();
    assert_eq!(first, (0..50u64).map(|x| x * x).collect::<Vec<_>>());
    let stats = pool.stats();
    assert!(stats.submitted <= 50 + 8, "submitted {}", stats.submitted);
    let mut unordered: Vec<u64> = pool
        .imap_unordered(square, 0..100u64)
        .map(Result::unwrap)
        .collect();
    unordered.sort();
    assert_eq!(unordered, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
    let chunked: Vec<u64> = pool
        .imap_chunked(square, 0..30u64, 7)
        .map(Result::unwrap)
        .collect();
    assert_eq!(chunked, (0..30u64).map(|x| x * x).collect::<Vec<_>>());
}

fn panics_fail_one_task_and_the_worker_lives(method: StartMethod) {
    let pool = build(method, 1);
    let before = pool.apply(my_pid, 0).unwrap();
    match pool.apply(explode, "deliberate".to_string()) {
        Err(TaskError::Panicked { message, .. }) => assert!(message.contains("deliberate")),
        other => panic!("expected a panic, got {other:?}"),
    }
    assert_eq!(
        pool.apply(my_pid, 0).unwrap(),
        before,
        "the worker was not replaced"
    );
    // In a map, the panic fails the map, as in Python; imap reports it per item.
    assert!(pool.map(explode, vec!["x".to_string()]).is_err());
    let items: Vec<_> = pool
        .imap(crash, vec!["fine".to_string(), "fine".to_string()])
        .collect();
    assert_eq!(items.len(), 2);
}

fn crashes_fail_one_task_and_the_worker_is_replaced(method: StartMethod) {
    let pool = build(method, 2);
    assert!(
        pool.stats().workers.iter().all(|w| w.replaced_in.is_none()),
        "first workers replaced nobody"
    );
    for how in ["abort", "exit3", "segv", "kill"] {
        let lost = match pool.apply(crash, how.to_string()) {
            Err(TaskError::WorkerLost { exit, pid }) => {
                let expected = match how {
                    "abort" => Exit::Signal(6),
                    "exit3" => Exit::Code(3),
                    "segv" => Exit::Signal(11),
                    _ => Exit::Signal(9),
                };
                assert_eq!(exit, expected, "{how}");
                pid
            }
            other => panic!("{how}: expected WorkerLost, got {other:?}"),
        };
        // The pool runs on, and the lost worker is replaced.
        assert_eq!(pool.map(square, 0..20u64).unwrap()[19], 361);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let pids: HashSet<u32> = pool.stats().workers.iter().map(|w| w.pid).collect();
            if pids.len() == 2 && !pids.contains(&lost) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{how}: worker {lost} was not replaced"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        // The replacement says how long replacing took, measured inside the pool.
        let replaced: Vec<Duration> = pool
            .stats()
            .workers
            .iter()
            .filter_map(|w| w.replaced_in)
            .collect();
        assert!(
            !replaced.is_empty() && replaced.iter().all(|d| *d < Duration::from_secs(20)),
            "{how}: {replaced:?}"
        );
    }
    // A crash inside a chunk fails that task only; the others of the chunk still run (exactly
    // once: those before it were reported before it started, those after run elsewhere).
    let mut args: Vec<String> = (0..10).map(|_| "slow".to_string()).collect();
    args[4] = "exit3".to_string();
    let results: Vec<Result<u64, TaskError>> = pool.imap_chunked(crash, args, 10).collect();
    assert_eq!(results.len(), 10);
    for (i, r) in results.iter().enumerate() {
        if i == 4 {
            assert!(matches!(r, Err(TaskError::WorkerLost { .. })), "{r:?}");
        } else {
            assert_eq!(r.as_ref().ok(), Some(&7), "item {i}: {r:?}");
        }
    }
    let stats = pool.stats();
    assert!(stats.failed >= 5, "{stats:?}");
}

fn a_worker_killed_from_outside_fails_its_task_only(method: StartMethod) {
    let pool = build(method, 2);
    let stuck = pool.apply_async(sleep_ms, 60_000);
    // Wait (bounded) until a worker's progress slot shows the task running (the driver reads it
    // at each 100 ms liveness slice), then SIGKILL that worker from here. (Killed before it
    // started the task, the worker would not fail it: an unstarted task runs elsewhere.)
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let victim = loop {
        if let Some(w) = pool
            .stats()
            .workers
            .iter()
            .find(|w| w.state == WorkerState::Busy && w.current_task == Some(0))
        {
            break w.pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no worker picked the task up"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    os::kill(victim, os::Signal::SIGKILL).unwrap();
    match stuck.get() {
        Err(TaskError::WorkerLost { pid, exit }) => {
            assert_eq!(pid, victim);
            assert_eq!(exit, Exit::Signal(9));
        }
        other => panic!("expected WorkerLost, got {other:?}"),
    }
    assert_eq!(pool.map(square, 0..10u64).unwrap()[9], 81);
}

fn timeouts_kill_and_replace_the_worker(method: StartMethod) {
    let pool = PoolBuilder::new()
        .processes(1)
        .start_method(method)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let before = pool.apply(my_pid, 0).unwrap();
    match pool.apply(sleep_ms, 60_000) {
        Err(TaskError::Timeout { limit }) => assert_eq!(limit, Duration::from_millis(300)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    let after = pool.apply(my_pid, 0).unwrap();
    assert_ne!(before, after);
    assert_eq!(pool.apply(sleep_ms, 1).unwrap(), 1);
}

fn recycling_changes_pids(method: StartMethod) {
    let pool = PoolBuilder::new()
        .processes(2)
        .start_method(method)
        .max_tasks_per_child(5)
        .build()
        .unwrap();
    let pids: Vec<u32> = pool.map_chunked(my_pid, 0..60u64, 1).unwrap();
    let distinct: HashSet<u32> = pids.iter().copied().collect();
    assert!(
        distinct.len() >= 6,
        "only {} distinct worker pids",
        distinct.len()
    );
    // Every seat recycles its worker: the map may return while a seat's first replacement is
    // still starting (its fifth task was among the first, and the other seat ran the rest), so
    // the count is awaited, within a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = pool.stats();
        if stats.workers.iter().all(|w| w.restarts > 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a seat never replaced its worker: {:?}",
            stats.workers
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // Retired workers exit after their replacements start; none is left behind.
    drop(pool);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while distinct.iter().any(|&p| ipc_tests::process_is_running(p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "a retired worker outlived the pool"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn close_join_and_terminate(method: StartMethod) {
    let pool = build(method, 2);
    let pending = pool.apply_async(sleep_ms, 50);
    pool.close();
    assert!(matches!(
        pool.apply(square, 1),
        Err(TaskError::Pool(PoolError::Closed))
    ));
    pool.join();
    assert_eq!(
        pending.get().unwrap(),
        50,
        "queued work finishes after close"
    );
    assert_eq!(pool.workers(), 0);

    let pool = build(method, 2);
    let long = pool.apply_async(sleep_ms, 60_000);
    let pids: Vec<u32> = pool.stats().workers.iter().map(|w| w.pid).collect();
    pool.terminate();
    pool.join();
    assert!(matches!(
        long.get(),
        Err(TaskError::Terminated) | Err(TaskError::WorkerLost { .. })
    ));
    for pid in pids {
        assert!(
            !ipc_tests::process_is_running(pid),
            "worker {pid} outlived terminate"
        );
    }
}

#[test]
fn a_large_map_is_exact_and_ordered() {
    let pool = build(StartMethod::Fork, 2);
    let n = 100_000u64;
    let out = pool.map(square, 0..n).unwrap();
    assert_eq!(out.len(), n as usize);
    assert!(
        out.iter()
            .enumerate()
            .all(|(i, &v)| v == (i as u64) * (i as u64))
    );
    let stats = pool.stats();
    assert_eq!(stats.done, n);
    assert_eq!(stats.in_flight, 0);
}

#[test]
fn many_threads_share_one_pool() {
    let pool = build(StartMethod::Fork, 2);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let pool = &pool;
            s.spawn(move || {
                for i in 0..50u64 {
                    let x = t * 1000 + i;
                    assert_eq!(pool.apply(square, x).unwrap(), x * x);
                }
                let m = pool.map(square, 0..100u64).unwrap();
                assert_eq!(m[99], 99 * 99);
            });
        }
    });
    assert_eq!(pool.stats().done, 4 * (50 + 100));
}

fn init_ok(level: u32) {
    assert_eq!(level, 3);
}

fn init_fails(_: u32) {
    panic!("initializer refuses");
}

#[test]
fn initializer_runs_and_failures_are_reported() {
    let pool = PoolBuilder::new()
        .processes(2)
        .initializer(init_ok, 3)
        .build()
        .unwrap();
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
    let err = PoolBuilder::new()
        .processes(1)
        .initializer(init_fails, 0)
        .build()
        .unwrap_err();
    match err {
        PoolError::InitializerFailed { message } => {
            assert!(message.contains("initializer refuses"), "{message}")
        }
        other => panic!("expected InitializerFailed, got {other:?}"),
    }
}

#[test]
fn the_pool_grows_and_shrinks() {
    let pool = PoolBuilder::new()
        .processes(1)
        .max_workers(3)
        .idle_timeout(Duration::from_millis(100))
        .start_method(StartMethod::Fork)
        .build()
        .unwrap();
    assert_eq!(pool.workers(), 1);
    let pending: Vec<_> = (0..3).map(|_| pool.apply_async(sleep_ms, 300)).collect();
    // The pool grows as the tasks wait; all three run at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while pool
        .stats()
        .workers
        .iter()
        .filter(|w| w.state == WorkerState::Busy)
        .count()
        < 3
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the pool did not grow: {:?}",
            pool.stats()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    for p in pending {
        assert_eq!(p.get().unwrap(), 300);
    }
    // Idle workers beyond `processes` retire after the idle timeout.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while pool.workers() > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pool did not shrink"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(pool.apply(square, 2).unwrap(), 4);
}

#[test]
fn processes_return_results_panics_and_exit_statuses() {
    let child = pool::ProcessBuilder::new()
        .name("squarer")
        .spawn(square, 9)
        .unwrap();
    assert_eq!(child.name(), "squarer");
    let done = child.join();
    assert_eq!(done.result.unwrap(), 81);
    assert_eq!(done.exit, Exit::Code(0));

    let child = pool::ProcessBuilder::new()
        .spawn(explode, "boom".to_string())
        .unwrap();
    assert!(matches!(
        child.join().result,
        Err(TaskError::Panicked { .. })
    ));

    let child = pool::ProcessBuilder::new()
        .spawn(crash, "exit3".to_string())
        .unwrap();
    let done = child.join();
    assert_eq!(done.exit, Exit::Code(3));
    assert!(matches!(done.result, Err(TaskError::WorkerLost { .. })));

    let mut child = pool::ProcessBuilder::new()
        .daemon(true)
        .spawn(sleep_ms, 60_000)
        .unwrap();
    assert!(child.is_alive());
    child.kill();
    let done = child.join();
    assert_eq!(done.exit, Exit::Signal(9));

    let child = pool::ProcessBuilder::new().spawn(sleep_ms, 60_000).unwrap();
    let child = child.join_timeout(Duration::from_millis(20)).unwrap_err();
    child.terminate();
    assert_eq!(child.join().exit, Exit::Signal(15));
}

fn grow_memory(mb: usize) -> usize {
    // Touch `mb` MiB and keep them: the worker's RSS grows past the limit.
    let v = vec![1u8; mb << 20];
    let len = v.len();
    std::mem::forget(v);
    len
}

#[test]
fn workers_over_the_memory_limit_are_replaced() {
    let pool = PoolBuilder::new()
        .processes(1)
        .start_method(StartMethod::Fork)
        .max_memory_per_child(64 << 20)
        .build()
        .unwrap();
    let before = pool.apply(my_pid, 0).unwrap();
    assert_eq!(pool.apply(grow_memory, 128).unwrap(), 128 << 20);
    let after = pool.apply(my_pid, 0).unwrap();
    assert_ne!(
        before, after,
        "a worker past max_memory_per_child must be replaced"
    );
}

fn die_at_start(_: u32) {
    std::process::exit(9);
}

#[test]
fn a_restart_loop_trips_the_breaker() {
    let err = PoolBuilder::new()
        .processes(1)
        .initializer(die_at_start, 0)
        .restart_limit(3, Duration::from_secs(60))
        .build()
        .unwrap_err();
    assert!(
        matches!(err, PoolError::InitializerFailed { .. }),
        "{err:?}"
    );
}

#[test]
fn stats_report_workers_and_counters() {
    let pool = build(StartMethod::Fork, 2);
    pool.map(square, 0..1000u64).unwrap();
    let _ = pool.apply(explode, "counted".into());
    let stats = pool.stats();
    assert_eq!(stats.submitted, 1001);
    assert_eq!(stats.done, 1000);
    assert_eq!(stats.failed, 1);
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.workers.len(), 2);
    for w in &stats.workers {
        assert!(ipc_tests::process_is_running(w.pid));
        assert!(w.rss_bytes > 0, "{w:?}");
    }
    assert_eq!(
        stats.workers.iter().map(|w| w.tasks_done).sum::<u64>(),
        1000
    );
    assert_eq!(stats.workers.iter().map(|w| w.tasks_failed).sum::<u64>(), 1);
}

#[test]
fn async_results_are_futures_and_join_closes() {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let pool = build(StartMethod::Fork, 1);
    let mut fut = std::pin::pin!(pool.apply_async(square, 11));
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let value = loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(v) => break v.unwrap(),
            // Woken by the pool thread that completes the result.
            Poll::Pending => std::thread::park_timeout(Duration::from_secs(1)),
        }
    };
    assert_eq!(value, 121);
    let pending = pool.apply_async(sleep_ms, 20);
    assert!(pool.join_timeout(Duration::from_secs(30)));
    assert_eq!(pending.get().unwrap(), 20);
    assert!(matches!(
        pool.apply(square, 1),
        Err(TaskError::Pool(PoolError::Closed))
    ));
}

/// An `apply` that finds its worker idle runs on the calling thread, without a job: its
/// worker still shows busy while it runs, with a running time (known from the first liveness
/// check on, and never longer than the call has lasted), and the counts take it in.
#[test]
fn an_apply_run_on_the_callers_thread_shows_in_the_stats() {
    let pool = build(StartMethod::Fork, 1);
    assert_eq!(pool.apply(square, 2).unwrap(), 4);
    std::thread::scope(|s| {
        let begun = std::time::Instant::now();
        let runner = s.spawn(|| pool.apply(sleep_ms, 1_000));
        let deadline = begun + Duration::from_secs(20);
        let runtime = loop {
            let w = pool.stats().workers[0].clone();
            if w.state == WorkerState::Busy
                && let Some(runtime) = w.current_task_runtime
            {
                break runtime;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the worker never showed busy with a running time: {w:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(runtime <= begun.elapsed(), "{runtime:?}");
        assert_eq!(runner.join().unwrap(), Ok(1_000));
    });
    let stats = pool.stats();
    assert_eq!(stats.workers[0].state, WorkerState::Idle);
    assert_eq!(stats.workers[0].tasks_done, 2);
    assert_eq!((stats.submitted, stats.done, stats.in_flight), (2, 2, 0));
}

#[test]
fn configuration_errors_are_typed() {
    let err = PoolBuilder::new()
        .processes(0)
        .build()
        .expect_err("a pool of no workers");
    assert!(
        matches!(err, PoolError::Config(pool::ConfigError::NoWorkers)),
        "{err:?}"
    );
    assert!(err.to_string().contains("at least one worker"), "{err}");
}

#[test]
fn endless_timeouts_saturate_instead_of_panicking() {
    let pool = build(StartMethod::Fork, 1);
    let done = pool.apply_async(square, 6);
    assert!(done.wait_timeout(Duration::MAX));
    assert_eq!(done.get_timeout(Duration::MAX).unwrap().unwrap(), 36);
    // An idle pool: join closes it and the workers exit well within "forever".
    assert!(pool.join_timeout(Duration::MAX));
}

#[test]
fn a_zero_task_timeout_is_refused() {
    let err = PoolBuilder::new()
        .processes(1)
        .task_timeout(Duration::ZERO)
        .build()
        .expect_err("a zero task timeout");
    assert!(
        matches!(err, PoolError::Config(pool::ConfigError::ZeroTaskTimeout)),
        "{err:?}"
    );
    // The smallest real limit is accepted.
    let pool = PoolBuilder::new()
        .processes(1)
        .start_method(StartMethod::Fork)
        .task_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
}

/// Arguments from 128 KiB up go through the seat's bulk area (pool/src/wire/bulk.rs): they
/// arrive whole when the area grows, when a small argument (the link path) comes between two
/// large ones, in chunks of several, and on the worker that replaces a crashed one (which must
/// be handed the area again).
fn large_arguments_arrive_whole_across_growth_and_replacement(method: StartMethod) {
    let pool = build(method, 1);
    for (len, seed) in [(200 << 10, 1u8), (3 << 20, 2), (64, 3), (150 << 10, 4)] {
        let arg = pattern(len, seed);
        assert_eq!(
            pool.apply(checksum, arg.clone()).unwrap(),
            checksum(arg),
            "{len}"
        );
    }
    let args: Vec<Vec<u8>> = (0..5).map(|i| pattern(300 << 10, 10 + i)).collect();
    let expected: Vec<_> = args.iter().cloned().map(checksum).collect();
    assert_eq!(pool.map_chunked(checksum, args, 2).unwrap(), expected);
    let before = pool.stats().workers[0].pid;
    assert!(matches!(
        pool.apply(crash, "abort".to_string()),
        Err(TaskError::WorkerLost { .. })
    ));
    let arg = pattern(1 << 20, 99);
    assert_eq!(pool.apply(checksum, arg.clone()).unwrap(), checksum(arg));
    assert_ne!(pool.stats().workers[0].pid, before);
    // A map's large chunks are encoded into areas of their own (pool/src/wire/shared_args.rs),
    // handed to the worker one by one: mixed with small ones (the link path) and with a larger
    // one (a larger area), twice, so the second map reuses the areas of the first.
    for round in 0..2u8 {
        let lens = [300 << 10, 64, 3 << 20, 200 << 10, 10, 130 << 10];
        let args: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| pattern(n, 50 + 10 * round + i as u8))
            .collect();
        let expected: Vec<_> = args.iter().cloned().map(checksum).collect();
        assert_eq!(pool.map_chunked(checksum, args, 1).unwrap(), expected);
    }
}
