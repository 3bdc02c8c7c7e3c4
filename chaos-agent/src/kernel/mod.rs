//! The kernel mechanisms the fault types share, each change next to its undo:
//! - [`bpf`]: the eBPF datapath (programs loaded once per agent, attached once per interface
//!   and direction over tcx or `cls_bpf`) and its fault table;
//! - [`tc`]: traffic control over rtnetlink (qdiscs, classes, filters, IFB devices, clsact),
//!   and the exact snapshot and restore of a device's qdisc tree;
//! - [`cgroup`]: the files of the cpu and memory controllers (v2, v1, hybrid), which the
//!   limit faults write and whose old values their undo writes back;
//! - [`sock_diag`]: listing TCP connections and aborting them (`SOCK_DESTROY`, as `ss -K`), which
//!   has no undo: a reset connection stays reset.
//!
//! Their undo records are in `txn::undo`, which journals them before each change.

pub mod bpf;
pub mod cgroup;
pub mod sock_diag;
pub mod tc;
