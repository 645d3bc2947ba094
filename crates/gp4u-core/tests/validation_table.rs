//! Table-driven tests of every request validation rule (SPEC §3 and §4): for each case,
//! the expected code and field, including near misses that must pass.

use gp4u_core::manifest::{
    GpuTarget, JobNetwork, ValidationCode, validate_credit_amount, validate_new_user,
    validate_power_limits, validate_region, validate_registration, validate_submission,
};
use gp4u_core::money::{Hours, Money};
use serde_json::{Map, Value, json};

use ValidationCode::*;

/// `None` when the body must be accepted, else the expected code and field.
type Expected = Option<(ValidationCode, String)>;

fn ok() -> Expected {
    None
}

fn fails(code: ValidationCode, field: &str) -> Expected {
    Some((code, field.to_owned()))
}

fn digest() -> String {
    "0123456789abcdef".repeat(4)
}

fn valid_job() -> Value {
    json!({
        "name": "BERT fine-tune — medical NLP",
        "gpuId": "gpu_abc123",
        "workload_type": "TRAINING",
        "expectedDurationHours": 4.0,
        "docker_image": "registry.example/org/bert",
        "docker_image_sha256": digest(),
        "command": ["python", "train.py"],
        "env": {"EPOCHS": "3"},
        "inputs": ["art_data1"],
        "ram_limit_gb": 32,
        "max_retries": 1
    })
}

/// The valid job with one field set (a JSON `Value::Null` sets it to null).
fn job_with(key: &str, value: Value) -> Value {
    let mut body = valid_job();
    body[key] = value;
    body
}

fn job_without(key: &str) -> Value {
    let mut body = valid_job();
    body.as_object_mut()
        .expect("the valid job is an object")
        .remove(key);
    body
}

/// A requirement-targeted job with the given `gpu` object.
fn job_with_gpu(gpu: Value) -> Value {
    let mut body = job_without("gpuId");
    body["gpu"] = gpu;
    body
}

fn env_with(key: &str, value: Value) -> Value {
    job_with("env", json!({ key: value }))
}

fn env_of_size(count: usize) -> Value {
    let env: Map<String, Value> = (0..count)
        .map(|index| (format!("VAR_{index}"), json!("x")))
        .collect();
    job_with("env", Value::Object(env))
}

fn inputs_of_size(count: usize) -> Value {
    let inputs: Vec<Value> = (0..count)
        .map(|index| json!(format!("art_{index}")))
        .collect();
    job_with("inputs", Value::Array(inputs))
}

fn check<T: std::fmt::Debug>(
    name: &str,
    result: Result<T, gp4u_core::manifest::FieldError>,
    expected: &Expected,
    failures: &mut Vec<String>,
) {
    let actual = match &result {
        Ok(_) => None,
        Err(error) => Some((error.code, error.field.clone())),
    };
    if &actual != expected {
        failures.push(format!("{name}: expected {expected:?}, got {result:?}"));
    }
    if let Err(error) = &result {
        // Messages always say what was wrong and stay short whatever the input.
        if error.message.is_empty() || error.message.len() > 600 {
            failures.push(format!("{name}: bad message {:?}", error.message));
        }
    }
}

#[test]
fn job_submission_rules() {
    let name_200 = "n".repeat(200);
    let name_201 = "n".repeat(201);
    let key_128 = format!("K{}", "_".repeat(127));
    let key_129 = format!("K{}", "_".repeat(128));
    let cases: Vec<(&str, Value, Expected)> = vec![
        ("valid seed example", valid_job(), ok()),
        // Body.
        ("body is an array", json!([]), fails(InvalidBody, "")),
        ("body is a string", json!("job"), fails(InvalidBody, "")),
        ("body is null", Value::Null, fails(InvalidBody, "")),
        // Name: 1-200 characters after trimming.
        (
            "name missing",
            job_without("name"),
            fails(InvalidName, "name"),
        ),
        (
            "name null",
            job_with("name", Value::Null),
            fails(InvalidName, "name"),
        ),
        (
            "name number",
            job_with("name", json!(12)),
            fails(InvalidName, "name"),
        ),
        (
            "name empty",
            job_with("name", json!("")),
            fails(InvalidName, "name"),
        ),
        (
            "name blank",
            job_with("name", json!("   \t")),
            fails(InvalidName, "name"),
        ),
        ("name 200 chars", job_with("name", json!(name_200)), ok()),
        (
            "name 201 chars",
            job_with("name", json!(name_201)),
            fails(InvalidName, "name"),
        ),
        (
            "name 200 chars padded",
            job_with("name", json!(format!("  {name_200}  "))),
            ok(),
        ),
        (
            "name 200 multibyte chars",
            job_with("name", json!("é".repeat(200))),
            ok(),
        ),
        (
            "name 201 multibyte chars",
            job_with("name", json!("é".repeat(201))),
            fails(InvalidName, "name"),
        ),
        // Target.
        (
            "neither gpuId nor gpu",
            job_without("gpuId"),
            fails(GpuTargetRequired, "gpuId"),
        ),
        (
            "gpuId null, no gpu",
            job_with("gpuId", Value::Null),
            fails(GpuTargetRequired, "gpuId"),
        ),
        (
            "both gpuId and gpu",
            job_with("gpu", json!({})),
            fails(GpuTargetAmbiguous, "gpu"),
        ),
        ("gpuId plus null gpu", job_with("gpu", Value::Null), ok()),
        (
            "gpuId number",
            job_with("gpuId", json!(7)),
            fails(InvalidGpuId, "gpuId"),
        ),
        (
            "gpuId wrong prefix",
            job_with("gpuId", json!("job_abc")),
            fails(InvalidGpuId, "gpuId"),
        ),
        (
            "gpuId empty suffix",
            job_with("gpuId", json!("gpu_")),
            fails(InvalidGpuId, "gpuId"),
        ),
        (
            "gpuId bad char",
            job_with("gpuId", json!("gpu_a/b")),
            fails(InvalidGpuId, "gpuId"),
        ),
        ("gpu empty object", job_with_gpu(json!({})), ok()),
        (
            "gpu full",
            job_with_gpu(
                json!({"model": "RTX 4090", "min_vram_gb": 24, "region": "us-east-1", "max_price_per_hour": 2.5}),
            ),
            ok(),
        ),
        (
            "gpu nulls",
            job_with_gpu(
                json!({"model": null, "min_vram_gb": null, "region": null, "max_price_per_hour": null}),
            ),
            ok(),
        ),
        (
            "gpu string",
            job_with_gpu(json!("RTX 4090")),
            fails(InvalidGpuRequirement, "gpu"),
        ),
        (
            "gpu model number",
            job_with_gpu(json!({"model": 4090})),
            fails(InvalidGpuRequirement, "gpu.model"),
        ),
        (
            "gpu model 100",
            job_with_gpu(json!({"model": "m".repeat(100)})),
            ok(),
        ),
        (
            "gpu model 101",
            job_with_gpu(json!({"model": "m".repeat(101)})),
            fails(InvalidGpuRequirement, "gpu.model"),
        ),
        (
            "gpu vram 0",
            job_with_gpu(json!({"min_vram_gb": 0})),
            fails(InvalidGpuRequirement, "gpu.min_vram_gb"),
        ),
        (
            "gpu vram negative",
            job_with_gpu(json!({"min_vram_gb": -8})),
            fails(InvalidGpuRequirement, "gpu.min_vram_gb"),
        ),
        (
            "gpu vram 4096",
            job_with_gpu(json!({"min_vram_gb": 4096})),
            ok(),
        ),
        (
            "gpu vram 4097",
            job_with_gpu(json!({"min_vram_gb": 4097})),
            fails(InvalidGpuRequirement, "gpu.min_vram_gb"),
        ),
        (
            "gpu vram string",
            job_with_gpu(json!({"min_vram_gb": "24"})),
            fails(InvalidGpuRequirement, "gpu.min_vram_gb"),
        ),
        (
            "gpu region uppercase",
            job_with_gpu(json!({"region": "US-EAST-1"})),
            fails(InvalidGpuRequirement, "gpu.region"),
        ),
        (
            "gpu region number",
            job_with_gpu(json!({"region": 1})),
            fails(InvalidGpuRequirement, "gpu.region"),
        ),
        (
            "gpu price 0",
            job_with_gpu(json!({"max_price_per_hour": 0})),
            fails(InvalidGpuRequirement, "gpu.max_price_per_hour"),
        ),
        (
            "gpu price 100000",
            job_with_gpu(json!({"max_price_per_hour": 100000})),
            ok(),
        ),
        (
            "gpu price 100000.01",
            job_with_gpu(json!({"max_price_per_hour": 100000.01})),
            fails(InvalidGpuRequirement, "gpu.max_price_per_hour"),
        ),
        (
            "gpu price one micro",
            job_with_gpu(json!({"max_price_per_hour": 0.000001})),
            ok(),
        ),
        (
            "gpu price rounds to zero",
            job_with_gpu(json!({"max_price_per_hour": 0.0000001})),
            fails(InvalidGpuRequirement, "gpu.max_price_per_hour"),
        ),
        // Workload type.
        (
            "workload INFERENCE",
            job_with("workload_type", json!("INFERENCE")),
            ok(),
        ),
        (
            "workload FINE_TUNING",
            job_with("workload_type", json!("FINE_TUNING")),
            ok(),
        ),
        (
            "workload RENDERING",
            job_with("workload_type", json!("RENDERING")),
            ok(),
        ),
        (
            "workload BATCH",
            job_with("workload_type", json!("BATCH")),
            ok(),
        ),
        (
            "workload lowercase",
            job_with("workload_type", json!("training")),
            fails(InvalidWorkloadType, "workload_type"),
        ),
        (
            "workload unknown",
            job_with("workload_type", json!("MINING")),
            fails(InvalidWorkloadType, "workload_type"),
        ),
        (
            "workload number",
            job_with("workload_type", json!(1)),
            fails(InvalidWorkloadType, "workload_type"),
        ),
        (
            "workload missing",
            job_without("workload_type"),
            fails(InvalidWorkloadType, "workload_type"),
        ),
        // Duration in [0.1, 720].
        (
            "duration 0.1",
            job_with("expectedDurationHours", json!(0.1)),
            ok(),
        ),
        (
            "duration 720",
            job_with("expectedDurationHours", json!(720)),
            ok(),
        ),
        (
            "duration integer",
            job_with("expectedDurationHours", json!(4)),
            ok(),
        ),
        (
            "duration 0.09",
            job_with("expectedDurationHours", json!(0.09)),
            fails(InvalidDuration, "expectedDurationHours"),
        ),
        (
            "duration 720.01",
            job_with("expectedDurationHours", json!(720.01)),
            fails(InvalidDuration, "expectedDurationHours"),
        ),
        (
            "duration 0",
            job_with("expectedDurationHours", json!(0)),
            fails(InvalidDuration, "expectedDurationHours"),
        ),
        (
            "duration string",
            job_with("expectedDurationHours", json!("4")),
            fails(InvalidDuration, "expectedDurationHours"),
        ),
        (
            "duration missing",
            job_without("expectedDurationHours"),
            fails(InvalidDuration, "expectedDurationHours"),
        ),
        (
            "duration null",
            job_with("expectedDurationHours", Value::Null),
            fails(InvalidDuration, "expectedDurationHours"),
        ),
        // Docker image.
        (
            "image with registry port and tag",
            job_with(
                "docker_image",
                json!("registry.example:5000/org/bert:1.2-cuda_12"),
            ),
            ok(),
        ),
        (
            "image 255 chars",
            job_with("docker_image", json!("a".repeat(255))),
            ok(),
        ),
        (
            "image 256 chars",
            job_with("docker_image", json!("a".repeat(256))),
            fails(InvalidImage, "docker_image"),
        ),
        (
            "image empty",
            job_with("docker_image", json!("")),
            fails(InvalidImage, "docker_image"),
        ),
        (
            "image uppercase",
            job_with("docker_image", json!("Org/Bert")),
            fails(InvalidImage, "docker_image"),
        ),
        (
            "image whitespace",
            job_with("docker_image", json!("org/bert latest")),
            fails(InvalidImage, "docker_image"),
        ),
        (
            "image newline",
            job_with("docker_image", json!("org/bert\n")),
            fails(InvalidImage, "docker_image"),
        ),
        (
            "image with digest",
            job_with(
                "docker_image",
                json!(format!("org/bert@sha256:{}", digest())),
            ),
            fails(InvalidImage, "docker_image"),
        ),
        (
            "image leading dash",
            job_with("docker_image", json!("-org/bert")),
            fails(InvalidImage, "docker_image"),
        ),
        (
            "image number",
            job_with("docker_image", json!(5)),
            fails(InvalidImage, "docker_image"),
        ),
        (
            "image missing",
            job_without("docker_image"),
            fails(InvalidImage, "docker_image"),
        ),
        // Image digest.
        (
            "digest with prefix",
            job_with("docker_image_sha256", json!(format!("sha256:{}", digest()))),
            ok(),
        ),
        (
            "digest uppercase hex",
            job_with("docker_image_sha256", json!(digest().to_uppercase())),
            ok(),
        ),
        (
            "digest 63 hex",
            job_with("docker_image_sha256", json!(&digest()[1..])),
            fails(InvalidImageDigest, "docker_image_sha256"),
        ),
        (
            "digest prefix + 63 hex",
            job_with(
                "docker_image_sha256",
                json!(format!("sha256:{}", &digest()[1..])),
            ),
            fails(InvalidImageDigest, "docker_image_sha256"),
        ),
        (
            "digest 65 hex",
            job_with("docker_image_sha256", json!(format!("{}0", digest()))),
            fails(InvalidImageDigest, "docker_image_sha256"),
        ),
        (
            "digest non-hex",
            job_with("docker_image_sha256", json!(format!("g{}", &digest()[1..]))),
            fails(InvalidImageDigest, "docker_image_sha256"),
        ),
        (
            "digest other prefix",
            job_with("docker_image_sha256", json!(format!("sha512:{}", digest()))),
            fails(InvalidImageDigest, "docker_image_sha256"),
        ),
        (
            "digest missing",
            job_without("docker_image_sha256"),
            fails(InvalidImageDigest, "docker_image_sha256"),
        ),
        (
            "digest number",
            job_with("docker_image_sha256", json!(1)),
            fails(InvalidImageDigest, "docker_image_sha256"),
        ),
        // Command.
        ("command absent", job_without("command"), ok()),
        ("command null", job_with("command", Value::Null), ok()),
        ("command empty", job_with("command", json!([])), ok()),
        (
            "command 128 args",
            job_with("command", json!(vec!["a"; 128])),
            ok(),
        ),
        (
            "command 129 args",
            job_with("command", json!(vec!["a"; 129])),
            fails(InvalidCommand, "command"),
        ),
        (
            "command string",
            job_with("command", json!("python train.py")),
            fails(InvalidCommand, "command"),
        ),
        (
            "command non-string arg",
            job_with("command", json!(["python", 3])),
            fails(InvalidCommand, "command[1]"),
        ),
        (
            "command NUL",
            job_with("command", json!(["a\u{0}b"])),
            fails(InvalidCommand, "command[0]"),
        ),
        (
            "command arg 4096 bytes",
            job_with("command", json!(["a".repeat(4096)])),
            ok(),
        ),
        (
            "command arg 4097 bytes",
            job_with("command", json!(["a".repeat(4097)])),
            fails(InvalidCommand, "command[0]"),
        ),
        // Env.
        ("env absent", job_without("env"), ok()),
        ("env null", job_with("env", Value::Null), ok()),
        (
            "env array",
            job_with("env", json!(["A=1"])),
            fails(InvalidEnvValue, "env"),
        ),
        ("env 64 keys", env_of_size(64), ok()),
        ("env 65 keys", env_of_size(65), fails(TooManyEnvVars, "env")),
        (
            "env lowercase key",
            env_with("epochs", json!("3")),
            fails(InvalidEnvKey, "env.epochs"),
        ),
        (
            "env key leading digit",
            env_with("1ABC", json!("3")),
            fails(InvalidEnvKey, "env.1ABC"),
        ),
        (
            "env key dash",
            env_with("A-B", json!("3")),
            fails(InvalidEnvKey, "env.A-B"),
        ),
        (
            "env key empty",
            env_with("", json!("3")),
            fails(InvalidEnvKey, "env."),
        ),
        (
            "env key underscore start",
            env_with("_PRIVATE_2", json!("3")),
            ok(),
        ),
        ("env key 128 chars", env_with(&key_128, json!("3")), ok()),
        (
            "env key 129 chars",
            env_with(&key_129, json!("3")),
            fails(InvalidEnvKey, &format!("env.{}…", &key_129[..64])),
        ),
        (
            "env LD_PRELOAD",
            env_with("LD_PRELOAD", json!("/x.so")),
            fails(ForbiddenEnvKey, "env.LD_PRELOAD"),
        ),
        (
            "env LD_LIBRARY_PATH",
            env_with("LD_LIBRARY_PATH", json!("/x")),
            fails(ForbiddenEnvKey, "env.LD_LIBRARY_PATH"),
        ),
        (
            "env NVIDIA_VISIBLE_DEVICES",
            env_with("NVIDIA_VISIBLE_DEVICES", json!("all")),
            fails(ForbiddenEnvKey, "env.NVIDIA_VISIBLE_DEVICES"),
        ),
        (
            "env NVIDIA_DRIVER_CAPABILITIES",
            env_with("NVIDIA_DRIVER_CAPABILITIES", json!("all")),
            fails(ForbiddenEnvKey, "env.NVIDIA_DRIVER_CAPABILITIES"),
        ),
        (
            "env CUDA_VISIBLE_DEVICES",
            env_with("CUDA_VISIBLE_DEVICES", json!("0,1")),
            fails(ForbiddenEnvKey, "env.CUDA_VISIBLE_DEVICES"),
        ),
        (
            "env CUDA_DEVICE_ORDER",
            env_with("CUDA_DEVICE_ORDER", json!("x")),
            fails(ForbiddenEnvKey, "env.CUDA_DEVICE_ORDER"),
        ),
        (
            "env CUDA_MPS_PIPE_DIRECTORY",
            env_with("CUDA_MPS_PIPE_DIRECTORY", json!("x")),
            fails(ForbiddenEnvKey, "env.CUDA_MPS_PIPE_DIRECTORY"),
        ),
        (
            "env CUDA_MPS_LOG_DIRECTORY",
            env_with("CUDA_MPS_LOG_DIRECTORY", json!("x")),
            fails(ForbiddenEnvKey, "env.CUDA_MPS_LOG_DIRECTORY"),
        ),
        (
            "env GPU_DEVICE_ORDINAL",
            env_with("GPU_DEVICE_ORDINAL", json!("0")),
            fails(ForbiddenEnvKey, "env.GPU_DEVICE_ORDINAL"),
        ),
        (
            "env HIP_VISIBLE_DEVICES",
            env_with("HIP_VISIBLE_DEVICES", json!("0")),
            fails(ForbiddenEnvKey, "env.HIP_VISIBLE_DEVICES"),
        ),
        (
            "env ROCR_VISIBLE_DEVICES",
            env_with("ROCR_VISIBLE_DEVICES", json!("0")),
            fails(ForbiddenEnvKey, "env.ROCR_VISIBLE_DEVICES"),
        ),
        (
            "env GP4U_ prefix",
            env_with("GP4U_TOKEN_SECRET", json!("x")),
            fails(ForbiddenEnvKey, "env.GP4U_TOKEN_SECRET"),
        ),
        (
            "env DOCKER_ prefix",
            env_with("DOCKER_HOST", json!("x")),
            fails(ForbiddenEnvKey, "env.DOCKER_HOST"),
        ),
        (
            "env CUDA_HOME allowed",
            env_with("CUDA_HOME", json!("/usr/local/cuda")),
            ok(),
        ),
        ("env LD alone allowed", env_with("LD", json!("x")), ok()),
        (
            "env value newline",
            env_with("EPOCHS", json!("3\nEVIL=1")),
            fails(InvalidEnvValue, "env.EPOCHS"),
        ),
        (
            "env value carriage return",
            env_with("EPOCHS", json!("3\r")),
            fails(InvalidEnvValue, "env.EPOCHS"),
        ),
        (
            "env value NUL",
            env_with("EPOCHS", json!("3\u{0}")),
            fails(InvalidEnvValue, "env.EPOCHS"),
        ),
        (
            "env value number",
            env_with("EPOCHS", json!(3)),
            fails(InvalidEnvValue, "env.EPOCHS"),
        ),
        (
            "env value null",
            env_with("EPOCHS", Value::Null),
            fails(InvalidEnvValue, "env.EPOCHS"),
        ),
        ("env value empty", env_with("EPOCHS", json!("")), ok()),
        ("env value tab", env_with("EPOCHS", json!("a\tb")), ok()),
        (
            "env value 4096 bytes",
            env_with("EPOCHS", json!("v".repeat(4096))),
            ok(),
        ),
        (
            "env value 4097 bytes",
            env_with("EPOCHS", json!("v".repeat(4097))),
            fails(InvalidEnvValue, "env.EPOCHS"),
        ),
        // Inputs.
        ("inputs absent", job_without("inputs"), ok()),
        ("inputs null", job_with("inputs", Value::Null), ok()),
        ("inputs 64", inputs_of_size(64), ok()),
        (
            "inputs 65",
            inputs_of_size(65),
            fails(InvalidInputs, "inputs"),
        ),
        (
            "inputs string",
            job_with("inputs", json!("art_a")),
            fails(InvalidInputs, "inputs"),
        ),
        (
            "inputs wrong prefix",
            job_with("inputs", json!(["art_a", "gpu_b"])),
            fails(InvalidInputs, "inputs[1]"),
        ),
        (
            "inputs number",
            job_with("inputs", json!([1])),
            fails(InvalidInputs, "inputs[0]"),
        ),
        (
            "inputs duplicate",
            job_with("inputs", json!(["art_a", "art_a"])),
            fails(InvalidInputs, "inputs[1]"),
        ),
        // RAM limit in (0, 2048].
        ("ram absent", job_without("ram_limit_gb"), ok()),
        ("ram null", job_with("ram_limit_gb", Value::Null), ok()),
        ("ram 2048", job_with("ram_limit_gb", json!(2048)), ok()),
        ("ram 0.5", job_with("ram_limit_gb", json!(0.5)), ok()),
        (
            "ram 2048.5",
            job_with("ram_limit_gb", json!(2048.5)),
            fails(InvalidRamLimit, "ram_limit_gb"),
        ),
        (
            "ram 0",
            job_with("ram_limit_gb", json!(0)),
            fails(InvalidRamLimit, "ram_limit_gb"),
        ),
        (
            "ram negative",
            job_with("ram_limit_gb", json!(-1)),
            fails(InvalidRamLimit, "ram_limit_gb"),
        ),
        (
            "ram string",
            job_with("ram_limit_gb", json!("32")),
            fails(InvalidRamLimit, "ram_limit_gb"),
        ),
        // Retries 0..=10.
        ("retries absent", job_without("max_retries"), ok()),
        ("retries 0", job_with("max_retries", json!(0)), ok()),
        ("retries 10", job_with("max_retries", json!(10)), ok()),
        ("retries 2.0", job_with("max_retries", json!(2.0)), ok()),
        (
            "retries 11",
            job_with("max_retries", json!(11)),
            fails(InvalidMaxRetries, "max_retries"),
        ),
        (
            "retries -1",
            job_with("max_retries", json!(-1)),
            fails(InvalidMaxRetries, "max_retries"),
        ),
        (
            "retries 1.5",
            job_with("max_retries", json!(1.5)),
            fails(InvalidMaxRetries, "max_retries"),
        ),
        (
            "retries string",
            job_with("max_retries", json!("1")),
            fails(InvalidMaxRetries, "max_retries"),
        ),
        (
            "retries bool",
            job_with("max_retries", json!(true)),
            fails(InvalidMaxRetries, "max_retries"),
        ),
        // The runtime of SPEC §10: /dev/shm within the memory cap (32 GB here), /scratch,
        // and the network.
        ("shm absent", job_without("shm_gb"), ok()),
        (
            "shm 32 = the memory cap",
            job_with("shm_gb", json!(32)),
            ok(),
        ),
        ("shm 0.25", job_with("shm_gb", json!(0.25)), ok()),
        (
            "shm above the memory cap",
            job_with("shm_gb", json!(32.5)),
            fails(InvalidShmSize, "shm_gb"),
        ),
        (
            "shm above a smaller memory cap",
            {
                let mut body = job_with("shm_gb", json!(3));
                body["ram_limit_gb"] = json!(2);
                body
            },
            fails(InvalidShmSize, "shm_gb"),
        ),
        (
            "shm 0",
            job_with("shm_gb", json!(0)),
            fails(InvalidShmSize, "shm_gb"),
        ),
        (
            "shm string",
            job_with("shm_gb", json!("8g")),
            fails(InvalidShmSize, "shm_gb"),
        ),
        ("scratch absent", job_without("scratch_gb"), ok()),
        ("scratch 0.5", job_with("scratch_gb", json!(0.5)), ok()),
        ("scratch 16384", job_with("scratch_gb", json!(16384)), ok()),
        (
            "scratch 0",
            job_with("scratch_gb", json!(0)),
            fails(InvalidScratchSize, "scratch_gb"),
        ),
        (
            "scratch too large",
            job_with("scratch_gb", json!(16385)),
            fails(InvalidScratchSize, "scratch_gb"),
        ),
        (
            "scratch negative",
            job_with("scratch_gb", json!(-1)),
            fails(InvalidScratchSize, "scratch_gb"),
        ),
        ("network absent", job_without("network"), ok()),
        ("network public", job_with("network", json!("public")), ok()),
        ("network none", job_with("network", json!("none")), ok()),
        (
            "network host",
            job_with("network", json!("host")),
            fails(InvalidNetwork, "network"),
        ),
        (
            "network bridge",
            job_with("network", json!("bridge")),
            fails(InvalidNetwork, "network"),
        ),
        (
            "network upper case",
            job_with("network", json!("PUBLIC")),
            fails(InvalidNetwork, "network"),
        ),
        (
            "network bool",
            job_with("network", json!(false)),
            fails(InvalidNetwork, "network"),
        ),
        // Ignored fields.
        (
            "costEstimate ignored",
            job_with("costEstimate", json!(0.01)),
            ok(),
        ),
        ("cost ignored", job_with("cost", json!("free")), ok()),
        (
            "unknown field ignored",
            job_with("priority", json!({"nested": [1, 2]})),
            ok(),
        ),
        // Order: the first failing field in the documented order wins.
        (
            "name before duration",
            {
                let mut body = job_with("name", json!(""));
                body["expectedDurationHours"] = json!(0);
                body
            },
            fails(InvalidName, "name"),
        ),
        (
            "target before workload",
            {
                let mut body = job_without("gpuId");
                body["workload_type"] = json!("nope");
                body
            },
            fails(GpuTargetRequired, "gpuId"),
        ),
    ];

    let mut failures = Vec::new();
    for (name, body, expected) in &cases {
        check(name, validate_submission(body), expected, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn job_submission_normalises_values() {
    let manifest = validate_submission(&valid_job()).unwrap();
    assert_eq!(manifest.name, "BERT fine-tune — medical NLP");
    assert_eq!(
        manifest.expected_duration,
        Hours::from_micro_hours(4_000_000)
    );
    assert!(matches!(manifest.target, GpuTarget::Pinned(ref id) if id.as_str() == "gpu_abc123"));
    assert_eq!(manifest.ram_limit_gb, 32.0);
    assert_eq!(manifest.env.get("EPOCHS").map(String::as_str), Some("3"));

    let defaults = validate_submission(&{
        let mut body = job_without("ram_limit_gb");
        body.as_object_mut().unwrap().remove("max_retries");
        body
    })
    .unwrap();
    assert_eq!(defaults.ram_limit_gb, 16.0);
    assert_eq!(defaults.max_retries, 1);
    // SPEC §10's defaults: /dev/shm half the memory cap, 20 GB of /scratch, public network.
    assert_eq!(defaults.shm_gb(), 8.0);
    assert_eq!(defaults.scratch_gb(), 20.0);
    assert_eq!(defaults.network, JobNetwork::Public);
    let runtime = validate_submission(&{
        let mut body = job_with("shm_gb", json!(2.5));
        body["scratch_gb"] = json!(1);
        body["network"] = json!("none");
        body
    })
    .unwrap();
    assert_eq!(
        (runtime.shm_gb(), runtime.scratch_gb(), runtime.network),
        (2.5, 1.0, JobNetwork::None)
    );

    let upper = validate_submission(&job_with(
        "docker_image_sha256",
        json!(format!("sha256:{}", digest().to_uppercase())),
    ))
    .unwrap();
    assert_eq!(upper.docker_image_sha256, digest());

    let padded = validate_submission(&job_with("name", json!("  spaced  "))).unwrap();
    assert_eq!(padded.name, "spaced");

    let requirement =
        validate_submission(&job_with_gpu(json!({"max_price_per_hour": 2.5}))).unwrap();
    match requirement.target {
        GpuTarget::Requirement(requirement) => {
            assert_eq!(
                requirement.max_price_per_hour,
                Some(Money::from_micros(2_500_000))
            );
        }
        GpuTarget::Pinned(_) => panic!("expected a requirement"),
    }
}

#[test]
fn region_rules() {
    let cases = [
        ("us-east-1", true),
        ("eu", true),
        ("a", false),
        (&*"r".repeat(32), true),
        (&*"r".repeat(33), false),
        ("US-EAST-1", false),
        ("us_east", false),
        ("us east", false),
        ("", false),
    ];
    for (region, accepted) in cases {
        let result = validate_region("region", region);
        assert_eq!(result.is_ok(), accepted, "{region:?}: {result:?}");
        if let Err(error) = result {
            assert_eq!(error.code, InvalidRegion);
            assert_eq!(error.field, "region");
        }
    }
}

#[test]
fn new_user_rules() {
    let valid = json!({"name": "Alice", "role": "customer"});
    let with = |key: &str, value: Value| {
        let mut body = valid.clone();
        body[key] = value;
        body
    };
    let cases: Vec<(&str, Value, Expected)> = vec![
        ("valid", valid.clone(), ok()),
        ("provider", with("role", json!("provider")), ok()),
        ("admin", with("role", json!("admin")), ok()),
        ("body array", json!([]), fails(InvalidBody, "")),
        ("name 200", with("name", json!("n".repeat(200))), ok()),
        (
            "name 201",
            with("name", json!("n".repeat(201))),
            fails(InvalidName, "name"),
        ),
        (
            "name blank",
            with("name", json!(" ")),
            fails(InvalidName, "name"),
        ),
        (
            "name missing",
            json!({"role": "customer"}),
            fails(InvalidName, "name"),
        ),
        (
            "role unknown",
            with("role", json!("root")),
            fails(InvalidRole, "role"),
        ),
        (
            "role uppercase",
            with("role", json!("ADMIN")),
            fails(InvalidRole, "role"),
        ),
        (
            "role missing",
            json!({"name": "Alice"}),
            fails(InvalidRole, "role"),
        ),
        (
            "role number",
            with("role", json!(3)),
            fails(InvalidRole, "role"),
        ),
        ("university true", with("university", json!(true)), ok()),
        ("university null", with("university", Value::Null), ok()),
        (
            "university string",
            with("university", json!("yes")),
            fails(InvalidType, "university"),
        ),
        ("region ok", with("region", json!("eu-west-1")), ok()),
        (
            "region bad",
            with("region", json!("EU")),
            fails(InvalidRegion, "region"),
        ),
        (
            "region number",
            with("region", json!(1)),
            fails(InvalidRegion, "region"),
        ),
        ("unknown ignored", with("clearance", json!(5)), ok()),
    ];
    let mut failures = Vec::new();
    for (name, body, expected) in &cases {
        check(name, validate_new_user(body), expected, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );

    let user = validate_new_user(&with("name", json!("  Bob  "))).unwrap();
    assert_eq!(user.name, "Bob");
    assert!(!user.university);
    assert_eq!(user.role.clearance(), 1);
    assert_eq!(user.region, None);
}

#[test]
fn registration_rules() {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};

    // 0xfb bytes encode to '+' and '/' in the standard alphabet, '-' and '_' in URL-safe.
    let key = [0xfb_u8; 32];
    let gpu = json!({"name": "RTX 4090", "vram_gb": 24, "price_per_hour": 0.5, "power_limit_watts": 450, "uuid": "GPU-1234"});
    let valid = json!({"region": "us-east-1", "public_key": STANDARD.encode(key), "gpus": [gpu]});
    let with = |key: &str, value: Value| {
        let mut body = valid.clone();
        body[key] = value;
        body
    };
    let with_gpu = |field: &str, value: Value| {
        let mut gpu = gpu.clone();
        gpu[field] = value;
        with("gpus", json!([gpu.clone(), gpu.clone(), gpu]))
    };
    let cases: Vec<(&str, Value, Expected)> = vec![
        ("valid", valid.clone(), ok()),
        ("body string", json!("x"), fails(InvalidBody, "")),
        (
            "region missing",
            json!({"public_key": STANDARD.encode(key), "gpus": [gpu.clone()]}),
            fails(InvalidRegion, "region"),
        ),
        (
            "region bad",
            with("region", json!("Us East")),
            fails(InvalidRegion, "region"),
        ),
        (
            "key unpadded",
            with("public_key", json!(STANDARD_NO_PAD.encode(key))),
            ok(),
        ),
        (
            "key url-safe alphabet",
            with("public_key", json!(URL_SAFE_NO_PAD.encode(key))),
            fails(InvalidPublicKey, "public_key"),
        ),
        (
            "key 31 bytes",
            with("public_key", json!(STANDARD.encode([1u8; 31]))),
            fails(InvalidPublicKey, "public_key"),
        ),
        (
            "key 33 bytes",
            with("public_key", json!(STANDARD.encode([1u8; 33]))),
            fails(InvalidPublicKey, "public_key"),
        ),
        (
            "key not base64",
            with("public_key", json!("not base64!")),
            fails(InvalidPublicKey, "public_key"),
        ),
        (
            "key number",
            with("public_key", json!(1)),
            fails(InvalidPublicKey, "public_key"),
        ),
        (
            "key missing",
            json!({"region": "us-east-1", "gpus": [gpu.clone()]}),
            fails(InvalidPublicKey, "public_key"),
        ),
        (
            "gpus empty",
            with("gpus", json!([])),
            fails(InvalidGpus, "gpus"),
        ),
        ("gpus 16", with("gpus", json!(vec![gpu.clone(); 16])), ok()),
        (
            "gpus 17",
            with("gpus", json!(vec![gpu.clone(); 17])),
            fails(InvalidGpus, "gpus"),
        ),
        (
            "gpus object",
            with("gpus", gpu.clone()),
            fails(InvalidGpus, "gpus"),
        ),
        (
            "gpus missing",
            json!({"region": "us-east-1", "public_key": STANDARD.encode(key)}),
            fails(InvalidGpus, "gpus"),
        ),
        (
            "gpu not object",
            with("gpus", json!([gpu.clone(), "RTX"])),
            fails(InvalidGpu, "gpus[1]"),
        ),
        (
            "gpu name missing",
            with_gpu("name", Value::Null),
            fails(InvalidGpu, "gpus[0].name"),
        ),
        (
            "gpu name 100",
            with_gpu("name", json!("g".repeat(100))),
            ok(),
        ),
        (
            "gpu name 101",
            with_gpu("name", json!("g".repeat(101))),
            fails(InvalidGpu, "gpus[0].name"),
        ),
        (
            "gpu vram 0",
            {
                let mut bad = gpu.clone();
                bad["vram_gb"] = json!(0);
                with("gpus", json!([gpu.clone(), gpu.clone(), bad]))
            },
            fails(InvalidGpu, "gpus[2].vram_gb"),
        ),
        ("gpu vram 4096", with_gpu("vram_gb", json!(4096)), ok()),
        (
            "gpu vram 4096.5",
            with_gpu("vram_gb", json!(4096.5)),
            fails(InvalidGpu, "gpus[0].vram_gb"),
        ),
        (
            "gpu vram missing",
            with_gpu("vram_gb", Value::Null),
            fails(InvalidGpu, "gpus[0].vram_gb"),
        ),
        (
            "gpu vram string",
            with_gpu("vram_gb", json!("24")),
            fails(InvalidGpu, "gpus[0].vram_gb"),
        ),
        (
            "gpu price 0",
            with_gpu("price_per_hour", json!(0)),
            fails(InvalidGpu, "gpus[0].price_per_hour"),
        ),
        (
            "gpu price negative",
            with_gpu("price_per_hour", json!(-1)),
            fails(InvalidGpu, "gpus[0].price_per_hour"),
        ),
        (
            "gpu price 100000",
            with_gpu("price_per_hour", json!(100000)),
            ok(),
        ),
        (
            "gpu price 100001",
            with_gpu("price_per_hour", json!(100001)),
            fails(InvalidGpu, "gpus[0].price_per_hour"),
        ),
        (
            "gpu price missing",
            with_gpu("price_per_hour", Value::Null),
            fails(InvalidGpu, "gpus[0].price_per_hour"),
        ),
        ("gpu uuid null", with_gpu("uuid", Value::Null), ok()),
        (
            "gpu uuid 128",
            with_gpu("uuid", json!("u".repeat(128))),
            ok(),
        ),
        (
            "gpu uuid 129",
            with_gpu("uuid", json!("u".repeat(129))),
            fails(InvalidGpu, "gpus[0].uuid"),
        ),
        (
            "gpu uuid number",
            with_gpu("uuid", json!(5)),
            fails(InvalidGpu, "gpus[0].uuid"),
        ),
        // Every GPU carries its enforced power limit (SPEC §8): the energy proofs' bound.
        (
            "gpu power limit missing",
            with_gpu("power_limit_watts", Value::Null),
            fails(InvalidGpu, "gpus[0].power_limit_watts"),
        ),
        (
            "gpu power limit 0",
            with_gpu("power_limit_watts", json!(0)),
            fails(InvalidGpu, "gpus[0].power_limit_watts"),
        ),
        (
            "gpu power limit negative",
            with_gpu("power_limit_watts", json!(-300)),
            fails(InvalidGpu, "gpus[0].power_limit_watts"),
        ),
        (
            "gpu power limit rounds to 0 mW",
            with_gpu("power_limit_watts", json!(0.0004)),
            fails(InvalidGpu, "gpus[0].power_limit_watts"),
        ),
        (
            "gpu power limit 1 mW",
            with_gpu("power_limit_watts", json!(0.001)),
            ok(),
        ),
        (
            "gpu power limit 2000 (the telemetry clamp)",
            with_gpu("power_limit_watts", json!(2000)),
            ok(),
        ),
        (
            "gpu power limit 2000.001",
            with_gpu("power_limit_watts", json!(2000.001)),
            fails(InvalidGpu, "gpus[0].power_limit_watts"),
        ),
        (
            "gpu power limit string",
            with_gpu("power_limit_watts", json!("450")),
            fails(InvalidGpu, "gpus[0].power_limit_watts"),
        ),
    ];
    let mut failures = Vec::new();
    for (name, body, expected) in &cases {
        check(name, validate_registration(body), expected, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );

    let registration =
        validate_registration(&with("public_key", json!(STANDARD_NO_PAD.encode(key)))).unwrap();
    assert_eq!(registration.public_key, STANDARD.encode(key));
    assert_eq!(
        registration.gpus[0].price_per_hour,
        Money::from_micros(500_000)
    );
    assert_eq!(registration.gpus[0].uuid.as_deref(), Some("GPU-1234"));
    assert_eq!(registration.gpus[0].power_limit_mw, 450_000);
    // NVML's milliwatts survive the trip through watts exactly.
    let mut odd = valid.clone();
    odd["gpus"][0]["power_limit_watts"] = json!(699.999);
    assert_eq!(
        validate_registration(&odd).unwrap().gpus[0].power_limit_mw,
        699_999
    );
    // The message says what is wrong, with what, and what to send instead.
    let missing = validate_registration(&with_gpu("power_limit_watts", Value::Null)).unwrap_err();
    assert!(
        missing
            .message
            .contains("`gpus[0].power_limit_watts` is required")
            && missing.message.contains("at most 2000"),
        "{missing:?}"
    );
}

#[test]
fn power_limit_declarations() {
    let cases: Vec<(&str, Value, Expected)> = vec![
        (
            "valid",
            json!({"gpus": [{"id": "gpu_a1", "power_limit_watts": 450}]}),
            ok(),
        ),
        ("empty", json!({"gpus": []}), fails(InvalidGpus, "gpus")),
        ("missing", json!({}), fails(InvalidGpus, "gpus")),
        (
            "no id",
            json!({"gpus": [{"power_limit_watts": 450}]}),
            fails(InvalidGpu, "gpus[0].id"),
        ),
        (
            "bad id",
            json!({"gpus": [{"id": "node_a1", "power_limit_watts": 450}]}),
            fails(InvalidGpu, "gpus[0].id"),
        ),
        (
            "twice",
            json!({"gpus": [{"id": "gpu_a1", "power_limit_watts": 450},
                            {"id": "gpu_a1", "power_limit_watts": 300}]}),
            fails(InvalidGpu, "gpus[1].id"),
        ),
        (
            "above the clamp",
            json!({"gpus": [{"id": "gpu_a1", "power_limit_watts": 2500}]}),
            fails(InvalidGpu, "gpus[0].power_limit_watts"),
        ),
        (
            "no limit",
            json!({"gpus": [{"id": "gpu_a1"}]}),
            fails(InvalidGpu, "gpus[0].power_limit_watts"),
        ),
        ("not an object", json!([1]), fails(InvalidBody, "")),
    ];
    let mut failures = Vec::new();
    for (name, body, expected) in &cases {
        check(name, validate_power_limits(body), expected, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let limits =
        validate_power_limits(&json!({"gpus": [{"id": "gpu_a1", "power_limit_watts": 699.5}]}))
            .unwrap();
    assert_eq!(limits[0].1, 699_500);
    assert_eq!(limits[0].0.as_str(), "gpu_a1");
}

#[test]
fn credit_amount_rules() {
    let cases: Vec<(&str, Value, Expected)> = vec![
        ("100", json!({"amount": 100.0}), ok()),
        ("negative correction", json!({"amount": -5}), ok()),
        ("1e9", json!({"amount": 1e9}), ok()),
        ("-1e9", json!({"amount": -1e9}), ok()),
        ("one micro", json!({"amount": 0.000001}), ok()),
        ("zero", json!({"amount": 0}), fails(InvalidAmount, "amount")),
        (
            "rounds to zero",
            json!({"amount": 1e-7}),
            fails(InvalidAmount, "amount"),
        ),
        (
            "above 1e9",
            json!({"amount": 1_000_000_000.01}),
            fails(InvalidAmount, "amount"),
        ),
        (
            "below -1e9",
            json!({"amount": -1_000_000_001}),
            fails(InvalidAmount, "amount"),
        ),
        (
            "string",
            json!({"amount": "100"}),
            fails(InvalidAmount, "amount"),
        ),
        ("missing", json!({}), fails(InvalidAmount, "amount")),
        (
            "null",
            json!({"amount": null}),
            fails(InvalidAmount, "amount"),
        ),
        ("body number", json!(100), fails(InvalidBody, "")),
    ];
    let mut failures = Vec::new();
    for (name, body, expected) in &cases {
        check(name, validate_credit_amount(body), expected, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        validate_credit_amount(&json!({"amount": 12.4})),
        Ok(Money::from_micros(12_400_000))
    );
}
