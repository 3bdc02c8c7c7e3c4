//! Delay, jitter, bandwidth, corruption, duplication and reordering: the spec, its validation
//! and its summary.

use std::fmt;
use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::spec::{SpecError, check_prob, trim_float};
use crate::target::Target;

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

impl ShapeSpec {
    /// Checks the values and how they depend on each other (and on the target's direction,
    /// for the EDT backend).
    pub fn validate(&self, target: &Target) -> Result<(), SpecError> {
        let sh = self;
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
                if target.hook_direction().ingress() {
                    return Err(SpecError::EdtIngress);
                }
            }
        }
        Ok(())
    }

    /// The summary's parts, e.g. `delay 100ms +/- 10ms`, `rate 1mbit`.
    #[must_use]
    pub fn summary(&self) -> Vec<String> {
        let sh = self;
        let mut parts = Vec::new();
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
        parts
    }
}
