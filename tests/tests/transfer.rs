//! IPC objects handed to processes and pool workers (issue 11, section 1): a `Queue`, a
//! `Connection`, and a `Lock` and a counter living in segments travel as arguments of
//! `ProcessBuilder::spawn`, `PoolBuilder::initializer` and pool tasks, on each start method,
//! and are used from both sides; plus the failure cases (no transfer context, a forged
//! descriptor index, a wrong layout, an end already given away).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use ipc_pipe::Connection;
use ipc_queue::{Queue, QueueBuilder};
use ipc_shm::transfer::{self, FdBatch, TransferError};
use ipc_shm::{SegmentBuilder, SharedValue, TypeTag};
use ipc_sync::Lock;
use pool::{PoolBuilder, ProcessBuilder, StartMethod, TaskError};

const METHODS: [StartMethod; 3] = [
    StartMethod::Fork,
    StartMethod::ForkServer,
    StartMethod::Spawn,
];
const WATCHDOG: Duration = Duration::from_secs(120);

fn queue<T>() -> Queue<T> {
    QueueBuilder::new()
        .capacity(1 << 16)
        .build()
        .expect("queue")
}

/// A `Process`: puts `0..n` on the queue it was handed.
fn produce((q, n): (Queue<u64>, u64)) -> u64 {
    for i in 0..n {
        q.put(i).expect("put");
    }
    n
}

/// A `Process`: gets `n` values from the queue it was handed, returns their sum.
fn consume((q, n): (Queue<u64>, u64)) -> u64 {
    (0..n)
        .map(|_| q.get_timeout(Duration::from_secs(30)).expect("get"))
        .sum()
}

#[test]
fn a_queue_handed_to_processes_is_used_from_both_sides_on_each_start_method() {
    let _w = ipc_tests::watchdog("queue to processes", WATCHDOG);
    for method in METHODS {
        let q = queue::<u64>();
        let producer = ProcessBuilder::new()
            .start_method(method)
            .spawn(produce, (q.clone(), 5))
            .expect("spawn producer");
        let consumer = ProcessBuilder::new()
            .start_method(method)
            .spawn(consume, (q.clone(), 8))
            .expect("spawn consumer");
        // The producer's five values and three from here reach the consumer.
        assert_eq!(producer.join().result.expect("producer"), 5, "{method:?}");
        for v in [100, 200, 300] {
            q.put(v).expect("put");
        }
        assert_eq!(
            consumer.join().result.expect("consumer"),
            (0..5).sum::<u64>() + 600,
            "{method:?}"
        );
        assert!(q.is_empty());
    }
}

/// A `Process`: answers `n + 1` to every `n` on the pipe end it was handed, until `u64::MAX`
/// or hang-up.
fn echo(conn: Connection) -> u64 {
    let mut answered = 0;
    while let Ok(n) = conn.recv::<u64>() {
        if n == u64::MAX {
            break;
        }
        conn.send(&(n + 1)).expect("send");
        answered += 1;
    }
    answered
}

#[test]
fn a_process_talks_over_a_pipe_end_it_was_handed_on_each_start_method() {
    let _w = ipc_tests::watchdog("pipe to a process", WATCHDOG);
    for method in METHODS {
        let (mine, theirs) = ipc_pipe::pipe().expect("pipe");
        let child = ProcessBuilder::new()
            .start_method(method)
            .spawn(echo, theirs)
            .expect("spawn");
        for n in 0..3u64 {
            mine.send(&n).expect("send");
            assert_eq!(
                mine.recv_timeout::<u64>(Duration::from_secs(30))
                    .expect("answer"),
                n + 1,
                "{method:?}"
            );
        }
        if method == StartMethod::Fork {
            // A forked child also inherited this process's copy of `mine` (fork copies every
            // descriptor), so dropping ours is no hang-up there: say goodbye explicitly.
            mine.send(&u64::MAX).expect("send");
        } else {
            // The parent gave its copy of the child's end away and the child holds nothing
            // else of the pipe, so dropping ours is the child's hang-up: its loop ends.
            drop(mine);
        }
        assert_eq!(child.join().result.expect("echo"), 3, "{method:?}");
    }
}

/// The lock and counter a worker's initializer received.
static SHARED: OnceLock<(SharedValue<Lock>, SharedValue<AtomicU64>)> = OnceLock::new();

fn init(shared: (SharedValue<Lock>, SharedValue<AtomicU64>)) {
    assert!(SHARED.set(shared).is_ok(), "initialised twice");
}

/// A task: under the handed lock, a non-atomic read-modify-write of the handed counter.
fn bump(_: u64) -> u64 {
    let (lock, counter) = SHARED.get().expect("the initializer ran");
    let guard = lock.lock().expect("lock");
    let v = counter.load(Ordering::Relaxed);
    counter.store(v + 1, Ordering::Relaxed);
    drop(guard);
    v
}

#[test]
fn a_pool_initializer_receives_a_lock_and_a_counter_on_each_start_method() {
    let _w = ipc_tests::watchdog("initializer", WATCHDOG);
    for method in METHODS {
        let lock = SharedValue::<Lock>::new_anonymous().expect("lock");
        let counter = SharedValue::<AtomicU64>::new_anonymous().expect("counter");
        let pool = PoolBuilder::new()
            .processes(2)
            .start_method(method)
            .initializer(init, (lock, counter.clone()))
            .build()
            .expect("pool");
        let seen = pool.map(bump, 0..40u64).expect("map");
        assert_eq!(seen.len(), 40);
        assert_eq!(counter.load(Ordering::Relaxed), 40, "{method:?}");
    }
}

/// A task: puts `i * 2` on the queue it was handed.
fn put_double((q, i): (Queue<u64>, u64)) -> u64 {
    q.put(i * 2).expect("put");
    i
}

#[test]
fn pool_tasks_receive_a_queue_on_each_start_method() {
    let _w = ipc_tests::watchdog("task arguments", WATCHDOG);
    for method in METHODS {
        let q = queue::<u64>();
        let pool = PoolBuilder::new()
            .processes(2)
            .start_method(method)
            .build()
            .expect("pool");
        assert_eq!(pool.apply(put_double, (q.clone(), 21)).expect("apply"), 21);
        // Many arguments, so chunks hold many clones of the queue: they travel as one
        // descriptor per chunk.
        let args: Vec<_> = (0..300u64).map(|i| (q.clone(), i)).collect();
        assert_eq!(
            pool.map(put_double, args).expect("map"),
            (0..300).collect::<Vec<_>>()
        );
        let mut got: Vec<u64> = (0..301).map(|_| q.try_get().expect("a value")).collect();
        got.sort_unstable();
        let mut want: Vec<u64> = (0..300).map(|i| i * 2).chain([42]).collect();
        want.sort_unstable();
        assert_eq!(got, want, "{method:?}");
    }
}

/// A task: stores `i + 1` in the value it was handed (its own segment) and returns `i`.
fn store_own((v, i): (SharedValue<AtomicU64>, u64)) -> u64 {
    v.store(i + 1, Ordering::Relaxed);
    i
}

/// More distinct handles in a chunk than one message may carry (`transfer::MAX_FDS`): the pool
/// splits the chunk instead of refusing the map (a chunk size is a hint), for `map` with the
/// automatic chunk size, `map_chunked` and `imap_chunked`, and every task runs once.
#[test]
fn a_chunk_with_more_handles_than_a_message_carries_is_split() {
    let _w = ipc_tests::watchdog("many handles", WATCHDOG);
    let n = (transfer::MAX_FDS * 5) as u64;
    let pool = PoolBuilder::new()
        .processes(1)
        .start_method(StartMethod::ForkServer)
        .build()
        .expect("pool");
    let values: Vec<SharedValue<AtomicU64>> = (0..n)
        .map(|_| SharedValue::new_anonymous().expect("segment"))
        .collect();
    let args = || values.iter().cloned().zip(0..n).collect::<Vec<_>>();
    let want: Vec<u64> = (0..n).collect();
    // One worker, so the automatic chunk is a quarter of the tasks: more than MAX_FDS.
    assert_eq!(pool.map(store_own, args()).expect("map"), want);
    assert!(
        values
            .iter()
            .zip(1..)
            .all(|(v, i)| v.load(Ordering::Relaxed) == i)
    );
    for v in &values {
        v.store(0, Ordering::Relaxed);
    }
    assert_eq!(
        pool.map_chunked(store_own, args(), n as usize)
            .expect("map_chunked"),
        want
    );
    assert!(
        values
            .iter()
            .zip(1..)
            .all(|(v, i)| v.load(Ordering::Relaxed) == i)
    );
    let got: Vec<u64> = pool
        .imap_chunked(store_own, args(), n as usize)
        .collect::<Result<_, _>>()
        .expect("imap_chunked");
    assert_eq!(got, want);
}

/// A task: marks its slot of the handed slice and puts its index on the handed joinable queue;
/// also checks the bare segment it was handed.
fn mark(
    (seg, slots, jq, i): (
        ipc_shm::Segment,
        ipc_shm::SharedSlice<AtomicU32>,
        ipc_queue::JoinableQueue<u64>,
        usize,
    ),
) -> u64 {
    assert_eq!(seg.type_tag(), TypeTag::from_name("transfer-test/bare"));
    slots[i].store(i as u32 + 1, Ordering::Relaxed);
    jq.put(i as u64).expect("put");
    seg.len() as u64
}

/// A `Process` that sends on the channel end it was handed.
fn send_on(tx: ipc_pipe::Sender) {
    tx.send(&"from the child").expect("send");
}

#[test]
fn segments_slices_joinable_queues_and_channel_ends_travel_on_each_start_method() {
    let _w = ipc_tests::watchdog("other kinds", WATCHDOG);
    for method in METHODS {
        let seg = SegmentBuilder::new(256)
            .type_tag(TypeTag::from_name("transfer-test/bare"))
            .create()
            .expect("segment");
        let slots = ipc_shm::SharedSlice::<AtomicU32>::new_anonymous(4).expect("slice");
        let jq: ipc_queue::JoinableQueue<u64> = QueueBuilder::new()
            .capacity(1 << 16)
            .build_joinable()
            .expect("joinable");
        let pool = PoolBuilder::new()
            .processes(2)
            .start_method(method)
            .build()
            .expect("pool");
        let args: Vec<_> = (0..4)
            .map(|i| {
                let seg = seg.try_clone().expect("clone");
                (seg, slots.clone(), jq.clone(), i)
            })
            .collect();
        assert_eq!(pool.map(mark, args).expect("map"), [256; 4], "{method:?}");
        let marks: Vec<u32> = slots.iter().map(|s| s.load(Ordering::Relaxed)).collect();
        assert_eq!(marks, [1, 2, 3, 4], "{method:?}");
        for _ in 0..4 {
            jq.get().expect("get");
            jq.task_done().expect("done");
        }
        jq.join();

        let (tx, rx) = ipc_pipe::channel().expect("channel");
        let child = ProcessBuilder::new()
            .start_method(method)
            .spawn(send_on, tx)
            .expect("spawn");
        assert_eq!(
            rx.recv_timeout::<String>(Duration::from_secs(30))
                .expect("recv"),
            "from the child"
        );
        child.join().result.expect("child");
    }
}

/// A task that received a pipe end it cannot have: the pool refuses it at submit time.
fn take_end(conn: Connection) -> usize {
    conn.side()
}

#[test]
fn an_end_already_given_away_fails_the_submit_not_the_worker() {
    let _w = ipc_tests::watchdog("given away", WATCHDOG);
    let (a, b) = ipc_pipe::pipe().expect("pipe");
    let (c, _d) = ipc_pipe::pipe().expect("pipe");
    c.send(&b).expect("b travels once");
    // `b` was given away into the message: sending it again is refused at once.
    let again = c.send(&b).unwrap_err();
    assert!(
        matches!(
            again,
            ipc_pipe::SendError::Transfer(TransferError::NotTransferable { .. })
        ),
        "{again:?}"
    );
    // An end cannot travel over its own pipe.
    let own = a.send(&a).unwrap_err();
    assert!(
        matches!(
            own,
            ipc_pipe::SendError::Transfer(TransferError::NotTransferable { .. })
        ),
        "{own:?}"
    );
    let pool = PoolBuilder::new().processes(1).build().expect("pool");
    match pool.apply(take_end, b) {
        Err(TaskError::Unsendable(e)) => assert!(
            matches!(e.transfer_error(), TransferError::NotTransferable { .. }),
            "{e}"
        ),
        other => panic!("expected an unsendable-handle error, got {other:?}"),
    }
    match ProcessBuilder::new().spawn(take_end, given_away_end(&c)) {
        Err(pool::PoolError::Config(pool::ConfigError::UnsendableArgument(e))) => {
            assert!(e.to_string().contains("given away"), "{e}")
        }
        other => panic!(
            "expected an unsendable-argument error, got {:?}",
            other.err()
        ),
    }
    fn init_with_end(_: Connection) {}
    match PoolBuilder::new()
        .processes(1)
        .initializer(init_with_end, given_away_end(&c))
        .build()
    {
        Err(pool::PoolError::Config(pool::ConfigError::UnsendableArgument(e))) => {
            assert!(e.to_string().contains("given away"), "{e}")
        }
        other => panic!(
            "expected an unsendable initializer argument, got {:?}",
            other.err()
        ),
    }
}

/// An end that was already given away (sent over another pipe), for the `spawn` refusal.
fn given_away_end(over: &Connection) -> Connection {
    let (e, _f) = ipc_pipe::pipe().expect("pipe");
    over.send(&e).expect("e travels");
    e
}

#[test]
fn handles_travel_over_a_pipe_and_arrive_validated() {
    let _w = ipc_tests::watchdog("over a pipe", WATCHDOG);
    let (a, b) = ipc_pipe::pipe().expect("pipe");
    let q = queue::<String>();
    let flag = SharedValue::<AtomicU32>::new_anonymous().expect("value");
    let (inner_a, inner_b) = ipc_pipe::pipe().expect("pipe");
    a.send(&(q.clone(), flag.clone(), inner_b, 7u8))
        .expect("send handles");
    let (q2, flag2, inner_b2, seven): (Queue<String>, SharedValue<AtomicU32>, Connection, u8) = b
        .recv_timeout(Duration::from_secs(10))
        .expect("recv handles");
    assert_eq!(seven, 7);
    q2.put(String::from("through")).expect("put");
    assert_eq!(q.try_get().expect("get"), "through");
    flag2.store(9, Ordering::Relaxed);
    assert_eq!(flag.load(Ordering::Relaxed), 9);
    inner_a.send(&1u8).expect("send");
    assert_eq!(inner_b2.recv::<u8>().expect("recv"), 1);
    // A message without handles still works after one with them, both ways.
    b.send(&"plain").expect("send");
    assert_eq!(a.recv::<String>().expect("recv"), "plain");

    // A SharedValue received as another type is a typed layout error.
    a.send(&flag).expect("send");
    let wrong = b.recv::<SharedValue<AtomicU64>>().unwrap_err();
    assert!(
        matches!(
            wrong,
            ipc_pipe::RecvError::Transfer(TransferError::Layout { .. })
        ),
        "{wrong:?}"
    );
    // A segment sent bare arrives with its tag checked against its header.
    let tagged = SegmentBuilder::new(64)
        .type_tag(TypeTag::from_name("transfer-test"))
        .create()
        .expect("segment");
    a.send(&tagged).expect("send");
    let got: ipc_shm::Segment = b.recv().expect("recv");
    assert_eq!(got.type_tag(), TypeTag::from_name("transfer-test"));
    assert!(got.name().is_none());
}

#[test]
fn handles_refuse_to_serialise_outside_a_transfer_context() {
    let flag = SharedValue::<AtomicU32>::new_anonymous().expect("value");
    let err = ipc_shm::codec::encode(&flag).unwrap_err();
    let message = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(
        message.contains("send it through ipc-pipe or the pool"),
        "{message}"
    );
    let q = queue::<u8>();
    assert!(ipc_shm::codec::encode(&q).is_err());
}

#[test]
fn a_forged_descriptor_index_is_a_typed_error() {
    let flag = SharedValue::<AtomicU32>::new_anonymous().expect("value");
    let (bytes, batch, error) = transfer::encode(|| ipc_shm::codec::encode(&flag));
    assert!(error.is_none());
    let bytes = bytes.expect("encodes");
    // The same message decoded with a batch that lost its descriptor: index 0 is out of range.
    let empty = FdBatch::from_parts(batch.id(), Vec::new());
    let (value, error) = transfer::decode_with(Some(empty), || {
        ipc_shm::codec::decode::<SharedValue<AtomicU32>>(&bytes)
    });
    assert!(value.is_err());
    assert!(
        matches!(
            error,
            Some(TransferError::OutOfRange { index: 0, count: 0 })
        ),
        "{error:?}"
    );
    // ... and with another message's batch: refused, not paired.
    let other = FdBatch::from_parts(batch.id() + 1, batch.into_fds());
    let (value, error) = transfer::decode_with(Some(other), || {
        ipc_shm::codec::decode::<SharedValue<AtomicU32>>(&bytes)
    });
    assert!(value.is_err());
    assert!(
        matches!(error, Some(TransferError::WrongBatch { .. })),
        "{error:?}"
    );
}

/// A `Process` that dies holding the lock it was handed.
fn die_holding(lock: SharedValue<Lock>) {
    let guard = lock.lock().expect("lock");
    std::mem::forget(guard);
    std::process::exit(3);
}

#[test]
fn a_handed_lock_reports_its_owner_death_to_the_parent_on_each_start_method() {
    let _w = ipc_tests::watchdog("owner death", WATCHDOG);
    for method in METHODS {
        let lock = SharedValue::<Lock>::new_anonymous().expect("lock");
        let child = ProcessBuilder::new()
            .start_method(method)
            .spawn(die_holding, lock.clone())
            .expect("spawn");
        assert!(child.join().result.is_err(), "{method:?}");
        match lock.lock_timeout(Duration::from_secs(30)) {
            Err(ipc_sync::LockTimeoutError::OwnerDied(mut guard)) => guard.mark_consistent(),
            other => panic!(
                "{method:?}: expected OwnerDied, got {:?}",
                other.map(|_| ())
            ),
        }
    }
}
