//! netem: delay, jitter, loss, duplication, corruption, reordering, rate and slotting, and the
//! queue limit a fault needs ([`netem_limit`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::super::dist::Distribution;
use super::super::error::TcError;
use super::super::raw::{Attrs, NLA_F_NESTED, percent_u32, rate32, time2tick, u32s};
use super::common::{check_percent, duration_ns};

/// How netem drops packets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetemLoss {
    /// Independent loss with probability `percent`, optionally correlated with the previous draw.
    Random {
        /// Loss probability in percent.
        percent: f64,
        /// Correlation in percent (netem's correlation is known to be statistically weak).
        correlation: f64,
    },
    /// Gilbert-Elliott two-state model, in `tc`'s `loss gemodel p r 1-h 1-k` terms.
    GilbertElliott {
        /// Probability (percent) of moving good -> bad.
        p: f64,
        /// Probability (percent) of moving bad -> good.
        r: f64,
        /// Loss probability (percent) in the bad state (`1-h`).
        loss_bad: f64,
        /// Loss probability (percent) in the good state (`1-k`).
        loss_good: f64,
    },
}

/// netem's rate limiter (`TCA_NETEM_RATE`, `TCA_NETEM_RATE64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetemRate {
    /// Bytes per second.
    pub bytes_per_sec: u64,
    /// Per-packet overhead added to the size (may be negative).
    pub packet_overhead: i32,
    /// Link-layer cell size (0 = none).
    pub cell_size: u32,
    /// Per-cell overhead.
    pub cell_overhead: i32,
}

/// netem's slotting (`TCA_NETEM_SLOT`, 4.19+): packets leave in bursts ("slots").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetemSlot {
    /// Minimum gap between slots.
    pub min_delay: Duration,
    /// Maximum gap between slots.
    pub max_delay: Duration,
    /// Packets per slot (0 = unlimited).
    pub max_packets: u32,
    /// Bytes per slot (0 = unlimited).
    pub max_bytes: u32,
}

/// All netem parameters. Probabilities and correlations are percentages (0..=100).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetemOptions {
    /// Added delay.
    pub delay: Duration,
    /// Delay variation (+/-).
    pub jitter: Duration,
    /// Correlation of successive delays, percent.
    pub delay_correlation: f64,
    /// Shape of the jitter.
    pub distribution: Distribution,
    /// Packet loss model.
    pub loss: Option<NetemLoss>,
    /// Duplication probability, percent.
    pub duplicate: f64,
    /// Duplication correlation, percent.
    pub duplicate_correlation: f64,
    /// Single-bit corruption probability, percent.
    pub corrupt: f64,
    /// Corruption correlation, percent.
    pub corrupt_correlation: f64,
    /// Probability (percent) that a packet is sent immediately, ahead of delayed ones.
    pub reorder: f64,
    /// Reorder correlation, percent.
    pub reorder_correlation: f64,
    /// Reorder every `gap`-th packet (0 = tc's default of 1 when reordering).
    pub gap: u32,
    /// Rate limit inside netem.
    pub rate: Option<NetemRate>,
    /// Slotting.
    pub slot: Option<NetemSlot>,
    /// Queue limit in packets (see [`netem_limit`]).
    pub limit: u32,
}

impl Default for NetemOptions {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            delay_correlation: 0.0,
            distribution: Distribution::Uniform,
            loss: None,
            duplicate: 0.0,
            duplicate_correlation: 0.0,
            corrupt: 0.0,
            corrupt_correlation: 0.0,
            reorder: 0.0,
            reorder_correlation: 0.0,
            gap: 0,
            rate: None,
            slot: None,
            // netem's own default.
            limit: 1000,
        }
    }
}

// TCA_NETEM_* (include/uapi/linux/pkt_sched.h).
const NETEM_CORR: u16 = 1;
const NETEM_DELAY_DIST: u16 = 2;
const NETEM_REORDER: u16 = 3;
const NETEM_CORRUPT: u16 = 4;
const NETEM_LOSS: u16 = 5;
const NETEM_RATE: u16 = 6;
const NETEM_RATE64: u16 = 8;
const NETEM_LATENCY64: u16 = 10;
const NETEM_JITTER64: u16 = 11;
const NETEM_SLOT: u16 = 12;
const NETEM_LOSS_GE: u16 = 2;

/// A delay as (legacy 32-bit ticks, 64-bit ns attribute if the ticks overflow). `tc` sends only
/// the ticks while they fit (up to ~274 s); the kernel prefers `*64` attributes when present.
fn delay_fields(what: &'static str, d: Duration) -> Result<(u32, Option<i64>), TcError> {
    let ns = duration_ns(what, d)?;
    match u32::try_from(d.as_micros()) {
        Ok(us) if f64::from(us) * super::super::raw::TICKS_PER_USEC < f64::from(u32::MAX) => {
            Ok((time2tick(us), None))
        }
        _ => Ok((u32::MAX, Some(ns))),
    }
}

impl NetemOptions {
    /// Checks ranges and the combinations `tc` refuses.
    pub fn validate(&self) -> Result<(), TcError> {
        for (what, v) in [
            ("delay correlation", self.delay_correlation),
            ("duplicate", self.duplicate),
            ("duplicate correlation", self.duplicate_correlation),
            ("corrupt", self.corrupt),
            ("corrupt correlation", self.corrupt_correlation),
            ("reorder", self.reorder),
            ("reorder correlation", self.reorder_correlation),
        ] {
            check_percent(what, v)?;
        }
        // The same combinations `tc` refuses, with its reasons: the kernel would accept them but
        // they do nothing useful.
        if self.reorder > 0.0 && self.delay.is_zero() {
            return Err(TcError::InvalidParam {
                what: "reorder",
                why: "reordering needs a delay".into(),
            });
        }
        if self.distribution != Distribution::Uniform
            && (self.delay.is_zero() || self.jitter.is_zero())
        {
            return Err(TcError::InvalidParam {
                what: "distribution",
                why: "a delay distribution needs both delay and jitter".into(),
            });
        }
        match self.loss {
            Some(NetemLoss::Random {
                percent,
                correlation,
            }) => {
                check_percent("loss", percent)?;
                check_percent("loss correlation", correlation)?;
            }
            Some(NetemLoss::GilbertElliott {
                p,
                r,
                loss_bad,
                loss_good,
            }) => {
                for (what, v) in [
                    ("ge p", p),
                    ("ge r", r),
                    ("ge loss_bad", loss_bad),
                    ("ge loss_good", loss_good),
                ] {
                    check_percent(what, v)?;
                }
            }
            None => {}
        }
        Ok(())
    }

    /// The `TCA_OPTIONS` payload: `struct tc_netem_qopt` followed by attributes.
    pub fn encode(&self) -> Result<Vec<u8>, TcError> {
        self.validate()?;
        let (latency, latency64) = delay_fields("delay", self.delay)?;
        let (jitter, jitter64) = delay_fields("jitter", self.jitter)?;
        let (loss, loss_corr) = match self.loss {
            Some(NetemLoss::Random {
                percent,
                correlation,
            }) => (percent_u32(percent), percent_u32(correlation)),
            // The GE model goes in its own attribute below; qopt.loss stays 0.
            Some(NetemLoss::GilbertElliott { .. }) | None => (0, 0),
        };
        let gap = if self.reorder > 0.0 && self.gap == 0 {
            1
        } else {
            self.gap
        };
        let mut a = Attrs::new();
        // struct tc_netem_qopt { latency, limit, loss, gap, duplicate, jitter }
        a.raw(&u32s(&[
            latency,
            self.limit,
            loss,
            gap,
            percent_u32(self.duplicate),
            jitter,
        ]));
        let delay_corr = percent_u32(self.delay_correlation);
        let dup_corr = percent_u32(self.duplicate_correlation);
        if delay_corr != 0 || loss_corr != 0 || dup_corr != 0 {
            a.attr(NETEM_CORR, &u32s(&[delay_corr, loss_corr, dup_corr]));
        }
        if self.reorder > 0.0 {
            a.attr(
                NETEM_REORDER,
                &u32s(&[
                    percent_u32(self.reorder),
                    percent_u32(self.reorder_correlation),
                ]),
            );
        }
        if self.corrupt > 0.0 {
            a.attr(
                NETEM_CORRUPT,
                &u32s(&[
                    percent_u32(self.corrupt),
                    percent_u32(self.corrupt_correlation),
                ]),
            );
        }
        if let Some(s) = self.slot {
            let mut v = Vec::with_capacity(40);
            v.extend_from_slice(&duration_ns("slot min", s.min_delay)?.to_ne_bytes());
            v.extend_from_slice(&duration_ns("slot max", s.max_delay)?.to_ne_bytes());
            v.extend_from_slice(&s.max_packets.to_ne_bytes());
            v.extend_from_slice(&s.max_bytes.to_ne_bytes());
            // dist_delay, dist_jitter: only for `slot distribution`, which we do not offer.
            v.extend_from_slice(&[0u8; 16]);
            a.attr(NETEM_SLOT, &v);
        }
        if let Some(NetemLoss::GilbertElliott {
            p,
            r,
            loss_bad,
            loss_good,
        }) = self.loss
        {
            // The kernel's h is the probability of *not* losing in the bad state; k1 is the loss
            // probability in the good state (iproute2 q_netem.c, "gemodel").
            let h = u32::MAX - percent_u32(loss_bad);
            a.nest(NETEM_LOSS | NLA_F_NESTED, |l| {
                l.attr(
                    NETEM_LOSS_GE,
                    &u32s(&[percent_u32(p), percent_u32(r), h, percent_u32(loss_good)]),
                );
            });
        }
        if let Some(r) = self.rate {
            if r.bytes_per_sec > u64::from(u32::MAX) {
                a.u64(NETEM_RATE64, r.bytes_per_sec);
            }
            a.attr(
                NETEM_RATE,
                &u32s(&[
                    rate32(r.bytes_per_sec),
                    r.packet_overhead as u32,
                    r.cell_size,
                    r.cell_overhead as u32,
                ]),
            );
        }
        if let Some(ns) = latency64 {
            a.attr(NETEM_LATENCY64, &ns.to_ne_bytes());
        }
        if let Some(ns) = jitter64 {
            a.attr(NETEM_JITTER64, &ns.to_ne_bytes());
        }
        if let Some(table) = self.distribution.table() {
            let bytes: Vec<u8> = table.iter().flat_map(|v| v.to_ne_bytes()).collect();
            a.attr(NETEM_DELAY_DIST, &bytes);
        }
        Ok(a.into_bytes())
    }
}

/// Sizes netem's queue (`limit`, packets) for a fault so that the fault itself does not drop
/// packets on a busy link.
///
/// netem holds every packet for `delay + jitter`, so its backlog is the number of packets that
/// arrive during that time: `(delay + jitter) * packet_rate`. The arrival rate is bounded by the
/// link (`link_rate_guess`, bits/s) and, when netem rate-limits (`rate_bps`, bits/s), a TCP sender
/// converges to that rate, so the smaller of the two is used. Packets are assumed full-sized
/// (1500 bytes; GSO super-packets only make the count smaller) and the result is doubled as
/// headroom for bursts and for small packets. It is never below netem's default of 1000 and never
/// above 1,000,000 (a bound on the memory a stuck queue can pin).
#[must_use]
pub fn netem_limit(
    delay: Duration,
    jitter: Duration,
    rate_bps: Option<u64>,
    link_rate_guess: u64,
) -> u32 {
    const FLOOR: u64 = 1000;
    const CAP: u64 = 1_000_000;
    const PACKET_BITS: u128 = 1500 * 8;
    let rate = rate_bps.map_or(link_rate_guess, |r| r.min(link_rate_guess));
    let window_ns = delay.saturating_add(jitter).as_nanos();
    let packets = (window_ns * u128::from(rate)).div_ceil(1_000_000_000 * PACKET_BITS);
    let limit = u64::try_from(packets.saturating_mul(2)).unwrap_or(CAP);
    limit.clamp(FLOOR, CAP) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netem_limit_scales_with_delay_and_rate() {
        // 100 ms at 10 Gbit/s: 83,334 full-size packets in flight, doubled.
        assert_eq!(
            netem_limit(
                Duration::from_millis(100),
                Duration::ZERO,
                None,
                10_000_000_000
            ),
            166_668
        );
        // netem's own rate bounds the arrival rate: 1 Mbit/s for 1 s is 84 packets -> floor.
        assert_eq!(
            netem_limit(
                Duration::from_secs(1),
                Duration::ZERO,
                Some(1_000_000),
                10_000_000_000
            ),
            1000
        );
        // Jitter counts: 200+50 ms at 1 Gbit/s = 20,834 packets, doubled.
        assert_eq!(
            netem_limit(
                Duration::from_millis(200),
                Duration::from_millis(50),
                None,
                1_000_000_000
            ),
            41_668
        );
        // Capped.
        assert_eq!(
            netem_limit(
                Duration::from_mins(1),
                Duration::ZERO,
                None,
                100_000_000_000
            ),
            1_000_000
        );
        assert_eq!(netem_limit(Duration::ZERO, Duration::ZERO, None, 0), 1000);
    }

    #[test]
    fn netem_rejects_what_tc_rejects() {
        let bad = [
            NetemOptions {
                reorder: 5.0,
                ..NetemOptions::default()
            },
            NetemOptions {
                delay: Duration::from_millis(10),
                distribution: Distribution::Normal,
                ..NetemOptions::default()
            },
            NetemOptions {
                duplicate: 101.0,
                ..NetemOptions::default()
            },
            NetemOptions {
                loss: Some(NetemLoss::Random {
                    percent: -1.0,
                    correlation: 0.0,
                }),
                ..NetemOptions::default()
            },
        ];
        for o in bad {
            assert!(
                matches!(o.encode(), Err(TcError::InvalidParam { .. })),
                "{o:?}"
            );
        }
    }

    #[test]
    fn netem_long_delays_use_64_bit_attributes() {
        // 300 s does not fit 32-bit psched ticks (max ~274 s).
        let o = NetemOptions {
            delay: Duration::from_mins(5),
            ..NetemOptions::default()
        };
        let b = o.encode().unwrap();
        assert_eq!(&b[0..4], &u32::MAX.to_ne_bytes());
        let attrs: Vec<_> = super::super::super::raw::iter_attrs(&b[24..]).collect();
        assert_eq!(
            attrs,
            vec![(NETEM_LATENCY64, &300_000_000_000i64.to_ne_bytes()[..])]
        );
    }

    #[test]
    fn netem_fast_rate_uses_rate64() {
        let o = NetemOptions {
            rate: Some(NetemRate {
                bytes_per_sec: 5_000_000_000,
                packet_overhead: 0,
                cell_size: 0,
                cell_overhead: 0,
            }),
            ..NetemOptions::default()
        };
        let b = o.encode().unwrap();
        let attrs: Vec<_> = super::super::super::raw::iter_attrs(&b[24..])
            .map(|(k, _)| k)
            .collect();
        assert_eq!(attrs, vec![NETEM_RATE64, NETEM_RATE]);
    }
}
