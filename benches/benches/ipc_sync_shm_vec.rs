//! ipc-sync `ShmArena`/`ShmVec`: the cost of the hand-over protocol itself (allocate a block,
//! make it a token, adopt it, free it) and of filling a 64 KiB block, against a heap `Vec`
//! doing the same in the same run (what a thread channel's message costs its sender and
//! receiver).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipc_sync::{ShmArena, ShmVec};

const SIZE: usize = 64 << 10;

fn shm_vec(c: &mut Criterion) {
    let arena = ShmArena::builder()
        .block_size(SIZE)
        .blocks(4)
        .create()
        .expect("arena");
    let mut g = c.benchmark_group("shm_vec");

    // The protocol alone: four CASes on the block's word, no bytes touched.
    g.bench_function("alloc_token_adopt_free", |b| {
        b.iter(|| {
            let v: ShmVec<u8> = arena.try_alloc(SIZE).expect("a free block");
            let token = v.into_token().expect("owned");
            drop(black_box(arena.adopt(token).expect("adopt")));
        })
    });
    g.bench_function("compare_box_new_drop", |b| {
        b.iter(|| drop(black_box(Box::new(black_box(7u64)))))
    });

    // A 64 KiB message made and dropped: a block filled in shared memory, a fresh Vec.
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.bench_function("fill_64KiB_block", |b| {
        b.iter(|| {
            let mut v: ShmVec<u8> = arena.try_alloc(SIZE).expect("a free block");
            v.fill(7);
            drop(black_box(v));
        })
    });
    g.bench_function("compare_vec_64KiB", |b| {
        b.iter(|| drop(black_box(vec![7u8; SIZE])))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = shm_vec
}
criterion_main!(benches);
