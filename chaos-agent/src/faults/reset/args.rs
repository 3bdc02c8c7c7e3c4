//! The reset fault's command-line flags (flattened into `chaos-agent inject`).

use std::time::Duration;

use super::ResetSpec;

/// Connection reset flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Connection resets")]
pub struct ResetArgs {
    /// Abort the established TCP connections of the agent's network namespace that match the
    /// filters (--src/--sport: the local end, --dest/--dport: the remote end): the local
    /// application gets ECONNABORTED, the peer a RST. Once at inject, unless --reset-every.
    #[arg(long)]
    pub reset: bool,
    /// Abort matching connections again at this interval until the TTL (e.g. `1s`): clients
    /// that reconnect are reset again.
    #[arg(long, value_name = "D", requires = "reset", value_parser = crate::spec::parse_duration_arg)]
    pub reset_every: Option<Duration>,
}

impl ResetArgs {
    /// The spec section the flags ask for.
    #[must_use]
    pub fn to_spec(&self) -> Option<ResetSpec> {
        self.reset.then_some(ResetSpec {
            every: self.reset_every,
        })
    }
}
