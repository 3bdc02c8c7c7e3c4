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
    #[error("bad --flap {}: {why}", shown(input))]
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
    #[error(
        "bad port range {}: expected PORT or LOW-HIGH with 1 <= LOW <= HIGH <= 65535",
        shown(input)
    )]
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
    #[error("bad loss model {}: {why}", shown(input))]
    BadLossModel {
        /// The text given.
        input: String,
        /// Why.
        why: String,
    },
    /// A rate that does not parse.
    #[error(
        "bad rate {}: expected a number with bit, kbit, mbit, gbit (bits/s) or bps, kbps, mbps, gbps (bytes/s), at least 8bit",
        shown(input)
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
        "the fault does nothing: give at least one of --loss, --loss-model, --delay, --rate, --corrupt, --duplicate, --reorder, --dns, --refuse, --reset, --cpu-limit, --memory-high, --memory-max, --cpu-stress, --memory-stress"
    )]
    NoEffect,
    /// A domain filter that is not a DNS name.
    #[error("bad DNS domain {}: {why}", shown(input))]
    BadDomain {
        /// The text given.
        input: String,
        /// Why.
        why: String,
    },
    /// An unknown query type.
    #[error(
        "unknown DNS type {}: expected a mnemonic (A, AAAA, CNAME, MX, NS, PTR, SOA, SRV, TXT, HTTPS, SVCB, CAA, ...) or TYPEnnn",
        shown(input)
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
    /// A filter or option that does not apply to the fault's kind.
    #[error("{what}")]
    Inapplicable {
        /// What, and why.
        what: &'static str,
    },
    /// Two fault types that cannot share one fault.
    #[error("{what}: inject them as separate faults (they compose)")]
    Incompatible {
        /// Which, and why.
        what: &'static str,
    },
    /// A cgroup path that cannot name a cgroup v2 directory.
    #[error("bad cgroup path {}: a path in the cgroup v2 hierarchy such as /system.slice/app.service, without `..`, at most {} levels deep", shown(path), chaos_common::MAX_CGROUP_LEVEL - 1)]
    BadCgroupPath {
        /// The path.
        path: String,
    },
    /// The cgroup to scope to does not exist.
    #[error("no cgroup {} in the cgroup v2 hierarchy ({why})", shown(path))]
    NoSuchCgroup {
        /// The path.
        path: String,
        /// What the lookup said.
        why: String,
    },
    /// The unit to scope to has no cgroup, or its name is no unit name.
    #[error("cannot scope to unit {}: {why}", shown(name))]
    BadUnit {
        /// The name as given.
        name: String,
        /// Why.
        why: String,
    },
    /// The container to scope to was not found, or the prefix names several.
    #[error("cannot scope to container {}: {why}", shown(id))]
    BadContainer {
        /// The id or prefix as given.
        id: String,
        /// Why.
        why: String,
    },
    /// The pod to scope to was not found through the node's CRI socket, or has no cgroup of
    /// its own to scope to.
    #[error("cannot scope to pod {}: {why}", shown(pod))]
    BadPod {
        /// `NAMESPACE/NAME` as given.
        pod: String,
        /// Why.
        why: String,
    },
    /// The process to scope to does not exist or is in no cgroup v2.
    #[error("cannot scope to pid {pid}: {why}")]
    BadPid {
        /// The pid.
        pid: u32,
        /// Why.
        why: String,
    },
    /// Interface name not valid.
    #[error("bad interface name {}", shown(name))]
    BadInterfaceName {
        /// The name.
        name: String,
    },
    /// A resource limit no host could honour, or this host cannot.
    #[error("bad {what}: {why}; nothing applied")]
    BadLimit {
        /// The flag.
        what: &'static str,
        /// Why.
        why: String,
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
        Err(format!("{} is outside (0, 1]", as_given(s, v)))
    }
}

/// clap value parser: a fraction in [0, 1], as `0.1` or `10%`.
pub fn parse_fraction_arg(s: &str) -> Result<f64, String> {
    let v = parse_fraction(s).ok_or_else(|| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{} is outside [0, 1]", as_given(s, v)))
    }
}

/// A refused value as the user wrote it (`101%`), unless it holds a control character the
/// parser trimmed or skipped (`$'\n1.5'`): then the value parsed, so that the message stays one
/// line (found by fuzzing).
pub fn as_given(s: &str, parsed: impl std::fmt::Display) -> String {
    if s.contains(char::is_control) {
        parsed.to_string()
    } else {
        s.to_owned()
    }
}

/// How many characters of a rejected value an error message repeats.
pub const SHOWN_CHARS: usize = 256;

/// A rejected value as error messages quote it: escaped as `{:?}` does (a newline in the input
/// cannot split the one error line), and cut after [`SHOWN_CHARS`] characters with the whole
/// length said, so a megabyte of garbage in a request is not echoed back into the answer and
/// the log.
#[must_use]
pub fn shown(s: &str) -> String {
    if s.chars().count() <= SHOWN_CHARS {
        return format!("{s:?}");
    }
    let head: String = s.chars().take(SHOWN_CHARS).collect();
    format!("{head:?}... ({} bytes)", s.len())
}

/// A message made one line, to answer and to log: control characters escaped as `{:?}` escapes
/// them (parsers quote a field name or value as it is, newline included), and a message longer
/// than `max` characters (at least 120) cut in the middle, keeping its end, which often says
/// where.
#[must_use]
pub fn one_line(msg: &str, max: usize) -> String {
    let escaped: String = msg
        .chars()
        .flat_map(|c| {
            let esc: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            esc
        })
        .collect();
    let n = escaped.chars().count();
    let max = max.max(120);
    if n <= max {
        return escaped;
    }
    let head: String = escaped.chars().take(max - 60).collect();
    let tail: String = escaped.chars().skip(n - 55).collect();
    format!("{head} ... {tail}")
}

/// clap value parser: a humantime duration (`500ms`, `30s`, `5m`). humantime's own message for
/// a number it cannot hold ("number is too large or cannot be represented without a lack of
/// precision (values below 1ns are not supported)") reads as if the value were too small;
/// this one says what is wrong.
pub fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => format!(
            "{} is out of range: too long to be a duration (or finer than 1ns)",
            shown(s)
        ),
        other => other.to_string(),
    })
}

/// A float for humans: at most three decimals, no trailing zeros.
#[must_use]
pub fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_or_multi_line_values_are_quoted_short_on_one_line() {
        assert_eq!(shown("80-a"), r#""80-a""#);
        assert_eq!(shown("a\nb"), r#""a\nb""#);
        let long = "1".repeat(100_000);
        let s = shown(&long);
        assert!(s.len() < 300 && s.ends_with("... (100000 bytes)"), "{s}");
        let e = SpecError::BadPortRange { input: long }.to_string();
        assert!(e.len() < 400, "{e}");
        // A DNS name at its longest is shown whole.
        let name = "a".repeat(253);
        assert_eq!(shown(&name), format!("{name:?}"));
    }

    #[test]
    fn messages_become_one_bounded_line() {
        assert_eq!(
            one_line("unknown field `a\nb`", 400),
            r"unknown field `a\nb`"
        );
        let long = format!("unknown field `{}` at line 1 column 9", "x".repeat(10_000));
        let s = one_line(&long, 400);
        assert!(s.chars().count() <= 400, "{}", s.len());
        assert!(
            s.starts_with("unknown field `xxx") && s.ends_with("` at line 1 column 9"),
            "{s}"
        );
    }

    #[test]
    fn overflowing_durations_say_so() {
        assert_eq!(parse_duration_arg("90s"), Ok(Duration::from_secs(90)));
        for huge in ["1000000000000y", "18446744073709551616s"] {
            let e = parse_duration_arg(huge).expect_err(huge);
            assert!(e.contains("too long to be a duration"), "{e}");
        }
        assert!(parse_duration_arg("5 parsecs").is_err());
    }
}
