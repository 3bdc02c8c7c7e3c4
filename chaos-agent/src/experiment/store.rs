//! Where runs are kept: `DIR/<id>.json` and `.md` reports, and a `DIR/<id>.running` marker
//! written before a run injects anything and removed once its report is written. A marker
//! found later is a run whose process died (SIGKILL, a crash, a reboot): its faults were
//! reverted by the engine's start-up reconciliation or their kernel deadlines, and the run is
//! recorded as `interrupted`, never left looking half-running.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::report::{Outcome, Report};

/// What the marker of a running experiment holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// The run's id (`<start-ms>-<title slug>`).
    pub id: String,
    /// The experiment's title.
    pub title: String,
    /// Wall-clock start, milliseconds since the epoch.
    pub started_unix_ms: u64,
    /// The process running it.
    pub pid: u32,
}

/// A run's id: its start and its title, file-name safe.
#[must_use]
pub fn run_id(started_unix_ms: u64, title: &str) -> String {
    let slug: String = title
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .take(8)
        .collect::<Vec<_>>()
        .join("-");
    format!("{started_unix_ms}-{slug}")
}

/// Writes the marker (before the run injects anything).
pub fn begin(dir: &Path, r: &Running) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.running", r.id));
    std::fs::write(&tmp, serde_json::to_vec(r).map_err(std::io::Error::other)?)?;
    std::fs::rename(tmp, dir.join(format!("{}.running", r.id)))
}

/// Writes the reports and removes the marker. Returns the reports' path without extension.
pub fn finish(dir: &Path, id: &str, report: &Report) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let base = dir.join(id);
    let json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(base.with_extension("json"), json)?;
    std::fs::write(
        base.with_extension("md"),
        report
            .markdown()
            .replace("](timeline.svg)", &format!("]({id}.svg)")),
    )?;
    std::fs::write(base.with_extension("svg"), report.svg())?;
    match std::fs::remove_file(dir.join(format!("{id}.running"))) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    Ok(base)
}

/// Whether a process runs with this pid (a marker of a live run is no leftover).
fn alive(pid: u32) -> bool {
    i32::try_from(pid)
        .is_ok_and(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok())
        && pid != 0
}

/// Records every run whose process is gone as `interrupted`: its report written, its marker
/// removed. Returns their ids.
pub fn recover(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.filter_map(Result::ok) {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "running")
            || path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        let Some(r) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Running>(&b).ok())
        else {
            continue;
        };
        if r.pid != std::process::id() && alive(r.pid) {
            continue;
        }
        let report = Report {
            title: r.title.clone(),
            description: None,
            started_unix_ms: r.started_unix_ms,
            outcome: Outcome::Interrupted,
            reason: Some(format!(
                "the process running it (pid {}) died mid-experiment; its faults were reverted by the agent's start-up or their deadlines",
                r.pid
            )),
            method_start_s: 0.0,
            faults_end_s: 0.0,
            end_s: 0.0,
            probes: Vec::new(),
            steps: Vec::new(),
        };
        if finish(dir, &r.id, &report).is_ok() {
            tracing::warn!(event = "experiment_interrupted", id = %r.id, pid = r.pid, "a dead agent's experiment recorded as interrupted");
            out.push(r.id);
        }
    }
    out
}

/// The reports in `dir`, newest first.
#[must_use]
pub fn reports(dir: &Path) -> Vec<(String, Report)> {
    let mut out: Vec<(String, Report)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| {
            let id = e.path().file_stem()?.to_string_lossy().into_owned();
            let r = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            Some((id, r))
        })
        .collect();
    out.sort_by_key(|r| std::cmp::Reverse(r.1.started_unix_ms));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_run_s_marker_becomes_an_interrupted_report() {
        let dir = std::env::temp_dir().join(format!("chaos-exp-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(run_id(42, "The API: survives!"), "42-the-api-survives");
        // A pid no process has (above the kernel's pid_max).
        let dead = Running {
            id: run_id(1, "dead"),
            title: "dead".to_owned(),
            started_unix_ms: 1,
            pid: 4_194_304 + 1,
        };
        let live = Running {
            id: run_id(2, "live"),
            title: "live".to_owned(),
            started_unix_ms: 2,
            pid: std::os::unix::process::parent_id(),
        };
        begin(&dir, &dead).expect("begin");
        begin(&dir, &live).expect("begin");
        assert_eq!(recover(&dir), vec![dead.id.clone()]);
        assert!(!dir.join(format!("{}.running", dead.id)).exists());
        assert!(
            dir.join(format!("{}.running", live.id)).exists(),
            "a live run is kept"
        );
        let all = reports(&dir);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1.outcome, Outcome::Interrupted);
        assert!(dir.join(format!("{}.md", dead.id)).exists());
        std::fs::remove_dir_all(&dir).ok();
    }
}
