//! The wire format: every message that crosses the network is a version byte followed by
//! a bincode (v2, serde) body. This is the one module that knows the encoding, so the
//! format can change in one place; every decode takes a size cap and fails with a
//! [`CodecError`] instead of panicking.
//!
//! # Allocation
//!
//! A message over its cap is refused before anything is decoded. Inside a message,
//! strings and byte strings carry their own length prefix, and bincode allocates what a
//! prefix announces before reading it; so a decode runs under a bincode limit chosen
//! from the message's own length. Bincode counts against the limit the bytes a string
//! takes and the in-memory size of each number it reads (8 for a `u64`, which the
//! varint encoding may hold in one byte): an honest message claims at most 8 bytes per
//! byte it carries, so the limit is the power of four at or above 8 × its length. A
//! length prefix that announces more — up to `u64::MAX` — is refused before anything is
//! allocated for it; what a lying prefix can allocate is below 32 × the message's own
//! length. Sequences are preallocated by serde, which caps that at 1 MiB whatever the
//! announced length, then grows as elements decode.

use serde::{de::DeserializeOwned, Serialize};

/// The current wire version. Bump it when a message shape changes incompatibly.
/// 4: heartbeats name their claims by number; gossip is unsigned (authenticated by its
/// link), so a node of version 3 would not hear a node of 4 anyway.
/// 5: sync frames carry `fresh` and `snapshot` (a new node's join by snapshot).
/// 6: sync frames carry `heads_digest` and `same` (a session ends at once when both
/// sides hold the same heads).
/// 7: sync frames carry `mine` and `covered` (a push session ends without automerge sync
/// when the peer holds the pushed changes).
/// 8: sync frames carry `need` (the responder asks for the dependencies of a push it
/// could not apply instead of syncing in full).
/// 9: sync frames and heartbeats name the sender's epoch (`epoch`).
pub const WIRE_VERSION: u8 = 9;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("message of {len} bytes exceeds the cap of {cap} bytes")]
    TooLarge { len: usize, cap: usize },
    #[error("empty message")]
    Empty,
    #[error("unsupported wire version {0} (this node speaks {WIRE_VERSION})")]
    Version(u8),
    #[error("malformed message: {0}")]
    Malformed(String),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Decodes `body` under a bincode limit of `LIMIT` bytes (what strings and byte strings
/// may claim, see the module doc).
fn decode_limited<T: DeserializeOwned, const LIMIT: usize>(
    body: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(body, config().with_limit::<LIMIT>())
}

/// The largest body decoded: 512 MiB, the most `max_sync_message_bytes` allows.
const MAX_BODY: usize = 512 * 1024 * 1024 + 1024;

/// Decodes `body` under the smallest limit, a power of four from 256 bytes, at or above
/// 8 × its length (see the module doc).
fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<(T, usize), CodecError> {
    if body.len() > MAX_BODY {
        return Err(CodecError::TooLarge {
            len: body.len(),
            cap: MAX_BODY,
        });
    }
    let honest = body.len().saturating_mul(8).max(2);
    let bits = honest.next_power_of_two().trailing_zeros();
    // Round the exponent up to an even one: limits are powers of four.
    let bits = (bits + 1) & !1;
    macro_rules! by_limit {
        ($($b:literal)*) => {
            match bits {
                $(b if b <= $b => decode_limited::<T, { (1u64 << $b) as usize }>(body),)*
                _ => decode_limited::<T, { (1u64 << 34) as usize }>(body),
            }
        };
    }
    by_limit!(8 10 12 14 16 18 20 22 24 26 28 30 32)
        .map_err(|e| CodecError::Malformed(e.to_string()))
}

/// Encodes `value` as `[WIRE_VERSION, bincode...]`.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![WIRE_VERSION];
    // Encoding plain serde data into a Vec cannot fail except through a bug in a
    // Serialize impl of ours; surface it as an empty body the peer will reject.
    if let Ok(body) = bincode::serde::encode_to_vec(value, config()) {
        out.extend_from_slice(&body);
    }
    out
}

/// Decodes a message produced by [`encode`], refusing anything larger than `cap` bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], cap: usize) -> Result<T, CodecError> {
    if bytes.len() > cap {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            cap,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != WIRE_VERSION {
        return Err(CodecError::Version(version));
    }
    let (value, used) = decode_body(body)?;
    if used != body.len() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Msg {
        a: u32,
        b: String,
    }

    #[test]
    fn round_trips_with_version_byte() {
        let m = Msg {
            a: 7,
            b: "x".into(),
        };
        let bytes = encode(&m);
        assert_eq!(bytes[0], WIRE_VERSION);
        assert_eq!(decode::<Msg>(&bytes, 1024).unwrap(), m);
    }

    #[test]
    fn refuses_oversized_empty_wrong_version_and_garbage() {
        let bytes = encode(&Msg {
            a: 1,
            b: "hello".into(),
        });
        assert!(matches!(
            decode::<Msg>(&bytes, 3),
            Err(CodecError::TooLarge { .. })
        ));
        assert_eq!(decode::<Msg>(&[], 10), Err(CodecError::Empty));
        let mut other = bytes.clone();
        other[0] = 99;
        assert_eq!(decode::<Msg>(&other, 1024), Err(CodecError::Version(99)));
        assert!(matches!(
            decode::<Msg>(&[WIRE_VERSION, 0xff, 0xff, 0xff], 1024),
            Err(CodecError::Malformed(_))
        ));
        let mut trailing = bytes;
        trailing.push(0);
        assert!(matches!(
            decode::<Msg>(&trailing, 1024),
            Err(CodecError::Malformed(_))
        ));
    }
}
