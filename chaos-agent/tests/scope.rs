//! Faults scoped to a cgroup (`--cgroup`, `--pid`, `--unit`), end to end: two processes in one
//! network namespace talk to the same server, one inside a cgroup of the test's own and one
//! outside; only the first is faulted. Judged by `ping`'s own loss count, by the exit and
//! message of busybox `nc`, and by what the server's end of each TCP connection gets. A fault
//! whose cgroup is removed ends (`target-gone`). Runs as root on the host (cgroup2 at
//! /sys/fs/cgroup/unified) and in the 6.1 VM.

use std::process::{Child, Stdio};
use std::time::Duration;

use chaos_testing::{
    AgentProcess, Cgroup, HeldConnection, NetNs, TempDir, VethPair, in_netns, run,
};
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

/// The loss (whole percent) of a ping from `pair.a` to `pair.b` by a process in `cg`, and of
/// one beside it in the same namespace, outside the cgroup.
fn ping_in_and_beside(cg: &Cgroup, pair: &VethPair) -> (u32, u32) {
    let inside = cg
        .command_in(&pair.a, "ping", &ping_args(&pair.b_ip))
        .output()
        .expect("ping inside");
    let beside = pair
        .a
        .command("ping")
        .args(ping_args(&pair.b_ip))
        .output()
        .expect("ping beside");
    (ping_loss(&inside), ping_loss(&beside))
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
    let (inside, outside) = ping_in_and_beside(&cg, &pair);
    assert_eq!(inside, 100, "the cgroup's ping");
    assert_eq!(outside, 0, "the ping outside the cgroup, same server");
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
            &["--loss", "1", "--unit", "no/such", "--iface", "lo"][..],
            "cannot scope to unit",
        ),
        (
            &[
                "--loss",
                "1",
                "--unit",
                "chaos-no-such-unit-here",
                "--iface",
                "lo",
            ][..],
            "no cgroup named chaos-no-such-unit-here.service",
        ),
        (
            &["--loss", "1", "--unit", "x.timer", "--iface", "lo"][..],
            "only .service, .scope, .slice and .socket units",
        ),
        (
            &["--refuse", "--container", "not-hex"][..],
            "a container id is up to 64 hex digits",
        ),
        (
            &["--refuse", "--container", "0fedcba9876543210fedcba"][..],
            "no container with that id",
        ),
        (
            &[
                "--loss",
                "1",
                "--unit",
                "a",
                "--container",
                "ab",
                "--iface",
                "lo",
            ][..],
            "cannot be used with",
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

/// Waits until `pid` is listed in the cgroup (its shell moves itself in before it execs).
fn wait_in(cg: &Cgroup, pid: u32) {
    let procs = cg.dir.join("cgroup.procs");
    let pid = pid.to_string();
    for _ in 0..250 {
        if std::fs::read_to_string(&procs).is_ok_and(|p| p.lines().any(|l| l == pid)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("pid {pid} never showed up in {}", cg.path);
}

#[test]
fn unit_scope_finds_the_unit_s_cgroup_below_its_slice() {
    // systemd names a unit's cgroup after the unit, below its slice: the same layout, made by
    // hand (no systemd runs here; the unit under a real systemd is the package's test).
    let pair = VethPair::new(68);
    let slice = Cgroup::new("slice");
    let name = chaos_testing::unique_name("cunit");
    let unit = slice.child(&format!("{name}.service"));
    let state = TempDir::new("scope");
    let dst = format!("{}/32", pair.b_ip);
    let dry = pair
        .a
        .command(bin().to_str().expect("path"))
        .args(["--state-dir", state.str(), "inject", "--loss", "1"])
        .args(["--unit", &name, "--dest", &dst, "--iface", &pair.a_if])
        .args(["--ttl", "30s", "--dry-run"])
        .output()
        .expect("dry run");
    let plan = String::from_utf8_lossy(&dry.stdout);
    assert!(
        plan.contains(&format!(
            "scope: unit {name}.service is cgroup {} (id ",
            unit.path
        )),
        "the dry run shows the resolved cgroup: {plan} {}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let ttl = chaos_testing::test_ttl(30);
    let agent = inject(
        &pair.a,
        &state,
        &[
            "--loss", "1", "--unit", &name, "--dest", &dst, "--iface", &pair.a_if, "--ttl", &ttl,
        ],
    );
    let (inside, outside) = ping_in_and_beside(&unit, &pair);
    assert_eq!(inside, 100, "the unit's ping");
    assert_eq!(outside, 0, "the ping outside the unit");
    agent.signal(Signal::SIGTERM);
    let (status, lines, err) = agent.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?} {err}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("for unit {name}.service"))),
        "the summary names the unit: {lines:?}"
    );
    drop(unit);
}

#[test]
fn a_scoped_fault_ends_when_its_cgroup_is_removed() {
    let pair = VethPair::new(69);
    let cg = Cgroup::new("gone");
    let state = TempDir::new("scope");
    let dst = format!("{}/32", pair.b_ip);
    // A TTL far beyond the test: only the cgroup's removal can end the fault in time.
    let agent = inject(
        &pair.a,
        &state,
        &[
            "--loss", "1", "--cgroup", &cg.path, "--dest", &dst, "--iface", &pair.a_if, "--ttl",
            "10m",
        ],
    );
    let inside = cg
        .command_in(&pair.a, "ping", &ping_args(&pair.b_ip))
        .output()
        .expect("ping inside");
    assert_eq!(
        ping_loss(&inside),
        100,
        "the cgroup's ping, while it exists"
    );
    // The last process left with the ping: the cgroup can go, as a unit's or a container's
    // does when it stops.
    std::fs::remove_dir(&cg.dir).expect("rmdir the cgroup");
    let (status, lines, err) = agent.wait(Duration::from_secs(20));
    assert!(status.success(), "{status:?} {err}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("summary:") && l.contains("(target-gone)")),
        "the fault ended for its target: {lines:?} {err}"
    );
    // Nothing of the fault is left: no tcx link (the host) and no cls_bpf filter (the guest).
    assert!(
        chaos_testing::attached_programs(&pair.a, &pair.a_if).is_empty(),
        "a program left on {}",
        pair.a_if
    );
    assert!(
        !chaos_testing::tc_filters(&pair.a, &pair.a_if, "egress")
            .to_string()
            .contains("chaos_"),
        "a filter left on {}",
        pair.a_if
    );
    // And no fault acts any more: a ping from a new cgroup goes through.
    let again = Cgroup::new("gone");
    let after = again
        .command_in(&pair.a, "ping", &ping_args(&pair.b_ip))
        .output()
        .expect("ping after");
    assert_eq!(ping_loss(&after), 0, "no fault acts after target-gone");
}

#[test]
fn reset_scoped_to_a_cgroup_aborts_only_its_processes_connections() {
    let pair = VethPair::new(70);
    let cg = Cgroup::new("rscope");
    let listener = chaos_testing::tcp_listen(&pair.b, &format!("{}:8080", pair.b_ip));
    // Two clients of the same server, in the same namespace: one inside the cgroup, then one
    // outside; the server accepts them in that order.
    let nc = ["nc", pair.b_ip.as_str(), "8080"];
    let mut inside = HeldConnection::open(cg.command_in(&pair.a, "busybox", &nc), &listener);
    wait_in(&cg, inside.client.id());
    let mut outside = pair.a.command("busybox");
    outside.args(nc);
    let mut outside = HeldConnection::open(outside, &listener);
    let state = TempDir::new("scope");
    let ttl = chaos_testing::test_ttl(30);
    let agent = inject(
        &pair.a,
        &state,
        &[
            "--reset", "--cgroup", &cg.path, "--dport", "8080", "--ttl", &ttl,
        ],
    );
    inside.assert_reset("the cgroup's connection");
    outside.assert_alive("the connection outside the cgroup, same server");
    drop(agent);
}

#[test]
fn ambiguous_units_and_container_prefixes_are_refused_with_the_candidates() {
    // Two cgroups named as a runtime names its containers, whose ids share a prefix, and two
    // cgroups named after one unit under different parents: laid out by hand, as the tree would
    // show them.
    let parent = Cgroup::new("ambig");
    let stem = format!("c4a0{:08x}", std::process::id());
    let ids = [
        format!("{stem}{}", "1".repeat(52)),
        format!("{stem}{}", "2".repeat(52)),
    ];
    let a = parent.child(&format!("libpod-{}", ids[0]));
    let b = parent.child(&format!("docker-{}.scope", ids[1]));
    let unit = chaos_testing::unique_name("amb");
    let s1 = parent.child("one.slice");
    let s2 = parent.child("two.slice");
    let u1 = s1.child(&format!("{unit}.service"));
    let u2 = s2.child(&format!("{unit}.service"));
    let state = TempDir::new("scope");
    let ns = NetNs::new("ambig");
    for (args, want) in [
        (
            vec!["--refuse", "--container", stem.as_str()],
            format!("the prefix names 2 containers ({}", &ids[0][..12]),
        ),
        (
            vec!["--refuse", "--unit", unit.as_str()],
            format!("2 cgroups are named {unit}.service"),
        ),
    ] {
        let out = ns
            .command(bin().to_str().expect("path"))
            .args(["--state-dir", state.str(), "inject", "--ttl", "5s"])
            .args(&args)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(&want), "{args:?}: {err}");
    }
    // Nothing was attached for either.
    assert!(
        run(
            "bpftool",
            ["-j", "cgroup", "show", &chaos_testing::cgroup2_root()]
        )
        .stdout
        .windows(6)
        .all(|w| w != b"chaos_"),
        "a connect program on the cgroup root"
    );
    drop((u1, u2, s1, s2, a, b));
}
