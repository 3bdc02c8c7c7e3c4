//! `chaos-agent cleanup`: offline reconciliation.

use std::path::Path;
use std::process::ExitCode;

use super::CleanupArgs;
use crate::engine::reconcile;
use crate::txn::journal::Journal;
use crate::txn::undo::UndoCtx;

pub(super) fn run(state_dir: &Path, args: &CleanupArgs) -> anyhow::Result<ExitCode> {
    super::preflight()?;
    let rt = super::runtime()?;
    let report = rt.block_on(async {
        let journal = Journal::open(state_dir)?;
        let tc = crate::kernel::tc::Tc::new()?;
        anyhow::Ok(
            reconcile::run(&UndoCtx {
                journal,
                tc,
                dp: None,
            })
            .await,
        )
    })?;
    if args.output.is_json() {
        super::output::print_json(&report)?;
    } else {
        let kinds: Vec<String> = report
            .removed_by_kind
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        println!(
            "cleanup: removed {} object(s){}; replayed {} journal(s) of dead agents; {} fault(s) of a live agent left alone",
            report.removed(),
            if kinds.is_empty() {
                String::new()
            } else {
                format!(" ({})", kinds.join(", "))
            },
            report.journals_replayed,
            report.live_skipped
        );
        if !report.sweep_skipped_for.is_empty() {
            println!(
                "cleanup: other chaos-agent processes are running (pids {:?}): removed only what dead agents journaled",
                report.sweep_skipped_for
            );
        }
        for e in &report.errors {
            eprintln!("cleanup: {e}");
        }
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        super::Exit::Failed.into()
    })
}
