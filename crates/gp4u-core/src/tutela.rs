//! Tutela: the pure part of stage 4 (SPEC §7): Russian-Doll telemetry samples, their
//! clamping and parsing, workload pattern inference, the anomaly rules and the slashing
//! schedule. The server and the agent do the I/O; everything here is a deterministic
//! function of its arguments (time arrives as `at_ms`).
//!
//! # Samples
//!
//! [`parse_sample`] reads a packet body (the seed's fields plus the optional
//! `unique_dest_ips`, `foreign_gpu_processes`, `throttling` and `dest_ports`) and
//! [`clamp`]s it: every number is forced into its physical range ([`UTILIZATION_RANGE`],
//! [`POWER_RANGE_W`], [`TEMPERATURE_RANGE_C`], [`VRAM_RANGE_GB`], [`BANDWIDTH_RANGE_BPS`],
//! [`COUNT_RANGE`]) and each change is reported as a [`Clamped`]; a non-finite number is
//! refused with a [`FieldError`] naming the field. So nothing stored is ever NaN or absurd.
//!
//! # Pattern inference
//!
//! [`infer_pattern`] classifies the last `max_window_samples` samples (oldest first):
//!
//! 1. an empty window, or a mean utilization below `idle_max_util_pct` → `IDLE`;
//! 2. `CRYPTO_MINING` needs the **GPU profile** — mean utilization ≥ `mining_min_util_pct`
//!    (90), its population standard deviation < `mining_max_util_std` (3), power and VRAM
//!    used near-constant (coefficients of variation ≤ `mining_max_power_cv` (3 %) and
//!    ≤ `mining_max_vram_cv` (1 %)) — **and** the **network shape**: either steady small
//!    outbound flows (every sample > 0 and ≤ `flow_max_bytes_per_sec`, coefficient of
//!    variation ≤ `flow_max_cv`) over at least `min_samples` samples, or a connection to a
//!    known miner port ([`MINER_PORTS`]) seen in the window, over at least
//!    `min_samples_with_miner_port` samples (a pool port is strong evidence, so it is
//!    caught sooner);
//! 3. otherwise mean utilization ≥ `training_min_util_pct` with fewer than
//!    `inference_min_low_fraction` of the samples below `burst_low_util_pct` → `TRAINING`
//!    (sustained compute with a sawtooth of batch and evaluation dips);
//! 4. otherwise → `INFERENCE` (bursty: requests, then idle gaps).
//!
//! **Decision — GPU profile alone is not mining.** A miner-like GPU profile (pinned at
//! 100 %, flat power and VRAM) with neither the network shape nor a miner port is classified
//! `TRAINING`, not `CRYPTO_MINING`: offline compute-bound work (benchmarks, fixed-shape
//! training, rendering) looks exactly like that, and a miner has to talk to a pool. We do not
//! kill on what an honest job also does.
//!
//! Only `CRYPTO_MINING` has consequences; TRAINING vs INFERENCE is informational.
//!
//! # Rules
//!
//! [`evaluate`] judges the latest sample of a window (oldest first) and returns one
//! [`Verdict`] per rule that fires, in this fixed order: mining, port scan, VRAM overclaim,
//! high bandwidth, thermal. Defaults ([`RuleConfig`]):
//!
//! | rule | fires when | severity | kill | attribution |
//! |---|---|---|---|---|
//! | `CRYPTO_MINING_PATTERN` | the agent's `inferred_pattern` or [`infer_pattern`] says mining, no foreign processes | Hard | yes | Customer (no provider slash) |
//! | `CRYPTO_MINING_DURING_ML_JOB` | the same, with `foreign_gpu_processes > 0` | Hard | yes | Provider (hard slash) |
//! | `OUTBOUND_PORT_SCAN` | `unique_dest_ips > 50` | Hard | yes | Customer |
//! | `VRAM_OVERCLAIM` | `vram_used_gb > vram_allocated_gb` (+ tolerance 0) | Soft | no | Provider (soft slash) |
//! | `HIGH_OUTBOUND_BANDWIDTH` | `outbound_bytes_per_sec > 100_000_000` | Info | no | None |
//! | `THERMAL_THROTTLE_SUSTAINED` | the last 3 samples each throttling or ≥ 85 °C | Info | no | Provider (no slash) |
//!
//! **Decision — high bandwidth is flagged, never killed on its own**: a job uploading
//! checkpoints or serving large responses legitimately exceeds 100 MB/s. Combined with
//! mining, the mining verdict already kills. Thermal throttling is the provider's cooling,
//! recorded for Atlas and operators, but not slashed.
//!
//! # Slashing
//!
//! [`slash`] takes a share of the provider's stake (basis points, rounded half-up to the
//! micro-unit, exact integer arithmetic) and points of trust (clamped to `0..=100`).
//! Defaults ([`SlashSchedule`]):
//!
//! | kind | severity | stake | trust |
//! |---|---|---|---|
//! | `VRAM_OVERCLAIM` | soft | 1 % | −2 |
//! | `JOB_DROPPED_UNEXPECTEDLY` | soft-plus | 2 % | −5 |
//! | `CRYPTO_MINING_DURING_ML_JOB` | hard | 10 % | −15 |
//! | `VISIBILITY_BLOCKED` | hard (+ ejection, by the caller) | 10 % | −15 |
//!
//! **Decision — a dropped job is soft-plus**: worse than a caught overclaim (the customer
//! loses progress and waits for a retry), but not evidence of bad faith like mining or
//! hiding from the platform.
//!
//! # Heartbeats
//!
//! [`judge_heartbeats`] decides which RUNNING jobs are dropped: strictly more than
//! `timeout_ms` (60 s) without telemetry. Never early; nothing at all inside the restart
//! grace after the control plane starts; and a breaker — when more than half of at least
//! three nodes with running jobs go silent at once, the platform is the likely fault, so
//! nothing is failed and an alert is raised instead ([`HeartbeatConfig`]).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::truncate_for_echo;
use crate::manifest::{FieldError, ValidationCode};
use crate::money::Money;

/// Ports of common mining pools (stratum); a connection to one is mining's network shape.
pub const MINER_PORTS: [u16; 5] = [3333, 4444, 5555, 7777, 14444];

/// GPU utilization, percent.
pub const UTILIZATION_RANGE: (f64, f64) = (0.0, 100.0);
/// Power draw, watts.
pub const POWER_RANGE_W: (f64, f64) = (0.0, 2000.0);
/// Temperature, degrees Celsius.
pub const TEMPERATURE_RANGE_C: (f64, f64) = (-20.0, 150.0);
/// VRAM used or allocated, GB.
pub const VRAM_RANGE_GB: (f64, f64) = (0.0, 4096.0);
/// Outbound bandwidth, bytes per second.
pub const BANDWIDTH_RANGE_BPS: (f64, f64) = (0.0, 1e12);
/// Counts (`unique_dest_ips`, `foreign_gpu_processes`); fractions are cut toward zero.
pub const COUNT_RANGE: (f64, f64) = (0.0, 1e6);

/// Basis points in a whole (100 % = 10_000 bp).
pub const BASIS_POINTS: u32 = 10_000;

/// Highest trust score.
pub const MAX_TRUST: f64 = 100.0;

// ---------------------------------------------------------------------------------------
// Samples
// ---------------------------------------------------------------------------------------

/// The workload shape inferred from a window of samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Pattern {
    Training,
    Inference,
    CryptoMining,
    Idle,
}

impl Pattern {
    pub const ALL: [Pattern; 4] = [
        Pattern::Training,
        Pattern::Inference,
        Pattern::CryptoMining,
        Pattern::Idle,
    ];

    pub const fn as_str(&self) -> &'static str {
        match self {
            Pattern::Training => "TRAINING",
            Pattern::Inference => "INFERENCE",
            Pattern::CryptoMining => "CRYPTO_MINING",
            Pattern::Idle => "IDLE",
        }
    }

    pub fn parse(text: &str) -> Option<Pattern> {
        Pattern::ALL
            .into_iter()
            .find(|pattern| pattern.as_str() == text)
    }
}

/// One Russian-Doll packet, clamped: every number finite and within its physical range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TelemetrySample {
    pub gpu_utilization_pct: f64,
    pub vram_used_gb: f64,
    pub vram_allocated_gb: f64,
    pub power_draw_watts: f64,
    pub temperature_c: f64,
    pub outbound_bytes_per_sec: f64,
    /// What the agent inferred over its own window, if it says.
    pub inferred_pattern: Option<Pattern>,
    /// Unique destination IPs of the container's sockets.
    pub unique_dest_ips: Option<u32>,
    /// Compute processes on the assigned GPU that are not the container's.
    pub foreign_gpu_processes: Option<u32>,
    /// The GPU reports a throttle reason (thermal or power).
    pub throttling: Option<bool>,
    /// Destination ports of the container's connections, sorted and deduplicated.
    pub dest_ports: Option<Vec<u16>>,
    /// When the platform received it, milliseconds since the epoch (passed in).
    pub at_ms: i64,
}

/// A packet as sent, before clamping: any `f64`, counts as numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RawSample {
    pub gpu_utilization_pct: f64,
    pub vram_used_gb: f64,
    pub vram_allocated_gb: f64,
    pub power_draw_watts: f64,
    pub temperature_c: f64,
    pub outbound_bytes_per_sec: f64,
    pub inferred_pattern: Option<Pattern>,
    pub unique_dest_ips: Option<f64>,
    pub foreign_gpu_processes: Option<f64>,
    pub throttling: Option<bool>,
    pub dest_ports: Option<Vec<u16>>,
    pub at_ms: i64,
}

/// A field whose value was changed to fit its physical range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Clamped {
    pub field: String,
    pub original: f64,
    pub clamped: f64,
}

/// Clamps a raw packet into physical ranges, reporting each changed field (in field order).
/// A non-finite number (NaN, ±∞) is refused with `InvalidType` naming the field.
pub fn clamp(raw: RawSample) -> Result<(TelemetrySample, Vec<Clamped>), FieldError> {
    let mut changes = Vec::new();
    let mut fit = |field: &str, value: f64, range: (f64, f64)| {
        clamp_number(field, value, range, false, &mut changes)
    };
    let gpu_utilization_pct = fit(
        "gpu_utilization_pct",
        raw.gpu_utilization_pct,
        UTILIZATION_RANGE,
    )?;
    let vram_used_gb = fit("vram_used_gb", raw.vram_used_gb, VRAM_RANGE_GB)?;
    let vram_allocated_gb = fit("vram_allocated_gb", raw.vram_allocated_gb, VRAM_RANGE_GB)?;
    let power_draw_watts = fit("power_draw_watts", raw.power_draw_watts, POWER_RANGE_W)?;
    let temperature_c = fit("temperature_c", raw.temperature_c, TEMPERATURE_RANGE_C)?;
    let outbound_bytes_per_sec = fit(
        "outbound_bytes_per_sec",
        raw.outbound_bytes_per_sec,
        BANDWIDTH_RANGE_BPS,
    )?;
    let unique_dest_ips = clamp_count("unique_dest_ips", raw.unique_dest_ips, &mut changes)?;
    let foreign_gpu_processes = clamp_count(
        "foreign_gpu_processes",
        raw.foreign_gpu_processes,
        &mut changes,
    )?;
    let dest_ports = raw.dest_ports.map(|mut ports| {
        ports.sort_unstable();
        ports.dedup();
        ports
    });
    let sample = TelemetrySample {
        gpu_utilization_pct,
        vram_used_gb,
        vram_allocated_gb,
        power_draw_watts,
        temperature_c,
        outbound_bytes_per_sec,
        inferred_pattern: raw.inferred_pattern,
        unique_dest_ips,
        foreign_gpu_processes,
        throttling: raw.throttling,
        dest_ports,
        at_ms: raw.at_ms,
    };
    Ok((sample, changes))
}

fn clamp_number(
    field: &str,
    value: f64,
    (low, high): (f64, f64),
    integer: bool,
    changes: &mut Vec<Clamped>,
) -> Result<f64, FieldError> {
    if !value.is_finite() {
        return Err(FieldError {
            code: ValidationCode::InvalidType,
            field: field.to_owned(),
            message: format!("`{field}` must be a finite number, got {value}"),
        });
    }
    let mut clamped = value.clamp(low, high);
    if integer {
        clamped = clamped.trunc();
    }
    // `-0.0 == 0.0`, so a negative zero is not reported, but it is stored as 0.
    if clamped == 0.0 {
        clamped = 0.0;
    }
    if clamped != value {
        changes.push(Clamped {
            field: field.to_owned(),
            original: value,
            clamped,
        });
    }
    Ok(clamped)
}

fn clamp_count(
    field: &str,
    value: Option<f64>,
    changes: &mut Vec<Clamped>,
) -> Result<Option<u32>, FieldError> {
    match value {
        None => Ok(None),
        Some(value) => {
            let clamped = clamp_number(field, value, COUNT_RANGE, true, changes)?;
            // In 0..=1e6 and integral, so the cast is exact.
            Ok(Some(clamped as u32))
        }
    }
}

/// Parses and clamps a packet body. Fields are checked in this order: the six required
/// numbers (`gpu_utilization_pct`, `vram_used_gb`, `vram_allocated_gb`, `power_draw_watts`,
/// `temperature_c`, `outbound_bytes_per_sec`), then the optional `inferred_pattern` (one of
/// the [`Pattern`] names), `unique_dest_ips`, `foreign_gpu_processes` (numbers),
/// `throttling` (boolean) and `dest_ports` (array of integers 0..=65535). A JSON `null`
/// counts as absent; unknown fields (`job_id`, `node_id`, `exit_code`, `final`, …) are left
/// to the caller. A body that is not an object is `InvalidBody`; every other problem is
/// `InvalidType` naming the field.
pub fn parse_sample(
    body: &Value,
    at_ms: i64,
) -> Result<(TelemetrySample, Vec<Clamped>), FieldError> {
    let object = body.as_object().ok_or_else(|| FieldError {
        code: ValidationCode::InvalidBody,
        field: String::new(),
        message: format!(
            "the telemetry body must be a JSON object, got {}",
            json_type(body)
        ),
    })?;
    let raw = RawSample {
        gpu_utilization_pct: required_number(object, "gpu_utilization_pct")?,
        vram_used_gb: required_number(object, "vram_used_gb")?,
        vram_allocated_gb: required_number(object, "vram_allocated_gb")?,
        power_draw_watts: required_number(object, "power_draw_watts")?,
        temperature_c: required_number(object, "temperature_c")?,
        outbound_bytes_per_sec: required_number(object, "outbound_bytes_per_sec")?,
        inferred_pattern: optional_pattern(object)?,
        unique_dest_ips: optional_number(object, "unique_dest_ips")?,
        foreign_gpu_processes: optional_number(object, "foreign_gpu_processes")?,
        throttling: optional_bool(object, "throttling")?,
        dest_ports: optional_ports(object)?,
        at_ms,
    };
    clamp(raw)
}

fn present<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).filter(|value| !value.is_null())
}

fn type_error(field: &str, accepted: &str, value: &Value) -> FieldError {
    FieldError {
        code: ValidationCode::InvalidType,
        field: field.to_owned(),
        message: format!(
            "`{field}` must be {accepted}, got {}",
            truncate_for_echo(&value.to_string())
        ),
    }
}

fn required_number(object: &Map<String, Value>, key: &str) -> Result<f64, FieldError> {
    match present(object, key) {
        None => Err(FieldError {
            code: ValidationCode::InvalidType,
            field: key.to_owned(),
            message: format!("`{key}` is required: a number"),
        }),
        Some(value) => value
            .as_f64()
            .ok_or_else(|| type_error(key, "a number", value)),
    }
}

fn optional_number(object: &Map<String, Value>, key: &str) -> Result<Option<f64>, FieldError> {
    present(object, key)
        .map(|value| {
            value
                .as_f64()
                .ok_or_else(|| type_error(key, "a number", value))
        })
        .transpose()
}

fn optional_bool(object: &Map<String, Value>, key: &str) -> Result<Option<bool>, FieldError> {
    present(object, key)
        .map(|value| {
            value
                .as_bool()
                .ok_or_else(|| type_error(key, "true or false", value))
        })
        .transpose()
}

fn optional_pattern(object: &Map<String, Value>) -> Result<Option<Pattern>, FieldError> {
    const KEY: &str = "inferred_pattern";
    present(object, KEY)
        .map(|value| {
            value.as_str().and_then(Pattern::parse).ok_or_else(|| {
                type_error(
                    KEY,
                    "one of TRAINING, INFERENCE, CRYPTO_MINING, IDLE",
                    value,
                )
            })
        })
        .transpose()
}

fn optional_ports(object: &Map<String, Value>) -> Result<Option<Vec<u16>>, FieldError> {
    const KEY: &str = "dest_ports";
    const ACCEPTED: &str = "an array of port numbers (integers 0..=65535)";
    let Some(value) = present(object, KEY) else {
        return Ok(None);
    };
    let items = value
        .as_array()
        .ok_or_else(|| type_error(KEY, ACCEPTED, value))?;
    let mut ports = Vec::with_capacity(items.len().min(usize::from(u16::MAX)));
    for (index, item) in items.iter().enumerate() {
        let port = item
            .as_u64()
            .and_then(|port| u16::try_from(port).ok())
            .ok_or_else(|| type_error(&format!("{KEY}[{index}]"), ACCEPTED, item))?;
        ports.push(port);
    }
    Ok(Some(ports))
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------------------
// Pattern inference
// ---------------------------------------------------------------------------------------

/// Thresholds of [`infer_pattern`]; see the module documentation for how they combine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InferenceConfig {
    /// Only the latest this-many samples are considered (30 = 5 minutes at 10 s).
    pub max_window_samples: usize,
    /// Fewest samples for mining by GPU profile and flow shape (6 = one minute).
    pub min_samples: usize,
    /// Fewest samples for mining by GPU profile and a miner port.
    pub min_samples_with_miner_port: usize,
    /// Mean utilization below this is IDLE.
    pub idle_max_util_pct: f64,
    pub mining_min_util_pct: f64,
    /// Mining needs the utilization's population standard deviation strictly below this.
    pub mining_max_util_std: f64,
    /// Largest coefficient of variation of power that counts as near-constant.
    pub mining_max_power_cv: f64,
    /// Largest coefficient of variation of VRAM used that counts as near-constant.
    pub mining_max_vram_cv: f64,
    /// Largest outbound rate that counts as a small flow.
    pub flow_max_bytes_per_sec: f64,
    /// Largest coefficient of variation of outbound rate that counts as steady.
    pub flow_max_cv: f64,
    /// Destination ports that are mining's network shape.
    pub miner_ports: Vec<u16>,
    pub training_min_util_pct: f64,
    /// A sample below this utilization is a burst gap (or an evaluation dip).
    pub burst_low_util_pct: f64,
    /// At or above this share of low samples the load is bursty: INFERENCE.
    pub inference_min_low_fraction: f64,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            max_window_samples: 30,
            min_samples: 6,
            min_samples_with_miner_port: 3,
            idle_max_util_pct: 10.0,
            mining_min_util_pct: 90.0,
            mining_max_util_std: 3.0,
            mining_max_power_cv: 0.03,
            mining_max_vram_cv: 0.01,
            flow_max_bytes_per_sec: 1_000_000.0,
            flow_max_cv: 0.5,
            miner_ports: MINER_PORTS.to_vec(),
            training_min_util_pct: 60.0,
            burst_low_util_pct: 30.0,
            inference_min_low_fraction: 0.3,
        }
    }
}

/// Mean and population standard deviation; `(0, 0)` for no values.
fn mean_std(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let count = values.clone().count();
    if count == 0 {
        return (0.0, 0.0);
    }
    let n = count as f64;
    let mean = values.clone().sum::<f64>() / n;
    let variance = values.map(|value| (value - mean).powi(2)).sum::<f64>() / n;
    (mean, variance.sqrt())
}

/// Coefficient of variation: `std / mean`; 0 when all values are 0, +∞ when the mean is 0
/// but the values vary (only possible with negative values, which clamping excludes).
fn coefficient_of_variation(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let (mean, std) = mean_std(values);
    if std == 0.0 {
        0.0
    } else if mean > 0.0 {
        std / mean
    } else {
        f64::INFINITY
    }
}

/// The window [`infer_pattern`] looks at: the latest `max_window_samples`.
fn recent<'a>(window: &'a [TelemetrySample], config: &InferenceConfig) -> &'a [TelemetrySample] {
    let start = window
        .len()
        .saturating_sub(config.max_window_samples.max(1));
    window.get(start..).unwrap_or(window)
}

/// Classifies a window of samples, oldest first (see the module documentation).
pub fn infer_pattern(window: &[TelemetrySample], config: &InferenceConfig) -> Pattern {
    let window = recent(window, config);
    if window.is_empty() {
        return Pattern::Idle;
    }
    let utilization = window.iter().map(|sample| sample.gpu_utilization_pct);
    let (mean_util, std_util) = mean_std(utilization.clone());
    if mean_util < config.idle_max_util_pct {
        return Pattern::Idle;
    }
    if mining_shape(window, config, mean_util, std_util) {
        return Pattern::CryptoMining;
    }
    let low = utilization
        .filter(|&value| value < config.burst_low_util_pct)
        .count();
    let low_fraction = low as f64 / window.len() as f64;
    if mean_util >= config.training_min_util_pct && low_fraction < config.inference_min_low_fraction
    {
        Pattern::Training
    } else {
        Pattern::Inference
    }
}

fn mining_shape(
    window: &[TelemetrySample],
    config: &InferenceConfig,
    mean_util: f64,
    std_util: f64,
) -> bool {
    let gpu_profile = mean_util >= config.mining_min_util_pct
        && std_util < config.mining_max_util_std
        && coefficient_of_variation(window.iter().map(|sample| sample.power_draw_watts))
            <= config.mining_max_power_cv
        && coefficient_of_variation(window.iter().map(|sample| sample.vram_used_gb))
            <= config.mining_max_vram_cv;
    if !gpu_profile {
        return false;
    }
    let miner_port = window.iter().any(|sample| {
        sample
            .dest_ports
            .as_deref()
            .is_some_and(|ports| ports.iter().any(|port| config.miner_ports.contains(port)))
    });
    if miner_port && window.len() >= config.min_samples_with_miner_port.max(1) {
        return true;
    }
    let outbound = window.iter().map(|sample| sample.outbound_bytes_per_sec);
    let steady_small_flows = outbound
        .clone()
        .all(|rate| rate > 0.0 && rate <= config.flow_max_bytes_per_sec)
        && coefficient_of_variation(outbound) <= config.flow_max_cv;
    steady_small_flows && window.len() >= config.min_samples.max(1)
}

// ---------------------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------------------

/// The anomaly rules; names as in SPEC §7.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Rule {
    VramOverclaim,
    HighOutboundBandwidth,
    OutboundPortScan,
    ThermalThrottleSustained,
    /// Mining inside the customer's container.
    CryptoMiningPattern,
    /// Mining by processes on the assigned GPU outside the container: the provider's.
    CryptoMiningDuringMlJob,
}

impl Rule {
    /// Every rule (for counters that start at zero for each).
    pub const ALL: [Rule; 6] = [
        Rule::VramOverclaim,
        Rule::HighOutboundBandwidth,
        Rule::OutboundPortScan,
        Rule::ThermalThrottleSustained,
        Rule::CryptoMiningPattern,
        Rule::CryptoMiningDuringMlJob,
    ];

    pub const fn as_str(&self) -> &'static str {
        match self {
            Rule::VramOverclaim => "VRAM_OVERCLAIM",
            Rule::HighOutboundBandwidth => "HIGH_OUTBOUND_BANDWIDTH",
            Rule::OutboundPortScan => "OUTBOUND_PORT_SCAN",
            Rule::ThermalThrottleSustained => "THERMAL_THROTTLE_SUSTAINED",
            Rule::CryptoMiningPattern => "CRYPTO_MINING_PATTERN",
            Rule::CryptoMiningDuringMlJob => "CRYPTO_MINING_DURING_ML_JOB",
        }
    }

    /// The provider slash a verdict of this rule triggers, if any.
    pub const fn slash_kind(&self) -> Option<SlashKind> {
        match self {
            Rule::VramOverclaim => Some(SlashKind::VramOverclaim),
            Rule::CryptoMiningDuringMlJob => Some(SlashKind::CryptoMiningDuringMlJob),
            Rule::HighOutboundBandwidth
            | Rule::OutboundPortScan
            | Rule::ThermalThrottleSustained
            | Rule::CryptoMiningPattern => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    Info,
    Soft,
    Hard,
}

/// Who is at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Attribution {
    Customer,
    Provider,
    None,
}

/// One rule firing on the latest sample: a record to store, publish and seal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub rule: Rule,
    pub severity: Severity,
    pub kill: bool,
    pub attribution: Attribution,
    /// For people, with the numbers.
    pub evidence: String,
    pub observed: f64,
    pub threshold: f64,
}

/// Rule thresholds; every field defaults (SPEC §7), so a partial configuration deserializes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuleConfig {
    /// VRAM_OVERCLAIM fires when used > allocated + this.
    pub vram_overclaim_tolerance_gb: f64,
    /// HIGH_OUTBOUND_BANDWIDTH fires strictly above this (100 MB/s).
    pub high_outbound_bytes_per_sec: f64,
    /// OUTBOUND_PORT_SCAN fires strictly above this many unique destination IPs.
    pub port_scan_unique_ips: u32,
    /// A sample at or above this temperature counts toward THERMAL_THROTTLE_SUSTAINED.
    pub thermal_temperature_c: f64,
    /// THERMAL_THROTTLE_SUSTAINED needs this many consecutive hot or throttling samples.
    pub thermal_consecutive_samples: usize,
    /// Trust the agent's own `inferred_pattern: CRYPTO_MINING`.
    pub trust_agent_pattern: bool,
    pub inference: InferenceConfig,
}

impl Default for RuleConfig {
    fn default() -> Self {
        RuleConfig {
            vram_overclaim_tolerance_gb: 0.0,
            high_outbound_bytes_per_sec: 100_000_000.0,
            port_scan_unique_ips: 50,
            thermal_temperature_c: 85.0,
            thermal_consecutive_samples: 3,
            trust_agent_pattern: true,
            inference: InferenceConfig::default(),
        }
    }
}

/// Judges the latest sample of `window` (oldest first); rules needing history use the
/// window. Verdicts come in a fixed order: mining, port scan, VRAM, bandwidth, thermal.
/// An empty window yields none.
pub fn evaluate(window: &[TelemetrySample], config: &RuleConfig) -> Vec<Verdict> {
    let Some(latest) = window.last() else {
        return Vec::new();
    };
    let mut verdicts = Vec::new();
    if let Some(verdict) = mining_verdict(window, latest, config) {
        verdicts.push(verdict);
    }
    if let Some(ips) = latest.unique_dest_ips
        && ips > config.port_scan_unique_ips
    {
        verdicts.push(Verdict {
            rule: Rule::OutboundPortScan,
            severity: Severity::Hard,
            kill: true,
            attribution: Attribution::Customer,
            evidence: format!(
                "the container reached {ips} unique destination IPs (limit {})",
                config.port_scan_unique_ips
            ),
            observed: f64::from(ips),
            threshold: f64::from(config.port_scan_unique_ips),
        });
    }
    let vram_limit = latest.vram_allocated_gb + config.vram_overclaim_tolerance_gb;
    if latest.vram_used_gb > vram_limit {
        verdicts.push(Verdict {
            rule: Rule::VramOverclaim,
            severity: Severity::Soft,
            kill: false,
            attribution: Attribution::Provider,
            evidence: format!(
                "VRAM used {} GB exceeds the {} GB allocated",
                latest.vram_used_gb, latest.vram_allocated_gb
            ),
            observed: latest.vram_used_gb,
            threshold: vram_limit,
        });
    }
    if latest.outbound_bytes_per_sec > config.high_outbound_bytes_per_sec {
        verdicts.push(Verdict {
            rule: Rule::HighOutboundBandwidth,
            severity: Severity::Info,
            kill: false,
            attribution: Attribution::None,
            evidence: format!(
                "outbound {} B/s exceeds {} B/s (flagged, not killed)",
                latest.outbound_bytes_per_sec, config.high_outbound_bytes_per_sec
            ),
            observed: latest.outbound_bytes_per_sec,
            threshold: config.high_outbound_bytes_per_sec,
        });
    }
    if let Some(verdict) = thermal_verdict(window, config) {
        verdicts.push(verdict);
    }
    verdicts
}

fn mining_verdict(
    window: &[TelemetrySample],
    latest: &TelemetrySample,
    config: &RuleConfig,
) -> Option<Verdict> {
    let agent_says =
        config.trust_agent_pattern && latest.inferred_pattern == Some(Pattern::CryptoMining);
    let inferred = infer_pattern(window, &config.inference) == Pattern::CryptoMining;
    if !agent_says && !inferred {
        return None;
    }
    let recent = recent(window, &config.inference);
    let (mean_util, std_util) = mean_std(recent.iter().map(|sample| sample.gpu_utilization_pct));
    let source = match (agent_says, inferred) {
        (true, true) => "the agent and the platform both infer",
        (true, false) => "the agent infers",
        _ => "the platform infers",
    };
    let shape = format!(
        "{source} CRYPTO_MINING over {} samples (utilization mean {mean_util:.1} %, std dev {std_util:.2})",
        recent.len()
    );
    let foreign = latest.foreign_gpu_processes.unwrap_or(0);
    let threshold = config.inference.mining_min_util_pct;
    Some(if foreign > 0 {
        Verdict {
            rule: Rule::CryptoMiningDuringMlJob,
            severity: Severity::Hard,
            kill: true,
            attribution: Attribution::Provider,
            evidence: format!(
                "{shape}, with {foreign} foreign process(es) on the assigned GPU: the provider's"
            ),
            observed: mean_util,
            threshold,
        }
    } else {
        Verdict {
            rule: Rule::CryptoMiningPattern,
            severity: Severity::Hard,
            kill: true,
            attribution: Attribution::Customer,
            evidence: format!("{shape}, inside the customer's container"),
            observed: mean_util,
            threshold,
        }
    })
}

fn thermal_verdict(window: &[TelemetrySample], config: &RuleConfig) -> Option<Verdict> {
    let needed = config.thermal_consecutive_samples.max(1);
    let start = window.len().checked_sub(needed)?;
    let tail = window.get(start..)?;
    let hot = |sample: &TelemetrySample| {
        sample.throttling == Some(true) || sample.temperature_c >= config.thermal_temperature_c
    };
    if !tail.iter().all(hot) {
        return None;
    }
    let coolest = tail
        .iter()
        .map(|sample| sample.temperature_c)
        .fold(f64::INFINITY, f64::min);
    let throttled = tail
        .iter()
        .filter(|sample| sample.throttling == Some(true))
        .count();
    Some(Verdict {
        rule: Rule::ThermalThrottleSustained,
        severity: Severity::Info,
        kill: false,
        attribution: Attribution::Provider,
        evidence: format!(
            "{needed} consecutive samples throttling or at >= {} °C ({throttled} throttling, coolest {coolest} °C)",
            config.thermal_temperature_c
        ),
        observed: coolest,
        threshold: config.thermal_temperature_c,
    })
}

/// The first verdict that orders a kill, for the response's `reason`.
pub fn kill_reason(verdicts: &[Verdict]) -> Option<&Verdict> {
    verdicts.iter().find(|verdict| verdict.kill)
}

// ---------------------------------------------------------------------------------------
// Slashing
// ---------------------------------------------------------------------------------------

/// What a provider is slashed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SlashKind {
    VramOverclaim,
    JobDroppedUnexpectedly,
    CryptoMiningDuringMlJob,
    VisibilityBlocked,
}

impl SlashKind {
    /// Every kind of slash (for counters that start at zero for each).
    pub const ALL: [SlashKind; 4] = [
        SlashKind::VramOverclaim,
        SlashKind::JobDroppedUnexpectedly,
        SlashKind::CryptoMiningDuringMlJob,
        SlashKind::VisibilityBlocked,
    ];

    pub const fn as_str(&self) -> &'static str {
        match self {
            SlashKind::VramOverclaim => "VRAM_OVERCLAIM",
            SlashKind::JobDroppedUnexpectedly => "JOB_DROPPED_UNEXPECTEDLY",
            SlashKind::CryptoMiningDuringMlJob => "CRYPTO_MINING_DURING_ML_JOB",
            SlashKind::VisibilityBlocked => "VISIBILITY_BLOCKED",
        }
    }

    pub const fn severity(&self) -> Severity {
        match self {
            SlashKind::VramOverclaim | SlashKind::JobDroppedUnexpectedly => Severity::Soft,
            SlashKind::CryptoMiningDuringMlJob | SlashKind::VisibilityBlocked => Severity::Hard,
        }
    }
}

/// What one slash takes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlashTerms {
    /// Share of the stake, in basis points (100 = 1 %); above 10_000 counts as 10_000.
    pub stake_basis_points: u32,
    /// Trust points taken; a negative or non-finite value counts as 0.
    pub trust_penalty: f64,
}

/// Why a slash schedule was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TutelaError {
    #[error("slash `{kind}`: stake_basis_points must be at most 10000, got {value}")]
    InvalidStakeShare { kind: &'static str, value: u32 },
    #[error("slash `{kind}`: trust_penalty must be a finite number in 0..=100, got {value}")]
    InvalidTrustPenalty { kind: &'static str, value: f64 },
}

/// The documented schedule (module documentation); every field defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SlashSchedule {
    pub vram_overclaim: SlashTerms,
    pub job_dropped_unexpectedly: SlashTerms,
    pub crypto_mining_during_ml_job: SlashTerms,
    pub visibility_blocked: SlashTerms,
}

impl Default for SlashSchedule {
    fn default() -> Self {
        let soft = SlashTerms {
            stake_basis_points: 100,
            trust_penalty: 2.0,
        };
        let hard = SlashTerms {
            stake_basis_points: 1_000,
            trust_penalty: 15.0,
        };
        SlashSchedule {
            vram_overclaim: soft,
            job_dropped_unexpectedly: SlashTerms {
                stake_basis_points: 200,
                trust_penalty: 5.0,
            },
            crypto_mining_during_ml_job: hard,
            visibility_blocked: hard,
        }
    }
}

impl SlashSchedule {
    pub const fn terms(&self, kind: SlashKind) -> SlashTerms {
        match kind {
            SlashKind::VramOverclaim => self.vram_overclaim,
            SlashKind::JobDroppedUnexpectedly => self.job_dropped_unexpectedly,
            SlashKind::CryptoMiningDuringMlJob => self.crypto_mining_during_ml_job,
            SlashKind::VisibilityBlocked => self.visibility_blocked,
        }
    }

    /// Refuses shares above 100 % and penalties outside `0..=100`, for configuration loading.
    pub fn validate(&self) -> Result<(), TutelaError> {
        for kind in [
            SlashKind::VramOverclaim,
            SlashKind::JobDroppedUnexpectedly,
            SlashKind::CryptoMiningDuringMlJob,
            SlashKind::VisibilityBlocked,
        ] {
            let terms = self.terms(kind);
            if terms.stake_basis_points > BASIS_POINTS {
                return Err(TutelaError::InvalidStakeShare {
                    kind: kind.as_str(),
                    value: terms.stake_basis_points,
                });
            }
            if !(terms.trust_penalty.is_finite()
                && (0.0..=MAX_TRUST).contains(&terms.trust_penalty))
            {
                return Err(TutelaError::InvalidTrustPenalty {
                    kind: kind.as_str(),
                    value: terms.trust_penalty,
                });
            }
        }
        Ok(())
    }
}

/// The result of one slash.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlashOutcome {
    pub stake_taken: Money,
    pub new_stake: Money,
    pub new_trust: f64,
}

/// Takes `kind`'s share of `stake` (rounded half-up to the micro-unit, exact integers) and
/// its trust penalty. Never below zero: a negative stake counts as 0, and at most the whole
/// stake is taken. Trust is clamped to `0..=100`; a non-finite trust counts as 0.
pub fn slash(stake: Money, trust: f64, kind: SlashKind, schedule: &SlashSchedule) -> SlashOutcome {
    let terms = schedule.terms(kind);
    let stake_micros = i128::from(stake.micros().max(0));
    let basis_points = i128::from(terms.stake_basis_points.min(BASIS_POINTS));
    let denominator = i128::from(BASIS_POINTS);
    // stake ≥ 0 and share ≤ 100 %, so the taken amount fits back into an i64 and ≤ stake.
    let taken = (stake_micros * basis_points + denominator / 2) / denominator;
    let taken = i64::try_from(taken.min(stake_micros)).unwrap_or(0);
    let remaining = i64::try_from(stake_micros).unwrap_or(0) - taken;
    let penalty = if terms.trust_penalty.is_finite() && terms.trust_penalty > 0.0 {
        terms.trust_penalty
    } else {
        0.0
    };
    let trust = if trust.is_finite() { trust } else { 0.0 };
    SlashOutcome {
        stake_taken: Money::from_micros(taken),
        new_stake: Money::from_micros(remaining),
        new_trust: (trust - penalty).clamp(0.0, MAX_TRUST),
    }
}

// ---------------------------------------------------------------------------------------
// Heartbeats
// ---------------------------------------------------------------------------------------

/// A RUNNING job as the heartbeat reaper sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveJob {
    pub job_id: crate::ids::JobId,
    pub node_id: crate::ids::NodeId,
    /// The last telemetry packet, or the start when none came yet.
    pub last_seen_ms: i64,
}

/// When silence counts as a dropped job, and when it counts as the platform's own fault.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeartbeatConfig {
    /// Strictly more than this much silence is a dropped job (`GP4U_HEARTBEAT_TIMEOUT_S`).
    pub timeout_ms: i64,
    /// After the control plane starts, nothing is dropped until this much time has passed:
    /// agents that kept running while it was down need a moment to reach it again.
    pub restart_grace_ms: i64,
    /// The breaker needs at least this many nodes with running jobs to judge "most".
    pub breaker_min_nodes: usize,
    /// When more than this share of those nodes is silent at once, the platform (its network,
    /// its database, its clock) is the likely fault: fail nothing, raise an alert.
    pub breaker_silent_fraction: f64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            timeout_ms: 60_000,
            restart_grace_ms: 60_000,
            breaker_min_nodes: 3,
            breaker_silent_fraction: 0.5,
        }
    }
}

/// What the heartbeat reaper does this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeartbeatDecision {
    /// Fail these jobs as `JOB_DROPPED` (possibly none).
    Drop(Vec<crate::ids::JobId>),
    /// Too many nodes are silent at once: fail nothing, alert.
    Breaker {
        silent_nodes: usize,
        live_nodes: usize,
    },
    /// Still inside the restart grace period: judge nothing yet.
    Grace { until_ms: i64 },
}

/// Judges the RUNNING jobs at `now_ms`; `started_ms` is when this control plane started.
/// A job is silent when `now_ms - last_seen_ms > timeout_ms` (so never at exactly the
/// timeout); a node is silent when all of its running jobs are.
pub fn judge_heartbeats(
    jobs: &[LiveJob],
    now_ms: i64,
    started_ms: i64,
    config: &HeartbeatConfig,
) -> HeartbeatDecision {
    let grace_until = started_ms.saturating_add(config.restart_grace_ms.max(0));
    if now_ms <= grace_until {
        return HeartbeatDecision::Grace {
            until_ms: grace_until,
        };
    }
    let silent = |job: &LiveJob| now_ms.saturating_sub(job.last_seen_ms) > config.timeout_ms;
    let mut nodes: Vec<(&crate::ids::NodeId, bool)> = Vec::new();
    for job in jobs {
        match nodes.iter_mut().find(|(node, _)| *node == &job.node_id) {
            Some((_, all_silent)) => *all_silent &= silent(job),
            None => nodes.push((&job.node_id, silent(job))),
        }
    }
    let live_nodes = nodes.len();
    let silent_nodes = nodes.iter().filter(|(_, all_silent)| *all_silent).count();
    #[allow(clippy::cast_precision_loss)] // node counts are far below 2^52
    let share = if live_nodes == 0 {
        0.0
    } else {
        silent_nodes as f64 / live_nodes as f64
    };
    if live_nodes >= config.breaker_min_nodes.max(1) && share > config.breaker_silent_fraction {
        return HeartbeatDecision::Breaker {
            silent_nodes,
            live_nodes,
        };
    }
    HeartbeatDecision::Drop(
        jobs.iter()
            .filter(|job| silent(job))
            .map(|job| job.job_id.clone())
            .collect(),
    )
}
