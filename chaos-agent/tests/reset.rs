//! Reset faults, end to end: the real binary aborts real TCP connections between two network
//! namespaces. Judged by what each end's next call gets (the faulted side `ECONNABORTED`, its
//! peer `ECONNRESET` from the RST), by the connections that must survive still carrying data, and
//! by `ss -tn` in the namespace. Runs as root on the host and in the Debian 6.1 VM.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use chaos_testing::{AgentProcess, NetNs, TempDir, VethPair};
use nix::sys::signal::Signal;

const ECONNABORTED: i32 = 103;
const ECONNRESET: i32 = 104;

fn bin() -> std::path::PathBuf {
    chaos_testing::agent_bin(env!("CARGO_BIN_EXE_chaos-agent"))
}

/// One round trip: the connection is alive.
fn echo(client: &mut TcpStream, server: &mut TcpStream) {
    client.write_all(b"ping").expect("client write");
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).expect("server read");
    server.write_all(b"pong").expect("server write");
    client.read_exact(&mut buf).expect("client read");
}

/// The errno of the next read, which must fail.
fn read_errno(s: &mut TcpStream) -> i32 {
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(n) => panic!("read returned {n} bytes instead of failing"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("{e} without errno")),
    }
}

/// Established connections `ss -tnH` lists in `ns` to `port` (the remote end).
fn ss_to(ns: &NetNs, port: u16) -> usize {
    ns.sh("ss -tnH state established")
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(3)
                .is_some_and(|r| r.ends_with(&format!(":{port}")))
        })
        .count()
}

fn inject(ns: &NetNs, state: &TempDir, args: &[&str]) -> AgentProcess {
    let mut full = vec!["--state-dir", state.str(), "inject", "--reset"];
    full.extend_from_slice(args);
    let mut agent = AgentProcess::spawn(Some(ns), &bin(), &full);
    agent.expect_injected();
    agent
}

/// The `connections reset N` of the agent's last summary line.
fn reset_in(lines: &[String]) -> u64 {
    let line = lines
        .iter()
        .rev()
        .find(|l| l.contains("reverted"))
        .unwrap_or_else(|| panic!("no summary in {lines:?}"));
    line.split("connections reset ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no reset count in {line:?}"))
}

#[test]
fn reset_aborts_matching_connections_at_inject_and_spares_the_others() {
    let pair = VethPair::new(63);
    let b4 = pair.b_ip.clone();
    let b6 = pair.b_ip6.clone();
    let hit = chaos_testing::tcp_listen(&pair.b, "[::]:5001");
    let spare = chaos_testing::tcp_listen(&pair.b, "[::]:5002");
    let (mut c1, mut s1) = chaos_testing::tcp_connect(&pair.a, &format!("{b4}:5001"), &hit);
    let (mut c6, mut s6) = chaos_testing::tcp_connect(&pair.a, &format!("[{b6}]:5001"), &hit);
    let (mut c2, mut s2) = chaos_testing::tcp_connect(&pair.a, &format!("{b4}:5002"), &spare);
    echo(&mut c1, &mut s1);
    echo(&mut c2, &mut s2);
    assert_eq!(ss_to(&pair.a, 5001), 2, "two connections to 5001 before");

    let state = TempDir::new("reset");
    let agent = inject(&pair.a, &state, &["--dport", "5001", "--ttl", "30s"]);
    // Both ends see it: the local application's call fails, the peer got the RST.
    assert_eq!(
        read_errno(&mut c1),
        ECONNABORTED,
        "client of the IPv4 connection"
    );
    assert_eq!(
        read_errno(&mut s1),
        ECONNRESET,
        "server of the IPv4 connection"
    );
    assert_eq!(
        read_errno(&mut c6),
        ECONNABORTED,
        "client of the IPv6 connection"
    );
    assert_eq!(
        read_errno(&mut s6),
        ECONNRESET,
        "server of the IPv6 connection"
    );
    // Another port survives and carries data.
    echo(&mut c2, &mut s2);
    assert_eq!(ss_to(&pair.a, 5001), 0, "connections to 5001 left");
    // Without --reset-every a new connection is not touched.
    let (mut c3, mut s3) = chaos_testing::tcp_connect(&pair.a, &format!("{b4}:5001"), &hit);
    echo(&mut c3, &mut s3);

    agent.signal(Signal::SIGTERM);
    let (status, lines, err) = agent.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?} {err}");
    assert_eq!(reset_in(&lines), 2, "the agent's count: {lines:?}");
    echo(&mut c3, &mut s3);
}

#[test]
fn reset_every_keeps_killing_reconnecting_clients_until_the_ttl() {
    let pair = VethPair::new(64);
    let b4 = pair.b_ip.clone();
    let l = chaos_testing::tcp_listen(&pair.b, "0.0.0.0:5003");
    let state = TempDir::new("reset");
    let ttl = chaos_testing::test_ttl(6);
    let agent = inject(
        &pair.a,
        &state,
        &[
            "--dest",
            &format!("{b4}/32"),
            "--reset-every",
            "500ms",
            "--ttl",
            &ttl,
        ],
    );
    // A client that reconnects whenever its connection dies, as a pool would.
    let mut killed = 0u64;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let (mut c, mut s) = chaos_testing::tcp_connect(&pair.a, &format!("{b4}:5003"), &l);
        echo(&mut c, &mut s);
        // Within two periods a sweep must abort it.
        assert_eq!(read_errno(&mut c), ECONNABORTED, "reconnect {killed}");
        killed += 1;
    }
    assert!(killed >= 3, "only {killed} reconnects were reset in 3 s");
    let (status, lines, err) = agent.wait(Duration::from_mins(1));
    assert!(status.success(), "{status:?} {err}");
    assert!(
        lines.iter().any(|l| l.contains("reverted (ttl)")),
        "{lines:?}"
    );
    assert!(reset_in(&lines) >= killed, "{lines:?} < {killed}");
    // After the TTL a connection lives.
    let (mut c, mut s) = chaos_testing::tcp_connect(&pair.a, &format!("{b4}:5003"), &l);
    echo(&mut c, &mut s);
    c.set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    let mut buf = [0u8; 1];
    let e = c.read(&mut buf).expect_err("no data is sent");
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "the connection died after the TTL: {e}"
    );
}

#[test]
fn protected_ports_and_bad_input_are_never_reset() {
    let pair = VethPair::new(65);
    let b4 = pair.b_ip.clone();
    // SSH's port: protected unless the fault says --include-protected.
    let ssh = chaos_testing::tcp_listen(&pair.b, "0.0.0.0:22");
    let (mut c, mut s) = chaos_testing::tcp_connect(&pair.a, &format!("{b4}:22"), &ssh);
    let state = TempDir::new("reset");
    let agent = inject(&pair.a, &state, &["--ttl", "30s"]);
    echo(&mut c, &mut s);
    agent.signal(Signal::SIGTERM);
    let (_, lines, _) = agent.wait(Duration::from_secs(30));
    assert_eq!(reset_in(&lines), 0, "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("(protected 1)")),
        "{lines:?}"
    );
    echo(&mut c, &mut s);

    for (args, want) in [
        (
            &["--reset", "--proto", "udp", "--ttl", "5s"][..],
            "--proto udp and icmp do not apply",
        ),
        (
            &["--reset", "--direction", "ingress", "--ttl", "5s"][..],
            "--direction does not apply",
        ),
        (
            &["--reset", "--loss", "0.1", "--ttl", "5s"][..],
            "cannot also carry loss",
        ),
        (
            &["--reset", "--reset-every", "10ms", "--ttl", "5s"][..],
            "at least 100ms",
        ),
        (
            &["--reset", "--reset-every", "1m", "--ttl", "5s"][..],
            "at most the TTL",
        ),
        (
            &["--reset-every", "1s", "--loss", "0.1", "--ttl", "5s"][..],
            "--reset",
        ),
    ] {
        let mut full = vec!["--state-dir", state.str(), "inject"];
        full.extend_from_slice(args);
        let out = pair
            .a
            .command(bin().to_str().expect("path"))
            .args(&full)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        // A flag without the one it needs is a malformed command line (usage, 64); a value
        // refused is exit 2 (docs/cli.md).
        let want_code = if want == "--reset" { 64 } else { 2 };
        assert_eq!(out.status.code(), Some(want_code), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        echo(&mut c, &mut s);
    }
}
