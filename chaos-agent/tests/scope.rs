//! Faults scoped to a cgroup (`--cgroup`, `--pid`), end to end: two processes in one network
//! namespace talk to the same server, one inside a cgroup of the test's own and one outside;
//! only the first is faulted. Judged by `ping`'s own loss count and by the exit and message of
//! busybox `nc`. Runs as root on the host (cgroup2 at /sys/fs/cgroup/unified) and in the 6.1 VM.

use std::process::{Child, Stdio};
use std::time::Duration;

use chaos_testing::{AgentProcess, Cgroup, NetNs, TempDir, VethPair, in_netns, run};
use nix::sys::signal::Signal;

fn bin() -> std::path::PathBuf {
    chaos_testing::agent_bin(env!("CARGO_BIN_EXE_chaos-agent"))
}

fn inject(ns: &NetNs, state: &TempDir, args: &[&str]) -> AgentProcess {
    let mut full = vec!["--state-dir", state.str(), "inject"];
    full.extend_from_slice(args);
    let mut agent = AgentProcess::spawn(Some(ns), &bin(), &full);
    agent.expect_injected();
    agent
}

/// The packet loss `ping` reports, in whole percent.
fn ping_loss(out: &std::process::Output) -> u32 {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let (head, _) = l.split_once("% packet loss")?;
            let pct: f64 = head.rsplit(' ').next()?.parse().ok()?;
            Some(pct.round() as u32)
        })
        .unwrap_or_else(|| panic!("no loss line in {text}"))
}

const PING: [&str; 7] = ["-c", "20", "-i", "0.05", "-W", "1", "-q"];

fn ping_args(dst: &str) -> Vec<&str> {
    let mut v = PING.to_vec();
    v.push(dst);
    v
}

#[test]
fn loss_scoped_to_a_cgroup_drops_only_the_packets_of_its_processes() {
    let pair = VethPair::new(66);
    let cg = Cgroup::new("scope");
    let state = TempDir::new("scope");
    let dst = format!("{}/32", pair.b_ip);
    let ttl = chaos_testing::test_ttl(30);
    let agent = inject(
        &pair.a,
        &state,
        &[
            "--loss", "1", "--cgroup", &cg.path, "--dest", &dst, "--iface", &pair.a_if, "--ttl",
            &ttl,
        ],
    );
    let inside = cg
        .command_in(&pair.a, "ping", &ping_args(&pair.b_ip))
        .output()
        .expect("ping inside");
    let outside = pair
        .a
        .command("ping")
        .args(ping_args(&pair.b_ip))
        .output()
        .expect("ping outside");
    assert_eq!(ping_loss(&inside), 100, "the cgroup's ping");
    assert_eq!(
        ping_loss(&outside),
        0,
        "the ping outside the cgroup, same server"
    );
    agent.signal(Signal::SIGTERM);
    let (status, lines, err) = agent.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?} {err}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("for cgroup {}", cg.path))),
        "the summary names the scope: {lines:?}"
    );
    // After the fault, the cgroup's ping goes through.
    let after = cg
        .command_in(&pair.a, "ping", &ping_args(&pair.b_ip))
        .output()
        .expect("ping after");
    assert_eq!(ping_loss(&after), 0);
}

#[test]
fn pid_scope_resolves_to_its_cgroup_and_refuse_follows_it() {
    let pair = VethPair::new(67);
    let cg = Cgroup::new("scope");
    let _l = in_netns(&pair.b, || {
        std::net::TcpListener::bind(("0.0.0.0", 8080)).expect("bind")
    });
    // A process that lives in the cgroup: the fault names it by pid.
    let mut holder: Child = cg
        .command_in(&pair.a, "sleep", &["60"])
        .stdin(Stdio::null())
        .spawn()
        .expect("sleep");
    let pid = holder.id().to_string();
    // Its pid is the shell's, which became `ip netns exec` and then `sleep`: wait until it is
    // in the cgroup.
    let procs = cg.dir.join("cgroup.procs");
    for _ in 0..100 {
        if std::fs::read_to_string(&procs).is_ok_and(|p| p.lines().any(|l| l == pid)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let state = TempDir::new("scope");
    let dry = pair
        .a
        .command(bin().to_str().expect("path"))
        .args([
            "--state-dir",
            state.str(),
            "inject",
            "--refuse",
            "--pid",
            &pid,
            "--dport",
            "8080",
        ])
        .args(["--ttl", "30s", "--dry-run"])
        .output()
        .expect("dry run");
    let plan = String::from_utf8_lossy(&dry.stdout);
    assert!(
        plan.contains(&format!("in cgroup {} (id ", cg.path)),
        "the dry run shows the resolved cgroup: {plan}"
    );
    let ttl = chaos_testing::test_ttl(30);
    let agent = inject(
        &pair.a,
        &state,
        &["--refuse", "--pid", &pid, "--dport", "8080", "--ttl", &ttl],
    );
    let target = pair.b_ip.clone();
    // `-e true`: once connected, run `true` on the socket and exit (without it nc waits for the
    // server, which never writes).
    let nc = ["nc", "-w", "3", &target, "8080", "-e", "true"];
    let inside = cg
        .command_in(&pair.a, "busybox", &nc)
        .stdin(Stdio::null())
        .output()
        .expect("nc inside");
    let outside = pair
        .a
        .command("busybox")
        .args(nc)
        .stdin(Stdio::null())
        .output()
        .expect("nc outside");
    let err = String::from_utf8_lossy(&inside.stderr);
    assert!(
        !inside.status.success() && err.contains("refused"),
        "inside: {err}"
    );
    assert!(
        outside.status.success(),
        "outside: {}",
        String::from_utf8_lossy(&outside.stderr)
    );
    drop(agent);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        run(
            "bpftool",
            ["-j", "cgroup", "show", &chaos_testing::cgroup2_root()]
        )
        .stdout
        .windows(6)
        .all(|w| w != b"chaos_"),
        "connect programs left on the cgroup root"
    );
}

#[test]
fn scope_bad_input_is_refused_with_nothing_applied() {
    let ns = NetNs::new("scbad");
    let state = TempDir::new("scope");
    for (args, want) in [
        (
            &[
                "--loss",
                "1",
                "--cgroup",
                "/no-such-cgroup-here",
                "--iface",
                "lo",
            ][..],
            "no cgroup \"/no-such-cgroup-here\"",
        ),
        (
            &["--loss", "1", "--cgroup", "/a/../b", "--iface", "lo"][..],
            "bad cgroup path",
        ),
        (
            &["--loss", "1", "--pid", "999999999", "--iface", "lo"][..],
            "no such process",
        ),
        (
            &[
                "--loss",
                "1",
                "--cgroup",
                "/",
                "--direction",
                "ingress",
                "--iface",
                "lo",
            ][..],
            "egress only",
        ),
        (
            &[
                "--loss", "1", "--cgroup", "/", "--pid", "1", "--iface", "lo",
            ][..],
            "cannot be used with",
        ),
        (
            &["--reset", "--cgroup", "/"][..],
            "--reset does not take --cgroup",
        ),
    ] {
        let mut full = vec!["--state-dir", state.str(), "inject", "--ttl", "5s"];
        full.extend_from_slice(args);
        let out = ns
            .command(bin().to_str().expect("path"))
            .args(&full)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
