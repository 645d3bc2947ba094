//! Property tests of double-entry billing (stage 7): holds and settlements posted into a
//! simulated id-keyed ledger, in any order and any number of times, conserve money, leave the
//! hold empty, never overdraw an account, and produce settlements that pass `check` — and
//! fail it when any figure is off by one micro.

use std::collections::BTreeMap;

use gp4u_core::billing::{
    Account, Outcome, Settlement, SettlementInput, Transfer, balances, conserved, hold_transfer,
    settle, top_up_transfer,
};
use gp4u_core::ids::{JobId, UserId};
use gp4u_core::money::{Hours, Money};
use proptest::prelude::*;

/// A store with a unique key on the transfer id: posting an id it already has is ignored.
#[derive(Default)]
struct Ledger {
    by_id: BTreeMap<String, Transfer>,
}

impl Ledger {
    fn post(&mut self, transfer: &Transfer) {
        self.by_id
            .entry(transfer.id.clone())
            .or_insert_with(|| transfer.clone());
    }

    fn balances(&self) -> BTreeMap<Account, i128> {
        balances(self.by_id.values())
    }
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Completed),
        Just(Outcome::FailedCustomerFault),
        Just(Outcome::FailedProviderFault),
        Just(Outcome::NeverRan),
    ]
}

fn settlement_input() -> impl Strategy<Value = SettlementInput> {
    (
        // Price per hour: up to 1 000 units, or anything at all now and then.
        prop_oneof![4 => 0_i64..=1_000_000_000, 1 => 0_i64..=i64::MAX],
        // Running time: up to 100 hours, or anything now and then.
        prop_oneof![4 => 0_i64..=360_000_000, 1 => 0_i64..=i64::MAX],
        // Held: up to a million units.
        prop_oneof![4 => 0_i64..=1_000_000_000_000, 1 => 0_i64..=100],
        0_u32..=10_000,
        0_u32..=10_000,
        any::<bool>(),
        outcome(),
        any::<bool>(),
    )
        .prop_map(
            |(price, running_ms, held, fee_bp, student_bp, university, outcome, self_rental)| {
                let customer = UserId::parse("usr_customer").expect("valid id");
                let provider = if self_rental {
                    customer.clone()
                } else {
                    UserId::parse("usr_provider").expect("valid id")
                };
                SettlementInput {
                    job_id: JobId::parse("job_prop").expect("valid id"),
                    customer_id: customer,
                    provider_id: provider,
                    provider_is_university: university,
                    price_per_hour: Money::from_micros(price),
                    running_ms,
                    held: Money::from_micros(held),
                    outcome,
                    fee_bp,
                    student_bp,
                }
            },
        )
}

/// The full life of a job's money: a top-up of at least the hold, the hold, the settlement.
fn lifecycle(input: &SettlementInput, extra_credit: i64) -> (Vec<Transfer>, Settlement) {
    let settlement = settle(input).expect("valid inputs settle");
    let top_up = input.held.micros() + extra_credit;
    let mut transfers = Vec::new();
    if top_up > 0 {
        transfers.push(
            top_up_transfer("pay_1", &input.customer_id, Money::from_micros(top_up))
                .expect("positive top-up"),
        );
    }
    if let Some(hold) =
        hold_transfer(&input.job_id, &input.customer_id, input.held).expect("valid hold")
    {
        transfers.push(hold);
    }
    transfers.extend(settlement.transfers.iter().cloned());
    (transfers, settlement)
}

/// Every derived figure, moved by `delta` micros, one at a time.
fn mutations(settlement: &Settlement, delta: i64) -> Vec<(String, Settlement)> {
    let bump = |money: Money| Money::from_micros(money.micros().saturating_add(delta));
    let mut mutated = Vec::new();
    let mut push = |name: &str, change: &dyn Fn(&mut Settlement)| {
        let mut copy = settlement.clone();
        change(&mut copy);
        mutated.push((name.to_owned(), copy));
    };
    push("gpu_hours", &|s| {
        s.gpu_hours = Hours::from_micro_hours(s.gpu_hours.micro_hours().saturating_add(delta));
    });
    push("customer_charged", &|s| {
        s.customer_charged = bump(s.customer_charged)
    });
    push("platform_fee", &|s| s.platform_fee = bump(s.platform_fee));
    push("provider_earnings", &|s| {
        s.provider_earnings = bump(s.provider_earnings)
    });
    push("student_program", &|s| {
        s.student_program = bump(s.student_program)
    });
    push("refunded", &|s| s.refunded = bump(s.refunded));
    push("held", &|s| s.input.held = bump(s.input.held));
    for index in 0..settlement.transfers.len() {
        push(&format!("transfers[{index}].amount"), &|s| {
            s.transfers[index].amount = bump(s.transfers[index].amount);
        });
    }
    mutated
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The arithmetic: the charge never exceeds the hold and splits exactly.
    #[test]
    fn settlement_arithmetic_holds(input in settlement_input()) {
        let s = settle(&input).expect("valid inputs settle");
        prop_assert!(s.customer_charged <= input.held);
        prop_assert!(!s.customer_charged.is_negative());
        prop_assert!(!s.platform_fee.is_negative());
        prop_assert!(!s.provider_earnings.is_negative());
        prop_assert!(!s.student_program.is_negative());
        prop_assert!(!s.refunded.is_negative());
        prop_assert_eq!(
            s.platform_fee.micros() + s.provider_earnings.micros() + s.student_program.micros(),
            s.customer_charged.micros()
        );
        prop_assert_eq!(s.customer_charged.micros() + s.refunded.micros(), input.held.micros());
        if !input.outcome.is_billable() {
            prop_assert_eq!(s.customer_charged, Money::ZERO);
        }
        if !input.provider_is_university {
            prop_assert_eq!(s.student_program, Money::ZERO);
        }
        for transfer in &s.transfers {
            prop_assert!(transfer.validate().is_ok());
            prop_assert!(transfer.id.starts_with("job:job_prop:"));
        }
        prop_assert!(s.check().is_ok(), "{:?}", s.check());
    }

    /// `check` catches any derived figure off by one micro, either way.
    #[test]
    fn check_fails_when_any_figure_is_off_by_one(input in settlement_input()) {
        let s = settle(&input).expect("valid inputs settle");
        for delta in [1, -1] {
            for (name, mutated) in mutations(&s, delta) {
                prop_assert!(mutated.check().is_err(), "{} {:+} passed check", name, delta);
            }
        }
    }

    /// Posted in order (with retries re-posting earlier transfers anywhere), no account but
    /// `external` ever goes negative, and the end state is the expected one.
    #[test]
    fn in_order_posting_never_overdraws(
        input in settlement_input(),
        extra_credit in 0_i64..=1_000_000,
        retries in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..8),
    ) {
        let (transfers, settlement) = lifecycle(&input, extra_credit);
        // Each retry re-posts an already-posted transfer right after a later one.
        let mut sequence: Vec<&Transfer> = Vec::new();
        for (position, transfer) in transfers.iter().enumerate() {
            sequence.push(transfer);
            for (after, which) in &retries {
                if after.index(transfers.len()) == position {
                    sequence.push(&transfers[which.index(position + 1)]);
                }
            }
        }
        let mut ledger = Ledger::default();
        for transfer in sequence {
            ledger.post(transfer);
            for (account, balance) in ledger.balances() {
                prop_assert!(
                    account.is_external() || balance >= 0,
                    "{} went to {} after posting {}", account, balance, transfer.id
                );
            }
            prop_assert!(conserved(ledger.by_id.values()));
        }

        let end = ledger.balances();
        let balance = |account: &Account| end.get(account).copied().unwrap_or(0);
        let customer_held = Account::held(&input.customer_id);
        prop_assert_eq!(balance(&customer_held), 0);
        prop_assert_eq!(end.values().sum::<i128>(), 0);
        let top_up = i128::from(input.held.micros() + extra_credit);
        prop_assert_eq!(balance(&Account::external()), -top_up);
        prop_assert_eq!(balance(&Account::platform_fees()), i128::from(settlement.platform_fee.micros()));
        prop_assert_eq!(
            balance(&Account::student_program()),
            i128::from(settlement.student_program.micros())
        );
        let customer_available = balance(&Account::available(&input.customer_id));
        if input.customer_id == input.provider_id {
            prop_assert_eq!(
                customer_available,
                top_up - i128::from(settlement.customer_charged.micros())
                    + i128::from(settlement.provider_earnings.micros())
            );
        } else {
            prop_assert_eq!(
                customer_available,
                top_up - i128::from(settlement.customer_charged.micros())
            );
            prop_assert_eq!(
                balance(&Account::available(&input.provider_id)),
                i128::from(settlement.provider_earnings.micros())
            );
        }
    }

    /// Posting the same transfers in any order, any number of times, ends in the same balances
    /// as posting each once in order, and always conserves money.
    #[test]
    fn any_order_and_duplication_gives_the_same_balances(
        input in settlement_input(),
        extra_credit in 0_i64..=1_000_000,
        keys in prop::collection::vec(any::<u64>(), 0..24),
    ) {
        let (transfers, _) = lifecycle(&input, extra_credit);
        let mut once = Ledger::default();
        for transfer in &transfers {
            once.post(transfer);
        }

        // Every transfer at least once, plus one copy of a transfer per extra key; then the
        // whole list is sorted by random keys, which is an arbitrary permutation.
        let mut posted: Vec<(u64, &Transfer)> = transfers
            .iter()
            .zip(keys.iter().copied().chain(std::iter::repeat(0)))
            .map(|(transfer, key)| (key, transfer))
            .collect();
        if !transfers.is_empty() {
            for key in &keys {
                let index = usize::try_from(key % transfers.len() as u64).expect("small");
                posted.push((key.rotate_left(17), &transfers[index]));
            }
        }
        posted.sort_by_key(|(key, transfer)| (*key, transfer.id.clone()));

        let mut shuffled = Ledger::default();
        for (_, transfer) in &posted {
            shuffled.post(transfer);
            prop_assert_eq!(shuffled.balances().values().sum::<i128>(), 0);
        }
        prop_assert_eq!(shuffled.balances(), once.balances());
        prop_assert_eq!(shuffled.by_id.len(), transfers.len());

        // Re-settling produces the very same transfers, so posting them again is a no-op.
        let again = settle(&input).expect("valid inputs settle");
        for transfer in &again.transfers {
            shuffled.post(transfer);
        }
        prop_assert_eq!(shuffled.balances(), once.balances());
    }

    /// Every single transfer moves money without creating any.
    #[test]
    fn every_transfer_balances(input in settlement_input(), extra_credit in 0_i64..=1_000_000) {
        let (transfers, _) = lifecycle(&input, extra_credit);
        for transfer in &transfers {
            let one = balances(std::slice::from_ref(transfer));
            prop_assert_eq!(one.values().sum::<i128>(), 0);
            prop_assert_eq!(one[&transfer.credit], i128::from(transfer.amount.micros()));
            prop_assert_eq!(one[&transfer.debit], -i128::from(transfer.amount.micros()));
        }
        prop_assert!(conserved(&transfers));
    }
}
