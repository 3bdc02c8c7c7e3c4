//! Stressor faults: the spec section, its validation and summary.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::faults::limit::Bytes;
use crate::spec::SpecError;

/// The most CPU workers one fault runs.
pub const MAX_CPU_WORKERS: u32 = 1024;
/// The smallest memory stressor.
pub const MIN_MEMORY: u64 = 1 << 20;

/// `N[@LOAD%]`: N workers, each busy for LOAD percent of every 100 ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuStress {
    /// Workers (threads).
    pub workers: u32,
    /// Percent of each 100 ms period a worker is busy, 1-100.
    pub load: u8,
}

impl CpuStress {
    /// Parses `2`, `2@50`, `2@50%`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (n, load) = match s.trim().split_once('@') {
            Some((n, l)) => (n, Some(l.trim().trim_end_matches('%'))),
            None => (s.trim(), None),
        };
        let workers: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: expected N[@LOAD%], N workers (e.g. 2@50)"))?;
        let load: u8 = match load {
            Some(l) => l
                .parse()
                .map_err(|_| format!("{s:?}: the load is a percent, 1-100"))?,
            None => 100,
        };
        Ok(Self { workers, load })
    }
}

impl std::fmt::Display for CpuStress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}%", self.workers, self.load)
    }
}

/// The smallest IO stressor rate: one block a second.
pub const MIN_IO_RATE: u64 = 1 << 16;

/// `PATH[:RATE]`: direct reads and writes on a file the agent makes in the directory `PATH`
/// (so on the filesystem, and the disk, under it), at most RATE bytes a second.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoStress {
    /// The directory the stressor's file goes in.
    pub dir: std::path::PathBuf,
    /// Bytes per second, reads and writes together (half each); none: as fast as the disk goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Bytes>,
}

impl IoStress {
    /// Parses `/var/tmp`, `/var/tmp:8M`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (dir, rate) = match s.rsplit_once(':') {
            Some((d, r)) if !d.is_empty() => (
                d,
                Some(Bytes::parse(r).map_err(|e| format!("the rate: {e}"))?),
            ),
            _ => (s, None),
        };
        if !dir.starts_with('/') {
            return Err(format!(
                "{s:?}: expected an absolute directory, PATH[:RATE] (e.g. /var/tmp:8M)"
            ));
        }
        Ok(Self {
            dir: dir.into(),
            rate,
        })
    }
}

impl std::fmt::Display for IoStress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.dir.display())?;
        match self.rate {
            Some(r) => write!(f, " at {r}/s"),
            None => write!(f, " at full speed"),
        }
    }
}

/// Stressors the agent runs for the fault's life, in a cgroup of its own (or, with `inside`,
/// below the target's), killed with it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StressSpec {
    /// CPU workers at a duty cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStress>,
    /// Memory allocated, touched and held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Bytes>,
    /// Spread the memory allocation over this long (default: at once).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub memory_ramp: Option<Duration>,
    /// Direct reads and writes on a file of the agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<IoStress>,
    /// Run below the target's cgroup, to press it from within (its limits and accounting
    /// apply to the stressors).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inside: bool,
}

impl StressSpec {
    /// Checks what can be checked without the host.
    pub fn validate(&self, ttl: Duration) -> Result<(), SpecError> {
        if self.cpu.is_none() && self.memory.is_none() && self.io.is_none() {
            return Err(SpecError::Inapplicable {
                what: "a stress fault needs --cpu-stress, --memory-stress or --io-stress",
            });
        }
        if let Some(r) = self.io.as_ref().and_then(|io| io.rate)
            && r.0 < MIN_IO_RATE
        {
            return Err(SpecError::BadLimit {
                what: "--io-stress",
                why: format!(
                    "{r}/s is below {}/s, one block a second",
                    Bytes(MIN_IO_RATE)
                ),
            });
        }
        if let Some(c) = self.cpu {
            if c.workers == 0 || c.workers > MAX_CPU_WORKERS {
                return Err(SpecError::BadLimit {
                    what: "--cpu-stress",
                    why: format!("{} workers: give 1 to {MAX_CPU_WORKERS}", c.workers),
                });
            }
            if c.load == 0 || c.load > 100 {
                return Err(SpecError::BadLimit {
                    what: "--cpu-stress",
                    why: format!("load {}%: give 1 to 100", c.load),
                });
            }
        }
        if let Some(m) = self.memory
            && m.0 < MIN_MEMORY
        {
            return Err(SpecError::BadLimit {
                what: "--memory-stress",
                why: format!("{m} is below {}", Bytes(MIN_MEMORY)),
            });
        }
        if let Some(r) = self.memory_ramp {
            if self.memory.is_none() {
                return Err(SpecError::Inapplicable {
                    what: "--memory-ramp goes with --memory-stress",
                });
            }
            if r >= ttl {
                return Err(SpecError::BadLimit {
                    what: "--memory-ramp",
                    why: format!(
                        "{} is not shorter than the TTL",
                        humantime::format_duration(r)
                    ),
                });
            }
        }
        Ok(())
    }

    /// `cpu stress 2@50%, memory stress 256M (ramp 10s)`.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = self.cpu {
            parts.push(format!("cpu stress {c}"));
        }
        if let Some(m) = self.memory {
            parts.push(match self.memory_ramp {
                Some(r) => format!("memory stress {m} (ramp {})", humantime::format_duration(r)),
                None => format!("memory stress {m}"),
            });
        }
        if let Some(io) = &self.io {
            parts.push(format!("io stress {io}"));
        }
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_stress_parses_and_prints() {
        assert_eq!(
            CpuStress::parse("2@50"),
            Ok(CpuStress {
                workers: 2,
                load: 50
            })
        );
        assert_eq!(CpuStress::parse(" 1@25% ").map(|c| c.load), Ok(25));
        assert_eq!(CpuStress::parse("3").map(|c| c.load), Ok(100));
        for bad in ["", "@50", "x", "2@", "2@x", "2@300"] {
            assert!(CpuStress::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(CpuStress::parse("2@50").expect("ok").to_string(), "2@50%");
    }

    #[test]
    fn validation() {
        let ttl = Duration::from_secs(30);
        let ok = |s: StressSpec| s.validate(ttl).is_ok();
        assert!(!ok(StressSpec::default()));
        let cpu = |workers, load| StressSpec {
            cpu: Some(CpuStress { workers, load }),
            ..StressSpec::default()
        };
        assert!(ok(cpu(1, 50)));
        assert!(!ok(cpu(0, 50)));
        assert!(!ok(cpu(1, 0)));
        assert!(!ok(cpu(MAX_CPU_WORKERS + 1, 50)));
        let mem = |m: u64, ramp: Option<u64>| StressSpec {
            memory: Some(Bytes(m)),
            memory_ramp: ramp.map(Duration::from_secs),
            ..StressSpec::default()
        };
        assert!(ok(mem(256 << 20, Some(10))));
        assert!(!ok(mem(4096, None)));
        assert!(!ok(mem(256 << 20, Some(30))));
        let io = |s: &str| StressSpec {
            io: Some(IoStress::parse(s).expect("parses")),
            ..StressSpec::default()
        };
        assert!(ok(io("/var/tmp")));
        assert!(ok(io("/var/tmp:8M")));
        assert!(!ok(io("/var/tmp:4K")));
    }

    #[test]
    fn io_stress_parses_and_prints() {
        let s = IoStress::parse("/var/tmp:8M").expect("parses");
        assert_eq!(
            (s.dir.to_str(), s.rate),
            (Some("/var/tmp"), Some(Bytes(8 << 20)))
        );
        assert_eq!(s.to_string(), "/var/tmp at 8M/s");
        let s = IoStress::parse("/mnt/data").expect("parses");
        assert_eq!(s.rate, None);
        assert_eq!(s.to_string(), "/mnt/data at full speed");
        for bad in ["", "relative/dir", "/var/tmp:fast", ":8M"] {
            assert!(IoStress::parse(bad).is_err(), "{bad}");
        }
    }
}
