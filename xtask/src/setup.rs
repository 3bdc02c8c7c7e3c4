//! `cargo xtask setup`: the idempotent bootstrap of a fresh machine.
//!
//! Every item is checked first and only installed if missing, so running it on a ready machine
//! takes a second and changes nothing. The order matters: llvm-22-dev must exist before
//! bpf-linker is built against it, and all of it before anything builds chaos-agent (whose
//! build.rs runs `cargo +nightly build -Z build-std=core` with bpf-linker).

use std::path::PathBuf;

use anyhow::{Context as _, bail};

use crate::{capture, cmd, exec};

/// Debian packages, and why each is needed.
const APT_PACKAGES: &[(&str, &str)] = &[
    (
        "llvm-22-dev",
        "bpf-linker links LLVM 22, the LLVM of rustc 1.95/nightly 1.97",
    ),
    (
        "libpolly-22-dev",
        "needed to link bpf-linker against llvm-22",
    ),
    ("libzstd-dev", "needed to link bpf-linker against llvm-22"),
    (
        "iproute2",
        "ip netns / tc: the tests' independent view of the kernel",
    ),
    ("iperf3", "throughput under faults"),
    (
        "nftables",
        "bench compares the agent's drop and inject latency with an nft rule",
    ),
    ("iputils-ping", "ping in tests and VM guest"),
    ("bpftool", "tests and bench inspect programs and links"),
    ("bind9-dnsutils", "dig, for DNS fault tests"),
    ("dnsmasq", "a DNS server inside test namespaces"),
    ("ethtool", "offload settings of test veths"),
    ("socat", "small TCP/UDP peers in tests"),
    ("strace", "debugging"),
    (
        "curl",
        "daemon tests talk HTTP to the API socket and /metrics",
    ),
    ("util-linux", "setpriv runs tests as an unprivileged user"),
    ("prometheus", "promtool checks the /metrics exposition"),
    ("qemu-system-x86", "vm-test boots a Debian 6.1 kernel"),
    ("busybox-static", "the VM guest's userland"),
    ("cpio", "packs the VM guest's initramfs"),
    (
        "bash",
        "the completions test loads the bash script into bash",
    ),
    ("zsh", "the completions test drives zsh's completion system"),
    ("fish", "the completions test asks fish's complete -C"),
    (
        "man-db",
        "the completions test renders a generated man page",
    ),
    ("groff-base", "man-db's formatter"),
    ("lintian", "cargo xtask package checks the .deb"),
    (
        "mmdebstrap",
        "vm-systemd builds its Debian userland (systemd as PID 1)",
    ),
    (
        "podman",
        "--container tests run a real container from a locally built image",
    ),
    (
        "runc",
        "podman's runtime in the tests: crun refuses this host's hybrid cgroups",
    ),
    (
        "containerd",
        "the image test imports the agent's image as a Kubernetes node would (ctr image import); the pod tests run pods through its CRI plugin",
    ),
    (
        "containernetworking-plugins",
        "the pod tests' containerd wires pods with the CNI bridge, host-local and loopback plugins",
    ),
    (
        "protobuf-compiler",
        "protoc: the CRI client (k8s-cri) generates its gRPC code from the CRI protos at build time",
    ),
];

/// Packages from the Python package index: (item, a shell check that succeeds when it is there, the pip requirement).
/// Pinned, so that a new release cannot change a test's verdict under a green CI.
const PIP_PACKAGES: &[(&str, &str, &str)] = &[
    (
        "chaostoolkit 1.19.0 (pip)",
        "chaos --version 2>/dev/null | grep -q 'version 1.19.0'",
        "chaostoolkit==1.19.0",
    ),
    (
        "jsonschema (pip)",
        "python3 -c 'import jsonschema'",
        "jsonschema==4.26.0",
    ),
    (
        "kubernetes-validate 1.37.0 (pip)",
        "kubernetes-validate --version 2>/dev/null | grep -q '1.37.0'",
        "kubernetes-validate==1.37.0",
    ),
];

/// npm packages, installed under [`NPM_PREFIX`] (not globally: only the tests use them), pinned:
/// (item, package directory that shows it is there, the npm spec).
const NPM_PACKAGES: &[(&str, &str, &str)] = &[(
    "@kubernetes-models/prometheus-operator 6.0.0 (npm)",
    "@kubernetes-models/prometheus-operator",
    "@kubernetes-models/prometheus-operator@6.0.0",
)];

/// The npm prefix of [`NPM_PACKAGES`]: chaos-testing's `MONITORING_MODELS` points below it.
const NPM_PREFIX: &str = "/usr/local/lib/chaos-testing/node";

/// The bpf-linker release we build: pinned so that a new release cannot change the toolchain
/// under a green CI.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM major version shared by rustc 1.95, nightly 1.97 and llvm-22-dev.
pub(crate) const LLVM_MAJOR: u32 = 22;

#[derive(Debug, Default, clap::Args)]
pub struct SetupArgs {
    /// Only report what is missing (exit status 1 if anything is); install nothing.
    #[arg(long)]
    check: bool,
}

/// Outcome of checking one item.
#[derive(Debug, PartialEq, Eq)]
enum State {
    Present,
    /// Missing (or wrong), with the reason.
    Missing(String),
}

/// Runs the whole bootstrap. `check` only reports.
pub fn run(args: &SetupArgs) -> anyhow::Result<()> {
    if !args.check {
        crate::require_root("setup")?;
    }
    let mut missing = Vec::new();
    let mut note = |item: &str, state: State| -> bool {
        match state {
            State::Present => {
                println!("ok: {item} already present");
                false
            }
            State::Missing(why) => {
                if args.check {
                    println!("missing: {item} ({why})");
                } else {
                    println!("installing {item} ... ({why})");
                }
                missing.push(item.to_owned());
                true
            }
        }
    };

    // apt: one `apt-get update` and one `apt-get install` for everything missing.
    let mut apt_missing = Vec::new();
    for (pkg, why) in APT_PACKAGES {
        let state = if dpkg_installed(pkg) {
            State::Present
        } else {
            State::Missing((*why).to_owned())
        };
        if note(pkg, state) {
            apt_missing.push(*pkg);
        }
    }
    if !args.check && !apt_missing.is_empty() {
        apt_install(&apt_missing)?;
    }

    // rustup: the nightly toolchain with rust-src (aya-build: -Z build-std=core), the musl target
    // (static binaries for the VM guest), clippy and rustfmt (lint).
    let rustup_items: [(&str, State, Vec<&str>); 5] = [
        (
            "nightly toolchain",
            rustup_has(&["toolchain", "list"], "nightly"),
            vec!["toolchain", "install", "nightly", "--profile", "minimal"],
        ),
        (
            "rust-src (nightly)",
            rustup_has(
                &["component", "list", "--toolchain", "nightly", "--installed"],
                "rust-src",
            ),
            vec!["component", "add", "rust-src", "--toolchain", "nightly"],
        ),
        (
            "target x86_64-unknown-linux-musl",
            rustup_has(
                &["target", "list", "--installed"],
                "x86_64-unknown-linux-musl",
            ),
            vec!["target", "add", "x86_64-unknown-linux-musl"],
        ),
        (
            "clippy",
            rustup_has(&["component", "list", "--installed"], "clippy"),
            vec!["component", "add", "clippy"],
        ),
        (
            "rustfmt",
            rustup_has(&["component", "list", "--installed"], "rustfmt"),
            vec!["component", "add", "rustfmt"],
        ),
    ];
    for (item, state, install) in rustup_items {
        if note(item, state) && !args.check {
            exec(&mut cmd("rustup", install))?;
        }
    }

    // bpf-linker, built against LLVM 22 (a bpf-linker for another LLVM fails on rustc's bitcode).
    let item = format!("bpf-linker (LLVM {LLVM_MAJOR})");
    if note(&item, bpf_linker_state()) && !args.check {
        install_bpf_linker()?;
        if let State::Missing(why) = bpf_linker_state() {
            bail!("bpf-linker still not usable after installing it: {why}");
        }
    }

    // cargo-fuzz: `cargo xtask fuzz` and the fuzz replay of `cargo xtask test`.
    let item = format!("cargo-fuzz {}", crate::fuzz::CARGO_FUZZ_VERSION);
    let state = if crate::fuzz::cargo_fuzz_installed() {
        State::Present
    } else {
        State::Missing("not installed".into())
    };
    if note(&item, state) && !args.check {
        crate::fuzz::install_cargo_fuzz()?;
    }

    // Python tools from PyPI, into the machine's python3: the Chaos Toolkit (the test that
    // drives the agent from it), jsonschema (the experiment schema's independent check) and
    // kubernetes-validate (the Kubernetes schemas the manifests are checked against, offline).
    for (item, present, spec) in PIP_PACKAGES {
        let state = if capture(&mut cmd("sh", ["-c", present])).is_ok() {
            State::Present
        } else {
            State::Missing("not installed".into())
        };
        if note(item, state) && !args.check {
            exec(&mut cmd(
                "python3",
                [
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    spec,
                ],
            ))?;
        }
    }

    // npm packages: the prometheus-operator's models, whose validators judge the monitoring
    // objects of deploy/kubernetes/ (the manifest tests), run by the machine's Node.js.
    for (item, dir, spec) in NPM_PACKAGES {
        let manifest = PathBuf::from(NPM_PREFIX)
            .join("node_modules")
            .join(dir)
            .join("package.json");
        let state = if manifest.is_file() {
            State::Present
        } else {
            State::Missing("not installed".into())
        };
        if note(item, state) && !args.check {
            exec(&mut cmd(
                "npm",
                [
                    "install",
                    "--prefix",
                    NPM_PREFIX,
                    "--no-audit",
                    "--no-fund",
                    "--no-save",
                    spec,
                ],
            ))?;
        }
    }

    // kubectl (for its built-in kustomize, which renders deploy/kubernetes/ in the manifest
    // tests) comes with the machine image; Debian's kubernetes-client (1.20) is too old for the
    // kustomization's fields, so it is not installed from there. Reported, not installed.
    if capture(&mut cmd("sh", ["-c", "command -v kubectl"])).is_err() {
        println!(
            "warning: kubectl is not on PATH: the manifest tests need its kustomize (v5; \
             kubectl >= 1.27), and fail without it in CI"
        );
    }

    // cargo-deb: `cargo xtask package` and the systemd VM test's package.
    let item = format!("cargo-deb {}", crate::package::CARGO_DEB_VERSION);
    let state = if crate::package::cargo_deb_installed() {
        State::Present
    } else {
        State::Missing("not installed".into())
    };
    if note(&item, state) && !args.check {
        crate::package::install_cargo_deb()?;
    }

    // bpffs: not mounted on a fresh machine; the agent pins nothing without it.
    let state = if bpffs_mounted()? {
        State::Present
    } else {
        State::Missing("not mounted".into())
    };
    if note("bpffs at /sys/fs/bpf", state) && !args.check {
        std::fs::create_dir_all("/sys/fs/bpf").context("create /sys/fs/bpf")?;
        exec(&mut cmd("mount", ["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }

    if args.check && !missing.is_empty() {
        bail!("missing: {}", missing.join(", "));
    }
    println!("setup: done");
    Ok(())
}

/// Whether dpkg says the package is installed (not merely known or half-configured).
fn dpkg_installed(pkg: &str) -> bool {
    capture(&mut cmd(
        "dpkg-query",
        ["-W", "-f=${db:Status-Status}", pkg],
    ))
    .is_ok_and(|s| s.trim() == "installed")
}

fn apt_install(pkgs: &[&str]) -> anyhow::Result<()> {
    let apt = |args: &[&str]| {
        let mut c = cmd("apt-get", args);
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    exec(&mut apt(&["update", "-q"]))?;
    let mut install = apt(&[
        "install",
        "-y",
        "-q",
        "-o",
        "Dpkg::Options::=--force-confold",
    ]);
    // Wait for a dpkg lock held by another install (another session's setup) instead of failing.
    install.args(["-o", "DPkg::Lock::Timeout=300"]).args(pkgs);
    exec(&mut install)?;
    for pkg in pkgs {
        if !dpkg_installed(pkg) {
            bail!("apt-get install finished but {pkg} is not installed");
        }
    }
    Ok(())
}

/// Whether a line of `rustup <args>` starts with `prefix` (component names carry a target
/// suffix: `rust-src`, `clippy-x86_64-unknown-linux-gnu`; toolchains too: `nightly-x86_64-...`).
fn rustup_has(args: &[&str], prefix: &str) -> State {
    match capture(&mut cmd("rustup", args)) {
        Ok(out) if out.lines().any(|l| l.trim().starts_with(prefix)) => State::Present,
        Ok(_) => State::Missing("not installed".into()),
        Err(e) => State::Missing(format!("{e:#}")),
    }
}

/// The bpf-linker on PATH, else the one in cargo's bin dir (where `cargo install` puts it).
fn bpf_linker_path() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("bpf-linker"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let p = cargo_home().join("bin/bpf-linker");
        p.is_file().then_some(p)
    })
}

/// `$CARGO_HOME`, else `~/.cargo`: where `cargo install` puts binaries (under `bin/`).
pub fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"),
        PathBuf::from,
    )
}

/// Present and built for LLVM 22: `--version` names the LLVM in newer releases; otherwise the
/// binary must link `libLLVM.so.22*` / `libLLVM-22*`, or cargo's install record must list the
/// `llvm-22` feature (a statically linked build).
fn bpf_linker_state() -> State {
    let Some(path) = bpf_linker_path() else {
        return State::Missing("not found on PATH or in $CARGO_HOME/bin".into());
    };
    let version = capture(&mut cmd(&path.to_string_lossy(), ["--version"])).unwrap_or_default();
    let ldd = capture(&mut cmd("ldd", [&path])).unwrap_or_default();
    let record = std::fs::read_to_string(cargo_home().join(".crates2.json")).unwrap_or_default();
    bpf_linker_verdict(&version, &ldd, &record, LLVM_MAJOR)
}

/// The decision behind [`bpf_linker_state`], on the text of the three sources.
fn bpf_linker_verdict(version: &str, ldd: &str, crates2: &str, major: u32) -> State {
    if version.trim().is_empty() {
        return State::Missing("`bpf-linker --version` failed".into());
    }
    // e.g. "bpf-linker 0.14.0 (LLVM 22.1.2)" in releases that report it.
    if let Some(llvm) = version.split("LLVM").nth(1) {
        let found = llvm
            .trim_start_matches([' ', ':', 'v'])
            .split('.')
            .next()
            .unwrap_or("");
        return if found == major.to_string() {
            State::Present
        } else {
            State::Missing(format!("built for LLVM {found}, need {major}"))
        };
    }
    let lib = ldd.lines().find_map(|l| {
        let name = l.split_whitespace().next()?;
        name.strip_prefix("libLLVM.so.")
            .or_else(|| name.strip_prefix("libLLVM-"))
    });
    if let Some(lib) = lib {
        let found: String = lib.chars().take_while(char::is_ascii_digit).collect();
        return if found == major.to_string() {
            State::Present
        } else {
            State::Missing(format!("links libLLVM {found}, need {major}"))
        };
    }
    // Statically linked: trust cargo's install record of the features it was built with.
    let feature = format!("\"llvm-{major}\"");
    let recorded = serde_json::from_str::<serde_json::Value>(crates2)
        .ok()
        .is_some_and(|v| {
            v["installs"].as_object().is_some_and(|m| {
                m.iter().any(|(k, v)| {
                    k.starts_with("bpf-linker ") && v["features"].to_string().contains(&feature)
                })
            })
        });
    if recorded {
        State::Present
    } else {
        State::Missing(format!(
            "cannot tell which LLVM it was built for; need {major}"
        ))
    }
}

fn install_bpf_linker() -> anyhow::Result<()> {
    let mut c = crate::cargo();
    c.args([
        "install",
        "--force",
        "--version",
        BPF_LINKER_VERSION,
        "bpf-linker",
    ])
    .args([
        "--no-default-features",
        "--features",
        &format!("llvm-{LLVM_MAJOR}"),
    ])
    .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}"))
    // Build with the stable toolchain whatever the workspace's override says.
    .env("RUSTUP_TOOLCHAIN", "stable");
    exec(&mut c).context("build bpf-linker (takes ~2 min on 2 cores)")
}

/// Whether a bpf filesystem is mounted at /sys/fs/bpf.
fn bpffs_mounted() -> anyhow::Result<bool> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
    Ok(mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"/sys/fs/bpf") && f.get(2) == Some(&"bpf")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LDD_22: &str = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x00007f71)\n";
    const LDD_19: &str = "\tlibLLVM-19.so => /usr/lib/llvm-19/lib/libLLVM-19.so (0x00007f71)\n";
    const CRATES2_22: &str =
        r#"{"installs":{"bpf-linker 0.13.0 (registry+https://x)":{"features":["llvm-22"]}}}"#;
    const CRATES2_21: &str =
        r#"{"installs":{"bpf-linker 0.13.0 (registry+https://x)":{"features":["llvm-21"]}}}"#;

    #[test]
    fn linker_for_llvm_22_is_accepted() {
        assert_eq!(
            bpf_linker_verdict("bpf-linker 0.13.0", LDD_22, "", 22),
            State::Present
        );
        assert_eq!(
            bpf_linker_verdict("bpf-linker 0.14.0 (LLVM 22.1.2)", "", "", 22),
            State::Present
        );
        assert_eq!(
            bpf_linker_verdict("bpf-linker 0.13.0", "static", CRATES2_22, 22),
            State::Present
        );
    }

    #[test]
    fn linker_for_another_llvm_is_rejected() {
        for (v, ldd, rec) in [
            ("bpf-linker 0.13.0", LDD_19, CRATES2_22),
            ("bpf-linker 0.14.0 (LLVM 21.1.0)", LDD_22, ""),
            ("bpf-linker 0.13.0", "not a dynamic executable", CRATES2_21),
            ("bpf-linker 0.13.0", "", "garbage"),
            ("", LDD_22, CRATES2_22),
        ] {
            assert!(
                matches!(bpf_linker_verdict(v, ldd, rec, 22), State::Missing(_)),
                "{v} {ldd} {rec}"
            );
        }
    }
}
