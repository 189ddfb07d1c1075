//! The `Spawn` standby (`pool/src/start/spawn.rs`): a program executed ahead of the next worker.
//! A dead worker's replacement is the standby; a standby killed from outside is reaped and the
//! worker spawned as before; a standby never counts as a worker.
//!
//! Each test runs in a child re-run of this binary: the standby is per process, and another
//! test's pools must not take it.

use std::time::{Duration, Instant};

use ipc_shm::os;
use ipc_tests::{child, child_entry, process_is_running};
use pool::{Pool, PoolBuilder, StartMethod, TaskError};

fn crash(_: u64) -> u64 {
    let _ = os::kill(os::pid(), os::Signal::SIGKILL);
    unreachable!("killed itself")
}

fn noop(x: u64) -> u64 {
    x + 1
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

/// Waits (bounded) for a standby other than `not`; the keeper executes it in the background.
fn standby_besides(not: Option<u32>) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(pid) = pool::__spawn_standby_pid().filter(|&p| Some(p) != not) {
            return pid;
        }
        assert!(Instant::now() < deadline, "no standby appeared");
        // Polling for a process the keeper starts (no event to wait on).
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn one_worker() -> Pool {
    PoolBuilder::new()
        .processes(1)
        .start_method(StartMethod::Spawn)
        .build()
        .expect("pool")
}

fn worker_pid(pool: &Pool) -> u32 {
    pool.stats().workers[0].pid
}

/// Crashes the worker, then runs a task on its replacement; returns the replacement's pid.
fn crash_and_replace(pool: &Pool) -> u32 {
    assert!(matches!(
        pool.apply(crash, 0),
        Err(TaskError::WorkerLost { .. })
    ));
    assert_eq!(pool.apply(noop, 1).expect("the replacement runs tasks"), 2);
    worker_pid(pool)
}

child_entry! {
    fn replacement_is_the_standby() {
        let pool = one_worker();
        let first = worker_pid(&pool);
        for round in 0..3 {
            let standby = standby_besides(None);
            assert_ne!(standby, first);
            // A waiting standby names itself as the fork server's blanks are named, not as a
            // worker, once it runs (it is born with the program's name).
            let deadline = Instant::now() + Duration::from_secs(30);
            while comm(standby) != "pool-blank" {
                assert!(Instant::now() < deadline, "round {round}: {}", comm(standby));
                // Polling /proc for the standby's own step (no event to wait on).
                std::thread::sleep(Duration::from_millis(1));
            }
            let replacement = crash_and_replace(&pool);
            assert_eq!(replacement, standby, "round {round}: the standby took the seat");
            assert_ne!(comm(replacement), "pool-blank", "round {round}: renamed as a worker");
        }
    }

    fn killed_standby_is_reaped_and_spawning_goes_on() {
        let pool = one_worker();
        for round in 0..3 {
            let standby = standby_besides(None);
            os::kill(standby, os::Signal::SIGKILL).expect("kill the standby");
            let replacement = crash_and_replace(&pool);
            assert_ne!(replacement, standby, "round {round}: a dead standby took a seat");
            // The start that found it dead reaped it: no zombie is left behind.
            assert!(!process_is_running(standby), "round {round}: {standby} still there");
            let next = standby_besides(Some(standby));
            assert_ne!(next, replacement);
        }
    }
}

fn run(cmd: ipc_tests::ChildCommand) {
    cmd.watchdog(Duration::from_secs(120))
        .run()
        .assert_success();
}

#[test]
fn a_dead_spawned_workers_replacement_is_the_standby() {
    run(child!(replacement_is_the_standby));
}

#[test]
fn a_standby_killed_from_outside_costs_nothing_but_its_start() {
    run(child!(killed_standby_is_reaped_and_spawning_goes_on));
}
