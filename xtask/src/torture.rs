//! `cargo xtask torture`: the agent killed with SIGKILL at random moments of its work, and the
//! host checked after each death to be exactly as it was (issue 15, item 3).
//!
//! Each round starts the daemon in the demo namespace A (on the tcx and the netlink attach path
//! in turn), does a few random operations to completion (inject, extend, stop of loss, shaping
//! in one and in both directions, DNS, reset and connect-refusal faults), starts one
//! more and kills the daemon 0-15 ms into it: before, during or after its journal write and its
//! kernel changes. Then the host is put right the way a user would (every other round a new
//! daemon, whose start-up reconciles and which is then stopped; otherwise `chaos-agent cleanup`)
//! and compared with the state taken before the first round, from outside the agent: `ip -j
//! link`, `tc -j qdisc` and `tc -j filter` in A, the BPF programs named `chaos_*` and the BPF
//! links (`bpftool -j`). Any difference fails the run with the round, the seed and the diff.
//! Then (`--clients`) many API clients at once against one daemon: no error but the fault
//! limit, the daemon's memory and fds bounded, nothing left.
//! `cargo xtask test` runs a short one with the debug agent it just built.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::bench::agent::{Daemon, injected_id};
use crate::demo::{DemoNet, IF_A, NS_A};
use crate::{capture, cmd};

#[derive(Debug, clap::Args)]
pub struct TortureArgs {
    /// Rounds, one SIGKILL each (the full run is 1,000; CI runs a short one).
    #[arg(long, default_value_t = 1000)]
    kills: u32,
    /// Seed of the schedule (default: from the clock; printed, to replay a failure).
    #[arg(long)]
    seed: Option<u64>,
    /// Then this many rounds of limit and stress faults, with a daemon in the host's own
    /// namespaces (the full run is 200; 0: none).
    #[arg(long, default_value_t = 200)]
    pressure_kills: u32,
    /// Then this many API clients at once (0: none), each creating, extending, listing and
    /// stopping faults for `--seconds` (the full run is 100 for 60 s).
    #[arg(long, default_value_t = 100)]
    clients: u32,
    /// How long the clients run, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

/// What the clients did.
#[derive(Debug, Default)]
struct ClientTally {
    ops: u64,
    /// Injects the agent refused for a limit (`max_faults`): the right answer under load.
    refused: u64,
    /// Extends and stops of a fault whose TTL (30 s) ended first: 404, rightly.
    expired: u64,
    /// Anything else that failed: fails the run.
    errors: Vec<String>,
}

/// The daemon's `VmRSS` (kB) and its open fds.
fn footprint(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    Ok((rss, fds))
}

/// One client: random create / extend / list / stop of loss faults on ports of its own for
/// `until`, then it stops what it still holds.
fn client(api: &crate::bench::agent::Api, n: u32, seed: u64, until: Instant) -> ClientTally {
    let mut rng = Rng(seed | 1);
    let mut t = ClientTally::default();
    let mut ids: Vec<String> = Vec::new();
    let port = 20_000 + n;
    while Instant::now() < until {
        let r: anyhow::Result<()> = (|| {
            match if ids.is_empty() { 0 } else { rng.below(4) } {
                0 => {
                    let spec = crate::bench::agent::loss_spec(0.5, &[port.to_string()], &[], "30s");
                    let (status, v) = api.call("POST", "/v1/faults", Some(&spec))?;
                    match status {
                        201 => ids.push(v["id"].as_str().context("no id")?.to_owned()),
                        // The agent's fault limit, reached by all clients together.
                        429 if v.to_string().contains("too_many_faults") => t.refused += 1,
                        _ => bail!("inject: HTTP {status}: {v}"),
                    }
                }
                1 => {
                    let i = rng.below(ids.len() as u64) as usize;
                    let body = serde_json::json!({"by": "5s"});
                    let path = format!("/v1/faults/{}/extend", ids[i]);
                    let (status, v) = api.call("POST", &path, Some(&body))?;
                    match status {
                        200 => {}
                        // Its TTL ran out first: gone, rightly.
                        404 => {
                            ids.swap_remove(i);
                            t.expired += 1;
                        }
                        _ => bail!("extend: HTTP {status}: {v}"),
                    }
                }
                2 => {
                    let (status, v) = api.call("GET", "/v1/faults", None)?;
                    if status != 200 {
                        bail!("list: HTTP {status}: {v}");
                    }
                }
                _ => {
                    let id = ids.swap_remove(rng.below(ids.len() as u64) as usize);
                    let (status, v) = api.call("DELETE", &format!("/v1/faults/{id}"), None)?;
                    match status {
                        200 if v["errors"].as_array().is_none_or(Vec::is_empty) => {}
                        404 => t.expired += 1,
                        _ => bail!("stop {id}: HTTP {status}: {v}"),
                    }
                }
            }
            Ok(())
        })();
        t.ops += 1;
        if let Err(e) = r {
            t.errors.push(format!("client {n}: {e:#}"));
            break;
        }
    }
    for id in ids {
        match api.call("DELETE", &format!("/v1/faults/{id}"), None) {
            Ok((200 | 404, _)) => {}
            Ok((status, v)) => t
                .errors
                .push(format!("client {n}: stop {id}: HTTP {status}: {v}")),
            Err(e) => t.errors.push(format!("client {n}: stop {id}: {e:#}")),
        }
    }
    t
}

/// `clients` clients against one daemon for `seconds`: no error but the fault limit, the
/// daemon alive, its memory and fds bounded, and nothing left on the host after.
fn clients(
    net: &DemoNet,
    agent: &Path,
    dir: &Path,
    args: &TortureArgs,
    seed: u64,
    baseline: &[String],
) -> anyhow::Result<()> {
    // Bounds: the daemon holds ~15 MB with 256 faults (cargo xtask bench); each connection is
    // one fd while it lasts.
    const RSS_MAX_KB: u64 = 64 * 1024;
    let d = Daemon::start(net, agent, dir)?;
    let (rss0, fds0) = footprint(d.pid)?;
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let handles: Vec<_> = (0..args.clients)
        .map(|n| {
            let api = d.api.clone();
            let s = seed.wrapping_add(u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            std::thread::spawn(move || client(&api, n, s, until))
        })
        .collect();
    let (mut rss_max, mut fds_max) = (rss0, fds0);
    while Instant::now() < until {
        crate::check_interrupted()?;
        let (rss, fds) = footprint(d.pid).context("the daemon died under the clients")?;
        rss_max = rss_max.max(rss);
        fds_max = fds_max.max(fds);
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut total = ClientTally::default();
    for h in handles {
        let t = h.join().map_err(|_| anyhow::anyhow!("a client panicked"))?;
        total.ops += t.ops;
        total.refused += t.refused;
        total.expired += t.expired;
        total.errors.extend(t.errors);
    }
    let left = d.api.call("GET", "/v1/faults", None)?.1;
    let left = left["faults"].as_array().map_or(0, Vec::len);
    let (rss1, fds1) = footprint(d.pid)?;
    d.shutdown()?;
    if !total.errors.is_empty() {
        bail!(
            "{} client errors, first: {}",
            total.errors.len(),
            total.errors[0]
        );
    }
    if left != 0 {
        bail!("{left} faults left after every client stopped its own");
    }
    if rss_max > RSS_MAX_KB {
        bail!(
            "daemon RSS reached {} MB under {} clients",
            rss_max / 1024,
            args.clients
        );
    }
    if fds1 > fds0 + 2 {
        bail!("daemon fds grew from {fds0} to {fds1} (leak)");
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut now = host_state()?;
    // As `Arena::settled`: deleted cls_bpf filters free their programs a moment later.
    while now != baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        now = host_state()?;
    }
    if now != baseline {
        bail!(
            "the host is not as before after the clients:\n{}",
            diff(baseline, &now)
        );
    }
    println!(
        "torture: {} clients for {} s: {} operations, {} injects refused at the fault limit, {} faults ended by their TTL first, 0 errors, 0 faults left; daemon RSS {:.1} -> max {:.1} -> {:.1} MB, fds {fds0} -> max {fds_max} -> {fds1}",
        args.clients,
        args.seconds,
        total.ops,
        total.refused,
        total.expired,
        rss0 as f64 / 1024.0,
        rss_max as f64 / 1024.0,
        rss1 as f64 / 1024.0,
    );
    Ok(())
}

/// xorshift64*: the schedule only has to be varied and reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The faults a round injects: each a complete CLI argument list after `inject`.
/// The network faults of the rounds in namespace A, by kind.
fn fault_args(kind: u64) -> Vec<String> {
    let mut v = vec!["--ttl", "30s"];
    v.extend_from_slice(match kind {
        0 => &["--iface", IF_A, "--loss", "0.3"][..],
        1 => &[
            "--iface",
            IF_A,
            "--loss",
            "0.5",
            "--direction",
            "both",
            "--proto",
            "udp",
        ],
        2 => &["--iface", IF_A, "--rate", "20mbit"],
        3 => &["--iface", IF_A, "--dns", "servfail"],
        // Shaping both ways: the root htb, an IFB with its own, the clsact and the mirred
        // redirect.
        4 => &["--iface", IF_A, "--rate", "50mbit", "--direction", "both"],
        // A sweep of the namespace's connections (none match: the kill lands in sock_diag).
        5 => &["--reset", "--dport", "9", "--reset-every", "1s"],
        // connect() of the whole namespace: no interface.
        _ => &["--refuse", "--dport", "9"],
    });
    v.into_iter().map(str::to_owned).collect()
}
const KINDS: u64 = 7;

/// The faults on processes of the pressure rounds: limits on a cgroup the run made, and
/// stressors in cgroups of their own.
fn pressure_args(cgroup: &str) -> Vec<Vec<String>> {
    let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    vec![
        own(&["--ttl", "30s", "--cpu-limit", "0.5", "--cgroup", cgroup]),
        own(&["--ttl", "30s", "--memory-max", "512M", "--cgroup", cgroup]),
        own(&["--ttl", "30s", "--cpu-stress", "1@10"]),
        own(&["--ttl", "30s", "--memory-stress", "16M"]),
        own(&["--ttl", "30s", "--cpu-stress", "1@10", "--flap", "1s/1s"]),
    ]
}

/// The attach paths a round's daemon takes, in turn: `auto`, which is tcx links from 6.6 on
/// (they die with the agent), and netlink `cls_bpf` filters (what kernels before 6.6 get: they
/// stay, each slot disarmed by its own kernel deadline, until the restart or `cleanup` removes
/// them).
const ATTACH_MODES: [&str; 2] = ["auto", "netlink"];

/// What the host looks like from outside the agent, one line per item, sorted.
fn host_state() -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    let json = |c: &mut Command| -> anyhow::Result<serde_json::Value> {
        let out = capture(c)?;
        if out.trim().is_empty() {
            return Ok(serde_json::Value::Array(Vec::new()));
        }
        serde_json::from_str(&out).with_context(|| format!("parse {out:?}"))
    };
    let items = |v: serde_json::Value| v.as_array().cloned().unwrap_or_default();
    for l in items(json(&mut cmd("ip", ["-n", NS_A, "-j", "link", "show"]))?) {
        lines.push(format!("link {} {}", l["ifname"], l["operstate"]));
    }
    for q in items(json(&mut cmd("tc", ["-n", NS_A, "-j", "qdisc", "show"]))?) {
        lines.push(format!(
            "qdisc {} {} {} {}",
            q["dev"], q["kind"], q["handle"], q["parent"]
        ));
    }
    for dir in ["ingress", "egress"] {
        let filters = json(&mut cmd(
            "tc",
            ["-n", NS_A, "-j", "filter", "show", "dev", IF_A, dir],
        ))?;
        for f in items(filters) {
            lines.push(format!(
                "filter {dir} {} {}",
                f["kind"], f["options"]["bpf_name"]
            ));
        }
    }
    for p in items(json(&mut cmd("bpftool", ["-j", "prog", "show"]))?) {
        if p["name"].as_str().is_some_and(|n| n.starts_with("chaos_")) {
            lines.push(format!("prog {}", p["name"]));
        }
    }
    for l in items(json(&mut cmd("bpftool", ["-j", "link", "show"]))?) {
        lines.push(format!("link-bpf {} prog {}", l["type"], l["prog_id"]));
    }
    lines.sort();
    Ok(lines)
}

/// The lines only in `a` (`-`) and only in `b` (`+`).
fn diff(a: &[String], b: &[String]) -> String {
    let mut out = Vec::new();
    out.extend(
        a.iter()
            .filter(|l| !b.contains(l))
            .map(|l| format!("- {l}")),
    );
    out.extend(
        b.iter()
            .filter(|l| !a.contains(l))
            .map(|l| format!("+ {l}")),
    );
    out.join("\n")
}

/// The agent's CLI against the daemon's socket, spawned (the last operation of a round is
/// killed under it).
fn spawn_cli(agent: &Path, socket: &Path, args: &[&str]) -> anyhow::Result<Child> {
    Command::new(agent)
        .args(args)
        .env("CHAOS_AGENT_SOCKET", socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn the agent's CLI")
}

/// One completed operation; the id of a fault it injected.
fn operate(
    rng: &mut Rng,
    agent: &Path,
    socket: &Path,
    kinds: &[Vec<String>],
    ids: &mut Vec<String>,
) -> anyhow::Result<()> {
    let op = if ids.is_empty() { 0 } else { rng.below(3) };
    let out = match op {
        0 => {
            let kind = &kinds[rng.below(kinds.len() as u64) as usize];
            let mut args = vec!["inject"];
            args.extend(kind.iter().map(String::as_str));
            spawn_cli(agent, socket, &args)?.wait_with_output()?
        }
        1 => {
            let id = ids[rng.below(ids.len() as u64) as usize].clone();
            spawn_cli(agent, socket, &["extend", "--by", "5s", &id])?.wait_with_output()?
        }
        _ => {
            let id = ids.swap_remove(rng.below(ids.len() as u64) as usize);
            spawn_cli(agent, socket, &["stop", &id])?.wait_with_output()?
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    // Two shaping (or limit) faults on one interface and direction (cgroup file) are refused,
    // rightly: not a failure.
    if !out.status.success() && op == 0 && err.contains("conflicts with active fault") {
        return Ok(());
    }
    if !out.status.success() {
        bail!("operation {op} failed: {text}{err}");
    }
    if op == 0 {
        ids.push(injected_id(&text)?);
    }
    Ok(())
}

/// Where a series of kill rounds runs: how its daemon starts and is cleaned up after, which
/// faults it takes, and what of the host it must leave as it found it.
struct Arena<'a> {
    name: &'static str,
    agent: &'a Path,
    /// The demo namespace A (network faults), or the host's own namespaces (`None`: faults on
    /// processes, which need the cgroup hierarchies `ip netns exec` hides).
    net: Option<&'a DemoNet>,
    /// The attach modes its rounds take in turn (two rounds each), or none to give.
    modes: &'static [&'static str],
    kinds: Vec<Vec<String>>,
    state: &'a dyn Fn() -> anyhow::Result<Vec<String>>,
}

/// What a series of rounds did.
#[derive(Debug, Default)]
struct Tally {
    per_mode: [u32; 2],
    by_daemon: u32,
    by_cleanup: u32,
    cut_short: u32,
    live: usize,
    dirty: u32,
}

impl Arena<'_> {
    fn daemon(&self, dir: &Path, run_args: &[&str]) -> anyhow::Result<Daemon> {
        match self.net {
            Some(net) => Daemon::start_with(net, self.agent, dir, run_args),
            None => Daemon::start_on_host(self.agent, dir, run_args),
        }
    }

    fn command(&self) -> Command {
        match self.net {
            Some(net) => net.a_command(self.agent),
            None => Command::new(self.agent),
        }
    }

    /// The host state once it has settled towards `baseline`: a deleted `cls_bpf` filter drops
    /// its program only after an RCU grace period and a workqueue pass
    /// (`cls_bpf_delete_prog_work`), and a killed stressor leaves the process table once it has
    /// exited, so for a moment the tools may still list them. Read again for up to 2 s while
    /// it differs; what still differs then is a leftover.
    fn settled(&self, baseline: &[String]) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let now = (self.state)()?;
            if now == baseline || Instant::now() > deadline {
                return Ok(now);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Keeps only the kinds this kernel takes: each is injected once and stopped, first.
    fn probe(&mut self, dir: &Path, baseline: &[String]) -> anyhow::Result<()> {
        let d = self.daemon(dir, &[])?;
        let mut kept = Vec::new();
        for kind in std::mem::take(&mut self.kinds) {
            let mut a = vec!["inject"];
            a.extend(kind.iter().map(String::as_str));
            let out = spawn_cli(self.agent, d.socket(), &a)?.wait_with_output()?;
            if out.status.success() {
                // Stopped at once: two shaping kinds on one interface would conflict.
                let id = injected_id(&String::from_utf8_lossy(&out.stdout))?;
                let stop = spawn_cli(self.agent, d.socket(), &["stop", &id])?.wait_with_output()?;
                if !stop.status.success() {
                    bail!("stop {id}: {}", String::from_utf8_lossy(&stop.stderr));
                }
                kept.push(kind);
            } else {
                println!(
                    "torture ({}): leaves out `{}`: {}",
                    self.name,
                    kind[2..].join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        d.shutdown()?;
        if kept.is_empty() {
            bail!("{}: no fault could be injected", self.name);
        }
        self.kinds = kept;
        let after = self.settled(baseline)?;
        if after != baseline {
            bail!(
                "{}: a clean shutdown left the host changed:\n{}",
                self.name,
                diff(baseline, &after)
            );
        }
        Ok(())
    }

    /// `rounds` deaths: a daemon does 0-3 operations, one more inject is cut short by a
    /// SIGKILL 0-15 ms into it, the host is put right (a restarted daemon or `cleanup`, in
    /// turn) and compared with `baseline`.
    fn rounds(
        &self,
        rounds: u32,
        rng: &mut Rng,
        seed: u64,
        state: &Path,
        baseline: &[String],
    ) -> anyhow::Result<Tally> {
        let mut t = Tally::default();
        for round in 0..rounds {
            crate::check_interrupted()?;
            let where_ = || format!("{} round {round} (seed {seed})", self.name);
            let mut run_args = Vec::new();
            if !self.modes.is_empty() {
                // Two rounds per path in turn, so that each path is put right both ways.
                let mode = (round / 2) as usize % self.modes.len();
                t.per_mode[mode] += 1;
                run_args.extend(["--attach-mode", self.modes[mode]]);
            }
            let d = self.daemon(state, &run_args)?;
            let mut ids = Vec::new();
            for _ in 0..rng.below(4) {
                operate(rng, self.agent, d.socket(), &self.kinds, &mut ids).with_context(where_)?;
            }
            // The last operation, cut short by the kill at a random moment of it.
            let kind = &self.kinds[rng.below(self.kinds.len() as u64) as usize];
            let mut a = vec!["inject"];
            a.extend(kind.iter().map(String::as_str));
            let last = spawn_cli(self.agent, d.socket(), &a)?;
            // An inject through the API takes 2-20 ms: the kill lands before, inside or after.
            std::thread::sleep(Duration::from_micros(rng.below(15_000)));
            d.sigkill()?;
            t.live += ids.len();
            if last.wait_with_output()?.status.success() {
                t.live += 1;
            } else {
                t.cut_short += 1;
            }
            // What the dead agent left (tcx hooks and stressors go with it; qdiscs, cgroup links
            // and values, empty stressor cgroups stay): proof that the comparison below sees
            // leftovers when there are some.
            if (self.state)()? != baseline {
                t.dirty += 1;
            }
            if round % 2 == 0 {
                self.daemon(state, &run_args)?.shutdown()?;
                t.by_daemon += 1;
            } else {
                let out = self
                    .command()
                    .args(["cleanup", "--state-dir"])
                    .arg(state.join("state"))
                    .output()?;
                if !out.status.success() {
                    bail!(
                        "{}: cleanup failed: {}",
                        where_(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                t.by_cleanup += 1;
            }
            let now = self.settled(baseline)?;
            if now != baseline {
                bail!(
                    "{}: the host is not as before:\n{}",
                    where_(),
                    diff(baseline, &now)
                );
            }
        }
        Ok(t)
    }
}

/// The cgroup the pressure rounds limit, in each of the cpu and memory hierarchies (one
/// directory on cgroup v2); removed on drop.
struct PressureCgroup {
    name: String,
    dirs: Vec<PathBuf>,
}

impl PressureCgroup {
    fn create() -> anyhow::Result<Self> {
        let name = format!("chaos-torture-{}", std::process::id());
        let mut dirs = Vec::new();
        for root in controller_roots()? {
            let d = root.join(&name);
            std::fs::create_dir_all(&d).with_context(|| format!("mkdir {}", d.display()))?;
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        Ok(Self { name, dirs })
    }
}

impl Drop for PressureCgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The roots of the cpu and memory hierarchies: the cgroup v2 root where it has them, else
/// their v1 mounts (`/proc/self/mounts`).
fn controller_roots() -> anyhow::Result<Vec<PathBuf>> {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let mut out = Vec::new();
    for c in ["cpu", "memory"] {
        let root = if v2.split_whitespace().any(|x| x == c) {
            PathBuf::from("/sys/fs/cgroup")
        } else {
            mounts
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() >= 4 && f[2] == "cgroup" && f[3].split(',').any(|o| o == c))
                        .then(|| PathBuf::from(f[1]))
                })
                .with_context(|| format!("no {c} controller"))?
        };
        if !out.contains(&root) {
            out.push(root);
        }
    }
    Ok(out)
}

/// What the pressure rounds must leave as they found it, from outside the agent: the
/// limited cgroup's cpu and memory limit files, every `chaos-stress-*` cgroup below the
/// hierarchies' roots and below the limited cgroup, and every stressor process
/// (`/proc/*/cmdline` naming `stress-worker`).
fn pressure_state(cg: &PressureCgroup) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for d in &cg.dirs {
        for f in [
            "cpu.max",
            "cpu.cfs_quota_us",
            "memory.max",
            "memory.high",
            "memory.limit_in_bytes",
        ] {
            if let Ok(v) = std::fs::read_to_string(d.join(f)) {
                lines.push(format!("{} {f} {}", d.display(), v.trim()));
            }
        }
    }
    let mut places: Vec<PathBuf> = controller_roots()?;
    places.extend(cg.dirs.iter().cloned());
    for p in places {
        for e in std::fs::read_dir(&p)?.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("chaos-stress-") {
                lines.push(format!("stressor cgroup {}", p.join(n).display()));
            }
        }
    }
    for e in std::fs::read_dir("/proc")?.flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmd.split(|b| *b == 0).any(|a| a == b"stress-worker") {
            lines.push("stressor process".to_owned());
        }
    }
    lines.sort();
    Ok(lines)
}

pub fn run(args: &TortureArgs) -> anyhow::Result<()> {
    crate::require_root("cargo xtask torture")?;
    crate::catch_interrupts()?;
    let agent = crate::demo::build_agent()?;
    let seed = args.seed.unwrap_or_else(|| crate::demo::now_ns() | 1);
    println!(
        "torture: {} kills of network faults and {} of faults on processes, seed {seed} (replay with --seed {seed})",
        args.kills, args.pressure_kills
    );
    let net = DemoNet::create()?;
    let work = WorkDir::create()?;
    let work = &work.0;
    let mut rng = Rng(seed);

    let started = Instant::now();
    let state = || host_state();
    let mut arena = Arena {
        name: "network",
        agent: &agent,
        net: Some(&net),
        modes: &ATTACH_MODES,
        kinds: (0..KINDS).map(fault_args).collect(),
        state: &state,
    };
    let baseline = host_state()?;
    arena.probe(&work.join("probe"), &baseline)?;
    let t = arena.rounds(
        args.kills,
        &mut rng,
        seed,
        &work.join("state-dir"),
        &baseline,
    )?;
    println!(
        "torture: {} kills, 0 leftovers ({} with --attach-mode auto, tcx from 6.6; {} with netlink; {} faults live at the kills, {} injects cut short, {} deaths left something to remove; {} put right by a restarted daemon, {} by cleanup), {:.0?}",
        args.kills,
        t.per_mode[0],
        t.per_mode[1],
        t.live,
        t.cut_short,
        t.dirty,
        t.by_daemon,
        t.by_cleanup,
        started.elapsed()
    );

    if args.pressure_kills > 0 {
        let started = Instant::now();
        let cg = PressureCgroup::create()?;
        let state = || pressure_state(&cg);
        let mut arena = Arena {
            name: "pressure",
            agent: &agent,
            net: None,
            modes: &[],
            kinds: pressure_args(&format!("/{}", cg.name)),
            state: &state,
        };
        let baseline = pressure_state(&cg)?;
        arena.probe(&work.join("probe-pressure"), &baseline)?;
        let t = arena.rounds(
            args.pressure_kills,
            &mut rng,
            seed,
            &work.join("state-pressure"),
            &baseline,
        )?;
        println!(
            "torture: {} kills of limit and stress faults, 0 leftovers (limit files, stressor cgroups and processes as before; {} faults live at the kills, {} injects cut short, {} deaths left something to remove; {} put right by a restarted daemon, {} by cleanup), {:.0?}",
            args.pressure_kills,
            t.live,
            t.cut_short,
            t.dirty,
            t.by_daemon,
            t.by_cleanup,
            started.elapsed()
        );
    }
    if args.clients > 0 {
        clients(&net, &agent, &work.join("clients"), args, seed, &baseline)?;
    }
    drop(net);
    // libtest's shape, for `cargo xtask test`'s tally (a failed run exits non-zero instead).
    println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
    Ok(())
}

/// The run's directory (configs, state dirs, logs); removed on drop, failed runs included.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("chaos-torture-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
