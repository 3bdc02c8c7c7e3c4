//! The embedded tc programs: loading, configuring through maps, attaching and reading counters.
//!
//! One [`TcProgram`] is loaded per fault, so every fault has its own config, deadline and counters
//! and faults on the same interface compose (each program returns `TC_ACT_UNSPEC` when it does not
//! act, so the next one runs).

pub mod attach;
pub mod netlink;

use std::net::IpAddr;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, MapData, PerCpuArray, PerCpuValues};
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};
use chaos_common::{COUNTERS_LEN, Counter, Dir, FaultConfig, counter_index, names};
use ipnet::IpNet;

pub use attach::{AttachMode, AttachedProgram};

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
    /// A netlink request failed.
    #[error("{op} on {ifname}: {source}")]
    Netlink {
        /// Operation.
        op: &'static str,
        /// Interface.
        ifname: String,
        /// The cause.
        source: Box<rtnetlink::Error>,
    },
    /// Opening a netlink socket failed.
    #[error("open netlink socket: {0}")]
    Socket(std::io::Error),
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
        }
    }
}

/// The error for a failed map operation (`op` on `map`), for `map_err`.
fn map_error(op: &'static str, map: &'static str) -> impl FnOnce(aya::maps::MapError) -> EbpfError {
    move |source| EbpfError::Map {
        op,
        map,
        source: Box::new(source),
    }
}

/// A loaded (not yet attached) copy of the tc programs with its own maps.
#[derive(Debug)]
pub struct TcProgram {
    ebpf: Ebpf,
}

impl TcProgram {
    /// Loads the embedded object and both classifiers into the kernel. Nothing is attached yet:
    /// if the agent dies now, the kernel frees everything with the file descriptors.
    pub fn load() -> Result<Self, EbpfError> {
        let mut ebpf = EbpfLoader::new()
            .load(crate::EBPF_OBJECT)
            .map_err(|e| EbpfError::Load(Box::new(e)))?;
        for name in [names::PROG_TC_INGRESS, names::PROG_TC_EGRESS] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(EbpfError::Missing(name))?
                .try_into()
                .map_err(|source| EbpfError::Program {
                    name,
                    source: Box::new(source),
                })?;
            prog.load().map_err(|source| EbpfError::Program {
                name,
                source: Box::new(source),
            })?;
        }
        Ok(Self { ebpf })
    }

    /// Writes the fault's configuration (index 0 of `CHAOS_CONFIG`).
    pub fn set_config(&mut self, cfg: &FaultConfig) -> Result<(), EbpfError> {
        let map = self
            .ebpf
            .map_mut(names::MAP_CONFIG)
            .ok_or(EbpfError::Missing(names::MAP_CONFIG))?;
        let mut arr: Array<&mut MapData, FaultConfig> =
            Array::try_from(map).map_err(map_error("open", names::MAP_CONFIG))?;
        arr.set(0, *cfg, 0)
            .map_err(map_error("write", names::MAP_CONFIG))
    }

    /// Reads the fault's configuration back.
    pub fn config(&self) -> Result<FaultConfig, EbpfError> {
        let map = self
            .ebpf
            .map(names::MAP_CONFIG)
            .ok_or(EbpfError::Missing(names::MAP_CONFIG))?;
        let arr: Array<&MapData, FaultConfig> =
            Array::try_from(map).map_err(map_error("open", names::MAP_CONFIG))?;
        arr.get(&0, 0).map_err(map_error("read", names::MAP_CONFIG))
    }

    /// Inserts one prefix into an LPM trie whose key data is the address (network byte order).
    fn insert_prefix<K: aya::Pod>(
        &mut self,
        map: &'static str,
        len: u8,
        addr: K,
    ) -> Result<(), EbpfError> {
        let data = self.ebpf.map_mut(map).ok_or(EbpfError::Missing(map))?;
        let mut trie: LpmTrie<&mut MapData, K, u8> =
            LpmTrie::try_from(data).map_err(map_error("open", map))?;
        trie.insert(&Key::new(u32::from(len), addr), 1, 0)
            .map_err(map_error("insert", map))
    }

    /// Adds prefixes to the source or destination tries (both families).
    pub fn add_prefixes(&mut self, nets: &[IpNet], source: bool) -> Result<(), EbpfError> {
        let (m4, m6) = if source {
            (names::MAP_SRC_V4, names::MAP_SRC_V6)
        } else {
            (names::MAP_DST_V4, names::MAP_DST_V6)
        };
        for net in nets {
            match net.trunc() {
                IpNet::V4(n) => self.insert_prefix(m4, n.prefix_len(), n.addr().octets())?,
                IpNet::V6(n) => self.insert_prefix(m6, n.prefix_len(), n.addr().octets())?,
            }
        }
        Ok(())
    }

    /// Seeds the per-CPU PRNG: CPU `i` gets `splitmix64(seed + i)`, never 0.
    pub fn seed_rng(&mut self, seed: u64) -> Result<(), EbpfError> {
        let map = self
            .ebpf
            .map_mut(names::MAP_RNG)
            .ok_or(EbpfError::Missing(names::MAP_RNG))?;
        let mut arr: PerCpuArray<&mut MapData, u64> =
            PerCpuArray::try_from(map).map_err(map_error("open", names::MAP_RNG))?;
        let ncpu = aya::util::nr_cpus().unwrap_or(1);
        let values: Vec<u64> = (0..ncpu as u64)
            .map(|i| splitmix64(seed.wrapping_add(i)).max(1))
            .collect();
        let values = PerCpuValues::try_from(values).map_err(|e| EbpfError::Map {
            op: "seed",
            map: names::MAP_RNG,
            source: Box::new(aya::maps::MapError::IoError(e)),
        })?;
        arr.set(0, values, 0)
            .map_err(map_error("write", names::MAP_RNG))
    }

    /// Reads the counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, EbpfError> {
        let map = self
            .ebpf
            .map(names::MAP_COUNTERS)
            .ok_or(EbpfError::Missing(names::MAP_COUNTERS))?;
        let arr: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(map_error("open", names::MAP_COUNTERS))?;
        let read = |dir: Dir, c: Counter| -> Result<u64, EbpfError> {
            let idx = counter_index(dir, c);
            debug_assert!(idx < COUNTERS_LEN);
            let v = arr
                .get(&idx, 0)
                .map_err(map_error("read", names::MAP_COUNTERS))?;
            Ok(v.iter().sum())
        };
        let dir = |d: Dir| -> Result<DirCounters, EbpfError> {
            Ok(DirCounters {
                seen: read(d, Counter::Seen)?,
                matched: read(d, Counter::Matched)?,
                dropped: read(d, Counter::Dropped)?,
                steered: read(d, Counter::Steered)?,
                protected: read(d, Counter::Protected)?,
                expired: read(d, Counter::Expired)?,
            })
        };
        Ok(Counters {
            ingress: dir(Dir::Ingress)?,
            egress: dir(Dir::Egress)?,
        })
    }

    /// The classifier for one direction.
    pub(crate) fn classifier(
        &mut self,
        name: &'static str,
    ) -> Result<&mut SchedClassifier, EbpfError> {
        self.ebpf
            .program_mut(name)
            .ok_or(EbpfError::Missing(name))?
            .try_into()
            .map_err(|source| EbpfError::Program {
                name,
                source: Box::new(source),
            })
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
