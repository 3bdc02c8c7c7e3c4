//! Fault types. Each module turns a validated [`FaultSpec`] into kernel steps, recording each
//! step's undo in the transaction before taking it, and returns an [`ActiveFault`] that owns the
//! in-process resources (program fds, links) until the fault is reverted.
//!
//! Adding a fault type: a new module here, a branch in [`apply`] and [`plan`], and — if it
//! changes the kernel in a new way — a new variant of [`crate::txn::undo::Undo`].

pub mod classifier;
pub mod netem;

use std::fmt::Debug;

use crate::ebpf::{AttachMode, Counters, EbpfError};
use crate::txn::FaultId;
use crate::txn::journal::JournalError;
use crate::txn::Txn;
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
    /// A traffic-control request failed (or the kernel lacks a qdisc).
    #[error(transparent)]
    Tc(#[from] crate::tc::TcError),
    /// The kernel lacks a module the fault needs; nothing was changed.
    #[error(
        "{what} need the {kind} qdisc, which this kernel lacks: load it with `modprobe {module}` (Debian/Ubuntu ship it in the stock kernel package or linux-modules-extra-$(uname -r)); nothing was changed"
    )]
    Unsupported {
        /// What the user asked for.
        what: &'static str,
        /// Qdisc kind.
        kind: &'static str,
        /// Kernel module.
        module: &'static str,
    },
    /// A delay, but neither delay backend exists in this kernel.
    #[error(
        "delay needs the netem qdisc (module sch_netem), or for egress delay with uniform jitter the fq qdisc (module sch_fq, EDT backend), and this kernel has neither: load one with `modprobe sch_netem` or `modprobe sch_fq` (Debian/Ubuntu ship both in the stock kernel package or linux-modules-extra-$(uname -r)); nothing was changed"
    )]
    NoDelayBackend,
    /// The interface already carries a chaos-agent root qdisc.
    #[error(
        "{ifname} already carries a chaos-agent qdisc root (another shaping fault, or a leftover: run `chaos-agent cleanup`)"
    )]
    Busy {
        /// Interface.
        ifname: String,
    },
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
    /// The agent's datapath (programs and fault table).
    pub dp: &'a crate::ebpf::Datapath,
    /// Traffic-control client.
    pub tc: &'a crate::tc::Tc,
    /// Resolved attach mode (never `Auto`).
    pub attach_mode: AttachMode,
    /// Ports that are never faulted unless the spec says `include_protected`.
    pub protected_ports: &'a [PortRange],
    /// Kernel-side deadline (`CLOCK_MONOTONIC` ns).
    pub expires_at_mono_ns: u64,
}

/// Applies a fault. On error the caller rolls the transaction back.
pub async fn apply(
    spec: &FaultSpec,
    ctx: &mut ApplyCtx<'_>,
) -> Result<Box<dyn ActiveFault>, FaultError> {
    // Shaping first, classifier last: packets are only steered once their class exists.
    let steering = match &spec.shape {
        Some(sh) if !sh.is_empty() => Some(netem::apply(sh, spec, ctx).await?),
        _ => None,
    };
    Ok(Box::new(classifier::apply(spec, ctx, steering).await?))
}

/// What applying the fault would do, for `--dry-run`.
#[must_use]
pub fn plan(
    spec: &FaultSpec,
    ifname: &str,
    mode: AttachMode,
    protected: &[PortRange],
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(sh) = spec.shape.as_ref().filter(|s| !s.is_empty()) {
        out.extend(netem::plan(sh, spec, ifname));
    }
    out.extend(classifier::plan(spec, ifname, mode, protected));
    out
}

/// Whether two faults cannot be active at once, and why. Loss faults compose (each program
/// draws independently, so two 10% faults drop 19%); shaping faults own the interface's root
/// qdisc (egress) or its ingress redirect, so two of them on one interface and direction clash.
#[must_use]
pub fn conflict(new: &FaultSpec, active: &FaultSpec) -> Option<String> {
    let shapes = |s: &FaultSpec| s.shape.as_ref().is_some_and(|sh| !sh.is_empty());
    if !shapes(new) || !shapes(active) || new.target.iface != active.target.iface {
        return None;
    }
    let (a, b) = (new.target.direction, active.target.direction);
    let both = |f: fn(crate::spec::Direction) -> bool| f(a) && f(b);
    (both(crate::spec::Direction::egress) || both(crate::spec::Direction::ingress)).then(|| {
        format!(
            "both shape {} traffic on {} (one shaping fault per interface and direction; loss faults compose)",
            if both(crate::spec::Direction::egress) { "egress" } else { "ingress" },
            new.target.iface.as_deref().unwrap_or("?")
        )
    })
}
