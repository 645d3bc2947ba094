//! Job pricing: cost estimates and billing holds, in exact integer arithmetic.
//!
//! The cost is always computed here, on the server side, from the GPU's listed price and
//! the declared duration (SPEC §3: client-sent cost fields are ignored).

use crate::money::{Hours, MICROS_PER_UNIT, Money};

/// The duration cap, in thousandths: a job may run 1.1 × its declared duration before the
/// agent kills it (`DURATION_EXCEEDED`), so the billing hold covers that much too.
pub const DURATION_CAP_FACTOR_PERMILLE: i64 = 1100;

const PERMILLE: i64 = 1000;

/// `price_per_hour × duration`, exact to the micro-unit, rounded half away from zero.
///
/// micros × micro-hours is at most 2^126 in magnitude, so the product always fits in i128;
/// only the final result can exceed i64, and then it saturates (no realistic price reaches it).
pub fn job_cost(price_per_hour: Money, duration: Hours) -> Money {
    let product = i128::from(price_per_hour.micros()) * i128::from(duration.micro_hours());
    let micros = divide_half_away_from_zero(product, i128::from(MICROS_PER_UNIT));
    Money::from_micros(saturate_to_i64(micros))
}

/// The longest a job may run before it is killed: 1.1 × the declared duration, rounded
/// half-up to the micro-hour.
pub fn duration_cap(expected: Hours) -> Hours {
    let product = i128::from(expected.micro_hours()) * i128::from(DURATION_CAP_FACTOR_PERMILLE);
    let micro_hours = divide_half_away_from_zero(product, i128::from(PERMILLE));
    Hours::from_micro_hours(saturate_to_i64(micro_hours))
}

/// Integer division rounding ties away from zero. `denominator` must be positive.
fn divide_half_away_from_zero(numerator: i128, denominator: i128) -> i128 {
    debug_assert!(denominator > 0, "denominator must be positive");
    let quotient = numerator / denominator;
    let remainder = numerator % denominator;
    if remainder.abs() * 2 >= denominator {
        quotient + numerator.signum()
    } else {
        quotient
    }
}

fn saturate_to_i64(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_example_costs_twelve_forty() {
        // RTX 4090 at 3.10/h for 4 h -> 12.40, as in the seed's response example.
        let price = Money::parse_decimal("3.10").unwrap();
        let cost = job_cost(price, Hours::from_micro_hours(4_000_000));
        assert_eq!(cost, Money::from_micros(12_400_000));
        assert_eq!(cost.to_string(), "12.40");
        assert_eq!(cost.display_f64(), 12.4);
    }

    #[test]
    fn job_cost_rounds_half_up_to_the_micro() {
        // 0.000001/h for 0.5 h = 0.0000005 -> 0.000001.
        assert_eq!(
            job_cost(Money::from_micros(1), Hours::from_micro_hours(500_000)),
            Money::from_micros(1)
        );
        // 0.000001/h for 0.499999 h rounds down to zero.
        assert_eq!(
            job_cost(Money::from_micros(1), Hours::from_micro_hours(499_999)),
            Money::ZERO
        );
        assert_eq!(
            job_cost(Money::from_micros(-1), Hours::from_micro_hours(500_000)),
            Money::from_micros(-1)
        );
    }

    #[test]
    fn job_cost_saturates() {
        let huge = job_cost(
            Money::from_micros(i64::MAX),
            Hours::from_micro_hours(i64::MAX),
        );
        assert_eq!(huge, Money::from_micros(i64::MAX));
        let very_negative = job_cost(
            Money::from_micros(i64::MIN),
            Hours::from_micro_hours(i64::MAX),
        );
        assert_eq!(very_negative, Money::from_micros(i64::MIN));
    }

    #[test]
    fn duration_cap_is_1_1_times() {
        assert_eq!(
            duration_cap(Hours::from_micro_hours(4_000_000)),
            Hours::from_micro_hours(4_400_000)
        );
    }
}
