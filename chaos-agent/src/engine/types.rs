//! The engine's public vocabulary: why faults end, who asked, settings, errors, and what list
//! and stop report.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// How late after the deadline a TTL revert ran, in microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lateness_us: Option<u64>,
}
