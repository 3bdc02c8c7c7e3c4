//! tbf: a token bucket filter, rate shaping without classes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::super::error::TcError;
use super::super::raw::{Attrs, rate_table, u32s, xmittime};

/// How tbf bounds its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TbfLimit {
    /// Bytes that may wait.
    Bytes(u32),
    /// Longest time a packet may wait (converted to bytes as `tc` does).
    Latency(Duration),
}

/// Token bucket filter options (rate shaping without classes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TbfOptions {
    /// Rate in bytes/s.
    pub rate: u64,
    /// Bucket size in bytes.
    pub burst: u32,
    /// Queue bound.
    pub limit: TbfLimit,
}

const TBF_PARMS: u16 = 1;
const TBF_RTAB: u16 = 2;
const TBF_RATE64: u16 = 4;
const TBF_BURST: u16 = 6;

impl TbfOptions {
    /// The `TCA_OPTIONS` payload (nested attributes).
    pub fn encode(&self) -> Result<Vec<u8>, TcError> {
        if self.rate == 0 || self.burst == 0 {
            return Err(TcError::InvalidParam {
                what: "tbf",
                why: "rate and burst must be non-zero".into(),
            });
        }
        let (spec, rtab) = rate_table(self.rate, 0);
        let buffer = xmittime(self.rate, self.burst);
        let limit = match self.limit {
            TbfLimit::Bytes(b) => b,
            TbfLimit::Latency(l) => {
                let us = u32::try_from(l.as_micros()).unwrap_or(u32::MAX);
                (self.rate as f64 * f64::from(us) / 1_000_000.0 + f64::from(self.burst)) as u32
            }
        };
        // struct tc_tbf_qopt { rate, peakrate, limit, buffer, mtu }
        let mut parms = spec.bytes();
        parms.extend_from_slice(&[0u8; 12]);
        parms.extend_from_slice(&u32s(&[limit, buffer, 0]));
        let mut a = Attrs::new();
        a.attr(TBF_PARMS, &parms).u32(TBF_BURST, self.burst);
        if self.rate > u64::from(u32::MAX) {
            a.u64(TBF_RATE64, self.rate);
        }
        a.attr(TBF_RTAB, &rtab);
        Ok(a.into_bytes())
    }
}
