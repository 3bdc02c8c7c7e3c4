//! The vocabulary of validation shared by every fault type: [`SpecError`], the [`Limits`] a
//! spec is checked against, and the parsers of fractions. The spec itself is
//! [`crate::faults::FaultSpec`]; each fault type validates its own section.

use std::time::Duration;

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
/// The ceiling of any configured maximum TTL (`limits.max_ttl`, `--max-ttl`): a fault injector's
/// time box is hours, not years, and deadlines far beyond it would overflow the nanosecond
/// clocks the kernel-side deadline is kept in.
pub const MAX_TTL_CEILING: Duration = Duration::from_hours(7 * 24);
/// Longest label, in bytes.
pub const MAX_LABEL_BYTES: usize = 256;

impl Limits {
    /// The longest TTL a fault may have: the configured maximum, never above
    /// [`MAX_TTL_CEILING`].
    #[must_use]
    pub fn effective_max_ttl(&self) -> Duration {
        self.max_ttl.min(MAX_TTL_CEILING)
    }
}

/// Why a spec was rejected. Every variant names the offending value.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    /// A duty cycle that does not parse or cannot be honoured.
    #[error("bad --flap {input:?}: {why}")]
    BadFlap {
        /// The text given.
        input: String,
        /// Why.
        why: String,
    },
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
        "the fault does nothing: give at least one of --loss, --loss-model, --delay, --rate, --corrupt, --duplicate, --reorder, --dns"
    )]
    NoEffect,
    /// A domain filter that is not a DNS name.
    #[error("bad DNS domain {input:?}: {why}")]
    BadDomain {
        /// The text given.
        input: String,
        /// Why.
        why: String,
    },
    /// An unknown query type.
    #[error(
        "unknown DNS type {input:?}: expected a mnemonic (A, AAAA, CNAME, MX, NS, PTR, SOA, SRV, TXT, HTTPS, SVCB, CAA, ...) or TYPEnnn"
    )]
    BadDnsType {
        /// The text given.
        input: String,
    },
    /// Too many entries in a list.
    #[error("at most {max} {what} per fault, got {got}; nothing applied")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// Limit.
        max: usize,
        /// Given.
        got: usize,
    },
    /// Two fault types that cannot share one fault.
    #[error("{what}: inject them as separate faults (they compose)")]
    Incompatible {
        /// Which, and why.
        what: &'static str,
    },
    /// Interface name not valid.
    #[error("bad interface name {name:?}")]
    BadInterfaceName {
        /// The name.
        name: String,
    },
    /// The label is too long or holds control characters.
    #[error("label must be at most {max} bytes without control characters, got {got} bytes{}", if *control { " with control characters" } else { "" })]
    BadLabel {
        /// Its length in bytes.
        got: usize,
        /// The limit.
        max: usize,
        /// Whether it holds control characters.
        control: bool,
    },
}

/// Checks that a probability is finite and in (0, 1] (or [0, 1] with `allow_zero`).
pub fn check_prob(what: &'static str, v: f64, allow_zero: bool) -> Result<(), SpecError> {
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

/// clap value parser: a probability in (0, 1], as `0.1` or `10%`.
pub fn parse_probability_arg(s: &str) -> Result<f64, String> {
    let v = parse_fraction(s).ok_or_else(|| format!("{s:?} is not a number"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("{s} is outside (0, 1]"))
    }
}

/// clap value parser: a fraction in [0, 1], as `0.1` or `10%`.
pub fn parse_fraction_arg(s: &str) -> Result<f64, String> {
    let v = parse_fraction(s).ok_or_else(|| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s} is outside [0, 1]"))
    }
}

/// A float for humans: at most three decimals, no trailing zeros.
#[must_use]
pub fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}
