//! Property tests of double-entry billing (stage 7) over many jobs at once: several jobs of
//! one or two customers, each customer's jobs sharing one credit balance, top-ups arriving at
//! random moments, every job's hold and settlement transfers interleaved arbitrarily with the
//! other jobs' (a job's hold always before its own settlement), and retries — a re-posted
//! transfer, a re-computed hold, a whole settlement re-run — anywhere.
//!
//! The ledger here is a simulation of the store: id-keyed (a transfer whose id is already
//! posted is ignored, and the same id with other contents is a conflict) and refusing any
//! transfer that would take a non-`external` account below zero — which is how a hold larger
//! than the customer's available credit is refused (`InsufficientFunds`). A job whose hold is
//! refused is never run nor settled.
//!
//! After every posting: each transfer validates and balances, money is conserved, no account
//! but `external` is negative, and each customer's held balance is exactly what their open
//! jobs still hold (no job draws more than its own hold out of the shared held account). At
//! the end: nothing is held, every balance is the sum of what the settlements say, and
//! posting everything again changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use gp4u_core::billing::{
    Account, BillingError, Outcome, Settlement, SettlementInput, Transfer, TransferKind, balances,
    conserved, hold_amount, hold_transfer, settle, top_up_transfer,
};
use gp4u_core::ids::{JobId, UserId};
use gp4u_core::money::{Hours, Money};
use gp4u_core::pricing::job_cost;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

const MAX_JOBS: usize = 8;
const MAX_TOP_UPS: usize = 6;
/// Slots of the order: a hold and at most four settlement transfers per job.
const SLOTS_PER_JOB: usize = 5;

const CUSTOMERS: [&str; 2] = ["usr_c0", "usr_c1"];
/// Who may provide a job's GPU: two dedicated providers, or one of the customers (a customer
/// renting out their own GPU: their earnings land in the same available balance their holds
/// come out of, so one job's earnings can fund another job's hold).
const PROVIDERS: [&str; 4] = ["usr_p0", "usr_p1", "usr_c0", "usr_c1"];

fn user(id: &str) -> UserId {
    UserId::parse(id).expect("valid user id")
}

#[derive(Clone, Debug)]
struct JobSpec {
    /// Index into `CUSTOMERS`, reduced modulo the scenario's number of customers.
    customer: usize,
    /// Index into `PROVIDERS` (a customer index past the scenario's customers wraps).
    provider: usize,
    price_micros: i64,
    expected_micro_hours: i64,
    running_ms: i64,
    outcome: Outcome,
}

#[derive(Clone, Debug)]
struct Scenario {
    customers: usize,
    /// Per entry of `PROVIDERS`.
    university: [bool; 4],
    fee_bp: u32,
    student_bp: u32,
    /// (customer index, amount in micros).
    top_ups: Vec<(usize, i64)>,
    jobs: Vec<JobSpec>,
    /// Random sort keys: top-up `k` uses `order[k]`, job `j`'s slot `s` uses
    /// `order[MAX_TOP_UPS + j * SLOTS_PER_JOB + s]`.
    order: Vec<u64>,
    /// After the operation at `position`, do `retry`.
    retries: Vec<(Index, Retry)>,
}

#[derive(Clone, Debug)]
enum Retry {
    /// Re-post one transfer the ledger already holds.
    Repost(Index),
    /// Recompute an accepted job's hold (`hold_transfer` again) and post it.
    Rehold(Index),
    /// Re-run an accepted job's whole settlement (`settle` again) and post every transfer.
    Resettle(Index),
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
        prop_oneof![4 => 0_usize..2, 1 => 2_usize..4],
        // Up to 50 units an hour; free now and then.
        prop_oneof![1 => Just(0_i64), 8 => 1_i64..=50_000_000],
        // Up to 10 hours declared; zero now and then.
        prop_oneof![1 => Just(0_i64), 8 => 1_i64..=10_000_000],
        // Running time as a fraction of the declared duration, up to 1.3× (past the 1.1×
        // the hold covers, so the cap at the hold is exercised), or anything up to a day.
        prop_oneof![4 => (0_i64..=1_300).prop_map(Ok), 1 => (0_i64..=86_400_000).prop_map(Err)],
        outcome(),
    )
        .prop_map(
            |(customer, provider, price_micros, expected_micro_hours, running, outcome)| {
                // 1 micro-hour is 3.6 ms.
                let running_ms = match running {
                    Ok(permille) => expected_micro_hours * 36 / 10 * permille / 1_000,
                    Err(ms) => ms,
                };
                JobSpec {
                    customer,
                    provider,
                    price_micros,
                    expected_micro_hours,
                    running_ms,
                    outcome,
                }
            },
        )
}

fn basis_points(default: u32) -> impl Strategy<Value = u32> {
    prop_oneof![3 => Just(default), 1 => 0_u32..=10_000]
}

fn retry() -> impl Strategy<Value = Retry> {
    prop_oneof![
        2 => any::<Index>().prop_map(Retry::Repost),
        1 => any::<Index>().prop_map(Retry::Rehold),
        1 => any::<Index>().prop_map(Retry::Resettle),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        1_usize..=2,
        any::<[bool; 4]>(),
        basis_points(gp4u_core::billing::DEFAULT_FEE_BP),
        basis_points(gp4u_core::billing::DEFAULT_STUDENT_BP),
        // Up to 800 units each, against holds of up to 550: most holds are accepted, and
        // those placed before enough credit arrives are refused.
        prop::collection::vec((0_usize..2, 1_i64..=800_000_000), 1..=MAX_TOP_UPS),
        prop::collection::vec(job_spec(), 2..=MAX_JOBS),
        prop::collection::vec(any::<u64>(), MAX_TOP_UPS + MAX_JOBS * SLOTS_PER_JOB),
        prop::collection::vec((any::<Index>(), retry()), 0..12),
    )
        .prop_map(
            |(customers, university, fee_bp, student_bp, top_ups, jobs, order, retries)| Scenario {
                customers,
                university,
                fee_bp,
                student_bp,
                top_ups,
                jobs,
                order,
                retries,
            },
        )
}

/// The billing functions under test, replaceable so that `mutants_are_caught` can check that
/// these properties fail when billing is wrong.
struct Billing {
    hold: fn(&JobId, &UserId, Money) -> Result<Option<Transfer>, BillingError>,
    settle: fn(&SettlementInput) -> Result<Settlement, BillingError>,
    /// Whether to also run `Settlement::check` on each settlement. Off for the mutants, so
    /// that what catches them is the ledger's properties, not `check` recomputing the figures.
    check: bool,
}

const REAL: Billing = Billing {
    hold: hold_transfer,
    settle,
    check: true,
};

/// One job, priced and settled up front (settlement depends only on the job's inputs).
struct Job {
    customer: UserId,
    provider: UserId,
    hold_amount: Money,
    hold: Option<Transfer>,
    input: SettlementInput,
    settlement: Settlement,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    TopUp(usize),
    Hold(usize),
    /// Job `j`'s settlement transfer `i`.
    Settle(usize, usize),
}

enum Posted {
    New,
    Duplicate,
    Refused,
}

/// An id-keyed ledger that refuses to overdraw any account but `external`.
#[derive(Default)]
struct Ledger {
    by_id: BTreeMap<String, Transfer>,
    /// Kept up to date posting by posting, and compared with `balances` recomputed from the
    /// journal after every posting.
    running: BTreeMap<Account, i128>,
}

impl Ledger {
    fn balance(&self, account: &Account) -> i128 {
        self.running.get(account).copied().unwrap_or(0)
    }

    fn post(&mut self, transfer: &Transfer) -> Result<Posted, TestCaseError> {
        if let Some(existing) = self.by_id.get(&transfer.id) {
            prop_assert_eq!(
                existing,
                transfer,
                "transfer id {} re-posted with other contents",
                &transfer.id
            );
            return Ok(Posted::Duplicate);
        }
        let amount = i128::from(transfer.amount.micros());
        if !transfer.debit.is_external() && self.balance(&transfer.debit) < amount {
            return Ok(Posted::Refused);
        }
        *self.running.entry(transfer.debit.clone()).or_default() -= amount;
        *self.running.entry(transfer.credit.clone()).or_default() += amount;
        self.by_id.insert(transfer.id.clone(), transfer.clone());
        Ok(Posted::New)
    }
}

/// What a run went through, so the generator can be checked to reach the interesting cases.
#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    accepted_holds: usize,
    refused_holds: usize,
    duplicates: usize,
    /// A hold re-posted after its job's settlement had been fully posted.
    hold_retried_after_settlement: usize,
    /// A job charged its whole hold though it cost more.
    capped: usize,
    /// A customer also providing one of the accepted jobs.
    customer_earned: usize,
    /// Jobs of one customer open at the same time.
    overlapping_holds: usize,
}

fn prepare(scenario: &Scenario, billing: &Billing) -> Result<Vec<Job>, TestCaseError> {
    let mut jobs = Vec::new();
    for (index, spec) in scenario.jobs.iter().enumerate() {
        let customer = user(CUSTOMERS[spec.customer % scenario.customers]);
        let provider_index = if spec.provider >= 2 {
            2 + (spec.provider - 2) % scenario.customers
        } else {
            spec.provider
        };
        let provider = user(PROVIDERS[provider_index]);
        let job_id = JobId::parse(&format!("job_j{index}")).expect("valid job id");
        let price = Money::from_micros(spec.price_micros);
        let estimate = job_cost(price, Hours::from_micro_hours(spec.expected_micro_hours));
        let amount = hold_amount(estimate);
        prop_assert!(
            amount >= estimate,
            "hold {} below estimate {}",
            amount,
            estimate
        );
        let hold = (billing.hold)(&job_id, &customer, amount)
            .map_err(|error| TestCaseError::fail(format!("hold refused: {error}")))?;
        let input = SettlementInput {
            job_id,
            customer_id: customer.clone(),
            provider_id: provider.clone(),
            provider_is_university: scenario.university[provider_index],
            price_per_hour: price,
            running_ms: spec.running_ms,
            held: amount,
            outcome: spec.outcome,
            fee_bp: scenario.fee_bp,
            student_bp: scenario.student_bp,
        };
        let settlement = (billing.settle)(&input)
            .map_err(|error| TestCaseError::fail(format!("settle refused: {error}")))?;
        jobs.push(Job {
            customer,
            provider,
            hold_amount: amount,
            hold,
            input,
            settlement,
        });
    }
    Ok(jobs)
}

/// The operations in a random order, each job's hold before all its settlement transfers: a
/// hold sits at its own random key, and its settlement transfers at random keys after it.
fn interleave(scenario: &Scenario, jobs: &[Job]) -> Vec<Op> {
    let mut keyed: Vec<(u64, Op)> = Vec::new();
    for index in 0..scenario.top_ups.len() {
        keyed.push((scenario.order[index], Op::TopUp(index)));
    }
    for (index, job) in jobs.iter().enumerate() {
        let base = MAX_TOP_UPS + index * SLOTS_PER_JOB;
        let hold = scenario.order[base];
        keyed.push((hold, Op::Hold(index)));
        for transfer in 0..job.settlement.transfers.len() {
            let after = scenario.order[base + 1 + transfer] % (u64::MAX - hold).max(1);
            keyed.push((hold + after, Op::Settle(index, transfer)));
        }
    }
    // On equal keys `Op::Hold` sorts before `Op::Settle`.
    keyed.sort();
    keyed.into_iter().map(|(_, op)| op).collect()
}

/// A run's state: the ledger and what the test knows about each job.
struct State {
    ledger: Ledger,
    stats: Stats,
    /// Per job: `None` until its hold is tried, then whether it was accepted.
    accepted: Vec<Option<bool>>,
    /// Per job: how much of its settlement has been posted out of the held account.
    drawn: Vec<i128>,
    /// Per job: how many of its settlement transfers have been posted.
    settled_transfers: Vec<usize>,
}

impl State {
    /// Posts one transfer on behalf of `job` (`None` for a top-up) and checks every invariant.
    fn post(
        &mut self,
        scenario: &Scenario,
        jobs: &[Job],
        transfer: &Transfer,
        job: Option<usize>,
    ) -> Result<(), TestCaseError> {
        // Every transfer balances on its own: +amount to one account, −amount to another.
        prop_assert!(transfer.validate().is_ok(), "{:?}", transfer.validate());
        let alone = balances(std::slice::from_ref(transfer));
        prop_assert_eq!(alone.values().sum::<i128>(), 0);
        prop_assert_eq!(alone.len(), 2);

        let before = self.ledger.running.clone();
        let count = self.ledger.by_id.len();
        let customer_available = job.map(|job| {
            self.ledger
                .balance(&Account::available(&jobs[job].customer))
        });
        match self.ledger.post(transfer)? {
            Posted::Refused => {
                // Only a hold is ever refused, and only for want of available credit. A
                // refused hold changes nothing at all.
                prop_assert_eq!(
                    transfer.kind,
                    TransferKind::Hold,
                    "{} refused",
                    &transfer.id
                );
                let job = job.expect("a hold belongs to a job");
                prop_assert!(
                    customer_available.expect("job") < i128::from(jobs[job].hold_amount.micros())
                );
                prop_assert_eq!(&self.ledger.running, &before, "a refused hold moved money");
                prop_assert_eq!(self.ledger.by_id.len(), count);
                prop_assert_eq!(self.accepted[job], None, "hold of job {} tried twice", job);
                self.accepted[job] = Some(false);
                self.stats.refused_holds += 1;
            }
            Posted::Duplicate => {
                prop_assert_eq!(&self.ledger.running, &before, "a retry moved money");
                prop_assert_eq!(self.ledger.by_id.len(), count);
                self.stats.duplicates += 1;
            }
            Posted::New => {
                if let Some(job) = job {
                    let customer = &jobs[job].customer;
                    if transfer.kind == TransferKind::Hold {
                        prop_assert_eq!(self.accepted[job], None);
                        self.accepted[job] = Some(true);
                        self.stats.accepted_holds += 1;
                        if self.ledger.balance(&Account::held(customer))
                            > i128::from(transfer.amount.micros())
                        {
                            self.stats.overlapping_holds += 1;
                        }
                    } else {
                        prop_assert_eq!(&transfer.debit, &Account::held(customer));
                        prop_assert_eq!(self.accepted[job], Some(true), "settled before its hold");
                        self.drawn[job] += i128::from(transfer.amount.micros());
                        self.settled_transfers[job] += 1;
                    }
                }
            }
        }

        // Money is conserved and the running balances agree with the journal.
        prop_assert!(conserved(self.ledger.by_id.values()));
        let journal = balances(self.ledger.by_id.values());
        prop_assert_eq!(nonzero(&journal), nonzero(&self.ledger.running));
        prop_assert_eq!(journal.values().sum::<i128>(), 0);
        for (account, balance) in &journal {
            prop_assert!(
                account.is_external() || *balance >= 0,
                "{} went to {} after posting {}",
                account,
                balance,
                &transfer.id
            );
        }
        // Each customer's held balance is exactly what their accepted jobs still hold, and no
        // job has drawn more than its own hold out of it.
        for customer in &CUSTOMERS[..scenario.customers] {
            let customer = user(customer);
            let mut open = 0_i128;
            for (index, job) in jobs.iter().enumerate() {
                let hold = i128::from(job.hold_amount.micros());
                prop_assert!(
                    self.drawn[index] <= hold,
                    "job {} drew past its hold",
                    index
                );
                if job.customer == customer && self.accepted[index] == Some(true) {
                    open += hold - self.drawn[index];
                }
            }
            prop_assert!(self.ledger.balance(&Account::available(&customer)) >= 0);
            prop_assert!(self.ledger.balance(&Account::held(&customer)) >= 0);
            prop_assert_eq!(
                self.ledger.balance(&Account::held(&customer)),
                open,
                "held of {}",
                customer
            );
        }
        Ok(())
    }

    fn accepted_jobs(&self) -> Vec<usize> {
        (0..self.accepted.len())
            .filter(|job| self.accepted[*job] == Some(true))
            .collect()
    }
}

fn nonzero(map: &BTreeMap<Account, i128>) -> BTreeMap<Account, i128> {
    map.iter()
        .filter(|(_, balance)| **balance != 0)
        .map(|(account, balance)| (account.clone(), *balance))
        .collect()
}

fn job_of(jobs: &[Job], transfer: &Transfer) -> Option<usize> {
    jobs.iter()
        .position(|job| transfer.job_id.as_ref() == Some(&job.input.job_id))
}

fn run(scenario: &Scenario, billing: &Billing) -> Result<Stats, TestCaseError> {
    let jobs = prepare(scenario, billing)?;
    let ops = interleave(scenario, &jobs);
    let top_ups: Vec<Transfer> = scenario
        .top_ups
        .iter()
        .enumerate()
        .map(|(index, (customer, amount))| {
            top_up_transfer(
                &format!("pay_{index}"),
                &user(CUSTOMERS[customer % scenario.customers]),
                Money::from_micros(*amount),
            )
            .expect("valid top-up")
        })
        .collect();
    let mut state = State {
        ledger: Ledger::default(),
        stats: Stats::default(),
        accepted: vec![None; jobs.len()],
        drawn: vec![0; jobs.len()],
        settled_transfers: vec![0; jobs.len()],
    };

    for (position, op) in ops.iter().enumerate() {
        match *op {
            Op::TopUp(index) => state.post(scenario, &jobs, &top_ups[index], None)?,
            Op::Hold(job) => match &jobs[job].hold {
                Some(hold) => state.post(scenario, &jobs, hold, Some(job))?,
                // A free job holds nothing and is always accepted.
                None => {
                    prop_assert_eq!(jobs[job].hold_amount, Money::ZERO);
                    state.accepted[job] = Some(true);
                }
            },
            Op::Settle(job, index) => {
                // A job whose hold was refused is never run, so never settled.
                if state.accepted[job] == Some(true) {
                    let transfer = &jobs[job].settlement.transfers[index];
                    state.post(scenario, &jobs, transfer, Some(job))?;
                }
            }
        }
        for (after, retry) in &scenario.retries {
            if after.index(ops.len()) != position {
                continue;
            }
            let accepted_jobs = state.accepted_jobs();
            match retry {
                Retry::Repost(which) => {
                    let posted: Vec<Transfer> = state.ledger.by_id.values().cloned().collect();
                    if !posted.is_empty() {
                        let transfer = &posted[which.index(posted.len())];
                        state.post(scenario, &jobs, transfer, job_of(&jobs, transfer))?;
                    }
                }
                Retry::Rehold(which) if !accepted_jobs.is_empty() => {
                    let job = accepted_jobs[which.index(accepted_jobs.len())];
                    let spec = &jobs[job];
                    let again =
                        (billing.hold)(&spec.input.job_id, &spec.customer, spec.hold_amount)
                            .expect("valid hold");
                    prop_assert_eq!(&again, &spec.hold, "hold_transfer is not deterministic");
                    if let Some(hold) = &again {
                        if state.settled_transfers[job] == spec.settlement.transfers.len() {
                            state.stats.hold_retried_after_settlement += 1;
                        }
                        state.post(scenario, &jobs, hold, Some(job))?;
                    }
                }
                Retry::Resettle(which) if !accepted_jobs.is_empty() => {
                    let job = accepted_jobs[which.index(accepted_jobs.len())];
                    let again = (billing.settle)(&jobs[job].input).expect("valid settlement");
                    prop_assert_eq!(&again, &jobs[job].settlement, "settle is not deterministic");
                    for transfer in &again.transfers {
                        state.post(scenario, &jobs, transfer, Some(job))?;
                    }
                }
                Retry::Rehold(_) | Retry::Resettle(_) => {}
            }
        }
    }

    // Every job's hold was tried and every accepted job is fully settled: nothing is held,
    // and every balance is what the top-ups and the settlements say.
    let end = state.ledger.running.clone();
    let balance = |account: &Account| end.get(account).copied().unwrap_or(0);
    let mut expected: BTreeMap<Account, i128> = BTreeMap::new();
    for (index, transfer) in top_ups.iter().enumerate() {
        prop_assert!(
            state.ledger.by_id.contains_key(&transfer.id),
            "top-up {} lost",
            index
        );
        let amount = i128::from(transfer.amount.micros());
        *expected
            .entry(Account::available(&scenario_user(scenario, index)))
            .or_default() += amount;
        *expected.entry(Account::external()).or_default() -= amount;
    }
    for (index, job) in jobs.iter().enumerate() {
        let s = &job.settlement;
        if billing.check {
            prop_assert!(s.check().is_ok(), "job {}: {:?}", index, s.check());
        }
        prop_assert!(s.customer_charged <= job.hold_amount);
        prop_assert!(state.accepted[index].is_some(), "job {} never tried", index);
        if state.accepted[index] != Some(true) {
            continue;
        }
        prop_assert_eq!(
            state.drawn[index],
            i128::from(job.hold_amount.micros()),
            "job {} left money held",
            index
        );
        *expected
            .entry(Account::available(&job.customer))
            .or_default() -= i128::from(s.customer_charged.micros());
        *expected
            .entry(Account::available(&job.provider))
            .or_default() += i128::from(s.provider_earnings.micros());
        *expected.entry(Account::platform_fees()).or_default() +=
            i128::from(s.platform_fee.micros());
        *expected.entry(Account::student_program()).or_default() +=
            i128::from(s.student_program.micros());
        let cost = job_cost(s.input.price_per_hour, s.gpu_hours);
        if s.input.outcome.is_billable() && cost > job.hold_amount {
            state.stats.capped += 1;
        }
        if s.provider_earnings.micros() > 0 && CUSTOMERS.contains(&job.provider.as_str()) {
            state.stats.customer_earned += 1;
        }
    }
    for customer in &CUSTOMERS[..scenario.customers] {
        prop_assert_eq!(
            balance(&Account::held(&user(customer))),
            0,
            "{} still holds money",
            customer
        );
    }
    prop_assert_eq!(nonzero(&end), nonzero(&expected), "final balances");

    // Posting everything again, in reverse, and re-running every accepted job's hold and
    // settlement, changes no balance.
    let everything: Vec<Transfer> = state.ledger.by_id.values().rev().cloned().collect();
    for transfer in &everything {
        state.post(scenario, &jobs, transfer, job_of(&jobs, transfer))?;
    }
    for index in state.accepted_jobs() {
        let job = &jobs[index];
        let hold =
            (billing.hold)(&job.input.job_id, &job.customer, job.hold_amount).expect("valid hold");
        let settlement = (billing.settle)(&job.input).expect("valid settlement");
        for transfer in hold.iter().chain(settlement.transfers.iter()) {
            state.post(scenario, &jobs, transfer, Some(index))?;
        }
    }
    prop_assert_eq!(&state.ledger.running, &end, "re-posting changed a balance");
    Ok(state.stats)
}

fn scenario_user(scenario: &Scenario, top_up: usize) -> UserId {
    user(CUSTOMERS[scenario.top_ups[top_up].0 % scenario.customers])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn interleaved_jobs_conserve_money_and_never_overdraw(scenario in scenario()) {
        run(&scenario, &REAL)?;
    }
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 0,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    )
}

/// The generator reaches the cases the properties are about: refused and accepted holds,
/// jobs of one customer open together, retries, a hold retried after its settlement, charges
/// capped at the hold, and customers earning from each other.
#[test]
fn scenarios_reach_every_interesting_case() {
    let mut total = Stats::default();
    let mut runner = runner(256);
    for _ in 0..256 {
        let scenario = scenario()
            .new_tree(&mut runner)
            .expect("generate")
            .current();
        let stats = run(&scenario, &REAL).expect("property holds");
        total.accepted_holds += stats.accepted_holds;
        total.refused_holds += stats.refused_holds;
        total.duplicates += stats.duplicates;
        total.hold_retried_after_settlement += stats.hold_retried_after_settlement;
        total.capped += stats.capped;
        total.customer_earned += stats.customer_earned;
        total.overlapping_holds += stats.overlapping_holds;
    }
    println!("{total:?}");
    assert!(total.accepted_holds > 0, "{total:?}");
    assert!(total.refused_holds > 0, "{total:?}");
    assert!(total.duplicates > 0, "{total:?}");
    assert!(total.hold_retried_after_settlement > 0, "{total:?}");
    assert!(total.capped > 0, "{total:?}");
    assert!(total.customer_earned > 0, "{total:?}");
    assert!(total.overlapping_holds > 0, "{total:?}");
}

/// The properties fail when billing is wrong: each mutant of `hold_transfer` or `settle` is
/// caught within a few dozen scenarios.
#[test]
fn mutants_are_caught() {
    fn settle_without_release(input: &SettlementInput) -> Result<Settlement, BillingError> {
        let mut settlement = settle(input)?;
        settlement
            .transfers
            .retain(|transfer| transfer.kind != TransferKind::Release);
        Ok(settlement)
    }
    fn settle_fee_one_micro_more(input: &SettlementInput) -> Result<Settlement, BillingError> {
        let mut settlement = settle(input)?;
        for transfer in &mut settlement.transfers {
            if transfer.kind == TransferKind::Fee {
                transfer.amount = Money::from_micros(transfer.amount.micros() + 1);
            }
        }
        Ok(settlement)
    }
    fn settle_ids_not_per_job(input: &SettlementInput) -> Result<Settlement, BillingError> {
        let mut settlement = settle(input)?;
        for transfer in &mut settlement.transfers {
            transfer.id = transfer.id.replace(input.job_id.as_str(), "job_same");
        }
        Ok(settlement)
    }
    fn hold_ids_not_per_job(
        job: &JobId,
        customer: &UserId,
        amount: Money,
    ) -> Result<Option<Transfer>, BillingError> {
        Ok(hold_transfer(job, customer, amount)?.map(|mut transfer| {
            transfer.id = format!("hold:{customer}");
            transfer
        }))
    }
    fn hold_short(
        job: &JobId,
        customer: &UserId,
        amount: Money,
    ) -> Result<Option<Transfer>, BillingError> {
        hold_transfer(job, customer, Money::from_micros(amount.micros() * 9 / 10))
    }
    let mutants: [(&str, Billing); 5] = [
        (
            "settlement without release",
            Billing {
                hold: hold_transfer,
                settle: settle_without_release,
                check: false,
            },
        ),
        (
            "fee one micro more",
            Billing {
                hold: hold_transfer,
                settle: settle_fee_one_micro_more,
                check: false,
            },
        ),
        (
            "settlement ids not per job",
            Billing {
                hold: hold_transfer,
                settle: settle_ids_not_per_job,
                check: false,
            },
        ),
        (
            "hold ids not per job",
            Billing {
                hold: hold_ids_not_per_job,
                settle,
                check: false,
            },
        ),
        (
            "hold 10 % short",
            Billing {
                hold: hold_short,
                settle,
                check: false,
            },
        ),
    ];
    for (name, billing) in mutants {
        let result = runner(64).run(&scenario(), |scenario| run(&scenario, &billing).map(|_| ()));
        match result {
            Err(error) => println!("mutant {name:?} caught: {error}"),
            Ok(()) => panic!("mutant {name:?} passed every scenario"),
        }
    }
}
