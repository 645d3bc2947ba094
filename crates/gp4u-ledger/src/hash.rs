//! RFC 6962 / RFC 9162 §2.1.1 hashing: domain-separated SHA-256 for leaves and interior nodes.

use sha2::{Digest, Sha256};

/// A SHA-256 digest: a leaf hash, a node hash or a tree root.
pub type Hash = [u8; 32];

/// Domain-separation prefix of a leaf hash (RFC 6962 §2.1).
pub const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix of an interior node hash (RFC 6962 §2.1).
pub const NODE_PREFIX: u8 = 0x01;

/// The hash of a log entry: `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(data);
    h.finalize().into()
}

/// The hash of an interior node: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    hash_children(left, right)
}

/// `SHA-256(0x01 ‖ left ‖ right)` over arbitrary byte strings (the RFC 6962 test vectors hash
/// children that are not 32 bytes long).
pub(crate) fn hash_children(left: &[u8], right: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Lowercase hex of any bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Error from [`hash_from_hex`] and [`bytes_from_hex`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    /// The input has an odd number of digits.
    #[error("hex input has odd length {0}")]
    OddLength(usize),
    /// The input holds a character that is not a hex digit.
    #[error("hex input has a non-hex character at byte {0}")]
    BadDigit(usize),
    /// The input does not decode to exactly 32 bytes.
    #[error("hex input decodes to {0} bytes, a hash needs 32")]
    WrongLength(usize),
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decode hex (either case) into bytes.
pub fn bytes_from_hex(s: &str) -> Result<Vec<u8>, HexError> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return Err(HexError::OddLength(b.len()));
    }
    let mut out = Vec::with_capacity(b.len() / 2);
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = hex_val(pair[0]).ok_or(HexError::BadDigit(2 * i))?;
        let lo = hex_val(pair[1]).ok_or(HexError::BadDigit(2 * i + 1))?;
        out.push(hi << 4 | lo);
    }
    Ok(out)
}

/// Decode 64 hex digits (either case) into a [`Hash`](type@Hash).
pub fn hash_from_hex(s: &str) -> Result<Hash, HexError> {
    let v = bytes_from_hex(s)?;
    Hash::try_from(v.as_slice()).map_err(|_| HexError::WrongLength(v.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors from transparency-dev/merkle rfc6962/rfc6962_test.go (TestRFC6962Hasher).
    #[test]
    fn rfc6962_hasher_vectors() {
        assert_eq!(
            to_hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            to_hex(&leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        assert_eq!(
            to_hex(&leaf_hash(b"L123456")),
            "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
        );
        assert_eq!(
            to_hex(&hash_children(b"N123", b"N456")),
            "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
        );
    }

    #[test]
    fn node_hash_is_ordered_and_not_a_leaf_hash() {
        let a = leaf_hash(b"Hello");
        let b = leaf_hash(b"World");
        assert_ne!(a, b);
        let mut cat = Vec::new();
        cat.extend_from_slice(&a);
        cat.extend_from_slice(&b);
        assert_ne!(node_hash(&a, &b), leaf_hash(&cat));
        assert_ne!(node_hash(&a, &b), node_hash(&b, &a));
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let h = leaf_hash(b"x");
        assert_eq!(hash_from_hex(&to_hex(&h)), Ok(h));
        assert_eq!(hash_from_hex(&to_hex(&h).to_uppercase()), Ok(h));
        assert_eq!(bytes_from_hex(""), Ok(vec![]));
        assert_eq!(bytes_from_hex("abc"), Err(HexError::OddLength(3)));
        assert_eq!(bytes_from_hex("0g"), Err(HexError::BadDigit(1)));
        assert_eq!(hash_from_hex("00"), Err(HexError::WrongLength(1)));
    }
}
