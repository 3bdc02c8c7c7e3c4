//! An OCI image layout in one tar archive, built from bytes and nothing else: the rootfs layer
//! (ustar, gzip), the image config, the manifest, `index.json` and `oci-layout`
//! (<https://github.com/opencontainers/image-spec>, v1.1).
//!
//! Deterministic by construction: entries are written in sorted order, with one fixed mtime,
//! uid/gid 0 and no user names; the gzip header carries no time or name; the JSON objects are
//! `serde_json::Value` maps, whose keys serialise sorted. The same inputs give the same bytes,
//! so the same digests.

use std::collections::BTreeMap;
use std::io::Write as _;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// Media types of the OCI image spec.
pub(crate) const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One entry of a tar archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A directory (its path without the trailing slash) and its mode.
    Dir { path: String, mode: u32 },
    /// A regular file, its mode and contents.
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Self::Dir { path, .. } | Self::File { path, .. } => path,
        }
    }
}

/// A ustar archive of `entries`, sorted by path, each with `mtime` (seconds since the epoch),
/// owner 0:0; the two zero blocks that end an archive close it. Paths are relative (`usr/bin`),
/// at most 100 bytes (the name field: no prefix or PAX headers are needed for an image this
/// small, and a longer path is an error rather than a silently truncated one).
pub(crate) fn tar(entries: &[Entry], mtime: u64) -> anyhow::Result<Vec<u8>> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.path().cmp(b.path()));
    let mut out = Vec::new();
    for e in sorted {
        let (name, mode, kind, data): (String, u32, u8, &[u8]) = match e {
            Entry::Dir { path, mode } => (format!("{path}/"), *mode, b'5', &[]),
            Entry::File { path, mode, data } => (path.clone(), *mode, b'0', data),
        };
        if name.starts_with('/') || name.split('/').any(|c| c == "..") {
            bail!("tar entry {name:?}: paths are relative, without ..");
        }
        out.extend_from_slice(&header(&name, mode, data.len() as u64, mtime, kind)?);
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.resize(out.len() + 1024, 0);
    Ok(out)
}

/// A ustar header block (POSIX.1-1988): octal numeric fields NUL-terminated, the checksum the
/// byte sum of the header with its own field read as spaces.
fn header(name: &str, mode: u32, size: u64, mtime: u64, kind: u8) -> anyhow::Result<[u8; 512]> {
    let mut h = [0u8; 512];
    if name.len() > 100 {
        bail!("tar entry {name:?}: longer than the 100 bytes of ustar's name field");
    }
    if size >= 1 << 33 {
        bail!("tar entry {name:?}: {size} bytes do not fit ustar's 11 octal digits");
    }
    let mut octal = |at: usize, len: usize, v: u64| {
        let s = format!("{v:0width$o}", width = len - 1);
        h[at..at + len - 1].copy_from_slice(s.as_bytes());
    };
    octal(100, 8, u64::from(mode));
    octal(108, 8, 0); // uid
    octal(116, 8, 0); // gid
    octal(124, 12, size);
    octal(136, 12, mtime);
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Ok(h)
}

/// gzip at the best compression, with a header that names no file and no time (flate2 writes
/// mtime 0 and OS "unknown" unless told otherwise), so equal input gives equal output.
pub(crate) fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
    gz.write_all(data).context("gzip")?;
    gz.finish().context("gzip")
}

/// `sha256:<hex>` of `data`.
pub(crate) fn digest(data: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::from("sha256:");
    for b in Sha256::digest(data) {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// What goes into the image besides its root filesystem.
#[derive(Debug, Clone)]
pub(crate) struct ImageSpec {
    /// The image's full reference (`docker.io/library/chaos-agent:0.1.0`), written as
    /// `org.opencontainers.image.ref.name` (podman, skopeo) and `io.containerd.image.name`
    /// (`ctr image import`) in `index.json`.
    pub(crate) reference: String,
    pub(crate) entrypoint: Vec<String>,
    pub(crate) cmd: Vec<String>,
    pub(crate) env: Vec<String>,
    /// `org.opencontainers.image.*` labels (also the manifest's annotations).
    pub(crate) labels: BTreeMap<String, String>,
    /// RFC 3339 creation time (fixed: it is part of the config's digest).
    pub(crate) created: String,
}

/// The finished image: the archive and the digests worth printing.
#[derive(Debug)]
pub(crate) struct Image {
    pub(crate) archive: Vec<u8>,
    /// The manifest's digest: what `podman image inspect` calls the image's `Digest`.
    pub(crate) manifest_digest: String,
    /// The config's digest: the image id podman and containerd show.
    pub(crate) config_digest: String,
    /// The compressed layer's size.
    pub(crate) layer_size: usize,
}

/// A descriptor (media type, digest, size) of `data`.
fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": digest(data), "size": data.len()})
}

/// The OCI archive of one amd64/linux image whose only layer is `rootfs`.
pub(crate) fn image(spec: &ImageSpec, rootfs: &[Entry], mtime: u64) -> anyhow::Result<Image> {
    let layer_tar = tar(rootfs, mtime)?;
    let layer = gzip(&layer_tar)?;
    let config = serde_json::to_vec(&json!({
        "created": spec.created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": spec.entrypoint,
            "Cmd": spec.cmd,
            "Env": spec.env,
            "WorkingDir": "/",
            // The agent reverts every fault on SIGTERM (docs/design.md, Daemon).
            "StopSignal": "SIGTERM",
            "Labels": spec.labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer_tar)]},
        "history": [{"created": spec.created, "created_by": "cargo xtask image"}],
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": descriptor(MEDIA_CONFIG, &config),
        "layers": [descriptor(MEDIA_LAYER_GZIP, &layer)],
        "annotations": spec.labels,
    }))?;
    let mut in_index = descriptor(MEDIA_MANIFEST, &manifest);
    in_index["platform"] = json!({"architecture": "amd64", "os": "linux"});
    in_index["annotations"] = json!({
        "org.opencontainers.image.ref.name": spec.reference,
        "io.containerd.image.name": spec.reference,
    });
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [in_index],
    }))?;
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec();
    let blob = |data: &[u8]| Entry::File {
        path: format!("blobs/sha256/{}", &digest(data)["sha256:".len()..]),
        mode: 0o644,
        data: data.to_vec(),
    };
    let (manifest_digest, config_digest, layer_size) =
        (digest(&manifest), digest(&config), layer.len());
    let archive = tar(
        &[
            Entry::File {
                path: "oci-layout".into(),
                mode: 0o644,
                data: layout,
            },
            Entry::File {
                path: "index.json".into(),
                mode: 0o644,
                data: index,
            },
            Entry::Dir {
                path: "blobs".into(),
                mode: 0o755,
            },
            Entry::Dir {
                path: "blobs/sha256".into(),
                mode: 0o755,
            },
            blob(&config),
            blob(&manifest),
            blob(&layer),
        ],
        mtime,
    )?;
    Ok(Image {
        archive,
        manifest_digest,
        config_digest,
        layer_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-oci-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn spec() -> ImageSpec {
        ImageSpec {
            reference: "docker.io/library/t:1".into(),
            entrypoint: vec!["/usr/bin/t".into()],
            cmd: vec!["run".into()],
            env: vec!["PATH=/usr/bin".into()],
            labels: [("org.opencontainers.image.title".to_owned(), "t".to_owned())].into(),
            created: "1970-01-01T00:00:00Z".into(),
        }
    }

    fn rootfs() -> Vec<Entry> {
        vec![
            Entry::File {
                path: "usr/bin/t".into(),
                mode: 0o755,
                data: b"#!/bin/true\n".repeat(100),
            },
            Entry::Dir {
                path: "usr".into(),
                mode: 0o755,
            },
            Entry::Dir {
                path: "usr/bin".into(),
                mode: 0o755,
            },
            Entry::Dir {
                path: "tmp".into(),
                mode: 0o1777,
            },
        ]
    }

    /// GNU tar, not our code, reads the archive back: names, kinds, modes, owners, sizes and
    /// times, in sorted order, and the file's bytes.
    #[test]
    fn gnu_tar_reads_the_layer_as_written() {
        let dir = scratch("tar");
        let path = dir.join("layer.tar");
        std::fs::write(&path, tar(&rootfs(), 1_700_000_000).unwrap()).unwrap();
        let out = Command::new("tar")
            .args([
                "--list",
                "--verbose",
                "--numeric-owner",
                "--full-time",
                "-f",
            ])
            .arg(&path)
            .env("TZ", "UTC")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8(out.stdout).unwrap();
        let rows: Vec<Vec<&str>> = listing
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let names: Vec<&str> = rows.iter().map(|r| r[5]).collect();
        assert_eq!(
            names,
            ["tmp/", "usr/", "usr/bin/", "usr/bin/t"],
            "{listing}"
        );
        assert_eq!(rows[0][0], "drwxrwxrwt", "{listing}");
        assert_eq!(rows[3][0], "-rwxr-xr-x", "{listing}");
        assert!(rows.iter().all(|r| r[1] == "0/0"), "{listing}");
        assert_eq!(rows[3][2], "1200", "{listing}");
        assert!(
            rows.iter()
                .all(|r| r[3] == "2023-11-14" && r[4] == "22:13:20"),
            "{listing}"
        );
        let data = Command::new("tar")
            .args(["-xOf"])
            .arg(&path)
            .arg("usr/bin/t")
            .output()
            .unwrap();
        assert_eq!(data.stdout, b"#!/bin/true\n".repeat(100));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_paths_are_refused() {
        for path in ["/abs", "a/../b", &"x".repeat(101)] {
            let e = Entry::File {
                path: path.into(),
                mode: 0o644,
                data: vec![],
            };
            assert!(tar(&[e], 0).is_err(), "{path}");
        }
    }

    #[test]
    fn equal_inputs_give_equal_archives() {
        let a = image(&spec(), &rootfs(), 0).unwrap();
        let mut shuffled = rootfs();
        shuffled.reverse();
        let b = image(&spec(), &shuffled, 0).unwrap();
        assert_eq!(a.archive, b.archive);
        assert_eq!(a.manifest_digest, b.manifest_digest);
        let mut other = spec();
        other.cmd = vec!["doctor".into()];
        let c = image(&other, &rootfs(), 0).unwrap();
        assert_ne!(a.manifest_digest, c.manifest_digest);
        assert_ne!(a.config_digest, c.config_digest);
    }

    /// The layout read back with GNU tar and sha256sum: every blob is named by the sha256 of
    /// its bytes, and the descriptors chain index -> manifest -> config and layer, whose
    /// uncompressed digest is the config's diff id.
    #[test]
    fn the_layout_is_consistent_by_independent_tools() {
        let img = image(&spec(), &rootfs(), 0).unwrap();
        let dir = scratch("layout");
        std::fs::write(dir.join("image.tar"), &img.archive).unwrap();
        let ok = Command::new("tar")
            .args(["-xf", "image.tar"])
            .current_dir(&dir)
            .status()
            .unwrap();
        assert!(ok.success());
        let sha = |p: &std::path::Path| -> String {
            let out = Command::new("sha256sum").arg(p).output().unwrap();
            format!(
                "sha256:{}",
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .next()
                    .unwrap()
            )
        };
        let blobs = dir.join("blobs/sha256");
        for f in std::fs::read_dir(&blobs).unwrap() {
            let p = f.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(sha(&p), format!("sha256:{name}"));
        }
        let read = |d: &str| -> Value {
            let p = blobs.join(&d["sha256:".len()..]);
            serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
        };
        let layout: Value =
            serde_json::from_slice(&std::fs::read(dir.join("oci-layout")).unwrap()).unwrap();
        assert_eq!(layout["imageLayoutVersion"], "1.0.0");
        let index: Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["digest"], img.manifest_digest.as_str());
        assert_eq!(
            m["annotations"]["org.opencontainers.image.ref.name"],
            "docker.io/library/t:1"
        );
        let manifest = read(m["digest"].as_str().unwrap());
        assert_eq!(manifest["mediaType"], MEDIA_MANIFEST);
        let config = read(manifest["config"]["digest"].as_str().unwrap());
        assert_eq!(manifest["config"]["digest"], img.config_digest.as_str());
        assert_eq!(config["config"]["Entrypoint"][0], "/usr/bin/t");
        let layer = blobs.join(&manifest["layers"][0]["digest"].as_str().unwrap()[7..]);
        let unzipped = Command::new("gzip")
            .args(["-dc"])
            .arg(&layer)
            .output()
            .unwrap();
        assert!(unzipped.status.success());
        std::fs::write(dir.join("layer.tar"), &unzipped.stdout).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0].as_str().unwrap(),
            sha(&dir.join("layer.tar"))
        );
        assert_eq!(
            manifest["layers"][0]["size"].as_u64().unwrap(),
            img.layer_size as u64
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
