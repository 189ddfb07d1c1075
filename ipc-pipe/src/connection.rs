//! [`Connection`]: one end of a pipe, its state, its checks (owner, closed, poisoned) and its
//! hang-up on drop. The send path is in `tx.rs`, the receive path in `rx.rs`, readiness in
//! `readiness.rs`, passing an end to another process in `inherit.rs`.
//!
//! An end ([`Connection`]) holds the shared segment (an `Arc`, so both ends of a pipe made in
//! one process share one mapping), its own socket of the pipe's socketpair, and private copies
//! of the counters it owns (the tail of its outgoing ring, the head of its incoming ring).
//!
//! # Waiting
//!
//! A receiver that finds no message first spins on the ring's `tail` for an adaptive number of
//! polls (doubled after a spin that succeeded, halved after one that had to sleep, within
//! `[SPIN_MIN, spin limit]`), so hot peers exchange messages near the spin floor and an idle
//! receiver quickly stops spinning. (Growing the budget after short sleeps too lets peers busy
//! a few microseconds per message keep spinning: measured 54 -> 4 us for 64 KiB round trips.
//! It is not done yet because it also keeps receivers spinning on machines with fewer cores
//! than busy threads, a process pool on two cores, and its cost there was not measurable
//! above this machine's noise; see the project's issues.) Then it sleeps, in one of two ways:
//!
//! - **futex mode** (default): it sets `SLEEP` in the ring's `rx_wait` word and waits on that
//!   word with the shared futex of `ipc_sync::futex`, in slices of [`SLICE`]; between slices it
//!   checks its socket for hang-up, so a peer killed by `SIGKILL` (which cannot wake anyone) is
//!   noticed within one slice. A clean drop or close of the peer wakes it at once.
//! - **fd mode** (after [`Connection::set_pollable`], `as_fd`/`as_raw_fd` or
//!   [`wait`](crate::wait)): it
//!   sets `ARMED` and sleeps in `poll(2)` on its socket. The sender writes one byte to the socket
//!   when it finds `ARMED`, and the kernel reports hang-up of a dead peer on the same socket, so
//!   no slicing is needed and the fd can be handed to epoll/mio/tokio.
//!
//! Why both, and why slices: measured on the reference VM (64-byte round trip, both peers
//! asleep, `cargo bench -p benches --bench ipc_pipe_connection`), futex mode took 5.4-6.7 us
//! against 4.7-5.0 us for the raw shared-futex floor, fd mode 6.9 us, a socketpair 9.4-10.1 us.
//! The same futex mode with *untimed* waits matched the floor (4.8 us vs 4.8-4.9 us): the
//! whole gap is the cost of arming and cancelling the slice's timer on a VM, and a 200 ms slice
//! cost the same as 20 ms. An untimed wait cannot notice a `SIGKILL`ed peer (nobody is left to
//! wake it), so the timed slice stays: never hanging is a requirement, the ~0.8 us is not.
//! fd mode is kept for event loops, not for speed.
//!
//! # One process per end
//!
//! An end is single-consumer and single-producer: one thread (it is `Send`, not `Sync`) of one
//! process at a time. After `fork`, the process that keeps using an end must be the only one:
//! the other drops its copy (as with Python's `Pipe`, whose parent closes the child's end). This
//! is checked cheaply on the slow paths: the segment records the pid using each end; a forked
//! copy that starts using it claims it, and a process that then uses a copy claimed by another
//! live process gets `WrongProcess`.

use std::cell::Cell;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use ipc_shm::{Offset, Segment};
use ipc_sync::futex;

use crate::builder::{Settings, control_size};
use crate::error::Fail;
use crate::os;
use crate::ring::{self, Control, Corruption, GONE, MAGIC, MIN_CAP, RingCtl, SLEEP, VERSION};
use crate::slots::Slots;
use crate::sync::Ordering;

/// The longest futex sleep between two hang-up checks.
pub(crate) const SLICE: Duration = Duration::from_millis(20);
/// The fewest spin polls an end keeps (unless the spin limit is lower).
pub(crate) const SPIN_MIN: u32 = 16;

/// One end of a duplex pipe: sends to and receives from the other end, possibly in another
/// process.
///
/// Messages are serde values encoded with bincode ([`send`](Connection::send) /
/// [`recv`](Connection::recv)) or raw bytes ([`send_bytes`](Connection::send_bytes) /
/// [`recv_bytes`](Connection::recv_bytes)); the two kinds share one stream of frames. Every
/// method takes `&self`; a `Connection` is `Send` but not `Sync` (one user at a time).
///
/// Dropping it closes this process's handle: once every process holding this end has dropped
/// it or died, the other end gets [`RecvError::Disconnected`](crate::RecvError::Disconnected) (after receiving every message
/// already sent) and [`SendError::Disconnected`](crate::SendError::Disconnected). [`close`](Connection::close) closes the end for
/// every process at once.
///
/// # Passing an end to a child
///
/// Across `fork` the child simply keeps using its copy (and the parent drops it). Across `exec`,
/// [`pass_to_command`](Connection::pass_to_command) and
/// [`from_inherited`](Connection::from_inherited):
///
/// ```no_run
/// use std::process::Command;
/// // Parent:
/// let (mine, theirs) = ipc_pipe::pipe()?;
/// let mut cmd = Command::new("/path/to/worker");
/// theirs.pass_to_command(&mut cmd, "WORKER_PIPE")?;
/// let mut child = cmd.spawn()?;
/// drop((theirs, cmd)); // only the child holds that end now
/// mine.send(&"job")?;
/// // Worker:
/// let conn = ipc_pipe::Connection::from_inherited("WORKER_PIPE")?;
/// let job: String = conn.recv()?;
/// # child.wait()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Connection {
    pub(crate) seg: Arc<Segment>,
    pub(crate) side: usize,
    pub(crate) sock: Option<OwnedFd>,
    pub(crate) tx: Slots,
    pub(crate) rx: Slots,
    pub(crate) tx_tail: Cell<u64>,
    pub(crate) tx_head_cache: Cell<u64>,
    pub(crate) rx_head: Cell<u64>,
    pub(crate) rx_tail_cache: Cell<u64>,
    pub(crate) spin: Cell<u32>,
    pub(crate) settings: Settings,
    pub(crate) fd_mode: Cell<bool>,
    pub(crate) pid: Cell<u32>,
    /// Set after corruption or a message cut short by the peer's death: the stream is no longer
    /// framed, every later receive fails with this.
    pub(crate) broken: Cell<Option<BrokenKind>>,
    pub(crate) scratch: Cell<Vec<u8>>,
    /// Set by `release`: drop closes descriptors only.
    pub(crate) released: bool,
    _not_sync: PhantomData<Cell<()>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("side", &self.side)
            .field("capacity_out", &self.tx.cap())
            .field("capacity_in", &self.rx.cap())
            .field("fd_mode", &self.fd_mode.get())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum BrokenKind {
    Disconnected,
    Corrupted(Corruption),
}

impl Connection {
    /// Builds end `side` over a validated segment and initialises the private counters from the
    /// shared ones (validated).
    pub(crate) fn attach(
        seg: Arc<Segment>,
        side: usize,
        sock: OwnedFd,
        settings: Settings,
    ) -> Result<Connection, Corruption> {
        let bad = |what, value| Corruption { what, value };
        if side > 1 {
            return Err(bad("side", side as u64));
        }
        let ctl = seg
            .get(Offset::<Control>::from_raw(0))
            .map_err(|_| bad("segment length", seg.len() as u64))?;
        let magic = ctl.magic.load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(bad("magic", magic));
        }
        let version = ctl.version.load(Ordering::Acquire);
        if version != VERSION {
            return Err(bad("version", version));
        }
        let mut caps = [0usize; 2];
        for (i, cap) in caps.iter_mut().enumerate() {
            let raw = ctl.cap[i].load(Ordering::Acquire);
            *cap = usize::try_from(raw)
                .ok()
                .filter(|c| *c >= MIN_CAP && c.is_power_of_two())
                .ok_or(bad("ring capacity", raw))?;
        }
        let data0 = control_size();
        let data1 = data0
            .checked_add(caps[0])
            .ok_or(bad("ring capacity", caps[0] as u64))?;
        let slots = [
            Slots::new(seg.clone(), data0, caps[0]).ok_or(bad("ring capacity", caps[0] as u64))?,
            Slots::new(seg.clone(), data1, caps[1]).ok_or(bad("ring capacity", caps[1] as u64))?,
        ];
        let tx_ring = &ctl.rings[side];
        let rx_ring = &ctl.rings[1 - side];
        let tx_tail = tx_ring.tail.load(Ordering::Acquire);
        let tx_head = tx_ring.head.load(Ordering::Acquire);
        ring::validate_used(tx_tail, tx_head, caps[side])?;
        let rx_head = rx_ring.head.load(Ordering::Acquire);
        let [s0, s1] = slots;
        let (tx, rx) = if side == 0 { (s0, s1) } else { (s1, s0) };
        let pid = os::pid();
        ctl.user_pid[side].store(pid, Ordering::Relaxed);
        let spin = settings.spin;
        Ok(Connection {
            seg,
            side,
            sock: Some(sock),
            tx,
            rx,
            tx_tail: Cell::new(tx_tail),
            tx_head_cache: Cell::new(tx_head),
            rx_head: Cell::new(rx_head),
            rx_tail_cache: Cell::new(rx_head),
            spin: Cell::new(spin),
            settings,
            fd_mode: Cell::new(false),
            pid: Cell::new(pid),
            broken: Cell::new(None),
            scratch: Cell::new(Vec::new()),
            released: false,
            _not_sync: PhantomData,
        })
    }

    #[inline]
    pub(crate) fn ctl(&self) -> &Control {
        // The segment was checked to hold a whole `Control` at offset 0 in `attach`, and a
        // segment's length never changes.
        self.seg
            .get(Offset::<Control>::from_raw(0))
            .expect("control block validated in attach")
    }

    #[inline]
    pub(crate) fn tx_ring(&self) -> &RingCtl {
        &self.ctl().rings[self.side]
    }

    #[inline]
    pub(crate) fn rx_ring(&self) -> &RingCtl {
        &self.ctl().rings[1 - self.side]
    }

    pub(crate) fn sock(&self) -> BorrowedFd<'_> {
        self.sock
            .as_ref()
            .expect("the socket is only taken in drop")
            .as_fd()
    }

    /// Which end of the pipe this is (0 or 1).
    pub fn side(&self) -> usize {
        self.side
    }

    // ----- checks -----

    pub(crate) fn closed_flag(&self) -> bool {
        let ctl = self.ctl();
        ctl.closed[0].load(Ordering::Acquire) != 0 || ctl.closed[1].load(Ordering::Acquire) != 0
    }

    /// Misuse detection (slow paths only; one `getpid`).
    pub(crate) fn check_owner(&self) -> Result<(), Fail> {
        let me = os::pid();
        let slot = &self.ctl().user_pid[self.side];
        if me != self.pid.get() {
            // A forked copy starts using the end: it becomes the user.
            slot.store(me, Ordering::Relaxed);
            self.pid.set(me);
            return Ok(());
        }
        let owner = slot.load(Ordering::Relaxed);
        if owner != me && owner != 0 {
            if os::process_exists(owner) {
                return Err(Fail::WrongProcess { owner });
            }
            slot.store(me, Ordering::Relaxed);
        }
        Ok(())
    }

    pub(crate) fn check_broken(&self) -> Result<(), Fail> {
        match self.broken.get() {
            None => Ok(()),
            Some(BrokenKind::Disconnected) => Err(Fail::Disconnected),
            Some(BrokenKind::Corrupted(c)) => Err(Fail::Corrupted(c)),
        }
    }

    pub(crate) fn poison(&self, f: Fail) -> Fail {
        match f {
            Fail::Corrupted(c) => self.broken.set(Some(BrokenKind::Corrupted(c))),
            Fail::Disconnected => self.broken.set(Some(BrokenKind::Disconnected)),
            _ => {}
        }
        f
    }

    /// Closes this end for every process that holds it (a forked copy included): the other end
    /// sees [`RecvError::Disconnected`](crate::RecvError::Disconnected)(crate::RecvError::Disconnected) once it has received what
    /// was sent. Dropping a `Connection` instead closes only this process's handle.
    pub fn close(self) {
        self.ctl().closed[self.side].store(1, Ordering::Release);
        drop(self);
    }

    /// Gives up this process's copy of an end that another process now uses (after `fork`, or
    /// after passing it to a child): closes this process's descriptors and mapping without
    /// waking or otherwise disturbing the peer. (Dropping also works, but wakes the peer so that
    /// it re-checks for hang-up.)
    pub fn release(mut self) {
        drop(self.sock.take());
        self.released = true;
    }

    /// Test hook (only with the `test-support` feature, which the crate's own tests enable):
    /// writes `value` over the shared `tail` counter of the ring this end reads, as a hostile
    /// or buggy peer could.
    #[cfg(feature = "test-support")]
    #[doc(hidden)]
    pub fn __corrupt_incoming_tail(&self, value: u64) {
        self.rx_ring().tail.store(value, Ordering::SeqCst);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Close our socket first, so that a woken peer that checks for hang-up sees it.
        drop(self.sock.take());
        if self.released {
            return;
        }
        let ctl = self.ctl();
        // The peer as consumer of our outgoing ring, and as producer into our incoming ring.
        let peer_rx = &ctl.rings[self.side].rx_wait;
        let peer_tx = &ctl.rings[1 - self.side].tx_wait;
        for word in [peer_rx, peer_tx] {
            if word.fetch_or(GONE, Ordering::SeqCst) & SLEEP != 0 {
                futex::wake_all(word);
            }
        }
    }
}
