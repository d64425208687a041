//! The wire format: every message that crosses the network is a version byte followed by
//! a bincode (v2, serde) body. This is the one module that knows the encoding, so the
//! format can change in one place; every decode takes a size cap and fails with a
//! [`CodecError`] instead of panicking.

use serde::{de::DeserializeOwned, Serialize};

/// The current wire version. Bump it when a message shape changes incompatibly.
pub const WIRE_VERSION: u8 = 3;

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

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 64 * 1024 * 1024 }>()
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
    let (value, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
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
