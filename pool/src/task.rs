//! Finding a task's function in another process: offsets from an anchor symbol.
//!
//! A task is a plain `fn(A) -> R`. Its address means nothing in another process (ASLR places
//! the binary elsewhere), but its *offset* from a known symbol of the same binary does. So the
//! parent sends two offsets from [`anchor`]: the user's function, and a monomorphised
//! *trampoline* (`call_one::<A, R>` or `call_batch::<A, R>`) that knows how to decode an `A`,
//! call the function, and encode the `R`. The worker adds its own anchor address back and calls
//! the trampoline.
//!
//! That is only sound if the worker runs the very same build. Workers started by `fork` share
//! the parent's memory image; a spawned worker executes `/proc/self/exe` of the parent. Every
//! worker also reports the identity of its executable (device, inode, size, modification time)
//! in its first message, and the pool refuses a worker whose identity differs from its own
//! ([`crate::PoolError::BuildMismatch`]) before sending it any task.
#![allow(unsafe_code)]

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec;

/// The anchor every task offset is measured from. Never inlined, never merged: it must have an
/// address of its own in the binary.
#[inline(never)]
#[unsafe(no_mangle)]
pub(crate) extern "C" fn ipc_pool_task_anchor() -> u64 {
    // A distinctive body so identical-code folding cannot merge it with another function.
    std::hint::black_box(0x1bc0_900c_a9c4_0eed)
}

fn anchor() -> usize {
    ipc_pool_task_anchor as *const () as usize
}

/// Why a task produced no result (the task's own failure, reported to its caller only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Failure {
    /// The function panicked; the message.
    Panicked(String),
    /// The argument could not be decoded in the worker.
    DecodeArgument(String),
    /// The result could not be encoded in the worker.
    EncodeResult(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Panicked(m) => write!(f, "panicked: {m}"),
            Failure::DecodeArgument(m) => write!(f, "the argument did not decode: {m}"),
            Failure::EncodeResult(m) => write!(f, "the result did not encode: {m}"),
        }
    }
}

/// Calls `func` (an `fn(A) -> R` at that address) on one encoded `A`, appending the encoded `R`.
type Trampoline = fn(func: usize, input: &[u8], out: &mut Vec<u8>) -> Result<(), Failure>;

/// A function located by offsets from the anchor: what the parent sends the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct TaskRef {
    trampoline: i64,
    func: i64,
}

impl TaskRef {
    /// The reference for running `f` on one argument at a time.
    pub(crate) fn one<A: DeserializeOwned, R: Serialize>(f: fn(A) -> R) -> TaskRef {
        let trampoline: Trampoline = call_one::<A, R>;
        TaskRef::new(trampoline, f as *const () as usize)
    }

    fn new(trampoline: Trampoline, func: usize) -> TaskRef {
        let base = anchor() as i64;
        TaskRef {
            trampoline: trampoline as *const () as usize as i64 - base,
            func: func as i64 - base,
        }
    }

    /// Runs the referenced function in this (worker) process.
    ///
    /// # Safety
    ///
    /// `self` must have been made by [`TaskRef::one`] or [`TaskRef::batch`] in a process running
    /// the same executable as this one (the pool checks the executable's identity when the
    /// worker starts), so that both offsets land on the functions they were taken from.
    pub(crate) unsafe fn run(&self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Failure> {
        let base = anchor() as i64;
        let trampoline_addr = (base + self.trampoline) as usize;
        let func_addr = (base + self.func) as usize;
        // SAFETY: by the caller's contract the executable is the same build, so base + offset is
        // the address of the `Trampoline`-typed function the offset was taken from in the
        // parent; a function pointer and a `usize` have the same size on this target.
        let trampoline: Trampoline =
            unsafe { std::mem::transmute::<usize, Trampoline>(trampoline_addr) };
        trampoline(func_addr, input, out)
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// Calls one function on one argument, catching its panic.
fn invoke<A, R>(func: usize, arg: A) -> Result<R, Failure> {
    // SAFETY: `func` is `base + offset` of an `fn(A) -> R` of this same executable, paired with
    // this very monomorphisation of the trampoline by `TaskRef::one`/`batch` (see
    // `TaskRef::run`'s contract); fn pointers and usize have the same size.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(func) };
    catch_unwind(AssertUnwindSafe(|| f(arg)))
        .map_err(|payload| Failure::Panicked(panic_message(&*payload)))
}

fn call_one<A: DeserializeOwned, R: Serialize>(
    func: usize,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    let arg: A = codec::decode(input).map_err(|e| Failure::DecodeArgument(e.to_string()))?;
    let result: R = invoke(func, arg)?;
    codec::encode_into(&result, out).map_err(|e| Failure::EncodeResult(e.to_string()))
}
