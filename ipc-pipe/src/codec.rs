//! The message encoding of `send`/`recv`: one bincode configuration with one decode limit, and
//! the decoder that rejects trailing bytes. (The workspace's shared frame codec replaces this
//! module later; it is the pipe's only copy.)

use serde::de::DeserializeOwned;

/// The bincode limit: no decoded container may claim more (guards allocations against a hostile
/// peer announcing huge lengths).
const DECODE_LIMIT: usize = 1 << 32;

/// The bincode configuration of every message: little-endian, varint, [`DECODE_LIMIT`].
pub(crate) type BincodeConfig = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_LIMIT>,
>;

/// The configuration value.
pub(crate) fn config() -> BincodeConfig {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Decodes one value that must use all of `buf`.
pub(crate) fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<T, bincode::error::DecodeError> {
    let (value, used) = bincode::serde::decode_from_slice(buf, config())?;
    if used != buf.len() {
        return Err(bincode::error::DecodeError::OtherString(format!(
            "{} trailing bytes after the value",
            buf.len() - used
        )));
    }
    Ok(value)
}
