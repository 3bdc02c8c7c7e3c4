//! Facts about the kernel the privileged suite runs on, checked with the same tools the other
//! tests judge the agent with (iproute2, ping, bpftool), never with the agent's own netlink code.
//!
//! They run on the host (`cargo test`) and in the Debian 6.1 guest (`cargo xtask vm-test`, which
//! sets `CHAOS_VM=1`). The guest is where the qdiscs the host kernel lacks (netem, fq, prio) and
//! cgroup v2 controllers exist, so there a missing feature is a failure: it means the harness did
//! not load a module or mount a filesystem, and every test that needs it would fail obscurely.
//! Which kernel must have what is `chaos_testing::PROFILES` (`require` fails where the profile
//! in force requires the feature, and records a skip elsewhere).

use std::path::Path;

use chaos_testing::{Feature, VethPair, require, require_absent, require_all, run, skip};

/// Whether we run in the `cargo xtask vm-test` guest.
fn in_vm() -> bool {
    std::env::var_os("CHAOS_VM").is_some_and(|v| v == "1")
}

/// The tests create namespaces and qdiscs: without root they can only be skipped.
fn can_run(test: &str) -> bool {
    require_all(
        test,
        &[
            Feature::Root,
            Feature::Tool("ip"),
            Feature::Tool("tc"),
            Feature::Tool("ping"),
        ],
    )
}

/// Whether the running kernel knows a qdisc (`kind` may carry its parameters): probed on a throw-away veth, because the host
/// has no loadable modules and the guest loads them up front, so "unknown kind" is final.
fn has_qdisc(pair: &VethPair, kind: &str) -> bool {
    let ok = pair
        .a
        .command("tc")
        .args(["qdisc", "add", "dev", &pair.a_if, "root"])
        .args(kind.split_whitespace())
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        pair.a
            .exec("tc", ["qdisc", "del", "dev", &pair.a_if, "root"]);
    }
    ok
}

/// The root qdisc of a device as `tc -j` reports it.
fn root_qdisc(pair: &VethPair) -> serde_json::Value {
    let out = pair
        .a
        .exec("tc", ["-j", "qdisc", "show", "dev", &pair.a_if, "root"]);
    let list: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("tc -j qdisc show prints a JSON array");
    list.into_iter()
        .next()
        .expect("a device always has a root qdisc")
}

/// Minimum round-trip time in ms of `count` pings from `a` to `b`.
fn min_rtt_ms(pair: &VethPair, count: u32) -> f64 {
    let out = pair.a.exec(
        "ping",
        [
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "5",
            &pair.b_ip,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // "rtt min/avg/max/mdev = 10.1/10.3/10.9/0.2 ms"
    let stats = text
        .lines()
        .find_map(|l| l.split_once(" = ").filter(|(k, _)| k.contains("min/avg")))
        .unwrap_or_else(|| panic!("no rtt line in ping output: {text}"))
        .1;
    stats
        .split('/')
        .next()
        .and_then(|v| v.trim().parse().ok())
        .expect("numeric min rtt")
}

#[test]
fn netem_delay_applies_and_reads_back() {
    let test = "netem_delay_applies_and_reads_back";
    if !can_run(test) {
        return;
    }
    if !require(test, Feature::Qdisc("netem")) {
        return;
    }
    let pair = VethPair::new(32);
    pair.a.exec(
        "tc",
        [
            "qdisc", "add", "dev", &pair.a_if, "root", "netem", "delay", "10ms",
        ],
    );
    let q = root_qdisc(&pair);
    assert_eq!(q["kind"], "netem", "root qdisc: {q}");
    // tc reports the delay in seconds.
    let delay = q["options"]["delay"]["delay"].as_f64().unwrap_or_default();
    assert!(
        (delay - 0.010).abs() < 1e-6,
        "netem delay read back as {delay}: {q}"
    );
    // The delay is a lower bound whatever the (emulated) CPU's speed: one way only, so >= 10 ms.
    let rtt = min_rtt_ms(&pair, 3);
    assert!(rtt >= 10.0, "min rtt {rtt} ms with 10 ms netem delay");
    // IPv6 between the namespaces too (the loss suite filters on v6 prefixes).
    pair.a
        .exec("ping", ["-n", "-c", "1", "-W", "5", &pair.b_ip6]);
}

#[test]
fn qdiscs_the_agent_builds_on_exist() {
    let test = "qdiscs_the_agent_builds_on_exist";
    if !can_run(test) {
        return;
    }
    // The skip guard asks tc in a throwaway namespace (chaos_testing::have_qdisc); the qdiscs
    // this kernel has are then added for real, with parameters, on a veth.
    let kinds = ["netem", "fq", "prio", "htb", "tbf"];
    let present: Vec<&str> = kinds
        .into_iter()
        .filter(|k| chaos_testing::has(Feature::Qdisc(k)))
        .collect();
    let pair = VethPair::new(33);
    for kind in &present {
        let args = if *kind == "tbf" {
            "tbf rate 1mbit burst 32kbit latency 50ms"
        } else {
            kind
        };
        assert!(has_qdisc(&pair, args), "tc qdisc add ... {args} failed");
    }
    // Fails for a missing kind the profile in force requires (the VM: a module was not
    // loaded); skips for the others.
    let _ = require_all(test, &kinds.map(Feature::Qdisc));
}

#[test]
fn clsact_u32_mirred_and_ifb_work() {
    if !can_run("clsact_u32_mirred_and_ifb_work") {
        return;
    }
    let pair = VethPair::new(34);
    let ifb = chaos_testing::unique_name("ifb");
    pair.a.exec("ip", ["link", "add", &ifb, "type", "ifb"]);
    pair.a.exec("ip", ["link", "set", &ifb, "up"]);
    pair.a
        .exec("tc", ["qdisc", "add", "dev", &pair.a_if, "clsact"]);
    pair.a.exec(
        "tc",
        [
            "filter", "add", "dev", &pair.a_if, "ingress", "protocol", "all", "prio", "1", "u32",
            "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", &ifb,
        ],
    );
    let out = pair
        .a
        .exec("tc", ["-j", "filter", "show", "dev", &pair.a_if, "ingress"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("mirred"), "ingress filters: {text}");
    // Redirected ingress traffic still reaches the stack through the ifb.
    pair.a
        .exec("ping", ["-n", "-c", "1", "-W", "5", &pair.b_ip]);
}

#[test]
fn cgroup2_offers_the_resource_controllers() {
    let test = "cgroup2_offers_the_resource_controllers";
    let controllers = Path::new("/sys/fs/cgroup/cgroup.controllers");
    if !require(test, Feature::CgroupV2) {
        return;
    }
    let list = std::fs::read_to_string(controllers).expect("cgroup.controllers");
    let have: Vec<&str> = list.split_whitespace().collect();
    let missing: Vec<&str> = ["cpu", "memory", "io", "pids"]
        .into_iter()
        .filter(|c| !have.contains(c))
        .collect();
    assert!(
        missing.is_empty(),
        "cgroup2 controllers {have:?} lack {missing:?}"
    );
    if in_vm() {
        for psi in ["cpu", "memory", "io"] {
            let path = format!("/proc/pressure/{psi}");
            assert!(Path::new(&path).exists(), "{path} missing: no PSI");
        }
        // Delegated to children (the guest's /init enables them), so a child group gets the
        // interface files the resource faults write.
        let child = Path::new("/sys/fs/cgroup").join(chaos_testing::unique_name("kf"));
        std::fs::create_dir(&child).expect("create a child cgroup");
        let files = ["cpu.max", "memory.high", "io.max", "cpu.pressure"];
        let absent: Vec<&str> = files
            .into_iter()
            .filter(|f| !child.join(f).exists())
            .collect();
        let _ = std::fs::remove_dir(&child);
        assert!(absent.is_empty(), "child cgroup lacks {absent:?}");
    }
}

#[test]
fn bpf_prerequisites_are_in_place() {
    let test = "bpf_prerequisites_are_in_place";
    if !in_vm() {
        // The host is prepared by `cargo xtask setup`; here we vouch for the guest's /init.
        skip(test, "checks the VM guest's mounts and tools");
        return;
    }
    let mounts = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    assert!(
        mounts
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some("bpf")),
        "bpffs not mounted: {mounts}"
    );
    assert!(
        Path::new("/sys/kernel/btf/vmlinux").exists(),
        "kernel BTF missing"
    );
    let out = run("bpftool", ["-j", "prog", "show"]);
    let _: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("bpftool -j prog show prints JSON");
    let agent = chaos_testing::agent_bin("");
    assert!(
        agent.is_file(),
        "CHAOS_AGENT_BIN={} is not a file",
        agent.display()
    );
}

#[test]
fn vm_kernel_has_no_tcx() {
    // The loss suite relies on the guest to prove the netlink (cls_bpf) attach path, which only
    // runs on kernels without tcx (< 6.6). A newer guest kernel would silently stop proving it.
    let test = "vm_kernel_has_no_tcx";
    if !in_vm() {
        skip(test, "only the VM kernel must lack tcx");
        return;
    }
    // A tcx link of a trivial program (the vm profile requires its refusal), then the release.
    if !require_absent(test, Feature::Tcx) {
        return;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert!(
        version < (6, 6),
        "guest kernel {release} has tcx; the netlink path goes untested"
    );
}

#[test]
fn tools_the_tests_judge_with_run() {
    // In the guest these are the host's glibc builds: a missing shared library shows up here,
    // by name, instead of as an obscure failure in some fault test.
    let test = "tools_the_tests_judge_with_run";
    let checks: [(&str, &[&str]); 6] = [
        ("ip", &["-V"]),
        ("tc", &["-V"]),
        ("ping", &["-V"]),
        ("ss", &["-V"]),
        ("iperf3", &["--version"]),
        ("bpftool", &["version"]),
    ];
    // Required in the guest (and on the CI host); elsewhere a missing one skips the test.
    if !require_all(test, &checks.map(|(tool, _)| Feature::Tool(tool))) {
        return;
    }
    for (tool, args) in checks {
        run(tool, args);
    }
    // Through `sh -c` too, as many tests call them: the guest's shell must find iproute2's tc
    // on PATH, not a busybox applet of the same name.
    let version = chaos_testing::sh("tc -V 2>&1");
    assert!(version.contains("iproute2"), "sh -c tc runs {version}");
    // util-linux's setpriv (dropping privileges in tests), not busybox's, which lacks --reuid.
    if chaos_testing::has(Feature::Tool("setpriv")) {
        let help = chaos_testing::sh("setpriv --help 2>&1");
        assert!(
            help.contains("--reuid"),
            "setpriv is not util-linux's: {help}"
        );
    }
}
