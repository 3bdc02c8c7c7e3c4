//! Facts about the host the agent runs on: interfaces, routes, clocks, bpffs, privileges.
//! Every runtime path the agent uses is a constant in [`paths`].

pub mod block;
pub mod cgroup;
pub mod link;
pub mod paths;

use std::ffi::CString;
use std::io;
use std::path::Path;

/// Errors from host queries.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// The named interface does not exist (in the agent's network namespace).
    #[error("interface {name:?} does not exist")]
    NoSuchInterface {
        /// The name asked for.
        name: String,
    },
    /// No default route, so no interface can be picked implicitly.
    #[error("no default route: pass --iface to choose the interface")]
    NoDefaultRoute,
    /// Reading a /proc or /sys file failed.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// Mounting bpffs failed.
    #[error("mount bpffs at {path}: {source}")]
    MountBpffs {
        /// Mount point.
        path: String,
        /// The cause.
        source: nix::Error,
    },
    /// The agent is not running with the privileges it needs.
    #[error(
        "chaos-agent must run as root (or with CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN): {missing} missing"
    )]
    NotPrivileged {
        /// The missing capability.
        missing: String,
    },
}

/// Index of interface `name`, or [`SysError::NoSuchInterface`].
pub fn ifindex(name: &str) -> Result<u32, SysError> {
    let no_such = || SysError::NoSuchInterface {
        name: name.to_owned(),
    };
    let c = CString::new(name).map_err(|_| no_such())?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 { Err(no_such()) } else { Ok(idx) }
}

/// Whether interface `name` exists.
#[must_use]
pub fn interface_exists(name: &str) -> bool {
    ifindex(name).is_ok()
}

/// The interface of the IPv4 (else IPv6) default route, read from /proc.
pub fn default_route_interface() -> Result<String, SysError> {
    let read = |path: &str| {
        std::fs::read_to_string(path).map_err(|source| SysError::Read {
            path: path.to_owned(),
            source,
        })
    };
    // /proc/net/route: Iface Destination Gateway Flags ... ; destination 00000000 = default.
    if let Ok(route) = read("/proc/net/route") {
        for line in route.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" {
                return Ok(f[0].to_owned());
            }
        }
    }
    // /proc/net/ipv6_route: dest(32 hex) plen ... iface last.
    if let Ok(route) = read("/proc/net/ipv6_route") {
        for line in route.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 10
                && f[0] == "00000000000000000000000000000000"
                && f[1] == "00"
                && f[9] != "lo"
            {
                return Ok(f[9].to_owned());
            }
        }
    }
    Err(SysError::NoDefaultRoute)
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `bpf_ktime_get_ns()` reads.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Mounts bpffs at `/sys/fs/bpf` if nothing is mounted there (fresh machines often lack it).
pub fn ensure_bpffs() -> Result<bool, SysError> {
    let path = Path::new(paths::BPFFS);
    if is_bpffs(path) {
        return Ok(false);
    }
    let _ = std::fs::create_dir_all(path);
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| SysError::MountBpffs {
        path: paths::BPFFS.to_owned(),
        source,
    })?;
    Ok(true)
}

/// Whether `path` is a bpffs mount.
#[must_use]
pub fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: u64 = 0xcafe_4a11;
    // `f_type` is `__fsword_t`: i64 on glibc, u64 on musl (the VM's static build), so cast.
    #[allow(clippy::unnecessary_cast, reason = "i64 on glibc, u64 on musl")]
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 as u64 == BPF_FS_MAGIC)
}

/// Raises `RLIMIT_MEMLOCK` to infinity: kernels before 5.11 charge BPF maps to it.
pub fn raise_memlock() {
    let _ = nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_MEMLOCK,
        nix::sys::resource::RLIM_INFINITY,
        nix::sys::resource::RLIM_INFINITY,
    );
}

/// Checks the capabilities the agent needs to change the kernel.
pub fn check_privileges() -> Result<(), SysError> {
    use caps::{CapSet, Capability};
    for (cap, name) in [
        (Capability::CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (Capability::CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ] {
        if !caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false) {
            return Err(SysError::NotPrivileged {
                missing: name.to_owned(),
            });
        }
    }
    Ok(())
}

/// The host's memory (`MemTotal` of `/proc/meminfo`), bytes.
#[must_use]
pub fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Kernel release string (`uname -r`).
#[must_use]
pub fn kernel_release() -> String {
    nix::sys::utsname::uname().map_or_else(
        |_| "unknown".to_owned(),
        |u| u.release().to_string_lossy().into_owned(),
    )
}

/// Start time of process `pid` in clock ticks since boot (field 22 of /proc/PID/stat), used to
/// tell a live owner from a recycled pid.
#[must_use]
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process that wrote a journal (pid + start time) is still alive.
#[must_use]
pub fn process_alive(pid: u32, start_time: u64) -> bool {
    process_start_time(pid) == Some(start_time)
}

/// Whether packets on `ifname` start at the IP header (no link-layer header in the skb):
/// tun, `WireGuard`, ipip/sit/gre tunnels. Read from the ARPHRD type in sysfs.
#[must_use]
pub fn is_l3_device(ifname: &str) -> bool {
    const L3_TYPES: [u32; 6] = [
        65534, /* NONE */
        768,   /* TUNNEL */
        769,   /* TUNNEL6 */
        776,   /* SIT */
        778,   /* IPGRE */
        519,   /* RAWIP */
    ];
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/type"))
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .is_some_and(|t| L3_TYPES.contains(&t))
}

/// Pids of other running `chaos-agent` processes (by `/proc/PID/comm`). A live agent may keep its
/// journal in another state dir, so objects with our names are only swept when this is empty.
#[must_use]
pub fn other_agents() -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "chaos-agent")
        })
        .collect()
}

/// Where the cgroup v2 hierarchy is mounted (its root, not a bind mount of a subtree): the
/// first `cgroup2` mount of `/proc/self/mountinfo` whose root is `/` — `/sys/fs/cgroup` on a
/// unified host, `/sys/fs/cgroup/unified` on a hybrid one.
#[must_use]
pub fn cgroup2_root() -> Option<std::path::PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup2_root_in(&info)
}

/// The root of the cgroup v2 hierarchy, open, and where it was found. `ip netns exec` runs its
/// command in a mount namespace of its own, with a fresh `/sys` and no cgroup mounts: then the
/// hierarchy is mounted on a private temporary directory just long enough to open it (the
/// open directory keeps the hierarchy; the mount is detached at once and leaves nothing).
pub fn open_cgroup2_root() -> io::Result<(std::fs::File, String)> {
    if let Some(p) = cgroup2_root() {
        return Ok((std::fs::File::open(&p)?, p.display().to_string()));
    }
    let dir = std::env::temp_dir().join(format!("chaos-agent-cgroup2.{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let opened = nix::mount::mount(
        Some("cgroup2"),
        &dir,
        Some("cgroup2"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(io::Error::from)
    .and_then(|()| {
        let f = std::fs::File::open(&dir);
        let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
        f
    });
    let _ = std::fs::remove_dir(&dir);
    Ok((
        opened?,
        "the cgroup v2 root (mounted privately: none in this mount namespace)".to_owned(),
    ))
}

pub(crate) fn cgroup2_root_in(mountinfo: &str) -> Option<std::path::PathBuf> {
    mountinfo.lines().find_map(|l| {
        // `id parent major:minor root mountpoint options [optional...] - fstype source opts`
        let (head, tail) = l.split_once(" - ")?;
        let fields: Vec<&str> = head.split(' ').collect();
        let fstype = tail.split(' ').next()?;
        if fstype != "cgroup2" || fields.get(3) != Some(&"/") {
            return None;
        }
        Some(std::path::PathBuf::from(unescape_mount_path(
            fields.get(4)?,
        )))
    })
}

/// mountinfo escapes space, tab, newline and backslash as three octal digits.
pub(crate) fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The id of a cgroup v2 (its directory's inode, as `bpf_skb_ancestor_cgroup_id` gives it) at
/// `components` below the hierarchy's root.
pub fn cgroup_id(components: &[&str]) -> io::Result<u64> {
    use std::os::fd::AsFd as _;
    let (root, _) = open_cgroup2_root()?;
    if components.is_empty() {
        return Ok(nix::sys::stat::fstat(root.as_fd())?.st_ino);
    }
    let st = nix::sys::stat::fstatat(
        root.as_fd(),
        components.join("/").as_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(io::Error::from(io::ErrorKind::NotADirectory));
    }
    Ok(st.st_ino)
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, Linux 5.14), as
/// `bpf_get_netns_cookie` gives it to the connect programs.
pub fn netns_cookie() -> io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    /// `SO_NETNS_COOKIE` of `asm-generic/socket.h` (libc does not export it for every target).
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let sock = std::net::UdpSocket::bind(("127.0.0.1", 0))
        .or_else(|_| std::net::UdpSocket::bind(("::1", 0)))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket, and a buffer of the length given.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod cgroup_tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_root_on_hybrid_and_unified_hosts() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_root_in(hybrid).as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        // A container's bind mount of its own subtree comes first: not a root.
        let unified = "50 1 0:40 /kubepods/pod1 /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n\
                       60 1 0:40 / /host\\040cg rw shared:1 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_root_in(unified).as_deref(),
            Some(Path::new("/host cg"))
        );
        assert_eq!(cgroup2_root_in("1 0 0:1 / / rw - ext4 /dev/sda rw\n"), None);
    }
}
