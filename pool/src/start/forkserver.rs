//! The `ForkServer` start method: a single-threaded server process that forks each worker.
//!
//! Forking a multi-threaded process is unsafe (only the calling thread survives, and locks held
//! by the others stay held), and a pool's parent always has threads. So the first pool that uses
//! `ForkServer` starts a server by *executing* `/proc/self/exe` with a role argument: a fresh,
//! single-threaded process. The pool sends it, over a `SOCK_SEQPACKET` socket, the descriptors of
//! a new worker's pipe end and progress slot (`SCM_RIGHTS`); the server forks, the child becomes
//! the worker, the server answers with the pid. The server reaps its children (a `signalfd` for
//! `SIGCHLD`) and reports each exit status, so the pool learns how its workers ended. When the
//! pool's process goes away the server sees its socket hang up, kills its workers and exits.
//!
//! The server runs in [`run_server`] (reached through `init`); the pool's side is the client
//! below it ([`server_fork`], [`ForkServerClient::reap`]).
//!
//! The server keeps one *blank* child forked ahead: a process that waits for a request's
//! descriptors on a socket of its own and then becomes that worker. A request is then served
//! by handing the descriptors over (a `sendmsg`) rather than by a fork (300 us of the server's
//! time on the 2-vCPU VM, on the path from a worker's death to its replacement), and the next
//! blank is forked once the server has been quiet for [`BLANK_AFTER`] after the reply.
//!
//! The server *offers* each blank to the pool (`FromServer::Blank`, with a copy of the blank's
//! socket), and the pool hands it a seat itself, without waking the server, then tells it
//! (`ToServer::Used`): one process fewer on the path from a death to the replacement (the
//! fork-server replacement went from 530-691 us to 439-516 us in four interleaved pairs of
//! `compare --workloads crash_recovery`, crashes 50 ms apart). The server then never hands an
//! offered blank a request itself, and reports its end like a worker's (the pool may have
//! handed it a seat before its `Used` arrived). To replace an offered blank (below), the server
//! asks (`Retire`); the pool gives it back (`Unused`) unless a driver has just taken it. A
//! blank that died meanwhile (SIGKILL from outside) is reaped silently and the request served
//! by a fork, as before; the blank is made only once a first worker was asked for, so a server
//! costs one idle process at most. From its fork until it becomes a worker, a blank is named
//! [`BLANK_NAME`] (what `ps` and `/proc/<pid>/comm` show; it is born with that name); it takes
//! the server's name back when it becomes a worker.
//!
//! The pool *primes* each offered blank at once ([`prime`], on the client's reader thread): it
//! makes a worker's pipe and progress slot and hands them over (`ToServer::Prime`), and the
//! blank greets the pool on that pipe and waits there, still named as a blank. A seat's start
//! then takes a worker that is already up ([`take_primed`]: `Used` to the server, `Seated` to
//! the worker, which takes a worker's name): no pipe to make, no process to wake, its
//! greeting already waiting. The replacement (death seen -> replacement ready) went from
//! 365-515 us to 88-176 us (20 crashes of a scratch probe, medians 500 -> 115 us), and
//! `compare --workloads crash_recovery` shows 102 us (428-484 us before, slower spells). Until a
//! seat takes it, a primed blank is still the server's advertised blank: `Retire` gets it back
//! (`Unused`, the pool drops its pipe), and its death is reported and forgets it.
//!
//! With `RUST_BACKTRACE` set, a worker takes a backtrace of every panicking task, and the first
//! one in a process loads the program's debug information (180-240 ms on the 2-vCPU VM). The
//! server loads it once, when it has been idle for [`WARM_AFTER`] after serving a request, and
//! replaces its blank: every worker forked afterwards (replacements, later pools, recycled
//! workers) inherits it, and its first panic costs what the later ones do. That information
//! is tens of MiB of heap (66 MiB for the benchmark runner), and `fork` copies a page-table
//! entry per 4 KiB page: each fork of the server then took 1.5-2.3 ms instead of 0.15 ms, and
//! a request that came during a blank's fork waited for it. So the server moves its anonymous
//! memory to huge pages right after loading (`ipc_shm::os::collapse_to_huge_pages`): a fork
//! then took 0.46 ms (median of 351, `compare --workloads crash_recovery`), and the runner's
//! fork-server replacement (death seen -> replacement ready) went from 1.78-2.18 ms to
//! 0.64-0.79 ms (three interleaved pairs).
//!
//! A server that dies (SIGKILL from outside, a crash) takes its workers with it
//! (`PR_SET_PDEATHSIG`): the pools see them as lost workers, as for any death, and the next
//! request for a worker, from any pool of the process, starts a new server.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use ipc_shm::os::{ChildSignals, Signal};
use serde::{Deserialize, Serialize};

use crate::error::{Exit, PoolError, SpawnError, SpawnErrorKind};
use crate::slot::{PROGRESS_SLOT_TAG, ProgressSlot};
use crate::start::{FORK_LOCK, Reaper, Worker};
use crate::wire::codec;
use crate::wire::transport::{self, PipeLink};

/// The role argument (`argv[1]`) of the fork server (see `spawn::ROLE_SPAWN` for why an argument).
pub(super) const ROLE_SERVER: &str = "--ipc-pool-role=forkserver";
/// The variable that names the server's inherited socket.
const ENV_SERVER_SOCK: &str = "IPC_POOL_SERVER_SOCK";

// ---------------------------------------------------------------------------------------------
// The server.

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum ToServer {
    /// Fork a worker; the message carries [pipe shm, pipe socket, slot] descriptors. (Also what
    /// a blank, or a spawn standby, receives from the pool when it is handed a worker's seat.)
    Fork { side: u32 },
    /// The pool handed a worker's seat to the advertised blank `pid` itself: it is a worker now.
    Used { pid: u32 },
    /// The pool dropped the advertised blank `pid` without using it (asked by `Retire`).
    Unused { pid: u32 },
    /// To an advertised blank, from the pool, as soon as it is offered: take these [pipe shm,
    /// pipe socket, slot] descriptors, greet the pool on the pipe and wait there for a seat,
    /// under the blank's name (the pool says `Used` once a seat takes it: see [`prime`]).
    Prime { side: u32 },
}

#[derive(Debug, Serialize, Deserialize)]
enum FromServer {
    Forked {
        pid: u32,
    },
    /// The fork failed: the system error number if there is one, and its message.
    ForkFailed {
        errno: Option<i32>,
        message: String,
    },
    Exited {
        pid: u32,
        exit: Exit,
    },
    /// A blank child `pid`, forked ahead; the message carries the server's end of its socket,
    /// through which the pool hands it a worker's seat itself (then sends `Used`).
    Blank {
        pid: u32,
    },
    /// The server wants to replace the advertised blank `pid`: the pool answers `Unused` if it
    /// has not handed it a seat (else it has sent, or is sending, `Used`).
    Retire {
        pid: u32,
    },
}

pub(super) fn send_msg(
    sock: BorrowedFd<'_>,
    msg: &impl Serialize,
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let bytes = codec::encode(msg).map_err(|e| io::Error::other(e.to_string()))?;
    ipc_shm::os::send_with_fds(sock, &bytes, fds)
}

/// Receives one message and the descriptors it carries; `Ok(None)` at end of stream.
pub(super) fn recv_msg<T: serde::de::DeserializeOwned>(
    sock: BorrowedFd<'_>,
) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = [0u8; 512];
    let (len, fds) = ipc_shm::os::recv_with_fds(sock, &mut buf)?;
    if len == 0 {
        return Ok(None);
    }
    let value = codec::decode(&buf[..len]).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(Some((value, fds)))
}

pub(super) fn run_server() -> i32 {
    let Ok(sock) = ipc_shm::take_inherited_fd(ENV_SERVER_SOCK) else {
        return 2;
    };
    let Ok(mut sigfd) = ChildSignals::new() else {
        return 3;
    };
    let mut children: Vec<u32> = Vec::new();
    let mut blank: Option<Blank> = None;
    // A blank is wanted (one was handed out, or could not be made) but not forked yet.
    let mut blank_due = false;
    // Backtrace symbols to load once the server has served a request and is idle (see
    // `WARM_AFTER`); `false` once loaded, or if `RUST_BACKTRACE` does not ask for backtraces.
    let mut symbols_due = crate::task::backtraces_wanted();
    loop {
        let quiet = if blank_due {
            Some(BLANK_AFTER)
        } else if symbols_due && !children.is_empty() {
            Some(WARM_AFTER)
        } else {
            None
        };
        let Ok(ready) = ipc_shm::os::wait_readable(&[sock.as_fd(), sigfd.as_fd()], quiet) else {
            break;
        };
        if blank_due && !ready[0] && !ready[1] {
            // Quiet for a while: the worker just handed out is under way. Without memory for
            // a process now, the next request forks as it comes.
            blank = Blank::fork_advertised(&sock, &sigfd);
            blank_due = false;
            continue;
        }
        if quiet.is_some() && !ready[0] && !ready[1] {
            // Idle since the last workers started: load the symbols, then replace the blank
            // forked before, so that it has them too.
            crate::task::load_backtrace_symbols();
            // Tens of MiB of them: in huge pages, every later fork copies a few dozen
            // page-table entries instead of thousands (see the module docs).
            let _ = ipc_shm::os::collapse_to_huge_pages();
            symbols_due = false;
            match blank.take() {
                // The pool may be handing it a seat right now: it says whether it did (`Used`)
                // or not (`Unused`), and either way the next blank is forked then.
                Some(b) if b.advertised => {
                    let retire = FromServer::Retire { pid: b.pid };
                    if send_msg(sock.as_fd(), &retire, &[]).is_err() {
                        break;
                    }
                    blank = Some(b);
                }
                Some(stale) => {
                    stale.discard();
                    blank = Blank::fork_advertised(&sock, &sigfd);
                }
                None => {}
            }
            continue;
        }
        if ready[1] {
            sigfd.drain();
            // A blank that died is nobody's worker, unless the pool had handed it a seat
            // before its `Used` arrived: an advertised blank's end is reported, a silent one's
            // only reaped.
            if let Some(b) = &blank {
                match ipc_shm::os::try_reap(b.pid) {
                    Ok(None) => {}
                    Ok(Some(exit)) => {
                        if b.advertised {
                            let exit = FromServer::Exited {
                                pid: b.pid,
                                exit: exit.into(),
                            };
                            let _ = send_msg(sock.as_fd(), &exit, &[]);
                        }
                        blank = None;
                    }
                    Err(_) => blank = None,
                }
            }
            // Reap every child that ended and report it.
            children.retain(|&pid| match ipc_shm::os::try_reap(pid) {
                Ok(Some(exit)) => {
                    let exit = exit.into();
                    let _ = send_msg(sock.as_fd(), &FromServer::Exited { pid, exit }, &[]);
                    false
                }
                Ok(None) => true,
                Err(_) => false,
            });
        }
        if ready[0] {
            match recv_msg::<ToServer>(sock.as_fd()) {
                Ok(Some((ToServer::Used { pid }, _))) => {
                    if blank.as_ref().is_some_and(|b| b.pid == pid) {
                        blank = None;
                        children.push(pid);
                        blank_due = true;
                    }
                }
                Ok(Some((ToServer::Unused { pid }, _))) => {
                    if let Some(b) = blank.take_if(|b| b.pid == pid) {
                        b.discard();
                    }
                    // The blank given back may be gone already: a primed one exits when the
                    // pool drops its pipe, and its exit can be reaped (above) before this
                    // message is read. Either way a new blank is due, or the server would
                    // have none until the next request.
                    blank_due = blank.is_none();
                }
                Ok(Some((ToServer::Fork { side }, fds))) => {
                    // An advertised blank is the pool's to hand a seat to (it asks here only
                    // when it had none, or it was dead): fork; a silent one is used here.
                    let handed = match blank.take_if(|b| !b.advertised) {
                        Some(b) => b.hand_over(side, fds),
                        None => Err(fds),
                    };
                    let started = match handed {
                        Ok(pid) => Ok(pid),
                        Err(fds) => server_fork_one(&sock, &sigfd, side, fds),
                    };
                    let reply = match started {
                        Ok(pid) => {
                            children.push(pid);
                            FromServer::Forked { pid }
                        }
                        Err(e) => FromServer::ForkFailed {
                            errno: e.raw_os_error(),
                            message: e.to_string(),
                        },
                    };
                    if send_msg(sock.as_fd(), &reply, &[]).is_err() {
                        break;
                    }
                    // The next request's process, forked once the server has been quiet a
                    // moment: forking now would take a CPU from the worker just started.
                    blank_due = blank.is_none();
                }
                // The pool's process is gone (or broke the protocol): end our workers too.
                Ok(Some((ToServer::Prime { .. }, _))) | Ok(None) | Err(_) => break,
            }
        }
    }
    for pid in children.into_iter().chain(blank.map(|b| b.pid)) {
        let _ = ipc_shm::os::kill(pid, Signal::SIGKILL);
        let _ = ipc_shm::os::reap(pid);
    }
    0
}

/// How long the server waits after a request before it forks the next blank: forked at once,
/// the blank competed for the 2-vCPU VM with the worker it had just handed the request to (and
/// with the dead worker's teardown), which then greeted its pool 300 us later.
const BLANK_AFTER: std::time::Duration = std::time::Duration::from_micros(300);

/// How long the server must have been idle, after serving its first request, before it loads
/// the program's backtrace symbols (only with `RUST_BACKTRACE` set, once): it takes 180-240 ms,
/// during which requests wait, so not in the middle of a pool's start-up, whose requests come
/// a few hundred microseconds apart. See `task::load_backtrace_symbols`.
const WARM_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

/// The name of a blank child while it waits (see the module docs).
pub(crate) const BLANK_NAME: &std::ffi::CStr = c"pool-blank";

/// A child forked ahead of the request it will serve (see the module docs).
struct Blank {
    pid: u32,
    /// The server's end of the blank's socket: the request's descriptors go through it.
    sock: OwnedFd,
    /// The pool holds a copy of `sock` (`FromServer::Blank`) and may hand the blank a seat
    /// itself; the server then never does, and reports the blank's end.
    advertised: bool,
}

impl Blank {
    /// Forks a blank and offers it to the pool (see the module docs); `None` if no process
    /// could be made (the next request then forks as it comes).
    fn fork_advertised(server_sock: &OwnedFd, sigfd: &ChildSignals) -> Option<Blank> {
        let mut blank = Blank::fork(server_sock, sigfd).ok()?;
        let offer = FromServer::Blank { pid: blank.pid };
        blank.advertised = send_msg(server_sock.as_fd(), &offer, &[blank.sock.as_fd()]).is_ok();
        Some(blank)
    }

    /// Forks a blank child: it waits for one request (`side` and the three descriptors) on a
    /// socket of its own, then serves the pool as a freshly forked worker would; it exits if
    /// the socket closes instead.
    fn fork(server_sock: &OwnedFd, sigfd: &ChildSignals) -> io::Result<Blank> {
        let (ours, theirs) = ipc_shm::os::seqpacket_pair()?;
        let close = [server_sock.as_fd(), sigfd.as_fd(), ours.as_fd()];
        // The server takes the blank's name for the instant of the fork, so the child is born
        // with it: a blank is never seen under the server's (and its workers') name, not even
        // before its first instruction (a scan of /proc that caught one then took it for a
        // worker: the fault suite's warm-spare test, about once in 60 runs).
        let own = ipc_shm::os::thread_name().ok();
        let _ = ipc_shm::os::set_thread_name(BLANK_NAME);
        let restore = own.clone();
        let forked = ipc_shm::os::fork_then(&close, move || {
            crate::worker::prewarm();
            match recv_msg::<ToServer>(theirs.as_fd()) {
                Ok(Some((ToServer::Fork { side }, fds))) => {
                    drop(theirs);
                    if let Some(name) = own {
                        let _ = ipc_shm::os::set_thread_name(&name);
                    }
                    become_worker(side, fds, None)
                }
                // Primed: greets the pool now, takes its name once a seat's first request comes.
                Ok(Some((ToServer::Prime { side }, fds))) => {
                    drop(theirs);
                    become_worker(side, fds, own)
                }
                _ => crate::worker::code::LINK,
            }
        });
        if let Some(name) = restore {
            let _ = ipc_shm::os::set_thread_name(&name);
        }
        Ok(Blank {
            pid: forked?,
            sock: ours,
            advertised: false,
        })
    }

    /// Ends a blank that will not be used (killed and reaped here, not reported).
    fn discard(self) {
        let _ = ipc_shm::os::kill(self.pid, Signal::SIGKILL);
        let _ = ipc_shm::os::reap(self.pid);
    }

    /// Hands a request to the blank; gives the descriptors back if it cannot take them (it
    /// died), and the caller forks instead.
    fn hand_over(self, side: u32, fds: Vec<OwnedFd>) -> Result<u32, Vec<OwnedFd>> {
        let sent = {
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|fd| fd.as_fd()).collect();
            send_msg(self.sock.as_fd(), &ToServer::Fork { side }, &borrowed)
        };
        match sent {
            Ok(()) => Ok(self.pid),
            Err(_) => {
                // Dead (or unable to take descriptors): make sure, and reap it, silently.
                self.discard();
                Err(fds)
            }
        }
    }
}

fn server_fork_one(
    sock: &OwnedFd,
    sigfd: &ChildSignals,
    side: u32,
    fds: Vec<OwnedFd>,
) -> io::Result<u32> {
    let mut fds = fds.into_iter();
    let (Some(shm), Some(pipe_sock), Some(slot_fd), None) =
        (fds.next(), fds.next(), fds.next(), fds.next())
    else {
        return Err(io::Error::other(
            "a fork request needs exactly three descriptors",
        ));
    };
    // The worker: the server's descriptors are closed in the child (it never touches them).
    ipc_shm::os::fork_then(&[sock.as_fd(), sigfd.as_fd()], move || {
        become_worker(side, vec![shm, pipe_sock, slot_fd], None)
    })
    // In the server, the descriptors were moved into the closure and are dropped here.
}

/// In a child of the server (forked for the request, or a blank handed it): drops the server's
/// signal mask, then serves the pool over the request's pipe (`fds`: its segment and socket,
/// then the progress slot). `name`: the name to take at the first request (see
/// [`crate::worker::serve`]).
pub(super) fn become_worker(side: u32, fds: Vec<OwnedFd>, name: Option<CString>) -> i32 {
    let _ = ipc_shm::os::unblock_all_signals();
    let mut fds = fds.into_iter();
    let (Some(shm), Some(pipe_sock), Some(slot_fd), None) =
        (fds.next(), fds.next(), fds.next(), fds.next())
    else {
        return crate::worker::code::LINK;
    };
    let link = ipc_pipe::Connection::from_raw_parts(shm, pipe_sock, side as usize);
    let slot = ipc_shm::OpenOptions::new(PROGRESS_SLOT_TAG)
        .from_fd(slot_fd)
        .ok()
        .and_then(ProgressSlot::from_segment);
    match (link, slot) {
        (Ok(conn), Some(slot)) => crate::worker::serve(
            PipeLink::from_connection(conn),
            &slot,
            crate::worker::JobWait::Poll,
            name,
        ),
        _ => crate::worker::code::LINK,
    }
}

// ---------------------------------------------------------------------------------------------
// The pool's side.

/// The pool's connection to one fork server: one request at a time, replies and exit statuses
/// delivered by a reader thread. Workers keep the connection that forked them (to learn how they
/// ended), so a replaced server's workers are still reaped through the old one.
pub(crate) struct ForkServerClient {
    sock: OwnedFd,
    server_pid: u32,
    /// The process that started the server: the only one whose reader thread gets the replies
    /// (a forked child inherits a copy of this record, but not the thread).
    owner: u32,
    request: Mutex<()>,
    state: Mutex<ForkServerState>,
    changed: Condvar,
}

/// What the reader thread has received: the pending request's reply, exit statuses not yet
/// collected, and whether the server is gone.
#[derive(Default)]
struct ForkServerState {
    reply: Option<io::Result<u32>>,
    exits: HashMap<u32, Exit>,
    dead: bool,
    /// The blank the server offered: its pid and a copy of the server's end of its socket
    /// (when it could not be primed).
    blank: Option<(u32, OwnedFd)>,
    /// The blank the server offered, primed (see [`prime`]): a started worker that has
    /// greeted this process, waiting for a seat.
    primed: Option<Worker>,
    /// Blanks this process dropped after a hand-over failed (dead): their reported end is
    /// nobody's to collect.
    dropped_blanks: Vec<u32>,
}

/// The current fork server of this process: started by the first pool that needs it, and
/// started again by the next request after it died (a SIGKILL, a crash), so that its death
/// costs the workers it took with it and nothing more.
static CLIENT: Mutex<Option<Arc<ForkServerClient>>> = Mutex::new(None);

impl ForkServerClient {
    fn lock(&self) -> std::sync::MutexGuard<'_, ForkServerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_dead(&self) -> bool {
        self.lock().dead
    }

    /// Marks the server gone (its socket failed) and wakes whoever waits on it.
    fn mark_dead(&self) {
        self.lock().dead = true;
        self.changed.notify_all();
    }

    /// How worker `pid` ended, if the server has reported it (never blocks).
    pub(crate) fn try_reap(&self, pid: u32) -> io::Result<Option<Exit>> {
        let mut state = self.lock();
        match state.exits.remove(&pid) {
            Some(exit) => Ok(Some(exit)),
            None if state.dead => Err(io::Error::other("the fork server is gone")),
            None => Ok(None),
        }
    }

    /// Waits for the server to report how worker `pid` ended.
    pub(crate) fn reap(&self, pid: u32) -> io::Result<Exit> {
        let mut state = self.lock();
        loop {
            if let Some(exit) = state.exits.remove(&pid) {
                return Ok(exit);
            }
            if state.dead {
                return Err(io::Error::other("the fork server is gone"));
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The client record held across a `Fork` worker's fork (see `fork::start`): the child's
/// copy is then held only by the forking thread, which drops it, so a fork-server pool made by
/// one of the worker's tasks can take it (and then forgets the parent's record, see
/// [`client`]). Taken after [`FORK_LOCK`]: nothing holds this lock while it takes that one.
pub(super) fn hold_for_fork() -> impl Drop {
    CLIENT.lock().unwrap_or_else(|p| p.into_inner())
}

/// The live fork server, started (again) if there is none.
fn client() -> Result<Arc<ForkServerClient>, PoolError> {
    let mut current = CLIENT.lock().unwrap_or_else(|p| p.into_inner());
    if current
        .as_ref()
        .is_some_and(|c| c.owner != ipc_shm::os::pid())
    {
        // In a forked child (a `Fork` worker whose task makes a pool): the parent's connection,
        // its offered blank and its primed worker are the parent's, to use nor to drop here
        // (dropping a primed worker's pipe end could disturb the parent's). Forgotten; this
        // process starts a server of its own.
        std::mem::forget(current.take());
    }
    if let Some(client) = current.as_ref()
        && !client.is_dead()
    {
        return Ok(client.clone());
    }
    let client = start_server()
        .map_err(|e| SpawnError::new(SpawnErrorKind::ForkServerStart(Arc::new(e))))?;
    *current = Some(client.clone());
    Ok(client)
}

/// The pid of the current fork server, if one runs (test support: the fault suite kills it).
pub(crate) fn server_pid() -> Option<u32> {
    let current = CLIENT.lock().unwrap_or_else(|p| p.into_inner());
    current
        .as_ref()
        .filter(|c| c.owner == ipc_shm::os::pid() && !c.is_dead())
        .map(|c| c.server_pid)
}

fn start_server() -> io::Result<Arc<ForkServerClient>> {
    let (ours, theirs) = ipc_shm::os::seqpacket_pair()?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(ROLE_SERVER);
    ipc_shm::pass_fd_to_command(&mut cmd, theirs.as_fd(), ENV_SERVER_SOCK)?;
    let child = cmd.stdin(std::process::Stdio::null()).spawn()?;
    drop(cmd);
    drop(theirs);
    let server_pid = child.id();
    // Reap the server when it ends (it ends with our process, or if it crashes).
    std::thread::Builder::new()
        .name("pool-forkserver-reaper".into())
        .spawn(move || {
            let mut child = child;
            let _ = child.wait();
        })?;
    let reader_sock = ours.try_clone()?;
    let client = Arc::new(ForkServerClient {
        sock: ours,
        server_pid,
        owner: ipc_shm::os::pid(),
        request: Mutex::new(()),
        state: Mutex::new(ForkServerState::default()),
        changed: Condvar::new(),
    });
    let theirs = client.clone();
    std::thread::Builder::new()
        .name("pool-forkserver-reader".into())
        .spawn(move || read_server(reader_sock, &theirs))?;
    Ok(client)
}

fn read_server(sock: OwnedFd, client: &Arc<ForkServerClient>) {
    loop {
        let msg = recv_msg::<FromServer>(sock.as_fd());
        // A blank is primed at once, off the lock (its pipe is made and handed over here).
        let msg = match msg {
            Ok(Some((FromServer::Blank { pid }, fds))) => {
                let fd = fds.into_iter().next();
                let primed = fd.as_ref().and_then(|fd| prime(client, pid, fd.as_fd()));
                let mut state = client.lock();
                match primed {
                    Some(worker) => state.primed = Some(worker),
                    None => state.blank = fd.map(|fd| (pid, fd)),
                }
                drop(state);
                client.changed.notify_all();
                continue;
            }
            other => other,
        };
        let mut state = client.lock();
        // A primed blank given back or dead is dropped off the lock (its pipe closes).
        let mut stale = None;
        match msg {
            Ok(Some((FromServer::Forked { pid }, _))) => state.reply = Some(Ok(pid)),
            Ok(Some((FromServer::ForkFailed { errno, message }, _))) => {
                state.reply = Some(Err(match errno {
                    Some(errno) => io::Error::from_raw_os_error(errno),
                    None => io::Error::other(message),
                }));
            }
            Ok(Some((FromServer::Exited { pid, exit }, _))) => {
                if state.primed.as_ref().is_some_and(|w| w.pid == pid) {
                    // The primed blank died before any seat took it.
                    stale = state.primed.take();
                } else if state.blank.as_ref().is_some_and(|(b, _)| *b == pid) {
                    // The offered blank died before anybody used it.
                    state.blank = None;
                } else if let Some(at) = state.dropped_blanks.iter().position(|&b| b == pid) {
                    state.dropped_blanks.swap_remove(at);
                } else {
                    state.exits.insert(pid, exit);
                }
            }
            Ok(Some((FromServer::Blank { .. }, _))) => {}
            Ok(Some((FromServer::Retire { pid }, _))) => {
                // Unless a driver has just taken it (its `Used` is on the way), give it back.
                stale = state.primed.take_if(|w| w.pid == pid);
                if stale.is_some() || state.blank.take_if(|(b, _)| *b == pid).is_some() {
                    let _ = send_msg(sock.as_fd(), &ToServer::Unused { pid }, &[]);
                }
            }
            Ok(None) | Err(_) => {
                state.dead = true;
                // It died with the server; its pipe is nobody's.
                let stale = state.primed.take();
                drop(state);
                drop(stale);
                client.changed.notify_all();
                return;
            }
        }
        drop(state);
        drop(stale);
        client.changed.notify_all();
    }
}

/// How many servers one request tries: the current one, and a new one if that one turns out to
/// have died (its death may not have been noticed yet when the request began).
const SERVER_TRIES: usize = 2;

/// Asks the fork server for a worker on `theirs` and `slot`; returns its pid and the server
/// connection that will report its exit. A dead server is replaced.
pub(crate) fn server_fork(
    theirs: PipeLink,
    slot: &ProgressSlot,
) -> Result<(u32, Arc<ForkServerClient>), PoolError> {
    let (shm, sock, side) = theirs
        .into_raw_parts()
        .map_err(|e| PoolError::os("handing the worker pipe to the fork server", e))?;
    let fds = [shm.as_fd(), sock.as_fd(), slot.segment().fd()];
    let mut last = PoolError::from(SpawnErrorKind::ForkServerGone);
    for _ in 0..SERVER_TRIES {
        let client = client()?;
        // The blank the server offered takes the seat without waking the server (one process
        // fewer on the path from a worker's death to its replacement); the server learns it
        // afterwards and forks the next blank.
        let offered = client.lock().blank.take();
        if let Some((pid, blank)) = offered {
            let fork = ToServer::Fork { side: side as u32 };
            if send_msg(blank.as_fd(), &fork, &fds).is_ok() {
                let _ = send_msg(client.sock.as_fd(), &ToServer::Used { pid }, &[]);
                return Ok((pid, client));
            }
            // It died: its end, reported or about to be, is nobody's; ask the server.
            let mut state = client.lock();
            if state.exits.remove(&pid).is_none() {
                state.dropped_blanks.push(pid);
            }
            drop(state);
        }
        let _one_at_a_time = client.request.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = send_msg(
            client.sock.as_fd(),
            &ToServer::Fork { side: side as u32 },
            &fds,
        ) {
            // The server is gone (EPIPE, ECONNRESET) or the socket is unusable: start anew.
            client.mark_dead();
            last = PoolError::os("asking the fork server for a worker", e);
            continue;
        }
        let mut state = client.lock();
        loop {
            if let Some(reply) = state.reply.take() {
                return reply
                    .map(|pid| (pid, client.clone()))
                    .map_err(|e| SpawnErrorKind::ForkServerFork(Arc::new(e)).into());
            }
            if state.dead {
                // It died before answering; the worker, if forked, died with it.
                last = SpawnErrorKind::ForkServerGone.into();
                break;
            }
            state = client
                .changed
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
    Err(last)
}

/// Primes the blank `pid` the server just offered (`blank`: a copy of the server's end of its
/// socket): makes a worker's pipe and progress slot and hands them to the blank, which greets
/// this process on the pipe and waits there. A seat's start then takes a worker that is
/// already up ([`take_primed`]): no process to wake, no pipe to make, its greeting waiting.
/// `None` if the pipe or slot cannot be made or the blank is dead: the blank is then offered
/// unprimed, as before.
///
/// The blank stays the server's advertised blank until a seat takes it (`Used`): the server
/// may still ask for it back (`Retire`, answered `Unused`) and reports its end if it dies.
fn prime(client: &Arc<ForkServerClient>, pid: u32, blank: BorrowedFd<'_>) -> Option<Worker> {
    // As for any worker's pipe: no `Fork` pool's worker may inherit the blank's end. Not waited
    // for (the reader thread has replies to deliver): held by a `Fork` pool's start right now,
    // the blank is offered unprimed.
    let _no_fork = match FORK_LOCK.try_lock() {
        Ok(guard) => guard,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return None,
    };
    let (ours, slot) = prime_over(blank)?;
    Some(Worker::new(pid, ours, slot, Reaper::Server(client.clone())))
}

/// Primes the process waiting for a request on `sock` (the fork server's blank, or a spawn
/// standby): makes a worker's pipe and progress slot and hands them over (`ToServer::Prime`);
/// it greets this process on the pipe and waits there. This process's end of the pipe and the
/// slot, or `None` if they cannot be made or the process cannot take them (it died). The caller
/// holds [`FORK_LOCK`].
pub(super) fn prime_over(sock: BorrowedFd<'_>) -> Option<(PipeLink, ProgressSlot)> {
    let slot = ProgressSlot::new().ok()?;
    let (ours, theirs) = transport::pair().ok()?;
    let (shm, pipe_sock, side) = theirs.into_raw_parts().ok()?;
    let prime = ToServer::Prime { side: side as u32 };
    send_msg(
        sock,
        &prime,
        &[shm.as_fd(), pipe_sock.as_fd(), slot.segment().fd()],
    )
    .ok()?;
    Some((ours, slot))
}

/// The primed blank, if the current server offered one and it still runs: told `Used`, it
/// is the caller's worker (its greeting waits on its pipe).
fn take_primed(client: &Arc<ForkServerClient>) -> Option<Worker> {
    let mut worker = client.lock().primed.take()?;
    if worker.wait_exit(Duration::ZERO) {
        // Dead (killed from outside): its end, reported or about to be, is nobody's.
        let mut state = client.lock();
        if state.exits.remove(&worker.pid).is_none() {
            state.dropped_blanks.push(worker.pid);
        }
        return None;
    }
    let used = ToServer::Used { pid: worker.pid };
    if send_msg(client.sock.as_fd(), &used, &[]).is_err() {
        // The server is gone, and the blank with it.
        client.mark_dead();
        return None;
    }
    worker.seated();
    Some(worker)
}

/// Starts a worker through the fork server: its primed blank if there is one, else a new
/// pipe and progress slot handed to a blank or to a fork by the server.
pub(super) fn start() -> Result<Worker, PoolError> {
    let client = client()?;
    if let Some(worker) = take_primed(&client) {
        return Ok(worker);
    }
    let slot = super::new_slot()?;
    let (ours, theirs) = transport::pair()?;
    let (pid, server) = server_fork(theirs, &slot)?;
    Ok(Worker::new(pid, ours, slot, Reaper::Server(server)))
}
