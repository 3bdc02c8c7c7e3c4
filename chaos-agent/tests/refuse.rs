//! Refuse faults, end to end: the real binary, the real kernel, real sockets. A listener in one
//! network namespace, clients in another, where the agent refuses their `connect()`s; judged by
//! the errno the clients get, by the listener's accept queue, and by `bpftool cgroup show` on the
//! cgroup v2 root. Runs as root on the host (tcx kernel) and in the Debian 6.1 VM.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use chaos_testing::{
    AgentProcess, NetNs, TempDir, VethPair, agent_programs_still_loaded, in_netns, run,
};
use nix::sys::signal::Signal;

fn bin() -> std::path::PathBuf {
    chaos_testing::agent_bin(env!("CARGO_BIN_EXE_chaos-agent"))
}

fn inject(ns: &NetNs, state: &TempDir, args: &[&str]) -> (AgentProcess, String) {
    let mut full = vec!["--state-dir", state.str(), "inject", "--refuse"];
    full.extend_from_slice(args);
    let mut agent = AgentProcess::spawn(Some(ns), &bin(), &full);
    let id = agent.expect_injected();
    (agent, id)
}

/// Names of the programs attached to the cgroup v2 root (`bpftool -j cgroup show`).
fn root_programs() -> Vec<String> {
    let out = run(
        "bpftool",
        ["-j", "cgroup", "show", &chaos_testing::cgroup2_root()],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect()
}

fn chaos_on_root() -> Vec<String> {
    root_programs()
        .into_iter()
        .filter(|n| n.starts_with("chaos_"))
        .collect()
}

/// What a TCP `connect()` from `ns` gives: `Ok` or the errno, and how long it took.
fn tcp_connect(ns: &NetNs, addr: &str) -> (Result<(), i32>, Duration) {
    let addr: SocketAddr = addr.parse().expect("addr");
    in_netns(ns, move || {
        let t = Instant::now();
        let r = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map(drop)
            .map_err(|e| {
                e.raw_os_error()
                    .unwrap_or_else(|| panic!("{e} without errno"))
            });
        (r, t.elapsed())
    })
}

/// A UDP `connect()` from `ns` (no packet is sent: only the connect hook can fail it).
fn udp_connect(ns: &NetNs, addr: &str) -> Result<(), i32> {
    let addr: SocketAddr = addr.parse().expect("addr");
    in_netns(ns, move || {
        let any: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().expect("any")
        } else {
            "[::]:0".parse().expect("any")
        };
        let s = UdpSocket::bind(any).expect("bind");
        s.connect(addr)
            .map_err(|e| e.raw_os_error().expect("errno"))
    })
}

/// How many connections wait in a listener's accept queue (drained).
fn accepted(l: &TcpListener) -> usize {
    l.set_nonblocking(true).expect("nonblocking");
    let mut n = 0;
    loop {
        match l.accept() {
            Ok(_) => n += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return n,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// The `refused N` of the agent's last summary line.
fn refused_in(lines: &[String]) -> u64 {
    let line = lines
        .iter()
        .rev()
        .find(|l| l.contains("reverted"))
        .unwrap_or_else(|| panic!("no summary in {lines:?}"));
    let n = line
        .split("refused ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok());
    n.unwrap_or_else(|| panic!("no refused count in {line:?}"))
}

const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;

#[test]
fn matching_connects_fail_with_econnrefused_and_nothing_else_does() {
    let pair = VethPair::new(61);
    let (b4, b6) = (pair.b_ip.clone(), pair.b_ip6.clone());
    let hit = chaos_testing::tcp_listen(&pair.b, "[::]:8080");
    let other = chaos_testing::tcp_listen(&pair.b, "[::]:8081");
    assert!(
        chaos_on_root().is_empty(),
        "a chaos program on the cgroup root before the test"
    );
    let state = TempDir::new("refuse");
    let ttl = chaos_testing::test_ttl(30);
    let (dst4, dst6) = (format!("{b4}/32"), format!("{b6}/128"));
    let (agent, _id) = inject(
        &pair.a,
        &state,
        &[
            "--dest", &dst4, "--dest", &dst6, "--dport", "8080", "--ttl", &ttl,
        ],
    );
    assert_eq!(
        chaos_on_root().len(),
        2,
        "connect4 and connect6 on the root: {:?}",
        root_programs()
    );

    let (r, took) = tcp_connect(&pair.a, &format!("{b4}:8080"));
    assert_eq!(r, Err(ECONNREFUSED), "TCP to the faulted port");
    assert!(
        took < Duration::from_secs(1),
        "refused at once, took {took:?}"
    );
    let v6 = tcp_connect(&pair.a, &format!("[{b6}]:8080")).0;
    assert_eq!(v6, Err(ECONNREFUSED), "TCP over IPv6");
    let udp = udp_connect(&pair.a, &format!("{b4}:8080"));
    assert_eq!(udp, Err(ECONNREFUSED), "connected UDP");
    // Another port, and the same destination from a namespace without the fault: untouched.
    assert_eq!(tcp_connect(&pair.a, &format!("{b4}:8081")).0, Ok(()));
    assert_eq!(tcp_connect(&pair.b, &format!("{b4}:8080")).0, Ok(()));
    // The refused connects never reached the server: only b's own is queued.
    assert_eq!(accepted(&hit), 1, "connections that reached port 8080");
    assert_eq!(accepted(&other), 1, "connections that reached port 8081");

    agent.signal(Signal::SIGTERM);
    let (status, lines, err) = agent.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?} {err}");
    assert_eq!(
        refused_in(&lines),
        3,
        "the agent's count of refused connects: {lines:?}"
    );
    assert!(
        chaos_on_root().is_empty(),
        "left on the cgroup root: {:?}",
        root_programs()
    );
    assert_eq!(
        tcp_connect(&pair.a, &format!("{b4}:8080")).0,
        Ok(()),
        "after stop"
    );
    assert_eq!(accepted(&hit), 1);
}

#[test]
fn errno_is_chosen_and_ttl_and_sigkill_leave_nothing_attached() {
    let pair = VethPair::new(62);
    let b4 = pair.b_ip.clone();
    let _l = chaos_testing::tcp_listen(&pair.b, "0.0.0.0:9090");
    let state = TempDir::new("refuse");
    // TTL: the agent exits by itself, the connect hook is gone and connects work again.
    let (agent, _) = inject(
        &pair.a,
        &state,
        &[
            "--dport",
            "9090",
            "--proto",
            "tcp",
            "--errno",
            "EHOSTUNREACH",
            "--ttl",
            &chaos_testing::test_ttl(3),
        ],
    );
    assert_eq!(
        tcp_connect(&pair.a, &format!("{b4}:9090")).0,
        Err(EHOSTUNREACH)
    );
    // --proto tcp: a UDP connect to the port is not refused.
    assert_eq!(udp_connect(&pair.a, &format!("{b4}:9090")), Ok(()));
    let (status, lines, err) = agent.wait(Duration::from_mins(1));
    assert!(status.success(), "{status:?} {err}");
    assert!(
        lines.iter().any(|l| l.contains("reverted (ttl)")),
        "{lines:?}"
    );
    assert!(
        chaos_on_root().is_empty(),
        "after ttl: {:?}",
        root_programs()
    );
    assert_eq!(
        tcp_connect(&pair.a, &format!("{b4}:9090")).0,
        Ok(()),
        "after ttl"
    );

    // SIGKILL: the cgroup links die with the agent's fds, at once.
    let (agent, _) = inject(&pair.a, &state, &["--dport", "9090", "--ttl", "5m"]);
    assert_eq!(
        tcp_connect(&pair.a, &format!("{b4}:9090")).0,
        Err(ECONNREFUSED)
    );
    agent.signal(Signal::SIGKILL);
    let (status, _, _) = agent.wait(Duration::from_secs(10));
    assert!(!status.success());
    assert!(
        chaos_on_root().is_empty(),
        "after SIGKILL: {:?}",
        root_programs()
    );
    assert_eq!(
        tcp_connect(&pair.a, &format!("{b4}:9090")).0,
        Ok(()),
        "after SIGKILL"
    );
    assert!(
        agent_programs_still_loaded().is_empty(),
        "programs of dead agents still loaded"
    );
    // And the dead agent's journal replays cleanly.
    let out = pair.a.exec(
        bin().to_str().expect("path"),
        ["--state-dir", state.str(), "cleanup"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_input_is_refused_with_nothing_attached() {
    let ns = NetNs::new("refbad");
    let state = TempDir::new("refuse");
    for (args, want) in [
        (
            &["--refuse", "--src", "10.0.0.1", "--ttl", "5s"][..],
            "--src and --sport do not apply",
        ),
        (
            &["--refuse", "--direction", "ingress", "--ttl", "5s"][..],
            "--direction must be egress",
        ),
        (
            &["--refuse", "--proto", "icmp", "--ttl", "5s"][..],
            "not on --proto icmp",
        ),
        (
            &["--refuse", "--loss", "0.1", "--ttl", "5s"][..],
            "cannot also carry loss",
        ),
        (
            &["--refuse", "--iface", "lo", "--ttl", "5s"][..],
            "--iface does not apply",
        ),
        (
            &["--refuse", "--errno", "EPERM", "--ttl", "5s"][..],
            "invalid value 'EPERM'",
        ),
        (
            &["--errno", "ETIMEDOUT", "--loss", "0.1", "--ttl", "5s"][..],
            "--refuse",
        ),
    ] {
        let mut full = vec!["--state-dir", state.str(), "inject"];
        full.extend_from_slice(args);
        let out = ns
            .command(bin().to_str().expect("path"))
            .args(&full)
            .output()
            .expect("run the agent");
        let err = String::from_utf8_lossy(&out.stderr);
        // A flag without the one it needs is a malformed command line (usage, 64); a value
        // refused is exit 2 (docs/cli.md).
        let want_code = if want == "--refuse" { 64 } else { 2 };
        assert_eq!(out.status.code(), Some(want_code), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(chaos_on_root().is_empty(), "{args:?} attached something");
    }
}
