//! GP4U keys and signed statements. Pure functions over bytes, plus the key files.
//!
//! - [`key`]: ed25519 key files (the agent's `node.key`, the server's `platform.key`).
//! - [`visibility`]: the visibility challenge (SPEC §7): the platform signs a fresh nonce
//!   with its key, the agent checks that signature and answers with its node key.
//! - [`energy`]: zero-knowledge energy attestation: Pedersen commitments to telemetry
//!   readings, a Bulletproofs proof of the job's energy, power limit and renewable share.
//! - [`hardware`]: the hardware attestation the node key signs.
//! - [`proofs`]: the `zk-proofs` submission body wrapping either.
//!
//! Randomness is always an argument; nothing here reads a clock.

pub mod energy;
pub mod hardware;
pub mod key;
pub mod proofs;
pub mod visibility;
