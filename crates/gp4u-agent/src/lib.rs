//! The GP4U provider agent (`gp4u agent`): runs on a provider's GPU host, registers its GPUs,
//! takes assignments from the control plane, runs them in hardened containers and reports.
//!
//! Modules: [`gpu`] (NVML inventory and readings, or emulated GPUs), [`key`] (the node's
//! ed25519 key), [`client`] (HTTP to the platform), [`docker`] (digest-pinned pulls and the
//! hardened container), [`process`] (the unisolated development runtime), [`files`] (inputs
//! fetched and verified, `/output` packed), [`logs`] (stdout/stderr shipped to the platform),
//! [`agent`] (the loop).

pub mod agent;
pub mod client;
pub mod docker;
pub mod files;
pub mod gpu;
pub mod key;
pub mod logs;
pub mod process;
