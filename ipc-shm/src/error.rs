//! The error enums of this crate, one per operation.

use std::io;
use std::time::Duration;

use crate::header::TypeTag;

/// A segment name that cannot be used.
///
/// Names are given without the leading `/` that POSIX wants; this crate adds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("shared-memory name is empty")]
    Empty,
    /// The name contains a `/` (POSIX shm names are a single path component).
    #[error("shared-memory name {name:?} contains '/'")]
    ContainsSlash {
        /// The rejected name.
        name: String,
    },
    /// The name contains a NUL byte.
    #[error("shared-memory name {name:?} contains a NUL byte")]
    ContainsNul {
        /// The rejected name.
        name: String,
    },
    /// The name is `.` or `..`: a directory, not an object (it would resolve to `/dev/shm` itself
    /// or to its parent).
    #[error("shared-memory name {name:?} names a directory, not an object")]
    Reserved {
        /// The rejected name.
        name: String,
    },
    /// The name is longer than the system allows.
    #[error("shared-memory name is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The longest name the system accepts.
        max: usize,
    },
}

/// Why [`SegmentBuilder::create`](crate::SegmentBuilder::create) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentCreateError {
    /// The name is not usable.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// A segment of zero bytes was asked for.
    #[error("a segment's payload size must be at least 1 byte")]
    ZeroSize,
    /// The size overflows what a mapping can hold.
    #[error("a payload of {requested} bytes is larger than a mapping can be ({max} bytes)")]
    TooLarge {
        /// The payload size asked for.
        requested: usize,
        /// The largest payload this crate accepts.
        max: usize,
    },
    /// The system refused to size or map the segment (out of memory, over a limit).
    #[error("the system refused a segment of {size} bytes")]
    SizeRefused {
        /// The total size (header included) that was refused.
        size: usize,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A segment of that name exists already.
    #[error("a shared-memory segment named {name:?} already exists")]
    AlreadyExists {
        /// The name.
        name: String,
    },
    /// The caller may not create that name.
    #[error("permission denied creating shared-memory segment {name:?}")]
    PermissionDenied {
        /// The name.
        name: String,
    },
    /// The creator's initialisation closure failed; the segment was removed again.
    #[error("initialising the segment failed: {reason}")]
    InitFailed {
        /// What the closure reported.
        reason: String,
    },
    /// Any other failure of a system call.
    #[error("{op} failed")]
    Os {
        /// The call that failed.
        op: &'static str,
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

/// Why opening an existing segment failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentOpenError {
    /// The name is not usable.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// No segment has that name.
    #[error("no shared-memory segment named {name:?}")]
    NotFound {
        /// The name.
        name: String,
    },
    /// The caller may not open it.
    #[error("permission denied opening shared-memory segment {name:?}")]
    PermissionDenied {
        /// The name.
        name: String,
    },
    /// The object (opened by name) belongs to another user: possibly planted in the
    /// world-writable `/dev/shm` before the real creator ran. Opt in to sharing between users
    /// with [`OpenOptions::allow_other_owners`](crate::OpenOptions::allow_other_owners).
    #[error("the shared-memory object belongs to uid {uid}, not to this process's uid {expected}")]
    ForeignOwner {
        /// The object's owner.
        uid: u32,
        /// This process's effective uid.
        expected: u32,
    },
    /// The object (opened by name) is writable by its group or by others, so a process of
    /// another user may have written (or may still write) it. Opt in with
    /// [`OpenOptions::allow_group_write`](crate::OpenOptions::allow_group_write) or
    /// [`OpenOptions::allow_world_write`](crate::OpenOptions::allow_world_write).
    #[error("the shared-memory object's mode {mode:#05o} lets other users write it")]
    TooPermissive {
        /// The object's permission bits.
        mode: u32,
    },
    /// The object is smaller than a header: truncated, or not a segment of this crate.
    #[error("the object is {actual} bytes, smaller than the {minimum}-byte segment header")]
    TooSmall {
        /// The object's real size (fstat).
        actual: u64,
        /// The smallest valid size.
        minimum: u64,
    },
    /// The header does not start with this crate's magic number: a foreign or corrupted object.
    #[error("not a segment of this crate (magic {found:#018x})")]
    BadMagic {
        /// The magic number found.
        found: u64,
    },
    /// The segment was made by an incompatible version of this crate.
    #[error("segment layout version {found}, this crate understands {expected}")]
    VersionMismatch {
        /// The version in the header.
        found: u32,
        /// The version this crate writes.
        expected: u32,
    },
    /// The header's recorded size disagrees with the object's real size (truncated or corrupted).
    #[error("the header says {header} bytes but the object has {actual}")]
    SizeMismatch {
        /// The size the header records.
        header: u64,
        /// The object's real size (fstat).
        actual: u64,
    },
    /// The segment holds another kind of object than the caller expects.
    #[error("segment holds {found}, expected {expected}")]
    TagMismatch {
        /// The tag in the header.
        found: TypeTag,
        /// The tag the caller asked for.
        expected: TypeTag,
    },
    /// The creator did not finish initialising the segment in time.
    #[error("the segment was not initialised within {waited:?}")]
    NotInitialized {
        /// How long the opener waited.
        waited: Duration,
    },
    /// The creator gave up initialising the segment.
    #[error("the segment's creator abandoned its initialisation")]
    Abandoned,
    /// The payload is smaller than the caller needs.
    #[error("the payload is {actual} bytes, the caller needs at least {needed}")]
    PayloadTooSmall {
        /// The payload's size.
        actual: usize,
        /// The size asked for with `OpenOptions::min_len`.
        needed: usize,
    },
    /// An inherited descriptor could not be taken.
    #[error(transparent)]
    Inherit(#[from] InheritError),
    /// Any other failure of a system call.
    #[error("{op} failed")]
    Os {
        /// The call that failed.
        op: &'static str,
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

/// Why an object could not be placed in, or found in, a segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// The type needs a larger alignment than a segment's payload guarantees.
    #[error("alignment {align} exceeds the payload alignment {max}")]
    AlignTooLarge {
        /// The alignment asked for.
        align: usize,
        /// The payload's alignment.
        max: usize,
    },
    /// The layout's size overflows `usize`.
    #[error("the layout's size overflows")]
    Overflow,
    /// The offset and length lie (partly) outside the payload.
    #[error("bytes {offset}..{offset}+{len} lie outside the {payload}-byte payload")]
    OutOfBounds {
        /// Start of the region.
        offset: usize,
        /// Its length in bytes.
        len: usize,
        /// The payload's length.
        payload: usize,
    },
    /// The offset is not a multiple of the type's alignment.
    #[error("offset {offset} is not aligned to {align}")]
    Misaligned {
        /// The offset.
        offset: usize,
        /// The alignment required.
        align: usize,
    },
}

/// Why an inherited descriptor could not be taken over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InheritError {
    /// The environment variable is not set: this process was not handed a descriptor.
    #[error("environment variable {key} is not set")]
    Missing {
        /// The variable.
        key: String,
    },
    /// The variable does not hold a descriptor number.
    #[error("environment variable {key}={value:?} is not a descriptor number")]
    Malformed {
        /// The variable.
        key: String,
        /// Its value.
        value: String,
    },
    /// The descriptor is not open in this process.
    #[error("descriptor {fd} named by {key} is not open")]
    NotOpen {
        /// The variable.
        key: String,
        /// The descriptor number.
        fd: i32,
    },
    /// The descriptor was taken over already by an earlier call.
    #[error("descriptor {fd} named by {key} was already taken")]
    AlreadyTaken {
        /// The variable.
        key: String,
        /// The descriptor number.
        fd: i32,
    },
}

/// Why a ring ([`ShmRing`](crate::ShmRing), [`HeapRing`](crate::HeapRing)) could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// The capacity is zero or not a power of two (positions are reduced with a mask).
    #[error("a ring's capacity must be a non-zero power of two, not {cap}")]
    NotPowerOfTwo {
        /// The capacity asked for.
        cap: usize,
    },
    /// The ring's bytes would lie (partly) outside the segment's payload.
    #[error("a ring of {cap} bytes at offset {offset} does not fit in the {payload}-byte payload")]
    OutOfBounds {
        /// The ring's offset in the payload.
        offset: usize,
        /// Its capacity.
        cap: usize,
        /// The payload's length.
        payload: usize,
    },
}
