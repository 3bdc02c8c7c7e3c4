//! What the bench found: the plain-text tables, the targets with PASS/MISS, and the JSON file.
//! Targets are printed, never asserted: a MISS is a finding, only a missing number is a failure.

use serde_json::{Value, json};

use super::stats::Cost;

/// Packets/s of one rate measurement.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    /// Received at B from A's veth (where the faults are), mean over its slices.
    pub rx: f64,
    /// Sent on A's veth (send attempts).
    pub tx: f64,
    /// Received at B over the reference path, in the interleaved slices.
    pub ref_rx: f64,
    /// The median of the ratios of each pair of slices (A's veth / reference), and their range.
    pub rel: f64,
    pub rel_min: f64,
    pub rel_max: f64,
}

#[derive(Debug)]
pub struct RateRow {
    pub key: String,
    pub label: String,
    pub rate: Rate,
}

#[derive(Debug)]
pub struct CostRow {
    pub key: String,
    pub label: String,
    pub cost: Cost,
    /// The fault's (or faults') egress counters over its life, from the stop report.
    pub matched: Option<u64>,
    pub dropped: Option<u64>,
}

/// One way of injecting and stopping, `n` times; every value in ms.
#[derive(Debug, Default)]
pub struct LatencyRow {
    pub key: &'static str,
    pub label: String,
    pub inject_rtt: Vec<f64>,
    pub inject_effect: Vec<f64>,
    pub stop_rtt: Vec<f64>,
    pub stop_effect: Vec<f64>,
    /// Iterations in which no drop was seen between inject and stop.
    pub missed: usize,
}

#[derive(Debug)]
pub struct ColdStart {
    pub first_drop_ms: f64,
    pub last_drop_ms: f64,
    pub dropped: u64,
}

#[derive(Debug, Default)]
pub struct Results {
    pub rates: Vec<RateRow>,
    pub costs: Vec<CostRow>,
    pub latency: Vec<LatencyRow>,
    /// (key, label, `VmRSS` in kB).
    pub rss: Vec<(&'static str, String, u64)>,
    pub cold: Option<ColdStart>,
    /// Side facts worth a line (how long a large inject took...).
    pub notes: Vec<String>,
    /// (what, why) of every measurement that could not be made.
    pub errors: Vec<(String, String)>,
}

/// Nearest-rank percentile.
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    let mut s: Vec<f64> = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s.get(rank.max(1) - 1).copied()
}

fn dist(v: &[f64]) -> Value {
    json!({
        "n": v.len(),
        "p50": percentile(v, 50.0),
        "p99": percentile(v, 99.0),
        "max": percentile(v, 100.0),
    })
}

fn ms(v: &[f64], p: f64) -> String {
    percentile(v, p).map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"))
}

struct Target {
    name: &'static str,
    value: Option<f64>,
    unit: &'static str,
    limit: f64,
    at_least: bool,
}

impl Target {
    fn pass(&self) -> Option<bool> {
        self.value.map(|v| {
            if self.at_least {
                v >= self.limit
            } else {
                v <= self.limit
            }
        })
    }
}

impl Results {
    fn rate(&self, key: &str) -> Option<Rate> {
        self.rates.iter().find(|r| r.key == key).map(|r| r.rate)
    }

    fn cost(&self, key: &str) -> Option<f64> {
        self.costs
            .iter()
            .find(|c| c.key == key)
            .map(|c| c.cost.best_ns_per_run)
    }

    fn worst_cost(&self, pick: impl Fn(&str) -> bool) -> Option<f64> {
        self.costs
            .iter()
            .filter(|c| pick(&c.key))
            .map(|c| c.cost.best_ns_per_run)
            .reduce(f64::max)
    }

    fn latency_pct(&self, key: &str, p: f64) -> Option<f64> {
        let row = self.latency.iter().find(|l| l.key == key)?;
        percentile(&row.inject_effect, p)
    }

    fn targets(&self) -> Vec<Target> {
        let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
        let floor = self.cost("floor");
        let net = |v: Option<f64>| Some(v? - floor?);
        let rss = self
            .rss
            .iter()
            .find(|r| r.0 == "faults_64")
            .map(|r| r.2 as f64 / 1024.0);
        let t = |name, value, unit, limit, at_least| Target {
            name,
            value,
            unit,
            limit,
            at_least,
        };
        vec![
            t(
                "rate vs reference, 64 non-matching / 1",
                ratio(
                    self.rate("nonmatch_64").map(|r| r.rel),
                    self.rate("nonmatch_1").map(|r| r.rel),
                ),
                "x",
                0.9,
                true,
            ),
            t(
                "cost, 16,384 prefixes / 1, flow outside (best)",
                ratio(
                    self.cost("prefixes_16384_outside"),
                    self.cost("prefixes_1_outside"),
                ),
                "x",
                1.1,
                false,
            ),
            t(
                "cost, 16,384 prefixes / 1, inside+dropped (best)",
                ratio(
                    self.cost("prefixes_16384_inside"),
                    self.cost("prefixes_1_inside"),
                ),
                "x",
                1.1,
                false,
            ),
            t(
                "cost, worst non-matching hook (best slice)",
                self.worst_cost(|k| k.starts_with("nonmatch_") || k.ends_with("_outside")),
                "ns",
                60.0,
                false,
            ),
            t(
                "cost, worst matched + dropped (best slice)",
                self.worst_cost(|k| k == "match_p1" || k.ends_with("_inside")),
                "ns",
                150.0,
                false,
            ),
            // The same two, less the floor: what the program itself costs, without the clock
            // reads of the accounting (which a no-op program shows).
            t(
                "  the same, net of the floor: non-matching",
                net(self.worst_cost(|k| k.starts_with("nonmatch_") || k.ends_with("_outside"))),
                "ns",
                60.0,
                false,
            ),
            t(
                "  the same, net of the floor: matched + dropped",
                net(self.worst_cost(|k| k == "match_p1" || k.ends_with("_inside"))),
                "ns",
                150.0,
                false,
            ),
            t(
                "inject via API -> first drop, p50 (attach)",
                self.latency_pct("api_attach", 50.0),
                "ms",
                5.0,
                false,
            ),
            t(
                "inject via API -> first drop, p99 (attach)",
                self.latency_pct("api_attach", 99.0),
                "ms",
                20.0,
                false,
            ),
            t(
                "inject via API -> first drop, p50 (attached)",
                self.latency_pct("api_attached", 50.0),
                "ms",
                5.0,
                false,
            ),
            t(
                "inject via API -> first drop, p99 (attached)",
                self.latency_pct("api_attached", 99.0),
                "ms",
                20.0,
                false,
            ),
            t(
                "inject via API -> first drop, p50 (first fault, kept attached)",
                self.latency_pct("api_kept", 50.0),
                "ms",
                5.0,
                false,
            ),
            t(
                "inject via API -> first drop, p99 (first fault, kept attached)",
                self.latency_pct("api_kept", 99.0),
                "ms",
                20.0,
                false,
            ),
            t("daemon RSS with 64 faults", rss, "MB", 25.0, false),
        ]
    }

    /// The whole report as plain text.
    pub fn print(&self, window_s: f64, iterations: usize, probe_us: u128) {
        let base = self.rate("none").map(|r| r.rel);
        println!(
            "\n== packet rate: {}-byte UDP payload, one sender thread, A -> B, received at B; {window_s:.1} s on A's veth interleaved (0.5 s slices, ABBA) with {window_s:.1} s on a reference veth pair that never has a program",
            super::net::FLOOD_PAYLOAD
        );
        println!(
            "{:<54} {:>9} {:>9} {:>7} {:>13} {:>9} {:>9}",
            "config", "rx pkt/s", "ref pkt/s", "rx/ref", "pair range", "vs none", "tx pkt/s"
        );
        for r in &self.rates {
            let vs = base.map_or_else(|| "-".to_owned(), |b| format!("{:.3}", r.rate.rel / b));
            println!(
                "{:<54} {:>9.0} {:>9.0} {:>7.3} {:>13} {:>9} {:>9.0}",
                r.label,
                r.rate.rx,
                r.rate.ref_rx,
                r.rate.rel,
                format!("{:.2}-{:.2}", r.rate.rel_min, r.rate.rel_max),
                vs,
                r.rate.tx
            );
        }

        println!(
            "\n== eBPF cost: chaos_tc_eg on A's egress, run_time_ns / run_cnt under the flood (bpf_stats on; mean over 3 s, best 0.5 s slice)"
        );
        println!(
            "{:<60} {:>9} {:>8} {:>9} {:>9} {:>9}",
            "config", "runs", "ns mean", "ns best", "matched", "dropped"
        );
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        for c in &self.costs {
            println!(
                "{:<60} {:>9} {:>8.1} {:>9.1} {:>9} {:>9}",
                c.label,
                c.cost.runs,
                c.cost.ns_per_run,
                c.cost.best_ns_per_run,
                opt(c.matched),
                opt(c.dropped)
            );
        }

        println!(
            "\n== inject / stop latency, {iterations} each, ms (p50 / p99); effect = send time of the first dropped (inject) or first delivered (stop) probe packet after the call, probe every {probe_us} µs"
        );
        println!(
            "{:<34} {:>15} {:>17} {:>15} {:>17} {:>6}",
            "method", "inject call", "inject->1st drop", "stop call", "stop->1st pass", "missed"
        );
        for l in &self.latency {
            let pair = |v: &[f64]| format!("{} / {}", ms(v, 50.0), ms(v, 99.0));
            println!(
                "{:<34} {:>15} {:>17} {:>15} {:>17} {:>6}",
                l.label,
                pair(&l.inject_rtt),
                pair(&l.inject_effect),
                pair(&l.stop_rtt),
                pair(&l.stop_effect),
                l.missed
            );
        }

        println!("\n== daemon memory (VmRSS)");
        for (_, label, kb) in &self.rss {
            println!("{label:<44} {:>8.1} MB", *kb as f64 / 1024.0);
        }

        if let Some(c) = &self.cold {
            println!(
                "\n== cold start: `chaos-agent inject --foreground --loss 1.0 --ttl 3s` (no daemon; loads, verifies and attaches)"
            );
            println!(
                "first drop   {:>8.1} ms after spawn (±{:.1} ms)",
                c.first_drop_ms,
                probe_us as f64 / 1000.0
            );
            println!(
                "last drop    {:>8.1} ms after spawn (TTL 3000 ms counts from the attach)",
                c.last_drop_ms
            );
            println!("dropped      {:>8} packets", c.dropped);
        }

        if !self.notes.is_empty() {
            println!("\n== notes");
            for n in &self.notes {
                println!("{n}");
            }
        }

        println!("\n== targets (reported, not asserted)");
        println!("{:<46} {:>10} {:>10}  result", "target", "value", "limit");
        for t in self.targets() {
            let value = t
                .value
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.2} {}", t.unit));
            let limit = format!(
                "{} {} {}",
                if t.at_least { ">=" } else { "<=" },
                t.limit,
                t.unit
            );
            let result = match t.pass() {
                Some(true) => "PASS",
                Some(false) => "MISS",
                None => "n/a (not measured)",
            };
            println!("{:<50} {value:>10} {limit:>10}  {result}", t.name);
        }
        if !self.errors.is_empty() {
            println!("\n== measurements that could not be made");
            for (what, why) in &self.errors {
                println!("{what}: {why}");
            }
        }
    }

    pub fn to_json(&self, meta: &Value) -> Value {
        json!({
            "meta": meta,
            "rate": self.rates.iter().map(|r| json!({
                "key": r.key, "label": r.label,
                "rx_pps": r.rate.rx, "tx_pps": r.rate.tx, "reference_rx_pps": r.rate.ref_rx,
                "rx_over_reference": r.rate.rel,
                "slice_pair_ratio_min": r.rate.rel_min, "slice_pair_ratio_max": r.rate.rel_max,
                "vs_none": self.rate("none").map(|b| r.rate.rel / b.rel),
            })).collect::<Vec<_>>(),
            "cost": self.costs.iter().map(|c| json!({
                "key": c.key, "label": c.label, "program": "chaos_tc_eg",
                "runs": c.cost.runs, "ns_per_packet_mean": c.cost.ns_per_run,
                "ns_per_packet_best_slice": c.cost.best_ns_per_run,
                "flood_tx_pps": c.cost.tx_pps, "flood_rx_pps": c.cost.rx_pps,
                "fault_matched": c.matched, "fault_dropped": c.dropped,
            })).collect::<Vec<_>>(),
            "latency_ms": self.latency.iter().map(|l| json!({
                "key": l.key, "label": l.label,
                "inject_call": dist(&l.inject_rtt),
                "inject_to_first_drop": dist(&l.inject_effect),
                "stop_call": dist(&l.stop_rtt),
                "stop_to_first_pass": dist(&l.stop_effect),
                "missed": l.missed,
            })).collect::<Vec<_>>(),
            "rss_kb": self.rss.iter().map(|(k, label, kb)| json!({
                "key": k, "label": label, "vm_rss_kb": kb,
            })).collect::<Vec<_>>(),
            "cold_start": self.cold.as_ref().map(|c| json!({
                "first_drop_ms": c.first_drop_ms, "last_drop_ms": c.last_drop_ms,
                "dropped": c.dropped,
            })),
            "notes": self.notes,
            "targets": self.targets().iter().map(|t| json!({
                "name": t.name, "value": t.value, "unit": t.unit, "limit": t.limit,
                "at_least": t.at_least,
                "result": t.pass().map(|p| if p { "PASS" } else { "MISS" }),
            })).collect::<Vec<_>>(),
            "errors": self.errors.iter().map(|(what, why)| json!({
                "what": what, "error": why,
            })).collect::<Vec<_>>(),
        })
    }
}
