//! The crates together: pool workers share a named ipc-queue and a robust ipc-sync lock in an
//! ipc-shm segment, and one worker is SIGKILLed while it holds the lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ipc_shm::{Layout, Offset, Segment, SegmentBuilder, TypeTag};
use ipc_sync::{Lock, LockError};
use pool::{PoolBuilder, StartMethod, TaskError};

const TAG: TypeTag = TypeTag::from_name("ipc-tests/cross-crate/v1");
const LOCK: Offset<Lock> = Offset::from_raw(0);
const COUNTER: Offset<AtomicU64> = Offset::from_raw(64);

fn layout_size() -> usize {
    let mut layout = Layout::new();
    assert_eq!(layout.add::<Lock>().unwrap(), LOCK);
    layout.align_to(64).unwrap();
    assert_eq!(layout.add::<AtomicU64>().unwrap(), COUNTER);
    layout.size()
}

/// A task: under the shared lock, bump the counter and report the value on the queue. Task
/// `die_at` kills its own worker while holding the lock. A task that finds the lock's owner
/// dead repairs nothing (the counter is updated atomically) and marks it consistent.
fn work((seg_name, queue_name, i, die_at): (String, String, u64, u64)) -> u64 {
    let seg = Segment::open(&seg_name, TAG).expect("open the segment");
    let queue: ipc_queue::Queue<u64> = ipc_queue::Queue::open(&queue_name).expect("open the queue");
    let lock = seg.get(LOCK).unwrap();
    let mut guard = match lock.lock_timeout(Duration::from_secs(20)) {
        Ok(g) => g,
        Err(ipc_sync::LockTimeoutError::OwnerDied(g)) => g,
        Err(e) => panic!("lock: {e}"),
    };
    guard.mark_consistent();
    if i == die_at {
        ipc_shm::os::kill(ipc_shm::os::pid(), ipc_shm::os::Signal::SIGKILL).unwrap();
    }
    let value = seg.get(COUNTER).unwrap().fetch_add(1, Ordering::AcqRel) + 1;
    queue.put(value).expect("put");
    drop(guard);
    // Tasks of at least 50 us are reported before the next one starts (see pool's worker), so
    // the killed worker takes no other task's result with it.
    std::thread::sleep(Duration::from_micros(100));
    value
}

#[test]
fn a_worker_killed_holding_a_shared_lock_fails_alone_and_the_rest_goes_on() {
    let seg_name = ipc_tests::ShmName::new("xc-seg");
    let queue_name = ipc_tests::ShmName::new("xc-queue");
    let seg = SegmentBuilder::new(layout_size())
        .name(&seg_name)
        .type_tag(TAG)
        .create()
        .unwrap();
    let queue: ipc_queue::Queue<u64> = ipc_queue::QueueBuilder::new()
        .capacity(1 << 16)
        .name(&queue_name)
        .build()
        .unwrap();
    let pool = PoolBuilder::new()
        .processes(2)
        .start_method(StartMethod::ForkServer)
        .build()
        .unwrap();
    let n = 40u64;
    let die_at = 17u64;
    let args: Vec<_> = (0..n)
        .map(|i| (seg_name.to_string(), queue_name.to_string(), i, die_at))
        .collect();
    let results: Vec<Result<u64, TaskError>> = pool.imap_chunked(work, args, 4).collect();

    // Exactly the killed task failed, with WorkerLost; every other task ran once.
    for (i, r) in results.iter().enumerate() {
        if i as u64 == die_at {
            assert!(
                matches!(r, Err(TaskError::WorkerLost { .. })),
                "task {i}: {r:?}"
            );
        } else {
            assert!(r.is_ok(), "task {i}: {r:?}");
        }
    }
    let mut got = Vec::new();
    while let Ok(v) = queue.try_get() {
        got.push(v);
    }
    got.sort_unstable();
    assert_eq!(
        got,
        (1..n).collect::<Vec<_>>(),
        "one value per surviving task, none lost or doubled"
    );
    assert_eq!(seg.get(COUNTER).unwrap().load(Ordering::Acquire), n - 1);
    // The lock was recovered (by a worker or by us) and is usable.
    match seg.get(LOCK).unwrap().lock() {
        Ok(_) => {}
        Err(LockError::OwnerDied(mut g)) => g.mark_consistent(),
        Err(e) => panic!("the lock was left unusable: {e}"),
    }
}
