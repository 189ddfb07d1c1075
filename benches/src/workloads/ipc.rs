//! The transport families: ipc-queue SPSC and MPMC, ipc-pipe round trips with hot and sleeping
//! peers, ipc-sync lock hand-off; and the request/response servers used as process peers of
//! `apply`.

use std::hint::black_box;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ipc_pipe::PipeBuilder;
use ipc_queue::{Queue, QueueBuilder};
use ipc_shm::{Layout, SegmentBuilder};
use ipc_sync::{Lock, ShmArena, ShmToken};
use serde::{Deserialize, Serialize};

use super::python;
use super::tasks::noop;
use super::{ContenderSpec, Kind, Metric, Params, Runner, Workload};
use crate::floor::{
    Side, futex_ping_pong, futex_ping_pong_stop, memcpy_once, spin_ping_pong, spin_ping_pong_stop,
    spin_ping_pong_two_lines, spin_ping_pong_two_lines_stop,
};
use crate::proc::{Child, CopyRing, PthreadMutex, PthreadTurn, fork, fork_closing};

/// A message of `size` bytes, serialised as bytes (not element by element).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payload(#[serde(with = "serde_bytes")] pub Vec<u8>);

fn bincode_cfg() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Messages per iteration for `size`-byte messages: about 16 MiB, at least 1000 (or `max`),
/// at most `max`.
fn msgs_for(size: usize, max: u64) -> u64 {
    (((16usize << 20) / size.max(1)) as u64).clamp(1000.min(max), max.max(1))
}

fn size_label(size: usize) -> String {
    if size >= 1 << 20 && size.is_multiple_of(1 << 20) {
        format!("{}MiB", size >> 20)
    } else if size >= 1024 && size.is_multiple_of(1024) {
        format!("{}KiB", size >> 10)
    } else {
        format!("{size}B")
    }
}

/// The queues' ring: the library's default, what a user gets. (8 MiB until 2026-12-04: a ring
/// beyond the caches halved the 64 KiB rows, 20-34 against 48-59 GB/s, and 64 B messages gained
/// nothing from it; see `QueueBuilder::capacity`.)
const QUEUE_CAPACITY: usize = ipc_queue::DEFAULT_CAPACITY;

fn batch_for(size: usize) -> usize {
    ((1usize << 20) / size.max(1)).clamp(1, 256)
}

fn produce(q: &Queue<Payload>, size: usize, n: u64) -> Result<(), String> {
    let batch_len = batch_for(size);
    let batch: Vec<Payload> = (0..batch_len).map(|_| Payload(vec![7u8; size])).collect();
    let mut left = n as usize;
    while left > 0 {
        let k = left.min(batch_len);
        q.put_many(&batch[..k]).map_err(|e| e.to_string())?;
        left -= k;
    }
    Ok(())
}

fn consume(q: &Queue<Payload>, n: u64, size: usize) -> Result<(), String> {
    let batch_len = batch_for(size);
    let mut out = Vec::with_capacity(batch_len);
    let mut got = 0u64;
    while got < n {
        out.clear();
        got += q
            .get_many(&mut out, batch_len.min((n - got) as usize))
            .map_err(|e| e.to_string())? as u64;
        black_box(&out);
    }
    Ok(())
}

/// The label of the zero-copy contender (the targets table finds it by this prefix).
pub(crate) const SHM_VEC_LABEL: &str =
    "ipc-queue of ShmVec tokens (bytes written once, read in place)";
/// Blocks of the zero-copy contender's arena: in flight at most, as the thread channels' 1024
/// slots bound theirs.
const SHM_VEC_BLOCKS: usize = 256;

/// The zero-copy producer: each message is a fresh block filled as the thread contenders fill a
/// fresh `Vec` (`vec![7u8; size]`), sent as a token; tokens go in batches, as `produce` does.
fn produce_shm_vecs(
    q: &Queue<ShmToken<u8>>,
    arena: &ShmArena,
    size: usize,
    n: u64,
) -> Result<(), String> {
    // Batched as `produce` batches the copying contender's messages (1 MiB at most).
    let batch_len = batch_for(size);
    let mut batch = Vec::with_capacity(batch_len);
    let mut left = n as usize;
    while left > 0 {
        let k = left.min(batch_len);
        batch.clear();
        for _ in 0..k {
            let mut v = arena.alloc::<u8>(size).map_err(|e| e.to_string())?;
            v.fill(7);
            batch.push(v.into_token().map_err(|e| e.to_string())?);
        }
        q.put_many(&batch).map_err(|e| e.to_string())?;
        left -= k;
    }
    Ok(())
}

/// The zero-copy consumer: adopts each token (the block, read in place) and drops it (freed), as
/// the thread contenders drop each received `Vec`; takes `batch_len` tokens at a time.
fn consume_shm_vecs(
    q: &Queue<ShmToken<u8>>,
    arena: &ShmArena,
    batch_len: usize,
    n: u64,
) -> Result<(), String> {
    let mut out = Vec::with_capacity(batch_len);
    let mut got = 0u64;
    while got < n {
        out.clear();
        got += q
            .get_many(&mut out, batch_len.min((n - got) as usize))
            .map_err(|e| e.to_string())? as u64;
        for token in out.drain(..) {
            let v = arena.adopt(token).map_err(|e| e.to_string())?;
            black_box(&*v);
        }
    }
    Ok(())
}

fn new_queue() -> Result<Queue<Payload>, String> {
    QueueBuilder::new()
        .capacity(QUEUE_CAPACITY)
        .build()
        .map_err(|e| e.to_string())
}

fn memcpy_floor(size: usize) -> ContenderSpec {
    ContenderSpec::new(
        format!("memcpy {} (one copy)", size_label(size)),
        Kind::Floor,
        move || {
            let src = vec![7u8; size];
            let mut dst = vec![0u8; size];
            Ok(Runner::new(1, move |iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    memcpy_once(&mut dst, &src);
                }
                Ok(start.elapsed())
            }))
        },
    )
}

/// The label of the two-copy floor (the targets table finds it by this prefix).
pub(crate) const TWO_COPY_LABEL: &str = "floor: copy in + copy out, shared ring";

/// The floor of a copying process queue ([`CopyRing`]): a producer process copies each message
/// into a 1 MiB shared ring (the queue's default ring), this one copies it out, nothing else.
fn two_copy_floor(size: usize) -> ContenderSpec {
    ContenderSpec::new(
        format!("{TWO_COPY_LABEL} of 1 MiB, two processes"),
        Kind::Floor,
        move || {
            let ring = std::sync::Arc::new(CopyRing::new(size, ipc_queue::DEFAULT_CAPACITY));
            let theirs = ring.clone();
            let src = vec![7u8; size];
            let mut producer = Driven::start(move |n| {
                theirs.produce(&src, n);
                Ok(())
            })?;
            let mut dst = vec![0u8; size];
            Ok(Runner::new(1, move |iters| {
                let start = Instant::now();
                producer.go(iters)?;
                ring.consume(&mut dst, iters);
                producer.done()?;
                Ok(start.elapsed())
            }))
        },
    )
}

/// Streams `n` frames (u32 length + bincode `Payload`) into `w`.
fn write_frames(s: &mut UnixStream, size: usize, n: u64) -> std::io::Result<()> {
    let mut w = BufWriter::new(s);
    for _ in 0..n {
        let bytes = bincode::serde::encode_to_vec(Payload(vec![7u8; size]), bincode_cfg())
            .map_err(std::io::Error::other)?;
        w.write_all(&(bytes.len() as u32).to_le_bytes())?;
        w.write_all(&bytes)?;
    }
    w.flush()
}

fn read_frame<R: Read, T: serde::de::DeserializeOwned>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<T, String> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(|e| e.to_string())?;
    buf.resize(u32::from_le_bytes(len) as usize, 0);
    r.read_exact(buf).map_err(|e| e.to_string())?;
    let (v, _) =
        bincode::serde::decode_from_slice(buf, bincode_cfg()).map_err(|e| e.to_string())?;
    Ok(v)
}

fn write_frame<W: Write, T: Serialize>(w: &mut W, v: &T) -> std::io::Result<()> {
    let bytes = bincode::serde::encode_to_vec(v, bincode_cfg()).map_err(std::io::Error::other)?;
    w.write_all(&(bytes.len() as u32).to_le_bytes())?;
    w.write_all(&bytes)?;
    w.flush()
}

/// A helper process (a producer, a second consumer) started once per contender, outside the
/// timed region, and driven by one command per iteration: how users run a producer (a process
/// that lives on and sends batch after batch), and the same rule as the iceoryx2 contender's.
///
/// Forking the helper inside every iteration charged the timed region with the fork of the
/// runner's large parent (0.4-7 ms in a strace of `queue_spsc/64KiB`), the child's faults on the
/// inherited mappings (10-30 ms of system time per 64 MiB iteration, from `si_stime`), its exit,
/// and copy-on-write faults on every page of the parent's heap the consumer writes while the
/// child lives: costs no user of a long-lived producer pays per batch, and that the thread
/// contenders (a thread spawn, no copy-on-write) never paid.
struct Driven {
    cmd: UnixStream,
    /// Killed (SIGKILL) and reaped when the contender is dropped.
    _child: Child,
}

impl Driven {
    /// Forks a child that runs `body(n)` for every command `n` it reads and answers one byte
    /// after each (1: done, 0: failed), until the command stream ends.
    fn start(mut body: impl FnMut(u64) -> Result<(), String>) -> Result<Driven, String> {
        let (cmd, mut theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
        let child = fork_closing(&[cmd.as_fd()], move || {
            let mut word = [0u8; 8];
            while theirs.read_exact(&mut word).is_ok() {
                let ok = body(u64::from_le_bytes(word)).is_ok();
                if theirs.write_all(&[u8::from(ok)]).is_err() {
                    break;
                }
            }
        });
        Ok(Driven { cmd, _child: child })
    }

    /// Starts one round of `n`.
    fn go(&mut self, n: u64) -> Result<(), String> {
        self.cmd
            .write_all(&n.to_le_bytes())
            .map_err(|e| format!("helper process gone: {e}"))
    }

    /// Waits for the round to end.
    fn done(&mut self) -> Result<(), String> {
        let mut ok = [0u8; 1];
        self.cmd
            .read_exact(&mut ok)
            .map_err(|e| format!("helper process gone: {e}"))?;
        if ok[0] == 1 {
            Ok(())
        } else {
            Err("the helper process failed".into())
        }
    }
}

/// One producer process, one consumer (this process), per message size.
pub fn queue_spsc(p: &Params) -> Vec<Workload> {
    p.sizes
        .iter()
        .map(|&size| {
            let n = msgs_for(size, p.max_msgs);
            let mut wl = Workload::new(
                format!("queue_spsc/{}", size_label(size)),
                format!("queue, 1 producer -> 1 consumer, {} messages", size_label(size)),
                Metric::Throughput,
            )
            .with(ContenderSpec::new("ipc-queue put_many/get_many", Kind::Ours, move || {
                let q = new_queue()?;
                let pq = q.clone();
                let mut producer = Driven::start(move |n| produce(&pq, size, n))?;
                Ok(Runner::new(n, move |iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        producer.go(n)?;
                        consume(&q, n, size)?;
                        producer.done()?;
                    }
                    Ok(start.elapsed())
                }))
            }))
            .with(ContenderSpec::new(SHM_VEC_LABEL, Kind::Ours, move || {
                let arena = ShmArena::builder()
                    .block_size(size)
                    .blocks(SHM_VEC_BLOCKS)
                    .create()
                    .map_err(|e| e.to_string())?;
                let q: Queue<ShmToken<u8>> = QueueBuilder::new()
                    .capacity(1 << 20)
                    .build()
                    .map_err(|e| e.to_string())?;
                let (pq, pa) = (q.clone(), arena.clone());
                let mut producer = Driven::start(move |n| produce_shm_vecs(&pq, &pa, size, n))?;
                Ok(Runner::new(n, move |iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        producer.go(n)?;
                        consume_shm_vecs(&q, &arena, batch_for(size), n)?;
                        producer.done()?;
                    }
                    Ok(start.elapsed())
                }))
            }))
            .with(ContenderSpec::new("crossbeam bounded(1024), threads", Kind::Thread, move || {
                Ok(Runner::new(n, move |iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let (tx, rx) = crossbeam_channel::bounded::<Payload>(1024);
                        let t = std::thread::spawn(move || {
                            for _ in 0..n {
                                let _ = tx.send(Payload(vec![7u8; size]));
                            }
                        });
                        for _ in 0..n {
                            black_box(rx.recv().map_err(|e| e.to_string())?);
                        }
                        let _ = t.join();
                    }
                    Ok(start.elapsed())
                }))
            }))
            .with(ContenderSpec::new("std sync_channel(1024), threads", Kind::Thread, move || {
                Ok(Runner::new(n, move |iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let (tx, rx) = std::sync::mpsc::sync_channel::<Payload>(1024);
                        let t = std::thread::spawn(move || {
                            for _ in 0..n {
                                let _ = tx.send(Payload(vec![7u8; size]));
                            }
                        });
                        for _ in 0..n {
                            black_box(rx.recv().map_err(|e| e.to_string())?);
                        }
                        let _ = t.join();
                    }
                    Ok(start.elapsed())
                }))
            }))
            .with(ContenderSpec::new("socketpair + bincode frames", Kind::Process, move || {
                let (rx, mut tx) = UnixStream::pair().map_err(|e| e.to_string())?;
                let mut producer = Driven::start(move |n| {
                    write_frames(&mut tx, size, n).map_err(|e| e.to_string())
                })?;
                let mut r = BufReader::new(rx);
                let mut buf = Vec::new();
                Ok(Runner::new(n, move |iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        producer.go(n)?;
                        for _ in 0..n {
                            black_box(read_frame::<_, Payload>(&mut r, &mut buf)?);
                        }
                        producer.done()?;
                    }
                    Ok(start.elapsed())
                }))
            }))
            .with(ContenderSpec::new("ipc-channel", Kind::Process, move || {
                let (tx, rx) = ipc_channel::ipc::channel::<Payload>().map_err(|e| e.to_string())?;
                let mut producer = Driven::start(move |n| {
                    for _ in 0..n {
                        tx.send(Payload(vec![7u8; size])).map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })?;
                Ok(Runner::new(n, move |iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        producer.go(n)?;
                        for _ in 0..n {
                            black_box(rx.recv().map_err(|e| e.to_string())?);
                        }
                        producer.done()?;
                    }
                    Ok(start.elapsed())
                }))
            }))
            .with(super::iceoryx::stream(size, n))
            .with(memcpy_floor(size))
            .with(two_copy_floor(size));
            if p.python {
                wl = wl.with(python::contender(
                    "python mp.Queue",
                    format!("queue {size} {}", (n / 10).max(1)),
                    (n / 10).max(1),
                ));
            }
            wl.param = Some(("bytes", size as u64));
            wl.bytes_per_op = size as u64;
            wl.note("process contenders (ours, socketpair, ipc-channel, iceoryx2) fork their producer once, before timing, and start it with a command each iteration, as a long-lived producer runs (forking inside the timed region charged the fork of the runner's large parent, the child's page faults and copy-on-write faults to the process contenders only); thread contenders spawn their producer thread each iteration (tens of microseconds, no copy-on-write); ipc-queue (its default 1 MiB ring) batches (put_many/get_many), the others send one by one as their APIs do")
        })
        .collect()
}

/// Two producer processes, two consumer processes (one is this one), per message size.
pub fn queue_mpmc(p: &Params) -> Vec<Workload> {
    p.sizes
        .iter()
        .map(|&size| {
            let half = (msgs_for(size, p.max_msgs) / 2).max(1);
            let mut wl = Workload::new(
                format!("queue_mpmc/{}", size_label(size)),
                format!(
                    "queue, 2 producers -> 2 consumers, {} messages",
                    size_label(size)
                ),
                Metric::Throughput,
            )
            .with(ContenderSpec::new(
                "ipc-queue 2x2 processes",
                Kind::Ours,
                move || {
                    let q = new_queue()?;
                    let (p1, p2, c2) = (q.clone(), q.clone(), q.clone());
                    let mut helpers = [
                        Driven::start(move |n| produce(&p1, size, n))?,
                        Driven::start(move |n| produce(&p2, size, n))?,
                        Driven::start(move |n| consume(&c2, n, size))?,
                    ];
                    Ok(Runner::new(half * 2, move |iters| {
                        let start = Instant::now();
                        for _ in 0..iters {
                            for h in &mut helpers {
                                h.go(half)?;
                            }
                            consume(&q, half, size)?;
                            for h in &mut helpers {
                                h.done()?;
                            }
                        }
                        Ok(start.elapsed())
                    }))
                },
            ))
            .with(ContenderSpec::new(
                "crossbeam bounded(1024), 2x2 threads",
                Kind::Thread,
                move || {
                    Ok(Runner::new(half * 2, move |iters| {
                        let start = Instant::now();
                        for _ in 0..iters {
                            let (tx, rx) = crossbeam_channel::bounded::<Payload>(1024);
                            let mut ts = Vec::new();
                            for _ in 0..2 {
                                let tx = tx.clone();
                                ts.push(std::thread::spawn(move || {
                                    for _ in 0..half {
                                        let _ = tx.send(Payload(vec![7u8; size]));
                                    }
                                }));
                            }
                            let rx2 = rx.clone();
                            ts.push(std::thread::spawn(move || {
                                for _ in 0..half {
                                    black_box(rx2.recv().ok());
                                }
                            }));
                            for _ in 0..half {
                                black_box(rx.recv().map_err(|e| e.to_string())?);
                            }
                            for t in ts {
                                let _ = t.join();
                            }
                        }
                        Ok(start.elapsed())
                    }))
                },
            ));
            if p.python {
                wl = wl.with(python::contender(
                    "python mp.Queue 2x2",
                    format!("queue_mpmc {size} {}", (half / 5).max(1) * 2),
                    (half / 5).max(1) * 2,
                ));
            }
            wl.param = Some(("bytes", size as u64));
            wl.bytes_per_op = size as u64;
            wl.note("ours: two producer processes and a second consumer process forked once, before timing, and started with a command each iteration (as long-lived processes run); crossbeam: its four threads spawned each iteration")
        })
        .collect()
}

/// Forks an echo child on a pipe made by `builder`.
fn pipe_echo(builder: PipeBuilder) -> Result<(ipc_pipe::Connection, Child), String> {
    let (a, b) = builder.duplex().map_err(|e| e.to_string())?;
    let mut a = Some(a);
    let child = fork(|| {
        drop(a.take());
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(n) = b.recv_bytes_into(&mut buf) {
            if b.send_bytes(&buf[..n]).is_err() {
                break;
            }
        }
    });
    a.map(|a| (a, child))
        .ok_or_else(|| "no connection".to_string())
}

/// A word in fresh shared memory for the floor ping-pongs.
pub(crate) fn shared_word() -> Result<(ipc_shm::Segment, ipc_shm::Offset<AtomicU32>), String> {
    let mut layout = Layout::new();
    let off = layout.add::<AtomicU32>().map_err(|e| e.to_string())?;
    let seg = SegmentBuilder::new(layout.size())
        .create()
        .map_err(|e| e.to_string())?;
    Ok((seg, off))
}

/// The spinning round trip with one word per direction, each on its own cache line
/// ([`crate::floor::spin_ping_pong_two_lines`]), wherever the scheduler puts the two processes.
pub fn floor_spin_two_lines() -> ContenderSpec {
    ContenderSpec::new(
        "floor: spin ping-pong (a word per direction, scheduler's placement)",
        Kind::Floor,
        move || {
            // Two words 128 bytes apart: never on one cache line (nor one adjacent-line pair).
            let mut layout = Layout::new();
            let off = layout.add::<[AtomicU32; 64]>().map_err(|e| e.to_string())?;
            let seg = SegmentBuilder::new(layout.size())
                .create()
                .map_err(|e| e.to_string())?;
            Ok(Runner::new(1, move |iters| {
                let words = seg.get(off).map_err(|e| e.to_string())?;
                let (ping, pong) = (&words[0], &words[32]);
                ping.store(0, Ordering::Release);
                pong.store(0, Ordering::Release);
                let child = fork(|| spin_ping_pong_two_lines(ping, pong, Side::Responder, 0));
                // Untimed: the first round waits for the child to run (see `WARM_ROUNDS`).
                spin_ping_pong_two_lines(ping, pong, Side::Initiator, WARM_ROUNDS);
                let start = Instant::now();
                spin_ping_pong_two_lines(ping, pong, Side::Initiator, iters);
                let t = start.elapsed();
                spin_ping_pong_two_lines_stop(ping);
                child.wait();
                Ok(t)
            }))
        },
    )
}

/// Where the two processes of a floor ping-pong run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Wherever the scheduler puts them, as every other contender runs.
    Scheduler,
    /// Both pinned to CPU 0: every wake-up is a context switch on one core.
    SameCore,
    /// Pinned to CPUs 0 and 1: a sleeping peer's core may be halted and must be woken.
    CrossCore,
}

impl Placement {
    fn label(self) -> &'static str {
        match self {
            Placement::Scheduler => "scheduler's placement",
            Placement::SameCore => "same core, pinned",
            Placement::CrossCore => "cross-core, pinned",
        }
    }
}

/// The floor's ping-pong between this process and a forked child on one shared word, spinning
/// or sleeping in the futex, under `placement`. Only the floor rows are pinned (ours and the
/// peers run where the scheduler puts them), so each row names its placement: a sleeping
/// round trip costs several times more across cores (the idle vCPU is halted and must be
/// woken) than on one core, and comparing a contender with the wrong one misleads.
pub fn floor_ping_pong(spin: bool, placement: Placement) -> ContenderSpec {
    let name = format!(
        "floor: {} ping-pong (shared word, {})",
        if spin { "spin" } else { "futex" },
        placement.label()
    );
    ContenderSpec::new(name, Kind::Floor, move || {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (parent_cpu, child_cpu) = match placement {
            Placement::Scheduler => (None, None),
            Placement::SameCore => (Some(0), Some(0)),
            Placement::CrossCore if cpus >= 2 => (Some(0), Some(1)),
            Placement::CrossCore => return Err("one CPU: no cross-core placement".into()),
        };
        let (seg, off) = shared_word()?;
        Ok(Runner::new(1, move |iters| {
            let word = seg.get(off).map_err(|e| e.to_string())?;
            word.store(0, Ordering::Release);
            let child = fork(|| {
                if let Some(cpu) = child_cpu {
                    crate::proc::pin_to_cpu(cpu);
                }
                if spin {
                    spin_ping_pong(word, Side::Responder, 0)
                } else {
                    futex_ping_pong(word, Side::Responder, 0)
                }
            });
            let saved = crate::proc::cpu_mask();
            if let Some(cpu) = parent_cpu
                && !crate::proc::pin_to_cpu(cpu)
            {
                return Err(format!("cannot pin to CPU {cpu}"));
            }
            // Untimed: the first round waits for the child to run (see `WARM_ROUNDS`).
            if spin {
                spin_ping_pong(word, Side::Initiator, WARM_ROUNDS);
            } else {
                futex_ping_pong(word, Side::Initiator, WARM_ROUNDS);
            }
            let start = Instant::now();
            if spin {
                spin_ping_pong(word, Side::Initiator, iters);
            } else {
                futex_ping_pong(word, Side::Initiator, iters);
            }
            let t = start.elapsed();
            if parent_cpu.is_some()
                && let Some(mask) = &saved
            {
                crate::proc::set_cpu_mask(mask);
            }
            if spin {
                spin_ping_pong_stop(word);
            } else {
                futex_ping_pong_stop(word);
            }
            child.wait();
            Ok(t)
        }))
    })
}

/// A message of `size` bytes there and back between this process and a forked echo child.
/// `hot`: ours spins before sleeping (the default); otherwise it sleeps at once.
pub fn pipe_round_trip(p: &Params, hot: bool) -> Vec<Workload> {
    let family = if hot {
        "pipe_rtt_hot"
    } else {
        "pipe_rtt_asleep"
    };
    p.sizes
        .iter()
        .map(|&size| {
            let builder = if hot {
                PipeBuilder::new()
            } else {
                PipeBuilder::new().spin_limit(0)
            };
            let mut wl = Workload::new(
                format!("{family}/{}", size_label(size)),
                format!(
                    "pipe round trip, {} message, peers {}",
                    size_label(size),
                    if hot {
                        "hot (spin, then sleep)"
                    } else {
                        "asleep (no spinning)"
                    }
                ),
                Metric::Latency,
            )
            .with(ContenderSpec::new(
                if hot {
                    "ipc-pipe (default)"
                } else {
                    "ipc-pipe spin_limit(0)"
                },
                Kind::Ours,
                move || {
                    let builder = builder.max_message_size(size.max(64) * 2);
                    let builder = builder.capacity((size * 4).max(1 << 16));
                    let (a, child) = pipe_echo(builder)?;
                    let msg = vec![7u8; size];
                    let mut buf = vec![0u8; size.max(1)];
                    Ok(Runner::new(1, move |iters| {
                        let _keep = &child;
                        let start = Instant::now();
                        for _ in 0..iters {
                            a.send_bytes(&msg).map_err(|e| e.to_string())?;
                            a.recv_bytes_into(&mut buf).map_err(|e| e.to_string())?;
                        }
                        Ok(start.elapsed())
                    }))
                },
            ))
            .with(floor_ping_pong(hot, Placement::Scheduler));
            if hot {
                wl = wl.with(floor_spin_two_lines());
            }
            if !hot {
                wl = wl
                    .with(floor_ping_pong(false, Placement::SameCore))
                    .with(floor_ping_pong(false, Placement::CrossCore))
                    .with(super::iceoryx::ping_pong_notified(size));
            }
            if hot {
                wl = wl
                    .with(super::iceoryx::ping_pong(size))
                    .with(super::iceoryx::request_response(size));
                wl = wl.with(ContenderSpec::new(
                    "crossbeam ping-pong, threads",
                    Kind::Thread,
                    move || {
                        Ok(Runner::new(1, move |iters| {
                            let (tx1, rx1) = crossbeam_channel::bounded::<Vec<u8>>(1);
                            let (tx2, rx2) = crossbeam_channel::bounded::<Vec<u8>>(1);
                            let t = std::thread::spawn(move || {
                                while let Ok(m) = rx1.recv() {
                                    if tx2.send(m).is_err() {
                                        break;
                                    }
                                }
                            });
                            let mut msg = vec![7u8; size];
                            let round = |msg: Vec<u8>| -> Result<Vec<u8>, String> {
                                tx1.send(msg).map_err(|e| e.to_string())?;
                                rx2.recv().map_err(|e| e.to_string())
                            };
                            // Untimed: the first round waits for the thread to run.
                            for _ in 0..WARM_ROUNDS {
                                msg = round(msg)?;
                            }
                            let start = Instant::now();
                            for _ in 0..iters {
                                msg = round(msg)?;
                            }
                            let el = start.elapsed();
                            drop(tx1);
                            let _ = t.join();
                            Ok(el)
                        }))
                    },
                ));
            }
            wl = wl
                .with(ContenderSpec::new("socketpair", Kind::Process, move || {
                    let (mut a, mut b) = UnixStream::pair().map_err(|e| e.to_string())?;
                    let child = fork(move || {
                        let mut buf = vec![0u8; size];
                        while b.read_exact(&mut buf).is_ok() {
                            if b.write_all(&buf).is_err() {
                                break;
                            }
                        }
                    });
                    let msg = vec![7u8; size];
                    let mut buf = vec![0u8; size];
                    Ok(Runner::new(1, move |iters| {
                        let _keep = &child;
                        let start = Instant::now();
                        for _ in 0..iters {
                            a.write_all(&msg).map_err(|e| e.to_string())?;
                            a.read_exact(&mut buf).map_err(|e| e.to_string())?;
                        }
                        Ok(start.elapsed())
                    }))
                }))
                .with(ContenderSpec::new(
                    "ipc-channel (bytes)",
                    Kind::Process,
                    move || {
                        let (up_tx, up_rx) =
                            ipc_channel::ipc::bytes_channel().map_err(|e| e.to_string())?;
                        let (down_tx, down_rx) =
                            ipc_channel::ipc::bytes_channel().map_err(|e| e.to_string())?;
                        let child = fork(move || {
                            while let Ok(m) = up_rx.recv() {
                                if down_tx.send(&m).is_err() {
                                    break;
                                }
                            }
                        });
                        let msg = vec![7u8; size];
                        Ok(Runner::new(1, move |iters| {
                            let _keep = &child;
                            let start = Instant::now();
                            for _ in 0..iters {
                                up_tx.send(&msg).map_err(|e| e.to_string())?;
                                black_box(down_rx.recv().map_err(|e| e.to_string())?);
                            }
                            Ok(start.elapsed())
                        }))
                    },
                ));
            if p.python {
                wl = wl.with(python::contender(
                    "python mp.Pipe",
                    format!("pipe {size}"),
                    1,
                ));
            }
            wl.param = Some(("bytes", size as u64));
            wl.bytes_per_op = 2 * size as u64;
            wl
        })
        .collect()
}

/// Two parties take turns under one lock: a turn word says whose turn it is; each side locks,
/// checks the turn, passes it and unlocks, so every acquisition hands the lock over.
/// One operation is a full round (there and back).
pub fn lock_handoff(_p: &Params) -> Workload {
    Workload::new(
        "lock_handoff",
        "lock hand-off between two parties (one round = there and back)",
        Metric::Latency,
    )
    .with(ContenderSpec::new(
        "ipc-sync Lock, 2 processes",
        Kind::Ours,
        move || {
            let mut layout = Layout::new();
            let lock_off = layout.add::<Lock>().map_err(|e| e.to_string())?;
            let turn_off = layout.add::<AtomicU32>().map_err(|e| e.to_string())?;
            let seg = SegmentBuilder::new(layout.size())
                .create()
                .map_err(|e| e.to_string())?;
            Ok(Runner::new(1, move |iters| {
                let lock = seg.get(lock_off).map_err(|e| e.to_string())?;
                let turn = seg.get(turn_off).map_err(|e| e.to_string())?;
                turn.store(0, Ordering::Relaxed);
                let child = fork(|| turn_taker(|| lock.lock().ok(), turn));
                turn_giver(|| lock.lock().map_err(|e| e.to_string()), turn, WARM_ROUNDS)?;
                let start = Instant::now();
                turn_giver(|| lock.lock().map_err(|e| e.to_string()), turn, iters)?;
                let t = start.elapsed();
                turn_stop(|| lock.lock().map_err(|e| e.to_string()), turn)?;
                child.wait();
                Ok(t)
            }))
        },
    ))
    .with(ContenderSpec::new(
        "pthread mutex (process-shared), 2 processes",
        Kind::Process,
        move || {
            let shared = PthreadTurn::new();
            Ok(Runner::new(1, move |iters| {
                let m = shared.mutex();
                let turn_word = shared.turn();
                turn_word.store(0, Ordering::Relaxed);
                let lock = || -> Result<PthreadGuard<'_>, String> {
                    m.lock();
                    Ok(PthreadGuard(m))
                };
                let child = fork(|| turn_taker(|| lock().ok(), turn_word));
                turn_giver(lock, turn_word, WARM_ROUNDS)?;
                let start = Instant::now();
                turn_giver(lock, turn_word, iters)?;
                let t = start.elapsed();
                turn_stop(lock, turn_word)?;
                child.wait();
                Ok(t)
            }))
        },
    ))
    .with(ContenderSpec::new(
        "std::sync::Mutex, 2 threads",
        Kind::Thread,
        move || {
            Ok(Runner::new(1, move |iters| {
                let m = Arc::new(Mutex::new(()));
                let turn = Arc::new(AtomicU32::new(0));
                let (m2, t2) = (m.clone(), turn.clone());
                let th = std::thread::spawn(move || turn_taker(|| m2.lock().ok(), &t2));
                turn_giver(|| m.lock().map_err(|e| e.to_string()), &turn, WARM_ROUNDS)?;
                let start = Instant::now();
                turn_giver(|| m.lock().map_err(|e| e.to_string()), &turn, iters)?;
                let t = start.elapsed();
                turn_stop(|| m.lock().map_err(|e| e.to_string()), &turn)?;
                let _ = th.join();
                Ok(t)
            }))
        },
    ))
    .with(floor_ping_pong(false, Placement::Scheduler))
    .with(floor_ping_pong(false, Placement::SameCore))
    .with(floor_ping_pong(false, Placement::CrossCore))
    .note("the lock hand-off needs both parties awake; the futex floor is one sleeping round trip")
}

struct PthreadGuard<'a>(&'a PthreadMutex);

impl Drop for PthreadGuard<'_> {
    fn drop(&mut self) {
        self.0.unlock();
    }
}

const TURN_STOP: u32 = 2;

/// Rounds done before the clock starts, in each sample of a contender that starts its other
/// party (a forked child, a thread) in the sample: timing starts once that party runs (in the
/// lock hand-off, the second hand-off waits for the other party's first). Started inside the
/// timed region, a child forked from the runner's large process (its page faults,
/// copy-on-write faults and first scheduling: milliseconds once earlier workloads had grown
/// the runner) was charged to the first rounds; with the few iterations per sample that such
/// a slow start made the calibration choose, it dominated the figure (ours 35-51 us a round
/// after the `cpu` or `crash_recovery` workloads, 0.7-0.9 us alone).
const WARM_ROUNDS: u64 = 2;

fn turn_taker<G>(mut lock: impl FnMut() -> Option<G>, turn: &AtomicU32) {
    loop {
        let Some(g) = lock() else { return };
        match turn.load(Ordering::Relaxed) {
            1 => turn.store(0, Ordering::Relaxed),
            TURN_STOP => return,
            _ => {}
        }
        drop(g);
    }
}

fn turn_giver<G>(
    mut lock: impl FnMut() -> Result<G, String>,
    turn: &AtomicU32,
    iters: u64,
) -> Result<(), String> {
    let mut done = 0;
    while done < iters {
        let g = lock()?;
        if turn.load(Ordering::Relaxed) == 0 {
            turn.store(1, Ordering::Relaxed);
            done += 1;
        }
        drop(g);
    }
    Ok(())
}

fn turn_stop<G>(
    mut lock: impl FnMut() -> Result<G, String>,
    turn: &AtomicU32,
) -> Result<(), String> {
    let g = lock()?;
    turn.store(TURN_STOP, Ordering::Relaxed);
    drop(g);
    Ok(())
}

/// A forked server answering `noop(x)` requests over a socketpair with bincode frames.
pub(crate) fn rpc_socketpair() -> ContenderSpec {
    ContenderSpec::new("socketpair + bincode server", Kind::Process, || {
        let (a, b) = UnixStream::pair().map_err(|e| e.to_string())?;
        let child = fork(move || {
            let mut r = BufReader::new(&b);
            let mut w = &b;
            let mut buf = Vec::new();
            while let Ok(x) = read_frame::<_, u64>(&mut r, &mut buf) {
                if write_frame(&mut w, &noop(x)).is_err() {
                    break;
                }
            }
        });
        let mut buf = Vec::new();
        Ok(Runner::new(1, move |iters| {
            let _keep = &child;
            let mut w = &a;
            let mut r = &a;
            let start = Instant::now();
            for i in 0..iters {
                write_frame(&mut w, &i).map_err(|e| e.to_string())?;
                black_box(read_frame::<_, u64>(&mut r, &mut buf)?);
            }
            Ok(start.elapsed())
        }))
    })
}

/// A forked server answering `noop(x)` requests over typed ipc-channels.
pub(crate) fn rpc_ipc_channel() -> ContenderSpec {
    ContenderSpec::new("ipc-channel server", Kind::Process, || {
        let (up_tx, up_rx) = ipc_channel::ipc::channel::<u64>().map_err(|e| e.to_string())?;
        let (down_tx, down_rx) = ipc_channel::ipc::channel::<u64>().map_err(|e| e.to_string())?;
        let child = fork(move || {
            while let Ok(x) = up_rx.recv() {
                if down_tx.send(noop(x)).is_err() {
                    break;
                }
            }
        });
        Ok(Runner::new(1, move |iters| {
            let _keep = &child;
            let start = Instant::now();
            for i in 0..iters {
                up_tx.send(i).map_err(|e| e.to_string())?;
                black_box(down_rx.recv().map_err(|e| e.to_string())?);
            }
            Ok(start.elapsed())
        }))
    })
}
