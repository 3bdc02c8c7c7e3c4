//! `chaos-agent inject` in the foreground: apply, show a live countdown with the kernel
//! counters, revert at TTL / Ctrl-C / SIGTERM, print a one-line summary.

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use super::{InjectArgs, UsageError};
use crate::engine::{self, Engine, Requester, RevertReason, RevertReport};
use crate::faults::FaultSpec;
use crate::kernel::bpf::Counters;
use crate::metrics::Metrics;
use crate::target::Target;

/// Builds the spec from the flags.
pub(super) fn spec_from_args(a: &InjectArgs) -> Result<FaultSpec, UsageError> {
    let loss = a.loss.to_spec();
    let shape = a.shape.to_spec();
    let dns = a.dns.to_spec().map_err(UsageError)?;
    if loss.is_none() && shape.is_none() && dns.is_none() {
        return Err(UsageError(
            "nothing to inject: give --loss, --loss-model, --delay, --rate, --corrupt, --duplicate, --reorder or --dns".to_owned(),
        ));
    }
    // Answers arrive (ingress) where resolvers are; other faults default to egress.
    let direction = a.direction.unwrap_or(if dns.is_some() {
        crate::target::Direction::Ingress
    } else {
        crate::target::Direction::Egress
    });
    let mut src = a.src.clone();
    for f in &a.src_files {
        src.extend(super::read_prefix_file(f)?);
    }
    let mut dst = a.dst.clone();
    for f in &a.dst_files {
        dst.extend(super::read_prefix_file(f)?);
    }
    Ok(FaultSpec {
        // Zero means "not given": the agent substitutes its default TTL; the foreground path
        // requires the flag before it gets here.
        ttl: a.ttl.unwrap_or_default(),
        target: Target {
            iface: a.iface.clone(),
            direction,
            protocols: a.protocols.clone(),
            src,
            dst,
            sports: a.sports.clone(),
            dports: a.dports.clone(),
            include_protected: a.include_protected,
        },
        loss,
        shape,
        dns,
        flap: a.flap,
        force: a.force,
        seed: a.seed,
        label: a.label.clone(),
    })
}

/// The line both the foreground and the client print once a fault is in (scripts parse its id).
#[must_use]
pub fn injected_line(info: &crate::engine::FaultInfo) -> String {
    format!(
        "injected {}: {} ({}), ttl {}",
        info.id,
        info.summary,
        info.backend,
        humantime::format_duration(info.spec.ttl)
    )
}

fn pct(n: u64, d: u64) -> String {
    if d == 0 {
        "-".to_owned()
    } else {
        format!("{:.2}%", n as f64 * 100.0 / d as f64)
    }
}

/// `f-0000002a reverted (ttl) after 30.0s: <counters>; revert errors: ...`: how a fault ended,
/// the same for the foreground inject, the client's `inject --wait` and `stop`.
pub fn report_line(r: &RevertReport, elapsed: Option<Duration>) -> String {
    format!(
        "{} reverted ({}){}: {}{}",
        r.id,
        r.reason.as_str(),
        elapsed.map_or_else(String::new, |e| format!(" after {:.1}s", e.as_secs_f64())),
        r.counters
            .as_ref()
            .map_or_else(|| "no counters".to_owned(), counters_line),
        if r.errors.is_empty() {
            String::new()
        } else {
            format!("; revert errors: {}", r.errors.join("; "))
        }
    )
}

/// One line of counters, e.g. `matched 1200, dropped 118 (9.83%)`.
#[must_use]
pub fn counters_line(c: &Counters) -> String {
    let t = c.total();
    let mut line = format!(
        "matched {}, dropped {} ({})",
        t.matched,
        t.dropped,
        pct(t.dropped, t.matched)
    );
    if t.steered > 0 {
        let _ = write!(line, ", shaped {}", t.steered);
    }
    line
}

pub(super) fn run(state_dir: &Path, socket: &Path, a: &InjectArgs) -> anyhow::Result<ExitCode> {
    let spec = spec_from_args(a)?;
    let client = crate::api::client::Client::new(socket);
    if !a.foreground && !a.dry_run && client.agent_present() {
        return super::client::inject(&client, &spec, a);
    }
    if a.ttl.is_none() {
        return Err(UsageError(
            "--ttl is required when no agent is running (the fault runs in the foreground)"
                .to_owned(),
        )
        .into());
    }
    let cfg = super::engine_config(state_dir.to_owned(), a.attach_mode, a.max_ttl);
    if a.dry_run {
        // No engine: a dry run must not even open the journal.
        let (spec, plan) = engine::plan(&cfg, spec)?;
        println!(
            "dry run: {} for {} (nothing changed)",
            spec.summary(),
            humantime::format_duration(spec.ttl)
        );
        for step in plan {
            println!("  - {step}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Validate before checking privileges, so bad input gets its own clear error.
    engine::plan(&cfg, spec.clone())?;
    super::preflight()?;
    let rt = super::runtime()?;
    rt.block_on(foreground(cfg, spec, a.json))
}

async fn foreground(
    cfg: engine::EngineConfig,
    spec: FaultSpec,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let metrics = Arc::new(Metrics::default());
    let (engine, leftovers) = Engine::start(cfg, metrics).await.context("start engine")?;
    if leftovers.removed() > 0 || leftovers.journals_replayed > 0 {
        eprintln!(
            "removed {} leftover object(s) of a dead agent",
            leftovers.removed()
        );
    }
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let started = Instant::now();
    let info = engine.inject(spec, Requester::me()).await?;
    println!("{}", injected_line(&info));
    let _ = std::io::stdout().flush();
    let mut done = engine
        .watch(info.id)
        .await
        .context("fault vanished right after inject")?;
    let tty = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(if tty {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    });
    tick.tick().await;
    let report: RevertReport = loop {
        tokio::select! {
            r = done.changed() => {
                if r.is_err() { anyhow::bail!("engine stopped unexpectedly"); }
                if let Some(rep) = done.borrow().clone() { break rep; }
            }
            _ = sigint.recv() => {
                if let Some(rep) = engine.revert(info.id, RevertReason::Stopped).await { break rep; }
            }
            _ = sigterm.recv() => {
                if let Some(rep) = engine.revert(info.id, RevertReason::Shutdown).await { break rep; }
            }
            _ = tick.tick() => {
                if let Some(live) = engine.get(info.id).await {
                    let line = format!(
                        "{} {}s left | {}",
                        info.id,
                        live.remaining_ms.div_ceil(1000),
                        live.counters.as_ref().map_or_else(String::new, counters_line)
                    );
                    if tty { eprint!("\r\x1b[2K{line}"); } else { eprintln!("{line}"); }
                }
            }
        }
    };
    if tty {
        eprintln!();
    }
    engine.shutdown().await;
    let elapsed = started.elapsed();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    println!("summary: {}", report_line(&report, Some(elapsed)));
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
