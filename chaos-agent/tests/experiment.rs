//! Experiments, end to end: the real binary running an experiment file against a real HTTP
//! service in another namespace. Judged from outside the agent: the test's own connects from
//! the agent's namespace see when a refusal begins and ends (its errno tells a refused connect
//! from a closed port), and the report files are read as a user would read them.

use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chaos_testing::{AgentProcess, Feature, NetNs, TempDir, VethPair, in_vm, require, tcp_listen};

fn bin() -> PathBuf {
    chaos_testing::agent_bin(env!("CARGO_BIN_EXE_chaos-agent"))
}

/// Time under the VM's emulated clock runs about four times slower.
fn k() -> f64 {
    if in_vm() { 4.0 } else { 1.0 }
}

/// `ms` milliseconds, scaled for the VM, as a TOML duration string.
fn d(ms: u64) -> String {
    format!("{}ms", (ms as f64 * k()) as u64)
}

/// What one connect attempt from the observer got: the time and the errno (0: connected).
type Seen = Vec<(Instant, i32)>;

/// Connects to each of `targets` from `ns` every 20 ms until `stop`, recording every outcome.
fn observe(
    ns: &NetNs,
    targets: Vec<String>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Seen>> {
    let path = ns.path();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let addrs: Vec<std::net::SocketAddr> =
            targets.iter().map(|t| t.parse().expect("addr")).collect();
        let mut seen = vec![Vec::new(); addrs.len()];
        while !stop.load(Ordering::Relaxed) {
            for (i, a) in addrs.iter().enumerate() {
                let t = Instant::now();
                // A timeout has no errno: -1 (under the guest's emulation one may come now and
                // then, which says nothing of the agent).
                let errno = match TcpStream::connect_timeout(a, Duration::from_millis(200)) {
                    Ok(_) => 0,
                    Err(e) => e.raw_os_error().unwrap_or(-1),
                };
                seen[i].push((t, errno));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        seen
    })
}

/// The first and last time `errno` was seen.
fn span(seen: &Seen, errno: i32) -> Option<(Instant, Instant)> {
    let hits: Vec<Instant> = seen
        .iter()
        .filter(|(_, e)| *e == errno)
        .map(|(t, _)| *t)
        .collect();
    Some((*hits.first()?, *hits.last()?))
}

fn write_file(dir: &TempDir, name: &str, text: &str) -> String {
    let p = dir.0.join(name);
    std::fs::write(&p, text).expect("write experiment");
    p.to_str().expect("utf-8").to_owned()
}

/// The one JSON report in `dir`.
fn report(dir: &std::path::Path) -> serde_json::Value {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("report dir")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].with_extension("md").exists(),
        "no Markdown report beside {}",
        files[0].display()
    );
    let svg = std::fs::read_to_string(files[0].with_extension("svg")).expect("the timeline");
    assert!(svg.starts_with("<svg ") && svg.contains("<circle"), "{svg}");
    serde_json::from_str(&std::fs::read_to_string(&files[0]).expect("read")).expect("json")
}

/// A backend that starts refusing connects breaks the API probe: the stop condition trips,
/// every fault of the experiment is reverted at once (seen from outside: the refusals end
/// within one window plus a probe interval and the revert, not at the step's 30 s), the probe
/// recovers, and the report says `aborted`, why, and the time to recover.
#[test]
fn a_refusing_backend_trips_the_stop_condition_and_every_fault_goes_at_once() {
    let test = "a_refusing_backend_trips_the_stop_condition_and_every_fault_goes_at_once";
    if !require(test, Feature::Root) {
        return;
    }
    let pair = VethPair::new(231);
    let svc = format!("{}:8080", pair.b_ip);
    chaos_testing::serve_http(&pair.b, &svc);
    let files = TempDir::new("chexp");
    let reports = TempDir::new("chexp");
    let state = TempDir::new("chexp");
    let file = write_file(
        &files,
        "refuse.toml",
        &format!(
            r#"
title = "the API survives its backend refusing"
[steady]
before = "{before}"
after = "{after}"

[[probe]]
name = "api"
interval = "{interval}"
timeout = "{timeout}"
http = {{ url = "http://{svc}/health", body_contains = "ok" }}

[[step]]
name = "backend refuses"
duration = "30s"
inject = ["--refuse", "--errno", "EHOSTUNREACH", "--dport", "8080"]

[[step]]
name = "unrelated loss"
duration = "30s"
inject = ["--loss", "0.5", "--iface", "{iface}", "--proto", "udp", "--dport", "9999"]

[[stop.when]]
probe = "api"
min_success = 0.5
window = "{window}"
"#,
            before = d(1000),
            after = d(1500),
            interval = d(200),
            timeout = d(150),
            window = d(600),
            iface = pair.a_if,
        ),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = observe(&pair.a, vec![svc.clone()], stop.clone());
    let agent = AgentProcess::spawn(
        Some(&pair.a),
        &bin(),
        &[
            "--state-dir",
            state.str(),
            "experiment",
            "run",
            &file,
            "--report-dir",
            reports.str(),
        ],
    );
    let (status, out, err) = agent.wait(Duration::from_secs(90));
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().expect("observer");
    // The run as a user sees it: the live view (stderr), then the verdict.
    eprintln!("{err}{}", out.join("\n"));
    assert_eq!(status.code(), Some(1), "{out:?} {err}");
    let verdict = out.join("\n");
    assert!(
        verdict.contains("aborted") && verdict.contains("stop condition"),
        "{verdict}"
    );
    let (first, last) =
        span(&seen[0], libc::EHOSTUNREACH).unwrap_or_else(|| panic!("no refusal seen: {err}"));
    let refused_for = last.duration_since(first).as_secs_f64();
    eprintln!(
        "MEASURED refusal seen from outside for {refused_for:.2} s before the abort reverted it"
    );
    // The window, a check's interval and timeout, and the revert.
    let bound = k() * (0.6 + 0.2 + 0.15) + 1.0;
    assert!(
        refused_for <= bound,
        "refused for {refused_for:.2} s (bound {bound:.2} s)"
    );
    let after: Vec<i32> = seen[0]
        .iter()
        .filter(|(t, _)| *t > last)
        .map(|(_, e)| *e)
        .collect();
    // Traffic flows again: no refusal after the last one (by construction), and the
    // connects succeed (a rare observer timeout under emulation aside).
    let ok = after.iter().filter(|e| **e == 0).count();
    assert!(
        !after.is_empty() && ok * 20 >= after.len() * 19,
        "after the abort: {after:?}"
    );

    let r = report(&reports.0);
    assert_eq!(r["outcome"], "aborted", "{r:#}");
    let reason = r["reason"].as_str().expect("reason");
    assert!(reason.contains("probe api passed"), "{reason}");
    assert_eq!(r["steps"][0]["outcome"], "stopped");
    assert_eq!(r["steps"][1]["outcome"], "stopped");
    let p = &r["probes"][0];
    assert_eq!(p["before"]["availability"], 1.0);
    // The checks of the method before the fault acted passed (the first inject loads and
    // attaches the connect programs: 0.1 s here, 1.6 s under the guest's emulation); of the
    // three in the last window at least two failed, or the condition would not have tripped.
    let during = &p["during"];
    let (checks, passed) = (
        during["checks"].as_u64().expect("checks"),
        during["passed"].as_u64().expect("passed"),
    );
    assert!(checks - passed >= 2, "{p:#}");
    assert_eq!(p["after"]["availability"], 1.0, "{p:#}");
    assert!(p["mttr_s"].as_f64().is_some_and(|m| m < 1.0), "{p:#}");
    // The timeline shows the failed checks, and the faults behind them.
    let svg = std::fs::read_dir(&reports.0)
        .expect("dir")
        .filter_map(|e| Some(e.ok()?.path()))
        .find(|p| p.extension().is_some_and(|x| x == "svg"))
        .map(|p| std::fs::read_to_string(p).expect("svg"))
        .expect("an SVG timeline");
    assert!(svg.contains("class=\"fail\"") && svg.matches("class=\"fault\"").count() == 2);
}

/// Two parallel steps and a third after the first: seen from outside (each step refuses its own
/// port with EHOSTUNREACH, which a closed port never returns), the parallel ones start
/// together and the third starts half a second after the first ended, each lasting its
/// duration, within 100 ms (400 in the VM). The API probe never fails: the experiment passes.
#[test]
fn steps_run_at_their_offsets_and_an_untouched_service_passes() {
    let test = "steps_run_at_their_offsets_and_an_untouched_service_passes";
    if !require(test, Feature::Root) {
        return;
    }
    let pair = VethPair::new(232);
    let svc = format!("{}:8080", pair.b_ip);
    chaos_testing::serve_http(&pair.b, &svc);
    let files = TempDir::new("chexp");
    let reports = TempDir::new("chexp");
    let state = TempDir::new("chexp");
    let file = write_file(
        &files,
        "offsets.toml",
        &format!(
            r#"
title = "offsets"
[steady]
before = "{before}"
after = "{before}"

[[probe]]
name = "api"
interval = "{interval}"
timeout = "{interval}"
http = {{ url = "http://{svc}/" }}

[[step]]
name = "one"
duration = "{one}"
inject = "--refuse --errno EHOSTUNREACH --dport 9001"

[[step]]
name = "two"
duration = "{two}"
inject = "--refuse --errno EHOSTUNREACH --dport 9002"

[[step]]
name = "three"
after = "one"
at = "{gap}"
duration = "{one}"
inject = "--refuse --errno EHOSTUNREACH --dport 9003"

[[stop.when]]
probe = "api"
min_success = 0.9
window = "{interval}"
"#,
            before = d(500),
            interval = d(250),
            one = d(1000),
            two = d(1500),
            gap = d(500),
        ),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ports: Vec<String> = [9001, 9002, 9003]
        .iter()
        .map(|p| format!("{}:{p}", pair.b_ip))
        .collect();
    let watcher = observe(&pair.a, ports, stop.clone());
    let agent = AgentProcess::spawn(
        Some(&pair.a),
        &bin(),
        &[
            "--state-dir",
            state.str(),
            "experiment",
            "run",
            &file,
            "--report-dir",
            reports.str(),
        ],
    );
    let (status, out, err) = agent.wait(Duration::from_secs(90));
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().expect("observer");
    assert!(status.success(), "{out:?} {err}");
    let spans: Vec<(Instant, Instant)> = seen
        .iter()
        .map(|s| span(s, libc::EHOSTUNREACH).unwrap_or_else(|| panic!("a step never acted: {err}")))
        .collect();
    let secs = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64();
    let (one, two, three) = (spans[0], spans[1], spans[2]);
    let together = secs(one.0.min(two.0), one.0.max(two.0));
    let gap = secs(one.1, three.0);
    let lengths = [
        secs(one.0, one.1),
        secs(two.0, two.1),
        secs(three.0, three.1),
    ];
    eprintln!(
        "MEASURED parallel starts {:.0} ms apart; third started {:.0} ms after the first ended; lasted {:.2}/{:.2}/{:.2} s",
        together * 1e3,
        gap * 1e3,
        lengths[0],
        lengths[1],
        lengths[2]
    );
    let tol = 0.1 * k();
    // The observer samples every ~20 ms (three connects per round): its own grain is added.
    let grain = 0.06;
    assert!(
        together <= tol + grain,
        "parallel steps {together:.3} s apart"
    );
    assert!((gap - 0.5 * k()).abs() <= tol + grain, "gap {gap:.3} s");
    for (len, want) in lengths.iter().zip([1.0, 1.5, 1.0]) {
        assert!(
            (len - want * k()).abs() <= tol + grain,
            "lasted {len:.3} s, planned {want} s"
        );
    }
    let r = report(&reports.0);
    assert_eq!(r["outcome"], "passed", "{r:#}");
    assert_eq!(r["probes"][0]["during"]["availability"], 1.0);
    assert_eq!(r["probes"][0]["mttr_s"], 0.0);
    for s in r["steps"].as_array().expect("steps") {
        assert_eq!(s["outcome"], "ttl", "{s:#}");
    }
}

/// Bad files are refused before anything runs, each naming what is wrong (and, for the
/// parser's errors, the line).
#[test]
fn bad_experiment_files_are_refused_before_anything_runs() {
    let test = "bad_experiment_files_are_refused_before_anything_runs";
    if !require(test, Feature::Root) {
        return;
    }
    let files = TempDir::new("chexp");
    let state = TempDir::new("chexp");
    let good = r#"
title = "t"
[[probe]]
name = "api"
timeout = "500ms"
tcp = { address = "127.0.0.1:1" }
[[step]]
name = "s"
duration = "20s"
inject = "--loss 0.1 --iface lo"
"#;
    let cases = [
        (good.replace("title", "colour = 1\ntitle"), "unknown field"),
        (good.replace("timeout = \"500ms\"\n", ""), "timeout"),
        (
            good.replace("--iface lo", "--iface chaos-none0"),
            "step \"s\"",
        ),
        (good.replace("--loss 0.1", "--loss 7"), "step \"s\""),
        (
            format!(
                "{}\n[stop]\nmax_duration = \"3h\"\n",
                good.replace("20s", "2h")
            ),
            "step \"s\"",
        ),
    ];
    for (text, want) in cases {
        let file = write_file(&files, "bad.toml", &text);
        let out = std::process::Command::new(bin())
            .args(["--state-dir", state.str(), "experiment", "run", &file])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{want}: {err}");
        assert!(err.contains(want), "wanted {want:?} in {err}");
        assert!(
            !state.0.join("experiments").exists(),
            "a refused file wrote a report"
        );
    }
    let unknown = write_file(
        &files,
        "bad.toml",
        &good.replace("title", "colour = 1\ntitle"),
    );
    let out = std::process::Command::new(bin())
        .args(["experiment", "validate", &unknown])
        .output()
        .expect("validate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "the parser names the line: {err}");

    // A steady state that does not hold: nothing is injected, and no recovery is waited for.
    let ns = NetNs::new("chexp");
    let reports = TempDir::new("chexp");
    let file = write_file(&files, "red.toml", good);
    let t0 = Instant::now();
    let agent = AgentProcess::spawn(
        Some(&ns),
        &bin(),
        &[
            "--state-dir",
            state.str(),
            "experiment",
            "run",
            &file,
            "--report-dir",
            reports.str(),
        ],
    );
    let (status, out, err) = agent.wait(Duration::from_secs(90));
    assert_eq!(status.code(), Some(1), "{out:?} {err}");
    let r = report(&reports.0);
    assert_eq!(r["outcome"], "aborted");
    assert!(
        r["reason"].as_str().is_some_and(
            |w| w.contains("steady state not met") && w.contains("nothing was injected")
        ),
        "{r:#}"
    );
    assert_eq!(r["steps"][0]["outcome"], "not started");
    assert!(r["steps"][0]["fault"].is_null());
    assert!(!err.contains("probing the recovery"), "{err}");
    if !in_vm() {
        // The 2 s steady window and start-up, not the 5 s recovery window too.
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }
}

/// Every example under `examples/experiments/` validates and dry-runs, in a namespace of its own
/// where the test stands in for the services the examples name (an HTTP service on
/// 127.0.0.1:8080, a resolver on 127.0.0.1:53 that knows `example.test`): every step is planned,
/// every probe is checked over the steady window, and nothing is injected (no program on the
/// namespace's `lo`). The probes of those services must be green; a PSI probe's verdict depends on
/// the machine's load, so only its being checked is asserted. A kernel without netem and fq
/// (decided by tc) must refuse the latency example, naming the module, and change nothing.
#[test]
fn every_example_validates_and_dry_runs_against_its_services() {
    let test = "every_example_validates_and_dry_runs_against_its_services";
    if !require(test, Feature::Root) || !require(test, Feature::Tool("dnsmasq")) {
        return;
    }
    let ns = NetNs::new("chexd");
    chaos_testing::serve_http(&ns, "127.0.0.1:8080");
    let zone = chaos_testing::dns::Zone::new("example.test").address("example.test", "192.0.2.10");
    let _dns = chaos_testing::dns::Dnsmasq::start(&ns, &["127.0.0.1"], 53, &zone);
    // The CPU example's `payments.service`: its cgroup where systemd would make it, in the v2
    // tree (where `--unit` finds units) and in a v1 cpu hierarchy if the host has one.
    let _unit = UnitCgroup::new("system.slice/payments.service");
    let can_delay = chaos_testing::have_qdisc("netem") || chaos_testing::have_qdisc("fq");
    let state = TempDir::new("chexd");

    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/experiments");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)
        .expect("examples/experiments")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|p| {
            p.file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for want in [
        "latency-budget",
        "dns-flapping",
        "refusing-dependency",
        "cpu-pressure",
    ] {
        assert!(names.iter().any(|n| n == want), "example {want}: {names:?}");
    }

    // All at once (each dry run lasts its steady window), each from a thread in the namespace:
    // `ip netns exec` would hide the cgroup mounts the stress and refuse steps plan against.
    let runs: Vec<_> = files
        .iter()
        .map(|file| {
            let (bin, state, file) = (bin(), state.0.clone(), file.clone());
            chaos_testing::in_netns(&ns, move || {
                let validate = std::process::Command::new(&bin)
                    .arg("--state-dir")
                    .arg(&state)
                    .args(["experiment", "validate"])
                    .arg(&file)
                    .output()
                    .expect("validate");
                let dry = std::process::Command::new(&bin)
                    .arg("--state-dir")
                    .arg(&state)
                    .args(["experiment", "run", "--dry-run"])
                    .arg(&file)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("dry run");
                (file, validate, dry)
            })
        })
        .collect();
    for (file, validate, dry) in runs {
        let dry = dry.wait_with_output().expect("dry run");
        let name = file.file_stem().unwrap_or_default().to_string_lossy();
        let (out, err) = (
            String::from_utf8_lossy(&dry.stdout),
            String::from_utf8_lossy(&dry.stderr),
        );
        let verr = String::from_utf8_lossy(&validate.stderr);
        if name == "latency-budget" && !can_delay {
            for (what, o, e) in [("validate", &validate, &verr), ("dry run", &dry, &err)] {
                assert_eq!(o.status.code(), Some(2), "{name} {what}: {e}");
                assert!(
                    e.contains("sch_netem") && e.contains("nothing was changed"),
                    "{name} {what}: {e}"
                );
            }
            continue;
        }
        assert!(validate.status.success(), "{name} validate: {verr}");
        assert!(
            out.contains("dry run: nothing injected"),
            "{name}: {out}{err}"
        );
        let spec: toml::Value =
            toml::from_str(&std::fs::read_to_string(&file).expect("read")).expect("toml");
        for step in spec["step"].as_array().expect("steps") {
            let step = step["name"].as_str().expect("step name");
            assert!(out.contains(&format!("step {step} at +")), "{name}: {out}");
        }
        for probe in spec["probe"].as_array().expect("probes") {
            let pname = probe["name"].as_str().expect("probe name");
            let line = out
                .lines()
                .find(|l| l.starts_with(&format!("probe {pname} (")))
                .unwrap_or_else(|| panic!("{name}: probe {pname} not checked: {out}"));
            let (ok, n) = checks(line);
            assert!(n >= 1, "{name}: {line}");
            if probe.get("psi").is_none() {
                assert_eq!(ok, n, "{name}: the stand-in service failed a check: {line}");
            }
        }
        let green = out.contains("the steady state holds");
        assert_eq!(dry.status.success(), green, "{name}: {out}");
    }
    // Nothing was injected: no program on the namespace's loopback, and no fault journaled.
    assert!(
        chaos_testing::attached_programs(&ns, "lo").is_empty(),
        "{:?}",
        chaos_testing::attached_programs(&ns, "lo")
    );
    let journaled = std::fs::read_dir(state.0.join("faults")).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .count()
    });
    assert_eq!(journaled, 0, "journal files in {}", state.str());
}

/// A unit's cgroup laid out as systemd lays it out (no systemd runs here), in the v2 tree and
/// in the v1 cpu hierarchy when there is one; what it made is removed on drop, deepest first.
struct UnitCgroup(Vec<PathBuf>);

impl UnitCgroup {
    fn new(rel: &str) -> Self {
        let mut made = Vec::new();
        let roots = [
            Some(PathBuf::from(chaos_testing::cgroup2_root())),
            chaos_testing::cgroup_v1_mount("cpu"),
        ];
        for root in roots.into_iter().flatten() {
            let mut dir = root;
            let parts: Vec<&str> = rel.split('/').collect();
            for (i, part) in parts.iter().enumerate() {
                dir.push(part);
                if !dir.exists() {
                    std::fs::create_dir(&dir)
                        .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                    made.push(dir.clone());
                    // As systemd does for a slice: its children get the controllers it has
                    // (v2 only; a v1 hierarchy has no such file).
                    let controllers = dir.join("cgroup.controllers");
                    if i + 1 < parts.len()
                        && let Ok(have) = std::fs::read_to_string(&controllers)
                    {
                        let enable: Vec<String> =
                            have.split_whitespace().map(|c| format!("+{c}")).collect();
                        std::fs::write(dir.join("cgroup.subtree_control"), enable.join(" "))
                            .unwrap_or_else(|e| {
                                panic!("enable {enable:?} in {}: {e}", dir.display())
                            });
                    }
                }
            }
        }
        Self(made)
    }
}

impl Drop for UnitCgroup {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// `N of M` from a dry run's `probe NAME (KIND): N of M checks passed` line.
fn checks(line: &str) -> (usize, usize) {
    let rest = line.split("): ").nth(1).unwrap_or_default();
    let mut words = rest.split_whitespace();
    let ok = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    let n = words.nth(1).and_then(|w| w.parse().ok()).unwrap_or(0);
    (ok, n)
}

/// Kills a child process on drop.
struct Kill<'a>(&'a mut std::process::Child);

impl Drop for Kill<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on 127.0.0.1 of `ns`.
fn free_port(ns: &NetNs) -> u16 {
    tcp_listen(ns, "127.0.0.1:0")
        .local_addr()
        .expect("addr")
        .port()
}

/// A `promql` probe against a real Prometheus (no scrape needed: `vector(N)` is a constant):
/// within its bounds it passes, outside them the steady state does not hold and the dry run
/// says why.
#[test]
fn a_promql_probe_asks_a_real_prometheus() {
    let test = "a_promql_probe_asks_a_real_prometheus";
    if !chaos_testing::require_all(test, &[Feature::Root, Feature::Tool("prometheus")]) {
        return;
    }
    let ns = NetNs::new("chexp");
    let port = free_port(&ns);
    let dir = TempDir::new("chexp");
    std::fs::create_dir_all(dir.0.join("data")).expect("mkdir");
    std::fs::write(
        dir.0.join("prometheus.yml"),
        "global:\n  scrape_interval: 1m\n",
    )
    .expect("write");
    let mut prom = ns
        .command("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.0.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.0.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus");
    let _prom = Kill(&mut prom);
    let ready = || {
        ns.command("curl")
            .args(["-sf", &format!("http://127.0.0.1:{port}/-/ready")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let t0 = Instant::now();
    while !ready() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "prometheus never became ready"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let file = |query: &str| {
        write_file(
            &dir,
            "promql.toml",
            &format!(
                r#"
title = "promql"
[steady]
before = "1s"
[[probe]]
name = "errors"
interval = "300ms"
timeout = "250ms"
promql = {{ url = "http://127.0.0.1:{port}", query = '{query}', min = 0.5, max = 2 }}
[[step]]
name = "s"
duration = "5s"
inject = "--loss 0.1 --iface lo"
"#
            ),
        )
    };
    let dry = |f: &str| {
        ns.command(bin().to_str().expect("utf-8"))
            .args(["experiment", "run", f, "--dry-run"])
            .output()
            .expect("run")
    };
    let green = dry(&file("vector(1)"));
    let out = String::from_utf8_lossy(&green.stdout);
    assert!(
        green.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&green.stderr)
    );
    assert!(
        out.contains("probe errors (promql)") && out.contains("steady state holds"),
        "{out}"
    );
    let red = dry(&file("vector(3) * on() group_left() vector(1)"));
    let out = String::from_utf8_lossy(&red.stdout);
    assert_eq!(red.status.code(), Some(1), "{out}");
    assert!(
        out.contains("above 2") && out.contains("does NOT hold"),
        "{out}"
    );
    let none = dry(&file("absent(vector(1))"));
    let out = String::from_utf8_lossy(&none.stdout);
    assert_eq!(none.status.code(), Some(1), "{out}");
    assert!(out.contains("no series"), "{out}");
}

/// The published JSON Schema, checked by an independent validator (Python's `jsonschema`,
/// the reference implementation editors' tooling follows): every example is valid, an unknown
/// key and a probe without its timeout are not.
#[test]
fn the_json_schema_accepts_the_examples_and_refuses_what_the_agent_refuses() {
    let test = "the_json_schema_accepts_the_examples_and_refuses_what_the_agent_refuses";
    let has_validator = std::process::Command::new("python3")
        .args(["-c", "import jsonschema, tomllib"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_validator {
        chaos_testing::skip(
            test,
            "python3 with jsonschema and tomllib (3.11+) is not installed",
        );
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = r#"
import glob, json, sys, tomllib, jsonschema
schema = json.load(open(sys.argv[1] + "/docs/experiment.schema.json"))
for f in sorted(glob.glob(sys.argv[1] + "/examples/experiments/*.toml")):
    jsonschema.validate(tomllib.load(open(f, "rb")), schema)
    print("valid", f)
for bad in ['title = "x"\ncolour = 1\n',
            'title = "x"\n[[probe]]\nname = "a"\ntcp = { address = "1.2.3.4:1" }\n']:
    try:
        jsonschema.validate(tomllib.loads(bad), schema)
        print("ACCEPTED", repr(bad))
    except jsonschema.ValidationError as e:
        print("refused", e.message)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&root)
        .output()
        .expect("python3");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.matches("valid ").count() >= 3, "{said}");
    assert!(!said.contains("ACCEPTED"), "{said}");
    assert!(
        said.contains("'colour' was unexpected")
            && said.contains("'timeout' is a required property"),
        "{said}"
    );
}
