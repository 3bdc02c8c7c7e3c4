//! The command line: clap definitions and one module per verb. Verbs are thin: they build a
//! spec or a request and call the library.

mod cleanup;
mod doctor;
mod inject;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ipnet::IpNet;

use crate::ebpf::AttachMode;
use crate::engine::EngineConfig;
use crate::spec::{Direction, GilbertElliott, JitterDistribution, PortRange, Proto, Rate, ShapingBackend, parse_fraction};
use crate::sys::paths;

/// chaos-agent: inject real, self-expiring faults into this host.
#[derive(Debug, Parser)]
#[command(name = "chaos-agent", version, about, long_about = None)]
pub struct Cli {
    /// Directory holding the crash journal of active faults.
    #[arg(long, global = true, env = "CHAOS_AGENT_STATE_DIR", default_value = paths::STATE_DIR)]
    pub state_dir: PathBuf,
    /// Log filter (tracing env-filter syntax), e.g. `info` or `chaos_agent=debug`.
    #[arg(long, global = true, env = "CHAOS_AGENT_LOG")]
    pub log: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inject a fault and keep it until its TTL, Ctrl-C or SIGTERM (foreground).
    Inject(Box<InjectArgs>),
    /// Remove every leftover of a dead agent (idempotent; for systemd ExecStopPost=).
    Cleanup(CleanupArgs),
    /// Show what this kernel supports.
    Doctor(DoctorArgs),
}

/// `inject` flags.
#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// Drop matching packets with this probability, in (0, 1] (`0.1` or `10%`).
    #[arg(long, value_parser = parse_probability)]
    pub loss: Option<f64>,
    /// Burst loss instead of independent drops: `gemodel:p,r[,1-h[,1-k]]` (Gilbert-Elliott).
    #[arg(long, value_name = "MODEL")]
    pub loss_model: Option<GilbertElliott>,
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
    #[arg(long, value_parser = parse_fraction_arg)]
    pub correlation: Option<f64>,
    /// Limit bandwidth of matching traffic (e.g. `1mbit`, `500kbit`).
    #[arg(long)]
    pub rate: Option<Rate>,
    /// Corrupt one bit of matching packets with this probability.
    #[arg(long, value_parser = parse_probability)]
    pub corrupt: Option<f64>,
    /// Duplicate matching packets with this probability.
    #[arg(long, value_parser = parse_probability)]
    pub duplicate: Option<f64>,
    /// Send this fraction of matching packets at once, ahead of delayed ones (needs --delay).
    #[arg(long, value_parser = parse_probability)]
    pub reorder: Option<f64>,
    /// Which mechanism delays packets: `auto` uses netem if the kernel has it, else EDT
    /// (`skb->tstamp` + an fq root; delay and uniform jitter, egress only) if it has `sch_fq`.
    #[arg(long, value_enum, default_value_t = ShapingBackend::Auto)]
    pub shaping_backend: ShapingBackend,
    /// Apply even if the interface's qdisc tree cannot be restored exactly afterwards.
    #[arg(long)]
    pub force: bool,
    /// How long the fault lasts (e.g. `30s`, `5m`). Required; at most the maximum TTL.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Interface (default: the interface of the default route).
    #[arg(long)]
    pub iface: Option<String>,
    /// Which direction to fault.
    #[arg(long, value_enum, default_value_t = Direction::Egress)]
    pub direction: Direction,
    /// Only these protocols (repeatable).
    #[arg(long = "proto", value_enum)]
    pub protocols: Vec<Proto>,
    /// Only packets to these prefixes (IPv4 or IPv6 CIDR, repeatable).
    #[arg(long = "dest", value_name = "CIDR", value_parser = parse_cidr)]
    pub dst: Vec<IpNet>,
    /// Only packets from these prefixes (repeatable).
    #[arg(long = "src", value_name = "CIDR", value_parser = parse_cidr)]
    pub src: Vec<IpNet>,
    /// Only these destination ports, `P` or `P-Q` (repeatable).
    #[arg(long = "dport", value_name = "P[-Q]")]
    pub dports: Vec<PortRange>,
    /// Only these source ports (repeatable).
    #[arg(long = "sport", value_name = "P[-Q]")]
    pub sports: Vec<PortRange>,
    /// Seed for reproducible randomness (per CPU).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Fault protected traffic too (SSH and the agent's own ports are spared by default).
    #[arg(long)]
    pub include_protected: bool,
    /// Validate and print the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How to attach the tc programs.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach_mode: AttachMode,
    /// Maximum TTL accepted.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    pub max_ttl: Duration,
    /// A label for the experiment (shown in list and logs).
    #[arg(long)]
    pub label: Option<String>,
    /// Print the final report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `cleanup` flags.
#[derive(Debug, clap::Args)]
pub struct CleanupArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `doctor` flags.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_probability(s: &str) -> Result<f64, String> {
    let v = parse_fraction(s).ok_or_else(|| format!("{s:?} is not a number"))?;
    if v > 0.0 && v <= 1.0 { Ok(v) } else { Err(format!("{s} is outside (0, 1]")) }
}

fn parse_fraction_arg(s: &str) -> Result<f64, String> {
    let v = parse_fraction(s).ok_or_else(|| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&v) { Ok(v) } else { Err(format!("{s} is outside [0, 1]")) }
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an IPv4/IPv6 address or CIDR"))
}

/// Errors the CLI maps to exit code 2 (the request was wrong; nothing was changed).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn init_logging(filter: Option<&str>, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter.unwrap_or(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

fn engine_config(state_dir: PathBuf, attach_mode: AttachMode, max_ttl: Duration) -> EngineConfig {
    EngineConfig {
        state_dir,
        attach_mode,
        limits: crate::spec::Limits { max_ttl },
        ..EngineConfig::default()
    }
}

/// Entry point of the binary.
#[must_use]
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The CLI prints its own results; only errors from the library are worth a log line.
    init_logging(cli.log.as_deref(), "error");
    let result = match cli.command {
        Command::Inject(args) => inject::run(&cli.state_dir, &args),
        Command::Cleanup(args) => cleanup::run(&cli.state_dir, &args),
        Command::Doctor(args) => doctor::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Engine errors already spell out their causes; anyhow's chain would repeat them.
            match e.downcast_ref::<crate::engine::EngineError>() {
                Some(engine_err) => eprintln!("error: {engine_err}"),
                None => eprintln!("error: {e:#}"),
            }
            if e.downcast_ref::<UsageError>().is_some()
                || e.downcast_ref::<crate::spec::SpecError>().is_some()
                || matches!(e.downcast_ref::<crate::engine::EngineError>(), Some(crate::engine::EngineError::Spec(_) | crate::engine::EngineError::Sys(_)))
            {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// Checks privileges and prepares the host (bpffs, memlock): the common preflight.
fn preflight() -> anyhow::Result<()> {
    crate::sys::check_privileges()?;
    if crate::sys::ensure_bpffs()? {
        tracing::info!("mounted bpffs at {}", paths::BPFFS);
    }
    crate::sys::raise_memlock();
    Ok(())
}
