//! A lossless cross-process multi-producer multi-consumer [`Queue`] and [`JoinableQueue`] of
//! serde messages in shared memory: Python's `multiprocessing.Queue`, minus its failure modes.
//!
//! - Any number of producers and consumers, in any number of threads and processes (forked,
//!   exec'ed with an inherited descriptor, or unrelated and opening the queue by name).
//! - `put`/`try_put`/`put_timeout`, `get`/`try_get`/`get_timeout`, batch forms
//!   ([`Queue::put_many`], [`Queue::get_many`]) that commit many small messages with one lock
//!   acquisition, a byte-level API ([`Queue::put_bytes`], [`Queue::get_bytes`]) for users with
//!   their own codec, [`Queue::close`], approximate `len`/`is_empty`/`is_full`.
//! - Bounded by bytes (the capacity) and optionally by items (Python's `maxsize`).
//! - **Exactly once and FIFO per producer**, and **SIGKILL-proof**: a producer or consumer killed
//!   at any instant leaves the queue usable by all others, with no half-written message ever
//!   delivered and no message of a live producer lost (see the design below).
//!
//! ```
//! use ipc_queue::{GetError, Queue, QueueBuilder};
//!
//! let q: Queue<String> = QueueBuilder::new().capacity(1 << 16).build()?;
//! let child_q = q.clone(); // a forked child would use its copy the same way
//! child_q.put("work".to_string())?;
//! assert_eq!(q.get()?, "work");
//! q.close()?;
//! assert!(matches!(q.get(), Err(GetError::Closed)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Handing a queue to other processes
//!
//! Besides `fork`, names and inherited descriptors, a queue is an argument like any other for the
//! pool (`ProcessBuilder::spawn`, `PoolBuilder::initializer`, tasks) and can be sent over an
//! `ipc_pipe::Connection`: its descriptor travels with the message (`SCM_RIGHTS`) and the
//! receiver validates the segment header, the control block and the item type again (see
//! `ipc_shm::transfer`). Sending duplicates: both processes use the one queue; the creator of a
//! named queue unlinks its name, receivers never do; an anonymous queue lives while any process
//! holds it. Outside such a message a queue refuses to serialise.
//!
//! # Design
//!
//! One [`ipc_shm`] segment holds a control block and a byte ring. Producers serialise on one
//! robust lock ([`ipc_sync::Lock`]) and consumers on another; each side publishes its work with
//! a single atomic store of a 64-bit *commit word* (`items << 32 | bytes`), after the copy is
//! complete. A process killed mid-copy therefore never published anything, and the next holder of
//! the lock (told `OwnerDied`) has nothing to repair. The algorithm, its state table and its
//! memory ordering are documented in the `core` module (source: `src/core.rs`; the control
//! block's layout in `src/control.rs`), and model-checked with loom on the same code, over the
//! loom ring, model lock and futex (`RUSTFLAGS="--cfg loom" cargo test --release -p ipc-queue
//! --lib`).
//!
//! Delivery: a message is delivered when a consumer's commit store removes it. A consumer killed
//! after that store and before `get` returns took the message with it, exactly as one killed
//! just after `get` returned; messages are never delivered twice.
//!
//! Shared memory is untrusted: every commit word, frame header and length read from it is
//! validated, and a corrupted segment gives a `Corrupted` error, never undefined behaviour or a
//! panic (a proptest scribbles over the segment to check this). The payload bytes themselves
//! are not checksummed (the commit protocol already excludes torn messages, and hashing 64 KiB
//! messages would halve the bandwidth); a message that fails to decode is an error for that
//! message only.
//!
//! Blocking: getters on an empty queue and putters on a full one spin briefly (the shared
//! [`ipc_sync::Backoff`], a time budget that adapts to how long the other side takes), then sleep
//! on an [`ipc_sync::EventCount`] in the control block; the other side's notify makes a system
//! call only when a waiter is registered, so an uncontended put or get makes none. A waiter
//! SIGKILLed while asleep leaves a registration that the next notify clears.
//!
//! # Async (feature `tokio`)
//!
//! `Queue::get_async` and `Queue::put_async` wait without blocking the calling thread and
//! without a thread per waiter: an async waiter registers on the queue's event count exactly as
//! a sleeping thread does, and one reactor thread per process sleeps for all of them on the
//! event counts' futex words at once (`futex_waitv`, Linux >= 5.16, through
//! `ipc_sync::futex::wait_any`). Producers and consumers in other processes cannot tell the
//! difference, so the sync path is unchanged. Both are cancel-safe: a dropped get future took
//! no message, a dropped put future put nothing. The futures need no particular runtime.
//! (`src/reactor.rs` has the protocol and why not an eventfd; `Queue::get_async` a runnable
//! example.)
//!
//! # Encoding
//!
//! Messages are encoded with bincode 2's serde support in the workspace's one configuration,
//! `ipc_shm::codec` (standard, with fixed-width integers; one decode bound, so a hostile length
//! inside a message cannot make a consumer allocate more than the message holds), and framed with that module's
//! 8-byte header, which the pipe and the pool use too. Note that serde encodes `Vec<u8>` element
//! by element: wrap byte payloads in `serde_bytes` (7-10x faster for large payloads) or use the
//! byte API.
//!
//! # Large messages
//!
//! A message whose encoding is 4 KiB or more is copied once each way: the producer measures it
//! (`ipc_shm::codec::encoded_len`, a counting pass that copies nothing) and serialises it straight
//! into the ring under the put lock; the consumer deserialises it straight out of the ring under
//! the get lock, so the bytes go from shared memory only into the values built. Smaller messages
//! go through per-thread scratch buffers, which keeps the locks held for a plain copy only. So
//! for large messages a `Serialize` or `Deserialize` impl runs while a lock of the queue is held:
//! it must not put to or get from the *same* queue (it would wait for itself).
//!
//! Two things a process does once, the first time it moves a large message through a queue:
//! it faults the whole ring in with one system call (`Segment::populate`; for rings up to 64 MiB)
//! rather than one page fault per page (a forked child inherits the mapping but not its page
//! tables), and a process that *receives* large messages lets glibc keep up to 64 MiB of freed
//! heap (`ipc_shm::os::keep_freed_heap`, as the pool's workers do). Without the latter, a
//! consumer that drops a batch of decoded 64 KiB messages hands the memory back to the kernel
//! and faults every page of it in again for the next batch: measured at 14 page faults and 5x
//! the CPU per 64 KiB message. The setting only ever raises glibc's thresholds.
//!
//! To copy a large payload no more than once, do not put it in the message: write it into a
//! block of an `ipc_sync::ShmArena` (an `ipc_sync::ShmVec`) and put the block's `ShmToken`, a
//! few words; the consumer adopts the token and reads the block in place. 64 KiB messages moved
//! that way at 1.8-2.9x the speed of the copying path in four runs of the comparison runner
//! (about a memcpy's speed; 1.2-2.5x std's `sync_channel` between threads): see the root README.
//!
//! # Dependencies
//!
//! - `ipc-shm`: the segment (creation, validation, naming, descriptor passing, `ShmSafe`), the
//!   byte ring (`ShmRing`, and `LoomRing` for the models) and, with its `codec` feature, the
//!   frame header, bincode configuration and decode limit.
//! - `ipc-sync`: the robust `Lock` behind its `RawLock` trait (owner-death recovery; a model
//!   lock under loom), `EventCount` (the wake-up protocol), `Backoff` (the spin policy) and the
//!   workspace's one futex wrapper (`Waiter`, `Futex`, `Deadline`).
//! - `serde` + `bincode` (2.x with `serde`): the message encoding users asked for (the public
//!   errors carry bincode's error types).
//! - `thiserror`: `Display`/`source` of the error enums.
//! - `loom` (only under `--cfg loom`): model checking of the algorithm.
#![deny(unsafe_code)]

// Under loom only the model tests use the layout and the algorithm (the handles are not built).
#[cfg_attr(loom, allow(dead_code))]
mod control;
#[cfg_attr(loom, allow(dead_code))]
mod core;
mod sync;

#[cfg(all(feature = "tokio", not(loom)))]
mod async_io;
#[cfg(not(loom))]
mod error;
#[cfg(not(loom))]
mod queue;
#[cfg(all(feature = "tokio", not(loom)))]
mod reactor;
#[cfg(not(loom))]
mod transfer;

#[cfg(not(loom))]
pub use error::{
    CloseError, CreateError, GetBytesError, GetError, GetManyError, GetTimeoutError, JoinError,
    OpenError, PutBytesError, PutError, PutManyError, PutTimeoutError, TaskDoneError, TryGetError,
    TryPutError,
};
#[cfg(not(loom))]
pub use queue::{DEFAULT_CAPACITY, JoinableQueue, QUEUE_TAG, Queue, QueueBuilder};

// The README's code blocks are compiled and run as doctests, so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}
