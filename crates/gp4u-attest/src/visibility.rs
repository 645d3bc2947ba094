//! The visibility challenge (SPEC §7, seed "Visibility blocked").
//!
//! The platform issues a challenge for one running job of a node — a fresh nonce, signed with
//! the platform key — and hands it to the node's agent in the reply to that job's next
//! telemetry packet: the agent's own channel, so no node is unreachable (NAT) and no provider
//! can point the platform at an address of its choosing. The agent checks the signature (so
//! it answers the platform only, and is not a signing oracle), reads what only a node running
//! the job's container can read (its engine's record of the container, its cgroup, the host's
//! `/proc`), and answers with its node key's signature over a *different* message that binds
//! that evidence, so a challenge can never be replayed as an answer. Both messages are
//! domain-separated and bind the node, the job, the nonce and the time of issue.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// How long an agent accepts a challenge after it was issued (clock skew included).
pub const MAX_CHALLENGE_AGE_MS: i64 = 5 * 60 * 1000;

/// The bytes the platform signs.
pub fn challenge_message(node_id: &str, job_id: &str, nonce: &str, issued_at_ms: i64) -> Vec<u8> {
    format!("gp4u-visibility-challenge-v2\n{node_id}\n{job_id}\n{nonce}\n{issued_at_ms}\n")
        .into_bytes()
}

/// The bytes the node signs in answer: the challenge's fields and the evidence, one field per
/// line (`gp4u_proto::VisibilityEvidence::canonical`).
pub fn answer_message(
    node_id: &str,
    job_id: &str,
    nonce: &str,
    issued_at_ms: i64,
    evidence: &str,
) -> Vec<u8> {
    format!("gp4u-visibility-answer-v2\n{node_id}\n{job_id}\n{nonce}\n{issued_at_ms}\n{evidence}\n")
        .into_bytes()
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

/// A challenge as the agent received it.
#[derive(Debug, Clone, Copy)]
pub struct Challenge<'a> {
    pub node_id: &'a str,
    pub job_id: &'a str,
    pub nonce: &'a str,
    pub issued_at_ms: i64,
    pub signature: &'a str,
}

/// The agent's side: checks a challenge (node, nonce shape, age, the platform's signature).
/// `platform` is `None` when the platform did not give its key at registration (an older
/// server): the signature check is then skipped.
pub fn check_challenge(
    node_id: &str,
    platform: Option<&VerifyingKey>,
    challenge: &Challenge<'_>,
    now_ms: i64,
) -> Result<(), ChallengeError> {
    if challenge.node_id != node_id {
        return Err(ChallengeError::WrongNode {
            expected: node_id.to_owned(),
            got: challenge.node_id.to_owned(),
        });
    }
    let nonce = challenge.nonce;
    if !(16..=128).contains(&nonce.len()) || !nonce.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(ChallengeError::BadNonce);
    }
    if (now_ms - challenge.issued_at_ms).abs() > MAX_CHALLENGE_AGE_MS {
        return Err(ChallengeError::Stale {
            issued_at_ms: challenge.issued_at_ms,
            now_ms,
        });
    }
    if let Some(platform) = platform
        && !verify_base64(
            platform,
            &challenge_message(node_id, challenge.job_id, nonce, challenge.issued_at_ms),
            challenge.signature,
        )
    {
        return Err(ChallengeError::BadSignature);
    }
    Ok(())
}

/// The agent's answer to a checked challenge: the node key's signature over the answer
/// message with this evidence.
pub fn sign_answer(node_key: &SigningKey, challenge: &Challenge<'_>, evidence: &str) -> String {
    sign_base64(
        node_key,
        &answer_message(
            challenge.node_id,
            challenge.job_id,
            challenge.nonce,
            challenge.issued_at_ms,
            evidence,
        ),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NONCE: &str = "00112233445566778899aabbccddeeff";

    fn challenge<'a>(node: &'a str, nonce: &'a str, at: i64, signature: &'a str) -> Challenge<'a> {
        Challenge {
            node_id: node,
            job_id: "job_j",
            nonce,
            issued_at_ms: at,
            signature,
        }
    }

    #[test]
    fn a_signed_challenge_is_answered_and_the_answer_binds_the_evidence() {
        let platform = SigningKey::from_bytes(&[1; 32]);
        let node = SigningKey::from_bytes(&[2; 32]);
        let signature = sign_base64(
            &platform,
            &challenge_message("node_a", "job_j", NONCE, 1_000),
        );
        let received = challenge("node_a", NONCE, 1_000, &signature);
        check_challenge("node_a", Some(&platform.verifying_key()), &received, 2_000).unwrap();
        let answer = sign_answer(&node, &received, "c1\nimg\njob_j\n5\n100\n2");
        let key = node.verifying_key();
        assert!(verify_base64(
            &key,
            &answer_message("node_a", "job_j", NONCE, 1_000, "c1\nimg\njob_j\n5\n100\n2"),
            &answer
        ));
        // Not valid for other evidence, another job, nonce, node or time, nor as a challenge.
        for message in [
            answer_message("node_a", "job_j", NONCE, 1_000, "c1\nimg\njob_j\n5\n101\n2"),
            answer_message("node_a", "job_k", NONCE, 1_000, "c1\nimg\njob_j\n5\n100\n2"),
            answer_message(
                "node_a",
                "job_j",
                "ff112233445566778899aabbccddeeff",
                1_000,
                "c1\nimg\njob_j\n5\n100\n2",
            ),
            answer_message("node_b", "job_j", NONCE, 1_000, "c1\nimg\njob_j\n5\n100\n2"),
            answer_message("node_a", "job_j", NONCE, 1_001, "c1\nimg\njob_j\n5\n100\n2"),
            challenge_message("node_a", "job_j", NONCE, 1_000),
        ] {
            assert!(!verify_base64(&key, &message, &answer));
        }
    }

    #[test]
    fn forged_stale_or_misdirected_challenges_are_refused() {
        let platform = SigningKey::from_bytes(&[1; 32]);
        let intruder = SigningKey::from_bytes(&[3; 32]);
        let forged = sign_base64(
            &intruder,
            &challenge_message("node_a", "job_j", NONCE, 1_000),
        );
        let verifier = platform.verifying_key();
        let check = |node_id: &str, nonce: &str, at: i64, signature: &str, now: i64| {
            check_challenge(
                "node_a",
                Some(&verifier),
                &challenge(node_id, nonce, at, signature),
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
        let good = sign_base64(
            &platform,
            &challenge_message("node_a", "job_j", NONCE, 1_000),
        );
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
        // Signed for another job: refused.
        let other_job = sign_base64(
            &platform,
            &challenge_message("node_a", "job_k", NONCE, 1_000),
        );
        assert_eq!(
            check("node_a", NONCE, 1_000, &other_job, 2_000),
            Err(ChallengeError::BadSignature)
        );
    }
}
