//! Answering the platform's visibility challenges (SPEC §7, "visibility blocked").
//!
//! A challenge arrives in the reply to one of a job's telemetry packets (the agent's own
//! channel: no listener, no address to register, nothing a NAT can block). The agent checks
//! the platform's signature, the node, the nonce and the challenge's age
//! ([`gp4u_attest::visibility::check_challenge`]), reads the evidence of the job's container
//! (the watchdog's probe: the engine's record of the container, its first process's start
//! time, its cgroup's CPU time and processes) and posts it, signed with the node key, to
//! `POST /api/agent/visibility`. The platform judges the evidence; a node that does not
//! answer while its telemetry keeps arriving is blocking visibility.

use std::sync::Arc;

use ed25519_dalek::{SigningKey, VerifyingKey};
use gp4u_attest::visibility::{Challenge, check_challenge, sign_answer};
use gp4u_proto::{VisibilityAnswer, VisibilityChallenge, VisibilityEvidence};

use crate::client::PlatformClient;

/// What answering needs, shared by the node's watchdogs.
pub struct Responder {
    pub node_id: String,
    pub node_key: Arc<SigningKey>,
    /// The platform's key; `None` for a node registered with a server that did not give one
    /// (challenges are then answered unverified: the answer is domain-separated, so it is
    /// never a valid signature of anything else).
    pub platform_key: Option<VerifyingKey>,
    /// Never answer (`--refuse-visibility`, hidden): how a provider that blocks the platform's
    /// visibility behaves, for tests and drills. The platform slashes and ejects such a node.
    pub refuse: bool,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("node_id", &self.node_id)
            .field("platform_key", &self.platform_key.is_some())
            .field("refuse", &self.refuse)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// Whether to answer this challenge: it is for this node and job, signed by the platform,
    /// fresh, and the agent is not told to refuse. Logged when not.
    pub fn accepts(&self, job_id: &str, challenge: &VisibilityChallenge) -> bool {
        if self.refuse {
            tracing::warn!(job_id, nonce = %challenge.nonce, "visibility challenge ignored (--refuse-visibility)");
            return false;
        }
        if challenge.job_id != job_id {
            tracing::warn!(job_id, challenged = %challenge.job_id, "visibility challenge for another job in this job's reply: ignored");
            return false;
        }
        match check_challenge(
            &self.node_id,
            self.platform_key.as_ref(),
            &as_challenge(challenge),
            crate::agent::now_ms(),
        ) {
            Ok(()) => true,
            Err(refusal) => {
                tracing::warn!(job_id, %refusal, "visibility challenge refused");
                false
            }
        }
    }

    /// Signs and posts the answer with this evidence; logs the platform's verdict.
    pub async fn answer(
        &self,
        client: &PlatformClient,
        challenge: &VisibilityChallenge,
        evidence: VisibilityEvidence,
    ) {
        let Some(canonical) = evidence.canonical() else {
            tracing::error!(job_id = %challenge.job_id, ?evidence, "the evidence does not fit one line per field; not answering");
            return;
        };
        let answer = VisibilityAnswer {
            node_id: self.node_id.clone(),
            job_id: challenge.job_id.clone(),
            nonce: challenge.nonce.clone(),
            issued_at_ms: challenge.issued_at_ms,
            signature: sign_answer(&self.node_key, &as_challenge(challenge), &canonical),
            evidence,
        };
        match client.answer_visibility(&answer).await {
            Ok(verdict) if verdict.result == "ANSWERED" => {
                tracing::info!(job_id = %challenge.job_id, nonce = %challenge.nonce, "visibility challenge answered");
            }
            Ok(verdict) => {
                tracing::error!(job_id = %challenge.job_id, result = %verdict.result, detail = ?verdict.detail, "the platform did not accept the visibility answer");
            }
            Err(error) => {
                tracing::warn!(job_id = %challenge.job_id, %error, "the visibility answer was not delivered");
            }
        }
    }
}

fn as_challenge(challenge: &VisibilityChallenge) -> Challenge<'_> {
    Challenge {
        node_id: &challenge.node_id,
        job_id: &challenge.job_id,
        nonce: &challenge.nonce,
        issued_at_ms: challenge.issued_at_ms,
        signature: &challenge.signature,
    }
}
