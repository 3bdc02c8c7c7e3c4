//! The probe: sequence-numbered datagrams from A to B at a fixed interval. The receiver
//! records every gap in the sequence, the sender the send time of every sequence number, so a
//! fault's first drop and first pass are known to one packet interval.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::bail;

use super::net::{PROBE_PORT, PROBE_SPORT, Threads, pin, sender_socket, spawn_in, start_receiver};
use crate::demo::{IP_A, IP_B, NS_A};

/// Send times kept: 2^20 packets, over 100 s at the probe's rate, while a gap is looked up
/// within seconds of its packets being sent.
const RING: usize = 1 << 20;

/// A gap in the received sequence: `first_lost..first_after` were not received.
#[derive(Clone, Copy, Debug)]
pub struct Gap {
    pub first_lost: u64,
    pub first_after: u64,
}

/// The paced, sequence-numbered stream; stopped on drop.
#[derive(Debug)]
pub struct Probe {
    threads: Threads,
    base: Instant,
    sent_at: Arc<Vec<AtomicU64>>,
    gaps: Arc<Mutex<Vec<Gap>>>,
    /// Send time (ns since `base`) of the newest packet received; 0 before the first.
    last_received: Arc<AtomicU64>,
}

impl Probe {
    pub fn start(interval: Duration, max: Duration) -> anyhow::Result<Self> {
        let mut p = Self {
            threads: Threads::default(),
            base: Instant::now(),
            sent_at: Arc::new((0..RING).map(|_| AtomicU64::new(0)).collect()),
            gaps: Arc::default(),
            last_received: Arc::default(),
        };
        let (gaps, last) = (Arc::clone(&p.gaps), Arc::clone(&p.last_received));
        let mut expected: Option<u64> = None;
        start_receiver(&mut p.threads, (IP_B, PROBE_PORT), max, move |buf| {
            let (Some(seq), Some(at)) = (
                buf.get(..8).and_then(|b| b.try_into().ok()),
                buf.get(8..16).and_then(|b| b.try_into().ok()),
            ) else {
                return;
            };
            let (seq, at) = (u64::from_be_bytes(seq), u64::from_be_bytes(at));
            if let Some(e) = expected
                && seq > e
            {
                gaps.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Gap {
                        first_lost: e,
                        first_after: seq,
                    });
            }
            // veth does not reorder; a late duplicate must not move the expectation back.
            if expected.is_none_or(|e| seq >= e) {
                expected = Some(seq + 1);
            }
            last.fetch_max(at, Ordering::Release);
        })?;
        let (stop, sent_at, base) = (Arc::clone(&p.threads.stop), Arc::clone(&p.sent_at), p.base);
        p.threads
            .handles
            .push(spawn_in(NS_A, "bench-probe", move || {
                pin(0);
                // The default 50 µs timer slack would make the interval 150 µs instead of 100 µs.
                let _ = nix::sys::prctl::set_timerslack(1_000);
                let sock = sender_socket((IP_A, PROBE_SPORT, IP_B, PROBE_PORT))?;
                let start = Instant::now();
                let deadline = start + max;
                let mut seq: u64 = 0;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    // Absolute deadlines: a late wake-up does not shift the schedule.
                    let due = start + interval * u32::try_from(seq).unwrap_or(u32::MAX);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let at = base.elapsed().as_nanos() as u64;
                    sent_at[seq as usize % RING].store(at, Ordering::Release);
                    let mut buf = [0u8; 16];
                    buf[..8].copy_from_slice(&seq.to_be_bytes());
                    buf[8..].copy_from_slice(&at.to_be_bytes());
                    // A dropped send (EPERM from nft) is a lost packet like any other.
                    let _ = sock.send(&buf);
                    seq += 1;
                }
                Ok(())
            })?);
        Ok(p)
    }

    /// `t` in the probe's clock (ns since its start).
    pub fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    pub fn sent_at(&self, seq: u64) -> u64 {
        self.sent_at[seq as usize % RING].load(Ordering::Acquire)
    }

    pub fn last_received(&self) -> u64 {
        self.last_received.load(Ordering::Acquire)
    }

    /// Waits until packets sent in the last 20 ms arrive (the path is clear), at most `timeout`.
    pub fn wait_flowing(&self, timeout: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + timeout;
        loop {
            let now = self.ns(Instant::now());
            if self.last_received() + 20_000_000 >= now {
                return Ok(());
            }
            if Instant::now() > end {
                bail!("no probe packet arrived for {timeout:?}");
            }
            crate::check_interrupted()?;
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The first gap whose first lost packet was sent at or after `from` (probe clock), once the
    /// gap has closed (a later packet arrived).
    pub fn gap_after(&self, from: u64) -> Option<Gap> {
        let gaps = self.gaps.lock().unwrap_or_else(PoisonError::into_inner);
        gaps.iter()
            .copied()
            .find(|g| self.sent_at(g.first_lost) >= from)
    }

    /// Waits (at most `timeout`) for the gap a fault acting from `from` leaves; `None` if packets
    /// sent after `quiet_from` arrived and no such gap exists (nothing was dropped).
    pub fn wait_gap(
        &self,
        from: u64,
        quiet_from: u64,
        timeout: Duration,
    ) -> anyhow::Result<Option<Gap>> {
        let end = Instant::now() + timeout;
        loop {
            // Newest arrival first: the receiver records a gap before it publishes the packet
            // that closed it, so a gap is never missed between the two reads.
            let last = self.last_received();
            if let Some(g) = self.gap_after(from) {
                return Ok(Some(g));
            }
            if last > quiet_from + 50_000_000 {
                return Ok(None);
            }
            if Instant::now() > end {
                bail!("the probe stream stalled: no packet arrived for {timeout:?}");
            }
            crate::check_interrupted()?;
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn finish(mut self) -> anyhow::Result<()> {
        self.threads.finish()
    }
}
