//! chaos-agent's task runner: `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! It only builds this crate, never chaos-agent itself, so `cargo xtask setup` works on a fresh
//! machine before the eBPF toolchain that chaos-agent's build.rs needs is installed.

mod bench;
mod demo;
mod fuzz;
mod image;
mod package;
mod setup;
mod test;
mod torture;
mod vm;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "chaos-agent's task runner (run as root)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install (idempotently) every tool the build and the tests need: apt packages, rustup
    /// components, bpf-linker for LLVM 22, and mount bpffs.
    Setup(setup::SetupArgs),
    /// Setup, build, run every test (unit, privileged integration, VM) and print a summary.
    Test(test::TestArgs),
    /// clippy (warnings are errors) and rustfmt --check over the workspace.
    Lint,
    /// Show a loss fault between two throw-away network namespaces, measured with real traffic.
    Demo(demo::DemoArgs),
    /// Measure packet rate, eBPF ns/packet, inject/stop latency and the daemon's memory, next to
    /// nftables, between two throw-away network namespaces (writes target/bench/bench.json).
    Bench(bench::BenchArgs),
    /// SIGKILL the agent at random moments of its work and check the host is left as it was.
    Torture(torture::TortureArgs),
    /// Build the agent's OCI image offline (target/image/chaos-agent-<version>.oci.tar), for
    /// `podman load -i` or `ctr image import` and the manifests in `deploy/kubernetes/`.
    Image(image::ImageArgs),
    /// Boot a distro kernel under QEMU and run the test binaries there.
    VmTest(vm::VmArgs),
    /// Build the Debian package (cargo-deb: binary, unit, conffile, man pages, completions,
    /// docs) into target/deb/ and check it with lintian.
    Package(package::PackageArgs),
    /// Boot a Debian 12 userland with systemd as PID 1 under QEMU, install the package there and
    /// test the unit (start, faults, stop, SIGKILL + `ExecStopPost`, restart, journald,
    /// `systemd-analyze security`, purge).
    VmSystemd(vm::systemd::SystemdArgs),
    /// Fuzz every parser of outside input (cargo-fuzz, nightly), or `--replay` the corpus.
    Fuzz(fuzz::FuzzArgs),
    /// (internal) Send sequence-numbered UDP datagrams until stdin closes.
    #[command(hide = true)]
    UdpSend(demo::UdpSendArgs),
    /// (internal) Receive sequence-numbered UDP datagrams and print the sequence numbers.
    #[command(hide = true)]
    UdpRecv(demo::UdpRecvArgs),
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup(args) => setup::run(&args),
        // `test` prints its own summary as the last line and reports failure by exit code only.
        Cmd::Test(args) => return Ok(test::run(&args)),
        Cmd::Lint => test::lint(),
        Cmd::Demo(args) => demo::run(&args),
        Cmd::Bench(args) => bench::run(&args),
        Cmd::Torture(args) => torture::run(&args),
        Cmd::Image(args) => image::run(&args),
        Cmd::VmTest(args) => vm::run(&args),
        Cmd::Fuzz(args) => fuzz::run(&args),
        Cmd::Package(args) => package::run(&args),
        Cmd::VmSystemd(args) => vm::systemd::run(&args),
        Cmd::UdpSend(args) => demo::udp_send(&args),
        Cmd::UdpRecv(args) => demo::udp_recv(&args),
    }?;
    Ok(ExitCode::SUCCESS)
}

/// The workspace root (this crate lives in `<root>/xtask`).
fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map_or(manifest.clone(), PathBuf::from)
}

/// `cargo`, as the one running us (cargo sets `CARGO` for `cargo run`), in the workspace root,
/// with `$CARGO_HOME/bin` on PATH: chaos-agent's build.rs must find the bpf-linker that
/// `setup` installed there even where that directory is not on the caller's PATH.
fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    let bin = setup::cargo_home().join("bin");
    let mut paths: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if !paths.contains(&bin) {
        paths.push(bin);
        if let Ok(joined) = std::env::join_paths(paths) {
            c.env("PATH", joined);
        }
    }
    c
}

/// A printable form of a command line.
fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command with inherited stdio, echoing it first; fails on a non-zero exit.
fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    println!("$ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("spawn {}", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout; fails (with its stderr) on a non-zero exit.
fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn {}", display(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Shorthand for `Command::new(program).args(args)`.
fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Fails unless we run as root: everything here changes the host (packages, mounts, netns).
fn require_root(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "`cargo xtask {what}` must run as root (it installs packages, mounts bpffs and creates network namespaces); try `sudo -E cargo xtask {what}`"
        );
    }
    Ok(())
}

/// Set by the SIGINT/SIGTERM handler; long waits poll it so that guards run their cleanup.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs a SIGINT/SIGTERM handler that only sets [`INTERRUPTED`], so that Ctrl-C unwinds
/// through the namespace guards instead of killing the process with the namespaces left behind.
fn catch_interrupts() -> anyhow::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }.with_context(|| format!("install {sig} handler"))?;
    }
    Ok(())
}

/// Fails if Ctrl-C (or SIGTERM) was received.
fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}
