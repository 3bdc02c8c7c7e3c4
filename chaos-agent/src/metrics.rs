//! Prometheus metrics (prometheus-client, `OpenMetrics` text). The engine updates the event
//! counters; the eBPF packet counters are read from the kernel at scrape time.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::engine::RevertReason;
use crate::kernel::bpf::Counters;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
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
struct PacketLabels {
    interface: String,
    direction: String,
}

/// A source of live counters (the engine), read at scrape time.
pub type LiveCounters = Box<dyn Fn() -> Vec<(String, Counters)> + Send + Sync>;

/// Packet counters: totals of reverted faults plus live values of active ones, so that the
/// exported series stay monotonic when faults come and go.
#[derive(Default)]
struct PacketCounters {
    retired: Mutex<std::collections::BTreeMap<PacketLabels, [u64; 3]>>,
    live: OnceLock<LiveCounters>,
}

impl std::fmt::Debug for PacketCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketCounters").finish_non_exhaustive()
    }
}

fn add(map: &mut std::collections::BTreeMap<PacketLabels, [u64; 3]>, iface: &str, c: &Counters) {
    for (dir, d) in [("ingress", c.ingress), ("egress", c.egress)] {
        let e = map
            .entry(PacketLabels {
                interface: iface.to_owned(),
                direction: dir.to_owned(),
            })
            .or_default();
        e[0] += d.seen;
        e[1] += d.matched;
        e[2] += d.dropped;
    }
}

impl prometheus_client::collector::Collector for PacketCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut totals = self.retired.lock().map(|m| m.clone()).unwrap_or_default();
        if let Some(live) = self.live.get() {
            for (iface, c) in live() {
                add(&mut totals, &iface, &c);
            }
        }
        for (i, (name, help)) in [
            (
                "chaos_agent_packets_seen",
                "Packets that passed a fault's hooks while the fault was active, summed over faults (a packet on a hook with two faults counts twice).",
            ),
            (
                "chaos_agent_packets_matched",
                "Packets that matched a fault's filters.",
            ),
            (
                "chaos_agent_packets_dropped",
                "Packets dropped by loss faults.",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let mut me = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, v) in &totals {
                ConstCounter::new(v[i]).encode(me.encode_family(labels)?)?;
            }
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
    packets: Arc<PacketCounters>,
}

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
            packets: Arc::new(PacketCounters::default()),
        };
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
        r.register_collector(Box::new(m.packets.clone()));
        if let Ok(mut reg) = m.registry.lock() {
            *reg = r;
        }
        m
    }

    /// Connects the scrape-time packet counters to the engine.
    pub fn set_live_counters(&self, f: LiveCounters) {
        let _ = self.packets.live.set(f);
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
    /// Folds a reverted fault's final counters into the monotonic totals.
    pub fn retire_counters(&self, iface: &str, c: &Counters) {
        if let Ok(mut m) = self.packets.retired.lock() {
            add(&mut m, iface, c);
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
}
