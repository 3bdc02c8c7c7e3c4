//! Typed qdisc/class/filter options and their encoders into netlink-packet-route messages.
//!
//! netlink-packet-route 0.34 has no types for netem, tbf, htb, prio or fq, so each encoder
//! builds the raw `TCA_OPTIONS` payload and sends it as one opaque attribute
//! (`TcAttribute::Other(DefaultNla)`). That also covers netem, whose `TCA_OPTIONS` starts with a
//! bare `struct tc_netem_qopt` and cannot be expressed as a list of attributes. Attribute order and
//! defaults follow iproute2 6.1 so that the fixture tests can compare bytes.

use std::time::Duration;

use netlink_packet_core::DefaultNla;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::{LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcHeader, TcMessage};
use serde::{Deserialize, Serialize};

use super::dist::Distribution;
use super::error::TcError;
use super::raw::{
    Attrs, NLA_F_NESTED, PSCHED_HZ, percent_u32, rate_table, rate32, time2tick, u32s, xmittime,
};
use super::{TC_H_CLSACT, TC_H_INGRESS_HANDLE};

/// `TCA_OPTIONS`.
const TCA_OPTIONS: u16 = 2;

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

fn check_percent(what: &'static str, v: f64) -> Result<(), TcError> {
    if (0.0..=100.0).contains(&v) {
        Ok(())
    } else {
        Err(TcError::InvalidParam {
            what,
            why: format!("{v}% is not within 0..=100"),
        })
    }
}

fn duration_ns(what: &'static str, d: Duration) -> Result<i64, TcError> {
    i64::try_from(d.as_nanos()).map_err(|_| TcError::InvalidParam {
        what,
        why: format!("{d:?} is too long"),
    })
}

/// A delay as (legacy 32-bit ticks, 64-bit ns attribute if the ticks overflow). `tc` sends only
/// the ticks while they fit (up to ~274 s); the kernel prefers `*64` attributes when present.
fn delay_fields(what: &'static str, d: Duration) -> Result<(u32, Option<i64>), TcError> {
    let ns = duration_ns(what, d)?;
    match u32::try_from(d.as_micros()) {
        Ok(us) if f64::from(us) * super::raw::TICKS_PER_USEC < f64::from(u32::MAX) => {
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

/// prio qdisc options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrioOptions {
    /// Number of bands (2..=16).
    pub bands: u32,
    /// Band for each of the 16 `skb->priority` values (`TC_PRIO_*`).
    pub priomap: [u8; 16],
}

impl Default for PrioOptions {
    fn default() -> Self {
        // The kernel's (and pfifo_fast's) default map.
        Self {
            bands: 3,
            priomap: [1, 2, 2, 2, 1, 2, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1],
        }
    }
}

impl PrioOptions {
    /// The `TCA_OPTIONS` payload: `struct tc_prio_qopt` then an empty compat nest, as
    /// iproute2's `addattr_nest_compat` writes it.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut a = Attrs::new();
        a.raw(&self.bands.to_ne_bytes())
            .raw(&self.priomap)
            .attr(TCA_OPTIONS, &[]);
        a.into_bytes()
    }
}

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

/// A qdisc to create, with its options.
#[derive(Debug, Clone, PartialEq)]
pub enum Qdisc {
    /// Network emulator.
    Netem(NetemOptions),
    /// Token bucket filter.
    Tbf(TbfOptions),
    /// Hierarchical token bucket.
    Htb(HtbOptions),
    /// Strict priority bands.
    Prio(PrioOptions),
    /// Fair queue (honours EDT timestamps).
    Fq(FqOptions),
    /// The clsact pseudo-qdisc (ingress and egress filter hooks).
    Clsact,
    /// The ingress pseudo-qdisc.
    Ingress,
    /// Any kind with options given as raw `TCA_OPTIONS` bytes (used to replay snapshots).
    Raw {
        /// Kind name.
        kind: String,
        /// Raw `TCA_OPTIONS` value.
        options: Option<Vec<u8>>,
    },
}

impl Qdisc {
    /// The kind name the kernel knows it by.
    #[must_use]
    pub fn kind(&self) -> &str {
        match self {
            Self::Netem(_) => "netem",
            Self::Tbf(_) => "tbf",
            Self::Htb(_) => "htb",
            Self::Prio(_) => "prio",
            Self::Fq(_) => "fq",
            Self::Clsact => "clsact",
            Self::Ingress => "ingress",
            Self::Raw { kind, .. } => kind,
        }
    }

    /// The `TCA_OPTIONS` value, if the kind takes one.
    pub fn options(&self) -> Result<Option<Vec<u8>>, TcError> {
        Ok(match self {
            Self::Netem(o) => Some(o.encode()?),
            Self::Tbf(o) => Some(o.encode()?),
            Self::Htb(o) => Some(o.encode()),
            Self::Prio(o) => Some(o.encode()),
            Self::Fq(o) => Some(o.encode()),
            Self::Clsact | Self::Ingress => None,
            Self::Raw { options, .. } => options.clone(),
        })
    }
}

/// A handle from major and minor (`TC_H_MAKE`).
#[must_use]
pub const fn tc_handle(major: u16, minor: u16) -> u32 {
    ((major as u32) << 16) | minor as u32
}

fn split(h: u32) -> TcHandle {
    TcHandle {
        major: (h >> 16) as u16,
        minor: (h & 0xffff) as u16,
    }
}

fn header(ifindex: u32, handle: u32, parent: u32, info: u32) -> TcHeader {
    TcHeader {
        family: AddressFamily::Unspec,
        index: ifindex as i32,
        handle: split(handle),
        parent: split(parent),
        info,
    }
}

fn with_kind_and_options(hdr: TcHeader, kind: &str, options: Option<Vec<u8>>) -> TcMessage {
    let mut attributes = vec![TcAttribute::Kind(kind.to_owned())];
    if let Some(o) = options {
        attributes.push(TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, o)));
    }
    TcMessage::from_parts(hdr, attributes)
}

/// The message for adding/replacing qdisc `q` with `handle` under `parent` on `ifindex`.
/// clsact and ingress always live at `ffff:` under `ffff:fff1`, whatever is passed.
pub fn qdisc_message(
    ifindex: u32,
    parent: u32,
    handle: u32,
    q: &Qdisc,
) -> Result<TcMessage, TcError> {
    let (parent, handle) = match q {
        Qdisc::Clsact | Qdisc::Ingress => (TC_H_CLSACT, TC_H_INGRESS_HANDLE),
        _ => (parent, handle),
    };
    Ok(with_kind_and_options(
        header(ifindex, handle, parent, 0),
        q.kind(),
        q.options()?,
    ))
}

/// The message for deleting the qdisc at `parent` (and `handle`, 0 = whatever is there).
#[must_use]
pub fn qdisc_del_message(ifindex: u32, parent: u32, handle: u32) -> TcMessage {
    TcMessage::from_parts(header(ifindex, handle, parent, 0), Vec::new())
}

/// The message for adding/replacing HTB class `classid` under `parent`.
pub fn htb_class_message(
    ifindex: u32,
    parent: u32,
    classid: u32,
    o: &HtbClassOptions,
) -> Result<TcMessage, TcError> {
    Ok(with_kind_and_options(
        header(ifindex, classid, parent, 0),
        "htb",
        Some(o.encode()?),
    ))
}

/// A class message from raw parts (snapshot replay).
#[must_use]
pub fn raw_class_message(
    ifindex: u32,
    parent: u32,
    classid: u32,
    kind: &str,
    options: Option<Vec<u8>>,
) -> TcMessage {
    with_kind_and_options(header(ifindex, classid, parent, 0), kind, options)
}

/// The message for deleting class `classid`.
#[must_use]
pub fn class_del_message(ifindex: u32, classid: u32) -> TcMessage {
    TcMessage::from_parts(header(ifindex, classid, 0, 0), Vec::new())
}

/// `ETH_P_ALL` in network byte order, as tc filters carry the protocol.
const ETH_P_ALL_BE: u16 = 0x0003u16.to_be();
// u32 / action / mirred constants.
const U32_SEL: u16 = 5;
const U32_ACT: u16 = 7;
const TC_U32_TERMINAL: u8 = 1;
const ACT_KIND: u16 = 1;
const ACT_OPTIONS: u16 = 2;
const MIRRED_PARMS: u16 = 2;
const TC_ACT_STOLEN: u32 = 4;
const TCA_EGRESS_REDIR: u32 = 1;

/// A u32 filter matching every packet (`match u32 0 0`) whose action redirects it to the egress
/// of `target_ifindex` (`action mirred egress redirect dev IFB`): the standard way to move a
/// device's ingress traffic onto an IFB, where egress qdiscs such as netem can act on it.
/// `parent` is `ffff:` for the ingress qdisc, `ffff:fff2` for clsact's ingress hook.
#[must_use]
pub fn mirred_redirect_filter_message(
    ifindex: u32,
    parent: u32,
    prio: u16,
    target_ifindex: u32,
) -> TcMessage {
    let info = (u32::from(prio) << 16) | u32::from(ETH_P_ALL_BE);
    let mut a = Attrs::new();
    a.nest(U32_ACT, |acts| {
        // Actions are a list nested by their order, starting at 1.
        acts.nest(1, |act| {
            act.attr(ACT_KIND, b"mirred\0");
            act.nest(ACT_OPTIONS | NLA_F_NESTED, |o| {
                // struct tc_mirred { index, capab, action, refcnt, bindcnt, eaction, ifindex }
                o.attr(
                    MIRRED_PARMS,
                    &u32s(&[0, 0, TC_ACT_STOLEN, 0, 0, TCA_EGRESS_REDIR, target_ifindex]),
                );
            });
        });
    });
    // struct tc_u32_sel { flags, offshift, nkeys, pad, offmask, off, offoff, hoff, hmask } + 1 key
    let mut sel = vec![TC_U32_TERMINAL, 0, 1, 0];
    sel.extend_from_slice(&[0u8; 12]);
    sel.extend_from_slice(&[0u8; 16]); // key { mask 0, val 0, off 0, offmask 0 }: matches all
    a.attr(U32_SEL, &sel);
    with_kind_and_options(
        header(ifindex, 0, parent, info),
        "u32",
        Some(a.into_bytes()),
    )
}

/// The message for deleting every filter of priority `prio` under `parent`.
#[must_use]
pub fn filter_del_message(ifindex: u32, parent: u32, prio: u16) -> TcMessage {
    let info = (u32::from(prio) << 16) | u32::from(ETH_P_ALL_BE);
    TcMessage::from_parts(header(ifindex, 0, parent, info), Vec::new())
}

/// `IFLA_INFO_KIND`.
const IFLA_INFO_KIND: u16 = 1;

/// The message for creating an IFB device called `name` (`ip link add NAME type ifb`).
#[must_use]
pub fn ifb_link_message(name: &str) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    // IFLA_INFO_KIND without the trailing NUL, as `ip` sends it (LinkInfo::Kind adds one; the
    // kernel accepts both, but byte equality with iproute2 is what the fixture test checks).
    msg.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Other(
            DefaultNla::new(IFLA_INFO_KIND, b"ifb".to_vec()),
        )]));
    msg
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
        let attrs: Vec<_> = super::super::raw::iter_attrs(&b[24..]).collect();
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
        let attrs: Vec<_> = super::super::raw::iter_attrs(&b[24..])
            .map(|(k, _)| k)
            .collect();
        assert_eq!(attrs, vec![NETEM_RATE64, NETEM_RATE]);
    }
}
