//! Boots the guest under QEMU (TCG) and watches its console until it powers off, faults or runs
//! out of time.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

use super::console::{ConsoleFilter, Outcome};

/// The scratch disk's size.
const SCRATCH_DISK: u64 = 128 << 20;

/// Time the guest gets after a kernel fault marker to print the rest of the report.
const AFTER_FAULT: Duration = Duration::from_secs(20);

/// Kills QEMU if we leave early (error, Ctrl-C unwinding): a TCG guest left behind would burn a
/// core of a shared machine.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Boots `vmlinuz` with `initramfs` and the kernel command line `console=ttyS0 panic=-1 quiet`
/// followed by `append` (empty for the test suite's busybox guest).
pub(super) fn boot(
    vmlinuz: &Path,
    initramfs: &Path,
    log: &Path,
    timeout: Duration,
    append: &str,
) -> anyhow::Result<Outcome> {
    // A blank scratch disk, the guest's /dev/vda: what the IO limit tests throttle (a real
    // virtio block device, as on a cloud VM). Sparse, and made anew for every boot.
    let disk = log.with_extension("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(SCRATCH_DISK))
        .with_context(|| format!("create the scratch disk {}", disk.display()))?;
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-m",
        "2G",
        "-smp",
        "2",
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
    ])
    .arg("-drive")
    .arg(format!(
        "file={},if=virtio,format=raw,cache=unsafe",
        disk.display()
    ))
    .arg("-kernel")
    .arg(vmlinuz)
    .arg("-initrd")
    .arg(initramfs)
    .arg("-append")
    .arg(format!("console=ttyS0 panic=-1 quiet {append}").trim_end())
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    println!(
        "vm: booting {} under QEMU (TCG), limit {} s",
        vmlinuz.display(),
        timeout.as_secs()
    );
    let start = Instant::now();
    let mut qemu = Qemu(
        cmd.spawn()
            .context("spawn qemu-system-x86_64 (apt-get install qemu-system-x86)")?,
    );
    let stdout = qemu
        .0
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no qemu stdout"))?;
    let stderr = qemu
        .0
        .stderr
        .take()
        .ok_or_else(|| anyhow!("no qemu stderr"))?;

    // Raw chunks, so that a test's "test name ... " shows before it finishes (or hangs).
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut stdout = stdout;
        let mut buf = [0u8; 8192];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
            .join("\n")
    });

    let mut outcome = watch(&rx, start, timeout, log)?;
    outcome.guest = start.elapsed();
    if outcome.timed_out || outcome.kernel_fault.is_some() {
        let _ = qemu.0.kill();
    }
    let status = qemu.0.wait()?;
    drop(qemu);
    let _ = std::fs::remove_file(&disk);
    let _ = reader.join();
    let errors = err_reader.join().unwrap_or_default();
    println!();
    if !status.success() && !outcome.timed_out && outcome.kernel_fault.is_none() {
        bail!("qemu-system-x86_64 exited with {status}: {errors}");
    }
    if !errors.trim().is_empty() {
        println!("vm: qemu stderr: {}", errors.trim());
    }
    Ok(outcome)
}

/// Echoes the console to stdout and `log` and parses it, until QEMU closes it or the deadline
/// (the timeout, or [`AFTER_FAULT`] after a kernel fault marker) passes.
fn watch(
    rx: &mpsc::Receiver<Vec<u8>>,
    start: Instant,
    timeout: Duration,
    log: &Path,
) -> anyhow::Result<Outcome> {
    let mut log_file =
        std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let mut outcome = Outcome::default();
    let mut deadline = start + timeout;
    let mut pending = String::new();
    let mut terminal = ConsoleFilter::default();
    let mut stdout_w = std::io::stdout();
    loop {
        let now = Instant::now();
        if now >= deadline {
            if outcome.kernel_fault.is_none() {
                outcome.timed_out = true;
            }
            break;
        }
        match rx.recv_timeout(deadline - now) {
            Ok(chunk) => {
                let text = terminal.filter(&chunk);
                stdout_w.write_all(text.as_bytes())?;
                stdout_w.flush()?;
                log_file.write_all(text.as_bytes())?;
                pending.push_str(&text);
                while let Some(i) = pending.find('\n') {
                    let line: String = pending.drain(..=i).collect();
                    let had_fault = outcome.kernel_fault.is_some();
                    outcome.line(line.trim_end(), start.elapsed());
                    if !had_fault && outcome.kernel_fault.is_some() {
                        deadline = deadline.min(Instant::now() + AFTER_FAULT);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    Ok(outcome)
}
