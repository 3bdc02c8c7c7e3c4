//! `cargo xtask test` (the CI entry point) and `cargo xtask lint`.
//!
//! Test runs are separate cargo invocations so that privileged integration tests, which share
//! one kernel, run one at a time, while unit tests keep their default parallelism. libtest's
//! `test result:` lines and the VM runner's `vm: N passed, N failed` line are added up into the
//! final `N passed, N failed` line that CI reads.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{capture, cargo, display};

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Skip the QEMU tests (`cargo xtask vm-test`).
    #[arg(long)]
    no_vm: bool,
    /// Skip `cargo xtask setup` (the machine is known to be ready).
    #[arg(long)]
    no_setup: bool,
}

/// Counts of one step (or of all of them).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Self) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.ignored += o.ignored;
    }
}

/// One line of the final summary table.
#[derive(Debug)]
struct Step {
    name: String,
    tally: Tally,
    ok: bool,
    note: String,
    took: Duration,
}

/// Parses libtest's `test result: ok. 3 passed; 1 failed; 2 ignored; 0 measured; ...`.
fn parse_libtest(line: &str) -> Option<Tally> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let (_, counts) = rest.split_once(". ")?;
    let mut t = Tally::default();
    for part in counts.split(';') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => t.passed = n,
            "failed" => t.failed = n,
            "ignored" => t.ignored = n,
            _ => {}
        }
    }
    Some(t)
}

/// Parses the VM runner's verdict `vm: 12 passed, 0 failed` (`, 3 skipped` may follow).
fn parse_vm(line: &str) -> Option<Tally> {
    let rest = line.trim().strip_prefix("vm: ")?;
    let mut t = Tally::default();
    let mut seen = (false, false);
    for part in rest.split(',') {
        let mut words = part.split_whitespace();
        let n = words.next()?.parse::<u64>().ok()?;
        match words.next()? {
            "passed" => (t.passed, seen.0) = (n, true),
            "failed" => (t.failed, seen.1) = (n, true),
            "skipped" | "ignored" => t.ignored = n,
            _ => return None,
        }
    }
    (seen.0 && seen.1).then_some(t)
}

/// Runs a step, streaming its stdout (stderr is inherited) and adding up the result lines.
/// A step that fails without reporting a failed test counts as one failure, so that a broken
/// build can never end in "0 failed".
fn run_step(name: impl Into<String>, mut cmd: Command, parse: fn(&str) -> Option<Tally>) -> Step {
    let name = name.into();
    println!("\n==> {name}: {}", display(&cmd));
    let start = Instant::now();
    let result = (|| -> anyhow::Result<(Tally, std::process::ExitStatus)> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| display(&cmd))?;
        let mut tally = Tally::default();
        let stdout = child.stdout.take().context("child stdout")?;
        for line in BufReader::new(stdout).lines() {
            let line = line.context("read child stdout")?;
            println!("{line}");
            if let Some(t) = parse(&line) {
                tally += t;
            }
        }
        Ok((tally, child.wait()?))
    })();
    let took = start.elapsed();
    match result {
        Ok((mut tally, status)) => {
            let ok = status.success() && tally.failed == 0;
            let mut note = String::new();
            if !status.success() {
                note = status.to_string();
                if tally.failed == 0 {
                    tally.failed = 1;
                }
            }
            Step {
                name,
                tally,
                ok,
                note,
                took,
            }
        }
        Err(e) => Step {
            name,
            tally: Tally {
                failed: 1,
                ..Tally::default()
            },
            ok: false,
            note: format!("{e:#}"),
            took,
        },
    }
}

/// The integration test targets (`tests/*.rs`) of each workspace package, from cargo metadata.
fn integration_tests() -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let json = capture(cargo().args(["metadata", "--no-deps", "--format-version", "1"]))?;
    let meta: serde_json::Value = serde_json::from_str(&json).context("parse cargo metadata")?;
    let mut found = Vec::new();
    for pkg in meta["packages"].as_array().into_iter().flatten() {
        let Some(package) = pkg["name"].as_str() else {
            continue;
        };
        let mut names = Vec::new();
        for target in pkg["targets"].as_array().into_iter().flatten() {
            let is_test = target["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"));
            if let (true, Some(name)) = (is_test, target["name"].as_str()) {
                names.push(name.to_owned());
            }
        }
        if package != "chaos-ebpf" && !names.is_empty() {
            found.push((package.to_owned(), names));
        }
    }
    Ok(found)
}

/// chaos-ebpf builds only for bpfel-unknown-none (chaos-agent's build.rs builds it), so every
/// host cargo command leaves it out.
const EXCLUDE_EBPF: [&str; 3] = ["--workspace", "--exclude", "chaos-ebpf"];

/// Runs every step and prints the summary; the exit code says whether all passed. (Not an
/// `Err`: `main` would print it after the summary, and CI reads the summary as the last line.)
pub fn run(args: &TestArgs) -> ExitCode {
    let start = Instant::now();
    let steps = run_steps(args);
    summarize(&steps, args.no_vm, start.elapsed())
}

impl Step {
    /// A step that failed before it could report any test.
    fn failed(name: &str, error: &anyhow::Error, took: Duration) -> Self {
        Step {
            name: name.into(),
            tally: Tally {
                failed: 1,
                ..Tally::default()
            },
            ok: false,
            note: format!("{error:#}"),
            took,
        }
    }
}

fn run_steps(args: &TestArgs) -> Vec<Step> {
    let mut steps = Vec::new();

    if !args.no_setup {
        let s = Instant::now();
        match crate::setup::run(&crate::setup::SetupArgs::default()) {
            Ok(()) => steps.push(Step {
                name: "setup".into(),
                tally: Tally::default(),
                ok: true,
                note: String::new(),
                took: s.elapsed(),
            }),
            Err(e) => steps.push(Step::failed("setup", &e, s.elapsed())),
        }
    }

    let ready = steps.iter().all(|s| s.ok);
    if ready {
        let mut c = cargo();
        c.args(["build", "--all-targets"]).args(EXCLUDE_EBPF);
        steps.push(run_step("build", c, |_| None));
    }

    if steps.iter().all(|s| s.ok) {
        // Unit tests (src/) of every crate, with libtest's default parallelism.
        let mut c = cargo();
        c.args(["test", "--no-fail-fast", "--lib", "--bins"])
            .args(EXCLUDE_EBPF);
        steps.push(run_step("unit tests", c, parse_libtest));

        let mut c = cargo();
        c.args(["test", "--no-fail-fast", "--doc"])
            .args(EXCLUDE_EBPF);
        steps.push(run_step("doc tests", c, parse_libtest));

        // Integration tests are privileged: they attach programs, add qdiscs and create
        // namespaces on the one kernel they all share, so one test at a time. One invocation
        // over the workspace (not `-p chaos-agent`), so that features unify as in the build above
        // and nothing, above all the eBPF object, is rebuilt.
        match integration_tests() {
            Ok(packages) if packages.is_empty() => println!("\n==> no integration tests"),
            Ok(packages) => {
                let mut c = cargo();
                c.args(["test", "--no-fail-fast"]).args(EXCLUDE_EBPF);
                for (_, names) in &packages {
                    for n in names {
                        c.args(["--test", n]);
                    }
                }
                c.args(["--", "--test-threads=1"]);
                steps.push(run_step(
                    "integration tests (root, serial)",
                    c,
                    parse_libtest,
                ));
            }
            Err(e) => steps.push(Step::failed("list integration tests", &e, Duration::ZERO)),
        }

        if !args.no_vm {
            // Through cargo, not current_exe(): the workspace build above may have relinked
            // (replaced) this very binary, because features unify differently there.
            let mut c = cargo();
            c.args(["run", "--quiet", "--package", "xtask", "--", "vm-test"]);
            steps.push(run_step("vm tests (QEMU)", c, parse_vm));
        }
    }

    steps
}

/// Prints the table and the closing `N passed, N failed` line.
fn summarize(steps: &[Step], no_vm: bool, took: Duration) -> ExitCode {
    let mut total = Tally::default();
    println!("\n==> summary ({took:.0?})");
    println!(
        "{:<46} {:>7} {:>7} {:>8} {:>8}  note",
        "step", "passed", "failed", "ignored", "time"
    );
    for s in steps {
        total += s.tally;
        println!(
            "{:<46} {:>7} {:>7} {:>8} {:>7.1}s  {}{}",
            s.name,
            s.tally.passed,
            s.tally.failed,
            s.tally.ignored,
            s.took.as_secs_f64(),
            if s.ok { "ok" } else { "FAILED" },
            if s.note.is_empty() {
                String::new()
            } else {
                format!(": {}", s.note)
            },
        );
    }
    if no_vm {
        println!("(vm tests skipped: --no-vm)");
    }
    println!("{} ignored", total.ignored);
    println!("{} passed, {} failed", total.passed, total.failed);
    if total.failed > 0 || steps.iter().any(|s| !s.ok) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `cargo xtask lint`: clippy with warnings as errors and rustfmt --check. Kept out of `test` so
/// that CI judges behaviour, not style; run it before pushing.
pub fn lint() -> anyhow::Result<()> {
    crate::setup::run(&crate::setup::SetupArgs::default())?;
    let mut failed = Vec::new();
    let mut clippy = cargo();
    clippy
        .args(["clippy", "--all-targets"])
        .args(EXCLUDE_EBPF)
        .args(["--", "-D", "warnings"]);
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    for (name, mut c) in [("clippy", clippy), ("rustfmt", fmt)] {
        if let Err(e) = crate::exec(&mut c) {
            eprintln!("{name}: {e:#}");
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    println!("lint: clean");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_result_lines() {
        let t = parse_libtest(
            "test result: FAILED. 3 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s",
        );
        assert_eq!(
            t,
            Some(Tally {
                passed: 3,
                failed: 1,
                ignored: 2
            })
        );
        let t = parse_libtest(
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        );
        assert_eq!(t, Some(Tally::default()));
        assert_eq!(parse_libtest("test foo ... ok"), None);
    }

    #[test]
    fn parses_vm_verdict() {
        assert_eq!(
            parse_vm("vm: 12 passed, 1 failed"),
            Some(Tally {
                passed: 12,
                failed: 1,
                ignored: 0
            })
        );
        assert_eq!(
            parse_vm("vm: 5 passed, 0 failed, 2 skipped"),
            Some(Tally {
                passed: 5,
                failed: 0,
                ignored: 2
            })
        );
        assert_eq!(
            parse_vm("vm: 5 passed, 0 failed, 8 skipped (host-only)"),
            Some(Tally {
                passed: 5,
                failed: 0,
                ignored: 8
            })
        );
        assert_eq!(parse_vm("vm: booting kernel 6.1"), None);
        assert_eq!(parse_vm("12 passed, 1 failed"), None);
    }
}
