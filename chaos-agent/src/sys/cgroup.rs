//! Walking the cgroup v2 hierarchy, and the network namespace of the processes in a cgroup:
//! what resolving `--unit`, `--container` and a scoped reset needs. Every walk starts from the
//! hierarchy's root as [`super::open_cgroup2_root`] opens it (also where this mount namespace
//! has none), through `/proc/self/fd`, so paths are always relative to the real root.

use std::collections::HashSet;
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{DirEntryExt as _, MetadataExt as _};
use std::path::PathBuf;

/// One cgroup met by a walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    /// Its path below the root, `/`-separated, starting with `/` (`/` for the root).
    pub path: String,
    /// Its id (the directory's inode, as `bpf_skb_cgroup_id` gives it).
    pub id: u64,
    /// Levels below the root (the root is 0).
    pub depth: usize,
}

impl Cgroup {
    /// The last component of its path (empty for the root).
    #[must_use]
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or("")
    }
}

/// The cgroup v2 hierarchy, open for walks.
#[derive(Debug)]
pub struct Tree {
    root: std::fs::File,
    /// Where the root was found (for messages).
    pub label: String,
}

impl Tree {
    /// Opens the hierarchy's root.
    pub fn open() -> io::Result<Self> {
        let (root, label) = super::open_cgroup2_root()?;
        Ok(Self { root, label })
    }

    /// A path that names the cgroup at `path` (below the root) for any file operation, however
    /// the root was found.
    #[must_use]
    pub fn path_of(&self, path: &str) -> PathBuf {
        self.dir(path)
    }

    fn dir(&self, path: &str) -> PathBuf {
        PathBuf::from(format!(
            "/proc/self/fd/{}/{}",
            self.root.as_raw_fd(),
            path.trim_start_matches('/')
        ))
    }

    /// Visits the cgroup at `start` (components below the root) and every cgroup below it,
    /// parents before children, down to `max_depth` levels below the root. A cgroup removed
    /// while the walk runs is skipped; `start` itself must exist.
    pub fn walk(
        &self,
        start: &[&str],
        max_depth: usize,
        mut visit: impl FnMut(&Cgroup),
    ) -> io::Result<()> {
        let path = format!("/{}", start.join("/"));
        let id = std::fs::metadata(self.dir(&path))?.ino();
        let mut stack = vec![Cgroup {
            path,
            id,
            depth: start.len(),
        }];
        while let Some(cg) = stack.pop() {
            visit(&cg);
            if cg.depth >= max_depth {
                continue;
            }
            let entries = match std::fs::read_dir(self.dir(&cg.path)) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let Ok(entry) = entry else { continue };
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let parent = cg.path.trim_end_matches('/');
                stack.push(Cgroup {
                    path: format!("{parent}/{name}"),
                    // kernfs gives a directory's inode as its d_ino: no stat needed.
                    id: entry.ino(),
                    depth: cg.depth + 1,
                });
            }
        }
        Ok(())
    }

    /// The ids of the cgroup at `start` and of every cgroup below it.
    pub fn subtree_ids(&self, start: &[&str]) -> io::Result<HashSet<u64>> {
        let mut ids = HashSet::new();
        self.walk(start, usize::MAX, |cg| {
            ids.insert(cg.id);
        })?;
        Ok(ids)
    }

    /// The pids of the processes in the cgroup at `path` or below it, the cgroup's own first.
    pub fn pids(&self, path: &str) -> io::Result<Vec<u32>> {
        let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        let mut dirs = Vec::new();
        self.walk(&parts, usize::MAX, |cg| dirs.push(cg.path.clone()))?;
        let mut pids = Vec::new();
        for dir in dirs {
            match std::fs::read_to_string(self.dir(&dir).join("cgroup.procs")) {
                Ok(text) => pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(pids)
    }
}

/// The network namespace of `pid` (`/proc/PID/ns/net`), named by its nsfs inode: what
/// `lsns` and `ip netns identify` compare (one nsfs instance per boot, so the inode is unique).
pub fn netns_of(pid: u32) -> io::Result<u64> {
    Ok(std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino())
}

/// The network namespace of the calling thread, as [`netns_of`] names it.
pub fn own_netns() -> io::Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// Runs `f` on a thread of its own that has joined the network namespace of `pid` (whose inode
/// must still be `expect`: a pid reused by a process elsewhere is refused), and returns what it
/// returns. `setns` is per thread and this thread ends with `f`, so no other thread (a tokio
/// worker, say) is ever left in another namespace.
pub fn in_netns_of<T: Send + 'static>(
    pid: u32,
    expect: u64,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let file = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let m = file.metadata()?;
    if m.ino() != expect {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("process {pid} is no longer in network namespace {expect}"),
        ));
    }
    std::thread::Builder::new()
        .name("chaos-netns".to_owned())
        .spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            Ok(f())
        })?
        .join()
        .map_err(|_| io::Error::other("network namespace thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_is_named_by_its_last_component() {
        let cg = |path: &str| Cgroup {
            path: path.to_owned(),
            id: 1,
            depth: 0,
        };
        assert_eq!(cg("/system.slice/nginx.service").name(), "nginx.service");
        assert_eq!(cg("/").name(), "");
    }
}
