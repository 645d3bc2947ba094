//! A user's journey through a running GP4U, spoken through `gp4u-client`: the people, a
//! provider's registration, waiting for an agent's GPU, for a job's end and for its proofs.
//! Shared by the black-box tests (the agent's and the CLI's) and the benches, so that each
//! waits and builds the same way. Every wait has a limit and panics with what it last saw.

use std::time::{Duration, Instant};

use gp4u_client::Client;
use gp4u_proto::{
    GpuView, JobProofs, JobView, NewUserBody, ProofKind, RegisterBody, RegisterGpuBody,
};

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(200);

/// A `POST /api/admin/users` body: `name`, `role` (customer | provider | admin), and an
/// opening credit.
pub fn new_user(name: &str, role: &str, credit: Option<f64>) -> NewUserBody {
    NewUserBody {
        name: name.into(),
        role: role.into(),
        university: None,
        region: None,
        credit,
    }
}

/// A provider's registration of one declared (not emulated) GPU in `region`, with a fixed
/// node key: `name`, its VRAM in GB, its price per hour, a 450 W limit.
pub fn register_one_gpu(region: &str, name: &str, vram_gb: f64, price: f64) -> RegisterBody {
    RegisterBody {
        region: region.into(),
        public_key: "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=".into(),
        gpus: vec![RegisterGpuBody {
            name: name.into(),
            vram_gb,
            price_per_hour: price,
            uuid: Some("GPU-5e1c".into()),
            power_limit_watts: 450.0,
            driver_version: None,
            emulated: None,
        }],
        endpoint: None,
        renewable_pct: None,
        posture: None,
    }
}

/// The first GPU on the market, waiting up to `limit` for an agent to register one.
pub async fn first_gpu(client: &Client, limit: Duration) -> GpuView {
    let deadline = Instant::now() + limit;
    loop {
        let listing = client.gpus().await.expect("the GPU listing");
        if let Some(gpu) = listing.gpus.into_iter().next() {
            return gpu;
        }
        assert!(
            Instant::now() < deadline,
            "no GPU registered within {limit:?}: did the agent start?"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The job once it ended (COMPLETE, FAILED or CANCELLED), waiting up to `limit`; `seen` hears
/// every view on the way (to note when it started running, say).
pub async fn finished(
    client: &Client,
    job: &str,
    limit: Duration,
    mut seen: impl FnMut(&JobView),
) -> JobView {
    let deadline = Instant::now() + limit;
    loop {
        let view = client.job(job).await.expect("the job view");
        seen(&view);
        if view.status.is_terminal() {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "job {job} did not end within {limit:?}: {view:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The job's proofs once both the energy proof and the hardware attestation are in, waiting
/// up to `limit`.
pub async fn proven(client: &Client, job: &str, limit: Duration) -> JobProofs {
    let deadline = Instant::now() + limit;
    loop {
        let proofs = client.proofs(job).await.expect("the job's proofs");
        let has = |kind: ProofKind| proofs.proofs.iter().any(|proof| proof.kind == kind);
        if has(ProofKind::Energy) && has(ProofKind::Hardware) {
            return proofs;
        }
        assert!(
            Instant::now() < deadline,
            "the proofs of {job} did not arrive within {limit:?}: {proofs:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}
