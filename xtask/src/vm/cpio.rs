//! A writer for the `newc` cpio format the kernel unpacks as an initramfs.
//!
//! Written here rather than with `cpio -o` because the archive needs entries the build user may
//! not be able to create on disk (`/dev/console`, root ownership), and because building the tree
//! in memory avoids a staging directory of copies of every binary.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context as _, bail};

#[derive(Debug)]
enum Node {
    /// A directory and its permission bits (0o755 unless given, e.g. 0o1777 for `/tmp`).
    Dir(u32),
    File {
        data: Vec<u8>,
        mode: u32,
    },
    Symlink(String),
    CharDev {
        major: u32,
        minor: u32,
    },
}

/// The archive's tree, keyed by path without the leading `/`; a `BTreeMap` so that every directory
/// is written before what it contains, which the kernel's unpacker requires.
#[derive(Debug, Default)]
pub struct Archive {
    nodes: BTreeMap<String, Node>,
}

impl Archive {
    fn insert(&mut self, path: &str, node: Node) -> anyhow::Result<()> {
        let path = path.trim_start_matches('/').to_owned();
        if path.is_empty() {
            bail!("empty path in initramfs");
        }
        // Parent directories first, implicitly: callers name only what they put in.
        let mut parent = Path::new(&path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            let key = p.to_string_lossy().into_owned();
            match self.nodes.get(&key) {
                None => {
                    self.nodes.insert(key, Node::Dir(0o755));
                }
                Some(Node::Dir(_)) => {}
                Some(_) => bail!("{key} is not a directory in the initramfs (needed for {path})"),
            }
            parent = p.parent();
        }
        if let Some(old) = self.nodes.get(&path)
            && !matches!((old, &node), (Node::Dir(_), Node::Dir(_)))
        {
            // The same library reached through two tools is fine; two different things are not.
            if let (Node::File { data: a, .. }, Node::File { data: b, .. }) = (old, &node)
                && a == b
            {
                return Ok(());
            }
            bail!("{path} added twice to the initramfs");
        }
        self.nodes.insert(path, node);
        Ok(())
    }

    pub fn dir(&mut self, path: &str) -> anyhow::Result<()> {
        self.insert(path, Node::Dir(0o755))
    }

    /// A directory with these permission bits (a directory made before keeps its place and
    /// takes the mode).
    pub fn dir_mode(&mut self, path: &str, mode: u32) -> anyhow::Result<()> {
        self.insert(path, Node::Dir(mode))
    }

    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) -> anyhow::Result<()> {
        self.insert(path, Node::File { data, mode })
    }

    /// Copies a host file (following symlinks) into the archive, keeping its permission bits.
    pub fn copy(&mut self, path: &str, from: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let data = std::fs::read(from).with_context(|| format!("read {}", from.display()))?;
        let mode = std::fs::metadata(from)?.permissions().mode() & 0o7777;
        self.file(path, data, mode)
    }

    /// Drops an entry (and, for a directory, nothing below it: callers replace files).
    pub fn remove(&mut self, path: &str) {
        self.nodes.remove(path.trim_start_matches('/'));
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> anyhow::Result<()> {
        self.insert(path, Node::Symlink(target.to_owned()))
    }

    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) -> anyhow::Result<()> {
        self.insert(path, Node::CharDev { major, minor })
    }

    /// Writes the archive in `newc` format, everything owned by root.
    pub fn write(&self, out: &mut impl Write) -> anyhow::Result<()> {
        for (ino, (path, node)) in (1u32..).zip(&self.nodes) {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match node {
                Node::Dir(mode) => (0o040_000 | mode, &[], (0, 0)),
                Node::File { data, mode } => (0o100_000 | mode, data, (0, 0)),
                Node::Symlink(target) => (0o120_777, target.as_bytes(), (0, 0)),
                Node::CharDev { major, minor } => (0o020_600, &[], (*major, *minor)),
            };
            let nlink = if matches!(node, Node::Dir(_)) { 2 } else { 1 };
            write_entry(out, ino, mode, nlink, path, data, rdev)?;
        }
        write_entry(out, 0, 0, 1, "TRAILER!!!", &[], (0, 0))
    }

    /// Total size of the file contents, for the log.
    pub fn payload_bytes(&self) -> usize {
        self.nodes
            .values()
            .map(|n| {
                if let Node::File { data, .. } = n {
                    data.len()
                } else {
                    0
                }
            })
            .sum()
    }
}

fn write_entry(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    name: &str,
    data: &[u8],
    (rdev_major, rdev_minor): (u32, u32),
) -> anyhow::Result<()> {
    let namesize = name.len() + 1;
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime: fixed, so the same inputs give the same archive
        u32::try_from(data.len()).context("file too large for cpio")?,
        0, // dev major
        0, // dev minor
        rdev_major,
        rdev_minor,
        u32::try_from(namesize)?,
        0, // check
    ];
    let header: String = std::iter::once("070701".to_owned())
        .chain(fields.iter().map(|f| format!("{f:08x}")))
        .collect();
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    out.write_all(&[0; 3][..pad4(110 + namesize)])?;
    out.write_all(data)?;
    out.write_all(&[0; 3][..pad4(data.len())])?;
    Ok(())
}

/// Bytes of padding that bring `len` to a multiple of 4.
fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}
