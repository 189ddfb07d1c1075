//! The `ShmSafe` impls of the primitives: the only `unsafe` of their modules, in one place.
#![allow(unsafe_code)]
#![cfg(not(loom))] // loom's atomics are not shared-memory types.

use ipc_shm::ShmSafe;

use crate::barrier::Barrier;
use crate::condition::Condition;
use crate::event::Event;
use crate::eventcount::EventCount;
use crate::lock::Lock;
use crate::rlock::RLock;
use crate::semaphore::{BoundedSemaphore, Semaphore};

// SAFETY: (1) `#[repr(C)]`; (2) only atomics, no pointers; (3) every bit pattern is a valid
// state: any word is "held by that tid" (a bogus tid is found dead and taken over; a set
// OWNER_DIED bit only makes each waiter check that owner once), any
// `state` value other than the named ones reads as "inconsistent" (the next acquirer gets
// OwnerDied); all zeros is
// unlocked; (4) all fields are atomics; (5) no Drop.
unsafe impl ShmSafe for Lock {}

// SAFETY: (1) `#[repr(C)]`; (2) a `Lock` (see above) and two `u32`-sized fields, no pointers;
// (3) any bytes are valid: any count with an unowned or foreign-owned lock is ignored (the
// count is reset on acquisition), all zeros is unlocked; (4) the count is an atomic (only the
// owner writes it) and `_pad` is never written after construction; (5) no Drop.
unsafe impl ShmSafe for RLock {}

// SAFETY: (1) `#[repr(C)]`; (2) one atomic, no pointers; (3) every word is a valid state: any
// `seq`, and any `count` (a too-high count only costs a notify one wake call, and the notify
// then clears it; a full count makes waiters poll in slices), all zeros is "no waiters";
// (4) atomic; (5) no Drop.
unsafe impl ShmSafe for EventCount {}

// SAFETY: (1) `#[repr(C)]`; (2) an `EventCount` (see above) and a reserved atomic, no
// pointers; (3) any bytes are valid (the event count: see above; the reserved word is never
// read), all zeros is "no waiters"; (4) atomics; (5) no Drop.
unsafe impl ShmSafe for Condition {}

// SAFETY: (1) `#[repr(C)]`; (2) one atomic; (3) every word is a valid (set or clear, some
// generation) event, all zeros is clear; (4) atomic; (5) no Drop.
unsafe impl ShmSafe for Event {}

// SAFETY: (1) `#[repr(C)]`; (2) an atomic count and an `EventCount` (see above); (3) any
// count is a valid number of permits and any event-count word is valid, all zeros is value 0;
// (4) atomics; (5) no Drop.
unsafe impl ShmSafe for Semaphore {}

// SAFETY: (1) `#[repr(C)]` of a `Semaphore` and an atomic bound; (2) no pointers; (3) any
// bound is valid (releases above it fail), all zeros is value and bound 0; (4) atomics;
// (5) no Drop.
unsafe impl ShmSafe for BoundedSemaphore {}

// SAFETY: (1) `#[repr(C)]`, the slot array too; (2) atomics only; (3) any word is a valid
// state (an out-of-range count only makes `wait` trip or break), any parties value is checked
// on use (0 or too many: `NoParties`), any slot pid is checked with procfs before use; all
// zeros is an unconfigured barrier; (4) atomics; (5) no Drop.
unsafe impl ShmSafe for Barrier {}
