//! The deserializer wrapper that decides how byte strings are decoded, for every decode of the
//! codec.
//!
//! bincode 2.0.1 decodes an owned byte string or string (`deserialize_byte_buf`,
//! `deserialize_string`, and on its owned decoder `deserialize_bytes` and `deserialize_str`
//! too) into a `vec![0u8; len]` for the length it reads, then copies into it. That is a
//! zero-fill the copy makes useless, and an allocation of whatever length the input claims:
//! bincode's own decode limit is its only bound there. [`Fill`] wraps bincode's deserializer and
//! hands those calls to a [`ByteStrings`] source instead, which never allocates more than the
//! bytes left in the input:
//!
//! | source | input | byte strings |
//! |---|---|---|
//! | [`RingInput`](super::from_ring::RingInput) | a ring in shared memory | length read, checked against the input, bytes appended once into a new vector |
//! | [`Lend`] | a slice | bincode's borrowing calls (`deserialize_bytes`, `deserialize_str`): the slice lends the bytes, checked against what is left, and the visitor copies them once |
//!
//! Every other call goes to bincode untouched, with the wrapper carried down into options,
//! newtypes, sequences, maps and enums so that nested byte strings take the same way. With
//! every byte string bounded by the input, and sequences and maps preallocating at most serde's
//! cautious size hint (1 MiB), what a decode allocates is bounded by its input without
//! bincode's limit, which costs a check and a dropped error on every integer decoded
//! (`super::UNLIMITED`).

use serde::de::{self, DeserializeSeed, Deserializer, Visitor};

/// Where a [`Fill`] gets its byte strings from.
pub(super) trait ByteStrings {
    /// Answers `deserialize_byte_buf` and `deserialize_bytes`: the next byte string from `d`'s
    /// input, to `visitor`.
    fn byte_buf<'de, D: Deserializer<'de>, V: Visitor<'de>>(
        &self,
        d: D,
        visitor: V,
    ) -> Result<V::Value, D::Error>;

    /// Answers `deserialize_string` and `deserialize_str`: the next string from `d`'s input,
    /// to `visitor`.
    fn string<'de, D: Deserializer<'de>, V: Visitor<'de>>(
        &self,
        d: D,
        visitor: V,
    ) -> Result<V::Value, D::Error>;
}

/// Byte strings lent by bincode's borrowing decoder over a slice: bounded by the slice (a
/// length beyond it is bincode's `UnexpectedEnd`), copied once by the visitor.
#[derive(Debug)]
pub(super) struct Lend;

impl ByteStrings for Lend {
    #[inline]
    fn byte_buf<'de, D: Deserializer<'de>, V: Visitor<'de>>(
        &self,
        d: D,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        d.deserialize_bytes(visitor)
    }

    #[inline]
    fn string<'de, D: Deserializer<'de>, V: Visitor<'de>>(
        &self,
        d: D,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        d.deserialize_str(visitor)
    }
}

/// A seed whose deserializer is wrapped in [`Fill`] with [`Lend`]: for bincode's slice decoder
/// (`Lent(PhantomData::<T>)` decodes a `T`).
pub(super) struct Lent<S>(pub(super) S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Lent<S> {
    type Value = S::Value;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Fill {
            inner: d,
            src: &Lend,
        })
    }
}

/// The wrapper: a deserializer whose byte strings come from `src`.
pub(super) struct Fill<'s, S: ByteStrings + ?Sized, D> {
    pub(super) inner: D,
    pub(super) src: &'s S,
}

impl<'s, S: ByteStrings + ?Sized, D> Fill<'s, S, D> {
    /// The same wrapper around `inner`.
    #[inline]
    fn wrap<T>(&self, inner: T) -> Fill<'s, S, T> {
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

impl<'de, S: ByteStrings + ?Sized, D: Deserializer<'de>> Deserializer<'de> for Fill<'_, S, D> {
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
        self.src.byte_buf(self.inner, visitor)
    }

    #[inline]
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.src.byte_buf(self.inner, visitor)
    }

    #[inline]
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.src.string(self.inner, visitor)
    }

    #[inline]
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.src.string(self.inner, visitor)
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
impl<'de, S: ByteStrings + ?Sized, V: Visitor<'de>> Visitor<'de> for Fill<'_, S, V> {
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
impl<'de, S: ByteStrings + ?Sized, T: DeserializeSeed<'de>> DeserializeSeed<'de>
    for Fill<'_, S, T>
{
    type Value = T::Value;

    #[inline]
    fn deserialize<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
        let d = self.wrap(d);
        self.inner.deserialize(d)
    }
}

impl<'de, S: ByteStrings + ?Sized, A: de::SeqAccess<'de>> de::SeqAccess<'de> for Fill<'_, S, A> {
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

impl<'de, S: ByteStrings + ?Sized, A: de::MapAccess<'de>> de::MapAccess<'de> for Fill<'_, S, A> {
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

impl<'s, 'de, S: ByteStrings + ?Sized, A: de::EnumAccess<'de>> de::EnumAccess<'de>
    for Fill<'s, S, A>
{
    type Error = A::Error;
    type Variant = Fill<'s, S, A::Variant>;

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

impl<'de, S: ByteStrings + ?Sized, A: de::VariantAccess<'de>> de::VariantAccess<'de>
    for Fill<'_, S, A>
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
