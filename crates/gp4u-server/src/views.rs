//! Records to wire views.

use gp4u_core::money::{Hours, Money};
use gp4u_proto::{GpuBrief, GpuView, JobView, UserView};
use gp4u_store::{GpuRecord, JobRecord, UserRecord};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Unix milliseconds as RFC 3339 (UTC).
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

pub fn money(value: Money) -> f64 {
    value.display_f64()
}

/// A price per hour shown with full (micro-unit) precision rather than rounded to the cent.
pub fn price(value: Money) -> f64 {
    value.micros() as f64 / 1_000_000.0
}

pub fn hours(value: Hours) -> f64 {
    value.as_f64()
}

pub fn job_view(job: &JobRecord) -> JobView {
    let gpu = match (&job.gpu_name, &job.gpu_region) {
        (Some(name), Some(region)) => Some(GpuBrief {
            name: name.clone(),
            region: region.clone(),
        }),
        _ => None,
    };
    JobView {
        id: job.id.to_string(),
        name: job.name.clone(),
        owner_id: job.owner_id.to_string(),
        status: job.state.status,
        failure_reason: job.state.failure_reason,
        ended_by: job.state.ended_by,
        cost_estimate: money(job.cost_estimate),
        price_per_hour: price(job.price_per_hour),
        gpu,
        gpu_id: job.state.gpu_id.as_ref().map(ToString::to_string),
        node_id: job.state.node_id.as_ref().map(ToString::to_string),
        placement: job.placement.clone(),
        workload_type: job.manifest.workload_type,
        expected_duration_hours: hours(job.manifest.expected_duration),
        docker_image: job.manifest.docker_image.clone(),
        docker_image_sha256: job.manifest.docker_image_sha256.clone(),
        max_retries: job.manifest.max_retries,
        ram_limit_gb: job.manifest.ram_limit_gb,
        shm_gb: job.manifest.shm_gb(),
        scratch_gb: job.manifest.scratch_gb(),
        network: job.manifest.network,
        created_at: rfc3339(job.created_at_ms),
        started_at: job.state.started_at_ms.map(rfc3339),
        ended_at: job.state.ended_at_ms.map(rfc3339),
        exit_code: job.state.exit_code,
        latest_metrics: job.latest_metrics.clone(),
        anomalies: job.anomalies.clone(),
        energy_kwh: job.energy_kwh,
        carbon_kg: job.carbon_kg,
        renewable_pct: job.renewable_pct,
        carbon_credit_eligible: job.carbon_credit_eligible,
        inputs: job
            .manifest
            .inputs
            .iter()
            .map(ToString::to_string)
            .collect(),
        output_sha256: job.blobs.output_sha256.clone(),
        output_bytes: job.blobs.output_bytes,
        log_bytes: job.blobs.log_bytes,
        log_truncated: job.blobs.log_truncated,
    }
}

pub fn gpu_view(gpu: &GpuRecord) -> GpuView {
    GpuView {
        id: gpu.id.to_string(),
        name: gpu.name.clone(),
        vram_gb: gpu.vram_gb,
        price_per_hour: price(gpu.price_per_hour),
        region: gpu.region.clone(),
        status: gpu.status,
        node_id: gpu.node_id.to_string(),
        trust_score: gpu.trust_score,
        emulated: gpu.emulated,
        driver_version: gpu.driver_version.clone(),
        power_limit_watts: gpu.power_limit_mw.map(gp4u_core::energy::mw_to_watts),
    }
}

pub fn user_view(user: &UserRecord) -> UserView {
    UserView {
        id: user.id.to_string(),
        name: user.name.clone(),
        role: user.role,
        clearance: user.clearance,
        active: user.active,
        university: user.university,
        region: user.region.clone(),
        credit: money(user.credit),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            super::rfc3339(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
    }
}
