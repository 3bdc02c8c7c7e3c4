//! The command line's conventions (issue 13, part 3), judged from outside by running the real
//! binary: `--output json` on `list`, `show`, `status`, `doctor` and an `inject`'s summary, in
//! the shapes docs/cli.md documents (read here as `serde_json::Value`, never as the agent's own
//! types, and compared with what the API itself answers, `curl --unix-socket`); the exit codes,
//! each provoked for real (a malformed command line, a refused value, a conflict with an active
//! fault, an agent that cannot be reached, a kernel without `sch_netem`); colour only on a
//! terminal (`script` gives one) and never with `NO_COLOR`; the global options under their own
//! heading in every `--help`.
//!
//! Faults are loss faults on a veth pair (tcx on the host, `cls_bpf` on 6.1) and a pure rate
//! (HTB); the kernel's side of them is the loss and netem suites'. Subnets 10.241-10.243.
#![allow(
    clippy::missing_panics_doc,
    reason = "test helpers panic with context by design"
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chaos_testing::{self as testing, AgentProcess, Feature, NetNs, TempDir, VethPair};
use serde_json::Value;

fn bin() -> PathBuf {
    testing::agent_bin(env!("CARGO_BIN_EXE_chaos-agent"))
}

/// What a CLI run printed.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn of(cmd: &mut Command) -> Self {
        let o = cmd.stdin(Stdio::null()).output().expect("run the CLI");
        Self {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Exit 0 and stdout parsed as one JSON document.
    fn json(&self, what: &str) -> Value {
        assert_eq!(self.code, Some(0), "{what}: {self:?}");
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{what}: stdout is not one JSON document ({e}): {self:?}"))
    }

    /// Exit `code`, nothing on stdout, one `error: ` line on stderr with `want` in it.
    fn assert_error(&self, code: i32, want: &str, what: &str) {
        let line = self.stderr.strip_suffix('\n').unwrap_or(&self.stderr);
        assert!(
            self.code == Some(code)
                && self.stdout.is_empty()
                && !line.contains('\n')
                && line.starts_with("error: ")
                && line.contains(want),
            "{what}: want exit {code}, empty stdout and one error line with {want:?}; got {self:?}"
        );
    }
}

/// The CLI in `ns` (or here), with no agent unless `socket` names one.
fn cli(ns: Option<&NetNs>, socket: &Path, args: &[&str]) -> Out {
    let mut cmd = match ns {
        Some(ns) => ns.command(bin().to_str().expect("utf-8 path")),
        None => Command::new(bin()),
    };
    Out::of(
        cmd.args(args)
            .env("CHAOS_AGENT_SOCKET", socket)
            .env_remove("CHAOS_AGENT_STATE_DIR")
            .env_remove("CHAOS_AGENT_LOG"),
    )
}

/// `chaos-agent run` in namespace `a` of a veth pair, its socket, config and state in `dir`.
struct Daemon<'a> {
    net: &'a VethPair,
    dir: PathBuf,
    child: Child,
}

impl<'a> Daemon<'a> {
    fn start(net: &'a VethPair, dir: &Path) -> Self {
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            "[limits]\nmax_ttl = \"10m\"\ndefault_ttl = \"1m\"\n[metrics]\nenabled = false\n",
        )
        .expect("write the config");
        let log = std::fs::File::create(dir.join("agent.log")).expect("log");
        let child = net
            .a
            .command(bin().to_str().expect("utf-8 path"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(dir.join("agent.sock"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("CHAOS_AGENT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the agent");
        let mut d = Self {
            net,
            dir: dir.to_owned(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while d.cli(&["status"]).code != Some(0) {
            if let Some(st) = d.child.try_wait().expect("try_wait") {
                panic!("the agent exited at start ({st}): {}", d.log());
            }
            assert!(Instant::now() < deadline, "no agent: {}", d.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> Out {
        cli(Some(&self.net.a), &self.socket(), args)
    }

    /// `inject --iface <a> ARGS --output json` through the agent: the fault's JSON.
    fn inject(&self, args: &[&str]) -> Value {
        let mut full = vec!["inject", "--iface", &self.net.a_if, "--output", "json"];
        full.extend_from_slice(args);
        self.cli(&full).json(&format!("inject {args:?}"))
    }

    /// The API's own answer to `GET path` (`curl --unix-socket`).
    fn api(&self, path: &str) -> Value {
        let out = Command::new("curl")
            .args(["-sS", "--unix-socket"])
            .arg(self.socket())
            .arg(format!("http://agent{path}"))
            .output()
            .expect("run curl");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("curl {path}: {e}: {}", String::from_utf8_lossy(&out.stderr))
        })
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log());
        }
        // SIGTERM reverts every fault; a test that failed half-way leaves nothing behind.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The names of an object's fields.
fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

/// A Fault as docs/cli.md (and docs/api.md) document it: every field there, of its type.
fn assert_fault_shape(f: &Value) {
    let id = f["id"].as_str().unwrap_or_else(|| panic!("id: {f}"));
    assert!(
        id.len() == 10 && id.starts_with("f-") && id[2..].chars().all(|c| c.is_ascii_hexdigit()),
        "id {id:?}"
    );
    for s in ["kind", "summary", "iface", "backend"] {
        assert!(f[s].is_string(), "{s}: {f}");
    }
    for n in [
        "requested_by_uid",
        "created_unix_ms",
        "expires_unix_ms",
        "remaining_ms",
    ] {
        assert!(f[n].is_u64(), "{n}: {f}");
    }
    assert!(f["spec"].is_object() && f["spec"]["ttl"].is_string(), "{f}");
    assert!(f["spec"]["target"].is_object(), "{f}");
    if let Some(c) = f.get("counters") {
        for dir in ["ingress", "egress"] {
            for n in [
                "seen",
                "matched",
                "dropped",
                "steered",
                "protected",
                "expired",
                "rewritten",
                "unparsed",
            ] {
                assert!(c[dir][n].is_u64(), "counters.{dir}.{n}: {f}");
            }
        }
    }
}

/// `ping -c COUNT` from `a` to `b`: how many replies came back.
fn ping_replies(net: &VethPair, count: u32) -> u32 {
    let out = net
        .a
        .command("ping")
        .args(["-n", "-q", "-c", &count.to_string(), "-i", "0.2", "-W", "1"])
        .arg(&net.b_ip)
        .output()
        .expect("run ping");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(',')
        .find_map(|p| p.trim().strip_suffix(" received")?.parse().ok())
        .unwrap_or_else(|| panic!("ping said: {text}"))
}

#[test]
fn list_show_status_json_with_faults_active_agree_with_the_api() {
    let test = "list_show_status_json_with_faults_active_agree_with_the_api";
    if !testing::require_all(
        test,
        &[Feature::Root, Feature::Tool("curl"), Feature::Tool("ping")],
    ) {
        return;
    }
    let net = VethPair::new(241);
    let dir = TempDir::new("chcli");
    let agent = Daemon::start(&net, &dir.0);
    let dest = format!("{}/32", net.b_ip);
    let drop_all = agent.inject(&[
        "--loss", "1", "--proto", "icmp", "--dest", &dest, "--ttl", "5m", "--label", "cli-json",
    ]);
    assert_fault_shape(&drop_all);
    assert_eq!(drop_all["kind"], "loss", "{drop_all}");
    assert_eq!(drop_all["spec"]["loss"]["probability"], 1.0, "{drop_all}");
    assert_eq!(drop_all["spec"]["label"], "cli-json", "{drop_all}");
    // `--json` is the same as `--output json`.
    let mut args = vec!["inject", "--iface", &net.a_if];
    args.extend(["--loss", "0.1", "--proto", "udp", "--ttl", "5m", "--json"]);
    let udp = agent.cli(&args).json("inject --json");
    assert_fault_shape(&udp);
    let ids = [
        drop_all["id"].as_str().expect("id").to_owned(),
        udp["id"].as_str().expect("id").to_owned(),
    ];

    // The fault is real: every echo request is dropped (seen by ping, not by the agent).
    assert_eq!(ping_replies(&net, 5), 0, "the ICMP loss fault is active");

    let list = agent.cli(&["list", "--output", "json"]).json("list");
    assert_eq!(keys(&list), BTreeSet::from(["faults".to_owned()]), "{list}");
    let faults = list["faults"].as_array().expect("faults");
    let listed: Vec<&str> = faults.iter().filter_map(|f| f["id"].as_str()).collect();
    assert_eq!(listed, ids, "oldest first: {list}");
    for f in faults {
        assert_fault_shape(f);
        let remaining = f["remaining_ms"].as_u64().expect("remaining_ms");
        assert!(remaining > 0 && remaining <= 300_000, "{f}");
        assert_eq!(
            f["expires_unix_ms"].as_u64().expect("expires")
                - f["created_unix_ms"].as_u64().expect("created"),
            300_000,
            "{f}"
        );
        assert_eq!(f["requested_by_uid"], 0, "{f}");
    }
    let egress = &faults[0]["counters"]["egress"];
    let dropped = egress["dropped"].as_u64().expect("dropped");
    assert!(
        dropped >= 5 && egress["matched"] == egress["dropped"],
        "the 5 echo requests matched and dropped: {egress}"
    );

    // The CLI's JSON is the API's: the same faults with the same fields (the clocks aside).
    let api = agent.api("/v1/faults");
    let api_faults = api["faults"].as_array().expect("the API's faults");
    assert_eq!(api_faults.len(), faults.len(), "{api}");
    for (ours, theirs) in faults.iter().zip(api_faults) {
        assert_eq!(keys(ours), keys(theirs), "{ours} vs {theirs}");
        for k in [
            "id",
            "kind",
            "summary",
            "spec",
            "iface",
            "backend",
            "created_unix_ms",
        ] {
            assert_eq!(ours[k], theirs[k], "{k}");
        }
    }

    let show = agent
        .cli(&["show", &ids[0], "--output", "json"])
        .json("show");
    assert_fault_shape(&show);
    assert_eq!(keys(&show), keys(&faults[0]), "{show}");
    assert_eq!(show["spec"], faults[0]["spec"]);
    let shorthand = agent.cli(&["show", &ids[0], "--json"]).json("show --json");
    assert_eq!(keys(&shorthand), keys(&show));

    let status = agent.cli(&["status", "--output", "json"]).json("status");
    let api_status = agent.api("/v1/status");
    assert_eq!(keys(&status), keys(&api_status), "{status} vs {api_status}");
    assert_eq!(status["active_faults"], 2, "{status}");
    assert_eq!(status["paused"], false, "{status}");
    assert_eq!(status["max_ttl"], "10m", "{status}");
    assert_eq!(status["default_ttl"], "1m", "{status}");
    assert_eq!(status["pid"], agent.child.id(), "{status}");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"), "{status}");
    let release = String::from_utf8_lossy(
        &Command::new("uname")
            .arg("-r")
            .output()
            .expect("uname")
            .stdout,
    )
    .trim()
    .to_owned();
    assert_eq!(status["kernel"], release.as_str(), "{status}");
    for s in ["attach_mode", "kernel", "version"] {
        assert!(status[s].is_string(), "{s}: {status}");
    }
    for n in ["uptime_seconds", "max_faults", "leftovers_removed_at_start"] {
        assert!(status[n].is_u64(), "{n}: {status}");
    }
    assert!(
        status["protected_ports"]
            .as_array()
            .is_some_and(|p| p.iter().all(Value::is_string)),
        "{status}"
    );

    let stopped = agent
        .cli(&["stop", "--all", "--output", "json"])
        .json("stop --all");
    let reverted = stopped["reverted"].as_array().expect("reverted");
    assert_eq!(reverted.len(), 2, "{stopped}");
    for r in reverted {
        assert_eq!(r["reason"], "stopped", "{r}");
        assert_eq!(r["errors"], Value::Array(Vec::new()), "{r}");
        assert_eq!(r["kind"], "loss", "{r}");
    }
    assert_eq!(ping_replies(&net, 3), 3, "the faults are gone");
    assert_eq!(
        agent.cli(&["list", "--json"]).json("list, empty")["faults"],
        Value::Array(Vec::new())
    );
}

#[test]
fn exit_codes_through_the_agent_and_the_wait_summary() {
    let test = "exit_codes_through_the_agent_and_the_wait_summary";
    if !testing::require_all(test, &[Feature::Root, Feature::Qdisc("htb")]) {
        return;
    }
    let net = VethPair::new(242);
    let dir = TempDir::new("chcli");
    let agent = Daemon::start(&net, &dir.0);

    // 3: a second shaping fault on the same interface and direction, refused naming the first.
    let rate = agent.inject(&["--rate", "1mbit", "--ttl", "5m"]);
    let rate_id = rate["id"].as_str().expect("id");
    let qdiscs = testing::tc_qdiscs(&net.a, &net.a_if);
    let mut args = vec!["inject", "--iface", &net.a_if];
    args.extend(["--rate", "2mbit", "--ttl", "5m", "--output", "json"]);
    agent.cli(&args).assert_error(
        3,
        &format!("conflicts with active fault {rate_id}"),
        "a second rate",
    );
    assert_eq!(
        testing::tc_qdiscs(&net.a, &net.a_if),
        qdiscs,
        "the conflict changed nothing"
    );
    // 3: paused (the pause reverts the rate fault).
    let paused = agent.cli(&["pause", "--output", "json"]).json("pause");
    assert_eq!(paused["paused"], true, "{paused}");
    assert_eq!(paused["reverted"][0]["id"], rate_id, "{paused}");
    let mut args = vec!["inject", "--iface", &net.a_if];
    args.extend(["--loss", "0.1", "--ttl", "1m"]);
    agent
        .cli(&args)
        .assert_error(3, "paused", "inject while paused");
    assert_eq!(agent.cli(&["resume"]).code, Some(0));

    // 2: refused by the agent (over its max_ttl), or naming no fault.
    let mut args = vec!["inject", "--iface", &net.a_if];
    args.extend(["--loss", "0.1", "--ttl", "2h", "--output", "json"]);
    agent
        .cli(&args)
        .assert_error(2, "exceeds the maximum of 10m", "ttl over max_ttl");
    agent
        .cli(&["stop", "f-00000001", "--output", "json"])
        .assert_error(2, "no active fault f-00000001", "stop an unknown fault");
    agent.cli(&["show", "f-00000001"]).assert_error(
        2,
        "no active fault f-00000001",
        "show an unknown fault",
    );

    // 5: the kernel lacks what the fault needs (HTTP 422 from the agent).
    if testing::require_absent("exit 5 through the agent", Feature::Qdisc("netem")) {
        let mut args = vec!["inject", "--iface", &net.a_if];
        args.extend(["--corrupt", "0.1", "--ttl", "1m"]);
        agent
            .cli(&args)
            .assert_error(5, "sch_netem", "corruption without sch_netem");
    }

    // `inject --wait --output json`: the summary in the foreground's shape, one object.
    let mut args = vec!["inject", "--iface", &net.a_if];
    args.extend([
        "--loss", "0.5", "--proto", "udp", "--ttl", "2s", "--wait", "--output", "json",
    ]);
    let t0 = Instant::now();
    let waited = agent.cli(&args);
    let summary = waited.json("inject --wait");
    assert!(t0.elapsed() >= Duration::from_secs(2), "{waited:?}");
    assert_summary_shape(&summary, "ttl");
    let id = summary["fault"]["id"].as_str().expect("id");
    assert!(
        waited.stderr.contains(&format!("injected {id}: "))
            && waited
                .stderr
                .contains(&format!("summary: {id} reverted (ttl)")),
        "the lines for people go to stderr: {waited:?}"
    );
    let elapsed = summary["elapsed_ms"].as_u64().expect("elapsed_ms");
    assert!((1_900..30_000).contains(&elapsed), "{summary}");
}

/// The summary of an inject that waited (docs/cli.md): `fault`, `report`, `elapsed_ms`.
fn assert_summary_shape(s: &Value, reason: &str) {
    assert_eq!(
        keys(s),
        BTreeSet::from(["fault", "report", "elapsed_ms"].map(str::to_owned)),
        "{s}"
    );
    assert_fault_shape(&s["fault"]);
    let r = &s["report"];
    assert_eq!(r["id"], s["fault"]["id"], "{s}");
    assert_eq!(r["reason"], reason, "{s}");
    assert_eq!(r["kind"], s["fault"]["kind"], "{s}");
    assert!(
        r["removed"].is_array() && r["errors"] == Value::Array(Vec::new()),
        "{s}"
    );
    assert!(s["elapsed_ms"].is_u64(), "{s}");
}

#[test]
fn a_foreground_inject_prints_one_json_summary() {
    let test = "a_foreground_inject_prints_one_json_summary";
    if !testing::require_all(test, &[Feature::Root, Feature::Tool("ping")]) {
        return;
    }
    let net = VethPair::new(243);
    let state = TempDir::new("chcli");
    let nowhere = state.0.join("no-agent.sock");
    let dest = format!("{}/32", net.b_ip);
    let args = [
        "--state-dir",
        state.str(),
        "--socket",
        nowhere.to_str().expect("utf-8"),
        "inject",
        "--iface",
        &net.a_if,
        "--loss",
        "1",
        "--proto",
        "icmp",
        "--dest",
        &dest,
        "--ttl",
        "4s",
        "--output",
        "json",
    ];

    // The dry run's plan: one object too, and nothing applied.
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let plan = cli(Some(&net.a), &nowhere, &dry).json("dry run");
    assert_eq!(
        keys(&plan),
        BTreeSet::from(["spec".to_owned(), "plan".to_owned()])
    );
    assert_eq!(plan["spec"]["ttl"], "4s", "{plan}");
    assert!(
        plan["plan"]
            .as_array()
            .is_some_and(|p| !p.is_empty() && p.iter().all(Value::is_string)),
        "{plan}"
    );
    assert!(testing::attached_programs(&net.a, &net.a_if).is_empty());

    let fg = AgentProcess::spawn(Some(&net.a), &bin(), &args);
    let id = fg.expect_injected_on_stderr();
    assert_eq!(
        ping_replies(&net, 5),
        0,
        "the fault drops every echo request"
    );
    let (status, stdout, stderr) = fg.wait(Duration::from_secs(30));
    assert!(status.success(), "{status}: {stdout:?} {stderr}");
    let summary: Value = serde_json::from_str(&stdout.join("\n"))
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {stdout:?}"));
    assert_summary_shape(&summary, "ttl");
    assert_eq!(summary["fault"]["id"], id.as_str(), "{summary}");
    let egress = &summary["report"]["counters"]["egress"];
    assert!(
        egress["dropped"].as_u64().is_some_and(|d| d >= 5)
            && egress["matched"] == egress["dropped"],
        "the summary counts the 5 drops: {summary}"
    );
    let elapsed = summary["elapsed_ms"].as_u64().expect("elapsed_ms");
    assert!((3_900..30_000).contains(&elapsed), "{summary}");
    assert!(
        stderr.contains(&format!("summary: {id} reverted (ttl) after")),
        "{stderr}"
    );
    assert!(testing::attached_programs(&net.a, &net.a_if).is_empty());
}

#[test]
fn exit_codes_without_an_agent() {
    let dir = TempDir::new("chcli");
    let nowhere = dir.0.join("no-agent.sock");
    // A socket file nothing listens on (an agent that was SIGKILLed leaves one).
    drop(std::os::unix::net::UnixListener::bind(dir.0.join("stale.sock")).expect("bind"));
    let stale = dir.0.join("stale.sock");

    // 64: the command line is malformed.
    for (args, want) in [
        (
            &["inject", "--loss", "0.1", "--bogus"][..],
            "unexpected argument '--bogus'",
        ),
        (
            &["list", "--json", "--output", "text"][..],
            "cannot be used with",
        ),
        (&["stop"][..], "required arguments were not provided"),
        (&[][..], "requires a subcommand"),
        (&["inject", "--ttl", "5s"][..], "nothing to inject"),
        (&["inject", "--loss", "0.1"][..], "--ttl is required"),
    ] {
        cli(None, &nowhere, args).assert_error(64, want, &format!("{args:?}"));
    }
    // 2: a value is refused, whichever layer checks it.
    for (args, want) in [
        (
            &["inject", "--loss", "2", "--ttl", "5s"][..],
            "2 is outside (0, 1]",
        ),
        (&["list", "--output", "yaml"][..], "invalid value 'yaml'"),
        (
            &["inject", "--loss", "0.1", "--ttl", "5s", "--dport", "7-3"][..],
            "7-3",
        ),
        (
            &["inject", "--loss-model", "gemodel:0,0", "--ttl", "5s"][..],
            "--loss-model",
        ),
    ] {
        cli(None, &nowhere, args).assert_error(2, want, &format!("{args:?}"));
    }
    // 4: no agent at the socket, whether no file or a stale one; JSON or not.
    for socket in [&nowhere, &stale] {
        for args in [
            &["list"][..],
            &["status", "--output", "json"][..],
            &["show", "f-00000001", "--json"][..],
            &["pause"][..],
        ] {
            cli(None, socket, args).assert_error(
                4,
                "cannot reach the agent",
                &format!("{args:?} at {}", socket.display()),
            );
        }
    }
    // 5: the foreground's engine finds the kernel lacks sch_netem.
    if testing::require("exit 5 in the foreground", Feature::Root)
        && testing::require_absent("exit 5 in the foreground", Feature::Qdisc("netem"))
    {
        let ns = NetNs::new("chcli");
        let state_dir = dir.0.join("state");
        cli(
            Some(&ns),
            &nowhere,
            &[
                "--state-dir",
                state_dir.to_str().expect("utf-8"),
                "inject",
                "--iface",
                "lo",
                "--corrupt",
                "0.1",
                "--ttl",
                "5s",
                "--output",
                "json",
            ],
        )
        .assert_error(5, "sch_netem", "corruption without sch_netem");
    }
}

/// Runs `sh -c line` with a terminal as stdin, stdout and stderr (`script`), and returns what
/// the terminal showed.
fn on_a_terminal(line: &str, no_color: Option<&str>) -> String {
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", line, "/dev/null"])
        .env("TERM", "xterm-256color")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("CHAOS_AGENT_LOG");
    match no_color {
        Some(v) => cmd.env("NO_COLOR", v),
        None => cmd.env_remove("NO_COLOR"),
    };
    let out = cmd.stdin(Stdio::null()).output().expect("run script");
    assert!(out.status.success(), "{line}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let test = "colour_only_on_a_terminal_and_never_with_no_color";
    if !testing::require_all(test, &[Feature::Root, Feature::Tool("script")]) {
        return;
    }
    let esc = |s: &str| s.contains('\u{1b}');
    let b = bin();
    let b = b.to_str().expect("utf-8");
    // clap's help (stdout) and the log (stderr: doctor loads programs, which logs at debug).
    for line in [
        format!("{b} inject --help"),
        format!("{b} --log debug doctor"),
    ] {
        let tty = on_a_terminal(&line, None);
        assert!(esc(&tty), "{line}: colour on a terminal: {tty:?}");
        // no-color.org: an empty NO_COLOR does not count.
        assert!(esc(&on_a_terminal(&line, Some(""))), "{line}: NO_COLOR=''");
        let plain = on_a_terminal(&line, Some("1"));
        assert!(!esc(&plain), "{line}: NO_COLOR=1 on a terminal: {plain:?}");
        assert!(
            plain.contains("Usage") || plain.contains("DEBUG"),
            "{plain:?}"
        );
    }
    // Not a terminal (pipes): nothing, help, log and the JSON alike.
    for args in [
        &["inject", "--help"][..],
        &["--log", "debug", "doctor"][..],
        &["doctor", "--output", "json"][..],
    ] {
        let o = Out::of(
            Command::new(b)
                .args(args)
                .env("TERM", "xterm-256color")
                .env_remove("NO_COLOR"),
        );
        assert_eq!(o.code, Some(0), "{args:?}: {o:?}");
        assert!(!esc(&o.stdout) && !esc(&o.stderr), "{args:?}: {o:?}");
    }
}

#[test]
fn doctor_json_is_a_list_of_checks() {
    if !testing::require("doctor_json_is_a_list_of_checks", Feature::Root) {
        return;
    }
    let o = Out::of(Command::new(bin()).args(["doctor", "--output", "json"]));
    let doctor = o.json("doctor");
    assert_eq!(
        keys(&doctor),
        BTreeSet::from(["checks".to_owned()]),
        "{doctor}"
    );
    let checks = doctor["checks"].as_array().expect("checks");
    for c in checks {
        assert_eq!(
            keys(c),
            BTreeSet::from(["name", "ok", "detail", "needed_for"].map(str::to_owned)),
            "{c}"
        );
        assert!(c["ok"].is_boolean() && c["name"].is_string(), "{c}");
    }
    let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    assert!(
        names.contains(&"kernel") && names.contains(&"root"),
        "{names:?}"
    );
    let root = checks.iter().find(|c| c["name"] == "root").expect("root");
    assert_eq!(root["ok"], true, "the test runs as root: {root}");
}

/// The headings of a `--help` and the long options under each (the lines that start with a
/// flag; descriptions that mention one do not count).
fn help_sections(help: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in help.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            out.push((line.trim_end_matches(':').to_owned(), Vec::new()));
        } else if let Some((_, opts)) = out.last_mut()
            && line.trim_start().starts_with('-')
            && let Some(long) = line
                .trim_start()
                .split([' ', ','])
                .find(|w| w.starts_with("--"))
        {
            opts.push(long.to_owned());
        }
    }
    out
}

#[test]
fn global_options_have_their_own_heading_in_every_help() {
    let global = ["--state-dir", "--socket", "--log"];
    let verbs: [&[&str]; 15] = [
        &[],
        &["inject"],
        &["run"],
        &["list"],
        &["show"],
        &["stop"],
        &["extend"],
        &["status"],
        &["pause"],
        &["resume"],
        &["cleanup"],
        &["doctor"],
        &["config", "check"],
        &["experiment", "run"],
        &["experiment", "list"],
    ];
    for verb in verbs {
        for flag in ["-h", "--help"] {
            let mut args = verb.to_vec();
            args.push(flag);
            let o = Out::of(Command::new(bin()).args(&args).env_remove("NO_COLOR"));
            assert_eq!(o.code, Some(0), "{args:?}: {o:?}");
            let sections = help_sections(&o.stdout);
            for (heading, opts) in &sections {
                for g in global {
                    assert_eq!(
                        opts.iter().any(|o| o == g),
                        heading == "Global options",
                        "{args:?}: {g} under {heading:?}: {}",
                        o.stdout
                    );
                }
            }
            let (last, opts) = sections
                .iter()
                .rfind(|(_, opts)| !opts.is_empty())
                .expect("options");
            assert_eq!(last, "Global options", "{args:?}: the last heading");
            assert_eq!(opts, &global, "{args:?}");
            assert!(
                o.stdout.contains("Exit codes: 0 ok, 1 failed, 2 refused")
                    && o.stdout.contains("64 usage"),
                "{args:?}: the footer: {}",
                o.stdout
            );
        }
    }
    // inject: general options first, then output, the fault types, the globals last.
    let o = Out::of(Command::new(bin()).args(["inject", "--help"]));
    let headings: Vec<String> = help_sections(&o.stdout)
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    let at = |h: &str| {
        headings
            .iter()
            .position(|x| x == h)
            .unwrap_or_else(|| panic!("no heading {h:?}: {headings:?}"))
    };
    assert!(
        at("Options") < at("Output")
            && at("Output") < at("Loss")
            && at("Stressors (built in; killed at the end, and with the agent)")
                < at("Global options")
            && at("Global options") == headings.len() - 1,
        "{headings:?}"
    );
    for verb in ["list", "show", "status", "doctor", "inject"] {
        let o = Out::of(Command::new(bin()).args([verb, "--help"]));
        let sections = help_sections(&o.stdout);
        let output = sections
            .iter()
            .find(|(h, _)| h == "Output")
            .unwrap_or_else(|| panic!("{verb}: no Output heading: {}", o.stdout));
        assert_eq!(output.1, ["--output", "--json"], "{verb}");
    }
}
