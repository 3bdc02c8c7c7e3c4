//! A cgroup of a test's own in one controller's hierarchy (v2 root, or the v1 mount that carries
//! the controller), with processes started in it. On drop every process in it is killed, not
//! only the ones the test started: a `sh -c '...; sleep 600'` leaves its `sleep` behind when
//! only the shell is killed, and that orphan keeps the cgroup populated (rmdir fails) and keeps
//! whatever pipe it inherited open (the VM runner's `| sed` waited on one for 600 s).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::unique_name;

/// A cgroup made by the test, its processes killed and its directory removed on drop.
#[derive(Debug)]
pub struct ControllerCgroup {
    /// Its directory.
    pub dir: PathBuf,
    /// Its path below the hierarchy's root (what `--cgroup` takes).
    pub path: String,
    children: Vec<Child>,
}

impl ControllerCgroup {
    /// Creates `ROOT/PREFIX-...`.
    #[must_use]
    pub fn new(root: &Path, prefix: &str) -> Self {
        let name = unique_name(prefix);
        let dir = root.join(&name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self {
            dir,
            path: format!("/{name}"),
            children: Vec::new(),
        }
    }

    /// Starts `sh -c SCRIPT` inside the cgroup (it moves itself in before it runs `SCRIPT`),
    /// with no stdio, and returns the shell's pid once `cgroup.procs` lists it.
    pub fn spawn(&mut self, script: &str) -> u32 {
        let procs = self.dir.join("cgroup.procs");
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > {} && {script}", procs.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        self.children.push(child);
        let t0 = Instant::now();
        while !self.pids().contains(&pid) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "pid {pid} never joined {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        pid
    }

    /// The processes in it now (`cgroup.procs`).
    #[must_use]
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// A file of it, trimmed.
    #[must_use]
    pub fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name))
            .unwrap_or_else(|e| panic!("read {name}: {e}"))
            .trim()
            .to_owned()
    }

    /// Writes a file of it.
    pub fn write(&self, name: &str, value: &str) {
        std::fs::write(self.dir.join(name), value).unwrap_or_else(|e| panic!("write {name}: {e}"));
    }
}

impl Drop for ControllerCgroup {
    fn drop(&mut self) {
        // Everything in it, until it is empty (a process may fork while we kill), then our own
        // children reaped, then the directory (rmdir succeeds once the kernel let go of them).
        let t0 = Instant::now();
        loop {
            let pids = self.pids();
            if pids.is_empty() || t0.elapsed() > Duration::from_secs(5) {
                break;
            }
            for pid in pids {
                // SAFETY: kill has no memory preconditions; a pid gone since the read is ESRCH.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        while std::fs::remove_dir(&self.dir).is_err()
            && self.dir.exists()
            && t0.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
