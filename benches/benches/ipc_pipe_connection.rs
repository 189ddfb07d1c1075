//! ipc-pipe `Connection` between two processes, against the floor and peers in the same run.
//!
//! Groups:
//! - `round_trip_64B`: a 64-byte message there and back between a parent and a forked child.
//!   Ours with hot peers (adaptive spinning), with sleeping peers (no spinning: futex mode, and
//!   fd mode where the wake-up is a socket byte), against the spin floor, the futex floor, a Unix
//!   socketpair, a pipe(2) pair and ipc-channel.
//! - `one_way`: a forked child sends N messages of 64 B, 4 KiB or 1 MiB and the parent receives
//!   them (throughput), against a socketpair, a pipe(2) pair, ipc-channel and memcpy.
//!
//! At the end, Python's `multiprocessing.Pipe` is measured by a script when `python3` exists.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use benches::floor::{
    Side, futex_ping_pong, futex_ping_pong_stop, memcpy_once, spin_ping_pong, spin_ping_pong_stop,
};
use benches::proc::{fork, fork_closing};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ipc_pipe::{Connection, PipeBuilder, RecvError};
use ipc_shm::{Layout, SegmentBuilder};

/// Forks an echo child on a pipe made by `builder`; returns our end and the child.
fn pipe_echo(builder: PipeBuilder) -> (Connection, benches::proc::Child) {
    let (a, b) = builder.duplex().unwrap();
    let mut a = Some(a);
    let pid = fork(|| {
        drop(a.take());
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = b.recv_bytes_into(&mut buf) {
            if b.send_bytes(&buf[..n]).is_err() {
                break;
            }
        }
    });
    (a.unwrap(), pid)
}

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("round_trip_64B");
    let msg = [7u8; 64];

    for (name, builder, fd_mode) in [
        ("pipe_hot", PipeBuilder::new(), false),
        (
            "pipe_sleeping_futex",
            PipeBuilder::new().spin_limit(0),
            false,
        ),
        ("pipe_sleeping_fd", PipeBuilder::new().spin_limit(0), true),
    ] {
        let (a, pid) = pipe_echo(builder);
        if fd_mode {
            let _ = std::os::fd::AsFd::as_fd(&a);
        }
        let mut buf = [0u8; 64];
        g.bench_function(name, |b| {
            b.iter(|| {
                a.send_bytes(&msg).unwrap();
                a.recv_bytes_into(&mut buf).unwrap()
            })
        });
        drop(a);
        pid.wait();
    }

    // The floor: two processes on one shared word, spinning, then sleeping on the futex.
    let mut layout = Layout::new();
    let word_off = layout.add::<AtomicU32>().unwrap();
    for (name, spin) in [("compare_spin_floor", true), ("compare_futex_floor", false)] {
        let seg = SegmentBuilder::new(layout.size()).create().unwrap();
        let word = seg.get(word_off).unwrap();
        let pid = fork(|| {
            if spin {
                spin_ping_pong(word, Side::Responder, 0)
            } else {
                futex_ping_pong(word, Side::Responder, 0)
            }
        });
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                if spin {
                    spin_ping_pong(word, Side::Initiator, iters);
                } else {
                    futex_ping_pong(word, Side::Initiator, iters);
                }
                start.elapsed()
            })
        });
        if spin {
            spin_ping_pong_stop(word);
        } else {
            futex_ping_pong_stop(word);
        }
        pid.wait();
    }

    // A Unix socketpair.
    {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let pid = fork_closing(&[a.as_fd()], || {
            let mut buf = [0u8; 64];
            while b.read_exact(&mut buf).is_ok() {
                if b.write_all(&buf).is_err() {
                    break;
                }
            }
        });
        drop(b);
        let mut buf = [0u8; 64];
        g.bench_function("compare_socketpair", |bch| {
            bch.iter(|| {
                a.write_all(&msg).unwrap();
                a.read_exact(&mut buf).unwrap();
            })
        });
        drop(a);
        pid.wait();
    }

    // Two pipe(2)s.
    {
        let (mut up_r, mut up_w) = std::io::pipe().unwrap();
        let (mut down_r, mut down_w) = std::io::pipe().unwrap();
        let pid = fork_closing(&[up_w.as_fd(), down_r.as_fd()], || {
            let mut buf = [0u8; 64];
            while up_r.read_exact(&mut buf).is_ok() {
                if down_w.write_all(&buf).is_err() {
                    break;
                }
            }
        });
        let mut buf = [0u8; 64];
        g.bench_function("compare_pipe2", |bch| {
            bch.iter(|| {
                up_w.write_all(&msg).unwrap();
                down_r.read_exact(&mut buf).unwrap();
            })
        });
        drop(up_w);
        pid.wait();
    }

    // ipc-channel (bytes channels: no serde on either side).
    {
        let (up_tx, up_rx) = ipc_channel::ipc::bytes_channel().unwrap();
        let (down_tx, down_rx) = ipc_channel::ipc::bytes_channel().unwrap();
        let pid = fork(|| {
            while let Ok(m) = up_rx.recv() {
                if m.is_empty() || down_tx.send(&m).is_err() {
                    break;
                }
            }
        });
        g.bench_function("compare_ipc_channel", |bch| {
            bch.iter(|| {
                up_tx.send(&msg).unwrap();
                down_rx.recv().unwrap()
            })
        });
        up_tx.send(&[]).unwrap();
        pid.wait();
    }
    g.finish();
}

const SIZES: [usize; 3] = [64, 4096, 1 << 20];

fn one_way(c: &mut Criterion) {
    let mut g = c.benchmark_group("one_way");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let msg = vec![3u8; size];

        // Ours: the parent asks for `n` messages, the child streams them.
        let mut variants = vec![("pipe", PipeBuilder::new())];
        if size == 1 << 20 {
            variants.push(("pipe_4MiB_ring", PipeBuilder::new().capacity(4 << 20)));
        }
        for (name, builder) in variants {
            let (a, b) = builder.duplex().unwrap();
            let mut a = Some(a);
            let pid = fork(|| {
                drop(a.take());
                loop {
                    match b.recv::<u64>() {
                        Ok(n) => {
                            for _ in 0..n {
                                b.send_bytes(&msg).unwrap();
                            }
                        }
                        Err(RecvError::Disconnected) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
            });
            let a = a.unwrap();
            let mut buf = vec![0u8; size];
            g.bench_function(BenchmarkId::new(name, size), |bch| {
                bch.iter_custom(|iters| {
                    let start = Instant::now();
                    a.send(&iters).unwrap();
                    for _ in 0..iters {
                        a.recv_bytes_into(&mut buf).unwrap();
                    }
                    start.elapsed()
                })
            });
            drop(a);
            pid.wait();
        }

        // A socketpair: the count goes one way, the bytes the other.
        {
            let (mut a, mut b) = UnixStream::pair().unwrap();
            let pid = fork_closing(&[a.as_fd()], || {
                let mut cmd = [0u8; 8];
                while b.read_exact(&mut cmd).is_ok() {
                    for _ in 0..u64::from_le_bytes(cmd) {
                        b.write_all(&msg).unwrap();
                    }
                }
            });
            drop(b);
            let mut buf = vec![0u8; size];
            g.bench_function(BenchmarkId::new("compare_socketpair", size), |bch| {
                bch.iter_custom(|iters| {
                    let start = Instant::now();
                    a.write_all(&iters.to_le_bytes()).unwrap();
                    for _ in 0..iters {
                        a.read_exact(&mut buf).unwrap();
                    }
                    start.elapsed()
                })
            });
            drop(a);
            pid.wait();
        }

        // pipe(2).
        {
            let (mut up_r, mut up_w) = std::io::pipe().unwrap();
            let (mut down_r, mut down_w) = std::io::pipe().unwrap();
            let pid = fork_closing(&[up_w.as_fd(), down_r.as_fd()], || {
                let mut cmd = [0u8; 8];
                while up_r.read_exact(&mut cmd).is_ok() {
                    for _ in 0..u64::from_le_bytes(cmd) {
                        down_w.write_all(&msg).unwrap();
                    }
                }
            });
            let mut buf = vec![0u8; size];
            g.bench_function(BenchmarkId::new("compare_pipe2", size), |bch| {
                bch.iter_custom(|iters| {
                    let start = Instant::now();
                    up_w.write_all(&iters.to_le_bytes()).unwrap();
                    for _ in 0..iters {
                        down_r.read_exact(&mut buf).unwrap();
                    }
                    start.elapsed()
                })
            });
            drop(up_w);
            pid.wait();
        }

        // ipc-channel bytes channels.
        {
            let (up_tx, up_rx) = ipc_channel::ipc::bytes_channel().unwrap();
            let (down_tx, down_rx) = ipc_channel::ipc::bytes_channel().unwrap();
            let pid = fork(|| {
                while let Ok(cmd) = up_rx.recv() {
                    let Ok(cmd) = <[u8; 8]>::try_from(cmd.as_slice()) else {
                        break;
                    };
                    for _ in 0..u64::from_le_bytes(cmd) {
                        down_tx.send(&msg).unwrap();
                    }
                }
            });
            g.bench_function(BenchmarkId::new("compare_ipc_channel", size), |bch| {
                bch.iter_custom(|iters| {
                    let start = Instant::now();
                    up_tx.send(&iters.to_le_bytes()).unwrap();
                    for _ in 0..iters {
                        std::hint::black_box(down_rx.recv().unwrap());
                    }
                    start.elapsed()
                })
            });
            up_tx.send(&[]).unwrap();
            pid.wait();
        }

        // memcpy in one process: the ceiling for a copy-in, copy-out transport.
        {
            let mut dst = vec![0u8; size];
            g.bench_function(BenchmarkId::new("compare_memcpy", size), |bch| {
                bch.iter(|| memcpy_once(&mut dst, &msg))
            });
        }
    }
    g.finish();
}

const PYTHON: &str = r#"
import multiprocessing as mp, time
def echo(c, other):
    other.close()
    while True:
        try:
            m = c.recv_bytes()
        except EOFError:
            return
        c.send_bytes(m)
def source(c, other, size):
    other.close()
    m = b"x" * size
    while True:
        try:
            n = c.recv()
        except EOFError:
            return
        for _ in range(n):
            c.send_bytes(m)
mp.set_start_method("fork")
a, b = mp.Pipe()
p = mp.Process(target=echo, args=(b, a)); p.start(); b.close()
msg = b"x" * 64
for _ in range(2000):
    a.send_bytes(msg); a.recv_bytes()
n = 20000
t = time.perf_counter()
for _ in range(n):
    a.send_bytes(msg); a.recv_bytes()
print(f"python multiprocessing.Pipe round_trip_64B: {(time.perf_counter() - t) / n * 1e6:.2f} us")
a.close(); p.join()
for size, n in [(64, 100000), (4096, 50000), (1 << 20, 300)]:
    a, b = mp.Pipe()
    p = mp.Process(target=source, args=(b, a, size)); p.start(); b.close()
    a.send(10)
    for _ in range(10): a.recv_bytes()
    t = time.perf_counter()
    a.send(n)
    for _ in range(n): a.recv_bytes()
    dt = time.perf_counter() - t
    print(f"python multiprocessing.Pipe one_way {size} B: {n / dt:,.0f} msg/s, {size * n / dt / 1e9:.3f} GB/s")
    a.close(); p.join()
"#;

fn python_peer(_: &mut Criterion) {
    match std::process::Command::new("python3")
        .args(["-c", PYTHON])
        .output()
    {
        Ok(out) if out.status.success() => {
            print!("{}", String::from_utf8_lossy(&out.stdout));
        }
        Ok(out) => println!(
            "note: python3 multiprocessing.Pipe script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => println!("note: python3 not found; multiprocessing.Pipe not measured"),
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = round_trip, one_way, python_peer
}
criterion_main!(benches);
