//! The pool's use of the workspace's one frame codec, [`ipc_shm::codec`]: its bincode
//! configuration, its decode limit and its trailing-bytes check, nothing of the pool's own.
//!
//! This module only makes ipc-shm's errors fit the pool's: the pool's public errors are `Clone`
//! (a broken pool hands the same error to every caller) and ipc-shm's are not, so they are kept
//! behind an `Arc`. A chunk of arguments is one `Vec<A>`, a run of outcomes one
//! `Vec<Result<R, Failure>>`: one call each, whatever the number of tasks.
//!
//! Both error types print the whole story (ipc-shm's message and bincode's below it), because
//! most of them cross a process boundary or end in a `String` field (`TaskError::Argument`,
//! `Failure`) where no `source()` can follow. The pool's public errors that can carry a source
//! expose the typed ipc-shm error itself through [`CodecEncodeError::as_source`] and
//! [`CodecDecodeError::as_source`].

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use ipc_shm::codec::{DecodeError, EncodeError, FrameError};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Writes `e`, then its source's message if it has one (bincode's detail under ipc-shm's).
fn write_with_source(f: &mut fmt::Formatter<'_>, e: &dyn Error) -> fmt::Result {
    match e.source() {
        Some(source) => write!(f, "{e}: {source}"),
        None => write!(f, "{e}"),
    }
}

/// A value that did not encode: ipc-shm's [`EncodeError`], shared.
#[derive(Debug, Clone)]
pub(crate) struct CodecEncodeError(Arc<EncodeError>);

impl CodecEncodeError {
    /// ipc-shm's error, for a public error's `source()`.
    pub(crate) fn as_source(&self) -> &(dyn Error + 'static) {
        &*self.0
    }
}

impl From<EncodeError> for CodecEncodeError {
    fn from(e: EncodeError) -> Self {
        CodecEncodeError(Arc::new(e))
    }
}

impl fmt::Display for CodecEncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_with_source(f, &*self.0)
    }
}

/// Its `Display` already says everything (see the module docs), so it has no `source()`.
impl Error for CodecEncodeError {}

/// Equal when the codec reported the same failure (bincode's errors are not comparable, their
/// messages are).
impl PartialEq for CodecEncodeError {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.to_string() == other.to_string()
    }
}

impl Eq for CodecEncodeError {}

/// Bytes that did not decode: a frame shorter than its header, a refused frame header, or
/// ipc-shm's [`DecodeError`] for the value (shared).
#[derive(Debug, Clone)]
pub(crate) enum CodecDecodeError {
    /// The frame ended before its [`HEADER_LEN`](ipc_shm::codec::HEADER_LEN)-byte header did.
    Truncated {
        /// The frame's length.
        len: usize,
    },
    /// The frame header is corrupt or announces more bytes than the frame holds.
    Header(FrameError),
    /// The value's bytes were refused.
    Value(Arc<DecodeError>),
}

impl CodecDecodeError {
    /// The typed error underneath (ipc-shm's [`FrameError`] or [`DecodeError`]), or this error
    /// itself for a truncated frame, which has nothing underneath; for a public error's
    /// `source()`.
    pub(crate) fn as_source(&self) -> &(dyn Error + 'static) {
        match self {
            CodecDecodeError::Truncated { .. } => self,
            CodecDecodeError::Header(e) => e,
            CodecDecodeError::Value(e) => &**e,
        }
    }
}

impl From<DecodeError> for CodecDecodeError {
    fn from(e: DecodeError) -> Self {
        CodecDecodeError::Value(Arc::new(e))
    }
}

impl From<FrameError> for CodecDecodeError {
    fn from(e: FrameError) -> Self {
        CodecDecodeError::Header(e)
    }
}

impl fmt::Display for CodecDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecDecodeError::Truncated { len } => write!(
                f,
                "a frame of {len} bytes is shorter than its {}-byte header",
                ipc_shm::codec::HEADER_LEN
            ),
            CodecDecodeError::Header(e) => write!(f, "{e}"),
            CodecDecodeError::Value(e) => write_with_source(f, &**e),
        }
    }
}

/// Its `Display` already says everything (see the module docs), so it has no `source()`.
impl Error for CodecDecodeError {}

/// Appends the encoding of `value` to `out` ([`ipc_shm::codec::encode_into`]).
#[inline]
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), CodecEncodeError> {
    ipc_shm::codec::encode_into(value, out).map_err(CodecEncodeError::from)
}

/// The encoding of `value` ([`ipc_shm::codec::encode`]).
#[inline]
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecEncodeError> {
    ipc_shm::codec::encode(value).map_err(CodecEncodeError::from)
}

/// Decodes a `T` that must use all of `bytes`, within the one decode limit
/// ([`ipc_shm::codec::decode`]).
#[inline]
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecDecodeError> {
    ipc_shm::codec::decode(bytes).map_err(CodecDecodeError::from)
}

/// Decodes a `T` that must use all of the `len` bytes at position `pos` of `ring`, straight out
/// of it ([`ipc_shm::codec::decode_ring`]).
#[inline]
pub(crate) fn decode_ring<T: DeserializeOwned, B: ipc_shm::ByteRing + ?Sized>(
    ring: &B,
    pos: u64,
    len: usize,
) -> Result<T, CodecDecodeError> {
    ipc_shm::codec::decode_ring(ring, pos, len).map_err(CodecDecodeError::from)
}
