//! Header parsing: Ethernet (+ one VLAN tag) -> IPv4 / IPv6 (+ extension headers) -> TCP/UDP ports.
//!
//! Reads go straight to the packet (direct packet access, bounds checked against `data_end`)
//! while the headers are in the skb's linear area, as they are for nearly every packet: a
//! helper call costs more than the rest of the parse on a host whose mitigations make every
//! call and return dear (parsing through `bpf_skb_load_bytes` alone took ~130 ns of a
//! non-matching packet's ~240 under `BPF_PROG_TEST_RUN`). A packet whose headers reach past the
//! linear area (a GSO/GRO super-packet built from page fragments) is parsed again through
//! `bpf_skb_load_bytes` (`TcContext::load`), which copes with non-linear skbs. The same parser
//! serves both, generic over its [`Reader`].

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

/// A header read that did not fit: past the linear area ([`Direct`]) or past the packet
/// ([`Helper`]).
pub struct Short;

/// How the parser reads the packet.
trait Reader {
    /// Whether a short read means "try the other reader" (true) or "the packet is truncated".
    const LINEAR: bool;
    fn read<T: Copy>(&self, off: usize) -> Result<T, Short>;
}

/// Direct packet access over `[data, data_end)`.
struct Direct {
    data: usize,
    end: usize,
}

impl Reader for Direct {
    const LINEAR: bool = true;

    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Result<T, Short> {
        let at = self.data + off;
        if at + core::mem::size_of::<T>() > self.end {
            return Err(Short);
        }
        // SAFETY: `[at, at + size_of::<T>())` lies within the packet's linear data (checked
        // against `data_end` above, which is also what the verifier requires). Unaligned: IP
        // headers sit at offset 14.
        Ok(unsafe { core::ptr::read_unaligned(at as *const T) })
    }
}

/// `bpf_skb_load_bytes`, which reads non-linear data too.
struct Helper<'a>(&'a TcContext);

impl Reader for Helper<'_> {
    const LINEAR: bool = false;

    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Result<T, Short> {
        self.0.load::<T>(off).map_err(|_| Short)
    }
}

/// Parses the headers of the packet, starting at the Ethernet header, or at the IP header if
/// `l3_device` (no link-layer header), into `out`. False for anything that is not IPv4/IPv6
/// (ARP, LLDP, ...) or is too short to hold the IP header: such packets are never faulted;
/// `out` is then unspecified.
///
/// Inlined, for the common case of headers in the linear area; the rare packet that needs the
/// helper goes through [`parse_slow`], a call of its own whose frame the classifier's stack does
/// not carry.
#[inline(always)]
pub fn parse_into(skb: *mut __sk_buff, l3_device: u32, out: &mut Packet) -> bool {
    let ctx = TcContext::new(skb);
    let direct = Direct {
        data: ctx.data(),
        end: ctx.data_end(),
    };
    match parse(&direct, l3_device != 0, out) {
        Ok(parsed) => parsed,
        Err(Short) => parse_slow(skb, l3_device, out),
    }
}

/// [`parse_into`] through `bpf_skb_load_bytes`.
#[inline(never)]
fn parse_slow(skb: *mut __sk_buff, l3_device: u32, out: &mut Packet) -> bool {
    let ctx = TcContext::new(skb);
    parse(&Helper(&ctx), l3_device != 0, out).unwrap_or(false)
}

/// `Ok(false)`: not IPv4 or IPv6; `Err(Short)`: a header does not fit what `r` can read.
#[inline(always)]
fn parse<R: Reader>(r: &R, l3_device: bool, p: &mut Packet) -> Result<bool, Short> {
    // Decide (family, offset of the IP header) first and parse each family once: inlining the
    // IP parsers per link type would double the program.
    let (version, l3) = if l3_device {
        // What tun and the IP stack themselves use to tell the family of a headerless packet.
        // Two bytes, not one: LLVM folds the bounds check of a 1-byte read at offset 0 into
        // `data < data_end`, which the verifier does not take as proof of a readable byte.
        (r.read::<[u8; 2]>(0)?[0] >> 4, 0)
    } else {
        let mut l3 = ETH_HLEN;
        let mut ethertype = u16::from_be(r.read::<u16>(12)?);
        // With hardware VLAN offload the tag lives in skb->vlan_tci and the frame shows the
        // inner ethertype; without it (or for the packets BPF_PROG_TEST_RUN builds) the tag is
        // in the data.
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = u16::from_be(r.read::<u16>(ETH_HLEN + 2)?);
            l3 = ETH_HLEN + 4;
        }
        match ethertype {
            ETH_P_IP => (4, l3),
            ETH_P_IPV6 => (6, l3),
            _ => return Ok(false),
        }
    };
    *p = Packet::EMPTY;
    p.l3 = l3 as u16;
    match version {
        4 => parse_v4(r, l3, p),
        6 => parse_v6(r, l3, p),
        _ => Ok(false),
    }
}

#[inline(always)]
fn parse_v4<R: Reader>(r: &R, l3: usize, p: &mut Packet) -> Result<bool, Short> {
    let vihl = r.read::<u8>(l3)?;
    if vihl >> 4 != 4 {
        return Ok(false);
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < 20 {
        return Ok(false);
    }
    let frag = r.read::<[u8; 2]>(l3 + 6)?;
    p.proto = r.read::<u8>(l3 + 9)?;
    let src = r.read::<[u8; 4]>(l3 + 12)?;
    let dst = r.read::<[u8; 4]>(l3 + 16)?;
    p.src[..4].copy_from_slice(&src);
    p.dst[..4].copy_from_slice(&dst);
    // Fragment offset (low 13 bits of frag_off) != 0: a non-first fragment, whose data starts
    // in the middle of the L4 payload. Reading "ports" there would match on payload bytes.
    if u16::from_be_bytes(frag) & 0x1fff == 0 {
        read_ports(r, l3 + ihl, p)?;
    }
    Ok(true)
}

#[inline(always)]
fn parse_v6<R: Reader>(r: &R, l3: usize, p: &mut Packet) -> Result<bool, Short> {
    if r.read::<u8>(l3)? >> 4 != 6 {
        return Ok(false);
    }
    p.v6 = true;
    p.src = r.read::<[u8; 16]>(l3 + 8)?;
    p.dst = r.read::<[u8; 16]>(l3 + 24)?;

    let mut off = l3 + 40;
    let mut nh = r.read::<u8>(l3 + 6)?;
    let mut i = 0;
    while i < MAX_V6_EXT {
        match nh {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                // Generic extension header: next header, length in 8-byte units excluding the
                // first 8 bytes.
                let e = r.read::<[u8; 2]>(off)?;
                nh = e[0];
                off += (usize::from(e[1]) + 1) * 8;
            }
            IPPROTO_AH => {
                // RFC 4302: AH's length is in 4-byte units, minus 2.
                let e = r.read::<[u8; 2]>(off)?;
                nh = e[0];
                off += (usize::from(e[1]) + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                // Fixed 8 bytes: next header, reserved, offset(13 bits) | res(2) | M(1), id.
                let e = r.read::<[u8; 4]>(off)?;
                nh = e[0];
                off += 8;
                if u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0 {
                    // Non-first fragment: the protocol is known, the ports are not.
                    p.proto = nh;
                    return Ok(true);
                }
            }
            _ => break,
        }
        i += 1;
    }
    p.proto = nh;
    read_ports(r, off, p)?;
    Ok(true)
}

/// Reads the TCP/UDP ports at `l4` (both start with sport, dport); leaves `has_ports` false for
/// other protocols or if the packet is truncated. A read past the linear area is `Short`, so
/// that the packet is parsed again through the helper rather than taken as truncated.
#[inline(always)]
fn read_ports<R: Reader>(r: &R, l4: usize, p: &mut Packet) -> Result<(), Short> {
    if p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP {
        return Ok(());
    }
    match r.read::<[u8; 4]>(l4) {
        Ok(b) => {
            p.sport = u16::from_be_bytes([b[0], b[1]]);
            p.dport = u16::from_be_bytes([b[2], b[3]]);
            p.has_ports = true;
            p.l4 = l4 as u16;
            Ok(())
        }
        Err(e) if R::LINEAR => Err(e),
        Err(_) => Ok(()),
    }
}
