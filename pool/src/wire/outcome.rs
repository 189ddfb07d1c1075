//! One task's successful outcome on the wire, written with less work than serde's enum path.
//!
//! A `Results` payload is one `Vec<Result<R, Failure>>` (see `protocol`). In the workspace's
//! bincode configuration a `Result` is its variant index as a little-endian `u32` (0 for `Ok`,
//! 1 for `Err`) followed by the value, and a tuple is its elements with nothing around them, so
//! the tuple `(0u32, value)` encodes to exactly the bytes of `Ok(value)`, and `(1u32, failure)`
//! to those of `Err(failure)`. Written as such a tuple, a worker's `Ok` outcome skips serde's
//! enum machinery (an enum access per outcome): a `map` of 1 M trivial tasks went from
//! 52-59 to 66-68 M tasks/s (interleaved A/B on the 2-vCPU VM). The bytes are the same, and
//! every reader decodes them as `Result<R, Failure>` (the tests below check it). Reading them
//! as a tuple too was tried and measured slower than bincode's enum path (its tuple access is
//! not inlined).
//!
//! The pool's own reader of a run ([`read_outcomes`]) skips the enum path altogether: it reads
//! the sequence's length, then for each outcome the variant index and the value, all with one
//! decoder (`ipc_shm::codec::decode_prefix_seed`). Serde's enum access (bincode's `variant_seed`, a
//! `u32` and its error's drop glue, the `Result` visitor) was about half of what the pool's
//! threads spent on a map of 1 M trivial tasks (perf, 2-vCPU VM). Bytes that are not such a
//! run (a variant index other than 0 or 1, a value that does not decode, bytes left over) make it
//! give up, and the caller decodes them as a `Vec<Result<R, Failure>>` for the error.

use std::marker::PhantomData;

use serde::de::{
    self, Deserialize, DeserializeOwned, DeserializeSeed, Deserializer, SeqAccess, Visitor,
};
use serde::ser::{Serialize, SerializeTuple, Serializer};

use crate::task::Failure;

/// The variant index of `Ok`.
const OK: u32 = 0;

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

/// The variant index of `Err`.
const ERR: u32 = 1;

/// The bytes a run of exactly one `Ok` outcome starts with: the sequence's length 1 (a `u64`)
/// and `Ok`'s variant index (a `u32`); the value follows. What an `apply`'s result looks like.
pub(crate) const ONE_OK: [u8; 12] = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// Reads the outcomes of a run (the bytes of a `Vec<Result<R, Failure>>`) in order, handing each
/// to `each`; returns how many there were, or `None` if the bytes are not exactly such a run
/// (`each` may have been called for the outcomes before the fault: the caller starts over with
/// the usual decode, which says what is wrong).
///
/// One decoder reads the whole run ([`ipc_shm::codec::decode_prefix_seed`]): the run's bytes
/// are read as one tuple of the count, then each outcome's variant index and its value, each
/// element's type chosen as it comes. A decoder per value (`decode_prefix` for each) cost a
/// decoder's set-up per outcome.
#[inline]
pub(crate) fn read_outcomes<R: DeserializeOwned>(
    payload: &[u8],
    each: impl FnMut(Result<R, Failure>),
) -> Option<u64> {
    let run = Run {
        each,
        _values: PhantomData,
    };
    let (count, used) = ipc_shm::codec::decode_prefix_seed(run, payload).ok()?;
    (used == payload.len()).then_some(count)
}

/// The seed and visitor of [`read_outcomes`].
struct Run<R, F> {
    each: F,
    _values: PhantomData<fn() -> R>,
}

impl<'de, R: DeserializeOwned, F: FnMut(Result<R, Failure>)> DeserializeSeed<'de> for Run<R, F> {
    type Value = u64;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        // As many elements as the bytes hold: the count says how many outcomes to read.
        d.deserialize_tuple(usize::MAX, self)
    }
}

impl<'de, R: DeserializeOwned, F: FnMut(Result<R, Failure>)> Visitor<'de> for Run<R, F> {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a run of outcomes")
    }

    #[inline]
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<u64, A::Error> {
        let count: u64 = next(&mut seq)?;
        // Every outcome takes at least its variant index, so a hostile count ends with the bytes.
        for _ in 0..count {
            let outcome = match next::<u32, A>(&mut seq)? {
                OK => Ok(next::<R, A>(&mut seq)?),
                ERR => Err(next::<Failure, A>(&mut seq)?),
                _ => return Err(de::Error::custom("not an outcome's variant")),
            };
            (self.each)(outcome);
        }
        Ok(count)
    }
}

/// The next element of the run, which must be there.
#[inline]
fn next<'de, T: Deserialize<'de>, A: SeqAccess<'de>>(seq: &mut A) -> Result<T, A::Error> {
    seq.next_element()?
        .ok_or_else(|| de::Error::custom("the run ended early"))
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
        assert_eq!(back, vec![Ok(1), Err(failure.clone()), Ok(3)]);
        // A run of one `Ok` starts with `ONE_OK`, then the value.
        let mut one = codec::encode(&1u64).unwrap();
        codec::encode_into(&OkWire(&5u64), &mut one).unwrap();
        assert_eq!(one[..ONE_OK.len()], ONE_OK);
        assert_eq!(codec::decode::<u64>(&one[ONE_OK.len()..]).unwrap(), 5);
        // The pool's reader sees the same outcomes.
        let mut read = Vec::new();
        assert_eq!(read_outcomes::<u64>(&run, |o| read.push(o)), Some(3));
        assert_eq!(read, back);
    }

    /// Bytes that are not exactly a run make the reader give up (the usual decode then says
    /// why): a bad variant index, a short value, bytes left over, a count beyond the bytes.
    #[test]
    fn the_reader_gives_up_on_anything_but_a_whole_run() {
        let mut run = codec::encode(&2u64).unwrap();
        codec::encode_into(&OkWire(&"ok"), &mut run).unwrap();
        codec::encode_into(
            &Err::<String, Failure>(Failure::Panicked("p".into())),
            &mut run,
        )
        .unwrap();
        let mut n = 0;
        assert_eq!(read_outcomes::<String>(&run, |_| n += 1), Some(2));
        assert_eq!(n, 2);
        let ignore = |_: Result<String, Failure>| {};
        let mut longer = run.clone();
        longer.push(0);
        assert_eq!(read_outcomes::<String>(&longer, ignore), None);
        assert_eq!(read_outcomes::<String>(&run[..run.len() - 1], ignore), None);
        let mut bad_variant = run.clone();
        bad_variant[8] = 2; // the first outcome's variant index, after the count
        assert_eq!(read_outcomes::<String>(&bad_variant, ignore), None);
        let mut huge = codec::encode(&u64::MAX).unwrap();
        huge.extend_from_slice(&run[8..]);
        assert_eq!(read_outcomes::<String>(&huge, ignore), None);
        assert!(codec::decode::<Vec<Result<String, Failure>>>(&bad_variant).is_err());
    }
}
