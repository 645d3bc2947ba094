//! The environment a job sees (SPEC §10): the manifest's `env`, plus defaults the customer
//! may override (`HOME`, `TMPDIR`, `XDG_CACHE_HOME` under the scratch, so that caches and
//! temporary files land on writable, size-capped storage), plus the platform's variables,
//! which the customer cannot set (the platform refuses `GP4U_*` and `NVIDIA_*` keys at
//! submission, and these are written last here).

use std::collections::BTreeMap;

use gp4u_proto::AssignmentManifest;

/// Where the job's directories are, as the job sees them.
#[derive(Debug, Clone, Copy)]
pub struct JobDirs<'a> {
    pub input: &'a str,
    pub output: &'a str,
    pub scratch: &'a str,
}

/// The directories of a containerised job.
pub const CONTAINER_DIRS: JobDirs<'static> = JobDirs {
    input: "/input",
    output: "/output",
    scratch: "/scratch",
};

/// `NVIDIA_VISIBLE_DEVICES` when the job has no NVIDIA GPU: the NVIDIA container runtime then
/// exposes no GPU even if the image asks for `all` (CUDA base images do).
pub const NO_NVIDIA_DEVICES: &str = "void";

/// The job's variables, sorted by name. `nvidia_uuid`: the assigned GPU when the job gets an
/// NVIDIA device (its UUID only); `None` hides every GPU from the NVIDIA runtime.
pub fn job_env(
    manifest: &AssignmentManifest,
    dirs: &JobDirs<'_>,
    nvidia_uuid: Option<&str>,
) -> BTreeMap<String, String> {
    let scratch = dirs.scratch.trim_end_matches('/');
    let mut env = BTreeMap::from([
        ("HOME".to_string(), format!("{scratch}/home")),
        ("TMPDIR".to_string(), format!("{scratch}/tmp")),
        ("XDG_CACHE_HOME".to_string(), format!("{scratch}/.cache")),
    ]);
    env.extend(manifest.env.clone());
    for (key, value) in [
        ("GP4U_JOB_ID", manifest.job_id.as_str()),
        ("GP4U_INPUT_DIR", dirs.input),
        ("GP4U_OUTPUT_DIR", dirs.output),
        ("GP4U_SCRATCH_DIR", dirs.scratch),
        (
            "NVIDIA_VISIBLE_DEVICES",
            nvidia_uuid.unwrap_or(NO_NVIDIA_DEVICES),
        ),
    ] {
        env.insert(key.to_string(), value.to_string());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(env: &[(&str, &str)]) -> AssignmentManifest {
        serde_json::from_value(serde_json::json!({
            "job_id": "job_e", "docker_image": "img", "docker_image_sha256": "ab".repeat(32),
            "gpu_id": "gpu_g", "gpu_uuid": "GPU-1", "ram_limit_gb": 1.0,
            "env": env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            "command": [], "inputs": [], "expected_duration_hours": 0.1,
            "kill_after_seconds": 396, "telemetry_interval_seconds": 10
        }))
        .unwrap_or_else(|error| panic!("{error}"))
    }

    #[test]
    fn defaults_are_under_scratch_and_the_customer_may_override_them() {
        let env = job_env(&manifest(&[]), &CONTAINER_DIRS, Some("GPU-1"));
        assert_eq!(env["HOME"], "/scratch/home");
        assert_eq!(env["TMPDIR"], "/scratch/tmp");
        assert_eq!(env["XDG_CACHE_HOME"], "/scratch/.cache");
        assert_eq!(env["GP4U_JOB_ID"], "job_e");
        assert_eq!(env["GP4U_INPUT_DIR"], "/input");
        assert_eq!(env["GP4U_OUTPUT_DIR"], "/output");
        assert_eq!(env["GP4U_SCRATCH_DIR"], "/scratch");
        assert_eq!(env["NVIDIA_VISIBLE_DEVICES"], "GPU-1");

        let custom = job_env(
            &manifest(&[("HOME", "/output/home"), ("EPOCHS", "3")]),
            &CONTAINER_DIRS,
            None,
        );
        assert_eq!(custom["HOME"], "/output/home");
        assert_eq!(custom["EPOCHS"], "3");
        assert_eq!(custom["NVIDIA_VISIBLE_DEVICES"], "void");
    }

    #[test]
    fn the_platform_variables_win_over_the_manifest() {
        // The server refuses these keys; an agent must not trust that alone.
        let env = job_env(
            &manifest(&[
                ("GP4U_JOB_ID", "job_other"),
                ("NVIDIA_VISIBLE_DEVICES", "all"),
            ]),
            &CONTAINER_DIRS,
            None,
        );
        assert_eq!(env["GP4U_JOB_ID"], "job_e");
        assert_eq!(env["NVIDIA_VISIBLE_DEVICES"], "void");
    }
}
