//! Facts about the host the agent runs on: interfaces, routes, clocks, bpffs, privileges.
//! Every runtime path the agent uses is a constant in [`paths`].

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
