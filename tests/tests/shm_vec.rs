//! `ipc_sync::ShmArena` and `ShmVec` across real processes: tokens through a `Queue` from a
//! producer process, an arena handed to pool workers that adopt and free blocks, a forked
//! child's inherited handle, and producers SIGKILLed at arbitrary moments (no adopted vector is
//! ever corrupted, a dead owner's blocks are reclaimed, at most the one token in flight is lost).

use std::sync::OnceLock;
use std::time::Duration;

use ipc_queue::{Queue, QueueBuilder};
use ipc_sync::{AdoptError, IntoTokenError, ShmArena, ShmToken, ShmVec};
use pool::{PoolBuilder, ProcessBuilder, StartMethod};

const WATCHDOG: Duration = Duration::from_secs(120);
const BLOCKS: usize = 8;
/// Elements of each vector: one block of 4 KiB of u64s.
const LEN: usize = 512;

fn arena() -> ShmArena {
    ShmArena::builder()
        .block_size(LEN * 8)
        .blocks(BLOCKS)
        .create()
        .expect("arena")
}

fn queue() -> Queue<ShmToken<u64>> {
    QueueBuilder::new()
        .capacity(1 << 16)
        .build()
        .expect("queue")
}

/// Element `j` of vector `seq`: every element depends on both, so a torn or reused block shows.
fn pattern(seq: u64, j: usize) -> u64 {
    seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ j as u64
}

fn check(v: &ShmVec<u64>) -> u64 {
    // Element 0 is `seq` times the multiplier; this is the multiplier's inverse.
    let seq = v[0].wrapping_mul(0xf1de_83e1_9937_733d);
    assert_eq!(v.len(), LEN);
    for (j, &x) in v.iter().enumerate() {
        assert_eq!(x, pattern(seq, j), "vector {seq}, element {j}: corrupted");
    }
    seq
}

/// A `Process`: makes `n` vectors (0..n, or forever for `u64::MAX`), each filled with its
/// pattern, and puts their tokens on the queue.
fn produce((arena, q, n): (ShmArena, Queue<ShmToken<u64>>, u64)) -> u64 {
    let mut buf = vec![0u64; LEN];
    for seq in 0..n {
        for (j, x) in buf.iter_mut().enumerate() {
            *x = pattern(seq, j);
        }
        let v: ShmVec<u64> = arena.alloc_copy(&buf).expect("alloc");
        q.put(v.into_token().expect("token")).expect("put");
    }
    n
}

#[test]
fn the_multiplier_inverse_is_right() {
    assert_eq!(
        0x9e37_79b9_7f4a_7c15u64.wrapping_mul(0xf1de_83e1_9937_733d),
        1
    );
}

#[test]
fn tokens_cross_a_queue_and_blocks_come_back_on_each_start_method() {
    let _w = ipc_tests::watchdog("shm_vec queue", WATCHDOG);
    for method in [
        StartMethod::Fork,
        StartMethod::ForkServer,
        StartMethod::Spawn,
    ] {
        let (arena, q) = (arena(), queue());
        // Many more vectors than blocks: the producer waits for the ones freed here.
        let n = 200u64;
        let producer = ProcessBuilder::new()
            .start_method(method)
            .spawn(produce, (arena.clone(), q.clone(), n))
            .expect("spawn producer");
        for expected in 0..n {
            let token = q.get_timeout(Duration::from_secs(30)).expect("token");
            let v = arena.adopt(token).expect("adopt");
            assert_eq!(check(&v), expected, "{method:?}");
        }
        assert_eq!(producer.join().result.expect("producer"), n, "{method:?}");
        let c = arena.counts();
        assert_eq!((c.free, c.owned, c.sent), (BLOCKS, 0, 0), "{method:?}");
    }
}

static ARENA: OnceLock<ShmArena> = OnceLock::new();

fn keep_arena(arena: ShmArena) {
    let _ = ARENA.set(arena);
}

/// A pool task: adopts the vector, checks it, returns its sequence number; dropping it frees
/// the block in the worker.
fn adopt_and_check(token: ShmToken<u64>) -> u64 {
    let arena = ARENA.get().expect("initialised");
    check(&arena.adopt(token).expect("adopt"))
}

#[test]
fn pool_workers_adopt_and_free_blocks_of_an_arena_handed_to_them() {
    let _w = ipc_tests::watchdog("shm_vec pool", WATCHDOG);
    for method in [
        StartMethod::Fork,
        StartMethod::ForkServer,
        StartMethod::Spawn,
    ] {
        let arena = arena();
        let pool = PoolBuilder::new()
            .processes(2)
            .start_method(method)
            .initializer(keep_arena, arena.clone())
            .build()
            .expect("pool");
        let mut seqs = Vec::new();
        for round in 0..4u64 {
            let tokens: Vec<ShmToken<u64>> = (0..BLOCKS as u64)
                .map(|i| {
                    let seq = round * 100 + i;
                    let mut v: ShmVec<u64> = arena.try_alloc(LEN).expect("a free block");
                    let data: Vec<u64> = (0..LEN).map(|j| pattern(seq, j)).collect();
                    v.copy_from_slice(&data);
                    v.into_token().expect("token")
                })
                .collect();
            assert_eq!(arena.counts().sent, BLOCKS);
            seqs.extend(pool.map(adopt_and_check, tokens).expect("map"));
            // Every block was freed by the worker that adopted it.
            assert_eq!(arena.counts().free, BLOCKS, "{method:?}");
        }
        let expected: Vec<u64> = (0..4u64)
            .flat_map(|r| (0..BLOCKS as u64).map(move |i| r * 100 + i))
            .collect();
        assert_eq!(seqs, expected, "{method:?}");
    }
}

#[test]
fn an_inherited_handle_stays_the_parents() {
    let _w = ipc_tests::watchdog("shm_vec fork", WATCHDOG);
    let arena = arena();
    let mut v: ShmVec<u64> = arena.alloc(LEN).expect("alloc");
    v.fill(5);
    let mut slot = Some(v);
    // The child takes its copy of the handle: it reads the block, but can neither send nor
    // free it. No allocation there (other test threads may hold the allocator's lock at the
    // fork): the handle's fields and the block's word are all it touches.
    let child = ipc_tests::fork_child(WATCHDOG, || {
        let Some(copy) = slot.take() else { return 1 };
        if copy[LEN - 1] != 5 {
            return 2;
        }
        match copy.into_token() {
            Err(IntoTokenError::NotOwner) => 0,
            _ => 3,
        }
    });
    let outcome = child.wait();
    assert_eq!(outcome.code(), Some(0), "{outcome:?}");
    assert_eq!(arena.counts().owned, 1);
    // Still the parent's: it sends it, and the token is adopted once.
    let token = slot
        .take()
        .expect("the parent's handle")
        .into_token()
        .expect("the parent owns it");
    let bytes = ipc_shm::codec::encode(&token).expect("encode");
    let again: ShmToken<u64> = ipc_shm::codec::decode(&bytes).expect("decode");
    let got = arena.adopt(token).expect("adopt");
    assert!(got.iter().all(|&x| x == 5));
    assert_eq!(arena.adopt(again).unwrap_err(), AdoptError::NotSent);
    drop(got);
    assert_eq!(arena.counts().free, BLOCKS);
}

#[test]
fn producers_killed_at_any_moment_leave_no_corruption_and_their_blocks_come_back() {
    let _w = ipc_tests::watchdog("shm_vec kill", WATCHDOG);
    // Tokens taken before each kill: early (the producer is starting), mid-stream, and when it
    // is blocked on a full arena (more than BLOCKS tokens are never outstanding unadopted).
    for (round, before_kill) in [0usize, 1, 3, 7, 20, 57].into_iter().enumerate() {
        let (arena, q) = (arena(), queue());
        let producer = ProcessBuilder::new()
            .start_method(StartMethod::Fork)
            .spawn(produce, (arena.clone(), q.clone(), u64::MAX))
            .expect("spawn producer");
        let mut last = None;
        for _ in 0..before_kill {
            let token = q.get_timeout(Duration::from_secs(30)).expect("token");
            let seq = check(&arena.adopt(token).expect("adopt"));
            assert_eq!(Some(seq), last.map_or(Some(0), |l: u64| l.checked_add(1)));
            last = Some(seq);
        }
        // Hold one adopted vector across the kill: a live owner's block is never reclaimed.
        let held = q
            .get_timeout(Duration::from_secs(30))
            .map(|t| arena.adopt(t).expect("adopt"))
            .expect("token");
        let held_seq = check(&held);
        producer.kill();
        let _ = producer.join();
        // Everything it managed to send is intact.
        while let Ok(token) = q.try_get() {
            check(&arena.adopt(token).expect("adopt"));
        }
        let c = arena.counts();
        assert!(c.sent <= 1, "round {round}: {c:?}");
        // Every block but the held one and a token lost between `into_token` and `put` can be
        // allocated now: the dead producer's are reclaimed.
        let want = BLOCKS - 1 - c.sent;
        let got: Vec<ShmVec<u64>> = (0..want)
            .map(|_| {
                arena
                    .alloc_timeout(LEN, Duration::from_secs(10))
                    .expect("reclaimed")
            })
            .collect();
        assert_eq!(got.len(), want);
        assert_eq!(
            check(&held),
            held_seq,
            "round {round}: the held vector changed"
        );
        drop(got);
        drop(held);
        // The lost token's block, if any, stays out of use (counted, never handed out).
        let c = arena.counts();
        assert_eq!(
            (c.owned, c.free + c.sent),
            (0, BLOCKS),
            "round {round}: {c:?}"
        );
    }
}

/// A `Process`: allocates `k` blocks, says so, then waits forever (for a message that never
/// comes) holding them.
fn hold((arena, ready, never, k): (ShmArena, Queue<u64>, Queue<u64>, usize)) -> u64 {
    let held: Vec<ShmVec<u64>> = (0..k).map(|_| arena.alloc(LEN).expect("alloc")).collect();
    ready.put(held.len() as u64).expect("put");
    never.get().expect("get")
}

#[test]
fn a_killed_owners_blocks_are_reclaimed_by_the_next_allocator_that_needs_them() {
    let _w = ipc_tests::watchdog("shm_vec reclaim", WATCHDOG);
    let arena = arena();
    let (ready, never) = (
        QueueBuilder::new().build().expect("queue"),
        QueueBuilder::new().build().expect("queue"),
    );
    let holder = ProcessBuilder::new()
        .start_method(StartMethod::ForkServer)
        .spawn(hold, (arena.clone(), ready.clone(), never.clone(), 5))
        .expect("spawn holder");
    assert_eq!(
        ready.get_timeout(Duration::from_secs(30)).expect("ready"),
        5
    );
    assert_eq!(arena.counts().owned, 5);
    // While the holder lives, only the other three blocks can be had.
    let mine: Vec<ShmVec<u64>> = (0..3)
        .map(|_| arena.try_alloc(LEN).expect("free block"))
        .collect();
    assert_eq!(
        arena
            .alloc_timeout::<u64>(LEN, Duration::from_millis(50))
            .unwrap_err(),
        ipc_sync::AllocError::NoFreeBlock
    );
    holder.kill();
    let _ = holder.join();
    // Its five blocks come back to the next allocator that finds none free, a non-blocking
    // one too (the producers' kill test covers the waiting form).
    let theirs: Vec<ShmVec<u64>> = (0..5)
        .map(|_| arena.try_alloc(LEN).expect("reclaimed block"))
        .collect();
    assert_eq!(arena.counts().owned, BLOCKS);
    drop((mine, theirs));
    assert_eq!(arena.counts().free, BLOCKS);
}

#[test]
fn tokens_lost_with_a_dropped_queue_are_taken_back_by_reclaim_sent() {
    let _w = ipc_tests::watchdog("shm_vec lost tokens", WATCHDOG);
    let (arena, q) = (arena(), queue());
    // A producer in another process fills every block and sends every token; nobody reads them.
    let producer = ProcessBuilder::new()
        .start_method(StartMethod::ForkServer)
        .spawn(produce, (arena.clone(), q.clone(), BLOCKS as u64))
        .expect("spawn producer");
    assert_eq!(producer.join().result.expect("producer"), BLOCKS as u64);
    drop(q);
    let c = arena.counts();
    assert_eq!((c.sent, c.free), (BLOCKS, 0));
    // Where no token is in flight any more, the blocks come back.
    assert_eq!(arena.reclaim_sent(), BLOCKS);
    let all: Vec<ShmVec<u64>> = (0..BLOCKS)
        .map(|_| arena.try_alloc(LEN).expect("a block taken back"))
        .collect();
    assert_eq!(all.len(), BLOCKS);
}
