//! Money and durations as exact integers.
//!
//! Money is never a float (SPEC §3): amounts are integer micro-units (1e-6 of the currency),
//! durations integer micro-hours. JSON clients send plain numbers, so the only float ever
//! touched is the one serde_json hands us; it is converted through its shortest decimal
//! representation (the digits the client most likely typed) and rounded half-up on those
//! decimal digits, never with float arithmetic.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::truncate_for_echo;

/// Micro-units per whole unit (of currency or of hours).
pub const MICROS_PER_UNIT: i64 = 1_000_000;

/// Decimal places kept by `Money` and `Hours`.
const SCALE_DIGITS: i64 = 6;

/// Digits in `i64::MAX` (9_223_372_036_854_775_807); a scaled value with more overflows.
const I64_MAX_DIGITS: i64 = 19;

/// Why a decimal amount could not be turned into micro-units.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error(
        "{value:?} is not a decimal number: expected an optional '-', digits, and optionally '.' followed by up to 6 digits"
    )]
    Invalid { value: String },
    #[error("{value:?} has more than 6 decimal places: amounts are exact to 0.000001")]
    TooManyDecimals { value: String },
    #[error("{value:?} is out of range")]
    Overflow { value: String },
    #[error("the number is not finite (NaN or infinity)")]
    NotFinite,
}

/// An amount of money in integer micro-units (1 unit = 1_000_000 micros).
///
/// Serializes as its micros (an `i64`), so storage and internal messages stay exact;
/// public JSON shows `display_f64` (cents) instead.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Money(i64);

impl Money {
    pub const ZERO: Money = Money(0);

    pub const fn from_micros(micros: i64) -> Self {
        Money(micros)
    }

    pub const fn micros(&self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).map(Money)
    }

    pub const fn is_zero(&self) -> bool {
        self.0 == 0
    }

    pub const fn is_negative(&self) -> bool {
        self.0 < 0
    }

    /// Parses an exact decimal such as `"12.4"`, `"-0.000001"` or `"100"`.
    ///
    /// Refuses more than 6 decimal places rather than rounding: a typed-in amount that
    /// cannot be represented exactly is a mistake worth reporting.
    pub fn parse_decimal(text: &str) -> Result<Money, MoneyError> {
        let parts = split_decimal(text, false).ok_or_else(|| MoneyError::Invalid {
            value: truncate_for_echo(text),
        })?;
        if parts.fraction_digits.len() > SCALE_DIGITS as usize {
            return Err(MoneyError::TooManyDecimals {
                value: truncate_for_echo(text),
            });
        }
        scale_half_up(&parts, text).map(Money)
    }

    /// Converts a JSON number to micro-units, rounding half away from zero on its shortest
    /// decimal representation (so `12.4` is exactly 12_400_000 micros, not 12.39999…).
    pub fn from_json_number(value: f64) -> Result<Money, MoneyError> {
        json_number_to_micros(value).map(Money)
    }

    /// Whole cents, rounded half away from zero, for display.
    pub fn to_cents_half_up(&self) -> i64 {
        const MICROS_PER_CENT: i64 = 10_000;
        let cents = self.0 / MICROS_PER_CENT;
        let remainder = self.0 % MICROS_PER_CENT;
        if remainder.abs() * 2 >= MICROS_PER_CENT {
            cents + remainder.signum()
        } else {
            cents
        }
    }

    /// The amount rounded to the cent, as a float for JSON display (`"costEstimate": 12.4`).
    /// Never feed this back into arithmetic.
    pub fn display_f64(&self) -> f64 {
        self.to_cents_half_up() as f64 / 100.0
    }
}

/// Two decimals, rounded half-up to the cent: `12.40`, `-0.01`.
impl fmt::Display for Money {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cents = self.to_cents_half_up();
        let sign = if cents < 0 { "-" } else { "" };
        let magnitude = cents.unsigned_abs();
        write!(
            formatter,
            "{sign}{}.{:02}",
            magnitude / 100,
            magnitude % 100
        )
    }
}

/// A duration in integer micro-hours (1 hour = 1_000_000 micro-hours).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Hours(i64);

impl Hours {
    pub const fn from_micro_hours(micro_hours: i64) -> Self {
        Hours(micro_hours)
    }

    pub const fn micro_hours(&self) -> i64 {
        self.0
    }

    /// Converts a JSON number of hours, rounding half-up to the micro-hour on its shortest
    /// decimal representation, exactly like `Money::from_json_number`.
    pub fn from_json_number(value: f64) -> Result<Hours, MoneyError> {
        json_number_to_micros(value).map(Hours)
    }

    /// The duration in hours as a float, for display and wire formats only.
    pub fn as_f64(&self) -> f64 {
        self.0 as f64 / MICROS_PER_UNIT as f64
    }
}

/// A decimal literal split into its parts, so it can be scaled exactly.
struct DecimalParts<'a> {
    negative: bool,
    integer_digits: &'a str,
    fraction_digits: &'a str,
    /// Power of ten the digits are multiplied by (`1.5e-7` has exponent -7).
    exponent: i64,
}

/// Splits `-?DIGITS(.DIGITS)?` and, when `allow_exponent`, an optional `[eE][+-]?DIGITS`.
/// Returns `None` for anything else (no '+' sign, no bare '.', no whitespace).
fn split_decimal(text: &str, allow_exponent: bool) -> Option<DecimalParts<'_>> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent_text) = match unsigned.find(['e', 'E']) {
        Some(position) if allow_exponent => {
            (&unsigned[..position], Some(&unsigned[position + 1..]))
        }
        Some(_) => return None,
        None => (unsigned, None),
    };
    let (integer_digits, fraction_digits) = match mantissa.split_once('.') {
        Some((integer, fraction)) => (integer, fraction),
        None => (mantissa, ""),
    };
    let has_point = mantissa.contains('.');
    let all_digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
    if integer_digits.is_empty() || !all_digits(integer_digits) || !all_digits(fraction_digits) {
        return None;
    }
    if has_point && fraction_digits.is_empty() {
        return None;
    }
    let exponent = match exponent_text {
        Some(exponent_text) => parse_exponent(exponent_text)?,
        None => 0,
    };
    Some(DecimalParts {
        negative,
        integer_digits,
        fraction_digits,
        exponent,
    })
}

/// Parses `[+-]?DIGITS`, saturating: any exponent beyond ±1_000_000 already means
/// "overflow" or "rounds to zero", so its exact size does not matter.
fn parse_exponent(text: &str) -> Option<i64> {
    const EXPONENT_LIMIT: i64 = 1_000_000;
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let magnitude = digits.bytes().fold(0_i64, |accumulated, byte| {
        accumulated
            .saturating_mul(10)
            .saturating_add(i64::from(byte - b'0'))
            .min(EXPONENT_LIMIT)
    });
    Some(if negative { -magnitude } else { magnitude })
}

/// Multiplies the decimal by 10^6 and rounds half away from zero, using only its digits.
///
/// Half-up only needs the first dropped digit: the dropped tail is at least one half
/// exactly when that digit is 5 or more.
fn scale_half_up(parts: &DecimalParts<'_>, original: &str) -> Result<i64, MoneyError> {
    let overflow = || MoneyError::Overflow {
        value: truncate_for_echo(original),
    };
    let digits: Vec<i64> = parts
        .integer_digits
        .bytes()
        .chain(parts.fraction_digits.bytes())
        .map(|byte| i64::from(byte - b'0'))
        .collect();
    let Some(first_nonzero) = digits.iter().position(|&digit| digit != 0) else {
        return Ok(0);
    };
    let significant = &digits[first_nonzero..];
    // Number of significant digits left of the decimal point once scaled by 10^6.
    let kept_digit_count = (parts.integer_digits.len() as i64)
        .saturating_add(parts.exponent)
        .saturating_sub(first_nonzero as i64)
        .saturating_add(SCALE_DIGITS);
    if kept_digit_count > I64_MAX_DIGITS {
        return Err(overflow());
    }
    if kept_digit_count < 0 {
        // Even the first significant digit lies below the half-micro: rounds to zero.
        return Ok(0);
    }
    let kept_digit_count = kept_digit_count as usize;
    let mut magnitude: i64 = 0;
    for index in 0..kept_digit_count {
        let digit = significant.get(index).copied().unwrap_or(0);
        magnitude = magnitude
            .checked_mul(10)
            .and_then(|value| value.checked_add(digit))
            .ok_or_else(overflow)?;
    }
    let first_dropped_digit = significant.get(kept_digit_count).copied().unwrap_or(0);
    if first_dropped_digit >= 5 {
        magnitude = magnitude.checked_add(1).ok_or_else(overflow)?;
    }
    Ok(if parts.negative {
        -magnitude
    } else {
        magnitude
    })
}

/// Shared by `Money` and `Hours`: shortest round-trip decimal of the float, then exact scaling.
fn json_number_to_micros(value: f64) -> Result<i64, MoneyError> {
    if !value.is_finite() {
        return Err(MoneyError::NotFinite);
    }
    // `{}` prints the shortest digits that round-trip, never an exponent; the parser also
    // accepts exponent forms so that it does not depend on that formatting detail.
    let text = format!("{value}");
    let parts = split_decimal(&text, true).ok_or_else(|| MoneyError::Invalid {
        value: truncate_for_echo(&text),
    })?;
    scale_half_up(&parts, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_decimal_is_exact() {
        let cases = [
            ("0", 0),
            ("-0", 0),
            ("12.4", 12_400_000),
            ("12.40", 12_400_000),
            ("0.000001", 1),
            ("-0.000001", -1),
            ("100000", 100_000_000_000),
            ("007.5", 7_500_000),
            ("9223372036854.775807", i64::MAX),
            ("-9223372036854.775807", -i64::MAX),
        ];
        for (text, micros) in cases {
            assert_eq!(
                Money::parse_decimal(text),
                Ok(Money::from_micros(micros)),
                "{text}"
            );
        }
    }

    #[test]
    fn parse_decimal_refuses_bad_forms() {
        for text in [
            "", "-", ".5", "5.", "+1", "1e3", " 1", "1 ", "1,5", "--1", "0x10", "1.2.3",
        ] {
            assert!(
                matches!(Money::parse_decimal(text), Err(MoneyError::Invalid { .. })),
                "{text:?}"
            );
        }
        assert!(matches!(
            Money::parse_decimal("0.0000001"),
            Err(MoneyError::TooManyDecimals { .. })
        ));
        assert!(matches!(
            Money::parse_decimal("9223372036854.775808"),
            Err(MoneyError::Overflow { .. })
        ));
        assert!(matches!(
            Money::parse_decimal("99999999999999999999999"),
            Err(MoneyError::Overflow { .. })
        ));
    }

    #[test]
    fn from_json_number_rounds_half_up_on_decimal_digits() {
        let cases = [
            (12.4, 12_400_000),
            (0.1, 100_000),
            (0.0000005, 1),
            (-0.0000005, -1),
            (0.00000049, 0),
            (1e-7, 0),
            (1.5e-6, 2),
            (2.5e-6, 3),
            (1e12, 1_000_000_000_000_000_000),
            (0.0, 0),
            (-0.0, 0),
            (5e-324, 0),
        ];
        for (value, micros) in cases {
            assert_eq!(
                Money::from_json_number(value),
                Ok(Money::from_micros(micros)),
                "{value}"
            );
        }
        assert_eq!(
            Money::from_json_number(f64::NAN),
            Err(MoneyError::NotFinite)
        );
        assert_eq!(
            Money::from_json_number(f64::INFINITY),
            Err(MoneyError::NotFinite)
        );
        assert!(matches!(
            Money::from_json_number(1e21),
            Err(MoneyError::Overflow { .. })
        ));
        assert!(matches!(
            Money::from_json_number(1e300),
            Err(MoneyError::Overflow { .. })
        ));
    }

    #[test]
    fn exponent_forms_scale_exactly() {
        let micros = |text: &str| scale_half_up(&split_decimal(text, true).unwrap(), text);
        assert_eq!(micros("1e-7"), Ok(0));
        assert_eq!(micros("5e-7"), Ok(1));
        assert_eq!(micros("1.25E-5"), Ok(13));
        assert_eq!(micros("1e2"), Ok(100_000_000));
        assert_eq!(micros("1e+2"), Ok(100_000_000));
        assert_eq!(micros("-4.5e-6"), Ok(-5));
        assert_eq!(micros("1e-99999999999999999999"), Ok(0));
        assert!(micros("1e21").is_err());
        assert!(micros("1e99999999999999999999").is_err());
        assert!(split_decimal("1e", true).is_none());
        assert!(split_decimal("1e+", true).is_none());
    }

    #[test]
    fn cents_and_display_round_half_away_from_zero() {
        let cases = [
            (12_400_000, 1240, "12.40"),
            (12_404_999, 1240, "12.40"),
            (12_405_000, 1241, "12.41"),
            (-12_405_000, -1241, "-12.41"),
            (-4_999, 0, "0.00"),
            (-5_000, -1, "-0.01"),
            (0, 0, "0.00"),
        ];
        for (micros, cents, shown) in cases {
            let money = Money::from_micros(micros);
            assert_eq!(money.to_cents_half_up(), cents, "{micros}");
            assert_eq!(money.to_string(), shown, "{micros}");
        }
        assert_eq!(Money::from_micros(12_400_000).display_f64(), 12.4);
        assert_eq!(Money::from_micros(i64::MAX).to_string(), "9223372036854.78");
    }

    #[test]
    fn checked_arithmetic_and_serde() {
        let one = Money::from_micros(1);
        assert_eq!(Money::ZERO.checked_add(one), Some(one));
        assert_eq!(Money::from_micros(i64::MAX).checked_add(one), None);
        assert_eq!(Money::from_micros(i64::MIN).checked_sub(one), None);
        assert_eq!(
            serde_json::to_string(&Money::from_micros(12_400_000)).unwrap(),
            "12400000"
        );
        assert_eq!(
            serde_json::from_str::<Money>("5").unwrap(),
            Money::from_micros(5)
        );
        assert_eq!(
            serde_json::to_string(&Hours::from_micro_hours(7)).unwrap(),
            "7"
        );
    }

    #[test]
    fn hours_convert_like_money() {
        assert_eq!(
            Hours::from_json_number(4.0),
            Ok(Hours::from_micro_hours(4_000_000))
        );
        assert_eq!(
            Hours::from_json_number(0.1),
            Ok(Hours::from_micro_hours(100_000))
        );
        assert_eq!(Hours::from_micro_hours(1_500_000).as_f64(), 1.5);
    }
}
