//! The programs' own cost: with `kernel.bpf_stats_enabled=1` the kernel accounts `run_time_ns`
//! and `run_cnt` per program (`bpftool -j prog show`); two snapshots around a flood window give
//! ns per packet. The accounting itself costs two clock reads per run, so it is on only inside
//! these windows, never while packet rates are measured.

use std::time::Duration;

use anyhow::{Context as _, bail};

use super::net::{Counts, Flood};
use crate::demo::sleep_checked;
use crate::{capture, cmd};

/// Turns `kernel.bpf_stats_enabled` on and restores the previous value on drop.
#[derive(Debug)]
pub struct BpfStats {
    previous: String,
}

impl BpfStats {
    pub fn enable() -> anyhow::Result<Self> {
        let previous = capture(&mut cmd("sysctl", ["-n", "kernel.bpf_stats_enabled"]))?
            .trim()
            .to_owned();
        capture(&mut cmd(
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

/// One program's counters.
#[derive(Clone, Copy, Debug)]
struct Prog {
    id: u64,
    run_cnt: u64,
    run_time_ns: u64,
}

/// Every BPF program `pid` holds a file descriptor of, with its counters, from
/// `/proc/PID/fdinfo`: exact (other agents may run on this machine, tests or a real deployment,
/// with programs of the same names), independent of whether bpftool was built with pid
/// information (on this host it was not: `pids` is absent from its JSON), and cheap enough to
/// read while the flood runs, which spawning bpftool would not be.
fn fd_progs(pid: u32) -> anyhow::Result<Vec<Prog>> {
    let dir = format!("/proc/{pid}/fd");
    let mut progs: Vec<Prog> = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {dir}"))? {
        let entry = entry?;
        if !std::fs::read_link(entry.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:bpf-prog") {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        let text = std::fs::read_to_string(&info).unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some(id) = field("prog_id:")
            && !progs.iter().any(|p| p.id == id)
        {
            progs.push(Prog {
                id,
                run_cnt: field("run_cnt:").unwrap_or_default(),
                run_time_ns: field("run_time_ns:").unwrap_or_default(),
            });
        }
    }
    Ok(progs)
}

/// The id of `pid`'s `chaos_tc_eg` (fdinfo has no names; bpftool has them).
fn egress_prog_id(pid: u32) -> anyhow::Result<u64> {
    let ids: Vec<u64> = fd_progs(pid)?.iter().map(|p| p.id).collect();
    let json = capture(&mut cmd("bpftool", ["-j", "prog", "show"]))?;
    let progs: serde_json::Value =
        serde_json::from_str(&json).context("parse bpftool -j prog show")?;
    progs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"].as_str() == Some("chaos_tc_eg"))
        .filter_map(|p| p["id"].as_u64())
        .find(|id| ids.contains(id))
        .with_context(|| format!("no chaos_tc_eg among the programs of pid {pid} (ids {ids:?})"))
}

fn egress_counters(pid: u32, id: u64) -> anyhow::Result<Prog> {
    fd_progs(pid)?
        .into_iter()
        .find(|p| p.id == id)
        .with_context(|| format!("pid {pid} no longer holds program {id}"))
}

/// The egress program's cost over one flood window.
#[derive(Clone, Copy, Debug)]
pub struct Cost {
    pub runs: u64,
    /// Over the whole window.
    pub ns_per_run: f64,
    /// The best of its 0.5 s slices (the least disturbed by other work on the machine).
    pub best_ns_per_run: f64,
    /// What the flood did meanwhile (for the record: a dropping fault empties the receiver).
    pub tx_pps: f64,
    pub rx_pps: f64,
}

/// Floods A's veth with stats on and returns the cost of the daemon's `chaos_tc_eg` (the only
/// program the bench attaches: every fault is on A's egress).
pub fn egress_cost(pid: u32, warmup: Duration, window: Duration) -> anyhow::Result<Cost> {
    let id = egress_prog_id(pid)?;
    cost_over(warmup, window, || egress_counters(pid, id))
}

/// The cost of the program whose counters `read` gives, over a flood window with stats on.
fn cost_over(
    warmup: Duration,
    window: Duration,
    read: impl Fn() -> anyhow::Result<Prog>,
) -> anyhow::Result<Cost> {
    let _stats = BpfStats::enable()?;
    let flood = Flood::start(warmup + window + Duration::from_secs(30))?;
    sleep_checked(warmup)?;
    let slices = (window.as_secs_f64() / 0.5).round().max(1.0) as u32;
    let (c0, p0): (Counts, Prog) = (flood.counts(), read()?);
    let (mut prev, mut best) = (p0, f64::MAX);
    for _ in 0..slices {
        sleep_checked(window / slices)?;
        let p = read()?;
        let runs = p.run_cnt.saturating_sub(prev.run_cnt);
        if runs > 0 {
            best = best.min(p.run_time_ns.saturating_sub(prev.run_time_ns) as f64 / runs as f64);
        }
        prev = p;
    }
    let c1 = flood.counts();
    flood.finish()?;
    let runs = prev.run_cnt.saturating_sub(p0.run_cnt);
    if runs == 0 {
        bail!(
            "program {} did not run during the window (is it attached?)",
            p0.id
        );
    }
    let (rx_pps, tx_pps) = c0.rates(&c1, 0);
    Ok(Cost {
        runs,
        ns_per_run: prev.run_time_ns.saturating_sub(p0.run_time_ns) as f64 / runs as f64,
        best_ns_per_run: best,
        tx_pps,
        rx_pps,
    })
}

/// The name of the floor program (BPF names hold 15 characters).
const FLOOR_NAME: &str = "chaos_bench_nop";

/// A classifier that returns `TC_ACT_UNSPEC` at once, as LLVM IR: `llc` (LLVM's, which
/// `cargo xtask setup` installs for bpf-linker) turns it into an object `tc` loads.
const FLOOR_IR: &str = r#"target triple = "bpf"
@_license = dso_local global [4 x i8] c"GPL\00", section "license", align 1
define dso_local i32 @chaos_bench_nop(ptr %ctx) #0 section "tc" {
  ret i32 -1
}
attributes #0 = { nounwind }
"#;

/// `llc` of setup's LLVM, else the one on PATH.
fn llc() -> String {
    let versioned = format!("/usr/lib/llvm-{}/bin/llc", crate::setup::LLVM_MAJOR);
    if std::path::Path::new(&versioned).is_file() {
        versioned
    } else {
        "llc".to_owned()
    }
}

/// `run_cnt`, `run_time_ns` of program `id`, from bpftool (the floor program is held by tc's
/// filter, not by a process of ours whose fdinfo could be read).
fn bpftool_counters(id: u64) -> anyhow::Result<Prog> {
    let json = capture(&mut cmd(
        "bpftool",
        ["-j", "prog", "show", "id", &id.to_string()],
    ))?;
    let p: serde_json::Value = serde_json::from_str(&json).context("parse bpftool -j prog show")?;
    Ok(Prog {
        id,
        run_cnt: p["run_cnt"].as_u64().unwrap_or_default(),
        run_time_ns: p["run_time_ns"].as_u64().unwrap_or_default(),
    })
}

/// The floor of every cost in the table: a program that does nothing, on the same hook, under
/// the same flood. With `bpf_stats` on, `run_time_ns` includes the accounting's own two clock
/// reads, which on a VM like this one cost more than a small program (88 ns measured here), so
/// a program's own cost is its figure minus this one. Attached with `cls_bpf` (`tc filter`) on
/// A's egress while the agent has nothing there; removed before the agent starts.
pub fn floor_cost(
    work: &std::path::Path,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<Cost> {
    use crate::demo::{IF_A, NS_A};
    std::fs::create_dir_all(work)?;
    let (ir, obj) = (work.join("floor.ll"), work.join("floor.o"));
    std::fs::write(&ir, FLOOR_IR)?;
    capture(
        cmd(&llc(), ["-march=bpf", "-filetype=obj", "-o"])
            .arg(&obj)
            .arg(&ir),
    )
    .context("compile the floor program (llc)")?;
    let tc = |args: &[&str]| capture(cmd("ip", ["netns", "exec", NS_A, "tc"]).args(args));
    tc(&["qdisc", "add", "dev", IF_A, "clsact"])?;
    let result = (|| {
        let obj = obj.to_string_lossy();
        tc(&[
            "filter", "add", "dev", IF_A, "egress", "bpf", "da", "obj", &obj, "sec", "tc",
        ])?;
        let json = capture(&mut cmd("bpftool", ["-j", "prog", "show"]))?;
        let progs: serde_json::Value = serde_json::from_str(&json).context("parse bpftool")?;
        let id = progs
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["name"].as_str() == Some(FLOOR_NAME))
            .filter_map(|p| p["id"].as_u64())
            .max()
            .context("the floor program is not loaded")?;
        cost_over(warmup, window, || bpftool_counters(id))
    })();
    // The qdisc takes its filter and program with it.
    tc(&["qdisc", "del", "dev", IF_A, "clsact"])?;
    result
}
