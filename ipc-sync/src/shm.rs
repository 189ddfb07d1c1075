//! The `ShmSafe` impls of the primitives: the only `unsafe` of their modules, in one place.
#![allow(unsafe_code)]
#![cfg(not(loom))] // loom's atomics are not shared-memory types.

use ipc_shm::ShmSafe;

use crate::lock::Lock;

// SAFETY: (1) `#[repr(C)]`; (2) only atomics, no pointers; (3) every bit pattern is a valid
// state: any word is "held by that tid" (a bogus tid is found dead and taken over), any
// `state` value other than the named ones reads as "inconsistent" (the next acquirer gets
// OwnerDied); all zeros is
// unlocked; (4) all fields are atomics; (5) no Drop.
unsafe impl ShmSafe for Lock {}
