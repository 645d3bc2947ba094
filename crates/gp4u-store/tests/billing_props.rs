//! Randomised billing sequences against the real store, on SQLite and PostgreSQL alike.
//!
//! Each case is a fresh database with two customers and two providers (one a university) and
//! a random sequence of: admin top-ups (some replayed with the same transfer id), job
//! submissions through `create_job` carrying their billing hold (`InsufficientFunds` refuses a
//! job whose hold exceeds the customer's available credit), resubmissions with the same
//! idempotency key, and settlements through `settle_job`, each job settled one to three times
//! at random moments after its submission. Neighbouring operations run concurrently now and
//! then (`tokio::join!`, on two store handles: two replicas), including two settlements of
//! the same job.
//!
//! The test keeps its own model of every balance. After every step the store must agree with
//! the model (for a concurrent pair: with one of the two serial orders of the pair), no user
//! balance is below zero, and `audit_balances` finds every balance column equal to its
//! journal. A refused submission leaves no job, no idempotency key and no balance change. At
//! the end nothing is held, every balance is what the settlements say, and replaying every
//! operation changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use gp4u_core::billing::{
    Account, DEFAULT_FEE_BP, DEFAULT_STUDENT_BP, Outcome, Settlement, SettlementInput, hold_amount,
    hold_transfer, settle,
};
use gp4u_core::ids::{GpuId, JobId, UserId};
use gp4u_core::job::JobState;
use gp4u_core::manifest::{GpuTarget, JobManifest, Role, WorkloadType};
use gp4u_core::money::{Hours, Money};
use gp4u_core::pricing::job_cost;
use gp4u_store::testing::{TestDatabase, postgres_admin_url};
use gp4u_store::{
    CreateJobOutcome, Engine, JobBlobs, JobRecord, NewIdempotency, NewJob, NewTransfer, NewUser,
    OutboxEvent, SettleOutcome, Store, StoreError,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;

const NOW: i64 = 1_800_000_000_000;
const IDEMPOTENCY_TTL_MS: i64 = 86_400_000;
/// Each case creates a database and runs a few dozen store operations with checks between
/// them; this many keeps each engine's run well under 30 s in debug.
const CASES: u32 = 20;

const MAX_JOBS: usize = 7;
const MAX_TOP_UPS: usize = 5;
/// Order slots per job: its submission, three settlements, one resubmission.
const SLOTS_PER_JOB: usize = 5;
/// Order slots per top-up: the top-up and one replay.
const SLOTS_PER_TOP_UP: usize = 2;

// ---------------------------------------------------------------------------------------------
// Scenario

#[derive(Clone, Debug)]
struct JobSpec {
    customer: usize,
    provider: usize,
    price_micros: i64,
    expected_micro_hours: i64,
    running_permille: i64,
    outcome: Outcome,
    /// 1 to 3 settlement attempts.
    settlements: usize,
    /// Whether the first settlement attempt is two racing `settle_job` calls.
    race: bool,
    resubmit: bool,
}

#[derive(Clone, Debug)]
struct Scenario {
    customers: usize,
    fee_bp: u32,
    student_bp: u32,
    /// (customer, amount in micros, replayed).
    top_ups: Vec<(usize, i64, bool)>,
    jobs: Vec<JobSpec>,
    order: Vec<u64>,
    /// Positions whose operation runs concurrently with the next one (when allowed).
    concurrent: Vec<Index>,
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        3 => Just(Outcome::Completed),
        2 => Just(Outcome::FailedCustomerFault),
        2 => Just(Outcome::FailedProviderFault),
        1 => Just(Outcome::NeverRan),
    ]
}

fn job_spec() -> impl Strategy<Value = JobSpec> {
    (
        0_usize..2,
        0_usize..2,
        prop_oneof![1 => Just(0_i64), 8 => 1_i64..=50_000_000],
        prop_oneof![1 => Just(0_i64), 8 => 1_i64..=10_000_000],
        0_i64..=1_300,
        outcome(),
        1_usize..=3,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                customer,
                provider,
                price_micros,
                expected_micro_hours,
                running_permille,
                outcome,
                settlements,
                race,
                resubmit,
            )| JobSpec {
                customer,
                provider,
                price_micros,
                expected_micro_hours,
                running_permille,
                outcome,
                settlements,
                race,
                resubmit,
            },
        )
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        1_usize..=2,
        prop_oneof![3 => Just(DEFAULT_FEE_BP), 1 => 0_u32..=10_000],
        prop_oneof![3 => Just(DEFAULT_STUDENT_BP), 1 => 0_u32..=10_000],
        // Up to 800 units each, against holds of up to 550 (50 an hour for 10 hours × 1.1):
        // most submissions are accepted, those before enough credit arrives are refused.
        prop::collection::vec(
            (0_usize..2, 1_i64..=800_000_000, any::<bool>()),
            1..=MAX_TOP_UPS,
        ),
        prop::collection::vec(job_spec(), 2..=MAX_JOBS),
        prop::collection::vec(
            any::<u64>(),
            MAX_TOP_UPS * SLOTS_PER_TOP_UP + MAX_JOBS * SLOTS_PER_JOB,
        ),
        prop::collection::vec(any::<Index>(), 0..8),
    )
        .prop_map(
            |(customers, fee_bp, student_bp, top_ups, jobs, order, concurrent)| Scenario {
                customers,
                fee_bp,
                student_bp,
                top_ups,
                jobs,
                order,
                concurrent,
            },
        )
}

// ---------------------------------------------------------------------------------------------
// Users, jobs and transfers (the minimum copied from contract.rs and the server)

fn id_bytes(n: u64) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&n.to_be_bytes());
    bytes
}

fn customer_id(index: usize) -> UserId {
    UserId::from_random(id_bytes(100 + index as u64))
}

fn provider_id(index: usize) -> UserId {
    UserId::from_random(id_bytes(200 + index as u64))
}

/// Provider 1 is a university, so its jobs pay the student programme.
fn provider_is_university(index: usize) -> bool {
    index == 1
}

fn new_user(id: UserId, role: Role, university: bool) -> NewUser {
    NewUser {
        name: format!("user {id}"),
        id,
        role,
        university,
        region: None,
    }
}

fn manifest(expected: Hours) -> JobManifest {
    JobManifest {
        name: "train".into(),
        target: GpuTarget::Pinned(GpuId::from_random(id_bytes(3))),
        workload_type: WorkloadType::Training,
        expected_duration: expected,
        docker_image: "registry.example/org/bert".into(),
        docker_image_sha256: "a".repeat(64),
        command: vec!["python".into(), "train.py".into()],
        env: Default::default(),
        inputs: vec![],
        ram_limit_gb: 16.0,
        max_retries: 1,
        reproducibility_sensitive: false,
        shm_gb_requested: None,
        scratch_gb_requested: None,
        network: Default::default(),
    }
}

/// A job as the submission route builds it: the record with its hold, an idempotency key, a
/// `job.created` event, and the hold transfer.
struct Job {
    customer: UserId,
    new_job: NewJob,
    hold: Money,
    settlement: Settlement,
}

fn build_job(scenario: &Scenario, index: usize) -> Job {
    let spec = &scenario.jobs[index];
    let customer = customer_id(spec.customer % scenario.customers);
    let provider = provider_id(spec.provider);
    let id = JobId::from_random(id_bytes(1_000 + index as u64));
    let price = Money::from_micros(spec.price_micros);
    let expected = Hours::from_micro_hours(spec.expected_micro_hours);
    let cost_estimate = job_cost(price, expected);
    let hold = hold_amount(cost_estimate);
    let record = JobRecord {
        id: id.clone(),
        owner_id: customer.clone(),
        name: "train".into(),
        state: JobState::new_pending(),
        manifest: manifest(expected),
        gpu_name: Some("RTX 4090".into()),
        gpu_region: Some("us-east-1".into()),
        price_per_hour: price,
        cost_estimate,
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
        hold,
        gpu_power_limit_mw: None,
    };
    let transfers = hold_transfer(&id, &customer, hold)
        .expect("valid hold")
        .iter()
        .map(NewTransfer::from)
        .collect();
    // 1 micro-hour is 3.6 ms; up to 1.3× the declared duration, past what the hold covers.
    let running_ms = spec.expected_micro_hours * 36 / 10 * spec.running_permille / 1_000;
    let settlement = settle(&SettlementInput {
        job_id: id.clone(),
        customer_id: customer.clone(),
        provider_id: provider,
        provider_is_university: provider_is_university(spec.provider),
        price_per_hour: price,
        running_ms,
        held: hold,
        outcome: spec.outcome,
        fee_bp: scenario.fee_bp,
        student_bp: scenario.student_bp,
    })
    .expect("valid settlement");
    Job {
        customer,
        new_job: NewJob {
            record,
            idempotency: Some(NewIdempotency {
                key: format!("submit-{index}"),
                request_hash: format!("hash-{index}"),
                status_code: 201,
                response: json!({"job_id": id}).to_string(),
            }),
            events: vec![OutboxEvent {
                topic: "job.created".into(),
                aggregate_id: id.to_string(),
                payload: json!({"job_id": id}),
            }],
            transfers,
        },
        hold,
        settlement,
    }
}

// ---------------------------------------------------------------------------------------------
// Operations and the model

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    /// Top-up `k`, first time or replayed (same transfer id).
    TopUp(usize),
    Submit(usize),
    /// The same submission again, same idempotency key.
    Resubmit(usize),
    Settle(usize),
}

impl Op {
    fn job(self) -> Option<usize> {
        match self {
            Op::TopUp(_) => None,
            Op::Submit(job) | Op::Resubmit(job) | Op::Settle(job) => Some(job),
        }
    }
}

/// What an operation returned, reduced to what the model predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    ToppedUp,
    Created,
    Refused,
    Replayed,
    Settled,
    AlreadySettled,
    /// A settlement or resubmission of a job whose submission was refused: not attempted.
    Skipped,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    /// Account key → balance, as `Store::balance` / `account_balance` report them.
    balances: BTreeMap<String, i64>,
    top_ups_posted: Vec<bool>,
    /// Per job: `None` before its submission, then whether it was accepted.
    accepted: Vec<Option<bool>>,
    settled: Vec<bool>,
}

impl Model {
    fn balance(&self, account: &str) -> i64 {
        self.balances.get(account).copied().unwrap_or(0)
    }

    fn add(&mut self, account: &Account, delta: i64) {
        *self
            .balances
            .entry(account.as_str().to_owned())
            .or_default() += delta;
    }

    fn apply(&mut self, scenario: &Scenario, jobs: &[Job], op: Op) -> Reply {
        match op {
            Op::TopUp(index) => {
                if !self.top_ups_posted[index] {
                    let (customer, amount, _) = scenario.top_ups[index];
                    self.add(
                        &Account::available(&customer_id(customer % scenario.customers)),
                        amount,
                    );
                    self.add(&Account::external(), -amount);
                    self.top_ups_posted[index] = true;
                }
                Reply::ToppedUp
            }
            Op::Submit(index) => {
                let job = &jobs[index];
                let available = self.balance(Account::available(&job.customer).as_str());
                if available >= job.hold.micros() {
                    self.add(&Account::available(&job.customer), -job.hold.micros());
                    self.add(&Account::held(&job.customer), job.hold.micros());
                    self.accepted[index] = Some(true);
                    Reply::Created
                } else {
                    self.accepted[index] = Some(false);
                    Reply::Refused
                }
            }
            Op::Resubmit(index) => match self.accepted[index] {
                Some(true) => Reply::Replayed,
                _ => Reply::Skipped,
            },
            Op::Settle(index) => {
                if self.accepted[index] != Some(true) {
                    return Reply::Skipped;
                }
                if self.settled[index] {
                    return Reply::AlreadySettled;
                }
                self.settled[index] = true;
                for transfer in &jobs[index].settlement.transfers {
                    self.add(&transfer.debit, -transfer.amount.micros());
                    self.add(&transfer.credit, transfer.amount.micros());
                }
                Reply::Settled
            }
        }
    }
}

/// The operations in a random order, each job's submission before its resubmission and its
/// settlements.
fn interleave(scenario: &Scenario) -> Vec<Op> {
    let mut keyed: Vec<(u64, usize, Op)> = Vec::new();
    for (index, (_, _, replayed)) in scenario.top_ups.iter().enumerate() {
        let base = index * SLOTS_PER_TOP_UP;
        keyed.push((scenario.order[base], 0, Op::TopUp(index)));
        if *replayed {
            keyed.push((scenario.order[base + 1], 1, Op::TopUp(index)));
        }
    }
    for (index, spec) in scenario.jobs.iter().enumerate() {
        let base = MAX_TOP_UPS * SLOTS_PER_TOP_UP + index * SLOTS_PER_JOB;
        keyed.push((scenario.order[base], 0, Op::Submit(index)));
        for settlement in 0..spec.settlements {
            keyed.push((
                scenario.order[base + 1 + settlement],
                1 + settlement,
                Op::Settle(index),
            ));
        }
        if spec.resubmit {
            keyed.push((scenario.order[base + 4], 4, Op::Resubmit(index)));
        }
    }
    keyed.sort();
    let mut ops: Vec<Op> = keyed.into_iter().map(|(_, _, op)| op).collect();
    // Each job's submission takes the earliest position its job's steps occupy (a swap, so the
    // order stays a random permutation otherwise).
    for index in 0..scenario.jobs.len() {
        let earliest = ops
            .iter()
            .position(|op| op.job() == Some(index))
            .expect("the job has steps");
        let submit = ops
            .iter()
            .position(|op| *op == Op::Submit(index))
            .expect("the job is submitted");
        ops.swap(earliest, submit);
    }
    ops
}

// ---------------------------------------------------------------------------------------------
// Running operations against the store

struct Env {
    /// Two handles on one database: two replicas.
    stores: [Store; 2],
    users: Vec<UserId>,
}

async fn execute(
    store: &Store,
    scenario: &Scenario,
    jobs: &[Job],
    op: Op,
    skip: bool,
) -> Result<Reply, String> {
    if skip {
        return Ok(Reply::Skipped);
    }
    match op {
        Op::TopUp(index) => {
            let (customer, amount, _) = scenario.top_ups[index];
            store
                .add_credit(
                    &customer_id(customer % scenario.customers),
                    Money::from_micros(amount),
                    &format!("top_up:pay_{index}"),
                    NOW,
                )
                .await
                .map(|_| Reply::ToppedUp)
                .map_err(|error| format!("top-up {index}: {error}"))
        }
        Op::Submit(index) | Op::Resubmit(index) => {
            match store
                .create_job(&jobs[index].new_job, IDEMPOTENCY_TTL_MS, NOW)
                .await
            {
                Ok(CreateJobOutcome::Created(_)) => Ok(Reply::Created),
                Ok(CreateJobOutcome::Replayed(record)) => {
                    if record.job_id != jobs[index].new_job.record.id {
                        return Err(format!("job {index} replayed as {}", record.job_id));
                    }
                    Ok(Reply::Replayed)
                }
                Err(StoreError::InsufficientFunds { .. }) => Ok(Reply::Refused),
                Err(error) => Err(format!("submitting job {index}: {error}")),
            }
        }
        Op::Settle(index) => {
            let job = &jobs[index];
            // Settlement uses the hold as the store recorded it, as the server does.
            let stored = store
                .get_job(&job.new_job.record.id)
                .await
                .map_err(|error| error.to_string())?
                .ok_or_else(|| format!("accepted job {index} is not stored"))?;
            if stored.hold != job.hold
                || stored.price_per_hour != job.settlement.input.price_per_hour
            {
                return Err(format!("job {index} stored with hold {}", stored.hold));
            }
            let body = serde_json::to_value(&job.settlement).map_err(|error| error.to_string())?;
            let transfers: Vec<NewTransfer> = job
                .settlement
                .transfers
                .iter()
                .map(NewTransfer::from)
                .collect();
            let event = OutboxEvent {
                topic: "billing.settled".into(),
                aggregate_id: stored.id.to_string(),
                payload: json!({"job_id": stored.id, "settlement": body}),
            };
            match store
                .settle_job(&stored.id, &body, &transfers, &[event], NOW)
                .await
            {
                Ok(SettleOutcome::Settled) => Ok(Reply::Settled),
                Ok(SettleOutcome::AlreadySettled) => Ok(Reply::AlreadySettled),
                Err(error) => Err(format!("settling job {index}: {error}")),
            }
        }
    }
}

/// What the store holds, in the model's terms: every user's two balances and the platform's
/// accounts.
async fn observe(env: &Env) -> Result<BTreeMap<String, i64>, TestCaseError> {
    let store = &env.stores[0];
    let mut seen = BTreeMap::new();
    for user in &env.users {
        let balance = store
            .balance(user)
            .await
            .map_err(|error| TestCaseError::fail(error.to_string()))?;
        seen.insert(
            Account::available(user).as_str().to_owned(),
            balance.available.micros(),
        );
        seen.insert(
            Account::held(user).as_str().to_owned(),
            balance.held.micros(),
        );
    }
    for account in [
        Account::external(),
        Account::platform_fees(),
        Account::student_program(),
    ] {
        let balance = store
            .account_balance(account.as_str())
            .await
            .map_err(|error| TestCaseError::fail(error.to_string()))?;
        seen.insert(account.as_str().to_owned(), balance.micros());
    }
    Ok(seen)
}

fn nonzero(map: &BTreeMap<String, i64>) -> BTreeMap<String, i64> {
    map.iter()
        .filter(|(_, balance)| **balance != 0)
        .map(|(account, balance)| (account.clone(), *balance))
        .collect()
}

/// Every balance is what the model says, none but `external` is negative, and the journal
/// agrees with the balance columns.
async fn checkpoint(env: &Env, model: &Model, after: &str) -> Result<(), TestCaseError> {
    let seen = observe(env).await?;
    for (account, balance) in &seen {
        prop_assert!(
            account == "external" || *balance >= 0,
            "{} is {} after {}",
            account,
            balance,
            after
        );
    }
    prop_assert_eq!(
        nonzero(&seen),
        nonzero(&model.balances),
        "store and model disagree after {}",
        after
    );
    prop_assert_eq!(seen.values().map(|v| i128::from(*v)).sum::<i128>(), 0);
    let audit = env.stores[1]
        .audit_balances()
        .await
        .map_err(|error| TestCaseError::fail(error.to_string()))?;
    prop_assert!(audit.is_empty(), "audit after {}: {:?}", after, audit);
    Ok(())
}

/// A refused submission left nothing behind: no job, no idempotency key.
async fn check_refusal(env: &Env, jobs: &[Job], index: usize) -> Result<(), TestCaseError> {
    let job = &jobs[index].new_job;
    let stored = env.stores[0]
        .get_job(&job.record.id)
        .await
        .map_err(|error| TestCaseError::fail(error.to_string()))?;
    prop_assert!(stored.is_none(), "refused job {} was stored", index);
    let key = env.stores[0]
        .idempotency_lookup(
            &job.record.owner_id,
            &job.idempotency.as_ref().expect("key").key,
            IDEMPOTENCY_TTL_MS,
            NOW,
        )
        .await
        .map_err(|error| TestCaseError::fail(error.to_string()))?;
    prop_assert!(
        key.is_none(),
        "refused job {} kept its idempotency key",
        index
    );
    Ok(())
}

/// Whether `first` and `second` may run at the same time: not two steps of one job (a job's
/// settlement needs its submission to have committed) and not a top-up with its own replay.
fn may_overlap(first: Op, second: Op) -> bool {
    match (first.job(), second.job()) {
        (Some(a), Some(b)) if a == b => {
            matches!((first, second), (Op::Settle(_), Op::Settle(_)))
        }
        (None, None) => first != second,
        _ => true,
    }
}

/// How often each kind of reply and concurrent step came up, over all cases.
#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    cases: usize,
    steps: usize,
    created: usize,
    refused: usize,
    replayed: usize,
    settled: usize,
    already_settled: usize,
    concurrent_pairs: usize,
    /// Two settlements of the same job run together.
    settlement_races: usize,
}

impl Coverage {
    fn merge(&mut self, case: &Coverage) {
        self.cases += case.cases;
        self.steps += case.steps;
        self.created += case.created;
        self.refused += case.refused;
        self.replayed += case.replayed;
        self.settled += case.settled;
        self.already_settled += case.already_settled;
        self.concurrent_pairs += case.concurrent_pairs;
        self.settlement_races += case.settlement_races;
    }

    fn count(&mut self, reply: Reply) {
        self.steps += 1;
        match reply {
            Reply::Created => self.created += 1,
            Reply::Refused => self.refused += 1,
            Reply::Replayed => self.replayed += 1,
            Reply::Settled => self.settled += 1,
            Reply::AlreadySettled => self.already_settled += 1,
            Reply::ToppedUp | Reply::Skipped => {}
        }
    }
}

async fn run_case(
    engine: Engine,
    scenario: Scenario,
    coverage: &mut Coverage,
) -> Result<(), TestCaseError> {
    coverage.cases += 1;
    let db = TestDatabase::create(engine, "billing_props")
        .await
        .expect("engine configured");
    let stores = [
        db.store().await.expect("open store"),
        db.store().await.expect("open store"),
    ];
    let mut users = Vec::new();
    for index in 0..scenario.customers {
        let user = new_user(customer_id(index), Role::Customer, false);
        stores[0].create_user(&user, NOW).await.expect("customer");
        users.push(user.id);
    }
    for index in 0..2 {
        let user = new_user(
            provider_id(index),
            Role::Provider,
            provider_is_university(index),
        );
        stores[0].create_user(&user, NOW).await.expect("provider");
        users.push(user.id);
    }
    let env = Env { stores, users };
    let jobs: Vec<Job> = (0..scenario.jobs.len())
        .map(|index| build_job(&scenario, index))
        .collect();
    for job in &jobs {
        prop_assert!(job.settlement.check().is_ok());
    }
    let ops = interleave(&scenario);
    let concurrent: Vec<usize> = scenario
        .concurrent
        .iter()
        .map(|index| index.index(ops.len()))
        .collect();

    let mut model = Model {
        balances: BTreeMap::new(),
        top_ups_posted: vec![false; scenario.top_ups.len()],
        accepted: vec![None; jobs.len()],
        settled: vec![false; jobs.len()],
    };
    checkpoint(&env, &model, "setup").await?;
    let mut position = 0;
    while position < ops.len() {
        let op = ops[position];
        // A job's first settlement may race itself (two replicas settling the same job);
        // otherwise an op may run together with the next one.
        let first_settlement = matches!(op, Op::Settle(job)
            if scenario.jobs[job].race && ops[..position].iter().all(|earlier| *earlier != op));
        let (pair, width) = if first_settlement {
            (Some(op), 1)
        } else if position + 1 < ops.len()
            && concurrent.contains(&position)
            && may_overlap(op, ops[position + 1])
        {
            (Some(ops[position + 1]), 2)
        } else {
            (None, 1)
        };
        // Whether the model says the op is moot (its job was refused) is known beforehand
        // except for a job whose submission is in this very pair, which `may_overlap` excludes.
        let skip = |op: Op| matches!(op, Op::Settle(j) | Op::Resubmit(j) if model.accepted[j] != Some(true));
        match pair {
            None => {
                let before = observe(&env).await?;
                let reply = execute(&env.stores[position % 2], &scenario, &jobs, op, skip(op))
                    .await
                    .map_err(TestCaseError::fail)?;
                let expected = model.apply(&scenario, &jobs, op);
                prop_assert_eq!(reply, expected, "step {} {:?}", position, op);
                coverage.count(reply);
                if reply == Reply::Refused {
                    let Op::Submit(index) = op else {
                        unreachable!()
                    };
                    prop_assert_eq!(observe(&env).await?, before, "a refusal changed balances");
                    check_refusal(&env, &jobs, index).await?;
                }
                checkpoint(&env, &model, &format!("step {position} {op:?}")).await?;
                position += 1;
            }
            Some(next) => {
                let (first, second) = tokio::join!(
                    execute(&env.stores[0], &scenario, &jobs, op, skip(op)),
                    execute(&env.stores[1], &scenario, &jobs, next, skip(next)),
                );
                let replies = (
                    first.map_err(TestCaseError::fail)?,
                    second.map_err(TestCaseError::fail)?,
                );
                // The pair must have the effect of one of its two serial orders.
                let mut forward = model.clone();
                let forward_replies = (
                    forward.apply(&scenario, &jobs, op),
                    forward.apply(&scenario, &jobs, next),
                );
                let mut backward = model.clone();
                let second_first = backward.apply(&scenario, &jobs, next);
                let backward_replies = (backward.apply(&scenario, &jobs, op), second_first);
                let seen = nonzero(&observe(&env).await?);
                model = if replies == forward_replies && seen == nonzero(&forward.balances) {
                    forward
                } else if replies == backward_replies && seen == nonzero(&backward.balances) {
                    backward
                } else {
                    return Err(TestCaseError::fail(format!(
                        "steps {position} {op:?} and {next:?} run together gave {replies:?} and \
                         {seen:?}; serially {forward_replies:?} {:?} or {backward_replies:?} {:?}",
                        nonzero(&forward.balances),
                        nonzero(&backward.balances)
                    )));
                };
                coverage.count(replies.0);
                coverage.count(replies.1);
                coverage.concurrent_pairs += 1;
                if op == next && (replies.0 == Reply::Settled || replies.1 == Reply::Settled) {
                    coverage.settlement_races += 1;
                }
                for (reply, op) in [(replies.0, op), (replies.1, next)] {
                    if reply == Reply::Refused {
                        let Op::Submit(index) = op else {
                            unreachable!()
                        };
                        check_refusal(&env, &jobs, index).await?;
                    }
                }
                checkpoint(&env, &model, &format!("steps {position} {op:?} ‖ {next:?}")).await?;
                position += width;
            }
        }
    }

    // The end: every job submitted; every accepted job settled; nothing held; each balance is
    // the top-ups less the charges, plus the earnings; the platform's accounts are the sums.
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut add = |account: Account, delta: i64| {
        *expected.entry(account.as_str().to_owned()).or_default() += delta;
    };
    for (customer, amount, _) in &scenario.top_ups {
        add(
            Account::available(&customer_id(customer % scenario.customers)),
            *amount,
        );
        add(Account::external(), -amount);
    }
    for (index, job) in jobs.iter().enumerate() {
        prop_assert!(
            model.accepted[index].is_some(),
            "job {} never submitted",
            index
        );
        let stored = env.stores[0]
            .get_settlement(&job.new_job.record.id)
            .await
            .map_err(|error| TestCaseError::fail(error.to_string()))?;
        if model.accepted[index] != Some(true) {
            prop_assert!(stored.is_none(), "refused job {} has a settlement", index);
            continue;
        }
        prop_assert!(model.settled[index], "accepted job {} never settled", index);
        let stored = stored.expect("settled job has its settlement");
        let stored: Settlement = serde_json::from_value(stored).expect("settlement parses");
        prop_assert_eq!(&stored, &job.settlement);
        prop_assert!(stored.check().is_ok());
        let s = &job.settlement;
        add(
            Account::available(&job.customer),
            -s.customer_charged.micros(),
        );
        add(
            Account::available(&s.input.provider_id),
            s.provider_earnings.micros(),
        );
        add(Account::platform_fees(), s.platform_fee.micros());
        add(Account::student_program(), s.student_program.micros());
    }
    let end = observe(&env).await?;
    for user in &env.users {
        prop_assert_eq!(
            end[Account::held(user).as_str()],
            0,
            "{} still holds money",
            user
        );
    }
    prop_assert_eq!(nonzero(&end), nonzero(&expected), "final balances");

    // Replaying everything — every top-up, every submission, every settlement — changes
    // nothing: top-ups and settlements are keyed, and a submission replays its key.
    for op in (0..scenario.top_ups.len())
        .map(Op::TopUp)
        .chain((0..jobs.len()).map(Op::Resubmit))
        .chain((0..jobs.len()).map(Op::Settle))
    {
        let skip = matches!(op, Op::Settle(j) | Op::Resubmit(j) if model.accepted[j] != Some(true));
        let reply = execute(&env.stores[1], &scenario, &jobs, op, skip)
            .await
            .map_err(TestCaseError::fail)?;
        let expected_reply = model.apply(&scenario, &jobs, op);
        prop_assert_eq!(reply, expected_reply, "replaying {:?}", op);
    }
    prop_assert_eq!(observe(&env).await?, end, "replaying changed a balance");
    checkpoint(&env, &model, "replay").await?;
    Ok(())
}

fn check_engine(engine: Engine) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // PROPTEST_CASES overrides the count for a longer soak.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(CASES);
    // A fixed seed: the coverage asserted below is reached by these cases on every run (a
    // random seed with few cases could miss it by chance); PROPTEST_CASES explores further.
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            // Each case is a database; a failure shrinks for a bounded time.
            max_shrink_iters: 200,
            failure_persistence: None,
            ..Config::default()
        },
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let coverage = std::sync::Mutex::new(Coverage::default());
    let result = runner.run(&scenario(), |scenario| {
        let mut case = Coverage::default();
        let result = runtime.block_on(run_case(engine, scenario, &mut case));
        coverage.lock().expect("coverage").merge(&case);
        result
    });
    if let Err(error) = result {
        panic!("{engine:?}: {error}");
    }
    // The generator reached what the properties are about (with at least the default cases).
    let total = *coverage.lock().expect("coverage");
    println!("{engine:?}: {total:?}");
    if cases < CASES {
        return;
    }
    assert!(total.created > 0 && total.refused > 0, "{total:?}");
    assert!(total.replayed > 0 && total.already_settled > 0, "{total:?}");
    assert!(
        total.concurrent_pairs > 0 && total.settlement_races > 0,
        "{total:?}"
    );
}

#[test]
fn sqlite_random_billing_sequences_balance() {
    check_engine(Engine::Sqlite);
}

#[test]
fn postgres_random_billing_sequences_balance() {
    // Skips loudly without GP4U_TEST_DATABASE_URL; fails in CI, where it must run.
    if postgres_admin_url("postgres_random_billing_sequences_balance").is_none() {
        return;
    }
    check_engine(Engine::Postgres);
}

// ---------------------------------------------------------------------------------------------
// The refusal boundary, exactly

/// A hold of exactly the available credit is accepted; one micro more is refused and changes
/// nothing.
async fn hold_boundary_is_exact(engine: Engine) {
    let Some(db) = TestDatabase::create(engine, "hold_boundary_is_exact").await else {
        return;
    };
    let store = db.store().await.unwrap();
    let scenario = Scenario {
        customers: 1,
        fee_bp: DEFAULT_FEE_BP,
        student_bp: DEFAULT_STUDENT_BP,
        top_ups: vec![],
        jobs: vec![
            JobSpec {
                customer: 0,
                provider: 0,
                price_micros: 3_100_000,
                expected_micro_hours: 4_000_000,
                running_permille: 1_000,
                outcome: Outcome::Completed,
                settlements: 1,
                race: false,
                resubmit: false,
            };
            2
        ],
        order: vec![],
        concurrent: vec![],
    };
    store
        .create_user(&new_user(customer_id(0), Role::Customer, false), NOW)
        .await
        .unwrap();
    let jobs = [build_job(&scenario, 0), build_job(&scenario, 1)];
    let hold = jobs[0].hold;
    // 3.10 × 4 h = 12.40, held 13.64.
    assert_eq!(hold, Money::from_micros(13_640_000));
    store
        .add_credit(
            &customer_id(0),
            Money::from_micros(hold.micros() - 1),
            "top_up:a",
            NOW,
        )
        .await
        .unwrap();
    let before = store.balance(&customer_id(0)).await.unwrap();
    let error = store
        .create_job(&jobs[0].new_job, IDEMPOTENCY_TTL_MS, NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::InsufficientFunds { .. }),
        "{error}"
    );
    assert_eq!(store.balance(&customer_id(0)).await.unwrap(), before);
    assert!(
        store
            .get_job(&jobs[0].new_job.record.id)
            .await
            .unwrap()
            .is_none()
    );
    store
        .add_credit(&customer_id(0), Money::from_micros(1), "top_up:b", NOW)
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_job(&jobs[0].new_job, IDEMPOTENCY_TTL_MS, NOW)
            .await
            .unwrap(),
        CreateJobOutcome::Created(_)
    ));
    let balance = store.balance(&customer_id(0)).await.unwrap();
    assert_eq!((balance.available, balance.held), (Money::ZERO, hold));
    // Nothing left for a second job.
    assert!(matches!(
        store
            .create_job(&jobs[1].new_job, IDEMPOTENCY_TTL_MS, NOW)
            .await,
        Err(StoreError::InsufficientFunds { .. })
    ));
    assert_eq!(store.balance(&customer_id(0)).await.unwrap(), balance);
    assert!(store.audit_balances().await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Crossed transfers at once (two customers renting to each other)

/// Two transactions moving money between the same two users in opposite directions, at the
/// same time, both succeed (regression: on PostgreSQL each locked its debit row first, so the
/// pair deadlocked and one was aborted after a second).
async fn crossed_transfers_at_once_both_post(engine: Engine) {
    let Some(db) = TestDatabase::create(engine, "crossed_transfers_at_once_both_post").await else {
        return;
    };
    let store = db.store().await.unwrap();
    let (x, y) = (customer_id(0), customer_id(1));
    for user in [&x, &y] {
        store
            .create_user(&new_user(user.clone(), Role::Customer, false), NOW)
            .await
            .unwrap();
        store
            .add_credit(
                user,
                Money::from_micros(1_000_000),
                &format!("top_up:{user}"),
                NOW,
            )
            .await
            .unwrap();
    }
    let transfer = |n: usize, from: &UserId, to: &UserId| NewTransfer {
        id: format!("cross:{n}:{from}"),
        debit: format!("user:{from}:available"),
        credit: format!("user:{to}:available"),
        amount: Money::from_micros(1),
        kind: "test".into(),
        job_id: None,
    };
    for n in 0..200 {
        let (one, other) = (transfer(n, &x, &y), transfer(n, &y, &x));
        let (first, second) = tokio::join!(
            store.post_transfers(std::slice::from_ref(&one), NOW),
            store.post_transfers(std::slice::from_ref(&other), NOW),
        );
        assert_eq!(first.unwrap(), 1, "round {n}");
        assert_eq!(second.unwrap(), 1, "round {n}");
    }
    for user in [&x, &y] {
        assert_eq!(
            store.balance(user).await.unwrap().available,
            Money::from_micros(1_000_000)
        );
    }
    assert!(store.audit_balances().await.unwrap().is_empty());
}

mod sqlite {
    #[tokio::test]
    async fn hold_boundary_is_exact() {
        super::hold_boundary_is_exact(super::Engine::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crossed_transfers_at_once_both_post() {
        super::crossed_transfers_at_once_both_post(super::Engine::Sqlite).await;
    }
}

mod postgres {
    #[tokio::test]
    async fn hold_boundary_is_exact() {
        super::hold_boundary_is_exact(super::Engine::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crossed_transfers_at_once_both_post() {
        super::crossed_transfers_at_once_both_post(super::Engine::Postgres).await;
    }
}
