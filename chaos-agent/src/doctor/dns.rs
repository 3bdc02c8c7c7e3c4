//! `doctor`'s DNS section: what DNS answer faults can do on this kernel, from what was checked
//! here and nothing else.
//!
//! The DNS parser and rewriter are part of the datapath's two programs, so the `ebpf` check's
//! load already put them through this kernel's verifier (with `bpf_loop`, >= 5.17, the LPM trie
//! of name suffixes, `bpf_skb_change_tail` and `bpf_csum_diff`). On top of that the section
//! runs the loaded ingress program with `BPF_PROG_TEST_RUN` on synthetic answers from port 53
//! (no interface is touched: the fault joins the loopback's hook without attaching anything)
//! and checks what comes out byte by byte: each rcode over UDP on IPv4 and IPv6 (lengths, both
//! checksums recomputed here, the header), `drop` over UDP, an answer over TCP dropped, a name
//! outside the fault's domain untouched, and the counters that status and metrics show.

use std::time::Duration;

use chaos_common::dns as wire;

use super::{Check, check};
use crate::faults::FaultSpec;
use crate::faults::dns::{DnsAnswer, DnsSpec};
use crate::faults::packet;
use crate::kernel::bpf::Datapath;
use crate::kernel::bpf::test_run::ones_sum;
use crate::kernel::tc::Hook;
use crate::target::{Direction, Target};

const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_SHOT: i32 = 2;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// `BPF_PROG_TEST_RUN` runs tc programs on the loopback device of the caller's namespace.
const LOOPBACK: u32 = 1;
/// The domain of the self-test's fault, and a name under it in mixed case (as resolvers that
/// randomise case send it).
const DOMAIN: &str = "doctor.chaos-agent.test";
const NAME: &str = "www.Doctor.CHAOS-agent.test";
const OTHER: &str = "www.example.org";

/// The checks of the DNS section. `ebpf` is the outcome of loading `dp` (the `ebpf` check),
/// `tcx` whether this kernel has tcx links, `clsact` whether the clsact qdisc was found.
pub(super) fn checks(
    dp: &Datapath,
    ebpf: &Result<(), String>,
    tcx: bool,
    clsact: Option<bool>,
) -> Vec<Check> {
    let needed = "DNS answer faults (--dns)";
    let mut v = Vec::new();
    let kernel = crate::sys::kernel_release();
    let loaded = ebpf.is_ok();
    v.push(check(
        "dns-prog",
        loaded,
        match ebpf {
            Ok(()) => "the DNS parser and rewriter passed the verifier (bpf_loop, LPM trie, bpf_skb_change_tail, bpf_csum_diff)".to_owned(),
            Err(e) => format!(
                "not loaded on {kernel}: {e} (needs >= 5.17 for bpf_loop, LPM tries, bpf_skb_change_tail)"
            ),
        },
        needed,
    ));
    let hook = if tcx {
        (
            true,
            "tcx links (kernel >= 6.6, judged by version)".to_owned(),
        )
    } else {
        match clsact {
            Some(true) => (
                true,
                "netlink: clsact present; cls_bpf is not probed (CONFIG_NET_CLS_BPF)".to_owned(),
            ),
            Some(false) => (
                false,
                "no tcx (< 6.6) and no clsact (sch_ingress)".to_owned(),
            ),
            None => (
                false,
                "no tcx (< 6.6) and the clsact probe failed".to_owned(),
            ),
        }
    };
    v.push(check("dns-hook", hook.0, hook.1, needed));
    let results = if loaded {
        self_test(dp)
    } else {
        Err("not run: the programs did not load".to_owned())
    };
    match &results {
        Ok(cases) => {
            let failed: Vec<String> = cases
                .iter()
                .filter_map(|c| c.result.as_ref().err().map(|e| format!("{}: {e}", c.name)))
                .collect();
            v.push(check(
                "dns-run",
                failed.is_empty(),
                if failed.is_empty() {
                    format!(
                        "BPF_PROG_TEST_RUN on synthetic answers: {}",
                        cases
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                } else {
                    format!("failed: {}", failed.join("; "))
                },
                needed,
            ));
        }
        Err(e) => v.push(check("dns-run", false, e.clone(), needed)),
    }
    v.push(verdict(hook.0, &results, needed));
    v
}

/// The `dns` line: what the self-test showed DNS faults can do, and whether all of it works.
fn verdict(hook: bool, results: &Result<Vec<Case>, String>, needed: &str) -> Check {
    let passed = |name: &str| {
        results
            .as_ref()
            .is_ok_and(|cases| cases.iter().any(|c| c.name == name && c.result.is_ok()))
    };
    let mut can = Vec::new();
    for (what, cases) in [
        ("servfail", ["servfail/udp4", "servfail/udp6"]),
        ("nxdomain", ["nxdomain/udp4", "nxdomain/udp6"]),
        ("refused", ["refused/udp4", "refused/udp6"]),
        ("drop", ["drop/udp4", "drop/udp6"]),
    ] {
        if cases.iter().all(|c| passed(c)) {
            can.push(what);
        }
    }
    let tcp = passed("tcp/drop");
    let mut summary = if can.is_empty() {
        "nothing verified over UDP".to_owned()
    } else {
        format!("{} over UDP (IPv4, IPv6)", can.join(", "))
    };
    if tcp {
        summary.push_str("; drop over TCP");
    }
    if !hook {
        summary.push_str("; no way to attach the programs");
    }
    let all = hook && can.len() == 4 && tcp && passed("other-name/pass") && passed("counters");
    check("dns", all, summary, needed)
}

/// One self-test case and what came of it.
#[derive(Debug)]
struct Case {
    name: String,
    result: Result<(), String>,
}

/// Runs the cases on the loaded datapath `dp`; an error if the fault could not be set up.
fn self_test(dp: &Datapath) -> Result<Vec<Case>, String> {
    let spec = FaultSpec {
        ttl: Duration::from_mins(1),
        target: Target {
            direction: Direction::Ingress,
            ..Target::default()
        },
        loss: None,
        shape: None,
        dns: Some(DnsSpec {
            answer: DnsAnswer::Servfail,
            domains: vec![DOMAIN.to_owned()],
            types: Vec::new(),
            rate: None,
            port: None,
        }),
        refuse: None,
        reset: None,
        limit: None,
        stress: None,
        flap: None,
        force: false,
        seed: None,
        label: None,
    };
    let now = crate::sys::monotonic_ns();
    let cfg = packet::fault_slot(&spec, now + 60_000_000_000, now);
    let rules = packet::rules(&spec, &[]);
    let slot = dp.alloc_slot().map_err(|e| e.to_string())?;
    let run = || -> Result<Vec<Case>, String> {
        dp.install(slot, &rules, &cfg, None)
            .map_err(|e| e.to_string())?;
        dp.join_hook_unattached(slot, LOOPBACK, Hook::Ingress, false)
            .map_err(|e| e.to_string())?;
        let fd = dp.program_fd(Hook::Ingress).map_err(|e| e.to_string())?;
        Ok(cases(dp, slot, fd))
    };
    let out = run();
    let _ = dp.release_slot(slot);
    out
}

fn cases(dp: &Datapath, slot: u32, fd: i32) -> Vec<Case> {
    let mut out = Vec::new();
    let mut push = |name: String, result: Result<(), String>| out.push(Case { name, result });
    let mut rewrites = 0u64;
    for answer in [DnsAnswer::Servfail, DnsAnswer::Nxdomain, DnsAnswer::Refused] {
        let set = dp.write_slot(slot, |c| c.dns = answer.code());
        for v6 in [false, true] {
            let name = format!("{}/udp{}", answer.as_str(), if v6 { 6 } else { 4 });
            let r = set.as_ref().map_err(ToString::to_string).and_then(|()| {
                let msg = answer_msg(NAME);
                let (ret, data) = test_run(fd, &udp_frame(v6, &msg))?;
                if ret != TC_ACT_UNSPEC {
                    return Err(format!(
                        "verdict {ret}, expected the answer passed, rewritten"
                    ));
                }
                check_rewritten(&data, answer.code() as u8, question_len(NAME))
            });
            rewrites += u64::from(r.is_ok());
            push(name, r);
        }
    }
    let set = dp.write_slot(slot, |c| c.dns = DnsAnswer::Drop.code());
    for v6 in [false, true] {
        let name = format!("drop/udp{}", if v6 { 6 } else { 4 });
        let r = set.as_ref().map_err(ToString::to_string).and_then(|()| {
            match test_run(fd, &udp_frame(v6, &answer_msg(NAME)))?.0 {
                TC_ACT_SHOT => Ok(()),
                ret => Err(format!("verdict {ret}, expected dropped")),
            }
        });
        push(name, r);
    }
    // Over TCP the answer is dropped whatever the fault's rcode.
    let set = dp.write_slot(slot, |c| c.dns = DnsAnswer::Servfail.code());
    let r = set.as_ref().map_err(ToString::to_string).and_then(|()| {
        match test_run(fd, &tcp_frame(&answer_msg(NAME)))?.0 {
            TC_ACT_SHOT => Ok(()),
            ret => Err(format!("verdict {ret}, expected dropped")),
        }
    });
    push("tcp/drop".to_owned(), r);
    let frame = udp_frame(false, &answer_msg(OTHER));
    let r = test_run(fd, &frame).and_then(|(ret, data)| {
        if ret == TC_ACT_UNSPEC && data == frame {
            Ok(())
        } else {
            Err(format!(
                "verdict {ret} or bytes changed for a name outside {DOMAIN}"
            ))
        }
    });
    push("other-name/pass".to_owned(), r);
    let r = dp.counters(slot).map_err(|e| e.to_string()).and_then(|c| {
        let t = c.total();
        // Every case but the other name matched: 6 rewritten, 3 dropped.
        if t.rewritten == rewrites && t.dropped == 3 && t.matched == 9 {
            Ok(())
        } else {
            Err(format!(
                "matched {}, rewritten {}, dropped {} (expected 9, {rewrites}, 3)",
                t.matched, t.rewritten, t.dropped
            ))
        }
    });
    push("counters".to_owned(), r);
    out
}

/// Runs the program `fd` once on `data`: its verdict and the packet as it left it.
fn test_run(fd: i32, data: &[u8]) -> Result<(i32, Vec<u8>), String> {
    crate::kernel::bpf::test_run::test_run(fd, data, None, 1)
        .map(|r| (r.retval, r.data))
        .map_err(|e| format!("BPF_PROG_TEST_RUN: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Synthetic answers

/// The UDP pseudo-header of a segment of `len` bytes between `src` and `dst`.
fn pseudo(src: &[u8], dst: &[u8], len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(src);
    p.extend_from_slice(dst);
    if src.len() == 4 {
        p.extend_from_slice(&[0, 17]);
        p.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        p.extend_from_slice(&(len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 17]);
    }
    p
}

/// Bytes of the question of `name` (its wire name, type and class).
fn question_len(name: &str) -> usize {
    name.len() + 2 + 4
}

/// A response to an A question for `name`: one A record (a compression pointer to the
/// question) and an EDNS OPT record, as a resolver sends it.
fn answer_msg(name: &str) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 1];
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4, 10, 9, 8, 7]);
    m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    m
}

const SRC4: [u8; 4] = [192, 0, 2, 53];
const DST4: [u8; 4] = [192, 0, 2, 1];
const SRC6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x53,
];
const DST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Ethernet + IPv4 or IPv6 header (protocol `proto`) + `l4`, the IPv4 header checksum set.
fn frame(v6: bool, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    f.extend_from_slice(&(if v6 { ETH_P_IPV6 } else { ETH_P_IP }).to_be_bytes());
    if v6 {
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        f.extend_from_slice(&[proto, 64]);
        f.extend_from_slice(&SRC6);
        f.extend_from_slice(&DST6);
    } else {
        let mut h = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, proto, 0, 0];
        h[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        h.extend_from_slice(&SRC4);
        h.extend_from_slice(&DST4);
        let c = !(ones_sum(&h) as u16);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&h);
    }
    f.extend_from_slice(l4);
    f
}

/// `msg` over UDP from port 53 to 40000, with a right checksum.
fn udp_frame(v6: bool, msg: &[u8]) -> Vec<u8> {
    let mut u = vec![0, 53, 0x9c, 0x40, 0, 0, 0, 0];
    u.extend_from_slice(msg);
    let len = u.len();
    u[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    let (src, dst): (&[u8], &[u8]) = if v6 { (&SRC6, &DST6) } else { (&SRC4, &DST4) };
    let mut p = pseudo(src, dst, len);
    p.extend_from_slice(&u);
    let c = match !(ones_sum(&p) as u16) {
        0 => 0xffff,
        c => c,
    };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    frame(v6, 17, &u)
}

/// `msg` in a TCP segment from port 53 (PSH|ACK), with its 2-byte length (RFC 1035 4.2.2).
fn tcp_frame(msg: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[..4].copy_from_slice(&[0, 53, 0x9c, 0x40]);
    t[12] = 5 << 4;
    t[13] = 0x18;
    t[14..16].copy_from_slice(&[0xff, 0xff]);
    t.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    t.extend_from_slice(msg);
    frame(false, 6, &t)
}

/// Checks a rewritten frame: IP and UDP lengths, both checksums (recomputed from scratch), the
/// header (id, QR kept, the rcode, one question, no records) and the cut right after the
/// question.
fn check_rewritten(out: &[u8], rcode: u8, qlen: usize) -> Result<(), String> {
    let fail = |what: &str| Err(format!("rewritten answer: {what}"));
    if out.len() < 14 + 20 + 8 + 12 {
        return fail("too short");
    }
    let v6 = out[12..14] == ETH_P_IPV6.to_be_bytes();
    let (l4, src, dst) = if v6 {
        if usize::from(u16::from_be_bytes([out[18], out[19]])) != out.len() - 54 {
            return fail("IPv6 payload length");
        }
        (54, &out[22..38], &out[38..54])
    } else {
        if ones_sum(&out[14..34]) != 0xffff {
            return fail("IPv4 header checksum");
        }
        if usize::from(u16::from_be_bytes([out[16], out[17]])) != out.len() - 14 {
            return fail("IPv4 total length");
        }
        (34, &out[26..30], &out[30..34])
    };
    let udp = &out[l4..];
    if usize::from(u16::from_be_bytes([udp[4], udp[5]])) != udp.len() {
        return fail("UDP length");
    }
    let mut p = pseudo(src, dst, udp.len());
    p.extend_from_slice(udp);
    if ones_sum(&p) != 0xffff {
        return fail("UDP checksum");
    }
    let msg = &udp[8..];
    if msg.len() != wire::HEADER_LEN + qlen {
        return fail("not cut after the question");
    }
    if msg[0..2] != [0x12, 0x34] || msg[2] & 0x80 == 0 {
        return fail("id or QR changed");
    }
    if msg[3] & 0x0f != rcode {
        return fail("rcode");
    }
    if msg[4..12] != [0, 1, 0, 0, 0, 0, 0, 0] {
        return fail("counts");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(name: &str, ok: bool) -> Case {
        Case {
            name: name.to_owned(),
            result: if ok { Ok(()) } else { Err("x".to_owned()) },
        }
    }

    #[test]
    fn the_verdict_claims_only_what_passed() {
        let names = [
            "servfail/udp4",
            "servfail/udp6",
            "nxdomain/udp4",
            "nxdomain/udp6",
            "refused/udp4",
            "refused/udp6",
            "drop/udp4",
            "drop/udp6",
            "tcp/drop",
            "other-name/pass",
            "counters",
        ];
        let all: Vec<Case> = names.iter().map(|n| case(n, true)).collect();
        let c = verdict(true, &Ok(all), "-");
        assert!(c.ok);
        assert_eq!(
            c.detail,
            "servfail, nxdomain, refused, drop over UDP (IPv4, IPv6); drop over TCP"
        );
        // One family failing takes that rcode out, and the line is no longer ok.
        let some: Vec<Case> = names
            .iter()
            .map(|n| case(n, *n != "nxdomain/udp6" && *n != "tcp/drop"))
            .collect();
        let c = verdict(true, &Ok(some), "-");
        assert!(!c.ok);
        assert_eq!(c.detail, "servfail, refused, drop over UDP (IPv4, IPv6)");
        let c = verdict(false, &Err("not run".to_owned()), "-");
        assert!(!c.ok);
        assert_eq!(
            c.detail,
            "nothing verified over UDP; no way to attach the programs"
        );
    }

    #[test]
    fn synthetic_answers_are_well_formed() {
        for v6 in [false, true] {
            let f = udp_frame(v6, &answer_msg(NAME));
            let l4 = if v6 { 54 } else { 34 };
            let (src, dst) = if v6 {
                (&f[22..38], &f[38..54])
            } else {
                (&f[26..30], &f[30..34])
            };
            let mut p = pseudo(src, dst, f.len() - l4);
            p.extend_from_slice(&f[l4..]);
            assert_eq!(ones_sum(&p), 0xffff, "UDP checksum, v6 {v6}");
            if !v6 {
                assert_eq!(ones_sum(&f[14..34]), 0xffff, "IPv4 header checksum");
            }
        }
        // The name parses as the programs' user-space twin reads it.
        let msg = answer_msg(NAME);
        let (_, _, wire_len) = wire::wire_name_key(&msg[12..]).expect("name");
        assert_eq!(wire_len + 4, question_len(NAME));
    }

    #[test]
    fn the_checker_accepts_a_right_rewrite_and_names_a_wrong_one() {
        // A rewrite done by hand: SERVFAIL, no records, cut after the question, sums redone.
        let mut msg = answer_msg(NAME);
        msg.truncate(12 + question_len(NAME));
        msg[3] = 0x82;
        msg[6..12].fill(0);
        for v6 in [false, true] {
            let f = udp_frame(v6, &msg);
            assert_eq!(check_rewritten(&f, 2, question_len(NAME)), Ok(()));
            assert!(check_rewritten(&f, 3, question_len(NAME)).is_err(), "rcode");
            let mut bad = f.clone();
            let n = bad.len();
            bad[n - 1] ^= 1;
            assert_eq!(
                check_rewritten(&bad, 2, question_len(NAME)),
                Err("rewritten answer: UDP checksum".to_owned())
            );
        }
        let f = udp_frame(false, &answer_msg(NAME));
        assert!(check_rewritten(&f, 0, question_len(NAME)).is_err());
    }
}
