//! Atlas: placement. Scores the GPUs a job could run on and picks one (SPEC §5).
//!
//! Six factors, each normalised to `[0, 1]` (1 is best), are combined as a weighted mean and
//! shown as a score from 0 to 100 with one [`Reason`] per factor, so a customer can see why a
//! GPU was chosen (the job's `placement`, SPEC §3):
//!
//! - `trust`: `trust_score / 100`, clamped; a non-finite score counts as 0.
//! - `uptime`: Mnemo's uptime (the share of observed time the node's agent was present, times
//!   the share of its jobs it did not drop), clamped; 0.5 when unknown.
//! - `provenance`: Veritas provenance, clamped; 0.5 when unknown. Reproducibility-sensitive
//!   jobs only.
//! - `latency`: `1 − min(rtt, 300 ms) / 300 ms`, customer region → GPU region; 0.5 when
//!   either region or the pair is unknown.
//! - `carbon`: `1 − min(g, 800) / 800` for the region's grid g CO2e/kWh; 0.5 when unknown.
//! - `price`: `(max − p) / (max − min)` over this request's eligible GPUs; 1 when all equal.
//!
//! `score = 100 × Σ wᵢ·fᵢ / Σ wᵢ` over the active factors; 0 for every GPU when `Σ wᵢ = 0`.
//!
//! **Provenance for other jobs**: a job that is not reproducibility-sensitive has no
//! provenance factor at all: it adds nothing to either sum and no reason is listed for it, so
//! `reasons` only ever names what counted.
//!
//! **Unknown is neutral, not bad**: an unknown uptime, provenance, latency or carbon figure
//! counts as 0.5, so a new provider or a region missing from a table is neither favoured nor
//! shut out. Non-finite inputs (NaN, ±∞) are treated as unknown (trust: as 0), and weights
//! that are not finite and `>= 0` count as 0, so a score is never NaN. [`Weights::validate`]
//! lets configuration loading refuse such weights up front.
//!
//! **Determinism**: results are sorted by score (descending), then price (ascending), then
//! `gpu_id` (ascending), then by the remaining candidate fields, which is a total order; every
//! normalisation uses only order-free aggregates (minimum, maximum, count). So [`rank`] and
//! [`plan`] do not depend on the order of the candidates they are given.
//!
//! The default latency and carbon tables are approximate public figures meant as a starting
//! point; operators replace them with their own measurements ([`AtlasConfig`] deserializes).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ids::{GpuId, JobId, NodeId};
use crate::manifest::{GpuRequirement, GpuTarget, JobNetwork};
use crate::money::Money;
use crate::posture::HostPosture;

/// Round trips at or above this many milliseconds score 0 for latency.
pub const LATENCY_CEILING_MS: u32 = 300;

/// Grids at or above this many g CO2e/kWh score 0 for carbon (coal-heavy grids are ~800+).
pub const CARBON_CEILING_G_PER_KWH: f64 = 800.0;

/// The value of a factor whose input is unknown: neutral, halfway between worst and best.
pub const UNKNOWN_FACTOR_VALUE: f64 = 0.5;

/// Round trip within one region when the latency table says nothing more specific.
pub const DEFAULT_SAME_REGION_MS: u32 = 2;

/// Why an Atlas configuration was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AtlasError {
    #[error("atlas weight `{factor}` must be a finite number >= 0, got {value}")]
    InvalidWeight { factor: &'static str, value: f64 },
}

// ---------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------

/// A GPU Atlas may place a job on, with what the chambers know about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub gpu_id: GpuId,
    pub node_id: NodeId,
    pub gpu_name: String,
    pub vram_gb: f64,
    pub region: String,
    pub price_per_hour: Money,
    /// The provider node's trust score, 0..=100.
    pub trust_score: f64,
    /// Share of time the node was up, 0..=1, from Mnemo; `None` when there is no history.
    pub uptime: Option<f64>,
    /// Provenance record, 0..=1, from Veritas; `None` when unknown.
    pub provenance: Option<f64>,
    /// What the node's host gives jobs (SPEC §10); `None` for a node whose agent never
    /// reported it (an older agent: taken to accept any job, as before).
    #[serde(default)]
    pub posture: Option<HostPosture>,
}

/// One job waiting for a GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacementRequest {
    pub job_id: JobId,
    pub target: GpuTarget,
    /// Where the customer is, for the latency factor; `None` when unknown.
    pub customer_region: Option<String>,
    /// Whether Veritas provenance counts (training runs whose results must be reproducible).
    pub reproducibility_sensitive: bool,
    /// Nodes that already failed this job: a retry goes elsewhere.
    pub excluded_nodes: Vec<NodeId>,
    /// The job's network and scratch size: only nodes whose posture accepts them.
    #[serde(default)]
    pub network: JobNetwork,
    #[serde(default = "default_scratch_gb")]
    pub scratch_gb: f64,
}

fn default_scratch_gb() -> f64 {
    crate::manifest::DEFAULT_SCRATCH_GB
}

/// How much each factor counts. Only ratios matter: the score divides by the sum.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Weights {
    pub trust: f64,
    pub uptime: f64,
    pub provenance: f64,
    pub latency: f64,
    pub carbon: f64,
    pub price: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            trust: 0.25,
            uptime: 0.15,
            provenance: 0.10,
            latency: 0.20,
            carbon: 0.15,
            price: 0.15,
        }
    }
}

impl Weights {
    /// Every weight must be finite and `>= 0`; the first offender is reported.
    pub fn validate(&self) -> Result<(), AtlasError> {
        for (factor, value) in self.named() {
            if !(value.is_finite() && value >= 0.0) {
                return Err(AtlasError::InvalidWeight { factor, value });
            }
        }
        Ok(())
    }

    fn named(&self) -> [(&'static str, f64); 6] {
        [
            (FACTOR_TRUST, self.trust),
            (FACTOR_UPTIME, self.uptime),
            (FACTOR_PROVENANCE, self.provenance),
            (FACTOR_LATENCY, self.latency),
            (FACTOR_CARBON, self.carbon),
            (FACTOR_PRICE, self.price),
        ]
    }
}

/// Region-to-region round-trip times in milliseconds, looked up symmetrically.
///
/// The default table holds approximate public-internet round trips between eight common
/// cloud regions, rounded to 5 ms, in line with published inter-region latency dashboards.
/// They are defaults, not measurements of this deployment: operators override them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "LatencyTableRepr", into = "LatencyTableRepr")]
pub struct LatencyTable {
    same_region_ms: u32,
    /// Keyed by the lexicographically smaller region, then the other, so that
    /// `(a, b)` and `(b, a)` are one entry and lookups need no allocation.
    pairs: BTreeMap<String, BTreeMap<String, u32>>,
}

impl Default for LatencyTable {
    fn default() -> Self {
        Self::from_pairs(DEFAULT_LATENCY_MS.iter().copied())
    }
}

impl LatencyTable {
    /// An empty table: only same-region round trips are known.
    pub fn empty() -> Self {
        Self {
            same_region_ms: DEFAULT_SAME_REGION_MS,
            pairs: BTreeMap::new(),
        }
    }

    /// A table of `(a, b, ms)` entries; a later entry for the same pair (either way round)
    /// replaces an earlier one. Same-region round trips are `DEFAULT_SAME_REGION_MS`.
    pub fn from_pairs<A, B>(pairs: impl IntoIterator<Item = (A, B, u32)>) -> Self
    where
        A: Into<String>,
        B: Into<String>,
    {
        let mut table = Self::empty();
        for (a, b, ms) in pairs {
            table.set(a, b, ms);
        }
        table
    }

    /// Sets the round trip used within any region without an explicit `(r, r)` entry.
    pub fn with_same_region_ms(mut self, ms: u32) -> Self {
        self.same_region_ms = ms;
        self
    }

    pub fn same_region_ms(&self) -> u32 {
        self.same_region_ms
    }

    /// Sets the round trip between `a` and `b`, both ways.
    pub fn set(&mut self, a: impl Into<String>, b: impl Into<String>, ms: u32) {
        let (a, b) = (a.into(), b.into());
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        self.pairs.entry(low).or_default().insert(high, ms);
    }

    /// The round trip between two regions: an explicit entry (either way round) if any, else
    /// `same_region_ms` when `a == b`, else `None`.
    pub fn rtt_ms(&self, a: &str, b: &str) -> Option<u32> {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        let explicit = self
            .pairs
            .get(low)
            .and_then(|others| others.get(high))
            .copied();
        explicit.or((a == b).then_some(self.same_region_ms))
    }

    /// Every explicit entry as `(a, b, ms)` with `a <= b`, in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str, u32)> {
        self.pairs.iter().flat_map(|(low, others)| {
            others
                .iter()
                .map(move |(high, ms)| (low.as_str(), high.as_str(), *ms))
        })
    }
}

/// The serialized form of a `LatencyTable`: `{"same_region_ms": 2, "pairs": [{"a", "b", "ms"}]}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyTableRepr {
    #[serde(default = "default_same_region_ms")]
    same_region_ms: u32,
    #[serde(default)]
    pairs: Vec<LatencyEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyEntry {
    a: String,
    b: String,
    ms: u32,
}

fn default_same_region_ms() -> u32 {
    DEFAULT_SAME_REGION_MS
}

impl From<LatencyTableRepr> for LatencyTable {
    fn from(repr: LatencyTableRepr) -> Self {
        Self::from_pairs(
            repr.pairs
                .into_iter()
                .map(|entry| (entry.a, entry.b, entry.ms)),
        )
        .with_same_region_ms(repr.same_region_ms)
    }
}

impl From<LatencyTable> for LatencyTableRepr {
    fn from(table: LatencyTable) -> Self {
        let pairs = table
            .pairs()
            .map(|(a, b, ms)| LatencyEntry {
                a: a.to_owned(),
                b: b.to_owned(),
                ms,
            })
            .collect();
        Self {
            same_region_ms: table.same_region_ms,
            pairs,
        }
    }
}

/// A region's grid carbon intensity, with where the figure came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CarbonIntensity {
    pub g_co2e_per_kwh: f64,
    /// Where the number comes from, shown in placement reasons.
    pub source: String,
    /// The period the figure describes, e.g. a year.
    pub as_of: String,
}

/// Grid carbon intensity per region.
///
/// The default holds approximate annual average grid intensities, rounded to 10 g, for the
/// regions of the default latency table. They describe the grid of the country or US state
/// a region is in over a year, not the hour a job runs nor a data centre's own supply, and
/// are meant to be replaced by an operator's figures (or a live feed, via `set`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CarbonTable {
    regions: BTreeMap<String, CarbonIntensity>,
}

impl Default for CarbonTable {
    fn default() -> Self {
        Self::from_entries(DEFAULT_CARBON.iter().map(|(region, grams, grid)| {
            (
                *region,
                CarbonIntensity {
                    g_co2e_per_kwh: *grams,
                    source: format!(
                        "approximate annual average for the {grid} grid, rounded to 10 g, from \
                         public data (national and state grid averages as published by Ember, \
                         EEA and EIA); a default for operators to replace"
                    ),
                    as_of: DEFAULT_CARBON_AS_OF.to_owned(),
                },
            )
        }))
    }
}

impl CarbonTable {
    /// A table that knows no region.
    pub fn empty() -> Self {
        Self {
            regions: BTreeMap::new(),
        }
    }

    /// A table from `(region, intensity)` entries; a later entry for a region replaces an
    /// earlier one.
    pub fn from_entries<R: Into<String>>(
        entries: impl IntoIterator<Item = (R, CarbonIntensity)>,
    ) -> Self {
        let mut table = Self::empty();
        for (region, intensity) in entries {
            table.set(region, intensity);
        }
        table
    }

    /// Sets (or replaces) a region's intensity.
    pub fn set(&mut self, region: impl Into<String>, intensity: CarbonIntensity) {
        self.regions.insert(region.into(), intensity);
    }

    pub fn intensity(&self, region: &str) -> Option<&CarbonIntensity> {
        self.regions.get(region)
    }

    /// Every entry, in region order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &CarbonIntensity)> {
        self.regions
            .iter()
            .map(|(region, intensity)| (region.as_str(), intensity))
    }
}

/// Everything Atlas scores with. Deserializes with every part optional (defaults fill in).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AtlasConfig {
    pub weights: Weights,
    pub latency: LatencyTable,
    pub carbon: CarbonTable,
}

// ---------------------------------------------------------------------------------------
// Outputs
// ---------------------------------------------------------------------------------------

/// One factor's part in a score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// `trust`, `uptime`, `provenance`, `latency`, `carbon` or `price`.
    pub factor: String,
    /// The factor, normalised to 0..=1 (1 is best).
    pub value: f64,
    /// The configured weight (0 when the configured one is not finite and `>= 0`).
    pub weight: f64,
    /// For humans: "trust score 82/100", "rtt us-east-1→eu-west-1 ≈ 70 ms", ….
    pub detail: String,
}

/// A candidate with its score (0..=100) and the reasons, in factor order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub candidate: Candidate,
    pub score: f64,
    pub reasons: Vec<Reason>,
}

/// A job and the GPU Atlas chose for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub job_id: JobId,
    pub scored: Scored,
}

/// The job's `placement` as stored and shown (SPEC §3): `{"gpu_id", "node_id", "region",
/// "score", "reasons": [{"factor", "value", "weight", "detail"}]}`.
pub fn placement_json(scored: &Scored) -> Value {
    let reasons: Vec<Value> = scored
        .reasons
        .iter()
        .map(|reason| {
            json!({
                "factor": reason.factor,
                "value": reason.value,
                "weight": reason.weight,
                "detail": reason.detail,
            })
        })
        .collect();
    json!({
        "gpu_id": scored.candidate.gpu_id.as_str(),
        "node_id": scored.candidate.node_id.as_str(),
        "region": scored.candidate.region,
        "score": scored.score,
        "reasons": reasons,
    })
}

// ---------------------------------------------------------------------------------------
// Eligibility
// ---------------------------------------------------------------------------------------

/// Whether a GPU meets a requirement: `model` is a case-insensitive substring of the GPU's
/// name, `vram_gb >= min_vram_gb`, the region is exactly `region`, and
/// `price_per_hour <= max_price_per_hour`. Absent constraints always hold; a NaN VRAM or
/// minimum never satisfies a VRAM constraint.
pub fn matches_requirement(
    requirement: &GpuRequirement,
    gpu_name: &str,
    vram_gb: f64,
    region: &str,
    price_per_hour: Money,
) -> bool {
    let model_ok = requirement
        .model
        .as_deref()
        .is_none_or(|model| gpu_name.to_lowercase().contains(&model.to_lowercase()));
    let vram_ok = requirement
        .min_vram_gb
        .is_none_or(|min_vram_gb| vram_gb >= min_vram_gb);
    let region_ok = requirement
        .region
        .as_deref()
        .is_none_or(|wanted| wanted == region);
    let price_ok = requirement
        .max_price_per_hour
        .is_none_or(|max| price_per_hour <= max);
    model_ok && vram_ok && region_ok && price_ok
}

/// Whether a job may run on a candidate: a pinned job only on its GPU, a requirement job on
/// any GPU meeting the requirement, never on a node listed in `excluded_nodes`, and only on a
/// node whose posture accepts the job's network and scratch size.
pub fn eligible(request: &PlacementRequest, candidate: &Candidate) -> bool {
    if request.excluded_nodes.contains(&candidate.node_id) {
        return false;
    }
    if let Some(posture) = &candidate.posture
        && !posture.accepts(request.network, request.scratch_gb)
    {
        return false;
    }
    match &request.target {
        GpuTarget::Pinned(gpu_id) => *gpu_id == candidate.gpu_id,
        GpuTarget::Requirement(requirement) => matches_requirement(
            requirement,
            &candidate.gpu_name,
            candidate.vram_gb,
            &candidate.region,
            candidate.price_per_hour,
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Ranking and planning
// ---------------------------------------------------------------------------------------

/// The eligible candidates, scored, best first (see the module docs for the order).
///
/// Price is normalised over the eligible candidates given here, so the same GPU can score
/// differently against a different field.
pub fn rank(
    request: &PlacementRequest,
    candidates: &[Candidate],
    config: &AtlasConfig,
) -> Vec<Scored> {
    let eligible_candidates: Vec<&Candidate> = candidates
        .iter()
        .filter(|candidate| eligible(request, candidate))
        .collect();
    let Some(prices) = PriceRange::of(&eligible_candidates) else {
        return Vec::new();
    };
    let mut scored: Vec<Scored> = eligible_candidates
        .into_iter()
        .map(|candidate| score_candidate(request, candidate, &prices, config))
        .collect();
    scored.sort_by(compare_scored);
    scored
}

/// Places `requests` in the given (FIFO) order: each takes the best GPU still free, scored
/// against the GPUs still free. A GPU (by `gpu_id`) is given out at most once, even if
/// `free` lists it twice; a request with nothing eligible left is left out of the result.
pub fn plan(
    requests: &[PlacementRequest],
    free: &[Candidate],
    config: &AtlasConfig,
) -> Vec<Assignment> {
    let mut remaining: Vec<Candidate> = free.to_vec();
    let mut assignments = Vec::new();
    for request in requests {
        if remaining.is_empty() {
            break;
        }
        let Some(best) = rank(request, &remaining, config).into_iter().next() else {
            continue;
        };
        remaining.retain(|candidate| candidate.gpu_id != best.candidate.gpu_id);
        assignments.push(Assignment {
            job_id: request.job_id.clone(),
            scored: best,
        });
    }
    assignments
}

// ---------------------------------------------------------------------------------------
// Scoring
// ---------------------------------------------------------------------------------------

const FACTOR_TRUST: &str = "trust";
const FACTOR_UPTIME: &str = "uptime";
const FACTOR_PROVENANCE: &str = "provenance";
const FACTOR_LATENCY: &str = "latency";
const FACTOR_CARBON: &str = "carbon";
const FACTOR_PRICE: &str = "price";

/// The cheapest and dearest eligible price, and how many eligible candidates there are.
struct PriceRange {
    min: Money,
    max: Money,
    count: usize,
}

impl PriceRange {
    fn of(candidates: &[&Candidate]) -> Option<Self> {
        let min = candidates.iter().map(|c| c.price_per_hour).min()?;
        let max = candidates.iter().map(|c| c.price_per_hour).max()?;
        Some(Self {
            min,
            max,
            count: candidates.len(),
        })
    }
}

fn score_candidate(
    request: &PlacementRequest,
    candidate: &Candidate,
    prices: &PriceRange,
    config: &AtlasConfig,
) -> Scored {
    let weights = &config.weights;
    let mut reasons = vec![
        trust_reason(candidate, weights.trust),
        uptime_reason(candidate, weights.uptime),
    ];
    if request.reproducibility_sensitive {
        reasons.push(provenance_reason(candidate, weights.provenance));
    }
    reasons.push(latency_reason(
        request,
        candidate,
        &config.latency,
        weights.latency,
    ));
    reasons.push(carbon_reason(candidate, &config.carbon, weights.carbon));
    reasons.push(price_reason(candidate, prices, weights.price));
    let score = weighted_score(&reasons);
    Scored {
        candidate: candidate.clone(),
        score,
        reasons,
    }
}

/// `100 × Σ wᵢ·fᵢ / Σ wᵢ`, with weights first divided by the largest so that huge
/// (finite) weights cannot overflow the sums; 0 when every weight is 0.
fn weighted_score(reasons: &[Reason]) -> f64 {
    let largest = reasons
        .iter()
        .map(|reason| reason.weight)
        .fold(0.0_f64, f64::max);
    if largest <= 0.0 {
        return 0.0;
    }
    let (weighted_sum, weight_sum) =
        reasons
            .iter()
            .fold((0.0_f64, 0.0_f64), |(weighted, total), reason| {
                let share = reason.weight / largest;
                (weighted + share * reason.value, total + share)
            });
    let score = 100.0 * weighted_sum / weight_sum;
    // `> 0.0` is false for NaN as well, so the result is always a number in 0..=100.
    if score > 0.0 { score.min(100.0) } else { 0.0 }
}

/// A weight as used: finite and `>= 0`, else 0.
fn effective_weight(weight: f64) -> f64 {
    if weight.is_finite() && weight > 0.0 {
        weight
    } else {
        0.0
    }
}

/// A 0..=1 figure from a chamber, if it is a number at all.
fn known_unit(value: Option<f64>) -> Option<f64> {
    value
        .filter(|value| value.is_finite())
        .map(|value| value.clamp(0.0, 1.0))
}

fn reason(factor: &str, value: f64, weight: f64, detail: String) -> Reason {
    Reason {
        factor: factor.to_owned(),
        value,
        weight: effective_weight(weight),
        detail,
    }
}

fn trust_reason(candidate: &Candidate, weight: f64) -> Reason {
    let trust = candidate.trust_score;
    if !trust.is_finite() {
        return reason(
            FACTOR_TRUST,
            0.0,
            weight,
            "trust score not a number, counted as 0".to_owned(),
        );
    }
    let value = (trust / 100.0).clamp(0.0, 1.0);
    reason(
        FACTOR_TRUST,
        value,
        weight,
        format!("trust score {}/100", short_number(trust)),
    )
}

fn uptime_reason(candidate: &Candidate, weight: f64) -> Reason {
    match known_unit(candidate.uptime) {
        Some(uptime) => reason(
            FACTOR_UPTIME,
            uptime,
            weight,
            format!(
                "uptime {}% (Mnemo: agent presence × jobs not dropped)",
                short_number(uptime * 100.0)
            ),
        ),
        None => reason(
            FACTOR_UPTIME,
            UNKNOWN_FACTOR_VALUE,
            weight,
            "uptime unknown (no Mnemo history), counted as 0.5".to_owned(),
        ),
    }
}

fn provenance_reason(candidate: &Candidate, weight: f64) -> Reason {
    match known_unit(candidate.provenance) {
        Some(provenance) => reason(
            FACTOR_PROVENANCE,
            provenance,
            weight,
            format!("provenance {provenance:.2} (Veritas)"),
        ),
        None => reason(
            FACTOR_PROVENANCE,
            UNKNOWN_FACTOR_VALUE,
            weight,
            "provenance unknown (no Veritas record), counted as 0.5".to_owned(),
        ),
    }
}

fn latency_reason(
    request: &PlacementRequest,
    candidate: &Candidate,
    latency: &LatencyTable,
    weight: f64,
) -> Reason {
    let Some(customer_region) = request.customer_region.as_deref() else {
        return reason(
            FACTOR_LATENCY,
            UNKNOWN_FACTOR_VALUE,
            weight,
            "customer region unknown, latency counted as 0.5".to_owned(),
        );
    };
    let gpu_region = candidate.region.as_str();
    match latency.rtt_ms(customer_region, gpu_region) {
        Some(rtt) => {
            let capped = rtt.min(LATENCY_CEILING_MS);
            let value = 1.0 - f64::from(capped) / f64::from(LATENCY_CEILING_MS);
            reason(
                FACTOR_LATENCY,
                value,
                weight,
                format!("rtt {customer_region}→{gpu_region} ≈ {rtt} ms"),
            )
        }
        None => reason(
            FACTOR_LATENCY,
            UNKNOWN_FACTOR_VALUE,
            weight,
            format!("rtt {customer_region}→{gpu_region} unknown, counted as 0.5"),
        ),
    }
}

fn carbon_reason(candidate: &Candidate, carbon: &CarbonTable, weight: f64) -> Reason {
    let region = candidate.region.as_str();
    let known = carbon
        .intensity(region)
        .filter(|intensity| intensity.g_co2e_per_kwh.is_finite());
    match known {
        Some(intensity) => {
            let grams = intensity
                .g_co2e_per_kwh
                .clamp(0.0, CARBON_CEILING_G_PER_KWH);
            let value = 1.0 - grams / CARBON_CEILING_G_PER_KWH;
            reason(
                FACTOR_CARBON,
                value,
                weight,
                format!(
                    "grid {} g CO2e/kWh in {region} ({}; as of {})",
                    short_number(intensity.g_co2e_per_kwh),
                    intensity.source,
                    intensity.as_of
                ),
            )
        }
        None => reason(
            FACTOR_CARBON,
            UNKNOWN_FACTOR_VALUE,
            weight,
            format!("grid carbon intensity of {region} unknown, counted as 0.5"),
        ),
    }
}

fn price_reason(candidate: &Candidate, prices: &PriceRange, weight: f64) -> Reason {
    let price = candidate.price_per_hour;
    let count = prices.count;
    if prices.min == prices.max {
        let detail = if count == 1 {
            format!("price {price}/h, the only eligible GPU")
        } else {
            format!("price {price}/h, same as all {count} eligible")
        };
        return reason(FACTOR_PRICE, 1.0, weight, detail);
    }
    // i128: the difference of two i64 amounts always fits, and the ratio is exact enough.
    let above_price = i128::from(prices.max.micros()) - i128::from(price.micros());
    let spread = i128::from(prices.max.micros()) - i128::from(prices.min.micros());
    let value = (above_price as f64 / spread as f64).clamp(0.0, 1.0);
    let detail = if price == prices.min {
        format!("price {price}/h, cheapest of {count}")
    } else if price == prices.max {
        format!("price {price}/h, dearest of {count}")
    } else {
        format!(
            "price {price}/h, between {}/h and {}/h across {count}",
            prices.min, prices.max
        )
    };
    reason(FACTOR_PRICE, value, weight, detail)
}

/// At most one decimal, without a trailing ".0": `82`, `99.5`.
fn short_number(value: f64) -> String {
    let text = format!("{value:.1}");
    match text.strip_suffix(".0") {
        Some(whole) => whole.to_owned(),
        None => text,
    }
}

/// Best first: score descending, price ascending, `gpu_id` ascending, then every other
/// field, so that the order is total and no input order can show through.
fn compare_scored(a: &Scored, b: &Scored) -> Ordering {
    b.score
        .total_cmp(&a.score)
        .then_with(|| a.candidate.price_per_hour.cmp(&b.candidate.price_per_hour))
        .then_with(|| a.candidate.gpu_id.cmp(&b.candidate.gpu_id))
        .then_with(|| compare_other_fields(&a.candidate, &b.candidate))
}

fn compare_other_fields(a: &Candidate, b: &Candidate) -> Ordering {
    fn option_cmp(a: Option<f64>, b: Option<f64>) -> Ordering {
        match (a, b) {
            (Some(a), Some(b)) => a.total_cmp(&b),
            (a, b) => a.is_some().cmp(&b.is_some()),
        }
    }
    a.node_id
        .cmp(&b.node_id)
        .then_with(|| a.gpu_name.cmp(&b.gpu_name))
        .then_with(|| a.region.cmp(&b.region))
        .then_with(|| a.vram_gb.total_cmp(&b.vram_gb))
        .then_with(|| a.trust_score.total_cmp(&b.trust_score))
        .then_with(|| option_cmp(a.uptime, b.uptime))
        .then_with(|| option_cmp(a.provenance, b.provenance))
}

// ---------------------------------------------------------------------------------------
// Default tables
// ---------------------------------------------------------------------------------------

/// Approximate public-internet round trips (ms) between common cloud regions, rounded to
/// 5 ms. Roughly what public inter-region latency dashboards show; not measured here.
const DEFAULT_LATENCY_MS: [(&str, &str, u32); 28] = [
    ("us-east-1", "us-west-2", 70),
    ("us-east-1", "eu-west-1", 70),
    ("us-east-1", "eu-central-1", 90),
    ("us-east-1", "eu-north-1", 105),
    ("us-east-1", "ap-southeast-1", 215),
    ("us-east-1", "ap-northeast-1", 150),
    ("us-east-1", "ap-south-1", 190),
    ("us-west-2", "eu-west-1", 125),
    ("us-west-2", "eu-central-1", 145),
    ("us-west-2", "eu-north-1", 155),
    ("us-west-2", "ap-southeast-1", 165),
    ("us-west-2", "ap-northeast-1", 100),
    ("us-west-2", "ap-south-1", 215),
    ("eu-west-1", "eu-central-1", 25),
    ("eu-west-1", "eu-north-1", 40),
    ("eu-west-1", "ap-southeast-1", 175),
    ("eu-west-1", "ap-northeast-1", 210),
    ("eu-west-1", "ap-south-1", 120),
    ("eu-central-1", "eu-north-1", 25),
    ("eu-central-1", "ap-southeast-1", 160),
    ("eu-central-1", "ap-northeast-1", 225),
    ("eu-central-1", "ap-south-1", 110),
    ("eu-north-1", "ap-southeast-1", 180),
    ("eu-north-1", "ap-northeast-1", 240),
    ("eu-north-1", "ap-south-1", 135),
    ("ap-southeast-1", "ap-northeast-1", 70),
    ("ap-southeast-1", "ap-south-1", 55),
    ("ap-northeast-1", "ap-south-1", 125),
];

/// The year the default carbon figures approximate.
const DEFAULT_CARBON_AS_OF: &str = "2023";

/// Approximate annual average grid intensity (g CO2e/kWh, rounded to 10) of the grid each
/// region sits in, and that grid's name for the `source` string. Orders of magnitude are
/// what matter here (Sweden's hydro and nuclear vs. India's coal); the exact figures vary by
/// year, source and accounting method.
const DEFAULT_CARBON: [(&str, f64, &str); 8] = [
    ("us-east-1", 350.0, "Virginia (US)"),
    ("us-west-2", 150.0, "Oregon (US)"),
    ("eu-west-1", 300.0, "Irish"),
    ("eu-central-1", 380.0, "German"),
    ("eu-north-1", 40.0, "Swedish"),
    ("ap-southeast-1", 470.0, "Singapore"),
    ("ap-northeast-1", 490.0, "Japanese"),
    ("ap-south-1", 710.0, "Indian"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(id: &str) -> GpuId {
        GpuId::parse(id).unwrap()
    }

    fn node(id: &str) -> NodeId {
        NodeId::parse(id).unwrap()
    }

    fn price(text: &str) -> Money {
        Money::parse_decimal(text).unwrap()
    }

    fn candidate(id: &str, region: &str, price_text: &str) -> Candidate {
        Candidate {
            gpu_id: gpu(id),
            node_id: node("node_a"),
            gpu_name: "NVIDIA RTX 4090".to_owned(),
            vram_gb: 24.0,
            region: region.to_owned(),
            price_per_hour: price(price_text),
            trust_score: 80.0,
            uptime: Some(0.99),
            provenance: None,
            posture: None,
        }
    }

    fn request(target: GpuTarget) -> PlacementRequest {
        PlacementRequest {
            job_id: JobId::parse("job_1").unwrap(),
            target,
            customer_region: None,
            reproducibility_sensitive: false,
            excluded_nodes: Vec::new(),
            network: Default::default(),
            scratch_gb: 20.0,
        }
    }

    fn any_gpu() -> GpuTarget {
        GpuTarget::Requirement(GpuRequirement::default())
    }

    fn posture(egress_filter: &str, max_scratch_gb: f64) -> HostPosture {
        crate::posture::validate_posture(&json!({"runtime": "docker",
            "egress_filter": egress_filter, "scratch_quota": "loop",
            "max_scratch_gb": max_scratch_gb, "cpus_per_job": 1}))
        .unwrap()
    }

    #[test]
    fn only_nodes_whose_posture_accepts_the_job_are_eligible() {
        let filtered = Candidate {
            posture: Some(posture("iptables", 50.0)),
            ..candidate("gpu_f", "us-east-1", "1.00")
        };
        let unfiltered = Candidate {
            posture: Some(posture("none", 50.0)),
            ..candidate("gpu_u", "us-east-1", "1.00")
        };
        let unknown = candidate("gpu_o", "us-east-1", "1.00");
        let public = request(any_gpu());
        assert!(eligible(&public, &filtered));
        assert!(
            !eligible(&public, &unfiltered),
            "public egress needs the filter"
        );
        assert!(
            eligible(&public, &unknown),
            "an older agent's node, as before"
        );
        let offline = PlacementRequest {
            network: JobNetwork::None,
            ..request(any_gpu())
        };
        assert!(eligible(&offline, &unfiltered));
        let big = PlacementRequest {
            scratch_gb: 60.0,
            ..request(any_gpu())
        };
        assert!(
            !eligible(&big, &filtered),
            "more scratch than the node offers"
        );
        let pinned = request(GpuTarget::Pinned(gpu("gpu_u")));
        assert!(!eligible(&pinned, &unfiltered));
    }

    #[test]
    fn matches_requirement_near_misses() {
        let req =
            |model: Option<&str>, vram: Option<f64>, region: Option<&str>, max: Option<&str>| {
                GpuRequirement {
                    model: model.map(str::to_owned),
                    min_vram_gb: vram,
                    region: region.map(str::to_owned),
                    max_price_per_hour: max.map(price),
                }
            };
        // (requirement, gpu name, vram, region, price, expected, why)
        let cases = [
            (
                req(None, None, None, None),
                "anything",
                1.0,
                "x",
                "9.99",
                true,
                "no constraints",
            ),
            (
                req(Some("rtx 4090"), None, None, None),
                "NVIDIA RTX 4090",
                24.0,
                "r",
                "1",
                true,
                "model case-insensitive",
            ),
            (
                req(Some("RTX 4090"), None, None, None),
                "nvidia rtx 4090",
                24.0,
                "r",
                "1",
                true,
                "name case-insensitive",
            ),
            (
                req(Some("4090"), None, None, None),
                "NVIDIA RTX 4090",
                24.0,
                "r",
                "1",
                true,
                "model is a substring",
            ),
            (
                req(Some("4080"), None, None, None),
                "NVIDIA RTX 4090",
                24.0,
                "r",
                "1",
                false,
                "other model",
            ),
            (
                req(Some("RTX 4090 Ti"), None, None, None),
                "RTX 4090",
                24.0,
                "r",
                "1",
                false,
                "model longer than name",
            ),
            (
                req(None, Some(24.0), None, None),
                "g",
                24.0,
                "r",
                "1",
                true,
                "vram exactly min",
            ),
            (
                req(None, Some(24.0), None, None),
                "g",
                23.999,
                "r",
                "1",
                false,
                "vram just below min",
            ),
            (
                req(None, Some(24.0), None, None),
                "g",
                f64::NAN,
                "r",
                "1",
                false,
                "NaN vram",
            ),
            (
                req(None, None, Some("us-east-1"), None),
                "g",
                1.0,
                "us-east-1",
                "1",
                true,
                "same region",
            ),
            (
                req(None, None, Some("us-east-1"), None),
                "g",
                1.0,
                "us-east-2",
                "1",
                false,
                "other region",
            ),
            (
                req(None, None, Some("us-east-1"), None),
                "g",
                1.0,
                "US-EAST-1",
                "1",
                false,
                "region is exact",
            ),
            (
                req(None, None, None, Some("3.10")),
                "g",
                1.0,
                "r",
                "3.10",
                true,
                "price exactly max",
            ),
            (
                req(None, None, None, Some("3.10")),
                "g",
                1.0,
                "r",
                "3.100001",
                false,
                "price a micro above max",
            ),
            (
                req(None, None, None, Some("3.10")),
                "g",
                1.0,
                "r",
                "3.099999",
                true,
                "price a micro below max",
            ),
            (
                req(Some("a100"), Some(80.0), Some("eu-west-1"), Some("4")),
                "NVIDIA A100 80GB",
                80.0,
                "eu-west-1",
                "4",
                true,
                "all at the boundary",
            ),
            (
                req(Some("a100"), Some(80.0), Some("eu-west-1"), Some("4")),
                "NVIDIA A100 80GB",
                40.0,
                "eu-west-1",
                "4",
                false,
                "one constraint fails",
            ),
        ];
        for (requirement, name, vram, region, price_text, expected, why) in cases {
            assert_eq!(
                matches_requirement(&requirement, name, vram, region, price(price_text)),
                expected,
                "{why}"
            );
        }
    }

    #[test]
    fn eligibility_pins_and_excludes() {
        let a = candidate("gpu_a", "us-east-1", "1");
        let b = candidate("gpu_b", "us-east-1", "1");
        let pinned = request(GpuTarget::Pinned(gpu("gpu_a")));
        assert!(eligible(&pinned, &a));
        assert!(!eligible(&pinned, &b));
        let mut retry = pinned.clone();
        retry.excluded_nodes = vec![node("node_a")];
        assert!(!eligible(&retry, &a), "an excluded node is never eligible");
        let mut any = request(any_gpu());
        assert!(eligible(&any, &b));
        any.excluded_nodes = vec![node("node_other")];
        assert!(eligible(&any, &b));
    }

    #[test]
    fn default_weights_are_valid_and_sum_to_one() {
        let weights = Weights::default();
        assert_eq!(weights.validate(), Ok(()));
        let sum: f64 = weights.named().iter().map(|(_, w)| w).sum();
        assert!((sum - 1.0).abs() < 1e-12);
    }

    #[test]
    fn validate_names_the_bad_weight() {
        let bad = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.1];
        for value in bad {
            let weights = Weights {
                carbon: value,
                ..Weights::default()
            };
            match weights.validate() {
                Err(AtlasError::InvalidWeight { factor, .. }) => assert_eq!(factor, "carbon"),
                other => panic!("{value} accepted: {other:?}"),
            }
        }
        let zeros = Weights {
            trust: 0.0,
            uptime: 0.0,
            provenance: 0.0,
            latency: 0.0,
            carbon: 0.0,
            price: 0.0,
        };
        assert_eq!(zeros.validate(), Ok(()));
    }

    #[test]
    fn weights_deserialize_with_defaults_and_refuse_typos() {
        let weights: Weights = serde_json::from_value(json!({"carbon": 0.5})).unwrap();
        assert_eq!(weights.carbon, 0.5);
        assert_eq!(weights.trust, Weights::default().trust);
        assert!(serde_json::from_value::<Weights>(json!({"carbn": 0.5})).is_err());
    }

    #[test]
    fn latency_lookup_is_symmetric_with_same_region_and_unknowns() {
        let table = LatencyTable::default();
        assert_eq!(table.rtt_ms("us-east-1", "eu-west-1"), Some(70));
        assert_eq!(table.rtt_ms("eu-west-1", "us-east-1"), Some(70));
        assert_eq!(table.rtt_ms("eu-north-1", "eu-north-1"), Some(2));
        assert_eq!(
            table.rtt_ms("mars-1", "mars-1"),
            Some(2),
            "same region, even unlisted"
        );
        assert_eq!(table.rtt_ms("us-east-1", "mars-1"), None);

        let regions: Vec<&str> = DEFAULT_CARBON
            .iter()
            .map(|(region, _, _)| *region)
            .collect();
        for a in &regions {
            for b in &regions {
                let rtt = table.rtt_ms(a, b).unwrap();
                assert_eq!(Some(rtt), table.rtt_ms(b, a));
                assert!(rtt < LATENCY_CEILING_MS, "{a}→{b}");
            }
        }

        let mut custom = LatencyTable::from_pairs([("a-1", "b-1", 10), ("b-1", "a-1", 20)])
            .with_same_region_ms(1);
        assert_eq!(custom.rtt_ms("a-1", "b-1"), Some(20), "later entry wins");
        assert_eq!(custom.rtt_ms("c-1", "c-1"), Some(1));
        custom.set("c-1", "c-1", 7);
        assert_eq!(
            custom.rtt_ms("c-1", "c-1"),
            Some(7),
            "explicit same-region entry"
        );
    }

    #[test]
    fn latency_table_round_trips_through_json() {
        let table = LatencyTable::default();
        let text = serde_json::to_value(&table).unwrap();
        assert_eq!(text["same_region_ms"], 2);
        let back: LatencyTable = serde_json::from_value(text).unwrap();
        assert_eq!(back, table);
        let partial: LatencyTable =
            serde_json::from_value(json!({"pairs": [{"a": "x-1", "b": "y-1", "ms": 9}]})).unwrap();
        assert_eq!(partial.rtt_ms("y-1", "x-1"), Some(9));
        assert_eq!(partial.same_region_ms(), DEFAULT_SAME_REGION_MS);
    }

    #[test]
    fn default_carbon_table_is_plausible_and_says_where_it_comes_from() {
        let table = CarbonTable::default();
        let sweden = table.intensity("eu-north-1").unwrap().g_co2e_per_kwh;
        let india = table.intensity("ap-south-1").unwrap().g_co2e_per_kwh;
        for (region, intensity) in table.entries() {
            assert!(sweden <= intensity.g_co2e_per_kwh, "{region}");
            assert!(intensity.g_co2e_per_kwh <= india, "{region}");
            assert!(intensity.g_co2e_per_kwh < CARBON_CEILING_G_PER_KWH);
            assert!(intensity.source.contains("approximate annual average"));
            assert!(intensity.source.contains("replace"));
            assert_eq!(intensity.as_of, "2023");
        }
        assert_eq!(table.entries().count(), 8);
        assert!(table.intensity("mars-1").is_none());
    }

    #[test]
    fn config_deserializes_partially() {
        let config: AtlasConfig =
            serde_json::from_value(json!({"weights": {"price": 1.0}})).unwrap();
        assert_eq!(config.weights.price, 1.0);
        assert_eq!(config.latency, LatencyTable::default());
        assert_eq!(config.carbon, CarbonTable::default());
        let round_trip: AtlasConfig =
            serde_json::from_value(serde_json::to_value(&config).unwrap()).unwrap();
        assert_eq!(round_trip, config);
    }

    #[test]
    fn score_is_the_weighted_mean_of_the_factors() {
        // One candidate: price 1.0 (only one), latency 0.5 (no customer region),
        // trust 0.8, uptime 0.99, carbon 1 − 40/800 = 0.95 (eu-north-1).
        let only = candidate("gpu_a", "eu-north-1", "2");
        let ranked = rank(&request(any_gpu()), &[only], &AtlasConfig::default());
        let scored = &ranked[0];
        let expected = 100.0 * (0.25 * 0.8 + 0.15 * 0.99 + 0.20 * 0.5 + 0.15 * 0.95 + 0.15 * 1.0)
            / (0.25 + 0.15 + 0.20 + 0.15 + 0.15);
        assert!((scored.score - expected).abs() < 1e-9, "{}", scored.score);
        let factors: Vec<&str> = scored.reasons.iter().map(|r| r.factor.as_str()).collect();
        assert_eq!(factors, ["trust", "uptime", "latency", "carbon", "price"]);
        let details: Vec<&str> = scored.reasons.iter().map(|r| r.detail.as_str()).collect();
        assert_eq!(details[0], "trust score 80/100");
        assert_eq!(
            details[1],
            "uptime 99% (Mnemo: agent presence × jobs not dropped)"
        );
        assert_eq!(
            details[2],
            "customer region unknown, latency counted as 0.5"
        );
        assert!(details[3].starts_with("grid 40 g CO2e/kWh in eu-north-1 (approximate"));
        assert_eq!(details[4], "price 2.00/h, the only eligible GPU");
    }

    #[test]
    fn provenance_counts_only_for_reproducibility_sensitive_jobs() {
        let mut proven = candidate("gpu_a", "us-east-1", "1");
        proven.provenance = Some(1.0);
        let mut unproven = candidate("gpu_b", "us-east-1", "1");
        unproven.provenance = Some(0.0);
        let config = AtlasConfig::default();

        let plain = rank(
            &request(any_gpu()),
            &[unproven.clone(), proven.clone()],
            &config,
        );
        assert_eq!(plain[0].score, plain[1].score);
        assert!(plain[0].reasons.iter().all(|r| r.factor != "provenance"));

        let mut sensitive = request(any_gpu());
        sensitive.reproducibility_sensitive = true;
        let ranked = rank(&sensitive, &[unproven, proven], &config);
        assert_eq!(ranked[0].candidate.gpu_id, gpu("gpu_a"));
        assert!(ranked[0].score > ranked[1].score);
        let reason = ranked[0]
            .reasons
            .iter()
            .find(|r| r.factor == "provenance")
            .unwrap();
        assert_eq!(reason.detail, "provenance 1.00 (Veritas)");
        assert_eq!(reason.weight, 0.10);
    }

    #[test]
    fn latency_prefers_the_customers_region() {
        let near = candidate("gpu_z", "eu-west-1", "1");
        let far = candidate("gpu_a", "ap-south-1", "1");
        let config = AtlasConfig {
            carbon: CarbonTable::empty(),
            ..AtlasConfig::default()
        };
        let mut from_dublin = request(any_gpu());
        from_dublin.customer_region = Some("eu-west-1".to_owned());
        let ranked = rank(&from_dublin, &[far, near], &config);
        assert_eq!(ranked[0].candidate.gpu_id, gpu("gpu_z"));
        let latency = &ranked[0].reasons[2];
        assert_eq!(latency.detail, "rtt eu-west-1→eu-west-1 ≈ 2 ms");
        assert!((latency.value - (1.0 - 2.0 / 300.0)).abs() < 1e-12);
        let far_latency = &ranked[1].reasons[2];
        assert_eq!(far_latency.detail, "rtt eu-west-1→ap-south-1 ≈ 120 ms");
        assert_eq!(
            ranked[1].reasons[3].detail,
            "grid carbon intensity of ap-south-1 unknown, counted as 0.5"
        );
    }

    #[test]
    fn price_is_relative_among_eligible_candidates() {
        let config = AtlasConfig::default();
        let cheap = candidate("gpu_a", "r-1", "1");
        let mid = candidate("gpu_b", "r-1", "2");
        let dear = candidate("gpu_c", "r-1", "5");
        let ranked = rank(&request(any_gpu()), &[dear, cheap, mid], &config);
        let price_reasons: Vec<(f64, &str)> = ranked
            .iter()
            .map(|s| {
                let r = s.reasons.iter().find(|r| r.factor == "price").unwrap();
                (r.value, r.detail.as_str())
            })
            .collect();
        assert_eq!(
            price_reasons,
            [
                (1.0, "price 1.00/h, cheapest of 3"),
                (0.75, "price 2.00/h, between 1.00/h and 5.00/h across 3"),
                (0.0, "price 5.00/h, dearest of 3"),
            ]
        );
        let same = [
            candidate("gpu_a", "r-1", "3"),
            candidate("gpu_b", "r-1", "3"),
        ];
        let ranked = rank(&request(any_gpu()), &same, &config);
        let price_reason = ranked[0].reasons.last().unwrap();
        assert_eq!(price_reason.value, 1.0);
        assert_eq!(price_reason.detail, "price 3.00/h, same as all 2 eligible");
        // Equal scores and prices: gpu_id decides.
        assert_eq!(ranked[0].candidate.gpu_id, gpu("gpu_a"));
    }

    #[test]
    fn zero_or_invalid_weights_give_zero_not_nan() {
        let zero = Weights {
            trust: 0.0,
            uptime: 0.0,
            provenance: 0.0,
            latency: 0.0,
            carbon: 0.0,
            price: 0.0,
        };
        let invalid = Weights {
            trust: f64::NAN,
            uptime: -1.0,
            provenance: f64::INFINITY,
            latency: f64::NEG_INFINITY,
            carbon: -0.0,
            price: f64::NAN,
        };
        for weights in [zero, invalid] {
            let config = AtlasConfig {
                weights,
                ..AtlasConfig::default()
            };
            let ranked = rank(
                &request(any_gpu()),
                &[
                    candidate("gpu_a", "r-1", "1"),
                    candidate("gpu_b", "r-1", "2"),
                ],
                &config,
            );
            assert!(ranked.iter().all(|s| s.score == 0.0));
            assert!(
                ranked
                    .iter()
                    .flat_map(|s| &s.reasons)
                    .all(|r| r.weight == 0.0)
            );
            assert_eq!(ranked[0].candidate.gpu_id, gpu("gpu_a"), "cheaper first");
        }
        // Huge finite weights do not overflow the sums.
        let huge = Weights {
            trust: f64::MAX,
            uptime: f64::MAX,
            provenance: f64::MAX,
            latency: f64::MAX,
            carbon: f64::MAX,
            price: f64::MAX,
        };
        let config = AtlasConfig {
            weights: huge,
            ..AtlasConfig::default()
        };
        let ranked = rank(
            &request(any_gpu()),
            &[candidate("gpu_a", "r-1", "1")],
            &config,
        );
        assert!(ranked[0].score > 0.0 && ranked[0].score <= 100.0);
    }

    #[test]
    fn non_finite_inputs_are_treated_as_unknown() {
        let mut odd = candidate("gpu_a", "odd-1", "1");
        odd.trust_score = f64::NAN;
        odd.uptime = Some(f64::INFINITY);
        odd.provenance = Some(f64::NAN);
        let mut carbon = CarbonTable::empty();
        carbon.set(
            "odd-1",
            CarbonIntensity {
                g_co2e_per_kwh: f64::NAN,
                source: "test".to_owned(),
                as_of: "test".to_owned(),
            },
        );
        let config = AtlasConfig {
            carbon,
            ..AtlasConfig::default()
        };
        let mut sensitive = request(any_gpu());
        sensitive.reproducibility_sensitive = true;
        let ranked = rank(&sensitive, &[odd], &config);
        let values: Vec<f64> = ranked[0].reasons.iter().map(|r| r.value).collect();
        assert_eq!(values, [0.0, 0.5, 0.5, 0.5, 0.5, 1.0]);
        assert!(ranked[0].score.is_finite());
        assert_eq!(
            ranked[0].reasons[0].detail,
            "trust score not a number, counted as 0"
        );
    }

    #[test]
    fn plan_is_fifo_and_retries_go_elsewhere() {
        let config = AtlasConfig::default();
        let best = Candidate {
            trust_score: 100.0,
            ..candidate("gpu_best", "r-1", "1")
        };
        let second = Candidate {
            node_id: node("node_b"),
            trust_score: 50.0,
            ..candidate("gpu_second", "r-1", "1")
        };
        let first_job = request(any_gpu());
        let mut second_job = request(any_gpu());
        second_job.job_id = JobId::parse("job_2").unwrap();
        let mut third_job = request(any_gpu());
        third_job.job_id = JobId::parse("job_3").unwrap();
        let free = [second.clone(), best.clone()];

        let assignments = plan(
            &[first_job.clone(), second_job.clone(), third_job],
            &free,
            &config,
        );
        let pairs: Vec<(&str, &str)> = assignments
            .iter()
            .map(|a| (a.job_id.as_str(), a.scored.candidate.gpu_id.as_str()))
            .collect();
        assert_eq!(pairs, [("job_1", "gpu_best"), ("job_2", "gpu_second")]);

        // A retry of a job that failed on node_a goes to node_b even though node_a scores higher.
        let mut retry = first_job;
        retry.excluded_nodes = vec![node("node_a")];
        let assignments = plan(&[retry], &free, &config);
        assert_eq!(assignments[0].scored.candidate.gpu_id, gpu("gpu_second"));

        // A GPU listed twice is still given out once.
        let assignments = plan(
            &[request(any_gpu()), second_job],
            &[best.clone(), best],
            &config,
        );
        assert_eq!(assignments.len(), 1);
    }

    #[test]
    fn placement_json_has_the_stored_shape() {
        let ranked = rank(
            &request(any_gpu()),
            &[candidate("gpu_a", "eu-west-1", "3.10")],
            &AtlasConfig::default(),
        );
        let value = placement_json(&ranked[0]);
        assert_eq!(value["gpu_id"], "gpu_a");
        assert_eq!(value["node_id"], "node_a");
        assert_eq!(value["region"], "eu-west-1");
        assert_eq!(value["score"], json!(ranked[0].score));
        let reasons = value["reasons"].as_array().unwrap();
        assert_eq!(reasons.len(), 5);
        let mut keys: Vec<&String> = reasons[0].as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["detail", "factor", "value", "weight"]);
        assert_eq!(reasons[4]["detail"], "price 3.10/h, the only eligible GPU");
    }

    #[test]
    fn short_number_drops_a_trailing_zero() {
        assert_eq!(short_number(82.0), "82");
        assert_eq!(short_number(99.5), "99.5");
        assert_eq!(short_number(99.04), "99");
    }
}
