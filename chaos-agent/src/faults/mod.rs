//! Fault types: one room each (`loss/`, `shape/`), holding its spec section, validation,
//! command-line flags, summary and apply. Each turns its part of a validated [`FaultSpec`] into
//! kernel steps through the mechanisms below it (`ebpf` for the datapath, `tc` for qdiscs),
//! recording each step's undo in the transaction before taking it; the result is an
//! [`ActiveFault`] the engine keeps until the fault is reverted. `packet` is the eBPF slot that
//! every packet-level type shares (matching, loss, steering, EDT stamps).
//!
//! Adding a fault type `foo`:
//! 1. a room `faults/foo/` with `FooSpec` (serde, `deny_unknown_fields`) and its `validate`
//!    and `summary`, `FooArgs` (clap, with its own help heading) and its apply;
//! 2. the registry lines: a `foo: Option<FooSpec>` field in [`FaultSpec`] (`faults/spec.rs`,
//!    where validation and the summary call the room), a `#[command(flatten)] foo: FooArgs`
//!    in `cli::InjectArgs`, and a branch in [`apply`] and [`plan`] below;
//! 3. only if it changes the kernel in a way no mechanism offers yet: the mechanism (with its
//!    undo record in `txn::undo`, which the journal replays) in a room of its own.
//!
//! The engine (registry, TTL, journal replay) knows no fault type: it calls [`apply`], [`plan`]
//! and [`conflict`] and holds [`ActiveFault`]s.

pub mod dns;
pub mod flap;
pub mod limit;
pub mod loss;
pub mod packet;
pub mod refuse;
pub mod reset;
pub mod shape;
mod spec;
pub mod stress;

pub use spec::FaultSpec;

use std::fmt::Debug;

use crate::kernel::bpf::{AttachMode, Counters, EbpfError};
use crate::sys::SysError;
use crate::target::PortRange;
use crate::txn::FaultId;
use crate::txn::Txn;
use crate::txn::journal::JournalError;

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
    Tc(#[from] crate::kernel::tc::TcError),
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
    /// The cgroup a fault is scoped to cannot be found.
    #[error(transparent)]
    Scope(crate::spec::SpecError),
    /// A cgroup controller file could not be found, read or written.
    #[error(transparent)]
    Cgroup(#[from] crate::kernel::cgroup::CgroupError),
    /// A connection reset sweep failed (`sock_diag`).
    #[error(transparent)]
    Reset(crate::kernel::sock_diag::SockDiagError),
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

/// Measured effects of a fault on its target, by name (`cpu_throttled_seconds`,
/// `memory_pressure_some_avg10`...): counts since the fault began, and current levels.
pub type Effects = std::collections::BTreeMap<String, f64>;

/// A fault that is in force. Dropping it releases its in-process resources (which detaches tcx
/// links and aya-owned netlink filters); the engine then runs the journaled undo list.
pub trait ActiveFault: Send + Sync + Debug {
    /// Which backend implements it, e.g. `ebpf/tcx`.
    fn backend(&self) -> String;
    /// Kernel counters, if the fault has any.
    fn counters(&self) -> Option<Counters>;
    /// What the target shows of the fault, read from the kernel now (a cgroup's throttling,
    /// pressure and memory events since the fault began), for faults that act on processes
    /// rather than packets.
    fn effects(&self) -> Option<Effects> {
        None
    }
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
    /// The agent's datapath (programs and fault table).
    pub dp: &'a crate::kernel::bpf::Datapath,
    /// Traffic-control client.
    pub tc: &'a crate::kernel::tc::Tc,
    /// Resolved attach mode (never `Auto`).
    pub attach_mode: AttachMode,
    /// Ports that are never faulted unless the spec says `include_protected`.
    pub protected_ports: &'a [PortRange],
    /// Kernel-side deadline (`CLOCK_MONOTONIC` ns).
    pub expires_at_mono_ns: u64,
    /// When the fault started (`CLOCK_MONOTONIC` ns): the origin of its `--flap` cycle.
    pub started_at_mono_ns: u64,
}

/// Applies a fault. On error the caller rolls the transaction back.
pub async fn apply(
    spec: &FaultSpec,
    ctx: &mut ApplyCtx<'_>,
) -> Result<Box<dyn ActiveFault>, FaultError> {
    if spec.reset.is_some() {
        return reset::apply(spec, ctx).await;
    }
    if spec.limit.is_some() {
        return limit::apply(spec, ctx);
    }
    if spec.stress.is_some() {
        return stress::apply(spec, ctx);
    }
    // Shaping first, classifier last: packets are only steered once their class exists.
    let steering = match &spec.shape {
        Some(sh) if !sh.is_empty() => Some(shape::netem::apply(sh, spec, ctx).await?),
        _ => None,
    };
    Ok(Box::new(packet::apply(spec, ctx, steering).await?))
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
    let t = &spec.target;
    if let (Some(cgroup), Some(id)) = (&t.cgroup, t.cgroup_id) {
        // What the scope resolved to, as journaled: the fault ends if this cgroup goes.
        out.push(format!(
            "scope: {} is cgroup {cgroup} (id {id}){}; the fault ends (target-gone) if that cgroup is removed",
            t.scope_name().unwrap_or_default(),
            t.netns
                .map(|ns| format!(" with its own network namespace net:[{ns}]"))
                .unwrap_or_default()
        ));
        if let Some(inner) = &t.container_iface {
            out.push(format!(
                "container interface: its {inner} is faulted on its host-side veth {ifname}"
            ));
        }
    }
    if spec.reset.is_some() {
        out.extend(reset::plan(spec, protected));
        return out;
    }
    if spec.limit.is_some() {
        out.extend(limit::plan(spec));
        return out;
    }
    if spec.stress.is_some() {
        out.extend(stress::plan(spec));
        return out;
    }
    if let Some(sh) = spec.shape.as_ref().filter(|s| !s.is_empty()) {
        out.extend(shape::netem::plan(sh, spec, ifname));
    }
    out.extend(packet::plan(spec, ifname, mode, protected));
    out
}

/// Whether two faults cannot be active at once, and why. Loss faults compose (each program
/// draws independently, so two 10% faults drop 19%); shaping faults own the interface's root
/// qdisc (egress) or its ingress redirect, so two of them on one interface and direction clash.
#[must_use]
pub fn conflict(new: &FaultSpec, active: &FaultSpec) -> Option<String> {
    if new.limit.is_some() && active.limit.is_some() {
        // Each restores the value it found: two on one file would restore each other's.
        let theirs = limit::files(active);
        return limit::files(new)
            .into_iter()
            .find(|f| theirs.contains(f))
            .map(|f| format!("both limit {f} (one limit fault per cgroup file or line)"));
    }
    let shapes = |s: &FaultSpec| s.shape.as_ref().is_some_and(|sh| !sh.is_empty());
    if !shapes(new) || !shapes(active) || new.target.iface != active.target.iface {
        return None;
    }
    let (a, b) = (new.target.hook_direction(), active.target.hook_direction());
    let both = |f: fn(crate::target::Direction) -> bool| f(a) && f(b);
    (both(crate::target::Direction::egress) || both(crate::target::Direction::ingress)).then(|| {
        format!(
            "both shape {} traffic on {} (one shaping fault per interface and direction; loss faults compose)",
            if both(crate::target::Direction::egress) { "egress" } else { "ingress" },
            new.target.iface.as_deref().unwrap_or("?")
        )
    })
}
