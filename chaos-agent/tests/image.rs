//! The agent's OCI image (`cargo xtask image`) and the Kubernetes manifests that run it
//! (`deploy/kubernetes/`), judged by independent tools.
//!
//! - The image: podman (with runc, in a store of the test's own, so nothing of the machine's is
//!   touched) loads the archive `cargo xtask test` built and names in `CHAOS_AGENT_IMAGE`; its
//!   config is what podman says; the agent runs from it (`--version`, `doctor`) and injects one
//!   loss fault in a network namespace the test made, with the `DaemonSet`'s capabilities and
//!   nothing more, judged by ping at the other end, and leaves nothing (tc, bpftool, the journal
//!   directory). Tests never build: without the archive they skip (fail in CI).
//! - containerd (a daemon of the test's own) imports the same archive with `ctr image import`
//!   under the name the kubelet looks for, and runs the agent from it.
//! - The manifests: kustomize (kubectl's) renders them as `kubectl apply -k` would; the
//!   Kubernetes objects pass the Kubernetes schemas (kubernetes-validate, strict: an unknown
//!   field fails) of the oldest and newest versions we support, the monitoring objects the
//!   prometheus-operator's own validators (npm `@kubernetes-models/prometheus-operator`), the
//!   rules `promtool check rules`, and the `ConfigMap`'s config `chaos-agent config check`.
//!
//! Host only: the VM guest has no container runtime, kubectl, Python or Node.js.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use chaos_testing::{
    AgentProcess, Feature, IMAGE_ENV, MONITORING_MODELS, TempDir, VethPair, require_all,
};
use serde_json::Value;

fn bin() -> PathBuf {
    chaos_testing::agent_bin(env!("CARGO_BIN_EXE_chaos-agent"))
}

/// The reference `cargo xtask image` writes into the archive's index.json.
fn reference() -> String {
    format!(
        "docker.io/library/chaos-agent:{}",
        env!("CARGO_PKG_VERSION")
    )
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A podman store of the test's own (images, containers, run state), removed on drop: the
/// machine's images are neither used nor changed, and nothing of a failed run lingers there.
struct Podman {
    dir: TempDir,
}

impl Podman {
    /// The archive from `CHAOS_AGENT_IMAGE`, loaded into a new store; `None` (a skip, or a
    /// failure where the rules require it) without podman, runc or the archive.
    fn load(test: &str) -> Option<(Self, PathBuf)> {
        if !require_all(
            test,
            &[
                Feature::Tool("podman"),
                Feature::Tool("runc"),
                Feature::EnvFile(IMAGE_ENV),
            ],
        ) {
            return None;
        }
        let archive = PathBuf::from(std::env::var_os(IMAGE_ENV).expect("checked above"));
        let p = Self {
            dir: TempDir::new("podman"),
        };
        let out = p.cmd(&["load", "-i", archive.to_str().expect("utf-8 path")]);
        assert!(out.status.success(), "podman load: {}", text(&out));
        assert!(
            text(&out).contains(&format!("Loaded image: {}", reference())),
            "podman names the image by the archive's reference: {}",
            text(&out)
        );
        Some((p, archive))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.0.join("root"))
            .arg("--runroot")
            .arg(self.dir.0.join("run"))
            // No systemd to ask for a scope here; runc (crun refuses this hybrid host).
            .args(["--cgroup-manager", "cgroupfs", "--runtime", "runc"])
            .args(args);
        c
    }

    fn cmd(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .expect("podman")
    }

    /// `podman run --rm` of the image with `flags` before it and `args` after it.
    fn run(&self, flags: &[&str], args: &[&str]) -> Command {
        let mut all = vec!["--rm"];
        all.extend(flags);
        self.run_kept(&all, args)
    }

    /// `podman run` (the container is kept after it exits, for its exit code).
    fn run_kept(&self, flags: &[&str], args: &[&str]) -> Command {
        let image = reference();
        let mut all = vec!["run"];
        // Within the hard limits root has on this machine (podman's defaults are above them).
        all.extend([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ]);
        all.extend(flags);
        all.push(&image);
        all.extend(args);
        self.command(&all)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers are `--rm`; removing them and the image unmounts the store's layers, and
        // TempDir removes the rest. (Not `system reset`: it also removes the machine's podman
        // networks, which live outside the store.)
        let _ = self.cmd(&["rm", "-af", "-t", "0"]);
        let _ = self.cmd(&["rmi", "-af"]);
    }
}

/// The capabilities the `DaemonSet` gives the agent (its `add: [...]` line), as podman flags:
/// the fault test proves they are enough.
fn daemonset_capabilities() -> String {
    let ds = std::fs::read_to_string(repo_root().join("deploy/kubernetes/daemonset.yaml"))
        .expect("daemonset.yaml");
    let line = ds
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("add: ["))
        .expect("a capabilities `add: [...]` line");
    line.trim_end_matches(']')
        .split(',')
        .map(|c| c.trim().trim_matches('"'))
        .collect::<Vec<_>>()
        .join(",")
}

/// The `DaemonSet`'s container, as podman flags: its capabilities only, a read-only root with a
/// tmpfs /tmp, seccomp unconfined, the host's bpffs.
fn daemonset_flags(caps: &str) -> Vec<String> {
    [
        "--cap-drop=all",
        &format!("--cap-add={caps}"),
        "--read-only",
        "--tmpfs=/tmp",
        "--security-opt=seccomp=unconfined",
        "--volume=/sys/fs/bpf:/sys/fs/bpf",
    ]
    .map(str::to_owned)
    .to_vec()
}

#[test]
fn the_image_loads_with_its_labels_entrypoint_and_one_layer() {
    let Some((podman, archive)) =
        Podman::load("the_image_loads_with_its_labels_entrypoint_and_one_layer")
    else {
        return;
    };
    let out = podman.cmd(&["image", "inspect", &reference()]);
    assert!(out.status.success(), "{}", text(&out));
    let inspect: Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    let img = &inspect[0];
    let cfg = &img["Config"];
    assert_eq!(
        cfg["Entrypoint"],
        serde_json::json!(["/usr/bin/chaos-agent"])
    );
    assert_eq!(cfg["Cmd"], serde_json::json!(["run"]));
    assert_eq!(img["Architecture"], "amd64");
    assert_eq!(img["Os"], "linux");
    let labels = &cfg["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(labels["org.opencontainers.image.title"], "chaos-agent");
    assert_eq!(
        labels["org.opencontainers.image.licenses"],
        env!("CARGO_PKG_LICENSE")
    );
    assert!(
        labels["org.opencontainers.image.revision"]
            .as_str()
            .is_some_and(|r| r.len() == 40),
        "the commit the image was built from: {labels}"
    );
    assert_eq!(
        img["RootFS"]["Layers"].as_array().map(Vec::len),
        Some(1),
        "one layer: {}",
        img["RootFS"]
    );
    // podman's digest and id are the archive's own, read by GNU tar from its index.json.
    let index = Command::new("tar")
        .arg("-xOf")
        .arg(&archive)
        .arg("index.json")
        .output()
        .expect("tar");
    let index: Value = serde_json::from_slice(&index.stdout).expect("index.json");
    assert_eq!(img["Digest"], index["manifests"][0]["digest"]);
    // The image is the static binary and some directories: 16 MiB from the release build,
    // 38 from the debug one the suite packs.
    let size = img["Size"].as_u64().expect("size");
    let archive_size = std::fs::metadata(&archive).expect("archive").len();
    println!(
        "image: {size} bytes unpacked, archive {archive_size} bytes ({})",
        archive.display()
    );
    assert!(size < 64 << 20, "the image is {size} bytes");
    // No shell in it: an exec of /bin/sh fails.
    let sh = podman
        .run(&["--entrypoint=/bin/sh"], &["-c", "true"])
        .stdin(Stdio::null())
        .output()
        .expect("podman run");
    assert!(
        !sh.status.success(),
        "a shell ran in the image: {}",
        text(&sh)
    );
}

#[test]
fn the_agent_runs_from_the_image_version_and_doctor() {
    let Some((podman, _)) = Podman::load("the_agent_runs_from_the_image_version_and_doctor") else {
        return;
    };
    let v = podman
        .run(&[], &["--version"])
        .stdin(Stdio::null())
        .output()
        .expect("podman run");
    assert!(v.status.success(), "{}", text(&v));
    assert_eq!(
        String::from_utf8_lossy(&v.stdout).trim(),
        format!("chaos-agent {}", env!("CARGO_PKG_VERSION"))
    );
    // doctor with the `DaemonSet`'s capabilities (and its cgroup mount, read here only).
    let mut flags = daemonset_flags(&daemonset_capabilities());
    flags.push("--volume=/sys/fs/cgroup:/sys/fs/cgroup:ro".into());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let d = podman
        .run(&flags, &["doctor", "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("podman run");
    assert!(d.status.success(), "doctor: {}", text(&d));
    let report: Value = serde_json::from_slice(&d.stdout).expect("doctor JSON");
    let uname = Command::new("uname").arg("-r").output().expect("uname");
    let release = String::from_utf8_lossy(&uname.stdout).trim().to_owned();
    assert!(
        report.to_string().contains(&release),
        "doctor in the container reports this kernel ({release}): {report}"
    );
}

/// A containerd of the test's own (root, state and socket in a temporary directory), killed and
/// removed on drop: the machine's runtime, if any, is not used.
struct Containerd {
    dir: TempDir,
    child: std::process::Child,
}

impl Containerd {
    fn start() -> Self {
        let dir = TempDir::new("ctrd");
        let d = &dir.0;
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 [grpc]\naddress = \"{0}/containerd.sock\"\n",
                d.display()
            ),
        )
        .expect("write config");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("log")).expect("log"))
            .spawn()
            .expect("containerd");
        let me = Self { dir, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !me.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer: {}",
                std::fs::read_to_string(me.dir.0.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        me
    }

    /// `ctr` against this containerd, in the namespace the kubelet uses.
    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.dir.0.join("containerd.sock"))
            .args(["--namespace", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ctr")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        // Snapshots are overlay mounts below its root: none may outlive the directory.
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        for m in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
            if m.starts_with(self.dir.str()) {
                let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

#[test]
fn ctr_imports_the_archive_and_runs_the_agent_from_it() {
    let test = "ctr_imports_the_archive_and_runs_the_agent_from_it";
    if !require_all(
        test,
        &[
            Feature::Tool("containerd"),
            Feature::Tool("ctr"),
            Feature::Tool("runc"),
            Feature::EnvFile(IMAGE_ENV),
        ],
    ) {
        return;
    }
    let archive = std::env::var(IMAGE_ENV).expect("checked above");
    let ctd = Containerd::start();
    let out = ctd.ctr(&["image", "import", &archive]);
    assert!(out.status.success(), "ctr image import: {}", text(&out));
    // Named as a pod spec's `chaos-agent:<version>` means to the kubelet.
    let ls = ctd.ctr(&["image", "ls", "-q"]);
    assert!(
        String::from_utf8_lossy(&ls.stdout)
            .lines()
            .any(|l| l == reference()),
        "{}",
        text(&ls)
    );
    let name = chaos_testing::unique_name("ctr");
    let run = ctd.ctr(&[
        "run",
        "--rm",
        &reference(),
        &name,
        "/usr/bin/chaos-agent",
        "--version",
    ]);
    assert!(run.status.success(), "ctr run: {}", text(&run));
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        format!("chaos-agent {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Pings from `from` to `dst`: (sent, received), by ping's own summary.
fn ping(pair: &VethPair, dst: &str, count: u32) -> (u32, u32) {
    let out = pair.b.sh(&format!(
        "ping -n -c {count} -i 0.2 -W 1 {dst} 2>&1 || true"
    ));
    let line = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("ping summary: {out}"));
    let n = |what: &str| -> u32 {
        line.split(',')
            .find(|p| p.contains(what))
            .and_then(|p| p.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{what} in {line}"))
    };
    (n("transmitted"), n("received"))
}

#[test]
fn one_fault_from_the_image_drops_at_the_receiver_and_leaves_nothing() {
    let test = "one_fault_from_the_image_drops_at_the_receiver_and_leaves_nothing";
    let Some((podman, _)) = Podman::load(test) else {
        return;
    };
    if !require_all(test, &[Feature::Tool("ping"), Feature::Tool("bpftool")]) {
        return;
    }
    let pair = VethPair::new(247);
    assert_eq!(ping(&pair, &pair.a_ip, 3), (3, 3), "the path works first");
    let state = TempDir::new("imgstate");
    let mut flags = daemonset_flags(&daemonset_capabilities());
    flags.push(format!("--network=ns:/run/netns/{}", pair.a.name));
    flags.push(format!("--volume={}:/var/lib/chaos-agent", state.str()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let ttl = chaos_testing::test_ttl(5);
    let cmd = podman.run(
        &flags,
        &[
            "inject",
            "--foreground",
            "--loss",
            "1",
            "--iface",
            &pair.a_if,
            "--ttl",
            &ttl,
        ],
    );
    let mut agent = AgentProcess::from_command(cmd);
    let line = agent.expect_line("injected ", Duration::from_secs(45));
    let injected = Instant::now();
    assert!(line.contains(&pair.a_if), "{line}");
    // The agent in the container attached in the test's namespace: bpftool sees its program.
    let progs = chaos_testing::attached_programs(&pair.a, &pair.a_if);
    assert!(
        progs.iter().any(|p| p.starts_with("chaos_")),
        "a chaos program on {}: {progs:?}",
        pair.a_if
    );
    // Replies from a leave by a's egress, where the fault drops them: b gets none.
    let (sent, received) = ping(&pair, &pair.a_ip, 5);
    assert!(
        injected.elapsed() < Duration::from_secs(5),
        "the pings ran inside the TTL"
    );
    assert_eq!((sent, received), (5, 0), "every reply dropped");
    // The TTL ends the fault and the container exits by itself.
    let (status, lines, err) = agent.wait(Duration::from_secs(45));
    assert!(status.success(), "{status:?} {lines:?} {err}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("reverted (ttl)") && l.contains("dropped")),
        "{lines:?}"
    );
    assert_eq!(ping(&pair, &pair.a_ip, 3), (3, 3), "the path works after");
    let left = chaos_testing::attached_programs(&pair.a, &pair.a_if);
    assert!(left.is_empty(), "programs left: {left:?}");
    let filters = chaos_testing::tc_filters(&pair.a, &pair.a_if, "egress");
    assert_eq!(filters, serde_json::json!([]), "filters left");
    let journals: Vec<PathBuf> = walk(&state.0);
    assert!(journals.is_empty(), "journal files left: {journals:?}");
    let ps = podman.cmd(&["ps", "-aq"]);
    assert_eq!(
        String::from_utf8_lossy(&ps.stdout).trim(),
        "",
        "containers left"
    );
}

#[test]
fn the_daemon_from_the_image_answers_the_daemonset_s_probes_and_a_wedged_one_does_not() {
    let test = "the_daemon_from_the_image_answers_the_daemonset_s_probes_and_a_wedged_one_does_not";
    let Some((podman, _)) = Podman::load(test) else {
        return;
    };
    if !require_all(test, &[Feature::Tool("curl")]) {
        return;
    }
    let pair = VethPair::new(248);
    let (state, run) = (TempDir::new("imgst"), TempDir::new("imgrun"));
    let mut flags = daemonset_flags(&daemonset_capabilities());
    flags.push(format!("--network=ns:/run/netns/{}", pair.a.name));
    flags.push(format!("--volume={}:/var/lib/chaos-agent", state.str()));
    flags.push(format!("--volume={}:/run/chaos-agent", run.str()));
    flags.push("--detach".into());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // As the DaemonSet runs it: `run` with /metrics on the pod's (here: a's) address.
    let metrics = format!("--metrics-addr={}:9464", pair.a_ip);
    let out = podman
        .run_kept(&flags, &["run", &metrics])
        .stdin(Stdio::null())
        .output()
        .expect("podman run");
    assert!(out.status.success(), "podman run -d: {}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // The liveness probe's command, exec'd in the container as the kubelet would, with the
    // probe's timeout (5 s) enforced by `timeout` as the kubelet enforces timeoutSeconds.
    let probe = || -> Output {
        let c = podman.command(&["exec", &id, "/usr/bin/chaos-agent", "status"]);
        Command::new("timeout")
            .arg("5")
            .arg(c.get_program())
            .args(c.get_args())
            .stdin(Stdio::null())
            .output()
            .expect("timeout")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = probe();
    while !last.status.success() {
        assert!(
            Instant::now() < deadline,
            "the startup probe never passed: {}\n{}",
            text(&last),
            text(&podman.cmd(&["logs", &id]))
        );
        std::thread::sleep(Duration::from_millis(200));
        last = probe();
    }
    assert!(
        String::from_utf8_lossy(&last.stdout).contains("accepting faults"),
        "{}",
        text(&last)
    );
    // The readiness probe: GET /metrics on the pod's address, from outside its namespace.
    let url = format!("http://{}:9464/metrics", pair.a_ip);
    let metrics = pair.b.sh(&format!(
        "curl -s -m 5 -o /dev/stdout -w '\\n%{{http_code}}' {url} || true"
    ));
    assert!(
        metrics.trim_end().ends_with("200") && metrics.contains("chaos_agent_info"),
        "GET {url}: {metrics}"
    );
    // Wedged: the agent's process stopped (SIGSTOP). The process exists and the socket still
    // accepts connections (the kernel's backlog), but nothing answers: the probe fails by its
    // timeout, so the kubelet would restart the container.
    let pid: i32 = String::from_utf8_lossy(
        &podman
            .cmd(&["inspect", "--format", "{{.State.Pid}}", &id])
            .stdout,
    )
    .trim()
    .parse()
    .expect("the container's pid");
    let pid = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let wedged = probe();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    assert_eq!(
        wedged.status.code(),
        Some(124),
        "the probe of a stopped agent times out: {}",
        text(&wedged)
    );
    assert!(probe().status.success(), "alive again after SIGCONT");
    // SIGTERM, as the kubelet stops a pod: the agent exits cleanly, within the grace period.
    let stop = podman.cmd(&["stop", "-t", "30", &id]);
    assert!(stop.status.success(), "podman stop: {}", text(&stop));
    let code = podman.cmd(&["inspect", "--format", "{{.State.ExitCode}}", &id]);
    assert_eq!(
        String::from_utf8_lossy(&code.stdout).trim(),
        "0",
        "exit code"
    );
    let _ = podman.cmd(&["rm", "-f", &id]);
    let journals = walk(&state.0);
    assert!(journals.is_empty(), "journal files left: {journals:?}");
}

/// Every file (not directory) below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else {
            files.push(p);
        }
    }
    files
}

/// `deploy/kubernetes` rendered by kustomize, as JSON objects (`PyYAML` reads kubectl's YAML).
fn rendered() -> Vec<Value> {
    let out = Command::new("kubectl")
        .args(["kustomize"])
        .arg(repo_root().join("deploy/kubernetes"))
        .output()
        .expect("kubectl");
    assert!(out.status.success(), "kubectl kustomize: {}", text(&out));
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    std::io::Write::write_all(&mut py.stdin.take().expect("stdin"), &out.stdout).expect("write");
    let json = py.wait_with_output().expect("python3");
    assert!(json.status.success(), "PyYAML: {}", text(&json));
    serde_json::from_slice::<Vec<Value>>(&json.stdout).expect("JSON")
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the rendered manifests"))
}

/// The Kubernetes versions the manifests are checked against: the oldest with
/// `securityContext.appArmorProfile` (1.30) and the newest kubernetes-validate carries.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// Runs [`MONITORING_CHECK`] on `objects` with Node.js.
fn check_monitoring(objects: &[&Value]) -> Output {
    let dir = TempDir::new("node");
    let path = dir.0.join("check.mjs");
    std::fs::write(&path, MONITORING_CHECK).expect("write script");
    let input = serde_json::to_vec(objects).expect("json");
    let mut child = Command::new("node")
        .arg(&path)
        .env("MODELS", MONITORING_MODELS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &input).expect("write");
    child.wait_with_output().expect("node")
}

/// Validates each object on stdin (a JSON array) with the prometheus-operator model of its
/// kind, whose `validate()` runs the JSON Schema of the operator's API types (ajv) and throws
/// on a wrong type, a missing required field or a bad enum value.
const MONITORING_CHECK: &str = r#"
import { readFileSync } from "fs";
const base = process.env.MODELS;
const docs = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const d of docs) {
  const [group, version] = d.apiVersion.split("/");
  const mod = await import(`${base}/${group}/${version}/${d.kind}.js`);
  try {
    new mod[d.kind](d).validate();
    console.log(`ok ${d.kind}/${d.metadata.name}`);
  } catch (e) {
    failed++;
    console.log(`FAILED ${d.kind}/${d.metadata.name}: ${e.message}`);
  }
}
process.exit(failed ? 1 : 0);
"#;

#[test]
fn the_manifests_pass_the_kubernetes_and_monitoring_schemas() {
    let test = "the_manifests_pass_the_kubernetes_and_monitoring_schemas";
    if !require_all(
        test,
        &[
            Feature::Tool("kubectl"),
            Feature::Tool("python3"),
            Feature::Tool("kubernetes-validate"),
            Feature::Tool("node"),
            Feature::File(MONITORING_MODELS),
            Feature::Tool("promtool"),
        ],
    ) {
        return;
    }
    let docs = rendered();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for want in [
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "DaemonSet",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
    ] {
        assert!(kinds.contains(&want), "{want} in {kinds:?}");
    }
    let (monitoring, core): (Vec<&Value>, Vec<&Value>) = docs.iter().partition(|d| {
        d["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("monitoring.coreos.com/"))
    });
    let dir = TempDir::new("k8s");
    // kubernetes-validate reads YAML, of which JSON is a subset: one object per file.
    let files: Vec<PathBuf> = core
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let f = dir
                .0
                .join(format!("{i}-{}.json", d["kind"].as_str().unwrap_or("x")));
            std::fs::write(&f, d.to_string()).expect("write");
            f
        })
        .collect();
    for version in KUBERNETES_VERSIONS {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", version])
            .args(&files)
            .output()
            .expect("kubernetes-validate");
        let said = text(&out);
        assert!(
            out.status.success() && !said.contains("ERROR"),
            "Kubernetes {version} schemas: {said}"
        );
        assert_eq!(
            said.matches("passed for resource").count(),
            core.len(),
            "every object checked against {version}: {said}"
        );
    }
    let out = check_monitoring(&monitoring);
    assert!(
        out.status.success(),
        "prometheus-operator validators: {}",
        text(&out)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).matches("ok ").count(),
        monitoring.len(),
        "{}",
        text(&out)
    );
    // The validator itself refuses a broken object (so the pass above means something).
    let mut broken = find(&docs, "ServiceMonitor").clone();
    broken["spec"]["endpoints"][0]["interval"] = serde_json::json!(15);
    let bad = check_monitoring(&[&broken]);
    assert!(
        !bad.status.success() && text(&bad).contains("interval"),
        "a numeric interval is refused: {}",
        text(&bad)
    );
    // The alerting rules, as Prometheus would load them, and the very groups of the rules file
    // for a plain Prometheus (whose promtool unit tests cover every alert).
    let rule = find(&docs, "PrometheusRule");
    let plain = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(repo_root().join("deploy/prometheus/chaos-agent.rules.yml"))
        .output()
        .expect("python3");
    assert!(plain.status.success(), "PyYAML: {}", text(&plain));
    let plain: Value = serde_json::from_slice(&plain.stdout).expect("JSON");
    assert_eq!(
        rule["spec"]["groups"], plain["groups"],
        "deploy/kubernetes/prometheusrule.yaml must carry deploy/prometheus/chaos-agent.rules.yml's groups"
    );
    let rules = dir.0.join("rules.json");
    std::fs::write(
        &rules,
        serde_json::json!({"groups": rule["spec"]["groups"]}).to_string(),
    )
    .expect("write");
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("promtool");
    assert!(out.status.success(), "promtool check rules: {}", text(&out));
}

#[test]
fn the_manifests_fit_together_and_the_config_is_the_agent_s() {
    let test = "the_manifests_fit_together_and_the_config_is_the_agent_s";
    if !require_all(test, &[Feature::Tool("kubectl"), Feature::Tool("python3")]) {
        return;
    }
    let docs = rendered();
    let ds = find(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let ctr = &pod["containers"][0];
    assert_eq!(
        ctr["image"],
        reference().as_str(),
        "the tag `cargo xtask image` writes"
    );
    // The `ConfigMap` the `DaemonSet` mounts is the generated one, and the agent accepts its config.
    let cm = find(&docs, "ConfigMap");
    let cm_name = cm["metadata"]["name"].as_str().expect("name");
    let mounted: Vec<&str> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["configMap"]["name"].as_str())
        .collect();
    assert_eq!(mounted, [cm_name]);
    let config = cm["data"]["config.toml"].as_str().expect("config.toml");
    let dir = TempDir::new("k8scfg");
    let file = dir.0.join("config.toml");
    std::fs::write(&file, config).expect("write");
    let check = Command::new(bin())
        .args(["config", "check"])
        .arg(&file)
        .output()
        .expect("config check");
    assert!(check.status.success(), "config check: {}", text(&check));
    assert!(config.contains("state_dir = \"/var/lib/chaos-agent\""));
    // The socket and state dir the config names are the hostPaths.
    let host_paths: Vec<&str> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    for p in ["/var/lib/chaos-agent", "/run/chaos-agent", "/sys/fs/bpf"] {
        assert!(host_paths.contains(&p), "{p} in {host_paths:?}");
    }
    // Probes: liveness asks the API over the socket, with a timeout; readiness reads /metrics.
    let live = &ctr["livenessProbe"];
    assert_eq!(
        live["exec"]["command"],
        serde_json::json!(["/usr/bin/chaos-agent", "status"])
    );
    assert!(live["timeoutSeconds"].as_u64().is_some_and(|t| t > 0));
    assert_eq!(ctr["readinessProbe"]["httpGet"]["path"], "/metrics");
    // The metrics address: the node's (hostNetwork), on the port the Service names.
    let args: Vec<&str> = ctr["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--metrics-addr=$(NODE_IP):9464"), "{args:?}");
    assert_eq!(pod["hostNetwork"], true);
    let svc = find(&docs, "Service");
    assert_eq!(svc["spec"]["clusterIP"], "None", "headless");
    assert_eq!(svc["spec"]["ports"][0]["port"], 9464);
    assert_eq!(ctr["ports"][0]["containerPort"], 9464);
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(&pod_labels[k], v, "the Service selects the agent's pods");
    }
    let sm = find(&docs, "ServiceMonitor");
    for (k, v) in sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "the ServiceMonitor selects the Service"
        );
    }
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        svc["spec"]["ports"][0]["name"]
    );
    // Capabilities only: not privileged, everything dropped first.
    let sc = &ctr["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        daemonset_capabilities(),
        sc["capabilities"]["add"]
            .as_array()
            .expect("add")
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        "the fault test's capabilities are the rendered DaemonSet's"
    );
}
