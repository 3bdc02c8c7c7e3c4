//! fq: the fair queue, which honours EDT departure times.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::super::raw::Attrs;

/// fq options (the ones delay injection through EDT needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FqOptions {
    /// Total packet limit.
    pub limit: Option<u32>,
    /// Per-flow packet limit (default 100: too small for a delayed fast flow).
    pub flow_limit: Option<u32>,
    /// Packets with a departure time further than this are dropped or capped (5.7+).
    pub horizon: Option<Duration>,
    /// Drop (true) or cap (false) beyond the horizon.
    pub horizon_drop: Option<bool>,
}

const FQ_PLIMIT: u16 = 1;
const FQ_FLOW_PLIMIT: u16 = 2;
const FQ_HORIZON: u16 = 14;
const FQ_HORIZON_DROP: u16 = 15;

impl FqOptions {
    /// The `TCA_OPTIONS` payload.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut a = Attrs::new();
        if let Some(v) = self.limit {
            a.u32(FQ_PLIMIT, v);
        }
        if let Some(v) = self.flow_limit {
            a.u32(FQ_FLOW_PLIMIT, v);
        }
        if let Some(h) = self.horizon {
            a.u32(FQ_HORIZON, u32::try_from(h.as_micros()).unwrap_or(u32::MAX));
        }
        if let Some(d) = self.horizon_drop {
            a.attr(FQ_HORIZON_DROP, &[u8::from(d)]);
        }
        a.into_bytes()
    }
}
