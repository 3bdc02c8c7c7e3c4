//! Prometheus metrics (prometheus-client, `OpenMetrics` text). The engine updates the event
//! counters; the eBPF packet counters are read from the kernel at scrape time.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::engine::{FlapPhase, RevertReason};
use crate::faults::dns::DnsAnswer;
use crate::faults::refuse::RefuseErrno;
use crate::kernel::bpf::Counters;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, PartialOrd, Ord)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevertLabels {
    kind: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, PartialOrd, Ord)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, PartialOrd, Ord)]
struct ProbeLabels {
    probe: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, PartialOrd, Ord)]
struct PacketLabels {
    interface: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, PartialOrd, Ord)]
struct RewrittenLabels {
    interface: String,
    direction: String,
    rcode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, PartialOrd, Ord)]
struct ErrnoLabels {
    errno: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, PartialOrd, Ord)]
struct FaultLabels {
    fault: String,
    kind: String,
}

/// What a scoped fault acts on, as labels to join its other series with (an info metric):
/// empty where the fault does not name it.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet, PartialOrd, Ord)]
pub struct TargetLabels {
    /// The pod's namespace (`--pod`).
    pub namespace: String,
    /// The pod's name (`--pod`).
    pub pod: String,
    /// The container: its name in the pod (`--pod-container`) or its id (`--container`).
    pub container: String,
    /// The systemd unit (`--unit`).
    pub unit: String,
    /// The cgroup the fault is scoped to.
    pub cgroup: String,
}

impl TargetLabels {
    /// The labels of `t`, if it names processes.
    #[must_use]
    pub fn of(t: &crate::target::Target) -> Option<Self> {
        if !t.scoped() {
            return None;
        }
        let (namespace, pod) = t
            .pod
            .as_deref()
            .and_then(|p| p.split_once('/'))
            .map(|(n, p)| (n.to_owned(), p.to_owned()))
            .unwrap_or_default();
        Some(Self {
            namespace,
            pod,
            container: t
                .pod_container
                .clone()
                .or_else(|| t.container.clone())
                .unwrap_or_default(),
            unit: t.unit.clone().unwrap_or_default(),
            cgroup: t.cgroup.clone().unwrap_or_default(),
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, PartialOrd, Ord)]
struct TargetInfoLabels {
    fault: String,
    kind: String,
    #[prometheus(flatten)]
    target: TargetLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, PartialOrd, Ord)]
struct FlapLabels {
    fault: String,
    kind: String,
    interface: String,
}

/// What the metrics read of one fault: its live values at scrape time, or its final ones when
/// it ends (folded into the totals then).
#[derive(Clone, Debug)]
pub struct FaultSample {
    /// The fault's id.
    pub id: String,
    /// Its kind (`loss`, `dns`, ...).
    pub kind: String,
    /// Its interface.
    pub iface: String,
    /// For a DNS fault, what matching answers become: its counters count answers, and go to
    /// the `chaos_agent_dns_*` families instead of the packet ones.
    pub dns_answer: Option<DnsAnswer>,
    /// For a refuse fault, the errno it fails connects with: its counters count `connect()`
    /// calls and go to the `chaos_agent_connects_*` families.
    pub refuse: Option<RefuseErrno>,
    /// The kernel counters (`None` if they could not be read).
    pub counters: Option<Counters>,
    /// What the target shows of a fault on processes (limit faults).
    pub effects: Option<crate::faults::Effects>,
    /// For a fault with `--flap`, where its duty cycle is.
    pub phase: Option<FlapPhase>,
    /// When it started, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// When its TTL ends (moved by `extend`), in milliseconds since the Unix epoch.
    pub expires_unix_ms: u64,
    /// What it acts on, for a fault on processes (`--pod`, `--container`, `--unit`, ...).
    pub target: Option<TargetLabels>,
}

/// A source of live samples (the engine), read at scrape time.
pub type LiveCounters = Box<dyn Fn() -> Vec<FaultSample> + Send + Sync>;

/// The DNS counters of one interface and direction: matched, dropped, unparsed.
type DnsTotals = [u64; 3];

/// Everything the scrape-time collector exports as counters, summed by labels.
#[derive(Clone, Debug, Default)]
struct Totals {
    /// seen, matched, dropped of packet faults.
    packets: BTreeMap<PacketLabels, [u64; 3]>,
    /// DNS faults' answers.
    dns: BTreeMap<PacketLabels, DnsTotals>,
    /// DNS answers rewritten, by rcode.
    rewritten: BTreeMap<RewrittenLabels, u64>,
    /// Active phases begun by flapping faults, by kind.
    flap_phases: BTreeMap<String, u64>,
    /// Refuse faults' connects: matched, refused, by errno.
    connects: BTreeMap<ErrnoLabels, [u64; 2]>,
    /// Connections aborted by reset faults.
    resets: u64,
    /// Counts measured on the targets of faults on processes (`cpu_throttled_seconds`...),
    /// summed; levels (`*_avg10`) are live gauges only.
    effects: BTreeMap<String, f64>,
}

/// Whether an effect is a count since the fault began (summed into a counter), not a level.
fn is_count(measure: &str) -> bool {
    // Pressure averages and the memory held now are levels.
    !measure.contains("avg") && !measure.ends_with("memory_bytes")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, PartialOrd, Ord)]
struct MeasureLabels {
    measure: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, PartialOrd, Ord)]
struct EffectLabels {
    fault: String,
    kind: String,
    measure: String,
}

impl Totals {
    fn add(&mut self, s: &FaultSample) {
        if let Some(p) = &s.phase {
            *self.flap_phases.entry(s.kind.clone()).or_default() += p.active_phases;
        }
        for (measure, v) in s.effects.iter().flatten() {
            if is_count(measure) {
                *self.effects.entry(measure.clone()).or_default() += v;
            }
        }
        let Some(c) = &s.counters else {
            return;
        };
        if s.kind == "reset" {
            self.resets += c.total().reset;
            return;
        }
        if let Some(errno) = s.refuse {
            let t = c.total();
            let e = self
                .connects
                .entry(ErrnoLabels {
                    errno: errno.as_str().to_owned(),
                })
                .or_default();
            e[0] += t.matched;
            e[1] += t.refused;
            return;
        }
        for (dir, d) in [("ingress", c.ingress), ("egress", c.egress)] {
            let labels = PacketLabels {
                interface: s.iface.clone(),
                direction: dir.to_owned(),
            };
            match s.dns_answer {
                None => {
                    let e = self.packets.entry(labels).or_default();
                    e[0] += d.seen;
                    e[1] += d.matched;
                    e[2] += d.dropped;
                }
                Some(answer) => {
                    if answer != DnsAnswer::Drop {
                        *self
                            .rewritten
                            .entry(RewrittenLabels {
                                interface: labels.interface.clone(),
                                direction: labels.direction.clone(),
                                rcode: answer.as_str().to_owned(),
                            })
                            .or_default() += d.rewritten;
                    }
                    let e = self.dns.entry(labels).or_default();
                    e[0] += d.matched;
                    e[1] += d.dropped;
                    e[2] += d.unparsed;
                }
            }
        }
    }
}

/// The counters read from the kernel at scrape time: totals of ended faults plus live values of
/// active ones, so that the exported series stay monotonic when faults come and go; and the
/// live duty-cycle phase of each flapping fault.
#[derive(Default)]
struct FaultCounters {
    retired: Mutex<Totals>,
    live: OnceLock<LiveCounters>,
}

impl std::fmt::Debug for FaultCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultCounters").finish_non_exhaustive()
    }
}

fn counter_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut me = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(v).encode(me.encode_family(&labels)?)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for FaultCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut totals = self.retired.lock().map(|m| m.clone()).unwrap_or_default();
        let live = self.live.get().map(|f| f()).unwrap_or_default();
        for s in &live {
            totals.add(s);
        }
        for (i, (name, help)) in [
            (
                "chaos_agent_packets_seen",
                "Packets that passed a packet fault's hooks while the fault was active, summed over faults (a packet on a hook with two faults counts twice).",
            ),
            (
                "chaos_agent_packets_matched",
                "Packets that matched a packet fault's filters (DNS faults count answers in chaos_agent_dns_answers_*).",
            ),
            (
                "chaos_agent_packets_dropped",
                "Packets dropped by loss faults.",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            counter_family(
                &mut encoder,
                name,
                help,
                totals.packets.iter().map(|(l, v)| (l.clone(), v[i])),
            )?;
        }
        for (i, (name, help)) in [
            (
                "chaos_agent_dns_answers_matched",
                "DNS answers whose question matched a DNS fault's names and types (while active; before --dns-rate).",
            ),
            (
                "chaos_agent_dns_answers_dropped",
                "DNS answers dropped by DNS faults (--dns drop, and every faulted answer over TCP).",
            ),
            (
                "chaos_agent_dns_messages_unparsed",
                "DNS messages from a DNS fault's server port that the programs could not parse within their bounds (let through untouched).",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            counter_family(
                &mut encoder,
                name,
                help,
                totals.dns.iter().map(|(l, v)| (l.clone(), v[i])),
            )?;
        }
        counter_family(
            &mut encoder,
            "chaos_agent_dns_answers_rewritten",
            "DNS answers rewritten by DNS faults into a valid message with the rcode (servfail, nxdomain, refused).",
            totals.rewritten.iter().map(|(l, v)| (l.clone(), *v)),
        )?;
        for (i, (name, help)) in [
            (
                "chaos_agent_connects_matched",
                "connect() calls that matched a refuse fault's filters while it was active (before --refuse-rate).",
            ),
            (
                "chaos_agent_connects_refused",
                "connect() calls failed by refuse faults, by the errno they got.",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            counter_family(
                &mut encoder,
                name,
                help,
                totals.connects.iter().map(|(l, v)| (l.clone(), v[i])),
            )?;
        }
        counter_family(
            &mut encoder,
            "chaos_agent_connections_reset",
            "Established TCP connections aborted by reset faults (sock_diag SOCK_DESTROY).",
            std::iter::once((
                KindLabels {
                    kind: "reset".to_owned(),
                },
                totals.resets,
            )),
        )?;
        counter_family(
            &mut encoder,
            "chaos_agent_flap_active_phases",
            "Active phases begun by faults with --flap, by kind (the first starts at inject).",
            totals
                .flap_phases
                .iter()
                .map(|(k, v)| (KindLabels { kind: k.clone() }, *v)),
        )?;
        let mut me = encoder.encode_descriptor(
            "chaos_agent_limit_effects",
            "What the targets of limit faults counted while the faults were active, summed over faults: cpu_throttled_periods, cpu_throttled_seconds, memory_high_events, memory_max_events, memory_oom_kills, io_read_bytes, io_write_bytes, io_read_ops, io_write_ops.",
            None,
            MetricType::Counter,
        )?;
        for (measure, v) in &totals.effects {
            ConstCounter::new(*v).encode(me.encode_family(&MeasureLabels {
                measure: measure.clone(),
            })?)?;
        }
        let mut me = encoder.encode_descriptor(
            "chaos_agent_fault_effect",
            "What an active limit fault's target shows now: counts since the fault began and pressure levels (PSI avg10, percent).",
            None,
            MetricType::Gauge,
        )?;
        for s in &live {
            for (measure, v) in s.effects.iter().flatten() {
                ConstGauge::new(*v).encode(me.encode_family(&EffectLabels {
                    fault: s.id.clone(),
                    kind: s.kind.clone(),
                    measure: measure.clone(),
                })?)?;
            }
        }
        let mut me = encoder.encode_descriptor(
            "chaos_agent_fault_flap_active",
            "Whether an active fault with --flap is in an active (1) or resting (0) phase.",
            None,
            MetricType::Gauge,
        )?;
        let mut flapping: Vec<(FlapLabels, bool)> = live
            .iter()
            .filter_map(|s| {
                let p = s.phase?;
                Some((
                    FlapLabels {
                        fault: s.id.clone(),
                        kind: s.kind.clone(),
                        interface: s.iface.clone(),
                    },
                    p.active,
                ))
            })
            .collect();
        flapping.sort();
        for (labels, active) in &flapping {
            ConstGauge::new(i64::from(*active)).encode(me.encode_family(labels)?)?;
        }
        // One series per active fault (at most `limits.max_faults`), gone when it ends: what
        // the alerts on faults that outlive their TTL compare with `time()`.
        let mut by_fault: Vec<(FaultLabels, u64, u64)> = live
            .iter()
            .map(|s| {
                (
                    FaultLabels {
                        fault: s.id.clone(),
                        kind: s.kind.clone(),
                    },
                    s.created_unix_ms,
                    s.expires_unix_ms,
                )
            })
            .collect();
        by_fault.sort();
        for (name, help, pick) in [
            (
                "chaos_agent_fault_start_time_seconds",
                "When an active fault started, in seconds since the Unix epoch.",
                (|c, _| c) as fn(u64, u64) -> u64,
            ),
            (
                "chaos_agent_fault_expiry_time_seconds",
                "When an active fault's TTL ends (extend moves it), in seconds since the Unix epoch.",
                |_, e| e,
            ),
        ] {
            let mut me = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, created, expires) in &by_fault {
                #[expect(
                    clippy::cast_precision_loss,
                    reason = "milliseconds since 1970 are far below 2^53"
                )]
                let secs = pick(*created, *expires) as f64 / 1000.0;
                ConstGauge::new(secs).encode(me.encode_family(labels)?)?;
            }
        }
        let mut targets: Vec<TargetInfoLabels> = live
            .iter()
            .filter_map(|s| {
                Some(TargetInfoLabels {
                    fault: s.id.clone(),
                    kind: s.kind.clone(),
                    target: s.target.clone()?,
                })
            })
            .collect();
        targets.sort();
        let mut me = encoder.encode_descriptor(
            "chaos_agent_fault_target_info",
            "What an active fault on processes acts on (pod, container, unit, cgroup): 1 per fault, to join its other series with.",
            None,
            MetricType::Gauge,
        )?;
        for labels in &targets {
            ConstGauge::new(1_i64).encode(me.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// The agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    injected: Family<KindLabels, Counter>,
    active: Family<KindLabels, Gauge>,
    reverted: Family<RevertLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    revert_failures: Family<KindLabels, Counter>,
    leftovers: Family<KindLabels, Counter>,
    apply_seconds: Histogram,
    revert_seconds: Histogram,
    ttl_lateness_seconds: Histogram,
    experiments: Family<OutcomeLabels, Counter>,
    probe_checks: Family<ProbeLabels, Counter>,
    probe_seconds: Histogram,
    max_ttl_seconds: Gauge<f64, AtomicU64>,
    faults: Arc<FaultCounters>,
}

/// Every value of `FaultSpec::kind`, whose series start at 0 so that a dashboard shows every
/// kind and `increase()` sees the first event of each (a series born at 1 has no increase).
const FAULT_KINDS: &[&str] = &[
    "loss",
    "loss+shape",
    "netem",
    "rate",
    "dns",
    "refuse",
    "reset",
    "limit",
    "stress",
];

/// Every outcome an experiment ends with (`chaos_agent_experiments_total`), started at 0.
const EXPERIMENT_OUTCOMES: &[&str] = &["passed", "failed", "aborted", "interrupted"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl Metrics {
    /// Creates the registry; `info` labels go into `chaos_agent_info` (version, kernel, backends).
    #[must_use]
    pub fn new(info: &[(&str, String)]) -> Self {
        let mut r = Registry::default();
        let m = Self {
            registry: Mutex::new(Registry::default()),
            injected: Family::default(),
            active: Family::default(),
            reverted: Family::default(),
            refused: Family::default(),
            revert_failures: Family::default(),
            leftovers: Family::default(),
            // 100 us .. ~6.5 s
            apply_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            revert_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            // 50 us .. ~0.8 s: the target is < 20 ms at p99.
            ttl_lateness_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 15)),
            experiments: Family::default(),
            probe_checks: Family::default(),
            // 100 us .. ~13 s: a probe's timeout is at most its interval.
            probe_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            max_ttl_seconds: Gauge::default(),
            faults: Arc::new(FaultCounters::default()),
        };
        // `get_or_create` makes the series (at 0); the guard it returns is not needed.
        for kind in FAULT_KINDS {
            let k = Self::kind(kind);
            drop(m.injected.get_or_create(&k));
            drop(m.active.get_or_create(&k));
            drop(m.revert_failures.get_or_create(&k));
        }
        for outcome in EXPERIMENT_OUTCOMES {
            drop(m.experiments.get_or_create(&OutcomeLabels {
                outcome: (*outcome).to_owned(),
            }));
        }
        m.max_ttl_seconds.set(
            crate::spec::Limits::default()
                .effective_max_ttl()
                .as_secs_f64(),
        );
        r.register(
            "chaos_agent_faults_injected",
            "Faults injected, by kind",
            m.injected.clone(),
        );
        r.register(
            "chaos_agent_faults_active",
            "Faults currently active, by kind",
            m.active.clone(),
        );
        r.register(
            "chaos_agent_faults_reverted",
            "Faults reverted, by kind and reason (ttl, stopped, shutdown, error, leftover)",
            m.reverted.clone(),
        );
        r.register(
            "chaos_agent_faults_refused",
            "Fault requests refused, by reason",
            m.refused.clone(),
        );
        r.register(
            "chaos_agent_revert_failures",
            "Reverts that could not remove everything (left for cleanup)",
            m.revert_failures.clone(),
        );
        r.register(
            "chaos_agent_leftovers_removed",
            "Kernel objects of a dead agent removed at start-up or by cleanup, by kind",
            m.leftovers.clone(),
        );
        r.register(
            "chaos_agent_apply_duration_seconds",
            "Time to apply a fault",
            m.apply_seconds.clone(),
        );
        r.register(
            "chaos_agent_revert_duration_seconds",
            "Time to revert a fault",
            m.revert_seconds.clone(),
        );
        r.register(
            "chaos_agent_ttl_revert_lateness_seconds",
            "Delay between a fault's deadline and its revert",
            m.ttl_lateness_seconds.clone(),
        );
        r.register(
            "chaos_agent_experiments",
            "Experiments ended, by outcome (passed, failed, aborted, interrupted)",
            m.experiments.clone(),
        );
        r.register(
            "chaos_agent_probe_checks",
            "Experiment probe checks, by probe and result (pass, fail)",
            m.probe_checks.clone(),
        );
        r.register(
            "chaos_agent_probe_duration_seconds",
            "Time an experiment probe check took",
            m.probe_seconds.clone(),
        );
        let labels: Vec<(String, String)> = info
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        // A gauge fixed at 1 (the `node_uname_info` convention) rather than the OpenMetrics info
        // type: promtool and Prometheus' text parser reject `# TYPE ... info`.
        let info_family: Family<Vec<(String, String)>, Gauge> = Family::default();
        info_family.get_or_create(&labels).set(1);
        r.register(
            "chaos_agent_info",
            "Agent build and host information (version, kernel, backends); always 1",
            info_family,
        );
        r.register(
            "chaos_agent_limits_kept_foreign",
            "Limit restores skipped because someone else changed the cgroup file during the fault (their value is kept)",
            crate::kernel::cgroup::KEPT_FOREIGN.clone(),
        );
        r.register(
            "chaos_agent_max_ttl_seconds",
            "The longest a fault may live, extensions included (limits.max_ttl); a fault older than this has escaped its TTL",
            m.max_ttl_seconds.clone(),
        );
        // Like process_start_time_seconds, which prometheus-client does not export: the
        // alert on leftovers found at start looks at the first hour after it.
        let started: Gauge<f64, AtomicU64> = Gauge::default();
        started.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        r.register(
            "chaos_agent_start_time_seconds",
            "When this agent process started, in seconds since the Unix epoch",
            started,
        );
        r.register_collector(Box::new(m.faults.clone()));
        if let Ok(mut reg) = m.registry.lock() {
            *reg = r;
        }
        m
    }

    /// Connects the scrape-time kernel counters and phases to the engine.
    pub fn set_live_counters(&self, f: LiveCounters) {
        let _ = self.faults.live.set(f);
    }

    /// `OpenMetrics` text of every metric.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(reg) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        }
        out
    }

    /// The same metrics in the classic Prometheus text format (0.0.4), for clients that ask
    /// for `text/plain` (e.g. promtool 2.x, whose parser wants counter HELP/TYPE lines named
    /// with the `_total` suffix that `OpenMetrics` puts on samples only).
    #[must_use]
    pub fn encode_prometheus_text(&self) -> String {
        openmetrics_to_prometheus_text(&self.encode())
    }

    fn kind(kind: &str) -> KindLabels {
        KindLabels {
            kind: kind.to_owned(),
        }
    }

    /// A fault was injected.
    pub fn fault_injected(&self, kind: &str) {
        self.injected.get_or_create(&Self::kind(kind)).inc();
    }
    /// Active gauge change.
    pub fn set_active(&self, kind: &str, delta: i64) {
        self.active.get_or_create(&Self::kind(kind)).inc_by(delta);
    }
    /// A fault ended.
    pub fn fault_reverted(&self, kind: &str, reason: RevertReason) {
        self.reverted
            .get_or_create(&RevertLabels {
                kind: kind.to_owned(),
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }
    /// A request was refused.
    pub fn fault_refused(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
    /// A revert left something behind.
    pub fn revert_failure(&self, kind: &str) {
        self.revert_failures.get_or_create(&Self::kind(kind)).inc();
    }
    /// An experiment ended.
    pub fn experiment_ended(&self, outcome: &str) {
        self.experiments
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }
    /// An experiment probe's check.
    pub fn probe_checked(&self, probe: &str, ok: bool, took: Duration) {
        self.probe_checks
            .get_or_create(&ProbeLabels {
                probe: probe.to_owned(),
                result: if ok { "pass" } else { "fail" }.to_owned(),
            })
            .inc();
        self.probe_seconds.observe(took.as_secs_f64());
    }
    /// Leftovers removed.
    pub fn leftovers_removed(&self, kind: &str, n: u64) {
        self.leftovers.get_or_create(&Self::kind(kind)).inc_by(n);
    }
    /// Apply latency.
    pub fn apply_duration(&self, d: Duration) {
        self.apply_seconds.observe(d.as_secs_f64());
    }
    /// Revert latency.
    pub fn revert_duration(&self, d: Duration) {
        self.revert_seconds.observe(d.as_secs_f64());
    }
    /// TTL lateness.
    pub fn ttl_lateness(&self, d: Duration) {
        self.ttl_lateness_seconds.observe(d.as_secs_f64());
    }
    /// The configured maximum TTL (at start and at each reload).
    pub fn set_max_ttl(&self, max: Duration) {
        self.max_ttl_seconds.set(max.as_secs_f64());
    }
    /// Folds a reverted fault's final counters and phases into the monotonic totals.
    pub fn retire(&self, s: &FaultSample) {
        if let Ok(mut m) = self.faults.retired.lock() {
            m.add(s);
        }
    }
}

/// Rewrites `OpenMetrics` text as Prometheus text 0.0.4: counter families are named with their
/// `_total` suffix in HELP/TYPE, and the `# EOF` marker is dropped.
#[must_use]
pub fn openmetrics_to_prometheus_text(om: &str) -> String {
    use std::fmt::Write as _;
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len() + 256);
    for line in om.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) && !name.ends_with("_total") {
                    let _ = write!(out, "{prefix}{name}_total {tail}");
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_with_total() {
        let m = Metrics::new(&[("version", "1".to_owned())]);
        m.fault_injected("loss");
        let om = m.encode();
        assert!(
            om.contains("# TYPE chaos_agent_faults_injected counter") && om.ends_with("# EOF\n"),
            "{om}"
        );
        let text = m.encode_prometheus_text();
        assert!(
            text.contains("# TYPE chaos_agent_faults_injected_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# HELP chaos_agent_faults_injected_total Faults injected"),
            "{text}"
        );
        assert!(
            text.contains("chaos_agent_faults_injected_total{kind=\"loss\"} 1"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
        assert!(text.contains("# TYPE chaos_agent_info gauge"), "{text}");
    }

    fn sample(id: &str, kind: &str, dns: Option<DnsAnswer>, phase: Option<u64>) -> FaultSample {
        use crate::kernel::bpf::DirCounters;
        FaultSample {
            id: id.to_owned(),
            kind: kind.to_owned(),
            iface: "lo".to_owned(),
            dns_answer: dns,
            refuse: None,
            effects: None,
            target: None,
            counters: Some(Counters {
                ingress: DirCounters {
                    seen: 40,
                    matched: 12,
                    dropped: 2,
                    rewritten: 9,
                    unparsed: 1,
                    ..DirCounters::default()
                },
                egress: DirCounters::default(),
            }),
            phase: phase.map(|n| FlapPhase {
                active: n % 2 == 1,
                active_phases: n,
                total_active_phases: 9,
                remaining_ms: 100,
            }),

            created_unix_ms: 1_796_643_673_574,
            expires_unix_ms: 1_796_643_733_574,
        }
    }

    fn has(text: &str, line: &str) {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }

    #[test]
    fn dns_and_flap_families() {
        let m = Metrics::default();
        // An ended DNS fault, a live flapping one and a live flapping loss fault.
        m.retire(&sample(
            "f-00000001",
            "dns",
            Some(DnsAnswer::Servfail),
            None,
        ));
        let live = vec![
            sample("f-00000002", "dns", Some(DnsAnswer::Servfail), Some(3)),
            sample("f-00000003", "loss", None, Some(2)),
            sample("f-00000004", "dns", Some(DnsAnswer::Drop), None),
        ];
        m.set_live_counters(Box::new(move || live.clone()));
        let om = m.encode();
        let rw = |rcode: &str| {
            format!(
                "chaos_agent_dns_answers_rewritten_total{{interface=\"lo\",direction=\"ingress\",rcode=\"{rcode}\"}}"
            )
        };
        has(&om, &format!("{} 18", rw("servfail")));
        assert!(
            !om.contains(&rw("drop")),
            "a drop fault rewrites nothing:\n{om}"
        );
        let dns = |f: &str, v: u64| {
            format!("chaos_agent_dns_{f}_total{{interface=\"lo\",direction=\"ingress\"}} {v}")
        };
        has(&om, &dns("answers_matched", 36));
        has(&om, &dns("answers_dropped", 6));
        has(&om, &dns("messages_unparsed", 3));
        // DNS faults count answers, not packets: only the loss fault is in the packet families.
        let pk = |f: &str, v: u64| {
            format!("chaos_agent_packets_{f}_total{{interface=\"lo\",direction=\"ingress\"}} {v}")
        };
        has(&om, &pk("seen", 40));
        has(&om, &pk("matched", 12));
        has(&om, &pk("dropped", 2));
        has(&om, "chaos_agent_flap_active_phases_total{kind=\"dns\"} 3");
        has(&om, "chaos_agent_flap_active_phases_total{kind=\"loss\"} 2");
        has(&om, "# TYPE chaos_agent_fault_flap_active gauge");
        has(
            &om,
            "chaos_agent_fault_flap_active{fault=\"f-00000002\",kind=\"dns\",interface=\"lo\"} 1",
        );
        has(
            &om,
            "chaos_agent_fault_flap_active{fault=\"f-00000003\",kind=\"loss\",interface=\"lo\"} 0",
        );
        assert!(
            !om.contains("chaos_agent_fault_flap_active{fault=\"f-00000004\""),
            "{om}"
        );
    }

    #[test]
    fn refuse_faults_count_connects_by_errno() {
        let m = Metrics::default();
        let refuse = |id: &str, errno: RefuseErrno| FaultSample {
            refuse: Some(errno),
            ..sample(id, "refuse", None, None)
        };
        m.retire(&refuse("f-00000001", RefuseErrno::Econnrefused));
        let live = vec![
            refuse("f-00000002", RefuseErrno::Econnrefused),
            refuse("f-00000003", RefuseErrno::Etimedout),
        ];
        m.set_live_counters(Box::new(move || live.clone()));
        let om = m.encode();
        has(
            &om,
            "chaos_agent_connects_matched_total{errno=\"ECONNREFUSED\"} 24",
        );
        has(
            &om,
            "chaos_agent_connects_matched_total{errno=\"ETIMEDOUT\"} 12",
        );
        // Refuse faults count connects, not packets.
        assert!(!om.contains("chaos_agent_packets_seen_total{"), "{om}");
        let m = Metrics::default();
        let mut reset = sample("f-00000005", "reset", None, None);
        if let Some(c) = reset.counters.as_mut() {
            c.egress.reset = 4;
        }
        m.retire(&reset);
        has(
            &m.encode(),
            "chaos_agent_connections_reset_total{kind=\"reset\"} 4",
        );
    }

    #[test]
    fn a_fault_that_ends_keeps_its_counts() {
        let m = Metrics::default();
        let live = Arc::new(Mutex::new(vec![sample(
            "f-00000002",
            "dns",
            Some(DnsAnswer::Refused),
            Some(3),
        )]));
        let l = live.clone();
        m.set_live_counters(Box::new(move || l.lock().expect("lock").clone()));
        let counters = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.contains("_total{"))
                .map(str::to_owned)
                .collect()
        };
        let during = m.encode();
        // The engine takes the fault out of the live set, then retires its final sample.
        let ended = live.lock().expect("lock").pop().expect("sample");
        m.retire(&ended);
        let after = m.encode();
        assert_eq!(counters(&during), counters(&after));
        assert!(during.contains("fault_flap_active{") && !after.contains("fault_flap_active{"));
    }

    #[test]
    fn alerts_have_their_series() {
        let m = Metrics::default();
        m.set_max_ttl(Duration::from_mins(30));
        let text = m.encode_prometheus_text();
        // Known label values start at 0.
        has(&text, "chaos_agent_revert_failures_total{kind=\"loss\"} 0");
        has(&text, "chaos_agent_faults_active{kind=\"limit\"} 0");
        has(
            &text,
            "chaos_agent_faults_injected_total{kind=\"refuse\"} 0",
        );
        has(&text, "chaos_agent_experiments_total{outcome=\"failed\"} 0");
        has(&text, "chaos_agent_max_ttl_seconds 1800.0");
        assert!(
            text.contains("\nchaos_agent_start_time_seconds 1"),
            "{text}"
        );
        assert!(
            !text.contains("chaos_agent_fault_start_time_seconds{"),
            "{text}"
        );
        let live = vec![sample("f-0000000a", "loss", None, None)];
        m.set_live_counters(Box::new(move || live.clone()));
        let text = m.encode_prometheus_text();
        has(
            &text,
            "chaos_agent_fault_start_time_seconds{fault=\"f-0000000a\",kind=\"loss\"} 1796643673.574",
        );
        has(
            &text,
            "chaos_agent_fault_expiry_time_seconds{fault=\"f-0000000a\",kind=\"loss\"} 1796643733.574",
        );
    }

    #[test]
    fn a_fault_on_a_pod_names_it() {
        let m = Metrics::default();
        let t = crate::target::Target {
            pod: Some("shop/web-0".to_owned()),
            pod_container: Some("app".to_owned()),
            cgroup: Some("/kubepods/besteffort/pod1/abc".to_owned()),
            ..crate::target::Target::default()
        };
        let live = vec![
            FaultSample {
                target: TargetLabels::of(&t),
                ..sample("f-0000000b", "loss", None, None)
            },
            sample("f-0000000c", "loss", None, None),
        ];
        m.set_live_counters(Box::new(move || live.clone()));
        let text = m.encode_prometheus_text();
        has(
            &text,
            "chaos_agent_fault_target_info{fault=\"f-0000000b\",kind=\"loss\",namespace=\"shop\",pod=\"web-0\",container=\"app\",unit=\"\",cgroup=\"/kubepods/besteffort/pod1/abc\"} 1",
        );
        // A fault on no processes has no target series.
        assert!(
            !text.contains("fault=\"f-0000000c\",kind=\"loss\",namespace"),
            "{text}"
        );
    }

    #[test]
    fn exposition_passes_promtool() {
        let m = Metrics::new(&[("version", "1".to_owned())]);
        m.fault_injected("dns");
        let live = vec![
            sample("f-00000002", "dns", Some(DnsAnswer::Nxdomain), Some(1)),
            sample("f-00000003", "loss", None, None),
        ];
        m.set_live_counters(Box::new(move || live.clone()));
        let text = m.encode_prometheus_text();
        let child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("SKIP exposition_passes_promtool: no promtool");
            return;
        };
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(text.as_bytes()).expect("write");
        }
        let out = child.wait_with_output().expect("promtool");
        assert!(
            out.status.success(),
            "promtool: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
