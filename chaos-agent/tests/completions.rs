//! Shell completions and man pages (issue 13): each script that `chaos-agent completions SHELL`
//! prints is loaded the way the Debian package installs it, into the real shell, which is asked
//! to complete `chaos-agent inj` (`inject`) and `chaos-agent inject --dire` (`--direction`); a
//! page from `chaos-agent manpages DIR` is rendered by `man -l`.
//!
//! The judges are the shells (bash's programmable completion, zsh's completion system through a
//! pseudo-terminal, fish's `complete -C`) and man-db, never our code. Each shell runs under
//! `timeout`, so a completion that hangs fails instead of holding the suite. No kernel is
//! involved: these are host tests (`HOST_ONLY` in `xtask/src/vm/lanes.rs`); the guest has no
//! shells but busybox's. A missing shell skips, except where the host profile requires it
//! (`CHAOS_REQUIRE=host` in CI, where `cargo xtask setup` installs them).
#![allow(
    clippy::missing_panics_doc,
    reason = "test helpers panic with context by design"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chaos_testing::{Feature, require, unique_name};

/// The longest a shell may take to load a script and complete one word.
const SHELL_LIMIT: &str = "60";

fn agent() -> PathBuf {
    chaos_testing::agent_bin(env!("CARGO_BIN_EXE_chaos-agent"))
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique_name("cmpl"));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `chaos-agent completions SHELL` written to `path`.
fn write_script(shell: &str, path: &Path) {
    let out = Command::new(agent())
        .args(["completions", shell])
        .output()
        .expect("spawn chaos-agent completions");
    assert!(
        out.status.success() && !out.stdout.is_empty(),
        "completions {shell}: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(path, &out.stdout).expect("write script");
}

/// Runs `program args` under `timeout` and returns its output; panics unless it succeeded.
fn run_limited(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = Command::new("timeout")
        .arg(SHELL_LIMIT)
        .arg(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): stdout {} stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The candidates a shell printed, one a line, each cut at its first tab or space (fish and the
/// zsh capture print a description after the word).
fn candidates(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.trim_end_matches('\r')
                .split(['\t', ' '])
                .next()
                .map(str::to_owned)
        })
        .filter(|w| !w.is_empty())
        .collect()
}

fn assert_completes(shell: &str, line: &str, got: &[String], want: &str) {
    assert!(
        got.iter().any(|c| c == want),
        "{shell}: `{line}<TAB>` offered {got:?}, not {want}"
    );
}

#[test]
fn bash_completion_completes_subcommands_and_flags() {
    if !require(
        "bash_completion_completes_subcommands_and_flags",
        Feature::Tool("bash"),
    ) {
        return;
    }
    let dir = Scratch::new();
    let script = dir.0.join("chaos-agent.bash");
    write_script("bash", &script);
    // What bash-completion does on <TAB>: the function that `complete -F` registered for the
    // command, called with COMP_WORDS/COMP_CWORD set and (command, current word, previous word).
    let complete = |words: &[&str]| -> Vec<String> {
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let body = format!(
            r#"set -e
source "$1"
spec=$(complete -p chaos-agent)
fn=$(printf '%s\n' "$spec" | sed -nE 's/.* -F ([^ ]+) .*/\1/p')
[ -n "$fn" ] || {{ echo "no -F function in: $spec" >&2; exit 3; }}
COMP_WORDS=({words})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="${{COMP_WORDS[*]}}"
COMP_POINT=${{#COMP_LINE}}
"$fn" chaos-agent "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}"
"#,
            words = quoted.join(" ")
        );
        let script = script.to_str().expect("utf-8 path");
        candidates(&run_limited(
            "bash",
            &["--norc", "--noprofile", "-c", &body, "bash", script],
            &[],
        ))
    };
    let got = complete(&["chaos-agent", "inj"]);
    assert_completes("bash", "chaos-agent inj", &got, "inject");
    assert_eq!(got, ["inject"], "bash: only `inject` starts with `inj`");
    let got = complete(&["chaos-agent", "inject", "--dire"]);
    assert_completes("bash", "chaos-agent inject --dire", &got, "--direction");
}

#[test]
fn fish_completion_completes_subcommands_and_flags() {
    if !require(
        "fish_completion_completes_subcommands_and_flags",
        Feature::Tool("fish"),
    ) {
        return;
    }
    let dir = Scratch::new();
    // Where the package puts it; fish loads vendor_completions.d lazily, `source` is the same.
    let script = dir.0.join("chaos-agent.fish");
    write_script("fish", &script);
    let complete = |line: &str| -> Vec<String> {
        let body = format!("source $argv[1]; and complete -C '{line}'");
        let script = script.to_str().expect("utf-8 path");
        // fish wants a writable home for its history and universal variables.
        let home = dir.0.to_str().expect("utf-8 path");
        candidates(&run_limited(
            "fish",
            &["--no-config", "-c", &body, script],
            &[
                ("HOME", home),
                ("XDG_CONFIG_HOME", home),
                ("XDG_DATA_HOME", home),
            ],
        ))
    };
    let got = complete("chaos-agent inj");
    assert_completes("fish", "chaos-agent inj", &got, "inject");
    let got = complete("chaos-agent inject --dire");
    assert_completes("fish", "chaos-agent inject --dire", &got, "--direction");
}

/// Drives an interactive `zsh -f` through `zsh/zpty`: compinit with the script's directory on
/// `fpath` (as `/usr/share/zsh/vendor-completions` is), then LINE and a TAB. `compadd` is
/// wrapped so that every match the completion system adds is printed as `MATCH:<word>`, and
/// the completion's post-hook prints `COMPDONE` and exits the inner shell: the outer loop reads
/// until then (the pattern idiom of `zpty -r`), under `timeout`.
const ZSH_DRIVER: &str = r#"
zmodload zsh/zpty || exit 3
fpath_dir=$1 line=$2
zpty z zsh -f -i
zpty -w z "PROMPT= RPROMPT= PS2="
zpty -w z "fpath=(${(q)fpath_dir} \$fpath); autoload -Uz compinit; compinit -u -D"
zpty -w z 'compadd() { local -a __m; builtin compadd -A __m "$@"; local r=$?; local w; for w in $__m; do print -r -- "MATCH:$w"; done; builtin compadd "$@"; return r }'
zpty -w z 'done-hook() { print -r -- COMPDONE; exit }; comppostfuncs=(done-hook)'
zpty -w z 'bindkey "^I" complete-word; print -r -- READY'
zpty -r z out '*READY*' || exit 4
zpty -w -n z "$line"$'\t'
zpty -r z out '*COMPDONE*' || exit 5
print -r -- "$out" | tr -d '\r' | sed -n 's/.*MATCH:\([^[:space:]]*\).*/\1/p'
"#;

#[test]
fn zsh_completion_completes_subcommands_and_flags() {
    if !require(
        "zsh_completion_completes_subcommands_and_flags",
        Feature::Tool("zsh"),
    ) {
        return;
    }
    let dir = Scratch::new();
    // The package installs it as /usr/share/zsh/vendor-completions/_chaos-agent (`#compdef`).
    write_script("zsh", &dir.0.join("_chaos-agent"));
    let complete = |line: &str| -> Vec<String> {
        let fpath = dir.0.to_str().expect("utf-8 path");
        candidates(&run_limited(
            "zsh",
            &["-f", "-c", ZSH_DRIVER, "zsh", fpath, line],
            &[("HOME", fpath), ("TERM", "dumb")],
        ))
    };
    let got = complete("chaos-agent inj");
    assert_completes("zsh", "chaos-agent inj", &got, "inject");
    let got = complete("chaos-agent inject --dire");
    assert_completes("zsh", "chaos-agent inject --dire", &got, "--direction");
}

#[test]
fn man_renders_the_generated_pages() {
    if !require("man_renders_the_generated_pages", Feature::Tool("man")) {
        return;
    }
    let dir = Scratch::new();
    let out = Command::new(agent())
        .arg("manpages")
        .arg(&dir.0)
        .output()
        .expect("spawn chaos-agent manpages");
    assert!(out.status.success(), "manpages: {out:?}");
    let page = dir.0.join("chaos-agent-inject.1");
    let page = page.to_str().expect("utf-8 path");
    let out = run_limited(
        "man",
        &["-l", page],
        &[("MANWIDTH", "80"), ("MAN_KEEP_FORMATTING", "")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // NAME, SYNOPSIS and an option with its help, as man-db rendered them (no formatting: not a
    // terminal; justified, hence the words compared without their spacing).
    let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("NAME chaos-agent-inject - Inject a fault"),
        "{text}"
    );
    assert!(text.contains("SYNOPSIS"), "{text}");
    assert!(text.contains("--direction"), "{text}");
    assert!(
        text.lines().all(|l| l.chars().count() <= 80),
        "MANWIDTH=80 not honoured:\n{text}"
    );
    // Every page renders without a groff warning.
    for entry in std::fs::read_dir(&dir.0).expect("read pages") {
        let path = entry.expect("entry").path();
        let out = run_limited(
            "man",
            &["--warnings", "-l", path.to_str().expect("utf-8")],
            &[("MANWIDTH", "80")],
        );
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(warnings.trim().is_empty(), "{}: {warnings}", path.display());
    }
}
