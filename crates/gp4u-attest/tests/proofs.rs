#![allow(clippy::unwrap_used)]

use ed25519_dalek::SigningKey;
use gp4u_attest::energy::*;
use gp4u_attest::hardware::*;
use gp4u_attest::proofs::*;
use rand_core::OsRng;

#[test]
fn both_kinds_round_trip_with_their_tag() {
    let key = SigningKey::from_bytes(&[5; 32]);
    let attestation = sign_hardware(
        HardwareClaim {
            job_id: "job_1".into(),
            node_id: "node_a".into(),
            gpu: GpuIdentity {
                name: "NVIDIA L4".into(),
                uuid: "GPU-1".into(),
                vram_mb: 23_034,
                driver_version: "550.54.15".into(),
                serial: None,
                power_limit_mw: 72_000,
            },
            telemetry_digest: [1; 32],
            assurance: Assurance::ProviderSigned,
            cc_evidence: None,
            issued_at_ms: 1_000,
        },
        &key,
    )
    .unwrap();
    let submission = ProofSubmission::Hardware(attestation.clone());
    let json = submission.to_json();
    assert!(json.starts_with("{\"kind\":\"hardware\",\"job_id\":\"job_1\""));
    let parsed = ProofSubmission::from_json(&json).unwrap();
    assert_eq!(parsed, submission);
    assert_eq!(parsed.job_id(), "job_1");
    let ProofSubmission::Hardware(parsed) = parsed else {
        panic!("not hardware")
    };
    verify_hardware(&parsed, &key.verifying_key()).unwrap();

    let readings = [(60_000, 30_000), (70_000, 0), (0, 0)];
    let weights = [10_000, 10_000, 5_000];
    let (commitments, openings): (Vec<_>, Vec<_>) = readings
        .iter()
        .map(|&(power_mw, renewable_mw)| {
            commit_reading(
                PowerReading {
                    power_mw,
                    renewable_mw,
                },
                &mut OsRng,
            )
        })
        .unzip();
    let claim = EnergyClaim {
        energy_mwms: 1_300_000_000,
        renewable_share_bp: 2_307,
        power_limit_mw: 72_000,
    };
    let proof = prove_energy("job_1", &claim, &openings, &weights, &mut OsRng).unwrap();
    let submission = ProofSubmission::Energy(EnergySubmission {
        job_id: "job_1".into(),
        claim,
        proof,
    });
    let json = submission.to_json();
    assert!(json.starts_with("{\"kind\":\"energy\",\"job_id\":\"job_1\",\"claim\":{\"energy_mwms\":1300000000,\"renewable_share_bp\":2307,\"power_limit_mw\":72000},\"proof\":{\"version\":1,\"readings\":3,"));
    let parsed = ProofSubmission::from_json(&json).unwrap();
    assert_eq!(parsed, submission);
    let ProofSubmission::Energy(energy) = parsed else {
        panic!("not energy")
    };
    verify_energy(
        &energy.job_id,
        &energy.claim,
        &commitments,
        &weights,
        &energy.proof,
        &mut OsRng,
    )
    .unwrap();
}

#[test]
fn malformed_submissions_are_refused() {
    for text in [
        "{}",
        "{\"kind\":\"other\"}",
        "{\"kind\":\"energy\",\"job_id\":\"j\"}",
        "{\"kind\":\"energy\",\"job_id\":\"j\",\"claim\":{\"energy_mwms\":1,\"renewable_share_bp\":0,\"power_limit_mw\":1},\"proof\":{\"version\":1,\"readings\":1,\"aggregate_blinding\":\"\",\"share_limbs\":[\"\",\"\"],\"range_proofs\":[]}}",
        "[1,2]",
    ] {
        assert!(ProofSubmission::from_json(text).is_err(), "{text}");
    }
    assert!(matches!(
        ProofSubmission::from_json(&" ".repeat(MAX_SUBMISSION_BYTES + 1)),
        Err(SubmissionError::TooLarge { .. })
    ));
}
