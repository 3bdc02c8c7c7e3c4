//! The Prometheus side of the agent, judged by Prometheus' own tools: `promtool check metrics`
//! on the exposition before, during and after faults; `promtool check rules` and `promtool test
//! rules` on the alerting rules in `deploy/prometheus/`; and a real Prometheus scraping a daemon
//! with faults active, asked through its HTTP API for every target of the Grafana dashboard in
//! `deploy/grafana/` and for the alerts the rules raise. And scrapes while the API keeps the
//! registry busy: every one lists every active fault, and the counters never go down.
//!
//! Needs root, promtool and prometheus (`cargo xtask setup` installs Debian's); run with
//! `cargo test -p chaos-agent --test prometheus -- --test-threads=1`. Host only: the VM guest
//! has neither tool, and the rest is user space (`xtask/src/vm/lanes.rs`).
#![allow(
    clippy::missing_panics_doc,
    reason = "test helpers panic with context by design"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chaos_testing::dns::{Client, Dnsmasq, PROBE_NAME, Zone};
use chaos_testing::{self as testing, ControllerCgroup, Feature, TempDir, VethPair};
use serde_json::Value;

fn bin() -> PathBuf {
    testing::agent_bin(env!("CARGO_BIN_EXE_chaos-agent"))
}

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Runs `bash -c script` and returns (exit code, stdout + stderr).
fn sh_rc(ns: &testing::NetNs, script: &str) -> (i32, String) {
    let o = ns
        .command("bash")
        .args(["-c", script])
        .output()
        .expect("sh");
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn deploy_rules_pass_promtool_check_and_unit_tests() {
    let test = "deploy_rules_pass_promtool_check_and_unit_tests";
    if !testing::require(test, Feature::Tool("promtool")) {
        return;
    }
    let dir = deploy().join("prometheus");
    let rules = dir.join("chaos-agent.rules.yml");
    let o = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("promtool");
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    let alerts: Vec<String> = std::fs::read_to_string(&rules)
        .expect("rules")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: ").map(str::to_owned))
        .collect();
    assert!(o.status.success(), "promtool check rules: {out}{err}");
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "{out}"
    );
    assert!(err.trim().is_empty(), "promtool warned: {err}");
    // promtool resolves rule_files relative to the test file.
    let tests = dir.join("chaos-agent.rules.test.yml");
    let o = Command::new("promtool")
        .arg("test")
        .arg("rules")
        .arg(&tests)
        .output()
        .expect("promtool");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "promtool test rules: {out}");
    assert!(out.contains("SUCCESS") && !out.contains("FAILED"), "{out}");
    // Every alert is tested both firing (a non-empty exp_alerts) and quiet (an empty one).
    let spec = std::fs::read_to_string(&tests).expect("tests");
    let lines: Vec<&str> = spec.lines().map(str::trim).collect();
    for alert in &alerts {
        let (mut fires, mut quiet) = (0, 0);
        for (i, l) in lines.iter().enumerate() {
            if *l == format!("alertname: {alert}") {
                match lines.get(i + 1) {
                    Some(&"exp_alerts: []") => quiet += 1,
                    Some(&"exp_alerts:") => fires += 1,
                    other => panic!("{alert}: unexpected {other:?} after its alertname"),
                }
            }
        }
        assert!(
            fires > 0 && quiet > 0,
            "{alert}: tested firing {fires} and quiet {quiet} times"
        );
    }
    eprintln!(
        "promtool: {} alerts, each tested firing and quiet",
        alerts.len()
    );
}

/// A daemon in namespace `a`, started with `nsenter --net` rather than `ip netns exec`: the
/// limit fault needs the host's /sys (its cgroup mounts), which `ip netns exec` replaces.
struct Daemon<'a> {
    net: &'a VethPair,
    dir: &'a TempDir,
    mport: u16,
    child: Option<Child>,
}

impl<'a> Daemon<'a> {
    fn socket(&self) -> PathBuf {
        self.dir.0.join("agent.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("agent.log")).unwrap_or_default()
    }

    fn start(net: &'a VethPair, dir: &'a TempDir, mport: u16) -> Self {
        let mut d = Self {
            net,
            dir,
            mport,
            child: None,
        };
        d.spawn();
        d
    }

    fn nsenter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.net.a.path().display()))
            .arg("--")
            .arg(bin());
        c
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("agent.log"))
            .expect("log");
        std::fs::write(self.dir.0.join("config.toml"), "").expect("config");
        let child = self
            .nsenter()
            .arg("--state-dir")
            .arg(self.dir.0.join("state"))
            .arg("--socket")
            .arg(self.socket())
            .arg("run")
            .arg("--config")
            .arg(self.dir.0.join("config.toml"))
            .args(["--log-format", "json", "--attach-mode", "netlink"])
            .args(["--metrics-addr", &format!("127.0.0.1:{}", self.mport)])
            .env("CHAOS_AGENT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn agent");
        self.child = Some(child);
        let t0 = Instant::now();
        while !self.cli(&["status"]).status.success() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "agent did not come up: {}",
                self.log()
            );
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("agent exited at start ({st}): {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.nsenter()
            .args(args)
            .env("CHAOS_AGENT_SOCKET", self.socket())
            .output()
            .expect("cli")
    }

    /// Injects through the daemon; returns the fault's id.
    fn inject(&self, args: &[&str]) -> String {
        let mut v = vec!["inject"];
        v.extend_from_slice(args);
        let o = self.cli(&v);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "inject {args:?}: {out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        out.strip_prefix("injected ")
            .and_then(|s| s.split(':').next())
            .unwrap_or_else(|| panic!("unexpected inject output {out:?}"))
            .to_owned()
    }

    fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `curl` of the metrics endpoint with extra curl arguments.
    fn curl(&self, extra: &str) -> String {
        self.net.a.sh(&format!(
            "curl -sf {extra} http://127.0.0.1:{}/metrics",
            self.mport
        ))
    }

    /// `promtool check metrics` on what curl (Accept: */*) gets: the classic text.
    fn assert_promtool_clean(&self, when: &str) {
        let (rc, out) = sh_rc(
            &self.net.a,
            &format!(
                "set -o pipefail; curl -sf http://127.0.0.1:{}/metrics | promtool check metrics",
                self.mport
            ),
        );
        assert!(
            rc == 0 && out.trim().is_empty(),
            "promtool check metrics {when}: rc {rc}: {out}\n{}",
            self.curl("")
        );
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log());
        }
        self.sigkill();
        let _ = Command::new(bin())
            .arg("--state-dir")
            .arg(self.dir.0.join("state"))
            .arg("cleanup")
            .output();
    }
}

/// Kills a helper process however the test ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Background traffic until dropped: each loop runs on its own thread.
struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn new() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        }
    }

    fn every(&mut self, pause: Duration, mut f: impl FnMut() + Send + 'static) {
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                f();
                std::thread::sleep(pause);
            }
        }));
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn free_port_in(ns: &testing::NetNs) -> u16 {
    testing::in_netns(ns, || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port()
    })
}

/// A query of the Prometheus HTTP API: `data.result` of an instant query.
fn query(ns: &testing::NetNs, pport: u16, q: &str) -> Option<Vec<Value>> {
    let out = ns
        .command("curl")
        .args(["-s", "--get", "--data-urlencode"])
        .arg(format!("query={q}"))
        .arg(format!("http://127.0.0.1:{pport}/api/v1/query"))
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    assert_ne!(
        v["status"], "error",
        "Prometheus refused {q:?}: {}",
        v["error"]
    );
    v["data"]["result"].as_array().cloned()
}

/// The values of an instant vector's samples that are numbers (not NaN).
fn finite_values(result: &[Value]) -> Vec<f64> {
    result
        .iter()
        .filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .collect()
}

/// Every target expression of the dashboard, with its panel's title, Grafana's variables
/// replaced as Grafana would for one agent selected and a 1 s scrape interval.
fn dashboard_targets(instance: &str) -> Vec<(String, String)> {
    let path = deploy().join("grafana/chaos-agent.json");
    let d: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("json");
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(
        vars,
        ["datasource", "instance"],
        "the variables this test fills"
    );
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().expect("title").to_owned();
        let targets = p["targets"].as_array().map_or(&[][..], Vec::as_slice);
        assert!(!targets.is_empty(), "panel {title:?} has no target");
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "{title}: every target uses the dashboard's data source variable"
            );
            let expr = t["expr"].as_str().expect("expr");
            // $__rate_interval is max(4 x scrape interval, interval + scrape interval): with
            // 1 s scrapes, 4 s would do; 30 s spans enough samples for a steady rate.
            let q = expr
                .replace("$__rate_interval", "30s")
                .replace("$__range", "1h")
                .replace("$__interval", "5s")
                .replace("${instance}", instance)
                .replace("$instance", instance);
            assert!(!q.contains('$'), "{title}: unreplaced variable in {q}");
            out.push((title.clone(), q));
        }
    }
    out
}

#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn dashboard_and_alerts_work_on_a_real_prometheus() {
    let test = "dashboard_and_alerts_work_on_a_real_prometheus";
    if !testing::require_all(
        test,
        &[
            Feature::Root,
            Feature::Tool("promtool"),
            Feature::Tool("prometheus"),
            Feature::Tool("dnsmasq"),
        ],
    ) {
        return;
    }
    let Some((_, cpu_root)) = testing::controller_root("cpu") else {
        panic!("no cpu controller in /sys/fs/cgroup or /proc/self/mounts");
    };
    let t_start = Instant::now();
    let net = VethPair::new(235);
    let dir = TempDir::new("chprom");
    let mport = free_port_in(&net.a);
    let mut agent = Daemon::start(&net, &dir, mport);

    // Before any fault: the default is the classic text, and it is clean.
    let ct = agent.curl("-o /dev/null -w '%{content_type}'");
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8", "curl's */*");
    agent.assert_promtool_clean("before any fault");
    // What Prometheus 2.42 asks for (it prefers OpenMetrics) gets OpenMetrics.
    let prom_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let ct = agent.curl(&format!(
        "-H 'Accept: {prom_accept}' -o /dev/null -w '%{{content_type}}'"
    ));
    assert_eq!(
        ct, "application/openmetrics-text; version=1.0.0; charset=utf-8",
        "Prometheus' Accept"
    );

    // A real Prometheus scraping every second from here on, with the shipped rules: the
    // histogram panels look at increases over the range, which need scrapes from before.
    let pport = free_port_in(&net.a);
    let pdir = dir.0.join("prom");
    std::fs::create_dir_all(pdir.join("data")).expect("mkdir");
    std::fs::write(
        pdir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: chaos-agent\n    static_configs:\n      - targets: ['127.0.0.1:{mport}']\n",
            deploy()
                .join("prometheus/chaos-agent.rules.yml")
                .display()
        ),
    )
    .expect("write");
    let prom = net
        .a
        .command("prometheus")
        .arg(format!(
            "--config.file={}",
            pdir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            pdir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{pport}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(pdir.join("prom.log")).expect("log"))
        .spawn()
        .expect("prometheus");
    let _prom = KillOnDrop(prom);
    let prom_log = || std::fs::read_to_string(pdir.join("prom.log")).unwrap_or_default();
    let t0 = Instant::now();
    while query(&net.a, pport, "up{job=\"chaos-agent\"} == 1").is_none_or(|r| r.is_empty()) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "Prometheus never scraped the agent: {}",
            prom_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A dead agent's leftovers: a fault on the netlink path (its filter outlives the process),
    // SIGKILL, and a new agent that finds it at start.
    agent.inject(&[
        "--iface", &net.a_if, "--loss", "0.1", "--proto", "udp", "--dport", "9", "--ttl", "10m",
    ]);
    agent.sigkill();
    agent.spawn();

    // Faults of every kind this host runs, with traffic for each.
    let mut traffic = Traffic::new();
    agent.inject(&[
        "--iface", &net.a_if, "--loss", "50%", "--proto", "icmp", "--ttl", "10m",
    ]);
    let ping = net
        .a
        .command("ping")
        .args(["-q", "-i", "0.05", "-w", "600", &net.b_ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ping");
    let _ping = KillOnDrop(ping);

    let zone = Zone::new("test");
    let _dnsmasq = Dnsmasq::start(&net.b, &[&net.b_ip], 53, &zone);
    let mut dns = Client::new(&net.a, &net.b_ip, 53);
    dns.wait_ready(Duration::from_secs(10));
    agent.inject(&[
        "--iface",
        &net.a_if,
        "--direction",
        "ingress",
        "--dns",
        "servfail",
        "--dns-domain",
        "probe.chaos",
        "--ttl",
        "10m",
    ]);
    traffic.every(Duration::from_millis(100), move || {
        let _ = dns.query(PROBE_NAME, "A", Duration::from_millis(300));
    });

    let refused_port = 7;
    agent.inject(&[
        "--refuse",
        "--dest",
        &net.b_ip,
        "--dport",
        &refused_port.to_string(),
        "--ttl",
        "10m",
    ]);
    // connect()s from the agent's namespace (refuse faults act there only).
    let a_connects = net
        .a
        .command("bash")
        .args([
            "-c",
            &format!(
                "while :; do (exec 3<>/dev/tcp/{}/{refused_port}) 2>/dev/null; sleep 0.2; done",
                net.b_ip
            ),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("connect loop");
    let _a_connects = KillOnDrop(a_connects);

    let mut cg = ControllerCgroup::new(&cpu_root, "chprom");
    cg.spawn("while :; do :; done");
    agent.inject(&["--cpu-limit", "0.2", "--cgroup", &cg.path, "--ttl", "10m"]);

    // One that ends by its TTL, for the lateness histogram and the reverted counter.
    agent.inject(&[
        "--iface", &net.a_if, "--loss", "0.1", "--proto", "udp", "--dport", "9", "--ttl", "1s",
    ]);

    // And one the engine refuses (no such cgroup), for the refusals by reason.
    let o = agent.cli(&[
        "inject",
        "--cpu-limit",
        "0.2",
        "--cgroup",
        "/chaos-no-such-cgroup",
        "--ttl",
        "1m",
    ]);
    assert!(!o.status.success(), "a missing cgroup is refused");

    agent.assert_promtool_clean("with faults active");

    // Every panel's target returns data: polled, since a rate needs two scrapes in its window
    // after the first effect.
    let instance = format!("127.0.0.1:{mport}");
    let targets = dashboard_targets(&instance);
    let t0 = Instant::now();
    loop {
        let empty: Vec<&(String, String)> = targets
            .iter()
            .filter(|(_, q)| query(&net.a, pport, q).is_none_or(|r| finite_values(&r).is_empty()))
            .collect();
        if empty.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "{} of {} dashboard targets return no data after {:?}: {empty:#?}\nPrometheus log: {}",
            empty.len(),
            targets.len(),
            t0.elapsed(),
            prom_log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "MEASURED all {} dashboard targets return data {:?} after the faults were injected",
        targets.len(),
        t0.elapsed()
    );
    // And they show what happened, not just zeros.
    for (q, what) in [
        (
            format!("sum(rate(chaos_agent_packets_dropped_total{{instance=\"{instance}\"}}[30s]))"),
            "packets dropped",
        ),
        (
            format!(
                "sum(rate(chaos_agent_dns_answers_rewritten_total{{instance=\"{instance}\",rcode=\"servfail\"}}[30s]))"
            ),
            "DNS answers rewritten",
        ),
        (
            format!("sum(chaos_agent_connects_refused_total{{instance=\"{instance}\"}})"),
            "connects refused",
        ),
        (
            format!(
                "sum(chaos_agent_limit_effects_total{{instance=\"{instance}\",measure=\"cpu_throttled_seconds\"}})"
            ),
            "CPU throttled",
        ),
        (
            format!("sum(chaos_agent_leftovers_removed_total{{instance=\"{instance}\"}})"),
            "leftovers removed at start",
        ),
        (
            format!("sum(chaos_agent_faults_active{{instance=\"{instance}\"}})"),
            "active faults",
        ),
    ] {
        let v = query(&net.a, pport, &q)
            .map(|r| finite_values(&r))
            .unwrap_or_default();
        assert!(v.first().is_some_and(|v| *v > 0.0), "{what}: {q} = {v:?}");
        eprintln!("prometheus: {what} = {}", v[0]);
    }

    // The rules, on the real metrics: the leftovers alert fires, the others stay quiet.
    let t0 = Instant::now();
    let alerts = loop {
        let out = net.a.sh(&format!(
            "curl -s http://127.0.0.1:{pport}/api/v1/alerts || true"
        ));
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        let alerts: Vec<(String, String)> = v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                    a["state"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        if alerts.contains(&(
            "ChaosAgentLeftoversFoundAtStart".to_owned(),
            "firing".to_owned(),
        )) {
            break alerts;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "ChaosAgentLeftoversFoundAtStart never fired: {alerts:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // (A pending ChaosAgentDown from the SIGKILL's failed scrape may still be listed: it
    // needs 2 minutes to fire.)
    let firing: Vec<&str> = alerts
        .iter()
        .filter(|(_, state)| state == "firing")
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(
        firing,
        ["ChaosAgentLeftoversFoundAtStart"],
        "only the leftovers alert fires: {alerts:?}"
    );

    // After the faults: the classic text is still clean and no per-fault series is left.
    drop(traffic);
    let o = agent.cli(&["stop", "--all"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    agent.assert_promtool_clean("after the faults ended");
    let exposition = agent.curl("");
    assert!(
        !exposition.contains("chaos_agent_fault_start_time_seconds{"),
        "{exposition}"
    );
    assert!(
        exposition
            .lines()
            .filter(|l| l.starts_with("chaos_agent_faults_active{"))
            .all(|l| l.ends_with(" 0")),
        "{exposition}"
    );
    eprintln!("MEASURED the scenario took {:?}", t_start.elapsed());
}

/// One HTTP/1.0 GET over a fresh connection; returns the body.
fn http_get(stream: impl std::io::Read + std::io::Write, path: &str) -> String {
    let mut s = stream;
    write!(s, "GET {path} HTTP/1.0\r\nHost: agent\r\n\r\n").expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    out.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// The value of each sample line of `name` (any labels), summed.
fn sum_of(text: &str, name: &str) -> (usize, f64) {
    let samples: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (samples.len(), samples.iter().sum())
}

#[test]
fn scrapes_during_busy_api_keep_every_series_and_counters_monotonic() {
    let test = "scrapes_during_busy_api_keep_every_series_and_counters_monotonic";
    if !testing::require(test, Feature::Root) {
        return;
    }
    let net = VethPair::new(236);
    let dir = TempDir::new("chprom");
    let mport = free_port_in(&net.a);
    let agent = Daemon::start(&net, &dir, mport);
    let faults = 4;
    for i in 0..faults {
        agent.inject(&[
            "--iface",
            &net.a_if,
            "--loss",
            "0.2",
            "--proto",
            "icmp",
            "--dest",
            &format!("{}/32", net.b_ip),
            "--ttl",
            &format!("{}m", 10 + i),
        ]);
    }
    let ping = net
        .a
        .command("ping")
        .args(["-q", "-i", "0.01", "-w", "120", &net.b_ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ping");
    let _ping = KillOnDrop(ping);
    // Two clients listing the faults as fast as the API answers: each list holds the
    // registry while it reads every fault's counters.
    let mut load = Traffic::new();
    for _ in 0..2 {
        let socket = agent.socket();
        load.every(Duration::ZERO, move || {
            if let Ok(s) = std::os::unix::net::UnixStream::connect(&socket) {
                let _ = http_get(s, "/v1/faults");
            }
        });
    }
    let scrapes = 400;
    let texts: Vec<String> = testing::in_netns(&net.a, move || {
        (0..scrapes)
            .map(|_| {
                let s = std::net::TcpStream::connect(("127.0.0.1", mport)).expect("connect");
                http_get(s, "/metrics")
            })
            .collect()
    });
    drop(load);
    let mut last_seen = 0.0;
    for (i, text) in texts.iter().enumerate() {
        let (n, _) = sum_of(text, "chaos_agent_fault_start_time_seconds");
        assert_eq!(n, faults, "scrape {i} lists {n} faults:\n{text}");
        let (_, seen) = sum_of(text, "chaos_agent_packets_seen_total");
        assert!(
            seen >= last_seen,
            "scrape {i}: packets seen went down from {last_seen} to {seen}"
        );
        last_seen = seen;
    }
    assert!(last_seen > 0.0, "no packet was seen");
    eprintln!(
        "MEASURED {scrapes} scrapes during API load: every one listed {faults} faults, packets seen monotonic up to {last_seen}"
    );
}
