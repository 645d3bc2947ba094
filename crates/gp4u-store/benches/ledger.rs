//! Obsidian's figures (issue 5): ledger appends per second through the store (one sequencer,
//! several concurrent appenders as replicas would be), and inclusion-proof verification time.
//!
//! `GP4U_TEST_DATABASE_URL=postgres://… cargo bench -p gp4u-store --bench ledger -- \
//!   [--entries N] [--batch B] [--writers W] [--engine postgres|sqlite]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use gp4u_ledger::hash::{Hash, leaf_hash};
use gp4u_ledger::tree::{assemble, inclusion_proof_plan};
use gp4u_ledger::verify::verify_inclusion;
use gp4u_store::testing::TestDatabase;
use gp4u_store::{Engine, NewLedgerEntry};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|arg| arg == name)
        .and_then(|index| args.get(index + 1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// A realistic entry body: an outbox event of ~300 bytes.
fn body(position: i64) -> String {
    serde_json::json!({
        "v": 1, "position": position, "kind": "tutela.verdict", "subject": format!("job_{position:020}"),
        "job_id": format!("job_{position:020}"), "at_ms": 1_800_000_000_000_i64 + position,
        "payload": {"rule": "VRAM_OVERCLAIM", "severity": "SOFT", "kill": false,
                    "evidence": "vram_used 25.1 GB > allocated 24.0 GB", "observed": 25.1, "threshold": 24.0},
    })
    .to_string()
}

#[tokio::main]
async fn main() {
    let entries = arg("--entries", 100_000) as i64;
    let batch = arg("--batch", 1000) as i64;
    let writers = arg("--writers", 2) as i64;
    let engine = if std::env::args().any(|arg| arg == "sqlite") {
        Engine::Sqlite
    } else {
        Engine::Postgres
    };
    let Some(db) = TestDatabase::create(engine, "ledger bench").await else {
        eprintln!(
            "SKIPPED: set GP4U_TEST_DATABASE_URL to a PostgreSQL server (or pass --engine sqlite)"
        );
        return;
    };
    let store = db.store().await.unwrap();
    println!(
        "ledger appends on {}: {entries} entries, batches of {batch}, {writers} concurrent appenders",
        engine.as_str()
    );
    // Appenders race for the same positions, as replicas sealing one outbox do: every batch
    // is offered by every appender, and the sequencer seals each position once.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let store = db.store().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut first = 1;
            while first <= entries {
                let last = (first + batch - 1).min(entries);
                let rows: Vec<NewLedgerEntry> = (first..=last)
                    .map(|position| NewLedgerEntry {
                        source_position: position,
                        kind: "tutela.verdict".into(),
                        job_id: Some(format!("job_{position:020}")),
                        body: body(position),
                    })
                    .collect();
                store.append_ledger(&rows, 1_800_000_000_000).await.unwrap();
                first = last + 1;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let size = store.ledger_size().await.unwrap();
    assert_eq!(size, entries as u64, "one linear log");
    println!(
        "appended {size} entries in {elapsed:.2} s: {:.0} appends/s",
        size as f64 / elapsed
    );

    // Inclusion proofs: fetch once (store), then time verification alone.
    let samples = 1000_u64;
    let mut proofs: Vec<(u64, Hash, Vec<Hash>)> = Vec::new();
    let fetch_started = Instant::now();
    for sample in 0..samples {
        let index = (sample * 7919) % size;
        let plan = inclusion_proof_plan(index, size).unwrap();
        let ids: Vec<_> = plan.iter().flatten().copied().collect();
        let nodes = store.ledger_nodes(&ids).await.unwrap();
        let proof = assemble(&plan, |id| nodes.get(&id).copied()).unwrap();
        proofs.push((index, leaf_hash(body(index as i64 + 1).as_bytes()), proof));
    }
    let fetch = fetch_started.elapsed().as_secs_f64() / samples as f64;
    let append = store.append_ledger(&[], 0).await.unwrap();
    let root = append.root;
    let rounds = 20;
    let verify_started = Instant::now();
    for _ in 0..rounds {
        for (index, leaf, proof) in &proofs {
            verify_inclusion(leaf, *index, size, proof, &root).unwrap();
        }
    }
    let per_proof = verify_started.elapsed().as_secs_f64() / (rounds * proofs.len()) as f64;
    println!(
        "inclusion proof in a tree of {size}: {} hashes, served (store read + assemble) in {:.0} µs, verified in {:.2} µs",
        proofs[0].2.len(),
        fetch * 1e6,
        per_proof * 1e6
    );
}
