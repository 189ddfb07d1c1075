//! The one frame format and the one bincode configuration, with one decode limit (feature
//! `codec`).
//!
//! The queue, the pipe and the pool all send serde values as length-prefixed frames through
//! bytes that another process writes. They share this module, so a length read from shared memory
//! is validated the same way everywhere, and every decoder has the same allocation bound.
//!
//! # Frame format
//!
//! ```text
//! offset 0        4            8
//!        | len    | len ^ CHECK | len payload bytes ... | (zero padding, optional)
//!          u32 LE   u32 LE
//! ```
//!
//! An 8-byte [`FrameHeader`]: the payload length as a little-endian `u32`, then the same length
//! XORed with a fixed constant. The check word makes a header read from garbage (a scribbled
//! ring, a stream that lost its place) fail as [`FrameError::BadCheck`] with probability
//! 1 - 2^-32 instead of being taken as a length. Why this layout:
//!
//! - **`u32`, not `u64`.** No frame may exceed [`MAX_FRAME_LEN`] (1 GiB), which fits in 32 bits,
//!   so the upper half of a `u64` would only carry zeros; spending those 4 bytes on a check word
//!   keeps the header at 8 bytes (the pipe's header size today) and adds corruption detection
//!   (the queue's header today).
//! - **8 bytes.** A ring that starts every frame at a multiple of [`FRAME_ALIGN`] (the queue pads
//!   payloads with [`padded_frame_len`]) never has a header wrap around its end, and the payload
//!   that follows is 8-aligned. A stream (the pipe) simply does not pad: padding is how a ring
//!   places frames, not part of the header.
//! - **Little-endian**, like bincode's configuration and every target this workspace supports.
//!
//! # Encoding
//!
//! [`BINCODE_CONFIG`] is bincode 2's standard configuration with fixed-width integers
//! (little-endian; a `u64` or a length is 8 bytes, an enum's variant index 4) and a decode limit
//! of [`DECODE_LIMIT`]. Fixed width, not bincode's default varints, because integers are what
//! the pool's maps move most, and a varint costs a branch on its size class and two writes to
//! encode, and a tag byte to decode: over 125 000 `u64`s (squares up to 1.6e10) into a vector,
//! encoding took 0.42-0.56 ms as varints against 0.15-0.21 ms fixed, decoding 0.26-0.44 ms
//! against 0.15-0.22 ms (same run, 2-vCPU VM), for 16% more bytes (1.00 MB against 0.86 MB;
//! small numbers grow more: a length or a counter under 251 took one byte). Frames in a ring
//! are padded to 8 bytes anyway, so a short message mostly keeps its size. [`sequence_len`]
//! reads the element count a sequence's bytes start with. [`encode_into`] appends a bare value,
//! [`encode_frame`] a header and the value; both refuse a value longer than [`MAX_FRAME_LEN`].
//! [`decode`] decodes a value that must use every byte it is given (trailing bytes are a typed
//! error, not silently ignored); its byte strings are lent by the slice and copied once, instead
//! of bincode's zero-fill then copy (`codec/fill.rs`).
//! [`decode_ring`] decodes the same bytes straight out of a ring in shared memory, and fills byte
//! strings once too (`codec/from_ring.rs`); a short value is copied out first.
//!
//! # Bounded allocation
//!
//! A frame comes from another process, which may be buggy or hostile. Two bounds apply:
//!
//! 1. A length *header* is checked against the caller's maximum and [`MAX_FRAME_LEN`] by
//!    [`FrameHeader::parse`] / [`frame_len`] before the caller allocates a buffer for the payload.
//! 2. Inside the payload, bincode reads container lengths (a string's, a vector's) and allocates
//!    for them. Every decoder of this module wraps bincode's deserializer (`codec/fill.rs`) so
//!    that a byte string or string is read within the bytes left in the input: from a slice,
//!    bincode's borrowing calls lend it (a length beyond the slice is `UnexpectedEnd`) and the
//!    value copies it once; from a ring, the length is checked before a vector is filled. So a
//!    10-byte payload claiming a 2^60-byte string is [`DecodeError::Bincode`] (`UnexpectedEnd`)
//!    *before* anything is allocated, and no byte string allocates more than the input's length
//!    (at most [`DECODE_LIMIT`]). Sequences and maps preallocate at most serde's cautious size
//!    hint (1 MiB) and grow only with elements actually decoded.
//!
//! Because the wrapper bounds every byte string by the input, these decoders run bincode without
//! its own limit ([`BINCODE_CONFIG`] has it, for callers that drive bincode themselves): bincode
//! 2.0.1 checks that limit on every integer it decodes, and the check cost a third of decoding
//! a sequence of integers.

use bincode::config::{Configuration, Fixint, Limit, LittleEndian, NoLimit};
use serde::Serialize;
use serde::de::{DeserializeOwned, DeserializeSeed};

use crate::ring::ByteRing;

mod fill;
mod from_ring;

/// The largest payload one frame may carry: 1 GiB (the pipe's default maximum message size, and
/// the queue's largest ring).
pub const MAX_FRAME_LEN: usize = 1 << 30;

/// The most bytes one decode may allocate for one length it reads: a byte string is bounded by
/// the input, itself at most [`MAX_FRAME_LEN`]; [`BINCODE_CONFIG`] makes bincode enforce this
/// bound for callers that drive bincode themselves (see the module docs).
pub const DECODE_LIMIT: usize = MAX_FRAME_LEN;

/// The size of a [`FrameHeader`] in bytes.
pub const HEADER_LEN: usize = 8;

/// The alignment of frames in a ring that pads them ([`padded_frame_len`]).
pub const FRAME_ALIGN: usize = 8;

/// XORed with the length to make the header's check word.
const FRAME_CHECK: u32 = 0x9e37_79b9;

/// The type of [`BINCODE_CONFIG`].
pub type BincodeConfig = Configuration<LittleEndian, Fixint, Limit<DECODE_LIMIT>>;

/// The one bincode configuration: standard, with fixed-width integers (little-endian; see
/// "Encoding" for why not varints), and the [`DECODE_LIMIT`]. For callers that drive bincode
/// themselves (a custom writer or reader): the encoders of this module use it, its decoders the
/// same configuration without the limit, which their wrapper makes redundant (see "Bounded
/// allocation").
pub const BINCODE_CONFIG: BincodeConfig = bincode::config::standard()
    .with_fixed_int_encoding()
    .with_limit::<DECODE_LIMIT>();

/// [`BINCODE_CONFIG`] without bincode's decode limit, for this module's decoders only: they
/// wrap bincode's deserializer in `fill::Fill`, which reads every byte string within the bytes
/// left in the input, so the limit has nothing left to bound (see "Bounded allocation"). It is
/// left off because bincode 2.0.1 checks it on every integer it decodes and builds and drops an
/// error value each time (`ok_or(DecodeError::LimitExceeded)`, whose drop glue is not
/// inlined): decoding 125 000 `u64`s from a slice took 1.0-1.2 ms with the limit and
/// 0.68-0.80 ms without (same run).
const UNLIMITED: Configuration<LittleEndian, Fixint, NoLimit> =
    bincode::config::standard().with_fixed_int_encoding();

/// Why a frame header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The check word does not match the length: the bytes are not a header (corrupted memory,
    /// or a reader that lost its place in the stream).
    #[error("corrupted frame header (length {len:#x}, check word {check:#x})")]
    BadCheck {
        /// The length word as read.
        len: u32,
        /// The check word as read.
        check: u32,
    },
    /// The length is larger than the caller's maximum (or [`MAX_FRAME_LEN`]).
    #[error("a frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLong {
        /// The length announced or asked for.
        len: u64,
        /// The maximum that applied.
        max: usize,
    },
}

/// Why a value could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// bincode (or the value's `Serialize` impl) failed.
    #[error("could not encode the value")]
    Bincode(#[source] bincode::error::EncodeError),
    /// The encoding is longer than [`MAX_FRAME_LEN`].
    #[error("the encoded value is {len} bytes long; the maximum is {max}")]
    TooLong {
        /// The encoded length.
        len: usize,
        /// [`MAX_FRAME_LEN`].
        max: usize,
    },
}

/// Why bytes could not be decoded as a value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// bincode (or the type's `Deserialize` impl) rejected the bytes: truncated, malformed, of
    /// another type, or claiming more than the input holds.
    #[error("could not decode the value")]
    Bincode(#[source] bincode::error::DecodeError),
    /// The value ended before the bytes did.
    #[error("{trailing} trailing bytes after the value (of {len})")]
    TrailingBytes {
        /// Bytes left over.
        trailing: usize,
        /// Bytes given.
        len: usize,
    },
    /// More bytes than any frame may carry were given.
    #[error("{len} bytes exceed the maximum frame of {max} bytes")]
    TooLong {
        /// Bytes given.
        len: usize,
        /// [`MAX_FRAME_LEN`].
        max: usize,
    },
    /// More bytes than the ring holds were asked for ([`decode_ring`]).
    #[error("{len} bytes asked for from a ring of {cap} bytes")]
    BeyondRing {
        /// Bytes asked for.
        len: usize,
        /// The ring's capacity.
        cap: usize,
    },
}

/// For crates whose public errors carry bincode's error type (the queue's and the pipe's): the
/// bincode error itself, or an equivalent one for the limits this module adds.
impl From<EncodeError> for bincode::error::EncodeError {
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::Bincode(e) => e,
            EncodeError::TooLong { len, max } => bincode::error::EncodeError::OtherString(format!(
                "the encoded value is {len} bytes long; the maximum is {max}"
            )),
        }
    }
}

/// For crates whose public errors carry bincode's error type: the bincode error itself,
/// `OtherString` for trailing bytes, and `LimitExceeded` for input longer than a frame.
impl From<DecodeError> for bincode::error::DecodeError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Bincode(e) => e,
            DecodeError::TrailingBytes { trailing, .. } => {
                bincode::error::DecodeError::OtherString(format!(
                    "{trailing} trailing bytes after the value"
                ))
            }
            DecodeError::TooLong { .. } | DecodeError::BeyondRing { .. } => {
                bincode::error::DecodeError::LimitExceeded
            }
        }
    }
}

/// The 8-byte header in front of every frame: the payload length and its check word.
///
/// ```
/// use ipc_shm::codec::{FrameError, FrameHeader, MAX_FRAME_LEN};
///
/// let bytes = FrameHeader::new(300)?.to_bytes();
/// assert_eq!(FrameHeader::parse(bytes, 1024)?.len(), 300);
/// assert!(matches!(FrameHeader::parse(bytes, 100), Err(FrameError::TooLong { .. })));
/// assert!(matches!(FrameHeader::parse([0xff; 8], MAX_FRAME_LEN), Err(FrameError::BadCheck { .. })));
/// # Ok::<(), FrameError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    len: u32,
}

impl FrameHeader {
    /// The header of a frame carrying `len` payload bytes; fails with [`FrameError::TooLong`]
    /// if `len` exceeds [`MAX_FRAME_LEN`].
    #[inline]
    pub fn new(len: usize) -> Result<Self, FrameError> {
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLong {
                len: len as u64,
                max: MAX_FRAME_LEN,
            });
        }
        // `MAX_FRAME_LEN` fits in a u32.
        Ok(FrameHeader { len: len as u32 })
    }

    /// The payload length.
    #[inline]
    #[allow(clippy::len_without_is_empty)]
    pub fn len(self) -> usize {
        self.len as usize
    }

    /// The header as written in front of the payload.
    #[inline]
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&self.len.to_le_bytes());
        h[4..].copy_from_slice(&(self.len ^ FRAME_CHECK).to_le_bytes());
        h
    }

    /// Validates header bytes read from shared memory or a stream: the check word must match,
    /// and the length must not exceed `max` (nor [`MAX_FRAME_LEN`], whatever `max` says).
    #[inline]
    pub fn parse(bytes: [u8; HEADER_LEN], max: usize) -> Result<Self, FrameError> {
        let [a, b, c, d, e, f, g, h] = bytes;
        let len = u32::from_le_bytes([a, b, c, d]);
        let check = u32::from_le_bytes([e, f, g, h]);
        if check != len ^ FRAME_CHECK {
            return Err(FrameError::BadCheck { len, check });
        }
        let max = max.min(MAX_FRAME_LEN);
        if len as usize > max {
            return Err(FrameError::TooLong {
                len: u64::from(len),
                max,
            });
        }
        Ok(FrameHeader { len })
    }
}

/// The payload length announced by `header`, validated as by [`FrameHeader::parse`]: check word
/// intact, length at most `max` and at most [`MAX_FRAME_LEN`]. Call it before allocating a buffer
/// for the payload.
///
/// ```
/// use ipc_shm::codec::{FrameHeader, frame_len};
///
/// let h = FrameHeader::new(42)?.to_bytes();
/// assert_eq!(frame_len(h, 4096)?, 42);
/// assert!(frame_len(h, 41).is_err());
/// # Ok::<(), ipc_shm::codec::FrameError>(())
/// ```
#[inline]
pub fn frame_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    FrameHeader::parse(header, max).map(FrameHeader::len)
}

/// The room a frame of `len` payload bytes takes in a ring that pads frames to [`FRAME_ALIGN`]:
/// the header plus the payload rounded up to a multiple of 8. (Callers pass validated lengths,
/// at most [`MAX_FRAME_LEN`], so this cannot overflow.)
#[inline]
pub const fn padded_frame_len(len: usize) -> usize {
    HEADER_LEN + len.div_ceil(FRAME_ALIGN) * FRAME_ALIGN
}

/// bincode's writer over a vector (no `io::Error` on the way, unlike `encode_into_std_write`).
struct VecWriter<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for VecWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Appends the encoding of `value` to `out`. On error `out` is left as it was.
///
/// Fails with [`EncodeError::TooLong`] if the encoding is longer than [`MAX_FRAME_LEN`], since
/// no frame could carry it.
///
/// ```
/// let mut buf = Vec::new();
/// ipc_shm::codec::encode_into(&("job", 7u32), &mut buf)?;
/// let (name, id): (String, u32) = ipc_shm::codec::decode(&buf)?;
/// assert_eq!((name.as_str(), id), ("job", 7));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[inline]
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    if let Err(e) = bincode::serde::encode_into_writer(value, VecWriter(out), BINCODE_CONFIG) {
        out.truncate(start);
        return Err(EncodeError::Bincode(e));
    }
    let len = out.len() - start;
    if len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(EncodeError::TooLong {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(())
}

/// The length of `value`'s encoding, found without writing it (byte strings are counted, not
/// copied): for a caller that wants a buffer of the right size before it encodes.
///
/// ```
/// let value = ("job", vec![1u8; 1000]);
/// assert_eq!(ipc_shm::codec::encoded_len(&value)?, ipc_shm::codec::encode(&value)?.len());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, EncodeError> {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, BINCODE_CONFIG)
        .map_err(EncodeError::Bincode)?;
    Ok(size.bytes_written)
}

/// Writes at least this long are *long* for [`encoded_len_coarse`]: byte strings and strings
/// of this size, which bincode writes in one piece (and [`encode_to_ring`] copies straight
/// into the ring, unstaged).
pub const LONG_WRITE: usize = STAGE / 2;

/// [`encoded_len`], for a caller that chooses where to encode by what a value is made of: gives
/// up (`Ok(None)`) as soon as more than `max_fine` bytes of the encoding are *fine-grained*,
/// written in pieces shorter than [`LONG_WRITE`] (integers, lengths, short strings), and
/// otherwise returns the whole length.
///
/// Encoding straight into shared memory ([`encode_to_ring`]) pays for long byte strings once
/// and saves a copy; a value of many small fields encodes faster into a `Vec` (one copy of the
/// result afterwards is cheap next to encoding it): 125 000 `u64`s took 1.1-1.3 ms into a ring
/// against 0.8-1.0 ms into a `Vec`, plus 0.19 ms to size them first. This tells the two apart
/// without sizing all of a value made of small fields.
///
/// ```
/// use ipc_shm::codec::{encoded_len, encoded_len_coarse};
///
/// let blob = (7u32, serde_bytes::ByteBuf::from(vec![0u8; 1 << 20]));
/// assert_eq!(encoded_len_coarse(&blob, 4096)?, Some(encoded_len(&blob)?));
/// let many = vec![300u64; 100_000];
/// assert_eq!(encoded_len_coarse(&many, 4096)?, None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn encoded_len_coarse<T: Serialize + ?Sized>(
    value: &T,
    max_fine: usize,
) -> Result<Option<usize>, EncodeError> {
    let mut size = CoarseSize {
        len: 0,
        fine: 0,
        max_fine,
    };
    match bincode::serde::encode_into_writer(value, &mut size, BINCODE_CONFIG) {
        Ok(()) => Ok(Some(size.len)),
        Err(_) if size.fine > max_fine => Ok(None),
        Err(e) => Err(EncodeError::Bincode(e)),
    }
}

/// bincode's writer for [`encoded_len_coarse`]: counts, and stops at too many fine bytes.
struct CoarseSize {
    len: usize,
    fine: usize,
    max_fine: usize,
}

impl bincode::enc::write::Writer for CoarseSize {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.len += bytes.len();
        if bytes.len() < LONG_WRITE {
            self.fine += bytes.len();
            if self.fine > self.max_fine {
                return Err(bincode::error::EncodeError::Other("mostly small fields"));
            }
        }
        Ok(())
    }
}

/// The encoding of `value` in a new vector.
#[inline]
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Appends one frame to `out`: a [`FrameHeader`], then the encoding of `value` (no padding).
/// Returns the payload length. On error `out` is left as it was.
///
/// ```
/// use ipc_shm::codec::{HEADER_LEN, decode, encode_frame, frame_len};
///
/// let mut buf = Vec::new();
/// let len = encode_frame("hello", &mut buf)?;
/// let header: [u8; HEADER_LEN] = buf[..HEADER_LEN].try_into()?;
/// assert_eq!(frame_len(header, 1024)?, len);
/// assert_eq!(decode::<String>(&buf[HEADER_LEN..])?, "hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[inline]
pub fn encode_frame<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<usize, EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    if let Err(e) = encode_into(value, out) {
        out.truncate(start);
        return Err(e);
    }
    let len = out.len() - start - HEADER_LEN;
    // `encode_into` refused anything longer than `MAX_FRAME_LEN`, so `new` cannot fail; map it
    // anyway rather than unwrap.
    let header = FrameHeader::new(len).map_err(|_| EncodeError::TooLong {
        len,
        max: MAX_FRAME_LEN,
    })?;
    out[start..start + HEADER_LEN].copy_from_slice(&header.to_bytes());
    Ok(len)
}

/// Decodes a `T` from the front of `bytes` and says how many bytes it used, bounded like
/// [`decode`]: for a caller that walks a sequence of values itself
/// (reading some of its bytes by hand), one value at a time. Bytes after the value are left
/// alone, so the caller checks that the whole input was used.
///
/// ```
/// use ipc_shm::codec::{decode_prefix, encode};
///
/// let mut bytes = encode(&300u32)?;
/// bytes.extend(encode(&"next")?);
/// let (first, used) = decode_prefix::<u32>(&bytes)?;
/// assert_eq!((first, used), (300, 4));
/// assert_eq!(decode_prefix::<String>(&bytes[used..])?.0, "next");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[inline]
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), DecodeError> {
    decode_prefix_seed(std::marker::PhantomData::<T>, bytes)
}

/// [`decode_prefix`] for a [`DeserializeSeed`]: decodes what `seed` reads from the front of
/// `bytes` and says how many bytes it used, bounded like [`decode`]. For a caller that reads a
/// run of values with one decoder (a seed that asks for a tuple and reads its elements one by
/// one, choosing each one's type as it goes) instead of one [`decode_prefix`] per value.
///
/// ```
/// use ipc_shm::codec::{decode_prefix_seed, encode};
/// use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
///
/// /// A count, then that many `u32`s: their sum.
/// struct Sum;
/// impl<'de> DeserializeSeed<'de> for Sum {
///     type Value = u64;
///     fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
///         d.deserialize_tuple(usize::MAX, self)
///     }
/// }
/// impl<'de> Visitor<'de> for Sum {
///     type Value = u64;
///     fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("a count and values")
///     }
///     fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
///         let count: u64 = seq.next_element()?.unwrap_or(0);
///         let mut sum = 0;
///         for _ in 0..count {
///             sum += u64::from(seq.next_element::<u32>()?.unwrap_or(0));
///         }
///         Ok(sum)
///     }
/// }
///
/// let bytes = encode(&vec![1u32, 2, 300])?;
/// assert_eq!(decode_prefix_seed(Sum, &bytes)?, (303, bytes.len()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[inline]
pub fn decode_prefix_seed<'de, S: DeserializeSeed<'de>>(
    seed: S,
    bytes: &'de [u8],
) -> Result<(S::Value, usize), DecodeError> {
    if bytes.len() > MAX_FRAME_LEN {
        return Err(DecodeError::TooLong {
            len: bytes.len(),
            max: MAX_FRAME_LEN,
        });
    }
    bincode::serde::seed_decode_from_slice(fill::Lent(seed), bytes, UNLIMITED)
        .map_err(DecodeError::Bincode)
}

/// Decodes a `T` that must use all of `bytes`; no byte string in it allocates more than
/// `bytes` holds.
///
/// Garbage is a typed error and never a panic or an unbounded allocation: see the module docs.
///
/// ```
/// use ipc_shm::codec::{DecodeError, decode, encode};
///
/// let mut bytes = encode(&5u8)?;
/// assert_eq!(decode::<u8>(&bytes)?, 5);
/// bytes.push(0);
/// assert!(matches!(decode::<u8>(&bytes), Err(DecodeError::TrailingBytes { trailing: 1, .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[inline]
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, used) = decode_prefix::<T>(bytes)?;
    if used != bytes.len() {
        return Err(DecodeError::TrailingBytes {
            trailing: bytes.len() - used,
            len: bytes.len(),
        });
    }
    Ok(value)
}

/// The number of bytes [`sequence_len`] reads: a sequence's element count is a `u64`.
pub const SEQUENCE_LEN_BYTES: usize = 8;

/// The element count that the encoding of a sequence (a `Vec`, a slice, a map) starts with, or
/// `None` if `bytes` is shorter than that count. Only a hint for sizing: bytes that are not a
/// sequence give some number, and decoding them judges them.
///
/// ```
/// use ipc_shm::codec::{encode, sequence_len};
///
/// assert_eq!(sequence_len(&encode(&vec![1u8, 2, 3])?), Some(3));
/// assert_eq!(sequence_len(&[3, 0]), None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[inline]
pub fn sequence_len(bytes: &[u8]) -> Option<u64> {
    bytes
        .first_chunk::<SEQUENCE_LEN_BYTES>()
        .map(|b| u64::from_le_bytes(*b))
}

/// Decodes a `T` that must use all of the `len` bytes at position `pos` of `ring` (shared
/// memory another process wrote), copying straight out of the ring: no intermediate buffer,
/// and byte strings (`serde_bytes`, `String`) are copied once into their own allocation instead
/// of bincode's zero-fill then copy. A short value (at most 512 bytes) is copied out onto the
/// stack once and decoded from there, which is cheaper than reading it piecemeal. The bytes are
/// the same as [`decode`] takes.
///
/// Bounded like [`decode`]: `len` at most the ring's capacity and [`MAX_FRAME_LEN`]
/// ([`DecodeError::BeyondRing`], [`DecodeError::TooLong`]), every read checked against `len`,
/// a byte string never longer than the bytes left. A peer writing the ring meanwhile can only
/// change the values decoded.
///
/// ```
/// use ipc_shm::codec::{decode_ring, encode};
/// use ipc_shm::{ByteRing, HeapRing};
///
/// let value = (String::from("job"), vec![7u32; 3]);
/// let bytes = encode(&value)?;
/// let ring = HeapRing::new(64)?;
/// ring.write(60, &bytes); // wraps around the end
/// assert_eq!(decode_ring::<(String, Vec<u32>), _>(&ring, 60, bytes.len())?, value);
/// assert!(decode_ring::<(String, Vec<u32>), _>(&ring, 60, bytes.len() - 1).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn decode_ring<T: DeserializeOwned, B: ByteRing + ?Sized>(
    ring: &B,
    pos: u64,
    len: usize,
) -> Result<T, DecodeError> {
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::TooLong {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    if len > ring.cap() {
        return Err(DecodeError::BeyondRing {
            len,
            cap: ring.cap(),
        });
    }
    if len <= SMALL_FROM_RING {
        return decode_small_from_ring(ring, pos, len);
    }
    let input = from_ring::RingInput::new(ring, pos, len);
    let mut decoder = bincode::serde::OwnedSerdeDecoder::from_reader(
        from_ring::RingReader::new(&input),
        UNLIMITED,
    );
    let decoded = T::deserialize(fill::Fill {
        inner: decoder.as_deserializer(),
        src: &input,
    });
    // An error the wrapper found is reported as itself, not as serde's message for it.
    if let Some(e) = input.error.take() {
        return Err(DecodeError::Bincode(e));
    }
    let value = decoded.map_err(DecodeError::Bincode)?;
    if input.used() != len {
        return Err(DecodeError::TrailingBytes {
            trailing: len - input.used(),
            len,
        });
    }
    Ok(value)
}

/// Values encoded in at most this many bytes are copied out of a ring onto the stack and decoded
/// from the copy ([`decode_small_from_ring`]).
const SMALL_FROM_RING: usize = 512;

/// [`decode_ring`] of a short value: one bounded copy out of the ring into a private buffer,
/// then the slice decoder. The ring decoder's reader pays a window and bounds checks per read
/// and its byte strings a ring copy each: a 64-byte `serde_bytes` message decoded in 89-94 ns
/// out of a ring against 32 ns from a slice (same run). The copy is private, so the bytes cannot
/// change while they are decoded.
#[inline]
fn decode_small_from_ring<T: DeserializeOwned, B: ByteRing + ?Sized>(
    ring: &B,
    pos: u64,
    len: usize,
) -> Result<T, DecodeError> {
    let mut buf = [0u8; SMALL_FROM_RING];
    let bytes = &mut buf[..len];
    ring.read(pos, bytes);
    decode(bytes)
}

/// bincode's writer into a ring: `left` bytes from position `pos`, copied with
/// [`ByteRing::write`] (raw copies, the wrap handled; no reference to the ring's bytes).
///
/// bincode writes most values a few bytes at a time (an integer, a length); a ring copy per write
/// made a sequence of 125 000 `u64`s encode 3.2x slower than into a `Vec` (2.8 ms against 0.88 ms).
/// So short writes are staged in a private buffer and copied into the ring [`STAGE`] bytes at a
/// time; a long write (a byte string) flushes the stage and goes straight into the ring, copied
/// once as before.
struct RingWriter<'r, R: ?Sized> {
    ring: &'r R,
    /// The ring position of the first staged byte (of the next write, if none is staged).
    pos: u64,
    /// Bytes still to write, staged ones not counted.
    left: usize,
    stage: [u8; STAGE],
    staged: usize,
}

/// The size of [`RingWriter`]'s stage; writes of at least [`LONG_WRITE`] (half of it) bypass it.
const STAGE: usize = 512;

impl<'r, R: crate::ByteRing + ?Sized> RingWriter<'r, R> {
    fn new(ring: &'r R, pos: u64, left: usize) -> Self {
        RingWriter {
            ring,
            pos,
            left,
            stage: [0; STAGE],
            staged: 0,
        }
    }

    /// Copies the staged bytes into the ring.
    #[inline]
    fn flush(&mut self) {
        if self.staged > 0 {
            self.ring.write(self.pos, &self.stage[..self.staged]);
            self.pos = self.pos.wrapping_add(self.staged as u64);
            self.staged = 0;
        }
    }
}

impl<R: crate::ByteRing + ?Sized> bincode::enc::write::Writer for RingWriter<'_, R> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        if bytes.len() > self.left {
            return Err(bincode::error::EncodeError::UnexpectedEnd);
        }
        self.left -= bytes.len();
        if bytes.len() >= LONG_WRITE {
            self.flush();
            self.ring.write(self.pos, bytes);
            self.pos = self.pos.wrapping_add(bytes.len() as u64);
            return Ok(());
        }
        if self.staged + bytes.len() > STAGE {
            self.flush();
        }
        self.stage[self.staged..self.staged + bytes.len()].copy_from_slice(bytes);
        self.staged += bytes.len();
        Ok(())
    }
}

/// Encodes `value` straight into `ring`, at positions `pos .. pos + len` (taken modulo the ring's
/// size, wrapping at its end): byte strings of 256 bytes or more are copied in once, with no
/// intermediate buffer; shorter writes (integers, lengths, small fields) gather in a 512-byte
/// stage first, one ring copy per stage. `len` is the encoding's length as counted by
/// [`encoded_len`] beforehand, and the caller has reserved those bytes (a queue holds its put
/// lock).
///
/// Writes never leave the reserved range: a value whose encoding turns out longer or shorter
/// than `len` (a `Serialize` impl that is not deterministic) fails with
/// [`EncodeError::Bincode`], and the bytes written so far are garbage the caller must not
/// publish. A `len` longer than the ring or than [`MAX_FRAME_LEN`] is [`EncodeError::TooLong`].
///
/// ```
/// use ipc_shm::codec::{decode_ring, encode_to_ring, encoded_len};
/// use ipc_shm::HeapRing;
///
/// let ring = HeapRing::new(64)?;
/// let value = ("wraps around", 7u32);
/// let len = encoded_len(&value)?;
/// encode_to_ring(&value, &ring, 60, len)?; // offsets 60..64, then 0..
/// assert_eq!(decode_ring::<(String, u32), _>(&ring, 60, len)?, ("wraps around".into(), 7));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn encode_to_ring<T: Serialize + ?Sized, R: crate::ByteRing + ?Sized>(
    value: &T,
    ring: &R,
    pos: u64,
    len: usize,
) -> Result<(), EncodeError> {
    let max = ring.cap().min(MAX_FRAME_LEN);
    if len > max {
        return Err(EncodeError::TooLong { len, max });
    }
    let mut w = RingWriter::new(ring, pos, len);
    bincode::serde::encode_into_writer(value, &mut w, BINCODE_CONFIG)
        .map_err(EncodeError::Bincode)?;
    w.flush();
    if w.left != 0 {
        return Err(EncodeError::Bincode(
            bincode::error::EncodeError::OtherString(format!(
                "the value's encoding changed length: {len} bytes counted, {} written",
                len - w.left
            )),
        ));
    }
    Ok(())
}
