//! Single-process semantics of the queue (the cross-process behaviour is in `processes.rs`).

use std::time::Duration;

use ipc_queue::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Msg {
    id: u64,
    text: String,
}

#[test]
fn fifo_put_get_and_len() {
    let q: Queue<Msg> = QueueBuilder::new().capacity(4096).build().unwrap();
    assert!(q.is_empty());
    for id in 0..10 {
        q.put(Msg {
            id,
            text: format!("m{id}"),
        })
        .unwrap();
    }
    assert_eq!(q.len(), 10);
    for id in 0..10 {
        assert_eq!(
            q.get().unwrap(),
            Msg {
                id,
                text: format!("m{id}")
            }
        );
    }
    assert!(matches!(q.try_get(), Err(TryGetError::Empty)));
    assert!(matches!(
        q.get_timeout(Duration::from_millis(5)),
        Err(GetTimeoutError::Timeout)
    ));
}

#[test]
fn wraps_around_many_times() {
    let q: Queue<Vec<u8>> = QueueBuilder::new().capacity(256).build().unwrap();
    for i in 0..5000usize {
        let v = vec![i as u8; i % 100];
        q.put(v.clone()).unwrap();
        assert_eq!(q.get().unwrap(), v);
    }
}

#[test]
fn full_queue_and_max_items() {
    let q: Queue<u32> = QueueBuilder::new().max_items(3).build().unwrap();
    assert_eq!(q.max_items(), Some(3));
    for i in 0..3 {
        q.try_put(i).unwrap();
    }
    assert!(q.is_full());
    assert!(matches!(q.try_put(9), Err(TryPutError::Full(9))));
    assert!(matches!(
        q.put_timeout(9, Duration::from_millis(5)),
        Err(PutTimeoutError::Timeout(9))
    ));
    assert_eq!(q.get().unwrap(), 0);
    q.try_put(3).unwrap();

    let small: Queue<Vec<u8>> = QueueBuilder::new().capacity(64).build().unwrap();
    assert!(matches!(small.try_put(vec![0; 40]), Ok(())));
    assert!(matches!(small.try_put(vec![0; 40]), Err(TryPutError::Full(v)) if v.len() == 40));
}

#[test]
fn too_large_hands_the_value_back() {
    let q: Queue<Vec<u8>> = QueueBuilder::new().capacity(128).build().unwrap();
    let big = vec![7u8; 1000];
    match q.put(big) {
        Err(PutError::TooLarge(v)) => assert_eq!(v.len(), 1000),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        q.put_bytes(&[0; 121]),
        Err(PutBytesError::TooLarge { len: 121, max: 120 })
    ));
    q.put_bytes(&[1; 120]).unwrap();
}

#[test]
fn close_fails_puts_and_drains_gets() {
    let q: Queue<String> = QueueBuilder::new().build().unwrap();
    q.put(String::from("a")).unwrap();
    q.put(String::from("b")).unwrap();
    q.close().unwrap();
    assert!(q.is_closed());
    match q.put(String::from("c")) {
        Err(PutError::Closed(v)) => assert_eq!(v, "c"),
        other => panic!("{other:?}"),
    }
    assert_eq!(q.get().unwrap(), "a");
    assert_eq!(q.try_get().unwrap(), "b");
    assert!(matches!(q.get(), Err(GetError::Closed)));
    assert!(matches!(q.try_get(), Err(TryGetError::Closed)));
}

#[test]
fn close_wakes_a_blocked_getter() {
    let q: Queue<u8> = QueueBuilder::new().build().unwrap();
    let q2 = q.clone();
    let t = std::thread::spawn(move || q2.get());
    // The getter may or may not be asleep yet; either way close must end it.
    q.close().unwrap();
    assert!(matches!(t.join().unwrap(), Err(GetError::Closed)));
}

#[test]
fn batch_put_and_get() {
    let q: Queue<u64> = QueueBuilder::new().capacity(1024).build().unwrap();
    let items: Vec<u64> = (0..10_000).collect();
    let q2 = q.clone();
    let producer = std::thread::spawn(move || q2.put_many(&items));
    let mut got = Vec::new();
    while got.len() < 10_000 {
        q.get_many(&mut got, 64).unwrap();
    }
    producer.join().unwrap().unwrap();
    assert_eq!(got, (0..10_000).collect::<Vec<_>>());
}

#[test]
fn bytes_api_and_small_buffer() {
    let q: Queue<()> = QueueBuilder::new().build().unwrap();
    q.put_bytes(b"hello world").unwrap();
    let mut small = [0u8; 4];
    assert_eq!(
        q.try_get_bytes(&mut small),
        Err(GetBytesError::BufferTooSmall { needed: 11 })
    );
    let mut buf = [0u8; 64];
    let n = q.get_bytes(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello world");
    q.put_bytes(b"").unwrap();
    assert_eq!(q.get_bytes(&mut buf).unwrap(), 0);
    q.put_bytes(b"vec").unwrap();
    assert_eq!(q.get_bytes_vec().unwrap(), b"vec");
}

#[test]
fn undecodable_message_is_an_error_for_that_message_only() {
    let q: Queue<Msg> = QueueBuilder::new().build().unwrap();
    q.put_bytes(&[0xff, 0xff, 0xff]).unwrap();
    q.put(Msg {
        id: 1,
        text: "ok".into(),
    })
    .unwrap();
    assert!(matches!(q.get(), Err(GetError::Decode(_))));
    assert_eq!(q.get().unwrap().id, 1);
    q.put_bytes(&[0xff]).unwrap();
    q.put(Msg {
        id: 2,
        text: "ok".into(),
    })
    .unwrap();
    let mut out = Vec::new();
    expect_one_delivered_one_failed(q.get_many(&mut out, 10));
    assert_eq!(out[0].id, 2);
}

#[test]
fn joinable_queue_counts_tasks() {
    let q: JoinableQueue<u32> = QueueBuilder::new().build_joinable().unwrap();
    assert_eq!(q.task_done(), Err(TaskDoneError::TooManyCalls));
    q.put(1).unwrap();
    q.put(2).unwrap();
    assert_eq!(q.unfinished_tasks(), 2);
    assert!(matches!(
        q.join_timeout(Duration::from_millis(5)),
        Err(JoinError::Timeout { unfinished: 2 })
    ));
    let worker = q.clone();
    let t = std::thread::spawn(move || {
        for _ in 0..2 {
            worker.get().unwrap();
            worker.task_done().unwrap();
        }
    });
    q.join();
    assert_eq!(q.unfinished_tasks(), 0);
    t.join().unwrap();
}

#[test]
fn named_open_and_errors() {
    let name = ipc_tests::ShmName::new("q-open");
    let q: Queue<u32> = QueueBuilder::new()
        .name(&name)
        .capacity(100)
        .build()
        .unwrap();
    assert_eq!(q.capacity(), 128);
    let other: Queue<u32> = Queue::open(&name).unwrap();
    other.put(5).unwrap();
    assert_eq!(q.get().unwrap(), 5);
    assert!(matches!(
        Queue::<u32>::open("ipct-no-such-queue"),
        Err(OpenError::Segment(_))
    ));
    assert!(matches!(
        QueueBuilder::new().max_items(0).build::<u8>(),
        Err(CreateError::ZeroMaxItems)
    ));
    assert!(matches!(
        QueueBuilder::new().capacity(usize::MAX / 2).build::<u8>(),
        Err(CreateError::InvalidCapacity { .. })
    ));
}

#[test]
fn threads_mpmc_exactly_once() {
    let q: Queue<(u32, u32)> = QueueBuilder::new().capacity(512).build().unwrap();
    const N: u32 = 20_000;
    let producers: Vec<_> = (0..3)
        .map(|p| {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..N {
                    q.put((p, i)).unwrap();
                }
            })
        })
        .collect();
    let consumers: Vec<_> = (0..3)
        .map(|_| {
            let q = q.clone();
            std::thread::spawn(move || {
                let mut last = [None::<u32>; 3];
                let mut got = Vec::new();
                loop {
                    match q.get() {
                        Ok((p, i)) => {
                            assert!(last[p as usize].is_none_or(|l| l < i), "FIFO per producer");
                            last[p as usize] = Some(i);
                            got.push((p, i));
                        }
                        Err(GetError::Closed) => return got,
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    q.close().unwrap();
    let mut all: Vec<_> = consumers
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    all.sort();
    assert_eq!(all.len(), 3 * N as usize);
    all.dedup();
    assert_eq!(all.len(), 3 * N as usize);
}

/// A byte payload encoded as bytes (`serde_bytes`), as large messages should be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Bytes(#[serde(with = "serde_bytes")] Vec<u8>);

fn pattern(len: usize, seed: u8) -> Bytes {
    Bytes(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect(),
    )
}

/// Large messages (4 KiB and more) are encoded into and decoded out of the ring in place; mixed
/// with small ones, in single and batch calls, wrapping around the ring many times, every
/// message arrives whole and in order.
#[test]
fn large_and_small_messages_mix_in_order() {
    let q: Queue<Bytes> = QueueBuilder::new().capacity(64 << 10).build().unwrap();
    let sizes = [10usize, 5000, 4096, 3, 20_000, 4095, 60_000, 0, 9000];
    for round in 0..20u8 {
        for (i, &n) in sizes.iter().enumerate() {
            let m = pattern(n, round ^ i as u8);
            q.put(&m).unwrap();
            assert_eq!(q.get().unwrap(), m, "round {round}, size {n}");
        }
        // Batches: a mix of runs of both kinds, taken back in several calls.
        let batch: Vec<Bytes> = sizes[..6]
            .iter()
            .enumerate()
            .map(|(i, &n)| pattern(n, round.wrapping_add(i as u8)))
            .collect();
        q.put_many(&batch).unwrap();
        let mut out = Vec::new();
        while out.len() < batch.len() {
            q.get_many(&mut out, 16).unwrap();
        }
        assert_eq!(out, batch, "round {round}");
    }
    assert!(q.is_empty());
}

/// A large message that does not decode is an error for that message only, in place as from
/// the scratch buffer.
#[test]
fn undecodable_large_message_is_an_error_for_that_message_only() {
    let q: Queue<Bytes> = QueueBuilder::new().capacity(64 << 10).build().unwrap();
    // A length prefix claiming more bytes than the frame holds.
    let mut bad = (1u64 << 40).to_le_bytes().to_vec();
    bad.resize(5000, 7);
    q.put_bytes(&bad).unwrap();
    q.put(pattern(6000, 1)).unwrap();
    assert!(matches!(q.get(), Err(GetError::Decode(_))));
    assert_eq!(q.get().unwrap(), pattern(6000, 1));
    q.put_bytes(&bad).unwrap();
    q.put(pattern(7000, 2)).unwrap();
    let mut out = Vec::new();
    expect_one_delivered_one_failed(q.get_many(&mut out, 10));
    assert_eq!(out, [pattern(7000, 2)]);
}

/// A value whose encoding changes length between the counting pass and the write into the ring
/// (a `Serialize` impl that is not deterministic) is an encode error that hands the value back,
/// and puts nothing: the queue stays consistent.
#[test]
fn unstable_large_encoding_is_an_error_and_puts_nothing() {
    #[derive(Debug, Deserialize)]
    struct Unstable(#[serde(with = "serde_bytes")] Vec<u8>);
    thread_local! {
        static CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }
    impl Serialize for Unstable {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            // Every second call is one byte longer.
            let n = CALLS.with(|c| {
                c.set(c.get() + 1);
                c.get()
            });
            let len = self.0.len() + n % 2;
            s.serialize_bytes(&vec![1u8; len])
        }
    }
    let q: Queue<Unstable> = QueueBuilder::new().capacity(64 << 10).build().unwrap();
    // The first large put goes through the scratch buffer (one pass) and makes the next ones
    // measure first; the second then sees two different lengths.
    q.put(Unstable(vec![0; 5000])).unwrap();
    CALLS.with(|c| c.set(0));
    match q.put(Unstable(vec![0; 5000])) {
        Err(PutError::Encode(v, _)) => assert_eq!(v.0.len(), 5000),
        other => panic!("{other:?}"),
    }
    CALLS.with(|c| c.set(0));
    match q.put_many(&[Unstable(vec![0; 5000])]) {
        Err(PutManyError::Encode { sent: 0, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(q.len(), 1);
    assert!(q.get().is_ok());
    assert!(matches!(q.try_get(), Err(TryGetError::Empty)));
}

/// A batch get that delivered one message and failed to decode one, and nothing else.
fn expect_one_delivered_one_failed<T: std::fmt::Debug>(r: Result<T, GetManyError>) {
    match r {
        Err(GetManyError::Decode {
            delivered: 1,
            failed: 1,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}
