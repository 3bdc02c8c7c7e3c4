//! chaos-agent: injects real, self-expiring faults into a Linux host.
//!
//! The binary (`src/main.rs`) is a thin shell over this library; tests and the VM guest call the
//! same functions production does. See `docs/design.md` for the map of the modules.

/// The eBPF object built from `chaos-ebpf` by `build.rs`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/chaos-ebpf"));

pub mod api;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod engine;
pub mod experiment;
pub mod faults;
pub mod kernel;
pub mod metrics;
pub mod spec;
pub mod sys;
pub mod target;
pub mod txn;
