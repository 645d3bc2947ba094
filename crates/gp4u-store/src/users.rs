//! Users, provider nodes and their GPUs.

use gp4u_core::chambers::Presence;
use gp4u_core::ids::{GpuId, NodeId, UserId};
use gp4u_core::manifest::{GpuSpec, Role};
use gp4u_core::money::Money;
use gp4u_core::posture::HostPosture;

use crate::outbox::{OutboxEvent, insert_events};
use crate::records::{gpu_from_row, node_from_row, user_from_row};
use crate::{
    GpuRecord, GpuStatus, NodeRecord, Store, StoreError, StoreResult, UserRecord, bool_to_i64,
    is_unique_violation,
};

/// The trust score a newly registered node starts with (the schema's default).
pub const NEW_NODE_TRUST_SCORE: f64 = 50.0;

/// A user to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: UserId,
    pub name: String,
    pub role: Role,
    pub university: bool,
    pub region: Option<String>,
}

/// A node and its GPUs to register, with ids chosen by the caller.
#[derive(Debug, Clone)]
pub struct NewNode {
    pub id: NodeId,
    pub owner_id: UserId,
    pub region: String,
    pub public_key: String,
    pub gpus: Vec<(GpuId, GpuSpec)>,
    /// What the agent reports of its host, when it did.
    pub posture: Option<HostPosture>,
}

impl Store {
    /// Creates a user; `Conflict` when the id exists.
    pub async fn create_user(&self, user: &NewUser, now_ms: i64) -> StoreResult<UserRecord> {
        self.count_op();
        let _writer = self.writer().await;
        let row = sqlx::query(concat!(
            "INSERT INTO users (id, name, role, clearance, active, university, region, \
             credit_micros, created_at) VALUES ($1, $2, $3, $4, 1, $5, $6, 0, $7) RETURNING ",
            user_columns!()
        ))
        .bind(user.id.as_str())
        .bind(&user.name)
        .bind(user.role.as_str())
        .bind(i64::from(user.role.clearance()))
        .bind(bool_to_i64(user.university))
        .bind(user.region.as_deref())
        .bind(now_ms)
        .fetch_one(self.pool())
        .await
        .map_err(|error| {
            if is_unique_violation(&error) {
                StoreError::Conflict(format!("user {} already exists", user.id))
            } else {
                error.into()
            }
        })?;
        user_from_row(&row)
    }

    /// Creates `user` unless a user with its id exists. Returns whether it was created.
    /// Used for `GP4U_BOOTSTRAP_ADMIN`, which several replicas may run at once.
    pub async fn ensure_user(&self, user: &NewUser, now_ms: i64) -> StoreResult<bool> {
        match self.create_user(user, now_ms).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(error) => Err(error),
        }
    }

    pub async fn get_user(&self, id: &UserId) -> StoreResult<Option<UserRecord>> {
        self.count_op();
        let row = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// Users in the order they were created, at most `limit` of them (the operator's list).
    pub async fn list_users(&self, limit: i64) -> StoreResult<Vec<UserRecord>> {
        self.count_op();
        let rows = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users ORDER BY created_at, id LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    /// Activates or suspends a user. Suspension takes effect on the user's next request.
    pub async fn set_user_active(&self, id: &UserId, active: bool) -> StoreResult<UserRecord> {
        self.count_op();
        let _writer = self.writer().await;
        let row = sqlx::query(concat!(
            "UPDATE users SET active = $2 WHERE id = $1 RETURNING ",
            user_columns!()
        ))
        .bind(id.as_str())
        .bind(bool_to_i64(active))
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some(row) => user_from_row(&row),
            None => Err(StoreError::NotFound(format!("user {id}"))),
        }
    }

    /// Adds `amount` (may be negative) to a user's credit, as a transfer from (or to) the
    /// `external` account with id `transfer_id`. Refuses to take the balance below zero.
    pub async fn add_credit(
        &self,
        id: &UserId,
        amount: Money,
        transfer_id: &str,
        now_ms: i64,
    ) -> StoreResult<UserRecord> {
        let account = format!("user:{id}:available");
        let (debit, credit, kind) = if amount.micros() >= 0 {
            ("external".to_string(), account, "top_up")
        } else {
            (account, "external".to_string(), "payout")
        };
        if amount.micros() != 0 {
            let transfer = crate::NewTransfer {
                id: transfer_id.to_owned(),
                debit,
                credit,
                amount: Money::from_micros(amount.micros().saturating_abs()),
                kind: kind.into(),
                job_id: None,
            };
            match self
                .post_transfers(std::slice::from_ref(&transfer), now_ms)
                .await
            {
                Ok(_) => {}
                Err(StoreError::InsufficientFunds { .. }) => {
                    let user = self
                        .get_user(id)
                        .await?
                        .ok_or_else(|| StoreError::NotFound(format!("user {id}")))?;
                    return Err(StoreError::Conflict(format!(
                        "a credit change of {amount} would take user {id} below zero (balance {})",
                        user.credit
                    )));
                }
                Err(error) => return Err(error),
            }
        }
        self.get_user(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("user {id}")))
    }

    /// Registers a node with its GPUs (all AVAILABLE) and writes `events` to the outbox, all in
    /// one transaction.
    pub async fn register_node(
        &self,
        node: &NewNode,
        events: &[OutboxEvent],
        now_ms: i64,
    ) -> StoreResult<(NodeRecord, Vec<GpuRecord>)> {
        self.count_op();
        let _writer = self.writer().await;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO provider_nodes (id, owner_id, region, public_key, status, created_at, \
             posture) VALUES ($1, $2, $3, $4, 'ACTIVE', $5, $6)",
        )
        .bind(node.id.as_str())
        .bind(node.owner_id.as_str())
        .bind(&node.region)
        .bind(&node.public_key)
        .bind(now_ms)
        .bind(posture_json(node.posture.as_ref())?)
        .execute(&mut *tx)
        .await
        .map_err(|error| {
            if is_unique_violation(&error) {
                StoreError::Conflict(format!("node {} already exists", node.id))
            } else {
                error.into()
            }
        })?;
        for (gpu_id, spec) in &node.gpus {
            sqlx::query(
                "INSERT INTO gpus (id, node_id, name, vram_gb, price_micros, uuid, status, created_at, \
                 emulated, driver_version, power_limit_mw) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'AVAILABLE', $7, $8, $9, $10)",
            )
            .bind(gpu_id.as_str())
            .bind(node.id.as_str())
            .bind(&spec.name)
            .bind(spec.vram_gb)
            .bind(spec.price_per_hour.micros())
            .bind(spec.uuid.as_deref())
            .bind(now_ms)
            .bind(crate::bool_to_i64(spec.emulated))
            .bind(spec.driver_version.as_deref())
            .bind(milliwatts_column(spec.power_limit_mw)?)
            .execute(&mut *tx)
            .await?;
        }
        insert_events(&mut tx, events, now_ms).await?;
        tx.commit().await?;
        let record = NodeRecord {
            id: node.id.clone(),
            owner_id: node.owner_id.clone(),
            region: node.region.clone(),
            public_key: node.public_key.clone(),
            status: crate::records::NodeStatus::Active,
            created_at_ms: now_ms,
            trust_score: NEW_NODE_TRUST_SCORE,
            stake: Money::ZERO,
            ejected_at_ms: None,
            ejected_reason: None,
            visibility: "UNCHECKED".into(),
            visibility_checked_at_ms: None,
            presence: Presence::default(),
            posture: node.posture.clone(),
        };
        let gpus = node
            .gpus
            .iter()
            .map(|(gpu_id, spec)| GpuRecord {
                id: gpu_id.clone(),
                node_id: node.id.clone(),
                owner_id: node.owner_id.clone(),
                name: spec.name.clone(),
                vram_gb: spec.vram_gb,
                price_per_hour: spec.price_per_hour,
                uuid: spec.uuid.clone(),
                status: GpuStatus::Available,
                region: node.region.clone(),
                trust_score: NEW_NODE_TRUST_SCORE,
                created_at_ms: now_ms,
                emulated: spec.emulated,
                driver_version: spec.driver_version.clone(),
                power_limit_mw: Some(spec.power_limit_mw),
                node_presence: Presence::default(),
                node_posture: node.posture.clone(),
            })
            .collect();
        Ok((record, gpus))
    }

    pub async fn get_node(&self, id: &NodeId) -> StoreResult<Option<NodeRecord>> {
        self.count_op();
        let row = sqlx::query(concat!(
            "SELECT ",
            node_columns!(),
            " FROM provider_nodes WHERE id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(node_from_row).transpose()
    }

    pub async fn get_gpu(&self, id: &GpuId) -> StoreResult<Option<GpuRecord>> {
        self.count_op();
        let row = sqlx::query(concat!(
            "SELECT ",
            gpu_columns!(),
            " FROM gpus g JOIN provider_nodes n ON n.id = g.node_id WHERE g.id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(gpu_from_row).transpose()
    }

    /// A node's GPUs, whatever their status.
    pub async fn list_node_gpus(&self, node: &NodeId) -> StoreResult<Vec<GpuRecord>> {
        self.count_op();
        let rows = sqlx::query(concat!(
            "SELECT ",
            gpu_columns!(),
            " FROM gpus g JOIN provider_nodes n ON n.id = g.node_id WHERE g.node_id = $1 \
             ORDER BY g.id LIMIT 1000"
        ))
        .bind(node.as_str())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(gpu_from_row).collect()
    }

    /// The marketplace: AVAILABLE GPUs on ACTIVE nodes, cheapest first.
    pub async fn list_available_gpus(&self, limit: i64) -> StoreResult<Vec<GpuRecord>> {
        self.count_op();
        let rows = sqlx::query(concat!(
            "SELECT ",
            gpu_columns!(),
            " FROM gpus g JOIN provider_nodes n ON n.id = g.node_id \
             WHERE g.status = 'AVAILABLE' AND n.status = 'ACTIVE' \
             ORDER BY g.price_micros, g.id LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(gpu_from_row).collect()
    }
}

impl Store {
    /// Sets a GPU's status (Atlas marks GPUs BUSY and AVAILABLE; operators take them OFFLINE).
    pub async fn set_gpu_status(&self, id: &GpuId, status: GpuStatus) -> StoreResult<()> {
        self.count_op();
        let _writer = self.writer().await;
        let result = sqlx::query("UPDATE gpus SET status = $2 WHERE id = $1")
            .bind(id.as_str())
            .bind(status.as_str())
            .execute(self.pool())
            .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("gpu {id}")));
        }
        Ok(())
    }
}

pub(crate) fn posture_json(posture: Option<&HostPosture>) -> StoreResult<Option<String>> {
    posture
        .map(|posture| {
            serde_json::to_string(posture).map_err(|error| {
                StoreError::corrupt(format!("posture does not serialise: {error}"))
            })
        })
        .transpose()
}

/// A milliwatt figure as its column stores it (a signed 64-bit integer).
pub(crate) fn milliwatts_column(milliwatts: u64) -> StoreResult<i64> {
    i64::try_from(milliwatts)
        .map_err(|_| StoreError::corrupt(format!("{milliwatts} mW does not fit a column")))
}

impl Store {
    /// Sets the enforced power limits of `node`'s GPUs (`(gpu, milliwatts)`) in one
    /// transaction: the agent's declaration at every start. A GPU that is not `node`'s is
    /// `NotFound` and nothing changes. Jobs already assigned keep the limit they were
    /// assigned with (`jobs.gpu_power_limit_mw`): a change applies to later assignments.
    pub async fn set_gpu_power_limits(
        &self,
        node: &NodeId,
        limits: &[(GpuId, u64)],
    ) -> StoreResult<()> {
        self.count_op();
        let _writer = self.writer().await;
        let mut tx = self.begin_write().await?;
        for (gpu, milliwatts) in limits {
            let updated =
                sqlx::query("UPDATE gpus SET power_limit_mw = $3 WHERE id = $1 AND node_id = $2")
                    .bind(gpu.as_str())
                    .bind(node.as_str())
                    .bind(milliwatts_column(*milliwatts)?)
                    .execute(&mut *tx)
                    .await?;
            if updated.rows_affected() != 1 {
                tx.rollback().await?;
                return Err(StoreError::NotFound(format!("gpu {gpu} of node {node}")));
            }
        }
        tx.commit().await?;
        Ok(())
    }
}
