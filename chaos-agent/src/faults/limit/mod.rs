//! The limit fault type: resource limits written into the target's cgroup for the fault's life
//! (`--cpu-limit`, `--memory-high`, `--memory-max`, `--io-limit`), on cgroup v2, v1 and hybrid
//! hosts, found per controller (`kernel::cgroup`). An IO limit is one line of a nested-keyed
//! file (the disk's line of `io.max`, or of each v1 `blkio.throttle.*_device` file): only that
//! line is read, compared and written back. Each file's old value is journaled with the new one before
//! the write (`Undo::CgroupFile`), and written back at the end unless someone else changed the
//! file in between: theirs is left, logged and counted.
//!
//! The target is the cgroup of `--cgroup PATH` (in each controller's hierarchy), of `--pid`
//! (read per hierarchy from `/proc/PID/cgroup`, since a v1 hierarchy has its own paths), or
//! the cgroup the engine resolved for `--unit` and `--container`.

mod args;
mod spec;

use std::path::PathBuf;

pub use args::LimitArgs;
pub use spec::{Bytes, IoLimit, LimitSpec};

use super::{ActiveFault, ApplyCtx, FaultError, FaultSpec};
use crate::kernel::bpf::Counters;
use crate::kernel::cgroup::{self, Controller, Hierarchy, Version};
use crate::spec::SpecError;
use crate::txn::undo::Undo;

/// One controller file the fault sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The controller and where it lives.
    pub controller: Controller,
    /// Its version.
    pub version: Version,
    /// The file.
    pub file: PathBuf,
    /// In a nested-keyed file, the line's key (the disk's `MAJ:MIN`): `previous` and `value`
    /// are that line.
    pub key: Option<String>,
    /// Its value before the fault.
    pub previous: String,
    /// What the fault writes.
    pub value: String,
    /// `cpu.max (cgroup v2)`, for messages.
    pub what: String,
}

/// The cgroup path of the target in `h`.
fn target_path(spec: &FaultSpec, h: &Hierarchy) -> Result<String, FaultError> {
    spec.target.cgroup_in(h).map_err(FaultError::Scope)
}

fn hierarchy(c: Controller) -> Result<Hierarchy, FaultError> {
    Hierarchy::find(c).map_err(FaultError::Cgroup)
}

fn bad(what: &'static str, why: String) -> FaultError {
    FaultError::Scope(SpecError::BadLimit { what, why })
}

/// The current value of a v2 controller file of the target's cgroup. A cgroup whose parent
/// does not hand it the controller (`cgroup.subtree_control`) has no such file: that is said
/// so, with what turns it on, rather than as a bare "no such file".
fn read_v2(
    file: &std::path::Path,
    c: Controller,
    flag: &'static str,
) -> Result<String, FaultError> {
    let dir = file.parent().unwrap_or(file);
    if !file.exists() && dir.is_dir() {
        let has = cgroup::read(&dir.join("cgroup.controllers"))
            .is_ok_and(|l| l.split_whitespace().any(|x| x == c.as_str()));
        if !has {
            return Err(bad(
                flag,
                format!(
                    "the {} controller is not enabled for cgroup {}: its parent's cgroup.subtree_control does not list it (systemd enables it with {}=yes or Delegate=yes on the unit)",
                    c.as_str(),
                    dir.display(),
                    match c {
                        Controller::Cpu => "CPUAccounting",
                        Controller::Memory => "MemoryAccounting",
                        Controller::Io => "IOAccounting",
                    }
                ),
            ));
        }
    }
    cgroup::read(file).map_err(FaultError::Cgroup)
}

/// The number from a `cpu.stat`-like or plain numeric file, if any.
fn number(file: &std::path::Path) -> Option<u64> {
    cgroup::read(file).ok()?.parse().ok()
}

/// The host's online CPUs.
fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Works out every file the fault writes on this host, and checks what only the host can tell
/// (its CPU count and memory, the cgroup's usage, which controllers exist where). Reads only.
pub fn changes(spec: &FaultSpec) -> Result<Vec<Change>, FaultError> {
    let Some(l) = &spec.limit else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    if let Some(cpus) = l.cpu {
        let n = host_cpus();
        if cpus > n as f64 {
            return Err(bad(
                "--cpu-limit",
                format!("{cpus} CPUs is more than this host's {n}: it would limit nothing"),
            ));
        }
        let h = hierarchy(Controller::Cpu)?;
        let dir = h.dir(&target_path(spec, &h)?).map_err(FaultError::Cgroup)?;
        out.push(match h.version {
            Version::V2 => {
                let file = dir.join("cpu.max");
                let previous = read_v2(&file, Controller::Cpu, "--cpu-limit")?;
                // `QUOTA PERIOD`: the cgroup's own period stays.
                let period: u64 = previous
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(100_000);
                let quota = quota_us(cpus, period);
                Change {
                    controller: Controller::Cpu,
                    version: h.version,
                    key: None,
                    value: format!("{quota} {period}"),
                    previous,
                    what: "cpu.max (cgroup v2)".to_owned(),
                    file,
                }
            }
            Version::V1 => {
                let file = dir.join("cpu.cfs_quota_us");
                let previous = cgroup::read(&file).map_err(FaultError::Cgroup)?;
                let period = number(&dir.join("cpu.cfs_period_us")).unwrap_or(100_000);
                Change {
                    controller: Controller::Cpu,
                    version: h.version,
                    key: None,
                    value: quota_us(cpus, period).to_string(),
                    previous,
                    what: format!("cpu.cfs_quota_us (cgroup v1, period {period} us)"),
                    file,
                }
            }
        });
    }
    if l.memory_high.is_some() || l.memory_max.is_some() {
        let total = crate::sys::mem_total();
        for (what, v) in [
            ("--memory-high", l.memory_high),
            ("--memory-max", l.memory_max),
        ] {
            if let (Some(b), Some(t)) = (v, total)
                && b.0 > t
            {
                return Err(bad(
                    what,
                    format!("{b} is more than this host's memory ({})", Bytes(t)),
                ));
            }
        }
        let h = hierarchy(Controller::Memory)?;
        let dir = h.dir(&target_path(spec, &h)?).map_err(FaultError::Cgroup)?;
        let (high, max, usage) = match h.version {
            Version::V2 => ("memory.high", "memory.max", "memory.current"),
            Version::V1 => ("", "memory.limit_in_bytes", "memory.usage_in_bytes"),
        };
        if let Some(b) = l.memory_high {
            if high.is_empty() {
                return Err(bad(
                    "--memory-high",
                    format!(
                        "memory.high is cgroup v2 only, and this host's memory controller is v1 ({}); --memory-max sets memory.limit_in_bytes there",
                        h.root.display()
                    ),
                ));
            }
            let file = dir.join(high);
            out.push(Change {
                controller: Controller::Memory,
                version: h.version,
                key: None,
                previous: read_v2(&file, Controller::Memory, "--memory-high")?,
                value: page_aligned(b.0).to_string(),
                what: "memory.high (cgroup v2)".to_owned(),
                file,
            });
        }
        if let Some(b) = l.memory_max {
            let used = number(&dir.join(usage));
            if let Some(used) = used.filter(|u| *u > b.0 && !l.allow_oom) {
                return Err(bad(
                    "--memory-max",
                    format!(
                        "{b} is below what the target uses now ({}): its processes would be OOM-killed; --allow-oom if that is the point",
                        Bytes(used)
                    ),
                ));
            }
            let file = dir.join(max);
            out.push(Change {
                controller: Controller::Memory,
                version: h.version,
                key: None,
                previous: match h.version {
                    Version::V2 => read_v2(&file, Controller::Memory, "--memory-max")?,
                    Version::V1 => cgroup::read(&file).map_err(FaultError::Cgroup)?,
                },
                value: page_aligned(b.0).to_string(),
                what: format!("{max} (cgroup {})", h.version.as_str()),
                file,
            });
        }
    }
    if !l.io.is_empty() {
        let h = hierarchy(Controller::Io)?;
        let dir = h.dir(&target_path(spec, &h)?).map_err(FaultError::Cgroup)?;
        let mut disks: Vec<String> = Vec::new();
        for io in &l.io {
            let disk = crate::sys::block::disk_of(&io.device)
                .map_err(|e| bad("--io-limit", e.to_string()))?;
            if disks.contains(&disk.key) {
                return Err(bad(
                    "--io-limit",
                    format!(
                        "{} is disk {} ({}) again: one --io-limit per disk",
                        io.device, disk.name, disk.key
                    ),
                ));
            }
            disks.push(disk.key.clone());
            out.extend(io_changes(io, &disk, &h, &dir)?);
        }
    }
    Ok(out)
}

/// The v1 throttle file of an `io.max` key.
fn v1_io_file(key: &str) -> &'static str {
    match key {
        "rbps" => "blkio.throttle.read_bps_device",
        "wbps" => "blkio.throttle.write_bps_device",
        "riops" => "blkio.throttle.read_iops_device",
        _ => "blkio.throttle.write_iops_device",
    }
}

/// The lines one `--io-limit` writes: the disk's `io.max` line (the keys not given keep their
/// value), or one line in each v1 throttle file it sets.
fn io_changes(
    io: &IoLimit,
    disk: &crate::sys::block::Disk,
    h: &Hierarchy,
    dir: &std::path::Path,
) -> Result<Vec<Change>, FaultError> {
    let on = match &disk.partition {
        Some(p) => format!(" (disk {} of partition {p})", disk.name),
        None => format!(" ({})", disk.name),
    };
    let read = |file: &std::path::Path| {
        if file.exists() {
            cgroup::read_keyed(file, &disk.key).map_err(FaultError::Cgroup)
        } else {
            Err(bad(
                "--io-limit",
                format!(
                    "{} is missing: the cgroup has no {} controller (on cgroup v2, its parent's cgroup.subtree_control must enable io)",
                    file.display(),
                    h.controller.as_str()
                ),
            ))
        }
    };
    Ok(match h.version {
        Version::V2 => {
            let file = dir.join("io.max");
            let previous = read(&file)?;
            let mut value = disk.key.clone();
            for k in ["rbps", "wbps", "riops", "wiops"] {
                let given = io.keys().into_iter().find(|(g, _)| *g == k);
                let v = match given {
                    Some((_, v)) => v.to_string(),
                    None => previous
                        .split_whitespace()
                        .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
                        .unwrap_or("max")
                        .to_owned(),
                };
                let _ = std::fmt::Write::write_fmt(&mut value, format_args!(" {k}={v}"));
            }
            vec![Change {
                controller: Controller::Io,
                version: h.version,
                key: Some(disk.key.clone()),
                previous,
                value,
                what: format!("io.max (cgroup v2){on}"),
                file,
            }]
        }
        Version::V1 => io
            .keys()
            .into_iter()
            .map(|(k, v)| {
                let file = dir.join(v1_io_file(k));
                Ok(Change {
                    controller: Controller::Io,
                    version: h.version,
                    key: Some(disk.key.clone()),
                    previous: read(&file)?,
                    value: format!("{} {v}", disk.key),
                    what: format!("{} (cgroup v1){on}", v1_io_file(k)),
                    file,
                })
            })
            .collect::<Result<_, FaultError>>()?,
    })
}

/// The files (and, in keyed files, the lines) the fault writes on this host, for conflicts
/// between limit faults; reads nothing but the mount table, `/proc/PID/cgroup` and the block
/// devices, and leaves out what cannot be resolved.
#[must_use]
pub fn files(spec: &FaultSpec) -> Vec<String> {
    let Some(l) = &spec.limit else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut add = |c: Controller, v2: &str, v1: &str, key: Option<&str>| {
        if let Ok(h) = Hierarchy::find(c)
            && let Ok(path) = target_path(spec, &h)
        {
            let name = if h.version == Version::V2 { v2 } else { v1 };
            let file = h.root.join(path.trim_start_matches('/')).join(name);
            out.push(match key {
                Some(k) => format!("{} line {k}", file.display()),
                None => file.display().to_string(),
            });
        }
    };
    if l.cpu.is_some() {
        add(Controller::Cpu, "cpu.max", "cpu.cfs_quota_us", None);
    }
    if l.memory_high.is_some() {
        add(Controller::Memory, "memory.high", "memory.high", None);
    }
    if l.memory_max.is_some() {
        add(
            Controller::Memory,
            "memory.max",
            "memory.limit_in_bytes",
            None,
        );
    }
    for io in &l.io {
        if let Ok(d) = crate::sys::block::disk_of(&io.device) {
            for (k, _) in io.keys() {
                add(Controller::Io, "io.max", v1_io_file(k), Some(&d.key));
            }
        }
    }
    out
}

/// The quota of `cpus` CPUs over `period` µs (at least v1's minimum of 1000 µs).
fn quota_us(cpus: f64, period: u64) -> u64 {
    ((cpus * period as f64).round() as u64).max(1000)
}

/// Memory limits read back page-aligned: written so, the value the undo compares with is the
/// one the kernel shows.
fn page_aligned(b: u64) -> u64 {
    b & !4095
}

/// A controller directory the fault limits, and its counters when the fault began.
#[derive(Debug)]
struct Watched {
    controller: Controller,
    version: Version,
    dir: PathBuf,
    baseline: std::collections::BTreeMap<String, u64>,
}

/// The counters of a controller directory the effects are measured as differences of.
fn counts(
    controller: Controller,
    version: Version,
    dir: &std::path::Path,
) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    match controller {
        Controller::Cpu => {
            let s = cgroup::flat_keyed(&dir.join("cpu.stat"));
            let throttled_ns = match version {
                Version::V2 => s.get("throttled_usec").map(|u| u * 1000),
                Version::V1 => s.get("throttled_time").copied(),
            };
            for (k, v) in [
                ("cpu_periods", s.get("nr_periods").copied()),
                ("cpu_throttled_periods", s.get("nr_throttled").copied()),
                ("cpu_throttled_ns", throttled_ns),
            ] {
                if let Some(v) = v {
                    m.insert(k.to_owned(), v);
                }
            }
        }
        Controller::Memory => match version {
            Version::V2 => {
                let e = cgroup::flat_keyed(&dir.join("memory.events"));
                for (k, name) in [
                    ("high", "memory_high_events"),
                    ("max", "memory_max_events"),
                    ("oom_kill", "memory_oom_kills"),
                ] {
                    if let Some(v) = e.get(k) {
                        m.insert(name.to_owned(), *v);
                    }
                }
            }
            Version::V1 => {
                if let Some(v) = number(&dir.join("memory.failcnt")) {
                    m.insert("memory_max_events".to_owned(), v);
                }
                if let Some(v) = cgroup::flat_keyed(&dir.join("memory.oom_control")).get("oom_kill")
                {
                    m.insert("memory_oom_kills".to_owned(), *v);
                }
            }
        },
        Controller::Io => {
            for (k, v) in io_counts(version, dir) {
                m.insert(k.to_owned(), v);
            }
        }
    }
    m
}

/// The cgroup's IO over all its disks: bytes and operations read and written, from `io.stat`
/// (`MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=..`) or v1's `blkio.throttle.io_service_bytes`
/// and `io_serviced` (`MAJ:MIN Read N` lines).
fn io_counts(version: Version, dir: &std::path::Path) -> [(&'static str, u64); 4] {
    let mut out = [
        ("io_read_bytes", 0),
        ("io_write_bytes", 0),
        ("io_read_ops", 0),
        ("io_write_ops", 0),
    ];
    let text = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    match version {
        Version::V2 => {
            for line in text("io.stat").lines() {
                for f in line.split_whitespace().skip(1) {
                    let Some((k, v)) = f.split_once('=') else {
                        continue;
                    };
                    let i = match k {
                        "rbytes" => 0,
                        "wbytes" => 1,
                        "rios" => 2,
                        "wios" => 3,
                        _ => continue,
                    };
                    out[i].1 += v.parse::<u64>().unwrap_or(0);
                }
            }
        }
        Version::V1 => {
            for (file, base) in [
                ("blkio.throttle.io_service_bytes", 0),
                ("blkio.throttle.io_serviced", 2),
            ] {
                for line in text(file).lines() {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let i = match f.get(1).copied() {
                        Some("Read") => base,
                        Some("Write") => base + 1,
                        _ => continue,
                    };
                    out[i].1 += f.get(2).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                }
            }
        }
    }
    out
}

/// The resources whose pressure (PSI) a limit fault reports.
const PSI_RESOURCES: [&str; 3] = ["cpu", "memory", "io"];

/// The limits in force, and where their effects show.
#[derive(Debug)]
struct LimitFault {
    backend: String,
    /// With `--flap`: the task that lifts the limits at each resting phase and writes them
    /// again at each active one.
    flapper: Option<tokio::task::JoinHandle<()>>,
    watched: Vec<Watched>,
    /// The target's cgroup v2 directory, where its pressure (PSI) files are (also on hybrid
    /// hosts, whose unified hierarchy has them without controllers).
    psi: Option<PathBuf>,
    /// Each resource's stall time (`some total`, µs) when the fault began.
    psi_base: std::collections::BTreeMap<&'static str, u64>,
}

impl ActiveFault for LimitFault {
    fn backend(&self) -> String {
        self.backend.clone()
    }

    fn counters(&self) -> Option<Counters> {
        None
    }

    fn effects(&self) -> Option<super::Effects> {
        let mut e = super::Effects::new();
        for w in &self.watched {
            for (k, v) in counts(w.controller, w.version, &w.dir) {
                let delta = v.saturating_sub(w.baseline.get(&k).copied().unwrap_or(0));
                if k == "cpu_throttled_ns" {
                    e.insert("cpu_throttled_seconds".to_owned(), delta as f64 / 1e9);
                } else {
                    e.insert(k, delta as f64);
                }
            }
            if w.controller == Controller::Memory {
                let usage = match w.version {
                    Version::V2 => "memory.current",
                    Version::V1 => "memory.usage_in_bytes",
                };
                if let Some(v) = number(&w.dir.join(usage)) {
                    e.insert("memory_bytes".to_owned(), v as f64);
                }
            }
        }
        if let Some(dir) = &self.psi {
            for r in PSI_RESOURCES {
                let Some(p) = cgroup::pressure(&dir.join(format!("{r}.pressure"))) else {
                    continue;
                };
                e.insert(format!("{r}_pressure_some_avg10"), p.some_avg10);
                if let Some(f) = p.full_avg10 {
                    e.insert(format!("{r}_pressure_full_avg10"), f);
                }
                // The stall the fault's time added: a count (seconds), not a level.
                let base = self.psi_base.get(r).copied().unwrap_or(p.some_total_us);
                e.insert(
                    format!("{r}_stall_seconds"),
                    p.some_total_us.saturating_sub(base) as f64 / 1e6,
                );
            }
        }
        Some(e)
    }

    fn set_expiry(&mut self, _expires_at_mono_ns: u64) -> Result<(), FaultError> {
        // The engine's deadline ends the fault; the files hold no deadline of their own.
        Ok(())
    }

    fn disarm(&mut self) -> Result<(), FaultError> {
        // The flapper stops at an await, never between a read and its write; the undo then
        // finds either phase's value and handles both.
        if let Some(t) = self.flapper.take() {
            t.abort();
        }
        Ok(())
    }
}

impl Drop for LimitFault {
    fn drop(&mut self) {
        if let Some(t) = self.flapper.take() {
            t.abort();
        }
    }
}

/// Lifts and writes back the limits at the phase edges of `flap`, counted from `start`. At
/// each edge a file must still hold the value of the phase that ends; one someone else changed
/// is left to them (logged, counted) and flaps no more. The journal's record covers both
/// phases (the undo writes `previous` back only over `written`), so an edge needs no journal
/// write: each is logged.
async fn flap_limits(
    flap: crate::faults::flap::Flap,
    ttl: std::time::Duration,
    start: tokio::time::Instant,
    mut files: Vec<Change>,
) {
    crate::faults::flap::at_edges(flap, ttl, start, |active| {
        files.retain(|c| {
            let (was, now) = if active {
                (&c.previous, &c.value)
            } else {
                (&c.value, &c.previous)
            };
            match cgroup::read_value(&c.file, c.key.as_deref()) {
                Ok(v) if cgroup::same_value(&v, was) => match cgroup::write(&c.file, now) {
                    Ok(()) => {
                        tracing::info!(event = "flap_edge", file = %c.file.display(), active, value = %now, "limit flapped");
                        true
                    }
                    Err(e) => {
                        tracing::warn!(event = "flap_edge", error = %e, "limit flap failed; it flaps no more");
                        false
                    }
                },
                Ok(v) => {
                    cgroup::KEPT_FOREIGN.inc();
                    tracing::warn!(event = "restore_skipped", file = %c.file.display(), theirs = %v, "someone else changed a flapping limit: theirs is kept, and it flaps no more");
                    false
                }
                Err(e) => {
                    tracing::warn!(event = "flap_edge", error = %e, "limit file gone; it flaps no more");
                    false
                }
            }
        });
    })
    .await;
}

/// Writes the limits, each after its undo is journaled.
pub fn apply(spec: &FaultSpec, ctx: &mut ApplyCtx<'_>) -> Result<Box<dyn ActiveFault>, FaultError> {
    let changes = changes(spec)?;
    let mut versions = Vec::new();
    let mut watched: Vec<Watched> = Vec::new();
    let flapping = spec.flap.map(|_| changes.clone());
    for c in changes {
        let dir = c
            .file
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        if !watched.iter().any(|w| w.controller == c.controller) {
            watched.push(Watched {
                controller: c.controller,
                version: c.version,
                baseline: counts(c.controller, c.version, &dir),
                dir,
            });
        }
        ctx.txn.record(Undo::CgroupFile {
            path: c.file.clone(),
            previous: c.previous.clone(),
            written: c.value.clone(),
            key: c.key.clone(),
        })?;
        cgroup::write(&c.file, &c.value).map_err(FaultError::Cgroup)?;
        tracing::debug!(file = %c.file.display(), previous = %c.previous, value = %c.value, "cgroup limit set");
        let v = c.version.as_str();
        if !versions.contains(&v) {
            versions.push(v);
        }
    }
    // The v2 path: the one given, or the pid's `0::` line.
    let v2_path = match spec.target.pid {
        Some(pid) => crate::target::cgroup_of_pid(pid).ok(),
        None => spec.target.cgroup.clone(),
    };
    // The cycle starts now that the limits are written, as the engine counts its phases.
    let flapper = spec.flap.zip(flapping).map(|(flap, files)| {
        tokio::spawn(flap_limits(
            flap,
            spec.ttl,
            tokio::time::Instant::now(),
            files,
        ))
    });
    // The root's pressure is the host's: not the target's effect.
    let psi = v2_path
        .as_deref()
        .filter(|p| !p.trim_matches('/').is_empty())
        .and_then(cgroup::v2_dir);
    let psi_base = psi
        .iter()
        .flat_map(|dir| {
            PSI_RESOURCES.into_iter().filter_map(|r| {
                Some((
                    r,
                    cgroup::pressure(&dir.join(format!("{r}.pressure")))?.some_total_us,
                ))
            })
        })
        .collect();
    Ok(Box::new(LimitFault {
        flapper,
        backend: format!("cgroup-{}", versions.join("+")),
        watched,
        psi,
        psi_base,
    }))
}

/// The plan lines of a limit fault (`--dry-run`).
#[must_use]
pub fn plan(spec: &FaultSpec) -> Vec<String> {
    match changes(spec) {
        Ok(changes) => changes
            .iter()
            .map(|c| {
                format!(
                    "write {} = {:?} (was {:?}; written back at the end unless someone else changed it meanwhile) [{}]",
                    c.file.display(),
                    c.value,
                    c.previous,
                    c.what
                )
            })
            .collect(),
        Err(e) => vec![format!("limits: {e} (the inject would fail)")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_and_alignment() {
        assert_eq!(quota_us(0.2, 100_000), 20_000);
        assert_eq!(quota_us(1.5, 100_000), 150_000);
        assert_eq!(quota_us(0.001, 100_000), 1000);
        assert_eq!(page_aligned(256 << 20), 256 << 20);
        assert_eq!(page_aligned((256 << 20) + 100), 256 << 20);
    }
}
