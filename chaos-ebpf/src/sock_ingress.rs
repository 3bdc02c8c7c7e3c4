//! Ingress of faults scoped to processes: the `cgroup_skb/ingress` program `chaos_sk_in`.
//!
//! tc ingress runs before the socket lookup, so it cannot tell which process a packet is for.
//! This program runs after it: the kernel calls it from `sk_filter` as the receiving socket
//! takes the packet (TCP, UDP, raw and ICMP sockets alike), for every socket of every cgroup
//! below the one it is attached to. The agent attaches it once, to the root of the cgroup v2
//! hierarchy, while a scoped fault acts on ingress; the hook entry is keyed by the interface
//! the packet arrived on (`chaos_common::socket_ingress_hook_key`). The packet starts at its
//! network header, and is classified with the same fault table as at tc, the cgroup being the
//! socket's (`bpf_skb_ancestor_cgroup_id`). A cgroup program can only pass or drop: loss is
//! what acts here; shaping and DNS rewrites are refused by the agent for such a scope.
//! Returns 1 (pass; the cgroup's other programs still run) or 0 (drop: the socket never sees
//! the packet; TCP retransmits as for any loss).

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_ktime_get_ns, bpf_loop},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use chaos_common::{
    Bitmap, HOOK_L3_DEVICE, MAX_FAULTS, PROTO_CLASS_ICMP, PROTO_CLASS_OTHER, PROTO_CLASS_TCP,
    PROTO_CLASS_UDP, socket_ingress_hook_key,
};
use core::ffi::c_void;

use crate::parse::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Packet};
use crate::{
    CHAOS_GLOBALS, CHAOS_HOOKS, CHAOS_HOOKSTAT, CHAOS_WALK, VERDICT_NONE, VERDICT_SHOT,
    WALK_SOCKET_INGRESS, cgroup_filter, port_filter, trie_filter, walk_step,
};

const PASS: i32 = 1;
const DROP: i32 = 0;

/// Packets as their receiving socket takes them.
#[cgroup_skb(ingress)]
pub fn chaos_sk_in(ctx: SkBuffContext) -> i32 {
    decide(ctx.skb.skb)
}

#[inline(always)]
fn decide(skb: *mut __sk_buff) -> i32 {
    // SAFETY: `skb` is the program's context; cgroup skb programs may read `ifindex`, the
    // device the packet arrived on.
    let ifindex = unsafe { (*skb).ifindex };
    let Some(hook) = CHAOS_HOOKS.get_ptr(socket_ingress_hook_key(ifindex)) else {
        return PASS;
    };
    // SAFETY: a map value pointer, valid while the program runs; copied once.
    let (mut m, stats) = unsafe { ((*hook).faults, (*hook).stats) };
    if let Some(p) = CHAOS_HOOKSTAT.get_ptr_mut(stats) {
        // SAFETY: per-CPU slot.
        unsafe { *p += 1 };
    }
    let Some(g) = CHAOS_GLOBALS.get(0) else {
        return PASS;
    };
    // Only faults that act here by dropping: a DNS fault never joins this hook.
    m = m.and_not(&g.dns);
    if m.is_empty() {
        return PASS;
    }
    let mut pkt = Packet::EMPTY;
    if !crate::parse::parse_into(skb, HOOK_L3_DEVICE, &mut pkt) {
        return PASS;
    }
    let class = match pkt.proto {
        IPPROTO_TCP => PROTO_CLASS_TCP,
        IPPROTO_UDP => PROTO_CLASS_UDP,
        IPPROTO_ICMP if !pkt.v6 => PROTO_CLASS_ICMP,
        IPPROTO_ICMPV6 if pkt.v6 => PROTO_CLASS_ICMP,
        _ => PROTO_CLASS_OTHER,
    };
    m = m.and(&g.proto[class]);
    if m.is_empty() {
        return PASS;
    }
    let mut protect = Bitmap::EMPTY;
    if pkt.has_ports {
        port_filter(pkt.sport, pkt.dport, g, &mut m, &mut protect);
    } else {
        m = m.and(&g.sport_any).and(&g.dport_any);
    }
    if m.is_empty() || !trie_filter(&pkt, g, &mut m) {
        return PASS;
    }
    // Every fault here is scoped: the receiving socket's cgroup decides.
    m = m.and(&cgroup_filter(skb).or(&g.cgroup_any));
    if m.is_empty() {
        return PASS;
    }
    if walk(&m, &protect) { DROP } else { PASS }
}

/// The faults in `m` in slot order, as at tc (their own deadline, probability, flap phase,
/// counters): whether one drops the packet.
#[inline(never)]
fn walk(m: &Bitmap, protect: &Bitmap) -> bool {
    let Some(walk) = CHAOS_WALK.get_ptr_mut(WALK_SOCKET_INGRESS) else {
        return false;
    };
    // SAFETY: this CPU's entry of this program, valid while it runs (see `CHAOS_WALK`).
    let walk = unsafe { &mut *walk };
    walk.m = *m;
    walk.protect = *protect;
    // SAFETY: helper without arguments.
    walk.now = unsafe { bpf_ktime_get_ns() };
    walk.tstamp = 0;
    walk.priority = 0;
    walk.verdict = VERDICT_NONE;
    walk.done = 0;
    walk.steer_slot = 0;
    walk.stamp_slot = 0;
    walk.dns = crate::dns::NONE;
    walk.rcode = 0;
    walk.dns_slot = 0;
    let mut ctx = WALK_SOCKET_INGRESS;
    // SAFETY: `walk_step` has the callback signature bpf_loop expects and only reads `ctx` (a
    // stack object that outlives the call) and touches maps.
    unsafe {
        bpf_loop(
            MAX_FAULTS,
            walk_step as *mut c_void,
            (&raw mut ctx).cast::<c_void>(),
            0,
        );
    }
    walk.verdict == VERDICT_SHOT
}
