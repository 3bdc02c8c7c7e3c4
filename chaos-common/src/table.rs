//! The fault table: every packet fault of one agent lives in one set of maps, read by one pair of
//! programs that is loaded and verified once per agent.
//!
//! A packet is classified with a fixed number of lookups, whatever the number of faults and
//! rules (the bit-vector scheme of Lakshman and Stiliadis, SIGCOMM 1998): each dimension
//! (hook, protocol, ports, source and destination prefix) answers with a [`Bitmap`] of the fault
//! slots that match the packet on that dimension, and the AND of those bitmaps is the set of
//! faults whose filters all match. Only then does the program look at the faults themselves
//! ([`FaultSlot`]: deadline, probability, steering), one slot per set bit. A packet that no fault
//! can match leaves at the first empty AND.
//!
//! The agent writes a fault's bits into every dimension first and arms its slot last, and
//! disarms it before clearing its bits: a reader that sees a half-written table can only miss a
//! fault, never apply one to traffic it does not target.
//!
//! Probabilities are `u32` thresholds: `p` becomes `round(p * u32::MAX)` and a packet is hit
//! when a uniform `u32` draw is below it (`u32::MAX` means always).

/// Number of fault slots, and bits in a [`Bitmap`]. The agent's configured maximum of
/// concurrent faults cannot exceed it.
pub const MAX_FAULTS: u32 = 256;
/// `u64` words in a [`Bitmap`].
pub const BITMAP_WORDS: usize = (MAX_FAULTS / 64) as usize;
/// Number of attachment points (interface x direction) one agent can serve at once.
pub const MAX_HOOKS: u32 = 1024;
/// Capacity of each prefix trie (shared by all faults; allocated on use, not up front).
pub const MAX_TRIE_ENTRIES: u32 = 1 << 18;
/// Ports per block of the coarse port table: a range covering a whole block costs one entry.
pub const PORT_BLOCK_SIZE: u32 = 256;
/// Entries of the coarse port table.
pub const PORT_BLOCKS: u32 = 65536 / PORT_BLOCK_SIZE;
/// cgroups that faults can be scoped to at once (map `CHAOS_CGROUPS`).
pub const MAX_CGROUPS: u32 = 1024;
/// cgroup levels the programs look at, from the root (level 0) down: a fault scoped to a
/// cgroup deeper than this cannot match and is refused.
pub const MAX_CGROUP_LEVEL: u32 = 16;

/// A set of fault slots (bit `i` = slot `i`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Bitmap {
    /// Slot `i` is bit `i % 64` of word `i / 64`.
    pub w: [u64; BITMAP_WORDS],
}
const _: () = assert!(core::mem::size_of::<Bitmap>() == 32);

impl Bitmap {
    /// The empty set.
    pub const EMPTY: Self = Self {
        w: [0; BITMAP_WORDS],
    };

    /// Whether no slot is set.
    #[expect(clippy::inline_always, reason = "BPF hot path: no calls")]
    #[inline(always)]
    #[must_use]
    pub fn is_empty(&self) -> bool {
        (self.w[0] | self.w[1] | self.w[2] | self.w[3]) == 0
    }

    /// Intersection.
    #[expect(clippy::inline_always, reason = "BPF hot path: no calls")]
    #[inline(always)]
    #[must_use]
    pub fn and(&self, o: &Self) -> Self {
        Self {
            w: [
                self.w[0] & o.w[0],
                self.w[1] & o.w[1],
                self.w[2] & o.w[2],
                self.w[3] & o.w[3],
            ],
        }
    }

    /// Union.
    #[expect(clippy::inline_always, reason = "BPF hot path: no calls")]
    #[inline(always)]
    #[must_use]
    pub fn or(&self, o: &Self) -> Self {
        Self {
            w: [
                self.w[0] | o.w[0],
                self.w[1] | o.w[1],
                self.w[2] | o.w[2],
                self.w[3] | o.w[3],
            ],
        }
    }

    /// `self` without the slots of `o`.
    #[expect(clippy::inline_always, reason = "BPF hot path: no calls")]
    #[inline(always)]
    #[must_use]
    pub fn and_not(&self, o: &Self) -> Self {
        Self {
            w: [
                self.w[0] & !o.w[0],
                self.w[1] & !o.w[1],
                self.w[2] & !o.w[2],
                self.w[3] & !o.w[3],
            ],
        }
    }

    /// Whether slot `i` is set (`i < MAX_FAULTS`).
    #[must_use]
    pub fn contains(&self, i: u32) -> bool {
        let i = i % MAX_FAULTS;
        self.w[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Sets slot `i`.
    pub fn insert(&mut self, i: u32) {
        let i = i % MAX_FAULTS;
        self.w[(i / 64) as usize] |= 1 << (i % 64);
    }

    /// Clears slot `i`.
    pub fn remove(&mut self, i: u32) {
        let i = i % MAX_FAULTS;
        self.w[(i / 64) as usize] &= !(1 << (i % 64));
    }

    /// A set with the one slot `i`.
    #[must_use]
    pub fn single(i: u32) -> Self {
        let mut b = Self::EMPTY;
        b.insert(i);
        b
    }
}

/// `HookEntry::flags`: the interface has no link-layer header (wireguard, tun, ipip, ...:
/// `ARPHRD_NONE` and other non-Ethernet types): tc sees packets starting at the IP header, so the
/// programs take the IP version from the first nibble instead of parsing an Ethernet header.
pub const HOOK_L3_DEVICE: u32 = 1 << 0;

/// One attachment point (map `CHAOS_HOOKS`, key [`hook_key`]): which faults act there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookEntry {
    /// Slots of the faults on this interface and direction.
    pub faults: Bitmap,
    /// `HOOK_*` bits.
    pub flags: u32,
    /// Index into `CHAOS_HOOK_STATS` (per-CPU count of packets this hook's program saw).
    pub stats: u32,
}
const _: () = assert!(core::mem::size_of::<HookEntry>() == 40);

/// The key of an attachment point in `CHAOS_HOOKS`: the interface index and the direction.
#[must_use]
pub const fn hook_key(ifindex: u32, dir: crate::Dir) -> u64 {
    ((ifindex as u64) << 1) | dir as u64
}

/// Index of the protocol classes in [`Globals::proto`].
pub const PROTO_CLASS_TCP: usize = 0;
/// UDP.
pub const PROTO_CLASS_UDP: usize = 1;
/// ICMP and `ICMPv6`.
pub const PROTO_CLASS_ICMP: usize = 2;
/// Every other IP protocol.
pub const PROTO_CLASS_OTHER: usize = 3;
/// Number of protocol classes.
pub const PROTO_CLASSES: usize = 4;

/// The dimensions that are not keyed by a packet field (map `CHAOS_GLOBALS`, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Globals {
    /// Faults that match each protocol class (a fault without a protocol filter is in all).
    pub proto: [Bitmap; PROTO_CLASSES],
    /// Faults without a source prefix filter.
    pub src_any: Bitmap,
    /// Faults without a destination prefix filter.
    pub dst_any: Bitmap,
    /// Faults without a source port filter (they also match packets without ports).
    pub sport_any: Bitmap,
    /// Faults without a destination port filter.
    pub dport_any: Bitmap,
    /// DNS answer faults (`F_DNS`): they match only DNS responses, and only after the program
    /// parsed the question and checked the two dimensions below.
    pub dns: Bitmap,
    /// DNS faults without a name filter.
    pub dns_name_any: Bitmap,
    /// DNS faults without a query type filter.
    pub dns_type_any: Bitmap,
    /// Faults not scoped to a cgroup. The others match only packets whose socket (and
    /// connects whose process) is in their cgroup or below it (`CHAOS_CGROUPS`).
    pub cgroup_any: Bitmap,
}
const _: () = assert!(core::mem::size_of::<Globals>() == 12 * 32);

/// What one port (map `CHAOS_PORTS`, 65536 entries) or one block of [`PORT_BLOCK_SIZE`] ports
/// (map `CHAOS_PORT_BLOCKS`) means to each fault.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortEntry {
    /// Faults whose source port ranges contain the port.
    pub src: Bitmap,
    /// Faults whose destination port ranges contain the port.
    pub dst: Bitmap,
    /// Faults for which the port is protected: a packet with this source or destination port is
    /// never faulted by them (SSH, the agent's own API...).
    pub protect: Bitmap,
}
const _: () = assert!(core::mem::size_of::<PortEntry>() == 96);

/// `FaultSlot::flags`: the slot is armed (0 means the fault does nothing).
pub const F_ARMED: u32 = 1 << 0;
/// Draw randomness from the slot's per-CPU seeded PRNG instead of `bpf_get_prandom_u32`.
pub const F_SEEDED: u32 = 1 << 5;
/// Use the Gilbert-Elliott burst-loss model (`ge_*` fields).
pub const F_LOSS_GE: u32 = 1 << 6;
/// Steer matched packets to a shaping class by setting `skb->priority` to `steer_priority`.
pub const F_STEER: u32 = 1 << 7;
/// Egress drops go through `bpf_redirect` to ifindex 0 (the stack sees the packet as sent and
/// loses it "on the wire", so TCP retransmits) instead of `TC_ACT_SHOT` (local congestion).
pub const F_EGRESS_WIRE_DROP: u32 = 1 << 8;
/// Delay matched egress packets by giving them an Earliest Departure Time: the egress program
/// writes `skb->tstamp = max(skb->tstamp, now) + edt_delay_us +/- edt_jitter_us` and the
/// device's root `fq` qdisc holds each packet until then. This is the delay backend for kernels
/// without `sch_netem`; `F_STEER` stays off (fq does not classify by `skb->priority`).
pub const F_EDT: u32 = 1 << 10;
/// A DNS answer fault: the slot acts only on DNS responses whose question matched its name and
/// type filters (`CHAOS_DNS_NAMES`, `CHAOS_DNS_TYPES`), and `FaultSlot::dns` says what it does
/// to them (`DNS_ACT_*`, with `loss_threshold` as the fraction of matching answers hit).
pub const F_DNS: u32 = 1 << 11;
/// The fault acts on a duty cycle: only while `(now - start_ns) % flap_period_ns <
/// flap_on_ns`. Computed per packet from the clock, so the schedule needs no wake-ups and holds
/// while the agent is dead.
pub const F_FLAP: u32 = 1 << 12;
/// A connect refusal (`chaos_conn4` / `chaos_conn6`, cgroup `connect` hooks): a matching
/// `connect()` fails with `FaultSlot::errno`, for the fraction `loss_threshold` of them.
pub const F_REFUSE: u32 = 1 << 13;

/// The `CHAOS_HOOKS` key of the connect hook of the network namespace with this cookie
/// (`SO_NETNS_COOKIE`, `bpf_get_netns_cookie`): the connect programs are attached once, to the
/// root of the cgroup v2 hierarchy, and act only on connects in the namespaces of their faults.
/// The high bit keeps these keys apart from the interface keys of [`hook_key`].
#[must_use]
pub const fn connect_hook_key(netns_cookie: u64) -> u64 {
    (1 << 63) | netns_cookie
}

/// The `CHAOS_HOOKS` key of the socket-ingress hook of interface `ifindex`: the faults scoped
/// to processes that act on what their sockets receive through that interface. The cgroup
/// ingress program is attached once, to the root of the cgroup v2 hierarchy, where it runs
/// after the socket lookup, so it sees the receiving socket's cgroup (tc ingress runs before
/// it). Bit 62 keeps these keys apart from [`hook_key`]'s and [`connect_hook_key`]'s.
#[must_use]
pub const fn socket_ingress_hook_key(ifindex: u32) -> u64 {
    (1 << 62) | ifindex as u64
}

/// One fault as the programs see it once its filters matched (map `CHAOS_SLOTS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultSlot {
    /// `F_*` bits.
    pub flags: u32,
    /// Bernoulli loss threshold (`p * u32::MAX`); in the GE model, the loss in the good state.
    pub loss_threshold: u32,
    /// `CLOCK_MONOTONIC` time (as `bpf_ktime_get_ns`) after which the fault does nothing,
    /// whether or not the agent is still alive to remove it.
    pub expires_at_ns: u64,
    /// Gilbert-Elliott: probability of moving good -> bad.
    pub ge_p: u32,
    /// Gilbert-Elliott: probability of moving bad -> good.
    pub ge_r: u32,
    /// Gilbert-Elliott: loss probability in the bad state (`1 - h`).
    pub ge_loss_bad: u32,
    /// `skb->priority` given to matched packets when `F_STEER` is set (a tc classid).
    pub steer_priority: u32,
    /// `F_EDT`: the added delay in microseconds (validation caps a delay at 60 s).
    pub edt_delay_us: u32,
    /// `F_EDT`: uniform jitter half-width in microseconds (`delay + U[-jitter, +jitter]`, never
    /// departing before "now").
    pub edt_jitter_us: u32,
    /// The slot's own index, written by the agent. The walk remembers which slot steered a
    /// packet by this value: one read from the map carries no range the verifier would track
    /// across the walk's calls (a computed slot number does, and the callback's states would
    /// never converge).
    pub index: u32,
    /// `F_DNS`: `crate::dns::DNS_ACT_*` (the rcode to answer with, or drop).
    pub dns: u32,
    /// `CLOCK_MONOTONIC` time the fault started: the origin of the `F_FLAP` duty cycle.
    pub start_ns: u64,
    /// `F_FLAP`: how long each active phase lasts (ns); `0 < flap_on_ns < flap_period_ns`.
    pub flap_on_ns: u64,
    /// `F_FLAP`: one active plus one resting phase (ns).
    pub flap_period_ns: u64,
    /// `F_REFUSE`: the errno a refused `connect()` fails with (positive, e.g. 111).
    pub errno: u32,
    /// Explicit padding; zero.
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<FaultSlot>() == 80);
const _: () = assert!(core::mem::offset_of!(FaultSlot, expires_at_ns) == 8);
const _: () = assert!(core::mem::offset_of!(FaultSlot, start_ns) == 48);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers without padding; any bit pattern is valid.
    unsafe impl aya::Pod for super::Bitmap {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HookEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Globals {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FaultSlot {}
}

/// Converts a probability in `[0, 1]` to a `u32` threshold (`1.0` maps to `u32::MAX`).
///
/// Userspace only: the BPF target has no floating point.
#[cfg(feature = "user")]
#[must_use]
pub fn probability_to_threshold(p: f64) -> u32 {
    if p <= 0.0 {
        0
    } else if p >= 1.0 {
        u32::MAX
    } else {
        // Rounds to nearest; the cast saturates.
        (p * f64::from(u32::MAX) + 0.5) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "user")]
    #[test]
    fn thresholds() {
        assert_eq!(probability_to_threshold(0.0), 0);
        assert_eq!(probability_to_threshold(1.0), u32::MAX);
        assert_eq!(probability_to_threshold(0.5), 2_147_483_648);
    }

    #[test]
    fn bitmaps() {
        let mut a = Bitmap::EMPTY;
        assert!(a.is_empty());
        a.insert(0);
        a.insert(63);
        a.insert(64);
        a.insert(255);
        assert!(a.contains(0) && a.contains(63) && a.contains(64) && a.contains(255));
        assert!(!a.contains(1) && !a.contains(128));
        let b = Bitmap::single(64);
        assert_eq!(a.and(&b), b);
        assert!(!a.and_not(&b).contains(64));
        assert_eq!(Bitmap::EMPTY.or(&b), b);
        a.remove(255);
        assert!(!a.contains(255));
    }

    #[test]
    fn hook_key_spaces_do_not_overlap() {
        let tc = hook_key(u32::MAX, crate::Dir::Egress);
        let sock = socket_ingress_hook_key(u32::MAX);
        let conn = connect_hook_key(u64::from(u32::MAX));
        assert!(tc < 1 << 62 && sock & (1 << 62) != 0 && sock & (1 << 63) == 0);
        assert!(
            conn & (1 << 63) != 0 && socket_ingress_hook_key(1) != hook_key(1, crate::Dir::Ingress)
        );
    }

    #[test]
    fn hook_keys_differ_by_direction() {
        assert_ne!(
            hook_key(7, crate::Dir::Ingress),
            hook_key(7, crate::Dir::Egress)
        );
        assert_eq!(hook_key(7, crate::Dir::Egress), 15);
    }
}
