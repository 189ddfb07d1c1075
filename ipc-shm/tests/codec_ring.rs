//! `codec::decode_ring`: values decoded straight out of a ring (the pool's bulk area) equal
//! those [`decode`] makes of the same bytes, wherever they sit in the ring; garbage, short
//! input and hostile lengths are typed errors that never allocate more than the input holds.
#![cfg(feature = "codec")]

use std::collections::BTreeMap;

use ipc_shm::codec::{
    DecodeError, EncodeError, MAX_FRAME_LEN, decode, decode_ring, encode, encode_to_ring,
    encoded_len,
};
use ipc_shm::{ByteRing, HeapRing, SegmentBuilder, ShmRing};
use ipc_tests::alloc::{CountingAllocator, largest_allocation};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Byte strings everywhere the wrapper must reach: at the top, in options, newtypes, tuples,
/// sequences, maps (keys and values) and every kind of enum variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Msg {
    Unit,
    Blob(ByteBuf),
    Tuple(u8, ByteBuf, String),
    Fields {
        id: u64,
        name: String,
        data: Option<ByteBuf>,
        parts: Vec<ByteBuf>,
        index: BTreeMap<String, ByteBuf>,
    },
    Wrapped(Wrapper),
    Plain(Vec<u8>, char, i128, f64, bool),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Wrapper(#[serde(with = "serde_bytes")] Vec<u8>);

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

fn samples() -> Vec<Msg> {
    vec![
        Msg::Unit,
        Msg::Blob(ByteBuf::from(vec![7u8; 5000])),
        Msg::Tuple(3, ByteBuf::from(b"xy".to_vec()), "héllo".into()),
        Msg::Fields {
            id: u64::MAX,
            name: String::new(),
            data: Some(ByteBuf::from(vec![1, 2, 3])),
            parts: vec![ByteBuf::new(), ByteBuf::from(vec![9; 300])],
            index: [("k".to_string(), ByteBuf::from(vec![4; 40]))].into(),
        },
        Msg::Wrapped(Wrapper(vec![0xAB; 1000])),
        Msg::Plain(vec![1, 2, 250], 'ß', -5, 0.25, true),
    ]
}

/// A ring holding `bytes` at position `pos` (wrapping), with other bytes around them.
fn ring_with(bytes: &[u8], cap: usize, pos: u64) -> HeapRing {
    let ring = HeapRing::new(cap).unwrap();
    ring.write(0, &vec![0xEE; cap]);
    ring.write(pos, bytes);
    ring
}

#[test]
fn values_decode_as_from_a_slice_wherever_they_sit_in_the_ring() {
    let msgs = samples();
    let bytes = encode(&msgs).unwrap();
    let cap = bytes.len().next_power_of_two();
    for pos in [0, 1, (cap - 3) as u64, (cap / 2) as u64, u64::MAX - 2] {
        let ring = ring_with(&bytes, cap, pos);
        let got: Vec<Msg> = decode_ring(&ring, pos, bytes.len()).unwrap();
        assert_eq!(got, msgs);
        assert_eq!(got, decode::<Vec<Msg>>(&bytes).unwrap());
    }
}

/// Values around the size below which `decode_ring` copies the bytes out and decodes them as a
/// slice (512 bytes) decode the same either way, across the ring's end too.
#[test]
fn short_and_long_values_decode_alike_around_the_copy_out_size() {
    for payload in [0, 1, 300, 507, 508, 509, 510, 600] {
        let value = (ByteBuf::from(vec![0x5A; payload]), Some('λ'));
        let bytes = encode(&value).unwrap();
        for pos in [0, 1024 - 7, 2048 - bytes.len() as u64 / 2] {
            let ring = ring_with(&bytes, 1024, pos);
            let got: (ByteBuf, Option<char>) = decode_ring(&ring, pos, bytes.len()).unwrap();
            assert_eq!(got, value, "{payload} bytes at {pos}");
            assert!(matches!(
                decode_ring::<(ByteBuf, Option<char>), _>(&ring, pos, bytes.len() - 1),
                Err(DecodeError::Bincode(_))
            ));
        }
    }
}

#[test]
fn a_shared_segment_ring_decodes_too() {
    let bytes = encode(&(ByteBuf::from(vec![5u8; 100_000]), "tail".to_string())).unwrap();
    let seg = SegmentBuilder::new(1 << 17).create().unwrap();
    let ring = ShmRing::new(&seg, 0, 1 << 17).unwrap();
    ring.write(0, &bytes);
    let (buf, tail): (ByteBuf, String) = decode_ring(&ring, 0, bytes.len()).unwrap();
    assert_eq!(
        (buf.len(), buf.iter().all(|&b| b == 5), tail.as_str()),
        (100_000, true, "tail")
    );
}

#[test]
fn a_byte_string_takes_one_allocation_of_its_own_size() {
    let bytes = encode(&ByteBuf::from(vec![3u8; 70_000])).unwrap();
    let ring = ring_with(&bytes, 1 << 17, 5);
    let (buf, largest) = largest_allocation(|| decode_ring::<ByteBuf, _>(&ring, 5, bytes.len()));
    assert_eq!(buf.unwrap().len(), 70_000);
    assert_eq!(largest, 70_000);
}

#[test]
fn short_input_trailing_bytes_and_oversized_lengths_are_typed_errors() {
    let bytes = encode(&samples()).unwrap();
    let ring = ring_with(&bytes, bytes.len().next_power_of_two(), 0);
    for len in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        assert!(matches!(
            decode_ring::<Vec<Msg>, _>(&ring, 0, len),
            Err(DecodeError::Bincode(_))
        ));
    }
    let ring = ring_with(&encode(&(1u8, 2u8)).unwrap(), 16, 0);
    assert!(matches!(
        decode_ring::<u8, _>(&ring, 0, 2),
        Err(DecodeError::TrailingBytes {
            trailing: 1,
            len: 2
        })
    ));
    assert!(matches!(
        decode_ring::<u8, _>(&ring, 0, 17),
        Err(DecodeError::BeyondRing { len: 17, cap: 16 })
    ));
    assert!(matches!(
        decode_ring::<u8, _>(&ring, 0, MAX_FRAME_LEN + 1),
        Err(DecodeError::TooLong { .. })
    ));
}

#[test]
fn a_byte_string_longer_than_the_input_and_bad_utf8_keep_bincodes_error() {
    // A byte string claiming 2^40 bytes, followed by 3 (a short input, copied out and decoded
    // as a slice) or by 3000 (decoded in the ring).
    for tail in [3, 3000] {
        let bytes = [encode(&(1u64 << 40)).unwrap(), vec![1; tail]].concat();
        let ring = ring_with(&bytes, 4096, 0);
        let (r, largest) = largest_allocation(|| decode_ring::<ByteBuf, _>(&ring, 0, bytes.len()));
        assert!(
            matches!(
                r,
                Err(DecodeError::Bincode(
                    bincode::error::DecodeError::UnexpectedEnd { .. }
                ))
            ),
            "{tail}: {r:?}"
        );
        assert!(largest < 4096, "allocated {largest} bytes");
    }
    let bytes = encode(&ByteBuf::from(vec![0xC3, 0x28])).unwrap(); // not UTF-8
    let ring = ring_with(&bytes, 64, 0);
    assert!(matches!(
        decode_ring::<String, _>(&ring, 0, bytes.len()),
        Err(DecodeError::Bincode(
            bincode::error::DecodeError::Utf8 { .. }
        ))
    ));
}

/// The writer into a ring stages short writes (integers, lengths) and copies long ones straight
/// in: the bytes in the ring are `encode`'s, wherever they start (across the end of the ring
/// too), whatever the mix of short and long writes around the stage's size.
fn encodes_like_encode<T: Serialize>(value: &T, cap: usize, pos: u64) {
    let want = encode(value).unwrap();
    let len = encoded_len(value).unwrap();
    assert_eq!(len, want.len());
    let ring = HeapRing::new(cap).unwrap();
    encode_to_ring(value, &ring, pos, len).unwrap();
    let mut got = vec![0u8; len];
    ring.read(pos, &mut got);
    assert_eq!(got, want);
    // A reserved length that is not the encoding's is refused, never written past.
    assert!(matches!(
        encode_to_ring(value, &ring, pos, len - 1),
        Err(EncodeError::Bincode(_))
    ));
}

#[test]
fn a_ring_holds_exactly_what_encode_makes() {
    let integers: Vec<u64> = (0..5000u64).map(|i| i * i * 7919).collect();
    encodes_like_encode(&integers, 1 << 16, (1 << 16) - 100);
    for long in [255, 256, 257, 511, 512, 513, 4000] {
        let mixed: Vec<(u32, ByteBuf, String)> = (0..40u32)
            .map(|i| {
                (
                    i,
                    ByteBuf::from(vec![i as u8; long + i as usize]),
                    "x".repeat(i as usize * 13),
                )
            })
            .collect();
        encodes_like_encode(&mixed, 1 << 20, (1 << 20) - 1000);
        encodes_like_encode(&samples(), 8192, 8000 + long as u64);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Garbage gives the same verdict as `decode` of the same bytes, and never allocates more
    /// than the decode limit: short inputs (copied out of the ring and decoded as a slice) and
    /// longer ones (decoded in the ring).
    #[test]
    fn garbage_is_refused_like_decode_refuses_it(bytes in proptest::collection::vec(any::<u8>(), 0..1200), pos in any::<u64>()) {
        let ring = ring_with(&bytes, 2048, pos);
        let (r, largest) = largest_allocation(|| {
            (
                decode_ring::<Msg, _>(&ring, pos, bytes.len()).ok(),
                decode_ring::<Vec<String>, _>(&ring, pos, bytes.len()).ok(),
                decode_ring::<(u64, ByteBuf, Option<String>), _>(&ring, pos, bytes.len()).ok(),
            )
        });
        prop_assert!(largest <= 1 << 20, "allocated {} bytes", largest);
        prop_assert_eq!(r.0, decode::<Msg>(&bytes).ok());
        prop_assert_eq!(r.1, decode::<Vec<String>>(&bytes).ok());
        prop_assert_eq!(r.2, decode::<(u64, ByteBuf, Option<String>)>(&bytes).ok());
    }
}
