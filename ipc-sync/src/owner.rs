//! Who owns a lock, and whether that owner is still alive.
//!
//! An owner is a kernel thread: its thread id (`gettid`, unique machine-wide while the thread
//! lives), its process id, and its start time (field 22 of `/proc/<pid>/task/<tid>/stat`, in
//! clock ticks since boot). Thread ids are reused after a thread dies, so liveness compares the
//! start time too: a thread with the recorded id but another start time is a new thread and the
//! recorded owner is dead.
//!
//! The calling thread's identity is cached in a thread-local. A forked child inherits that cache
//! but runs on a new thread id, so the cache is tagged with the fork generation that the OS
//! layer's `pthread_atfork` child handler bumps ([`ipc_shm::os::fork_generation`]).
//!
//! The algorithms reach identity, liveness and the death watch (`crate::death_watch`, which
//! wakes a sleeper when a watched owner exits) through the [`Env`] trait, so the loom model
//! checks can give each modelled thread its own id and declare owners dead at will.

use std::cell::Cell;
use std::sync::atomic::Ordering;

use ipc_shm::os::{self, ForkTracking};

use crate::death_watch::Watch;

/// The identity of a (would-be) lock owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Me {
    /// Kernel thread id; never 0, and below 2^30 (Linux's `PID_MAX_LIMIT` is 2^22).
    pub(crate) tid: u32,
    /// Process id.
    pub(crate) pid: u32,
    /// Thread start time in clock ticks since boot (0 if unknown).
    pub(crate) start: u64,
}

/// What a waiter knows about a lock's owner: its thread id, and the rest of its record when
/// the record was complete and matched that thread id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OwnerRecord {
    pub(crate) tid: u32,
    /// `(pid, start time)`, if a consistent record was read.
    pub(crate) detail: Option<(u32, u64)>,
}

/// Identity of the caller and liveness of others: the OS in production, a model under loom.
pub(crate) trait Env {
    /// The calling thread's identity.
    fn me(&self) -> Me;
    /// Whether `owner` still runs. Must answer `true` when unsure: a wrong `false` hands a
    /// live owner's lock to someone else.
    fn alive(&self, owner: OwnerRecord) -> bool;
    /// A [`Watch`] that wakes a sleeper when `owner` exits, if this environment can watch it
    /// (none by default: the waiter then checks [`Env::alive`] once per timed slice).
    fn watch(&self, owner: OwnerRecord) -> Option<Watch> {
        let _ = owner;
        None
    }
}

/// The real environment: `gettid`, the OS layer's cached pid, procfs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sys;

impl Env for Sys {
    #[inline]
    fn me(&self) -> Me {
        current()
    }

    fn alive(&self, owner: OwnerRecord) -> bool {
        thread_alive(owner)
    }

    fn watch(&self, owner: OwnerRecord) -> Option<Watch> {
        crate::death_watch::arm(owner, current().pid)
    }
}

thread_local! {
    static CACHED: Cell<Option<(u64, Me)>> = const { Cell::new(None) };
}

/// The calling thread's identity, from the thread-local cache.
#[inline]
pub(crate) fn current() -> Me {
    let generation = os::fork_generation();
    if let Some((g, me)) = CACHED.with(Cell::get)
        && g == generation
    {
        return me;
    }
    current_slow(generation)
}

#[cold]
fn current_slow(generation: u64) -> Me {
    let tracking = os::fork_tracking();
    let pid = os::pid();
    if let Some((_, me)) = CACHED.with(Cell::get) {
        // Only reachable without the fork handler, or after a fork: a same pid is still us.
        if me.pid == pid && tracking == ForkTracking::Unavailable {
            return me;
        }
    }
    let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
    let start = read_stat("/proc/thread-self/stat")
        .and_then(|s| s.start)
        .unwrap_or(0);
    let me = Me { tid, pid, start };
    let tag = match tracking {
        // Another thread is registering the fork handler right now (or was, when this process
        // was forked): answer without caching.
        ForkTracking::Busy => return me,
        ForkTracking::Ready => generation,
        // Without the fork handler the cache is stored under a generation that never matches,
        // so every lookup takes this path and re-checks the pid above.
        ForkTracking::Unavailable => !generation,
    };
    CACHED.with(|c| c.set(Some((tag, me))));
    me
}

/// The parts of a `/proc/.../stat` line we use.
struct Stat {
    /// Field 3: R, S, D, Z, X, ...
    state: u8,
    /// Field 9: the kernel's per-task flags (`PF_*`).
    flags: u64,
    /// Field 22: start time in clock ticks since boot.
    start: Option<u64>,
}

/// `PF_KTHREAD`: a kernel thread, which never runs user code and so can never own a lock.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Reads and parses a stat file; `None` if it does not exist (or cannot be read).
fn read_stat(path: &str) -> Option<Stat> {
    let text = std::fs::read(path).ok()?;
    parse_stat(&text)
}

/// Parses a stat line. The command name (field 2) is in parentheses and may itself contain
/// spaces and parentheses, so the fields are counted from the *last* `)`.
fn parse_stat(text: &[u8]) -> Option<Stat> {
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&text[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    // Field 3 was consumed; field 9 is 5 fields further on, field 22 13 after that.
    let flags = fields.nth(5).and_then(|f| f.parse().ok()).unwrap_or(0);
    let start = fields.nth(12).and_then(|f| f.parse().ok());
    Some(Stat {
        state,
        flags,
        start,
    })
}

/// Whether the owner thread still runs, by procfs.
///
/// - The stat file is gone: the thread (or its whole process) has exited: dead.
/// - State `Z` (zombie) or `X`: the process was killed or exited and awaits its parent's
///   `waitpid`: dead (it can never unlock).
/// - A start time different from the recorded one: the thread id was reused: dead.
/// - A kernel thread: it cannot own a lock, so the word naming it is garbage (a corrupted or
///   hostile segment): dead, so that the lock is recovered rather than waited on forever.
/// - Anything unclear (no record, an unreadable start time, procfs not mounted): alive.
pub(crate) fn thread_alive(owner: OwnerRecord) -> bool {
    let path = match owner.detail {
        Some((pid, _)) => format!("/proc/{pid}/task/{}/stat", owner.tid),
        None => format!("/proc/{}/stat", owner.tid),
    };
    match std::fs::read(&path) {
        Ok(text) => match parse_stat(&text) {
            Some(stat) => {
                if matches!(stat.state, b'Z' | b'X' | b'x') || stat.flags & PF_KTHREAD != 0 {
                    return false;
                }
                match (owner.detail, stat.start) {
                    (Some((_, recorded)), Some(actual)) if recorded != 0 => recorded == actual,
                    _ => true,
                }
            }
            None => true,
        },
        Err(e) => {
            // ENOENT/ESRCH: gone. Without procfs at all we cannot tell: assume alive.
            !(e.kind() == std::io::ErrorKind::NotFound
                && std::path::Path::new("/proc/self").exists())
        }
    }
}

/// Whether a process (not a thread) still runs, guarding against pid reuse with `start`
/// (the start time of its main thread; 0 = unknown).
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn process_alive(pid: u32, start: u64) -> bool {
    thread_alive(OwnerRecord {
        tid: pid,
        detail: Some((pid, start)),
    })
}

/// This process's id and the start time of its main thread (cached per process).
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn current_process() -> (u32, u64) {
    use std::sync::atomic::AtomicU64;
    // Two words: a mismatch (after a fork, or before any thread filled them) recomputes;
    // racing threads compute the same values.
    static PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    static START: AtomicU64 = AtomicU64::new(0);
    let me = current();
    if PID.load(Ordering::Acquire) == me.pid {
        return (me.pid, START.load(Ordering::Acquire));
    }
    let start = if me.tid == me.pid {
        me.start
    } else {
        read_stat("/proc/self/stat")
            .and_then(|s| s.start)
            .unwrap_or(0)
    };
    START.store(start, Ordering::Release);
    PID.store(me.pid, Ordering::Release);
    (me.pid, start)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn parses_awkward_command_names() {
        let line = b"1234 (a) b (c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 424242 20 21\n";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.state, b'S');
        assert_eq!(stat.flags, 6);
        assert_eq!(stat.start, Some(424242));
    }

    #[test]
    fn a_kernel_thread_never_counts_as_a_live_owner() {
        // pid 2 is kthreadd on Linux; a lock word naming it can only be garbage.
        if std::fs::read("/proc/2/stat").is_ok() {
            assert!(!thread_alive(OwnerRecord {
                tid: 2,
                detail: None
            }));
        }
    }

    #[test]
    fn identity_is_per_thread_and_alive() {
        let me = current();
        assert_eq!(me, current());
        assert_ne!(me.start, 0);
        let rec = OwnerRecord {
            tid: me.tid,
            detail: Some((me.pid, me.start)),
        };
        assert!(thread_alive(rec));
        assert!(!thread_alive(OwnerRecord {
            tid: me.tid,
            detail: Some((me.pid, me.start + 1)),
        }));
        let other = std::thread::spawn(current).join().unwrap();
        assert_ne!(other.tid, me.tid);
        assert_eq!(other.pid, me.pid);
        // That thread has exited.
        assert!(!thread_alive(OwnerRecord {
            tid: other.tid,
            detail: Some((other.pid, other.start)),
        }));
    }
}

/// The loom environment: modelled threads get ids from the test, and "dead" is a bit set.
#[cfg(all(test, loom))]
pub(crate) mod model {
    use super::{Env, Me, OwnerRecord};
    use crate::sync::{AtomicU32, Ordering};
    use loom::sync::Arc;

    /// One modelled thread's view: its id and the shared set of dead ids.
    #[derive(Debug, Clone)]
    pub(crate) struct TestEnv {
        pub(crate) tid: u32,
        pub(crate) dead: Arc<AtomicU32>,
    }

    impl TestEnv {
        /// Thread `tid` (1..=31) over a shared dead set.
        pub(crate) fn new(tid: u32, dead: &Arc<AtomicU32>) -> TestEnv {
            TestEnv {
                tid,
                dead: dead.clone(),
            }
        }

        /// Declares this thread dead (it must not touch the primitive afterwards).
        pub(crate) fn die(&self) {
            self.die_unseen();
            crate::waiter::loom_time_passes();
        }

        /// Declares this thread dead without time passing: no timed slice ends because of it,
        /// so only a death watch's wake-up can make a sleeper notice.
        pub(crate) fn die_unseen(&self) {
            self.dead.fetch_or(1 << self.tid, Ordering::SeqCst);
        }
    }

    impl Env for TestEnv {
        fn me(&self) -> Me {
            Me {
                tid: self.tid,
                pid: 1,
                start: 1,
            }
        }

        fn alive(&self, owner: OwnerRecord) -> bool {
            owner.tid >= 32 || self.dead.load(Ordering::SeqCst) & (1 << owner.tid) == 0
        }
    }
}
