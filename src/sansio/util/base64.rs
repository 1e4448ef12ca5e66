//! Standard base64 (RFC 4648, with padding), as etcd's JSON gateway and
//! Consul's KV API use it. Small enough to not pull in a crate.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Encodes `input` with padding.
pub fn encode(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b0 = chunk.first().copied().unwrap_or(0);
        let b1 = chunk.get(1).copied();
        let b2 = chunk.get(2).copied();
        let n = (u32::from(b0) << 16) | (u32::from(b1.unwrap_or(0)) << 8) | u32::from(b2.unwrap_or(0));
        out.push(sextet(n >> 18));
        out.push(sextet(n >> 12));
        out.push(if b1.is_some() { sextet(n >> 6) } else { '=' });
        out.push(if b2.is_some() { sextet(n) } else { '=' });
    }
    out
}

fn sextet(n: u32) -> char {
    // `n & 63` is always a valid index; `get` keeps clippy's indexing lint happy.
    ALPHABET.get((n & 63) as usize).map_or('A', |&b| char::from(b))
}

fn value(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Why a base64 text was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The length is not a multiple of four.
    BadLength(usize),
    /// A byte outside the alphabet, or padding in the middle.
    BadByte(usize),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::BadLength(n) => write!(f, "base64 length {n} is not a multiple of 4"),
            DecodeError::BadByte(i) => write!(f, "invalid base64 byte at offset {i}"),
        }
    }
}

/// Decodes padded standard base64.
pub fn decode(input: &str) -> Result<Vec<u8>, DecodeError> {
    let bytes = input.as_bytes();
    if bytes.len() % 4 != 0 {
        return Err(DecodeError::BadLength(bytes.len()));
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let quads = bytes.len() / 4;
    for (qi, quad) in bytes.chunks(4).enumerate() {
        let last = qi + 1 == quads;
        let mut n: u32 = 0;
        let mut pad = 0usize;
        for (i, &c) in quad.iter().enumerate() {
            let offset = qi * 4 + i;
            if c == b'=' {
                // Padding only at the end of the last quad, at most two.
                if !last || i < 2 {
                    return Err(DecodeError::BadByte(offset));
                }
                pad += 1;
                n <<= 6;
                continue;
            }
            if pad > 0 {
                return Err(DecodeError::BadByte(offset));
            }
            n = (n << 6) | value(c).ok_or(DecodeError::BadByte(offset))?;
        }
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend(decoded.iter().take(3 - pad));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn round_trips_rfc4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(encode(plain.as_bytes()), encoded);
            assert_eq!(decode(encoded).unwrap(), plain.as_bytes());
        }
    }

    #[test]
    fn round_trips_every_byte_value() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)).unwrap(), all);
    }

    #[test]
    fn refuses_bad_input() {
        assert_eq!(decode("Zm9"), Err(DecodeError::BadLength(3)));
        assert_eq!(decode("Zm9*"), Err(DecodeError::BadByte(3)));
        assert_eq!(decode("Z=9v"), Err(DecodeError::BadByte(1)));
        assert_eq!(decode("Zg==Zm9v"), Err(DecodeError::BadByte(2)));
    }
}
