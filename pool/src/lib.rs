//! `Process` and a worker `Pool` with the API of Python's `multiprocessing`, that survives
//! crashing, hanging and leaking workers.
//!
//! - [`Pool`]: Python's whole `Pool` API: `apply`, `apply_async` and `map_async` (with
//!   callbacks, and an [`AsyncResult`] that is also a `Future`), `map`/`starmap`/`starmap_async`
//!   with automatic or explicit chunk sizes, lazy and bounded `imap`/`imap_unordered`,
//!   `close`/`join`/`terminate`; and what Python's lacks: cancellation
//!   ([`AsyncResult::cancel`], dropping an [`Imap`]) and [`Pool::stats`].
//! - [`PoolBuilder`]: processes (default: the CPUs this process may use, cgroup quota
//!   respected), an initializer, `max_tasks_per_child` (with jitter), `max_memory_per_child`,
//!   `task_timeout`, elastic sizing (`max_workers`, `min_idle`, `max_idle`, `idle_timeout`), a
//!   warm spare that replaces a dead worker in microseconds (`warm_spare`) and the
//!   [`StartMethod`].
//! - [`Process`]: one function in one child, its result or panic returned to the parent;
//!   dropping it unjoined is bounded ([`ProcessBuilder::drop_grace`]).
//!
//! Tasks are plain functions `fn(A) -> R` (closures that capture nothing coerce to them) with
//! serde arguments and results. A worker finds the function by its offset from an anchor symbol
//! of the same executable, and refuses to run a different build.
//!
//! ```
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! let pool = pool::PoolBuilder::new().processes(2).build()?;
//! assert_eq!(pool.map(square, 0..5u64)?, vec![0, 1, 4, 9, 16]);
//! assert_eq!(pool.apply(|s: String| s.len(), "four".to_string())?, 4);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Failures stay with their task
//!
//! A task that panics fails with [`TaskError::Panicked`] (its message, location and, with
//! `RUST_BACKTRACE` set in the worker, the worker's backtrace) and its worker lives on. A worker that
//! dies (SIGKILL, SIGSEGV, `abort`, `exit`) fails only the task it was running with
//! [`TaskError::WorkerLost`] and is replaced; the other tasks of its chunk that had not started
//! run elsewhere, and no task ever runs twice. (Results of tasks shorter than 50 us that
//! finished in the last 50 us before the death are lost with it and fail too.) A task that exceeds `task_timeout` fails with [`TaskError::Timeout`]; its
//! worker is killed and replaced. Workers that keep failing at start-up by their own doing (the
//! initializer's error or panic, an exit, a crash) trip a breaker instead of respawning
//! forever; workers killed from outside while they start are replaced, and trip it only at 20
//! times that rate. Once it trips, every remaining task gets its error. A killed fork server
//! costs only the workers it took with it: the next worker needed starts a new one. Python's `Pool` hangs in these cases and
//! `ProcessPoolExecutor` breaks as a whole.
//!
//! A cancelled task fails with [`TaskError::Cancelled`] (a running one's worker is killed and
//! replaced, which never counts towards the breaker); every task that [`Pool::terminate`] or
//! dropping the pool cuts short, queued or running, fails with [`TaskError::Terminated`].
//!
//! The parent's death, even by SIGKILL, ends every worker (`PR_SET_PDEATHSIG`, and workers also
//! see their pipe hang up). Pools, workers and the fork server talk only over descriptors they
//! inherit; no filesystem name is created, and shared memory is anonymous (memfd, `0600`).
//!
//! # Handing IPC objects to processes and workers
//!
//! Python's `Process(target=f, args=(queue, lock))` and `Pool(initializer=init,
//! initargs=(queue,))` work the same way here: an `ipc_queue::Queue` or `JoinableQueue`, an
//! `ipc_pipe::Connection` (or `Sender`/`Receiver`), an `ipc_shm::Segment`, and a
//! `SharedValue`/`SharedSlice` (which is how a `Lock`, `Event`, `Semaphore`, `Barrier`,
//! `Condition` or `RLock` living in a segment travels: `SharedValue<ipc_sync::Lock>`) may be
//! arguments of [`ProcessBuilder::spawn`], [`PoolBuilder::initializer`] and every task
//! ([`Pool::apply`], [`Pool::map`], ...), on all three start methods. The descriptor travels
//! with the message (`SCM_RIGHTS` over the worker's pipe, as Python's resource sharer does),
//! and the worker rebuilds the handle through the validated open path, so the segment header
//! (and a queue's or pipe's control block, and a `SharedValue`'s layout) is checked again
//! there. This is also how the default [`StartMethod::ForkServer`] workers, which inherit
//! nothing the parent created after start-up, get them. See `ipc_shm::transfer` for the
//! mechanism.
//!
//! A handle that cannot travel (a pipe end already given away, too many descriptors) fails the
//! submit: `apply` returns [`TaskError::Unsendable`], `spawn` and `initializer` a
//! [`ConfigError::UnsendableArgument`], each with the [`HandleError`] that says why; it never
//! reaches the worker. Results do not carry handles (a handle in a result fails with
//! [`TaskError::Result`]): create shared objects in the parent and hand them down.
//!
//! Ownership: sending duplicates a queue, segment or shared value (both processes use the same
//! memory; the creator of a named segment unlinks it, receivers never do; a memfd lives while
//! any process holds it). A pipe end is different: it has one user, and **a pipe end moved into
//! a child is gone from the parent** (the parent's handle is released quietly when dropped, and
//! cannot be sent again). With [`StartMethod::Fork`] the child also inherits a copy of every
//! descriptor the parent had at the fork, the parent's own pipe ends included, so the child
//! does not see the parent's end hang up when the parent drops it: end such conversations with
//! a message. A `Lock`'s owner-death recovery works across all the processes it was handed to.
//!
//! A producer and a consumer `Process` on one queue:
//!
//! ```
//! use ipc_queue::{Queue, QueueBuilder};
//!
//! fn produce(q: Queue<u64>) {
//!     for i in 1..=3 {
//!         q.put(i).unwrap();
//!     }
//! }
//!
//! fn consume(q: Queue<u64>) -> u64 {
//!     (0..3).map(|_| q.get().unwrap()).sum()
//! }
//!
//! let q: Queue<u64> = QueueBuilder::new().build()?;
//! let consumer = pool::ProcessBuilder::new().spawn(consume, q.clone())?;
//! let producer = pool::ProcessBuilder::new().spawn(produce, q.clone())?;
//! producer.join().result?;
//! assert_eq!(consumer.join().result?, 6);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A pool whose initializer receives a `Lock` and a counter:
//!
//! ```
//! use std::sync::OnceLock;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use ipc_shm::SharedValue;
//! use ipc_sync::Lock;
//!
//! static SHARED: OnceLock<(SharedValue<Lock>, SharedValue<AtomicU64>)> = OnceLock::new();
//!
//! fn init(shared: (SharedValue<Lock>, SharedValue<AtomicU64>)) {
//!     let _ = SHARED.set(shared);
//! }
//!
//! fn count(_: u32) {
//!     let (lock, counter) = SHARED.get().expect("the initializer ran");
//!     let _guard = lock.lock().expect("the lock");
//!     // Not atomic on purpose: the lock makes the read-modify-write safe.
//!     counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
//! }
//!
//! let lock = SharedValue::<Lock>::new_anonymous()?;
//! let counter = SharedValue::<AtomicU64>::new_anonymous()?;
//! let pool = pool::PoolBuilder::new()
//!     .processes(2)
//!     .initializer(init, (lock, counter.clone()))
//!     .build()?;
//! pool.map(count, 0..100u32)?;
//! assert_eq!(counter.load(Ordering::Relaxed), 100);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A `Process` that talks over a pipe:
//!
//! ```
//! use ipc_pipe::Connection;
//!
//! fn shout(conn: Connection) {
//!     while let Ok(line) = conn.recv::<String>() {
//!         conn.send(&line.to_uppercase()).unwrap();
//!     }
//! }
//!
//! let (mine, theirs) = ipc_pipe::pipe()?;
//! // `theirs` moves into the child: this process no longer holds that end.
//! let child = pool::ProcessBuilder::new().spawn(shout, theirs)?;
//! mine.send(&"hello")?;
//! assert_eq!(mine.recv::<String>()?, "HELLO");
//! drop(mine); // the child's `recv` sees the hang-up, and it returns
//! child.join().result?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Large arguments
//!
//! A job whose encoded arguments take 128 KiB to 64 MiB does not stream them through the
//! worker's pipe: the caller encodes them straight into a shared segment (one of a few it
//! recycles) that the worker is handed like any other handle and decodes straight out of, so a
//! megabyte argument is copied twice in all, and neither side waits for the other to drain a
//! ring (a byte string such as a `serde_bytes::ByteBuf` is copied once into its own allocation,
//! never zero-filled first). The first large job of a process takes one copy more (into the
//! seat's own segment): only then does the pool start sizing arguments before it encodes them.
//! Each worker keeps up to 64 MiB of these segments mapped, and up to 64 MiB of freed heap
//! (glibc's trim threshold) so that decoding megabyte arguments task after task does not fault
//! the same pages in again and again; count both when you set `max_memory_per_child`. Results
//! travel through the pipe whatever their size.
//!
//! To copy large data no more than once, put it in an `ipc_sync::ShmArena`'s block (an
//! `ipc_sync::ShmVec`) and pass its token: the worker reads the block in place, and freeing it
//! (dropping the vector) hands the block back to the caller's next allocation. The arena
//! travels like any handle (here through the initializer), so this works on every start method:
//!
//! ```
//! use std::sync::OnceLock;
//! use ipc_sync::{ShmArena, ShmToken, ShmVec};
//!
//! static ARENA: OnceLock<ShmArena> = OnceLock::new();
//!
//! fn keep(arena: ShmArena) {
//!     let _ = ARENA.set(arena);
//! }
//!
//! fn checksum(token: ShmToken<u8>) -> u64 {
//!     let block = ARENA.get().expect("initialised").adopt(token).expect("adopt");
//!     block.iter().map(|&b| u64::from(b)).sum() // read in place; the block is freed after
//! }
//!
//! let arena = ShmArena::builder().block_size(1 << 20).blocks(8).create()?;
//! let pool = pool::PoolBuilder::new().processes(2).initializer(keep, arena.clone()).build()?;
//! let mut tokens = Vec::new();
//! for i in 0..4u8 {
//!     let mut v: ShmVec<u8> = arena.alloc(1 << 20)?; // waits while all blocks are in use
//!     v.fill(i);
//!     tokens.push(v.into_token()?);
//! }
//! assert_eq!(pool.map(checksum, tokens)?, [0, 1 << 20, 2 << 20, 3 << 20]);
//! assert_eq!(arena.counts().free, 8); // every worker freed its block
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Start methods
//!
//! See [`StartMethod`]. `ForkServer` and `Spawn` need [`init`] to run first in the program; with
//! the default `ctor` feature it runs by itself before `main`, in test binaries too.
//!
//! # Dependencies
//!
//! - `ipc-pipe` (one duplex pipe per worker: tasks out, results back, death detection) and
//!   `ipc-shm` (the workers' progress slots).
//! - `serde` and `bincode` 2: arguments, results and protocol frames.
//! - `crossbeam-channel`: the parent's job queue and result streams (`select` with a timeout).
//! - No OS crate of its own: fork, waitpid, signals, pidfds, `signalfd` and `SCM_RIGHTS` for
//!   the fork server come from the workspace's OS layer, [`ipc_shm::os`], which the test harness
//!   shares. `unsafe` is allowed in two modules only: `task` (the trampoline) and `slot` (the
//!   progress words in shared memory).
//! - `thiserror`: error `Display`. `ctor` (optional, default): run [`init`] before `main`.
//!   `indicatif` (optional, feature `progress`): `progress_bar()`.
//!
//! # Where things are
//!
//! A call reads downward through the private modules: `api` (the `Pool` handle and its
//! builder) makes a `job`, queues it in the `registry` (or runs it on an idle worker's seat),
//! a `driver` thread sends it down the `wire` (`protocol`, `codec`, `args`: arguments that
//! carry IPC handles and their descriptors, `transport` over `ipc-pipe`) to a worker (`worker`, started by `start/`: fork, spawn, fork server and
//! [`init`]). `sizing` grows, shrinks and recycles workers and holds the restart breaker;
//! `result` and `imap` hand outcomes back; `task` and `slot` are the two halves that run in
//! the worker (the function trampoline, the progress words in shared memory).
#![deny(unsafe_code)]

mod api;
mod chunking;
#[cfg(feature = "nats")]
pub mod cluster;
mod driver;
mod error;
mod imap;
mod job;
mod process;
mod registry;
mod result;
mod sizing;
mod slot;
mod spare;
mod start;
mod stats;
mod task;
mod wire;
mod worker;

pub use api::{Pool, PoolBuilder};
pub use error::{
    ConfigError, EncodeError, Exit, HandleError, OsError, PanicLocation, PoolError, SpawnError,
    TaskError, WorkerBacktrace,
};
pub use imap::Imap;
pub use process::{DEFAULT_DROP_GRACE, Finished, Process, ProcessBuilder};
pub use result::{AsyncResult, CancelOutcome};
pub use start::StartMethod;
pub use start::init::init;
pub use stats::{NodeStats, PoolStats, WorkerState, WorkerStats};

/// A progress hook for [`Pool::map_with_progress`] that draws an `indicatif` progress bar on
/// standard error.
#[cfg(feature = "progress")]
pub fn progress_bar(total: u64) -> impl Fn(u64, u64) + Send + Sync + 'static {
    let bar = indicatif::ProgressBar::new(total);
    move |done, total| {
        bar.set_length(total);
        bar.set_position(done);
        if done == total {
            bar.finish();
        }
    }
}

/// The instant `timeout` from now, saturating: a timeout too long to add to the clock (such as
/// `Duration::MAX`) becomes a deadline about a century away, which no wait reaches, instead of
/// the panic of `Instant + Duration`.
pub(crate) fn deadline_after(timeout: std::time::Duration) -> std::time::Instant {
    /// Far enough to mean "never", near enough to add to any clock reading.
    const FAR: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);
    let now = std::time::Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

/// Test support, not part of the API: the pid of this process's current fork server, if one
/// runs (the fault suite kills it to check that pools recover).
#[doc(hidden)]
pub fn __fork_server_pid() -> Option<u32> {
    start::fork_server_pid()
}

/// Test support, not part of the API: the pid of this process's ready `Spawn` standby, if one
/// waits (a scan of `/proc` for workers must leave it out; call it after the scan).
#[doc(hidden)]
pub fn __spawn_standby_pid() -> Option<u32> {
    start::spawn_standby_pid()
}

/// The start method used when none is given: `ForkServer` when [`init`] has run (always, with
/// the default `ctor` feature), `Fork` otherwise.
pub fn default_start_method() -> StartMethod {
    if start::init::initialised() {
        StartMethod::ForkServer
    } else {
        StartMethod::Fork
    }
}

// The README's code blocks are compiled and run as doctests, so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}
