//! Header parsing: Ethernet (+ one VLAN tag) -> IPv4 / IPv6 (+ extension headers) -> TCP/UDP ports.
//!
//! Every read goes through `bpf_skb_load_bytes` (`TcContext::load`) rather than direct packet
//! access: the helper copes with non-linear skbs (GSO/GRO super-packets whose headers are not all
//! in the linear area) and takes a variable offset without the bounds proofs the verifier demands
//! for direct access, which keeps the IPv6 extension-header walk simple and verifiable on 6.1.

use aya_ebpf::{bindings::__sk_buff, programs::TcContext};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

/// IP protocol numbers we look at.
pub const IPPROTO_ICMP: u8 = 1;
/// TCP.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// How many IPv6 extension headers we walk before giving up on finding the L4 header. A fixed
/// bound keeps the loop verifiable (bounded loops need >= 5.3; 6 iterations are also cheap to
/// unroll). Real traffic rarely carries more than two.
const MAX_V6_EXT: usize = 6;

/// What the filters need to know about a packet.
#[repr(C)]
pub struct Packet {
    /// `true` for IPv6.
    pub v6: bool,
    /// The L4 protocol (for IPv6: the first header after the extension headers; if the walk gave
    /// up, the last extension header seen, which matches no `PROTO_*` bit).
    pub proto: u8,
    /// Whether `sport`/`dport` were read from a TCP/UDP header. `false` for non-first fragments
    /// (they carry no L4 header: their first bytes are payload), ICMP, truncated packets, ...
    pub has_ports: bool,
    /// Source port (host byte order), valid if `has_ports`.
    pub sport: u16,
    /// Destination port (host byte order), valid if `has_ports`.
    pub dport: u16,
    /// Source address in network byte order (IPv4 uses the first 4 bytes).
    pub src: [u8; 16],
    /// Destination address in network byte order (IPv4 uses the first 4 bytes).
    pub dst: [u8; 16],
    /// Offset of the IP header.
    pub l3: u16,
    /// Offset of the TCP/UDP header, valid if `has_ports`.
    pub l4: u16,
}

impl Packet {
    /// Before parsing.
    pub const EMPTY: Self = Self {
        v6: false,
        proto: 0,
        has_ports: false,
        sport: 0,
        dport: 0,
        src: [0; 16],
        dst: [0; 16],
        l3: 0,
        l4: 0,
    };
}

/// Parses the headers of the packet, starting at the Ethernet header, or at the IP header if
/// `l3_device` (no link-layer header). `None` for anything that is not IPv4/IPv6 (ARP, LLDP, ...)
/// or is too short to hold the IP header: such packets are never faulted.
///
/// Not inlined: the header copies live in this function's frame, not in the classifier's (the
/// walk and the DNS rewrite share what the classifier leaves of the 512-byte stack). Returns
/// false where the packet is not parsed; `out` is then unspecified.
#[inline(never)]
pub fn parse_into(skb: *mut __sk_buff, l3_device: u32, out: &mut Packet) -> bool {
    let ctx = &TcContext::new(skb);
    match parse(ctx, l3_device != 0) {
        Some(p) => {
            *out = p;
            true
        }
        None => false,
    }
}

#[inline(always)]
fn parse(ctx: &TcContext, l3_device: bool) -> Option<Packet> {
    // Decide (family, offset of the IP header) first and parse each family once: inlining the
    // IP parsers per link type would double the program.
    let (version, l3) = if l3_device {
        // What tun and the IP stack themselves use to tell the family of a headerless packet.
        (ctx.load::<u8>(0).ok()? >> 4, 0)
    } else {
        let mut l3 = ETH_HLEN;
        let mut ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
        // With hardware VLAN offload the tag lives in skb->vlan_tci and the frame shows the
        // inner ethertype; without it (or for the packets BPF_PROG_TEST_RUN builds) the tag is
        // in the data.
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = u16::from_be(ctx.load::<u16>(ETH_HLEN + 2).ok()?);
            l3 = ETH_HLEN + 4;
        }
        match ethertype {
            ETH_P_IP => (4, l3),
            ETH_P_IPV6 => (6, l3),
            _ => return None,
        }
    };
    match version {
        4 => parse_v4(ctx, l3),
        6 => parse_v6(ctx, l3),
        _ => None,
    }
}

#[inline(always)]
fn parse_v4(ctx: &TcContext, l3: usize) -> Option<Packet> {
    let h = ctx.load::<[u8; 20]>(l3).ok()?;
    if h[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let mut p = Packet {
        v6: false,
        proto: h[9],
        has_ports: false,
        sport: 0,
        dport: 0,
        src: [0; 16],
        dst: [0; 16],
        l3: l3 as u16,
        l4: 0,
    };
    p.src[..4].copy_from_slice(&h[12..16]);
    p.dst[..4].copy_from_slice(&h[16..20]);
    // Fragment offset (low 13 bits of frag_off) != 0: a non-first fragment, whose data starts
    // in the middle of the L4 payload. Reading "ports" there would match on payload bytes.
    let frag_off = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    if frag_off == 0 {
        read_ports(ctx, l3 + ihl, &mut p);
    }
    Some(p)
}

#[inline(always)]
fn parse_v6(ctx: &TcContext, l3: usize) -> Option<Packet> {
    let h = ctx.load::<[u8; 40]>(l3).ok()?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let mut p = Packet {
        v6: true,
        proto: h[6],
        has_ports: false,
        sport: 0,
        dport: 0,
        src: [0; 16],
        dst: [0; 16],
        l3: l3 as u16,
        l4: 0,
    };
    p.src.copy_from_slice(&h[8..24]);
    p.dst.copy_from_slice(&h[24..40]);

    let mut off = l3 + 40;
    let mut nh = h[6];
    let mut i = 0;
    while i < MAX_V6_EXT {
        match nh {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                // Generic extension header: next header, length in 8-byte units excluding the
                // first 8 bytes.
                let e = ctx.load::<[u8; 2]>(off).ok()?;
                nh = e[0];
                off += (usize::from(e[1]) + 1) * 8;
            }
            IPPROTO_AH => {
                // RFC 4302: AH's length is in 4-byte units, minus 2.
                let e = ctx.load::<[u8; 2]>(off).ok()?;
                nh = e[0];
                off += (usize::from(e[1]) + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                // Fixed 8 bytes: next header, reserved, offset(13 bits) | res(2) | M(1), id.
                let e = ctx.load::<[u8; 4]>(off).ok()?;
                nh = e[0];
                off += 8;
                if u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0 {
                    // Non-first fragment: the protocol is known, the ports are not.
                    p.proto = nh;
                    return Some(p);
                }
            }
            _ => break,
        }
        i += 1;
    }
    p.proto = nh;
    read_ports(ctx, off, &mut p);
    Some(p)
}

/// Reads the TCP/UDP ports at `l4` (both start with sport, dport); leaves `has_ports` false for
/// other protocols or if the packet is truncated.
#[inline(always)]
fn read_ports(ctx: &TcContext, l4: usize, p: &mut Packet) {
    if p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP {
        return;
    }
    if let Ok(b) = ctx.load::<[u8; 4]>(l4) {
        p.sport = u16::from_be_bytes([b[0], b[1]]);
        p.dport = u16::from_be_bytes([b[2], b[3]]);
        p.has_ports = true;
        p.l4 = l4 as u16;
    }
}
