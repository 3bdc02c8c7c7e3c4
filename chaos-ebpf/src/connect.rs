//! Refuse faults: the cgroup `connect4` / `connect6` programs `chaos_conn4` and `chaos_conn6`.
//!
//! Attached once per agent to the root of the cgroup v2 hierarchy (every process on the host
//! runs them on `connect()`, TCP and UDP), they act only in the network namespaces that have a
//! refuse fault: the hook entry is keyed by the namespace's cookie
//! (`chaos_common::connect_hook_key`). The connect's destination is classified with the same
//! fault table as packets (protocol, destination port, destination prefix; a connect has no
//! source yet), and the first armed fault left fails the call: `bpf_set_retval(-errno)` and
//! return 0 make `connect()` return -1 with that errno (the helper is open to sock_addr hooks
//! since 6.1; without it a rejected connect fails with EPERM). Everything else returns 1, "go
//! on", which also lets the other programs attached to the cgroup run.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_netns_cookie, bpf_ktime_get_ns, bpf_loop,
        bpf_set_retval,
    },
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use chaos_common::{
    Bitmap, Counter, Dir, F_REFUSE, MAX_FAULTS, PROTO_CLASS_OTHER, PROTO_CLASS_TCP,
    PROTO_CLASS_UDP, connect_hook_key,
};
use core::ffi::c_void;

use crate::parse::{IPPROTO_TCP, IPPROTO_UDP};
use crate::{
    CHAOS_DST4, CHAOS_DST6, CHAOS_GLOBALS, CHAOS_HOOKS, CHAOS_HOOKSTAT, CHAOS_SLOTS, bits, count,
    port_bits, rng,
};

/// "Go on": the connect proceeds (and the cgroup's other programs run).
const PROCEED: i32 = 1;
/// "Reject": the connect fails, with the errno set by `bpf_set_retval` (EPERM without it).
const REJECT: i32 = 0;

/// IPv4 `connect()`.
#[cgroup_sock_addr(connect4)]
pub fn chaos_conn4(ctx: SockAddrContext) -> i32 {
    decide(&ctx, false)
}

/// IPv6 `connect()` (IPv4-mapped destinations are looked up as the IPv4 address they are).
#[cgroup_sock_addr(connect6)]
pub fn chaos_conn6(ctx: SockAddrContext) -> i32 {
    decide(&ctx, true)
}

#[inline(always)]
fn decide(ctx: &SockAddrContext, v6: bool) -> i32 {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: helper open to cgroup sock_addr programs since 5.7; takes the program's context.
    let cookie = unsafe { bpf_get_netns_cookie(sa.cast::<c_void>()) };
    let Some(hook) = CHAOS_HOOKS.get_ptr(connect_hook_key(cookie)) else {
        return PROCEED;
    };
    // SAFETY: a map value pointer, valid while the program runs; copied once.
    let (mut m, stats) = unsafe { ((*hook).faults, (*hook).stats) };
    if let Some(p) = CHAOS_HOOKSTAT.get_ptr_mut(stats) {
        // SAFETY: per-CPU slot.
        unsafe { *p += 1 };
    }
    let Some(g) = CHAOS_GLOBALS.get(0) else {
        return PROCEED;
    };
    // SAFETY: sock_addr programs may read these context fields.
    let (protocol, port) = unsafe { ((*sa).protocol, (*sa).user_port) };
    let class = match protocol {
        p if p == u32::from(IPPROTO_TCP) => PROTO_CLASS_TCP,
        p if p == u32::from(IPPROTO_UDP) => PROTO_CLASS_UDP,
        _ => PROTO_CLASS_OTHER,
    };
    // `user_port` holds the port in network byte order in its low 16 bits.
    let dport = u16::from_be(port as u16);
    let mut dst = g.dport_any;
    let mut protect = Bitmap::EMPTY;
    port_bits(dport, true, &mut dst, &mut protect);
    m = m
        .and(&g.proto[class])
        .and(&g.sport_any)
        .and(&g.src_any)
        .and(&dst);
    if m.is_empty() {
        return PROCEED;
    }
    m = m.and(&destination(sa, v6).or(&g.dst_any));
    if m.is_empty() {
        return PROCEED;
    }
    // cgroup scope: the connecting process's cgroup (connect runs in its context).
    if !m.and_not(&g.cgroup_any).is_empty() {
        m = m.and(&current_cgroup().or(&g.cgroup_any));
        if m.is_empty() {
            return PROCEED;
        }
    }
    let mut walk = Walk {
        m,
        protect,
        // SAFETY: helper without arguments.
        now: unsafe { bpf_ktime_get_ns() },
        errno: 0,
        pad: 0,
    };
    // SAFETY: `step` has the callback signature bpf_loop expects and only touches `walk` (a
    // stack object that outlives the call) and maps.
    unsafe {
        bpf_loop(
            MAX_FAULTS,
            step as *mut c_void,
            (&raw mut walk).cast::<c_void>(),
            0,
        );
    }
    if walk.errno == 0 {
        return PROCEED;
    }
    // SAFETY: helper open to sock_addr programs since 6.1; a negative errno is what the
    // syscall returns.
    unsafe { bpf_set_retval(-(walk.errno as i32)) };
    REJECT
}

/// The faults scoped to a cgroup the connecting process is in. Not inlined, for the stack.
#[inline(never)]
fn current_cgroup() -> Bitmap {
    crate::scoped(|level| {
        // SAFETY: helper open to cgroup sock_addr programs since 5.7.
        unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) }
    })
}

/// The faults whose destination prefixes hold the connect's address.
#[inline(always)]
fn destination(sa: *mut bpf_sock_addr, v6: bool) -> Bitmap {
    if v6 {
        // SAFETY: connect6 programs may read `user_ip6` (four u32 loads, network byte order).
        let w = unsafe {
            [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ]
        };
        // ::ffff:a.b.c.d: a dual-stack socket connecting to an IPv4 address.
        if w[0] == 0 && w[1] == 0 && w[2] == u32::to_be(0xffff) {
            return bits(CHAOS_DST4.get(&Key::new(32, w[3].to_ne_bytes())));
        }
        let mut a = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let b = w[i].to_ne_bytes();
            a[i * 4] = b[0];
            a[i * 4 + 1] = b[1];
            a[i * 4 + 2] = b[2];
            a[i * 4 + 3] = b[3];
            i += 1;
        }
        bits(CHAOS_DST6.get(&Key::new(128, a)))
    } else {
        // SAFETY: connect4 programs may read `user_ip4` (network byte order).
        let ip = unsafe { (*sa).user_ip4 };
        bits(CHAOS_DST4.get(&Key::new(32, ip.to_ne_bytes())))
    }
}

/// One connect's walk over the refuse faults that match it.
#[repr(C)]
struct Walk {
    m: Bitmap,
    /// Faults for which the destination port is protected.
    protect: Bitmap,
    now: u64,
    /// Out: the errno of the fault that refused the connect, 0 if none did.
    errno: u32,
    pad: u32,
}

/// Takes the lowest slot left: an armed, live, active refuse fault that draws a hit ends the
/// walk with its errno.
#[inline(never)]
extern "C" fn step(_index: u64, walk: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `decide` gave it, a live `Walk`.
    let walk = unsafe { &mut *walk.cast::<Walk>() };
    let Some(crate::Popped { slot, protected }) = crate::pop_lowest(&mut walk.m, &walk.protect)
    else {
        return 1;
    };
    let Some(f) = CHAOS_SLOTS.get(slot) else {
        return 0;
    };
    let flags = f.flags;
    if flags & F_REFUSE == 0 || !crate::acts_now(f, slot, Dir::Egress, walk.now) {
        return 0;
    }
    if protected {
        count(slot, Dir::Egress, Counter::Protected);
        return 0;
    }
    count(slot, Dir::Egress, Counter::Matched);
    let threshold = f.loss_threshold;
    if threshold == 0 || !rng::hit(rng::draw(flags, slot), threshold) {
        return 0;
    }
    count(slot, Dir::Egress, Counter::Refused);
    walk.errno = f.errno;
    1
}
