//! Packet loss, end to end: the real binary, the real kernel, real traffic between two network
//! namespaces, measured at the receiver and with bpftool/tc. Runs as root (`cargo xtask test`)
//! and in the Debian 6.1 VM (netlink attach path).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use chaos_testing::{
    AgentProcess, NetNs, TempDir, UdpRun, VethPair, agent_programs_still_loaded, tc_filters,
    tc_qdiscs, udp_run,
};
use nix::sys::signal::Signal;

fn bin() -> std::path::PathBuf {
    chaos_testing::agent_bin(env!("CARGO_BIN_EXE_chaos-agent"))
}

/// Starts `chaos-agent inject` in `ns` with a private state dir and waits until the fault is in.
fn inject(ns: &NetNs, state: &TempDir, args: &[&str]) -> (AgentProcess, String) {
    let mut full = vec!["--state-dir", state.str(), "inject"];
    full.extend_from_slice(args);
    let mut agent = AgentProcess::spawn(Some(ns), &bin(), &full);
    let id = agent.expect_injected();
    // What `no_kernel_state_left` checks later: a loss fault is eBPF, so an agent holding no
    // program here would make that check vacuous.
    assert!(
        !chaos_testing::prog_ids_of(agent.pid()).is_empty(),
        "the agent holds no BPF program after injecting"
    );
    (agent, id)
}

/// Five standard deviations of a binomial proportion: wide enough never to flake, narrow enough
/// to catch a wrong threshold (a 10% fault that drops 12% fails at n = 4000).
fn bound(p: f64, n: u32) -> f64 {
    5.0 * (p * (1.0 - p) / f64::from(n)).sqrt()
}

fn summary_counts(line: &str) -> (u64, u64) {
    // "summary: f-xxxx reverted (ttl) after 1.0s: matched N, dropped M (x%)"
    let num = |key: &str| -> u64 {
        let i = line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
        line[i..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (num("matched "), num("dropped "))
}

/// Programs of the agents this binary started that are still loaded (not just any `chaos_tc`
/// program: the VM guest runs another suite's agents at the same time).
fn our_programs() -> Vec<u32> {
    agent_programs_still_loaded()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

fn no_kernel_state_left(pair: &VethPair) {
    assert!(
        eventually(Duration::from_secs(5), || our_programs().is_empty()),
        "chaos programs still loaded: {:?}",
        our_programs()
    );
    for hook in ["ingress", "egress"] {
        let f = tc_filters(&pair.a, &pair.a_if, hook);
        assert_eq!(
            f.as_array().map_or(0, Vec::len),
            0,
            "{hook} filters left: {f}"
        );
    }
}

#[test]
fn udp_loss_rate_matches_probability_and_counters() {
    let pair = VethPair::new(11);
    for p in [0.1, 0.5] {
        let state = TempDir::new("chst");
        let ps = p.to_string();
        let (agent, _id) = inject(
            &pair.a,
            &state,
            &[
                "--loss", &ps, "--ttl", "20s", "--iface", &pair.a_if, "--proto", "udp", "--dport",
                "5000",
            ],
        );
        let n = 4000;
        let r = udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip, 5000, n));
        agent.signal(Signal::SIGINT);
        let (status, out, err) = agent.wait(Duration::from_secs(10));
        assert!(status.success(), "agent failed: {err}");
        let measured = r.loss();
        assert!(
            (measured - p).abs() <= bound(p, n),
            "p={p}: measured {measured} over {n} packets"
        );
        // The agent's counters must agree exactly with what the receiver saw.
        let summary = out
            .iter()
            .find(|l| l.starts_with("summary:"))
            .expect("summary line");
        let (matched, dropped) = summary_counts(summary);
        assert_eq!(matched, u64::from(n), "{summary}");
        assert_eq!(dropped, u64::from(n - r.received), "{summary}");
        assert!(summary.contains("reverted (stopped)"), "{summary}");
    }
    no_kernel_state_left(&pair);
}

#[test]
fn full_loss_drops_everything_that_matches_and_nothing_else() {
    let pair = VethPair::new(12);
    pair.add_b_addr("10.12.0.3/24");
    let state = TempDir::new("chst");
    let dst = format!("{}/32", pair.b_ip);
    let (agent, _) = inject(
        &pair.a,
        &state,
        &[
            "--loss",
            "1",
            "--ttl",
            "30s",
            "--iface",
            &pair.a_if,
            "--proto",
            "udp",
            "--dest",
            &dst,
            "--dport",
            "5000-5001",
        ],
    );
    assert_eq!(
        udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip, 5000, 300)).received,
        0
    );
    assert_eq!(
        udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip, 5001, 300)).received,
        0
    );
    // Outside the port range, outside the prefix, other protocol, other family: untouched.
    assert_eq!(
        udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip, 5002, 300)).received,
        300
    );
    assert_eq!(
        udp_run(&pair.a, &pair.b, &UdpRun::new("10.12.0.3", 5000, 300)).received,
        300
    );
    assert_eq!(
        udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip6, 5000, 300)).received,
        300
    );
    // ICMP is not UDP: the fault leaves it alone (every reply back, or ping_rtts fails).
    assert_eq!(
        chaos_testing::ping_rtts(&pair.a, &pair.b_ip, 3, 0.2).len(),
        3
    );
    agent.signal(Signal::SIGTERM);
    let (status, out, _) = agent.wait(Duration::from_secs(10));
    assert!(status.success());
    assert!(
        out.iter().any(|l| l.contains("reverted (shutdown)")),
        "{out:?}"
    );
    no_kernel_state_left(&pair);
}

/// A fault with 16,384 IPv4 and 16,384 IPv6 prefixes from `--dest-file`: the address inside
/// the last prefix of the file loses every packet, its neighbour outside all of them none.
/// The per-packet cost of that many prefixes is the bench's concern; this is about matching.
#[test]
fn sixteen_thousand_prefixes_from_a_file_match_exactly() {
    let pair = VethPair::new(24);
    pair.add_b_addr("10.24.0.3/24");
    let state = TempDir::new("chst");
    let mut list = String::from("# 16,384 IPv4 and 16,384 IPv6 prefixes, the targets last\n");
    // 16,383 IPv4 /32s in 100.64.0.0/10 (no traffic goes there), then the target host.
    for i in 0..16_383u32 {
        let _ = writeln!(
            list,
            "100.{}.{}.{}/32",
            64 + (i >> 16),
            (i >> 8) & 0xff,
            i & 0xff
        );
    }
    list.push_str("10.24.0.3/32   # the target, last line\n");
    for i in 0..16_383u32 {
        let _ = writeln!(list, "2001:db8:{i:x}::/48");
    }
    let _ = writeln!(list, "{}/128", pair.b_ip6);
    let files = TempDir::new("chpf");
    let file = files.0.join("targets.txt");
    std::fs::write(&file, list).expect("write the prefix file");
    let (agent, _id) = inject(
        &pair.a,
        &state,
        &[
            "--loss",
            "1",
            "--ttl",
            "60s",
            "--iface",
            &pair.a_if,
            "--proto",
            "udp",
            "--dest-file",
            file.to_str().expect("utf-8 path"),
        ],
    );
    assert_eq!(
        udp_run(&pair.a, &pair.b, &UdpRun::new("10.24.0.3", 5000, 300)).received,
        0,
        "the address of the file's last IPv4 prefix is dropped"
    );
    assert_eq!(
        udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip, 5000, 300)).received,
        300,
        "an address outside every prefix is not"
    );
    assert_eq!(
        udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip6, 5000, 300)).received,
        0,
        "the file's last IPv6 prefix is dropped"
    );
    agent.signal(Signal::SIGTERM);
    let (status, out, _) = agent.wait(Duration::from_secs(20));
    assert!(status.success(), "{out:?}");
    no_kernel_state_left(&pair);
}

/// One prefix over the limit is refused with the limit's name, and nothing is applied.
#[test]
fn a_prefix_file_over_the_limit_is_refused() {
    let pair = VethPair::new(25);
    let state = TempDir::new("chst");
    let before = host_state(&pair, &state);
    let mut list = String::new();
    for i in 0..16_385u32 {
        let _ = writeln!(
            list,
            "100.{}.{}.{}/32",
            64 + (i >> 16),
            (i >> 8) & 0xff,
            i & 0xff
        );
    }
    let files = TempDir::new("chpf");
    let file = files.0.join("too-many.txt");
    std::fs::write(&file, list).expect("write the prefix file");
    let out = pair
        .a
        .command(bin().to_str().expect("utf-8"))
        .args(["--state-dir", state.str()])
        .args([
            "inject",
            "--loss",
            "1",
            "--ttl",
            "10s",
            "--iface",
            &pair.a_if,
            "--dest-file",
        ])
        .arg(&file)
        .output()
        .expect("run chaos-agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("at most 16384 IPv4 destination prefixes per fault, got 16385"),
        "{err}"
    );
    assert_eq!(host_state(&pair, &state), before, "nothing applied");
}

/// A journal written by the version before the shared fault table (one program copy per fault,
/// journaled as `clsact` + one `netlink_filter` per hook, handle = the fault's id) still
/// replays. The file is the one that version wrote for a `SIGKILL`ed netlink-path agent
/// (`tests/fixtures/journal-v1-per-fault-programs.json`, captured from it); the test makes the
/// kernel state that agent left (its clsact, and its two direct-action `cls_bpf` filters named
/// `chaos_tc_in`/`chaos_tc_eg` at priority `0xC4A0` with that handle) and runs `cleanup`.
#[test]
fn an_old_journal_from_per_fault_programs_is_replayed_by_cleanup() {
    use aya::programs::tc::{NlOptions, TcAttachOptions, TcHandle};
    use aya::programs::{SchedClassifier, TcAttachType};
    const HANDLE: u32 = 0x19d5_0501;
    let pair = VethPair::new(26);
    let state = TempDir::new("chst");
    let before = tc_qdiscs(&pair.a, &pair.a_if);
    let ifname = pair.a_if.clone();
    chaos_testing::in_netns(&pair.a, move || {
        let _ = aya::programs::tc::qdisc_add_clsact(&ifname);
        let mut ebpf = aya::EbpfLoader::new()
            .load(chaos_agent::EBPF_OBJECT)
            .expect("load the object");
        for (name, ty) in [
            ("chaos_tc_in", TcAttachType::Ingress),
            ("chaos_tc_eg", TcAttachType::Egress),
        ] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .expect("program")
                .try_into()
                .expect("sched_cls");
            prog.load().expect("verify");
            let opts = NlOptions {
                priority: 0xC4A0,
                handle: TcHandle::from(HANDLE),
                classid: None,
            };
            let id = prog
                .attach_with_options(&ifname, ty, TcAttachOptions::Netlink(opts))
                .expect("attach as the old agent did");
            // Forgotten, never detached: the filter outlives this process's handles, as the
            // dead agent's did (the kernel keeps the program alive for the filter).
            std::mem::forget(prog.take_link(id).expect("take the link"));
        }
    });
    for hook in ["ingress", "egress"] {
        let f = tc_filters(&pair.a, &pair.a_if, hook);
        assert!(
            f.to_string().contains("chaos_tc_"),
            "the old agent's {hook} filter is in place: {f}"
        );
    }
    // The journal as the old version wrote it, for this interface and a dead owner.
    let fixture = include_str!("fixtures/journal-v1-per-fault-programs.json");
    let journal = fixture
        .replace("oldj-va", &pair.a_if)
        .replace("\"pid\": 32189", "\"pid\": 999999999");
    let dir = state.0.join("faults");
    std::fs::create_dir_all(&dir).expect("journal dir");
    std::fs::create_dir_all(state.0.join("owned")).expect("owned dir");
    std::fs::write(dir.join("f-19d50501.json"), journal).expect("write the journal");
    std::fs::write(
        state.0.join("owned").join(format!("clsact-{}", pair.a_if)),
        "",
    )
    .expect("write the clsact marker");
    let out = pair
        .a
        .command(bin().to_str().expect("utf-8"))
        .args(["--state-dir", state.str(), "cleanup", "--json"])
        .output()
        .expect("run cleanup");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&text).expect("cleanup --json");
    assert_eq!(report["journals_replayed"], 1, "{report}");
    assert_eq!(report["removed_by_kind"]["tc_filter"], 2, "{report}");
    assert_eq!(report["removed_by_kind"]["clsact"], 1, "{report}");
    assert!(
        report["errors"].as_array().is_some_and(Vec::is_empty),
        "{report}"
    );
    no_kernel_state_left(&pair);
    assert_eq!(tc_qdiscs(&pair.a, &pair.a_if), before, "the clsact is gone");
    assert_eq!(
        std::fs::read_dir(&dir).map_or(0, Iterator::count),
        0,
        "the journal is removed once replayed"
    );
}

#[test]
fn ipv6_prefix_filter() {
    let pair = VethPair::new(13);
    let state = TempDir::new("chst");
    let dst = format!("{}/128", pair.b_ip6);
    let (agent, _) = inject(
        &pair.a,
        &state,
        &[
            "--loss", "1", "--ttl", "30s", "--iface", &pair.a_if, "--dest", &dst, "--proto", "udp",
        ],
    );
    assert_eq!(
        udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip6, 5000, 300)).received,
        0
    );
    assert_eq!(
        udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip, 5000, 300)).received,
        300
    );
    drop(agent);
}

#[test]
fn ingress_direction_drops_only_incoming() {
    let pair = VethPair::new(14);
    let state = TempDir::new("chst");
    let (agent, _) = inject(
        &pair.a,
        &state,
        &[
            "--loss",
            "1",
            "--ttl",
            "30s",
            "--iface",
            &pair.a_if,
            "--direction",
            "ingress",
            "--proto",
            "udp",
        ],
    );
    assert_eq!(
        udp_run(&pair.b, &pair.a, &UdpRun::new(&pair.a_ip, 5000, 300)).received,
        0,
        "b -> a must be dropped"
    );
    assert_eq!(
        udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip, 5000, 300)).received,
        300,
        "a -> b untouched"
    );
    drop(agent);
}

#[test]
fn non_first_fragments_are_never_read_as_ports() {
    let pair = VethPair::new(15);
    let state = TempDir::new("chst");
    // 0x17 0x70 = 6000: a program that parsed a non-first fragment's payload as a UDP header
    // would see sport = dport = 6000 and drop it.
    let (agent, _) = inject(
        &pair.a,
        &state,
        &[
            "--loss", "1", "--ttl", "30s", "--iface", &pair.a_if, "--proto", "udp", "--dport",
            "6000",
        ],
    );
    let mut run = UdpRun::new(&pair.b_ip, 5000, 200);
    run.size = 4000;
    run.fill = 0x17;
    let mut payload_run = run.clone();
    payload_run.fill = 0x70;
    assert_eq!(udp_run(&pair.a, &pair.b, &run).received, 200);
    assert_eq!(udp_run(&pair.a, &pair.b, &payload_run).received, 200);
    // And a fragmented datagram to the faulted port is lost (its first fragment is dropped).
    let mut to_fault = UdpRun::new(&pair.b_ip, 6000, 100);
    to_fault.size = 4000;
    assert_eq!(udp_run(&pair.a, &pair.b, &to_fault).received, 0);
    drop(agent);
}

fn tcp_retransmits(ns: &NetNs) -> u64 {
    // /proc/net/snmp is per network namespace: "Tcp: ... RetransSegs ..." header + values.
    let snmp = ns.sh("cat /proc/net/snmp");
    let lines: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let keys: Vec<&str> = lines[0].split_whitespace().collect();
    let vals: Vec<&str> = lines[1].split_whitespace().collect();
    let i = keys
        .iter()
        .position(|k| *k == "RetransSegs")
        .expect("RetransSegs");
    vals[i].parse().expect("number")
}

#[test]
fn tcp_egress_loss_is_wire_loss_so_the_sender_retransmits() {
    let pair = VethPair::new(16);
    let state = TempDir::new("chst");
    let mut server = pair
        .b
        .command("iperf3")
        .args(["-s", "-1", "-B", &pair.b_ip])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    // Wait for the server socket rather than sleeping.
    assert!(eventually(Duration::from_secs(5), || pair
        .b
        .sh("ss -ltnH sport = :5201")
        .contains("5201")));
    let before = tcp_retransmits(&pair.a);
    let (agent, _) = inject(
        &pair.a,
        &state,
        &[
            "--loss", "0.05", "--ttl", "30s", "--iface", &pair.a_if, "--proto", "tcp", "--dport",
            "5201",
        ],
    );
    // The program draws once per skb, and TCP sends GSO super-packets: 8 MB was ~213 skbs, and
    // at p = 0.02 no drop at all came up once (0.98^213 = 1.4 %). 16 MB at p = 0.05 is ~430
    // draws: P(no drop) ~ 3e-10.
    let out = pair.a.sh(&format!("iperf3 -c {} -n 16M -J", pair.b_ip));
    let after = tcp_retransmits(&pair.a);
    agent.signal(Signal::SIGINT);
    let (_, lines, _) = agent.wait(Duration::from_secs(10));
    let _ = server.wait();
    let summary = lines
        .iter()
        .find(|l| l.starts_with("summary:"))
        .expect("summary");
    let (_, dropped) = summary_counts(summary);
    assert!(dropped > 0, "no packet dropped: {summary}");
    // TC_ACT_SHOT at egress would be local congestion (no retransmission counted); our drop
    // must look like wire loss.
    assert!(
        after - before >= dropped / 2,
        "retransmits {} for {dropped} drops; iperf3: {}",
        after - before,
        &out[..out.len().min(300)]
    );
}

#[test]
fn after_ttl_traffic_flows_and_nothing_is_left() {
    let pair = VethPair::new(17);
    let state = TempDir::new("chst");
    let ttl = chaos_testing::test_ttl(2);
    let (agent, _) = inject(
        &pair.a,
        &state,
        &[
            "--loss", "1", "--ttl", &ttl, "--iface", &pair.a_if, "--proto", "udp",
        ],
    );
    assert_eq!(
        udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip, 5000, 100)).received,
        0
    );
    let (status, out, _) = agent.wait(Duration::from_secs(30));
    assert!(status.success());
    assert!(out.iter().any(|l| l.contains("reverted (ttl)")), "{out:?}");
    assert_eq!(
        udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip, 5000, 500)).received,
        500
    );
    no_kernel_state_left(&pair);
    let journal: Vec<_> = std::fs::read_dir(state.0.join("faults")).unwrap().collect();
    assert!(journal.is_empty(), "journal not empty: {journal:?}");
}

#[test]
fn sigkill_on_tcx_detaches_at_once_and_cleanup_clears_the_journal() {
    if !chaos_testing::require("sigkill_on_tcx", chaos_testing::Feature::Tcx) {
        return;
    }
    let pair = VethPair::new(18);
    let state = TempDir::new("chst");
    let (agent, _) = inject(
        &pair.a,
        &state,
        &[
            "--loss",
            "1",
            "--ttl",
            "60s",
            "--iface",
            &pair.a_if,
            "--proto",
            "udp",
            "--attach-mode",
            "tcx",
        ],
    );
    assert_eq!(
        udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip, 5000, 100)).received,
        0
    );
    agent.signal(Signal::SIGKILL);
    let _ = agent.wait(Duration::from_secs(5));
    // The link died with the process: traffic flows right away, well before the 60 s TTL.
    assert_eq!(
        udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip, 5000, 300)).received,
        300
    );
    no_kernel_state_left(&pair);
    let out = pair.a.sh(&format!(
        "{} --state-dir {} cleanup",
        bin().display(),
        state.str()
    ));
    assert!(out.contains("replayed 1 journal"), "{out}");
    assert_eq!(
        std::fs::read_dir(state.0.join("faults")).unwrap().count(),
        0
    );
}

#[test]
fn sigkill_on_netlink_path_kernel_deadline_then_cleanup() {
    let pair = VethPair::new(19);
    let state = TempDir::new("chst");
    let qdiscs_before = tc_qdiscs(&pair.a, &pair.a_if);
    let ttl_s = if chaos_testing::in_vm() { 16 } else { 4 };
    let ttl = format!("{ttl_s}s");
    let (agent, _) = inject(
        &pair.a,
        &state,
        &[
            "--loss",
            "1",
            "--ttl",
            &ttl,
            "--iface",
            &pair.a_if,
            "--proto",
            "udp",
            "--attach-mode",
            "netlink",
        ],
    );
    let injected_at = Instant::now();
    assert_eq!(
        udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip, 5000, 100)).received,
        0
    );
    agent.signal(Signal::SIGKILL);
    let _ = agent.wait(Duration::from_secs(5));
    // Netlink filters outlive the process...
    let f = tc_filters(&pair.a, &pair.a_if, "egress");
    assert!(
        f.to_string().contains("chaos_tc_eg"),
        "filter should survive SIGKILL: {f}"
    );
    // ...and keep dropping until the in-kernel deadline...
    if injected_at.elapsed() < Duration::from_secs(ttl_s - 1) {
        assert_eq!(
            udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip, 5000, 50)).received,
            0
        );
    }
    // ...after which the program lets everything through, with the filter still attached.
    let wait = Duration::from_secs(ttl_s).saturating_sub(injected_at.elapsed())
        + Duration::from_millis(200);
    std::thread::sleep(wait); // waiting for a kernel clock deadline, not for a race
    assert_eq!(
        udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip, 5000, 300)).received,
        300
    );
    assert!(
        tc_filters(&pair.a, &pair.a_if, "egress")
            .to_string()
            .contains("chaos_tc_eg")
    );
    // cleanup removes the filter and the clsact qdisc it created; the qdisc tree is as before.
    let out = pair.a.sh(&format!(
        "{} --state-dir {} cleanup",
        bin().display(),
        state.str()
    ));
    assert!(
        out.contains("removed 2 object(s)")
            && out.contains("1 tc_filter")
            && out.contains("1 clsact"),
        "{out}"
    );
    no_kernel_state_left(&pair);
    assert_eq!(tc_qdiscs(&pair.a, &pair.a_if), qdiscs_before);
    // Idempotent.
    let again = pair.a.sh(&format!(
        "{} --state-dir {} cleanup",
        bin().display(),
        state.str()
    ));
    assert!(again.contains("removed 0 object(s)"), "{again}");
}

#[test]
fn netlink_attach_leaves_a_preexisting_clsact_and_foreign_filters_alone() {
    let pair = VethPair::new(20);
    let state = TempDir::new("chst");
    // Somebody else's clsact and filter.
    pair.a.sh(&format!("tc qdisc add dev {0} clsact && tc filter add dev {0} egress prio 10 protocol ip u32 match ip dport 9 0xffff flowid 1:1", pair.a_if));
    let qdiscs_before = tc_qdiscs(&pair.a, &pair.a_if);
    let (agent, _) = inject(
        &pair.a,
        &state,
        &[
            "--loss",
            "1",
            "--ttl",
            "30s",
            "--iface",
            &pair.a_if,
            "--proto",
            "udp",
            "--attach-mode",
            "netlink",
        ],
    );
    assert_eq!(
        udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip, 5000, 100)).received,
        0
    );
    agent.signal(Signal::SIGTERM);
    let (status, _, err) = agent.wait(Duration::from_secs(10));
    assert!(status.success(), "{err}");
    assert_eq!(
        tc_qdiscs(&pair.a, &pair.a_if),
        qdiscs_before,
        "clsact must stay"
    );
    let f = tc_filters(&pair.a, &pair.a_if, "egress").to_string();
    assert!(
        f.contains("u32") && !f.contains("chaos_tc"),
        "foreign filter must stay, ours must go: {f}"
    );
}

#[test]
fn seed_makes_the_drop_pattern_reproducible() {
    let pair = VethPair::new(21);
    let mut patterns = Vec::new();
    for _ in 0..2 {
        let state = TempDir::new("chst");
        let (agent, _) = inject(
            &pair.a,
            &state,
            &[
                "--loss", "0.3", "--ttl", "30s", "--iface", &pair.a_if, "--proto", "udp", "--seed",
                "42",
            ],
        );
        let mut run = UdpRun::new(&pair.b_ip, 5000, 1000);
        run.cpu = Some(0);
        patterns.push(udp_run(&pair.a, &pair.b, &run).lost);
        drop(agent);
        no_kernel_state_left(&pair);
    }
    assert!(!patterns[0].is_empty());
    assert_eq!(
        patterns[0], patterns[1],
        "same seed, same CPU, same flow: same losses"
    );
}

#[test]
fn protected_ports_are_spared_unless_asked() {
    let pair = VethPair::new(22);
    let state = TempDir::new("chst");
    let (agent, _) = inject(
        &pair.a,
        &state,
        &["--loss", "1", "--ttl", "30s", "--iface", &pair.a_if],
    );
    let mut ssh_like = UdpRun::new(&pair.b_ip, 22, 200);
    assert_eq!(
        udp_run(&pair.a, &pair.b, &ssh_like).received,
        200,
        "port 22 is protected by default"
    );
    assert_eq!(
        udp_run(&pair.a, &pair.b, &UdpRun::new(&pair.b_ip, 5000, 200)).received,
        0
    );
    drop(agent);
    let state = TempDir::new("chst");
    let (agent, _) = inject(
        &pair.a,
        &state,
        &[
            "--loss",
            "1",
            "--ttl",
            "30s",
            "--iface",
            &pair.a_if,
            "--include-protected",
        ],
    );
    ssh_like.sport = 40022;
    assert_eq!(udp_run(&pair.a, &pair.b, &ssh_like).received, 0);
    drop(agent);
}

fn host_state(pair: &VethPair, state: &TempDir) -> String {
    format!(
        "{}|{}|{}|{:?}|{:?}",
        tc_qdiscs(&pair.a, &pair.a_if),
        tc_filters(&pair.a, &pair.a_if, "ingress"),
        tc_filters(&pair.a, &pair.a_if, "egress"),
        our_programs(),
        std::fs::read_dir(&state.0).map_or(0, std::iter::Iterator::count)
    )
}

#[test]
fn dry_run_and_bad_input_change_nothing() {
    let pair = VethPair::new(23);
    let state = TempDir::new("chst");
    let before = host_state(&pair, &state);
    let run = |args: &[&str]| {
        let mut full = vec!["--state-dir", state.str(), "inject"];
        full.extend_from_slice(args);
        let out = pair
            .a
            .command(bin().to_str().unwrap())
            .args(&full)
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (st, out, _) = run(&[
        "--loss",
        "0.1",
        "--ttl",
        "30s",
        "--iface",
        &pair.a_if,
        "--dry-run",
    ]);
    assert!(
        st.success() && out.contains("dry run") && out.contains("nothing changed"),
        "{out}"
    );
    let bad: &[(&[&str], &str)] = &[
        (&["--loss", "0", "--ttl", "30s"], "outside (0, 1]"),
        (&["--loss", "1.5", "--ttl", "30s"], "outside (0, 1]"),
        (&["--loss", "0.1"], "--ttl"),
        (
            &["--loss", "0.1", "--ttl", "0s"],
            "ttl must be greater than zero",
        ),
        (&["--loss", "0.1", "--ttl", "2h"], "exceeds the maximum"),
        (
            &["--loss", "0.1", "--ttl", "30s", "--iface", "nosuch0"],
            "does not exist",
        ),
        (
            &["--loss", "0.1", "--ttl", "30s", "--dest", "10.0.0.0/33"],
            "CIDR",
        ),
        (
            &["--loss", "0.1", "--ttl", "30s", "--dport", "9-3"],
            "bad port range",
        ),
        (
            &["--loss", "0.1", "--ttl", "30s", "--sport", "70000"],
            "bad port range",
        ),
    ];
    for (args, msg) in bad {
        let mut a = args.to_vec();
        if !a.contains(&"--iface") {
            a.extend_from_slice(&["--iface", &pair.a_if]);
        }
        let (st, _, err) = run(&a);
        assert!(!st.success(), "{args:?} accepted");
        assert!(err.contains(msg), "{args:?}: expected {msg:?} in {err}");
        assert_eq!(
            err.trim().lines().next().map(|l| l.starts_with("error:")),
            Some(true),
            "{err}"
        );
    }
    // Not root: a clear error and nothing applied.
    let out = pair.a.sh(&format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all {} --state-dir {} inject --loss 0.1 --ttl 30s --iface {} 2>&1; echo exit=$?",
        bin().display(),
        state.str(),
        pair.a_if
    ));
    assert!(
        out.contains("must run as root") && !out.contains("exit=0"),
        "{out}"
    );
    assert_eq!(host_state(&pair, &state), before);
}
