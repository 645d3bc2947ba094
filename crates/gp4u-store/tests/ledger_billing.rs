//! The store's ledger (Obsidian) and double-entry money, on SQLite and PostgreSQL alike.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use gp4u_core::ids::{JobId, UserId};
use gp4u_core::manifest::Role;
use gp4u_core::money::Money;
use gp4u_ledger::hash::{Hash, leaf_hash};
use gp4u_ledger::reference::{consistency_proof, inclusion_proof, mth};
use gp4u_ledger::tree::{assemble, consistency_proof_plan, inclusion_proof_plan};
use gp4u_ledger::verify::{verify_consistency, verify_inclusion};
use gp4u_store::testing::TestDatabase;
use gp4u_store::{Engine, NewLedgerEntry, NewTransfer, NewUser, SettleOutcome, Store, StoreError};
use serde_json::json;

const NOW: i64 = 1_800_000_000_000;

fn entry(position: i64) -> NewLedgerEntry {
    NewLedgerEntry {
        source_position: position,
        kind: "test.event".into(),
        job_id: Some(format!("job_{position}")),
        body: json!({"position": position}).to_string(),
    }
}

async fn proof(store: &Store, plan: &[Vec<gp4u_ledger::tree::NodeId>]) -> Vec<Hash> {
    let ids: Vec<_> = plan.iter().flatten().copied().collect();
    let nodes = store.ledger_nodes(&ids).await.unwrap();
    assemble(plan, |id| nodes.get(&id).copied()).unwrap()
}

async fn ledger_appends_and_proves(store: Store) {
    let mut leaves = Vec::new();
    let mut roots = vec![mth(&[])];
    // Uneven batches, so that frontiers are rebuilt from stored nodes at many sizes.
    let mut position = 0;
    for batch in [1_i64, 2, 3, 5, 8, 1, 13] {
        let entries: Vec<_> = (0..batch)
            .map(|_| {
                position += 1;
                entry(position)
            })
            .collect();
        let appended = store.append_ledger(&entries, NOW).await.unwrap();
        for entry in &entries {
            leaves.push(leaf_hash(entry.body.as_bytes()));
            roots.push(mth(&leaves));
        }
        assert_eq!(appended.appended, u64::try_from(batch).unwrap());
        assert_eq!(appended.size, u64::try_from(leaves.len()).unwrap());
        assert_eq!(appended.root, mth(&leaves));
    }
    // Re-appending sealed positions changes nothing.
    let again = store
        .append_ledger(&[entry(3), entry(position)], NOW)
        .await
        .unwrap();
    assert_eq!(again.appended, 0);
    assert_eq!(again.size, u64::try_from(leaves.len()).unwrap());
    assert_eq!(store.ledger_sealed_position().await.unwrap(), position);
    let size = u64::try_from(leaves.len()).unwrap();
    for index in 0..size {
        for tree in (index + 1)..=size {
            let plan = inclusion_proof_plan(index, tree).unwrap();
            let got = proof(&store, &plan).await;
            assert_eq!(
                got,
                inclusion_proof(&leaves[..tree as usize], index).unwrap()
            );
            verify_inclusion(
                &leaves[index as usize],
                index,
                tree,
                &got,
                &roots[tree as usize],
            )
            .unwrap();
        }
    }
    for old in 1..=size {
        let plan = consistency_proof_plan(old, size).unwrap();
        let got = proof(&store, &plan).await;
        assert_eq!(got, consistency_proof(&leaves, old).unwrap());
        verify_consistency(old, size, &got, &roots[old as usize], &roots[size as usize]).unwrap();
    }
    let job = store.ledger_job_entries("job_4").await.unwrap();
    assert_eq!(job.len(), 1);
    assert_eq!(job[0].index, 3);
    let all = store.ledger_entries(0, 100).await.unwrap();
    assert_eq!(all.len(), leaves.len());
    store
        .save_checkpoint(size, &roots[size as usize], "note", NOW)
        .await
        .unwrap();
    store
        .save_checkpoint(size, &roots[size as usize], "another", NOW)
        .await
        .unwrap();
    let latest = store.latest_checkpoint().await.unwrap().unwrap();
    assert_eq!((latest.tree_size, latest.note.as_str()), (size, "note"));
    // Older checkpoints are pruned down to the newest few; the latest stays.
    for older in 1..size {
        store
            .save_checkpoint(older, &roots[older as usize], "older", NOW)
            .await
            .unwrap();
    }
    assert_eq!(store.prune_checkpoints(3).await.unwrap(), size - 3);
    assert_eq!(store.prune_checkpoints(3).await.unwrap(), 0);
    let latest = store.latest_checkpoint().await.unwrap().unwrap();
    assert_eq!((latest.tree_size, latest.note.as_str()), (size, "note"));
}

/// Many writers appending at once produce one linear log: every position sealed exactly once,
/// and the stored tree is the tree of the entries in index order.
async fn concurrent_writers_build_one_linear_log(db: &TestDatabase) {
    let writers = 8;
    let per_writer = 40;
    let store = db.store().await.unwrap();
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let store = db.store().await.unwrap();
        tasks.push(tokio::spawn(async move {
            for round in 0..per_writer {
                // Writers race for the same positions, as replicas sealing one outbox do.
                let base = round * 3;
                let entries: Vec<_> = (1..=3).map(|offset| entry(base + offset)).collect();
                store.append_ledger(&entries, NOW + writer).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let size = store.ledger_size().await.unwrap();
    assert_eq!(size, u64::try_from(per_writer * 3).unwrap());
    let entries = store.ledger_entries(0, size).await.unwrap();
    let positions: Vec<i64> = entries.iter().map(|entry| entry.source_position).collect();
    assert_eq!(
        positions,
        (1..=per_writer * 3).collect::<Vec<_>>(),
        "one linear log"
    );
    let leaves: Vec<Hash> = entries
        .iter()
        .map(|entry| leaf_hash(entry.body.as_bytes()))
        .collect();
    let plan = inclusion_proof_plan(size - 1, size).unwrap();
    let got = proof(&store, &plan).await;
    verify_inclusion(
        &leaves[leaves.len() - 1],
        size - 1,
        size,
        &got,
        &mth(&leaves),
    )
    .unwrap();
}

fn user(n: u8) -> NewUser {
    NewUser {
        id: UserId::from_random([n; 16]),
        name: format!("user {n}"),
        role: Role::Customer,
        university: false,
        region: None,
    }
}

fn transfer(id: &str, debit: &str, credit: &str, micros: i64) -> NewTransfer {
    NewTransfer {
        id: id.into(),
        debit: debit.into(),
        credit: credit.into(),
        amount: Money::from_micros(micros),
        kind: "test".into(),
        job_id: None,
    }
}

async fn transfers_post_once_and_balance(store: Store) {
    let customer = store.create_user(&user(1), NOW).await.unwrap();
    let provider = store.create_user(&user(2), NOW).await.unwrap();
    let available = format!("user:{}:available", customer.id);
    let held = format!("user:{}:held", customer.id);
    let earned = format!("user:{}:available", provider.id);
    store
        .add_credit(
            &customer.id,
            Money::from_micros(10_000_000),
            "top_up:a",
            NOW,
        )
        .await
        .unwrap();
    // Posting the same top-up again is a no-op.
    store
        .add_credit(
            &customer.id,
            Money::from_micros(10_000_000),
            "top_up:a",
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(
        store.balance(&customer.id).await.unwrap().available,
        Money::from_micros(10_000_000)
    );
    // A hold larger than the balance is refused and changes nothing.
    let error = store
        .post_transfers(&[transfer("hold:big", &available, &held, 10_000_001)], NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::InsufficientFunds { .. }),
        "{error}"
    );
    assert_eq!(store.balance(&customer.id).await.unwrap().held, Money::ZERO);
    store
        .post_transfers(&[transfer("job:1:hold", &available, &held, 4_000_000)], NOW)
        .await
        .unwrap();
    // The same id with another amount is refused.
    assert!(matches!(
        store
            .post_transfers(&[transfer("job:1:hold", &available, &held, 1)], NOW)
            .await,
        Err(StoreError::Conflict(_))
    ));
    let job = JobId::from_random([9; 16]);
    let settlement = vec![
        transfer("job:1:earnings", &held, &earned, 2_700_000),
        transfer("job:1:fee", &held, "platform:fees", 300_000),
        transfer("job:1:release", &held, &available, 1_000_000),
    ];
    let body = json!({"job_id": job});
    let event = gp4u_store::OutboxEvent {
        topic: "billing.settled".into(),
        aggregate_id: job.to_string(),
        payload: body.clone(),
    };
    assert_eq!(
        store
            .settle_job(&job, &body, &settlement, std::slice::from_ref(&event), NOW)
            .await
            .unwrap(),
        SettleOutcome::Settled
    );
    assert_eq!(
        store
            .settle_job(&job, &body, &settlement, &[event], NOW)
            .await
            .unwrap(),
        SettleOutcome::AlreadySettled
    );
    let balance = store.balance(&customer.id).await.unwrap();
    assert_eq!(
        (balance.available, balance.held),
        (Money::from_micros(7_000_000), Money::ZERO)
    );
    assert_eq!(
        store.balance(&provider.id).await.unwrap().available,
        Money::from_micros(2_700_000)
    );
    assert_eq!(
        store.account_balance("platform:fees").await.unwrap(),
        Money::from_micros(300_000)
    );
    assert_eq!(
        store.account_balance("external").await.unwrap(),
        Money::from_micros(-10_000_000)
    );
    assert_eq!(store.get_settlement(&job).await.unwrap(), Some(body));
    assert!(store.audit_balances().await.unwrap().is_empty());
}

/// Two replicas settling the same job at once: one settles, nothing is posted twice.
async fn racing_settlements_post_once(db: &TestDatabase) {
    let store = db.store().await.unwrap();
    let customer = store.create_user(&user(3), NOW).await.unwrap();
    store
        .add_credit(&customer.id, Money::from_micros(5_000_000), "top_up:r", NOW)
        .await
        .unwrap();
    let available = format!("user:{}:available", customer.id);
    let held = format!("user:{}:held", customer.id);
    store
        .post_transfers(&[transfer("job:r:hold", &available, &held, 5_000_000)], NOW)
        .await
        .unwrap();
    let job = JobId::from_random([7; 16]);
    let settlement = Arc::new(vec![
        transfer("job:r:fee", &held, "platform:fees", 1_000_000),
        transfer("job:r:release", &held, &available, 4_000_000),
    ]);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let store = db.store().await.unwrap();
        let settlement = settlement.clone();
        let job = job.clone();
        tasks.push(tokio::spawn(async move {
            store
                .settle_job(&job, &json!({}), &settlement, &[], NOW)
                .await
        }));
    }
    let mut settled = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(SettleOutcome::Settled) => settled += 1,
            Ok(SettleOutcome::AlreadySettled) => {}
            // PostgreSQL may abort a loser on the unique settlement row; it changed nothing.
            Err(StoreError::Database(_)) => {}
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(settled, 1);
    let balance = store.balance(&customer.id).await.unwrap();
    assert_eq!(
        (balance.available, balance.held),
        (Money::from_micros(4_000_000), Money::ZERO)
    );
    assert_eq!(
        store.account_balance("platform:fees").await.unwrap(),
        Money::from_micros(1_000_000)
    );
    assert!(store.audit_balances().await.unwrap().is_empty());
}

macro_rules! both_engines {
    ($($name:ident),* ; $($shared:ident),*) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = super::TestDatabase::create(super::Engine::Sqlite, stringify!($name)).await.unwrap();
                    super::$name(db.store().await.unwrap()).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $shared() {
                    let db = super::TestDatabase::create(super::Engine::Sqlite, stringify!($shared)).await.unwrap();
                    super::$shared(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(db) = super::TestDatabase::create(super::Engine::Postgres, stringify!($name)).await else { return };
                    super::$name(db.store().await.unwrap()).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $shared() {
                    let Some(db) = super::TestDatabase::create(super::Engine::Postgres, stringify!($shared)).await else { return };
                    super::$shared(&db).await;
                }
            )*
        }
    };
}

both_engines!(
    ledger_appends_and_proves,
    transfers_post_once_and_balance;
    concurrent_writers_build_one_linear_log,
    racing_settlements_post_once
);
