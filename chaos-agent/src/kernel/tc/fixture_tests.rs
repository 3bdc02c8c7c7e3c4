//! Byte-for-byte comparison of our requests with those iproute2 6.1 sends for the same
//! parameters (captured with strace; see tests/fixtures/tc/README.md for the commands).
//! The captures were made on a veth with ifindex 3 (and the IFB got ifindex 4), so the messages
//! are built with those indexes; only the netlink sequence number and port id are normalised.

use std::time::Duration;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage};
use netlink_packet_route::RouteNetlinkMessage;

use super::*;

const DEV: u32 = 3;
const IFB: u32 = 4;
const ADD: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/tc/{name}.hex",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // One message per blank-line separated block; every fixture holds exactly one.
    let block = text.split("\n\n").next().unwrap();
    block
        .split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect()
}

fn emit(msg: RouteNetlinkMessage, flags: u16) -> Vec<u8> {
    let mut m = NetlinkMessage::from(msg);
    m.header.flags = flags;
    m.finalize();
    let mut b = vec![0u8; m.buffer_len()];
    m.serialize(&mut b);
    b
}

fn assert_same(name: &str, ours: &[u8]) {
    let mut theirs = fixture(name);
    let mut ours = ours.to_vec();
    for b in [&mut theirs, &mut ours] {
        // nlmsg_seq and nlmsg_pid differ on every run.
        b[8..16].fill(0);
    }
    if theirs != ours {
        let at = theirs
            .iter()
            .zip(&ours)
            .position(|(a, b)| a != b)
            .unwrap_or(theirs.len().min(ours.len()));
        let lo = at.saturating_sub(16);
        panic!(
            "{name}: differs at byte {at} (tc {} bytes, ours {} bytes)\n tc:  {:02x?}\n ours: {:02x?}",
            theirs.len(),
            ours.len(),
            &theirs[lo..(at + 16).min(theirs.len())],
            &ours[lo..(at + 16).min(ours.len())]
        );
    }
}

fn qdisc_add(name: &str, parent: u32, handle: u32, q: &Qdisc) {
    let msg = qdisc_message(DEV, parent, handle, q).unwrap();
    assert_same(
        name,
        &emit(RouteNetlinkMessage::NewQueueDiscipline(msg), ADD),
    );
}

const ROOT: u32 = OUR_ROOT;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[test]
fn netem_full_matches_tc() {
    // delay 100ms 10ms 25% distribution normal loss 1% duplicate 1% corrupt 1%
    // reorder 5% 50% gap 5 rate 1mbit limit 5000
    let o = NetemOptions {
        delay: ms(100),
        jitter: ms(10),
        delay_correlation: 25.0,
        distribution: Distribution::Normal,
        loss: Some(NetemLoss::Random {
            percent: 1.0,
            correlation: 0.0,
        }),
        duplicate: 1.0,
        corrupt: 1.0,
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
    qdisc_add("netem_full", TC_H_ROOT, ROOT, &Qdisc::Netem(o));
}

#[test]
fn netem_pareto_matches_tc() {
    let o = NetemOptions {
        delay: ms(50),
        jitter: ms(20),
        distribution: Distribution::Pareto,
        ..NetemOptions::default()
    };
    qdisc_add("netem_pareto", TC_H_ROOT, ROOT, &Qdisc::Netem(o));
}

#[test]
fn netem_paretonormal_matches_tc() {
    let o = NetemOptions {
        delay: ms(50),
        jitter: ms(20),
        distribution: Distribution::Paretonormal,
        ..NetemOptions::default()
    };
    qdisc_add("netem_paretonormal", TC_H_ROOT, ROOT, &Qdisc::Netem(o));
}

#[test]
fn netem_gemodel_matches_tc() {
    // delay 10ms loss gemodel 1% 10% 70% 0.1%
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
    qdisc_add("netem_ge", TC_H_ROOT, ROOT, &Qdisc::Netem(o));
}

#[test]
fn netem_correlations_match_tc() {
    // parent c4a0:2 handle c4a1: netem delay 30ms 5ms loss random 2% 25% duplicate 3% 10%
    // corrupt 0.5% 5%
    let o = NetemOptions {
        delay: ms(30),
        jitter: ms(5),
        loss: Some(NetemLoss::Random {
            percent: 2.0,
            correlation: 25.0,
        }),
        duplicate: 3.0,
        duplicate_correlation: 10.0,
        corrupt: 0.5,
        corrupt_correlation: 5.0,
        ..NetemOptions::default()
    };
    qdisc_add(
        "netem_loss_corr",
        tc_handle(OUR_MAJOR, 2),
        tc_handle(0xC4A1, 0),
        &Qdisc::Netem(o),
    );
}

#[test]
fn netem_slot_matches_tc() {
    // delay 10ms slot 10ms 20ms packets 5 bytes 1000 rate 10gbit
    let o = NetemOptions {
        delay: ms(10),
        slot: Some(NetemSlot {
            min_delay: ms(10),
            max_delay: ms(20),
            max_packets: 5,
            max_bytes: 1000,
        }),
        rate: Some(NetemRate {
            bytes_per_sec: 1_250_000_000,
            packet_overhead: 0,
            cell_size: 0,
            cell_overhead: 0,
        }),
        ..NetemOptions::default()
    };
    qdisc_add("netem_slot_rate64", TC_H_ROOT, ROOT, &Qdisc::Netem(o));
}

#[test]
fn netem_simple_matches_tc() {
    qdisc_add(
        "netem_simple",
        TC_H_ROOT,
        ROOT,
        &Qdisc::Netem(NetemOptions {
            delay: ms(100),
            ..NetemOptions::default()
        }),
    );
}

#[test]
fn tbf_matches_tc() {
    // tbf rate 1mbit burst 10kb latency 50ms
    let o = TbfOptions {
        rate: 125_000,
        burst: 10 * 1024,
        limit: TbfLimit::Latency(ms(50)),
    };
    qdisc_add("tbf", TC_H_ROOT, ROOT, &Qdisc::Tbf(o));
}

#[test]
fn tbf_fast_matches_tc() {
    // tbf rate 10gbit burst 1mb limit 100000
    let o = TbfOptions {
        rate: 1_250_000_000,
        burst: 1024 * 1024,
        limit: TbfLimit::Bytes(100_000),
    };
    qdisc_add("tbf_rate64", TC_H_ROOT, ROOT, &Qdisc::Tbf(o));
}

#[test]
fn htb_qdisc_matches_tc() {
    qdisc_add(
        "htb_qdisc",
        TC_H_ROOT,
        ROOT,
        &Qdisc::Htb(HtbOptions {
            default_class: 1,
            ..HtbOptions::default()
        }),
    );
}

fn class_add(name: &str, minor: u16, o: &HtbClassOptions) {
    let msg = htb_class_message(DEV, ROOT, tc_handle(OUR_MAJOR, minor), o).unwrap();
    assert_same(name, &emit(RouteNetlinkMessage::NewTrafficClass(msg), ADD));
}

#[test]
fn htb_class_matches_tc() {
    // classid c4a0:1 htb rate 10mbit ceil 20mbit burst 15k cburst 15k prio 1 quantum 1514
    let o = HtbClassOptions {
        rate: 1_250_000,
        ceil: Some(2_500_000),
        burst: Some(15 * 1024),
        cburst: Some(15 * 1024),
        prio: 1,
        quantum: 1514,
    };
    class_add("htb_class", 1, &o);
}

#[test]
fn htb_class_defaults_match_tc() {
    class_add("htb_class_default", 2, &HtbClassOptions::rate(125_000));
}

#[test]
fn htb_class_rate64_matches_tc() {
    class_add("htb_class_rate64", 3, &HtbClassOptions::rate(5_000_000_000));
}

#[test]
fn qdisc_delete_matches_tc() {
    let msg = qdisc_del_message(DEV, TC_H_ROOT, 0);
    assert_same(
        "qdisc_del_root",
        &emit(
            RouteNetlinkMessage::DelQueueDiscipline(msg),
            NLM_F_REQUEST | NLM_F_ACK,
        ),
    );
}

#[test]
fn fq_matches_tc() {
    let o = FqOptions {
        limit: Some(20_000),
        flow_limit: Some(1000),
        horizon: Some(Duration::from_secs(10)),
        horizon_drop: None,
    };
    qdisc_add("fq", TC_H_ROOT, ROOT, &Qdisc::Fq(o));
}

#[test]
fn prio_matches_tc() {
    qdisc_add(
        "prio",
        TC_H_ROOT,
        ROOT,
        &Qdisc::Prio(PrioOptions::default()),
    );
}

#[test]
fn clsact_and_ingress_match_tc() {
    qdisc_add("clsact", 0, 0, &Qdisc::Clsact);
    qdisc_add("ingress", 0, 0, &Qdisc::Ingress);
}

#[test]
fn ifb_link_matches_ip() {
    assert_same(
        "ifb_link",
        &emit(
            RouteNetlinkMessage::NewLink(ifb_link_message("chaos-ifb0")),
            ADD,
        ),
    );
}

#[test]
fn mirred_filter_matches_tc() {
    // parent ffff: protocol all prio 50336 u32 match u32 0 0 action mirred egress redirect dev IFB
    let msg = mirred_redirect_filter_message(DEV, TC_H_INGRESS_HANDLE, OUR_MAJOR, IFB);
    assert_same(
        "mirred_filter",
        &emit(RouteNetlinkMessage::NewTrafficFilter(msg), ADD),
    );
}

#[test]
fn generated_tables_equal_tc_tables() {
    // The DELAY_DIST attribute is the last 8196 bytes of the distribution fixtures.
    for (name, d) in [
        ("netem_full", Distribution::Normal),
        ("netem_pareto", Distribution::Pareto),
        ("netem_paretonormal", Distribution::Paretonormal),
    ] {
        let f = fixture(name);
        let tc_table: Vec<i16> = f[f.len() - 8192..]
            .chunks(2)
            .map(|c| i16::from_ne_bytes([c[0], c[1]]))
            .collect();
        let ours = d.table().unwrap();
        let diff: Vec<usize> = (0..4096).filter(|&i| tc_table[i] != ours[i]).collect();
        assert!(
            diff.is_empty(),
            "{name}: {} entries differ, first at {}: tc {} ours {}",
            diff.len(),
            diff[0],
            tc_table[diff[0]],
            ours[diff[0]]
        );
    }
}
