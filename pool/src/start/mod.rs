//! Starting worker processes: the start methods ([`fork`], [`spawn`], [`forkserver`]), what
//! they have in common (the started [`Worker`], the start-up [`handshake`]), and [`init`], which
//! gives a re-executed program its role.
//!
//! | method       | how                                                       | cost (ref. machine) | caveat |
//! |--------------|-----------------------------------------------------------|---------------------|--------|
//! | `Fork`       | `fork()` of the calling (driver) thread                    | a fork of the pool's process: 0.4 ms for a small one, 4.6 ms for one holding ~200 MB; a replacement 1.2-2.5x that | the parent has threads: a lock another thread held at the fork stays held in the child |
//! | `ForkServer` | a single-threaded server, forked by `init()` before any thread, forks each worker | ~0.2 ms for a replacement, whatever the pool's process holds | needs `init()` (or the `ctor` feature) |
//! | `Spawn`      | `exec` of `/proc/self/exe`, which becomes a worker in `init()`; or the *standby*, a program executed ahead (see [`spawn`]) | ~1 ms + program start-up; on the standby a `sendmsg` | needs `init()` (or the `ctor` feature) |
//!
//! Every worker gets `PR_SET_PDEATHSIG(SIGKILL)`: if the pool's process dies, even by SIGKILL,
//! its workers die too. A worker also exits when its pipe reports the pool gone.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Exit, PoolError, SpawnErrorKind};
use crate::slot::ProgressSlot;
use crate::task::TaskRef;
use crate::wire::args::Args;
use crate::wire::protocol::{self, FromWorker, Link, LinkError, ToWorker};
use crate::wire::transport::PipeLink;

mod fork;
mod forkserver;
pub(crate) mod init;
mod spawn;

/// How worker processes are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StartMethod {
    /// `fork()` the parent. Works anywhere (inside `cargo test` too) with no set-up. But the
    /// parent of a pool has threads, and `fork` copies only the calling one: a lock held by
    /// another thread at that instant (in a library, in the allocator) stays held forever in
    /// the child. Workers of this crate only run your task functions; avoid this method if
    /// those take locks that other threads of the parent may hold.
    ///
    /// Every start, a dead worker's replacement included, is a fork of the pool's process, and
    /// a fork copies the page tables of everything that process has resident: its cost grows
    /// with the parent. On the reference VM a bare `fork()` until the child runs took 0.4 ms
    /// for a small process and 4.6 ms for one holding about 200 MB, and a replacement 1.2-2.5x
    /// that (benches' `crash_recovery`, whose floor row is that bare fork); after each fork the
    /// parent also takes a copy-on-write fault on the first write to every page it shares
    /// with the child. `ForkServer` forks from a small server instead (a replacement in about
    /// 0.2 ms, whatever the parent holds), and [`PoolBuilder::warm_spare`] makes a replacement
    /// take a worker started ahead (about 25 us with any method).
    ///
    /// [`PoolBuilder::warm_spare`]: crate::PoolBuilder::warm_spare
    Fork,
    /// A fork server: `init()` (or the `ctor` feature, before `main`) starts a single-threaded
    /// server process; each worker is forked from it on request. As safe as `Spawn`, and like
    /// `Spawn`'s standby it replaces a dead worker in about 0.2 ms whatever the pool's process
    /// holds (the server stays small and keeps a child forked ahead). The default where
    /// available.
    #[default]
    ForkServer,
    /// Re-execute the current program (`/proc/self/exe`); it becomes a worker in `init()` (or
    /// in the `ctor` constructor) before `main` runs. Safest and slowest. Once a first worker
    /// has been spawned, the process keeps one *standby*: the program executed ahead of the next
    /// worker (named `pool-blank` while it waits), which a new or replacement worker's start
    /// takes over instead of waiting for an `exec` (a dead worker's replacement in about 0.2
    /// ms instead of 1.1-1.2 ms on the reference VM). One idle process at most, shared by every
    /// pool of the process; it dies with the process.
    Spawn,
}

impl StartMethod {
    pub(crate) fn name(self) -> &'static str {
        match self {
            StartMethod::Fork => "fork",
            StartMethod::ForkServer => "forkserver",
            StartMethod::Spawn => "spawn",
        }
    }
}

/// The pid of this process's current fork server, if one runs.
pub(crate) fn fork_server_pid() -> Option<u32> {
    forkserver::server_pid()
}

/// The pid of this process's ready `Spawn` standby, if one waits.
pub(crate) fn spawn_standby_pid() -> Option<u32> {
    spawn::standby_pid()
}

/// Fails with `NeedsInit` when the method needs `init()` and it has not run.
pub(crate) fn check_start_method(method: StartMethod) -> Result<(), PoolError> {
    match method {
        StartMethod::Fork => Ok(()),
        StartMethod::Spawn | StartMethod::ForkServer => {
            if init::initialised() {
                Ok(())
            } else {
                Err(PoolError::NeedsInit {
                    method: method.name(),
                })
            }
        }
    }
}

/// A started worker, seen from the pool.
pub(crate) struct Worker {
    pub(crate) pid: u32,
    pub(crate) link: Box<dyn Link>,
    pub(crate) slot: ProgressSlot,
    exit: Option<Exit>,
    reaper: Reaper,
}

pub(crate) enum Reaper {
    /// Our own child: `waitpid`.
    Child,
    /// A child of a fork server: that server reports the status.
    Server(Arc<forkserver::ForkServerClient>),
}

impl Worker {
    pub(crate) fn new(pid: u32, link: PipeLink, slot: ProgressSlot, reaper: Reaper) -> Worker {
        Worker {
            pid,
            link: Box::new(link),
            slot,
            exit: None,
            reaper,
        }
    }

    /// Waits for the worker to end and returns how it ended (once; later calls repeat it).
    pub(crate) fn reap(&mut self) -> io::Result<Exit> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        let exit = match &self.reaper {
            Reaper::Child => ipc_shm::os::reap(self.pid)?.into(),
            Reaper::Server(server) => server.reap(self.pid)?,
        };
        self.exit = Some(exit);
        Ok(exit)
    }

    /// How the worker ended, if it has (never blocks); a later [`reap`](Worker::reap) repeats it.
    pub(crate) fn try_reap(&mut self) -> io::Result<Option<Exit>> {
        if let Some(exit) = self.exit {
            return Ok(Some(exit));
        }
        let exit = match &self.reaper {
            Reaper::Child => ipc_shm::os::try_reap(self.pid)?.map(Into::into),
            Reaper::Server(server) => server.try_reap(self.pid)?,
        };
        self.exit = exit;
        Ok(exit)
    }

    /// How a worker whose link broke ended: it is killed first if it still runs (a dying
    /// process keeps the status it is dying with), then reaped; `None` if nobody can tell.
    fn ended(&mut self) -> Option<Exit> {
        if !self.wait_exit(Duration::from_millis(100)) {
            self.kill();
        }
        self.reap().ok()
    }

    /// Tells a primed worker (a fork-server blank or spawn standby that greeted ahead) that a
    /// seat took it: it takes a worker's name (until then `ps` shows it as the blank it was). Not
    /// waited for; if it died meanwhile, the handshake finds out.
    pub(crate) fn seated(&mut self) {
        let mut frame = Vec::new();
        if protocol::frame(&ToWorker::Seated, &[], &mut frame).is_ok() {
            let _ = self.link.send(&frame);
        }
    }

    /// Sends SIGKILL.
    pub(crate) fn kill(&self) {
        if self.exit.is_none() {
            let _ = ipc_shm::os::kill(self.pid, ipc_shm::os::Signal::SIGKILL);
        }
    }

    /// Waits up to `timeout` for the worker to end; returns whether it did.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> bool {
        if self.exit.is_some() {
            return true;
        }
        match ipc_shm::os::pidfd(self.pid) {
            Ok(fd) => ipc_shm::os::wait_readable(&[std::os::fd::AsFd::as_fd(&fd)], Some(timeout))
                .map(|r| r[0])
                .unwrap_or(true),
            Err(_) => true,
        }
    }
}

/// Serialises pipe creation with forking, so that a worker forked by one driver never inherits
/// the worker-side end of another worker's pipe (it would hide that worker's death). A `Fork`
/// worker is born holding its copy (its thread forked holding it, with the spawn keeper's and
/// the fork-server client's locks: `fork::start`) and releases them first thing, so that pools
/// its tasks make can take them. Order: keeper state, then this lock, then the client.
pub(crate) static FORK_LOCK: Mutex<()> = Mutex::new(());

/// Starts one worker with `method` (the caller then runs [`handshake`]).
pub(crate) fn start(method: StartMethod) -> Result<Worker, PoolError> {
    match method {
        StartMethod::Fork => fork::start(new_slot()?),
        // A primed blank or standby has its pipe and slot already: they make their own.
        StartMethod::Spawn => spawn::start(),
        StartMethod::ForkServer => forkserver::start(),
    }
}

/// A new worker's progress slot (the start methods make one unless a primed process has it).
pub(super) fn new_slot() -> Result<ProgressSlot, PoolError> {
    ProgressSlot::new().map_err(|e| SpawnErrorKind::ProgressSlot(Arc::new(e)).into())
}

/// The pool's copy of a worker-side end, after the worker took it over.
pub(crate) fn theirs_handed_over(theirs: PipeLink) {
    theirs.handed_over();
}

/// How long a new worker may take to greet the pool (and to run its initializer).
const STARTUP: Duration = Duration::from_secs(30);

/// Why a worker could not be started, and whether the cause lies outside it, for the restart
/// breaker (`sizing`): a worker's own failure (its initializer's error or panic, an exit, a
/// crash, a hang, a different build) is what a restart loop is made of; a worker killed from
/// outside (SIGKILL, SIGTERM: an operator, the OOM killer, a test) or lost with its fork server
/// is not.
#[derive(Debug)]
pub(crate) struct StartFailure {
    pub(crate) error: PoolError,
    /// The worker died of a signal it did not raise itself, or its status is unknown.
    pub(crate) outside: bool,
}

impl StartFailure {
    fn own(error: impl Into<PoolError>) -> StartFailure {
        StartFailure {
            error: error.into(),
            outside: false,
        }
    }
}

/// A failure to get a process at all (pipe, progress slot, fork) is the pool's own; a fork
/// server that died while asked is a death from outside.
impl From<PoolError> for StartFailure {
    fn from(error: PoolError) -> StartFailure {
        let outside = error == PoolError::from(SpawnErrorKind::ForkServerGone);
        StartFailure { error, outside }
    }
}

/// Whether a worker that ended with `exit` was ended from outside: by a signal other than the
/// faults a process raises on itself (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS, SIGTRAP),
/// by its parent's death, or in a way nobody could report. An exit with a status code is the
/// worker's own doing.
pub(crate) fn ended_from_outside(exit: Option<Exit>) -> bool {
    use ipc_shm::os::Signal;
    match exit {
        Some(Exit::Code(code)) => code == ipc_shm::os::PARENT_GONE,
        Some(Exit::Signal(s)) => ![
            Signal::SIGSEGV,
            Signal::SIGBUS,
            Signal::SIGILL,
            Signal::SIGFPE,
            Signal::SIGABRT,
            Signal::SIGSYS,
            Signal::SIGTRAP,
        ]
        .iter()
        .any(|&own| own as i32 == s),
        None => true,
    }
}

/// Receives the worker's greeting, checks it runs this very executable, and runs the
/// initializer if there is one. On failure the worker may still run: the caller kills and
/// reaps it.
pub(crate) fn handshake(
    worker: &mut Worker,
    initializer: Option<&(TaskRef, Args)>,
    buf: &mut Vec<u8>,
    frame: &mut Vec<u8>,
) -> Result<(), StartFailure> {
    match worker.link.recv(buf, Some(STARTUP)) {
        Ok(()) => {}
        Err(LinkError::Timeout) => {
            return Err(StartFailure::own(SpawnErrorKind::StartupTimeout(STARTUP)));
        }
        Err(_) => {
            let exit = worker.ended();
            return Err(StartFailure {
                error: SpawnErrorKind::ExitedAtStartup(exit).into(),
                outside: ended_from_outside(exit),
            });
        }
    }
    match protocol::unframe::<FromWorker>(buf) {
        Ok((FromWorker::Hello { exe, .. }, _)) => {
            let mine = ipc_shm::os::exe_identity().unwrap_or_default();
            if exe != mine {
                return Err(StartFailure::own(PoolError::BuildMismatch {
                    detail: format!("worker executable {exe:?}, pool executable {mine:?}"),
                }));
            }
        }
        Ok(_) => return Err(StartFailure::own(SpawnErrorKind::BadGreeting(None))),
        Err(e) => return Err(StartFailure::own(SpawnErrorKind::BadGreeting(Some(e)))),
    }
    let Some((task, arg)) = initializer else {
        return Ok(());
    };
    let init = ToWorker::Init {
        task: *task,
        fds: arg.batch_id(),
    };
    protocol::frame(&init, &arg.bytes, frame)
        .map_err(|e| StartFailure::own(SpawnErrorKind::Encode(e)))?;
    if worker
        .link
        .send_with_fds(frame, arg.fds.as_deref())
        .is_err()
    {
        let exit = worker.ended();
        return Err(StartFailure {
            error: SpawnErrorKind::DiedBeforeInitializer.into(),
            outside: ended_from_outside(exit),
        });
    }
    match worker.link.recv(buf, Some(STARTUP)) {
        Ok(()) => match protocol::unframe::<FromWorker>(buf) {
            Ok((FromWorker::InitDone, _)) => Ok(()),
            // The initializer's own error or panic, reported by the worker: what the breaker
            // is for.
            Ok((FromWorker::InitFailed { failure }, _)) => {
                Err(StartFailure::own(PoolError::InitializerFailed {
                    message: failure.to_string(),
                }))
            }
            _ => Err(StartFailure::own(SpawnErrorKind::UnexpectedInitAnswer)),
        },
        Err(LinkError::Timeout) => Err(StartFailure::own(PoolError::InitializerFailed {
            message: format!("the initializer did not finish within {STARTUP:?}"),
        })),
        Err(_) => {
            let exit = worker.ended();
            Err(StartFailure {
                error: PoolError::InitializerFailed {
                    message: format!(
                        "the worker died in its initializer ({})",
                        exit.map_or("unknown status".into(), |e| e.to_string())
                    ),
                },
                outside: ended_from_outside(exit),
            })
        }
    }
}
