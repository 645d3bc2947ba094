#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests of Atlas placement (SPEC §5): `plan` never double-books a GPU, never
//! breaks a job's constraints and does not depend on input order; `rank` is sorted with
//! scores in 0..=100; and, all else equal, lower carbon, lower price and higher trust win.

use std::collections::BTreeSet;

use gp4u_core::atlas::{
    AtlasConfig, Candidate, CarbonIntensity, CarbonTable, LatencyTable, PlacementRequest, Scored,
    Weights, eligible, matches_requirement, plan, rank,
};
use gp4u_core::{GpuId, GpuRequirement, GpuTarget, JobId, Money, NodeId};
use proptest::prelude::*;
use proptest::sample::select;

/// Regions of the default tables plus one neither table knows.
const REGIONS: [&str; 5] = [
    "us-east-1",
    "eu-west-1",
    "eu-north-1",
    "ap-south-1",
    "xx-unknown-1",
];
const GPU_NAMES: [&str; 4] = [
    "NVIDIA RTX 4090",
    "NVIDIA A100 80GB",
    "NVIDIA H100",
    "rtx 3090",
];
const MODELS: [&str; 5] = ["rtx", "RTX 4090", "a100", "h100", "3090"];
/// A small pool so that pins hit, nodes are shared and a few GPU ids repeat.
const GPU_POOL: u8 = 10;
const NODE_POOL: u8 = 4;

fn gpu_id(index: u8) -> GpuId {
    GpuId::parse(&format!("gpu_{index}")).unwrap()
}

fn node_id(index: u8) -> NodeId {
    NodeId::parse(&format!("node_{index}")).unwrap()
}

/// Prices on a coarse grid, so ties are common.
fn price() -> impl Strategy<Value = Money> {
    (1_i64..=8).prop_map(|halves| Money::from_micros(halves * 500_000))
}

/// Chamber figures: often from a few values (so scores tie and the tie-breaks are
/// exercised), else anywhere in range, sometimes out of range or not a number.
fn unit_figure() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![
        3 => select(vec![0.5, 0.9, 0.99]).prop_map(Some),
        2 => (0.0_f64..=1.0).prop_map(Some),
        2 => Just(None),
        1 => select(vec![-0.5, 1.5, f64::NAN, f64::INFINITY]).prop_map(Some),
    ]
}

fn trust() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => select(vec![50.0, 80.0, 100.0]),
        2 => 0.0_f64..=100.0,
        1 => select(vec![-10.0, 150.0, f64::NAN, f64::NEG_INFINITY]),
    ]
}

fn candidate() -> impl Strategy<Value = Candidate> {
    (
        0..GPU_POOL,
        0..NODE_POOL,
        select(GPU_NAMES.to_vec()),
        select(vec![16.0, 24.0, 40.0, 80.0]),
        select(REGIONS.to_vec()),
        price(),
        trust(),
        unit_figure(),
        unit_figure(),
    )
        .prop_map(
            |(
                gpu,
                node,
                name,
                vram_gb,
                region,
                price_per_hour,
                trust_score,
                uptime,
                provenance,
            )| {
                Candidate {
                    gpu_id: gpu_id(gpu),
                    node_id: node_id(node),
                    gpu_name: name.to_owned(),
                    vram_gb,
                    region: region.to_owned(),
                    price_per_hour,
                    trust_score,
                    uptime,
                    provenance,
                    posture: None,
                }
            },
        )
}

fn requirement() -> impl Strategy<Value = GpuRequirement> {
    (
        proptest::option::of(select(MODELS.to_vec())),
        proptest::option::of(select(vec![16.0, 24.0, 40.0, 80.0, 81.0])),
        proptest::option::weighted(0.3, select(REGIONS.to_vec())),
        proptest::option::of(price()),
    )
        .prop_map(
            |(model, min_vram_gb, region, max_price_per_hour)| GpuRequirement {
                model: model.map(str::to_owned),
                min_vram_gb,
                region: region.map(str::to_owned),
                max_price_per_hour,
            },
        )
}

fn target() -> impl Strategy<Value = GpuTarget> {
    prop_oneof![
        1 => (0..GPU_POOL).prop_map(|gpu| GpuTarget::Pinned(gpu_id(gpu))),
        3 => requirement().prop_map(GpuTarget::Requirement),
    ]
}

/// Requests with unique job ids, in FIFO order.
fn requests() -> impl Strategy<Value = Vec<PlacementRequest>> {
    prop::collection::vec(
        (
            target(),
            proptest::option::of(select(REGIONS.to_vec())),
            any::<bool>(),
            prop::collection::vec(0..NODE_POOL, 0..=2),
        ),
        0..8,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(
                |(index, (target, region, sensitive, excluded))| PlacementRequest {
                    job_id: JobId::parse(&format!("job_{index}")).unwrap(),
                    target,
                    customer_region: region.map(str::to_owned),
                    reproducibility_sensitive: sensitive,
                    excluded_nodes: excluded.into_iter().map(node_id).collect(),
                    network: Default::default(),
                    scratch_gb: 20.0,
                },
            )
            .collect()
    })
}

/// One request of the kind `requests` makes.
fn one_request() -> impl Strategy<Value = PlacementRequest> {
    requests()
        .prop_filter("at least one request", |requests| !requests.is_empty())
        .prop_map(|mut requests| requests.remove(0))
}

/// `request` turned into "any GPU will do", with no excluded node.
fn any_gpu(request: PlacementRequest) -> PlacementRequest {
    PlacementRequest {
        target: GpuTarget::Requirement(GpuRequirement::default()),
        excluded_nodes: Vec::new(),
        ..request
    }
}

/// Finite, non-negative weights, sometimes zero.
fn weights() -> impl Strategy<Value = Weights> {
    let weight = || prop_oneof![1 => Just(0.0), 4 => 0.0_f64..=10.0];
    (weight(), weight(), weight(), weight(), weight(), weight()).prop_map(
        |(trust, uptime, provenance, latency, carbon, price)| Weights {
            trust,
            uptime,
            provenance,
            latency,
            carbon,
            price,
        },
    )
}

fn config() -> impl Strategy<Value = AtlasConfig> {
    prop_oneof![
        Just(AtlasConfig::default()),
        weights().prop_map(|weights| AtlasConfig {
            weights,
            ..AtlasConfig::default()
        }),
    ]
}

/// Candidates and the same candidates in another order.
fn free_and_shuffled() -> impl Strategy<Value = (Vec<Candidate>, Vec<Candidate>)> {
    prop::collection::vec(candidate(), 0..10)
        .prop_flat_map(|free| (Just(free.clone()), Just(free).prop_shuffle()))
}

/// NaN inputs make `PartialEq` fail on equal values; their `Debug` text compares them as
/// the same value, which is what determinism means here.
fn same<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

fn position(ranked: &[Scored], gpu: &GpuId) -> usize {
    ranked
        .iter()
        .position(|scored| scored.candidate.gpu_id == *gpu)
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn plan_never_double_books_nor_breaks_constraints(
        requests in requests(),
        free in prop::collection::vec(candidate(), 0..10),
        config in config(),
    ) {
        let assignments = plan(&requests, &free, &config);

        let mut used = BTreeSet::new();
        for assignment in &assignments {
            let gpu = &assignment.scored.candidate;
            prop_assert!(used.insert(gpu.gpu_id.clone()), "{} given out twice", gpu.gpu_id);
            prop_assert!(free.iter().any(|candidate| same(candidate, gpu)), "not a free GPU");

            let request = requests
                .iter()
                .find(|request| request.job_id == assignment.job_id)
                .unwrap();
            prop_assert!(eligible(request, gpu));
            prop_assert!(!request.excluded_nodes.contains(&gpu.node_id), "excluded node");
            match &request.target {
                GpuTarget::Pinned(pinned) => prop_assert_eq!(pinned, &gpu.gpu_id),
                GpuTarget::Requirement(requirement) => {
                    prop_assert!(matches_requirement(
                        requirement, &gpu.gpu_name, gpu.vram_gb, &gpu.region, gpu.price_per_hour
                    ));
                    if let Some(model) = &requirement.model {
                        prop_assert!(gpu.gpu_name.to_lowercase().contains(&model.to_lowercase()));
                    }
                    if let Some(min) = requirement.min_vram_gb {
                        prop_assert!(gpu.vram_gb >= min);
                    }
                    if let Some(region) = &requirement.region {
                        prop_assert_eq!(region, &gpu.region);
                    }
                    if let Some(max) = requirement.max_price_per_hour {
                        prop_assert!(gpu.price_per_hour <= max);
                    }
                }
            }
            prop_assert!((0.0..=100.0).contains(&assignment.scored.score));
        }

        // FIFO: assignments follow request order, each job at most once.
        let order: Vec<&JobId> = assignments.iter().map(|a| &a.job_id).collect();
        let expected_order: Vec<&JobId> = requests
            .iter()
            .map(|request| &request.job_id)
            .filter(|job| order.contains(job))
            .collect();
        prop_assert_eq!(order, expected_order);
    }

    #[test]
    fn plan_gives_each_request_the_best_remaining_gpu(
        requests in requests(),
        free in prop::collection::vec(candidate(), 0..10),
        config in config(),
    ) {
        let assignments = plan(&requests, &free, &config);
        let mut remaining = free.clone();
        let mut given = assignments.iter();
        let mut next = given.next();
        for request in &requests {
            let best = rank(request, &remaining, &config).into_iter().next();
            match (best, next) {
                (Some(best), Some(assignment)) if assignment.job_id == request.job_id => {
                    prop_assert!(same(&best, &assignment.scored));
                    remaining.retain(|c| c.gpu_id != best.candidate.gpu_id);
                    next = given.next();
                }
                (None, Some(assignment)) => {
                    prop_assert_ne!(
                        &assignment.job_id, &request.job_id, "placed with nothing eligible"
                    );
                }
                (None, None) => {}
                (Some(_), _) => {
                    prop_assert!(false, "{} left out with a GPU free for it", request.job_id);
                }
            }
        }
        prop_assert!(next.is_none());
    }

    #[test]
    fn plan_is_deterministic_and_ignores_the_order_of_free(
        requests in requests(),
        (free, shuffled) in free_and_shuffled(),
        config in config(),
    ) {
        let first = plan(&requests, &free, &config);
        prop_assert!(same(&first, &plan(&requests, &free, &config)));
        prop_assert!(same(&first, &plan(&requests, &shuffled, &config)));
    }

    #[test]
    fn rank_is_sorted_bounded_and_order_free(
        request in one_request(),
        (candidates, shuffled) in free_and_shuffled(),
        config in config(),
    ) {
        let ranked = rank(&request, &candidates, &config);
        let eligible_count = candidates.iter().filter(|c| eligible(&request, c)).count();
        prop_assert_eq!(ranked.len(), eligible_count);
        for scored in &ranked {
            prop_assert!(scored.score.is_finite());
            prop_assert!((0.0..=100.0).contains(&scored.score), "score {}", scored.score);
            for reason in &scored.reasons {
                prop_assert!((0.0..=1.0).contains(&reason.value), "{reason:?}");
                prop_assert!(reason.weight.is_finite() && reason.weight >= 0.0);
            }
            let has_provenance = scored.reasons.iter().any(|r| r.factor == "provenance");
            prop_assert_eq!(has_provenance, request.reproducibility_sensitive);
        }
        for pair in ranked.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            prop_assert!(a.score >= b.score, "not sorted by score");
            if a.score == b.score {
                prop_assert!(a.candidate.price_per_hour <= b.candidate.price_per_hour);
                if a.candidate.price_per_hour == b.candidate.price_per_hour {
                    prop_assert!(a.candidate.gpu_id <= b.candidate.gpu_id);
                }
            }
        }
        prop_assert!(same(&ranked, &rank(&request, &shuffled, &config)));
    }

    #[test]
    fn lower_carbon_wins_all_else_equal(
        base in candidate(),
        (low, high) in (0_u32..800, 0_u32..800)
            .prop_filter("distinct", |(a, b)| a != b)
            .prop_map(|(a, b)| (a.min(b), a.max(b))),
        customer_in_third_region in any::<bool>(),
        rtt in 0_u32..400,
        low_gets_smaller_id in any::<bool>(),
        low_listed_first in any::<bool>(),
        weights in weights(),
        carbon_weight in 0.01_f64..=10.0,
        sensitive in any::<bool>(),
    ) {
        let intensity = |grams: u32| CarbonIntensity {
            g_co2e_per_kwh: f64::from(grams),
            source: "test".to_owned(),
            as_of: "test".to_owned(),
        };
        let carbon =
            CarbonTable::from_entries([("low-1", intensity(low)), ("high-1", intensity(high))]);
        // Equal latency from the customer: unknown region, or the same rtt to both.
        let latency =
            LatencyTable::from_pairs([("cust-1", "low-1", rtt), ("cust-1", "high-1", rtt)]);
        let config = AtlasConfig {
            weights: Weights { carbon: carbon_weight, ..weights },
            latency,
            carbon,
        };
        let (low_id, high_id) = if low_gets_smaller_id { (1, 2) } else { (2, 1) };
        let low_gpu =
            Candidate { gpu_id: gpu_id(low_id), region: "low-1".to_owned(), ..base.clone() };
        let high_gpu =
            Candidate { gpu_id: gpu_id(high_id), region: "high-1".to_owned(), ..base };
        let candidates = if low_listed_first {
            vec![low_gpu.clone(), high_gpu.clone()]
        } else {
            vec![high_gpu.clone(), low_gpu.clone()]
        };
        let request = PlacementRequest {
            job_id: JobId::parse("job_1").unwrap(),
            target: GpuTarget::Requirement(GpuRequirement::default()),
            customer_region: customer_in_third_region.then(|| "cust-1".to_owned()),
            reproducibility_sensitive: sensitive,
            excluded_nodes: Vec::new(),
            network: Default::default(),
            scratch_gb: 20.0,
        };
        let ranked = rank(&request, &candidates, &config);
        prop_assert_eq!(&ranked[0].candidate.gpu_id, &low_gpu.gpu_id);
        prop_assert!(ranked[0].score > ranked[1].score);
    }

    #[test]
    fn cheaper_wins_all_else_equal(
        base in candidate(),
        (cheap, dear) in (price(), price())
            .prop_filter("distinct", |(a, b)| a != b)
            .prop_map(|(a, b)| (a.min(b), a.max(b))),
        others in prop::collection::vec(candidate(), 0..4),
        cheap_gets_smaller_id in any::<bool>(),
        request in one_request(),
        config in config(),
    ) {
        // Any weights, even a zero price weight: then the price tie-break decides.
        let request = any_gpu(request);
        let (cheap_id, dear_id) = if cheap_gets_smaller_id { (100, 101) } else { (101, 100) };
        let cheap_gpu =
            Candidate { gpu_id: gpu_id(cheap_id), price_per_hour: cheap, ..base.clone() };
        let dear_gpu = Candidate { gpu_id: gpu_id(dear_id), price_per_hour: dear, ..base };
        let mut candidates = others;
        candidates.push(dear_gpu.clone());
        candidates.push(cheap_gpu.clone());
        let ranked = rank(&request, &candidates, &config);
        prop_assert!(position(&ranked, &cheap_gpu.gpu_id) < position(&ranked, &dear_gpu.gpu_id));
    }

    #[test]
    fn higher_trust_wins_all_else_equal(
        base in candidate(),
        (low, high) in (0_u32..=100, 0_u32..=100)
            .prop_filter("distinct", |(a, b)| a != b)
            .prop_map(|(a, b)| (a.min(b), a.max(b))),
        others in prop::collection::vec(candidate(), 0..4),
        trusted_gets_smaller_id in any::<bool>(),
        request in one_request(),
        weights in weights(),
        trust_weight in 0.01_f64..=10.0,
    ) {
        let request = any_gpu(request);
        let weights = Weights { trust: trust_weight, ..weights };
        let config = AtlasConfig { weights, ..AtlasConfig::default() };
        let (trusted_id, untrusted_id) =
            if trusted_gets_smaller_id { (100, 101) } else { (101, 100) };
        let trusted =
            Candidate { gpu_id: gpu_id(trusted_id), trust_score: f64::from(high), ..base.clone() };
        let untrusted =
            Candidate { gpu_id: gpu_id(untrusted_id), trust_score: f64::from(low), ..base };
        let mut candidates = others;
        candidates.push(untrusted.clone());
        candidates.push(trusted.clone());
        let ranked = rank(&request, &candidates, &config);
        let t = position(&ranked, &trusted.gpu_id);
        let u = position(&ranked, &untrusted.gpu_id);
        prop_assert!(t < u);
        prop_assert!(ranked[t].score > ranked[u].score);
    }
}

/// Placement data for the Mnemo/Veritas-free case: a fresh node with unknown uptime is
/// neither favoured nor shut out against a node with a middling record.
#[test]
fn unknown_uptime_is_neutral() {
    let base = Candidate {
        gpu_id: gpu_id(1),
        node_id: node_id(1),
        gpu_name: "NVIDIA RTX 4090".to_owned(),
        vram_gb: 24.0,
        region: "us-east-1".to_owned(),
        price_per_hour: Money::from_micros(1_000_000),
        trust_score: 50.0,
        uptime: None,
        provenance: None,
        posture: None,
    };
    let known = Candidate {
        gpu_id: gpu_id(2),
        uptime: Some(0.5),
        ..base.clone()
    };
    let request = PlacementRequest {
        job_id: JobId::parse("job_1").unwrap(),
        target: GpuTarget::Requirement(GpuRequirement::default()),
        customer_region: None,
        reproducibility_sensitive: false,
        excluded_nodes: Vec::new(),
        network: Default::default(),
        scratch_gb: 20.0,
    };
    let ranked = rank(&request, &[known, base], &AtlasConfig::default());
    assert_eq!(ranked[0].score, ranked[1].score);
}
