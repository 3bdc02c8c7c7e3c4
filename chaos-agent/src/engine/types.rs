//! The engine's public vocabulary: why faults end, who asked, settings, errors, and what list
//! and stop report.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::faults::dns::DnsAnswer;
use crate::faults::flap::Flap;
use crate::faults::{FaultError, FaultSpec};
use crate::kernel::bpf::{AttachMode, Counters};
use crate::spec::{Limits, SpecError};
use crate::sys::{self, SysError};
use crate::target::PortRange;
use crate::txn::FaultId;
use crate::txn::journal::JournalError;

/// Why a fault ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevertReason {
    /// Its TTL expired.
    Ttl,
    /// Someone stopped it.
    Stopped,
    /// The agent shut down.
    Shutdown,
    /// The fault failed while active.
    Error,
    /// A dead agent's leftover, removed at start-up or by `cleanup`.
    Leftover,
    /// The processes it was limited to are gone: their cgroup was removed (the unit stopped,
    /// the container exited).
    #[serde(rename = "target-gone")]
    TargetGone,
}

impl RevertReason {
    /// Label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ttl => "ttl",
            Self::Stopped => "stopped",
            Self::Shutdown => "shutdown",
            Self::Error => "error",
            Self::Leftover => "leftover",
            Self::TargetGone => "target-gone",
        }
    }
}

/// Who asked for an operation (logged with it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requester {
    /// Unix uid (from `SO_PEERCRED` for the socket API, `getuid()` for the CLI).
    pub uid: u32,
}

impl Requester {
    /// The current process's user.
    #[must_use]
    pub fn me() -> Self {
        Self {
            uid: nix::unistd::getuid().as_raw(),
        }
    }
}

/// Engine settings (from the config file and flags).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Where the journal lives.
    pub state_dir: PathBuf,
    /// Validation limits (maximum TTL).
    pub limits: Limits,
    /// TTL used when a request has none (API only; the CLI always requires one).
    pub default_ttl: Option<Duration>,
    /// tcx / netlink / auto.
    pub attach_mode: AttachMode,
    /// Ports never faulted unless a spec says `include_protected`.
    pub protected_ports: Vec<PortRange>,
    /// Maximum number of concurrent faults.
    pub max_faults: usize,
    /// The container runtime's CRI socket (`--pod`); `None`: found as
    /// [`crate::target::pod::endpoint`] says.
    pub cri_endpoint: Option<String>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from(sys::paths::STATE_DIR),
            limits: Limits::default(),
            default_ttl: None,
            attach_mode: AttachMode::Auto,
            protected_ports: vec![PortRange { lo: 22, hi: 22 }],
            max_faults: chaos_common::MAX_FAULTS as usize,
            cri_endpoint: None,
        }
    }
}

/// Engine errors. Each is reported to the requester as is.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The spec is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Host lookup failed (unknown interface...).
    #[error(transparent)]
    Sys(#[from] SysError),
    /// The kernel lacks what the fault needs; nothing was touched.
    #[error("{source}")]
    Unsupported {
        /// Cause.
        source: FaultError,
    },
    /// The target cannot take the fault as asked (a cgroup that does not exist, a limit the
    /// host cannot honour); found before anything was journaled or touched.
    #[error("{source}")]
    Refused {
        /// Cause.
        source: FaultError,
    },
    /// Applying failed; everything was rolled back.
    #[error("{source}; rolled back")]
    Apply {
        /// Cause.
        source: FaultError,
    },
    /// Applying failed and the rollback failed too: the journal keeps the rest for `cleanup`.
    #[error("{source}; rollback incomplete ({rollback_errors:?}), run `chaos-agent cleanup`")]
    RollbackFailed {
        /// Cause.
        source: FaultError,
        /// Rollback failures.
        rollback_errors: Vec<String>,
    },
    /// The journal could not be written, so nothing was applied.
    #[error("journal: {0}; nothing applied")]
    Journal(#[from] JournalError),
    /// Unknown fault id.
    #[error("no active fault {0}")]
    NotFound(FaultId),
    /// Too many faults.
    #[error("too many concurrent faults (maximum {max})")]
    TooMany {
        /// Configured maximum.
        max: usize,
    },
    /// Paused by the safety lever.
    #[error("the agent is paused: new faults are refused until `chaos-agent resume`")]
    Paused,
    /// A conflicting fault is active.
    #[error("conflicts with active fault {other}: {why}")]
    Conflict {
        /// The other fault.
        other: FaultId,
        /// Why.
        why: String,
    },
    /// The agent is shutting down.
    #[error("the agent is shutting down")]
    ShuttingDown,
}

/// A fault as reported by list/show.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultInfo {
    /// Id.
    pub id: FaultId,
    /// Kind (`loss`, ...).
    pub kind: String,
    /// Human summary.
    pub summary: String,
    /// The spec.
    pub spec: FaultSpec,
    /// Resolved interface.
    pub iface: String,
    /// Backend used.
    pub backend: String,
    /// Who created it.
    pub requested_by_uid: u32,
    /// Creation (ms since epoch).
    pub created_unix_ms: u64,
    /// Expiry (ms since epoch).
    pub expires_unix_ms: u64,
    /// Milliseconds left.
    pub remaining_ms: u64,
    /// Kernel counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<Counters>,
    /// What the target shows of a fault on processes (limit faults): see
    /// [`crate::faults::Effects`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effects: Option<crate::faults::Effects>,
    /// Where a fault with `--flap` is in its duty cycle (absent without `--flap`, and from
    /// agents that predate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<FlapPhase>,
}

/// Where a flapping fault is in its duty cycle, as the kernel computes it: the same arithmetic
/// ([`Flap::phase`]) on the time since the fault started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlapPhase {
    /// Acting (true) or resting.
    pub active: bool,
    /// Active phases begun so far, this one included when active (the first is 1).
    pub active_phases: u64,
    /// Active phases the whole TTL holds (the last one may be cut short by the TTL).
    pub total_active_phases: u64,
    /// Milliseconds left in the current phase (never past the fault's end).
    pub remaining_ms: u64,
}

impl FlapPhase {
    /// The phase `elapsed` after the start of a fault with this duty cycle and TTL. Past the
    /// TTL it is the phase of the fault's last instant.
    #[must_use]
    pub fn at(flap: &Flap, ttl: Duration, elapsed: Duration) -> Self {
        let e = elapsed.min(ttl.saturating_sub(Duration::from_nanos(1)));
        let p = flap.phase(e);
        let period = flap.period().as_nanos().max(1);
        // Active phases start at k * period for every k with k * period < ttl.
        let total = u64::try_from(ttl.as_nanos().div_ceil(period)).unwrap_or(u64::MAX);
        let remaining = p.remaining.min(ttl.saturating_sub(e));
        Self {
            active: p.active,
            active_phases: p.active_phases,
            total_active_phases: total.max(p.active_phases),
            remaining_ms: u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// `active 2/5 (1.2s left)` or `resting (0.8s left)`.
    #[must_use]
    pub fn line(&self) -> String {
        let left = Duration::from_millis(self.remaining_ms).as_secs_f64();
        if self.active {
            format!(
                "active {}/{} ({left:.1}s left)",
                self.active_phases, self.total_active_phases
            )
        } else {
            format!("resting ({left:.1}s left)")
        }
    }
}

/// The end of a fault.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RevertReport {
    /// Id.
    pub id: FaultId,
    /// Why it ended.
    pub reason: RevertReason,
    /// Objects removed, by kind.
    pub removed: Vec<String>,
    /// Undo failures (left in the journal for `cleanup`).
    pub errors: Vec<String>,
    /// Final counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<Counters>,
    /// Final effects (limit faults), read before the revert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effects: Option<crate::faults::Effects>,
    /// How late after the deadline a TTL revert ran, in microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lateness_us: Option<u64>,
    /// For a DNS fault, what matching answers became (how to read `counters`: `matched` are
    /// answers whose question matched, `rewritten` got this rcode, `dropped` were dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_answer: Option<DnsAnswer>,
    /// The fault's kind (`loss`, `dns`, `refuse`, `reset`...), which says how to read
    /// `counters` (empty in reports of agents before it was added).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// For a fault with `--flap`, its duty cycle's phase when it ended (`active_phases` is how
    /// many active phases it had).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<FlapPhase>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flap(s: &str) -> Flap {
        s.parse().expect("flap")
    }

    fn at(f: &str, ttl_ms: u64, elapsed_ms: u64) -> FlapPhase {
        FlapPhase::at(
            &flap(f),
            Duration::from_millis(ttl_ms),
            Duration::from_millis(elapsed_ms),
        )
    }

    #[test]
    fn phases_count_from_the_start_and_stop_at_the_ttl() {
        // 2s/3s over 10 s: active 0-2 and 5-7, resting 2-5 and 7-10.
        let p = at("2s/3s", 10_000, 0);
        assert_eq!(
            p,
            FlapPhase {
                active: true,
                active_phases: 1,
                total_active_phases: 2,
                remaining_ms: 2000
            }
        );
        assert_eq!(p.line(), "active 1/2 (2.0s left)");
        let p = at("2s/3s", 10_000, 2_200);
        assert!(!p.active && p.active_phases == 1 && p.remaining_ms == 2800);
        assert_eq!(p.line(), "resting (2.8s left)");
        assert_eq!(at("2s/3s", 10_000, 5_800).line(), "active 2/2 (1.2s left)");
        // The last resting phase ends with the fault, not at the end of its period.
        assert_eq!(at("2s/3s", 9_000, 7_200).line(), "resting (1.8s left)");
        // A last active phase cut short by the TTL: 11 s holds three (0, 5, 10).
        assert_eq!(at("2s/3s", 11_000, 10_200).line(), "active 3/3 (0.8s left)");
        // Past the deadline (a TTL revert decided late): the phase of the last instant.
        let p = at("2s/3s", 10_000, 12_000);
        assert!(
            !p.active && p.active_phases == 2 && p.remaining_ms == 0,
            "{p:?}"
        );
        // ON + OFF == TTL: one active phase.
        assert_eq!(at("5s/5s", 10_000, 0).total_active_phases, 1);
    }

    #[test]
    fn json_of_agents_before_dns_and_flap_still_parses() {
        let info: FaultInfo = serde_json::from_str(
            r#"{"id": "f-0000002a", "kind": "loss", "summary": "loss 10% egress on eth0",
                "spec": {"ttl": "30s", "loss": {"probability": 0.1}}, "iface": "eth0",
                "backend": "ebpf/tcx", "requested_by_uid": 0, "created_unix_ms": 1,
                "expires_unix_ms": 2, "remaining_ms": 3,
                "counters": {"ingress": {"seen": 1, "matched": 1, "dropped": 0, "steered": 0,
                    "protected": 0, "expired": 0},
                    "egress": {"seen": 9, "matched": 8, "dropped": 2, "steered": 0,
                    "protected": 0, "expired": 0}}}"#,
        )
        .expect("old FaultInfo");
        assert!(info.phase.is_none());
        assert_eq!(info.counters.expect("counters").egress.rewritten, 0);
        let r: RevertReport = serde_json::from_str(
            r#"{"id": "f-0000002a", "reason": "ttl", "removed": [], "errors": [],
                "lateness_us": 120}"#,
        )
        .expect("old RevertReport");
        assert!(r.dns_answer.is_none() && r.phase.is_none());
        // And the new fields are left out when there is nothing to say.
        let out = serde_json::to_value(&r).expect("json");
        assert!(
            out.get("phase").is_none() && out.get("dns_answer").is_none(),
            "{out}"
        );
    }

    #[test]
    fn reasons_are_named_alike_on_the_wire_and_in_labels() {
        for r in [
            RevertReason::Ttl,
            RevertReason::Stopped,
            RevertReason::Shutdown,
            RevertReason::Error,
            RevertReason::Leftover,
            RevertReason::TargetGone,
        ] {
            let json = serde_json::to_string(&r).expect("serialize");
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            assert_eq!(
                serde_json::from_str::<RevertReason>(&json).expect("parse"),
                r
            );
        }
    }

    #[test]
    fn new_fields_round_trip() {
        let r = RevertReport {
            id: "f-0000002a".parse().expect("id"),
            reason: RevertReason::Stopped,
            removed: Vec::new(),
            errors: Vec::new(),
            counters: None,
            effects: None,
            lateness_us: None,
            dns_answer: Some(DnsAnswer::Nxdomain),
            kind: "dns".to_owned(),
            phase: Some(FlapPhase {
                active: false,
                active_phases: 3,
                total_active_phases: 4,
                remaining_ms: 10,
            }),
        };
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["dns_answer"], "nxdomain");
        assert_eq!(v["phase"]["active_phases"], 3);
        let back: RevertReport = serde_json::from_value(v).expect("parse");
        assert_eq!(back.phase, r.phase);
        assert_eq!(back.dns_answer, r.dns_answer);
    }
}
