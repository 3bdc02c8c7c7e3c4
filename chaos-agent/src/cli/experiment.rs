//! `chaos-agent experiment run|validate FILE`: an experiment in the foreground, its report in
//! the state directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::{ExperimentCommand, ExperimentRunArgs, UsageError};
use crate::engine::Engine;
use crate::experiment::{self, ExperimentSpec, Outcome, Report};
use crate::kernel::bpf::AttachMode;
use crate::metrics::Metrics;

/// The steps ready to run, each with its plan lines.
type Plans = Vec<(experiment::Planned, Vec<String>)>;

/// A file that parses, whose steps all plan on this host: the spec, its steps and their plans.
fn load(file: &Path, cfg: &crate::engine::EngineConfig) -> anyhow::Result<(ExperimentSpec, Plans)> {
    let spec = ExperimentSpec::from_file(file).map_err(|e| UsageError(e.to_string()))?;
    let plans =
        experiment::plan(&spec, cfg).map_err(|e| UsageError(format!("{}: {e}", file.display())))?;
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

pub(super) fn run(state_dir: &Path, c: &ExperimentCommand) -> anyhow::Result<ExitCode> {
    match c {
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
        ExperimentCommand::Run(a) => run_file(state_dir, a),
    }
}

fn run_file(state_dir: &Path, a: &ExperimentRunArgs) -> anyhow::Result<ExitCode> {
    let cfg = super::engine_config(state_dir.to_owned(), AttachMode::Auto, a.max_ttl);
    let (spec, plans) = load(&a.file, &cfg)?;
    if a.dry_run {
        print_plan(&spec, &plans);
        let rt = super::runtime()?;
        let green = rt.block_on(dry_probes(&spec));
        return Ok(if green {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    super::preflight()?;
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
        let steps = plans.into_iter().map(|(p, _)| p).collect();
        let report = experiment::run::run(&spec, steps, &engine).await;
        engine.shutdown().await;
        anyhow::Ok(report)
    })?;
    let dir = a
        .report_dir
        .clone()
        .unwrap_or_else(|| state_dir.join("experiments"));
    let path = write_report(&dir, &report)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    println!("experiment {:?}: {}", report.title, report.verdict());
    println!("report: {}.json, {}.md", path.display(), path.display());
    Ok(if report.outcome == Outcome::Passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `DIR/<start>-<title>` (without the extension) of the JSON and Markdown reports.
fn write_report(dir: &Path, r: &Report) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let slug: String = r
        .title
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .take(8)
        .collect::<Vec<_>>()
        .join("-");
    let base = dir.join(format!("{}-{slug}", r.started_unix_ms));
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(r)?,
    )
    .with_context(|| format!("write {}.json", base.display()))?;
    std::fs::write(base.with_extension("md"), r.markdown())
        .with_context(|| format!("write {}.md", base.display()))?;
    Ok(base)
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
