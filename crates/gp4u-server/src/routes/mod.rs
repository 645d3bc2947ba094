//! HTTP handlers, one module per area of the API.

pub mod admin;
pub mod agent;
pub mod artifacts;
pub mod billing;
pub mod energy;
pub mod health;
pub mod jobs;
pub mod ledger;
pub mod logs;
pub mod outputs;
pub mod proofs;
pub mod providers;
pub mod telemetry;
pub mod visibility;
