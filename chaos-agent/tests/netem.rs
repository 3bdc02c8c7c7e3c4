//! Delay, jitter, rate, corrupt, duplicate, reorder: measured with ping, iperf3 and timestamped
//! UDP between two namespaces, and the interface's qdisc tree compared with `tc -j` before and
//! after. netem tests run where `sch_netem` exists (the Debian 6.1 VM: `cargo xtask vm-test`)
//! and say SKIP elsewhere; rate (HTB only) and the refusals run everywhere. The EDT backend's
//! tests (`edt_*`, forced with `--shaping-backend edt`) need `sch_fq`, likewise only in the VM.

use std::time::Duration;

use chaos_testing::{
    AgentProcess, Feature, NetNs, TempDir, UdpRun, VethPair, attached_programs, has, median,
    ping_rtts, require, require_absent, tc_qdiscs, udp_run,
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

/// `sch_netem`, asked of `tc` (never of the agent's probe): required in the 6.1 VM, where
/// these tests run; a skip on the host.
fn netem_or_skip(test: &str) -> bool {
    require(test, Feature::Qdisc("netem"))
}

/// A host tree that is not the kernel default, so that "restored" means "recreated exactly",
/// not "deleted our root".
fn host_tree(pair: &VethPair) {
    pair.a.sh(&format!(
        "tc qdisc add dev {0} root handle 1: htb default 10 && tc class add dev {0} parent 1: classid 1:10 htb rate 5gbit",
        pair.a_if
    ));
}

fn iperf_mbits(client: &NetNs, server: &NetNs, server_ip: &str, port: u16, secs: u32) -> f64 {
    let mut srv = server
        .command("iperf3")
        .args(["-s", "-1", "-B", server_ip, "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    let probe = format!("ss -ltnH sport = :{port}");
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while !server.sh(&probe).contains(&port.to_string()) {
        assert!(
            std::time::Instant::now() < end,
            "iperf3 server did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = client.sh(&format!("iperf3 -c {server_ip} -p {port} -t {secs} -J"));
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 json");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bps")
        / 1e6
}

#[test]
fn rate_limits_matching_traffic_within_ten_percent_and_restores_the_tree() {
    let pair = VethPair::new(31);
    host_tree(&pair);
    let before = tc_qdiscs(&pair.a, &pair.a_if);
    let state = TempDir::new("chst");
    let agent = inject(
        &pair.a,
        &state,
        &[
            "--rate", "1mbit", "--ttl", "60s", "--iface", &pair.a_if, "--proto", "tcp", "--dport",
            "5201",
        ],
    );
    let limited = iperf_mbits(&pair.a, &pair.b, &pair.b_ip, 5201, 5);
    let other = iperf_mbits(&pair.a, &pair.b, &pair.b_ip, 5202, 2);
    agent.signal(Signal::SIGTERM);
    let (status, out, err) = agent.wait(Duration::from_secs(10));
    assert!(status.success(), "{err}");
    assert!(
        (limited - 1.0).abs() <= 0.1,
        "1mbit fault measured {limited:.3} Mbit/s"
    );
    assert!(
        other > 20.0,
        "untargeted traffic must not be shaped: {other:.1} Mbit/s"
    );
    assert!(out.iter().any(|l| l.contains("shaped")), "{out:?}");
    assert_eq!(
        tc_qdiscs(&pair.a, &pair.a_if),
        before,
        "host qdisc tree must come back exactly"
    );
}

#[test]
fn second_shaping_fault_on_the_same_interface_is_refused() {
    let pair = VethPair::new(32);
    let state = TempDir::new("chst");
    let agent = inject(
        &pair.a,
        &state,
        &["--rate", "10mbit", "--ttl", "60s", "--iface", &pair.a_if],
    );
    let state2 = TempDir::new("chst");
    let out = pair
        .a
        .command(bin().to_str().unwrap())
        .args([
            "--state-dir",
            state2.str(),
            "inject",
            "--rate",
            "5mbit",
            "--ttl",
            "10s",
            "--iface",
            &pair.a_if,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already carries a chaos-agent qdisc root"),
        "{err}"
    );
    drop(agent);
}

#[test]
fn netem_faults_are_refused_cleanly_without_sch_netem() {
    // Proven on the host, whose profile requires sch_netem's absence; the VM has it.
    if !require_absent("netem_refused", Feature::Qdisc("netem")) {
        return;
    }
    let pair = VethPair::new(33);
    let state = TempDir::new("chst");
    let before = tc_qdiscs(&pair.a, &pair.a_if);
    for args in [
        ["--delay", "100ms"],
        ["--corrupt", "0.1"],
        ["--duplicate", "0.1"],
    ] {
        let out = pair
            .a
            .command(bin().to_str().unwrap())
            .args([
                "--state-dir",
                state.str(),
                "inject",
                "--ttl",
                "10s",
                "--iface",
                &pair.a_if,
            ])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(
            err.contains("sch_netem")
                && err.contains("modprobe")
                && err.contains("nothing was changed"),
            "{err}"
        );
    }
    assert_eq!(tc_qdiscs(&pair.a, &pair.a_if), before);
    assert!(
        attached_programs(&pair.a, &pair.a_if).is_empty(),
        "{:?}",
        attached_programs(&pair.a, &pair.a_if)
    );
    assert_eq!(
        std::fs::read_dir(state.0.join("faults")).map_or(0, std::iter::Iterator::count),
        0,
        "journal untouched"
    );
}

/// Checks that a delay fault added `want` ms to the median round trip: never less (less than
/// 2 ms under, ping's own noise), and late by at most the clock's slack. On the host that is
/// 2 ms. Under QEMU's TCG (`CHAOS_VM`, set by the VM runner, not by the agent) a timer fires
/// when the emulated CPU gets to it: a 100 ms netem or fq delay measured 103-104 ms there in
/// two of about six suite runs on an idle machine, so the emulated clock is allowed 10 ms late.
/// An early packet would be a bug on either; a late one under TCG is the emulator.
fn assert_added_delay(faulted: f64, base: f64, want: f64, what: &str) {
    let late = if std::env::var_os("CHAOS_VM").is_some() {
        10.0
    } else {
        2.0
    };
    let added = faulted - base;
    assert!(
        added >= want - 2.0 && added <= want + late,
        "{what}: {faulted:.2} ms vs base {base:.2} ms, added {added:.2} ms, want {want} ms \
         (-2 / +{late} ms)"
    );
}

#[test]
fn delay_adds_latency_to_matching_destinations_only() {
    if !netem_or_skip("delay") {
        return;
    }
    let pair = VethPair::new(34);
    pair.add_b_addr("10.34.0.3/24");
    let base = median(&ping_rtts(&pair.a, &pair.b_ip, 10, 0.1));
    let state = TempDir::new("chst");
    let dst = format!("{}/32", pair.b_ip);
    let agent = inject(
        &pair.a,
        &state,
        &[
            "--delay", "100ms", "--ttl", "60s", "--iface", &pair.a_if, "--dest", &dst,
        ],
    );
    let faulted = median(&ping_rtts(&pair.a, &pair.b_ip, 20, 0.2));
    let other = median(&ping_rtts(&pair.a, "10.34.0.3", 10, 0.1));
    drop(agent);
    assert_added_delay(faulted, base, 100.0, "median RTT");
    assert!(
        other < base + 2.0,
        "untargeted destination delayed: {other:.2} ms vs {base:.2} ms"
    );
}

#[test]
fn jitter_spread_matches_configuration() {
    if !netem_or_skip("jitter") {
        return;
    }
    let pair = VethPair::new(35);
    let state = TempDir::new("chst");
    let agent = inject(
        &pair.a,
        &state,
        &[
            "--delay", "100ms", "--jitter", "20ms", "--ttl", "60s", "--iface", &pair.a_if,
            "--proto", "udp",
        ],
    );
    let mut run = UdpRun::new(&pair.b_ip, 5000, 400);
    run.size = 64;
    let r = udp_run(&pair.a, &pair.b, &run);
    drop(agent);
    let mut ms: Vec<f64> = r.latency_us.iter().map(|u| *u as f64 / 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let q = |f: f64| ms[((ms.len() - 1) as f64 * f) as usize];
    // Uniform on [delay - j, delay + j]: the quartiles are delay -/+ j/2, so the interquartile
    // range is exactly j. Quantiles, not mean and standard deviation: under emulation (the VM
    // guest runs on TCG) late timers add a tail that would inflate both.
    let jitter = q(0.75) - q(0.25);
    let median = q(0.5);
    println!(
        "MEASURED netem 100ms +/- 20ms uniform, {} datagrams: p1 {:.2} q1 {:.2} median {median:.2} q3 {:.2} ms, IQR {jitter:.2} ms",
        ms.len(),
        q(0.01),
        q(0.25),
        q(0.75)
    );
    // Emulation can only add latency, so the configured delay is a strict lower bound; the
    // upper bound allows for a slow emulated timer.
    assert!(
        (98.0..=110.0).contains(&median) && q(0.01) >= 79.0,
        "median one-way delay {median:.2} ms, p1 {:.2} ms",
        q(0.01)
    );
    assert!(
        (jitter - 20.0).abs() <= 4.0,
        "measured jitter {jitter:.2} ms for 20 ms configured"
    );
}

#[test]
fn corrupt_duplicate_and_reorder_rates_at_the_receiver() {
    if !netem_or_skip("corrupt_duplicate_reorder") {
        return;
    }
    let pair = VethPair::new(36);
    let n = 3000;
    let bound = |p: f64| 5.0 * (p * (1.0 - p) / f64::from(n)).sqrt();
    // Duplicate 20%: extra copies at the receiver.
    let state = TempDir::new("chst");
    let agent = inject(
        &pair.a,
        &state,
        &[
            "--duplicate",
            "0.2",
            "--ttl",
            "60s",
            "--iface",
            &pair.a_if,
            "--proto",
            "udp",
        ],
    );
    let r = udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip, 5000, n));
    drop(agent);
    let dup = f64::from(r.duplicates) / f64::from(n);
    assert!((dup - 0.2).abs() <= bound(0.2), "duplicate rate {dup}");
    // Corrupt 20%: a flipped bit almost always breaks a checksum (or the destination MAC), so
    // the receiver loses the datagram; bits of the source MAC (48 of ~850) go unnoticed. The
    // receiver's stack says why it dropped them: most for a bad UDP checksum (the UDP header
    // and payload are 72 of the frame's 106 bytes), some for a bad IP header checksum.
    let csum_before = chaos_testing::dns::nstat(&pair.b);
    let state = TempDir::new("chst");
    let agent = inject(
        &pair.a,
        &state,
        &[
            "--corrupt",
            "0.2",
            "--ttl",
            "60s",
            "--iface",
            &pair.a_if,
            "--proto",
            "udp",
        ],
    );
    let r = udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip, 5000, n));
    drop(agent);
    let lost = r.loss();
    assert!(
        lost >= 0.2 * 0.85 - bound(0.2) && lost <= 0.2 + bound(0.2),
        "corrupt 20% lost {lost}"
    );
    let csum_after = chaos_testing::dns::nstat(&pair.b);
    let delta = |k: &str| {
        csum_after.get(k).copied().unwrap_or(0) - csum_before.get(k).copied().unwrap_or(0)
    };
    let (udp_csum, ip_csum) = (delta("UdpInCsumErrors"), delta("IpExtInCsumErrors"));
    let lost_n = u64::from(r.sent - r.received);
    assert!(
        udp_csum * 2 >= lost_n && udp_csum + ip_csum <= lost_n,
        "corruption seen as corruption: {lost_n} lost, {udp_csum} UDP and {ip_csum} IP checksum errors at the receiver"
    );
    // Reorder 25% with 50 ms delay: a quarter of the packets skip the delay.
    let state = TempDir::new("chst");
    let agent = inject(
        &pair.a,
        &state,
        &[
            "--delay",
            "50ms",
            "--reorder",
            "0.25",
            "--ttl",
            "60s",
            "--iface",
            &pair.a_if,
            "--proto",
            "udp",
        ],
    );
    let r = udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip, 5000, n));
    drop(agent);
    let fast =
        r.latency_us.iter().filter(|u| **u < 25_000).count() as f64 / r.latency_us.len() as f64;
    assert!(
        (fast - 0.25).abs() <= bound(0.25),
        "reordered fraction {fast}"
    );
}

#[test]
fn ingress_delay_through_ifb_and_the_ifb_is_removed() {
    if !netem_or_skip("ingress_delay") {
        return;
    }
    let pair = VethPair::new(37);
    let base = median(&ping_rtts(&pair.a, &pair.b_ip, 10, 0.1));
    let before = tc_qdiscs(&pair.a, &pair.a_if);
    let state = TempDir::new("chst");
    let agent = inject(
        &pair.a,
        &state,
        &[
            "--delay",
            "100ms",
            "--direction",
            "ingress",
            "--ttl",
            "60s",
            "--iface",
            &pair.a_if,
            "--proto",
            "icmp",
        ],
    );
    assert!(
        pair.a.sh("ip -o link show").contains("chaos-ifb"),
        "IFB device expected while the fault runs"
    );
    let faulted = median(&ping_rtts(&pair.a, &pair.b_ip, 20, 0.2));
    agent.signal(Signal::SIGINT);
    let (status, _, err) = agent.wait(Duration::from_secs(10));
    assert!(status.success(), "{err}");
    assert_added_delay(faulted, base, 100.0, "ingress delay");
    assert!(
        !pair.a.sh("ip -o link show").contains("chaos-ifb"),
        "IFB left behind"
    );
    assert_eq!(tc_qdiscs(&pair.a, &pair.a_if), before);
}

#[test]
fn revert_restores_the_tree_at_ttl_sigterm_and_after_sigkill_with_cleanup() {
    let pair = VethPair::new(38);
    host_tree(&pair);
    let before = tc_qdiscs(&pair.a, &pair.a_if);
    let shape: &[&str] = if has(Feature::Qdisc("netem")) {
        &["--delay", "10ms", "--rate", "50mbit"]
    } else {
        &["--rate", "50mbit"]
    };
    let short = chaos_testing::test_ttl(2);
    let args = |ttl: &str| {
        let mut v = vec![
            "--ttl".to_owned(),
            ttl.to_owned(),
            "--iface".to_owned(),
            pair.a_if.clone(),
            "--direction".to_owned(),
            "both".to_owned(),
        ];
        v.extend(shape.iter().map(|s| (*s).to_owned()));
        v
    };
    let inject = |state: &TempDir, a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        inject(&pair.a, state, &refs)
    };
    // TTL.
    let state = TempDir::new("chst");
    let agent = inject(&state, args(&short));
    assert_ne!(tc_qdiscs(&pair.a, &pair.a_if), before);
    let (status, out, err) = agent.wait(Duration::from_secs(40));
    assert!(
        status.success() && out.iter().any(|l| l.contains("reverted (ttl)")),
        "{out:?} {err}"
    );
    assert_eq!(tc_qdiscs(&pair.a, &pair.a_if), before, "after TTL");
    // SIGTERM.
    let agent = inject(&state, args("60s"));
    agent.signal(Signal::SIGTERM);
    assert!(agent.wait(Duration::from_secs(10)).0.success());
    assert_eq!(tc_qdiscs(&pair.a, &pair.a_if), before, "after SIGTERM");
    // SIGKILL: everything stays until cleanup replays the journal.
    let agent = inject(&state, args("60s"));
    agent.signal(Signal::SIGKILL);
    let _ = agent.wait(Duration::from_secs(5));
    assert_ne!(
        tc_qdiscs(&pair.a, &pair.a_if),
        before,
        "a killed agent cannot restore by itself"
    );
    let out = pair.a.sh(&format!(
        "{} --state-dir {} cleanup",
        bin().display(),
        state.str()
    ));
    assert!(out.contains("replayed 1 journal"), "{out}");
    assert_eq!(
        tc_qdiscs(&pair.a, &pair.a_if),
        before,
        "after SIGKILL + cleanup"
    );
    assert!(
        !pair.a.sh("ip -o link show").contains("chaos-ifb"),
        "IFB left behind"
    );
}

/// Prints a measurement even when libtest captures output (it captures only the print macros),
/// so `cargo xtask vm-test` shows it on the console.
fn report(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "MEASURED {line}");
}

/// EDT needs `sch_fq`: present in the 6.1 VM (where its absence is a failure), absent on the
/// host.
fn fq_or_skip(test: &str) -> bool {
    require(test, Feature::Qdisc("fq"))
}

#[test]
fn edt_delay_adds_latency_to_matching_traffic_only() {
    if !fq_or_skip("edt_delay") {
        return;
    }
    let pair = VethPair::new(39);
    pair.add_b_addr("10.39.0.3/24");
    host_tree(&pair);
    let before = tc_qdiscs(&pair.a, &pair.a_if);
    let dst = format!("{}/32", pair.b_ip);
    let args = [
        "--shaping-backend",
        "edt",
        "--delay",
        "100ms",
        "--ttl",
        "60s",
        "--iface",
        &pair.a_if,
        "--dest",
        &dst,
    ];
    // The dry run explains the EDT plan and changes nothing.
    let state = TempDir::new("chst");
    let dry = pair.a.sh(&format!(
        "{} --state-dir {} inject --dry-run {}",
        bin().display(),
        state.str(),
        args.join(" ")
    ));
    assert!(
        dry.contains("backend edt") && dry.contains("fq c4a0:") && dry.contains("skb->tstamp"),
        "{dry}"
    );
    assert_eq!(
        tc_qdiscs(&pair.a, &pair.a_if),
        before,
        "a dry run changed the tree"
    );

    let base = median(&ping_rtts(&pair.a, &pair.b_ip, 10, 0.1));
    let base_other = median(&ping_rtts(&pair.a, "10.39.0.3", 10, 0.1));
    let mut full = vec!["--state-dir", state.str(), "inject"];
    full.extend_from_slice(&args);
    let mut agent = AgentProcess::spawn(Some(&pair.a), &bin(), &full);
    let line = agent.expect_line("injected ", Duration::from_secs(30));
    assert!(line.contains("+ edt)"), "backend must say edt: {line}");
    let during = tc_qdiscs(&pair.a, &pair.a_if);
    let qdiscs: serde_json::Value = serde_json::from_str(&during).expect("tc -j");
    let root = qdiscs
        .as_array()
        .and_then(|a| a.iter().find(|q| q["root"] == true))
        .expect("a root qdisc");
    assert_eq!(
        (root["kind"].as_str(), root["handle"].as_str()),
        (Some("fq"), Some("c4a0:")),
        "{during}"
    );
    let faulted = median(&ping_rtts(&pair.a, &pair.b_ip, 20, 0.2));
    let other = median(&ping_rtts(&pair.a, "10.39.0.3", 10, 0.1));
    agent.signal(Signal::SIGTERM);
    let (status, out, err) = agent.wait(Duration::from_secs(10));
    assert!(status.success(), "{err}");
    report(&format!(
        "EDT 100ms: median RTT base {base:.3} ms, faulted {faulted:.3} ms, other destination {base_other:.3} -> {other:.3} ms"
    ));
    assert_added_delay(faulted, base, 100.0, "median RTT");
    assert!(
        other < base_other + 2.0,
        "untargeted destination delayed: {other:.2} ms vs {base_other:.2} ms"
    );
    assert!(out.iter().any(|l| l.contains("shaped")), "{out:?}");
    assert_eq!(
        tc_qdiscs(&pair.a, &pair.a_if),
        before,
        "host qdisc tree must come back exactly"
    );
    assert!(
        attached_programs(&pair.a, &pair.a_if).is_empty(),
        "{:?}",
        attached_programs(&pair.a, &pair.a_if)
    );
}

#[test]
fn edt_is_refused_for_ingress_and_when_no_delay_backend_exists() {
    let pair = VethPair::new(40);
    let state = TempDir::new("chst");
    let before = tc_qdiscs(&pair.a, &pair.a_if);
    let run = |args: &[&str]| {
        let out = pair
            .a
            .command(bin().to_str().unwrap())
            .args([
                "--state-dir",
                state.str(),
                "inject",
                "--ttl",
                "10s",
                "--iface",
                &pair.a_if,
            ])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for dir in ["ingress", "both"] {
        let (ok, err) = run(&[
            "--shaping-backend",
            "edt",
            "--delay",
            "100ms",
            "--direction",
            dir,
        ]);
        assert!(
            !ok && err.contains("egress only") && err.contains("--shaping-backend netem"),
            "{dir}: {err}"
        );
    }
    let (ok, err) = run(&[
        "--shaping-backend",
        "edt",
        "--delay",
        "100ms",
        "--corrupt",
        "0.1",
    ]);
    assert!(
        !ok && err.contains("delay and uniform jitter only") && err.contains("--corrupt"),
        "{err}"
    );
    if !has(Feature::Qdisc("fq")) {
        let (ok, err) = run(&["--shaping-backend", "edt", "--delay", "100ms"]);
        assert!(
            !ok && err.contains("sch_fq") && err.contains("nothing was changed"),
            "{err}"
        );
        if !has(Feature::Qdisc("netem")) {
            // Auto: the refusal names both modules that would do.
            let (ok, err) = run(&["--delay", "100ms"]);
            assert!(
                !ok && err.contains("sch_netem")
                    && err.contains("sch_fq")
                    && err.contains("modprobe"),
                "{err}"
            );
        }
    }
    assert_eq!(tc_qdiscs(&pair.a, &pair.a_if), before);
    assert!(
        attached_programs(&pair.a, &pair.a_if).is_empty(),
        "{:?}",
        attached_programs(&pair.a, &pair.a_if)
    );
    assert_eq!(
        std::fs::read_dir(state.0.join("faults")).map_or(0, Iterator::count),
        0,
        "journal untouched"
    );
}

#[test]
fn edt_jitter_on_one_flow_is_not_fifo_and_never_early() {
    if !fq_or_skip("edt_jitter") {
        return;
    }
    let pair = VethPair::new(41);
    // Resolve the neighbour first: the datagrams must not start behind an ARP exchange.
    let _ = ping_rtts(&pair.a, &pair.b_ip, 1, 0.1);
    let state = TempDir::new("chst");
    let agent = inject(
        &pair.a,
        &state,
        &[
            "--shaping-backend",
            "edt",
            "--delay",
            "100ms",
            "--jitter",
            "20ms",
            "--ttl",
            "60s",
            "--iface",
            &pair.a_if,
            "--proto",
            "udp",
        ],
    );
    // One socket = one fq flow; 400 datagrams sent in a burst, closer together than the 40 ms
    // jitter span.
    let r = udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip, 5000, 400));
    drop(agent);
    assert_eq!(r.received, r.sent, "EDT must not drop: lost {:?}", r.lost);
    let mut ms: Vec<f64> = r.latency_us.iter().map(|u| *u as f64 / 1000.0).collect();
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() - 1) as f64 * p) as usize];
    report(&format!(
        "EDT 100ms +/- 20ms, one UDP flow of 400: one-way min {:.2} p10 {:.2} median {:.2} p90 {:.2} p99 {:.2} max {:.2} mean {mean:.2} ms",
        ms[0],
        pct(0.1),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        ms[ms.len() - 1],
    ));
    // Never before delay - jitter.
    assert!(ms[0] >= 79.0, "min {:.2} ms", ms[0]);
    // A spread, not a constant: U[-20, +20] ms puts p10 and p90 32 ms apart. A jitter lost on
    // the way (a zero in the slot, a stamp that ignored it) would leave them a few ms apart,
    // and every bound above would still hold.
    assert!(
        pct(0.9) - pct(0.1) >= 16.0,
        "p10 {:.2} ms and p90 {:.2} ms: no jitter spread",
        pct(0.1),
        pct(0.9)
    );
    // fq does not keep a flow FIFO: a packet stamped earlier than the flow's tail is sorted
    // into the flow's rb-tree by departure time (`flow_queue_add`). A FIFO flow would make the
    // latency a running maximum of the draws: with 400 packets in a burst, even the 10th
    // percentile would sit near 120 ms. (It is not per-packet either: a flow throttled until
    // its earliest stamp is not woken earlier by a packet enqueued with an even earlier one.)
    assert!(
        pct(0.1) < 110.0,
        "p10 {:.2} ms: looks like a FIFO running maximum",
        pct(0.1)
    );
}
