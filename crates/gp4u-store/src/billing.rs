//! Double-entry money: every balance change is a row of `transfers`, posted at most once.
//!
//! Accounts are strings (gp4u-core::billing names them): `user:<id>:available` is the user's
//! `credit_micros`, `user:<id>:held` their `held_micros`; every other account (platform:fees,
//! platform:student_program, external) is a row of `accounts`. A transfer's id is its key, so
//! posting the same transfer twice — a retried settlement, two replicas racing — changes
//! nothing the second time. The balance columns and the journal change in one transaction.

use std::collections::BTreeSet;

use gp4u_core::billing::Transfer;
use gp4u_core::ids::{JobId, UserId};
use gp4u_core::money::Money;
use sqlx::{Any, Row, Transaction};

use crate::outbox::insert_events;
use crate::{Engine, OutboxEvent, Store, StoreError, StoreResult};

/// A transfer to post: `amount` leaves `debit` and enters `credit`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTransfer {
    pub id: String,
    pub debit: String,
    pub credit: String,
    pub amount: Money,
    pub kind: String,
    pub job_id: Option<String>,
}

impl From<&Transfer> for NewTransfer {
    /// A core transfer as the store posts it.
    fn from(transfer: &Transfer) -> NewTransfer {
        NewTransfer {
            id: transfer.id.clone(),
            debit: transfer.debit.as_str().to_owned(),
            credit: transfer.credit.as_str().to_owned(),
            amount: transfer.amount,
            kind: transfer.kind.as_str().to_owned(),
            job_id: transfer.job_id.as_ref().map(ToString::to_string),
        }
    }
}

/// A posted transfer.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferRecord {
    pub id: String,
    pub debit: String,
    pub credit: String,
    pub amount: Money,
    pub kind: String,
    pub job_id: Option<String>,
    pub created_at_ms: i64,
}

/// A user's balances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    pub available: Money,
    pub held: Money,
}

/// Which column an account's balance lives in.
enum AccountColumn<'a> {
    UserAvailable(&'a str),
    UserHeld(&'a str),
    /// `node:<id>:stake`: provider_nodes.stake_micros (moved by deposits and slashes, which
    /// update the column themselves and journal with [`journal_only`]).
    NodeStake(&'a str),
    Other(&'a str),
}

fn account_column(account: &str) -> AccountColumn<'_> {
    if let Some(rest) = account.strip_prefix("user:") {
        if let Some(user) = rest.strip_suffix(":available") {
            return AccountColumn::UserAvailable(user);
        }
        if let Some(user) = rest.strip_suffix(":held") {
            return AccountColumn::UserHeld(user);
        }
    }
    if let Some(node) = account
        .strip_prefix("node:")
        .and_then(|rest| rest.strip_suffix(":stake"))
    {
        return AccountColumn::NodeStake(node);
    }
    AccountColumn::Other(account)
}

/// Writes a transfer to the journal only, for callers that moved the balance columns
/// themselves (stake deposits and slashes move `stake_micros` with their own checks).
pub(crate) async fn journal_only(
    tx: &mut Transaction<'_, Any>,
    transfer: &NewTransfer,
    now_ms: i64,
) -> StoreResult<()> {
    if insert_transfer(tx, transfer, now_ms).await? == 0 {
        return Err(StoreError::Conflict(format!(
            "transfer {} was already posted",
            transfer.id
        )));
    }
    Ok(())
}

/// Writes the journal row; 0 when a transfer with this id exists already.
async fn insert_transfer(
    tx: &mut Transaction<'_, Any>,
    transfer: &NewTransfer,
    now_ms: i64,
) -> StoreResult<u64> {
    Ok(sqlx::query(
        "INSERT INTO transfers (id, debit, credit, amount_micros, kind, job_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&transfer.id)
    .bind(&transfer.debit)
    .bind(&transfer.credit)
    .bind(transfer.amount.micros())
    .bind(&transfer.kind)
    .bind(transfer.job_id.as_deref())
    .bind(now_ms)
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

/// Adds `delta` to a non-user account's row.
pub(crate) async fn apply_account_delta(
    tx: &mut Transaction<'_, Any>,
    account: &str,
    delta: i64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO accounts (id, balance_micros) VALUES ($1, $2) \
         ON CONFLICT (id) DO UPDATE SET balance_micros = accounts.balance_micros + $2",
    )
    .bind(account)
    .bind(delta)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Adds `delta` to `account`. User accounts never go below zero: `InsufficientFunds` then.
async fn apply_delta(tx: &mut Transaction<'_, Any>, account: &str, delta: i64) -> StoreResult<()> {
    let (sql, user) = match account_column(account) {
        AccountColumn::UserAvailable(user) => (
            "UPDATE users SET credit_micros = credit_micros + $2 \
             WHERE id = $1 AND credit_micros + $2 >= 0",
            user,
        ),
        AccountColumn::UserHeld(user) => (
            "UPDATE users SET held_micros = held_micros + $2 \
             WHERE id = $1 AND held_micros + $2 >= 0",
            user,
        ),
        AccountColumn::NodeStake(node) => (
            "UPDATE provider_nodes SET stake_micros = stake_micros + $2 \
             WHERE id = $1 AND stake_micros + $2 >= 0",
            node,
        ),
        AccountColumn::Other(id) => return apply_account_delta(tx, id, delta).await,
    };
    let changed = sqlx::query(sql)
        .bind(user)
        .bind(delta)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if changed == 0 {
        let table = if matches!(account_column(account), AccountColumn::NodeStake(_)) {
            "SELECT 1 AS one FROM provider_nodes WHERE id = $1"
        } else {
            "SELECT 1 AS one FROM users WHERE id = $1"
        };
        let exists = sqlx::query(table)
            .bind(user)
            .fetch_optional(&mut **tx)
            .await?
            .is_some();
        if !exists {
            return Err(StoreError::NotFound(format!("account {account}")));
        }
        return Err(StoreError::InsufficientFunds {
            account: account.to_string(),
            needed: Money::from_micros(delta.saturating_neg()),
        });
    }
    Ok(())
}

/// Locks every balance row `transfers` touch, in one global order (users, then nodes, then
/// platform accounts, each by id), so that two transactions moving money between the same
/// accounts in opposite directions wait for each other instead of deadlocking (PostgreSQL;
/// SQLite has a single writer). Other multi-row writers lock in the same category order.
async fn lock_balances(
    tx: &mut Transaction<'_, Any>,
    engine: Engine,
    transfers: &[NewTransfer],
) -> StoreResult<()> {
    if engine != Engine::Postgres {
        return Ok(());
    }
    let mut users = BTreeSet::new();
    let mut nodes = BTreeSet::new();
    let mut others = BTreeSet::new();
    for account in transfers
        .iter()
        .flat_map(|transfer| [transfer.debit.as_str(), transfer.credit.as_str()])
    {
        match account_column(account) {
            AccountColumn::UserAvailable(user) | AccountColumn::UserHeld(user) => {
                users.insert(user)
            }
            AccountColumn::NodeStake(node) => nodes.insert(node),
            AccountColumn::Other(id) => others.insert(id),
        };
    }
    if users.len() + nodes.len() + others.len() < 2 {
        return Ok(());
    }
    for user in users {
        sqlx::query("SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE")
            .bind(user)
            .fetch_optional(&mut **tx)
            .await?;
    }
    for node in nodes {
        sqlx::query("SELECT id FROM provider_nodes WHERE id = $1 FOR NO KEY UPDATE")
            .bind(node)
            .fetch_optional(&mut **tx)
            .await?;
    }
    for account in others {
        // The row may not exist yet (a platform account's first transfer).
        sqlx::query(
            "INSERT INTO accounts (id, balance_micros) VALUES ($1, 0) ON CONFLICT (id) DO NOTHING",
        )
        .bind(account)
        .execute(&mut **tx)
        .await?;
        sqlx::query("SELECT id FROM accounts WHERE id = $1 FOR NO KEY UPDATE")
            .bind(account)
            .fetch_optional(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Posts `transfers` inside `tx`; each one already posted (same id) is skipped. Returns how
/// many were new. An existing id with different contents is refused: ids name one transfer.
pub(crate) async fn post_transfers(
    tx: &mut Transaction<'_, Any>,
    engine: Engine,
    transfers: &[NewTransfer],
    now_ms: i64,
) -> StoreResult<usize> {
    lock_balances(tx, engine, transfers).await?;
    let mut posted = 0;
    for transfer in transfers {
        if transfer.amount.micros() <= 0 {
            return Err(StoreError::Conflict(format!(
                "transfer {} has a non-positive amount {}",
                transfer.id, transfer.amount
            )));
        }
        if transfer.debit == transfer.credit {
            return Err(StoreError::Conflict(format!(
                "transfer {} moves money from {} to itself",
                transfer.id, transfer.debit
            )));
        }
        let inserted = insert_transfer(tx, transfer, now_ms).await?;
        if inserted == 0 {
            let row =
                sqlx::query("SELECT debit, credit, amount_micros FROM transfers WHERE id = $1")
                    .bind(&transfer.id)
                    .fetch_one(&mut **tx)
                    .await?;
            let same = row.try_get::<String, _>("debit")? == transfer.debit
                && row.try_get::<String, _>("credit")? == transfer.credit
                && row.try_get::<i64, _>("amount_micros")? == transfer.amount.micros();
            if !same {
                return Err(StoreError::Conflict(format!(
                    "transfer {} was already posted with different accounts or amount",
                    transfer.id
                )));
            }
            continue;
        }
        apply_delta(tx, &transfer.debit, -transfer.amount.micros()).await?;
        apply_delta(tx, &transfer.credit, transfer.amount.micros()).await?;
        posted += 1;
    }
    Ok(posted)
}

fn transfer_from_row(row: &sqlx::any::AnyRow) -> StoreResult<TransferRecord> {
    Ok(TransferRecord {
        id: row.try_get("id")?,
        debit: row.try_get("debit")?,
        credit: row.try_get("credit")?,
        amount: Money::from_micros(row.try_get("amount_micros")?),
        kind: row.try_get("kind")?,
        job_id: row.try_get("job_id")?,
        created_at_ms: row.try_get("created_at")?,
    })
}

/// What `settle_job` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleOutcome {
    /// This call stored the settlement and posted its transfers.
    Settled,
    /// The job was settled before (by this or another replica); nothing changed.
    AlreadySettled,
}

impl Store {
    /// Posts transfers on their own (top-ups, payouts). Idempotent per transfer id.
    pub async fn post_transfers(
        &self,
        transfers: &[NewTransfer],
        now_ms: i64,
    ) -> StoreResult<usize> {
        self.count_op();
        let _writer = self.writer().await;
        let mut tx = self.begin_write().await?;
        let posted = post_transfers(&mut tx, self.engine(), transfers, now_ms).await?;
        tx.commit().await?;
        Ok(posted)
    }

    /// Stores a job's settlement, posts its transfers and writes `events`, in one transaction,
    /// once: a second call (a retry, another replica) finds the settlement and changes nothing.
    pub async fn settle_job(
        &self,
        job: &JobId,
        settlement: &serde_json::Value,
        transfers: &[NewTransfer],
        events: &[OutboxEvent],
        now_ms: i64,
    ) -> StoreResult<SettleOutcome> {
        self.count_op();
        let _writer = self.writer().await;
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO settlements (job_id, body, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(job.as_str())
        .bind(settlement.to_string())
        .bind(now_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(SettleOutcome::AlreadySettled);
        }
        post_transfers(&mut tx, self.engine(), transfers, now_ms).await?;
        insert_events(&mut tx, events, now_ms).await?;
        tx.commit().await?;
        Ok(SettleOutcome::Settled)
    }

    /// A job's stored settlement, as computed when it was settled.
    pub async fn get_settlement(&self, job: &JobId) -> StoreResult<Option<serde_json::Value>> {
        self.job_body(
            "SELECT body FROM settlements WHERE job_id = $1",
            job,
            "settlement",
        )
        .await
    }

    /// Transfers into or out of `account`, newest first, at most `limit`.
    pub async fn account_transfers(
        &self,
        account: &str,
        limit: i64,
    ) -> StoreResult<Vec<TransferRecord>> {
        self.count_op();
        let rows = sqlx::query(
            "SELECT id, debit, credit, amount_micros, kind, job_id, created_at FROM transfers \
             WHERE credit = $1 OR debit = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
        )
        .bind(account)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(transfer_from_row).collect()
    }

    /// A user's available and held balances.
    pub async fn balance(&self, user: &UserId) -> StoreResult<Balance> {
        self.count_op();
        let row = sqlx::query("SELECT credit_micros, held_micros FROM users WHERE id = $1")
            .bind(user.as_str())
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("user {user}")))?;
        Ok(Balance {
            available: Money::from_micros(row.try_get("credit_micros")?),
            held: Money::from_micros(row.try_get("held_micros")?),
        })
    }

    /// The balance of a non-user account (platform:fees, external, …); 0 when never touched.
    pub async fn account_balance(&self, account: &str) -> StoreResult<Money> {
        self.count_op();
        let row = sqlx::query("SELECT balance_micros FROM accounts WHERE id = $1")
            .bind(account)
            .fetch_optional(self.pool())
            .await?;
        Ok(Money::from_micros(match row {
            Some(row) => row.try_get("balance_micros")?,
            None => 0,
        }))
    }

    /// Double-entry audit: every account's column against the sum of its journal, and the sum
    /// of all balances (must be zero). Returns the accounts that disagree.
    pub async fn audit_balances(&self) -> StoreResult<Vec<String>> {
        self.count_op();
        let rows = sqlx::query(
            "SELECT account, CAST(SUM(delta) AS BIGINT) AS total FROM ( \
               SELECT credit AS account, amount_micros AS delta FROM transfers \
               UNION ALL SELECT debit AS account, -amount_micros AS delta FROM transfers \
             ) moves GROUP BY account",
        )
        .fetch_all(self.pool())
        .await?;
        let mut wrong = Vec::new();
        for row in rows {
            let account: String = row.try_get("account")?;
            let journal: i64 = row.try_get("total")?;
            let column = match account_column(&account) {
                AccountColumn::UserAvailable(user) | AccountColumn::UserHeld(user) => {
                    let balance = self
                        .balance(&UserId::parse(user).map_err(|error| {
                            StoreError::corrupt(format!("account {account}: {error}"))
                        })?)
                        .await?;
                    if account.ends_with(":held") {
                        balance.held.micros()
                    } else {
                        balance.available.micros()
                    }
                }
                AccountColumn::NodeStake(node) => {
                    let row = sqlx::query("SELECT stake_micros FROM provider_nodes WHERE id = $1")
                        .bind(node)
                        .fetch_optional(self.pool())
                        .await?;
                    match row {
                        Some(row) => row.try_get("stake_micros")?,
                        None => 0,
                    }
                }
                AccountColumn::Other(id) => self.account_balance(id).await?.micros(),
            };
            if journal != column {
                wrong.push(format!("{account}: column {column}, journal {journal}"));
            }
        }
        Ok(wrong)
    }
}
