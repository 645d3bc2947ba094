//! The visibility challenge (SPEC §7, seed "Visibility blocked").
//!
//! The platform sends `POST {endpoint}/gp4u/visibility` to a node's agent with a fresh nonce,
//! signed with the platform key; the agent checks that signature (so it answers the platform
//! only, and is not a signing oracle for anyone who can reach it) and answers with its node
//! key's signature over a *different* message, so a challenge can never be replayed as an
//! answer. Both messages are domain-separated and bind the node id, the nonce and the time the
//! challenge was issued.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// How long an agent accepts a challenge after it was issued (clock skew included).
pub const MAX_CHALLENGE_AGE_MS: i64 = 5 * 60 * 1000;

/// The bytes the platform signs.
pub fn challenge_message(node_id: &str, nonce: &str, issued_at_ms: i64) -> Vec<u8> {
    format!("gp4u-visibility-challenge-v1\n{node_id}\n{nonce}\n{issued_at_ms}\n").into_bytes()
}

/// The bytes the node signs in answer.
pub fn answer_message(node_id: &str, nonce: &str, issued_at_ms: i64) -> Vec<u8> {
    format!("gp4u-visibility-answer-v1\n{node_id}\n{nonce}\n{issued_at_ms}\n").into_bytes()
}

/// Signs `message`; the signature as standard base64.
pub fn sign_base64(key: &SigningKey, message: &[u8]) -> String {
    STANDARD.encode(key.sign(message).to_bytes())
}

/// Whether `signature` (standard base64 of 64 bytes) is `key`'s signature over `message`.
/// Anything malformed is simply not a valid signature.
pub fn verify_base64(key: &VerifyingKey, message: &[u8], signature: &str) -> bool {
    let Ok(bytes) = STANDARD.decode(signature.trim()) else {
        return false;
    };
    let Ok(bytes) = <[u8; 64]>::try_from(bytes.as_slice()) else {
        return false;
    };
    key.verify_strict(message, &Signature::from_bytes(&bytes))
        .is_ok()
}

/// Why an agent refuses a challenge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    #[error("the challenge is for node {got}, this is node {expected}")]
    WrongNode { expected: String, got: String },
    #[error("the challenge's signature is not the platform's")]
    BadSignature,
    #[error("the challenge was issued at {issued_at_ms}, too far from now ({now_ms})")]
    Stale { issued_at_ms: i64, now_ms: i64 },
    #[error("the nonce must be 16–128 hex characters")]
    BadNonce,
}

/// The agent's side: checks a challenge (node, nonce shape, age, the platform's signature)
/// and returns the answer's signature. `platform` is `None` when the platform did not give
/// its key at registration (an older server): the signature check is then skipped.
#[allow(clippy::too_many_arguments)] // the challenge's fields, as they arrive
pub fn answer(
    node_key: &SigningKey,
    node_id: &str,
    platform: Option<&VerifyingKey>,
    challenge_node_id: &str,
    nonce: &str,
    issued_at_ms: i64,
    signature: &str,
    now_ms: i64,
) -> Result<String, ChallengeError> {
    if challenge_node_id != node_id {
        return Err(ChallengeError::WrongNode {
            expected: node_id.to_owned(),
            got: challenge_node_id.to_owned(),
        });
    }
    if !(16..=128).contains(&nonce.len()) || !nonce.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(ChallengeError::BadNonce);
    }
    if (now_ms - issued_at_ms).abs() > MAX_CHALLENGE_AGE_MS {
        return Err(ChallengeError::Stale {
            issued_at_ms,
            now_ms,
        });
    }
    if let Some(platform) = platform
        && !verify_base64(
            platform,
            &challenge_message(node_id, nonce, issued_at_ms),
            signature,
        )
    {
        return Err(ChallengeError::BadSignature);
    }
    Ok(sign_base64(
        node_key,
        &answer_message(node_id, nonce, issued_at_ms),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NONCE: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn a_signed_challenge_is_answered_and_the_answer_verifies() {
        let platform = SigningKey::from_bytes(&[1; 32]);
        let node = SigningKey::from_bytes(&[2; 32]);
        let signature = sign_base64(&platform, &challenge_message("node_a", NONCE, 1_000));
        let answer = answer(
            &node,
            "node_a",
            Some(&platform.verifying_key()),
            "node_a",
            NONCE,
            1_000,
            &signature,
            2_000,
        )
        .unwrap();
        assert!(verify_base64(
            &node.verifying_key(),
            &answer_message("node_a", NONCE, 1_000),
            &answer
        ));
        // The answer is not valid for another nonce, node or time, nor as a challenge.
        assert!(!verify_base64(
            &node.verifying_key(),
            &answer_message("node_a", "ff112233445566778899aabbccddeeff", 1_000),
            &answer
        ));
        assert!(!verify_base64(
            &node.verifying_key(),
            &answer_message("node_b", NONCE, 1_000),
            &answer
        ));
        assert!(!verify_base64(
            &node.verifying_key(),
            &challenge_message("node_a", NONCE, 1_000),
            &answer
        ));
    }

    #[test]
    fn forged_stale_or_misdirected_challenges_are_refused() {
        let platform = SigningKey::from_bytes(&[1; 32]);
        let intruder = SigningKey::from_bytes(&[3; 32]);
        let node = SigningKey::from_bytes(&[2; 32]);
        let forged = sign_base64(&intruder, &challenge_message("node_a", NONCE, 1_000));
        let verifier = platform.verifying_key();
        let check = |node_id: &str, nonce: &str, at: i64, signature: &str, now: i64| {
            answer(
                &node,
                "node_a",
                Some(&verifier),
                node_id,
                nonce,
                at,
                signature,
                now,
            )
        };
        assert_eq!(
            check("node_a", NONCE, 1_000, &forged, 2_000),
            Err(ChallengeError::BadSignature)
        );
        assert_eq!(
            check("node_a", NONCE, 1_000, "not base64!", 2_000),
            Err(ChallengeError::BadSignature)
        );
        let good = sign_base64(&platform, &challenge_message("node_a", NONCE, 1_000));
        assert!(matches!(
            check("node_b", NONCE, 1_000, &good, 2_000),
            Err(ChallengeError::WrongNode { .. })
        ));
        assert!(matches!(
            check(
                "node_a",
                NONCE,
                1_000,
                &good,
                1_000 + MAX_CHALLENGE_AGE_MS + 1
            ),
            Err(ChallengeError::Stale { .. })
        ));
        assert_eq!(
            check("node_a", "xyz", 1_000, &good, 2_000),
            Err(ChallengeError::BadNonce)
        );
        assert!(check("node_a", NONCE, 1_000, &good, 2_000).is_ok());
    }
}
