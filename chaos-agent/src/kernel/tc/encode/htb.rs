//! htb: the hierarchical token bucket qdisc and its classes.

use serde::{Deserialize, Serialize};

use super::super::error::TcError;
use super::super::raw::{Attrs, PSCHED_HZ, rate_table, u32s, xmittime};

/// HTB qdisc options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HtbOptions {
    /// Minor of the class unclassified traffic goes to (0 = sent directly, unshaped).
    pub default_class: u32,
    /// Rate-to-quantum divisor (tc's default is 10).
    pub r2q: u32,
    /// Length of the direct queue (None = the device's tx queue length).
    pub direct_qlen: Option<u32>,
}

impl Default for HtbOptions {
    fn default() -> Self {
        Self {
            default_class: 0,
            r2q: 10,
            direct_qlen: None,
        }
    }
}

const HTB_PARMS: u16 = 1;
const HTB_INIT: u16 = 2;
const HTB_CTAB: u16 = 3;
const HTB_RTAB: u16 = 4;
const HTB_DIRECT_QLEN: u16 = 5;
const HTB_RATE64: u16 = 6;
const HTB_CEIL64: u16 = 7;
/// `TC_HTB_PROTOVER`.
const HTB_VERSION: u32 = 3;

impl HtbOptions {
    /// The `TCA_OPTIONS` payload.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut a = Attrs::new();
        // struct tc_htb_glob { version, rate2quantum, defcls, debug, direct_pkts }
        a.attr(
            HTB_INIT,
            &u32s(&[HTB_VERSION, self.r2q, self.default_class, 0, 0]),
        );
        if let Some(q) = self.direct_qlen {
            a.u32(HTB_DIRECT_QLEN, q);
        }
        a.into_bytes()
    }
}

/// HTB class options. Rates are bytes/s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HtbClassOptions {
    /// Guaranteed rate.
    pub rate: u64,
    /// Maximum rate when borrowing (None = `rate`).
    pub ceil: Option<u64>,
    /// Bytes that may be sent at line speed (None = `rate / HZ + mtu`, tc's default).
    pub burst: Option<u32>,
    /// Same for `ceil`.
    pub cburst: Option<u32>,
    /// Priority among siblings (0 = highest).
    pub prio: u32,
    /// Bytes served per round (0 = derived by the kernel from `rate / r2q`).
    pub quantum: u32,
}

/// The MTU `tc` assumes for HTB classes (`q_htb.c`).
const HTB_MTU: u32 = 1600;

impl HtbClassOptions {
    /// A class with only a rate (ceil = rate, tc's default bursts).
    #[must_use]
    pub fn rate(rate: u64) -> Self {
        Self {
            rate,
            ceil: None,
            burst: None,
            cburst: None,
            prio: 0,
            quantum: 0,
        }
    }

    /// The `TCA_OPTIONS` payload.
    pub fn encode(&self) -> Result<Vec<u8>, TcError> {
        let ceil = self.ceil.unwrap_or(self.rate);
        if self.rate == 0 || ceil == 0 {
            return Err(TcError::InvalidParam {
                what: "htb class",
                why: "rate and ceil must be non-zero".into(),
            });
        }
        let default_burst = |r: u64| {
            u32::try_from(r / PSCHED_HZ)
                .unwrap_or(u32::MAX)
                .saturating_add(HTB_MTU)
        };
        let burst = self.burst.unwrap_or_else(|| default_burst(self.rate));
        let cburst = self.cburst.unwrap_or_else(|| default_burst(ceil));
        let (rspec, rtab) = rate_table(self.rate, HTB_MTU);
        let (cspec, ctab) = rate_table(ceil, HTB_MTU);
        // struct tc_htb_opt { rate, ceil, buffer, cbuffer, quantum, level, prio }
        let mut parms = rspec.bytes();
        parms.extend_from_slice(&cspec.bytes());
        parms.extend_from_slice(&u32s(&[
            xmittime(self.rate, burst),
            xmittime(ceil, cburst),
            self.quantum,
            0,
            self.prio,
        ]));
        let mut a = Attrs::new();
        if self.rate > u64::from(u32::MAX) {
            a.u64(HTB_RATE64, self.rate);
        }
        if ceil > u64::from(u32::MAX) {
            a.u64(HTB_CEIL64, ceil);
        }
        a.attr(HTB_PARMS, &parms)
            .attr(HTB_RTAB, &rtab)
            .attr(HTB_CTAB, &ctab);
        Ok(a.into_bytes())
    }
}
