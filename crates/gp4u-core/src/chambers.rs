//! The chambers' read models: pure folds over the event stream.
//!
//! Each chamber keeps a small model that it updates from events. The bus runner (gp4u-bus)
//! stores the model together with the chamber's cursor in one transaction, which is what makes
//! delivery exactly-once; here there is only `apply`. Events a chamber does not know, or whose
//! payload it cannot read, are counted and skipped: one bad event must never stop a chamber.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::events::{JobCreated, NodeRegistered, TOPIC_JOB_CREATED, TOPIC_NODE_REGISTERED};

/// A read model that folds events.
pub trait Chamber: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The subscriber name; also the key of its durable cursor.
    const NAME: &'static str;
    fn apply(&mut self, topic: &str, payload: &Value);
    /// A small JSON summary for `GET /api/admin/chambers`.
    fn summary(&self) -> Value;
}

/// Counters every chamber keeps about its own input.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Intake {
    pub applied: u64,
    pub ignored: u64,
    pub malformed: u64,
}

impl Intake {
    fn read<T: DeserializeOwned>(&mut self, payload: &Value) -> Option<T> {
        match T::deserialize(payload) {
            Ok(value) => {
                self.applied += 1;
                Some(value)
            }
            Err(_) => {
                self.malformed += 1;
                None
            }
        }
    }
}

const UNKNOWN: &str = "unknown";

fn job_model_key(created: &JobCreated) -> String {
    let model = created
        .gpu_name
        .clone()
        .or_else(|| created.requirement.as_ref().and_then(|r| r.model.clone()))
        .unwrap_or_else(|| "any".into());
    let region = job_region(created).unwrap_or(UNKNOWN).to_string();
    format!("{model}@{region}")
}

/// The region a job will run in, as far as is known at creation.
fn job_region(created: &JobCreated) -> Option<&str> {
    created.gpu_region.as_deref().or_else(|| {
        created
            .requirement
            .as_ref()
            .and_then(|r| r.region.as_deref())
    })
}

/// Demand for one GPU model in one region.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DemandSignal {
    pub jobs: u64,
    pub gpu_micro_hours: i64,
    pub last_at_ms: i64,
}

/// Registered VRAM in one region.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VramAvailability {
    pub gpus: u64,
    pub total_vram_gb: f64,
    pub largest_gpu_vram_gb: f64,
}

/// Mnemo: memory of demand (jobs per GPU model and region) and of VRAM capacity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Mnemo {
    pub intake: Intake,
    /// Key: `"<gpu model>@<region>"`.
    pub demand: BTreeMap<String, DemandSignal>,
    /// Key: region.
    pub vram: BTreeMap<String, VramAvailability>,
    /// Key: node id. Each provider node's record (stage 5): what Atlas scores uptime and
    /// provenance with. `serde(default)` so that a model stored before stage 5 still loads.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderRecord>,
}

/// What Mnemo remembers of one provider node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderRecord {
    /// Jobs that ended COMPLETE on the node.
    pub completed: u64,
    /// Jobs the node dropped or hid (JOB_DROPPED_UNEXPECTEDLY, VISIBILITY_BLOCKED slashes).
    pub dropped: u64,
    /// Veritas records of jobs that ended on the node, and how many of them are reproducible.
    pub veritas_records: u64,
    pub reproducible: u64,
}

/// Outbox topic of a Veritas record (stage 5).
pub const TOPIC_VERITAS_RECORDED: &str = "veritas.recorded";
/// Outbox topic of a slash (stage 4).
pub const TOPIC_TUTELA_SLASH: &str = "tutela.slash";

/// How long a node must have been observed before its uptime counts (Atlas treats a shorter
/// history as unknown, i.e. neutral): ten minutes.
pub const MIN_PRESENCE_OBSERVED_MS: i64 = 10 * 60 * 1000;

/// Two agent contacts at most this far apart count as the node being present in between:
/// the longest assignment long poll (60 s) and 30 s of slack for the agent's next request.
pub const PRESENCE_GAP_MS: i64 = 90_000;

/// A node's presence as the store records it from its agent's contacts (assignment polls).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The first contact since presence is recorded; `None` before any.
    pub first_seen_at_ms: Option<i64>,
    pub last_seen_at_ms: Option<i64>,
    /// Time between contacts at most the presence gap apart, summed.
    pub online_ms: i64,
}

impl Presence {
    /// The time observed: from the first contact to `now_ms`.
    pub fn observed_ms(&self, now_ms: i64) -> i64 {
        self.first_seen_at_ms
            .map_or(0, |first| now_ms.saturating_sub(first).max(0))
    }

    /// Time present up to `now_ms`: the recorded time, plus the time since the last contact
    /// while that is within [`PRESENCE_GAP_MS`] (the agent is, as far as anyone knows, there).
    pub fn online_ms(&self, now_ms: i64) -> i64 {
        let current = self.last_seen_at_ms.map_or(0, |last| {
            let since = now_ms.saturating_sub(last);
            if (0..=PRESENCE_GAP_MS).contains(&since) {
                since
            } else {
                0
            }
        });
        self.online_ms.max(0).saturating_add(current)
    }

    /// Uptime: the share of the observed time the agent was present, in [0, 1]; `None`
    /// until the node has been observed for [`MIN_PRESENCE_OBSERVED_MS`].
    pub fn uptime(&self, now_ms: i64) -> Option<f64> {
        let observed = self.observed_ms(now_ms);
        (observed >= MIN_PRESENCE_OBSERVED_MS)
            .then(|| (self.online_ms(now_ms) as f64 / observed as f64).clamp(0.0, 1.0))
    }
}

/// Atlas's uptime figure for a node: the share of observed time its agent was present,
/// times the share of its jobs it did not drop; either alone when only it is known, `None`
/// (neutral) when neither is.
pub fn uptime_score(presence_uptime: Option<f64>, completion_rate: Option<f64>) -> Option<f64> {
    match (presence_uptime, completion_rate) {
        (Some(present), Some(kept)) => Some(present * kept),
        (one, other) => one.or(other),
    }
}

impl ProviderRecord {
    /// Completed ÷ (completed + dropped); `None` before the node has a record.
    pub fn completion_rate(&self) -> Option<f64> {
        let total = self.completed + self.dropped;
        (total > 0).then(|| self.completed as f64 / total as f64)
    }

    /// Reproducible ÷ Veritas records; `None` before the first record.
    pub fn provenance(&self) -> Option<f64> {
        (self.veritas_records > 0).then(|| self.reproducible as f64 / self.veritas_records as f64)
    }
}

impl Chamber for Mnemo {
    const NAME: &'static str = "mnemo";

    fn apply(&mut self, topic: &str, payload: &Value) {
        match topic {
            TOPIC_JOB_CREATED => {
                let Some(created) = self.intake.read::<JobCreated>(payload) else {
                    return;
                };
                let signal = self.demand.entry(job_model_key(&created)).or_default();
                signal.jobs += 1;
                signal.gpu_micro_hours = signal
                    .gpu_micro_hours
                    .saturating_add(created.expected_duration_micro_hours);
                signal.last_at_ms = signal.last_at_ms.max(created.created_at_ms);
            }
            TOPIC_NODE_REGISTERED => {
                let Some(node) = self.intake.read::<NodeRegistered>(payload) else {
                    return;
                };
                let region = self.vram.entry(node.region).or_default();
                for gpu in node.gpus {
                    region.gpus += 1;
                    region.total_vram_gb += gpu.vram_gb;
                    region.largest_gpu_vram_gb = region.largest_gpu_vram_gb.max(gpu.vram_gb);
                }
            }
            TOPIC_VERITAS_RECORDED => {
                let record = &payload["record"];
                let Some(node) = record["node_id"].as_str() else {
                    // A job that never reached a node says nothing about providers.
                    self.intake.ignored += 1;
                    return;
                };
                self.intake.applied += 1;
                let provider = self.providers.entry(node.to_owned()).or_default();
                provider.veritas_records += 1;
                if record["reproducible"].as_bool() == Some(true) {
                    provider.reproducible += 1;
                }
                if record["status"].as_str() == Some("COMPLETE") {
                    provider.completed += 1;
                }
            }
            TOPIC_TUTELA_SLASH => {
                let (Some(node), Some(kind)) =
                    (payload["node_id"].as_str(), payload["kind"].as_str())
                else {
                    self.intake.malformed += 1;
                    return;
                };
                self.intake.applied += 1;
                if matches!(kind, "JOB_DROPPED_UNEXPECTEDLY" | "VISIBILITY_BLOCKED") {
                    self.providers.entry(node.to_owned()).or_default().dropped += 1;
                }
            }
            _ => self.intake.ignored += 1,
        }
    }

    fn summary(&self) -> Value {
        let hottest = self
            .demand
            .iter()
            .max_by_key(|(_, signal)| signal.jobs)
            .map(|(key, signal)| json!({"model_region": key, "jobs": signal.jobs}));
        json!({
            "demand_signals": self.demand.len(),
            "hottest": hottest,
            "vram_by_region": self.vram,
            "providers_with_a_record": self.providers.len(),
            "intake": self.intake,
        })
    }
}

/// Outbox topic of a job's energy and carbon accounting (stage 5), sealed by Obsidian.
pub const TOPIC_JOB_ENERGY: &str = "job.energy";

/// Energy and carbon summed over jobs. kWh and kg are sums of each job's figures (each exact
/// to the mW·ms in its `job.energy` event); renewable energy is *declared* by providers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct CarbonTotals {
    #[cfg_attr(feature = "schema", schema(required = true))]
    pub jobs: u64,
    #[cfg_attr(feature = "schema", schema(required = true))]
    pub energy_kwh: f64,
    #[cfg_attr(feature = "schema", schema(required = true))]
    pub carbon_kg: f64,
    /// Σ kWh × the node's declared renewable share.
    #[cfg_attr(feature = "schema", schema(required = true))]
    pub renewable_kwh_declared: f64,
    /// Jobs on nodes declaring at least 80 % renewable power, and their energy and carbon.
    #[cfg_attr(feature = "schema", schema(required = true))]
    pub credit_eligible_jobs: u64,
    #[cfg_attr(feature = "schema", schema(required = true))]
    pub credit_eligible_kwh: f64,
    #[cfg_attr(feature = "schema", schema(required = true))]
    pub credit_eligible_carbon_kg: f64,
}

impl CarbonTotals {
    fn add(&mut self, job: &JobEnergy) {
        self.jobs += 1;
        self.energy_kwh += job.energy_kwh;
        self.carbon_kg += job.carbon_kg;
        self.renewable_kwh_declared += job.energy_kwh * job.renewable_pct.clamp(0.0, 100.0) / 100.0;
        if job.carbon_credit_eligible {
            self.credit_eligible_jobs += 1;
            self.credit_eligible_kwh += job.energy_kwh;
            self.credit_eligible_carbon_kg += job.carbon_kg;
        }
    }

    /// Adds another total (e.g. a provider's nodes).
    pub fn merge(&mut self, other: &CarbonTotals) {
        self.jobs += other.jobs;
        self.energy_kwh += other.energy_kwh;
        self.carbon_kg += other.carbon_kg;
        self.renewable_kwh_declared += other.renewable_kwh_declared;
        self.credit_eligible_jobs += other.credit_eligible_jobs;
        self.credit_eligible_kwh += other.credit_eligible_kwh;
        self.credit_eligible_carbon_kg += other.credit_eligible_carbon_kg;
    }
}

/// The grid factor a region's jobs were last accounted with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct GridFactorUsed {
    pub g_co2e_per_kwh: f64,
    pub source: String,
    pub as_of: String,
}

/// What Energy reads from a `job.energy` event.
#[derive(Debug, Clone, Deserialize)]
struct JobEnergy {
    #[serde(default)]
    node_id: Option<String>,
    #[serde(default)]
    region: Option<String>,
    energy_kwh: f64,
    carbon_kg: f64,
    #[serde(default)]
    renewable_pct: f64,
    #[serde(default)]
    carbon_credit_eligible: bool,
    #[serde(default)]
    grid_factor: Option<GridFactorEvent>,
}

#[derive(Debug, Clone, Deserialize)]
struct GridFactorEvent {
    region: String,
    g_co2e_per_kwh: f64,
    source: String,
    as_of: String,
}

/// Energy: carbon accounting (stage 5). Folds every job's `job.energy` event into totals for
/// the platform, per region and per provider node, with carbon-credit eligibility (a node
/// declaring ≥ 80 % renewable power; declared, not metered) and the grid factor each region
/// was last accounted with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Energy {
    pub intake: Intake,
    pub total: CarbonTotals,
    /// Key: region (`unknown` when the job's region was not known).
    pub regions: BTreeMap<String, CarbonTotals>,
    /// Key: node id.
    pub nodes: BTreeMap<String, CarbonTotals>,
    /// Key: region.
    pub grid_factors: BTreeMap<String, GridFactorUsed>,
}

impl Chamber for Energy {
    const NAME: &'static str = "energy";

    fn apply(&mut self, topic: &str, payload: &Value) {
        if topic != TOPIC_JOB_ENERGY {
            self.intake.ignored += 1;
            return;
        }
        let Some(job) = self.intake.read::<JobEnergy>(payload) else {
            return;
        };
        let sane = |value: f64| value.is_finite() && value >= 0.0;
        if !(sane(job.energy_kwh) && sane(job.carbon_kg) && job.renewable_pct.is_finite()) {
            self.intake.applied -= 1;
            self.intake.malformed += 1;
            return;
        }
        // The job's region, not the factor's: a region missing from the table is accounted
        // with the `default` factor but is still its own region.
        let region = job.region.clone().unwrap_or_else(|| UNKNOWN.to_owned());
        self.total.add(&job);
        self.regions.entry(region.clone()).or_default().add(&job);
        if let Some(node) = &job.node_id {
            self.nodes.entry(node.clone()).or_default().add(&job);
        }
        if let Some(factor) = job.grid_factor
            && factor.region == region
        {
            self.grid_factors.insert(
                factor.region,
                GridFactorUsed {
                    g_co2e_per_kwh: factor.g_co2e_per_kwh,
                    source: factor.source,
                    as_of: factor.as_of,
                },
            );
        }
    }

    fn summary(&self) -> Value {
        json!({
            "total": self.total,
            "regions": self.regions,
            "nodes_with_jobs": self.nodes.len(),
            "intake": self.intake,
        })
    }
}

/// Routing candidates in one region.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegionRouting {
    /// GPUs registered in the region: the candidates Atlas can route to.
    pub candidate_gpus: BTreeSet<String>,
    /// Jobs pinned to a GPU in this region.
    pub pinned_jobs: u64,
    /// Jobs that asked for this region without pinning a GPU.
    pub requested_jobs: u64,
}

/// Aetherion: routing candidates per region.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Aetherion {
    pub intake: Intake,
    pub regions: BTreeMap<String, RegionRouting>,
}

impl Chamber for Aetherion {
    const NAME: &'static str = "aetherion";

    fn apply(&mut self, topic: &str, payload: &Value) {
        match topic {
            TOPIC_JOB_CREATED => {
                let Some(created) = self.intake.read::<JobCreated>(payload) else {
                    return;
                };
                let Some(region) = job_region(&created) else {
                    return;
                };
                let routing = self.regions.entry(region.to_string()).or_default();
                if created.gpu_id.is_some() {
                    routing.pinned_jobs += 1;
                } else {
                    routing.requested_jobs += 1;
                }
            }
            TOPIC_NODE_REGISTERED => {
                let Some(node) = self.intake.read::<NodeRegistered>(payload) else {
                    return;
                };
                let routing = self.regions.entry(node.region).or_default();
                routing
                    .candidate_gpus
                    .extend(node.gpus.into_iter().map(|gpu| gpu.gpu_id.into_string()));
            }
            _ => self.intake.ignored += 1,
        }
    }

    fn summary(&self) -> Value {
        let regions: BTreeMap<&String, Value> = self
            .regions
            .iter()
            .map(|(region, routing)| {
                (
                    region,
                    json!({
                        "candidate_gpus": routing.candidate_gpus.len(),
                        "pinned_jobs": routing.pinned_jobs,
                        "requested_jobs": routing.requested_jobs,
                    }),
                )
            })
            .collect();
        json!({"regions": regions, "intake": self.intake})
    }
}

/// Edge demand from one customer region.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EdgeDemand {
    pub jobs: u64,
    /// Jobs from this region while no GPU was registered in it: where capacity is missing.
    pub without_local_capacity: u64,
}

/// Outerim: demand at the edge, from customers' regions, and where it has no local capacity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outerim {
    pub intake: Intake,
    /// Regions with at least one registered GPU.
    pub regions_with_capacity: BTreeSet<String>,
    /// Key: the customer's region.
    pub demand: BTreeMap<String, EdgeDemand>,
    /// Jobs whose customer region is unknown.
    pub jobs_without_region: u64,
}

impl Chamber for Outerim {
    const NAME: &'static str = "outerim";

    fn apply(&mut self, topic: &str, payload: &Value) {
        match topic {
            TOPIC_JOB_CREATED => {
                let Some(created) = self.intake.read::<JobCreated>(payload) else {
                    return;
                };
                let Some(region) = created
                    .customer_region
                    .as_deref()
                    .or_else(|| job_region(&created))
                else {
                    self.jobs_without_region += 1;
                    return;
                };
                let local = self.regions_with_capacity.contains(region);
                let demand = self.demand.entry(region.to_string()).or_default();
                demand.jobs += 1;
                if !local {
                    demand.without_local_capacity += 1;
                }
            }
            TOPIC_NODE_REGISTERED => {
                let Some(node) = self.intake.read::<NodeRegistered>(payload) else {
                    return;
                };
                if !node.gpus.is_empty() {
                    self.regions_with_capacity.insert(node.region);
                }
            }
            _ => self.intake.ignored += 1,
        }
    }

    fn summary(&self) -> Value {
        let underserved: Vec<Value> = self
            .demand
            .iter()
            .filter(|(_, demand)| demand.without_local_capacity > 0)
            .map(|(region, demand)| {
                json!({"region": region, "jobs_without_local_capacity": demand.without_local_capacity})
            })
            .collect();
        json!({
            "customer_regions": self.demand.len(),
            "underserved_regions": underserved,
            "regions_with_capacity": self.regions_with_capacity,
            "jobs_without_region": self.jobs_without_region,
            "intake": self.intake,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mnemo_keeps_each_providers_uptime_and_provenance() {
        let mut mnemo = Mnemo::default();
        let veritas = |node: Option<&str>, status: &str, reproducible: bool| json!({"job_id": "job_a", "record": {"node_id": node, "status": status, "reproducible": reproducible}});
        assert_eq!(mnemo.providers.get("node_a"), None);
        mnemo.apply(
            TOPIC_VERITAS_RECORDED,
            &veritas(Some("node_a"), "COMPLETE", true),
        );
        mnemo.apply(
            TOPIC_VERITAS_RECORDED,
            &veritas(Some("node_a"), "COMPLETE", true),
        );
        mnemo.apply(
            TOPIC_VERITAS_RECORDED,
            &veritas(Some("node_a"), "FAILED", false),
        );
        mnemo.apply(
            TOPIC_TUTELA_SLASH,
            &json!({"node_id": "node_a", "kind": "JOB_DROPPED_UNEXPECTEDLY"}),
        );
        // A soft slash is not a drop; a job that never ran names no node.
        mnemo.apply(
            TOPIC_TUTELA_SLASH,
            &json!({"node_id": "node_a", "kind": "VRAM_OVERCLAIM"}),
        );
        mnemo.apply(TOPIC_VERITAS_RECORDED, &veritas(None, "CANCELLED", false));
        let record = mnemo.providers["node_a"];
        assert_eq!(
            record,
            ProviderRecord {
                completed: 2,
                dropped: 1,
                veritas_records: 3,
                reproducible: 2
            }
        );
        assert_eq!(record.completion_rate(), Some(2.0 / 3.0));
        assert_eq!(record.provenance(), Some(2.0 / 3.0));
        assert_eq!(ProviderRecord::default().completion_rate(), None);
        // A model stored before stage 5 (no `providers`) still loads.
        let old: Mnemo = serde_json::from_value(json!({"intake": {"applied": 0, "ignored": 0, "malformed": 0}, "demand": {}, "vram": {}})).unwrap();
        assert!(old.providers.is_empty());
    }

    fn job_energy(node: Option<&str>, region: &str, kwh: f64, renewable: f64) -> Value {
        json!({
            "job_id": "job_a", "node_id": node, "region": region,
            "energy_kwh": kwh, "energy_mwms": "0", "carbon_kg": kwh * 0.4,
            "grid_factor": {"region": region, "g_co2e_per_kwh": 400.0, "source": "test", "as_of": "2025"},
            "renewable_pct": renewable, "renewable_basis": "declared by the provider",
            "carbon_credit_eligible": renewable >= 80.0,
        })
    }

    #[test]
    fn energy_sums_carbon_per_region_and_node_with_credit_eligibility() {
        let mut energy = Energy::default();
        energy.apply(
            TOPIC_JOB_ENERGY,
            &job_energy(Some("node_a"), "eu-north-1", 2.0, 90.0),
        );
        energy.apply(
            TOPIC_JOB_ENERGY,
            &job_energy(Some("node_a"), "eu-north-1", 1.0, 90.0),
        );
        energy.apply(
            TOPIC_JOB_ENERGY,
            &job_energy(Some("node_b"), "us-east-1", 4.0, 25.0),
        );
        // A job that never reached a node counts in the totals, under no node.
        energy.apply(TOPIC_JOB_ENERGY, &job_energy(None, "us-east-1", 0.0, 0.0));
        // Bad figures and other topics are counted, not applied.
        energy.apply(
            TOPIC_JOB_ENERGY,
            &json!({"energy_kwh": -1.0, "carbon_kg": 0.0}),
        );
        energy.apply(TOPIC_JOB_ENERGY, &json!({"energy_kwh": "lots"}));
        energy.apply(TOPIC_JOB_CREATED, &json!({}));
        assert_eq!(
            energy.intake,
            Intake {
                applied: 4,
                ignored: 1,
                malformed: 2
            }
        );
        assert_eq!(energy.total.jobs, 4);
        assert!((energy.total.energy_kwh - 7.0).abs() < 1e-12);
        assert!((energy.total.carbon_kg - 2.8).abs() < 1e-12);
        // 3 kWh at 90 % and 4 kWh at 25 % declared renewable.
        assert!((energy.total.renewable_kwh_declared - 3.7).abs() < 1e-12);
        assert_eq!(energy.total.credit_eligible_jobs, 2);
        assert!((energy.total.credit_eligible_kwh - 3.0).abs() < 1e-12);
        assert!((energy.total.credit_eligible_carbon_kg - 1.2).abs() < 1e-12);
        let node_a = &energy.nodes["node_a"];
        assert_eq!((node_a.jobs, node_a.credit_eligible_jobs), (2, 2));
        assert_eq!(energy.nodes.len(), 2);
        assert_eq!(energy.regions["us-east-1"].jobs, 2);
        assert_eq!(energy.regions["eu-north-1"].jobs, 2);
        assert_eq!(energy.grid_factors["eu-north-1"].source, "test");
        let mut both = energy.nodes["node_a"].clone();
        both.merge(&energy.nodes["node_b"]);
        assert_eq!(both.jobs, 3);
        // A job without a region, accounted with the fallback factor: "unknown", and the
        // fallback is not recorded as a region's factor.
        let mut fallback = job_energy(Some("node_c"), "default", 1.0, 0.0);
        fallback["region"] = Value::Null;
        energy.apply(TOPIC_JOB_ENERGY, &fallback);
        assert_eq!(energy.regions["unknown"].jobs, 1);
        assert!(!energy.grid_factors.contains_key("default"));
        assert!(!energy.regions.contains_key("default"));
        // A model stored before a field existed still loads (serde defaults).
        let old: Energy = serde_json::from_value(json!({"total": {"jobs": 3}})).unwrap();
        assert_eq!(old.total.jobs, 3);
        // The model round-trips through JSON (the bus runner stores it so).
        let stored: Energy =
            serde_json::from_value(serde_json::to_value(&energy).unwrap()).unwrap();
        assert_eq!(stored, energy);
    }

    #[test]
    fn presence_uptime_is_the_share_of_observed_time_present() {
        let minute = 60_000;
        let never = Presence::default();
        assert_eq!(never.uptime(1_000 * minute), None);
        let node = Presence {
            first_seen_at_ms: Some(100 * minute),
            last_seen_at_ms: Some(130 * minute),
            online_ms: 24 * minute,
        };
        // Nine minutes observed is too short to judge.
        assert_eq!(node.uptime(109 * minute), None);
        // 24 of 40 minutes present (the last contact was 10 minutes ago: gone since).
        assert_eq!(node.observed_ms(140 * minute), 40 * minute);
        assert_eq!(node.uptime(140 * minute), Some(0.6));
        // A minute after the last contact the agent counts as still there.
        assert_eq!(node.online_ms(131 * minute), 25 * minute);
        assert_eq!(node.uptime(131 * minute), Some(25.0 / 31.0));
        // A clock behind the first contact observes nothing; figures stay within [0, 1].
        assert_eq!(node.observed_ms(50 * minute), 0);
        let odd = Presence {
            online_ms: 90 * minute,
            ..node
        };
        assert_eq!(odd.uptime(140 * minute), Some(1.0));
        assert_eq!(uptime_score(Some(0.5), Some(0.8)), Some(0.4));
        assert_eq!(uptime_score(None, Some(0.8)), Some(0.8));
        assert_eq!(uptime_score(Some(0.5), None), Some(0.5));
        assert_eq!(uptime_score(None, None), None);
    }

    fn job_created(gpu_region: Option<&str>, customer_region: Option<&str>) -> Value {
        json!({
            "job_id": "job_a", "owner_id": "usr_a", "workload_type": "TRAINING",
            "gpu_id": gpu_region.map(|_| "gpu_a"), "gpu_name": gpu_region.map(|_| "RTX 4090"),
            "gpu_region": gpu_region, "gpu_vram_gb": gpu_region.map(|_| 24.0),
            "requirement": null, "customer_region": customer_region,
            "cost_estimate_micros": 1_000_000, "expected_duration_micro_hours": 2_000_000,
            "created_at_ms": 5,
        })
    }

    fn node_registered(region: &str) -> Value {
        json!({"node_id": "node_a", "owner_id": "usr_p", "region": region,
               "gpus": [{"gpu_id": "gpu_a", "name": "RTX 4090", "vram_gb": 24.0, "price_per_hour_micros": 2_000_000}]})
    }

    #[test]
    fn mnemo_counts_demand_and_vram() {
        let mut mnemo = Mnemo::default();
        mnemo.apply(TOPIC_NODE_REGISTERED, &node_registered("us-east-1"));
        mnemo.apply(TOPIC_JOB_CREATED, &job_created(Some("us-east-1"), None));
        mnemo.apply(TOPIC_JOB_CREATED, &job_created(Some("us-east-1"), None));
        let signal = &mnemo.demand["RTX 4090@us-east-1"];
        assert_eq!(signal.jobs, 2);
        assert_eq!(signal.gpu_micro_hours, 4_000_000);
        assert_eq!(mnemo.vram["us-east-1"].total_vram_gb, 24.0);
        assert_eq!(mnemo.intake.applied, 3);
    }

    #[test]
    fn outerim_flags_regions_without_capacity() {
        let mut outerim = Outerim::default();
        outerim.apply(
            TOPIC_JOB_CREATED,
            &job_created(Some("us-east-1"), Some("eu-west-1")),
        );
        outerim.apply(TOPIC_NODE_REGISTERED, &node_registered("eu-west-1"));
        outerim.apply(
            TOPIC_JOB_CREATED,
            &job_created(Some("us-east-1"), Some("eu-west-1")),
        );
        outerim.apply(TOPIC_JOB_CREATED, &job_created(None, None));
        let demand = &outerim.demand["eu-west-1"];
        assert_eq!((demand.jobs, demand.without_local_capacity), (2, 1));
        assert_eq!(outerim.jobs_without_region, 1);
    }

    #[test]
    fn aetherion_tracks_candidates_and_malformed_events_do_not_stop_it() {
        let mut aetherion = Aetherion::default();
        aetherion.apply(TOPIC_NODE_REGISTERED, &node_registered("us-east-1"));
        aetherion.apply(TOPIC_JOB_CREATED, &json!({"job_id": 7}));
        aetherion.apply("job.cancelled", &json!({}));
        aetherion.apply(TOPIC_JOB_CREATED, &job_created(Some("us-east-1"), None));
        let routing = &aetherion.regions["us-east-1"];
        assert_eq!(routing.candidate_gpus.len(), 1);
        assert_eq!(routing.pinned_jobs, 1);
        assert_eq!(
            aetherion.intake,
            Intake {
                applied: 2,
                ignored: 1,
                malformed: 1
            }
        );
    }
}
