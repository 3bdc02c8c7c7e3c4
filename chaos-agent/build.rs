//! Builds `chaos-ebpf` for `bpfel-unknown-none` with nightly (via aya-build) and leaves the object
//! in `OUT_DIR/chaos-ebpf`, where `src/ebpf` embeds it with `include_bytes_aligned!`.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "chaos-ebpf")
        .ok_or_else(|| anyhow!("chaos-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("chaos-ebpf manifest has no parent"))?
        .as_str();
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
