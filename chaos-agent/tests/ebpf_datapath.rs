//! The kernel programs on a real datapath: the agent's `Datapath` joined (tcx) to a veth inside
//! a test namespace, judged with ping / iperf3 / bpftool (independent tools), not with
//! `BPF_PROG_TEST_RUN`.
//!
//! Checks what `BPF_PROG_TEST_RUN` cannot: that `TC_ACT_UNSPEC` really lets traffic continue
//! under tcx, that `bpf_redirect(0, 0)` really frees the packet, and that it makes TCP count
//! retransmissions where `TC_ACT_SHOT` on egress does not (design.md, "Loss semantics").
//! Needs root; run with `cargo test -p chaos-agent --test ebpf_datapath -- --test-threads=1`.
#![allow(
    clippy::missing_panics_doc,
    reason = "test helpers panic with context by design"
)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chaos_agent::kernel::bpf::table::{PROTO_ICMP, PROTO_TCP, Rules};
use chaos_agent::kernel::bpf::{AttachMode, Counters, Datapath};
use chaos_agent::kernel::tc::Hook;
use chaos_common::{F_EGRESS_WIRE_DROP, FaultSlot, names, probability_to_threshold};
use chaos_testing::{VethPair, in_netns};

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Installs a fault in a new slot of `dp` and joins it (tcx) to `hooks` of `a_if`, inside
/// namespace `a`. setns applies to the calling thread only, and the attach resolves the
/// interface in the current namespace, so this runs in a throwaway thread that enters it; the
/// links belong to `dp` (releasing the slot, or dropping the datapath, detaches them).
fn join(pair: &VethPair, dp: &Datapath, cfg: FaultSlot, rules: &Rules, hooks: &[Hook]) -> u32 {
    let (dp, rules, hooks, ifname) = (dp.clone(), rules.clone(), hooks.to_vec(), pair.a_if.clone());
    in_netns(&pair.a, move || {
        let ifindex = nix::net::if_::if_nametoindex(ifname.as_str())
            .unwrap_or_else(|e| panic!("ifindex of {ifname}: {e}"));
        let slot = dp.alloc_slot().expect("a free slot");
        dp.install(slot, &rules, &cfg, None)
            .unwrap_or_else(|e| panic!("install slot {slot}: {e}"));
        for hook in hooks {
            dp.join_hook(slot, ifindex, &ifname, hook, AttachMode::Tcx)
                .unwrap_or_else(|e| panic!("slot {slot} joins {ifname} {}: {e}", hook.as_str()));
        }
        slot
    })
}

fn counters(dp: &Datapath, slot: u32) -> Counters {
    dp.counters(slot)
        .unwrap_or_else(|e| panic!("counters of slot {slot}: {e}"))
}

fn release(dp: &Datapath, slot: u32) {
    let removed = dp
        .release_slot(slot)
        .unwrap_or_else(|e| panic!("release slot {slot}: {e}"));
    assert!(removed, "slot {slot} was not in use");
}

/// The names of the programs of `ids` that have a link, per `bpftool -j link show` and
/// `bpftool -j prog show`, sorted. (bpftool before 7.3 lists tcx links only there, as type 11
/// with their program but not their interface, and not at all in `net show`; the datapaths of
/// these tests attach to one interface only.)
fn linked(ids: &[u32]) -> Vec<String> {
    let json = |args: &[&str]| -> serde_json::Value {
        let out = chaos_testing::run("bpftool", args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bpftool {args:?}: {e}"))
    };
    let links = json(&["-j", "link", "show"]);
    let mut v: Vec<String> = links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["prog_id"].as_u64())
        .filter(|id| ids.contains(&(*id as u32)))
        .map(|id| {
            let prog = json(&["-j", "prog", "show", "id", &id.to_string()]);
            prog["name"]
                .as_str()
                .unwrap_or_else(|| panic!("no name in {prog}"))
                .to_owned()
        })
        .collect();
    v.sort();
    v
}

/// Whether `count` pings from `a` to `b` all got an answer (-W 1: one second per reply).
fn ping_ok(pair: &VethPair, count: u32) -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.a.name,
            "ping",
            "-n",
            "-q",
            "-i",
            "0.2",
            "-W",
            "1",
        ])
        .args(["-c", &count.to_string(), &pair.b_ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A fault slot whose deadline is two minutes away.
fn armed() -> FaultSlot {
    FaultSlot {
        expires_at_ns: monotonic_ns() + 120_000_000_000,
        ..FaultSlot::default()
    }
}

/// These tests attach with tcx links on purpose (the netlink path is covered by tests/loss.rs).
/// Whether the kernel has tcx is asked of the kernel (a tcx link of a trivial program of
/// chaos-testing's), not of the agent's own version check.
fn tcx_or_skip(test: &str) -> bool {
    chaos_testing::require(test, chaos_testing::Feature::Tcx)
}

/// Whether the kernel still knows program `id` (`bpftool prog show id`).
fn program_exists(id: u32) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn tcx_drop_pass_through_and_ttl() {
    if !tcx_or_skip("tcx_drop_pass_through_and_ttl") {
        return;
    }
    let pair = VethPair::new(201);
    assert!(ping_ok(&pair, 2), "baseline ping");
    let dp = Datapath::new();
    let icmp = Rules {
        protos: PROTO_ICMP,
        ..Rules::default()
    };
    let drop_icmp = FaultSlot {
        loss_threshold: u32::MAX,
        ..armed()
    };

    // Egress wire drop of ICMP: every echo request vanishes after the stack "sent" it.
    let egress = join(
        &pair,
        &dp,
        FaultSlot {
            flags: F_EGRESS_WIRE_DROP,
            ..drop_icmp
        },
        &icmp,
        &[Hook::Egress],
    );
    let ids = dp.program_ids();
    assert_eq!(ids.len(), 2, "program ids {ids:?}");
    assert_eq!(linked(&ids), [names::PROG_TC_EGRESS]);
    assert!(!ping_ok(&pair, 3), "ping through a 100% egress drop");
    assert!(counters(&dp, egress).egress.dropped >= 3);

    // Ingress drop: the replies are lost instead. The new fault joins first, then the egress
    // one leaves, and the egress hook it leaves empty is detached.
    let ingress = join(&pair, &dp, drop_icmp, &icmp, &[Hook::Ingress]);
    release(&dp, egress);
    assert_eq!(linked(&ids), [names::PROG_TC_INGRESS]);
    assert!(!ping_ok(&pair, 3), "ping through a 100% ingress drop");
    assert!(counters(&dp, ingress).ingress.dropped >= 3);

    // Armed but not acting (p = 0): TC_ACT_UNSPEC must let everything through under tcx.
    let idle = join(
        &pair,
        &dp,
        FaultSlot {
            loss_threshold: 0,
            ..drop_icmp
        },
        &icmp,
        &Hook::ALL,
    );
    release(&dp, ingress);
    assert_eq!(
        linked(&ids),
        [names::PROG_TC_EGRESS, names::PROG_TC_INGRESS]
    );
    assert!(ping_ok(&pair, 3), "ping with an armed p=0 fault");
    // ... and the packets did go through the walk: matched in both directions, none dropped.
    let c = counters(&dp, idle);
    assert!(
        c.egress.matched >= 3 && c.ingress.matched >= 3 && c.total().dropped == 0,
        "{c:?}"
    );

    // Deadline in the past: the kernel stops faulting on its own.
    dp.write_slot(idle, |s| {
        *s = FaultSlot {
            flags: s.flags | F_EGRESS_WIRE_DROP,
            expires_at_ns: monotonic_ns().saturating_sub(1),
            ..drop_icmp
        };
    })
    .expect("rewrite the slot");
    assert!(ping_ok(&pair, 3), "ping after the deadline");
    assert!(counters(&dp, idle).egress.expired >= 3);

    // Detached on release: the fault acts again (so that passing traffic after the release
    // proves the detach, not an idle fault), then its slot goes and with it both hooks.
    dp.set_expiry(idle, monotonic_ns() + 120_000_000_000)
        .expect("set expiry");
    assert!(!ping_ok(&pair, 1), "ping through the re-armed drop");
    release(&dp, idle);
    assert!(dp.attached().is_empty(), "{:?}", dp.attached());
    assert_eq!(linked(&ids), Vec::<String>::new(), "bpftool link show");
    assert!(ping_ok(&pair, 2), "ping after detach");
    // The programs live as long as the datapath: gone from the kernel once it is dropped
    // (freed when the last fd closes; polled, bounded, in case the release is deferred).
    assert!(
        ids.iter().all(|&id| program_exists(id)),
        "loaded while held"
    );
    drop(dp);
    let deadline = Instant::now() + Duration::from_secs(5);
    while ids.iter().any(|&id| program_exists(id)) {
        assert!(
            Instant::now() < deadline,
            "programs {ids:?} still loaded 5 s after the datapath was dropped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs an 16 MB iperf3 transfer a -> b with `cfg` on TCP at a's egress and returns
/// (retransmits reported by the sender, eBPF drops).
fn tcp_transfer(pair: &VethPair, cfg: FaultSlot) -> (u64, u64) {
    let mut server = pair
        .b
        .command("iperf3")
        .args(["-s", "-1", "-B", &pair.b_ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    // Wait until it listens (a client that comes too early fails the whole transfer).
    for _ in 0..50 {
        if !pair.b.sh("ss -Hltn 'sport = :5201'").trim().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let dp = Datapath::new();
    let tcp = Rules {
        protos: PROTO_TCP,
        ..Rules::default()
    };
    let slot = join(pair, &dp, cfg, &tcp, &[Hook::Egress]);
    let out = pair
        .a
        .command("iperf3")
        .args(["-c", &pair.b_ip, "-n", "16M", "-J"])
        .output()
        .expect("iperf3 client");
    let _ = server.wait();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 json");
    let retrans = json["end"]["sum_sent"]["retransmits"]
        .as_u64()
        .unwrap_or_else(|| panic!("no retransmits in {json}"));
    let drops = counters(&dp, slot).egress.dropped;
    // Dropping the datapath detaches its programs: the next transfer starts clean.
    (retrans, drops)
}

#[test]
fn egress_wire_drop_is_real_loss_for_tcp() {
    if !tcx_or_skip("egress_wire_drop_is_real_loss_for_tcp") {
        return;
    }
    let pair = VethPair::new(202);
    let base = FaultSlot {
        loss_threshold: probability_to_threshold(0.05),
        ..armed()
    };
    let (shot_retrans, shot_drops) = tcp_transfer(&pair, base);
    let (wire_retrans, wire_drops) = tcp_transfer(
        &pair,
        FaultSlot {
            flags: F_EGRESS_WIRE_DROP,
            ..base
        },
    );
    println!(
        "egress 5% loss, 16 MB TCP: TC_ACT_SHOT {shot_drops} drops -> {shot_retrans} retransmits; \
         bpf_redirect(0) {wire_drops} drops -> {wire_retrans} retransmits"
    );
    assert!(shot_drops > 0 && wire_drops > 0);
    assert!(
        wire_retrans > shot_retrans,
        "wire drop must look like loss to TCP"
    );
}
