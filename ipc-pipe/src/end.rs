//! [`End`]: one end's protocol state, generic over its memory, its waiter and its link, so the
//! loom build checks the send and receive paths that ship.
//!
//! An end is four things the algorithm needs and production and the loom models provide
//! differently:
//!
//! | part          | production ([`Connection`](crate::Connection))      | loom models (`model.rs`)       |
//! |---------------|-----------------------------------------------------|--------------------------------|
//! | control `C`   | the [`Control`] block at offset 0 of the segment    | a heap `Control` in a loom Arc |
//! | bytes `M`     | `ipc_shm::ShmRing` (the rings' data in the segment) | `ipc_shm::LoomRing` (loom cells) |
//! | waiter `W`    | [`ipc_sync::Futex`], the shared futex               | the same type: loom's model    |
//! | link `L`      | the end's socket ([`Link`]): hang-up, fd readiness  | a flag that models hang-up     |
//!
//! The send path (`tx.rs`) and the receive path (`rx.rs`) are `impl` blocks on this type; this
//! file holds the state, the checks every slow path makes (closed, poisoned, owner) and the
//! goodbye of a dropped end (`GONE` plus a wake-up of a sleeping peer).

use std::cell::{Cell, RefCell};
use std::ops::Deref;
use std::time::{Duration, Instant};

use ipc_sync::{Backoff, Waiter};

use crate::error::Fail;
use crate::ring::{self, Control, Corruption, GONE, RingCtl, SLEEP};
use crate::sync::Ordering;
use ipc_shm::ByteRing;

/// The longest futex sleep between two hang-up checks.
pub(crate) const SLICE: Duration = Duration::from_millis(20);
/// Default maximum message size: the largest frame of the shared codec (1 GiB).
pub(crate) const MAX_MESSAGE_DEFAULT: usize = ipc_shm::codec::MAX_FRAME_LEN;

/// The per-end settings a builder hands to both ends (each end gets its own clone, so its
/// backoff adapts to its own peer).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// How long the end spins before sleeping, adapting between waits (`PipeBuilder::spin_limit`,
    /// `PipeBuilder::spin_max`): the workspace's one `ipc_sync::Backoff`.
    pub(crate) backoff: Backoff,
    /// The largest message (`PipeBuilder::max_message_size`).
    pub(crate) max_message: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            backoff: Backoff::new(),
            max_message: MAX_MESSAGE_DEFAULT,
        }
    }
}

/// What an end needs from the outside world besides shared memory and the futex: the peer's
/// liveness, fd-mode readiness, and process ids for misuse detection.
pub(crate) trait Link {
    /// Whether the peer hung up (non-blocking check; may cost a system call).
    fn hung_up(&self) -> bool;
    /// fd mode: reads and discards pending readiness bytes; `true` if the peer hung up.
    fn drain(&self) -> bool;
    /// fd mode: makes the peer's readiness descriptor readable.
    fn notify(&self);
    /// fd mode: sleeps until this end's descriptor is readable or `timeout` passes.
    fn sleep(&self, timeout: Option<Duration>);
    /// This process's id.
    fn pid(&self) -> u32;
    /// Whether a process with this id exists.
    fn process_exists(&self, pid: u32) -> bool;
}

/// Why an end stopped being usable for receiving.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BrokenKind {
    /// A message was cut short by the peer's death.
    Disconnected,
    /// The shared memory held an impossible value.
    Corrupted(Corruption),
}

/// One end of a pipe: the shared control block `ctl`, the data areas of its outgoing (`tx`) and
/// incoming (`rx`) rings, the waiter, the link, and private copies of the counters it owns.
#[derive(Debug)]
pub(crate) struct End<C, M, W, L> {
    pub(crate) ctl: C,
    /// Which end this is (0 or 1): ring `side` is outgoing, ring `1 - side` incoming.
    pub(crate) side: usize,
    pub(crate) tx: M,
    pub(crate) rx: M,
    pub(crate) waiter: W,
    pub(crate) link: L,
    pub(crate) settings: Settings,
    /// The producer's private tail of the outgoing ring.
    pub(crate) tx_tail: Cell<u64>,
    /// The consumer's head of the outgoing ring, as last read.
    pub(crate) tx_head_cache: Cell<u64>,
    /// The consumer's private head of the incoming ring.
    pub(crate) rx_head: Cell<u64>,
    /// The producer's tail of the incoming ring, as last read.
    pub(crate) rx_tail_cache: Cell<u64>,
    /// fd mode (see `readiness.rs`): sleep in `poll(2)` on the link instead of the futex.
    pub(crate) fd_mode: Cell<bool>,
    /// fd mode: this end set `ARMED` in its incoming ring's `rx_wait` since it last drained its
    /// socket, so a readiness byte may be waiting there. A wait drains before it arms only
    /// then: a receiver woken by the byte drains once, after its `poll`, and the next wait
    /// skips the drain (see `rx.rs`, `wait_rx_sleep`).
    pub(crate) rx_armed: Cell<bool>,
    /// The process this end last ran in.
    pub(crate) pid: Cell<u32>,
    /// Set after corruption or a message cut short by the peer's death: the stream is no longer
    /// framed, every later receive fails with this.
    pub(crate) broken: Cell<Option<BrokenKind>>,
    /// A message larger than the ring whose receipt stopped at a deadline (or a `try_recv`):
    /// the bytes received so far and the announced length. Its header is consumed; the next
    /// receive resumes it (see `rx.rs`, `recv_into_vec`).
    pub(crate) partial: RefCell<Option<(Vec<u8>, usize)>>,
    /// The peer's drop count (`Control::dropped`) when this end last checked its socket for
    /// hang-up (see `peer_dropped`).
    pub(crate) peer_drops_seen: Cell<u32>,
}

impl<C, M, W, L> End<C, M, W, L>
where
    C: Deref<Target = Control>,
    M: ByteRing,
    W: Waiter,
    L: Link,
{
    /// End `side` over a control block whose magic, version and capacities were validated, with
    /// `tx`/`rx` the data areas of rings `side`/`1 - side`. Initialises the private counters
    /// from the shared ones (validated) and records this process as the end's user.
    pub(crate) fn attach(
        ctl: C,
        side: usize,
        tx: M,
        rx: M,
        waiter: W,
        link: L,
        settings: Settings,
    ) -> Result<Self, Corruption> {
        if side > 1 {
            return Err(Corruption {
                what: "side",
                value: side as u64,
            });
        }
        let tx_ring = &ctl.rings[side];
        let rx_ring = &ctl.rings[1 - side];
        let tx_tail = tx_ring.tail.load(Ordering::Acquire);
        let tx_head = tx_ring.head.load(Ordering::Acquire);
        ring::validate_used(tx_tail, tx_head, tx.cap())?;
        let rx_head = rx_ring.head.load(Ordering::Acquire);
        let pid = link.pid();
        ctl.user_pid[side].store(pid, Ordering::Relaxed);
        Ok(End {
            side,
            tx,
            rx,
            waiter,
            settings,
            tx_tail: Cell::new(tx_tail),
            tx_head_cache: Cell::new(tx_head),
            rx_head: Cell::new(rx_head),
            rx_tail_cache: Cell::new(rx_head),
            fd_mode: Cell::new(false),
            rx_armed: Cell::new(false),
            pid: Cell::new(pid),
            broken: Cell::new(None),
            partial: RefCell::new(None),
            // Zero, not the current count: a drop before this end was attached is checked once.
            peer_drops_seen: Cell::new(0),
            ctl,
            link,
        })
    }

    /// The wait policy of both directions, once: spin through the end's `Backoff` until
    /// `count()` reaches `need` (not at all for a peer that last waited on this CPU); then
    /// `sleep()`, whose length tunes the backoff (it grows after a short sleep, where the peer
    /// was busy rather than idle, and shrinks after a long one).
    ///
    /// Large messages wait the same way. An earlier rule slept at once after a message of
    /// 16 KiB or more, so that a woken peer would run on the waker's core, where the bytes are;
    /// but the scheduler often leaves the two ends on their own cores, and then every wait of
    /// a round trip paid a cross-core wake-up (the idle vCPU is halted): a hot 64 KiB round trip
    /// took 50-66 us that way, 9 us when the ends shared a core, and 3.7-4.9 us spinning. In
    /// three interleaved A/B rounds of `compare --workloads pipe_rtt_hot,pipe_rtt_asleep --sizes
    /// 64,64k --reps 5 --load 2` (2026-12-04), the hot 64 KiB round trip went from 8.9-27 us to
    /// 4.2-4.3 us quiet (11 us in a busy spell where iceoryx2's took 65 us), and from 9.1-74 us
    /// to 9.1-23 us beside two CPU hogs; 64 B is unaffected.
    pub(crate) fn spin_then_sleep(
        &self,
        need: u64,
        count: impl Fn() -> Result<u64, Fail>,
        sleep: impl FnOnce() -> Result<u64, Fail>,
    ) -> Result<u64, Fail> {
        let mut spun = Ok(0);
        // Record where we wait, and do not spin for a peer that last waited on this CPU: it
        // cannot answer before we stop (both on one core, as on a busy machine).
        let me = ipc_sync::cpu_tag();
        let mine = &self.ctl.cpu[self.side];
        if mine.load(Ordering::Relaxed) != me {
            mine.store(me, Ordering::Relaxed);
        }
        let peer = self.ctl.cpu[1 - self.side].load(Ordering::Relaxed);
        let ready = self.settings.backoff.spin_beside(peer, || match count() {
            Ok(n) if n < need => false,
            r => {
                spun = r;
                true
            }
        });
        if ready {
            return spun;
        }
        let started = Instant::now();
        let woke = sleep();
        self.settings.backoff.slept(started);
        woke
    }

    /// The outgoing ring's counters and wait words.
    #[inline]
    pub(crate) fn tx_ring(&self) -> &RingCtl {
        &self.ctl.rings[self.side]
    }

    /// The incoming ring's counters and wait words.
    #[inline]
    pub(crate) fn rx_ring(&self) -> &RingCtl {
        &self.ctl.rings[1 - self.side]
    }

    /// Whether either end was closed for every process.
    pub(crate) fn closed_flag(&self) -> bool {
        self.ctl.closed[0].load(Ordering::Acquire) != 0
            || self.ctl.closed[1].load(Ordering::Acquire) != 0
    }

    /// Whether the peer is known gone because a handle of it was dropped: one load of a
    /// read-mostly word per call; only when the peer's drop count changed since the last check
    /// does it ask the link (one `poll(2)`), so the hot path makes no system call. A drop that
    /// left another handle of the peer open (a forked copy) costs that one check.
    #[inline]
    pub(crate) fn peer_dropped(&self) -> bool {
        let drops = self.ctl.dropped[1 - self.side].load(Ordering::Acquire);
        drops != self.peer_drops_seen.get() && self.peer_dropped_slow(drops)
    }

    #[cold]
    fn peer_dropped_slow(&self, drops: u32) -> bool {
        if self.link.hung_up() {
            // Not recorded as seen: every later send checks again and fails the same way.
            return true;
        }
        self.peer_drops_seen.set(drops);
        false
    }

    /// Misuse detection (slow paths only; the pid comes from the OS layer's cache).
    pub(crate) fn check_owner(&self) -> Result<(), Fail> {
        let me = self.link.pid();
        let slot = &self.ctl.user_pid[self.side];
        if me != self.pid.get() {
            // A forked copy starts using the end: it becomes the user.
            slot.store(me, Ordering::Relaxed);
            self.pid.set(me);
            return Ok(());
        }
        let owner = slot.load(Ordering::Relaxed);
        if owner != me && owner != 0 {
            if self.link.process_exists(owner) {
                return Err(Fail::WrongProcess { owner });
            }
            slot.store(me, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The error of a stream broken earlier, if it is.
    pub(crate) fn check_broken(&self) -> Result<(), Fail> {
        match self.broken.get() {
            None => Ok(()),
            Some(BrokenKind::Disconnected) => Err(Fail::Disconnected),
            Some(BrokenKind::Corrupted(c)) => Err(Fail::Corrupted(c)),
        }
    }

    /// Marks the stream broken by `f` if `f` breaks it, and returns `f`.
    pub(crate) fn poison(&self, f: Fail) -> Fail {
        match f {
            Fail::Corrupted(c) => self.broken.set(Some(BrokenKind::Corrupted(c))),
            Fail::Disconnected => self.broken.set(Some(BrokenKind::Disconnected)),
            _ => {}
        }
        f
    }

    /// Closes this end for every process: the peer sees `Disconnected` once it has received
    /// what was sent. The caller then drops the end (which wakes a sleeping peer).
    pub(crate) fn close(&self) {
        self.ctl.closed[self.side].store(1, Ordering::Release);
    }

    /// This process's handle of the end goes away (drop; the link is closed first, so that a
    /// woken peer checking for hang-up sees it): marks both of the peer's wait words `GONE`
    /// and wakes the peer if it sleeps on either, as consumer of our outgoing ring or as
    /// producer into our incoming ring.
    pub(crate) fn say_goodbye(&self) {
        // Counted before the wake-ups, after the link was closed: a peer that sees the new count
        // and checks its socket finds the hang-up if this was the last handle.
        self.ctl.dropped[self.side].fetch_add(1, Ordering::Release);
        let peer_rx = &self.tx_ring().rx_wait;
        let peer_tx = &self.rx_ring().tx_wait;
        for word in [peer_rx, peer_tx] {
            if word.fetch_or(GONE, Ordering::SeqCst) & SLEEP != 0 {
                self.waiter.wake(word, u32::MAX);
            }
        }
    }
}
