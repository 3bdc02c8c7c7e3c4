//! The agent under bench: a daemon of its own (private state dir, socket and config, inside
//! namespace A, where its metrics port is free by construction), and a minimal HTTP/1.1 client
//! for its API, so that an API round trip is measured without a process start in it.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use super::net::Timed;
use crate::demo::{DemoNet, IF_A};

/// TTL of the bench's faults: longer than the bench, and every fault is stopped explicitly (the
/// daemon's shutdown reverts whatever is left).
pub const TTL: &str = "10m";

/// A scratch directory under /tmp (a socket path must stay under 108 bytes); removed on drop.
#[derive(Debug)]
pub struct Workdir(pub PathBuf);

impl Workdir {
    pub fn create() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("chaos-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loss spec on A's egress for UDP to `dports` (empty: any port) and `dst` (empty: anywhere).
pub fn loss_spec(probability: f64, dports: &[String], dst: &[String], ttl: &str) -> Value {
    json!({
        "ttl": ttl,
        "target": {
            "iface": IF_A,
            "direction": "egress",
            "protocols": ["udp"],
            "dports": dports,
            "dst": dst,
        },
        "loss": {"probability": probability},
        "label": "xtask-bench",
    })
}

/// A client of one agent's Unix socket: one request per connection, as the CLI does.
#[derive(Clone, Debug)]
pub struct Api {
    socket: PathBuf,
}

impl Api {
    /// Sends one request; returns the status and the JSON body (`Null` if empty).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut s = UnixStream::connect(&self.socket)
            .with_context(|| format!("connect to {}", self.socket.display()))?;
        // Bounded: a hung agent fails the measurement instead of hanging the bench.
        s.set_read_timeout(Some(Duration::from_mins(1)))?;
        s.set_write_timeout(Some(Duration::from_mins(1)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let resp = read_response(&mut s).with_context(|| format!("{method} {path}"))?;
        Ok(resp)
    }

    fn expect(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        want: u16,
    ) -> anyhow::Result<Value> {
        let (status, v) = self.call(method, path, body)?;
        if status != want {
            bail!("{method} {path}: HTTP {status}: {v}");
        }
        Ok(v)
    }

    /// `POST /v1/faults`; returns the fault id.
    pub fn inject(&self, spec: &Value) -> anyhow::Result<String> {
        let v = self.expect("POST", "/v1/faults", Some(spec), 201)?;
        v["id"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no id in {v}"))
    }

    /// `DELETE /v1/faults/{id}`; returns the revert report (with the fault's counters).
    pub fn stop(&self, id: &str) -> anyhow::Result<Value> {
        let v = self.expect("DELETE", &format!("/v1/faults/{id}"), None, 200)?;
        if v["errors"].as_array().is_some_and(|e| !e.is_empty()) {
            bail!("stop {id}: {}", v["errors"]);
        }
        Ok(v)
    }

    /// `DELETE /v1/faults`; returns the revert reports.
    pub fn stop_all(&self) -> anyhow::Result<Vec<Value>> {
        let v = self.expect("DELETE", "/v1/faults", None, 200)?;
        Ok(v["reverted"].as_array().cloned().unwrap_or_default())
    }

    pub fn status(&self) -> anyhow::Result<Value> {
        self.expect("GET", "/v1/status", None, 200)
    }
}

/// Reads one HTTP/1.1 response: up to its Content-Length (the agent sets it), or to EOF.
fn read_response(s: &mut UnixStream) -> anyhow::Result<(u16, Value)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut head: Option<(usize, Option<usize>, u16)> = None;
    loop {
        let n = s.read(&mut chunk).context("read the response")?;
        buf.extend_from_slice(&chunk[..n]);
        if head.is_none()
            && let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
        {
            let text = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = text
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .with_context(|| format!("bad status line in {text:?}"))?;
            let len = text.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            });
            head = Some((end + 4, len, status));
        }
        if let Some((start, len, status)) = head
            && (n == 0 || len.is_some_and(|l| buf.len() >= start + l))
        {
            let body = &buf[start..len.map_or(buf.len(), |l| start + l)];
            let v = if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(body)
                    .with_context(|| format!("bad JSON body: {}", String::from_utf8_lossy(body)))?
            };
            return Ok((status, v));
        }
        if n == 0 {
            bail!("connection closed before a complete response");
        }
    }
}

/// The daemon; stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
    pub pid: u32,
    pub api: Api,
}

impl Daemon {
    /// Starts `chaos-agent run` in namespace A with everything under `dir`, and waits until it
    /// answers (it preloads the datapath before serving).
    pub fn start(net: &DemoNet, agent: &Path, dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(net, agent, dir, &[])
    }

    /// [`Daemon::start`] with more arguments for `chaos-agent run` (`--attach-mode netlink`).
    pub fn start_with(
        net: &DemoNet,
        agent: &Path,
        dir: &Path,
        run_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn(net.a_command(agent), dir, run_args, "")
    }

    /// [`Daemon::start`] with `iface`'s classifiers kept attached (`datapath.keep_attached`).
    pub fn start_kept(
        net: &DemoNet,
        agent: &Path,
        dir: &Path,
        iface: &str,
    ) -> anyhow::Result<Self> {
        Self::spawn(
            net.a_command(agent),
            dir,
            &[],
            &format!("[datapath]\nkeep_attached = [\"{iface}\"]\n"),
        )
    }

    /// `chaos-agent run` in the host's own namespaces (faults on processes need the cgroup
    /// hierarchies, which `ip netns exec` hides behind a fresh `/sys`).
    pub fn start_on_host(agent: &Path, dir: &Path, run_args: &[&str]) -> anyhow::Result<Self> {
        Self::spawn(std::process::Command::new(agent), dir, run_args, "")
    }

    fn spawn(
        mut cmd: std::process::Command,
        dir: &Path,
        run_args: &[&str],
        more_config: &str,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("agent.sock");
        let config = dir.join("config.toml");
        // An explicit config: a /etc/chaos-agent/config.toml on this host must not apply. A JSON
        // string is a valid TOML basic string (same escapes).
        let toml_str = |p: &Path| serde_json::to_string(&p.to_string_lossy()).unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "state_dir = {}\n[api]\nsocket = {}\n[metrics]\nlisten = \"127.0.0.1:9464\"\n[limits]\nmax_faults = 256\nmax_ttl = \"1h\"\n{more_config}",
                toml_str(&dir.join("state")),
                toml_str(&socket)
            ),
        )?;
        let log = std::fs::File::create(dir.join("agent.log"))?;
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(run_args)
            .env("CHAOS_AGENT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn chaos-agent run")?;
        let mut d = Self {
            child: Some(child),
            dir: dir.to_owned(),
            pid: 0,
            api: Api { socket },
        };
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            crate::check_interrupted()?;
            if let Some(st) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("chaos-agent run exited at start ({st}): {}", d.log_tail());
            }
            if let Ok(s) = d.api.status() {
                d.pid = s["pid"]
                    .as_u64()
                    .and_then(|p| u32::try_from(p).ok())
                    .with_context(|| format!("no pid in {s}"))?;
                break;
            }
            if Instant::now() > end {
                bail!(
                    "chaos-agent run did not answer within 30 s: {}",
                    d.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if d.log_tail().contains("does not load") {
            bail!("the datapath did not load: {}", d.log_tail());
        }
        Ok(d)
    }

    pub fn socket(&self) -> &Path {
        &self.api.socket
    }

    /// The last lines of the daemon's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// `VmRSS` of the daemon, in kB.
    pub fn rss_kb(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        text.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmRSS in {path}"))
    }

    /// SIGKILL: the daemon dies without reverting anything (what `cargo xtask torture` does to
    /// it), and is reaped.
    pub fn sigkill(mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("daemon already stopped")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// SIGTERM (the daemon reverts every fault) and waits; fails if it exits with an error.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        let status = self.stop()?;
        if !status.success() {
            bail!("chaos-agent run exited with {status}: {}", self.log_tail());
        }
        Ok(())
    }

    fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("daemon already stopped")?;
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let st = child.wait()?;
        Err(anyhow!(
            "chaos-agent run did not stop within 10 s of SIGTERM (killed, {st})"
        ))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// Runs the agent's CLI as a client of `socket` (from this namespace: the client only talks to
/// the socket; the daemon resolves the interface in its own).
pub fn cli(agent: &Path, socket: &Path, args: &[&str]) -> anyhow::Result<Timed> {
    let mut c = Command::new(agent);
    c.args(args).env("CHAOS_AGENT_SOCKET", socket);
    Timed::run(&mut c)
}

/// The id in the CLI's `injected f-XXXXXXXX: ...` line.
pub fn injected_id(out: &str) -> anyhow::Result<String> {
    out.lines()
        .find_map(|l| l.strip_prefix("injected "))
        .and_then(|s| s.split(':').next())
        .map(str::to_owned)
        .with_context(|| format!("unexpected inject output {out:?}"))
}
