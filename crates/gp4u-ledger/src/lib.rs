//! The pure core of GP4U's transparency log ("Obsidian").
//!
//! Obsidian is an append-only log of GP4U records, built as an RFC 6962 / RFC 9162 Merkle
//! tree and published as signed checkpoints. This crate holds everything about it that is
//! plain computation; storage, networking, clocks and key files live elsewhere. It does no
//! I/O, reads no clock and draws no randomness.
//!
//! - [`hash`]: leaf and node hashing (`SHA-256(0x00 ‖ data)`, `SHA-256(0x01 ‖ l ‖ r)`).
//! - [`tree`]: tree maintenance for a store that persists perfect subtree hashes
//!   ([`NodeId`]): the [`Frontier`] that appends leaves and gives the root, and proof plans
//!   ([`inclusion_proof_plan`], [`consistency_proof_plan`]) that name the stored nodes each
//!   proof element is made of, put together by [`assemble`].
//! - [`reference`](mod@reference): naive RFC 9162 algorithms over an in-memory leaf list ([`mth`],
//!   [`inclusion_proof`], [`consistency_proof`]) for tests and offline tools.
//! - [`verify`]: RFC 9162 proof verification ([`verify_inclusion`], [`verify_consistency`]).
//! - [`note`]: C2SP signed notes with Ed25519 keys, compatible with Go's
//!   `golang.org/x/mod/sumdb/note`.
//! - [`checkpoint`]: C2SP tlog checkpoints ([`Checkpoint`]) and their signing and opening.
//!
//! Proof conventions: inclusion proofs are only defined for `index < size`; consistency from
//! size 0 is the empty proof, accepted for any roots (consistency with the empty tree is
//! trivial), and consistency between equal sizes is the empty proof with equal roots.

pub mod checkpoint;
pub mod hash;
pub mod note;
pub mod reference;
pub mod tree;
pub mod verify;

pub use checkpoint::{
    Checkpoint, CheckpointError, open_checkpoint, open_checkpoint_with, sign_checkpoint,
};
pub use hash::{Hash, HexError, empty_root, hash_from_hex, leaf_hash, node_hash, to_hex};
pub use note::{
    NoteError, NoteVerifier, is_valid_key_name, key_id, open_note, parse_signer_key,
    parse_verifier_key, sign_note, signer_key, verifier_key,
};
pub use reference::{consistency_proof, inclusion_proof, mth};
pub use tree::{
    Frontier, NodeId, ProofPlan, TreeError, assemble, consistency_proof_plan, fold_parts,
    inclusion_proof_plan, range_nodes,
};
pub use verify::{VerifyError, root_from_inclusion_proof, verify_consistency, verify_inclusion};
