//! netem delay distribution tables, generated with the algorithms of iproute2's
//! `netem/{normal,pareto,paretonormal}.c` instead of shipping iproute2's `.dist` files.
//!
//! A table is 4096 `s16` values of the inverse CDF scaled by `NETEM_DIST_SCALE` (8192); netem
//! picks `table[rand % 4096] * jitter / 8192`. The generators below follow the C programs step by
//! step, including their floating-point accumulation, so the result is bit-identical to the
//! tables `tc` loads (checked against bytes captured from `tc` in the fixture tests).

use std::sync::OnceLock;

/// `NETEM_DIST_SCALE` in `include/uapi/linux/pkt_sched.h`.
const TABLE_FACTOR: f64 = 8192.0;
/// Resolution of the normal CDF inversion in normal.c / paretonormal.c.
const TABLE_SIZE: usize = 16384;
/// Shape parameter `a` of pareto.c / paretonormal.c.
const PARETO_A: f64 = 3.0;

/// A delay distribution for netem's jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// netem's built-in uniform jitter (no table is sent).
    Uniform,
    /// Normal distribution.
    Normal,
    /// Pareto distribution (heavy tail).
    Pareto,
    /// 1/4 normal + 3/4 pareto.
    Paretonormal,
}

impl Distribution {
    /// The table to send as `TCA_NETEM_DELAY_DIST`, or `None` for uniform.
    #[must_use]
    pub fn table(self) -> Option<&'static [i16]> {
        static NORMAL: OnceLock<Vec<i16>> = OnceLock::new();
        static PARETO: OnceLock<Vec<i16>> = OnceLock::new();
        static PARETONORMAL: OnceLock<Vec<i16>> = OnceLock::new();
        match self {
            Self::Uniform => None,
            Self::Normal => Some(NORMAL.get_or_init(normal_table)),
            Self::Pareto => Some(PARETO.get_or_init(pareto_table)),
            Self::Paretonormal => Some(PARETONORMAL.get_or_init(paretonormal_table)),
        }
    }
}

// glibc's erf, the function iproute2's generators were built against; std has no stable erf,
// and a different implementation could move a sample across a rounding boundary.
unsafe extern "C" {
    fn erf(x: f64) -> f64;
}

fn normal_cdf(x: f64) -> f64 {
    // SAFETY: erf is a pure libm function with no preconditions.
    0.5 + 0.5 * unsafe { erf(x / std::f64::consts::SQRT_2) }
}

/// The inverse normal CDF sampled at `TABLE_SIZE + 1` points (normal.c's `table[]`).
fn inverse_normal() -> Vec<f64> {
    let mut table = vec![0.0f64; TABLE_SIZE + 1];
    // The C loop accumulates `x += .00005`; repeating the same additions keeps the same x values.
    let mut x = -10.0f64;
    while x < 10.05 {
        let i = (TABLE_SIZE as f64 * normal_cdf(x)).round_ties_even() as usize;
        if let Some(slot) = table.get_mut(i) {
            *slot = x;
        }
        x += 0.00005;
    }
    table
}

fn clamp_i16(v: i64) -> i16 {
    v.clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16
}

fn normal_table() -> Vec<i16> {
    let inv = inverse_normal();
    (0..TABLE_SIZE)
        .step_by(4)
        .map(|i| clamp_i16((inv[i] * TABLE_FACTOR).round_ties_even() as i64))
        .collect()
}

/// pareto.c's value for `i` in 65536, 65520, ..., 16.
fn pareto_value(i: i64) -> i64 {
    let mut d = i as f64 / 65536.0;
    d = 1.0 / d.powf(1.0 / PARETO_A);
    d -= 1.5;
    d *= (4.0 / PARETO_A) * TABLE_FACTOR;
    if d > 32767.0 {
        d = 32767.0;
    }
    d.round_ties_even() as i64
}

fn pareto_table() -> Vec<i16> {
    (0..4096i64)
        .map(|n| clamp_i16(pareto_value(65536 - 16 * n)))
        .collect()
}

fn paretonormal_table() -> Vec<i16> {
    let inv = inverse_normal();
    (0..TABLE_SIZE)
        .step_by(4)
        .map(|i| {
            let normal = (inv[i] * TABLE_FACTOR).round_ties_even() as i64;
            let pareto = pareto_value(65536 - 4 * i as i64);
            // C integer division truncates toward zero, as Rust's does.
            clamp_i16((normal + 3 * pareto) / 4)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_have_4096_entries() {
        for d in [
            Distribution::Normal,
            Distribution::Pareto,
            Distribution::Paretonormal,
        ] {
            assert_eq!(d.table().map(<[i16]>::len), Some(4096), "{d:?}");
        }
        assert!(Distribution::Uniform.table().is_none());
    }

    #[test]
    fn pareto_first_value() {
        // i = 65536: (1 - 1.5) * 4/3 * 8192 = -5461.33
        assert_eq!(Distribution::Pareto.table().unwrap()[0], -5461);
    }
}
