//! Encoding of arguments, results and protocol frames: bincode 2 (standard configuration)
//! over serde, plus a length-prefixed sequence format for batches.
//!
//! A batch is `[count: u32 LE]` then, per item, `[len: u32 LE][len bytes]`. Each item decodes
//! on its own, so one bad item fails only itself. Every length read is checked against the
//! bytes actually present.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why encoding or decoding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct CodecError(pub(crate) String);

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Appends the encoding of `value` to `out`.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map(drop)
        .map_err(|e| CodecError(e.to_string()))
}

/// The encoding of `value`.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Decodes a `T` that must use all of `bytes`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(bytes, config())
        .map_err(|e| CodecError(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError(format!(
            "{} trailing bytes after the value",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// Writes a length-prefixed sequence into a buffer.
pub(crate) struct SeqWriter<'a> {
    out: &'a mut Vec<u8>,
    count_at: usize,
    count: u32,
}

impl<'a> SeqWriter<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Self {
        let count_at = out.len();
        out.extend_from_slice(&0u32.to_le_bytes());
        SeqWriter {
            out,
            count_at,
            count: 0,
        }
    }

    /// Appends one encoded item; on error nothing is appended.
    pub(crate) fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CodecError> {
        let len_at = self.out.len();
        self.out.extend_from_slice(&0u32.to_le_bytes());
        if let Err(e) = encode_into(value, self.out) {
            self.out.truncate(len_at);
            return Err(e);
        }
        let len = self.out.len() - len_at - 4;
        let Ok(len) = u32::try_from(len) else {
            self.out.truncate(len_at);
            return Err(CodecError(format!("an item of {len} bytes is too large")));
        };
        self.out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
        self.count += 1;
        Ok(())
    }

    /// Appends one item written by `write` (which appends its bytes to the buffer).
    pub(crate) fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> Result<(), CodecError> {
        let len_at = self.out.len();
        self.out.extend_from_slice(&0u32.to_le_bytes());
        write(self.out);
        let len = self.out.len() - len_at - 4;
        let Ok(len) = u32::try_from(len) else {
            self.out.truncate(len_at);
            return Err(CodecError(format!("an item of {len} bytes is too large")));
        };
        self.out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
        self.count += 1;
        Ok(())
    }

    /// The bytes in the buffer so far.
    pub(crate) fn len(&self) -> usize {
        self.out.len()
    }

    /// The number of items pushed so far.
    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// Writes the final count.
    pub(crate) fn finish(self) {
        let at = self.count_at;
        self.out[at..at + 4].copy_from_slice(&self.count.to_le_bytes());
    }
}

/// Reads a length-prefixed sequence.
pub(crate) struct SeqReader<'a> {
    bytes: &'a [u8],
    left: u32,
}

impl<'a> SeqReader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Result<Self, CodecError> {
        let (count, rest) = split_u32(bytes)?;
        Ok(SeqReader {
            bytes: rest,
            left: count,
        })
    }

    /// The number of items not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.left as usize
    }

    /// The next item's bytes; `Some(Err)` once if the sequence is malformed (then `None`).
    pub(crate) fn next_item(&mut self) -> Option<Result<&'a [u8], CodecError>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let item = split_u32(self.bytes).and_then(|(len, rest)| {
            let len = len as usize;
            if len > rest.len() {
                return Err(CodecError(format!(
                    "an item claims {len} bytes, {} remain",
                    rest.len()
                )));
            }
            let (item, rest) = rest.split_at(len);
            self.bytes = rest;
            Ok(item)
        });
        if item.is_err() {
            self.left = 0;
        }
        Some(item)
    }
}

fn split_u32(bytes: &[u8]) -> Result<(u32, &[u8]), CodecError> {
    match bytes.split_first_chunk::<4>() {
        Some((head, rest)) => Ok((u32::from_le_bytes(*head), rest)),
        None => Err(CodecError("truncated sequence".into())),
    }
}
