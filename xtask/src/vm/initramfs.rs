//! The initramfs: busybox with `init.sh` as `/init`, the host's tools with their shared
//! libraries, the workspace's sources (for fixtures), the agent and test binaries, the lane and
//! skip lists `init.sh` reads from `/etc/vm`, and the kernel's config and modules.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, anyhow, bail};

use super::bins::{Bins, stripped};
use super::cpio;
use super::kernel::Kernel;
use super::lanes::{ALONE, HOST_ONLY, LANES, lanes};
use super::modules::resolve_modules;
use super::output;

/// Host tools the tests verify with. They are the host's glibc builds, so their shared libraries
/// and the dynamic loader go in too.
const TOOLS: &[&str] = &["tc", "ip", "ping", "iperf3", "bpftool", "ss"];
/// Copied when the host has them: tests that use them skip without them (as on a host that
/// lacks them), and strace is for debugging a failure by hand. setpriv, nsenter and unshare are
/// util-linux's: busybox's applets of those names lack options the tests use (`--reuid`).
/// The DNS suite's: dnsmasq (the server), `getent` (glibc's getaddrinfo; the resolver is in
/// libc.so.6 since glibc 2.34, so no NSS module is needed), nstat and ethtool (checksum
/// counters, offload), and `dig`, whose libraries (libicu above all) grow the image from 115 to
/// 156 MiB and a loaded machine's boot by 2-5 s: issue 9 asks for dig's verdict on 6.1 too.
/// Not python3 (its standard library is as big, and getent covers getaddrinfo).
const OPTIONAL_TOOLS: &[&str] = &[
    "curl",
    "setpriv",
    "nsenter",
    "unshare",
    "nstat",
    "ethtool",
    "socat",
    "dnsmasq",
    "getent",
    "dig",
    "stress-ng",
    "strace",
];
/// Where iproute2 keeps netem's delay distribution tables (`tc ... distribution normal`).
const TC_DIST_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/tc",
    "/usr/lib/tc",
    "/usr/share/tc",
];

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // sbin too: tc and ip live there and a non-login root shell may not have it on PATH.
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub(super) fn initramfs_tree(
    root: &Path,
    kernel: &Kernel,
    bins: &Bins,
    filter: Option<&str>,
    repeat: u32,
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
    a.file("init", include_bytes!("init.sh").to_vec(), 0o755)?;
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
    // Repeated rounds measure flake rates "on an idle machine": every binary alone.
    let (alone, shared): (Vec<&str>, Vec<&str>) = bins
        .tests
        .iter()
        .map(|(n, _)| n.as_str())
        .partition(|n| repeat > 1 || ALONE.contains(n));
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
    a.file("etc/vm/repeat", format!("{repeat}\n").into_bytes(), 0o644)?;

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

pub(super) fn write_archive(archive: &cpio::Archive, path: &Path) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
