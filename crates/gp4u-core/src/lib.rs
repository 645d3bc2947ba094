//! The pure GP4U domain: ids, money and pricing, billing, energy metering, the job state
//! machine, request validation, bearer tokens, domain events and the chambers' read models.
//!
//! Invariant: nothing here does I/O, reads a clock or draws randomness. Time (`now`) and
//! random bytes are arguments, so every function is deterministic and testable without
//! mocks, and the server, agent and CLI all share one definition of the rules.

pub mod atlas;
pub mod billing;
pub mod chambers;
pub mod clock;
pub mod energy;
pub mod events;
pub mod fleet;
pub mod hex;
pub mod ids;
pub mod job;
pub mod manifest;
pub mod money;
pub mod posture;
pub mod pricing;
pub mod token;
pub mod tutela;

pub use fleet::{GpuStatus, NodeStatus};
pub use ids::{ArtifactId, GpuId, IdError, JobId, NodeId, UserId};
pub use job::{
    EndedBy, FailureReason, JobEvent, JobInput, JobState, JobStatus, TransitionError, transition,
};
pub use manifest::{
    FieldError, GpuRequirement, GpuSpec, GpuTarget, JobManifest, JobNetwork, NewUser, Registration,
    Role, ValidationCode, WorkloadType,
};
pub use money::{Hours, Money, MoneyError};
pub use token::{Claims, TokenError, TokenKeys, TokenSecret};
