//! An `LD_PRELOAD` shim that makes the kernel refuse one rtnetlink change request of the agent
//! (`shim/netlink_refuse.c`), and an outside view of a namespace to compare before and after.
//!
//! With it a test walks an apply step by step: it counts the change requests of one clean
//! inject, then injects again once per step with that step refused, and checks each time that
//! the agent says so and the namespace is as it was. Nothing in the agent knows about it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::NetNs;

const SOURCE: &str = include_str!("../shim/netlink_refuse.c");

/// Compiles the shim into `dir` (an integration test's `CARGO_TARGET_TMPDIR`) with the
/// machine's `cc` and returns the shared object's path. glibc only: the VM guest's static
/// binaries cannot be preloaded.
#[must_use]
pub fn netlink_refuse_shim(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("shim dir");
    let src = dir.join("netlink_refuse.c");
    let so = dir.join(format!("netlink_refuse-{}.so", std::process::id()));
    std::fs::write(&src, SOURCE).expect("write shim source");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc netlink_refuse.c: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    so
}

/// The lines of a shim log (`N passed|refused type T`) that were counted, in order.
#[must_use]
pub fn shim_log(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Everything of `ns` a fault could change, as `ip`, `tc` and `bpftool` see it: its links
/// (name, kind, state), every qdisc and class of every link, the filters of both clsact hooks
/// of every link, and the system's tcx links (counted). Sorted lines, for an exact comparison;
/// the agent's IFBs (`chaos-ifb<id>`) are shown as `chaos-ifb*`.
#[must_use]
pub fn netns_state(ns: &NetNs) -> Vec<String> {
    // Not `NetNs::exec`, which panics: `tc filter show` of a hook without clsact fails, and
    // that is "no filters".
    let json = |args: &[&str]| -> serde_json::Value {
        let out = Command::new(args[0])
            .args(["-n", &ns.name])
            .args(&args[1..])
            .output()
            .expect("run ip/tc");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Array(Vec::new()))
    };
    let items = |v: serde_json::Value| v.as_array().cloned().unwrap_or_default();
    let mut lines = Vec::new();
    let devices = items(json(&["ip", "-j", "-d", "link", "show"]));
    for l in &devices {
        let name = l["ifname"].as_str().unwrap_or_default().to_owned();
        // The agent's IFBs are named after their fault's random id.
        let shown = if name.starts_with("chaos-ifb") {
            "chaos-ifb*"
        } else {
            &name
        };
        lines.push(format!(
            "link {shown} {} {} mtu {}",
            l["linkinfo"]["info_kind"], l["operstate"], l["mtu"]
        ));
        for q in items(json(&["tc", "-j", "qdisc", "show", "dev", &name])) {
            let mut q = q;
            if let Some(o) = q.get_mut("options").and_then(|o| o.as_object_mut()) {
                // A packet counter among the options, which no restore can reproduce.
                o.remove("direct_packets_stat");
            }
            lines.push(format!(
                "qdisc {shown} {} {} {} {}",
                q["kind"], q["handle"], q["parent"], q["options"]
            ));
        }
        for c in items(json(&["tc", "-j", "class", "show", "dev", &name])) {
            lines.push(format!(
                "class {shown} {} {} {}",
                c["class"], c["handle"], c["parent"]
            ));
        }
        for hook in ["ingress", "egress"] {
            for f in items(json(&["tc", "-j", "filter", "show", "dev", &name, hook])) {
                lines.push(format!(
                    "filter {shown} {hook} {} {} {}",
                    f["kind"], f["pref"], f["options"]["bpf_name"]
                ));
            }
        }
    }
    let tcx = crate::sh("bpftool -j link show 2>/dev/null || echo []");
    let tcx: serde_json::Value = serde_json::from_str(&tcx).unwrap_or_default();
    for l in items(tcx) {
        // Counted, not named: program ids are new with every agent.
        if l["type"] == 11 || l["type"] == "tcx" {
            lines.push("tcx-link".to_owned());
        }
    }
    lines.sort();
    lines
}
