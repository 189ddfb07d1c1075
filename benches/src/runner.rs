//! The comparison runner: `cargo run --release -p benches --bin compare [OPTIONS]`.
//!
//! For each selected [`Workload`]: set up every contender, warm
//! each up while choosing how many iterations make one sample (about `--sample-ms`), then take
//! `--reps` samples of every contender, interleaved in a new shuffled order every repetition (so
//! that drift, such as the two vCPUs of the reference VM moving apart, and whatever state one
//! sample leaves for the next hit every contender alike; see [`sample_order`]). Report the
//! median and the p10..p90 spread of the samples, each contender's speed relative to ours,
//! and a note where the spread is too wide to trust. Then the crash demonstration, the
//! targets of `TARGETS.md` checked against this run, `--json` and `--plot` output.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::workloads::crash::{self, CrashReport};
use crate::workloads::{self, Kind, Metric, Params, Workload, python};

/// The runner's options.
#[derive(Debug, Clone)]
pub struct Config {
    /// Workload sizes.
    pub params: Params,
    /// Keep workloads whose id or family starts with one of these (all when empty).
    pub only: Vec<String>,
    /// Keep contenders whose kind is one of these or whose name starts with one of them, case
    /// ignored (all when empty); see [`keeps_contender`].
    pub contenders: Vec<String>,
    /// Samples per contender.
    pub reps: usize,
    /// Target duration of one sample.
    pub sample_time: Duration,
    /// Run the crash demonstration.
    pub crash_demo: bool,
    /// Write every sample and the summary here.
    pub json: Option<PathBuf>,
    /// Write SVG charts into this directory.
    pub plot: Option<PathBuf>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Measure every workload a second time beside this many CPU-bound hog processes
    /// (`--load N`; 0: quiet only).
    pub load: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            params: Params::default(),
            only: Vec::new(),
            contenders: Vec::new(),
            reps: 9,
            sample_time: Duration::from_millis(50),
            crash_demo: true,
            json: None,
            plot: None,
            progress: true,
            load: 0,
        }
    }
}

/// `--help`.
pub const USAGE: &str = "\
compare: our process pool and IPC crates against threads, process-based peers, Python's
multiprocessing and the machine's floor, measured in one run.

USAGE: cargo run --release -p benches --bin compare -- [OPTIONS]

OPTIONS:
  --quick               smaller sizes, 3 repetitions (about 30 s)
  --smoke               tiny sizes, 2 repetitions, no Python (a few seconds; for tests)
  --workloads A,B,..    only workloads whose id or family starts with these
                        (apply, map_trivial, cpu_10us, cpu_100us, cpu_growing,
                        payload_1MiB, crash_recovery, queue_spsc, queue_mpmc,
                        pipe_rtt_hot, pipe_rtt_asleep, lock_handoff, cluster_apply,
                        cluster_map;
                        `--list` shows every id)
  --contenders A,B,..   only contenders of these kinds (ours, thread, process, python,
                        floor) or whose name starts with these, case ignored
                        (`--contenders ours,rayon`: our pool beside rayon alone)
  --sizes 64,4096,..    message sizes in bytes for the queue and pipe workloads
                        (suffixes k/K = KiB, m/M = MiB; default 64,64k)
  --workers 1,2,..      worker counts for the CPU-bound workloads (default 1..CPUs)
  --pool-workers N      workers of the pools in the other workloads (default: CPUs)
  --map-tasks N         tasks of the trivial map (default 1000000)
  --reps N              samples per contender (default 9)
  --sample-ms N         target duration of one sample (default 50)
  --no-python           do not measure Python's multiprocessing
  --no-crash-demo       skip the crash demonstration
  --json FILE           write every sample, medians, spread and the system to FILE
  --plot DIR            write SVG charts to DIR
  --no-progress         no progress bar
  --load N              measure every workload twice: quiet, then beside N CPU-bound
                        hog processes, and print both side by side (how much each
                        contender degrades on a busy machine)
  --list                list the workload ids and exit
  -h, --help            this text
";

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    /// Run with this configuration.
    Run(Box<Config>),
    /// Print the workload ids.
    List(Box<Config>),
    /// Print [`USAGE`].
    Help,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1024),
        Some('m' | 'M') => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    num.parse::<usize>()
        .map(|n| n * mult)
        .map_err(|_| format!("not a size: {s:?}"))
}

/// The non-empty names of a comma-separated list.
fn names(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').filter(|s| !s.is_empty())
}

fn parse_list(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(parse_size)
        .collect()
}

/// Parses the command line (without the program name).
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut cfg = Config::default();
    let mut list = false;
    let mut it = args.into_iter();
    // Options applied after the presets, whatever their order.
    let mut later: Vec<(String, String)> = Vec::new();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--list" => list = true,
            "--quick" => {
                cfg.params = Params::quick();
                cfg.reps = 3;
                cfg.sample_time = Duration::from_millis(25);
            }
            "--smoke" => {
                cfg.params = Params {
                    workers: vec![1],
                    pool_workers: 2,
                    sizes: vec![64],
                    map_tasks: 5_000,
                    cpu_budget: Duration::from_millis(1),
                    payload_tasks: 2,
                    slow_peer_tasks: 10,
                    max_msgs: 5_000,
                    python: false,
                    cluster: false,
                };
                cfg.reps = 2;
                cfg.sample_time = Duration::from_millis(2);
            }
            "--no-python" => later.push((a, String::new())),
            "--no-crash-demo" => cfg.crash_demo = false,
            "--no-progress" => cfg.progress = false,
            "--workloads" | "--contenders" | "--sizes" | "--workers" | "--pool-workers"
            | "--map-tasks" | "--reps" | "--sample-ms" | "--load" => {
                let v = value(&a)?;
                later.push((a, v));
            }
            "--json" => cfg.json = Some(PathBuf::from(value(&a)?)),
            "--plot" => cfg.plot = Some(PathBuf::from(value(&a)?)),
            other => return Err(format!("unknown option {other:?} (see --help)")),
        }
    }
    for (k, v) in later {
        match k.as_str() {
            "--no-python" => cfg.params.python = false,
            "--workloads" => cfg.only = names(&v).map(String::from).collect(),
            "--contenders" => cfg.contenders = names(&v).map(str::to_lowercase).collect(),
            "--sizes" => cfg.params.sizes = parse_list(&v)?,
            "--workers" => cfg.params.workers = parse_list(&v)?,
            "--pool-workers" => cfg.params.pool_workers = parse_size(&v)?.max(1),
            "--map-tasks" => cfg.params.map_tasks = parse_size(&v)?.max(1) as u64,
            "--reps" => cfg.reps = parse_size(&v)?.max(1),
            "--sample-ms" => cfg.sample_time = Duration::from_millis(parse_size(&v)?.max(1) as u64),
            "--load" => cfg.load = parse_size(&v)?,
            _ => {}
        }
    }
    if cfg.params.workers.is_empty() || cfg.params.sizes.is_empty() {
        return Err("--workers and --sizes need at least one value".into());
    }
    if list {
        Ok(Command::List(Box::new(cfg)))
    } else {
        Ok(Command::Run(Box::new(cfg)))
    }
}

/// The workloads `cfg` selects.
pub fn selected(cfg: &Config) -> Vec<Workload> {
    workloads::all(&cfg.params)
        .into_iter()
        .filter(|w| {
            cfg.only.is_empty()
                || cfg
                    .only
                    .iter()
                    .any(|o| w.id.starts_with(o.as_str()) || w.family == *o)
        })
        .filter_map(|mut w| {
            w.contenders
                .retain(|c| keeps_contender(&cfg.contenders, c.kind, &c.name));
            (!w.contenders.is_empty()).then_some(w)
        })
        .collect()
}

/// Whether `--contenders` (`filter`, lower case) keeps a contender of this kind and name: an
/// empty filter keeps all; otherwise an entry naming its kind (`ours`, `thread`, `process`,
/// `python`, `floor`) or a prefix of its name, case ignored.
///
/// Why a report says it was filtered: ratios can move with what else a run measures. Under
/// the runner's earlier sample order, `cpu_100us/w2` read 98.0-101.6% of rayon with
/// `--contenders ours,rayon` against 94.1-96.4% with all six contenders, because one of them
/// (`ideal`) always came right before ours ([`sample_order`] says why and how that was fixed).
pub fn keeps_contender(filter: &[String], kind: Kind, name: &str) -> bool {
    let name = name.to_lowercase();
    filter.is_empty()
        || filter
            .iter()
            .any(|f| f == kind.label() || name.starts_with(f.as_str()))
}

/// Median and spread of a contender's samples.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The median.
    pub median: f64,
    /// 10th percentile.
    pub p10: f64,
    /// 90th percentile.
    pub p90: f64,
    /// (p90 - p10) / median.
    pub spread: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Median and p10..p90 of `samples`.
pub fn summarize(samples: &[f64]) -> Summary {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let median = percentile(&s, 0.5);
    let (p10, p90) = (percentile(&s, 0.1), percentile(&s, 0.9));
    Summary {
        median,
        p10,
        p90,
        spread: if median > 0.0 {
            (p90 - p10) / median
        } else {
            0.0
        },
    }
}

/// Above this relative spread ((p90-p10)/median) a figure gets a warning.
pub const WIDE_SPREAD: f64 = 0.25;

/// One contender's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ContenderResult {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// Operations per iteration.
    pub ops_per_iter: u64,
    /// Iterations per sample.
    pub iters_per_sample: u64,
    /// Every sample: seconds per operation (latency) or operations per second (throughput).
    pub samples: Vec<f64>,
    /// Median and spread, when measured.
    pub summary: Option<Summary>,
    /// Its speed relative to ours (> 1: faster than ours).
    pub speed_vs_ours: Option<f64>,
    /// Why it was not measured, or failed.
    pub error: Option<String>,
}

/// One workload's figures.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadResult {
    /// Id.
    pub id: String,
    /// Family.
    pub family: String,
    /// Varying parameter.
    pub param: Option<(&'static str, u64)>,
    /// Title.
    pub title: String,
    /// Latency or throughput.
    pub metric: Metric,
    /// The unit of `samples`.
    pub unit: &'static str,
    /// Bytes per operation.
    pub bytes_per_op: u64,
    /// Every contender.
    pub contenders: Vec<ContenderResult>,
    /// Caveats.
    pub notes: Vec<String>,
    /// Wall time spent on this workload (set-up included), seconds.
    pub seconds: f64,
}

impl WorkloadResult {
    /// The contender named `name`, if measured.
    pub fn median_of(&self, name_prefix: &str) -> Option<f64> {
        self.contenders
            .iter()
            .find(|c| c.name.starts_with(name_prefix))
            .and_then(|c| c.summary.as_ref().map(|s| s.median))
    }

    /// Our contender's median.
    pub fn ours(&self) -> Option<f64> {
        self.contenders
            .iter()
            .find(|c| c.kind == Kind::Ours)
            .and_then(|c| c.summary.as_ref().map(|s| s.median))
    }
}

/// The machine and build the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct System {
    /// CPU model (from /proc/cpuinfo).
    pub cpu: String,
    /// CPUs this process may use.
    pub cores: usize,
    /// Kernel release.
    pub kernel: String,
    /// `git rev-parse HEAD` (with `-dirty` when the tree has changes), if available.
    pub commit: String,
    /// Python's version, or why it was not measured.
    pub python: String,
    /// Seconds since the epoch.
    pub timestamp: u64,
    /// The 1-minute load average when the run started.
    pub load_at_start: f64,
    /// The share of CPU time other processes used during half a second before the run (other
    /// work on the machine skews every figure; the runner warns above 15%).
    pub busy_before: f64,
}

/// The share of all CPUs' time spent busy during `window` (from /proc/stat).
pub fn cpu_busy(window: Duration) -> f64 {
    let read = || -> Option<(u64, u64)> {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<u64> = s
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
        Some((v.iter().sum(), idle))
    };
    let Some((t0, i0)) = read() else { return 0.0 };
    // Sampling the counters over a window (a measurement, not a synchronisation).
    std::thread::sleep(window);
    let Some((t1, i1)) = read() else { return 0.0 };
    let total = t1.saturating_sub(t0).max(1) as f64;
    1.0 - i1.saturating_sub(i0) as f64 / total
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0.0)
}

/// Reads the system description.
pub fn system(python_on: bool) -> System {
    let busy_before = cpu_busy(Duration::from_millis(500));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{c}-dirty") } else { c }
        }
        None => "unknown".into(),
    };
    let python = if python_on {
        python::version().unwrap_or_else(|e| e)
    } else {
        "not measured (--no-python)".into()
    };
    System {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel,
        commit,
        python,
        load_at_start: load_average(),
        busy_before,
        timestamp: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

/// A target of TARGETS.md, checked against this run.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    /// What is measured.
    pub measure: String,
    /// The target.
    pub target: String,
    /// What this run measured.
    pub measured: String,
    /// Met, missed, or not measured (None).
    pub met: Option<bool>,
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The machine.
    pub system: System,
    /// Repetitions per contender.
    pub reps: usize,
    /// Target sample duration, seconds.
    pub sample_seconds: f64,
    /// Every workload.
    pub workloads: Vec<WorkloadResult>,
    /// Hog processes beside the loaded pass (`--load N`; 0: no loaded pass).
    pub load: usize,
    /// The `--contenders` filter (empty: every contender was measured).
    pub contenders: Vec<String>,
    /// Every workload again, measured beside `load` CPU-bound hogs (empty without `--load`).
    pub loaded: Vec<WorkloadResult>,
    /// The crash demonstration.
    pub crash: Vec<CrashReport>,
    /// TARGETS.md rows.
    pub targets: Vec<TargetCheck>,
    /// Wall time of the run, seconds.
    pub wall_seconds: f64,
}

fn to_value(metric: Metric, ops: u64, iters: u64, t: Duration) -> f64 {
    let secs = t.as_secs_f64().max(1e-12);
    let n = (ops * iters) as f64;
    match metric {
        Metric::Latency => secs / n,
        Metric::Throughput => n / secs,
    }
}

/// The order in which repetition `rep` samples `n` contenders: a shuffle seeded by `rep`
/// (Fisher-Yates over a xorshift generator), the same in every run.
///
/// Why shuffled: a contender can leave the machine in a state that the next sample pays for.
/// The CPU-bound workloads' `ideal` floor runs one thread for a whole sample while the other vCPU
/// of the reference VM idles, and whichever contender comes next starts on a vCPU that was
/// halted. The earlier order (rotate every repetition, reverse every other one) gave every
/// contender the same two predecessors in every run, and put our pool after `ideal` in 40 of 56
/// samples: `cpu_100us/w2` read 94.8-97.2% of rayon with all six contenders (seven runs)
/// against 97.7-100.1% without `ideal` (`--contenders`, four- and five-contender sets, nine
/// runs; 2026-12-04). Shuffled, five interleaved pairs of full runs: 95.6-100.2% against
/// 94.4-96.1%.
/// Shuffled, such a carry-over falls on every contender alike, and drift still does (each
/// contender takes every position about equally often over the repetitions).
pub fn sample_order(n: usize, rep: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    // xorshift64*, seeded so that repetition 0 is not the identity order either.
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ ((rep as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// Measures one workload (see the module docs for the method).
pub fn measure(w: Workload, cfg: &Config, bar: &indicatif::ProgressBar) -> WorkloadResult {
    let started = Instant::now();
    let metric = w.metric;
    let mut results: Vec<ContenderResult> = Vec::new();
    let mut runners = Vec::new();
    bar.set_message(w.id.clone());
    for spec in w.contenders {
        let mut r = ContenderResult {
            name: spec.name,
            kind: spec.kind,
            ops_per_iter: 0,
            iters_per_sample: 0,
            samples: Vec::new(),
            summary: None,
            speed_vs_ours: None,
            error: None,
        };
        match (spec.setup)() {
            Ok(runner) => {
                r.ops_per_iter = runner.ops_per_iter;
                runners.push(Some(runner));
            }
            Err(e) => {
                r.error = Some(e);
                runners.push(None);
                bar.inc(cfg.reps as u64 + 1);
            }
        }
        results.push(r);
    }
    // Warm-up and calibration: grow the iteration count until the timed part of a run takes a
    // quarter of a sample (or the whole run a sample), then scale it to a whole sample.
    for (r, runner) in results.iter_mut().zip(runners.iter_mut()) {
        let Some(run) = runner.as_mut() else { continue };
        let mut iters = 1u64;
        let target = cfg.sample_time.as_secs_f64();
        // Both the timed part and the wall time: a run's untimed part (building arguments, a
        // crash before the timed part, forking the other party) counts against the budget,
        // but a large fixed untimed cost must not stop the growth while the timed part is
        // still short. Judged by wall time alone, a lock hand-off whose child is forked from
        // the runner's large process (about 10 ms late in a run) stopped at one iteration and
        // took samples of 3 rounds, a few microseconds each: noise.
        let outcome = loop {
            let wall = Instant::now();
            match (run.run)(iters) {
                Ok(timed) => {
                    let (t, w) = (timed.as_secs_f64(), wall.elapsed().as_secs_f64());
                    if t >= target / 4.0 || w >= target || iters >= 1 << 30 {
                        break Ok(w);
                    }
                    let grow = (target / 2.0 / t.max(1e-9))
                        .min(target / w.max(1e-9))
                        .clamp(2.0, 100.0);
                    iters = ((iters as f64) * grow).ceil() as u64;
                }
                Err(e) => break Err(e),
            }
        };
        bar.inc(1);
        match outcome {
            Ok(w) => {
                // A sample's wall time stays about one sample: the untimed part is spread over
                // the iterations of the last calibration run.
                let per_iter = w / iters as f64;
                r.iters_per_sample = ((target / per_iter.max(1e-12)).round() as u64).max(1);
            }
            Err(e) => {
                r.error = Some(e);
                *runner = None;
                bar.inc(cfg.reps as u64);
            }
        }
    }
    // Interleaved samples, in a new order every repetition (see `sample_order`).
    let n = results.len();
    for rep in 0..cfg.reps {
        for i in sample_order(n, rep) {
            let Some(run) = runners[i].as_mut() else {
                continue;
            };
            let iters = results[i].iters_per_sample;
            match (run.run)(iters) {
                Ok(t) => {
                    let v = to_value(metric, run.ops_per_iter, iters, t);
                    results[i].samples.push(v);
                }
                Err(e) => {
                    results[i].error = Some(e);
                    runners[i] = None;
                    bar.inc((cfg.reps - rep - 1) as u64);
                }
            }
            bar.inc(1);
        }
    }
    drop(runners);
    for r in &mut results {
        if !r.samples.is_empty() && r.error.is_none() {
            r.summary = Some(summarize(&r.samples));
        }
    }
    let ours = results
        .iter()
        .find(|c| c.kind == Kind::Ours)
        .and_then(|c| c.summary.as_ref().map(|s| s.median));
    for r in &mut results {
        if let (Some(o), Some(s)) = (ours, r.summary.as_ref()) {
            r.speed_vs_ours = Some(match metric {
                Metric::Latency => o / s.median,
                Metric::Throughput => s.median / o,
            });
        }
    }
    WorkloadResult {
        id: w.id,
        family: w.family,
        param: w.param,
        title: w.title,
        metric,
        unit: match metric {
            Metric::Latency => "seconds per operation",
            Metric::Throughput => "operations per second",
        },
        bytes_per_op: w.bytes_per_op,
        contenders: results,
        notes: w.notes,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Formats seconds as ns/us/ms/s.
pub fn fmt_time(s: f64) -> String {
    if s < 1e-6 {
        format!("{:.0} ns", s * 1e9)
    } else if s < 1e-3 {
        format!("{:.2} us", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// Formats a rate with k/M/G.
pub fn fmt_rate(r: f64) -> String {
    if r >= 1e9 {
        format!("{:.2} G/s", r / 1e9)
    } else if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k/s", r / 1e3)
    } else {
        format!("{r:.1} /s")
    }
}

fn fmt_bytes_rate(r: f64) -> String {
    if r >= 1e9 {
        format!("{:.2} GB/s", r / 1e9)
    } else {
        format!("{:.0} MB/s", r / 1e6)
    }
}

fn fmt_value(w: &WorkloadResult, v: f64) -> String {
    match w.metric {
        Metric::Latency => fmt_time(v),
        Metric::Throughput => {
            if w.bytes_per_op >= 4096 {
                format!(
                    "{} ({})",
                    fmt_rate(v),
                    fmt_bytes_rate(v * w.bytes_per_op as f64)
                )
            } else {
                fmt_rate(v)
            }
        }
    }
}

fn fmt_ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0}x")
    } else if r >= 0.1 {
        format!("{r:.2}x")
    } else {
        format!("{r:.3}x")
    }
}

/// The detailed table of one workload (markdown).
pub fn workload_table(w: &WorkloadResult) -> String {
    let mut s = String::new();
    let what = match w.metric {
        Metric::Latency => "latency per operation, lower is better",
        Metric::Throughput => "operations per second, higher is better",
    };
    let _ = writeln!(
        s,
        "### {} (`{}`; {what}; measured in {:.1} s)\n",
        w.title, w.id, w.seconds
    );
    let _ = writeln!(
        s,
        "| contender | kind | median | p10..p90 | speed vs ours |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    let mut wide = Vec::new();
    for c in &w.contenders {
        match (&c.summary, &c.error) {
            (Some(m), None) => {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} .. {} | {} |",
                    c.name,
                    c.kind.label(),
                    fmt_value(w, m.median),
                    fmt_value(w, m.p10),
                    fmt_value(w, m.p90),
                    c.speed_vs_ours.map(fmt_ratio).unwrap_or_default()
                );
                if m.spread > WIDE_SPREAD {
                    wide.push(format!("{} ({:.0}%)", c.name, m.spread * 100.0));
                }
            }
            (_, Some(e)) => {
                let _ = writeln!(
                    s,
                    "| {} | {} | not measured: {} | | |",
                    c.name,
                    c.kind.label(),
                    e
                );
            }
            _ => {}
        }
    }
    for n in &w.notes {
        let _ = writeln!(s, "\nNote: {n}");
    }
    if !wide.is_empty() {
        let _ = writeln!(
            s,
            "\nWarning: spread (p90-p10)/median above {:.0}%, do not trust these to better than that: {}",
            WIDE_SPREAD * 100.0,
            wide.join(", ")
        );
    }
    s
}

/// The fastest contender of `kind` (see [`fastest`]).
fn best(w: &WorkloadResult, kind: Kind) -> Option<&ContenderResult> {
    fastest(w, |c| c.kind == kind)
}

/// The fastest measured contender that `keep` accepts, by its own median (the lowest latency or
/// the highest rate): the same order as the ratios to ours, and found also when ours was not
/// measured (filtered out, or failed), where every ratio is missing.
fn fastest(
    w: &WorkloadResult,
    keep: impl Fn(&ContenderResult) -> bool,
) -> Option<&ContenderResult> {
    let speed = |c: &ContenderResult| {
        let m = c.summary.as_ref().map_or(f64::NAN, |s| s.median);
        match w.metric {
            Metric::Latency => -m,
            Metric::Throughput => m,
        }
    };
    w.contenders
        .iter()
        .filter(|c| c.summary.is_some() && keep(c))
        .max_by(|a, b| speed(a).total_cmp(&speed(b)))
}

/// The headline table: per workload, ours and the best of each kind of peer (markdown).
pub fn headline(ws: &[WorkloadResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| workload | ours | best thread peer | best process peer | Python | floor |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for w in ws {
        let ours = w
            .contenders
            .iter()
            .find(|c| c.kind == Kind::Ours)
            .and_then(|c| c.summary.as_ref())
            .map(|m| fmt_value(w, m.median))
            .unwrap_or_else(|| "-".into());
        let cell = |kind| {
            best(w, kind)
                .map(|c| {
                    let median = c
                        .summary
                        .as_ref()
                        .map(|m| fmt_value(w, m.median))
                        .unwrap_or_default();
                    match c.speed_vs_ours {
                        Some(r) => format!("{}: {median} ({} ours)", c.name, fmt_ratio(r)),
                        None => format!("{}: {median}", c.name),
                    }
                })
                .unwrap_or_else(|| "-".into())
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            w.id,
            ours,
            cell(Kind::Thread),
            cell(Kind::Process),
            cell(Kind::Python),
            cell(Kind::Floor)
        );
    }
    s
}

/// CPU-bound hog processes (busy loops), killed and reaped on drop: the `--load N` pass.
#[derive(Debug)]
struct Hogs {
    /// Held only to be killed and reaped when the pass ends.
    _children: Vec<crate::proc::Child>,
}

impl Hogs {
    fn start(n: usize) -> Hogs {
        Hogs {
            _children: (0..n)
                .map(|_| {
                    crate::proc::fork(|| {
                        let mut x = 0u64;
                        loop {
                            x = std::hint::black_box(x.wrapping_add(1));
                        }
                    })
                })
                .collect(),
        }
    }
}

/// How much slower `loaded` is than `quiet` for a contender (> 1: slower when loaded).
fn slowdown(metric: Metric, quiet: f64, loaded: f64) -> f64 {
    match metric {
        Metric::Latency => loaded / quiet,
        Metric::Throughput => quiet / loaded,
    }
}

/// Quiet and loaded figures side by side, per workload and contender (markdown), with each
/// of our contenders' verdict against the peer that is fastest when loaded: yes when ours
/// degrades no more than that peer does, or when ours loaded is still at least as fast as it.
///
/// The second clause is there because a slowdown alone rewards a peer for being slow when
/// the machine is quiet: on the reference VM a peer that sleeps pays for waking a halted
/// vCPU (tens of microseconds) when quiet, which hog processes keep busy, so such a peer
/// often gets *faster* under load (a slowdown below 1x) while staying slower than ours. A
/// user on a busy machine compares what each contender delivers there, which the second
/// clause checks; a contender that is slower loaded *and* degrades more gets a NO.
pub fn load_table(quiet: &[WorkloadResult], loaded: &[WorkloadResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| workload | contender | quiet | loaded | slowdown | ours no worse off loaded than the best loaded peer (degrades no more, or still as fast) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for (q, l) in quiet.iter().zip(loaded) {
        let median = |w: &WorkloadResult, name: &str| {
            w.contenders
                .iter()
                .find(|c| c.name == name)
                .and_then(|c| c.summary.as_ref().map(|m| m.median))
        };
        // The peer fastest when loaded: its name, loaded median and slowdown.
        let best_peer =
            fastest(l, |c| c.kind != Kind::Ours && c.kind != Kind::Floor).and_then(|c| {
                let lm = median(l, &c.name)?;
                Some((
                    c.name.as_str(),
                    lm,
                    slowdown(q.metric, median(q, &c.name)?, lm),
                ))
            });
        for c in &q.contenders {
            let (Some(qm), Some(lm)) = (median(q, &c.name), median(l, &c.name)) else {
                continue;
            };
            let slow = slowdown(q.metric, qm, lm);
            let verdict = match (c.kind, best_peer) {
                (Kind::Ours, Some((name, peer_loaded, p))) => {
                    let still_faster = match q.metric {
                        Metric::Latency => lm <= peer_loaded,
                        Metric::Throughput => lm >= peer_loaded,
                    };
                    format!(
                        "{} ({} vs {name} {}; loaded {} against {})",
                        if slow <= p || still_faster {
                            "yes"
                        } else {
                            "NO"
                        },
                        fmt_ratio(slow),
                        fmt_ratio(p),
                        fmt_value(l, lm),
                        fmt_value(l, peer_loaded)
                    )
                }
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {verdict} |",
                q.id,
                c.name,
                fmt_value(q, qm),
                fmt_value(l, lm),
                fmt_ratio(slow)
            );
        }
    }
    s
}

/// The crash table (markdown).
pub fn crash_table(c: &[CrashReport]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| contender | fault | what the caller got | afterwards | time |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for r in c {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            r.contender,
            r.fault,
            r.outcome,
            r.afterwards,
            r.seconds.map(fmt_time).unwrap_or_else(|| "-".into())
        );
    }
    s
}

/// The TARGETS.md rows for the pool, checked against `ws`.
pub fn check_targets(ws: &[WorkloadResult]) -> Vec<TargetCheck> {
    let find = |id: &str| ws.iter().find(|w| w.id == id);
    let mut out = Vec::new();
    let mut push = |measure: &str, target: &str, measured: Option<(String, bool)>| {
        out.push(TargetCheck {
            measure: measure.into(),
            target: target.into(),
            measured: measured
                .as_ref()
                .map_or_else(|| "not measured".into(), |m| m.0.clone()),
            met: measured.map(|m| m.1),
        })
    };
    // Ours against a peer of the same run: (ours / peer) for a latency, (ours / peer) for a
    // rate too; the caller says which way the target points.
    let versus = |id: &str, peer: &str| -> Option<(f64, f64)> {
        let w = find(id)?;
        Some((w.ours()?, w.median_of(peer)?))
    };
    // "ours = ratio (peer)".
    let shown =
        |o: f64, p: f64, fmt: fn(f64) -> String| format!("{} = {:.2}x ({})", fmt(o), o / p, fmt(p));
    push(
        "apply round trip, hot workers",
        "<= 1.5x std::thread + crossbeam",
        versus("apply", "std::thread+crossbeam")
            .map(|(o, p)| (shown(o, p, fmt_time), o / p <= 1.5)),
    );
    push(
        "map of 1 M trivial tasks, auto chunksize",
        ">= 10x Python's Pool.map",
        versus("map_trivial", "python Pool.map")
            .map(|(o, p)| (shown(o, p, fmt_rate), o / p >= 10.0)),
    );
    push(
        "map of 1 M trivial tasks (quiet run)",
        ">= 100 M tasks/s",
        find("map_trivial")
            .and_then(|w| w.ours())
            .map(|v| (fmt_rate(v), v >= 100e6)),
    );
    for (family, share) in [("cpu_100us", 0.98), ("cpu_10us", 0.95)] {
        let ids: Vec<&WorkloadResult> = ws.iter().filter(|w| w.family == family).collect();
        let two = ids
            .iter()
            .find(|w| w.param == Some(("workers", 2)))
            .or(ids.last());
        push(
            &format!("{family} CPU-bound tasks, 2 workers"),
            &format!(">= {:.0}% of rayon", share * 100.0),
            two.and_then(|w| Some((w.ours()?, w.median_of("rayon")?, w.id.clone())))
                .map(|(o, r, id)| {
                    (
                        format!("{:.1}% of rayon ({id})", o / r * 100.0),
                        o / r >= share,
                    )
                }),
        );
    }
    push(
        "a task with a 1 MiB argument",
        ">= 25% of one memcpy of 1 MiB",
        versus("payload_1MiB", "memcpy")
            .map(|(o, p)| (format!("{:.1}% of memcpy", o / p * 100.0), o / p >= 0.25)),
    );
    push(
        "lock hand-off between two processes",
        "<= 1.0x a process-shared pthread mutex",
        versus("lock_handoff", "pthread mutex").map(|(o, p)| (shown(o, p, fmt_time), o / p <= 1.0)),
    );
    for (id, peer, min) in [
        ("queue_spsc/64B", "crossbeam", 2.0),
        ("queue_mpmc/64B", "crossbeam", 1.0),
        ("queue_spsc/64KiB", "std sync_channel", 1.0),
        ("queue_mpmc/64KiB", "crossbeam", 0.5),
    ] {
        // How close the copying path is to what two copies through shared memory allow.
        let floor = versus(id, crate::workloads::TWO_COPY_LABEL)
            .map(|(o, f)| format!(" ({:.0}% of the two-copy floor)", o / f * 100.0))
            .unwrap_or_default();
        push(
            &format!("ipc-queue {id}"),
            &format!(">= {min}x {peer}"),
            versus(id, peer).map(|(o, p)| (format!("{:.2}x{floor}", o / p), o / p >= min)),
        );
    }
    // The zero-copy path: the bytes are written once into an arena both processes map, and
    // only a token crosses the queue.
    push(
        "ipc-queue queue_spsc/64KiB, ShmVec tokens (zero copy)",
        ">= 1x std sync_channel",
        find("queue_spsc/64KiB")
            .and_then(|w| {
                Some((
                    w.median_of(crate::workloads::SHM_VEC_LABEL)?,
                    w.median_of("std sync_channel")?,
                ))
            })
            .map(|(o, p)| (format!("{:.2}x", o / p), o / p >= 1.0)),
    );
    // The pipe's floors are compared under the placement ours runs with (the scheduler's).
    push(
        "ipc-pipe 64 B round trip, hot peers",
        "<= 2x the spin round-trip floor (scheduler's placement)",
        versus(
            "pipe_rtt_hot/64B",
            "floor: spin ping-pong (shared word, scheduler's",
        )
        .map(|(o, p)| {
            // Beside it, the least a duplex channel moves (a line per direction).
            let lines = versus(
                "pipe_rtt_hot/64B",
                "floor: spin ping-pong (a word per direction",
            )
            .map(|(o, f)| format!("; {:.2}x the two-line floor", o / f))
            .unwrap_or_default();
            (format!("{}{lines}", shown(o, p, fmt_time)), o / p <= 2.0)
        }),
    );
    for size in ["64B", "64KiB"] {
        let hot = find(&format!("pipe_rtt_hot/{size}")).and_then(|w| w.ours());
        let asleep = find(&format!("pipe_rtt_asleep/{size}")).and_then(|w| w.ours());
        push(
            &format!("ipc-pipe {size} round trip, hot against asleep"),
            "hot never slower than asleep",
            hot.zip(asleep).map(|(h, a)| {
                (
                    format!(
                        "hot {} = {:.2}x asleep ({})",
                        fmt_time(h),
                        h / a,
                        fmt_time(a)
                    ),
                    h <= a,
                )
            }),
        );
    }
    push(
        "ipc-pipe 64 B round trip, peers asleep",
        "<= 1.1x the futex round-trip floor (scheduler's placement)",
        versus(
            "pipe_rtt_asleep/64B",
            "floor: futex ping-pong (shared word, scheduler's",
        )
        .map(|(o, p)| (shown(o, p, fmt_time), o / p <= 1.1)),
    );
    push(
        "ipc-pipe 64 B round trip, peers asleep",
        "faster than a socketpair",
        versus("pipe_rtt_asleep/64B", "socketpair").map(|(o, p)| (shown(o, p, fmt_time), o < p)),
    );
    push(
        "ipc-pipe 64 KiB round trip, hot peers",
        "<= 2x iceoryx2 publish-subscribe sending a copy",
        versus("pipe_rtt_hot/64KiB", "iceoryx2 publish-subscribe (copy")
            .map(|(o, p)| (shown(o, p, fmt_time), o / p <= 2.0)),
    );
    push(
        "cluster map on NATS JetStream, 2 nodes",
        ">= 0.67x the raw work queue (consumers placed as our nodes)",
        versus("cluster_map", crate::workloads::RAW_PROCESSES)
            .map(|(o, p)| (shown(o, p, fmt_rate), o / p >= 0.67)),
    );
    push(
        "cluster apply on NATS JetStream, 2 nodes",
        "<= 1.5x the raw work queue (consumers placed as our nodes)",
        versus("cluster_apply", crate::workloads::RAW_PROCESSES)
            .map(|(o, p)| (shown(o, p, fmt_time), o / p <= 1.5)),
    );
    if let Some(w) = find("crash_recovery") {
        for method in ["fork", "forkserver", "spawn"] {
            push(
                &format!("crash -> WorkerLost ({method})"),
                "<= 1 ms",
                w.median_of(&format!("pool {method}: crash -> WorkerLost"))
                    .map(|v| (fmt_time(v), v <= 1e-3)),
            );
        }
        for (name, limit) in [
            ("pool fork", 100e-6),
            ("pool forkserver", 400e-6),
            ("pool spawn", 400e-6),
            ("pool fork + warm spare", 100e-6),
            ("pool forkserver + warm spare", 400e-6),
            ("pool spawn + warm spare", 400e-6),
        ] {
            let replaced = w.median_of(&format!("{name}: death seen -> replacement ready"));
            // A `Fork` replacement is a fork of this process: its floor, measured in this run.
            let floor = if name == "pool fork" {
                w.median_of(crate::workloads::FORK_FLOOR)
            } else {
                None
            };
            // A spare does not change detection: its rows share the plain method's.
            let method = name.trim_end_matches(" + warm spare");
            let lost = w.median_of(&format!("{method}: crash -> WorkerLost"));
            push(
                &format!(
                    "replacing a dead worker ({})",
                    name.trim_start_matches("pool ")
                ),
                &format!("<= {}", fmt_time(limit)),
                replaced.map(|r| {
                    (
                        format!(
                            "{} (death seen -> replacement ready, measured in the pool); detecting the death took {}{}",
                            fmt_time(r),
                            lost.map(fmt_time).unwrap_or_else(|| "?".into()),
                            floor
                                .map(|f| format!(
                                    "; a bare fork() of this process until its child runs: {} ({:.1}x)",
                                    fmt_time(f),
                                    r / f
                                ))
                                .unwrap_or_default()
                        ),
                        r <= limit,
                    )
                }),
            );
        }
    }
    out
}

/// Runs everything `cfg` asks for, printing as it goes to `out`.
pub fn run(cfg: &Config, out: &mut dyn std::io::Write) -> std::io::Result<Report> {
    let start = Instant::now();
    let sys = system(cfg.params.python);
    writeln!(
        out,
        "# compare: processes vs threads vs peers, measured in one run\n"
    )?;
    writeln!(
        out,
        "machine: {} ({} CPUs), Linux {}, commit {}, python {}",
        sys.cpu, sys.cores, sys.kernel, sys.commit, sys.python
    )?;
    if sys.busy_before > 0.15 {
        writeln!(
            out,
            "WARNING: other processes kept the CPUs {:.0}% busy just before the run: figures will be noisy, and spinning round trips can be far slower when a peer loses its core (rerun on an idle machine)\n",
            sys.busy_before * 100.0
        )?;
    }
    writeln!(
        out,
        "method: warm-up, {} interleaved samples of ~{} ms per contender, median and p10..p90\n",
        cfg.reps,
        cfg.sample_time.as_millis()
    )?;
    if !cfg.contenders.is_empty() {
        // Ratios move with what else a run measures (see `keeps_contender`): say so.
        writeln!(
            out,
            "contenders: only {} (--contenders; the other contenders are not measured)\n",
            cfg.contenders.join(", ")
        )?;
    }
    // Our queue's receivers and pool workers let glibc keep up to 64 MiB of freed heap (see
    // `ipc_shm::os::keep_freed_heap`); the setting is process-wide, so once one of ours had run
    // here, the thread contenders that run after it in this process would get it too, and
    // results would depend on the order. Everybody gets it from the start instead.
    let heap_kept = ipc_shm::os::keep_freed_heap(64 << 20);
    writeln!(
        out,
        "allocator: glibc keeps up to 64 MiB of freed heap for every contender in this process ({})\n",
        if heap_kept {
            "set"
        } else {
            "not supported here"
        }
    )?;
    let _ = workloads::tasks::spin_rounds_per_us();
    let selected = selected(cfg);
    // The loaded pass measures the same workloads again (set-ups are one-shot, so a second,
    // identical list), each right after its quiet pass so drift hits both alike.
    let mut again: Vec<Option<Workload>> = if cfg.load > 0 {
        self::selected(cfg).into_iter().map(Some).collect()
    } else {
        Vec::new()
    };
    let passes = if cfg.load > 0 { 2 } else { 1 };
    let total: u64 = selected
        .iter()
        .map(|w| w.contenders.len() as u64 * (cfg.reps as u64 + 1) * passes)
        .sum::<u64>()
        + u64::from(cfg.crash_demo);
    let bar = if cfg.progress {
        indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        )
    } else {
        indicatif::ProgressBar::hidden()
    };
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    let mut results = Vec::new();
    let mut loaded = Vec::new();
    for (i, w) in selected.into_iter().enumerate() {
        let r = measure(w, cfg, &bar);
        bar.suspend(|| -> std::io::Result<()> {
            writeln!(out, "{}", workload_table(&r))?;
            out.flush()
        })?;
        results.push(r);
        if let Some(w) = again.get_mut(i).and_then(Option::take) {
            let hogs = Hogs::start(cfg.load);
            let mut r = measure(w, cfg, &bar);
            drop(hogs);
            r.title = format!("{}, beside {} CPU hogs", r.title, cfg.load);
            bar.suspend(|| -> std::io::Result<()> {
                writeln!(out, "{}", workload_table(&r))?;
                out.flush()
            })?;
            loaded.push(r);
        }
    }
    let crash = if cfg.crash_demo {
        bar.set_message("crash demonstration");
        let c = crash::containment(cfg.params.python);
        bar.inc(1);
        c
    } else {
        Vec::new()
    };
    bar.finish_and_clear();
    python::shutdown();

    writeln!(
        out,
        "## Headline (speed vs ours: > 1x means faster than ours)\n"
    )?;
    writeln!(out, "{}", headline(&results))?;
    if cfg.load > 0 {
        writeln!(
            out,
            "## Quiet vs beside {} CPU hogs (slowdown: > 1x means slower when loaded)\n",
            cfg.load
        )?;
        writeln!(out, "{}", load_table(&results, &loaded))?;
    }
    if !crash.is_empty() {
        writeln!(out, "## Crash containment\n")?;
        writeln!(out, "{}", crash_table(&crash))?;
    }
    let targets = check_targets(&results);
    if !targets.is_empty() {
        writeln!(
            out,
            "## Targets (TARGETS.md; ratios against peers of this run)\n"
        )?;
        writeln!(out, "| measure | target | this run | met |")?;
        writeln!(out, "|---|---|---|---|")?;
        for t in &targets {
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            writeln!(
                out,
                "| {} | {} | {} | {met} |",
                t.measure, t.target, t.measured
            )?;
        }
        writeln!(out)?;
    }
    let report = Report {
        system: sys,
        reps: cfg.reps,
        sample_seconds: cfg.sample_time.as_secs_f64(),
        workloads: results,
        load: cfg.load,
        contenders: cfg.contenders.clone(),
        loaded,
        crash,
        targets,
        wall_seconds: start.elapsed().as_secs_f64(),
    };
    if let Some(path) = &cfg.json {
        let json = serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?;
        std::fs::write(path, json)?;
        writeln!(out, "wrote {}", path.display())?;
    }
    if let Some(dir) = &cfg.plot {
        for p in crate::plot::write_charts(&report, dir)? {
            writeln!(out, "wrote {}", p.display())?;
        }
    }
    writeln!(out, "total time {:.1} s", report.wall_seconds)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A workload of `metric` whose contenders have these medians (`(name, kind, median)`).
    fn result(metric: Metric, contenders: &[(&str, Kind, f64)]) -> WorkloadResult {
        let ours = contenders
            .iter()
            .find(|c| c.1 == Kind::Ours)
            .map(|c| c.2)
            .unwrap_or(f64::NAN);
        WorkloadResult {
            id: "w".into(),
            family: "w".into(),
            param: None,
            title: "w".into(),
            metric,
            unit: "s",
            bytes_per_op: 0,
            contenders: contenders
                .iter()
                .map(|&(name, kind, median)| ContenderResult {
                    name: name.into(),
                    kind,
                    ops_per_iter: 1,
                    iters_per_sample: 1,
                    samples: vec![median],
                    summary: Some(Summary {
                        median,
                        p10: median,
                        p90: median,
                        spread: 0.0,
                    }),
                    speed_vs_ours: Some(match metric {
                        Metric::Latency => ours / median,
                        Metric::Throughput => median / ours,
                    }),
                    error: None,
                })
                .collect(),
            notes: Vec::new(),
            seconds: 0.0,
        }
    }

    fn row<'a>(table: &'a str, contender: &str) -> &'a str {
        table
            .lines()
            .find(|l| l.starts_with(&format!("| w | {contender} |")))
            .unwrap_or_else(|| panic!("no row for {contender}:\n{table}"))
    }

    #[test]
    fn the_headline_names_each_kinds_fastest_peer_with_or_without_ours() {
        // Without ours (filtered out, or failed) there is no ratio to rank by: the medians
        // decide, the lowest latency and the highest rate, and no ratio is printed.
        for (metric, fast, slow) in [
            (Metric::Latency, 1e-5, 3e-3),
            (Metric::Throughput, 3e6, 1e4),
        ] {
            let mut w = result(
                metric,
                // The fastest first: ranked by a missing ratio, the last would win.
                &[
                    ("fast pool", Kind::Thread, fast),
                    ("slow pool", Kind::Thread, slow),
                ],
            );
            for c in &mut w.contenders {
                c.speed_vs_ours = None;
            }
            let h = headline(std::slice::from_ref(&w));
            let line = row(&h, "-");
            assert!(line.contains("| fast pool: "), "{metric:?}: {line}");
            assert!(
                !line.contains("slow pool") && !line.contains("ours"),
                "{line}"
            );
        }
        // With ours, the same peer, and its ratio against ours.
        let w = result(
            Metric::Latency,
            &[
                ("pool", Kind::Ours, 2e-5),
                ("slow pool", Kind::Thread, 3e-3),
                ("fast pool", Kind::Thread, 1e-5),
            ],
        );
        let h = headline(std::slice::from_ref(&w));
        let line = h.lines().find(|l| l.starts_with("| w |")).unwrap();
        assert!(
            line.contains("| fast pool: ") && line.contains("(2.00x ours)"),
            "{line}"
        );
    }

    #[test]
    fn every_repetition_samples_each_contender_once_after_varied_predecessors() {
        for n in 0..9 {
            for rep in 0..20 {
                let mut order = sample_order(n, rep);
                assert_eq!(order, sample_order(n, rep), "the same in every run");
                order.sort_unstable();
                assert_eq!(order, (0..n).collect::<Vec<_>>(), "n {n} rep {rep}");
            }
        }
        // Six contenders (a CPU-bound workload's set), nine repetitions (the default): the old
        // rotate-and-reverse order gave each contender two predecessors; now each has several
        // and takes several positions, so neither a carry-over nor drift falls on one alone.
        let seq: Vec<usize> = (0..9).flat_map(|rep| sample_order(6, rep)).collect();
        for c in 0..6 {
            let mut before: Vec<usize> =
                seq.windows(2).filter(|w| w[1] == c).map(|w| w[0]).collect();
            before.sort_unstable();
            before.dedup();
            assert!(before.len() >= 4, "contender {c} follows only {before:?}");
            let mut at: Vec<usize> = (0..9)
                .map(|rep| sample_order(6, rep).iter().position(|&x| x == c).unwrap())
                .collect();
            at.sort_unstable();
            at.dedup();
            assert!(at.len() >= 4, "contender {c} only at positions {at:?}");
        }
    }

    #[test]
    fn contenders_are_kept_by_kind_or_name_prefix_case_ignored() {
        let Ok(Command::Run(cfg)) = parse_args(
            [
                "--contenders",
                "ours,Rayon,,floor",
                "--workloads",
                "cpu_100us",
            ]
            .map(String::from),
        ) else {
            panic!("the options parse");
        };
        assert_eq!(cfg.contenders, ["ours", "rayon", "floor"]);
        let keeps = |kind, name| keeps_contender(&cfg.contenders, kind, name);
        assert!(keeps(Kind::Ours, "pool map"));
        assert!(keeps(Kind::Thread, "rayon par_iter"));
        assert!(keeps(Kind::Floor, "ideal: 2 x one thread, no pool"));
        assert!(!keeps(Kind::Thread, "std::thread+crossbeam"));
        assert!(!keeps(Kind::Process, "procspawn pool"));
        assert!(keeps_contender(&[], Kind::Process, "procspawn pool"));
        // The selection applies it: only the kept contenders are set up and measured, and a
        // workload left with none is dropped.
        let picked = selected(&cfg);
        assert!(!picked.is_empty());
        for w in &picked {
            assert!(w.id.starts_with("cpu_100us"));
            let names: Vec<&str> = w.contenders.iter().map(|c| c.name.as_str()).collect();
            assert!(names.contains(&"pool map"), "{names:?}");
            assert!(names.contains(&"rayon par_iter"), "{names:?}");
            assert!(
                !names.iter().any(|n| n.starts_with("procspawn")),
                "{names:?}"
            );
        }
        let Ok(Command::Run(none)) =
            parse_args(["--contenders", "no-such-contender"].map(String::from))
        else {
            panic!("the options parse");
        };
        assert!(selected(&none).is_empty());
    }

    #[test]
    fn the_fork_replacement_reads_against_the_bare_fork_and_only_it() {
        let mut crash = result(
            Metric::Latency,
            &[
                ("pool fork: crash -> WorkerLost", Kind::Ours, 200e-6),
                (
                    "pool fork: death seen -> replacement ready",
                    Kind::Ours,
                    6e-3,
                ),
                (
                    "pool fork + warm spare: death seen -> replacement ready",
                    Kind::Ours,
                    20e-6,
                ),
                ("pool forkserver: crash -> WorkerLost", Kind::Ours, 200e-6),
                (
                    "pool forkserver: death seen -> replacement ready",
                    Kind::Ours,
                    200e-6,
                ),
                (crate::workloads::FORK_FLOOR, Kind::Floor, 4e-3),
            ],
        );
        crash.id = "crash_recovery".into();
        let checks = check_targets(&[crash]);
        let check = |measure: &str| {
            checks
                .iter()
                .find(|c| c.measure == measure)
                .unwrap_or_else(|| panic!("no check {measure}: {checks:?}"))
        };
        let fork = check("replacing a dead worker (fork)");
        assert!(
            fork.measured
                .ends_with("a bare fork() of this process until its child runs: 4.00 ms (1.5x)"),
            "{fork:?}"
        );
        // The floor explains the figure; the target stays the target.
        assert_eq!(fork.met, Some(false));
        // A spare's replacement and the fork server's are no fork of this process.
        for other in [
            "replacing a dead worker (fork + warm spare)",
            "replacing a dead worker (forkserver)",
        ] {
            let c = check(other);
            assert!(!c.measured.contains("bare fork"), "{c:?}");
            assert_eq!(c.met, Some(true), "{c:?}");
        }
    }

    #[test]
    fn the_loaded_verdict_is_each_contenders_own_and_counts_still_being_faster() {
        // Latency. A sleeping peer that gets faster under load (50 us -> 12 us) is the fastest
        // loaded peer; `fast` degrades 10x but is still faster than it loaded (yes), `slow`
        // degrades 20x and is slower than it loaded (NO), `steady` degrades less (yes).
        let quiet = result(
            Metric::Latency,
            &[
                ("fast", Kind::Ours, 1e-6),
                ("slow", Kind::Ours, 1e-6),
                ("steady", Kind::Ours, 100e-6),
                ("sleeper", Kind::Process, 50e-6),
                ("spinner", Kind::Thread, 2e-6),
                ("floor", Kind::Floor, 0.1e-6),
            ],
        );
        let loaded = result(
            Metric::Latency,
            &[
                ("fast", Kind::Ours, 10e-6),
                ("slow", Kind::Ours, 20e-6),
                ("steady", Kind::Ours, 20e-6),
                ("sleeper", Kind::Process, 12e-6),
                ("spinner", Kind::Thread, 40e-6),
                ("floor", Kind::Floor, 0.01e-6),
            ],
        );
        let table = load_table(&[quiet], &[loaded]);
        assert!(
            row(&table, "fast").contains("| yes (10x vs sleeper 0.24x;"),
            "{table}"
        );
        assert!(
            row(&table, "slow").contains("| NO (20x vs sleeper 0.24x;"),
            "{table}"
        );
        assert!(
            row(&table, "steady").contains("| yes (0.20x vs sleeper"),
            "{table}"
        );
        // Peers and floors get no verdict, and a floor is never the peer compared against.
        assert!(row(&table, "sleeper").ends_with("|  |"), "{table}");
        assert!(row(&table, "floor").ends_with("|  |"), "{table}");

        // Throughput: higher is better when loaded too.
        let quiet = result(
            Metric::Throughput,
            &[
                ("ahead", Kind::Ours, 10e6),
                ("behind", Kind::Ours, 10e6),
                ("peer", Kind::Thread, 4e6),
            ],
        );
        let loaded = result(
            Metric::Throughput,
            &[
                ("ahead", Kind::Ours, 7e6),
                ("behind", Kind::Ours, 5e6),
                ("peer", Kind::Thread, 6e6),
            ],
        );
        let table = load_table(&[quiet], &[loaded]);
        assert!(row(&table, "ahead").contains("| yes ("), "{table}");
        assert!(row(&table, "behind").contains("| NO ("), "{table}");
    }
}
