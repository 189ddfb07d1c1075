//! Placing several objects in one segment at aligned offsets.
//!
//! A [`Layout`] is a bump allocator over the payload: each [`Layout::add`] rounds the running size
//! up to the type's alignment and returns a typed [`Offset`]. The offsets are plain numbers, the
//! same in every process, and can be stored in shared memory themselves; they are bounds- and
//! alignment-checked every time they are turned into a reference ([`Segment::get`]).
//!
//! [`Segment::get`]: crate::Segment::get

use std::fmt;
use std::marker::PhantomData;
use std::mem::{align_of, size_of};

use crate::error::LayoutError;
use crate::header::PAYLOAD_ALIGN;
use crate::shm_safe::ShmSafe;

/// The offset of a `T` from the start of a segment's payload.
///
/// ```
/// use std::sync::atomic::AtomicU32;
/// use ipc_shm::{Layout, SegmentBuilder};
///
/// let mut layout = Layout::new();
/// let flag = layout.add::<AtomicU32>()?;
/// let segment = SegmentBuilder::new(layout.size()).create()?;
/// let flag: &AtomicU32 = segment.get(flag)?;
/// # let _ = flag;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Offset<T> {
    offset: usize,
    _type: PhantomData<fn() -> T>,
}

impl<T> Offset<T> {
    /// An offset from a raw number (for example one read from shared memory). Nothing is checked
    /// until it is used with [`Segment::get`](crate::Segment::get).
    pub const fn from_raw(offset: usize) -> Self {
        Offset {
            offset,
            _type: PhantomData,
        }
    }

    /// The offset in bytes.
    pub const fn get(self) -> usize {
        self.offset
    }
}

impl<T> Clone for Offset<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Offset<T> {}
impl<T> PartialEq for Offset<T> {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset
    }
}
impl<T> Eq for Offset<T> {}
impl<T> fmt::Debug for Offset<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Offset<{}>({})", std::any::type_name::<T>(), self.offset)
    }
}

/// The offset and length of a run of `T`s in a segment's payload.
pub struct SliceOffset<T> {
    offset: usize,
    len: usize,
    _type: PhantomData<fn() -> T>,
}

impl<T> SliceOffset<T> {
    /// A slice offset from raw numbers; checked when used with
    /// [`Segment::slice`](crate::Segment::slice).
    pub const fn from_raw(offset: usize, len: usize) -> Self {
        SliceOffset {
            offset,
            len,
            _type: PhantomData,
        }
    }

    /// The offset in bytes.
    pub const fn offset(self) -> usize {
        self.offset
    }

    /// The number of elements.
    pub const fn len(self) -> usize {
        self.len
    }

    /// Whether it has no elements.
    pub const fn is_empty(self) -> bool {
        self.len == 0
    }
}

impl<T> Clone for SliceOffset<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SliceOffset<T> {}
impl<T> PartialEq for SliceOffset<T> {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset && self.len == other.len
    }
}
impl<T> Eq for SliceOffset<T> {}
impl<T> fmt::Debug for SliceOffset<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SliceOffset<{}>({}, len {})",
            std::any::type_name::<T>(),
            self.offset,
            self.len
        )
    }
}

/// Lays out several objects in one payload.
///
/// ```
/// use std::sync::atomic::{AtomicU32, AtomicU64};
/// use ipc_shm::{Layout, SegmentBuilder};
///
/// let mut layout = Layout::new();
/// let head = layout.add::<AtomicU64>()?;
/// let slots = layout.add_slice::<AtomicU32>(16)?;
/// assert_eq!(slots.offset() % 4, 0);
/// let segment = SegmentBuilder::new(layout.size()).create()?;
/// assert_eq!(segment.slice(slots)?.len(), 16);
/// # let _ = head;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Layout {
    size: usize,
}

impl Layout {
    /// An empty layout.
    pub const fn new() -> Self {
        Layout { size: 0 }
    }

    /// Rounds the running size up to `align` (a power of two, at most [`PAYLOAD_ALIGN`]).
    pub fn align_to(&mut self, align: usize) -> Result<usize, LayoutError> {
        if align > PAYLOAD_ALIGN {
            return Err(LayoutError::AlignTooLarge {
                align,
                max: PAYLOAD_ALIGN,
            });
        }
        let align = align.max(1).next_power_of_two();
        self.size = self
            .size
            .checked_add(align - 1)
            .ok_or(LayoutError::Overflow)?
            & !(align - 1);
        Ok(self.size)
    }

    /// Reserves room for one `T` and returns its offset.
    pub fn add<T: ShmSafe>(&mut self) -> Result<Offset<T>, LayoutError> {
        let offset = self.reserve(align_of::<T>(), size_of::<T>())?;
        Ok(Offset::from_raw(offset))
    }

    /// Reserves room for `len` consecutive `T`s and returns their offset.
    pub fn add_slice<T: ShmSafe>(&mut self, len: usize) -> Result<SliceOffset<T>, LayoutError> {
        let bytes = size_of::<T>()
            .checked_mul(len)
            .ok_or(LayoutError::Overflow)?;
        let offset = self.reserve(align_of::<T>(), bytes)?;
        Ok(SliceOffset::from_raw(offset, len))
    }

    /// Reserves `bytes` raw bytes at `align` and returns their offset.
    pub fn reserve(&mut self, align: usize, bytes: usize) -> Result<usize, LayoutError> {
        let offset = self.align_to(align)?;
        self.size = offset.checked_add(bytes).ok_or(LayoutError::Overflow)?;
        Ok(offset)
    }

    /// The payload size needed so far (at least 1, since segments cannot be empty).
    pub fn size(&self) -> usize {
        self.size.max(1)
    }
}
