//! The peers' pools, each driven the way its users drive it: rayon's parallel iterators, a
//! std::thread + crossbeam-channel pool and the threadpool crate with one job per task,
//! procspawn's pool with one `spawn` per task.

use std::thread::JoinHandle;

use crossbeam_channel::{Sender, unbounded};
use rayon::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed pool of std threads fed through one crossbeam channel: the pool people write by
/// hand.
pub(crate) struct CrossbeamPool {
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl CrossbeamPool {
    pub(crate) fn new(n: usize) -> CrossbeamPool {
        let (tx, rx) = unbounded::<Job>();
        let threads = (0..n)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })
            })
            .collect();
        CrossbeamPool {
            tx: Some(tx),
            threads,
        }
    }

    pub(crate) fn execute(&self, job: impl FnOnce() + Send + 'static) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Box::new(job));
        }
    }
}

impl Drop for CrossbeamPool {
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Runs `f` over `args` on a rayon pool, results in order.
pub(crate) fn map_rayon<A: Send, R: Send>(
    pool: &rayon::ThreadPool,
    f: fn(A) -> R,
    args: Vec<A>,
) -> Vec<R> {
    pool.install(|| args.into_par_iter().map(f).collect())
}

/// One job per task on a std::thread + crossbeam-channel pool; results put back in order.
pub(crate) fn map_crossbeam<A: Send + 'static, R: Send + 'static>(
    pool: &CrossbeamPool,
    f: fn(A) -> R,
    args: Vec<A>,
) -> Result<Vec<R>, String> {
    map_job_per_task(|job| pool.execute(job), f, args)
}

/// One job per task on a `threadpool::ThreadPool`; results put back in order.
pub(crate) fn map_threadpool<A: Send + 'static, R: Send + 'static>(
    pool: &threadpool::ThreadPool,
    f: fn(A) -> R,
    args: Vec<A>,
) -> Result<Vec<R>, String> {
    map_job_per_task(|job| pool.execute(job), f, args)
}

/// Submits one job per task through `execute` and puts the results back in order.
fn map_job_per_task<A: Send + 'static, R: Send + 'static>(
    execute: impl Fn(Box<dyn FnOnce() + Send>),
    f: fn(A) -> R,
    args: Vec<A>,
) -> Result<Vec<R>, String> {
    let n = args.len();
    let (tx, rx) = unbounded();
    for (i, a) in args.into_iter().enumerate() {
        let tx = tx.clone();
        execute(Box::new(move || {
            let _ = tx.send((i, f(a)));
        }));
    }
    drop(tx);
    collect_in_order(n, rx.iter())
}

/// One `spawn` per task on procspawn's pool, at most `window` outstanding (procspawn's `spawn`
/// sends the argument before a worker takes the call, so an argument larger than a socket
/// buffer blocks `spawn` until a worker is free: with more outstanding calls than workers it
/// deadlocks), joined in order.
pub(crate) fn map_procspawn<A, R>(
    pool: &procspawn::Pool,
    f: fn(A) -> R,
    args: Vec<A>,
    window: usize,
) -> Result<Vec<R>, String>
where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    let mut out = Vec::with_capacity(args.len());
    let mut pending = std::collections::VecDeque::new();
    for a in args {
        if pending.len() >= window.max(1) {
            let h: procspawn::JoinHandle<R> = pending.pop_front().ok_or("no handle")?;
            out.push(h.join().map_err(|e| format!("procspawn: {e}"))?);
        }
        pending.push_back(pool.spawn(a, f));
    }
    for h in pending {
        out.push(h.join().map_err(|e| format!("procspawn: {e}"))?);
    }
    Ok(out)
}

fn collect_in_order<R>(n: usize, it: impl Iterator<Item = (usize, R)>) -> Result<Vec<R>, String> {
    let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
    let mut got = 0;
    for (i, r) in it {
        out[i] = Some(r);
        got += 1;
    }
    if got != n {
        return Err(format!("only {got} of {n} tasks finished"));
    }
    Ok(out.into_iter().flatten().collect())
}

/// A rayon pool of `n` threads.
pub(crate) fn rayon_pool(n: usize) -> Result<rayon::ThreadPool, String> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .map_err(|e| e.to_string())
}

/// A procspawn pool of `n` processes, or why there is none.
pub(crate) fn procspawn_pool(n: usize) -> Result<procspawn::Pool, String> {
    if !crate::procspawn_ready() {
        return Err(
            "procspawn needs procspawn::init() at the top of main (the runner and the pool \
             bench call it)"
                .into(),
        );
    }
    procspawn::Pool::new(n).map_err(|e| format!("procspawn pool: {e}"))
}
