//! Validation of client request bodies (SPEC §3 job submission, §4 users and providers).
//!
//! Each validator takes the parsed JSON body and returns either a typed value or the first
//! `FieldError`, checking fields in a fixed, documented order so the same bad body always
//! gets the same answer. Rules shared by all validators:
//!
//! - a JSON `null` counts as absent (so optional fields may be sent as null);
//! - a present field of the wrong JSON type fails with that field's own code;
//! - unknown fields are ignored, and so are client-sent cost fields: cost is computed on
//!   the server;
//! - messages name the field, say what is accepted, and echo at most ~64 characters of
//!   the rejected value.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::Engine;
use base64::alphabet::STANDARD as STANDARD_ALPHABET;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::{ArtifactId, GpuId, truncate_for_echo};
use crate::money::{Hours, Money};

type Object = Map<String, Value>;

/// Longest job or user name, in characters after trimming.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest GPU model or GPU name, in characters.
pub const MAX_GPU_NAME_CHARS: usize = 100;
/// Largest GPU memory accepted anywhere, in GB.
pub const MAX_VRAM_GB: f64 = 4096.0;
/// Highest price per hour accepted anywhere.
pub const MAX_PRICE_PER_HOUR: f64 = 100_000.0;
/// Declared duration bounds, in hours (the seed's 0.1 h – 720 h).
pub const MIN_DURATION_HOURS: f64 = 0.1;
pub const MAX_DURATION_HOURS: f64 = 720.0;
/// Longest docker image reference, in characters.
pub const MAX_IMAGE_CHARS: usize = 255;
/// Most command arguments, and the longest one in bytes.
pub const MAX_COMMAND_ARGS: usize = 128;
pub const MAX_COMMAND_ARG_BYTES: usize = 4096;
/// Most environment variables, the longest key (characters) and value (bytes, "4 KiB").
pub const MAX_ENV_VARS: usize = 64;
pub const MAX_ENV_KEY_CHARS: usize = 128;
pub const MAX_ENV_VALUE_BYTES: usize = 4096;
/// Most input artifacts per job.
pub const MAX_INPUTS: usize = 64;
/// Container memory limit bounds and default, in GB.
pub const MAX_RAM_LIMIT_GB: f64 = 2048.0;
pub const DEFAULT_RAM_LIMIT_GB: f64 = 16.0;
/// `/scratch` of a job (SPEC §10): default and largest size, in GB. A node may cap it lower
/// (`--max-scratch-gb`).
pub const DEFAULT_SCRATCH_GB: f64 = 20.0;
pub const MAX_SCRATCH_GB: f64 = 16_384.0;
/// Retry bounds and default.
pub const MAX_MAX_RETRIES: u32 = 10;
pub const DEFAULT_MAX_RETRIES: u32 = 1;
/// Region name length bounds.
pub const MIN_REGION_CHARS: usize = 2;
pub const MAX_REGION_CHARS: usize = 32;
/// GPUs per provider registration.
pub const MAX_GPUS_PER_REGISTRATION: usize = 16;
/// Longest GPU hardware uuid, in characters.
pub const MAX_GPU_UUID_CHARS: usize = 128;
/// Longest GPU driver version accepted at registration (NVML's are like `550.54.15`).
pub const MAX_DRIVER_VERSION_CHARS: usize = 64;
/// Highest GPU power limit accepted at registration, in watts: the telemetry clamp's ceiling
/// ([`crate::tutela::POWER_RANGE_W`]), so that no reading the platform stores can exceed it.
pub const MAX_POWER_LIMIT_WATTS: f64 = crate::tutela::POWER_RANGE_W.1;
/// Ed25519 public keys are 32 bytes.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Largest credit adjustment, in either direction.
pub const MAX_CREDIT_AMOUNT: f64 = 1e9;

/// How every price field is described in messages.
const PRICE_ACCEPTED: &str = "a price greater than 0 and at most 100000 (to 0.000001)";

/// Env keys that would change the container runtime rather than the workload: library
/// injection, GPU visibility (the agent alone decides which GPU a job sees) and our own.
const FORBIDDEN_ENV_PREFIXES: [&str; 4] = ["LD_", "NVIDIA_", "GP4U_", "DOCKER_"];
const FORBIDDEN_ENV_KEYS: [&str; 7] = [
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "CUDA_MPS_PIPE_DIRECTORY",
    "CUDA_MPS_LOG_DIRECTORY",
    "GPU_DEVICE_ORDINAL",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
];

/// Standard base64 that accepts input with or without padding (clients differ).
const STANDARD_PADDING_OPTIONAL: GeneralPurpose = GeneralPurpose::new(
    &STANDARD_ALPHABET,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The closed set of validation error codes; the server maps all of them to 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ValidationCode {
    InvalidBody,
    InvalidName,
    InvalidGpuId,
    InvalidGpuRequirement,
    GpuTargetRequired,
    GpuTargetAmbiguous,
    InvalidWorkloadType,
    InvalidDuration,
    InvalidImage,
    InvalidImageDigest,
    InvalidCommand,
    TooManyEnvVars,
    InvalidEnvKey,
    InvalidEnvValue,
    ForbiddenEnvKey,
    InvalidInputs,
    InvalidRamLimit,
    InvalidMaxRetries,
    InvalidRegion,
    InvalidRole,
    InvalidType,
    InvalidPublicKey,
    InvalidGpus,
    InvalidGpu,
    InvalidAmount,
    InvalidShmSize,
    InvalidScratchSize,
    InvalidNetwork,
    InvalidPosture,
}

impl ValidationCode {
    pub const fn as_str(&self) -> &'static str {
        match self {
            ValidationCode::InvalidBody => "INVALID_BODY",
            ValidationCode::InvalidName => "INVALID_NAME",
            ValidationCode::InvalidGpuId => "INVALID_GPU_ID",
            ValidationCode::InvalidGpuRequirement => "INVALID_GPU_REQUIREMENT",
            ValidationCode::GpuTargetRequired => "GPU_TARGET_REQUIRED",
            ValidationCode::GpuTargetAmbiguous => "GPU_TARGET_AMBIGUOUS",
            ValidationCode::InvalidWorkloadType => "INVALID_WORKLOAD_TYPE",
            ValidationCode::InvalidDuration => "INVALID_DURATION",
            ValidationCode::InvalidImage => "INVALID_IMAGE",
            ValidationCode::InvalidImageDigest => "INVALID_IMAGE_DIGEST",
            ValidationCode::InvalidCommand => "INVALID_COMMAND",
            ValidationCode::TooManyEnvVars => "TOO_MANY_ENV_VARS",
            ValidationCode::InvalidEnvKey => "INVALID_ENV_KEY",
            ValidationCode::InvalidEnvValue => "INVALID_ENV_VALUE",
            ValidationCode::ForbiddenEnvKey => "FORBIDDEN_ENV_KEY",
            ValidationCode::InvalidInputs => "INVALID_INPUTS",
            ValidationCode::InvalidRamLimit => "INVALID_RAM_LIMIT",
            ValidationCode::InvalidMaxRetries => "INVALID_MAX_RETRIES",
            ValidationCode::InvalidRegion => "INVALID_REGION",
            ValidationCode::InvalidRole => "INVALID_ROLE",
            ValidationCode::InvalidType => "INVALID_TYPE",
            ValidationCode::InvalidPublicKey => "INVALID_PUBLIC_KEY",
            ValidationCode::InvalidGpus => "INVALID_GPUS",
            ValidationCode::InvalidGpu => "INVALID_GPU",
            ValidationCode::InvalidAmount => "INVALID_AMOUNT",
            ValidationCode::InvalidShmSize => "INVALID_SHM_SIZE",
            ValidationCode::InvalidScratchSize => "INVALID_SCRATCH_SIZE",
            ValidationCode::InvalidNetwork => "INVALID_NETWORK",
            ValidationCode::InvalidPosture => "INVALID_POSTURE",
        }
    }
}

impl fmt::Display for ValidationCode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The first problem found in a request body: a 400 that names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FieldError {
    pub code: ValidationCode,
    /// The JSON path of the offending field (`"gpu.min_vram_gb"`, `"env.FOO"`,
    /// `"gpus[2].vram_gb"`); empty for the body itself.
    pub field: String,
    /// What was wrong, in which field, and what is accepted.
    pub message: String,
}

impl FieldError {
    pub fn new(code: ValidationCode, field: &str, message: String) -> FieldError {
        FieldError {
            code,
            field: field.to_owned(),
            message,
        }
    }
}

/// The kind of work, used by placement and by the anomaly rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadType {
    Training,
    Inference,
    FineTuning,
    Rendering,
    Batch,
}

impl WorkloadType {
    pub const ALL: [WorkloadType; 5] = [
        WorkloadType::Training,
        WorkloadType::Inference,
        WorkloadType::FineTuning,
        WorkloadType::Rendering,
        WorkloadType::Batch,
    ];

    pub const fn as_str(&self) -> &'static str {
        match self {
            WorkloadType::Training => "TRAINING",
            WorkloadType::Inference => "INFERENCE",
            WorkloadType::FineTuning => "FINE_TUNING",
            WorkloadType::Rendering => "RENDERING",
            WorkloadType::Batch => "BATCH",
        }
    }

    /// Parses the wire form ("TRAINING", …, case-sensitive); `None` for anything else.
    pub fn parse(text: &str) -> Option<WorkloadType> {
        WorkloadType::ALL
            .into_iter()
            .find(|workload_type| workload_type.as_str() == text)
    }
}

impl fmt::Display for WorkloadType {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Where a job may run: one listed GPU, or any GPU meeting a requirement (Atlas chooses).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuTarget {
    Pinned(GpuId),
    Requirement(GpuRequirement),
}

/// Constraints for Atlas; every one is optional, and none means "any GPU".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuRequirement {
    pub model: Option<String>,
    pub min_vram_gb: Option<f64>,
    pub region: Option<String>,
    pub max_price_per_hour: Option<Money>,
}

/// A validated job submission.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobManifest {
    /// Trimmed.
    pub name: String,
    pub target: GpuTarget,
    pub workload_type: WorkloadType,
    pub expected_duration: Hours,
    pub docker_image: String,
    /// 64 lowercase hex digits, without the `sha256:` prefix.
    pub docker_image_sha256: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub inputs: Vec<ArtifactId>,
    pub ram_limit_gb: f64,
    pub max_retries: u32,
    /// The customer needs the result reproducible: Atlas weighs the provider's Veritas
    /// provenance for it. Optional, default false.
    #[serde(default)]
    pub reproducibility_sensitive: bool,
    /// `/dev/shm` in GB; `None`: half the memory cap ([`JobManifest::shm_gb`]).
    #[serde(default, rename = "shm_gb")]
    pub shm_gb_requested: Option<f64>,
    /// `/scratch` in GB; `None`: [`DEFAULT_SCRATCH_GB`] ([`JobManifest::scratch_gb`]).
    #[serde(default, rename = "scratch_gb")]
    pub scratch_gb_requested: Option<f64>,
    /// The job's network (SPEC §10); absent in manifests stored before it existed: public.
    #[serde(default)]
    pub network: JobNetwork,
}

impl JobManifest {
    /// The size of the job's `/dev/shm`: as asked, or half the memory cap.
    pub fn shm_gb(&self) -> f64 {
        self.shm_gb_requested.unwrap_or(self.ram_limit_gb / 2.0)
    }

    /// The size cap of the job's `/scratch`: as asked, or [`DEFAULT_SCRATCH_GB`].
    pub fn scratch_gb(&self) -> f64 {
        self.scratch_gb_requested.unwrap_or(DEFAULT_SCRATCH_GB)
    }
}

/// What network a job's container gets (SPEC §10).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum JobNetwork {
    /// A network of the job's own with public egress only.
    #[default]
    Public,
    /// No network at all (loopback only).
    None,
}

impl JobNetwork {
    pub const ALL: [JobNetwork; 2] = [JobNetwork::Public, JobNetwork::None];

    pub const fn as_str(&self) -> &'static str {
        match self {
            JobNetwork::Public => "public",
            JobNetwork::None => "none",
        }
    }

    /// Parses the wire form ("public", "none"); `None` for anything else.
    pub fn parse(text: &str) -> Option<JobNetwork> {
        JobNetwork::ALL
            .into_iter()
            .find(|network| network.as_str() == text)
    }
}

impl fmt::Display for JobNetwork {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A user's role; its clearance is what tokens and route guards compare against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Provider,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Customer, Role::Provider, Role::Admin];

    /// SPEC §2: customer 1, provider 2, admin 3.
    pub const fn clearance(&self) -> u8 {
        match self {
            Role::Customer => 1,
            Role::Provider => 2,
            Role::Admin => 3,
        }
    }

    pub const fn as_str(&self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Provider => "provider",
            Role::Admin => "admin",
        }
    }

    /// Parses the wire form ("customer", …); `None` for anything else.
    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == text)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A validated `POST /api/admin/users` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewUser {
    /// Trimmed.
    pub name: String,
    pub role: Role,
    pub university: bool,
    pub region: Option<String>,
}

/// A validated `POST /api/providers/register` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub region: String,
    /// Canonical standard base64 with padding of the 32-byte node public key.
    pub public_key: String,
    pub gpus: Vec<GpuSpec>,
    /// What the agent reports of its host (SPEC §10), when it does.
    pub posture: Option<crate::posture::HostPosture>,
}

/// One GPU a provider lists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuSpec {
    /// Trimmed.
    pub name: String,
    pub vram_gb: f64,
    pub price_per_hour: Money,
    pub uuid: Option<String>,
    /// The driver the GPU runs under, as NVML reports it (e.g. `550.54.15`); part of every
    /// Veritas record of a job on it.
    pub driver_version: Option<String>,
    /// The GPU's enforced power limit in milliwatts (`power_limit_watts` × 1000, rounded to
    /// the milliwatt as NVML reports it): the per-reading bound of every energy proof of a job
    /// placed on the GPU, and part of the GPU identity its hardware attestations must name.
    pub power_limit_mw: u64,
    /// A declared GPU without hardware behind it (the agent's `--gpu emulated:…`): shown as
    /// such everywhere and attested as `emulated`.
    pub emulated: bool,
}

// ---------------------------------------------------------------------------------------
// Job submission
// ---------------------------------------------------------------------------------------

/// Validates a `POST /api/jobs` body. Fields are checked in this order: body, `name`,
/// target (`gpuId` / `gpu`), `workload_type`, `expectedDurationHours`, `docker_image`,
/// `docker_image_sha256`, `command`, `env`, `inputs`, `ram_limit_gb`, `max_retries`,
/// `reproducibility_sensitive`, `shm_gb`, `scratch_gb`, `network`.
pub fn validate_submission(body: &Value) -> Result<JobManifest, FieldError> {
    let object = body_object(body)?;
    let name = trimmed_text(
        present(object, "name"),
        "name",
        ValidationCode::InvalidName,
        MAX_NAME_CHARS,
    )?;
    let target = validate_target(object)?;
    let workload_type = validate_workload_type(object)?;
    let expected_duration = validate_duration(object)?;
    let docker_image = validate_docker_image(object)?;
    let docker_image_sha256 = validate_image_digest(object)?;
    let command = validate_command(object)?;
    let env = validate_env(object)?;
    let inputs = validate_inputs(object)?;
    let ram_limit_gb = validate_ram_limit(object)?;
    let max_retries = validate_max_retries(object)?;
    let reproducibility_sensitive = optional_bool(
        object,
        "reproducibility_sensitive",
        "reproducibility_sensitive",
    )?;
    let shm_gb_requested = validate_shm(object, ram_limit_gb)?;
    let scratch_gb_requested = validate_scratch(object)?;
    let network = validate_network(object)?;
    Ok(JobManifest {
        name,
        target,
        workload_type,
        expected_duration,
        docker_image,
        docker_image_sha256,
        command,
        env,
        inputs,
        ram_limit_gb,
        max_retries,
        reproducibility_sensitive,
        shm_gb_requested,
        scratch_gb_requested,
        network,
    })
}

/// An optional boolean field (absent or null: false); `field` is its full path for errors.
fn optional_bool(object: &Object, key: &str, field: &str) -> Result<bool, FieldError> {
    match present(object, key) {
        None => Ok(false),
        Some(value) => value.as_bool().ok_or_else(|| {
            FieldError::new(
                ValidationCode::InvalidType,
                field,
                format!("`{field}` must be true or false, got {}", echo(value)),
            )
        }),
    }
}

fn validate_target(object: &Object) -> Result<GpuTarget, FieldError> {
    match (present(object, "gpuId"), present(object, "gpu")) {
        (Some(_), Some(_)) => Err(FieldError::new(
            ValidationCode::GpuTargetAmbiguous,
            "gpu",
            "send either `gpuId` (pin a listed GPU) or `gpu` (let Atlas choose), not both"
                .to_owned(),
        )),
        (None, None) => Err(FieldError::new(
            ValidationCode::GpuTargetRequired,
            "gpuId",
            "one of `gpuId` (pin a listed GPU) or `gpu` (a requirement for Atlas) is required"
                .to_owned(),
        )),
        (Some(gpu_id), None) => validate_gpu_id(gpu_id).map(GpuTarget::Pinned),
        (None, Some(requirement)) => {
            validate_gpu_requirement(requirement).map(GpuTarget::Requirement)
        }
    }
}

fn validate_gpu_id(value: &Value) -> Result<GpuId, FieldError> {
    let error = || {
        FieldError::new(
            ValidationCode::InvalidGpuId,
            "gpuId",
            format!(
                "`gpuId` must be a GPU id like \"gpu_abc123\" (`gpu_` then 1 to 64 of [A-Za-z0-9_-]), got {}",
                echo(value)
            ),
        )
    };
    let text = value.as_str().ok_or_else(error)?;
    GpuId::parse(text).map_err(|_| error())
}

fn validate_gpu_requirement(value: &Value) -> Result<GpuRequirement, FieldError> {
    const CODE: ValidationCode = ValidationCode::InvalidGpuRequirement;
    let Some(object) = value.as_object() else {
        return Err(FieldError::new(
            CODE,
            "gpu",
            format!(
                "`gpu` must be an object {{\"model\", \"min_vram_gb\", \"region\", \"max_price_per_hour\"}}, got {}",
                json_type(value)
            ),
        ));
    };
    let model = match present(object, "model") {
        None => None,
        Some(model) => Some(trimmed_text(
            Some(model),
            "gpu.model",
            CODE,
            MAX_GPU_NAME_CHARS,
        )?),
    };
    let min_vram_gb = match present(object, "min_vram_gb") {
        None => None,
        Some(vram) => Some(number_within(
            vram,
            "gpu.min_vram_gb",
            CODE,
            "a number of GB greater than 0 and at most 4096",
            |gb| gb > 0.0 && gb <= MAX_VRAM_GB,
        )?),
    };
    let region = match present(object, "region") {
        None => None,
        // The usual region rule, reported under the `gpu` object's code.
        Some(region) => Some(
            region_value("gpu.region", region).map_err(|error| FieldError {
                code: CODE,
                ..error
            })?,
        ),
    };
    let max_price_per_hour = match present(object, "max_price_per_hour") {
        None => None,
        Some(price) => Some(positive_price(price, "gpu.max_price_per_hour", CODE)?),
    };
    Ok(GpuRequirement {
        model,
        min_vram_gb,
        region,
        max_price_per_hour,
    })
}

fn validate_workload_type(object: &Object) -> Result<WorkloadType, FieldError> {
    const ACCEPTED: &str = "one of TRAINING, INFERENCE, FINE_TUNING, RENDERING, BATCH";
    let value = required(
        object,
        "workload_type",
        ValidationCode::InvalidWorkloadType,
        ACCEPTED,
    )?;
    value.as_str().and_then(WorkloadType::parse).ok_or_else(|| {
        FieldError::new(
            ValidationCode::InvalidWorkloadType,
            "workload_type",
            format!("`workload_type` must be {ACCEPTED}, got {}", echo(value)),
        )
    })
}

fn validate_duration(object: &Object) -> Result<Hours, FieldError> {
    const FIELD: &str = "expectedDurationHours";
    const ACCEPTED: &str = "a number of hours from 0.1 to 720";
    let value = required(object, FIELD, ValidationCode::InvalidDuration, ACCEPTED)?;
    let hours = number_within(
        value,
        FIELD,
        ValidationCode::InvalidDuration,
        ACCEPTED,
        |h| (MIN_DURATION_HOURS..=MAX_DURATION_HOURS).contains(&h),
    )?;
    Hours::from_json_number(hours).map_err(|_| {
        FieldError::new(
            ValidationCode::InvalidDuration,
            FIELD,
            format!("`{FIELD}` must be {ACCEPTED}, got {}", echo(value)),
        )
    })
}

fn validate_docker_image(object: &Object) -> Result<String, FieldError> {
    const FIELD: &str = "docker_image";
    const CODE: ValidationCode = ValidationCode::InvalidImage;
    const ACCEPTED: &str = "a docker image reference of 1 to 255 characters from [a-z0-9._/:-], like \"registry.example/org/bert\"";
    let value = required(object, FIELD, CODE, ACCEPTED)?;
    let fail = |problem: &str| {
        FieldError::new(
            CODE,
            FIELD,
            format!(
                "`{FIELD}` {problem}: expected {ACCEPTED}, got {}",
                echo(value)
            ),
        )
    };
    let Some(image) = value.as_str() else {
        return Err(fail("is not a string"));
    };
    let length = image.chars().count();
    if length == 0 || length > MAX_IMAGE_CHARS {
        return Err(fail("has the wrong length"));
    }
    if image.chars().any(char::is_whitespace) {
        return Err(fail("contains whitespace"));
    }
    if image.contains('@') {
        // The digest goes in `docker_image_sha256`; the agent pulls `image@sha256:<digest>`.
        return Err(fail(
            "must not contain '@' (send the digest in `docker_image_sha256`)",
        ));
    }
    let charset_ok = image
        .bytes()
        .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"._/:-".contains(&byte));
    if !charset_ok {
        return Err(fail("contains a character outside [a-z0-9._/:-]"));
    }
    if image.starts_with('-') {
        // A leading '-' could be read as an option by tools that take the image as argument.
        return Err(fail("must not start with '-'"));
    }
    Ok(image.to_owned())
}

fn validate_image_digest(object: &Object) -> Result<String, FieldError> {
    const FIELD: &str = "docker_image_sha256";
    const CODE: ValidationCode = ValidationCode::InvalidImageDigest;
    const ACCEPTED: &str = "exactly 64 hex digits, optionally prefixed by \"sha256:\"";
    let value = required(object, FIELD, CODE, ACCEPTED)?;
    let error = || {
        FieldError::new(
            CODE,
            FIELD,
            format!("`{FIELD}` must be {ACCEPTED}, got {}", echo(value)),
        )
    };
    let text = value.as_str().ok_or_else(error)?;
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    if hex.len() != 64 || !hex.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(error());
    }
    Ok(hex.to_ascii_lowercase())
}

fn validate_command(object: &Object) -> Result<Vec<String>, FieldError> {
    const CODE: ValidationCode = ValidationCode::InvalidCommand;
    let Some(value) = present(object, "command") else {
        return Ok(Vec::new());
    };
    let Some(items) = value.as_array() else {
        return Err(FieldError::new(
            CODE,
            "command",
            format!(
                "`command` must be an array of strings, got {}",
                json_type(value)
            ),
        ));
    };
    if items.len() > MAX_COMMAND_ARGS {
        return Err(FieldError::new(
            CODE,
            "command",
            format!(
                "`command` has {} arguments; at most {MAX_COMMAND_ARGS} are accepted",
                items.len()
            ),
        ));
    }
    let mut command = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let field = format!("command[{index}]");
        let fail = |problem: &str| {
            FieldError::new(
                CODE,
                &field,
                format!(
                    "`{field}` {problem}: expected a string of at most {MAX_COMMAND_ARG_BYTES} bytes without NUL, got {}",
                    echo(item)
                ),
            )
        };
        let Some(argument) = item.as_str() else {
            return Err(fail("is not a string"));
        };
        if argument.len() > MAX_COMMAND_ARG_BYTES {
            return Err(fail("is too long"));
        }
        if argument.contains('\0') {
            // NUL cannot be passed in an exec argument: it would silently truncate it.
            return Err(fail("contains NUL"));
        }
        command.push(argument.to_owned());
    }
    Ok(command)
}

fn validate_env(object: &Object) -> Result<BTreeMap<String, String>, FieldError> {
    let Some(value) = present(object, "env") else {
        return Ok(BTreeMap::new());
    };
    let Some(variables) = value.as_object() else {
        // There is no code for the env object itself; its values are what is wrong.
        return Err(FieldError::new(
            ValidationCode::InvalidEnvValue,
            "env",
            format!(
                "`env` must be an object of string values, got {}",
                json_type(value)
            ),
        ));
    };
    if variables.len() > MAX_ENV_VARS {
        return Err(FieldError::new(
            ValidationCode::TooManyEnvVars,
            "env",
            format!(
                "`env` has {} variables; at most {MAX_ENV_VARS} are accepted",
                variables.len()
            ),
        ));
    }
    let mut env = BTreeMap::new();
    for (key, value) in variables {
        validate_env_key(key)?;
        let text = validate_env_value(key, value)?;
        env.insert(key.clone(), text);
    }
    Ok(env)
}

fn validate_env_key(key: &str) -> Result<(), FieldError> {
    let field = env_field(key);
    let mut bytes = key.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|byte| byte.is_ascii_uppercase() || byte == b'_');
    let rest_ok =
        bytes.all(|byte| byte.is_ascii_uppercase() || byte.is_ascii_digit() || byte == b'_');
    if !first_ok || !rest_ok || key.len() > MAX_ENV_KEY_CHARS {
        return Err(FieldError::new(
            ValidationCode::InvalidEnvKey,
            &field,
            format!(
                "env key {} must match [A-Z_][A-Z0-9_]* and be at most {MAX_ENV_KEY_CHARS} characters",
                quote(key)
            ),
        ));
    }
    let forbidden = FORBIDDEN_ENV_KEYS.contains(&key)
        || FORBIDDEN_ENV_PREFIXES
            .iter()
            .any(|prefix| key.starts_with(prefix));
    if forbidden {
        return Err(FieldError::new(
            ValidationCode::ForbiddenEnvKey,
            &field,
            format!(
                "env key {} is refused: it would change the runtime (LD_*, NVIDIA_*, GP4U_*, DOCKER_*, CUDA_VISIBLE_DEVICES and other GPU-visibility variables are reserved)",
                quote(key)
            ),
        ));
    }
    Ok(())
}

fn validate_env_value(key: &str, value: &Value) -> Result<String, FieldError> {
    let field = env_field(key);
    let fail = |problem: &str| {
        FieldError::new(
            ValidationCode::InvalidEnvValue,
            &field,
            format!(
                "`{field}` {problem}: expected a string of at most {MAX_ENV_VALUE_BYTES} bytes without NUL or line breaks, got {}",
                echo(value)
            ),
        )
    };
    let Some(text) = value.as_str() else {
        return Err(fail("is not a string"));
    };
    if text.len() > MAX_ENV_VALUE_BYTES {
        return Err(fail("is too long"));
    }
    if text.contains(['\0', '\n', '\r']) {
        // NUL truncates; line breaks would let one value forge extra lines in env files.
        return Err(fail("contains NUL or a line break"));
    }
    Ok(text.to_owned())
}

/// `env.<KEY>`, with the key cut to 64 characters and control characters made visible,
/// so a hostile key cannot bloat or break the error body or a log line.
fn env_field(key: &str) -> String {
    let printable: String = truncate_for_echo(key)
        .chars()
        .map(|character| {
            if character.is_control() {
                '?'
            } else {
                character
            }
        })
        .collect();
    format!("env.{printable}")
}

fn validate_inputs(object: &Object) -> Result<Vec<ArtifactId>, FieldError> {
    const CODE: ValidationCode = ValidationCode::InvalidInputs;
    let Some(value) = present(object, "inputs") else {
        return Ok(Vec::new());
    };
    let Some(items) = value.as_array() else {
        return Err(FieldError::new(
            CODE,
            "inputs",
            format!(
                "`inputs` must be an array of artifact ids, got {}",
                json_type(value)
            ),
        ));
    };
    if items.len() > MAX_INPUTS {
        return Err(FieldError::new(
            CODE,
            "inputs",
            format!(
                "`inputs` has {} entries; at most {MAX_INPUTS} are accepted",
                items.len()
            ),
        ));
    }
    let mut inputs = Vec::with_capacity(items.len());
    let mut seen = BTreeSet::new();
    for (index, item) in items.iter().enumerate() {
        let field = format!("inputs[{index}]");
        let artifact = item
            .as_str()
            .and_then(|text| ArtifactId::parse(text).ok())
            .ok_or_else(|| {
                FieldError::new(
                    CODE,
                    &field,
                    format!(
                        "`{field}` must be an artifact id like \"art_…\" (`art_` then 1 to 64 of [A-Za-z0-9_-]), got {}",
                        echo(item)
                    ),
                )
            })?;
        if !seen.insert(artifact.clone()) {
            // Each input is mounted under its id in /input; a repeat would collide.
            return Err(FieldError::new(
                CODE,
                &field,
                format!("`{field}` repeats artifact {artifact}; list each input once"),
            ));
        }
        inputs.push(artifact);
    }
    Ok(inputs)
}

fn validate_ram_limit(object: &Object) -> Result<f64, FieldError> {
    let Some(value) = present(object, "ram_limit_gb") else {
        return Ok(DEFAULT_RAM_LIMIT_GB);
    };
    number_within(
        value,
        "ram_limit_gb",
        ValidationCode::InvalidRamLimit,
        "a number of GB greater than 0 and at most 2048",
        |gb| gb > 0.0 && gb <= MAX_RAM_LIMIT_GB,
    )
}

/// `shm_gb`: `/dev/shm` is counted in the memory cap, so it cannot exceed it.
fn validate_shm(object: &Object, ram_limit_gb: f64) -> Result<Option<f64>, FieldError> {
    let Some(value) = present(object, "shm_gb") else {
        return Ok(None);
    };
    number_within(
        value,
        "shm_gb",
        ValidationCode::InvalidShmSize,
        &format!(
            "a number of GB greater than 0 and at most the memory cap (`ram_limit_gb`, {ram_limit_gb}): /dev/shm is counted in it"
        ),
        |gb| gb > 0.0 && gb <= ram_limit_gb,
    )
    .map(Some)
}

fn validate_scratch(object: &Object) -> Result<Option<f64>, FieldError> {
    let Some(value) = present(object, "scratch_gb") else {
        return Ok(None);
    };
    number_within(
        value,
        "scratch_gb",
        ValidationCode::InvalidScratchSize,
        &format!("a number of GB greater than 0 and at most {MAX_SCRATCH_GB}"),
        |gb| gb > 0.0 && gb <= MAX_SCRATCH_GB,
    )
    .map(Some)
}

fn validate_network(object: &Object) -> Result<JobNetwork, FieldError> {
    let Some(value) = present(object, "network") else {
        return Ok(JobNetwork::Public);
    };
    value
        .as_str()
        .and_then(JobNetwork::parse)
        .ok_or_else(|| {
            FieldError::new(
                ValidationCode::InvalidNetwork,
                "network",
                format!(
                    "`network` must be \"public\" (a network of the job's own, public addresses only) or \"none\" (no network), got {}",
                    echo(value)
                ),
            )
        })
}

fn validate_max_retries(object: &Object) -> Result<u32, FieldError> {
    let Some(value) = present(object, "max_retries") else {
        return Ok(DEFAULT_MAX_RETRIES);
    };
    whole_number(value)
        .and_then(|retries| u32::try_from(retries).ok())
        .filter(|retries| *retries <= MAX_MAX_RETRIES)
        .ok_or_else(|| {
            FieldError::new(
                ValidationCode::InvalidMaxRetries,
                "max_retries",
                format!(
                    "`max_retries` must be a whole number from 0 to {MAX_MAX_RETRIES}, got {}",
                    echo(value)
                ),
            )
        })
}

// ---------------------------------------------------------------------------------------
// Users, providers, credits
// ---------------------------------------------------------------------------------------

/// Checks a region name: 2 to 32 characters of `[a-z0-9-]`, like "us-east-1".
pub fn validate_region(field: &str, region: &str) -> Result<(), FieldError> {
    let length_ok = (MIN_REGION_CHARS..=MAX_REGION_CHARS).contains(&region.len());
    let charset_ok = region
        .bytes()
        .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-');
    if length_ok && charset_ok {
        return Ok(());
    }
    Err(region_error(field, &Value::String(region.to_owned())))
}

fn region_error(field: &str, value: &Value) -> FieldError {
    FieldError::new(
        ValidationCode::InvalidRegion,
        field,
        format!(
            "`{field}` must be a region name of 2 to 32 characters from [a-z0-9-], like \"us-east-1\", got {}",
            echo(value)
        ),
    )
}

/// A region given as a JSON value: must be a string passing `validate_region`.
fn region_value(field: &str, value: &Value) -> Result<String, FieldError> {
    let text = value.as_str().ok_or_else(|| region_error(field, value))?;
    validate_region(field, text)?;
    Ok(text.to_owned())
}

/// An optional top-level region field (`null` or absent gives `None`).
fn region_field(object: &Object, field: &str) -> Result<Option<String>, FieldError> {
    present(object, field)
        .map(|value| region_value(field, value))
        .transpose()
}

/// Validates a `POST /api/admin/users` body: `name`, `role`, `university`, `region`, in
/// that order.
pub fn validate_new_user(body: &Value) -> Result<NewUser, FieldError> {
    let object = body_object(body)?;
    let name = trimmed_text(
        present(object, "name"),
        "name",
        ValidationCode::InvalidName,
        MAX_NAME_CHARS,
    )?;
    const ROLE_ACCEPTED: &str = "one of \"customer\", \"provider\", \"admin\"";
    let role_value = required(object, "role", ValidationCode::InvalidRole, ROLE_ACCEPTED)?;
    let role = role_value.as_str().and_then(Role::parse).ok_or_else(|| {
        FieldError::new(
            ValidationCode::InvalidRole,
            "role",
            format!("`role` must be {ROLE_ACCEPTED}, got {}", echo(role_value)),
        )
    })?;
    let university = optional_bool(object, "university", "university")?;
    let region = region_field(object, "region")?;
    Ok(NewUser {
        name,
        role,
        university,
        region,
    })
}

/// Validates a `POST /api/providers/register` body: `region`, `public_key`, `gpus` and the
/// optional `posture`, in that order. (An `endpoint`, sent by agents older than the
/// visibility challenges on telemetry replies, is ignored like any unknown field.)
pub fn validate_registration(body: &Value) -> Result<Registration, FieldError> {
    let object = body_object(body)?;
    let Some(region) = region_field(object, "region")? else {
        return Err(FieldError::new(
            ValidationCode::InvalidRegion,
            "region",
            "`region` is required: a region name of 2 to 32 characters from [a-z0-9-], like \"us-east-1\"".to_owned(),
        ));
    };
    let public_key = validate_public_key(object)?;
    let gpus = validate_gpu_specs(object)?;
    let posture = match object.get("posture") {
        None | Some(Value::Null) => None,
        Some(posture) => Some(crate::posture::validate_posture(posture)?),
    };
    Ok(Registration {
        region,
        public_key,
        gpus,
        posture,
    })
}

fn validate_public_key(object: &Object) -> Result<String, FieldError> {
    const FIELD: &str = "public_key";
    const ACCEPTED: &str = "standard base64 (padding optional) of a 32-byte ed25519 public key";
    let value = required(object, FIELD, ValidationCode::InvalidPublicKey, ACCEPTED)?;
    let key_bytes = value
        .as_str()
        .and_then(|text| STANDARD_PADDING_OPTIONAL.decode(text).ok())
        .filter(|bytes| bytes.len() == PUBLIC_KEY_BYTES)
        .ok_or_else(|| {
            FieldError::new(
                ValidationCode::InvalidPublicKey,
                FIELD,
                format!("`{FIELD}` must be {ACCEPTED}, got {}", echo(value)),
            )
        })?;
    // Stored in one canonical form so the same key always compares equal.
    Ok(STANDARD.encode(key_bytes))
}

fn validate_gpu_specs(object: &Object) -> Result<Vec<GpuSpec>, FieldError> {
    const ACCEPTED: &str = "an array of 1 to 16 GPUs";
    let value = required(object, "gpus", ValidationCode::InvalidGpus, ACCEPTED)?;
    let items = value
        .as_array()
        .filter(|items| (1..=MAX_GPUS_PER_REGISTRATION).contains(&items.len()))
        .ok_or_else(|| {
            let got = match value.as_array() {
                Some(items) => format!("{} entries", items.len()),
                None => json_type(value).to_owned(),
            };
            FieldError::new(
                ValidationCode::InvalidGpus,
                "gpus",
                format!("`gpus` must be {ACCEPTED}, got {got}"),
            )
        })?;
    items
        .iter()
        .enumerate()
        .map(|(index, item)| validate_gpu_spec(index, item))
        .collect()
}

fn validate_gpu_spec(index: usize, item: &Value) -> Result<GpuSpec, FieldError> {
    const CODE: ValidationCode = ValidationCode::InvalidGpu;
    let base = format!("gpus[{index}]");
    let Some(object) = item.as_object() else {
        return Err(FieldError::new(
            CODE,
            &base,
            format!(
                "`{base}` must be an object {{\"name\", \"vram_gb\", \"price_per_hour\", \"power_limit_watts\", \"uuid\"}}, got {}",
                json_type(item)
            ),
        ));
    };
    let name_field = format!("{base}.name");
    let name = trimmed_text(
        present(object, "name"),
        &name_field,
        CODE,
        MAX_GPU_NAME_CHARS,
    )?;

    let vram_field = format!("{base}.vram_gb");
    const VRAM_ACCEPTED: &str = "a number of GB greater than 0 and at most 4096";
    let vram_value = required_at(present(object, "vram_gb"), &vram_field, CODE, VRAM_ACCEPTED)?;
    let vram_gb = number_within(vram_value, &vram_field, CODE, VRAM_ACCEPTED, |gb| {
        gb > 0.0 && gb <= MAX_VRAM_GB
    })?;

    let price_field = format!("{base}.price_per_hour");
    let price_value = required_at(
        present(object, "price_per_hour"),
        &price_field,
        CODE,
        PRICE_ACCEPTED,
    )?;
    let price_per_hour = positive_price(price_value, &price_field, CODE)?;

    let uuid_field = format!("{base}.uuid");
    let uuid = match present(object, "uuid") {
        None => None,
        Some(value) => {
            let text = value
                .as_str()
                .filter(|text| !text.is_empty() && text.chars().count() <= MAX_GPU_UUID_CHARS)
                .ok_or_else(|| {
                    FieldError::new(
                        CODE,
                        &uuid_field,
                        format!(
                            "`{uuid_field}` must be a string of 1 to {MAX_GPU_UUID_CHARS} characters, got {}",
                            echo(value)
                        ),
                    )
                })?;
            Some(text.to_owned())
        }
    };
    let driver_field = format!("{base}.driver_version");
    let driver_version = match present(object, "driver_version") {
        None => None,
        Some(value) => {
            let text = value
                .as_str()
                .map(str::trim)
                .filter(|text| is_valid_driver_version(text))
                .ok_or_else(|| {
                    FieldError::new(
                        CODE,
                        &driver_field,
                        format!(
                            "`{driver_field}` must be a version string of 1 to {MAX_DRIVER_VERSION_CHARS} \
                             letters, digits and . _ - + ( ) as NVML reports it (e.g. \"550.54.15\"), got {}",
                            echo(value)
                        ),
                    )
                })?;
            Some(text.to_owned())
        }
    };
    let power_limit_mw = validate_power_limit_watts(
        present(object, "power_limit_watts"),
        &format!("{base}.power_limit_watts"),
    )?;
    let emulated = optional_bool(object, "emulated", &format!("{base}.emulated"))?;
    Ok(GpuSpec {
        name,
        vram_gb,
        price_per_hour,
        uuid,
        driver_version,
        power_limit_mw,
        emulated,
    })
}

/// Validates a GPU's `power_limit_watts` (registration's `gpus[N].power_limit_watts`, and
/// the agent's re-declaration): required, a number of watts greater than 0 and at most
/// [`MAX_POWER_LIMIT_WATTS`]. Returns it in milliwatts, rounded half up as
/// [`crate::energy::watts_to_mw`] does (NVML reports whole milliwatts, which this keeps
/// exactly); a value that rounds to 0 mW is refused.
pub fn validate_power_limit_watts(value: Option<&Value>, field: &str) -> Result<u64, FieldError> {
    const CODE: ValidationCode = ValidationCode::InvalidGpu;
    let accepted = format!(
        "the GPU's enforced power limit in watts, a number greater than 0 and at most \
         {MAX_POWER_LIMIT_WATTS} (NVML's enforced limit, e.g. `nvidia-smi --query-gpu=power.limit \
         --format=csv`; energy proofs bound every reading by it)"
    );
    let value = required_at(value, field, CODE, &accepted)?;
    let watts = number_within(value, field, CODE, &accepted, |watts| {
        watts > 0.0 && watts <= MAX_POWER_LIMIT_WATTS
    })?;
    let milliwatts = crate::energy::watts_to_mw(watts);
    if milliwatts == 0 {
        return Err(FieldError::new(
            CODE,
            field,
            format!(
                "`{field}` must be {accepted}; {} rounds to 0 mW",
                echo(value)
            ),
        ));
    }
    Ok(milliwatts)
}

/// Validates a `PUT /api/providers/{nodeId}/power-limits` body
/// `{"gpus": [{"id": "gpu_…", "power_limit_watts": 450}]}` (1 to 16 GPUs, each id once):
/// the GPU ids with their limits in milliwatts. Errors name `gpus[N].id` or
/// `gpus[N].power_limit_watts`. Whether the GPUs are the node's is the caller's to check.
pub fn validate_power_limits(body: &Value) -> Result<Vec<(GpuId, u64)>, FieldError> {
    const CODE: ValidationCode = ValidationCode::InvalidGpu;
    const ACCEPTED: &str =
        "an array of 1 to 16 objects {\"id\": \"gpu_…\", \"power_limit_watts\": <watts>}";
    let object = body_object(body)?;
    let value = required(object, "gpus", ValidationCode::InvalidGpus, ACCEPTED)?;
    let items = value
        .as_array()
        .filter(|items| (1..=MAX_GPUS_PER_REGISTRATION).contains(&items.len()))
        .ok_or_else(|| {
            FieldError::new(
                ValidationCode::InvalidGpus,
                "gpus",
                format!("`gpus` must be {ACCEPTED}, got {}", echo(value)),
            )
        })?;
    let mut limits: Vec<(GpuId, u64)> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let base = format!("gpus[{index}]");
        let Some(gpu) = item.as_object() else {
            return Err(FieldError::new(
                CODE,
                &base,
                format!(
                    "`{base}` must be an object {{\"id\", \"power_limit_watts\"}}, got {}",
                    json_type(item)
                ),
            ));
        };
        let id_field = format!("{base}.id");
        let id = present(gpu, "id")
            .and_then(Value::as_str)
            .and_then(|text| GpuId::parse(text).ok())
            .ok_or_else(|| {
                FieldError::new(
                    CODE,
                    &id_field,
                    format!(
                        "`{id_field}` must be the platform's id of one of the node's GPUs (\"gpu_…\", \
                         as registration answered), got {}",
                        present(gpu, "id").map_or_else(|| "nothing".to_owned(), echo)
                    ),
                )
            })?;
        if limits.iter().any(|(seen, _)| *seen == id) {
            return Err(FieldError::new(
                CODE,
                &id_field,
                format!("`{id_field}`: GPU {id} is listed twice"),
            ));
        }
        let milliwatts = validate_power_limit_watts(
            present(gpu, "power_limit_watts"),
            &format!("{base}.power_limit_watts"),
        )?;
        limits.push((id, milliwatts));
    }
    Ok(limits)
}

/// Whether `text` is a driver version registration accepts: 1 to
/// [`MAX_DRIVER_VERSION_CHARS`] letters, digits and `. _ - + ( )` or spaces.
pub fn is_valid_driver_version(text: &str) -> bool {
    !text.is_empty()
        && text.chars().count() <= MAX_DRIVER_VERSION_CHARS
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+ ()".contains(c))
}

/// Validates a `POST /api/admin/users/{id}/credits` body `{"amount"}`. Negative amounts
/// are corrections; zero is refused because it records nothing.
pub fn validate_credit_amount(body: &Value) -> Result<Money, FieldError> {
    const CODE: ValidationCode = ValidationCode::InvalidAmount;
    const ACCEPTED: &str =
        "a non-zero number between -1000000000 and 1000000000 (negative for corrections)";
    let object = body_object(body)?;
    let value = required(object, "amount", CODE, ACCEPTED)?;
    let error = || {
        FieldError::new(
            CODE,
            "amount",
            format!("`amount` must be {ACCEPTED}, got {}", echo(value)),
        )
    };
    let amount = number_within(value, "amount", CODE, ACCEPTED, |amount| {
        amount != 0.0 && amount.abs() <= MAX_CREDIT_AMOUNT
    })?;
    let money = Money::from_json_number(amount).map_err(|_| error())?;
    if money.is_zero() {
        // Below half a micro-unit: would record a zero adjustment.
        return Err(error());
    }
    Ok(money)
}

// ---------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------

fn body_object(body: &Value) -> Result<&Object, FieldError> {
    body.as_object().ok_or_else(|| {
        FieldError::new(
            ValidationCode::InvalidBody,
            "",
            format!(
                "the request body must be a JSON object, got {}",
                json_type(body)
            ),
        )
    })
}

/// The field's value, treating JSON `null` as absent.
fn present<'a>(object: &'a Object, key: &str) -> Option<&'a Value> {
    object.get(key).filter(|value| !value.is_null())
}

/// The field's value, or a "required" error under `code`.
fn required<'a>(
    object: &'a Object,
    key: &str,
    code: ValidationCode,
    accepted: &str,
) -> Result<&'a Value, FieldError> {
    required_at(present(object, key), key, code, accepted)
}

/// Like `required`, for a nested field whose path differs from its key.
fn required_at<'a>(
    value: Option<&'a Value>,
    field: &str,
    code: ValidationCode,
    accepted: &str,
) -> Result<&'a Value, FieldError> {
    value.ok_or_else(|| FieldError::new(code, field, format!("`{field}` is required: {accepted}")))
}

/// A required string of 1..=`max_chars` characters after trimming; returns it trimmed.
fn trimmed_text(
    value: Option<&Value>,
    field: &str,
    code: ValidationCode,
    max_chars: usize,
) -> Result<String, FieldError> {
    let accepted = format!("a string of 1 to {max_chars} characters after trimming");
    let Some(value) = value else {
        return Err(FieldError::new(
            code,
            field,
            format!("`{field}` is required: {accepted}"),
        ));
    };
    let Some(text) = value.as_str() else {
        return Err(FieldError::new(
            code,
            field,
            format!("`{field}` must be {accepted}, got {}", json_type(value)),
        ));
    };
    let trimmed = text.trim();
    let length = trimmed.chars().count();
    if length == 0 || length > max_chars {
        return Err(FieldError::new(
            code,
            field,
            format!("`{field}` must be {accepted}, got {length} characters"),
        ));
    }
    Ok(trimmed.to_owned())
}

/// A JSON number for which `in_range` holds.
fn number_within(
    value: &Value,
    field: &str,
    code: ValidationCode,
    accepted: &str,
    in_range: impl Fn(f64) -> bool,
) -> Result<f64, FieldError> {
    value
        .as_f64()
        .filter(|number| in_range(*number))
        .ok_or_else(|| {
            FieldError::new(
                code,
                field,
                format!("`{field}` must be {accepted}, got {}", echo(value)),
            )
        })
}

/// A price per hour: greater than 0, at most 100000, and not rounding to zero micro-units.
fn positive_price(value: &Value, field: &str, code: ValidationCode) -> Result<Money, FieldError> {
    const ACCEPTED: &str = PRICE_ACCEPTED;
    let error = || {
        FieldError::new(
            code,
            field,
            format!("`{field}` must be {ACCEPTED}, got {}", echo(value)),
        )
    };
    let price = number_within(value, field, code, ACCEPTED, |price| {
        price > 0.0 && price <= MAX_PRICE_PER_HOUR
    })?;
    let money = Money::from_json_number(price).map_err(|_| error())?;
    if money <= Money::ZERO {
        return Err(error());
    }
    Ok(money)
}

/// An integer, also accepting a float with no fractional part (`1.0`), since some JSON
/// encoders write every number as a float.
fn whole_number(value: &Value) -> Option<i64> {
    if let Some(integer) = value.as_i64() {
        return Some(integer);
    }
    // Beyond 2^53 floats are not exact integers any more.
    const MAX_EXACT_FLOAT_INTEGER: f64 = 9_007_199_254_740_992.0;
    let float = value.as_f64()?;
    if float.fract() != 0.0 || float.abs() > MAX_EXACT_FLOAT_INTEGER {
        return None;
    }
    Some(float as i64)
}

/// The JSON type of a value, for "got …" in messages.
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

/// The value as compact JSON, cut to 64 characters.
fn echo(value: &Value) -> String {
    truncate_for_echo(&value.to_string())
}

/// A string quoted with escapes, cut to 64 characters.
fn quote(text: &str) -> String {
    format!("{:?}", truncate_for_echo(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn manifest_serializes_with_snake_case_and_money_as_micros() {
        let manifest = validate_submission(&json!({
            "name": " demo ",
            "gpu": {"region": "us-east-1", "max_price_per_hour": 2.5},
            "workload_type": "BATCH",
            "expectedDurationHours": 1.5,
            "docker_image": "alpine:3",
            "docker_image_sha256": format!("sha256:{}", "AB".repeat(32)),
        }))
        .unwrap();
        assert_eq!(manifest.name, "demo");
        assert_eq!(manifest.docker_image_sha256, "ab".repeat(32));
        assert_eq!(manifest.ram_limit_gb, DEFAULT_RAM_LIMIT_GB);
        assert_eq!(manifest.max_retries, DEFAULT_MAX_RETRIES);
        let json = serde_json::to_value(&manifest).unwrap();
        assert_eq!(
            json["target"]["requirement"]["max_price_per_hour"],
            json!(2_500_000)
        );
        assert_eq!(json["expected_duration"], json!(1_500_000));
        assert_eq!(json["workload_type"], json!("BATCH"));
        let back: JobManifest = serde_json::from_value(json).unwrap();
        assert_eq!(back, manifest);
    }

    #[test]
    fn messages_do_not_echo_huge_values() {
        let huge = "x".repeat(100_000);
        let error = validate_submission(&json!({"name": "n", "gpuId": huge})).unwrap_err();
        assert_eq!(error.code, ValidationCode::InvalidGpuId);
        assert!(error.message.len() < 400, "{}", error.message);

        let mut env = Map::new();
        env.insert(format!("bad\n{huge}"), json!("v"));
        let error =
            validate_env(&Map::from_iter([("env".to_owned(), Value::Object(env))])).unwrap_err();
        assert_eq!(error.code, ValidationCode::InvalidEnvKey);
        assert!(error.field.len() < 100, "{}", error.field);
        assert!(!error.field.contains('\n'));
        assert!(error.message.len() < 400);
    }

    #[test]
    fn roles_have_clearances() {
        assert_eq!(Role::Customer.clearance(), 1);
        assert_eq!(Role::Provider.clearance(), 2);
        assert_eq!(Role::Admin.clearance(), 3);
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            assert_eq!(serde_json::to_value(role).unwrap(), json!(role.as_str()));
        }
        for workload_type in WorkloadType::ALL {
            assert_eq!(
                WorkloadType::parse(workload_type.as_str()),
                Some(workload_type)
            );
        }
        assert_eq!(ValidationCode::TooManyEnvVars.as_str(), "TOO_MANY_ENV_VARS");
        assert_eq!(
            serde_json::to_value(ValidationCode::GpuTargetAmbiguous).unwrap(),
            json!("GPU_TARGET_AMBIGUOUS")
        );
    }

    #[test]
    fn whole_numbers() {
        assert_eq!(whole_number(&json!(3)), Some(3));
        assert_eq!(whole_number(&json!(3.0)), Some(3));
        assert_eq!(whole_number(&json!(3.5)), None);
        assert_eq!(whole_number(&json!("3")), None);
        assert_eq!(whole_number(&json!(1e300)), None);
    }

    #[test]
    fn public_key_is_stored_canonically() {
        let key = [7u8; 32];
        let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(key);
        let registration = validate_registration(&json!({
            "region": "eu-west-1",
            "public_key": unpadded,
            "gpus": [{"name": "RTX 4090", "vram_gb": 24, "price_per_hour": 0.5, "power_limit_watts": 450}],
        }))
        .unwrap();
        assert_eq!(registration.public_key, STANDARD.encode(key));
        assert_eq!(
            registration.gpus[0].price_per_hour,
            Money::from_micros(500_000)
        );
    }
}
