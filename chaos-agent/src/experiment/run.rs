//! Running an experiment in this process, next to its faults: probes through every phase, the
//! steps injected at their offsets through the engine, stop conditions checked at every probe
//! result (so an abort acts within one probe interval, even when the network being faulted is
//! the one an orchestrator would need), every fault reverted at once on a breach, a signal or
//! the time limit, and the report built from what the probes saw.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::probe;
use super::report::{self, Outcome, Phase, Report, Sample, StepReport};
use super::spec::{ExperimentSpec, Slot};
use crate::engine::{Engine, Requester};
use crate::faults::FaultSpec;

/// Asks a run to end now (a signal, the API's stop, `pause`, the daemon's shutdown): every
/// fault it injected is reverted and it ends `interrupted`, with the first reason given.
#[derive(Clone, Debug, Default)]
pub struct StopHandle {
    token: CancellationToken,
    why: Arc<std::sync::Mutex<Option<String>>>,
}

impl StopHandle {
    /// Ends the run, for `why` (the first reason given is kept).
    pub fn stop(&self, why: &str) {
        let mut w = self
            .why
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.is_none() {
            *w = Some(why.to_owned());
        }
        self.token.cancel();
    }

    /// Whether it was asked to.
    #[must_use]
    pub fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }

    fn reason(&self) -> String {
        self.why
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| "stopped".to_owned())
    }

    /// Stops the run at SIGINT or SIGTERM (a foreground run).
    pub fn on_signals(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            me.stop(&format!("{name} received"));
        });
    }
}

/// A step ready to run: its name, its place in time and its fault.
#[derive(Clone, Debug)]
pub struct Planned {
    /// The step's name.
    pub name: String,
    /// When, from the method's start, as planned (a step `after` another starts from that
    /// one's actual end, which this assumes on time).
    pub slot: Slot,
    /// With `after`: the index of the step whose end it starts from, and its offset.
    pub after: Option<(usize, std::time::Duration)>,
    /// The fault (its TTL the step's duration).
    pub spec: FaultSpec,
}

fn phase_of(v: u8) -> Phase {
    match v {
        0 => Phase::Before,
        1 => Phase::During,
        _ => Phase::After,
    }
}

/// What a step task reports.
enum StepEvent {
    Started(usize, crate::engine::FaultId),
    Refused(usize, String),
    Done(usize, StepReport),
}

/// Starts a probe's loop: a check every interval (from the start of one to the next), each
/// result sent with the phase it started in, until `stop`.
fn spawn_probe(
    i: usize,
    p: super::spec::ProbeSpec,
    t0: Instant,
    phase: Arc<AtomicU8>,
    tx: mpsc::UnboundedSender<(usize, Sample)>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut next = tokio::time::Instant::now();
        loop {
            let started = Instant::now();
            let ph = phase_of(phase.load(Ordering::Acquire));
            let c = tokio::select! {
                () = stop.cancelled() => return,
                c = probe::check(&p) => c,
            };
            let sample = Sample {
                t: started.duration_since(t0).as_secs_f64(),
                phase: ph,
                ok: c.ok,
                latency_ms: c.latency.as_secs_f64() * 1e3,
                error: c.error,
            };
            if tx.send((i, sample)).is_err() {
                return;
            }
            next += p.interval;
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(next) => {}
            }
        }
    });
}

/// When a step ended (set once it has, whether its fault ran, was refused or never started).
type EndTx = tokio::sync::watch::Sender<Option<tokio::time::Instant>>;
type EndRx = tokio::sync::watch::Receiver<Option<tokio::time::Instant>>;

/// When a step starts: at its offset from the method's start, or with `after` at its offset
/// from the end of the step it follows, as that one really ended.
async fn start_time(
    step: &Planned,
    method_t0: tokio::time::Instant,
    prev: Option<EndRx>,
) -> tokio::time::Instant {
    match (step.after, prev) {
        (Some((_, at)), Some(mut rx)) => {
            let end = loop {
                if let Some(t) = *rx.borrow() {
                    break t;
                }
                if rx.changed().await.is_err() {
                    break tokio::time::Instant::now();
                }
            };
            end + at
        }
        _ => method_t0 + step.slot.start,
    }
}

/// Injects one step at its time and waits for its fault to end.
fn spawn_step(
    i: usize,
    step: Planned,
    engine: Engine,
    method_t0: tokio::time::Instant,
    cancel: CancellationToken,
    tx: mpsc::UnboundedSender<StepEvent>,
    (end_tx, prev): (EndTx, Option<EndRx>),
) {
    tokio::spawn(async move {
        let tx = Ended { tx, end_tx };
        let since = |t: Instant| t.duration_since(method_t0.into_std()).as_secs_f64();
        let mut rep = StepReport {
            name: step.name.clone(),
            planned_s: step.slot.start.as_secs_f64(),
            started_s: None,
            ended_s: None,
            fault: None,
            summary: None,
            outcome: "not started".to_owned(),
            effects: None,
        };
        tokio::select! {
            () = cancel.cancelled() => {
                tx.done(i, rep);
                return;
            }
            () = async {
                let at = start_time(&step, method_t0, prev).await;
                tokio::time::sleep_until(at).await;
            } => {}
        }
        let info = match engine.inject(step.spec, Requester::me()).await {
            Ok(info) => info,
            Err(e) => {
                rep.outcome = format!("refused: {e}");
                let _ = tx.tx.send(StepEvent::Refused(i, e.to_string()));
                tx.done(i, rep);
                return;
            }
        };
        rep.started_s = Some(since(Instant::now()));
        rep.fault = Some(info.id.to_string());
        rep.summary = Some(info.summary.clone());
        let _ = tx.tx.send(StepEvent::Started(i, info.id));
        // The run was aborted while this inject was under way: the abort's stop may have come
        // before the fault existed.
        if cancel.is_cancelled() {
            let _ = engine.stop(info.id, Requester::me()).await;
        }
        if let Some(mut done) = engine.watch(info.id).await {
            loop {
                if let Some(r) = done.borrow().clone() {
                    r.reason.as_str().clone_into(&mut rep.outcome);
                    rep.effects = Some(crate::cli::inject::report_line(&r, None));
                    break;
                }
                if done.changed().await.is_err() {
                    "engine stopped".clone_into(&mut rep.outcome);
                    break;
                }
            }
        }
        rep.ended_s = Some(since(Instant::now()));
        tx.done(i, rep);
    });
}

/// A step task's ways to tell it ended: the run's events and the steps that follow it.
struct Ended {
    tx: mpsc::UnboundedSender<StepEvent>,
    end_tx: EndTx,
}

impl Ended {
    fn done(&self, i: usize, rep: StepReport) {
        self.end_tx.send_replace(Some(tokio::time::Instant::now()));
        let _ = self.tx.send(StepEvent::Done(i, rep));
    }
}

/// The stop condition a probe's latest result breaches, if any: its share of passing checks
/// over the window (once the method has run a whole window) below the least allowed.
fn breach(
    spec: &ExperimentSpec,
    probe: &str,
    samples: &[Sample],
    now: f64,
    method_start: f64,
) -> Option<String> {
    spec.stop
        .conditions
        .iter()
        .filter(|c| c.probe == probe)
        .find_map(|c| {
            let w = c.window.as_secs_f64();
            if now - method_start < w {
                return None;
            }
            let recent: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.phase == Phase::During && s.t >= now - w)
                .collect();
            let passed = recent.iter().filter(|s| s.ok).count();
            let share = passed as f64 / recent.len().max(1) as f64;
            (!recent.is_empty() && share < c.min_success).then(|| {
                let last = recent
                    .iter()
                    .rev()
                    .find_map(|s| s.error.clone())
                    .unwrap_or_default();
                format!(
                    "stop condition: probe {probe} passed {passed} of {} checks over the last {} (min_success {}); last error: {last}",
                    recent.len(),
                    humantime::format_duration(c.window),
                    c.min_success
                )
            })
        })
}

fn ms(v: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64((v / 1e3).max(0.0))
}

/// Prints a line of the live view (stderr: stdout is for the verdict).
fn live(t0: Instant, phase: Phase, msg: &str) {
    eprintln!(
        "[{:>6.1}s {:>6}] {msg}",
        t0.elapsed().as_secs_f64(),
        format!("{phase:?}").to_lowercase()
    );
}

/// Runs the experiment and keeps it in `dir`: the marker before anything is injected, the
/// reports after (`store`). Returns the run's id, its report, and the reports' path without
/// extension (none if they could not be written: the error is logged).
pub async fn run_recorded(
    spec: &ExperimentSpec,
    steps: Vec<Planned>,
    engine: &Engine,
    stop: &StopHandle,
    dir: &std::path::Path,
) -> (String, Report, Option<std::path::PathBuf>) {
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let id = super::store::run_id(started_unix_ms, &spec.title);
    run_recorded_as(spec, steps, engine, stop, dir, &id, started_unix_ms).await
}

/// [`run_recorded`] under an id and start time the caller chose (the daemon answers with the
/// id before the run starts).
pub async fn run_recorded_as(
    spec: &ExperimentSpec,
    steps: Vec<Planned>,
    engine: &Engine,
    stop: &StopHandle,
    dir: &std::path::Path,
    id: &str,
    started_unix_ms: u64,
) -> (String, Report, Option<std::path::PathBuf>) {
    let id = id.to_owned();
    let marker = super::store::Running {
        id: id.clone(),
        title: spec.title.clone(),
        started_unix_ms,
        pid: std::process::id(),
    };
    if let Err(e) = super::store::begin(dir, &marker) {
        // Without the marker a killed run would leave no trace of itself: refuse to start.
        let r = Report {
            title: spec.title.clone(),
            description: spec.description.clone(),
            started_unix_ms,
            outcome: Outcome::Aborted,
            reason: Some(format!(
                "cannot record the run in {}: {e}; nothing was injected",
                dir.display()
            )),
            method_start_s: 0.0,
            faults_end_s: 0.0,
            end_s: 0.0,
            probes: Vec::new(),
            steps: Vec::new(),
        };
        return (id, r, None);
    }
    let report = run(spec, steps, engine, stop, started_unix_ms).await;
    match super::store::finish(dir, &id, &report) {
        Ok(path) => (id, report, Some(path)),
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "experiment report not written");
            (id, report, None)
        }
    }
}

/// A steady-state window (before or after the method): the probes' results recorded for
/// `len`, or the stop's reason if the run was stopped meanwhile.
async fn steady_window(
    spec: &ExperimentSpec,
    engine: &Engine,
    stop: &StopHandle,
    prx: &mut mpsc::UnboundedReceiver<(usize, Sample)>,
    samples: &mut [Vec<Sample>],
    len: std::time::Duration,
) -> Option<String> {
    let end = tokio::time::Instant::now() + len;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(end) => return None,
            Some((i, s)) = prx.recv() => {
                engine.metrics().probe_checked(&spec.probes[i].name, s.ok, ms(s.latency_ms));
                samples[i].push(s);
            }
            () = stop.token.cancelled() => return Some(stop.reason()),
        }
    }
}

/// Runs the experiment; every fault it injected is reverted when this returns, and no other.
pub async fn run(
    spec: &ExperimentSpec,
    steps: Vec<Planned>,
    engine: &Engine,
    stop: &StopHandle,
    started_unix_ms: u64,
) -> Report {
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::now() + spec.stop.max_duration;
    let phase = Arc::new(AtomicU8::new(0));
    let stop_probes = CancellationToken::new();
    let (ptx, mut prx) = mpsc::unbounded_channel();
    for (i, p) in spec.probes.iter().enumerate() {
        spawn_probe(
            i,
            p.clone(),
            t0,
            phase.clone(),
            ptx.clone(),
            stop_probes.clone(),
        );
    }
    drop(ptx);
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); spec.probes.len()];
    let mut outcome: Option<(Outcome, String)> = None;

    // Before: the steady state must hold, every probe passing.
    live(t0, Phase::Before, "probing the steady state");
    if let Some(why) = steady_window(
        spec,
        engine,
        stop,
        &mut prx,
        &mut samples,
        spec.steady.before,
    )
    .await
    {
        outcome = Some((Outcome::Interrupted, why));
    }

    if outcome.is_none() {
        for (p, ss) in spec.probes.iter().zip(&samples) {
            let bad = ss.iter().filter(|s| !s.ok).count();
            if ss.is_empty() || bad > 0 {
                let why = ss
                    .iter()
                    .rev()
                    .find_map(|s| s.error.clone())
                    .unwrap_or_else(|| "no check finished".to_owned());
                outcome = Some((
                    Outcome::Aborted,
                    format!(
                        "steady state not met before the method: probe {} failed {bad} of {} checks ({why}); nothing was injected",
                        p.name,
                        ss.len()
                    ),
                ));
                break;
            }
        }
    }

    // During: the steps at their offsets, the stop conditions at every result.
    let method_t0 = tokio::time::Instant::now();
    let method_start = t0.elapsed().as_secs_f64();
    let mut step_reports: Vec<Option<StepReport>> = vec![None; steps.len()];
    let method_ran = outcome.is_none();
    if method_ran {
        phase.store(1, Ordering::Release);
        live(
            t0,
            Phase::During,
            &format!("method: {} step(s)", steps.len()),
        );
        let cancel = CancellationToken::new();
        let (stx, mut srx) = mpsc::unbounded_channel();
        let ends: Vec<(EndTx, EndRx)> = steps
            .iter()
            .map(|_| tokio::sync::watch::channel(None))
            .collect();
        for (i, s) in steps.iter().enumerate() {
            let prev = s.after.map(|(j, _)| ends[j].1.clone());
            spawn_step(
                i,
                s.clone(),
                engine.clone(),
                method_t0,
                cancel.clone(),
                stx.clone(),
                (ends[i].0.clone(), prev),
            );
        }
        drop(stx);
        let mut done = 0;
        let mut aborting = false;
        let mut ours: Vec<crate::engine::FaultId> = Vec::new();
        while done < steps.len() {
            tokio::select! {
                ev = srx.recv() => match ev {
                    Some(StepEvent::Started(i, id)) => {
                        live(t0, Phase::During, &format!("step {}: fault {id} in", steps[i].name));
                        if aborting {
                            let _ = engine.stop(id, Requester::me()).await;
                        }
                        ours.push(id);
                    }
                    Some(StepEvent::Refused(i, e)) => {
                        if outcome.is_none() {
                            outcome = Some((Outcome::Aborted, format!("step {} was refused: {e}", steps[i].name)));
                        }
                    }
                    Some(StepEvent::Done(i, r)) => {
                        live(t0, Phase::During, &format!("step {}: {}", r.name, r.outcome));
                        step_reports[i] = Some(r);
                        done += 1;
                    }
                    None => break,
                },
                Some((i, s)) = prx.recv() => {
                    let (ok, now) = (s.ok, s.t + s.latency_ms / 1e3);
                    engine.metrics().probe_checked(&spec.probes[i].name, ok, ms(s.latency_ms));
                    if !ok {
                        live(t0, Phase::During, &format!("probe {} failed: {}", spec.probes[i].name, s.error.as_deref().unwrap_or("")));
                    }
                    samples[i].push(s);
                    if outcome.is_none()
                        && let Some(why) = breach(spec, &spec.probes[i].name, &samples[i], now, method_start)
                    {
                        outcome = Some((Outcome::Aborted, why));
                    }
                }
                () = tokio::time::sleep_until(deadline), if outcome.is_none() => {
                    outcome = Some((Outcome::Aborted, format!("stop.max_duration {} reached", humantime::format_duration(spec.stop.max_duration))));
                }
                () = stop.token.cancelled(), if outcome.is_none() => {
                    outcome = Some((Outcome::Interrupted, stop.reason()));
                }
            }
            if outcome.is_some() && !aborting {
                aborting = true;
                if let Some((o, why)) = &outcome {
                    live(
                        t0,
                        Phase::During,
                        &format!("{}: {why}; reverting every fault", o.as_str()),
                    );
                }
                // This experiment's faults only: the daemon may hold others' (API clients,
                // other experiments), which are not ours to end.
                cancel.cancel();
                for id in &ours {
                    let _ = engine.stop(*id, Requester::me()).await;
                }
            }
        }
    }
    let faults_end = t0.elapsed();

    // After: recovery, unless a signal asked to end now or nothing was injected.
    phase.store(2, Ordering::Release);
    if method_ran && !matches!(outcome, Some((Outcome::Interrupted, _))) {
        live(t0, Phase::After, "probing the recovery");
        if let Some(why) = steady_window(
            spec,
            engine,
            stop,
            &mut prx,
            &mut samples,
            spec.steady.after,
        )
        .await
        {
            outcome = Some((Outcome::Interrupted, why));
        }
    }
    stop_probes.cancel();
    let end_s = t0.elapsed().as_secs_f64();
    let probes: Vec<report::ProbeReport> = spec
        .probes
        .iter()
        .zip(samples)
        .map(|(p, ss)| report::probe_report(&p.name, p.kind(), ss, faults_end))
        .collect();
    let outcome = outcome.unwrap_or_else(|| match probes.iter().find(|p| p.mttr_s.is_none()) {
        Some(p) => (
            Outcome::Failed,
            format!("probe {} had not recovered by the end", p.name),
        ),
        None => (Outcome::Passed, String::new()),
    });
    Report {
        title: spec.title.clone(),
        description: spec.description.clone(),
        started_unix_ms,
        outcome: outcome.0,
        reason: (outcome.0 != Outcome::Passed).then_some(outcome.1),
        method_start_s: method_start,
        faults_end_s: faults_end.as_secs_f64(),
        end_s,
        probes,
        steps: steps
            .iter()
            .zip(step_reports)
            .map(|(s, r)| {
                r.unwrap_or_else(|| StepReport {
                    name: s.name.clone(),
                    planned_s: s.slot.start.as_secs_f64(),
                    started_s: None,
                    ended_s: None,
                    fault: None,
                    summary: None,
                    outcome: "not started".to_owned(),
                    effects: None,
                })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_condition_waits_for_a_whole_window_then_judges_it() {
        let spec = ExperimentSpec::parse(
            r#"
title = "t"
[[probe]]
name = "api"
interval = "500ms"
timeout = "400ms"
tcp = { address = "127.0.0.1:1" }
[[step]]
name = "s"
duration = "10s"
inject = "--loss 1"
[[stop.when]]
probe = "api"
min_success = 0.5
window = "2s"
"#,
            "t.toml",
        )
        .expect("parses");
        let s = |t: f64, ok| Sample {
            t,
            phase: Phase::During,
            ok,
            latency_ms: 1.0,
            error: (!ok).then(|| "refused".to_owned()),
        };
        let bad: Vec<Sample> = (0..4)
            .map(|i| s(10.0 + f64::from(i) * 0.5, false))
            .collect();
        // One second into the method: no judgement yet.
        assert_eq!(breach(&spec, "api", &bad, 11.5, 10.0), None);
        let why = breach(&spec, "api", &bad, 12.0, 10.0).expect("breached");
        assert!(
            why.contains("passed 0 of 4") && why.contains("refused"),
            "{why}"
        );
        let mixed: Vec<Sample> = (0..4)
            .map(|i| s(10.0 + f64::from(i) * 0.5, i % 2 == 0))
            .collect();
        assert_eq!(
            breach(&spec, "api", &mixed, 12.0, 10.0),
            None,
            "half is allowed"
        );
        assert_eq!(breach(&spec, "other", &bad, 12.0, 10.0), None);
    }
}
