//! The queue's control block: the shared-memory layout in front of the ring, and its
//! `ShmSafe` impl.
//!
//! ```text
//! offset   0  Config    magic, cap, max_items, closed              (written once, then read)
//! offset 128  PutSide   put lock, tail commit word, `data` event count  (producers)
//! offset 256  GetSide   get lock, head commit word, `space` event count (consumers)
//! offset 384  JoinSide  done counter, `all_done` event count            (JoinableQueue)
//! offset 512  the ring: `cap` bytes of frames
//! ```
//!
//! Each side has its own 128-byte block, so producers and consumers do not share cache lines
//! (two lines: the adjacent-line prefetcher pairs them). All-zero bytes plus the [`Config`] are a
//! valid empty, open queue. The algorithm over this block is in [`crate::core`]; the wake-up
//! protocol of each event count is `ipc_sync::eventcount`'s.
//!
//! This is the crate's only `unsafe`-allowed module, for the one `unsafe impl ShmSafe` that lets
//! the block be placed in a segment (a promise about the layout that the compiler cannot check).
//! The ring's raw copies are `ipc_shm::ShmRing`'s, the futex calls `ipc_sync`'s.
#![allow(unsafe_code)]

use ipc_sync::{EventCount, SharedLock};

use crate::sync::{AtomicU32, AtomicU64};

/// The value of [`Config::magic`]: "queue1", layout 2 (layout 1 had a separate waiter count and
/// sequence word per wait; a peer of that build is refused at open, see `QUEUE_TAG`).
pub(crate) const CONTROL_MAGIC: u64 = 0x7175_6575_6531_0002;

/// Settings written once by the creator before the segment is published.
#[repr(C, align(128))]
#[derive(Debug)]
pub(crate) struct Config {
    /// [`CONTROL_MAGIC`].
    pub(crate) magic: AtomicU64,
    /// The ring's size in bytes.
    pub(crate) cap: AtomicU64,
    /// The most items the queue holds (`u32::MAX`: no limit but the bytes).
    pub(crate) max_items: AtomicU64,
    /// Non-zero once the queue is closed.
    pub(crate) closed: AtomicU32,
    _pad: AtomicU32,
}

/// The producers' side: written by every put.
#[repr(C, align(128))]
#[derive(Debug)]
pub(crate) struct PutSide {
    /// Serialises producers (and `close`).
    pub(crate) lock: SharedLock,
    /// The tail commit word.
    pub(crate) tail: AtomicU64,
    /// Getters waiting for data sleep here; producers notify after their `tail` store.
    pub(crate) data: EventCount,
    _reserved: AtomicU32,
}

/// The consumers' side: written by every get.
#[repr(C, align(128))]
#[derive(Debug)]
pub(crate) struct GetSide {
    /// Serialises consumers.
    pub(crate) lock: SharedLock,
    /// The head commit word.
    pub(crate) head: AtomicU64,
    /// Putters waiting for room sleep here; consumers notify after their `head` store.
    pub(crate) space: EventCount,
    _reserved: AtomicU32,
}

/// `JoinableQueue`'s counters.
#[repr(C, align(128))]
#[derive(Debug)]
pub(crate) struct JoinSide {
    /// Number of `task_done` calls (mod 2^32); unfinished tasks are `tail.items - done`.
    pub(crate) done: AtomicU32,
    /// Joiners sleep here; the `task_done` that finishes the last task notifies.
    pub(crate) all_done: EventCount,
    _reserved: [AtomicU32; 2],
}

/// The control block at the start of a queue's segment (see the module docs).
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Control {
    pub(crate) config: Config,
    pub(crate) put: PutSide,
    pub(crate) get: GetSide,
    pub(crate) join: JoinSide,
}

#[cfg(loom)]
impl Control {
    /// A fresh control block on the heap, for the model checker.
    pub(crate) fn new_model(cap: usize, max_items: u32) -> Control {
        Control {
            config: Config {
                magic: AtomicU64::new(CONTROL_MAGIC),
                cap: AtomicU64::new(cap as u64),
                max_items: AtomicU64::new(u64::from(max_items)),
                closed: AtomicU32::new(0),
                _pad: AtomicU32::new(0),
            },
            put: PutSide {
                lock: SharedLock::default(),
                tail: AtomicU64::new(0),
                data: EventCount::new(),
                _reserved: AtomicU32::new(0),
            },
            get: GetSide {
                lock: SharedLock::default(),
                head: AtomicU64::new(0),
                space: EventCount::new(),
                _reserved: AtomicU32::new(0),
            },
            join: JoinSide {
                done: AtomicU32::new(0),
                all_done: EventCount::new(),
                _reserved: [AtomicU32::new(0), AtomicU32::new(0)],
            },
        }
    }
}

#[cfg(not(loom))]
// SAFETY: `ShmSafe` asks for (1) a defined layout: `Control` and its four parts are
// `#[repr(C)]` (the alignment attribute only adds trailing padding); (2) no pointers or
// references: only integer atomics, `ipc_sync::Lock` and `ipc_sync::EventCount`, both `ShmSafe`
// themselves; (3) every bit pattern valid, all-zero a valid initial state: atomics accept any
// bits, `Lock` and `EventCount` are `ShmSafe` (all-zero unlocked / no waiters), all-zero commit
// words are an empty queue, and every value is validated on use (`core::Snapshot::new`, the
// config checks at open); (4) shared mutation only through atomics: every field is an atomic,
// the lock or an event count, and the config atomics are written before publication; (5) no
// `Drop`.
unsafe impl ipc_shm::ShmSafe for Control {}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// The layout the module docs draw (and `tests/corrupt.rs` relies on).
    #[test]
    fn layout_is_four_blocks_of_128_bytes() {
        assert_eq!(std::mem::size_of::<Config>(), 128);
        assert_eq!(std::mem::size_of::<PutSide>(), 128);
        assert_eq!(std::mem::size_of::<GetSide>(), 128);
        assert_eq!(std::mem::size_of::<JoinSide>(), 128);
        assert_eq!(std::mem::size_of::<Control>(), 512);
        assert_eq!(std::mem::offset_of!(Control, put), 128);
    }
}
