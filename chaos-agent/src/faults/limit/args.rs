//! The limit fault's command-line flags (flattened into `chaos-agent inject`).

use super::{Bytes, IoLimit, LimitSpec};

/// Resource limit flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(
    next_help_heading = "Resource limits (on the cgroup of --cgroup, --pid, --unit or --container)"
)]
pub struct LimitArgs {
    /// Limit the target to this many CPUs' time, fractional (`0.25`): `cpu.max`, or
    /// `cpu.cfs_quota_us` on cgroup v1. The old value is restored at the end.
    #[arg(long, value_name = "CPUS")]
    pub cpu_limit: Option<f64>,
    /// Set `memory.high` (cgroup v2): above it the kernel reclaims and throttles, never kills
    /// (`256M`, `1G`; binary units).
    #[arg(long, value_name = "SIZE", value_parser = Bytes::parse)]
    pub memory_high: Option<Bytes>,
    /// Set `memory.max` (`memory.limit_in_bytes` on v1): reclaim, then the OOM killer inside the
    /// target. Refused below the target's current usage unless --allow-oom.
    #[arg(long, value_name = "SIZE", value_parser = Bytes::parse)]
    pub memory_max: Option<Bytes>,
    /// Allow --memory-max below what the target uses now (its processes may be killed).
    #[arg(long, requires = "memory_max")]
    pub allow_oom: bool,
    /// Throttle the target's IO on a block device: `/dev/vdb:wbps=4M:riops=100` (keys rbps,
    /// wbps, riops, wiops; a partition stands for its disk). `io.max`, or `blkio.throttle.*`
    /// on cgroup v1, which does not throttle buffered writes (writeback is not charged to the
    /// cgroup there). Repeat for more devices.
    #[arg(long, value_name = "DEVICE[:KEY=VALUE...]", value_parser = IoLimit::parse)]
    pub io_limit: Vec<IoLimit>,
}

impl LimitArgs {
    /// The spec section the flags ask for.
    #[must_use]
    pub fn to_spec(&self) -> Option<LimitSpec> {
        (self.cpu_limit.is_some()
            || self.memory_high.is_some()
            || self.memory_max.is_some()
            || !self.io_limit.is_empty())
        .then(|| LimitSpec {
            cpu: self.cpu_limit,
            memory_high: self.memory_high,
            memory_max: self.memory_max,
            allow_oom: self.allow_oom,
            io: self.io_limit.clone(),
        })
    }
}
