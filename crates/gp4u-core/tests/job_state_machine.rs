//! Property tests of the job state machine: terminal states never change, only the legal
//! (from, to) pairs of SPEC §3 ever happen, and `transition` is deterministic.

use gp4u_core::ids::{GpuId, NodeId};
use gp4u_core::job::{
    EndedBy, FailureReason, JobInput, JobState, JobStatus, TransitionError, transition,
};
use proptest::prelude::*;

/// Every (from, to) pair a successful transition may produce.
const LEGAL_PAIRS: [(JobStatus, JobStatus); 11] = [
    (JobStatus::Pending, JobStatus::Assigned),
    (JobStatus::Assigned, JobStatus::Pending),
    (JobStatus::Assigned, JobStatus::Running),
    (JobStatus::Assigned, JobStatus::Complete),
    (JobStatus::Running, JobStatus::Complete),
    (JobStatus::Pending, JobStatus::Failed),
    (JobStatus::Assigned, JobStatus::Failed),
    (JobStatus::Running, JobStatus::Failed),
    (JobStatus::Pending, JobStatus::Cancelled),
    (JobStatus::Assigned, JobStatus::Cancelled),
    (JobStatus::Running, JobStatus::Cancelled),
];

/// The independent model: what status an input leads to from a non-terminal status,
/// or `None` when the pair is illegal.
fn expected_status(from: JobStatus, input: &JobInput) -> Option<JobStatus> {
    use JobStatus::{Assigned, Cancelled, Complete, Failed, Pending, Running};
    match (from, input) {
        (Pending, JobInput::Assign { .. }) => Some(Assigned),
        (Assigned, JobInput::PickupTimedOut) => Some(Pending),
        (Assigned, JobInput::Start) => Some(Running),
        (Assigned | Running, JobInput::Exit { exit_code: 0 }) => Some(Complete),
        (Assigned | Running, JobInput::Exit { .. }) => Some(Failed),
        (Pending | Assigned | Running, JobInput::Fail { .. }) => Some(Failed),
        (Pending | Assigned | Running, JobInput::Cancel { .. }) => Some(Cancelled),
        _ => None,
    }
}

fn ended_by() -> impl Strategy<Value = EndedBy> {
    prop::sample::select(EndedBy::ALL.to_vec())
}

fn job_input() -> impl Strategy<Value = JobInput> {
    prop_oneof![
        ("[a-z0-9]{1,8}", "[a-z0-9]{1,8}").prop_map(|(node, gpu)| JobInput::Assign {
            node_id: NodeId::parse(&format!("node_{node}")).expect("generated node id is valid"),
            gpu_id: GpuId::parse(&format!("gpu_{gpu}")).expect("generated gpu id is valid"),
        }),
        Just(JobInput::PickupTimedOut),
        Just(JobInput::Start),
        prop_oneof![Just(0), any::<i32>()].prop_map(|exit_code| JobInput::Exit { exit_code }),
        (
            prop::sample::select(FailureReason::ALL.to_vec()),
            ended_by()
        )
            .prop_map(|(reason, ended_by)| JobInput::Fail { reason, ended_by }),
        ended_by().prop_map(|by| JobInput::Cancel { by }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_sequences_follow_the_legal_pairs(
        inputs in prop::collection::vec(job_input(), 0..24),
        start_ms in 0_i64..1_000_000,
    ) {
        let mut state = JobState::new_pending();
        for (step, input) in inputs.into_iter().enumerate() {
            let now_ms = start_ms + step as i64;
            let from = state.status;
            let result = transition(&state, input.clone(), now_ms);

            // Deterministic: the same state, input and time give the same answer.
            prop_assert_eq!(&result, &transition(&state, input.clone(), now_ms));

            if from.is_terminal() {
                prop_assert_eq!(result, Err(TransitionError::Terminal { status: from }));
                continue;
            }
            match (expected_status(from, &input), result) {
                (None, Err(TransitionError::Illegal { from: error_from, input: name })) => {
                    prop_assert_eq!(error_from, from);
                    prop_assert_eq!(name, input.name());
                }
                (Some(expected), Ok((next, events))) => {
                    prop_assert_eq!(next.status, expected);
                    prop_assert!(LEGAL_PAIRS.contains(&(from, next.status)));
                    prop_assert_eq!(events.len(), 1);
                    if next.status.is_terminal() {
                        prop_assert_eq!(next.ended_at_ms, Some(now_ms));
                    }
                    if matches!(next.status, JobStatus::Failed | JobStatus::Cancelled) {
                        // Every FAILED/CANCELLED carries a typed reason and who ended it.
                        prop_assert!(next.failure_reason.is_some());
                        prop_assert!(next.ended_by.is_some());
                    }
                    if next.status == JobStatus::Pending {
                        prop_assert_eq!(&next.node_id, &None);
                    }
                    if matches!(next.status, JobStatus::Assigned | JobStatus::Running) {
                        prop_assert!(next.node_id.is_some() && next.gpu_id.is_some());
                    }
                    state = next;
                }
                (expected, result) => {
                    prop_assert!(
                        false,
                        "from {:?} with {:?}: expected {:?}, got {:?}",
                        from, input, expected, result
                    );
                }
            }
        }
    }

    #[test]
    fn terminal_states_never_change(
        inputs in prop::collection::vec(job_input(), 1..16),
        terminal_input in prop_oneof![
            Just(JobInput::Exit { exit_code: 0 }),
            Just(JobInput::Exit { exit_code: 137 }),
            Just(JobInput::Cancel { by: EndedBy::Customer }),
            Just(JobInput::Fail { reason: FailureReason::JobDropped, ended_by: EndedBy::Provider }),
        ],
    ) {
        let assign = JobInput::Assign {
            node_id: NodeId::parse("node_a").unwrap(),
            gpu_id: GpuId::parse("gpu_a").unwrap(),
        };
        let (assigned, _) = transition(&JobState::new_pending(), assign, 1).unwrap();
        let (terminal, _) = transition(&assigned, terminal_input, 2).unwrap();
        prop_assert!(terminal.status.is_terminal());
        for input in inputs {
            prop_assert_eq!(
                transition(&terminal, input, 3),
                Err(TransitionError::Terminal { status: terminal.status })
            );
        }
    }
}
