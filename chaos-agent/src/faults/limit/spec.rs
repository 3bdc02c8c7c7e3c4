//! Limit faults: the spec section, its validation and summary.

use serde::{Deserialize, Serialize};

use crate::spec::{SpecError, trim_float};

/// The smallest CPU limit: one millisecond of every 100 ms period (v1's `cpu.cfs_quota_us` minimum
/// is 1000 µs).
pub const MIN_CPU: f64 = 0.01;
/// The smallest memory limit. Below it a process cannot make progress, and a cgroup pinned
/// there by `memory.high` only crawls: a limit is to press a workload, not to wedge it.
pub const MIN_MEMORY: u64 = 4 << 20;

/// A byte count: JSON takes a number or a string with a binary suffix (`"256M"`, `"1Gi"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Bytes(pub u64);

impl Bytes {
    /// Parses `4096`, `512K`, `256M`, `256Mi`, `256MiB`, `1G`, `1T` (binary multiples, any case).
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(digits);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size (a number of bytes, or with K, M, G, T)"))?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "ki" | "kib" => 10,
            "m" | "mi" | "mib" => 20,
            "g" | "gi" | "gib" => 30,
            "t" | "ti" | "tib" => 40,
            _ => {
                return Err(format!(
                    "{s:?}: unknown size unit (K, M, G or T: binary multiples)"
                ));
            }
        };
        n.checked_mul(1 << shift)
            .map(Self)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl std::fmt::Display for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0;
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if n >= 1 << shift && n.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}")
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Self(n)),
            Raw::S(s) => Self::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// The smallest IO bandwidth limit: one page a second. Lower would wedge every writer.
pub const MIN_IO_BPS: u64 = 4096;
/// The most `--io-limit` devices of one fault.
pub const MAX_IO_DEVICES: usize = 16;

/// `--io-limit DEVICE[:rbps=..][:wbps=..][:riops=..][:wiops=..]`: throttles on one block device
/// (v2 `io.max`, v1 `blkio.throttle.*`). The keys not given keep what the cgroup has.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoLimit {
    /// The device as given: a block device path (`/dev/vdb`, `/dev/sda1`: a partition stands
    /// for its disk, which is what the kernel throttles) or `MAJ:MIN`.
    pub device: String,
    /// Read bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbps: Option<Bytes>,
    /// Written bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wbps: Option<Bytes>,
    /// Read operations per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub riops: Option<u64>,
    /// Write operations per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wiops: Option<u64>,
}

impl IoLimit {
    /// Parses `/dev/vdb:wbps=4M:riops=100` (or `254:16:wbps=4M`): the segments with `=` are
    /// limits, the others the device.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut dev = Vec::new();
        let mut out = Self::default();
        for part in s.trim().split(':') {
            let Some((k, v)) = part.split_once('=') else {
                dev.push(part);
                continue;
            };
            let (k, v) = (k.trim(), v.trim());
            let count = || {
                v.parse::<u64>()
                    .map_err(|_| format!("{k}={v}: a number of operations per second"))
            };
            match k {
                "rbps" => out.rbps = Some(Bytes::parse(v).map_err(|e| format!("{k}: {e}"))?),
                "wbps" => out.wbps = Some(Bytes::parse(v).map_err(|e| format!("{k}: {e}"))?),
                "riops" => out.riops = Some(count()?),
                "wiops" => out.wiops = Some(count()?),
                _ => {
                    return Err(format!(
                        "{s:?}: unknown key {k:?} (rbps, wbps, riops, wiops)"
                    ));
                }
            }
        }
        out.device = dev.join(":");
        if out.device.is_empty() {
            return Err(format!(
                "{s:?}: expected DEVICE[:rbps=..][:wbps=..][:riops=..][:wiops=..]"
            ));
        }
        Ok(out)
    }

    /// The limits given, as `(io.max key, value)`.
    #[must_use]
    pub fn keys(&self) -> Vec<(&'static str, u64)> {
        [
            ("rbps", self.rbps.map(|b| b.0)),
            ("wbps", self.wbps.map(|b| b.0)),
            ("riops", self.riops),
            ("wiops", self.wiops),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect()
    }

    fn validate(&self) -> Result<(), SpecError> {
        let bad = |why: String| SpecError::BadLimit {
            what: "--io-limit",
            why,
        };
        if self.keys().is_empty() {
            return Err(bad(format!(
                "{}: give at least one of rbps=, wbps=, riops=, wiops=",
                self.device
            )));
        }
        for (k, v) in self.keys() {
            let min = if k.ends_with("bps") { MIN_IO_BPS } else { 1 };
            if v < min {
                return Err(bad(format!(
                    "{} {k}={v}: give at least {min} (a limit of zero would stop every IO, not slow it)",
                    self.device
                )));
            }
        }
        Ok(())
    }

    /// `/dev/vdb wbps=4M riops=100`.
    #[must_use]
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut out = self.device.clone();
        for (k, v) in self.keys() {
            let _ = if k.ends_with("bps") {
                write!(out, " {k}={}", Bytes(v))
            } else {
                write!(out, " {k}={v}")
            };
        }
        out
    }
}

/// Limits written into the target's cgroup for the fault's life, the old values restored after.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// CPUs the cgroup may use, fractional (`0.25`: a quarter of one CPU's time): `cpu.max`,
    /// v1 `cpu.cfs_quota_us` over the cgroup's own period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// `memory.high` (cgroup v2 only): above it the kernel reclaims and throttles the cgroup,
    /// it never kills.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_high: Option<Bytes>,
    /// `memory.max` (v1 `memory.limit_in_bytes`): the kernel reclaims, then the OOM killer
    /// acts inside the cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<Bytes>,
    /// Allow `memory_max` below what the cgroup uses now (which may kill its processes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_oom: bool,
    /// IO throttles, one per block device (v2 `io.max`, v1 `blkio.throttle.*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub io: Vec<IoLimit>,
}

impl LimitSpec {
    /// Checks what can be checked without the host (which `apply` checks: the CPU count, the
    /// memory size, the cgroup's usage, the controllers).
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.cpu.is_none()
            && self.memory_high.is_none()
            && self.memory_max.is_none()
            && self.io.is_empty()
        {
            return Err(SpecError::Inapplicable {
                what: "a limit fault needs --cpu-limit, --memory-high, --memory-max or --io-limit",
            });
        }
        if self.io.len() > MAX_IO_DEVICES {
            return Err(SpecError::BadLimit {
                what: "--io-limit",
                why: format!(
                    "{} devices: at most {MAX_IO_DEVICES} per fault",
                    self.io.len()
                ),
            });
        }
        for (i, io) in self.io.iter().enumerate() {
            io.validate()?;
            if self.io[..i].iter().any(|o| o.device == io.device) {
                return Err(SpecError::BadLimit {
                    what: "--io-limit",
                    why: format!(
                        "{} is given twice: one --io-limit per device, with all its keys",
                        io.device
                    ),
                });
            }
        }
        if let Some(c) = self.cpu
            && !(c.is_finite() && c >= MIN_CPU && c <= f64::from(u16::MAX))
        {
            return Err(SpecError::BadLimit {
                what: "--cpu-limit",
                why: format!(
                    "{} CPUs: give a number of CPUs of at least {MIN_CPU} (0.25 is a quarter of one CPU's time)",
                    trim_float(c)
                ),
            });
        }
        for (what, v) in [
            ("--memory-high", self.memory_high),
            ("--memory-max", self.memory_max),
        ] {
            if let Some(b) = v
                && b.0 < MIN_MEMORY
            {
                return Err(SpecError::BadLimit {
                    what,
                    why: format!(
                        "{b} is below {}: a process cannot make progress there",
                        Bytes(MIN_MEMORY)
                    ),
                });
            }
        }
        if let (Some(h), Some(m)) = (self.memory_high, self.memory_max)
            && h > m
        {
            return Err(SpecError::BadLimit {
                what: "--memory-high",
                why: format!("{h} is above --memory-max {m}: it would never act"),
            });
        }
        if self.allow_oom && self.memory_max.is_none() {
            return Err(SpecError::Inapplicable {
                what: "--allow-oom goes with --memory-max",
            });
        }
        Ok(())
    }

    /// `cpu limit 0.25, memory.max 256M`.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = self.cpu {
            parts.push(format!("cpu limit {} CPU", trim_float(c)));
        }
        if let Some(h) = self.memory_high {
            parts.push(format!("memory.high {h}"));
        }
        if let Some(m) = self.memory_max {
            parts.push(format!("memory.max {m}"));
        }
        for io in &self.io {
            parts.push(format!("io limit {}", io.summary()));
        }
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units_and_print_back() {
        for (s, n) in [
            ("4096", 4096),
            ("512K", 512 << 10),
            ("256M", 256 << 20),
            ("256mi", 256 << 20),
            ("256MiB", 256 << 20),
            ("1G", 1 << 30),
            ("2T", 2 << 40),
        ] {
            assert_eq!(Bytes::parse(s), Ok(Bytes(n)), "{s}");
            assert_eq!(Bytes::parse(&Bytes(n).to_string()), Ok(Bytes(n)));
        }
        for bad in ["", "M", "-1M", "1.5G", "12Q", "99999999999T"] {
            assert!(Bytes::parse(bad).is_err(), "{bad}");
        }
        let j: LimitSpec =
            serde_json::from_str(r#"{"memory_max":"256M","memory_high":1073741824}"#)
                .expect("json");
        assert_eq!(j.memory_max, Some(Bytes(256 << 20)));
        assert_eq!(j.memory_high, Some(Bytes(1 << 30)));
    }

    #[test]
    fn validation_refuses_what_no_host_could_honour() {
        let ok = |l: LimitSpec| l.validate().map_err(|e| e.to_string());
        assert!(ok(LimitSpec::default()).is_err());
        for c in [0.0, 0.001, -1.0, f64::NAN, f64::INFINITY, 1e9] {
            assert!(
                ok(LimitSpec {
                    cpu: Some(c),
                    ..LimitSpec::default()
                })
                .is_err(),
                "{c}"
            );
        }
        assert!(
            ok(LimitSpec {
                cpu: Some(0.25),
                ..LimitSpec::default()
            })
            .is_ok()
        );
        let mem = |h: Option<u64>, m: Option<u64>, allow_oom| LimitSpec {
            memory_high: h.map(Bytes),
            memory_max: m.map(Bytes),
            allow_oom,
            ..LimitSpec::default()
        };
        assert!(ok(mem(Some(1 << 20), None, false)).is_err());
        assert!(ok(mem(None, Some(64 << 20), false)).is_ok());
        assert!(ok(mem(Some(128 << 20), Some(64 << 20), false)).is_err());
        assert!(ok(mem(Some(64 << 20), None, true)).is_err());
        assert!(ok(mem(None, Some(64 << 20), true)).is_ok());
        let io = |s: &[&str]| LimitSpec {
            io: s
                .iter()
                .map(|s| IoLimit::parse(s).expect("parses"))
                .collect(),
            ..LimitSpec::default()
        };
        assert!(ok(io(&["/dev/vdb:wbps=4M"])).is_ok());
        assert!(ok(io(&["/dev/vdb:wbps=4M", "/dev/vdc:riops=10"])).is_ok());
        assert!(ok(io(&["/dev/vdb"])).is_err(), "no key");
        assert!(ok(io(&["/dev/vdb:wbps=0"])).is_err(), "zero");
        assert!(ok(io(&["/dev/vdb:riops=0"])).is_err(), "zero");
        assert!(ok(io(&["/dev/vdb:rbps=100"])).is_err(), "below a page");
        assert!(ok(io(&["/dev/vdb:wbps=4M", "/dev/vdb:rbps=4M"])).is_err());
    }

    #[test]
    fn io_limits_parse_devices_with_and_without_colons() {
        let l = IoLimit::parse("/dev/vdb:wbps=4M:riops=100").expect("parses");
        assert_eq!(l.device, "/dev/vdb");
        assert_eq!(l.keys(), vec![("wbps", 4 << 20), ("riops", 100)]);
        assert_eq!(l.summary(), "/dev/vdb wbps=4M riops=100");
        let l = IoLimit::parse("254:16:rbps=1G:wiops=5").expect("parses");
        assert_eq!(l.device, "254:16");
        assert_eq!(l.keys(), vec![("rbps", 1 << 30), ("wiops", 5)]);
        for bad in [
            "",
            ":wbps=1M",
            "/dev/x:wbps=fast",
            "/dev/x:xbps=1",
            "/dev/x:riops=1.5",
        ] {
            assert!(IoLimit::parse(bad).is_err(), "{bad}");
        }
        let j: LimitSpec =
            serde_json::from_str(r#"{"io":[{"device":"/dev/vdb","wbps":"4M"}]}"#).expect("json");
        assert_eq!(j.io[0].wbps, Some(Bytes(4 << 20)));
    }
}
