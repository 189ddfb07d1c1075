//! Finding a task's function in another process: offsets from an anchor symbol.
//!
//! A task is a plain `fn(A) -> R`. Its address means nothing in another process (ASLR places
//! the binary elsewhere), but its *offset* from a known symbol of the same binary does. So the
//! parent sends two offsets from the anchor: the user's function, and a monomorphised
//! *trampoline* (`call_chunk::<A, R>`) that decodes a chunk of `A`s (one bincode sequence),
//! calls the function on each (catching panics), and encodes runs of `Result<R, Failure>`. The
//! worker adds its own anchor address back and calls the trampoline.
//!
//! Encoding whole chunks, rather than argument by argument, is what makes `map` over millions of
//! tiny tasks cheap: one decode call per chunk in the worker, one per results message in the
//! parent.
//!
//! That is only sound if the worker runs the very same build. Workers started by `fork` share
//! the parent's memory image; a spawned worker executes `/proc/self/exe` of the parent. Every
//! worker also reports the identity of its executable (device, inode, size, modification time)
//! in its first message, and the pool refuses a worker whose identity differs from its own
//! ([`crate::PoolError::BuildMismatch`]) before sending it any task.
#![allow(unsafe_code)]

use std::any::Any;
use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::PanicLocation;
use crate::wire::bulk::Input;
use crate::wire::codec;
use crate::wire::outcome::OkWire;

/// The anchor every task offset is measured from. Never inlined, never merged: it must have an
/// address of its own in the binary.
#[inline(never)]
#[unsafe(no_mangle)]
pub(crate) extern "C" fn ipc_pool_task_anchor() -> u64 {
    // A distinctive body so identical-code folding cannot merge it with another function.
    std::hint::black_box(0x1bc0_900c_a9c4_0eed)
}

fn anchor() -> usize {
    ipc_pool_task_anchor as *const () as usize
}

/// Why a task produced no result (the task's own failure, reported to its caller only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Failure {
    /// A panic known by its message only.
    Panicked(String),
    /// The function panicked: the message, where, and the worker's backtrace if it took one.
    PanickedAt {
        message: String,
        location: Option<PanicLocation>,
        backtrace: Option<String>,
    },
    /// The argument could not be decoded in the worker.
    DecodeArgument(String),
    /// The result could not be encoded in the worker.
    EncodeResult(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Panicked(m) => write!(f, "panicked: {m}"),
            Failure::PanickedAt {
                message,
                location: Some(at),
                ..
            } => write!(f, "panicked at {at}: {message}"),
            Failure::PanickedAt { message, .. } => write!(f, "panicked: {message}"),
            Failure::DecodeArgument(m) => write!(f, "the argument did not decode: {m}"),
            Failure::EncodeResult(m) => write!(f, "the result did not encode: {m}"),
        }
    }
}

/// What a chunk trampoline needs from the worker around it.
pub(crate) trait ChunkCtx {
    /// The chunk has `tasks` arguments, about to run (called once, before the first).
    fn begin(&mut self, _tasks: usize) {}
    /// Whether enough time or data (`pending_bytes` of encoded outcomes) has accumulated to
    /// send what is ready.
    fn flush_due(&mut self, pending_bytes: usize) -> bool;
    /// Sends the outcomes of arguments `first..first + count`: `outcomes` holds their `count`
    /// encodings (each a `Result<R, Failure>`) one after the other, without the sequence's
    /// length, which the context puts in front (on the wire they are one
    /// `Vec<Result<R, Failure>>`); `done` on the chunk's last call. `Err` if the pool is gone.
    fn flush(&mut self, first: usize, count: usize, outcomes: &[u8], done: bool) -> Result<(), ()>;
    /// The chunk's arguments could not be decoded at all.
    fn chunk_failed(&mut self, failure: Failure) -> Result<(), ()>;
    /// An empty buffer for the chunk's encoded outcomes: one the context kept from an earlier
    /// chunk ([`keep_buffer`](ChunkCtx::keep_buffer)), so a worker running one small chunk
    /// after another (every `apply`) does not allocate one per chunk.
    fn take_buffer(&mut self) -> Vec<u8> {
        Vec::new()
    }
    /// The outcome buffer back, once the chunk's last outcomes are sent.
    fn keep_buffer(&mut self, _buf: Vec<u8>) {}
}

/// Runs the function at `func` over an encoded chunk of arguments, storing 1 + the index of
/// the argument about to run into `running` before each (the worker's progress word: a plain
/// store, not a call through `ctx`, on the path of every task).
type Trampoline = fn(
    func: usize,
    input: Input<'_>,
    running: &AtomicU64,
    ctx: &mut dyn ChunkCtx,
) -> Result<(), ()>;

/// A function located by offsets from the anchor: what the parent sends the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct TaskRef {
    trampoline: i64,
    func: i64,
}

impl TaskRef {
    /// Its two offsets (trampoline, function), as its serde encoding carries them (for the
    /// hand-written frame header, `wire/header.rs`).
    #[inline]
    pub(crate) fn offsets(self) -> (i64, i64) {
        (self.trampoline, self.func)
    }

    /// The reference with these offsets, as its serde decoding makes it from the wire (a
    /// worker runs it only under the same-build proof of [`TaskRef::run`]).
    #[inline]
    pub(crate) fn from_offsets(trampoline: i64, func: i64) -> TaskRef {
        TaskRef { trampoline, func }
    }

    /// The reference for running `f` over chunks of arguments.
    pub(crate) fn new<A: DeserializeOwned, R: Serialize>(f: fn(A) -> R) -> TaskRef {
        let trampoline: Trampoline = call_chunk::<A, R>;
        let base = anchor() as i64;
        TaskRef {
            trampoline: trampoline as *const () as usize as i64 - base,
            func: f as *const () as usize as i64 - base,
        }
    }

    /// Runs the referenced function over `input` in this (worker) process; `running` gets 1 +
    /// the index (within the chunk) of the argument about to run, before each.
    ///
    /// `build` is the proof that makes this safe: it exists only once this worker has
    /// announced its executable's identity, and the pool sends tasks only to a worker whose
    /// identity equals its own (see [`SameBuild`]).
    pub(crate) fn run(
        &self,
        build: &SameBuild,
        input: Input<'_>,
        running: &AtomicU64,
        ctx: &mut dyn ChunkCtx,
    ) -> Result<(), ()> {
        let _ = build;
        let base = anchor() as i64;
        let trampoline_addr = (base + self.trampoline) as usize;
        let func_addr = (base + self.func) as usize;
        // SAFETY: transmuting a `usize` to a fn pointer is sound if the address is that of a
        // function of that exact type. `build` proves the worker announced its executable and
        // the pool sends a `TaskRef` (made by `TaskRef::new` in the pool) only to a worker
        // whose executable identity equals its own, so this is the same build and base +
        // offset is the address of the `Trampoline`-typed function the offset was taken from
        // in the pool; a function pointer and a `usize` have the same size on this target.
        let trampoline: Trampoline =
            unsafe { std::mem::transmute::<usize, Trampoline>(trampoline_addr) };
        trampoline(func_addr, input, running, ctx)
    }
}

/// A job's argument re-slicer ([`crate::job::Reslice`], monomorphised for the argument type),
/// located like a task function: by its offset from the anchor. A cluster caller sends it with
/// each chunk, so that a node, which does not know the argument type, can split the chunk when
/// one of its local workers dies part-way through (the rest of the chunk runs elsewhere).
#[cfg(feature = "nats")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ResliceRef(i64);

#[cfg(feature = "nats")]
impl ResliceRef {
    /// The reference to `f`, a `reslice::<A>` of this executable.
    pub(crate) fn new(f: crate::job::Reslice) -> ResliceRef {
        ResliceRef(f as *const () as usize as i64 - anchor() as i64)
    }

    /// The function this reference was made from, in this process.
    ///
    /// `build` is the proof that makes this safe: a node makes it only after the caller's build
    /// identity (a hash of its whole executable) matched its own.
    pub(crate) fn resolve(self, build: &SameBuild) -> crate::job::Reslice {
        let _ = build;
        let addr = (anchor() as i64).wrapping_add(self.0) as usize;
        // SAFETY: transmuting a `usize` to a fn pointer is sound if the address is that of a
        // function of that exact type. `build` proves that the caller that made this reference
        // with `ResliceRef::new` runs this very executable (same content hash), so anchor +
        // offset is the address of the `Reslice`-typed function the offset was taken from; a
        // function pointer and a `usize` have the same size on this target.
        unsafe { std::mem::transmute::<usize, crate::job::Reslice>(addr) }
    }
}

/// The executable identity this worker announces in its `Hello`: device, inode, size and
/// modification time of `/proc/self/exe`.
pub(crate) type ExeIdentity = (u64, u64, u64, i64);

/// Proof that task references may be run in this worker: it can only be made by
/// [`SameBuild::announce`], which hands out the executable identity the worker must send in its
/// `Hello`. The pool reads that `Hello` and refuses a worker whose identity differs from its own
/// ([`crate::PoolError::BuildMismatch`]) before sending it any task, so a worker that holds this
/// token and receives a task runs the same build as the pool that made the task's offsets.
#[derive(Debug)]
pub(crate) struct SameBuild {
    _private: (),
}

impl SameBuild {
    /// This executable's identity, to send in the worker's `Hello`, and the token that lets the
    /// worker run the tasks the pool sends after checking it.
    pub(crate) fn announce() -> (ExeIdentity, SameBuild) {
        let exe = ipc_shm::os::exe_identity().unwrap_or_default();
        (exe, SameBuild { _private: () })
    }

    /// The token for a cluster node, made only when the build identity a caller sent (a hash
    /// of its whole executable, `cluster::wire::build_id`) equals this node's own.
    #[cfg(feature = "nats")]
    pub(crate) fn matching<T: PartialEq>(ours: &T, theirs: &T) -> Option<SameBuild> {
        (ours == theirs).then_some(SameBuild { _private: () })
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// What the worker's panic hook saw of the last panic on this thread: where, and the backtrace
/// when one was asked for.
struct PanicSeen {
    location: Option<PanicLocation>,
    backtrace: Option<String>,
}

thread_local! {
    /// Set by the hook of [`install_panic_hook`], taken by [`invoke`] once the panic is caught.
    static LAST_PANIC: RefCell<Option<PanicSeen>> = const { RefCell::new(None) };
}

/// Whether `RUST_BACKTRACE` asks for backtraces (set, and not `0`).
pub(crate) fn backtraces_wanted() -> bool {
    std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0")
}

/// Takes and symbolises one backtrace, which loads the program's debug information into this
/// process, so that the first panic of a worker forked from it afterwards does not: with
/// `RUST_BACKTRACE` set, a worker's first backtrace took 180-240 ms (2-vCPU VM, a 45 MB
/// executable with debug info), later ones well under a millisecond; workers forked from a
/// process that had loaded it took 20 ms for their first 20 panics. For the fork server
/// (`start/forkserver.rs`), which runs it once, when idle.
pub(crate) fn load_backtrace_symbols() {
    let _ = std::backtrace::Backtrace::force_capture().to_string();
}

/// Whether this process is a worker (set by [`install_panic_hook`]): the forwarding hook
/// records a task's panic only then.
static IN_WORKER: AtomicBool = AtomicBool::new(false);

/// Set once the forwarding hook of [`install_forwarding_hook`] is in place in this process.
static FORWARDING: Once = Once::new();

/// Records, for the task that panicked, its location and (when `RUST_BACKTRACE` is set) a
/// backtrace; prints nothing.
fn record_panic(info: &std::panic::PanicHookInfo<'_>) {
    let location = info.location().map(|l| PanicLocation {
        file: l.file().to_owned(),
        line: l.line(),
        column: l.column(),
    });
    let backtrace =
        backtraces_wanted().then(|| std::backtrace::Backtrace::force_capture().to_string());
    LAST_PANIC.with(|last| {
        *last.borrow_mut() = Some(PanicSeen {
            location,
            backtrace,
        })
    });
}

/// In the parent, before it forks a worker (`StartMethod::Fork`): installs, once per process,
/// a hook that records a task's panic when this process is a worker and otherwise calls the
/// hook it replaced. A forked worker then never calls `set_hook` itself: `set_hook` takes the
/// hook's lock for writing, and if another thread of the parent was running a panic hook at
/// the fork (holding that lock for reading), the child would wait for it forever.
///
/// A hook the user sets after this replaces ours in the parent and in workers forked later:
/// their panics then reach the caller without a location.
pub(crate) fn install_forwarding_hook() {
    FORWARDING.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_WORKER.load(Ordering::Relaxed) {
                record_panic(info);
            } else {
                previous(info);
            }
        }));
    });
}

/// In a worker: a task's panic is caught and sent to its caller with its location and (when
/// `RUST_BACKTRACE` is set) a backtrace; the hook prints nothing, since printing it in the
/// worker too would only slow the worker down. A worker forked from a parent that installed
/// [`install_forwarding_hook`] only flips that hook to recording (see there why it must not
/// call `set_hook`); any other worker (spawned, or from the fork server: single-threaded
/// processes) replaces the hook.
pub(crate) fn install_panic_hook() {
    IN_WORKER.store(true, Ordering::Relaxed);
    if !FORWARDING.is_completed() {
        std::panic::set_hook(Box::new(record_panic));
    }
}

/// The caught panic `payload` as a failure, with what the hook recorded of it.
fn panic_failure(payload: &(dyn Any + Send)) -> Failure {
    let seen = LAST_PANIC.with(|last| last.borrow_mut().take());
    let (location, backtrace) = seen.map_or((None, None), |s| (s.location, s.backtrace));
    Failure::PanickedAt {
        message: panic_message(payload),
        location,
        backtrace,
    }
}

/// Forgets what the hook recorded of an earlier panic on this thread, before a chunk runs.
///
/// A task's caught panic takes its record ([`panic_failure`]); a record is left behind only by
/// a panic that a task caught itself, and the next panic the hook records replaces it. So it
/// is cleared once per chunk, not before every task: a thread-local access per task was ~3% of
/// a map of trivial tasks (perf). Only a task that panics after the user replaced the hook,
/// in a chunk where an earlier task caught a panic of its own, could be given that panic's
/// location.
fn forget_last_panic() {
    LAST_PANIC.with(|last| last.borrow_mut().take());
}

/// Calls one function on one argument, catching its panic.
#[inline]
fn invoke<A, R>(func: usize, arg: A) -> Result<R, Failure> {
    // SAFETY: `func` is `base + offset` of an `fn(A) -> R` of this same executable, paired with
    // this very monomorphisation of the trampoline by `TaskRef::new` (the same build is what
    // `TaskRef::run`'s `SameBuild` proves); fn pointers and usize have the same size.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(func) };
    catch_unwind(AssertUnwindSafe(|| f(arg))).map_err(|payload| panic_failure(&*payload))
}

/// Appends the encoding of one outcome to `out`; an `R` that does not encode becomes an
/// `EncodeResult` failure for that argument only (a `Result<(), Failure>`'s `Err` encodes as
/// every `Result<R, Failure>`'s does).
#[inline]
fn encode_outcome<R: Serialize>(outcome: &Result<R, Failure>, out: &mut Vec<u8>) {
    let encoded = match outcome {
        // The bytes of `Ok(value)`, written more cheaply (`wire::outcome`).
        Ok(value) => codec::encode_into(&OkWire(value), out),
        Err(_) => codec::encode_into(outcome, out),
    };
    if let Err(e) = encoded {
        // `encode_into` left `out` as it was.
        let failed: Result<(), Failure> = Err(Failure::EncodeResult(e.to_string()));
        let _ = codec::encode_into(&failed, out);
    }
}

/// The most arguments run between two flush checks (each check may read the clock).
///
/// The gap between checks adapts to the tasks: it doubles after a check that finds no flush
/// due and halves after a flush, from 1 up to this. Trivial tasks (a few nanoseconds) then read
/// the clock about once per this many, where a fixed 16 made the clock (`clock_gettime`, ~25 ns
/// on a VM) 13% of a worker's time in a map of 1 M trivial tasks (perf); slow tasks are checked
/// after each one. When tasks take similar times a flush is sent before about three times its
/// interval has passed: successive checks are at most 3x apart in tasks (a halved gap `g/2`,
/// then `g/2 + g`), and the check before found it not yet due.
const MAX_CHECK_GAP: usize = 256;

/// The trampoline: decodes the chunk's arguments (all of them before any task runs: a chunk
/// that does not decode fails whole, unrun; and arguments in the bulk area are all out of it
/// before anything about the job is reported, `wire/bulk.rs`), runs the function on each, and
/// encodes each outcome as soon as it is known, straight into the bytes that go to the pool (no
/// vector of outcomes in between).
fn call_chunk<A: DeserializeOwned, R: Serialize>(
    func: usize,
    input: Input<'_>,
    running: &AtomicU64,
    ctx: &mut dyn ChunkCtx,
) -> Result<(), ()> {
    let args: Vec<A> = match input.decode() {
        Ok(args) => args,
        Err(e) => return ctx.chunk_failed(Failure::DecodeArgument(e.to_string())),
    };
    let total = args.len();
    ctx.begin(total);
    forget_last_panic();
    let mut out = ctx.take_buffer();
    let mut first = 0;
    // Check after the first task, then after gaps that adapt (see MAX_CHECK_GAP).
    let mut gap = 1;
    let mut check_at = 1;
    for (i, arg) in args.into_iter().enumerate() {
        running.store(i as u64 + 1, Ordering::Release);
        encode_outcome(&invoke::<A, R>(func, arg), &mut out);
        let ran = i + 1;
        if ran < total && ran == check_at {
            if ctx.flush_due(out.len()) {
                ctx.flush(first, ran - first, &out, false)?;
                first = ran;
                out.clear();
                gap = (gap / 2).max(1);
            } else {
                gap = (gap * 2).min(MAX_CHECK_GAP);
            }
            check_at = ran + gap;
        }
    }
    let sent = ctx.flush(first, total - first, &out, true);
    ctx.keep_buffer(out);
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add_one(x: u64) -> u64 {
        x + 1
    }

    /// Counts flush checks; says a flush is due when `due(pending_bytes)` does; records what is
    /// flushed, and how many bytes were pending at each intermediate flush.
    struct CountCtx {
        due: fn(pending_bytes: usize) -> bool,
        checks: usize,
        flushed: Vec<(usize, usize, bool)>,
        pending_at_flush: Vec<usize>,
    }

    impl ChunkCtx for CountCtx {
        fn flush_due(&mut self, pending_bytes: usize) -> bool {
            self.checks += 1;
            (self.due)(pending_bytes)
        }

        fn flush(&mut self, first: usize, count: usize, out: &[u8], done: bool) -> Result<(), ()> {
            self.flushed.push((first, count, done));
            if !done {
                self.pending_at_flush.push(out.len());
            }
            Ok(())
        }

        fn chunk_failed(&mut self, _failure: Failure) -> Result<(), ()> {
            Err(())
        }
    }

    fn run(tasks: u64, due: fn(usize) -> bool) -> CountCtx {
        let args = ipc_shm::codec::encode(&(0..tasks).collect::<Vec<u64>>()).expect("encodes");
        let mut ctx = CountCtx {
            due,
            checks: 0,
            flushed: Vec::new(),
            pending_at_flush: Vec::new(),
        };
        let running = AtomicU64::new(0);
        let func = add_one as fn(u64) -> u64 as usize;
        call_chunk::<u64, u64>(func, Input::Bytes(&args), &running, &mut ctx).expect("runs");
        assert_eq!(running.load(Ordering::Relaxed), tasks, "every task ran");
        // The flushes cover the chunk once, in order, the last one marked done.
        let mut next = 0;
        for (i, &(first, count, done)) in ctx.flushed.iter().enumerate() {
            assert_eq!(first, next);
            assert_eq!(done, i == ctx.flushed.len() - 1);
            next += count;
        }
        assert_eq!(next as u64, tasks);
        ctx
    }

    #[test]
    fn flush_checks_space_out_while_nothing_is_due_and_close_in_when_flushes_are() {
        // Never due: the gap doubles up to MAX_CHECK_GAP, so 10 000 quick tasks are checked
        // about 10 000 / 256 times plus the ramp (was 10 000 / 16 with a fixed gap).
        let idle = run(10_000, |_| false);
        let ramp = MAX_CHECK_GAP.trailing_zeros() as usize + 1;
        assert!(
            idle.checks <= 10_000 / MAX_CHECK_GAP + ramp,
            "{} checks",
            idle.checks
        );
        assert_eq!(idle.flushed, [(0, 10_000, true)]);

        // Always due (slow tasks): checked and flushed after every task.
        let busy = run(300, |_| true);
        assert_eq!(busy.checks, 299);
        assert_eq!(busy.flushed.len(), 300);

        // Due once 300 bytes of outcomes are pending, standing in for time that grows with the
        // tasks run: every flush comes before three times that. (After a flush the gap halves,
        // so successive checks are at most 3x apart in tasks: from g/2 to g/2 + g.)
        let paced = run(10_000, |pending| pending >= 300);
        assert!(paced.flushed.len() > 10, "{:?}", paced.flushed);
        assert!(
            paced.pending_at_flush.iter().all(|&p| p < 3 * 300 + 8),
            "{:?}",
            paced.pending_at_flush
        );
    }
}
