//! `cargo xtask fuzz`: the cargo-fuzz targets of `fuzz/` (issue 15, item 4), one after another.
//!
//! - `--replay`: every target over its corpus (`fuzz/corpus/<target>/`) and its fixed
//!   regressions (`fuzz/artifacts-regressions/<target>/`), no new inputs: seconds, run by
//!   `cargo xtask test`. Ends with a libtest-shaped `test result:` line (one "test" per target)
//!   so that the test summary counts it.
//! - default: each target fuzzed for `--seconds` (600, the ten minutes), one process
//!   at a time (libFuzzer's single job), new inputs into `fuzz/target/corpus/<target>/`, crashes
//!   into `fuzz/artifacts/<target>/`; a table of seconds, executions and crashes at the end.
//! - `--cmin`: merges what a run found into `fuzz/corpus/<target>/` and minimises it (only
//!   inputs that add coverage stay), so that the committed corpus stays small.
//!
//! The targets are built with `cargo +nightly fuzz build --sanitizer none` (`--dev` for the
//! replay): the parsers are
//! safe Rust, so `AddressSanitizer` would halve the executions and find nothing the panics and
//! overflow checks (on in these builds) do not.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{capture, display, exec, workspace_root};

/// The cargo-fuzz release `setup` installs: pinned, as bpf-linker is.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

#[derive(Debug, Default, clap::Args)]
pub struct FuzzArgs {
    /// Only run every target over its corpus and fixed regressions (no new inputs).
    #[arg(long, conflicts_with_all = ["seconds", "cmin"])]
    replay: bool,
    /// How long to fuzz each target.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Merge the inputs a run found into the committed corpus and minimise it (no fuzzing).
    #[arg(long)]
    cmin: bool,
    /// Only these targets (default: every file in `fuzz/fuzz_targets/`).
    targets: Vec<String>,
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

/// Every target: the files of `fuzz/fuzz_targets/`, sorted.
fn all_targets() -> anyhow::Result<Vec<String>> {
    let dir = fuzz_dir().join("fuzz_targets");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_owned)
        })
        .collect();
    v.sort();
    Ok(v)
}

/// `cargo +nightly fuzz ...` in `fuzz/`, through rustup's proxy, with the PATH that finds
/// bpf-linker (chaos-agent's build.rs needs it) and without the outer cargo's `CARGO`, which
/// names the stable toolchain's binary.
fn cargo_fuzz() -> Command {
    let base = crate::cargo();
    let proxy = crate::setup::cargo_home().join("bin/cargo");
    let mut c = Command::new(if proxy.is_file() {
        proxy.into_os_string()
    } else {
        "cargo".into()
    });
    for (k, v) in base.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c.env_remove("CARGO").env_remove("RUSTUP_TOOLCHAIN");
    c.current_dir(fuzz_dir()).args(["+nightly", "fuzz"]);
    c
}

/// Whether cargo-fuzz is installed (for `cargo xtask setup`).
pub fn cargo_fuzz_installed() -> bool {
    let mut c = cargo_fuzz();
    c.arg("--version");
    capture(&mut c).is_ok_and(|v| v.starts_with("cargo-fuzz"))
}

/// Installs the pinned cargo-fuzz (for `cargo xtask setup`).
pub fn install_cargo_fuzz() -> anyhow::Result<()> {
    let mut c = crate::cargo();
    c.args([
        "install",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
        "cargo-fuzz",
    ])
    .env("RUSTUP_TOOLCHAIN", "stable");
    exec(&mut c).context("build cargo-fuzz (about two minutes on 2 cores)")
}

/// How the targets are built: optimised for fuzzing (cargo-fuzz's release profile, with debug
/// assertions and overflow checks), unoptimised for the replay, which runs a few hundred inputs
/// and so is dominated by the build (half the time in dev).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    Release,
    Dev,
}

/// Builds every target once.
fn build(profile: Profile) -> anyhow::Result<()> {
    if !cargo_fuzz_installed() {
        bail!("cargo-fuzz is missing: run `cargo xtask setup`");
    }
    let mut c = cargo_fuzz();
    c.args(["build", "--sanitizer", "none"]);
    if profile == Profile::Dev {
        c.arg("--dev");
    }
    exec(&mut c).context("build the fuzz targets")
}

/// Where `cargo fuzz build` puts a target's binary.
fn binary(target: &str, profile: Profile) -> anyhow::Result<PathBuf> {
    let vv = capture(&mut crate::cmd("rustc", ["+nightly", "-vV"]))?;
    let host = vv
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .context("rustc -vV names no host")?;
    Ok(fuzz_dir()
        .join("target")
        .join(host.trim())
        .join(match profile {
            Profile::Release => "release",
            Profile::Dev => "debug",
        })
        .join(target))
}

/// Runs every target over its corpus; prints a libtest-shaped result line.
fn replay(targets: &[String]) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for t in targets {
        let mut dirs = vec![fuzz_dir().join("corpus").join(t)];
        dirs.push(fuzz_dir().join("artifacts-regressions").join(t));
        let dirs: Vec<PathBuf> = dirs.into_iter().filter(|d| d.is_dir()).collect();
        let inputs: usize = dirs
            .iter()
            .map(|d| std::fs::read_dir(d).map_or(0, Iterator::count))
            .sum();
        let start = Instant::now();
        let mut c = Command::new(binary(t, Profile::Dev)?);
        // `-runs=0`: run the inputs and stop. Files, not directories: libFuzzer then runs each
        // once as given, with no merge or size limit.
        c.args(["-runs=0", "-timeout=10", "-rss_limit_mb=2048"]);
        for d in &dirs {
            let mut files: Vec<PathBuf> = std::fs::read_dir(d)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            files.sort();
            c.args(files);
        }
        let out = c
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {t}"))?;
        let took = start.elapsed();
        if out.status.success() {
            println!("fuzz replay {t}: {inputs} inputs ok ({took:.1?})");
        } else {
            let log = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            for l in tail.iter().rev() {
                eprintln!("  {l}");
            }
            println!("test fuzz::{t} ... FAILED");
            failed.push(t.clone());
        }
    }
    println!(
        "test result: {}. {} passed; {} failed; 0 ignored; 0 measured; 0 filtered out",
        if failed.is_empty() { "ok" } else { "FAILED" },
        targets.len() - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        bail!("fuzz replay failed: {}", failed.join(", "));
    }
    Ok(())
}

/// What one run of a target reported.
#[derive(Debug, Default)]
struct RunStats {
    execs: u64,
    new_units: u64,
    crash: Option<String>,
}

/// Reads libFuzzer's final stats (`-print_final_stats=1`) and crash lines.
fn parse_stat(line: &str, s: &mut RunStats) {
    let num = |key: &str| {
        line.strip_prefix(key)
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if let Some(n) = num("stat::number_of_executed_units:") {
        s.execs = n;
    } else if let Some(n) = num("stat::new_units_added:") {
        s.new_units = n;
    } else if let Some(path) = line
        .split_once("Test unit written to ")
        .map(|(_, p)| p.trim())
    {
        s.crash = Some(path.to_owned());
    }
}

/// Fuzzes one target for `seconds`, echoing libFuzzer's progress and keeping a log in
/// `fuzz/target/logs/<target>.log`.
fn fuzz_one(t: &str, seconds: u64) -> anyhow::Result<(RunStats, Duration)> {
    let scratch = fuzz_dir().join("target/corpus").join(t);
    let artifacts = fuzz_dir().join("artifacts").join(t);
    let logs = fuzz_dir().join("target/logs");
    for d in [&scratch, &artifacts, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let mut c = Command::new(binary(t, Profile::Release)?);
    // New inputs go to the first directory: the scratch one, not the committed corpus.
    c.arg(&scratch).arg(fuzz_dir().join("corpus").join(t));
    c.arg(format!("-max_total_time={seconds}"))
        .args(["-print_final_stats=1", "-timeout=10", "-rss_limit_mb=2048"])
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    let dict = fuzz_dir().join("dicts").join(format!("{t}.dict"));
    if dict.is_file() {
        c.arg(format!("-dict={}", dict.display()));
    }
    println!("\n==> fuzz {t} for {seconds}s: {}", display(&c));
    let start = Instant::now();
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {t}"))?;
    let mut stats = RunStats::default();
    let mut log = Vec::new();
    let stderr = child.stderr.take().context("child stderr")?;
    for line in BufReader::new(stderr).lines() {
        let line = line.context("read libFuzzer's output")?;
        parse_stat(&line, &mut stats);
        // Not every NEW/REDUCE line: the start, the pulses (each power of two) and the end, and
        // everything else (the final stats, a crash).
        let progress = line.starts_with('#');
        if !progress || ["INITED", "pulse", "DONE"].iter().any(|w| line.contains(w)) {
            eprintln!("{line}");
        }
        log.push(line);
    }
    let exit = child.wait()?;
    let took = start.elapsed();
    std::fs::write(logs.join(format!("{t}.log")), log.join("\n") + "\n")?;
    if !exit.success() && stats.crash.is_none() {
        stats.crash = Some(format!("exit {exit}, see fuzz/target/logs/{t}.log"));
    }
    Ok((stats, took))
}

/// Merges `fuzz/target/corpus/<t>` into `fuzz/corpus/<t>` and keeps a minimal set.
fn cmin(t: &str) -> anyhow::Result<()> {
    let corpus = fuzz_dir().join("corpus").join(t);
    let scratch = fuzz_dir().join("target/corpus").join(t);
    let merged = fuzz_dir().join("target/corpus").join(format!("{t}.cmin"));
    let _ = std::fs::remove_dir_all(&merged);
    std::fs::create_dir_all(&merged)?;
    let before = std::fs::read_dir(&corpus).map_or(0, Iterator::count);
    let mut c = Command::new(binary(t, Profile::Release)?);
    c.args(["-merge=1", "-timeout=10", "-rss_limit_mb=2048"])
        .arg(&merged)
        .arg(&corpus);
    if scratch.is_dir() {
        c.arg(&scratch);
    }
    let out = c.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!(
            "merge of {t} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let after = std::fs::read_dir(&merged)?.count();
    if after == 0 {
        bail!("merge of {t} kept nothing; corpus left as it was");
    }
    std::fs::remove_dir_all(&corpus)?;
    std::fs::rename(&merged, &corpus)?;
    println!("cmin {t}: {before} -> {after} inputs in fuzz/corpus/{t}");
    Ok(())
}

pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    let all = all_targets()?;
    for t in &args.targets {
        if !all.contains(t) {
            bail!("no fuzz target {t:?} (targets: {})", all.join(", "));
        }
    }
    let targets = if args.targets.is_empty() {
        all
    } else {
        args.targets.clone()
    };
    build(if args.replay {
        Profile::Dev
    } else {
        Profile::Release
    })?;
    if args.replay {
        return replay(&targets);
    }
    if args.cmin {
        for t in &targets {
            cmin(t)?;
        }
        return Ok(());
    }
    let mut rows = Vec::new();
    for t in &targets {
        let (stats, took) = fuzz_one(t, args.seconds)?;
        rows.push((t.clone(), stats, took));
    }
    println!("\n==> fuzz summary");
    println!(
        "{:<14} {:>8} {:>12} {:>9} {:>6}  result",
        "target", "seconds", "execs", "exec/s", "new"
    );
    let mut crashed = Vec::new();
    for (t, s, took) in &rows {
        let secs = took.as_secs_f64();
        println!(
            "{t:<14} {secs:>8.0} {:>12} {:>9.0} {:>6}  {}",
            s.execs,
            s.execs as f64 / secs.max(1e-9),
            s.new_units,
            s.crash.as_deref().unwrap_or("no crash")
        );
        if s.crash.is_some() {
            crashed.push(t.as_str());
        }
    }
    println!("(new inputs are in fuzz/target/corpus/; `cargo xtask fuzz --cmin` merges them)");
    if !crashed.is_empty() {
        bail!("crashes in {}", crashed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_final_stats_and_crashes() {
        let mut s = RunStats::default();
        for l in [
            "stat::number_of_executed_units: 1234567",
            "stat::average_exec_per_sec:     2057",
            "stat::new_units_added:          42",
            "artifact_prefix='fuzz/artifacts/rate/'; Test unit written to fuzz/artifacts/rate/crash-ab12",
        ] {
            parse_stat(l, &mut s);
        }
        assert_eq!((s.execs, s.new_units), (1_234_567, 42));
        assert_eq!(s.crash.as_deref(), Some("fuzz/artifacts/rate/crash-ab12"));
    }
}
