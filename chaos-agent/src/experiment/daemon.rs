//! Experiments run by the daemon (`POST /v1/experiments`): each is a task next to the engine,
//! stoppable through the API, by `pause` and by the daemon's shutdown, and kept in the state
//! directory like a foreground run (a marker while it runs, its reports after).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::report::Report;
use super::run::StopHandle;
use super::spec::{ExperimentError, ExperimentSpec};
use super::store;
use crate::engine::{Engine, EngineConfig, Requester};

/// One run as the API lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Its id.
    pub id: String,
    /// The experiment's title.
    pub title: String,
    /// `running`, or the outcome (`passed`, `failed`, `aborted`, `interrupted`).
    pub state: String,
    /// Wall-clock start, milliseconds since the epoch.
    pub started_unix_ms: u64,
    /// Why it ended so, unless it passed or runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl RunSummary {
    fn of(id: &str, r: &Report) -> Self {
        Self {
            id: id.to_owned(),
            title: r.title.clone(),
            state: r.outcome.as_str().to_owned(),
            started_unix_ms: r.started_unix_ms,
            reason: r.reason.clone(),
        }
    }
}

/// Why the daemon refuses an experiment.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The file is bad, or a step cannot run here.
    #[error(transparent)]
    Invalid(#[from] ExperimentError),
    /// Another experiment runs and this one does not allow it.
    #[error(
        "experiment {0} is running; one at a time (set safety.allow_concurrent_experiments in both to run them together)"
    )]
    Busy(String),
    /// The agent is paused.
    #[error("the agent is paused: `chaos-agent resume` first")]
    Paused,
}

struct Live {
    title: String,
    started_unix_ms: u64,
    concurrent: bool,
    stop: StopHandle,
    task: tokio::task::JoinHandle<()>,
}

/// The daemon's experiments.
pub struct Experiments {
    dir: PathBuf,
    engine: Engine,
    live: Arc<Mutex<BTreeMap<String, Live>>>,
}

impl std::fmt::Debug for Experiments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Experiments")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Experiments {
    /// Records the runs a dead agent left as interrupted, and serves `dir`.
    #[must_use]
    pub fn new(engine: Engine, dir: PathBuf) -> Self {
        for id in store::recover(&dir) {
            tracing::warn!(event = "experiment_interrupted", %id, "a dead agent's experiment recorded as interrupted");
        }
        Self {
            dir,
            engine,
            live: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Live>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Parses, checks and starts an experiment; returns its summary at once.
    pub fn start(
        &self,
        toml: &str,
        cfg: &EngineConfig,
        who: Requester,
    ) -> Result<RunSummary, StartError> {
        if self.engine.is_paused() {
            return Err(StartError::Paused);
        }
        let spec = ExperimentSpec::parse(toml, "the experiment")?;
        let steps: Vec<super::Planned> = super::plan(&spec, cfg)?
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        let mut live = self.lock();
        live.retain(|_, l| !l.task.is_finished());
        if let Some((id, _)) = live
            .iter()
            .find(|(_, l)| !(l.concurrent && spec.safety.allow_concurrent_experiments))
        {
            return Err(StartError::Busy(id.clone()));
        }
        let started_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut id = store::run_id(started_unix_ms, &spec.title);
        while live.contains_key(&id) {
            id.push('x');
        }
        let stop = StopHandle::default();
        let task = {
            let (engine, dir, stop, id) = (
                self.engine.clone(),
                self.dir.clone(),
                stop.clone(),
                id.clone(),
            );
            let spec = spec.clone();
            tokio::spawn(async move {
                let (_, report, _) = super::run::run_recorded_as(
                    &spec,
                    steps,
                    &engine,
                    &stop,
                    &dir,
                    &id,
                    started_unix_ms,
                )
                .await;
                engine.metrics().experiment_ended(report.outcome.as_str());
                tracing::info!(event = "experiment_end", %id, outcome = report.outcome.as_str(), reason = ?report.reason, "experiment ended");
            })
        };
        tracing::info!(event = "experiment_start", %id, uid = who.uid, title = %spec.title, steps = spec.steps.len(), "experiment started");
        live.insert(
            id.clone(),
            Live {
                title: spec.title.clone(),
                started_unix_ms,
                concurrent: spec.safety.allow_concurrent_experiments,
                stop,
                task,
            },
        );
        Ok(RunSummary {
            id,
            title: spec.title,
            state: "running".to_owned(),
            started_unix_ms,
            reason: None,
        })
    }

    /// How many runs are running.
    #[must_use]
    pub fn running(&self) -> usize {
        self.lock()
            .values()
            .filter(|l| !l.task.is_finished())
            .count()
    }

    /// Running and finished runs, newest first.
    #[must_use]
    pub fn list(&self) -> Vec<RunSummary> {
        let mut out: Vec<RunSummary> = self
            .lock()
            .iter()
            .filter(|(_, l)| !l.task.is_finished())
            .map(|(id, l)| RunSummary {
                id: id.clone(),
                title: l.title.clone(),
                state: "running".to_owned(),
                started_unix_ms: l.started_unix_ms,
                reason: None,
            })
            .collect();
        let running: Vec<String> = out.iter().map(|r| r.id.clone()).collect();
        out.extend(
            store::reports(&self.dir)
                .iter()
                .filter(|(id, _)| !running.contains(id))
                .map(|(id, r)| RunSummary::of(id, r)),
        );
        out.sort_by_key(|r| std::cmp::Reverse(r.started_unix_ms));
        out
    }

    /// A finished run's report, or a running one's summary.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<Result<Report, RunSummary>> {
        if let Some(s) = self
            .list()
            .into_iter()
            .find(|r| r.id == id && r.state == "running")
        {
            return Some(Err(s));
        }
        store::reports(&self.dir)
            .into_iter()
            .find(|(i, _)| i == id)
            .map(|(_, r)| Ok(r))
    }

    /// Stops a running experiment (its faults reverted, recorded `interrupted`); waits for
    /// its report. False if no such run is running.
    pub async fn stop(&self, id: &str, why: &str) -> bool {
        let task = {
            let mut live = self.lock();
            let Some(l) = live.remove(id).filter(|l| !l.task.is_finished()) else {
                return false;
            };
            l.stop.stop(why);
            l.task
        };
        let _ = task.await;
        true
    }

    /// Stops every running experiment (`pause`, shutdown) and waits for their reports.
    pub async fn stop_all(&self, why: &str) -> usize {
        let tasks: Vec<_> = {
            let mut live = self.lock();
            std::mem::take(&mut *live)
                .into_values()
                .filter(|l| !l.task.is_finished())
                .map(|l| {
                    l.stop.stop(why);
                    l.task
                })
                .collect()
        };
        let n = tasks.len();
        for t in tasks {
            let _ = t.await;
        }
        n
    }
}
