//! Per-CPU counters kept by the tc programs: one block per fault slot and direction, and one
//! packet count per attachment point.

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
    /// Unused since the shared fault table (a fault's "seen" is its hooks' packet count,
    /// `CHAOS_HOOK_STATS`); the index is kept so that the others keep theirs.
    Seen = 0,
    /// Packets that matched the fault's filters (and were not protected).
    Matched = 1,
    /// Matched packets that were dropped.
    Dropped = 2,
    /// Matched packets steered to a shaping qdisc (delay, rate, ...) by `skb->priority`.
    Steered = 3,
    /// Packets that matched the filters but were let through because they are protected traffic.
    Protected = 4,
    /// Packets that matched the filters after the in-kernel deadline passed (let through).
    Expired = 5,
    /// DNS faults: answers rewritten to the fault's rcode.
    Rewritten = 6,
    /// DNS faults: messages on the fault's port that the program could not parse within its
    /// bounds (let through untouched).
    Unparsed = 7,
    /// Refuse faults: `connect()`s failed with the fault's errno.
    Refused = 8,
}

/// Number of counters per direction (room for the counters of fault types to come).
pub const COUNTERS_PER_DIR: u32 = 16;
/// Number of counters per fault slot (both directions).
pub const COUNTERS_PER_SLOT: u32 = COUNTERS_PER_DIR * 2;
/// Number of entries in the counters map.
pub const COUNTERS_LEN: u32 = COUNTERS_PER_SLOT * crate::MAX_FAULTS;

/// Index of `counter` of fault slot `slot` for `dir` in the counters map.
#[must_use]
pub const fn counter_index(slot: u32, dir: Dir, counter: Counter) -> u32 {
    slot * COUNTERS_PER_SLOT + dir as u32 * COUNTERS_PER_DIR + counter as u32
}
