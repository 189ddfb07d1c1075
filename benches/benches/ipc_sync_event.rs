//! ipc-sync `Event`: a blocking ping-pong between two processes, against the floor (a raw
//! shared-futex ping-pong, `benches::floor::futex_ping_pong`) in the same run.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use benches::floor::{Side, futex_ping_pong, futex_ping_pong_stop};
use benches::proc::fork;
use criterion::{Criterion, criterion_group, criterion_main};
use ipc_shm::{Layout, SegmentBuilder};
use ipc_sync::Event;

fn cross_process(c: &mut Criterion) {
    let mut layout = Layout::new();
    let ping_off = layout.add::<Event>().unwrap();
    let pong_off = layout.add::<Event>().unwrap();
    let stop_off = layout.add::<AtomicU32>().unwrap();
    let word_off = layout.add::<AtomicU32>().unwrap();
    let seg = SegmentBuilder::new(layout.size()).create().unwrap();
    let (ping, pong) = (seg.get(ping_off).unwrap(), seg.get(pong_off).unwrap());
    let stop = seg.get(stop_off).unwrap();
    let word = seg.get(word_off).unwrap();

    let mut g = c.benchmark_group("cross_process");

    let child = fork(|| {
        loop {
            ping.wait();
            ping.clear();
            if stop.load(Ordering::Acquire) != 0 {
                return;
            }
            pong.set();
        }
    });
    g.bench_function("event_ping_pong", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                ping.set();
                pong.wait();
                pong.clear();
            }
            start.elapsed()
        })
    });
    stop.store(1, Ordering::Release);
    ping.set();
    child.wait();

    let child = fork(|| futex_ping_pong(word, Side::Responder, 0));
    g.bench_function("compare_raw_futex_ping_pong", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            futex_ping_pong(word, Side::Initiator, iters);
            start.elapsed()
        })
    });
    futex_ping_pong_stop(word);
    child.wait();
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = cross_process
}
criterion_main!(benches);
