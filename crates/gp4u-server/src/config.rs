//! Server settings: every one a flag and a `GP4U_…` environment variable, optionally read from
//! a TOML file (`--config`). Precedence: flag or environment, then the file, then the default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use gp4u_core::atlas::AtlasConfig;
use gp4u_core::tutela::{RuleConfig, SlashSchedule};
use serde::Deserialize;

/// `gp4u server` flags. All optional here so that the TOML file can fill what is not given.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerArgs {
    /// TOML file with any of the settings below (keys as the long flags, with underscores).
    #[arg(long, env = "GP4U_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "GP4U_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the SQLite database and the generated token secret [default: ./gp4u-data].
    #[arg(long, env = "GP4U_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// sqlite://PATH or postgres://… [default: SQLite file gp4u.db in the data dir].
    #[arg(long, env = "GP4U_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// HMAC secret for tokens, at least 32 bytes [default: generated into the data dir].
    #[arg(long, env = "GP4U_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// The previous token secret, still accepted for verification during a key rotation.
    #[arg(long, env = "GP4U_TOKEN_SECRET_PREVIOUS", hide_env_values = true)]
    pub token_secret_previous: Option<String>,
    /// A user id (usr_…) created as an active admin at start if absent.
    #[arg(long, env = "GP4U_BOOTSTRAP_ADMIN")]
    pub bootstrap_admin: Option<String>,
    /// Seconds without telemetry before a running job counts as dropped [default: 60].
    #[arg(long, env = "GP4U_HEARTBEAT_TIMEOUT_S")]
    pub heartbeat_timeout_s: Option<u64>,
    /// After the server starts, how long before any job can count as dropped, in seconds
    /// [default: the heartbeat timeout].
    #[arg(long, env = "GP4U_HEARTBEAT_RESTART_GRACE_S")]
    pub heartbeat_restart_grace_s: Option<u64>,
    /// The telemetry period agents are told to use, in seconds [default: 10].
    #[arg(long, env = "GP4U_TELEMETRY_INTERVAL_S")]
    pub telemetry_interval_s: Option<u64>,
    /// How often nodes with running jobs get a visibility challenge, in seconds [default: 60].
    #[arg(long, env = "GP4U_VISIBILITY_INTERVAL_S")]
    pub visibility_interval_s: Option<u64>,
    /// NATS JetStream URL; unset means the in-process bus.
    #[arg(long, env = "GP4U_NATS_URL")]
    pub nats_url: Option<String>,
    /// Job submissions allowed per user per rolling minute [default: 30].
    #[arg(long, env = "GP4U_RATE_LIMIT_PER_MINUTE")]
    pub rate_limit_per_minute: Option<u32>,
    /// Largest accepted request body in bytes [default: 65536].
    #[arg(long, env = "GP4U_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// How long an Idempotency-Key is remembered, in hours [default: 24].
    #[arg(long, env = "GP4U_IDEMPOTENCY_TTL_HOURS")]
    pub idempotency_ttl_hours: Option<u64>,
    /// Seconds an agent has to take an assignment before Atlas moves it [default: 60].
    #[arg(long, env = "GP4U_PICKUP_TIMEOUT_S")]
    pub pickup_timeout_s: Option<u64>,
    /// Directory of the blob store: job inputs, outputs and logs [default: <data dir>/blobs].
    #[arg(long, env = "GP4U_BLOB_DIR")]
    pub blob_dir: Option<PathBuf>,
    /// Largest artifact `POST /api/artifacts` accepts, in bytes [default: 268435456].
    #[arg(long, env = "GP4U_MAX_ARTIFACT_BYTES")]
    pub max_artifact_bytes: Option<u64>,
    /// Largest output archive an agent may upload for a job, in bytes [default: 1073741824].
    #[arg(long, env = "GP4U_MAX_OUTPUT_BYTES")]
    pub max_output_bytes: Option<u64>,
    /// Stdout/stderr kept per job, in bytes; beyond it the log is truncated [default: 10485760].
    #[arg(long, env = "GP4U_MAX_LOG_BYTES")]
    pub max_log_bytes: Option<u64>,
    /// Serve Prometheus metrics at GET /metrics and time every request [default: true].
    #[arg(long, env = "GP4U_METRICS")]
    pub metrics: Option<bool>,
    /// When set, GET /metrics wants `Authorization: Bearer <this token>` [default: open].
    #[arg(long, env = "GP4U_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
}

/// The TOML file's shape: the same names as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    token_secret: Option<String>,
    token_secret_previous: Option<String>,
    bootstrap_admin: Option<String>,
    heartbeat_timeout_s: Option<u64>,
    heartbeat_restart_grace_s: Option<u64>,
    telemetry_interval_s: Option<u64>,
    visibility_interval_s: Option<u64>,
    nats_url: Option<String>,
    rate_limit_per_minute: Option<u32>,
    max_body_bytes: Option<usize>,
    idempotency_ttl_hours: Option<u64>,
    pickup_timeout_s: Option<u64>,
    blob_dir: Option<PathBuf>,
    max_artifact_bytes: Option<u64>,
    max_output_bytes: Option<u64>,
    max_log_bytes: Option<u64>,
    metrics: Option<bool>,
    metrics_token: Option<String>,
    /// Atlas's weights, region latency table and grid carbon table (`[atlas]`, with
    /// `[atlas.weights]`, `[atlas.latency]` and `[atlas.carbon.<region>]`); defaults fill gaps.
    atlas: Option<AtlasConfig>,
    /// Tutela's rule thresholds, slash schedule and watchdog knobs (`[tutela]`, with
    /// `[tutela.rules]`, `[tutela.rules.inference]` and `[tutela.slashes.<kind>]`).
    tutela: Option<TutelaSettings>,
    /// Stage 7's rates and the ledger's name (`[billing]`).
    billing: Option<BillingSettings>,
}

/// Stages 5–7 (`[billing]` in the config file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BillingSettings {
    /// The platform's fee, in basis points of what the customer is charged [default: 1000 = 10 %].
    pub platform_fee_bp: u32,
    /// University providers' student-programme share, in basis points of the provider's
    /// earnings [default: 2500 = 25 %].
    pub student_program_bp: u32,
    /// The ledger's origin line and checkpoint key name (C2SP: a schema-less URL naming the log).
    pub ledger_origin: String,
    /// Entries sealed per ledger append at most.
    pub ledger_batch: i64,
}

impl Default for BillingSettings {
    fn default() -> Self {
        BillingSettings {
            platform_fee_bp: gp4u_core::billing::DEFAULT_FEE_BP,
            student_program_bp: gp4u_core::billing::DEFAULT_STUDENT_BP,
            ledger_origin: "gp4u.local/obsidian".into(),
            ledger_batch: 2000,
        }
    }
}

impl BillingSettings {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.platform_fee_bp > 10_000 || self.student_program_bp > 10_000 {
            bail!("[billing] platform_fee_bp and student_program_bp are basis points: 0–10000");
        }
        if !gp4u_ledger::note::is_valid_key_name(&self.ledger_origin) {
            bail!(
                "[billing] ledger_origin {:?} must be non-empty, without spaces or '+'",
                self.ledger_origin
            );
        }
        if !(1..=10_000).contains(&self.ledger_batch) {
            bail!("[billing] ledger_batch must be 1–10000");
        }
        Ok(())
    }
}

/// Stage 4's knobs (`[tutela]` in the config file; the flags above override the ones they name).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TutelaSettings {
    /// The anomaly rules' thresholds (SPEC §7 defaults).
    pub rules: RuleConfig,
    /// What each slash takes from stake and trust.
    pub slashes: SlashSchedule,
    /// The telemetry period agents are told to use.
    pub telemetry_interval_s: u64,
    /// Telemetry packets a node may send per second, sustained, and in a burst; beyond it 429.
    pub telemetry_per_node_per_s: f64,
    pub telemetry_burst_per_node: f64,
    /// Strictly more silence than this is a dropped job.
    pub heartbeat_timeout_s: u64,
    /// After start, nothing is dropped for this long.
    pub heartbeat_restart_grace_s: u64,
    /// The breaker: at least this many nodes with running jobs, and more than this share silent.
    pub breaker_min_nodes: usize,
    pub breaker_silent_fraction: f64,
    /// How often the heartbeat and duration reapers run, in milliseconds.
    pub reaper_interval_ms: u64,
    /// A running job past 1.1 × its declared duration plus this is failed by the platform
    /// (the agent kills it at 1.1 × on its own).
    pub duration_grace_s: u64,
    /// A job its agent took but never started (no start report, no packet) for this long is
    /// moved to another node (`JOB_DROPPED`, no slash: a slow image pull is not bad faith).
    pub start_timeout_s: u64,
    /// Visibility challenges: how often; and how long the agent has to answer, beyond the two
    /// telemetry intervals its next packet (whose reply carries the challenge) may take.
    pub visibility_interval_s: u64,
    pub visibility_timeout_ms: u64,
    /// Group commit of telemetry rows: at most this many rows per transaction, and this many
    /// writers committing batches concurrently.
    pub telemetry_batch_rows: usize,
    pub telemetry_writers: usize,
    /// The telemetry hot path reads its caller and job from a per-replica cache at most this
    /// old (changes made on this replica apply at once; on another, within this time).
    pub cache_ttl_ms: u64,
}

impl Default for TutelaSettings {
    fn default() -> Self {
        TutelaSettings {
            rules: RuleConfig::default(),
            slashes: SlashSchedule::default(),
            telemetry_interval_s: 10,
            telemetry_per_node_per_s: 20.0,
            telemetry_burst_per_node: 40.0,
            heartbeat_timeout_s: 60,
            heartbeat_restart_grace_s: 60,
            breaker_min_nodes: 3,
            breaker_silent_fraction: 0.5,
            reaper_interval_ms: 1000,
            duration_grace_s: 30,
            start_timeout_s: 900,
            visibility_interval_s: 60,
            visibility_timeout_ms: 5000,
            telemetry_batch_rows: 512,
            telemetry_writers: 4,
            cache_ttl_ms: 5000,
        }
    }
}

impl TutelaSettings {
    /// The longest interval one telemetry sample accounts for in energy: three periods. A gap
    /// beyond it (missed packets) is not billed as energy.
    pub fn energy_max_gap_ms(&self) -> i64 {
        i64::try_from(self.telemetry_interval_s.saturating_mul(3_000)).unwrap_or(i64::MAX)
    }

    /// Refuses settings that cannot work, naming them.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.slashes
            .validate()
            .map_err(|error| anyhow::anyhow!("[tutela.slashes] in the config file: {error}"))?;
        if self.telemetry_interval_s == 0 || self.telemetry_interval_s > 600 {
            bail!(
                "the telemetry interval must be 1–600 s, got {}",
                self.telemetry_interval_s
            );
        }
        if self.heartbeat_timeout_s <= self.telemetry_interval_s {
            bail!(
                "GP4U_HEARTBEAT_TIMEOUT_S ({}) must be longer than the telemetry interval ({} s), \
                 or every job would count as dropped between two packets",
                self.heartbeat_timeout_s,
                self.telemetry_interval_s
            );
        }
        if !(self.telemetry_per_node_per_s > 0.0 && self.telemetry_burst_per_node >= 1.0) {
            bail!("[tutela] telemetry_per_node_per_s must be > 0 and telemetry_burst_per_node ≥ 1");
        }
        if !(0.0..1.0).contains(&self.breaker_silent_fraction) {
            bail!("[tutela] breaker_silent_fraction must be in [0, 1)");
        }
        if self.visibility_interval_s == 0 || self.reaper_interval_ms == 0 {
            bail!("[tutela] visibility_interval_s and reaper_interval_ms must be at least 1");
        }
        if self.telemetry_batch_rows == 0 || self.telemetry_batch_rows > 4096 {
            bail!("[tutela] telemetry_batch_rows must be 1–4096");
        }
        if self.telemetry_writers == 0 || self.telemetry_writers > 64 {
            bail!("[tutela] telemetry_writers must be 1–64");
        }
        Ok(())
    }
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub token_secret: Option<String>,
    pub token_secret_previous: Option<String>,
    pub bootstrap_admin: Option<String>,
    pub rate_limit_per_minute: u32,
    pub max_body_bytes: usize,
    pub idempotency_ttl_hours: u64,
    pub pickup_timeout_s: u64,
    pub blob_dir: PathBuf,
    pub max_artifact_bytes: u64,
    pub max_output_bytes: u64,
    pub max_log_bytes: u64,
    /// `GET /metrics` and request timing on.
    pub metrics: bool,
    /// The bearer token `GET /metrics` wants; `None`: open.
    pub metrics_token: Option<String>,
    pub atlas: AtlasConfig,
    pub tutela: TutelaSettings,
    pub billing: BillingSettings,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./gp4u-data";
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 256 * 1024 * 1024;
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 1024 * 1024 * 1024;
pub const DEFAULT_MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;

impl ServerSettings {
    /// Settings for tests and embedding: defaults, with the data dir given.
    pub fn with_data_dir(data_dir: &Path) -> ServerSettings {
        ServerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.to_path_buf(),
            database_url: default_database_url(data_dir),
            token_secret: None,
            token_secret_previous: None,
            bootstrap_admin: None,
            rate_limit_per_minute: 30,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            idempotency_ttl_hours: 24,
            pickup_timeout_s: 60,
            blob_dir: default_blob_dir(data_dir),
            max_artifact_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
            metrics: true,
            metrics_token: None,
            atlas: AtlasConfig::default(),
            tutela: TutelaSettings::default(),
            billing: BillingSettings::default(),
        }
    }

    pub fn resolve(args: ServerArgs) -> anyhow::Result<ServerSettings> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<FileSettings>(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => FileSettings::default(),
        };
        if let Some(url) = args.nats_url.or(file.nats_url) {
            bail!(
                "GP4U_NATS_URL is set ({url}) but this build has only the in-process bus; \
                 unset it (NATS JetStream support is planned)"
            );
        }
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let listen = match args.listen.or(file.listen) {
            Some(listen) => listen,
            None => DEFAULT_LISTEN.parse().context("default listen address")?,
        };
        let rate_limit_per_minute = args
            .rate_limit_per_minute
            .or(file.rate_limit_per_minute)
            .unwrap_or(30);
        if rate_limit_per_minute == 0 {
            bail!("GP4U_RATE_LIMIT_PER_MINUTE must be at least 1");
        }
        let max_body_bytes = args
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if !(1024..=16 * 1024 * 1024).contains(&max_body_bytes) {
            bail!("GP4U_MAX_BODY_BYTES must be between 1024 and 16777216, got {max_body_bytes}");
        }
        let positive = |name: &str, value: Option<u64>, default: u64| match value {
            Some(0) => bail!("{name} must be at least 1"),
            Some(value) => Ok(value),
            None => Ok(default),
        };
        let max_artifact_bytes = positive(
            "GP4U_MAX_ARTIFACT_BYTES",
            args.max_artifact_bytes.or(file.max_artifact_bytes),
            DEFAULT_MAX_ARTIFACT_BYTES,
        )?;
        let max_output_bytes = positive(
            "GP4U_MAX_OUTPUT_BYTES",
            args.max_output_bytes.or(file.max_output_bytes),
            DEFAULT_MAX_OUTPUT_BYTES,
        )?;
        let max_log_bytes = positive(
            "GP4U_MAX_LOG_BYTES",
            args.max_log_bytes.or(file.max_log_bytes),
            DEFAULT_MAX_LOG_BYTES,
        )?;
        let blob_dir = args
            .blob_dir
            .or(file.blob_dir)
            .unwrap_or_else(|| default_blob_dir(&data_dir));
        let atlas = file.atlas.unwrap_or_default();
        atlas
            .weights
            .validate()
            .map_err(|error| anyhow::anyhow!("[atlas.weights] in the config file: {error}"))?;
        let mut tutela = file.tutela.unwrap_or_default();
        if let Some(timeout) = args.heartbeat_timeout_s.or(file.heartbeat_timeout_s) {
            tutela.heartbeat_timeout_s = timeout;
            tutela.heartbeat_restart_grace_s = timeout;
        }
        if let Some(grace) = args
            .heartbeat_restart_grace_s
            .or(file.heartbeat_restart_grace_s)
        {
            tutela.heartbeat_restart_grace_s = grace;
        }
        if let Some(interval) = args.telemetry_interval_s.or(file.telemetry_interval_s) {
            tutela.telemetry_interval_s = interval;
        }
        if let Some(interval) = args.visibility_interval_s.or(file.visibility_interval_s) {
            tutela.visibility_interval_s = interval;
        }
        tutela.validate()?;
        let billing = file.billing.unwrap_or_default();
        billing.validate()?;
        let metrics_token = args.metrics_token.or(file.metrics_token);
        if let Some(token) = &metrics_token
            && (token.trim() != token || token.len() < 16)
        {
            // The token's value is never printed, here or anywhere.
            bail!(
                "GP4U_METRICS_TOKEN must be at least 16 characters without surrounding spaces \
                 (e.g. `openssl rand -hex 32`)"
            );
        }
        Ok(ServerSettings {
            billing,
            listen,
            database_url: args
                .database_url
                .or(file.database_url)
                .unwrap_or_else(|| default_database_url(&data_dir)),
            data_dir,
            token_secret: args.token_secret.or(file.token_secret),
            token_secret_previous: args.token_secret_previous.or(file.token_secret_previous),
            bootstrap_admin: args.bootstrap_admin.or(file.bootstrap_admin),
            rate_limit_per_minute,
            max_body_bytes,
            idempotency_ttl_hours: args
                .idempotency_ttl_hours
                .or(file.idempotency_ttl_hours)
                .unwrap_or(24),
            pickup_timeout_s: args
                .pickup_timeout_s
                .or(file.pickup_timeout_s)
                .unwrap_or(60),
            blob_dir,
            max_artifact_bytes,
            max_output_bytes,
            max_log_bytes,
            metrics: args.metrics.or(file.metrics).unwrap_or(true),
            metrics_token,
            atlas,
            tutela,
        })
    }
}

/// The blob store's default home: `<data dir>/blobs`.
pub fn default_blob_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("blobs")
}

pub fn default_database_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("gp4u.db").display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gp4u.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9999\"\nrate_limit_per_minute = 5\n",
        )
        .unwrap();
        let args = ServerArgs {
            config: Some(path),
            rate_limit_per_minute: Some(7),
            ..ServerArgs::default()
        };
        let settings = ServerSettings::resolve(args).unwrap();
        assert_eq!(settings.listen.port(), 9999);
        assert_eq!(settings.rate_limit_per_minute, 7);
        assert_eq!(settings.tutela.heartbeat_timeout_s, 60);
        assert!(settings.database_url.ends_with("gp4u-data/gp4u.db"));
        assert!(settings.blob_dir.ends_with("gp4u-data/blobs"));
        assert_eq!(settings.max_log_bytes, DEFAULT_MAX_LOG_BYTES);
    }

    #[test]
    fn blob_settings_come_from_the_file_and_zero_caps_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gp4u.toml");
        std::fs::write(
            &path,
            "blob_dir = \"/srv/blobs\"\nmax_artifact_bytes = 1000\nmax_log_bytes = 5\n",
        )
        .unwrap();
        let settings = ServerSettings::resolve(ServerArgs {
            config: Some(path),
            max_log_bytes: Some(7),
            ..ServerArgs::default()
        })
        .unwrap();
        assert_eq!(settings.blob_dir, PathBuf::from("/srv/blobs"));
        assert_eq!(
            (
                settings.max_artifact_bytes,
                settings.max_output_bytes,
                settings.max_log_bytes
            ),
            (1000, DEFAULT_MAX_OUTPUT_BYTES, 7)
        );
        let error = ServerSettings::resolve(ServerArgs {
            max_output_bytes: Some(0),
            ..ServerArgs::default()
        })
        .unwrap_err();
        assert!(
            error.to_string().contains("GP4U_MAX_OUTPUT_BYTES"),
            "{error}"
        );
    }

    #[test]
    fn atlas_weights_and_tables_come_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gp4u.toml");
        std::fs::write(
            &path,
            "[atlas.weights]\ncarbon = 0.9\n[atlas.carbon.us-east-1]\ng_co2e_per_kwh = 123.0\nsource = \"our meter\"\nas_of = \"2026\"\n",
        )
        .unwrap();
        let settings = ServerSettings::resolve(ServerArgs {
            config: Some(path.clone()),
            ..ServerArgs::default()
        })
        .unwrap();
        assert_eq!(settings.atlas.weights.carbon, 0.9);
        assert_eq!(
            settings.atlas.weights.trust,
            AtlasConfig::default().weights.trust
        );
        let carbon = settings.atlas.carbon.intensity("us-east-1").unwrap();
        assert_eq!(
            (carbon.g_co2e_per_kwh, carbon.source.as_str()),
            (123.0, "our meter")
        );
        std::fs::write(&path, "[atlas.weights]\nprice = -1.0\n").unwrap();
        let error = ServerSettings::resolve(ServerArgs {
            config: Some(path),
            ..ServerArgs::default()
        })
        .unwrap_err();
        assert!(error.to_string().contains("atlas.weights"), "{error}");
    }

    #[test]
    fn tutela_settings_come_from_flags_and_the_file_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gp4u.toml");
        std::fs::write(
            &path,
            "[tutela]\nbreaker_min_nodes = 5\n[tutela.rules]\nport_scan_unique_ips = 20\n\
             [tutela.slashes.vram_overclaim]\nstake_basis_points = 50\ntrust_penalty = 1.0\n",
        )
        .unwrap();
        let settings = ServerSettings::resolve(ServerArgs {
            config: Some(path.clone()),
            heartbeat_timeout_s: Some(30),
            telemetry_interval_s: Some(2),
            ..ServerArgs::default()
        })
        .unwrap();
        let tutela = &settings.tutela;
        assert_eq!(tutela.breaker_min_nodes, 5);
        assert_eq!(tutela.rules.port_scan_unique_ips, 20);
        assert_eq!(tutela.slashes.vram_overclaim.stake_basis_points, 50);
        assert_eq!(
            (tutela.heartbeat_timeout_s, tutela.heartbeat_restart_grace_s),
            (30, 30)
        );
        assert_eq!(tutela.telemetry_interval_s, 2);
        // A timeout no longer than the telemetry period would drop every job.
        let error = ServerSettings::resolve(ServerArgs {
            heartbeat_timeout_s: Some(10),
            ..ServerArgs::default()
        })
        .unwrap_err();
        assert!(
            error.to_string().contains("GP4U_HEARTBEAT_TIMEOUT_S"),
            "{error}"
        );
        std::fs::write(
            &path,
            "[tutela.slashes.visibility_blocked]\nstake_basis_points = 20000\ntrust_penalty = 1.0\n",
        )
        .unwrap();
        let error = ServerSettings::resolve(ServerArgs {
            config: Some(path),
            ..ServerArgs::default()
        })
        .unwrap_err();
        assert!(error.to_string().contains("tutela.slashes"), "{error}");
    }

    #[test]
    fn metrics_settings_come_from_flags_and_the_file_and_short_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gp4u.toml");
        std::fs::write(
            &path,
            "metrics = false\nmetrics_token = \"file-token-0123456789\"\n",
        )
        .unwrap();
        let settings = ServerSettings::resolve(ServerArgs::default()).unwrap();
        assert!(settings.metrics && settings.metrics_token.is_none());
        let settings = ServerSettings::resolve(ServerArgs {
            config: Some(path.clone()),
            ..ServerArgs::default()
        })
        .unwrap();
        assert!(!settings.metrics);
        assert_eq!(
            settings.metrics_token.as_deref(),
            Some("file-token-0123456789")
        );
        let settings = ServerSettings::resolve(ServerArgs {
            config: Some(path),
            metrics: Some(true),
            metrics_token: Some("flag-token-0123456789".into()),
            ..ServerArgs::default()
        })
        .unwrap();
        assert!(settings.metrics);
        assert_eq!(
            settings.metrics_token.as_deref(),
            Some("flag-token-0123456789")
        );
        let error = ServerSettings::resolve(ServerArgs {
            metrics_token: Some("short-secret".into()),
            ..ServerArgs::default()
        })
        .unwrap_err();
        assert!(error.to_string().contains("GP4U_METRICS_TOKEN"), "{error}");
        assert!(!error.to_string().contains("short-secret"), "{error}");
    }

    #[test]
    fn unknown_file_keys_and_nats_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gp4u.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:9999\"\n").unwrap();
        let error = ServerSettings::resolve(ServerArgs {
            config: Some(path),
            ..ServerArgs::default()
        })
        .unwrap_err();
        assert!(format!("{error:#}").contains("lisen"), "{error:#}");
        let error = ServerSettings::resolve(ServerArgs {
            nats_url: Some("nats://127.0.0.1:4222".into()),
            ..ServerArgs::default()
        })
        .unwrap_err();
        assert!(error.to_string().contains("GP4U_NATS_URL"));
    }
}
