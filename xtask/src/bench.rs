//! `cargo xtask bench`: two numbers we can already measure on the demo network.
//!
//! 1. The eBPF cost per packet: with `kernel.bpf_stats_enabled=1` the kernel accounts
//!    `run_time_ns` / `run_cnt` per program (`bpftool -j prog show`). Two snapshots taken while a
//!    0.1-loss fault carries traffic give ns per packet for each `chaos_tc_*` program.
//! 2. The time from spawning `chaos-agent inject --loss 1.0` to the first dropped packet, and
//!    from it to the last one (which should be close to the TTL: the kernel-side deadline), from
//!    a datagram sent every millisecond.
//!
//! More (throughput under iperf3, netem paths in the VM) comes later; this is the structure.

use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::demo::{DemoNet, IF_A, Traffic, build_agent, now_ns, sleep_checked, wait_checked};
use crate::{capture, cmd, exec};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Do not run `cargo xtask setup` first.
    #[arg(long)]
    no_setup: bool,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    crate::require_root("bench")?;
    if !args.no_setup {
        crate::setup::run(&crate::setup::SetupArgs::default())?;
    }
    let agent = build_agent()?;
    crate::catch_interrupts()?;
    let net = DemoNet::create()?;
    // Each measurement reports on its own: one failing does not hide the other's number.
    let cost = BpfStats::enable().and_then(|_stats| per_packet_cost(&net, &agent));
    if let Err(e) = &cost {
        println!("eBPF cost per packet: FAILED: {e:#}");
    }
    crate::check_interrupted()?;
    let first_drop = time_to_first_drop(&net, &agent);
    if let Err(e) = &first_drop {
        println!("time to first drop: FAILED: {e:#}");
    }
    cost.and(first_drop)
}

/// Turns `kernel.bpf_stats_enabled` on and restores the previous value on drop (the accounting
/// costs two clock reads per program run, so it must not stay on).
#[derive(Debug)]
struct BpfStats {
    previous: String,
}

impl BpfStats {
    fn enable() -> anyhow::Result<Self> {
        let previous = capture(&mut cmd("sysctl", ["-n", "kernel.bpf_stats_enabled"]))?
            .trim()
            .to_owned();
        exec(&mut cmd(
            "sysctl",
            ["-q", "-w", "kernel.bpf_stats_enabled=1"],
        ))?;
        Ok(Self { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = cmd(
            "sysctl",
            [
                "-q",
                "-w",
                &format!("kernel.bpf_stats_enabled={}", self.previous),
            ],
        )
        .status();
    }
}

/// `(id, name, run_cnt, run_time_ns)` of the `chaos_tc_*` programs held by one of `pids` (the
/// agent under bench; other agents may run on this machine). Falls back to the name alone when
/// bpftool was built without pid information.
fn prog_stats(pids: &[u32]) -> anyhow::Result<Vec<(u64, String, u64, u64)>> {
    let json = capture(&mut cmd("bpftool", ["-j", "prog", "show"]))?;
    let progs: serde_json::Value =
        serde_json::from_str(&json).context("parse bpftool -j prog show")?;
    let mut stats = Vec::new();
    for p in progs.as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default();
        if !name.starts_with("chaos_tc_") {
            continue;
        }
        let owners: Vec<u64> = p["pids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["pid"].as_u64())
            .collect();
        if !owners.is_empty()
            && !owners
                .iter()
                .any(|o| pids.iter().any(|p| u64::from(*p) == *o))
        {
            continue;
        }
        stats.push((
            p["id"].as_u64().unwrap_or_default(),
            name.to_owned(),
            p["run_cnt"].as_u64().unwrap_or_default(),
            p["run_time_ns"].as_u64().unwrap_or_default(),
        ));
    }
    Ok(stats)
}

fn per_packet_cost(net: &DemoNet, agent: &std::path::Path) -> anyhow::Result<()> {
    println!("\n== eBPF cost per packet (loss 0.1, ~10k packets/s)");
    let traffic = Traffic::start(net, Duration::from_micros(100))?;
    sleep_checked(Duration::from_millis(500))?;
    let mut c = net.a_command(agent);
    c.args(["inject", "--loss", "0.1", "--ttl", "6s", "--iface", IF_A]);
    let child = c
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("spawn chaos-agent")?;
    sleep_checked(Duration::from_millis(1500))?;
    let first = prog_stats(&net.a_pids())?;
    sleep_checked(Duration::from_secs(3))?;
    let second = prog_stats(&net.a_pids())?;
    let status = wait_checked(child)?;
    drop(traffic.finish()?);
    if !status.success() {
        bail!("chaos-agent inject failed ({status})");
    }
    if second.is_empty() {
        bail!("no chaos_tc_* program of the agent found by `bpftool -j prog show`");
    }
    println!(
        "{:<14} {:>6} {:>10} {:>12}",
        "program", "id", "runs", "ns/packet"
    );
    for (id, name, cnt, ns) in &second {
        let (cnt0, ns0) = first
            .iter()
            .find(|f| f.0 == *id)
            .map_or((0, 0), |f| (f.2, f.3));
        let runs = cnt - cnt0;
        let per = if runs == 0 {
            "-".to_owned()
        } else {
            format!("{:.0}", (ns - ns0) as f64 / runs as f64)
        };
        println!("{name:<14} {id:>6} {runs:>10} {per:>12}");
    }
    Ok(())
}

fn time_to_first_drop(net: &DemoNet, agent: &std::path::Path) -> anyhow::Result<()> {
    println!(
        "\n== time from `chaos-agent inject --loss 1.0 --ttl 3s` to the first dropped packet (1 packet/ms)"
    );
    let traffic = Traffic::start(net, Duration::from_millis(1))?;
    sleep_checked(Duration::from_millis(500))?;
    let t_spawn = now_ns();
    let mut c = net.a_command(agent);
    c.args(["inject", "--loss", "1.0", "--ttl", "3s", "--iface", IF_A]);
    let status = wait_checked(
        c.stdout(std::process::Stdio::null())
            .spawn()
            .context("spawn chaos-agent")?,
    )?;
    sleep_checked(Duration::from_secs(1))?;
    let trace = traffic.finish()?;
    if !status.success() {
        bail!("chaos-agent inject failed ({status})");
    }
    let drops = trace.lost_after(t_spawn);
    let (Some(first), Some(last)) = (drops.first(), drops.last()) else {
        bail!("no packet was dropped after inject");
    };
    let ms = |ns: u64| (ns - t_spawn) as f64 / 1e6;
    println!("first drop   {:>8.1} ms after spawn (±1 ms)", ms(*first));
    println!(
        "last drop    {:>8.1} ms after spawn (TTL 3000 ms counts from the attach)",
        ms(*last)
    );
    println!("dropped      {:>8} packets", drops.len());
    Ok(())
}
