//! DNS answer faults: the question of a response is parsed (bounded, in per-CPU scratch space:
//! the 512-byte stack holds no name), matched against the faults' name suffixes with one LPM
//! lookup and against their query types with one hash lookup, and a response a fault hits is
//! either dropped or rewritten into a valid message with the fault's rcode: counts zeroed, the
//! message cut after its question, UDP and IPv4 lengths and checksums fixed incrementally (so
//! that an skb whose checksum the NIC or the receiver's stack will complete, `CHECKSUM_PARTIAL`,
//! stays right too).
//!
//! Anything the parser cannot handle within its bounds (no single question, a compressed or
//! over-long name, a message over `MAX_TAIL` bytes past its question) is let through untouched
//! and counted as unparsed.

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::{bpf_csum_diff, bpf_loop, bpf_skb_change_tail},
    macros::map,
    maps::{HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::TcContext,
};
use chaos_common::{Bitmap, Globals, dns};
use core::ffi::c_void;

use crate::parse::{IPPROTO_TCP, IPPROTO_UDP, Packet};

/// Question names (reversed keys, `chaos_common::dns`) -> the faults of every listed suffix.
#[map]
static CHAOS_DNS_NAMES: LpmTrie<[u8; dns::NAME_KEY_BYTES], Bitmap> =
    LpmTrie::with_max_entries(dns::MAX_NAME_ENTRIES, 0);
/// Query type -> the faults that list it.
#[map]
static CHAOS_DNS_TYPES: HashMap<u32, Bitmap> = HashMap::with_max_entries(dns::MAX_TYPE_ENTRIES, 0);
/// The parser's working memory, one per CPU (a tc program runs with migration disabled).
#[map]
static CHAOS_DNS_SCR: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Bytes past the question that a rewrite may cut (and subtract from the UDP checksum): a
/// classic 512-byte answer, EDNS's common 1232 and 4096 fit; larger messages pass untouched.
const MAX_TAIL: usize = 4096;
/// `bpf_csum_diff` takes at most 512 bytes at once.
const CHUNK: usize = 512;
/// Mask of an index into `Scratch::tail` (see there).
const TAIL_MASK: usize = 2 * CHUNK - 1;

/// Per-CPU scratch space.
#[repr(C)]
pub struct Scratch {
    /// The question name as it came, from its first length byte (up to 256 bytes).
    raw: [u8; 256],
    /// Offset in `raw` of each label's length byte.
    starts: [u8; dns::MAX_LABELS],
    /// The LPM key being built (prefix length in bits, reversed name).
    key: Key<[u8; dns::NAME_KEY_BYTES]>,
    /// A chunk of the bytes a rewrite cuts (at most `CHUNK`), then room for zero padding. Twice
    /// the chunk, so that an index masked with `TAIL_MASK` is in bounds for any verifier.
    tail: [u8; TAIL_MASK + 1 + 4],
    /// The response [`inspect`] parsed last on this CPU, for [`rewrite`].
    msg: Dns,
    /// Never written, so always 0 at run time, but a value the verifier cannot know: the loop
    /// states start from it so that the callbacks' states converge (started from a constant,
    /// the verifier would check each iteration's exact position as a new state, and run out of
    /// its instruction budget long before 128 labels).
    zero: u32,
}

/// Where the parts of a parsed response are, for [`rewrite`].
#[repr(C)]
#[derive(Clone, Copy)]
struct Dns {
    /// Offset of the DNS header.
    off: u32,
    /// Offset just past the question (its name, type and class).
    qend: u32,
    /// Offset of the L4 header (UDP or TCP).
    l4: u32,
    /// Offset of the IP header.
    l3: u32,
    /// IPv6.
    v6: u32,
}

/// [`inspect`]: no DNS response (a query, another opcode, a TCP segment without payload), or
/// no DNS fault left: DNS faults do not apply.
pub const NONE: u32 = 0;
/// A response over UDP, which can be rewritten.
pub const UDP: u32 = 1;
/// A response over TCP, which can only be dropped.
pub const TCP: u32 = 2;
/// A response the parser cannot read within its bounds: passed untouched, counted.
pub const UNPARSED: u32 = 3;

/// [`rewrite`]: done.
pub const REWRITTEN: i32 = 0;
/// Failed after the packet was changed (the caller drops it: a half-written message must not
/// reach the client).
pub const BROKEN: i32 = 1;
/// Failed before anything was changed.
pub const UNCHANGED: i32 = 2;

/// State of the label walk.
#[repr(C)]
struct Labels {
    /// Offset in `raw` of the next length byte.
    pos: u32,
    /// Labels seen.
    n: u32,
    /// Bytes of the name loaded into `raw`.
    loaded: u32,
    /// 0 going on, 1 found the root label, 2 malformed.
    state: u32,
}

/// State of the key build.
#[repr(C)]
struct KeyBuild {
    /// Label being copied (from the last one down).
    label: u32,
    /// Position in it (0 = its length byte).
    j: u32,
    /// Key bytes written.
    out: u32,
    /// 1 once the first label is copied.
    done: u32,
}

/// Parses the response in `pkt` (a TCP or UDP packet that reached a DNS fault) and removes from
/// `m` the DNS faults whose name or type filter its question does not match (all of them if it
/// is no response). Returns `NONE`, `UDP`, `TCP` or `UNPARSED`; for `UDP`, the message's
/// layout stays in this CPU's scratch space for [`rewrite`].
///
/// A function of its own (a BPF-to-BPF call), not inlined: its locals get a frame of their own
/// instead of adding to the classifier's, which the rest of the decision already fills.
#[inline(never)]
pub fn inspect(skb: *mut __sk_buff, pkt: &Packet, g: &Globals, m: &mut Bitmap) -> u32 {
    let ctx = &TcContext::new(skb);
    let mut hit = Bitmap::EMPTY;
    let r = inspect_inner(ctx, pkt, &g.dns_name_any, &g.dns_type_any, &mut hit);
    let dns_slots = m.and(&g.dns);
    *m = match r {
        UDP | TCP => m.and_not(&dns_slots.and_not(&hit)),
        UNPARSED => *m,
        _ => m.and_not(&dns_slots),
    };
    r
}

#[inline(always)]
fn inspect_inner(
    ctx: &TcContext,
    pkt: &Packet,
    name_any: &Bitmap,
    type_any: &Bitmap,
    hit: &mut Bitmap,
) -> u32 {
    let l4 = u32::from(pkt.l4);
    let (off, tcp) = match pkt.proto {
        IPPROTO_UDP => (l4 + 8, false),
        IPPROTO_TCP => {
            // Data offset: the high nibble of byte 12, in 4-byte words.
            let Ok(doff) = ctx.load::<u8>(l4 as usize + 12) else {
                return NONE;
            };
            let payload = l4 + u32::from(doff >> 4) * 4;
            if payload >= ctx.len() {
                // SYN, ACK, FIN: no message here.
                return NONE;
            }
            // A DNS message over TCP starts with its 2-byte length (RFC 1035 4.2.2); only a
            // segment that starts a message can be read.
            (payload + 2, true)
        }
        _ => return NONE,
    };
    let Ok(h) = ctx.load::<[u8; dns::HEADER_LEN]>(off as usize) else {
        return UNPARSED;
    };
    // QR = 1 (a response), opcode 0 (QUERY): the only messages with a question to judge.
    if h[2] & 0x80 == 0 || (h[2] >> 3) & 0x0f != 0 {
        return NONE;
    }
    if u16::from_be_bytes([h[4], h[5]]) != 1 {
        return UNPARSED;
    }
    let name_off = off as usize + dns::HEADER_LEN;
    let Some(s) = CHAOS_DNS_SCR.get_ptr_mut(0) else {
        return UNPARSED;
    };
    // SAFETY: this CPU's scratch entry, valid for the duration of the program; nothing else
    // runs on this CPU while the program does.
    let s = unsafe { &mut *s };
    let Some(loaded) = load_upto(ctx, name_off as u32, s.raw.as_mut_ptr(), 256) else {
        return UNPARSED;
    };
    let zero = s.zero;
    let mut walk = Labels {
        pos: zero,
        n: zero,
        loaded,
        state: 0,
    };
    // SAFETY: `label_step` has bpf_loop's callback signature and touches only `walk` (on this
    // stack, alive across the call) and the scratch map.
    unsafe {
        bpf_loop(
            dns::MAX_LABELS as u32,
            label_step as *mut c_void,
            (&raw mut walk).cast(),
            0,
        );
    }
    if walk.state != 1 {
        return UNPARSED;
    }
    let wire = walk.pos + 1;
    let Ok(tc) = ctx.load::<[u8; 4]>(name_off + wire as usize) else {
        return UNPARSED;
    };
    let qtype = u32::from(u16::from_be_bytes([tc[0], tc[1]]));
    let qend = off + dns::HEADER_LEN as u32 + wire + 4;
    s.msg = Dns {
        off,
        qend,
        l4,
        l3: u32::from(pkt.l3),
        v6: u32::from(pkt.v6),
    };
    let mut names = *name_any;
    if walk.n > 0 {
        let mut kb = KeyBuild {
            label: walk.n - 1,
            j: zero,
            out: zero,
            done: 0,
        };
        // SAFETY: as above, for `key_step` and `kb`.
        unsafe {
            bpf_loop(
                dns::NAME_KEY_BYTES as u32,
                key_step as *mut c_void,
                (&raw mut kb).cast(),
                0,
            );
        }
        if kb.done == 0 {
            return UNPARSED;
        }
        s.key.prefix_len = kb.out * 8;
    } else {
        // The root name: an empty key.
        s.key.prefix_len = 0;
    }
    // A lookup with a key in map memory; the value is copied at once.
    if let Some(b) = CHAOS_DNS_NAMES.get(&s.key) {
        names = names.or(b);
    }
    // SAFETY: a hash lookup; the value is copied at once.
    let types = match unsafe { CHAOS_DNS_TYPES.get(&qtype) } {
        Some(b) => type_any.or(b),
        None => *type_any,
    };
    *hit = names.and(&types);
    if tcp { TCP } else { UDP }
}

/// One label of the name: records where it starts and steps over it. Stops at the root label
/// (state 1) or at anything the parser does not take (state 2): a label over 63 bytes, which
/// includes compression pointers (0xc0 and up; a question's name is never compressed in
/// practice), a name over 255 bytes, or one running past the loaded bytes.
#[inline(never)]
extern "C" fn label_step(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `inspect` gave it, a live `Labels`.
    let w = unsafe { &mut *ctx.cast::<Labels>() };
    let Some(s) = CHAOS_DNS_SCR.get_ptr_mut(0) else {
        w.state = 2;
        return 1;
    };
    // SAFETY: this CPU's scratch entry.
    let s = unsafe { &mut *s };
    let pos = w.pos;
    if pos >= w.loaded || pos >= 255 {
        w.state = 2;
        return 1;
    }
    let len = u32::from(s.raw[(pos & 0xff) as usize]);
    if len == 0 {
        w.state = 1;
        return 1;
    }
    if len > dns::MAX_LABEL as u32 || w.n >= dns::MAX_LABELS as u32 {
        w.state = 2;
        return 1;
    }
    s.starts[(w.n & 0x7f) as usize] = pos as u8;
    w.n += 1;
    w.pos = pos + 1 + len;
    0
}

/// One byte of the reversed key: labels from the last to the first, each as its length byte
/// and its bytes in lower case.
#[inline(never)]
extern "C" fn key_step(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `inspect` gave it, a live `KeyBuild`.
    let k = unsafe { &mut *ctx.cast::<KeyBuild>() };
    let Some(s) = CHAOS_DNS_SCR.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch entry.
    let s = unsafe { &mut *s };
    let start = u32::from(s.starts[(k.label & 0x7f) as usize]);
    let len = u32::from(s.raw[(start & 0xff) as usize]);
    let b = if k.j == 0 {
        len as u8
    } else {
        let c = s.raw[((start + k.j) & 0xff) as usize];
        if c.wrapping_sub(b'A') < 26 {
            c | 0x20
        } else {
            c
        }
    };
    s.key.data[(k.out & 0xff) as usize] = b;
    k.out += 1;
    if k.j >= len {
        if k.label == 0 {
            k.done = 1;
            return 1;
        }
        k.label -= 1;
        k.j = 0;
    } else {
        k.j += 1;
    }
    0
}

/// Copies up to `max` bytes (at least 1; `max` a power of two) from `off` into `dst`: how many,
/// or `None`. `bpf_skb_load_bytes` refuses a length the verifier cannot prove to be in
/// `[1, max]`; 6.1's verifier learns nothing from `n != 0`, so the length is computed as
/// `((n - 1) & (max - 1)) + 1`, whose range it tracks.
#[inline(always)]
fn load_upto(ctx: &TcContext, off: u32, dst: *mut u8, max: u32) -> Option<u32> {
    let len = ctx.len();
    if off >= len {
        return None;
    }
    let n = opaque((len - off).min(max));
    let n = ((n - 1) & (max - 1)) + 1;
    // SAFETY: `dst` has room for `max` bytes; the length is in [1, max].
    let r =
        unsafe { aya_ebpf::helpers::bpf_skb_load_bytes(ctx.skb.skb.cast(), off, dst.cast(), n) };
    (r == 0).then_some(n)
}

/// `x`, through memory: the compiler can no longer use what it knows of the value, so the
/// masks and checks after it stay in the program for the verifier to see.
#[inline(always)]
fn opaque(x: u32) -> u32 {
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&x) }
}

/// Folds a 32-bit one's complement sum to 16 bits.
#[inline(always)]
fn fold(mut x: u64) -> u64 {
    x = (x & 0xffff) + (x >> 16);
    x = (x & 0xffff) + (x >> 16);
    (x & 0xffff) + (x >> 16)
}

/// State of the checksum walk over the bytes a rewrite cuts.
#[repr(C)]
struct TailSum {
    /// The packet.
    skb: *mut __sk_buff,
    /// Offset of the first byte to cut.
    from: u32,
    /// Bytes to cut.
    len: u32,
    /// Bytes summed so far.
    done: u32,
    /// 1 once a read failed.
    failed: u32,
    /// The running sum (negated bytes), folded to 16 bits.
    acc: u64,
}

/// The one's complement sum, negated, of the `len` bytes at `from` (the checksum change their
/// removal makes), as a 16-bit value in the byte order of a word at an even offset from the
/// start of the L4 header. `None` if they cannot be read. A `bpf_loop` over 512-byte chunks:
/// an inline loop is checked once per iteration by the verifier.
#[inline(always)]
fn removed_sum(ctx: &TcContext, s: &Scratch, from: u32, len: u32, odd: bool) -> Option<u64> {
    if len > MAX_TAIL as u32 {
        return None;
    }
    let mut st = TailSum {
        skb: ctx.skb.skb,
        from,
        len,
        done: s.zero,
        failed: 0,
        acc: u64::from(s.zero),
    };
    // SAFETY: `tail_step` has bpf_loop's callback signature and touches only `st` (on this
    // stack, alive across the call), the packet and the scratch map.
    unsafe {
        bpf_loop(
            (MAX_TAIL / CHUNK) as u32,
            tail_step as *mut c_void,
            (&raw mut st).cast(),
            0,
        );
    }
    if st.failed != 0 || st.done < len {
        return None;
    }
    let acc = st.acc;
    // A run starting at an odd offset sums with its bytes swapped.
    Some(if odd {
        ((acc & 0xff) << 8) | (acc >> 8)
    } else {
        acc
    })
}

/// One chunk of [`removed_sum`].
#[inline(never)]
extern "C" fn tail_step(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `removed_sum` gave it, a live `TailSum`.
    let st = unsafe { &mut *ctx.cast::<TailSum>() };
    if st.done >= st.len {
        return 1;
    }
    let Some(s) = CHAOS_DNS_SCR.get_ptr_mut(0) else {
        st.failed = 1;
        return 1;
    };
    // SAFETY: this CPU's scratch entry.
    let s = unsafe { &mut *s };
    let ctx = TcContext::new(st.skb);
    let want = (st.len - st.done).min(CHUNK as u32) as usize;
    let Some(got) = load_upto(&ctx, st.from + st.done, s.tail.as_mut_ptr(), CHUNK as u32) else {
        st.failed = 1;
        return 1;
    };
    // Masked after an opaque copy: the compiler knows the bound and would drop both a check
    // and a mask, and 6.1's verifier does not follow its reasoning (a bound learnt from a
    // comparison of two registers).
    let got = opaque((got as usize).min(want) as u32) as usize & TAIL_MASK;
    if got == 0 {
        st.failed = 1;
        return 1;
    }
    // Zero padding up to a multiple of 4 (zero words add nothing).
    s.tail[got] = 0;
    s.tail[got + 1] = 0;
    s.tail[got + 2] = 0;
    let padded = ((got + 3) & !3) as u32;
    // SAFETY: `tail` holds `padded` initialised bytes (CHUNK at most); "to" is empty.
    let d = unsafe {
        bpf_csum_diff(
            s.tail.as_mut_ptr().cast(),
            padded,
            core::ptr::null_mut(),
            0,
            st.acc as u32,
        )
    };
    if d < 0 {
        st.failed = 1;
        return 1;
    }
    st.acc = fold(d as u64);
    st.done += got as u32;
    0
}

/// The 2 bytes at `off` as the checksum helpers take them (network order, unconverted).
#[inline(always)]
fn word(ctx: &TcContext, off: u32) -> Option<u64> {
    ctx.load::<[u8; 2]>(off as usize)
        .ok()
        .map(|b| u64::from(u16::from_ne_bytes(b)))
}

/// Rewrites a UDP response into a message with `rcode` and no records: `REWRITTEN`, `BROKEN`
/// or `UNCHANGED`. Not inlined, for the reason [`inspect`] is not.
#[inline(never)]
pub fn rewrite(skb: *mut __sk_buff, rcode: u32) -> i32 {
    let ctx = &TcContext::new(skb);
    match rewrite_inner(ctx, rcode) {
        Ok(()) => REWRITTEN,
        Err(true) => BROKEN,
        Err(false) => UNCHANGED,
    }
}

/// `Err(true)` if the packet was changed before a step failed, `Err(false)` if not.
#[inline(always)]
fn rewrite_inner(ctx: &TcContext, rcode: u32) -> Result<(), bool> {
    let Some(s) = CHAOS_DNS_SCR.get_ptr_mut(0) else {
        return Err(false);
    };
    // SAFETY: this CPU's scratch entry.
    let s = unsafe { &mut *s };
    let d = s.msg;
    let csum_off = d.l4 + 6;
    let ulen_off = d.l4 + 4;
    let old_ulen_be = word(ctx, ulen_off).ok_or(false)?;
    let old_ulen = u32::from(u16::from_be(old_ulen_be as u16));
    let udp_end = d.l4 + old_ulen;
    if d.qend > udp_end || old_ulen < 8 {
        return Err(false);
    }
    let new_ulen = d.qend - d.l4;
    // IPv4's UDP checksum may be 0 ("none"): then it stays 0, and nothing needs summing.
    let csum = word(ctx, csum_off).ok_or(false)?;
    let summed = d.v6 != 0 || csum != 0;
    let cut = udp_end - d.qend;
    let removed = if summed && cut > 0 {
        removed_sum(ctx, s, d.qend, cut, (d.qend - d.l4) & 1 == 1).ok_or(false)?
    } else {
        0
    };
    let old = ctx
        .load::<[u8; dns::HEADER_LEN]>(d.off as usize)
        .map_err(|_| false)?;
    let mut new = old;
    // Flags: keep QR, opcode, AA, RD, RA, AD, CD; clear TC (the message is complete); set the
    // rcode. Counts: one question, no records.
    new[2] &= !0x02;
    new[3] = (new[3] & 0xf0) | (rcode & 0x0f) as u8;
    new[6] = 0;
    new[7] = 0;
    new[8] = 0;
    new[9] = 0;
    new[10] = 0;
    new[11] = 0;
    let l4_flags = if d.v6 != 0 {
        0
    } else {
        u64::from(BPF_F_MARK_MANGLED_0)
    };
    // From here on the packet changes.
    if summed {
        // SAFETY: both buffers are 12 bytes on this stack (a multiple of 4).
        let diff = unsafe {
            bpf_csum_diff(
                old.as_ptr().cast_mut().cast(),
                dns::HEADER_LEN as u32,
                new.as_mut_ptr().cast(),
                dns::HEADER_LEN as u32,
                0,
            )
        };
        if diff < 0 {
            return Err(false);
        }
        // The header sits at an even offset of the UDP segment (8 bytes in).
        let total = fold(fold(diff as u64) + removed);
        ctx.l4_csum_replace(csum_off as usize, 0, total, l4_flags)
            .map_err(|_| true)?;
    }
    ctx.store(d.off as usize, &new, 0).map_err(|_| true)?;
    // The UDP length: in the header (covered by the checksum as data) and in the pseudo
    // header (only the latter is in a CHECKSUM_PARTIAL skb's seed).
    let new_ulen_be = u64::from(u16::to_be(new_ulen as u16));
    if summed {
        ctx.l4_csum_replace(csum_off as usize, old_ulen_be, new_ulen_be, l4_flags | 2)
            .map_err(|_| true)?;
        ctx.l4_csum_replace(
            csum_off as usize,
            old_ulen_be,
            new_ulen_be,
            l4_flags | 2 | u64::from(BPF_F_PSEUDO_HDR),
        )
        .map_err(|_| true)?;
    }
    ctx.store(ulen_off as usize, &(new_ulen as u16).to_be(), 0)
        .map_err(|_| true)?;
    if d.v6 != 0 {
        // Payload length: everything after the fixed header, extension headers included.
        let plen = d.qend - d.l3 - 40;
        ctx.store(d.l3 as usize + 4, &(plen as u16).to_be(), 0)
            .map_err(|_| true)?;
    } else {
        let old_tot = word(ctx, d.l3 + 2).ok_or(true)?;
        let new_tot = u64::from(((d.qend - d.l3) as u16).to_be());
        ctx.l3_csum_replace(d.l3 as usize + 10, old_tot, new_tot, 2)
            .map_err(|_| true)?;
        ctx.store(d.l3 as usize + 2, &((d.qend - d.l3) as u16).to_be(), 0)
            .map_err(|_| true)?;
    }
    // SAFETY: tc programs may resize the packet (since 4.9); offsets above stay valid.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, d.qend, 0) } != 0 {
        return Err(true);
    }
    Ok(())
}
