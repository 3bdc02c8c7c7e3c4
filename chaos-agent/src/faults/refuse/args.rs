//! The refuse fault's command-line flags (flattened into `chaos-agent inject`).

use super::{RefuseErrno, RefuseSpec};

/// Connect refusal flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Connection refusals")]
pub struct RefuseArgs {
    /// Make new connects (TCP, and connected UDP) to the matching destinations fail at once,
    /// from every process in the agent's network namespace. Filters: --dest, --dport, --proto.
    #[arg(long)]
    pub refuse: bool,
    /// The error a refused connect returns.
    #[arg(long, value_enum, value_name = "ERRNO", requires = "refuse")]
    pub errno: Option<RefuseErrno>,
    /// Refuse this fraction of the matching connects, in (0, 1] (`0.3` or `30%`).
    #[arg(long, value_name = "P", requires = "refuse", value_parser = crate::spec::parse_probability_arg)]
    pub refuse_rate: Option<f64>,
}

impl RefuseArgs {
    /// The spec section the flags ask for.
    #[must_use]
    pub fn to_spec(&self) -> Option<RefuseSpec> {
        self.refuse.then(|| RefuseSpec {
            errno: self.errno.unwrap_or_default(),
            rate: self.refuse_rate,
        })
    }
}
