//! Undo records: what reverses each kernel change. They are serialised into the journal before
//! the change is made, and running one is idempotent ("already gone" is success), so the same
//! list serves a normal revert, a failed apply's rollback and a restarted agent's cleanup.

use serde::{Deserialize, Serialize};

use super::journal::Journal;
use crate::kernel::bpf::{AttachMode, Datapath, EbpfError};
use crate::kernel::tc::Hook;
use crate::sys::ifindex;

/// One reversible kernel change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Undo {
    /// A slot of the agent's fault table: the fault's filters, parameters and counters. The
    /// maps die with the agent (or, on the netlink path, with its filters, and the slot's own
    /// kernel deadline disarms it before that), so there is nothing to replay after a crash.
    BpfSlot {
        /// The slot.
        slot: u32,
    },
    /// A slot joined to the agent's programs on an interface and direction. The attachment is
    /// shared by every fault of that agent there, and each of them journals it. In the live
    /// agent the undo takes the slot off the hook and detaches the programs once no fault is
    /// left on it; for a dead agent's journal, the `cls_bpf` filter with the agent's handle is
    /// deleted (a tcx link died with the agent).
    BpfHook {
        /// The slot that joined.
        slot: u32,
        /// Interface.
        ifname: String,
        /// Hook.
        hook: Hook,
        /// tcx or netlink.
        mode: AttachMode,
        /// Filter priority (netlink).
        priority: u16,
        /// The agent's filter handle (netlink).
        handle: u32,
    },
    /// A slot joined to the connect hook of a network namespace (refuse faults), whose programs
    /// are attached to the cgroup v2 root by `bpf_link`s. In the live agent the undo takes the
    /// slot off the hook and detaches the programs once no refuse fault is left; a dead agent's
    /// links died with its fds, so there is nothing to replay.
    BpfConnect {
        /// The slot that joined.
        slot: u32,
        /// The network namespace's cookie.
        netns_cookie: u64,
        /// The agent's filter handle (which agent's datapath).
        handle: u32,
    },
    /// A slot joined to the socket-ingress hook of an interface (faults scoped to processes,
    /// at ingress), whose program is attached to the cgroup v2 root by a `bpf_link`. As for
    /// [`Undo::BpfConnect`]: the live agent takes the slot off and detaches the program once no
    /// such fault is left; a dead agent's link died with it.
    BpfSocketIngress {
        /// The slot that joined.
        slot: u32,
        /// The interface whose received packets it acts on.
        ifname: String,
        /// The agent's filter handle (which agent's datapath).
        handle: u32,
    },
    /// A tcx link of a per-fault program (journals of versions before the shared datapath).
    /// The kernel detaches it when the agent's fd closes, so there is nothing to replay.
    TcxLink {
        /// Interface.
        ifname: String,
        /// Hook.
        hook: Hook,
    },
    /// A `cls_bpf` filter of a per-fault program at a known priority and handle (netlink attach
    /// path; journals of versions before the shared datapath).
    NetlinkFilter {
        /// Interface.
        ifname: String,
        /// Hook.
        hook: Hook,
        /// Filter priority.
        priority: u16,
        /// Filter handle.
        handle: u32,
    },
    /// A clsact qdisc the agent created: removed once no filter is left on it.
    Clsact {
        /// Interface.
        ifname: String,
    },
    /// The device's qdisc tree before the agent replaced its root: restored exactly.
    RestoreQdisc {
        /// Interface.
        ifname: String,
        /// The snapshot.
        tree: Box<crate::kernel::tc::QdiscTree>,
        /// Restore even what cannot be checked exactly.
        force: bool,
    },
    /// An IFB device the agent created.
    IfbLink {
        /// Device name.
        name: String,
    },
    /// The mirred filter that sends an interface's ingress traffic through an IFB.
    MirredFilter {
        /// Interface.
        ifname: String,
        /// Filter priority under clsact ingress.
        prio: u16,
    },
    /// A cgroup controller file the agent wrote (a limit fault): `previous` goes back unless
    /// the file no longer holds `written` (someone else changed it: theirs stays, logged and
    /// counted), and a cgroup that is gone has nothing to restore. The same for the live agent
    /// and a dead agent's journal: the value stays in the kernel until written back.
    CgroupFile {
        /// The file (`/sys/fs/cgroup/.../cpu.max`).
        path: std::path::PathBuf,
        /// Its value before the fault.
        previous: String,
        /// What the fault wrote.
        written: String,
        /// In a nested-keyed file (`io.max`, v1 `blkio.throttle.*`): the line's key, a
        /// device's `MAJ:MIN`; `previous` and `written` are that line, and the other lines
        /// are never touched. (Journals from before keyed files have none.)
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// A cgroup the agent made for a stress fault's stressor: every process still in it is
    /// killed, and it is removed. A dead agent's stressor died with it (`PR_SET_PDEATHSIG`);
    /// the directory stays until this runs.
    StressCgroup {
        /// The cgroup's directory.
        path: std::path::PathBuf,
    },
    /// The file an IO stressor reads and writes: removed (it is ours alone: the agent made it
    /// with `O_EXCL` under a name of the fault's id).
    StressFile {
        /// The file.
        path: std::path::PathBuf,
    },
}

/// Why an undo failed.
#[derive(Debug, thiserror::Error)]
pub enum UndoError {
    /// A kernel request failed.
    #[error(transparent)]
    Kernel(#[from] EbpfError),
    /// A traffic-control request failed.
    #[error(transparent)]
    Tc(#[from] crate::kernel::tc::TcError),
    /// The journal could not be updated.
    #[error(transparent)]
    Journal(#[from] super::journal::JournalError),
    /// A cgroup file could not be read or written back.
    #[error(transparent)]
    Cgroup(#[from] crate::kernel::cgroup::CgroupError),
}

/// What an undo needs.
#[derive(Debug, Clone)]
pub struct UndoCtx {
    /// The journal (for ownership markers).
    pub journal: Journal,
    /// Traffic-control client.
    pub tc: crate::kernel::tc::Tc,
    /// The live agent's datapath (`None` in `cleanup`, which only replays dead agents').
    pub dp: Option<Datapath>,
}

impl Undo {
    /// Short name of the kind of object, for metrics and logs.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BpfSlot { .. } => "bpf_slot",
            Self::BpfHook {
                mode: AttachMode::Netlink,
                ..
            }
            | Self::NetlinkFilter { .. } => "tc_filter",
            Self::BpfHook { .. } | Self::TcxLink { .. } => "tcx_link",
            Self::BpfConnect { .. } | Self::BpfSocketIngress { .. } => "cgroup_link",
            Self::Clsact { .. } => "clsact",
            Self::RestoreQdisc { .. } => "qdisc_root",
            Self::IfbLink { .. } => "ifb",
            Self::MirredFilter { .. } => "mirred_filter",
            Self::CgroupFile { .. } => "cgroup_value",
            Self::StressCgroup { .. } => "stressor",
            Self::StressFile { .. } => "stressor_file",
        }
    }

    /// Human description.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::BpfSlot { slot } => format!("fault table slot {slot}"),
            Self::BpfHook {
                ifname,
                hook,
                mode,
                priority,
                handle,
                ..
            } => format!(
                "datapath on {ifname} {} ({}, prio {priority} handle {handle:#x})",
                hook.as_str(),
                mode.as_str()
            ),
            Self::BpfConnect { netns_cookie, .. } => {
                format!("connect hook of network namespace {netns_cookie} (cgroup v2 root)")
            }
            Self::BpfSocketIngress { ifname, .. } => {
                format!("socket-ingress hook of {ifname} (cgroup v2 root)")
            }
            Self::TcxLink { ifname, hook } => format!("tcx link on {ifname} {}", hook.as_str()),
            Self::NetlinkFilter {
                ifname,
                hook,
                priority,
                handle,
            } => {
                format!(
                    "cls_bpf filter on {ifname} {} prio {priority} handle {handle:#x}",
                    hook.as_str()
                )
            }
            Self::Clsact { ifname } => format!("clsact qdisc on {ifname}"),
            Self::RestoreQdisc { ifname, .. } => {
                format!("qdisc tree of {ifname} (restore snapshot)")
            }
            Self::IfbLink { name } => format!("IFB device {name}"),
            Self::MirredFilter { ifname, prio } => {
                format!("mirred filter on {ifname} ingress prio {prio:#x}")
            }
            Self::CgroupFile {
                path,
                previous,
                key: None,
                ..
            } => format!("{} (back to {previous:?})", path.display()),
            Self::CgroupFile {
                path,
                previous,
                key: Some(key),
                ..
            } => format!("{} line {key} (back to {previous:?})", path.display()),
            Self::StressCgroup { path } => {
                format!("stressor cgroup {} (killed and removed)", path.display())
            }
            Self::StressFile { path } => format!("IO stressor file {} (removed)", path.display()),
        }
    }

    /// Reverses the change. Returns whether anything was actually removed (false: already gone).
    pub async fn run(&self, ctx: &UndoCtx) -> Result<bool, UndoError> {
        match self {
            Self::BpfSlot { slot } => match &ctx.dp {
                Some(dp) => Ok(dp.release_slot(*slot)?),
                None => Ok(false),
            },
            Self::BpfHook {
                slot,
                ifname,
                hook,
                mode,
                priority,
                handle,
            } => {
                if let Some(dp) = ctx.dp.as_ref().filter(|dp| dp.owns(*handle)) {
                    return Ok(dp.leave_hook(*slot, ifname, *hook)?);
                }
                if *mode != AttachMode::Netlink {
                    return Ok(false);
                }
                delete_filter(ctx, ifname, *hook, *priority, *handle).await
            }
            Self::BpfConnect { slot, handle, .. } => {
                match ctx.dp.as_ref().filter(|dp| dp.owns(*handle)) {
                    Some(dp) => Ok(dp.leave_connect(*slot)?),
                    None => Ok(false),
                }
            }
            Self::BpfSocketIngress { slot, handle, .. } => {
                match ctx.dp.as_ref().filter(|dp| dp.owns(*handle)) {
                    Some(dp) => Ok(dp.leave_socket_ingress(*slot)?),
                    None => Ok(false),
                }
            }
            Self::TcxLink { .. } => Ok(false),
            Self::NetlinkFilter {
                ifname,
                hook,
                priority,
                handle,
            } => delete_filter(ctx, ifname, *hook, *priority, *handle).await,
            Self::Clsact { ifname } => {
                let Ok(ifindex) = ifindex(ifname) else {
                    ctx.journal.unmark_owned("clsact", ifname)?;
                    return Ok(false);
                };
                if !ctx.journal.is_owned("clsact", ifname) {
                    return Ok(false);
                }
                let deleted = ctx.tc.delete_clsact_if_unused(ifindex).await?;
                if deleted || !ctx.tc.has_clsact(ifindex).await? {
                    ctx.journal.unmark_owned("clsact", ifname)?;
                }
                Ok(deleted)
            }
            Self::RestoreQdisc {
                ifname,
                tree,
                force,
            } => {
                let Ok(ifindex) = ifindex(ifname) else {
                    return Ok(false);
                };
                if ctx.tc.find_ours(ifindex).await?.is_none() {
                    return Ok(false);
                }
                let mut tree = (**tree).clone();
                tree.ifindex = ifindex;
                ctx.tc.restore(&tree, *force).await?;
                Ok(true)
            }
            Self::IfbLink { name } => Ok(ctx.tc.delete_link(name).await?),
            Self::MirredFilter { ifname, prio } => {
                let Ok(ifindex) = ifindex(ifname) else {
                    return Ok(false);
                };
                Ok(ctx
                    .tc
                    .delete_filter(ifindex, crate::kernel::tc::TC_H_CLSACT_INGRESS, *prio)
                    .await?)
            }
            Self::CgroupFile {
                path,
                previous,
                written,
                key,
            } => restore_cgroup_file(path, key.as_deref(), previous, written),
            Self::StressCgroup { path } => Ok(crate::kernel::cgroup::kill_and_remove(path)?),
            Self::StressFile { path } => match std::fs::remove_file(path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(source) => Err(crate::kernel::cgroup::CgroupError::File {
                    op: "remove",
                    path: path.clone(),
                    source,
                }
                .into()),
            },
        }
    }
}

/// Writes `previous` back into a cgroup file that still holds what the agent wrote.
fn restore_cgroup_file(
    path: &std::path::Path,
    key: Option<&str>,
    previous: &str,
    written: &str,
) -> Result<bool, UndoError> {
    use crate::kernel::cgroup;
    let now = match cgroup::read_value(path, key) {
        Ok(v) => v,
        // The cgroup went with its processes: nothing is left to restore.
        Err(cgroup::CgroupError::File { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    };
    if cgroup::same_value(&now, previous) {
        // Never written (the step was journaled, then cut short), or already restored.
        return Ok(false);
    }
    if !cgroup::same_value(&now, written) {
        cgroup::KEPT_FOREIGN.inc();
        tracing::warn!(event = "restore_skipped", file = %path.display(), ours = %written, theirs = %now, previous = %previous, "someone else changed a limit during the fault: theirs is kept");
        return Ok(false);
    }
    cgroup::write(path, previous)?;
    Ok(true)
}

/// Deletes one of our `cls_bpf` filters; an interface that is gone has none left.
async fn delete_filter(
    ctx: &UndoCtx,
    ifname: &str,
    hook: Hook,
    priority: u16,
    handle: u32,
) -> Result<bool, UndoError> {
    let Ok(ifindex) = ifindex(ifname) else {
        return Ok(false);
    };
    Ok(ctx
        .tc
        .delete_our_bpf_filter(ifindex, hook, priority, handle)
        .await?)
}

/// Runs undo records in reverse order, continuing past failures. Returns (removed, errors).
pub async fn run_reversed(undo: &[Undo], ctx: &UndoCtx) -> (Vec<&'static str>, Vec<String>) {
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    for u in undo.iter().rev() {
        match u.run(ctx).await {
            Ok(true) => removed.push(u.kind()),
            Ok(false) => {}
            Err(e) => errors.push(format!("{}: {e}", u.describe())),
        }
    }
    (removed, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal written before keyed cgroup files (no `key`) still reads, and a whole-file
    /// record is written the same way as then.
    #[test]
    fn a_cgroup_file_record_from_before_keyed_lines_still_reads() {
        let old = r#"{"op":"cgroup_file","path":"/sys/fs/cgroup/cpu/x/cpu.cfs_quota_us","previous":"-1","written":"20000"}"#;
        let u: Undo = serde_json::from_str(old).expect("old record");
        assert_eq!(
            u,
            Undo::CgroupFile {
                path: "/sys/fs/cgroup/cpu/x/cpu.cfs_quota_us".into(),
                previous: "-1".into(),
                written: "20000".into(),
                key: None,
            }
        );
        assert_eq!(serde_json::to_string(&u).expect("json"), old);
        let keyed = Undo::CgroupFile {
            path: "/sys/fs/cgroup/x/io.max".into(),
            previous: "8:0 rbps=max wbps=max riops=max wiops=max".into(),
            written: "8:0 rbps=max wbps=4194304 riops=max wiops=max".into(),
            key: Some("8:0".into()),
        };
        let back: Undo =
            serde_json::from_str(&serde_json::to_string(&keyed).expect("json")).expect("reads");
        assert_eq!(back, keyed);
        assert!(keyed.describe().contains("line 8:0"));
    }
}
