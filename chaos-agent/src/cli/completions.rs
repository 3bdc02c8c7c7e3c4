//! `chaos-agent completions SHELL` and the hidden `chaos-agent manpages DIR`: shell completions
//! and man pages generated from the clap definitions, so that they never drift from the flags
//! the binary accepts. The Debian package (`cargo xtask package`) ships both.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::CommandFactory as _;

use super::Cli;

/// `completions` arguments.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to print the completion script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `manpages` arguments.
#[derive(Debug, clap::Args)]
pub struct ManpagesArgs {
    /// Where the pages go (created if missing): `chaos-agent.1`, and one page per subcommand,
    /// `chaos-agent-inject.1`, `chaos-agent-experiment-run.1`, ...
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// The binary's name, as the shells and `man` know it.
const NAME: &str = "chaos-agent";

/// Prints the completion script of `args.shell` on stdout.
pub(super) fn completions(args: &CompletionsArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), NAME, &mut script);
    if args.shell == clap_complete::Shell::Bash {
        script = fix_bash(&String::from_utf8(script)?).into_bytes();
    }
    std::io::stdout()
        .lock()
        .write_all(&script)
        .context("write the completion script")?;
    Ok(ExitCode::SUCCESS)
}

/// `clap_complete` 4.6's bash script names the state of a subcommand `chaos__agent__subcmd__inject`
/// where it tracks the words typed, but `chaos__subcmd__agent__subcmd__inject` in the `case`
/// that completes its flags (the arm escapes the binary name's `-` as a subcommand separator),
/// so no flag of any subcommand completed. Spelling the arms as the tracking does fixes it; the
/// completions test (`tests/completions.rs`) proves it in bash.
fn fix_bash(script: &str) -> String {
    let wrong = NAME.replace('-', "__subcmd__");
    let right = NAME.replace('-', "__");
    script.replace(&format!("{wrong}__subcmd__"), &format!("{right}__subcmd__"))
}

/// Writes one man page per visible (sub)command into `args.dir` and prints their paths.
pub(super) fn manpages(args: &ManpagesArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    // clap_mangen names a subcommand's page after its display name (`chaos-agent-inject`), which
    // `build` sets from the parent's; the help subcommand would get a page of its own.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_pages(&cmd, &args.dir, &mut written)?;
    for page in written {
        println!("{}", page.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn write_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone())
        .source(format!("{NAME} {}", env!("CARGO_PKG_VERSION")))
        .manual("chaos-agent manual");
    let path = man
        .generate_to(dir)
        .with_context(|| format!("write the man page of `{}`", man.get_filename()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bash_flag_arms_are_named_as_the_tracked_state() {
        let mut script = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            NAME,
            &mut script,
        );
        let fixed = fix_bash(&String::from_utf8(script).expect("utf-8"));
        assert!(
            !fixed.contains("chaos__subcmd__agent"),
            "an arm left unfixed"
        );
        // Each state the word loop sets has its arm.
        assert!(fixed.contains("cmd=\"chaos__agent__subcmd__inject\""));
        assert!(fixed.contains("\n        chaos__agent__subcmd__inject)\n"));
    }

    #[test]
    fn one_page_per_visible_subcommand_and_none_for_hidden_ones() {
        let dir = std::env::temp_dir().join(format!("chaos-manpages-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        manpages(&ManpagesArgs { dir: dir.clone() }).expect("pages");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let _ = std::fs::remove_dir_all(&dir);
        for want in [
            "chaos-agent.1",
            "chaos-agent-inject.1",
            "chaos-agent-experiment-run.1",
            "chaos-agent-completions.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        for hidden in ["stress-worker", "manpages", "help"] {
            assert!(
                !names.iter().any(|n| n.contains(hidden)),
                "a page for {hidden}: {names:?}"
            );
        }
    }
}
