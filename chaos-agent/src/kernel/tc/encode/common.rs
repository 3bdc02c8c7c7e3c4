//! Shared by the encoders: the `TCA_OPTIONS` attribute type (prio's compat nest, every message)
//! and the parameter checks that refuse what `tc` refuses (netem's today, and any encoder that
//! takes percentages or durations).

use std::time::Duration;

use super::super::error::TcError;

/// `TCA_OPTIONS`.
pub(super) const TCA_OPTIONS: u16 = 2;

pub(super) fn check_percent(what: &'static str, v: f64) -> Result<(), TcError> {
    if (0.0..=100.0).contains(&v) {
        Ok(())
    } else {
        Err(TcError::InvalidParam {
            what,
            why: format!("{v}% is not within 0..=100"),
        })
    }
}

pub(super) fn duration_ns(what: &'static str, d: Duration) -> Result<i64, TcError> {
    i64::try_from(d.as_nanos()).map_err(|_| TcError::InvalidParam {
        what,
        why: format!("{d:?} is too long"),
    })
}
