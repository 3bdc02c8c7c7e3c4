//! `--container`, end to end with a real container: podman (with runc) runs a container from an
//! image this test builds from busybox-static (nothing is pulled), inside a network namespace the
//! test made, so that it reaches a server in the peer namespace. The agent runs in the host's
//! namespace and finds the container by a prefix of its id, its cgroup and its own network
//! namespace by itself. Judged by what busybox `nc` gets inside the container and beside it (a
//! process in the same namespace but not in the container), and by what the server's end of
//! each connection gets. Host only: the VM guest has no container runtime.

use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use chaos_testing::{AgentProcess, HeldConnection, NetNs, TempDir, VethPair, run};
use chaos_testing::{Feature, require_all};
use nix::sys::signal::Signal;

fn bin() -> std::path::PathBuf {
    chaos_testing::agent_bin(env!("CARGO_BIN_EXE_chaos-agent"))
}

const IMAGE: &str = "localhost/chaos-agent-test:busybox";

/// The podman flags every container of the tests takes: runc (crun refuses a hybrid cgroup
/// host whose unified hierarchy lists a controller), limits within what root may set here
/// (podman's defaults are above this machine's hard limits), and no grace on stop (busybox
/// `sleep` as PID 1 ignores SIGTERM).
const RUN_FLAGS: [&str; 8] = [
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
    "--stop-timeout",
    "0",
];

fn podman<const N: usize>(args: [&str; N]) -> Output {
    Command::new("podman").args(args).output().expect("podman")
}

/// The test image: busybox-static and its applets, imported from a directory (no registry).
fn image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if podman(["image", "exists", IMAGE]).status.success() {
            return;
        }
        let root = TempDir::new("ctrimg");
        let r = root.0.clone();
        for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "run"] {
            std::fs::create_dir_all(r.join(d)).expect("mkdir");
        }
        std::fs::copy("/bin/busybox", r.join("bin/busybox")).expect("copy busybox");
        run(
            "chroot",
            [
                r.to_str().expect("path"),
                "/bin/busybox",
                "--install",
                "-s",
                "/bin",
            ],
        );
        let imported = chaos_testing::sh_ok(&format!(
            "tar -C {} -c . | podman import -q - {IMAGE} >/dev/null",
            r.display()
        ));
        assert!(imported, "podman import of the busybox image");
    });
    IMAGE
}

/// A running container in `ns` (its network namespace is the test's), removed on drop.
struct Container {
    id: String,
}

impl Container {
    fn run(ns: &NetNs) -> Self {
        let netns = format!("ns:/run/netns/{}", ns.name);
        let image = image();
        let mut args = vec!["run", "-d"];
        args.extend(RUN_FLAGS);
        args.extend(["--network", &netns, image, "sleep", "600"]);
        let out = Command::new("podman").args(&args).output().expect("podman");
        assert!(
            out.status.success(),
            "podman run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert_eq!(id.len(), 64, "a container id: {id:?}");
        Self { id }
    }

    /// `podman exec` of `args` in the container.
    fn exec(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.args(["exec", "-i", &self.id]).args(args);
        c
    }

    /// Its cgroup v2 path, from its process's `/proc/PID/cgroup` (not from the agent).
    fn cgroup(&self) -> String {
        let pid = String::from_utf8_lossy(
            &podman(["inspect", "--format", "{{.State.Pid}}", &self.id]).stdout,
        )
        .trim()
        .to_owned();
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .expect("cgroup file")
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
            .expect("a cgroup v2 line")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(["rm", "-f", "-t", "0", &self.id]);
    }
}

/// Whether busybox `nc` connects to `addr port` and runs `true` on the connection.
fn nc_connects(mut c: Command, addr: &str, port: &str) -> Result<(), String> {
    let out = c
        .args(["nc", "-w", "3", addr, port, "-e", "true"])
        .stdin(Stdio::null())
        .output()
        .expect("nc");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// chaos programs attached to the cgroup at `path` (below the v2 root), by `bpftool`.
fn chaos_on(path: &str) -> bool {
    let dir = format!(
        "{}/{}",
        chaos_testing::cgroup2_root(),
        path.trim_start_matches('/')
    );
    let out = run("bpftool", ["-j", "cgroup", "show", &dir]);
    String::from_utf8_lossy(&out.stdout).contains("chaos_")
}

fn needs_podman(test: &str) -> bool {
    require_all(test, &[Feature::Tool("podman"), Feature::Tool("runc")])
}

#[test]
fn refuse_in_a_container_fails_its_connects_and_no_one_else_s() {
    if !needs_podman("refuse_in_a_container_fails_its_connects_and_no_one_else_s") {
        return;
    }
    let pair = VethPair::new(71);
    let _l = chaos_testing::tcp_listen(&pair.b, &format!("{}:8080", pair.b_ip));
    let ctr = Container::run(&pair.a);
    let cgroup = ctr.cgroup();
    let prefix = &ctr.id[..12];
    let state = TempDir::new("ctr");
    let agent_cmd = |args: &[&str]| {
        let mut c = Command::new(bin());
        c.args(["--state-dir", state.str(), "inject"]).args(args);
        c
    };
    // The plan names what the prefix resolved to: the container's cgroup and namespace.
    let dry = agent_cmd(&[
        "--refuse",
        "--container",
        prefix,
        "--dport",
        "8080",
        "--ttl",
        "30s",
        "--dry-run",
    ])
    .output()
    .expect("dry run");
    let plan = String::from_utf8_lossy(&dry.stdout);
    assert!(
        plan.contains(&format!(
            "scope: container {prefix} is cgroup {cgroup} (id "
        )) && plan.contains("with its own network namespace net:["),
        "the dry run shows the resolved container: {plan} {}",
        String::from_utf8_lossy(&dry.stderr)
    );
    // Loss acts on the host side of the container's veth; this agent's namespace has none
    // (the other end is in the peer namespace): refused, with the reason.
    let loss = agent_cmd(&["--loss", "1", "--container", prefix, "--ttl", "30s"])
        .output()
        .expect("loss");
    assert_eq!(loss.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&loss.stderr)
            .contains("no veth whose other end is in the agent's namespace"),
        "{}",
        String::from_utf8_lossy(&loss.stderr)
    );
    assert_eq!(
        nc_connects(ctr.exec(&[]), &pair.b_ip, "8080"),
        Ok(()),
        "the container connects before the fault"
    );
    let mut full = vec!["--state-dir", state.str(), "inject", "--refuse"];
    full.extend(["--container", prefix, "--dport", "8080", "--ttl", "30s"]);
    let mut agent = AgentProcess::spawn(None, &bin(), &full);
    agent.expect_injected();
    let inside = nc_connects(ctr.exec(&[]), &pair.b_ip, "8080");
    assert!(
        inside.as_ref().is_err_and(|e| e.contains("refused")),
        "the container's connect is refused: {inside:?}"
    );
    // A process in the same network namespace, not in the container, is not.
    let beside = nc_connects(pair.a.command("busybox"), &pair.b_ip, "8080");
    assert_eq!(beside, Ok(()), "the process beside the container");
    agent.signal(Signal::SIGTERM);
    let (status, lines, err) = agent.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?} {err}");
    assert!(
        lines.iter().any(|l| l.contains("refused 1")),
        "one connect counted as refused: {lines:?}"
    );
    assert_eq!(
        nc_connects(ctr.exec(&[]), &pair.b_ip, "8080"),
        Ok(()),
        "the container connects again after the fault"
    );
    assert!(!chaos_on("/"), "a chaos program left on the cgroup root");
    assert!(
        !chaos_on(&cgroup),
        "a chaos program left on the container's cgroup"
    );
}

#[test]
fn reset_in_a_container_aborts_its_connections_only() {
    if !needs_podman("reset_in_a_container_aborts_its_connections_only") {
        return;
    }
    let pair = VethPair::new(72);
    let listener = chaos_testing::tcp_listen(&pair.b, &format!("{}:8081", pair.b_ip));
    let ctr = Container::run(&pair.a);
    // The container's client, then a client beside it in the same namespace; the server
    // accepts them in that order.
    let nc = ["nc", pair.b_ip.as_str(), "8081"];
    let mut inside = HeldConnection::open(ctr.exec(&nc), &listener);
    let mut beside = pair.a.command("busybox");
    beside.args(nc);
    let mut beside = HeldConnection::open(beside, &listener);
    let state = TempDir::new("ctr");
    let prefix = &ctr.id[..12];
    let full = [
        "--state-dir",
        state.str(),
        "inject",
        "--reset",
        "--container",
        prefix,
        "--dport",
        "8081",
        "--ttl",
        "30s",
    ];
    let mut agent = AgentProcess::spawn(None, &bin(), &full);
    agent.expect_injected();
    inside.assert_reset("the container's connection");
    beside.assert_alive("the connection beside the container");
    agent.signal(Signal::SIGTERM);
    let (status, lines, err) = agent.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?} {err}");
    assert!(
        lines.iter().any(|l| l.contains("connections reset 1 ")),
        "one connection counted as reset: {lines:?}"
    );
}

/// The loss (whole percent) `ping` reports from `ns` to `dst`.
fn ping_loss(ns: &NetNs, dst: &str) -> u32 {
    let out = ns
        .command("ping")
        .args(["-c", "20", "-i", "0.05", "-W", "1", "-q", dst])
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let (head, _) = l.split_once("% packet loss")?;
            head.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .unwrap_or_else(|| panic!("no loss line in {text}"))
        .round() as u32
}

#[test]
fn loss_on_a_container_s_own_namespace_acts_on_its_host_side_veth() {
    if !needs_podman("loss_on_a_container_s_own_namespace_acts_on_its_host_side_veth") {
        return;
    }
    // The container's namespace is `a`; the agent runs in `b`, which holds the other end of
    // the container's veth, as a host holds a bridge port of each container.
    let pair = VethPair::new(73);
    let ctr = Container::run(&pair.a);
    let state = TempDir::new("ctr");
    let prefix = &ctr.id[..12];
    let qdiscs_before = chaos_testing::tc_qdiscs(&pair.a, &pair.a_if);
    let full = [
        "--state-dir",
        state.str(),
        "inject",
        "--loss",
        "1",
        "--proto",
        "icmp",
        "--container",
        prefix,
        "--ttl",
        "30s",
    ];
    let mut agent = AgentProcess::spawn(Some(&pair.b), &bin(), &full);
    agent.expect_injected();
    // The container's echo replies are its egress: every one is lost at the host side.
    assert_eq!(
        ping_loss(&pair.b, &pair.a_ip),
        100,
        "pings to the container"
    );
    // The container's own namespace is left as it was: no qdisc, no filter of ours there.
    assert_eq!(
        chaos_testing::tc_qdiscs(&pair.a, &pair.a_if),
        qdiscs_before,
        "the container's qdiscs"
    );
    for hook in ["ingress", "egress"] {
        assert_eq!(
            chaos_testing::tc_filters(&pair.a, &pair.a_if, hook),
            serde_json::json!([]),
            "a filter in the container's namespace ({hook})"
        );
    }
    agent.signal(Signal::SIGTERM);
    let (status, lines, err) = agent.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?} {err}");
    // The 20 echo replies, and whatever ICMPv6 (neighbour discovery) the container sent.
    let dropped = lines
        .iter()
        .find_map(|l| {
            let (_, rest) = l.split_once(", dropped ")?;
            let (n, pct) = rest.split_once(' ')?;
            pct.starts_with("(100.00%)")
                .then(|| n.parse::<u64>().ok())?
        })
        .unwrap_or_else(|| panic!("no counters with every match dropped: {lines:?}"));
    assert!(
        dropped >= 20,
        "the 20 replies counted as dropped: {lines:?}"
    );
    assert_eq!(ping_loss(&pair.b, &pair.a_ip), 0, "after the fault");
    for hook in ["ingress", "egress"] {
        assert_eq!(
            chaos_testing::tc_filters(&pair.b, &pair.b_if, hook),
            serde_json::json!([]),
            "a filter left on the host side ({hook})"
        );
    }
}
