//! A provider host's posture (SPEC §10): the facts of its container engine and of the job
//! runtime its agent gives, reported at registration and at every start of the agent, shown
//! on the node, weighed by placement (a node without an egress filter takes no `public` job
//! unless its provider accepted unfiltered egress; none takes more scratch than it offers),
//! and sealed in every Veritas record of a job that ran there.
//!
//! Everything here is the provider's own statement, read by its agent from its engine: the
//! platform bounds and labels it, it cannot check it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::manifest::{FieldError, JobNetwork, ValidationCode};

/// Longest text field (an engine version, say).
pub const MAX_TEXT_CHARS: usize = 64;

/// What the agent reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct HostPosture {
    /// `docker`, or `process` (no isolation: development only).
    pub runtime: String,
    /// The engine's version (`docker info`), if any.
    pub engine_version: Option<String>,
    /// The engine applies its default seccomp profile to containers.
    pub seccomp: bool,
    pub apparmor: bool,
    pub selinux: bool,
    /// The engine remaps container root to an unprivileged host user.
    pub userns_remap: bool,
    /// The engine itself runs without root.
    pub rootless: bool,
    /// 1 or 2; `None` when unknown.
    pub cgroup_version: Option<u8>,
    /// `iptables` (installed and checked by the agent) or `none`.
    pub egress_filter: String,
    /// IPv6 from job networks is dropped by ip6tables as well (it is off in every job anyway).
    pub egress_ipv6_filtered: bool,
    /// The provider runs `public` jobs without the filter (`--allow-unfiltered-egress`).
    pub unfiltered_egress_allowed: bool,
    /// How `/scratch` sizes are held: `loop` (enforced by the kernel) or `watched`.
    pub scratch_quota: String,
    /// The most `/scratch` a job may ask for on this node, GB.
    pub max_scratch_gb: f64,
    /// CPUs each job gets.
    pub cpus_per_job: f64,
    /// The ulimits each job gets (`null`: unlimited).
    pub ulimits: PostureUlimits,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct PostureUlimits {
    pub nofile: Option<u64>,
    pub memlock: Option<u64>,
    pub stack: Option<u64>,
}

impl HostPosture {
    /// Whether this node can run a job with this network and scratch size.
    pub fn accepts(&self, network: JobNetwork, scratch_gb: f64) -> bool {
        scratch_gb <= self.max_scratch_gb && (network == JobNetwork::None || self.public_egress())
    }

    /// Whether `public` jobs run here: behind the egress filter, or unfiltered with the
    /// provider's consent (the unisolated process runtime needs that consent too).
    pub fn public_egress(&self) -> bool {
        self.egress_filter == "iptables" || self.unfiltered_egress_allowed
    }

    /// Why this node cannot run such a job, for people; `None` when it can.
    pub fn refusal(&self, network: JobNetwork, scratch_gb: f64) -> Option<String> {
        if scratch_gb > self.max_scratch_gb {
            return Some(format!(
                "its node offers at most {} GB of /scratch and the job asks for {scratch_gb}",
                self.max_scratch_gb
            ));
        }
        if network == JobNetwork::Public && !self.public_egress() {
            return Some(
                "its node has no egress filter and takes only `network: \"none\"` jobs".to_owned(),
            );
        }
        None
    }
}

fn error(field: &str, message: String) -> FieldError {
    FieldError::new(ValidationCode::InvalidPosture, field, message)
}

fn flag(object: &serde_json::Map<String, Value>, key: &str) -> Result<bool, FieldError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(value)) => Ok(*value),
        Some(other) => Err(error(
            &format!("posture.{key}"),
            format!("`posture.{key}` must be true or false, got {other}"),
        )),
    }
}

fn one_of(
    object: &serde_json::Map<String, Value>,
    key: &str,
    allowed: &[&str],
) -> Result<String, FieldError> {
    match object.get(key).and_then(Value::as_str) {
        Some(text) if allowed.contains(&text) => Ok(text.to_owned()),
        _ => Err(error(
            &format!("posture.{key}"),
            format!("`posture.{key}` must be one of {allowed:?}"),
        )),
    }
}

fn number(object: &serde_json::Map<String, Value>, key: &str, max: f64) -> Result<f64, FieldError> {
    match object.get(key).and_then(Value::as_f64) {
        Some(value) if value > 0.0 && value <= max => Ok(value),
        _ => Err(error(
            &format!("posture.{key}"),
            format!("`posture.{key}` must be a number greater than 0 and at most {max}"),
        )),
    }
}

fn limit(object: &serde_json::Map<String, Value>, key: &str) -> Result<Option<u64>, FieldError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            error(
                &format!("posture.ulimits.{key}"),
                format!(
                    "`posture.ulimits.{key}` must be a whole number or null (unlimited), got {value}"
                ),
            )
        }),
    }
}

/// Validates a reported posture (the `posture` of a registration, or the body of
/// `PUT /api/providers/{nodeId}/posture`). Unknown fields are ignored.
pub fn validate_posture(value: &Value) -> Result<HostPosture, FieldError> {
    let Some(object) = value.as_object() else {
        return Err(error(
            "posture",
            "`posture` must be an object (what the agent reads of its engine)".to_owned(),
        ));
    };
    let engine_version = match object.get("engine_version") {
        None | Some(Value::Null) => None,
        Some(Value::String(text))
            if !text.is_empty()
                && text.chars().count() <= MAX_TEXT_CHARS
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-+~".contains(c)) =>
        {
            Some(text.clone())
        }
        Some(other) => {
            return Err(error(
                "posture.engine_version",
                format!(
                    "`posture.engine_version` must be 1–{MAX_TEXT_CHARS} characters of letters, digits and ._-+~, got {other}"
                ),
            ));
        }
    };
    let cgroup_version = match object.get("cgroup_version") {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_u64() {
            Some(version @ (1 | 2)) => Some(version as u8),
            _ => {
                return Err(error(
                    "posture.cgroup_version",
                    format!("`posture.cgroup_version` must be 1, 2 or null, got {value}"),
                ));
            }
        },
    };
    let ulimits = match object.get("ulimits") {
        None | Some(Value::Null) => PostureUlimits::default(),
        Some(Value::Object(ulimits)) => PostureUlimits {
            nofile: limit(ulimits, "nofile")?,
            memlock: limit(ulimits, "memlock")?,
            stack: limit(ulimits, "stack")?,
        },
        Some(other) => {
            return Err(error(
                "posture.ulimits",
                format!("`posture.ulimits` must be an object, got {other}"),
            ));
        }
    };
    Ok(HostPosture {
        runtime: one_of(object, "runtime", &["docker", "process"])?,
        engine_version,
        seccomp: flag(object, "seccomp")?,
        apparmor: flag(object, "apparmor")?,
        selinux: flag(object, "selinux")?,
        userns_remap: flag(object, "userns_remap")?,
        rootless: flag(object, "rootless")?,
        cgroup_version,
        egress_filter: one_of(object, "egress_filter", &["iptables", "none"])?,
        egress_ipv6_filtered: flag(object, "egress_ipv6_filtered")?,
        unfiltered_egress_allowed: flag(object, "unfiltered_egress_allowed")?,
        scratch_quota: one_of(object, "scratch_quota", &["loop", "watched"])?,
        max_scratch_gb: number(object, "max_scratch_gb", crate::manifest::MAX_SCRATCH_GB)?,
        cpus_per_job: number(object, "cpus_per_job", 4096.0)?,
        ulimits,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn reported() -> Value {
        json!({"runtime": "docker", "engine_version": "20.10.24+dfsg1", "seccomp": true,
            "apparmor": false, "selinux": false, "userns_remap": false, "rootless": false,
            "cgroup_version": 1, "egress_filter": "iptables", "egress_ipv6_filtered": true,
            "unfiltered_egress_allowed": false, "scratch_quota": "loop", "max_scratch_gb": 100,
            "cpus_per_job": 2, "ulimits": {"nofile": 65536, "memlock": null, "stack": 67108864},
            "future_field": "ignored"})
    }

    #[test]
    fn a_posture_round_trips_and_decides_what_the_node_takes() {
        let posture = validate_posture(&reported()).unwrap();
        assert_eq!(posture.ulimits.memlock, None);
        assert_eq!(posture.cgroup_version, Some(1));
        assert!(posture.accepts(JobNetwork::Public, 100.0));
        assert!(!posture.accepts(JobNetwork::Public, 100.5));
        let unfiltered = HostPosture {
            egress_filter: "none".into(),
            ..posture.clone()
        };
        assert!(!unfiltered.accepts(JobNetwork::Public, 1.0));
        assert!(unfiltered.accepts(JobNetwork::None, 1.0));
        assert!(
            unfiltered
                .refusal(JobNetwork::Public, 1.0)
                .unwrap()
                .contains("egress filter")
        );
        let consented = HostPosture {
            unfiltered_egress_allowed: true,
            ..unfiltered
        };
        assert!(consented.accepts(JobNetwork::Public, 1.0));
        let text = serde_json::to_value(&posture).unwrap();
        assert_eq!(validate_posture(&text).unwrap(), posture);
    }

    #[test]
    fn bad_postures_name_their_field() {
        for (key, value, field) in [
            ("runtime", json!("kubernetes"), "posture.runtime"),
            ("egress_filter", json!(true), "posture.egress_filter"),
            ("seccomp", json!("yes"), "posture.seccomp"),
            ("cgroup_version", json!(3), "posture.cgroup_version"),
            (
                "engine_version",
                json!("20.10; rm -rf /"),
                "posture.engine_version",
            ),
            ("max_scratch_gb", json!(0), "posture.max_scratch_gb"),
            ("ulimits", json!({"nofile": -1}), "posture.ulimits.nofile"),
        ] {
            let mut body = reported();
            body[key] = value;
            let error = validate_posture(&body).unwrap_err();
            assert_eq!(error.field, field, "{key}");
            assert_eq!(error.code, ValidationCode::InvalidPosture);
        }
        assert_eq!(validate_posture(&json!([])).unwrap_err().field, "posture");
    }
}
