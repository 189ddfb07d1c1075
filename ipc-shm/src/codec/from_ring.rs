//! Decoding straight out of a [`ByteRing`] (shared memory), with byte buffers filled once.
//!
//! [`decode_ring`](super::decode_ring) runs bincode's own serde decoder over a reader that
//! copies out of the ring with bounded raw copies ([`ByteRing::read`]): no intermediate buffer,
//! and no reference to the shared bytes. bincode 2.0.1 decodes every owned byte string
//! (`deserialize_byte_buf`, `deserialize_bytes`, `deserialize_string`, `deserialize_str` of its
//! owned decoder) into a `vec![0u8; len]` and then copies into it: for a megabyte argument the
//! zero-fill costs as much as the copy. So the deserializer is wrapped
//! ([`Fill`](super::fill::Fill)) with a [`RingInput`] as its source of byte strings: those four
//! calls read the length with bincode (`u64`, as bincode writes it) and append exactly
//! that many bytes from the ring into a vector's spare capacity ([`ByteRing::append`]).
//!
//! ## Bounds
//!
//! - Every read is checked against the bytes the caller handed over (`len`, itself at most the
//!   ring's capacity): a claim beyond them is bincode's `UnexpectedEnd`, before anything is
//!   allocated. A byte string therefore never allocates more than the input's length.
//! - A writer that scribbles over the ring while this reads can change the values decoded,
//!   never the addresses copied (the ring checks them against its own capacity): garbage is a
//!   typed error or wrong values, never undefined behaviour.
//!
//! Errors found while reading a byte string (longer than the input, invalid UTF-8) surface
//! through serde as a message; the typed bincode error is kept aside ([`RingInput::error`]) and
//! returned in its place.

use std::cell::Cell;

use bincode::error::DecodeError as BincodeError;
use serde::de::{self, Deserializer, Visitor};

use super::fill::ByteStrings;
use crate::ring::ByteRing;

/// The bytes a decode reads, front to back: `len` bytes from ring position `start`.
pub(super) struct RingInput<'a, B: ?Sized> {
    ring: &'a B,
    start: u64,
    len: usize,
    /// How many bytes were consumed.
    used: Cell<usize>,
    /// The typed error the wrapper reported to serde as a message.
    pub(super) error: Cell<Option<BincodeError>>,
}

impl<'a, B: ByteRing + ?Sized> RingInput<'a, B> {
    /// `len` bytes from position `start` of `ring`; the caller checked `len <= ring.cap()`.
    pub(super) fn new(ring: &'a B, start: u64, len: usize) -> Self {
        RingInput {
            ring,
            start,
            len,
            used: Cell::new(0),
            error: Cell::new(None),
        }
    }

    /// Bytes consumed so far.
    pub(super) fn used(&self) -> usize {
        self.used.get()
    }

    /// The ring position of the next byte.
    #[inline]
    fn pos(&self) -> u64 {
        // Positions are taken modulo the ring's capacity, a power of two: wrapping is exact.
        self.start.wrapping_add(self.used.get() as u64)
    }

    /// Checks that `n` more bytes are there; consumes them and returns where they start.
    #[inline]
    fn claim(&self, n: usize) -> Result<u64, BincodeError> {
        let left = self.len - self.used.get();
        if n > left {
            return Err(BincodeError::UnexpectedEnd {
                additional: n - left,
            });
        }
        let pos = self.pos();
        self.used.set(self.used.get() + n);
        Ok(pos)
    }

    /// Fills `dst` with the next bytes.
    #[inline]
    fn read(&self, dst: &mut [u8]) -> Result<(), BincodeError> {
        let pos = self.claim(dst.len())?;
        self.ring.read(pos, dst);
        Ok(())
    }

    /// The next `n` bytes in a new vector, copied once (no zero-fill first).
    #[inline]
    fn take_vec(&self, n: u64) -> Result<Vec<u8>, BincodeError> {
        let n = usize::try_from(n).map_err(|_| BincodeError::OutsideUsizeRange(n))?;
        let pos = self.claim(n)?;
        let mut out = Vec::new();
        self.ring.append(pos, n, &mut out);
        Ok(out)
    }

    /// Keeps `e` for the top level and hands serde a message in its place.
    #[cold]
    fn fail<E: de::Error>(&self, e: BincodeError) -> E {
        let msg = E::custom(&e);
        self.error.set(Some(e));
        msg
    }
}

impl<B: ByteRing + ?Sized> RingInput<'_, B> {
    /// The next byte string (its bincode length, read by `d`, then its bytes), copied once.
    #[inline]
    fn next_byte_buf<'de, D: Deserializer<'de>>(&self, d: D) -> Result<Vec<u8>, D::Error> {
        let len = <u64 as de::Deserialize>::deserialize(d)?;
        self.take_vec(len).map_err(|e| self.fail(e))
    }
}

/// bincode's owned decoder answers `deserialize_bytes` and `deserialize_str` with a buffer
/// too: all four are filled once from the ring.
impl<B: ByteRing + ?Sized> ByteStrings for RingInput<'_, B> {
    #[inline]
    fn byte_buf<'de, D: Deserializer<'de>, V: Visitor<'de>>(
        &self,
        d: D,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        visitor.visit_byte_buf(self.next_byte_buf(d)?)
    }

    /// A byte string that must be UTF-8 (bincode's own check and error).
    #[inline]
    fn string<'de, D: Deserializer<'de>, V: Visitor<'de>>(
        &self,
        d: D,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let s = String::from_utf8(self.next_byte_buf(d)?).map_err(|e| {
            self.fail(BincodeError::Utf8 {
                inner: e.utf8_error(),
            })
        })?;
        visitor.visit_string(s)
    }
}

/// How many bytes [`RingReader`] copies out of the ring at a time for small reads.
const WINDOW: usize = 256;

/// bincode's reader over a [`RingInput`].
///
/// bincode reads most values a few bytes at a time (an integer is one to eight bytes), and only
/// takes its fast paths when the reader can lend it the next bytes (`peek_read`). Shared bytes
/// are never lent: the reader copies the next [`WINDOW`] bytes of the input into a private
/// window and lends those. The window is a cache of the input at positions `at .. at + filled`:
/// [`RingInput::used`] stays the one cursor (byte strings taken through [`Fill`](super::fill::Fill) move it without the
/// window), and a read is served from the window only when the cursor lies inside it. Each
/// window copy stays within the input's `len`; a writer scribbling meanwhile can only change
/// the values decoded.
pub(super) struct RingReader<'i, 'a, B: ?Sized> {
    input: &'i RingInput<'a, B>,
    window: [u8; WINDOW],
    /// The input position (bytes from its start) of `window[0]`.
    at: usize,
    /// How many bytes of `window` are valid.
    filled: usize,
}

impl<'i, 'a, B: ByteRing + ?Sized> RingReader<'i, 'a, B> {
    /// A reader of `input`, from its cursor.
    pub(super) fn new(input: &'i RingInput<'a, B>) -> Self {
        RingReader {
            input,
            window: [0; WINDOW],
            at: 0,
            filled: 0,
        }
    }

    /// Where the next `n` (at most [`WINDOW`]) bytes of the input sit in the window, copying
    /// the window afresh from the cursor if they are not all there; `None` if fewer than `n`
    /// bytes are left in the input.
    #[inline]
    fn window_for(&mut self, n: usize) -> Option<usize> {
        let used = self.input.used();
        if used >= self.at && used + n <= self.at + self.filled {
            return Some(used - self.at);
        }
        let left = self.input.len - used;
        if n > left {
            return None;
        }
        let take = left.min(WINDOW);
        self.input.ring.read(
            self.input.start.wrapping_add(used as u64),
            &mut self.window[..take],
        );
        self.at = used;
        self.filled = take;
        Some(0)
    }
}

impl<B: ByteRing + ?Sized> bincode::de::read::Reader for RingReader<'_, '_, B> {
    #[inline]
    fn read(&mut self, bytes: &mut [u8]) -> Result<(), BincodeError> {
        if bytes.len() <= WINDOW
            && let Some(off) = self.window_for(bytes.len())
        {
            bytes.copy_from_slice(&self.window[off..off + bytes.len()]);
            self.input.claim(bytes.len())?;
            return Ok(());
        }
        self.input.read(bytes)
    }

    #[inline]
    fn peek_read(&mut self, n: usize) -> Option<&[u8]> {
        if n > WINDOW {
            return None;
        }
        let off = self.window_for(n)?;
        Some(&self.window[off..off + n])
    }

    #[inline]
    fn consume(&mut self, n: usize) {
        // Only ever after a `peek_read` of at least `n` bytes, which checked they are there.
        let _ = self.input.claim(n);
    }
}
