//! [`ShmArena`] and [`ShmVec`]: large payloads that cross processes without being copied through
//! a channel. The bytes are written once into a block of a segment every process maps; only a
//! small [`ShmToken`] travels (through an `ipc-queue` `Queue`, an `ipc-pipe` `Connection`, a
//! pool task, any serde transport), and the receiver reads the block in place.
//!
//! ```
//! use ipc_sync::{ShmArena, ShmVec};
//!
//! // 8 blocks of 64 KiB in an anonymous segment (fork, or send the arena to a process first).
//! let arena = ShmArena::builder().block_size(64 << 10).blocks(8).create()?;
//! let mut v: ShmVec<u8> = arena.alloc(50_000)?; // waits for a free block
//! v.fill(7);
//! let token = v.into_token()?; // the bytes are final; the token is a few words
//! // ... the token travels, e.g. queue.put(&token) here and queue.get() in another process ...
//! let got: ShmVec<u8> = arena.adopt(token)?; // read in place, no copy
//! assert_eq!(got.len(), 50_000);
//! assert!(got.iter().all(|&b| b == 7));
//! drop(got); // the block is free again
//! assert_eq!(arena.counts().free, 8);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Ownership
//!
//! A block has one owner at a time (the state table is in [`arena`](crate::arena)): the
//! [`ShmVec`] that allocated it, then (after [`ShmVec::into_token`]) nobody while the token
//! travels, then the `ShmVec` that [`ShmArena::adopt`]ed the token. Only the owner reads and
//! writes the bytes; dropping it frees the block. A token is adopted once: a second adoption,
//! or one of a token whose block has been freed and reused since, fails with
//! [`AdoptError::NotSent`]. A `ShmVec` inherited through `fork` stays its parent's: the child may
//! read it while the parent keeps it, but cannot free or send it.
//!
//! # A participant's death
//!
//! A process killed while it owns blocks loses them only until an allocator finds no free block:
//! it then frees every block whose owner is dead (see [`arena`](crate::arena)). A token lost in
//! flight (a queue dropped unread, a receiver killed between receiving and adopting) keeps its
//! block ([`ShmArena::counts`] shows how many blocks travel) until [`ShmArena::reclaim_sent`]
//! is called where no token is in flight. Nobody ever gets a block another live handle uses,
//! and a token whose block was taken back fails to adopt.
//!
//! # Why not `&mut [T]`
//!
//! Shared memory is memory other processes can write, so no `&mut` is ever formed to it: a
//! `ShmVec` is written through [`fill`](ShmVec::fill), [`copy_from_slice`](ShmVec::copy_from_slice)
//! and [`set`](ShmVec::set), and read as a `&[T]` (`Deref`). Elements are `ShmSafe` (every bit
//! pattern is a valid value), so a fresh block's leftover bytes are valid, if meaningless.
#![allow(unsafe_code)] // Writing elements through the block's raw address: `write_elems`.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use ipc_shm::{
    Layout, LayoutError, Offset, Segment, SegmentBuilder, SegmentCreateError, SegmentOpenError,
    ShmSafe, SliceOffset, TypeTag,
};

use crate::arena::{AdoptFail, BlockCounts, BlockTable, Held};
use crate::eventcount::EventCount;
use crate::futex::Deadline;
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// The type tag of an arena's segment.
pub const ARENA_TAG: TypeTag = TypeTag::from_name("ipc-sync/ShmArena/v1");
const ARENA_MAGIC: u64 = u64::from_le_bytes(*b"shmarena");
/// Blocks start at multiples of this, and it bounds the alignment of an element type.
pub const BLOCK_ALIGN: usize = 128;
/// The largest block.
pub const MAX_BLOCK_SIZE: usize = 1 << 30;
/// The most blocks an arena may have.
pub const MAX_BLOCKS: usize = 1 << 20;

/// Why an arena could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArenaCreateError {
    /// A block size or count out of range.
    #[error("an arena needs {what} in 1..={max}, not {value}")]
    Invalid {
        /// What was out of range ("a block size", "a block count").
        what: &'static str,
        /// The value given.
        value: usize,
        /// The largest allowed.
        max: usize,
    },
    /// The segment could not be created.
    #[error("creating the arena's segment failed")]
    Segment(#[source] SegmentCreateError),
}

/// Why an arena could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArenaOpenError {
    /// The segment could not be opened (missing, foreign, of another type...).
    #[error("opening the arena's segment failed")]
    Segment(#[source] SegmentOpenError),
    /// The segment is an arena's, but its control block is inconsistent.
    #[error("the arena's {what} is corrupted ({value})")]
    Corrupted {
        /// Which field.
        what: &'static str,
        /// The value found.
        value: u64,
    },
}

/// Why no block was allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AllocError {
    /// `len` elements do not fit in one block.
    #[error("{len} elements of {elem} bytes do not fit in a block of {block} bytes")]
    TooLarge {
        /// The elements asked for.
        len: usize,
        /// The size of one.
        elem: usize,
        /// The arena's block size.
        block: usize,
    },
    /// The element type needs more alignment than blocks have.
    #[error("an element aligned to {align} bytes; blocks are aligned to {BLOCK_ALIGN}")]
    AlignTooLarge {
        /// The element type's alignment.
        align: usize,
    },
    /// Every block is in use (a `try_alloc`), or stayed so until the timeout.
    #[error("no free block in the arena")]
    NoFreeBlock,
}

/// Why a [`ShmVec`] could not become a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntoTokenError {
    /// This process does not own the block: the handle was inherited through `fork`, or the
    /// block was reclaimed (this process's pid was found dead: a pid namespace change).
    #[error("this process does not own the block (a handle inherited through fork?)")]
    NotOwner,
}

/// Why a token could not be adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdoptError {
    /// The token belongs to another arena.
    #[error("the token belongs to another arena")]
    OtherArena,
    /// The token was made for another element type.
    #[error("the token is for another element type")]
    TypeMismatch,
    /// The token names a block this arena does not have, or a length its blocks cannot hold.
    #[error("the token is out of the arena's range (block {index}, {len} elements)")]
    OutOfRange {
        /// The block index it names.
        index: u32,
        /// The length it names.
        len: u64,
    },
    /// The block is not travelling with that generation: the token was adopted already, or its
    /// block was freed and reused since.
    #[error("the token was adopted already, or its block was reused")]
    NotSent,
}

/// The fixed part of the control block: where each field is, for any block count.
struct Fields {
    magic: Offset<AtomicU64>,
    block_size: Offset<AtomicU64>,
    blocks: Offset<AtomicU64>,
    id: Offset<AtomicU64>,
    hint: Offset<AtomicU32>,
    freed: Offset<EventCount>,
    words: SliceOffset<AtomicU64>,
    data: usize,
    size: usize,
}

impl Fields {
    fn of(block_size: usize, blocks: usize) -> Result<Fields, LayoutError> {
        let mut l = Layout::new();
        let magic = l.add()?;
        let block_size_at = l.add()?;
        let blocks_at = l.add()?;
        let id = l.add()?;
        let hint = l.add()?;
        let freed = l.add()?;
        let words = l.add_slice(blocks)?;
        let data = l.reserve(
            BLOCK_ALIGN,
            block_size
                .checked_mul(blocks)
                .ok_or(LayoutError::Overflow)?,
        )?;
        Ok(Fields {
            magic,
            block_size: block_size_at,
            blocks: blocks_at,
            id,
            hint,
            freed,
            words,
            data,
            size: l.size(),
        })
    }
}

struct Inner {
    segment: Segment,
    fields: Fields,
    block_size: usize,
    id: u64,
}

impl Inner {
    fn table(&self) -> BlockTable<'_> {
        let f = &self.fields;
        // Bounds and alignment were checked against this mapping when the arena was created or
        // opened, and a mapping's length never changes.
        let words = self.segment.slice(f.words).expect("validated at open");
        let hint = self.segment.get(f.hint).expect("validated at open");
        let freed = self.segment.get(f.freed).expect("validated at open");
        BlockTable::new(words, hint, freed)
    }

    fn block_offset(&self, index: u32) -> usize {
        self.fields.data + index as usize * self.block_size
    }
}

/// A segment cut into equal blocks that processes allocate, fill, hand to each other as
/// [`ShmToken`]s and read in place as [`ShmVec`]s (see the [module docs](self)).
///
/// Cloning is cheap (one mapping per process). Another process gets the arena by `fork`, by
/// name ([`ShmArena::open`]), from a descriptor ([`ShmArena::from_fd`]), or inside a message
/// (feature `serde`: an `ipc-pipe` `Connection`, or a pool task or initializer argument).
#[derive(Clone)]
pub struct ShmArena {
    inner: Arc<Inner>,
}

impl fmt::Debug for ShmArena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmArena")
            .field("block_size", &self.inner.block_size)
            .field("blocks", &self.blocks())
            .field("counts", &self.counts())
            .finish()
    }
}

/// Options for a new [`ShmArena`]: block size, block count, name.
#[derive(Debug, Clone)]
pub struct ShmArenaBuilder {
    block_size: usize,
    blocks: usize,
    name: Option<String>,
}

impl Default for ShmArenaBuilder {
    fn default() -> Self {
        ShmArenaBuilder {
            block_size: 64 << 10,
            blocks: 64,
            name: None,
        }
    }
}

impl ShmArenaBuilder {
    /// The largest payload of one [`ShmVec`], in bytes (default 64 KiB; rounded up to a multiple
    /// of [`BLOCK_ALIGN`]; at most [`MAX_BLOCK_SIZE`]).
    pub fn block_size(mut self, bytes: usize) -> Self {
        self.block_size = bytes;
        self
    }

    /// How many blocks, that is how many `ShmVec`s and tokens may exist at once (default 64; at
    /// most [`MAX_BLOCKS`]).
    pub fn blocks(mut self, n: usize) -> Self {
        self.blocks = n;
        self
    }

    /// A named segment (opened elsewhere with [`ShmArena::open`]); anonymous (memfd) by default.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Creates the arena, every block free.
    pub fn create(self) -> Result<ShmArena, ArenaCreateError> {
        if self.block_size == 0 || self.block_size > MAX_BLOCK_SIZE {
            return Err(ArenaCreateError::Invalid {
                what: "a block size",
                value: self.block_size,
                max: MAX_BLOCK_SIZE,
            });
        }
        if self.blocks == 0 || self.blocks > MAX_BLOCKS {
            return Err(ArenaCreateError::Invalid {
                what: "a block count",
                value: self.blocks,
                max: MAX_BLOCKS,
            });
        }
        let block_size = self.block_size.next_multiple_of(BLOCK_ALIGN);
        // Cannot overflow (at most 2^30 x 2^20 bytes); a size the system refuses is the
        // segment's error below.
        let fields =
            Fields::of(block_size, self.blocks).map_err(|_| ArenaCreateError::Invalid {
                what: "a block size times block count",
                value: usize::MAX,
                max: MAX_BLOCK_SIZE,
            })?;
        let id = new_id();
        let mut builder = SegmentBuilder::new(fields.size).type_tag(ARENA_TAG);
        if let Some(name) = &self.name {
            builder = builder.name(name);
        }
        let segment = builder
            .create_with(|seg| {
                seg.get(fields.block_size)?
                    .store(block_size as u64, Ordering::Relaxed);
                seg.get(fields.blocks)?
                    .store(self.blocks as u64, Ordering::Relaxed);
                seg.get(fields.id)?.store(id, Ordering::Relaxed);
                seg.get(fields.magic)?.store(ARENA_MAGIC, Ordering::Release);
                Ok::<_, LayoutError>(())
            })
            .map_err(ArenaCreateError::Segment)?;
        Ok(ShmArena {
            inner: Arc::new(Inner {
                segment,
                fields,
                block_size,
                id,
            }),
        })
    }
}

/// An arena id that tokens of other arenas will not carry: the process, the time and a counter,
/// mixed (splitmix64).
fn new_id() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = nanos
        ^ (u64::from(ipc_shm::os::pid()) << 40)
        ^ COUNTER
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl ShmArena {
    /// Options for a new arena.
    pub fn builder() -> ShmArenaBuilder {
        ShmArenaBuilder::default()
    }

    /// Opens the arena a process created under `name`.
    pub fn open(name: &str) -> Result<ShmArena, ArenaOpenError> {
        Segment::open(name, ARENA_TAG)
            .map_err(ArenaOpenError::Segment)
            .and_then(ShmArena::from_segment)
    }

    /// Opens the arena whose segment `fd` is (a memfd handed over by `SCM_RIGHTS` or `exec`).
    pub fn from_fd(fd: OwnedFd) -> Result<ShmArena, ArenaOpenError> {
        Segment::from_fd(fd, ARENA_TAG)
            .map_err(ArenaOpenError::Segment)
            .and_then(ShmArena::from_segment)
    }

    /// Checks the control block of an arena's segment (everything read from it is bounded
    /// before use) and wraps it.
    pub fn from_segment(segment: Segment) -> Result<ShmArena, ArenaOpenError> {
        if segment.type_tag() != ARENA_TAG {
            return Err(ArenaOpenError::Corrupted {
                what: "type tag",
                value: segment.type_tag().0,
            });
        }
        let head = Fields::of(0, 0).map_err(|_| corrupted("layout", 0))?;
        let read = |at: Offset<AtomicU64>, what| {
            segment
                .get(at)
                .map(|w| w.load(Ordering::Acquire))
                .map_err(|_| corrupted(what, segment.len() as u64))
        };
        let magic = read(head.magic, "magic")?;
        if magic != ARENA_MAGIC {
            return Err(corrupted("magic", magic));
        }
        let block_size = read(head.block_size, "block size")?;
        if block_size == 0
            || block_size > MAX_BLOCK_SIZE as u64
            || !block_size.is_multiple_of(BLOCK_ALIGN as u64)
        {
            return Err(corrupted("block size", block_size));
        }
        let blocks = read(head.blocks, "block count")?;
        if blocks == 0 || blocks > MAX_BLOCKS as u64 {
            return Err(corrupted("block count", blocks));
        }
        let id = read(head.id, "id")?;
        let fields = Fields::of(block_size as usize, blocks as usize)
            .map_err(|_| corrupted("layout", blocks))?;
        if fields.size != segment.len() {
            return Err(corrupted("size", segment.len() as u64));
        }
        let arena = ShmArena {
            inner: Arc::new(Inner {
                segment,
                fields,
                block_size: block_size as usize,
                id,
            }),
        };
        // Every access `table` will make, checked once here.
        let f = &arena.inner.fields;
        let s = &arena.inner.segment;
        s.slice(f.words)
            .map_err(|_| corrupted("block table", blocks))?;
        s.get(f.hint).map_err(|_| corrupted("hint", 0))?;
        s.get(f.freed).map_err(|_| corrupted("wait word", 0))?;
        Ok(arena)
    }

    /// The segment (for its descriptor, or to hand it to a child).
    pub fn segment(&self) -> &Segment {
        &self.inner.segment
    }

    /// The size of one block in bytes.
    pub fn block_size(&self) -> usize {
        self.inner.block_size
    }

    /// The number of blocks.
    pub fn blocks(&self) -> usize {
        self.inner.table().len()
    }

    /// How many blocks are free, owned and travelling (a snapshot).
    pub fn counts(&self) -> BlockCounts {
        self.inner.table().counts()
    }

    /// Takes back every block whose token is travelling, and returns how many: for tokens that
    /// will never be adopted (a queue dropped unread, a receiver killed between receiving and
    /// adopting). Call it where you know no token is in flight (a quiescent point); one that was
    /// after all fails to adopt with [`AdoptError::NotSent`], and nothing else happens.
    ///
    /// ```
    /// let arena = ipc_sync::ShmArena::builder().block_size(4096).blocks(2).create()?;
    /// let lost = arena.alloc_copy(&[7u8; 100])?.into_token()?;
    /// assert_eq!(arena.counts().sent, 1);
    /// assert_eq!(arena.reclaim_sent(), 1);
    /// assert_eq!(arena.adopt(lost).unwrap_err(), ipc_sync::AdoptError::NotSent);
    /// assert_eq!(arena.counts().free, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reclaim_sent(&self) -> usize {
        self.inner.table().reclaim_sent()
    }

    /// A block for `len` elements, waiting as long as it takes for one to be free (a dead
    /// owner's blocks are reclaimed meanwhile). Its elements hold whatever the block's previous
    /// user left: write them with [`ShmVec::fill`] or [`ShmVec::copy_from_slice`].
    pub fn alloc<T: ShmSafe>(&self, len: usize) -> Result<ShmVec<T>, AllocError> {
        self.alloc_within(len, None)
    }

    /// A block for `len` elements if one is free right now, else
    /// [`AllocError::NoFreeBlock`]. No system call when a block is free; when none is, the
    /// blocks of dead owners are reclaimed first (procfs reads), as [`alloc`](ShmArena::alloc)
    /// does.
    pub fn try_alloc<T: ShmSafe>(&self, len: usize) -> Result<ShmVec<T>, AllocError> {
        self.check::<T>(len)?;
        let table = self.inner.table();
        let me = ipc_shm::os::pid();
        let held = table
            .try_alloc(me)
            .or_else(|| {
                let alive = |pid| crate::owner::process_alive(pid, 0);
                (table.reclaim(me, &alive) > 0)
                    .then(|| table.try_alloc(me))
                    .flatten()
            })
            .ok_or(AllocError::NoFreeBlock)?;
        Ok(self.vec(held, len))
    }

    /// A block for `len` elements, waiting at most `timeout` ([`AllocError::NoFreeBlock`] then).
    pub fn alloc_timeout<T: ShmSafe>(
        &self,
        len: usize,
        timeout: Duration,
    ) -> Result<ShmVec<T>, AllocError> {
        self.alloc_within(len, Some(Deadline::after(timeout)))
    }

    /// A block holding a copy of `src`, waiting for a free block as [`alloc`](ShmArena::alloc)
    /// does: the one copy a payload needs on its way to another process.
    ///
    /// ```
    /// let arena = ipc_sync::ShmArena::builder().block_size(4096).blocks(2).create()?;
    /// let frame = arena.alloc_copy(&[1u32, 2, 3])?;
    /// assert_eq!(&frame[..], &[1, 2, 3]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn alloc_copy<T: ShmSafe + Copy>(&self, src: &[T]) -> Result<ShmVec<T>, AllocError> {
        let mut v = self.alloc(src.len())?;
        v.copy_from_slice(src);
        Ok(v)
    }

    fn alloc_within<T: ShmSafe>(
        &self,
        len: usize,
        deadline: Option<Deadline>,
    ) -> Result<ShmVec<T>, AllocError> {
        self.check::<T>(len)?;
        let held = self
            .inner
            .table()
            .alloc(ipc_shm::os::pid(), deadline, |pid| {
                crate::owner::process_alive(pid, 0)
            })
            .ok_or(AllocError::NoFreeBlock)?;
        Ok(self.vec(held, len))
    }

    fn check<T>(&self, len: usize) -> Result<(), AllocError> {
        if align_of::<T>() > BLOCK_ALIGN {
            return Err(AllocError::AlignTooLarge {
                align: align_of::<T>(),
            });
        }
        if len
            .checked_mul(size_of::<T>())
            .is_none_or(|bytes| bytes > self.inner.block_size)
        {
            return Err(AllocError::TooLarge {
                len,
                elem: size_of::<T>(),
                block: self.inner.block_size,
            });
        }
        Ok(())
    }

    fn vec<T: ShmSafe>(&self, held: Held, len: usize) -> ShmVec<T> {
        ShmVec {
            arena: self.clone(),
            held,
            len,
            owned: true,
            _elem: PhantomData,
        }
    }

    /// Takes the block a token names: the `ShmVec` that was sent, now owned by this process.
    pub fn adopt<T: ShmSafe>(&self, token: ShmToken<T>) -> Result<ShmVec<T>, AdoptError> {
        if token.arena != self.inner.id {
            return Err(AdoptError::OtherArena);
        }
        if token.elem != elem_check::<T>() {
            return Err(AdoptError::TypeMismatch);
        }
        let out_of_range = AdoptError::OutOfRange {
            index: token.index,
            len: token.len,
        };
        let len = usize::try_from(token.len).map_err(|_| out_of_range)?;
        self.check::<T>(len).map_err(|_| out_of_range)?;
        let held = self
            .inner
            .table()
            .adopt(token.index, token.generation, ipc_shm::os::pid())
            .map_err(|e| match e {
                AdoptFail::OutOfRange => out_of_range,
                AdoptFail::NotSent => AdoptError::NotSent,
            })?;
        Ok(self.vec(held, len))
    }
}

fn corrupted(what: &'static str, value: u64) -> ArenaOpenError {
    ArenaOpenError::Corrupted { what, value }
}

/// The size, alignment and name of `T`, hashed: a token for another element type is refused.
fn elem_check<T>() -> u64 {
    TypeTag::from_name(std::any::type_name::<T>()).0 ^ ((size_of::<T>() as u64) << 48)
}

/// `len` elements of `T` in a block of a [`ShmArena`], owned by this handle (see the
/// [module docs](self)). Reads as a `&[T]`; written with [`fill`](ShmVec::fill),
/// [`copy_from_slice`](ShmVec::copy_from_slice) and [`set`](ShmVec::set); sent as a
/// [`ShmToken`] ([`into_token`](ShmVec::into_token)). Dropping it frees the block.
pub struct ShmVec<T: ShmSafe> {
    arena: ShmArena,
    held: Held,
    len: usize,
    /// Cleared by `into_token`: the block travels, and dropping this handle leaves it alone.
    owned: bool,
    _elem: PhantomData<T>,
}

impl<T: ShmSafe> ShmVec<T> {
    /// The arena the block belongs to.
    pub fn arena(&self) -> &ShmArena {
        &self.arena
    }

    /// Sets every element to `value`.
    pub fn fill(&mut self, value: T)
    where
        T: Copy,
    {
        let dst = self.elems_ptr();
        for i in 0..self.len {
            // SAFETY: `ptr::write(dst.add(i), v)` needs `dst.add(i)` in bounds of one allocated
            // object and valid for an aligned write of one `T`: `dst` is the block's first
            // element, valid and aligned for `len` elements (see `elems_ptr`), and `i < len`.
            // No `&mut` is formed to the shared bytes; `T: Copy` has no drop to skip.
            unsafe { dst.add(i).write(value) };
        }
    }

    /// Copies `src` into the elements.
    ///
    /// # Panics
    ///
    /// If `src` is not exactly `self.len()` elements long (as `slice::copy_from_slice`).
    pub fn copy_from_slice(&mut self, src: &[T])
    where
        T: Copy,
    {
        assert_eq!(
            src.len(),
            self.len,
            "ShmVec::copy_from_slice: source and destination lengths differ"
        );
        self.write_elems(0, src);
    }

    /// Sets element `index` to `value`.
    ///
    /// # Panics
    ///
    /// If `index` is out of bounds (as indexing a slice).
    pub fn set(&mut self, index: usize, value: T)
    where
        T: Copy,
    {
        assert!(
            index < self.len,
            "ShmVec::set: index {index} out of bounds (len {})",
            self.len
        );
        self.write_elems(index, std::slice::from_ref(&value));
    }

    /// The address of the block's first element: valid for reads and writes of `len` elements
    /// and aligned for `T`. The block lies inside the mapping (the layout was checked against
    /// the segment's length at create/open, the index against the block count by the table) and
    /// `len * size_of::<T>() <= block_size` (checked at alloc/adopt); blocks start at multiples
    /// of `BLOCK_ALIGN` from a `PAYLOAD_ALIGN`-aligned payload, and `align_of::<T>() <=
    /// BLOCK_ALIGN` (checked at alloc/adopt). By the block protocol no other process accesses
    /// the bytes while this handle owns the block; `T: ShmSafe` accepts any bytes.
    fn elems_ptr(&mut self) -> *mut T {
        let offset = self.arena.inner.block_offset(self.held.index);
        self.arena
            .inner
            .segment
            .as_ptr()
            .wrapping_add(offset)
            .cast::<T>()
    }

    /// Copies `src` to elements `at..at + src.len()` (checked by the callers).
    fn write_elems(&mut self, at: usize, src: &[T])
    where
        T: Copy,
    {
        debug_assert!(at + src.len() <= self.len);
        let dst = self.elems_ptr();
        // SAFETY: `copy_nonoverlapping(src, dst, n)` needs (1) `src` valid for reads of `n`
        // elements: it is a slice of `n`; (2) `dst + at` valid and aligned for writes of `n`
        // elements: `elems_ptr` is, for `len` elements, and `at + n <= len`; (3) no overlap:
        // `src` cannot be this block (a `&[T]` of it cannot exist while we hold `&mut self`).
        // No `&mut` is formed to the shared bytes; `T: Copy` has no drop.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.add(at), src.len()) };
    }

    /// Makes the block's bytes final and this handle a token to send (see [`ShmArena::adopt`]).
    /// Fails, handing nothing back, only for a handle this process does not own (inherited
    /// through `fork`): the handle is then dropped, which leaves the block to its owner.
    pub fn into_token(self) -> Result<ShmToken<T>, IntoTokenError> {
        let sent = self.arena.inner.table().send(self.held, ipc_shm::os::pid());
        if !sent {
            return Err(IntoTokenError::NotOwner);
        }
        let token = ShmToken {
            arena: self.arena.inner.id,
            index: self.held.index,
            generation: self.held.generation,
            len: self.len as u64,
            elem: elem_check::<T>(),
            _elem: PhantomData,
        };
        // The block is travelling now: this handle must not free it.
        let mut this = self;
        this.owned = false;
        Ok(token)
    }
}

impl<T: ShmSafe> Deref for ShmVec<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        let offset = self.arena.inner.block_offset(self.held.index);
        // Inside the mapping and aligned, as `write_elems` says; `Segment::slice` checks it again.
        self.arena
            .inner
            .segment
            .slice(SliceOffset::from_raw(offset, self.len))
            .expect("a block lies inside its arena")
    }
}

impl<T: ShmSafe> Drop for ShmVec<T> {
    fn drop(&mut self) {
        if self.owned {
            self.arena.inner.table().free(self.held, ipc_shm::os::pid());
        }
    }
}

impl<T: ShmSafe + fmt::Debug> fmt::Debug for ShmVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmVec")
            .field("block", &self.held.index)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// A [`ShmVec`] in transit: which block of which arena, its generation and length. Plain data
/// (serde, feature `serde`), a few words long, so any transport carries it; the receiver turns
/// it back into a `ShmVec` with [`ShmArena::adopt`]. A token that is never adopted keeps its
/// block (see the [module docs](self)).
#[must_use = "a token that is never adopted keeps its block until the arena is recreated"]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(bound = ""))]
pub struct ShmToken<T> {
    arena: u64,
    index: u32,
    generation: u32,
    len: u64,
    elem: u64,
    #[cfg_attr(feature = "serde", serde(skip))]
    _elem: PhantomData<fn() -> T>,
}

impl<T> ShmToken<T> {
    /// The number of elements.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T> fmt::Debug for ShmToken<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmToken")
            .field("block", &self.index)
            .field("generation", &self.generation)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Sent as its segment (a descriptor in the message's batch, see `ipc_shm::transfer`).
#[cfg(feature = "serde")]
impl serde::Serialize for ShmArena {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.inner.segment.serialize(s)
    }
}

/// Rebuilt from the received segment, whose control block is checked again.
#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for ShmArena {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ShmArena, D::Error> {
        use serde::de::Error as _;
        let segment = Segment::deserialize(d)?;
        ShmArena::from_segment(segment).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ShmArena {
        ShmArena::builder()
            .block_size(256)
            .blocks(2)
            .create()
            .expect("arena")
    }

    #[test]
    fn bad_sizes_are_typed_errors() {
        for (size, blocks) in [
            (0, 1),
            (MAX_BLOCK_SIZE + 1, 1),
            (64, 0),
            (64, MAX_BLOCKS + 1),
        ] {
            let e = ShmArena::builder().block_size(size).blocks(blocks).create();
            assert!(matches!(e, Err(ArenaCreateError::Invalid { .. })), "{e:?}");
        }
        let a = small();
        assert_eq!(a.block_size(), 256);
        assert_eq!(
            a.try_alloc::<u64>(33).unwrap_err(),
            AllocError::TooLarge {
                len: 33,
                elem: 8,
                block: 256
            }
        );
        assert!(matches!(
            a.try_alloc::<u8>(usize::MAX),
            Err(AllocError::TooLarge { .. })
        ));
        #[derive(Clone, Copy, ipc_shm::ShmSafe)]
        #[repr(C, align(256))]
        struct Wide([u8; 256]);
        assert_eq!(
            a.try_alloc::<Wide>(1).err(),
            Some(AllocError::AlignTooLarge { align: 256 })
        );
        // Zero elements is a valid (empty) vector.
        let empty = a.try_alloc::<u8>(0).expect("empty");
        assert!(empty.is_empty());
    }

    #[test]
    fn tokens_of_other_arenas_types_and_lengths_are_refused() {
        let (a, b) = (small(), small());
        let mut v = a.try_alloc::<u32>(4).expect("block");
        v.copy_from_slice(&[1, 2, 3, 4]);
        v.set(3, 9);
        assert_eq!(&v[..], &[1, 2, 3, 9]);
        let t = v.into_token().expect("token");
        assert_eq!(t.len(), 4);
        let copy = |t: &ShmToken<u32>| ShmToken::<u32> { ..*t };
        assert_eq!(b.adopt(copy(&t)).unwrap_err(), AdoptError::OtherArena);
        let as_u64 = ShmToken::<u64> {
            arena: t.arena,
            index: t.index,
            generation: t.generation,
            len: t.len,
            elem: t.elem,
            _elem: PhantomData,
        };
        assert_eq!(a.adopt(as_u64).unwrap_err(), AdoptError::TypeMismatch);
        let long = ShmToken::<u32> {
            len: 65,
            ..copy(&t)
        };
        assert!(matches!(a.adopt(long), Err(AdoptError::OutOfRange { .. })));
        let far = ShmToken::<u32> {
            index: 2,
            ..copy(&t)
        };
        assert!(matches!(a.adopt(far), Err(AdoptError::OutOfRange { .. })));
        let got = a.adopt(t).expect("adopt");
        assert_eq!(&got[..], &[1, 2, 3, 9]);
    }

    #[test]
    fn a_foreign_or_corrupted_segment_does_not_open() {
        // Another type of segment.
        let other = SegmentBuilder::new(4096).create().expect("segment");
        assert!(matches!(
            ShmArena::from_segment(other),
            Err(ArenaOpenError::Corrupted {
                what: "type tag",
                ..
            })
        ));
        // An arena's segment with a scribbled block count, then a scribbled block size.
        for (field, value) in [(2usize, u64::MAX), (2, 1000), (1, 3), (1, 0)] {
            let a = small();
            let fd = a.segment().try_clone().expect("clone");
            let word = Offset::<AtomicU64>::from_raw(field * 8);
            a.segment()
                .get(word)
                .expect("word")
                .store(value, Ordering::Relaxed);
            let e = ShmArena::from_segment(fd);
            assert!(
                matches!(e, Err(ArenaOpenError::Corrupted { .. })),
                "field {field} = {value}: {e:?}"
            );
        }
        // Intact, it opens, and both handles share the blocks.
        let a = small();
        let b = ShmArena::from_segment(a.segment().try_clone().expect("clone")).expect("open");
        let v = a.try_alloc::<u8>(1).expect("block");
        assert_eq!(b.counts().owned, 1);
        drop(v);
        assert_eq!(b.counts().free, 2);
    }
}
