//! Honest skips: a test that cannot run here says so in a way every summary counts, and a test
//! whose feature this kernel must have fails instead of skipping.
//!
//! - [`skip`] records `<binary>::<test>: <why>` in the file named by `CHAOS_SKIP_LOG` (set by
//!   `cargo xtask test` for each step and by the VM guest for each binary), so the summaries
//!   count the test as skipped, not as passed. Without the variable it prints `SKIP ...` past
//!   libtest's output capture, so a plain `cargo test` shows it.
//! - [`require`] / [`require_absent`] decide with independent tools (`tc`, `ip`, `/proc`, `/sys`,
//!   the `bpf` syscall with a program of our own; never the agent's code) whether a [`Feature`] is there, skip if it is not, and panic instead
//!   when the kernel's [`Profile`] (env `CHAOS_REQUIRE`) says it must be (or must not be) there.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Mutex, OnceLock};

use std::process::Command;

use crate::{NetNs, have_tool};

/// Something a test needs of the machine, detected without the agent's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// Effective uid 0.
    Root,
    /// tcx links (Linux >= 6.6): the kernel accepts a `BPF_TCX_INGRESS` link of a trivial
    /// program of ours on a throwaway loopback.
    Tcx,
    /// The `clsact` qdisc: `tc qdisc add dev lo clsact` in a throwaway namespace.
    Clsact,
    /// `cls_bpf` filters under clsact, the pre-tcx attach path: `tc filter add ... bpf bytecode`
    /// (a classic BPF program, so no object file is needed) in a throwaway namespace.
    ClsBpf,
    /// A qdisc kind (`netem`, `fq`, `prio`, `htb`, `tbf`): known unless `tc qdisc add` in a
    /// throwaway namespace says "Specified qdisc kind is unknown" (as [`crate::have_qdisc`]).
    Qdisc(&'static str),
    /// IFB devices: `ip link add ... type ifb` in a throwaway namespace.
    Ifb,
    /// cgroup v2 mounted at `/sys/fs/cgroup` with the `cpu`, `memory`, `io` and `pids`
    /// controllers (`cgroup.controllers`).
    CgroupV2,
    /// A cgroup v1 hierarchy with this controller (`cpu`, `memory`) mounted: a `cgroup` line of
    /// `/proc/self/mounts` whose options list it.
    CgroupV1(&'static str),
    /// Kernel BTF (`/sys/kernel/btf/vmlinux`).
    Btf,
    /// The VM's blank scratch disk ([`crate::VM_SCRATCH_DISK`]): a block device in sysfs that
    /// nothing has mounted.
    ScratchDisk,
    /// A program on PATH.
    Tool(&'static str),
    /// A file or directory at this path (a package `cargo xtask setup` installs outside PATH).
    File(&'static str),
    /// A file at the path this environment variable names (an artifact `cargo xtask test`
    /// builds and hands to the tests, such as the image archive).
    EnvFile(&'static str),
}

impl Feature {
    /// The name `CHAOS_REQUIRE` lists it by: `root`, `tcx`, `clsact`, `cls_bpf`, the qdisc kind,
    /// `ifb`, `cgroup2`, `btf`, `tool:NAME`.
    #[must_use]
    pub fn name(self) -> String {
        match self {
            Self::Root => "root".into(),
            Self::Tcx => "tcx".into(),
            Self::Clsact => "clsact".into(),
            Self::ClsBpf => "cls_bpf".into(),
            Self::Qdisc(kind) => kind.into(),
            Self::Ifb => "ifb".into(),
            Self::CgroupV2 => "cgroup2".into(),
            Self::CgroupV1(c) => format!("cgroup1:{c}"),
            Self::Btf => "btf".into(),
            Self::ScratchDisk => "scratch_disk".into(),
            Self::Tool(t) => format!("tool:{t}"),
            Self::File(p) => format!("file:{p}"),
            Self::EnvFile(v) => format!("env:{v}"),
        }
    }

    /// What it is, for messages.
    fn describe(self) -> String {
        match self {
            Self::Root => "root".into(),
            Self::Tcx => "tcx links (>= 6.6)".into(),
            Self::Clsact => "the clsact qdisc (sch_ingress)".into(),
            Self::ClsBpf => "cls_bpf filters".into(),
            Self::Qdisc(kind) => format!("sch_{kind}"),
            Self::Ifb => "ifb devices".into(),
            Self::CgroupV2 => {
                "cgroup v2 at /sys/fs/cgroup with cpu, memory, io, pids controllers".into()
            }
            Self::CgroupV1(c) => format!("a cgroup v1 hierarchy with the {c} controller"),
            Self::Btf => "kernel BTF (/sys/kernel/btf/vmlinux)".into(),
            Self::ScratchDisk => format!("an unmounted scratch disk at {}", crate::VM_SCRATCH_DISK),
            Self::Tool(t) => format!("`{t}` on PATH"),
            Self::File(p) => (*p).to_owned(),
            Self::EnvFile(v) => format!("a file named by ${v}"),
        }
    }

    /// Detects `self` (and, for the features probed in a namespace, all of them at once).
    fn detect(self) -> Vec<(Self, bool)> {
        let one = match self {
            Self::Qdisc(_) | Self::Clsact | Self::ClsBpf | Self::Ifb => {
                return probe_in_namespace(self);
            }
            Self::Root => nix::unistd::geteuid().is_root(),
            Self::Tcx => kernel_has_tcx(),
            Self::CgroupV2 => std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
                .is_ok_and(|l| {
                    let have: Vec<&str> = l.split_whitespace().collect();
                    ["cpu", "memory", "io", "pids"]
                        .iter()
                        .all(|c| have.contains(c))
                }),
            Self::CgroupV1(c) => crate::cgroup_v1_mount(c).is_some(),
            Self::Btf => std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
            Self::ScratchDisk => {
                let name = crate::VM_SCRATCH_DISK.trim_start_matches("/dev/");
                std::path::Path::new("/sys/class/block")
                    .join(name)
                    .join("dev")
                    .exists()
                    && !std::fs::read_to_string("/proc/mounts")
                        .unwrap_or_default()
                        .contains(crate::VM_SCRATCH_DISK)
            }
            Self::Tool(t) => have_tool(t),
            Self::File(p) => std::path::Path::new(p).exists(),
            Self::EnvFile(v) => {
                std::env::var_os(v).is_some_and(|p| std::path::Path::new(&p).is_file())
            }
        };
        vec![(self, one)]
    }
}

/// The qdisc kinds probed whenever one of the namespace features is asked for.
const QDISC_KINDS: [&str; 5] = ["netem", "fq", "prio", "htb", "tbf"];

/// Probes every qdisc of [`QDISC_KINDS`] (and `asked`'s, if another), clsact, `cls_bpf` and
/// IFB in one throwaway namespace with one shell: under the VM's TCG each namespace and each
/// exec costs a good part of a second. A qdisc kind is there unless `tc` says "Specified qdisc
/// kind is unknown" (netlink `ENOENT`), as in [`have_qdisc`]; `cls_bpf` is tried with one
/// classic BPF instruction ("accept"), so no object file is needed.
fn probe_in_namespace(asked: Feature) -> Vec<(Feature, bool)> {
    let mut kinds: Vec<&'static str> = QDISC_KINDS.to_vec();
    if let Feature::Qdisc(k) = asked
        && !kinds.contains(&k)
    {
        kinds.push(k);
    }
    let mut found: Vec<(Feature, bool)> =
        kinds.iter().map(|k| (Feature::Qdisc(k), false)).collect();
    found.extend([
        (Feature::Clsact, false),
        (Feature::ClsBpf, false),
        (Feature::Ifb, false),
    ]);
    if !nix::unistd::geteuid().is_root() {
        return found;
    }
    let ns = NetNs::new("chf");
    let n = &ns.name;
    let script = format!(
        "q() {{ if out=$(tc -n {n} qdisc add dev lo root handle 1: $1 2>&1); then \
              tc -n {n} qdisc del dev lo root; echo \"qdisc $1\"; \
            else case \"$out\" in *'kind is unknown'*|*'No such file or directory'*) ;; \
              *) echo \"qdisc $1\" ;; esac; fi; }}\n\
         for k in {kinds}; do q $k; done\n\
         tc -n {n} qdisc add dev lo clsact && echo clsact && \
           tc -n {n} filter add dev lo ingress bpf bytecode '1,6 0 0 4294967295,' && echo cls_bpf\n\
         ip -n {n} link add chifbprobe type ifb && echo ifb\n",
        kinds = kinds.join(" ")
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .stderr(std::process::Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    for (f, v) in &mut found {
        *v = lines.contains(&f.name().as_str())
            || matches!(f, Feature::Qdisc(k) if lines.contains(&format!("qdisc {k}").as_str()));
    }
    found
}

/// tcx asked of the kernel itself, with a program of ours, not the agent's: load a two-instruction
/// `sched_cls` program ("return 0") and ask for a `BPF_LINK_CREATE` of type `BPF_TCX_INGRESS` on
/// the loopback of a throwaway namespace. 6.6+ makes the link (closed at once, which detaches
/// it); older kernels answer `EINVAL`. (Milliseconds: `/proc/kallsyms` took 10 s to read in the
/// TCG guest.)
fn kernel_has_tcx() -> bool {
    if !nix::unistd::geteuid().is_root() {
        return false;
    }
    let ns = NetNs::new("chx");
    crate::in_netns(&ns, tcx_link_on_loopback)
}

fn tcx_link_on_loopback() -> bool {
    /// `union bpf_attr` for `BPF_PROG_LOAD`, up to `prog_flags`.
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
    }
    /// `union bpf_attr` for `BPF_LINK_CREATE` (the tcx part zero: no relative, no revision).
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_ifindex: u32,
        attach_type: u32,
        flags: u32,
        rest: [u64; 4],
    }
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
    const BPF_TCX_INGRESS: u32 = 46;
    // `r0 = 0; exit`, as `struct bpf_insn` (opcode in the low byte).
    let insns: [u64; 2] = [0xb7, 0x95];
    let license = b"GPL\0";
    let load = ProgLoad {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
    };
    let bpf = |cmd: libc::c_long, attr: *const libc::c_void, size: usize| -> libc::c_long {
        // SAFETY: `attr` points to a live, initialised `repr(C)` attribute struct of `size`
        // bytes; the kernel reads no further than `size` and zero-fills the rest.
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size as libc::c_uint) }
    };
    let prog = bpf(
        BPF_PROG_LOAD,
        std::ptr::from_ref(&load).cast(),
        std::mem::size_of::<ProgLoad>(),
    );
    if prog < 0 {
        return false;
    }
    let link = LinkCreate {
        prog_fd: prog as u32,
        // The loopback of a new namespace is always ifindex 1.
        target_ifindex: 1,
        attach_type: BPF_TCX_INGRESS,
        flags: 0,
        rest: [0; 4],
    };
    let fd = bpf(
        BPF_LINK_CREATE,
        std::ptr::from_ref(&link).cast(),
        std::mem::size_of::<LinkCreate>(),
    );
    for f in [fd, prog] {
        if f >= 0 {
            // SAFETY: a descriptor the kernel just gave us, closed once.
            unsafe { libc::close(f as libc::c_int) };
        }
    }
    fd >= 0
}

/// Whether this machine has `feature` (asked once per process: neither kernel gains a module
/// during a run, the host has no loadable modules and the guest loads them at boot).
#[must_use]
pub fn has(feature: Feature) -> bool {
    static CACHE: OnceLock<Mutex<HashMap<Feature, bool>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(v) = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&feature)
    {
        return *v;
    }
    let found = feature.detect();
    let mut cache = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (f, v) in found {
        cache.entry(f).or_insert(v);
    }
    cache.get(&feature).copied().unwrap_or(false)
}

/// What one kernel the suite runs on must have and must lack. A feature in neither list may
/// skip; one in `must_have` that is missing fails the test, and so does one in `must_lack`
/// that is present (the tests of the refusal paths run only where it is missing: if it
/// appeared, they would silently stop proving anything).
#[derive(Debug)]
pub struct Profile {
    /// The value of `CHAOS_REQUIRE` that selects it.
    pub name: &'static str,
    /// The kernel it describes.
    pub kernel: &'static str,
    /// Features whose absence is a failure.
    pub must_have: &'static [Feature],
    /// Features whose presence is a failure.
    pub must_lack: &'static [Feature],
}

/// The kernels of the suite. `cargo xtask test` selects `host` when `CI` is set; the VM's
/// `/init` selects `vm`. docs/vm-test.md has the table of which test proves what where.
pub const PROFILES: &[Profile] = &[
    Profile {
        name: "host",
        kernel: "the CI host, Linux 6.18: tcx, no sch_netem/sch_fq/sch_prio, cgroup v1",
        must_have: &[
            Feature::Root,
            Feature::Btf,
            Feature::Tcx,
            Feature::Clsact,
            Feature::ClsBpf,
            Feature::Ifb,
            Feature::Qdisc("htb"),
            Feature::Qdisc("tbf"),
            Feature::Tool("ip"),
            Feature::Tool("tc"),
            Feature::Tool("ping"),
            Feature::Tool("ss"),
            Feature::Tool("iperf3"),
            Feature::Tool("bpftool"),
            // `cargo xtask setup` installs them (the metrics tests, tests/prometheus.rs).
            Feature::Tool("promtool"),
            Feature::Tool("prometheus"),
            Feature::Tool("dnsmasq"),
            // The Chaos Toolkit test (`cargo xtask setup` installs it with pip).
            Feature::Tool("chaos"),
            // The --container tests' runtime (`cargo xtask setup` installs both).
            Feature::Tool("podman"),
            Feature::Tool("runc"),
            // The image tests: the archive `cargo xtask test` builds before them, and
            // containerd (`cargo xtask setup` installs it) beside podman.
            Feature::EnvFile(crate::IMAGE_ENV),
            Feature::Tool("containerd"),
            Feature::Tool("ctr"),
            // The manifest tests: kustomize (kubectl's), the Kubernetes schemas (pip) and the
            // prometheus-operator's (npm), and Node.js to run the latter's validators.
            Feature::Tool("kubectl"),
            Feature::Tool("kubernetes-validate"),
            Feature::Tool("node"),
            Feature::File(crate::MONITORING_MODELS),
            // The limit faults' v1 paths (hybrid host), and the loop devices --io-limit
            // throttles there.
            Feature::CgroupV1("cpu"),
            Feature::CgroupV1("memory"),
            Feature::CgroupV1("blkio"),
            Feature::Tool("losetup"),
            // The completions test's judges (`cargo xtask setup` installs them).
            Feature::Tool("bash"),
            Feature::Tool("zsh"),
            Feature::Tool("fish"),
            Feature::Tool("man"),
        ],
        // The refusal paths ("sch_netem is missing, nothing was changed") are proven here only.
        must_lack: &[Feature::Qdisc("netem"), Feature::Qdisc("fq")],
    },
    Profile {
        name: "vm",
        kernel: "the `cargo xtask vm-test` guest, Debian's 6.1: netem, fq, prio, cgroup v2, no tcx",
        must_have: &[
            Feature::Root,
            Feature::Btf,
            Feature::Clsact,
            Feature::ClsBpf,
            Feature::Ifb,
            Feature::Qdisc("netem"),
            Feature::Qdisc("fq"),
            Feature::Qdisc("prio"),
            Feature::Qdisc("htb"),
            Feature::Qdisc("tbf"),
            Feature::CgroupV2,
            Feature::ScratchDisk,
            Feature::Tool("ip"),
            Feature::Tool("tc"),
            Feature::Tool("ping"),
            Feature::Tool("ss"),
            Feature::Tool("iperf3"),
            Feature::Tool("bpftool"),
        ],
        // The guest is where the netlink (cls_bpf) attach path runs by default.
        must_lack: &[Feature::Tcx],
    },
];

/// The rules in force: `CHAOS_REQUIRE` is a [`Profile`] name, `none`, or a comma-separated
/// list of feature names (`!name`: must lack). Unset, it is `vm` in the guest (`CHAOS_VM`) and
/// `none` elsewhere.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// What selected them, for messages.
    pub source: String,
    /// Names of the features whose absence fails.
    pub must_have: Vec<String>,
    /// Names of the features whose presence fails.
    pub must_lack: Vec<String>,
}

impl Rules {
    /// Parses a `CHAOS_REQUIRE` value.
    #[must_use]
    pub fn parse(value: &str) -> Self {
        let value = value.trim();
        let source = format!("CHAOS_REQUIRE={value}");
        if let Some(p) = PROFILES.iter().find(|p| p.name == value) {
            return Self {
                source: format!("{source}, {}", p.kernel),
                must_have: p.must_have.iter().map(|f| f.name()).collect(),
                must_lack: p.must_lack.iter().map(|f| f.name()).collect(),
            };
        }
        let mut r = Self {
            source,
            ..Self::default()
        };
        for name in value.split(',').map(str::trim) {
            match name.strip_prefix('!') {
                _ if name.is_empty() || name == "none" => {}
                Some(n) => r.must_lack.push(n.to_owned()),
                None => r.must_have.push(name.to_owned()),
            }
        }
        r
    }

    /// The rules of this process.
    #[must_use]
    pub fn current() -> &'static Self {
        static RULES: OnceLock<Rules> = OnceLock::new();
        RULES.get_or_init(|| match std::env::var("CHAOS_REQUIRE") {
            Ok(v) => Self::parse(&v),
            Err(_) if crate::in_vm() => Self::parse("vm"),
            Err(_) => Self::default(),
        })
    }
}

/// The profiles that require `feature` (where a skip here is proven instead): "vm", or "".
fn required_by(feature: Feature) -> String {
    let names: Vec<&str> = PROFILES
        .iter()
        .filter(|p| p.must_have.contains(&feature))
        .map(|p| p.name)
        .collect();
    names.join(", ")
}

/// "missing A, B; required on: vm" (per feature, "A (required on: vm)", where they differ).
fn missing_message(missing: &[Feature]) -> String {
    let wheres: Vec<String> = missing.iter().map(|f| required_by(*f)).collect();
    let names: Vec<String> = missing.iter().map(|f| f.describe()).collect();
    if wheres.iter().all(|w| *w == wheres[0]) {
        let on = if wheres[0].is_empty() {
            String::new()
        } else {
            format!("; required on: {}", wheres[0])
        };
        return format!("missing {}{on}", names.join(", "));
    }
    let each: Vec<String> = names
        .iter()
        .zip(&wheres)
        .map(|(n, w)| {
            if w.is_empty() {
                n.clone()
            } else {
                format!("{n} (required on: {w})")
            }
        })
        .collect();
    format!("missing {}", each.join(", "))
}

/// True if this machine has `feature`. If not: panics when the rules say this kernel must have
/// it, else records a skip for `test` and returns false (the caller returns).
#[must_use]
#[track_caller]
pub fn require(test: &str, feature: Feature) -> bool {
    require_all(test, &[feature])
}

/// [`require`] for several features: true if all are there; the skip or the panic names every
/// one that is missing.
#[must_use]
#[track_caller]
pub fn require_all(test: &str, features: &[Feature]) -> bool {
    let missing: Vec<Feature> = features.iter().copied().filter(|f| !has(*f)).collect();
    if missing.is_empty() {
        return true;
    }
    let rules = Rules::current();
    let fatal: Vec<String> = missing
        .iter()
        .filter(|f| rules.must_have.contains(&f.name()))
        .map(|f| f.describe())
        .collect();
    assert!(
        fatal.is_empty(),
        "{test}: this kernel must have {} ({}), and it is missing: a failure, not a skip",
        fatal.join(", "),
        rules.source
    );
    skip(test, &missing_message(&missing));
    false
}

/// True if this machine lacks `feature` (for tests of a refusal path). If it has it: panics
/// when the rules say this kernel must lack it, else records a skip and returns false.
#[must_use]
#[track_caller]
pub fn require_absent(test: &str, feature: Feature) -> bool {
    if !has(feature) {
        return true;
    }
    let rules = Rules::current();
    assert!(
        !rules.must_lack.contains(&feature.name()),
        "{test}: this kernel must lack {} ({}) so that this test proves the path without it, \
         and it has it: a failure, not a skip",
        feature.describe(),
        rules.source
    );
    skip(test, &format!("this kernel has {}", feature.describe()));
    false
}

/// The name a skip is recorded under, `<binary>::<libtest name>`, and what the `test` label
/// adds to it. libtest runs each test on a thread named after it; from another thread the
/// label stands in. A label that is more than a short name ("checksum counters",
/// "x (dig part)") is kept for the reason, without a leading copy of the name.
fn qualified(test: &str) -> (String, Option<String>) {
    let thread = std::thread::current();
    let Some(name) = thread.name().filter(|n| *n != "main") else {
        return (format!("{}::{test}", binary_name()), None);
    };
    let short = name.rsplit("::").next().unwrap_or(name);
    let is_a_name = test.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let note = (!is_a_name)
        .then(|| test.strip_prefix(short).unwrap_or(test).trim().to_owned())
        .filter(|n| !n.is_empty());
    (format!("{}::{name}", binary_name()), note)
}

/// The test binary's name: cargo's `loss-0123456789abcdef` without the hash, the VM guest's
/// `/tests/loss` as it is.
fn binary_name() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let stem = exe
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    strip_hash(&stem).to_owned()
}

fn strip_hash(stem: &str) -> &str {
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name
        }
        _ => stem,
    }
}

/// Skips the calling test (it must return after this): the line `skip <binary>::<test>: <why>`
/// goes to the file named by `CHAOS_SKIP_LOG`, which the summaries of `cargo xtask test` and
/// `cargo xtask vm-test` read to count the test as skipped instead of passed. `test` names the
/// test where the thread does not (libtest names each test's thread). Prefer [`require`] when
/// the reason is a missing kernel feature: only it can fail where the feature is mandatory.
pub fn skip(test: &str, why: &str) {
    let (name, note) = qualified(test);
    let why = note.map_or_else(|| why.to_owned(), |n| format!("{n}: {why}"));
    record(log_path().as_deref(), Kind::Skip, &name, &why);
}

/// Records that the calling test goes on without one `part` (a check that needs a tool this
/// machine lacks): `part <binary>::<test>: <part>: <why>`. The test still counts as passed
/// (the rest of it ran), and the summaries list it as partly skipped. A whole-test
/// [`skip`] of the same test wins.
pub fn skip_part(test: &str, part: &str, why: &str) {
    let (name, _) = qualified(test);
    record(
        log_path().as_deref(),
        Kind::Part,
        &name,
        &format!("{part}: {why}"),
    );
}

fn log_path() -> Option<std::path::PathBuf> {
    std::env::var_os("CHAOS_SKIP_LOG").map(std::path::PathBuf::from)
}

/// A whole test skipped, or a part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Skip,
    Part,
}

/// Writes one record, `skip|part <name>: <why>`, on one line (the format `cargo xtask` parses).
fn record(log: Option<&std::path::Path>, kind: Kind, name: &str, why: &str) {
    let why = why.split_whitespace().collect::<Vec<_>>().join(" ");
    let (word, shout) = match kind {
        Kind::Skip => ("skip", "SKIP"),
        Kind::Part => ("part", "SKIP PART"),
    };
    let Some(path) = log else {
        // Past libtest's capture (it captures only the print macros): a plain `cargo test`
        // has no summary that would count it.
        let _ = writeln!(std::io::stderr(), "{shout} {name}: {why}");
        return;
    };
    eprintln!("{shout} {name}: {why}");
    // One write on an O_APPEND file: records of processes running at once never mix.
    let line = format!("{word} {name}: {why}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!(
            "{name}: skipping ({why}), but CHAOS_SKIP_LOG={} is not writable ({e}): \
             the skip would count as a pass",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_and_lists_parse() {
        let vm = Rules::parse("vm");
        assert!(vm.must_have.contains(&"netem".to_owned()));
        assert!(vm.must_have.contains(&"cgroup2".to_owned()));
        assert_eq!(vm.must_lack, ["tcx"]);
        let host = Rules::parse("host");
        assert!(host.must_have.contains(&"tcx".to_owned()));
        assert!(!host.must_have.contains(&"netem".to_owned()));
        assert_eq!(host.must_lack, ["netem", "fq"]);
        let list = Rules::parse("netem, tool:tc,!tcx");
        assert_eq!(list.must_have, ["netem", "tool:tc"]);
        assert_eq!(list.must_lack, ["tcx"]);
        assert_eq!(Rules::parse("none").must_have, Vec::<String>::new());
        assert_eq!(Rules::parse("").must_lack, Vec::<String>::new());
    }

    #[test]
    fn no_profile_requires_and_forbids_the_same_feature() {
        for p in PROFILES {
            for f in p.must_have {
                assert!(!p.must_lack.contains(f), "{}: {f:?} in both lists", p.name);
            }
        }
    }

    #[test]
    fn skip_messages_say_where_the_feature_is_required() {
        assert_eq!(
            missing_message(&[Feature::Qdisc("netem"), Feature::Qdisc("fq")]),
            "missing sch_netem, sch_fq; required on: vm"
        );
        assert_eq!(
            missing_message(&[Feature::Tcx]),
            "missing tcx links (>= 6.6); required on: host"
        );
        assert_eq!(
            missing_message(&[Feature::Qdisc("netem"), Feature::Tool("nope")]),
            "missing sch_netem (required on: vm), `nope` on PATH"
        );
    }

    #[test]
    fn names_strip_cargos_hash_only() {
        assert_eq!(strip_hash("loss-0123456789abcdef"), "loss");
        assert_eq!(strip_hash("chaos_agent-0123456789abcdef"), "chaos_agent");
        assert_eq!(strip_hash("lib-chaos_agent"), "lib-chaos_agent");
        assert_eq!(strip_hash("bin-chaos-agent"), "bin-chaos-agent");
        assert_eq!(strip_hash("loss"), "loss");
    }

    #[test]
    fn the_record_names_the_libtest_test() {
        let (name, note) = qualified("record_names_libtest");
        assert!(
            name.ends_with("::require::tests::the_record_names_the_libtest_test"),
            "{name}"
        );
        assert_eq!(note, None);
        let (_, note) = qualified("the_record_names_the_libtest_test (dig part)");
        assert_eq!(note.as_deref(), Some("(dig part)"));
        let (_, note) = qualified("checksum counters");
        assert_eq!(note.as_deref(), Some("checksum counters"));
        let (other, note) = std::thread::spawn(|| qualified("label")).join().unwrap();
        assert!(other.ends_with("::label"), "{other}");
        assert_eq!(note, None);
    }

    #[test]
    fn records_are_one_line_each() {
        let path = std::env::temp_dir().join(crate::unique_name("chsk"));
        record(Some(&path), Kind::Skip, "loss::a", "one\nreason");
        record(Some(&path), Kind::Part, "dns::b", "dig: not installed");
        let log = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            log,
            "skip loss::a: one reason\npart dns::b: dig: not installed\n"
        );
    }
}
