//! Stage 7's answers (SPEC §8): balances, statements, settlements, and the grid factors carbon
//! is computed with. Amounts are in currency units (`f64`, for people) and, where exactness
//! matters, in micros (`i64`, 10⁻⁶ of a unit: what the ledger holds).

use std::collections::BTreeMap;

use gp4u_core::billing;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a transfer is for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TransferKind {
    /// Credit bought (or granted by an admin).
    TopUp,
    /// Reserved at submission.
    Hold,
    /// A provider's share of a settled job.
    Earnings,
    /// The platform's fee.
    Fee,
    /// A university provider's student programme share.
    StudentProgram,
    /// The unused part of a hold given back.
    Release,
    /// Paid out to the provider.
    Payout,
    /// Moved from a provider's credit into a node's stake.
    StakeDeposit,
    /// Taken from a node's stake by Tutela.
    Slash,
}

impl TransferKind {
    /// The kind a stored transfer names (`top_up`, `stake_deposit`, …); `None` for a name the
    /// wire contract does not know.
    pub fn parse(name: &str) -> Option<TransferKind> {
        serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
    }
}

impl From<billing::TransferKind> for TransferKind {
    fn from(kind: billing::TransferKind) -> Self {
        match kind {
            billing::TransferKind::TopUp => TransferKind::TopUp,
            billing::TransferKind::Hold => TransferKind::Hold,
            billing::TransferKind::Earnings => TransferKind::Earnings,
            billing::TransferKind::Fee => TransferKind::Fee,
            billing::TransferKind::StudentProgram => TransferKind::StudentProgram,
            billing::TransferKind::Release => TransferKind::Release,
            billing::TransferKind::Payout => TransferKind::Payout,
        }
    }
}

/// Who pays for a finished job: the core's own outcome (its schema is named
/// `SettlementOutcome`).
pub use gp4u_core::billing::Outcome as SettlementOutcome;

/// `GET /api/billing/balance`: the caller's credit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Balance {
    /// Available to spend.
    pub balance: f64,
    /// Reserved by jobs not yet settled.
    pub held: f64,
    /// `USD`.
    pub currency: String,
    pub balance_micros: i64,
    pub held_micros: i64,
}

/// One transfer on the caller's statement, signed from the caller's side (credit positive).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatementLine {
    pub id: String,
    pub kind: TransferKind,
    pub job_id: Option<String>,
    pub amount: f64,
    pub amount_micros: i64,
    /// The accounts the transfer moved money from and to (`user:<id>:available`, …).
    pub debit: String,
    pub credit: String,
    pub at_ms: i64,
}

/// `GET /api/billing/statement`: the caller's transfers, newest first (at most 500), with
/// earnings and totals per kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Statement {
    pub user_id: String,
    pub account: String,
    pub currency: String,
    pub earnings: f64,
    pub earnings_micros: i64,
    /// Signed sum of the listed transfers per kind, in micros.
    pub totals_micros: BTreeMap<TransferKind, i64>,
    pub transfers: Vec<StatementLine>,
}

/// One transfer of a settlement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SettlementTransfer {
    pub id: String,
    pub debit: String,
    pub credit: String,
    pub amount: f64,
    pub amount_micros: i64,
    pub kind: TransferKind,
}

/// `GET /api/jobs/{id}/settlement` (SPEC §8): what the job cost and where the money went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SettlementView {
    pub job_id: String,
    /// Metered running time.
    pub gpu_hours: f64,
    pub customer_charged: f64,
    pub platform_fee: f64,
    pub provider_earnings: f64,
    pub student_program: f64,
    pub refunded: f64,
    /// What was reserved at submission.
    pub held: f64,
    pub outcome: SettlementOutcome,
    pub currency: String,
    pub transfers: Vec<SettlementTransfer>,
    /// The settlement exactly as sealed in the ledger (`billing.settled`), amounts in micros:
    /// what `gp4u verify` compares with the sealed entry.
    #[schema(value_type = Object)]
    pub exact: serde_json::Value,
}

/// A region's grid carbon intensity, with where the figure comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GridFactorView {
    pub region: String,
    /// g CO₂e per kWh.
    pub g_co2e_per_kwh: f64,
    pub source: String,
    /// The date the figure is for, YYYY-MM-DD.
    pub as_of: String,
    pub updated_at_ms: i64,
}

/// `GET /api/grid-factors`: the carbon table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GridFactors {
    pub factors: Vec<GridFactorView>,
}

/// `PUT /api/admin/grid-factors/{region}`: a region's factor (admins).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GridFactorBody {
    /// g CO₂e per kWh, 0–5000.
    pub g_co2e_per_kwh: f64,
    /// Where the figure comes from (1–500 characters).
    pub source: String,
    /// The date the figure is for, YYYY-MM-DD.
    pub as_of: String,
}
