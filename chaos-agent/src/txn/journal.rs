//! The crash journal: one JSON file per active fault under `<state-dir>/faults/`, rewritten
//! atomically (temp file, fsync, rename, fsync of the directory) every time an undo record is
//! added — always *before* the kernel change it reverses.
//!
//! A file there that cannot be replayed (not a regular file, unreadable, empty, not JSON, cut
//! short, or of a format version this agent does not know) is reported as a [`BadFile`] and,
//! by the reconciler, moved to `<state-dir>/quarantine/<name>.<unix-seconds>`: it never stops
//! the agent from starting, and it is kept for a human to look at.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::FaultId;
use super::undo::Undo;
use crate::faults::FaultSpec;
use crate::sys::{self, paths};

/// Current journal format version.
pub const VERSION: u32 = 1;
/// The oldest journal format version this agent replays (every version so far).
pub const MIN_VERSION: u32 = 1;
/// Journal files larger than this are not read: the largest entry (a fault at every limit, with
/// its undo records) is a few megabytes.
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// Where unusable journal files are moved, under the state dir.
pub const QUARANTINE_SUBDIR: &str = "quarantine";

/// The process that owns a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Process id.
    pub pid: u32,
    /// Start time of the process (ticks since boot), to tell a recycled pid apart.
    pub start_time: u64,
}

impl Owner {
    /// This process.
    #[must_use]
    pub fn current() -> Self {
        let pid = std::process::id();
        Self {
            pid,
            start_time: sys::process_start_time(pid).unwrap_or(0),
        }
    }

    /// Whether the owner is still running.
    #[must_use]
    pub fn alive(&self) -> bool {
        sys::process_alive(self.pid, self.start_time)
    }
}

/// What the journal holds for one fault.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Format version.
    pub version: u32,
    /// Fault id.
    pub id: FaultId,
    /// Owning process.
    pub owner: Owner,
    /// The fault as requested.
    pub spec: FaultSpec,
    /// Wall-clock creation time (ms since the epoch), for humans.
    pub created_unix_ms: u64,
    /// Wall-clock expiry (ms since the epoch), for humans.
    pub expires_unix_ms: u64,
    /// Undo records, in the order the changes were made.
    pub undo: Vec<Undo>,
}

/// Journal errors.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// I/O on a journal file.
    #[error("journal {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A journal file does not parse.
    #[error("journal {path}: {source}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Cause.
        source: serde_json::Error,
    },
}

/// A journal file that cannot be replayed, and why (one line, for the log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadFile {
    /// The file.
    pub path: PathBuf,
    /// Why it cannot be replayed.
    pub why: String,
    /// The process named in a file of an unknown version, if it names one the usual way: the
    /// journal of a newer agent that is still running must be left alone.
    pub owner: Option<Owner>,
}

/// The journal directory.
#[derive(Clone, Debug)]
pub struct Journal {
    dir: PathBuf,
    owned: PathBuf,
    quarantine: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Journal {
    /// Opens (creating, mode 0700) the journal under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let dir = state_dir.join(paths::JOURNAL_SUBDIR);
        let owned = state_dir.join("owned");
        for d in [&dir, &owned] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(io_err(d))?;
        }
        Ok(Self {
            dir,
            owned,
            quarantine: state_dir.join(QUARANTINE_SUBDIR),
        })
    }

    fn path(&self, id: FaultId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes (or rewrites) an entry durably.
    pub fn write(&self, entry: &JournalEntry) -> Result<(), JournalError> {
        let path = self.path(entry.id);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(entry).map_err(|source| JournalError::Parse {
            path: path.clone(),
            source,
        })?;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(&bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Self::sync_dir(&self.dir)
    }

    fn sync_dir(dir: &Path) -> Result<(), JournalError> {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    }

    /// Removes an entry (the fault is fully reverted).
    pub fn remove(&self, id: &FaultId) -> Result<(), JournalError> {
        let path = self.path(*id);
        match fs::remove_file(&path) {
            Ok(()) => Self::sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(JournalError::Io { path, source }),
        }
    }

    /// Every entry on disk; a file that cannot be replayed is a [`BadFile`] (the others load
    /// all the same). Only a directory that cannot be listed is an error.
    pub fn load_all(&self) -> Result<Vec<Result<JournalEntry, BadFile>>, JournalError> {
        let mut out = Vec::new();
        for de in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let path = de.map_err(io_err(&self.dir))?.path();
            if path.extension().and_then(|e| e.to_str()) == Some("tmp") {
                // A write that never reached its rename: the previous version (if any) is current.
                let _ = fs::remove_file(&path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            out.push(load_file(&path));
        }
        Ok(out)
    }

    /// Moves a file that cannot be replayed to `<state-dir>/quarantine/<name>.<unix-seconds>`
    /// (`.1`, `.2`... if that name is taken), out of the way of every later start; returns the
    /// new path.
    pub fn quarantine(&self, path: &Path) -> Result<PathBuf, JournalError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.quarantine)
            .map_err(io_err(&self.quarantine))?;
        let name = path
            .file_name()
            .map_or_else(|| "journal".into(), std::ffi::OsStr::to_os_string);
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let target = (0u32..10_000)
            .map(|n| {
                let mut t = name.clone();
                t.push(if n == 0 {
                    format!(".{secs}")
                } else {
                    format!(".{secs}.{n}")
                });
                self.quarantine.join(t)
            })
            .find(|t| fs::symlink_metadata(t).is_err())
            .unwrap_or_else(|| self.quarantine.join(&name));
        fs::rename(path, &target).map_err(io_err(path))?;
        Self::sync_dir(&self.quarantine)?;
        Self::sync_dir(&self.dir)?;
        Ok(target)
    }

    fn marker(&self, kind: &str, key: &str) -> PathBuf {
        self.owned.join(format!("{kind}-{key}"))
    }

    /// Records durably that the agent created an object it may share between faults (a clsact
    /// qdisc): written before the object is created.
    pub fn mark_owned(&self, kind: &str, key: &str) -> Result<(), JournalError> {
        let p = self.marker(kind, key);
        File::create(&p)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&p))?;
        Self::sync_dir(&self.owned)
    }

    /// Whether the agent created the object.
    #[must_use]
    pub fn is_owned(&self, kind: &str, key: &str) -> bool {
        self.marker(kind, key).exists()
    }

    /// Forgets an ownership marker.
    pub fn unmark_owned(&self, kind: &str, key: &str) -> Result<(), JournalError> {
        let p = self.marker(kind, key);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(JournalError::Io { path: p, source }),
        }
    }

    /// Every ownership marker as (kind, key).
    #[must_use]
    pub fn owned_markers(&self) -> Vec<(String, String)> {
        fs::read_dir(&self.owned)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|de| {
                let name = de.file_name().into_string().ok()?;
                let (k, v) = name.split_once('-')?;
                Some((k.to_owned(), v.to_owned()))
            })
            .collect()
    }
}

/// What every journal version has: its version, and (so far) its owner.
#[derive(Deserialize)]
struct Header {
    version: u32,
    #[serde(default)]
    owner: Option<serde_json::Value>,
}

/// Reads one journal file, or says in one line why it cannot be replayed.
fn load_file(path: &Path) -> Result<JournalEntry, BadFile> {
    // serde's messages quote a field name or value as the file has it, newlines included.
    let bad = |why: String| BadFile {
        path: path.to_owned(),
        why: crate::spec::one_line(&why, 400),
        owner: None,
    };
    // The agent writes regular files only; anything else there is not one of its entries (and a
    // symbolic link is not followed).
    let meta = fs::symlink_metadata(path).map_err(|e| bad(format!("cannot be examined: {e}")))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        return Err(bad(if ft.is_dir() {
            "a directory, not a journal file"
        } else if ft.is_symlink() {
            "a symbolic link, not a journal file"
        } else {
            "not a regular file"
        }
        .to_owned()));
    }
    if meta.len() == 0 {
        return Err(bad("empty file".to_owned()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(bad(format!(
            "{} bytes, larger than any journal entry",
            meta.len()
        )));
    }
    let bytes = fs::read(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
    // The version first: a newer format need not parse as this one, and the message should say
    // that it is newer rather than which field it lacks.
    if let Ok(h) = serde_json::from_slice::<Header>(&bytes)
        && !(MIN_VERSION..=VERSION).contains(&h.version)
    {
        return Err(BadFile {
            path: path.to_owned(),
            why: format!(
                "format version {}, which this agent (versions {MIN_VERSION} to {VERSION}) cannot replay",
                h.version
            ),
            owner: h.owner.and_then(|o| serde_json::from_value(o).ok()),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        bad(match e.classify() {
            serde_json::error::Category::Eof => format!("truncated: {e}"),
            serde_json::error::Category::Syntax => format!("not JSON: {e}"),
            serde_json::error::Category::Data => format!("not a journal entry: {e}"),
            serde_json::error::Category::Io => e.to_string(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::tc::Hook;

    #[test]
    fn write_load_remove() {
        let dir = std::env::temp_dir().join(format!("chaos-journal-test-{}", std::process::id()));
        let j = Journal::open(&dir).unwrap();
        let spec: FaultSpec =
            serde_json::from_str(r#"{"ttl":"5s","loss":{"probability":0.5}}"#).unwrap();
        let mut e = JournalEntry {
            version: VERSION,
            id: FaultId::from_raw(0xabcd_0001),
            owner: Owner::current(),
            spec,
            created_unix_ms: 1,
            expires_unix_ms: 2,
            undo: vec![],
        };
        j.write(&e).unwrap();
        e.undo.push(Undo::NetlinkFilter {
            ifname: "eth0".into(),
            hook: Hook::Egress,
            priority: 1,
            handle: 2,
        });
        j.write(&e).unwrap();
        let all = j.load_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].as_ref().unwrap(), &e);
        assert!(e.owner.alive());
        j.remove(&e.id).unwrap();
        assert!(j.load_all().unwrap().is_empty());
        j.mark_owned("clsact", "eth0").unwrap();
        assert!(j.is_owned("clsact", "eth0"));
        assert_eq!(
            j.owned_markers(),
            vec![("clsact".to_owned(), "eth0".to_owned())]
        );
        j.unmark_owned("clsact", "eth0").unwrap();
        assert!(!j.is_owned("clsact", "eth0"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unusable_files_are_named_and_quarantined() {
        let dir = std::env::temp_dir().join(format!("chaos-journal-bad-{}", std::process::id()));
        let j = Journal::open(&dir).unwrap();
        let faults = dir.join(paths::JOURNAL_SUBDIR);
        let good = r#"{"version":1,"id":"f-0000000a","owner":{"pid":1,"start_time":1},"spec":{"ttl":"5s","loss":{"probability":0.5}},"created_unix_ms":1,"expires_unix_ms":2,"undo":[]}"#;
        let newer = good.replace(r#""version":1"#, r#""version":9"#);
        fs::write(faults.join("f-0000000a.json"), good).unwrap();
        fs::write(faults.join("f-00000001.json"), b"\xff\x00garbage").unwrap();
        fs::write(faults.join("f-00000002.json"), &good[..good.len() / 2]).unwrap();
        fs::write(faults.join("f-00000003.json"), newer).unwrap();
        fs::write(faults.join("f-00000004.json"), "").unwrap();
        fs::create_dir(faults.join("f-00000005.json")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", faults.join("f-00000006.json")).unwrap();
        let mut bad: Vec<BadFile> = j
            .load_all()
            .unwrap()
            .into_iter()
            .filter_map(|r| match r {
                Ok(e) => {
                    assert_eq!(e.id, FaultId::from_raw(0xa));
                    None
                }
                Err(b) => Some(b),
            })
            .collect();
        bad.sort_by(|a, b| a.path.cmp(&b.path));
        let why: Vec<&str> = bad.iter().map(|b| b.why.as_str()).collect();
        assert_eq!(why.len(), 6, "{why:?}");
        assert!(why[0].starts_with("not JSON: "), "{}", why[0]);
        assert!(why[1].starts_with("truncated: EOF"), "{}", why[1]);
        assert_eq!(
            why[2],
            "format version 9, which this agent (versions 1 to 1) cannot replay"
        );
        assert_eq!(
            bad[2].owner,
            Some(Owner {
                pid: 1,
                start_time: 1
            })
        );
        assert_eq!(why[3], "empty file");
        assert_eq!(why[4], "a directory, not a journal file");
        assert_eq!(why[5], "a symbolic link, not a journal file");
        for b in &bad {
            let to = j.quarantine(&b.path).unwrap();
            let name = to.file_name().unwrap().to_str().unwrap().to_owned();
            let stem = b.path.file_name().unwrap().to_str().unwrap();
            assert!(
                name.strip_prefix(stem)
                    .and_then(|t| t.strip_prefix('.'))
                    .is_some_and(|t| t.chars().all(|c| c.is_ascii_digit())),
                "{name}"
            );
            assert!(fs::symlink_metadata(&b.path).is_err(), "moved away");
        }
        // A reason is one line, whatever the file quotes.
        fs::write(
            faults.join("f-00000008.json"),
            good.replace(r#""ttl":"5s""#, r#""ttl":"5s","a\nb":1"#),
        )
        .unwrap();
        let why = j
            .load_all()
            .unwrap()
            .into_iter()
            .find_map(Result::err)
            .expect("refused")
            .why;
        assert!(
            why.contains(r"unknown field `a\nb`") && !why.contains('\n'),
            "{why}"
        );
        j.quarantine(&faults.join("f-00000008.json")).unwrap();
        // The same name again in the same second gets a suffix instead of replacing the first.
        fs::write(faults.join("f-00000004.json"), "").unwrap();
        let again = j.quarantine(&faults.join("f-00000004.json")).unwrap();
        assert_eq!(
            fs::read_dir(dir.join(QUARANTINE_SUBDIR)).unwrap().count(),
            8,
            "{again:?}"
        );
        assert_eq!(
            j.load_all().unwrap().len(),
            1,
            "only the good entry is left"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
