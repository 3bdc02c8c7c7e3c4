//! Test harness shared by the integration tests, the VM guest and `cargo xtask bench`:
//! network namespaces and veth pairs that remove themselves on drop (also when a test panics).
//!
//! Everything here shells out to iproute2 on purpose: the tests must judge the agent with
//! independent tools, not with the netlink code under test.
#![allow(
    clippy::missing_panics_doc,
    reason = "test helpers panic with context by design"
)]

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

mod cgroup;
mod disk;
pub mod dns;
mod require;
pub use cgroup::ControllerCgroup;
pub use disk::{TestDisk, VM_SCRATCH_DISK};
pub mod shim;
pub use require::{
    Feature, PROFILES, Profile, Rules, has, require, require_absent, require_all, skip, skip_part,
};

/// Runs a command and returns its output, panicking with the command line and stderr on failure.
pub fn run<I, S>(program: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = Command::new(program)
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("spawn {program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `sh -c script` and panics on failure. Its output is often not needed, hence no
/// `#[must_use]`.
#[allow(
    clippy::must_use_candidate,
    reason = "run for effect as often as for output"
)]
pub fn sh(script: &str) -> String {
    String::from_utf8_lossy(&run("sh", ["-c", script]).stdout).into_owned()
}

/// Runs `sh -c script` and returns whether it succeeded, ignoring its output.
#[must_use]
pub fn sh_ok(script: &str) -> bool {
    Command::new("sh")
        .args(["-c", script])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A name that is unique within this process and short enough for an interface (15 bytes).
#[must_use]
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id() % 10_000;
    let name = format!("{prefix}{pid}x{n}");
    assert!(name.len() <= 15, "name {name} too long for an interface");
    name
}

/// A network namespace that is deleted (with everything in it) on drop.
#[derive(Debug)]
pub struct NetNs {
    /// The namespace's name (`ip netns exec NAME ...`).
    pub name: String,
}

impl NetNs {
    /// Creates a namespace with loopback up.
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        let ns = Self::bare(prefix);
        ns.exec("ip", ["link", "set", "lo", "up"]);
        ns
    }

    /// Creates a namespace with nothing up.
    fn bare(prefix: &str) -> Self {
        let name = unique_name(prefix);
        run("ip", ["netns", "add", &name]);
        Self { name }
    }

    /// Runs a command inside the namespace (panics on failure). `ip` and `tc` get `-n NAME`
    /// instead of a detour through `ip netns exec`: one exec instead of two, which under the VM's
    /// TCG is most of what a netns test spends before its traffic starts.
    pub fn exec<I, S>(&self, program: &str, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut full: Vec<std::ffi::OsString> = if matches!(program, "ip" | "tc") {
            vec!["-n".into(), self.name.clone().into()]
        } else {
            vec![
                "netns".into(),
                "exec".into(),
                self.name.clone().into(),
                program.into(),
            ]
        };
        full.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        run(if program == "tc" { "tc" } else { "ip" }, full)
    }

    /// Runs `ip` commands, one a line, inside the namespace with one exec (`ip -n NAME -batch`).
    pub fn ip_batch(&self, commands: &str) {
        use std::io::Write as _;
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn ip -batch");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(commands.as_bytes())
            .expect("write ip -batch");
        let out = child.wait_with_output().expect("ip -batch");
        assert!(
            out.status.success(),
            "ip -n {} -batch failed ({}) on:\n{commands}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `sh -c script` inside the namespace (panics on failure) and returns stdout.
    #[allow(
        clippy::must_use_candidate,
        reason = "run for effect as often as for output"
    )]
    pub fn sh(&self, script: &str) -> String {
        String::from_utf8_lossy(&self.exec("sh", ["-c", script]).stdout).into_owned()
    }

    /// A `Command` that runs `program` inside the namespace, for spawning servers.
    #[must_use]
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Path of the namespace file (for `setns`).
    #[must_use]
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Kill whatever a test left running inside, then delete the namespace.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Two namespaces joined by a veth pair, with IPv4 and IPv6 addresses:
/// `a` is 10.X.0.1/24 + `fd00:X::1/64`, `b` is 10.X.0.2/24 + `fd00:X::2/64`.
/// The agent under test usually runs inside `a` and faults `a`'s veth.
#[derive(Debug)]
pub struct VethPair {
    /// The "local" side (where the fault is applied).
    pub a: NetNs,
    /// The "remote" side (the peer traffic goes to).
    pub b: NetNs,
    /// Interface name in `a`.
    pub a_if: String,
    /// Interface name in `b`.
    pub b_if: String,
    /// IPv4 address of `a`.
    pub a_ip: String,
    /// IPv4 address of `b`.
    pub b_ip: String,
    /// IPv6 address of `a`.
    pub a_ip6: String,
    /// IPv6 address of `b`.
    pub b_ip6: String,
}

impl VethPair {
    /// Creates the pair; `subnet` (1..=250) picks 10.<subnet>.0.0/24 and fd00:<subnet>`::/64`.
    #[must_use]
    #[allow(
        clippy::similar_names,
        reason = "a_ip/b_ip and a_if/b_if name the two ends on purpose"
    )]
    pub fn new(subnet: u8) -> Self {
        let a = NetNs::bare("cha");
        let b = NetNs::bare("chb");
        let a_if = unique_name("va");
        let b_if = unique_name("vb");
        run(
            "ip",
            [
                "link", "add", &a_if, "netns", &a.name, "type", "veth", "peer", "name", &b_if,
                "netns", &b.name,
            ],
        );
        let (a_ip, b_ip) = (format!("10.{subnet}.0.1"), format!("10.{subnet}.0.2"));
        let (a_ip6, b_ip6) = (format!("fd00:{subnet}::1"), format!("fd00:{subnet}::2"));
        for (ns, ifname, ip, ip6) in [(&a, &a_if, &a_ip, &a_ip6), (&b, &b_if, &b_ip, &b_ip6)] {
            ns.ip_batch(&format!(
                "link set lo up\n\
                 addr add {ip}/24 dev {ifname}\n\
                 addr add {ip6}/64 dev {ifname} nodad\n\
                 link set {ifname} up\n"
            ));
        }
        Self {
            a,
            b,
            a_if,
            b_if,
            a_ip,
            b_ip,
            a_ip6,
            b_ip6,
        }
    }

    /// Adds a second address to `b` (e.g. to have a destination outside a fault's filter).
    pub fn add_b_addr(&self, cidr: &str) {
        if cidr.contains(':') {
            self.b.exec(
                "ip",
                ["-6", "addr", "add", cidr, "dev", &self.b_if, "nodad"],
            );
        } else {
            self.b.exec("ip", ["addr", "add", cidr, "dev", &self.b_if]);
        }
    }
}

/// The environment variable that names the agent's OCI image archive for the image tests
/// (`cargo xtask test` builds it with `cargo xtask image` and sets it).
pub const IMAGE_ENV: &str = "CHAOS_AGENT_IMAGE";

/// Where `cargo xtask setup` installs the prometheus-operator's models and their validators
/// (npm `@kubernetes-models/prometheus-operator`), which judge the manifests' monitoring objects.
pub const MONITORING_MODELS: &str =
    "/usr/local/lib/chaos-testing/node/node_modules/@kubernetes-models/prometheus-operator";

/// Path of the agent binary under test: `CHAOS_AGENT_BIN` (set in the VM guest), else the one
/// cargo built next to the test (`CARGO_BIN_EXE_chaos-agent` is only known to integration tests,
/// so they pass it in).
#[must_use]
pub fn agent_bin(cargo_default: &str) -> PathBuf {
    std::env::var_os("CHAOS_AGENT_BIN").map_or_else(|| PathBuf::from(cargo_default), PathBuf::from)
}

/// Whether a tool is on PATH.
#[must_use]
pub fn have_tool(name: &str) -> bool {
    sh_ok(&format!("command -v {name} >/dev/null"))
}

/// Runs `f` on a new thread that has entered the namespace (threads, not processes, carry
/// network namespaces, so the test process itself never moves).
pub fn in_netns<T: Send + 'static>(ns: &NetNs, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = ns.path();
    std::thread::spawn(move || {
        let file =
            std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread panicked")
}

/// What a UDP run measured at the receiver.
#[derive(Debug, Clone, Default)]
pub struct UdpResult {
    /// Datagrams sent.
    pub sent: u32,
    /// Distinct datagrams received.
    pub received: u32,
    /// Sequence numbers that never arrived, in order.
    pub lost: Vec<u32>,
    /// Extra copies received (duplicates).
    pub duplicates: u32,
    /// One-way latency of each first arrival, in microseconds: from the sender's clock just
    /// before `send` to the kernel's receive timestamp (one kernel, one `CLOCK_REALTIME`).
    pub latency_us: Vec<u64>,
}

impl UdpResult {
    /// Fraction lost.
    #[must_use]
    pub fn loss(&self) -> f64 {
        f64::from(self.sent - self.received) / f64::from(self.sent.max(1))
    }
}

/// Options of [`udp_run`].
#[derive(Debug, Clone)]
pub struct UdpRun {
    /// Destination address (the receiver binds it).
    pub dst: String,
    /// Destination port.
    pub dport: u16,
    /// Source port (0: any).
    pub sport: u16,
    /// Datagrams to send.
    pub count: u32,
    /// Payload size (>= 12: sequence number and send time); above the MTU the datagram is
    /// fragmented.
    pub size: usize,
    /// Byte to fill the payload after the sequence number.
    pub fill: u8,
    /// Pin the sender to this CPU (the egress program runs on the sender's CPU).
    pub cpu: Option<usize>,
}

impl UdpRun {
    /// `count` small datagrams to `dst:dport`.
    #[must_use]
    pub fn new(dst: &str, dport: u16, count: u32) -> Self {
        Self {
            dst: dst.to_owned(),
            dport,
            sport: 0,
            count,
            size: 64,
            fill: 0,
            cpu: None,
        }
    }
}

/// `CLOCK_REALTIME` in nanoseconds: the clock of the kernel's receive timestamps.
fn realtime_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME).expect("CLOCK_REALTIME");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Receives one datagram into `buf` with the kernel's receive time (`SO_TIMESTAMPNS`,
/// `CLOCK_REALTIME` ns): when the packet reached the receiving stack, not when this thread got
/// to read it. Under the VM's TCG, and on any loaded machine, the thread is often descheduled
/// for milliseconds while packets queue; a read-time stamp would then push the early arrivals
/// of a burst late and shrink a measured jitter. `None` on timeout.
fn recv_stamped(
    sock: &std::net::UdpSocket,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> Option<(usize, u64)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::AsRawFd as _;
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(cmsg), MsgFlags::empty()).ok()?;
    let stamp = msg.cmsgs().ok()?.find_map(|c| match c {
        ControlMessageOwned::ScmTimestampns(ts) => {
            Some(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64)
        }
        _ => None,
    });
    Some((msg.bytes, stamp.unwrap_or_else(realtime_ns)))
}

/// Sends sequence-numbered datagrams from `from` to a receiver in `to` and reports what
/// arrived. The receiver drains until the sender is done and the socket has been idle for a
/// while: on a veth pair delivery completes within the sender's softirq, so idle means done.
#[must_use]
pub fn udp_run(from: &NetNs, to: &NetNs, opts: &UdpRun) -> UdpResult {
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    let dst: std::net::IpAddr = opts.dst.parse().expect("dst address");
    let addr = SocketAddr::new(dst, opts.dport);
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let to_path = to.path();
    let count = opts.count;
    let receiver = std::thread::spawn(move || {
        let file = std::fs::File::open(&to_path).expect("open netns");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let sock = UdpSocket::bind(addr).expect("bind receiver");
        let _ = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBuf, &(8 << 20));
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
            .expect("SO_TIMESTAMPNS");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        ready_tx.send(()).expect("ready");
        let mut seen = vec![false; count as usize];
        let mut dups = 0u32;
        let mut lat = Vec::new();
        let mut buf = vec![0u8; 65536];
        let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
        let mut sender_done_at: Option<Instant> = None;
        let mut last_rx = Instant::now();
        loop {
            if let Some((n, rx_ns)) = recv_stamped(&sock, &mut buf, &mut cmsg)
                && n >= 12
            {
                let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                let mut ts = [0u8; 8];
                ts.copy_from_slice(&buf[4..12]);
                if seq < seen.len() {
                    if seen[seq] {
                        dups += 1;
                    } else {
                        seen[seq] = true;
                        lat.push(rx_ns.saturating_sub(u64::from_be_bytes(ts)) / 1000);
                    }
                }
                last_rx = Instant::now();
            }
            if sender_done_at.is_none() && done_rx.try_recv().is_ok() {
                sender_done_at = Some(Instant::now());
            }
            if let Some(t) = sender_done_at
                && t.elapsed() > Duration::from_millis(300)
                && last_rx.elapsed() > Duration::from_millis(300)
            {
                break;
            }
        }
        (seen, dups, lat)
    });
    ready_rx.recv().expect("receiver ready");
    let o = opts.clone();
    in_netns(from, move || {
        if let Some(cpu) = o.cpu {
            let mut set = nix::sched::CpuSet::new();
            set.set(cpu).expect("cpu");
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("affinity");
        }
        let local: SocketAddr = if dst.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let mut local = local;
        local.set_port(o.sport);
        let sock = UdpSocket::bind(local).expect("bind sender");
        sock.connect(addr).expect("connect");
        let mut payload = vec![o.fill; o.size.max(12)];
        let mut unpaced = 0usize;
        for seq in 0..o.count {
            payload[..4].copy_from_slice(&seq.to_be_bytes());
            payload[4..12].copy_from_slice(&realtime_ns().to_be_bytes());
            // Errors are not expected (drops happen in the kernel after send returns); a
            // send error would be a finding, so surface it.
            sock.send(&payload).expect("send");
            unpaced += payload.len();
            // Pace so the receiver's socket buffer never overflows (that would be loss we did
            // not cause): every 32 datagrams, and every 32 KiB. The receive buffer is capped by
            // net.core.rmem_max (~208 KiB by default) whatever SO_RCVBUF asks for, and a
            // fragmented 4000-byte datagram costs three skbs of it: bursts of 32 of those
            // overflowed it under the VM's emulated CPU (198 of 200 arrived).
            if seq % 32 == 31 || unpaced >= 32 * 1024 {
                std::thread::sleep(Duration::from_micros(300));
                unpaced = 0;
            }
        }
    });
    done_tx.send(()).expect("done");
    let (seen, duplicates, latency_us) = receiver.join().expect("receiver");
    let lost: Vec<u32> = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| !**s)
        .map(|(i, _)| i as u32)
        .collect();
    UdpResult {
        sent: opts.count,
        received: opts.count - lost.len() as u32,
        lost,
        duplicates,
        latency_us,
    }
}

/// A `chaos-agent` process started by a test.
#[derive(Debug)]
pub struct AgentProcess {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// Closed (disconnected) once the stderr reader saw end of file.
    stderr_eof: std::sync::mpsc::Receiver<()>,
    /// Everything read from stdout so far.
    pub stdout: Vec<String>,
}

impl AgentProcess {
    /// Spawns `bin args...` inside `ns` (or the current namespace).
    #[must_use]
    pub fn spawn(ns: Option<&NetNs>, bin: &std::path::Path, args: &[&str]) -> Self {
        let mut cmd = match ns {
            Some(ns) => ns.command(bin.to_str().expect("utf-8 path")),
            None => Command::new(bin),
        };
        cmd.args(args);
        Self::from_command(cmd)
    }

    /// Spawns a command made by the caller (its environment, its namespace), with stdout and
    /// stderr taken as by [`AgentProcess::spawn`].
    #[must_use]
    pub fn from_command(mut cmd: Command) -> Self {
        use std::io::{BufRead as _, Read as _};
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn agent");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr_buf = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sb = stderr_buf.clone();
        let mut stderr = child.stderr.take().expect("stderr");
        let (eof_tx, stderr_eof) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let _eof = eof_tx;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sb.lock()
                    .expect("lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            child,
            lines,
            stderr: stderr_buf,
            stderr_eof,
            stdout: Vec::new(),
        }
    }

    /// Waits for a stdout line starting with `prefix` and returns it (panics after `timeout`
    /// or if the process exits first, with its stderr).
    pub fn expect_line(&mut self, prefix: &str, timeout: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(
                    std::sync::mpsc::RecvTimeoutError::Timeout
                    | std::sync::mpsc::RecvTimeoutError::Disconnected,
                ) => panic!(
                    "no line starting with {prefix:?} within {timeout:?}; stdout {:?}; stderr:\n{}",
                    self.stdout,
                    self.stderr()
                ),
            }
        }
    }

    /// Waits for a stdout line starting with `prefix`: `Some(line)`, or `None` if the process
    /// closed its stdout (exited) first. Panics after `timeout`.
    pub fn line_or_exit(&mut self, prefix: &str, timeout: std::time::Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if line.starts_with(prefix) {
                        return Some(line);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!(
                    "neither a line starting with {prefix:?} nor an exit within {timeout:?}; stdout {:?}; stderr:\n{}",
                    self.stdout,
                    self.stderr()
                ),
            }
        }
    }

    /// Waits for a stderr line starting with `prefix` and returns it (panics after `timeout` or
    /// if the process closed its stderr first). With `--output json` the agent's lines for people
    /// (`injected ...`, the countdown, `summary: ...`) go there, stdout holds the JSON.
    #[must_use]
    pub fn expect_stderr_line(&self, prefix: &str, timeout: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            // Read the end-of-file mark before the text: text read after it is complete.
            let closed = matches!(
                self.stderr_eof.try_recv(),
                Err(std::sync::mpsc::TryRecvError::Disconnected)
            );
            if let Some(line) = self.stderr().lines().find(|l| l.starts_with(prefix)) {
                return line.to_owned();
            }
            assert!(
                !closed && std::time::Instant::now() < deadline,
                "no stderr line starting with {prefix:?} within {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Waits for the `injected f-XXXXXXXX: ...` line on stderr (`inject --output json`) and
    /// returns the fault id, as [`AgentProcess::expect_injected`] does.
    #[must_use]
    pub fn expect_injected_on_stderr(&self) -> String {
        let line = self.expect_stderr_line("injected ", std::time::Duration::from_secs(30));
        self.injected(&line)
    }

    /// Waits for the `injected f-XXXXXXXX: ...` line and returns the fault id.
    /// Also records the programs the agent holds, for [`agent_programs_still_loaded`].
    pub fn expect_injected(&mut self) -> String {
        let line = self.expect_line("injected ", std::time::Duration::from_secs(30));
        self.injected(&line)
    }

    /// The id of an `injected` line; records the programs the agent holds.
    fn injected(&self, line: &str) -> String {
        AGENT_PROGS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(prog_ids_of(self.child.id()));
        line.split_whitespace()
            .nth(1)
            .expect("id")
            .trim_end_matches(':')
            .to_owned()
    }

    /// Stderr so far.
    #[must_use]
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The agent's pid (`ip netns exec` execs the binary, so the child is the agent itself).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        // `ip netns exec` execs the binary, so the child pid is the agent itself.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("kill");
    }

    /// Waits for exit (bounded) and returns the status and the remaining stdout.
    #[must_use]
    pub fn wait(
        mut self,
        timeout: std::time::Duration,
    ) -> (std::process::ExitStatus, Vec<String>, String) {
        let deadline = std::time::Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "agent did not exit within {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        // The process is gone but its last bytes may still sit in the pipes: read both to end
        // of file (bounded, in case a child of the agent still holds them), or a failing
        // command's error line is lost under load.
        let drain = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while let Ok(l) = self
            .lines
            .recv_timeout(drain.saturating_duration_since(std::time::Instant::now()))
        {
            self.stdout.push(l);
        }
        let _ = self
            .stderr_eof
            .recv_timeout(drain.saturating_duration_since(std::time::Instant::now()));
        let err = self.stderr();
        (status, std::mem::take(&mut self.stdout), err)
    }
}

impl Drop for AgentProcess {
    /// Stops the agent the way an operator would (SIGTERM, so it reverts), and only kills it
    /// if it does not exit in time: a SIGKILL would leave netlink filters behind on kernels
    /// without tcx, and the next test would trip over them.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `/tmp/<prefix>-<unique>`.
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        let p = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir_all(&p).expect("mkdir");
        Self(p)
    }
    /// The path as a string.
    #[must_use]
    pub fn str(&self) -> &str {
        self.0.to_str().expect("utf-8")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `chaos-agent cleanup --state-dir STATE` (what an operator runs after a dead agent) and
/// panics with its stderr unless it succeeds.
pub fn run_cleanup(bin: &std::path::Path, state: &TempDir) {
    let out = Command::new(bin)
        .args(["cleanup", "--state-dir", state.str()])
        .output()
        .expect("spawn chaos-agent cleanup");
    assert!(
        out.status.success(),
        "cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `chaos-agent ARGS...`, which must fail, and returns its stderr.
#[must_use]
pub fn refused(bin: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .output()
        .expect("spawn chaos-agent");
    assert!(!out.status.success(), "{args:?} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Ids of the BPF programs a process holds open, from `/proc/PID/fdinfo`.
#[must_use]
pub fn prog_ids_of(pid: u32) -> std::collections::BTreeSet<u32> {
    let mut ids = std::collections::BTreeSet::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for e in dir.flatten() {
        if let Ok(s) = std::fs::read_to_string(e.path()) {
            for l in s.lines() {
                if let Some(v) = l.strip_prefix("prog_id:") {
                    ids.extend(v.trim().parse::<u32>());
                }
            }
        }
    }
    ids
}

/// Programs held by the agents this test binary started, recorded when each reported its fault
/// in ([`AgentProcess::expect_injected`]). Program ids are not reused, so this is exact even
/// while other test binaries load programs of the same names (the VM guest runs two at once).
static AGENT_PROGS: std::sync::Mutex<std::collections::BTreeSet<u32>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Those of [`AGENT_PROGS`] the kernel still has (`bpftool -j prog show`): after an agent is
/// gone, a program only stays loaded while something still attaches or pins it.
#[must_use]
pub fn agent_programs_still_loaded() -> Vec<u32> {
    let ours = AGENT_PROGS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let out = run("bpftool", ["-j", "prog", "show"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["id"].as_u64())
        .map(|id| id as u32)
        .filter(|id| ours.contains(id))
        .collect()
}

/// `tc -j filter show dev IF ingress|egress` inside `ns`, parsed.
#[must_use]
pub fn tc_filters(ns: &NetNs, ifname: &str, hook: &str) -> serde_json::Value {
    let out = Command::new("tc")
        .args(["-n", &ns.name, "-j", "filter", "show", "dev", ifname, hook])
        .output()
        .expect("tc");
    // Without clsact, tc prints nothing (or an error): that is "no filters".
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Array(vec![]))
}

/// `tc -j qdisc show dev IF` inside `ns`, for exact before/after comparisons. The one field
/// masked is htb's `direct_packets_stat`: a packet counter iproute2 prints among the options,
/// which no restore can (or should) reproduce.
#[must_use]
pub fn tc_qdiscs(ns: &NetNs, ifname: &str) -> String {
    let out = ns.exec("tc", ["-j", "qdisc", "show", "dev", ifname]);
    let out = String::from_utf8_lossy(&out.stdout);
    let mut v: serde_json::Value = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
    if let Some(arr) = v.as_array_mut() {
        for q in arr {
            if let Some(opts) = q.get_mut("options").and_then(|o| o.as_object_mut()) {
                opts.remove("direct_packets_stat");
            }
        }
    }
    v.to_string()
}

/// Round-trip times (ms) of `count` pings from `ns` to `dst`, one every `interval` seconds.
/// Panics unless every reply came back within the run's deadline.
#[must_use]
pub fn ping_rtts(ns: &NetNs, dst: &str, count: u32, interval: f64) -> Vec<f64> {
    // A deadline for the whole run (-w), not only per reply (-W): ping then exits non-zero
    // unless every reply came back, and a lost reply fails the caller instead of shrinking
    // the sample it takes a median of.
    let deadline = (f64::from(count) * interval).ceil() as u32 + 5;
    let out = ns.sh(&format!(
        "ping -n -c {count} -i {interval} -W 2 -w {deadline} {dst} || true"
    ));
    let rtts: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(
        rtts.len(),
        count as usize,
        "ping {dst}: {} of {count} replies\n{out}",
        rtts.len()
    );
    rtts
}

/// Median of a sample.
#[must_use]
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        f64::NAN
    } else {
        s[s.len() / 2]
    }
}

/// Whether the kernel has a qdisc kind, asked of `tc` itself (never of the agent's own probe,
/// whose answer the tests are there to check): `tc qdisc add dev lo root handle 1: KIND` in a
/// throwaway namespace. iproute2 says "Specified qdisc kind is unknown" (netlink ENOENT) when
/// the kernel has no such kind; any other outcome (added, or options rejected) means it has.
#[must_use]
pub fn have_qdisc(kind: &'static str) -> bool {
    let ns = NetNs::new("chq");
    let out = ns
        .command("tc")
        .args(["qdisc", "add", "dev", "lo", "root", "handle", "1:", kind])
        .output()
        .expect("run tc");
    let err = String::from_utf8_lossy(&out.stderr);
    !(err.contains("Specified qdisc kind is unknown") || err.contains("No such file or directory"))
}

/// Programs attached to an interface (tcx links and tc filters), per `bpftool -j net show dev`.
#[must_use]
pub fn attached_programs(ns: &NetNs, ifname: &str) -> Vec<String> {
    fn walk(v: &serde_json::Value, names: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(n) = m.get("name").and_then(|n| n.as_str())
                    && m.contains_key("prog_id")
                {
                    names.push(n.to_owned());
                }
                m.values().for_each(|x| walk(x, names));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, names)),
            _ => {}
        }
    }

    let out = ns.sh(&format!("bpftool -j net show dev {ifname} || true"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
    let mut names = Vec::new();
    walk(&v, &mut names);
    // tcx links: bpftool 7.1 (Debian 12) lists them in `link show` only, as type 11 with a
    // program id and no interface, so `net show` alone would make this check vacuous for tcx.
    // They are taken system-wide: the host runs these tests one at a time, and the VM's 6.1
    // has no tcx.
    let links: serde_json::Value =
        serde_json::from_str(&sh("bpftool -j link show 2>/dev/null || echo []"))
            .unwrap_or(serde_json::Value::Null);
    for l in links.as_array().into_iter().flatten() {
        let tcx = l["type"] == 11 || l["type"] == "tcx";
        if let (true, Some(id)) = (tcx, l["prog_id"].as_u64()) {
            let p: serde_json::Value = serde_json::from_str(&sh(&format!(
                "bpftool -j prog show id {id} 2>/dev/null || echo null"
            )))
            .unwrap_or(serde_json::Value::Null);
            if let Some(n) = p["name"].as_str().filter(|n| n.starts_with("chaos_")) {
                names.push(n.to_owned());
            }
        }
    }
    names
}

/// The mount point of the cgroup v1 hierarchy that carries `controller`, from
/// `/proc/self/mounts` (a `cgroup` line whose options list it).
#[must_use]
pub fn cgroup_v1_mount(controller: &str) -> Option<PathBuf> {
    std::fs::read_to_string("/proc/self/mounts")
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[2] == "cgroup" && f[3].split(',').any(|o| o == controller))
                .then(|| PathBuf::from(f[1]))
        })
}

/// Where a test finds a controller's files: the cgroup v2 root if its `cgroup.controllers`
/// lists the controller (`/sys/fs/cgroup`), else its v1 mount. `(2 or 1, root)`.
#[must_use]
pub fn controller_root(controller: &str) -> Option<(u8, PathBuf)> {
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers");
    if std::fs::read_to_string(v2).is_ok_and(|c| c.split_whitespace().any(|x| x == controller)) {
        return Some((2, PathBuf::from("/sys/fs/cgroup")));
    }
    cgroup_v1_mount(controller).map(|p| (1, p))
}

/// The fields of `/proc/PID/stat` after its `(comm)`: state is `[0]`, ppid `[1]`, utime
/// `[11]`, stime `[12]` (clock ticks).
#[must_use]
pub fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// CPUs a process used over `window`, from its utime + stime in `/proc/PID/stat`.
#[must_use]
pub fn cpu_use(pid: u32, window: std::time::Duration) -> f64 {
    let ticks = || {
        let f = proc_stat(pid).unwrap_or_else(|| panic!("no /proc/{pid}/stat"));
        f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (t0, c0) = (std::time::Instant::now(), ticks());
    std::thread::sleep(window);
    let c1 = ticks();
    (c1 - c0) as f64 / hz / t0.elapsed().as_secs_f64()
}

/// Whether the suite runs inside the `cargo xtask vm-test` guest (set by its /init).
#[must_use]
pub fn in_vm() -> bool {
    std::env::var_os("CHAOS_VM").is_some()
}

/// A TTL for a test that must see the fault act before it expires: the guest runs under TCG,
/// about ten times slower than the host, so TTLs there are four times longer.
#[must_use]
pub fn test_ttl(secs: u64) -> String {
    format!("{}s", if in_vm() { secs * 4 } else { secs })
}

/// Where the cgroup v2 hierarchy's root is mounted, read from `/proc/self/mountinfo` (not from
/// the agent's code): `/sys/fs/cgroup/unified` on the hybrid CI host, `/sys/fs/cgroup` in the VM.
#[must_use]
pub fn cgroup2_root() -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .find_map(|l| {
            let (head, tail) = l.split_once(" - ")?;
            let f: Vec<&str> = head.split(' ').collect();
            (tail.starts_with("cgroup2 ") && f.get(3) == Some(&"/")).then(|| f[4].to_owned())
        })
        .expect("a cgroup2 mount (both the CI host and the VM guest have one)")
}

/// A cgroup v2 of the test's own (a child of the root), removed on drop once it is empty.
#[derive(Debug)]
pub struct Cgroup {
    /// Its path in the hierarchy (`/chaos-test-...`), as `--cgroup` takes it.
    pub path: String,
    /// Its directory.
    pub dir: PathBuf,
}

impl Cgroup {
    /// Creates it.
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        let path = format!("/{}", unique_name(prefix));
        let dir = PathBuf::from(cgroup2_root()).join(path.trim_start_matches('/'));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self { path, dir }
    }

    /// A cgroup named `name` below this one (drop it before its parent).
    #[must_use]
    pub fn child(&self, name: &str) -> Self {
        let path = format!("{}/{name}", self.path);
        let dir = self.dir.join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self { path, dir }
    }

    /// A command that runs `program args` in this cgroup and in `ns`: the shell moves itself
    /// into the cgroup first (`ip netns exec` mounts a new /sys, where the hierarchy is not
    /// visible), then execs into the namespace; membership survives the exec.
    #[must_use]
    pub fn command_in(&self, ns: &NetNs, program: &str, args: &[&str]) -> Command {
        let procs = self.dir.join("cgroup.procs");
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"echo $$ > "$0" && shift && exec ip netns exec "$@""#)
            .arg(procs)
            .arg("--")
            .arg(&ns.name)
            .arg(program)
            .args(args);
        c
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Its processes have exited (or are killed by their owners' drops); retry briefly
        // while the kernel lets go of them.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// A TCP listener bound in `ns` (a socket stays in the namespace it was created in, whichever
/// thread uses it later; its backlog completes handshakes without an `accept`).
#[must_use]
pub fn tcp_listen(ns: &NetNs, addr: &str) -> std::net::TcpListener {
    let addr: std::net::SocketAddr = addr.parse().expect("listen address");
    in_netns(ns, move || {
        std::net::TcpListener::bind(addr).expect("bind listener")
    })
}

/// An HTTP service on `addr` in `ns` answering `200 ok` to every request, for the test's life
/// (the experiment tests' probe target).
pub fn serve_http(ns: &NetNs, addr: &str) {
    use std::io::{Read as _, Write as _};
    let listener = tcp_listen(ns, addr);
    std::thread::spawn(move || {
        for mut s in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                let _ = s.read(&mut buf);
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            });
        }
    });
}

/// A client process holding a TCP connection (`client`, e.g. `busybox nc ADDR PORT`, whose
/// connection lives while its stdin is open) and the server's end of it, accepted from
/// `listener` with a 10 s read timeout. The client is killed on drop.
#[derive(Debug)]
pub struct HeldConnection {
    /// The client process.
    pub client: std::process::Child,
    /// The server's end.
    pub server: std::net::TcpStream,
}

impl HeldConnection {
    /// Starts `client` and accepts its connection (the next one `listener` gets).
    #[must_use]
    pub fn open(mut client: Command, listener: &std::net::TcpListener) -> Self {
        let client = client
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn the client");
        let (server, _) = listener.accept().expect("accept the client");
        server
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("read timeout");
        Self { client, server }
    }

    /// Asserts that the connection was reset: the server's next read gets `ECONNRESET`.
    pub fn assert_reset(&mut self, what: &str) {
        use std::io::Read as _;
        let mut buf = [0_u8; 8];
        let got = self.server.read(&mut buf);
        assert!(
            matches!(&got, Err(e) if e.raw_os_error() == Some(104)),
            "{what}: the server's end should get ECONNRESET, got {got:?}"
        );
    }

    /// Asserts that the connection still carries data: a line the client writes reaches the
    /// server.
    pub fn assert_alive(&mut self, what: &str) {
        use std::io::{Read as _, Write as _};
        self.client
            .stdin
            .as_mut()
            .expect("the client's stdin")
            .write_all(b"ok\n")
            .unwrap_or_else(|e| panic!("{what}: the client cannot write: {e}"));
        let mut line = [0_u8; 3];
        self.server
            .read_exact(&mut line)
            .unwrap_or_else(|e| panic!("{what}: the server gets nothing: {e}"));
        assert_eq!(&line, b"ok\n", "{what}");
    }
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        let _ = self.client.kill();
        let _ = self.client.wait();
    }
}

/// A connection from `ns` to `addr` and the server's end of it (accepted from `listener`),
/// both with a 10 s read timeout, so that a test that goes wrong fails instead of hanging.
#[must_use]
pub fn tcp_connect(
    ns: &NetNs,
    addr: &str,
    listener: &std::net::TcpListener,
) -> (std::net::TcpStream, std::net::TcpStream) {
    let addr: std::net::SocketAddr = addr.parse().expect("connect address");
    let client = in_netns(ns, move || {
        std::net::TcpStream::connect(addr).expect("connect")
    });
    let (server, _) = listener.accept().expect("accept");
    for s in [&client, &server] {
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("read timeout");
    }
    (client, server)
}
