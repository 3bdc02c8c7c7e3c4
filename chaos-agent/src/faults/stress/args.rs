//! The stress fault's command-line flags (flattened into `chaos-agent inject`).

use std::time::Duration;

use super::{CpuStress, IoStress, StressSpec};
use crate::faults::limit::Bytes;

/// Stressor flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Stressors (built in; killed at the end, and with the agent)")]
pub struct StressArgs {
    /// Run N CPU workers, each busy LOAD percent of every 100 ms (`2@50`; default load 100).
    #[arg(long, value_name = "N[@LOAD%]", value_parser = CpuStress::parse)]
    pub cpu_stress: Option<CpuStress>,
    /// Allocate, touch and hold this much memory (`256M`, `1G`). The stressor's own cgroup is
    /// capped just above it, and the OOM killer takes the stressor before anything else.
    #[arg(long, value_name = "SIZE", value_parser = Bytes::parse)]
    pub memory_stress: Option<Bytes>,
    /// Spread the memory stressor's allocation over this long (e.g. `10s`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, requires = "memory_stress")]
    pub memory_ramp: Option<Duration>,
    /// Read and write a file of the agent's in the directory PATH with direct IO (so the disk
    /// under it, not the page cache, takes the load), at most RATE bytes a second, reads and
    /// writes half each (`/var/tmp:8M`; default: as fast as the disk goes). The file is 64 MiB
    /// and removed at the end.
    #[arg(long, value_name = "PATH[:RATE]", value_parser = IoStress::parse)]
    pub io_stress: Option<IoStress>,
    /// Run the stressors below the cgroup of --cgroup, --pid, --unit or --container, to press
    /// it from within (its limits apply to them), instead of in a cgroup of their own.
    #[arg(long)]
    pub inside: bool,
}

impl StressArgs {
    /// The spec section the flags ask for.
    #[must_use]
    pub fn to_spec(&self) -> Option<StressSpec> {
        (self.cpu_stress.is_some() || self.memory_stress.is_some() || self.io_stress.is_some())
            .then(|| StressSpec {
                cpu: self.cpu_stress,
                memory: self.memory_stress,
                memory_ramp: self.memory_ramp,
                io: self.io_stress.clone(),
                inside: self.inside,
            })
    }
}
