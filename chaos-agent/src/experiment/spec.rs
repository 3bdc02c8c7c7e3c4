//! The experiment file (TOML): steady-state probes, the method's steps, stop conditions and
//! the steady-state windows around the method. Everything a run needs is checked here or by
//! [`super::Experiment::check`] before anything is injected.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest experiment (the default of `stop.max_duration`).
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_mins(30);
/// The most probes and the most steps of one experiment.
pub const MAX_PROBES: usize = 32;
/// See [`MAX_PROBES`].
pub const MAX_STEPS: usize = 64;
/// The shortest probe interval: a probe is a check, not a load test.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// An experiment file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    /// What is tested, in a line (the report's title).
    pub title: String,
    /// The hypothesis, in words, for the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The steady-state windows around the method.
    #[serde(default)]
    pub steady: Steady,
    /// Steady-state probes, run through every phase.
    #[serde(default, rename = "probe")]
    pub probes: Vec<ProbeSpec>,
    /// The method: faults, each at its offset for its duration.
    #[serde(default, rename = "step")]
    pub steps: Vec<StepSpec>,
    /// When to abort.
    #[serde(default)]
    pub stop: Stop,
    /// Limits on what the method may do at once.
    #[serde(default)]
    pub safety: Safety,
}

/// The phases without faults before and after the method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Steady {
    /// Probes run this long before the first fault and must all pass (pre-flight).
    #[serde(default = "default_before", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub before: Duration,
    /// Probes run this long after the last fault ended: recovery (MTTR) is measured here.
    #[serde(default = "default_after", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub after: Duration,
}

fn default_before() -> Duration {
    Duration::from_secs(2)
}

fn default_after() -> Duration {
    Duration::from_secs(5)
}

impl Default for Steady {
    fn default() -> Self {
        Self {
            before: default_before(),
            after: default_after(),
        }
    }
}

/// One steady-state probe: exactly one of `http`, `tcp`, `dns`, `command`, `psi`, `promql`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    /// Its name (stop conditions and the report refer to it).
    pub name: String,
    /// Time between the starts of two checks.
    #[serde(default = "default_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// A check that takes longer fails. Required: a probe without one could hang the run.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// A check slower than this fails, though it got its answer.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub latency_budget: Option<Duration>,
    /// An HTTP request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    /// A TCP connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpProbe>,
    /// A DNS query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsProbe>,
    /// A command's exit status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandProbe>,
    /// A pressure (PSI) file below a threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psi: Option<PsiProbe>,
    /// A Prometheus query whose value must stay within bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promql: Option<PromqlProbe>,
}

fn default_interval() -> Duration {
    Duration::from_secs(1)
}

/// `GET http://HOST:PORT/PATH` (plain HTTP/1.1: a health endpoint on the node's network).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    /// `http://10.0.0.2:8080/health` (an IP address or a name the resolver knows).
    pub url: String,
    /// The method.
    #[serde(default = "default_method")]
    pub method: String,
    /// The status a passing check gets.
    #[serde(default = "default_status")]
    pub status: u16,
    /// Text the body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
}

fn default_method() -> String {
    "GET".to_owned()
}

fn default_status() -> u16 {
    200
}

/// A TCP connect that must complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpProbe {
    /// `10.0.0.2:5432`.
    pub address: SocketAddr,
}

/// A DNS query (UDP, type A) that must get NOERROR with an answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DnsProbe {
    /// The name asked for.
    pub name: String,
    /// The server, `10.0.0.53:53`.
    pub server: SocketAddr,
}

/// A command that must exit 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandProbe {
    /// The program and its arguments (no shell).
    pub argv: Vec<String>,
}

/// A pressure file whose `avg10` must stay below a threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PsiProbe {
    /// `/proc/pressure/cpu`, or a cgroup's `cpu.pressure`.
    pub file: PathBuf,
    /// Percent `avg10` must stay below.
    pub below: f64,
    /// Read the `full` line, not `some`.
    #[serde(default)]
    pub full: bool,
}

/// An instant query against a Prometheus server (`GET URL/api/v1/query`): its first series'
/// value must lie within `[min, max]` (either may be left out); no series fails.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromqlProbe {
    /// The server, `http://127.0.0.1:9090`.
    pub url: String,
    /// The query, `sum(rate(http_requests_total{code=~"5.."}[30s]))`.
    pub query: String,
    /// The least value that passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The greatest value that passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// One fault of the method.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Its name.
    pub name: String,
    /// When it starts: from the method's start, or with `after` from that step's end.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "String")]
    pub at: Duration,
    /// Start `at` after this (earlier) step has ended: a sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// How long the fault lasts: its TTL.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub duration: Duration,
    /// The fault, as `chaos-agent inject` flags (`["--loss", "0.1", "--dest", "10.0.0.2"]`,
    /// or one string split at white space), without `--ttl`.
    pub inject: Flags,
}

/// `inject` flags: a list, or one string split at white space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Flags {
    /// `["--loss", "0.1"]`.
    List(Vec<String>),
    /// `"--loss 0.1"`.
    Line(String),
}

impl Flags {
    /// The flags, one argument each.
    #[must_use]
    pub fn args(&self) -> Vec<String> {
        match self {
            Self::List(v) => v.clone(),
            Self::Line(s) => s.split_whitespace().map(str::to_owned).collect(),
        }
    }
}

/// When to abort: on any condition, every fault of the experiment is reverted at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stop {
    /// The whole run's limit, steady windows included.
    #[serde(default = "default_max_duration", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_duration: Duration,
    /// Probe conditions, checked at each result while faults are on.
    #[serde(default, rename = "when")]
    pub conditions: Vec<StopCondition>,
}

fn default_max_duration() -> Duration {
    DEFAULT_MAX_DURATION
}

impl Default for Stop {
    fn default() -> Self {
        Self {
            max_duration: DEFAULT_MAX_DURATION,
            conditions: Vec::new(),
        }
    }
}

/// Abort when the probe's share of passing checks over the last `window` falls below
/// `min_success`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StopCondition {
    /// The probe.
    pub probe: String,
    /// The least share of passing checks, 0 to 1 (`0.5`: abort when availability falls
    /// below 50 %).
    pub min_success: f64,
    /// Over this long (at least one check: the condition waits for a full window).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub window: Duration,
}

/// The blast radius.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Safety {
    /// The most faults active at once, as planned.
    #[serde(default = "default_max_faults")]
    pub max_concurrent_faults: usize,
    /// Whether the daemon may run this experiment while another one that also allows it runs.
    #[serde(default)]
    pub allow_concurrent_experiments: bool,
}

fn default_max_faults() -> usize {
    8
}

impl Default for Safety {
    fn default() -> Self {
        Self {
            max_concurrent_faults: default_max_faults(),
            allow_concurrent_experiments: false,
        }
    }
}

/// Why an experiment file is refused.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// Not TOML, or not this schema (the message names the line).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// Read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Against the rules of an experiment.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(s: impl Into<String>) -> ExperimentError {
    ExperimentError::Invalid(s.into())
}

impl ProbeSpec {
    /// `http`, `tcp`, ...: the kind given (validation makes sure there is exactly one).
    #[must_use]
    pub fn kind(&self) -> &'static str {
        if self.http.is_some() {
            "http"
        } else if self.tcp.is_some() {
            "tcp"
        } else if self.dns.is_some() {
            "dns"
        } else if self.command.is_some() {
            "command"
        } else if self.psi.is_some() {
            "psi"
        } else {
            "promql"
        }
    }

    fn validate(&self) -> Result<(), ExperimentError> {
        let n = [
            self.http.is_some(),
            self.tcp.is_some(),
            self.dns.is_some(),
            self.command.is_some(),
            self.psi.is_some(),
            self.promql.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        let name = &self.name;
        if n != 1 {
            return Err(invalid(format!(
                "probe {name:?}: give exactly one of http, tcp, dns, command, psi, promql ({n} given)"
            )));
        }
        if self.interval < MIN_INTERVAL {
            return Err(invalid(format!(
                "probe {name:?}: interval {} is below {}",
                humantime::format_duration(self.interval),
                humantime::format_duration(MIN_INTERVAL)
            )));
        }
        if self.timeout.is_zero() || self.timeout > self.interval {
            return Err(invalid(format!(
                "probe {name:?}: timeout {} must be above zero and at most the interval ({})",
                humantime::format_duration(self.timeout),
                humantime::format_duration(self.interval)
            )));
        }
        if let Some(h) = &self.http {
            super::probe::parse_http_url(&h.url)
                .map_err(|e| invalid(format!("probe {name:?}: {e}")))?;
        }
        if let Some(q) = &self.promql {
            super::probe::parse_http_url(&q.url)
                .map_err(|e| invalid(format!("probe {name:?}: {e}")))?;
            if q.min.is_none() && q.max.is_none() {
                return Err(invalid(format!(
                    "probe {name:?}: promql needs min, max or both"
                )));
            }
        }
        if let Some(c) = &self.command
            && c.argv.is_empty()
        {
            return Err(invalid(format!("probe {name:?}: command.argv is empty")));
        }
        if let Some(p) = &self.psi
            && !(0.0..=100.0).contains(&p.below)
        {
            return Err(invalid(format!(
                "probe {name:?}: psi.below {} is not a percent",
                p.below
            )));
        }
        Ok(())
    }
}

/// The experiment file's JSON Schema (`docs/experiment.schema.json`, for editors: TOML
/// language servers such as Taplo and Even Better TOML read it).
#[must_use]
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(ExperimentSpec);
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}

/// A step's place in time, from the method's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Its start.
    pub start: Duration,
    /// Its end (start + duration).
    pub end: Duration,
}

impl ExperimentSpec {
    /// Parses a file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ExperimentError> {
        let text = std::fs::read_to_string(path).map_err(|source| ExperimentError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML (`path` names it in messages).
    pub fn parse(text: &str, path: &str) -> Result<Self, ExperimentError> {
        let spec: Self = toml::from_str(text).map_err(|e| ExperimentError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// The rules that need no host: names, references, limits, the schedule.
    pub fn validate(&self) -> Result<(), ExperimentError> {
        if self.title.trim().is_empty() {
            return Err(invalid("title is empty"));
        }
        if self.probes.len() > MAX_PROBES || self.steps.len() > MAX_STEPS {
            return Err(invalid(format!(
                "{} probes and {} steps: at most {MAX_PROBES} and {MAX_STEPS}",
                self.probes.len(),
                self.steps.len()
            )));
        }
        if self.steps.is_empty() {
            return Err(invalid("no [[step]]: an experiment needs a method"));
        }
        let mut names = std::collections::BTreeSet::new();
        for p in &self.probes {
            if !names.insert(format!("probe {}", p.name)) {
                return Err(invalid(format!("probe {:?} is defined twice", p.name)));
            }
            p.validate()?;
        }
        for c in &self.stop.conditions {
            if !self.probes.iter().any(|p| p.name == c.probe) {
                return Err(invalid(format!(
                    "stop condition on {:?}: no such probe",
                    c.probe
                )));
            }
            if !(0.0..=1.0).contains(&c.min_success) || c.window.is_zero() {
                return Err(invalid(format!(
                    "stop condition on {:?}: min_success is a share from 0 to 1 and the window above zero",
                    c.probe
                )));
            }
        }
        for (i, s) in self.steps.iter().enumerate() {
            if !names.insert(format!("step {}", s.name)) {
                return Err(invalid(format!("step {:?} is defined twice", s.name)));
            }
            if s.duration.is_zero() {
                return Err(invalid(format!("step {:?}: duration is zero", s.name)));
            }
            if let Some(a) = &s.after
                && !self.steps[..i].iter().any(|o| &o.name == a)
            {
                return Err(invalid(format!(
                    "step {:?}: after {a:?} names no step before it",
                    s.name
                )));
            }
            let args = s.inject.args();
            if args.iter().any(|a| a == "--ttl" || a.starts_with("--ttl=")) {
                return Err(invalid(format!(
                    "step {:?}: no --ttl in inject (the step's duration is its TTL)",
                    s.name
                )));
            }
        }
        let slots = self.schedule();
        let method = slots.values().map(|s| s.end).max().unwrap_or_default();
        let total = self.steady.before + method + self.steady.after;
        if total > self.stop.max_duration {
            return Err(invalid(format!(
                "the experiment takes {} (steady {} + method {} + steady {}), more than stop.max_duration {}",
                humantime::format_duration(total),
                humantime::format_duration(self.steady.before),
                humantime::format_duration(method),
                humantime::format_duration(self.steady.after),
                humantime::format_duration(self.stop.max_duration)
            )));
        }
        let most = most_at_once(&slots);
        if most > self.safety.max_concurrent_faults {
            return Err(invalid(format!(
                "{most} faults at once as planned: more than safety.max_concurrent_faults {}",
                self.safety.max_concurrent_faults
            )));
        }
        Ok(())
    }

    /// Each step's start and end from the method's start (`after` resolved).
    #[must_use]
    pub fn schedule(&self) -> BTreeMap<String, Slot> {
        let mut out: BTreeMap<String, Slot> = BTreeMap::new();
        for s in &self.steps {
            let base = s
                .after
                .as_ref()
                .and_then(|a| out.get(a))
                .map_or(Duration::ZERO, |o| o.end);
            let start = base + s.at;
            out.insert(
                s.name.clone(),
                Slot {
                    start,
                    end: start + s.duration,
                },
            );
        }
        out
    }
}

/// The most slots that overlap at one instant.
fn most_at_once(slots: &BTreeMap<String, Slot>) -> usize {
    slots
        .values()
        .map(|s| {
            slots
                .values()
                .filter(|o| o.start <= s.start && s.start < o.end)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
title = "checkout survives a lossy database link"

[steady]
before = "1s"
after = "2s"

[[probe]]
name = "api"
interval = "200ms"
timeout = "150ms"
latency_budget = "100ms"
http = { url = "http://10.0.0.2:8080/health", body_contains = "ok" }

[[probe]]
name = "db"
timeout = "500ms"
tcp = { address = "10.0.0.3:5432" }

[[step]]
name = "loss"
duration = "3s"
inject = ["--loss", "0.1", "--dest", "10.0.0.3"]

[[step]]
name = "refuse"
duration = "3s"
inject = "--refuse --dport 5432"

[[step]]
name = "then"
after = "loss"
at = "1s"
duration = "2s"
inject = ["--loss", "0.5"]

[[stop.when]]
probe = "api"
min_success = 0.5
window = "1s"
"#;

    #[test]
    fn a_good_file_parses_and_schedules_parallel_then_sequential() {
        let e = ExperimentSpec::parse(GOOD, "good.toml").expect("parses");
        assert_eq!(e.probes[0].kind(), "http");
        assert_eq!(e.probes[1].interval, Duration::from_secs(1));
        assert_eq!(e.steps[1].inject.args(), ["--refuse", "--dport", "5432"]);
        let s = e.schedule();
        assert_eq!(s["loss"].start, Duration::ZERO);
        assert_eq!(s["refuse"].start, Duration::ZERO);
        assert_eq!(s["then"].start, Duration::from_secs(4));
        assert_eq!(s["then"].end, Duration::from_secs(6));
        assert_eq!(most_at_once(&s), 2);
    }

    #[test]
    fn the_published_schema_is_the_one_the_code_defines() {
        let published = include_str!("../../../docs/experiment.schema.json");
        assert!(
            published == json_schema(),
            "docs/experiment.schema.json is stale: `chaos-agent experiment schema > docs/experiment.schema.json`"
        );
        let v: serde_json::Value = serde_json::from_str(published).expect("json");
        // The rules an editor can check: unknown keys, the required ones.
        assert_eq!(v["additionalProperties"], false);
        assert_eq!(v["required"], serde_json::json!(["title"]));
        let probe = &v["$defs"]["ProbeSpec"];
        assert_eq!(probe["additionalProperties"], false);
        assert!(
            probe["required"]
                .as_array()
                .is_some_and(|r| r.contains(&"timeout".into()))
        );
    }

    fn refused(text: &str) -> String {
        ExperimentSpec::parse(text, "x.toml")
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn bad_files_are_refused_naming_what_and_where() {
        let unknown = refused(&GOOD.replace("title =", "colour = \"red\"\ntitle ="));
        assert!(
            unknown.contains("unknown field") && unknown.contains("line"),
            "{unknown}"
        );
        let no_timeout = refused(&GOOD.replace("timeout = \"500ms\"\n", ""));
        assert!(no_timeout.contains("timeout"), "{no_timeout}");
        assert!(refused(&GOOD.replace("\"3s\"", "\"40m\"")).contains("max_duration"));
        assert!(refused(&GOOD.replace("after = \"loss\"", "after = \"nope\"")).contains("nope"));
        assert!(
            refused(&GOOD.replace("probe = \"api\"", "probe = \"web\"")).contains("no such probe")
        );
        assert!(
            refused(&GOOD.replace("[\"--loss\", \"0.5\"]", "\"--loss 0.5 --ttl 5s\""))
                .contains("--ttl")
        );
        assert!(
            refused(&GOOD.replace("timeout = \"150ms\"", "timeout = \"1s\""))
                .contains("at most the interval")
        );
        assert!(
            refused(&GOOD.replace("http = {", "tcp = { address = \"1.2.3.4:1\" }\nhttp = {"))
                .contains("exactly one")
        );
        assert!(refused(&GOOD.replace("http://", "https://")).contains("http://"));
        let crowded = GOOD.replace(
            "[steady]",
            "[safety]\nmax_concurrent_faults = 1\n\n[steady]",
        );
        assert!(refused(&crowded).contains("max_concurrent_faults"));
    }
}
