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

mod cpio;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{cargo, workspace_root};
use anyhow::{Context as _, anyhow, bail};

/// The musl target gives fully static binaries, which run in a guest with no libc of ours.
const MUSL: &str = "x86_64-unknown-linux-musl";

/// Modules the suite needs (qdiscs, classifiers, actions, devices, socket diag for `ss -K`).
/// Their dependencies are added from each module's `.modinfo`.
const MODULES: &[&str] = &[
    "sch_netem",
    "sch_fq",
    "sch_prio",
    "sch_htb",
    "sch_tbf",
    "sch_ingress", // also provides clsact
    "cls_bpf",
    "cls_u32",
    "cls_matchall",
    "act_bpf",
    "act_mirred",
    "act_gact",
    "ifb",
    "veth",
    "inet_diag",
    "tcp_diag",
    "udp_diag",
];

/// Tests that run on the host only: (test binary, test, why). The guest is there for what its
/// kernel has and the host's lacks (netem, fq, prio, `cls_bpf` without tcx, an older verifier);
/// these check what no kernel difference changes, or measure time, which under TCG would measure
/// the emulator. Every other test of every binary runs in the guest. init.sh passes them to
/// libtest as `--skip`, so they count as filtered out, not as passed.
const HOST_ONLY: &[(&str, &str, &str)] = &[
    (
        "daemon",
        "api_create_list_show_extend_stop",
        "HTTP/JSON semantics over the socket; the loss fault it creates is the loss suite's",
    ),
    (
        "daemon",
        "uid_not_allowed_is_refused",
        "SO_PEERCRED and socket modes do not depend on the kernel version",
    ),
    (
        "daemon",
        "tcp_needs_a_token_and_limits_apply",
        "token checks and limits do not depend on the kernel version",
    ),
    ("daemon", "config_check", "parses TOML; no kernel involved"),
    (
        "daemon",
        "metrics_pass_promtool_and_prometheus_sees_drops",
        "promtool and Prometheus are not in the guest; the counters are the loss suite's",
    ),
    (
        "daemon",
        "parallel_clients_leave_nothing",
        "a load test: under TCG it would measure the emulator",
    ),
    (
        "daemon",
        "ttl_reverts_are_on_time",
        "a timing test: under TCG it would measure the emulator",
    ),
    (
        "daemon",
        "sigterm_reverts_everything_within_5s",
        "a timing test; SIGTERM reverts on 6.1 are proven by the loss and netem suites",
    ),
    (
        "ebpf_datapath",
        "tcx_drop_pass_through_and_ttl",
        "attaches with tcx, which 6.1 lacks; the loss suite covers its netlink path",
    ),
    (
        "ebpf_datapath",
        "egress_wire_drop_is_real_loss_for_tcp",
        "attaches with tcx, which 6.1 lacks; the loss suite covers its netlink path",
    ),
];

/// Guest seconds of each test binary in a calm run (every run prints the per-test times), used
/// to split the binaries into [`LANES`] lanes of about equal length. Unlisted: 10 s.
const GUEST_SECONDS: &[(&str, u32)] = &[
    ("netem", 82),
    ("loss", 76),
    ("tc_netlink", 30),
    ("daemon", 13),
    ("kernel_features", 5),
    ("ebpf_logic", 3),
    ("lib-chaos_agent", 2),
    ("ebpf_datapath", 0),
    ("bin-chaos-agent", 0),
];

/// Test binaries run at once in the guest, one per vCPU (QEMU's TCG runs each vCPU on its own
/// host thread): most of a network test is waiting (TTLs, timeouts), which the other lane fills.
const LANES: usize = 2;

/// Binaries that run alone, after the lanes: they assert times to the millisecond (netem's
/// delay within +/- 2 ms at the median, jitter within 20 %), and under TCG a busy second vCPU
/// makes the guest's timers late: a 100 ms delay measured 104 ms with the loss suite running
/// beside it.
const ALONE: &[&str] = &["netem"];

/// Splits the binaries into `lanes` lanes, longest first onto the shortest lane. Within a lane
/// the binaries keep their order (unit tests first).
fn lanes<'a>(bins: &[&'a str], lanes: usize) -> Vec<Vec<&'a str>> {
    let cost = |b: &str| {
        GUEST_SECONDS
            .iter()
            .find(|(n, _)| *n == b)
            .map_or(10, |(_, s)| *s)
    };
    let mut by_cost: Vec<&str> = bins.to_vec();
    by_cost.sort_by_key(|b| std::cmp::Reverse(cost(b)));
    let mut load = vec![0u32; lanes.max(1)];
    let mut lane_of = HashMap::new();
    for b in by_cost {
        let (i, _) = load
            .iter()
            .enumerate()
            .min_by_key(|(_, l)| **l)
            .expect("at least one lane");
        load[i] += cost(b);
        lane_of.insert(b, i);
    }
    let mut out = vec![Vec::new(); load.len()];
    for b in bins {
        out[lane_of[b]].push(*b);
    }
    out.retain(|l| !l.is_empty());
    out
}

/// Host tools the tests verify with. They are the host's glibc builds, so their shared libraries
/// and the dynamic loader go in too.
const TOOLS: &[&str] = &["tc", "ip", "ping", "iperf3", "bpftool", "ss"];
/// Copied when the host has them: tests that use them skip without them (as on a host that
/// lacks them), and strace is for debugging a failure by hand. setpriv, nsenter and unshare are
/// util-linux's: busybox's applets of those names lack options the tests use (`--reuid`).
/// Not `dig`: through libicu it would add 50 MB to an initramfs that TCG unpacks at every boot.
/// Not python3 either (its standard library is as big): tests that run in the guest can't use it.
const OPTIONAL_TOOLS: &[&str] = &[
    "curl",
    "setpriv",
    "nsenter",
    "unshare",
    "nstat",
    "ethtool",
    "socat",
    "dnsmasq",
    "stress-ng",
    "strace",
];
/// Where iproute2 keeps netem's delay distribution tables (`tc ... distribution normal`).
const TC_DIST_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/tc",
    "/usr/lib/tc",
    "/usr/share/tc",
];

/// Console markers of a kernel that is no longer trustworthy.
const KERNEL_FAULTS: &[&str] = &[
    "Kernel panic",
    "BUG:",
    "Oops",
    "general protection fault",
    "kernel BUG at",
];

/// Time the guest gets after a kernel fault marker to print the rest of the report.
const AFTER_FAULT: Duration = Duration::from_secs(20);

#[derive(clap::Args, Debug)]
pub struct VmArgs {
    /// Wall-clock limit for the guest, from QEMU's start to its power-off, in seconds. The guest
    /// runs in ~165 s on a calm machine and TCG's speed varies about 2x on the 2-core CI
    /// machines: 480 s leaves twice that, and a hung test still fails the whole vm-test within
    /// the 10 minutes it is meant to take.
    #[arg(long, default_value_t = 480)]
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
    let archive = initramfs_tree(&root, &kernel, &bins, args.filter.as_deref(), &cache)?;
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
        Duration::from_secs(args.timeout),
    );
    if !args.keep {
        let _ = std::fs::remove_file(&initramfs);
    }
    let outcome = outcome?;
    report(&outcome, started.elapsed(), &log, host_only.len())
}

/// Prints the summary (the count line last, for whoever reads our closing line) and fails if
/// anything went wrong.
fn report(o: &Outcome, total: Duration, log: &Path, skipped: usize) -> anyhow::Result<()> {
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
    let failed = o.failed + o.crashed_bins.len() as u64;
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
    println!(
        "vm: {} passed, {failed} failed, {skipped} skipped (host-only)",
        o.passed
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
// Paths

fn target_dir(root: &Path) -> PathBuf {
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

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // sbin too: tc and ip live there and a non-login root shell may not have it on PATH.
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------------------
// Kernel

#[derive(Debug)]
struct Kernel {
    vmlinuz: PathBuf,
    /// `boot/config-<version>`, put at the same path in the guest for tests and `doctor` that
    /// read kernel options (Debian builds without /proc/config.gz).
    config: Option<PathBuf>,
    /// `lib/modules/<version>`; `None` boots without loading any module.
    modules: Option<PathBuf>,
}

/// Debian's newest `linux-image-6.1.0-NN-amd64`, downloaded and unpacked once into the cache.
/// Older NN disappear from the archive, so the newest is the only one we can count on fetching.
fn debian_kernel(cache: &Path) -> anyhow::Result<Kernel> {
    let package = match newest_kernel_package() {
        Ok(p) => p,
        Err(e) => {
            // Offline or no apt lists: a kernel unpacked earlier is as good.
            let cached = cached_kernels(cache).pop().ok_or(e)?;
            println!("vm: apt has no 6.1 kernel ({cached} is cached, using it)");
            cached
        }
    };
    let package = if cache.join(&package).join(".unpacked").exists() {
        println!("vm: kernel {package} (cached)");
        package
    } else if let Err(e) = fetch_kernel(cache, &package) {
        // Stale apt lists name a package the archive has already dropped for a newer one.
        println!("vm: {e:#}; refreshing the apt lists");
        output(Command::new("apt-get").args(["update", "-qq"]))?;
        let newer = newest_kernel_package()?;
        fetch_kernel(cache, &newer)?;
        newer
    } else {
        package
    };
    let dir = cache.join(&package);
    let version = package.trim_start_matches("linux-image-");
    let vmlinuz = dir.join(format!("boot/vmlinuz-{version}"));
    let modules = dir.join(format!("lib/modules/{version}"));
    if !vmlinuz.is_file() || !modules.is_dir() {
        bail!(
            "{} lacks boot/vmlinuz-{version} or lib/modules/{version}",
            dir.display()
        );
    }
    let config = Some(dir.join(format!("boot/config-{version}"))).filter(|c| c.is_file());
    let pvh_elf = dir.join("vmlinux");
    if !pvh_elf.is_file()
        && let Err(e) = extract_vmlinux(&vmlinuz, &pvh_elf)
    {
        println!("vm: booting the bzImage (no PVH vmlinux: {e:#})");
    }
    let vmlinuz = if pvh_elf.is_file() { pvh_elf } else { vmlinuz };
    Ok(Kernel {
        vmlinuz,
        config,
        modules: Some(modules),
    })
}

/// Unpacks the ELF `vmlinux` from Debian's xz-compressed bzImage. QEMU boots it through its PVH
/// entry point (Debian sets `CONFIG_PVH`), which skips the real-mode setup and, above all, the
/// kernel decompressing itself under TCG: about 4 s of every boot.
fn extract_vmlinux(bzimage: &Path, out: &Path) -> anyhow::Result<()> {
    const XZ_MAGIC: &[u8] = b"\xfd7zXZ\0";
    let image = std::fs::read(bzimage)?;
    let start = image
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)
        .ok_or_else(|| anyhow!("not an xz-compressed bzImage"))?;
    let mut xz = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn xz")?;
    let mut stdin = xz.stdin.take().ok_or_else(|| anyhow!("no xz stdin"))?;
    let payload = image[start..].to_vec();
    // Fed from a thread: xz's output would fill the pipe while we still write its input.
    let feeder = std::thread::spawn(move || stdin.write_all(&payload));
    let elf = xz.wait_with_output()?.stdout;
    let _ = feeder.join();
    if !elf.starts_with(b"\x7fELF") {
        bail!("xz did not yield an ELF image");
    }
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, elf)?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

/// Downloads and unpacks one kernel package into `cache/<package>`, then drops older ones.
fn fetch_kernel(cache: &Path, package: &str) -> anyhow::Result<()> {
    println!("vm: downloading {package}");
    let dir = cache.join(package);
    let _ = std::fs::remove_dir_all(&dir);
    let dl = cache.join("download");
    let _ = std::fs::remove_dir_all(&dl);
    std::fs::create_dir_all(&dl)?;
    output(
        Command::new("apt-get")
            .args(["download", package])
            .current_dir(&dl),
    )?;
    let deb = std::fs::read_dir(&dl)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| anyhow!("apt-get download {package} left no .deb"))?;
    output(Command::new("dpkg").arg("-x").arg(&deb).arg(&dir))?;
    std::fs::remove_dir_all(&dl)?;
    std::fs::write(dir.join(".unpacked"), "")?;
    // Keep one kernel: each is 400 MB unpacked.
    for old in cached_kernels(cache).into_iter().filter(|k| k != package) {
        let _ = std::fs::remove_dir_all(cache.join(old));
    }
    Ok(())
}

/// The NN of `linux-image-6.1.0-NN-amd64`.
fn kernel_abi(package: &str) -> Option<u32> {
    package
        .strip_prefix("linux-image-6.1.0-")?
        .strip_suffix("-amd64")?
        .parse()
        .ok()
}

fn newest_kernel_package() -> anyhow::Result<String> {
    let search = || {
        output(Command::new("apt-cache").args([
            "search",
            "--names-only",
            r"^linux-image-6\.1\.0-[0-9]+-amd64$",
        ]))
    };
    let mut found = search()?;
    if found.trim().is_empty() {
        // A fresh machine may not have read the package lists yet.
        println!("vm: apt-cache knows no 6.1 kernel; running apt-get update");
        output(Command::new("apt-get").args(["update", "-qq"]))?;
        found = search()?;
    }
    found
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| Some((kernel_abi(p)?, p.to_owned())))
        .max()
        .map(|(_, p)| p)
        .ok_or_else(|| anyhow!("apt-cache lists no linux-image-6.1.0-NN-amd64"))
}

/// Unpacked kernels in the cache, oldest first.
fn cached_kernels(cache: &Path) -> Vec<String> {
    let mut found: Vec<(u32, String)> = std::fs::read_dir(cache)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.path().join(".unpacked").exists())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            Some((kernel_abi(&name)?, name))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, n)| n).collect()
}

/// Module name as the kernel spells it: file stem with `-` as `_`.
fn module_name(file: &Path) -> Option<String> {
    let name = file.file_name()?.to_str()?;
    let stem = name
        .split_once(".ko")
        .filter(|(_, rest)| matches!(*rest, "" | ".xz" | ".zst" | ".gz"))?
        .0;
    Some(stem.replace('-', "_"))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), out)?;
        } else {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// The wanted modules and their dependencies, dependencies first, as (name, uncompressed
/// image). Built-in ones are skipped. The deb has no modules.dep (depmod runs at install), so
/// dependencies come from each module's own `.modinfo`.
fn resolve_modules(dir: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let builtin: BTreeSet<String> = std::fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| module_name(Path::new(l)))
        .collect();
    let mut files = Vec::new();
    walk(&dir.join("kernel"), &mut files)?;
    let by_name: HashMap<String, PathBuf> = files
        .into_iter()
        .filter_map(|p| Some((module_name(&p)?, p)))
        .collect();

    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in MODULES {
        add_module(name, &by_name, &builtin, &mut seen, &mut order)?;
    }
    Ok(order)
}

fn add_module(
    name: &str,
    by_name: &HashMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<(String, Vec<u8>)>,
) -> anyhow::Result<()> {
    let name = name.replace('-', "_");
    if builtin.contains(&name) || !seen.insert(name.clone()) {
        return Ok(());
    }
    let path = by_name
        .get(&name)
        .ok_or_else(|| anyhow!("kernel has no module {name}"))?;
    let image = decompress(path)?;
    let depends = modinfo(&image, "depends")
        .with_context(|| format!("read .modinfo of {}", path.display()))?;
    for dep in depends
        .iter()
        .flat_map(|d| d.split(','))
        .filter(|d| !d.is_empty())
    {
        add_module(dep, by_name, builtin, seen, order)?;
    }
    order.push((name, image));
    Ok(())
}

/// busybox `insmod` takes only plain ELF: Debian 6.1 ships plain `.ko`, newer kernels compress.
fn decompress(path: &Path) -> anyhow::Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => return std::fs::read(path).with_context(|| format!("read {}", path.display())),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("spawn {tool} to decompress {}", path.display()))?;
    if !out.status.success() {
        bail!(
            "{tool} -dc {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Values of `key=` in the `.modinfo` section of a module (an ELF64 little-endian object).
fn modinfo(elf: &[u8], key: &str) -> anyhow::Result<Vec<String>> {
    let u16_at = |o: usize| -> anyhow::Result<usize> {
        Ok(u16::from_le_bytes(
            elf.get(o..o + 2)
                .ok_or_else(|| anyhow!("short ELF"))?
                .try_into()?,
        )
        .into())
    };
    let u32_at = |o: usize| -> anyhow::Result<usize> {
        Ok(u32::from_le_bytes(
            elf.get(o..o + 4)
                .ok_or_else(|| anyhow!("short ELF"))?
                .try_into()?,
        ) as usize)
    };
    let u64_at = |o: usize| -> anyhow::Result<usize> {
        Ok(usize::try_from(u64::from_le_bytes(
            elf.get(o..o + 8)
                .ok_or_else(|| anyhow!("short ELF"))?
                .try_into()?,
        ))?)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        bail!("not an ELF64 object");
    }
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    let section = |i: usize| -> anyhow::Result<(usize, &[u8])> {
        let h = shoff + i * shentsize;
        let (off, size) = (u64_at(h + 0x18)?, u64_at(h + 0x20)?);
        Ok((
            u32_at(h)?,
            elf.get(off..off + size)
                .ok_or_else(|| anyhow!("section out of file"))?,
        ))
    };
    let names = section(shstrndx)?.1;
    for i in 0..shnum {
        let (name_off, data) = section(i)?;
        let name = names.get(name_off..).unwrap_or_default();
        if name.starts_with(b".modinfo\0") {
            let prefix = format!("{key}=");
            return Ok(data
                .split(|b| *b == 0)
                .filter_map(|s| {
                    std::str::from_utf8(s)
                        .ok()?
                        .strip_prefix(&prefix)
                        .map(str::to_owned)
                })
                .collect());
        }
    }
    bail!("no .modinfo section")
}

// ---------------------------------------------------------------------------------------------
// Static builds

#[derive(Debug)]
struct Bins {
    agent: PathBuf,
    /// (name in the guest, executable), unit tests first.
    tests: Vec<(String, PathBuf)>,
}

/// Builds the agent and every test executable of chaos-agent for musl and returns their paths,
/// read from cargo's JSON messages (the file names carry hashes).
fn build_static() -> anyhow::Result<Bins> {
    let artifacts = |args: &[&str]| -> anyhow::Result<Vec<serde_json::Value>> {
        let mut cmd = cargo();
        cmd.args(args)
            .args([
                "--target",
                MUSL,
                "-p",
                "chaos-agent",
                "--message-format=json-render-diagnostics",
            ])
            .stderr(Stdio::inherit());
        println!("vm: cargo {}", args.join(" "));
        let stdout = output(&mut cmd)?;
        Ok(stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["executable"].is_string())
            .collect())
    };
    // `cargo test --no-run` builds the binary only when an integration test exists, so ask for
    // it explicitly.
    let agent = artifacts(&["build", "--bin", "chaos-agent"])?
        .into_iter()
        .find(|m| m["target"]["name"] == "chaos-agent")
        .and_then(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| anyhow!("cargo build reported no chaos-agent executable"))?;
    let mut tests: Vec<(u8, String, PathBuf)> = artifacts(&["test", "--no-run"])?
        .into_iter()
        .filter(|m| m["profile"]["test"] == true)
        .filter_map(|m| {
            let name = m["target"]["name"].as_str()?;
            let kind = m["target"]["kind"][0].as_str()?;
            let exe = PathBuf::from(m["executable"].as_str()?);
            Some(match kind {
                "test" => (1, name.to_owned(), exe),
                _ => (0, format!("{kind}-{name}"), exe),
            })
        })
        .collect();
    tests.sort();
    tests.dedup_by(|a, b| a.1 == b.1);
    Ok(Bins {
        agent,
        tests: tests.into_iter().map(|(_, n, p)| (n, p)).collect(),
    })
}

/// The file without its debug info: it halves or more the initramfs that TCG has to unpack,
/// and symbols (kept) are enough for backtraces. Falls back to the original if `strip` fails.
fn stripped(exe: &Path, cache: &Path) -> anyhow::Result<Vec<u8>> {
    let tmp = cache.join("stripped.tmp");
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&tmp)
        .arg(exe)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let data = std::fs::read(if ok { tmp.as_path() } else { exe })
        .with_context(|| format!("read {}", exe.display()))?;
    let _ = std::fs::remove_file(&tmp);
    Ok(data)
}

// ---------------------------------------------------------------------------------------------
// initramfs

fn initramfs_tree(
    root: &Path,
    kernel: &Kernel,
    bins: &Bins,
    filter: Option<&str>,
    cache: &Path,
) -> anyhow::Result<cpio::Archive> {
    let mut a = cpio::Archive::default();
    for d in [
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "root",
        "etc",
        "lib/modules",
        "tests",
    ] {
        a.dir(d)?;
    }
    // The kernel opens /dev/console for /init before anything is mounted.
    a.char_dev("dev/console", 5, 1)?;
    a.char_dev("dev/null", 1, 3)?;
    a.symlink("var/run", "/run")?;
    a.symlink("sbin", "bin")?;
    a.symlink("usr/sbin", "bin")?;
    a.file("init", include_bytes!("vm/init.sh").to_vec(), 0o755)?;
    a.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n".to_vec(),
        0o644,
    )?;
    a.file(
        "etc/group",
        b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
        0o644,
    )?;
    a.file(
        "etc/hosts",
        b"127.0.0.1 localhost\n::1 localhost\n".to_vec(),
        0o644,
    )?;
    a.file(
        "etc/nsswitch.conf",
        b"passwd: files\ngroup: files\nhosts: files\n".to_vec(),
        0o644,
    )?;

    add_host_tools(&mut a)?;

    add_workspace(&mut a, root)?;
    a.file(
        "etc/vm/pkgdir",
        root.join("chaos-agent")
            .to_string_lossy()
            .as_bytes()
            .to_vec(),
        0o644,
    )?;
    a.file("bin/chaos-agent", stripped(&bins.agent, cache)?, 0o755)?;
    for (name, exe) in &bins.tests {
        a.file(&format!("tests/{name}"), stripped(exe, cache)?, 0o755)?;
    }
    let (alone, shared): (Vec<&str>, Vec<&str>) = bins
        .tests
        .iter()
        .map(|(n, _)| n.as_str())
        .partition(|n| ALONE.contains(n));
    for (i, lane) in lanes(&shared, LANES).iter().enumerate() {
        println!("vm: lane {}: {}", i + 1, lane.join(" "));
        let list = lane.join("\n") + "\n";
        a.file(&format!("etc/vm/lane{}", i + 1), list.into_bytes(), 0o644)?;
    }
    println!("vm: then alone: {}", alone.join(" "));
    let mut list = String::new();
    for n in &alone {
        list.push_str(n);
        list.push('\n');
    }
    a.file("etc/vm/alone", list.into_bytes(), 0o644)?;
    for (name, _) in &bins.tests {
        let mut skip = String::new();
        for (_, test, _) in HOST_ONLY.iter().filter(|(bin, _, _)| bin == name) {
            skip.push_str(test);
            skip.push('\n');
        }
        a.file(&format!("etc/vm/skip/{name}"), skip.into_bytes(), 0o644)?;
    }
    a.file(
        "etc/vm/filter",
        filter.unwrap_or_default().as_bytes().to_vec(),
        0o644,
    )?;

    if let Some(config) = &kernel.config
        && let Some(name) = config.file_name()
    {
        a.copy(&format!("boot/{}", name.to_string_lossy()), config)?;
    }
    let mut order = String::new();
    if let Some(dir) = &kernel.modules {
        for (name, image) in resolve_modules(dir)? {
            a.file(&format!("lib/modules/{name}.ko"), image, 0o644)?;
            order.push_str(&name);
            order.push('\n');
        }
    }
    a.file("etc/vm/modules", order.into_bytes(), 0o644)?;
    Ok(a)
}

/// The workspace's sources and fixtures, at their host paths: tests find fixtures through
/// `env!("CARGO_MANIFEST_DIR")`, which the compiler baked in as the host path. Build output,
/// git data and big files stay out (the sources are under 1 MB).
fn add_workspace(a: &mut cpio::Archive, root: &Path) -> anyhow::Result<()> {
    const MAX_FILE: u64 = 4 << 20;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let entry = entry?;
            let (path, kind) = (entry.path(), entry.file_type()?);
            let name = entry.file_name();
            if kind.is_dir() && name != "target" && name != ".git" {
                dirs.push(path);
            } else if kind.is_file() && entry.metadata()?.len() <= MAX_FILE {
                a.copy(&path.to_string_lossy(), &path)?;
            }
        }
    }
    Ok(())
}

/// busybox as `/bin/*`, and the host's glibc tools with their shared libraries.
fn add_host_tools(a: &mut cpio::Archive) -> anyhow::Result<()> {
    // Real tools at /usr/bin, ahead of busybox's applets of the same name on PATH.
    let mut libs = BTreeSet::new();
    for tool in TOOLS.iter().chain(OPTIONAL_TOOLS) {
        let Some(path) = find_on_path(tool) else {
            if TOOLS.contains(tool) {
                bail!("`{tool}` is not installed on this host (cargo xtask setup installs it)");
            }
            continue;
        };
        a.copy(&format!("usr/bin/{tool}"), &path)?;
        libs.extend(shared_libs(&path)?);
    }
    let busybox = find_on_path("busybox").ok_or_else(|| anyhow!("busybox is not installed"))?;
    a.copy("bin/busybox", &busybox)?;
    libs.extend(shared_libs(&busybox)?);
    // /bin/sh is dash, not busybox's ash: Debian's busybox prefers its own applets to PATH, so
    // the `sh -c "tc ..."` of a test would run busybox's tc, not iproute2's.
    let dash = find_on_path("dash").ok_or_else(|| anyhow!("dash is not installed"))?;
    a.copy("bin/sh", &dash)?;
    libs.extend(shared_libs(&dash)?);
    let applets = output(Command::new(&busybox).arg("--list"))?;
    for applet in applets
        .lines()
        .filter(|l| !matches!(*l, "" | "busybox" | "sh"))
    {
        a.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    for dir in TC_DIST_DIRS {
        for entry in std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "dist") {
                a.copy(&path.to_string_lossy(), &path)?;
            }
        }
    }
    // At the paths ldd printed: the loader's path is baked into each binary, and the libraries'
    // directories are in the loader's default search list, so no ld.so.cache is needed.
    for lib in &libs {
        a.copy(&lib.to_string_lossy(), lib)?;
    }
    Ok(())
}

/// Shared libraries (and the dynamic loader) of a host binary, from `ldd`; none if static.
fn shared_libs(exe: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(exe).output().context("spawn ldd")?;
    // ldd fails with "not a dynamic executable" for static binaries.
    if !out.status.success() {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let p = rest.trim().split(" (").next().unwrap_or_default().trim();
                if p.is_empty() || p == "not found" {
                    bail!(
                        "{}: shared library {} not found",
                        exe.display(),
                        name.trim()
                    );
                }
                p
            }
            None if line.starts_with('/') => line.split(" (").next().unwrap_or_default(),
            None => continue, // linux-vdso.so.1
        };
        libs.push(PathBuf::from(path));
    }
    Ok(libs)
}

fn write_archive(archive: &cpio::Archive, path: &Path) -> anyhow::Result<()> {
    // Uncompressed: QEMU loads it as is and the guest copies it, whereas gunzip under TCG costs
    // seconds per boot; the file is only read locally.
    let tmp = path.with_extension("tmp");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?,
    );
    archive.write(&mut out)?;
    out.into_inner()
        .map_err(|e| anyhow!("write {}: {e}", tmp.display()))?
        .sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Boot

#[derive(Debug, Default)]
struct Outcome {
    /// From QEMU's start to /init's first line.
    boot: Option<Duration>,
    guest: Duration,
    timed_out: bool,
    kernel_fault: Option<String>,
    /// (binaries passed, binaries failed) from the guest's verdict line.
    verdict: Option<(u64, u64)>,
    /// Totals of libtest's `test result:` lines.
    passed: u64,
    failed: u64,
    /// Binaries that failed without a `test result:` line (crashed, aborted).
    crashed_bins: Vec<String>,
    /// Binaries started and not ended, with whether they printed a `test result:` line yet.
    running: BTreeMap<String, bool>,
    module_failures: Vec<String>,
}

impl Outcome {
    fn line(&mut self, line: &str, since_start: Duration) {
        // Anywhere in the line: the firmware's "Booting from ROM.." has no newline.
        if line.contains("VM-INIT") {
            self.boot.get_or_insert(since_start);
        } else if let Some(bin) = line.strip_prefix("VM-TEST-BIN ") {
            self.running.insert(bin.trim().to_owned(), false);
        } else if let Some(rest) = line.strip_prefix("VM-TEST-BIN-FAIL ") {
            let bin = rest.split_whitespace().next().unwrap_or_default();
            if !self.running.get(bin).copied().unwrap_or(false) {
                self.crashed_bins.push(rest.trim().to_owned());
            }
        } else if let Some(bin) = line.strip_prefix("VM-TEST-BIN-END ") {
            self.running.remove(bin.trim());
        } else if let Some(m) = line.strip_prefix("VM-MODULE-FAIL ") {
            self.module_failures.push(m.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("VM-VERDICT ") {
            let field = |k: &str| {
                rest.split_whitespace()
                    .find_map(|f| f.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
            };
            self.verdict = field("pass").zip(field("fail"));
        } else if let Some((bin, rest)) = line.split_once("| ")
            && let Some(has_result) = self.running.get_mut(bin)
        {
            // A line of a test binary, "loss| test result: ok. 3 passed; 0 failed; 1 ignored;
            // 0 measured; 0 filtered out; finished in 0.1s".
            if let Some(rest) = rest.trim_start().strip_prefix("test result: ") {
                *has_result = true;
                for part in rest.split(';') {
                    let mut words = part.split_whitespace().rev();
                    let (Some(what), Some(n)) = (words.next(), words.next()) else {
                        continue;
                    };
                    let n: u64 = n.parse().unwrap_or(0);
                    match what {
                        "passed" => self.passed += n,
                        "failed" => self.failed += n,
                        _ => {}
                    }
                }
            }
        } else if self.kernel_fault.is_none() && is_kernel_fault(line) {
            self.kernel_fault = Some(line.trim().to_owned());
        }
    }
}

/// A kernel message (optionally after its `[ secs.usecs]` stamp) that starts with a fault marker.
fn is_kernel_fault(line: &str) -> bool {
    let msg = line.trim_start();
    let msg = match msg.strip_prefix('[').and_then(|r| r.split_once(']')) {
        Some((stamp, rest)) if stamp.trim().parse::<f64>().is_ok() => rest.trim_start(),
        _ => msg,
    };
    KERNEL_FAULTS.iter().any(|m| msg.starts_with(m))
}

/// Turns the serial console into clean UTF-8 text. It drops terminal escape sequences (`SeaBIOS`
/// and the kernel send "reset terminal" and "clear screen", which would wipe the user's
/// terminal and glue themselves to the guest's first line) and control characters other than
/// newline and tab, and replaces invalid UTF-8: whoever reads our stdout line by line as text
/// (`cargo xtask test`) must not choke on what a kernel or a test wrote to the console.
#[derive(Debug, Default)]
struct ConsoleFilter {
    /// 0: text, 1: after ESC, 2: inside a CSI sequence (ESC [ ... final byte).
    state: u8,
    /// Bytes of a UTF-8 sequence cut by the end of the previous chunk.
    partial: Vec<u8>,
}

impl ConsoleFilter {
    fn filter(&mut self, chunk: &[u8]) -> String {
        let mut bytes = std::mem::take(&mut self.partial);
        for &b in chunk {
            self.state = match (self.state, b) {
                (0, 0x1b) => 1,
                (0, b'\n' | b'\t' | 0x20..=0x7e | 0x80..) => {
                    bytes.push(b);
                    0
                }
                (1, b'[') => 2,
                // Other control characters, an ESC pair's second byte, a CSI's final byte.
                (2, 0x40..=0x7e) | (0 | 1, _) => 0,
                (s, _) => s,
            };
        }
        let mut out = String::with_capacity(bytes.len());
        let mut rest = bytes.as_slice();
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    break;
                }
                Err(e) => {
                    let (valid, tail) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    if let Some(n) = e.error_len() {
                        out.push(char::REPLACEMENT_CHARACTER);
                        rest = &tail[n..];
                    } else {
                        self.partial = tail.to_vec();
                        break;
                    }
                }
            }
        }
        out
    }
}

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

fn boot(
    vmlinuz: &Path,
    initramfs: &Path,
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
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
    .arg("-kernel")
    .arg(vmlinuz)
    .arg("-initrd")
    .arg(initramfs)
    .args(["-append", "console=ttyS0 panic=-1 quiet"])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_and_guest_lines() {
        let mut o = Outcome::default();
        for l in [
            "Booting from ROM..VM-INIT kernel 6.1.0-56-amd64",
            "VM-TEST-BIN lib-chaos_agent",
            "VM-TEST-BIN kernel_features",
            "lib-chaos_agent| test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.1s",
            "VM-TEST-BIN-END lib-chaos_agent",
            "kernel_features| test result: FAILED. 5 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
            "VM-TEST-BIN crashy",
            "VM-TEST-BIN-FAIL kernel_features rc=101",
            "VM-TEST-BIN-END kernel_features",
            // Not a binary's line: a kernel message or a binary that is not running.
            "other| test result: ok. 9 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
            "crashy| thread 'main' panicked",
            "VM-TEST-BIN-FAIL crashy rc=134",
            "VM-TEST-BIN-END crashy",
            "VM-TEST-BIN hung",
            "VM-VERDICT pass=1 fail=2",
        ] {
            o.line(l, Duration::from_secs(8));
        }
        assert_eq!((o.passed, o.failed), (8, 2));
        assert_eq!(o.crashed_bins, ["crashy rc=134"]);
        assert_eq!(o.running.keys().collect::<Vec<_>>(), ["hung"]);
        assert_eq!(o.verdict, Some((1, 2)));
        assert_eq!(o.boot, Some(Duration::from_secs(8)));
    }

    #[test]
    fn lanes_balance_by_cost_and_keep_order() {
        let bins = [
            "lib-chaos_agent",
            "daemon",
            "kernel_features",
            "loss",
            "netem",
            "tc_netlink",
        ];
        let l = lanes(&bins, 2);
        assert_eq!(l.len(), 2);
        let mut all: Vec<&str> = l.concat();
        all.sort_unstable();
        let mut want = bins.to_vec();
        want.sort_unstable();
        assert_eq!(all, want, "every binary in exactly one lane");
        let lane_of = |b: &str| l.iter().position(|lane| lane.contains(&b)).unwrap();
        assert_ne!(lane_of("netem"), lane_of("loss"), "the two longest apart");
        assert_eq!(lanes(&bins, 1), [bins.to_vec()]);
        assert!(lanes(&[], 2).is_empty());
    }

    #[test]
    fn host_only_names_existing_tests() {
        let root = workspace_root();
        for (bin, test, why) in HOST_ONLY {
            let path = root.join(format!("chaos-agent/tests/{bin}.rs"));
            let src = std::fs::read_to_string(&path).expect("test source");
            assert!(
                src.contains(&format!("fn {test}()")),
                "HOST_ONLY names {bin}::{test}, which {} does not define",
                path.display()
            );
            assert!(!why.is_empty(), "{bin}::{test}: say why it is host-only");
        }
    }

    #[test]
    fn console_filter_drops_escapes_across_chunks() {
        let mut f = ConsoleFilter::default();
        let mut out = f.filter(b"\x1bc\x1b[?7l\x1b[2");
        out += &f.filter(b"JVM-INIT x\r\n");
        assert_eq!(out, "VM-INIT x\n");
        // A multi-byte character cut between chunks survives; invalid bytes and BEL do not.
        let dash = "\u{2014}".as_bytes();
        let mut out = f.filter(&[b"a\x07".as_slice(), &dash[..1]].concat());
        out += &f.filter(&[&dash[1..], b"\xffb\n".as_slice()].concat());
        assert_eq!(out, "a\u{2014}\u{fffd}b\n");
    }

    #[test]
    fn kernel_fault_markers() {
        assert!(is_kernel_fault(
            "[   12.345678] BUG: kernel NULL pointer dereference, address: 0"
        ));
        assert!(is_kernel_fault(
            "Kernel panic - not syncing: Attempted to kill init!"
        ));
        assert!(is_kernel_fault(
            "[    1.000000] Oops: 0002 [#1] PREEMPT SMP NOPTI"
        ));
        assert!(!is_kernel_fault("test bug_fix_works ... ok"));
        assert!(!is_kernel_fault(
            "thread 'x' panicked at src/lib.rs: BUG: nope"
        ));
    }

    #[test]
    fn module_names_and_abi() {
        assert_eq!(
            module_name(Path::new("kernel/net/sched/sch_netem.ko")).as_deref(),
            Some("sch_netem")
        );
        assert_eq!(
            module_name(Path::new("a/nf-conntrack.ko.zst")).as_deref(),
            Some("nf_conntrack")
        );
        assert_eq!(module_name(Path::new("modules.order")), None);
        assert_eq!(kernel_abi("linux-image-6.1.0-56-amd64"), Some(56));
        assert_eq!(kernel_abi("linux-image-6.1.0-56-cloud-amd64"), None);
    }

    #[test]
    fn cpio_entries_are_padded() {
        let mut a = cpio::Archive::default();
        a.file("x/y", b"hello".to_vec(), 0o644).unwrap();
        let mut out = Vec::new();
        a.write(&mut out).unwrap();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
