#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Table-driven tests of Tutela (SPEC §7): clamping and parsing, pattern inference on
//! deterministic synthetic sequences, every rule with its near misses, attribution of
//! mining, and the slashing arithmetic.

use gp4u_core::manifest::ValidationCode;
use gp4u_core::money::Money;
use gp4u_core::tutela::{
    Attribution, InferenceConfig, MINER_PORTS, Pattern, RawSample, Rule, RuleConfig, Severity,
    SlashKind, SlashSchedule, SlashTerms, TelemetrySample, TutelaError, Verdict, clamp, evaluate,
    infer_pattern, kill_reason, parse_sample, slash,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// Synthetic sequences (deterministic: no randomness, only fixed cycles)
// ---------------------------------------------------------------------------------------

fn sample(util: f64, vram: f64, power: f64, outbound: f64) -> TelemetrySample {
    TelemetrySample {
        gpu_utilization_pct: util,
        vram_used_gb: vram,
        vram_allocated_gb: 24.0,
        power_draw_watts: power,
        temperature_c: 70.0,
        outbound_bytes_per_sec: outbound,
        inferred_pattern: None,
        unique_dest_ips: Some(3),
        foreign_gpu_processes: Some(0),
        throttling: Some(false),
        dest_ports: Some(vec![443]),
        at_ms: 0,
    }
}

fn timed(mut samples: Vec<TelemetrySample>) -> Vec<TelemetrySample> {
    for (index, sample) in samples.iter_mut().enumerate() {
        sample.at_ms = 1_700_000_000_000 + 10_000 * index as i64;
    }
    samples
}

/// A training run: utilization and VRAM rise and fall with batches, an evaluation dip every
/// tenth sample, power following the load, a checkpoint upload every tenth sample.
fn training(n: usize) -> Vec<TelemetrySample> {
    const UTIL: [f64; 10] = [92.0, 95.0, 97.0, 93.0, 96.0, 94.0, 98.0, 91.0, 96.0, 55.0];
    timed(
        (0..n)
            .map(|i| {
                let util = UTIL[i % 10];
                let vram = 18.0 + (i % 5) as f64 * 0.9;
                let outbound = if i % 10 == 9 { 40_000_000.0 } else { 30_000.0 };
                sample(util, vram, 120.0 + util * 3.0, outbound)
            })
            .collect(),
    )
}

/// A training run pinned at high, steady utilization, but whose VRAM and power still move
/// with the batches, and which streams metrics at a steady small rate.
fn steady_training(n: usize) -> Vec<TelemetrySample> {
    const UTIL: [f64; 4] = [97.0, 98.0, 96.5, 97.5];
    const VRAM: [f64; 6] = [18.0, 19.5, 21.0, 22.4, 20.0, 18.8];
    const POWER: [f64; 5] = [350.0, 395.0, 420.0, 370.0, 405.0];
    timed(
        (0..n)
            .map(|i| sample(UTIL[i % 4], VRAM[i % 6], POWER[i % 5], 20_000.0))
            .collect(),
    )
}

/// An inference service: bursts of requests and idle gaps.
fn inference(n: usize) -> Vec<TelemetrySample> {
    const UTIL: [f64; 8] = [5.0, 80.0, 12.0, 95.0, 3.0, 70.0, 8.0, 60.0];
    timed(
        (0..n)
            .map(|i| {
                let util = UTIL[i % 8];
                sample(util, 9.0, 80.0 + util * 3.0, 200_000.0 + util * 50_000.0)
            })
            .collect(),
    )
}

fn idle(n: usize) -> Vec<TelemetrySample> {
    const UTIL: [f64; 3] = [0.0, 2.0, 1.0];
    timed(
        (0..n)
            .map(|i| sample(UTIL[i % 3], 0.5, 30.0, 500.0))
            .collect(),
    )
}

/// An ethash-like miner: pinned utilization, flat power and VRAM (the DAG), a steady small
/// share-submission flow to the pool.
fn miner(n: usize) -> Vec<TelemetrySample> {
    const UTIL: [f64; 4] = [99.0, 99.5, 100.0, 99.5];
    const POWER: [f64; 3] = [250.0, 251.0, 249.5];
    const OUT: [f64; 3] = [2_000.0, 2_100.0, 1_950.0];
    timed(
        (0..n)
            .map(|i| sample(UTIL[i % 4], 4.7, POWER[i % 3], OUT[i % 3]))
            .collect(),
    )
}

fn with(
    mut samples: Vec<TelemetrySample>,
    change: impl Fn(&mut TelemetrySample),
) -> Vec<TelemetrySample> {
    samples.iter_mut().for_each(change);
    samples
}

// ---------------------------------------------------------------------------------------
// Pattern inference
// ---------------------------------------------------------------------------------------

#[test]
fn pattern_inference_table() {
    let cases: Vec<(&str, Vec<TelemetrySample>, Pattern)> = vec![
        ("empty window", Vec::new(), Pattern::Idle),
        ("idle GPU", idle(12), Pattern::Idle),
        ("training sawtooth", training(20), Pattern::Training),
        ("training, one minute", training(6), Pattern::Training),
        ("inference bursts", inference(16), Pattern::Inference),
        ("ethash-like miner", miner(12), Pattern::CryptoMining),
        (
            "miner, exactly min_samples",
            miner(6),
            Pattern::CryptoMining,
        ),
        // Near misses that must not be mining.
        (
            "steady high-utilization training with VRAM/power variation",
            steady_training(24),
            Pattern::Training,
        ),
        (
            "steady training with constant VRAM but varying power",
            with(steady_training(24), |s| s.vram_used_gb = 20.0),
            Pattern::Training,
        ),
        (
            "steady training with constant power but varying VRAM",
            with(steady_training(24), |s| s.power_draw_watts = 400.0),
            Pattern::Training,
        ),
        (
            "miner, too few samples without a miner port",
            miner(5),
            Pattern::Training,
        ),
        (
            "miner GPU profile, no outbound flow, no miner port (decision: not mining)",
            with(miner(12), |s| s.outbound_bytes_per_sec = 0.0),
            Pattern::Training,
        ),
        (
            "miner GPU profile, large flows (a data job), no miner port",
            with(miner(12), |s| s.outbound_bytes_per_sec = 50_000_000.0),
            Pattern::Training,
        ),
        (
            "miner GPU profile, bursty small flows, no miner port",
            with_index(miner(12), |i, s| {
                s.outbound_bytes_per_sec = if i % 2 == 0 { 100.0 } else { 900_000.0 }
            }),
            Pattern::Training,
        ),
        (
            "miner network shape, utilization 89 %",
            with(miner(12), |s| s.gpu_utilization_pct -= 10.5),
            Pattern::Training,
        ),
        (
            "miner network shape, utilization std dev >= 3",
            with_index(miner(12), |i, s| {
                s.gpu_utilization_pct = if i % 2 == 0 { 100.0 } else { 94.0 }
            }),
            Pattern::Training,
        ),
        // The miner port shortcut.
        (
            "miner GPU profile, no flow, port 3333, 3 samples",
            with(miner(3), |s| {
                s.outbound_bytes_per_sec = 0.0;
                s.dest_ports = Some(vec![3333]);
            }),
            Pattern::CryptoMining,
        ),
        (
            "miner GPU profile, no flow, port 14444 in one sample only",
            with_index(miner(8), |i, s| {
                s.outbound_bytes_per_sec = 0.0;
                if i == 7 {
                    s.dest_ports = Some(vec![443, 14444]);
                }
            }),
            Pattern::CryptoMining,
        ),
        (
            "miner GPU profile, port 3333, only 2 samples",
            with(miner(2), |s| {
                s.outbound_bytes_per_sec = 0.0;
                s.dest_ports = Some(vec![3333]);
            }),
            Pattern::Training,
        ),
        (
            "training that happens to connect to port 5555",
            with(training(20), |s| s.dest_ports = Some(vec![5555])),
            Pattern::Training,
        ),
        (
            "idle GPU connected to a miner port",
            with(idle(12), |s| s.dest_ports = Some(vec![3333])),
            Pattern::Idle,
        ),
        (
            "miner hidden behind an old training history beyond the window",
            [training(40), miner(30)].concat(),
            Pattern::CryptoMining,
        ),
    ];
    let config = InferenceConfig::default();
    for (name, window, expected) in cases {
        assert_eq!(infer_pattern(&window, &config), expected, "{name}");
    }
}

fn with_index(
    mut samples: Vec<TelemetrySample>,
    change: impl Fn(usize, &mut TelemetrySample),
) -> Vec<TelemetrySample> {
    for (index, sample) in samples.iter_mut().enumerate() {
        change(index, sample);
    }
    samples
}

#[test]
fn miner_ports_are_the_documented_ones() {
    assert_eq!(MINER_PORTS, [3333, 4444, 5555, 7777, 14444]);
    assert_eq!(InferenceConfig::default().miner_ports, MINER_PORTS.to_vec());
    for port in MINER_PORTS {
        let window = with(miner(3), |s| {
            s.outbound_bytes_per_sec = 0.0;
            s.dest_ports = Some(vec![port]);
        });
        assert_eq!(
            infer_pattern(&window, &InferenceConfig::default()),
            Pattern::CryptoMining,
            "port {port}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------------------

/// A calm window: three ordinary samples, nothing fires.
fn calm(n: usize) -> Vec<TelemetrySample> {
    training(n)
}

fn last(
    mut window: Vec<TelemetrySample>,
    change: impl Fn(&mut TelemetrySample),
) -> Vec<TelemetrySample> {
    if let Some(latest) = window.last_mut() {
        change(latest);
    }
    window
}

fn temps(values: &[f64]) -> Vec<TelemetrySample> {
    timed(
        values
            .iter()
            .map(|&temp| {
                let mut s = sample(90.0, 20.0, 400.0, 30_000.0);
                s.temperature_c = temp;
                s
            })
            .collect(),
    )
}

fn rules(verdicts: &[Verdict]) -> Vec<Rule> {
    verdicts.iter().map(|verdict| verdict.rule).collect()
}

#[test]
fn rule_table() {
    use Rule::*;
    let cases: Vec<(&str, Vec<TelemetrySample>, Vec<Rule>)> = vec![
        ("calm training", calm(8), vec![]),
        ("empty window", Vec::new(), vec![]),
        // VRAM_OVERCLAIM
        (
            "VRAM used == allocated",
            last(calm(3), |s| s.vram_used_gb = 24.0),
            vec![],
        ),
        (
            "VRAM used = allocated + 0.01",
            last(calm(3), |s| s.vram_used_gb = 24.01),
            vec![VramOverclaim],
        ),
        (
            "VRAM overclaim earlier, not in the latest sample",
            [last(calm(3), |s| s.vram_used_gb = 30.0), calm(1)].concat(),
            vec![],
        ),
        // OUTBOUND_PORT_SCAN
        (
            "50 unique IPs",
            last(calm(3), |s| s.unique_dest_ips = Some(50)),
            vec![],
        ),
        (
            "51 unique IPs",
            last(calm(3), |s| s.unique_dest_ips = Some(51)),
            vec![OutboundPortScan],
        ),
        (
            "unique IPs unknown",
            last(calm(3), |s| s.unique_dest_ips = None),
            vec![],
        ),
        // HIGH_OUTBOUND_BANDWIDTH
        (
            "exactly 100 MB/s",
            last(calm(3), |s| s.outbound_bytes_per_sec = 100_000_000.0),
            vec![],
        ),
        (
            "just above 100 MB/s",
            last(calm(3), |s| s.outbound_bytes_per_sec = 100_000_001.0),
            vec![HighOutboundBandwidth],
        ),
        // THERMAL_THROTTLE_SUSTAINED
        ("84.9 °C x3", temps(&[84.9, 84.9, 84.9]), vec![]),
        (
            "85 °C x3",
            temps(&[85.0, 85.0, 85.0]),
            vec![ThermalThrottleSustained],
        ),
        ("85 °C x2", temps(&[85.0, 85.0]), vec![]),
        (
            "85 °C x2 after a cool one",
            temps(&[80.0, 85.0, 85.0]),
            vec![],
        ),
        (
            "85 °C x3 then cool",
            temps(&[85.0, 85.0, 85.0, 70.0]),
            vec![],
        ),
        ("85, 85, 84.9", temps(&[85.0, 85.0, 84.9]), vec![]),
        (
            "throttling flag x3 at 60 °C",
            with(temps(&[60.0, 60.0, 60.0]), |s| s.throttling = Some(true)),
            vec![ThermalThrottleSustained],
        ),
        (
            "throttling flag x2 at 60 °C",
            with(temps(&[60.0, 60.0]), |s| s.throttling = Some(true)),
            vec![],
        ),
        (
            "throttling, 90 °C, throttling",
            with_index(temps(&[60.0, 90.0, 60.0]), |i, s| {
                s.throttling = Some(i != 1)
            }),
            vec![ThermalThrottleSustained],
        ),
        // CRYPTO_MINING_PATTERN
        ("ethash-like miner", miner(12), vec![CryptoMiningPattern]),
        (
            "agent says CRYPTO_MINING on the first packet",
            last(calm(1), |s| {
                s.inferred_pattern = Some(Pattern::CryptoMining)
            }),
            vec![CryptoMiningPattern],
        ),
        (
            "agent said CRYPTO_MINING earlier, not now",
            [
                last(calm(2), |s| {
                    s.inferred_pattern = Some(Pattern::CryptoMining)
                }),
                calm(1),
            ]
            .concat(),
            vec![],
        ),
        (
            "agent says TRAINING",
            last(calm(3), |s| s.inferred_pattern = Some(Pattern::Training)),
            vec![],
        ),
        (
            "steady high-utilization training",
            steady_training(24),
            vec![],
        ),
        (
            "miner-like GPU, no network shape, no miner port",
            with(miner(12), |s| s.outbound_bytes_per_sec = 0.0),
            vec![],
        ),
        (
            "foreign processes without mining",
            with(calm(8), |s| s.foreign_gpu_processes = Some(3)),
            vec![],
        ),
        (
            "mining by foreign processes on the assigned GPU",
            with(miner(12), |s| s.foreign_gpu_processes = Some(1)),
            vec![CryptoMiningDuringMlJob],
        ),
        // Several at once, in the documented order.
        (
            "mining, port scan, overclaim, bandwidth and heat together",
            with(miner(12), |s| {
                s.unique_dest_ips = Some(200);
                s.vram_used_gb = 4.7;
                s.vram_allocated_gb = 4.0;
                s.outbound_bytes_per_sec = 2_000.0;
                s.temperature_c = 95.0;
            }),
            vec![
                CryptoMiningPattern,
                OutboundPortScan,
                VramOverclaim,
                ThermalThrottleSustained,
            ],
        ),
        (
            "agent-reported mining with high bandwidth",
            last(calm(3), |s| {
                s.inferred_pattern = Some(Pattern::CryptoMining);
                s.outbound_bytes_per_sec = 200_000_000.0;
            }),
            vec![CryptoMiningPattern, HighOutboundBandwidth],
        ),
    ];
    let config = RuleConfig::default();
    for (name, window, expected) in cases {
        assert_eq!(rules(&evaluate(&window, &config)), expected, "{name}");
    }
}

fn only(window: &[TelemetrySample], config: &RuleConfig) -> Verdict {
    let verdicts = evaluate(window, config);
    assert_eq!(verdicts.len(), 1, "{verdicts:?}");
    verdicts.into_iter().next().unwrap()
}

/// (window, rule, severity, kill, attribution, observed, threshold)
type ConsequenceCase = (
    Vec<TelemetrySample>,
    Rule,
    Severity,
    bool,
    Attribution,
    f64,
    f64,
);

#[test]
fn verdict_consequences_table() {
    use Attribution::*;
    use Severity::*;
    let config = RuleConfig::default();
    // (window, rule, severity, kill, attribution, observed, threshold)
    let cases: Vec<ConsequenceCase> = vec![
        (
            miner(12),
            Rule::CryptoMiningPattern,
            Hard,
            true,
            Customer,
            99.5,
            90.0,
        ),
        (
            with(miner(12), |s| s.foreign_gpu_processes = Some(2)),
            Rule::CryptoMiningDuringMlJob,
            Hard,
            true,
            Provider,
            99.5,
            90.0,
        ),
        (
            with(miner(12), |s| s.foreign_gpu_processes = Option::None),
            Rule::CryptoMiningPattern,
            Hard,
            true,
            Customer,
            99.5,
            90.0,
        ),
        (
            last(calm(3), |s| s.unique_dest_ips = Some(51)),
            Rule::OutboundPortScan,
            Hard,
            true,
            Customer,
            51.0,
            50.0,
        ),
        (
            last(calm(3), |s| s.vram_used_gb = 24.5),
            Rule::VramOverclaim,
            Soft,
            false,
            Provider,
            24.5,
            24.0,
        ),
        (
            last(calm(3), |s| s.outbound_bytes_per_sec = 150_000_000.0),
            Rule::HighOutboundBandwidth,
            Info,
            false,
            None,
            150_000_000.0,
            100_000_000.0,
        ),
        (
            temps(&[86.0, 85.0, 90.0]),
            Rule::ThermalThrottleSustained,
            Info,
            false,
            Provider,
            85.0,
            85.0,
        ),
    ];
    for (window, rule, severity, kill, attribution, observed, threshold) in cases {
        let verdict = only(&window, &config);
        assert_eq!(verdict.rule, rule);
        assert_eq!(verdict.severity, severity, "{rule:?}");
        assert_eq!(verdict.kill, kill, "{rule:?}");
        assert_eq!(verdict.attribution, attribution, "{rule:?}");
        assert_eq!(verdict.observed, observed, "{rule:?}");
        assert_eq!(verdict.threshold, threshold, "{rule:?}");
        assert!(!verdict.evidence.is_empty());
        assert_eq!(kill_reason(std::slice::from_ref(&verdict)).is_some(), kill);
    }
}

#[test]
fn mining_attribution_and_slash_kind() {
    let config = RuleConfig::default();
    let customer = only(&miner(12), &config);
    assert_eq!(customer.attribution, Attribution::Customer);
    assert_eq!(customer.rule.slash_kind(), None, "no provider slash");
    assert!(customer.evidence.contains("customer's container"));

    let provider = only(
        &with(miner(12), |s| s.foreign_gpu_processes = Some(1)),
        &config,
    );
    assert_eq!(provider.attribution, Attribution::Provider);
    assert_eq!(
        provider.rule.slash_kind(),
        Some(SlashKind::CryptoMiningDuringMlJob)
    );
    assert!(provider.evidence.contains("1 foreign process"));

    // The agent's own claim also attributes by foreign processes.
    let agent = last(calm(1), |s| {
        s.inferred_pattern = Some(Pattern::CryptoMining);
        s.foreign_gpu_processes = Some(4);
    });
    assert_eq!(only(&agent, &config).rule, Rule::CryptoMiningDuringMlJob);

    assert_eq!(
        Rule::VramOverclaim.slash_kind(),
        Some(SlashKind::VramOverclaim)
    );
    for rule in [
        Rule::HighOutboundBandwidth,
        Rule::OutboundPortScan,
        Rule::ThermalThrottleSustained,
    ] {
        assert_eq!(rule.slash_kind(), None, "{rule:?}");
    }
}

#[test]
fn rule_config_thresholds_are_data() {
    assert_eq!(
        serde_json::from_value::<RuleConfig>(json!({})).unwrap(),
        RuleConfig::default()
    );
    let config: RuleConfig = serde_json::from_value(json!({
        "port_scan_unique_ips": 10,
        "high_outbound_bytes_per_sec": 50_000.0,
        "thermal_consecutive_samples": 2,
        "trust_agent_pattern": false,
        "inference": {"min_samples": 20}
    }))
    .unwrap();
    assert_eq!(config.inference.mining_min_util_pct, 90.0);
    assert_eq!(
        rules(&evaluate(
            &last(calm(3), |s| s.unique_dest_ips = Some(11)),
            &config
        )),
        vec![Rule::OutboundPortScan]
    );
    assert_eq!(
        rules(&evaluate(
            &last(calm(3), |s| s.outbound_bytes_per_sec = 60_000.0),
            &config
        )),
        vec![Rule::HighOutboundBandwidth]
    );
    assert_eq!(
        rules(&evaluate(&temps(&[85.0, 85.0]), &config)),
        vec![Rule::ThermalThrottleSustained]
    );
    assert_eq!(rules(&evaluate(&miner(12), &config)), vec![]);
    assert_eq!(
        rules(&evaluate(
            &last(calm(1), |s| s.inferred_pattern =
                Some(Pattern::CryptoMining)),
            &config
        )),
        vec![]
    );
    let verdict = only(&miner(12), &RuleConfig::default());
    let text = serde_json::to_value(&verdict).unwrap();
    assert_eq!(text["rule"], "CRYPTO_MINING_PATTERN");
    assert_eq!(text["severity"], "HARD");
    assert_eq!(text["attribution"], "CUSTOMER");
}

// ---------------------------------------------------------------------------------------
// Clamping and parsing
// ---------------------------------------------------------------------------------------

fn body() -> Value {
    json!({
        "job_id": "job_xyz789",
        "node_id": "node_abc",
        "gpu_utilization_pct": 94.2,
        "vram_used_gb": 22.1,
        "vram_allocated_gb": 24.0,
        "power_draw_watts": 380.0,
        "temperature_c": 82,
        "outbound_bytes_per_sec": 1200000,
        "inferred_pattern": "TRAINING"
    })
}

fn body_with(key: &str, value: Value) -> Value {
    let mut body = body();
    body[key] = value;
    body
}

fn body_without(key: &str) -> Value {
    let mut body = body();
    body.as_object_mut().unwrap().remove(key);
    body
}

#[test]
fn seed_packet_parses_unchanged() {
    let (sample, clamped) = parse_sample(&body(), 42).unwrap();
    assert!(clamped.is_empty());
    assert_eq!(
        sample,
        TelemetrySample {
            gpu_utilization_pct: 94.2,
            vram_used_gb: 22.1,
            vram_allocated_gb: 24.0,
            power_draw_watts: 380.0,
            temperature_c: 82.0,
            outbound_bytes_per_sec: 1_200_000.0,
            inferred_pattern: Some(Pattern::Training),
            unique_dest_ips: None,
            foreign_gpu_processes: None,
            throttling: None,
            dest_ports: None,
            at_ms: 42,
        }
    );
}

#[test]
fn clamping_table() {
    // (field, sent, stored)
    let cases: Vec<(&str, Value, f64)> = vec![
        ("gpu_utilization_pct", json!(1e9), 100.0),
        ("gpu_utilization_pct", json!(-5), 0.0),
        ("gpu_utilization_pct", json!(100), 100.0),
        ("power_draw_watts", json!(-250.0), 0.0),
        ("power_draw_watts", json!(5000), 2000.0),
        ("temperature_c", json!(-273.15), -20.0),
        ("temperature_c", json!(1000), 150.0),
        ("temperature_c", json!(-20), -20.0),
        ("vram_used_gb", json!(1e300), 4096.0),
        ("vram_allocated_gb", json!(-1), 0.0),
        ("outbound_bytes_per_sec", json!(1e15), 1e12),
        ("outbound_bytes_per_sec", json!(-0.0), 0.0),
        ("unique_dest_ips", json!(1e9), 1e6),
        ("unique_dest_ips", json!(-3), 0.0),
        ("unique_dest_ips", json!(51.7), 51.0),
        ("unique_dest_ips", json!(51), 51.0),
        ("foreign_gpu_processes", json!(-1), 0.0),
        ("foreign_gpu_processes", json!(2), 2.0),
    ];
    for (field, sent, stored) in cases {
        let (sample, clamped) = parse_sample(&body_with(field, sent.clone()), 0).unwrap();
        let value = serde_json::to_value(&sample).unwrap()[field]
            .as_f64()
            .unwrap();
        assert_eq!(value, stored, "{field} = {sent}");
        let changed = sent.as_f64().unwrap() != stored;
        assert_eq!(
            clamped.iter().map(|c| c.field.as_str()).collect::<Vec<_>>(),
            if changed { vec![field] } else { vec![] },
            "{field} = {sent}"
        );
        if let Some(report) = clamped.first() {
            assert_eq!(report.clamped, stored);
        }
    }
}

fn raw() -> RawSample {
    RawSample {
        gpu_utilization_pct: 50.0,
        vram_used_gb: 10.0,
        vram_allocated_gb: 24.0,
        power_draw_watts: 300.0,
        temperature_c: 70.0,
        outbound_bytes_per_sec: 1000.0,
        inferred_pattern: None,
        unique_dest_ips: Some(4.0),
        foreign_gpu_processes: Some(0.0),
        throttling: Some(false),
        dest_ports: Some(vec![5555, 443, 443]),
        at_ms: 7,
    }
}

#[test]
fn non_finite_values_are_refused_naming_the_field() {
    type Spoil = fn(&mut RawSample);
    let cases: Vec<(&str, Spoil)> = vec![
        ("gpu_utilization_pct", |r| r.gpu_utilization_pct = f64::NAN),
        ("vram_used_gb", |r| r.vram_used_gb = f64::INFINITY),
        ("vram_allocated_gb", |r| r.vram_allocated_gb = f64::NAN),
        ("power_draw_watts", |r| r.power_draw_watts = f64::NAN),
        ("temperature_c", |r| r.temperature_c = f64::NEG_INFINITY),
        ("outbound_bytes_per_sec", |r| {
            r.outbound_bytes_per_sec = f64::NAN
        }),
        ("unique_dest_ips", |r| r.unique_dest_ips = Some(f64::NAN)),
        ("foreign_gpu_processes", |r| {
            r.foreign_gpu_processes = Some(f64::INFINITY)
        }),
    ];
    for (field, spoil) in cases {
        let mut sample = raw();
        spoil(&mut sample);
        let error = clamp(sample).unwrap_err();
        assert_eq!(error.code, ValidationCode::InvalidType, "{field}");
        assert_eq!(error.field, field);
        assert!(error.message.contains(field), "{}", error.message);
    }
    // Several absurd values at once: all clamped, reported in field order.
    let mut absurd = raw();
    absurd.gpu_utilization_pct = 1e9;
    absurd.power_draw_watts = -1.0;
    let (sample, clamped) = clamp(absurd).unwrap();
    assert_eq!(sample.gpu_utilization_pct, 100.0);
    assert_eq!(sample.power_draw_watts, 0.0);
    assert_eq!(
        clamped.iter().map(|c| c.field.as_str()).collect::<Vec<_>>(),
        ["gpu_utilization_pct", "power_draw_watts"]
    );
    assert_eq!(clamped[0].original, 1e9);
    assert_eq!(
        sample.dest_ports,
        Some(vec![443, 5555]),
        "sorted, deduplicated"
    );
    assert_eq!(sample.at_ms, 7);
}

#[test]
fn parse_error_table() {
    use ValidationCode::*;
    let cases: Vec<(&str, Value, ValidationCode, &str)> = vec![
        ("not an object", json!([1, 2]), InvalidBody, ""),
        ("null body", Value::Null, InvalidBody, ""),
        (
            "missing utilization",
            body_without("gpu_utilization_pct"),
            InvalidType,
            "gpu_utilization_pct",
        ),
        (
            "null counts as absent",
            body_with("vram_used_gb", Value::Null),
            InvalidType,
            "vram_used_gb",
        ),
        (
            "missing allocation",
            body_without("vram_allocated_gb"),
            InvalidType,
            "vram_allocated_gb",
        ),
        (
            "power as a string",
            body_with("power_draw_watts", json!("380")),
            InvalidType,
            "power_draw_watts",
        ),
        (
            "temperature as a bool",
            body_with("temperature_c", json!(true)),
            InvalidType,
            "temperature_c",
        ),
        (
            "missing outbound",
            body_without("outbound_bytes_per_sec"),
            InvalidType,
            "outbound_bytes_per_sec",
        ),
        (
            "unknown pattern",
            body_with("inferred_pattern", json!("MINING")),
            InvalidType,
            "inferred_pattern",
        ),
        (
            "lowercase pattern",
            body_with("inferred_pattern", json!("training")),
            InvalidType,
            "inferred_pattern",
        ),
        (
            "pattern as a number",
            body_with("inferred_pattern", json!(3)),
            InvalidType,
            "inferred_pattern",
        ),
        (
            "IPs as a string",
            body_with("unique_dest_ips", json!("51")),
            InvalidType,
            "unique_dest_ips",
        ),
        (
            "foreign processes as an array",
            body_with("foreign_gpu_processes", json!([1])),
            InvalidType,
            "foreign_gpu_processes",
        ),
        (
            "throttling as a string",
            body_with("throttling", json!("yes")),
            InvalidType,
            "throttling",
        ),
        (
            "ports not an array",
            body_with("dest_ports", json!(3333)),
            InvalidType,
            "dest_ports",
        ),
        (
            "port out of range",
            body_with("dest_ports", json!([443, 70000])),
            InvalidType,
            "dest_ports[1]",
        ),
        (
            "negative port",
            body_with("dest_ports", json!([-1])),
            InvalidType,
            "dest_ports[0]",
        ),
        (
            "fractional port",
            body_with("dest_ports", json!([3333.5])),
            InvalidType,
            "dest_ports[0]",
        ),
    ];
    for (name, body, code, field) in cases {
        let error = parse_sample(&body, 0).unwrap_err();
        assert_eq!((error.code, error.field.as_str()), (code, field), "{name}");
        if !field.is_empty() {
            let bare = field.split('[').next().unwrap();
            assert!(error.message.contains(bare), "{name}: {}", error.message);
        }
    }
}

#[test]
fn optional_fields_parse() {
    let mut full = body();
    full["unique_dest_ips"] = json!(12);
    full["foreign_gpu_processes"] = json!(1);
    full["throttling"] = json!(true);
    full["dest_ports"] = json!([3333, 443, 3333]);
    full["inferred_pattern"] = json!("CRYPTO_MINING");
    full["exit_code"] = json!(0);
    full["final"] = json!(false);
    let (sample, clamped) = parse_sample(&full, 5).unwrap();
    assert!(clamped.is_empty());
    assert_eq!(sample.unique_dest_ips, Some(12));
    assert_eq!(sample.foreign_gpu_processes, Some(1));
    assert_eq!(sample.throttling, Some(true));
    assert_eq!(sample.dest_ports, Some(vec![443, 3333]));
    assert_eq!(sample.inferred_pattern, Some(Pattern::CryptoMining));

    let nulls = body_with("throttling", Value::Null);
    assert_eq!(parse_sample(&nulls, 0).unwrap().0.throttling, None);
    for pattern in ["TRAINING", "INFERENCE", "CRYPTO_MINING", "IDLE"] {
        let parsed = parse_sample(&body_with("inferred_pattern", json!(pattern)), 0)
            .unwrap()
            .0
            .inferred_pattern
            .unwrap();
        assert_eq!(serde_json::to_value(parsed).unwrap(), json!(pattern));
    }
}

// ---------------------------------------------------------------------------------------
// Slashing
// ---------------------------------------------------------------------------------------

fn units(whole: i64) -> Money {
    Money::from_micros(whole * 1_000_000)
}

#[test]
fn slash_table() {
    use SlashKind::*;
    let schedule = SlashSchedule::default();
    // (stake micros, trust, kind, taken micros, new stake micros, new trust)
    let cases: Vec<(i64, f64, SlashKind, i64, i64, f64)> = vec![
        // The documented schedule on a 1,000.00 stake and trust 80.
        (
            1_000_000_000,
            80.0,
            VramOverclaim,
            10_000_000,
            990_000_000,
            78.0,
        ),
        (
            1_000_000_000,
            80.0,
            JobDroppedUnexpectedly,
            20_000_000,
            980_000_000,
            75.0,
        ),
        (
            1_000_000_000,
            80.0,
            CryptoMiningDuringMlJob,
            100_000_000,
            900_000_000,
            65.0,
        ),
        (
            1_000_000_000,
            80.0,
            VisibilityBlocked,
            100_000_000,
            900_000_000,
            65.0,
        ),
        // Rounding half-up to the micro-unit: 1 % of 50 micros is 0.5 → 1; of 49 → 0.49 → 0.
        (50, 50.0, VramOverclaim, 1, 49, 48.0),
        (49, 50.0, VramOverclaim, 0, 49, 48.0),
        (150, 50.0, VramOverclaim, 2, 148, 48.0),
        (5, 50.0, CryptoMiningDuringMlJob, 1, 4, 35.0),
        (4, 50.0, CryptoMiningDuringMlJob, 0, 4, 35.0),
        (
            1_234_567,
            50.0,
            CryptoMiningDuringMlJob,
            123_457,
            1_111_110,
            35.0,
        ),
        // Never below zero.
        (0, 50.0, VisibilityBlocked, 0, 0, 35.0),
        (-5_000_000, 50.0, VisibilityBlocked, 0, 0, 35.0),
        (1_000_000, 1.0, VramOverclaim, 10_000, 990_000, 0.0),
        (
            1_000_000,
            10.0,
            CryptoMiningDuringMlJob,
            100_000,
            900_000,
            0.0,
        ),
        (1_000_000, 0.0, JobDroppedUnexpectedly, 20_000, 980_000, 0.0),
        // Trust clamped to 0..=100; a non-finite trust counts as 0.
        (1_000_000, 150.0, VramOverclaim, 10_000, 990_000, 100.0),
        (1_000_000, f64::NAN, VramOverclaim, 10_000, 990_000, 0.0),
        (
            1_000_000,
            f64::INFINITY,
            VramOverclaim,
            10_000,
            990_000,
            0.0,
        ),
        // No overflow at the top of the range.
        (
            i64::MAX,
            50.0,
            CryptoMiningDuringMlJob,
            922_337_203_685_477_581,
            i64::MAX - 922_337_203_685_477_581,
            35.0,
        ),
    ];
    for (stake, trust, kind, taken, new_stake, new_trust) in cases {
        let outcome = slash(Money::from_micros(stake), trust, kind, &schedule);
        let case = format!("{stake} micros, trust {trust}, {kind:?}");
        assert_eq!(outcome.stake_taken, Money::from_micros(taken), "{case}");
        assert_eq!(outcome.new_stake, Money::from_micros(new_stake), "{case}");
        assert_eq!(outcome.new_trust, new_trust, "{case}");
        assert!(!outcome.stake_taken.is_negative() && !outcome.new_stake.is_negative());
        if stake >= 0 {
            assert_eq!(
                outcome.stake_taken.checked_add(outcome.new_stake),
                Some(Money::from_micros(stake)),
                "{case}: nothing created or lost"
            );
        }
    }
}

#[test]
fn repeated_slashes_never_go_negative() {
    let schedule = SlashSchedule::default();
    let mut stake = units(3);
    let mut trust = 100.0;
    for _ in 0..500 {
        let outcome = slash(stake, trust, SlashKind::VisibilityBlocked, &schedule);
        assert!(!outcome.new_stake.is_negative());
        assert!((0.0..=100.0).contains(&outcome.new_trust));
        assert!(outcome.new_stake <= stake);
        stake = outcome.new_stake;
        trust = outcome.new_trust;
    }
    assert_eq!(trust, 0.0);
    // 10 % of 4 micros rounds to 0, so a tiny stake stops shrinking instead of going below 0.
    assert_eq!(stake, Money::from_micros(4));
}

#[test]
fn slash_schedule_is_data() {
    let schedule = SlashSchedule::default();
    assert_eq!(schedule.validate(), Ok(()));
    assert_eq!(
        serde_json::from_value::<SlashSchedule>(json!({})).unwrap(),
        schedule
    );
    assert_eq!(SlashKind::VramOverclaim.severity(), Severity::Soft);
    assert_eq!(SlashKind::JobDroppedUnexpectedly.severity(), Severity::Soft);
    assert_eq!(
        SlashKind::CryptoMiningDuringMlJob.severity(),
        Severity::Hard
    );
    assert_eq!(SlashKind::VisibilityBlocked.severity(), Severity::Hard);
    assert_eq!(
        serde_json::to_value(SlashKind::JobDroppedUnexpectedly).unwrap(),
        json!("JOB_DROPPED_UNEXPECTEDLY")
    );

    let whole = SlashSchedule {
        visibility_blocked: SlashTerms {
            stake_basis_points: 20_000,
            trust_penalty: 500.0,
        },
        ..SlashSchedule::default()
    };
    assert!(matches!(
        whole.validate(),
        Err(TutelaError::InvalidStakeShare { value: 20_000, .. })
    ));
    // Even unvalidated, a share above 100 % takes the whole stake and no more.
    let outcome = slash(units(7), 90.0, SlashKind::VisibilityBlocked, &whole);
    assert_eq!(outcome.stake_taken, units(7));
    assert_eq!(outcome.new_stake, Money::ZERO);
    assert_eq!(outcome.new_trust, 0.0);

    let bad_penalty = SlashSchedule {
        vram_overclaim: SlashTerms {
            stake_basis_points: 100,
            trust_penalty: f64::NAN,
        },
        ..SlashSchedule::default()
    };
    assert!(matches!(
        bad_penalty.validate(),
        Err(TutelaError::InvalidTrustPenalty { .. })
    ));
    let outcome = slash(units(1), 50.0, SlashKind::VramOverclaim, &bad_penalty);
    assert_eq!(outcome.new_trust, 50.0, "a non-finite penalty counts as 0");
}

// ---------------------------------------------------------------------------------------
// Heartbeats: not at 59 s, yes at 61 s; restart grace; the breaker.
// ---------------------------------------------------------------------------------------

mod heartbeats {
    use gp4u_core::ids::{JobId, NodeId};
    use gp4u_core::tutela::{HeartbeatConfig, HeartbeatDecision, LiveJob, judge_heartbeats};

    fn live(job: &str, node: &str, last_seen_ms: i64) -> LiveJob {
        LiveJob {
            job_id: JobId::parse(job).unwrap(),
            node_id: NodeId::parse(node).unwrap(),
            last_seen_ms,
        }
    }

    const STARTED: i64 = 0;
    const LONG_AFTER_START: i64 = 10_000_000;

    #[test]
    fn silence_counts_only_strictly_past_the_timeout() {
        let config = HeartbeatConfig::default();
        let seen = LONG_AFTER_START;
        let jobs = [live("job_a", "node_a", seen)];
        let cases = [
            (59_000, false),
            (60_000, false),
            (60_001, true),
            (61_000, true),
        ];
        for (silence, dropped) in cases {
            let decision = judge_heartbeats(&jobs, seen + silence, STARTED, &config);
            let expected = if dropped {
                HeartbeatDecision::Drop(vec![JobId::parse("job_a").unwrap()])
            } else {
                HeartbeatDecision::Drop(vec![])
            };
            assert_eq!(decision, expected, "after {silence} ms of silence");
        }
    }

    #[test]
    fn nothing_is_dropped_inside_the_restart_grace() {
        let config = HeartbeatConfig::default();
        // The job has been silent for ten minutes (the control plane was down), but the
        // control plane started 30 s ago: its agent has not had the time to reach it.
        let now = LONG_AFTER_START;
        let jobs = [live("job_a", "node_a", now - 600_000)];
        assert_eq!(
            judge_heartbeats(&jobs, now, now - 30_000, &config),
            HeartbeatDecision::Grace {
                until_ms: now + 30_000
            }
        );
        assert_eq!(
            judge_heartbeats(&jobs, now + 30_001, now - 30_000, &config),
            HeartbeatDecision::Drop(vec![JobId::parse("job_a").unwrap()])
        );
    }

    #[test]
    fn the_breaker_fails_nothing_when_most_nodes_go_silent_at_once() {
        let config = HeartbeatConfig::default();
        let now = LONG_AFTER_START;
        let silent = now - 61_000;
        let fresh = now - 1_000;
        // Two of three nodes silent: more than half → breaker.
        let jobs = [
            live("job_a", "node_a", silent),
            live("job_b", "node_b", silent),
            live("job_c", "node_c", fresh),
        ];
        assert_eq!(
            judge_heartbeats(&jobs, now, STARTED, &config),
            HeartbeatDecision::Breaker {
                silent_nodes: 2,
                live_nodes: 3
            }
        );
        // One of three silent → that one is dropped.
        let jobs = [
            live("job_a", "node_a", silent),
            live("job_b", "node_b", fresh),
            live("job_c", "node_c", fresh),
        ];
        assert_eq!(
            judge_heartbeats(&jobs, now, STARTED, &config),
            HeartbeatDecision::Drop(vec![JobId::parse("job_a").unwrap()])
        );
        // Fewer nodes than breaker_min_nodes: a lone silent node is simply dropped.
        let jobs = [
            live("job_a", "node_a", silent),
            live("job_b", "node_a", silent),
        ];
        assert_eq!(
            judge_heartbeats(&jobs, now, STARTED, &config),
            HeartbeatDecision::Drop(vec![
                JobId::parse("job_a").unwrap(),
                JobId::parse("job_b").unwrap()
            ])
        );
        // A node with one fresh job is not silent, though its other job is: only that job
        // is dropped, and the node does not count towards the breaker.
        let jobs = [
            live("job_a", "node_a", silent),
            live("job_b", "node_a", fresh),
            live("job_c", "node_b", fresh),
            live("job_d", "node_c", silent),
        ];
        assert_eq!(
            judge_heartbeats(&jobs, now, STARTED, &config),
            HeartbeatDecision::Drop(vec![
                JobId::parse("job_a").unwrap(),
                JobId::parse("job_d").unwrap()
            ])
        );
    }
}

mod retries {
    use gp4u_core::job::{EndedBy, FailureReason, JobInput, fail_or_retry};

    #[test]
    fn provider_faults_are_retried_while_retries_remain() {
        use FailureReason::*;
        let cases = [
            (JobDropped, 0, 1, false, true),
            (JobDropped, 1, 1, false, false),
            (VisibilityBlocked, 0, 2, false, true),
            (CryptoMiningDuringMlJob, 0, 1, false, true),
            (JobDropped, 0, 1, true, false), // pinned to a GPU: cannot move
            (KilledAnomaly, 0, 3, false, false), // the customer's fault
            (DurationExceeded, 0, 3, false, false),
            (NonzeroExit, 0, 3, false, false),
        ];
        for (reason, used, max, pinned, retried) in cases {
            let input = fail_or_retry(reason, EndedBy::Provider, used, max, pinned);
            let expected = if retried {
                JobInput::Retry { reason }
            } else {
                JobInput::Fail {
                    reason,
                    ended_by: EndedBy::Provider,
                }
            };
            assert_eq!(
                input, expected,
                "{reason} used {used} of {max}, pinned {pinned}"
            );
        }
    }
}
