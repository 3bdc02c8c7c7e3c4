//! The exit codes of every verb, and the one place that decides them: [`Exit::of`] reads the
//! error a verb returned (the library's `thiserror` types, through anyhow's chain) and
//! [`Exit::of_clap`] a command line clap refused. docs/cli.md is the reference for users.

use std::process::ExitCode;

use crate::api::client::ClientError;
use crate::engine::EngineError;
use crate::sys::SysError;

/// How a command ended, as its exit code says it. The numbers are a promise (docs/cli.md):
/// scripts branch on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Ok,
    /// 1: it ran and failed: the kernel or the journal failed (rolled back), a revert left
    /// errors, the agent answered something unexpected, an experiment did not pass.
    Failed,
    /// 2: refused, nothing changed: a value is invalid or out of range (whether clap's value
    /// parser or the engine found it), the target does not exist, the TTL is over the maximum,
    /// a configuration or experiment file is invalid, no such fault, the caller is not allowed.
    Refused,
    /// 3: a valid request the agent's state refuses now, nothing changed: a fault it cannot
    /// share the host with, paused, `max_faults` active, another experiment running.
    Conflict,
    /// 4: no agent answers at the socket, or it is shutting down.
    Unreachable,
    /// 5: this kernel lacks what the fault needs (a qdisc module), nothing changed.
    Unsupported,
    /// 64 (`EX_USAGE` of sysexits.h): the command line is malformed: an unknown option or
    /// verb, a missing argument, options that exclude each other.
    Usage,
}

impl Exit {
    /// The number.
    #[must_use]
    pub const fn code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Failed => 1,
            Self::Refused => 2,
            Self::Conflict => 3,
            Self::Unreachable => 4,
            Self::Unsupported => 5,
            Self::Usage => 64,
        }
    }

    /// The class of a verb's error: the first error in its chain this module knows, else
    /// [`Exit::Failed`].
    #[must_use]
    pub fn of(e: &anyhow::Error) -> Self {
        e.chain().find_map(Self::of_one).unwrap_or(Self::Failed)
    }

    fn of_one(e: &(dyn std::error::Error + 'static)) -> Option<Self> {
        if let Some(e) = e.downcast_ref::<CliError>() {
            return Some(e.exit);
        }
        if e.is::<crate::spec::SpecError>() || e.is::<crate::config::ConfigError>() {
            return Some(Self::Refused);
        }
        if let Some(e) = e.downcast_ref::<EngineError>() {
            return Some(Self::of_engine(e));
        }
        if let Some(e) = e.downcast_ref::<ClientError>() {
            return Some(Self::of_client(e));
        }
        if let Some(e) = e.downcast_ref::<SysError>() {
            return match e {
                SysError::NoSuchInterface { .. }
                | SysError::NoDefaultRoute
                | SysError::NotPrivileged { .. } => Some(Self::Refused),
                SysError::Read { .. } | SysError::MountBpffs { .. } => None,
            };
        }
        None
    }

    fn of_engine(e: &EngineError) -> Self {
        match e {
            EngineError::Spec(_)
            | EngineError::Sys(_)
            | EngineError::Refused { .. }
            | EngineError::NotFound(_) => Self::Refused,
            EngineError::Conflict { .. } | EngineError::Paused | EngineError::TooMany { .. } => {
                Self::Conflict
            }
            EngineError::Unsupported { .. } => Self::Unsupported,
            EngineError::ShuttingDown => Self::Unreachable,
            EngineError::Apply { .. }
            | EngineError::RollbackFailed { .. }
            | EngineError::Journal(_) => Self::Failed,
        }
    }

    /// The agent's answer, by its HTTP status (docs/api.md), so that a verb exits the same
    /// whether the foreground engine or the agent refused the request.
    fn of_client(e: &ClientError) -> Self {
        match e {
            ClientError::Connect { .. } => Self::Unreachable,
            ClientError::Api { status, .. } => Self::of_status(*status),
            ClientError::Http(_) | ClientError::Request(_) | ClientError::Decode { .. } => {
                Self::Failed
            }
        }
    }

    /// The class of an API error status.
    #[must_use]
    pub fn of_status(status: u16) -> Self {
        match status {
            409 | 429 => Self::Conflict,
            422 => Self::Unsupported,
            503 => Self::Unreachable,
            400..=499 => Self::Refused,
            _ => Self::Failed,
        }
    }

    /// The class of a command line clap refused: a value its parser refused is
    /// [`Exit::Refused`] (the same value the engine checks would be), anything else about the
    /// command line's shape [`Exit::Usage`]; `--help` and `--version` are [`Exit::Ok`].
    #[must_use]
    pub fn of_clap(kind: clap::error::ErrorKind) -> Self {
        use clap::error::ErrorKind as K;
        match kind {
            K::DisplayHelp | K::DisplayVersion => Self::Ok,
            K::InvalidValue | K::ValueValidation | K::InvalidUtf8 => Self::Refused,
            _ => Self::Usage,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        Self::from(e.code())
    }
}

/// The footer of every `--help`: the table in one breath.
pub const HELP_FOOTER: &str = "Exit codes: 0 ok, 1 failed, 2 refused (bad input, nothing changed), 3 conflict (with an \
active fault, paused), 4 agent not reachable, 5 unsupported by this kernel, 64 usage. \
`--output json` shapes and details: docs/cli.md.";

/// An error the CLI itself finds, with its class: bad input (a prefix file's line, an
/// experiment file) or a command line clap cannot see is malformed (nothing to inject, `--ttl`
/// missing in the foreground).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// How the command exits.
    pub exit: Exit,
    /// One line for people.
    pub message: String,
}

impl CliError {
    /// [`Exit::Usage`].
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            exit: Exit::Usage,
            message: message.into(),
        }
    }

    /// [`Exit::Refused`].
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self {
            exit: Exit::Refused,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::FaultError;

    fn of(e: impl std::error::Error + Send + Sync + 'static) -> u8 {
        Exit::of(&anyhow::Error::new(e)).code()
    }

    #[test]
    fn the_table_holds() {
        assert_eq!(of(CliError::usage("nothing to inject")), 64);
        assert_eq!(of(CliError::bad_input("f:2: bad")), 2);
        assert_eq!(of(EngineError::Paused), 3);
        assert_eq!(of(EngineError::TooMany { max: 1 }), 3);
        assert_eq!(
            of(EngineError::Conflict {
                other: "f-00000001".parse().expect("id"),
                why: "both shape".into()
            }),
            3
        );
        assert_eq!(
            of(EngineError::NotFound("f-00000001".parse().expect("id"))),
            2
        );
        assert_eq!(of(EngineError::ShuttingDown), 4);
        assert_eq!(
            of(SysError::NotPrivileged {
                missing: "CAP_NET_ADMIN".into()
            }),
            2
        );
        let connect = ClientError::Connect {
            path: "/nowhere.sock".into(),
            cause: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(of(connect), 4);
        let api = |status| ClientError::Api {
            status,
            code: String::new(),
            message: String::new(),
        };
        for (status, want) in [
            (400, 2),
            (403, 2),
            (404, 2),
            (409, 3),
            (429, 3),
            (422, 5),
            (503, 4),
            (500, 1),
        ] {
            assert_eq!(of(api(status)), want, "HTTP {status}");
        }
        assert_eq!(of(std::io::Error::other("x")), 1);
        let unsupported = EngineError::Unsupported {
            source: FaultError::Unsupported {
                what: "corruption",
                kind: "netem",
                module: "sch_netem",
            },
        };
        assert_eq!(of(unsupported), 5);
    }

    #[test]
    fn context_does_not_hide_the_class() {
        let e = anyhow::Error::new(EngineError::Paused).context("inject on veth0");
        assert_eq!(Exit::of(&e), Exit::Conflict);
    }

    #[test]
    fn values_clap_refuses_are_refusals_and_shapes_are_usage() {
        use clap::error::ErrorKind as K;
        assert_eq!(Exit::of_clap(K::ValueValidation), Exit::Refused);
        assert_eq!(Exit::of_clap(K::InvalidValue), Exit::Refused);
        assert_eq!(Exit::of_clap(K::UnknownArgument), Exit::Usage);
        assert_eq!(Exit::of_clap(K::ArgumentConflict), Exit::Usage);
        assert_eq!(Exit::of_clap(K::MissingRequiredArgument), Exit::Usage);
        assert_eq!(
            Exit::of_clap(K::DisplayHelpOnMissingArgumentOrSubcommand),
            Exit::Usage
        );
        assert_eq!(Exit::of_clap(K::DisplayHelp), Exit::Ok);
    }
}
