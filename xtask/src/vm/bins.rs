//! The static (musl) builds of the agent and of chaos-agent's test binaries that run in the
//! guest.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cargo;
use anyhow::{Context as _, anyhow};

use super::output;

/// The musl target gives fully static binaries, which run in a guest with no libc of ours.
const MUSL: &str = "x86_64-unknown-linux-musl";

#[derive(Debug)]
pub(super) struct Bins {
    pub(super) agent: PathBuf,
    /// (name in the guest, executable), unit tests first.
    pub(super) tests: Vec<(String, PathBuf)>,
}

/// Builds the agent and every test executable of chaos-agent for musl and returns their paths,
/// read from cargo's JSON messages (the file names carry hashes).
pub(super) fn build_static() -> anyhow::Result<Bins> {
    let artifacts = |args: &[&str]| -> anyhow::Result<Vec<serde_json::Value>> {
        let mut cmd = cargo();
        cmd.args(args)
            .args([
                "--target",
                MUSL,
                "-p",
                "chaos-agent",
                "--message-format=json-render-diagnostics",
            ])
            .stderr(Stdio::inherit());
        println!("vm: cargo {}", args.join(" "));
        let stdout = output(&mut cmd)?;
        Ok(stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["executable"].is_string())
            .collect())
    };
    // `cargo test --no-run` builds the binary only when an integration test exists, so ask for
    // it explicitly.
    let agent = artifacts(&["build", "--bin", "chaos-agent"])?
        .into_iter()
        .find(|m| m["target"]["name"] == "chaos-agent")
        .and_then(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| anyhow!("cargo build reported no chaos-agent executable"))?;
    let mut tests: Vec<(u8, String, PathBuf)> = artifacts(&["test", "--no-run"])?
        .into_iter()
        .filter(|m| m["profile"]["test"] == true)
        .filter_map(|m| {
            let name = m["target"]["name"].as_str()?;
            let kind = m["target"]["kind"][0].as_str()?;
            let exe = PathBuf::from(m["executable"].as_str()?);
            Some(match kind {
                "test" => (1, name.to_owned(), exe),
                _ => (0, format!("{kind}-{name}"), exe),
            })
        })
        .collect();
    tests.sort();
    tests.dedup_by(|a, b| a.1 == b.1);
    Ok(Bins {
        agent,
        tests: tests.into_iter().map(|(_, n, p)| (n, p)).collect(),
    })
}

/// The file without its debug info: it halves or more the initramfs that TCG has to unpack,
/// and symbols (kept) are enough for backtraces. Falls back to the original if `strip` fails.
pub(super) fn stripped(exe: &Path, cache: &Path) -> anyhow::Result<Vec<u8>> {
    let tmp = cache.join("stripped.tmp");
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&tmp)
        .arg(exe)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let data = std::fs::read(if ok { tmp.as_path() } else { exe })
        .with_context(|| format!("read {}", exe.display()))?;
    let _ = std::fs::remove_file(&tmp);
    Ok(data)
}
