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
/// cgroup `connect4` program of refuse faults.
pub const PROG_CONNECT4: &str = "chaos_conn4";
/// cgroup `connect6` program of refuse faults.
pub const PROG_CONNECT6: &str = "chaos_conn6";
/// The cgroup ingress program of process-scoped faults (`cgroup_skb/ingress`, on the cgroup v2
/// root).
pub const PROG_SOCK_INGRESS: &str = "chaos_sk_in";

/// Attachment points: `hook_key(ifindex, dir)` -> [`crate::HookEntry`].
pub const MAP_HOOKS: &str = "CHAOS_HOOKS";
/// Per-CPU packet count of each attachment point (`HookEntry::stats`).
pub const MAP_HOOK_STATS: &str = "CHAOS_HOOKSTAT";
/// The dimensions not keyed by a packet field ([`crate::Globals`], index 0).
pub const MAP_GLOBALS: &str = "CHAOS_GLOBALS";
/// Per-port bitmaps ([`crate::PortEntry`], index = port).
pub const MAP_PORTS: &str = "CHAOS_PORTS";
/// Per-block bitmaps ([`crate::PortEntry`], index = port / `PORT_BLOCK_SIZE`).
pub const MAP_PORT_BLOCKS: &str = "CHAOS_PORT_BLKS";
/// The fault slots ([`crate::FaultSlot`], index = slot).
pub const MAP_SLOTS: &str = "CHAOS_SLOTS";
/// Per-CPU counters, indexed by [`crate::counter_index`].
pub const MAP_COUNTERS: &str = "CHAOS_COUNTERS";
/// Per-CPU PRNG state of each slot, used when the fault has a seed.
pub const MAP_RNG: &str = "CHAOS_RNG";
/// Per-CPU Gilbert-Elliott channel state of each slot (0 = good, 1 = bad).
pub const MAP_GE_STATE: &str = "CHAOS_GE";
/// LPM tries of source / destination prefixes -> [`crate::Bitmap`]. Key data is the address
/// in network byte order; the value of a prefix holds the faults of every prefix containing it.
pub const MAP_SRC_V4: &str = "CHAOS_SRC4";
/// Destination IPv4 prefixes.
pub const MAP_DST_V4: &str = "CHAOS_DST4";
/// Source IPv6 prefixes.
pub const MAP_SRC_V6: &str = "CHAOS_SRC6";
/// Destination IPv6 prefixes.
pub const MAP_DST_V6: &str = "CHAOS_DST6";

/// Prefixes one fault may name per address family and side (source or destination).
pub const MAX_PREFIXES: u32 = 16_384;
/// DNS name suffixes -> [`crate::Bitmap`] (LPM trie over `crate::dns::NameKey`); the value of a
/// name holds the faults of every listed suffix of it.
pub const MAP_DNS_NAMES: &str = "CHAOS_DNS_NAMES";
/// DNS query type -> [`crate::Bitmap`] of the faults that list it.
pub const MAP_DNS_TYPES: &str = "CHAOS_DNS_TYPES";
/// cgroup v2 id -> [`crate::Bitmap`] of the faults scoped to that cgroup (and its descendants).
pub const MAP_CGROUPS: &str = "CHAOS_CGROUPS";
/// Per-CPU scratch space of the DNS parser (the 512-byte BPF stack cannot hold a name).
pub const MAP_DNS_SCRATCH: &str = "CHAOS_DNS_SCR";
