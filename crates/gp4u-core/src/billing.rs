//! Billing: holds and settlement as double-entry transfers (SPEC stage 7).
//!
//! Money never changes in place. Every movement is a [`Transfer`] of a positive amount out of
//! one [`Account`] (`debit`) into another (`credit`), and an account's balance is derived as
//! `Σ credits − Σ debits`. Each transfer adds `+amount` to one account and `−amount` to
//! another, so across all accounts the balances always sum to zero: money is only ever moved,
//! never created or destroyed. Money entering or leaving the platform (top-ups, payouts)
//! moves through the `external` account, whose balance is minus what the platform holds.
//!
//! **Idempotency.** Transfer ids are deterministic (`job:<job_id>:hold`,
//! `job:<job_id>:charge:fee`, …): the same job always produces the same ids, so a store with
//! a unique key on the id can post a hold or a settlement twice (a retry, a crash between
//! posting and acknowledging) and the second posting changes nothing.
//!
//! **Settlement** ([`settle`]) turns a finished job into numbers and transfers, in exact
//! integer micro-units with every rounding half-up and stated. [`Settlement::check`] redoes
//! that arithmetic from the settlement's own fields, which is what a customer's offline
//! verifier runs on a published settlement.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{JobId, NodeId, UserId};
use crate::job::{EndedBy, FailureReason, JobStatus};
use crate::money::{Hours, Money};
use crate::pricing::job_cost;

/// The hold is the estimate times `HOLD_MARGIN_NUMERATOR / HOLD_MARGIN_DENOMINATOR` (1.1):
/// a job may run 1.1 × its declared duration before it is killed (`DURATION_EXCEEDED`,
/// `pricing::DURATION_CAP_FACTOR_PERMILLE`), so the hold covers the longest a job can run.
pub const HOLD_MARGIN_NUMERATOR: i64 = 11;
/// See [`HOLD_MARGIN_NUMERATOR`].
pub const HOLD_MARGIN_DENOMINATOR: i64 = 10;

/// Basis points in a whole (100 %).
pub const BASIS_POINTS_PER_UNIT: u32 = 10_000;

/// The platform's default fee: 1 000 bp = 10 % of what the customer is charged.
pub const DEFAULT_FEE_BP: u32 = 1_000;

/// The student program's default share: 2 500 bp = 25 % of a university provider's earnings
/// (after the platform fee).
pub const DEFAULT_STUDENT_BP: u32 = 2_500;

/// Milliseconds per hour.
const MS_PER_HOUR: i128 = 3_600_000;

/// Micro-hours per hour.
const MICRO_HOURS_PER_HOUR: i128 = 1_000_000;

/// Why a billing computation was refused, or a settlement failed its check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillingError {
    #[error("the running time must be zero or more milliseconds, got {running_ms} ms")]
    NegativeRunningTime { running_ms: i64 },
    #[error("the price per hour must be zero or more, got {price}")]
    NegativePrice { price: Money },
    #[error("the held amount must be zero or more, got {held}")]
    NegativeHeld { held: Money },
    #[error("{field} must be between 0 and 10000 basis points (0 % to 100 %), got {value}")]
    BasisPointsOutOfRange { field: &'static str, value: u32 },
    #[error("a transfer must move a positive amount, got {amount} micro-units")]
    NonPositiveAmount { amount: i64 },
    #[error("a transfer must move money between two different accounts, got {account} twice")]
    SameAccount { account: Account },
    #[error("a transfer reference must be 1 to 128 characters of [A-Za-z0-9_.:-], got {value:?}")]
    InvalidReference { value: String },
    #[error(
        "{value:?} is not an account: expected `external`, `platform:fees`, \
         `platform:student_program`, `platform:slashes`, `node:<node_…>:stake`, \
         `user:<usr_…>:available` or `user:<usr_…>:held`"
    )]
    InvalidAccount { value: String },
    #[error("the job is {status}: only a finished job (COMPLETE, FAILED or CANCELLED) is settled")]
    NotFinished { status: JobStatus },
    #[error("the job is {status} but has no failure reason, so who pays cannot be decided")]
    MissingFailureReason { status: JobStatus },
    #[error("{what} overflowed")]
    Overflow { what: &'static str },
    #[error("settlement check failed: {field} is {found}, but the arithmetic gives {expected}")]
    Mismatch {
        field: &'static str,
        expected: String,
        found: String,
    },
}

/// A ledger account, kept as its string key so a store can index it directly.
///
/// Built only from the constructors or [`Account::parse`], so the key is always one of
/// `external`, `platform:fees`, `platform:student_program`, `user:<usr_…>:available`,
/// `user:<usr_…>:held`, or the staking accounts `platform:slashes` and `node:<node_…>:stake`
/// (written by the stake and slash flows; accepted here so every journal row parses). Ids
/// cannot contain `:`, so keys never collide.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Account(String);

impl Account {
    const EXTERNAL: &'static str = "external";
    const PLATFORM_FEES: &'static str = "platform:fees";
    const STUDENT_PROGRAM: &'static str = "platform:student_program";
    const PLATFORM_SLASHES: &'static str = "platform:slashes";

    /// Money outside the platform: the source of top-ups and the sink of payouts.
    pub fn external() -> Account {
        Account(Self::EXTERNAL.to_owned())
    }

    /// Where platform fees accrue.
    pub fn platform_fees() -> Account {
        Account(Self::PLATFORM_FEES.to_owned())
    }

    /// Where the student program's share of university providers' earnings accrues.
    pub fn student_program() -> Account {
        Account(Self::STUDENT_PROGRAM.to_owned())
    }

    /// A user's spendable credit (a provider's earnings land here too).
    pub fn available(user: &UserId) -> Account {
        Account(format!("user:{user}:available"))
    }

    /// A user's credit reserved for running jobs.
    pub fn held(user: &UserId) -> Account {
        Account(format!("user:{user}:held"))
    }

    /// Where stake taken by slashes accrues (SPEC stage 4; settlement never touches it).
    pub fn platform_slashes() -> Account {
        Account(Self::PLATFORM_SLASHES.to_owned())
    }

    /// A provider node's deposited stake (settlement never touches it).
    pub fn node_stake(node: &NodeId) -> Account {
        Account(format!("node:{node}:stake"))
    }

    /// Parses a stored account key, refusing anything the constructors would not make.
    pub fn parse(text: &str) -> Result<Account, BillingError> {
        let invalid = || BillingError::InvalidAccount {
            value: crate::ids::truncate_for_echo(text),
        };
        match text {
            Self::EXTERNAL
            | Self::PLATFORM_FEES
            | Self::STUDENT_PROGRAM
            | Self::PLATFORM_SLASHES => Ok(Account(text.to_owned())),
            _ if text.starts_with("node:") => {
                let node = text
                    .strip_prefix("node:")
                    .and_then(|rest| rest.strip_suffix(":stake"))
                    .ok_or_else(invalid)?;
                let node = NodeId::parse(node).map_err(|_| invalid())?;
                Ok(Account::node_stake(&node))
            }
            _ => {
                let rest = text.strip_prefix("user:").ok_or_else(invalid)?;
                let (user, bucket) = rest.rsplit_once(':').ok_or_else(invalid)?;
                let user = UserId::parse(user).map_err(|_| invalid())?;
                match bucket {
                    "available" => Ok(Account::available(&user)),
                    "held" => Ok(Account::held(&user)),
                    _ => Err(invalid()),
                }
            }
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is `external`, the only account whose balance is expected to go negative.
    pub fn is_external(&self) -> bool {
        self.0 == Self::EXTERNAL
    }
}

impl fmt::Display for Account {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// Deserializing validates, so an account read from a store is always well-formed.
impl<'de> Deserialize<'de> for Account {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Account::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// What a transfer is for; stored with it so a statement can label each line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferKind {
    /// `external` → `user:<u>:available`: credit bought.
    TopUp,
    /// `user:<c>:available` → `user:<c>:held`: reserved at submission.
    Hold,
    /// `user:<c>:held` → `user:<p>:available`: the provider's earnings.
    Earnings,
    /// `user:<c>:held` → `platform:fees`.
    Fee,
    /// `user:<c>:held` → `platform:student_program`.
    StudentProgram,
    /// `user:<c>:held` → `user:<c>:available`: the unused part of the hold given back.
    Release,
    /// `user:<u>:available` → `external`: money paid out.
    Payout,
}

impl TransferKind {
    pub const ALL: [TransferKind; 7] = [
        TransferKind::TopUp,
        TransferKind::Hold,
        TransferKind::Earnings,
        TransferKind::Fee,
        TransferKind::StudentProgram,
        TransferKind::Release,
        TransferKind::Payout,
    ];

    /// The stored and serialised name (`top_up`, `hold`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            TransferKind::TopUp => "top_up",
            TransferKind::Hold => "hold",
            TransferKind::Earnings => "earnings",
            TransferKind::Fee => "fee",
            TransferKind::StudentProgram => "student_program",
            TransferKind::Release => "release",
            TransferKind::Payout => "payout",
        }
    }
}

/// Moves `amount` (always positive) out of `debit` into `credit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Deterministic, so posting the same transfer twice is a no-op for an id-keyed store.
    pub id: String,
    pub debit: Account,
    pub credit: Account,
    pub amount: Money,
    pub kind: TransferKind,
    pub job_id: Option<JobId>,
}

impl Transfer {
    /// A checked transfer: the amount is positive and the accounts differ.
    pub fn new(
        id: String,
        debit: Account,
        credit: Account,
        amount: Money,
        kind: TransferKind,
        job_id: Option<JobId>,
    ) -> Result<Transfer, BillingError> {
        let transfer = Transfer {
            id,
            debit,
            credit,
            amount,
            kind,
            job_id,
        };
        transfer.validate()?;
        Ok(transfer)
    }

    /// Checks a transfer built elsewhere (read from a store, say): positive amount, two
    /// different accounts.
    pub fn validate(&self) -> Result<(), BillingError> {
        if self.amount.micros() <= 0 {
            return Err(BillingError::NonPositiveAmount {
                amount: self.amount.micros(),
            });
        }
        if self.debit == self.credit {
            return Err(BillingError::SameAccount {
                account: self.debit.clone(),
            });
        }
        Ok(())
    }
}

/// The hold for a job estimated to cost `cost_estimate`: estimate × 11/10, rounded up to the
/// micro-unit, so the hold always covers 1.1 × the estimate (saturating at `Money`'s maximum).
pub fn hold_amount(cost_estimate: Money) -> Money {
    let product = i128::from(cost_estimate.micros()) * i128::from(HOLD_MARGIN_NUMERATOR);
    let micros = divide_ceiling(product, i128::from(HOLD_MARGIN_DENOMINATOR));
    Money::from_micros(saturate_to_i64(micros))
}

/// `job:<job_id>:hold`: `user:<customer>:available` → `user:<customer>:held`.
///
/// A zero hold (a free job) moves nothing and gives `None`; a negative one is refused.
pub fn hold_transfer(
    job_id: &JobId,
    customer_id: &UserId,
    amount: Money,
) -> Result<Option<Transfer>, BillingError> {
    if amount.is_negative() {
        return Err(BillingError::NegativeHeld { held: amount });
    }
    job_transfer(
        job_id,
        "hold",
        Account::available(customer_id),
        Account::held(customer_id),
        amount,
        TransferKind::Hold,
    )
}

/// `top_up:<reference>`: `external` → `user:<user>:available`. The reference is the payment's
/// own id (from the payment processor), which keeps a replayed top-up from counting twice.
pub fn top_up_transfer(
    reference: &str,
    user_id: &UserId,
    amount: Money,
) -> Result<Transfer, BillingError> {
    check_reference(reference)?;
    Transfer::new(
        format!("top_up:{reference}"),
        Account::external(),
        Account::available(user_id),
        amount,
        TransferKind::TopUp,
        None,
    )
}

/// `payout:<reference>`: `user:<user>:available` → `external`, keyed like a top-up.
pub fn payout_transfer(
    reference: &str,
    user_id: &UserId,
    amount: Money,
) -> Result<Transfer, BillingError> {
    check_reference(reference)?;
    Transfer::new(
        format!("payout:{reference}"),
        Account::available(user_id),
        Account::external(),
        amount,
        TransferKind::Payout,
        None,
    )
}

fn check_reference(reference: &str) -> Result<(), BillingError> {
    const MAX_REFERENCE_LEN: usize = 128;
    let ok = !reference.is_empty()
        && reference.len() <= MAX_REFERENCE_LEN
        && reference
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BillingError::InvalidReference {
            value: crate::ids::truncate_for_echo(reference),
        })
    }
}

/// A job transfer with id `job:<job_id>:<suffix>`, or `None` for a zero amount.
fn job_transfer(
    job_id: &JobId,
    suffix: &str,
    debit: Account,
    credit: Account,
    amount: Money,
    kind: TransferKind,
) -> Result<Option<Transfer>, BillingError> {
    if amount.is_zero() {
        return Ok(None);
    }
    Transfer::new(
        format!("job:{job_id}:{suffix}"),
        debit,
        credit,
        amount,
        kind,
        Some(job_id.clone()),
    )
    .map(Some)
}

/// Who pays for a finished job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(utoipa::ToSchema),
    schema(as = SettlementOutcome)
)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Exited 0: the customer pays for the metered running time.
    Completed,
    /// Ended by the customer's workload or decision: the customer pays for the time used.
    FailedCustomerFault,
    /// Ended by the provider's failure or misconduct: the customer pays nothing.
    FailedProviderFault,
    /// Ended before RUNNING: nothing ran, nothing is charged.
    NeverRan,
}

impl Outcome {
    /// Whether the customer pays for the metered running time.
    pub const fn is_billable(&self) -> bool {
        matches!(self, Outcome::Completed | Outcome::FailedCustomerFault)
    }

    /// Decides who pays from a finished job's row.
    ///
    /// `ended_by` only matters for `CANCELLED_BY_ADMIN`, the one reason shared by the provider
    /// and the platform. For the outcomes that charge, the charge is for the metered running
    /// time, so a customer-fault job that never reached RUNNING (`running_ms = 0`) still costs
    /// nothing.
    pub fn from_job(
        status: JobStatus,
        failure_reason: Option<FailureReason>,
        ended_by: Option<EndedBy>,
    ) -> Result<Outcome, BillingError> {
        match status {
            JobStatus::Complete => return Ok(Outcome::Completed),
            JobStatus::Pending | JobStatus::Assigned | JobStatus::Running => {
                return Err(BillingError::NotFinished { status });
            }
            JobStatus::Failed | JobStatus::Cancelled => {}
        }
        let reason = failure_reason.ok_or(BillingError::MissingFailureReason { status })?;
        Ok(match reason {
            // The customer's program failed: the GPU time was delivered.
            FailureReason::NonzeroExit => Outcome::FailedCustomerFault,
            // Tutela killed the customer's workload for misbehaving (port scans, exfiltration…).
            FailureReason::KilledAnomaly => Outcome::FailedCustomerFault,
            // The workload overran 1.1 × its declared duration; the hold covers exactly that.
            FailureReason::DurationExceeded => Outcome::FailedCustomerFault,
            // The workload wrote past its `/scratch` size: the time until then was delivered.
            FailureReason::ScratchExceeded => Outcome::FailedCustomerFault,
            // The customer stopped it; any running time before that was delivered.
            FailureReason::CancelledByCustomer => Outcome::FailedCustomerFault,
            // The provider's node lost the job (heartbeats stopped, agent died).
            FailureReason::JobDropped => Outcome::FailedProviderFault,
            // The provider hid the GPU from the visibility challenge.
            FailureReason::VisibilityBlocked => Outcome::FailedProviderFault,
            // Foreign processes mined on the GPU the customer was paying for.
            FailureReason::CryptoMiningDuringMlJob => Outcome::FailedProviderFault,
            // The provider was ejected (slashed out) while the job was on its node.
            FailureReason::ProviderEjected => Outcome::FailedProviderFault,
            // The node could not set the job up: nothing of the customer's ran, the node failed.
            FailureReason::NodeSetupFailed => Outcome::FailedProviderFault,
            // Fails before the container starts: the customer's image never ran.
            FailureReason::ImagePullFailed => Outcome::NeverRan,
            // Inputs could not be fetched or verified before start (blamed on no one,
            // see `FailureReason::is_provider_fault`), so nothing ran.
            FailureReason::InputFailed => Outcome::NeverRan,
            // No agent took the assignment (a pinned job fails with it): nothing ran.
            FailureReason::PickupTimeout => Outcome::NeverRan,
            // A provider cancelling a job it accepted is walking away from it: its fault.
            // The platform (an admin) cancelling pays the provider for time delivered, like a
            // customer's cancel; an admin who wants to waive that refunds separately.
            FailureReason::CancelledByAdmin => match ended_by {
                Some(EndedBy::Provider) => Outcome::FailedProviderFault,
                Some(EndedBy::Platform | EndedBy::Customer) | None => Outcome::FailedCustomerFault,
            },
        })
    }
}

/// Everything settlement needs about a finished job. Also embedded, flattened, in the
/// [`Settlement`], so a published settlement carries its own inputs and can be re-checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementInput {
    pub job_id: JobId,
    pub customer_id: UserId,
    pub provider_id: UserId,
    pub provider_is_university: bool,
    /// The GPU's listed price at submission.
    pub price_per_hour: Money,
    /// Metered RUNNING time, `ended_at − started_at` in ms; 0 if the job never started.
    pub running_ms: i64,
    /// What the hold transfer reserved (0 if there was none).
    pub held: Money,
    pub outcome: Outcome,
    /// Platform fee in basis points of the charge ([`DEFAULT_FEE_BP`]).
    pub fee_bp: u32,
    /// Student program share in basis points of a university provider's earnings after the
    /// fee ([`DEFAULT_STUDENT_BP`]); ignored for other providers.
    pub student_bp: u32,
}

/// A settled job: the numbers and the transfers that carry them out.
///
/// `customer_charged = platform_fee + provider_earnings + student_program` and
/// `customer_charged + refunded = held`: the whole hold leaves `user:<customer>:held`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    #[serde(flatten)]
    pub input: SettlementInput,
    /// The metered running time in micro-hours, rounded half-up.
    pub gpu_hours: Hours,
    pub customer_charged: Money,
    pub platform_fee: Money,
    pub provider_earnings: Money,
    pub student_program: Money,
    pub refunded: Money,
    pub transfers: Vec<Transfer>,
}

/// Settles a finished job.
///
/// - `gpu_hours` = `running_ms` in micro-hours, rounded half-up (exact integer math).
/// - `cost` = `price_per_hour × gpu_hours` ([`job_cost`]) when the outcome is billable, else 0.
/// - `customer_charged` = `min(cost, held)`: the hold is the most a job can cost. It covers
///   1.1 × the declared duration, the longest a job may run, so the cap only bites on
///   rounding or on a job that overran before the agent could kill it; that overrun is not
///   charged, since the customer agreed to at most the hold.
/// - `platform_fee` = `charged × fee_bp / 10 000`, rounded half-up.
/// - `student_program` = `(charged − fee) × student_bp / 10 000`, rounded half-up, for a
///   university provider; else 0.
/// - `provider_earnings` = `charged − fee − student_program`; `refunded` = `held − charged`.
///
/// Transfers, all out of `user:<customer>:held` and each omitted when zero:
/// `job:<id>:charge:provider` → `user:<provider>:available`, `job:<id>:charge:fee` →
/// `platform:fees`, `job:<id>:charge:student` → `platform:student_program`, and
/// `job:<id>:release` → `user:<customer>:available`.
pub fn settle(input: &SettlementInput) -> Result<Settlement, BillingError> {
    if input.running_ms < 0 {
        return Err(BillingError::NegativeRunningTime {
            running_ms: input.running_ms,
        });
    }
    if input.price_per_hour.is_negative() {
        return Err(BillingError::NegativePrice {
            price: input.price_per_hour,
        });
    }
    if input.held.is_negative() {
        return Err(BillingError::NegativeHeld { held: input.held });
    }
    check_basis_points("fee_bp", input.fee_bp)?;
    check_basis_points("student_bp", input.student_bp)?;

    let gpu_hours = running_hours(input.running_ms)?;
    let cost = if input.outcome.is_billable() {
        // Saturates at Money's maximum, which is above any hold, so the cap below still holds.
        job_cost(input.price_per_hour, gpu_hours)
    } else {
        Money::ZERO
    };
    let customer_charged = cost.min(input.held);
    let platform_fee = basis_points_of(customer_charged, input.fee_bp)?;
    let provider_gross = sub(customer_charged, platform_fee, "the provider's gross")?;
    let student_program = if input.provider_is_university {
        basis_points_of(provider_gross, input.student_bp)?
    } else {
        Money::ZERO
    };
    let provider_earnings = sub(provider_gross, student_program, "the provider's earnings")?;
    let refunded = sub(input.held, customer_charged, "the refund")?;

    let held = Account::held(&input.customer_id);
    let job = &input.job_id;
    let transfers = [
        job_transfer(
            job,
            "charge:provider",
            held.clone(),
            Account::available(&input.provider_id),
            provider_earnings,
            TransferKind::Earnings,
        )?,
        job_transfer(
            job,
            "charge:fee",
            held.clone(),
            Account::platform_fees(),
            platform_fee,
            TransferKind::Fee,
        )?,
        job_transfer(
            job,
            "charge:student",
            held.clone(),
            Account::student_program(),
            student_program,
            TransferKind::StudentProgram,
        )?,
        job_transfer(
            job,
            "release",
            held,
            Account::available(&input.customer_id),
            refunded,
            TransferKind::Release,
        )?,
    ]
    .into_iter()
    .flatten()
    .collect();

    Ok(Settlement {
        input: input.clone(),
        gpu_hours,
        customer_charged,
        platform_fee,
        provider_earnings,
        student_program,
        refunded,
        transfers,
    })
}

impl Settlement {
    pub fn job_id(&self) -> &JobId {
        &self.input.job_id
    }

    /// Redoes the settlement's arithmetic from its own fields and says which figure is wrong.
    ///
    /// First the identities that need no inputs (the charge splits exactly into fee, earnings
    /// and student share; charge plus refund is the hold; the transfers move exactly those
    /// amounts out of the customer's held account and conserve money), then a full
    /// recomputation from the embedded inputs, so a published settlement is fully checkable
    /// offline.
    pub fn check(&self) -> Result<(), BillingError> {
        let micros = |money: Money| i128::from(money.micros());
        expect_equal(
            "customer_charged (platform_fee + provider_earnings + student_program)",
            micros(self.platform_fee)
                + micros(self.provider_earnings)
                + micros(self.student_program),
            micros(self.customer_charged),
        )?;
        expect_equal(
            "held (customer_charged + refunded)",
            micros(self.customer_charged) + micros(self.refunded),
            micros(self.input.held),
        )?;
        for transfer in &self.transfers {
            transfer.validate()?;
        }
        let customer_held = Account::held(&self.input.customer_id);
        let out_of_held: i128 = self
            .transfers
            .iter()
            .filter(|transfer| transfer.debit == customer_held)
            .map(|transfer| micros(transfer.amount))
            .sum();
        expect_equal(
            "the transfers out of the hold",
            out_of_held,
            micros(self.input.held),
        )?;
        if !conserved(&self.transfers) {
            return Err(BillingError::Mismatch {
                field: "transfers",
                expected: "balances summing to zero".to_owned(),
                found: "balances that do not".to_owned(),
            });
        }

        let expected = settle(&self.input)?;
        expect_equal(
            "gpu_hours",
            i128::from(expected.gpu_hours.micro_hours()),
            i128::from(self.gpu_hours.micro_hours()),
        )?;
        let figures = [
            (
                "customer_charged",
                expected.customer_charged,
                self.customer_charged,
            ),
            ("platform_fee", expected.platform_fee, self.platform_fee),
            (
                "provider_earnings",
                expected.provider_earnings,
                self.provider_earnings,
            ),
            (
                "student_program",
                expected.student_program,
                self.student_program,
            ),
            ("refunded", expected.refunded, self.refunded),
        ];
        for (field, expected, found) in figures {
            expect_equal(field, micros(expected), micros(found))?;
        }
        if expected.transfers != self.transfers {
            return Err(BillingError::Mismatch {
                field: "transfers",
                expected: describe_transfers(&expected.transfers),
                found: describe_transfers(&self.transfers),
            });
        }
        Ok(())
    }
}

fn describe_transfers(transfers: &[Transfer]) -> String {
    let lines: Vec<String> = transfers
        .iter()
        .map(|transfer| {
            format!(
                "{} {}→{} {} micros",
                transfer.id,
                transfer.debit,
                transfer.credit,
                transfer.amount.micros()
            )
        })
        .collect();
    format!("[{}]", lines.join(", "))
}

fn expect_equal(field: &'static str, expected: i128, found: i128) -> Result<(), BillingError> {
    if expected == found {
        Ok(())
    } else {
        Err(BillingError::Mismatch {
            field,
            expected: expected.to_string(),
            found: found.to_string(),
        })
    }
}

/// Each account's balance, `Σ credits − Σ debits`, in micro-units. Every transfer given is
/// counted, so callers pass each stored transfer once (as an id-keyed store holds them).
/// Accounts no transfer touches are absent.
pub fn balances<'a>(transfers: impl IntoIterator<Item = &'a Transfer>) -> BTreeMap<Account, i128> {
    let mut balances: BTreeMap<Account, i128> = BTreeMap::new();
    for transfer in transfers {
        let amount = i128::from(transfer.amount.micros());
        *balances.entry(transfer.credit.clone()).or_default() += amount;
        *balances.entry(transfer.debit.clone()).or_default() -= amount;
    }
    balances
}

/// Whether the transfers are well-formed double entries (each a positive amount between two
/// different accounts) and the balances sum to zero. The sum is zero by construction for any
/// set of transfers; what this catches is malformed rows, e.g. read back from a store.
pub fn conserved<'a>(transfers: impl IntoIterator<Item = &'a Transfer> + Clone) -> bool {
    transfers
        .clone()
        .into_iter()
        .all(|transfer| transfer.validate().is_ok())
        && balances(transfers).values().sum::<i128>() == 0
}

/// Running milliseconds as micro-hours, rounded half-up: `ms × 10⁶ / 3.6 × 10⁶`.
fn running_hours(running_ms: i64) -> Result<Hours, BillingError> {
    let micro_hours = divide_half_up(i128::from(running_ms) * MICRO_HOURS_PER_HOUR, MS_PER_HOUR);
    i64::try_from(micro_hours)
        .map(Hours::from_micro_hours)
        .map_err(|_| BillingError::Overflow {
            what: "the running time in micro-hours",
        })
}

/// `amount × basis_points / 10 000`, rounded half-up. `amount ≥ 0` and `basis_points ≤ 10 000`,
/// so the result lies in `0..=amount`.
fn basis_points_of(amount: Money, basis_points: u32) -> Result<Money, BillingError> {
    let product = i128::from(amount.micros()) * i128::from(basis_points);
    let micros = divide_half_up(product, i128::from(BASIS_POINTS_PER_UNIT));
    i64::try_from(micros)
        .map(Money::from_micros)
        .map_err(|_| BillingError::Overflow {
            what: "a basis-point share",
        })
}

fn check_basis_points(field: &'static str, value: u32) -> Result<(), BillingError> {
    if value > BASIS_POINTS_PER_UNIT {
        Err(BillingError::BasisPointsOutOfRange { field, value })
    } else {
        Ok(())
    }
}

fn sub(left: Money, right: Money, what: &'static str) -> Result<Money, BillingError> {
    left.checked_sub(right)
        .ok_or(BillingError::Overflow { what })
}

/// Integer division of a non-negative numerator by a positive denominator, ties rounded up.
fn divide_half_up(numerator: i128, denominator: i128) -> i128 {
    debug_assert!(numerator >= 0 && denominator > 0);
    (numerator * 2 + denominator) / (denominator * 2)
}

/// Integer division by a positive denominator, rounded toward +∞.
fn divide_ceiling(numerator: i128, denominator: i128) -> i128 {
    debug_assert!(denominator > 0);
    let quotient = numerator / denominator;
    if numerator % denominator > 0 {
        quotient + 1
    } else {
        quotient
    }
}

fn saturate_to_i64(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_kinds_are_named_as_they_serialise() {
        // A new kind stops this match compiling: add it here and to ALL.
        let _every_kind_is_in_all = |kind: TransferKind| match kind {
            TransferKind::TopUp
            | TransferKind::Hold
            | TransferKind::Earnings
            | TransferKind::Fee
            | TransferKind::StudentProgram
            | TransferKind::Release
            | TransferKind::Payout => (),
        };
        for kind in TransferKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    fn money(text: &str) -> Money {
        Money::parse_decimal(text).unwrap()
    }

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    fn input() -> SettlementInput {
        SettlementInput {
            job_id: JobId::parse("job_j1").unwrap(),
            customer_id: user("usr_c"),
            provider_id: user("usr_p"),
            provider_is_university: false,
            price_per_hour: money("2.50"),
            running_ms: 3_600_000,
            held: money("3.00"),
            outcome: Outcome::Completed,
            fee_bp: DEFAULT_FEE_BP,
            student_bp: DEFAULT_STUDENT_BP,
        }
    }

    fn amounts(settlement: &Settlement) -> Vec<(String, i64)> {
        settlement
            .transfers
            .iter()
            .map(|transfer| (transfer.id.clone(), transfer.amount.micros()))
            .collect()
    }

    #[test]
    fn completed_one_hour_job_at_2_50() {
        let settlement = settle(&input()).unwrap();
        assert_eq!(settlement.gpu_hours, Hours::from_micro_hours(1_000_000));
        assert_eq!(settlement.customer_charged, money("2.50"));
        assert_eq!(settlement.platform_fee, money("0.25"));
        assert_eq!(settlement.provider_earnings, money("2.25"));
        assert_eq!(settlement.student_program, Money::ZERO);
        assert_eq!(settlement.refunded, money("0.50"));
        assert_eq!(
            amounts(&settlement),
            vec![
                ("job:job_j1:charge:provider".to_owned(), 2_250_000),
                ("job:job_j1:charge:fee".to_owned(), 250_000),
                ("job:job_j1:release".to_owned(), 500_000),
            ]
        );
        let provider = &settlement.transfers[0];
        assert_eq!(provider.debit.as_str(), "user:usr_c:held");
        assert_eq!(provider.credit.as_str(), "user:usr_p:available");
        assert_eq!(provider.kind, TransferKind::Earnings);
        assert_eq!(settlement.transfers[1].credit.as_str(), "platform:fees");
        assert_eq!(
            settlement.transfers[2].credit.as_str(),
            "user:usr_c:available"
        );
        settlement.check().unwrap();
    }

    #[test]
    fn university_provider_shares_a_quarter_of_its_earnings() {
        let settlement = settle(&SettlementInput {
            provider_is_university: true,
            ..input()
        })
        .unwrap();
        // 2.50 charged, 0.25 fee, 2.25 gross; 25 % of 2.25 = 0.5625 to students.
        assert_eq!(settlement.platform_fee, money("0.25"));
        assert_eq!(settlement.student_program, money("0.5625"));
        assert_eq!(settlement.provider_earnings, money("1.6875"));
        let student = settlement
            .transfers
            .iter()
            .find(|transfer| transfer.kind == TransferKind::StudentProgram)
            .unwrap();
        assert_eq!(student.id, "job:job_j1:charge:student");
        assert_eq!(student.credit.as_str(), "platform:student_program");
        settlement.check().unwrap();
    }

    #[test]
    fn odd_micros_round_half_up() {
        // 1 ms is 0.2777… micro-hours: rounds to 0. 2 ms is 0.555…: rounds to 1.
        assert_eq!(running_hours(1).unwrap(), Hours::from_micro_hours(0));
        assert_eq!(running_hours(2).unwrap(), Hours::from_micro_hours(1));
        // 9 ms is exactly 2.5 micro-hours: the tie rounds up to 3.
        assert_eq!(running_hours(9).unwrap(), Hours::from_micro_hours(3));
        // Charged 15 micros at 10 %: fee 1.5 → 2, provider 13.
        let settlement = settle(&SettlementInput {
            price_per_hour: Money::from_micros(15),
            running_ms: 3_600_000,
            held: Money::from_micros(100),
            ..input()
        })
        .unwrap();
        assert_eq!(settlement.customer_charged, Money::from_micros(15));
        assert_eq!(settlement.platform_fee, Money::from_micros(2));
        assert_eq!(settlement.provider_earnings, Money::from_micros(13));
        // Charged 14 micros: fee 1.4 → 1. University: gross 13 × 25 % = 3.25 → 3.
        let university = settle(&SettlementInput {
            price_per_hour: Money::from_micros(14),
            held: Money::from_micros(100),
            provider_is_university: true,
            ..input()
        })
        .unwrap();
        assert_eq!(university.platform_fee, Money::from_micros(1));
        assert_eq!(university.student_program, Money::from_micros(3));
        assert_eq!(university.provider_earnings, Money::from_micros(10));
        assert_eq!(university.refunded, Money::from_micros(86));
        university.check().unwrap();
    }

    #[test]
    fn provider_fault_charges_nothing_and_releases_the_hold() {
        let settlement = settle(&SettlementInput {
            outcome: Outcome::FailedProviderFault,
            ..input()
        })
        .unwrap();
        assert_eq!(settlement.gpu_hours, Hours::from_micro_hours(1_000_000));
        assert_eq!(settlement.customer_charged, Money::ZERO);
        assert_eq!(settlement.platform_fee, Money::ZERO);
        assert_eq!(settlement.provider_earnings, Money::ZERO);
        assert_eq!(settlement.refunded, money("3.00"));
        assert_eq!(
            amounts(&settlement),
            vec![("job:job_j1:release".to_owned(), 3_000_000)]
        );
        settlement.check().unwrap();
    }

    #[test]
    fn never_ran_charges_nothing() {
        let settlement = settle(&SettlementInput {
            outcome: Outcome::NeverRan,
            running_ms: 0,
            ..input()
        })
        .unwrap();
        assert_eq!(settlement.gpu_hours, Hours::from_micro_hours(0));
        assert_eq!(settlement.customer_charged, Money::ZERO);
        assert_eq!(settlement.refunded, money("3.00"));
        // With no hold there is nothing to move at all.
        let nothing = settle(&SettlementInput {
            outcome: Outcome::NeverRan,
            running_ms: 0,
            held: Money::ZERO,
            ..input()
        })
        .unwrap();
        assert!(nothing.transfers.is_empty());
        nothing.check().unwrap();
    }

    #[test]
    fn cost_above_the_hold_is_capped_at_the_hold() {
        // Two hours at 2.50 is 5.00, but only 3.00 was held.
        let settlement = settle(&SettlementInput {
            running_ms: 7_200_000,
            outcome: Outcome::FailedCustomerFault,
            ..input()
        })
        .unwrap();
        assert_eq!(settlement.customer_charged, money("3.00"));
        assert_eq!(settlement.platform_fee, money("0.30"));
        assert_eq!(settlement.provider_earnings, money("2.70"));
        assert_eq!(settlement.refunded, Money::ZERO);
        assert!(
            settlement
                .transfers
                .iter()
                .all(|transfer| transfer.kind != TransferKind::Release)
        );
        settlement.check().unwrap();
        // A price so high the cost saturates is still capped.
        let huge = settle(&SettlementInput {
            price_per_hour: Money::from_micros(i64::MAX),
            running_ms: i64::MAX,
            ..input()
        })
        .unwrap();
        assert_eq!(huge.customer_charged, money("3.00"));
    }

    #[test]
    fn invalid_inputs_are_refused_with_reasons() {
        let cases = [
            (
                SettlementInput {
                    running_ms: -1,
                    ..input()
                },
                BillingError::NegativeRunningTime { running_ms: -1 },
            ),
            (
                SettlementInput {
                    price_per_hour: Money::from_micros(-1),
                    ..input()
                },
                BillingError::NegativePrice {
                    price: Money::from_micros(-1),
                },
            ),
            (
                SettlementInput {
                    held: Money::from_micros(-1),
                    ..input()
                },
                BillingError::NegativeHeld {
                    held: Money::from_micros(-1),
                },
            ),
            (
                SettlementInput {
                    fee_bp: 10_001,
                    ..input()
                },
                BillingError::BasisPointsOutOfRange {
                    field: "fee_bp",
                    value: 10_001,
                },
            ),
            (
                SettlementInput {
                    student_bp: 20_000,
                    ..input()
                },
                BillingError::BasisPointsOutOfRange {
                    field: "student_bp",
                    value: 20_000,
                },
            ),
        ];
        for (bad, error) in cases {
            assert_eq!(settle(&bad), Err(error));
        }
        let message = settle(&SettlementInput {
            fee_bp: 10_001,
            ..input()
        })
        .unwrap_err()
        .to_string();
        assert!(
            message.contains("fee_bp") && message.contains("10000"),
            "{message}"
        );
        // 100 % fee and 100 % student share are allowed edges.
        let all_fee = settle(&SettlementInput {
            fee_bp: 10_000,
            ..input()
        })
        .unwrap();
        assert_eq!(all_fee.platform_fee, money("2.50"));
        assert_eq!(all_fee.provider_earnings, Money::ZERO);
        all_fee.check().unwrap();
    }

    #[test]
    fn check_names_the_wrong_figure() {
        let good = settle(&input()).unwrap();
        let mut bad = good.clone();
        bad.platform_fee = Money::from_micros(bad.platform_fee.micros() + 1);
        bad.provider_earnings = Money::from_micros(bad.provider_earnings.micros() - 1);
        let error = bad.check().unwrap_err();
        assert!(
            matches!(
                error,
                BillingError::Mismatch {
                    field: "platform_fee",
                    ..
                }
            ),
            "{error}"
        );
        let mut bad = good.clone();
        bad.gpu_hours = Hours::from_micro_hours(999_999);
        assert!(bad.check().is_err());
        let mut bad = good;
        bad.transfers.swap(0, 1);
        assert!(matches!(
            bad.check(),
            Err(BillingError::Mismatch {
                field: "transfers",
                ..
            })
        ));
    }

    #[test]
    fn hold_is_estimate_times_1_1_rounded_up() {
        assert_eq!(hold_amount(money("12.40")), money("13.64"));
        assert_eq!(hold_amount(Money::from_micros(5)), Money::from_micros(6));
        // 4.4 rounds up to 5: the hold never falls short of 1.1 × the estimate.
        assert_eq!(hold_amount(Money::from_micros(4)), Money::from_micros(5));
        assert_eq!(hold_amount(Money::from_micros(10)), Money::from_micros(11));
        assert_eq!(hold_amount(Money::ZERO), Money::ZERO);
        assert_eq!(
            hold_amount(Money::from_micros(i64::MAX)),
            Money::from_micros(i64::MAX)
        );
        let job = JobId::parse("job_j1").unwrap();
        let hold = hold_transfer(&job, &user("usr_c"), money("13.64"))
            .unwrap()
            .unwrap();
        assert_eq!(hold.id, "job:job_j1:hold");
        assert_eq!(hold.debit.as_str(), "user:usr_c:available");
        assert_eq!(hold.credit.as_str(), "user:usr_c:held");
        assert_eq!(hold.kind, TransferKind::Hold);
        assert_eq!(hold_transfer(&job, &user("usr_c"), Money::ZERO), Ok(None));
        assert!(hold_transfer(&job, &user("usr_c"), Money::from_micros(-1)).is_err());
    }

    #[test]
    fn outcome_from_every_failure_reason() {
        use FailureReason as R;
        for reason in FailureReason::ALL {
            for status in [JobStatus::Failed, JobStatus::Cancelled] {
                for ended_by in [Some(EndedBy::Customer), Some(EndedBy::Platform), None] {
                    let outcome = Outcome::from_job(status, Some(reason), ended_by).unwrap();
                    // Without a provider cancelling, the provider pays exactly when
                    // job.rs blames it.
                    assert_eq!(
                        outcome == Outcome::FailedProviderFault,
                        reason.is_provider_fault(),
                        "{reason}"
                    );
                }
            }
        }
        let outcome = |reason| Outcome::from_job(JobStatus::Failed, Some(reason), None).unwrap();
        assert_eq!(outcome(R::NonzeroExit), Outcome::FailedCustomerFault);
        assert_eq!(outcome(R::KilledAnomaly), Outcome::FailedCustomerFault);
        assert_eq!(outcome(R::DurationExceeded), Outcome::FailedCustomerFault);
        assert_eq!(outcome(R::ScratchExceeded), Outcome::FailedCustomerFault);
        assert_eq!(
            outcome(R::CancelledByCustomer),
            Outcome::FailedCustomerFault
        );
        assert_eq!(outcome(R::JobDropped), Outcome::FailedProviderFault);
        assert_eq!(outcome(R::VisibilityBlocked), Outcome::FailedProviderFault);
        assert_eq!(
            outcome(R::CryptoMiningDuringMlJob),
            Outcome::FailedProviderFault
        );
        assert_eq!(outcome(R::ProviderEjected), Outcome::FailedProviderFault);
        assert_eq!(outcome(R::NodeSetupFailed), Outcome::FailedProviderFault);
        assert_eq!(outcome(R::ImagePullFailed), Outcome::NeverRan);
        assert_eq!(outcome(R::InputFailed), Outcome::NeverRan);
        assert_eq!(outcome(R::PickupTimeout), Outcome::NeverRan);
        assert_eq!(
            Outcome::from_job(
                JobStatus::Cancelled,
                Some(R::CancelledByAdmin),
                Some(EndedBy::Provider)
            ),
            Ok(Outcome::FailedProviderFault)
        );
        assert_eq!(
            Outcome::from_job(
                JobStatus::Cancelled,
                Some(R::CancelledByAdmin),
                Some(EndedBy::Platform)
            ),
            Ok(Outcome::FailedCustomerFault)
        );
        assert_eq!(
            Outcome::from_job(JobStatus::Complete, None, None),
            Ok(Outcome::Completed)
        );
        for status in [JobStatus::Pending, JobStatus::Assigned, JobStatus::Running] {
            assert_eq!(
                Outcome::from_job(status, None, None),
                Err(BillingError::NotFinished { status })
            );
        }
        assert_eq!(
            Outcome::from_job(JobStatus::Failed, None, None),
            Err(BillingError::MissingFailureReason {
                status: JobStatus::Failed
            })
        );
    }

    #[test]
    fn accounts_parse_and_round_trip() {
        let customer = user("usr_c");
        for account in [
            Account::external(),
            Account::platform_fees(),
            Account::student_program(),
            Account::available(&customer),
            Account::held(&customer),
            Account::platform_slashes(),
            Account::node_stake(&crate::ids::NodeId::parse("node_n1").unwrap()),
        ] {
            assert_eq!(Account::parse(account.as_str()), Ok(account.clone()));
            let json = serde_json::to_string(&account).unwrap();
            assert_eq!(serde_json::from_str::<Account>(&json).unwrap(), account);
        }
        for bad in [
            "",
            "platform:",
            "user:usr_c",
            "user:usr_c:spent",
            "user:job_x:held",
            "user:usr_c:x:held",
            "External",
            "node:usr_c:stake",
            "node:node_n1",
            "node:node_n1:held",
        ] {
            assert!(Account::parse(bad).is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<Account>("\"user:nope:held\"").is_err());
        assert!(Account::external().is_external());
        assert!(!Account::platform_fees().is_external());
    }

    #[test]
    fn transfers_refuse_non_positive_amounts_and_self_transfers() {
        let customer = user("usr_c");
        let make = |amount, credit| {
            Transfer::new(
                "t".to_owned(),
                Account::available(&customer),
                credit,
                Money::from_micros(amount),
                TransferKind::Hold,
                None,
            )
        };
        assert!(make(1, Account::held(&customer)).is_ok());
        assert_eq!(
            make(0, Account::held(&customer)),
            Err(BillingError::NonPositiveAmount { amount: 0 })
        );
        assert!(make(-5, Account::held(&customer)).is_err());
        assert!(matches!(
            make(1, Account::available(&customer)),
            Err(BillingError::SameAccount { .. })
        ));
    }

    #[test]
    fn top_ups_and_payouts_go_through_external() {
        let customer = user("usr_c");
        let top_up = top_up_transfer("pi_123", &customer, money("10")).unwrap();
        assert_eq!(top_up.id, "top_up:pi_123");
        assert!(top_up.debit.is_external());
        let payout = payout_transfer("po_9", &customer, money("4")).unwrap();
        assert_eq!(payout.id, "payout:po_9");
        assert!(payout.credit.is_external());
        let all = [top_up, payout];
        let balances = balances(&all);
        assert_eq!(balances[&Account::external()], -6_000_000);
        assert_eq!(balances[&Account::available(&customer)], 6_000_000);
        assert!(conserved(&all));
        assert!(top_up_transfer("", &customer, money("1")).is_err());
        assert!(top_up_transfer("a b", &customer, money("1")).is_err());
        assert!(top_up_transfer("x", &customer, Money::ZERO).is_err());
    }

    #[test]
    fn conserved_catches_malformed_rows() {
        let mut settlement = settle(&input()).unwrap();
        assert!(conserved(&settlement.transfers));
        settlement.transfers[0].amount = Money::from_micros(-1);
        assert!(!conserved(&settlement.transfers));
    }

    #[test]
    fn settlement_serializes_flat() {
        let settlement = settle(&input()).unwrap();
        let json = serde_json::to_value(&settlement).unwrap();
        assert_eq!(json["job_id"], "job_j1");
        assert_eq!(json["customer_charged"], 2_500_000);
        assert_eq!(json["outcome"], "completed");
        let back: Settlement = serde_json::from_value(json).unwrap();
        assert_eq!(back, settlement);
        back.check().unwrap();
    }
}
