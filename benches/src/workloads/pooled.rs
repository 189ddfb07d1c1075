//! The pool families: `apply` round trip, `map` of trivial tasks, CPU-bound tasks at 1..N
//! workers, 1 MiB argument tasks, and worker replacement after a crash.

use std::time::{Duration, Instant};

use pool::{Pool, PoolBuilder, StartMethod, TaskError};
use serde_bytes::ByteBuf;

use super::peers::{
    CrossbeamPool, map_crossbeam, map_procspawn, map_rayon, map_threadpool, procspawn_pool,
    rayon_pool,
};
use super::python;
use super::tasks::{crash, keep_arena, noop, spin, spin_rounds_for, square, touch, touch_shm};
use super::{ContenderSpec, Kind, Metric, Params, Runner, Workload, timed_loop};
use crate::floor::memcpy_once;

pub(crate) fn our_pool(workers: usize, method: StartMethod) -> Result<Pool, String> {
    PoolBuilder::new()
        .processes(workers)
        .start_method(method)
        .build()
        .map_err(|e| format!("pool: {e}"))
}

fn check_len<R>(v: &[R], n: usize) -> Result<(), String> {
    if v.len() == n {
        Ok(())
    } else {
        Err(format!("{} results for {n} tasks", v.len()))
    }
}

/// Our pool's `map` of `f` over `make()` (`n` tasks per iteration) on `w` fork-server workers,
/// in chunks of `chunk` (`None`: the pool's own chunks).
fn ours_map<A, R>(
    label: &str,
    w: usize,
    f: fn(A) -> R,
    make: impl Fn() -> Vec<A> + Copy + 'static,
    n: u64,
    chunk: Option<usize>,
) -> ContenderSpec
where
    A: serde::Serialize + serde::de::DeserializeOwned + 'static,
    R: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    ContenderSpec::new(label, Kind::Ours, move || {
        let pool = our_pool(w, StartMethod::ForkServer)?;
        Ok(Runner::new(n, move |iters| {
            timed_loop(iters, make, |args| {
                let v = match chunk {
                    Some(size) => pool.map_chunked(f, args, size),
                    None => pool.map(f, args),
                };
                check_len(&v.map_err(|e| e.to_string())?, n as usize)
            })
        }))
    })
}

/// `apply(noop, x)` round trip on a hot pool, against the same round trip on the peers.
pub fn pool_apply(p: &Params) -> Workload {
    let w = p.pool_workers;
    let mut wl = Workload::new(
        "apply",
        "apply round trip, one trivial task",
        Metric::Latency,
    )
    .with(ContenderSpec::new(
        "pool apply (forkserver)",
        Kind::Ours,
        move || {
            let pool = our_pool(w, StartMethod::ForkServer)?;
            Ok(Runner::new(1, move |iters| {
                let start = Instant::now();
                for i in 0..iters {
                    pool.apply(noop, i).map_err(|e| e.to_string())?;
                }
                Ok(start.elapsed())
            }))
        },
    ))
    .with(ContenderSpec::new(
        "rayon install",
        Kind::Thread,
        move || {
            let pool = rayon_pool(w)?;
            Ok(Runner::new(1, move |iters| {
                let start = Instant::now();
                for i in 0..iters {
                    std::hint::black_box(pool.install(|| noop(i)));
                }
                Ok(start.elapsed())
            }))
        },
    ))
    .with(ContenderSpec::new(
        "std::thread+crossbeam",
        Kind::Thread,
        move || {
            let pool = CrossbeamPool::new(w);
            let (tx, rx) = crossbeam_channel::bounded(1);
            Ok(Runner::new(1, move |iters| {
                let start = Instant::now();
                for i in 0..iters {
                    let tx = tx.clone();
                    pool.execute(move || {
                        let _ = tx.send(noop(i));
                    });
                    rx.recv().map_err(|e| e.to_string())?;
                }
                Ok(start.elapsed())
            }))
        },
    ))
    .with(ContenderSpec::new("threadpool", Kind::Thread, move || {
        let pool = threadpool::ThreadPool::new(w);
        let (tx, rx) = crossbeam_channel::bounded(1);
        Ok(Runner::new(1, move |iters| {
            let start = Instant::now();
            for i in 0..iters {
                let tx = tx.clone();
                pool.execute(move || {
                    let _ = tx.send(noop(i));
                });
                rx.recv().map_err(|e| e.to_string())?;
            }
            Ok(start.elapsed())
        }))
    }))
    .with(ContenderSpec::new(
        "procspawn pool",
        Kind::Process,
        move || {
            let pool = procspawn_pool(w)?;
            Ok(Runner::new(1, move |iters| {
                let start = Instant::now();
                for i in 0..iters {
                    pool.spawn(i, noop)
                        .join()
                        .map_err(|e| format!("procspawn: {e}"))?;
                }
                Ok(start.elapsed())
            }))
        },
    ))
    .with(super::ipc::rpc_socketpair())
    .with(super::ipc::rpc_ipc_channel());
    if p.python {
        wl = wl.with(python::contender(
            "python Pool.apply_async",
            format!("apply {w}"),
            1,
        ));
    }
    wl.note("ours: a 2-worker pool with the default (forkserver) start method; the calling thread runs the task on an idle worker; socketpair and ipc-channel: a forked server that runs the task, request/response frames")
}

/// `map(square, 0..n)` with automatic chunks.
pub fn map_trivial(p: &Params) -> Workload {
    let w = p.pool_workers;
    let n = p.map_tasks;
    let slow = p.slow_peer_tasks.min(n);
    let mut wl = Workload::new(
        "map_trivial",
        format!("map of {} trivial tasks (x*x), results in order", human(n)),
        Metric::Throughput,
    )
    .with(ContenderSpec::new(
        "pool map (auto chunks)",
        Kind::Ours,
        move || {
            let pool = our_pool(w, StartMethod::ForkServer)?;
            Ok(Runner::new(n, move |iters| {
                timed_loop(
                    iters,
                    || (),
                    |()| {
                        let v = pool.map(square, 0..n).map_err(|e| e.to_string())?;
                        check_len(&v, n as usize)
                    },
                )
            }))
        },
    ))
    .with(ContenderSpec::new(
        "rayon par_iter",
        Kind::Thread,
        move || {
            let pool = rayon_pool(w)?;
            Ok(Runner::new(n, move |iters| {
                timed_loop(
                    iters,
                    || (0..n).collect::<Vec<u64>>(),
                    |args| Ok(map_rayon(&pool, square, args)),
                )
            }))
        },
    ))
    .with(ContenderSpec::new(
        "std::thread+crossbeam (job per task)",
        Kind::Thread,
        move || {
            let pool = CrossbeamPool::new(w);
            Ok(Runner::new(n, move |iters| {
                timed_loop(
                    iters,
                    || (0..n).collect::<Vec<u64>>(),
                    |args| map_crossbeam(&pool, square, args),
                )
            }))
        },
    ))
    .with(ContenderSpec::new(
        "threadpool (job per task)",
        Kind::Thread,
        move || {
            let pool = threadpool::ThreadPool::new(w);
            Ok(Runner::new(n, move |iters| {
                timed_loop(
                    iters,
                    || (0..n).collect::<Vec<u64>>(),
                    |args| map_threadpool(&pool, square, args),
                )
            }))
        },
    ))
    .with(ContenderSpec::new(
        "procspawn pool (spawn per task)",
        Kind::Process,
        move || {
            let pool = procspawn_pool(w)?;
            Ok(Runner::new(slow, move |iters| {
                timed_loop(
                    iters,
                    || (0..slow).collect::<Vec<u64>>(),
                    |args| map_procspawn(&pool, square, args, usize::MAX),
                )
            }))
        },
    ));
    if p.python {
        wl = wl.with(python::contender(
            "python Pool.map",
            format!("map {w} {n}"),
            n,
        ));
    }
    wl.note(format!(
        "procspawn has no map: it gets {slow} tasks per iteration (one spawn each)"
    ))
}

/// CPU-bound tasks of `us` microseconds (a calibrated arithmetic spin) at each worker count.
pub fn cpu_tasks(p: &Params, us: u64) -> Vec<Workload> {
    let rounds = spin_rounds_for(us);
    let budget_us = p.cpu_budget.as_micros() as u64;
    p.workers
        .iter()
        .map(|&w| {
            // About `cpu_budget` of CPU time per iteration, spread over the workers.
            let n = (budget_us / us).max(w as u64 * 4);
            let slow = n.min(p.slow_peer_tasks);
            let mut wl = Workload::new(
                format!("cpu_{us}us/w{w}"),
                format!("{us} us CPU-bound tasks, {w} worker(s), {n} per map"),
                Metric::Throughput,
            )
            .with(ours_map(
                "pool map",
                w,
                spin,
                move || vec![rounds; n as usize],
                n,
                None,
            ))
            .with(ContenderSpec::new("rayon par_iter", Kind::Thread, move || {
                let pool = rayon_pool(w)?;
                Ok(Runner::new(n, move |iters| {
                    timed_loop(
                        iters,
                        || vec![rounds; n as usize],
                        |args| Ok(map_rayon(&pool, spin, args)),
                    )
                }))
            }))
            .with(ContenderSpec::new("std::thread+crossbeam", Kind::Thread, move || {
                let pool = CrossbeamPool::new(w);
                Ok(Runner::new(n, move |iters| {
                    timed_loop(
                        iters,
                        || vec![rounds; n as usize],
                        |args| map_crossbeam(&pool, spin, args),
                    )
                }))
            }))
            .with(ContenderSpec::new("threadpool", Kind::Thread, move || {
                let pool = threadpool::ThreadPool::new(w);
                Ok(Runner::new(n, move |iters| {
                    timed_loop(
                        iters,
                        || vec![rounds; n as usize],
                        |args| map_threadpool(&pool, spin, args),
                    )
                }))
            }))
            .with(ContenderSpec::new("procspawn pool", Kind::Process, move || {
                let pool = procspawn_pool(w)?;
                Ok(Runner::new(slow, move |iters| {
                    timed_loop(
                        iters,
                        || vec![rounds; slow as usize],
                        |args| map_procspawn(&pool, spin, args, usize::MAX),
                    )
                }))
            }))
            .with(ContenderSpec::new(
                format!("ideal: {w} x one thread, no pool"),
                Kind::Floor,
                move || {
                    Ok(Runner::new(n * w as u64, move |iters| {
                        let start = Instant::now();
                        for _ in 0..iters * n {
                            std::hint::black_box(spin(rounds));
                        }
                        Ok(start.elapsed())
                    }))
                },
            ));
            wl.param = Some(("workers", w as u64));
            wl.notes.push(format!(
                "spin calibrated here: {rounds} rounds = {us} us; 'ideal' is one thread's rate times {w} (no pool, no contention)"
            ));
            wl
        })
        .collect()
}

/// CPU-bound tasks that grow along the map, from `from_us` to `to_us` (sorted inputs, growing
/// problem sizes), on the pools' worker count: how well the work is spread to the end, where
/// the last chunk of a map of equal chunks runs alone.
pub fn cpu_growing(p: &Params, from_us: u64, to_us: u64) -> Workload {
    let w = p.pool_workers;
    let (first, last) = (spin_rounds_for(from_us), spin_rounds_for(to_us));
    // About `cpu_budget` per worker per iteration, at least 16 tasks per worker.
    let n = (p.cpu_budget.as_micros() as u64 * w as u64 * 2 / (from_us + to_us)).max(w as u64 * 16);
    let args = move || -> Vec<u64> {
        (0..n)
            .map(|i| first + (last - first) * i / (n - 1))
            .collect()
    };
    let total: u64 = args().iter().sum();
    Workload::new(
        format!("cpu_growing/w{w}"),
        format!("CPU-bound tasks growing from {from_us} us to {to_us} us along the map, {w} workers, {n} per map"),
        Metric::Throughput,
    )
    .with(ours_map("pool map", w, spin, args, n, None))
    .with(ours_map(
        "pool map, Python's equal chunks",
        w,
        spin,
        args,
        n,
        Some((n as usize).div_ceil(w * 4)),
    ))
    .with(ContenderSpec::new("rayon par_iter", Kind::Thread, move || {
        let pool = rayon_pool(w)?;
        Ok(Runner::new(n, move |iters| {
            timed_loop(iters, args, |args| Ok(map_rayon(&pool, spin, args)))
        }))
    }))
    .with(ContenderSpec::new("std::thread+crossbeam", Kind::Thread, move || {
        let pool = CrossbeamPool::new(w);
        Ok(Runner::new(n, move |iters| {
            timed_loop(iters, args, |args| map_crossbeam(&pool, spin, args))
        }))
    }))
    .with(ContenderSpec::new(
        format!("ideal: the same work / {w}, one thread, no pool"),
        Kind::Floor,
        move || {
            Ok(Runner::new(n, move |iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    std::hint::black_box(spin(total));
                }
                Ok(start.elapsed() / w as u32)
            }))
        },
    ))
    .note(format!(
        "spin calibrated here: {first} rounds = {from_us} us, {last} = {to_us} us; our pool's default chunks shrink toward the end of the map, the second row cuts Python's four equal chunks per worker; 'ideal' runs all the tasks' rounds in one thread and divides the time by {w}"
    ))
}

const MIB: usize = 1 << 20;

/// Tasks with a 1 MiB argument (`serde_bytes`), each reading it and returning a checksum.
pub fn payload_tasks(p: &Params) -> Workload {
    let w = p.pool_workers;
    let n = p.payload_tasks;
    let make = move || -> Vec<ByteBuf> { (0..n).map(|_| ByteBuf::from(vec![7u8; MIB])).collect() };
    let mut wl = Workload::new(
        "payload_1MiB",
        format!("tasks with a 1 MiB argument, {n} per map"),
        Metric::Throughput,
    )
    .with(ours_map("pool map", w, touch, make, n, None))
    .with(ContenderSpec::new(
        "pool map of ShmVec tokens (bytes written once, read in place)",
        Kind::Ours,
        move || {
            let arena = ipc_sync::ShmArena::builder()
                .block_size(MIB)
                .blocks(n as usize)
                .create()
                .map_err(|e| e.to_string())?;
            let pool = PoolBuilder::new()
                .processes(w)
                .start_method(StartMethod::ForkServer)
                .initializer(keep_arena, arena.clone())
                .build()
                .map_err(|e| format!("pool: {e}"))?;
            // The arguments are made untimed, as the other contenders' are: a block each, filled
            // as `make` fills a fresh buffer.
            let make_blocks = move || -> Result<Vec<ipc_sync::ShmToken<u8>>, String> {
                (0..n)
                    .map(|_| {
                        let mut v = arena.alloc::<u8>(MIB).map_err(|e| e.to_string())?;
                        v.fill(7);
                        v.into_token().map_err(|e| e.to_string())
                    })
                    .collect()
            };
            let expected = (MIB / 4096 * 7 + MIB) as u64;
            Ok(Runner::new(n, move |iters| {
                timed_loop(iters, &make_blocks, |args| {
                    let sums = pool.map(touch_shm, args?).map_err(|e| e.to_string())?;
                    check_len(&sums, n as usize)?;
                    match sums.iter().all(|&s| s == expected) {
                        true => Ok(()),
                        false => Err("a worker could not adopt its block".to_string()),
                    }
                })
            }))
        },
    ))
    .with(ContenderSpec::new(
        "rayon (moves a pointer)",
        Kind::Thread,
        move || {
            let pool = rayon_pool(w)?;
            Ok(Runner::new(n, move |iters| {
                timed_loop(iters, make, |args| Ok(map_rayon(&pool, touch, args)))
            }))
        },
    ))
    .with(ContenderSpec::new(
        "std::thread+crossbeam",
        Kind::Thread,
        move || {
            let pool = CrossbeamPool::new(w);
            Ok(Runner::new(n, move |iters| {
                timed_loop(iters, make, |args| map_crossbeam(&pool, touch, args))
            }))
        },
    ))
    .with(ContenderSpec::new(
        "procspawn pool",
        Kind::Process,
        move || {
            let pool = procspawn_pool(w)?;
            Ok(Runner::new(n, move |iters| {
                timed_loop(iters, make, |args| map_procspawn(&pool, touch, args, w))
            }))
        },
    ))
    .with(ContenderSpec::new(
        "memcpy 1 MiB (one copy)",
        Kind::Floor,
        move || {
            let src = vec![7u8; MIB];
            let mut dst = vec![0u8; MIB];
            Ok(Runner::new(1, move |iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    memcpy_once(&mut dst, &src);
                }
                Ok(start.elapsed())
            }))
        },
    ));
    if p.python {
        wl = wl.with(python::contender(
            "python Pool.map (bytes)",
            format!("payload {w} {n}"),
            n,
        ));
    }
    wl.bytes_per_op = MIB as u64;
    wl.note("a process pool copies each argument at least twice (encode into the pipe, decode out); threads pass a pointer")
        .note("procspawn gets at most one outstanding task per worker here: with more, its spawn() deadlocks on arguments larger than a socket buffer")
}

/// A task that aborts its worker, then a trivial task, on a one-worker pool, so the second
/// result can only come from the replacement worker. Two contenders per start method: the
/// time until the crashing task fails with `WorkerLost` (death detection), and the time from
/// there until the next task's result (replacement plus one round trip). One `apply` round trip
/// on the same kind of pool is the baseline to subtract.
pub fn crash_recovery(_p: &Params) -> Workload {
    let mut wl = Workload::new(
        "crash_recovery",
        "a task aborts its worker: time to WorkerLost, then to the replacement's first result (1-worker pool)",
        Metric::Latency,
    );
    for (name, method, spare) in [
        ("pool fork", StartMethod::Fork, false),
        ("pool forkserver", StartMethod::ForkServer, false),
        ("pool spawn", StartMethod::Spawn, false),
        ("pool fork + warm spare", StartMethod::Fork, true),
        (
            "pool forkserver + warm spare",
            StartMethod::ForkServer,
            true,
        ),
        ("pool spawn + warm spare", StartMethod::Spawn, true),
    ] {
        // A spare does not change how a death is detected: its rows are the replacement's.
        let rows: &[Row] = if spare {
            &[Row::Next, Row::Replaced]
        } else {
            &[Row::Lost, Row::Next, Row::Replaced]
        };
        for &row in rows {
            let label = match row {
                Row::Lost => format!("{name}: crash -> WorkerLost"),
                Row::Next => format!("{name}: WorkerLost -> next result"),
                Row::Replaced => format!("{name}: death seen -> replacement ready"),
            };
            wl = wl.with(ContenderSpec::new(label, Kind::Ours, move || {
                let pool = PoolBuilder::new()
                    .processes(1)
                    .start_method(method)
                    .warm_spare(spare)
                    .build()
                    .map_err(|e| format!("pool: {e}"))?;
                Ok(Runner::new(1, move |iters| {
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        // Crashes apart (untimed), as crashes are exceptions in real use: what
                        // the last one used up is made again in the background (the spare, the
                        // fork server's blank, the spawn standby: one start each, a few ms,
                        // more on a busy machine).
                        std::thread::sleep(CRASH_PAUSE);
                        let c = crash_once(&pool, i)?;
                        total += match row {
                            Row::Lost => c.to_lost,
                            Row::Next => c.to_next,
                            Row::Replaced => c.replaced_in,
                        };
                    }
                    Ok(total)
                }))
            }));
        }
    }
    wl = wl.with(ContenderSpec::new(
        "baseline: one apply round trip, no crash",
        Kind::Floor,
        move || {
            let pool = our_pool(1, StartMethod::ForkServer)?;
            Ok(Runner::new(1, move |iters| {
                let start = Instant::now();
                for i in 0..iters {
                    pool.apply(noop, i).map_err(|e| e.to_string())?;
                }
                Ok(start.elapsed())
            }))
        },
    ));
    wl = wl.with(ContenderSpec::new(FORK_FLOOR, Kind::Floor, || {
        Ok(Runner::new(1, |iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += fork_and_hear_back()?;
            }
            Ok(total)
        }))
    }));
    wl.note("'death seen -> replacement ready' is measured inside the pool (PoolStats' `replaced_in`: from the driver seeing the death to the new worker's handshake); a thread pool cannot survive an abort at all (see the crash table)")
        .note("crashes are 50 ms apart (untimed), so each finds what the pool keeps ready: the fork server's blank child, the spawn standby (a program executed ahead, see pool's `StartMethod::Spawn`), the warm spare; back to back, a crash can find them still being made")
        .note("'+ warm spare': `PoolBuilder::warm_spare(true)` keeps one more worker started and greeted, which takes a dead worker's seat at once (the next spare starts in the background, 5 ms later: crashes closer together than one start wait for the spare being started, up to 100 ms, before starting their own)")
}

/// The floor of a `Fork` replacement: what a bare `fork()` of this very process costs until
/// the child runs (its first byte back), measured in the same run. A fork copies the page tables
/// of its parent, so the figure grows with the parent's resident memory: late in a full run the
/// runner holds the peers' leftovers, and a user's large process pays the same.
pub(crate) const FORK_FLOOR: &str = "floor: fork() of this process until the child's first byte";

/// One fork of this process whose child writes one byte and leaves: the time from the call to
/// the byte (the reap is not timed).
fn fork_and_hear_back() -> Result<Duration, String> {
    use std::io::{Read, Write};
    let (mut ours, mut theirs) =
        std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let start = Instant::now();
    let child = crate::proc::fork(move || {
        let _ = theirs.write_all(&[1]);
    });
    let mut byte = [0u8];
    let heard = ours.read_exact(&mut byte);
    let took = start.elapsed();
    heard.map_err(|e| format!("the forked child sent nothing: {e}"))?;
    match child.wait() {
        crate::proc::Status::Code(0) => Ok(took),
        other => Err(format!("the forked child ended with {other:?}")),
    }
}

/// The untimed pause between two crashes of one pool.
const CRASH_PAUSE: Duration = Duration::from_millis(50);

/// Which figure of a crash a `crash_recovery` row reports.
#[derive(Debug, Clone, Copy)]
enum Row {
    Lost,
    Next,
    Replaced,
}

/// The figures of one crash and recovery.
#[derive(Debug)]
pub(crate) struct Crash {
    /// From the call to its `WorkerLost`.
    pub(crate) to_lost: Duration,
    /// From the `WorkerLost` to the next task's result.
    pub(crate) to_next: Duration,
    /// From the pool seeing the death to the replacement being ready (the pool's own figure).
    pub(crate) replaced_in: Duration,
}

/// One crash and recovery: `crash` must fail with `WorkerLost`, the next task must succeed.
pub(crate) fn crash_once(pool: &Pool, i: u64) -> Result<Crash, String> {
    let start = Instant::now();
    match pool.apply(crash, i) {
        Err(TaskError::WorkerLost { .. }) => {}
        other => return Err(format!("the crashing task returned {other:?}")),
    }
    let to_lost = start.elapsed();
    pool.apply(noop, i)
        .map_err(|e| format!("after a crash: {e}"))?;
    let to_next = start.elapsed() - to_lost;
    // The next result came from the replacement, so it is ready and has its figure.
    let replaced_in = pool
        .stats()
        .workers
        .iter()
        .find_map(|w| w.replaced_in)
        .ok_or("the replacement reported no replacement time")?;
    Ok(Crash {
        to_lost,
        to_next,
        replaced_in,
    })
}

fn human(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}
