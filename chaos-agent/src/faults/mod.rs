//! Fault types. Each module turns a validated [`FaultSpec`] into kernel steps, recording each
//! step's undo in the transaction before taking it, and returns an [`ActiveFault`] that owns the
//! in-process resources (program fds, links) until the fault is reverted.
//!
//! Adding a fault type: a new module here, a branch in [`apply`] and [`plan`], and — if it
//! changes the kernel in a new way — a new variant of [`crate::engine::undo::Undo`].

pub mod loss;

use std::fmt::Debug;

use crate::ebpf::{AttachMode, Counters, EbpfError};
use crate::engine::journal::JournalError;
use crate::engine::txn::Txn;
use crate::engine::FaultId;
use crate::spec::{FaultSpec, PortRange};
use crate::sys::SysError;

/// Errors while applying or changing a fault.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// eBPF load/attach/map failure.
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    /// The journal could not be written, so the kernel was not changed.
    #[error("journal write failed, nothing applied: {0}")]
    Journal(#[from] JournalError),
    /// Host lookup failed.
    #[error(transparent)]
    Sys(#[from] SysError),
}

/// A fault that is in force. Dropping it releases its in-process resources (which detaches tcx
/// links and aya-owned netlink filters); the engine then runs the journaled undo list.
pub trait ActiveFault: Send + Sync + Debug {
    /// Which backend implements it, e.g. `ebpf/tcx`.
    fn backend(&self) -> String;
    /// Kernel counters, if the fault has any.
    fn counters(&self) -> Option<Counters>;
    /// Moves the kernel-side deadline (TTL extension).
    fn set_expiry(&mut self, expires_at_mono_ns: u64) -> Result<(), FaultError>;
    /// Stops acting at once (before links are torn down), so revert is instant for traffic.
    fn disarm(&mut self) -> Result<(), FaultError>;
}

/// What a fault module gets to apply a fault.
#[derive(Debug)]
pub struct ApplyCtx<'a> {
    /// The fault's id.
    pub id: FaultId,
    /// Resolved interface name.
    pub ifname: String,
    /// Its index.
    pub ifindex: u32,
    /// The transaction: record each undo before the step.
    pub txn: &'a mut Txn,
    /// Netlink route handle.
    pub nl: &'a rtnetlink::Handle,
    /// Resolved attach mode (never `Auto`).
    pub attach_mode: AttachMode,
    /// Ports that are never faulted unless the spec says `include_protected`.
    pub protected_ports: &'a [PortRange],
    /// Kernel-side deadline (`CLOCK_MONOTONIC` ns).
    pub expires_at_mono_ns: u64,
}

/// Applies a fault. On error the caller rolls the transaction back.
pub async fn apply(spec: &FaultSpec, ctx: &mut ApplyCtx<'_>) -> Result<Box<dyn ActiveFault>, FaultError> {
    Ok(Box::new(loss::apply(spec, ctx).await?))
}

/// Whether a new fault can run alongside an active one on the same host; `Some(why)` refuses it
/// (the engine names the other fault). Loss faults compose: each has its own program, and
/// independent drops multiply (`1 - (1-p1)(1-p2)` of the packets both match are lost; see
/// docs/design.md). Kinds that own a shared kernel object (a root qdisc) refuse each other here.
#[must_use]
#[allow(clippy::match_same_arms, reason = "one arm per pair of kinds states the policy; the netem kinds add refusing arms")]
pub fn conflict(new: &FaultSpec, active: &FaultSpec) -> Option<String> {
    match (new.kind(), active.kind()) {
        ("loss", "loss") => None,
        _ => None,
    }
}

/// What applying the fault would do, for `--dry-run`.
#[must_use]
pub fn plan(spec: &FaultSpec, ifname: &str, mode: AttachMode, protected: &[PortRange]) -> Vec<String> {
    loss::plan(spec, ifname, mode, protected)
}
