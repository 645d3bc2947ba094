//! Bearer tokens (SPEC §2).
//!
//! A token is `P.S`: `P` is base64url (no padding) of a JSON object `{sub, clr, trs, exp}`,
//! `S` is base64url (no padding) of HMAC-SHA256(secret, the ASCII bytes of `P`).
//!
//! `verify` checks the signature before it parses a single byte of the payload, so an
//! attacker can only reach the JSON parser with a payload we signed ourselves. The comparison
//! is constant-time (`Mac::verify_slice`). Rotation: tokens signed with the previous secret
//! stay valid until they expire.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted, checked before any decoding so oversized input costs nothing.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Shortest accepted secret: 32 bytes, the HMAC-SHA256 output size (SPEC §1 refuses less).
pub const MIN_SECRET_LEN: usize = 32;

/// Longest `sub` accepted, in bytes.
pub const MAX_SUBJECT_LEN: usize = 128;

/// Highest clearance a token may carry.
pub const MAX_CLEARANCE: u8 = 5;

/// Highest trust score a token may carry.
pub const MAX_TRUST_SCORE: f64 = 100.0;

/// HMAC-SHA256 output size; a signature of any other length is malformed.
const SIGNATURE_LEN: usize = 32;

/// The payload of a token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Clearance 0–5 (customer 1, provider 2, admin 3). Never trusted above the user's stored
    /// clearance: the server compares it with the database.
    pub clr: u8,
    /// Trust score 0–100.
    pub trs: f64,
    /// Expiry, unix seconds; the token is refused from this second on.
    pub exp: i64,
}

/// Why a token was refused, or a secret was unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is longer than 4096 bytes")]
    TooLong,
    #[error("token is malformed: expected P.S with base64url parts and a valid payload")]
    Malformed,
    #[error("token signature does not match")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token secret is shorter than 32 bytes")]
    SecretTooShort,
}

impl TokenError {
    /// The error code sent to clients in `{"error": {"code": …}}`.
    pub const fn code(&self) -> &'static str {
        match self {
            TokenError::TooLong => "TOKEN_TOO_LONG",
            TokenError::Malformed => "TOKEN_MALFORMED",
            TokenError::BadSignature => "TOKEN_BAD_SIGNATURE",
            TokenError::Expired => "TOKEN_EXPIRED",
            TokenError::SecretTooShort => "TOKEN_SECRET_TOO_SHORT",
        }
    }
}

/// An HMAC key. Its `Debug` never shows the bytes, so it cannot leak through logs.
///
/// Holds the keyed HMAC state too, so signing and checking reuse the key schedule and
/// no code path after `new` can fail.
#[derive(Clone)]
pub struct TokenSecret {
    bytes: Vec<u8>,
    keyed_mac: HmacSha256,
}

impl TokenSecret {
    /// Accepts a secret of at least 32 bytes.
    pub fn new(bytes: Vec<u8>) -> Result<TokenSecret, TokenError> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(TokenError::SecretTooShort);
        }
        // HMAC takes keys of any length, so this never fails in practice.
        let keyed_mac =
            HmacSha256::new_from_slice(&bytes).map_err(|_| TokenError::SecretTooShort)?;
        Ok(TokenSecret { bytes, keyed_mac })
    }

    /// The raw key, for persisting a generated secret.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn mac(&self) -> HmacSha256 {
        self.keyed_mac.clone()
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("TokenSecret(redacted)")
    }
}

/// The secrets `verify` accepts: the current one (also used to mint) and, during a
/// rotation, the previous one.
#[derive(Clone, Debug)]
pub struct TokenKeys {
    pub current: TokenSecret,
    pub previous: Option<TokenSecret>,
}

/// Signs `claims` with `secret`.
///
/// Does not validate the claims: a token minted from out-of-range claims (say `trs` = NaN,
/// which JSON writes as null) is one that `verify` refuses.
pub fn mint(claims: &Claims, secret: &TokenSecret) -> String {
    // Built through `Value` because its `Display` cannot fail, unlike `serde_json::to_string`.
    let payload_json = serde_json::json!({
        "sub": claims.sub,
        "clr": claims.clr,
        "trs": claims.trs,
        "exp": claims.exp,
    })
    .to_string();
    let payload = URL_SAFE_NO_PAD.encode(payload_json.as_bytes());
    let mut mac = secret.mac();
    mac.update(payload.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{payload}.{signature}")
}

/// Checks a token and returns its claims. Order matters: length, shape, signature, and only
/// then the payload, then expiry (`now_unix >= exp` is expired).
pub fn verify(token: &str, keys: &TokenKeys, now_unix: i64) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong);
    }
    let Some((payload, signature_text)) = token.split_once('.') else {
        return Err(TokenError::Malformed);
    };
    if signature_text.contains('.') {
        return Err(TokenError::Malformed);
    }
    // The strict decoder refuses padding and non-zero trailing bits, so each signature has
    // exactly one textual form and no altered token can carry a valid signature.
    let signature = URL_SAFE_NO_PAD
        .decode(signature_text)
        .map_err(|_| TokenError::Malformed)?;
    if signature.len() != SIGNATURE_LEN {
        return Err(TokenError::Malformed);
    }
    if !signed_by(&keys.current, payload, &signature)
        && !keys
            .previous
            .as_ref()
            .is_some_and(|previous| signed_by(previous, payload, &signature))
    {
        return Err(TokenError::BadSignature);
    }
    let claims = decode_claims(payload).ok_or(TokenError::Malformed)?;
    if now_unix >= claims.exp {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// Constant-time check of `signature` over the ASCII bytes of `payload`.
fn signed_by(secret: &TokenSecret, payload: &str, signature: &[u8]) -> bool {
    let mut mac = secret.mac();
    mac.update(payload.as_bytes());
    mac.verify_slice(signature).is_ok()
}

/// Decodes and checks the payload field by field; extra fields are ignored.
fn decode_claims(payload: &str) -> Option<Claims> {
    let json = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let object = value.as_object()?;

    let sub = object.get("sub")?.as_str()?;
    if sub.is_empty() || sub.len() > MAX_SUBJECT_LEN {
        return None;
    }
    let clr = object.get("clr")?.as_u64()?;
    let clr = u8::try_from(clr).ok().filter(|clr| *clr <= MAX_CLEARANCE)?;
    let trs = object.get("trs")?.as_f64()?;
    if !(0.0..=MAX_TRUST_SCORE).contains(&trs) {
        return None;
    }
    let exp = object.get("exp")?.as_i64()?;
    Some(Claims {
        sub: sub.to_owned(),
        clr,
        trs,
        exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> TokenSecret {
        TokenSecret::new(vec![byte; 32]).unwrap()
    }

    fn keys() -> TokenKeys {
        TokenKeys {
            current: secret(1),
            previous: None,
        }
    }

    fn claims() -> Claims {
        Claims {
            sub: "usr_alice".to_owned(),
            clr: 1,
            trs: 87.5,
            exp: 2_000_000_000,
        }
    }

    /// Signs an arbitrary payload, to reach the payload checks behind the signature.
    fn sign_raw(payload_json: &str) -> String {
        let payload = URL_SAFE_NO_PAD.encode(payload_json);
        let mut mac = secret(1).mac();
        mac.update(payload.as_bytes());
        format!(
            "{payload}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn round_trip() {
        let token = mint(&claims(), &secret(1));
        assert_eq!(verify(&token, &keys(), 0), Ok(claims()));
    }

    #[test]
    fn short_secret_is_refused_and_debug_is_redacted() {
        assert_eq!(
            TokenSecret::new(vec![0; 31]).unwrap_err(),
            TokenError::SecretTooShort
        );
        assert_eq!(format!("{:?}", secret(7)), "TokenSecret(redacted)");
        assert!(!format!("{:?}", keys()).contains("1, 1"));
    }

    #[test]
    fn too_long_is_checked_first() {
        let token = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(verify(&token, &keys(), 0), Err(TokenError::TooLong));
    }

    #[test]
    fn shape_errors_are_malformed() {
        let good = mint(&claims(), &secret(1));
        let (payload, signature) = good.split_once('.').unwrap();
        for bad in [
            String::new(),
            "abc".to_owned(),
            format!("{good}.x"),
            format!("{payload}.{signature}="),
            format!("{payload}.{}", &signature[..signature.len() - 1]),
            format!("{payload}.!!!"),
        ] {
            assert_eq!(
                verify(&bad, &keys(), 0),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn wrong_key_is_bad_signature() {
        let token = mint(&claims(), &secret(2));
        assert_eq!(verify(&token, &keys(), 0), Err(TokenError::BadSignature));
    }

    #[test]
    fn payload_rules_behind_a_valid_signature() {
        let bad_payloads = [
            "not json",
            "[1]",
            r#"{"clr":1,"trs":1,"exp":9999999999}"#,
            r#"{"sub":"","clr":1,"trs":1,"exp":9999999999}"#,
            r#"{"sub":7,"clr":1,"trs":1,"exp":9999999999}"#,
            r#"{"sub":"u","clr":6,"trs":1,"exp":9999999999}"#,
            r#"{"sub":"u","clr":-1,"trs":1,"exp":9999999999}"#,
            r#"{"sub":"u","clr":1.5,"trs":1,"exp":9999999999}"#,
            r#"{"sub":"u","clr":1,"trs":100.5,"exp":9999999999}"#,
            r#"{"sub":"u","clr":1,"trs":-1,"exp":9999999999}"#,
            r#"{"sub":"u","clr":1,"trs":"1","exp":9999999999}"#,
            r#"{"sub":"u","clr":1,"trs":1,"exp":1.5}"#,
            r#"{"sub":"u","clr":1,"trs":1}"#,
        ];
        for payload in bad_payloads {
            assert_eq!(
                verify(&sign_raw(payload), &keys(), 0),
                Err(TokenError::Malformed),
                "{payload}"
            );
        }
        let long_sub = format!(
            r#"{{"sub":"{}","clr":1,"trs":1,"exp":9999999999}}"#,
            "u".repeat(129)
        );
        assert_eq!(
            verify(&sign_raw(&long_sub), &keys(), 0),
            Err(TokenError::Malformed)
        );
        let extra = r#"{"sub":"u","clr":5,"trs":100,"exp":10,"extra":[1,2]}"#;
        let claims = verify(&sign_raw(extra), &keys(), 9).unwrap();
        assert_eq!(claims.clr, 5);
        assert_eq!(claims.trs, 100.0);
    }

    #[test]
    fn expiry_boundary() {
        let token = mint(&claims(), &secret(1));
        assert!(verify(&token, &keys(), claims().exp - 1).is_ok());
        assert_eq!(
            verify(&token, &keys(), claims().exp),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn codes_are_distinct() {
        let errors = [
            TokenError::TooLong,
            TokenError::Malformed,
            TokenError::BadSignature,
            TokenError::Expired,
            TokenError::SecretTooShort,
        ];
        let mut codes: Vec<_> = errors.iter().map(TokenError::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), errors.len());
        assert_eq!(TokenError::Expired.code(), "TOKEN_EXPIRED");
    }
}
