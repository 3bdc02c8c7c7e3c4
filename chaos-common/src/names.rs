//! Names the agent uses to find its own objects in the kernel.
//!
//! Everything the agent creates carries one of these names, so that `cleanup` can recognise a
//! dead agent's leftovers without touching anything that belongs to somebody else.

/// Prefix of every eBPF program, netlink filter, device and qdisc handle name the agent creates.
pub const PREFIX: &str = "chaos_";
/// tc classifier attached at ingress (kernel names are truncated to 15 bytes: keep these short).
pub const PROG_TC_INGRESS: &str = "chaos_tc_in";
/// tc classifier attached at egress.
pub const PROG_TC_EGRESS: &str = "chaos_tc_eg";

/// Map holding the single [`crate::FaultConfig`] of one fault (index 0).
pub const MAP_CONFIG: &str = "CHAOS_CONFIG";
/// Per-CPU counters, indexed by [`crate::counter_index`].
pub const MAP_COUNTERS: &str = "CHAOS_COUNTERS";
/// Per-CPU PRNG state used when the fault has a seed.
pub const MAP_RNG: &str = "CHAOS_RNG";
/// Per-CPU Gilbert-Elliott channel state (0 = good, 1 = bad).
pub const MAP_GE_STATE: &str = "CHAOS_GE";
/// LPM tries of source / destination prefixes. Key data is the address in network byte order.
pub const MAP_SRC_V4: &str = "CHAOS_SRC4";
/// Destination IPv4 prefixes.
pub const MAP_DST_V4: &str = "CHAOS_DST4";
/// Source IPv6 prefixes.
pub const MAP_SRC_V6: &str = "CHAOS_SRC6";
/// Destination IPv6 prefixes.
pub const MAP_DST_V6: &str = "CHAOS_DST6";

/// Capacity of each prefix trie.
pub const MAX_PREFIXES: u32 = 64;
