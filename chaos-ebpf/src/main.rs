//! chaos-agent's kernel programs: the tc classifiers `chaos_tc_in` and `chaos_tc_eg`.
//!
//! One object per fault. Both programs read the single [`FaultConfig`] in `CHAOS_CONFIG`, decide
//! whether a packet matches the fault's filters and then drop it, steer it to a shaping class
//! (`skb->priority`), give it a later departure time (`skb->tstamp`, egress EDT delay) or let it
//! continue. They never end the tc chain for packets they do not act
//! on: "no verdict" is `TC_ACT_UNSPEC`, which is `TCX_NEXT` under tcx (>= 6.6) and "continue" under
//! cls_bpf, so other programs on the hook still run (`TC_ACT_OK` would skip them).
//!
//! Helpers used: map lookup, `bpf_skb_load_bytes`, `bpf_ktime_get_ns`, `bpf_get_prandom_u32`,
//! `bpf_redirect` — all present since 4.x, so the object verifies on Debian 12's 6.1. Context
//! fields written: `priority` and `tstamp` (tc read/write access to `tstamp` since 5.0).
#![no_std]
#![no_main]

mod parse;
mod rng;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_ktime_get_ns, bpf_redirect},
    macros::{classifier, map},
    maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::TcContext,
};
use chaos_common::{
    COUNTERS_LEN, Counter, Dir, F_ARMED, F_DST_FILTER, F_EDT, F_EGRESS, F_EGRESS_WIRE_DROP,
    F_INGRESS, F_L3_DEVICE, F_SRC_FILTER, F_STEER, FaultConfig, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
    counter_index, names::MAX_PREFIXES,
};

use crate::parse::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Packet};

/// The fault (index 0). Written by the agent; a zeroed entry (not yet written) is unarmed.
#[map]
static CHAOS_CONFIG: Array<FaultConfig> = Array::with_max_entries(1, 0);
/// Per-CPU counters, indexed by `counter_index`.
#[map]
static CHAOS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);
/// Per-CPU xorshift64* state for `F_SEEDED`.
#[map]
static CHAOS_RNG: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
/// Per-CPU Gilbert-Elliott state (0 = good, 1 = bad).
#[map]
static CHAOS_GE: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
/// Source IPv4 prefixes (`F_SRC_FILTER`). The constructor adds `BPF_F_NO_PREALLOC`, which the
/// kernel requires for LPM tries.
#[map]
static CHAOS_SRC4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
/// Destination IPv4 prefixes (`F_DST_FILTER`).
#[map]
static CHAOS_DST4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
/// Source IPv6 prefixes.
#[map]
static CHAOS_SRC6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
/// Destination IPv6 prefixes.
#[map]
static CHAOS_DST6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);

/// tc ingress classifier.
#[classifier]
pub fn chaos_tc_in(ctx: TcContext) -> i32 {
    handle(&ctx, Dir::Ingress)
}

/// tc egress classifier.
#[classifier]
pub fn chaos_tc_eg(ctx: TcContext) -> i32 {
    handle(&ctx, Dir::Egress)
}

#[inline(always)]
fn count(dir: Dir, counter: Counter) {
    if let Some(p) = CHAOS_COUNTERS.get_ptr_mut(counter_index(dir, counter)) {
        // SAFETY: per-CPU slot: no other program touches it concurrently, a plain add suffices.
        unsafe { *p += 1 };
    }
}

/// The whole decision, shared by both directions (`dir` is a constant after inlining, so each
/// program keeps only its own branch).
#[inline(always)]
fn handle(ctx: &TcContext, dir: Dir) -> i32 {
    let Some(cfg) = CHAOS_CONFIG.get(0) else {
        return TC_ACT_UNSPEC;
    };
    // Read once: the agent may rewrite the entry while we run.
    let flags = cfg.flags;
    let dir_flag = match dir {
        Dir::Ingress => F_INGRESS,
        Dir::Egress => F_EGRESS,
    };
    if flags & F_ARMED == 0 || flags & dir_flag == 0 {
        return TC_ACT_UNSPEC;
    }
    count(dir, Counter::Seen);
    // The kernel-enforced TTL: holds even if the agent is dead and its filters outlived it
    // (netlink attach). bpf_ktime_get_ns is CLOCK_MONOTONIC, as is the agent's deadline.
    // SAFETY: helper without arguments, available since 4.1.
    let now = unsafe { bpf_ktime_get_ns() };
    if now > cfg.expires_at_ns {
        count(dir, Counter::Expired);
        return TC_ACT_UNSPEC;
    }
    let Some(pkt) = parse::parse(ctx, flags & F_L3_DEVICE != 0) else {
        return TC_ACT_UNSPEC;
    };
    if !matches(cfg, flags, &pkt) {
        return TC_ACT_UNSPEC;
    }
    if pkt.has_ports
        && (cfg.protected_ports.contains_strict(pkt.sport)
            || cfg.protected_ports.contains_strict(pkt.dport))
    {
        count(dir, Counter::Protected);
        return TC_ACT_UNSPEC;
    }
    count(dir, Counter::Matched);

    if rng::should_drop(cfg, flags) {
        count(dir, Counter::Dropped);
        if matches!(dir, Dir::Egress) && flags & F_EGRESS_WIRE_DROP != 0 {
            // Redirect to ifindex 0, which never exists: skb_do_redirect frees the packet but
            // sch_handle_egress reports NET_XMIT_SUCCESS, so TCP sees loss on the wire and
            // retransmits (TC_ACT_SHOT here would be NET_XMIT_DROP = local congestion, which TCP
            // silently re-sends without counting a loss). Returns TC_ACT_REDIRECT.
            // SAFETY: helper available to tc programs since 4.4.
            return unsafe { bpf_redirect(0, 0) } as i32;
        }
        return TC_ACT_SHOT as i32;
    }
    let mut steered = false;
    if matches!(dir, Dir::Egress) && flags & F_EDT != 0 {
        // Egress only: the departure time is honoured by the root fq of the device the packet is
        // leaving, which is this one. On ingress there is no qdisc to honour it, and before 5.18
        // `skb_scrub_packet` cleared it on a netns crossing anyway.
        // SAFETY: `skb` is the program's context; tc programs may read and write `tstamp`
        // (sched_cls since 5.0). At egress the kernel stores the value as is (CLOCK_MONOTONIC).
        unsafe {
            let skb = ctx.skb.skb;
            (*skb).tstamp = edt_departure(cfg, flags, now, (*skb).tstamp);
        }
        steered = true;
    }
    if flags & F_STEER != 0 {
        // SAFETY: `skb` is the program's context; tc programs may write `priority` (the verifier
        // allows it for sched_cls/act), which an agent-owned htb/prio qdisc uses as classid.
        unsafe { (*ctx.skb.skb).priority = cfg.steer_priority };
        steered = true;
    }
    if steered {
        count(dir, Counter::Steered);
    }
    TC_ACT_UNSPEC
}

/// How far ahead of `now` an existing `skb->tstamp` may be and still be trusted as a
/// `CLOCK_MONOTONIC` departure time. TCP's own EDT pacing (>= 4.20) stamps at most a few ms
/// ahead; anything far beyond is another clock (`SO_TXTIME` with `CLOCK_TAI`) and is replaced,
/// not added to, so fq does not park the packet at its horizon.
const EDT_TRUST_NS: u64 = 60 * 1_000_000_000;

/// The earliest departure time for a delayed packet: `max(current, now) + delay + U[-j, +j]`,
/// never earlier than `now`. A departure time already set (TCP pacing) is never moved earlier,
/// which would reorder the socket's packets against its own schedule.
#[inline(always)]
fn edt_departure(cfg: &FaultConfig, flags: u32, now: u64, current: u64) -> u64 {
    let base = if current > now && current - now < EDT_TRUST_NS {
        current
    } else {
        now
    };
    let delay_us = u64::from(cfg.edt_delay_us);
    let jitter_us = u64::from(cfg.edt_jitter_us);
    let mut add_us = delay_us;
    if jitter_us != 0 {
        // Uniform offset in [0, 2j] µs: the high 32 bits of draw * (2j + 1). No division, and
        // 2^32 * (2 * 60 s in µs + 1) < 2^64, so the product cannot overflow.
        let offset = (u64::from(rng::draw(flags)) * (2 * jitter_us + 1)) >> 32;
        // delay + offset - j, clamped at 0 when the jitter exceeds the delay.
        add_us = (delay_us + offset).saturating_sub(jitter_us);
    }
    base + add_us * 1000
}

/// Protocol, address and port filters.
#[inline(always)]
fn matches(cfg: &FaultConfig, flags: u32, pkt: &Packet) -> bool {
    let protos = cfg.protos;
    if protos != 0 {
        let bit = match pkt.proto {
            IPPROTO_TCP => PROTO_TCP,
            IPPROTO_UDP => PROTO_UDP,
            IPPROTO_ICMP if !pkt.v6 => PROTO_ICMP,
            IPPROTO_ICMPV6 if pkt.v6 => PROTO_ICMP,
            _ => 0,
        };
        if protos & bit == 0 {
            return false;
        }
    }
    if flags & F_SRC_FILTER != 0 && !in_trie(pkt, &pkt.src, true) {
        return false;
    }
    if flags & F_DST_FILTER != 0 && !in_trie(pkt, &pkt.dst, false) {
        return false;
    }
    let (sports, dports) = (&cfg.sports, &cfg.dports);
    if sports.len != 0 || dports.len != 0 {
        // A port filter never matches a packet without ports (ICMP, non-first fragments).
        if !pkt.has_ports || !sports.contains(pkt.sport) || !dports.contains(pkt.dport) {
            return false;
        }
    }
    true
}

/// Longest-prefix lookup of `addr` in the family's source or destination trie.
#[inline(always)]
fn in_trie(pkt: &Packet, addr: &[u8; 16], src: bool) -> bool {
    if pkt.v6 {
        let key = Key::new(128, *addr);
        let trie = if src { &CHAOS_SRC6 } else { &CHAOS_DST6 };
        trie.get(&key).is_some()
    } else {
        let key = Key::new(32, [addr[0], addr[1], addr[2], addr[3]]);
        let trie = if src { &CHAOS_SRC4 } else { &CHAOS_DST4 };
        trie.get(&key).is_some()
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program (no unwraps, indexing is constant); required by no_std.
    loop {}
}

/// GPL-compatible license: `bpf_ktime_get_ns`, `bpf_get_prandom_u32` and `bpf_redirect` are
/// usable by any license, but a GPL-compatible one keeps gpl_only helpers open for later.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
