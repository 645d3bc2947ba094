#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use gp4u_attest::energy::*;
use rand_core::OsRng;
use sha2::{Digest, Sha256};

/// A job: readings, weights, commitments and openings, with a claim that holds.
struct Job {
    commitments: Vec<ReadingCommitment>,
    openings: Vec<ReadingOpening>,
    weights: Vec<u64>,
    claim: EnergyClaim,
}

/// `n` readings from a small LCG: uneven weights (8–12 s, some 0), some zero power readings,
/// renewable a varying part of the power (all of it with `all_renewable`).
fn job(n: usize, seed: u64, all_renewable: bool) -> Job {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    let limit = 700_000;
    let mut readings = Vec::new();
    let mut weights = Vec::new();
    for i in 0..n {
        let power = if i % 5 == 2 { 0 } else { next() % (limit + 1) };
        let renewable = if all_renewable {
            power
        } else {
            power * (next() % 101) / 100
        };
        readings.push(PowerReading {
            power_mw: power,
            renewable_mw: renewable,
        });
        weights.push(if i % 11 == 4 {
            0
        } else {
            8_000 + next() % 4_001
        });
    }
    let (commitments, openings): (Vec<_>, Vec<_>) = readings
        .iter()
        .map(|reading| commit_reading(*reading, &mut OsRng))
        .unzip();
    let energy: u64 = readings
        .iter()
        .zip(&weights)
        .map(|(r, w)| r.power_mw * w)
        .sum();
    let renewable: u64 = readings
        .iter()
        .zip(&weights)
        .map(|(r, w)| r.renewable_mw * w)
        .sum();
    // The largest share in basis points that holds.
    let share_bp = if energy == 0 {
        10_000
    } else {
        (u128::from(renewable) * 10_000 / u128::from(energy)) as u32
    };
    Job {
        commitments,
        openings,
        weights,
        claim: EnergyClaim {
            energy_mwms: energy,
            renewable_share_bp: share_bp,
            power_limit_mw: limit,
        },
    }
}

impl Job {
    fn prove(&self, job_id: &str) -> EnergyProof {
        prove_energy(
            job_id,
            &self.claim,
            &self.openings,
            &self.weights,
            &mut OsRng,
        )
        .unwrap()
    }

    fn verify(&self, job_id: &str, proof: &EnergyProof) -> Result<(), EnergyProofError> {
        verify_energy(
            job_id,
            &self.claim,
            &self.commitments,
            &self.weights,
            proof,
            &mut OsRng,
        )
    }
}

fn check_valid(n: usize, seed: u64) {
    let mut job = job(n, seed, false);
    let proof = job.prove("job_1");
    assert_eq!(proof.readings(), n);
    job.verify("job_1", &proof).unwrap();
    // Through JSON.
    let parsed = EnergyProof::from_json(&proof.to_json()).unwrap();
    assert_eq!(parsed, proof);
    job.verify("job_1", &parsed).unwrap();
    if n > 64 {
        return;
    }
    // Share 0 holds too.
    job.claim.renewable_share_bp = 0;
    let proof = job.prove("job_1");
    job.verify("job_1", &proof).unwrap();
}

#[test]
fn valid_proofs_verify_for_small_jobs() {
    for (n, seed) in [(1, 1), (2, 2), (3, 3), (7, 4), (64, 5)] {
        check_valid(n, seed);
    }
}

/// ~7 s in debug on 2 vCPUs, so it runs there too.
#[test]
fn valid_proof_verifies_for_360_readings() {
    check_valid(360, 360);
}

#[test]
fn full_share_and_zero_energy_verify() {
    // All renewable: share 10000.
    let job = job(7, 9, true);
    assert_eq!(job.claim.renewable_share_bp, 10_000);
    job.verify("job_1", &job.prove("job_1")).unwrap();
    // Every reading zero: E = 0, any share holds.
    let mut job = job_with(&[(0, 0), (0, 0), (0, 0)], &[10_000, 10_000, 0], 300_000);
    job.claim.renewable_share_bp = 10_000;
    job.verify("job_1", &job.prove("job_1")).unwrap();
    // Readings at exactly the limit, and the largest limit.
    let job = job_with(&[(u32::MAX.into(), 0), (0, 0)], &[1, 1], MAX_POWER_LIMIT_MW);
    job.verify("job_1", &job.prove("job_1")).unwrap();
}

fn job_with(readings: &[(u64, u64)], weights: &[u64], limit: u64) -> Job {
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
    let energy = readings.iter().zip(weights).map(|(r, w)| r.0 * w).sum();
    Job {
        commitments,
        openings,
        weights: weights.to_vec(),
        claim: EnergyClaim {
            energy_mwms: energy,
            renewable_share_bp: 0,
            power_limit_mw: limit,
        },
    }
}

#[test]
fn a_large_energy_with_a_high_share_verifies() {
    // E near 2^64 mW·ms (~5000 kWh): 10000·R exceeds 64 bits, the three limbs cover it.
    let weight = u64::MAX / 4 / u64::from(u32::MAX);
    let job_ = job_with(
        &[(u32::MAX.into(), u32::MAX.into()); 4],
        &[weight; 4],
        MAX_POWER_LIMIT_MW,
    );
    let mut job = job_;
    job.claim.renewable_share_bp = 9_999;
    job.verify("job_big", &job.prove("job_big")).unwrap();
}

#[test]
fn tampering_is_detected() {
    let job = job(7, 42, false);
    assert!(job.claim.renewable_share_bp < 10_000);
    let proof = job.prove("job_1");
    job.verify("job_1", &proof).unwrap();
    let verify_with = |claim: &EnergyClaim,
                       commitments: &[ReadingCommitment],
                       weights: &[u64],
                       job_id: &str,
                       proof: &EnergyProof| {
        verify_energy(job_id, claim, commitments, weights, proof, &mut OsRng)
    };

    // One reading's commitments replaced (power, then renewable only).
    let mut commitments = job.commitments.clone();
    commitments[3] = commit_reading(
        PowerReading {
            power_mw: 1,
            renewable_mw: 0,
        },
        &mut OsRng,
    )
    .0;
    assert!(verify_with(&job.claim, &commitments, &job.weights, "job_1", &proof).is_err());
    let mut commitments = job.commitments.clone();
    commitments[3].renewable = job.commitments[4].renewable;
    assert!(verify_with(&job.claim, &commitments, &job.weights, "job_1", &proof).is_err());
    let mut commitments = job.commitments.clone();
    commitments[3].power = job.commitments[4].power;
    assert!(verify_with(&job.claim, &commitments, &job.weights, "job_1", &proof).is_err());

    // The claimed energy ±1.
    for energy in [job.claim.energy_mwms + 1, job.claim.energy_mwms - 1] {
        let claim = EnergyClaim {
            energy_mwms: energy,
            ..job.claim
        };
        assert_eq!(
            verify_with(&claim, &job.commitments, &job.weights, "job_1", &proof),
            Err(EnergyProofError::EnergySumInvalid)
        );
    }
    // The share claimed upward.
    let claim = EnergyClaim {
        renewable_share_bp: job.claim.renewable_share_bp + 1,
        ..job.claim
    };
    assert!(verify_with(&claim, &job.commitments, &job.weights, "job_1", &proof).is_err());
    let claim = EnergyClaim {
        renewable_share_bp: 10_000,
        ..job.claim
    };
    assert!(verify_with(&claim, &job.commitments, &job.weights, "job_1", &proof).is_err());
    // The limit lowered below the largest reading.
    let max = job.openings.iter().map(|o| o.power_mw).max().unwrap();
    let claim = EnergyClaim {
        power_limit_mw: max - 1,
        ..job.claim
    };
    assert!(verify_with(&claim, &job.commitments, &job.weights, "job_1", &proof).is_err());
    // One weight changed.
    let mut weights = job.weights.clone();
    weights[1] += 1;
    assert!(verify_with(&job.claim, &job.commitments, &weights, "job_1", &proof).is_err());
    // Another job.
    assert!(verify_with(&job.claim, &job.commitments, &job.weights, "job_2", &proof).is_err());
    // Commitments reordered, or one dropped (with or without its weight).
    let mut commitments = job.commitments.clone();
    commitments.swap(0, 1);
    assert!(verify_with(&job.claim, &commitments, &job.weights, "job_1", &proof).is_err());
    let mut commitments = job.commitments.clone();
    let mut weights = job.weights.clone();
    commitments.pop();
    assert!(matches!(
        verify_with(&job.claim, &commitments, &job.weights, "job_1", &proof),
        Err(EnergyProofError::LengthMismatch { .. })
    ));
    weights.pop();
    assert!(matches!(
        verify_with(&job.claim, &commitments, &weights, "job_1", &proof),
        Err(EnergyProofError::ReadingCountMismatch { .. })
    ));
    // A proof for other readings.
    let other = job_with(&[(1, 0); 7], &job.weights, job.claim.power_limit_mw);
    let other_proof = other.prove("job_1");
    assert!(
        verify_with(
            &job.claim,
            &job.commitments,
            &job.weights,
            "job_1",
            &other_proof
        )
        .is_err()
    );
}

/// Flips bits throughout the proof's byte fields: each copy either fails to parse or fails to
/// verify.
#[test]
fn flipped_or_truncated_proof_bytes_are_refused() {
    let job = job(3, 7, false);
    let proof = job.prove("job_1");
    let json: serde_json::Value = serde_json::from_str(&proof.to_json()).unwrap();
    let mut fields: Vec<(String, Option<usize>)> = vec![
        ("aggregate_blinding".into(), None),
        ("share_limbs".into(), Some(0)),
        ("share_limbs".into(), Some(1)),
    ];
    let proofs = json["range_proofs"].as_array().unwrap().len();
    fields.extend((0..proofs).map(|i| ("range_proofs".to_string(), Some(i))));
    let mut tried = 0;
    for (field, index) in fields {
        let original = match index {
            None => json[&field].as_str().unwrap().to_owned(),
            Some(i) => json[&field][i].as_str().unwrap().to_owned(),
        };
        let bytes = STANDARD.decode(&original).unwrap();
        // Every 8th byte's bit (byte % 8), plus the last byte: covers points, scalars and ipp.
        for position in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
            let mut flipped = bytes.clone();
            flipped[position] ^= 1 << (position % 8);
            let mut copy = json.clone();
            let slot = match index {
                None => &mut copy[&field],
                Some(i) => &mut copy[&field][i],
            };
            *slot = STANDARD.encode(&flipped).into();
            tried += 1;
            match EnergyProof::from_json(&copy.to_string()) {
                Err(_) => {}
                Ok(parsed) => assert!(
                    job.verify("job_1", &parsed).is_err(),
                    "{field}[{index:?}] byte {position} flipped still verifies"
                ),
            }
        }
        // Truncated by one 32-byte element, and by one byte.
        for cut in [32, 1] {
            let mut copy = json.clone();
            let slot = match index {
                None => &mut copy[&field],
                Some(i) => &mut copy[&field][i],
            };
            *slot = STANDARD.encode(&bytes[..bytes.len() - cut]).into();
            assert!(EnergyProof::from_json(&copy.to_string()).is_err());
        }
    }
    assert!(tried > 50);
    // A range proof dropped, a field missing, an unknown field, another version, cut JSON.
    let mut copy = json.clone();
    copy["range_proofs"].as_array_mut().unwrap().pop();
    assert!(EnergyProof::from_json(&copy.to_string()).is_err());
    let mut copy = json.clone();
    copy.as_object_mut().unwrap().remove("share_limbs");
    assert!(EnergyProof::from_json(&copy.to_string()).is_err());
    let mut copy = json.clone();
    copy["extra"] = 1.into();
    assert!(EnergyProof::from_json(&copy.to_string()).is_err());
    let mut copy = json.clone();
    copy["version"] = 2.into();
    assert!(EnergyProof::from_json(&copy.to_string()).is_err());
    let mut copy = json.clone();
    copy["readings"] = 4.into();
    assert!(EnergyProof::from_json(&copy.to_string()).is_err());
    let text = proof.to_json();
    assert!(EnergyProof::from_json(&text[..text.len() - 10]).is_err());
    let huge = format!("{}{}", " ".repeat(MAX_PROOF_JSON_BYTES), text);
    assert!(matches!(
        EnergyProof::from_json(&huge),
        Err(EnergyProofError::TooLarge { .. })
    ));
}

#[test]
fn the_prover_refuses_what_it_cannot_prove() {
    let limit = 1_000;
    let prove = |readings: &[(u64, u64)], weights: &[u64], claim: EnergyClaim| {
        let openings: Vec<_> = readings
            .iter()
            .map(|&(power_mw, renewable_mw)| {
                commit_reading(
                    PowerReading {
                        power_mw,
                        renewable_mw,
                    },
                    &mut OsRng,
                )
                .1
            })
            .collect();
        prove_energy("job_1", &claim, &openings, weights, &mut OsRng)
    };
    let claim = |energy_mwms, renewable_share_bp| EnergyClaim {
        energy_mwms,
        renewable_share_bp,
        power_limit_mw: limit,
    };
    assert_eq!(
        prove(&[(500, 0), (1_001, 0)], &[1, 1], claim(1_501, 0)).unwrap_err(),
        EnergyProofError::ReadingAboveLimit {
            index: 1,
            power_mw: 1_001,
            limit_mw: limit
        }
    );
    assert_eq!(
        prove(&[(500, 501)], &[1], claim(500, 0)).unwrap_err(),
        EnergyProofError::RenewableAbovePower {
            index: 0,
            renewable_mw: 501,
            power_mw: 500
        }
    );
    // 250 of 500 renewable: 5000 bp holds, 5001 does not.
    assert!(prove(&[(500, 250)], &[2], claim(1_000, 5_000)).is_ok());
    assert!(matches!(
        prove(&[(500, 250)], &[2], claim(1_000, 5_001)),
        Err(EnergyProofError::ShareNotMet { .. })
    ));
    assert_eq!(
        prove(&[(500, 0)], &[2], claim(999, 0)).unwrap_err(),
        EnergyProofError::EnergyMismatch {
            claimed: 999,
            actual: 1_000
        }
    );
    assert!(matches!(
        prove(&[(500, 0)], &[2, 3], claim(1_000, 0)),
        Err(EnergyProofError::LengthMismatch { .. })
    ));
    assert_eq!(
        prove(&[], &[], claim(0, 0)).unwrap_err(),
        EnergyProofError::NoReadings
    );
    assert_eq!(
        prove(&[(1_000, 0), (1_000, 0)], &[u64::MAX, 1], claim(0, 0)).unwrap_err(),
        EnergyProofError::WeightOverflow
    );
    assert!(matches!(
        prove(&[(500, 0)], &[2], claim(1_000, 10_001)),
        Err(EnergyProofError::ShareOutOfRange { .. })
    ));
    let too_high = EnergyClaim {
        power_limit_mw: MAX_POWER_LIMIT_MW + 1,
        ..claim(1_000, 0)
    };
    assert!(matches!(
        prove(&[(500, 0)], &[2], too_high),
        Err(EnergyProofError::LimitTooLarge { .. })
    ));
}

#[test]
fn reading_commitments_have_a_compact_text_form() {
    let (commitment, opening) = commit_reading(
        PowerReading {
            power_mw: 300_000,
            renewable_mw: 120_000,
        },
        &mut OsRng,
    );
    assert_eq!(opening.commitment(), commitment);
    let text = commitment.to_base64();
    assert_eq!(text.len(), 88);
    assert_eq!(ReadingCommitment::from_base64(&text).unwrap(), commitment);
    // As JSON: a string.
    let json = serde_json::to_string(&commitment).unwrap();
    assert_eq!(json, format!("\"{text}\""));
    assert_eq!(
        serde_json::from_str::<ReadingCommitment>(&json).unwrap(),
        commitment
    );
    // Wrong lengths, non-points, not base64.
    let bytes = commitment.to_bytes();
    assert!(ReadingCommitment::from_base64(&STANDARD.encode(&bytes[..63])).is_err());
    assert!(
        ReadingCommitment::from_base64(&STANDARD.encode([bytes.as_slice(), &[0]].concat()))
            .is_err()
    );
    let mut bad = bytes;
    bad[..32].copy_from_slice(&[0xff; 32]);
    assert!(ReadingCommitment::from_base64(&STANDARD.encode(bad)).is_err());
    let mut bad = bytes;
    bad[32..].copy_from_slice(&[0xff; 32]);
    assert!(ReadingCommitment::from_bytes(&bad).is_err());
    assert!(ReadingCommitment::from_base64("not base64!").is_err());
    // The same reading commits differently each time (hiding).
    let (again, _) = commit_reading(
        PowerReading {
            power_mw: 300_000,
            renewable_mw: 120_000,
        },
        &mut OsRng,
    );
    assert_ne!(again, commitment);
    // Openings round-trip and don't print their blindings.
    let json = serde_json::to_string(&opening).unwrap();
    assert_eq!(
        serde_json::from_str::<ReadingOpening>(&json).unwrap(),
        opening
    );
    let debug = format!("{opening:?}");
    assert!(debug.contains("300000") && !debug.contains("blinding"));
}

#[test]
fn the_telemetry_digest_is_canonical() {
    let entries: Vec<(i64, ReadingCommitment)> = (0..3)
        .map(|i| {
            (
                1_700_000_000_000 + i * 10_000,
                commit_reading(
                    PowerReading {
                        power_mw: 1_000 * i as u64,
                        renewable_mw: 0,
                    },
                    &mut OsRng,
                )
                .0,
            )
        })
        .collect();
    let digest = telemetry_digest("job_1", &entries);
    let mut expected = Sha256::new();
    expected.update(b"gp4u.telemetry.v1\0");
    expected.update(5u32.to_be_bytes());
    expected.update(b"job_1");
    for (t, c) in &entries {
        expected.update(t.to_be_bytes());
        expected.update(c.to_bytes());
    }
    assert_eq!(digest, <[u8; 32]>::from(expected.finalize()));
    assert_ne!(telemetry_digest("job_2", &entries), digest);
    let mut changed = entries.clone();
    changed[1].0 += 1;
    assert_ne!(telemetry_digest("job_1", &changed), digest);
    let mut changed = entries.clone();
    changed.swap(0, 2);
    assert_ne!(telemetry_digest("job_1", &changed), digest);
    assert_ne!(telemetry_digest("job_1", &entries[..2]), digest);
    assert_ne!(
        telemetry_digest("job_1", &[]),
        telemetry_digest("job_", &[])
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(6))]

        /// Random small jobs: the honest proof verifies, and claiming one more mW·ms fails.
        #[test]
        fn honest_proofs_verify(
            readings in proptest::collection::vec((0u64..=5_000, 0u64..=100, 0u64..=20_000), 1..6),
        ) {
            let pairs: Vec<(u64, u64)> = readings.iter().map(|&(p, pct, _)| (p, p * pct / 100)).collect();
            let weights: Vec<u64> = readings.iter().map(|r| r.2).collect();
            let job = job_with(&pairs, &weights, 5_000);
            let proof = job.prove("job_p");
            prop_assert!(job.verify("job_p", &proof).is_ok());
            let claim = EnergyClaim { energy_mwms: job.claim.energy_mwms + 1, ..job.claim };
            prop_assert!(verify_energy("job_p", &claim, &job.commitments, &job.weights, &proof, &mut OsRng).is_err());
        }

        #[test]
        fn commitment_text_round_trips(power in any::<u32>(), renewable in any::<u32>()) {
            let (commitment, _) = commit_reading(PowerReading { power_mw: power.into(), renewable_mw: renewable.into() }, &mut OsRng);
            prop_assert_eq!(ReadingCommitment::from_base64(&commitment.to_base64()).unwrap(), commitment);
        }
    }
}
