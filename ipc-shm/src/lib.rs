//! Shared-memory segments for cross-process programs, with a validated header and typed views.
//!
//! `ipc-shm` is the foundation of the workspace: every other crate (locks, queues, pipes, the
//! pool) puts its control blocks and rings in a [`Segment`]. It gives you:
//!
//! - [`Segment`]: a mapping of a named POSIX shared-memory object (`shm_open`) or of an anonymous
//!   `memfd`, built by [`SegmentBuilder`] and opened by name or from an inherited descriptor with
//!   [`OpenOptions`].
//! - A [`SegmentHeader`] at the start of every segment (magic, layout version, size, a caller-chosen
//!   [`TypeTag`], and an initialised flag published last), checked by every opener *before* it
//!   touches the payload, so a foreign, truncated, half-initialised or corrupted object is a typed
//!   error and never a crash *at open*. (A named object truncated *after* it was opened can still
//!   raise SIGBUS: see [Trust](#trust-planted-and-truncated-objects).)
//! - [`ShmSafe`](trait@ShmSafe): the one `unsafe trait` that marks types allowed to live in
//!   shared memory, and `#[derive(ShmSafe)]` (feature `derive`, on by default) that implements it
//!   for your own `#[repr(C)]` structs after checking the contract at compile time.
//! - [`Layout`], [`Offset`] and [`SliceOffset`]: place several objects in one segment at aligned
//!   offsets (offsets, never pointers, because each process maps the segment at its own address).
//! - [`SharedValue`] and [`SharedSlice`]: owned typed views like Python's `multiprocessing.Value`
//!   and `Array`.
//! - [`pass_fd_to_command`] and [`take_inherited_fd`]: hand a descriptor to an exec'ed child
//!   without leaking it into unrelated children.
//! - `transfer` (feature `serde`, which `codec` turns on): `Serialize`/`Deserialize` for
//!   [`Segment`], [`SharedValue`] and [`SharedSlice`] that work only inside a message whose
//!   transport carries descriptors (`ipc_pipe::Connection::send`, the pool's arguments): the
//!   descriptor travels with the message (`SCM_RIGHTS`) and the receiver re-validates the
//!   header. The queue and the pipe build their own handles' transfer on it.
//!
//! # Shared pieces the other crates build on
//!
//! Two mechanisms that the queue, the pipe and the pool all need are written once, here:
//!
//! - **The byte ring.** [`ByteRing`] copies into and out of a ring of `cap()` bytes (a power of
//!   two) at free-running positions, reducing them modulo the capacity and splitting copies that
//!   wrap. Its backends: [`ShmRing`] (a range of a segment's payload, bounds-checked once at
//!   construction; `ShmRing<&Segment>` or `ShmRing<Arc<Segment>>`), [`HeapRing`] (tests and
//!   conformance), and `LoomRing` under `--cfg loom` (loom cells, so loom reports byte accesses a
//!   protocol fails to order). No reference to shared bytes is ever formed, and no value a peer
//!   writes can make a copy leave the ring. The protocols that say which bytes may be copied
//!   (commit words, head and tail) stay in `ipc-queue` and `ipc-pipe`.
//! - **The frame codec** (feature `codec`, off by default so that segments alone do not pull in
//!   serde and bincode): `ipc_shm::codec` holds the one frame header (8 bytes: a `u32` length and
//!   a check word), the one bincode configuration, and the one limit: no frame longer than
//!   `codec::MAX_FRAME_LEN` (1 GiB), no decode
//!   allocating more than its input for a length it reads (`codec::DECODE_LIMIT` at most), no
//!   trailing bytes. Lengths read from shared memory go through `codec::frame_len` before anyone
//!   allocates for them.
//!
//! # What is safe to share, and why offsets
//!
//! Another process may write the shared bytes at any moment, and it may be buggy, hostile or dead
//! halfway through a write. So a type stored in shared memory must be valid for *any* bit pattern
//! (no `bool`, no enums, no references), must do its concurrent mutation through atomics (a plain
//! `u64` that another process writes while you read it is a data race), and must hold no pointers:
//! each process maps the segment at a different address, so a pointer written by one is garbage in
//! the other. Store offsets from the start of the payload instead, and bounds-check them on every
//! use with [`Segment::get`] or [`Segment::slice`]. [`ShmSafe`](trait@ShmSafe) states these rules as a contract.
//!
//! # Example: two processes share a counter
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use ipc_shm::{Layout, SegmentBuilder, TypeTag};
//!
//! const TAG: TypeTag = TypeTag::from_name("example/counter");
//! let mut layout = Layout::new();
//! let counter = layout.add::<AtomicU64>()?;
//! let segment = SegmentBuilder::new(layout.size()).type_tag(TAG).create()?; // anonymous memfd
//!
//! // A forked child (or an exec'ed one that opened the segment by name or fd) sees the same memory.
//! segment.get(counter)?.fetch_add(1, Ordering::Relaxed);
//! assert_eq!(segment.get(counter)?.load(Ordering::Relaxed), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Trust: planted and truncated objects
//!
//! `/dev/shm` is writable by every local user, so a name can be created by someone else before
//! your creator runs. Opening **by name** ([`Segment::open`], [`OpenOptions::open`], and every
//! queue or pipe opened by name on top of them) therefore refuses, on the `fstat` done before
//! anything is mapped, an object not owned by the caller's effective uid
//! ([`SegmentOpenError::ForeignOwner`]) or writable by its group or by others
//! ([`SegmentOpenError::TooPermissive`]). Sharing between users is an explicit opt-in:
//! [`OpenOptions::allow_other_owners`], [`OpenOptions::allow_group_write`],
//! [`OpenOptions::allow_world_write`]. Segments are created `0o600` unless
//! [`SegmentBuilder::mode`] says otherwise, and a creator that widens the mode must have its
//! openers opt in too. Opening **from a descriptor** checks neither: the process that handed it
//! over is the trust decision (see [`OpenOptions::from_fd`]).
//!
//! Named POSIX objects cannot be sealed: a process allowed to write one can truncate it after
//! you mapped it, and touching a page past the new end raises **SIGBUS**. Anonymous (memfd)
//! segments are size-sealed at creation (`ftruncate` fails with `EPERM`), so use them for
//! anything facing a peer you do not trust; [`Segment::is_size_sealed`] tells you whether a
//! descriptor you were sent is, and [`Segment::check_len`] whether a named one was truncated.
//!
//! # Lifetime
//!
//! The process that creates a named segment unlinks the name when the [`Segment`] drops, unless
//! told to persist it ([`SegmentBuilder::unlink_on_drop`]); a forked child's copy never unlinks.
//! Anonymous (memfd) segments have no name at all, so nothing can leak after a crash: prefer them
//! whenever the other processes are your own children.
//!
//! Handed to another process inside a message (`transfer`), a segment is a duplicated
//! descriptor: the receiver's handle has no name and never unlinks; a memfd lives while any
//! process holds a descriptor or a mapping of it.
//!
//! # Dependencies
//!
//! - `memmap2`: the mapping itself (`MmapRaw`, which hands out a raw pointer and never a `&mut`
//!   to memory another process writes).
//! - `rustix`, `nix` and `libc`: behind [`os`], the workspace's OS layer: every system call the
//!   crates make outside the futex wrapper, so that another OS can be added in one place. rustix
//!   wherever it has a safe form (shm, memfd, seals, `fstat`, `ftruncate`, pidfd, poll, waitpid,
//!   kill, pdeathsig, sockets and `SCM_RIGHTS`); nix for `fork`, `signalfd` and `posix_spawn`
//!   only; libc for `_exit` and `pthread_atfork` only.
//! - `thiserror`: the `Display` and `source` of the error enums.
//! - `serde` and `bincode` (feature `codec` only): the shared message encoding. `serde` alone
//!   (feature `serde`, which `codec` implies) for `transfer`: a feature rather than always on, so
//!   that a user of segments alone does not compile serde.
//! - `loom` (under `--cfg loom` only): the loom backend of the byte ring.
//!
//! `bytemuck` was considered as the basis of [`ShmSafe`](trait@ShmSafe), but its `Pod` requires `Copy`, which
//! atomics are not, and atomics are exactly what shared memory needs.
#![deny(unsafe_code)]

#[cfg(feature = "codec")]
pub mod codec;
mod error;
mod header;
mod inherit;
mod layout;
mod map;
pub mod os;
mod ring;
mod segment;
mod shm_safe;
#[cfg(feature = "serde")]
pub mod transfer;
mod value;

pub use error::{
    InheritError, LayoutError, NameError, RingError, SegmentCreateError, SegmentOpenError,
};
pub use header::{LAYOUT_VERSION, MAGIC, PAYLOAD_ALIGN, PAYLOAD_OFFSET, SegmentHeader, TypeTag};
pub use inherit::{ChildSetup, pass_fd_to_command, take_inherited_fd};
/// `#[derive(ShmSafe)]` (feature `derive`, on by default): see the [`ShmSafe`](trait@ShmSafe)
/// trait and the `ipc_shm_derive` crate for what it checks.
#[cfg(feature = "derive")]
pub use ipc_shm_derive::ShmSafe;
pub use layout::{Layout, Offset, SliceOffset};
#[cfg(loom)]
pub use ring::LoomRing;
pub use ring::{ByteRing, HeapRing, ShmRing};
pub use segment::{OpenOptions, Segment, SegmentBuilder, max_name_len};
pub use shm_safe::ShmSafe;
pub use value::{SharedSlice, SharedValue};

// The README's code blocks are compiled and run as doctests, so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}
