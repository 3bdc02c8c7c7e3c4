//! A journal file as the agent reads it at start-up and in `cleanup`
//! (`txn::journal::Journal::load_all`, one `<state-dir>/faults/<id>.json`): the input is the
//! file. Reading never fails for the directory's sake; a file is refused (in one line, naming
//! the file) exactly when serde_json refuses it or its version is one this agent cannot replay;
//! an entry that loads serialises (as `Journal::write` does)
//! back to an entry equal to it; its spec keeps the invariants of any spec, its undo records
//! describe themselves, and a qdisc snapshot in them keeps the invariants of any dumped tree.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use chaos_agent::txn::journal::{Journal, JournalEntry, MIN_VERSION, VERSION};
use chaos_agent::txn::undo::Undo;
use libfuzzer_sys::fuzz_target;

struct Dir {
    journal: Journal,
    file: PathBuf,
}

extern "C" fn remove_dir() {
    if let Some(d) = DIR.get()
        && let Some(state) = d.file.parent().and_then(|p| p.parent())
    {
        let _ = std::fs::remove_dir_all(state);
    }
}

static DIR: OnceLock<Dir> = OnceLock::new();

fn dir() -> &'static Dir {
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let state = base.join(format!("chaos-fuzz-journal-{}", std::process::id()));
        let journal = Journal::open(&state).expect("open the journal");
        // SAFETY: registering a plain function that only removes our own directory.
        unsafe { libc::atexit(remove_dir) };
        Dir {
            journal,
            file: state
                .join(chaos_agent::sys::paths::JOURNAL_SUBDIR)
                .join("f-0000002a.json"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let d = dir();
    std::fs::write(&d.file, data).expect("write the journal file");
    let all = d
        .journal
        .load_all()
        .expect("the journal directory is readable");
    assert_eq!(all.len(), 1, "one file, one result");
    let plain = serde_json::from_slice::<JournalEntry>(data).ok();
    let entry = match all.into_iter().next() {
        Some(Ok(entry)) => entry,
        Some(Err(bad)) => {
            assert_eq!(bad.path, d.file);
            chaos_agent_fuzz::assert_one_line(&bad.why);
            // Refused although it parses: only for a version this agent cannot replay.
            if let Some(e) = plain {
                assert!(!(MIN_VERSION..=VERSION).contains(&e.version), "{}", bad.why);
            }
            return;
        }
        None => unreachable!(),
    };
    assert_eq!(
        plain.as_ref(),
        Some(&entry),
        "load_all and serde_json disagree"
    );
    assert!((MIN_VERSION..=VERSION).contains(&entry.version));
    chaos_agent_fuzz::assert_json_round_trip(&entry, "journal entry");
    let _ = entry.id.to_string();
    chaos_agent_fuzz::spec::check(&entry.spec);
    for u in &entry.undo {
        let _ = (u.kind(), u.describe());
        if let Undo::RestoreQdisc { tree, .. } = u {
            chaos_agent_fuzz::tree::check(tree);
        }
    }
});
