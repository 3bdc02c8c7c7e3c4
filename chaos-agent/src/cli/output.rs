//! How the verbs print: `--output text|json` (and `--json`), the JSON documents the CLI adds to
//! the API's, and whether colour is allowed. docs/cli.md is the reference for users.
//!
//! With `--output json` a verb prints exactly one JSON document on stdout, and only when it
//! succeeded (or, exit code 1, with a report whose `errors` say what failed); everything for
//! people (progress, the `injected` and `summary:` lines, errors) goes to stderr. Where the agent
//! answers with JSON, the document is its answer, in the API's types (docs/api.md), so the two
//! agree by construction.

use std::io::IsTerminal;

use serde::Serialize;

use crate::engine::{FaultInfo, RevertReport};
use crate::faults::FaultSpec;

/// `--output`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Lines and tables for people.
    #[default]
    Text,
    /// One JSON document on stdout (docs/cli.md).
    Json,
}

/// The output flags of every verb that prints a result.
#[derive(Clone, Copy, Debug, Default, clap::Args)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// `text` for people, `json` for scripts: one JSON document on stdout, in the shape
    /// docs/cli.md documents (stable within v1; fields may be added).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = Format::Text)]
    pub output: Format,
    /// Shorthand for `--output json`.
    #[arg(long, conflicts_with = "output")]
    pub json: bool,
}

impl OutputArgs {
    /// JSON asked for (`--output json` or `--json`).
    #[must_use]
    pub fn is_json(self) -> bool {
        self.json || self.output == Format::Json
    }

    /// A line for people: on stdout in text, on stderr in JSON (stdout holds the document).
    pub fn say(self, line: &str) {
        if self.is_json() {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

/// Prints `v` as the verb's one JSON document (pretty, one trailing newline).
pub fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// The summary of an `inject` that waited for its fault's end (in the foreground, or `--wait`
/// with an agent): the fault as injected, how it ended, and how long it lasted.
#[derive(Clone, Debug, Serialize)]
pub struct InjectSummary<'a> {
    /// The fault when it was injected (the API's Fault: `POST /v1/faults`).
    pub fault: &'a FaultInfo,
    /// Its end, with the final counters or effects (the API's `RevertReport`).
    pub report: &'a RevertReport,
    /// Milliseconds from the fault's start to the end of its revert.
    pub elapsed_ms: u64,
}

/// `inject --dry-run --output json`.
#[derive(Clone, Debug, Serialize)]
pub struct DryRun<'a> {
    /// The spec as validated (defaults filled in), as the API and the journal take it.
    pub spec: &'a FaultSpec,
    /// One line per step the inject would take, in order.
    pub plan: &'a [String],
}

/// `doctor --output json`.
#[derive(Clone, Debug, Serialize)]
pub struct Doctor<'a> {
    /// One entry per capability, in the table's order.
    pub checks: &'a [crate::doctor::Check],
}

/// Whether colour may be written to `stream`: only on a terminal, and never when `NO_COLOR` is
/// set to anything but the empty string (no-color.org) or `TERM` is `dumb`.
#[must_use]
pub fn colour(stream: &impl IsTerminal) -> bool {
    colour_for(
        stream.is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
        std::env::var_os("TERM").as_deref(),
    )
}

fn colour_for(
    terminal: bool,
    no_color: Option<&std::ffi::OsStr>,
    term: Option<&std::ffi::OsStr>,
) -> bool {
    terminal && no_color.is_none_or(std::ffi::OsStr::is_empty) && term.is_none_or(|t| t != "dumb")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct T {
        #[command(flatten)]
        o: OutputArgs,
    }

    fn parse(args: &[&str]) -> Result<bool, clap::error::ErrorKind> {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .map(|t| t.o.is_json())
            .map_err(|e| e.kind())
    }

    #[test]
    fn json_is_asked_for_either_way_and_not_both_ways() {
        assert_eq!(parse(&[]), Ok(false));
        assert_eq!(parse(&["--output", "text"]), Ok(false));
        assert_eq!(parse(&["--output", "json"]), Ok(true));
        assert_eq!(parse(&["--output=json"]), Ok(true));
        assert_eq!(parse(&["--json"]), Ok(true));
        assert_eq!(
            parse(&["--json", "--output", "text"]),
            Err(clap::error::ErrorKind::ArgumentConflict)
        );
        assert_eq!(
            parse(&["--output", "yaml"]),
            Err(clap::error::ErrorKind::InvalidValue)
        );
    }

    #[test]
    fn colour_needs_a_terminal_and_no_no_color() {
        let os = |s: &str| std::ffi::OsString::from(s);
        let xterm = os("xterm-256color");
        assert!(colour_for(true, None, Some(&xterm)));
        assert!(colour_for(true, None, None));
        assert!(!colour_for(false, None, Some(&xterm)));
        assert!(!colour_for(true, Some(&os("1")), Some(&xterm)));
        // no-color.org: set and not empty. An empty one does not count.
        assert!(colour_for(true, Some(&os("")), Some(&xterm)));
        assert!(!colour_for(true, None, Some(&os("dumb"))));
    }
}
