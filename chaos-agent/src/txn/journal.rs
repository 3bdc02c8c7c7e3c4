//! The crash journal: one JSON file per active fault under `<state-dir>/faults/`, rewritten
//! atomically (temp file, fsync, rename, fsync of the directory) every time an undo record is
//! added — always *before* the kernel change it reverses.

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

/// The journal directory.
#[derive(Clone, Debug)]
pub struct Journal {
    dir: PathBuf,
    owned: PathBuf,
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
        Ok(Self { dir, owned })
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

    /// Every entry on disk, with parse failures reported per file.
    pub fn load_all(&self) -> Result<Vec<Result<JournalEntry, JournalError>>, JournalError> {
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
            out.push(fs::read(&path).map_err(io_err(&path)).and_then(|b| {
                serde_json::from_slice(&b).map_err(|source| JournalError::Parse {
                    path: path.clone(),
                    source,
                })
            }));
        }
        Ok(out)
    }

    /// Removes a journal file by path (used for unparsable files after reporting them).
    pub fn remove_path(&self, path: &Path) -> Result<(), JournalError> {
        fs::remove_file(path).map_err(io_err(path))
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
}
