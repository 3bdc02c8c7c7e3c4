//! The engine: the registry of active faults and every operation on them (inject, stop, extend,
//! list, pause), one deadline-ordered TTL watchdog, and start-up reconciliation.
//!
//! Both the foreground CLI (`chaos-agent inject` without a daemon) and the daemon's API drive
//! the same `Engine`, so a fault behaves the same whichever way it was created.

pub mod reconcile;
mod targets;
mod types;
mod watchdog;

pub use crate::txn::FaultId;
pub use types::{
    EngineConfig, EngineError, FaultInfo, FlapPhase, Requester, RevertReason, RevertReport,
};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Mutex, Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::faults::FaultSpec;
use crate::faults::{self, ActiveFault, ApplyCtx};
use crate::metrics::{FaultSample, Metrics};
use crate::spec::SpecError;
use crate::sys;
use crate::txn::Txn;
use crate::txn::journal::{self, Journal, JournalEntry, Owner};
use crate::txn::undo::UndoCtx;

/// An active fault's in-process handle, shared with the watchdog's timer table so that a TTL
/// disarm never waits for the registry lock.
type SharedFault = Arc<std::sync::Mutex<Box<dyn ActiveFault>>>;

/// Runs `f` on the fault; a poisoned lock (a panic elsewhere) still gives access, since the
/// fault itself is intact.
fn with_fault<T>(f: &SharedFault, op: impl FnOnce(&mut Box<dyn ActiveFault>) -> T) -> T {
    let mut g = f.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    op(&mut g)
}

struct Slot {
    info: FaultInfo,
    active: SharedFault,
    txn: Txn,
    /// When the fault started (its TTL and its duty cycle count from here; the kernel's
    /// `start_ns` was read right after it).
    started: Instant,
    deadline: Instant,
    done: watch::Sender<Option<RevertReport>>,
}

impl Slot {
    /// The duty cycle's phase at `now`, for a fault with `--flap`.
    fn phase(&self, now: Instant) -> Option<FlapPhase> {
        let flap = self.info.spec.flap.as_ref()?;
        Some(FlapPhase::at(
            flap,
            self.info.spec.ttl,
            now.saturating_duration_since(self.started),
        ))
    }

    /// The fault's info with live counters, remaining time and phase.
    fn live_info(&self, now: Instant) -> FaultInfo {
        let mut i = self.info.clone();
        i.counters = with_fault(&self.active, |f| f.counters());
        i.effects = with_fault(&self.active, |f| f.effects());
        i.remaining_ms = self.deadline.saturating_duration_since(now).as_millis() as u64;
        i.phase = self.phase(now);
        i
    }

    /// What the metrics read of the fault.
    fn sample(&self, counters: Option<crate::kernel::bpf::Counters>, now: Instant) -> FaultSample {
        FaultSample {
            id: self.info.id.to_string(),
            kind: self.info.kind.clone(),
            iface: self.info.iface.clone(),
            dns_answer: self.info.spec.dns.as_ref().map(|d| d.answer),
            refuse: self.info.spec.refuse.as_ref().map(|r| r.errno),
            counters,
            effects: with_fault(&self.active, |f| f.effects()),
            phase: self.phase(now),
            created_unix_ms: self.info.created_unix_ms,
            expires_unix_ms: self.info.expires_unix_ms,
            target: crate::metrics::TargetLabels::of(&self.info.spec.target),
        }
    }
}

/// How many reports of ended faults are kept for `wait`: a client that asks after the end (its
/// fault had a short TTL, or it reconnected) gets the report instead of a 404.
pub const ENDED_KEPT: usize = 256;

#[derive(Default)]
struct State {
    faults: HashMap<FaultId, Slot>,
    /// Faults being applied (id reserved, not yet registered): they count against the maximum
    /// and are checked for conflicts, and shutdown waits for them.
    pending: HashMap<FaultId, FaultSpec>,
    /// Faults being reverted (out of `faults`, report not sent yet), for `watch`.
    ending: HashMap<FaultId, watch::Receiver<Option<RevertReport>>>,
    /// Reports of the last [`ENDED_KEPT`] faults that ended, oldest first.
    ended: VecDeque<RevertReport>,
}

struct Inner {
    cfg: RwLock<EngineConfig>,
    journal: Journal,
    tc: crate::kernel::tc::Tc,
    dp: crate::kernel::bpf::Datapath,
    state: Mutex<State>,
    /// Serialises kernel changes (apply, undo) between faults; never held with `state`.
    kernel: Mutex<()>,
    /// Deadlines of active faults, in a std mutex held for microseconds only: the watchdog reads
    /// and disarms from here, never waiting behind the registry lock (whose holder may be a
    /// preempted worker thread on a busy host).
    timers: std::sync::Mutex<BTreeMap<(Instant, FaultId), SharedFault>>,
    /// Cancelled when the watchdog has finished (after its in-flight reverts).
    watchdog_exited: CancellationToken,
    wake: Notify,
    paused: AtomicBool,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    /// What the last scrape read of the active faults, answered when the registry is busy.
    last_samples: std::sync::Mutex<Vec<FaultSample>>,
    /// The watcher of scoped faults' cgroups (`target-gone`), made at the first one.
    targets: std::sync::OnceLock<Arc<targets::Targets>>,
}

/// The engine handle (cheap to clone).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Engine {
    /// Opens the journal, removes a dead agent's leftovers and starts the TTL watchdog.
    /// Must be called inside a tokio runtime.
    pub async fn start(
        cfg: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, reconcile::Report), EngineError> {
        sys::raise_memlock();
        let journal = Journal::open(&cfg.state_dir)?;
        let tc =
            crate::kernel::tc::Tc::new().map_err(|e| EngineError::Apply { source: e.into() })?;
        let dp = crate::kernel::bpf::Datapath::new();
        let ctx = UndoCtx {
            journal: journal.clone(),
            tc: tc.clone(),
            dp: Some(dp.clone()),
        };
        let report = reconcile::run(&ctx).await;
        for (kind, n) in &report.removed_by_kind {
            metrics.leftovers_removed(kind, *n as u64);
        }
        for _ in 0..report.journals_replayed {
            metrics.fault_reverted("unknown", RevertReason::Leftover);
        }
        metrics.set_max_ttl(cfg.limits.effective_max_ttl());
        let engine = Self {
            inner: Arc::new(Inner {
                cfg: RwLock::new(cfg),
                journal,
                tc,
                dp,
                state: Mutex::new(State::default()),
                kernel: Mutex::new(()),
                watchdog_exited: CancellationToken::new(),
                timers: std::sync::Mutex::new(BTreeMap::new()),
                wake: Notify::new(),
                paused: AtomicBool::new(false),
                shutdown: CancellationToken::new(),
                metrics,
                last_samples: std::sync::Mutex::new(Vec::new()),
                targets: std::sync::OnceLock::new(),
            }),
        };
        engine.spawn_watchdog();
        Ok((engine, report))
    }

    /// The metrics registry the engine reports to.
    #[must_use]
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// A copy of the current configuration.
    #[must_use]
    pub fn config(&self) -> EngineConfig {
        self.inner.cfg.read().map(|c| c.clone()).unwrap_or_default()
    }

    /// Replaces the configuration (SIGHUP). Active faults keep their settings.
    pub fn reload(&self, cfg: EngineConfig) {
        self.inner
            .metrics
            .set_max_ttl(cfg.limits.effective_max_ttl());
        if let Ok(mut c) = self.inner.cfg.write() {
            *c = cfg;
        }
    }

    /// Injects a fault. On failure nothing is left applied (or, if even the rollback failed,
    /// the journal keeps what is left for `cleanup`).
    pub async fn inject(
        &self,
        mut spec: FaultSpec,
        who: Requester,
    ) -> Result<FaultInfo, EngineError> {
        let m = &self.inner.metrics;
        let result = self.inject_inner(&mut spec, who).await;
        match &result {
            Ok(info) => {
                tracing::info!(event = "inject", id = %info.id, uid = who.uid, kind = %info.kind, iface = %info.iface, backend = %info.backend, ttl_ms = spec.ttl.as_millis() as u64, summary = %info.summary, "fault injected");
            }
            Err(e) => {
                m.fault_refused(refusal_reason(e));
                tracing::warn!(event = "refuse", uid = who.uid, error = %e, "fault refused");
            }
        }
        result
    }

    async fn inject_inner(
        &self,
        spec: &mut FaultSpec,
        who: Requester,
    ) -> Result<FaultInfo, EngineError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        if self.inner.paused.load(Ordering::SeqCst) {
            return Err(EngineError::Paused);
        }
        let cfg = self.config();
        let ifname = prepare(spec, &cfg)?;
        let ifindex = sys::ifindex(&ifname)?;
        // A kernel without the needed qdisc is refused before anything is reserved or journaled.
        if let Some(sh) = spec.shape.as_ref().filter(|s| !s.is_empty()) {
            faults::shape::netem::backend(sh, spec.target.hook_direction())
                .map_err(|source| EngineError::Unsupported { source })?;
        }
        // Reserve a slot under the lock, then apply without it: loading and attaching programs
        // takes milliseconds, and holding the registry lock that long would delay the TTL
        // watchdog and every other request behind one apply.
        let id = {
            let mut state = self.inner.state.lock().await;
            // Faults still being reverted hold their datapath slot until the revert ends: counted,
            // or a burst of stops and injects finds the table full where the limit said there
            // was room, and gets a failed apply instead of this error (`cargo xtask torture`'s
            // clients did).
            if state.faults.len() + state.pending.len() + state.ending.len() >= cfg.max_faults {
                return Err(EngineError::TooMany {
                    max: cfg.max_faults,
                });
            }
            let others = state
                .faults
                .iter()
                .map(|(id, s)| (*id, &s.info.spec))
                .chain(state.pending.iter().map(|(id, s)| (*id, s)));
            for (other, other_spec) in others {
                if let Some(why) = faults::conflict(spec, other_spec) {
                    return Err(EngineError::Conflict { other, why });
                }
            }
            let mut id = FaultId::random();
            while state.faults.contains_key(&id) || state.pending.contains_key(&id) {
                id = FaultId::random();
            }
            state.pending.insert(id, spec.clone());
            id
        };
        let applied = self
            .apply_reserved(id, spec, &cfg, ifname, ifindex, who)
            .await;
        let mut state = self.inner.state.lock().await;
        state.pending.remove(&id);
        let (info, active, txn, deadline) = applied?;
        // Shutdown or pause may have started while we applied: they only see registered faults,
        // so a fault registered now would outlive them. Undo it instead.
        let refused = if self.inner.shutdown.is_cancelled() {
            Some(EngineError::ShuttingDown)
        } else if self.inner.paused.load(Ordering::SeqCst) {
            Some(EngineError::Paused)
        } else {
            None
        };
        if let Some(e) = refused {
            drop(state);
            let mut active = active;
            let _ = active.disarm();
            let kernel = self.inner.kernel.lock().await;
            drop(active);
            let (_, errors) = txn.rollback(&self.undo_ctx()).await;
            drop(kernel);
            for err in errors {
                tracing::error!(event = "revert", id = %id, error = %err, "rollback after a refused apply incomplete; journal kept for cleanup");
            }
            self.inner.wake.notify_one();
            return Err(e);
        }
        let kind = info.kind.clone();
        let (done, _) = watch::channel(None);
        let active: SharedFault = Arc::new(std::sync::Mutex::new(active));
        self.timers().insert((deadline, id), active.clone());
        state.faults.insert(
            id,
            Slot {
                info: info.clone(),
                active,
                txn,
                // Now, after the apply: the datapath restarts a --flap cycle once the fault's
                // hooks are attached, and the phase shown must be the kernel's.
                started: Instant::now().min(deadline),
                deadline,
                done,
            },
        );
        // A scrape that finds the registry busy answers the previous scrape's samples: the new
        // fault goes into them now, or such scrapes would not list it until one got the lock
        // (the first scrape after an inject, under API load, listed no fault at all).
        if let Some(slot) = state.faults.get(&id) {
            let sample = slot.sample(with_fault(&slot.active, |a| a.counters()), Instant::now());
            self.inner
                .last_samples
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(sample);
        }
        drop(state);
        self.inner.wake.notify_one();
        self.watch_target(id, &spec.target);
        let m = &self.inner.metrics;
        m.fault_injected(&kind);
        m.set_active(&kind, 1);
        Ok(info)
    }

    /// Journals and applies a fault whose id is reserved; on failure everything is rolled back.
    async fn apply_reserved(
        &self,
        id: FaultId,
        spec: &FaultSpec,
        cfg: &EngineConfig,
        ifname: String,
        ifindex: u32,
        who: Requester,
    ) -> Result<(FaultInfo, Box<dyn ActiveFault>, Txn, Instant), EngineError> {
        // Load and verify the programs (once per agent; the daemon did at start) before the
        // fault's clock starts: verification takes up to seconds, and would otherwise be taken
        // from the TTL and from the first phase of a --flap. Loading changes nothing visible.
        self.inner
            .dp
            .load()
            .map_err(|e| EngineError::Apply { source: e.into() })?;
        let started = Instant::now();
        let now_wall = SystemTime::now();
        let mono_now = sys::monotonic_ns();
        let deadline = started + spec.ttl;
        // Saturating: validation bounds the TTL, and a deadline must never wrap to the past.
        let expires_mono =
            mono_now.saturating_add(u64::try_from(spec.ttl.as_nanos()).unwrap_or(u64::MAX));
        let entry = JournalEntry {
            version: journal::VERSION,
            id,
            owner: Owner::current(),
            spec: spec.clone(),
            created_unix_ms: unix_ms(now_wall),
            expires_unix_ms: unix_ms(now_wall + spec.ttl),
            undo: Vec::new(),
        };
        // Kernel changes of different faults must not interleave: a revert deleting a shared
        // clsact it believes unused must not run between another apply's check and its attach.
        let kernel = self.inner.kernel.lock().await;
        let mut txn = Txn::begin(self.inner.journal.clone(), entry)?;
        let mode = cfg.attach_mode.resolve();
        let applied = {
            let mut ctx = ApplyCtx {
                id,
                ifname: ifname.clone(),
                ifindex,
                txn: &mut txn,
                dp: &self.inner.dp,
                tc: &self.inner.tc,
                attach_mode: mode,
                protected_ports: &cfg.protected_ports,
                expires_at_mono_ns: expires_mono,
                started_at_mono_ns: mono_now,
            };
            faults::apply(spec, &mut ctx).await
        };
        let active = match applied {
            Ok(a) => a,
            Err(source) => {
                let (_, errors) = txn.rollback(&self.undo_ctx()).await;
                return Err(if errors.is_empty() {
                    EngineError::Apply { source }
                } else {
                    EngineError::RollbackFailed {
                        source,
                        rollback_errors: errors,
                    }
                });
            }
        };
        drop(kernel);
        let info = FaultInfo {
            id,
            kind: spec.kind().to_owned(),
            summary: spec.summary(),
            spec: spec.clone(),
            iface: ifname,
            backend: active.backend(),
            requested_by_uid: who.uid,
            created_unix_ms: unix_ms(now_wall),
            expires_unix_ms: unix_ms(now_wall + spec.ttl),
            remaining_ms: spec.ttl.as_millis() as u64,
            counters: None,
            effects: None,
            phase: spec
                .flap
                .as_ref()
                .map(|f| FlapPhase::at(f, spec.ttl, Duration::ZERO)),
        };
        self.inner.metrics.apply_duration(started.elapsed());
        Ok((info, active, txn, deadline))
    }

    fn undo_ctx(&self) -> UndoCtx {
        UndoCtx {
            journal: self.inner.journal.clone(),
            tc: self.inner.tc.clone(),
            dp: Some(self.inner.dp.clone()),
        }
    }

    /// Stops a fault now.
    pub async fn stop(&self, id: FaultId, who: Requester) -> Result<RevertReport, EngineError> {
        let r = self
            .revert(id, RevertReason::Stopped)
            .await
            .ok_or(EngineError::NotFound(id))?;
        tracing::info!(event = "stop", id = %id, uid = who.uid, "fault stopped");
        Ok(r)
    }

    /// Stops every fault.
    pub async fn stop_all(&self, reason: RevertReason, who: Requester) -> Vec<RevertReport> {
        let ids: Vec<FaultId> = self
            .inner
            .state
            .lock()
            .await
            .faults
            .keys()
            .copied()
            .collect();
        let mut out = Vec::new();
        for id in ids {
            if let Some(r) = self.revert(id, reason).await {
                out.push(r);
            }
        }
        tracing::info!(
            event = "stop_all",
            uid = who.uid,
            reason = reason.as_str(),
            count = out.len(),
            "all faults stopped"
        );
        out
    }

    /// Reverts one fault: disarm in the kernel, release links, run the undo list, drop the
    /// journal entry. Returns `None` if it is not active (already reverted).
    pub async fn revert(&self, id: FaultId, reason: RevertReason) -> Option<RevertReport> {
        self.revert_inner(id, reason, None, Instant::now()).await
    }

    fn timers(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Instant, FaultId), SharedFault>> {
        self.inner
            .timers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reverts `id`. `ttl` is set by the watchdog, which already disarmed the fault: its
    /// deadline and the disarm's (lateness, error). `started` is when the revert was decided.
    #[allow(
        clippy::result_large_err,
        reason = "FaultError is the fault modules' error type; boxing it is their call"
    )]
    async fn revert_inner(
        &self,
        id: FaultId,
        reason: RevertReason,
        ttl: Option<(Instant, Duration, Option<String>)>,
        started: Instant,
    ) -> Option<RevertReport> {
        let mut state = self.inner.state.lock().await;
        if let Some((d, _, _)) = &ttl
            && state.faults.get(&id).is_none_or(|s| s.deadline != *d)
        {
            return None;
        }
        let slot = state.faults.remove(&id)?;
        state.ending.insert(id, slot.done.subscribe());
        self.timers().remove(&(slot.deadline, id));
        drop(state);
        self.unwatch_target(id);
        // Disarm first: from here on the fault has no effect, so lateness is measured here (the
        // counters and the undo list, which may wait behind another apply, come after).
        let mut errors = Vec::new();
        let lateness = if let Some((_, lateness, disarm_error)) = ttl {
            errors.extend(disarm_error);
            Some(lateness)
        } else {
            if let Err(e) = with_fault(&slot.active, |f| f.disarm()) {
                errors.push(format!("disarm: {e}"));
            }
            None
        };
        let counters = with_fault(&slot.active, |f| f.counters());
        // Read after the fault left the registry, so never behind what a scrape saw of it (the
        // metrics' totals stay monotonic); a TTL revert's phase is clamped to the deadline.
        let sample = slot.sample(counters, Instant::now());
        // Into the totals now, not after the undo (which may wait for the kernel lock): until
        // then a scrape would find the fault neither live nor retired. Out of the samples kept
        // for busy scrapes first, so that none counts it twice.
        let sample_id = sample.id.clone();
        self.inner
            .last_samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|s| s.id != sample_id);
        self.inner.metrics.retire(&sample);
        let kernel = self.inner.kernel.lock().await;
        drop(slot.active);
        let (removed, undo_errors) = slot.txn.rollback(&self.undo_ctx()).await;
        drop(kernel);
        errors.extend(undo_errors);
        let report = RevertReport {
            id,
            reason,
            removed: removed.iter().map(|s| (*s).to_owned()).collect(),
            errors,
            counters,
            effects: sample.effects.clone(),
            lateness_us: lateness.map(|d| d.as_micros() as u64),
            dns_answer: sample.dns_answer,
            kind: slot.info.kind.clone(),
            phase: sample.phase,
        };
        let m = &self.inner.metrics;
        m.fault_reverted(&slot.info.kind, reason);
        m.set_active(&slot.info.kind, -1);
        m.revert_duration(started.elapsed());
        if let Some(l) = lateness {
            m.ttl_lateness(l);
        }
        if report.errors.is_empty() {
            tracing::info!(event = "revert", id = %id, reason = reason.as_str(), removed = ?report.removed, lateness_us = report.lateness_us, picked_late_us = (reason == RevertReason::Ttl).then(|| started.saturating_duration_since(slot.deadline).as_micros() as u64), "fault reverted");
        } else {
            m.revert_failure(&slot.info.kind);
            tracing::error!(event = "revert", id = %id, reason = reason.as_str(), errors = ?report.errors, "fault revert incomplete; journal kept for cleanup");
        }
        let _ = slot.done.send(Some(report.clone()));
        let mut state = self.inner.state.lock().await;
        state.ending.remove(&id);
        if state.ended.len() == ENDED_KEPT {
            state.ended.pop_front();
        }
        state.ended.push_back(report.clone());
        Some(report)
    }

    /// Moves a fault's deadline by `by`; the total lifetime stays within the maximum TTL.
    #[allow(
        clippy::result_large_err,
        reason = "FaultError is the fault modules' error type; boxing it is their call"
    )]
    pub async fn extend(
        &self,
        id: FaultId,
        by: Duration,
        who: Requester,
    ) -> Result<FaultInfo, EngineError> {
        let max = self.config().limits.effective_max_ttl();
        let mut state = self.inner.state.lock().await;
        let slot = state.faults.get_mut(&id).ok_or(EngineError::NotFound(id))?;
        let old_deadline = slot.deadline;
        // The watchdog may have picked (and disarmed) it already: it is ending, not extendable.
        if !self.timers().contains_key(&(old_deadline, id)) {
            return Err(EngineError::NotFound(id));
        }
        // Saturating: `by` comes from outside; anything that saturates is over the maximum.
        let new_total = slot.info.spec.ttl.saturating_add(by);
        if new_total > max {
            return Err(SpecError::TtlTooLong {
                ttl: new_total,
                max,
            }
            .into());
        }
        let new_deadline = old_deadline + by;
        let remaining = new_deadline.saturating_duration_since(Instant::now());
        with_fault(&slot.active, |f| {
            f.set_expiry(
                sys::monotonic_ns()
                    .saturating_add(u64::try_from(remaining.as_nanos()).unwrap_or(u64::MAX)),
            )
        })
        .map_err(|source| EngineError::Apply { source })?;
        slot.deadline = new_deadline;
        slot.info.spec.ttl = new_total;
        slot.info.expires_unix_ms += by.as_millis() as u64;
        let expires = slot.info.expires_unix_ms;
        slot.txn.update(|e| {
            e.spec.ttl = new_total;
            e.expires_unix_ms = expires;
        })?;
        let info = slot.info.clone();
        let active = slot.active.clone();
        {
            let mut timers = self.timers();
            timers.remove(&(old_deadline, id));
            timers.insert((new_deadline, id), active);
        }
        drop(state);
        self.inner.wake.notify_one();
        tracing::info!(event = "extend", id = %id, uid = who.uid, by_ms = by.as_millis() as u64, "fault extended");
        Ok(self.fill(info).await)
    }

    async fn fill(&self, mut info: FaultInfo) -> FaultInfo {
        let state = self.inner.state.lock().await;
        if let Some(slot) = state.faults.get(&info.id) {
            info = slot.live_info(Instant::now());
        }
        info
    }

    /// Every active fault, with live counters.
    pub async fn list(&self) -> Vec<FaultInfo> {
        let state = self.inner.state.lock().await;
        let now = Instant::now();
        let mut v: Vec<FaultInfo> = state.faults.values().map(|s| s.live_info(now)).collect();
        v.sort_by_key(|i| i.created_unix_ms);
        v
    }

    /// One active fault.
    pub async fn get(&self, id: FaultId) -> Option<FaultInfo> {
        self.list().await.into_iter().find(|i| i.id == id)
    }

    /// A receiver of the fault's report: pending while it is active or being reverted, already
    /// holding the report if it is among the last [`ENDED_KEPT`] that ended. `None` if the id is
    /// unknown.
    pub async fn watch(&self, id: FaultId) -> Option<watch::Receiver<Option<RevertReport>>> {
        let state = self.inner.state.lock().await;
        if let Some(s) = state.faults.get(&id) {
            return Some(s.done.subscribe());
        }
        if let Some(rx) = state.ending.get(&id) {
            return Some(rx.clone());
        }
        let report = state.ended.iter().rev().find(|r| r.id == id)?.clone();
        Some(watch::channel(Some(report)).1)
    }

    /// Live counters and duty-cycle phases of every active fault, for metrics.
    #[must_use]
    pub fn counters_now(&self) -> Vec<FaultSample> {
        // try_lock: a scrape must never wait behind a slow apply. When the registry is busy it
        // gets the previous scrape's samples: an empty answer would drop the active faults'
        // counts from the totals (Prometheus reads a decrease as a counter reset) and their
        // per-fault gauges for one scrape (which restarts the `for:` of an alert on them).
        let now = Instant::now();
        let mut last = self
            .inner
            .last_samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Ok(s) = self.inner.state.try_lock() {
            *last = s
                .faults
                .values()
                .map(|f| f.sample(with_fault(&f.active, |a| a.counters()), now))
                .collect();
        }
        last.clone()
    }

    /// The safety lever: stop every fault and refuse new ones until [`Engine::resume`].
    pub async fn pause(&self, who: Requester) -> Vec<RevertReport> {
        self.inner.paused.store(true, Ordering::SeqCst);
        tracing::warn!(event = "pause", uid = who.uid, "agent paused");
        self.stop_all(RevertReason::Stopped, who).await
    }

    /// Accept faults again.
    pub fn resume(&self, who: Requester) {
        self.inner.paused.store(false, Ordering::SeqCst);
        tracing::warn!(event = "resume", uid = who.uid, "agent resumed");
    }

    /// Whether the lever is pulled.
    #[must_use]
    pub fn is_paused(&self) -> bool {
        self.inner.paused.load(Ordering::SeqCst)
    }

    /// Reverts everything and stops the watchdog. Faults that were being applied when it was
    /// called roll themselves back; this waits (up to 3 s) until they have.
    pub async fn shutdown(&self) -> Vec<RevertReport> {
        self.inner.shutdown.cancel();
        let r = self.stop_all(RevertReason::Shutdown, Requester::me()).await;
        self.inner.wake.notify_one();
        let give_up = Instant::now() + Duration::from_secs(3);
        while !self.inner.state.lock().await.pending.is_empty() && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // TTL reverts in flight finish before the watchdog exits.
        let _ =
            tokio::time::timeout_at(give_up.into(), self.inner.watchdog_exited.cancelled()).await;
        r
    }
}

fn refusal_reason(e: &EngineError) -> &'static str {
    match e {
        EngineError::Spec(_) => "invalid",
        EngineError::Sys(_) => "target",
        EngineError::Apply { .. } | EngineError::RollbackFailed { .. } => "apply_failed",
        EngineError::Unsupported { .. } => "unsupported",
        EngineError::Refused { .. } => "bad_target",
        EngineError::Journal(_) => "journal",
        EngineError::NotFound(_) => "not_found",
        EngineError::TooMany { .. } => "too_many",
        EngineError::Paused => "paused",
        EngineError::Conflict { .. } => "conflict",
        EngineError::ShuttingDown => "shutting_down",
    }
}

/// Resolves defaults and the interface, and validates, without touching anything.
fn prepare(spec: &mut FaultSpec, cfg: &EngineConfig) -> Result<String, EngineError> {
    if spec.ttl.is_zero()
        && let Some(d) = cfg.default_ttl
    {
        spec.ttl = d;
    }
    // What the agent resolves, never what a request claims: an API body may carry these.
    spec.target.cgroup_id = None;
    spec.target.netns = None;
    spec.target.container_iface = None;
    spec.target.pod_sandbox = None;
    spec.target.sandbox_cgroup = None;
    spec.validate(&cfg.limits)?;
    // A limit fault finds `--cgroup` and `--pid` in each controller's hierarchy itself (v1
    // hierarchies have paths of their own); `--unit`, `--container` and `--pod` resolve here
    // as for every scoped fault.
    let per_hierarchy = (spec.limit.is_some() || spec.stress.is_some())
        && spec.target.unit.is_none()
        && spec.target.container.is_none()
        && spec.target.pod.is_none();
    if spec.target.scoped() && !per_hierarchy {
        let no_interface = !spec.needs_interface();
        resolve_scope(&mut spec.target, no_interface, cfg.cri_endpoint.as_deref())?;
        spec.validate(&cfg.limits)?;
    }
    if spec.limit.is_some() {
        // What only the host can tell (its CPUs and memory, the cgroup, its usage), before
        // anything is journaled; apply checks again.
        faults::limit::changes(spec).map_err(|source| EngineError::Refused { source })?;
    }
    if spec.stress.is_some() {
        faults::stress::check(spec).map_err(|source| EngineError::Refused { source })?;
    }
    if !spec.needs_interface() {
        // Connect, socket and limit faults have no interface; the engine's bookkeeping names
        // loopback, which every namespace has.
        return Ok("lo".to_owned());
    }
    let ifname = match &spec.target.iface {
        Some(name) => name.clone(),
        None => sys::default_route_interface()?,
    };
    sys::ifindex(&ifname)?;
    spec.target.iface = Some(ifname.clone());
    Ok(ifname)
}

/// Resolves the processes a fault is limited to into the cgroup (path and id) and, for a
/// container with one of its own, the network namespace that are journaled and shown: the pid
/// may be gone or reused, and a unit or container restarted, by the time anyone reads them.
fn resolve_scope(
    t: &mut crate::target::Target,
    on_sockets: bool,
    cri_endpoint: Option<&str>,
) -> Result<(), EngineError> {
    use crate::spec::SpecError;
    use crate::target::{pod, scope};
    let tree = sys::cgroup::Tree::open().map_err(|e| SpecError::NoSuchCgroup {
        path: "/".to_owned(),
        why: format!("cannot open the cgroup v2 hierarchy: {e}"),
    })?;
    let resolved = if let Some(pid) = t.pid.take() {
        Some(crate::target::cgroup_of_pid(pid)?)
    } else if let Some(unit) = &t.unit {
        let name = scope::unit_name(unit)?;
        let cgroup = scope::unit_cgroup(&tree, &name)?;
        t.unit = Some(name);
        Some(cgroup)
    } else if let Some(given) = &t.pod {
        let name = pod::parse(given)?;
        let socket = pod::endpoint(cri_endpoint).map_err(|why| SpecError::BadPod {
            pod: given.clone(),
            why,
        })?;
        let sandbox = pod::sandbox(&socket, &name)?;
        let found = pod::scope(&tree, &name, &sandbox, t.pod_container.as_deref())?;
        // Where the sandbox's processes are is where the pod's network is.
        let network = scope::Container {
            id: sandbox.id.clone(),
            cgroup: found
                .sandbox_cgroup
                .clone()
                .unwrap_or_else(|| found.container.cgroup.clone()),
        };
        container_network(t, &tree, &network, on_sockets)?;
        if let Some(cg) = found.sandbox_cgroup {
            let id = sandbox_cgroup_id(&cg)?;
            t.sandbox_cgroup = Some((cg, id));
        }
        t.pod = Some(name.to_string());
        t.pod_sandbox = Some(sandbox.id);
        Some(found.container.cgroup)
    } else if let Some(given) = &t.container {
        let c = scope::find_container(&tree, given)?;
        container_network(t, &tree, &c, on_sockets)?;
        t.container = Some(c.id);
        Some(c.cgroup)
    } else {
        None
    };
    if let Some(cgroup) = resolved {
        if t.cgroup.as_ref().is_some_and(|given| given != &cgroup) {
            return Err(SpecError::Inapplicable {
                what: "the request names a cgroup and a unit or container in another cgroup: give one",
            }
            .into());
        }
        t.cgroup = Some(cgroup);
    }
    if t.container.is_none() && t.pod.is_none() {
        t.netns = None;
    }
    // A cgroup that does not exist is bad input, refused before anything is reserved.
    let path = t.cgroup.as_deref().unwrap_or("/");
    let parts = crate::target::cgroup_components(path)?;
    let id = sys::cgroup_id(&parts).map_err(|e| SpecError::NoSuchCgroup {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    t.cgroup_id = Some(id);
    Ok(())
}

/// The network namespace of container `c` when it has one of its own, and for a packet fault
/// the host side of its veth, where the fault is attached: `--iface`, if given, names the
/// container's interface.
fn container_network(
    t: &mut crate::target::Target,
    tree: &sys::cgroup::Tree,
    c: &crate::target::scope::Container,
    on_sockets: bool,
) -> Result<(), EngineError> {
    use crate::target::scope;
    t.netns = scope::container_netns(tree, c)?;
    if let Some(netns) = t.netns
        && !on_sockets
    {
        let (inner, host) = scope::container_veth(tree, c, netns, t.iface.as_deref())?;
        t.container_iface = Some(inner);
        t.iface = Some(host);
    }
    Ok(())
}

/// The id of the cgroup at `path`, as the watcher compares it.
fn sandbox_cgroup_id(path: &str) -> Result<u64, EngineError> {
    let parts = crate::target::cgroup_components(path)?;
    sys::cgroup_id(&parts).map_err(|e| {
        crate::spec::SpecError::NoSuchCgroup {
            path: path.to_owned(),
            why: e.to_string(),
        }
        .into()
    })
}

/// Validates a spec and explains what applying it would do, touching nothing (dry run).
pub fn plan(
    cfg: &EngineConfig,
    mut spec: FaultSpec,
) -> Result<(FaultSpec, Vec<String>), EngineError> {
    let ifname = prepare(&mut spec, cfg)?;
    if let Some(sh) = spec.shape.as_ref().filter(|s| !s.is_empty()) {
        faults::shape::netem::backend(sh, spec.target.hook_direction())
            .map_err(|source| EngineError::Unsupported { source })?;
    }
    let plan = faults::plan(
        &spec,
        &ifname,
        cfg.attach_mode.resolve(),
        &cfg.protected_ports,
    );
    Ok((spec, plan))
}
