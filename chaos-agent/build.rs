//! Builds `chaos-ebpf` for `bpfel-unknown-none` with nightly (via aya-build) and leaves the object
//! in `OUT_DIR/chaos-ebpf`, where `src/ebpf` embeds it with `include_bytes_aligned!`.
//!
//! The object does not depend on the host target or profile (aya-build always builds it in
//! release), yet aya-build builds it under `OUT_DIR`, which differs for every target and profile:
//! the glibc tests, the musl binaries of `cargo xtask vm-test` and the release build of the bench
//! each paid half a minute for the same object (a nightly `core` included). So aya-build gets one
//! shared directory, `<target>/ebpf`, where cargo rebuilds only what changed, and the object is
//! copied from there. A lock file keeps concurrent builds from copying a half-written object.
use std::{fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

const OBJECT: &str = "chaos-ebpf";

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == OBJECT)
        .ok_or_else(|| anyhow!("{OBJECT} package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{OBJECT} manifest has no parent"))?
        .as_str();
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir,
        ..Default::default()
    };

    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let shared = metadata.target_directory.as_std_path().join("ebpf");
    fs::create_dir_all(&shared).with_context(|| format!("create {}", shared.display()))?;
    let lock = fs::File::create(shared.join(".lock")).context("create the lock file")?;
    lock.lock().context("lock the shared eBPF build")?;
    // SAFETY: a build script is single-threaded; aya-build reads OUT_DIR only to place its
    // nested target dir and the copied object.
    unsafe { std::env::set_var("OUT_DIR", &shared) };
    let built = aya_build::build_ebpf([package], aya_build::Toolchain::default());
    unsafe { std::env::set_var("OUT_DIR", &out_dir) };
    built?;
    fs::copy(shared.join(OBJECT), out_dir.join(OBJECT))
        .with_context(|| format!("copy {OBJECT} into {}", out_dir.display()))?;
    Ok(())
}
