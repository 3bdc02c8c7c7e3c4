//! Per-CPU counters kept by the tc programs, one block per direction.

/// Direction of traffic a program sees, as an index into the counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Packets arriving on the interface (tc ingress).
    Ingress = 0,
    /// Packets leaving through the interface (tc egress).
    Egress = 1,
}

/// What a counter counts.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Every packet the program ran on while armed.
    Seen = 0,
    /// Packets that matched the fault's filters (and were not protected).
    Matched = 1,
    /// Matched packets that were dropped.
    Dropped = 2,
    /// Matched packets steered to a shaping qdisc (delay, rate, ...) by `skb->priority`.
    Steered = 3,
    /// Packets that matched the filters but were let through because they are protected traffic.
    Protected = 4,
    /// Packets seen after the in-kernel deadline passed (the program let them through).
    Expired = 5,
}

/// Number of counters per direction.
pub const COUNTERS_PER_DIR: u32 = 8;
/// Number of entries in the counters map.
pub const COUNTERS_LEN: u32 = COUNTERS_PER_DIR * 2;

/// Index of `counter` for `dir` in the counters map.
#[must_use]
pub const fn counter_index(dir: Dir, counter: Counter) -> u32 {
    dir as u32 * COUNTERS_PER_DIR + counter as u32
}
