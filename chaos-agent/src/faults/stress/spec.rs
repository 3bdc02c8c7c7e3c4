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

/// Stressors the agent runs for the fault's life, in a cgroup of its own (or, with `inside`,
/// below the target's), killed with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
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
    /// Run below the target's cgroup, to press it from within (its limits and accounting
    /// apply to the stressors).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inside: bool,
}

impl StressSpec {
    /// Checks what can be checked without the host.
    pub fn validate(&self, ttl: Duration) -> Result<(), SpecError> {
        if self.cpu.is_none() && self.memory.is_none() {
            return Err(SpecError::Inapplicable {
                what: "a stress fault needs --cpu-stress or --memory-stress",
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
    }
}
