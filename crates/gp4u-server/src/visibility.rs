//! Visibility for every node that runs a job (SPEC §7, seed "Visibility blocked"): no
//! opt-out, no address a provider registers, nothing a NAT stands in the way of.
//!
//! Every `visibility_interval_s`, [`round`] issues a challenge for one RUNNING job of each
//! ACTIVE node that has none open: a fresh nonce, signed with the platform key, with a
//! deadline of two telemetry intervals plus `visibility_timeout_ms`. The challenge rides on the
//! reply to that job's next telemetry packet ([`ChallengeBook`]: each replica keeps the open
//! challenges in memory, refreshed from the database every round, so the ingestion path reads
//! nothing for it). The agent answers on `POST /api/agent/visibility` with evidence only a
//! node that runs the job's container can read, signed with its node key; [`judge_answer`]
//! checks it. A challenge whose deadline passed is UNANSWERED when the job's telemetry arrived
//! after it was issued (its reply carried the challenge: the agent is alive and chose not to
//! answer), else TIMEOUT (the heartbeat judges silence). Two refusals in a row (UNANSWERED or
//! BAD_ANSWER; timeouts in between do not count either way) are `VISIBILITY_BLOCKED`: a hard
//! slash and ejection, the node's jobs placed elsewhere.
//!
//! What a passed challenge proves, and what it does not, is in ARCHITECTURE.md.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use gp4u_attest::visibility;
use gp4u_core::ids::{JobId, NodeId};
use gp4u_core::job::FailureReason;
use gp4u_core::manifest::JobManifest;
use gp4u_core::tutela::SlashKind;
use gp4u_proto::{VisibilityAnswer, VisibilityChallenge, VisibilityEvidence};
use gp4u_store::{ChallengeRecord, NodeRecord, StoreResult, is_refusal};
use tokio::sync::watch;

use crate::state::AppState;
use crate::tutela::{eject, slash};

/// Challenges issued per round at most (one per node).
const ROUND_LIMIT: i64 = 10_000;

/// The open challenges, by job: what the telemetry route hands to agents.
#[derive(Debug, Default)]
pub struct ChallengeBook {
    open: Mutex<HashMap<JobId, VisibilityChallenge>>,
}

impl ChallengeBook {
    /// The open challenge for this job, if any (and still before its deadline).
    pub fn for_job(&self, job: &JobId, now_ms: i64) -> Option<VisibilityChallenge> {
        let open = self
            .open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        open.get(job)
            .filter(|challenge| challenge.deadline_ms > now_ms)
            .cloned()
    }

    fn replace(&self, challenges: HashMap<JobId, VisibilityChallenge>) {
        *self
            .open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = challenges;
    }

    fn insert(&self, job: JobId, challenge: VisibilityChallenge) {
        self.open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(job, challenge);
    }

    fn remove(&self, job: &JobId, nonce: &str) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if open
            .get(job)
            .is_some_and(|challenge| challenge.nonce == nonce)
        {
            open.remove(job);
        }
    }
}

/// The verdicts a challenge can get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The node key answered with evidence that holds.
    Answered,
    /// Answered, but the evidence does not hold (another job, another image, a restarted or
    /// replaced container, CPU time going back) or the signature is not the node key's.
    BadAnswer,
    /// Not answered by the deadline while the job's telemetry kept arriving.
    Unanswered,
    /// Not answered, and the node was silent too: a fault for the heartbeat to judge.
    Timeout,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Answered => "ANSWERED",
            Verdict::BadAnswer => "BAD_ANSWER",
            Verdict::Unanswered => "UNANSWERED",
            Verdict::Timeout => "TIMEOUT",
        }
    }
}

/// The signed challenge as the agent receives it.
fn wire(state: &AppState, record: &ChallengeRecord) -> VisibilityChallenge {
    let message = visibility::challenge_message(
        record.node_id.as_str(),
        record.job_id.as_str(),
        &record.nonce,
        record.issued_at_ms,
    );
    VisibilityChallenge {
        node_id: record.node_id.to_string(),
        job_id: record.job_id.to_string(),
        nonce: record.nonce.clone(),
        issued_at_ms: record.issued_at_ms,
        deadline_ms: record.deadline_ms,
        signature: visibility::sign_base64(&state.tutela.platform_key, &message),
    }
}

/// How long an agent has to answer: two telemetry intervals (the challenge waits for the
/// job's next packet) plus `visibility_timeout_ms`.
pub fn answer_window_ms(state: &AppState) -> i64 {
    let settings = &state.tutela.settings;
    let interval_ms =
        i64::try_from(settings.telemetry_interval_s.saturating_mul(1000)).unwrap_or(i64::MAX / 4);
    interval_ms
        .saturating_mul(2)
        .saturating_add(i64::try_from(settings.visibility_timeout_ms).unwrap_or(0))
}

/// Why the evidence does not hold for this job, if it does not. `previous` is the evidence of
/// the job's last answered challenge: the container must be the same one, its first process
/// the same, its CPU time no less.
pub fn evidence_fault(
    job_id: &JobId,
    manifest: &JobManifest,
    evidence: &VisibilityEvidence,
    previous: Option<&VisibilityEvidence>,
    process_runtime: bool,
) -> Option<String> {
    if evidence.env_job_id.as_deref() != Some(job_id.as_str()) {
        return Some(format!(
            "the container's GP4U_JOB_ID is {:?}, not {job_id}",
            evidence.env_job_id
        ));
    }
    let digest = format!("@sha256:{}", manifest.docker_image_sha256);
    if !process_runtime && !evidence.image.ends_with(&digest) {
        return Some(format!(
            "the container runs {:?}, not the job's image {}{digest}",
            evidence.image, manifest.docker_image
        ));
    }
    if evidence.processes == 0 || evidence.cpu_ns.is_none() {
        return Some("the answer shows no running process of the job".to_owned());
    }
    if let Some(previous) = previous {
        if previous.container_id != evidence.container_id {
            return Some(format!(
                "the job's container changed from {} to {}",
                previous.container_id, evidence.container_id
            ));
        }
        if previous.init_started_ticks.is_some()
            && previous.init_started_ticks != evidence.init_started_ticks
        {
            return Some(format!(
                "the job's first process was restarted (started at tick {:?}, now {:?})",
                previous.init_started_ticks, evidence.init_started_ticks
            ));
        }
        if let (Some(before), Some(now)) = (previous.cpu_ns, evidence.cpu_ns)
            && now < before
        {
            return Some(format!(
                "the job's CPU time went back from {before} ns to {now} ns"
            ));
        }
    }
    None
}

/// Judges an answer; `None` when it answers no open challenge of this node (unknown nonce,
/// another node's, or already closed: a late or repeated answer changes nothing).
pub async fn judge_answer(
    state: &AppState,
    node: &NodeRecord,
    answer: &VisibilityAnswer,
) -> StoreResult<Option<(Verdict, Option<String>)>> {
    let Some(challenge) = state.store.get_challenge(&answer.nonce).await? else {
        return Ok(None);
    };
    if challenge.node_id != node.id
        || challenge.result.is_some()
        || challenge.job_id.as_str() != answer.job_id
    {
        return Ok(None);
    }
    let now_ms = state.now_ms();
    let fault = match state.store.get_job(&challenge.job_id).await? {
        None => Some("the challenged job does not exist".to_owned()),
        Some(job) => signature_fault(node, &challenge, answer).or({
            let previous = state
                .store
                .last_answered(&challenge.job_id)
                .await?
                .and_then(|record| record.evidence)
                .and_then(|text| serde_json::from_str::<VisibilityEvidence>(&text).ok());
            let process = node
                .posture
                .as_ref()
                .is_some_and(|posture| posture.runtime == "process");
            evidence_fault(
                &job.id,
                &job.manifest,
                &answer.evidence,
                previous.as_ref(),
                process,
            )
        }),
    };
    let verdict = if fault.is_some() {
        Verdict::BadAnswer
    } else {
        Verdict::Answered
    };
    let evidence = serde_json::to_string(&answer.evidence).ok();
    if !state
        .store
        .close_challenge(
            &challenge.nonce,
            verdict.as_str(),
            fault.as_deref(),
            evidence.as_deref(),
            now_ms,
        )
        .await?
    {
        return Ok(None);
    }
    state
        .tutela
        .challenges
        .remove(&challenge.job_id, &challenge.nonce);
    conclude(state, &challenge, verdict, fault.as_deref()).await?;
    Ok(Some((verdict, fault)))
}

fn signature_fault(
    node: &NodeRecord,
    challenge: &ChallengeRecord,
    answer: &VisibilityAnswer,
) -> Option<String> {
    let Some(key) = gp4u_attest::key::parse_public_key(&node.public_key) else {
        return Some("the node's registered key does not parse".to_owned());
    };
    let Some(canonical) = answer.evidence.canonical() else {
        return Some("the evidence has a field that is not one line".to_owned());
    };
    let message = visibility::answer_message(
        node.id.as_str(),
        challenge.job_id.as_str(),
        &challenge.nonce,
        challenge.issued_at_ms,
        &canonical,
    );
    (!visibility::verify_base64(&key, &message, &answer.signature))
        .then(|| format!("the answer is not signed with node {}'s key", node.id))
}

/// Records a verdict on the node, and acts on a second refusal in a row.
async fn conclude(
    state: &AppState,
    challenge: &ChallengeRecord,
    verdict: Verdict,
    detail: Option<&str>,
) -> StoreResult<()> {
    let node = &challenge.node_id;
    state
        .store
        .record_visibility(node, verdict.as_str(), state.now_ms())
        .await?;
    match verdict {
        Verdict::Answered => {}
        Verdict::Timeout => {
            tracing::warn!(node_id = %node, job_id = %challenge.job_id,
                "visibility challenge unanswered while the node was silent (a fault, not a block)");
        }
        Verdict::Unanswered | Verdict::BadAnswer => {
            let previous = state
                .store
                .previous_verdict(node, challenge.issued_at_ms)
                .await?;
            let repeated = previous
                .as_ref()
                .and_then(|previous| previous.result.as_deref())
                .is_some_and(is_refusal);
            let what = match verdict {
                Verdict::Unanswered => "unanswered while the job's telemetry kept arriving".into(),
                _ => format!("answered badly: {}", detail.unwrap_or("?")),
            };
            if !repeated {
                tracing::warn!(node_id = %node, job_id = %challenge.job_id, what,
                    "visibility challenge refused; blocked if the next one is refused too");
                return Ok(());
            }
            let evidence = format!(
                "visibility challenge {} for job {} {what}, after challenge {} was refused too",
                challenge.nonce,
                challenge.job_id,
                previous.map(|p| p.nonce).unwrap_or_default()
            );
            tracing::error!(node_id = %node, evidence, "visibility blocked");
            slash(state, node, None, SlashKind::VisibilityBlocked, &evidence).await?;
            eject(state, node, FailureReason::VisibilityBlocked, &evidence).await?;
        }
    }
    Ok(())
}

fn fresh_nonce(state: &AppState) -> String {
    let (a, b) = (state.random_id_bytes(), state.random_id_bytes());
    format!(
        "{}{}",
        gp4u_core::hex::encode(&a),
        gp4u_core::hex::encode(&b)
    )
}

/// One round: close the challenges past their deadline, issue new ones, refresh the book.
/// Returns the verdicts of the challenges it closed, by node.
pub async fn round(state: &AppState) -> StoreResult<Vec<(NodeId, Verdict)>> {
    let now_ms = state.now_ms();
    let mut closed = Vec::new();
    for challenge in state.store.open_challenges(ROUND_LIMIT).await? {
        if challenge.deadline_ms > now_ms {
            continue;
        }
        let heard = state
            .store
            .job_heard_since(&challenge.job_id, challenge.issued_at_ms)
            .await?;
        let verdict = if heard {
            Verdict::Unanswered
        } else {
            Verdict::Timeout
        };
        if state
            .store
            .close_challenge(&challenge.nonce, verdict.as_str(), None, None, now_ms)
            .await?
        {
            conclude(state, &challenge, verdict, None).await?;
            closed.push((challenge.node_id.clone(), verdict));
        }
    }
    // One new challenge per node with running jobs and none open: a job picked at random,
    // so that every job of a busy node is looked at over time.
    let mut by_node: BTreeMap<NodeId, Vec<JobId>> = BTreeMap::new();
    for (node, job) in state.store.jobs_to_challenge(ROUND_LIMIT).await? {
        by_node.entry(node).or_default().push(job);
    }
    let window_ms = answer_window_ms(state);
    for (node, jobs) in by_node {
        let pick = usize::from(state.random_id_bytes()[0]) % jobs.len().max(1);
        let Some(job) = jobs.get(pick) else { continue };
        let record = ChallengeRecord {
            nonce: fresh_nonce(state),
            node_id: node,
            job_id: job.clone(),
            issued_at_ms: now_ms,
            deadline_ms: now_ms.saturating_add(window_ms),
            answered_at_ms: None,
            result: None,
            detail: None,
            evidence: None,
        };
        state.store.issue_challenge(&record).await?;
    }
    // The book: every open challenge, whichever replica issued it.
    let open = state.store.open_challenges(ROUND_LIMIT).await?;
    state.tutela.challenges.replace(
        open.iter()
            .map(|record| (record.job_id.clone(), wire(state, record)))
            .collect(),
    );
    Ok(closed)
}

/// Issues one challenge for `job` now (tests and drills); it is in the book at once.
pub async fn challenge_now(state: &AppState, node: &NodeId, job: &JobId) -> StoreResult<String> {
    let now_ms = state.now_ms();
    let record = ChallengeRecord {
        nonce: fresh_nonce(state),
        node_id: node.clone(),
        job_id: job.clone(),
        issued_at_ms: now_ms,
        deadline_ms: now_ms.saturating_add(answer_window_ms(state)),
        answered_at_ms: None,
        result: None,
        detail: None,
        evidence: None,
    };
    state.store.issue_challenge(&record).await?;
    state
        .tutela
        .challenges
        .insert(job.clone(), wire(state, &record));
    Ok(record.nonce)
}

/// Runs [`round`] every `visibility_interval_s` until `stopping`.
pub async fn run_visibility(state: AppState, mut stopping: watch::Receiver<bool>) {
    let period = Duration::from_secs(state.tutela.settings.visibility_interval_s);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stopping.changed() => return,
        }
        if let Err(error) = round(&state).await {
            tracing::warn!(%error, "a visibility round failed; retrying next period");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn evidence() -> VisibilityEvidence {
        VisibilityEvidence {
            container_id: "c".repeat(64),
            image: format!("reg/img@sha256:{}", "a".repeat(64)),
            env_job_id: Some("job_j".into()),
            init_started_ticks: Some(100),
            cpu_ns: Some(5_000),
            processes: 2,
        }
    }

    fn manifest() -> JobManifest {
        gp4u_core::manifest::validate_submission(&serde_json::json!({
            "name": "j", "gpuId": "gpu_g", "workload_type": "TRAINING",
            "expectedDurationHours": 1.0, "docker_image": "reg/img",
            "docker_image_sha256": "a".repeat(64)
        }))
        .unwrap()
    }

    #[test]
    fn evidence_must_show_the_jobs_container_continuing() {
        let (job, manifest) = (JobId::parse("job_j").unwrap(), manifest());
        assert_eq!(
            evidence_fault(&job, &manifest, &evidence(), None, false),
            None
        );
        assert_eq!(
            evidence_fault(&job, &manifest, &evidence(), Some(&evidence()), false),
            None
        );
        let fault = |changed: VisibilityEvidence, previous: Option<&VisibilityEvidence>| {
            evidence_fault(&job, &manifest, &changed, previous, false).unwrap()
        };
        assert!(
            fault(
                VisibilityEvidence {
                    env_job_id: Some("job_other".into()),
                    ..evidence()
                },
                None
            )
            .contains("GP4U_JOB_ID")
        );
        assert!(
            fault(
                VisibilityEvidence {
                    image: format!("reg/img@sha256:{}", "b".repeat(64)),
                    ..evidence()
                },
                None
            )
            .contains("not the job's image")
        );
        assert!(
            fault(
                VisibilityEvidence {
                    processes: 0,
                    ..evidence()
                },
                None
            )
            .contains("no running process")
        );
        let before = evidence();
        assert!(
            fault(
                VisibilityEvidence {
                    container_id: "d".repeat(64),
                    ..evidence()
                },
                Some(&before)
            )
            .contains("container changed")
        );
        assert!(
            fault(
                VisibilityEvidence {
                    init_started_ticks: Some(999),
                    ..evidence()
                },
                Some(&before)
            )
            .contains("restarted")
        );
        assert!(
            fault(
                VisibilityEvidence {
                    cpu_ns: Some(4_999),
                    ..evidence()
                },
                Some(&before)
            )
            .contains("went back")
        );
        // The process runtime has no image.
        let process = VisibilityEvidence {
            image: String::new(),
            container_id: "process:42".into(),
            ..evidence()
        };
        assert_eq!(evidence_fault(&job, &manifest, &process, None, true), None);
    }
}
