//! Every chamber sees every event exactly once and in order: across a relay that dies between
//! committing positions and publishing, subscribers that crash and restart at any point, and two
//! replicas feeding the same chamber. On SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use gp4u_bus::{EventBus, InProcessBus, ManualClock, Relay, run_chamber};
use gp4u_core::chambers::Chamber;
use gp4u_core::clock::Clock;
use gp4u_store::testing::TestDatabase;
use gp4u_store::{Engine, OutboxEvent, Store};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

/// Records the `n` of every event it applies.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Recorder {
    seen: Vec<u64>,
}

impl Chamber for Recorder {
    const NAME: &'static str = "recorder";

    fn apply(&mut self, _topic: &str, payload: &Value) {
        self.seen.push(payload["n"].as_u64().unwrap());
    }

    fn summary(&self) -> Value {
        json!({"seen": self.seen.len()})
    }
}

fn events(range: std::ops::Range<u64>) -> Vec<OutboxEvent> {
    range
        .map(|n| OutboxEvent {
            topic: "test.n".into(),
            aggregate_id: format!("a{n}"),
            payload: json!({"n": n}),
        })
        .collect()
}

async fn recorded(store: &Store) -> Vec<u64> {
    let state = store
        .load_subscriber(Recorder::NAME, &json!({"seen": []}), 0)
        .await
        .unwrap();
    serde_json::from_value::<Recorder>(state.model)
        .unwrap()
        .seen
}

async fn wait_for(store: &Store, count: usize) -> Vec<u64> {
    for _ in 0..400 {
        let seen = recorded(store).await;
        if seen.len() >= count {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    recorded(store).await
}

fn spawn_recorder(
    store: &Store,
    bus: &Arc<dyn EventBus>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
    tokio::spawn(run_chamber::<Recorder>(
        store.clone(),
        bus.clone(),
        clock,
        Duration::from_millis(50),
        stop,
    ))
}

/// The relay committed positions and died before publishing: nothing reached the bus, yet a
/// subscriber started afterwards applies every event once.
async fn relay_dies_between_commit_and_publish(db: TestDatabase) {
    let store = db.store().await.unwrap();
    store.append_events(&events(0..40), 0).await.unwrap();
    // What the relay does up to its commit, without the publish that would follow.
    assert_eq!(store.sequence_outbox(1000).await.unwrap().len(), 40);
    store.append_events(&events(40..50), 0).await.unwrap();
    let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::default());
    let (stop, stopping) = watch::channel(false);
    let subscriber = spawn_recorder(&store, &bus, stopping.clone());
    // A fresh relay picks up the 10 unsequenced events and publishes them.
    let relayed = Relay::new(store.clone(), bus.clone())
        .run_once()
        .await
        .unwrap();
    assert_eq!(relayed.len(), 10);
    assert_eq!(wait_for(&store, 50).await, (0..50).collect::<Vec<_>>());
    stop.send(true).unwrap();
    subscriber.await.unwrap();
}

/// Subscribers killed (aborted mid-flight) and restarted again and again while events flow,
/// with a second replica of the same chamber running throughout.
async fn crashes_and_replicas_never_lose_or_repeat(db: TestDatabase) {
    let store = db.store().await.unwrap();
    let other_replica_store = db.store().await.unwrap();
    let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::new(8));
    let other_bus: Arc<dyn EventBus> = Arc::new(InProcessBus::default());
    let (stop, stopping) = watch::channel(false);
    let relay =
        Relay::new(store.clone(), bus.clone()).with_poll_interval(Duration::from_millis(20));
    let relay_task = tokio::spawn(relay.clone().run(stopping.clone()));
    let replica = spawn_recorder(&other_replica_store, &other_bus, stopping.clone());
    let mut subscriber = spawn_recorder(&store, &bus, stopping.clone());
    for round in 0..10u64 {
        store
            .append_events(&events(round * 20..round * 20 + 20), 0)
            .await
            .unwrap();
        relay.nudge();
        tokio::time::sleep(Duration::from_millis(5 * (round % 3))).await;
        subscriber.abort();
        let _ = subscriber.await;
        subscriber = spawn_recorder(&store, &bus, stopping.clone());
    }
    assert_eq!(wait_for(&store, 200).await, (0..200).collect::<Vec<_>>());
    stop.send(true).unwrap();
    for task in [relay_task, replica, subscriber] {
        task.await.unwrap();
    }
    assert_eq!(
        recorded(&store).await,
        (0..200).collect::<Vec<_>>(),
        "nothing applied after the end either"
    );
}

macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::TestDatabase::create(super::Engine::Sqlite, stringify!($name)).await.unwrap();
                    super::$name(db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = super::TestDatabase::create(super::Engine::Postgres, stringify!($name)).await else { return };
                    super::$name(db).await;
                }
            )*
        }
    };
}

on_both_engines!(
    relay_dies_between_commit_and_publish,
    crashes_and_replicas_never_lose_or_repeat
);
