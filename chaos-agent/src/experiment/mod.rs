//! Experiments on the node: steady-state probes, a method of faults at their offsets, stop
//! conditions that revert every fault at once, and a report. Evaluated here, next to the
//! faults, not in a test process far from them.
//!
//! - [`spec`]: the TOML file and its rules;
//! - [`probe`]: one check of a probe (HTTP, TCP, DNS, a command, PSI);
//! - [`run`]: the phases (before, during, after), the steps through the engine, the stop
//!   conditions;
//! - [`report`]: availability, latency percentiles and time to recover per phase, the steps'
//!   faults, the verdict; JSON and Markdown.

pub mod daemon;
pub mod probe;
pub mod report;
pub mod run;
pub mod schedule;
pub mod spec;
pub mod store;

pub use report::{Outcome, Report};
pub use run::{Planned, StopHandle};
pub use spec::{ExperimentError, ExperimentSpec};

use clap::Parser as _;

use crate::engine::{self, EngineConfig};

/// A step's `inject` flags, parsed as `chaos-agent inject` parses them.
#[derive(Debug, clap::Parser)]
#[command(name = "inject", no_binary_name = true)]
struct StepFlags {
    #[command(flatten)]
    inject: crate::cli::InjectArgs,
}

/// Turns every step into the fault it names, checked as `inject --dry-run` checks it (the
/// flags, the TTL against the maximum, what this kernel can do): the plan lines per step, or
/// the first step that cannot run, named.
pub fn plan(
    spec: &ExperimentSpec,
    cfg: &EngineConfig,
) -> Result<Vec<(Planned, Vec<String>)>, ExperimentError> {
    let slots = spec.schedule();
    spec.steps
        .iter()
        .map(|s| {
            let bad = |why: String| ExperimentError::Invalid(format!("step {:?}: {why}", s.name));
            let flags = StepFlags::try_parse_from(s.inject.args()).map_err(|e| {
                let text = e.render().to_string();
                bad(text.trim().trim_start_matches("error: ").to_owned())
            })?;
            let mut fault =
                crate::cli::inject::spec_from_args(&flags.inject).map_err(|e| bad(e.message))?;
            fault.ttl = s.duration;
            if fault.label.is_none() {
                fault.label = Some(format!("experiment: {}", s.name));
            }
            let (fault, lines) = engine::plan(cfg, fault).map_err(|e| bad(e.to_string()))?;
            let after = s.after.as_ref().and_then(|a| {
                spec.steps
                    .iter()
                    .position(|o| &o.name == a)
                    .map(|j| (j, s.at))
            });
            Ok((
                Planned {
                    name: s.name.clone(),
                    slot: slots[&s.name],
                    after,
                    spec: fault,
                },
                lines,
            ))
        })
        .collect()
}
