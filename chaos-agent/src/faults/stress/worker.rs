//! The stressor process: what `chaos-agent stress-worker` (hidden; started by the agent, never
//! by hand) runs. It was placed in its cgroups, made the OOM killer's first pick and bound to
//! the agent's life (`PR_SET_PDEATHSIG`) before it started; here it only does the work, until
//! it is killed.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// The duty cycle's period.
const PERIOD: Duration = Duration::from_millis(100);
/// The memory stressor's allocation unit.
const CHUNK: usize = 1 << 20;

/// What the worker does (its command line).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// CPU worker threads.
    #[arg(long, default_value_t = 0)]
    pub cpu_workers: u32,
    /// Percent of each 100 ms a CPU worker is busy.
    #[arg(long, default_value_t = 100)]
    pub cpu_load: u8,
    /// Bytes of memory to allocate, touch and hold.
    #[arg(long, default_value_t = 0)]
    pub memory_bytes: u64,
    /// Milliseconds over which to spread the allocation.
    #[arg(long, default_value_t = 0)]
    pub memory_ramp_ms: u64,
}

/// One CPU worker: busy for `busy` of every [`PERIOD`], asleep for the rest.
fn cpu_worker(busy: Duration) -> ! {
    let mut start = Instant::now();
    let mut x = 0u64;
    loop {
        while start.elapsed() < busy {
            x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
        start += PERIOD;
        let now = Instant::now();
        if start > now {
            std::thread::sleep(start - now);
        } else {
            // Behind (descheduled): start the next period now rather than catch up.
            start = now;
        }
    }
}

/// Runs the stressors; returns only if there is nothing to do.
pub fn run(a: &WorkerArgs) {
    let busy = PERIOD * u32::from(a.cpu_load.min(100)) / 100;
    for _ in 0..a.cpu_workers {
        std::thread::spawn(move || cpu_worker(busy));
    }
    let mut held: Vec<Vec<u8>> = Vec::new();
    let chunks = usize::try_from(a.memory_bytes.div_ceil(CHUNK as u64)).unwrap_or(usize::MAX);
    let pause = if chunks > 0 && a.memory_ramp_ms > 0 {
        Duration::from_millis(a.memory_ramp_ms) / u32::try_from(chunks).unwrap_or(u32::MAX)
    } else {
        Duration::ZERO
    };
    for _ in 0..chunks {
        // Written, not zero-filled: calloc'd zero pages would be mapped lazily and never
        // charged to the cgroup.
        held.push(vec![0xa5; CHUNK]);
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    black_box(&held);
    if a.cpu_workers == 0 && held.is_empty() {
        return;
    }
    loop {
        std::thread::park();
    }
}
