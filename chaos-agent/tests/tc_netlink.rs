//! The tc library against the real kernel (root). Each test builds a veth pair in fresh network
//! namespaces, drives `chaos_agent::kernel::tc` inside namespace `a`, and judges the result with
//! iproute2 (`tc -j ...`), never with the library under test.
//!
//! Run: `cargo test -p chaos-agent --test tc_netlink -- --test-threads=1`

use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;

use chaos_agent::kernel::tc::{
    Distribution, HtbClassOptions, HtbOptions, NetemLoss, NetemOptions, NetemRate, NotRestorable,
    OUR_MAJOR, OUR_ROOT, Qdisc, TC_H_INGRESS_HANDLE, TC_H_ROOT, TbfLimit, TbfOptions, Tc, TcError,
    tc_handle,
};
use chaos_testing::{Feature, NetNs, VethPair, require, require_absent};
use serde_json::Value;

/// Runs `f` with a [`Tc`] whose socket lives in `ns`: a dedicated thread enters the namespace
/// (setns affects only the calling thread) and runs its own current-thread runtime, so the
/// namespace switch never leaks into other tests' threads.
fn in_ns<F, Fut, T>(ns: &NetNs, f: F) -> T
where
    F: FnOnce(Tc) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let path = ns.path();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move { f(Tc::new().expect("rtnetlink")).await })
    })
    .join()
    .expect("netns thread panicked")
}

fn ifindex(ns: &NetNs, ifname: &str) -> u32 {
    ns.sh(&format!("cat /sys/class/net/{ifname}/ifindex"))
        .trim()
        .parse()
        .expect("ifindex")
}

fn qdisc_json(ns: &NetNs, dev: &str) -> Vec<Value> {
    serde_json::from_str(&ns.sh(&format!("tc -j qdisc show dev {dev}"))).expect("tc -j qdisc show")
}

/// `tc -j qdisc show` and `tc -j class show` (iproute2 6.1 prints htb classes as text even with
/// -j), the exact text a restore must reproduce.
///
/// One field is masked: htb's `direct_packets_stat` is a packet counter that iproute2 prints
/// among the options. Packets that arrive while a restored htb has no classes yet (IPv6 ND on a
/// fresh veth is enough) go to the direct queue and bump it; it is not configuration.
fn tc_state(ns: &NetNs, dev: &str) -> String {
    let text = ns.sh(&format!(
        "tc -j qdisc show dev {dev}; echo; tc -j class show dev {dev}"
    ));
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find("\"direct_packets_stat\":") {
        let (head, tail) = rest.split_at(i + "\"direct_packets_stat\":".len());
        out.push_str(head);
        out.push('N');
        rest = tail.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Installs an agent-style fault tree: htb root `c4a0:` whose default class 1 is unshaped and
/// class 2 has a tbf leaf (netem where the kernel has it would sit there instead).
async fn install_agent_tree(tc: &Tc, ifindex: u32) -> Result<(), TcError> {
    tc.replace_qdisc(
        ifindex,
        TC_H_ROOT,
        OUR_ROOT,
        &Qdisc::Htb(HtbOptions {
            default_class: 1,
            ..HtbOptions::default()
        }),
    )
    .await?;
    tc.add_htb_class(
        ifindex,
        OUR_ROOT,
        tc_handle(OUR_MAJOR, 1),
        &HtbClassOptions::rate(1_250_000_000),
    )
    .await?;
    tc.add_htb_class(
        ifindex,
        OUR_ROOT,
        tc_handle(OUR_MAJOR, 2),
        &HtbClassOptions::rate(1_250_000_000),
    )
    .await?;
    let tbf = TbfOptions {
        rate: 125_000,
        burst: 10_240,
        limit: TbfLimit::Latency(ms(50)),
    };
    tc.add_qdisc(
        ifindex,
        tc_handle(OUR_MAJOR, 2),
        tc_handle(0xC4A1, 0),
        &Qdisc::Tbf(tbf),
    )
    .await
}

#[test]
fn tbf_parameters_read_back() {
    let p = VethPair::new(201);
    let idx = ifindex(&p.a, &p.a_if);
    let tbf = TbfOptions {
        rate: 125_000,
        burst: 10 * 1024,
        limit: TbfLimit::Latency(ms(50)),
    };
    in_ns(&p.a, move |tc| async move {
        tc.add_qdisc(idx, TC_H_ROOT, OUR_ROOT, &Qdisc::Tbf(tbf))
            .await
    })
    .unwrap();
    let q = qdisc_json(&p.a, &p.a_if);
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0]["kind"], "tbf");
    assert_eq!(q[0]["handle"], "c4a0:");
    assert_eq!(q[0]["root"], true);
    assert_eq!(q[0]["options"]["rate"], 125_000);
    assert_eq!(q[0]["options"]["burst"], 10_240);
    assert_eq!(q[0]["options"]["lat"], 50_000);
    // And the agent recognises its own root (crash cleanup).
    let ours = in_ns(&p.a, move |tc| async move { tc.find_ours(idx).await }).unwrap();
    assert_eq!(
        ours.map(|o| (o.kind, o.handle)),
        Some(("tbf".to_owned(), OUR_ROOT))
    );
}

#[test]
fn htb_tree_reads_back() {
    let p = VethPair::new(202);
    let idx = ifindex(&p.a, &p.a_if);
    in_ns(&p.a, move |tc| async move {
        tc.add_qdisc(
            idx,
            TC_H_ROOT,
            OUR_ROOT,
            &Qdisc::Htb(HtbOptions {
                default_class: 1,
                r2q: 10,
                direct_qlen: Some(500),
            }),
        )
        .await?;
        let class = HtbClassOptions {
            rate: 1_250_000,
            ceil: Some(2_500_000),
            burst: Some(15 * 1024),
            cburst: Some(15 * 1024),
            prio: 1,
            quantum: 1514,
        };
        tc.add_htb_class(idx, OUR_ROOT, tc_handle(OUR_MAJOR, 1), &class)
            .await?;
        tc.add_htb_class(
            idx,
            OUR_ROOT,
            tc_handle(OUR_MAJOR, 0x20),
            &HtbClassOptions::rate(125_000),
        )
        .await
    })
    .unwrap();
    let q = qdisc_json(&p.a, &p.a_if);
    assert_eq!(q[0]["kind"], "htb");
    assert_eq!(q[0]["handle"], "c4a0:");
    assert_eq!(q[0]["options"]["r2q"], 10);
    assert_eq!(q[0]["options"]["default"], "0x1");
    assert_eq!(q[0]["options"]["direct_qlen"], 500);
    let classes = p.a.sh(&format!("tc class show dev {}", p.a_if));
    assert!(
        classes.contains(
            "class htb c4a0:1 root prio 1 rate 10Mbit ceil 20Mbit burst 15Kb cburst 15Kb"
        ),
        "{classes}"
    );
    assert!(
        classes.contains(
            "class htb c4a0:20 root prio 0 rate 1Mbit ceil 1Mbit burst 1600b cburst 1600b"
        ),
        "{classes}"
    );
    let detail =
        p.a.sh(&format!("tc -d class show dev {} classid c4a0:1", p.a_if));
    assert!(detail.contains("quantum 1514"), "{detail}");
}

#[test]
fn netem_without_module_names_it() {
    if !require_absent("netem_without_module_names_it", Feature::Qdisc("netem")) {
        return;
    }
    let p = VethPair::new(203);
    let idx = ifindex(&p.a, &p.a_if);
    let o = NetemOptions {
        delay: ms(100),
        ..NetemOptions::default()
    };
    let err = in_ns(&p.a, move |tc| async move {
        tc.add_qdisc(idx, TC_H_ROOT, OUR_ROOT, &Qdisc::Netem(o))
            .await
    })
    .expect_err("netem must fail on this kernel");
    match &err {
        TcError::QdiscUnsupported {
            kind,
            module,
            ifindex,
            ..
        } => {
            assert_eq!(kind, "netem");
            assert_eq!(module, "sch_netem");
            assert_eq!(*ifindex, idx);
        }
        other => panic!("expected QdiscUnsupported, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("sch_netem") && msg.contains("modprobe sch_netem"),
        "{msg}"
    );
    // A missing *parent* is not a missing module.
    let err = in_ns(&p.a, move |tc| async move {
        tc.add_qdisc(
            idx,
            tc_handle(0x1234, 1),
            tc_handle(0x1235, 0),
            &Qdisc::Netem(NetemOptions::default()),
        )
        .await
    })
    .expect_err("no parent");
    assert!(
        matches!(
            err,
            TcError::Netlink {
                errno: libc::ENOENT,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn netem_parameters_read_back() {
    if !require("netem_parameters_read_back", Feature::Qdisc("netem")) {
        return;
    }
    let p = VethPair::new(204);
    let idx = ifindex(&p.a, &p.a_if);
    let o = NetemOptions {
        delay: ms(100),
        jitter: ms(10),
        delay_correlation: 25.0,
        distribution: Distribution::Normal,
        loss: Some(NetemLoss::Random {
            percent: 1.0,
            correlation: 0.0,
        }),
        duplicate: 2.0,
        corrupt: 3.0,
        reorder: 5.0,
        reorder_correlation: 50.0,
        gap: 5,
        rate: Some(NetemRate {
            bytes_per_sec: 125_000,
            packet_overhead: 0,
            cell_size: 0,
            cell_overhead: 0,
        }),
        limit: 5000,
        ..NetemOptions::default()
    };
    in_ns(&p.a, move |tc| async move {
        tc.add_qdisc(idx, TC_H_ROOT, OUR_ROOT, &Qdisc::Netem(o))
            .await
    })
    .unwrap();
    let q = qdisc_json(&p.a, &p.a_if);
    let opt = &q[0]["options"];
    assert_eq!(q[0]["kind"], "netem");
    assert_eq!(opt["limit"], 5000, "{opt}");
    // iproute2 prints delays in seconds and probabilities as fractions of 1 (u32 / UINT32_MAX).
    approx(opt, &["delay", "delay"], 0.1);
    approx(opt, &["delay", "jitter"], 0.01);
    approx(opt, &["delay", "correlation"], 0.25);
    approx(opt, &["loss-random", "loss"], 0.01);
    approx(opt, &["duplicate", "duplicate"], 0.02);
    approx(opt, &["corrupt", "corrupt"], 0.03);
    approx(opt, &["reorder", "reorder"], 0.05);
    approx(opt, &["reorder", "correlation"], 0.5);
    approx(opt, &["rate", "rate"], 125_000.0);
    assert_eq!(opt["gap"], 5, "{opt}");
}

/// Asserts that the number at `path` in `v` is `want` (within float printing error).
fn approx(v: &Value, path: &[&str], want: f64) {
    let got = path.iter().fold(v, |v, k| &v[*k]).as_f64();
    assert!(
        got.is_some_and(|g| (g - want).abs() <= want.abs() * 1e-6 + 1e-9),
        "{path:?}: got {got:?}, want {want} in {v}"
    );
}

#[test]
fn netem_gemodel_reads_back() {
    if !require("netem_gemodel_reads_back", Feature::Qdisc("netem")) {
        return;
    }
    let p = VethPair::new(205);
    let idx = ifindex(&p.a, &p.a_if);
    let o = NetemOptions {
        delay: ms(10),
        loss: Some(NetemLoss::GilbertElliott {
            p: 1.0,
            r: 10.0,
            loss_bad: 70.0,
            loss_good: 0.1,
        }),
        ..NetemOptions::default()
    };
    in_ns(&p.a, move |tc| async move {
        tc.add_qdisc(idx, TC_H_ROOT, OUR_ROOT, &Qdisc::Netem(o))
            .await
    })
    .unwrap();
    let q = qdisc_json(&p.a, &p.a_if);
    let opt = &q[0]["options"];
    approx(opt, &["loss-gemodel", "p"], 0.01);
    approx(opt, &["loss-gemodel", "r"], 0.1);
    approx(opt, &["loss-gemodel", "1-h"], 0.7);
    approx(opt, &["loss-gemodel", "1-k"], 0.001);
}

/// Snapshot, install the agent's tree over it, restore, and require iproute2's view to be
/// byte-identical to the original.
fn round_trip(subnet: u8, setup: &str) {
    let p = VethPair::new(subnet);
    let dev = p.a_if.clone();
    if !setup.is_empty() {
        p.a.sh(&setup.replace("DEV", &dev));
    }
    let before = tc_state(&p.a, &dev);
    let idx = ifindex(&p.a, &dev);
    let tree = in_ns(&p.a, move |tc| async move { tc.snapshot(idx).await }).unwrap();
    // The snapshot survives the crash journal.
    let json = serde_json::to_string(&tree).unwrap();
    let tree: chaos_agent::kernel::tc::QdiscTree = serde_json::from_str(&json).unwrap();
    chaos_agent::kernel::tc::is_faithfully_restorable(&tree).unwrap();
    in_ns(
        &p.a,
        move |tc| async move { install_agent_tree(&tc, idx).await },
    )
    .unwrap();
    let during = tc_state(&p.a, &dev);
    assert!(
        during.contains("c4a0:"),
        "agent tree not installed: {during}"
    );
    assert_ne!(during, before);
    let t2 = tree.clone();
    in_ns(&p.a, move |tc| async move { tc.restore(&t2, false).await }).unwrap();
    assert_eq!(tc_state(&p.a, &dev), before, "setup: {setup}");
    // Restoring again is a no-op.
    in_ns(
        &p.a,
        move |tc| async move { tc.restore(&tree, false).await },
    )
    .unwrap();
    assert_eq!(tc_state(&p.a, &dev), before);
}

#[test]
fn restore_default_noqueue() {
    round_trip(206, "");
}

#[test]
fn restore_htb_tree_with_classes() {
    round_trip(
        207,
        "tc qdisc add dev DEV root handle 1: htb default 20 r2q 5 && \
         tc class add dev DEV parent 1: classid 1:1 htb rate 100mbit ceil 100mbit && \
         tc class add dev DEV parent 1:1 classid 1:10 htb rate 30mbit ceil 100mbit prio 1 && \
         tc class add dev DEV parent 1:1 classid 1:20 htb rate 10mbit ceil 50mbit burst 20k prio 2 && \
         tc qdisc add dev DEV parent 1:10 handle 10: tbf rate 5mbit burst 32kb latency 100ms && \
         tc qdisc add dev DEV parent 1:20 handle 20: pfifo limit 50",
    );
}

#[test]
fn restore_tbf_root() {
    round_trip(
        208,
        "tc qdisc add dev DEV root handle 5: tbf rate 20mbit burst 64kb limit 300000",
    );
}

#[test]
fn restore_with_clsact() {
    round_trip(
        209,
        "tc qdisc add dev DEV clsact && \
         tc qdisc add dev DEV root handle 7: tbf rate 3mbit burst 16kb latency 20ms",
    );
}

#[test]
fn restore_mq_with_custom_children() {
    round_trip(
        210,
        "tc qdisc add dev DEV root handle 1: mq && \
         tc qdisc replace dev DEV parent 1:1 handle 11: tbf rate 2mbit burst 8kb latency 10ms",
    );
}

#[test]
fn size_table_refused_unless_forced() {
    let p = VethPair::new(211);
    let dev = p.a_if.clone();
    p.a.sh(&format!("tc qdisc add dev {dev} root handle 3: stab overhead 24 linklayer ethernet tbf rate 1mbit burst 10kb latency 50ms"));
    let idx = ifindex(&p.a, &dev);
    let tree = in_ns(&p.a, move |tc| async move { tc.snapshot(idx).await }).unwrap();
    assert!(matches!(
        chaos_agent::kernel::tc::is_faithfully_restorable(&tree),
        Err(NotRestorable::SizeTable { .. })
    ));
    in_ns(
        &p.a,
        move |tc| async move { install_agent_tree(&tc, idx).await },
    )
    .unwrap();
    let err = in_ns(
        &p.a,
        move |tc| async move { tc.restore(&tree, false).await },
    )
    .expect_err("must refuse");
    assert!(matches!(err, TcError::NotRestorable { .. }), "{err:?}");
    // The refusal changed nothing: the agent's tree is still there for a forced restore.
    assert!(tc_state(&p.a, &dev).contains("c4a0:"));
}

#[test]
fn ifb_with_mirred_redirect_and_cleanup() {
    ifb_redirect(212, false);
}

#[test]
fn ifb_with_mirred_redirect_under_clsact() {
    ifb_redirect(219, true);
}

/// Ingress -> IFB through the ingress qdisc (`ffff:`) or clsact's ingress hook (`ffff:fff2`,
/// what the eBPF attach path creates on pre-tcx kernels).
fn ifb_redirect(subnet: u8, clsact: bool) {
    let (hook, parent) = if clsact {
        (Qdisc::Clsact, chaos_agent::kernel::tc::TC_H_CLSACT_INGRESS)
    } else {
        (Qdisc::Ingress, TC_H_INGRESS_HANDLE)
    };
    let p = VethPair::new(subnet);
    let dev = p.a_if.clone();
    let idx = ifindex(&p.a, &dev);
    // The IFB lives in the test's own namespace, so the production name cannot collide.
    let ifb = "chaos-ifb0".to_owned();
    let name = ifb.clone();
    let ifb_idx = in_ns(&p.a, move |tc| async move {
        let ifb_idx = tc.create_ifb(&name).await?;
        tc.add_qdisc(idx, 0, 0, &hook).await?;
        tc.add_mirred_redirect(idx, parent, OUR_MAJOR, ifb_idx)
            .await?;
        Ok::<_, TcError>(ifb_idx)
    })
    .unwrap();
    let link = p.a.sh(&format!("ip -d link show {ifb}"));
    assert!(link.contains("ifb") && link.contains(",UP"), "{link}");
    let filters = p.a.sh(&format!("tc filter show dev {dev} ingress"));
    assert!(filters.contains("pref 50336 u32"), "{filters}");
    assert!(
        filters.contains(&format!("mirred (Egress Redirect to device {ifb}) stolen")),
        "{filters}"
    );
    // Traffic arriving on the veth now goes through the redirect and out of the IFB.
    let tx_before: u64 =
        p.a.sh(&format!("cat /sys/class/net/{ifb}/statistics/tx_packets"))
            .trim()
            .parse()
            .unwrap();
    let _ = chaos_testing::udp_run(&p.b, &p.a, &chaos_testing::UdpRun::new(&p.a_ip, 9, 5));
    let tx_after: u64 =
        p.a.sh(&format!("cat /sys/class/net/{ifb}/statistics/tx_packets"))
            .trim()
            .parse()
            .unwrap();
    assert!(
        tx_after >= tx_before + 5,
        "IFB tx {tx_before} -> {tx_after}"
    );
    assert_eq!(ifindex(&p.a, &ifb), ifb_idx);
    let name = ifb.clone();
    let (f, l) = in_ns(&p.a, move |tc| async move {
        let f = tc.delete_filter(idx, parent, OUR_MAJOR).await?;
        tc.delete_qdisc(
            idx,
            chaos_agent::kernel::tc::TC_H_CLSACT,
            TC_H_INGRESS_HANDLE,
        )
        .await?;
        let l = tc.delete_link(&name).await?;
        // Idempotent undo: a second delete reports "already gone".
        let again = tc.delete_link(&name).await?;
        assert!(!again);
        Ok::<_, TcError>((f, l))
    })
    .unwrap();
    assert!(f && l);
    assert!(
        !chaos_testing::sh_ok(&format!("ip netns exec {} ip link show {ifb}", p.a.name)),
        "IFB left behind"
    );
    let left = p.a.sh(&format!("tc qdisc show dev {dev}"));
    assert!(
        !left.contains("ingress") && !left.contains("clsact"),
        "{left}"
    );
}

#[test]
fn in_netns_binds_the_socket_to_that_namespace() {
    let p = VethPair::new(213);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let path = p.a.path();
    let (idx, tree) = rt.block_on(async {
        let tc = Tc::in_netns(&path).unwrap();
        let idx = tc.ifindex(&p.a_if).await.unwrap();
        (idx, tc.snapshot(idx).await.unwrap())
    });
    assert_eq!(idx, ifindex(&p.a, &p.a_if));
    assert_eq!(tree.root().map(|r| r.kind.as_str()), Some("noqueue"));
    // The test thread itself never left the host namespace.
    assert!(!std::path::Path::new(&format!("/sys/class/net/{}", p.a_if)).exists());
}

/// Packets sent with `SO_PRIORITY` set to `classid` (what the eBPF classifier does through
/// `skb->priority`) from namespace `a` to `b`'s discard port.
fn send_with_priority(p: &VethPair, classid: u32, count: u32) {
    let dst: std::net::SocketAddr = format!("{}:9", p.b_ip).parse().unwrap();
    chaos_testing::in_netns(&p.a, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        // SO_PRIORITY takes the class id as a raw u32 (it exceeds a C int's positive range).
        let prio: u32 = classid;
        // SAFETY: valid fd, option pointer and length for the duration of the call.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_PRIORITY,
                (&raw const prio).cast(),
                std::mem::size_of::<u32>() as libc::socklen_t,
            )
        };
        assert_eq!(
            rc,
            0,
            "setsockopt(SO_PRIORITY): {}",
            std::io::Error::last_os_error()
        );
        for _ in 0..count {
            s.send_to(&[b'x'; 200], dst).unwrap();
        }
    });
}

fn class_packets(ns: &NetNs, dev: &str, classid: &str) -> u64 {
    let text = ns.sh(&format!("tc -s class show dev {dev} classid {classid}"));
    let sent = text
        .split("Sent ")
        .nth(1)
        .unwrap_or_else(|| panic!("no stats: {text}"));
    sent.split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"))
}

#[test]
fn steering_root_sends_only_prioritised_packets_to_the_fault() {
    use chaos_agent::kernel::tc::{default_leaf_from, fault_classid, fault_leaf_handle};
    let p = VethPair::new(214);
    let dev = p.a_if.clone();
    // A host leaf with options, to check that untargeted traffic keeps its kind of queue.
    p.a.sh(&format!(
        "tc qdisc add dev {dev} root handle 1: pfifo limit 321"
    ));
    let before = tc_state(&p.a, &dev);
    let idx = ifindex(&p.a, &dev);
    let link = 1_250_000_000; // 10 Gbit/s
    let (tree, classid) = in_ns(&p.a, move |tc| async move {
        let tree = tc.snapshot(idx).await?;
        let leaf = default_leaf_from(&tree);
        tc.install_steering_root(idx, link, leaf.as_ref()).await?;
        let tbf = TbfOptions {
            rate: 125_000,
            burst: 10_240,
            limit: TbfLimit::Bytes(100_000),
        };
        let classid = tc
            .add_fault_slot(idx, 0, link, None, Some(&Qdisc::Tbf(tbf)))
            .await?;
        Ok::<_, TcError>((tree, classid))
    })
    .unwrap();
    assert_eq!(classid, fault_classid(0));
    let qdiscs = p.a.sh(&format!("tc qdisc show dev {dev}"));
    assert!(qdiscs.contains("qdisc htb c4a0: root"), "{qdiscs}");
    assert!(
        qdiscs.contains("qdisc pfifo c4ff: parent c4a0:1 limit 321p"),
        "{qdiscs}"
    );
    assert!(
        qdiscs.contains(&format!(
            "qdisc tbf {:x}: parent c4a0:10 rate 1Mbit",
            fault_leaf_handle(0) >> 16
        )),
        "{qdiscs}"
    );
    let (fault0, default0) = (
        class_packets(&p.a, &dev, "c4a0:10"),
        class_packets(&p.a, &dev, "c4a0:1"),
    );
    send_with_priority(&p, classid, 20);
    send_with_priority(&p, 0, 30);
    let fault = class_packets(&p.a, &dev, "c4a0:10") - fault0;
    let default = class_packets(&p.a, &dev, "c4a0:1") - default0;
    assert_eq!(fault, 20, "steered packets");
    // ARP/ND may add a few to the default class, never to the fault class.
    assert!(default >= 30, "default class got {default}");
    let removed = in_ns(&p.a, move |tc| async move {
        let first = tc.remove_fault_slot(idx, 0).await?;
        let again = tc.remove_fault_slot(idx, 0).await?;
        tc.restore(&tree, false).await?;
        Ok::<_, TcError>((first, again))
    })
    .unwrap();
    assert_eq!(removed, (true, false));
    assert_eq!(tc_state(&p.a, &dev), before);
}

#[test]
fn restore_leaves_a_foreign_root_alone() {
    let p = VethPair::new(215);
    let dev = p.a_if.clone();
    let idx = ifindex(&p.a, &dev);
    let tree = in_ns(&p.a, move |tc| async move { tc.snapshot(idx).await }).unwrap();
    // Someone else installs a root while the fault runs.
    p.a.sh(&format!(
        "tc qdisc replace dev {dev} root handle 9: tbf rate 1mbit burst 10kb latency 10ms"
    ));
    let err = in_ns(
        &p.a,
        move |tc| async move { tc.restore(&tree, false).await },
    )
    .expect_err("foreign");
    assert!(
        matches!(&err, TcError::ForeignRoot { found, .. } if found == "tbf 9:"),
        "{err:?}"
    );
    assert!(
        p.a.sh(&format!("tc qdisc show dev {dev}"))
            .contains("qdisc tbf 9: root")
    );
}

/// Adds `kind` with the library and reads it back. Whether the kernel has the qdisc is asked
/// of `tc` first, not of the library under test: where it lacks it, the library must say so
/// (`QdiscUnsupported`), and the test is a skip (or a failure where the kernel must have it).
fn read_back_or_skip(test: &str, subnet: u8, q: Qdisc, check: impl FnOnce(&Value)) {
    let feature = match q {
        Qdisc::Fq(_) => Feature::Qdisc("fq"),
        Qdisc::Prio(_) => Feature::Qdisc("prio"),
        _ => panic!("{test}: no feature for {}", q.kind()),
    };
    let present = chaos_testing::has(feature);
    let p = VethPair::new(subnet);
    let idx = ifindex(&p.a, &p.a_if);
    let kind = q.kind().to_owned();
    let added = in_ns(&p.a, move |tc| async move {
        tc.add_qdisc(idx, TC_H_ROOT, OUR_ROOT, &q).await
    });
    if !present {
        assert!(
            matches!(added, Err(TcError::QdiscUnsupported { .. })),
            "{test}: tc says this kernel lacks {kind}; the library answered {added:?}"
        );
        assert!(!require(test, feature));
        return;
    }
    added.unwrap_or_else(|e| panic!("{test}: {e}"));
    let q = qdisc_json(&p.a, &p.a_if);
    assert_eq!(q[0]["kind"], kind.as_str());
    check(&q[0]["options"]);
}

#[test]
fn fq_parameters_read_back() {
    let o = chaos_agent::kernel::tc::FqOptions {
        limit: Some(20_000),
        flow_limit: Some(1000),
        horizon: Some(Duration::from_secs(10)),
        horizon_drop: Some(false),
    };
    read_back_or_skip("fq_parameters_read_back", 216, Qdisc::Fq(o), |opt| {
        assert_eq!(opt["limit"], 20_000, "{opt}");
        assert_eq!(opt["flow_limit"], 1000, "{opt}");
        // How iproute2 prints the horizon and its drop/cap flag varies between versions; its
        // presence shows the attribute arrived.
        assert!(opt.get("horizon").is_some(), "{opt}");
    });
}

#[test]
fn prio_parameters_read_back() {
    let o = chaos_agent::kernel::tc::PrioOptions {
        bands: 4,
        priomap: [3, 2, 2, 2, 1, 2, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1],
    };
    read_back_or_skip("prio_parameters_read_back", 217, Qdisc::Prio(o), |opt| {
        assert_eq!(opt["bands"], 4, "{opt}");
        assert_eq!(opt["priomap"][0], 3, "{opt}");
    });
}

#[test]
fn restore_large_htb_tree_spanning_many_dump_datagrams() {
    // 300 classes with rate tables make the class dump span many netlink datagrams.
    let mut batch = String::from("qdisc add dev DEV root handle 1: htb default 2\n");
    batch.push_str("class add dev DEV parent 1: classid 1:1 htb rate 1gbit\n");
    for i in 2..302 {
        let _ = writeln!(
            batch,
            "class add dev DEV parent 1:1 classid 1:{i:x} htb rate {i}kbit ceil 1gbit"
        );
    }
    round_trip(
        218,
        &format!(
            "cat > /tmp/chaos-tc-batch.$$ <<'EOB'\n{batch}EOB\ntc -batch /tmp/chaos-tc-batch.$$; rc=$?; rm -f /tmp/chaos-tc-batch.$$; exit $rc"
        ),
    );
}
