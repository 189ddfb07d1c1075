//! The shared frame codec: round trips, and garbage in (random bytes, corrupted and oversized
//! headers, hostile container lengths) gives typed errors, never a panic or an unbounded
//! allocation.
#![cfg(feature = "codec")]

use std::collections::BTreeMap;

use ipc_shm::codec::{
    self, DECODE_LIMIT, DecodeError, EncodeError, FRAME_ALIGN, FrameError, FrameHeader, HEADER_LEN,
    MAX_FRAME_LEN, decode, encode, encode_frame, encode_into, frame_len, padded_frame_len,
};
use ipc_tests::alloc::{CountingAllocator, largest_allocation};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Msg {
    Job {
        id: u64,
        name: String,
        args: Vec<i32>,
    },
    Stop,
    Blob(Vec<u8>),
    Map(BTreeMap<String, Option<f64>>),
}

/// Records the largest single allocation of each thread (the harness's one counting
/// allocator), so tests can show that decoding garbage never asks for more than the decode
/// limit.
#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

/// `n` as the codec writes a `u64` (and a length).
fn encoded_u64(n: u64) -> Vec<u8> {
    encode(&n).unwrap()
}

#[test]
fn values_round_trip() {
    let msgs = [
        Msg::Job {
            id: 7,
            name: "resize".into(),
            args: vec![-1, 0, i32::MAX],
        },
        Msg::Stop,
        Msg::Blob(vec![0xAB; 10_000]),
        Msg::Map([("a".to_string(), Some(1.5)), ("b".to_string(), None)].into()),
    ];
    for m in &msgs {
        assert_eq!(&decode::<Msg>(&encode(m).unwrap()).unwrap(), m);
    }
}

/// Byte strings and strings anywhere in a value (an option, a tuple, a sequence, a map's keys
/// and values, enum variants, a newtype) are decoded through the slice's lending path
/// (`codec/fill.rs`) exactly as encoded, and one nested in a sequence that claims more than the
/// input is bincode's `UnexpectedEnd`, with nothing near the claim allocated.
#[test]
fn nested_byte_strings_are_lent_by_the_slice_and_bounded_by_it() {
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Named(String);
    type Nested = (
        Option<(String, serde_bytes::ByteBuf)>,
        Vec<Named>,
        BTreeMap<String, Vec<serde_bytes::ByteBuf>>,
        Vec<Msg>,
        char,
    );
    let value: Nested = (
        Some(("é∂".into(), serde_bytes::ByteBuf::from(vec![1, 2, 3]))),
        vec![Named("a".into()), Named(String::new())],
        [("k".into(), vec![serde_bytes::ByteBuf::from(vec![9; 300])])].into(),
        vec![
            Msg::Job {
                id: 1,
                name: "x".repeat(1000),
                args: vec![],
            },
            Msg::Map([("m".to_string(), None)].into()),
        ],
        'z',
    );
    let bytes = encode(&value).unwrap();
    assert_eq!(decode::<Nested>(&bytes).unwrap(), value);
    assert_eq!(
        codec::decode_prefix::<Nested>(&[&bytes[..], &[7, 7]].concat()).unwrap(),
        (value, bytes.len())
    );

    // Two strings, the second claiming 2^60 bytes.
    let hostile = [
        encoded_u64(2),
        encoded_u64(2),
        b"ok".to_vec(),
        encoded_u64(1 << 60),
    ]
    .concat();
    let (r, largest) = largest_allocation(|| decode::<Vec<String>>(&hostile));
    let Err(DecodeError::Bincode(e)) = r else {
        panic!("{r:?}")
    };
    assert!(
        matches!(e, bincode::error::DecodeError::UnexpectedEnd { .. }),
        "{e:?}"
    );
    assert!(largest < 4096, "allocated {largest} bytes");
    // The same through a seed (`decode_prefix_seed` wraps the seed's deserializer alike).
    let (r, largest) = largest_allocation(|| {
        codec::decode_prefix_seed(std::marker::PhantomData::<Vec<String>>, &hostile)
    });
    assert!(
        matches!(
            r,
            Err(DecodeError::Bincode(
                bincode::error::DecodeError::UnexpectedEnd { .. }
            ))
        ),
        "{r:?}"
    );
    assert!(largest < 4096, "allocated {largest} bytes");
}

#[test]
fn encode_into_appends_and_frames_carry_their_length() {
    let mut buf = b"prefix".to_vec();
    encode_into(&42u32, &mut buf).unwrap();
    assert_eq!(&buf[..6], b"prefix");
    assert_eq!(decode::<u32>(&buf[6..]).unwrap(), 42);

    let mut buf = vec![1, 2, 3];
    let msg = Msg::Job {
        id: 1,
        name: "x".repeat(300),
        args: vec![5; 10],
    };
    let len = encode_frame(&msg, &mut buf).unwrap();
    assert_eq!(buf.len(), 3 + HEADER_LEN + len);
    let header: [u8; HEADER_LEN] = buf[3..3 + HEADER_LEN].try_into().unwrap();
    assert_eq!(frame_len(header, MAX_FRAME_LEN).unwrap(), len);
    assert_eq!(decode::<Msg>(&buf[3 + HEADER_LEN..]).unwrap(), msg);
}

#[test]
fn unencodable_values_leave_the_buffer_alone() {
    struct Bad;
    impl Serialize for Bad {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("refused"))
        }
    }
    let mut buf = b"keep".to_vec();
    let err = encode_frame(&Bad, &mut buf).unwrap_err();
    assert!(matches!(err, EncodeError::Bincode(_)));
    assert!(
        std::error::Error::source(&err).is_some(),
        "bincode's error is the source"
    );
    assert_eq!(buf, b"keep");
    assert!(encode_into(&Bad, &mut buf).is_err());
    assert_eq!(buf, b"keep");
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = encode(&Msg::Stop).unwrap();
    bytes.extend_from_slice(&[0, 0, 0]);
    assert!(matches!(
        decode::<Msg>(&bytes),
        Err(DecodeError::TrailingBytes {
            trailing: 3,
            len: 7
        })
    ));
}

#[test]
fn errors_convert_to_bincode_errors() {
    let mut bytes = encode(&1u8).unwrap();
    bytes.push(0);
    let e: bincode::error::DecodeError = decode::<u8>(&bytes).unwrap_err().into();
    assert!(e.to_string().contains("1 trailing bytes"), "{e}");
    let e: bincode::error::DecodeError =
        decode::<String>(&encoded_u64(1 << 60)).unwrap_err().into();
    assert!(
        matches!(e, bincode::error::DecodeError::UnexpectedEnd { additional } if additional == 1 << 60),
        "{e:?}"
    );
}

#[test]
fn truncated_and_mistyped_input_is_a_typed_error() {
    let bytes = encode(&Msg::Job {
        id: 1,
        name: "abc".into(),
        args: vec![1, 2],
    })
    .unwrap();
    for cut in 0..bytes.len() {
        let err = decode::<Msg>(&bytes[..cut]).unwrap_err();
        assert!(matches!(err, DecodeError::Bincode(_)), "{cut}: {err:?}");
        assert!(std::error::Error::source(&err).is_some());
    }
    assert!(decode::<Msg>(&[9]).is_err(), "unknown variant");
    assert!(decode::<String>(&[2, 0xff, 0xfe]).is_err(), "invalid UTF-8");
}

#[test]
fn headers_are_validated() {
    let h = FrameHeader::new(1000).unwrap();
    assert_eq!(h.len(), 1000);
    let bytes = h.to_bytes();
    assert_eq!(FrameHeader::parse(bytes, 1000).unwrap(), h);
    assert_eq!(
        frame_len(bytes, 999).unwrap_err(),
        FrameError::TooLong {
            len: 1000,
            max: 999
        }
    );
    // The caller's maximum never lifts the global one.
    let big = FrameHeader::new(MAX_FRAME_LEN).unwrap().to_bytes();
    assert_eq!(frame_len(big, usize::MAX).unwrap(), MAX_FRAME_LEN);
    assert!(FrameHeader::new(MAX_FRAME_LEN + 1).is_err());

    // A zeroed ring is not an empty frame, and a flipped bit is noticed.
    assert!(matches!(
        frame_len([0; 8], MAX_FRAME_LEN),
        Err(FrameError::BadCheck { .. })
    ));
    for bit in 0..64 {
        let mut b = bytes;
        b[bit / 8] ^= 1 << (bit % 8);
        assert!(matches!(
            frame_len(b, MAX_FRAME_LEN),
            Err(FrameError::BadCheck { .. })
        ));
    }
}

/// A header whose check word matches but whose length is beyond `MAX_FRAME_LEN` (what a hostile
/// peer, not random corruption, would write) is refused as too long.
#[test]
fn oversized_length_headers_are_refused() {
    let check = FrameHeader::new(0).unwrap().to_bytes();
    let check_word = u32::from_le_bytes(check[4..].try_into().unwrap());
    for len in [MAX_FRAME_LEN as u32 + 1, u32::MAX, 3 << 30] {
        let mut h = [0u8; 8];
        h[..4].copy_from_slice(&len.to_le_bytes());
        h[4..].copy_from_slice(&(len ^ check_word).to_le_bytes());
        assert_eq!(
            frame_len(h, usize::MAX).unwrap_err(),
            FrameError::TooLong {
                len: u64::from(len),
                max: MAX_FRAME_LEN
            }
        );
    }
}

/// Payloads whose container lengths claim 2^60 (and other absurd sizes) are refused before
/// anything near the claim is allocated: a byte string longer than the input is bincode's
/// `UnexpectedEnd` (the slice lends it, `codec/fill.rs`), a sequence preallocates at most serde's
/// cautious hint. Had bincode allocated the claim, the process would have aborted instead of
/// returning.
#[test]
fn hostile_container_lengths_are_refused_before_allocating() {
    for claim in [1u64 << 60, u64::MAX, (DECODE_LIMIT as u64) + 1, 1 << 40] {
        let prefix = encoded_u64(claim);
        for err in [
            decode::<String>(&prefix).unwrap_err(),
            decode::<Vec<u8>>(&prefix).unwrap_err(),
            decode::<Vec<u64>>(&prefix).unwrap_err(),
            decode::<Msg>(&[&encode(&2u32).unwrap()[..], &prefix].concat()).unwrap_err(),
            decode::<BTreeMap<String, u64>>(&prefix).unwrap_err(),
        ] {
            assert!(matches!(err, DecodeError::Bincode(_)), "{claim}: {err:?}");
        }
    }
    // Refused before allocating: nothing near the claimed size was asked of the allocator.
    let (r, largest) = largest_allocation(|| decode::<String>(&encoded_u64(1 << 60)));
    assert!(largest < 4096, "allocated {largest} bytes");
    let DecodeError::Bincode(inner) = r.unwrap_err() else {
        panic!()
    };
    assert!(
        matches!(inner, bincode::error::DecodeError::UnexpectedEnd { additional } if additional == 1 << 60),
        "{inner:?}"
    );
}

#[test]
fn padded_lengths() {
    assert_eq!(padded_frame_len(0), HEADER_LEN);
    assert_eq!(padded_frame_len(1), HEADER_LEN + FRAME_ALIGN);
    assert_eq!(padded_frame_len(8), HEADER_LEN + 8);
    assert_eq!(padded_frame_len(9), HEADER_LEN + 16);
    assert_eq!(padded_frame_len(MAX_FRAME_LEN), HEADER_LEN + MAX_FRAME_LEN);
}

#[test]
fn the_configuration_is_the_limited_standard_one() {
    // Fixed-width little-endian integers: a u64 is 8 bytes, an enum's variant index 4, a
    // sequence starts with its length as a u64.
    assert_eq!(encode(&5u64).unwrap(), [5, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(encode(&Some(1u8)).unwrap(), [1, 1]);
    assert_eq!(encode(&Err::<u8, u8>(9)).unwrap(), [1, 0, 0, 0, 9]);
    let bytes = encode(&vec![7u16; 3]).unwrap();
    assert_eq!(bytes[..8], [3, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(codec::sequence_len(&bytes), Some(3));
    assert_eq!(codec::sequence_len(&bytes[..7]), None);
    let (v, used): (u64, usize) =
        bincode::serde::decode_from_slice(&[5, 0, 0, 0, 0, 0, 0, 0], codec::BINCODE_CONFIG)
            .unwrap();
    assert_eq!((v, used), (5, 8));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let ((), largest) = largest_allocation(|| {
            let _ = decode::<Msg>(&bytes);
            let _ = decode::<Vec<String>>(&bytes);
            let _ = decode::<(u64, Vec<u8>, Option<String>)>(&bytes);
            let _ = decode::<BTreeMap<u32, Vec<u64>>>(&bytes);
        });
        prop_assert!(largest <= DECODE_LIMIT, "allocated {} bytes", largest);
        if let Ok(h) = <[u8; HEADER_LEN]>::try_from(&bytes[..bytes.len().min(HEADER_LEN)]) {
            match frame_len(h, 4096) {
                Ok(len) => prop_assert!(len <= 4096),
                Err(FrameError::BadCheck { .. } | FrameError::TooLong { .. }) => {}
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
            }
        }
    }

    /// A valid value's encoding with a hostile length spliced in front of its container.
    #[test]
    fn hostile_lengths_never_allocate_unboundedly(claim in (MAX_FRAME_LEN as u64)..=u64::MAX, tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let bytes = [encoded_u64(claim), tail].concat();
        let (r, largest) = largest_allocation(|| {
            (
                decode::<String>(&bytes).is_err(),
                decode::<Vec<u8>>(&bytes).is_err(),
                decode::<Vec<Msg>>(&bytes).is_err(),
            )
        });
        prop_assert_eq!(r, (true, true, true));
        prop_assert!(largest <= DECODE_LIMIT, "allocated {} bytes", largest);
    }

    #[test]
    fn any_header_length_is_validated(len in any::<u32>(), check in any::<u32>(), max in any::<usize>()) {
        let mut h = [0u8; 8];
        h[..4].copy_from_slice(&len.to_le_bytes());
        h[4..].copy_from_slice(&check.to_le_bytes());
        if let Ok(n) = frame_len(h, max) {
            prop_assert!(n <= max.min(MAX_FRAME_LEN));
            prop_assert_eq!(FrameHeader::new(n).unwrap().to_bytes(), h);
        }
    }

    #[test]
    fn frames_round_trip(id in any::<u64>(), name in ".{0,40}", args in proptest::collection::vec(any::<i32>(), 0..50)) {
        let msg = Msg::Job { id, name, args };
        let mut buf = Vec::new();
        let len = encode_frame(&msg, &mut buf).unwrap();
        let h: [u8; HEADER_LEN] = buf[..HEADER_LEN].try_into().unwrap();
        prop_assert_eq!(frame_len(h, len).unwrap(), len);
        prop_assert_eq!(decode::<Msg>(&buf[HEADER_LEN..]).unwrap(), msg);
    }
}
