//! chaos-agent's kernel programs: the tc classifiers `chaos_tc_in` and `chaos_tc_eg`, and the
//! cgroup connect programs of refuse faults (`connect`), which share their fault table.
//!
//! One object per agent, loaded and verified once, attached once per interface and direction;
//! every packet fault of the agent is a slot in the fault table its maps hold (see
//! `chaos_common::table`). A packet is classified with a fixed number of lookups, whatever the
//! number of faults and prefixes: each dimension gives the bitmap of fault slots that match the
//! packet on it, and only the slots left in the AND are looked at, in slot order. Those are then
//! dropped, steered to a shaping class (`skb->priority`), given a later departure time
//! (`skb->tstamp`, egress EDT delay), or let through. The programs never end the tc chain for
//! packets they do not act on: "no verdict" is `TC_ACT_UNSPEC`, which is `TCX_NEXT` under tcx
//! (>= 6.6) and "continue" under cls_bpf, so other programs on the hook still run (`TC_ACT_OK`
//! would skip them).
//!
//! Helpers used: map lookup, `bpf_skb_load_bytes`, `bpf_ktime_get_ns`, `bpf_get_prandom_u32`,
//! `bpf_redirect` (all present since 4.x) and `bpf_loop` (5.17), so the object verifies on
//! Debian 12's 6.1. Context fields read: `ifindex`, `data` and `data_end` (direct packet
//! access, 4.7); written: `priority` and `tstamp` (tc read/write access to `tstamp` since 5.0).
#![no_std]
#![no_main]

mod connect;
mod dns;
mod parse;
mod rng;
mod sock_ingress;

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_ktime_get_ns, bpf_loop, bpf_redirect, bpf_skb_ancestor_cgroup_id},
    macros::{classifier, map},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::TcContext,
};
use chaos_common::{
    Bitmap, COUNTERS_LEN, Counter, Dir, F_ARMED, F_DNS, F_EDT, F_EGRESS_WIRE_DROP, F_FLAP, F_STEER,
    FaultSlot, Globals, HOOK_L3_DEVICE, HookEntry, MAX_CGROUP_LEVEL, MAX_CGROUPS, MAX_FAULTS,
    MAX_HOOKS, MAX_TRIE_ENTRIES, PORT_BLOCK_SIZE, PORT_BLOCKS, PROTO_CLASS_ICMP, PROTO_CLASS_OTHER,
    PROTO_CLASS_TCP, PROTO_CLASS_UDP, PortEntry, counter_index, hook_key,
};

use core::ffi::c_void;

use crate::parse::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Packet};

/// Attachment points: `hook_key(ifindex, dir)` -> the faults acting there. A packet on an
/// interface without an entry (a hook whose last fault just left) passes at once.
#[map]
static CHAOS_HOOKS: HashMap<u64, HookEntry> = HashMap::with_max_entries(MAX_HOOKS, 0);
/// Per-CPU packet count of each attachment point (`HookEntry::stats`).
#[map]
static CHAOS_HOOKSTAT: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_HOOKS, 0);
/// The protocol bitmaps and the "no filter on this dimension" bitmaps (index 0).
#[map]
static CHAOS_GLOBALS: Array<Globals> = Array::with_max_entries(1, 0);
/// Per-port bitmaps, index = port (host byte order).
#[map]
static CHAOS_PORTS: Array<PortEntry> = Array::with_max_entries(65536, 0);
/// Per-block bitmaps, index = port / `PORT_BLOCK_SIZE`: a range covering whole blocks is set
/// here, so that `--dport 1024-65535` costs 252 entries, not 64,512.
#[map]
static CHAOS_PORT_BLKS: Array<PortEntry> = Array::with_max_entries(PORT_BLOCKS, 0);
/// cgroup v2 id -> the faults scoped to it. A packet's socket is in a cgroup's subtree when one
/// of its ancestors (`bpf_skb_ancestor_cgroup_id`, level 0 = root) is that cgroup.
#[map]
pub(crate) static CHAOS_CGROUPS: HashMap<u64, Bitmap> = HashMap::with_max_entries(MAX_CGROUPS, 0);
/// The fault slots. A zeroed slot (never written, or freed) is unarmed.
#[map]
static CHAOS_SLOTS: Array<FaultSlot> = Array::with_max_entries(MAX_FAULTS, 0);
/// Per-CPU counters, indexed by `counter_index(slot, dir, counter)`.
#[map]
static CHAOS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);
/// Per-CPU xorshift64* state of each slot, for `F_SEEDED`.
#[map]
pub(crate) static CHAOS_RNG: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_FAULTS, 0);
/// Per-CPU Gilbert-Elliott state of each slot (0 = good, 1 = bad).
#[map]
pub(crate) static CHAOS_GE: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_FAULTS, 0);
/// Per-CPU state of the walk over a packet's matching faults ([`act`]), one entry per
/// direction. In map memory, not on the stack, so that the verifier learns nothing from it: a
/// `bpf_loop` callback is verified again for every new state it is entered with, and with the
/// walk on the stack each step's constants (the words already emptied, what was done) made a
/// new one. Seen as unknown values, every step is entered in one state and the callback is
/// verified once. (With the LLVM of Debian's llvm-22 22.1.8 the stack walk took `chaos_tc_eg`
/// past the verifier's million instructions.) Entry per direction: an egress walk (BH off) and
/// an ingress one (softirq) never interleave on a CPU, but they need not share to be sure. The
/// third entry is the socket-ingress program's ([`WALK_SOCKET_INGRESS`]), which runs as a
/// socket takes a packet, also from process context.
#[map]
static CHAOS_WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(3, 0);

/// `CHAOS_WALK`'s entry for `chaos_sk_in`; [`walk_step`] counts it as ingress.
const WALK_SOCKET_INGRESS: u32 = 2;
/// Source IPv4 prefixes -> the faults of every listed prefix that contains the key (the agent
/// stores the union, so the longest match is enough). The constructor adds
/// `BPF_F_NO_PREALLOC`, which the kernel requires for LPM tries: entries cost memory only
/// when they exist.
#[map]
static CHAOS_SRC4: LpmTrie<[u8; 4], Bitmap> = LpmTrie::with_max_entries(MAX_TRIE_ENTRIES, 0);
/// Destination IPv4 prefixes.
#[map]
static CHAOS_DST4: LpmTrie<[u8; 4], Bitmap> = LpmTrie::with_max_entries(MAX_TRIE_ENTRIES, 0);
/// Source IPv6 prefixes.
#[map]
static CHAOS_SRC6: LpmTrie<[u8; 16], Bitmap> = LpmTrie::with_max_entries(MAX_TRIE_ENTRIES, 0);
/// Destination IPv6 prefixes.
#[map]
static CHAOS_DST6: LpmTrie<[u8; 16], Bitmap> = LpmTrie::with_max_entries(MAX_TRIE_ENTRIES, 0);

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
fn count(slot: u32, dir: Dir, counter: Counter) {
    if let Some(p) = CHAOS_COUNTERS.get_ptr_mut(counter_index(slot, dir, counter)) {
        // SAFETY: per-CPU slot: no other program touches it concurrently, a plain add suffices.
        unsafe { *p += 1 };
    }
}

/// The bitmap at `p`, or the empty set.
#[inline(always)]
fn bits(p: Option<&Bitmap>) -> Bitmap {
    match p {
        Some(b) => *b,
        None => Bitmap::EMPTY,
    }
}

/// The whole decision, shared by both directions (`dir` is a constant after inlining, so each
/// program keeps only its own branch).
#[inline(always)]
fn handle(ctx: &TcContext, dir: Dir) -> i32 {
    // SAFETY: `skb` is the program's context; tc programs may read `ifindex` (skb->dev's).
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(hook) = CHAOS_HOOKS.get_ptr(hook_key(ifindex, dir)) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: a map value pointer, valid for the duration of the program. Copied once: the
    // agent may rewrite the entry while we run.
    let (mut m, hook_flags, stats) = unsafe { ((*hook).faults, (*hook).flags, (*hook).stats) };
    if let Some(p) = CHAOS_HOOKSTAT.get_ptr_mut(stats) {
        // SAFETY: per-CPU slot.
        unsafe { *p += 1 };
    }
    if m.is_empty() {
        return TC_ACT_UNSPEC;
    }
    let Some(g) = CHAOS_GLOBALS.get(0) else {
        return TC_ACT_UNSPEC;
    };
    let mut pkt = Packet::EMPTY;
    if !parse::parse_into(ctx.skb.skb, hook_flags & HOOK_L3_DEVICE, &mut pkt) {
        return TC_ACT_UNSPEC;
    }
    // Cheapest dimensions first (array lookups the verifier inlines), the tries last: most
    // packets that match nothing leave before the first trie walk.
    let class = match pkt.proto {
        IPPROTO_TCP => PROTO_CLASS_TCP,
        IPPROTO_UDP => PROTO_CLASS_UDP,
        IPPROTO_ICMP if !pkt.v6 => PROTO_CLASS_ICMP,
        IPPROTO_ICMPV6 if pkt.v6 => PROTO_CLASS_ICMP,
        _ => PROTO_CLASS_OTHER,
    };
    m = m.and(&g.proto[class]);
    if m.is_empty() {
        return TC_ACT_UNSPEC;
    }
    let mut protect = Bitmap::EMPTY;
    if pkt.has_ports {
        port_filter(pkt.sport, pkt.dport, g, &mut m, &mut protect);
    } else {
        // A port filter never matches a packet without ports (ICMP, non-first fragments).
        m = m.and(&g.sport_any).and(&g.dport_any);
    }
    if m.is_empty() {
        return TC_ACT_UNSPEC;
    }
    if !trie_filter(&pkt, g, &mut m) {
        return TC_ACT_UNSPEC;
    }
    // cgroup scope: only when a fault still in the running is scoped. At ingress tc runs
    // before the socket lookup, so a scoped fault never matches there (the agent refuses it).
    if !m.and_not(&g.cgroup_any).is_empty() {
        m = m.and(&cgroup_filter(ctx.skb.skb).or(&g.cgroup_any));
        if m.is_empty() {
            return TC_ACT_UNSPEC;
        }
    }
    // DNS faults last: only a packet that every other dimension of one of them admits is
    // parsed as a DNS message.
    let mut dns_state = dns::NONE;
    if !m.and(&g.dns).is_empty() {
        dns_state = dns::inspect(ctx.skb.skb, &pkt, g, &mut m);
        if m.is_empty() {
            return TC_ACT_UNSPEC;
        }
    }
    let mut io = DnsIo {
        state: dns_state,
        rewrite: 0,
        rcode: 0,
        slot: 0,
    };
    let verdict = act(ctx.skb.skb, dir as u32, &m, &protect, &mut io);
    if io.rewrite == 0 {
        return verdict;
    }
    // After the walk, in this frame: the rewrite's locals and the walk's never share a stack.
    match dns::rewrite(ctx.skb.skb, io.rcode) {
        dns::REWRITTEN => count(io.slot, dir, Counter::Rewritten),
        // Changed half-way: a broken message must not reach the client.
        dns::BROKEN => {
            count(io.slot, dir, Counter::Dropped);
            return TC_ACT_SHOT as i32;
        }
        _ => count(io.slot, dir, Counter::Unparsed),
    }
    verdict
}

/// What the walk and the DNS parts of the program tell each other.
#[repr(C)]
struct DnsIo {
    /// In: `dns::NONE`, `UDP`, `TCP` or `UNPARSED`.
    state: u32,
    /// Out: 1 if a DNS fault hit the answer and it is to be rewritten.
    rewrite: u32,
    /// Out: the rcode to write.
    rcode: u32,
    /// Out: `FaultSlot::index` of that fault.
    slot: u32,
}

/// Narrows `m` by the packet's ports and collects the faults that protect one of them.
#[inline(always)]
fn port_filter(sport: u16, dport: u16, g: &Globals, m: &mut Bitmap, protect: &mut Bitmap) {
    let mut src = g.sport_any;
    let mut dst = g.dport_any;
    let mut prot = Bitmap::EMPTY;
    port_bits(sport, false, &mut src, &mut prot);
    port_bits(dport, true, &mut dst, &mut prot);
    *m = m.and(&src).and(&dst);
    *protect = prot;
}

/// Adds to `acc` the faults that list `port` as a destination (`dst`) or source port, and to
/// `prot` those that protect it: the union of the port's own entry and its block's, read in
/// place (copying the 96-byte entries out cost more than the lookups).
#[inline(always)]
pub(crate) fn port_bits(port: u16, dst: bool, acc: &mut Bitmap, prot: &mut Bitmap) {
    if let Some(e) = CHAOS_PORTS.get(u32::from(port)) {
        *acc = acc.or(if dst { &e.dst } else { &e.src });
        *prot = prot.or(&e.protect);
    }
    if let Some(e) = CHAOS_PORT_BLKS.get(u32::from(port) / PORT_BLOCK_SIZE) {
        *acc = acc.or(if dst { &e.dst } else { &e.src });
        *prot = prot.or(&e.protect);
    }
}

/// The state of one packet's walk over its matching faults, shared with [`walk_step`].
#[repr(C)]
struct Walk {
    /// Matching faults not yet looked at.
    m: Bitmap,
    /// Matching faults for which one of the packet's ports is protected.
    protect: Bitmap,
    /// `bpf_ktime_get_ns()` at the start of the walk.
    now: u64,
    /// `skb->tstamp` as the packet arrived; the new departure time once `STAMPED`.
    tstamp: u64,
    /// The class to steer into once `STEERED`.
    priority: u32,
    /// `VERDICT_*`.
    verdict: u32,
    /// `STEERED` | `STAMPED`.
    done: u32,
    /// `FaultSlot::index` of the slot that steered the packet, once `STEERED`.
    steer_slot: u32,
    /// `FaultSlot::index` of the slot that stamped it, once `STAMPED`.
    stamp_slot: u32,
    /// `dns::NONE`, `UDP`, `TCP` or `UNPARSED`: what the DNS parser made of the packet.
    dns: u32,
    /// The rcode to answer with, once `VERDICT_DNS`.
    rcode: u32,
    /// `FaultSlot::index` of the DNS fault that hit the answer, once `VERDICT_DNS`.
    dns_slot: u32,
}

const VERDICT_NONE: u32 = 0;
const VERDICT_SHOT: u32 = 1;
const VERDICT_WIRE_DROP: u32 = 2;
const VERDICT_DNS: u32 = 3;

const STEERED: u32 = 1;
const STAMPED: u32 = 2;

/// What the faults in `m` (their filters all match) do to the packet, in slot order: the first
/// that drops it ends the walk (so `n` faults of probability `p_i` lose `1 - prod(1 - p_i)`, and
/// the faults after a drop do not see the packet); steering and EDT are taken from the first
/// fault that has them (the engine allows one shaping fault per interface and direction).
///
/// The walk is a `bpf_loop` (5.17) over [`walk_step`], one call per matching fault: the
/// verifier checks the step once, where an inline loop over up to 256 slots would be checked
/// once per possible iteration and exceed its million-instruction budget.
///
/// Not inlined: the walk's state gets a frame of its own, so that the classifier's frame plus
/// the DNS parser's or rewriter's stays within the 512 bytes a call chain may use.
#[inline(never)]
fn act(skb: *mut __sk_buff, dir: u32, m: &Bitmap, protect: &Bitmap, io: &mut DnsIo) -> i32 {
    let dir = if dir == Dir::Egress as u32 {
        Dir::Egress
    } else {
        Dir::Ingress
    };
    let Some(walk) = CHAOS_WALK.get_ptr_mut(dir as u32) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: this CPU's entry for this direction, valid while the program runs; no other
    // program uses it meanwhile (see `CHAOS_WALK`).
    let walk = unsafe { &mut *walk };
    walk.m = *m;
    walk.protect = *protect;
    // SAFETY: helper without arguments, available since 4.1. CLOCK_MONOTONIC, as is the
    // agent's deadline.
    walk.now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `skb` is the program's context; tc programs may read `tstamp` (since 5.0).
    walk.tstamp = unsafe { (*skb).tstamp };
    walk.priority = 0;
    walk.verdict = VERDICT_NONE;
    walk.done = 0;
    walk.steer_slot = 0;
    walk.stamp_slot = 0;
    walk.dns = io.state;
    walk.rcode = 0;
    walk.dns_slot = 0;
    // The step's context is only the direction: a constant, the same at every step.
    let mut step_dir = dir as u32;
    // SAFETY: `walk_step` has the callback signature bpf_loop expects and only reads
    // `step_dir` (a stack object that outlives the call) and touches maps.
    unsafe {
        bpf_loop(
            MAX_FAULTS,
            walk_step as *mut c_void,
            (&raw mut step_dir).cast::<c_void>(),
            0,
        );
    }
    match walk.verdict {
        VERDICT_WIRE_DROP => {
            // Redirect to ifindex 0, which never exists: skb_do_redirect frees the packet but
            // sch_handle_egress reports NET_XMIT_SUCCESS, so TCP sees loss on the wire and
            // retransmits (TC_ACT_SHOT here would be NET_XMIT_DROP = local congestion, which
            // TCP silently re-sends without counting a loss). Returns TC_ACT_REDIRECT.
            // SAFETY: helper available to tc programs since 4.4.
            return unsafe { bpf_redirect(0, 0) } as i32;
        }
        VERDICT_SHOT => return TC_ACT_SHOT as i32,
        VERDICT_DNS => {
            io.rewrite = 1;
            io.rcode = walk.rcode;
            io.slot = walk.dns_slot;
        }
        _ => {}
    }
    // Counted only now that no slot dropped the packet: a packet a later slot drops never
    // reaches the shaping qdisc.
    if walk.done & STEERED != 0 {
        count(walk.steer_slot, dir, Counter::Steered);
    }
    // A slot that both steered and stamped is counted once.
    if walk.done & STAMPED != 0 && (walk.done & STEERED == 0 || walk.stamp_slot != walk.steer_slot)
    {
        count(walk.stamp_slot, dir, Counter::Steered);
    }
    if walk.done & STAMPED != 0 && matches!(dir, Dir::Egress) {
        // Egress only: the departure time is honoured by the root fq of the device the packet
        // is leaving, which is this one. On ingress there is no qdisc to honour it, and before
        // 5.18 `skb_scrub_packet` cleared it on a netns crossing anyway.
        // SAFETY: tc programs may write `tstamp` (sched_cls since 5.0); at egress the kernel
        // stores the value as is (CLOCK_MONOTONIC).
        unsafe { (*skb).tstamp = walk.tstamp };
    }
    if walk.done & STEERED != 0 {
        // SAFETY: tc programs may write `priority` (the verifier allows it for sched_cls/act),
        // which an agent-owned htb qdisc uses as classid.
        unsafe { (*skb).priority = walk.priority };
    }
    TC_ACT_UNSPEC
}

/// One step of the walk: takes the lowest slot left in `walk.m` and applies that fault.
/// Returns 1 (stop) when no slot is left or the packet is dropped, 0 to go on.
#[inline(never)]
extern "C" fn walk_step(_index: u64, step_dir: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `act` gave it, a live `u32`.
    let step_dir = unsafe { *step_dir.cast::<u32>() };
    let Some(walk) = CHAOS_WALK.get_ptr_mut(step_dir) else {
        return 1;
    };
    // SAFETY: as in `act`, which filled it.
    let walk = unsafe { &mut *walk };
    let Some(Popped { slot, protected }) = pop_lowest(&mut walk.m, &walk.protect) else {
        return 1;
    };
    let dir = if step_dir == Dir::Egress as u32 {
        Dir::Egress
    } else {
        Dir::Ingress
    };
    let Some(f) = CHAOS_SLOTS.get(slot) else {
        return 0;
    };
    let flags = f.flags;
    if !acts_now(f, slot, dir, walk.now) {
        return 0;
    }
    if protected {
        count(slot, dir, Counter::Protected);
        return 0;
    }
    if flags & F_DNS != 0 {
        return dns_step(walk, f, flags, slot, dir);
    }
    count(slot, dir, Counter::Matched);
    if rng::should_drop(f, flags, slot) {
        count(slot, dir, Counter::Dropped);
        walk.verdict = if matches!(dir, Dir::Egress) && flags & F_EGRESS_WIRE_DROP != 0 {
            VERDICT_WIRE_DROP
        } else {
            VERDICT_SHOT
        };
        return 1;
    }
    if flags & F_EDT != 0 && matches!(dir, Dir::Egress) && walk.done & STAMPED == 0 {
        walk.tstamp = edt_departure(f, flags, slot, walk.now, walk.tstamp);
        walk.done |= STAMPED;
        walk.stamp_slot = f.index;
    }
    if flags & F_STEER != 0 && walk.done & STEERED == 0 {
        walk.priority = f.steer_priority;
        walk.done |= STEERED;
        walk.steer_slot = f.index;
    }
    0
}

/// The lowest slot left in a walk's bitmap, taken off it.
pub(crate) struct Popped {
    /// Its number.
    pub slot: u32,
    /// Whether one of the packet's (or connect's) ports is protected for it.
    pub protected: bool,
}

/// Takes the lowest slot left in `m` off it, and says whether `protect` has it; `None` once
/// `m` is empty. Shared by every walk (the tc programs' and the connect programs').
///
/// Each word is handled at a constant offset: a word index computed from the bitmap would be
/// a pointer offset, which the verifier tracks precisely, path by path.
#[inline(always)]
pub(crate) fn pop_lowest(m: &mut Bitmap, protect: &Bitmap) -> Option<Popped> {
    let (base, low, prot) = if m.w[0] != 0 {
        (0, take_low(&mut m.w[0]), protect.w[0])
    } else if m.w[1] != 0 {
        (64, take_low(&mut m.w[1]), protect.w[1])
    } else if m.w[2] != 0 {
        (128, take_low(&mut m.w[2]), protect.w[2])
    } else if m.w[3] != 0 {
        (192, take_low(&mut m.w[3]), protect.w[3])
    } else {
        return None;
    };
    Some(Popped {
        slot: base + bit_index(low),
        protected: prot & low != 0,
    })
}

/// Clears the lowest bit set in `*w` (non-zero) and returns it.
#[inline(always)]
fn take_low(w: &mut u64) -> u64 {
    let low = *w & w.wrapping_neg();
    *w ^= low;
    low
}

/// Whether a slot acts at `now`: armed, before its kernel deadline (a slot past it is counted
/// `Expired`: the TTL holds even if the agent is dead and its filters outlived it), and, with
/// `F_FLAP`, in the first `flap_on_ns` of a period since its start.
#[inline(always)]
pub(crate) fn acts_now(f: &FaultSlot, slot: u32, dir: Dir, now: u64) -> bool {
    let flags = f.flags;
    if flags & F_ARMED == 0 {
        return false;
    }
    if now > f.expires_at_ns {
        count(slot, dir, Counter::Expired);
        return false;
    }
    !(flags & F_FLAP != 0
        && (f.flap_period_ns == 0
            || now.wrapping_sub(f.start_ns) % f.flap_period_ns >= f.flap_on_ns))
}

/// A DNS fault's part of the walk (its name and type matched, or the message did not parse):
/// `FaultSlot::loss_threshold` is the fraction of matching answers it hits. The first DNS fault
/// that hits decides the answer's fate and ends the walk.
#[inline(always)]
fn dns_step(walk: &mut Walk, f: &FaultSlot, flags: u32, slot: u32, dir: Dir) -> i64 {
    // One counter per outcome, one count site: each site is a map lookup the verifier walks
    // on every path through the callback.
    let state = walk.dns;
    let (counter, stop) = if state == dns::UNPARSED {
        (Counter::Unparsed, false)
    } else if state == dns::NONE {
        return 0;
    } else {
        let threshold = f.loss_threshold;
        if threshold == 0 || !rng::hit(rng::draw(flags, slot), threshold) {
            (Counter::Matched, false)
        } else if f.dns == chaos_common::dns::DNS_ACT_DROP || state == dns::TCP {
            // Over TCP the message cannot change length without breaking the stream: dropped,
            // the client retries and times out.
            walk.verdict = if matches!(dir, Dir::Egress) && flags & F_EGRESS_WIRE_DROP != 0 {
                VERDICT_WIRE_DROP
            } else {
                VERDICT_SHOT
            };
            (Counter::Dropped, true)
        } else {
            walk.verdict = VERDICT_DNS;
            walk.rcode = f.dns & chaos_common::dns::DNS_RCODE_MASK;
            walk.dns_slot = f.index;
            (Counter::Matched, true)
        }
    };
    if state != dns::UNPARSED && counter != Counter::Matched {
        count(slot, dir, Counter::Matched);
    }
    count(slot, dir, counter);
    i64::from(stop)
}

/// The index of the one bit set in `low` (a power of two): the number of bits set below it,
/// `popcount(low - 1)`, counted without a branch (BPF has no count-trailing-zeros or popcount
/// instruction). Branch-free on purpose: a binary search by branches gives every slot number
/// its own constant, and since the verifier tracks constant array keys precisely (6.13+, to
/// elide the null check of the lookup) it then walks the rest of the step once per slot, 256
/// times, and `chaos_tc_in` went past its million instructions. Computed, the slot is one
/// bounded scalar and the step is verified once.
#[inline(always)]
fn bit_index(low: u64) -> u32 {
    let mut x = low.wrapping_sub(1);
    x -= (x >> 1) & 0x5555_5555_5555_5555;
    x = (x & 0x3333_3333_3333_3333) + ((x >> 2) & 0x3333_3333_3333_3333);
    x = (x + (x >> 4)) & 0x0F0F_0F0F_0F0F_0F0F;
    (x.wrapping_mul(0x0101_0101_0101_0101) >> 56) as u32
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
fn edt_departure(cfg: &FaultSlot, flags: u32, slot: u32, now: u64, current: u64) -> u64 {
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
        let offset = (u64::from(rng::draw(flags, slot)) * (2 * jitter_us + 1)) >> 32;
        // delay + offset - j, clamped at 0 when the jitter exceeds the delay.
        add_us = (delay_us + offset).saturating_sub(jitter_us);
    }
    base + add_us * 1000
}

/// The faults scoped to a cgroup the packet's socket is in (at any level). Not inlined: its
/// lookups get a frame of their own.
#[inline(never)]
fn cgroup_filter(skb: *mut __sk_buff) -> Bitmap {
    scoped(|level| {
        // SAFETY: helper open to tc programs since 4.19; 0 without a socket or past the leaf.
        unsafe { bpf_skb_ancestor_cgroup_id(skb, level as i32) }
    })
}

/// The union of the scoped faults of each ancestor cgroup that `ancestor(level)` names, from
/// the root down, stopping at the first level the cgroup does not have (id 0).
#[inline(always)]
pub(crate) fn scoped(ancestor: impl Fn(u32) -> u64) -> Bitmap {
    let mut acc = Bitmap::EMPTY;
    let mut level = 0;
    while level < MAX_CGROUP_LEVEL {
        let id = ancestor(level);
        if id == 0 {
            break;
        }
        acc = acc.or(&bits(CHAOS_CGROUPS.get_ptr(&id).map(|p| {
            // SAFETY: a map value pointer, valid while the program runs.
            unsafe { &*p }
        })));
        level += 1;
    }
    acc
}

/// Narrows `m` by the packet's source and destination prefixes; false once it is empty. Not
/// inlined, for the stack (the lookup keys and values live in its own frame).
#[inline(never)]
fn trie_filter(pkt: &Packet, g: &Globals, m: &mut Bitmap) -> bool {
    // Each trie only when a fault still in the running lists prefixes on that side: faults
    // without prefixes (the common case) match any address without a walk.
    if !m.and_not(&g.src_any).is_empty() {
        *m = m.and(&in_trie(pkt, &pkt.src, true).or(&g.src_any));
        if m.is_empty() {
            return false;
        }
    }
    if !m.and_not(&g.dst_any).is_empty() {
        *m = m.and(&in_trie(pkt, &pkt.dst, false).or(&g.dst_any));
    }
    !m.is_empty()
}

/// The faults whose source (or destination) prefixes contain the address: one longest-prefix
/// lookup, since every stored prefix carries the faults of the prefixes that contain it.
#[inline(always)]
fn in_trie(pkt: &Packet, addr: &[u8; 16], src: bool) -> Bitmap {
    if pkt.v6 {
        let key = Key::new(128, *addr);
        let trie = if src { &CHAOS_SRC6 } else { &CHAOS_DST6 };
        bits(trie.get(&key))
    } else {
        let key = Key::new(32, [addr[0], addr[1], addr[2], addr[3]]);
        let trie = if src { &CHAOS_SRC4 } else { &CHAOS_DST4 };
        bits(trie.get(&key))
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
