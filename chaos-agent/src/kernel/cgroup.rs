//! cgroup controller files: where a controller's files are for a cgroup on this host (cgroup v2,
//! v1, or hybrid: v1 controllers beside an empty unified hierarchy), and reading and writing
//! them. The limit faults' only kernel mechanism; its undo is `txn::undo::Undo::CgroupFile`,
//! which writes back the value read before the change unless someone else changed it since.
//!
//! Detected per controller, not per host: on a hybrid host the unified hierarchy lists no
//! controllers and each one is a v1 mount of its own (`cpu,cpuacct`, `memory`); a controller
//! is v2 where the v2 root lists it in `cgroup.controllers`.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;

/// Limits whose file someone else changed during the fault, so that the agent kept their value
/// instead of restoring its own snapshot (`chaos_agent_limits_kept_foreign_total`).
pub static KEPT_FOREIGN: LazyLock<Counter> = LazyLock::new(Counter::default);

/// A resource controller the limit faults use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Controller {
    /// CPU bandwidth (`cpu.max`; v1 `cpu.cfs_quota_us`).
    Cpu,
    /// Memory (`memory.high`, `memory.max`; v1 `memory.limit_in_bytes`).
    Memory,
    /// Block IO (`io.max`; v1 `blkio.throttle.*`).
    Io,
}

impl Controller {
    /// The kernel's name for it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Memory => "memory",
            Self::Io => "io",
        }
    }

    /// Its name on cgroup v1 (a mount's super option, a `/proc/PID/cgroup` line).
    #[must_use]
    pub fn v1_name(self) -> &'static str {
        match self {
            Self::Io => "blkio",
            c => c.as_str(),
        }
    }
}

/// Which cgroup version serves a controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// The unified hierarchy.
    V2,
    /// A v1 hierarchy of its own.
    V1,
}

impl Version {
    /// `v1` or `v2`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V2 => "v2",
            Self::V1 => "v1",
        }
    }
}

/// Where one controller lives on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    /// The controller.
    pub controller: Controller,
    /// v1 or v2.
    pub version: Version,
    /// The hierarchy's mount point in this mount namespace.
    pub root: PathBuf,
}

/// Errors of the cgroup mechanism.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No hierarchy offers the controller in this mount namespace.
    #[error(
        "no cgroup hierarchy offers the {controller} controller here (neither the cgroup v2 root's cgroup.controllers nor a cgroup v1 mount lists it; inside a container or `ip netns exec`, /sys/fs/cgroup may not be mounted)"
    )]
    NoController {
        /// The controller.
        controller: &'static str,
    },
    /// The cgroup does not exist in the controller's hierarchy.
    #[error("no cgroup {path} in the {controller} hierarchy ({root})")]
    NoCgroup {
        /// The cgroup's path below the root.
        path: String,
        /// The controller.
        controller: &'static str,
        /// The hierarchy's mount point.
        root: String,
    },
    /// A controller file could not be read or written.
    #[error("{op} {}: {source}", path.display())]
    File {
        /// `read` or `write`.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
}

impl Hierarchy {
    /// Finds the controller's hierarchy from this process's mount table. (`ip netns exec`
    /// gives its command a fresh `/sys` without cgroup mounts: limit and stress faults need the
    /// agent in the host's mount namespace, and say so.)
    pub fn find(controller: Controller) -> Result<Self, CgroupError> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let v2_lists = |root: &Path| {
            std::fs::read_to_string(root.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == controller.as_str()))
        };
        if let Some(root) = crate::sys::cgroup2_root_in(&info).filter(|r| v2_lists(r)) {
            return Ok(Self {
                controller,
                version: Version::V2,
                root,
            });
        }
        v1_mount(&info, controller.v1_name())
            .map(|root| Self {
                controller,
                version: Version::V1,
                root,
            })
            .ok_or(CgroupError::NoController {
                controller: controller.as_str(),
            })
    }

    /// The directory of the cgroup at `path` (below the root), which must exist.
    pub fn dir(&self, path: &str) -> Result<PathBuf, CgroupError> {
        let dir = self.root.join(path.trim_start_matches('/'));
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(CgroupError::NoCgroup {
                path: path.to_owned(),
                controller: self.controller.as_str(),
                root: self.root.display().to_string(),
            })
        }
    }

    /// The cgroup of `pid` in this hierarchy, from `/proc/PID/cgroup`.
    #[must_use]
    pub fn cgroup_of(&self, proc_cgroup: &str) -> Option<String> {
        cgroup_in(proc_cgroup, self.version, self.controller.v1_name())
    }
}

/// The mount point of the v1 hierarchy that carries `controller` (its super options list it).
fn v1_mount(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        // `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS`;
        // the whole hierarchy only (ROOT `/`), not a bind mount of one of its cgroups.
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split_whitespace();
        if r.next()? != "cgroup" || left.split_whitespace().nth(3)? != "/" {
            return None;
        }
        let superopts = r.nth(1)?;
        if !superopts.split(',').any(|o| o == controller) {
            return None;
        }
        Some(PathBuf::from(crate::sys::unescape_mount_path(
            left.split_whitespace().nth(4)?,
        )))
    })
}

/// A process's cgroup in one hierarchy, from the text of `/proc/PID/cgroup`: the `0::` line for
/// v2, the line listing the controller for v1.
fn cgroup_in(proc_cgroup: &str, version: Version, controller: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (id, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        let hit = match version {
            Version::V2 => id == "0" && ctrls.is_empty(),
            Version::V1 => ctrls.split(',').any(|c| c == controller),
        };
        hit.then(|| path.to_owned())
    })
}

/// Reads a controller file, trimmed.
pub fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| CgroupError::File {
            op: "read",
            path: path.to_owned(),
            source,
        })
}

/// Writes a controller file (one `write(2)`, as the kernel wants).
pub fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::File {
        op: "write",
        path: path.to_owned(),
        source,
    })
}

/// The line of `key` (a device's `MAJ:MIN`) in a nested-keyed limit file (`io.max`, v1
/// `blkio.throttle.*_device`), or, when the file has none, the line that says "no limit" there
/// (and that, written, removes one): what the undo writes back and compares with.
pub fn read_keyed(path: &Path, key: &str) -> Result<String, CgroupError> {
    let text = read(path)?;
    Ok(text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .map_or_else(|| unlimited_line(path, key), |l| l.trim().to_owned()))
}

/// The line of `key` with no limit: `KEY rbps=max wbps=max riops=max wiops=max` in `io.max`,
/// `KEY 0` in v1's throttle files.
#[must_use]
pub fn unlimited_line(path: &Path, key: &str) -> String {
    if path.file_name().is_some_and(|n| n == "io.max") {
        format!("{key} rbps=max wbps=max riops=max wiops=max")
    } else {
        format!("{key} 0")
    }
}

/// A controller file's value: the whole file, or with `key` the line of that key.
pub fn read_value(path: &Path, key: Option<&str>) -> Result<String, CgroupError> {
    match key {
        Some(k) => read_keyed(path, k),
        None => read(path),
    }
}

/// A flat-keyed file (`cpu.stat`, `memory.events`, v1 `memory.oom_control`): `key value`
/// lines; lines that are not are left out.
#[must_use]
pub fn flat_keyed(path: &Path) -> std::collections::BTreeMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// A pressure (PSI) file: `some` and `full` lines of `avg10=.. avg60=.. avg300=.. total=..`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pressure {
    /// Percent of the last 10 s some task was stalled.
    pub some_avg10: f64,
    /// Percent of the last 10 s all non-idle tasks were stalled (none where the file has no
    /// `full` line, as the host's `/proc/pressure/cpu` before 5.13).
    pub full_avg10: Option<f64>,
    /// Microseconds some task was stalled, since the cgroup was made.
    pub some_total_us: u64,
}

/// Reads a pressure file.
#[must_use]
pub fn pressure(path: &Path) -> Option<Pressure> {
    let text = std::fs::read_to_string(path).ok()?;
    let field = |line: &str, k: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let some = text.lines().find(|l| l.starts_with("some "))?;
    let full = text.lines().find(|l| l.starts_with("full "));
    Some(Pressure {
        some_avg10: field(some, "avg10")?.parse().ok()?,
        full_avg10: full.and_then(|l| field(l, "avg10")?.parse().ok()),
        some_total_us: field(some, "total")?.parse().ok()?,
    })
}

/// `some avg10` of a pressure file (`cpu.pressure`, `/proc/pressure/memory`), in percent.
#[must_use]
pub fn pressure_some_avg10(path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("some "))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?
        .parse()
        .ok()
}

/// The cgroup v2 directory of `path`, if the v2 hierarchy has one (on a hybrid host, the
/// unified hierarchy holds the pressure files even without controllers).
#[must_use]
pub fn v2_dir(path: &str) -> Option<PathBuf> {
    let dir = crate::sys::cgroup2_root()?.join(path.trim_start_matches('/'));
    dir.is_dir().then_some(dir)
}

/// Makes a cgroup directory (its parent must exist).
pub fn make_dir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::File {
            op: "create",
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Kills every process of a cgroup and its children and removes the directories (deepest
/// first). `cgroup.kill` (v2, Linux 5.14) kills atomically; elsewhere each pid of `cgroup.procs`
/// gets SIGKILL until none is left (a fork in between is caught by the next read). Returns
/// whether a directory was there to remove.
pub fn kill_and_remove(dir: &Path) -> Result<bool, CgroupError> {
    if !dir.is_dir() {
        return Ok(false);
    }
    let children: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    for c in children {
        kill_and_remove(&c)?;
    }
    let kill = dir.join("cgroup.kill");
    if kill.exists() {
        let _ = std::fs::write(&kill, "1");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        for p in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if std::time::Instant::now() > deadline {
            break;
        }
        // A killed process leaves its cgroup once it has exited.
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(CgroupError::File {
            op: "remove",
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Whether two values of one controller file say the same: the kernel may print what it was
/// given differently (`max` and v1's page-aligned byte counts are given in that form already,
/// so only white space differs).
#[must_use]
pub fn same_value(a: &str, b: &str) -> bool {
    a.split_whitespace().eq(b.split_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
24 31 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
36 30 0:32 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,memory
37 30 0:33 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,cpuset
";

    #[test]
    fn finds_v1_mounts_by_their_super_options() {
        assert_eq!(
            v1_mount(HYBRID, "cpu"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(
            v1_mount(HYBRID, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        // `cpuset` is not `cpu`, and the cgroup2 mount is no v1 hierarchy.
        assert_eq!(
            v1_mount(&HYBRID.replace("cpu,cpuacct", "cpuacct"), "cpu"),
            None
        );
        assert_eq!(v1_mount(HYBRID, "io"), None);
        assert_eq!(
            v1_mount(
                &format!("{HYBRID}38 30 0:34 / /sys/fs/cgroup/blkio rw - cgroup cgroup rw,blkio\n"),
                Controller::Io.v1_name()
            ),
            Some(PathBuf::from("/sys/fs/cgroup/blkio"))
        );
    }

    #[test]
    fn a_process_cgroup_per_hierarchy() {
        let text = "12:memory:/user.slice\n4:cpu,cpuacct:/chaos-t\n1:name=systemd:/x\n0::/user.slice/session-1.scope\n";
        assert_eq!(
            cgroup_in(text, Version::V1, "cpu").as_deref(),
            Some("/chaos-t")
        );
        assert_eq!(
            cgroup_in(text, Version::V1, "memory").as_deref(),
            Some("/user.slice")
        );
        assert_eq!(
            cgroup_in(text, Version::V2, "cpu").as_deref(),
            Some("/user.slice/session-1.scope")
        );
        assert_eq!(cgroup_in("0::/\n", Version::V1, "cpu"), None);
    }

    #[test]
    fn flat_keyed_and_pressure_files() {
        let dir = std::env::temp_dir().join(format!("chaos-cg-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let stat = dir.join("cpu.stat");
        std::fs::write(
            &stat,
            "nr_periods 40\nnr_throttled 39\nthrottled_time 2778635090\n",
        )
        .expect("write");
        let m = flat_keyed(&stat);
        assert_eq!((m["nr_periods"], m["nr_throttled"]), (40, 39));
        let psi = dir.join("cpu.pressure");
        std::fs::write(
            &psi,
            "some avg10=33.99 avg60=12.00 avg300=3.00 total=123\nfull avg10=1.00 avg60=0.00 avg300=0.00 total=4\n",
        )
        .expect("write");
        assert_eq!(pressure_some_avg10(&psi), Some(33.99));
        assert_eq!(
            pressure(&psi),
            Some(Pressure {
                some_avg10: 33.99,
                full_avg10: Some(1.0),
                some_total_us: 123
            })
        );
        assert_eq!(pressure_some_avg10(&dir.join("none")), None);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn keyed_lines_and_their_unlimited_form() {
        let dir = std::env::temp_dir().join(format!("chaos-cg-keyed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let max = dir.join("io.max");
        std::fs::write(&max, "8:0 rbps=max wbps=4194304 riops=max wiops=max\n").expect("write");
        assert_eq!(
            read_keyed(&max, "8:0").expect("read"),
            "8:0 rbps=max wbps=4194304 riops=max wiops=max"
        );
        assert_eq!(
            read_keyed(&max, "8:16").expect("read"),
            "8:16 rbps=max wbps=max riops=max wiops=max"
        );
        let v1 = dir.join("blkio.throttle.write_bps_device");
        std::fs::write(&v1, "").expect("write");
        assert_eq!(read_keyed(&v1, "7:0").expect("read"), "7:0 0");
        assert!(read_keyed(&dir.join("none"), "7:0").is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn values_compare_by_words() {
        assert!(same_value("max 100000", " max  100000\n"));
        assert!(!same_value("20000 100000", "50000 100000"));
    }
}
