//! Connections: the two ends of a pipe, their waiting strategy, and peer-death detection.
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
//! - **fd mode** (once the readiness fd was asked for, by `as_fd`/`as_raw_fd` or [`wait`]): it
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
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ipc_shm::{Offset, OpenOptions, Segment, SegmentBuilder, TypeTag};
use ipc_sync::futex::{self, Deadline, WaitOutcome};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{
    Fail, OpenError, PassError, PipeError, PollError, RecvError, RecvIntoError, RecvTimeoutError,
    SendError, TryRecvError,
};
use crate::os;
use crate::ring::{
    self, ARMED, Control, Corruption, GONE, HEADER, MAGIC, MIN_CAP, RingCtl, SLEEP, VERSION,
};
use crate::slots::Slots;
use crate::sync::{Ordering, spin_hint};

/// The type tag of pipe segments.
pub(crate) const TAG: TypeTag = TypeTag::from_name("ipc-pipe/v1");
/// The longest futex sleep between two hang-up checks.
pub(crate) const SLICE: Duration = Duration::from_millis(20);
/// The fewest spin polls an end keeps (unless the spin limit is lower).
const SPIN_MIN: u32 = 16;
/// Default spin limit (polls of the counter, each with a `PAUSE`): tens of microseconds.
const SPIN_DEFAULT: u32 = 4096;
/// Default ring capacity per direction.
const CAP_DEFAULT: usize = 256 * 1024;
/// Default maximum message size.
const MAX_MESSAGE_DEFAULT: usize = 1 << 30;
/// The bincode limit: no decoded container may claim more (guards allocations against a hostile
/// peer announcing huge lengths).
const DECODE_LIMIT: usize = 1 << 32;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_LIMIT>,
>;

fn config() -> Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

fn control_size() -> usize {
    std::mem::size_of::<Control>()
}

/// Builds a pipe with non-default settings.
///
/// ```
/// let (a, b) = ipc_pipe::PipeBuilder::new()
///     .capacity(64 * 1024)
///     .spin_limit(0) // never spin: always sleep on the futex
///     .duplex()?;
/// a.send(&"hi")?;
/// assert_eq!(b.recv::<String>()?, "hi");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `duplex` or `channel` is called"]
pub struct PipeBuilder {
    cap: usize,
    spin: u32,
    max_message: usize,
}

impl Default for PipeBuilder {
    fn default() -> Self {
        PipeBuilder::new()
    }
}

impl PipeBuilder {
    /// Default settings: 256 KiB per direction, adaptive spinning, 1 GiB maximum message.
    pub fn new() -> PipeBuilder {
        PipeBuilder {
            cap: CAP_DEFAULT,
            spin: SPIN_DEFAULT,
            max_message: MAX_MESSAGE_DEFAULT,
        }
    }

    /// The ring capacity of each direction in bytes: a power of two, at least 64. Messages of
    /// any size pass through; larger rings let larger messages go without the sender waiting.
    pub fn capacity(mut self, bytes: usize) -> PipeBuilder {
        self.cap = bytes;
        self
    }

    /// The most polls an end spins before sleeping (default 4096, a few tens of microseconds);
    /// 0 never spins. The actual count adapts between a small minimum and this limit.
    pub fn spin_limit(mut self, polls: u32) -> PipeBuilder {
        self.spin = polls;
        self
    }

    /// The largest message either end sends or accepts (default 1 GiB).
    pub fn max_message_size(mut self, bytes: usize) -> PipeBuilder {
        self.max_message = bytes;
        self
    }

    fn create(&self, caps: [usize; 2]) -> Result<(Connection, Connection), PipeError> {
        for cap in caps {
            if cap < MIN_CAP || !cap.is_power_of_two() || cap > usize::MAX / 4 {
                return Err(PipeError::BadCapacity(cap));
            }
        }
        let len = control_size() + caps[0] + caps[1];
        let pid = os::pid();
        let seg = SegmentBuilder::new(len).type_tag(TAG).create_with(|seg| {
            let ctl = seg.get(Offset::<Control>::from_raw(0))?;
            ctl.magic.store(MAGIC, Ordering::Relaxed);
            ctl.version.store(VERSION, Ordering::Relaxed);
            for (i, cap) in caps.iter().enumerate() {
                ctl.cap[i].store(*cap as u64, Ordering::Relaxed);
                ctl.user_pid[i].store(pid, Ordering::Relaxed);
            }
            Ok::<(), ipc_shm::LayoutError>(())
        })?;
        let seg = Arc::new(seg);
        let (s0, s1) = os::socketpair().map_err(PipeError::Socket)?;
        let settings = Settings {
            spin: self.spin,
            max_message: self.max_message,
        };
        let bad = |c: Corruption| {
            PipeError::Socket(std::io::Error::new(std::io::ErrorKind::InvalidData, c))
        };
        let a = Connection::attach(seg.clone(), 0, s0, settings).map_err(bad)?;
        let b = Connection::attach(seg, 1, s1, settings).map_err(bad)?;
        Ok((a, b))
    }

    /// Creates a duplex pipe: two connected [`Connection`]s.
    pub fn duplex(&self) -> Result<(Connection, Connection), PipeError> {
        self.create([self.cap, self.cap])
    }

    /// Creates a one-way pipe: a [`Sender`] and a [`Receiver`].
    pub fn channel(&self) -> Result<(Sender, Receiver), PipeError> {
        let (a, b) = self.create([self.cap, MIN_CAP])?;
        Ok((Sender(a), Receiver(b)))
    }
}

/// Creates a duplex pipe with default settings: two connected [`Connection`]s, each able to
/// send to and receive from the other (Python's `multiprocessing.Pipe()`).
///
/// ```
/// let (left, right) = ipc_pipe::pipe()?;
/// left.send(&(1u32, "one"))?;
/// right.send_bytes(b"raw")?;
/// assert_eq!(right.recv::<(u32, String)>()?, (1, "one".to_owned()));
/// assert_eq!(left.recv_bytes()?, b"raw");
/// drop(right);
/// assert!(matches!(left.recv::<u32>(), Err(ipc_pipe::RecvError::Disconnected)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn pipe() -> Result<(Connection, Connection), PipeError> {
    PipeBuilder::new().duplex()
}

/// Creates a one-way pipe with default settings (Python's `Pipe(duplex=False)`, in the order
/// sender, receiver).
///
/// ```
/// let (tx, rx) = ipc_pipe::channel()?;
/// tx.send(&vec![1u8, 2, 3])?;
/// assert_eq!(rx.recv::<Vec<u8>>()?, [1, 2, 3]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn channel() -> Result<(Sender, Receiver), PipeError> {
    PipeBuilder::new().channel()
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    spin: u32,
    max_message: usize,
}

/// One end of a duplex pipe: sends to and receives from the other end, possibly in another
/// process.
///
/// Messages are serde values encoded with bincode ([`send`](Connection::send) /
/// [`recv`](Connection::recv)) or raw bytes ([`send_bytes`](Connection::send_bytes) /
/// [`recv_bytes`](Connection::recv_bytes)); the two kinds share one stream of frames. Every
/// method takes `&self`; a `Connection` is `Send` but not `Sync` (one user at a time).
///
/// Dropping it closes this process's handle: once every process holding this end has dropped
/// it or died, the other end gets [`RecvError::Disconnected`] (after receiving every message
/// already sent) and [`SendError::Disconnected`]. [`close`](Connection::close) closes the end for
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
    seg: Arc<Segment>,
    side: usize,
    sock: Option<OwnedFd>,
    tx: Slots,
    rx: Slots,
    tx_tail: Cell<u64>,
    tx_head_cache: Cell<u64>,
    rx_head: Cell<u64>,
    rx_tail_cache: Cell<u64>,
    spin: Cell<u32>,
    settings: Settings,
    fd_mode: Cell<bool>,
    pid: Cell<u32>,
    /// Set after corruption or a message cut short by the peer's death: the stream is no longer
    /// framed, every later receive fails with this.
    broken: Cell<Option<BrokenKind>>,
    scratch: Cell<Vec<u8>>,
    /// Set by `release`: drop closes descriptors only.
    released: bool,
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
enum BrokenKind {
    Disconnected,
    Corrupted(Corruption),
}

impl Connection {
    /// Builds end `side` over a validated segment and initialises the private counters from the
    /// shared ones (validated).
    fn attach(
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
    fn ctl(&self) -> &Control {
        // The segment was checked to hold a whole `Control` at offset 0 in `attach`, and a
        // segment's length never changes.
        self.seg
            .get(Offset::<Control>::from_raw(0))
            .expect("control block validated in attach")
    }

    #[inline]
    fn tx_ring(&self) -> &RingCtl {
        &self.ctl().rings[self.side]
    }

    #[inline]
    fn rx_ring(&self) -> &RingCtl {
        &self.ctl().rings[1 - self.side]
    }

    fn sock(&self) -> BorrowedFd<'_> {
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

    fn closed_flag(&self) -> bool {
        let ctl = self.ctl();
        ctl.closed[0].load(Ordering::Acquire) != 0 || ctl.closed[1].load(Ordering::Acquire) != 0
    }

    /// Misuse detection (slow paths only; one `getpid`).
    fn check_owner(&self) -> Result<(), Fail> {
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

    fn check_broken(&self) -> Result<(), Fail> {
        match self.broken.get() {
            None => Ok(()),
            Some(BrokenKind::Disconnected) => Err(Fail::Disconnected),
            Some(BrokenKind::Corrupted(c)) => Err(Fail::Corrupted(c)),
        }
    }

    fn poison(&self, f: Fail) -> Fail {
        match f {
            Fail::Corrupted(c) => self.broken.set(Some(BrokenKind::Corrupted(c))),
            Fail::Disconnected => self.broken.set(Some(BrokenKind::Disconnected)),
            _ => {}
        }
        f
    }

    // ----- producer side -----

    #[inline]
    fn publish_tx(&self) {
        let bits = ring::publish_tail(self.tx_ring(), self.tx_tail.get());
        if bits & (SLEEP | ARMED) != 0 {
            self.wake_rx_slow(bits);
        }
    }

    /// Publishes the tail without waking a sleeping consumer, unless the ring is more than
    /// half full (a consumer left asleep must never leave the producer waiting for space).
    fn publish_tx_quiet(&self) {
        let tail = self.tx_tail.get();
        let used = tail.wrapping_sub(self.tx_head_cache.get());
        if used > self.tx.cap() as u64 / 2 {
            self.publish_tx();
        } else {
            ring::publish_tail_quiet(self.tx_ring(), tail);
        }
    }

    #[cold]
    fn wake_rx_slow(&self, bits: u32) {
        if bits & SLEEP != 0 {
            futex::wake(&self.tx_ring().rx_wait, 1);
        }
        if bits & ARMED != 0 {
            os::send_byte(self.sock());
        }
    }

    /// Free bytes in the outgoing ring, reloading the consumer's head only when needed.
    #[inline]
    fn tx_free(&self, need: u64) -> Result<u64, Fail> {
        let cap = self.tx.cap() as u64;
        let tail = self.tx_tail.get();
        let free = cap - tail.wrapping_sub(self.tx_head_cache.get());
        if free >= need {
            return Ok(free);
        }
        let head = self.tx_ring().head.load(Ordering::Acquire);
        let used = ring::validate_used(tail, head, self.tx.cap())?;
        self.tx_head_cache.set(head);
        Ok(cap - used)
    }

    /// Waits until at least `need` bytes are free (spinning, then sleeping in slices).
    #[cold]
    fn wait_tx_slow(&self, need: u64) -> Result<u64, Fail> {
        let limit = self.spin.get();
        for _ in 0..limit {
            spin_hint();
            let free = self.tx_free(need)?;
            if free >= need {
                return Ok(free);
            }
        }
        let ring = self.tx_ring();
        // As in `wait_rx_slow`: the hang-up system call only after a slice timed out or when
        // a handle of the peer was dropped.
        let mut check_hup = false;
        loop {
            let expected = ring::arm_tx(ring);
            let head = ring::load_head(ring);
            let tail = self.tx_tail.get();
            let used = ring::validate_used(tail, head, self.tx.cap())?;
            self.tx_head_cache.set(head);
            let free = self.tx.cap() as u64 - used;
            if free >= need {
                ring.tx_wait.fetch_and(!SLEEP, Ordering::Relaxed);
                return Ok(free);
            }
            if self.closed_flag()
                || ((check_hup || expected & GONE != 0) && os::hung_up(self.sock()))
            {
                return Err(Fail::Disconnected);
            }
            let outcome = futex::wait(&ring.tx_wait, expected, Some(Deadline::after(SLICE)));
            check_hup = outcome == WaitOutcome::TimedOut;
            if check_hup {
                self.check_owner()?;
            }
        }
    }

    /// Copies `data` into the outgoing ring, streaming it through when it is larger than the
    /// free space (publishing each chunk so the consumer can start on it).
    fn write_stream(&self, mut data: &[u8]) -> Result<(), Fail> {
        let cap = self.tx.cap();
        // Publish every 1/16 of the ring (at most 64 KiB): the consumer copies out one chunk
        // while the producer copies in the next, and both stay in cache (measured: 16 KiB
        // chunks of a 256 KiB ring were ~1.5x faster than 64 KiB ones for 1 MiB messages).
        let chunk = (cap / 16).clamp(HEADER, 64 * 1024);
        while !data.is_empty() {
            let want = data.len().min(chunk) as u64;
            let mut free = self.tx_free(want)?;
            if free < want {
                self.publish_tx();
                free = self.wait_tx_slow(want)?;
            }
            let n = data.len().min(free as usize).min(cap);
            let tail = self.tx_tail.get();
            self.tx.copy_in(tail, &data[..n]);
            self.tx_tail.set(tail.wrapping_add(n as u64));
            data = &data[n..];
            if !data.is_empty() && n >= chunk {
                self.publish_tx();
            }
        }
        Ok(())
    }

    /// Sends one frame whose payload is `frame[HEADER..]`; `frame[..HEADER]` is overwritten with
    /// the length.
    fn send_frame(&self, head: [u8; HEADER], body: &[u8], quiet: bool) -> Result<(), SendError> {
        if self.closed_flag() {
            return Err(SendError::Disconnected);
        }
        self.write_stream(&head)?;
        self.write_stream(body)?;
        if quiet {
            self.publish_tx_quiet();
        } else {
            self.publish_tx();
        }
        Ok(())
    }

    fn check_send_len(&self, len: usize) -> Result<[u8; HEADER], SendError> {
        if len > self.settings.max_message {
            return Err(SendError::TooLarge {
                len,
                max: self.settings.max_message,
            });
        }
        Ok((len as u64).to_le_bytes())
    }

    /// Sends `value`, serialised with bincode (serde). Blocks only while the ring is too full
    /// for the message (a message larger than the ring is streamed as the receiver reads it).
    ///
    /// Fails with [`SendError::Disconnected`] if the other end is known to be gone: closed or
    /// dropped everywhere (checked on every send), or dead (checked whenever this send has to
    /// wait; a send into a ring with room to a peer that was just killed succeeds, and the
    /// message is lost with the peer, as with a socket).
    ///
    /// ```
    /// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    /// struct Job { id: u64, name: String }
    ///
    /// let (a, b) = ipc_pipe::pipe()?;
    /// a.send(&Job { id: 7, name: "resize".into() })?;
    /// assert_eq!(b.recv::<Job>()?, Job { id: 7, name: "resize".into() });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), SendError> {
        let mut buf = self.scratch.take();
        buf.clear();
        let result = match bincode::serde::encode_into_std_write(value, &mut buf, config()) {
            Ok(_) => match self.check_send_len(buf.len()) {
                Ok(head) => self.send_frame(head, &buf, false),
                Err(e) => Err(e),
            },
            Err(e) => Err(SendError::Encode(e)),
        };
        if buf.capacity() <= 1 << 20 {
            self.scratch.set(buf);
        }
        result
    }

    /// Sends `bytes` as one message (received whole by [`recv_bytes`](Connection::recv_bytes)).
    ///
    /// ```
    /// let (a, b) = ipc_pipe::pipe()?;
    /// // Larger than the ring: streamed while the receiver (here a thread) reads it.
    /// let reader = std::thread::spawn(move || b.recv_bytes().map(|m| m.len()));
    /// a.send_bytes(&[7u8; 1_000_000])?;
    /// assert_eq!(reader.join().unwrap()?, 1_000_000);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<(), SendError> {
        let head = self.check_send_len(bytes.len())?;
        self.send_frame(head, bytes, false)
    }

    /// Like [`send_bytes`](Connection::send_bytes), but does not wake a receiver that sleeps:
    /// the message is in the pipe (the receiver finds it at its next wake-up, and it survives
    /// this process's death like any sent message), and the next ordinary send wakes the
    /// receiver. A receiver is still woken if the ring is more than half full. For progress
    /// reports that must not be lost but need no attention yet: a message costs a copy, not a
    /// wake-up.
    ///
    /// ```
    /// let (a, b) = ipc_pipe::pipe()?;
    /// a.send_bytes_quiet(b"partial")?;
    /// a.send_bytes(b"done")?; // wakes the receiver, which then finds both
    /// assert_eq!(b.recv_bytes()?, b"partial");
    /// assert_eq!(b.recv_bytes()?, b"done");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_bytes_quiet(&self, bytes: &[u8]) -> Result<(), SendError> {
        let head = self.check_send_len(bytes.len())?;
        self.send_frame(head, bytes, true)
    }

    // ----- consumer side -----

    /// Bytes published and unread, reloading the producer's tail only when the cache says fewer
    /// than `need`.
    #[inline]
    fn rx_avail(&self, need: u64) -> Result<u64, Fail> {
        let head = self.rx_head.get();
        let avail = self.rx_tail_cache.get().wrapping_sub(head);
        if avail >= need {
            return Ok(avail);
        }
        let tail = self.rx_ring().tail.load(Ordering::Acquire);
        let avail = ring::validate_avail(tail, head, self.rx.cap())?;
        self.rx_tail_cache.set(tail);
        Ok(avail)
    }

    /// Waits until at least `need` (<= cap) bytes are readable.
    #[inline]
    fn wait_rx(
        &self,
        need: u64,
        deadline: Option<Deadline>,
        nonblocking: bool,
    ) -> Result<u64, Fail> {
        let avail = self.rx_avail(need)?;
        if avail >= need {
            return Ok(avail);
        }
        self.wait_rx_slow(need, deadline, nonblocking)
    }

    #[cold]
    fn wait_rx_slow(
        &self,
        need: u64,
        deadline: Option<Deadline>,
        nonblocking: bool,
    ) -> Result<u64, Fail> {
        if nonblocking {
            return self.wait_rx_sleep(need, deadline, true);
        }
        let budget = self.spin.get();
        for _ in 0..budget {
            spin_hint();
            let avail = self.rx_avail(need)?;
            if avail >= need {
                let grown = budget.saturating_mul(2).max(SPIN_MIN);
                self.spin.set(grown.min(self.settings.spin));
                return Ok(avail);
            }
        }
        self.spin
            .set((budget / 2).max(SPIN_MIN).min(self.settings.spin));
        self.wait_rx_sleep(need, deadline, false)
    }

    /// Sleeps until `need` bytes are readable (see [`Connection::wait_rx_slow`]).
    fn wait_rx_sleep(
        &self,
        need: u64,
        deadline: Option<Deadline>,
        nonblocking: bool,
    ) -> Result<u64, Fail> {
        let ring = self.rx_ring();
        let fd_mode = self.fd_mode.get();
        // Hang-up of a killed peer costs a system call to check, so it is checked only where it
        // could otherwise go unnoticed: in non-blocking calls, after a futex slice timed out,
        // and when a handle of the peer was dropped (`GONE`). A clean close is a flag (free to
        // read); in fd mode the blocking `poll` reports hang-up itself (`drain` then sees EOF).
        let mut check_hup = nonblocking;
        if nonblocking {
            self.check_owner()?;
        }
        loop {
            let mut hung_up = false;
            let bits = if fd_mode {
                hung_up = os::drain(self.sock());
                ARMED
            } else if nonblocking {
                0
            } else {
                SLEEP
            };
            let expected = if bits != 0 {
                ring::arm_rx(ring, bits)
            } else {
                ring.rx_wait.load(Ordering::Relaxed)
            };
            let tail = ring::load_tail(ring);
            let head = self.rx_head.get();
            let avail = ring::validate_avail(tail, head, self.rx.cap())?;
            self.rx_tail_cache.set(tail);
            if avail >= need {
                if bits == SLEEP {
                    ring.rx_wait.fetch_and(!SLEEP, Ordering::Relaxed);
                }
                return Ok(avail);
            }
            if hung_up
                || self.closed_flag()
                || ((check_hup || expected & GONE != 0) && os::hung_up(self.sock()))
            {
                // Everything the peer published before dying or closing is visible now.
                let tail = ring::load_tail(ring);
                let avail = ring::validate_avail(tail, head, self.rx.cap())?;
                self.rx_tail_cache.set(tail);
                if avail >= need {
                    return Ok(avail);
                }
                return Err(Fail::Disconnected);
            }
            if nonblocking {
                return Err(Fail::Empty);
            }
            let remaining = deadline.map(|d| d.remaining());
            if remaining == Some(Duration::ZERO) {
                if bits == SLEEP {
                    ring.rx_wait.fetch_and(!SLEEP, Ordering::Relaxed);
                }
                return Err(Fail::Timeout);
            }
            if fd_mode {
                os::poll_one(self.sock(), remaining);
            } else {
                let outcome = futex::wait(
                    &ring.rx_wait,
                    expected,
                    Some(Deadline::min_with(deadline, SLICE)),
                );
                check_hup = outcome == WaitOutcome::TimedOut;
                if check_hup {
                    self.check_owner()?;
                }
            }
        }
    }

    /// Publishes the consumer's head and wakes a producer waiting for space.
    #[inline]
    fn publish_rx(&self) {
        let bits = ring::publish_head(self.rx_ring(), self.rx_head.get());
        if bits & SLEEP != 0 {
            self.wake_tx_slow();
        }
    }

    #[cold]
    fn wake_tx_slow(&self) {
        futex::wake(&self.rx_ring().tx_wait, 1);
    }

    /// Waits for the next message to be ready (its header, and the whole message if it fits in
    /// the ring) and returns its length, without consuming anything.
    fn wait_message(&self, deadline: Option<Deadline>, nonblocking: bool) -> Result<usize, Fail> {
        self.check_broken()?;
        self.wait_rx(HEADER as u64, deadline, nonblocking)?;
        let mut h = [0u8; HEADER];
        self.rx.copy_out(self.rx_head.get(), &mut h);
        let len = u64::from_le_bytes(h);
        let max = self.settings.max_message;
        if len > max as u64 {
            // We cannot tell a real oversized message from garbage: stop reading this stream.
            self.poison(Fail::Corrupted(Corruption {
                what: "message length (exceeds max_message_size)",
                value: len,
            }));
            return Err(Fail::TooLarge { len, max });
        }
        // A message that fits is waited for whole (so `try_recv` and timeouts never stop half-way
        // through one); a larger one is streamed from its first bytes.
        let whole = HEADER as u64 + len;
        if whole <= self.rx.cap() as u64 {
            self.wait_rx(whole, deadline, nonblocking)?;
        }
        Ok(len as usize)
    }

    /// Consumes the message whose length `wait_message` returned, into `dst` (of that length).
    fn read_body(&self, dst: &mut [u8]) -> Result<(), Fail> {
        let mut head = self.rx_head.get().wrapping_add(HEADER as u64);
        self.rx_head.set(head);
        let mut dst = dst;
        while !dst.is_empty() {
            let mut avail = self.rx_tail_cache.get().wrapping_sub(head);
            if avail == 0 {
                self.publish_rx();
                avail = self.wait_rx(1, None, false).map_err(|f| self.poison(f))?;
            }
            let n = dst.len().min(avail as usize).min(self.rx.cap());
            let (now, rest) = dst.split_at_mut(n);
            self.rx.copy_out(head, now);
            head = head.wrapping_add(n as u64);
            self.rx_head.set(head);
            dst = rest;
            if !dst.is_empty() {
                self.publish_rx();
            }
        }
        self.publish_rx();
        Ok(())
    }

    fn recv_into_vec(
        &self,
        buf: &mut Vec<u8>,
        deadline: Option<Deadline>,
        nonblocking: bool,
    ) -> Result<(), Fail> {
        let len = self.wait_message(deadline, nonblocking)?;
        buf.clear();
        buf.resize(len, 0);
        self.read_body(buf)
    }

    fn recv_value<T: DeserializeOwned>(
        &self,
        deadline: Option<Deadline>,
        nonblocking: bool,
    ) -> Result<Result<T, bincode::error::DecodeError>, Fail> {
        let mut buf = self.scratch.take();
        let r = self.recv_into_vec(&mut buf, deadline, nonblocking);
        let out = r.map(|()| decode(&buf));
        if buf.capacity() <= 1 << 20 {
            self.scratch.set(buf);
        }
        out
    }

    /// Receives the next message and deserialises it as `T`, waiting as long as it takes (or
    /// until the other end is gone: then every message already sent is received first, and
    /// [`RecvError::Disconnected`] follows).
    pub fn recv<T: DeserializeOwned>(&self) -> Result<T, RecvError> {
        Ok(self.recv_value(None, false)??)
    }

    /// Like [`recv`](Connection::recv), but gives up with [`RecvTimeoutError::Timeout`] if no
    /// message has begun to arrive within `timeout`. (A message larger than the ring that has
    /// begun streaming is waited for to its end, or to the sender's death.)
    ///
    /// ```
    /// use std::time::Duration;
    /// let (a, _b) = ipc_pipe::pipe()?;
    /// let r = a.recv_timeout::<u32>(Duration::from_millis(10));
    /// assert!(matches!(r, Err(ipc_pipe::RecvTimeoutError::Timeout)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_timeout<T: DeserializeOwned>(
        &self,
        timeout: Duration,
    ) -> Result<T, RecvTimeoutError> {
        Ok(self.recv_value(Some(Deadline::after(timeout)), false)??)
    }

    /// Receives a message if one is waiting, without blocking.
    ///
    /// After the readiness fd of this end became readable, call it until it returns
    /// [`TryRecvError::Empty`]: that also re-arms the fd.
    pub fn try_recv<T: DeserializeOwned>(&self) -> Result<T, TryRecvError> {
        Ok(self.recv_value(None, true)??)
    }

    /// Like [`recv_bytes`](Connection::recv_bytes), but gives up with
    /// [`RecvTimeoutError::Timeout`] if no message has begun to arrive within `timeout`.
    pub fn recv_bytes_timeout(&self, timeout: Duration) -> Result<Vec<u8>, RecvTimeoutError> {
        let mut buf = Vec::new();
        self.recv_into_vec(&mut buf, Some(Deadline::after(timeout)), false)?;
        Ok(buf)
    }

    /// Receives the next message as bytes (any message: one sent by
    /// [`send_bytes`](Connection::send_bytes) gives back exactly its bytes).
    pub fn recv_bytes(&self) -> Result<Vec<u8>, RecvError> {
        let mut buf = Vec::new();
        self.recv_into_vec(&mut buf, None, false)?;
        Ok(buf)
    }

    /// Receives the next message into `buf`, returning its length. If `buf` is too short the
    /// message stays in the pipe and [`RecvIntoError::BufferTooSmall`] says how long it is.
    ///
    /// ```
    /// let (a, b) = ipc_pipe::pipe()?;
    /// a.send_bytes(b"hello")?;
    /// let mut small = [0u8; 2];
    /// assert!(matches!(
    ///     b.recv_bytes_into(&mut small),
    ///     Err(ipc_pipe::RecvIntoError::BufferTooSmall { needed: 5 })
    /// ));
    /// let mut buf = [0u8; 64];
    /// let n = b.recv_bytes_into(&mut buf)?;
    /// assert_eq!(&buf[..n], b"hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize, RecvIntoError> {
        let len = self.wait_message(None, false)?;
        if len > buf.len() {
            return Err(RecvIntoError::BufferTooSmall { needed: len });
        }
        self.read_body(&mut buf[..len])?;
        Ok(len)
    }

    /// Whether a message is waiting (or the other end is gone, so that a receive would return
    /// at once), waiting up to `timeout` for one (`Duration::ZERO`: just check).
    ///
    /// ```
    /// use std::time::Duration;
    /// let (a, b) = ipc_pipe::pipe()?;
    /// assert!(!b.poll(Duration::ZERO)?);
    /// a.send(&1u8)?;
    /// assert!(b.poll(Duration::from_secs(1))?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn poll(&self, timeout: Duration) -> Result<bool, PollError> {
        let nonblocking = timeout.is_zero();
        let deadline = (!nonblocking).then(|| Deadline::after(timeout));
        match self.wait_message(deadline, nonblocking) {
            Ok(_) | Err(Fail::Disconnected) => Ok(true),
            Err(Fail::Empty | Fail::Timeout) => Ok(false),
            Err(f) => Err(f.into()),
        }
    }

    /// Switches this end to fd mode (see the module docs) and arms the fd if no message waits.
    fn enable_fd_mode(&self) {
        if !self.fd_mode.replace(true) {
            let _ = self.wait_rx(1, None, true);
        }
    }

    /// Closes this end for every process that holds it (a forked copy included): the other end
    /// sees [`RecvError::Disconnected`] once it has received what was sent. Dropping a
    /// `Connection` instead closes only this process's handle.
    pub fn close(self) {
        self.ctl().closed[self.side].store(1, Ordering::Release);
        drop(self);
    }

    /// Makes the child that `cmd` starts inherit this end, under environment variables starting
    /// with `key`; the child calls [`Connection::from_inherited`] with the same key. Drop this
    /// end afterwards in the parent (and `cmd` once the child runs), or the other end will not
    /// see the child's death.
    pub fn pass_to_command(&self, cmd: &mut Command, key: &str) -> Result<(), PassError> {
        ipc_shm::pass_fd_to_command(cmd, self.seg.fd(), &format!("{key}_SHM"))?;
        ipc_shm::pass_fd_to_command(cmd, self.sock(), &format!("{key}_SOCK"))?;
        cmd.env(format!("{key}_SIDE"), self.side.to_string());
        Ok(())
    }

    /// Opens the end this process inherited from [`Connection::pass_to_command`] (default
    /// settings). The segment and the control block are validated.
    pub fn from_inherited(key: &str) -> Result<Connection, OpenError> {
        let side_key = format!("{key}_SIDE");
        let side = std::env::var(&side_key)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|s| *s <= 1)
            .ok_or(OpenError::BadSide { key: side_key })?;
        let seg = OpenOptions::new(TAG)
            .min_len(control_size())
            .from_inherited(&format!("{key}_SHM"))?;
        let sock = ipc_shm::take_inherited_fd(&format!("{key}_SOCK"))?;
        let settings = Settings {
            spin: SPIN_DEFAULT,
            max_message: MAX_MESSAGE_DEFAULT,
        };
        Ok(Connection::attach(Arc::new(seg), side, sock, settings)?)
    }

    /// Takes this end apart into its descriptors (the shared segment's and the socket's, both
    /// close-on-exec) and its side, to hand it to another process by some other means (a fork
    /// server, `SCM_RIGHTS`); rebuild it there with [`Connection::from_raw_parts`]. The peer is
    /// not disturbed.
    pub fn into_raw_parts(mut self) -> std::io::Result<(OwnedFd, OwnedFd, usize)> {
        let shm = self.seg.fd().try_clone_to_owned()?;
        let sock = self.sock.take().expect("the socket is only taken in drop");
        let side = self.side;
        self.release();
        Ok((shm, sock, side))
    }

    /// Rebuilds an end from [`Connection::into_raw_parts`] (or from descriptors received any
    /// other way), with default settings. The segment and the control block are validated.
    pub fn from_raw_parts(
        shm: OwnedFd,
        sock: OwnedFd,
        side: usize,
    ) -> Result<Connection, OpenError> {
        if side > 1 {
            return Err(OpenError::Corrupted(Corruption {
                what: "side",
                value: side as u64,
            }));
        }
        let seg = OpenOptions::new(TAG).min_len(control_size()).from_fd(shm)?;
        let settings = Settings {
            spin: SPIN_DEFAULT,
            max_message: MAX_MESSAGE_DEFAULT,
        };
        Ok(Connection::attach(Arc::new(seg), side, sock, settings)?)
    }

    /// Gives up this process's copy of an end that another process now uses (after `fork`, or
    /// after passing it to a child): closes this process's descriptors and mapping without
    /// waking or otherwise disturbing the peer. (Dropping also works, but wakes the peer so that
    /// it re-checks for hang-up.)
    pub fn release(mut self) {
        drop(self.sock.take());
        self.released = true;
    }

    /// Test hook: writes `value` over the shared `tail` counter of the ring this end reads,
    /// as a hostile or buggy peer could.
    #[doc(hidden)]
    pub fn __corrupt_incoming_tail(&self, value: u64) {
        self.rx_ring().tail.store(value, Ordering::SeqCst);
    }
}

fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<T, bincode::error::DecodeError> {
    let (value, used) = bincode::serde::decode_from_slice(buf, config())?;
    if used != buf.len() {
        return Err(bincode::error::DecodeError::OtherString(format!(
            "{} trailing bytes after the value",
            buf.len() - used
        )));
    }
    Ok(value)
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

impl AsFd for Connection {
    /// The readiness descriptor: readable when a message has arrived since this end last found
    /// its incoming ring empty, and when the other end hangs up. Asking for it switches the end
    /// to fd mode (see the crate docs); drain with `try_recv` until `Empty` after each wake-up.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.enable_fd_mode();
        self.sock()
    }
}

impl AsRawFd for Connection {
    /// See [`AsFd::as_fd`].
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

mod sealed {
    pub trait Sealed {
        fn connection(&self) -> &super::Connection;
    }
}

/// Something [`wait`] can wait on: a [`Connection`] or a [`Receiver`].
pub trait Waitable: sealed::Sealed {}

impl sealed::Sealed for Connection {
    fn connection(&self) -> &Connection {
        self
    }
}
impl Waitable for Connection {}

impl sealed::Sealed for Receiver {
    fn connection(&self) -> &Connection {
        &self.0
    }
}
impl Waitable for Receiver {}

/// Waits until at least one of `conns` has a message waiting (or its peer is gone), or until
/// `timeout` passes (`None`: no limit), and returns the indices of the ready ones (empty on
/// timeout). Python's `multiprocessing.connection.wait`.
///
/// It uses each end's readiness fd, so it switches them to fd mode.
///
/// ```
/// use std::time::Duration;
/// let (a1, b1) = ipc_pipe::pipe()?;
/// let (a2, b2) = ipc_pipe::pipe()?;
/// a2.send(&"second")?;
/// let ready = ipc_pipe::wait(&[&b1, &b2], Some(Duration::from_secs(1)))?;
/// assert_eq!(ready, [1]);
/// assert!(ipc_pipe::wait(&[&b1], Some(Duration::from_millis(1)))?.is_empty());
/// # drop(a1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn wait<W: Waitable + ?Sized>(
    conns: &[&W],
    timeout: Option<Duration>,
) -> Result<Vec<usize>, PollError> {
    let deadline = timeout.map(Deadline::after);
    let mut polled = Vec::with_capacity(conns.len());
    loop {
        let mut ready = Vec::new();
        for (i, c) in conns.iter().enumerate() {
            let c = c.connection();
            c.fd_mode.set(true);
            if c.poll(Duration::ZERO)? {
                ready.push(i);
            }
        }
        if !ready.is_empty() {
            return Ok(ready);
        }
        let remaining = deadline.map(|d| d.remaining());
        if remaining == Some(Duration::ZERO) {
            return Ok(ready);
        }
        let fds: Vec<BorrowedFd<'_>> = conns.iter().map(|c| c.connection().sock()).collect();
        os::poll(&fds, remaining, &mut polled);
    }
}

/// The sending end of a one-way pipe made by [`channel`].
#[derive(Debug)]
pub struct Sender(Connection);

/// The receiving end of a one-way pipe made by [`channel`].
#[derive(Debug)]
pub struct Receiver(Connection);

impl Sender {
    /// See [`Connection::send`].
    pub fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), SendError> {
        self.0.send(value)
    }

    /// See [`Connection::send_bytes`].
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<(), SendError> {
        self.0.send_bytes(bytes)
    }

    /// See [`Connection::close`].
    pub fn close(self) {
        self.0.close()
    }

    /// See [`Connection::pass_to_command`].
    pub fn pass_to_command(&self, cmd: &mut Command, key: &str) -> Result<(), PassError> {
        self.0.pass_to_command(cmd, key)
    }

    /// See [`Connection::from_inherited`] (the inherited end must be a sender).
    pub fn from_inherited(key: &str) -> Result<Sender, OpenError> {
        Connection::from_inherited(key).map(Sender)
    }
}

impl Receiver {
    /// See [`Connection::recv`].
    pub fn recv<T: DeserializeOwned>(&self) -> Result<T, RecvError> {
        self.0.recv()
    }

    /// See [`Connection::recv_timeout`].
    pub fn recv_timeout<T: DeserializeOwned>(
        &self,
        timeout: Duration,
    ) -> Result<T, RecvTimeoutError> {
        self.0.recv_timeout(timeout)
    }

    /// See [`Connection::try_recv`].
    pub fn try_recv<T: DeserializeOwned>(&self) -> Result<T, TryRecvError> {
        self.0.try_recv()
    }

    /// See [`Connection::recv_bytes`].
    pub fn recv_bytes(&self) -> Result<Vec<u8>, RecvError> {
        self.0.recv_bytes()
    }

    /// See [`Connection::recv_bytes_into`].
    pub fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize, RecvIntoError> {
        self.0.recv_bytes_into(buf)
    }

    /// See [`Connection::poll`].
    pub fn poll(&self, timeout: Duration) -> Result<bool, PollError> {
        self.0.poll(timeout)
    }

    /// See [`Connection::close`].
    pub fn close(self) {
        self.0.close()
    }

    /// See [`Connection::pass_to_command`].
    pub fn pass_to_command(&self, cmd: &mut Command, key: &str) -> Result<(), PassError> {
        self.0.pass_to_command(cmd, key)
    }

    /// See [`Connection::from_inherited`] (the inherited end must be a receiver).
    pub fn from_inherited(key: &str) -> Result<Receiver, OpenError> {
        Connection::from_inherited(key).map(Receiver)
    }
}

impl AsFd for Receiver {
    /// See [`Connection::as_fd`](struct.Connection.html#method.as_fd).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Receiver {
    /// See [`Connection::as_fd`](struct.Connection.html#method.as_fd).
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
