//! `--flap ON/OFF`: a duty cycle for any fault. The fault acts for ON, rests for OFF, and so on
//! until its TTL; the first active phase starts at inject.
//!
//! Faults in the datapath get it in the kernel (`F_FLAP`: the programs compute the phase of
//! every packet from the fault's start time), so the schedule is exact, costs no wake-ups and
//! holds while the agent is dead, up to the kernel-side deadline. [`Flap::phase`] is the same
//! arithmetic for what user space shows (status, the countdown, metrics).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chaos_common::{F_FLAP, FaultSlot};
use serde::{Deserialize, Serialize};

use crate::spec::SpecError;

/// Shortest phase accepted: below it the schedule is finer than the timer slack of the
/// clients that would observe it, and a typo (`2ms/3s` for `2s/3s`) is more likely than intent.
pub const MIN_PHASE: Duration = Duration::from_millis(10);

/// An on/off duty cycle, written `ON/OFF` with humantime durations (`2s/3s`, `500ms/1m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Flap {
    /// How long each active phase lasts.
    pub on: Duration,
    /// How long each resting phase lasts.
    pub off: Duration,
}

/// Where a fault is in its duty cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Phase {
    /// Acting (true) or resting.
    pub active: bool,
    /// Active phases begun so far, this one included when active (the first is 1).
    pub active_phases: u64,
    /// Time left in the current phase.
    #[serde(with = "humantime_serde")]
    pub remaining: Duration,
}

impl Flap {
    /// One active plus one resting phase.
    #[must_use]
    pub fn period(&self) -> Duration {
        self.on.saturating_add(self.off)
    }

    /// Refuses a cycle that cannot be honoured within `ttl`: a zero or too short phase, or a
    /// whole period longer than the TTL (the fault would never rest, or never come back).
    pub fn validate(&self, ttl: Duration) -> Result<(), SpecError> {
        let bad = |why: String| SpecError::BadFlap {
            input: self.to_string(),
            why,
        };
        if self.on < MIN_PHASE || self.off < MIN_PHASE {
            return Err(bad(format!(
                "both phases must be at least {}",
                humantime::format_duration(MIN_PHASE)
            )));
        }
        if self.period() > ttl {
            return Err(bad(format!(
                "ON + OFF ({}) is longer than the ttl ({})",
                humantime::format_duration(self.period()),
                humantime::format_duration(ttl)
            )));
        }
        Ok(())
    }

    /// The phase `elapsed` after the fault started.
    #[must_use]
    pub fn phase(&self, elapsed: Duration) -> Phase {
        let period = self.period().as_nanos().max(1);
        let t = elapsed.as_nanos();
        let cycles = t / period;
        let into = t % period;
        let on = self.on.as_nanos();
        let nanos = |n: u128| Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX));
        let cycles = u64::try_from(cycles).unwrap_or(u64::MAX);
        if into < on {
            Phase {
                active: true,
                active_phases: cycles.saturating_add(1),
                remaining: nanos(on - into),
            }
        } else {
            Phase {
                active: false,
                active_phases: cycles.saturating_add(1),
                remaining: nanos(period - into),
            }
        }
    }

    /// Sets the slot's duty cycle; `start_ns` is the fault's start on `CLOCK_MONOTONIC`.
    pub fn configure(&self, cfg: &mut FaultSlot, start_ns: u64) {
        cfg.flags |= F_FLAP;
        cfg.start_ns = start_ns;
        cfg.flap_on_ns = saturating_nanos(self.on);
        cfg.flap_period_ns = saturating_nanos(self.period());
    }
}

fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl fmt::Display for Flap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            humantime::format_duration(self.on),
            humantime::format_duration(self.off)
        )
    }
}

impl FromStr for Flap {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = |why: &str| SpecError::BadFlap {
            input: s.to_owned(),
            why: why.to_owned(),
        };
        let (on, off) = s
            .split_once('/')
            .ok_or_else(|| bad("expected ON/OFF, e.g. 2s/3s"))?;
        let parse =
            |p: &str| humantime::parse_duration(p.trim()).map_err(|e| bad(&format!("{p:?}: {e}")));
        Ok(Self {
            on: parse(on)?,
            off: parse(off)?,
        })
    }
}

impl TryFrom<String> for Flap {
    type Error = SpecError;
    fn try_from(s: String) -> Result<Self, SpecError> {
        s.parse()
    }
}

impl From<Flap> for String {
    fn from(f: Flap) -> Self {
        f.to_string()
    }
}

/// Calls `edge(active)` at every phase edge of `flap` until `ttl`, counting from `start` (a
/// fault's first active phase begins at `start`, so the first call is the first rest). For the
/// faults whose edges are user-space work (limits written and lifted, stressors stopped and
/// started); the packet faults' phases are computed in the kernel.
pub async fn at_edges(
    flap: Flap,
    ttl: Duration,
    start: tokio::time::Instant,
    mut edge: impl FnMut(bool),
) {
    let mut active = true;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= ttl {
            return;
        }
        let p = flap.phase(elapsed);
        if p.active != active {
            active = p.active;
            edge(active);
        }
        // Just past the edge, so that the phase read on waking is the next one.
        tokio::time::sleep(p.remaining + Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flap(s: &str) -> Flap {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints() {
        let f = flap("2s/3s");
        assert_eq!(
            (f.on, f.off),
            (Duration::from_secs(2), Duration::from_secs(3))
        );
        assert_eq!(f.to_string(), "2s/3s");
        assert_eq!(flap("500ms/1m").period(), Duration::from_millis(60_500));
        for bad in ["2s", "2s/", "/3s", "2x/3s", "2s/3s/4s", ""] {
            assert!(bad.parse::<Flap>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn validation() {
        let ttl = Duration::from_secs(10);
        assert!(flap("2s/3s").validate(ttl).is_ok());
        assert!(flap("5s/5s").validate(ttl).is_ok());
        assert!(flap("6s/5s").validate(ttl).is_err(), "longer than the ttl");
        assert!(flap("0s/3s").validate(ttl).is_err(), "zero ON");
        assert!(flap("2s/0s").validate(ttl).is_err(), "zero OFF");
        assert!(flap("5ms/3s").validate(ttl).is_err(), "too short");
    }

    #[test]
    fn phases() {
        let f = flap("2s/3s");
        let at = |ms| f.phase(Duration::from_millis(ms));
        assert_eq!(
            at(0),
            Phase {
                active: true,
                active_phases: 1,
                remaining: Duration::from_secs(2)
            }
        );
        assert!(at(1999).active);
        assert_eq!(
            at(2000),
            Phase {
                active: false,
                active_phases: 1,
                remaining: Duration::from_secs(3)
            }
        );
        assert!(!at(4999).active);
        assert_eq!(at(5000).active_phases, 2);
        assert!(at(5000).active);
    }

    #[test]
    fn slot_fields() {
        let mut cfg = FaultSlot::default();
        flap("2s/3s").configure(&mut cfg, 77);
        assert_eq!(cfg.flags & F_FLAP, F_FLAP);
        assert_eq!(
            (cfg.start_ns, cfg.flap_on_ns, cfg.flap_period_ns),
            (77, 2_000_000_000, 5_000_000_000)
        );
    }
}
