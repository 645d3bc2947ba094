//! `gp4u-gpu-probe`: a one-off check of the agent's GPU inventory and telemetry on a host.
//!
//! Prints JSON lines on stdout: the inventory; a raw NVML dump of every GPU (each call's value
//! or error); `--samples N` readings of every GPU `--interval-ms M` apart, taken the way the
//! agent takes them; a second raw dump; `done`. With `--load-cmd "<shell command>"` it first
//! starts that command with `sh -c` (in its own process group, its output sent to stderr),
//! waits `--load-warmup-ms`, samples, then stops the whole group. With `--emulated SPEC` it
//! probes declared GPUs instead of NVML. No GPUs is not a failure: the note is printed and the
//! exit status is 0. Exit 1: a reading of a present GPU failed; exit 2: bad arguments.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gp4u_agent::gpu::{EmulatedGpu, EmulatedSource, GpuSource, NvmlSource, throttle_reason_names};
use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use serde_json::{Value, json};

const USAGE: &str = "\
usage: gp4u-gpu-probe [--samples N] [--interval-ms M] [--load-cmd CMD] [--load-warmup-ms W]
                      [--emulated emulated:<name>:<vram_gb>]...
  --samples N         readings of every GPU (default 5, at most 100000)
  --interval-ms M     pause between samples (default 500)
  --load-cmd CMD      run `sh -c CMD` while sampling; stopped (its whole process group) after
  --load-warmup-ms W  wait after starting the load, before sampling (default 3000)
  --emulated SPEC     probe declared GPUs instead of NVML (repeatable)";

struct Args {
    samples: u32,
    interval: Duration,
    load_cmd: Option<String>,
    load_warmup: Duration,
    emulated: Vec<EmulatedGpu>,
}

fn parse_args(raw: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut args = Args {
        samples: 5,
        interval: Duration::from_millis(500),
        load_cmd: None,
        load_warmup: Duration::from_millis(3000),
        emulated: Vec::new(),
    };
    let mut raw = raw.peekable();
    while let Some(arg) = raw.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value.into())),
            _ => (arg.clone(), None),
        };
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let mut value = || -> Result<String, String> {
            inline
                .clone()
                .or_else(|| raw.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let number = |text: String, max: u64| -> Result<u64, String> {
            match text.trim().parse::<u64>() {
                Ok(n) if n <= max => Ok(n),
                _ => Err(format!(
                    "{flag} must be a whole number ≤ {max}, got {text:?}"
                )),
            }
        };
        match flag.as_str() {
            "--samples" => args.samples = number(value()?, 100_000)? as u32,
            "--interval-ms" => args.interval = Duration::from_millis(number(value()?, 3_600_000)?),
            "--load-warmup-ms" => {
                args.load_warmup = Duration::from_millis(number(value()?, 3_600_000)?)
            }
            "--load-cmd" => args.load_cmd = Some(value()?).filter(|c| !c.trim().is_empty()),
            "--emulated" => args
                .emulated
                .push(EmulatedGpu::parse(&value()?).map_err(|e| e.to_string())?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(args))
}

/// Writes one JSON line; a closed stdout is ignored (the probe never panics on output).
fn emit(mut line: Value) {
    if let Some(object) = line.as_object_mut() {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        object.insert("unix_ms".into(), unix_ms.into());
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn field<T: Into<Value>>(result: Result<T, NvmlError>) -> Value {
    match result {
        Ok(value) => json!({ "ok": value.into() }),
        Err(error) => json!({ "error": error.to_string(), "error_debug": format!("{error:?}") }),
    }
}

/// Every NVML call the agent relies on, for one GPU, each with its value or its error.
fn raw_dump(nvml: &Nvml, index: u32) -> Value {
    let device = match nvml.device_by_index(index) {
        Ok(device) => device,
        Err(error) => {
            return json!({ "index": index, "device_by_index": field::<u32>(Err(error)) });
        }
    };
    json!({
        "index": index,
        "uuid": field(device.uuid()),
        "name": field(device.name()),
        "serial": field(device.serial()),
        "pci_bus_id": field(device.pci_info().map(|p| p.bus_id)),
        "memory_info": field(device.memory_info().map(|m| json!({
            "total": m.total, "used": m.used, "free": m.free, "reserved": m.reserved,
        }))),
        "utilization_rates": field(device.utilization_rates().map(|u| json!({
            "gpu": u.gpu, "memory": u.memory,
        }))),
        "power_usage_mw": field(device.power_usage()),
        "enforced_power_limit_mw": field(device.enforced_power_limit()),
        "power_management_limit_mw": field(device.power_management_limit()),
        "temperature_gpu_c": field(device.temperature(TemperatureSensor::Gpu)),
        "current_throttle_reasons": field(device.current_throttle_reasons().map(|r| json!({
            "bits": r.bits(), "names": throttle_reason_names(r),
        }))),
        "running_compute_processes": field(device.running_compute_processes().map(|ps| {
            ps.into_iter()
                .map(|p| json!({
                    "pid": p.pid,
                    "used_gpu_memory": match p.used_gpu_memory {
                        UsedGpuMemory::Used(bytes) => json!(bytes),
                        UsedGpuMemory::Unavailable => Value::Null,
                    },
                }))
                .collect::<Vec<_>>()
        })),
        "mig_mode": field(device.mig_mode().map(|m| json!({ "current": m.current, "pending": m.pending }))),
    })
}

fn system_dump(nvml: &Nvml) -> Value {
    json!({
        "type": "nvml_system",
        "sys_driver_version": field(nvml.sys_driver_version()),
        "sys_nvml_version": field(nvml.sys_nvml_version()),
        "sys_cuda_driver_version": field(nvml.sys_cuda_driver_version()),
        "device_count": field(nvml.device_count()),
    })
}

fn raw_dumps(source: &NvmlSource, stage: &str) {
    let Some(nvml) = source.nvml() else { return };
    let count = nvml.device_count().unwrap_or(0);
    for index in 0..count {
        emit(json!({ "type": "nvml_raw", "stage": stage, "device": raw_dump(nvml, index) }));
    }
}

/// A load command in its own process group; stopping (or dropping) it ends the whole group.
struct Load {
    child: Child,
    group: u32,
}

impl Load {
    fn start(command: &str) -> std::io::Result<Load> {
        let child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::io::stderr()))
            .spawn()?;
        let group = child.id();
        Ok(Load { child, group })
    }

    /// Sends `signal` to the group through the shell's `kill`; true if the group existed.
    fn signal_group(&self, signal: &str) -> bool {
        Command::new("sh")
            .arg("-c")
            .arg(format!("kill -s {signal} -- -{} 2>/dev/null", self.group))
            .stdin(Stdio::null())
            .status()
            .map(|status| status.success())
            .unwrap_or(false)
    }

    fn stop(&mut self) -> Value {
        let exited_before = self.child.try_wait().ok().flatten();
        let mut killed = false;
        if self.signal_group("TERM") {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && self.signal_group("0") {
                let _ = self.child.try_wait();
                sleep(Duration::from_millis(100));
            }
            if self.signal_group("0") {
                killed = self.signal_group("KILL");
            }
        }
        let status = self.child.wait().ok();
        json!({
            "type": "load", "event": "stopped", "pgid": self.group,
            "exited_before_stop": exited_before.map(|s| s.to_string()),
            "sigkill_needed": killed,
            "status": status.map(|s| s.to_string()),
        })
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() || self.signal_group("0") {
            self.signal_group("KILL");
            let _ = self.child.wait();
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("gp4u-gpu-probe: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let nvml_source = args.emulated.is_empty().then(NvmlSource::open);
    let emulated_source = EmulatedSource::new(args.emulated.clone());
    let nvml = nvml_source.as_ref();
    let source: &dyn GpuSource = match nvml {
        Some(nvml) => nvml,
        None => &emulated_source,
    };

    let inventory = source.inventory();
    emit(json!({
        "type": "inventory",
        "source": if nvml.is_some() { "nvml" } else { "emulated" },
        "inventory": inventory,
    }));
    if let Some(nvml) = nvml.and_then(NvmlSource::nvml) {
        emit(system_dump(nvml));
    }
    if inventory.gpus.is_empty() {
        emit(json!({ "type": "done", "gpus": 0, "note": inventory.note, "reading_errors": 0 }));
        return ExitCode::SUCCESS;
    }
    if let Some(source) = nvml {
        raw_dumps(source, "before");
    }

    let mut load = match args.load_cmd.as_deref().map(Load::start) {
        None => None,
        Some(Ok(load)) => {
            emit(
                json!({ "type": "load", "event": "started", "pgid": load.group,
                         "warmup_ms": args.load_warmup.as_millis() as u64 }),
            );
            sleep(args.load_warmup);
            Some(load)
        }
        Some(Err(error)) => {
            emit(json!({ "type": "load", "event": "spawn_failed", "error": error.to_string() }));
            None
        }
    };

    let started = Instant::now();
    let mut errors = 0u32;
    for sample in 0..args.samples {
        if sample > 0 {
            sleep(args.interval);
        }
        let elapsed_ms = started.elapsed().as_millis() as u64;
        for gpu in &inventory.gpus {
            match source.reading(&gpu.uuid) {
                Ok(reading) => emit(json!({
                    "type": "reading", "sample": sample, "elapsed_ms": elapsed_ms,
                    "index": gpu.index, "reading": reading,
                })),
                Err(error) => {
                    errors += 1;
                    emit(json!({
                        "type": "reading_error", "sample": sample, "elapsed_ms": elapsed_ms,
                        "index": gpu.index, "uuid": gpu.uuid, "error": error.to_string(),
                    }));
                }
            }
        }
    }

    if let Some(source) = nvml {
        raw_dumps(
            source,
            if load.is_some() {
                "under_load"
            } else {
                "after"
            },
        );
    }
    if let Some(load) = load.as_mut() {
        emit(load.stop());
    }
    drop(load);
    emit(json!({
        "type": "done", "gpus": inventory.gpus.len(), "note": inventory.note,
        "reading_errors": errors,
    }));
    if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
