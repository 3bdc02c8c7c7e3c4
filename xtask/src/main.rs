//! chaos-agent's task runner: `cargo xtask <command>` (alias in `.cargo/config.toml`).

mod vm;

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
    /// Boot a distro kernel under QEMU and run the test binaries there.
    VmTest(vm::VmArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::VmTest(args) => vm::run(&args),
    }
}
