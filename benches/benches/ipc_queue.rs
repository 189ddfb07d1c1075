//! ipc-queue throughput across processes, against threads and other transports.
//!
//! - `cross_process/spsc_batched/<size>`: a forked producer `put_many`s messages of `size`
//!   bytes (a `serde_bytes` payload), the parent `get_many`s them. Throughput in messages and
//!   bytes per second.
//! - `cross_process/spsc_single/64`: one `put`/`get` per message.
//! - `cross_process/mpmc_2x2/64`: two forked producers, the parent and a forked consumer.
//! - `cross_process/bytes_64KiB`: the byte API (`put_bytes` / `get_bytes`), one copy each way.
//! - `floor/memcpy_64KiB`: the memcpy floor for the 64 KiB target (50% of it).
//! - `compare_threads/*`: crossbeam-channel `bounded(1024)` and `std::sync::mpsc::sync_channel`
//!   between two threads (64 B messages); `compare_process/socketpair_bincode_64`: a forked
//!   child writes length-prefixed bincode frames into a Unix socketpair.
//!
//! ipc-channel and Python's `multiprocessing.Queue` are not measured here (yet): see
//! `ipc_pipe_connection` for ipc-channel between processes, and TARGETS.md for Python.
use std::hint::black_box;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use benches::floor::memcpy_once;
use benches::proc::fork;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ipc_queue::{Queue, QueueBuilder};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Payload(#[serde(with = "serde_bytes")] Vec<u8>);

const BATCH: usize = 256;

fn produce(q: &Queue<Payload>, size: usize, n: u64, batched: bool) {
    let batch: Vec<Payload> = (0..BATCH).map(|_| Payload(vec![7u8; size])).collect();
    let mut left = n as usize;
    while left > 0 {
        let k = left.min(BATCH);
        if batched {
            q.put_many(&batch[..k]).unwrap();
        } else {
            for _ in 0..k {
                q.put(Payload(vec![7u8; size])).unwrap();
            }
        }
        left -= k;
    }
}

fn consume(q: &Queue<Payload>, n: u64, batched: bool) {
    let mut out = Vec::with_capacity(BATCH);
    let mut got = 0u64;
    while got < n {
        if batched {
            out.clear();
            got += q.get_many(&mut out, BATCH.min((n - got) as usize)).unwrap() as u64;
            black_box(&out);
        } else {
            black_box(q.get().unwrap());
            got += 1;
        }
    }
}

fn cross_process(c: &mut Criterion) {
    let mut g = c.benchmark_group("cross_process");
    g.measurement_time(Duration::from_secs(3));
    for size in [8usize, 64, 1024, 65536] {
        let q: Queue<Payload> = QueueBuilder::new().capacity(4 << 20).build().unwrap();
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("spsc_batched", size), &size, |b, &size| {
            b.iter_custom(|iters| {
                let p = q.clone();
                let start = Instant::now();
                let pid = fork(move || produce(&p, size, iters, true));
                consume(&q, iters, true);
                let t = start.elapsed();
                pid.wait();
                t
            })
        });
    }
    {
        let q: Queue<Payload> = QueueBuilder::new().capacity(4 << 20).build().unwrap();
        g.bench_function(BenchmarkId::new("spsc_single", 64), |b| {
            b.iter_custom(|iters| {
                let p = q.clone();
                let start = Instant::now();
                let pid = fork(move || produce(&p, 64, iters, false));
                consume(&q, iters, false);
                let t = start.elapsed();
                pid.wait();
                t
            })
        });
        g.bench_function(BenchmarkId::new("mpmc_2x2", 64), |b| {
            b.iter_custom(|iters| {
                let half = iters / 2 + 1;
                let start = Instant::now();
                let p1 = q.clone();
                let p2 = q.clone();
                let c2 = q.clone();
                let a = fork(move || produce(&p1, 64, half, true));
                let b2 = fork(move || produce(&p2, 64, half, true));
                let c = fork(move || consume(&c2, half, true));
                consume(&q, half, true);
                a.wait();
                b2.wait();
                c.wait();
                start.elapsed()
            })
        });
    }
    {
        let q: Queue<()> = QueueBuilder::new().capacity(4 << 20).build().unwrap();
        g.throughput(Throughput::Bytes(65536));
        g.bench_function("bytes_64KiB", |b| {
            b.iter_custom(|iters| {
                let p = q.clone();
                let start = Instant::now();
                let pid = fork(move || {
                    let msg = vec![7u8; 65536];
                    for _ in 0..iters {
                        p.put_bytes(&msg).unwrap();
                    }
                });
                let mut buf = vec![0u8; 65536];
                for _ in 0..iters {
                    black_box(q.get_bytes(&mut buf).unwrap());
                }
                let t = start.elapsed();
                pid.wait();
                t
            })
        });
        g.bench_function("floor_memcpy_64KiB", |b| {
            let src = vec![7u8; 65536];
            let mut dst = vec![0u8; 65536];
            b.iter(|| memcpy_once(&mut dst, &src))
        });
    }
    g.finish();
}

fn compare(c: &mut Criterion) {
    let mut g = c.benchmark_group("compare");
    g.measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    g.bench_function("threads_crossbeam_bounded_64", |b| {
        b.iter_custom(|iters| {
            let (tx, rx) = crossbeam_channel::bounded::<Payload>(1024);
            let start = Instant::now();
            let t = std::thread::spawn(move || {
                for _ in 0..iters {
                    tx.send(Payload(vec![7u8; 64])).unwrap();
                }
            });
            for _ in 0..iters {
                black_box(rx.recv().unwrap());
            }
            t.join().unwrap();
            start.elapsed()
        })
    });
    g.bench_function("threads_std_sync_channel_64", |b| {
        b.iter_custom(|iters| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Payload>(1024);
            let start = Instant::now();
            let t = std::thread::spawn(move || {
                for _ in 0..iters {
                    tx.send(Payload(vec![7u8; 64])).unwrap();
                }
            });
            for _ in 0..iters {
                black_box(rx.recv().unwrap());
            }
            t.join().unwrap();
            start.elapsed()
        })
    });
    g.bench_function("process_socketpair_bincode_64", |b| {
        b.iter_custom(|iters| {
            let (mut rx, mut tx) = std::os::unix::net::UnixStream::pair().unwrap();
            let start = Instant::now();
            let pid = fork(move || {
                let mut w = std::io::BufWriter::new(&mut tx);
                for _ in 0..iters {
                    let bytes = bincode::serde::encode_to_vec(
                        Payload(vec![7u8; 64]),
                        bincode::config::standard(),
                    )
                    .unwrap();
                    w.write_all(&(bytes.len() as u32).to_le_bytes()).unwrap();
                    w.write_all(&bytes).unwrap();
                }
                w.flush().unwrap();
            });
            let mut r = std::io::BufReader::new(&mut rx);
            let mut buf = Vec::new();
            for _ in 0..iters {
                let mut len = [0u8; 4];
                r.read_exact(&mut len).unwrap();
                buf.resize(u32::from_le_bytes(len) as usize, 0);
                r.read_exact(&mut buf).unwrap();
                let (p, _): (Payload, usize) =
                    bincode::serde::decode_from_slice(&buf, bincode::config::standard()).unwrap();
                black_box(p);
            }
            let t = start.elapsed();
            pid.wait();
            t
        })
    });
    g.finish();
}

criterion_group!(benches, cross_process, compare);
criterion_main!(benches);
