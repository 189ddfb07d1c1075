//! The queue across real processes: a mixed-size stress run, close, join, and SIGKILL chaos.
//!
//! Children are re-runs of this test binary (`ipc_tests::child!`) that open the queue by name.
//! Accounting lives in a second named segment of atomics.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ipc_queue::{GetError, JoinableQueue, PutError, Queue, QueueBuilder};
use ipc_shm::{Segment, SegmentBuilder, SliceOffset, TypeTag};
use ipc_sync::futex::{self, Deadline};
use ipc_tests::{ChildProcess, ShmName, child, child_entry};
use serde::{Deserialize, Serialize};

const WATCHDOG: Duration = Duration::from_secs(120);
const BOOK_TAG: TypeTag = TypeTag::from_name("ipc-queue-tests/book");

#[derive(Debug, Serialize, Deserialize)]
struct Msg {
    producer: u32,
    seq: u32,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
    checksum: u64,
}

fn checksum(producer: u32, seq: u32, payload: &[u8]) -> u64 {
    // FNV-1a over the identity and the bytes.
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in producer
        .to_le_bytes()
        .iter()
        .chain(&seq.to_le_bytes())
        .chain(payload)
    {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Message sizes from 8 B to 64 KiB: mostly small, some large.
fn size_of_msg(producer: u32, seq: u32) -> usize {
    let x = (u64::from(producer) << 32 | u64::from(seq)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
    match x % 64 {
        0 => 65536,
        1..=4 => 1024 + (x as usize % 15000),
        _ => 8 + (x as usize % 120),
    }
}

fn make_msg(producer: u32, seq: u32) -> Msg {
    let n = size_of_msg(producer, seq);
    let payload: Vec<u8> = (0..n).map(|i| (i as u32 ^ seq ^ producer) as u8).collect();
    let checksum = checksum(producer, seq, &payload);
    Msg {
        producer,
        seq,
        payload,
        checksum,
    }
}

fn check_msg(m: &Msg) {
    assert_eq!(
        m.payload.len(),
        size_of_msg(m.producer, m.seq),
        "length of {m:?}"
    );
    assert_eq!(
        m.checksum,
        checksum(m.producer, m.seq, &m.payload),
        "corrupt message"
    );
}

/// The accounting segment: `[stop, progress, acked[P], counts[P * per]]` as `AtomicU32`s.
struct Book {
    seg: Segment,
    per: usize,
    producers: usize,
}

impl Book {
    fn create(name: &str, producers: usize, per: usize) -> Book {
        let words = 2 + producers + producers * per;
        let seg = SegmentBuilder::new(words * 4)
            .name(name)
            .type_tag(BOOK_TAG)
            .create()
            .unwrap();
        Book {
            seg,
            per,
            producers,
        }
    }

    fn open() -> Book {
        let name = std::env::var("BOOK").unwrap();
        let producers: usize = std::env::var("PRODUCERS").unwrap().parse().unwrap();
        let per: usize = std::env::var("PER").unwrap().parse().unwrap();
        Book {
            seg: Segment::open(&name, BOOK_TAG).unwrap(),
            per,
            producers,
        }
    }

    fn words(&self) -> &[AtomicU32] {
        let n = 2 + self.producers + self.producers * self.per;
        self.seg.slice(SliceOffset::from_raw(0, n)).unwrap()
    }
    fn stop(&self) -> &AtomicU32 {
        &self.words()[0]
    }
    fn progress(&self) -> &AtomicU32 {
        &self.words()[1]
    }
    fn acked(&self, p: usize) -> &AtomicU32 {
        &self.words()[2 + p]
    }
    fn count(&self, p: usize, seq: usize) -> &AtomicU32 {
        &self.words()[2 + self.producers + p * self.per + seq]
    }

    /// A consumer's record of one message.
    fn record(&self, m: &Msg) {
        check_msg(m);
        let c = self.count(m.producer as usize, m.seq as usize);
        assert_eq!(
            c.fetch_add(1, Ordering::AcqRel),
            0,
            "message delivered twice: {}/{}",
            m.producer,
            m.seq
        );
        self.progress().fetch_add(1, Ordering::AcqRel);
    }
}

fn env_u32(key: &str) -> u32 {
    std::env::var(key).unwrap().parse().unwrap()
}

child_entry! {
    fn producer() {
        let q: Queue<Msg> = Queue::open(&std::env::var("QUEUE").unwrap()).unwrap();
        let book = Book::open();
        let me = env_u32("ME");
        let batch = env_u32("BATCH") as usize;
        let mut seq = 0u32;
        while (seq as usize) < book.per && book.stop().load(Ordering::Acquire) == 0 {
            let n = batch.min(book.per - seq as usize);
            if n > 1 {
                let msgs: Vec<Msg> = (seq..seq + n as u32).map(|s| make_msg(me, s)).collect();
                q.put_many(&msgs).unwrap();
            } else {
                q.put(make_msg(me, seq)).unwrap();
            }
            seq += n as u32;
            book.acked(me as usize).store(seq, Ordering::Release);
        }
    }

    fn consumer() {
        let q: Queue<Msg> = Queue::open(&std::env::var("QUEUE").unwrap()).unwrap();
        let book = Book::open();
        let batch = env_u32("BATCH") as usize;
        let mut last = vec![None::<u32>; book.producers];
        let mut out = Vec::new();
        loop {
            out.clear();
            let r = if batch > 1 {
                q.get_many(&mut out, batch).map(|_| ())
                    .map_err(|e| matches!(e, ipc_queue::GetManyError::Closed).then_some(()).unwrap_or_else(|| panic!("{e}")))
            } else {
                match q.get() {
                    Ok(m) => { out.push(m); Ok(()) }
                    Err(GetError::Closed) => Err(()),
                    Err(e) => panic!("{e}"),
                }
            };
            if r.is_err() {
                return;
            }
            for m in &out {
                let p = m.producer as usize;
                assert!(last[p].is_none_or(|l| l < m.seq), "FIFO per producer broken: {:?} then {}", last[p], m.seq);
                last[p] = Some(m.seq);
                book.record(m);
            }
        }
    }

    fn blocked_getter() {
        let q: Queue<u32> = Queue::open(&std::env::var("QUEUE").unwrap()).unwrap();
        // Blocks until the parent closes the queue.
        assert!(matches!(q.get(), Err(GetError::Closed)));
    }

    fn blocked_putter() {
        let q: Queue<u32> = Queue::open(&std::env::var("QUEUE").unwrap()).unwrap();
        q.put(1).unwrap(); // fills the queue (max_items 1)
        match q.put(2) {
            Err(PutError::Closed(v)) => assert_eq!(v, 2),
            other => panic!("{other:?}"),
        }
    }

    fn join_worker() {
        let q: JoinableQueue<u64> = JoinableQueue::open(&std::env::var("QUEUE").unwrap()).unwrap();
        let book = Book::open();
        loop {
            match q.get() {
                Ok(task) => {
                    book.count(0, task as usize).fetch_add(1, Ordering::AcqRel);
                    q.task_done().unwrap();
                }
                Err(GetError::Closed) => return,
                Err(e) => panic!("{e}"),
            }
        }
    }
}

fn spawn(
    entry: &str,
    qname: &str,
    book: &str,
    producers: usize,
    per: usize,
    me: usize,
    batch: usize,
) -> ChildProcess {
    let cmd = match entry {
        "producer" => child!(producer),
        "consumer" => child!(consumer),
        "join_worker" => child!(join_worker),
        _ => unreachable!(),
    };
    cmd.env("QUEUE", qname)
        .env("BOOK", book)
        .env("PRODUCERS", producers.to_string())
        .env("PER", per.to_string())
        .env("ME", me.to_string())
        .env("BATCH", batch.to_string())
        .watchdog(WATCHDOG)
        .spawn()
}

/// 4 producer and 4 consumer processes, mixed sizes up to 64 KiB, checksums, exactly once,
/// FIFO per producer.
#[test]
fn four_by_four_mixed_sizes_exactly_once() {
    // 250k messages in all.
    let per = 62_500;
    let qname = ShmName::new("q-stress");
    let bname = ShmName::new("q-stress-book");
    let q: Queue<Msg> = QueueBuilder::new()
        .name(&qname)
        .capacity(1 << 20)
        .build()
        .unwrap();
    let book = Book::create(&bname, 4, per);
    // Half the processes use batches, half single messages.
    let producers: Vec<_> = (0..4)
        .map(|p| {
            spawn(
                "producer",
                &qname,
                &bname,
                4,
                per,
                p,
                if p % 2 == 0 { 32 } else { 1 },
            )
        })
        .collect();
    let consumers: Vec<_> = (0..4)
        .map(|c| {
            spawn(
                "consumer",
                &qname,
                &bname,
                4,
                per,
                c,
                if c % 2 == 0 { 64 } else { 1 },
            )
        })
        .collect();
    for p in producers {
        p.wait().assert_success();
    }
    q.close().unwrap();
    for c in consumers {
        c.wait().assert_success();
    }
    for p in 0..4 {
        for s in 0..per {
            assert_eq!(
                book.count(p, s).load(Ordering::Acquire),
                1,
                "message {p}/{s}"
            );
        }
    }
    assert!(q.is_empty());
}

#[test]
fn close_wakes_blocked_getters_and_putters_in_other_processes() {
    let gname = ShmName::new("q-close-get");
    let qname = ShmName::new("q-close-put");
    let empty: Queue<u32> = QueueBuilder::new().name(&gname).build().unwrap();
    let q: Queue<u32> = QueueBuilder::new()
        .name(&qname)
        .max_items(1)
        .build()
        .unwrap();
    // The getter blocks on an empty queue; the putter fills its queue, then blocks.
    let getter = child!(blocked_getter)
        .env("QUEUE", &*gname)
        .watchdog(WATCHDOG)
        .spawn();
    let putter = child!(blocked_putter)
        .env("QUEUE", &*qname)
        .watchdog(WATCHDOG)
        .spawn();
    // Wait (without sleeping) until the putter's first message is queued.
    while q.is_empty() {
        std::thread::yield_now();
    }
    q.close().unwrap();
    empty.close().unwrap();
    getter.wait().assert_success();
    putter.wait().assert_success();
    // The putter's first message is still there to drain.
    assert_eq!(q.get().unwrap(), 1);
    assert!(matches!(q.get(), Err(GetError::Closed)));
}

#[test]
fn joinable_queue_join_across_processes() {
    const TASKS: usize = 2000;
    let qname = ShmName::new("q-join");
    let bname = ShmName::new("q-join-book");
    let q: JoinableQueue<u64> = QueueBuilder::new()
        .name(&qname)
        .capacity(4096)
        .build_joinable()
        .unwrap();
    let book = Book::create(&bname, 1, TASKS);
    let workers: Vec<_> = (0..2)
        .map(|w| spawn("join_worker", &qname, &bname, 1, TASKS, w, 1))
        .collect();
    for t in 0..TASKS as u64 {
        q.put(t).unwrap();
    }
    q.join_timeout(WATCHDOG).unwrap();
    // join returned: every task was got and marked done.
    for t in 0..TASKS {
        assert_eq!(book.count(0, t).load(Ordering::Acquire), 1);
    }
    assert_eq!(q.unfinished_tasks(), 0);
    q.close().unwrap();
    for w in workers {
        w.wait().assert_success();
    }
}

/// A tiny deterministic PRNG (xorshift), seeded per run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Waits until the consumers' progress counter reaches `target` (futex waits in short slices:
/// nobody wakes this word, so the slice is a poll bound, not a synchronisation sleep).
fn await_progress(book: &Book, target: u32, procs: &mut [(bool, ChildProcess)]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = book.progress().load(Ordering::Acquire);
        if now >= target {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no progress: stuck at {now} < {target}"
        );
        for (_, p) in procs.iter_mut() {
            if let Some(out) = p.wait_timeout(Duration::ZERO) {
                assert!(
                    out.success() || out.signal().is_some(),
                    "a child failed: {out:?}"
                );
            }
        }
        futex::wait(
            book.progress(),
            now,
            Some(Deadline::after(Duration::from_millis(2))),
        );
    }
}

/// Repeatedly SIGKILLs random producers and consumers mid-stream (small queue, messages up to
/// 64 KiB, so kills land in copies, in lock waits and in sleeps). Nothing hangs, nothing corrupt
/// or duplicated is delivered, and every message whose put returned is delivered, except at
/// most one batch per killed consumer (a consumer killed after taking messages and before
/// recording them took them with it: they were delivered, to a process that then died).
#[test]
fn chaos_sigkill_producers_and_consumers() {
    let kills = 40;
    let slots = 3 + 3 + kills; // producer ids: initial 3 plus one per replacement
    let per = 100_000;
    let qname = ShmName::new("q-chaos");
    let bname = ShmName::new("q-chaos-book");
    let q: Queue<Msg> = QueueBuilder::new()
        .name(&qname)
        .capacity(256 << 10)
        .build()
        .unwrap();
    let book = Book::create(&bname, slots, per);
    let mut next_producer = 0usize;
    let mut procs: Vec<(bool, ChildProcess)> = Vec::new();
    for i in 0..3 {
        procs.push((
            true,
            spawn(
                "producer",
                &qname,
                &bname,
                slots,
                per,
                next_producer,
                if i == 0 { 16 } else { 1 },
            ),
        ));
        next_producer += 1;
        procs.push((
            false,
            spawn(
                "consumer",
                &qname,
                &bname,
                slots,
                per,
                0,
                if i == 0 { 16 } else { 1 },
            ),
        ));
    }
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ u64::from(std::process::id()));
    let mut killed_consumers = 0u32;
    let mut target = 0u32;
    for _ in 0..kills {
        target += 300 + (rng.next() % 2000) as u32;
        await_progress(&book, target, &mut procs);
        let victim = (rng.next() % procs.len() as u64) as usize;
        let (is_producer, child) = procs.remove(victim);
        child.kill();
        let out = child.wait();
        if out.signal().is_none() {
            // It had finished on its own (a producer that sent everything).
            out.assert_success();
        } else if !is_producer {
            killed_consumers += 1;
        }
        let batch = if rng.next() & 1 == 0 { 1 } else { 16 };
        if is_producer {
            procs.push((
                true,
                spawn("producer", &qname, &bname, slots, per, next_producer, batch),
            ));
            next_producer += 1;
        } else {
            procs.push((
                false,
                spawn("consumer", &qname, &bname, slots, per, 0, batch),
            ));
        }
    }
    // Stop the producers, then close so the consumers drain and exit.
    book.stop().store(1, Ordering::Release);
    let (producers, consumers): (Vec<_>, Vec<_>) = procs.into_iter().partition(|(p, _)| *p);
    for (_, p) in producers {
        p.wait().assert_success();
    }
    q.close().unwrap();
    for (_, c) in consumers {
        c.wait().assert_success();
    }
    let mut missing = 0u32;
    for p in 0..next_producer {
        let acked = book.acked(p).load(Ordering::Acquire) as usize;
        for s in 0..per {
            let n = book.count(p, s).load(Ordering::Acquire);
            assert!(n <= 1, "message {p}/{s} delivered {n} times");
            if s < acked && n == 0 {
                missing += 1;
            }
        }
    }
    let delivered: u32 = book.progress().load(Ordering::Acquire);
    eprintln!(
        "chaos: {kills} kills ({killed_consumers} consumers), {next_producer} producers, \
         {delivered} messages recorded, {missing} acknowledged but unrecorded"
    );
    assert!(
        missing <= killed_consumers * 16,
        "{missing} acknowledged messages lost; {killed_consumers} consumers were killed"
    );
}
