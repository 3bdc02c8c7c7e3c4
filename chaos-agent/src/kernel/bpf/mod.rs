//! The embedded tc programs: the agent's one datapath ([`Datapath`]: loaded once, attached once
//! per interface and direction), the fault table it serves ([`table`]), attaching (tcx or
//! netlink) and reading counters.

pub mod attach;
pub mod datapath;
pub mod dns_table;
pub mod table;
pub mod test_run;

use std::net::IpAddr;

use ipnet::IpNet;

pub use attach::{AttachMode, AttachedProgram};
pub use datapath::Datapath;

/// Errors from loading or configuring the programs.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// The object failed to load (verifier, missing BTF, permissions...).
    #[error("load eBPF object: {0}")]
    Load(Box<aya::EbpfError>),
    /// A program failed to load into the kernel (usually the verifier).
    #[error("load program {name}: {source}")]
    Program {
        /// Program name.
        name: &'static str,
        /// The cause (boxed: aya's errors are large and would bloat every `Result`).
        source: Box<aya::programs::ProgramError>,
    },
    /// A map operation failed.
    #[error("{op} map {map}: {source}")]
    Map {
        /// What was done.
        op: &'static str,
        /// Map name.
        map: &'static str,
        /// The cause.
        source: Box<aya::maps::MapError>,
    },
    /// A map or program the object should contain is missing (object/agent mismatch).
    #[error("eBPF object has no {0}")]
    Missing(&'static str),
    /// Attaching failed.
    #[error("attach {prog} to {ifname} {direction}: {source}")]
    Attach {
        /// Program.
        prog: &'static str,
        /// Interface.
        ifname: String,
        /// Direction.
        direction: &'static str,
        /// The cause.
        source: Box<aya::programs::ProgramError>,
    },
    /// Every fault slot is in use.
    #[error("all {max} fault slots of the datapath are in use")]
    SlotsFull {
        /// Number of slots.
        max: usize,
    },
    /// Every hook slot is in use.
    #[error("the datapath serves at most {max} interface directions at once")]
    HooksFull {
        /// Number of hooks.
        max: usize,
    },
    /// The fault does not fit the fault table.
    #[error(transparent)]
    Table(table::TableError),
    /// The connect programs could not be attached to the cgroup.
    #[error("attach {prog} to cgroup {cgroup}: {source}")]
    AttachCgroup {
        /// Program.
        prog: &'static str,
        /// The cgroup directory.
        cgroup: String,
        /// The cause.
        source: Box<aya::programs::ProgramError>,
    },
    /// A refuse fault needs a cgroup v2 hierarchy to attach its connect programs to.
    #[error(
        "refusing connects needs a cgroup v2 hierarchy (cgroup2 mounted, e.g. at /sys/fs/cgroup or /sys/fs/cgroup/unified) and none is mounted; nothing was changed"
    )]
    NoCgroup2,
    /// The kernel rejects the connect programs because it lacks `bpf_set_retval` there.
    #[error(
        "refusing connects with a chosen errno needs bpf_set_retval in cgroup connect hooks (Linux 6.1); this kernel is {kernel}: nothing was changed"
    )]
    NoSetRetval {
        /// The running kernel's release.
        kernel: String,
    },
}

/// Counters of one direction, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirCounters {
    /// Packets the program ran on while armed.
    pub seen: u64,
    /// Packets that matched the filters.
    pub matched: u64,
    /// Packets dropped.
    pub dropped: u64,
    /// Packets steered to a shaping qdisc.
    pub steered: u64,
    /// Matching packets let through because they are protected.
    pub protected: u64,
    /// Packets seen after the kernel-side deadline.
    pub expired: u64,
    /// DNS answers rewritten to the fault's rcode.
    #[serde(default)]
    pub rewritten: u64,
    /// DNS messages the program could not parse (let through untouched).
    #[serde(default)]
    pub unparsed: u64,
    /// Refuse faults: `connect()`s failed with the fault's errno.
    #[serde(default)]
    pub refused: u64,
    /// Reset faults: connections aborted (and `seen` counts their sweeps).
    #[serde(default)]
    pub reset: u64,
}

/// Counters of a program, both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Ingress.
    pub ingress: DirCounters,
    /// Egress.
    pub egress: DirCounters,
}

impl Counters {
    /// Sum of both directions.
    #[must_use]
    pub fn total(&self) -> DirCounters {
        let (a, b) = (self.ingress, self.egress);
        DirCounters {
            seen: a.seen + b.seen,
            matched: a.matched + b.matched,
            dropped: a.dropped + b.dropped,
            steered: a.steered + b.steered,
            protected: a.protected + b.protected,
            expired: a.expired + b.expired,
            rewritten: a.rewritten + b.rewritten,
            unparsed: a.unparsed + b.unparsed,
            refused: a.refused + b.refused,
            reset: a.reset + b.reset,
        }
    }
}

/// The error for a failed map operation (`op` on `map`), for `map_err`.
pub(crate) fn map_error(
    op: &'static str,
    map: &'static str,
) -> impl FnOnce(aya::maps::MapError) -> EbpfError {
    move |source| EbpfError::Map {
        op,
        map,
        source: Box::new(source),
    }
}

/// splitmix64: spreads a seed into a well-mixed non-trivial PRNG state.
#[must_use]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether an address is in one of the prefixes (used for dry-run explanations and tests).
#[must_use]
pub fn in_any(nets: &[IpNet], addr: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&addr))
}
