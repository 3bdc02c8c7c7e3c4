//! The bench's traffic, sent and received by threads of this process that entered the demo
//! namespaces (`setns(CLONE_NEWNET)` moves only the calling thread). Counters and send times are
//! shared memory: nothing is parsed after the fact, and no process start-up sits inside a
//! measurement window.
//!
//! - [`Flood`]: 64-byte UDP datagrams from A to B as fast as one thread can send them, counted by
//!   B's sockets. It can switch between two paths: A's veth (where the faults are) and a
//!   reference veth pair between the same namespaces that never has a program, so that every
//!   rate can be compared with one measured in the same seconds.
//! - [`super::probe::Probe`]: sequence-numbered datagrams at a fixed interval, to date when a
//!   fault starts and stops acting.

use std::fs::File;
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use nix::sched::{CloneFlags, CpuSet, sched_setaffinity, setns};
use nix::sys::socket::{setsockopt, sockopt};
use nix::unistd::Pid;

use crate::demo::{IP_A, IP_B, NS_A, NS_B};
use crate::{cmd, exec};

/// The reference path: a second veth pair between A and B, never faulted.
pub const REF_IF_A: &str = "chaosbench-ra";
pub const REF_IF_B: &str = "chaosbench-rb";
const REF_IP_A: &str = "10.199.1.1";
const REF_IP_B: &str = "10.199.1.2";
/// The flood's destination port on A's veth (the faults' target) and on the reference path.
pub const FLOOD_PORT: u16 = 47_001;
const REF_PORT: u16 = 47_003;
/// The probe's destination port (latency runs).
pub const PROBE_PORT: u16 = 47_002;
/// Source ports: fixed, so that no ephemeral port can ever collide with one of the agent's
/// protected ports (its metrics port is protected too).
const FLOOD_SPORT: u16 = 47_101;
pub(super) const PROBE_SPORT: u16 = 47_102;
const REF_SPORT: u16 = 47_103;
/// Bytes of UDP payload of the flood (the "small packet" of the rate test).
pub const FLOOD_PAYLOAD: usize = 64;
/// (source address, source port, destination address, destination port) of path 0 (A's veth)
/// and path 1 (the reference).
const PATHS: [(&str, u16, &str, u16); 2] = [
    (IP_A, FLOOD_SPORT, IP_B, FLOOD_PORT),
    (REF_IP_A, REF_SPORT, REF_IP_B, REF_PORT),
];

/// Adds the reference veth pair to the demo namespaces (it goes with them).
pub fn add_reference_path() -> anyhow::Result<()> {
    exec(&mut cmd(
        "ip",
        [
            "link", "add", REF_IF_A, "netns", NS_A, "type", "veth", "peer", "name", REF_IF_B,
            "netns", NS_B,
        ],
    ))?;
    for (ns, ifname, ip) in [(NS_A, REF_IF_A, REF_IP_A), (NS_B, REF_IF_B, REF_IP_B)] {
        exec(&mut cmd(
            "ip",
            ["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", ifname],
        ))?;
        exec(&mut cmd("ip", ["-n", ns, "link", "set", ifname, "up"]))?;
    }
    Ok(())
}

/// Moves the calling thread into network namespace `ns`.
fn enter(ns: &str) -> anyhow::Result<()> {
    let path = Path::new("/run/netns").join(ns);
    let f = File::open(&path).with_context(|| format!("open {}", path.display()))?;
    setns(&f, CloneFlags::CLONE_NEWNET).with_context(|| format!("enter network namespace {ns}"))
}

/// Pins the calling thread to `cpu` when the machine has more than one: the sender and the
/// receiver then never share a CPU, which keeps the rate from depending on where the scheduler
/// happened to put them. Best effort.
pub(super) fn pin(cpu: usize) {
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        return;
    }
    let mut set = CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = sched_setaffinity(Pid::from_raw(0), &set);
    }
}

/// Runs `f` on a new thread inside namespace `ns`.
pub(super) fn spawn_in<T: Send + 'static>(
    ns: &'static str,
    name: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<JoinHandle<anyhow::Result<T>>> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            enter(ns)?;
            f()
        })
        .context("spawn a thread")
}

pub(super) fn join<T>(h: JoinHandle<anyhow::Result<T>>) -> anyhow::Result<T> {
    h.join().map_err(|_| anyhow!("a bench thread panicked"))?
}

/// A command's output and when it was spawned and reaped.
#[derive(Debug)]
pub struct Timed {
    pub start: Instant,
    pub end: Instant,
    pub out: Output,
}

impl Timed {
    /// Runs `cmd` (stdin closed) and times it, from just before the spawn to the exit.
    pub fn run(cmd: &mut Command) -> anyhow::Result<Self> {
        let start = Instant::now();
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("spawn {}", crate::display(cmd)))?;
        let end = Instant::now();
        if !out.status.success() {
            bail!(
                "`{}` failed ({}): {}",
                crate::display(cmd),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Self { start, end, out })
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
}

/// Runs `cmd` inside namespace A, spawned from a thread that entered it: unlike `ip netns exec`,
/// no extra process and no remount of /sys is inside the timing.
pub fn run_in_a(mut cmd: Command) -> anyhow::Result<Timed> {
    join(spawn_in(NS_A, "bench-cmd", move || Timed::run(&mut cmd))?)
}

/// Threads and a stop flag; stopped and joined on drop.
#[derive(Debug, Default)]
pub(super) struct Threads {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) handles: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Threads {
    pub(super) fn finish(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let mut first = Ok(());
        for h in self.handles.drain(..) {
            if let Err(e) = join(h) {
                first = first.and(Err(e));
            }
        }
        first
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// A receiving socket in B that the receiver thread polls with a short timeout, so that it sees
/// the stop flag (and its deadline) even when nothing arrives.
fn receiver_socket(ip: &str, port: u16) -> anyhow::Result<UdpSocket> {
    let sock = UdpSocket::bind((ip, port)).with_context(|| format!("bind {ip}:{port}"))?;
    // Root may exceed rmem_max: a deep queue absorbs the receiver being descheduled for a moment,
    // so that the count is what arrived at B, not what one wake-up could drain.
    setsockopt(&sock, sockopt::RcvBufForce, &(8 << 20)).context("SO_RCVBUFFORCE")?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(sock)
}

pub(super) fn sender_socket(
    (ip, sport, to, port): (&str, u16, &str, u16),
) -> anyhow::Result<UdpSocket> {
    let sock = UdpSocket::bind((ip, sport)).with_context(|| format!("bind {ip}:{sport}"))?;
    sock.connect((to, port))
        .with_context(|| format!("connect to {to}:{port}"))?;
    Ok(sock)
}

/// Starts the receiver thread and waits until its socket is bound (or it failed).
pub(super) fn start_receiver(
    threads: &mut Threads,
    (ip, port): (&'static str, u16),
    max: Duration,
    mut on_packet: impl FnMut(&[u8]) + Send + 'static,
) -> anyhow::Result<()> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let stop = Arc::clone(&threads.stop);
    let h = spawn_in(NS_B, "bench-recv", move || {
        pin(1);
        let sock = receiver_socket(ip, port)?;
        let _ = ready_tx.send(());
        let deadline = Instant::now() + max;
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            match sock.recv(&mut buf) {
                Ok(n) => on_packet(&buf[..n]),
                // EINTR too: a receive timeout makes recv return it instead of restarting
                // (SA_RESTART does not apply), e.g. when the process is stopped and continued.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e).context("recv"),
            }
        }
        Ok(())
    })?;
    if ready_rx.recv_timeout(Duration::from_secs(5)).is_err() {
        // The thread ended (its error says why) or is stuck before binding.
        return Err(if h.is_finished() {
            join(h).err().unwrap_or_else(|| anyhow!("receiver ended"))
        } else {
            anyhow!("receiver did not bind within 5 s")
        });
    }
    threads.handles.push(h);
    Ok(())
}

/// Packet counters of both paths at one instant.
#[derive(Clone, Copy, Debug)]
pub struct Counts {
    pub at: Instant,
    pub sent: [u64; 2],
    pub received: [u64; 2],
}

impl Counts {
    /// (received, sent) per second on `path` between two snapshots.
    pub fn rates(&self, later: &Self, path: usize) -> (f64, f64) {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        (
            (later.received[path] - self.received[path]) as f64 / secs,
            (later.sent[path] - self.sent[path]) as f64 / secs,
        )
    }
}

#[derive(Debug, Default)]
struct Shared {
    /// The path the sender uses now.
    path: AtomicUsize,
    /// Send attempts (an nft drop fails the send with EPERM: still a packet the sender pushed).
    sent: [AtomicU64; 2],
    received: [AtomicU64; 2],
}

/// The small-packet flood, on path 0 until [`Flood::set_path`]; stopped on drop. Every thread
/// ends by itself after `max`.
#[derive(Debug)]
pub struct Flood {
    threads: Threads,
    shared: Arc<Shared>,
}

impl Flood {
    pub fn start(max: Duration) -> anyhow::Result<Self> {
        let mut f = Self {
            threads: Threads::default(),
            shared: Arc::default(),
        };
        for (path, &(_, _, to, port)) in PATHS.iter().enumerate() {
            let shared = Arc::clone(&f.shared);
            start_receiver(&mut f.threads, (to, port), max, move |_| {
                shared.received[path].fetch_add(1, Ordering::Relaxed);
            })?;
        }
        let (stop, shared) = (Arc::clone(&f.threads.stop), Arc::clone(&f.shared));
        f.threads
            .handles
            .push(spawn_in(NS_A, "bench-flood", move || {
                pin(0);
                let socks = [sender_socket(PATHS[0])?, sender_socket(PATHS[1])?];
                let buf = [0u8; FLOOD_PAYLOAD];
                let deadline = Instant::now() + max;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let path = shared.path.load(Ordering::Relaxed) % 2;
                    for _ in 0..64 {
                        // A failed send (EPERM from an nft drop, ENOBUFS) is a dropped packet.
                        let _ = socks[path].send(&buf);
                    }
                    // Published per batch: one shared cache line per datagram would be part of
                    // what is measured.
                    shared.sent[path].fetch_add(64, Ordering::Relaxed);
                }
                Ok(())
            })?);
        Ok(f)
    }

    /// Moves the sender to path 0 (A's veth) or 1 (the reference).
    pub fn set_path(&self, path: usize) {
        self.shared.path.store(path, Ordering::Relaxed);
    }

    pub fn counts(&self) -> Counts {
        let load = |a: &[AtomicU64; 2]| [0, 1].map(|i| a[i].load(Ordering::Relaxed));
        Counts {
            at: Instant::now(),
            sent: load(&self.shared.sent),
            received: load(&self.shared.received),
        }
    }

    pub fn finish(mut self) -> anyhow::Result<()> {
        self.threads.finish()
    }
}
