//! Byte-level helpers: netlink attribute building and iproute2's fixed-point conventions
//! (percentages, psched ticks, rate tables). Everything here reproduces what iproute2 6.1's `tc`
//! computes, so that the unit tests can compare our messages with `tc`'s byte for byte.

/// `NLA_F_NESTED`: iproute2 sets it only on some nests (netem's loss model, action options).
pub const NLA_F_NESTED: u16 = 0x8000;

/// An attribute payload under construction (host byte order, 4-byte aligned attributes).
#[derive(Debug, Default, Clone)]
pub struct Attrs(pub Vec<u8>);

impl Attrs {
    /// An empty buffer.
    #[must_use]
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Appends raw bytes (a C struct that precedes attributes, as in netem and prio).
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }

    /// Appends one attribute `kind` with `value`, padded to 4 bytes.
    pub fn attr(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        // nla_len counts the header and the unpadded value; the padding follows it.
        let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
        self
    }

    /// Appends a `u32` attribute.
    pub fn u32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.attr(kind, &v.to_ne_bytes())
    }

    /// Appends a `u64` attribute.
    pub fn u64(&mut self, kind: u16, v: u64) -> &mut Self {
        self.attr(kind, &v.to_ne_bytes())
    }

    /// Appends a nested attribute built by `f`.
    pub fn nest(&mut self, kind: u16, f: impl FnOnce(&mut Attrs)) -> &mut Self {
        let mut inner = Attrs::new();
        f(&mut inner);
        self.attr(kind, &inner.0)
    }

    /// The bytes.
    #[must_use]
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Concatenates `u32`s in host order (C structs made of `__u32`/`__s32` fields).
#[must_use]
pub fn u32s(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

/// Iterates over the attributes of `buf` as `(kind, value)`; stops at the first malformed one.
pub fn iter_attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        let hdr = buf.get(off..off + 4)?;
        let len = usize::from(u16::from_ne_bytes([hdr[0], hdr[1]]));
        let kind = u16::from_ne_bytes([hdr[2], hdr[3]]);
        if len < 4 {
            return None;
        }
        let value = buf.get(off + 4..off + len)?;
        off += (len + 3) & !3;
        Some((kind, value))
    })
}

/// A percentage (0..=100) as netem's `u32` probability, rounded like iproute2's `get_percent`
/// (`rint(p / 100 * UINT32_MAX)`; `rint` rounds half to even in the default FP mode).
#[must_use]
pub fn percent_u32(percent: f64) -> u32 {
    let scaled = (percent / 100.0) * f64::from(u32::MAX);
    scaled.round_ties_even().clamp(0.0, f64::from(u32::MAX)) as u32
}

/// psched ticks per microsecond as `tc` computes it from `/proc/net/psched`. Since Linux 2.6.31 the
/// kernel reports fixed values (`t2us=1000, us2t=64, clock_res=1e6`), so a tick is 64 ns.
pub const TICKS_PER_USEC: f64 = 1000.0 / 64.0;

/// The timer frequency `tc` reads from `/proc/net/psched` on high-resolution-timer kernels (every
/// kernel we support); HTB's default burst is `rate / HZ + mtu`.
pub const PSCHED_HZ: u64 = 1_000_000_000;

/// iproute2's `tc_core_time2tick`: microseconds to ticks, both `unsigned int`.
#[must_use]
pub fn time2tick(usec: u32) -> u32 {
    (f64::from(usec) * TICKS_PER_USEC) as u32
}

/// iproute2's `tc_calc_xmittime(rate, size)`: ticks to send `size` bytes at `rate` bytes/s. The
/// intermediate truncation to whole microseconds is iproute2's, kept for byte equality.
#[must_use]
pub fn xmittime(rate: u64, size: u32) -> u32 {
    if rate == 0 {
        return 0;
    }
    let usec = 1_000_000.0 * (f64::from(size) / rate as f64);
    time2tick(usec as u32)
}

/// `struct tc_ratespec` (12 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateSpec {
    /// log2 of the rate table's cell size.
    pub cell_log: u8,
    /// `TC_LINKLAYER_ETHERNET` (1): lets the kernel skip the rate table.
    pub linklayer: u8,
    /// Per-packet overhead.
    pub overhead: u16,
    /// Cell alignment (iproute2 always sends -1).
    pub cell_align: i16,
    /// Minimum packet unit.
    pub mpu: u16,
    /// Rate in bytes/s, saturated at `u32::MAX` (the 64-bit value goes in a separate attribute).
    pub rate: u32,
}

impl RateSpec {
    /// The 12 bytes of the C struct.
    #[must_use]
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(12);
        b.push(self.cell_log);
        b.push(self.linklayer);
        b.extend_from_slice(&self.overhead.to_ne_bytes());
        b.extend_from_slice(&self.cell_align.to_ne_bytes());
        b.extend_from_slice(&self.mpu.to_ne_bytes());
        b.extend_from_slice(&self.rate.to_ne_bytes());
        b
    }
}

/// The 32-bit field value for a 64-bit rate: rates that do not fit are sent as `~0` plus a
/// `*_RATE64` attribute (kernel 3.13+).
#[must_use]
pub fn rate32(rate: u64) -> u32 {
    u32::try_from(rate).unwrap_or(u32::MAX)
}

/// iproute2's `tc_calc_rtable` for an Ethernet link layer with no mpu/overhead: fills the rate
/// spec and returns the 256-entry rate table (1024 bytes). Modern kernels ignore the table when
/// the link layer is set, but they still require it for tbf/htb and `tc` always sends it.
#[must_use]
pub fn rate_table(rate: u64, mtu: u32) -> (RateSpec, Vec<u8>) {
    let mtu = if mtu == 0 { 2047 } else { mtu };
    let mut cell_log = 0u8;
    while (mtu >> cell_log) > 255 {
        cell_log += 1;
    }
    let spec = RateSpec {
        cell_log,
        linklayer: 1,
        overhead: 0,
        cell_align: -1,
        mpu: 0,
        rate: rate32(rate),
    };
    // The table is computed from the (saturated) 32-bit rate, as tc does.
    let table: Vec<u32> = (0..256u32)
        .map(|i| xmittime(u64::from(spec.rate), (i + 1) << cell_log))
        .collect();
    (spec, u32s(&table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_matches_iproute2() {
        assert_eq!(percent_u32(1.0), 0x028f_5c29);
        assert_eq!(percent_u32(25.0), 0x4000_0000);
        assert_eq!(percent_u32(50.0), 0x8000_0000);
        assert_eq!(percent_u32(0.1), 0x0041_8937);
        assert_eq!(percent_u32(100.0), u32::MAX);
        assert_eq!(percent_u32(0.0), 0);
    }

    #[test]
    fn xmittime_truncates_like_tc() {
        // 1 Mbit/s, 8 bytes: 64 us = 1000 ticks.
        assert_eq!(xmittime(125_000, 8), 1000);
        // 1992 bytes: 15935.999.. us truncates to 15935 before scaling (seen in tc's table).
        assert_eq!(xmittime(125_000, 1992), 248_984);
    }

    #[test]
    fn attrs_pad() {
        let mut a = Attrs::new();
        a.attr(1, b"tbf\0").attr(2, &[1]);
        assert_eq!(
            a.0,
            [8, 0, 1, 0, b't', b'b', b'f', 0, 5, 0, 2, 0, 1, 0, 0, 0]
        );
        let v: Vec<_> = iter_attrs(&a.0).collect();
        assert_eq!(v, vec![(1, &b"tbf\0"[..]), (2, &[1u8][..])]);
    }
}
