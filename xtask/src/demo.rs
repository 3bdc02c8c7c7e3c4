//! `cargo xtask demo`: the main job, shown without touching the host's own interfaces.
//!
//! Two network namespaces (`chaosdemo-a`, `chaosdemo-b`) joined by a veth pair; a UDP sender in A
//! sends sequence-numbered datagrams to a receiver in B for the whole demo; `chaos-agent inject
//! --loss 0.3` runs in the foreground in A. Loss is then computed from what was sent and what
//! arrived, split by send time into before / during / after. Measuring with our own datagrams
//! (instead of ping) gives exact per-packet send times. `bench` builds on [`DemoNet`].
//!
//! The namespaces are deleted on every exit path: [`DemoNet`]'s `Drop`, reached also on Ctrl-C
//! because the signal handler only sets a flag that the waits poll.

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};

use crate::{capture, cmd, exec};

pub const NS_A: &str = "chaosdemo-a";
pub const NS_B: &str = "chaosdemo-b";
/// A's veth: the interface the fault is applied to.
pub const IF_A: &str = "chaosdemo-va";
pub const IF_B: &str = "chaosdemo-vb";
pub const IP_A: &str = "10.199.0.1";
pub const IP_B: &str = "10.199.0.2";
/// Not one of the agent's protected ports (22, API, metrics).
const PORT: u16 = 47_001;
/// Sequence number of the end-of-stream datagram.
const FIN: u64 = u64::MAX;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Loss probability to inject.
    #[arg(long, default_value_t = 0.3)]
    loss: f64,
    /// Fault TTL in seconds.
    #[arg(long, default_value_t = 8)]
    ttl: u64,
    /// Seconds measured before and after the fault.
    #[arg(long, default_value_t = 4)]
    baseline: u64,
    /// Do not run `cargo xtask setup` first.
    #[arg(long)]
    no_setup: bool,
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    crate::require_root("demo")?;
    if !args.no_setup {
        crate::setup::run(&crate::setup::SetupArgs::default())?;
    }
    let agent = build_agent()?;
    crate::catch_interrupts()?;
    let net = DemoNet::create()?;
    println!(
        "\nnetwork: {NS_A} ({IF_A} {IP_A}) <-veth-> {NS_B} ({IF_B} {IP_B}); UDP {IP_A} -> {IP_B}:{PORT} every 2 ms"
    );

    let traffic = Traffic::start(&net, Duration::from_millis(2))?;
    let t0 = now_ns();
    sleep_checked(Duration::from_secs(args.baseline))?;

    let (p, ttl) = (args.loss.to_string(), format!("{}s", args.ttl));
    let inject = ["inject", "--loss", &p, "--ttl", &ttl, "--iface", IF_A];
    println!("\n$ ip netns exec {NS_A} chaos-agent {}", inject.join(" "));
    let t_spawn = now_ns();
    let mut agent_cmd = net.a_command(&agent);
    agent_cmd.args(inject);
    let status = wait_checked(agent_cmd.spawn().context("spawn chaos-agent")?)?;
    let t_exit = now_ns();
    println!("chaos-agent exited: {status}");

    sleep_checked(Duration::from_secs(args.baseline))?;
    let t_end = now_ns();
    let trace = traffic.finish()?;

    let s = 1_000_000_000;
    let fault_end = t_exit.min(t_spawn + args.ttl * s);
    let rows = [
        ("before", t0 + s / 2, t_spawn, "0%".to_owned()),
        // The first second covers loading and attaching; the last 300 ms the TTL edge.
        (
            "during",
            t_spawn + s,
            fault_end.saturating_sub(3 * s / 10),
            format!("~{:.0}%", args.loss * 100.0),
        ),
        ("after", t_exit + s / 2, t_end, "0%".to_owned()),
    ];
    println!(
        "\n{:<8} {:>14} {:>7} {:>6} {:>8}  {:>8}",
        "phase", "window (s)", "sent", "lost", "loss", "expected"
    );
    for (phase, from, to, expected) in rows {
        let window = format!("{:.1}-{:.1}", secs(from - t0), secs(to.saturating_sub(t0)));
        match trace.loss(from, to) {
            Some((sent, lost)) => println!(
                "{phase:<8} {window:>14} {sent:>7} {lost:>6} {:>7.1}%  {expected:>8}",
                100.0 * lost as f64 / sent as f64
            ),
            None => println!(
                "{phase:<8} {window:>14} {:>7} {:>6} {:>8}  {expected:>8}",
                "-", "-", "n/a"
            ),
        }
    }
    drop(net);
    println!("\nnamespaces {NS_A} and {NS_B} deleted");
    if !status.success() {
        bail!("chaos-agent inject failed ({status})");
    }
    Ok(())
}

/// Builds chaos-agent in release mode and returns the binary's path; `CHAOS_AGENT_BIN` (the
/// variable the tests and the VM guest use) names a prebuilt agent instead.
pub fn build_agent() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("CHAOS_AGENT_BIN") {
        println!("using CHAOS_AGENT_BIN={}", bin.to_string_lossy());
        return Ok(PathBuf::from(bin));
    }
    exec(crate::cargo().args(["build", "--release", "-p", "chaos-agent"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| crate::workspace_root().join("target"), PathBuf::from);
    let bin = target.join("release/chaos-agent");
    if !bin.is_file() {
        bail!("{} missing after the build", bin.display());
    }
    Ok(bin)
}

/// Nanoseconds since the Unix epoch: the clock the sender and this process share.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Sleeps, failing early on Ctrl-C.
pub fn sleep_checked(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        crate::check_interrupted()?;
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
    crate::check_interrupted()
}

/// Waits for a child, failing early on Ctrl-C (the child got the same SIGINT from the terminal;
/// [`DemoNet`]'s drop stops whatever is left in the namespace).
pub fn wait_checked(mut child: Child) -> anyhow::Result<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if let Err(e) = crate::check_interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The two namespaces and the veth pair; deleted on drop.
#[derive(Debug)]
pub struct DemoNet {
    a: &'static str,
    b: &'static str,
}

impl DemoNet {
    /// Creates the namespaces (removing leftovers of an interrupted earlier run first).
    pub fn create() -> anyhow::Result<Self> {
        remove_namespaces();
        // From here on, drop removes whatever part was created.
        let net = Self { a: NS_A, b: NS_B };
        for ns in [NS_A, NS_B] {
            exec(&mut cmd("ip", ["netns", "add", ns]))?;
            exec(&mut cmd("ip", ["-n", ns, "link", "set", "lo", "up"]))?;
        }
        exec(&mut cmd(
            "ip",
            [
                "link", "add", IF_A, "netns", NS_A, "type", "veth", "peer", "name", IF_B, "netns",
                NS_B,
            ],
        ))?;
        for (ns, ifname, ip) in [(NS_A, IF_A, IP_A), (NS_B, IF_B, IP_B)] {
            exec(&mut cmd(
                "ip",
                ["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", ifname],
            ))?;
            exec(&mut cmd("ip", ["-n", ns, "link", "set", ifname, "up"]))?;
        }
        Ok(net)
    }

    /// A command run inside namespace A.
    pub fn a_command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.a]).arg(program);
        c
    }

    /// A command run inside namespace B.
    pub fn b_command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.b]).arg(program);
        c
    }
}

impl Drop for DemoNet {
    fn drop(&mut self) {
        remove_namespaces();
    }
}

/// Stops what runs in the demo namespaces (SIGTERM so that a still running agent reverts, then
/// SIGKILL) and deletes them. Deleting A also deletes the veth pair and everything attached to it.
fn remove_namespaces() {
    for ns in [NS_A, NS_B] {
        if !Path::new("/run/netns").join(ns).exists() {
            continue;
        }
        for sig in ["-TERM", "-KILL"] {
            let pids = capture(&mut cmd("ip", ["netns", "pids", ns])).unwrap_or_default();
            if pids.trim().is_empty() {
                break;
            }
            for pid in pids.split_whitespace() {
                let _ = cmd("kill", [sig, pid]).status();
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let _ = cmd("ip", ["netns", "del", ns]).status();
    }
}

/// The sender (in A) and receiver (in B) of the measurement traffic.
#[derive(Debug)]
pub struct Traffic {
    send: Option<Child>,
    recv: Option<Child>,
    send_stdin: Option<ChildStdin>,
    recv_stdout: Option<BufReader<ChildStdout>>,
}

impl Traffic {
    /// Starts the receiver, waits until it is bound, then starts the sender.
    pub fn start(net: &DemoNet, interval: Duration) -> anyhow::Result<Self> {
        let me = std::env::current_exe().context("current exe")?;
        let mut t = Self {
            send: None,
            recv: None,
            send_stdin: None,
            recv_stdout: None,
        };
        let mut recv = net
            .b_command(&me)
            .args(["udp-recv", "--bind", &format!("{IP_B}:{PORT}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawn udp-recv")?;
        let mut stdout = BufReader::new(recv.stdout.take().context("udp-recv stdout")?);
        t.recv = Some(recv);
        let mut line = String::new();
        stdout.read_line(&mut line).context("read udp-recv")?;
        if line.trim() != "ready" {
            bail!("udp-recv did not start: {line:?}");
        }
        t.recv_stdout = Some(stdout);
        let mut send = net
            .a_command(&me)
            .args(["udp-send", "--to", &format!("{IP_B}:{PORT}")])
            .args(["--interval-us", &interval.as_micros().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawn udp-send")?;
        t.send_stdin = send.stdin.take();
        t.send = Some(send);
        Ok(t)
    }

    /// Stops the sender (by closing its stdin) and collects both sides' records.
    pub fn finish(mut self) -> anyhow::Result<Trace> {
        drop(self.send_stdin.take());
        let sender = self.send.take().context("sender gone")?;
        let out = sender.wait_with_output().context("wait udp-send")?;
        if !out.status.success() {
            bail!("udp-send failed ({})", out.status);
        }
        let mut sent = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((seq, ns)) = line.split_once(' ') {
                sent.push((seq.parse()?, ns.parse()?));
            }
        }
        let mut text = String::new();
        self.recv_stdout
            .take()
            .context("receiver gone")?
            .read_to_string(&mut text)?;
        let status = self.recv.take().context("receiver gone")?.wait()?;
        if !status.success() {
            bail!("udp-recv failed ({status})");
        }
        let received = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        Ok(Trace { sent, received })
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        for child in [self.send.as_mut(), self.recv.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What was sent (sequence number, send time in ns since the epoch) and what arrived.
#[derive(Debug)]
pub struct Trace {
    pub sent: Vec<(u64, u64)>,
    pub received: HashSet<u64>,
}

impl Trace {
    /// (sent, lost) among the datagrams sent in `[from, to)`; `None` if none was.
    pub fn loss(&self, from: u64, to: u64) -> Option<(u64, u64)> {
        let (mut sent, mut lost) = (0, 0);
        for (seq, at) in &self.sent {
            if (from..to).contains(at) {
                sent += 1;
                lost += u64::from(!self.received.contains(seq));
            }
        }
        (sent > 0).then_some((sent, lost))
    }
}

#[derive(Debug, clap::Args)]
pub struct UdpSendArgs {
    #[arg(long)]
    to: SocketAddr,
    #[arg(long, default_value_t = 1000)]
    interval_us: u64,
}

/// Sends `[seq: u64 BE][send time ns: u64 BE]` every interval until stdin closes, then a few FIN
/// datagrams, then prints `seq send_ns` for every datagram sent.
pub fn udp_send(args: &UdpSendArgs) -> anyhow::Result<()> {
    let sock = UdpSocket::bind("0.0.0.0:0").context("bind")?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        flag.store(true, Ordering::SeqCst);
    });
    let interval = Duration::from_micros(args.interval_us);
    let start = Instant::now();
    let mut log = Vec::new();
    let mut seq: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        // Absolute deadlines: a late wake-up does not shift the schedule.
        let due = start + interval * u32::try_from(seq).unwrap_or(u32::MAX);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let at = now_ns();
        let mut buf = [0u8; 16];
        buf[..8].copy_from_slice(&seq.to_be_bytes());
        buf[8..].copy_from_slice(&at.to_be_bytes());
        // A send error is a lost datagram like any other; the receiver's record decides.
        let _ = sock.send_to(&buf, args.to);
        log.push((seq, at));
        seq += 1;
    }
    for _ in 0..5 {
        let mut buf = [0u8; 16];
        buf[..8].copy_from_slice(&FIN.to_be_bytes());
        let _ = sock.send_to(&buf, args.to);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (seq, at) in log {
        writeln!(out, "{seq} {at}")?;
    }
    out.flush()?;
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct UdpRecvArgs {
    #[arg(long)]
    bind: SocketAddr,
    /// Give up after this many seconds without a FIN.
    #[arg(long, default_value_t = 300)]
    max_secs: u64,
}

/// Prints `ready`, receives until a FIN (or the deadline), then prints each distinct sequence
/// number received.
pub fn udp_recv(args: &UdpRecvArgs) -> anyhow::Result<()> {
    let sock = UdpSocket::bind(args.bind).with_context(|| format!("bind {}", args.bind))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    println!("ready");
    std::io::stdout().flush()?;
    let deadline = Instant::now() + Duration::from_secs(args.max_secs);
    let mut seen = HashSet::new();
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) if n >= 8 => {
                let seq = u64::from_be_bytes(buf[..8].try_into()?);
                if seq == FIN {
                    break;
                }
                seen.insert(seq);
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("recv"),
        }
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for seq in seen {
        writeln!(out, "{seq}")?;
    }
    out.flush()?;
    Ok(())
}
