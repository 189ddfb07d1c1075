//! Handing IPC objects to other processes inside messages: the descriptor table in force while a
//! message is encoded or decoded (feature `serde`, which `codec` turns on).
//!
//! A [`Segment`], a [`SharedValue`] or a [`SharedSlice`] (and, in the crates above, a queue or a
//! pipe end) cannot be sent as bytes: what makes it usable is a file descriptor. So each of them
//! implements serde's `Serialize`/`Deserialize` through this module, and only works inside a
//! *transfer context*:
//!
//! - **Encoding** ([`encode`]): a handle duplicates its descriptor(s) into the outgoing
//!   [`FdBatch`] (`F_DUPFD_CLOEXEC`, through [`os::dup`]) and serialises an
//!   [`FdRef`] (the batch's id and the index in it) plus what the receiver must check: the
//!   segment's payload length and [`TypeTag`], and for a `SharedValue` or `SharedSlice` its offset
//!   and the layout of `T` (size, alignment and a hash of its type name).
//! - **Sending**: the transport carries the batch's descriptors next to the bytes (`SCM_RIGHTS`):
//!   `ipc_pipe::Connection::send` does it by itself, and so does the pool for task, initializer and
//!   `Process` arguments.
//! - **Decoding** ([`decode`], [`decode_with`]): a handle takes its descriptor back by index and
//!   rebuilds itself through the normal, validated open path ([`OpenOptions::from_fd`]), so the
//!   header (magic, version, size, tag) is checked again on the receiving side. The batch's
//!   descriptors are closed when decoding ends (each handle owns a duplicate). An index out of
//!   range, a batch that did not arrive or belongs to another message, or a layout that does
//!   not match is a typed [`TransferError`].
//!
//! Clones of one handle (a queue cloned into each of many task arguments, two views of one
//! segment) share one open descriptor, and travel as one entry of the batch, so a message
//! carries at most [`MAX_FDS`] *distinct* objects.
//!
//! Outside a context, serialising a handle fails with a serde error that says so ("a Segment
//! carries a descriptor: send it through ipc-pipe or the pool"); there is never a silent
//! fallback to a name. Descriptors are never meaningful as numbers in another process.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use ipc_shm::{SharedValue, transfer};
//!
//! let counter = SharedValue::<AtomicU64>::new_anonymous()?;
//! // Encode: the bytes name descriptor 0 of the batch, the batch holds a duplicate.
//! let (bytes, batch, error) = transfer::encode(|| ipc_shm::codec::encode(&counter));
//! assert!(error.is_none());
//! let bytes = bytes?;
//! assert_eq!(batch.len(), 1);
//! // ... the bytes and the batch's descriptors travel to another process (a pipe, the pool) ...
//! let (copy, error) = transfer::decode_with(Some(batch), || {
//!     ipc_shm::codec::decode::<SharedValue<AtomicU64>>(&bytes)
//! });
//! assert!(error.is_none());
//! copy?.fetch_add(1, Ordering::Relaxed);
//! assert_eq!(counter.load(Ordering::Relaxed), 1); // the same memory
//!
//! // Outside a context, a handle refuses to serialise.
//! assert!(ipc_shm::codec::encode(&counter).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Ownership rules
//!
//! - **Named segments**: the creator's handle unlinks the name when it drops (its
//!   [`SegmentBuilder::unlink_on_drop`](crate::SegmentBuilder::unlink_on_drop)); a received
//!   handle never unlinks (it was opened from a descriptor and has no name), and it keeps the
//!   memory mapped after the name is gone.
//! - **Anonymous (memfd) segments** have no name: the memory lives while any process holds a
//!   descriptor or a mapping of it, the sender's and every receiver's alike. Dropping is always
//!   safe; nobody has to unlink anything.
//! - **Sending duplicates**: the sender's handle stays valid and usable after it was sent (both
//!   processes then share the memory). The exception is a pipe end (`ipc_pipe::Connection`),
//!   which has one user at a time: sending it gives it away, see that crate.
//! - **Primitives in a segment** (`ipc_sync::Lock` and friends, as `SharedValue<Lock>`) travel
//!   as their segment plus their offset; they keep working across every process they were
//!   handed to, owner-death recovery included (the owner is recorded in the shared memory, not in
//!   the handle).
//!
//! # The batch id
//!
//! Every [`encode`] makes a batch with an id unique in this process (its pid in the high half).
//! The id is written into the message next to each index, so a receiver can never pair a
//! message with another message's descriptors: a transport that finds a batch with another id
//! first discards it (its message was never decoded, or its send failed half-way) and a missing
//! batch is [`TransferError::Missing`].

use std::cell::RefCell;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::SegmentOpenError;
use crate::header::TypeTag;
use crate::layout::{Offset, SliceOffset};
use crate::os;
use crate::segment::{OpenOptions, Segment};
use crate::shm_safe::ShmSafe;
use crate::value::{SharedSlice, SharedValue};

/// The most descriptors one message may carry (the `SCM_RIGHTS` limit of the OS layer,
/// [`os::MAX_FDS`]).
pub const MAX_FDS: usize = os::MAX_FDS;

/// Why a handle could not be sent or rebuilt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// A handle was serialised or deserialised outside a transfer context (a plain
    /// `bincode`/`codec` call): its descriptor cannot travel as bytes.
    #[error(
        "a {kind} carries a descriptor: send it through ipc-pipe or the pool \
         (it cannot be encoded as plain bytes)"
    )]
    NoContext {
        /// What was being encoded or decoded (`"Segment"`, `"Queue"`, ...).
        kind: &'static str,
    },
    /// The message carries more descriptors than one message may ([`MAX_FDS`]).
    #[error("a message may carry at most {max} descriptors")]
    TooMany {
        /// [`MAX_FDS`].
        max: usize,
    },
    /// Duplicating a descriptor failed (the descriptor table is full): for the outgoing batch,
    /// or for a handle rebuilt from the incoming one.
    #[error("could not duplicate a descriptor")]
    Dup(#[source] std::io::Error),
    /// The handle cannot travel: a pipe end already given away, or an end sent over its own
    /// pipe.
    #[error("this {kind} cannot be sent: {reason}")]
    NotTransferable {
        /// What was being sent.
        kind: &'static str,
        /// Why not.
        reason: &'static str,
    },
    /// The message refers to a descriptor index its batch does not have (a forged or corrupted
    /// message).
    #[error("the message refers to descriptor {index}, but its batch carries {count}")]
    OutOfRange {
        /// The index in the message.
        index: u32,
        /// How many descriptors arrived.
        count: usize,
    },
    /// The message refers to a batch other than the one that came with it.
    #[error(
        "the message refers to descriptor batch {found:#x}, but batch {expected:#x} came with it"
    )]
    WrongBatch {
        /// The batch that arrived.
        expected: u64,
        /// The batch the message names.
        found: u64,
    },
    /// The message refers to descriptors that did not arrive with it.
    #[error("the descriptors of batch {batch:#x} did not arrive")]
    Missing {
        /// The batch the message names.
        batch: u64,
    },
    /// The transport failed while receiving the descriptors.
    #[error("receiving the descriptors failed")]
    Recv(#[source] std::io::Error),
    /// The transport refused the descriptors (a batch record whose descriptor count does not
    /// match what arrived, or bytes that are not a batch record).
    #[error("the descriptors of a message arrived damaged: {what}")]
    Corrupted {
        /// What was wrong.
        what: &'static str,
    },
    /// The received descriptor's segment failed validation (header, tag, size).
    #[error("the received segment does not open")]
    Open(#[source] SegmentOpenError),
    /// The received segment's payload length differs from the sender's.
    #[error("the received segment has {found} payload bytes, the sender's had {expected}")]
    LengthMismatch {
        /// The sender's payload length.
        expected: u64,
        /// The received segment's.
        found: u64,
    },
    /// A `SharedValue<T>` or `SharedSlice<T>` arrived for another `T` (size, alignment or type
    /// name differ), or at an offset outside its segment.
    #[error("a {kind} arrived for another layout: {detail}")]
    Layout {
        /// `"SharedValue"` or `"SharedSlice"`.
        kind: &'static str,
        /// What differs.
        detail: LayoutMismatch,
    },
    /// An object rebuilt from the received segment failed its own checks (a queue's or a
    /// pipe's control block).
    #[error("the received {kind} is invalid: {what}")]
    Invalid {
        /// What was rebuilt.
        kind: &'static str,
        /// What was wrong.
        what: &'static str,
    },
}

/// What differed between a handed `SharedValue<T>`/`SharedSlice<T>` and the receiver's `T`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayoutMismatch {
    /// The size, alignment or type-name hash of `T` differ.
    Type {
        /// The receiver's type.
        expected: &'static str,
        /// The sender's `(size, align)`.
        found: (u64, u64),
    },
    /// The offset (and length) do not fit the segment, or are misaligned.
    Offset {
        /// The offset in the message.
        offset: u64,
    },
}

impl fmt::Display for LayoutMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutMismatch::Type { expected, found } => write!(
                f,
                "the receiver expects {expected}, the sender's type has size {} and alignment {} \
                 (or another name)",
                found.0, found.1
            ),
            LayoutMismatch::Offset { offset } => {
                write!(f, "offset {offset} is out of bounds or misaligned")
            }
        }
    }
}

/// Where a handle's descriptor is in its message's [`FdBatch`]: the batch id and the index.
/// Serialised by handles in place of the descriptor; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdRef {
    /// The id of the batch (see [`FdBatch::id`]).
    pub batch: u64,
    /// The index in the batch.
    pub index: u32,
}

/// The descriptors of one message, with the id its handles name.
#[derive(Debug)]
pub struct FdBatch {
    id: u64,
    fds: Vec<OwnedFd>,
}

impl FdBatch {
    /// A batch of received descriptors, with the id that came with them.
    pub fn from_parts(id: u64, fds: Vec<OwnedFd>) -> FdBatch {
        FdBatch { id, fds }
    }

    /// The batch's id (unique in the sending process; 0 for a batch with no descriptors).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// How many descriptors it holds.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// Whether it holds none: the message needs no descriptor passing.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// The descriptors, in index order, for a transport to send.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.fds.iter().map(AsFd::as_fd).collect()
    }

    /// Duplicates every descriptor (to decode the same message twice, e.g. to re-slice a job).
    pub fn try_clone(&self) -> std::io::Result<FdBatch> {
        let fds = self
            .fds
            .iter()
            .map(|fd| os::dup(fd.as_fd()))
            .collect::<std::io::Result<_>>()?;
        Ok(FdBatch { id: self.id, fds })
    }

    /// The descriptors, to hand to a transport that takes ownership.
    pub fn into_fds(self) -> Vec<OwnedFd> {
        self.fds
    }
}

/// One context on a thread's stack.
enum Frame {
    Encode {
        /// Allocated when the first descriptor is put (0 while there is none), so that a
        /// message without handles costs no atomic operation.
        id: u64,
        fds: Vec<OwnedFd>,
        /// The numbers of the descriptors `fds` duplicate: a handle whose descriptor is already
        /// in the batch (clones of one queue, views of one segment) reuses its index.
        sources: Vec<RawFd>,
        /// The identity of the channel the message goes over (see [`encode_over`]).
        channel: Option<usize>,
        error: Option<TransferError>,
    },
    Decode {
        /// The batch in force, or `None` until a handle asks for one.
        batch: Option<(u64, Vec<OwnedFd>)>,
        /// The batch a handle asked for while none was in force.
        need: Option<u64>,
        error: Option<TransferError>,
    },
}

thread_local! {
    static STACK: RefCell<Vec<Frame>> = const { RefCell::new(Vec::new()) };
}

/// Pops the frame it pushed, even if the closure panics.
struct Pushed;

impl Pushed {
    fn push(frame: Frame) -> Pushed {
        STACK.with(|s| s.borrow_mut().push(frame));
        Pushed
    }

    fn pop(self) -> Frame {
        let frame = STACK.with(|s| s.borrow_mut().pop());
        std::mem::forget(self);
        frame.unwrap_or_else(|| unreachable!("a transfer frame is popped once, by its pusher"))
    }
}

impl Drop for Pushed {
    fn drop(&mut self) {
        // Unwinding out of the closure: the frame (and its descriptors) go away.
        let _ = STACK.try_with(|s| s.borrow_mut().pop());
    }
}

fn next_batch_id() -> u64 {
    static COUNTER: AtomicU32 = AtomicU32::new(1);
    (u64::from(os::pid()) << 32) | u64::from(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Runs `f` (which serialises a message) with an outgoing descriptor table in force, and
/// returns its result, the batch of descriptors the handles in the message put there, and the
/// first [`TransferError`] a handle met (then `f`'s own result is a serde error saying the same).
///
/// Transports send the batch's descriptors with the bytes; an empty batch needs nothing sent.
pub fn encode<R>(f: impl FnOnce() -> R) -> (R, FdBatch, Option<TransferError>) {
    encode_inner(None, f)
}

/// [`encode`] for a message that goes over the channel identified by `channel` (a transport's
/// own identity, such as the address of its shared state): a handle on that same channel
/// refuses to travel over it ([`TransferError::NotTransferable`]; see [`sending_over`]).
pub fn encode_over<R>(
    channel: usize,
    f: impl FnOnce() -> R,
) -> (R, FdBatch, Option<TransferError>) {
    encode_inner(Some(channel), f)
}

fn encode_inner<R>(
    channel: Option<usize>,
    f: impl FnOnce() -> R,
) -> (R, FdBatch, Option<TransferError>) {
    let pushed = Pushed::push(Frame::Encode {
        id: 0,
        fds: Vec::new(),
        sources: Vec::new(),
        channel,
        error: None,
    });
    let value = f();
    match pushed.pop() {
        Frame::Encode { id, fds, error, .. } => (value, FdBatch { id, fds }, error),
        Frame::Decode { .. } => unreachable!("the frame popped is the one pushed"),
    }
}

/// Whether the message being encoded on this thread goes over the channel `channel` (see
/// [`encode_over`]); `false` outside an encoding.
pub fn sending_over(channel: usize) -> bool {
    STACK.with(|s| {
        matches!(s.borrow().last(), Some(Frame::Encode { channel: Some(c), .. }) if *c == channel)
    })
}

/// Runs `f` (which deserialises a message) with `batch` as the incoming descriptor table;
/// returns `f`'s result and the first [`TransferError`] a handle met. Descriptors no handle took
/// are closed before this returns. With `None`, a handle that needs a descriptor fails with
/// [`TransferError::Missing`].
pub fn decode_with<R>(batch: Option<FdBatch>, f: impl FnOnce() -> R) -> (R, Option<TransferError>) {
    let pushed = Pushed::push(Frame::Decode {
        batch: batch.map(|b| (b.id, b.fds)),
        need: None,
        error: None,
    });
    let value = f();
    match pushed.pop() {
        Frame::Decode { need, error, .. } => (
            value,
            error.or(need.map(|batch| TransferError::Missing { batch })),
        ),
        Frame::Encode { .. } => unreachable!("the frame popped is the one pushed"),
    }
}

/// Runs `f` (which deserialises a message) in a context that fetches the message's descriptors
/// only if a handle in it asks for them: `f` runs once; if a handle needed batch `id`, `fetch(id)`
/// gets it from the transport and `f` runs a second time with it in force. So messages without
/// handles cost nothing extra. Returns `f`'s (last) result and the first [`TransferError`].
pub fn decode<R>(
    fetch: impl FnOnce(u64) -> Result<FdBatch, TransferError>,
    mut f: impl FnMut() -> R,
) -> (R, Option<TransferError>) {
    let pushed = Pushed::push(Frame::Decode {
        batch: None,
        need: None,
        error: None,
    });
    let value = f();
    let Frame::Decode { need, error, .. } = pushed.pop() else {
        unreachable!("the frame popped is the one pushed")
    };
    let Some(id) = need else {
        return (value, error);
    };
    match fetch(id) {
        Ok(batch) if batch.id == id => decode_with(Some(batch), f),
        Ok(batch) => (
            value,
            Some(TransferError::WrongBatch {
                expected: batch.id,
                found: id,
            }),
        ),
        Err(e) => (value, Some(e)),
    }
}

/// A handle's failure as serde sees it: the message of a [`TransferError`] that was recorded in
/// the context in force (whose [`encode`]/[`decode`] caller gets the typed error). Pass it to
/// `S::Error::custom` / `D::Error::custom`.
#[derive(Debug, Clone)]
pub struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Records `e` as the first error of the context in force (if there is one) and returns its
/// message for serde.
fn record(e: TransferError) -> Refused {
    let message = match std::error::Error::source(&e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    };
    STACK.with(|s| {
        if let Some(Frame::Encode { error, .. } | Frame::Decode { error, .. }) =
            s.borrow_mut().last_mut()
            && error.is_none()
        {
            *error = Some(e);
        }
    });
    Refused(message)
}

/// Records `e` in the context in force (the typed error [`encode`]/[`decode`] return) and
/// returns its message, for a handle's `Serialize`/`Deserialize` impl that failed for its own
/// reasons (a queue or pipe whose checks failed): `Err(D::Error::custom(transfer::fail(e)))`.
pub fn fail(e: TransferError) -> Refused {
    record(e)
}

/// For a handle's `Serialize` impl: duplicates `fd` into the outgoing batch of the encoding in
/// force and returns where it is. `kind` names the handle in the error outside a context.
pub fn put_fd(fd: BorrowedFd<'_>, kind: &'static str) -> Result<FdRef, Refused> {
    let result = STACK.with(|s| {
        let mut stack = s.borrow_mut();
        let Some(Frame::Encode {
            id,
            fds,
            sources,
            error,
            ..
        }) = stack.last_mut()
        else {
            return Err(TransferError::NoContext { kind });
        };
        if error.is_some() {
            // The message is failing already; the first error is the one reported.
            return Err(TransferError::NotTransferable {
                kind,
                reason: "an earlier handle of the message failed",
            });
        }
        if let Some(index) = sources.iter().position(|&raw| raw == fd.as_raw_fd()) {
            // The same open descriptor (a clone of a handle already in the message): one copy
            // travels, and each handle rebuilt from it gets its own duplicate.
            return Ok(FdRef {
                batch: *id,
                index: index as u32,
            });
        }
        if fds.len() >= MAX_FDS {
            return Err(TransferError::TooMany { max: MAX_FDS });
        }
        let dup = os::dup(fd).map_err(TransferError::Dup)?;
        if *id == 0 {
            *id = next_batch_id();
        }
        let index = fds.len() as u32;
        fds.push(dup);
        sources.push(fd.as_raw_fd());
        Ok(FdRef { batch: *id, index })
    });
    result.map_err(record)
}

/// For a handle's `Deserialize` impl: a duplicate of the descriptor `r` names in the incoming
/// batch of the decoding in force (several handles may name one index: clones of one object
/// travel once). The batch's own descriptors are closed when the decoding ends.
pub fn take_fd(r: FdRef, kind: &'static str) -> Result<OwnedFd, Refused> {
    let result = STACK.with(|s| {
        let mut stack = s.borrow_mut();
        let Some(Frame::Decode { batch, need, .. }) = stack.last_mut() else {
            return Err(TransferError::NoContext { kind });
        };
        let Some((id, fds)) = batch else {
            // The lazy `decode`: remember what to fetch; the caller runs the decode again.
            need.get_or_insert(r.batch);
            return Err(TransferError::Missing { batch: r.batch });
        };
        if *id != r.batch {
            return Err(TransferError::WrongBatch {
                expected: *id,
                found: r.batch,
            });
        }
        let count = fds.len();
        let fd = fds.get(r.index as usize).ok_or(TransferError::OutOfRange {
            index: r.index,
            count,
        })?;
        os::dup(fd.as_fd()).map_err(TransferError::Dup)
    });
    match result {
        // Not an error yet: the lazy decode fetches the batch and runs again.
        Err(e @ TransferError::Missing { .. }) if needs_fetch() => Err(Refused(e.to_string())),
        r => r.map_err(record),
    }
}

/// Whether the decoding in force is the lazy first pass of [`decode`].
fn needs_fetch() -> bool {
    STACK.with(|s| {
        matches!(
            s.borrow().last(),
            Some(Frame::Decode {
                batch: None,
                need: Some(_),
                ..
            })
        )
    })
}

/// What a receiver checks about the `T` of a `SharedValue<T>`/`SharedSlice<T>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct TypeCheck {
    size: u64,
    align: u64,
    name: u64,
}

impl TypeCheck {
    fn of<T>() -> TypeCheck {
        TypeCheck {
            size: std::mem::size_of::<T>() as u64,
            align: std::mem::align_of::<T>() as u64,
            name: TypeTag::from_name(std::any::type_name::<T>()).0,
        }
    }
}

/// A segment on the wire: its descriptor, and what the receiver checks.
#[derive(Serialize, Deserialize)]
struct SegmentWire {
    fd: FdRef,
    tag: u64,
    len: u64,
}

impl SegmentWire {
    fn of(seg: &Segment, kind: &'static str) -> Result<SegmentWire, Refused> {
        Ok(SegmentWire {
            fd: put_fd(seg.fd(), kind)?,
            tag: seg.type_tag().0,
            len: seg.len() as u64,
        })
    }

    fn open(self, kind: &'static str) -> Result<Segment, Refused> {
        let fd = take_fd(self.fd, kind)?;
        let seg = OpenOptions::new(TypeTag(self.tag))
            .from_fd(fd)
            .map_err(|e| record(TransferError::Open(e)))?;
        if seg.len() as u64 != self.len {
            return Err(record(TransferError::LengthMismatch {
                expected: self.len,
                found: seg.len() as u64,
            }));
        }
        Ok(seg)
    }
}

/// A `Segment` travels as its descriptor (duplicated into the message's batch), type tag and
/// payload length. Only inside a transfer context (see [`crate::transfer`]).
impl Serialize for Segment {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SegmentWire::of(self, "Segment")
            .map_err(S::Error::custom)?
            .serialize(s)
    }
}

/// Rebuilt through [`OpenOptions::from_fd`] with the sender's tag: the header is validated
/// again, and the payload length must match. The received segment has no name and never
/// unlinks.
impl<'de> Deserialize<'de> for Segment {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Segment, D::Error> {
        SegmentWire::deserialize(d)?
            .open("Segment")
            .map_err(D::Error::custom)
    }
}

#[derive(Serialize, Deserialize)]
struct ValueWire {
    segment: SegmentWire,
    offset: u64,
    len: u64,
    ty: TypeCheck,
}

fn check_type<T>(kind: &'static str, found: TypeCheck) -> Result<(), Refused> {
    if found == TypeCheck::of::<T>() {
        return Ok(());
    }
    Err(record(TransferError::Layout {
        kind,
        detail: LayoutMismatch::Type {
            expected: std::any::type_name::<T>(),
            found: (found.size, found.align),
        },
    }))
}

fn bad_offset(kind: &'static str, offset: u64) -> Refused {
    record(TransferError::Layout {
        kind,
        detail: LayoutMismatch::Offset { offset },
    })
}

/// A `SharedValue<T>` travels as its segment, its offset and the layout of `T` (size,
/// alignment, type-name hash), which the receiver checks against its own `T`.
impl<T: ShmSafe> Serialize for SharedValue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let segment = SegmentWire::of(self.segment(), "SharedValue").map_err(S::Error::custom)?;
        ValueWire {
            segment,
            offset: self.offset().get() as u64,
            len: 1,
            ty: TypeCheck::of::<T>(),
        }
        .serialize(s)
    }
}

impl<'de, T: ShmSafe> Deserialize<'de> for SharedValue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SharedValue<T>, D::Error> {
        const KIND: &str = "SharedValue";
        let wire = ValueWire::deserialize(d)?;
        let seg = wire.segment.open(KIND).map_err(D::Error::custom)?;
        check_type::<T>(KIND, wire.ty).map_err(D::Error::custom)?;
        let offset = usize::try_from(wire.offset)
            .map_err(|_| D::Error::custom(bad_offset(KIND, wire.offset)))?;
        SharedValue::new(Arc::new(seg), Offset::from_raw(offset))
            .map_err(|_| D::Error::custom(bad_offset(KIND, wire.offset)))
    }
}

/// A `SharedSlice<T>` travels as its segment, its offset and length, and the layout of `T`.
impl<T: ShmSafe> Serialize for SharedSlice<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let segment = SegmentWire::of(self.segment(), "SharedSlice").map_err(S::Error::custom)?;
        let off = self.offset();
        ValueWire {
            segment,
            offset: off.offset() as u64,
            len: off.len() as u64,
            ty: TypeCheck::of::<T>(),
        }
        .serialize(s)
    }
}

impl<'de, T: ShmSafe> Deserialize<'de> for SharedSlice<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SharedSlice<T>, D::Error> {
        const KIND: &str = "SharedSlice";
        let wire = ValueWire::deserialize(d)?;
        let seg = wire.segment.open(KIND).map_err(D::Error::custom)?;
        check_type::<T>(KIND, wire.ty).map_err(D::Error::custom)?;
        let (Ok(offset), Ok(len)) = (usize::try_from(wire.offset), usize::try_from(wire.len))
        else {
            return Err(D::Error::custom(bad_offset(KIND, wire.offset)));
        };
        SharedSlice::new(Arc::new(seg), SliceOffset::from_raw(offset, len))
            .map_err(|_| D::Error::custom(bad_offset(KIND, wire.offset)))
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicU32, AtomicU64};

    use super::*;
    use crate::codec;

    fn value() -> SharedValue<AtomicU32> {
        SharedValue::new_anonymous().expect("value")
    }

    #[test]
    fn a_handle_outside_a_context_is_a_clear_serde_error() {
        let err = codec::encode(&value()).unwrap_err();
        let source = std::error::Error::source(&err).map(ToString::to_string);
        assert!(
            source.is_some_and(|s| s.contains("send it through ipc-pipe or the pool")),
            "{err:?}"
        );
    }

    #[test]
    fn descriptors_no_handle_took_are_closed() {
        let v = value();
        let (_, pair, _) = encode(|| codec::encode(&(&v, value())));
        assert_eq!(pair.len(), 2);
        let second = pair.fds[1].as_raw_fd();
        let (single, batch, _) = encode(|| codec::encode(&v));
        let single = single.expect("encodes");
        // The one-handle message decoded with two descriptors under its batch id: it uses
        // index 0 (its handle gets a duplicate), and both are closed when the decode ends.
        let two = FdBatch::from_parts(batch.id(), pair.into_fds());
        let (got, error) = decode_with(Some(two), || {
            codec::decode::<SharedValue<AtomicU32>>(&single)
        });
        assert!(error.is_none(), "{error:?}");
        assert!(got.is_ok());
        assert!(!os::is_open(second));
    }

    #[test]
    fn clones_of_one_object_travel_as_one_descriptor() {
        let v = value();
        let (bytes, batch, _) = encode(|| codec::encode(&(&v, v.clone(), value())));
        // `v` and its clone share one descriptor; the third value has its own.
        assert_eq!(batch.len(), 2);
        let bytes = bytes.expect("encodes");
        type Three = (
            SharedValue<AtomicU32>,
            SharedValue<AtomicU32>,
            SharedValue<AtomicU32>,
        );
        let (got, error) = decode_with(Some(batch), || codec::decode::<Three>(&bytes));
        assert!(error.is_none(), "{error:?}");
        let (a, b, c) = got.expect("decodes");
        a.store(4, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(b.load(std::sync::atomic::Ordering::Relaxed), 4);
        assert_eq!(v.load(std::sync::atomic::Ordering::Relaxed), 4);
        assert_eq!(c.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[test]
    fn another_layout_is_a_typed_error() {
        let v = value();
        let (bytes, batch, _) = encode(|| codec::encode(&v));
        let bytes = bytes.expect("encodes");
        let (got, error) = decode_with(Some(batch), || {
            codec::decode::<SharedValue<AtomicU64>>(&bytes)
        });
        assert!(got.is_err());
        assert!(
            matches!(
                error,
                Some(TransferError::Layout {
                    kind: "SharedValue",
                    detail: LayoutMismatch::Type { .. }
                })
            ),
            "{error:?}"
        );
    }

    #[test]
    fn the_lazy_decode_fetches_only_for_messages_with_handles() {
        let (plain, batch, _) = encode(|| codec::encode(&5u32));
        assert!(batch.is_empty());
        let plain = plain.expect("encodes");
        let (got, error) = decode(
            |_| panic!("no fetch for a plain message"),
            || codec::decode::<u32>(&plain),
        );
        assert_eq!(got.expect("decodes"), 5);
        assert!(error.is_none());

        let v = value();
        let (bytes, batch, _) = encode(|| codec::encode(&v));
        let bytes = bytes.expect("encodes");
        let id = batch.id();
        let mut fetched = 0;
        let mut batch = Some(batch);
        let (got, error) = decode(
            |want| {
                fetched += 1;
                assert_eq!(want, id);
                Ok(batch.take().expect("fetched once"))
            },
            || codec::decode::<SharedValue<AtomicU32>>(&bytes),
        );
        assert!(error.is_none(), "{error:?}");
        got.expect("decodes")
            .store(3, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(v.load(std::sync::atomic::Ordering::Relaxed), 3);
        assert_eq!(fetched, 1);
    }

    #[test]
    fn a_segment_arrives_revalidated_without_its_name() {
        let name = format!("ipc-shm-transfer-unit-{}", os::pid());
        let tag = TypeTag::from_name("transfer-unit");
        let seg = crate::SegmentBuilder::new(100)
            .name(&name)
            .type_tag(tag)
            .create()
            .expect("segment");
        let (bytes, batch, _) = encode(|| codec::encode(&seg));
        let bytes = bytes.expect("encodes");
        let (got, error) = decode_with(Some(batch), || codec::decode::<Segment>(&bytes));
        assert!(error.is_none());
        let got = got.expect("decodes");
        assert_eq!((got.len(), got.type_tag(), got.name()), (100, tag, None));
        assert!(!got.unlinks_on_drop());
    }
}
