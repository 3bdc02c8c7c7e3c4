//! `cargo xtask vm-systemd`: the Debian package and its unit under a real systemd (issue 13).
//!
//! A Debian 12 userland (`mmdebstrap --variant=minbase` with systemd, dpkg, apt, iproute2,
//! bpftool, kmod, curl, jq, man-db), built once and cached under `target/vm-cache/` keyed by
//! its package list, is packed with the package, the kernel's modules (with a `modules.dep`,
//! so that the kernel's own module requests work as on a host) and the test
//! (`systemd-test.sh`, run by `chaos-vm-test.service`) into the initramfs. `/init` is systemd:
//! without `/etc/initrd-release` it runs the image as a normal system, in RAM. The same cached
//! Debian 6.1 kernel and QEMU invocation as `vm-test` boot it; the test prints one
//! `VMSD-PASS`/`VMSD-FAIL` line per check and a verdict, and powers off.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::cpio::Archive;
use super::initramfs::write_archive;
use super::kernel::debian_kernel;
use super::qemu::boot;
use super::{output, target_dir};
use crate::workspace_root;

/// The suite the userland comes from: bookworm, whose kernel line (6.1) is the one booted.
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";

/// Packages beyond minbase (which has dpkg, apt, bash, coreutils), and why.
const PACKAGES: &[&str] = &[
    // PID 1, `systemctl`, journald, `systemd-analyze security`; dbus for systemctl's bus.
    "systemd",
    "systemd-sysv",
    "dbus",
    // The independent judges: `tc -j`, `bpftool -j`, and jq to read their JSON.
    "iproute2",
    "bpftool",
    "jq",
    // modprobe, which the kernel runs for the qdisc and veth modules it is asked for.
    "kmod",
    // pgrep; curl for the metrics endpoint; man for the installed pages.
    "procps",
    "curl",
    "man-db",
];

/// The documentation of the bootstrapped packages is left out (a third of the image, unpacked
/// under TCG at every boot). The filter is dropped from the image afterwards, so the package
/// under test installs its man pages and docs as on any host.
const DPKG_EXCLUDES: &[&str] = &[
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
];

/// Timers and gettys a test boot has no use for: a getty on the serial console would compete
/// with the test's output, the timers would start apt or man-db work in the middle of a test.
const MASKED: &[&str] = &[
    "serial-getty@ttyS0.service",
    "getty@tty1.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "man-db.timer",
    "dpkg-db-backup.timer",
    "fstrim.timer",
    "systemd-tmpfiles-clean.timer",
];

/// The test unit: one shot at boot, its output straight on the serial console.
const TEST_UNIT: &str = "[Unit]
Description=chaos-agent package and unit test (cargo xtask vm-systemd)
After=basic.target systemd-journald.service

[Service]
Type=oneshot
ExecStart=/usr/local/bin/chaos-systemd-test
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
";

#[derive(Debug, clap::Args)]
pub struct SystemdArgs {
    /// Wall-clock limit for the guest, from QEMU's start to its power-off, in seconds. The
    /// guest takes ~100 s on a calm 2-core machine; TCG ran up to 2x slower on CI machines.
    #[arg(long, default_value_t = 420)]
    pub timeout: u64,
    /// Install this package instead of building one with `cargo xtask package`.
    #[arg(long, value_name = "DEB")]
    pub deb: Option<PathBuf>,
    /// Keep the initramfs (target/vm-cache/systemd-initramfs.cpio) after the run.
    #[arg(long)]
    pub keep: bool,
    /// Package the dev-profile build `vm-test` shares (`cargo xtask package --dev`) instead of
    /// a release build: what `cargo xtask test` does, to stay inside its time budget.
    #[arg(long, conflicts_with = "deb")]
    pub dev: bool,
}

pub fn run(args: &SystemdArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    crate::require_root("vm-systemd")?;
    let cache = target_dir(&workspace_root()).join("vm-cache");
    std::fs::create_dir_all(&cache).with_context(|| format!("create {}", cache.display()))?;
    let kernel = debian_kernel(&cache)?;
    let deb = match &args.deb {
        Some(d) => d.clone(),
        None => crate::package::build(args.dev)?,
    };
    let t_package = started.elapsed();
    let t = Instant::now();
    let rootfs = userland(&cache)?;
    let t_rootfs = t.elapsed();

    let t = Instant::now();
    let mut a = Archive::default();
    add_tree(&mut a, &rootfs, "")?;
    add_modules(&mut a, &kernel, &cache)?;
    a.copy("root/chaos-agent.deb", &deb)?;
    a.file(
        "usr/local/bin/chaos-systemd-test",
        include_str!("systemd-test.sh").as_bytes().to_vec(),
        0o755,
    )?;
    a.file(
        "etc/systemd/system/chaos-vm-test.service",
        TEST_UNIT.as_bytes().to_vec(),
        0o644,
    )?;
    a.symlink(
        "etc/systemd/system/multi-user.target.wants/chaos-vm-test.service",
        "/etc/systemd/system/chaos-vm-test.service",
    )?;
    // The image's own versions of these (an empty machine id, the build host's name) give way.
    for path in ["etc/machine-id", "etc/hostname", "init"] {
        a.remove(path);
    }
    for unit in MASKED {
        a.remove(&format!("etc/systemd/system/{unit}"));
        a.symlink(&format!("etc/systemd/system/{unit}"), "/dev/null")?;
    }
    // A fixed machine id: an empty one makes this a first boot (systemd-firstboot and presets).
    a.file(
        "etc/machine-id",
        b"c4a05a9e17a7c0de5eed00000000beef\n".to_vec(),
        0o444,
    )?;
    a.file("etc/hostname", b"chaos-vm\n".to_vec(), 0o644)?;
    a.symlink("init", "/lib/systemd/systemd")?;
    let initramfs = cache.join("systemd-initramfs.cpio");
    write_archive(&a, &initramfs)?;
    println!(
        "vm-systemd: initramfs {} MiB, packed in {:.0} s",
        a.payload_bytes() >> 20,
        t.elapsed().as_secs_f64()
    );

    let log = cache.join("systemd-console.log");
    // SYSTEMD_IN_INITRD=0: the kernel passes it to PID 1 as an environment variable; systemd
    // would otherwise take a root file system in RAM for an initrd on some versions.
    let outcome = boot(
        &kernel.vmlinuz,
        &initramfs,
        &log,
        Duration::from_secs(args.timeout),
        "systemd.show_status=0 loglevel=3 SYSTEMD_IN_INITRD=0",
    );
    if !args.keep {
        let _ = std::fs::remove_file(&initramfs);
    }
    let outcome = outcome?;
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    let checks = Checks::parse(&console);
    for (name, why) in &checks.failed {
        println!("vm-systemd: FAIL {name}: {why}");
    }
    let mut problems = Vec::new();
    if let Some(f) = &outcome.kernel_fault {
        problems.push(format!("kernel fault: {f}"));
    }
    if outcome.timed_out {
        problems.push(format!(
            "timed out after {} s (last step: {})",
            args.timeout,
            checks.last_step.as_deref().unwrap_or("none")
        ));
    }
    match checks.verdict {
        None if !outcome.timed_out => problems.push("the guest printed no VM-VERDICT".into()),
        Some((p, f)) if p != checks.passed.len() as u64 || f != checks.failed.len() as u64 => {
            problems.push(format!(
                "the verdict (pass={p} fail={f}) disagrees with the lines read"
            ));
        }
        _ => {}
    }
    if checks.passed.is_empty() {
        problems.push("no check passed".into());
    }
    for p in &problems {
        println!("vm-systemd: FAIL: {p}");
    }
    println!(
        "vm-systemd: package {:.0} s, userland {:.0} s, guest {:.1} s (boot {}), total {:.0} s; exposure {}; console log {}",
        t_package.as_secs_f64(),
        t_rootfs.as_secs_f64(),
        outcome.guest.as_secs_f64(),
        outcome
            .boot
            .map_or_else(|| "-".into(), |b| format!("{:.1} s", b.as_secs_f64())),
        started.elapsed().as_secs_f64(),
        checks.exposure.as_deref().unwrap_or("-"),
        log.display()
    );
    // The line `cargo xtask test` reads (as vm-test's): failures include the run's problems.
    let failed = checks.failed.len() + problems.len();
    println!(
        "vm: {} passed, {failed} failed, 0 skipped, 0 host-only",
        checks.passed.len()
    );
    if failed > 0 {
        bail!("vm-systemd failed");
    }
    Ok(())
}

/// What the guest's test reported on the console.
#[derive(Debug, Default)]
struct Checks {
    passed: Vec<String>,
    failed: Vec<(String, String)>,
    verdict: Option<(u64, u64)>,
    last_step: Option<String>,
    exposure: Option<String>,
}

impl Checks {
    /// Reads the `VMSD-*` and `VM-VERDICT` markers anywhere in a line (the kernel or systemd
    /// may print on the same console).
    fn parse(console: &str) -> Self {
        let mut c = Self::default();
        let after = |line: &str, marker: &str| -> Option<String> {
            line.find(marker)
                .map(|i| line[i + marker.len()..].trim().to_owned())
        };
        for line in console.lines() {
            if let Some(name) = after(line, "VMSD-PASS ") {
                c.passed.push(name);
            } else if let Some(rest) = after(line, "VMSD-FAIL ") {
                let (name, why) = rest.split_once(": ").unwrap_or((&rest, ""));
                c.failed.push((name.to_owned(), why.to_owned()));
            } else if let Some(step) = after(line, "VMSD-STEP ") {
                c.last_step = Some(step);
            } else if let Some(e) = after(line, "VMSD-EXPOSURE ") {
                c.exposure = Some(e);
            } else if let Some(rest) = after(line, "VM-VERDICT ") {
                let field = |k: &str| {
                    rest.split_whitespace()
                        .find_map(|f| f.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
                };
                if let (Some(p), Some(f)) = (field("pass"), field("fail")) {
                    c.verdict = Some((p, f));
                }
            }
        }
        c
    }
}

/// The cached userland: `target/vm-cache/systemd-<key>/root`, bootstrapped once per package
/// list (and suite, and exclusion list).
fn userland(cache: &Path) -> anyhow::Result<PathBuf> {
    // Bump when the hooks below change: the key covers what the tree is made of.
    const HOOKS_VERSION: u32 = 2;
    let spec = format!(
        "{SUITE} {MIRROR} hooks {HOOKS_VERSION}\n{}\n{}\n",
        PACKAGES.join(","),
        DPKG_EXCLUDES.join("\n")
    );
    let dir = cache.join(format!("systemd-{:016x}", fnv1a(spec.as_bytes())));
    let root = dir.join("root");
    let marker = dir.join(".complete");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == spec) {
        println!("vm-systemd: userland {} (cached)", dir.display());
        return Ok(root);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // Older userlands (another package list) are dropped: one is enough.
    for e in std::fs::read_dir(cache)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("systemd-") && e.path() != dir && e.path().is_dir() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    println!(
        "vm-systemd: bootstrapping Debian {SUITE} into {}",
        root.display()
    );
    let t = Instant::now();
    let mut c = Command::new("mmdebstrap");
    c.args(["--variant=minbase", "--quiet"])
        .arg(format!("--include={}", PACKAGES.join(",")));
    for e in DPKG_EXCLUDES {
        c.arg(format!("--dpkgopt={e}"));
    }
    c.arg(r#"--customize-hook=rm -f "$1/etc/dpkg/dpkg.cfg.d/99mmdebstrap""#)
        // man-db's dpkg trigger rebuilds its index after every install and purge: 15-20 s
        // under TCG each time. `man PAGE` finds the page without the index.
        .arg(r#"--customize-hook=rm -f "$1/var/lib/man-db/auto-update""#)
        // The apt lists and the downloaded .debs: 100 MB the guest never reads.
        .arg(r#"--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin"#)
        .args([SUITE])
        .arg(&root)
        .arg(MIRROR);
    output(&mut c).context("mmdebstrap (apt-get install mmdebstrap)")?;
    std::fs::write(&marker, &spec)?;
    println!(
        "vm-systemd: bootstrapped in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    Ok(root)
}

/// 64-bit FNV-1a: a cache key that is the same on every machine and Rust version.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Adds the directory tree `dir` under `prefix` in the archive: directories with their modes,
/// files, symbolic links. Device nodes, sockets and FIFOs are left out (devtmpfs provides
/// `/dev`), but for `/dev/console`, which the kernel opens before anything is mounted.
fn add_tree(a: &mut Archive, dir: &Path, prefix: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = format!("{prefix}{name}");
        let meta = std::fs::symlink_metadata(e.path())?;
        let ft = meta.file_type();
        let mode = meta.permissions().mode() & 0o7777;
        if ft.is_dir() {
            a.dir_mode(&path, mode)?;
            add_tree(a, &e.path(), &format!("{path}/"))?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(e.path())?;
            a.symlink(&path, &target.to_string_lossy())?;
        } else if ft.is_file() {
            let data =
                std::fs::read(e.path()).with_context(|| format!("read {}", e.path().display()))?;
            a.file(&path, data, mode)?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket() {
            // Skipped, see above.
        }
    }
    if prefix.is_empty() {
        a.dir("dev")?;
        a.char_dev("dev/console", 5, 1)?;
    }
    Ok(())
}

/// The kernel's modules (the part of the package `kernel.rs` unpacks: net, veth, ifb, virtio)
/// at `/usr/lib/modules/VER` with the `modules.dep` and `modules.alias` that `depmod` writes
/// for them, made once in the cache: the kernel's requests for `sch_ingress`, `cls_bpf` or
/// `veth` then load them through kmod's modprobe, as on a host.
fn add_modules(
    a: &mut Archive,
    kernel: &super::kernel::Kernel,
    cache: &Path,
) -> anyhow::Result<()> {
    let Some(modules) = &kernel.modules else {
        bail!("the kernel has no modules directory");
    };
    let version = modules
        .file_name()
        .map(|v| v.to_string_lossy().into_owned())
        .context("modules directory name")?;
    let staging = cache.join(format!("systemd-modules-{version}"));
    let tree = staging.join("lib/modules").join(&version);
    if !tree.join("modules.dep").is_file() {
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(tree.parent().context("parent")?)?;
        output(Command::new("cp").arg("-a").arg(modules).arg(&tree))?;
        output(Command::new("depmod").arg("-b").arg(&staging).arg(&version))?;
    }
    add_tree(a, &tree, &format!("usr/lib/modules/{version}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_markers_are_read_anywhere_in_a_line() {
        let c = Checks::parse(
            "noise VMSD-PASS dpkg-i\n[  3.1] VMSD-FAIL stop-reverted: diff | x\nVMSD-STEP install (at 9 s)\nVMSD-EXPOSURE 3.4\nVM-VERDICT pass=1 fail=1\n",
        );
        assert_eq!(c.passed, ["dpkg-i"]);
        assert_eq!(
            c.failed,
            [("stop-reverted".to_owned(), "diff | x".to_owned())]
        );
        assert_eq!(c.verdict, Some((1, 1)));
        assert_eq!(c.last_step.as_deref(), Some("install (at 9 s)"));
        assert_eq!(c.exposure.as_deref(), Some("3.4"));
    }

    #[test]
    fn the_cache_key_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
