//! The async API (feature `tokio` of ipc-pipe and ipc-queue) under a real tokio runtime, across
//! processes: the child side is sync (a forked child, or a re-run of this binary), the parent
//! awaits. Peers are SIGKILLed while a task awaits, and every test runs under a watchdog.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use ipc_pipe::{Connection, PipeBuilder, RecvError, SendError, pipe};
use ipc_queue::{Queue, QueueBuilder};
use ipc_tests::{ChildProcess, ShmName, child, child_entry, fork_child};

const WATCHDOG: Duration = Duration::from_secs(60);
/// How long an await that must end (a dead peer) may take before the test fails.
const MUST_END: Duration = Duration::from_secs(10);

/// A runtime with two worker threads, as a small service would have.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Polls `fut` once (inside the runtime) and reports whether it is still waiting.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

/// Forks a child that runs `body` with `theirs` (dropping `mine` there first); the parent's
/// copy of `theirs` is dropped with the closure, as a parent must after a fork.
fn fork_with(
    mine: &mut Option<Connection>,
    theirs: Connection,
    body: impl FnOnce(Connection) -> i32,
) -> ChildProcess {
    fork_child(WATCHDOG, || {
        drop(mine.take());
        body(theirs)
    })
}

// ---- Connection ----

/// A child sends with the sync API; the parent awaits every message, then the child's exit
/// ends the next await with `Disconnected`.
#[test]
fn recv_async_gets_a_forked_childs_messages_then_disconnected() {
    let _watchdog = ipc_tests::watchdog("recv_async from a child", WATCHDOG);
    let (a, b) = pipe().unwrap();
    let mut a = Some(a);
    let child = fork_with(&mut a, b, |b| {
        for i in 0..100u64 {
            b.send(&(i, format!("message {i}"))).unwrap();
        }
        b.send_bytes(&[7u8; 100_000]).unwrap(); // larger than nothing, smaller than the ring
        0
    });
    let mut a = a.unwrap();
    runtime().block_on(async move {
        for i in 0..100u64 {
            let (n, text): (u64, String) = a.recv_async().await.unwrap();
            assert_eq!((n, text), (i, format!("message {i}")));
        }
        assert_eq!(a.recv_bytes_async().await.unwrap(), vec![7u8; 100_000]);
        let end = tokio::time::timeout(MUST_END, a.recv_async::<u64>()).await;
        assert!(matches!(end, Ok(Err(RecvError::Disconnected))), "{end:?}");
    });
    child.wait().assert_success();
}

/// The parent's sends wait for room (a 4 KiB ring, 1 MiB in total) while a slow sync reader
/// drains it in the child; the child's sum proves every byte arrived in order.
#[test]
fn send_async_waits_for_room_while_a_child_reads() {
    let _watchdog = ipc_tests::watchdog("send_async to a child", WATCHDOG);
    let (a, b) = PipeBuilder::new().capacity(4096).duplex().unwrap();
    let mut a = Some(a);
    let child = fork_with(&mut a, b, |b| {
        let mut total = 0u64;
        for i in 0..1024u64 {
            let (n, block): (u64, Vec<u8>) = b.recv().unwrap();
            assert_eq!(n, i);
            total += block.iter().map(|&x| u64::from(x)).sum::<u64>();
        }
        b.send(&total).unwrap();
        0
    });
    let mut a = a.unwrap();
    runtime().block_on(async move {
        let mut expected = 0u64;
        for i in 0..1024u64 {
            let block = vec![(i % 251) as u8; 1000];
            expected += block.iter().map(|&x| u64::from(x)).sum::<u64>();
            a.send_async(&(i, block)).await.unwrap();
        }
        assert_eq!(a.recv_async::<u64>().await.unwrap(), expected);
        // A message the ring cannot hold whole is refused, not half-sent.
        let big = a.send_bytes_async(&[0u8; 8192]).await;
        assert!(
            matches!(big, Err(SendError::LargerThanRing { len: 8192, .. })),
            "{big:?}"
        );
    });
    child.wait().assert_success();
}

/// Cancel safety: a receive abandoned by `tokio::time::timeout` loses nothing, and a message
/// sent afterwards is the next one received. The futures are `Send` (spawned on the runtime).
#[test]
fn a_timed_out_recv_async_loses_nothing() {
    let _watchdog = ipc_tests::watchdog("recv_async timeout", WATCHDOG);
    let (a, b) = pipe().unwrap();
    let mut a = Some(a);
    let child = fork_with(&mut a, b, |b| {
        // Wait for the parent's go (it has timed out by then), then answer twice.
        let go: String = b.recv().unwrap();
        b.send(&format!("{go}: first")).unwrap();
        b.send(&format!("{go}: second")).unwrap();
        0
    });
    let a = a.unwrap();
    runtime().block_on(async move {
        let task = tokio::spawn(async move {
            let mut a = a;
            for _ in 0..3 {
                let r =
                    tokio::time::timeout(Duration::from_millis(20), a.recv_async::<String>()).await;
                assert!(r.is_err(), "nothing was sent yet: {r:?}");
            }
            a.send_async("go").await.unwrap();
            let first: String = a.recv_async().await.unwrap();
            let second: String = a.recv_async().await.unwrap();
            (first, second)
        });
        let (first, second) = task.await.unwrap();
        assert_eq!(first, "go: first");
        assert_eq!(second, "go: second");
    });
    child.wait().assert_success();
}

/// A peer SIGKILLed while a task awaits `recv_async` ends the await with `Disconnected`
/// (the kernel's hang-up on the readiness fd), well within the watchdog.
#[test]
fn a_peer_sigkilled_during_recv_async_ends_it_with_disconnected() {
    let _watchdog = ipc_tests::watchdog("recv_async and SIGKILL", WATCHDOG);
    let (a, b) = pipe().unwrap();
    let mut a = Some(a);
    let child = fork_with(&mut a, b, |b| {
        b.send(&"ready").unwrap();
        // Holds its end, reads nothing, until it is killed.
        loop {
            std::thread::park();
        }
    });
    let mut a = a.unwrap();
    runtime().block_on(async {
        assert_eq!(a.recv_async::<String>().await.unwrap(), "ready");
        let mut recv = Box::pin(a.recv_async::<u8>());
        assert!(poll_once(&mut recv).await.is_pending(), "nothing was sent");
        child.kill();
        let r = tokio::time::timeout(MUST_END, recv).await;
        assert!(matches!(r, Ok(Err(RecvError::Disconnected))), "{r:?}");
    });
    assert_eq!(child.wait().signal(), Some(9));
}

/// The same for a send waiting for room in a full ring: the reader's death ends it with
/// `Disconnected`.
#[test]
fn a_peer_sigkilled_during_send_async_ends_it_with_disconnected() {
    let _watchdog = ipc_tests::watchdog("send_async and SIGKILL", WATCHDOG);
    let (a, b) = PipeBuilder::new().capacity(64).duplex().unwrap();
    let mut a = Some(a);
    let child = fork_with(&mut a, b, |b| {
        b.send(&"ready").unwrap();
        // Holds its end, reads nothing, until it is killed.
        loop {
            std::thread::park();
        }
    });
    let mut a = a.unwrap();
    runtime().block_on(async {
        assert_eq!(a.recv_async::<String>().await.unwrap(), "ready");
        a.send_async(&[1u8; 32]).await.unwrap(); // fills the ring (nobody reads it)
        let mut send = Box::pin(a.send_async(&[2u8; 32]));
        assert!(poll_once(&mut send).await.is_pending(), "the ring is full");
        child.kill();
        let r = tokio::time::timeout(MUST_END, send).await;
        assert!(matches!(r, Ok(Err(SendError::Disconnected))), "{r:?}");
    });
    assert_eq!(child.wait().signal(), Some(9));
}

// ---- Queue ----

/// A forked child puts with the sync API while the parent awaits each message.
#[test]
fn get_async_gets_a_forked_producers_messages() {
    let _watchdog = ipc_tests::watchdog("get_async from a child", WATCHDOG);
    let q: Queue<(u64, String)> = QueueBuilder::new().capacity(4096).build().unwrap();
    let producer = q.clone();
    let child = fork_child(WATCHDOG, move || {
        for i in 0..500u64 {
            producer.put((i, format!("item {i}"))).unwrap();
        }
        producer.close().unwrap();
        0
    });
    runtime().block_on(async move {
        for i in 0..500u64 {
            assert_eq!(q.get_async().await.unwrap(), (i, format!("item {i}")));
        }
        let end = tokio::time::timeout(MUST_END, q.get_async()).await;
        assert!(
            matches!(end, Ok(Err(ipc_queue::GetError::Closed))),
            "{end:?}"
        );
    });
    child.wait().assert_success();
}

/// The bytes forms: a child's raw messages are awaited (a too-short buffer leaves the message
/// queued), and `put_bytes_async` waits for room while the child gets.
#[test]
fn bytes_forms_of_the_queue_across_processes() {
    let _watchdog = ipc_tests::watchdog("queue bytes async", WATCHDOG);
    let to_parent: Queue<()> = QueueBuilder::new().capacity(256).build().unwrap();
    let to_child: Queue<()> = QueueBuilder::new().capacity(256).build().unwrap();
    let (up, down) = (to_parent.clone(), to_child.clone());
    let child = fork_child(WATCHDOG, move || {
        up.put_bytes(b"twelve bytes").unwrap();
        let mut buf = [0u8; 200];
        for i in 0..20u8 {
            let n = down.get_bytes(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[i; 100][..]);
        }
        0
    });
    runtime().block_on(async {
        let mut small = [0u8; 4];
        let r = to_parent.get_bytes_async(&mut small).await;
        let too_small = ipc_queue::GetBytesError::BufferTooSmall { needed: 12 };
        assert_eq!(r, Err(too_small));
        let mut buf = [0u8; 64];
        let n = to_parent.get_bytes_async(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"twelve bytes");
        // 256 bytes of ring hold two 100-byte messages: the rest wait for the child.
        for i in 0..20u8 {
            to_child.put_bytes_async(&[i; 100]).await.unwrap();
        }
    });
    child.wait().assert_success();
}

/// `put_async` waits for room (one item at a time) while a sync consumer in a child gets.
#[test]
fn put_async_waits_for_a_forked_consumer() {
    let _watchdog = ipc_tests::watchdog("put_async to a child", WATCHDOG);
    let q: Queue<u64> = QueueBuilder::new().max_items(1).build().unwrap();
    let consumer = q.clone();
    let child = fork_child(WATCHDOG, move || {
        let sum: u64 = (0..200).map(|_| consumer.get().unwrap()).sum();
        i32::from(sum != (0..200u64).sum::<u64>())
    });
    runtime().block_on(async move {
        for i in 0..200u64 {
            q.put_async(i).await.unwrap();
        }
    });
    child.wait().assert_success();
}

/// Cancel safety of `get_async`: three gets abandoned by a timeout take nothing, and the item
/// put afterwards (by a child) is got whole, once.
#[test]
fn a_timed_out_get_async_loses_nothing() {
    let _watchdog = ipc_tests::watchdog("get_async timeout", WATCHDOG);
    let q: Queue<String> = QueueBuilder::new().capacity(4096).build().unwrap();
    let rt = runtime();
    rt.block_on(async {
        for _ in 0..3 {
            let r = tokio::time::timeout(Duration::from_millis(20), q.get_async()).await;
            assert!(r.is_err(), "nothing was put yet: {r:?}");
        }
    });
    let producer = q.clone();
    let child = fork_child(WATCHDOG, move || {
        producer.put("after the timeouts".to_string()).unwrap();
        0
    });
    child.wait().assert_success();
    rt.block_on(async {
        assert_eq!(q.get_async().await.unwrap(), "after the timeouts");
        let none = tokio::time::timeout(Duration::from_millis(20), q.get_async()).await;
        assert!(none.is_err(), "exactly once: {none:?}");
    });
    assert!(q.is_empty());
}

/// A dropped `get_async` lets go of the queue at once: the reactor thread, which held the
/// queue's mapping while it slept on its word, is kicked, so the creator's last handle going
/// away still unlinks the name (without the kick the name stayed until the reactor woke for
/// another reason).
#[test]
fn a_dropped_get_async_lets_the_queue_go() {
    let name = ShmName::new("async-drop");
    let q: Queue<u8> = QueueBuilder::new().name(&name).build().unwrap();
    runtime().block_on(async {
        let r = tokio::time::timeout(Duration::from_millis(10), q.get_async()).await;
        assert!(r.is_err());
    });
    drop(q);
    let deadline = std::time::Instant::now() + MUST_END;
    while !ipc_tests::shm_names_with_prefix(name.as_str()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the name was not unlinked"
        );
        std::thread::yield_now();
    }
}

/// The environment variable naming the queue of the hundred-tasks child.
const HUNDRED_QUEUE: &str = "IPC_TESTS_ASYNC_QUEUE";
/// The environment variable naming the queue the child reports on.
const HUNDRED_REPORT: &str = "IPC_TESTS_ASYNC_REPORT";

/// The threads of this process.
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

// 100 tasks on a two-thread runtime await one queue: the process has a handful of threads
// while they wait (no thread per waiter), and each task gets one item.
child_entry! {
    fn hundred_tasks_child() {
        let q: Queue<u64> = Queue::open(&std::env::var(HUNDRED_QUEUE).unwrap()).unwrap();
        let report: Queue<u64> = Queue::open(&std::env::var(HUNDRED_REPORT).unwrap()).unwrap();
        let before = thread_count();
        let rt = runtime();
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
        let got = rt.block_on(async {
            let tasks: Vec<_> = (0..100)
                .map(|_| {
                    let (q, ready) = (q.clone(), ready_tx.clone());
                    tokio::spawn(async move {
                        ready.send(()).unwrap();
                        q.get_async().await.unwrap()
                    })
                })
                .collect();
            for _ in 0..100 {
                ready_rx.recv().await.unwrap();
            }
            tokio::task::yield_now().await;
            // The runtime's 2 workers, the queue's reactor, maybe tokio's blocking pool
            // thread: not one thread per waiting task.
            let during = thread_count();
            assert!(during <= before + 5, "{before} threads before, {during} while 100 tasks wait");
            report.put(during as u64).unwrap();
            let mut got = Vec::new();
            for t in tasks {
                got.push(t.await.unwrap());
            }
            got
        });
        let mut got = got;
        got.sort_unstable();
        assert_eq!(got, (0..100).collect::<Vec<u64>>());
    }
}

#[test]
fn hundred_tasks_await_one_queue_without_a_thread_each() {
    let name = ShmName::new("async-100");
    let report_name = ShmName::new("async-100-report");
    let q: Queue<u64> = QueueBuilder::new().name(&name).build().unwrap();
    let report: Queue<u64> = QueueBuilder::new().name(&report_name).build().unwrap();
    let child = child!(hundred_tasks_child)
        .env(HUNDRED_QUEUE, name.as_str())
        .env(HUNDRED_REPORT, report_name.as_str())
        .watchdog(WATCHDOG)
        .spawn();
    // The child reports once its 100 tasks wait; only then are the items put.
    let threads = report.get_timeout(WATCHDOG).unwrap();
    assert!(threads < 20, "{threads} threads");
    for i in 0..100u64 {
        q.put(i).unwrap();
    }
    child.wait().assert_success();
}

/// A payload whose every byte says which message it is, so a torn or mixed message shows.
fn payload(seq: u64) -> Vec<u8> {
    let mut v = vec![(seq % 251) as u8; 100_000];
    v[..8].copy_from_slice(&seq.to_le_bytes());
    v
}

fn check(msg: &[u8]) -> u64 {
    let seq = u64::from_le_bytes(msg[..8].try_into().unwrap());
    assert_eq!(msg.len(), 100_000, "message {seq} has the wrong length");
    assert!(
        msg[8..].iter().all(|&b| b == (seq % 251) as u8),
        "message {seq} is corrupted"
    );
    seq
}

/// A producer SIGKILLed while putting large messages (so most likely in the middle of an
/// encode or a copy, perhaps holding the put lock) leaves nothing torn: the consumer task,
/// awaiting throughout, gets only whole messages, in order, and goes on with the next producer,
/// whose puts recover the lock.
#[test]
fn a_producer_killed_mid_put_leaves_the_async_consumer_working() {
    let _watchdog = ipc_tests::watchdog("get_async and a killed producer", WATCHDOG);
    let q: Queue<Vec<u8>> = QueueBuilder::new().capacity(1 << 20).build().unwrap();
    let producer = q.clone();
    let first = fork_child(WATCHDOG, move || {
        for seq in 0.. {
            producer.put(payload(seq)).unwrap();
        }
        0
    });
    let rt = runtime();
    let (got_twenty, twenty) = std::sync::mpsc::channel();
    let consumer_q = q.clone();
    let consumer = rt.spawn(async move {
        let (mut next, mut second) = (0u64, SECOND);
        loop {
            let seq = check(&consumer_q.get_async().await.unwrap());
            if seq >= SECOND {
                assert_eq!(seq, second, "the second producer's, in order");
                second += 1;
                if second == SECOND + 5 {
                    return next;
                }
            } else {
                assert_eq!(seq, next, "in order, none lost, none twice");
                next += 1;
                if next == 20 {
                    got_twenty.send(()).unwrap();
                }
            }
        }
    });
    // Kill it while it puts more (the consumer keeps getting, so it is mostly encoding or
    // copying a message), and wait for the death.
    twenty.recv_timeout(WATCHDOG).unwrap();
    first.kill();
    assert_eq!(first.wait().signal(), Some(9));
    let producer = q.clone();
    let second = fork_child(WATCHDOG, move || {
        for seq in SECOND..SECOND + 5 {
            producer.put(payload(seq)).unwrap();
        }
        0
    });
    second.wait().assert_success();
    let from_first = rt
        .block_on(async { tokio::time::timeout(MUST_END, consumer).await })
        .expect("the consumer got the second producer's messages")
        .unwrap();
    assert!(from_first >= 20);
    assert!(q.is_empty());
}

/// The first sequence number of the second producer.
const SECOND: u64 = 1_000_000;
