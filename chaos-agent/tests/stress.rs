//! Stress faults, end to end: the real binary starting its stressor, judged from outside. The
//! stressor is found as the agent's child process (`/proc/*/stat`), its CPU time read from
//! `/proc/PID/stat`, its memory from its cgroup's own files, and after the fault no process and
//! no cgroup of it may be left, also when the agent is killed (SIGKILL). On the host (hybrid: v1
//! controllers) and in the 6.1 guest (cgroup v2).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chaos_testing::{
    AgentProcess, ControllerCgroup, Feature, TempDir, controller_root, cpu_use, proc_stat, refused,
    require, run_cleanup,
};
use nix::sys::signal::Signal;

fn bin() -> PathBuf {
    chaos_testing::agent_bin(env!("CARGO_BIN_EXE_chaos-agent"))
}

fn inject(state: &TempDir, args: &[&str]) -> AgentProcess {
    let mut full = vec!["--state-dir", state.str(), "inject"];
    full.extend_from_slice(args);
    AgentProcess::spawn(None, &bin(), &full)
}

/// The live (not zombie) children of `parent`, from `/proc`.
fn children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|f| f[1] == parent.to_string() && f[0] != "Z"))
        .collect()
}

/// The stressor: the agent's one child, once it has started.
fn stressor_of(agent: u32) -> u32 {
    let t0 = Instant::now();
    loop {
        if let [pid] = children(agent)[..] {
            return pid;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no stressor under {agent}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|f| f[0] != "Z")
}

/// Waits (bounded) until `pid` is gone.
fn gone(pid: u32, what: &str) {
    let t0 = Instant::now();
    while alive(pid) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what}: stressor {pid} still runs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The directory of `pid`'s cgroup in the hierarchy of `controller`.
fn cgroup_dir(pid: u32, controller: &str) -> PathBuf {
    let (version, root) = controller_root(controller).expect("controller");
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let path = text
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (id, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            let hit = if version == 2 {
                id == "0"
            } else {
                ctrls.split(',').any(|c| c == controller)
            };
            hit.then(|| path.to_owned())
        })
        .expect("a cgroup line");
    root.join(path.trim_start_matches('/'))
}

fn read_u64(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .parse()
        .expect("number")
}

#[test]
fn cpu_stress_runs_at_its_duty_cycle_and_ends_with_the_fault() {
    let test = "cpu_stress_runs_at_its_duty_cycle_and_ends_with_the_fault";
    if !require(test, Feature::Root) {
        return;
    }
    let state = TempDir::new("chst");
    let mut agent = inject(&state, &["--cpu-stress", "1@50", "--ttl", "60s"]);
    agent.expect_injected();
    let pid = stressor_of(agent.pid());
    let dir = cgroup_dir(pid, "cpu");
    assert!(
        dir.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("chaos-stress-f-")),
        "the stressor is in {}",
        dir.display()
    );
    let adj = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).expect("adj");
    assert_eq!(adj.trim(), "1000", "the OOM killer's first pick");
    let used = cpu_use(pid, Duration::from_secs(3));
    eprintln!("MEASURED --cpu-stress 1@50: {used:.3} CPU");
    assert!((used - 0.5).abs() <= 0.1, "{used:.3} CPU for 1@50");
    agent.signal(Signal::SIGTERM);
    let (status, out, err) = agent.wait(Duration::from_secs(20));
    assert!(status.success(), "{err}");
    assert!(out.iter().any(|l| l.contains("stressor used")), "{out:?}");
    gone(pid, "after stop");
    assert!(!dir.exists(), "{} left", dir.display());
}

#[test]
fn memory_stress_is_charged_to_its_capped_cgroup_and_removed_at_ttl() {
    let test = "memory_stress_is_charged_to_its_capped_cgroup_and_removed_at_ttl";
    if !require(test, Feature::Root) {
        return;
    }
    let (version, _) = controller_root("memory").expect("a memory controller");
    let (usage, cap) = if version == 2 {
        ("memory.current", "memory.max")
    } else {
        ("memory.usage_in_bytes", "memory.limit_in_bytes")
    };
    let state = TempDir::new("chst");
    let mut agent = inject(&state, &["--memory-stress", "256M", "--ttl", "20s"]);
    agent.expect_injected();
    let pid = stressor_of(agent.pid());
    let dir = cgroup_dir(pid, "memory");
    let t0 = Instant::now();
    while read_u64(&dir.join(usage)) < 250 << 20 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "never charged 250 MiB"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let charged = read_u64(&dir.join(usage));
    eprintln!(
        "MEASURED --memory-stress 256M: {} MiB charged to {}",
        charged >> 20,
        dir.display()
    );
    assert!(charged <= (256 + 32) << 20, "{charged} charged");
    assert_eq!(read_u64(&dir.join(cap)), (256 + 32) << 20, "its own cap");
    let (status, out, err) = agent.wait(Duration::from_secs(40));
    assert!(status.success(), "{out:?} {err}");
    gone(pid, "after TTL");
    assert!(!dir.exists(), "{} left", dir.display());
}

#[test]
fn a_sigkilled_agent_s_stressor_dies_with_it_and_cleanup_removes_its_cgroup() {
    let test = "a_sigkilled_agent_s_stressor_dies_with_it_and_cleanup_removes_its_cgroup";
    if !require(test, Feature::Root) {
        return;
    }
    let state = TempDir::new("chst");
    let mut agent = inject(&state, &["--cpu-stress", "1@20", "--ttl", "60s"]);
    agent.expect_injected();
    let pid = stressor_of(agent.pid());
    let dir = cgroup_dir(pid, "cpu");
    agent.signal(Signal::SIGKILL);
    let _ = agent.wait(Duration::from_secs(10));
    gone(pid, "after SIGKILL (PR_SET_PDEATHSIG)");
    assert!(dir.exists(), "the empty cgroup stays until cleanup");
    run_cleanup(&bin(), &state);
    assert!(!dir.exists(), "{} left after cleanup", dir.display());
}

/// A workload of 64 MiB in a cgroup limited to 200 MiB, and a 256 MiB stressor inside it: the
/// cgroup runs out, and the OOM killer takes the stressor (`oom_score_adj` 1000), not the
/// workload.
#[test]
fn under_memory_max_the_stressor_is_killed_before_the_workload() {
    let test = "under_memory_max_the_stressor_is_killed_before_the_workload";
    if !require(test, Feature::Root) {
        return;
    }
    let (_, root) = controller_root("memory").expect("a memory controller");
    let mut cg = ControllerCgroup::new(&root, "chst");
    let wpid = cg.spawn("x=$(head -c 67108864 /dev/zero | tr '\\0' a) && sleep 600");
    let usage = if cg.dir.join("memory.current").exists() {
        "memory.current"
    } else {
        "memory.usage_in_bytes"
    };
    let t0 = Instant::now();
    while read_u64(&cg.dir.join(usage)) < 64 << 20 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the workload never held 64 MiB"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let path = cg.path.clone();
    let state = TempDir::new("chst");
    let mut limit = inject(
        &state,
        &["--memory-max", "200M", "--cgroup", &path, "--ttl", "60s"],
    );
    limit.expect_injected();
    let mut stress = inject(
        &state,
        &[
            "--memory-stress",
            "256M",
            "--inside",
            "--cgroup",
            &path,
            "--ttl",
            "60s",
        ],
    );
    stress.expect_injected();
    let spid = stressor_of(stress.pid());
    gone(spid, "the OOM killer's pick");
    assert!(alive(wpid), "the workload was killed");
    stress.signal(Signal::SIGTERM);
    let (status, _, err) = stress.wait(Duration::from_secs(20));
    assert!(status.success(), "{err}");
    limit.signal(Signal::SIGTERM);
    let (status, _, err) = limit.wait(Duration::from_secs(20));
    assert!(status.success(), "{err}");
    assert!(alive(wpid), "the workload survived the faults");
    let leftovers: Vec<String> = std::fs::read_dir(&cg.dir)
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("chaos-stress-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn stress_bad_input_is_refused_with_nothing_started() {
    let test = "stress_bad_input_is_refused_with_nothing_started";
    if !require(test, Feature::Root) {
        return;
    }
    let state = TempDir::new("chst");
    for (args, want) in [
        (
            vec!["--memory-stress", "1T"],
            "more than this host's memory",
        ),
        (vec!["--memory-stress", "100K"], "below 1M"),
        (vec!["--cpu-stress", "0"], "give 1 to"),
        (vec!["--cpu-stress", "1@0"], "load 0%"),
        (vec!["--cpu-stress", "1@150"], "give 1 to 100"),
        (vec!["--cpu-stress", "100000"], "--cpu-stress"),
        (vec!["--cpu-stress", "1", "--inside"], "--inside needs"),
        (vec!["--cpu-stress", "1", "--cgroup", "/x"], "add --inside"),
        (
            vec![
                "--cpu-stress",
                "1",
                "--inside",
                "--cgroup",
                "/chaos-no-such",
            ],
            "no cgroup",
        ),
        (
            vec!["--cpu-stress", "1", "--loss", "0.1"],
            "cannot also carry",
        ),
        (
            vec!["--memory-ramp", "1s", "--cpu-stress", "1"],
            "--memory-stress",
        ),
    ] {
        let mut full = vec!["--state-dir", state.str(), "inject", "--ttl", "5s"];
        full.extend(&args);
        let mut agent = AgentProcess::spawn(None, &bin(), &full);
        let injected = agent.line_or_exit("injected ", Duration::from_secs(20));
        assert!(injected.is_none(), "{args:?} was accepted");
        let (status, _, err) = agent.wait(Duration::from_secs(10));
        assert!(!status.success(), "{args:?}");
        assert!(err.contains(want), "{args:?}: wanted {want:?} in {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
    }
}

/// `--flap 1s/1s`: a stressor runs during active phases and none during resting ones (a new
/// process each time), seen from `/proc` at the middle of each phase; none is left after.
#[test]
fn a_flapping_stressor_runs_only_in_active_phases() {
    let test = "a_flapping_stressor_runs_only_in_active_phases";
    if !require(test, Feature::Root) {
        return;
    }
    let state = TempDir::new("chst");
    let mut agent = inject(
        &state,
        &["--cpu-stress", "1@20", "--flap", "1s/1s", "--ttl", "4s"],
    );
    agent.expect_injected();
    let t0 = Instant::now();
    let mut pids = Vec::new();
    for (i, at) in [500u64, 1500, 2500, 3500].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(at).saturating_sub(t0.elapsed()));
        let kids = children(agent.pid());
        if i % 2 == 0 {
            assert_eq!(kids.len(), 1, "at {at} ms (active): {kids:?}");
            pids.push(kids[0]);
        } else {
            assert!(kids.is_empty(), "at {at} ms (resting): {kids:?}");
        }
    }
    assert_ne!(pids[0], pids[1], "a new stressor each active phase");
    let (status, out, err) = agent.wait(Duration::from_secs(20));
    assert!(status.success(), "{out:?} {err}");
    for p in pids {
        gone(p, "after the TTL");
    }
}

/// Whether the filesystem of `dir` takes direct IO, asked of `dd oflag=direct` (not the agent).
fn takes_direct_io(dir: &Path) -> bool {
    let probe = dir.join("direct-probe");
    let ok = Command::new("dd")
        .args(["if=/dev/zero", "bs=4096", "count=1", "oflag=direct"])
        .arg(format!("of={}", probe.display()))
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let _ = std::fs::remove_file(&probe);
    ok
}

/// The named counters of `/proc/PID/io`.
fn proc_io(pid: u32) -> std::collections::BTreeMap<String, u64> {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// The files of `dir`.
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(|e| Some(e.ok()?.file_name().to_str()?.to_owned()))
        .collect()
}

/// `--io-stress DIR:8M` where the filesystem takes direct IO (the host's ext4 /tmp): the
/// stressor reads and writes 8 MiB/s within 15 % (its `/proc/PID/io`: `rchar` + `wchar`), half
/// of it written to the disk (`write_bytes`, storage-level: direct IO passes no page cache), in
/// a cgroup of its own in the IO hierarchy, and its file goes with the fault, also after SIGKILL and
/// `cleanup`. Where it does not (tmpfs before 6.6: the guest's /tmp), the inject is refused
/// with that reason and leaves no file. Bad input changes nothing.
#[test]
fn io_stress_runs_at_its_rate_on_direct_io_and_its_file_goes_with_it() {
    let test = "io_stress_runs_at_its_rate_on_direct_io_and_its_file_goes_with_it";
    if !require(test, Feature::Root) {
        return;
    }
    let state = TempDir::new("chst");
    let dir = TempDir::new("chio");
    let arg = format!("{}:8M", dir.str());
    let ttl = chaos_testing::test_ttl(60);
    for (bad, want) in [
        ("/chaos-no-such-dir:8M".to_owned(), "not a directory"),
        (format!("{}:1K", dir.str()), "below"),
        ("relative:8M".to_owned(), "absolute"),
    ] {
        let err = refused(
            &bin(),
            &[
                "--state-dir",
                state.str(),
                "inject",
                "--ttl",
                "5s",
                "--io-stress",
                &bad,
            ],
        );
        assert!(err.contains(want), "{bad}: wanted {want:?} in {err}");
    }
    assert!(
        entries(&dir.0).is_empty(),
        "bad input left {:?}",
        entries(&dir.0)
    );

    if !takes_direct_io(&dir.0) {
        let out = Command::new(bin())
            .args(["--state-dir", state.str(), "inject", "--ttl", &ttl])
            .args(["--io-stress", &arg])
            .output()
            .expect("run agent");
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!(
            "MEASURED {}: no direct IO (dd oflag=direct fails): refused",
            dir.str()
        );
        assert!(!out.status.success(), "accepted without direct IO");
        assert!(err.contains("does not take direct IO"), "{err}");
        assert!(entries(&dir.0).is_empty(), "left {:?}", entries(&dir.0));
        return;
    }

    let mut agent = inject(&state, &["--io-stress", &arg, "--ttl", &ttl]);
    agent.expect_injected();
    let pid = stressor_of(agent.pid());
    let files = entries(&dir.0);
    assert!(
        files.len() == 1 && files[0].starts_with(".chaos-io-stress-f-"),
        "{files:?}"
    );
    let cg = cgroup_dir(
        pid,
        if controller_root("io").is_some() {
            "io"
        } else {
            "blkio"
        },
    );
    assert!(
        cg.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("chaos-stress-f-")),
        "the stressor is in {}",
        cg.display()
    );
    // The first blocks go out before the pacing has a past to keep to: measure after them.
    std::thread::sleep(Duration::from_millis(500));
    let (a, t0) = (proc_io(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let (b, secs) = (proc_io(pid), t0.elapsed().as_secs_f64());
    let rate = |k: &str| (b[k] - a[k]) as f64 / secs / f64::from(1 << 20);
    let (chars, written) = (rate("rchar") + rate("wchar"), rate("write_bytes"));
    eprintln!(
        "MEASURED --io-stress :8M: {chars:.2} MiB/s read+written, {written:.2} MiB/s written to disk"
    );
    assert!((chars - 8.0).abs() <= 1.2, "{chars:.2} MiB/s for 8M");
    assert!(
        (written - 4.0).abs() <= 0.6,
        "{written:.2} MiB/s written to disk"
    );
    agent.signal(Signal::SIGTERM);
    let (status, out, err) = agent.wait(Duration::from_secs(20));
    assert!(status.success(), "{err}");
    assert!(out.iter().any(|l| l.contains("stressor read")), "{out:?}");
    gone(pid, "after stop");
    assert!(entries(&dir.0).is_empty(), "left {:?}", entries(&dir.0));

    // SIGKILL: the stressor dies with the agent, the file stays until `cleanup`.
    let mut agent = inject(&state, &["--io-stress", &arg, "--ttl", &ttl]);
    agent.expect_injected();
    let pid = stressor_of(agent.pid());
    agent.signal(Signal::SIGKILL);
    let _ = agent.wait(Duration::from_secs(10));
    gone(pid, "after SIGKILL");
    assert_eq!(entries(&dir.0).len(), 1, "the dead agent's file stays");
    run_cleanup(&bin(), &state);
    assert!(
        entries(&dir.0).is_empty(),
        "after cleanup: {:?}",
        entries(&dir.0)
    );
}
