//! The `chaos-agent` binary: everything lives in the library; see `chaos_agent::cli`.

fn main() -> std::process::ExitCode {
    chaos_agent::cli::main()
}
