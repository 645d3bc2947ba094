#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use gp4u_attest::hardware::*;

fn claim(assurance: Assurance) -> HardwareClaim {
    HardwareClaim {
        job_id: "job_1".into(),
        node_id: "node_a".into(),
        gpu: GpuIdentity {
            name: "NVIDIA H100 80GB HBM3".into(),
            uuid: "GPU-5b2c8f0e-1d3a-4c1e-9f7a-2b6d4e8c0a11".into(),
            vram_mb: 81_559,
            driver_version: "550.54.15".into(),
            serial: Some("1654922000001".into()),
            power_limit_mw: 700_000,
        },
        telemetry_digest: [0xab; 32],
        assurance,
        cc_evidence: (assurance == Assurance::HardwareAttested).then(|| b"evidence".to_vec()),
        issued_at_ms: 1_767_225_600_000,
    }
}

#[test]
fn signed_attestations_verify_and_round_trip() {
    let key = SigningKey::from_bytes(&[5; 32]);
    for assurance in [Assurance::Emulated, Assurance::ProviderSigned] {
        let attestation = sign_hardware(claim(assurance), &key).unwrap();
        verify_hardware(&attestation, &key.verifying_key()).unwrap();
        let json = attestation.to_json();
        let parsed = HardwareAttestation::from_json(&json).unwrap();
        assert_eq!(parsed, attestation);
        verify_hardware(&parsed, &key.verifying_key()).unwrap();
        assert_eq!(parsed.telemetry_digest_bytes().unwrap(), [0xab; 32]);
    }
    let attestation = sign_hardware(claim(Assurance::ProviderSigned), &key).unwrap();
    let json: serde_json::Value = serde_json::from_str(&attestation.to_json()).unwrap();
    assert_eq!(json["assurance"], "provider_signed");
    assert_eq!(json["telemetry_digest"], "ab".repeat(32));
    assert_eq!(json["gpu"]["power_limit_mw"], 700_000);
    let emulated = sign_hardware(claim(Assurance::Emulated), &key).unwrap();
    assert!(emulated.to_json().contains("\"assurance\":\"emulated\""));
    // The message is domain-separated.
    assert!(
        hardware_message(&attestation)
            .unwrap()
            .starts_with(b"gp4u.hardware.v1\0")
    );
}

type Change = Box<dyn Fn(&mut HardwareAttestation)>;

#[test]
fn any_changed_field_or_another_key_fails() {
    let key = SigningKey::from_bytes(&[5; 32]);
    let good = sign_hardware(claim(Assurance::ProviderSigned), &key).unwrap();
    let verifier = key.verifying_key();
    let changes: Vec<Change> = vec![
        Box::new(|a| a.job_id.push('x')),
        Box::new(|a| a.node_id = "node_b".into()),
        Box::new(|a| a.gpu.name = "NVIDIA A100".into()),
        Box::new(|a| a.gpu.uuid.push('0')),
        Box::new(|a| a.gpu.vram_mb += 1),
        Box::new(|a| a.gpu.driver_version = "550.54.16".into()),
        Box::new(|a| a.gpu.serial = None),
        Box::new(|a| a.gpu.serial = Some("1654922000002".into())),
        Box::new(|a| a.gpu.power_limit_mw -= 1),
        Box::new(|a| a.telemetry_digest = "ac".repeat(32)),
        Box::new(|a| a.assurance = Assurance::Emulated),
        Box::new(|a| a.cc_evidence = Some(STANDARD.encode(b"x"))),
        Box::new(|a| a.issued_at_ms += 1),
        Box::new(|a| {
            let mut signature = STANDARD.decode(&a.signature).unwrap();
            signature[10] ^= 1;
            a.signature = STANDARD.encode(signature);
        }),
        Box::new(|a| a.signature = "bm90IGEgc2lnbmF0dXJl".into()),
    ];
    for (index, change) in changes.iter().enumerate() {
        let mut changed = good.clone();
        change(&mut changed);
        assert!(
            verify_hardware(&changed, &verifier).is_err(),
            "change {index} still verifies"
        );
    }
    // Field boundaries are unambiguous: moving bytes between fields fails.
    let mut shifted = good.clone();
    shifted.job_id = "job_1n".into();
    shifted.node_id = "ode_a".into();
    assert!(verify_hardware(&shifted, &verifier).is_err());
    // Another key.
    let other = SigningKey::from_bytes(&[6; 32]).verifying_key();
    assert_eq!(
        verify_hardware(&good, &other),
        Err(HardwareError::BadSignature)
    );
}

#[test]
fn hardware_attested_is_refused_as_unverifiable() {
    let key = SigningKey::from_bytes(&[5; 32]);
    let attestation = sign_hardware(claim(Assurance::HardwareAttested), &key).unwrap();
    assert_eq!(
        verify_hardware(&attestation, &key.verifying_key()),
        Err(HardwareError::UnverifiableEvidence)
    );
    // A forged one is a bad signature first.
    let other = SigningKey::from_bytes(&[6; 32]).verifying_key();
    assert_eq!(
        verify_hardware(&attestation, &other),
        Err(HardwareError::BadSignature)
    );
    // Without evidence it can't even be signed or parsed.
    let mut bare = claim(Assurance::HardwareAttested);
    bare.cc_evidence = None;
    assert_eq!(
        sign_hardware(bare, &key).unwrap_err(),
        HardwareError::MissingEvidence
    );
    let mut stripped = attestation.clone();
    stripped.cc_evidence = None;
    assert!(HardwareAttestation::from_json(&stripped.to_json()).is_err());
}

#[test]
fn fields_are_bounded() {
    let key = SigningKey::from_bytes(&[5; 32]);
    let mut long = claim(Assurance::ProviderSigned);
    long.gpu.name = "x".repeat(MAX_FIELD_BYTES + 1);
    assert!(matches!(
        sign_hardware(long, &key),
        Err(HardwareError::FieldTooLong { .. })
    ));
    let mut at_limit = claim(Assurance::ProviderSigned);
    at_limit.gpu.serial = Some("s".repeat(MAX_FIELD_BYTES));
    assert!(sign_hardware(at_limit, &key).is_ok());
    let mut empty = claim(Assurance::ProviderSigned);
    empty.node_id = String::new();
    assert_eq!(
        sign_hardware(empty, &key).unwrap_err(),
        HardwareError::EmptyField("node_id")
    );
    let mut big = claim(Assurance::HardwareAttested);
    big.cc_evidence = Some(vec![0; MAX_EVIDENCE_BYTES + 1]);
    assert!(sign_hardware(big, &key).is_err());

    let good = sign_hardware(claim(Assurance::ProviderSigned), &key).unwrap();
    for digest in [
        "AB".repeat(32),
        "ab".repeat(31),
        "zz".repeat(32),
        "é".repeat(32),
    ] {
        let mut bad = good.clone();
        bad.telemetry_digest = digest;
        assert_eq!(
            verify_hardware(&bad, &key.verifying_key()),
            Err(HardwareError::BadDigest)
        );
    }
    let mut bad = good.clone();
    bad.cc_evidence = Some("not base64!".into());
    assert_eq!(
        verify_hardware(&bad, &key.verifying_key()),
        Err(HardwareError::BadEvidence)
    );
    // JSON: unknown fields, oversize input.
    let mut json: serde_json::Value = serde_json::from_str(&good.to_json()).unwrap();
    json["extra"] = 1.into();
    assert!(HardwareAttestation::from_json(&json.to_string()).is_err());
    let huge = " ".repeat(MAX_ATTESTATION_JSON_BYTES + 1);
    assert!(matches!(
        HardwareAttestation::from_json(&huge),
        Err(HardwareError::TooLarge { .. })
    ));
}

#[test]
fn only_the_assigned_gpu_as_registered_matches() {
    let gpu = claim(Assurance::ProviderSigned).gpu;
    // An H100 registered as the agent does: 85 520 809 984 bytes of VRAM / 2³⁰ GB.
    let vram_gb = 85_520_809_984_f64 / 1_073_741_824.0;
    assert_eq!(registered_vram_mb(vram_gb), 81_559);
    let assigned = AssignedGpu {
        uuid: Some("GPU-5b2c8f0e-1d3a-4c1e-9f7a-2b6d4e8c0a11"),
        name: "NVIDIA H100 80GB HBM3",
        vram_gb,
        power_limit_mw: Some(700_000),
    };
    assert_eq!(gpu_mismatches(&gpu, &assigned), Vec::<String>::new());
    // Each field that differs is named, with both values.
    let other_uuid = AssignedGpu {
        uuid: Some("GPU-0th3"),
        ..assigned
    };
    let differ = gpu_mismatches(&gpu, &other_uuid);
    assert_eq!(differ.len(), 1, "{differ:?}");
    assert!(differ[0].starts_with("gpu.uuid is"), "{differ:?}");
    assert!(differ[0].contains("GPU-0th3"), "{differ:?}");
    let other_limit = AssignedGpu {
        power_limit_mw: Some(450_000),
        ..assigned
    };
    let differ = gpu_mismatches(&gpu, &other_limit);
    assert_eq!(
        differ,
        ["gpu.power_limit_mw is 700000, the assigned GPU's registered limit is 450000 mW"]
    );
    let emulated = AssignedGpu {
        name: "NVIDIA H100 80GB HBM3 (emulated)",
        vram_gb: 80.0,
        ..assigned
    };
    let differ = gpu_mismatches(&gpu, &emulated);
    assert_eq!(differ.len(), 2, "{differ:?}");
    assert!(differ[0].starts_with("gpu.name is"), "{differ:?}");
    assert!(differ[1].contains("81920"), "{differ:?}");
    // Registered without a uuid or before power limits: nothing can match those fields.
    let unknown = AssignedGpu {
        uuid: None,
        power_limit_mw: None,
        ..assigned
    };
    let differ = gpu_mismatches(&gpu, &unknown);
    assert_eq!(differ.len(), 2, "{differ:?}");
    assert!(differ[0].contains("without a uuid"), "{differ:?}");
    assert!(
        differ[1].contains("no registered power limit"),
        "{differ:?}"
    );
    assert_eq!(registered_vram_mb(24.0), 24_576);
    assert_eq!(registered_vram_mb(f64::NAN), 0);
}
