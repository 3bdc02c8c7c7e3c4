//! The configuration of one fault as the kernel programs see it (map `CHAOS_CONFIG`, index 0).
//!
//! Userspace validates a fault once (`chaos-agent`'s `spec` module) and converts it into this
//! value; the programs only compare integers. Probabilities are `u32` thresholds:
//! `p` becomes `round(p * u32::MAX)` and a packet is hit when a uniform `u32` draw is below it
//! (`u32::MAX` means always).

/// Maximum number of port ranges per side (source / destination / protected).
pub const MAX_PORT_RANGES: usize = 8;

/// `FaultConfig::flags`: the program is armed (0 means pass everything).
pub const F_ARMED: u32 = 1 << 0;
/// Apply the fault on ingress.
pub const F_INGRESS: u32 = 1 << 1;
/// Apply the fault on egress.
pub const F_EGRESS: u32 = 1 << 2;
/// Match only if the source address is in `CHAOS_SRC4`/`CHAOS_SRC6`.
pub const F_SRC_FILTER: u32 = 1 << 3;
/// Match only if the destination address is in `CHAOS_DST4`/`CHAOS_DST6`.
pub const F_DST_FILTER: u32 = 1 << 4;
/// Draw randomness from the per-CPU seeded PRNG (`CHAOS_RNG`) instead of `bpf_get_prandom_u32`.
pub const F_SEEDED: u32 = 1 << 5;
/// Use the Gilbert-Elliott burst-loss model (`ge_*` fields).
pub const F_LOSS_GE: u32 = 1 << 6;
/// Steer matched packets to a shaping class by setting `skb->priority` to `steer_priority`.
pub const F_STEER: u32 = 1 << 7;
/// Egress drops go through `bpf_redirect` to ifindex 0 (the stack sees the packet as sent and
/// loses it "on the wire", so TCP retransmits) instead of `TC_ACT_SHOT` (local congestion).
pub const F_EGRESS_WIRE_DROP: u32 = 1 << 8;
/// The interface has no link-layer header (wireguard, tun, ipip, ...: `ARPHRD_NONE` and other
/// non-Ethernet types): tc sees packets starting at the IP header, so the programs take the IP
/// version from the first nibble instead of parsing an Ethernet header. Without it, bytes 12-13
/// of the IP header (part of the source address) would be read as an ethertype.
pub const F_L3_DEVICE: u32 = 1 << 9;
/// Delay matched egress packets by giving them an Earliest Departure Time: the egress program
/// writes `skb->tstamp = max(skb->tstamp, now) + edt_delay_us +/- edt_jitter_us` and the
/// device's root `fq` qdisc holds each packet until then. This is the delay backend for kernels
/// without `sch_netem`; `F_STEER` stays off (fq does not classify by `skb->priority`).
pub const F_EDT: u32 = 1 << 10;

/// `FaultConfig::protos` bits: which L4 protocols match. 0 means every protocol.
pub const PROTO_TCP: u32 = 1 << 0;
/// UDP.
pub const PROTO_UDP: u32 = 1 << 1;
/// ICMP and `ICMPv6`.
pub const PROTO_ICMP: u32 = 1 << 2;

/// An inclusive port range; `lo == 0 && hi == 0` marks an unused slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRange {
    /// First port (host byte order).
    pub lo: u16,
    /// Last port, inclusive (host byte order).
    pub hi: u16,
}
const _: () = assert!(core::mem::size_of::<PortRange>() == 4);

/// A set of up to [`MAX_PORT_RANGES`] port ranges; `len == 0` matches every port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSet {
    /// Number of used slots in `ranges`.
    pub len: u32,
    /// The ranges; only the first `len` are used.
    pub ranges: [PortRange; MAX_PORT_RANGES],
}
const _: () = assert!(core::mem::size_of::<PortSet>() == 36);

impl PortSet {
    /// Whether `port` falls in one of the ranges (an empty set contains every port).
    #[expect(
        clippy::inline_always,
        reason = "BPF: keep the loop inside the program so the verifier sees its bound"
    )]
    #[inline(always)]
    #[must_use]
    pub fn contains(&self, port: u16) -> bool {
        if self.len == 0 {
            return true;
        }
        self.contains_strict(port)
    }

    /// Whether `port` falls in one of the ranges (an empty set contains nothing).
    #[expect(
        clippy::inline_always,
        reason = "BPF: keep the loop inside the program so the verifier sees its bound"
    )]
    #[inline(always)]
    #[must_use]
    pub fn contains_strict(&self, port: u16) -> bool {
        let mut i = 0;
        // A fixed bound the verifier can unroll; `len` only narrows it.
        while i < MAX_PORT_RANGES {
            if (i as u32) < self.len {
                let r = self.ranges[i];
                if port >= r.lo && port <= r.hi {
                    return true;
                }
            }
            i += 1;
        }
        false
    }
}

/// The fault as the tc programs see it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultConfig {
    /// `F_*` bits.
    pub flags: u32,
    /// `PROTO_*` bits; 0 = every protocol.
    pub protos: u32,
    /// `CLOCK_MONOTONIC` time (as `bpf_ktime_get_ns`) after which the program passes everything,
    /// whether or not the agent is still alive to remove it.
    pub expires_at_ns: u64,
    /// Bernoulli loss threshold (`p * u32::MAX`); in the GE model, the loss in the good state.
    pub loss_threshold: u32,
    /// Gilbert-Elliott: probability of moving good -> bad.
    pub ge_p: u32,
    /// Gilbert-Elliott: probability of moving bad -> good.
    pub ge_r: u32,
    /// Gilbert-Elliott: loss probability in the bad state (`1 - h`).
    pub ge_loss_bad: u32,
    /// `skb->priority` given to matched packets when `F_STEER` is set (a tc classid, `major:minor`).
    pub steer_priority: u32,
    /// `F_EDT`: the added delay in microseconds. Microseconds, not nanoseconds, so that it fits
    /// the `u32` slot the layout already had (up to ~71 minutes; validation caps a delay at
    /// 60 s) and the struct keeps its size and field offsets.
    pub edt_delay_us: u32,
    /// Source ports that match.
    pub sports: PortSet,
    /// Destination ports that match.
    pub dports: PortSet,
    /// Protected TCP/UDP ports: a packet whose source or destination port is in this set is
    /// never faulted (SSH, the agent's own API...). Checked before anything else.
    pub protected_ports: PortSet,
    /// `F_EDT`: uniform jitter half-width in microseconds (each packet gets
    /// `delay + U[-jitter, +jitter]`, never departing before "now"). Microseconds for the same
    /// reason as `edt_delay_us`; the field also keeps the struct's size a multiple of 8.
    pub edt_jitter_us: u32,
}
const _: () = assert!(core::mem::size_of::<FaultConfig>() == 152);
// The EDT fields took over the two former padding slots: nothing else moved.
const _: () = assert!(core::mem::offset_of!(FaultConfig, edt_delay_us) == 36);
const _: () = assert!(core::mem::offset_of!(FaultConfig, sports) == 40);
const _: () = assert!(core::mem::offset_of!(FaultConfig, edt_jitter_us) == 148);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers with explicit padding; any bit pattern is valid.
    unsafe impl aya::Pod for super::FaultConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortSet {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortRange {}
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
    fn port_sets() {
        let mut s = PortSet::default();
        assert!(s.contains(22));
        assert!(!s.contains_strict(22));
        s.len = 2;
        s.ranges[0] = PortRange { lo: 22, hi: 22 };
        s.ranges[1] = PortRange { lo: 8000, hi: 8100 };
        assert!(s.contains(22) && s.contains(8000) && s.contains(8100));
        assert!(!s.contains(23) && !s.contains(8101));
    }
}
