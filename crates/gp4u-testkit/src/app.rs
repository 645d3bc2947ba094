//! The server in process: the real router over a fresh database, a manual clock, fixed keys;
//! called directly (`call`, `raw`) for tests of the HTTP surface itself, or served on loopback
//! and spoken to through `gp4u-client` like every other caller.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use gp4u_bus::{EventBus, InProcessBus, ManualClock};
use gp4u_core::atlas::AtlasConfig;
use gp4u_core::ids::{NodeId, UserId};
use gp4u_core::manifest::Role;
use gp4u_core::token::{Claims, TokenKeys, TokenSecret, mint};
use gp4u_proto::{CreditsBody, NewUserBody, StakeBody, paths};
use gp4u_server::placement::place_pending;
use gp4u_server::state::{Limits, RandomIds};
use gp4u_server::{AppState, build_router};
use gp4u_store::testing::TestDatabase;
use gp4u_store::{Engine, NewUser, Store};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

pub const START_MS: i64 = 1_800_000_000_000;
pub const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";
pub const OTHER_SECRET: &[u8] = b"another-secret-another-secret-another";

pub fn keys() -> TokenKeys {
    TokenKeys {
        current: TokenSecret::new(SECRET.to_vec()).unwrap(),
        previous: None,
    }
}

pub struct TestApp {
    /// The blob store's directory (a local `object_store`, as `gp4u server` uses).
    pub blob_dir: Arc<tempfile::TempDir>,
    pub db: TestDatabase,
    pub state: AppState,
    pub router: Router,
    pub clock: ManualClock,
    pub admin: String,
}

/// A [`TestApp`] served on loopback.
pub struct Served {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The admin's token.
    pub admin: String,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    /// A `gp4u-client` for `token` (one attempt per call: a test sees the first answer).
    pub fn client(&self, token: &str) -> gp4u_client::Client {
        gp4u_client::Client::new(&self.base, Some(token))
            .unwrap()
            .with_attempts(1)
    }

    /// A client with no token: the public routes, as a witness reads them.
    pub fn anonymous(&self) -> gp4u_client::Client {
        gp4u_client::Client::new(&self.base, None)
            .unwrap()
            .with_attempts(1)
    }

    /// The admin's client.
    pub fn admin(&self) -> gp4u_client::Client {
        self.client(&self.admin)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// Deterministic ids: a counter, offset per app so that two apps on one database differ.
fn counter_ids(offset: u64) -> RandomIds {
    let counter = Arc::new(AtomicU64::new(offset));
    Arc::new(move || {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&counter.fetch_add(1, Ordering::SeqCst).to_be_bytes());
        bytes
    })
}

impl TestApp {
    pub async fn new(engine: Engine, test: &str) -> Option<TestApp> {
        let db = TestDatabase::create(engine, test).await?;
        let app = TestApp::on(db, 0, ManualClock::new(START_MS)).await;
        app.store()
            .ensure_user(
                &NewUser {
                    id: UserId::parse("usr_admin").unwrap(),
                    name: "admin".into(),
                    role: Role::Admin,
                    university: false,
                    region: None,
                },
                START_MS,
            )
            .await
            .unwrap();
        Some(app)
    }

    /// Another server instance ("replica") on the same database and clock.
    pub async fn replica(&self) -> TestApp {
        let db = clone_db(&self.db);
        TestApp::on_blobs(
            db,
            1 << 40,
            self.clock.clone(),
            self.blob_dir.clone(),
            Limits::default(),
        )
        .await
    }

    /// Another instance on the same database and blobs with other limits.
    pub async fn with_limits(&self, limits: Limits) -> TestApp {
        let db = clone_db(&self.db);
        TestApp::on_blobs(
            db,
            1 << 41,
            self.clock.clone(),
            self.blob_dir.clone(),
            limits,
        )
        .await
    }

    async fn on(db: TestDatabase, id_offset: u64, clock: ManualClock) -> TestApp {
        let blob_dir = Arc::new(tempfile::tempdir().unwrap());
        TestApp::on_blobs(db, id_offset, clock, blob_dir, Limits::default()).await
    }

    async fn on_blobs(
        db: TestDatabase,
        id_offset: u64,
        clock: ManualClock,
        blob_dir: Arc<tempfile::TempDir>,
        limits: Limits,
    ) -> TestApp {
        let store = db.store().await.unwrap();
        let blobs: Arc<dyn object_store::ObjectStore> = Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(blob_dir.path()).unwrap(),
        );
        let bus: Arc<dyn EventBus> = Arc::new(InProcessBus::default());
        let state = AppState::new(
            store,
            Arc::new(clock.clone()),
            keys(),
            limits,
            counter_ids(id_offset),
            bus,
        )
        .with_blobs(blobs);
        let router = build_router(state.clone());
        let admin = token_for("usr_admin", 3, START_MS / 1000 + 86_400);
        TestApp {
            blob_dir,
            db,
            state,
            router,
            clock,
            admin,
        }
    }

    /// The router served on a loopback port, for callers that speak HTTP (`gp4u-client`, the
    /// agent, a browser). Stops when the [`Served`] is dropped.
    pub async fn serve(&self) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let router = self.router.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Served {
            base,
            admin: self.admin.clone(),
            task,
        }
    }

    pub fn store(&self) -> &Store {
        &self.state.store
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        self.call_with(method, path, token, body.map(|body| body.to_string()), &[])
            .await
    }

    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body)),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    /// A request with a raw body; the answer's body as bytes.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Body::from(body)).unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, bytes.to_vec())
    }

    /// The response itself, body unread (for streams).
    pub async fn response(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> axum::response::Response {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.router
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    pub fn token(&self, user: &str, clearance: u8) -> String {
        token_for(user, clearance, self.clock_seconds() + 7 * 86_400)
    }

    pub fn clock_seconds(&self) -> i64 {
        use gp4u_core::clock::Clock;
        self.clock.now_unix_seconds()
    }

    /// Creates a user through the API and returns (id, token).
    pub async fn user(&self, role: &str, region: Option<&str>) -> (String, String) {
        let reply = self
            .call(
                Method::POST,
                paths::ADMIN_USERS,
                Some(&self.admin),
                Some(to_json(&NewUserBody {
                    name: format!("a {role}"),
                    role: role.to_owned(),
                    university: None,
                    region: region.map(str::to_owned),
                    credit: None,
                })),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        let id = reply.body["id"].as_str().unwrap().to_string();
        let clearance = reply.body["clearance"].as_u64().unwrap() as u8;
        let token = self.token(&id, clearance);
        // Enough credit for every job a test submits (each holds its estimate × 1.1).
        let credited = self
            .call(
                Method::POST,
                &paths::admin_user_credits(&id),
                Some(&self.admin),
                Some(to_json(&CreditsBody { amount: 100000.0 })),
            )
            .await;
        assert_eq!(credited.status, StatusCode::OK, "{:?}", credited.body);
        (id, token)
    }

    /// A provider with one GPU at `price` per hour; returns the GPU id.
    pub async fn gpu(&self, price: f64) -> String {
        let (_, provider) = self.user("provider", None).await;
        let reply = self
            .call(
                Method::POST,
                paths::PROVIDERS_REGISTER,
                Some(&provider),
                Some(json!({"region": "us-east-1", "public_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                            "gpus": [{"name": "RTX 4090", "vram_gb": 24, "price_per_hour": price, "power_limit_watts": 450, "uuid": "GPU-1"}]})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        reply.body["gpus"][0]["id"].as_str().unwrap().to_string()
    }
}

/// A provider node registered through the API.
pub struct Node {
    pub token: String,
    pub node_id: String,
    pub gpus: Vec<String>,
}

impl TestApp {
    /// A provider with `count` RTX 4090s at `price` per hour in `region`.
    pub async fn node(&self, count: usize, price: f64, region: &str) -> Node {
        let (_, token) = self.user("provider", None).await;
        let gpus: Vec<Value> = (0..count)
            .map(|n| json!({"name": "RTX 4090", "vram_gb": 24, "price_per_hour": price, "power_limit_watts": 450, "uuid": format!("GPU-{n}")}))
            .collect();
        self.register(&token, json!({"region": region, "public_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "gpus": gpus}))
            .await
            .0
    }

    /// Registers a node for the provider `token` (201 expected); the node and the reply.
    pub async fn register(&self, token: &str, body: Value) -> (Node, Value) {
        let reply = self
            .call(
                Method::POST,
                paths::PROVIDERS_REGISTER,
                Some(token),
                Some(body),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        let node = Node {
            token: token.to_owned(),
            node_id: reply.body["node_id"].as_str().unwrap().to_string(),
            gpus: reply.body["gpus"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["id"].as_str().unwrap().to_string())
                .collect(),
        };
        (node, reply.body)
    }

    /// Runs one statement on the app's database itself, bypassing the store (rows as an older
    /// version left them, or tampering), with text binds; the rows it changed.
    pub async fn execute_sql(&self, sql: &str, binds: &[&str]) -> u64 {
        use sqlx::Connection as _;
        sqlx::any::install_default_drivers();
        let mut connection = sqlx::AnyConnection::connect(&self.db.url).await.unwrap();
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
        for bind in binds {
            query = query.bind(*bind);
        }
        let changed = query
            .execute(&mut connection)
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"))
            .rows_affected();
        let _ = connection.close().await;
        changed
    }

    /// Submits a job and returns its id.
    pub async fn submit(&self, token: &str, body: Value) -> String {
        let reply = self
            .call(Method::POST, paths::JOBS, Some(token), Some(body))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        reply.body["id"].as_str().unwrap().to_string()
    }

    pub async fn job(&self, id: &str) -> Value {
        self.call(Method::GET, &paths::job(id), Some(&self.admin), None)
            .await
            .body
    }
}

/// A job body that lets Atlas choose any RTX 4090.
pub fn any_gpu_body() -> Value {
    let mut body = job_body("unused");
    body.as_object_mut().unwrap().remove("gpuId");
    body["gpu"] = json!({"model": "RTX 4090", "max_price_per_hour": 10.0});
    body
}

fn clone_db(db: &TestDatabase) -> TestDatabase {
    // A second handle on the same database; only the first one cleans up.
    TestDatabase::existing(db.engine, db.url.clone())
}

pub fn token_for(user: &str, clearance: u8, exp: i64) -> String {
    mint(
        &Claims {
            sub: user.into(),
            clr: clearance,
            trs: 50.0,
            exp,
        },
        &TokenSecret::new(SECRET.to_vec()).unwrap(),
    )
}

pub fn job_body(gpu: &str) -> Value {
    json!({
        "name": "BERT fine-tune — medical NLP", "gpuId": gpu, "workload_type": "TRAINING",
        "expectedDurationHours": 4.0, "docker_image": "registry.example/org/bert",
        "docker_image_sha256": "a".repeat(64), "command": ["python", "train.py"], "env": {"EPOCHS": "3"},
    })
}

/// Instantiates each `async fn(TestApp)` test for SQLite and for PostgreSQL (skipped loudly
/// without `GP4U_TEST_DATABASE_URL`, a failure in CI).
#[allow(unused_macros)] // not every test file runs on both engines
#[macro_export]
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite_engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let app = super::TestApp::new(super::Engine::Sqlite, stringify!($name)).await.unwrap();
                    super::$name(app).await;
                }
            )*
        }
        mod postgres_engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(app) = super::TestApp::new(super::Engine::Postgres, stringify!($name)).await else { return };
                    super::$name(app).await;
                }
            )*
        }
    };
}

// ---------------------------------------------------------------------------------------
// A job running on a node (stage 4 and later)
// ---------------------------------------------------------------------------------------

/// A node with one GPU, a customer, and a job placed on the node and picked up by its agent.
pub struct Running {
    pub node: Node,
    pub customer_id: String,
    pub customer: String,
    pub job: String,
}

pub async fn picked_up(app: &TestApp, body: Value) -> Running {
    let node = app.node(1, 3.1, "us-east-1").await;
    running_on(app, node, body).await
}

pub async fn running_on(app: &TestApp, node: Node, mut body: Value) -> Running {
    let (customer_id, customer) = app.user("customer", None).await;
    if body.get("gpuId").is_some() {
        body["gpuId"] = json!(node.gpus[0]);
    }
    let job = app.submit(&customer, body).await;
    place_pending(&app.state, &AtlasConfig::default())
        .await
        .unwrap();
    let poll = format!(
        "{}?node_id={}&wait=0",
        paths::AGENT_ASSIGNMENTS,
        node.node_id
    );
    let reply = app.call(Method::GET, &poll, Some(&node.token), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["job_id"], job.as_str());
    Running {
        node,
        customer_id,
        customer,
        job,
    }
}

pub fn pinned() -> Value {
    job_body("set by running_on")
}

/// A healthy training sample.
pub fn healthy() -> Value {
    json!({
        "gpu_utilization_pct": 94.2, "vram_used_gb": 22.1, "vram_allocated_gb": 24.0,
        "power_draw_watts": 380.0, "temperature_c": 72, "outbound_bytes_per_sec": 1_200_000,
        "inferred_pattern": "TRAINING", "unique_dest_ips": 2, "foreign_gpu_processes": 0
    })
}

pub fn merge(mut base: Value, extra: Value) -> Value {
    for (key, value) in extra.as_object().unwrap() {
        base[key] = value.clone();
    }
    base
}

/// Sends a packet 10 s after the previous one (the agent's cadence).
pub async fn packet(app: &TestApp, token: &str, node: &str, job: &str, extra: Value) -> Reply {
    app.clock.advance_ms(10_000);
    let body = merge(
        merge(healthy(), json!({"job_id": job, "node_id": node})),
        extra,
    );
    app.call(Method::POST, paths::TELEMETRY, Some(token), Some(body))
        .await
}

pub async fn send(app: &TestApp, run: &Running, extra: Value) -> Reply {
    packet(app, &run.node.token, &run.node.node_id, &run.job, extra).await
}

// ---------------------------------------------------------------------------------------
// A provider's standing
// ---------------------------------------------------------------------------------------

/// `GET /api/providers/{node}` as an admin.
pub async fn standing(app: &TestApp, node: &str) -> Value {
    let reply = app
        .call(Method::GET, &paths::provider(node), Some(&app.admin), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.body
}

/// Gives the node's owner `amount` of credit and stakes it on the node.
pub async fn stake(app: &TestApp, node: &Node, amount: f64) {
    let owner = app
        .store()
        .get_node(&NodeId::parse(&node.node_id).unwrap())
        .await
        .unwrap()
        .unwrap()
        .owner_id;
    let reply = app
        .call(
            Method::POST,
            &paths::admin_user_credits(owner.as_str()),
            Some(&app.admin),
            Some(to_json(&CreditsBody { amount })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let reply = app
        .call(
            Method::POST,
            &paths::provider_stake(&node.node_id),
            Some(&node.token),
            Some(to_json(&StakeBody { amount })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["stake"], json!(amount));
}

/// A provider node with a real ed25519 key (for signed visibility answers and proofs),
/// registered through the API with one GPU.
pub async fn keyed_node(app: &TestApp, key: &ed25519_dalek::SigningKey) -> Node {
    let (_, token) = app.user("provider", None).await;
    let reply = app
        .call(
            Method::POST,
            paths::PROVIDERS_REGISTER,
            Some(&token),
            Some(json!({"region": "us-east-1", "public_key": gp4u_attest::key::public_key_base64(key),
                "gpus": [{"name": "RTX 4090", "vram_gb": 24, "price_per_hour": 3.1, "power_limit_watts": 450, "uuid": "GPU-0"}]})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert!(reply.body["platform_public_key"].is_string());
    Node {
        token,
        node_id: reply.body["node_id"].as_str().unwrap().to_string(),
        gpus: vec![reply.body["gpus"][0]["id"].as_str().unwrap().to_string()],
    }
}

/// A typed request body (a `gp4u_proto` type) as the JSON that [`TestApp::call`] sends.
pub fn to_json(body: &impl serde::Serialize) -> Value {
    serde_json::to_value(body).unwrap()
}

/// The field names of a JSON object, sorted (empty for anything else): what the wire-shape
/// assertions compare, so that a typed answer is known to carry exactly the fields the
/// hand-built one did.
pub fn field_names(value: &Value) -> Vec<String> {
    let mut names: Vec<String> = value
        .as_object()
        .map(|object| object.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    names
}
