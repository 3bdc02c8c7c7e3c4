//! Reset faults: the spec section, its validation and summary.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::spec::SpecError;

/// The shortest `--reset-every`: a sweep lists every TCP socket of the namespace, so sweeping
/// faster than this would cost more than it shows.
pub const MIN_EVERY: Duration = Duration::from_millis(100);

/// Established TCP connections matching the target are aborted (the local socket gets
/// `ECONNABORTED`, the peer a RST): once at inject, every `every` after that, and with `--flap`
/// at the start of each active phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetSpec {
    /// Sweep again at this interval until the TTL (absent: once, or once per active phase).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub every: Option<Duration>,
}

impl ResetSpec {
    /// Checks the section against the fault's TTL.
    pub fn validate(&self, ttl: Duration) -> Result<(), SpecError> {
        if let Some(every) = self.every
            && (every < MIN_EVERY || every > ttl)
        {
            return Err(SpecError::Inapplicable {
                what: "--reset-every must be at least 100ms and at most the TTL",
            });
        }
        Ok(())
    }

    /// e.g. `reset connections` or `reset connections every 1s`.
    #[must_use]
    pub fn summary(&self) -> String {
        match self.every {
            Some(d) => format!("reset connections every {}", humantime::format_duration(d)),
            None => "reset connections".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_is_bounded_by_the_ttl() {
        let s: ResetSpec = serde_json::from_str(r#"{"every":"1s"}"#).unwrap();
        assert_eq!(s.every, Some(Duration::from_secs(1)));
        assert_eq!(s.summary(), "reset connections every 1s");
        assert!(s.validate(Duration::from_secs(10)).is_ok());
        assert!(s.validate(Duration::from_millis(500)).is_err());
        let fast = ResetSpec {
            every: Some(Duration::from_millis(10)),
        };
        assert!(fast.validate(Duration::from_secs(10)).is_err());
        assert_eq!(ResetSpec::default().summary(), "reset connections");
        assert!(serde_json::from_str::<ResetSpec>(r#"{"evry":"1s"}"#).is_err());
    }
}
