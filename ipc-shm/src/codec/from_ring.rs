//! Decoding straight out of a [`ByteRing`] (shared memory), with byte buffers filled once.
//!
//! [`decode_ring`](super::decode_ring) runs bincode's own serde decoder over a reader that
//! copies out of the ring with bounded raw copies ([`ByteRing::read`]): no intermediate buffer,
//! and no reference to the shared bytes. bincode 2.0.1 decodes every owned byte string
//! (`deserialize_byte_buf`, `deserialize_bytes`, `deserialize_string`, `deserialize_str` of its
//! owned decoder) into a `vec![0u8; len]` and then copies into it: for a megabyte argument the
//! zero-fill costs as much as the copy. So the deserializer is wrapped ([`Fill`]): those four
//! calls read the length with bincode (`u64`, the same varint bincode writes) and append exactly
//! that many bytes from the ring into a vector's spare capacity ([`ByteRing::append`]); every
//! other call goes to bincode untouched, with the wrapper carried down into options, newtypes,
//! sequences, maps and enums so that nested byte strings are filled the same way.
//!
//! ## Bounds
//!
//! - Every read is checked against the bytes the caller handed over (`len`, itself at most the
//!   ring's capacity): a claim beyond them is bincode's `UnexpectedEnd`, before anything is
//!   allocated. A byte string therefore never allocates more than the input's length.
//! - Everything else bincode decodes still counts against the one [`DECODE_LIMIT`](super::DECODE_LIMIT).
//! - A writer that scribbles over the ring while this reads can change the values decoded,
//!   never the addresses copied (the ring checks them against its own capacity): garbage is a
//!   typed error or wrong values, never undefined behaviour.
//!
//! Errors found by the wrapper (a byte string longer than the input, invalid UTF-8) surface
//! through serde as a message; the typed bincode error is kept aside ([`RingInput::error`]) and
//! returned in its place.

use std::cell::Cell;

use bincode::error::DecodeError as BincodeError;
use serde::de::{self, DeserializeSeed, Deserializer, Visitor};

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

/// How many bytes [`RingReader`] copies out of the ring at a time for small reads.
const WINDOW: usize = 256;

/// bincode's reader over a [`RingInput`].
///
/// bincode reads most values a few bytes at a time (a varint is one byte, then more), and only
/// takes its fast paths when the reader can lend it the next bytes (`peek_read`). Shared bytes
/// are never lent: the reader copies the next [`WINDOW`] bytes of the input into a private
/// window and lends those. The window is a cache of the input at positions `at .. at + filled`:
/// [`RingInput::used`] stays the one cursor (byte strings taken by [`Fill`] move it without the
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

/// The wrapper: a deserializer whose byte strings are read by [`RingInput::take_vec`].
pub(super) struct Fill<'i, 'a, B: ?Sized, D> {
    pub(super) inner: D,
    pub(super) src: &'i RingInput<'a, B>,
}

impl<'i, 'a, B: ByteRing + ?Sized, D> Fill<'i, 'a, B, D> {
    /// The same wrapper around `inner`.
    #[inline]
    fn wrap<T>(&self, inner: T) -> Fill<'i, 'a, B, T> {
        Fill {
            inner,
            src: self.src,
        }
    }
}

macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            let visitor = self.wrap(visitor);
            self.inner.$method($($arg,)* visitor)
        }
    )*};
}

impl<'de, B: ByteRing + ?Sized, D: Deserializer<'de>> Fill<'_, '_, B, D> {
    /// The next byte string (its bincode length, then its bytes), copied once.
    #[inline]
    fn byte_buf(self) -> Result<Vec<u8>, D::Error> {
        let len = <u64 as de::Deserialize>::deserialize(self.inner)?;
        self.src.take_vec(len).map_err(|e| self.src.fail(e))
    }

    /// The next string: a byte string that must be UTF-8 (bincode's own check and error).
    #[inline]
    fn string(self) -> Result<String, D::Error> {
        let src = self.src;
        String::from_utf8(self.byte_buf()?).map_err(|e| {
            src.fail(BincodeError::Utf8 {
                inner: e.utf8_error(),
            })
        })
    }
}

impl<'de, B: ByteRing + ?Sized, D: Deserializer<'de>> Deserializer<'de> for Fill<'_, '_, B, D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }

    #[inline]
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        visitor.visit_byte_buf(self.byte_buf()?)
    }

    /// bincode's owned decoder answers `deserialize_bytes` with a buffer too.
    #[inline]
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        visitor.visit_byte_buf(self.byte_buf()?)
    }

    #[inline]
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        visitor.visit_string(self.string()?)
    }

    /// bincode's owned decoder answers `deserialize_str` with a `String` too.
    #[inline]
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        visitor.visit_string(self.string()?)
    }

    #[inline]
    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {$(
        #[inline]
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

/// A visitor handed to bincode: what bincode hands back (a deserializer, an access) is wrapped
/// again before the user's visitor sees it.
impl<'de, B: ByteRing + ?Sized, V: Visitor<'de>> Visitor<'de> for Fill<'_, '_, B, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    #[inline]
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    #[inline]
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    #[inline]
    fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
        let d = self.wrap(d);
        self.inner.visit_some(d)
    }

    #[inline]
    fn visit_newtype_struct<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
        let d = self.wrap(d);
        self.inner.visit_newtype_struct(d)
    }

    #[inline]
    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let seq = self.wrap(seq);
        self.inner.visit_seq(seq)
    }

    #[inline]
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let map = self.wrap(map);
        self.inner.visit_map(map)
    }

    #[inline]
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        let data = self.wrap(data);
        self.inner.visit_enum(data)
    }
}

/// A seed whose deserializer is wrapped.
impl<'de, B: ByteRing + ?Sized, S: DeserializeSeed<'de>> DeserializeSeed<'de>
    for Fill<'_, '_, B, S>
{
    type Value = S::Value;

    #[inline]
    fn deserialize<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
        let d = self.wrap(d);
        self.inner.deserialize(d)
    }
}

impl<'de, B: ByteRing + ?Sized, A: de::SeqAccess<'de>> de::SeqAccess<'de> for Fill<'_, '_, B, A> {
    type Error = A::Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let seed = self.wrap(seed);
        self.inner.next_element_seed(seed)
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, B: ByteRing + ?Sized, A: de::MapAccess<'de>> de::MapAccess<'de> for Fill<'_, '_, B, A> {
    type Error = A::Error;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let seed = self.wrap(seed);
        self.inner.next_key_seed(seed)
    }

    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        let seed = self.wrap(seed);
        self.inner.next_value_seed(seed)
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'i, 'a, 'de, B: ByteRing + ?Sized, A: de::EnumAccess<'de>> de::EnumAccess<'de>
    for Fill<'i, 'a, B, A>
{
    type Error = A::Error;
    type Variant = Fill<'i, 'a, B, A::Variant>;

    #[inline]
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), A::Error> {
        let src = self.src;
        let (value, variant) = self.inner.variant_seed(seed)?;
        Ok((
            value,
            Fill {
                inner: variant,
                src,
            },
        ))
    }
}

impl<'de, B: ByteRing + ?Sized, A: de::VariantAccess<'de>> de::VariantAccess<'de>
    for Fill<'_, '_, B, A>
{
    type Error = A::Error;

    #[inline]
    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    #[inline]
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        let seed = self.wrap(seed);
        self.inner.newtype_variant_seed(seed)
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let visitor = self.wrap(visitor);
        self.inner.tuple_variant(len, visitor)
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let visitor = self.wrap(visitor);
        self.inner.struct_variant(fields, visitor)
    }
}
