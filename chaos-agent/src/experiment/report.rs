//! What a run found: every probe result with its phase, availability and latency percentiles per
//! phase, time to recover, each step's fault and how it ended, the verdict. Written as JSON (a
//! stable shape, `docs/experiments.md`) and Markdown.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The phase a check started in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Steady state before the method.
    Before,
    /// Faults on (or scheduled).
    During,
    /// Steady state after the last fault ended.
    After,
}

/// One probe check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When it started, seconds from the experiment's start.
    pub t: f64,
    /// The phase then.
    pub phase: Phase,
    /// Whether it passed.
    pub ok: bool,
    /// How long it took, milliseconds.
    pub latency_ms: f64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The method ran to its end and every probe was passing again by the end.
    Passed,
    /// The method ran to its end, but a probe had not recovered by the end.
    Failed,
    /// A stop condition (or a pre-flight check, or a refused step) ended it early; every fault
    /// was reverted at once.
    Aborted,
    /// A signal ended it; every fault was reverted.
    Interrupted,
}

impl Outcome {
    /// `passed`, `aborted`...
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Aborted => "aborted",
            Self::Interrupted => "interrupted",
        }
    }
}

/// Checks of one phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Checks run.
    pub checks: usize,
    /// Checks passed.
    pub passed: usize,
    /// passed / checks (1 with no checks).
    pub availability: f64,
    /// 1 - availability.
    pub error_rate: f64,
    /// Latency percentiles over every check, milliseconds.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p95_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
}

/// The nearest-rank percentile `q` (0-1) of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

impl Stats {
    /// Of the samples of `phase`.
    #[must_use]
    pub fn of(samples: &[Sample], phase: Phase) -> Self {
        let mut lat: Vec<f64> = Vec::new();
        let mut passed = 0;
        for s in samples.iter().filter(|s| s.phase == phase) {
            lat.push(s.latency_ms);
            passed += usize::from(s.ok);
        }
        lat.sort_by(f64::total_cmp);
        let checks = lat.len();
        let availability = if checks == 0 {
            1.0
        } else {
            passed as f64 / checks as f64
        };
        Self {
            checks,
            passed,
            availability,
            error_rate: 1.0 - availability,
            p50_ms: percentile(&lat, 0.50),
            p95_ms: percentile(&lat, 0.95),
            p99_ms: percentile(&lat, 0.99),
        }
    }
}

/// One probe over the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// Its name.
    pub name: String,
    /// `http`, `tcp`, ...
    pub kind: String,
    /// Before the method.
    pub before: Stats,
    /// During it.
    pub during: Stats,
    /// After it.
    pub after: Stats,
    /// Seconds from the end of the faults to the first passing check after the last failing
    /// one (0: it never failed after them); none: still failing at the end.
    pub mttr_s: Option<f64>,
    /// Every check.
    pub samples: Vec<Sample>,
}

/// Time to recover: see [`ProbeReport::mttr_s`].
#[must_use]
pub fn mttr(samples: &[Sample], faults_end: f64) -> Option<f64> {
    let after: Vec<&Sample> = samples.iter().filter(|s| s.t >= faults_end).collect();
    let Some(last_bad) = after.iter().rposition(|s| !s.ok) else {
        return Some(0.0);
    };
    after.get(last_bad + 1).map(|s| (s.t - faults_end).max(0.0))
}

/// One step of the method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Its name.
    pub name: String,
    /// When it was planned to start, seconds from the method's start.
    pub planned_s: f64,
    /// When its fault was in, seconds from the method's start.
    pub started_s: Option<f64>,
    /// When its fault was reverted, seconds from the method's start.
    pub ended_s: Option<f64>,
    /// The fault's id.
    pub fault: Option<String>,
    /// What the fault was.
    pub summary: Option<String>,
    /// `ttl`, `stopped` (the experiment aborted), `not started`, or `refused: ...`.
    pub outcome: String,
    /// The fault's counters or effects when it ended (the summary line of `inject`).
    pub effects: Option<String>,
}

/// A run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The experiment's title.
    pub title: String,
    /// Its hypothesis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Wall-clock start, milliseconds since the epoch.
    pub started_unix_ms: u64,
    /// The verdict.
    pub outcome: Outcome,
    /// Why, unless it passed.
    pub reason: Option<String>,
    /// Seconds from the start to the method's start.
    pub method_start_s: f64,
    /// Seconds from the start to the end of the last fault.
    pub faults_end_s: f64,
    /// Seconds from the start to the end.
    pub end_s: f64,
    /// Per probe.
    pub probes: Vec<ProbeReport>,
    /// Per step.
    pub steps: Vec<StepReport>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Report {
    /// The one-line verdict: `passed in 12.3s`, `aborted at 4.1s: ...`.
    #[must_use]
    pub fn verdict(&self) -> String {
        match &self.reason {
            Some(r) => format!("{} at {:.1}s: {r}", self.outcome.as_str(), self.end_s),
            None => format!("{} in {:.1}s", self.outcome.as_str(), self.end_s),
        }
    }

    /// The Markdown report.
    #[must_use]
    pub fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut m = String::new();
        let _ = writeln!(m, "# {}\n", self.title);
        if let Some(d) = &self.description {
            let _ = writeln!(m, "{d}\n");
        }
        let _ = writeln!(m, "**{}**\n", self.verdict());
        let _ = writeln!(
            m,
            "Method from {:.1}s; faults over at {:.1}s; end {:.1}s.\n",
            self.method_start_s, self.faults_end_s, self.end_s
        );
        let _ = writeln!(
            m,
            "| probe | phase | checks | availability | p50 ms | p95 ms | p99 ms |\n|---|---|---|---|---|---|---|"
        );
        for p in &self.probes {
            for (phase, s) in [
                ("before", &p.before),
                ("during", &p.during),
                ("after", &p.after),
            ] {
                let _ = writeln!(
                    m,
                    "| {} ({}) | {phase} | {} | {:.1} % | {:.1} | {:.1} | {:.1} |",
                    p.name,
                    p.kind,
                    s.checks,
                    s.availability * 100.0,
                    s.p50_ms,
                    s.p95_ms,
                    s.p99_ms
                );
            }
        }
        let _ = writeln!(m, "\n| probe | time to recover |\n|---|---|");
        for p in &self.probes {
            let _ = writeln!(
                m,
                "| {} | {} |",
                p.name,
                p.mttr_s
                    .map_or_else(|| "not recovered".to_owned(), |t| format!("{t:.2} s"))
            );
        }
        let _ = writeln!(
            m,
            "\n| step | planned | started | ended | fault | outcome | effects |\n|---|---|---|---|---|---|---|"
        );
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |t| format!("{t:.2} s"));
        for s in &self.steps {
            let _ = writeln!(
                m,
                "| {} | {:.2} s | {} | {} | {} | {} | {} |",
                s.name,
                s.planned_s,
                opt(s.started_s),
                opt(s.ended_s),
                s.fault.as_deref().unwrap_or("-"),
                s.outcome,
                s.effects.as_deref().unwrap_or("-")
            );
        }
        m
    }
}

/// Builds a probe's report from its samples.
#[must_use]
pub fn probe_report(
    name: &str,
    kind: &str,
    samples: Vec<Sample>,
    faults_end: Duration,
) -> ProbeReport {
    ProbeReport {
        name: name.to_owned(),
        kind: kind.to_owned(),
        before: Stats::of(&samples, Phase::Before),
        during: Stats::of(&samples, Phase::During),
        after: Stats::of(&samples, Phase::After),
        mttr_s: mttr(&samples, secs(faults_end)),
        samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, phase: Phase, ok: bool, latency_ms: f64) -> Sample {
        Sample {
            t,
            phase,
            ok,
            latency_ms,
            error: None,
        }
    }

    #[test]
    fn stats_per_phase_with_nearest_rank_percentiles() {
        let samples: Vec<Sample> = (1..=100)
            .map(|i| s(f64::from(i), Phase::During, i % 10 != 0, f64::from(i)))
            .chain([s(0.0, Phase::Before, true, 5.0)])
            .collect();
        let d = Stats::of(&samples, Phase::During);
        assert_eq!((d.checks, d.passed), (100, 90));
        assert!((d.availability - 0.9).abs() < 1e-9);
        assert_eq!((d.p50_ms, d.p95_ms, d.p99_ms), (50.0, 95.0, 99.0));
        let a = Stats::of(&samples, Phase::After);
        assert_eq!((a.checks, a.availability), (0, 1.0));
    }

    #[test]
    fn time_to_recover_from_the_end_of_the_faults() {
        let run = |oks: &[bool]| -> Vec<Sample> {
            oks.iter()
                .enumerate()
                .map(|(i, ok)| s(10.0 + i as f64 * 0.5, Phase::After, *ok, 1.0))
                .collect()
        };
        assert_eq!(mttr(&run(&[true, true]), 10.0), Some(0.0));
        assert_eq!(mttr(&run(&[false, false, true, true]), 10.0), Some(1.0));
        assert_eq!(mttr(&run(&[false, true, false, true]), 10.0), Some(1.5));
        assert_eq!(mttr(&run(&[true, false]), 10.0), None);
        // Failures before the faults ended do not count.
        let mut v = vec![s(9.0, Phase::During, false, 1.0)];
        v.extend(run(&[true]));
        assert_eq!(mttr(&v, 10.0), Some(0.0));
    }
}
