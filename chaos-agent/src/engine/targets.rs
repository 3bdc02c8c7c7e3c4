//! Ends a fault whose target is gone (reason `target-gone`): a fault limited to the processes
//! of a cgroup (`--cgroup`, `--unit`, `--pid`, `--container`) has nothing left to act on once
//! that cgroup is removed (the unit stopped, the container exited), and a cgroup made again
//! under the same path is another target. The engine watches the parent directory of each
//! scoped fault's cgroup with inotify: cgroupfs (kernfs) raises `IN_DELETE` with the name on
//! the parent when a cgroup is removed, but no `IN_DELETE_SELF` on the cgroup itself (measured
//! on 6.18). An idle agent and unscoped faults cost nothing: no polling. The inotify instance
//! and its task exist from the first scoped fault on.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd as _, AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt as _;
use std::sync::{Arc, Mutex};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;

use super::{Engine, FaultId, RevertReason};
use crate::sys::cgroup::Tree;
use crate::target::Target;

/// The inotify instance, readable through tokio.
struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Which faults each watched cgroup ends: by parent directory's watch, then by name.
#[derive(Default)]
struct Table {
    by_wd: HashMap<WatchDescriptor, HashMap<String, HashSet<FaultId>>>,
    /// A fault's watched cgroups: its scope's, and for a pod its sandbox's too.
    by_fault: HashMap<FaultId, Vec<(WatchDescriptor, String)>>,
}

/// The watcher: one inotify instance for every scoped fault of the agent.
pub(super) struct Targets {
    fd: Arc<AsyncFd<Fd>>,
    tree: Tree,
    table: Mutex<Table>,
}

impl std::fmt::Debug for Targets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Targets").finish_non_exhaustive()
    }
}

impl Targets {
    fn new() -> std::io::Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        // SAFETY: `Fd` owns the inotify descriptor, which stays open, the same file, for as
        // long as the `AsyncFd` (and so `Fd`) lives, and `as_raw_fd` always returns it.
        let fd = unsafe { AsyncFd::register(Fd(inotify)) }?;
        Ok(Self {
            fd: Arc::new(fd),
            tree: Tree::open()?,
            table: Mutex::new(Table::default()),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Watches `cgroup` for fault `id`. False if the cgroup is already gone, or is no longer
    /// the one the fault resolved (`cgroup_id`): the caller ends the fault. The root cgroup,
    /// which cannot go, is not watched.
    fn watch(&self, id: FaultId, cgroup: &str, cgroup_id: u64) -> std::io::Result<bool> {
        let trimmed = cgroup.trim_end_matches('/');
        let Some((parent, name)) = trimmed.rsplit_once('/').filter(|(_, n)| !n.is_empty()) else {
            return Ok(true);
        };
        let wd = self.fd.get_ref().0.add_watch(
            &self.tree.path_of(parent),
            AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM | AddWatchFlags::IN_ONLYDIR,
        )?;
        {
            let mut t = self.table();
            t.by_wd
                .entry(wd)
                .or_default()
                .entry(name.to_owned())
                .or_default()
                .insert(id);
            t.by_fault
                .entry(id)
                .or_default()
                .push((wd, name.to_owned()));
        }
        // Checked after the watch is in place, so a removal in between is seen one way or the
        // other.
        match std::fs::metadata(self.tree.path_of(trimmed)) {
            Ok(m) => Ok(m.ino() == cgroup_id),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Forgets fault `id` (it ended); a parent no fault needs any more is no longer watched.
    fn forget(&self, id: FaultId) {
        let mut t = self.table();
        self.drop_fault(&mut t, id);
    }

    fn drop_fault(&self, t: &mut Table, id: FaultId) {
        for (wd, name) in t.by_fault.remove(&id).unwrap_or_default() {
            let Some(names) = t.by_wd.get_mut(&wd) else {
                continue;
            };
            if let Some(ids) = names.get_mut(&name) {
                ids.remove(&id);
                if ids.is_empty() {
                    names.remove(&name);
                }
            }
            if names.is_empty() {
                t.by_wd.remove(&wd);
                // EINVAL: the kernel dropped the watch already (the parent went).
                let _ = self.fd.get_ref().0.rm_watch(wd);
            }
        }
    }

    /// Waits for removals and returns the faults whose cgroup went.
    async fn gone(&self) -> std::io::Result<Vec<FaultId>> {
        loop {
            let mut ready = self.fd.readable().await?;
            let events = match ready.get_inner().0.read_events() {
                Ok(ev) => ev,
                Err(nix::errno::Errno::EAGAIN) => {
                    ready.clear_ready();
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            let mut t = self.table();
            for ev in events {
                let Some(names) = t.by_wd.get_mut(&ev.wd) else {
                    continue;
                };
                let ids = if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    // The parent itself went (so its children did): every fault below it.
                    t.by_wd
                        .remove(&ev.wd)
                        .map(|n| n.into_values().flatten().collect())
                        .unwrap_or_default()
                } else {
                    match ev.name.as_ref().and_then(|n| n.to_str()) {
                        Some(name) => names.remove(name).unwrap_or_default(),
                        None => HashSet::new(),
                    }
                };
                // Its other watches (a pod's scope and sandbox) go with it.
                for id in &ids {
                    self.drop_fault(&mut t, *id);
                }
                out.extend(ids);
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }
}

impl Engine {
    /// Ends fault `id` when its scope's cgroup goes, or for a pod its sandbox's (or at once if
    /// one is gone already). A fault without a scope is not watched.
    pub(super) fn watch_target(&self, id: FaultId, target: &Target) {
        let (Some(cgroup), Some(cgroup_id)) = (&target.cgroup, target.cgroup_id) else {
            return;
        };
        let watched = std::iter::once((cgroup.as_str(), cgroup_id)).chain(
            target
                .sandbox_cgroup
                .as_ref()
                .map(|(path, id)| (path.as_str(), *id)),
        );
        let targets = match self.targets() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(event = "target", id = %id, error = %e, "cannot watch the fault's cgroup; it ends at its TTL only");
                return;
            }
        };
        for (cgroup, cgroup_id) in watched {
            match targets.watch(id, cgroup, cgroup_id) {
                Ok(true) => {}
                Ok(false) => {
                    self.end_gone(vec![id]);
                    return;
                }
                Err(e) => {
                    tracing::warn!(event = "target", id = %id, cgroup = %cgroup, error = %e, "cannot watch the fault's cgroup; it ends at its TTL only");
                }
            }
        }
    }

    /// Stops watching for fault `id` (it ended).
    pub(super) fn unwatch_target(&self, id: FaultId) {
        if let Some(t) = self.inner.targets.get() {
            t.forget(id);
        }
    }

    /// The watcher, made (with its task) at the first scoped fault.
    fn targets(&self) -> std::io::Result<&Arc<Targets>> {
        if let Some(t) = self.inner.targets.get() {
            return Ok(t);
        }
        let made = Arc::new(Targets::new()?);
        if self.inner.targets.set(made.clone()).is_ok() {
            let engine = self.clone();
            let shutdown = self.inner.shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        r = made.gone() => match r {
                            Ok(ids) => engine.end_gone(ids),
                            Err(e) => {
                                tracing::error!(event = "target", error = %e, "the cgroup watcher failed; scoped faults end at their TTL only");
                                break;
                            }
                        },
                    }
                }
            });
        }
        self.inner
            .targets
            .get()
            .ok_or_else(|| std::io::Error::other("cgroup watcher not set"))
    }

    /// Reverts faults whose target is gone, each in a task of its own.
    fn end_gone(&self, ids: Vec<FaultId>) {
        for id in ids {
            let engine = self.clone();
            tokio::spawn(async move {
                if let Some(r) = engine.revert(id, RevertReason::TargetGone).await {
                    tracing::info!(event = "target", id = %id, removed = ?r.removed, "the fault's target is gone; fault ended");
                }
            });
        }
    }
}
