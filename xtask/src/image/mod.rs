//! `cargo xtask image`: the agent's OCI image, built offline from the static (musl) release
//! binary, with no base image and no container tool: `target/image/chaos-agent-<version>.oci.tar`,
//! which `podman load -i` and `ctr image import` accept.
//!
//! The image holds the binary and the directories it uses, nothing else: no shell, no libc
//! (the binary is static), no package manager. The entrypoint is the binary itself
//! (`Cmd ["run"]`: the daemon), so a probe or `kubectl exec` runs `chaos-agent status`, never a
//! shell. The build is reproducible: fixed mtimes (`SOURCE_DATE_EPOCH`, else the commit's time),
//! sorted entries and the same binary give the same digest (the `oci` tests), and cargo builds
//! the same binary from one commit with one toolchain, so two runs give one archive.

mod oci;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::{capture, cargo, cmd, exec, workspace_root};

use oci::Entry;

/// The musl target: a static binary needs nothing of the image.
const MUSL: &str = "x86_64-unknown-linux-musl";

/// The image's name; its tag is the workspace version. Written in index.json in full
/// (`docker.io/library/...`) because that is what a bare `chaos-agent:<version>` in a pod spec
/// means to the kubelet and containerd, and podman finds it by the short name too.
pub(crate) const IMAGE_NAME: &str = "docker.io/library/chaos-agent";

/// The version the image is tagged with: the workspace's (xtask shares chaos-agent's version).
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// Pack this static executable instead of building the release binary for musl.
    #[arg(long, value_name = "PATH", conflicts_with = "debug")]
    binary: Option<PathBuf>,
    /// Pack the debug (dev profile) build instead of the release one: what the suite tests,
    /// because `vm-test` builds that very binary anyway, where a release build would add
    /// minutes. The image is the same but for the binary's speed.
    #[arg(long)]
    debug: bool,
}

/// cargo's target directory.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// Where the archive is written.
pub(crate) fn archive_path() -> PathBuf {
    target_dir()
        .join("image")
        .join(format!("chaos-agent-{VERSION}.oci.tar"))
}

pub fn run(args: &ImageArgs) -> anyhow::Result<()> {
    build(args).map(|_| ())
}

/// Builds the image and returns the archive's path.
pub(crate) fn build(args: &ImageArgs) -> anyhow::Result<PathBuf> {
    let started = Instant::now();
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => build_musl(args.debug)?,
    };
    let built = started.elapsed();
    let data = stripped(&binary)?;
    let mtime = source_date_epoch()?;
    let revision = capture(cmd("git", ["rev-parse", "HEAD"]).current_dir(workspace_root()))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let spec = oci::ImageSpec {
        reference: format!("{IMAGE_NAME}:{VERSION}"),
        entrypoint: vec!["/usr/bin/chaos-agent".into()],
        cmd: vec!["run".into()],
        env: vec!["PATH=/usr/bin".into()],
        labels: labels(&revision),
        created: rfc3339(mtime),
    };
    let img = oci::image(&spec, &rootfs(data), mtime)?;
    let path = archive_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&path, &img.archive).with_context(|| format!("write {}", path.display()))?;
    println!(
        "image: {} ({:.1} MiB archive, {:.1} MiB layer; binary built in {:.1}s, image in {:.1}s)",
        path.display(),
        img.archive.len() as f64 / 1_048_576.0,
        img.layer_size as f64 / 1_048_576.0,
        built.as_secs_f64(),
        started.elapsed().saturating_sub(built).as_secs_f64(),
    );
    println!("image: {IMAGE_NAME}:{VERSION}");
    println!("image: manifest {}", img.manifest_digest);
    println!("image: id       {}", img.config_digest);
    println!(
        "image: load it with `podman load -i {0}` or `ctr -n k8s.io image import {0}`",
        path.display()
    );
    Ok(path)
}

/// `cargo build` of the agent for musl (`--release` unless `debug`; the debug build is the
/// one `vm-test` makes, with the same arguments, so the two share it); returns the executable.
fn build_musl(debug: bool) -> anyhow::Result<PathBuf> {
    let mut build = cargo();
    build.arg("build");
    if !debug {
        build.arg("--release");
    }
    exec(build.args([
        "--target",
        MUSL,
        "-p",
        "chaos-agent",
        "--bin",
        "chaos-agent",
    ]))?;
    let profile = if debug { "debug" } else { "release" };
    let exe = target_dir().join(MUSL).join(profile).join("chaos-agent");
    if !exe.is_file() {
        bail!(
            "cargo build reported success but {} is missing",
            exe.display()
        );
    }
    Ok(exe)
}

/// The binary without debug sections (symbols are kept, for backtraces). The embedded eBPF
/// object is data in `.rodata`, untouched. `strip` writes a copy; the original stays.
fn stripped(exe: &Path) -> anyhow::Result<Vec<u8>> {
    let tmp = target_dir().join("image").join("chaos-agent.stripped");
    if let Some(dir) = tmp.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let mut strip = cmd("strip", ["--strip-debug", "-o"]);
    strip.arg(&tmp).arg(exe);
    capture(&mut strip)?;
    let data = std::fs::read(&tmp).with_context(|| format!("read {}", tmp.display()))?;
    let _ = std::fs::remove_file(&tmp);
    Ok(data)
}

/// The mtime of every entry and the config's `created`: `SOURCE_DATE_EPOCH` (the reproducible
/// builds convention) if set, else the time of the commit checked out (so one commit gives one
/// image, and `podman images` shows a meaningful age), else 0.
fn source_date_epoch() -> anyhow::Result<u64> {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        return v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"));
    }
    let commit = capture(cmd("git", ["log", "-1", "--format=%ct"]).current_dir(workspace_root()));
    Ok(commit.ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0))
}

/// Seconds since the epoch as RFC 3339 UTC (civil-from-days, Howard Hinnant's algorithm).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The `org.opencontainers.image.*` labels (annotations spec).
fn labels(revision: &str) -> BTreeMap<String, String> {
    let mut l: BTreeMap<String, String> = [
        ("title", "chaos-agent"),
        (
            "description",
            "Node agent that injects real, TTL-bounded faults (eBPF tc programs, qdiscs, cgroup limits)",
        ),
        ("version", VERSION),
        ("licenses", env!("CARGO_PKG_LICENSE")),
        ("source", env!("CARGO_PKG_REPOSITORY")),
        ("documentation", "docs/design.md, docs/api.md, deploy/kubernetes/"),
    ]
    .into_iter()
    .map(|(k, v)| (format!("org.opencontainers.image.{k}"), v.to_owned()))
    .collect();
    if !revision.is_empty() {
        l.insert("org.opencontainers.image.revision".into(), revision.into());
    }
    l
}

/// The image's root filesystem: the binary and the directories the agent and a pod need as
/// mount points or working space. `/proc`, `/sys` and `/dev` are the runtime's.
fn rootfs(binary: Vec<u8>) -> Vec<Entry> {
    let dir = |path: &str, mode: u32| Entry::Dir {
        path: path.into(),
        mode,
    };
    vec![
        dir("usr", 0o755),
        dir("usr/bin", 0o755),
        Entry::File {
            path: "usr/bin/chaos-agent".into(),
            mode: 0o755,
            data: binary,
        },
        // The config (a ConfigMap mounted here in the DaemonSet).
        dir("etc", 0o755),
        dir("etc/chaos-agent", 0o755),
        // The state dir (journals) and the socket's directory: hostPaths in the DaemonSet.
        dir("var", 0o755),
        dir("var/lib", 0o755),
        dir("var/lib/chaos-agent", 0o700),
        dir("run", 0o755),
        dir("run/chaos-agent", 0o755),
        // Where the agent mounts the cgroup v2 root privately when its mount namespace has none
        // (sys::open_cgroup2_root), and experiment command probes' scratch space.
        dir("tmp", 0o1777),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn labels_name_the_version_and_revision() {
        let l = labels("abc");
        assert_eq!(l["org.opencontainers.image.version"], VERSION);
        assert_eq!(l["org.opencontainers.image.revision"], "abc");
        assert!(l.keys().all(|k| k.starts_with("org.opencontainers.image.")));
        assert!(!labels("").contains_key("org.opencontainers.image.revision"));
    }
}
