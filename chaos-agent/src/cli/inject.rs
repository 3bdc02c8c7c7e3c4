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

use super::output::{DryRun, InjectSummary, OutputArgs, print_json};
use super::{CliError, InjectArgs};
use crate::engine::{self, Engine, FaultInfo, Requester, RevertReason, RevertReport};
use crate::faults::FaultSpec;
use crate::faults::dns::DnsAnswer;
use crate::kernel::bpf::Counters;
use crate::metrics::Metrics;
use crate::target::Target;

/// Builds the spec from the flags.
pub(crate) fn spec_from_args(a: &InjectArgs) -> Result<FaultSpec, CliError> {
    let loss = a.loss.to_spec();
    let shape = a.shape.to_spec();
    let dns = a.dns.to_spec().map_err(CliError::bad_input)?;
    let refuse = a.refuse.to_spec();
    let reset = a.reset.to_spec();
    let limit = a.limit.to_spec();
    let stress = a.stress.to_spec();
    if loss.is_none()
        && shape.is_none()
        && dns.is_none()
        && refuse.is_none()
        && reset.is_none()
        && limit.is_none()
        && stress.is_none()
    {
        return Err(CliError::usage(
            "nothing to inject: give --loss, --loss-model, --delay, --rate, --corrupt, --duplicate, --reorder, --dns, --refuse, --reset, --cpu-limit, --memory-high, --memory-max, --io-limit, --cpu-stress, --memory-stress or --io-stress",
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
            cgroup: a.cgroup.clone(),
            pid: a.pid,
            unit: a.unit.clone(),
            container: a.container.clone(),
            pod: a.pod.clone(),
            pod_container: a.pod_container.clone(),
            ..Target::default()
        },
        loss,
        shape,
        dns,
        refuse,
        reset,
        limit,
        stress,
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
/// the same for the foreground inject, the client's `inject --wait` and `stop`. A flapping
/// fault adds how many active phases it had (`; active phases 3/3`).
pub fn report_line(r: &RevertReport, elapsed: Option<Duration>) -> String {
    format!(
        "{} reverted ({}){}: {}{}{}",
        r.id,
        r.reason.as_str(),
        elapsed.map_or_else(String::new, |e| format!(" after {:.1}s", e.as_secs_f64())),
        match (&r.counters, &r.effects) {
            (_, Some(e)) => effects_line(e),
            (Some(c), None) => counters_line(c, r.dns_answer, &r.kind),
            (None, None) => "no counters".to_owned(),
        },
        r.phase.map_or_else(String::new, |p| format!(
            "; active phases {}/{}",
            p.active_phases, p.total_active_phases
        )),
        if r.errors.is_empty() {
            String::new()
        } else {
            format!("; revert errors: {}", r.errors.join("; "))
        }
    )
}

/// One line of counters: `matched 1200, dropped 118 (9.83%)` for packet faults; for a DNS
/// fault (`dns` is what its matching answers become) `answers matched 12, rewritten 12
/// (servfail), dropped 0, unparsed 0`; for a refuse fault (`connects`) `connects matched 5,
/// refused 5`; for a reset fault `connections reset 4 in 3 sweeps (protected 1)`. `kind` is
/// the fault's.
#[must_use]
pub fn counters_line(c: &Counters, dns: Option<DnsAnswer>, kind: &str) -> String {
    let t = c.total();
    match kind {
        "refuse" => return format!("connects matched {}, refused {}", t.matched, t.refused),
        "reset" => {
            let protected = if t.protected > 0 {
                format!(" (protected {})", t.protected)
            } else {
                String::new()
            };
            return format!(
                "connections reset {} in {} sweep{}{protected}",
                t.reset,
                t.seen,
                if t.seen == 1 { "" } else { "s" }
            );
        }
        _ => {}
    }
    if let Some(answer) = dns {
        let rcode = if answer == DnsAnswer::Drop {
            String::new()
        } else {
            format!(" ({})", answer.as_str())
        };
        return format!(
            "answers matched {}, rewritten {}{rcode}, dropped {}, unparsed {}",
            t.matched, t.rewritten, t.dropped, t.unparsed
        );
    }
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

/// `5.0 MiB`, `512 B`: a byte count as read, not rounded to a unit's multiple.
fn human_bytes(b: f64) -> String {
    let mut v = b;
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if v < 1024.0 {
            return if unit == "B" {
                format!("{v:.0} B")
            } else {
                format!("{v:.1} {unit}")
            };
        }
        v /= 1024.0;
    }
    format!("{v:.1} TiB")
}

/// The measured effects of a fault on processes, in a stable order: `cpu throttled 40 of 40
/// periods (2.78s), cpu pressure 33.99%, memory.high events 3, ...`. Only what the kernel
/// offered is shown.
#[must_use]
pub fn effects_line(e: &crate::faults::Effects) -> String {
    let get = |k: &str| e.get(k).copied();
    let mut parts = Vec::new();
    if let (Some(n), Some(t)) = (get("cpu_periods"), get("cpu_throttled_periods")) {
        parts.push(format!(
            "cpu throttled {t:.0} of {n:.0} periods ({:.2}s)",
            get("cpu_throttled_seconds").unwrap_or_default()
        ));
    }
    if let Some(s) = get("stress_cpu_seconds") {
        parts.push(format!("stressor used {s:.2} CPU-seconds"));
    }
    if let Some(b) = get("stress_memory_bytes") {
        parts.push(format!(
            "stressor holds {}",
            crate::faults::limit::Bytes(b as u64 & !((1 << 20) - 1))
        ));
    }
    if let (Some(r), Some(w)) = (get("stress_io_read_bytes"), get("stress_io_write_bytes")) {
        parts.push(format!(
            "stressor read {}, wrote {}",
            human_bytes(r),
            human_bytes(w)
        ));
    }
    for (k, what) in [
        ("cpu_pressure_some_avg10", "cpu pressure"),
        ("memory_pressure_some_avg10", "memory pressure"),
        ("io_pressure_some_avg10", "io pressure"),
        ("host_cpu_pressure_some_avg10", "host cpu pressure"),
        ("host_memory_pressure_some_avg10", "host memory pressure"),
        ("host_io_pressure_some_avg10", "host io pressure"),
    ] {
        if let Some(v) = get(k) {
            parts.push(format!("{what} {v:.2}%"));
        }
    }
    for r in ["cpu", "memory", "io"] {
        if let Some(v) = get(&format!("{r}_stall_seconds")).filter(|v| *v > 0.0) {
            parts.push(format!("{r} stalled {v:.2}s"));
        }
    }
    for (k, what) in [
        ("memory_high_events", "memory.high events"),
        ("memory_max_events", "memory.max events"),
        ("memory_oom_kills", "OOM kills"),
    ] {
        if let Some(v) = get(k) {
            parts.push(format!("{what} {v:.0}"));
        }
    }
    if let Some(v) = get("memory_bytes") {
        parts.push(format!("memory {}", crate::faults::limit::Bytes(v as u64)));
    }
    for (dir, bytes, ops) in [
        ("read", "io_read_bytes", "io_read_ops"),
        ("written", "io_write_bytes", "io_write_ops"),
    ] {
        if let (Some(b), Some(n)) = (get(bytes), get(ops)) {
            parts.push(format!("io {dir} {} in {n:.0} ops", human_bytes(b)));
        }
    }
    if parts.is_empty() {
        "no effects readable".to_owned()
    } else {
        parts.join(", ")
    }
}

/// What an active fault is doing now, for the countdown and `list`: its duty-cycle phase (with
/// `--flap`) and its counters, e.g. `active 2/5 (1.2s left) | matched 10, dropped 3 (30.00%)`.
#[must_use]
pub fn live_line(info: &FaultInfo) -> String {
    let counters = match (&info.counters, &info.effects) {
        (_, Some(e)) => Some(effects_line(e)),
        (Some(c), None) => Some(counters_line(
            c,
            info.spec.dns.as_ref().map(|d| d.answer),
            &info.kind,
        )),
        (None, None) => None,
    };
    info.phase
        .map(|p| p.line())
        .into_iter()
        .chain(counters)
        .collect::<Vec<_>>()
        .join(" | ")
}

pub(super) fn run(state_dir: &Path, socket: &Path, a: &InjectArgs) -> anyhow::Result<ExitCode> {
    let spec = spec_from_args(a)?;
    let client = crate::api::client::Client::new(socket);
    if !a.foreground && !a.dry_run && client.agent_present() {
        return super::client::inject(&client, &spec, a);
    }
    if a.ttl.is_none() {
        return Err(CliError::usage(
            "--ttl is required when no agent is running (the fault runs in the foreground)",
        )
        .into());
    }
    let cfg = super::engine_config(state_dir.to_owned(), a.attach_mode, a.max_ttl);
    if a.dry_run {
        // No engine: a dry run must not even open the journal.
        let (spec, plan) = engine::plan(&cfg, spec)?;
        if a.output.is_json() {
            print_json(&DryRun {
                spec: &spec,
                plan: &plan,
            })?;
            return Ok(ExitCode::SUCCESS);
        }
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
    rt.block_on(foreground(cfg, spec, a.output))
}

/// The foreground's live line: `f-0000002a 5s left | active 2/5 (1.2s left) | ...`.
#[must_use]
pub fn countdown_line(live: &FaultInfo) -> String {
    format!(
        "{} {}s left | {}",
        live.id,
        live.remaining_ms.div_ceil(1000),
        live_line(live)
    )
}

async fn foreground(
    cfg: engine::EngineConfig,
    spec: FaultSpec,
    output: OutputArgs,
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
    let info = engine.inject(spec, Requester::me()).await?;
    // From the fault's start, not the command's: loading the programs comes first.
    let started = Instant::now();
    output.say(&injected_line(&info));
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
    // The live line is redrawn over itself with a carriage return, padded with spaces to the
    // last one's width: no escape sequence, so NO_COLOR and dumb terminals see plain text too.
    let mut shown = 0_usize;
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
                    let line = countdown_line(&live);
                    if tty {
                        let width = line.chars().count();
                        eprint!("\r{line}{:pad$}", "", pad = shown.saturating_sub(width));
                        shown = width;
                    } else {
                        eprintln!("{line}");
                    }
                }
            }
        }
    };
    if tty {
        eprintln!();
    }
    engine.shutdown().await;
    let elapsed = started.elapsed();
    summarise(output, &info, &report, elapsed)
}

/// The end of an inject that waited for its fault (foreground or `--wait`): the `summary:` line
/// (on stderr with `--output json`, where stdout gets the [`InjectSummary`]); exit 1 if the
/// revert left errors.
pub(super) fn summarise(
    output: OutputArgs,
    fault: &FaultInfo,
    report: &RevertReport,
    elapsed: Duration,
) -> anyhow::Result<ExitCode> {
    if output.is_json() {
        print_json(&InjectSummary {
            fault,
            report,
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        })?;
    }
    output.say(&format!("summary: {}", report_line(report, Some(elapsed))));
    Ok(if report.errors.is_empty() {
        super::Exit::Ok.into()
    } else {
        super::Exit::Failed.into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::FlapPhase;
    use crate::faults::dns::DnsSpec;
    use crate::kernel::bpf::DirCounters;

    fn counters(matched: u64, rewritten: u64, dropped: u64, unparsed: u64) -> Counters {
        Counters {
            ingress: DirCounters {
                seen: 100,
                matched,
                rewritten,
                dropped,
                unparsed,
                ..DirCounters::default()
            },
            egress: DirCounters::default(),
        }
    }

    fn report(dns: Option<DnsAnswer>, phase: Option<FlapPhase>) -> RevertReport {
        RevertReport {
            id: "f-0000002a".parse().expect("id"),
            reason: RevertReason::Ttl,
            removed: Vec::new(),
            errors: Vec::new(),
            counters: Some(counters(12, 12, 0, 0)),
            effects: None,
            lateness_us: Some(50),
            dns_answer: dns,
            kind: String::new(),
            phase,
        }
    }

    #[test]
    fn packet_faults_keep_their_loss_line() {
        let r = report(None, None);
        assert_eq!(
            report_line(&r, Some(Duration::from_millis(8_020))),
            "f-0000002a reverted (ttl) after 8.0s: matched 12, dropped 0 (0.00%)"
        );
    }

    #[test]
    fn dns_summary_counts_answers() {
        let r = report(Some(DnsAnswer::Servfail), None);
        assert_eq!(
            report_line(&r, Some(Duration::from_millis(8_020))),
            "f-0000002a reverted (ttl) after 8.0s: answers matched 12, rewritten 12 (servfail), dropped 0, unparsed 0"
        );
        // `drop` rewrites nothing: no rcode to name.
        assert_eq!(
            counters_line(&counters(7, 0, 7, 1), Some(DnsAnswer::Drop), "dns"),
            "answers matched 7, rewritten 0, dropped 7, unparsed 1"
        );
    }

    #[test]
    fn flapping_summary_says_how_many_active_phases() {
        let phase = FlapPhase {
            active: false,
            active_phases: 2,
            total_active_phases: 2,
            remaining_ms: 0,
        };
        let mut r = report(Some(DnsAnswer::Nxdomain), Some(phase));
        r.errors = vec!["x".to_owned()];
        assert_eq!(
            report_line(&r, None),
            "f-0000002a reverted (ttl): answers matched 12, rewritten 12 (nxdomain), dropped 0, unparsed 0; active phases 2/2; revert errors: x"
        );
    }

    #[test]
    fn countdown_shows_the_phase_then_the_counters() {
        let spec = FaultSpec {
            ttl: Duration::from_secs(25),
            target: Target::default(),
            loss: None,
            shape: None,
            dns: Some(DnsSpec {
                answer: DnsAnswer::Refused,
                domains: Vec::new(),
                types: Vec::new(),
                rate: None,
                port: None,
            }),
            refuse: None,
            reset: None,
            limit: None,
            stress: None,
            flap: Some("2s/3s".parse().expect("flap")),
            force: false,
            seed: None,
            label: None,
        };
        let mut info = FaultInfo {
            id: "f-0000002a".parse().expect("id"),
            kind: spec.kind().to_owned(),
            summary: spec.summary(),
            spec,
            iface: "lo".to_owned(),
            backend: "ebpf/tcx".to_owned(),
            requested_by_uid: 0,
            created_unix_ms: 0,
            expires_unix_ms: 0,
            remaining_ms: 4_100,
            counters: Some(counters(3, 3, 0, 0)),
            effects: None,
            phase: Some(FlapPhase {
                active: true,
                active_phases: 2,
                total_active_phases: 5,
                remaining_ms: 1_200,
            }),
        };
        assert_eq!(
            countdown_line(&info),
            "f-0000002a 5s left | active 2/5 (1.2s left) | answers matched 3, rewritten 3 (refused), dropped 0, unparsed 0"
        );
        info.phase = Some(FlapPhase {
            active: false,
            remaining_ms: 800,
            ..info.phase.expect("phase")
        });
        info.counters = None;
        assert_eq!(live_line(&info), "resting (0.8s left)");
        info.phase = None;
        assert_eq!(live_line(&info), "");
    }
}
