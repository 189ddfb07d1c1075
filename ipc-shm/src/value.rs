//! Owned typed views of a segment, like Python's `multiprocessing.Value` and `Array`.
//!
//! A view keeps its segment alive (`Arc<Segment>`) and checks its offset once, at construction,
//! so dereferencing it is free. The value itself is shared: give it an atomic type (lock-free
//! access, as `Value(..., lock=False)` but without the races) or, for compound data, a type that
//! carries its own lock, such as `ipc_sync::Mutex<T>` (Python's default `lock=True`).

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::error::{LayoutError, SegmentCreateError};
use crate::header::TypeTag;
use crate::layout::{Layout, Offset, SliceOffset};
use crate::segment::{Segment, SegmentBuilder};
use crate::shm_safe::ShmSafe;

/// One `T` in shared memory.
///
/// ```
/// use std::sync::atomic::{AtomicI64, Ordering};
/// use ipc_shm::SharedValue;
///
/// let total = SharedValue::<AtomicI64>::new_anonymous()?;
/// total.fetch_add(5, Ordering::Relaxed); // a forked child would see and update the same value
/// assert_eq!(total.load(Ordering::Relaxed), 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SharedValue<T: ShmSafe> {
    segment: Arc<Segment>,
    offset: Offset<T>,
}

impl<T: ShmSafe> SharedValue<T> {
    /// A view of the `T` at `offset` in `segment`.
    pub fn new(segment: Arc<Segment>, offset: Offset<T>) -> Result<Self, LayoutError> {
        segment.get(offset)?;
        Ok(SharedValue { segment, offset })
    }

    /// A new anonymous segment holding one zeroed `T` (share it with children by `fork`, or
    /// pass [`SharedValue::segment`]'s descriptor).
    pub fn new_anonymous() -> Result<Self, SegmentCreateError> {
        let mut layout = Layout::new();
        let offset = layout.add::<T>().map_err(layout_to_create)?;
        let segment = SegmentBuilder::new(layout.size())
            .type_tag(TypeTag::named(std::any::type_name::<T>()))
            .create()?;
        SharedValue::new(Arc::new(segment), offset).map_err(layout_to_create)
    }

    /// The segment the value lives in.
    pub fn segment(&self) -> &Arc<Segment> {
        &self.segment
    }

    /// Where the value is in its segment.
    pub fn offset(&self) -> Offset<T> {
        self.offset
    }
}

/// Another handle on the same value (the segment is shared, not copied): for a thread, or to
/// hand to another process while keeping this one (see [`crate::transfer`]).
impl<T: ShmSafe> Clone for SharedValue<T> {
    fn clone(&self) -> Self {
        SharedValue {
            segment: Arc::clone(&self.segment),
            offset: self.offset,
        }
    }
}

impl<T: ShmSafe> Deref for SharedValue<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // Re-checking is a few compares and keeps this module free of unsafe code.
        self.segment
            .get(self.offset)
            .unwrap_or_else(|_| unreachable!("offset was checked at construction"))
    }
}

impl<T: ShmSafe + fmt::Debug> fmt::Debug for SharedValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedValue").field(&**self).finish()
    }
}

/// A run of `T`s in shared memory.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use ipc_shm::SharedSlice;
///
/// let counts = SharedSlice::<AtomicU32>::new_anonymous(8)?;
/// counts[3].store(7, Ordering::Relaxed);
/// assert_eq!(counts.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u32>(), 7);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SharedSlice<T: ShmSafe> {
    segment: Arc<Segment>,
    offset: SliceOffset<T>,
}

impl<T: ShmSafe> SharedSlice<T> {
    /// A view of the slice at `offset` in `segment`.
    pub fn new(segment: Arc<Segment>, offset: SliceOffset<T>) -> Result<Self, LayoutError> {
        segment.slice(offset)?;
        Ok(SharedSlice { segment, offset })
    }

    /// A new anonymous segment holding `len` zeroed `T`s.
    pub fn new_anonymous(len: usize) -> Result<Self, SegmentCreateError> {
        let mut layout = Layout::new();
        let offset = layout.add_slice::<T>(len).map_err(layout_to_create)?;
        let segment = SegmentBuilder::new(layout.size())
            .type_tag(TypeTag::named(std::any::type_name::<[T]>()))
            .create()?;
        SharedSlice::new(Arc::new(segment), offset).map_err(layout_to_create)
    }

    /// The segment the slice lives in.
    pub fn segment(&self) -> &Arc<Segment> {
        &self.segment
    }

    /// Where the slice is in its segment.
    pub fn offset(&self) -> SliceOffset<T> {
        self.offset
    }
}

/// Another handle on the same slice (the segment is shared, not copied).
impl<T: ShmSafe> Clone for SharedSlice<T> {
    fn clone(&self) -> Self {
        SharedSlice {
            segment: Arc::clone(&self.segment),
            offset: self.offset,
        }
    }
}

impl<T: ShmSafe> Deref for SharedSlice<T> {
    type Target = [T];

    #[inline]
    fn deref(&self) -> &[T] {
        self.segment
            .slice(self.offset)
            .unwrap_or_else(|_| unreachable!("offset was checked at construction"))
    }
}

impl<T: ShmSafe + fmt::Debug> fmt::Debug for SharedSlice<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedSlice").field(&&**self).finish()
    }
}

fn layout_to_create(e: LayoutError) -> SegmentCreateError {
    SegmentCreateError::TooLarge {
        requested: match e {
            LayoutError::OutOfBounds { len, .. } => len,
            _ => usize::MAX,
        },
        max: isize::MAX as usize,
    }
}
