//! The reset fault type: established TCP connections matching the target are aborted in the
//! kernel with `sock_diag` `SOCK_DESTROY` (`kernel::sock_diag`, what `ss -K` does). The local
//! application's next call fails with `ECONNABORTED` and the peer gets a RST. A sweep runs at
//! inject, then every `--reset-every`, and with `--flap` at the start of each active phase (and
//! every `--reset-every` within it). The fault changes no kernel configuration, so it has no
//! undo: when it ends (TTL, stop, the agent's death) sweeping simply stops. Scoped to
//! processes, it aborts only the connections whose socket was created in the scope's cgroup
//! (or below it: `INET_DIAG_CGROUP_ID`), and in a container with a network namespace of its
//! own it sweeps there, from a thread that joined it.

mod args;
mod spec;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ipnet::IpNet;

pub use args::ResetArgs;
pub use spec::{MIN_EVERY, ResetSpec};

use super::{ActiveFault, ApplyCtx, FaultError, FaultSpec};
use crate::kernel::bpf::{Counters, DirCounters};
use crate::kernel::sock_diag::{self, SockDiagError, TcpSocket};
use crate::sys::cgroup::Tree;
use crate::target::PortRange;

/// Which connections a reset fault aborts: the local end by `--src`/`--sport`, the remote end
/// by `--dest`/`--dport`, never one with a protected port at either end.
#[derive(Clone, Debug)]
pub struct Filter {
    src: Vec<IpNet>,
    dst: Vec<IpNet>,
    sports: Vec<PortRange>,
    dports: Vec<PortRange>,
    protected: Vec<PortRange>,
    /// The scope: only sockets created in this cgroup or below it.
    cgroup: Option<String>,
    /// The network namespace of a container that has one of its own: the sweep runs there.
    netns: Option<u64>,
}

/// What a filter says of one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not targeted.
    Other,
    /// Targeted, but a port at one end is protected (SSH, the agent's API).
    Protected,
    /// To be reset.
    Reset,
}

/// The address a dual-stack socket really talks to (`::ffff:a.b.c.d` is IPv4).
fn unmapped(a: SocketAddr) -> (IpAddr, u16) {
    let ip = match a.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    };
    (ip, a.port())
}

fn in_ranges(ranges: &[PortRange], port: u16) -> bool {
    ranges.iter().any(|r| r.lo <= port && port <= r.hi)
}

impl Filter {
    /// The filter of a reset spec.
    #[must_use]
    pub fn new(spec: &FaultSpec, protected: &[PortRange]) -> Self {
        let t = &spec.target;
        Self {
            src: t.src.clone(),
            dst: t.dst.clone(),
            sports: t.sports.clone(),
            dports: t.dports.clone(),
            protected: if t.include_protected {
                Vec::new()
            } else {
                protected.to_vec()
            },
            cgroup: t.cgroup.clone(),
            netns: t.netns,
        }
    }

    /// Whether the socket is to be reset. `scope` holds the ids of the scope's cgroups (the
    /// fault's and those below it) when it has one; a socket whose cgroup is unknown is
    /// outside it.
    #[must_use]
    pub fn judge(&self, s: &TcpSocket, scope: Option<&HashSet<u64>>) -> Verdict {
        if let Some(ids) = scope
            && !s.cgroup.is_some_and(|id| ids.contains(&id))
        {
            return Verdict::Other;
        }
        let (lip, lport) = unmapped(s.local);
        let (rip, rport) = unmapped(s.remote);
        let nets =
            |nets: &[IpNet], ip: IpAddr| nets.is_empty() || nets.iter().any(|n| n.contains(&ip));
        let ports = |r: &[PortRange], p: u16| r.is_empty() || in_ranges(r, p);
        if !(nets(&self.src, lip)
            && nets(&self.dst, rip)
            && ports(&self.sports, lport)
            && ports(&self.dports, rport))
        {
            return Verdict::Other;
        }
        if in_ranges(&self.protected, lport) || in_ranges(&self.protected, rport) {
            return Verdict::Protected;
        }
        Verdict::Reset
    }
}

/// What the fault has done so far.
#[derive(Debug, Default)]
struct Stats {
    /// Sweeps run.
    sweeps: AtomicU64,
    /// Connections that matched the filter (protected ones included), summed over sweeps.
    matched: AtomicU64,
    /// Connections aborted.
    reset: AtomicU64,
    /// Matching connections spared for a protected port.
    protected: AtomicU64,
}

/// Lists the TCP connections of the fault's network namespace and aborts those the filter
/// targets. Blocking: in a container's own namespace it runs on a thread that joined it.
fn sweep(filter: &Arc<Filter>, stats: &Arc<Stats>) -> Result<u64, SockDiagError> {
    let io = |op: String| move |source| SockDiagError::Io { op, source };
    let tree = match &filter.cgroup {
        Some(_) => Some(Tree::open().map_err(io("open the cgroup v2 hierarchy".to_owned()))?),
        None => None,
    };
    let scope = match (&tree, &filter.cgroup) {
        (Some(tree), Some(path)) => {
            let parts = crate::target::cgroup_components(path).unwrap_or_default();
            Some(
                tree.subtree_ids(&parts)
                    .map_err(io(format!("list the cgroups of {path}")))?,
            )
        }
        _ => None,
    };
    let (Some(netns), Some(tree), Some(path)) = (filter.netns, &tree, &filter.cgroup) else {
        return sweep_here(filter, stats, scope.as_ref());
    };
    let pid = crate::target::scope::pid_in_netns(tree, path, netns).map_err(io(format!(
        "find a process of {path} to enter its network namespace"
    )))?;
    let (filter, stats) = (filter.clone(), stats.clone());
    crate::sys::cgroup::in_netns_of(pid, netns, move || {
        sweep_here(&filter, &stats, scope.as_ref())
    })
    .map_err(io(format!("enter network namespace {netns} (pid {pid})")))?
}

/// [`sweep`] in the calling thread's network namespace.
fn sweep_here(
    filter: &Filter,
    stats: &Stats,
    scope: Option<&HashSet<u64>>,
) -> Result<u64, SockDiagError> {
    let mut n = 0;
    for s in sock_diag::tcp_sockets()? {
        if scope.is_some() && s.cgroup.is_none() {
            return Err(SockDiagError::NoSocketCgroup {
                socket: s.to_string(),
            });
        }
        match filter.judge(&s, scope) {
            Verdict::Other => {}
            Verdict::Protected => {
                stats.matched.fetch_add(1, Ordering::Relaxed);
                stats.protected.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Reset => {
                stats.matched.fetch_add(1, Ordering::Relaxed);
                // Gone already (closed between the dump and now) is no reset of ours.
                if sock_diag::destroy(&s)? {
                    tracing::debug!(connection = %s, "reset");
                    stats.reset.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            }
        }
    }
    stats.sweeps.fetch_add(1, Ordering::Relaxed);
    Ok(n)
}

/// When the sweeps after the first run, as offsets from the fault's start: every `every`, or
/// at each active phase of a duty cycle (and every `every` within it).
#[must_use]
pub fn next_sweep(spec: &FaultSpec, elapsed: Duration) -> Option<Duration> {
    let every = spec.reset.and_then(|r| r.every);
    let Some(flap) = spec.flap else {
        let every = every?;
        let k = elapsed.as_nanos() / every.as_nanos() + 1;
        return Some(Duration::from_nanos(
            u64::try_from(k * every.as_nanos()).ok()?,
        ));
    };
    let period = flap.period();
    let k = elapsed.as_nanos() / period.as_nanos();
    let phase_start = Duration::from_nanos(u64::try_from(k * period.as_nanos()).ok()?);
    let next_phase = phase_start + period;
    let Some(every) = every else {
        return Some(next_phase);
    };
    // Within the active part of this period: the next multiple of `every` after `elapsed`.
    let into = elapsed.saturating_sub(phase_start);
    let step = into.as_nanos() / every.as_nanos() + 1;
    let within = Duration::from_nanos(u64::try_from(step * every.as_nanos()).ok()?);
    Some(if within < flap.on {
        phase_start + within
    } else {
        next_phase
    })
}

/// A reset fault in force: its sweeper task.
#[derive(Debug)]
pub struct ResetFault {
    stats: Arc<Stats>,
    armed: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ResetFault {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ActiveFault for ResetFault {
    fn backend(&self) -> String {
        "sock_diag".to_owned()
    }

    fn counters(&self) -> Option<Counters> {
        let s = &self.stats;
        Some(Counters {
            ingress: DirCounters::default(),
            egress: DirCounters {
                seen: s.sweeps.load(Ordering::Relaxed),
                matched: s.matched.load(Ordering::Relaxed),
                protected: s.protected.load(Ordering::Relaxed),
                reset: s.reset.load(Ordering::Relaxed),
                ..DirCounters::default()
            },
        })
    }

    fn set_expiry(&mut self, _expires_at_mono_ns: u64) -> Result<(), FaultError> {
        // The engine's deadline ends the fault; the sweeper runs until then.
        Ok(())
    }

    fn disarm(&mut self) -> Result<(), FaultError> {
        self.armed.store(false, Ordering::SeqCst);
        self.task.abort();
        Ok(())
    }
}

/// Runs the first sweep (its error fails the inject, e.g. a kernel without
/// `CONFIG_INET_DIAG_DESTROY`) and starts the sweeper for the later ones.
pub async fn apply(
    spec: &FaultSpec,
    ctx: &ApplyCtx<'_>,
) -> Result<Box<dyn ActiveFault>, FaultError> {
    let filter = Arc::new(Filter::new(spec, ctx.protected_ports));
    let stats = Arc::new(Stats::default());
    let armed = Arc::new(AtomicBool::new(true));
    let first = {
        let (filter, stats) = (filter.clone(), stats.clone());
        tokio::task::spawn_blocking(move || sweep(&filter, &stats))
            .await
            .map_err(|e| {
                FaultError::Reset(SockDiagError::Io {
                    op: "run the first sweep".to_owned(),
                    source: std::io::Error::other(e),
                })
            })?
    };
    let n = first.map_err(FaultError::Reset)?;
    tracing::info!(id = %ctx.id, reset = n, "connections reset at inject");
    let start = tokio::time::Instant::now();
    let (spec, id) = (spec.clone(), ctx.id);
    let task = {
        let (stats, armed) = (stats.clone(), armed.clone());
        tokio::spawn(async move {
            while let Some(at) = next_sweep(&spec, start.elapsed()) {
                tokio::time::sleep_until(start + at).await;
                if !armed.load(Ordering::SeqCst) {
                    return;
                }
                let (filter, stats) = (filter.clone(), stats.clone());
                match tokio::task::spawn_blocking(move || sweep(&filter, &stats)).await {
                    Ok(Ok(n)) if n > 0 => tracing::info!(id = %id, reset = n, "connections reset"),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(id = %id, error = %e, "reset sweep failed"),
                    Err(e) => tracing::warn!(id = %id, error = %e, "reset sweep panicked"),
                }
            }
        })
    };
    Ok(Box::new(ResetFault { stats, armed, task }))
}

/// Dry-run description.
#[must_use]
pub fn plan(spec: &FaultSpec, protected: &[PortRange]) -> Vec<String> {
    let f = Filter::new(spec, protected);
    let list = |v: &[String]| {
        if v.is_empty() {
            "any".to_owned()
        } else {
            v.join(",")
        }
    };
    let shown = |v: &[PortRange]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    let nets = |v: &[IpNet]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    let namespace = f.netns.map_or_else(
        || "this network namespace".to_owned(),
        |ns| format!("the container's network namespace (net:[{ns}])"),
    );
    let scope = f
        .cgroup
        .as_ref()
        .map(|c| format!(" whose socket was created in cgroup {c} or below it"))
        .unwrap_or_default();
    vec![
        format!(
            "abort (sock_diag SOCK_DESTROY) established TCP connections of {namespace}{scope} with local end {} port {} and remote end {} port {}; never one with a protected port ({})",
            list(&nets(&f.src)),
            list(&shown(&f.sports)),
            list(&nets(&f.dst)),
            list(&shown(&f.dports)),
            list(&shown(&f.protected)),
        ),
        match (spec.reset.and_then(|r| r.every), spec.flap) {
            (None, None) => "once, at inject".to_owned(),
            (Some(d), None) => format!(
                "at inject, then every {} until the TTL",
                humantime::format_duration(d)
            ),
            (None, Some(f)) => format!("at the start of each active phase of {f}"),
            (Some(d), Some(f)) => format!(
                "at the start of each active phase of {f} and every {} within it",
                humantime::format_duration(d)
            ),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(j: &str) -> FaultSpec {
        serde_json::from_str(j).expect("spec")
    }

    fn sock(local: &str, remote: &str) -> TcpSocket {
        TcpSocket {
            local: local.parse().expect("local"),
            remote: remote.parse().expect("remote"),
            state: 1,
            ifindex: 0,
            cookie: 1,
            inode: 1,
            uid: 0,
            cgroup: Some(7),
        }
    }

    #[test]
    fn filter_matches_local_and_remote_ends_and_spares_protected_ports() {
        let s = spec(
            r#"{"ttl":"10s","reset":{},"target":{"dst":["10.1.0.0/24"],"dports":["5000-5001"]}}"#,
        );
        let f = Filter::new(&s, &["22".parse().expect("port")]);
        assert_eq!(
            f.judge(&sock("10.1.0.1:40000", "10.1.0.2:5000"), None),
            Verdict::Reset
        );
        // A dual-stack socket's IPv4-mapped addresses are IPv4.
        assert_eq!(
            f.judge(
                &sock("[::ffff:10.1.0.1]:40000", "[::ffff:10.1.0.2]:5001"),
                None
            ),
            Verdict::Reset
        );
        assert_eq!(
            f.judge(&sock("10.1.0.1:40000", "10.1.0.2:5002"), None),
            Verdict::Other
        );
        assert_eq!(
            f.judge(&sock("10.1.0.1:40000", "10.2.0.2:5000"), None),
            Verdict::Other
        );
        let any = Filter::new(
            &spec(r#"{"ttl":"10s","reset":{}}"#),
            &["22".parse().expect("port")],
        );
        assert_eq!(
            any.judge(&sock("10.1.0.1:22", "10.1.0.9:50000"), None),
            Verdict::Protected
        );
        assert_eq!(
            any.judge(&sock("[fd00::1]:50000", "[fd00::2]:22"), None),
            Verdict::Protected
        );
        // Scoped: only sockets whose creator's cgroup is in the scope (the test socket's is 7).
        let inside: HashSet<u64> = [3, 7].into();
        let outside: HashSet<u64> = [3].into();
        let peer = sock("10.1.0.1:40000", "10.1.0.2:5000");
        assert_eq!(f.judge(&peer, Some(&inside)), Verdict::Reset);
        assert_eq!(f.judge(&peer, Some(&outside)), Verdict::Other);
        let unknown = TcpSocket {
            cgroup: None,
            ..peer
        };
        assert_eq!(f.judge(&unknown, Some(&inside)), Verdict::Other);
    }

    #[test]
    fn sweeps_follow_every_and_the_duty_cycle() {
        let ms = Duration::from_millis;
        let once = spec(r#"{"ttl":"10s","reset":{}}"#);
        assert_eq!(next_sweep(&once, ms(0)), None);
        let every = spec(r#"{"ttl":"10s","reset":{"every":"1s"}}"#);
        assert_eq!(next_sweep(&every, ms(0)), Some(ms(1000)));
        assert_eq!(next_sweep(&every, ms(1000)), Some(ms(2000)));
        assert_eq!(next_sweep(&every, ms(1500)), Some(ms(2000)));
        let flap = spec(r#"{"ttl":"10s","reset":{},"flap":"2s/3s"}"#);
        assert_eq!(next_sweep(&flap, ms(0)), Some(ms(5000)));
        assert_eq!(next_sweep(&flap, ms(5000)), Some(ms(10000)));
        let both = spec(r#"{"ttl":"20s","reset":{"every":"500ms"},"flap":"1s/1s"}"#);
        assert_eq!(next_sweep(&both, ms(0)), Some(ms(500)));
        assert_eq!(next_sweep(&both, ms(500)), Some(ms(2000)));
        assert_eq!(next_sweep(&both, ms(2000)), Some(ms(2500)));
    }
}
