//! The test harness itself: children report failures, and watchdogs turn hangs into failures.

use std::time::Duration;

use ipc_tests::{
    ShmName, child, child_entry, fork_child, process_is_running, shm_names_with_prefix,
};

child_entry! {
    fn child_succeeds() {
        assert_eq!(std::env::var("ANSWER").unwrap(), "42");
    }

    fn child_panics() {
        panic!("deliberate failure in the child");
    }

    fn child_hangs() {
        loop {
            std::thread::park();
        }
    }
}

#[test]
fn a_child_reports_success() {
    child!(child_succeeds)
        .env("ANSWER", "42")
        .run()
        .assert_success();
}

#[test]
fn a_child_panic_is_a_failure_with_its_message() {
    let outcome = child!(child_panics).run();
    assert_eq!(outcome.code(), Some(101));
    assert!(outcome.stderr.contains("deliberate failure"), "{outcome:?}");
}

#[test]
#[should_panic(expected = "watchdog")]
fn the_watchdog_kills_a_hanging_child_and_fails() {
    child!(child_hangs)
        .watchdog(Duration::from_millis(300))
        .run();
}

#[test]
fn a_dropped_child_is_killed_and_reaped() {
    let child = child!(child_hangs).spawn();
    let pid = child.pid();
    assert!(process_is_running(pid));
    drop(child);
    assert!(!process_is_running(pid));
}

#[test]
fn forked_children_report_their_exit_code_and_signal() {
    assert_eq!(
        fork_child(Duration::from_secs(30), || 7).wait().code(),
        Some(7)
    );
    let mut hanging = fork_child(Duration::from_secs(30), || {
        loop {
            std::thread::park();
        }
    });
    assert!(hanging.wait_timeout(Duration::from_millis(10)).is_none());
    hanging.kill();
    assert_eq!(hanging.wait().signal(), Some(9));
}

#[test]
fn shm_names_are_unique_and_cleaned_up() {
    let a = ShmName::new("harness");
    let b = ShmName::new("harness");
    assert_ne!(a.as_str(), b.as_str());
    let path = format!("/dev/shm/{}", a.as_str());
    std::fs::write(&path, b"x").unwrap();
    assert!(shm_names_with_prefix(a.as_str()).contains(&a.as_str().to_owned()));
    drop(a);
    assert!(std::fs::metadata(&path).is_err());
}
