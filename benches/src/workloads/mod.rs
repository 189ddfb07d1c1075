//! Every workload of the comparison runner and of the criterion benchmarks, defined once.
//!
//! A [`Workload`] is one question ("how long does an `apply` round trip take?") with a list of
//! [`ContenderSpec`]s: ours, thread-based peers, process-based peers, Python, and the floor. A
//! spec's `setup` builds the contender (starts its pool, forks its echo child) and returns a
//! [`Runner`] whose `run(iters)` does `iters` iterations and returns the time they took (set-up
//! and argument preparation excluded), exactly what criterion's `iter_custom` wants. One
//! iteration is `ops_per_iter` operations (tasks, messages, round trips).
//!
//! Families: [`pool_apply`], [`map_trivial`], [`cpu_tasks`], [`payload_tasks`],
//! [`crash_recovery`] (and [`crash::containment`], the crash demonstration), [`queue_spsc`],
//! [`queue_mpmc`], [`pipe_round_trip`], [`lock_handoff`], [`cluster`] (the pool on a NATS
//! JetStream cluster of local nodes, beside the raw engine). [`all`] lists them for a
//! [`Params`].

use std::time::Duration;

mod cluster;
pub mod crash;
mod iceoryx;
mod ipc;
mod peers;
mod pooled;
pub mod python;
pub mod tasks;

pub use cluster::{RAW_PROCESSES, cluster, serve_raw_consumer_if_asked};
pub use ipc::{
    Payload, Placement, floor_ping_pong, floor_spin_two_lines, lock_handoff, pipe_round_trip,
    queue_mpmc, queue_spsc,
};
pub(crate) use ipc::{SHM_VEC_LABEL, TWO_COPY_LABEL};
pub(crate) use pooled::FORK_FLOOR;
pub use pooled::{cpu_growing, cpu_tasks, crash_recovery, map_trivial, payload_tasks, pool_apply};

/// One iteration count in, the time those iterations took out (or why it failed).
pub type RunFn = Box<dyn FnMut(u64) -> Result<Duration, String>>;

/// A contender, set up and ready to measure.
pub struct Runner {
    /// Runs `iters` iterations; returns the time they took.
    pub run: RunFn,
    /// How many operations one iteration is (tasks of a map, messages, round trips).
    pub ops_per_iter: u64,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("ops_per_iter", &self.ops_per_iter)
            .finish_non_exhaustive()
    }
}

impl Runner {
    /// A runner doing `ops_per_iter` operations per iteration.
    pub fn new(
        ops_per_iter: u64,
        run: impl FnMut(u64) -> Result<Duration, String> + 'static,
    ) -> Runner {
        Runner {
            run: Box::new(run),
            ops_per_iter,
        }
    }
}

/// What kind of contender this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Our crates.
    Ours,
    /// A thread-based alternative (rayon, crossbeam, threadpool, std).
    Thread,
    /// A process-based peer (procspawn, ipc-channel, a socketpair).
    Process,
    /// Python's multiprocessing, through a script.
    Python,
    /// The machine's floor (spin or futex ping-pong, memcpy).
    Floor,
}

impl Kind {
    /// A short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::Thread => "thread",
            Kind::Process => "process",
            Kind::Python => "python",
            Kind::Floor => "floor",
        }
    }
}

/// How a workload's figure reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Time per operation (lower is better).
    Latency,
    /// Operations per second (higher is better).
    Throughput,
}

/// Builds a contender.
pub type SetupFn = Box<dyn FnOnce() -> Result<Runner, String>>;

/// A contender not yet set up.
pub struct ContenderSpec {
    /// Its name in tables and charts.
    pub name: String,
    /// Ours, a thread peer, a process peer, Python, or the floor.
    pub kind: Kind,
    /// Sets it up (may fail: python3 missing, say; the runner then notes it and goes on).
    pub setup: SetupFn,
}

impl std::fmt::Debug for ContenderSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContenderSpec")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl ContenderSpec {
    /// A contender named `name`.
    pub fn new(
        name: impl Into<String>,
        kind: Kind,
        setup: impl FnOnce() -> Result<Runner, String> + 'static,
    ) -> ContenderSpec {
        ContenderSpec {
            name: name.into(),
            kind,
            setup: Box::new(setup),
        }
    }
}

/// One question, answered by several contenders.
#[derive(Debug)]
pub struct Workload {
    /// A unique id (`family` or `family/variant`), used to select workloads.
    pub id: String,
    /// The family (`apply`, `cpu_10us`, `queue_spsc`, ...), for charts.
    pub family: String,
    /// The varying parameter, if any: (`"workers"` or `"bytes"`, its value).
    pub param: Option<(&'static str, u64)>,
    /// A human title.
    pub title: String,
    /// Latency or throughput.
    pub metric: Metric,
    /// Bytes carried per operation (0 when not meaningful), to show bandwidth as well.
    pub bytes_per_op: u64,
    /// The contenders; the first of kind [`Kind::Ours`] is the reference of every ratio.
    pub contenders: Vec<ContenderSpec>,
    /// Caveats printed under the table.
    pub notes: Vec<String>,
}

impl Workload {
    fn new(id: impl Into<String>, title: impl Into<String>, metric: Metric) -> Workload {
        let id = id.into();
        Workload {
            family: id.split('/').next().unwrap_or_default().to_string(),
            id,
            param: None,
            title: title.into(),
            metric,
            bytes_per_op: 0,
            contenders: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn with(mut self, spec: ContenderSpec) -> Self {
        self.contenders.push(spec);
        self
    }

    fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }
}

/// The sizes of a run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Worker counts for the CPU-bound families (default 1..=CPUs).
    pub workers: Vec<usize>,
    /// Workers of the pools in the other families (default: the CPUs, at least 2).
    pub pool_workers: usize,
    /// Message sizes of the queue and pipe families (default 64 B and 64 KiB).
    pub sizes: Vec<usize>,
    /// Tasks of one `map` of trivial tasks (default 1 M).
    pub map_tasks: u64,
    /// CPU time of one iteration of the CPU-bound families (default 40 ms).
    pub cpu_budget: Duration,
    /// 1 MiB tasks per iteration of the payload family (default 16).
    pub payload_tasks: u64,
    /// Tasks submitted per iteration to the slowest peers (procspawn), at most.
    pub slow_peer_tasks: u64,
    /// Messages per iteration of the queue families, at most (default 200k).
    pub max_msgs: u64,
    /// Measure Python's multiprocessing when python3 is present.
    pub python: bool,
    /// Measure the pool on a NATS cluster (the `cluster` family; needs `nats-server` on PATH).
    pub cluster: bool,
}

impl Default for Params {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Params {
            workers: (1..=cpus).collect(),
            pool_workers: cpus.max(2),
            sizes: vec![64, 64 << 10],
            map_tasks: 1_000_000,
            cpu_budget: Duration::from_millis(40),
            payload_tasks: 16,
            slow_peer_tasks: 2000,
            max_msgs: 200_000,
            python: true,
            cluster: true,
        }
    }
}

impl Params {
    /// Smaller sizes for `--quick` and the smoke test.
    pub fn quick() -> Params {
        Params {
            map_tasks: 100_000,
            cpu_budget: Duration::from_millis(10),
            payload_tasks: 4,
            slow_peer_tasks: 200,
            max_msgs: 50_000,
            ..Params::default()
        }
    }
}

/// Every workload family for `p`, in the order the runner prints them.
pub fn all(p: &Params) -> Vec<Workload> {
    let mut w = vec![pool_apply(p), map_trivial(p)];
    w.extend(cpu_tasks(p, 10));
    w.extend(cpu_tasks(p, 100));
    w.push(cpu_growing(p, 10, 1000));
    w.push(payload_tasks(p));
    w.push(crash_recovery(p));
    w.extend(queue_spsc(p));
    w.extend(queue_mpmc(p));
    w.extend(pipe_round_trip(p, true));
    w.extend(pipe_round_trip(p, false));
    w.push(lock_handoff(p));
    if p.cluster {
        w.extend(cluster(p));
    }
    w
}

/// Times `iters` runs of `body`, each after an untimed `prepare` whose output it consumes.
pub(crate) fn timed_loop<T, R>(
    iters: u64,
    mut prepare: impl FnMut() -> T,
    mut body: impl FnMut(T) -> Result<R, String>,
) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let input = prepare();
        let start = std::time::Instant::now();
        let out = body(input)?;
        total += start.elapsed();
        drop(std::hint::black_box(out));
    }
    Ok(total)
}
