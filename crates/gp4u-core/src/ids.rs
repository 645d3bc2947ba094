//! Typed identifiers.
//!
//! Every id on the wire is a short prefix naming what it identifies (`job_`, `gpu_`, …)
//! followed by 1 to 64 characters of `[A-Za-z0-9_-]`. Separate newtypes make it a compile
//! error to pass a `GpuId` where a `JobId` is expected, and the prefix makes a mixed-up id
//! visible in logs and refusable at the edge (`parse` checks it).
//!
//! Fresh ids are made from 16 random bytes supplied by the caller (this crate has no RNG):
//! the prefix plus 26 characters of lowercase RFC 4648 base32, which keeps ids URL-safe,
//! case-insensitive-safe and free of look-alike punctuation.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest id suffix accepted after the prefix. Bounds what an attacker can make us store.
pub const MAX_ID_SUFFIX_LEN: usize = 64;

/// Longest excerpt of a rejected value kept in an error, so huge inputs are never echoed.
const MAX_ECHOED_CHARS: usize = 64;

/// RFC 4648 base32 alphabet, lowercased: ids stay lowercase so they survive
/// case-folding systems (DNS labels, some file systems) unchanged.
const BASE32_LOWER: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// An id string that failed to parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {kind} {value:?}: expected `{expected_prefix}` followed by 1 to 64 characters of [A-Za-z0-9_-]",
    expected_prefix = prefix_for_kind(.kind)
)]
pub struct IdError {
    /// What was being parsed, e.g. "job id".
    pub kind: &'static str,
    /// The rejected input, truncated to 64 characters.
    pub value: String,
}

impl IdError {
    fn new(kind: &'static str, value: &str) -> Self {
        Self {
            kind,
            value: truncate_for_echo(value),
        }
    }
}

/// Maps an error's `kind` back to the prefix it expected, for the error message.
fn prefix_for_kind(kind: &str) -> &'static str {
    match kind {
        UserId::KIND => UserId::PREFIX,
        JobId::KIND => JobId::PREFIX,
        NodeId::KIND => NodeId::PREFIX,
        GpuId::KIND => GpuId::PREFIX,
        ArtifactId::KIND => ArtifactId::PREFIX,
        _ => "a type prefix",
    }
}

/// Keeps at most `MAX_ECHOED_CHARS` characters, marking the cut with an ellipsis.
pub(crate) fn truncate_for_echo(value: &str) -> String {
    let mut chars = value.chars();
    let mut kept: String = chars.by_ref().take(MAX_ECHOED_CHARS).collect();
    if chars.next().is_some() {
        kept.push('…');
    }
    kept
}

/// Checks `prefix` + 1..=64 of `[A-Za-z0-9_-]`; the shared rule behind every id type.
fn check_id(kind: &'static str, prefix: &str, value: &str) -> Result<(), IdError> {
    let Some(suffix) = value.strip_prefix(prefix) else {
        return Err(IdError::new(kind, value));
    };
    let length_ok = !suffix.is_empty() && suffix.len() <= MAX_ID_SUFFIX_LEN;
    let charset_ok = suffix
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
    if !length_ok || !charset_ok {
        return Err(IdError::new(kind, value));
    }
    Ok(())
}

/// Encodes 16 bytes as 26 characters of lowercase unpadded base32 (128 bits / 5 = 25.6).
fn base32_lower_no_pad(bytes: [u8; 16]) -> String {
    let mut encoded = String::with_capacity(26);
    let mut buffer: u32 = 0;
    let mut bits_in_buffer: u32 = 0;
    for byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits_in_buffer += 8;
        while bits_in_buffer >= 5 {
            bits_in_buffer -= 5;
            let index = (buffer >> bits_in_buffer) & 0x1f;
            encoded.push(char::from(BASE32_LOWER[index as usize]));
        }
        // Drop bits already emitted so the buffer never overflows.
        buffer &= (1 << bits_in_buffer) - 1;
    }
    if bits_in_buffer > 0 {
        // The last 3 bits are zero padding inside the final character, as RFC 4648 says.
        let index = (buffer << (5 - bits_in_buffer)) & 0x1f;
        encoded.push(char::from(BASE32_LOWER[index as usize]));
    }
    encoded
}

/// Defines one id newtype. A macro rather than a generic so each type keeps plain,
/// greppable inherent methods and error messages that name its own kind.
macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The prefix every id of this type starts with.
            pub const PREFIX: &'static str = $prefix;
            /// Human name used in error messages.
            pub const KIND: &'static str = $kind;

            /// Parses an id, requiring the prefix and a 1..=64 character `[A-Za-z0-9_-]` suffix.
            pub fn parse(value: &str) -> Result<Self, IdError> {
                check_id(Self::KIND, Self::PREFIX, value)?;
                Ok(Self(value.to_owned()))
            }

            /// Makes a fresh id from caller-supplied random bytes (this crate has no RNG).
            pub fn from_random(bytes: [u8; 16]) -> Self {
                Self(format!("{}{}", Self::PREFIX, base32_lower_no_pad(bytes)))
            }

            /// The full id, prefix included.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The full id as an owned string, prefix included.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(value: &str) -> Result<Self, Self::Err> {
                Self::parse(value)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        /// Deserializing validates, so an id read from the wire or a database is always well-formed.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(deserializer)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

define_id!(
    /// A user (customer, provider or admin): `usr_…`.
    UserId,
    "usr_",
    "user id"
);
define_id!(
    /// A job: `job_…`.
    JobId,
    "job_",
    "job id"
);
define_id!(
    /// A provider node (one agent host): `node_…`.
    NodeId,
    "node_",
    "node id"
);
define_id!(
    /// A listed GPU: `gpu_…`.
    GpuId,
    "gpu_",
    "gpu id"
);
define_id!(
    /// A stored blob (job input, output or log): `art_…`.
    ArtifactId,
    "art_",
    "artifact id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_well_formed_ids() {
        assert_eq!(
            JobId::parse("job_abc-DEF_123").unwrap().as_str(),
            "job_abc-DEF_123"
        );
        assert!(GpuId::parse("gpu_abc123").is_ok());
        assert!(UserId::parse(&format!("usr_{}", "a".repeat(64))).is_ok());
    }

    #[test]
    fn parse_rejects_wrong_prefix_empty_long_and_odd_characters() {
        for bad in [
            "", "job_", "gpu_abc", "JOB_abc", "job_a b", "job_a.b", "job_é", "job_a/b",
        ] {
            assert!(JobId::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(UserId::parse(&format!("usr_{}", "a".repeat(65))).is_err());
    }

    #[test]
    fn error_names_kind_and_expected_form_and_truncates() {
        let long = format!("job_{}", "x".repeat(500));
        let error = GpuId::parse(&long).unwrap_err();
        assert_eq!(error.kind, "gpu id");
        assert!(error.value.chars().count() <= 65);
        let message = error.to_string();
        assert!(message.contains("gpu id"), "{message}");
        assert!(message.contains("`gpu_`"), "{message}");
    }

    #[test]
    fn from_random_is_prefix_plus_26_lowercase_base32() {
        let id = NodeId::from_random([0u8; 16]);
        assert_eq!(id.as_str(), format!("node_{}", "a".repeat(26)));
        let id = ArtifactId::from_random([0xff; 16]);
        // 128 one-bits: 25 full '7's, then 3 data bits + 2 zero pad bits = 0b11100 = '4'.
        assert_eq!(id.as_str(), format!("art_{}4", "7".repeat(25)));
        // RFC 4648 test vector "foobar" -> MZXW6YTBOI; check the prefix of a 16-byte input.
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(b"foobar");
        let id = JobId::from_random(bytes);
        assert!(id.as_str().starts_with("job_mzxw6ytboi"), "{id}");
        assert_eq!(id.as_str().len(), 4 + 26);
        assert!(JobId::parse(id.as_str()).is_ok());
    }

    #[test]
    fn serde_is_a_plain_string_and_deserialize_validates() {
        let id = JobId::parse("job_x1").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"job_x1\"");
        let back: JobId = serde_json::from_str("\"job_x1\"").unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<JobId>("\"gpu_x1\"").is_err());
        assert!(serde_json::from_str::<JobId>("12").is_err());
    }

    #[test]
    fn display_and_from_str_round_trip() {
        let id: UserId = "usr_alice".parse().unwrap();
        assert_eq!(id.to_string(), "usr_alice");
        assert_eq!(id.clone().into_string(), "usr_alice");
    }
}
