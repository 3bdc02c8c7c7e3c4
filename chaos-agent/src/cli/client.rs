//! The client verbs: `inject` (with an agent), `list`, `show`, `stop`, `extend`, `status`,
//! `pause`, `resume`. Each is one API call and a few printed lines (or the JSON answer).

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use tokio::signal::unix::{SignalKind, signal};

use super::inject::{live_line, report_line};
use super::output::print_json;
use super::{ExtendArgs, InjectArgs, OutputArgs, ShowArgs, StopArgs};
use crate::api::client::Client;
use crate::engine::{FaultInfo, RevertReport};
use crate::faults::FaultSpec;

fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    // One request at a time: a single-threaded runtime is enough and starts faster.
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

fn exit_for(reports: &[RevertReport]) -> ExitCode {
    if reports.iter().all(|r| r.errors.is_empty()) {
        ExitCode::SUCCESS
    } else {
        super::Exit::Failed.into()
    }
}

/// `inject` when an agent is running: send the spec, print the id (with `--output json`, the
/// fault); with `--wait`, block until the fault ends (Ctrl-C or SIGTERM stop it, as in the
/// foreground) and print the summary, in the foreground's shape.
pub(super) fn inject(
    client: &Client,
    spec: &FaultSpec,
    a: &InjectArgs,
) -> anyhow::Result<ExitCode> {
    block_on(async {
        let started = Instant::now();
        let info = client.inject(spec).await?;
        if !a.wait {
            if a.output.is_json() {
                print_json(&info)?;
            } else {
                println!("{}", super::inject::injected_line(&info));
            }
            return Ok(ExitCode::SUCCESS);
        }
        a.output.say(&super::inject::injected_line(&info));
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let report = tokio::select! {
            r = client.wait(info.id) => r?,
            _ = sigint.recv() => client.stop(info.id).await?,
            _ = sigterm.recv() => client.stop(info.id).await?,
        };
        super::inject::summarise(a.output, &info, &report, started.elapsed())
    })?
}

fn fault_table(faults: &[FaultInfo]) {
    println!(
        "{:<11} {:<6} {:<12} {:>9} {:<13} {:>6}  SUMMARY",
        "ID", "KIND", "IFACE", "REMAINING", "BACKEND", "UID"
    );
    for f in faults {
        println!(
            "{:<11} {:<6} {:<12} {:>8}s {:<13} {:>6}  {}{}",
            f.id,
            f.kind,
            f.iface,
            f.remaining_ms.div_ceil(1000),
            f.backend,
            f.requested_by_uid,
            f.summary,
            Some(live_line(f))
                .filter(|l| !l.is_empty())
                .map_or_else(String::new, |l| format!(" | {l}"))
        );
    }
}

pub(super) fn list(socket: &Path, o: OutputArgs) -> anyhow::Result<ExitCode> {
    let faults = block_on(Client::new(socket).list())??;
    if o.is_json() {
        print_json(&crate::api::FaultList { faults })?;
    } else if faults.is_empty() {
        println!("no active faults");
    } else {
        fault_table(&faults);
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn show(socket: &Path, a: &ShowArgs) -> anyhow::Result<ExitCode> {
    let f = block_on(Client::new(socket).show(a.id))??;
    if a.output.is_json() {
        print_json(&f)?;
    } else {
        fault_table(std::slice::from_ref(&f));
        println!("spec: {}", serde_json::to_string(&f.spec)?);
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn stop(socket: &Path, a: &StopArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(socket);
    let reports = match (a.id, &a.label) {
        (Some(id), _) => vec![block_on(client.stop(id))??],
        (None, Some(label)) => block_on(async {
            let mut reports = Vec::new();
            for f in client.list().await? {
                if f.spec.label.as_deref() == Some(label.as_str()) {
                    match client.stop(f.id).await {
                        Ok(r) => reports.push(r),
                        // Ended on its own (TTL, target gone) since the list: nothing to stop.
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok::<_, crate::api::client::ClientError>(reports)
        })??,
        (None, None) => block_on(client.stop_all())??,
    };
    if a.output.is_json() {
        print_json(&crate::api::Reverted {
            reverted: reports.clone(),
        })?;
    } else {
        if a.all || a.label.is_some() {
            println!("stopped {} fault(s)", reports.len());
        }
        for r in &reports {
            println!("{}", report_line(r, None));
        }
    }
    Ok(exit_for(&reports))
}

pub(super) fn extend(socket: &Path, a: &ExtendArgs) -> anyhow::Result<ExitCode> {
    let f = block_on(Client::new(socket).extend(a.id, a.by))??;
    if a.output.is_json() {
        print_json(&f)?;
    } else {
        println!(
            "extended {}: {}s left (ttl now {})",
            f.id,
            f.remaining_ms.div_ceil(1000),
            humantime::format_duration(f.spec.ttl)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn status(socket: &Path, o: OutputArgs) -> anyhow::Result<ExitCode> {
    let s = block_on(Client::new(socket).status())??;
    if o.is_json() {
        print_json(&s)?;
    } else {
        println!(
            "chaos-agent {} (pid {}), up {}s, kernel {}",
            s.version, s.pid, s.uptime_seconds, s.kernel
        );
        println!(
            "state:           {}",
            if s.paused {
                "PAUSED (new faults refused)"
            } else {
                "accepting faults"
            }
        );
        println!(
            "active faults:   {} of at most {}",
            s.active_faults, s.max_faults
        );
        println!(
            "ttl:             max {}, default {}",
            humantime::format_duration(s.max_ttl),
            s.default_ttl.map_or_else(
                || "none".to_owned(),
                |d| humantime::format_duration(d).to_string()
            )
        );
        println!("attach mode:     {}", s.attach_mode);
        println!("protected ports: {}", s.protected_ports.join(","));
        println!(
            "metrics:         {}",
            s.metrics_addr.as_deref().unwrap_or("off")
        );
        println!(
            "leftovers removed at start: {}",
            s.leftovers_removed_at_start
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn pause(socket: &Path, o: OutputArgs) -> anyhow::Result<ExitCode> {
    let p = block_on(Client::new(socket).pause())??;
    if o.is_json() {
        print_json(&p)?;
    } else {
        println!(
            "paused: {} fault(s) reverted; new faults are refused until `chaos-agent resume`",
            p.reverted.len()
        );
        for r in &p.reverted {
            println!("{}", report_line(r, None));
        }
    }
    Ok(exit_for(&p.reverted))
}

pub(super) fn resume(socket: &Path, o: OutputArgs) -> anyhow::Result<ExitCode> {
    let p = block_on(Client::new(socket).resume())??;
    if o.is_json() {
        print_json(&p)?;
    } else {
        println!("resumed: new faults are accepted");
    }
    Ok(ExitCode::SUCCESS)
}
