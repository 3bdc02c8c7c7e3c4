//! Bad input is refused, clearly, and changes nothing (issue 15, item 5).
//!
//! Three doors, each tried with the values that break parsers: sizes at and one over every
//! limit (4,096 port ranges per side, 16,384 prefixes per family and side, 1,024 DNS domains, 64
//! DNS types, a 256-byte label, the 7-day TTL ceiling and the configured maximum TTL), durations
//! that overflow (`1000000000000y`, `18446744073709551616s`), NaN, infinite and negative
//! probabilities and rates, non-UTF-8 argv values, unknown JSON fields at every level, JSON of
//! the wrong types, empty and oversized bodies, DNS names with a 64-byte label, unknown DNS
//! types, `--flap` cycles longer than the TTL or with a zero phase, and a zero TTL:
//! - the command line: `chaos-agent inject` in the foreground, and as the client of a running
//!   `chaos-agent run`; each refusal is exit code 2 (64 where the command line is malformed
//!   rather than a value wrong: an unknown flag, no verb, nothing to inject, no `--ttl`) and one
//!   `error:` line on stderr;
//! - the daemon's API: raw HTTP/1.1 on its Unix socket; each refusal is a 4xx with a JSON
//!   `{"error": {"code", "message"}}`, the message one line;
//! - the configuration file: `chaos-agent config check` and `chaos-agent run --config`.
//!
//! At the limit a value is accepted (a dry run for the CLI, a real fault for the API, reverted
//! again); one over, it is refused. "Nothing applied" is judged from outside, never by asking
//! the agent: `tc -j qdisc show` and `tc -j filter show` of the veth the faults name,
//! `bpftool -j link show` for tcx links of the daemon's programs, and the state dir's journal
//! files. (A foreground `inject` that was refused has exited; a tcx link it made would have died
//! with it, a netlink filter would not, and tc would show it.)
//!
//! Then a corrupt journal at start-up: garbage bytes, truncated JSON, an entry of an unknown
//! future version, an empty file, a directory and a dangling symbolic link where a file is
//! expected. The daemon reports each in one log line naming the file and why, moves it to
//! `<state-dir>/quarantine/<name>.<unix-seconds>`, replays the good journal beside them (its
//! clsact disappears from the veth, as tc shows), and serves requests.
//!
//! None of this depends on the kernel: parsing and validation happen before the kernel is
//! touched, and the journal is read before anything is applied, so the Debian 6.1 guest would
//! only run the same code paths again. These are host tests; `HOST_ONLY` in
//! `xtask/src/vm/lanes.rs` should list them (until it does, the guest runs them too). About
//! 20 s on the host.
#![allow(
    clippy::missing_panics_doc,
    reason = "test helpers panic with context by design"
)]

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chaos_testing::{Feature, NetNs, TempDir, VethPair, require_all, tc_filters, tc_qdiscs};
use serde_json::{Value, json};

fn bin() -> PathBuf {
    chaos_testing::agent_bin(env!("CARGO_BIN_EXE_chaos-agent"))
}

fn os(s: &str) -> OsString {
    s.into()
}

fn bytes(b: &[u8]) -> OsString {
    OsStr::from_bytes(b).to_owned()
}

/// What a CLI run printed.
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the CLI in `ns` with `args`; `socket` is where it looks for a daemon.
fn cli(ns: &NetNs, socket: &Path, args: &[OsString]) -> Outcome {
    let out = ns
        .command(bin().to_str().expect("utf-8 path"))
        .args(args)
        .env("CHAOS_AGENT_SOCKET", socket)
        .env_remove("CHAOS_AGENT_STATE_DIR")
        .env_remove("CHAOS_AGENT_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run the CLI");
    Outcome {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The cases whose command line is malformed rather than a value refused: they exit 64
/// (usage), every other refusal 2 (docs/cli.md).
const USAGE_CASES: [&str; 4] = ["no ttl", "no fault", "unknown flag", "no verb"];

/// A refusal: exit code 2 (64 for [`USAGE_CASES`]), nothing on stdout, exactly one line on
/// stderr, `error: ` first and `want` in it.
fn assert_refused(o: &Outcome, want: &str, case: &str) {
    let line = o.stderr.strip_suffix('\n').unwrap_or(&o.stderr);
    let code = if USAGE_CASES.contains(&case) { 64 } else { 2 };
    assert!(
        o.status.code() == Some(code)
            && o.stdout.is_empty()
            && !line.contains('\n')
            && line.starts_with("error: ")
            && line.contains(want),
        "{case}: want exit {code} and one line with {want:?}; got {} with stdout {:?} and stderr {:?}",
        o.status,
        o.stdout,
        o.stderr
    );
}

/// The file names in the state dir's journal (`faults/`), sorted.
fn journal_files(state: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(state.join("faults"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// tcx links (`bpftool -j link show`) of the programs `pid` holds.
fn tcx_links_of(pid: Option<u32>) -> Vec<u64> {
    let Some(pid) = pid else {
        return Vec::new();
    };
    let ours = chaos_testing::prog_ids_of(pid);
    let links: Value = serde_json::from_str(&chaos_testing::sh("bpftool -j link show"))
        .unwrap_or(Value::Array(Vec::new()));
    links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["prog_id"].as_u64())
        .filter(|id| u32::try_from(*id).is_ok_and(|id| ours.contains(&id)))
        .collect()
}

/// What an applied fault would change, seen from outside: the veth's qdiscs and filters, the
/// tcx links of the daemon's programs, the journal's files.
fn host_state(net: &VethPair, state: &Path, daemon: Option<u32>) -> String {
    format!(
        "qdiscs {} | ingress filters {} | egress filters {} | tcx links {:?} | journal {:?}",
        tc_qdiscs(&net.a, &net.a_if),
        tc_filters(&net.a, &net.a_if, "ingress"),
        tc_filters(&net.a, &net.a_if, "egress"),
        tcx_links_of(daemon),
        journal_files(state)
    )
}

/// One prefix a line, `n` of them: IPv4 host routes in `10.0.0.0/8`, or IPv6 ones in `fd77::/16`.
fn prefix_file(dir: &Path, name: &str, n: u32, v6: bool) -> PathBuf {
    let mut text = String::new();
    for i in 0..n {
        if v6 {
            let _ = writeln!(text, "fd77::{:x}:{:x}/128", i >> 16, i & 0xffff);
        } else {
            let _ = writeln!(text, "10.{}.{}.{}/32", i >> 16, (i >> 8) & 0xff, i & 0xff);
        }
    }
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write a prefix file");
    p
}

fn label_of(n: usize) -> String {
    "x".repeat(n)
}

/// A DNS name with one label of `n` bytes.
fn long_label_domain(n: usize) -> String {
    format!("{}.example.com", "a".repeat(n))
}

/// `--flag value` repeated with `n` values from `f`.
fn repeated(flag: &str, n: u32, f: impl Fn(u32) -> String) -> Vec<OsString> {
    (0..n).flat_map(|i| [os(flag), os(&f(i))]).collect()
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "the matrix is one table, read top to bottom"
)]
fn cli_foreground_refuses_bad_input_with_one_line_and_applies_nothing() {
    let test = "cli_foreground_refuses_bad_input_with_one_line_and_applies_nothing";
    if !require_all(
        test,
        &[Feature::Root, Feature::Tool("tc"), Feature::Tool("bpftool")],
    ) {
        return;
    }
    let net = VethPair::new(130);
    let tmp = TempDir::new("chbi");
    // Never created: a refused inject must not even open the journal.
    let state = tmp.0.join("state");
    let socket = tmp.0.join("no-agent.sock");
    let before = host_state(&net, &state, None);
    let inject = |args: &[OsString]| -> Outcome {
        let mut full = vec![
            os("--state-dir"),
            state.clone().into_os_string(),
            os("inject"),
            os("--foreground"),
        ];
        if !args.iter().any(|a| a.as_bytes().starts_with(b"--iface")) {
            full.extend([os("--iface"), os(&net.a_if)]);
        }
        full.extend_from_slice(args);
        cli(&net.a, &socket, &full)
    };
    let v = |args: &[&str]| -> Vec<OsString> { args.iter().map(|a| os(a)).collect() };
    let with = |mut base: Vec<OsString>, more: Vec<OsString>| {
        base.extend(more);
        base
    };
    let loss = v(&["--loss", "0.1", "--ttl", "5s"]);
    let dns = v(&["--dns", "servfail", "--ttl", "5s"]);
    let v4_16385 = prefix_file(&tmp.0, "v4-16385", 16_385, false);
    let v6_16385 = prefix_file(&tmp.0, "v6-16385", 16_385, true);
    let v4_16384 = prefix_file(&tmp.0, "v4-16384", 16_384, false);
    let v6_16384 = prefix_file(&tmp.0, "v6-16384", 16_384, true);
    let label_64 = long_label_domain(64);
    let name_254 = ["a".repeat(63).as_str(); 4].join(".")[..254].to_owned();

    let cases: Vec<(&str, Vec<OsString>, &str)> = vec![
        // TTL: zero, overflowing, over the maximum (the default 1h, --max-ttl, the 7-day ceiling).
        (
            "zero ttl",
            v(&["--loss", "0.1", "--ttl", "0s"]),
            "a ttl must be greater than zero",
        ),
        (
            "ttl 1000000000000y",
            v(&["--loss", "0.1", "--ttl", "1000000000000y"]),
            "too long to be a duration",
        ),
        (
            "ttl 2^64 s",
            v(&["--loss", "0.1", "--ttl", "18446744073709551616s"]),
            "too long to be a duration",
        ),
        (
            "no ttl",
            v(&["--loss", "0.1"]),
            "--ttl is required when no agent is running",
        ),
        (
            "ttl over the default maximum",
            v(&["--loss", "0.1", "--ttl", "61m"]),
            "ttl 1h 1m exceeds the maximum of 1h",
        ),
        (
            "ttl over --max-ttl",
            v(&["--loss", "0.1", "--ttl", "2h", "--max-ttl", "90m"]),
            "ttl 2h exceeds the maximum of 1h 30m",
        ),
        (
            "ttl over the ceiling",
            v(&["--loss", "0.1", "--ttl", "8days", "--max-ttl", "7days"]),
            "ttl 8days exceeds the maximum of 7days",
        ),
        (
            "max-ttl over the ceiling",
            with(loss.clone(), v(&["--max-ttl", "7days 1s"])),
            "is outside (0, 7days]",
        ),
        (
            "zero max-ttl",
            with(loss.clone(), v(&["--max-ttl", "0s"])),
            "0s is outside (0, 7days]",
        ),
        (
            "max-ttl 2^64 s",
            with(loss.clone(), v(&["--max-ttl", "18446744073709551616s"])),
            "too long to be a duration",
        ),
        (
            "delay 1000000000000y",
            v(&["--delay", "1000000000000y", "--ttl", "5s"]),
            "invalid value '1000000000000y' for '--delay <DELAY>'",
        ),
        (
            "delay over its maximum",
            v(&["--delay", "2m", "--ttl", "5s"]),
            "delay 2m is above the maximum of 1m",
        ),
        // Probabilities and rates: NaN, infinite, negative, out of range.
        (
            "loss NaN",
            v(&["--loss", "NaN", "--ttl", "5s"]),
            "\"NaN\" is not a number",
        ),
        (
            "loss inf",
            v(&["--loss", "inf", "--ttl", "5s"]),
            "\"inf\" is not a number",
        ),
        (
            "loss -inf",
            v(&["--loss", "-inf", "--ttl", "5s"]),
            "\"-inf\" is not a number",
        ),
        (
            "loss negative",
            v(&["--loss", "-0.1", "--ttl", "5s"]),
            "invalid value '-0.1' for '--loss <LOSS>': -0.1 is outside (0, 1]",
        ),
        (
            "loss zero",
            v(&["--loss", "0", "--ttl", "5s"]),
            "0 is outside (0, 1]",
        ),
        (
            "loss over 100%",
            v(&["--loss", "101%", "--ttl", "5s"]),
            "101% is outside (0, 1]",
        ),
        (
            "corrupt inf",
            v(&["--corrupt", "inf", "--ttl", "5s"]),
            "\"inf\" is not a number",
        ),
        (
            "duplicate negative",
            v(&["--duplicate", "-1", "--ttl", "5s"]),
            "-1 is outside (0, 1]",
        ),
        (
            "correlation negative",
            v(&["--delay", "10ms", "--correlation", "-0.5", "--ttl", "5s"]),
            "-0.5 is outside [0, 1]",
        ),
        (
            "dns rate NaN",
            with(dns.clone(), v(&["--dns-rate", "NaN"])),
            "\"NaN\" is not a number",
        ),
        (
            "gemodel NaN",
            v(&["--loss-model", "gemodel:NaN,0.1", "--ttl", "5s"]),
            "bad loss model \"gemodel:NaN,0.1\": not a number",
        ),
        (
            "gemodel negative p (p + r = 0)",
            v(&["--loss-model", "gemodel:-0.1,0.1", "--ttl", "5s"]),
            "gemodel p must be in (0, 1], got -0.1",
        ),
        (
            "gemodel 1-h over 1",
            v(&["--loss-model", "gemodel:0.1,0.1,2", "--ttl", "5s"]),
            "gemodel 1-h must be in [0, 1], got 2",
        ),
        (
            "rate NaN",
            v(&["--rate", "NaNmbit", "--ttl", "5s"]),
            "bad rate \"NaNmbit\"",
        ),
        (
            "rate negative",
            v(&["--rate", "-1mbit", "--ttl", "5s"]),
            "bad rate \"-1mbit\"",
        ),
        (
            "rate 1e400",
            v(&["--rate", "1e400mbit", "--ttl", "5s"]),
            "bad rate \"1e400mbit\"",
        ),
        (
            "rate over 4tbit",
            v(&["--rate", "4001gbit", "--ttl", "5s"]),
            "bad rate \"4001gbit\"",
        ),
        // Ports and prefixes: malformed, and one over the limits.
        (
            "port 0",
            with(loss.clone(), v(&["--dport", "0"])),
            "bad port range \"0\"",
        ),
        (
            "port 70000",
            with(loss.clone(), v(&["--dport", "70000"])),
            "bad port range \"70000\"",
        ),
        (
            "empty port range",
            with(loss.clone(), v(&["--dport", "10-5"])),
            "bad port range \"10-5\"",
        ),
        (
            "negative port",
            with(loss.clone(), v(&["--sport", "-5"])),
            "bad port range \"-5\"",
        ),
        (
            "4097 dport ranges",
            with(
                loss.clone(),
                repeated("--dport", 4097, |i| (i + 1).to_string()),
            ),
            "at most 4096 destination port ranges per fault, got 4097",
        ),
        (
            "4097 sport ranges",
            with(
                loss.clone(),
                repeated("--sport", 4097, |i| (i + 1).to_string()),
            ),
            "at most 4096 source port ranges per fault, got 4097",
        ),
        (
            "16385 IPv4 destinations",
            with(
                loss.clone(),
                vec![os("--dest-file"), v4_16385.clone().into_os_string()],
            ),
            "at most 16384 IPv4 destination prefixes per fault, got 16385",
        ),
        (
            "16385 IPv6 sources",
            with(
                loss.clone(),
                vec![os("--src-file"), v6_16385.clone().into_os_string()],
            ),
            "at most 16384 IPv6 source prefixes per fault, got 16385",
        ),
        (
            "bad CIDR",
            with(loss.clone(), v(&["--dest", "10.0.0.0/33"])),
            "\"10.0.0.0/33\" is not an IPv4/IPv6 address or CIDR",
        ),
        (
            "ports with icmp",
            with(loss.clone(), v(&["--proto", "icmp", "--dport", "80"])),
            "port filters only apply to tcp and udp",
        ),
        // DNS.
        (
            "64-byte DNS label",
            with(dns.clone(), vec![os("--dns-domain"), os(&label_64)]),
            "a label is longer than 63 bytes",
        ),
        (
            "254-character DNS name",
            with(dns.clone(), vec![os("--dns-domain"), os(&name_254)]),
            "longer than 253 characters",
        ),
        (
            "unknown DNS type",
            with(dns.clone(), v(&["--dns-type", "BOGUS"])),
            "unknown DNS type \"BOGUS\"",
        ),
        (
            "DNS type number too large",
            with(dns.clone(), v(&["--dns-type", "TYPE65536"])),
            "unknown DNS type \"TYPE65536\"",
        ),
        (
            "1025 DNS domains",
            with(
                dns.clone(),
                repeated("--dns-domain", 1025, |i| format!("d{i}.example.com")),
            ),
            "at most 1024 DNS domains per fault, got 1025",
        ),
        (
            "65 DNS types",
            with(
                dns.clone(),
                repeated("--dns-type", 65, |i| format!("TYPE{}", 1000 + i)),
            ),
            "at most 64 DNS types per fault, got 65",
        ),
        (
            "DNS port 0",
            with(dns.clone(), v(&["--dns-port", "0"])),
            "bad port range \"0\"",
        ),
        (
            "DNS filter without --dns",
            with(loss.clone(), v(&["--dns-rate", "0.5"])),
            "need --dns ANSWER",
        ),
        (
            "DNS over icmp",
            with(dns.clone(), v(&["--proto", "icmp"])),
            "a DNS fault acts on UDP and TCP answers",
        ),
        (
            "DNS with loss",
            with(dns.clone(), v(&["--loss", "0.1"])),
            "a DNS fault cannot also carry loss or shaping",
        ),
        // --flap.
        (
            "flap longer than the ttl",
            with(loss.clone(), v(&["--flap", "3s/3s"])),
            "bad --flap \"3s/3s\": ON + OFF (6s) is longer than the ttl (5s)",
        ),
        (
            "flap with a zero ON",
            with(loss.clone(), v(&["--flap", "0s/1s"])),
            "both phases must be at least 10ms",
        ),
        (
            "flap with a zero OFF",
            with(loss.clone(), v(&["--flap", "1s/0s"])),
            "both phases must be at least 10ms",
        ),
        (
            "flap without OFF",
            with(loss.clone(), v(&["--flap", "2s"])),
            "expected ON/OFF",
        ),
        (
            "flap 1000000000000y",
            with(loss.clone(), v(&["--flap", "1000000000000y/1s"])),
            "bad --flap \"1000000000000y/1s\"",
        ),
        // Labels.
        (
            "257-byte label",
            with(loss.clone(), vec![os("--label"), os(&label_of(257))]),
            "label must be at most 256 bytes without control characters, got 257 bytes",
        ),
        (
            "258-byte label of 129 characters",
            with(loss.clone(), vec![os("--label"), os(&"é".repeat(129))]),
            "got 258 bytes",
        ),
        (
            "label with a newline",
            with(loss.clone(), v(&["--label", "game\nday"])),
            "with control characters",
        ),
        // Non-UTF-8 argv values.
        (
            "non-UTF-8 interface",
            with(loss.clone(), vec![os("--iface"), bytes(b"va\xff")]),
            r#"the value of --iface is not valid UTF-8: "va\xff""#,
        ),
        (
            "non-UTF-8 label",
            with(loss.clone(), vec![bytes(b"--label=\xfe\xfe")]),
            r#"the value of --label is not valid UTF-8: "\xfe\xfe""#,
        ),
        (
            "non-UTF-8 probability",
            vec![os("--loss"), bytes(b"0.\xff"), os("--ttl"), os("5s")],
            r#"the value of --loss is not valid UTF-8: "0.\xff""#,
        ),
        (
            "non-UTF-8 DNS domain",
            with(
                dns.clone(),
                vec![os("--dns-domain"), bytes(b"\xc3\x28.com")],
            ),
            r#"the value of --dns-domain is not valid UTF-8: "\xc3(.com""#,
        ),
        // Everything else.
        (
            "no such interface",
            with(loss.clone(), v(&["--iface", "nosuch0"])),
            "interface \"nosuch0\" does not exist",
        ),
        (
            "interface name too long",
            with(loss.clone(), v(&["--iface", "a-very-long-interface-name"])),
            "bad interface name \"a-very-long-interface-name\"",
        ),
        (
            "no fault",
            v(&["--ttl", "5s"]),
            "nothing to inject: give --loss",
        ),
        (
            "unknown direction",
            with(loss.clone(), v(&["--direction", "up"])),
            "invalid value 'up' for '--direction <DIRECTION>'; [possible values: ingress, egress, both]",
        ),
        (
            "unknown flag",
            with(loss.clone(), v(&["--bogus"])),
            "unexpected argument '--bogus' found",
        ),
        (
            "missing value",
            v(&["--loss", "--ttl", "5s"]),
            "a value is required for '--loss <LOSS>' but none was supplied",
        ),
        (
            "negative seed",
            with(loss.clone(), v(&["--seed", "-1"])),
            "invalid value '-1' for '--seed <SEED>'",
        ),
        (
            "seed over 64 bits",
            with(loss.clone(), v(&["--seed", "18446744073709551616"])),
            "invalid value '18446744073709551616' for '--seed <SEED>'",
        ),
        (
            "jitter without delay",
            v(&["--jitter", "5ms", "--ttl", "5s"]),
            "--jitter needs --delay",
        ),
        (
            "EDT on ingress",
            v(&[
                "--delay",
                "10ms",
                "--shaping-backend",
                "edt",
                "--direction",
                "ingress",
                "--ttl",
                "5s",
            ]),
            "--shaping-backend edt works on egress only",
        ),
    ];
    for (case, args, want) in &cases {
        assert_refused(&inject(args), want, case);
    }
    // The other verbs parse their values before they look for an agent.
    for (case, args, want) in [
        (
            "extend by 2^64-1 s",
            v(&["extend", "f-00000001", "--by", "18446744073709551615s"]),
            "18446744073709551615s is outside (0, 7days]",
        ),
        (
            "extend by 1000000000000y",
            v(&["extend", "f-00000001", "--by", "1000000000000y"]),
            "too long to be a duration",
        ),
        (
            "extend by zero",
            v(&["extend", "f-00000001", "--by", "0s"]),
            "0s is outside (0, 7days]",
        ),
        (
            "extend by a negative",
            v(&["extend", "f-00000001", "--by", "-5s"]),
            "invalid value '-5s' for '--by <BY>'",
        ),
        (
            "bad fault id",
            v(&["stop", "f-xyz"]),
            "bad fault id \"f-xyz\": expected f-XXXXXXXX",
        ),
        ("no verb", Vec::new(), "'chaos-agent' requires a subcommand"),
    ] {
        assert_refused(&cli(&net.a, &socket, &args), want, case);
    }

    // At the limits: accepted (a dry run validates as a real inject does and changes nothing).
    for (case, args) in [
        (
            "4096 port ranges each side, 16384 prefixes of each family each side, a 256-byte label, ttl at the 7-day ceiling",
            with(
                with(
                    v(&["--loss", "0.1", "--ttl", "7days", "--max-ttl", "7days"]),
                    repeated("--dport", 4096, |i| (i + 1).to_string()),
                ),
                with(
                    repeated("--sport", 4096, |i| (i + 1).to_string()),
                    vec![
                        os("--dest-file"),
                        v4_16384.clone().into_os_string(),
                        os("--dest-file"),
                        v6_16384.clone().into_os_string(),
                        os("--src-file"),
                        v4_16384.clone().into_os_string(),
                        os("--src-file"),
                        v6_16384.clone().into_os_string(),
                        os("--label"),
                        os(&label_of(256)),
                    ],
                ),
            ),
        ),
        (
            "ttl at the default maximum, a flap that fills it",
            v(&["--loss", "0.1", "--ttl", "1h", "--flap", "30m/30m"]),
        ),
        (
            "1024 DNS domains with 63-byte labels, 64 DNS types",
            with(
                with(
                    dns.clone(),
                    repeated("--dns-domain", 1024, |i| {
                        format!("{}{i:04}.example.com", "a".repeat(59))
                    }),
                ),
                repeated("--dns-type", 64, |i| format!("TYPE{}", 1000 + i)),
            ),
        ),
    ] {
        let mut args = args;
        args.push(os("--dry-run"));
        let o = inject(&args);
        assert!(
            o.status.success() && o.stdout.starts_with("dry run: "),
            "{case}: accepted at the limit, got {} {:?} {:?}",
            o.status,
            o.stdout,
            o.stderr
        );
    }

    assert_eq!(
        host_state(&net, &state, None),
        before,
        "a refused inject changed the host"
    );
    assert!(
        !state.exists(),
        "a refused inject (or a dry run) created the state dir {}",
        state.display()
    );
}

/// A `chaos-agent run` inside a namespace, with its own socket, state dir and JSON log.
struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
    ns_name: String,
}

impl Daemon {
    fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }
    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }
    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }
    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Starts the daemon with `config` (TOML) and waits until its API answers.
    fn start(ns: &NetNs, dir: &Path, config: &str) -> Self {
        std::fs::write(dir.join("config.toml"), config).expect("write the config");
        let mut d = Self {
            child: None,
            dir: dir.to_owned(),
            ns_name: ns.name.clone(),
        };
        let log = std::fs::File::create(d.log()).expect("log file");
        let child = ns
            .command(bin().to_str().expect("utf-8 path"))
            .arg("--state-dir")
            .arg(d.state())
            .arg("--socket")
            .arg(d.socket())
            .args(["run", "--config"])
            .arg(dir.join("config.toml"))
            .args(["--log-format", "json"])
            .env("CHAOS_AGENT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the daemon");
        d.child = Some(child);
        let t0 = Instant::now();
        loop {
            if let Some(st) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("the daemon exited at start ({st}): {}", d.log_text());
            }
            if d.socket().exists() && http(&d.socket(), "GET", "/v1/status", None).0 == 200 {
                return d;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the daemon did not come up: {}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and the exit status (bounded).
    fn stop(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(c.id()).expect("pid")),
            nix::sys::signal::Signal::SIGTERM,
        );
        let t0 = Instant::now();
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                return st;
            }
            if t0.elapsed() > Duration::from_secs(15) {
                let _ = c.kill();
                panic!("the daemon did not exit after SIGTERM: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}", self.log_text());
        }
        if self.child.is_some() {
            let _ = self.stop();
            // Whatever a half-finished test left, removed inside the test's namespace only.
            let _ = Command::new("ip")
                .args(["netns", "exec", &self.ns_name])
                .arg(bin())
                .arg("--state-dir")
                .arg(self.state())
                .arg("cleanup")
                .output();
        }
    }
}

/// One HTTP/1.1 request on the agent's Unix socket: (status, body as JSON, or as a string if it
/// is not JSON).
fn http(socket: &Path, method: &str, path: &str, body: Option<&[u8]>) -> (u16, Value) {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return (0, Value::Null);
    };
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.set_write_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n");
    if let Some(b) = body {
        let _ = write!(
            head,
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        );
    }
    head.push_str("\r\n");
    // The agent may answer (413) and close before all of a huge body is written: the answer is
    // what counts, not the write.
    let _ = s
        .write_all(head.as_bytes())
        .and_then(|()| s.write_all(body.unwrap_or_default()));
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return (0, Value::String(text));
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A 4xx with the JSON error body: `code`, and a one-line message containing `want`.
fn assert_api_refused(answer: &(u16, Value), status: u16, code: &str, want: &str, case: &str) {
    let (got, body) = answer;
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        *got == status
            && body["error"]["code"] == code
            && msg.contains(want)
            && !msg.contains('\n')
            && msg.chars().count() <= 512,
        "{case}: want {status} {code} with {want:?}; got {got} {}",
        body.to_string().chars().take(600).collect::<String>()
    );
}

/// An API case: what it is, the body, the (code, status) it must get, a part of the message.
type ApiCase<'a> = (&'a str, Vec<u8>, (&'a str, u16), &'a str);

const DAEMON_CONFIG: &str = "[metrics]\nenabled = false\n[limits]\nmax_ttl = \"10m\"\n";

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "the matrix is one table, read top to bottom"
)]
fn client_and_api_refuse_bad_input_and_apply_nothing() {
    let test = "client_and_api_refuse_bad_input_and_apply_nothing";
    if !require_all(
        test,
        &[Feature::Root, Feature::Tool("tc"), Feature::Tool("bpftool")],
    ) {
        return;
    }
    let net = VethPair::new(131);
    let tmp = TempDir::new("chbi");
    let daemon = Daemon::start(&net.a, &tmp.0, DAEMON_CONFIG);
    let socket = daemon.socket();
    let state = daemon.state();
    let before = host_state(&net, &state, Some(daemon.pid()));
    let iface = net.a_if.clone();

    // The CLI as the daemon's client: what clap refuses never reaches it; the rest it refuses.
    let client = |args: &[OsString]| -> Outcome {
        let mut full = vec![os("inject")];
        if !args.iter().any(|a| a.as_bytes().starts_with(b"--iface")) {
            full.extend([os("--iface"), os(&iface)]);
        }
        full.extend_from_slice(args);
        cli(&net.a, &socket, &full)
    };
    let v = |args: &[&str]| -> Vec<OsString> { args.iter().map(|a| os(a)).collect() };
    for (case, args, want) in [
        (
            "zero ttl (sent, it would get the daemon's default_ttl)",
            v(&["--loss", "0.1", "--ttl", "0s"]),
            "a ttl must be greater than zero",
        ),
        (
            "ttl 1000000000000y",
            v(&["--loss", "0.1", "--ttl", "1000000000000y"]),
            "too long to be a duration",
        ),
        (
            "ttl over the daemon's max_ttl",
            v(&["--loss", "0.1", "--ttl", "11m"]),
            "ttl 11m exceeds the maximum of 10m",
        ),
        (
            "gemodel with p + r = 0 (its mean loss is NaN)",
            v(&["--loss-model", "gemodel:-0.1,0.1", "--ttl", "5s"]),
            "gemodel p must be in (0, 1], got -0.1",
        ),
        (
            "gemodel with a negative p",
            v(&["--loss-model", "gemodel:-0.05,0.1", "--ttl", "5s"]),
            "gemodel p must be in (0, 1], got -0.05",
        ),
        (
            "flap longer than the ttl",
            v(&["--loss", "0.1", "--ttl", "5s", "--flap", "5s/5s"]),
            "ON + OFF (10s) is longer than the ttl (5s)",
        ),
        (
            "4097 dport ranges",
            [
                v(&["--loss", "0.1", "--ttl", "5s"]),
                repeated("--dport", 4097, |i| (i + 1).to_string()),
            ]
            .concat(),
            "at most 4096 destination port ranges per fault, got 4097",
        ),
        (
            "64-byte DNS label",
            [
                v(&["--dns", "nxdomain", "--ttl", "5s", "--dns-domain"]),
                vec![os(&long_label_domain(64))],
            ]
            .concat(),
            "a label is longer than 63 bytes",
        ),
        (
            "257-byte label",
            [
                v(&["--loss", "0.1", "--ttl", "5s", "--label"]),
                vec![os(&label_of(257))],
            ]
            .concat(),
            "got 257 bytes",
        ),
        (
            "label with a tab",
            v(&["--loss", "0.1", "--ttl", "5s", "--label", "a\tb"]),
            "with control characters",
        ),
        (
            "no such interface",
            v(&["--loss", "0.1", "--ttl", "5s", "--iface", "nosuch0"]),
            "interface \"nosuch0\" does not exist",
        ),
        (
            "non-UTF-8 label",
            vec![
                os("--loss"),
                os("0.1"),
                os("--ttl"),
                os("5s"),
                os("--label"),
                bytes(b"\xff"),
            ],
            r#"the value of --label is not valid UTF-8: "\xff""#,
        ),
    ] {
        assert_refused(&client(&args), want, case);
    }
    assert_eq!(
        host_state(&net, &state, Some(daemon.pid())),
        before,
        "a refused client inject changed the host"
    );

    // The API, raw.
    let post = |body: &[u8]| http(&socket, "POST", "/v1/faults", Some(body));
    let spec = |extra: Value| -> Vec<u8> {
        let mut s = json!({"ttl": "5s", "loss": {"probability": 0.1}, "target": {"iface": iface}});
        for (k, v) in extra.as_object().expect("object") {
            if v.is_null() {
                s.as_object_mut().expect("object").remove(k);
            } else {
                s[k] = v.clone();
            }
        }
        serde_json::to_vec(&s).expect("json")
    };
    let dns_spec = |dns: Value| spec(json!({"loss": null, "dns": dns}));
    let target = |extra: Value| -> Value {
        let mut t = json!({"iface": iface});
        for (k, v) in extra.as_object().expect("object") {
            t[k] = v.clone();
        }
        t
    };
    let n_strings = |n: u32, f: &dyn Fn(u32) -> String| -> Value {
        Value::Array((0..n).map(|i| Value::String(f(i))).collect())
    };
    let v4 = |i: u32| format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 0xff, i & 0xff);
    let v6 = |i: u32| format!("fd77::{:x}:{:x}/128", i >> 16, i & 0xffff);
    let nth_port = |i: u32| (i + 1).to_string();
    let huge_name = "x".repeat(100_000);
    let invalid = ("invalid_request", 400);
    let fault = ("invalid_fault", 400);
    let cases: Vec<ApiCase> = vec![
        // Unknown fields at every level.
        (
            "unknown top-level field",
            spec(json!({"bogus": 1})),
            invalid,
            "unknown field `bogus`, expected one of `ttl`",
        ),
        (
            "unknown target field",
            spec(json!({"target": target(json!({"bogus": 1}))})),
            invalid,
            "unknown field `bogus`, expected one of `iface`",
        ),
        (
            "unknown loss field",
            spec(json!({"loss": {"probability": 0.1, "bogus": 1}})),
            invalid,
            "unknown field `bogus`, expected `probability` or `model`",
        ),
        (
            "unknown loss model field",
            spec(json!({"loss": {"probability": 0.1, "model": {"p": 0.1, "r": 0.1, "bogus": 1}}})),
            invalid,
            "unknown field `bogus`, expected one of `p`",
        ),
        (
            "unknown shape field",
            spec(json!({"loss": null, "shape": {"rate": "1mbit", "bogus": 1}})),
            invalid,
            "unknown field `bogus`, expected one of `delay`",
        ),
        (
            "unknown dns field",
            dns_spec(json!({"answer": "servfail", "bogus": 1})),
            invalid,
            "unknown field `bogus`, expected one of `answer`",
        ),
        (
            "a huge unknown field name",
            spec(json!({huge_name.clone(): 1})),
            invalid,
            "unknown field `xxxxxxxx",
        ),
        (
            "a field name with a newline",
            spec(json!({"a\nb": 1})),
            invalid,
            "unknown field `a\\nb`",
        ),
        (
            "a duplicate field",
            br#"{"ttl":"5s","ttl":"6s","loss":{"probability":0.1}}"#.to_vec(),
            invalid,
            "duplicate field `ttl`",
        ),
        // Wrong JSON types.
        (
            "ttl as a number",
            spec(json!({"ttl": 5})),
            invalid,
            "invalid type: integer `5`, expected a duration",
        ),
        (
            "probability as a string",
            spec(json!({"loss": {"probability": "0.1"}})),
            invalid,
            "invalid type: string \"0.1\", expected f64",
        ),
        (
            "port as a number",
            spec(json!({"target": target(json!({"dports": [80]}))})),
            invalid,
            "invalid type: integer `80`, expected a string",
        ),
        (
            "target as a string",
            spec(json!({"target": "eth0"})),
            invalid,
            "expected struct Target",
        ),
        (
            "negative seed",
            spec(json!({"seed": -1})),
            invalid,
            "invalid value: integer `-1`, expected u64",
        ),
        (
            "force as a string",
            spec(json!({"force": "yes"})),
            invalid,
            "expected a boolean",
        ),
        (
            "label as a number",
            spec(json!({"label": 5})),
            invalid,
            "expected a string",
        ),
        (
            "unknown direction",
            spec(json!({"target": target(json!({"direction": "up"}))})),
            invalid,
            "unknown variant `up`, expected one of `ingress`, `egress`, `both`",
        ),
        (
            "the spec as an array",
            br#"["5s", {}, {"probability": 0.5}]"#.to_vec(),
            invalid,
            "expected a JSON object, got an array",
        ),
        (
            "null",
            b"null".to_vec(),
            invalid,
            "expected a JSON object, got null",
        ),
        (
            "a number",
            b"42".to_vec(),
            invalid,
            "expected a JSON object, got a number",
        ),
        (
            "a string",
            b"\"loss\"".to_vec(),
            invalid,
            "expected a JSON object, got a string",
        ),
        (
            "empty body",
            Vec::new(),
            invalid,
            "the request body is empty",
        ),
        (
            "blank body",
            b" \r\n\t".to_vec(),
            invalid,
            "the request body is empty",
        ),
        (
            "truncated JSON",
            br#"{"ttl":"5s","loss":{"probab"#.to_vec(),
            invalid,
            "EOF while parsing",
        ),
        (
            "garbage bytes",
            b"\xff\xfe\x00garbage".to_vec(),
            invalid,
            "expected a JSON object, got something that is not JSON",
        ),
        (
            "non-UTF-8 in a string",
            b"{\"ttl\":\"5s\",\"label\":\"\xff\",\"loss\":{\"probability\":0.1}}".to_vec(),
            invalid,
            "invalid unicode code point",
        ),
        (
            "a body over 8 MiB",
            spec(json!({"label": label_of(9 << 20)})),
            ("body_too_large", 413),
            "larger than 8 MiB",
        ),
        (
            "no ttl (docs/api.md says default_ttl applies)",
            spec(json!({"ttl": null})),
            invalid,
            "missing field `ttl`",
        ),
        // Durations.
        (
            "ttl over max_ttl",
            spec(json!({"ttl": "11m"})),
            ("ttl_too_long", 400),
            "ttl 11m exceeds the maximum of 10m",
        ),
        (
            "ttl over the ceiling",
            spec(json!({"ttl": "8days"})),
            ("ttl_too_long", 400),
            "ttl 8days exceeds the maximum of 10m",
        ),
        (
            "ttl 1000000000000y",
            spec(json!({"ttl": "1000000000000y"})),
            invalid,
            "invalid value: string \"1000000000000y\", expected a duration",
        ),
        (
            "ttl 2^64 s",
            spec(json!({"ttl": "18446744073709551616s"})),
            invalid,
            "expected a duration",
        ),
        (
            "delay over its maximum",
            spec(json!({"loss": null, "shape": {"delay": "2m"}})),
            fault,
            "delay 2m is above the maximum of 1m",
        ),
        // Probabilities and rates.
        (
            "negative probability",
            spec(json!({"loss": {"probability": -0.1}})),
            fault,
            "loss probability must be in (0, 1], got -0.1",
        ),
        (
            "zero probability",
            spec(json!({"loss": {"probability": 0.0}})),
            fault,
            "got 0",
        ),
        (
            "probability over 1",
            spec(json!({"loss": {"probability": 1.5}})),
            fault,
            "got 1.5",
        ),
        (
            "probability 1e999",
            br#"{"ttl":"5s","loss":{"probability":1e999}}"#.to_vec(),
            invalid,
            "number out of range",
        ),
        (
            "probability NaN",
            br#"{"ttl":"5s","loss":{"probability":NaN}}"#.to_vec(),
            invalid,
            "expected value",
        ),
        (
            "probability -Infinity",
            br#"{"ttl":"5s","loss":{"probability":-Infinity}}"#.to_vec(),
            invalid,
            "invalid number",
        ),
        (
            "no loss at all",
            spec(json!({"loss": null})),
            fault,
            "the fault does nothing",
        ),
        (
            "gemodel p + r = 0",
            spec(json!({"loss": {"probability": 0.1, "model": {"p": 0.0, "r": 0.0}}})),
            fault,
            "gemodel p must be in (0, 1], got 0",
        ),
        (
            "corrupt over 1",
            spec(json!({"loss": null, "shape": {"rate": "1mbit", "corrupt": 1.5}})),
            fault,
            "corrupt must be in (0, 1], got 1.5",
        ),
        (
            "negative correlation",
            spec(json!({"loss": null, "shape": {"delay": "10ms", "correlation": -0.1}})),
            fault,
            "correlation must be in [0, 1], got -0.1",
        ),
        (
            "rate NaN",
            spec(json!({"loss": null, "shape": {"rate": "NaNmbit"}})),
            invalid,
            "bad rate \"NaNmbit\"",
        ),
        (
            "negative rate",
            spec(json!({"loss": null, "shape": {"rate": "-1mbit"}})),
            invalid,
            "bad rate \"-1mbit\"",
        ),
        (
            "dns rate zero",
            dns_spec(json!({"answer": "servfail", "rate": 0.0})),
            fault,
            "dns rate must be in (0, 1], got 0",
        ),
        (
            "dns rate over 1",
            dns_spec(json!({"answer": "servfail", "rate": 1.5})),
            fault,
            "got 1.5",
        ),
        // Ports, prefixes, DNS names and types, labels: malformed, and one over each limit.
        (
            "a port string of 2 MB",
            spec(json!({"target": target(json!({"dports": ["1".repeat(2 << 20)]}))})),
            invalid,
            "bad port range \"1111",
        ),
        (
            "4097 dport ranges",
            spec(json!({"target": target(json!({"dports": n_strings(4097, &nth_port)}))})),
            fault,
            "at most 4096 destination port ranges per fault, got 4097",
        ),
        (
            "4097 sport ranges",
            spec(json!({"target": target(json!({"sports": n_strings(4097, &nth_port)}))})),
            fault,
            "at most 4096 source port ranges per fault, got 4097",
        ),
        (
            "16385 IPv4 destinations",
            spec(json!({"target": target(json!({"dst": n_strings(16_385, &v4)}))})),
            fault,
            "at most 16384 IPv4 destination prefixes per fault, got 16385",
        ),
        (
            "16385 IPv6 destinations",
            spec(json!({"target": target(json!({"dst": n_strings(16_385, &v6)}))})),
            fault,
            "at most 16384 IPv6 destination prefixes per fault, got 16385",
        ),
        (
            "16385 IPv4 sources",
            spec(json!({"target": target(json!({"src": n_strings(16_385, &v4)}))})),
            fault,
            "at most 16384 IPv4 source prefixes per fault, got 16385",
        ),
        (
            "16385 IPv6 sources",
            spec(json!({"target": target(json!({"src": n_strings(16_385, &v6)}))})),
            fault,
            "at most 16384 IPv6 source prefixes per fault, got 16385",
        ),
        (
            "bad CIDR",
            spec(json!({"target": target(json!({"dst": ["10.0.0.0/33"]}))})),
            invalid,
            "invalid IP address syntax",
        ),
        (
            "64-byte DNS label",
            dns_spec(json!({"answer": "servfail", "domains": [long_label_domain(64)]})),
            fault,
            "a label is longer than 63 bytes",
        ),
        (
            "unknown DNS type",
            dns_spec(json!({"answer": "servfail", "types": ["BOGUS"]})),
            invalid,
            "unknown DNS type \"BOGUS\"",
        ),
        (
            "unknown DNS answer",
            dns_spec(json!({"answer": "teapot"})),
            invalid,
            "unknown variant `teapot`",
        ),
        (
            "DNS port 0",
            dns_spec(json!({"answer": "servfail", "port": 0})),
            fault,
            "bad port range \"0\"",
        ),
        (
            "DNS port 70000",
            dns_spec(json!({"answer": "servfail", "port": 70000})),
            invalid,
            "invalid value: integer `70000`, expected u16",
        ),
        (
            "1025 DNS domains",
            dns_spec(
                json!({"answer": "servfail", "domains": n_strings(1025, &|i| format!("d{i}.example.com"))}),
            ),
            fault,
            "at most 1024 DNS domains per fault, got 1025",
        ),
        (
            "65 DNS types",
            dns_spec(
                json!({"answer": "servfail", "types": n_strings(65, &|i| format!("TYPE{}", 1000 + i))}),
            ),
            fault,
            "at most 64 DNS types per fault, got 65",
        ),
        (
            "257-byte label",
            spec(json!({"label": label_of(257)})),
            fault,
            "got 257 bytes",
        ),
        (
            "label with a control character",
            spec(json!({"label": "a\u{7}b"})),
            fault,
            "with control characters",
        ),
        (
            "bad interface name",
            spec(json!({"target": target(json!({"iface": "a/b"}))})),
            fault,
            "bad interface name \"a/b\"",
        ),
        (
            "no such interface",
            spec(json!({"target": target(json!({"iface": "nosuch0"}))})),
            ("bad_target", 400),
            "interface \"nosuch0\" does not exist",
        ),
        // --flap.
        (
            "flap longer than the ttl",
            spec(json!({"flap": "10s/10s"})),
            fault,
            "ON + OFF (20s) is longer than the ttl (5s)",
        ),
        (
            "flap with a zero phase",
            spec(json!({"flap": "0s/1s"})),
            fault,
            "both phases must be at least 10ms",
        ),
        (
            "flap without OFF",
            spec(json!({"flap": "2s"})),
            invalid,
            "expected ON/OFF",
        ),
        (
            "flap 1000000000000y",
            spec(json!({"flap": "1000000000000y/1s"})),
            invalid,
            "bad --flap \"1000000000000y/1s\"",
        ),
    ];
    // `"ttl": "0s"` is not in the table: the CLI client sends an omitted `--ttl` as "0s", and the
    // daemon gives it its default_ttl (tested in daemon.rs). Refusing it needs the client to omit
    // the field instead.
    for (case, body, (code, status), want) in &cases {
        assert_api_refused(&post(body), *status, code, want, case);
    }
    for (case, method, path, body, status, code, want) in [
        (
            "an unknown endpoint",
            "GET",
            "/v2/faults",
            None,
            404,
            "no_such_endpoint",
            "no endpoint GET /v2/faults",
        ),
        (
            "a wrong method",
            "PUT",
            "/v1/faults",
            None,
            405,
            "method_not_allowed",
            "PUT is not allowed on /v1/faults",
        ),
        (
            "a bad fault id",
            "GET",
            "/v1/faults/f-xyz",
            None,
            400,
            "invalid_request",
            "bad fault id \"f-xyz\"",
        ),
        (
            "extend an unknown fault",
            "POST",
            "/v1/faults/f-00000001/extend",
            Some(&br#"{"by":"1s"}"#[..]),
            404,
            "not_found",
            "f-00000001",
        ),
    ] {
        assert_api_refused(&http(&socket, method, path, body), status, code, want, case);
    }
    assert_eq!(
        http(&socket, "GET", "/v1/faults", None).1["faults"],
        json!([]),
        "a refused request left a fault"
    );
    assert_eq!(
        host_state(&net, &state, Some(daemon.pid())),
        before,
        "a refused API request changed the host"
    );

    // At the limits: accepted, applied, and reverted exactly.
    let both_families: Vec<Value> = (0..16_384)
        .map(|i| Value::String(v4(i)))
        .chain((0..16_384).map(|i| Value::String(v6(i))))
        .collect();
    let at_limit = [
        (
            "4096 port ranges each side, 16384 prefixes of each family each side, a 256-byte label, ttl = max_ttl",
            spec(json!({
                "ttl": "10m",
                "label": label_of(256),
                "target": target(json!({
                    "dports": n_strings(4096, &nth_port),
                    "sports": n_strings(4096, &nth_port),
                    "dst": both_families.clone(),
                    "src": both_families,
                })),
            })),
        ),
        (
            "1024 DNS domains with 63-byte labels, 64 DNS types",
            dns_spec(json!({
                "answer": "servfail",
                "domains": n_strings(1024, &|i| format!("{}{i:04}.example.com", "a".repeat(59))),
                "types": n_strings(64, &|i| format!("TYPE{}", 1000 + i)),
            })),
        ),
    ];
    for (case, body) in &at_limit {
        let (status, info) = post(body);
        assert_eq!(
            status,
            201,
            "{case}: {}",
            info.to_string().chars().take(400).collect::<String>()
        );
        let id = info["id"].as_str().expect("id").to_owned();
        assert_eq!(
            journal_files(&state),
            vec![format!("{id}.json")],
            "{case}: journaled"
        );
        let (status, report) = http(&socket, "DELETE", &format!("/v1/faults/{id}"), None);
        assert_eq!(status, 200, "{case}: stop: {report}");
        assert_eq!(report["errors"], json!([]), "{case}: {report}");
    }
    assert_eq!(
        host_state(&net, &state, Some(daemon.pid())),
        before,
        "the faults at the limits were not reverted exactly"
    );

    // Extensions of a live fault: refused without touching it.
    let (status, info) = post(&spec(json!({"ttl": "60s"})));
    assert_eq!(status, 201, "{info}");
    let id = info["id"].as_str().expect("id").to_owned();
    let extend = |body: &[u8]| {
        http(
            &socket,
            "POST",
            &format!("/v1/faults/{id}/extend"),
            Some(body),
        )
    };
    for (case, body, status, code, want) in [
        (
            "by 2^64-1 s (overflowed the deadline: a panic, 500)",
            &br#"{"by":"18446744073709551615s"}"#[..],
            400,
            "ttl_too_long",
            "extending by 584542046090years 7months 15days 17h 5m 3s: the ttl exceeds the maximum of 10m",
        ),
        (
            "by 1000000000000y",
            br#"{"by":"1000000000000y"}"#,
            400,
            "invalid_request",
            "expected a duration",
        ),
        (
            "by more than max_ttl allows",
            br#"{"by":"10m"}"#,
            400,
            "ttl_too_long",
            "ttl 11m exceeds the maximum of 10m",
        ),
        (
            "by zero",
            br#"{"by":"0s"}"#,
            400,
            "invalid_request",
            "`by` must be greater than zero",
        ),
        (
            "unknown field",
            br#"{"by":"1s","bogus":1}"#,
            400,
            "invalid_request",
            "unknown field `bogus`, expected `by`",
        ),
        (
            "by as a number",
            br#"{"by":1}"#,
            400,
            "invalid_request",
            "invalid type: integer `1`, expected a duration",
        ),
        (
            "empty body",
            b"",
            400,
            "invalid_request",
            "the request body is empty",
        ),
        (
            "an array",
            b"[\"1s\"]",
            400,
            "invalid_request",
            "expected a JSON object, got an array",
        ),
    ] {
        assert_api_refused(&extend(body), status, code, want, case);
    }
    let (_, now) = http(&socket, "GET", &format!("/v1/faults/{id}"), None);
    assert_eq!(
        now["spec"]["ttl"], "1m",
        "a refused extension moved the ttl: {now}"
    );
    assert_eq!(
        http(&socket, "DELETE", &format!("/v1/faults/{id}"), None).0,
        200
    );
    assert_eq!(
        host_state(&net, &state, Some(daemon.pid())),
        before,
        "the fault was not reverted exactly"
    );
    let log = daemon.log_text();
    assert!(!log.contains("panicked"), "the daemon panicked: {log}");
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "the matrix is one table, read top to bottom"
)]
fn config_files_are_refused_with_one_line_and_start_nothing() {
    let test = "config_files_are_refused_with_one_line_and_start_nothing";
    if !require_all(test, &[Feature::Root]) {
        return;
    }
    let ns = NetNs::new("chbc");
    let tmp = TempDir::new("chbi");
    let nowhere = tmp.0.join("no-agent.sock");
    let token = tmp.0.join("short-token");
    std::fs::write(&token, "short\n").expect("token");
    let ports = |n: usize| {
        (0..n)
            .map(|i| format!("\"{}\"", i + 1))
            .collect::<Vec<_>>()
            .join(",")
    };
    let too_many_ports = format!("[limits]\nprotected_ports = [{}]\n", ports(4095));
    let token_cfg = format!(
        "[api]\ntcp_listen = \"127.0.0.1:9465\"\ntcp_token_file = \"{}\"\n",
        token.display()
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "unknown top-level key",
            b"bogus = 1\n".to_vec(),
            "c.toml:1:1: unknown field `bogus`, expected one of `state_dir`",
        ),
        (
            "unknown [api] key",
            b"[api]\nsockett = \"/x\"\n".to_vec(),
            "c.toml:2:1: unknown field `sockett`",
        ),
        (
            "unknown [metrics] key",
            b"[metrics]\nport = 1\n".to_vec(),
            "c.toml:2:1: unknown field `port`",
        ),
        (
            "unknown [limits] key",
            b"[limits]\nmax_tll = \"1m\"\n".to_vec(),
            "c.toml:2:1: unknown field `max_tll`, expected one of `max_ttl`",
        ),
        (
            "unknown table",
            b"[limitz]\n".to_vec(),
            "unknown field `limitz`",
        ),
        (
            "a key with a newline",
            b"[limits]\n\"a\\nb\" = 1\n".to_vec(),
            "unknown field `a\\nb`",
        ),
        (
            "zero max_ttl",
            b"[limits]\nmax_ttl = \"0s\"\n".to_vec(),
            "limits.max_ttl must be greater than zero and at most 7days, got 0s",
        ),
        (
            "max_ttl over the ceiling",
            b"[limits]\nmax_ttl = \"7days 1s\"\n".to_vec(),
            "at most 7days, got 7days 1s",
        ),
        (
            "max_ttl 1000000000000y",
            b"[limits]\nmax_ttl = \"1000000000000y\"\n".to_vec(),
            "c.toml:2:11: invalid value: string \"1000000000000y\", expected a duration",
        ),
        (
            "max_ttl 2^64 s",
            b"[limits]\nmax_ttl = \"18446744073709551616s\"\n".to_vec(),
            "expected a duration",
        ),
        (
            "max_ttl as a number",
            b"[limits]\nmax_ttl = 5\n".to_vec(),
            "invalid type: integer `5`, expected a duration",
        ),
        (
            "default_ttl over max_ttl",
            b"[limits]\ndefault_ttl = \"2h\"\n".to_vec(),
            "limits.default_ttl (2h) must be greater than zero and at most limits.max_ttl (1h)",
        ),
        (
            "zero default_ttl",
            b"[limits]\ndefault_ttl = \"0s\"\n".to_vec(),
            "limits.default_ttl (0s) must be greater than zero",
        ),
        (
            "zero max_faults",
            b"[limits]\nmax_faults = 0\n".to_vec(),
            "limits.max_faults must be between 1 and 256",
        ),
        (
            "257 max_faults",
            b"[limits]\nmax_faults = 257\n".to_vec(),
            "got 257",
        ),
        (
            "negative max_faults",
            b"[limits]\nmax_faults = -1\n".to_vec(),
            "invalid value: integer `-1`, expected usize",
        ),
        (
            "NaN max_faults",
            b"[limits]\nmax_faults = nan\n".to_vec(),
            "invalid type: floating point `NaN`, expected usize",
        ),
        (
            "infinite max_faults",
            b"[limits]\nmax_faults = inf\n".to_vec(),
            "invalid type: floating point `inf`, expected usize",
        ),
        (
            "4095 protected port ranges",
            too_many_ports.into_bytes(),
            "limits.protected_ports has 4095 ranges; at most 4094 fit",
        ),
        (
            "protected port 0",
            b"[limits]\nprotected_ports = [\"0\"]\n".to_vec(),
            "bad port range \"0\"",
        ),
        (
            "a protected port with a newline",
            b"[limits]\nprotected_ports = [\"\"\"8\n0\"\"\"]\n".to_vec(),
            "bad port range \"8\\n0\"",
        ),
        (
            "empty state_dir",
            b"state_dir = \"\"\n".to_vec(),
            "state_dir must be an absolute path",
        ),
        (
            "relative state_dir",
            b"state_dir = \"state\"\n".to_vec(),
            "state_dir must be an absolute path",
        ),
        (
            "relative socket",
            b"[api]\nsocket = \"agent.sock\"\n".to_vec(),
            "api.socket must be an absolute path, got \"agent.sock\"",
        ),
        (
            "empty group",
            b"[api]\nallowed_group = \"\"\n".to_vec(),
            "api.allowed_group is empty",
        ),
        (
            "negative uid",
            b"[api]\nallowed_uids = [-1]\n".to_vec(),
            "invalid value: integer `-1`, expected u32",
        ),
        (
            "TCP without a token",
            b"[api]\ntcp_listen = \"127.0.0.1:9465\"\n".to_vec(),
            "api.tcp_listen needs api.tcp_token_file",
        ),
        (
            "a short TCP token",
            token_cfg.into_bytes(),
            "token must be at least 16 characters",
        ),
        (
            "bad metrics address",
            b"[metrics]\nlisten = \"nonsense\"\n".to_vec(),
            "invalid socket address syntax",
        ),
        (
            "unknown log format",
            b"log_format = \"xml\"\n".to_vec(),
            "unknown variant `xml`",
        ),
        (
            "unknown attach mode",
            b"attach_mode = \"magic\"\n".to_vec(),
            "unknown variant `magic`",
        ),
        ("a TOML syntax error", b"[limits\n".to_vec(), "c.toml:1:8: "),
        (
            "not UTF-8",
            b"[limits]\nmax_ttl = \"\xff\"\n".to_vec(),
            "stream did not contain valid UTF-8",
        ),
    ];
    let file = tmp.0.join("c.toml");
    for (case, text, want) in &cases {
        std::fs::write(&file, text).expect("write the config");
        let o = cli(
            &ns,
            &nowhere,
            &[os("config"), os("check"), file.clone().into_os_string()],
        );
        assert_refused(&o, want, case);
    }
    for (case, path, want) in [
        ("a directory", tmp.0.clone(), "Is a directory"),
        (
            "no such file",
            tmp.0.join("missing.toml"),
            "No such file or directory",
        ),
    ] {
        let o = cli(
            &ns,
            &nowhere,
            &[os("config"), os("check"), path.into_os_string()],
        );
        assert_refused(&o, want, case);
    }
    // At the limits: accepted.
    for (case, text) in [
        (
            "max_ttl and default_ttl at the ceiling",
            "[limits]\nmax_ttl = \"7days\"\ndefault_ttl = \"7days\"\n".to_owned(),
        ),
        ("256 max_faults", "[limits]\nmax_faults = 256\n".to_owned()),
        (
            "4094 protected port ranges",
            format!("[limits]\nprotected_ports = [{}]\n", ports(4094)),
        ),
    ] {
        std::fs::write(&file, text).expect("write the config");
        let o = cli(
            &ns,
            &nowhere,
            &[os("config"), os("check"), file.clone().into_os_string()],
        );
        assert!(
            o.status.success() && o.stdout.contains(": ok ("),
            "{case}: {} {:?} {:?}",
            o.status,
            o.stdout,
            o.stderr
        );
    }

    // The daemon refuses to start on the same files, before it binds its socket or opens its
    // state dir.
    for (case, text, want) in cases.iter().filter(|(case, ..)| {
        [
            "unknown [limits] key",
            "max_ttl over the ceiling",
            "relative state_dir",
            "a short TCP token",
            "not UTF-8",
        ]
        .contains(case)
    }) {
        std::fs::write(&file, text).expect("write the config");
        let socket = tmp.0.join("agent.sock");
        let state = tmp.0.join("state");
        let mut child = ns
            .command(bin().to_str().expect("utf-8 path"))
            .arg("--state-dir")
            .arg(&state)
            .arg("--socket")
            .arg(&socket)
            .args(["run", "--config"])
            .arg(&file)
            .env_remove("CHAOS_AGENT_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the daemon");
        let t0 = Instant::now();
        while child.try_wait().expect("wait").is_none() {
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("{case}: the daemon started on a bad config");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_with_output().expect("output");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert!(
            out.status.code() == Some(2)
                && errors.len() == 1
                && errors[0].starts_with("error: ")
                && errors[0].contains(want),
            "{case}: run wants exit 2 and one error line with {want:?}; got {} {stderr:?}",
            out.status
        );
        assert!(
            !socket.exists() && !state.exists(),
            "{case}: the daemon bound or created something"
        );
    }
}

/// A journal entry as version 1 writes it, for `ifname` (undo: the clsact the fault created).
fn journal_v1(id: &str, pid: u32, start_time: u64, ifname: &str) -> String {
    serde_json::to_string_pretty(&json!({
        "version": 1,
        "id": id,
        "owner": {"pid": pid, "start_time": start_time},
        "spec": {"ttl": "10m", "target": {"iface": ifname, "direction": "egress"}, "loss": {"probability": 0.5}},
        "created_unix_ms": 1_796_156_814_324_u64,
        "expires_unix_ms": 1_796_157_414_324_u64,
        "undo": [{"op": "clsact", "ifname": ifname}],
    }))
    .expect("json")
}

/// This process's start time as the agent records an owner's (`/proc/PID/stat`, field 22).
fn my_start_time() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    rest.split_whitespace()
        .nth(19)
        .and_then(|t| t.parse().ok())
        .expect("start time")
}

/// The journal files a dead agent of another (or a broken) version could leave, with the reason
/// the agent must give for each. The last one is good.
fn corrupt_journals(faults: &Path, ifname: &str) -> Vec<(&'static str, &'static str)> {
    const DEAD: u32 = 999_999_999;
    let good = journal_v1("f-0bad0002", DEAD, 1, ifname);
    std::fs::write(
        faults.join("f-0bad0001.json"),
        b"\x00\xffPK\x03\x04 not a journal \xfe",
    )
    .expect("write");
    std::fs::write(
        faults.join("f-0bad0002.json"),
        &good.as_bytes()[..good.len() / 2],
    )
    .expect("write");
    let future =
        journal_v1("f-0bad0003", DEAD, 1, ifname).replace("\"version\": 1", "\"version\": 99");
    std::fs::write(faults.join("f-0bad0003.json"), future).expect("write");
    std::fs::write(faults.join("f-0bad0004.json"), b"").expect("write");
    std::fs::create_dir(faults.join("f-0bad0005.json")).expect("mkdir");
    std::fs::write(faults.join("f-0bad0005.json").join("inside"), b"x").expect("write");
    std::os::unix::fs::symlink("/nonexistent/chaos-journal", faults.join("f-0bad0006.json"))
        .expect("symlink");
    vec![
        ("f-0bad0001.json", "not JSON: "),
        ("f-0bad0002.json", "truncated: EOF while parsing"),
        (
            "f-0bad0003.json",
            "format version 99, which this agent (versions 1 to 1) cannot replay",
        ),
        ("f-0bad0004.json", "empty file"),
        ("f-0bad0005.json", "a directory, not a journal file"),
        ("f-0bad0006.json", "a symbolic link, not a journal file"),
    ]
}

/// The quarantine's entries, as (original name, unix seconds).
fn quarantined(state: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(state.join("quarantine"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (orig, ts) = name.rsplit_once('.').unwrap_or((&name, ""));
            (orig.to_owned(), ts.parse().unwrap_or(0))
        })
        .collect();
    v.sort();
    v
}

#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn corrupt_journals_are_quarantined_and_the_daemon_starts() {
    let test = "corrupt_journals_are_quarantined_and_the_daemon_starts";
    if !require_all(test, &[Feature::Root, Feature::Tool("tc"), Feature::Clsact]) {
        return;
    }
    let net = VethPair::new(132);
    let tmp = TempDir::new("chbi");
    let state = tmp.0.join("state");
    let faults = state.join("faults");
    std::fs::create_dir_all(&faults).expect("mkdir");
    std::fs::create_dir_all(state.join("owned")).expect("mkdir");
    let bad = corrupt_journals(&faults, &net.a_if);
    // A newer agent that is still running (this test process stands in for it): its file is
    // left alone, not quarantined.
    let live = journal_v1("f-0bad0007", std::process::id(), my_start_time(), &net.a_if)
        .replace("\"version\": 1", "\"version\": 99");
    std::fs::write(faults.join("f-0bad0007.json"), live).expect("write");
    // A good journal of a dead agent, beside them: the clsact it created on the veth (made here
    // with tc, marked as the agent's) must go when it is replayed.
    std::fs::write(
        faults.join("f-600d0001.json"),
        journal_v1("f-600d0001", 999_999_999, 1, &net.a_if),
    )
    .expect("write");
    std::fs::write(
        state.join("owned").join(format!("clsact-{}", net.a_if)),
        b"",
    )
    .expect("marker");
    net.a
        .exec("tc", ["qdisc", "add", "dev", &net.a_if, "clsact"]);
    let clean = {
        let q = tc_qdiscs(&net.a, &net.a_if);
        assert!(
            q.contains("clsact"),
            "the dead agent's clsact is in place: {q}"
        );
        net.a
            .exec("tc", ["qdisc", "del", "dev", &net.a_if, "clsact"]);
        let clean = tc_qdiscs(&net.a, &net.a_if);
        net.a
            .exec("tc", ["qdisc", "add", "dev", &net.a_if, "clsact"]);
        clean
    };
    let garbage = std::fs::read(faults.join("f-0bad0001.json")).expect("read");
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();

    let mut daemon = Daemon::start(&net.a, &tmp.0, DAEMON_CONFIG);

    // One log line per corrupt file, naming it and why.
    let log = daemon.log_text();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for (name, why) in &bad {
        let about: Vec<&Value> = lines
            .iter()
            .filter(|l| l.to_string().contains(name))
            .collect();
        assert_eq!(about.len(), 1, "{name}: one log line, got {about:?}");
        let l = about[0];
        assert_eq!(l["event"], "journal_quarantined", "{l}");
        assert!(
            l["file"]
                .as_str()
                .is_some_and(|f| f.ends_with(&format!("/faults/{name}")))
                && l["reason"].as_str().is_some_and(|r| r.contains(why))
                && l["moved_to"]
                    .as_str()
                    .is_some_and(|m| m.contains("/quarantine/")),
            "{name}: want the file and {why:?}: {l}"
        );
    }
    let live_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| l.to_string().contains("f-0bad0007"))
        .collect();
    assert!(
        live_lines.len() == 1 && live_lines[0]["event"] == "journal_unreadable",
        "the live newer agent's file: one line, left alone: {live_lines:?}"
    );
    // Moved to the quarantine, as they were.
    let q = quarantined(&state);
    let now = t0 + 60;
    assert_eq!(
        q.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        bad.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "the quarantine holds the corrupt files: {q:?}"
    );
    assert!(
        q.iter().all(|(_, ts)| (t0..=now).contains(ts)),
        "named <file>.<unix seconds>: {q:?}"
    );
    let qpath = |name: &str| {
        let (_, ts) = q.iter().find(|(n, _)| n == name).expect("quarantined");
        state.join("quarantine").join(format!("{name}.{ts}"))
    };
    assert_eq!(
        std::fs::read(qpath("f-0bad0001.json")).expect("read"),
        garbage
    );
    assert!(
        qpath("f-0bad0005.json").join("inside").is_file(),
        "the directory kept its content"
    );
    assert!(
        std::fs::symlink_metadata(qpath("f-0bad0006.json"))
            .is_ok_and(|m| m.file_type().is_symlink()),
        "the symbolic link moved as a link"
    );
    // The good journal replayed: its file is gone and so is its clsact, as tc sees it.
    assert_eq!(
        journal_files(&state),
        vec!["f-0bad0007.json".to_owned()],
        "left in the journal: the live agent's file only"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "leftover" && l["id"] == "f-600d0001"),
        "the good journal was replayed: {log}"
    );
    assert_eq!(
        tc_qdiscs(&net.a, &net.a_if),
        clean,
        "the dead agent's clsact is gone"
    );
    let (_, status) = http(&daemon.socket(), "GET", "/v1/status", None);
    assert_eq!(status["leftovers_removed_at_start"], 1, "{status}");

    // And it serves: a fault goes in and out, journaled as usual.
    let socket = daemon.socket();
    let body = json!({"ttl": "30s", "loss": {"probability": 0.1}, "target": {"iface": net.a_if}});
    let (code, info) = http(
        &socket,
        "POST",
        "/v1/faults",
        Some(&serde_json::to_vec(&body).expect("json")),
    );
    assert_eq!(code, 201, "{info}");
    let id = info["id"].as_str().expect("id").to_owned();
    assert!(
        journal_files(&state).contains(&format!("{id}.json")),
        "journaled"
    );
    let (code, report) = http(&socket, "DELETE", &format!("/v1/faults/{id}"), None);
    assert!(code == 200 && report["errors"] == json!([]), "{report}");
    assert!(daemon.stop().success(), "{}", daemon.log_text());
    assert_eq!(journal_files(&state), vec!["f-0bad0007.json".to_owned()]);
    assert_eq!(tc_qdiscs(&net.a, &net.a_if), clean);
}

#[test]
fn cleanup_quarantines_corrupt_journals_and_replays_the_rest() {
    let test = "cleanup_quarantines_corrupt_journals_and_replays_the_rest";
    if !require_all(test, &[Feature::Root, Feature::Tool("tc"), Feature::Clsact]) {
        return;
    }
    let net = VethPair::new(133);
    let tmp = TempDir::new("chbi");
    let state = tmp.0.join("state");
    let faults = state.join("faults");
    std::fs::create_dir_all(&faults).expect("mkdir");
    std::fs::create_dir_all(state.join("owned")).expect("mkdir");
    let clean = tc_qdiscs(&net.a, &net.a_if);
    let bad = corrupt_journals(&faults, &net.a_if);
    std::fs::write(
        faults.join("f-600d0001.json"),
        journal_v1("f-600d0001", 999_999_999, 1, &net.a_if),
    )
    .expect("write");
    std::fs::write(
        state.join("owned").join(format!("clsact-{}", net.a_if)),
        b"",
    )
    .expect("marker");
    net.a
        .exec("tc", ["qdisc", "add", "dev", &net.a_if, "clsact"]);
    let o = cli(
        &net.a,
        &tmp.0.join("no-agent.sock"),
        &[
            os("--state-dir"),
            state.clone().into_os_string(),
            os("cleanup"),
            os("--json"),
        ],
    );
    assert!(o.status.success(), "{} {} {}", o.status, o.stdout, o.stderr);
    let report: Value = serde_json::from_str(&o.stdout).expect("cleanup --json");
    assert_eq!(report["journals_replayed"], 1, "{report}");
    assert_eq!(report["errors"], json!([]), "{report}");
    let q = report["quarantined"].as_array().expect("quarantined");
    assert_eq!(q.len(), bad.len(), "{report}");
    for (name, why) in &bad {
        assert!(
            q.iter()
                .any(|e| e["file"].as_str().is_some_and(|f| f.ends_with(name))
                    && e["why"].as_str().is_some_and(|w| w.contains(why))),
            "{name}: {report}"
        );
        // One stderr line each (the log at its default level, errors only).
        assert_eq!(
            o.stderr.lines().filter(|l| l.contains(name)).count(),
            1,
            "{name}: {}",
            o.stderr
        );
    }
    assert_eq!(quarantined(&state).len(), bad.len());
    assert!(
        journal_files(&state).is_empty(),
        "{:?}",
        journal_files(&state)
    );
    assert_eq!(
        tc_qdiscs(&net.a, &net.a_if),
        clean,
        "the replay removed the clsact"
    );
}
