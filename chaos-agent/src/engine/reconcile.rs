//! Removes what a dead agent left behind: replays the undo lists of journal entries whose owner
//! is gone, then sweeps the kernel for objects with our names that no live journal claims.
//! Used at start-up and by `chaos-agent cleanup`; running it twice is harmless.
//!
//! A journal file that cannot be replayed is logged (one line: the file and why), moved to the
//! state dir's quarantine, and otherwise ignored: the other journals replay, the agent starts,
//! and the sweep still finds that fault's kernel objects by name.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use serde::Serialize;

use crate::txn::undo::{self, Undo, UndoCtx};

/// What a reconciliation did.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Journal entries of dead agents that were replayed.
    pub journals_replayed: usize,
    /// Journal entries left alone because their agent is alive.
    pub live_skipped: usize,
    /// Kernel objects removed, by kind.
    pub removed_by_kind: BTreeMap<String, usize>,
    /// Problems (left for the next run).
    pub errors: Vec<String>,
    /// Other live agents whose presence made us skip the by-name sweep.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sweep_skipped_for: Vec<u32>,
    /// Journal files that could not be replayed, moved aside.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<Quarantined>,
}

/// A journal file moved to the quarantine.
#[derive(Debug, Serialize)]
pub struct Quarantined {
    /// Where it was.
    pub file: PathBuf,
    /// Why it could not be replayed.
    pub why: String,
    /// Where it is now.
    pub moved_to: PathBuf,
}

impl Report {
    /// Total objects removed.
    #[must_use]
    pub fn removed(&self) -> usize {
        self.removed_by_kind.values().sum()
    }

    fn add(&mut self, kind: &str) {
        *self.removed_by_kind.entry(kind.to_owned()).or_default() += 1;
    }
}

/// Runs reconciliation.
pub async fn run(ctx: &UndoCtx) -> Report {
    let mut report = Report::default();
    let me = crate::txn::journal::Owner::current();
    let mut keep_filters: HashSet<(String, u32)> = HashSet::new();
    let mut keep_clsact: HashSet<String> = HashSet::new();
    let mut keep_roots: HashSet<String> = HashSet::new();
    let mut keep_mirred: HashSet<String> = HashSet::new();
    let entries = match ctx.journal.load_all() {
        Ok(e) => e,
        Err(e) => {
            report.errors.push(e.to_string());
            Vec::new()
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(bad) => {
                quarantine(ctx, &me, bad, &mut report);
                continue;
            }
        };
        if entry.owner == me || entry.owner.alive() {
            report.live_skipped += 1;
            for u in &entry.undo {
                match u {
                    Undo::NetlinkFilter { ifname, handle, .. }
                    | Undo::BpfHook { ifname, handle, .. } => {
                        keep_filters.insert((ifname.clone(), *handle));
                    }
                    Undo::Clsact { ifname } => {
                        keep_clsact.insert(ifname.clone());
                    }
                    Undo::RestoreQdisc { ifname, .. } => {
                        keep_roots.insert(ifname.clone());
                    }
                    Undo::IfbLink { name } => {
                        keep_roots.insert(name.clone());
                    }
                    Undo::MirredFilter { ifname, .. } => {
                        keep_mirred.insert(ifname.clone());
                    }
                    Undo::TcxLink { .. }
                    | Undo::BpfSlot { .. }
                    | Undo::BpfConnect { .. }
                    | Undo::BpfSocketIngress { .. }
                    | Undo::CgroupFile { .. }
                    | Undo::StressCgroup { .. }
                    | Undo::StressFile { .. } => {}
                }
            }
            continue;
        }
        tracing::warn!(event = "leftover", id = %entry.id, pid = entry.owner.pid, steps = entry.undo.len(), "removing a dead agent's fault");
        let (removed, errors) = undo::run_reversed(&entry.undo, ctx).await;
        for k in removed {
            report.add(k);
        }
        if errors.is_empty() {
            if let Err(e) = ctx.journal.remove(&entry.id) {
                report.errors.push(e.to_string());
            }
        } else {
            report.errors.extend(errors);
        }
        report.journals_replayed += 1;
    }
    // Objects with our names but no journal are only ours to remove if no other agent is alive:
    // a live agent may journal into another state dir (a second foreground inject, a daemon).
    report.sweep_skipped_for = crate::sys::other_agents();
    if report.sweep_skipped_for.is_empty() {
        let keep = Keep {
            filters: keep_filters,
            clsact: keep_clsact,
            roots: keep_roots,
            mirred: keep_mirred,
        };
        sweep(ctx, &keep, &mut report).await;
    } else {
        tracing::info!(pids = ?report.sweep_skipped_for, "other chaos-agent processes are running: only journaled leftovers of dead agents were removed");
    }
    report
}

/// Moves a journal file that cannot be replayed aside, with one log line saying which and why;
/// the sweep still finds its fault's kernel objects by name. The file of a newer agent that is
/// still running (it names its owner the way this version does) is left where it is.
fn quarantine(
    ctx: &UndoCtx,
    me: &crate::txn::journal::Owner,
    bad: crate::txn::journal::BadFile,
    report: &mut Report,
) {
    let file = bad.path.display().to_string();
    if let Some(owner) = bad.owner.filter(|o| o == me || o.alive()) {
        report.live_skipped += 1;
        tracing::warn!(event = "journal_unreadable", file = %file, pid = owner.pid, reason = %bad.why, "a running agent's journal file this agent cannot read: left alone");
        return;
    }
    match ctx.journal.quarantine(&bad.path) {
        Ok(to) => {
            tracing::error!(event = "journal_quarantined", file = %file, reason = %bad.why, moved_to = %to.display(), "journal file cannot be replayed: moved aside (its fault's kernel objects are swept by name)");
            report.quarantined.push(Quarantined {
                file: bad.path,
                why: bad.why,
                moved_to: to,
            });
        }
        // Left in place: the caller reports the errors (the daemon logs each, cleanup prints
        // them and fails), and the next start tries again.
        Err(e) => report.errors.push(format!(
            "journal file {file} cannot be replayed ({}) nor moved aside: {e}",
            bad.why
        )),
    }
}

/// What live agents still use.
struct Keep {
    filters: HashSet<(String, u32)>,
    clsact: HashSet<String>,
    roots: HashSet<String>,
    mirred: HashSet<String>,
}

/// Removes objects with our names that no live journal claims: `cls_bpf` filters named
/// `chaos_tc_*`, mirred filters at our priority, root qdiscs with our handle major (the kernel's
/// default root comes back), `chaos-ifb*` devices, and clsact qdiscs we created.
async fn sweep(ctx: &UndoCtx, keep: &Keep, report: &mut Report) {
    let links = match ctx.tc.links().await {
        Ok(l) => l,
        Err(e) => {
            report.errors.push(e.to_string());
            return;
        }
    };
    for (ifindex, ifname) in &links {
        let filters = match ctx.tc.our_bpf_filters(*ifindex).await {
            Ok(f) => f,
            Err(e) => {
                report.errors.push(e.to_string());
                continue;
            }
        };
        for f in filters {
            if keep.filters.contains(&(ifname.clone(), f.handle)) {
                continue;
            }
            match ctx
                .tc
                .delete_our_bpf_filter(*ifindex, f.hook, f.priority, f.handle)
                .await
            {
                Ok(true) => {
                    tracing::warn!(event = "leftover", iface = %ifname, hook = f.hook.as_str(), handle = f.handle, "removed an unjournaled filter of ours");
                    report.add("tc_filter");
                }
                Ok(false) => {}
                Err(e) => report.errors.push(e.to_string()),
            }
        }
    }
    // Mirred redirects first: with its IFB gone a mirred filter would drop all ingress traffic.
    for (ifindex, ifname) in &links {
        if keep.mirred.contains(ifname) {
            continue;
        }
        match ctx
            .tc
            .delete_filter(
                *ifindex,
                crate::kernel::tc::TC_H_CLSACT_INGRESS,
                crate::faults::shape::netem::MIRRED_PRIO,
            )
            .await
        {
            Ok(true) => report.add("mirred_filter"),
            Ok(false) => {}
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    for (ifindex, ifname) in &links {
        if keep.roots.contains(ifname) {
            continue;
        }
        if ifname.starts_with("chaos-ifb") {
            match ctx.tc.delete_link(ifname).await {
                Ok(true) => report.add("ifb"),
                Ok(false) => {}
                Err(e) => report.errors.push(e.to_string()),
            }
            continue;
        }
        match ctx.tc.find_ours(*ifindex).await {
            Ok(Some(_)) => match ctx
                .tc
                .delete_qdisc(
                    *ifindex,
                    crate::kernel::tc::TC_H_ROOT,
                    crate::kernel::tc::OUR_ROOT,
                )
                .await
            {
                Ok(true) => report.add("qdisc_root"),
                Ok(false) => {}
                Err(e) => report.errors.push(e.to_string()),
            },
            Ok(None) => {}
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    for (kind, ifname) in ctx.journal.owned_markers() {
        if kind != "clsact" || keep.clsact.contains(&ifname) {
            continue;
        }
        match (Undo::Clsact { ifname }).run(ctx).await {
            Ok(true) => report.add("clsact"),
            Ok(false) => {}
            Err(e) => report.errors.push(e.to_string()),
        }
    }
}
