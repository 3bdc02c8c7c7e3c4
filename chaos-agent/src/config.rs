//! The daemon's TOML configuration. Unknown keys are errors (a typo must not silently fall back
//! to a default on a host where faults are injected); every key and its default is documented in
//! `deploy/config.example.toml`, which a unit test parses so the two cannot drift apart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::EngineConfig;
use crate::kernel::bpf::AttachMode;
use crate::spec::Limits;
use crate::sys::paths;
use crate::target::PortRange;

/// Errors loading or validating a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("read {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause (in the message; not a `source`, so anyhow does not print it twice).
        cause: std::io::Error,
    },
    /// The file is not valid TOML for this schema (syntax, unknown key, wrong type). One line,
    /// `FILE:LINE:COLUMN: why`: the toml crate's own rendering adds a multi-line source excerpt.
    #[error("{}{}: {why}", path.display(), at.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Line and column (1-based) of the offending key or value, when the parser knows it.
        at: Option<(usize, usize)>,
        /// What is wrong (names the key or value).
        why: String,
    },
    /// The values parse but do not make sense together.
    #[error("{path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The TCP API token file could not be read or is empty.
    #[error("api.tcp_token_file {path}: {why}")]
    Token {
        /// The token file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory holding the crash journal of active faults.
    pub state_dir: PathBuf,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// How tc programs are attached: `auto`, `tcx` or `netlink`.
    pub attach_mode: AttachMode,
    /// The control API.
    pub api: ApiConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Limits on what may be injected.
    pub limits: LimitsConfig,
    /// Experiments the daemon starts by itself: schedules and monkey mode.
    pub experiments: crate::experiment::schedule::ExperimentsConfig,
    /// The eBPF datapath.
    pub datapath: DatapathConfig,
    /// The node's container runtime, for faults on pods (`--pod`).
    pub cri: CriConfig,
}

/// `[cri]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CriConfig {
    /// The runtime's CRI socket, `unix:///run/containerd/containerd.sock`; unset:
    /// `$CONTAINER_RUNTIME_ENDPOINT`, else the first of containerd's, cri-o's and
    /// cri-dockerd's default sockets that exists.
    pub endpoint: Option<String>,
}

/// `[datapath]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatapathConfig {
    /// Interfaces whose classifiers (both directions) are attached at start and stay attached
    /// until the agent exits, with or without faults: the first fault there then acts after a
    /// few map writes instead of the kernel's attach (an RCU grace period). tcx only.
    pub keep_attached: Vec<String>,
}

/// `[api]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Path of the Unix control socket.
    pub socket: PathBuf,
    /// Users (besides root) allowed to use the API, by uid.
    pub allowed_uids: Vec<u32>,
    /// A group whose members may use the API. The socket becomes `0660 root:GROUP`.
    pub allowed_group: Option<String>,
    /// Address of an optional TCP listener (e.g. `127.0.0.1:9465`). Needs `tcp_token_file`.
    pub tcp_listen: Option<SocketAddr>,
    /// File holding the bearer token that TCP clients must send.
    pub tcp_token_file: Option<PathBuf>,
}

/// `[metrics]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Listen address of the Prometheus endpoint; `enabled = false` turns it off.
    pub listen: SocketAddr,
    /// Whether to serve metrics at all.
    pub enabled: bool,
}

/// `[limits]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Longest TTL a fault may have (also bounds extensions).
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// TTL given to API requests that have none.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Most faults active at once.
    pub max_faults: usize,
    /// Ports never faulted unless a fault says `include_protected` (the agent's own TCP API and
    /// metrics ports are always added).
    pub protected_ports: Vec<PortRange>,
}

/// Default metrics address.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from(paths::STATE_DIR),
            log_format: LogFormat::Text,
            attach_mode: AttachMode::Auto,
            api: ApiConfig::default(),
            metrics: MetricsConfig::default(),
            limits: LimitsConfig::default(),
            experiments: crate::experiment::schedule::ExperimentsConfig::default(),
            datapath: DatapathConfig::default(),
            cri: CriConfig::default(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(paths::SOCKET),
            allowed_uids: Vec::new(),
            allowed_group: None,
            tcp_listen: None,
            tcp_token_file: None,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            enabled: true,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_ttl: crate::spec::DEFAULT_MAX_TTL,
            default_ttl: Duration::from_mins(5),
            max_faults: chaos_common::MAX_FAULTS as usize,
            protected_ports: vec![PortRange { lo: 22, hi: 22 }],
        }
    }
}

impl Config {
    /// Parses and validates TOML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            at: e.span().map(|span| line_column(text, span.start)),
            why: crate::spec::one_line(e.message().trim(), 400),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Self::parse(&text, path)
    }

    /// Loads `path`, or the defaults when `path` is the default location and does not exist
    /// (a fresh host needs no config file; an explicitly named one must exist).
    pub fn load_or_default(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        if !explicit && !path.exists() {
            return Ok(Self::default());
        }
        Self::load(path)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |why: String| {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                why,
            })
        };
        if !self.state_dir.is_absolute() {
            return bad(format!(
                "state_dir must be an absolute path (the journal of every fault is kept there), got {:?}",
                self.state_dir.display().to_string()
            ));
        }
        let l = &self.limits;
        if l.max_ttl.is_zero() || l.max_ttl > crate::spec::MAX_TTL_CEILING {
            return bad(format!(
                "limits.max_ttl must be greater than zero and at most {}, got {}",
                humantime::format_duration(crate::spec::MAX_TTL_CEILING),
                humantime::format_duration(l.max_ttl)
            ));
        }
        if l.default_ttl.is_zero() || l.default_ttl > l.max_ttl {
            return bad(format!(
                "limits.default_ttl ({}) must be greater than zero and at most limits.max_ttl ({})",
                humantime::format_duration(l.default_ttl),
                humantime::format_duration(l.max_ttl)
            ));
        }
        if l.max_faults == 0 || l.max_faults > chaos_common::MAX_FAULTS as usize {
            return bad(format!(
                "limits.max_faults must be between 1 and {} (the datapath's fault slots), got {}",
                chaos_common::MAX_FAULTS,
                l.max_faults
            ));
        }
        let mut kept = std::collections::BTreeSet::new();
        for name in &self.datapath.keep_attached {
            // IFNAMSIZ is 16 with the terminating NUL; '/' and whitespace are never in names.
            let valid = !name.is_empty()
                && name.len() < 16
                && !name.contains(['/', ':'])
                && !name.chars().any(char::is_whitespace);
            if !valid {
                return bad(format!(
                    "datapath.keep_attached: {name:?} is not an interface name (1-15 bytes, no '/', ':' or spaces)"
                ));
            }
            if !kept.insert(name) {
                return bad(format!("datapath.keep_attached lists {name:?} twice"));
            }
        }
        if l.protected_ports.len() + 2 > crate::target::MAX_PORT_RANGES {
            return bad(format!(
                "limits.protected_ports has {} ranges; at most {} fit (2 are kept for the agent's own ports)",
                l.protected_ports.len(),
                crate::target::MAX_PORT_RANGES - 2
            ));
        }
        if let Some(e) = &self.cri.endpoint
            && let Err(why) = crate::target::pod::endpoint(Some(e))
        {
            return bad(format!("cri.endpoint: {why}"));
        }
        if let Err(why) = self.experiments.check() {
            return bad(format!("experiments: {why}"));
        }
        if self.api.tcp_listen.is_some() && self.api.tcp_token_file.is_none() {
            return bad("api.tcp_listen needs api.tcp_token_file: the TCP API always requires a bearer token".to_owned());
        }
        if self.api.socket.as_os_str().is_empty() || self.api.socket.is_relative() {
            return bad(format!(
                "api.socket must be an absolute path, got {:?}",
                self.api.socket.display().to_string()
            ));
        }
        if let Some(g) = &self.api.allowed_group
            && g.is_empty()
        {
            return bad("api.allowed_group is empty: remove the key or name a group".to_owned());
        }
        Ok(())
    }

    /// The protected ports the engine enforces: the configured ones plus the agent's own TCP
    /// API and metrics ports (faulting them would cut the operator off from the agent).
    #[must_use]
    pub fn protected_ports(&self) -> Vec<PortRange> {
        let mut v = self.limits.protected_ports.clone();
        let own = self
            .api
            .tcp_listen
            .map(|a| a.port())
            .into_iter()
            .chain(self.metrics.enabled.then_some(self.metrics.listen.port()));
        for port in own {
            if port != 0 && !v.iter().any(|r| r.lo <= port && port <= r.hi) {
                v.push(PortRange { lo: port, hi: port });
            }
        }
        v
    }

    /// The engine settings this configuration implies.
    #[must_use]
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            state_dir: self.state_dir.clone(),
            limits: Limits {
                max_ttl: self.limits.max_ttl,
            },
            default_ttl: Some(self.limits.default_ttl),
            attach_mode: self.attach_mode,
            protected_ports: self.protected_ports(),
            max_faults: self.limits.max_faults,
            cri_endpoint: self.cri.endpoint.clone(),
        }
    }

    /// Reads the TCP bearer token (trimmed), if a TCP listener is configured.
    pub fn tcp_token(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.api.tcp_token_file else {
            return Ok(None);
        };
        let err = |why: String| ConfigError::Token {
            path: path.clone(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let token = text.trim().to_owned();
        if token.len() < 16 {
            return Err(err("token must be at least 16 characters".to_owned()));
        }
        Ok(Some(token))
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../deploy/config.example.toml");

    #[test]
    fn example_file_is_the_defaults() {
        let parsed = Config::parse(EXAMPLE, Path::new("config.example.toml")).unwrap();
        assert_eq!(
            parsed,
            Config::default(),
            "deploy/config.example.toml must document the defaults"
        );
    }

    #[test]
    fn kept_interfaces_must_be_names_and_listed_once() {
        let ok = Config::parse(
            "[datapath]\nkeep_attached = [\"eth0\", \"bond0.100\"]\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(ok.datapath.keep_attached, ["eth0", "bond0.100"]);
        for (text, want) in [
            ("keep_attached = [\"\"]", "not an interface name"),
            (
                "keep_attached = [\"a-very-long-name0\"]",
                "not an interface name",
            ),
            ("keep_attached = [\"eth 0\"]", "not an interface name"),
            ("keep_attached = [\"eth0\", \"eth0\"]", "twice"),
            ("keep = [\"eth0\"]", "keep"),
        ] {
            let e = Config::parse(&format!("[datapath]\n{text}\n"), Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(
            Config::parse("", Path::new("x")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = Config::parse("[limits]\nmax_tll = \"1m\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_tll"), "{e}");
        assert!(Config::parse("bogus = 1\n", Path::new("c.toml")).is_err());
    }

    #[test]
    fn parse_errors_are_one_line_with_the_position() {
        for (text, want) in [
            (
                "[limits]\nmax_tll = \"1m\"\n",
                "c.toml:2:1: unknown field `max_tll`, expected one of",
            ),
            (
                "[limits]\nmax_ttl = \"1000000000000y\"\n",
                "c.toml:2:11: invalid value: string \"1000000000000y\", expected a duration",
            ),
            ("[limits\n", "c.toml:1:8: "),
            (
                "[api]\n\"a\\nb\" = 1\n",
                r"c.toml:2:1: unknown field `a\nb`",
            ),
        ] {
            let e = Config::parse(text, Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want) && !e.contains('\n'), "{text:?}: {e}");
        }
    }

    #[test]
    fn state_dir_is_absolute() {
        for dir in ["", "state", "./state"] {
            let e = Config::parse(&format!("state_dir = {dir:?}\n"), Path::new("c"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("state_dir must be an absolute path"), "{e}");
        }
        assert!(Config::parse("state_dir = \"/srv/chaos\"\n", Path::new("c")).is_ok());
    }

    #[test]
    fn tcp_needs_a_token() {
        let e = Config::parse(
            "[api]\ntcp_listen = \"127.0.0.1:9465\"\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tcp_token_file"), "{e}");
    }

    #[test]
    fn own_ports_are_protected() {
        let cfg = Config::parse(
            "[api]\ntcp_listen = \"127.0.0.1:9465\"\ntcp_token_file = \"/t\"\n[metrics]\nlisten = \"0.0.0.0:9999\"\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let ports: Vec<String> = cfg
            .protected_ports()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(ports, ["22", "9465", "9999"]);
    }

    #[test]
    fn max_ttl_and_max_faults_have_ceilings() {
        let e = Config::parse("[limits]\nmax_ttl = \"700years\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("limits.max_ttl must be greater than zero and at most 7days"),
            "{e}"
        );
        assert!(Config::parse("[limits]\nmax_ttl = \"7days\"\n", Path::new("c.toml")).is_ok());
        let e = Config::parse("[limits]\nmax_faults = 257\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("between 1 and 256"), "{e}");
    }

    #[test]
    fn default_ttl_within_max() {
        assert!(
            Config::parse(
                "[limits]\nmax_ttl = \"1m\"\ndefault_ttl = \"5m\"\n",
                Path::new("c")
            )
            .is_err()
        );
        let c = Config::parse(
            "[limits]\nmax_ttl = \"10m\"\ndefault_ttl = \"1m\"\n",
            Path::new("c"),
        )
        .unwrap();
        assert_eq!(c.engine_config().default_ttl, Some(Duration::from_mins(1)));
    }
}
