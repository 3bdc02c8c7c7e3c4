//! `chaos-agent experiment run|validate FILE`: an experiment in the foreground, its report in
//! the state directory.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::{CliError, ExperimentCommand, ExperimentRunArgs};
use crate::engine::Engine;
use crate::experiment::{self, ExperimentSpec, Outcome};
use crate::kernel::bpf::AttachMode;
use crate::metrics::Metrics;

/// The steps ready to run, each with its plan lines.
type Plans = Vec<(experiment::Planned, Vec<String>)>;

/// A file that parses, whose steps all plan on this host: the spec, its steps and their plans.
fn load(file: &Path, cfg: &crate::engine::EngineConfig) -> anyhow::Result<(ExperimentSpec, Plans)> {
    let spec = ExperimentSpec::from_file(file).map_err(|e| CliError::bad_input(e.to_string()))?;
    let plans = experiment::plan(&spec, cfg)
        .map_err(|e| CliError::bad_input(format!("{}: {e}", file.display())))?;
    Ok((spec, plans))
}

fn takes(spec: &ExperimentSpec) -> Duration {
    let method = spec
        .schedule()
        .values()
        .map(|s| s.end)
        .max()
        .unwrap_or_default();
    spec.steady.before + method + spec.steady.after
}

fn print_plan(spec: &ExperimentSpec, plans: &Plans) {
    println!(
        "{}: {} probe(s), {} step(s), about {} (steady {} before, {} after)",
        spec.title,
        spec.probes.len(),
        plans.len(),
        humantime::format_duration(takes(spec)),
        humantime::format_duration(spec.steady.before),
        humantime::format_duration(spec.steady.after),
    );
    for (p, lines) in plans {
        println!(
            "  step {} at +{} for {}: {}",
            p.name,
            humantime::format_duration(p.slot.start),
            humantime::format_duration(p.slot.end.saturating_sub(p.slot.start)),
            p.spec.summary()
        );
        for l in lines {
            println!("    - {l}");
        }
    }
}

pub(super) fn run(
    state_dir: &Path,
    socket: &Path,
    c: &ExperimentCommand,
) -> anyhow::Result<ExitCode> {
    let client = crate::api::client::Client::new(socket);
    match c {
        ExperimentCommand::List(o) => {
            let rt = super::runtime()?;
            let runs = rt.block_on(client.experiments())?;
            if o.is_json() {
                super::output::print_json(&runs)?;
            } else if runs.is_empty() {
                println!("no experiments");
            } else {
                for r in runs {
                    println!(
                        "{}  {:<11} {}{}",
                        r.id,
                        r.state,
                        r.title,
                        r.reason.map(|w| format!(" ({w})")).unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        // Showing or stopping a run succeeds whatever its outcome; `run` exits by it.
        ExperimentCommand::Show(a) => {
            let rt = super::runtime()?;
            let v = rt.block_on(client.experiment(&a.id))?;
            print_remote(&v, a.output.is_json()).map(|_| ExitCode::SUCCESS)
        }
        ExperimentCommand::Stop(a) => {
            let rt = super::runtime()?;
            let v = rt.block_on(client.experiment_stop(&a.id))?;
            print_remote(&v, a.output.is_json()).map(|_| ExitCode::SUCCESS)
        }
        ExperimentCommand::Validate(a) => {
            let cfg = super::engine_config(
                state_dir.to_owned(),
                AttachMode::Auto,
                crate::spec::Limits::default().max_ttl,
            );
            let (spec, plans) = load(&a.file, &cfg)?;
            print_plan(&spec, &plans);
            println!("ok: {}", a.file.display());
            Ok(ExitCode::SUCCESS)
        }
        ExperimentCommand::Run(a) => run_file(state_dir, &client, a),
        ExperimentCommand::Schema => {
            print!("{}", experiment::spec::json_schema());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints what the agent answered for a run: its verdict line (or the JSON), and exits as a
/// foreground run would.
fn print_remote(v: &serde_json::Value, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        super::output::print_json(v)?;
    }
    if v.get("state").is_some_and(|s| s == "running") {
        if !json {
            println!("{}: running", v["id"].as_str().unwrap_or("?"));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report: experiment::Report =
        serde_json::from_value(v.clone()).context("the agent's report")?;
    if !json {
        println!("experiment {:?}: {}", report.title, report.verdict());
        // The timeline is an SVG file beside the report: no use on a terminal.
        for line in report
            .markdown()
            .lines()
            .filter(|l| !l.starts_with("![timeline]"))
        {
            println!("{line}");
        }
    }
    Ok(if report.outcome == Outcome::Passed {
        ExitCode::SUCCESS
    } else {
        super::Exit::Failed.into()
    })
}

/// Runs the file through the agent: starts it, then (unless `--detach`) follows it to its end;
/// Ctrl-C stops it.
fn run_remote(
    client: &crate::api::client::Client,
    a: &ExperimentRunArgs,
) -> anyhow::Result<ExitCode> {
    let toml =
        std::fs::read_to_string(&a.file).with_context(|| format!("read {}", a.file.display()))?;
    let rt = super::runtime()?;
    rt.block_on(async {
        let run = client.experiment_start(&toml).await?;
        a.output.say(&format!("started {}: {}", run.id, run.title));
        if a.detach {
            return Ok(ExitCode::SUCCESS);
        }
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let v = client.experiment(&run.id).await?;
                    if v.get("state").is_none_or(|s| s != "running") {
                        return print_remote(&v, a.output.is_json());
                    }
                }
                _ = tokio::signal::ctrl_c() => {
                    let v = client.experiment_stop(&run.id).await?;
                    return print_remote(&v, a.output.is_json());
                }
            }
        }
    })
}

fn run_file(
    state_dir: &Path,
    client: &crate::api::client::Client,
    a: &ExperimentRunArgs,
) -> anyhow::Result<ExitCode> {
    let cfg = super::engine_config(state_dir.to_owned(), AttachMode::Auto, a.max_ttl);
    if !a.foreground && !a.dry_run && client.agent_present() {
        return run_remote(client, a);
    }
    let (spec, plans) = load(&a.file, &cfg)?;
    if a.dry_run {
        print_plan(&spec, &plans);
        let rt = super::runtime()?;
        let green = rt.block_on(dry_probes(&spec));
        return Ok(if green {
            ExitCode::SUCCESS
        } else {
            super::Exit::Failed.into()
        });
    }
    super::preflight()?;
    let dir = a
        .report_dir
        .clone()
        .unwrap_or_else(|| state_dir.join("experiments"));
    let rt = super::runtime()?;
    let report = rt.block_on(async {
        let (engine, leftovers) = Engine::start(cfg, Arc::new(Metrics::default()))
            .await
            .context("start engine")?;
        if leftovers.removed() > 0 {
            eprintln!(
                "removed {} leftover object(s) of a dead agent",
                leftovers.removed()
            );
        }
        for id in experiment::store::recover(&dir) {
            eprintln!("recorded a dead agent's experiment {id} as interrupted");
        }
        let steps = plans.into_iter().map(|(p, _)| p).collect();
        let stop = experiment::StopHandle::default();
        stop.on_signals();
        let run = experiment::run::run_recorded(&spec, steps, &engine, &stop, &dir).await;
        engine.shutdown().await;
        anyhow::Ok(run)
    })?;
    let (_, report, path) = report;
    if a.output.is_json() {
        super::output::print_json(&report)?;
    }
    a.output.say(&format!(
        "experiment {:?}: {}",
        report.title,
        report.verdict()
    ));
    if let Some(path) = path {
        a.output.say(&format!(
            "report: {}.json, {}.md",
            path.display(),
            path.display()
        ));
    }
    Ok(if report.outcome == Outcome::Passed {
        ExitCode::SUCCESS
    } else {
        super::Exit::Failed.into()
    })
}

/// The probes over the steady-state window, nothing injected: whether all passed.
async fn dry_probes(spec: &ExperimentSpec) -> bool {
    let until = tokio::time::Instant::now() + spec.steady.before;
    let mut green = true;
    for p in &spec.probes {
        let (mut n, mut ok, mut last) = (0, 0, None);
        loop {
            let c = experiment::probe::check(p).await;
            n += 1;
            ok += usize::from(c.ok);
            if c.error.is_some() {
                last = c.error;
            }
            if tokio::time::Instant::now() + p.interval > until {
                break;
            }
            tokio::time::sleep(p.interval).await;
        }
        green &= ok == n;
        println!(
            "probe {} ({}): {ok} of {n} checks passed{}",
            p.name,
            p.kind(),
            last.map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        );
    }
    println!(
        "dry run: nothing injected; the steady state {}",
        if green { "holds" } else { "does NOT hold" }
    );
    green
}
