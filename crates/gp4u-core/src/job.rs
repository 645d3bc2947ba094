//! The job state machine (SPEC §3 "Job states").
//!
//! ```text
//! PENDING ──assign──▶ ASSIGNED ──start──▶ RUNNING ──exit 0──▶ COMPLETE
//!    ▲                   │  │                 │
//!    └─pickup timed out──┘  └──exit 0─▶ COMPLETE, exit n / fail ─▶ FAILED
//! PENDING | ASSIGNED | RUNNING ──cancel──▶ CANCELLED;  ──fail──▶ FAILED
//! ```
//!
//! `transition` is a pure function of (state, input, now): the store applies it inside the
//! transaction that also writes the emitted events to the outbox, so the row and its events
//! can never disagree. Terminal states never change: every input on them is refused.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{GpuId, NodeId};

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Pending,
    Assigned,
    Running,
    Complete,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Pending,
        JobStatus::Assigned,
        JobStatus::Running,
        JobStatus::Complete,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub const fn as_str(&self) -> &'static str {
        match self {
            JobStatus::Pending => "PENDING",
            JobStatus::Assigned => "ASSIGNED",
            JobStatus::Running => "RUNNING",
            JobStatus::Complete => "COMPLETE",
            JobStatus::Failed => "FAILED",
            JobStatus::Cancelled => "CANCELLED",
        }
    }

    /// Parses the wire form ("PENDING", …); `None` for anything else.
    pub fn parse(text: &str) -> Option<JobStatus> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
    }

    /// COMPLETE, FAILED and CANCELLED are final: no input changes them.
    pub const fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobStatus::Complete | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Why a job left the happy path. Every FAILED or CANCELLED job carries one, and so does
/// an assignment that was withdrawn (`PickupTimeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureReason {
    NonzeroExit,
    KilledAnomaly,
    DurationExceeded,
    JobDropped,
    VisibilityBlocked,
    ImagePullFailed,
    /// The agent could not fetch the job's input artifacts, or one did not match its SHA-256.
    InputFailed,
    PickupTimeout,
    CancelledByCustomer,
    CancelledByAdmin,
    CryptoMiningDuringMlJob,
    ProviderEjected,
    /// The job wrote more than its `/scratch` allows (`scratch_gb`): the customer's workload.
    ScratchExceeded,
    /// The node could not set the job up (its network, its scratch, the egress filter, the
    /// engine refusing the container for a reason not in the image): the provider's node.
    NodeSetupFailed,
}

impl FailureReason {
    pub const ALL: [FailureReason; 14] = [
        FailureReason::NonzeroExit,
        FailureReason::KilledAnomaly,
        FailureReason::DurationExceeded,
        FailureReason::JobDropped,
        FailureReason::VisibilityBlocked,
        FailureReason::ImagePullFailed,
        FailureReason::InputFailed,
        FailureReason::PickupTimeout,
        FailureReason::CancelledByCustomer,
        FailureReason::CancelledByAdmin,
        FailureReason::CryptoMiningDuringMlJob,
        FailureReason::ProviderEjected,
        FailureReason::ScratchExceeded,
        FailureReason::NodeSetupFailed,
    ];

    pub const fn as_str(&self) -> &'static str {
        match self {
            FailureReason::NonzeroExit => "NONZERO_EXIT",
            FailureReason::KilledAnomaly => "KILLED_ANOMALY",
            FailureReason::DurationExceeded => "DURATION_EXCEEDED",
            FailureReason::JobDropped => "JOB_DROPPED",
            FailureReason::VisibilityBlocked => "VISIBILITY_BLOCKED",
            FailureReason::ImagePullFailed => "IMAGE_PULL_FAILED",
            FailureReason::InputFailed => "INPUT_FAILED",
            FailureReason::PickupTimeout => "PICKUP_TIMEOUT",
            FailureReason::CancelledByCustomer => "CANCELLED_BY_CUSTOMER",
            FailureReason::CancelledByAdmin => "CANCELLED_BY_ADMIN",
            FailureReason::CryptoMiningDuringMlJob => "CRYPTO_MINING_DURING_ML_JOB",
            FailureReason::ProviderEjected => "PROVIDER_EJECTED",
            FailureReason::ScratchExceeded => "SCRATCH_EXCEEDED",
            FailureReason::NodeSetupFailed => "NODE_SETUP_FAILED",
        }
    }

    /// Parses the wire form ("NONZERO_EXIT", …); `None` for anything else.
    pub fn parse(text: &str) -> Option<FailureReason> {
        FailureReason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == text)
    }

    /// Whether the provider is to blame (feeds slashing and trust). An image that fails to
    /// pull is the customer's image, and a duration overrun is the customer's workload. An input
    /// that could not be fetched or verified is not pinned on the provider either: the platform
    /// stores the artifacts, and a corrupted download cannot be told apart from a platform fault.
    pub const fn is_provider_fault(&self) -> bool {
        matches!(
            self,
            FailureReason::JobDropped
                | FailureReason::VisibilityBlocked
                | FailureReason::CryptoMiningDuringMlJob
                | FailureReason::ProviderEjected
                | FailureReason::NodeSetupFailed
        )
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Who ended a FAILED or CANCELLED job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum EndedBy {
    Customer,
    Provider,
    Platform,
}

impl EndedBy {
    pub const ALL: [EndedBy; 3] = [EndedBy::Customer, EndedBy::Provider, EndedBy::Platform];

    pub const fn as_str(&self) -> &'static str {
        match self {
            EndedBy::Customer => "customer",
            EndedBy::Provider => "provider",
            EndedBy::Platform => "platform",
        }
    }

    /// Parses the wire form ("customer", …); `None` for anything else.
    pub fn parse(text: &str) -> Option<EndedBy> {
        EndedBy::ALL
            .into_iter()
            .find(|ended_by| ended_by.as_str() == text)
    }
}

impl fmt::Display for EndedBy {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The state-machine part of a job row. Times are unix milliseconds supplied by the caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    pub status: JobStatus,
    pub failure_reason: Option<FailureReason>,
    pub ended_by: Option<EndedBy>,
    pub node_id: Option<NodeId>,
    pub gpu_id: Option<GpuId>,
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    pub exit_code: Option<i32>,
}

impl JobState {
    /// A freshly submitted job: PENDING, nothing else set.
    pub const fn new_pending() -> JobState {
        JobState {
            status: JobStatus::Pending,
            failure_reason: None,
            ended_by: None,
            node_id: None,
            gpu_id: None,
            started_at_ms: None,
            ended_at_ms: None,
            exit_code: None,
        }
    }
}

/// Something that happened to a job, fed to `transition`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobInput {
    /// Atlas placed the job on a GPU.
    Assign { node_id: NodeId, gpu_id: GpuId },
    /// The agent did not pick the assignment up in time; the job goes back to the queue.
    PickupTimedOut,
    /// The agent started the container.
    Start,
    /// The container exited with this code.
    Exit { exit_code: i32 },
    /// The job failed for a reason other than its own exit code.
    Fail {
        reason: FailureReason,
        ended_by: EndedBy,
    },
    /// Someone cancelled the job.
    Cancel { by: EndedBy },
    /// The attempt failed for a provider-fault `reason` and the job has retries left: it goes
    /// back to the queue, to be placed on another node (see [`fail_or_retry`]).
    Retry { reason: FailureReason },
}

impl JobInput {
    /// A stable name for error messages.
    pub const fn name(&self) -> &'static str {
        match self {
            JobInput::Assign { .. } => "assign",
            JobInput::PickupTimedOut => "pickup_timed_out",
            JobInput::Start => "start",
            JobInput::Exit { .. } => "exit",
            JobInput::Fail { .. } => "fail",
            JobInput::Cancel { .. } => "cancel",
            JobInput::Retry { .. } => "retry",
        }
    }
}

/// What a transition emits, to be written to the outbox with the new state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JobEvent {
    Assigned {
        node_id: NodeId,
        gpu_id: GpuId,
    },
    Unassigned {
        reason: FailureReason,
    },
    Started {
        at_ms: i64,
    },
    Completed {
        exit_code: i32,
        at_ms: i64,
    },
    Failed {
        reason: FailureReason,
        ended_by: EndedBy,
        exit_code: Option<i32>,
        at_ms: i64,
    },
    Cancelled {
        reason: FailureReason,
        ended_by: EndedBy,
        at_ms: i64,
    },
}

impl JobEvent {
    /// The bus topic this event is published on.
    pub const fn topic(&self) -> &'static str {
        match self {
            JobEvent::Assigned { .. } => "job.assigned",
            JobEvent::Unassigned { .. } => "job.unassigned",
            JobEvent::Started { .. } => "job.started",
            JobEvent::Completed { .. } => TERMINAL_TOPICS[0],
            JobEvent::Failed { .. } => TERMINAL_TOPICS[1],
            JobEvent::Cancelled { .. } => TERMINAL_TOPICS[2],
        }
    }
}

/// The topics of the events that end a job: completed, failed, cancelled.
pub const TERMINAL_TOPICS: [&str; 3] = ["job.completed", "job.failed", "job.cancelled"];

/// Why an input was refused. The state is left as it was.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("the job is {status}, a terminal state that never changes")]
    Terminal { status: JobStatus },
    #[error("cannot apply `{input}` to a job that is {from}")]
    Illegal {
        from: JobStatus,
        input: &'static str,
    },
}

/// Applies one input at time `now_ms` (unix milliseconds) and returns the new state and the
/// events to publish. The caller persists both in one transaction.
pub fn transition(
    state: &JobState,
    input: JobInput,
    now_ms: i64,
) -> Result<(JobState, Vec<JobEvent>), TransitionError> {
    let from = state.status;
    if from.is_terminal() {
        return Err(TransitionError::Terminal { status: from });
    }
    let illegal = TransitionError::Illegal {
        from,
        input: input.name(),
    };
    let mut next = state.clone();

    match (from, input) {
        (JobStatus::Pending, JobInput::Assign { node_id, gpu_id }) => {
            next.status = JobStatus::Assigned;
            next.node_id = Some(node_id.clone());
            next.gpu_id = Some(gpu_id.clone());
            Ok((next, vec![JobEvent::Assigned { node_id, gpu_id }]))
        }
        (JobStatus::Assigned, JobInput::PickupTimedOut) => {
            // Back to the queue so Atlas can place it elsewhere; the GPU is freed.
            next.status = JobStatus::Pending;
            next.node_id = None;
            next.gpu_id = None;
            let event = JobEvent::Unassigned {
                reason: FailureReason::PickupTimeout,
            };
            Ok((next, vec![event]))
        }
        (JobStatus::Assigned, JobInput::Start) => {
            next.status = JobStatus::Running;
            next.started_at_ms = Some(now_ms);
            Ok((next, vec![JobEvent::Started { at_ms: now_ms }]))
        }
        (JobStatus::Assigned | JobStatus::Running, JobInput::Exit { exit_code }) => {
            // An exit report proves the container ran, even if its start report was lost.
            next.started_at_ms = state.started_at_ms.or(Some(now_ms));
            next.ended_at_ms = Some(now_ms);
            next.exit_code = Some(exit_code);
            if exit_code == 0 {
                next.status = JobStatus::Complete;
                let event = JobEvent::Completed {
                    exit_code,
                    at_ms: now_ms,
                };
                return Ok((next, vec![event]));
            }
            // A nonzero exit is the customer's own program failing.
            let reason = FailureReason::NonzeroExit;
            let ended_by = EndedBy::Customer;
            next.status = JobStatus::Failed;
            next.failure_reason = Some(reason);
            next.ended_by = Some(ended_by);
            let event = JobEvent::Failed {
                reason,
                ended_by,
                exit_code: Some(exit_code),
                at_ms: now_ms,
            };
            Ok((next, vec![event]))
        }
        (
            JobStatus::Pending | JobStatus::Assigned | JobStatus::Running,
            JobInput::Fail { reason, ended_by },
        ) => {
            next.status = JobStatus::Failed;
            next.failure_reason = Some(reason);
            next.ended_by = Some(ended_by);
            next.ended_at_ms = Some(now_ms);
            let event = JobEvent::Failed {
                reason,
                ended_by,
                exit_code: next.exit_code,
                at_ms: now_ms,
            };
            Ok((next, vec![event]))
        }
        (JobStatus::Assigned | JobStatus::Running, JobInput::Retry { reason }) => {
            // Back to the queue; this attempt's start is forgotten (metering starts again).
            next.status = JobStatus::Pending;
            next.node_id = None;
            next.gpu_id = None;
            next.started_at_ms = None;
            next.exit_code = None;
            Ok((next, vec![JobEvent::Unassigned { reason }]))
        }
        (
            JobStatus::Pending | JobStatus::Assigned | JobStatus::Running,
            JobInput::Cancel { by },
        ) => {
            let reason = match by {
                EndedBy::Customer => FailureReason::CancelledByCustomer,
                EndedBy::Provider | EndedBy::Platform => FailureReason::CancelledByAdmin,
            };
            next.status = JobStatus::Cancelled;
            next.failure_reason = Some(reason);
            next.ended_by = Some(by);
            next.ended_at_ms = Some(now_ms);
            let event = JobEvent::Cancelled {
                reason,
                ended_by: by,
                at_ms: now_ms,
            };
            Ok((next, vec![event]))
        }
        _ => Err(illegal),
    }
}

/// The input for an attempt that failed for `reason`: a provider-fault failure with retries
/// left (`retries_used < max_retries`) is a [`JobInput::Retry`] on another node; anything else
/// fails the job. A pinned job (`gpuId`) cannot move, so it is never retried.
pub fn fail_or_retry(
    reason: FailureReason,
    ended_by: EndedBy,
    retries_used: u32,
    max_retries: u32,
    pinned: bool,
) -> JobInput {
    if reason.is_provider_fault() && retries_used < max_retries && !pinned {
        JobInput::Retry { reason }
    } else {
        JobInput::Fail { reason, ended_by }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeId {
        NodeId::parse("node_n1").unwrap()
    }

    fn gpu() -> GpuId {
        GpuId::parse("gpu_g1").unwrap()
    }

    fn assigned() -> JobState {
        let input = JobInput::Assign {
            node_id: node(),
            gpu_id: gpu(),
        };
        transition(&JobState::new_pending(), input, 1).unwrap().0
    }

    #[test]
    fn happy_path_emits_one_event_per_step() {
        let pending = JobState::new_pending();
        let (assigned, events) = transition(
            &pending,
            JobInput::Assign {
                node_id: node(),
                gpu_id: gpu(),
            },
            10,
        )
        .unwrap();
        assert_eq!(assigned.status, JobStatus::Assigned);
        assert_eq!(assigned.gpu_id, Some(gpu()));
        assert_eq!(events[0].topic(), "job.assigned");

        let (running, events) = transition(&assigned, JobInput::Start, 20).unwrap();
        assert_eq!(running.started_at_ms, Some(20));
        assert_eq!(events, vec![JobEvent::Started { at_ms: 20 }]);

        let (complete, events) = transition(&running, JobInput::Exit { exit_code: 0 }, 30).unwrap();
        assert_eq!(complete.status, JobStatus::Complete);
        assert_eq!(complete.started_at_ms, Some(20));
        assert_eq!(complete.ended_at_ms, Some(30));
        assert_eq!(complete.exit_code, Some(0));
        assert_eq!(complete.failure_reason, None);
        assert_eq!(events[0].topic(), "job.completed");
    }

    #[test]
    fn exit_from_assigned_fills_started_at() {
        let (complete, _) = transition(&assigned(), JobInput::Exit { exit_code: 0 }, 50).unwrap();
        assert_eq!(complete.started_at_ms, Some(50));
    }

    #[test]
    fn nonzero_exit_fails_as_customer_fault() {
        let (failed, events) = transition(&assigned(), JobInput::Exit { exit_code: 3 }, 5).unwrap();
        assert_eq!(failed.status, JobStatus::Failed);
        assert_eq!(failed.failure_reason, Some(FailureReason::NonzeroExit));
        assert_eq!(failed.ended_by, Some(EndedBy::Customer));
        assert_eq!(
            events,
            vec![JobEvent::Failed {
                reason: FailureReason::NonzeroExit,
                ended_by: EndedBy::Customer,
                exit_code: Some(3),
                at_ms: 5,
            }]
        );
    }

    #[test]
    fn pickup_timeout_requeues_and_frees_the_gpu() {
        let (pending, events) = transition(&assigned(), JobInput::PickupTimedOut, 9).unwrap();
        assert_eq!(pending, JobState::new_pending());
        assert_eq!(
            events,
            vec![JobEvent::Unassigned {
                reason: FailureReason::PickupTimeout
            }]
        );
    }

    #[test]
    fn cancel_reason_depends_on_who() {
        let (by_customer, _) = transition(
            &JobState::new_pending(),
            JobInput::Cancel {
                by: EndedBy::Customer,
            },
            1,
        )
        .unwrap();
        assert_eq!(by_customer.status, JobStatus::Cancelled);
        assert_eq!(
            by_customer.failure_reason,
            Some(FailureReason::CancelledByCustomer)
        );
        let (by_platform, events) = transition(
            &assigned(),
            JobInput::Cancel {
                by: EndedBy::Platform,
            },
            1,
        )
        .unwrap();
        assert_eq!(
            by_platform.failure_reason,
            Some(FailureReason::CancelledByAdmin)
        );
        assert_eq!(by_platform.ended_by, Some(EndedBy::Platform));
        assert_eq!(events[0].topic(), "job.cancelled");
    }

    #[test]
    fn terminal_states_refuse_everything() {
        let (complete, _) = transition(&assigned(), JobInput::Exit { exit_code: 0 }, 5).unwrap();
        for input in [
            JobInput::Start,
            JobInput::Cancel {
                by: EndedBy::Customer,
            },
            JobInput::Exit { exit_code: 1 },
        ] {
            assert_eq!(
                transition(&complete, input, 6),
                Err(TransitionError::Terminal {
                    status: JobStatus::Complete
                })
            );
        }
    }

    #[test]
    fn illegal_pairs_name_the_input() {
        assert_eq!(
            transition(&JobState::new_pending(), JobInput::Start, 1),
            Err(TransitionError::Illegal {
                from: JobStatus::Pending,
                input: "start"
            })
        );
        let message = transition(&JobState::new_pending(), JobInput::Exit { exit_code: 0 }, 1)
            .unwrap_err()
            .to_string();
        assert_eq!(message, "cannot apply `exit` to a job that is PENDING");
    }

    #[test]
    fn wire_names_round_trip() {
        for status in JobStatus::ALL {
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        for reason in FailureReason::ALL {
            assert_eq!(FailureReason::parse(reason.as_str()), Some(reason));
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
        }
        for ended_by in EndedBy::ALL {
            assert_eq!(EndedBy::parse(ended_by.as_str()), Some(ended_by));
            let json = serde_json::to_string(&ended_by).unwrap();
            assert_eq!(json, format!("\"{}\"", ended_by.as_str()));
        }
        assert_eq!(JobStatus::parse("pending"), None);
        assert!(!FailureReason::ImagePullFailed.is_provider_fault());
        assert!(!FailureReason::InputFailed.is_provider_fault());
        assert_eq!(
            FailureReason::parse("INPUT_FAILED"),
            Some(FailureReason::InputFailed)
        );
        assert!(FailureReason::JobDropped.is_provider_fault());
    }

    #[test]
    fn events_serialize_with_snake_case_fields() {
        let event = JobEvent::Failed {
            reason: FailureReason::DurationExceeded,
            ended_by: EndedBy::Platform,
            exit_code: None,
            at_ms: 7,
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "event": "failed",
                "reason": "DURATION_EXCEEDED",
                "ended_by": "platform",
                "exit_code": null,
                "at_ms": 7
            })
        );
        let back: JobEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }
}
