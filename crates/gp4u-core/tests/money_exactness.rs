//! Property tests: pricing and JSON-number conversion agree with an independent exact
//! decimal computation (rust_decimal, rounding half away from zero).

use std::str::FromStr;

use gp4u_core::billing::hold_amount;
use gp4u_core::money::{Hours, Money};
use gp4u_core::pricing::job_cost;
use proptest::prelude::*;
use rust_decimal::{Decimal, RoundingStrategy};

/// Rounds half away from zero to 6 places and returns the value in micro-units.
/// Micro-units of `value`, rounded up (the hold covers at least 1.1 × the estimate).
fn to_micros_ceiling(value: Decimal) -> i64 {
    use rust_decimal::prelude::ToPrimitive;
    (value * Decimal::new(1_000_000, 0))
        .ceil()
        .to_i64()
        .expect("test amounts fit in i64")
}

fn to_micros_half_up(value: Decimal) -> i64 {
    let mut rounded = value.round_dp_with_strategy(6, RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(6);
    i64::try_from(rounded.mantissa()).expect("test amounts fit in i64")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Any price in [0.000001, 100000] and any duration in [0.1, 720] h, at micro resolution.
    #[test]
    fn job_cost_is_exact(
        price_micros in 1_i64..=100_000_000_000,
        duration_micro_hours in 100_000_i64..=720_000_000,
    ) {
        let expected = Decimal::new(price_micros, 6) * Decimal::new(duration_micro_hours, 6);
        let cost = job_cost(
            Money::from_micros(price_micros),
            Hours::from_micro_hours(duration_micro_hours),
        );
        prop_assert_eq!(cost.micros(), to_micros_half_up(expected));
    }

    /// Exact ties (a product ending in 0.5 micro) are rare in uniform draws, so aim at them:
    /// an odd price times an odd multiple of half an hour always lands on one.
    #[test]
    fn job_cost_rounds_ties_away_from_zero(
        half_price_micros in 0_i64..50_000_000_000,
        odd_half_hours in 0_i64..720,
    ) {
        let price_micros = 2 * half_price_micros + 1;
        let duration_micro_hours = 500_000 * (2 * odd_half_hours + 1);
        let expected = Decimal::new(price_micros, 6) * Decimal::new(duration_micro_hours, 6);
        let cost = job_cost(
            Money::from_micros(price_micros),
            Hours::from_micro_hours(duration_micro_hours),
        );
        prop_assert_eq!(cost.micros(), to_micros_half_up(expected));
    }

    #[test]
    fn billing_hold_is_exact(estimate_micros in 0_i64..=1_000_000_000_000_000) {
        let expected = Decimal::new(estimate_micros, 6) * Decimal::new(11, 1);
        let hold = hold_amount(Money::from_micros(estimate_micros));
        prop_assert_eq!(hold.micros(), to_micros_ceiling(expected));
    }

    #[test]
    fn billing_hold_of_exact_costs_is_exact(
        price_micros in 1_i64..=100_000_000_000,
        duration_micro_hours in 100_000_i64..=720_000_000,
    ) {
        let cost = job_cost(
            Money::from_micros(price_micros),
            Hours::from_micro_hours(duration_micro_hours),
        );
        let expected = Decimal::new(cost.micros(), 6) * Decimal::new(11, 1);
        prop_assert_eq!(hold_amount(cost).micros(), to_micros_ceiling(expected));
    }

    /// `from_json_number` equals the shortest representation, parsed exactly, rounded half-up.
    #[test]
    fn from_json_number_matches_decimal(
        value in prop_oneof![
            -1e12_f64..1e12,
            -1e3_f64..1e3,
            -1e-3_f64..1e-3,
            // Values on or near the half-micro, where rounding direction matters.
            (-1_000_000_000_i64..1_000_000_000).prop_map(|k| (k as f64 + 0.5) / 1e6),
            (0_i64..100_000_000).prop_map(|k| k as f64 / 1e7),
        ],
    ) {
        let shortest = format!("{value}");
        let expected = to_micros_half_up(Decimal::from_str(&shortest).unwrap());
        prop_assert_eq!(Money::from_json_number(value).unwrap().micros(), expected);
        prop_assert_eq!(Hours::from_json_number(value).unwrap().micro_hours(), expected);
    }

    /// Display and `display_f64` show cents rounded half away from zero.
    #[test]
    fn display_money_is_cents_half_up(micros in -1_000_000_000_000_i64..1_000_000_000_000) {
        let cents = Decimal::new(micros, 6)
            .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
        let mut shown = cents;
        shown.rescale(2);
        let money = Money::from_micros(micros);
        let expected = if shown.is_zero() { "0.00".to_owned() } else { shown.to_string() };
        prop_assert_eq!(money.to_string(), expected);
        prop_assert_eq!(money.display_f64(), f64::from_str(&shown.to_string()).unwrap());
    }

    #[test]
    fn parse_decimal_round_trips(micros in any::<i64>().prop_filter("MIN has no positive twin", |m| *m != i64::MIN)) {
        let text = Decimal::new(micros, 6).to_string();
        prop_assert_eq!(Money::parse_decimal(&text).unwrap().micros(), micros);
    }
}
