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
        let _ = writeln!(m, "![timeline](timeline.svg)\n");
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

/// The timeline as SVG: per probe, its checks over time (green passed, red failed) on a line of
/// their latency; the steps' faults shaded behind, named; the phases' bounds marked.
impl Report {
    /// The SVG document.
    #[must_use]
    #[allow(
        clippy::many_single_char_names,
        reason = "x, y, h and w are the drawing's coordinates"
    )]
    pub fn svg(&self) -> String {
        use std::fmt::Write as _;
        const W: f64 = 960.0;
        const LEFT: f64 = 150.0;
        const RIGHT: f64 = 20.0;
        const TOP: f64 = 40.0;
        const LANE: f64 = 70.0;
        const STEP: f64 = 16.0;
        let end = self.end_s.max(0.001);
        let x = |t: f64| LEFT + (t / end).clamp(0.0, 1.0) * (W - LEFT - RIGHT);
        let steps_h = STEP * self.steps.len() as f64;
        let h = TOP + steps_h + LANE * self.probes.len().max(1) as f64 + 30.0;
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
        };
        let mut o = String::new();
        let _ = write!(
            o,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="11">"#
        );
        let _ = write!(
            o,
            r#"<rect width="{W}" height="{h}" fill="white"/><text x="10" y="18" font-size="14" font-weight="bold">{} — {}</text>"#,
            esc(&self.title),
            esc(self.outcome.as_str())
        );
        // The steps' faults: a band each, and shading over the probe lanes.
        let lanes_top = TOP + steps_h;
        let lanes_h = LANE * self.probes.len().max(1) as f64;
        for (i, st) in self.steps.iter().enumerate() {
            let (Some(a), Some(b)) = (st.started_s, st.ended_s) else {
                continue;
            };
            let (xa, xb) = (x(self.method_start_s + a), x(self.method_start_s + b));
            let y = TOP + STEP * i as f64;
            let _ = write!(
                o,
                r##"<rect class="fault" x="{xa:.1}" y="{lanes_top}" width="{:.1}" height="{lanes_h}" fill="#f5a623" fill-opacity="0.12"/><rect x="{xa:.1}" y="{y}" width="{:.1}" height="{}" fill="#f5a623" fill-opacity="0.6"/><text x="10" y="{:.1}">{}</text>"##,
                (xb - xa).max(1.0),
                (xb - xa).max(1.0),
                STEP - 3.0,
                y + STEP - 5.0,
                esc(&st.name)
            );
        }
        for t in [self.method_start_s, self.faults_end_s] {
            let _ = write!(
                o,
                r##"<line x1="{0:.1}" x2="{0:.1}" y1="{TOP}" y2="{1}" stroke="#888" stroke-dasharray="3,3"/>"##,
                x(t),
                lanes_top + lanes_h
            );
        }
        for (i, p) in self.probes.iter().enumerate() {
            let y0 = lanes_top + LANE * i as f64;
            let max = p
                .samples
                .iter()
                .map(|s| s.latency_ms)
                .fold(1.0_f64, f64::max);
            let y = |ms: f64| y0 + LANE - 8.0 - (ms / max) * (LANE - 20.0);
            let _ = write!(
                o,
                r##"<text x="10" y="{:.1}">{} ({})</text><text x="10" y="{:.1}" fill="#666">max {max:.0} ms</text><line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/>"##,
                y0 + 24.0,
                esc(&p.name),
                esc(&p.kind),
                y0 + 38.0,
                W - RIGHT,
                y0 + LANE - 8.0,
                y0 + LANE - 8.0
            );
            let points: Vec<String> = p
                .samples
                .iter()
                .map(|s| format!("{:.1},{:.1}", x(s.t), y(s.latency_ms)))
                .collect();
            let _ = write!(
                o,
                r##"<polyline fill="none" stroke="#4a90d9" points="{}"/>"##,
                points.join(" ")
            );
            for s in &p.samples {
                let _ = write!(
                    o,
                    r#"<circle class="{}" cx="{:.1}" cy="{:.1}" r="2.5" fill="{}"/>"#,
                    if s.ok { "pass" } else { "fail" },
                    x(s.t),
                    y(s.latency_ms),
                    if s.ok { "#2e9e44" } else { "#d0021b" }
                );
            }
        }
        let _ = write!(
            o,
            r##"<text x="{LEFT}" y="{:.1}" fill="#666">0 s</text><text x="{:.1}" y="{:.1}" fill="#666" text-anchor="end">{end:.1} s</text></svg>"##,
            h - 10.0,
            W - RIGHT,
            h - 10.0
        );
        o.push('\n');
        o
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
    fn the_timeline_draws_every_check_and_every_fault() {
        let samples = vec![
            s(0.5, Phase::Before, true, 2.0),
            s(1.5, Phase::During, false, 150.0),
            s(2.5, Phase::After, true, 3.0),
        ];
        let r = Report {
            title: "a <b> & c".to_owned(),
            description: None,
            started_unix_ms: 0,
            outcome: Outcome::Aborted,
            reason: Some("x".to_owned()),
            method_start_s: 1.0,
            faults_end_s: 2.0,
            end_s: 3.0,
            probes: vec![probe_report("api", "http", samples, Duration::from_secs(2))],
            steps: vec![StepReport {
                name: "refuse".to_owned(),
                planned_s: 0.0,
                started_s: Some(0.1),
                ended_s: Some(0.9),
                fault: Some("f-1".to_owned()),
                summary: None,
                outcome: "stopped".to_owned(),
                effects: None,
            }],
        };
        let svg = r.svg();
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle class=\"pass\"").count(), 2);
        assert_eq!(svg.matches("<circle class=\"fail\"").count(), 1);
        assert_eq!(svg.matches("class=\"fault\"").count(), 1);
        assert!(svg.contains("a &lt;b&gt; &amp; c"), "escaped");
        assert_eq!(svg.matches('<').count(), svg.matches('>').count());
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
