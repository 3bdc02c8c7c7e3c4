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
                "--delay",
                "10ms",
                "--cgroup",
                "/",
                "--direction",
                "ingress",
                "--iface",
                "lo",
            ][..],
            "at ingress a scoped fault is loss",
        ),
        (
            &["--dns", "servfail", "--cgroup", "/", "--iface", "lo"][..],
            "at ingress a scoped fault is loss",
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
        // Options that exclude each other are a malformed command line (usage, 64); the rest
        // are refused values (2): docs/cli.md.
        let want_code = if want == "cannot be used with" { 64 } else { 2 };
        assert_eq!(out.status.code(), Some(want_code), "{args:?}: {err}");
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

/// A cgroup named as podman names a container's, holding one process in `ns`: a container with
/// a network namespace of its own, as the agent sees one (no runtime needed, so this runs in
/// the VM too; `tests/container.rs` does the same with a real podman container).
struct FakeContainer {
    id: String,
    holder: Child,
    cg: Cgroup,
    _parent: Cgroup,
}

impl FakeContainer {
    fn start(ns: &NetNs, tag: &str) -> Self {
        let parent = Cgroup::new("ctrns");
        let id = format!("{tag}{:08x}{}", std::process::id(), "e".repeat(52));
        let cg = parent.child(&format!("libpod-{id}.scope"));
        let holder = cg
            .command_in(ns, "sleep", &["300"])
            .stdin(Stdio::null())
            .spawn()
            .expect("sleep");
        wait_in(&cg, holder.id());
        Self {
            id,
            holder,
            cg,
            _parent: parent,
        }
    }
}

impl Drop for FakeContainer {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        wait_empty(&self.cg);
    }
}

fn wait_empty(cg: &Cgroup) {
    let procs = cg.dir.join("cgroup.procs");
    for _ in 0..250 {
        if std::fs::read_to_string(&procs).is_ok_and(|p| p.trim().is_empty()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// UDP loss (whole percent) at the receiver, both ways through the pair.
fn udp_both_ways(pair: &VethPair, port: u16) -> (u32, u32) {
    let out = chaos_testing::udp_run(
        &pair.a,
        &pair.b,
        &chaos_testing::UdpRun::new(&pair.b_ip, port, 200),
    );
    let back = chaos_testing::udp_run(
        &pair.b,
        &pair.a,
        &chaos_testing::UdpRun::new(&pair.a_ip, port, 200),
    );
    (
        (out.loss() * 100.0).round() as u32,
        (back.loss() * 100.0).round() as u32,
    )
}

/// Our tc filters on `ifname` in `ns`, both hooks (the netlink path), and the tcx links the
/// agent `pid` holds on an interface with that index, from the kernel's fdinfo of each link
/// (bpftool 7.1 does not name a tcx link's interface). An index is only unique within its
/// namespace, so the tcx half is meaningful for the host side, where the agent runs.
fn ours_on(ns: &NetNs, ifname: &str, agent_pid: Option<u32>) -> usize {
    let filters = ["ingress", "egress"]
        .iter()
        .map(|hook| {
            chaos_testing::tc_filters(ns, ifname, hook)
                .as_array()
                .map_or(0, Vec::len)
        })
        .sum::<usize>();
    let ifindex = ns
        .sh(&format!("cat /sys/class/net/{ifname}/ifindex"))
        .trim()
        .to_owned();
    let tcx = agent_pid.map_or(0, |pid| {
        std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter(|info| {
                let field = |name: &str| {
                    info.lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim().split(' ').next().unwrap_or("").to_owned())
                };
                field("link_type:").as_deref() == Some("tcx")
                    && field("ifindex:").as_deref() == Some(ifindex.as_str())
            })
            .count()
    });
    filters + tcx
}

#[test]
fn a_container_with_its_own_namespace_is_faulted_on_its_host_side_veth() {
    // `a` is the container's namespace, `b` the host's: the agent runs in `b`, where the
    // other end of the container's veth is.
    let pair = VethPair::new(68);
    let ctr = FakeContainer::start(&pair.a, "c0a1");
    let prefix = &ctr.id[..12];
    let state = TempDir::new("ctrns");
    let agent_cmd = |args: &[&str]| {
        let mut c = pair.b.command(bin().to_str().expect("path"));
        c.args(["--state-dir", state.str(), "inject"]).args(args);
        c
    };
    let dry = agent_cmd(&[
        "--loss",
        "1",
        "--container",
        prefix,
        "--ttl",
        "30s",
        "--dry-run",
    ])
    .output()
    .expect("dry run");
    let plan = String::from_utf8_lossy(&dry.stdout);
    assert!(
        plan.contains(&format!(
            "its {} is faulted on its host-side veth {}",
            pair.a_if, pair.b_if
        )) && plan.contains(&format!("its egress is {}'s ingress", pair.b_if)),
        "the dry run names both ends: {plan} {}",
        String::from_utf8_lossy(&dry.stderr)
    );
    // `--iface` names the container's interface; one it does not have is refused.
    let bad = agent_cmd(&[
        "--loss",
        "1",
        "--container",
        prefix,
        "--iface",
        "nosuch0",
        "--ttl",
        "30s",
    ])
    .output()
    .expect("bad iface");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no interface \"nosuch0\"") && err.contains(&pair.a_if),
        "the refusal names what the container has: {err}"
    );
    assert_eq!(udp_both_ways(&pair, 9301), (0, 0), "before any fault");
    let ttl = chaos_testing::test_ttl(30);
    for (direction, want) in [
        ("egress", (100, 0)),
        ("ingress", (0, 100)),
        ("both", (100, 100)),
    ] {
        let args = [
            "--loss",
            "1",
            "--proto",
            "udp",
            "--dport",
            "9301",
            "--container",
            prefix,
            "--direction",
            direction,
            "--ttl",
            &ttl,
        ];
        let mut full = vec!["--state-dir", state.str(), "inject"];
        full.extend(args);
        let mut agent = AgentProcess::spawn(Some(&pair.b), &bin(), &full);
        agent.expect_injected();
        // Judged at each receiver: the container's sends are its egress, what it receives
        // its ingress.
        assert_eq!(udp_both_ways(&pair, 9301), want, "--direction {direction}");
        assert_eq!(
            udp_both_ways(&pair, 9302),
            (0, 0),
            "another port, --direction {direction}"
        );
        // Nothing of ours in the container's namespace: the fault sits on the host side.
        assert_eq!(
            ours_on(&pair.a, &pair.a_if, None),
            0,
            "attached inside the container"
        );
        assert!(
            ours_on(&pair.b, &pair.b_if, Some(agent.pid())) > 0,
            "nothing on the host-side veth"
        );
        agent.signal(Signal::SIGTERM);
        let (status, lines, err) = agent.wait(Duration::from_secs(30));
        assert!(status.success(), "{status:?} {err}");
        let summary = format!(
            "{direction} on the container's {} (host side {})",
            pair.a_if, pair.b_if
        );
        assert!(
            lines.iter().any(|l| l.contains(&summary)),
            "the summary names both ends: {lines:?}"
        );
        let dropped = if direction == "both" { 400 } else { 200 };
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("dropped {dropped} ("))),
            "the agent counted the {dropped} drops: {lines:?}"
        );
        assert_eq!(
            ours_on(&pair.b, &pair.b_if, None),
            0,
            "left on the host-side veth"
        );
    }
    assert_eq!(udp_both_ways(&pair, 9301), (0, 0), "after the faults");
}

#[test]
fn a_container_s_namespace_delays_its_traffic_and_ends_with_it() {
    // Delay through netem (EDT has no ingress): the 6.1 VM has it, this host's kernel not.
    if !chaos_testing::require(
        "a_container_s_namespace_delays_its_traffic_and_ends_with_it",
        chaos_testing::Feature::Qdisc("netem"),
    ) {
        return;
    }
    let pair = VethPair::new(69);
    let ctr = FakeContainer::start(&pair.a, "c0a2");
    let state = TempDir::new("ctrns");
    let base = chaos_testing::median(&chaos_testing::ping_rtts(&pair.a, &pair.b_ip, 10, 0.05));
    let agent = inject(
        &pair.b,
        &state,
        &[
            "--delay",
            "100ms",
            "--proto",
            "icmp",
            "--container",
            &ctr.id[..12],
            "--ttl",
            "10m",
        ],
    );
    // The container's echo requests leave it (its egress): each round trip pays 100 ms once.
    let rtt = chaos_testing::median(&chaos_testing::ping_rtts(&pair.a, &pair.b_ip, 10, 0.05));
    assert!(
        rtt >= 100.0 && rtt < base + 180.0,
        "rtt {rtt} ms (before: {base} ms)"
    );
    // The container goes away: the fault ends (target-gone) and its host side is left clean.
    drop(ctr);
    let (status, lines, err) = agent.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?} {err}");
    assert!(
        lines.iter().any(|l| l.contains("reverted (target-gone)")),
        "{lines:?}"
    );
    assert!(
        !chaos_testing::tc_qdiscs(&pair.b, &pair.b_if).contains("netem"),
        "netem left on the host-side veth"
    );
    assert_eq!(
        ours_on(&pair.b, &pair.b_if, None),
        0,
        "a filter left on the host-side veth"
    );
}

#[test]
fn dns_in_a_container_s_own_namespace_rewrites_the_answers_it_receives() {
    use chaos_testing::dns::{self, Client, Dnsmasq, Outcome, Zone};
    // The container (namespace `a`) asks a server on the host side (`b`, where the agent
    // runs); the answers it receives are rewritten on their way in.
    let pair = VethPair::new(70);
    let ctr = FakeContainer::start(&pair.a, "c0a3");
    let zone = Zone::new("test").host("www.example.test", Some("10.70.0.100"), None);
    let _server = Dnsmasq::start(&pair.b, &[pair.b_ip.as_str()], 53, &zone);
    let timeout = Duration::from_secs(if chaos_testing::in_vm() { 3 } else { 1 });
    let mut c = Client::new(&pair.a, &pair.b_ip, 53);
    c.wait_ready(Duration::from_secs(if chaos_testing::in_vm() {
        30
    } else {
        10
    }));
    let rcode = |c: &mut Client| match c.query("www.example.test", "A", timeout) {
        Outcome::Reply(m) => m.rcode(),
        other => panic!("no reply: {other:?}"),
    };
    assert_eq!(rcode(&mut c), dns::NOERROR, "before the fault");
    let state = TempDir::new("ctrns");
    let ttl = chaos_testing::test_ttl(30);
    let agent = inject(
        &pair.b,
        &state,
        &[
            "--dns",
            "servfail",
            "--dns-domain",
            "example.test",
            "--container",
            &ctr.id[..12],
            "--ttl",
            &ttl,
        ],
    );
    assert_eq!(rcode(&mut c), dns::SERVFAIL, "the container's answer");
    agent.signal(Signal::SIGTERM);
    let (status, lines, err) = agent.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?} {err}");
    assert!(
        lines.iter().any(|l| l.contains("rewritten 1")),
        "one answer counted as rewritten: {lines:?}"
    );
    assert_eq!(rcode(&mut c), dns::NOERROR, "after the fault");
}

#[test]
fn ingress_loss_scoped_to_a_cgroup_drops_only_what_its_processes_receive() {
    // tc ingress runs before the socket lookup; the agent acts there with a cgroup program that
    // runs as the receiving socket takes the packet. Two pings to the same server: the echo
    // replies to the one in the cgroup are dropped at its socket, the other's arrive.
    let pair = VethPair::new(74);
    let cg = Cgroup::new("ingress");
    let state = TempDir::new("scope");
    let dst = format!("{}/32", pair.b_ip);
    let ttl = chaos_testing::test_ttl(30);
    let root = chaos_testing::cgroup2_root();
    let ours_on_root = || {
        run("bpftool", ["-j", "cgroup", "show", &root])
            .stdout
            .windows(11)
            .any(|w| w == b"chaos_sk_in")
    };
    for direction in ["ingress", "both"] {
        let agent = inject(
            &pair.a,
            &state,
            &[
                "--loss",
                "1",
                "--proto",
                "icmp",
                "--cgroup",
                &cg.path,
                "--src",
                &dst,
                "--direction",
                direction,
                "--iface",
                &pair.a_if,
                "--ttl",
                &ttl,
            ],
        );
        assert!(
            ours_on_root(),
            "chaos_sk_in on the cgroup root ({direction})"
        );
        let (inside, beside) = ping_in_and_beside(&cg, &pair);
        assert_eq!(inside, 100, "the cgroup's ping ({direction})");
        assert_eq!(beside, 0, "the ping beside it, same server ({direction})");
        agent.signal(Signal::SIGTERM);
        let (status, lines, err) = agent.wait(Duration::from_secs(30));
        assert!(status.success(), "{status:?} {err}");
        assert!(
            lines.iter().any(|l| l.contains("cgroup-ingress")),
            "the backend names the socket-ingress hook: {lines:?}"
        );
        // The 20 replies (ingress) or the 20 requests (both: they never left), and nothing
        // of the ping beside it.
        assert!(
            lines.iter().any(|l| l.contains("matched 20, dropped 20 (")),
            "the agent counted 20 drops ({direction}): {lines:?}"
        );
        assert!(
            !ours_on_root(),
            "chaos_sk_in left on the cgroup root ({direction})"
        );
    }
    let (inside, _) = ping_in_and_beside(&cg, &pair);
    assert_eq!(inside, 0, "the cgroup's ping after the faults");
}

#[test]
fn delay_scoped_to_a_cgroup_slows_only_its_processes() {
    // The netem backend: the tc program steers the packets of the cgroup's sockets into the
    // delayed class. The 6.1 VM has netem, this host's kernel not.
    if !chaos_testing::require(
        "delay_scoped_to_a_cgroup_slows_only_its_processes",
        chaos_testing::Feature::Qdisc("netem"),
    ) {
        return;
    }
    let pair = VethPair::new(75);
    let cg = Cgroup::new("sdelay");
    let state = TempDir::new("scope");
    let ttl = chaos_testing::test_ttl(60);
    let rtts = |inside: bool| {
        let args = ["-c", "10", "-i", "0.05", "-W", "2", &pair.b_ip];
        let out = if inside {
            cg.command_in(&pair.a, "ping", &args).output()
        } else {
            pair.a.command("ping").args(args).output()
        }
        .expect("ping");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let v: Vec<f64> = text
            .lines()
            .filter_map(|l| l.split("time=").nth(1)?.split(' ').next()?.parse().ok())
            .collect();
        assert_eq!(v.len(), 10, "every echo answered: {text}");
        chaos_testing::median(&v)
    };
    let agent = inject(
        &pair.a,
        &state,
        &[
            "--delay", "100ms", "--proto", "icmp", "--cgroup", &cg.path, "--iface", &pair.a_if,
            "--ttl", &ttl,
        ],
    );
    let (inside, beside) = (rtts(true), rtts(false));
    // Each of the cgroup's round trips pays the delay once (its requests leave delayed); the
    // ping beside it, to the same server, pays nothing.
    assert!(inside >= 100.0, "the cgroup's ping: median {inside} ms");
    assert!(beside < 50.0, "the ping beside it: median {beside} ms");
    agent.signal(Signal::SIGTERM);
    let (status, _, err) = agent.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?} {err}");
    assert!(
        !chaos_testing::tc_qdiscs(&pair.a, &pair.a_if).contains("netem"),
        "netem left on the interface"
    );
}
