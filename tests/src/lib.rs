//! Test support for multi-process tests: children re-run from the test binary, watchdogs that
//! turn a deadlock into a failure, and unique shared-memory names that clean up after themselves.
//!
//! Every crate of the workspace uses it from its `tests/` (as a dev-dependency), and this
//! package's own `tests/` hold the cross-crate integration and fault tests.
//!
//! # Children re-run from the test binary
//!
//! [`child_entry!`] declares a child entry point. It becomes an `#[ignore]`d test that does
//! nothing in a normal run; [`child!`] builds a [`ChildCommand`] that re-runs the current test
//! binary with `--exact <that test> --ignored` and an environment variable that tells the entry it
//! is the chosen child. The child reports through its exit status (a panic exits with 101) and
//! whatever shared memory or descriptors the parent handed it.
//!
//! ```no_run
//! use std::time::Duration;
//! use ipc_tests::{child, child_entry};
//!
//! child_entry! {
//!     fn reads_env() {
//!         assert_eq!(std::env::var("GREETING").unwrap(), "hello");
//!     }
//! }
//!
//! #[test]
//! fn parent() {
//!     let status = child!(reads_env)
//!         .env("GREETING", "hello")
//!         .watchdog(Duration::from_secs(30))
//!         .run();
//!     assert!(status.success(), "{status:?}");
//! }
//! ```
//!
//! # Forked children
//!
//! [`fork_child`] runs a closure in a `fork`ed copy of the test process, for tests that need the
//! parent's memory as it is (a mapping, a descriptor). The child must only do simple work: other
//! test threads may hold locks at the instant of the fork.
//!
//! # Watchdogs and clean-up
//!
//! Every child is killed (SIGKILL) if it outlives its watchdog, and the waiting test then panics
//! with the child's output. A child also gets `PR_SET_PDEATHSIG(SIGKILL)`, so a test process that
//! dies takes its children with it, and a [`ChildProcess`] that is dropped kills and reaps its
//! child. [`ShmName`] gives each test a unique shared-memory name and unlinks it on drop.
//!
//! # Counting allocator
//!
//! [`alloc::CountingAllocator`] records the largest single allocation each thread makes; a test
//! binary that installs it as its `#[global_allocator]` can show with
//! [`alloc::largest_allocation`] that decoding garbage allocates nothing near a hostile length.
//! It is the crate's one unsafe-allowed module (the `GlobalAlloc` impl).
//!
//! # Dependencies
//! - `ipc-shm`, for its OS layer [`ipc_shm::os`] alone: fork, `PR_SET_PDEATHSIG`, `pidfd_open`
//!   and `poll` (to wait for a child with a timeout and no sleeping loop), kill, waitpid,
//!   `shm_unlink`: the same helpers the pool uses. (ipc-shm's own tests use this crate as a
//!   dev-dependency; cargo allows that cycle.)
#![deny(unsafe_code)]

pub mod alloc;
mod child;

pub use child::{ChildCommand, ChildOutcome, ChildProcess, fork_child};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The environment variable that names the child entry a re-run test binary should act as.
pub const CHILD_ENV: &str = "IPC_TESTS_CHILD";

/// The prefix of every shared-memory name made by [`ShmName`] (used to check for leaks).
pub const SHM_PREFIX: &str = "ipct-";

/// The default watchdog: how long a child may run before it is killed and the test fails.
pub const DEFAULT_WATCHDOG: Duration = Duration::from_secs(60);

/// Declares child entry points: functions run only in a child started with [`child!`].
///
/// Each becomes an `#[ignore]`d `#[test]` that returns at once unless this process was started
/// as that child; then it runs the body and exits the process with status 0, or 101 if the body
/// panicked.
#[macro_export]
macro_rules! child_entry {
    ($(fn $name:ident() $body:block)*) => {
        $(
            #[test]
            #[ignore = "child entry point, run by ipc_tests::child!"]
            fn $name() {
                if $crate::is_child(module_path!(), stringify!($name)) {
                    $crate::run_child(|| $body);
                }
            }
        )*
    };
}

/// A [`ChildCommand`] that re-runs this test binary as the child entry `$name` (declared with
/// [`child_entry!`] in the same module).
#[macro_export]
macro_rules! child {
    ($name:ident) => {
        $crate::ChildCommand::for_entry(module_path!(), stringify!($name))
    };
}

/// One copy of each test per pool start method: `per_start_method!(a, b)` declares modules
/// `fork`, `forkserver` and `spawn`, each with tests `a` and `b` calling `super::a(method)`. The
/// caller's crate must depend on `pool` (the macro names `pool::StartMethod` where it expands).
#[macro_export]
macro_rules! per_start_method {
    ($($test:ident),* $(,)?) => {
        mod fork {
            $( #[test] fn $test() { super::$test(pool::StartMethod::Fork) } )*
        }
        mod forkserver {
            $( #[test] fn $test() { super::$test(pool::StartMethod::ForkServer) } )*
        }
        mod spawn {
            $( #[test] fn $test() { super::$test(pool::StartMethod::Spawn) } )*
        }
    };
}

/// The test name of an entry: its module path without the crate name, then the function.
#[doc(hidden)]
pub fn entry_test_name(module_path: &str, name: &str) -> String {
    match module_path.split_once("::") {
        Some((_, rest)) => format!("{rest}::{name}"),
        None => name.to_owned(),
    }
}

/// Whether this process was started as the child entry `name` of `module_path`.
#[doc(hidden)]
pub fn is_child(module_path: &str, name: &str) -> bool {
    std::env::var(CHILD_ENV).is_ok_and(|v| v == entry_test_name(module_path, name))
}

/// Runs a child body and exits the process: 0 on return, 101 on panic.
#[doc(hidden)]
pub fn run_child(body: impl FnOnce()) -> ! {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    std::process::exit(if result.is_ok() { 0 } else { 101 })
}

/// A unique POSIX shared-memory name for one test, unlinked when dropped.
///
/// ```
/// let name = ipc_tests::ShmName::new("demo");
/// assert!(name.as_str().starts_with(ipc_tests::SHM_PREFIX));
/// assert_ne!(name.as_str(), ipc_tests::ShmName::new("demo").as_str());
/// ```
#[derive(Debug)]
pub struct ShmName {
    name: String,
    owner: u32,
}

impl ShmName {
    /// A new name containing `label`, this process's id and a counter.
    pub fn new(label: &str) -> ShmName {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        ShmName {
            name: format!("{SHM_PREFIX}{label}-{}-{n}-{nanos:x}", std::process::id()),
            owner: std::process::id(),
        }
    }

    /// The name, without a leading `/`.
    pub fn as_str(&self) -> &str {
        &self.name
    }
}

impl std::ops::Deref for ShmName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl Drop for ShmName {
    fn drop(&mut self) {
        if self.owner == std::process::id() {
            ipc_shm::os::shm_unlink_quiet(&self.name);
        }
    }
}

/// A watchdog for a test that runs no child but could still hang (it exercises corrupted
/// shared memory, say): if the returned guard is still alive after `limit`, the whole test
/// process prints `label` and aborts, so the run fails instead of stalling. Dropping the guard
/// disarms it.
///
/// ```
/// let _watchdog = ipc_tests::watchdog("this doc test", std::time::Duration::from_secs(60));
/// // ... work that must not hang ...
/// ```
pub fn watchdog(label: &str, limit: Duration) -> Watchdog {
    let state = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let theirs = state.clone();
    let label = label.to_owned();
    std::thread::spawn(move || {
        let (done, cv) = &*theirs;
        let guard = done.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = cv
            .wait_timeout_while(guard, limit, |done| !*done)
            .unwrap_or_else(|p| p.into_inner());
        if !*guard {
            eprintln!("watchdog: {label} still running after {limit:?}; aborting the test process");
            std::process::abort();
        }
    });
    Watchdog { state }
}

/// Disarms its [`watchdog`] when dropped.
#[derive(Debug)]
pub struct Watchdog {
    state: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (done, cv) = &*self.state;
        *done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }
}

/// The names in `/dev/shm` that start with `prefix`.
pub fn shm_names_with_prefix(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Whether a process with this id exists and is not a zombie (reads `/proc/<pid>/stat`).
pub fn process_is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

// The workspace's root README and this package's README: every code block is compiled and run
// as a doctest (this package dev-depends on every crate), so no example can rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
mod root_readme {}

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}
