//! The header at the start of every segment, and the type tag that says what follows it.
//!
//! ## Protocol
//!
//! | `state`     | meaning                                       | who moves it           |
//! |-------------|-----------------------------------------------|------------------------|
//! | 0 (`EMPTY`) | fresh zeroed object, header being written     | `ftruncate` zero-fills |
//! | `READY`     | header and payload initialised; open may map  | creator, once, release |
//! | `ABANDONED` | the creator's initialisation failed           | creator, once, release |
//!
//! The creator writes every other field first, then stores `state` with `Release`. An opener
//! loads `state` with `Acquire` and reads the other fields only after it sees `READY`, so it
//! never sees a half-written header. While `state` is `EMPTY` but the magic is already wrong,
//! the object is foreign: the opener fails at once instead of waiting.
//!
//! ## Memory ordering
//!
//! One release store (creator) pairs with one acquire load (opener). All other header fields
//! are written before the release and are read-only afterwards, so they use `Relaxed`.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Magic number at offset 0 of every segment: the bytes `ipcshm\0\x01` read little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"ipcshm\x00\x01");
/// The header layout this crate writes and understands.
pub const LAYOUT_VERSION: u32 = 1;
/// Where the payload starts, in bytes from the start of the object.
///
/// Two cache lines (128 bytes, the unit of adjacent-line prefetch on x86-64), so that the
/// payload never shares a line with the header.
pub const PAYLOAD_OFFSET: usize = 128;
/// The alignment every payload is guaranteed (the mapping is page aligned, the header is 128).
pub const PAYLOAD_ALIGN: usize = 128;

pub(crate) const STATE_EMPTY: u32 = 0;
pub(crate) const STATE_READY: u32 = u32::from_le_bytes(*b"REDY");
pub(crate) const STATE_ABANDONED: u32 = u32::from_le_bytes(*b"DEAD");

/// A caller-chosen 64-bit value naming what lies after a segment's header.
///
/// Openers pass the tag they expect and get [`SegmentOpenError::TagMismatch`] for anything else,
/// so a queue is never opened as a lock. Build one from a name with [`TypeTag::from_name`]
/// (a 64-bit FNV-1a hash, usable in `const`), and put a version in the name when the layout
/// behind it changes.
///
/// # Names in errors
///
/// A tag is only a hash, so its `Display` (and so `TagMismatch`'s) shows the name only where
/// this process knows it: tags built with [`TypeTag::named`] (the same hash as `from_name`, and
/// the name is recorded) and the tags of this workspace's crates (queue, pipe, pool), which are
/// always known. Any other tag shows as hex.
///
/// [`SegmentOpenError::TagMismatch`]: crate::SegmentOpenError::TagMismatch
///
/// ```
/// use ipc_shm::TypeTag;
/// const QUEUE_V1: TypeTag = TypeTag::from_name("my-app/queue/v1");
/// assert_ne!(QUEUE_V1, TypeTag::from_name("my-app/queue/v2"));
///
/// let state = TypeTag::named("my-app/state/v1"); // same hash, and errors can name it
/// assert_eq!(state, TypeTag::from_name("my-app/state/v1"));
/// assert_eq!(state.name(), Some("my-app/state/v1"));
/// assert_eq!(state.to_string(), "type tag \"my-app/state/v1\" (0x79e82cc93d7cf671)");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TypeTag(pub u64);

impl TypeTag {
    /// The tag of a segment whose creator did not choose one.
    pub const UNTYPED: TypeTag = TypeTag(0);

    /// A tag derived from a name (64-bit FNV-1a; stable across builds and versions).
    pub const fn from_name(name: &str) -> TypeTag {
        let bytes = name.as_bytes();
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut i = 0;
        while i < bytes.len() {
            hash ^= bytes[i] as u64;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            i += 1;
        }
        TypeTag(hash)
    }

    /// [`TypeTag::from_name`], also recording the name in this process, so that a
    /// [`TagMismatch`](crate::SegmentOpenError::TagMismatch) involving the tag shows it. Not
    /// `const`: keep `from_name` for a `const` tag and call `named` with the same name once at
    /// start-up if you want it shown. Recording a name again changes nothing.
    pub fn named(name: &'static str) -> TypeTag {
        let tag = TypeTag::from_name(name);
        names::register(tag.0, name);
        tag
    }

    /// The name this tag was built from, if this process knows it (see
    /// [Names in errors](TypeTag#names-in-errors)); `None` for [`TypeTag::UNTYPED`] and for
    /// tags whose name was never recorded here.
    pub fn name(self) -> Option<&'static str> {
        names::lookup(self.0)
    }
}

impl fmt::Debug for TypeTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TypeTag({:#018x})", self.0)
    }
}

impl fmt::Display for TypeTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "type tag {name:?} ({:#018x})", self.0),
            None => write!(f, "type tag {:#018x}", self.0),
        }
    }
}

/// The names of tags this process knows, for error messages only (a peer supplies a hash,
/// never a name, so nothing it writes can choose what is shown beyond picking a known tag).
mod names {
    use std::collections::BTreeMap;
    use std::sync::{Mutex, TryLockError};

    /// The tag names of this workspace's crates, known in every process without registration.
    /// A crate that adds or versions a tag adds its name here (ipc-tests checks the queue's).
    const WORKSPACE: &[&str] = &[
        "ipc-queue/Queue/v2",
        "ipc-queue/Queue/v1",
        "ipc-pipe/v2",
        "ipc-pipe/v1",
        "pool/worker-slot/v1",
    ];

    /// How often a lookup tries the lock before it gives up on the name.
    const LOOKUP_TRIES: u32 = 1000;

    /// Names recorded by `TypeTag::named`, by hash.
    static REGISTERED: Mutex<BTreeMap<u64, &'static str>> = Mutex::new(BTreeMap::new());

    pub(super) fn register(hash: u64, name: &'static str) {
        let mut names = REGISTERED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        names.entry(hash).or_insert(name);
    }

    pub(super) fn lookup(hash: u64) -> Option<&'static str> {
        if let Some(name) = WORKSPACE
            .iter()
            .copied()
            .find(|n| super::TypeTag::from_name(n).0 == hash)
        {
            return Some(name);
        }
        // `try_lock`, a bounded number of times: formatting an error never blocks for long,
        // even in a child forked while another thread held the lock (then the name is missing
        // from that one message), but a thread registering a name at the same moment only
        // delays the lookup for the few instructions it holds the lock.
        for _ in 0..LOOKUP_TRIES {
            match REGISTERED.try_lock() {
                Ok(names) => return names.get(&hash).copied(),
                Err(TryLockError::Poisoned(p)) => return p.into_inner().get(&hash).copied(),
                Err(TryLockError::WouldBlock) => std::thread::yield_now(),
            }
        }
        None
    }
}

/// The first bytes of every segment.
///
/// It lives in shared memory, so it holds only atomics; read it through [`Segment::header`]
/// (already validated) rather than trusting a raw mapping.
///
/// [`Segment::header`]: crate::Segment::header
#[repr(C, align(64))]
#[derive(Debug)]
pub struct SegmentHeader {
    magic: AtomicU64,
    layout_version: AtomicU32,
    state: AtomicU32,
    total_size: AtomicU64,
    type_tag: AtomicU64,
    payload_offset: AtomicU32,
    creator_pid: AtomicU32,
    _reserved: [AtomicU64; 3],
}

const _: () = assert!(std::mem::size_of::<SegmentHeader>() == 64);
const _: () = assert!(std::mem::size_of::<SegmentHeader>() <= PAYLOAD_OFFSET);

/// What a header says, read once after initialisation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeaderSnapshot {
    pub(crate) magic: u64,
    pub(crate) layout_version: u32,
    pub(crate) total_size: u64,
    pub(crate) type_tag: TypeTag,
    pub(crate) payload_offset: u32,
}

impl SegmentHeader {
    /// Writes every field but `state`; [`SegmentHeader::publish`] finishes.
    pub(crate) fn write(&self, total_size: u64, tag: TypeTag, creator_pid: u32) {
        self.magic.store(MAGIC, Ordering::Relaxed);
        self.layout_version.store(LAYOUT_VERSION, Ordering::Relaxed);
        self.total_size.store(total_size, Ordering::Relaxed);
        self.type_tag.store(tag.0, Ordering::Relaxed);
        self.payload_offset
            .store(PAYLOAD_OFFSET as u32, Ordering::Relaxed);
        self.creator_pid.store(creator_pid, Ordering::Relaxed);
    }

    /// Publishes the header and payload: openers may now use the segment.
    pub(crate) fn publish(&self) {
        self.state.store(STATE_READY, Ordering::Release);
    }

    /// Marks the segment as abandoned so openers fail fast.
    pub(crate) fn abandon(&self) {
        self.state.store(STATE_ABANDONED, Ordering::Release);
    }

    pub(crate) fn state(&self) -> u32 {
        self.state.load(Ordering::Acquire)
    }

    pub(crate) fn raw_magic(&self) -> u64 {
        self.magic.load(Ordering::Relaxed)
    }

    pub(crate) fn snapshot(&self) -> HeaderSnapshot {
        HeaderSnapshot {
            magic: self.magic.load(Ordering::Relaxed),
            layout_version: self.layout_version.load(Ordering::Relaxed),
            total_size: self.total_size.load(Ordering::Relaxed),
            type_tag: TypeTag(self.type_tag.load(Ordering::Relaxed)),
            payload_offset: self.payload_offset.load(Ordering::Relaxed),
        }
    }

    /// The tag the creator chose.
    pub fn type_tag(&self) -> TypeTag {
        TypeTag(self.type_tag.load(Ordering::Relaxed))
    }

    /// The object's total size in bytes, header included, as the creator recorded it.
    pub fn total_size(&self) -> u64 {
        self.total_size.load(Ordering::Relaxed)
    }

    /// The layout version the creator wrote.
    pub fn layout_version(&self) -> u32 {
        self.layout_version.load(Ordering::Relaxed)
    }

    /// The process id of the creator (informational: the process may be gone, the id reused).
    pub fn creator_pid(&self) -> u32 {
        self.creator_pid.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Segment, SegmentBuilder, SegmentOpenError};

    #[test]
    fn named_tags_show_their_names_and_others_show_hex() {
        let tag = TypeTag::named("ipc-shm/tests/named/v1");
        assert_eq!(tag, TypeTag::from_name("ipc-shm/tests/named/v1"));
        assert_eq!(tag.name(), Some("ipc-shm/tests/named/v1"));
        assert_eq!(
            tag.to_string(),
            format!("type tag \"ipc-shm/tests/named/v1\" ({:#018x})", tag.0)
        );
        let anonymous = TypeTag::from_name("ipc-shm/tests/never-named");
        assert_eq!(anonymous.name(), None);
        assert_eq!(
            anonymous.to_string(),
            format!("type tag {:#018x}", anonymous.0)
        );
        assert_eq!(TypeTag::UNTYPED.name(), None);
        // The workspace's own tags are known without registration.
        assert_eq!(
            TypeTag::from_name("ipc-queue/Queue/v2").name(),
            Some("ipc-queue/Queue/v2")
        );
    }

    /// Issue 11: `TagMismatch` showed two hashes; it names the tags this process knows.
    #[test]
    fn tag_mismatch_names_both_tags_when_known() {
        let expected = TypeTag::named("ipc-shm/tests/expected/v1");
        let queue = TypeTag::from_name("ipc-queue/Queue/v2");
        let segment = SegmentBuilder::new(64).type_tag(queue).create().unwrap();
        let fd = segment.fd().try_clone_to_owned().unwrap();
        let err = Segment::from_fd(fd, expected).unwrap_err();
        assert!(
            matches!(err, SegmentOpenError::TagMismatch { .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "segment holds type tag \"ipc-queue/Queue/v2\" ({:#018x}), expected type tag \
                 \"ipc-shm/tests/expected/v1\" ({:#018x})",
                queue.0, expected.0
            )
        );
        // A tag nobody named here is still shown, as hex.
        let stranger = TypeTag::from_name("ipc-shm/tests/stranger");
        let fd = segment.fd().try_clone_to_owned().unwrap();
        let err = Segment::from_fd(fd, stranger).unwrap_err();
        assert!(
            err.to_string()
                .ends_with(&format!("expected type tag {:#018x}", stranger.0))
        );
    }
}
