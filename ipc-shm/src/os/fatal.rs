//! Early death notice: a handler for the fatal signals a process raises on itself (a crash),
//! which tells the process's peer before the kernel tears the process down.
//!
//! A crashing process is seen by its parent (a socket hang-up, a reap) only once the kernel has
//! freed its address space, which for a large process takes milliseconds. [`install_death_notice`]
//! makes the crash itself announce the death: the handler stores the signal number into a word
//! of shared memory and shuts down a socket, so the peer polling that socket wakes at once and
//! reads the signal from the word; then the process dies of the signal as it would have.
//!
//! | step | what the handler does | why it is async-signal-safe |
//! |---|---|---|
//! | 1 | SIGSEGV, SIGBUS: call the handler installed before (std's stack-overflow check) | the previous handler's own contract; std's prints and aborts, or resets and returns |
//! | 2 | store the signal number into the word | one atomic store |
//! | 3 | `shutdown(SHUT_RDWR)` the socket, then `sched_yield` | system calls |
//! | 4 | reset the signal to its default action and `raise` it | system calls; the signal is blocked in the handler, so it kills the process as the handler returns |
//!
//! Why the yield: the peer the hang-up wakes is often queued on the dying process's own CPU (a
//! wake-up prefers the waker's CPU, and the peer woke this process on its own CPU when it sent
//! the work that crashed). Without the yield it waited there for the whole teardown, 0.3-0.4 ms
//! for a small worker on the 2-vCPU reference VM, while the other CPU idled: a pool's crash ->
//! `WorkerLost` was bimodal, about 0.15 ms or 0.45 ms depending on where the scheduler had put
//! the two (medians over 20 crashes of a spawned worker, four runs: 150-431 us; with the yield
//! 130-144 us, p75 148-158 us).
//!
//! It never allocates, takes a lock or runs code other than the previous SIGSEGV/SIGBUS handler.
//! A stack overflow reaches std's handler first, which aborts: the word then says SIGABRT, the
//! signal the process dies of. Signals sent from outside (SIGKILL) run no handler: the peer learns
//! of those by reaping, as before.
//!
//! ## Memory ordering
//!
//! The handler stores the word (`Release`) before it shuts the socket down; the peer reads it
//! (`Acquire`) after its poll reported the hang-up, which the shutdown caused, so it sees it.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// The signals a process raises on itself when it crashes, which [`install_death_notice`]
/// handles: the faults, `abort()`, breakpoints and seccomp's SIGSYS.
pub const FATAL_SIGNALS: [Signal; 7] = [
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGILL,
    Signal::SIGFPE,
    Signal::SIGABRT,
    Signal::SIGTRAP,
    Signal::SIGSYS,
];

/// The word the handler stores the signal number into (null: none yet).
static WORD: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
/// The socket the handler shuts down (-1: none). Owned by this module for good: never closed,
/// so the number can never name another file.
static SOCKET: AtomicI32 = AtomicI32::new(-1);
/// Set by the first [`install_death_notice`].
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The handler in place before ours, per signal number (SIGSEGV and SIGBUS only): its address
/// (0: none to call) and whether it takes `siginfo` (`SA_SIGINFO`).
static PREVIOUS: [AtomicUsize; 32] = [const { AtomicUsize::new(0) }; 32];
static PREVIOUS_SIGINFO: [AtomicBool; 32] = [const { AtomicBool::new(false) }; 32];

/// Installs the death notice for this process: when it crashes with one of [`FATAL_SIGNALS`],
/// the signal number is stored into `word` and `socket` is shut down (both directions), so the
/// socket's peer sees a hang-up at once; then the process dies of that signal.
///
/// `socket` should be a duplicate of the descriptor the peer watches (shutdown acts on the
/// socket, not the descriptor); it is kept open for the rest of the process. Once per process:
/// a second call fails with [`io::ErrorKind::AlreadyExists`].
///
/// A child that crashes tells its parent so, and how, before it is gone:
///
/// ```
/// use std::os::fd::AsFd;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use ipc_shm::{SharedValue, os};
///
/// let dying = SharedValue::<AtomicU64>::new_anonymous()?;
/// let (mine, peer) = os::socketpair()?;
/// let pid = os::fork_then(&[peer.as_fd()], || {
///     // The handler needs the word for the rest of the process.
///     let word: &'static SharedValue<AtomicU64> = Box::leak(Box::new(dying.clone()));
///     let installed = mine.try_clone().and_then(|socket| os::install_death_notice(word, socket));
///     if installed.is_ok() {
///         std::process::abort();
///     }
///     1
/// })?;
/// // The hang-up comes before the kernel has torn the child down; the word says why.
/// assert!(os::wait_readable(&[peer.as_fd()], None)?[0]);
/// assert_eq!(dying.load(Ordering::Acquire), os::Signal::SIGABRT as u64);
/// assert_eq!(os::reap(pid)?, os::ExitStatus::Signal(os::Signal::SIGABRT as i32));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn install_death_notice(word: &'static AtomicU64, socket: OwnedFd) -> io::Result<()> {
    if INSTALLED.swap(true, Ordering::AcqRel) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the death notice is already installed",
        ));
    }
    WORD.store(std::ptr::from_ref(word).cast_mut(), Ordering::Release);
    SOCKET.store(socket.into_raw_fd(), Ordering::Release);
    // On the alternate stack (std's, where it set one up): a stack overflow must still run the
    // handler. Reset to the default on entry: a fault inside the handler kills the process.
    let action = SigAction::new(
        SigHandler::SigAction(on_fatal_signal),
        SaFlags::SA_SIGINFO | SaFlags::SA_ONSTACK | SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    for signal in FATAL_SIGNALS {
        let chains = matches!(signal, Signal::SIGSEGV | Signal::SIGBUS);
        if chains {
            // Record the handler in place before ours takes its place, so that a signal arriving
            // in between finds it. Nothing else changes the disposition meanwhile (a worker
            // installs this first thing).
            let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
            // SAFETY: sigaction(2) with a null new action only reads the current one into
            // `old`, a valid, writable `struct sigaction`.
            let rc = unsafe {
                libc::sigaction(signal as libc::c_int, std::ptr::null(), old.as_mut_ptr())
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: zero-initialised, then filled by the successful call above.
            let old = unsafe { old.assume_init() };
            let siginfo = old.sa_flags & libc::SA_SIGINFO != 0;
            let address = match old.sa_sigaction {
                libc::SIG_DFL | libc::SIG_IGN => 0,
                f => f,
            };
            let n = signal as usize;
            PREVIOUS_SIGINFO[n].store(siginfo, Ordering::Relaxed);
            PREVIOUS[n].store(address, Ordering::Release);
        }
        // SAFETY: `on_fatal_signal` is async-signal-safe (see it: atomic loads and stores, and
        // the system calls shutdown, sigaction and raise, besides the previous handler of
        // SIGSEGV/SIGBUS, which was installed to run in that very context).
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

/// The handler: previous SIGSEGV/SIGBUS handler, the word, the hang-up, then death by `signal`.
extern "C" fn on_fatal_signal(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    let n = signal as usize;
    if let Some(previous) = PREVIOUS.get(n) {
        let address = previous.load(Ordering::Acquire);
        if address != 0 {
            if PREVIOUS_SIGINFO[n].load(Ordering::Relaxed) {
                // SAFETY: `address` was read from a `SigHandler::SigAction` function pointer of
                // exactly this type, installed for this signal before ours.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute::<usize, _>(address) };
                f(signal, info, context);
            } else {
                // SAFETY: `address` was read from a `SigHandler::Handler` function pointer of
                // exactly this type, installed for this signal before ours.
                let f: extern "C" fn(libc::c_int) =
                    unsafe { std::mem::transmute::<usize, _>(address) };
                f(signal);
            }
        }
    }
    let word = WORD.load(Ordering::Acquire);
    if !word.is_null() {
        // SAFETY: `word` came from a `&'static AtomicU64`, valid for the rest of the process.
        unsafe { &*word }.store(signal as u64, Ordering::Release);
    }
    let socket = SOCKET.load(Ordering::Acquire);
    if socket >= 0 {
        // SAFETY: shutdown(2) on a descriptor this module owns and never closes; no memory is
        // passed. Async-signal-safe (POSIX).
        unsafe { libc::shutdown(socket, libc::SHUT_RDWR) };
        // SAFETY: sched_yield(2) takes no arguments and has no preconditions; a system call,
        // async-signal-safe. The peer the hang-up just woke is often queued on this very CPU
        // (a wake-up prefers the waker's): yielding lets it run before this process's teardown
        // (see the module docs).
        unsafe { libc::sched_yield() };
    }
    // SAFETY: signal(2) to the default action and raise(3) of the signal being handled, both
    // async-signal-safe. The signal is blocked while its handler runs (no SA_NODEFER), so it
    // stays pending and kills the process when the handler returns; a fault re-executed after
    // the return would kill it too.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}
