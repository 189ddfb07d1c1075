//! The parent's death, even by SIGKILL, ends every worker and leaves no shared memory behind.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipc_shm::{OpenOptions, SegmentBuilder, SliceOffset, TypeTag};
use ipc_tests::{ShmName, child, child_entry, process_is_running, shm_names_with_prefix};
use pool::{PoolBuilder, StartMethod};

const TAG: TypeTag = TypeTag::from_name("pool-tests/pids/v1");
const PIDS: SliceOffset<AtomicU32> = SliceOffset::from_raw(0, 8);

fn sleep_forever(_: u32) -> u32 {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

child_entry! {
    fn parent_with_a_pool() {
        let method = match std::env::var("METHOD").unwrap().as_str() {
            "fork" => StartMethod::Fork,
            "spawn" => StartMethod::Spawn,
            _ => StartMethod::ForkServer,
        };
        let pool = PoolBuilder::new().processes(3).start_method(method).build().unwrap();
        // Keep every worker busy, then publish their pids and wait to be killed.
        let _busy: Vec<_> = (0..3).map(|_| pool.apply_async(sleep_forever, 0)).collect();
        let seg = OpenOptions::new(TAG).open(&std::env::var("SEG").unwrap()).unwrap();
        let slots = seg.slice(PIDS).unwrap();
        let pids: Vec<u32> = pool.stats().workers.iter().map(|w| w.pid).collect();
        for (slot, pid) in slots.iter().zip(&pids) {
            slot.store(*pid, Ordering::Release);
        }
        if method == StartMethod::Spawn {
            // The standby executed ahead of the next worker must die with us too.
            let deadline = Instant::now() + Duration::from_secs(30);
            let standby = loop {
                if let Some(pid) = pool::__spawn_standby_pid() {
                    break pid;
                }
                assert!(Instant::now() < deadline, "no standby appeared");
                // Polling for a process the keeper starts (no event to wait on).
                std::thread::sleep(Duration::from_millis(2));
            };
            slots[3].store(standby, Ordering::Release);
        }
        slots[7].store(pids.len() as u32, Ordering::Release);
        sleep_forever(0);
    }
}

fn parent_killed_leaves_nothing(method: &str) {
    let name = ShmName::new("pool-parent");
    let seg = SegmentBuilder::new(64)
        .name(&name)
        .type_tag(TAG)
        .create()
        .unwrap();
    let shm_before = shm_names_with_prefix("");
    let parent = child!(parent_with_a_pool)
        .env("SEG", name.as_str())
        .env("METHOD", method)
        .watchdog(Duration::from_secs(60))
        .spawn();
    let slots = seg.slice(PIDS).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while slots[7].load(Ordering::Acquire) == 0 {
        assert!(
            Instant::now() < deadline,
            "the child pool never published its workers"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut pids: Vec<u32> = slots[..3]
        .iter()
        .map(|p| p.load(Ordering::Acquire))
        .collect();
    // Spawn: the standby, too.
    match slots[3].load(Ordering::Acquire) {
        0 => assert_ne!(method, "spawn", "the spawn pool published no standby"),
        standby => pids.push(standby),
    }
    assert!(
        pids.iter().all(|&p| p != 0 && process_is_running(p)),
        "{pids:?}"
    );
    parent.kill();
    let outcome = parent.wait();
    assert_eq!(outcome.signal(), Some(9));
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| process_is_running(p)) {
        assert!(
            Instant::now() < deadline,
            "workers outlived their parent: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let shm_after = shm_names_with_prefix("");
    // Names of other tests (the harness's own prefix) come and go; the pool makes none.
    let leaked: Vec<_> = shm_after
        .iter()
        .filter(|n| !shm_before.contains(n) && !n.starts_with(ipc_tests::SHM_PREFIX))
        .collect();
    assert!(leaked.is_empty(), "leaked shared memory: {leaked:?}");
}

#[test]
fn fork_workers_die_with_their_parent() {
    parent_killed_leaves_nothing("fork");
}

#[test]
fn forkserver_workers_die_with_their_parent() {
    parent_killed_leaves_nothing("forkserver");
}

#[test]
fn spawned_workers_die_with_their_parent() {
    parent_killed_leaves_nothing("spawn");
}
