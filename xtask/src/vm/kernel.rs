//! The guest's kernel: Debian's newest `linux-image-6.1.0-NN-amd64`, fetched with apt into the
//! cache once, and the PVH `vmlinux` unpacked from it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, anyhow, bail};

use super::output;

#[derive(Debug)]
pub(super) struct Kernel {
    pub(super) vmlinuz: PathBuf,
    /// `boot/config-<version>`, put at the same path in the guest for tests and `doctor` that
    /// read kernel options (Debian builds without /proc/config.gz).
    pub(super) config: Option<PathBuf>,
    /// `lib/modules/<version>`; `None` boots without loading any module.
    pub(super) modules: Option<PathBuf>,
}

/// Debian's newest `linux-image-6.1.0-NN-amd64`, downloaded and unpacked once into the cache.
/// Older NN disappear from the archive, so the newest is the only one we can count on fetching.
pub(super) fn debian_kernel(cache: &Path) -> anyhow::Result<Kernel> {
    let package = match newest_kernel_package() {
        Ok(p) => p,
        Err(e) => {
            // Offline or no apt lists: a kernel unpacked earlier is as good.
            let cached = cached_kernels(cache).pop().ok_or(e)?;
            println!("vm: apt has no 6.1 kernel ({cached} is cached, using it)");
            cached
        }
    };
    let marker = std::fs::read_to_string(cache.join(&package).join(".unpacked"));
    let package = if marker.is_ok_and(|m| m == unpacked_marker()) {
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
    unpack(&deb, &dir)?;
    std::fs::remove_dir_all(&dl)?;
    std::fs::write(dir.join(".unpacked"), unpacked_marker())?;
    // Keep one kernel.
    for old in cached_kernels(cache).into_iter().filter(|k| k != package) {
        let _ = std::fs::remove_dir_all(cache.join(old));
    }
    Ok(())
}

/// What the guest needs of the package: the image, its config, the list of built-in modules and
/// the modules `MODULES` in `modules.rs` names with their dependencies (the protocol ones under
/// `net/`, the two network devices, virtio's block driver for the scratch disk, and `lib/` for
/// the odd helper such as `libcrc32c`). 48 MB of the
/// 400 MB a whole `dpkg -x` writes, which matters on a CI machine with little disk left after
/// the build. (tar's `*` matches `/` too.)
const UNPACK: &[&str] = &[
    "./boot/vmlinuz-*",
    "./boot/config-*",
    "./lib/modules/*/modules.builtin",
    "./lib/modules/*/kernel/net/*",
    "./lib/modules/*/kernel/drivers/net/veth.ko*",
    "./lib/modules/*/kernel/drivers/net/ifb.ko*",
    "./lib/modules/*/kernel/drivers/virtio/*",
    "./lib/modules/*/kernel/drivers/block/virtio_blk.ko*",
    "./lib/modules/*/kernel/lib/*",
];

/// What `.unpacked` holds: the members unpacked, so that a cache unpacked with fewer is
/// unpacked again.
fn unpacked_marker() -> String {
    UNPACK.join("\n")
}

/// Unpacks the members in [`UNPACK`] of `deb` into `dir` (`dpkg-deb --fsys-tarfile | tar`).
fn unpack(deb: &Path, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut fsys = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("spawn dpkg-deb")?;
    let tarball = fsys
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no dpkg-deb stdout"))?;
    let tar = Command::new("tar")
        .args(["-x", "--wildcards", "-C"])
        .arg(dir)
        .args(UNPACK)
        .stdin(tarball)
        .output()
        .context("spawn tar")?;
    let fsys = fsys.wait()?;
    if !fsys.success() || !tar.status.success() {
        bail!(
            "unpacking {} failed (dpkg-deb {fsys}, tar {}): {}",
            deb.display(),
            tar.status,
            String::from_utf8_lossy(&tar.stderr).trim()
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_abi_of_package_names() {
        assert_eq!(kernel_abi("linux-image-6.1.0-56-amd64"), Some(56));
        assert_eq!(kernel_abi("linux-image-6.1.0-56-cloud-amd64"), None);
    }
}
