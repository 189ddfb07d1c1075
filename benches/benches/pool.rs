//! The pool against thread pools, procspawn and Python, with the workloads of the comparison
//! runner (`benches::workloads`, one definition for both).
//!
//! Groups (ours in `<family>`, the peers in `compare_<family>`):
//! - `apply`: one trivial task there and back on a hot 2-worker pool.
//! - `map_trivial`: `map` of 1 M trivial tasks, automatic chunks.
//! - `cpu_10us`, `cpu_100us`: CPU-bound tasks (a calibrated arithmetic spin) at 1..N workers.
//! - `payload_1MiB`: tasks with a 1 MiB argument.
//! - `crash_recovery`: a task aborts its worker; time until the replacement's first result,
//!   for the fork, forkserver and spawn start methods (and two plain round trips as baseline).
//!
//! Peers: rayon, a std::thread + crossbeam-channel pool, the threadpool crate, procspawn's
//! pool, a socketpair or ipc-channel server for `apply`, and Python's multiprocessing when
//! python3 is present. `cargo bench -p benches --bench pool` takes a few minutes; pass a filter
//! (e.g. `-- apply`) for one group.

use std::time::Duration;

use benches::workloads::{self, Kind, Params, Workload};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};

fn bench_workload(c: &mut Criterion, w: Workload) {
    let (family, variant) = match w.id.split_once('/') {
        Some((f, v)) => (f.to_string(), Some(v.to_string())),
        None => (w.id.clone(), None),
    };
    for spec in w.contenders {
        let group_name = if spec.kind == Kind::Ours {
            family.clone()
        } else {
            format!("compare_{family}")
        };
        let id = match &variant {
            Some(v) => BenchmarkId::new(spec.name.clone(), v),
            None => BenchmarkId::from_parameter(spec.name.clone()),
        };
        let mut runner = match (spec.setup)() {
            Ok(r) => r,
            Err(e) => {
                println!("note: {group_name}/{}: not measured: {e}", spec.name);
                continue;
            }
        };
        let mut g = c.benchmark_group(group_name);
        g.sample_size(10);
        if family == "crash_recovery" {
            // Each iteration also spends untimed wall time (the crash before the timed
            // replacement, ~20 ms of death detection today), which criterion does not see when
            // it sizes the samples from the timed part: keep the measured time tiny.
            g.sampling_mode(SamplingMode::Flat)
                .warm_up_time(Duration::from_millis(200))
                .measurement_time(Duration::from_millis(50));
        }
        if runner.ops_per_iter > 1 {
            g.throughput(Throughput::Elements(runner.ops_per_iter));
        }
        g.bench_function(id, |b| {
            b.iter_custom(|iters| match (runner.run)(iters) {
                Ok(t) => t,
                Err(e) => panic!("{}: {e}", spec.name),
            })
        });
        g.finish();
    }
}

fn main() {
    benches::init();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let p = Params::default();
    let mut list = vec![workloads::pool_apply(&p), workloads::map_trivial(&p)];
    list.extend(workloads::cpu_tasks(&p, 10));
    list.extend(workloads::cpu_tasks(&p, 100));
    list.push(workloads::payload_tasks(&p));
    list.push(workloads::crash_recovery(&p));
    for w in list {
        bench_workload(&mut c, w);
    }
    workloads::python::shutdown();
    c.final_summary();
}
