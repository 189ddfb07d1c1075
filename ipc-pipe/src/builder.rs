//! Making a pipe: [`PipeBuilder`] and its settings, [`pipe`] and [`channel`].
//!
//! The builder creates the shared segment (control block + two rings, see `ring.rs`) and the
//! socketpair, then attaches one [`Connection`] to each side.

use std::sync::Arc;
use std::time::Duration;

use ipc_shm::{Offset, SegmentBuilder, TypeTag};
use ipc_sync::Backoff;

use crate::channel::{Receiver, Sender};
use crate::connection::Connection;
use crate::end::{MAX_MESSAGE_DEFAULT, Settings};
use crate::error::PipeError;
use crate::ring::{Control, Corruption, MAGIC, MIN_CAP, VERSION};
use crate::sync::Ordering;
use ipc_shm::os;

/// The type tag of pipe segments (v2: the shared frame header, see `ring::VERSION`).
pub(crate) const TAG: TypeTag = TypeTag::from_name("ipc-pipe/v2");
/// Default ring capacity per direction.
const CAP_DEFAULT: usize = 256 * 1024;

/// The size of the control block at the start of the segment.
pub(crate) fn control_size() -> usize {
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
    backoff: Backoff,
    max_message: usize,
}

impl Default for PipeBuilder {
    fn default() -> Self {
        PipeBuilder::new()
    }
}

impl PipeBuilder {
    /// Default settings: 256 KiB per direction, adaptive spinning (`ipc_sync::Backoff::new`:
    /// up to 50 us), 1 GiB maximum message.
    pub fn new() -> PipeBuilder {
        PipeBuilder {
            cap: CAP_DEFAULT,
            backoff: Backoff::new(),
            max_message: MAX_MESSAGE_DEFAULT,
        }
    }

    /// The ring capacity of each direction in bytes: a power of two, at least 64. Messages of
    /// any size pass through; larger rings let larger messages go without the sender waiting.
    pub fn capacity(mut self, bytes: usize) -> PipeBuilder {
        self.cap = bytes;
        self
    }

    /// The longest an end spins before sleeping, counted in polls of the ring counter; 0 never
    /// spins. Kept for existing callers: the budget is a time
    /// ([`spin_max`](PipeBuilder::spin_max)), and `polls` is converted at about 10 ns a poll
    /// (`ipc_sync::Backoff::from_polls`), so 4096 polls are ~41 us.
    pub fn spin_limit(mut self, polls: u32) -> PipeBuilder {
        self.backoff = Backoff::from_polls(polls);
        self
    }

    /// The longest an end spins before sleeping (default 50 us); `Duration::ZERO` never spins.
    ///
    /// Each end keeps one `ipc_sync::Backoff` (the workspace's shared spin policy): it spins for
    /// a budget of time that adapts between 1 us (or `max`, if lower) and `max`, growing after a
    /// spin that succeeded late or a sleep that was short (the peer was busy, not idle) and
    /// shrinking after a long sleep. Spinning longer than a futex sleep and wake-up costs never
    /// pays, which is why the default is 50 us.
    pub fn spin_max(mut self, max: Duration) -> PipeBuilder {
        self.backoff = Backoff::with_max(max);
        self
    }

    /// The largest message either end sends or accepts (default and most 1 GiB, the shared
    /// frame format's [`MAX_FRAME_LEN`](ipc_shm::codec::MAX_FRAME_LEN): a larger value is
    /// clamped to it, since no frame header can announce more).
    pub fn max_message_size(mut self, bytes: usize) -> PipeBuilder {
        self.max_message = bytes.min(ipc_shm::codec::MAX_FRAME_LEN);
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
            backoff: self.backoff.clone(),
            max_message: self.max_message,
        };
        let bad = |c: Corruption| {
            PipeError::Socket(std::io::Error::new(std::io::ErrorKind::InvalidData, c))
        };
        let a = Connection::attach(seg.clone(), 0, s0, settings.clone()).map_err(bad)?;
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
