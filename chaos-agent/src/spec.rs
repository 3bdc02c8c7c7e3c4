//! The user-facing description of a fault ([`FaultSpec`]), shared by the CLI, the API and the
//! journal, and its validation. Validation happens once, here; the fault modules convert a valid
//! spec into kernel configuration without re-checking.

use std::fmt;
use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use chaos_common::names::MAX_PREFIXES;

/// Port ranges one fault may name per side (source or destination). The datapath's cost per
/// packet does not depend on it (a range is a few map entries); the bound keeps one request,
/// and its journal entry, of a bounded size.
pub const MAX_PORT_RANGES: usize = 4096;

/// Which way traffic flows through the interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Packets arriving on the interface.
    Ingress,
    /// Packets leaving through the interface.
    #[default]
    Egress,
    /// Both ways.
    Both,
}

impl Direction {
    /// Whether ingress traffic is affected.
    #[must_use]
    pub fn ingress(self) -> bool {
        matches!(self, Self::Ingress | Self::Both)
    }
    /// Whether egress traffic is affected.
    #[must_use]
    pub fn egress(self) -> bool {
        matches!(self, Self::Egress | Self::Both)
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
            Self::Both => "both",
        })
    }
}

/// An L4 protocol a fault can be limited to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP and `ICMPv6`.
    Icmp,
}

/// An inclusive port range, written `80` or `8000-8100`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port (inclusive).
    pub hi: u16,
}

impl FromStr for PortRange {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::BadPortRange {
            input: s.to_owned(),
        };
        let (lo, hi) = if let Some((a, b)) = s.split_once('-') {
            (
                a.trim().parse::<u16>().map_err(|_| bad())?,
                b.trim().parse::<u16>().map_err(|_| bad())?,
            )
        } else {
            let p = s.trim().parse::<u16>().map_err(|_| bad())?;
            (p, p)
        };
        if lo == 0 || lo > hi {
            return Err(bad());
        }
        Ok(Self { lo, hi })
    }
}

impl TryFrom<String> for PortRange {
    type Error = SpecError;
    fn try_from(s: String) -> Result<Self, SpecError> {
        s.parse()
    }
}

impl From<PortRange> for String {
    fn from(r: PortRange) -> Self {
        r.to_string()
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// Which packets a fault applies to. Every list that is empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Target {
    /// Interface; `None` means the interface of the default route (resolved at apply time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    /// Direction.
    pub direction: Direction,
    /// Protocols (empty: all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub protocols: Vec<Proto>,
    /// Source prefixes (empty: all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub src: Vec<IpNet>,
    /// Destination prefixes (empty: all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dst: Vec<IpNet>,
    /// Source ports (empty: all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sports: Vec<PortRange>,
    /// Destination ports (empty: all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dports: Vec<PortRange>,
    /// Fault protected traffic too (SSH, the agent's own ports). Off unless explicitly asked.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub include_protected: bool,
}

/// Gilbert-Elliott burst loss: a two-state channel (good/bad).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GilbertElliott {
    /// Probability of moving from good to bad, per packet.
    pub p: f64,
    /// Probability of moving from bad to good, per packet.
    pub r: f64,
    /// Loss probability in the bad state (`1-h`; default 1).
    #[serde(default = "one")]
    pub loss_bad: f64,
    /// Loss probability in the good state (`1-k`; default 0).
    #[serde(default)]
    pub loss_good: f64,
}

fn one() -> f64 {
    1.0
}

impl GilbertElliott {
    /// Long-run loss rate: `pi_bad * loss_bad + pi_good * loss_good`.
    #[must_use]
    pub fn mean_loss(&self) -> f64 {
        let pi_bad = self.p / (self.p + self.r);
        pi_bad * self.loss_bad + (1.0 - pi_bad) * self.loss_good
    }
}

impl FromStr for GilbertElliott {
    type Err = SpecError;
    /// Parses `gemodel:p,r[,1-h[,1-k]]` (probabilities as fractions or percentages with `%`).
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = |why: &str| SpecError::BadLossModel {
            input: s.to_owned(),
            why: why.to_owned(),
        };
        let body = s
            .strip_prefix("gemodel:")
            .ok_or_else(|| bad("expected gemodel:p,r[,1-h[,1-k]]"))?;
        let nums: Vec<f64> = body
            .split(',')
            .map(parse_fraction)
            .collect::<Option<_>>()
            .ok_or_else(|| bad("not a number"))?;
        if !(2..=4).contains(&nums.len()) {
            return Err(bad("expected 2 to 4 values"));
        }
        Ok(Self {
            p: nums[0],
            r: nums[1],
            loss_bad: nums.get(2).copied().unwrap_or(1.0),
            loss_good: nums.get(3).copied().unwrap_or(0.0),
        })
    }
}

/// Parses `0.1` or `10%`.
#[must_use]
pub fn parse_fraction(s: &str) -> Option<f64> {
    let s = s.trim();
    let v = match s.strip_suffix('%') {
        Some(pct) => pct.trim().parse::<f64>().ok()? / 100.0,
        None => s.parse::<f64>().ok()?,
    };
    v.is_finite().then_some(v)
}

/// Packet loss.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossSpec {
    /// Probability that a matching packet is dropped, in (0, 1]. With a Gilbert-Elliott model
    /// this is ignored in favour of the model's own parameters.
    pub probability: f64,
    /// Burst-loss model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<GilbertElliott>,
}

/// Shape of the delay jitter (netem's distribution tables).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum JitterDistribution {
    /// Uniform in [delay - jitter, delay + jitter].
    #[default]
    Uniform,
    /// Normal.
    Normal,
    /// Pareto (heavy tail).
    Pareto,
    /// Pareto-normal mix.
    Paretonormal,
}

/// A bandwidth in bits per second, written like tc: `1mbit`, `500kbit`, `10gbit`, `8000bit`,
/// or in bytes per second: `125kbps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rate {
    /// Bits per second.
    pub bits_per_sec: u64,
}

impl Rate {
    /// Bytes per second.
    #[must_use]
    pub fn bytes_per_sec(self) -> u64 {
        self.bits_per_sec / 8
    }
}

impl FromStr for Rate {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::BadRate {
            input: s.to_owned(),
        };
        let t = s.trim().to_ascii_lowercase();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let v: f64 = num.parse().map_err(|_| bad())?;
        let mult = match unit {
            "" | "bit" => 1.0,
            "kbit" => 1e3,
            "mbit" => 1e6,
            "gbit" => 1e9,
            "bps" => 8.0,
            "kbps" => 8e3,
            "mbps" => 8e6,
            "gbps" => 8e9,
            _ => return Err(bad()),
        };
        let bits = v * mult;
        if !bits.is_finite() || !(8.0..=4e12).contains(&bits) {
            return Err(bad());
        }
        Ok(Self {
            bits_per_sec: bits as u64,
        })
    }
}

impl TryFrom<String> for Rate {
    type Error = SpecError;
    fn try_from(s: String) -> Result<Self, SpecError> {
        s.parse()
    }
}

impl From<Rate> for String {
    fn from(r: Rate) -> Self {
        r.to_string()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.bits_per_sec;
        if b.is_multiple_of(1_000_000_000) {
            write!(f, "{}gbit", b / 1_000_000_000)
        } else if b.is_multiple_of(1_000_000) {
            write!(f, "{}mbit", b / 1_000_000)
        } else if b.is_multiple_of(1000) {
            write!(f, "{}kbit", b / 1000)
        } else {
            write!(f, "{b}bit")
        }
    }
}

/// Which kernel mechanism implements a delay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ShapingBackend {
    /// netem if the kernel has `sch_netem`, else EDT if it has `sch_fq` (delay and uniform
    /// jitter on egress only), else refuse.
    #[default]
    Auto,
    /// netem behind the agent's HTB root; refused if `sch_netem` is missing.
    Netem,
    /// Earliest Departure Time: the egress program sets `skb->tstamp` and an `fq` root holds the
    /// packet until then. Delay and uniform jitter only, egress only; needs `sch_fq`.
    Edt,
}

impl ShapingBackend {
    /// Whether this is the default (not serialised).
    #[must_use]
    pub fn is_auto(&self) -> bool {
        *self == Self::Auto
    }
}

impl fmt::Display for ShapingBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Netem => "netem",
            Self::Edt => "edt",
        })
    }
}

/// Delay, jitter, bandwidth and the rest of the netem family. Probabilities are fractions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShapeSpec {
    /// Added one-way delay (per direction: a round trip through two faulted directions pays it
    /// twice).
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    /// Delay variation (+/-); needs a delay.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Duration>,
    /// Shape of the jitter; needs a jitter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distribution: Option<JitterDistribution>,
    /// Correlation of successive delays, [0, 1].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation: Option<f64>,
    /// Bandwidth limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// Probability of corrupting one bit of a packet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corrupt: Option<f64>,
    /// Probability of duplicating a packet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<f64>,
    /// Probability of sending a packet at once, ahead of delayed ones (needs a delay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reorder: Option<f64>,
    /// Which mechanism implements the delay (`auto` picks by what the kernel has).
    #[serde(skip_serializing_if = "ShapingBackend::is_auto")]
    pub backend: ShapingBackend,
}

impl ShapeSpec {
    /// Whether anything beyond a pure bandwidth limit is asked for (those need `sch_netem`).
    #[must_use]
    pub fn needs_netem(&self) -> bool {
        self.delay.is_some_and(|d| !d.is_zero())
            || self.corrupt.is_some()
            || self.duplicate.is_some()
            || self.reorder.is_some()
    }

    /// Whether the spec does anything.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        !self.needs_netem() && self.rate.is_none()
    }

    /// The first thing asked for that the EDT backend cannot do, if any. EDT only moves a
    /// packet's departure time: a fixed delay plus a uniform jitter. Corruption, duplication
    /// and reordering need netem; a correlation or a distribution table needs netem's state; a
    /// rate needs a shaping class, and fq's `maxrate` is per flow, not per fault.
    #[must_use]
    pub fn edt_unsupported(&self) -> Option<&'static str> {
        let non_uniform = self
            .distribution
            .is_some_and(|d| d != JitterDistribution::Uniform);
        [
            (self.corrupt.is_some(), "--corrupt"),
            (self.duplicate.is_some(), "--duplicate"),
            (self.reorder.is_some(), "--reorder"),
            (self.correlation.is_some(), "--correlation"),
            (non_uniform, "a non-uniform --distribution"),
            (self.rate.is_some(), "--rate"),
        ]
        .into_iter()
        .find_map(|(bad, what)| bad.then_some(what))
    }
}

/// A fault: what to do, to which packets, for how long.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// How long the fault lasts. Required; at most the configured maximum.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Which packets.
    #[serde(default)]
    pub target: Target,
    /// Packet loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<LossSpec>,
    /// Delay, jitter, rate, corruption, duplication, reordering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<ShapeSpec>,
    /// Apply even if the interface's qdisc tree cannot be restored exactly afterwards.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Seed for reproducible randomness (per CPU; reproducible for one flow on one CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Free text for humans (experiment name...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Limits a spec is validated against (from the agent's configuration).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Longest TTL accepted.
    pub max_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_ttl: DEFAULT_MAX_TTL,
        }
    }
}

/// Default maximum TTL.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_hours(1);

/// Why a spec was rejected. Every variant names the offending value.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    /// TTL zero.
    #[error("ttl must be greater than zero")]
    TtlZero,
    /// TTL above the maximum.
    #[error("ttl {} exceeds the maximum of {}", humantime::format_duration(*ttl), humantime::format_duration(*max))]
    TtlTooLong {
        /// Asked for.
        ttl: Duration,
        /// Configured maximum.
        max: Duration,
    },
    /// A probability outside its range.
    #[error("{what} must be in {range}, got {value}")]
    Probability {
        /// Which parameter.
        what: &'static str,
        /// The allowed range, for the message.
        range: &'static str,
        /// The value given.
        value: f64,
    },
    /// A port range that does not parse or is empty.
    #[error("bad port range {input:?}: expected PORT or LOW-HIGH with 1 <= LOW <= HIGH <= 65535")]
    BadPortRange {
        /// The text given.
        input: String,
    },
    /// Too many port ranges in one fault.
    #[error("at most {max} {what} ranges per fault, got {got}; nothing applied")]
    TooManyPorts {
        /// Which list.
        what: &'static str,
        /// Limit.
        max: usize,
        /// Given.
        got: usize,
    },
    /// Too many prefixes in one fault.
    #[error("at most {max} {what} prefixes per fault, got {got}; nothing applied")]
    TooManyPrefixes {
        /// Which list.
        what: &'static str,
        /// Limit.
        max: usize,
        /// Given.
        got: usize,
    },
    /// Ports filters with a protocol that has no ports.
    #[error("port filters only apply to tcp and udp, but --proto selects only icmp")]
    PortsWithoutPortProtocol,
    /// Bad burst-loss model.
    #[error("bad loss model {input:?}: {why}")]
    BadLossModel {
        /// The text given.
        input: String,
        /// Why.
        why: String,
    },
    /// A rate that does not parse.
    #[error(
        "bad rate {input:?}: expected a number with bit, kbit, mbit, gbit (bits/s) or bps, kbps, mbps, gbps (bytes/s), at least 8bit"
    )]
    BadRate {
        /// The text given.
        input: String,
    },
    /// A shaping parameter that needs another one.
    #[error("{what} needs {needs}")]
    Needs {
        /// The parameter given.
        what: &'static str,
        /// What it needs.
        needs: &'static str,
    },
    /// A duration out of range.
    #[error("{what} {} is above the maximum of {}", humantime::format_duration(*value), humantime::format_duration(*max))]
    DurationTooLong {
        /// Which.
        what: &'static str,
        /// Given.
        value: Duration,
        /// Maximum.
        max: Duration,
    },
    /// The EDT backend was asked for something it cannot do.
    #[error(
        "--shaping-backend edt does delay and uniform jitter only, not {what}: use --shaping-backend netem (or auto) for it"
    )]
    EdtUnsupported {
        /// What was asked for.
        what: &'static str,
    },
    /// The EDT backend was asked for ingress.
    #[error(
        "--shaping-backend edt works on egress only: a departure time is honoured only by the fq root of the device a packet leaves through, and incoming packets never pass one; use --direction egress, or --shaping-backend netem (through an IFB) for ingress delay"
    )]
    EdtIngress,
    /// Nothing to do.
    #[error(
        "the fault does nothing: give at least one of --loss, --loss-model, --delay, --rate, --corrupt, --duplicate, --reorder"
    )]
    NoEffect,
    /// Interface name not valid.
    #[error("bad interface name {name:?}")]
    BadInterfaceName {
        /// The name.
        name: String,
    },
}

fn check_prob(what: &'static str, v: f64, allow_zero: bool) -> Result<(), SpecError> {
    let ok = v.is_finite() && v <= 1.0 && if allow_zero { v >= 0.0 } else { v > 0.0 };
    if ok {
        Ok(())
    } else {
        Err(SpecError::Probability {
            what,
            range: if allow_zero { "[0, 1]" } else { "(0, 1]" },
            value: v,
        })
    }
}

impl FaultSpec {
    /// Checks everything that can be checked without touching the kernel.
    pub fn validate(&self, limits: &Limits) -> Result<(), SpecError> {
        if self.ttl.is_zero() {
            return Err(SpecError::TtlZero);
        }
        if self.ttl > limits.max_ttl {
            return Err(SpecError::TtlTooLong {
                ttl: self.ttl,
                max: limits.max_ttl,
            });
        }
        let t = &self.target;
        if let Some(name) = &t.iface
            && (name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']))
        {
            return Err(SpecError::BadInterfaceName { name: name.clone() });
        }
        for (what, list) in [("source port", &t.sports), ("destination port", &t.dports)] {
            if list.len() > MAX_PORT_RANGES {
                return Err(SpecError::TooManyPorts {
                    what,
                    max: MAX_PORT_RANGES,
                    got: list.len(),
                });
            }
        }
        let max = MAX_PREFIXES as usize;
        for (side, list) in [("source", &t.src), ("destination", &t.dst)] {
            for v6 in [false, true] {
                let what = match (side, v6) {
                    ("source", false) => "IPv4 source",
                    ("source", true) => "IPv6 source",
                    (_, false) => "IPv4 destination",
                    (_, true) => "IPv6 destination",
                };
                let n = list
                    .iter()
                    .filter(|n| matches!(n, IpNet::V6(_)) == v6)
                    .count();
                if n > max {
                    return Err(SpecError::TooManyPrefixes { what, max, got: n });
                }
            }
        }
        if (!t.sports.is_empty() || !t.dports.is_empty())
            && !t.protocols.is_empty()
            && t.protocols.iter().all(|p| *p == Proto::Icmp)
        {
            return Err(SpecError::PortsWithoutPortProtocol);
        }
        let mut effect = false;
        if let Some(loss) = &self.loss {
            effect = true;
            match &loss.model {
                None => check_prob("loss probability", loss.probability, false)?,
                Some(ge) => {
                    check_prob("gemodel p", ge.p, false)?;
                    check_prob("gemodel r", ge.r, false)?;
                    check_prob("gemodel 1-h", ge.loss_bad, true)?;
                    check_prob("gemodel 1-k", ge.loss_good, true)?;
                }
            }
        }
        if let Some(sh) = &self.shape {
            effect |= !sh.is_empty();
            let max = Duration::from_mins(1);
            for (what, d) in [("delay", sh.delay), ("jitter", sh.jitter)] {
                if let Some(d) = d
                    && d > max
                {
                    return Err(SpecError::DurationTooLong {
                        what,
                        value: d,
                        max,
                    });
                }
            }
            let has_delay = sh.delay.is_some_and(|d| !d.is_zero());
            if sh.jitter.is_some_and(|j| !j.is_zero()) && !has_delay {
                return Err(SpecError::Needs {
                    what: "--jitter",
                    needs: "--delay",
                });
            }
            if sh
                .distribution
                .is_some_and(|d| d != JitterDistribution::Uniform)
                && sh.jitter.is_none_or(|j| j.is_zero())
            {
                return Err(SpecError::Needs {
                    what: "--distribution",
                    needs: "--jitter",
                });
            }
            if sh.correlation.is_some() && !has_delay {
                return Err(SpecError::Needs {
                    what: "--correlation",
                    needs: "--delay",
                });
            }
            if sh.reorder.is_some() && !has_delay {
                return Err(SpecError::Needs {
                    what: "--reorder",
                    needs: "--delay (netem reorders by sending some packets without it)",
                });
            }
            for (what, v) in [
                ("correlation", sh.correlation),
                ("corrupt", sh.corrupt),
                ("duplicate", sh.duplicate),
                ("reorder", sh.reorder),
            ] {
                if let Some(v) = v {
                    check_prob(what, v, what == "correlation")?;
                }
            }
            match sh.backend {
                ShapingBackend::Netem if !sh.needs_netem() => {
                    return Err(SpecError::Needs {
                        what: "--shaping-backend netem",
                        needs: "--delay, --corrupt, --duplicate or --reorder",
                    });
                }
                ShapingBackend::Auto | ShapingBackend::Netem => {}
                ShapingBackend::Edt => {
                    if !has_delay {
                        return Err(SpecError::Needs {
                            what: "--shaping-backend edt",
                            needs: "--delay",
                        });
                    }
                    if let Some(what) = sh.edt_unsupported() {
                        return Err(SpecError::EdtUnsupported { what });
                    }
                    if self.target.direction.ingress() {
                        return Err(SpecError::EdtIngress);
                    }
                }
            }
        }
        if !effect {
            return Err(SpecError::NoEffect);
        }
        Ok(())
    }

    /// The fault's kind, for metrics labels.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match (&self.loss, &self.shape) {
            (Some(_), Some(_)) => "loss+shape",
            (Some(_), None) => "loss",
            (None, Some(sh)) if sh.needs_netem() => "netem",
            (None, Some(_)) => "rate",
            (None, None) => "none",
        }
    }

    /// A short human summary, e.g. `loss 10% egress on eth0`.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(l) = &self.loss {
            match &l.model {
                None => parts.push(format!("loss {}%", trim_float(l.probability * 100.0))),
                Some(ge) => parts.push(format!(
                    "burst loss (GE, mean {}%)",
                    trim_float(ge.mean_loss() * 100.0)
                )),
            }
        }
        if let Some(sh) = &self.shape {
            if let Some(d) = sh.delay {
                let mut p = format!("delay {}", humantime::format_duration(d));
                if let Some(j) = sh.jitter {
                    let _ = write!(p, " +/- {}", humantime::format_duration(j));
                }
                parts.push(p);
            }
            if let Some(r) = sh.rate {
                parts.push(format!("rate {r}"));
            }
            for (name, v) in [
                ("corrupt", sh.corrupt),
                ("duplicate", sh.duplicate),
                ("reorder", sh.reorder),
            ] {
                if let Some(v) = v {
                    parts.push(format!("{name} {}%", trim_float(v * 100.0)));
                }
            }
        }
        let iface = self.target.iface.as_deref().unwrap_or("<default route>");
        format!("{} {} on {iface}", parts.join(" + "), self.target.direction)
    }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss(p: f64) -> FaultSpec {
        FaultSpec {
            ttl: Duration::from_secs(30),
            target: Target::default(),
            loss: Some(LossSpec {
                probability: p,
                model: None,
            }),
            shape: None,
            force: false,
            seed: None,
            label: None,
        }
    }

    #[test]
    fn port_ranges_parse() {
        assert_eq!(
            "80".parse::<PortRange>().unwrap(),
            PortRange { lo: 80, hi: 80 }
        );
        assert_eq!(
            "8000-8100".parse::<PortRange>().unwrap(),
            PortRange { lo: 8000, hi: 8100 }
        );
        for bad in ["0", "10-5", "70000", "a-b", "", "-5"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn probabilities_are_checked() {
        let l = Limits::default();
        assert!(loss(0.1).validate(&l).is_ok());
        assert!(loss(1.0).validate(&l).is_ok());
        for p in [0.0, -0.1, 1.01, f64::NAN] {
            assert!(
                matches!(loss(p).validate(&l), Err(SpecError::Probability { .. })),
                "{p}"
            );
        }
    }

    #[test]
    fn ttl_is_bounded() {
        let l = Limits {
            max_ttl: Duration::from_mins(1),
        };
        let mut s = loss(0.5);
        s.ttl = Duration::ZERO;
        assert_eq!(s.validate(&l), Err(SpecError::TtlZero));
        s.ttl = Duration::from_secs(61);
        assert!(matches!(s.validate(&l), Err(SpecError::TtlTooLong { .. })));
    }

    #[test]
    fn rates_parse() {
        assert_eq!("1mbit".parse::<Rate>().unwrap().bits_per_sec, 1_000_000);
        assert_eq!("500kbit".parse::<Rate>().unwrap().bits_per_sec, 500_000);
        assert_eq!("125kbps".parse::<Rate>().unwrap().bits_per_sec, 1_000_000);
        assert_eq!("1.5gbit".parse::<Rate>().unwrap().to_string(), "1500mbit");
        for bad in ["", "fast", "1xbit", "0bit", "-1mbit"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn shaping_dependencies() {
        let l = Limits::default();
        let shape = |j: &str| -> FaultSpec {
            serde_json::from_str(&format!(r#"{{"ttl":"5s","shape":{j}}}"#)).unwrap()
        };
        assert!(
            shape(r#"{"delay":"100ms","jitter":"10ms","distribution":"normal"}"#)
                .validate(&l)
                .is_ok()
        );
        assert!(shape(r#"{"rate":"1mbit"}"#).validate(&l).is_ok());
        assert!(matches!(
            shape(r#"{"jitter":"10ms"}"#).validate(&l),
            Err(SpecError::Needs { .. })
        ));
        assert!(matches!(
            shape(r#"{"reorder":0.1}"#).validate(&l),
            Err(SpecError::Needs { .. })
        ));
        assert!(matches!(
            shape(r#"{"delay":"100ms","distribution":"pareto"}"#).validate(&l),
            Err(SpecError::Needs { .. })
        ));
        assert!(matches!(
            shape(r#"{"delay":"2m"}"#).validate(&l),
            Err(SpecError::DurationTooLong { .. })
        ));
        assert!(matches!(
            shape(r#"{"corrupt":1.5}"#).validate(&l),
            Err(SpecError::Probability { .. })
        ));
        assert_eq!(shape("{}").validate(&l), Err(SpecError::NoEffect));
    }

    #[test]
    fn edt_backend_is_delay_and_egress_only() {
        let l = Limits::default();
        let spec = |j: &str| -> FaultSpec { serde_json::from_str(j).unwrap() };
        let ok = spec(r#"{"ttl":"5s","shape":{"delay":"100ms","jitter":"5ms","backend":"edt"}}"#);
        assert!(ok.validate(&l).is_ok());
        // Round trip keeps the backend; auto is not written.
        assert!(
            serde_json::to_string(&ok)
                .unwrap()
                .contains(r#""backend":"edt""#)
        );
        let auto = spec(r#"{"ttl":"5s","shape":{"delay":"100ms"}}"#);
        assert!(!serde_json::to_string(&auto).unwrap().contains("backend"));
        for (shape, what) in [
            (
                r#"{"delay":"100ms","corrupt":0.1,"backend":"edt"}"#,
                "--corrupt",
            ),
            (
                r#"{"delay":"100ms","rate":"1mbit","backend":"edt"}"#,
                "--rate",
            ),
            (
                r#"{"delay":"100ms","jitter":"5ms","distribution":"normal","backend":"edt"}"#,
                "a non-uniform --distribution",
            ),
        ] {
            let s = spec(&format!(r#"{{"ttl":"5s","shape":{shape}}}"#));
            assert_eq!(
                s.validate(&l),
                Err(SpecError::EdtUnsupported { what }),
                "{shape}"
            );
        }
        for dir in ["ingress", "both"] {
            let s = spec(&format!(
                r#"{{"ttl":"5s","target":{{"direction":"{dir}"}},"shape":{{"delay":"10ms","backend":"edt"}}}}"#
            ));
            assert_eq!(s.validate(&l), Err(SpecError::EdtIngress));
        }
        for shape in [
            r#"{"rate":"1mbit","backend":"netem"}"#,
            r#"{"rate":"1mbit","backend":"edt"}"#,
        ] {
            let s = spec(&format!(r#"{{"ttl":"5s","shape":{shape}}}"#));
            assert!(
                matches!(s.validate(&l), Err(SpecError::Needs { .. })),
                "{shape}"
            );
        }
    }

    #[test]
    fn gemodel_parses() {
        let ge: GilbertElliott = "gemodel:5%,30%,90%,1%".parse().unwrap();
        assert!((ge.p - 0.05).abs() < 1e-9 && (ge.loss_good - 0.01).abs() < 1e-9);
        assert!((ge.mean_loss() - (0.05 / 0.35 * 0.9 + 0.30 / 0.35 * 0.01)).abs() < 1e-9);
        assert!("gemodel:0.1".parse::<GilbertElliott>().is_err());
        assert!("bernoulli:0.1".parse::<GilbertElliott>().is_err());
    }

    #[test]
    fn json_round_trip_and_unknown_fields() {
        let s = loss(0.25);
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<FaultSpec>(&j).unwrap(), s);
        assert!(
            serde_json::from_str::<FaultSpec>(r#"{"ttl":"1s","los":{"probability":0.1}}"#).is_err()
        );
    }
}
