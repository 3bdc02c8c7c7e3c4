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
//! Backends (`Backend`): `netem` where `sch_netem` exists; a pure `--rate` needs only HTB. A delay
//! with at most a uniform jitter, on egress, falls back to EDT where only `sch_fq` exists: the
//! root becomes an agent-owned fq (`c4a0:`, snapshot journaled exactly as for HTB) and the egress
//! program sets `skb->tstamp` (`F_EDT`), which fq honours (EDT in fq since 4.20). The stamp is
//! set on the same device whose root is fq: before 5.18 it did not survive a netns crossing, and
//! no other qdisc honours it. Anything else without netem is refused before anything changes,
//! naming the module(s) to load. `--shaping-backend` forces one backend.

use std::time::Duration;

use super::super::packet::{Steering, ensure_clsact};
use super::super::{ApplyCtx, FaultError, FaultSpec};
use super::{JitterDistribution, ShapeSpec, ShapingBackend};
use crate::kernel::tc::{
    Distribution, FqOptions, NetemOptions, OUR_ROOT, Qdisc, QdiscTree, TC_H_CLSACT_INGRESS,
    TC_H_ROOT, TcError, default_leaf_from, fault_classid, is_faithfully_restorable, netem_limit,
};
use crate::target::Direction;
use crate::txn::undo::Undo;

/// Rate of the classes that must never be the bottleneck (bytes/s): 100 Gbit/s. The steering
/// root's default class carries all untargeted traffic at this rate.
pub const LINK_RATE_BPS: u64 = 100_000_000_000 / 8;
/// Priority of the mirred filter that sends ingress traffic through the IFB: right after our
/// own `cls_bpf` filters (`0xC4A0`), so our ingress program has written `skb->priority` first.
pub const MIRRED_PRIO: u16 = 0xC4A1;
/// The fault slot used under an agent root (one shaping fault per device and direction).
pub const SLOT: u16 = 0;

/// Name of the IFB device of fault `id` (15 bytes: `chaos-ifb` + 6 hex digits).
#[must_use]
pub fn ifb_name(id: crate::txn::FaultId) -> String {
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
        limit: netem_limit(
            delay,
            jitter,
            sh.rate.map(|r| r.bits_per_sec),
            LINK_RATE_BPS * 8,
        ),
        ..NetemOptions::default()
    }
}

/// The mechanism that implements a shaping fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Only a rate: an HTB class, no leaf.
    Htb,
    /// A netem leaf under the agent's HTB root.
    Netem,
    /// `skb->tstamp` set by the egress program, honoured by an agent-owned fq root.
    Edt,
}

impl Backend {
    /// Name for reports (`ebpf/netlink + edt`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Htb => "htb",
            Self::Netem => "netem",
            Self::Edt => "edt",
        }
    }
}

/// The backend a spec needs, or why this kernel cannot do it. Qdisc kinds are probed in a
/// throwaway network namespace, so nothing on the host changes.
#[allow(
    clippy::result_large_err,
    reason = "FaultError is the fault modules' error; this runs once per inject"
)]
pub fn backend(sh: &ShapeSpec, direction: Direction) -> Result<Backend, FaultError> {
    if !sh.needs_netem() {
        return Ok(Backend::Htb);
    }
    let probes = crate::doctor::probe_qdiscs(&["netem", "fq"]);
    let have = |kind: &str| {
        probes
            .iter()
            .any(|(k, r)| *k == kind && matches!(r, Ok(crate::doctor::QdiscProbe::Present)))
    };
    choose_backend(sh, direction, have("netem"), have("fq"))
}

/// [`backend`]'s decision, given which qdisc kinds the kernel has.
#[allow(
    clippy::result_large_err,
    reason = "FaultError is the fault modules' error; this runs once per inject"
)]
pub fn choose_backend(
    sh: &ShapeSpec,
    direction: Direction,
    netem: bool,
    fq: bool,
) -> Result<Backend, FaultError> {
    if !sh.needs_netem() {
        return Ok(Backend::Htb);
    }
    let netem_missing = || FaultError::Unsupported {
        what: "delay, jitter, corrupt, duplicate and reorder",
        kind: "netem",
        module: "sch_netem",
    };
    match sh.backend {
        ShapingBackend::Netem => netem.then_some(Backend::Netem).ok_or_else(netem_missing),
        // Validation already limited a forced EDT to egress delay/jitter.
        ShapingBackend::Edt => fq.then_some(Backend::Edt).ok_or(FaultError::Unsupported {
            what: "EDT delay (--shaping-backend edt)",
            kind: "fq",
            module: "sch_fq",
        }),
        ShapingBackend::Auto if netem => Ok(Backend::Netem),
        // What only netem can do (or ingress, where no fq root sees the packet) is refused
        // naming netem alone: loading fq would not help.
        ShapingBackend::Auto if sh.edt_unsupported().is_some() || direction.ingress() => {
            Err(netem_missing())
        }
        ShapingBackend::Auto if fq => Ok(Backend::Edt),
        ShapingBackend::Auto => Err(FaultError::NoDelayBackend),
    }
}

/// fq options for an EDT delay. fq's defaults would turn the fault into loss: `horizon_drop`
/// drops packets stamped more than `horizon` (10 s) ahead, and `flow_limit` (100 packets) is
/// what a delayed flow queues within a few ms. So: the horizon covers twice the longest
/// delay and caps instead of dropping, and both limits are sized like netem's queue.
#[must_use]
pub fn fq_options(sh: &ShapeSpec) -> FqOptions {
    let delay = sh.delay.unwrap_or(Duration::ZERO);
    let jitter = sh.jitter.unwrap_or(Duration::ZERO);
    let limit = netem_limit(delay, jitter, None, LINK_RATE_BPS * 8);
    FqOptions {
        limit: Some(limit),
        flow_limit: Some(limit),
        horizon: Some((2 * (delay + jitter)).max(Duration::from_secs(10))),
        horizon_drop: Some(false),
    }
}

/// The EDT parameters the classifier writes into `FaultConfig` (microseconds).
#[must_use]
pub fn edt_delay(sh: &ShapeSpec) -> EdtDelay {
    let us = |d: Option<Duration>| {
        u32::try_from(d.unwrap_or(Duration::ZERO).as_micros()).unwrap_or(u32::MAX)
    };
    EdtDelay {
        delay_us: us(sh.delay),
        jitter_us: us(sh.jitter),
    }
}

/// Delay and jitter for the egress program's EDT path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdtDelay {
    /// Added delay, µs.
    pub delay_us: u32,
    /// Uniform jitter half-width, µs.
    pub jitter_us: u32,
}

/// Builds the shaping for `spec` and returns what the classifier must do to matching packets.
pub async fn apply(
    sh: &ShapeSpec,
    spec: &FaultSpec,
    ctx: &mut ApplyCtx<'_>,
) -> Result<Steering, FaultError> {
    let backend = backend(sh, spec.target.hook_direction())?;
    if backend == Backend::Edt {
        // Egress only (validation, or `backend` for auto). No class to steer into: fq does not
        // classify, every packet of the device passes it and only stamped ones wait.
        let (ifname, ifindex) = (ctx.ifname.clone(), ctx.ifindex);
        journal_root(ctx, &ifname, ifindex, spec.force).await?;
        ctx.tc
            .replace_qdisc(ifindex, TC_H_ROOT, OUR_ROOT, &Qdisc::Fq(fq_options(sh)))
            .await?;
        return Ok(Steering {
            classid: None,
            edt: Some(edt_delay(sh)),
            backend: backend.as_str(),
        });
    }
    let leaf = (backend == Backend::Netem).then(|| Qdisc::Netem(netem_options(sh)));
    let rate = sh.rate.map(super::Rate::bytes_per_sec);
    if spec.target.hook_direction().egress() {
        let (ifname, ifindex) = (ctx.ifname.clone(), ctx.ifindex);
        shape_device(ctx, &ifname, ifindex, leaf.as_ref(), rate, spec.force).await?;
    }
    if spec.target.hook_direction().ingress() {
        ensure_clsact(ctx).await?;
        let name = ifb_name(ctx.id);
        ctx.txn.record(Undo::IfbLink { name: name.clone() })?;
        let ifb = ctx.tc.create_ifb(&name).await?;
        shape_device(ctx, &name, ifb, leaf.as_ref(), rate, true).await?;
        ctx.txn.record(Undo::MirredFilter {
            ifname: ctx.ifname.clone(),
            prio: MIRRED_PRIO,
        })?;
        ctx.tc
            .add_mirred_redirect(ctx.ifindex, TC_H_CLSACT_INGRESS, MIRRED_PRIO, ifb)
            .await?;
    }
    Ok(Steering {
        classid: Some(fault_classid(SLOT)),
        edt: None,
        backend: backend.as_str(),
    })
}

/// Snapshots the device's tree, refuses a root that is already ours (or, without `force`, a tree
/// that cannot be put back exactly), and journals its restore: the step before replacing the root.
async fn journal_root(
    ctx: &mut ApplyCtx<'_>,
    ifname: &str,
    ifindex: u32,
    force: bool,
) -> Result<QdiscTree, FaultError> {
    let tree = ctx.tc.snapshot(ifindex).await?;
    if let Some(root) = tree.root()
        && (root.handle >> 16) as u16 == crate::kernel::tc::OUR_MAJOR
    {
        return Err(FaultError::Busy {
            ifname: ifname.to_owned(),
        });
    }
    if !force {
        is_faithfully_restorable(&tree)
            .map_err(|reason| TcError::NotRestorable { ifindex, reason })?;
    }
    ctx.txn.record(Undo::RestoreQdisc {
        ifname: ifname.to_owned(),
        tree: Box::new(tree.clone()),
        force,
    })?;
    Ok(tree)
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
    let tree = journal_root(ctx, ifname, ifindex, force).await?;
    ctx.tc
        .install_steering_root(ifindex, LINK_RATE_BPS, default_leaf_from(&tree).as_ref())
        .await?;
    ctx.tc
        .add_fault_slot(ifindex, SLOT, LINK_RATE_BPS, rate, leaf)
        .await?;
    Ok(())
}

/// Dry-run description.
#[must_use]
pub fn plan(sh: &ShapeSpec, spec: &FaultSpec, ifname: &str) -> Vec<String> {
    let mut out = Vec::new();
    let what = match backend(sh, spec.target.hook_direction()) {
        Ok(Backend::Edt) => {
            let o = fq_options(sh);
            let e = edt_delay(sh);
            out.push(format!(
                "backend edt ({}): snapshot {ifname}'s qdisc tree, replace its root with fq c4a0: (horizon {:?}, beyond it capped not dropped; limit and flow_limit {} packets) (restored exactly on revert)",
                if sh.backend == ShapingBackend::Edt { "forced" } else { "this kernel has sch_fq but no sch_netem" },
                o.horizon.unwrap_or_default(),
                o.limit.unwrap_or_default(),
            ));
            out.push(format!(
                "egress program sets skb->tstamp = max(tstamp, now) + {} us +/- {} us (uniform) on matching packets; fq holds each until then and sends a flow's packets in departure-time order (jitter reorders within a flow, as netem's does)",
                e.delay_us, e.jitter_us
            ));
            return out;
        }
        Ok(Backend::Netem) => {
            let o = netem_options(sh);
            format!(
                "netem leaf (delay {:?}, jitter {:?}, limit {} packets)",
                o.delay, o.jitter, o.limit
            )
        }
        Ok(b) => format!("{} class", b.as_str()),
        Err(e) => format!("REFUSED: {e}"),
    };
    let rate = sh
        .rate
        .map_or_else(|| "unshaped".to_owned(), |r| format!("rate {r}"));
    if spec.target.hook_direction().egress() {
        out.push(format!("snapshot {ifname}'s qdisc tree, replace its root with htb c4a0: (restored exactly on revert); class c4a0:10 {rate} -> {what}"));
    }
    if spec.target.hook_direction().ingress() {
        out.push(format!("create IFB chaos-ifb* with htb c4a0: and class c4a0:10 {rate} -> {what}; mirred redirect {ifname} ingress -> IFB (prio {MIRRED_PRIO:#x})"));
    }
    out.push(format!(
        "classifier steers matching packets with skb->priority = {:#x}",
        fault_classid(SLOT)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(j: &str) -> ShapeSpec {
        serde_json::from_str(j).unwrap()
    }

    #[test]
    fn backend_by_what_the_kernel_has() {
        let delay = shape(r#"{"delay":"100ms","jitter":"10ms"}"#);
        let eg = Direction::Egress;
        assert_eq!(
            choose_backend(&delay, eg, true, true).unwrap(),
            Backend::Netem
        );
        assert_eq!(
            choose_backend(&delay, eg, false, true).unwrap(),
            Backend::Edt
        );
        let none = choose_backend(&delay, eg, false, false)
            .unwrap_err()
            .to_string();
        assert!(
            none.contains("sch_netem")
                && none.contains("sch_fq")
                && none.contains("nothing was changed"),
            "{none}"
        );
        // Only netem can: ingress, corruption, a rate with the delay.
        for (s, dir) in [
            (delay.clone(), Direction::Ingress),
            (delay.clone(), Direction::Both),
            (shape(r#"{"delay":"100ms","corrupt":0.1}"#), eg),
            (shape(r#"{"delay":"100ms","rate":"1mbit"}"#), eg),
        ] {
            let e = choose_backend(&s, dir, false, true)
                .unwrap_err()
                .to_string();
            assert!(e.contains("sch_netem") && !e.contains("sch_fq"), "{e}");
        }
        // A rate alone is HTB whatever the kernel has.
        assert_eq!(
            choose_backend(&shape(r#"{"rate":"1mbit"}"#), eg, false, false).unwrap(),
            Backend::Htb
        );
        // Forced.
        let edt = shape(r#"{"delay":"100ms","backend":"edt"}"#);
        assert_eq!(choose_backend(&edt, eg, true, true).unwrap(), Backend::Edt);
        assert!(
            choose_backend(&edt, eg, true, false)
                .unwrap_err()
                .to_string()
                .contains("sch_fq")
        );
        let netem = shape(r#"{"delay":"100ms","backend":"netem"}"#);
        assert!(
            choose_backend(&netem, eg, false, true)
                .unwrap_err()
                .to_string()
                .contains("sch_netem")
        );
    }

    #[test]
    fn fq_never_drops_a_delayed_packet_by_default_limits() {
        let o = fq_options(&shape(r#"{"delay":"30s","jitter":"10s"}"#));
        assert_eq!(o.horizon, Some(Duration::from_secs(80)));
        assert_eq!(o.horizon_drop, Some(false));
        let o = fq_options(&shape(r#"{"delay":"100ms"}"#));
        assert_eq!(
            o.horizon,
            Some(Duration::from_secs(10)),
            "never below fq's default"
        );
        assert!(
            o.flow_limit.unwrap() >= 100_000 && o.limit == o.flow_limit,
            "{o:?}"
        );
        assert_eq!(
            edt_delay(&shape(r#"{"delay":"100ms","jitter":"1500us"}"#)),
            EdtDelay {
                delay_us: 100_000,
                jitter_us: 1500
            }
        );
    }
}
