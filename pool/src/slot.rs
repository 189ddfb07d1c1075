//! A worker's progress slot: a few words of shared memory the worker writes and the pool reads.
//!
//! | word   | written by | meaning                                                        |
//! |--------|------------|----------------------------------------------------------------|
//! | `job`  | worker     | id of the job being run (0 before the first)                   |
//! | `item` | worker     | 1 + global index of the argument being run; 0 between jobs     |
//! | `done` | worker     | arguments finished since the worker started                   |
//! | `dying`| worker's crash handler | the fatal signal it is dying of; 0 while it lives    |
//!
//! After a worker dies, `item` names the argument it was running: that task fails with
//! `WorkerLost`, arguments of the job that had not started run elsewhere, and those finished
//! but not yet reported (at most 50 us of work: see `worker`) fail too, since running them
//! again would repeat their side effects. While a worker
//! lives, the pool reads `item` to enforce `task_timeout` and to report the current task.
//!
//! `dying` is written once, by the worker's crash handler (`ipc_shm::os::install_death_notice`),
//! just before it hangs up the worker's link: a pool that sees the hang-up and a nonzero
//! `dying` knows how the worker ends (`Exit::Signal(dying)`) without waiting for the kernel to
//! tear the process down, and settles the job at once; it reaps the process later.
//!
//! ## Memory ordering
//!
//! The worker stores with `Release` and the pool loads with `Acquire`; nothing else depends on
//! the order, since after a death the pool reads the words only once the worker's pipe has
//! reported it gone (for `dying`: the hang-up its handler makes after the store).
#![allow(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ipc_shm::{Offset, Segment, SegmentBuilder, SegmentCreateError, ShmSafe, TypeTag};

/// The tag of a worker slot segment.
pub(crate) const PROGRESS_SLOT_TAG: TypeTag = TypeTag::from_name("pool/worker-slot/v2");

/// The words of one worker's slot.
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct ProgressWords {
    pub(crate) job: AtomicU64,
    pub(crate) item: AtomicU64,
    pub(crate) done: AtomicU64,
    pub(crate) dying: AtomicU64,
}

// SAFETY: (1) repr(C); (2) no pointers; (3) four AtomicU64, valid for any bit pattern and zero;
// (4) all mutation is through the atomics; (5) no Drop.
unsafe impl ShmSafe for ProgressWords {}

/// A slot in its own small anonymous segment.
#[derive(Debug, Clone)]
pub(crate) struct ProgressSlot {
    segment: Arc<Segment>,
}

const AT: Offset<ProgressWords> = Offset::from_raw(0);

impl ProgressSlot {
    pub(crate) fn new() -> Result<ProgressSlot, SegmentCreateError> {
        let segment = SegmentBuilder::new(std::mem::size_of::<ProgressWords>())
            .type_tag(PROGRESS_SLOT_TAG)
            .create()?;
        Ok(ProgressSlot {
            segment: Arc::new(segment),
        })
    }

    pub(crate) fn from_segment(segment: Segment) -> Option<ProgressSlot> {
        segment.get(AT).ok()?;
        Some(ProgressSlot {
            segment: Arc::new(segment),
        })
    }

    pub(crate) fn segment(&self) -> &Segment {
        &self.segment
    }

    pub(crate) fn words(&self) -> &ProgressWords {
        self.segment
            .get(AT)
            .unwrap_or_else(|_| unreachable!("checked when the slot was made"))
    }

    /// The fatal signal the worker's crash handler recorded, if it ran.
    pub(crate) fn dying(&self) -> Option<i32> {
        match self.words().dying.load(Ordering::Acquire) {
            0 => None,
            n => i32::try_from(n).ok(),
        }
    }

    /// The global index of the argument being run, if any.
    pub(crate) fn current_item(&self) -> Option<u64> {
        self.words().item.load(Ordering::Acquire).checked_sub(1)
    }
}
