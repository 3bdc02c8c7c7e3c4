//! Every filesystem path the agent uses, in one place.

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Default state directory (journal of active faults).
pub const STATE_DIR: &str = "/var/lib/chaos-agent";
/// Default control socket of the daemon.
pub const SOCKET: &str = "/run/chaos-agent/agent.sock";
/// Default configuration file.
pub const CONFIG: &str = "/etc/chaos-agent/config.toml";
/// Subdirectory of the state dir holding one journal file per fault.
pub const JOURNAL_SUBDIR: &str = "faults";
