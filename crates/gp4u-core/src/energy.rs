//! Energy metering and carbon accounting for a job (the Energy chamber's rules).
//!
//! **Energy** is `Σ Pᵢ·Δtᵢ` over the job's power samples, where `Δtᵢ` is the time sample `i`
//! accounts for: the time since the previous sample (or, for the first one, since the job
//! started). In SPEC units that is `kWh = Σ Pᵢ[W]·Δtᵢ[s] / 3 600 000`; the seed's literal
//! formula multiplied every sample by the whole duration and so overcounted by the number of
//! samples.
//!
//! **Integer units.** Power is integer milliwatts, time integer milliseconds and energy
//! integer mW·ms (`1 kWh = 3.6 × 10¹²` mW·ms, [`MWMS_PER_KWH`]). The agent commits to the same
//! integers it reports, so the figure the platform computes here is bit-for-bit the figure a
//! zero-knowledge proof over those committed readings proves; a float sum would differ in the
//! last bits depending on the order of additions. Only [`EnergyTotal::kwh`] is a float, for
//! display.
//!
//! **Gaps are capped.** When samples go missing (dropped packets, an agent restart) the next
//! sample would otherwise be billed as if its power had been drawn for the whole gap. The
//! interval a sample accounts for is capped at `max_gap_ms`, so a gap is never reported as
//! energy beyond the cap: the customer is never shown (or charged carbon for) energy nobody
//! measured. Every capped interval is counted in [`EnergyTotal::gaps`], so a report can say
//! how complete the measurement was.
//!
//! **Carbon** is `kWh × grid intensity`, with the grid's figure, its source and its date kept
//! together in a [`GridFactor`] so every report can say where its number came from.

use serde::{Deserialize, Serialize};

/// Milliwatt-milliseconds in one kilowatt-hour: 1 000 W × 3 600 s = 10⁶ mW × 3.6 × 10⁶ ms.
pub const MWMS_PER_KWH: u128 = 3_600_000_000_000;

/// Milliwatts per watt.
pub const MW_PER_WATT: f64 = 1000.0;

/// A job whose energy came at least this share (in percent) from renewable sources is eligible
/// for a carbon credit.
pub const CARBON_CREDIT_MIN_RENEWABLE_PCT: f64 = 80.0;

/// The region name of the fallback factor in [`default_grid_factors`], used for a region the
/// table does not know.
pub const DEFAULT_GRID_REGION: &str = "default";

/// Why a series of samples could not be integrated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnergyError {
    #[error(
        "power samples must be in time order: sample {index} at {timestamp_ms} ms comes before \
         the previous sample at {previous_ms} ms"
    )]
    Unsorted {
        index: usize,
        timestamp_ms: i64,
        previous_ms: i64,
    },
    #[error("the gap cap must be zero or more milliseconds, got {max_gap_ms} ms")]
    NegativeGapCap { max_gap_ms: i64 },
    #[error("the energy total does not fit in 128 bits (the power samples are implausibly large)")]
    Overflow,
}

/// Converts a telemetry reading in watts to integer milliwatts, rounding half up.
///
/// Telemetry already clamps readings to finite, non-negative values; to keep this total
/// anyway, NaN and negative readings give 0 and readings beyond `u64::MAX` mW saturate. The
/// rounding is of the binary value `watts × 1000` (NVML itself reports integer milliwatts,
/// which this recovers exactly); the agent commits to the integer this function returns, so
/// the platform and any proof agree by construction.
pub fn watts_to_mw(watts: f64) -> u64 {
    if watts.is_nan() || watts <= 0.0 {
        return 0;
    }
    let milliwatts = (watts * MW_PER_WATT).round();
    if milliwatts >= u64::MAX as f64 {
        u64::MAX
    } else {
        // In range and integral: the conversion is exact.
        milliwatts as u64
    }
}

/// Milliwatts back to watts, as the API shows a power limit. For any whole number of
/// milliwatts below 2⁵³, [`watts_to_mw`] of the result gives the same milliwatts back.
pub fn mw_to_watts(milliwatts: u64) -> f64 {
    milliwatts as f64 / MW_PER_WATT
}

/// The time each sample accounts for, in milliseconds.
///
/// For `i ≥ 1` it is `tᵢ − tᵢ₋₁`; for the first sample it is `first_interval_ms`, the time
/// since the job started (callers pass `t₀ − started_at`). Every interval is capped at
/// `max_gap_ms` (see the module notes on gaps), a negative `first_interval_ms` (a sample
/// stamped before the start, i.e. clock skew) counts as 0, and a repeated timestamp accounts
/// for no time (weight 0), so a duplicated packet is not counted twice.
///
/// `timestamps_ms` must be sorted ascending; otherwise this fails rather than guess.
pub fn interval_weights(
    timestamps_ms: &[i64],
    first_interval_ms: i64,
    max_gap_ms: i64,
) -> Result<Vec<u64>, EnergyError> {
    Ok(weigh(timestamps_ms, first_interval_ms, max_gap_ms)?
        .into_iter()
        .map(|interval| interval.weight_ms)
        .collect())
}

/// One sample's interval: the time it accounts for and whether the cap shortened it.
struct Interval {
    weight_ms: u64,
    capped: bool,
}

fn weigh(
    timestamps_ms: &[i64],
    first_interval_ms: i64,
    max_gap_ms: i64,
) -> Result<Vec<Interval>, EnergyError> {
    let cap = u64::try_from(max_gap_ms).map_err(|_| EnergyError::NegativeGapCap { max_gap_ms })?;
    let capped = |raw_ms: u64| Interval {
        weight_ms: raw_ms.min(cap),
        capped: raw_ms > cap,
    };
    let mut intervals = Vec::with_capacity(timestamps_ms.len());
    let mut previous: Option<i64> = None;
    for (index, &timestamp_ms) in timestamps_ms.iter().enumerate() {
        let raw_ms = match previous {
            None => u64::try_from(first_interval_ms).unwrap_or(0),
            Some(previous_ms) if timestamp_ms < previous_ms => {
                return Err(EnergyError::Unsorted {
                    index,
                    timestamp_ms,
                    previous_ms,
                });
            }
            // Sorted, so the difference is non-negative; in i128 it cannot overflow, and it is
            // at most 2^64 − 1, which fits in u64.
            Some(previous_ms) => u64::try_from(i128::from(timestamp_ms) - i128::from(previous_ms))
                .unwrap_or(u64::MAX),
        };
        intervals.push(capped(raw_ms));
        previous = Some(timestamp_ms);
    }
    Ok(intervals)
}

/// A job's integrated energy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnergyTotal {
    /// `Σ power_mw × weight_ms`: the exact figure, and the one a proof attests.
    pub energy_mwms: u128,
    /// `energy_mwms / 3.6 × 10¹²`, for display and carbon arithmetic only.
    pub kwh: f64,
    /// How many samples were integrated.
    pub samples: usize,
    /// Total time the samples account for, in milliseconds (`Σ weight_ms`).
    pub covered_ms: u64,
    /// How many intervals were longer than the gap cap and so were shortened to it.
    pub gaps: u32,
}

/// Integrates `(timestamp_ms, power_mw)` samples of a job that started at `started_at_ms`.
///
/// The first sample accounts for `min(t₀ − started_at_ms, max_gap_ms)` (0 if it is stamped
/// before the start), every later one for `min(tᵢ − tᵢ₋₁, max_gap_ms)`. No samples means no
/// measured energy: a zero total, not an error.
pub fn integrate(
    samples: &[(i64, u64)],
    started_at_ms: i64,
    max_gap_ms: i64,
) -> Result<EnergyTotal, EnergyError> {
    let timestamps: Vec<i64> = samples
        .iter()
        .map(|&(timestamp_ms, _)| timestamp_ms)
        .collect();
    let first_interval_ms = match timestamps.first() {
        Some(&first_ms) => {
            let since_start = i128::from(first_ms) - i128::from(started_at_ms);
            // Saturating: anything beyond i64 is far beyond any cap anyway.
            i64::try_from(since_start).unwrap_or(if since_start < 0 { 0 } else { i64::MAX })
        }
        None => 0,
    };
    let intervals = weigh(&timestamps, first_interval_ms, max_gap_ms)?;
    let mut energy_mwms: u128 = 0;
    let mut covered_ms: u64 = 0;
    let mut gaps: u32 = 0;
    for (&(_, power_mw), interval) in samples.iter().zip(&intervals) {
        let energy = u128::from(power_mw) * u128::from(interval.weight_ms);
        energy_mwms = energy_mwms
            .checked_add(energy)
            .ok_or(EnergyError::Overflow)?;
        covered_ms = covered_ms.saturating_add(interval.weight_ms);
        if interval.capped {
            gaps = gaps.saturating_add(1);
        }
    }
    Ok(EnergyTotal {
        energy_mwms,
        kwh: mwms_to_kwh(energy_mwms),
        samples: samples.len(),
        covered_ms,
        gaps,
    })
}

/// mW·ms as kWh, for display. Exact for every total below 2^53 mW·ms (about 2 500 kWh) and
/// within one part in 2^53 above that.
pub fn mwms_to_kwh(energy_mwms: u128) -> f64 {
    let whole_kwh = energy_mwms / MWMS_PER_KWH;
    let remainder = energy_mwms % MWMS_PER_KWH;
    whole_kwh as f64 + remainder as f64 / MWMS_PER_KWH as f64
}

/// A grid's carbon intensity, with where the figure came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridFactor {
    /// The region name as GPUs declare it (`us-east-1`, …), or [`DEFAULT_GRID_REGION`].
    pub region: String,
    /// Grams of CO2-equivalent per kWh drawn from this grid.
    pub g_co2e_per_kwh: f64,
    /// Who published the figure, shown with every carbon number.
    pub source: String,
    /// The date the figure describes, `YYYY-MM-DD`: for an annual average, the year's last day.
    pub as_of: String,
}

/// The date stamped on the default factors: they are annual averages for 2023.
const DEFAULT_GRID_AS_OF: &str = "2023-12-31";

/// Default factors: `(region, g CO2e/kWh, grid, publisher)`.
///
/// Approximate annual average intensities (rounded to 10 g) of the country's or US state's
/// grid each region sits in, not of the hour a job runs nor of a data centre's own contracts.
/// The eight regions Atlas knows use exactly Atlas's figures, so placement and the carbon
/// report never disagree (a test checks it). Operators should replace these with their own.
const DEFAULT_GRID_FACTORS: [(&str, f64, &str, &str); 14] = [
    (
        "us-east-1",
        350.0,
        "Virginia (US)",
        "EIA state electricity profiles / EPA eGRID",
    ),
    (
        "us-west-1",
        230.0,
        "California (US)",
        "EPA eGRID (CAMX subregion)",
    ),
    (
        "us-west-2",
        150.0,
        "Oregon (US)",
        "EIA state electricity profiles / EPA eGRID",
    ),
    ("eu-west-1", 300.0, "Irish", "Ember / EEA"),
    ("eu-west-2", 240.0, "British", "Ember"),
    ("eu-west-3", 60.0, "French", "Ember / EEA"),
    ("eu-central-1", 380.0, "German", "Ember / EEA"),
    ("eu-north-1", 40.0, "Swedish", "Ember / EEA"),
    ("ap-south-1", 710.0, "Indian", "Ember"),
    ("ap-southeast-1", 470.0, "Singapore", "Ember"),
    ("ap-southeast-2", 550.0, "Australian (national)", "Ember"),
    ("ap-northeast-1", 490.0, "Japanese", "Ember"),
    ("sa-east-1", 100.0, "Brazilian", "Ember"),
    (
        DEFAULT_GRID_REGION,
        480.0,
        "world average",
        "Ember Global Electricity Review",
    ),
];

/// Approximate grid intensities for common cloud regions plus a [`DEFAULT_GRID_REGION`]
/// world-average fallback. See `DEFAULT_GRID_FACTORS` for what the figures are and are not.
pub fn default_grid_factors() -> Vec<GridFactor> {
    DEFAULT_GRID_FACTORS
        .iter()
        .map(|&(region, grams, grid, publisher)| GridFactor {
            region: region.to_owned(),
            g_co2e_per_kwh: grams,
            source: format!(
                "approximate 2023 annual average for the {grid} grid, rounded to 10 g, from \
                 {publisher}; a default for operators to replace"
            ),
            as_of: DEFAULT_GRID_AS_OF.to_owned(),
        })
        .collect()
}

/// The factor for `region`, else the [`DEFAULT_GRID_REGION`] entry, else `None`.
///
/// Falling back to a world average rather than to zero keeps an unknown region from looking
/// carbon-free; the factor returned names its region, so a report shows it was a fallback.
pub fn grid_factor_for<'a>(factors: &'a [GridFactor], region: &str) -> Option<&'a GridFactor> {
    factors
        .iter()
        .find(|factor| factor.region == region)
        .or_else(|| {
            factors
                .iter()
                .find(|factor| factor.region == DEFAULT_GRID_REGION)
        })
}

/// Kilograms of CO2e for `kwh` drawn from the grid: `kwh × g/kWh / 1000`.
///
/// A negative or non-finite energy or factor gives 0, so a report never shows NaN or
/// negative emissions.
pub fn carbon_kg(kwh: f64, factor: &GridFactor) -> f64 {
    let kg = kwh * factor.g_co2e_per_kwh / 1000.0;
    if kg.is_finite() && kg > 0.0 { kg } else { 0.0 }
}

/// The renewable share of a job's energy, in percent (0..=100).
///
/// No energy (or a non-finite figure) gives 0: with nothing measured there is no evidence of
/// renewable supply, so no credit. The share is clamped, so an over-reported renewable figure
/// cannot exceed 100 %.
pub fn renewable_pct(renewable_kwh: f64, total_kwh: f64) -> f64 {
    if !(total_kwh.is_finite() && total_kwh > 0.0 && renewable_kwh.is_finite()) {
        return 0.0;
    }
    (renewable_kwh / total_kwh * 100.0).clamp(0.0, 100.0)
}

/// The renewable share of energy drawn in parts, each `(kwh, renewable_pct)`: the
/// energy-weighted mean, so a long run on a green grid outweighs a short one on a dirty grid.
/// Parts with non-finite or negative figures are ignored; percentages are clamped to 0..=100.
pub fn weighted_renewable_pct(parts: &[(f64, f64)]) -> f64 {
    let (renewable_kwh, total_kwh) = parts
        .iter()
        .filter(|(kwh, pct)| kwh.is_finite() && *kwh >= 0.0 && pct.is_finite())
        .fold((0.0, 0.0), |(renewable, total), &(kwh, pct)| {
            (renewable + kwh * pct.clamp(0.0, 100.0) / 100.0, total + kwh)
        });
    renewable_pct(renewable_kwh, total_kwh)
}

/// Whether a job's renewable share earns a carbon credit
/// (`≥ CARBON_CREDIT_MIN_RENEWABLE_PCT`). NaN is never eligible.
pub fn credit_eligible(renewable_pct: f64) -> bool {
    renewable_pct >= CARBON_CREDIT_MIN_RENEWABLE_PCT
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: i64 = 30_000;

    /// 1 kWh in mW·ms, as u128, to keep expectations readable.
    const KWH: u128 = MWMS_PER_KWH;

    #[test]
    fn kwh_constant_matches_the_spec_formula() {
        // SPEC: kWh = Σ P[W]·Δt[s] / 3 600 000. 1 kW for one hour is 1 kWh.
        let total = integrate(&[(3_600_000, 1_000_000)], 0, 3_600_000).unwrap();
        assert_eq!(total.energy_mwms, KWH);
        assert_eq!(total.kwh, 1.0);
    }

    #[test]
    fn even_ten_second_intervals() {
        // Started at 0; samples every 10 s at 300 W, 310 W, 320 W.
        let samples = [(10_000, 300_000), (20_000, 310_000), (30_000, 320_000)];
        let total = integrate(&samples, 0, CAP).unwrap();
        // (300 + 310 + 320) W × 10 s = 9 300 J = 9.3e9 mW·ms.
        assert_eq!(total.energy_mwms, 9_300_000_000);
        assert_eq!(total.covered_ms, 30_000);
        assert_eq!(total.samples, 3);
        assert_eq!(total.gaps, 0);
        assert!((total.kwh - 9_300.0 / 3_600_000.0).abs() < 1e-15);
    }

    #[test]
    fn uneven_intervals() {
        // Started at 1 000; samples after 2 s, 5 s more, 0.5 s more.
        let samples = [(3_000, 100_000), (8_000, 200_000), (8_500, 50_000)];
        let total = integrate(&samples, 1_000, CAP).unwrap();
        // 100 W × 2 s + 200 W × 5 s + 50 W × 0.5 s = 200 + 1000 + 25 = 1 225 J.
        assert_eq!(total.energy_mwms, 1_225_000_000);
        assert_eq!(total.covered_ms, 7_500);
        assert_eq!(
            interval_weights(&[3_000, 8_000, 8_500], 2_000, CAP).unwrap(),
            vec![2_000, 5_000, 500]
        );
    }

    #[test]
    fn a_gap_beyond_the_cap_is_billed_only_up_to_the_cap() {
        // 10 s, then a 120 s hole (lost packets), then 10 s; cap 30 s.
        let samples = [(10_000, 400_000), (130_000, 400_000), (140_000, 400_000)];
        let total = integrate(&samples, 0, CAP).unwrap();
        // 400 W × (10 + 30 + 10) s = 20 000 J.
        assert_eq!(total.energy_mwms, 20_000_000_000);
        assert_eq!(total.covered_ms, 50_000);
        assert_eq!(total.gaps, 1);
        // Exactly the cap is not a gap.
        let at_cap = integrate(&[(0, 1), (CAP, 1)], 0, CAP).unwrap();
        assert_eq!(at_cap.gaps, 0);
        assert_eq!(at_cap.covered_ms, 30_000);
    }

    #[test]
    fn the_first_interval_runs_from_the_start_and_is_capped_too() {
        // First sample 4 s after the start.
        let total = integrate(&[(104_000, 250_000), (114_000, 250_000)], 100_000, CAP).unwrap();
        assert_eq!(total.energy_mwms, 250_000 * 14_000);
        // First sample 100 s after the start: only 30 s of it is counted, and it is a gap.
        let late = integrate(&[(100_000, 250_000)], 0, CAP).unwrap();
        assert_eq!(late.energy_mwms, 250_000 * 30_000);
        assert_eq!(late.gaps, 1);
        // A first sample stamped before the start (clock skew) accounts for nothing.
        let skewed = integrate(&[(99_000, 250_000), (109_000, 250_000)], 100_000, CAP).unwrap();
        assert_eq!(skewed.energy_mwms, 250_000 * 10_000);
        assert_eq!(
            interval_weights(&[5, 10], -7, CAP).unwrap(),
            vec![0, 5],
            "negative first interval counts as 0"
        );
        assert_eq!(interval_weights(&[5], 60_000, CAP).unwrap(), vec![30_000]);
    }

    #[test]
    fn one_sample_and_no_samples() {
        let one = integrate(&[(5_000, 200_000)], 0, CAP).unwrap();
        assert_eq!(one.energy_mwms, 200_000 * 5_000);
        assert_eq!(one.samples, 1);
        let none = integrate(&[], 0, CAP).unwrap();
        assert_eq!(
            none,
            EnergyTotal {
                energy_mwms: 0,
                kwh: 0.0,
                samples: 0,
                covered_ms: 0,
                gaps: 0
            }
        );
        assert_eq!(interval_weights(&[], 0, CAP).unwrap(), Vec::<u64>::new());
    }

    #[test]
    fn zero_power_is_zero_energy_but_covered_time() {
        let total = integrate(&[(10_000, 0), (20_000, 0)], 0, CAP).unwrap();
        assert_eq!(total.energy_mwms, 0);
        assert_eq!(total.kwh, 0.0);
        assert_eq!(total.covered_ms, 20_000);
    }

    #[test]
    fn unsorted_input_is_rejected() {
        let error = integrate(&[(10_000, 1), (9_999, 1)], 0, CAP).unwrap_err();
        assert_eq!(
            error,
            EnergyError::Unsorted {
                index: 1,
                timestamp_ms: 9_999,
                previous_ms: 10_000
            }
        );
        assert!(error.to_string().contains("time order"));
        assert!(interval_weights(&[3, 2, 1], 0, CAP).is_err());
        assert_eq!(
            interval_weights(&[1], 0, -1),
            Err(EnergyError::NegativeGapCap { max_gap_ms: -1 })
        );
    }

    #[test]
    fn duplicate_timestamps_account_for_no_time() {
        let samples = [(10_000, 300_000), (10_000, 999_000), (20_000, 300_000)];
        let total = integrate(&samples, 0, CAP).unwrap();
        assert_eq!(total.energy_mwms, 300_000 * 20_000);
        assert_eq!(
            interval_weights(&[10_000, 10_000, 20_000], 10_000, CAP).unwrap(),
            vec![10_000, 0, 10_000]
        );
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        let weights = interval_weights(&[i64::MIN, i64::MAX], 0, i64::MAX).unwrap();
        assert_eq!(weights, vec![0, i64::MAX as u64]);
        let total = integrate(&[(i64::MAX, u64::MAX)], i64::MIN, i64::MAX).unwrap();
        assert_eq!(
            total.energy_mwms,
            u128::from(u64::MAX) * u128::from(i64::MAX as u64)
        );
        let overflow = integrate(
            &[
                (i64::MIN + 1, u64::MAX),
                (0, u64::MAX),
                (i64::MAX, u64::MAX),
            ],
            i64::MIN,
            i64::MAX,
        );
        assert!(overflow.is_ok(), "three near-max terms still fit in u128");
    }

    #[test]
    fn watts_round_half_up_to_the_milliwatt() {
        assert_eq!(watts_to_mw(0.0), 0);
        assert_eq!(watts_to_mw(250.0), 250_000);
        assert_eq!(watts_to_mw(250.123), 250_123);
        assert_eq!(watts_to_mw(0.0004), 0);
        assert_eq!(watts_to_mw(0.0005), 1);
        assert_eq!(watts_to_mw(0.0015), 2);
        assert_eq!(watts_to_mw(0.0025), 3);
        assert_eq!(watts_to_mw(699.9996), 700_000);
        assert_eq!(watts_to_mw(-1.0), 0);
        assert_eq!(watts_to_mw(f64::NAN), 0);
        assert_eq!(watts_to_mw(f64::INFINITY), u64::MAX);
        assert_eq!(watts_to_mw(1e300), u64::MAX);
        // Every integer milliwatt reading survives the trip through watts.
        for milliwatts in (0..2_000_000_u64).step_by(997) {
            assert_eq!(watts_to_mw(milliwatts as f64 / 1000.0), milliwatts);
            assert_eq!(watts_to_mw(mw_to_watts(milliwatts)), milliwatts);
        }
        // A power limit shown in watts and read back is the registered one, to the milliwatt.
        for milliwatts in [1, 300_000, 450_500, 699_999, 700_000, 2_000_000] {
            let shown: f64 =
                serde_json::from_str(&serde_json::to_string(&mw_to_watts(milliwatts)).unwrap())
                    .unwrap();
            assert_eq!(watts_to_mw(shown), milliwatts);
        }
    }

    #[test]
    fn kwh_display_conversion() {
        assert_eq!(mwms_to_kwh(0), 0.0);
        assert_eq!(mwms_to_kwh(KWH / 2), 0.5);
        assert_eq!(mwms_to_kwh(KWH * 3), 3.0);
    }

    fn factor(grams: f64) -> GridFactor {
        GridFactor {
            region: "test".to_owned(),
            g_co2e_per_kwh: grams,
            source: "test".to_owned(),
            as_of: "2023-12-31".to_owned(),
        }
    }

    #[test]
    fn carbon_arithmetic() {
        assert_eq!(carbon_kg(10.0, &factor(400.0)), 4.0);
        assert_eq!(carbon_kg(2.5, &factor(40.0)), 0.1);
        assert_eq!(carbon_kg(0.0, &factor(400.0)), 0.0);
        assert_eq!(carbon_kg(-1.0, &factor(400.0)), 0.0);
        assert_eq!(carbon_kg(f64::NAN, &factor(400.0)), 0.0);
        assert_eq!(carbon_kg(1.0, &factor(f64::INFINITY)), 0.0);
    }

    #[test]
    fn renewable_shares_and_credit_eligibility() {
        assert_eq!(renewable_pct(8.0, 10.0), 80.0);
        assert_eq!(renewable_pct(12.0, 10.0), 100.0);
        assert_eq!(renewable_pct(-1.0, 10.0), 0.0);
        assert_eq!(renewable_pct(1.0, 0.0), 0.0);
        assert_eq!(renewable_pct(f64::NAN, 10.0), 0.0);
        // 9 kWh at 100 % and 1 kWh at 0 % is 90 %, not the unweighted 50 %.
        assert_eq!(weighted_renewable_pct(&[(9.0, 100.0), (1.0, 0.0)]), 90.0);
        assert_eq!(weighted_renewable_pct(&[(1.0, 150.0)]), 100.0);
        assert_eq!(
            weighted_renewable_pct(&[(f64::NAN, 100.0), (1.0, 50.0)]),
            50.0
        );
        assert_eq!(weighted_renewable_pct(&[]), 0.0);
        assert!(credit_eligible(80.0));
        assert!(credit_eligible(100.0));
        assert!(!credit_eligible(79.999));
        assert!(!credit_eligible(f64::NAN));
    }

    #[test]
    fn default_factors_are_sane_and_dated() {
        let factors = default_grid_factors();
        assert!(factors.len() >= 13);
        let mut regions: Vec<&str> = factors.iter().map(|f| f.region.as_str()).collect();
        regions.sort_unstable();
        regions.dedup();
        assert_eq!(regions.len(), factors.len(), "regions are unique");
        for factor in &factors {
            assert!(factor.g_co2e_per_kwh > 0.0 && factor.g_co2e_per_kwh < 1200.0);
            assert!(!factor.source.is_empty());
            let date = factor.as_of.as_bytes();
            assert!(
                date.len() == 10
                    && date[4] == b'-'
                    && date[7] == b'-'
                    && date
                        .iter()
                        .enumerate()
                        .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit()),
                "{} is YYYY-MM-DD",
                factor.as_of
            );
        }
        assert_eq!(
            grid_factor_for(&factors, "eu-north-1").map(|f| f.g_co2e_per_kwh),
            Some(40.0)
        );
        assert_eq!(
            grid_factor_for(&factors, "mars-1").map(|f| f.region.as_str()),
            Some(DEFAULT_GRID_REGION)
        );
        assert_eq!(grid_factor_for(&[], "eu-north-1"), None);
    }

    #[test]
    fn default_factors_agree_with_atlas() {
        let atlas = crate::atlas::CarbonTable::default();
        let factors = default_grid_factors();
        for (region, intensity) in atlas.entries() {
            let factor = grid_factor_for(&factors, region).unwrap();
            assert_eq!(factor.region, region, "{region} has its own factor");
            assert_eq!(factor.g_co2e_per_kwh, intensity.g_co2e_per_kwh, "{region}");
        }
    }
}
