//! The standing fault suite (issue 14, items 1-3): a killed fork server, workers killed while
//! they start, and chunks whose workers died before they could start them.
//!
//! Every test runs under a watchdog. Tests that kill processes they did not start by pid (the
//! fork server, whatever worker is alive) run in a child re-run of this binary (the `ipc_tests`
//! harness), so that no other test's pool is in reach. Each prints one `fault:` line of figures;
//! reproduce them with
//!
//! ```text
//! cargo test --release -p pool --test faults -- --nocapture 2>&1 | grep 'fault:'
//! ```

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use ipc_shm::{SharedValue, os};
use ipc_sync::Event;
use ipc_tests::{child, child_entry};
use pool::{Pool, PoolBuilder, PoolError, StartMethod, TaskError};

fn square(x: u64) -> u64 {
    x * x
}

fn squares(n: u64) -> Vec<u64> {
    (0..n).map(square).collect()
}

fn crash(_: u64) -> u64 {
    let _ = os::kill(os::pid(), os::Signal::SIGKILL);
    unreachable!("killed itself")
}

/// An initializer slow enough (3 ms) that kills 1-4 ms apart land inside it.
fn slow_init(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Waits (on a pidfd, no polling) until `pid` has ended; a pid already gone counts as ended.
/// A process still there after `limit` fails the test with what `/proc` says of it (its name,
/// state, parent and kernel wait channel), so a rare failure can be diagnosed from the log.
fn wait_gone(pid: u32, limit: Duration) {
    if let Ok(fd) = os::pidfd(pid) {
        assert!(
            os::wait_exit(&fd, limit).expect("waiting on a pidfd"),
            "process {pid} did not end within {limit:?}: {}",
            describe(pid)
        );
    }
}

/// What `/proc` says of `pid`: its name, state and parent (from `status`), and where it waits
/// in the kernel (`wchan`).
fn describe(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let fields: Vec<&str> = status
        .lines()
        .filter(|l| {
            ["Name:", "State:", "PPid:", "SigPnd:", "ShdPnd:"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .collect();
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    format!("{} wchan: {wchan}", fields.join(", "))
}

/// The processes whose parent is one of `parents` (from `/proc`; the name field may hold spaces
/// and parentheses, so the fields are read after its last `)`).
fn children_of(parents: &[u32]) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
        if state != Some("Z") && ppid.is_some_and(|p| parents.contains(&p)) {
            found.push(pid);
        }
    }
    found
}

/// Whether `pid` is a fork server's blank child: a process forked ahead of the next worker
/// request, named `pool-blank` while it waits (`pool/src/start/forkserver.rs`).
fn is_blank(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == "pool-blank")
}

/// A small deterministic generator for kill pacing (xorshift).
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn method_from_env() -> StartMethod {
    match std::env::var("METHOD").as_deref() {
        Ok("spawn") => StartMethod::Spawn,
        Ok("fork") => StartMethod::Fork,
        _ => StartMethod::ForkServer,
    }
}

/// Runs a child entry under a watchdog, passes its `fault:` figures on, and asserts it passed.
fn run_child(cmd: ipc_tests::ChildCommand) {
    let outcome = cmd.watchdog(Duration::from_secs(120)).run();
    for line in outcome.stdout.lines() {
        if let Some(at) = line.find("fault:") {
            eprintln!("{}", &line[at..]);
        }
    }
    outcome.assert_success();
}

// ---------------------------------------------------------------------------------------------
// Item 1: a killed fork server.

/// Rounds of "SIGKILL the fork server, then map" in one pool.
const SERVER_KILLS: usize = 3;

child_entry! {
    fn fork_server_killed() {
        let started = Instant::now();
        let pool = PoolBuilder::new()
            .processes(2)
            .start_method(StartMethod::ForkServer)
            .build()
            .expect("pool");
        assert_eq!(pool.map(square, 0..100u64).unwrap(), squares(100));
        let mut tasks = 100u64;
        let mut servers = Vec::new();
        for _ in 0..SERVER_KILLS {
            let server = pool::__fork_server_pid().expect("a fork server runs");
            servers.push(server);
            let workers: Vec<u32> = pool.stats().workers.iter().map(|w| w.pid).collect();
            os::kill(server, os::Signal::SIGKILL).unwrap();
            // The server and, with it, its workers (PR_SET_PDEATHSIG) are gone before the pool
            // is asked for anything: the pool must find out by itself.
            wait_gone(server, Duration::from_secs(10));
            for w in workers {
                wait_gone(w, Duration::from_secs(10));
            }
            // Every task completes: the dead workers had started none of them, and the next
            // request for a worker starts a new server instead of tripping the breaker.
            assert_eq!(pool.map(square, 0..1000u64).unwrap(), squares(1000));
            tasks += 1000;
            assert_eq!(pool.workers(), 2);
        }
        // A second pool of the process builds and works (on the server started last).
        let second = PoolBuilder::new()
            .processes(2)
            .start_method(StartMethod::ForkServer)
            .build()
            .expect("a second ForkServer pool after the server was killed");
        assert_eq!(second.apply(square, 12).unwrap(), 144);
        let last = pool::__fork_server_pid().expect("a fork server runs");
        assert!(!servers.contains(&last), "{servers:?} {last}");
        let restarts: u64 = pool.stats().workers.iter().map(|w| w.restarts).sum();
        println!(
            "fault: fork server SIGKILLed {SERVER_KILLS} times: {tasks} tasks, all Ok, \
             {restarts} worker restarts, second pool Ok, {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn a_killed_fork_server_is_restarted_and_its_workers_are_lost_workers() {
    run_child(child!(fork_server_killed));
}

/// The fork server's blank child (forked ahead of the next request), once there is one; fails
/// after 10 s without.
fn blank_of(server: u32, pool: &Pool) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let workers: Vec<u32> = pool.stats().workers.iter().map(|w| w.pid).collect();
        let others: Vec<u32> = children_of(&[server])
            .into_iter()
            .filter(|&p| !workers.contains(&p) && is_blank(p))
            .collect();
        match others[..] {
            [blank] => return blank,
            [] => assert!(
                Instant::now() < deadline,
                "the fork server made no blank child"
            ),
            _ => panic!("the fork server has several idle children: {others:?}"),
        }
        // Pacing of the look at /proc, not synchronisation: the loop ends on what it sees.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A one-worker fork-server pool that has served a task, and its fork server's pid.
fn served_fork_server_pool() -> (Pool, u32) {
    let pool = PoolBuilder::new()
        .processes(1)
        .start_method(StartMethod::ForkServer)
        .build()
        .expect("pool");
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
    let server = pool::__fork_server_pid().expect("a fork server runs");
    (pool, server)
}

/// SIGKILLs the worker of a one-worker pool and waits until it is gone.
fn kill_the_worker(pool: &Pool) {
    let worker = pool.stats().workers[0].pid;
    os::kill(worker, os::Signal::SIGKILL).unwrap();
    wait_gone(worker, Duration::from_secs(10));
}

child_entry! {
    fn fork_server_blank() {
        let (pool, server) = served_fork_server_pool();
        // A replacement is the blank the server forked ahead, not a fork made on demand.
        let blank = blank_of(server, &pool);
        kill_the_worker(&pool);
        assert_eq!(pool.apply(square, 4).unwrap(), 16);
        assert_eq!(pool.stats().workers[0].pid, blank, "the replacement is the blank");
        // Primed ahead, it kept the blank's name until the seat took it; a worker's now.
        assert!(!is_blank(blank), "the seated blank still has the blank's name");
        // A blank killed from outside costs nothing: the next replacement is forked on demand,
        // and the server makes a new blank after it.
        let blank = blank_of(server, &pool);
        os::kill(blank, os::Signal::SIGKILL).unwrap();
        wait_gone(blank, Duration::from_secs(10));
        kill_the_worker(&pool);
        assert_eq!(pool.apply(square, 5).unwrap(), 25);
        let replacement = pool.stats().workers[0].pid;
        assert_ne!(replacement, blank);
        let next = blank_of(server, &pool);
        assert_ne!(next, blank);
        assert_eq!(pool.map(square, 0..100u64).unwrap(), squares(100));
        // Closing the pool leaves the blank to the server, which ends it with itself.
        drop(pool);
        println!("fault: fork server blank handed over, then killed and replaced: all Ok");
    }
}

/// A task of a `Fork` worker that makes a fork-server pool of its own: its square from that
/// pool, and the fork server that pool used.
fn square_on_a_nested_fork_server_pool(x: u64) -> (u64, u32) {
    let inner = PoolBuilder::new()
        .processes(1)
        .start_method(StartMethod::ForkServer)
        .build()
        .expect("the nested pool");
    let y = inner.apply(square, x).expect("the nested pool's task");
    (
        y,
        pool::__fork_server_pid().expect("the nested pool's fork server"),
    )
}

/// A task of a `Fork` worker that makes a pool of each start method: the square from each.
fn squares_on_nested_pools(x: u64) -> Vec<u64> {
    [
        StartMethod::Fork,
        StartMethod::ForkServer,
        StartMethod::Spawn,
    ]
    .into_iter()
    .map(|method| {
        let inner = PoolBuilder::new()
            .processes(1)
            .start_method(method)
            .build()
            .expect("the nested pool");
        inner.apply(square, x).expect("the nested pool's task")
    })
    .collect()
}

child_entry! {
    fn nested_fork_server_pool() {
        // A fork-server pool whose blank has been offered and primed (a worker greeted ahead).
        let (pool, server) = served_fork_server_pool();
        let blank = blank_of(server, &pool);
        // A `Fork` worker, a copy of this process (its connection to the server included),
        // makes a fork-server pool: it gets a server of its own, not this one nor its blank.
        let forked = PoolBuilder::new()
            .processes(1)
            .start_method(StartMethod::Fork)
            .build()
            .expect("the fork pool");
        let (y, inner_server) = forked
            .apply(square_on_a_nested_fork_server_pool, 6)
            .expect("the nested pool ran");
        assert_eq!(y, 36);
        assert_ne!(inner_server, server, "the nested pool used its parent's fork server");
        // Pools of every method in a forked worker (its copy of the fork lock was held).
        let nested = forked
            .apply(squares_on_nested_pools, 5)
            .expect("the nested pools ran");
        assert_eq!(nested, vec![25, 25, 25]);
        drop(forked);
        // This process's server and primed blank are intact: the next replacement is the blank.
        assert_eq!(pool::__fork_server_pid(), Some(server));
        kill_the_worker(&pool);
        assert_eq!(pool.apply(square, 7).unwrap(), 49);
        assert_eq!(pool.stats().workers[0].pid, blank, "the replacement is the blank");
        assert_eq!(pool.map(square, 0..100u64).unwrap(), squares(100));
        println!("fault: pools made in a forked worker (own fork server, fork lock free): Ok");
    }
}

#[test]
fn pools_made_in_a_forked_worker_work_and_use_a_fork_server_of_their_own() {
    run_child(child!(nested_fork_server_pool).env("RUST_BACKTRACE", "0"));
}

/// Forks this many `Fork` workers while another thread keeps taking the pool's process-wide
/// locks.
const FORKS_UNDER_HAMMER: usize = 12;

child_entry! {
    fn nested_pools_while_another_thread_holds_the_pools_locks() {
        // Another thread of this process takes the spawn keeper's lock and the fork-server
        // client's lock over and over (the test-support lookups take them, as pool starts do).
        // A `Fork` worker forked while that thread held one was born with it locked for good
        // (the thread is not copied), so a pool made by its task hung; the fork now holds
        // both itself across the fork.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hammer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut rounds = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::black_box(pool::__spawn_standby_pid());
                    std::hint::black_box(pool::__fork_server_pid());
                    rounds += 1;
                }
                rounds
            })
        };
        for round in 0..FORKS_UNDER_HAMMER {
            let forked = PoolBuilder::new()
                .processes(1)
                .start_method(StartMethod::Fork)
                .build()
                .expect("the fork pool");
            let x = round as u64 + 2;
            let nested = forked
                .apply(squares_on_nested_pools, x)
                .expect("the nested pools ran");
            assert_eq!(nested, vec![x * x; 3], "round {round}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let rounds = hammer.join().expect("the hammering thread");
        assert!(rounds > 0, "the other thread never took the locks");
        println!(
            "fault: {FORKS_UNDER_HAMMER} Fork workers forked while another thread took the pool's locks ({rounds} times) made pools of every method: Ok"
        );
    }
}

#[test]
fn pools_made_in_a_forked_worker_never_find_the_pools_locks_held() {
    run_child(
        child!(nested_pools_while_another_thread_holds_the_pools_locks).env("RUST_BACKTRACE", "0"),
    );
}

#[test]
fn a_replacement_is_the_fork_servers_blank_and_a_killed_blank_costs_nothing() {
    // Without backtraces: with them, the server replaces its blank once it has been idle a
    // while (see the next test), which would race with this test's look at the blank.
    run_child(child!(fork_server_blank).env("RUST_BACKTRACE", "0"));
}

fn explode(_: u64) -> u64 {
    panic!("explode")
}

child_entry! {
    fn fork_server_warms_backtraces() {
        let (pool, server) = served_fork_server_pool();
        let first = blank_of(server, &pool);
        // Idle after serving a request, the server loads the backtrace symbols and then
        // replaces the blank it had forked before, so that the next worker has them too.
        let deadline = Instant::now() + Duration::from_secs(10);
        let warmed = loop {
            let blank = blank_of(server, &pool);
            if blank != first {
                break blank;
            }
            assert!(
                Instant::now() < deadline,
                "the fork server kept its first blank: no backtrace symbols loaded"
            );
            // Pacing of the look at /proc, not synchronisation: the loop ends on what it sees.
            std::thread::sleep(Duration::from_millis(1));
        };
        wait_gone(first, Duration::from_secs(10));
        // The new blank becomes the next worker, and its backtraces are whole.
        kill_the_worker(&pool);
        let error = pool.apply(explode, 1).unwrap_err();
        assert_eq!(pool.stats().workers[0].pid, warmed, "the replacement is the new blank");
        let trace = error.backtrace().expect("a backtrace");
        assert!(trace.contains("explode"), "{trace}");
        assert_eq!(pool.map(square, 0..100u64).unwrap(), squares(100));
        println!("fault: fork server loaded backtrace symbols when idle and replaced its blank: Ok");
    }
}

#[test]
fn with_backtraces_the_idle_fork_server_loads_their_symbols_for_later_workers() {
    run_child(child!(fork_server_warms_backtraces).env("RUST_BACKTRACE", "1"));
}

// ---------------------------------------------------------------------------------------------
// Item 2: kills from outside while workers start are no restart loop.

/// How many workers the kill storm ends.
const STORM_KILLS: usize = 30;

child_entry! {
    fn kill_storm_at_start_up() {
        let method = method_from_env();
        let me = os::pid();
        let started = Instant::now();
        let killer = std::thread::spawn(move || {
            let mut seed = 0x2545_f491_4f6c_dd1d_u64 ^ u64::from(me);
            let mut kills = 0;
            let mut tries = 0;
            // Bounded: 30 kills, or 10 s of trying.
            while kills < STORM_KILLS && started.elapsed() < Duration::from_secs(10) {
                tries += 1;
                let server = pool::__fork_server_pid();
                let parents: Vec<u32> = match server {
                    Some(s) if method == StartMethod::ForkServer => vec![s],
                    _ => vec![me],
                };
                let workers: Vec<u32> = children_of(&parents)
                    .into_iter()
                    .filter(|&p| Some(p) != server)
                    .collect();
                if !workers.is_empty() {
                    let victim = workers[next_random(&mut seed) as usize % workers.len()];
                    if os::kill(victim, os::Signal::SIGKILL).is_ok() {
                        kills += 1;
                    }
                }
                // Pacing of the storm (one kill every 1-4 ms), not synchronisation.
                std::thread::sleep(Duration::from_micros(1000 + next_random(&mut seed) % 3000));
            }
            (kills, tries)
        });
        // Workers run a 3 ms initializer, so many kills land in it.
        let pool = PoolBuilder::new()
            .processes(4)
            .start_method(method)
            .initializer(slow_init, 3)
            .build()
            .expect("outside kills at start-up must not fail the build");
        let built = started.elapsed();
        // Keep asking for work while the storm lasts: a worker killed while idle is replaced
        // when its driver next has a job, so these tasks (which may fail, their workers being
        // killed under them) bring in the new workers the storm kills in their initializer.
        let mut storm_tasks = 0u64;
        while !killer.is_finished() {
            let _ = pool.map(square, 0..64u64);
            storm_tasks += 64;
        }
        let (kills, tries) = killer.join().unwrap();
        assert_eq!(kills, STORM_KILLS, "the storm ended early ({tries} tries)");
        // The pool survived the storm: every task of a map completes.
        assert_eq!(pool.map(square, 0..2000u64).unwrap(), squares(2000));
        let restarts: u64 = pool.stats().workers.iter().map(|w| w.restarts).sum();
        println!(
            "fault: {kills} SIGKILLs 1-4 ms apart at start-up ({method:?}, 3 ms initializer): \
             built in {built:?}, {storm_tasks} tasks during the storm, then 2000 tasks all Ok, {restarts} worker restarts, {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn outside_kills_at_start_up_do_not_trip_the_breaker_spawn() {
    run_child(child!(kill_storm_at_start_up).env("METHOD", "spawn"));
}

#[test]
fn outside_kills_at_start_up_do_not_trip_the_breaker_forkserver() {
    run_child(child!(kill_storm_at_start_up).env("METHOD", "forkserver"));
}

#[test]
fn outside_kills_at_start_up_do_not_trip_the_breaker_fork() {
    run_child(child!(kill_storm_at_start_up).env("METHOD", "fork"));
}

/// Succeeds in the first worker of the process, panics in every later one: the initializer's
/// own failure, the loop the breaker is for. `marker` is a file only the first creates.
fn init_only_once(marker: String) {
    if std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
        .is_err()
    {
        panic!("the initializer refuses to run twice");
    }
}

#[test]
fn an_initializer_failing_on_its_own_trips_the_breaker_and_imap_answers_every_input() {
    let _watchdog = ipc_tests::watchdog("the breaker test", Duration::from_secs(60));
    let marker = std::env::temp_dir().join(format!(
        "pool-faults-init-{}-{}",
        os::pid(),
        ipc_tests::ShmName::new("m").as_str()
    ));
    let marker = marker.to_string_lossy().into_owned();
    let pool = PoolBuilder::new()
        .processes(1)
        .start_method(StartMethod::Fork)
        .initializer(init_only_once, marker.clone())
        .restart_limit(3, Duration::from_secs(60))
        .build()
        .expect("the first worker initializes");
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
    // Its worker dies; every replacement's initializer panics: the breaker trips, with the
    // initializer's own error, and the task queued meanwhile fails with it.
    assert!(matches!(
        pool.apply(crash, 0),
        Err(TaskError::WorkerLost { .. })
    ));
    let after = pool.apply(square, 4);
    let _ = std::fs::remove_file(&marker);
    match after {
        Err(TaskError::Pool(PoolError::InitializerFailed { message })) => {
            assert!(message.contains("refuses to run twice"), "{message}")
        }
        other => panic!("expected the breaker's InitializerFailed, got {other:?}"),
    }
    // After the trip, every input of a lazy map still gets an outcome: the breaker's error.
    const N: usize = 1000;
    let ordered: Vec<_> = pool.imap(square, 0..N as u64).collect();
    assert_eq!(ordered.len(), N);
    assert!(
        ordered
            .iter()
            .all(|r| matches!(r, Err(TaskError::Pool(PoolError::InitializerFailed { .. }))))
    );
    assert_eq!(pool.imap_unordered(square, 0..N as u64).count(), N);
    assert_eq!(pool.imap_chunked(square, 0..N as u64, 7).count(), N);
    assert!(pool.map(square, 0..N as u64).is_err());
    eprintln!(
        "fault: initializer panicking on its own: breaker tripped; imap after the trip gave {N} of {N} outcomes"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 3: a chunk bounced by other deaths is never failed.

/// Started flags of the tasks of `chunks_bounced_by_dead_workers_all_run`, in memory every
/// forked worker shares with the test (an anonymous segment mapped before the pool forks).
static STARTED: std::sync::OnceLock<ipc_shm::Segment> = std::sync::OnceLock::new();
const FLAGS: ipc_shm::SliceOffset<AtomicU8> = ipc_shm::SliceOffset::from_raw(0, 4096);

fn mark_started(i: u64) -> u64 {
    if let Some(flags) = STARTED.get().and_then(|s| s.slice(FLAGS).ok())
        && let Some(flag) = flags.get(i as usize)
    {
        // A count, not a mark: a task that ran twice shows as 2.
        flag.fetch_add(1, Ordering::AcqRel);
    }
    i
}

/// Rounds of "kill every idle worker, then queue a chunked map".
const BOUNCE_ROUNDS: usize = 10;

#[test]
fn chunks_bounced_by_dead_workers_all_run() {
    let _watchdog = ipc_tests::watchdog("the bounce test", Duration::from_secs(120));
    let segment = ipc_shm::SegmentBuilder::new(4096)
        .type_tag(ipc_shm::TypeTag::from_name("pool-faults/started/v1"))
        .create()
        .unwrap();
    let flags = STARTED.get_or_init(|| segment).slice(FLAGS).unwrap();
    let pool: Pool = PoolBuilder::new()
        .processes(4)
        .start_method(StartMethod::Fork)
        .build()
        .unwrap();
    let started = Instant::now();
    let (mut kills, mut tasks, mut lost_started, mut lost_never_started) = (0, 0, 0, 0);
    for round in 0..BOUNCE_ROUNDS {
        for f in flags.iter() {
            f.store(0, Ordering::Relaxed);
        }
        // Every worker dies while idle; its driver finds out only when it hands it a job, so
        // the first chunks go from one dead worker to the next before any replacement is up.
        let workers: Vec<u32> = pool.stats().workers.iter().map(|w| w.pid).collect();
        for &w in &workers {
            os::kill(w, os::Signal::SIGKILL).unwrap();
            kills += 1;
        }
        for &w in &workers {
            wait_gone(w, Duration::from_secs(10));
        }
        let n = 64 * (1 + round as u64 % 4);
        let results: Vec<_> = pool.imap_chunked(mark_started, 0..n, 64).collect();
        assert_eq!(results.len() as u64, n);
        for (i, r) in results.iter().enumerate() {
            match r {
                Ok(v) => assert_eq!(*v, i as u64),
                Err(TaskError::WorkerLost { .. }) if flags[i].load(Ordering::Acquire) >= 1 => {
                    lost_started += 1
                }
                Err(e) => {
                    lost_never_started += 1;
                    eprintln!("round {round}: task {i} never started and failed: {e}");
                }
            }
        }
        for (i, f) in flags.iter().take(n as usize).enumerate() {
            assert!(
                f.load(Ordering::Acquire) <= 1,
                "round {round}: task {i} ran twice"
            );
        }
        tasks += n;
    }
    eprintln!(
        "fault: {kills} idle workers SIGKILLed over {BOUNCE_ROUNDS} rounds, {tasks} tasks in \
         chunks of 64: {lost_never_started} never-started tasks failed, {lost_started} started \
         tasks lost, {:?}",
        started.elapsed()
    );
    assert_eq!(lost_never_started, 0);
}

/// The pid of the test process, so that `Poison` decodes there (the pool re-slices chunks in
/// the parent) and aborts only in a worker.
static TEST_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// An argument whose decoding kills the worker before its task can start.
#[derive(serde::Serialize)]
struct Poison;

impl<'de> serde::Deserialize<'de> for Poison {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Poison, D::Error> {
        <() as serde::Deserialize>::deserialize(d)?;
        if TEST_PID.get() != Some(&os::pid()) {
            std::process::abort();
        }
        Ok(Poison)
    }
}

fn swallow(_: Poison) -> u64 {
    0
}

/// A one-worker pool whose workers `Poison` kills (the test process decodes it safely).
fn poisonable_pool() -> Pool {
    TEST_PID.get_or_init(os::pid);
    PoolBuilder::new()
        .processes(1)
        .start_method(StartMethod::Fork)
        .build()
        .unwrap()
}

/// The outcome of a job whose decoding aborted its workers.
fn assert_decoder_died<T: std::fmt::Debug>(outcome: Result<T, TaskError>) {
    match outcome {
        Err(TaskError::WorkerLost { exit, .. }) => {
            assert_eq!(exit, pool::Exit::Signal(os::Signal::SIGABRT as i32))
        }
        other => panic!("expected WorkerLost, got {other:?}"),
    }
}

#[test]
fn a_chunk_that_kills_its_decoder_fails_instead_of_looping() {
    let _watchdog = ipc_tests::watchdog("the decoder-death test", Duration::from_secs(60));
    let pool = poisonable_pool();
    // Three workers die decoding it (the job reached them, no task started): it fails.
    assert_decoder_died(pool.apply(swallow, Poison));
    // The pool goes on.
    assert_eq!(pool.apply(square, 5).unwrap(), 25);
    let restarts: u64 = pool.stats().workers.iter().map(|w| w.restarts).sum();
    assert_eq!(restarts, 3);
}

fn length_unless_poisoned(arg: (Vec<u8>, Option<Poison>)) -> u64 {
    arg.0.iter().map(|&b| u64::from(b)).sum::<u64>() + arg.0.len() as u64
}

/// A chunk of large arguments is encoded by the caller into a bulk area of its own
/// (pool/src/wire/shared_args.rs). When its decoding kills workers, the driver splits the job
/// out of that area (in the parent), and after three deaths it fails; the areas go on serving
/// the maps that follow, on the replacement worker.
#[test]
fn a_large_chunk_that_kills_its_decoder_fails_and_large_maps_go_on() {
    let _watchdog = ipc_tests::watchdog("the large decoder-death test", Duration::from_secs(60));
    let pool = poisonable_pool();
    let large = |seed: u8| (vec![seed; 300 << 10], None::<Poison>);
    let expected = |seed: u8| length_unless_poisoned((vec![seed; 300 << 10], None));
    // Large arguments seen once: later large chunks take areas of their own.
    assert_eq!(
        pool.apply(length_unless_poisoned, large(1)).unwrap(),
        expected(1)
    );
    let poisoned = vec![large(2), (vec![3; 300 << 10], Some(Poison)), large(4)];
    assert_decoder_died(pool.map_chunked(length_unless_poisoned, poisoned, 3));
    // Several large chunks in flight at once, each in its own area, on the replacement.
    for round in 0..3u8 {
        let args: Vec<_> = (0..6).map(|i| large(10 * round + i)).collect();
        let want: Vec<u64> = (0..6).map(|i| expected(10 * round + i)).collect();
        assert_eq!(
            pool.map_chunked(length_unless_poisoned, args, 2).unwrap(),
            want
        );
    }
    let restarts: u64 = pool.stats().workers.iter().map(|w| w.restarts).sum();
    assert_eq!(restarts, 3, "three decoder deaths, then the job failed");
}

/// Started flags of `a_kill_storm_during_a_queued_map_fails_only_started_tasks`.
static STARTED_STORM: std::sync::OnceLock<ipc_shm::Segment> = std::sync::OnceLock::new();

fn mark_and_work(i: u64) -> u64 {
    if let Some(flags) = STARTED_STORM.get().and_then(|s| s.slice(FLAGS).ok())
        && let Some(flag) = flags.get(i as usize)
    {
        // A count, not a mark: a task that ran twice shows as 2.
        flag.fetch_add(1, Ordering::AcqRel);
    }
    // Work long enough (200 us) for kills to land inside tasks as well as between them.
    let until = Instant::now() + Duration::from_micros(200);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
    i
}

/// Kills of the storm over a queued map.
const MAP_STORM_KILLS: usize = 40;

#[test]
fn a_kill_storm_during_a_queued_map_fails_only_started_tasks() {
    let _watchdog = ipc_tests::watchdog("the map-storm test", Duration::from_secs(120));
    let segment = ipc_shm::SegmentBuilder::new(4096)
        .type_tag(ipc_shm::TypeTag::from_name("pool-faults/started/v1"))
        .create()
        .unwrap();
    let flags = STARTED_STORM.get_or_init(|| segment).slice(FLAGS).unwrap();
    const N: u64 = 4000;
    let pool: Pool = PoolBuilder::new()
        .processes(4)
        .start_method(StartMethod::Fork)
        .max_in_flight(N as usize)
        .build()
        .unwrap();
    let started = Instant::now();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (results, kills) = std::thread::scope(|s| {
        let killer = s.spawn(|| {
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
            let mut kills = 0;
            // Bounded: 40 kills, or until the map is over.
            while kills < MAP_STORM_KILLS && !done.load(Ordering::Acquire) {
                let workers: Vec<u32> = pool.stats().workers.iter().map(|w| w.pid).collect();
                if !workers.is_empty() {
                    let victim = workers[next_random(&mut seed) as usize % workers.len()];
                    if os::kill(victim, os::Signal::SIGKILL).is_ok() {
                        kills += 1;
                    }
                }
                // Pacing of the storm (one kill every 1-4 ms), not synchronisation.
                std::thread::sleep(Duration::from_micros(1000 + next_random(&mut seed) % 3000));
            }
            kills
        });
        // The whole map is queued at once (max_in_flight = N), in chunks of 50.
        let results: Vec<_> = pool.imap_chunked(mark_and_work, 0..N, 50).collect();
        done.store(true, Ordering::Release);
        (results, killer.join().unwrap())
    });
    assert_eq!(results.len() as u64, N);
    let (mut ok, mut lost_started, mut lost_at_kill_point, mut lost_never_started) = (0, 0, 0, 0);
    for (i, r) in results.iter().enumerate() {
        let flagged = |i: usize| flags[i].load(Ordering::Acquire) >= 1;
        assert!(flags[i].load(Ordering::Acquire) <= 1, "task {i} ran twice");
        match r {
            Ok(v) => {
                assert_eq!(*v, i as u64);
                ok += 1;
            }
            Err(TaskError::WorkerLost { .. }) if flagged(i) => lost_started += 1,
            // The worker announces a task in its progress slot just before calling it; a kill
            // between the two (well under a microsecond) fails that one task, which the pool
            // must count as started (it cannot know the call did not begin: no task runs twice).
            // Such a task is the next one of its chunk after the last that ran.
            Err(TaskError::WorkerLost { .. }) if i % 50 == 0 || flagged(i - 1) => {
                lost_at_kill_point += 1
            }
            Err(e) => {
                lost_never_started += 1;
                eprintln!("task {i} never started and failed: {e}");
            }
        }
    }
    eprintln!(
        "fault: {kills} SIGKILLs 1-4 ms apart during a queued map of {N} tasks (chunks of 50, \
         4 workers): {ok} Ok, {lost_started} started tasks lost, {lost_at_kill_point} lost as \
         they were being called, {lost_never_started} never-started tasks failed, {:?}",
        started.elapsed()
    );
    assert_eq!(lost_never_started, 0);
    assert!(
        lost_at_kill_point <= kills,
        "at most one task per kill is at its kill point"
    );
    assert!(kills > 0);
}

// ---------------------------------------------------------------------------------------------
// A Fork worker forked while another thread of the parent runs a panic hook.

fn panics(_: u64) -> u64 {
    panic!("task panicked on purpose")
}

child_entry! {
    fn fork_while_a_panic_hook_runs() {
        // A hook that blocks (on the thread named "panicker" only) until told to go: while it
        // runs, that thread holds the process's hook lock for reading, and so does every child
        // forked meanwhile. Other panics go on to the hook it replaced (the pool's, installed
        // by `pool::init`), as a user's chaining hook would.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (entered, hook_entered) = std::sync::mpsc::channel::<()>();
        let wait = std::sync::Mutex::new(wait);
        let entered = std::sync::Mutex::new(entered);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some("panicker") {
                let _ = entered.lock().map(|e| e.send(()));
                let _ = wait.lock().map(|w| w.recv_timeout(Duration::from_secs(60)));
            } else {
                previous(info);
            }
        }));
        let panicker = std::thread::Builder::new()
            .name("panicker".into())
            .spawn(|| panic!("a parent thread panics"))
            .unwrap();
        hook_entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the hook runs");
        let started = Instant::now();
        // Workers forked now must not wait for the hook lock (the startup timeout is 30 s; the
        // harness's watchdog is longer, so a hang shows as StartupTimeout or the watchdog).
        let pool = PoolBuilder::new()
            .processes(1)
            .start_method(StartMethod::Fork)
            .build()
            .expect("a Fork pool while a panic hook runs");
        assert_eq!(pool.apply(square, 7).unwrap(), 49);
        match pool.apply(panics, 0) {
            Err(e @ TaskError::Panicked { .. }) => {
                let at = e.panic_location().expect("the worker recorded where").to_string();
                assert!(at.contains("faults.rs"), "{at}");
            }
            other => panic!("expected Panicked, got {other:?}"),
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(20), "the fork stalled for {took:?}");
        go.send(()).unwrap();
        assert!(panicker.join().is_err());
        println!("fault: a Fork pool built and ran while a parent thread sat in a panic hook: {took:?}");
    }
}

#[test]
fn fork_workers_start_while_a_parent_thread_runs_a_panic_hook() {
    run_child(child!(fork_while_a_panic_hook_runs));
}

// ---------------------------------------------------------------------------------------------
// Issue 12 item 4: a crash is reported before the crashed process is reaped.

/// The initializer of `crash_reported_before_reaped`: workers start only while `gate` is set.
fn wait_for_gate(gate: SharedValue<Event>) {
    gate.wait();
}

fn abort_task(_: u64) -> u64 {
    std::process::abort()
}

fn segv_task(_: u64) -> u64 {
    loop {
        // The first SIGSEGV may meet std's stack-overflow handler, which restores the default
        // action and returns; the next one kills.
        os::kill(os::pid(), os::Signal::SIGSEGV).unwrap();
    }
}

child_entry! {
    fn crash_reported_before_reaped() {
        let method = method_from_env();
        let gate = SharedValue::<Event>::new_anonymous().expect("the gate");
        gate.set();
        let pool = PoolBuilder::new()
            .processes(1)
            .start_method(method)
            .initializer(wait_for_gate, gate.clone())
            .build()
            .expect("pool");
        for (task, signal) in [
            (abort_task as fn(u64) -> u64, os::Signal::SIGABRT),
            (segv_task, os::Signal::SIGSEGV),
        ] {
            let old = pool.stats().workers[0].pid;
            // The replacement cannot finish starting (its initializer waits for the gate), so
            // nothing the pool does after the crash can have reaped the crashed worker yet...
            gate.clear();
            // ... and neither can the fork server, which reaps its children itself.
            let server = (method == StartMethod::ForkServer)
                .then(|| pool::__fork_server_pid().expect("a fork server runs"));
            if let Some(server) = server {
                os::kill(server, os::Signal::SIGSTOP).unwrap();
            }
            // Without the early notice the pool reaps before it reports (and with the server
            // stopped never reports at all): this bound only turns that hang into a failure.
            let lost = pool
                .apply_async(task, 0)
                .get_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("{method:?}: no WorkerLost while the worker is unreaped"));
            match lost {
                Err(TaskError::WorkerLost { pid, exit }) => {
                    assert_eq!(pid, old);
                    assert_eq!(exit, pool::Exit::Signal(signal as i32));
                }
                other => panic!("{method:?}: expected WorkerLost, got {other:?}"),
            }
            // The crashed process was not reaped before its task got its outcome: it still has
            // its /proc entry (tearing down, or a zombie).
            assert!(
                std::path::Path::new(&format!("/proc/{old}")).exists(),
                "{method:?}: worker {old} was reaped before WorkerLost was delivered"
            );
            if let Some(server) = server {
                os::kill(server, os::Signal::SIGCONT).unwrap();
            }
            gate.set();
            // The next task runs on the replacement; the crashed process is reaped.
            assert_eq!(pool.apply(square, 7).unwrap(), 49);
            assert_ne!(pool.stats().workers[0].pid, old);
            wait_gone(old, Duration::from_secs(10));
        }
        println!("fault: {method:?}: abort and SIGSEGV reported before the worker was reaped");
    }
}

#[test]
fn fork_crash_is_reported_before_the_worker_is_reaped() {
    run_child(child!(crash_reported_before_reaped).env("METHOD", "fork"));
}

#[test]
fn spawn_crash_is_reported_before_the_worker_is_reaped() {
    run_child(child!(crash_reported_before_reaped).env("METHOD", "spawn"));
}

#[test]
fn forkserver_crash_is_reported_before_the_worker_is_reaped() {
    run_child(child!(crash_reported_before_reaped).env("METHOD", "forkserver"));
}

// ---------------------------------------------------------------------------------------------
// The warm spare: it replaces a dead worker, a dead spare is never used, and it ends with the
// pool.

/// The worker processes of this (child) process's pools that are not among `workers`: the
/// spare, once one is ready or starting.
fn spares(method: StartMethod, workers: &[u32]) -> Vec<u32> {
    let server = pool::__fork_server_pid();
    let parents = match server {
        Some(s) if method == StartMethod::ForkServer => vec![s],
        _ => vec![os::pid()],
    };
    let found = children_of(&parents);
    // After the scan: a standby that existed during it is known by now.
    let standby = pool::__spawn_standby_pid();
    found
        .into_iter()
        .filter(|&p| {
            Some(p) != server && Some(p) != standby && !workers.contains(&p) && !is_blank(p)
        })
        .collect()
}

/// Waits (bounded) until exactly one process besides `workers` serves the pool: the spare.
fn the_spare(method: StartMethod, pool: &Pool) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let workers: Vec<u32> = pool.stats().workers.iter().map(|w| w.pid).collect();
        if let [spare] = spares(method, &workers)[..] {
            return spare;
        }
        assert!(Instant::now() < deadline, "{method:?}: no spare appeared");
        // Polling /proc for a process the keeper starts (no event to wait on).
        std::thread::sleep(Duration::from_millis(2));
    }
}

child_entry! {
    fn warm_spare_replaces() {
        let method = method_from_env();
        let pool = PoolBuilder::new()
            .processes(1)
            .start_method(method)
            .warm_spare(true)
            .build()
            .expect("pool");
        // A crash: the spare takes the seat, and its replacement figure is set.
        let spare = the_spare(method, &pool);
        let old = pool.stats().workers[0].pid;
        assert!(matches!(pool.apply(abort_task, 0), Err(TaskError::WorkerLost { pid, .. }) if pid == old));
        assert_eq!(pool.apply(square, 7).unwrap(), 49);
        let stats = pool.stats();
        assert_eq!(stats.workers.len(), 1);
        assert_eq!(stats.workers[0].pid, spare, "{method:?}: the spare did not take the seat");
        assert_eq!(stats.workers[0].restarts, 1);
        assert!(stats.workers[0].replaced_in.is_some());
        wait_gone(old, Duration::from_secs(10));
        // Two crashes in a row, the second while the keeper lets the pool settle before it
        // starts the next spare: that replacement waits for it (or starts its own), and every
        // task still gets its right outcome.
        assert!(matches!(pool.apply(abort_task, 0), Err(TaskError::WorkerLost { .. })));
        assert!(matches!(pool.apply(abort_task, 0), Err(TaskError::WorkerLost { .. })));
        assert_eq!(pool.apply(square, 8).unwrap(), 64);
        assert_eq!(pool.stats().workers[0].restarts, 3);
        // A spare killed while it waits is never handed a task: the next replacement is a
        // fresh worker (or the next spare), and every task still gets its right outcome.
        let dead = the_spare(method, &pool);
        os::kill(dead, os::Signal::SIGKILL).unwrap();
        wait_gone(dead, Duration::from_secs(10));
        assert!(matches!(pool.apply(abort_task, 0), Err(TaskError::WorkerLost { .. })));
        assert_eq!(pool.map(square, 0..100u64).unwrap(), squares(100));
        let now = pool.stats().workers[0].pid;
        assert_ne!(now, dead, "{method:?}: a dead spare took the seat");
        // The pool's end takes its spare with it.
        let last = the_spare(method, &pool);
        drop(pool);
        wait_gone(now, Duration::from_secs(10));
        wait_gone(last, Duration::from_secs(10));
        println!("fault: {method:?}: warm spare took the seat; a killed spare was not used");
    }
}

#[test]
fn fork_warm_spare_replaces_a_dead_worker() {
    run_child(child!(warm_spare_replaces).env("METHOD", "fork"));
}

#[test]
fn spawn_warm_spare_replaces_a_dead_worker() {
    run_child(child!(warm_spare_replaces).env("METHOD", "spawn"));
}

#[test]
fn forkserver_warm_spare_replaces_a_dead_worker() {
    run_child(child!(warm_spare_replaces).env("METHOD", "forkserver"));
}
