//! GP4U keys and signed statements. Pure functions over bytes, plus the key files.
//!
//! - [`key`]: ed25519 key files (the agent's `node.key`, the server's `platform.key`).
//! - [`visibility`]: the visibility challenge (SPEC §7): the platform signs a fresh nonce
//!   with its key, the agent checks that signature and answers with its node key.

pub mod key;
pub mod visibility;
