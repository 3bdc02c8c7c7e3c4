//! The agent's own faults (issue 15, item 3): what happens to the host when the agent's world
//! misbehaves under it. The kernel refuses one of its netlink requests in the middle of an apply
//! (every step in turn, through an `LD_PRELOAD` shim the agent knows nothing of); its state
//! directory is read-only or full; someone else adds their own filters and qdiscs while a fault
//! runs. Judged from outside: `ip`, `tc` and `bpftool` views of the namespace before and after,
//! the journal directory's files, and what the CLI says.

use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use chaos_testing::shim::{netlink_refuse_shim, netns_state, shim_log};
use chaos_testing::{AgentProcess, NetNs, TempDir, VethPair, sh, sh_ok, tc_filters};
use nix::sys::signal::Signal;

fn bin() -> PathBuf {
    chaos_testing::agent_bin(env!("CARGO_BIN_EXE_chaos-agent"))
}

/// `ip netns exec NS env VARS... chaos-agent --state-dir STATE inject ARGS...`: the variables
/// go to the agent only (`env` sends no netlink request of its own).
fn inject_cmd(ns: &NetNs, state: &Path, vars: &[(&str, &str)], args: &[&str]) -> Command {
    let mut c = ns.command("env");
    c.args(vars.iter().map(|(k, v)| format!("{k}={v}")))
        .arg(bin())
        .arg("--state-dir")
        .arg(state)
        .arg("inject")
        .args(args);
    c
}

/// The journal files left in a state directory (`faults/*.json`).
fn journals(state: &Path) -> Vec<String> {
    std::fs::read_dir(state.join("faults"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether a shim log line is a request that creates or changes something (`RTM_NEW*`,
/// `RTM_SET*`), as opposed to a delete (`RTM_DEL*`, 1 mod 4).
fn creates(line: &str) -> bool {
    line.rsplit(' ')
        .next()
        .and_then(|t| t.parse::<u16>().ok())
        .is_some_and(|t| t & 3 != 1)
}

/// Walks one inject through every rtnetlink change request it makes, refusing each in turn.
/// First a clean run counts them (the log holds exactly the apply's once the fault reports
/// in, since its revert waits for the signal). Then, for every n, an inject with the nth one
/// refused: a refused step that creates or changes something must fail the inject, which says
/// it rolled back and leaves the namespace and the journal directory exactly as they were; a
/// refused delete (the apply clearing what a dead agent may have left) may be tolerated, and
/// then the fault is in force and its revert leaves the namespace as it was.
fn refuse_each_step(net: &VethPair, shim: &Path, what: &str, args: &[&str]) {
    let baseline = netns_state(&net.a);
    let state = TempDir::new("chof");
    let log = state.0.join("netlink.log");
    let preload = shim.to_str().expect("utf-8");
    let logs = log.to_str().expect("utf-8");
    let mut agent = AgentProcess::from_command(inject_cmd(
        &net.a,
        &state.0,
        &[("LD_PRELOAD", preload), ("CHAOS_FAIL_LOG", logs)],
        args,
    ));
    agent.expect_injected();
    let steps = shim_log(&log);
    assert!(
        steps.iter().all(|l| l.contains(" passed ")),
        "{what}: {steps:?}"
    );
    let applied = netns_state(&net.a);
    assert_ne!(
        applied, baseline,
        "{what}: the clean inject changed nothing"
    );
    agent.signal(Signal::SIGTERM);
    let (status, _, err) = agent.wait(Duration::from_secs(20));
    assert!(status.success(), "{what}: clean run {status:?}\n{err}");
    assert_eq!(netns_state(&net.a), baseline, "{what}: after the clean run");
    let creating = steps.iter().filter(|l| creates(l)).count();
    assert!(
        creating >= 2,
        "{what}: {creating} creating requests of {steps:?}; the walk needs a step after the first"
    );
    eprintln!(
        "{what}: {} rtnetlink change requests: {steps:?}",
        steps.len()
    );
    for (i, step) in steps.iter().enumerate() {
        let n = i + 1;
        std::fs::remove_file(&log).ok();
        let nth = n.to_string();
        let mut agent = AgentProcess::from_command(inject_cmd(
            &net.a,
            &state.0,
            &[
                ("LD_PRELOAD", preload),
                ("CHAOS_FAIL_LOG", logs),
                ("CHAOS_FAIL_NTH", &nth),
            ],
            args,
        ));
        let injected = agent.line_or_exit("injected ", Duration::from_secs(30));
        let seen = shim_log(&log);
        assert!(
            seen.iter().any(|l| l.starts_with(&format!("{n} refused"))),
            "{what}: step {n} ({step}) was never asked for: {seen:?}"
        );
        if injected.is_some() {
            assert!(
                !creates(step),
                "{what}: step {n} ({step}) refused, yet the fault was injected"
            );
            assert_eq!(
                netns_state(&net.a),
                applied,
                "{what}: with step {n} ({step}) refused, the fault is not what a clean inject makes"
            );
            agent.signal(Signal::SIGTERM);
        }
        let (status, out, err) = agent.wait(Duration::from_secs(20));
        if injected.is_none() {
            assert!(
                !status.success() && status.signal().is_none(),
                "{what}: step {n} ({step}) refused: {status:?}\n{out:?}\n{err}"
            );
            assert!(
                err.contains("rolled back") && !err.contains("rollback incomplete"),
                "{what}: step {n} ({step}): {err}"
            );
        } else {
            assert!(status.success(), "{what}: step {n}: {status:?}\n{err}");
        }
        assert_eq!(
            netns_state(&net.a),
            baseline,
            "{what}: step {n} ({step}) of {} refused left the namespace changed\n{err}",
            steps.len()
        );
        assert_eq!(journals(&state.0), Vec::<String>::new(), "{what}: step {n}");
    }
}

#[test]
fn every_netlink_step_refused_mid_apply_is_rolled_back() {
    let net = VethPair::new(221);
    let shim = netlink_refuse_shim(Path::new(env!("CARGO_TARGET_TMPDIR")));
    // cls_bpf on both hooks: the clsact, then a filter per direction.
    refuse_each_step(
        &net,
        &shim,
        "loss, netlink attach, both directions",
        &[
            "--loss",
            "0.5",
            "--direction",
            "both",
            "--attach-mode",
            "netlink",
            "--iface",
            &net.a_if,
            "--ttl",
            "60s",
        ],
    );
    // The longest apply: a root htb with its class for egress, an IFB with its own htb, a
    // clsact and a mirred redirect for ingress, the IFB brought up.
    refuse_each_step(
        &net,
        &shim,
        "rate, both directions",
        &[
            "--rate",
            "20mbit",
            "--direction",
            "both",
            "--iface",
            &net.a_if,
            "--ttl",
            "60s",
        ],
    );
}

/// A tmpfs mounted on a directory of its own, unmounted on drop.
struct Tmpfs(TempDir);

impl Tmpfs {
    fn new(opts: &str) -> Self {
        let dir = TempDir::new("chfs");
        assert!(
            sh_ok(&format!(
                "mount -t tmpfs -o {opts} chaos-test {}",
                dir.str()
            )),
            "mount tmpfs"
        );
        Self(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = sh(&format!("umount -l {} 2>/dev/null || true", self.0.str()));
    }
}

/// An inject whose journal cannot be written: refused with a line that says so, and nothing
/// of it in the kernel (the journal comes before every change).
fn refused_without_a_journal(net: &VethPair, state: &Path, what: &str) {
    let baseline = netns_state(&net.a);
    let out = inject_cmd(
        &net.a,
        state,
        &[],
        &["--loss", "1", "--iface", &net.a_if, "--ttl", "30s"],
    )
    .output()
    .expect("run agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: {}", text(&out));
    let first = err
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    assert!(
        ["journal", "state", "Read-only", "No space"]
            .iter()
            .any(|w| first.contains(w)),
        "{what}: the error does not name the cause: {}",
        text(&out)
    );
    assert_eq!(netns_state(&net.a), baseline, "{what}: {}", text(&out));
    assert!(
        chaos_testing::attached_programs(&net.a, &net.a_if).is_empty(),
        "{what}"
    );
}

#[test]
fn a_read_only_or_full_state_dir_refuses_with_nothing_applied() {
    let net = VethPair::new(222);
    // Read-only: the agent cannot even lay out its directory.
    let ro = Tmpfs::new("size=1m");
    assert!(sh_ok(&format!("mount -o remount,ro {}", ro.0.str())));
    refused_without_a_journal(&net, &ro.0.0, "read-only state dir");
    // Read-only after the agent laid it out once (a disk remounted ro under a running host).
    let later = Tmpfs::new("size=1m");
    let out = inject_cmd(
        &net.a,
        &later.0.0,
        &[],
        &["--loss", "0.01", "--iface", &net.a_if, "--ttl", "1s"],
    )
    .output()
    .expect("run agent");
    assert!(out.status.success(), "{}", text(&out));
    assert!(sh_ok(&format!("mount -o remount,ro {}", later.0.str())));
    refused_without_a_journal(&net, &later.0.0, "state dir remounted read-only");
    // Full: every block taken, so no journal record can be written.
    let full = Tmpfs::new("size=256k");
    let out = inject_cmd(
        &net.a,
        &full.0.0,
        &[],
        &["--loss", "0.01", "--iface", &net.a_if, "--ttl", "1s"],
    )
    .output()
    .expect("run agent");
    assert!(out.status.success(), "{}", text(&out));
    sh(&format!(
        "dd if=/dev/zero of={}/fill bs=4k 2>/dev/null || true",
        full.0.str()
    ));
    refused_without_a_journal(&net, &full.0.0, "full state dir");
}

#[test]
fn foreign_filters_and_qdiscs_added_during_a_fault_are_kept_on_revert() {
    let net = VethPair::new(223);
    let dev = &net.a_if;
    let state = TempDir::new("chof");
    // A loss fault on the netlink path: the agent creates the clsact and its filters.
    let mut agent = AgentProcess::from_command(inject_cmd(
        &net.a,
        &state.0,
        &[],
        &[
            "--loss",
            "0.5",
            "--attach-mode",
            "netlink",
            "--direction",
            "both",
            "--iface",
            dev,
            "--ttl",
            "60s",
        ],
    ));
    agent.expect_injected();
    // Someone else's filters, on the clsact the agent made, on both hooks.
    for hook in ["ingress", "egress"] {
        net.a.exec(
            "tc",
            [
                "filter",
                "add",
                "dev",
                dev,
                hook,
                "pref",
                "7",
                "protocol",
                "ip",
                "u32",
                "match",
                "ip",
                "dst",
                "10.250.0.9/32",
                "classid",
                "1:1",
            ],
        );
    }
    agent.signal(Signal::SIGTERM);
    let (status, _, err) = agent.wait(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{err}");
    for hook in ["ingress", "egress"] {
        let f = tc_filters(&net.a, dev, hook);
        let kinds: Vec<&str> = f
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["kind"].as_str())
            .collect();
        assert!(
            kinds.contains(&"u32") && !kinds.contains(&"bpf"),
            "{hook}: the foreign filter must stay, ours must go: {f}"
        );
    }
    assert!(chaos_testing::tc_qdiscs(&net.a, dev).contains("clsact"));
    net.a.exec("tc", ["qdisc", "del", "dev", dev, "clsact"]);

    // A shaping fault replaces the root; someone adds an ingress qdisc of their own meanwhile,
    // or, where the agent's classifier made a clsact (the netlink path: the guest), a filter
    // on that clsact (the two qdiscs share handle ffff:).
    let before = chaos_testing::tc_qdiscs(&net.a, dev);
    let mut agent = AgentProcess::from_command(inject_cmd(
        &net.a,
        &state.0,
        &[],
        &["--rate", "20mbit", "--iface", dev, "--ttl", "60s"],
    ));
    agent.expect_injected();
    let on_clsact = chaos_testing::tc_qdiscs(&net.a, dev).contains("\"clsact\"");
    if on_clsact {
        net.a.exec(
            "tc",
            [
                "filter",
                "add",
                "dev",
                dev,
                "ingress",
                "pref",
                "7",
                "protocol",
                "ip",
                "u32",
                "match",
                "ip",
                "dst",
                "10.250.0.9/32",
                "classid",
                "1:1",
            ],
        );
    } else {
        net.a.exec(
            "tc",
            ["qdisc", "add", "dev", dev, "handle", "ffff:", "ingress"],
        );
    }
    agent.signal(Signal::SIGTERM);
    let (status, _, err) = agent.wait(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{err}");
    let after = chaos_testing::tc_qdiscs(&net.a, dev);
    if on_clsact {
        let f = tc_filters(&net.a, dev, "ingress");
        assert!(
            after.contains("\"clsact\"") && f.to_string().contains("u32"),
            "theirs must stay: {after} {f}"
        );
        net.a.exec("tc", ["qdisc", "del", "dev", dev, "clsact"]);
    } else {
        assert!(after.contains("\"ingress\""), "theirs must stay: {after}");
        net.a.exec("tc", ["qdisc", "del", "dev", dev, "ingress"]);
    }
    assert_eq!(
        chaos_testing::tc_qdiscs(&net.a, dev),
        before,
        "the root is restored"
    );
    assert_eq!(journals(&state.0), Vec::<String>::new());
}
