//! Refuse faults: the spec section, its validation and summary.

use serde::{Deserialize, Serialize};

use crate::spec::{SpecError, check_prob, trim_float};

/// The error a refused `connect()` returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "UPPER")]
pub enum RefuseErrno {
    /// Nothing listens there (a dead dependency, a closed port): what a RST to the SYN gives.
    #[default]
    Econnrefused,
    /// The connect timed out (a black-holed dependency), but at once instead of after the
    /// SYN retries.
    Etimedout,
    /// No route to the network.
    Enetunreach,
    /// No route to the host.
    Ehostunreach,
}

impl RefuseErrno {
    /// The errno value (Linux, every architecture the agent builds for).
    #[must_use]
    pub fn code(self) -> u32 {
        let e = match self {
            Self::Econnrefused => libc::ECONNREFUSED,
            Self::Etimedout => libc::ETIMEDOUT,
            Self::Enetunreach => libc::ENETUNREACH,
            Self::Ehostunreach => libc::EHOSTUNREACH,
        };
        e.unsigned_abs()
    }

    /// The name, as `errno(3)` spells it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Econnrefused => "ECONNREFUSED",
            Self::Etimedout => "ETIMEDOUT",
            Self::Enetunreach => "ENETUNREACH",
            Self::Ehostunreach => "EHOSTUNREACH",
        }
    }
}

/// `connect()`s to the fault's destinations fail with `errno`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefuseSpec {
    /// What a refused connect fails with (default `econnrefused`).
    #[serde(default)]
    pub errno: RefuseErrno,
    /// The fraction of matching connects refused, in (0, 1] (default all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
}

impl RefuseSpec {
    /// Checks the section on its own (the spec checks it against the target).
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(r) = self.rate {
            check_prob("refuse.rate", r, false)?;
        }
        Ok(())
    }

    /// e.g. `refuse connect (ECONNREFUSED)` or `refuse 30% of connects (ETIMEDOUT)`.
    #[must_use]
    pub fn summary(&self) -> String {
        match self.rate {
            Some(r) if r < 1.0 => format!(
                "refuse {}% of connects ({})",
                trim_float(r * 100.0),
                self.errno.as_str()
            ),
            _ => format!("refuse connects ({})", self.errno.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_and_the_wire_form() {
        assert_eq!(RefuseErrno::Econnrefused.code(), 111);
        assert_eq!(RefuseErrno::Etimedout.code(), 110);
        assert_eq!(RefuseErrno::Enetunreach.code(), 101);
        assert_eq!(RefuseErrno::Ehostunreach.code(), 113);
        let s: RefuseSpec = serde_json::from_str(r#"{"errno":"etimedout","rate":0.5}"#).unwrap();
        assert_eq!(s.errno, RefuseErrno::Etimedout);
        assert_eq!(s.summary(), "refuse 50% of connects (ETIMEDOUT)");
        let s: RefuseSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(s.summary(), "refuse connects (ECONNREFUSED)");
        assert!(serde_json::from_str::<RefuseSpec>(r#"{"errno":"eperm"}"#).is_err());
        assert!(
            RefuseSpec {
                rate: Some(1.5),
                ..s
            }
            .validate()
            .is_err()
        );
    }
}
