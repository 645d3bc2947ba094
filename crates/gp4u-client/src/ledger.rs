//! The transparency log, public: a client without a token reads it as a witness.

use gp4u_proto::{ConsistencyProof, InclusionProof, LedgerEntries};

use crate::{Client, ClientResult};
use gp4u_proto::paths;

impl Client {
    /// `GET /api/ledger/checkpoint`: the latest signed note (C2SP tlog-checkpoint).
    pub async fn checkpoint(&self) -> ClientResult<String> {
        self.text("the checkpoint", paths::LEDGER_CHECKPOINT).await
    }

    /// `GET /api/ledger/public-key`: the note verifier key the checkpoints are signed with.
    pub async fn ledger_public_key(&self) -> ClientResult<String> {
        self.text("the ledger's public key", paths::LEDGER_PUBLIC_KEY)
            .await
            .map(|key| key.trim().to_string())
    }

    /// `GET /api/ledger/entries?start=&end=`: entries `start <= index < end` (at most 1000).
    pub async fn ledger_entries(&self, start: u64, end: u64) -> ClientResult<LedgerEntries> {
        self.get(
            &format!("the ledger's entries {start}..{end}"),
            &format!("{}?start={start}&end={end}", paths::LEDGER_ENTRIES),
        )
        .await
    }

    /// `GET /api/ledger/proof/inclusion?index=&size=`.
    pub async fn inclusion_proof(&self, index: u64, size: u64) -> ClientResult<InclusionProof> {
        self.get(
            &format!("the inclusion proof of entry {index} in {size}"),
            &format!("{}?index={index}&size={size}", paths::LEDGER_INCLUSION),
        )
        .await
    }

    /// `GET /api/ledger/proof/consistency?from=&to=`.
    pub async fn consistency_proof(&self, from: u64, to: u64) -> ClientResult<ConsistencyProof> {
        self.get(
            &format!("the consistency proof from {from} to {to}"),
            &format!("{}?from={from}&to={to}", paths::LEDGER_CONSISTENCY),
        )
        .await
    }
}
