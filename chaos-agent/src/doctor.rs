//! `chaos-agent doctor`: what this kernel can do, probed rather than guessed. Qdisc kinds are
//! probed by adding them to `lo` inside a throwaway network namespace, so the host is untouched;
//! DNS faults are run on synthetic answers by the loaded programs themselves (`doctor/dns.rs`).

mod dns;

use std::path::Path;

use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage};
use serde::Serialize;

use crate::kernel::bpf::{Datapath, attach};
use crate::sys;

/// One capability.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Short name.
    pub name: String,
    /// Whether it is available.
    pub ok: bool,
    /// Detail or how to fix.
    pub detail: String,
    /// Which faults need it.
    pub needed_for: String,
}

fn check(name: &str, ok: bool, detail: impl Into<String>, needed_for: &str) -> Check {
    Check {
        name: name.to_owned(),
        ok,
        detail: detail.into(),
        needed_for: needed_for.to_owned(),
    }
}

/// Result of probing a qdisc kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QdiscProbe {
    /// The kernel knows the kind.
    Present,
    /// "Unknown qdisc kind" (ENOENT): the module is not built or not loadable.
    Missing,
}

/// Probes which of `kinds` this kernel has, in a fresh network namespace (on its `lo`).
#[must_use]
pub fn probe_qdiscs(kinds: &[&'static str]) -> Vec<(&'static str, Result<QdiscProbe, String>)> {
    let kinds = kinds.to_vec();
    std::thread::spawn(move || {
        // unshare(2) affects only this thread: the agent's own namespace is never changed.
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            return kinds
                .iter()
                .map(|k| (*k, Err(format!("unshare(CLONE_NEWNET): {e}"))))
                .collect();
        }
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return kinds.iter().map(|k| (*k, Err(e.to_string()))).collect(),
        };
        rt.block_on(async {
            let Ok(tc) = crate::kernel::tc::Tc::new() else {
                return kinds
                    .iter()
                    .map(|k| (*k, Err("netlink socket".to_owned())))
                    .collect();
            };
            let mut out = Vec::new();
            for kind in kinds {
                let mut msg = TcMessage::with_index(1); // lo is always ifindex 1 in a new netns
                msg.header.parent = if kind == "clsact" {
                    TcHandle::CLSACT
                } else {
                    TcHandle::ROOT
                };
                msg.header.handle = if kind == "clsact" {
                    TcHandle {
                        major: 0xffff,
                        minor: 0,
                    }
                } else {
                    TcHandle {
                        major: 0xc4a1,
                        minor: 0,
                    }
                };
                msg.attributes.push(TcAttribute::Kind(kind.to_owned()));
                let r = match tc.probe_qdisc(1, msg).await {
                    // ENOENT = unknown kind. Anything else (EINVAL for missing options) means the
                    // kernel found the kind and rejected our empty options: present.
                    Err(libc::ENOENT) => Ok(QdiscProbe::Missing),
                    Err(libc::EIO) => Err("netlink request failed".to_owned()),
                    Ok(()) | Err(_) => Ok(QdiscProbe::Present),
                };
                out.push((kind, r));
            }
            out
        })
    })
    .join()
    .unwrap_or_default()
}

fn cgroup_layout() -> (String, String) {
    let root = Path::new("/sys/fs/cgroup");
    if let Ok(c) = std::fs::read_to_string(root.join("cgroup.controllers")) {
        return ("v2 (unified)".to_owned(), c.trim().to_owned());
    }
    if let Ok(c) = std::fs::read_to_string(root.join("unified/cgroup.controllers")) {
        let v1: Vec<String> = std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|d| d.file_name().into_string().ok())
            .filter(|n| n != "unified" && n != "systemd")
            .collect();
        return (
            "hybrid (v1 controllers + cgroup2 at /sys/fs/cgroup/unified)".to_owned(),
            format!("v1: {} | v2: {}", v1.join(" "), c.trim()),
        );
    }
    ("v1".to_owned(), String::new())
}

/// Aborts a loopback connection of our own with `sock_diag`, as a reset fault would, and checks
/// that the socket saw it.
fn reset_probe() -> Result<(), String> {
    use std::io::Read as _;
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let mut c = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let (_server, _) = l.accept().map_err(|e| e.to_string())?;
    let local = c.local_addr().map_err(|e| e.to_string())?;
    let s = crate::kernel::sock_diag::tcp_sockets()
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|s| s.local == local && s.remote == addr)
        .ok_or("the probe's connection is not in the sock_diag dump")?;
    crate::kernel::sock_diag::destroy(&s).map_err(|e| e.to_string())?;
    c.set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    match c.read(&mut [0u8; 1]) {
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
        other => Err(format!(
            "the destroyed socket's read gave {other:?}, not ECONNABORTED"
        )),
    }
}

/// Runs every probe.
#[must_use]
pub fn run() -> Vec<Check> {
    let mut v = Vec::new();
    v.push(check("kernel", true, sys::kernel_release(), "-"));
    v.push(check(
        "root",
        sys::check_privileges().is_ok(),
        sys::check_privileges().err().map_or_else(
            || "CAP_NET_ADMIN, CAP_SYS_ADMIN".to_owned(),
            |e| e.to_string(),
        ),
        "everything",
    ));
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    v.push(check(
        "btf",
        btf,
        if btf {
            "/sys/kernel/btf/vmlinux"
        } else {
            "no /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF)"
        },
        "-",
    ));
    let dp = Datapath::new();
    let ebpf = dp.load();
    v.push(check(
        "ebpf",
        ebpf.is_ok(),
        ebpf.as_ref()
            .map_or_else(std::string::ToString::to_string, |()| {
                "tc programs load and pass the verifier".to_owned()
            }),
        "loss, steering, DNS",
    ));
    let tcx = attach::kernel_has_tcx();
    v.push(check(
        "tcx",
        tcx,
        if tcx {
            "tcx links (>= 6.6): faults detach when the agent dies"
        } else {
            "no tcx (< 6.6): netlink cls_bpf, kernel deadline + cleanup remove leftovers"
        },
        "attach mode",
    ));
    let bpffs = sys::is_bpffs(Path::new(sys::paths::BPFFS));
    v.push(check(
        "bpffs",
        bpffs,
        if bpffs {
            "mounted at /sys/fs/bpf".to_owned()
        } else {
            "not mounted (the agent mounts it)".to_owned()
        },
        "-",
    ));
    let mut present = Vec::new();
    let mut clsact = None;
    for (kind, r) in probe_qdiscs(&["clsact", "netem", "fq", "htb", "tbf", "prio"]) {
        if matches!(r, Ok(QdiscProbe::Present)) {
            present.push(kind);
        }
        if kind == "clsact" {
            clsact = r.as_ref().ok().map(|p| *p == QdiscProbe::Present);
        }
        let module = format!("sch_{}", if kind == "clsact" { "ingress" } else { kind });
        let needed = match kind {
            "clsact" => "netlink attach (pre-6.6)",
            "netem" => "delay, jitter, corrupt, duplicate, reorder",
            "fq" => "delay via EDT when netem is missing",
            "htb" | "prio" => "steering traffic into a shaping qdisc",
            "tbf" => "rate",
            _ => "-",
        };
        match r {
            Ok(QdiscProbe::Present) => {
                v.push(check(kind, true, format!("{module} available"), needed));
            }
            Ok(QdiscProbe::Missing) => v.push(check(
                kind,
                false,
                format!(
                    "{module} missing: `modprobe {module}` or install the kernel's extra modules"
                ),
                needed,
            )),
            Err(e) => v.push(check(kind, false, format!("probe failed: {e}"), needed)),
        }
    }
    // What `inject --delay` will use (`--shaping-backend auto`), as `faults::netem::backend` picks.
    v.push(if present.contains(&"netem") {
        check("delay", true, "backend netem (every delay/jitter/corrupt/duplicate/reorder option, both directions)", "delay")
    } else if present.contains(&"fq") {
        check("delay", true, "backend edt (skb->tstamp + fq root): egress delay with uniform jitter only; corrupt/duplicate/reorder/ingress delay need sch_netem", "delay")
    } else {
        check("delay", false, "no backend: `modprobe sch_netem` (everything) or `modprobe sch_fq` (egress delay via EDT)", "delay")
    });
    let connect = dp.load_connect_programs();
    let cgroup2 = sys::cgroup2_root();
    v.push(check(
        "refuse",
        connect.is_ok() && cgroup2.is_some(),
        match (&connect, &cgroup2) {
            (Ok(()), Some(root)) => format!(
                "connect4/connect6 programs verify (bpf_set_retval); attached to {} while a refuse fault is active",
                root.display()
            ),
            (Ok(()), None) => "the programs verify, but no cgroup2 is mounted here (the agent mounts one privately to attach)".to_owned(),
            // What a kernel without the helper would give: a connect program returning 0
            // makes connect() fail with EPERM, whatever --errno says.
            (Err(e), _) => format!(
                "{e}: the connect programs need bpf_set_retval (Linux 5.18+); without it a refused connect() can only fail with EPERM, which --errno cannot change, so --refuse is refused on this kernel"
            ),
        },
        "--refuse",
    ));
    let sock_ingress = dp.load_socket_ingress_program();
    v.push(check(
        "scope-in",
        sock_ingress.is_ok() && cgroup2.is_some(),
        match (&sock_ingress, &cgroup2) {
            (Ok(()), Some(root)) => format!(
                "cgroup_skb ingress program verifies; attached to {} while a process-scoped fault acts on ingress (loss only: a cgroup program may pass or drop)",
                root.display()
            ),
            (Ok(()), None) => "the program verifies, but no cgroup2 is mounted here (the agent mounts one privately to attach)".to_owned(),
            (Err(e), _) => e.to_string(),
        },
        "process-scoped loss at ingress",
    ));
    v.push(match reset_probe() {
        Ok(()) => check(
            "reset",
            true,
            "sock_diag SOCK_DESTROY aborted a loopback connection of the probe",
            "--reset",
        ),
        Err(e) => check("reset", false, e, "--reset"),
    });
    let ebpf = ebpf.map_err(|e| e.to_string());
    v.extend(dns::checks(&dp, &ebpf, tcx, clsact));
    drop(dp);
    let (layout, controllers) = cgroup_layout();
    v.push(check(
        "cgroup",
        true,
        format!("{layout}; controllers: {controllers}"),
        "cpu, memory, io pressure",
    ));
    // What the limit and stress faults will use, found as they find it.
    for (name, c, needed) in [
        (
            "cg-cpu",
            crate::kernel::cgroup::Controller::Cpu,
            "--cpu-limit, --cpu-stress",
        ),
        (
            "cg-mem",
            crate::kernel::cgroup::Controller::Memory,
            "--memory-high, --memory-max, --memory-stress",
        ),
        ("cg-io", crate::kernel::cgroup::Controller::Io, "--io-limit"),
    ] {
        v.push(match crate::kernel::cgroup::Hierarchy::find(c) {
            Ok(h) => check(
                name,
                true,
                format!(
                    "{} controller: cgroup {} at {}{}",
                    c.as_str(),
                    h.version.as_str(),
                    h.root.display(),
                    match (c, h.version) {
                        (
                            crate::kernel::cgroup::Controller::Memory,
                            crate::kernel::cgroup::Version::V1,
                        ) => " (memory.limit_in_bytes; --memory-high needs v2)",
                        (
                            crate::kernel::cgroup::Controller::Io,
                            crate::kernel::cgroup::Version::V1,
                        ) => " (blkio.throttle.*: buffered writes are not throttled on v1)",
                        _ => "",
                    }
                ),
                needed,
            ),
            Err(e) => check(name, false, e.to_string(), needed),
        });
    }
    let psi = std::fs::read_to_string("/proc/pressure/cpu").is_ok();
    v.push(check(
        "psi",
        psi,
        if psi {
            "/proc/pressure/* readable"
        } else {
            "no PSI (CONFIG_PSI, or boot with psi=1)"
        },
        "pressure checks",
    ));
    v
}
