//! `cargo xtask bench`: what the one-datapath design costs and how fast it acts, side by side
//! with nftables, on the demo network (two namespaces and a veth pair; no other address is ever
//! sent to).
//!
//! 1. Small-packet rate: a 64-byte UDP flood from one thread in A, counted by B's socket, with
//!    no program, with an nft rule dropping at p = 0.001, with 1/16/64/256 faults that do not
//!    match the flow and with one matching fault at p = 0.001. Each is measured against a
//!    reference veth pair between the same namespaces, never faulted, in interleaved slices:
//!    other work on the machine slows both paths alike.
//! 2. The egress program's ns/packet (`run_time_ns / run_cnt`, `bpf_stats` on only inside these
//!    windows): the same fault counts, and one fault with 1/1,000/16,384 destination prefixes,
//!    the flow outside all of them and then inside the last (dropped).
//! 3. Inject/stop latency, through the daemon's API, its CLI, and `nft add/delete rule`: the call
//!    itself, and the time to the first dropped / first delivered packet of a probe stream.
//! 4. The daemon's `VmRSS` at 0, 64 and 256 faults and with 16,384 prefixes.
//! 5. The cold start of a foreground `inject` (load, verify, attach) to its first drop.
//!
//! Each measurement fails on its own (reported, the others still run); the bench exits non-zero
//! only if one could not be made. Targets get PASS/MISS beside them and never fail the run.
//! Results: a table on stdout and `target/bench/bench.json`.

pub(crate) mod agent;
mod faults;
mod latency;
mod net;
mod nft;
mod probe;
mod report;
mod stats;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use self::agent::{Daemon, Workdir};
use self::net::Flood;
use self::report::{Rate, RateRow, Results};
use crate::demo::{DemoNet, build_agent, sleep_checked};

/// Non-matching faults filter on destination ports from here on: none is a flow's.
const UNUSED_PORT_BASE: u16 = 40_000;
const WARMUP: Duration = Duration::from_millis(500);
const COST_WARMUP: Duration = Duration::from_millis(300);
const COST_WINDOW: Duration = Duration::from_secs(3);
/// The probe's packet interval: the resolution of every "time to effect".
const PROBE_INTERVAL: Duration = Duration::from_micros(100);
/// How long each latency iteration leaves its fault in before stopping it.
const HOLD: Duration = Duration::from_millis(20);

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Do not run `cargo xtask setup` first.
    #[arg(long)]
    no_setup: bool,
    /// Seconds of each packet-rate window (after a 0.5 s warm-up).
    #[arg(long, default_value_t = 3.0, value_parser = window_secs)]
    window: f64,
    /// Injects and stops per latency method.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    iterations: u32,
}

fn window_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.5..=30.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds in [0.5, 30]")),
    }
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    crate::require_root("bench")?;
    if !args.no_setup {
        crate::setup::run(&crate::setup::SetupArgs::default())?;
    }
    let agent = build_agent()?;
    crate::catch_interrupts()?;
    let started = Instant::now();
    let mut meta = json!({
        "kernel": read_trim("/proc/sys/kernel/osrelease"),
        "cpus": std::thread::available_parallelism().map_or(1, usize::from),
        "loadavg_at_start": read_trim("/proc/loadavg"),
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "agent": agent.display().to_string(),
        "window_s": args.window,
        "iterations": args.iterations,
        "probe_interval_us": PROBE_INTERVAL.as_micros() as u64,
        "flood_payload_bytes": net::FLOOD_PAYLOAD,
    });
    let mut r = Results::default();
    let outcome = (|| {
        let net = DemoNet::create()?;
        net::add_reference_path()?;
        let work = Workdir::create()?;
        measure(&net, &agent, &work.0, args, &mut r)
        // The daemon is stopped inside; the work dir and the namespaces go here.
    })();
    meta["duration_s"] = json!(started.elapsed().as_secs_f64());
    meta["loadavg_at_end"] = json!(read_trim("/proc/loadavg"));
    // Other work on a 2-core machine moves every number here: say how busy it was.
    r.notes.push(format!(
        "load average (1, 5, 15 min ...): at start {}, at end {}",
        meta["loadavg_at_start"].as_str().unwrap_or("?"),
        meta["loadavg_at_end"].as_str().unwrap_or("?")
    ));
    r.print(
        args.window,
        args.iterations as usize,
        PROBE_INTERVAL.as_micros(),
    );
    let path = output_path();
    write_json(&path, &r.to_json(&meta))?;
    println!(
        "\nwrote {} ({:.0} s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    outcome?;
    if !r.errors.is_empty() {
        bail!(
            "{} measurement(s) could not be made (see above)",
            r.errors.len()
        );
    }
    Ok(())
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// `target/bench/bench.json` (under `CARGO_TARGET_DIR` when set, like the agent's build).
fn output_path() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| crate::workspace_root().join("target"), PathBuf::from)
        .join("bench/bench.json")
}

fn write_json(path: &Path, v: &Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(path, serde_json::to_string_pretty(v)? + "\n")
        .with_context(|| format!("write {}", path.display()))
}

/// Runs one measurement: its failure is recorded and the bench goes on, except for Ctrl-C.
fn attempt<T>(
    r: &mut Results,
    what: &str,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<Option<T>> {
    eprintln!("bench: {what}");
    match f() {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            crate::check_interrupted()?;
            eprintln!("bench: {what}: FAILED: {e:#}");
            r.errors.push((what.to_owned(), format!("{e:#}")));
            Ok(None)
        }
    }
}

fn measure(
    net: &DemoNet,
    agent: &Path,
    work: &Path,
    args: &BenchArgs,
    r: &mut Results,
) -> anyhow::Result<()> {
    let window = Duration::from_secs_f64(args.window);
    // First, with no daemon: a foreground agent has a datapath of its own, which must not share
    // the hook with the daemon's.
    r.cold = attempt(r, "cold start (foreground inject)", || {
        latency::cold_start(net, agent, work)
    })?;
    rate_row(r, "none", "no program attached", window)?;
    if let Some(cost) = attempt(r, "cost: the floor (a no-op program)", || {
        stats::floor_cost(&work.join("floor"), COST_WARMUP, COST_WINDOW)
    })? {
        r.costs.push(report::CostRow {
            key: "floor".to_owned(),
            label: "floor: a no-op program (tc filter), the accounting's own cost".to_owned(),
            cost,
            matched: None,
            dropped: None,
        });
    }
    faults::nft_rate(r, window)?;
    let Some(daemon) = attempt(r, "start the daemon", || {
        Daemon::start(net, agent, &work.join("daemon"))
    })?
    else {
        return Ok(());
    };
    rss(
        r,
        &daemon,
        "faults_0",
        "daemon, 0 faults (datapath preloaded)",
    )?;
    faults::nonmatching(r, &daemon, window)?;
    rate_row(
        r,
        "none_again",
        "no program attached (again, after stop --all)",
        window,
    )?;
    faults::matching(r, &daemon, window)?;
    faults::prefixes(r, &daemon, agent, work)?;
    latency::latency(r, &daemon, agent, args.iterations)?;
    attempt(r, "daemon shutdown (reverts everything)", || {
        daemon.shutdown()
    })?;
    // A second daemon, which keeps A's hooks attached from its start.
    if let Some(kept) = attempt(r, "start the daemon with keep_attached", || {
        Daemon::start_kept(net, agent, &work.join("daemon-kept"), crate::demo::IF_A)
    })? {
        latency::kept(r, &kept, args.iterations)?;
        attempt(r, "keep_attached daemon shutdown", || kept.shutdown())?;
    }
    Ok(())
}

/// The flood's rate on A's veth over `window`, interleaved with as much time on the reference
/// path in 0.5 s slices, in ABBA order: whatever else this machine runs slows both alike, and a
/// steady drift cancels out.
fn rate(window: Duration) -> anyhow::Result<Rate> {
    const SLICE: Duration = Duration::from_millis(500);
    // After a switch, the receiver of the path left may still be draining: not counted.
    const SETTLE: Duration = Duration::from_millis(50);
    const COUNTED: Duration = Duration::from_millis(450);
    let flood = Flood::start(WARMUP + 2 * window + Duration::from_secs(30))?;
    flood.set_path(1);
    sleep_checked(WARMUP / 2)?;
    flood.set_path(0);
    sleep_checked(WARMUP / 2)?;
    let pairs = (window.as_secs_f64() / SLICE.as_secs_f64())
        .round()
        .max(1.0) as usize;
    // Per path: received, sent, seconds.
    let mut sums = [(0_u64, 0_u64, 0.0_f64); 2];
    let mut ratios: Vec<f64> = Vec::new();
    for i in 0..pairs {
        let mut slice = [0.0_f64; 2];
        for path in if i % 2 == 0 { [0, 1] } else { [1, 0] } {
            flood.set_path(path);
            sleep_checked(SETTLE)?;
            let a = flood.counts();
            sleep_checked(COUNTED)?;
            let b = flood.counts();
            let (rx, _) = a.rates(&b, path);
            let secs = b.at.duration_since(a.at).as_secs_f64();
            sums[path].0 += b.received[path] - a.received[path];
            sums[path].1 += b.sent[path] - a.sent[path];
            sums[path].2 += secs;
            slice[path] = rx;
        }
        if slice[1] > 0.0 {
            ratios.push(slice[0] / slice[1]);
        }
    }
    flood.finish()?;
    let per_s = |n: u64, secs: f64| n as f64 / secs.max(1e-9);
    let (rx, tx, ref_rx) = (
        per_s(sums[0].0, sums[0].2),
        per_s(sums[0].1, sums[0].2),
        per_s(sums[1].0, sums[1].2),
    );
    if rx < 1.0 || ref_rx < 1.0 {
        bail!("nothing arrived at B ({rx:.0} packets/s on A's veth, {ref_rx:.0} on the reference)");
    }
    // The median pair: one pair of slices hit by a burst of other work does not move it.
    Ok(Rate {
        rx,
        tx,
        ref_rx,
        rel: report::percentile(&ratios, 50.0).unwrap_or(rx / ref_rx),
        rel_min: report::percentile(&ratios, 0.0).unwrap_or(f64::NAN),
        rel_max: report::percentile(&ratios, 100.0).unwrap_or(f64::NAN),
    })
}

fn rate_row(r: &mut Results, key: &str, label: &str, window: Duration) -> anyhow::Result<()> {
    if let Some(rate) = attempt(r, &format!("rate: {label}"), || rate(window))? {
        r.rates.push(RateRow {
            key: key.to_owned(),
            label: label.to_owned(),
            rate,
        });
    }
    Ok(())
}

fn rss(r: &mut Results, d: &Daemon, key: &'static str, label: &str) -> anyhow::Result<()> {
    if let Some(kb) = attempt(r, &format!("RSS: {label}"), || d.rss_kb())? {
        r.rss.push((key, label.to_owned(), kb));
    }
    Ok(())
}
