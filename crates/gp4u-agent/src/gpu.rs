//! GPU inventory and telemetry: real GPUs through NVML, or declared (emulated) GPUs.
//!
//! Two sources implement [`GpuSource`]:
//! - [`NvmlSource`] reads NVIDIA GPUs through NVML (`libnvidia-ml.so.1`, loaded at run time).
//!   A host without the NVIDIA driver is not an error (SPEC §6): the source opens anyway and
//!   reports an empty inventory with a note saying why.
//! - [`EmulatedSource`] serves GPUs declared with
//!   `--gpu emulated:<name>:<vram_gb>[:<power_limit_w>]`; their readings are derived from a
//!   CPU fraction fed in by the caller (the job's CPU demand: the time its threads ran, from
//!   the cgroup, plus the time they waited for a CPU, from `schedstat`, so a host busy with
//!   other work does not make a pinned job look idle), stay within the declared power limit,
//!   and everything they produce is marked `emulated`.

use std::ffi::OsStr;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use gp4u_core::manifest::{MAX_GPU_NAME_CHARS, MAX_POWER_LIMIT_WATTS, MAX_VRAM_GB};
use nvml_wrapper::Nvml;
use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use serde::{Deserialize, Serialize};

/// Bytes in one GB of declared VRAM (GPU vendors' "GB" are GiB).
pub const BYTES_PER_GB: f64 = 1024.0 * 1024.0 * 1024.0;
/// The power limit of an emulated GPU declared without one, in watts (SPEC §6).
pub const EMULATED_DEFAULT_POWER_LIMIT_WATTS: f64 = 300.0;
/// An idle emulated GPU draws this share of its power limit; at full load it draws the limit
/// (300 W declared: 30 W idle, 300 W at full load). Readings never exceed the declared limit,
/// so the energy proof bounded by it holds.
pub const EMULATED_IDLE_POWER_SHARE: f64 = 0.1;
/// Emulated temperature of an idle GPU, in °C.
pub const EMULATED_IDLE_CELSIUS: f64 = 35.0;
/// Emulated temperature rise at full load, in °C.
pub const EMULATED_LOAD_CELSIUS: f64 = 45.0;
/// The driver version every emulated GPU reports.
pub const EMULATED_DRIVER: &str = "emulated";

/// The form of an emulated GPU declaration, for error messages.
const SPEC_FORM: &str = "expected `emulated:<name>:<vram_gb>[:<power_limit_w>]`, e.g. \
                         `emulated:RTX 4090:24` (a 300 W limit) or `emulated:RTX 4090:24:450`";
/// NVML's library, as the driver installs it (`nvml-wrapper`'s default).
const NVML_LIB: &str = "libnvidia-ml.so.1";
/// The unversioned name, tried when the versioned one cannot be loaded.
const NVML_LIB_FALLBACK: &str = "libnvidia-ml.so";

/// One GPU of the inventory.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct GpuInfo {
    /// NVML index (position in the declaration for emulated GPUs).
    pub index: u32,
    /// NVML UUID (`GPU-…`), or `GPU-emulated-<hash>`.
    pub uuid: String,
    pub name: String,
    pub vram_total_bytes: u64,
    /// The system driver version, or `emulated`.
    pub driver_version: String,
    pub serial: Option<String>,
    /// The enforced power limit, in watts.
    pub power_limit_watts: Option<f64>,
    pub pci_bus_id: Option<String>,
    #[serde(default)]
    pub emulated: bool,
}

impl GpuInfo {
    /// The name the GPU is registered under, and so the name its hardware attestations must
    /// name: NVML's, trimmed (the platform trims it); an emulated GPU's declared name followed
    /// by ` (emulated)`, so that it is shown as such everywhere.
    pub fn registered_name(&self) -> String {
        if self.emulated {
            format!("{} (emulated)", self.name.trim())
        } else {
            self.name.trim().to_owned()
        }
    }

    /// The enforced power limit in milliwatts, when known and within what the platform
    /// accepts (greater than 0, at most [`MAX_POWER_LIMIT_WATTS`]).
    pub fn power_limit_mw(&self) -> Option<u64> {
        self.power_limit_watts
            .filter(|watts| watts.is_finite() && *watts > 0.0 && *watts <= MAX_POWER_LIMIT_WATTS)
            .map(gp4u_core::energy::watts_to_mw)
            .filter(|milliwatts| *milliwatts > 0)
    }
}

/// A process with a compute context on a GPU.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GpuProcess {
    /// The PID as the host sees it.
    pub pid: u32,
    /// `None` where the driver does not report it.
    pub used_memory_bytes: Option<u64>,
}

/// One telemetry sample of one GPU.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct GpuReading {
    pub uuid: String,
    /// Share of the last sample period with a kernel running, 0–100.
    pub utilization_pct: f64,
    /// Share of the last sample period with device memory being read or written, 0–100.
    pub memory_utilization_pct: Option<f64>,
    pub vram_used_bytes: u64,
    pub vram_total_bytes: u64,
    pub power_watts: Option<f64>,
    pub temperature_c: Option<f64>,
    /// Active clock throttle reasons (`SW_POWER_CAP`, `HW_SLOWDOWN`, …); idle is not one.
    pub throttle_reasons: Vec<String>,
    pub compute_processes: Vec<GpuProcess>,
    #[serde(default)]
    pub emulated: bool,
}

/// A real failure while reading a GPU. A missing driver is not one: it is an empty inventory.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No GPU with this UUID on this source (with no driver, every UUID is unknown).
    #[error("unknown gpu {uuid}")]
    UnknownGpu { uuid: String },
    /// An NVML call failed on a present driver.
    #[error("nvml {call} failed for gpu {gpu}: {source}")]
    Nvml {
        /// The GPU's UUID, or `index <n>` before the UUID is known.
        gpu: String,
        call: &'static str,
        #[source]
        source: NvmlError,
    },
}

/// The GPUs a source has, with the driver version and, when something is missing, why.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct Inventory {
    pub gpus: Vec<GpuInfo>,
    pub driver: Option<String>,
    /// Why the inventory is empty or incomplete, e.g. `no NVIDIA driver (…): no NVIDIA GPUs`.
    pub note: Option<String>,
}

/// Where the agent's GPUs and their telemetry come from.
pub trait GpuSource: Send + Sync {
    /// The GPUs present now. Never fails: what could not be read is skipped and told in `note`.
    fn inventory(&self) -> Inventory;
    /// One telemetry sample of the GPU with this UUID.
    fn reading(&self, uuid: &str) -> Result<GpuReading, GpuError>;
}

/// The names of the active throttle reasons, in bit order. `GPU_IDLE` (nothing running) and
/// `NONE` are not throttling and are left out; bits NVML adds later are ignored.
pub fn throttle_reason_names(reasons: ThrottleReasons) -> Vec<String> {
    const NAMES: [(ThrottleReasons, &str); 8] = [
        (
            ThrottleReasons::APPLICATIONS_CLOCKS_SETTING,
            "APPLICATIONS_CLOCKS_SETTING",
        ),
        (ThrottleReasons::SW_POWER_CAP, "SW_POWER_CAP"),
        (ThrottleReasons::HW_SLOWDOWN, "HW_SLOWDOWN"),
        (ThrottleReasons::SYNC_BOOST, "SYNC_BOOST"),
        (ThrottleReasons::SW_THERMAL_SLOWDOWN, "SW_THERMAL_SLOWDOWN"),
        (ThrottleReasons::HW_THERMAL_SLOWDOWN, "HW_THERMAL_SLOWDOWN"),
        (
            ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
            "HW_POWER_BRAKE_SLOWDOWN",
        ),
        (
            ThrottleReasons::DISPLAY_CLOCK_SETTING,
            "DISPLAY_CLOCK_SETTING",
        ),
    ];
    NAMES
        .iter()
        .filter(|(flag, _)| reasons.contains(*flag))
        .map(|(_, name)| (*name).to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// NVML

/// NVIDIA GPUs through NVML. Opening never fails; without a driver the inventory is empty.
pub struct NvmlSource {
    nvml: Option<Nvml>,
    /// Why NVML is not available (set exactly when `nvml` is `None`).
    unavailable: Option<String>,
}

impl fmt::Debug for NvmlSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NvmlSource")
            .field("available", &self.nvml.is_some())
            .field("unavailable", &self.unavailable)
            .finish()
    }
}

impl NvmlSource {
    /// Loads and initialises NVML. Where that fails (no driver, no library, no permission) the
    /// source still opens and reports no GPUs, with the reason as the inventory's note.
    pub fn open() -> NvmlSource {
        match init_nvml() {
            Ok(nvml) => NvmlSource {
                nvml: Some(nvml),
                unavailable: None,
            },
            Err(error) => {
                let note = init_failure_note(&error);
                tracing::info!(%error, note = %note, "nvml not available");
                NvmlSource {
                    nvml: None,
                    unavailable: Some(note),
                }
            }
        }
    }

    /// Whether NVML was loaded and initialised.
    pub fn is_available(&self) -> bool {
        self.nvml.is_some()
    }

    /// The NVML handle, for diagnostics (`gp4u-gpu-probe`).
    pub fn nvml(&self) -> Option<&Nvml> {
        self.nvml.as_ref()
    }
}

fn init_nvml() -> Result<Nvml, NvmlError> {
    match Nvml::init() {
        Err(first) if library_missing(&first) => Nvml::builder()
            .lib_path(OsStr::new(NVML_LIB_FALLBACK))
            .init()
            .map_err(|_| first),
        other => other,
    }
}

fn library_missing(error: &NvmlError) -> bool {
    matches!(
        error,
        NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound
    )
}

fn init_failure_note(error: &NvmlError) -> String {
    match error {
        NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound => {
            format!("no NVIDIA driver ({NVML_LIB} not found): no NVIDIA GPUs")
        }
        NvmlError::DriverNotLoaded => "NVIDIA driver not loaded: no NVIDIA GPUs".to_owned(),
        NvmlError::FailedToLoadSymbol(_) | NvmlError::FunctionNotFound => {
            format!("unusable NVIDIA driver library ({error}): no NVIDIA GPUs")
        }
        other => format!("nvml initialisation failed ({other}): no NVIDIA GPUs"),
    }
}

fn nvml_err<'a>(gpu: &'a str, call: &'static str) -> impl FnOnce(NvmlError) -> GpuError + 'a {
    move |source| GpuError::Nvml {
        gpu: gpu.to_owned(),
        call,
        source,
    }
}

/// Milliwatts (NVML's unit) to watts.
fn watts(milliwatts: u32) -> f64 {
    f64::from(milliwatts) / 1000.0
}

fn gpu_info(nvml: &Nvml, index: u32, driver: &str) -> Result<GpuInfo, GpuError> {
    let at = format!("index {index}");
    let device = nvml
        .device_by_index(index)
        .map_err(nvml_err(&at, "device_by_index"))?;
    let uuid = device.uuid().map_err(nvml_err(&at, "uuid"))?;
    let name = device.name().map_err(nvml_err(&uuid, "name"))?;
    let memory = device
        .memory_info()
        .map_err(nvml_err(&uuid, "memory_info"))?;
    let power_limit_watts = device
        .enforced_power_limit()
        .or_else(|_| device.power_management_limit())
        .ok()
        .map(watts);
    Ok(GpuInfo {
        index,
        serial: device.serial().ok().filter(|s| !s.trim().is_empty()),
        pci_bus_id: device.pci_info().ok().map(|pci| pci.bus_id),
        uuid,
        name,
        vram_total_bytes: memory.total,
        driver_version: driver.to_owned(),
        power_limit_watts,
        emulated: false,
    })
}

impl GpuSource for NvmlSource {
    fn inventory(&self) -> Inventory {
        let Some(nvml) = &self.nvml else {
            return Inventory {
                gpus: Vec::new(),
                driver: None,
                note: self.unavailable.clone(),
            };
        };
        let driver = match nvml.sys_driver_version() {
            Ok(version) => Some(version),
            Err(error) => {
                tracing::warn!(%error, "nvml driver version not readable");
                None
            }
        };
        let count = match nvml.device_count() {
            Ok(count) => count,
            Err(error) => {
                return Inventory {
                    gpus: Vec::new(),
                    driver,
                    note: Some(format!(
                        "nvml device_count failed ({error}): no GPUs listed"
                    )),
                };
            }
        };
        let mut gpus = Vec::new();
        let mut skipped = Vec::new();
        for index in 0..count {
            match gpu_info(nvml, index, driver.as_deref().unwrap_or("unknown")) {
                Ok(info) => gpus.push(info),
                Err(error) => {
                    tracing::warn!(index, %error, "gpu skipped from inventory");
                    skipped.push(format!("gpu {index} skipped: {error}"));
                }
            }
        }
        let note = if count == 0 {
            Some("NVIDIA driver loaded, but it reports no GPUs".to_owned())
        } else if skipped.is_empty() {
            None
        } else {
            Some(skipped.join("; "))
        };
        Inventory { gpus, driver, note }
    }

    fn reading(&self, uuid: &str) -> Result<GpuReading, GpuError> {
        let unknown = || GpuError::UnknownGpu {
            uuid: uuid.to_owned(),
        };
        let nvml = self.nvml.as_ref().ok_or_else(unknown)?;
        let device = nvml.device_by_uuid(uuid).map_err(|error| match error {
            NvmlError::NotFound | NvmlError::InvalidArg | NvmlError::NulError(_) => unknown(),
            source => GpuError::Nvml {
                gpu: uuid.to_owned(),
                call: "device_by_uuid",
                source,
            },
        })?;
        let utilization = device
            .utilization_rates()
            .map_err(nvml_err(uuid, "utilization_rates"))?;
        let memory = device
            .memory_info()
            .map_err(nvml_err(uuid, "memory_info"))?;

        // The rest is optional: a GPU that cannot report it still has a reading.
        let optional = |call: &'static str, error: NvmlError| {
            tracing::debug!(uuid, call, %error, "nvml optional reading unavailable");
        };
        let power_watts = device
            .power_usage()
            .map_err(|e| optional("power_usage", e))
            .ok()
            .map(watts);
        let temperature_c = device
            .temperature(TemperatureSensor::Gpu)
            .map_err(|e| optional("temperature", e))
            .ok()
            .map(f64::from);
        let throttle_reasons = device
            .current_throttle_reasons()
            .map_err(|e| optional("current_throttle_reasons", e))
            .map(throttle_reason_names)
            .unwrap_or_default();
        let compute_processes = device
            .running_compute_processes()
            .map_err(|e| optional("running_compute_processes", e))
            .map(|processes| {
                processes
                    .into_iter()
                    .map(|p| GpuProcess {
                        pid: p.pid,
                        used_memory_bytes: match p.used_gpu_memory {
                            UsedGpuMemory::Used(bytes) => Some(bytes),
                            UsedGpuMemory::Unavailable => None,
                        },
                    })
                    .collect()
            })
            .unwrap_or_default();

        Ok(GpuReading {
            uuid: uuid.to_owned(),
            utilization_pct: f64::from(utilization.gpu),
            memory_utilization_pct: Some(f64::from(utilization.memory)),
            vram_used_bytes: memory.used,
            vram_total_bytes: memory.total,
            power_watts,
            temperature_c,
            throttle_reasons,
            compute_processes,
            emulated: false,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Emulated GPUs

/// A GPU declared with `--gpu emulated:<name>:<vram_gb>[:<power_limit_w>]`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct EmulatedGpu {
    pub name: String,
    pub vram_gb: f64,
    /// The declared power limit in watts (default [`EMULATED_DEFAULT_POWER_LIMIT_WATTS`]):
    /// registered as the GPU's `power_limit_watts`, the bound of its energy proofs.
    pub power_limit_watts: f64,
}

/// A malformed `emulated:<name>:<vram_gb>[:<power_limit_w>]` declaration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid gpu declaration {spec:?}: {reason}; {SPEC_FORM}")]
pub struct GpuSpecError {
    /// The declaration as given (cut to 120 characters).
    pub spec: String,
    pub reason: String,
}

impl EmulatedGpu {
    /// Parses `emulated:<name>:<vram_gb>[:<power_limit_w>]`. The name may contain spaces but
    /// not `:` and is trimmed; `vram_gb` is a number of GB, `0 < vram_gb ≤ 4096`;
    /// `power_limit_w` a number of watts, `0 < power_limit_w ≤ 2000` (the telemetry clamp),
    /// [`EMULATED_DEFAULT_POWER_LIMIT_WATTS`] when left out.
    pub fn parse(spec: &str) -> Result<EmulatedGpu, GpuSpecError> {
        let fail = |reason: String| GpuSpecError {
            spec: spec.chars().take(120).collect(),
            reason,
        };
        let Some(rest) = spec.trim().strip_prefix("emulated:") else {
            return Err(fail("it must start with `emulated:`".to_owned()));
        };
        let parts: Vec<&str> = rest.split(':').collect();
        let (name, vram, limit) = match parts.as_slice() {
            [_] => {
                return Err(fail(
                    "the name and vram_gb must be separated by `:`".to_owned(),
                ));
            }
            [name, vram] => (*name, *vram, None),
            [name, vram, limit] => (*name, *vram, Some(*limit)),
            _ => return Err(fail("the name must not contain `:`".to_owned())),
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(fail("the name is empty".to_owned()));
        }
        if name.chars().count() > MAX_GPU_NAME_CHARS {
            return Err(fail(format!(
                "the name is longer than {MAX_GPU_NAME_CHARS} characters"
            )));
        }
        if name.chars().any(char::is_control) {
            return Err(fail("the name contains control characters".to_owned()));
        }
        let vram = vram.trim();
        if vram.is_empty() {
            return Err(fail("vram_gb is missing".to_owned()));
        }
        let vram_gb: f64 = match vram.parse() {
            Ok(gb) if f64::is_finite(gb) => gb,
            _ => {
                let shown: String = vram.chars().take(40).collect();
                return Err(fail(format!(
                    "vram_gb must be a number of GB, got {shown:?}"
                )));
            }
        };
        if vram_gb <= 0.0 {
            return Err(fail(format!(
                "vram_gb must be greater than 0, got {vram_gb}"
            )));
        }
        if vram_gb > MAX_VRAM_GB {
            return Err(fail(format!(
                "vram_gb must be at most {MAX_VRAM_GB}, got {vram_gb}"
            )));
        }
        let power_limit_watts = match limit.map(str::trim) {
            None => EMULATED_DEFAULT_POWER_LIMIT_WATTS,
            Some("") => {
                return Err(fail(
                    "power_limit_w is empty (leave it out for 300 W)".to_owned(),
                ));
            }
            Some(text) => match text.parse::<f64>() {
                Ok(watts) if watts.is_finite() && watts > 0.0 && watts <= MAX_POWER_LIMIT_WATTS => {
                    watts
                }
                Ok(watts) if watts.is_finite() => {
                    return Err(fail(format!(
                        "power_limit_w must be greater than 0 and at most {MAX_POWER_LIMIT_WATTS} W, got {watts}"
                    )));
                }
                _ => {
                    let shown: String = text.chars().take(40).collect();
                    return Err(fail(format!(
                        "power_limit_w must be a number of watts, got {shown:?}"
                    )));
                }
            },
        };
        Ok(EmulatedGpu {
            name: name.to_owned(),
            vram_gb,
            power_limit_watts,
        })
    }

    /// Declared VRAM in bytes (1 GB = 2³⁰ bytes).
    pub fn vram_bytes(&self) -> u64 {
        // 0 < vram_gb ≤ 4096, so this is at most 2⁴² and exact enough.
        (self.vram_gb * BYTES_PER_GB).round() as u64
    }
}

impl FromStr for EmulatedGpu {
    type Err = GpuSpecError;
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        EmulatedGpu::parse(spec)
    }
}

impl fmt::Display for EmulatedGpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "emulated:{}:{}:{}",
            self.name, self.vram_gb, self.power_limit_watts
        )
    }
}

/// The stable UUID of the emulated GPU declared `index`-th with this name:
/// `GPU-emulated-<FNV-1a 64 of name, NUL, index>` (the same across restarts and builds).
pub fn emulated_uuid(name: &str, index: u32) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let index = index.to_le_bytes();
    let bytes = name.as_bytes().iter().chain(&[0u8]).chain(&index);
    let hash = bytes.fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    });
    format!("GPU-emulated-{hash:016x}")
}

/// An emulated GPU's power draw at CPU-use `fraction` (in [0, 1]): from
/// [`EMULATED_IDLE_POWER_SHARE`] of its limit when idle to the limit itself at full load,
/// never above it.
pub fn emulated_power_watts(limit_watts: f64, fraction: f64) -> f64 {
    let fraction = if fraction.is_nan() {
        0.0
    } else {
        fraction.clamp(0.0, 1.0)
    };
    let watts =
        limit_watts * (EMULATED_IDLE_POWER_SHARE + (1.0 - EMULATED_IDLE_POWER_SHARE) * fraction);
    watts.min(limit_watts)
}

struct EmulatedState {
    info: GpuInfo,
    /// The CPU-use fraction in [0, 1], as `f64` bits.
    cpu_fraction: AtomicU64,
    vram_used_bytes: AtomicU64,
}

/// Declared GPUs whose telemetry follows a CPU-use fraction the caller feeds in.
pub struct EmulatedSource {
    gpus: Vec<EmulatedState>,
}

impl fmt::Debug for EmulatedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatedSource")
            .field(
                "gpus",
                &self.gpus.iter().map(|g| &g.info.uuid).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl EmulatedSource {
    pub fn new(gpus: impl IntoIterator<Item = EmulatedGpu>) -> EmulatedSource {
        let gpus = gpus
            .into_iter()
            .zip(0u32..)
            .map(|(gpu, index)| EmulatedState {
                info: GpuInfo {
                    index,
                    uuid: emulated_uuid(&gpu.name, index),
                    vram_total_bytes: gpu.vram_bytes(),
                    name: gpu.name,
                    driver_version: EMULATED_DRIVER.to_owned(),
                    serial: None,
                    power_limit_watts: Some(gpu.power_limit_watts),
                    pci_bus_id: None,
                    emulated: true,
                },
                cpu_fraction: AtomicU64::new(0f64.to_bits()),
                vram_used_bytes: AtomicU64::new(0),
            })
            .collect();
        EmulatedSource { gpus }
    }

    fn find(&self, uuid: &str) -> Option<&EmulatedState> {
        self.gpus.iter().find(|g| g.info.uuid == uuid)
    }

    /// Feeds the CPU-use fraction the GPU's telemetry follows (1.0 = one full load). Values are
    /// clamped to [0, 1]; NaN counts as 0. An unknown UUID is logged and ignored.
    pub fn set_cpu_fraction(&self, uuid: &str, fraction: f64) {
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        match self.find(uuid) {
            Some(gpu) => gpu
                .cpu_fraction
                .store(fraction.to_bits(), Ordering::Relaxed),
            None => tracing::warn!(uuid, "cpu fraction for an unknown emulated gpu ignored"),
        }
    }

    /// Sets the VRAM the GPU reports as used (capped at its total). An unknown UUID is logged
    /// and ignored.
    pub fn set_vram_used_bytes(&self, uuid: &str, bytes: u64) {
        match self.find(uuid) {
            Some(gpu) => gpu
                .vram_used_bytes
                .store(bytes.min(gpu.info.vram_total_bytes), Ordering::Relaxed),
            None => tracing::warn!(uuid, "vram use for an unknown emulated gpu ignored"),
        }
    }
}

impl GpuSource for EmulatedSource {
    fn inventory(&self) -> Inventory {
        Inventory {
            gpus: self.gpus.iter().map(|g| g.info.clone()).collect(),
            driver: Some(EMULATED_DRIVER.to_owned()),
            note: Some(if self.gpus.is_empty() {
                "no emulated GPUs declared".to_owned()
            } else {
                "emulated GPUs: telemetry derived from CPU use, not measured".to_owned()
            }),
        }
    }

    fn reading(&self, uuid: &str) -> Result<GpuReading, GpuError> {
        let gpu = self.find(uuid).ok_or_else(|| GpuError::UnknownGpu {
            uuid: uuid.to_owned(),
        })?;
        let fraction = f64::from_bits(gpu.cpu_fraction.load(Ordering::Relaxed)).clamp(0.0, 1.0);
        Ok(GpuReading {
            uuid: gpu.info.uuid.clone(),
            utilization_pct: (fraction * 100.0).clamp(0.0, 100.0),
            memory_utilization_pct: None,
            vram_used_bytes: gpu.vram_used_bytes.load(Ordering::Relaxed),
            vram_total_bytes: gpu.info.vram_total_bytes,
            power_watts: Some(emulated_power_watts(
                gpu.info
                    .power_limit_watts
                    .unwrap_or(EMULATED_DEFAULT_POWER_LIMIT_WATTS),
                fraction,
            )),
            temperature_c: Some(EMULATED_IDLE_CELSIUS + fraction * EMULATED_LOAD_CELSIUS),
            throttle_reasons: Vec::new(),
            compute_processes: Vec::new(),
            emulated: true,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn parse_err(spec: &str) -> String {
        EmulatedGpu::parse(spec).unwrap_err().to_string()
    }

    #[test]
    fn parse_valid_specs() {
        let gpu = EmulatedGpu::parse("emulated:A100:80").unwrap();
        assert_eq!(
            gpu,
            EmulatedGpu {
                name: "A100".into(),
                vram_gb: 80.0,
                power_limit_watts: 300.0,
            }
        );
        let gpu: EmulatedGpu = "emulated:RTX 4090:24".parse().unwrap();
        assert_eq!(gpu.name, "RTX 4090");
        assert_eq!(gpu.vram_gb, 24.0);
        assert_eq!(gpu.vram_bytes(), 24 * 1024 * 1024 * 1024);
        assert_eq!(gpu.to_string(), "emulated:RTX 4090:24:300");
        // The declared power limit, and the one it prints parses back.
        let gpu = EmulatedGpu::parse("emulated:RTX 4090:24: 450.5 ").unwrap();
        assert_eq!(gpu.power_limit_watts, 450.5);
        assert_eq!(EmulatedGpu::parse(&gpu.to_string()).unwrap(), gpu);
        assert_eq!(
            EmulatedGpu::parse("emulated:x:1:2000")
                .unwrap()
                .power_limit_watts,
            2000.0
        );

        let gpu = EmulatedGpu::parse("  emulated:  NVIDIA H200 NVL :  141.5 ").unwrap();
        assert_eq!(gpu.name, "NVIDIA H200 NVL");
        assert_eq!(gpu.vram_gb, 141.5);
        assert_eq!(
            EmulatedGpu::parse("emulated:x:4096").unwrap().vram_gb,
            4096.0
        );
        assert_eq!(EmulatedGpu::parse("emulated:x:0.5").unwrap().vram_gb, 0.5);
    }

    #[test]
    fn parse_rejects_missing_parts() {
        for spec in ["", "emulated", "emulated:", "RTX 4090:24", "nvidia:RTX:24"] {
            let err = parse_err(spec);
            assert!(err.contains("emulated:<name>:<vram_gb>"), "{spec:?}: {err}");
        }
        assert!(parse_err("rtx:24").contains("must start with `emulated:`"));
        assert!(parse_err("emulated:RTX 4090").contains("separated by `:`"));
        assert!(parse_err("emulated::24").contains("name is empty"));
        assert!(parse_err("emulated:   :24").contains("name is empty"));
        assert!(parse_err("emulated:RTX 4090:").contains("vram_gb is missing"));
        assert!(parse_err("emulated:a:b:c:24").contains("must not contain `:`"));
        assert!(parse_err("emulated:a:b:24").contains("vram_gb must be a number"));
        let long = format!("emulated:{}:24", "x".repeat(MAX_GPU_NAME_CHARS + 1));
        assert!(parse_err(&long).contains("longer than 100"));
        assert!(parse_err("emulated:a\tb:24").contains("control characters"));
    }

    #[test]
    fn parse_rejects_bad_vram() {
        assert!(parse_err("emulated:RTX:0").contains("greater than 0"));
        assert!(parse_err("emulated:RTX:-0").contains("greater than 0"));
        assert!(parse_err("emulated:RTX:-8").contains("greater than 0"));
        assert!(parse_err("emulated:RTX:4096.5").contains("at most 4096"));
        assert!(parse_err("emulated:RTX:1e9").contains("at most 4096"));
        for bad in ["24GB", "abc", "inf", "NaN", "-inf", "2 4", "0x10"] {
            let err = parse_err(&format!("emulated:RTX:{bad}"));
            assert!(err.contains("must be a number of GB"), "{bad}: {err}");
        }
        // The message names the expected form and echoes the input.
        let err = parse_err("emulated:RTX:lots");
        assert!(err.contains("\"emulated:RTX:lots\""), "{err}");
        assert!(err.contains("e.g. `emulated:RTX 4090:24`"), "{err}");
    }

    #[test]
    fn parse_rejects_bad_power_limits() {
        for (bad, says) in [
            ("0", "greater than 0"),
            ("-300", "greater than 0"),
            ("2000.5", "at most 2000"),
            ("300W", "must be a number of watts"),
            ("NaN", "must be a number of watts"),
            ("", "is empty"),
        ] {
            let err = parse_err(&format!("emulated:RTX:24:{bad}"));
            assert!(err.contains(says), "{bad:?}: {err}");
            assert!(err.contains("[:<power_limit_w>]"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn emulated_uuids_are_stable_and_distinct() {
        let a = emulated_uuid("RTX 4090", 0);
        assert_eq!(a, emulated_uuid("RTX 4090", 0));
        assert!(a.starts_with("GPU-emulated-"));
        assert_eq!(a.len(), "GPU-emulated-".len() + 16);
        assert_ne!(a, emulated_uuid("RTX 4090", 1));
        assert_ne!(a, emulated_uuid("RTX 4091", 0));
        // Pinned: a UUID must not change between builds (a restarted agent finds its GPUs).
        assert_eq!(emulated_uuid("", 0), "GPU-emulated-e4bc4fd9252be94f");
    }

    #[test]
    fn emulated_inventory_and_readings() {
        let source = EmulatedSource::new([
            EmulatedGpu::parse("emulated:RTX 4090:24").unwrap(),
            EmulatedGpu::parse("emulated:RTX 4090:24").unwrap(),
        ]);
        let inventory = source.inventory();
        assert_eq!(inventory.gpus.len(), 2);
        assert_eq!(inventory.driver.as_deref(), Some("emulated"));
        assert!(inventory.note.is_some());
        let (first, second) = (&inventory.gpus[0], &inventory.gpus[1]);
        assert_ne!(first.uuid, second.uuid);
        assert_eq!((first.index, second.index), (0, 1));
        assert!(first.emulated && second.emulated);
        assert_eq!(first.driver_version, "emulated");
        assert_eq!(first.vram_total_bytes, 24 << 30);

        let idle = source.reading(&first.uuid).unwrap();
        assert!(idle.emulated);
        assert_eq!(idle.utilization_pct, 0.0);
        assert_eq!(idle.power_watts, Some(30.0));
        assert_eq!(idle.temperature_c, Some(35.0));
        assert_eq!(idle.vram_used_bytes, 0);
        assert_eq!(idle.vram_total_bytes, 24 << 30);

        source.set_cpu_fraction(&first.uuid, 0.5);
        source.set_vram_used_bytes(&first.uuid, 1 << 30);
        let half = source.reading(&first.uuid).unwrap();
        assert!(half.emulated);
        assert_eq!(half.utilization_pct, 50.0);
        // 300 W declared: 30 W idle, 300 W at full load.
        assert_eq!(half.power_watts, Some(165.0));
        assert_eq!(half.temperature_c, Some(57.5));
        assert_eq!(half.vram_used_bytes, 1 << 30);
        // The other GPU is untouched.
        assert_eq!(source.reading(&second.uuid).unwrap().utilization_pct, 0.0);

        assert!(matches!(
            source.reading("GPU-nope"),
            Err(GpuError::UnknownGpu { .. })
        ));
        source.set_cpu_fraction("GPU-nope", 1.0); // ignored, no panic
    }

    #[test]
    fn emulated_readings_clamp() {
        let source = EmulatedSource::new([EmulatedGpu::parse("emulated:T4:16").unwrap()]);
        let uuid = source.inventory().gpus[0].uuid.clone();
        for (fraction, pct) in [
            (2.5, 100.0),
            (f64::INFINITY, 100.0),
            (-1.0, 0.0),
            (f64::NEG_INFINITY, 0.0),
            (f64::NAN, 0.0),
        ] {
            source.set_cpu_fraction(&uuid, fraction);
            let reading = source.reading(&uuid).unwrap();
            assert!(reading.emulated);
            assert_eq!(reading.utilization_pct, pct, "fraction {fraction}");
            let power = reading.power_watts.unwrap();
            let temperature = reading.temperature_c.unwrap();
            assert!((30.0..=300.0).contains(&power), "{power}");
            assert!((35.0..=80.0).contains(&temperature), "{temperature}");
        }
        source.set_cpu_fraction(&uuid, 1.0);
        let full = source.reading(&uuid).unwrap();
        assert_eq!(full.power_watts, Some(300.0));
        assert_eq!(full.temperature_c, Some(80.0));
        source.set_vram_used_bytes(&uuid, u64::MAX);
        assert_eq!(source.reading(&uuid).unwrap().vram_used_bytes, 16 << 30);
    }

    #[test]
    fn emulated_power_stays_within_the_declared_limit() {
        let source = EmulatedSource::new([EmulatedGpu::parse("emulated:L4:24:72").unwrap()]);
        let gpu = &source.inventory().gpus[0];
        assert_eq!(gpu.power_limit_watts, Some(72.0));
        let uuid = gpu.uuid.clone();
        for fraction in [0.0, 0.25, 0.5, 0.99, 1.0, 7.0, f64::INFINITY, f64::NAN] {
            source.set_cpu_fraction(&uuid, fraction);
            let watts = source.reading(&uuid).unwrap().power_watts.unwrap();
            assert!((7.2..=72.0).contains(&watts), "{fraction}: {watts}");
        }
        source.set_cpu_fraction(&uuid, 1.0);
        assert_eq!(source.reading(&uuid).unwrap().power_watts, Some(72.0));
        // What the agent commits to never exceeds the limit either (even a limit whose
        // milliwatts do not come out even).
        for limit in [0.001, 72.0, 299.9995, 300.0, 1999.999, 2000.0] {
            for fraction in [0.0, 0.3, 1.0] {
                let watts = emulated_power_watts(limit, fraction);
                assert!(watts <= limit, "{limit} {fraction}: {watts}");
                assert!(
                    gp4u_core::energy::watts_to_mw(watts) <= gp4u_core::energy::watts_to_mw(limit)
                );
            }
        }
    }

    #[test]
    fn emulated_source_is_shared_across_threads() {
        let source =
            std::sync::Arc::new(EmulatedSource::new([
                EmulatedGpu::parse("emulated:L4:24").unwrap()
            ]));
        let uuid = source.inventory().gpus[0].uuid.clone();
        let writer = {
            let (source, uuid) = (source.clone(), uuid.clone());
            std::thread::spawn(move || source.set_cpu_fraction(&uuid, 0.25))
        };
        writer.join().unwrap();
        let dynamic: &dyn GpuSource = source.as_ref();
        assert_eq!(dynamic.reading(&uuid).unwrap().utilization_pct, 25.0);
    }

    #[test]
    fn throttle_reasons_map_to_names() {
        assert!(throttle_reason_names(ThrottleReasons::empty()).is_empty());
        assert!(throttle_reason_names(ThrottleReasons::NONE).is_empty());
        assert!(throttle_reason_names(ThrottleReasons::GPU_IDLE).is_empty());
        assert_eq!(
            throttle_reason_names(ThrottleReasons::SW_POWER_CAP),
            ["SW_POWER_CAP"]
        );
        assert_eq!(
            throttle_reason_names(
                ThrottleReasons::GPU_IDLE
                    | ThrottleReasons::SW_THERMAL_SLOWDOWN
                    | ThrottleReasons::HW_SLOWDOWN
            ),
            ["HW_SLOWDOWN", "SW_THERMAL_SLOWDOWN"]
        );
        let all = throttle_reason_names(ThrottleReasons::all());
        assert_eq!(
            all,
            [
                "APPLICATIONS_CLOCKS_SETTING",
                "SW_POWER_CAP",
                "HW_SLOWDOWN",
                "SYNC_BOOST",
                "SW_THERMAL_SLOWDOWN",
                "HW_THERMAL_SLOWDOWN",
                "HW_POWER_BRAKE_SLOWDOWN",
                "DISPLAY_CLOCK_SETTING",
            ]
        );
        // Raw NVML bits (nvmlClocksThrottleReason*): 0x4 power cap, 0x40 HW thermal.
        assert_eq!(
            throttle_reason_names(ThrottleReasons::from_bits_truncate(0x44 | (1 << 40))),
            ["SW_POWER_CAP", "HW_THERMAL_SLOWDOWN"]
        );
    }

    #[test]
    fn nvml_without_a_driver_is_an_empty_inventory() {
        let source = NvmlSource::open();
        let inventory = source.inventory();
        if source.is_available() {
            // A host with the NVIDIA driver: the inventory is real; nothing more to check here.
            for gpu in &inventory.gpus {
                assert!(!gpu.emulated);
            }
            return;
        }
        assert!(inventory.gpus.is_empty());
        assert!(inventory.driver.is_none());
        let note = inventory
            .note
            .as_deref()
            .expect("a note saying why there are no GPUs");
        assert!(note.contains("no NVIDIA GPUs"), "{note}");
        assert!(matches!(
            source.reading("GPU-00000000-0000-0000-0000-000000000000"),
            Err(GpuError::UnknownGpu { .. })
        ));
        let json = serde_json::to_value(&inventory).unwrap();
        assert_eq!(json["gpus"], serde_json::json!([]));
    }

    #[test]
    fn nvml_init_failures_are_notes() {
        let note = init_failure_note(&NvmlError::LibraryNotFound);
        assert_eq!(
            note,
            "no NVIDIA driver (libnvidia-ml.so.1 not found): no NVIDIA GPUs"
        );
        assert!(init_failure_note(&NvmlError::DriverNotLoaded).contains("no NVIDIA GPUs"));
        assert!(init_failure_note(&NvmlError::NoPermission).contains("permission"));
    }

    #[test]
    fn readings_round_trip_through_json() {
        let reading = GpuReading {
            uuid: "GPU-1".into(),
            utilization_pct: 12.0,
            memory_utilization_pct: None,
            vram_used_bytes: 1,
            vram_total_bytes: 2,
            power_watts: Some(70.5),
            temperature_c: None,
            throttle_reasons: vec!["SW_POWER_CAP".into()],
            compute_processes: vec![GpuProcess {
                pid: 42,
                used_memory_bytes: Some(1 << 20),
            }],
            emulated: false,
        };
        let json = serde_json::to_string(&reading).unwrap();
        assert_eq!(serde_json::from_str::<GpuReading>(&json).unwrap(), reading);
    }
}
