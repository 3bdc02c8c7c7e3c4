//! The kernel programs on a real datapath: attached with tcx to a veth inside a test namespace,
//! judged with ping / iperf3 (independent tools), not with `BPF_PROG_TEST_RUN`.
//!
//! Checks what `BPF_PROG_TEST_RUN` cannot: that `TC_ACT_UNSPEC` really lets traffic continue
//! under tcx, that `bpf_redirect(0, 0)` really frees the packet, and that it makes TCP count
//! retransmissions where `TC_ACT_SHOT` on egress does not (design.md, "Loss semantics").
//! Needs root; run with `cargo test -p chaos-agent --test ebpf_datapath -- --test-threads=1`.
#![allow(
    clippy::missing_panics_doc,
    reason = "test helpers panic with context by design"
)]

use std::os::fd::AsRawFd as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray},
    programs::{SchedClassifier, TcAttachType},
};
use chaos_agent::testing::{NetNs, VethPair};
use chaos_common::{
    Counter, Dir, F_ARMED, F_EGRESS, F_EGRESS_WIRE_DROP, F_INGRESS, FaultConfig, PROTO_ICMP,
    PROTO_TCP, counter_index, names, probability_to_threshold,
};

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Loads the object and attaches both programs (tcx on >= 6.6) to `ifname` inside `ns`. The
/// links belong to the returned `Ebpf`: dropping it detaches them.
fn attach_in(ns: &NetNs, ifname: &str, cfg: FaultConfig) -> Ebpf {
    let path = ns.path();
    let ifname = ifname.to_owned();
    // setns applies to the calling thread only, so the attach (which resolves the interface name
    // in the current namespace) happens in a throwaway thread.
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("open netns");
        // SAFETY: plain syscall on a valid fd.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let mut ebpf = EbpfLoader::new()
            .load(chaos_agent::EBPF_OBJECT)
            .expect("load");
        set_config(&mut ebpf, &cfg);
        for (name, ty) in [
            (names::PROG_TC_INGRESS, TcAttachType::Ingress),
            (names::PROG_TC_EGRESS, TcAttachType::Egress),
        ] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .expect("program")
                .try_into()
                .expect("cls");
            prog.load().expect("verifier");
            prog.attach(&ifname, ty).expect("attach");
        }
        ebpf
    })
    .join()
    .expect("attach thread")
}

fn set_config(ebpf: &mut Ebpf, cfg: &FaultConfig) {
    let mut a: Array<&mut MapData, FaultConfig> =
        Array::try_from(ebpf.map_mut(names::MAP_CONFIG).expect("map")).expect("array");
    a.set(0, cfg, 0).expect("set");
}

fn counter(ebpf: &Ebpf, dir: Dir, c: Counter) -> u64 {
    let a: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(ebpf.map(names::MAP_COUNTERS).expect("map")).expect("pca");
    a.get(&counter_index(dir, c), 0).expect("get").iter().sum()
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

fn armed(dirs: u32) -> FaultConfig {
    FaultConfig {
        flags: F_ARMED | dirs,
        expires_at_ns: monotonic_ns() + 120_000_000_000,
        ..FaultConfig::default()
    }
}

/// These tests attach with tcx links on purpose (the netlink path is covered by tests/loss.rs).
fn tcx_or_skip(test: &str) -> bool {
    let ok = chaos_agent::ebpf::attach::kernel_has_tcx();
    if !ok {
        chaos_agent::testing::skip(
            test,
            "kernel has no tcx (< 6.6); tests/loss.rs covers the netlink path",
        );
    }
    ok
}

#[test]
fn tcx_drop_pass_through_and_ttl() {
    if !tcx_or_skip("tcx_drop_pass_through_and_ttl") {
        return;
    }
    let pair = VethPair::new(201);
    assert!(ping_ok(&pair, 2), "baseline ping");

    // Egress wire drop of ICMP: every echo request vanishes after the stack "sent" it.
    let drop_icmp = FaultConfig {
        flags: armed(F_EGRESS).flags | F_EGRESS_WIRE_DROP,
        protos: PROTO_ICMP,
        loss_threshold: u32::MAX,
        ..armed(0)
    };
    let mut ebpf = attach_in(&pair.a, &pair.a_if, drop_icmp);
    assert!(!ping_ok(&pair, 3), "ping through a 100% egress drop");
    assert!(counter(&ebpf, Dir::Egress, Counter::Dropped) >= 3);
    // Ingress drop: the replies are lost instead.
    set_config(
        &mut ebpf,
        &FaultConfig {
            flags: armed(F_INGRESS).flags,
            ..drop_icmp
        },
    );
    assert!(!ping_ok(&pair, 3), "ping through a 100% ingress drop");
    assert!(counter(&ebpf, Dir::Ingress, Counter::Dropped) >= 3);

    // Armed but not acting (p = 0): TC_ACT_UNSPEC must let everything through under tcx.
    set_config(
        &mut ebpf,
        &FaultConfig {
            loss_threshold: 0,
            flags: armed(F_INGRESS | F_EGRESS).flags,
            ..drop_icmp
        },
    );
    assert!(ping_ok(&pair, 3), "ping with an armed p=0 fault");

    // Deadline in the past: the kernel stops faulting on its own.
    set_config(
        &mut ebpf,
        &FaultConfig {
            flags: armed(F_INGRESS | F_EGRESS).flags | F_EGRESS_WIRE_DROP,
            expires_at_ns: monotonic_ns().saturating_sub(1),
            ..drop_icmp
        },
    );
    assert!(ping_ok(&pair, 3), "ping after the deadline");
    assert!(counter(&ebpf, Dir::Egress, Counter::Expired) >= 3);

    // Detached on drop.
    set_config(&mut ebpf, &drop_icmp);
    drop(ebpf);
    assert!(ping_ok(&pair, 2), "ping after detach");
}

/// Runs an 16 MB iperf3 transfer a -> b and returns (retransmits reported by the sender, eBPF
/// drops).
fn tcp_transfer(pair: &VethPair, cfg: FaultConfig) -> (u64, u64) {
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
    let ebpf = attach_in(&pair.a, &pair.a_if, cfg);
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
    let drops = counter(&ebpf, Dir::Egress, Counter::Dropped);
    (retrans, drops)
}

#[test]
fn egress_wire_drop_is_real_loss_for_tcp() {
    if !tcx_or_skip("egress_wire_drop_is_real_loss_for_tcp") {
        return;
    }
    let pair = VethPair::new(202);
    let base = FaultConfig {
        flags: armed(F_EGRESS).flags,
        protos: PROTO_TCP,
        loss_threshold: probability_to_threshold(0.05),
        ..armed(0)
    };
    let (shot_retrans, shot_drops) = tcp_transfer(&pair, base);
    let (wire_retrans, wire_drops) = tcp_transfer(
        &pair,
        FaultConfig {
            flags: base.flags | F_EGRESS_WIRE_DROP,
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
