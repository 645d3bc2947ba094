//! What every handler shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gp4u_bus::{EventBus, Relay};
use gp4u_core::atlas::AtlasConfig;
use gp4u_core::clock::Clock;
use gp4u_core::token::TokenKeys;
use gp4u_store::Store;
use object_store::ObjectStore;
use object_store::memory::InMemory;
use tokio::sync::Notify;

use crate::config::{BillingSettings, TutelaSettings};
use crate::metrics::Metrics;
use crate::obsidian::Obsidian;
use crate::placement::Dispatch;
use crate::tutela::Tutela;

/// A source of random id bytes (the core takes randomness as an argument).
pub type RandomIds = Arc<dyn Fn() -> [u8; 16] + Send + Sync>;

/// Limits and windows the handlers apply.
#[derive(Debug, Clone)]
pub struct Limits {
    pub submissions_per_minute: u32,
    pub max_body_bytes: usize,
    pub idempotency_ttl_ms: i64,
    /// An assignment no agent takes within this is moved elsewhere.
    pub pickup_timeout_ms: i64,
    /// Largest artifact upload (`POST /api/artifacts`).
    pub max_artifact_bytes: u64,
    /// Largest output archive an agent may upload for one job.
    pub max_output_bytes: u64,
    /// Stdout/stderr kept per job; beyond it the log is truncated.
    pub max_log_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            submissions_per_minute: 30,
            max_body_bytes: crate::config::DEFAULT_MAX_BODY_BYTES,
            idempotency_ttl_ms: 24 * 3_600_000,
            pickup_timeout_ms: 60_000,
            max_artifact_bytes: crate::config::DEFAULT_MAX_ARTIFACT_BYTES,
            max_output_bytes: crate::config::DEFAULT_MAX_OUTPUT_BYTES,
            max_log_bytes: crate::config::DEFAULT_MAX_LOG_BYTES,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub keys: Arc<TokenKeys>,
    pub limits: Limits,
    pub random_ids: RandomIds,
    pub relay: Relay,
    pub bus: Arc<dyn EventBus>,
    pub dispatch: Arc<Dispatch>,
    /// Wakes Atlas: a job was queued or a GPU freed.
    pub atlas_nudge: Arc<Notify>,
    /// Set when shutdown begins, so that `/readyz` turns away new traffic first.
    pub draining: Arc<AtomicBool>,
    /// Job inputs, outputs and logs (keys in [`crate::blobs`]).
    pub blobs: Arc<dyn ObjectStore>,
    /// Atlas's weights and tables.
    pub atlas: Arc<AtlasConfig>,
    /// Stage 4: rules, windows, the telemetry writer, the platform key.
    pub tutela: Arc<Tutela>,
    /// Stage 7's rates.
    pub billing: Arc<BillingSettings>,
    /// The ledger's name and signing key (the platform key).
    pub obsidian: Arc<Obsidian>,
    /// What `GET /metrics` serves: counted by the handlers and loops, levels read at scrape.
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// State with an in-memory blob store; [`AppState::with_blobs`] sets the real one
    /// (`Server::build` uses a local directory).
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        keys: TokenKeys,
        limits: Limits,
        random_ids: RandomIds,
        bus: Arc<dyn EventBus>,
    ) -> AppState {
        let relay = Relay::new(store.clone(), bus.clone());
        let started_ms = clock.now_ms();
        let platform_key = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let billing = BillingSettings::default();
        let obsidian = Obsidian::new(
            &billing.ledger_origin,
            platform_key.clone(),
            billing.ledger_batch,
        )
        .expect("the default ledger origin is a valid key name");
        AppState {
            billing: Arc::new(billing),
            obsidian: Arc::new(obsidian),
            metrics: Arc::new(Metrics::default()),
            store,
            clock,
            keys: Arc::new(keys),
            limits,
            random_ids,
            relay,
            bus,
            dispatch: Arc::new(Dispatch::default()),
            atlas_nudge: Arc::new(Notify::new()),
            draining: Arc::new(AtomicBool::new(false)),
            blobs: Arc::new(InMemory::new()),
            atlas: Arc::new(AtlasConfig::default()),
            tutela: Arc::new(Tutela::new(
                TutelaSettings::default(),
                platform_key,
                started_ms,
            )),
        }
    }

    /// The same state with these stage-4 settings and platform key (the default is a fresh
    /// in-memory key: fine for tests, while `Server::build` keeps one in the data dir).
    pub fn with_tutela(
        mut self,
        settings: TutelaSettings,
        platform_key: ed25519_dalek::SigningKey,
    ) -> AppState {
        let started_ms = self.tutela.started_ms;
        if let Ok(obsidian) = Obsidian::new(
            &self.billing.ledger_origin,
            platform_key.clone(),
            self.billing.ledger_batch,
        ) {
            self.obsidian = Arc::new(obsidian);
        }
        self.tutela = Arc::new(Tutela::new(settings, platform_key, started_ms));
        self
    }

    /// The same state with these stage-7 settings (rates, ledger origin), keeping the key.
    pub fn with_billing(mut self, billing: BillingSettings) -> anyhow::Result<AppState> {
        let key = self.tutela.platform_key.clone();
        self.obsidian = Arc::new(
            Obsidian::new(&billing.ledger_origin, key, billing.ledger_batch)
                .map_err(|error| anyhow::anyhow!(error))?,
        );
        self.billing = Arc::new(billing);
        Ok(self)
    }

    /// The same state over another blob store.
    pub fn with_atlas(mut self, atlas: AtlasConfig) -> AppState {
        self.atlas = Arc::new(atlas);
        self
    }

    /// The same state with these metrics (a token, or metrics off).
    pub fn with_metrics(mut self, metrics: Metrics) -> AppState {
        self.metrics = Arc::new(metrics);
        self
    }

    pub fn with_blobs(mut self, blobs: Arc<dyn ObjectStore>) -> AppState {
        self.blobs = blobs;
        self
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn random_id_bytes(&self) -> [u8; 16] {
        (self.random_ids)()
    }

    /// A fresh random reference (32 hex digits) for ids that must be unique, such as the
    /// transfer id of a top-up.
    pub fn random_reference(&self) -> String {
        gp4u_core::hex::encode(&self.random_id_bytes())
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// Random id bytes from the operating system's generator.
pub fn os_random_ids() -> RandomIds {
    Arc::new(rand::random::<[u8; 16]>)
}
