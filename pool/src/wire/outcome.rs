//! One task's successful outcome on the wire, written with less work than serde's enum path.
//!
//! A `Results` payload is one `Vec<Result<R, Failure>>` (see `protocol`). In the workspace's
//! bincode configuration a `Result` is its variant index as a varint `u32` (0 for `Ok`, 1 for
//! `Err`: one byte, equal to the index, as every varint up to 250 is) followed by the value. A
//! `u8` is one raw byte, and a tuple is its elements with nothing around them, so the tuple
//! `(0u8, value)` encodes to exactly the bytes of `Ok(value)`, and `(1u8, failure)` to those of
//! `Err(failure)`. Written as such a tuple, a worker's `Ok` outcome skips serde's enum
//! machinery (an enum access and a varint per outcome): a `map` of 1 M trivial tasks went from
//! 52-59 to 66-68 M tasks/s (interleaved A/B on the 2-vCPU VM). The bytes are the same, and
//! every reader decodes them as `Result<R, Failure>` (the tests below check it). Reading them
//! as a tuple too was tried and measured slower than bincode's enum path (its tuple access is
//! not inlined), so the reading side keeps `Result`.

use serde::ser::{Serialize, SerializeTuple, Serializer};

/// The variant index of `Ok`.
const OK: u8 = 0;

/// A successful outcome, encoding to the bytes of `Ok::<R, Failure>(value)`.
pub(crate) struct OkWire<'a, R>(pub(crate) &'a R);

impl<R: Serialize> Serialize for OkWire<'_, R> {
    #[inline]
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&OK)?;
        t.serialize_element(self.0)?;
        t.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Failure;
    use crate::wire::codec;

    /// `OkWire` writes the bytes of `Ok`, which read back as a `Result`, alone or in a run
    /// with failures.
    #[test]
    fn the_bytes_are_those_of_a_result() {
        for v in [0u64, 7, 250, 251, 65_535, 1 << 40, u64::MAX] {
            let ours = codec::encode(&OkWire(&v)).unwrap();
            assert_eq!(ours, codec::encode(&Ok::<u64, Failure>(v)).unwrap(), "{v}");
            assert_eq!(codec::decode::<Result<u64, Failure>>(&ours).unwrap(), Ok(v));
        }
        let text = String::from("a string result");
        let ours = codec::encode(&OkWire(&text)).unwrap();
        assert_eq!(ours, codec::encode(&Ok::<&str, Failure>(&text)).unwrap());
        let failure = Failure::Panicked("boom".into());
        let mut run = codec::encode(&3u64).unwrap();
        codec::encode_into(&OkWire(&1u64), &mut run).unwrap();
        codec::encode_into(&Err::<u64, Failure>(failure.clone()), &mut run).unwrap();
        codec::encode_into(&OkWire(&3u64), &mut run).unwrap();
        let back: Vec<Result<u64, Failure>> = codec::decode(&run).unwrap();
        assert_eq!(back, vec![Ok(1), Err(failure), Ok(3)]);
    }
}
