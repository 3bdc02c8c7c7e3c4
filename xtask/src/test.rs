//! `cargo xtask test` (the CI entry point) and `cargo xtask lint`.
//!
//! Test runs are separate cargo invocations so that privileged integration tests, which share
//! one kernel, run one at a time, while unit tests keep their default parallelism. libtest's
//! `test result:` lines and the VM runner's `vm: N passed, N failed, N skipped, N host-only`
//! line are added up into the final `N passed, N failed, N skipped` line that CI reads.
//!
//! Skips: libtest has no such outcome, so a test that skips (`chaos_testing::skip`) returns and
//! counts as passed there. Each step gets its own file in `CHAOS_SKIP_LOG`, where every skip
//! writes `binary::test: why`; the step's skips are subtracted from its passes, counted apart
//! and listed with their reasons. In CI (`CI` set) the tests run with `CHAOS_REQUIRE=host`, under
//! which a test whose feature the CI host's kernel must have fails instead of skipping.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{capture, cargo, display};

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Skip the QEMU tests (`cargo xtask vm-test` and `cargo xtask vm-systemd`).
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
    /// Tests that ran and skipped (`chaos_testing::skip`): not in `passed`.
    skipped: u64,
    /// libtest's `#[ignore]`d tests, and the VM's host-only tests (filtered out there, run on
    /// the host).
    ignored: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Self) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.skipped += o.skipped;
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
    skips: Vec<Skip>,
    /// Tests that went on without a part (`chaos_testing::skip_part`): among the passed.
    parts: Vec<Skip>,
}

/// A skipped test: (`binary::test`, why).
pub(crate) type Skip = (String, String);

/// The tests that skipped, and those that went on without a part.
pub(crate) type Skips = (Vec<Skip>, Vec<Skip>);

/// How a step's stdout is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// Nothing to count (a build).
    Nothing,
    /// libtest's `test result:` lines, and its `test NAME ... FAILED` lines.
    Libtest,
    /// The VM runner's closing `vm: ...` line (it has already taken its skips off its passes).
    Vm,
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

/// Parses the VM runner's closing line `vm: 12 passed, 0 failed, 3 skipped, 10 host-only`
/// (its passes exclude its skips; host-only tests were filtered out in the guest).
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
            "skipped" => t.skipped = n,
            "host-only" | "ignored" => t.ignored = n,
            _ => return None,
        }
    }
    (seen.0 && seen.1).then_some(t)
}

/// The name of the test a libtest line reports as failed (`test NAME ... FAILED`).
fn failed_test(line: &str) -> Option<&str> {
    let (name, outcome) = line.trim().strip_prefix("test ")?.split_once(" ... ")?;
    outcome.starts_with("FAILED").then_some(name)
}

/// Reads a `CHAOS_SKIP_LOG` file (see chaos-testing's `skip` and `skip_part`): the tests that
/// skipped (`skip binary::test: why`) and those that went on without a part
/// (`part binary::test: what: why`), each test once with its reasons joined; a test that
/// skipped is not also listed as partly skipped.
fn read_skips(path: &Path) -> Skips {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    parse_skips(text.lines())
}

/// [`read_skips`] of lines (also the VM guest's, without their `VM-SKIP `).
pub(crate) fn parse_skips<'a>(lines: impl Iterator<Item = &'a str>) -> Skips {
    let mut whole: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut parts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines {
        let (map, rest) = if let Some(r) = line.strip_prefix("skip ") {
            (&mut whole, r)
        } else if let Some(r) = line.strip_prefix("part ") {
            (&mut parts, r)
        } else {
            continue;
        };
        if let Some((name, why)) = rest.split_once(": ").filter(|(n, _)| !n.contains(' ')) {
            let reasons = map.entry(name.to_owned()).or_default();
            if !reasons.iter().any(|r| r == why) {
                reasons.push(why.trim().to_owned());
            }
        }
    }
    let join = |m: BTreeMap<String, Vec<String>>| -> Vec<Skip> {
        m.into_iter().map(|(n, why)| (n, why.join("; "))).collect()
    };
    parts.retain(|name, _| !whole.contains_key(name));
    (join(whole), join(parts))
}

/// Takes a libtest step's skips off its passes. A test that skipped and then failed is a
/// failure, not a skip; it is recognised by its name (the part after the binary's: cargo tells
/// which binary runs on stderr, which we do not read), so a skip of a same-named test in another
/// binary may go uncounted in a failed run, never the other way round.
fn apply_skips(tally: &mut Tally, skips: Vec<Skip>, failed: &BTreeSet<String>) -> Vec<Skip> {
    let skips: Vec<Skip> = skips
        .into_iter()
        .filter(|(name, _)| {
            let test = name.split_once("::").map_or(name.as_str(), |(_, t)| t);
            !failed.contains(test)
        })
        .collect();
    let n = (skips.len() as u64).min(tally.passed);
    tally.passed -= n;
    tally.skipped += n;
    skips
}

/// `cargo xtask ARGS` as a step: through cargo, not `current_exe()`, because the workspace build
/// may have relinked (replaced) this very binary, features unifying differently there.
fn xtask(args: &[&str]) -> Command {
    let mut c = cargo();
    c.args(["run", "--quiet", "--package", "xtask", "--"])
        .args(args);
    c
}

/// cargo's target directory.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| crate::workspace_root().join("target"), PathBuf::from)
}

/// Where a step's skips are written: `target/xtask/skips/<step>.log`, emptied first.
fn skip_log(step: &str) -> anyhow::Result<PathBuf> {
    let dir = target_dir().join("xtask").join("skips");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let slug: String = step
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let path = dir.join(format!("{slug}.log"));
    std::fs::write(&path, "").with_context(|| format!("truncate {}", path.display()))?;
    Ok(path)
}

/// Below this much free space a failed step is blamed on the disk in its note: a full disk fails
/// builds, unpacking and tests in ways that look like anything but a full disk.
const LOW_DISK: u64 = 1 << 30;

/// "only N MiB free on target/" when the build directory's file system is nearly full.
fn low_disk() -> Option<String> {
    let dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    let dir = if dir.exists() {
        dir
    } else {
        PathBuf::from(".")
    };
    let st = nix::sys::statvfs::statvfs(&dir).ok()?;
    let free = st.blocks_available() * st.fragment_size();
    (free < LOW_DISK).then(|| format!("only {} MiB free on {}", free >> 20, dir.display()))
}

/// Runs a step, streaming its stdout (stderr is inherited) and adding up the result lines.
/// A step that fails without reporting a failed test counts as one failure, so that a broken
/// build can never end in "0 failed".
/// How long a step's output may stay open after its process exited: a process still holding it
/// then was left behind by a test (a `sh -c '...; sleep 600'` whose shell alone was killed
/// kept the integration step waiting 600 s for EOF).
const AFTER_EXIT: Duration = Duration::from_secs(5);

/// Hands the step's output lines to `on_line` as they come, until EOF, or until
/// [`AFTER_EXIT`] after the child exited: then the processes still holding the pipe's write end
/// are killed and returned (`PID cmdline`), and the rest of the output is read.
fn read_until_exit(
    child: &mut std::process::Child,
    stdout: std::process::ChildStdout,
    mut on_line: impl FnMut(String),
) -> anyhow::Result<Vec<String>> {
    use std::os::fd::AsRawFd as _;
    use std::sync::mpsc::RecvTimeoutError;
    let pipe = std::fs::read_link(format!("/proc/self/fd/{}", stdout.as_raw_fd()))
        .context("the step's pipe")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut exited: Option<Instant> = None;
    let mut leaked = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => on_line(line.context("read child stdout")?),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if exited.is_none() && child.try_wait()?.is_some() {
            exited = Some(Instant::now());
        }
        if leaked.is_empty() && exited.is_some_and(|t| t.elapsed() > AFTER_EXIT) {
            leaked = kill_holders(&pipe);
            if leaked.is_empty() {
                // Nobody holds it, yet no EOF: do not wait on it for ever (the reader thread
                // is left blocked; the process ends soon).
                leaked.push(format!(
                    "(no holder of {} found, yet no EOF)",
                    pipe.display()
                ));
                break;
            }
        }
    }
    Ok(leaked)
}

/// Kills every other process whose stdout or stderr is `pipe` (`pipe:[INODE]`, as
/// `/proc/PID/fd` shows it) and returns them as `PID cmdline`.
fn kill_holders(pipe: &Path) -> Vec<String> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let holds = [1, 2]
            .iter()
            .any(|fd| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).is_ok_and(|l| l == pipe));
        if holds {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            // A pid gone since the scan is ESRCH, which changes nothing.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            out.push(format!("{pid} {}", cmd.trim()));
        }
    }
    out
}

fn run_step(name: impl Into<String>, mut cmd: Command, output: Output) -> Step {
    let name = name.into();
    println!("\n==> {name}: {}", display(&cmd));
    let start = Instant::now();
    let result = (|| -> anyhow::Result<(Tally, std::process::ExitStatus, Skips)> {
        let log = skip_log(&name)?;
        let mut child = cmd
            .env("CHAOS_SKIP_LOG", &log)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| display(&cmd))?;
        let mut tally = Tally::default();
        let mut failed = BTreeSet::new();
        let stdout = child.stdout.take().context("child stdout")?;
        let leaked = read_until_exit(&mut child, stdout, |line| {
            println!("{line}");
            match output {
                Output::Nothing => {}
                Output::Libtest => {
                    if let Some(t) = parse_libtest(&line) {
                        tally += t;
                    } else if let Some(test) = failed_test(&line) {
                        failed.insert(test.to_owned());
                    }
                }
                Output::Vm => {
                    if let Some(t) = parse_vm(&line) {
                        tally += t;
                    }
                }
            }
        })?;
        if !leaked.is_empty() {
            println!("==> {name}: processes outlived it, holding its output open (killed):");
            for l in &leaked {
                println!("  {l}");
            }
            tally.failed += 1;
        }
        let status = child.wait()?;
        let (mut skips, parts) = read_skips(&log);
        if output == Output::Libtest {
            skips = apply_skips(&mut tally, skips, &failed);
        }
        Ok((tally, status, (skips, parts)))
    })();
    let took = start.elapsed();
    match result {
        Ok((mut tally, status, (skips, parts))) => {
            let ok = status.success() && tally.failed == 0;
            let mut note = String::new();
            if !status.success() {
                note = status.to_string();
                if tally.failed == 0 {
                    tally.failed = 1;
                }
            }
            if !ok && let Some(low) = low_disk() {
                note = if note.is_empty() {
                    low
                } else {
                    format!("{note}; {low}")
                };
            }
            Step {
                name,
                tally,
                ok,
                note,
                took,
                skips,
                parts,
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
            skips: Vec::new(),
            parts: Vec::new(),
        },
    }
}

/// The feature rules the privileged tests run under (chaos-testing's `Rules`): what the caller
/// set in `CHAOS_REQUIRE`, else `host` in CI (`CI` set and not `false`/`0`), else none (a
/// missing feature skips). The VM guest always runs under `vm` (its `/init` sets it).
fn feature_rules() -> Option<String> {
    if let Ok(v) = std::env::var("CHAOS_REQUIRE") {
        return Some(v);
    }
    let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "false" | "0"));
    ci.then(|| "host".to_owned())
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

/// The variable that hands the image archive to the image tests (chaos-testing's `IMAGE_ENV`;
/// xtask depends on no workspace crate, so it is spelled here too).
const IMAGE_ENV: &str = "CHAOS_AGENT_IMAGE";

/// chaos-ebpf builds only for bpfel-unknown-none (chaos-agent's build.rs builds it), so every
/// host cargo command leaves it out.
const EXCLUDE_EBPF: [&str; 3] = ["--workspace", "--exclude", "chaos-ebpf"];

/// Runs every step and prints the summary; the exit code says whether all passed. (Not an
/// `Err`: `main` would print it after the summary, and CI reads the summary as the last line.)
pub fn run(args: &TestArgs) -> ExitCode {
    let start = Instant::now();
    let rules = feature_rules();
    let steps = run_steps(args, rules.as_deref());
    summarize(&steps, args.no_vm, rules.as_deref(), start.elapsed())
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
            skips: Vec::new(),
            parts: Vec::new(),
        }
    }
}

fn run_steps(args: &TestArgs, rules: Option<&str>) -> Vec<Step> {
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
                skips: Vec::new(),
                parts: Vec::new(),
            }),
            Err(e) => steps.push(Step::failed("setup", &e, s.elapsed())),
        }
    }

    let ready = steps.iter().all(|s| s.ok);
    if ready {
        let mut c = cargo();
        c.args(["build", "--all-targets"]).args(EXCLUDE_EBPF);
        steps.push(run_step("build", c, Output::Nothing));
    }

    if steps.iter().all(|s| s.ok) {
        // Unit tests (src/) of every crate, with libtest's default parallelism.
        let mut c = cargo();
        c.args(["test", "--no-fail-fast", "--lib", "--bins"])
            .args(EXCLUDE_EBPF);
        steps.push(run_step("unit tests", c, Output::Libtest));

        let mut c = cargo();
        c.args(["test", "--no-fail-fast", "--doc"])
            .args(EXCLUDE_EBPF);
        steps.push(run_step("doc tests", c, Output::Libtest));

        // Every fuzz target over its committed corpus and its regressions (the inputs that once
        // crashed it): seconds of running after a nightly build of about two minutes.
        let c = xtask(&["fuzz", "--replay"]);
        steps.push(run_step("fuzz replay", c, Output::Libtest));

        // The agent's OCI image, which the image tests load and run (tests never build). From
        // the debug musl binary: vm-test builds that very binary later (so it costs nothing
        // there), where the release build took 12 minutes of a busy 2-core machine, and the
        // tests judge the image and its manifests, not the optimiser. A failed build fails
        // this step, and the image tests then fail too in CI (their archive is required
        // there) or skip elsewhere.
        let image_step = run_step(
            "image (cargo xtask image --debug)",
            xtask(&["image", "--debug"]),
            Output::Nothing,
        );
        let image = image_step.ok.then(crate::image::archive_path);
        steps.push(image_step);

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
                if let Some(path) = &image {
                    c.env(IMAGE_ENV, path);
                }
                if let Some(rules) = rules {
                    c.env("CHAOS_REQUIRE", rules);
                }
                steps.push(run_step(
                    "integration tests (root, serial)",
                    c,
                    Output::Libtest,
                ));
            }
            Err(e) => steps.push(Step::failed("list integration tests", &e, Duration::ZERO)),
        }

        // SIGKILLs at random moments of inject, extend and stop, the host compared after each
        // restart or cleanup with what it was (the full 1,000 on demand: `cargo xtask torture`).
        let mut c = xtask(&[
            "torture",
            "--kills",
            "30",
            "--pressure-kills",
            "10",
            "--clients",
            "50",
            "--seconds",
            "10",
        ]);
        c.env("CHAOS_AGENT_BIN", target_dir().join("debug/chaos-agent"));
        steps.push(run_step(
            "torture (30 + 10 SIGKILLs, 50 clients)",
            c,
            Output::Libtest,
        ));

        if !args.no_vm {
            let c = xtask(&["vm-test"]);
            steps.push(run_step("vm tests (QEMU)", c, Output::Vm));
        }

        // The Debian package, linted, then (with the VM) installed and driven under a real
        // systemd. Both package the dev-profile musl build the VM tests just made: a release
        // build would add minutes of compiling to the suite (cargo-deb strips it either way).
        let c = xtask(&["package", "--dev"]);
        steps.push(run_step("package (cargo-deb, lintian)", c, Output::Nothing));
        if !args.no_vm {
            let c = xtask(&["vm-systemd", "--dev"]);
            steps.push(run_step("vm systemd (package + unit)", c, Output::Vm));
        }
    }

    steps
}

/// Prints the table, the skipped tests with their reasons, and the closing
/// `N passed, N failed, N skipped` line.
fn summarize(steps: &[Step], no_vm: bool, rules: Option<&str>, took: Duration) -> ExitCode {
    let mut total = Tally::default();
    println!("\n==> summary ({took:.0?})");
    println!(
        "{:<40} {:>7} {:>7} {:>8} {:>8} {:>8}  note",
        "step", "passed", "failed", "skipped", "ignored", "time"
    );
    for s in steps {
        total += s.tally;
        println!(
            "{:<40} {:>7} {:>7} {:>8} {:>8} {:>7.1}s  {}{}",
            s.name,
            s.tally.passed,
            s.tally.failed,
            s.tally.skipped,
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
        println!("(vm tests not run: --no-vm)");
    }
    match rules {
        Some(r) => println!(
            "feature rules on the host: CHAOS_REQUIRE={r} (a missing feature it requires fails)"
        ),
        None => println!(
            "feature rules on the host: none, a missing feature skips (CI=true: CHAOS_REQUIRE=host)"
        ),
    }
    let listed: usize = steps.iter().map(|s| s.skips.len()).sum();
    if listed > 0 {
        println!("skipped tests ({listed}):");
        for s in steps {
            for (test, why) in &s.skips {
                println!("  {:<18} {test}: {why}", short_step(&s.name));
            }
        }
    }
    let partly: usize = steps.iter().map(|s| s.parts.len()).sum();
    if partly > 0 {
        println!("partly skipped ({partly}, among the passed: the rest of each ran):");
        for s in steps {
            for (test, why) in &s.parts {
                println!("  {:<18} {test}: {why}", short_step(&s.name));
            }
        }
    }
    if total.ignored > 0 {
        println!("{} ignored", total.ignored);
    }
    println!(
        "{} passed, {} failed, {} skipped",
        total.passed, total.failed, total.skipped
    );
    if total.failed > 0 || steps.iter().any(|s| !s.ok) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The first word of a step's name, for the list of skips ("integration", "vm").
fn short_step(name: &str) -> &str {
    name.split_whitespace().next().unwrap_or(name)
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
                skipped: 0,
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
                ..Tally::default()
            })
        );
        assert_eq!(
            parse_vm("vm: 5 passed, 0 failed, 2 skipped, 10 host-only"),
            Some(Tally {
                passed: 5,
                failed: 0,
                skipped: 2,
                ignored: 10
            })
        );
        assert_eq!(parse_vm("vm: booting kernel 6.1"), None);
        assert_eq!(parse_vm("vm: SKIP loss::x: no tcx"), None);
        assert_eq!(parse_vm("12 passed, 1 failed"), None);
    }

    #[test]
    fn skips_come_off_the_passes_unless_the_test_failed() {
        let dir = std::env::temp_dir().join(format!("xtask-skips-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("step.log");
        std::fs::write(
            &log,
            "skip loss::sigkill_on_tcx: missing tcx links\n\
             skip kernel_features::tools: missing `ss` on PATH\n\
             skip kernel_features::tools: missing `iperf3` on PATH\n\
             skip kernel_features::tools: missing `ss` on PATH\n\
             skip netem::delay_x: missing the netem qdisc\n\
             part dns::a: the dig checks: dig is not installed\n\
             part dns::a: the dig checks: dig is not installed\n\
             part netem::delay_x: a part: of a test that skipped anyway\n\
             not a record\n",
        )
        .unwrap();
        let (skips, parts) = read_skips(&log);
        assert_eq!(
            parts,
            [(
                "dns::a".to_owned(),
                "the dig checks: dig is not installed".to_owned()
            )]
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(skips.len(), 3, "{skips:?}");
        assert_eq!(
            skips[0],
            (
                "kernel_features::tools".to_owned(),
                "missing `ss` on PATH; missing `iperf3` on PATH".to_owned()
            )
        );
        let mut tally = Tally {
            passed: 10,
            failed: 1,
            ..Tally::default()
        };
        let failed: BTreeSet<String> = ["delay_x".to_owned()].into();
        let kept = apply_skips(&mut tally, skips, &failed);
        assert_eq!(kept.len(), 2, "the failed test is no skip: {kept:?}");
        assert_eq!((tally.passed, tally.failed, tally.skipped), (8, 1, 2));
    }

    #[test]
    fn failed_test_lines() {
        assert_eq!(failed_test("test delay_x ... FAILED"), Some("delay_x"));
        assert_eq!(failed_test("test m::t ... FAILED <1.2s>"), Some("m::t"));
        assert_eq!(failed_test("test delay_x ... ok"), None);
        assert_eq!(failed_test("test result: FAILED. 1 passed"), None);
    }
}
