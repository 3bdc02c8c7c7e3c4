//! Delay, jitter, bandwidth, corruption, duplication and reordering: the netem family.
//!
//! The shaping lives in qdiscs; the eBPF classifier (`classifier.rs`) decides which packets get
//! it by writing a class id into `skb->priority`. Per direction:
//! - egress: the interface's root is replaced by the agent's HTB steering root (the host's tree
//!   is snapshotted and journaled first, and restored exactly on revert); matching packets go to
//!   a fault class whose leaf is netem (or to a rate-limited HTB class for `--rate` alone);
//! - ingress: an IFB device (`chaos-ifbXXXXXX`) carries the same steering root, and a mirred
//!   filter on the interface's clsact ingress hook redirects incoming packets through it. The
//!   class id our ingress program wrote survives the redirect, so the IFB needs no program.
//!
//! Backends: `netem` where `sch_netem` exists; a pure `--rate` needs only HTB. Without netem a
//! delay/corrupt/duplicate/reorder fault is refused before anything changes, naming the module.

use std::time::Duration;

use super::classifier::{Steering, ensure_clsact};
use super::{ApplyCtx, FaultError};
use crate::engine::undo::Undo;
use crate::spec::{FaultSpec, JitterDistribution, ShapeSpec};
use crate::tc::{
    Distribution, NetemOptions, Qdisc, TC_H_CLSACT_INGRESS, TcError, default_leaf_from, fault_classid,
    is_faithfully_restorable, netem_limit,
};

/// Rate of the classes that must never be the bottleneck (bytes/s): 100 Gbit/s. The steering
/// root's default class carries all untargeted traffic at this rate.
pub const LINK_RATE_BPS: u64 = 100_000_000_000 / 8;
/// Priority of the mirred filter that sends ingress traffic through the IFB: right after our
/// own cls_bpf filters (`0xC4A0`), so our ingress program has written `skb->priority` first.
pub const MIRRED_PRIO: u16 = 0xC4A1;
/// The fault slot used under an agent root (one shaping fault per device and direction).
pub const SLOT: u16 = 0;

/// Name of the IFB device of fault `id` (15 bytes: `chaos-ifb` + 6 hex digits).
#[must_use]
pub fn ifb_name(id: crate::engine::FaultId) -> String {
    format!("chaos-ifb{:06x}", id.raw() & 0x00ff_ffff)
}

/// netem options for a spec (rate is done by the HTB class, not netem).
#[must_use]
pub fn netem_options(sh: &ShapeSpec) -> NetemOptions {
    let delay = sh.delay.unwrap_or(Duration::ZERO);
    let jitter = sh.jitter.unwrap_or(Duration::ZERO);
    let pct = |v: Option<f64>| v.map_or(0.0, |v| v * 100.0);
    NetemOptions {
        delay,
        jitter,
        delay_correlation: pct(sh.correlation),
        distribution: match sh.distribution.unwrap_or_default() {
            JitterDistribution::Uniform => Distribution::Uniform,
            JitterDistribution::Normal => Distribution::Normal,
            JitterDistribution::Pareto => Distribution::Pareto,
            JitterDistribution::Paretonormal => Distribution::Paretonormal,
        },
        duplicate: pct(sh.duplicate),
        corrupt: pct(sh.corrupt),
        reorder: pct(sh.reorder),
        // tc(8) turns "reorder P" into gap 1: every packet is a candidate for going first.
        gap: u32::from(sh.reorder.is_some()),
        // A queue deep enough for (delay + jitter) of traffic at the class's rate: netem's
        // default of 1000 packets drops on busy links, which would be a fault we did not ask for.
        limit: netem_limit(delay, jitter, sh.rate.map(|r| r.bits_per_sec), LINK_RATE_BPS * 8),
        ..NetemOptions::default()
    }
}

/// The backend a spec needs, or why this kernel cannot do it. Probed in a throwaway network
/// namespace, so nothing on the host changes.
pub fn backend(sh: &ShapeSpec) -> Result<&'static str, FaultError> {
    if !sh.needs_netem() {
        return Ok("htb");
    }
    match crate::doctor::probe_qdiscs(&["netem"]).first() {
        Some((_, Ok(crate::doctor::QdiscProbe::Present))) => Ok("netem"),
        _ => Err(FaultError::Unsupported {
            what: "delay, jitter, corrupt, duplicate and reorder",
            kind: "netem",
            module: "sch_netem",
        }),
    }
}

/// Builds the shaping for `spec` and returns where the classifier must steer.
pub async fn apply(sh: &ShapeSpec, spec: &FaultSpec, ctx: &mut ApplyCtx<'_>) -> Result<Steering, FaultError> {
    let backend = backend(sh)?;
    let leaf = (backend == "netem").then(|| Qdisc::Netem(netem_options(sh)));
    let rate = sh.rate.map(crate::spec::Rate::bytes_per_sec);
    if spec.target.direction.egress() {
        let (ifname, ifindex) = (ctx.ifname.clone(), ctx.ifindex);
        shape_device(ctx, &ifname, ifindex, leaf.as_ref(), rate, spec.force).await?;
    }
    if spec.target.direction.ingress() {
        ensure_clsact(ctx).await?;
        let name = ifb_name(ctx.id);
        ctx.txn.record(Undo::IfbLink { name: name.clone() })?;
        let ifb = ctx.tc.create_ifb(&name).await?;
        shape_device(ctx, &name, ifb, leaf.as_ref(), rate, true).await?;
        ctx.txn.record(Undo::MirredFilter { ifname: ctx.ifname.clone(), prio: MIRRED_PRIO })?;
        ctx.tc.add_mirred_redirect(ctx.ifindex, TC_H_CLSACT_INGRESS, MIRRED_PRIO, ifb).await?;
    }
    Ok(Steering { classid: fault_classid(SLOT), backend })
}

/// Snapshot, journal the restore, then install the steering root and the fault class.
async fn shape_device(
    ctx: &mut ApplyCtx<'_>,
    ifname: &str,
    ifindex: u32,
    leaf: Option<&Qdisc>,
    rate: Option<u64>,
    force: bool,
) -> Result<(), FaultError> {
    let tree = ctx.tc.snapshot(ifindex).await?;
    if let Some(root) = tree.root()
        && (root.handle >> 16) as u16 == crate::tc::OUR_MAJOR
    {
        return Err(FaultError::Busy { ifname: ifname.to_owned() });
    }
    if !force {
        is_faithfully_restorable(&tree).map_err(|reason| TcError::NotRestorable { ifindex, reason })?;
    }
    ctx.txn.record(Undo::RestoreQdisc { ifname: ifname.to_owned(), tree: Box::new(tree.clone()), force })?;
    ctx.tc.install_steering_root(ifindex, LINK_RATE_BPS, default_leaf_from(&tree).as_ref()).await?;
    ctx.tc.add_fault_slot(ifindex, SLOT, LINK_RATE_BPS, rate, leaf).await?;
    Ok(())
}

/// Dry-run description.
#[must_use]
pub fn plan(sh: &ShapeSpec, spec: &FaultSpec, ifname: &str) -> Vec<String> {
    let mut out = Vec::new();
    let what = match backend(sh) {
        Ok("netem") => {
            let o = netem_options(sh);
            format!("netem leaf (delay {:?}, jitter {:?}, limit {} packets)", o.delay, o.jitter, o.limit)
        }
        Ok(b) => format!("{b} class"),
        Err(e) => format!("REFUSED: {e}"),
    };
    let rate = sh.rate.map_or_else(|| "unshaped".to_owned(), |r| format!("rate {r}"));
    if spec.target.direction.egress() {
        out.push(format!("snapshot {ifname}'s qdisc tree, replace its root with htb c4a0: (restored exactly on revert); class c4a0:10 {rate} -> {what}"));
    }
    if spec.target.direction.ingress() {
        out.push(format!("create IFB chaos-ifb* with htb c4a0: and class c4a0:10 {rate} -> {what}; mirred redirect {ifname} ingress -> IFB (prio {MIRRED_PRIO:#x})"));
    }
    out.push(format!("classifier steers matching packets with skb->priority = {:#x}", fault_classid(SLOT)));
    out
}
