//! The shaping fault's command-line flags (flattened into `chaos-agent inject`).

use std::time::Duration;

use super::{JitterDistribution, Rate, ShapeSpec, ShapingBackend};

/// Delay, jitter, rate, corruption, duplication and reordering flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Delay, bandwidth and the netem family")]
pub struct ShapeArgs {
    /// Add this one-way delay to matching packets (e.g. `100ms`); needs `sch_netem`, or `sch_fq`
    /// for egress delay and uniform jitter (EDT).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub delay: Option<Duration>,
    /// Delay variation, +/- (needs --delay).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub jitter: Option<Duration>,
    /// Shape of the jitter.
    #[arg(long, value_enum)]
    pub distribution: Option<JitterDistribution>,
    /// Correlation of successive delays, [0, 1].
    #[arg(long, value_parser = crate::spec::parse_fraction_arg)]
    pub correlation: Option<f64>,
    /// Limit bandwidth of matching traffic (e.g. `1mbit`, `500kbit`).
    #[arg(long)]
    pub rate: Option<Rate>,
    /// Corrupt one bit of matching packets with this probability.
    #[arg(long, value_parser = crate::spec::parse_probability_arg)]
    pub corrupt: Option<f64>,
    /// Duplicate matching packets with this probability.
    #[arg(long, value_parser = crate::spec::parse_probability_arg)]
    pub duplicate: Option<f64>,
    /// Send this fraction of matching packets at once, ahead of delayed ones (needs --delay).
    #[arg(long, value_parser = crate::spec::parse_probability_arg)]
    pub reorder: Option<f64>,
    /// Which mechanism delays packets: `auto` uses netem if the kernel has it, else EDT
    /// (`skb->tstamp` + an fq root; delay and uniform jitter, egress only) if it has `sch_fq`.
    #[arg(long, value_enum, default_value_t = ShapingBackend::Auto)]
    pub shaping_backend: ShapingBackend,
}

impl ShapeArgs {
    /// The spec section the flags ask for, if any.
    #[must_use]
    pub fn to_spec(&self) -> Option<ShapeSpec> {
        let shape = ShapeSpec {
            delay: self.delay,
            jitter: self.jitter,
            distribution: self.distribution,
            correlation: self.correlation,
            rate: self.rate,
            corrupt: self.corrupt,
            duplicate: self.duplicate,
            reorder: self.reorder,
            backend: self.shaping_backend,
        };
        (shape != ShapeSpec::default()).then_some(shape)
    }
}
