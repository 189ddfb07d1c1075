//! The public handles: [`QueueBuilder`], [`Queue`] and [`JoinableQueue`].
//!
//! A handle owns an `Arc` of the mapped segment and the validated ring geometry; every
//! operation builds a [`Core`] (the algorithm of [`crate::core`]) over it. Encoding and decoding
//! use per-thread scratch buffers, so a handle is `Send + Sync` and cheap to clone.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bincode::error::DecodeError;
use ipc_shm::codec;
use ipc_shm::{Layout, Offset, OpenOptions, Segment, SegmentBuilder, ShmRing, TypeTag};
use ipc_sync::{Backoff, Deadline, Futex};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::control::{CONTROL_MAGIC, Control};
use crate::core::{Core, Fail, HDR, MAX_CAP, MIN_CAP, Sink, Src, Wait, frame_len, frames};
use crate::error::*;
use crate::sync::{AtomicU32, Ordering};

/// The type tag of a queue's segment. `v2`: the control block's waits are event counts
/// (`ipc_sync::EventCount`); a segment of a `v1` build is refused at open (a type-tag mismatch)
/// instead of being misread.
pub const QUEUE_TAG: TypeTag = TypeTag::from_name("ipc-queue/Queue/v2");

/// The default capacity: 1 MiB of ring.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// Largest scratch buffer kept between calls.
const KEEP_SCRATCH: usize = 4 << 20;

/// How many bytes of frames `put_many` encodes before pushing them.
const PUT_MANY_CHUNK: usize = 64 << 10;

/// Messages whose encoding is at least this long are encoded straight into the ring and decoded
/// straight out of it (one copy each way, under the queue's lock), instead of going through this
/// thread's scratch buffers (two copies each way, the locks held only for one). Below it, the
/// extra copy costs less than holding a lock while serde runs.
const DIRECT_MIN: usize = 4 << 10;

/// The freed heap a process that receives large messages keeps (see "Large messages" in the
/// crate docs): as the pool's workers.
const KEEP_FREED_HEAP: usize = 64 << 20;

/// The largest ring faulted in ahead ([`Shared::prepare_large`]); larger ones fault page by page.
const POPULATE_MAX: usize = 64 << 20;

thread_local! {
    static ENCODE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static DECODE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer (a fresh one if it is in use, as when a
/// `Serialize` impl puts to a queue itself).
fn with_scratch<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<u8>>>,
    f: impl FnOnce(&mut Vec<u8>) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let r = f(&mut buf);
            if buf.capacity() > KEEP_SCRATCH {
                buf.clear();
                buf.shrink_to(KEEP_SCRATCH);
            }
            r
        }
        Err(_) => f(&mut Vec::new()),
    })
}

/// Why a value was not framed: bincode failed, or the encoding is longer than any frame (and so
/// than any queue).
#[derive(Debug)]
enum FrameFail {
    Encode(bincode::error::EncodeError),
    TooLarge,
}

/// Appends `value` to `buf` as one frame padded for the ring; returns the frame's length. On
/// error `buf` is left as it was.
#[inline]
fn encode_frame<T: Serialize>(value: &T, buf: &mut Vec<u8>) -> Result<usize, FrameFail> {
    let start = buf.len();
    let len = codec::encode_frame(value, buf).map_err(|e| match e {
        codec::EncodeError::TooLong { .. } => FrameFail::TooLarge,
        e => FrameFail::Encode(e.into()),
    })?;
    let flen = frame_len(len);
    buf.resize(start + flen, 0);
    Ok(flen)
}

/// Decodes one message, which must use all of `payload`, within the codec's decode limit.
#[inline]
fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    codec::decode(payload).map_err(Into::into)
}

/// Builds a new queue: its capacity in bytes, an optional limit on the number of messages, and a
/// name (or none: anonymous, shared by `fork` or by passing the descriptor).
///
/// ```
/// use ipc_queue::{Queue, QueueBuilder};
///
/// let q: Queue<String> = QueueBuilder::new().capacity(64 * 1024).max_items(100).build()?;
/// q.put("hello".to_string())?;
/// assert_eq!(q.get()?, "hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct QueueBuilder {
    capacity: usize,
    max_items: Option<usize>,
    name: Option<String>,
    unlink_on_drop: bool,
}

impl Default for QueueBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl QueueBuilder {
    /// A builder with the default capacity ([`DEFAULT_CAPACITY`]), no item limit, anonymous.
    pub fn new() -> Self {
        QueueBuilder {
            capacity: DEFAULT_CAPACITY,
            max_items: None,
            name: None,
            unlink_on_drop: true,
        }
    }

    /// The ring's size in bytes, rounded up to a power of two (64 B to 1 GiB). A message takes
    /// its encoded length plus 8 bytes, rounded up to a multiple of 8; the largest message is
    /// the capacity minus 8 bytes.
    ///
    /// Bigger is not faster: a streaming producer runs through the whole ring, so a ring
    /// larger than the CPUs' caches makes every message's bytes come from farther away. With
    /// 64 KiB messages on the 2-vCPU reference VM (one producer and one consumer process,
    /// batches of 16): 8 MiB moved 20-34 GB/s, 1 MiB (the default) 48-59 GB/s, 256-512 KiB
    /// 54-60 GB/s; 64 B messages went as fast with 1 MiB as with 8 MiB (37 M/s). Size the ring
    /// for the burst it must absorb, not for speed.
    pub fn capacity(mut self, bytes: usize) -> Self {
        self.capacity = bytes;
        self
    }

    /// The most messages the queue holds at once (Python's `maxsize`); puts wait beyond it.
    /// Without it only the capacity in bytes limits the queue.
    pub fn max_items(mut self, max: usize) -> Self {
        self.max_items = Some(max);
        self
    }

    /// Gives the queue's segment a name, so unrelated processes can [`Queue::open`] it.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Whether dropping the creating handle removes the name (default `true`).
    pub fn unlink_on_drop(mut self, unlink: bool) -> Self {
        self.unlink_on_drop = unlink;
        self
    }

    /// Creates the queue.
    pub fn build<T>(&self) -> Result<Queue<T>, CreateError> {
        let cap = self
            .capacity
            .max(MIN_CAP)
            .checked_next_power_of_two()
            .filter(|&c| c <= MAX_CAP)
            .ok_or(CreateError::InvalidCapacity {
                requested: self.capacity,
                min: MIN_CAP,
                max: MAX_CAP,
            })?;
        let max_items = match self.max_items {
            Some(0) => return Err(CreateError::ZeroMaxItems),
            Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
            None => u32::MAX,
        };
        let (ctl, ring_off, len) = layout(cap).ok_or(CreateError::InvalidCapacity {
            requested: self.capacity,
            min: MIN_CAP,
            max: MAX_CAP,
        })?;
        let mut builder = SegmentBuilder::new(len)
            .type_tag(QUEUE_TAG)
            .unlink_on_drop(self.unlink_on_drop);
        if let Some(name) = &self.name {
            builder = builder.name(name);
        }
        let segment = builder.create_with(|seg| {
            let c = seg.get(ctl)?;
            c.config.cap.store(cap as u64, Ordering::Relaxed);
            c.config
                .max_items
                .store(u64::from(max_items), Ordering::Relaxed);
            c.config.magic.store(CONTROL_MAGIC, Ordering::Relaxed);
            Ok::<_, ipc_shm::LayoutError>(())
        })?;
        Ok(Queue::from_shared(Shared {
            segment,
            ctl,
            ring_off,
            cap: cap as u32,
            max_items,
            backoff: Backoff::new(),
            big: AtomicU32::new(0),
            prepared: AtomicU32::new(0),
        }))
    }

    /// Creates a [`JoinableQueue`].
    pub fn build_joinable<T>(&self) -> Result<JoinableQueue<T>, CreateError> {
        Ok(JoinableQueue {
            queue: self.build()?,
        })
    }
}

/// The control block's offset, the ring's offset and the payload size for a ring of `cap`.
fn layout(cap: usize) -> Option<(Offset<Control>, usize, usize)> {
    let mut layout = Layout::new();
    let ctl = layout.add::<Control>().ok()?;
    let ring = layout.reserve(ipc_shm::PAYLOAD_ALIGN, cap).ok()?;
    Some((ctl, ring, layout.size()))
}

/// What every handle of one queue in this process shares.
#[derive(Debug)]
pub(crate) struct Shared {
    segment: Segment,
    ctl: Offset<Control>,
    ring_off: usize,
    cap: u32,
    max_items: u32,
    /// The spin budget of this process's handles (clones share it).
    backoff: Backoff,
    /// 1 if the last message put through this process's handles was encoded in place (at
    /// least [`DIRECT_MIN`] bytes): then the next one is measured first ([`codec::encoded_len`])
    /// to choose its path, which small messages do not pay for. A hint: either value is correct.
    big: AtomicU32,
    /// The process that last prepared this mapping for large messages
    /// ([`Shared::prepare_large`]); 0 before.
    prepared: AtomicU32,
}

impl Shared {
    /// Before this process's first large message through this mapping (checked by pid, so a
    /// forked child prepares again): faults the whole ring in with one system call instead of
    /// one page fault per page as it streams through (a forked child inherits the mapping but
    /// not its page tables), and, for a receiver, keeps freed heap (see "Large messages" in the
    /// crate docs).
    #[inline]
    fn prepare_large(&self, receiver: bool) {
        let pid = ipc_shm::os::pid();
        if self.prepared.load(Ordering::Relaxed) != pid {
            self.prepare_large_slow(pid, receiver);
        }
    }

    #[cold]
    fn prepare_large_slow(&self, pid: u32, receiver: bool) {
        if (self.cap as usize) <= POPULATE_MAX {
            // Best effort: an old kernel refuses, and the pages fault in as before.
            let _ = self.segment.populate(self.ring_off, self.cap as usize);
        }
        if receiver {
            ipc_shm::os::keep_freed_heap(KEEP_FREED_HEAP);
        }
        self.prepared.store(pid, Ordering::Relaxed);
    }

    /// Whether the next put should measure its value first (see `big`).
    #[inline]
    fn big_hint(&self) -> bool {
        self.big.load(Ordering::Relaxed) != 0
    }

    /// Records whether the last message was large (written only when it changes).
    #[inline]
    fn set_big_hint(&self, big: bool) {
        if self.big_hint() != big {
            self.big.store(u32::from(big), Ordering::Relaxed);
        }
    }
}

impl Shared {
    /// Validates an opened segment.
    fn open(segment: Segment) -> Result<Shared, OpenError> {
        let corrupted = |what| OpenError::Corrupted { what };
        let (ctl, _, _) = layout(MIN_CAP).ok_or(corrupted("layout"))?;
        let c = segment
            .get(ctl)
            .map_err(|_| corrupted("segment too small"))?;
        if c.config.magic.load(Ordering::Acquire) != CONTROL_MAGIC {
            return Err(corrupted("control block magic"));
        }
        let cap = c.config.cap.load(Ordering::Relaxed);
        let cap = usize::try_from(cap)
            .ok()
            .filter(|c| c.is_power_of_two() && (MIN_CAP..=MAX_CAP).contains(c))
            .ok_or(corrupted("capacity"))?;
        let (_, ring_off, len) = layout(cap).ok_or(corrupted("capacity"))?;
        if len > segment.len() {
            return Err(corrupted("capacity larger than the segment"));
        }
        let max_items = c.config.max_items.load(Ordering::Relaxed);
        let max_items = u32::try_from(max_items)
            .ok()
            .filter(|&m| m > 0)
            .ok_or(corrupted("max_items"))?;
        Ok(Shared {
            segment,
            ctl,
            ring_off,
            cap: cap as u32,
            max_items,
            backoff: Backoff::new(),
            big: AtomicU32::new(0),
            prepared: AtomicU32::new(0),
        })
    }

    /// The control block, validated (the async waiters reach the event counts through it).
    #[cfg(feature = "tokio")]
    pub(crate) fn control(&self) -> Option<&Control> {
        self.segment.get(self.ctl).ok()
    }

    #[inline]
    fn core(&self) -> Result<Core<'_, ShmRing<&Segment>, Futex>, Fail> {
        let ctl = self
            .segment
            .get(self.ctl)
            .map_err(|_| Fail::Corrupted("control block"))?;
        let mem = ShmRing::new(&self.segment, self.ring_off, self.cap as usize)
            .map_err(|_| Fail::Corrupted("ring bounds"))?;
        Ok(Core {
            ctl,
            mem,
            waiter: Futex,
            backoff: &self.backoff,
            cap: self.cap,
            max_items: self.max_items,
        })
    }
}

fn wait_for(timeout: Duration) -> Wait {
    Wait::Until(Some(Deadline::after(timeout)))
}

const FOREVER: Wait = Wait::Until(None);

fn broken(f: Fail) -> &'static str {
    match f {
        Fail::Corrupted(what) => what,
        Fail::Broken => "a lock holder died and the lock is not recoverable",
        _ => "unexpected state",
    }
}

/// A multi-producer multi-consumer FIFO queue of `T`s in shared memory, usable from any number
/// of threads and processes. See the [crate docs](crate) for the guarantees.
///
/// Clone it, or `fork` with it, to get more handles; open it in other processes by name
/// ([`Queue::open`]) or by an inherited descriptor ([`Queue::pass_to_command`] and
/// [`Queue::from_inherited`]).
///
/// ```
/// use ipc_queue::{QueueBuilder, Queue, GetError};
///
/// let q: Queue<(u32, String)> = QueueBuilder::new().build()?;
/// let producer = q.clone(); // in real use: a forked or exec'ed process
/// producer.put((1, "one".into()))?;
/// producer.put_many(&[(2, "two".into()), (3, "three".into())])?;
/// producer.close()?;
/// let mut got = Vec::new();
/// q.get_many(&mut got, 10)?;
/// assert_eq!(got.len(), 3);
/// assert!(matches!(q.get(), Err(GetError::Closed)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Queue<T> {
    pub(crate) shared: Arc<Shared>,
    _type: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            shared: Arc::clone(&self.shared),
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.shared.segment.name())
            .field("capacity", &self.shared.cap)
            .field("max_items", &self.max_items())
            .field("len", &self.len())
            .finish()
    }
}

impl<T> Queue<T> {
    fn from_shared(shared: Shared) -> Self {
        Queue {
            shared: Arc::new(shared),
            _type: PhantomData,
        }
    }

    /// Opens the queue called `name`.
    pub fn open(name: &str) -> Result<Self, OpenError> {
        let seg = OpenOptions::new(QUEUE_TAG).open(name)?;
        Ok(Self::from_shared(Shared::open(seg)?))
    }

    /// Opens the queue behind a descriptor (inherited or received).
    pub fn from_fd(fd: OwnedFd) -> Result<Self, OpenError> {
        let seg = OpenOptions::new(QUEUE_TAG).from_fd(fd)?;
        Ok(Self::from_shared(Shared::open(seg)?))
    }

    /// Opens the queue whose descriptor this process inherited under the environment variable
    /// `key` (see [`Queue::pass_to_command`]).
    pub fn from_inherited(key: &str) -> Result<Self, OpenError> {
        let seg = OpenOptions::new(QUEUE_TAG).from_inherited(key)?;
        Ok(Self::from_shared(Shared::open(seg)?))
    }

    /// Arranges for the child that `cmd` starts to inherit the queue under the environment
    /// variable `key`; the child calls [`Queue::from_inherited`].
    pub fn pass_to_command(&self, cmd: &mut Command, key: &str) -> std::io::Result<()> {
        self.shared.segment.pass_to_command(cmd, key)
    }

    /// The descriptor of the queue's segment.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.shared.segment.fd()
    }

    /// The segment's name, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.shared.segment.name()
    }

    /// The ring's size in bytes.
    pub fn capacity(&self) -> usize {
        self.shared.cap as usize
    }

    /// The largest payload (encoded message) the queue can hold.
    pub fn max_message_len(&self) -> usize {
        self.shared.cap as usize - HDR
    }

    /// The item limit, if one was set.
    pub fn max_items(&self) -> Option<usize> {
        (self.shared.max_items != u32::MAX).then_some(self.shared.max_items as usize)
    }

    /// The number of messages queued. **Approximate**: other processes put and get while it
    /// is read, so it is a snapshot that may be stale by the time it is used (as Python's
    /// `qsize`). Committed messages only: a put in progress is not counted.
    pub fn len(&self) -> usize {
        self.shared
            .core()
            .and_then(|c| c.snapshot())
            .map_or(0, |s| s.items as usize)
    }

    /// Whether the queue looks empty (approximate, as [`Queue::len`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a put of the smallest message would have to wait now (approximate, as
    /// [`Queue::len`]).
    pub fn is_full(&self) -> bool {
        self.shared
            .core()
            .and_then(|c| c.snapshot())
            .is_ok_and(|s| {
                s.items >= self.shared.max_items || s.used as usize + HDR > self.capacity()
            })
    }

    /// Whether the queue was closed.
    pub fn is_closed(&self) -> bool {
        self.shared.core().is_ok_and(|c| c.is_closed())
    }

    /// Closes the queue, for every process: later puts fail and hand their value back; gets
    /// return what is queued and then report `Closed`. Sleeping putters and getters wake up.
    pub fn close(&self) -> Result<(), CloseError> {
        self.shared
            .core()
            .and_then(|c| c.close())
            .map_err(|f| CloseError::Corrupted(broken(f)))
    }

    // ---- bytes ----

    fn push_bytes(&self, bytes: &[u8], wait: Wait) -> Result<(), PutBytesError> {
        let core = self
            .shared
            .core()
            .map_err(|f| PutBytesError::Corrupted(broken(f)))?;
        if u32::try_from(bytes.len()).is_err() || frame_len(bytes.len()) > self.capacity() {
            return Err(PutBytesError::TooLarge {
                len: bytes.len(),
                max: self.max_message_len(),
            });
        }
        core.push(Src::One(bytes), wait)
            .map(|_| ())
            .map_err(|f| match f {
                Fail::Full => PutBytesError::Full,
                Fail::Timeout => PutBytesError::Timeout,
                Fail::Closed => PutBytesError::Closed,
                Fail::TooLarge => PutBytesError::TooLarge {
                    len: bytes.len(),
                    max: self.max_message_len(),
                },
                f => PutBytesError::Corrupted(broken(f)),
            })
    }

    /// Puts one message of raw bytes (for users with their own encoding), waiting for room.
    /// The bytes are copied straight into shared memory.
    ///
    /// ```
    /// let q: ipc_queue::Queue<()> = ipc_queue::QueueBuilder::new().build()?;
    /// q.put_bytes(b"raw")?;
    /// let mut buf = [0u8; 16];
    /// let n = q.get_bytes(&mut buf)?;
    /// assert_eq!(&buf[..n], b"raw");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<(), PutBytesError> {
        self.push_bytes(bytes, FOREVER)
    }

    /// Puts raw bytes if there is room now.
    pub fn try_put_bytes(&self, bytes: &[u8]) -> Result<(), PutBytesError> {
        self.push_bytes(bytes, Wait::No)
    }

    /// Puts raw bytes, waiting at most `timeout` for room.
    pub fn put_bytes_timeout(&self, bytes: &[u8], timeout: Duration) -> Result<(), PutBytesError> {
        self.push_bytes(bytes, wait_for(timeout))
    }

    fn pop_bytes(&self, buf: &mut [u8], wait: Wait) -> Result<usize, GetBytesError> {
        let core = self
            .shared
            .core()
            .map_err(|f| GetBytesError::Corrupted(broken(f)))?;
        match core.pop(&mut Sink::Slice(buf), wait) {
            Ok((_, len)) => Ok(len),
            Err(f) => Err(match f {
                Fail::Empty => GetBytesError::Empty,
                Fail::Timeout => GetBytesError::Timeout,
                Fail::Closed => GetBytesError::Closed,
                Fail::BufferTooSmall(needed) => GetBytesError::BufferTooSmall { needed },
                f => GetBytesError::Corrupted(broken(f)),
            }),
        }
    }

    /// Gets one message's bytes into `buf`, waiting for one; returns its length. A message
    /// longer than `buf` stays queued ([`GetBytesError::BufferTooSmall`] says how long it is).
    pub fn get_bytes(&self, buf: &mut [u8]) -> Result<usize, GetBytesError> {
        self.pop_bytes(buf, FOREVER)
    }

    /// Gets one message's bytes if one is queued now.
    pub fn try_get_bytes(&self, buf: &mut [u8]) -> Result<usize, GetBytesError> {
        self.pop_bytes(buf, Wait::No)
    }

    /// Gets one message's bytes, waiting at most `timeout`.
    pub fn get_bytes_timeout(
        &self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Result<usize, GetBytesError> {
        self.pop_bytes(buf, wait_for(timeout))
    }

    /// Gets one message's bytes as a new vector, waiting for one.
    pub fn get_bytes_vec(&self) -> Result<Vec<u8>, GetBytesError> {
        let core = self
            .shared
            .core()
            .map_err(|f| GetBytesError::Corrupted(broken(f)))?;
        let mut buf = Vec::new();
        core.pop(&mut Sink::Frames(&mut buf, 1), FOREVER)
            .map_err(|f| match f {
                Fail::Closed => GetBytesError::Closed,
                f => GetBytesError::Corrupted(broken(f)),
            })?;
        Ok(frames(&buf).next().map(<[u8]>::to_vec).unwrap_or_default())
    }
}

/// Messages decoded, messages that failed, and the first error.
type DecodeFailures = (usize, usize, DecodeError);

/// The core over this process's mapping of a queue.
type ShmCore<'a> = Core<'a, ShmRing<&'a Segment>, Futex>;

/// Why a put failed: encoding (`Ok`) or the queue (`Err`).
type PushFail = Result<bincode::error::EncodeError, Fail>;

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// The encoding's length of `value` if it is to be encoded in place (at least
    /// [`DIRECT_MIN`] bytes), measured only while the hint says messages are large; `None` for
    /// the scratch path.
    #[inline]
    fn direct_len(&self, value: &T) -> Result<Option<usize>, bincode::error::EncodeError> {
        if !self.shared.big_hint() {
            return Ok(None);
        }
        match codec::encoded_len(value) {
            Ok(len) if len >= DIRECT_MIN => Ok(Some(len)),
            Ok(_) => {
                self.shared.set_big_hint(false);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Puts `value`, whose encoding is `len` bytes long, by encoding it straight into the ring
    /// under the put lock (one copy).
    fn push_direct(
        &self,
        core: &ShmCore<'_>,
        value: &T,
        len: usize,
        wait: Wait,
    ) -> Result<(), PushFail> {
        if len > self.max_message_len() {
            return Err(Err(Fail::TooLarge));
        }
        self.shared.prepare_large(false);
        let failed = std::cell::Cell::new(None);
        let mem = &core.mem;
        let write = |pos: u64| match codec::encode_to_ring(value, mem, pos, len) {
            Ok(()) => true,
            Err(e) => {
                failed.set(Some(e));
                false
            }
        };
        match core.push(Src::Write(len, &write), wait) {
            Ok(_) => Ok(()),
            Err(Fail::Refused) => Err(Ok(failed.take().map_or_else(
                || bincode::error::EncodeError::Other("the value could not be encoded"),
                Into::into,
            ))),
            Err(f) => Err(Err(f)),
        }
    }

    /// Puts one value: encoded in place if it is large ([`DIRECT_MIN`]), otherwise into this
    /// thread's scratch buffer and pushed as a frame.
    #[inline]
    fn push_value<B: Borrow<T>, E>(
        &self,
        value: B,
        wait: Wait,
        err: impl FnOnce(B, Fail) -> E,
        encode_err: impl FnOnce(B, bincode::error::EncodeError) -> E,
    ) -> Result<(), E> {
        let core = match self.shared.core() {
            Ok(c) => c,
            Err(f) => return Err(err(value, f)),
        };
        let r = match self.direct_len(value.borrow()) {
            Err(e) => Err(Ok(e)),
            Ok(Some(len)) => self.push_direct(&core, value.borrow(), len, wait),
            Ok(None) => with_scratch(&ENCODE, |buf| {
                match encode_frame(value.borrow(), buf) {
                    Ok(_) => {}
                    Err(FrameFail::Encode(e)) => return Err(Ok(e)),
                    Err(FrameFail::TooLarge) => return Err(Err(Fail::TooLarge)),
                }
                if buf.len() >= HDR + DIRECT_MIN {
                    self.shared.set_big_hint(true);
                }
                if buf.len() > self.capacity() {
                    return Err(Err(Fail::TooLarge));
                }
                core.push(Src::Frames(buf), wait).map(|_| ()).map_err(Err)
            }),
        };
        match r {
            Ok(()) => Ok(()),
            Err(Ok(e)) => Err(encode_err(value, e)),
            Err(Err(f)) => Err(err(value, f)),
        }
    }

    /// Puts `value`, waiting for room. On failure the value comes back in the error.
    ///
    /// `value` is a `T` or a `&T` (anything that borrows as `T`): `q.put(job)` and
    /// `q.put(&job)` both work, as `Connection::send` takes a message or a reference to one,
    /// and the error hands back what was given. (A `PutError<&T>` borrows, so `?` cannot carry
    /// it into `Box<dyn Error>`; put by value there.)
    ///
    /// ```
    /// let q: ipc_queue::Queue<(u32, String)> = ipc_queue::QueueBuilder::new().build()?;
    /// q.put((1, "by value".to_string()))?;
    /// let job = (2, "by reference".to_string());
    /// q.put(&job).expect("open queue"); // `job` is still ours
    /// assert_eq!(q.get()?, (1, "by value".to_string()));
    /// assert_eq!(q.get()?, job);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put<B: Borrow<T>>(&self, value: B) -> Result<(), PutError<B>> {
        self.push_value(
            value,
            FOREVER,
            |v, f| match f {
                Fail::Closed => PutError::Closed(v),
                Fail::TooLarge => PutError::TooLarge(v),
                f => PutError::Corrupted(v, broken(f)),
            },
            PutError::Encode,
        )
    }

    /// Puts `value` (a `T` or a `&T`, as for [`put`](Queue::put)) if there is room now.
    pub fn try_put<B: Borrow<T>>(&self, value: B) -> Result<(), TryPutError<B>> {
        self.push_value(
            value,
            Wait::No,
            |v, f| match f {
                Fail::Full => TryPutError::Full(v),
                Fail::Closed => TryPutError::Closed(v),
                Fail::TooLarge => TryPutError::TooLarge(v),
                f => TryPutError::Corrupted(v, broken(f)),
            },
            TryPutError::Encode,
        )
    }

    /// Puts `value` (a `T` or a `&T`, as for [`put`](Queue::put)), waiting at most `timeout`
    /// for room.
    pub fn put_timeout<B: Borrow<T>>(
        &self,
        value: B,
        timeout: Duration,
    ) -> Result<(), PutTimeoutError<B>> {
        self.push_value(
            value,
            wait_for(timeout),
            |v, f| match f {
                Fail::Timeout => PutTimeoutError::Timeout(v),
                Fail::Closed => PutTimeoutError::Closed(v),
                Fail::TooLarge => PutTimeoutError::TooLarge(v),
                f => PutTimeoutError::Corrupted(v, broken(f)),
            },
            PutTimeoutError::Encode,
        )
    }

    /// Puts every item of `items`, in order, waiting for room as needed. Items are encoded in
    /// chunks and each chunk is committed with one lock acquisition (as many whole messages as
    /// fit at a time), which is what makes small messages cheap. On failure the error says how
    /// many items were put.
    pub fn put_many(&self, items: &[T]) -> Result<(), PutManyError> {
        let core = self.shared.core().map_err(|f| PutManyError::Corrupted {
            sent: 0,
            what: broken(f),
        })?;
        let cap = self.capacity();
        let chunk = PUT_MANY_CHUNK.min(cap / 2).max(HDR);
        with_scratch(&ENCODE, |buf| {
            let mut sent = 0usize;
            let mut encoded = 0usize;
            let flush = |buf: &mut Vec<u8>, sent: &mut usize| -> Result<(), PutManyError> {
                let mut at = 0;
                while at < buf.len() {
                    match core.push(Src::Frames(&buf[at..]), FOREVER) {
                        Ok((bytes, n)) => {
                            at += bytes;
                            *sent += n as usize;
                        }
                        Err(Fail::Closed) => return Err(PutManyError::Closed { sent: *sent }),
                        Err(f) => {
                            return Err(PutManyError::Corrupted {
                                sent: *sent,
                                what: broken(f),
                            });
                        }
                    }
                }
                buf.clear();
                Ok(())
            };
            while encoded < items.len() {
                match self.direct_len(&items[encoded]) {
                    Ok(None) => {}
                    Ok(Some(len)) => {
                        flush(buf, &mut sent)?;
                        match self.push_direct(&core, &items[encoded], len, FOREVER) {
                            Ok(()) => {
                                sent += 1;
                                encoded += 1;
                                continue;
                            }
                            Err(Ok(error)) => return Err(PutManyError::Encode { sent, error }),
                            Err(Err(Fail::TooLarge)) => {
                                return Err(PutManyError::TooLarge { sent });
                            }
                            Err(Err(Fail::Closed)) => return Err(PutManyError::Closed { sent }),
                            Err(Err(f)) => {
                                return Err(PutManyError::Corrupted {
                                    sent,
                                    what: broken(f),
                                });
                            }
                        }
                    }
                    Err(error) => {
                        flush(buf, &mut sent)?;
                        return Err(PutManyError::Encode { sent, error });
                    }
                }
                match encode_frame(&items[encoded], buf) {
                    Ok(flen) if flen > cap => {
                        buf.truncate(buf.len() - flen);
                        flush(buf, &mut sent)?;
                        return Err(PutManyError::TooLarge { sent });
                    }
                    Ok(flen) => {
                        if flen >= HDR + DIRECT_MIN {
                            self.shared.set_big_hint(true);
                        }
                        encoded += 1;
                    }
                    Err(FrameFail::TooLarge) => {
                        flush(buf, &mut sent)?;
                        return Err(PutManyError::TooLarge { sent });
                    }
                    Err(FrameFail::Encode(error)) => {
                        flush(buf, &mut sent)?;
                        return Err(PutManyError::Encode { sent, error });
                    }
                }
                if buf.len() >= chunk {
                    flush(buf, &mut sent)?;
                }
            }
            flush(buf, &mut sent)
        })
    }

    /// Pops up to `max` frames into the decode scratch and decodes them into `out`.
    fn pop_values(
        &self,
        out: &mut Vec<T>,
        max: usize,
        wait: Wait,
    ) -> Result<usize, (Fail, Option<DecodeFailures>)> {
        let core = self.shared.core().map_err(|f| (f, None))?;
        with_scratch(&DECODE, |buf| {
            let max = u32::try_from(max).unwrap_or(u32::MAX).max(1);
            let (mut delivered, mut failed, mut first) = (0, 0, None);
            let mem = &core.mem;
            // Large messages: decoded in place, under the get lock.
            let mut visit = |pos: u64, len: usize| match codec::decode_ring::<T, _>(mem, pos, len) {
                Ok(v) => {
                    out.push(v);
                    delivered += 1;
                }
                Err(e) => {
                    failed += 1;
                    first.get_or_insert(e.into());
                }
            };
            core.pop(
                &mut Sink::Split {
                    small: buf,
                    max,
                    big: DIRECT_MIN,
                    visit: &mut visit,
                },
                wait,
            )
            .map_err(|f| (f, None))?;
            if delivered + failed > 0 {
                self.shared.prepare_large(true);
            }
            for payload in frames(buf) {
                match decode::<T>(payload) {
                    Ok(v) => {
                        out.push(v);
                        delivered += 1;
                    }
                    Err(e) => {
                        failed += 1;
                        first.get_or_insert(e);
                    }
                }
            }
            match first {
                None => Ok(delivered),
                Some(e) => Err((Fail::Empty, Some((delivered, failed, e)))),
            }
        })
    }

    /// Gets one message, decoded; the value and the decoding outcome.
    #[inline]
    fn pop_one(&self, wait: Wait) -> Result<Result<T, DecodeError>, Fail> {
        let core = self.shared.core()?;
        with_scratch(&DECODE, |buf| {
            let mem = &core.mem;
            let mut got = None;
            // A large message: decoded in place, under the get lock.
            let mut visit = |pos: u64, len: usize| {
                got = Some(codec::decode_ring::<T, _>(mem, pos, len).map_err(Into::into));
            };
            core.pop(
                &mut Sink::Split {
                    small: buf,
                    max: 1,
                    big: DIRECT_MIN,
                    visit: &mut visit,
                },
                wait,
            )?;
            if let Some(r) = got {
                self.shared.prepare_large(true);
                return Ok(r);
            }
            let payload = frames(buf).next().ok_or(Fail::Corrupted("frame"))?;
            Ok(decode::<T>(payload))
        })
    }

    /// Gets the next message, waiting for one. After [`Queue::close`], returns what is queued
    /// and then [`GetError::Closed`].
    pub fn get(&self) -> Result<T, GetError> {
        match self.pop_one(FOREVER) {
            Ok(r) => r.map_err(GetError::Decode),
            Err(Fail::Closed) => Err(GetError::Closed),
            Err(f) => Err(GetError::Corrupted(broken(f))),
        }
    }

    /// Gets the next message if one is queued now.
    pub fn try_get(&self) -> Result<T, TryGetError> {
        match self.pop_one(Wait::No) {
            Ok(r) => r.map_err(TryGetError::Decode),
            Err(Fail::Empty) => Err(TryGetError::Empty),
            Err(Fail::Closed) => Err(TryGetError::Closed),
            Err(f) => Err(TryGetError::Corrupted(broken(f))),
        }
    }

    /// Gets the next message, waiting at most `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetTimeoutError> {
        match self.pop_one(wait_for(timeout)) {
            Ok(r) => r.map_err(GetTimeoutError::Decode),
            Err(Fail::Timeout) => Err(GetTimeoutError::Timeout),
            Err(Fail::Closed) => Err(GetTimeoutError::Closed),
            Err(f) => Err(GetTimeoutError::Corrupted(broken(f))),
        }
    }

    fn many(&self, out: &mut Vec<T>, max: usize, wait: Wait) -> Result<usize, GetManyError> {
        self.pop_values(out, max, wait)
            .map_err(|(f, d)| match (f, d) {
                (_, Some((delivered, failed, error))) => GetManyError::Decode {
                    delivered,
                    failed,
                    error,
                },
                (Fail::Empty, None) => GetManyError::Empty,
                (Fail::Timeout, None) => GetManyError::Timeout,
                (Fail::Closed, None) => GetManyError::Closed,
                (f, None) => GetManyError::Corrupted(broken(f)),
            })
    }

    /// Waits for at least one message, then takes up to `max` with one lock acquisition and
    /// pushes them to `out` in queue order; returns how many were pushed.
    pub fn get_many(&self, out: &mut Vec<T>, max: usize) -> Result<usize, GetManyError> {
        self.many(out, max, FOREVER)
    }

    /// Takes up to `max` messages if any are queued now.
    pub fn try_get_many(&self, out: &mut Vec<T>, max: usize) -> Result<usize, GetManyError> {
        self.many(out, max, Wait::No)
    }

    /// Takes up to `max` messages, waiting at most `timeout` for the first.
    pub fn get_many_timeout(
        &self,
        out: &mut Vec<T>,
        max: usize,
        timeout: Duration,
    ) -> Result<usize, GetManyError> {
        self.many(out, max, wait_for(timeout))
    }
}

/// A [`Queue`] whose consumers report each message as done, so that a producer can wait for all
/// of them ([`JoinableQueue::join`]): Python's `multiprocessing.JoinableQueue`, across processes.
///
/// Every message put counts as an unfinished task until a [`JoinableQueue::task_done`] call
/// (from any process) retires it. A consumer that dies before calling `task_done` leaves its
/// task unfinished, so `join` would wait forever: use [`JoinableQueue::join_timeout`] where
/// consumers may die.
///
/// ```
/// use ipc_queue::{JoinableQueue, QueueBuilder};
///
/// let q: JoinableQueue<u64> = QueueBuilder::new().build_joinable()?;
/// q.put(7)?;
/// let worker = q.clone(); // a forked or exec'ed process in real use
/// assert_eq!(worker.get()?, 7);
/// worker.task_done()?;
/// q.join(); // every task is done
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("queue", &self.queue)
            .field("unfinished", &self.unfinished_tasks())
            .finish()
    }
}

impl<T> std::ops::Deref for JoinableQueue<T> {
    type Target = Queue<T>;
    fn deref(&self) -> &Queue<T> {
        &self.queue
    }
}

impl<T> JoinableQueue<T> {
    /// The joinable view of a queue's handle (the received side of `transfer.rs`).
    pub(crate) fn from_queue(queue: Queue<T>) -> Self {
        JoinableQueue { queue }
    }

    /// Opens the joinable queue called `name`.
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Ok(JoinableQueue {
            queue: Queue::open(name)?,
        })
    }

    /// Opens the joinable queue behind a descriptor.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, OpenError> {
        Ok(JoinableQueue {
            queue: Queue::from_fd(fd)?,
        })
    }

    /// Opens the joinable queue inherited under `key`.
    pub fn from_inherited(key: &str) -> Result<Self, OpenError> {
        Ok(JoinableQueue {
            queue: Queue::from_inherited(key)?,
        })
    }

    /// The plain queue (the same shared queue).
    pub fn queue(&self) -> &Queue<T> {
        &self.queue
    }

    /// Tasks put and not yet marked done (approximate while others run).
    pub fn unfinished_tasks(&self) -> u32 {
        self.queue.shared.core().map_or(0, |c| c.unfinished())
    }

    /// Marks one task (a message got earlier, by any process) as done.
    pub fn task_done(&self) -> Result<(), TaskDoneError> {
        self.queue
            .shared
            .core()
            .map_err(|_| TaskDoneError::TooManyCalls)?
            .task_done()
            .map_err(|_| TaskDoneError::TooManyCalls)
    }

    /// Waits until every task put (by any process) has been marked done.
    pub fn join(&self) {
        if let Ok(c) = self.queue.shared.core() {
            let _ = c.join(None);
        }
    }

    /// Waits at most `timeout` until every task put has been marked done.
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), JoinError> {
        let Ok(c) = self.queue.shared.core() else {
            return Ok(());
        };
        c.join(Some(Deadline::after(timeout)))
            .map_err(|_| JoinError::Timeout {
                unfinished: c.unfinished(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A getter SIGKILLed while asleep leaves its registration in the `data` event count (here:
    /// a token dropped without waiting, which is all a death leaves). The next put's notify
    /// clears it, so later puts make no wake-up call (layout 1 paid one on every put, forever).
    #[test]
    fn dead_getter_registration_is_cleared_by_the_next_put() {
        let q: Queue<u32> = QueueBuilder::new().capacity(1024).build().unwrap();
        let core = q.shared.core().unwrap();
        drop(core.ctl.put.data.listen());
        assert_eq!(core.ctl.put.data.waiters(), 1);
        q.put(1).unwrap();
        assert_eq!(core.ctl.put.data.waiters(), 0);
        q.put(2).unwrap();
        assert_eq!(core.ctl.put.data.waiters(), 0);
        assert_eq!(q.get().unwrap(), 1);
    }

    /// The same for a putter that died waiting for room: the next get clears it.
    #[test]
    fn dead_putter_registration_is_cleared_by_the_next_get() {
        let q: Queue<u32> = QueueBuilder::new().capacity(1024).build().unwrap();
        let core = q.shared.core().unwrap();
        q.put(1).unwrap();
        drop(core.ctl.get.space.listen());
        assert_eq!(core.ctl.get.space.waiters(), 1);
        assert_eq!(q.get().unwrap(), 1);
        assert_eq!(core.ctl.get.space.waiters(), 0);
    }
}
