//! The crash demonstration: 20 tasks, one of which aborts its process (or panics). What
//! happens to the other 19 and to the pool, for our pool, rayon (in a forked child, since an
//! abort takes the whole process with it) and Python's `Pool` and `ProcessPoolExecutor`.

use std::time::{Duration, Instant};

use pool::{StartMethod, TaskError};
use rayon::prelude::*;

use super::peers::rayon_pool;
use super::pooled::our_pool;
use super::tasks::{crash, panics, square};
use super::{Kind, python};
use crate::proc::{Status, fork};

/// What happened to one contender.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CrashReport {
    /// Who.
    pub contender: String,
    /// Ours, thread, python.
    pub kind: Kind,
    /// What the faulty task did.
    pub fault: String,
    /// What the caller saw.
    pub outcome: String,
    /// What became of the pool (or the process).
    pub afterwards: String,
    /// How long until the caller had its answer, when it has one.
    pub seconds: Option<f64>,
}

const TASKS: u64 = 20;
const BAD: u64 = 5;

/// Runs every demonstration (Python only when `python`).
pub fn containment(python: bool) -> Vec<CrashReport> {
    let mut out = vec![ours_abort(StartMethod::ForkServer), ours_panic()];
    out.push(rayon_abort());
    out.push(rayon_panic());
    if python {
        out.extend(python_crash());
    }
    out
}

fn report(
    contender: &str,
    kind: Kind,
    fault: &str,
    outcome: String,
    afterwards: String,
    t: Option<Duration>,
) -> CrashReport {
    CrashReport {
        contender: contender.into(),
        kind,
        fault: fault.into(),
        outcome,
        afterwards,
        seconds: t.map(|t| t.as_secs_f64()),
    }
}

fn ours_abort(method: StartMethod) -> CrashReport {
    let name = "pool (forkserver), 2 workers";
    let fault = "task 5 of 20 calls abort()";
    let pool = match our_pool(2, method) {
        Ok(p) => p,
        Err(e) => return report(name, Kind::Ours, fault, e, String::new(), None),
    };
    let start = Instant::now();
    let pending: Vec<_> = (0..TASKS)
        .map(|i| {
            if i == BAD {
                pool.apply_async(crash, i)
            } else {
                pool.apply_async(square, i)
            }
        })
        .collect();
    let (mut ok, mut lost, mut other) = (0, Vec::new(), 0);
    for r in pending {
        match r.get() {
            Ok(_) => ok += 1,
            Err(TaskError::WorkerLost { pid, exit }) => lost.push(format!("pid {pid}, {exit}")),
            Err(_) => other += 1,
        }
    }
    let t = start.elapsed();
    let after = pool.apply(square, 3);
    let workers = pool.workers();
    report(
        name,
        Kind::Ours,
        fault,
        format!(
            "{ok} of {} other results; the bad task failed alone with WorkerLost ({}){}",
            TASKS - 1,
            lost.join("; "),
            if other > 0 {
                format!("; {other} other errors")
            } else {
                String::new()
            }
        ),
        format!(
            "worker replaced, {workers} workers alive, next apply {}",
            if after == Ok(9) { "ok" } else { "FAILED" }
        ),
        Some(t),
    )
}

fn ours_panic() -> CrashReport {
    let name = "pool (forkserver), 2 workers";
    let fault = "task 5 of 20 panics";
    let pool = match our_pool(2, StartMethod::ForkServer) {
        Ok(p) => p,
        Err(e) => return report(name, Kind::Ours, fault, e, String::new(), None),
    };
    let before: Vec<u32> = pool.stats().workers.iter().map(|w| w.pid).collect();
    let start = Instant::now();
    let pending: Vec<_> = (0..TASKS)
        .map(|i| {
            if i == BAD {
                pool.apply_async(panics, i)
            } else {
                pool.apply_async(square, i)
            }
        })
        .collect();
    let (mut ok, mut panicked, mut traced) = (0, 0, 0);
    for r in pending {
        match r.get() {
            Ok(_) => ok += 1,
            Err(e @ TaskError::Panicked { .. }) => {
                panicked += 1;
                traced += usize::from(e.backtrace().is_some());
            }
            Err(_) => {}
        }
    }
    let t = start.elapsed();
    // With `RUST_BACKTRACE` set, the worker takes the panic's backtrace and symbolises it: most
    // of this row's time then (12.6-13.0 ms with it, 1.27 ms without, same build; the fork
    // server has already loaded the debug info that symbolising needs, and its workers inherit
    // it).
    let traced = if traced > 0 {
        " (with the worker's backtrace, taken and symbolised because RUST_BACKTRACE is set: most of the time shown)"
    } else {
        ""
    };
    let after: Vec<u32> = pool.stats().workers.iter().map(|w| w.pid).collect();
    let same = before.iter().all(|p| after.contains(p));
    report(
        name,
        Kind::Ours,
        fault,
        format!(
            "{ok} of {} other results; {panicked} task failed with Panicked{traced}",
            TASKS - 1
        ),
        if same {
            "the same workers live on (no restart)".into()
        } else {
            "a worker was restarted".into()
        },
        Some(t),
    )
}

fn rayon_abort() -> CrashReport {
    let name = "rayon, 2 threads (in a forked child)";
    let fault = "task 5 of 20 calls abort()";
    let (mut r, w) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => {
            return report(
                name,
                Kind::Thread,
                fault,
                e.to_string(),
                String::new(),
                None,
            );
        }
    };
    let start = Instant::now();
    let mut w = Some(w);
    let child = fork(|| {
        let mut w = w.take();
        let Ok(pool) = rayon_pool(2) else { return };
        let v: Vec<u64> = pool.install(|| {
            (0..TASKS)
                .into_par_iter()
                .map(|i| if i == BAD { crash(i) } else { square(i) })
                .collect()
        });
        if let Some(w) = w.as_mut() {
            use std::io::Write;
            let _ = writeln!(w, "{}", v.len());
        }
    });
    drop(w);
    let mut got = String::new();
    use std::io::Read;
    let _ = r.read_to_string(&mut got);
    let status = child.wait();
    let t = start.elapsed();
    let outcome = match status {
        Status::Signal(s) => format!(
            "the whole process died (signal {s}{}): 0 of {} other results reached the caller",
            if s == ipc_shm::os::Signal::SIGABRT as i32 {
                ", SIGABRT"
            } else {
                ""
            },
            TASKS - 1
        ),
        Status::Code(c) => format!("exit code {c}, results line: {:?}", got.trim()),
    };
    report(
        name,
        Kind::Thread,
        fault,
        outcome,
        "the pool, its threads and every other thread of the program are gone; recovery = restart the program".into(),
        Some(t),
    )
}

fn rayon_panic() -> CrashReport {
    let name = "rayon, 2 threads";
    let fault = "task 5 of 20 panics";
    let pool = match rayon_pool(2) {
        Ok(p) => p,
        Err(e) => return report(name, Kind::Thread, fault, e, String::new(), None),
    };
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let start = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.install(|| {
            (0..TASKS)
                .into_par_iter()
                .map(|i| if i == BAD { panics(i) } else { square(i) })
                .collect::<Vec<u64>>()
        })
    }));
    let t = start.elapsed();
    std::panic::set_hook(hook);
    let after = pool.install(|| square(3));
    report(
        name,
        Kind::Thread,
        fault,
        match r {
            Ok(v) => format!("{} results", v.len()),
            Err(_) => format!(
                "the panic is re-raised in the caller: the whole map fails, 0 of {} other results returned",
                TASKS - 1
            ),
        },
        format!(
            "the pool survives (next task {})",
            if after == 9 { "ok" } else { "wrong" }
        ),
        Some(t),
    )
}

fn python_crash() -> Vec<CrashReport> {
    let fault = "a task calls os.abort()";
    match python::command("crash 2") {
        Ok(json) => {
            let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            let s = |k: &str| v[k].as_str().unwrap_or("?").to_string();
            vec![
                report(
                    "python mp.Pool(2)",
                    Kind::Python,
                    fault,
                    s("pool"),
                    s("pool_after"),
                    v["pool_s"].as_f64().map(Duration::from_secs_f64),
                ),
                report(
                    "python ProcessPoolExecutor(2)",
                    Kind::Python,
                    fault,
                    s("executor"),
                    s("executor_after"),
                    v["executor_s"].as_f64().map(Duration::from_secs_f64),
                ),
            ]
        }
        Err(e) => vec![report(
            "python",
            Kind::Python,
            fault,
            format!("not measured: {e}"),
            String::new(),
            None,
        )],
    }
}
