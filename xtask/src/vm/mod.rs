//! `cargo xtask vm-test`: the privileged suite on Debian's stock 6.1 kernel under QEMU.
//!
//! The host kernel has tcx and lacks netem/fq/prio and cgroup v2 controllers; 6.1 is the
//! opposite, and it is what many hosts still run. So the same test binaries, built static for
//! musl, run in a guest booted from a minimal initramfs: busybox, the agent, the test binaries,
//! the host's glibc tools the tests judge with (with their shared libraries), and the kernel
//! modules they need. One boot, one verdict; a panic, an oops, a timeout or a missing verdict fail.
//!
//! QEMU runs with `-accel tcg`: KVM guests hang on our machines (see
//! `shared/reference/environment.md`).
//!
//! The steps, one module each: [`kernel`] fetches and caches Debian's kernel, [`modules`] picks
//! the kernel modules the suite needs with their dependencies, [`bins`] builds the static test
//! binaries, [`lanes`] decides which binaries run side by side and which tests stay on the host,
//! [`initramfs`] packs all of it with the busybox `/init` (`init.sh`) into a [`cpio`] archive,
//! [`qemu`] boots it and [`console`] reads the guest's console into an [`Outcome`] that [`run`]
//! turns into the verdict.

mod bins;
mod console;
mod cpio;
mod initramfs;
mod kernel;
mod lanes;
mod modules;
mod qemu;
pub mod systemd;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::workspace_root;
use anyhow::{Context as _, bail};

use bins::build_static;
use console::Outcome;
use initramfs::{initramfs_tree, write_archive};
use kernel::{Kernel, debian_kernel};
use lanes::HOST_ONLY;
use qemu::boot;

#[derive(clap::Args, Debug)]
pub struct VmArgs {
    /// Wall-clock limit for the guest, from QEMU's start to its power-off, in seconds. The guest
    /// runs in ~250 s on a calm 2-core machine (two lanes of ~160 s, then netem alone for ~90 s;
    /// each run prints the per-binary times), and TCG ran 1.8x slower than that on the CI machine
    /// (which hit the former 480 s limit inside netem): 900 s leaves 3.5x, and a hung test still
    /// fails the whole vm-test in 15 minutes, inside the suite's 30.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Run only the tests whose name contains this (libtest's filter).
    #[arg(long)]
    pub filter: Option<String>,
    /// Keep the initramfs (target/vm-cache/initramfs.cpio) after the run.
    #[arg(long)]
    pub keep: bool,
    /// Boot this kernel image instead of Debian's newest 6.1 (no download).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// With --kernel: its lib/modules/<version> directory (else no modules are loaded).
    #[arg(long, value_name = "DIR", requires = "kernel")]
    pub modules: Option<PathBuf>,
    /// Run the (filtered) tests this many times in one boot, one binary at a time, and print
    /// each test's failure rate: the flake rate of a timing bound under the emulated clock
    /// (`--filter delay --repeat 20`). The time limit is `--timeout` per round.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
}

pub fn run(args: &VmArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = workspace_root();
    let cache = target_dir(&root).join("vm-cache");
    std::fs::create_dir_all(&cache).with_context(|| format!("create {}", cache.display()))?;

    let kernel = match &args.kernel {
        Some(vmlinuz) => Kernel {
            vmlinuz: vmlinuz.clone(),
            config: None,
            modules: args.modules.clone(),
        },
        None => debian_kernel(&cache)?,
    };
    let bins = build_static()?;
    let initramfs = cache.join("initramfs.cpio");
    let archive = initramfs_tree(
        &root,
        &kernel,
        &bins,
        args.filter.as_deref(),
        args.repeat,
        &cache,
    )?;
    write_archive(&archive, &initramfs)?;
    println!(
        "vm: initramfs {} MiB ({} test binaries), built in {:.0} s",
        archive.payload_bytes() >> 20,
        bins.tests.len(),
        started.elapsed().as_secs_f64()
    );

    let host_only: Vec<String> = HOST_ONLY
        .iter()
        .filter(|(bin, _, _)| bins.tests.iter().any(|(name, _)| name == bin))
        .map(|(bin, test, why)| format!("{bin}::{test} ({why})"))
        .collect();
    for t in &host_only {
        println!("vm: host-only, skipped in the guest: {t}");
    }

    let log = cache.join("console.log");
    let outcome = boot(
        &kernel.vmlinuz,
        &initramfs,
        &log,
        Duration::from_secs(args.timeout.saturating_mul(u64::from(args.repeat))),
        "",
    );
    if !args.keep {
        let _ = std::fs::remove_file(&initramfs);
    }
    let outcome = outcome?;
    if args.repeat > 1 {
        print_flake_rates(&outcome, args.repeat);
    }
    report(&outcome, started.elapsed(), &log, host_only.len())
}

/// Each test's failures over the rounds of a `--repeat` run, worst first.
fn print_flake_rates(o: &Outcome, rounds: u32) {
    let mut rows: Vec<(&String, &(u32, u32))> = o.per_test.iter().collect();
    rows.sort_by_key(|(name, (_, failed))| (std::cmp::Reverse(*failed), (*name).clone()));
    println!("vm: flake rates over {rounds} rounds (one binary at a time):");
    println!("vm:   {:>6} {:>6}  test", "failed", "runs");
    for (name, (ok, failed)) in rows {
        println!("vm:   {failed:>6} {:>6}  {name}", ok + failed);
    }
}

/// Prints the summary (the skipped tests with their reasons, then the count line last, for
/// whoever reads our closing line) and fails if anything went wrong. Skipped tests are taken
/// off the passes (libtest counts a test that returns early as passed) and, when
/// `CHAOS_SKIP_LOG` is set (`cargo xtask test`), appended to that file for its summary.
fn report(o: &Outcome, total: Duration, log: &Path, host_only: usize) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    if let Some(line) = &o.kernel_fault {
        problems.push(format!("kernel fault: {line}"));
    }
    if o.timed_out {
        let running: Vec<&str> = o.running.keys().map(String::as_str).collect();
        problems.push(if running.is_empty() {
            "timed out outside any test binary".into()
        } else {
            format!("timed out while running {}", running.join(", "))
        });
    }
    match o.verdict {
        // A timeout or a kernel fault already says why the verdict is missing.
        None if !o.timed_out && o.kernel_fault.is_none() => {
            problems.push("the guest printed no VM-VERDICT".into());
        }
        Some((_, fail)) if fail > 0 => problems.push(format!("{fail} test binaries failed")),
        Some((0, 0)) => problems.push("the guest ran no test binary".into()),
        _ => {}
    }
    if !o.module_failures.is_empty() {
        problems.push(format!(
            "modules failed to load: {}",
            o.module_failures.join(", ")
        ));
    }
    for leak in &o.leaks {
        problems.push(format!("a test binary left a process behind: {leak}"));
    }
    let failed = o.failed_total();
    if o.passed + failed == 0 && o.verdict.is_some() {
        problems.push("no test ran".into());
    }
    for p in &problems {
        println!("vm: FAIL: {p}");
    }
    let boot = o
        .boot
        .map_or_else(|| "-".into(), |b| format!("{:.1}", b.as_secs_f64()));
    println!(
        "vm: boot {boot} s, guest {:.1} s, total {:.1} s (console log: {})",
        o.guest.as_secs_f64(),
        total.as_secs_f64(),
        log.display()
    );
    let (skipped, parts) = o.skipped();
    for (test, why) in &skipped {
        println!("vm: SKIP {test}: {why}");
    }
    for (test, why) in &parts {
        println!("vm: SKIP PART {test}: {why}");
    }
    if let Some(path) = std::env::var_os("CHAOS_SKIP_LOG") {
        use std::fmt::Write as _;
        use std::io::Write as _;
        let mut lines = String::new();
        for (kind, list) in [("skip", &skipped), ("part", &parts)] {
            for (test, why) in list {
                let _ = writeln!(lines, "{kind} {test}: {why}");
            }
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(lines.as_bytes()))
            .with_context(|| {
                format!("append the guest's skips to {}", Path::new(&path).display())
            })?;
    }
    println!(
        "vm: {} passed, {failed} failed, {} skipped, {host_only} host-only",
        o.passed.saturating_sub(skipped.len() as u64),
        skipped.len()
    );
    if problems.is_empty() && failed == 0 {
        Ok(())
    } else {
        bail!(
            "vm-test failed: {}",
            if problems.is_empty() {
                "test failures".into()
            } else {
                problems.join("; ")
            }
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// cargo's target directory (`CARGO_TARGET_DIR`, else `<root>/target`).
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// Runs a command and returns its stdout; fails with its stderr.
fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
