//! The command line: clap definitions and one module per verb. Verbs are thin: they build a
//! spec or a request and call the library.

mod cleanup;
mod client;
mod completions;
mod doctor;
pub mod exit;
mod experiment;
pub(crate) mod inject;
pub mod output;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ipnet::IpNet;

use crate::engine::{EngineConfig, FaultId};
use crate::kernel::bpf::AttachMode;
use crate::sys::paths;
use crate::target::{Direction, PortRange, Proto};
pub use exit::{CliError, Exit};
pub use output::OutputArgs;

/// The help heading of the options every verb takes.
pub const GLOBAL: &str = "Global options";

/// chaos-agent: inject real, self-expiring faults into this host.
#[derive(Debug, Parser)]
#[command(name = "chaos-agent", version, about, long_about = None)]
pub struct Cli {
    /// Directory holding the crash journal of active faults [default: /var/lib/chaos-agent, or
    /// `state_dir` from the config file for `run`].
    #[arg(long, global = true, help_heading = GLOBAL, env = "CHAOS_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The agent's control socket [default: /run/chaos-agent/agent.sock, or `api.socket` from
    /// the config file for `run`].
    #[arg(long, global = true, help_heading = GLOBAL, env = "CHAOS_AGENT_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Log filter (tracing env-filter syntax), e.g. `info` or `chaos_agent=debug`.
    #[arg(long, global = true, help_heading = GLOBAL, env = "CHAOS_AGENT_LOG")]
    pub log: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inject a fault. Sent to the agent when its socket exists (prints the id; `--wait` blocks
    /// until the fault ends); otherwise kept in the foreground until its TTL, Ctrl-C or SIGTERM.
    Inject(Box<InjectArgs>),
    /// Run the agent: the control API, the TTL watchdog and the metrics endpoint.
    Run(RunArgs),
    /// List the agent's active faults.
    List(OutputArgs),
    /// Show one active fault.
    Show(ShowArgs),
    /// Stop one fault (`stop ID`) or every fault (`stop --all`).
    Stop(StopArgs),
    /// Move a fault's deadline (within the agent's maximum TTL).
    Extend(ExtendArgs),
    /// The agent's status.
    Status(OutputArgs),
    /// Stop every fault and refuse new ones until `resume` (the safety lever).
    Pause(OutputArgs),
    /// Accept new faults again after `pause`.
    Resume(OutputArgs),
    /// Configuration file tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Remove every leftover of a dead agent (idempotent; for systemd `ExecStopPost`=).
    Cleanup(CleanupArgs),
    /// Show what this kernel supports.
    Doctor(DoctorArgs),
    /// Experiments: probes, a method of faults, stop conditions, a report.
    #[command(subcommand)]
    Experiment(ExperimentCommand),
    /// Print a shell completion script (bash: `source <(chaos-agent completions bash)`).
    Completions(completions::CompletionsArgs),
    /// Write the man pages, one per subcommand, into a directory (for packaging).
    #[command(hide = true)]
    Manpages(completions::ManpagesArgs),
    /// The stressor process of a stress fault (started by the agent in its cgroup).
    #[command(hide = true)]
    StressWorker(crate::faults::stress::worker::WorkerArgs),
}

/// `experiment` verbs.
#[derive(Debug, Subcommand)]
pub enum ExperimentCommand {
    /// Run an experiment file in the foreground: probes before, during and after the method,
    /// the steps at their offsets, every fault reverted at once when a stop condition trips.
    Run(ExperimentRunArgs),
    /// Check an experiment file (its schema, its steps against this kernel) and print its plan.
    Validate(ExperimentFileArg),
    /// The agent's experiments: running ones, then the reports it keeps, newest first.
    List(OutputArgs),
    /// One experiment of the agent: its report, or its state while it runs.
    Show(ExperimentIdArg),
    /// Stop a running experiment of the agent: its faults reverted, recorded `interrupted`.
    Stop(ExperimentIdArg),
    /// Print the experiment file's JSON Schema (for editors).
    Schema,
}

/// An experiment's id.
#[derive(Debug, clap::Args)]
pub struct ExperimentIdArg {
    /// The run's id (`experiment list` shows them).
    pub id: String,
    /// The report's documented shape (docs/experiments.md) with `--output json`.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `experiment validate` arguments.
#[derive(Debug, clap::Args)]
pub struct ExperimentFileArg {
    /// The experiment file (TOML).
    pub file: PathBuf,
}

/// `experiment run` arguments.
#[derive(Debug, clap::Args)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent command-line switches"
)]
pub struct ExperimentRunArgs {
    /// The experiment file (TOML).
    pub file: PathBuf,
    /// Plan every step and run the probes for the steady-state window only; inject nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Where the reports go [default: `STATE_DIR/experiments`].
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
    /// The report as JSON on stdout with `--output json`.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Run it in this process even when an agent is running (else the agent runs it).
    #[arg(long)]
    pub foreground: bool,
    /// With an agent: print the run's id and return at once, instead of waiting for its end.
    #[arg(long, conflicts_with = "foreground")]
    pub detach: bool,
    /// The longest a step may last (the agent's maximum TTL).
    #[arg(long, value_parser = parse_max_ttl, default_value = "1h")]
    pub max_ttl: Duration,
}

/// `inject` flags.
#[derive(Debug, clap::Args)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent command-line switches"
)]
pub struct InjectArgs {
    /// Apply even if the interface's qdisc tree cannot be restored exactly afterwards.
    #[arg(long)]
    pub force: bool,
    /// How long the fault lasts (e.g. `30s`, `5m`), at most the maximum TTL. Required in the
    /// foreground; the agent uses its `default_ttl` when omitted.
    #[arg(long, value_parser = parse_ttl)]
    pub ttl: Option<Duration>,
    /// Interface (default: the interface of the default route).
    #[arg(long)]
    pub iface: Option<String>,
    /// Which direction to fault [default: egress; ingress for --dns].
    #[arg(long, value_enum)]
    pub direction: Option<Direction>,
    /// Only these protocols (repeatable).
    #[arg(long = "proto", value_enum)]
    pub protocols: Vec<Proto>,
    /// Only packets to these prefixes (IPv4 or IPv6 CIDR, repeatable).
    #[arg(long = "dest", value_name = "CIDR", value_parser = parse_cidr)]
    pub dst: Vec<IpNet>,
    /// Only packets from these prefixes (repeatable).
    #[arg(long = "src", value_name = "CIDR", value_parser = parse_cidr)]
    pub src: Vec<IpNet>,
    /// Destination prefixes from a file: one CIDR or address per line, `#` starts a comment
    /// (repeatable; added to --dest). Up to 16,384 per address family.
    #[arg(long = "dest-file", value_name = "PATH")]
    pub dst_files: Vec<PathBuf>,
    /// Source prefixes from a file, in the format of --dest-file (repeatable; added to --src).
    #[arg(long = "src-file", value_name = "PATH")]
    pub src_files: Vec<PathBuf>,
    /// Only these destination ports, `P` or `P-Q` (repeatable).
    #[arg(long = "dport", value_name = "P[-Q]")]
    pub dports: Vec<PortRange>,
    /// Only these source ports (repeatable).
    #[arg(long = "sport", value_name = "P[-Q]")]
    pub sports: Vec<PortRange>,
    /// Duty cycle `ON/OFF` (e.g. `2s/3s`): the fault acts for ON, rests for OFF, again and
    /// again until its TTL, starting with ON at inject. Computed in the kernel, so it holds even
    /// while the agent is down. ON + OFF must fit in the TTL.
    #[arg(long, value_name = "ON/OFF")]
    pub flap: Option<crate::faults::flap::Flap>,
    /// Seed for reproducible randomness (per CPU).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Fault protected traffic too (SSH and the agent's own ports are spared by default).
    #[arg(long)]
    pub include_protected: bool,
    /// Only the traffic (egress), connects and connections of processes in this cgroup v2 or
    /// below it: its path in the hierarchy, e.g. `/system.slice/nginx.service`.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["pid", "unit", "container", "pod"])]
    pub cgroup: Option<String>,
    /// Only those of the processes in this process's cgroup.
    #[arg(long, value_name = "PID", conflicts_with_all = ["unit", "container", "pod"])]
    pub pid: Option<u32>,
    /// Only those of this systemd unit's processes (`NAME` means `NAME.service`), found by the
    /// cgroup systemd names after the unit.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["container", "pod"])]
    pub unit: Option<String>,
    /// Only those of this container (docker, containerd, cri-o, podman: any runtime that names
    /// it in its cgroup), by id or unique prefix. In a container with a network namespace of
    /// its own, --reset and --refuse act inside it.
    #[arg(long, value_name = "ID", conflicts_with = "pod")]
    pub container: Option<String>,
    /// Only those of this Kubernetes pod on this node, `NAMESPACE/NAME`, found through the
    /// container runtime's CRI socket (containerd, cri-o): packet faults act in the pod's
    /// network namespace, limits and stressors on the pod's cgroup. The fault ends when the
    /// pod is deleted. The socket: through a daemon its config's `[cri] endpoint`; else (and
    /// in the foreground) `$CONTAINER_RUNTIME_ENDPOINT`, else the runtimes' default sockets.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub pod: Option<String>,
    /// With --pod: only this container of the pod, by its name in the pod spec.
    #[arg(long, value_name = "NAME", requires = "pod")]
    pub pod_container: Option<String>,
    /// Validate and print the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How to attach the tc programs.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach_mode: AttachMode,
    /// Maximum TTL accepted (at most 7 days).
    #[arg(long, value_parser = parse_max_ttl, default_value = "1h")]
    pub max_ttl: Duration,
    /// A label for the experiment (shown in list and logs).
    #[arg(long)]
    pub label: Option<String>,
    /// With an agent: block until the fault ends and print its summary (Ctrl-C stops it).
    #[arg(long)]
    pub wait: bool,
    /// Run in the foreground even if an agent is running.
    #[arg(long)]
    pub foreground: bool,
    /// With `--output json`: the fault (`--wait` or the foreground: the summary at its end, the
    /// dry run's plan) as one JSON object on stdout.
    #[command(flatten)]
    pub output: OutputArgs,
    // One group per fault type, each defined in its room under `faults/` and listed last so
    // that `--help` shows the general options first and each type under its own heading.
    /// Loss (`faults/loss`).
    #[command(flatten)]
    pub loss: crate::faults::loss::LossArgs,
    /// Delay, bandwidth and the netem family (`faults/shape`).
    #[command(flatten)]
    pub shape: crate::faults::shape::ShapeArgs,
    /// DNS answers (`faults/dns`).
    #[command(flatten)]
    pub dns: crate::faults::dns::DnsArgs,
    #[command(flatten)]
    pub refuse: crate::faults::refuse::RefuseArgs,
    #[command(flatten)]
    pub reset: crate::faults::reset::ResetArgs,
    /// Resource limits (`faults/limit`).
    #[command(flatten)]
    pub limit: crate::faults::limit::LimitArgs,
    /// Stressors (`faults/stress`).
    #[command(flatten)]
    pub stress: crate::faults::stress::StressArgs,
}

/// `run` flags (each overrides the config file).
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Configuration file [default: /etc/chaos-agent/config.toml, if it exists].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Prometheus endpoint address (overrides `metrics.listen`).
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How to attach tc programs (overrides `attach_mode`).
    #[arg(long, value_enum)]
    pub attach_mode: Option<AttachMode>,
    /// Log format (overrides `log_format`).
    #[arg(long, value_enum)]
    pub log_format: Option<crate::config::LogFormat>,
}

/// `show` flags.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The fault id (`f-XXXXXXXX`).
    pub id: FaultId,
    /// Output format.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `stop` flags.
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// The fault id (`f-XXXXXXXX`).
    #[arg(required_unless_present_any = ["all", "label"], conflicts_with_all = ["all", "label"])]
    pub id: Option<FaultId>,
    /// Stop every fault.
    #[arg(long, conflicts_with = "label")]
    pub all: bool,
    /// Stop every fault injected with this `--label` (what an outside orchestrator's rollback
    /// uses: its own faults only, whatever their ids).
    #[arg(long, value_name = "LABEL")]
    pub label: Option<String>,
    /// Output format.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `extend` flags.
#[derive(Debug, clap::Args)]
pub struct ExtendArgs {
    /// The fault id (`f-XXXXXXXX`).
    pub id: FaultId,
    /// How much longer (e.g. `30s`).
    #[arg(long, value_parser = parse_extension)]
    pub by: Duration,
    /// Output format.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file (exit 0 if valid, 2 with the reason if not).
    Check {
        /// The file.
        file: PathBuf,
    },
}

/// `cleanup` flags.
#[derive(Debug, clap::Args)]
pub struct CleanupArgs {
    /// Output format.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `doctor` flags.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Output format.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// clap value parser of `--max-ttl`: a duration in (0, 7 days].
pub fn parse_max_ttl(s: &str) -> Result<Duration, String> {
    let d = crate::spec::parse_duration_arg(s)?;
    if d.is_zero() || d > crate::spec::MAX_TTL_CEILING {
        return Err(format!(
            "{} is outside (0, {}]",
            crate::spec::as_given(s, humantime::format_duration(d)),
            humantime::format_duration(crate::spec::MAX_TTL_CEILING)
        ));
    }
    Ok(d)
}

/// `--ttl`: greater than zero. Its maximum is the agent's to check (the daemon's
/// `limits.max_ttl`, or `--max-ttl` in the foreground), which names the limit that applies. A
/// zero must be refused here: the client sends an omitted `--ttl` as zero, which the daemon
/// replaces with its `default_ttl`, so `--ttl 0s` would otherwise inject a five-minute fault.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = crate::spec::parse_duration_arg(s)?;
    if d.is_zero() {
        return Err("a ttl must be greater than zero".to_owned());
    }
    Ok(d)
}

/// `extend --by`: greater than zero and at most the TTL ceiling (no extension beyond it can be
/// accepted, and the agent adds it to deadlines).
fn parse_extension(s: &str) -> Result<Duration, String> {
    let d = crate::spec::parse_duration_arg(s)?;
    if d.is_zero() || d > crate::spec::MAX_TTL_CEILING {
        return Err(format!(
            "{} is outside (0, {}]",
            crate::spec::as_given(s, humantime::format_duration(d)),
            humantime::format_duration(crate::spec::MAX_TTL_CEILING)
        ));
    }
    Ok(d)
}

/// clap value parser of `--dest` / `--src`: a CIDR, or a bare address (a host prefix).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an IPv4/IPv6 address or CIDR"))
}

/// Parses a prefix list: one CIDR (or bare address) per line; `#` starts a comment; blank
/// lines are skipped. An error names `origin` and the line.
pub fn parse_prefix_list(text: &str, origin: &str) -> Result<Vec<IpNet>, CliError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or_default().trim();
        if entry.is_empty() {
            continue;
        }
        out.push(
            parse_cidr(entry)
                .map_err(|e| CliError::bad_input(format!("{origin}:{}: {e}", i + 1)))?,
        );
    }
    Ok(out)
}

/// Reads a `--dest-file` / `--src-file`.
pub fn read_prefix_file(path: &std::path::Path) -> Result<Vec<IpNet>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::bad_input(format!("{}: {e}", path.display())))?;
    parse_prefix_list(&text, &path.display().to_string())
}

/// The clap command, as `--help` shows it: every verb with the exit codes in its footer. (Man
/// pages and completions should start from it too.)
#[must_use]
pub fn command() -> clap::Command {
    fn footer(cmd: clap::Command) -> clap::Command {
        cmd.after_help(exit::HELP_FOOTER).mut_subcommands(footer)
    }
    footer(<Cli as clap::CommandFactory>::command())
}

/// Long names of the options that take a value, in every subcommand.
fn value_options() -> std::collections::HashSet<String> {
    let cmd = command();
    let mut args: Vec<&clap::Arg> = cmd.get_arguments().collect();
    for sub in cmd.get_subcommands() {
        args.extend(sub.get_arguments());
    }
    args.iter()
        .filter(|a| a.get_action().takes_values())
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect()
}

/// clap reads `--loss -0.1` as `--loss` without its value followed by an unknown flag `-0`, and
/// says so. The agent's only short flags are `-h` and `-V`, so any other word with one leading
/// dash (`-0.1`, `-1mbit`, `-5s`, `-inf`) right after an option that takes a value is that
/// value: it is passed on as `--loss=-0.1`, and the option's parser refuses it with the reason.
/// (A long flag after an option, `--loss --ttl 5s`, is still a missing value, as clap says.)
#[must_use]
pub fn join_negative_values(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let looks_negative = |s: &std::ffi::OsString| {
        s.to_str().is_some_and(|s| {
            s.len() > 1 && s.starts_with('-') && !s.starts_with("--") && !["-h", "-V"].contains(&s)
        })
    };
    let takes_value = value_options();
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter().peekable();
    while let Some(a) = it.next() {
        if a == "--" {
            out.push(a);
            out.extend(it);
            break;
        }
        let long = a
            .to_str()
            .and_then(|s| s.strip_prefix("--"))
            .filter(|l| takes_value.contains(*l))
            .map(str::to_owned);
        match (long, it.peek()) {
            (Some(long), Some(next)) if looks_negative(next) => {
                let value = it.next().unwrap_or_default();
                let mut joined = std::ffi::OsString::from(format!("--{long}="));
                joined.push(value);
                out.push(joined);
            }
            _ => out.push(a),
        }
    }
    out
}

/// Parses the command line. A clap error is printed as one `error:` line (clap's own rendering
/// adds a usage block and a `--help` hint below it) and exits as [`Exit::of_clap`] says:
/// [`Exit::Refused`] for a value its parser refused, [`Exit::Usage`] for the rest; `--help` and
/// `--version` print as usual, in colour only where [`output::colour`] allows it.
fn parse_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Cli, ExitCode> {
    use clap::FromArgMatches as _;
    use clap::error::ErrorKind;
    let args = join_negative_values(args.into_iter().collect());
    // Help goes to stdout (clap prints help it was not asked for, `chaos-agent experiment`, to
    // stderr, plain when stderr is not a terminal either).
    let colour = if output::colour(&std::io::stdout()) && output::colour(&std::io::stderr()) {
        clap::ColorChoice::Always
    } else {
        clap::ColorChoice::Never
    };
    let e = match command()
        .color(colour)
        .try_get_matches_from(&args)
        .and_then(|mut m| Cli::from_arg_matches_mut(&mut m))
    {
        Ok(cli) => return check_loss_model(&cli).map(|()| cli),
        Err(e) => e,
    };
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return Err(Exit::of_clap(e.kind()).into());
    }
    eprintln!("{}", usage_error_line(&e, &args));
    Err(Exit::of_clap(e.kind()).into())
}

/// `--loss-model` parses any numbers; its ranges are checked with the whole spec, which the
/// client sends to a daemon as it is. A model with `p + r` zero or infinite has a mean loss of
/// NaN, which JSON carries as `null`, and the daemon could only answer "invalid type: null,
/// expected f64". Its ranges are checked here, as the foreground checks them.
fn check_loss_model(cli: &Cli) -> Result<(), ExitCode> {
    let Command::Inject(a) = &cli.command else {
        return Ok(());
    };
    let Some(model) = a.loss.loss_model else {
        return Ok(());
    };
    let spec = crate::faults::loss::LossSpec {
        probability: 1.0,
        model: Some(model),
    };
    spec.validate().map_err(|e| {
        eprintln!("error: invalid value for '--loss-model <MODEL>': {e}");
        Exit::Refused.into()
    })
}

/// One line for a clap error: its message, and the hints clap prints under it (possible values,
/// a similar argument), without the usage block.
#[must_use]
pub fn usage_error_line(e: &clap::Error, args: &[std::ffi::OsString]) -> String {
    if e.kind() == clap::error::ErrorKind::InvalidUtf8 {
        return invalid_utf8_line(args);
    }
    let mut text = e.render().to_string();
    // clap quotes a refused value as given: escape it before the lines are joined, or a newline
    // in it reads as a break between clap's lines.
    if let Some(clap::error::ContextValue::String(v)) =
        e.get(clap::error::ContextKind::InvalidValue)
        && v.contains(char::is_control)
    {
        text = text.replacen(
            &format!("'{v}'"),
            &format!("'{}'", crate::spec::one_line(v, usize::MAX)),
            1,
        );
    }
    let mut line = String::new();
    for part in text.lines().map(str::trim) {
        if part.starts_with("Usage:") || part.starts_with("For more information") {
            break;
        }
        if part.is_empty() {
            continue;
        }
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { "; " });
        }
        line.push_str(part);
    }
    if line.is_empty() {
        format!("error: {}", e.kind())
    } else {
        // clap quotes the value as given: a carriage return in it would overwrite the line.
        crate::spec::one_line(&line, usize::MAX)
    }
}

/// clap says only "invalid UTF-8 was detected in one or more arguments": name the option whose
/// value it is, and show the bytes.
fn invalid_utf8_line(args: &[std::ffi::OsString]) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let Some(i) = args
        .iter()
        .skip(1)
        .position(|a| a.to_str().is_none())
        .map(|i| i + 1)
    else {
        return "error: invalid UTF-8 in an argument or in a CHAOS_AGENT_* variable".to_owned();
    };
    let bytes = args[i].as_bytes();
    // `--label=<bytes>`
    if let Some(eq) = bytes.iter().position(|b| *b == b'=')
        && bytes.starts_with(b"--")
        && let Ok(name) = std::str::from_utf8(&bytes[..eq])
    {
        return format!(
            "error: the value of {name} is not valid UTF-8: \"{}\"",
            bytes[eq + 1..].escape_ascii()
        );
    }
    let escaped = bytes.escape_ascii();
    match args[i - 1].to_str().and_then(|p| p.strip_prefix("--")) {
        Some(long) if value_options().contains(long) => {
            format!("error: the value of --{long} is not valid UTF-8: \"{escaped}\"")
        }
        _ => format!("error: argument {i} is not valid UTF-8: \"{escaped}\""),
    }
}

fn init_logging(filter: Option<&str>, default: &str, format: crate::config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter.unwrap_or(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal and without NO_COLOR: journald and log shippers get plain text.
    let ansi = output::colour(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
    let _ = match format {
        crate::config::LogFormat::Text => b.try_init(),
        crate::config::LogFormat::Json => b.json().flatten_event(true).try_init(),
    };
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
    let cli = match parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if !matches!(cli.command, Command::Run(_)) {
        // Rust ignores SIGPIPE so writes fail with EPIPE, and println! then panics:
        // `chaos-agent doctor | head` must end quietly like any Unix tool. The daemon keeps
        // ignoring it (a client hanging up must not kill the agent).
        // SAFETY: restoring a signal's default disposition at start-up, before any thread.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    if !matches!(cli.command, Command::Run(_)) {
        // `run` sets up logging itself, once it knows the configured format.
        // The CLI prints its own results; only errors from the library are worth a log line.
        init_logging(cli.log.as_deref(), "error", crate::config::LogFormat::Text);
    }
    let state_dir = cli
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(paths::STATE_DIR));
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(paths::SOCKET));
    let result = match &cli.command {
        Command::Inject(args) => inject::run(&state_dir, &socket, args),
        Command::Run(args) => run::run(&cli, args),
        Command::List(o) => client::list(&socket, *o),
        Command::Show(a) => client::show(&socket, a),
        Command::Stop(a) => client::stop(&socket, a),
        Command::Extend(a) => client::extend(&socket, a),
        Command::Status(o) => client::status(&socket, *o),
        Command::Pause(o) => client::pause(&socket, *o),
        Command::Resume(o) => client::resume(&socket, *o),
        Command::Config(ConfigCommand::Check { file }) => run::check_config(file),
        Command::Cleanup(args) => cleanup::run(&state_dir, args),
        Command::Doctor(args) => doctor::run(args),
        Command::Experiment(c) => experiment::run(&state_dir, &socket, c),
        Command::Completions(a) => completions::completions(a),
        Command::Manpages(a) => completions::manpages(a),
        Command::StressWorker(a) => {
            crate::faults::stress::worker::run(a);
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Engine errors already spell out their causes; anyhow's chain would repeat them.
            match e.downcast_ref::<crate::engine::EngineError>() {
                Some(engine_err) => eprintln!("error: {engine_err}"),
                None => eprintln!("error: {e:#}"),
            }
            Exit::of(&e).into()
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_lists_take_comments_blank_lines_and_bare_addresses() {
        let text =
            "# egress to the region\n10.0.0.0/8\n\n  192.0.2.7   # one host\n2001:db8::/32\n";
        let nets = parse_prefix_list(text, "f").expect("parses");
        let want: Vec<IpNet> = ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]
            .iter()
            .map(|s| s.parse().expect("net"))
            .collect();
        assert_eq!(nets, want);
        let err = parse_prefix_list("10.0.0.0/8\n10.0.0/33\n", "list.txt").expect_err("bad line");
        assert!(err.message.starts_with("list.txt:2: "), "{err}");
    }

    fn usage_error(args: &[&str]) -> String {
        let args = join_negative_values(
            std::iter::once("chaos-agent")
                .chain(args.iter().copied())
                .map(Into::into)
                .collect(),
        );
        let e = Cli::try_parse_from(&args).expect_err("a usage error");
        usage_error_line(&e, &args)
    }

    #[test]
    fn usage_errors_are_one_line() {
        for (args, want) in [
            (
                &["inject", "--loss", "-0.1"][..],
                "error: invalid value '-0.1' for '--loss <LOSS>': -0.1 is outside (0, 1]",
            ),
            (
                &["inject", "--rate", "-1mbit"][..],
                "error: invalid value '-1mbit' for '--rate <RATE>': bad rate \"-1mbit\"",
            ),
            (
                &["inject", "--ttl", "0s"][..],
                "error: invalid value '0s' for '--ttl <TTL>': a ttl must be greater than zero",
            ),
            (
                &["inject", "--ttl", "18446744073709551616s"][..],
                "too long to be a duration",
            ),
            (
                &["inject", "--direction", "up"][..],
                "; [possible values: ingress, egress, both]",
            ),
            (
                &["extend", "f-00000001", "--by", "18446744073709551615s"][..],
                "is outside (0, 7days]",
            ),
            (
                &["inject", "--loss", "--ttl", "5s"][..],
                "error: a value is required for '--loss <LOSS>' but none was supplied",
            ),
            (
                &["inject", "--dport", "-5", "--loss", "0.1"][..],
                "error: invalid value '-5' for '--dport <P[-Q]>': bad port range \"-5\"",
            ),
            (
                &["extend", "f-00000001"][..],
                "error: the following required arguments were not provided: --by <BY>",
            ),
            // Control characters the value parsers trim or skip (found by fuzzing): escaped in
            // clap's quote, the parsed value in ours.
            (
                &["inject", "--ttl", "5s", "--max-ttl", "8y\r"][..],
                "error: invalid value '8y\\r' for '--max-ttl <MAX_TTL>': 8years is outside",
            ),
            (
                &["inject", "--ttl", "5s", "--loss", "\n1.5"][..],
                "error: invalid value '\\n1.5' for '--loss <LOSS>': 1.5 is outside (0, 1]",
            ),
        ] {
            let line = usage_error(args);
            assert!(line.contains(want), "{args:?}: {line}");
            assert!(
                !line.contains(['\n', '\r']) && !line.contains("Usage"),
                "{line}"
            );
        }
    }

    #[test]
    fn non_utf8_values_are_named() {
        use std::os::unix::ffi::OsStrExt as _;
        let args = |bad: &[u8], split: bool| -> Vec<std::ffi::OsString> {
            let mut v: Vec<std::ffi::OsString> =
                ["chaos-agent", "inject"].iter().map(Into::into).collect();
            if split {
                v.push("--iface".into());
                v.push(std::ffi::OsStr::from_bytes(bad).into());
            } else {
                let mut arg = b"--iface=".to_vec();
                arg.extend_from_slice(bad);
                v.push(std::ffi::OsStr::from_bytes(&arg).into());
            }
            v
        };
        for split in [true, false] {
            assert_eq!(
                invalid_utf8_line(&args(b"e\xff0", split)),
                r#"error: the value of --iface is not valid UTF-8: "e\xff0""#
            );
        }
    }
}
