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
/// The IO stressor's file: large enough that its blocks are not all in the disk's own cache.
pub const IO_FILE_SIZE: u64 = 64 << 20;
/// What direct IO aligns buffers, offsets and lengths to (the largest logical block size).
const IO_ALIGN: usize = 4096;

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
    /// The file to read and write with direct IO (made by the agent).
    #[arg(long)]
    pub io_file: Option<std::path::PathBuf>,
    /// Bytes per second of IO, reads and writes together; 0: no limit.
    #[arg(long, default_value_t = 0)]
    pub io_rate: u64,
}

/// The IO block for `rate` bytes a second: about sixteen operations a second, between 64 KiB
/// and 1 MiB, aligned; 1 MiB at full speed.
fn io_block(rate: u64) -> usize {
    if rate == 0 {
        return 1 << 20;
    }
    let b = usize::try_from(rate / 16)
        .unwrap_or(1 << 20)
        .clamp(64 << 10, 1 << 20);
    b / IO_ALIGN * IO_ALIGN
}

/// A buffer aligned for direct IO.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len, IO_ALIGN).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        assert!(!ptr.is_null(), "out of memory");
        // SAFETY: `ptr` is valid for `len` bytes, just allocated.
        unsafe { std::ptr::write_bytes(ptr, 0x5a, len) };
        Self { ptr, layout }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: valid for the layout's size, and borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// Writes then reads back each block of `path` in turn with `O_DIRECT`, paced to `rate` bytes
/// a second (0: unpaced). Returns only on an IO error.
fn io_worker(path: &std::path::Path, rate: u64) -> std::io::Error {
    use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => return e,
    };
    let block = io_block(rate);
    let mut buf = Aligned::new(block);
    let blocks = IO_FILE_SIZE / block as u64;
    let start = Instant::now();
    let mut done: u64 = 0;
    for i in (0..blocks).cycle() {
        let off = i * block as u64;
        if let Err(e) = file.write_all_at(buf.as_mut(), off) {
            return e;
        }
        if let Err(e) = file.read_exact_at(buf.as_mut(), off) {
            return e;
        }
        done += 2 * block as u64;
        if rate > 0 {
            let due = start + Duration::from_secs_f64(done as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
    }
    std::io::Error::other("no blocks")
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
    if let Some(path) = &a.io_file {
        // The agent sees the exit (and the fault's effects stop growing); the message is for
        // whoever runs the worker by hand.
        let e = io_worker(path, a.io_rate);
        eprintln!("chaos-agent stress-worker: {}: {e}", path.display());
        std::process::exit(1);
    }
    if a.cpu_workers == 0 && held.is_empty() {
        return;
    }
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_blocks_are_aligned_and_bounded() {
        assert_eq!(io_block(0), 1 << 20);
        assert_eq!(io_block(8 << 20), 512 << 10);
        assert_eq!(io_block(64 << 10), 64 << 10);
        assert_eq!(io_block(1 << 40), 1 << 20);
        assert_eq!(io_block(3_000_000) % IO_ALIGN, 0);
    }
}
