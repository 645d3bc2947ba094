//! Obsidian's answers (SPEC §8): ranges of entries, inclusion and consistency proofs, and a
//! job's entries with their proofs. Hashes are lowercase hex of 32 bytes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An entry its reader may read (a token of the job's owner, or an admin's): everything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReadableEntry {
    pub index: u64,
    /// What the entry seals (`job.submitted`, `tutela.kill`, `settlement`, …).
    pub kind: String,
    /// The job the entry is about; `null` for entries about no job.
    pub job_id: Option<String>,
    /// RFC 9162 leaf hash of the body.
    pub leaf_hash: String,
    /// The sealed record, canonical JSON (`{"kind", "job_id", "payload"}`): hashing it gives
    /// `leaf_hash`.
    pub body: String,
    pub sealed_at_ms: i64,
}

/// An entry of someone else's job (or read anonymously): only what a witness needs to check
/// the tree — its index, kind and leaf hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WitnessedEntry {
    pub index: u64,
    pub kind: String,
    pub leaf_hash: String,
}

/// One entry of `GET /api/ledger/entries`: readable when the caller may read its body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum LedgerEntry {
    Readable(ReadableEntry),
    Witnessed(WitnessedEntry),
}

impl LedgerEntry {
    pub fn index(&self) -> u64 {
        match self {
            LedgerEntry::Readable(entry) => entry.index,
            LedgerEntry::Witnessed(entry) => entry.index,
        }
    }

    pub fn leaf_hash(&self) -> &str {
        match self {
            LedgerEntry::Readable(entry) => &entry.leaf_hash,
            LedgerEntry::Witnessed(entry) => &entry.leaf_hash,
        }
    }
}

/// `GET /api/ledger/entries?start=&end=`: entries `start <= index < end`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LedgerEntries {
    pub start: u64,
    pub end: u64,
    pub entries: Vec<LedgerEntry>,
}

/// `GET /api/ledger/proof/inclusion?index=&size=`: the RFC 9162 audit path of entry `index`
/// in the tree of `size` entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InclusionProof {
    pub index: u64,
    pub size: u64,
    pub proof: Vec<String>,
}

/// `GET /api/ledger/proof/consistency?from=&to=`: the RFC 9162 proof that the tree of `from`
/// entries is a prefix of the tree of `to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConsistencyProof {
    pub from: u64,
    pub to: u64,
    pub proof: Vec<String>,
}

/// A job's entry with its inclusion proof against [`JobLedger::checkpoint`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProvenEntry {
    #[serde(flatten)]
    pub entry: ReadableEntry,
    pub inclusion_proof: Vec<String>,
}

/// `GET /api/jobs/{id}/ledger`: the job's sealed entries with their inclusion proofs against
/// the included checkpoint, so that one answer verifies on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobLedger {
    pub job_id: String,
    /// The signed note (C2SP tlog-checkpoint) the proofs are against.
    pub checkpoint: String,
    pub tree_size: u64,
    /// The note verifier key the checkpoint is signed with.
    pub public_key: String,
    pub entries: Vec<ProvenEntry>,
    /// The job's entries stored after that checkpoint: sealed at the next one.
    pub pending: u64,
}
