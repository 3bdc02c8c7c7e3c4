//! Limit faults, end to end: the real binary writing the real cgroup files of a cgroup the test
//! made, with real processes in it. Judged from outside the agent: the CPU time a busy loop gets
//! (`/proc/PID/stat`), the controller files themselves before, during and after, `cpu.stat` and
//! `memory.events` as the kernel keeps them, and whether a process under `memory.high` is alive
//! and stalled. On the host (hybrid: v1 cpu and memory) and in the 6.1 guest (cgroup v2).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chaos_testing::{
    AgentProcess, ControllerCgroup, Feature, TempDir, TestDisk, controller_root, cpu_use, in_vm,
    refused, require, run_cleanup, test_ttl, unique_name,
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

/// The quota file of the cpu controller and its value meaning "no limit".
fn quota_file(version: u8) -> &'static str {
    if version == 2 {
        "cpu.max"
    } else {
        "cpu.cfs_quota_us"
    }
}

#[test]
fn cpu_limit_caps_a_busy_loop_and_the_quota_comes_back() {
    let test = "cpu_limit_caps_a_busy_loop_and_the_quota_comes_back";
    if !require(test, Feature::Root) {
        return;
    }
    let Some((version, root)) = controller_root("cpu") else {
        // Not a feature either profile lacks: both require a cpu controller.
        panic!("no cpu controller in /sys/fs/cgroup or /proc/self/mounts");
    };
    let mut cg = ControllerCgroup::new(&root, "chlim");
    let busy = cg.spawn("while :; do :; done");
    let qf = quota_file(version);
    let before = cg.file(qf);
    let state = TempDir::new("chlim");
    let limit = ["--cpu-limit", "0.2", "--cgroup", &cg.path];

    // In force: the file says 20 ms per 100 ms, and the loop gets 0.2 CPU.
    let mut agent = inject(&state, &[&limit[..], &["--ttl", "60s"]].concat());
    agent.expect_injected();
    let during = cg.file(qf);
    assert!(during.starts_with("20000"), "{qf} = {during:?}");
    // The first period after the write may still run free: measure from the next one.
    std::thread::sleep(Duration::from_millis(300));
    let used = cpu_use(busy, Duration::from_secs(3));
    eprintln!("MEASURED busy loop under --cpu-limit 0.2 (cgroup v{version}): {used:.3} CPU");
    assert!(
        (used - 0.2).abs() <= 0.03,
        "{used:.3} CPU under a 0.2 limit"
    );
    let throttled: u64 = cg
        .file("cpu.stat")
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .and_then(|v| v.parse().ok())
        .expect("nr_throttled");
    assert!(throttled > 0, "cpu.stat shows no throttling");
    // Stop (SIGTERM): the old value exactly, and the summary tells the throttling.
    agent.signal(Signal::SIGTERM);
    let (status, out, err) = agent.wait(Duration::from_secs(20));
    assert!(status.success(), "{err}");
    assert_eq!(cg.file(qf), before, "after stop");
    let summary = out.join("\n");
    assert!(summary.contains("cpu throttled "), "{summary}");
    let free = cpu_use(busy, Duration::from_secs(1));
    assert!(free > 0.5, "after the fault the loop gets {free:.2} CPU");

    // TTL.
    let agent = inject(&state, &[&limit[..], &["--ttl", "2s"]].concat());
    let (status, out, err) = agent.wait(Duration::from_secs(30));
    assert!(status.success(), "{out:?} {err}");
    assert!(out.iter().any(|l| l.contains("reverted (ttl)")), "{out:?}");
    assert_eq!(cg.file(qf), before, "after TTL");

    // SIGKILL: the limit stays in the kernel until `cleanup` replays the journal.
    let mut agent = inject(&state, &[&limit[..], &["--ttl", "60s"]].concat());
    agent.expect_injected();
    agent.signal(Signal::SIGKILL);
    let _ = agent.wait(Duration::from_secs(10));
    assert!(
        cg.file(qf).starts_with("20000"),
        "a dead agent's limit stays"
    );
    run_cleanup(&bin(), &state);
    assert_eq!(cg.file(qf), before, "after SIGKILL and cleanup");

    // Someone else changes the quota during the fault: theirs stays.
    let mut agent = inject(&state, &[&limit[..], &["--ttl", "60s"]].concat());
    agent.expect_injected();
    let theirs = if version == 2 {
        "50000 100000"
    } else {
        "50000"
    };
    cg.write(qf, theirs);
    agent.signal(Signal::SIGTERM);
    let (status, _, err) = agent.wait(Duration::from_secs(20));
    assert!(status.success(), "{err}");
    assert_eq!(cg.file(qf), theirs, "their value is kept");
    cg.write(qf, &before);
}

#[test]
fn memory_limits_are_set_checked_against_usage_and_restored_exactly() {
    let test = "memory_limits_are_set_checked_against_usage_and_restored_exactly";
    if !require(test, Feature::Root) {
        return;
    }
    let Some((version, root)) = controller_root("memory") else {
        panic!("no memory controller in /sys/fs/cgroup or /proc/self/mounts");
    };
    let mut cg = ControllerCgroup::new(&root, "chlim");
    // A process holding about 16 MiB of its own (a shell variable).
    cg.spawn("x=$(head -c 16777216 /dev/zero | tr '\\0' a); sleep 600");
    let (max_file, usage_file) = if version == 2 {
        ("memory.max", "memory.current")
    } else {
        ("memory.limit_in_bytes", "memory.usage_in_bytes")
    };
    let t0 = Instant::now();
    while cg.file(usage_file).parse::<u64>().expect("usage") < 16 << 20 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the shell never held 16 MiB"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = cg.file(max_file);
    let state = TempDir::new("chlim");
    // Below what it uses: refused, nothing written.
    let out = Command::new(bin())
        .args(["--state-dir", state.str(), "inject", "--memory-max", "8M"])
        .args(["--cgroup", &cg.path, "--ttl", "10s"])
        .output()
        .expect("run agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("below what the target uses now"),
        "{err}"
    );
    assert_eq!(cg.file(max_file), before);
    // Above it: set (page-aligned bytes), and back exactly at the TTL.
    let agent = inject(
        &state,
        &["--memory-max", "512M", "--cgroup", &cg.path, "--ttl", "2s"],
    );
    let mut agent = agent;
    agent.expect_injected();
    assert_eq!(cg.file(max_file), (512u64 << 20).to_string());
    let (status, out, err) = agent.wait(Duration::from_secs(30));
    assert!(status.success(), "{out:?} {err}");
    assert_eq!(cg.file(max_file), before, "after TTL");
    if version == 1 {
        // memory.high has no v1 file: refused with the reason.
        let out = Command::new(bin())
            .args(["--state-dir", state.str(), "inject", "--memory-high", "64M"])
            .args(["--cgroup", &cg.path, "--ttl", "10s"])
            .output()
            .expect("run agent");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("cgroup v2 only"),
            "{err}"
        );
    }
}

/// cgroup v2 only (the guest): under `memory.high` a writer of 64 MiB of shmem (which no
/// reclaim can take without swap) is throttled, not killed: `memory.events` counts `high`,
/// its file stops growing while it stays alive, and once the fault ends it finishes.
#[test]
fn memory_high_throttles_a_writer_without_killing_it() {
    let test = "memory_high_throttles_a_writer_without_killing_it";
    if !require(test, Feature::CgroupV2) {
        return;
    }
    let mut cg = ControllerCgroup::new(Path::new("/sys/fs/cgroup"), "chlim");
    let shm = format!("/dev/shm/{}", unique_name("chlim"));
    let state = TempDir::new("chlim");
    // Microseconds some task of the cgroup stalled on memory (the kernel's PSI).
    let stalled = |cg: &ControllerCgroup| -> u64 {
        let p = cg.file("memory.pressure");
        p.lines()
            .find(|l| l.starts_with("some "))
            .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("total=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("memory.pressure: {p}"))
    };
    let stalled_before = stalled(&cg);
    let mut agent = inject(
        &state,
        &["--memory-high", "16M", "--cgroup", &cg.path, "--ttl", "8s"],
    );
    agent.expect_injected();
    assert_eq!(cg.file("memory.high"), (16u64 << 20).to_string());
    let writer = cg.spawn(&format!("head -c 67108864 /dev/zero > {shm}"));
    let size = || std::fs::metadata(&shm).map_or(0, |m| m.len());
    // Throttled: `high` events, and the file stalls short of 64 MiB while the writer lives.
    let t0 = Instant::now();
    let high = || -> u64 {
        cg.file("memory.events")
            .lines()
            .find_map(|l| l.strip_prefix("high "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    while high() == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(6),
            "no memory.high event"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    assert!(alive(writer), "the writer was killed");
    assert!(size() < 64 << 20, "the writer was never held back");
    let oom: u64 = cg
        .file("memory.events")
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert_eq!(oom, 0, "memory.high must never kill");
    // Throttled, so stalled: the cgroup's memory pressure rises.
    let t2 = Instant::now();
    while stalled(&cg) == stalled_before {
        assert!(
            t2.elapsed() < Duration::from_secs(3),
            "memory.pressure shows no stall under memory.high"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "MEASURED memory stall under --memory-high 16M: {} us so far",
        stalled(&cg) - stalled_before
    );
    let (status, out, err) = agent.wait(Duration::from_secs(30));
    assert!(status.success(), "{out:?} {err}");
    assert!(
        out.iter().any(|l| l.contains("memory stalled ")),
        "the summary tells the stall: {out:?}"
    );
    assert_eq!(cg.file("memory.high"), "max");
    // Free again: the write completes.
    let t1 = Instant::now();
    while size() < 64 << 20 {
        assert!(
            t1.elapsed() < Duration::from_secs(30),
            "the writer never finished: {}",
            size()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&shm);
}

#[test]
fn limit_bad_input_is_refused_with_nothing_written() {
    let test = "limit_bad_input_is_refused_with_nothing_written";
    if !require(test, Feature::Root) {
        return;
    }
    let (version, root) = controller_root("cpu").expect("a cpu controller");
    let cg = ControllerCgroup::new(&root, "chlim");
    let qf = quota_file(version);
    let before = cg.file(qf);
    let state = TempDir::new("chlim");
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let too_many = (cpus + 1).to_string();
    for (args, want) in [
        (
            vec!["--cpu-limit", "0.2", "--cgroup", "/chaos-no-such-cgroup"],
            "no cgroup",
        ),
        (
            vec!["--cpu-limit", "0", "--cgroup", &cg.path],
            "at least 0.01",
        ),
        (
            vec!["--cpu-limit", "-1", "--cgroup", &cg.path],
            "--cpu-limit",
        ),
        (
            vec!["--cpu-limit", "nan", "--cgroup", &cg.path],
            "--cpu-limit",
        ),
        (
            vec!["--cpu-limit", &too_many, "--cgroup", &cg.path],
            "more than this host",
        ),
        (vec!["--memory-max", "0", "--cgroup", &cg.path], "below 4M"),
        (
            vec!["--memory-max", "1T", "--cgroup", &cg.path],
            "more than this host's memory",
        ),
        (
            vec!["--memory-max", "12Q", "--cgroup", &cg.path],
            "unknown size unit",
        ),
        (vec!["--cpu-limit", "0.2"], "needs the processes to limit"),
        (
            vec!["--cpu-limit", "0.2", "--cgroup", "/"],
            "root of the cpu hierarchy",
        ),
        (
            vec!["--cpu-limit", "0.2", "--pid", "999999999", "--ttl", "5s"],
            "no such process",
        ),
        (
            vec!["--cpu-limit", "0.2", "--cgroup", &cg.path, "--loss", "0.1"],
            "cannot also carry",
        ),
        (
            vec!["--cpu-limit", "0.2", "--cgroup", &cg.path, "--dport", "80"],
            "do not apply",
        ),
    ] {
        let mut full = vec!["--state-dir", state.str(), "inject"];
        full.extend(&args);
        if !args.contains(&"--ttl") {
            full.extend(["--ttl", "5s"]);
        }
        let out = Command::new(bin()).args(&full).output().expect("run agent");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(want), "{args:?}: wanted {want:?} in {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
        assert_eq!(cg.file(qf), before, "{args:?} wrote");
    }
    // v2: a cgroup whose parent does not hand it the cpu controller has no cpu.max; the refusal
    // says so (and what turns it on) instead of "no such file".
    if version == 2 {
        let inner = root.join(cg.path.trim_start_matches('/')).join("no-cpu");
        std::fs::create_dir(&inner).expect("mkdir");
        let rel = format!("{}/no-cpu", cg.path);
        let out = Command::new(bin())
            .args(["--state-dir", state.str(), "inject", "--ttl", "5s"])
            .args(["--cpu-limit", "0.2", "--cgroup", &rel])
            .output()
            .expect("run agent");
        let _ = std::fs::remove_dir(&inner);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("cpu controller is not enabled") && err.contains("CPUAccounting"),
            "{err}"
        );
    }
}

/// `--flap 1s/1s`: the limit is in the file during active phases and the old value during
/// resting ones, read from outside at the middle of each phase (half a second from either edge),
/// and the old value is back after the TTL.
#[test]
fn a_flapping_cpu_limit_is_lifted_and_written_at_its_phase_edges() {
    let test = "a_flapping_cpu_limit_is_lifted_and_written_at_its_phase_edges";
    if !require(test, Feature::Root) {
        return;
    }
    let (version, root) = controller_root("cpu").expect("a cpu controller");
    let cg = ControllerCgroup::new(&root, "chlim");
    let qf = quota_file(version);
    let before = cg.file(qf);
    let state = TempDir::new("chlim");
    let mut agent = inject(
        &state,
        &[
            "--cpu-limit",
            "0.3",
            "--cgroup",
            &cg.path,
            "--flap",
            "1s/1s",
            "--ttl",
            "4s",
        ],
    );
    agent.expect_injected();
    let t0 = Instant::now();
    let mut seen = Vec::new();
    for (i, at) in [500u64, 1500, 2500, 3500].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(at).saturating_sub(t0.elapsed()));
        let v = cg.file(qf);
        let active = i % 2 == 0;
        assert_eq!(
            v.starts_with("30000"),
            active,
            "at {at} ms ({}): {qf} = {v:?}",
            if active { "active" } else { "resting" }
        );
        seen.push(v);
    }
    let (status, out, err) = agent.wait(Duration::from_secs(20));
    assert!(status.success(), "{out:?} {err}");
    assert!(
        out.iter().any(|l| l.contains("active phases 2/2")),
        "{out:?}"
    );
    assert_eq!(cg.file(qf), before, "after the TTL: {seen:?}");
}

/// The IO files of a cgroup, as one text: `io.max`, or v1's four throttle files.
fn io_files(cg: &ControllerCgroup, version: u8) -> String {
    let files: &[&str] = if version == 2 {
        &["io.max"]
    } else {
        &[
            "blkio.throttle.read_bps_device",
            "blkio.throttle.write_bps_device",
            "blkio.throttle.read_iops_device",
            "blkio.throttle.write_iops_device",
        ]
    };
    files
        .iter()
        .map(|f| format!("{f}: {}", cg.file(f)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes `mib` MiB with direct IO (`dd oflag=direct`, 64 KiB blocks) onto `dev` from a shell
/// in `cg`, and returns the rate the writer saw, MiB/s.
fn direct_write_rate(cg: &ControllerCgroup, dev: &str, mib: u32) -> f64 {
    let procs = cg.dir.join("cgroup.procs");
    let t0 = Instant::now();
    let out = Command::new("sh")
        .args([
            "-c",
            &format!(
                "echo $$ > {} && exec dd if=/dev/zero of={dev} bs=65536 count={} oflag=direct",
                procs.display(),
                mib * 16
            ),
        ])
        .output()
        .expect("dd");
    let secs = t0.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "dd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    f64::from(mib) / secs
}

/// `--io-limit DISK:wbps=4M` on a real disk (the VM's virtio scratch disk, `io.max`; a loop
/// device on the host, `blkio.throttle.write_bps_device`): a direct writer in the cgroup gets
/// 4 MiB/s within 15 %, measured by the writer; the disk's line keeps the key someone else set
/// (riops) and comes back exactly after stop, after SIGKILL and `cleanup`, and a line someone
/// else changes during the fault is theirs after it. Bad input changes nothing.
#[test]
fn io_limit_throttles_a_direct_writer_and_its_line_comes_back() {
    let test = "io_limit_throttles_a_direct_writer_and_its_line_comes_back";
    if !require(test, Feature::Root) || (in_vm() && !require(test, Feature::ScratchDisk)) {
        return;
    }
    let (version, root) = controller_root("io")
        .or_else(|| controller_root("blkio"))
        .expect("an io or blkio controller (both profiles require one)");
    let disk = TestDisk::new();
    let cg = ControllerCgroup::new(&root, "chio");
    let key = &disk.key;
    // Someone's own limit on the same disk, which the fault must leave as it found it.
    let (their_file, theirs) = if version == 2 {
        ("io.max", format!("{key} riops=100000"))
    } else {
        ("blkio.throttle.read_iops_device", format!("{key} 100000"))
    };
    cg.write(their_file, &theirs);
    let before = io_files(&cg, version);
    let state = TempDir::new("chio");
    let ttl = test_ttl(60);
    let limit = format!("{}:wbps=4M", disk.dev);
    let args = ["--io-limit", &limit, "--cgroup", &cg.path, "--ttl", &ttl];

    let unthrottled = direct_write_rate(&cg, &disk.dev, 8);
    eprintln!("MEASURED direct writes without the limit: {unthrottled:.1} MiB/s");
    assert!(
        unthrottled > 8.0,
        "the disk itself is too slow to tell: {unthrottled:.1} MiB/s"
    );

    let mut agent = inject(&state, &args);
    agent.expect_injected();
    let during = io_files(&cg, version);
    if version == 2 {
        assert!(
            during.contains(&format!(
                "{key} rbps=max wbps=4194304 riops=100000 wiops=max"
            )),
            "{during}"
        );
    } else {
        assert!(
            during.contains(&format!("write_bps_device: {key} 4194304")),
            "{during}"
        );
        assert!(
            during.contains(&format!("read_iops_device: {theirs}")),
            "{during}"
        );
    }
    let rate = direct_write_rate(&cg, &disk.dev, 12);
    eprintln!(
        "MEASURED direct writes under --io-limit wbps=4M (cgroup v{version}): {rate:.2} MiB/s"
    );
    assert!(
        (rate - 4.0).abs() <= 0.6,
        "{rate:.2} MiB/s under a 4 MiB/s limit"
    );
    agent.signal(Signal::SIGTERM);
    let (status, out, err) = agent.wait(Duration::from_secs(20));
    assert!(status.success(), "{err}");
    assert_eq!(io_files(&cg, version), before, "after stop");
    let summary = out.join("\n");
    let written: f64 = summary
        .split("io written ")
        .nth(1)
        .and_then(|r| r.split(" MiB").next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no 'io written N MiB' in the summary: {summary}"));
    assert!(written >= 12.0, "{summary}");

    // SIGKILL: the line stays in the kernel until `cleanup` replays the journal.
    let mut agent = inject(&state, &args);
    agent.expect_injected();
    agent.signal(Signal::SIGKILL);
    let _ = agent.wait(Duration::from_secs(10));
    assert_ne!(io_files(&cg, version), before, "a dead agent's limit stays");
    run_cleanup(&bin(), &state);
    assert_eq!(io_files(&cg, version), before, "after SIGKILL and cleanup");

    // Someone else changes the disk's line during the fault: theirs stays.
    let mut agent = inject(&state, &args);
    agent.expect_injected();
    let (file, changed) = if version == 2 {
        ("io.max", format!("{key} wbps=8388608"))
    } else {
        ("blkio.throttle.write_bps_device", format!("{key} 8388608"))
    };
    cg.write(file, &changed);
    let ours_changed = io_files(&cg, version);
    agent.signal(Signal::SIGTERM);
    let (status, _, err) = agent.wait(Duration::from_secs(20));
    assert!(status.success(), "{err}");
    assert_eq!(io_files(&cg, version), ours_changed, "their value is kept");
    cg.write(
        file,
        &format!("{key} {}", if version == 2 { "wbps=max" } else { "0" }),
    );
    assert_eq!(io_files(&cg, version), before);

    // Bad input: refused, nothing written.
    for (bad, want) in [
        ("/dev/null:wbps=4M".to_owned(), "is not a block device"),
        (format!("{}:wbps=0", disk.dev), "a limit of zero"),
        (disk.dev.clone(), "give at least one of"),
        (
            "/chaos-no-such-disk:wbps=4M".to_owned(),
            "/chaos-no-such-disk",
        ),
    ] {
        let err = refused(
            &bin(),
            &[
                "--state-dir",
                state.str(),
                "inject",
                "--ttl",
                "5s",
                "--io-limit",
                &bad,
                "--cgroup",
                &cg.path,
            ],
        );
        assert!(err.contains(want), "{bad}: wanted {want:?} in {err}");
        assert_eq!(io_files(&cg, version), before, "{bad} wrote");
    }
}
