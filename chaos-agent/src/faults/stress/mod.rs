//! The stress fault type: stressors built into the agent (`--cpu-stress N[@LOAD%]`,
//! `--memory-stress SIZE`, `--io-stress PATH[:RATE]`), so no stress-ng is needed and none
//! outlives its fault. The IO stressor's file (`PATH/.chaos-io-stress-<id>`) is journaled
//! before it is made (`Undo::StressFile`) and removed with the fault.
//!
//! The stressor is one process, the agent's own binary (`chaos-agent stress-worker`), in a
//! cgroup the agent makes for the fault (`chaos-stress-<id>` below the hierarchy's root, or with
//! `--inside` below the target's cgroup, to press it from within), in each hierarchy it needs
//! (one on v2; the cpu and the memory one on v1). Before it runs, it moves itself into them,
//! asks to be killed when the agent dies (`PR_SET_PDEATHSIG`) and sets its `oom_score_adj` to
//! 1000, so the OOM killer takes it before the agent or a workload; its own cgroup is capped
//! just above the memory it holds where the memory controller is there. The undo
//! (`Undo::StressCgroup`, journaled before each directory is made) kills every process in the
//! cgroup and removes it, for a stop, a TTL, and a dead agent's journal alike.

mod args;
mod spec;
pub mod worker;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub use args::StressArgs;
pub use spec::{CpuStress, IoStress, StressSpec};

use super::{ActiveFault, ApplyCtx, Effects, FaultError, FaultSpec};
use crate::faults::limit::Bytes;
use crate::kernel::bpf::Counters;
use crate::kernel::cgroup::{self, Controller, Hierarchy, Version};
use crate::spec::SpecError;
use crate::txn::undo::Undo;

/// Room above the held memory in the stressor's own cgroup: its binary, stacks, page tables.
const CAP_SLACK: u64 = 32 << 20;

fn bad(what: &'static str, why: String) -> FaultError {
    FaultError::Scope(SpecError::BadLimit { what, why })
}

/// The hierarchies the stressors need: cpu for CPU workers, memory for memory.
fn hierarchies(s: &StressSpec) -> Result<Vec<Hierarchy>, FaultError> {
    let mut out: Vec<Hierarchy> = Vec::new();
    let wanted = [
        (s.cpu.is_some(), Controller::Cpu),
        (s.memory.is_some(), Controller::Memory),
        (s.io.is_some(), Controller::Io),
    ];
    for (want, c) in wanted {
        if !want {
            continue;
        }
        let h = Hierarchy::find(c).map_err(FaultError::Cgroup)?;
        // On v2 both controllers share one hierarchy: one directory.
        if !out.iter().any(|o| o.root == h.root) {
            out.push(h);
        }
    }
    Ok(out)
}

/// Where the stressor cgroups of fault `id` go: `(hierarchy, directory)`.
fn dirs(spec: &FaultSpec, id: &str) -> Result<Vec<(Hierarchy, PathBuf)>, FaultError> {
    let Some(s) = &spec.stress else {
        return Ok(Vec::new());
    };
    let name = format!("chaos-stress-{id}");
    let mut out = Vec::new();
    for h in hierarchies(s)? {
        let parent = if s.inside {
            h.dir(&spec.target.cgroup_in(&h).map_err(FaultError::Scope)?)
                .map_err(FaultError::Cgroup)?
        } else {
            h.root.clone()
        };
        out.push((h, parent.join(&name)));
    }
    Ok(out)
}

/// Checks what only the host can tell (its memory and CPUs, the hierarchies, the target).
pub fn check(spec: &FaultSpec) -> Result<(), FaultError> {
    let Some(s) = &spec.stress else {
        return Ok(());
    };
    if let Some(m) = s.memory
        && let Some(total) = crate::sys::mem_total()
        && m.0 + CAP_SLACK > total
    {
        return Err(bad(
            "--memory-stress",
            format!(
                "{m} is more than this host's memory ({}) can hold",
                Bytes(total)
            ),
        ));
    }
    if let Some(io) = &s.io {
        check_io_dir(&io.dir)?;
    }
    if let Some(c) = s.cpu {
        let n = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        if c.workers as usize > 4 * n {
            return Err(bad(
                "--cpu-stress",
                format!(
                    "{} workers on {n} CPUs: at most {} (4 per CPU)",
                    c.workers,
                    4 * n
                ),
            ));
        }
    }
    dirs(spec, "check").map(drop)
}

/// Room the IO stressor leaves free on its filesystem beyond its own file.
const IO_SPARE: u64 = 256 << 20;

/// The IO stressor's directory: a directory, with room for the file and some to spare.
fn check_io_dir(dir: &std::path::Path) -> Result<(), FaultError> {
    let bad_dir = |why: String| bad("--io-stress", format!("{}: {why}", dir.display()));
    if !dir.is_dir() {
        return Err(bad_dir("not a directory".to_owned()));
    }
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| bad_dir(e.to_string()))?;
    let free = st.blocks_available() * st.fragment_size();
    let need = worker::IO_FILE_SIZE + IO_SPARE;
    if free < need {
        return Err(bad_dir(format!(
            "{} free, the stressor's file needs {} and leaves {} spare",
            Bytes(free & !((1 << 20) - 1)),
            Bytes(worker::IO_FILE_SIZE),
            Bytes(IO_SPARE)
        )));
    }
    Ok(())
}

/// The IO stressor's file of fault `id`.
fn io_file(io: &IoStress, id: &str) -> PathBuf {
    io.dir.join(format!(".chaos-io-stress-{id}"))
}

/// Makes the IO stressor's file (journaled before): new (`O_EXCL`), opened once with `O_DIRECT`
/// to prove the filesystem takes direct IO, and sized.
fn make_io_file(path: &std::path::Path, dir: &std::path::Path) -> Result<(), FaultError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) {
                bad(
                    "--io-stress",
                    format!(
                        "the filesystem of {} does not take direct IO (tmpfs before Linux 6.6 does not): give a directory on a disk",
                        dir.display()
                    ),
                )
            } else {
                bad("--io-stress", format!("{}: {e}", path.display()))
            }
        })?;
    f.set_len(worker::IO_FILE_SIZE)
        .map_err(|e| bad("--io-stress", format!("{}: {e}", path.display())))
}

/// How to start the stressor again (`--flap` starts it at every active phase).
#[derive(Debug, Clone)]
struct Launch {
    args: Vec<String>,
    /// Whether it runs the IO stressor (and has IO to report).
    io: bool,
    /// The `cgroup.procs` files it writes itself into, prepared before any fork.
    procs: Vec<CString>,
}

impl Launch {
    /// Starts the stressor in its cgroups.
    fn spawn(&self) -> std::io::Result<Child> {
        // This very binary, even if it was replaced on disk since; named so in `ps`.
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg0("chaos-agent")
            .arg("stress-worker")
            .args(&self.args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let parent = std::process::id();
        let procs = self.procs.clone();
        let oom = c"/proc/self/oom_score_adj";
        // SAFETY: between fork and exec only async-signal-safe calls (prctl, getppid, open,
        // write, close) on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                // Die with the agent. PDEATHSIG follows the thread that forked: stressors are
                // started from the runtime's worker threads, which live as long as it does.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The agent may have died before the prctl took effect.
                if libc::getppid() != parent as libc::pid_t {
                    libc::_exit(1);
                }
                for f in &procs {
                    let fd = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                }
                let fd = libc::open(oom.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"1000".as_ptr().cast(), 4);
                    libc::close(fd);
                }
                Ok(())
            });
        }
        cmd.spawn()
    }
}

/// The stressor process, shared by the fault and its flapper.
#[derive(Debug)]
struct Stressor {
    launch: Launch,
    child: Option<Child>,
    pid: u32,
    /// CPU seconds of the stressors killed before the current one (`--flap`).
    cpu_before: f64,
    /// Bytes read and written by the stressors killed before the current one.
    io_before: (f64, f64),
    /// The effects read as it was stopped, for the report after it.
    last: Option<Effects>,
    /// The target's cgroup v2 directory with `--inside`, else none: where the pressure that
    /// matters is read (else the host's, `/proc/pressure`).
    psi: Option<PathBuf>,
}

impl Stressor {
    fn stop(&mut self) {
        if self.child.is_some() {
            let e = self.read_effects();
            self.cpu_before = e
                .get("stress_cpu_seconds")
                .copied()
                .unwrap_or(self.cpu_before);
            if let (Some(r), Some(w)) = (
                e.get("stress_io_read_bytes"),
                e.get("stress_io_write_bytes"),
            ) {
                self.io_before = (*r, *w);
            }
            self.last = Some(e);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn start(&mut self) -> std::io::Result<()> {
        if self.child.is_none() {
            let c = self.launch.spawn()?;
            self.pid = c.id();
            self.child = Some(c);
        }
        Ok(())
    }

    /// The stressor's CPU time and memory (`/proc`), and the pressure it causes.
    fn read_effects(&self) -> Effects {
        let mut e = Effects::new();
        let mut cpu = self.cpu_before;
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            && self.child.is_some()
        {
            let rest = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
            let f: Vec<&str> = rest.split_whitespace().collect();
            if let (Some(u), Some(s)) = (
                f.get(11).and_then(|v| v.parse::<u64>().ok()),
                f.get(12).and_then(|v| v.parse::<u64>().ok()),
            ) {
                // SAFETY: sysconf has no preconditions.
                let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
                cpu += (u + s) as f64 / hz;
            }
        }
        e.insert("stress_cpu_seconds".to_owned(), cpu);
        if self.launch.io {
            // What the disk was asked for (`/proc/PID/io`: direct IO passes no page cache).
            let io = std::fs::read_to_string(format!("/proc/{}/io", self.pid))
                .ok()
                .filter(|_| self.child.is_some())
                .unwrap_or_default();
            let field = |k: &str| {
                io.lines()
                    .find_map(|l| l.strip_prefix(k)?.trim().parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            e.insert(
                "stress_io_read_bytes".to_owned(),
                self.io_before.0 + field("read_bytes:"),
            );
            e.insert(
                "stress_io_write_bytes".to_owned(),
                self.io_before.1 + field("write_bytes:"),
            );
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            && self.child.is_some()
            && let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            e.insert("stress_memory_bytes".to_owned(), (kb * 1024) as f64);
        }
        let base = self
            .psi
            .clone()
            .unwrap_or_else(|| PathBuf::from("/proc/pressure"));
        for r in ["cpu", "memory", "io"] {
            let (file, key) = if self.psi.is_some() {
                (
                    base.join(format!("{r}.pressure")),
                    format!("{r}_pressure_some_avg10"),
                )
            } else {
                (base.join(r), format!("host_{r}_pressure_some_avg10"))
            };
            if let Some(v) = cgroup::pressure_some_avg10(&file) {
                e.insert(key, v);
            }
        }
        e
    }
}

type Shared = std::sync::Arc<std::sync::Mutex<Stressor>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Stressor> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The running stressor.
#[derive(Debug)]
struct StressFault {
    stressor: Shared,
    /// With `--flap`: stops the stressor at each resting phase (its memory freed) and starts
    /// it again at each active one.
    flapper: Option<tokio::task::JoinHandle<()>>,
}

impl StressFault {
    fn stop(&mut self) {
        if let Some(t) = self.flapper.take() {
            t.abort();
        }
        lock(&self.stressor).stop();
    }
}

impl Drop for StressFault {
    fn drop(&mut self) {
        self.stop();
    }
}

impl ActiveFault for StressFault {
    fn backend(&self) -> String {
        "stressor".to_owned()
    }

    fn counters(&self) -> Option<Counters> {
        None
    }

    fn effects(&self) -> Option<Effects> {
        let s = lock(&self.stressor);
        if s.child.is_none()
            && let Some(last) = &s.last
        {
            return Some(last.clone());
        }
        Some(s.read_effects())
    }

    fn set_expiry(&mut self, _expires_at_mono_ns: u64) -> Result<(), FaultError> {
        Ok(())
    }

    fn disarm(&mut self) -> Result<(), FaultError> {
        self.stop();
        Ok(())
    }
}

/// Stops and starts the stressor at the phase edges of `flap`, counted from `start`.
async fn flap_stressor(
    flap: crate::faults::flap::Flap,
    ttl: std::time::Duration,
    start: tokio::time::Instant,
    stressor: Shared,
) {
    crate::faults::flap::at_edges(flap, ttl, start, |active| {
        let mut s = lock(&stressor);
        if !active {
            s.stop();
            tracing::info!(event = "flap_edge", active, "stressor stopped");
            return;
        }
        match s.start() {
            Ok(()) => {
                tracing::info!(event = "flap_edge", active, pid = s.pid, "stressor started");
            }
            Err(e) => {
                tracing::warn!(event = "flap_edge", error = %e, "stressor did not start");
            }
        }
    })
    .await;
}

/// Makes the stressor's cgroups and starts it in them.
pub fn apply(spec: &FaultSpec, ctx: &mut ApplyCtx<'_>) -> Result<Box<dyn ActiveFault>, FaultError> {
    let Some(s) = &spec.stress else {
        return Err(FaultError::Scope(SpecError::NoEffect));
    };
    check(spec)?;
    let id = ctx.id.to_string();
    let dirs = dirs(spec, &id)?;
    // The file first: undone last, once no stressor has it open.
    let io_path = s.io.as_ref().map(|io| io_file(io, &id));
    if let (Some(io), Some(path)) = (&s.io, &io_path) {
        ctx.txn.record(Undo::StressFile { path: path.clone() })?;
        make_io_file(path, &io.dir)?;
    }
    let mut procs = Vec::new();
    for (h, dir) in &dirs {
        ctx.txn.record(Undo::StressCgroup { path: dir.clone() })?;
        cgroup::make_dir(dir).map_err(FaultError::Cgroup)?;
        if let Some(m) = s.memory {
            // The hard cap: the stressor, never a workload, is what this cgroup's OOM kills.
            let cap = (m.0 + CAP_SLACK).to_string();
            let file = match h.version {
                Version::V2 => dir.join("memory.max"),
                Version::V1 => dir.join("memory.limit_in_bytes"),
            };
            if h.controller == Controller::Memory || h.version == Version::V2 {
                if file.exists() {
                    cgroup::write(&file, &cap).map_err(FaultError::Cgroup)?;
                } else {
                    tracing::warn!(dir = %dir.display(), "no memory controller in the stressor's cgroup: no cap of its own (oom_score_adj 1000 still makes it the OOM killer's first pick)");
                }
            }
        }
        procs.push(
            CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
                .map_err(|_| bad("--cpu-stress", "a cgroup path with a NUL byte".to_owned()))?,
        );
    }
    let mut args = Vec::new();
    if let Some(c) = s.cpu {
        args.extend(["--cpu-workers".to_owned(), c.workers.to_string()]);
        args.extend(["--cpu-load".to_owned(), c.load.to_string()]);
    }
    if let Some(m) = s.memory {
        args.extend(["--memory-bytes".to_owned(), m.0.to_string()]);
    }
    if let Some(r) = s.memory_ramp {
        args.extend(["--memory-ramp-ms".to_owned(), r.as_millis().to_string()]);
    }
    if let (Some(io), Some(path)) = (&s.io, &io_path) {
        args.extend(["--io-file".to_owned(), path.display().to_string()]);
        args.extend([
            "--io-rate".to_owned(),
            io.rate.map_or(0, |r| r.0).to_string(),
        ]);
    }
    let psi = s
        .inside
        .then(|| match spec.target.pid {
            Some(pid) => crate::target::cgroup_of_pid(pid).ok(),
            None => spec.target.cgroup.clone(),
        })
        .flatten()
        .and_then(|p| cgroup::v2_dir(&p));
    let mut stressor = Stressor {
        launch: Launch {
            args,
            io: io_path.is_some(),
            procs,
        },
        child: None,
        pid: 0,
        cpu_before: 0.0,
        io_before: (0.0, 0.0),
        last: None,
        psi,
    };
    stressor.start().map_err(|source| {
        FaultError::Cgroup(cgroup::CgroupError::File {
            op: "start the stressor in",
            path: dirs.first().map(|d| d.1.clone()).unwrap_or_default(),
            source,
        })
    })?;
    tracing::debug!(pid = stressor.pid, dirs = ?dirs.iter().map(|d| d.1.display().to_string()).collect::<Vec<_>>(), "stressor started");
    let stressor: Shared = std::sync::Arc::new(std::sync::Mutex::new(stressor));
    let flapper = spec.flap.map(|flap| {
        tokio::spawn(flap_stressor(
            flap,
            spec.ttl,
            tokio::time::Instant::now(),
            stressor.clone(),
        ))
    });
    Ok(Box::new(StressFault { stressor, flapper }))
}

/// The plan lines of a stress fault (`--dry-run`).
#[must_use]
pub fn plan(spec: &FaultSpec) -> Vec<String> {
    let Some(s) = &spec.stress else {
        return Vec::new();
    };
    let mut out = Vec::new();
    match check(spec).and_then(|()| dirs(spec, "<id>")) {
        Ok(dirs) => {
            for (h, d) in dirs {
                out.push(format!(
                    "create cgroup {} ({} {}){}; removed with its processes at the end",
                    d.display(),
                    h.controller.as_str(),
                    h.version.as_str(),
                    s.memory
                        .filter(|_| h.controller == Controller::Memory || h.version == Version::V2)
                        .map(|m| format!(", capped at {}", Bytes(m.0 + CAP_SLACK)))
                        .unwrap_or_default()
                ));
            }
            if let Some(io) = &s.io {
                out.push(format!(
                    "create {} ({}, direct IO); removed at the end",
                    io_file(io, "<id>").display(),
                    Bytes(worker::IO_FILE_SIZE)
                ));
            }
            out.push(format!(
                "start the stressor ({}) in it: oom_score_adj 1000, killed if the agent dies (PR_SET_PDEATHSIG)",
                s.summary()
            ));
        }
        Err(e) => out.push(format!("stress: {e} (the inject would fail)")),
    }
    out
}
