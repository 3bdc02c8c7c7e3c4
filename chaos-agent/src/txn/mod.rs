//! Every injection is a transaction: each kernel step is journaled with its undo first.
//!
//! This room sits below both the engine (which runs transactions: inject, revert, reconcile)
//! and the fault types (which record their steps), so neither imports the other's internals:
//! - [`journal`]: the durable per-fault files, written before each kernel change;
//! - [`undo`]: the undo records of every kernel mechanism, and how to run each one;
//! - [`Txn`]: one fault's apply, its undo list, and its rollback;
//! - [`FaultId`]: the id that names a fault in journals, APIs and kernel handles.

mod id;
pub mod journal;
pub mod undo;

pub use id::FaultId;

use journal::{Journal, JournalEntry, JournalError};
use undo::{Undo, UndoCtx};

/// The transaction of one fault being applied (and, once applied, its undo list).
#[derive(Debug)]
pub struct Txn {
    journal: Journal,
    entry: JournalEntry,
}

impl Txn {
    /// Starts a transaction: writes the entry (with an empty undo list) before anything else.
    pub fn begin(journal: Journal, entry: JournalEntry) -> Result<Self, JournalError> {
        journal.write(&entry)?;
        Ok(Self { journal, entry })
    }

    /// Records durably how to reverse the step the caller is about to take. Call this *before*
    /// changing the kernel; if the step then fails, [`Txn::rollback`] still runs this undo,
    /// which is harmless because undo records are idempotent.
    pub fn record(&mut self, undo: Undo) -> Result<(), JournalError> {
        self.entry.undo.push(undo);
        if let Err(e) = self.journal.write(&self.entry) {
            self.entry.undo.pop();
            return Err(e);
        }
        Ok(())
    }

    /// [`Txn::record`] for several steps about to be taken in this order, in one durable write
    /// (one fsync instead of one per step). Every undo is idempotent, so recording a step that
    /// then never happens (an earlier one failed) costs its rollback nothing.
    pub fn record_all(&mut self, undo: impl IntoIterator<Item = Undo>) -> Result<(), JournalError> {
        let before = self.entry.undo.len();
        self.entry.undo.extend(undo);
        if let Err(e) = self.journal.write(&self.entry) {
            self.entry.undo.truncate(before);
            return Err(e);
        }
        Ok(())
    }

    /// The journal this transaction writes to.
    #[must_use]
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The journal entry as it stands.
    #[must_use]
    pub fn entry(&self) -> &JournalEntry {
        &self.entry
    }

    /// Mutable access for updates that are not kernel steps (e.g. a new expiry).
    pub fn update(&mut self, f: impl FnOnce(&mut JournalEntry)) -> Result<(), JournalError> {
        f(&mut self.entry);
        self.journal.write(&self.entry)
    }

    /// Undoes every recorded step in reverse order and removes the journal entry if all undos
    /// succeeded (otherwise it stays for the reconciler). Returns (kinds removed, errors).
    pub async fn rollback(self, ctx: &UndoCtx) -> (Vec<&'static str>, Vec<String>) {
        let (removed, mut errors) = undo::run_reversed(&self.entry.undo, ctx).await;
        if errors.is_empty()
            && let Err(e) = self.journal.remove(&self.entry.id)
        {
            errors.push(e.to_string());
        }
        (removed, errors)
    }
}
