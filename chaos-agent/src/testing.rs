//! Test harness shared by the integration tests, the VM guest and `cargo xtask bench`:
//! network namespaces and veth pairs that remove themselves on drop (also when a test panics).
//!
//! Everything here shells out to iproute2 on purpose: the tests must judge the agent with
//! independent tools, not with the netlink code under test.
#![allow(clippy::missing_panics_doc, reason = "test helpers panic with context by design")]

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Runs a command and returns its output, panicking with the command line and stderr on failure.
pub fn run<I, S>(program: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = Command::new(program)
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("spawn {program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `sh -c script` and panics on failure.
pub fn sh(script: &str) -> String {
    String::from_utf8_lossy(&run("sh", ["-c", script]).stdout).into_owned()
}

/// Runs `sh -c script` and returns whether it succeeded, ignoring its output.
#[must_use]
pub fn sh_ok(script: &str) -> bool {
    Command::new("sh")
        .args(["-c", script])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A name that is unique within this process and short enough for an interface (15 bytes).
#[must_use]
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id() % 10_000;
    let name = format!("{prefix}{pid}x{n}");
    assert!(name.len() <= 15, "name {name} too long for an interface");
    name
}

/// A network namespace that is deleted (with everything in it) on drop.
#[derive(Debug)]
pub struct NetNs {
    /// The namespace's name (`ip netns exec NAME ...`).
    pub name: String,
}

impl NetNs {
    /// Creates a namespace with loopback up.
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        let name = unique_name(prefix);
        run("ip", ["netns", "add", &name]);
        let ns = Self { name };
        ns.exec("ip", ["link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace (panics on failure).
    pub fn exec<I, S>(&self, program: &str, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut full: Vec<std::ffi::OsString> =
            vec!["netns".into(), "exec".into(), self.name.clone().into(), program.into()];
        full.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        run("ip", full)
    }

    /// Runs `sh -c script` inside the namespace (panics on failure) and returns stdout.
    pub fn sh(&self, script: &str) -> String {
        String::from_utf8_lossy(&self.exec("sh", ["-c", script]).stdout).into_owned()
    }

    /// A `Command` that runs `program` inside the namespace, for spawning servers.
    #[must_use]
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Path of the namespace file (for `setns`).
    #[must_use]
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Kill whatever a test left running inside, then delete the namespace.
        let _ = Command::new("ip").args(["netns", "pids", &self.name]).output().map(|o| {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        });
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Two namespaces joined by a veth pair, with IPv4 and IPv6 addresses:
/// `a` is 10.X.0.1/24 + fd00:X::1/64, `b` is 10.X.0.2/24 + fd00:X::2/64.
/// The agent under test usually runs inside `a` and faults `a`'s veth.
#[derive(Debug)]
pub struct VethPair {
    /// The "local" side (where the fault is applied).
    pub a: NetNs,
    /// The "remote" side (the peer traffic goes to).
    pub b: NetNs,
    /// Interface name in `a`.
    pub a_if: String,
    /// Interface name in `b`.
    pub b_if: String,
    /// IPv4 address of `a`.
    pub a_ip: String,
    /// IPv4 address of `b`.
    pub b_ip: String,
    /// IPv6 address of `a`.
    pub a_ip6: String,
    /// IPv6 address of `b`.
    pub b_ip6: String,
}

impl VethPair {
    /// Creates the pair; `subnet` (1..=250) picks 10.<subnet>.0.0/24 and fd00:<subnet>::/64.
    #[must_use]
    pub fn new(subnet: u8) -> Self {
        let a = NetNs::new("cha");
        let b = NetNs::new("chb");
        let a_if = unique_name("va");
        let b_if = unique_name("vb");
        run(
            "ip",
            ["link", "add", &a_if, "netns", &a.name, "type", "veth", "peer", "name", &b_if, "netns", &b.name],
        );
        let (a_ip, b_ip) = (format!("10.{subnet}.0.1"), format!("10.{subnet}.0.2"));
        let (a_ip6, b_ip6) = (format!("fd00:{subnet}::1"), format!("fd00:{subnet}::2"));
        for (ns, ifname, ip, ip6) in [(&a, &a_if, &a_ip, &a_ip6), (&b, &b_if, &b_ip, &b_ip6)] {
            ns.exec("ip", ["addr", "add", &format!("{ip}/24"), "dev", ifname]);
            ns.exec("ip", ["-6", "addr", "add", &format!("{ip6}/64"), "dev", ifname, "nodad"]);
            ns.exec("ip", ["link", "set", ifname, "up"]);
        }
        Self { a, b, a_if, b_if, a_ip, b_ip, a_ip6, b_ip6 }
    }

    /// Adds a second address to `b` (e.g. to have a destination outside a fault's filter).
    pub fn add_b_addr(&self, cidr: &str) {
        let family = if cidr.contains(':') { "-6" } else { "-4" };
        self.b.exec("ip", [family, "addr", "add", cidr, "dev", &self.b_if, "nodad"].iter().filter(|s| !(family == "-4" && **s == "nodad")));
    }
}

/// Path of the agent binary under test: `CHAOS_AGENT_BIN` (set in the VM guest), else the one
/// cargo built next to the test (`CARGO_BIN_EXE_chaos-agent` is only known to integration tests,
/// so they pass it in).
#[must_use]
pub fn agent_bin(cargo_default: &str) -> PathBuf {
    std::env::var_os("CHAOS_AGENT_BIN").map_or_else(|| PathBuf::from(cargo_default), PathBuf::from)
}

/// Whether a tool is on PATH.
#[must_use]
pub fn have_tool(name: &str) -> bool {
    sh_ok(&format!("command -v {name} >/dev/null"))
}

/// Prints why a test is skipped, in one greppable line.
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIP {test}: {why}");
}
