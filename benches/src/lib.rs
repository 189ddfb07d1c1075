//! Shared workloads of the criterion benchmarks and the comparison runner.
//!
//! - [`floor`]: the machine's floor (spin and futex ping-pong between processes, memcpy).
//! - [`workloads`]: every workload, defined once, with its contenders (ours, thread peers,
//!   process peers, Python, the floor); used by `benches/benches/pool.rs` and by the runner.
//! - [`runner`]: the comparison runner behind `cargo run --release -p benches --bin compare`:
//!   interleaved repetitions, medians and spread, the table, JSON, charts ([`plot`]).
//! - [`proc`]: forked helper processes and process-shared memory for the peers.
//!
//! Dependencies beyond our crates: `rayon`, `threadpool`, `crossbeam-channel`, `procspawn`,
//! `ipc-channel` (the peers); `serde`, `serde_bytes`, `bincode` (payloads and socketpair
//! frames); `serde_json` (the runner's `--json`); `plotters` (SVG charts); `indicatif` (the
//! progress bar); `libc` (process-shared pthread mutexes, `PR_SET_DUMPABLE`: what the OS layer
//! `ipc_shm::os`, which forks, kills and reaps the helper processes, has no form for).
#![deny(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};

pub mod floor;
pub mod plot;
pub mod proc;
pub mod runner;
pub mod workloads;

static PROCSPAWN_READY: AtomicBool = AtomicBool::new(false);

/// Call first thing in `main` of a binary that measures the process-based contenders, before
/// any thread exists: runs `pool::init()` and `procspawn::init()` (in a worker of either it
/// never returns).
pub fn init() {
    pool::init();
    workloads::serve_raw_consumer_if_asked();
    procspawn::init();
    proc::allow_procspawn();
    PROCSPAWN_READY.store(true, Ordering::SeqCst);
}

/// Whether [`init`] ran (procspawn's pool works only then).
pub fn procspawn_ready() -> bool {
    PROCSPAWN_READY.load(Ordering::SeqCst)
}

// The README's code blocks are compiled and run as doctests, so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}
