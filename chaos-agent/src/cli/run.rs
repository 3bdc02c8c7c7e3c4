//! `chaos-agent run`: the daemon. Order matters and is the point of this file:
//! bind the listeners (so a second agent fails before touching anything), start the engine (which
//! removes a dead agent's leftovers), serve; on SIGTERM/SIGINT stop the API first, revert every
//! fault, then exit; SIGHUP reloads the configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::{Cli, RunArgs};
use crate::api::server::{self, ApiState, Auth};
use crate::config::Config;
use crate::engine::Engine;
use crate::kernel::bpf::AttachMode;
use crate::kernel::tc::Hook;
use crate::metrics::Metrics;
use crate::sys::paths;

/// Flags that override the file; re-applied after every reload so SIGHUP cannot undo them.
struct Overrides {
    state_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    metrics_addr: Option<SocketAddr>,
    attach_mode: Option<crate::kernel::bpf::AttachMode>,
    log_format: Option<crate::config::LogFormat>,
}

impl Overrides {
    fn apply(&self, cfg: &mut Config) {
        if let Some(d) = &self.state_dir {
            cfg.state_dir.clone_from(d);
        }
        if let Some(s) = &self.socket {
            cfg.api.socket.clone_from(s);
        }
        if let Some(a) = self.metrics_addr {
            cfg.metrics.listen = a;
            cfg.metrics.enabled = true;
        }
        if let Some(m) = self.attach_mode {
            cfg.attach_mode = m;
        }
        if let Some(f) = self.log_format {
            cfg.log_format = f;
        }
    }
}

/// `chaos-agent config check FILE`.
pub(super) fn check_config(file: &Path) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(file)?;
    cfg.tcp_token().context("the TCP API token")?;
    println!(
        "{}: ok (socket {}, metrics {}, max_ttl {}, default_ttl {}, max_faults {}, protected ports {})",
        file.display(),
        cfg.api.socket.display(),
        if cfg.metrics.enabled {
            cfg.metrics.listen.to_string()
        } else {
            "off".to_owned()
        },
        humantime::format_duration(cfg.limits.max_ttl),
        humantime::format_duration(cfg.limits.default_ttl),
        cfg.limits.max_faults,
        cfg.protected_ports()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn run(cli: &Cli, a: &RunArgs) -> anyhow::Result<ExitCode> {
    let (path, explicit) = match &a.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(paths::CONFIG), false),
    };
    let overrides = Overrides {
        state_dir: cli.state_dir.clone(),
        socket: cli.socket.clone(),
        metrics_addr: a.metrics_addr,
        attach_mode: a.attach_mode,
        log_format: a.log_format,
    };
    let mut cfg = Config::load_or_default(&path, explicit)?;
    overrides.apply(&mut cfg);
    super::init_logging(cli.log.as_deref(), "info", cfg.log_format);
    super::preflight()?;
    let rt = super::runtime()?;
    rt.block_on(daemon(cfg, overrides, path, explicit))
}

fn backends(cfg: &Config) -> String {
    format!("ebpf/{}", cfg.attach_mode.resolve().as_str())
}

async fn daemon(
    mut cfg: Config,
    overrides: Overrides,
    path: PathBuf,
    explicit: bool,
) -> anyhow::Result<ExitCode> {
    // Handlers first: a SIGTERM during start-up (reconcile, preload, or just after the API
    // answers) must wait for the loop below and end in an orderly shutdown, not kill the agent
    // by the signal's default action (`cargo xtask torture` caught that window).
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let token = cfg.tcp_token()?;
    let auth = Auth::from_config(&cfg, token)?;
    // Refused before anything is bound or changed: kept hooks need tcx and their interfaces.
    let kept = kept_interfaces(&cfg)?;
    // Listeners first: a second agent must fail here, before it reconciles or changes anything.
    let unix = server::bind_unix(&cfg.api.socket, auth.allowed_group.as_ref().map(|g| g.1))?;
    let tcp = match cfg.api.tcp_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind the TCP API on {addr}"))?,
        ),
        None => None,
    };
    let metrics_listener = if cfg.metrics.enabled {
        let l = TcpListener::bind(cfg.metrics.listen)
            .await
            .with_context(|| format!("bind the metrics endpoint on {}", cfg.metrics.listen))?;
        // With port 0 the kernel picks one: protect and report the real port.
        cfg.metrics.listen = l.local_addr()?;
        Some(l)
    } else {
        None
    };
    let metrics = Arc::new(Metrics::new(&[
        ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ("kernel", crate::sys::kernel_release()),
        ("backends", backends(&cfg)),
    ]));
    let (engine, report) = Engine::start(cfg.engine_config(), metrics.clone())
        .await
        .context("start the engine")?;
    if report.removed() > 0 || report.journals_replayed > 0 {
        tracing::warn!(event = "reconcile", removed = report.removed(), journals_replayed = report.journals_replayed, by_kind = ?report.removed_by_kind, "removed a dead agent's leftovers");
    }
    for e in &report.errors {
        tracing::error!(event = "reconcile", error = %e, "could not remove a leftover");
    }
    // Verify the programs now, once: every inject is then map writes (and an attach for the
    // first fault on a hook). A kernel that refuses them is reported, not fatal: faults that
    // need no eBPF still work, and each packet fault then reports the verifier's reason.
    let t0 = std::time::Instant::now();
    match engine.preload() {
        Ok(()) => tracing::info!(
            event = "preload",
            took_ms = t0.elapsed().as_millis() as u64,
            "datapath loaded and verified"
        ),
        Err(e) => {
            tracing::error!(event = "preload", error = %e, "the eBPF datapath does not load on this kernel");
        }
    }
    for (ifindex, ifname) in &kept {
        for hook in [Hook::Ingress, Hook::Egress] {
            engine
                .datapath()
                .keep_hook(*ifindex, ifname, hook)
                .with_context(|| {
                    format!(
                        "datapath.keep_attached: attach {} on {ifname}",
                        hook.program()
                    )
                })?;
        }
        tracing::info!(event = "keep_attached", iface = %ifname, "classifiers kept attached until exit");
    }
    {
        let e = engine.clone();
        metrics.set_live_counters(Box::new(move || e.counters_now()));
    }
    let state = Arc::new(ApiState {
        engine: engine.clone(),
        auth: RwLock::new(auth),
        started: Instant::now(),
        leftovers_at_start: report.removed(),
        metrics_addr: metrics_listener.as_ref().and_then(|l| l.local_addr().ok()),
        experiments: Arc::new(crate::experiment::daemon::Experiments::new(
            engine.clone(),
            cfg.state_dir.join("experiments"),
        )),
    });
    let mut schedules_stop = spawn_schedules(&cfg.experiments, &state, &engine);
    let api_stop = CancellationToken::new();
    let metrics_stop = CancellationToken::new();
    let api = tokio::spawn(server::serve(state.clone(), unix, tcp, api_stop.clone()));
    let metrics_task = metrics_listener.map(|l| {
        tokio::spawn(server::serve_metrics(
            l,
            metrics.clone(),
            metrics_stop.clone(),
        ))
    });
    tracing::info!(
        event = "start",
        pid = std::process::id(),
        socket = %cfg.api.socket.display(),
        tcp = ?cfg.api.tcp_listen,
        metrics = ?state.metrics_addr,
        attach_mode = cfg.attach_mode.as_str(),
        max_faults = cfg.limits.max_faults,
        "chaos-agent running"
    );

    let signal_name = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => {
                let Some(experiments) = reload(&path, explicit, &overrides, &cfg, &engine, &state) else {
                    continue;
                };
                // Schedules and the monkey restart with the file's: a run in progress goes on
                // (it belongs to the experiments, not to the schedule that started it).
                if experiments != cfg.experiments {
                    schedules_stop.cancel();
                    cfg.experiments = experiments;
                    schedules_stop = spawn_schedules(&cfg.experiments, &state, &engine);
                    tracing::info!(event = "reload", key = "experiments", "experiment schedules replaced");
                }
            }
        }
    };

    // Stop the API first, so no new fault can arrive while the others are reverted.
    let t0 = Instant::now();
    tracing::info!(
        event = "shutdown",
        signal = signal_name,
        "stopping: API closed, reverting every fault"
    );
    api_stop.cancel();
    schedules_stop.cancel();
    let stopped = state
        .experiments
        .stop_all(&format!("the agent is shutting down ({signal_name})"))
        .await;
    if stopped > 0 {
        tracing::info!(
            event = "shutdown",
            experiments = stopped,
            "experiments stopped"
        );
    }
    let reports = engine.shutdown().await;
    let errors: usize = reports.iter().map(|r| r.errors.len()).sum();
    // In-flight requests (e.g. `inject --wait`) get their answer; idle connections are closed.
    if tokio::time::timeout(Duration::from_secs(1), api)
        .await
        .is_err()
    {
        tracing::warn!("API connections still open after 1s; closing them");
    }
    let _ = std::fs::remove_file(&cfg.api.socket);
    metrics_stop.cancel();
    if let Some(t) = metrics_task {
        let _ = tokio::time::timeout(Duration::from_millis(500), t).await;
    }
    tracing::info!(
        event = "shutdown",
        reverted = reports.len(),
        errors,
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "chaos-agent stopped"
    );
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        super::Exit::Failed.into()
    })
}

/// Starts the schedules and the monkey of `conf` (nothing if it has none); cancel the token to
/// stop them.
fn spawn_schedules(
    conf: &crate::experiment::schedule::ExperimentsConfig,
    state: &Arc<ApiState>,
    engine: &Engine,
) -> CancellationToken {
    let stop = CancellationToken::new();
    if !conf.is_empty() {
        let e = engine.clone();
        tokio::spawn(crate::experiment::schedule::run(
            conf.clone(),
            state.experiments.clone(),
            move || e.config(),
            stop.clone(),
        ));
        tracing::info!(
            event = "schedules",
            schedules = conf.schedule.len(),
            monkey = conf.monkey.is_some(),
            "experiment schedules running"
        );
    }
    stop
}

/// The interfaces of `datapath.keep_attached` with their indexes, or why the daemon must not
/// start: a kept hook needs tcx links, which the kernel detaches when the agent dies (a
/// `cls_bpf` filter would stay with no fault journaled to remove it), and an interface that
/// exists.
fn kept_interfaces(cfg: &Config) -> anyhow::Result<Vec<(u32, String)>> {
    let names = &cfg.datapath.keep_attached;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let kept = names
        .iter()
        .map(|n| {
            crate::sys::ifindex(n).map(|i| (i, n.clone())).map_err(|e| {
                anyhow::anyhow!("datapath.keep_attached: interface {n:?}: {e}; nothing was changed")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mode = cfg.attach_mode.resolve();
    if mode != AttachMode::Tcx {
        anyhow::bail!(
            "datapath.keep_attached needs tcx links (Linux 6.6 or later, attach_mode auto or tcx); the attach mode here is {}, whose filters would outlive the agent; nothing was changed",
            mode.as_str()
        );
    }
    Ok(kept)
}

/// SIGHUP: re-read the file; on any error keep the running configuration. Returns the file's
/// experiments section when it was taken, for the caller to restart the schedules with.
fn reload(
    path: &Path,
    explicit: bool,
    overrides: &Overrides,
    running: &Config,
    engine: &Engine,
    state: &ApiState,
) -> Option<crate::experiment::schedule::ExperimentsConfig> {
    let mut cfg = match Config::load_or_default(path, explicit) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(event = "reload", error = %e, "config reload failed; keeping the running configuration");
            return None;
        }
    };
    overrides.apply(&mut cfg);
    // Addresses are bound once; keep the running ones so protected ports stay right.
    for (what, changed) in [
        ("api.socket", cfg.api.socket != running.api.socket),
        (
            "api.tcp_listen",
            cfg.api.tcp_listen != running.api.tcp_listen,
        ),
        (
            "metrics",
            cfg.metrics.enabled != running.metrics.enabled
                || (cfg.metrics.listen != running.metrics.listen && cfg.metrics.listen.port() != 0),
        ),
        ("state_dir", cfg.state_dir != running.state_dir),
        ("datapath.keep_attached", cfg.datapath != running.datapath),
    ] {
        if changed {
            tracing::warn!(
                event = "reload",
                key = what,
                "changed in the file but only takes effect after a restart"
            );
        }
    }
    cfg.api.socket.clone_from(&running.api.socket);
    cfg.api.tcp_listen = running.api.tcp_listen;
    cfg.metrics = running.metrics.clone();
    cfg.state_dir.clone_from(&running.state_dir);
    cfg.datapath.clone_from(&running.datapath);
    let auth = match cfg
        .tcp_token()
        .map_err(anyhow::Error::from)
        .and_then(|t| Ok(Auth::from_config(&cfg, t)?))
    {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(event = "reload", error = %e, "config reload failed; keeping the running configuration");
            return None;
        }
    };
    if let Ok(mut a) = state.auth.write() {
        *a = auth;
    }
    engine.reload(cfg.engine_config());
    tracing::info!(event = "reload", max_ttl = %humantime::format_duration(cfg.limits.max_ttl), max_faults = cfg.limits.max_faults, "configuration reloaded");
    Some(cfg.experiments)
}
