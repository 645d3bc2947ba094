//! Energy proof cost for one hour of telemetry (360 readings, one per 10 s): prove ms,
//! verify ms, proof bytes; median of 5. `cargo bench -p gp4u-attest --bench energy`.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use gp4u_attest::energy::*;
use rand_core::OsRng;

const READINGS: usize = 360;
const RUNS: usize = 5;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let limit = 700_000u64;
    let (commitments, openings): (Vec<_>, Vec<_>) = (0..READINGS as u64)
        .map(|i| {
            let power_mw = (i * 7_919) % limit;
            commit_reading(
                PowerReading {
                    power_mw,
                    renewable_mw: power_mw / 3,
                },
                &mut OsRng,
            )
        })
        .unzip();
    let weights: Vec<u64> = (0..READINGS as u64).map(|i| 9_500 + i % 1_000).collect();
    let energy: u64 = openings
        .iter()
        .zip(&weights)
        .map(|(o, w)| o.power_mw * w)
        .sum();
    let claim = EnergyClaim {
        energy_mwms: energy,
        renewable_share_bp: 3_300,
        power_limit_mw: limit,
    };

    // The first call builds the Bulletproofs generators (once per process).
    let start = Instant::now();
    let proof = prove_energy("bench", &claim, &openings, &weights, &mut OsRng).unwrap();
    let first = start.elapsed().as_secs_f64() * 1e3;

    let mut prove = Vec::new();
    let mut verify = Vec::new();
    let mut json_len = 0;
    for _ in 0..RUNS {
        let start = Instant::now();
        let proof = prove_energy("bench", &claim, &openings, &weights, &mut OsRng).unwrap();
        prove.push(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        verify_energy("bench", &claim, &commitments, &weights, &proof, &mut OsRng).unwrap();
        verify.push(start.elapsed().as_secs_f64() * 1e3);
        json_len = proof.to_json().len();
    }
    println!("energy proof, {READINGS} readings, median of {RUNS}:");
    println!("  first prove (incl. generators): {first:.0} ms");
    println!("  prove:  {:.0} ms", median(prove));
    println!("  verify: {:.0} ms", median(verify));
    println!(
        "  proof:  {} bytes raw, {json_len} bytes JSON",
        proof.byte_len()
    );
}
