//! The store contract: one suite, run against SQLite and PostgreSQL alike.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gp4u_core::ids::{ArtifactId, GpuId, JobId, NodeId, UserId};
use gp4u_core::job::{EndedBy, JobInput, JobState, JobStatus, transition};
use gp4u_core::manifest::{GpuSpec, GpuTarget, JobManifest, Role, WorkloadType};
use gp4u_core::money::{Hours, Money};
use gp4u_store::testing::TestDatabase;
use gp4u_store::{
    ArtifactRecord, CreateJobOutcome, Engine, GpuStatus, JobBlobs, JobRecord, LogReservation,
    NewIdempotency, NewJob, NewNode, NewUser, OutboxEvent, RateDecision, Store, StoreError,
};
use serde_json::json;

const NOW: i64 = 1_800_000_000_000;

fn id_bytes(n: u64) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&n.to_be_bytes());
    bytes
}

fn new_user(n: u64, role: Role) -> NewUser {
    NewUser {
        id: UserId::from_random(id_bytes(n)),
        name: format!("user {n}"),
        role,
        university: false,
        region: None,
    }
}

fn event(n: u64) -> OutboxEvent {
    OutboxEvent {
        topic: "test.event".into(),
        aggregate_id: format!("agg{n}"),
        payload: json!({"n": n}),
    }
}

fn manifest(gpu: &GpuId) -> JobManifest {
    JobManifest {
        name: "train".into(),
        target: GpuTarget::Pinned(gpu.clone()),
        workload_type: WorkloadType::Training,
        expected_duration: Hours::from_micro_hours(4_000_000),
        docker_image: "registry.example/org/bert".into(),
        docker_image_sha256: "a".repeat(64),
        command: vec!["python".into(), "train.py".into()],
        env: [("EPOCHS".to_string(), "3".to_string())].into(),
        inputs: vec![],
        ram_limit_gb: 16.0,
        max_retries: 1,
        reproducibility_sensitive: false,
        shm_gb_requested: None,
        scratch_gb_requested: None,
        network: Default::default(),
    }
}

fn job(n: u64, owner: &UserId, gpu: &GpuId) -> JobRecord {
    JobRecord {
        id: JobId::from_random(id_bytes(n)),
        owner_id: owner.clone(),
        name: "train".into(),
        state: JobState::new_pending(),
        manifest: manifest(gpu),
        gpu_name: Some("RTX 4090".into()),
        gpu_region: Some("us-east-1".into()),
        price_per_hour: Money::from_micros(3_100_000),
        cost_estimate: Money::from_micros(12_400_000),
        placement: None,
        latest_metrics: None,
        anomalies: json!([]),
        energy_kwh: None,
        carbon_kg: None,
        renewable_pct: None,
        carbon_credit_eligible: None,
        created_at_ms: NOW,
        version: 1,
        assigned_at_ms: None,
        picked_up_at_ms: None,
        excluded_nodes: Vec::new(),
        blobs: JobBlobs::default(),
        last_telemetry_at_ms: None,
        retries: 0,
        attempts: Vec::new(),
        hold: Money::ZERO,
        gpu_power_limit_mw: None,
    }
}

/// A customer and a provider node with one GPU.
async fn seed(store: &Store) -> (UserId, GpuId) {
    let customer = store
        .create_user(&new_user(1, Role::Customer), NOW)
        .await
        .unwrap();
    let provider = store
        .create_user(&new_user(2, Role::Provider), NOW)
        .await
        .unwrap();
    let gpu_id = GpuId::from_random(id_bytes(3));
    let node = NewNode {
        id: NodeId::from_random(id_bytes(4)),
        owner_id: provider.id.clone(),
        region: "us-east-1".into(),
        public_key: "key".into(),
        gpus: vec![(
            gpu_id.clone(),
            GpuSpec {
                name: "RTX 4090".into(),
                driver_version: None,
                power_limit_mw: 450_000,
                vram_gb: 24.0,
                price_per_hour: Money::from_micros(3_100_000),
                uuid: None,
                emulated: false,
            },
        )],
        posture: None,
    };
    store.register_node(&node, &[event(0)], NOW).await.unwrap();
    (customer.id, gpu_id)
}

async fn users_roundtrip_suspend_and_credit(store: Store) {
    let user = store
        .create_user(&new_user(9, Role::Admin), NOW)
        .await
        .unwrap();
    assert_eq!(
        (user.clearance, user.active, user.credit),
        (3, true, Money::ZERO)
    );
    assert_eq!(store.get_user(&user.id).await.unwrap(), Some(user.clone()));
    assert!(matches!(
        store.create_user(&new_user(9, Role::Admin), NOW).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(
        !store
            .ensure_user(&new_user(9, Role::Admin), NOW)
            .await
            .unwrap()
    );
    assert!(
        store
            .ensure_user(&new_user(10, Role::Admin), NOW)
            .await
            .unwrap()
    );
    assert!(!store.set_user_active(&user.id, false).await.unwrap().active);
    assert!(!store.get_user(&user.id).await.unwrap().unwrap().active);
    let credited = store
        .add_credit(&user.id, Money::from_micros(100_000_000), "top_up:1", NOW)
        .await
        .unwrap();
    assert_eq!(credited.credit, Money::from_micros(100_000_000));
    assert!(matches!(
        store
            .add_credit(&user.id, Money::from_micros(-100_000_001), "payout:1", NOW)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.get_user(&user.id).await.unwrap().unwrap().credit,
        Money::from_micros(100_000_000)
    );
    let ghost = UserId::from_random(id_bytes(99));
    assert!(matches!(
        store
            .add_credit(&ghost, Money::from_micros(1), "top_up:2", NOW)
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.get_user(&ghost).await.unwrap().is_none());
}

async fn nodes_and_gpus(store: Store) {
    let (_, gpu_id) = seed(&store).await;
    let gpu = store.get_gpu(&gpu_id).await.unwrap().unwrap();
    assert_eq!(
        (gpu.region.as_str(), gpu.status, gpu.trust_score),
        ("us-east-1", GpuStatus::Available, 50.0)
    );
    assert_eq!(
        store.list_available_gpus(10).await.unwrap(),
        vec![gpu.clone()]
    );
    store
        .set_gpu_status(&gpu_id, GpuStatus::Busy)
        .await
        .unwrap();
    assert!(store.list_available_gpus(10).await.unwrap().is_empty());
    let node = store.get_node(&gpu.node_id).await.unwrap().unwrap();
    assert_eq!(node.owner_id, gpu.owner_id);
    // The registration's event went to the outbox in the same transaction.
    assert_eq!(store.outbox_unsequenced().await.unwrap(), 1);
    // The power limit registered, and declared again by the agent.
    assert_eq!(gpu.power_limit_mw, Some(450_000));
    store
        .set_gpu_power_limits(&gpu.node_id, &[(gpu_id.clone(), 699_999)])
        .await
        .unwrap();
    let declared = store.get_gpu(&gpu_id).await.unwrap().unwrap();
    assert_eq!(declared.power_limit_mw, Some(699_999));
    // Another node's GPU is not found, and nothing changes.
    let stranger = NodeId::from_random(id_bytes(77));
    assert!(matches!(
        store
            .set_gpu_power_limits(&stranger, &[(gpu_id.clone(), 1)])
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store
            .get_gpu(&gpu_id)
            .await
            .unwrap()
            .unwrap()
            .power_limit_mw,
        Some(699_999)
    );
}

async fn jobs_create_read_and_update(store: Store) {
    let (customer, gpu) = seed(&store).await;
    let record = job(20, &customer, &gpu);
    let outcome = store
        .create_job(
            &NewJob {
                record: record.clone(),
                idempotency: None,
                events: vec![event(1)],
                transfers: vec![],
            },
            86_400_000,
            NOW,
        )
        .await
        .unwrap();
    let CreateJobOutcome::Created(created) = outcome else {
        panic!("expected Created")
    };
    let fetched = store.get_job(&record.id).await.unwrap().unwrap();
    assert_eq!(fetched, *created);
    assert_eq!(fetched.manifest, record.manifest);
    assert_eq!(
        store
            .list_jobs_for_owner(&customer, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let (cancelled, events) = transition(
        &fetched.state,
        JobInput::Cancel {
            by: EndedBy::Customer,
        },
        NOW + 5,
    )
    .unwrap();
    let outbox: Vec<_> = events.iter().map(|_| event(2)).collect();
    let updated = store
        .update_job_state(&record.id, 1, &cancelled, &outbox, NOW + 5)
        .await
        .unwrap();
    assert_eq!(
        (updated.state.status, updated.version),
        (JobStatus::Cancelled, 2)
    );
    // A stale writer loses.
    assert!(matches!(
        store
            .update_job_state(&record.id, 1, &cancelled, &[], NOW + 6)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.outbox_unsequenced().await.unwrap(), 3);
}

/// Creates a job with no key, events or transfers.
async fn create_plain(store: &Store, record: JobRecord) {
    store
        .create_job(
            &NewJob {
                record,
                idempotency: None,
                events: vec![],
                transfers: vec![],
            },
            86_400_000,
            NOW,
        )
        .await
        .unwrap();
}

/// Pages of an owner's jobs, newest first, follow on from the last job of the page before,
/// including jobs created in the same millisecond (ordered by id), and never show another
/// owner's jobs; a `before` that is not the owner's yields nothing.
async fn jobs_are_listed_in_pages(store: Store) {
    let (customer, gpu) = seed(&store).await;
    let other = UserId::from_random(id_bytes(999));
    store
        .create_user(&new_user(999, Role::Customer), NOW)
        .await
        .unwrap();
    let mut created = Vec::new();
    for n in 0..7u64 {
        let mut record = job(100 + n, &customer, &gpu);
        // Two jobs share each millisecond but the last.
        record.created_at_ms = NOW + i64::try_from(n / 2).unwrap();
        created.push(record.clone());
        create_plain(&store, record).await;
    }
    let foreign = job(200, &other, &gpu);
    create_plain(&store, foreign.clone()).await;
    created.sort_by(|a, b| (b.created_at_ms, b.id.as_str()).cmp(&(a.created_at_ms, a.id.as_str())));
    let expected: Vec<&str> = created.iter().map(|job| job.id.as_str()).collect();
    let mut seen = Vec::new();
    let mut before: Option<JobId> = None;
    loop {
        let page = store
            .list_jobs_for_owner_before(&customer, 3, before.as_ref())
            .await
            .unwrap();
        assert!(page.len() <= 3);
        if page.is_empty() {
            break;
        }
        seen.extend(page.iter().map(|job| job.id.as_str().to_string()));
        before = page.last().map(|job| job.id.clone());
    }
    assert_eq!(seen, expected, "every job once, newest first");
    assert!(
        store
            .list_jobs_for_owner_before(&customer, 3, Some(&foreign.id))
            .await
            .unwrap()
            .is_empty(),
        "another owner's job is no cursor"
    );
}

async fn artifacts_outputs_and_the_log_cap(store: Store) {
    let (customer, gpu) = seed(&store).await;
    let artifact = ArtifactRecord {
        id: ArtifactId::from_random(id_bytes(30)),
        owner_id: customer.clone(),
        sha256: "ab".repeat(32),
        size_bytes: 5_000_000_000,
        created_at_ms: NOW,
    };
    store.insert_artifact(&artifact).await.unwrap();
    assert_eq!(
        store.get_artifact(&artifact.id).await.unwrap(),
        Some(artifact.clone())
    );
    assert!(matches!(
        store.insert_artifact(&artifact).await,
        Err(StoreError::Conflict(_))
    ));
    let unknown = ArtifactId::from_random(id_bytes(31));
    assert_eq!(store.get_artifact(&unknown).await.unwrap(), None);

    let record = job(32, &customer, &gpu);
    store
        .create_job(
            &NewJob {
                record: record.clone(),
                idempotency: None,
                events: vec![],
                transfers: vec![],
            },
            86_400_000,
            NOW,
        )
        .await
        .unwrap();
    let fresh = store.get_job(&record.id).await.unwrap().unwrap();
    assert_eq!(fresh.blobs, JobBlobs::default());
    store
        .record_job_output(&record.id, &"cd".repeat(32), 1234)
        .await
        .unwrap();
    store
        .record_job_output(&record.id, &"ef".repeat(32), 99)
        .await
        .unwrap();
    let missing = JobId::from_random(id_bytes(33));
    assert!(matches!(
        store.record_job_output(&missing, "x", 1).await,
        Err(StoreError::NotFound(_))
    ));

    // Cap 10: 4 + 4 fit whole, the third is cut to 2, then everything is dropped.
    let mut seen = Vec::new();
    for len in [4, 4, 5, 3] {
        seen.push(store.reserve_log_chunk(&record.id, len, 10).await.unwrap());
    }
    assert_eq!(
        seen,
        vec![
            LogReservation::Chunk {
                seq: 0,
                keep: 4,
                log_bytes: 4,
                truncated: false
            },
            LogReservation::Chunk {
                seq: 1,
                keep: 4,
                log_bytes: 8,
                truncated: false
            },
            LogReservation::Chunk {
                seq: 2,
                keep: 2,
                log_bytes: 10,
                truncated: true
            },
            LogReservation::Full { log_bytes: 10 },
        ]
    );
    let blobs = store.get_job(&record.id).await.unwrap().unwrap().blobs;
    assert_eq!(
        blobs,
        JobBlobs {
            output_sha256: Some("ef".repeat(32)),
            output_bytes: Some(99),
            log_bytes: 10,
            log_chunks: 3,
            log_truncated: true,
        }
    );
    assert!(matches!(
        store.reserve_log_chunk(&missing, 1, 10).await,
        Err(StoreError::NotFound(_))
    ));

    // Concurrent appends: every sequence number once, never over the cap.
    let other = job(34, &customer, &gpu);
    store
        .create_job(
            &NewJob {
                record: other.clone(),
                idempotency: None,
                events: vec![],
                transfers: vec![],
            },
            86_400_000,
            NOW,
        )
        .await
        .unwrap();
    let results =
        futures::future::join_all((0..20).map(|_| store.reserve_log_chunk(&other.id, 7, 100)))
            .await;
    let mut seqs = Vec::new();
    let mut kept = 0;
    for result in results {
        if let LogReservation::Chunk { seq, keep, .. } = result.unwrap() {
            seqs.push(seq);
            kept += keep;
        }
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (0..15).collect::<Vec<u64>>(),
        "14 whole chunks and one cut"
    );
    assert_eq!(kept, 100);
}

fn with_key(record: JobRecord, key: &str, hash: &str) -> NewJob {
    let response = json!({"id": record.id.to_string()}).to_string();
    NewJob {
        record,
        idempotency: Some(NewIdempotency {
            key: key.into(),
            request_hash: hash.into(),
            status_code: 201,
            response,
        }),
        events: vec![event(1)],
        transfers: vec![],
    }
}

async fn idempotency_replays_and_expires(store: Store) {
    let (customer, gpu) = seed(&store).await;
    let ttl = 86_400_000;
    let first = store
        .create_job(&with_key(job(30, &customer, &gpu), "k", "h"), ttl, NOW)
        .await
        .unwrap();
    assert!(matches!(first, CreateJobOutcome::Created(_)));
    let second = store
        .create_job(&with_key(job(31, &customer, &gpu), "k", "h"), ttl, NOW + 1)
        .await
        .unwrap();
    let CreateJobOutcome::Replayed(replayed) = second else {
        panic!("expected Replayed")
    };
    assert_eq!(replayed.job_id, JobId::from_random(id_bytes(30)));
    assert_eq!(store.count_jobs().await.unwrap(), 1);
    // One outbox event: the replay wrote nothing.
    assert_eq!(store.outbox_unsequenced().await.unwrap(), 2);
    assert!(
        store
            .idempotency_lookup(&customer, "k", ttl, NOW + ttl)
            .await
            .unwrap()
            .is_none()
    );
    let third = store
        .create_job(
            &with_key(job(32, &customer, &gpu), "k", "h"),
            ttl,
            NOW + ttl,
        )
        .await
        .unwrap();
    assert!(
        matches!(third, CreateJobOutcome::Created(_)),
        "an expired key is reusable"
    );
}

async fn idempotency_race_creates_one_job(store: Store) {
    let (customer, gpu) = seed(&store).await;
    let attempts = (0..8).map(|n| {
        let store = store.clone();
        let record = job(40 + n, &customer, &gpu);
        async move {
            store
                .create_job(&with_key(record, "race", "h"), 86_400_000, NOW)
                .await
                .unwrap()
        }
    });
    let outcomes = futures::future::join_all(attempts).await;
    let created = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, CreateJobOutcome::Created(_)))
        .count();
    assert_eq!(created, 1, "{outcomes:?}");
    assert_eq!(store.count_jobs().await.unwrap(), 1);
}

async fn rate_limit_sliding_window(store: Store) {
    for attempt in 0..30 {
        let decision = store
            .rate_limit_hit("u", NOW + attempt, 60_000, 30)
            .await
            .unwrap();
        assert_eq!(
            decision,
            RateDecision::Allowed {
                remaining: 29 - attempt
            }
        );
    }
    assert_eq!(
        store
            .rate_limit_hit("u", NOW + 1000, 60_000, 30)
            .await
            .unwrap(),
        RateDecision::Limited {
            retry_after_ms: 59_000
        }
    );
    // Another user is not affected.
    assert!(matches!(
        store
            .rate_limit_hit("v", NOW + 1000, 60_000, 30)
            .await
            .unwrap(),
        RateDecision::Allowed { .. }
    ));
    // The first attempt leaves the window exactly a minute later.
    assert!(matches!(
        store
            .rate_limit_hit("u", NOW + 60_000, 60_000, 30)
            .await
            .unwrap(),
        RateDecision::Allowed { .. }
    ));
    assert!(matches!(
        store
            .rate_limit_hit("u", NOW + 60_000, 60_000, 30)
            .await
            .unwrap(),
        RateDecision::Limited { .. }
    ));
    assert!(
        store
            .purge_rate_limit_hits(60_000, NOW + 200_000)
            .await
            .unwrap()
            > 0
    );
}

async fn outbox_sequences_in_order_without_gaps(store: Store) {
    store
        .append_events(&(1..=5).map(event).collect::<Vec<_>>(), NOW)
        .await
        .unwrap();
    let first = store.sequence_outbox(3).await.unwrap();
    assert_eq!(
        first.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(
        first
            .iter()
            .map(|e| e.payload["n"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let rest = store.sequence_outbox(100).await.unwrap();
    assert_eq!(
        rest.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![4, 5]
    );
    assert!(store.sequence_outbox(100).await.unwrap().is_empty());
    assert_eq!(store.outbox_head().await.unwrap(), 5);
    let after_two = store.read_outbox(2, 2).await.unwrap();
    assert_eq!(
        after_two.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![3, 4]
    );
}

async fn subscriber_cursor_is_compare_and_set(store: Store) {
    let state = store
        .load_subscriber("c", &json!({"n": 0}), NOW)
        .await
        .unwrap();
    assert_eq!((state.position, state.model.clone()), (0, json!({"n": 0})));
    store
        .save_subscriber("c", 0, 4, &json!({"n": 4}), NOW)
        .await
        .unwrap();
    assert!(matches!(
        store
            .save_subscriber("c", 0, 5, &json!({"n": 5}), NOW)
            .await,
        Err(StoreError::Conflict(_))
    ));
    let state = store
        .load_subscriber("c", &json!({"n": 0}), NOW)
        .await
        .unwrap();
    assert_eq!((state.position, state.model), (4, json!({"n": 4})));
    assert_eq!(store.list_subscribers().await.unwrap().len(), 1);
}

/// Several writers and two sequencers (two pools: two replicas) at once: every event gets
/// exactly one position and positions run 1..=n without gaps.
async fn concurrent_appends_and_sequencers_never_fork(db: &TestDatabase) {
    let first = db.store().await.unwrap();
    let second = db.store().await.unwrap();
    let writers = (0..4u64).map(|writer| {
        let store = if writer % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        tokio::spawn(async move {
            for n in 0..25 {
                store
                    .append_events(&[event(writer * 100 + n)], NOW)
                    .await
                    .unwrap();
            }
        })
    });
    let sequencers = [first.clone(), second.clone()].map(|store| {
        tokio::spawn(async move {
            let mut positions = Vec::new();
            for _ in 0..60 {
                positions.extend(
                    store
                        .sequence_outbox(7)
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|e| e.position),
                );
                tokio::task::yield_now().await;
            }
            positions
        })
    });
    for writer in writers {
        writer.await.unwrap();
    }
    let mut positions = Vec::new();
    for sequencer in sequencers {
        positions.extend(sequencer.await.unwrap());
    }
    positions.extend(
        first
            .sequence_outbox(1000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.position),
    );
    positions.sort_unstable();
    assert_eq!(positions, (1..=100).collect::<Vec<i64>>());
    let all = first.read_outbox(0, 1000).await.unwrap();
    let mut payloads: Vec<u64> = all
        .iter()
        .map(|e| e.payload["n"].as_u64().unwrap())
        .collect();
    payloads.sort_unstable();
    payloads.dedup();
    assert_eq!(payloads.len(), 100);
}

/// Two replicas hammering one key at once: exactly `limit` attempts get through.
async fn rate_limit_is_exact_under_concurrency(db: &TestDatabase) {
    let stores = [db.store().await.unwrap(), db.store().await.unwrap()];
    let attempts = (0..60).map(|n| {
        let store = stores[n % 2].clone();
        tokio::spawn(async move {
            store
                .rate_limit_hit("hot", NOW + n as i64, 60_000, 30)
                .await
                .unwrap()
        })
    });
    let mut allowed = 0;
    for attempt in attempts {
        if matches!(attempt.await.unwrap(), RateDecision::Allowed { .. }) {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 30);
}

/// Runs each contract test on both engines.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = super::TestDatabase::create(super::Engine::Sqlite, stringify!($name)).await.unwrap();
                    super::$name(db.store().await.unwrap()).await;
                }
            )*
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_appends_and_sequencers_never_fork() {
                let db = super::TestDatabase::create(super::Engine::Sqlite, "fork").await.unwrap();
                super::concurrent_appends_and_sequencers_never_fork(&db).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn rate_limit_is_exact_under_concurrency() {
                let db = super::TestDatabase::create(super::Engine::Sqlite, "hot").await.unwrap();
                super::rate_limit_is_exact_under_concurrency(&db).await;
            }
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(db) = super::TestDatabase::create(super::Engine::Postgres, stringify!($name)).await else { return };
                    super::$name(db.store().await.unwrap()).await;
                }
            )*
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_appends_and_sequencers_never_fork() {
                let Some(db) = super::TestDatabase::create(super::Engine::Postgres, "fork").await else { return };
                super::concurrent_appends_and_sequencers_never_fork(&db).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn rate_limit_is_exact_under_concurrency() {
                let Some(db) = super::TestDatabase::create(super::Engine::Postgres, "hot").await else { return };
                super::rate_limit_is_exact_under_concurrency(&db).await;
            }
        }
    };
}

contract!(
    users_roundtrip_suspend_and_credit,
    nodes_and_gpus,
    jobs_create_read_and_update,
    idempotency_replays_and_expires,
    idempotency_race_creates_one_job,
    rate_limit_sliding_window,
    outbox_sequences_in_order_without_gaps,
    subscriber_cursor_is_compare_and_set,
    artifacts_outputs_and_the_log_cap,
    jobs_are_listed_in_pages,
);

#[tokio::test]
async fn migrations_are_idempotent_on_reopen() {
    let db = TestDatabase::create(Engine::Sqlite, "reopen")
        .await
        .unwrap();
    let store = db.store().await.unwrap();
    store
        .create_user(&new_user(1, Role::Customer), NOW)
        .await
        .unwrap();
    drop(store);
    let reopened = db.store().await.unwrap();
    assert!(
        reopened
            .get_user(&UserId::from_random(id_bytes(1)))
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn bad_urls_are_refused_with_the_password_hidden() {
    let error = Store::connect("mysql://u:secret@h/db").await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("expected sqlite://") && !message.contains("secret"),
        "{message}"
    );
}
