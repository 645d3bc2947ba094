//! The GP4U provider agent (`gp4u agent`): runs on a provider's GPU host, registers its GPUs,
//! takes assignments from the control plane, runs them in hardened containers and reports.
//!
//! Modules: [`gpu`] (NVML inventory and readings, or emulated GPUs), [`key`] (the node's
//! ed25519 key), [`client`] (HTTP to the platform), [`docker`] (digest-pinned pulls and the
//! hardened container and the job's own network), [`jobenv`] (the job's environment),
//! [`scratch`] (the job's size-capped `/scratch`), [`firewall`] (the egress filter of `public`
//! jobs), [`process`] (the unisolated development runtime), [`files`] (inputs
//! fetched and verified, `/output` packed), [`logs`] (stdout/stderr shipped to the platform),
//! [`netns`] (a container's network namespace: outbound bytes, destinations), [`cgroup`] (a
//! job's processes and CPU use), [`telemetry`] (the Russian-Doll watchdog), [`coalescer`] (a
//! node's packets of one period posted together), [`proofs`] (commitments to the power
//! readings, energy and hardware proofs after a job), [`metrics`] (`--metrics-listen`), [`visibility`]
//! (the endpoint answering the platform's visibility challenges), [`agent`] (the loop).

pub mod agent;
pub mod cgroup;
pub mod client;
pub mod coalescer;
pub mod docker;
pub mod files;
pub mod firewall;
pub mod gpu;
pub use gp4u_attest::key;
pub mod jobenv;
pub mod logs;
pub mod metrics;
pub mod netns;
pub mod process;
pub mod proofs;
pub mod scratch;
pub mod telemetry;
pub mod visibility;
