//! The one TTL task: a deadline-ordered timer table, on a thread and runtime of its own, that
//! disarms each due fault in the kernel at once and hands the rest of its revert to the main
//! runtime.

use std::time::Instant;

use super::{Engine, FaultId, RevertReason, RevertReport, SharedFault, with_fault};

impl Engine {
    /// Runs the watchdog on its own thread and runtime: request handlers do blocking syscalls
    /// (program load and verification take tens of milliseconds, journal fsync), and a timer
    /// driven by a busy worker thread would fire late. Falls back to a task if no thread can
    /// be created.
    pub(super) fn spawn_watchdog(&self) {
        let watchdog = self.clone();
        let main = tokio::runtime::Handle::current();
        let exited = self.inner.watchdog_exited.clone();
        let spawned = std::thread::Builder::new().name("chaos-watchdog".to_owned()).spawn(move || {
            raise_watchdog_priority();
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(watchdog.watchdog(&main)),
                Err(e) => tracing::error!(error = %e, "cannot build the watchdog runtime; TTLs rely on the kernel-side deadline"),
            }
            exited.cancel();
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no watchdog thread; running the watchdog as a task");
            let watchdog = self.clone();
            let exited = self.inner.watchdog_exited.clone();
            let main = tokio::runtime::Handle::current();
            tokio::spawn(async move {
                watchdog.watchdog(&main).await;
                exited.cancel();
            });
        }
    }

    /// The agent's datapath.
    #[must_use]
    pub fn datapath(&self) -> &crate::kernel::bpf::Datapath {
        &self.inner.dp
    }

    /// Loads and verifies the programs now (the daemon does at start), so that the first inject
    /// is map writes and an attach, not a verification.
    pub fn preload(&self) -> Result<(), crate::kernel::bpf::EbpfError> {
        self.inner.dp.load()
    }

    /// The one TTL task: sleeps until the earliest deadline (or until woken by a change).
    ///
    /// The watchdog thread only picks due faults and disarms them; the rest of each revert runs
    /// on the main runtime (`main`): closing a tcx link waits for an RCU grace period, which
    /// under load takes tens of milliseconds and would make the next deadline late.
    #[allow(
        clippy::result_large_err,
        reason = "FaultError is the fault modules' error type; boxing it is their call"
    )]
    async fn watchdog(&self, main: &tokio::runtime::Handle) {
        let mut reverts: Vec<tokio::task::JoinHandle<Option<RevertReport>>> = Vec::new();
        loop {
            reverts.retain(|h| !h.is_finished());
            let next = self.timers().keys().next().copied();
            match next {
                Some((deadline, _)) if deadline <= Instant::now() => {
                    // Every fault that is due is reverted concurrently, each in its own task:
                    // one slow revert (netlink, fsync) must not make the others late, and the
                    // watchdog goes straight back to the next deadline.
                    let now = Instant::now();
                    let due: Vec<((Instant, FaultId), SharedFault)> = {
                        let mut timers = self.timers();
                        let later = timers.split_off(&(now, FaultId::from_raw(u32::MAX)));
                        std::mem::replace(&mut *timers, later).into_iter().collect()
                    };
                    for ((deadline, id), fault) in due {
                        // Disarm right here, before anything that could wait: this is the
                        // moment the fault stops acting.
                        let disarm_error = with_fault(&fault, |f| f.disarm())
                            .err()
                            .map(|e| format!("disarm: {e}"));
                        let lateness = Instant::now().saturating_duration_since(deadline);
                        let engine = self.clone();
                        reverts.push(main.spawn(async move {
                            engine
                                .revert_inner(
                                    id,
                                    RevertReason::Ttl,
                                    Some((deadline, lateness, disarm_error)),
                                    now,
                                )
                                .await
                        }));
                    }
                }
                Some((deadline, _)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline.into()) => {}
                        () = self.inner.wake.notified() => {}
                        () = self.inner.shutdown.cancelled() => break,
                    }
                }
                None => {
                    tokio::select! {
                        () = self.inner.wake.notified() => {}
                        () = self.inner.shutdown.cancelled() => break,
                    }
                }
            }
        }
        // A TTL revert already took its fault out of the registry, so shutdown's stop_all does
        // not see it: finish it before the watchdog (and its runtime) goes away.
        for h in reverts {
            let _ = h.await;
        }
    }
}

/// Best effort: the lowest real-time priority for the watchdog thread, so that on a busy host
/// (the situation chaos experiments create) a deadline is not missed because the thread waits
/// for a CPU. The thread sleeps almost always and its work per deadline is a map write, so it
/// cannot starve anything. Without `CAP_SYS_NICE` this fails and the thread stays `SCHED_OTHER`.
fn raise_watchdog_priority() {
    // Zeroed then set: musl's sched_param has extra (SCHED_SPORADIC) fields, glibc's does not.
    // SAFETY: sched_param is plain integers; all-zero is a valid value.
    let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
    param.sched_priority = 1;
    // SAFETY: pthread_self() is the calling thread; `param` is a valid sched_param.
    let rc = unsafe {
        libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &raw const param)
    };
    if rc != 0 {
        tracing::debug!(
            errno = rc,
            "watchdog thread keeps normal scheduling (no CAP_SYS_NICE?)"
        );
    }
}
