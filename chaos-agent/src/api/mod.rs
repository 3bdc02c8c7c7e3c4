//! The daemon's control API: HTTP/JSON over a Unix socket (and, when configured, TCP with a
//! bearer token). This module holds the request and response types shared by the server and the
//! client; `docs/api.md` is the reference for users.

pub mod client;
pub mod server;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{EngineError, FaultInfo, RevertReport};
use crate::spec::SpecError;

/// The API version prefix of every path.
pub const PREFIX: &str = "/v1";

/// `POST /v1/faults/{id}/extend` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// How much longer the fault should last (`"30s"`, `"5m"`).
    #[serde(with = "humantime_serde")]
    pub by: Duration,
}

/// `GET /v1/faults` response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultList {
    /// Active faults, oldest first.
    pub faults: Vec<FaultInfo>,
}

/// `DELETE /v1/faults` and `POST /v1/pause` response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reverted {
    /// One report per fault that was reverted.
    pub reverted: Vec<RevertReport>,
}

/// `GET /v1/status` response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// Agent version.
    pub version: String,
    /// Process id of the agent.
    pub pid: u32,
    /// Seconds since the agent started.
    pub uptime_seconds: u64,
    /// Kernel release.
    pub kernel: String,
    /// Whether new faults are refused (`chaos-agent pause`).
    pub paused: bool,
    /// Number of active faults.
    pub active_faults: usize,
    /// Configured maximum of concurrent faults.
    pub max_faults: usize,
    /// Configured maximum TTL.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// TTL used when a request gives none.
    #[serde(with = "humantime_serde", default)]
    pub default_ttl: Option<Duration>,
    /// Configured attach mode and what it resolves to on this kernel, e.g. `auto (tcx)`.
    pub attach_mode: String,
    /// Ports never faulted unless a fault says `include_protected`.
    pub protected_ports: Vec<String>,
    /// Objects of a dead agent removed at start-up.
    pub leftovers_removed_at_start: usize,
    /// The Prometheus endpoint, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub metrics_addr: Option<String>,
}

/// `POST /v1/pause` / `POST /v1/resume` response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PauseState {
    /// Whether the agent now refuses new faults.
    pub paused: bool,
    /// Faults reverted by the pause (empty for resume).
    #[serde(default)]
    pub reverted: Vec<RevertReport>,
}

/// Every error response: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The content of an error response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`invalid_request`, `not_found`, `conflict`...).
    pub code: String,
    /// A sentence for humans; names the offending value.
    pub message: String,
    /// The conflicting fault, for `conflict`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub other_fault: Option<String>,
}

/// An error as the API reports it: an HTTP status and a body.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// Stable code.
    pub code: &'static str,
    /// Human message.
    pub message: String,
    /// The conflicting fault, for `conflict`.
    pub other_fault: Option<String>,
}

impl ApiError {
    /// An error with a status, code and message.
    #[must_use]
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            other_fault: None,
        }
    }

    /// 400 with code `invalid_request`.
    #[must_use]
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", message)
    }

    /// The JSON body.
    #[must_use]
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message.clone(),
                other_fault: self.other_fault.clone(),
            },
        }
    }
}

impl From<&EngineError> for ApiError {
    fn from(e: &EngineError) -> Self {
        let msg = e.to_string();
        match e {
            EngineError::Spec(SpecError::TtlTooLong { .. }) => Self::new(400, "ttl_too_long", msg),
            EngineError::Spec(_) => Self::new(400, "invalid_fault", msg),
            EngineError::Sys(_) | EngineError::Refused { .. } => Self::new(400, "bad_target", msg),
            EngineError::NotFound(_) => Self::new(404, "not_found", msg),
            EngineError::Conflict { other, .. } => Self {
                status: 409,
                code: "conflict",
                message: msg,
                other_fault: Some(other.to_string()),
            },
            EngineError::Paused => Self::new(409, "paused", msg),
            EngineError::TooMany { .. } => Self::new(429, "too_many_faults", msg),
            EngineError::ShuttingDown => Self::new(503, "shutting_down", msg),
            // The kernel lacks a module: the request cannot succeed on this host as it is.
            EngineError::Unsupported { .. } => Self::new(422, "unsupported", msg),
            EngineError::Apply { .. } => Self::new(500, "apply_failed", msg),
            EngineError::RollbackFailed { .. } => Self::new(500, "rollback_failed", msg),
            EngineError::Journal(_) => Self::new(500, "journal", msg),
        }
    }
}
