//! The processes a fault is limited to. `--cgroup`, `--unit`, `--pid` and `--container` all
//! resolve, once at inject, to one cgroup v2 path and its id (journaled and shown by
//! `--dry-run`); `--container` also to the container's network namespace when it has one of
//! its own. Everything here reads the cgroup tree and `/proc`, nothing else: no runtime's API
//! and no `systemctl`, so it works the same for every runtime and with no client installed.

use crate::spec::SpecError;
use crate::sys::cgroup::{Cgroup, Tree};

/// How deep a scope's cgroup may be: the datapath compares up to `MAX_CGROUP_LEVEL` ancestors.
const MAX_DEPTH: usize = chaos_common::MAX_CGROUP_LEVEL as usize - 1;

/// At most this many candidates are named in an ambiguity error.
const SHOWN: usize = 5;

/// The unit `name` stands for: `NAME.service` for a bare name (as `systemctl` reads it), the
/// name itself when it has a unit type suffix.
pub fn unit_name(name: &str) -> Result<String, SpecError> {
    const TYPES: [&str; 4] = [".service", ".scope", ".slice", ".socket"];
    let bad = |why: &str| SpecError::BadUnit {
        name: name.to_owned(),
        why: why.to_owned(),
    };
    // systemd's own rule (unit_name_is_valid): these characters, at most 255 bytes.
    let ok = |c: char| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c);
    if name.is_empty() || name.len() > 255 || !name.chars().all(ok) || name.starts_with('.') {
        return Err(bad(
            "a unit name has at most 255 of the characters A-Z a-z 0-9 : - _ . \\ @",
        ));
    }
    if TYPES.iter().any(|t| name.ends_with(t)) {
        return Ok(name.to_owned());
    }
    if name.contains('.') {
        return Err(bad(
            "only .service, .scope, .slice and .socket units have processes (a bare name means NAME.service)",
        ));
    }
    Ok(format!("{name}.service"))
}

/// The cgroup of a systemd unit: systemd names a unit's cgroup after the unit, wherever its
/// slice puts it (`/system.slice/nginx.service`, `/user.slice/user-1000.slice/...`), so the
/// unit's cgroup is the one directory of the hierarchy with that name.
pub fn unit_cgroup(tree: &Tree, name: &str) -> Result<String, SpecError> {
    let unit = unit_name(name)?;
    let mut found = Vec::new();
    walk(tree, &mut |cg| {
        if cg.name() == unit {
            found.push(cg.path.clone());
        }
    })
    .map_err(|e| SpecError::BadUnit {
        name: name.to_owned(),
        why: format!("cannot read the cgroup v2 hierarchy ({}): {e}", tree.label),
    })?;
    match found.len() {
        0 => Err(SpecError::BadUnit {
            name: name.to_owned(),
            why: format!(
                "no cgroup named {unit} in the cgroup v2 hierarchy ({}): the unit is not running, or systemd does not manage this host's cgroups",
                tree.label
            ),
        }),
        1 => Ok(found.remove(0)),
        n => {
            found.sort();
            found.truncate(SHOWN);
            Err(SpecError::BadUnit {
                name: name.to_owned(),
                why: format!(
                    "{n} cgroups are named {unit} (several service managers run it): {}; name one with --cgroup",
                    found.join(", ")
                ),
            })
        }
    }
}

/// The container id a cgroup's name carries, in the forms the runtimes write: a bare 64-digit
/// hex id (cgroupfs driver: `/docker/ID`, `/kubepods/.../ID`) or a systemd scope
/// `PREFIX-ID.scope` (`docker-`, `cri-containerd-`, `crio-`, `libpod-`, any other). The
/// runtime's monitor (`libpod-conmon-ID.scope`, `crio-conmon-ID.scope`) is not the container.
#[must_use]
pub fn container_id_in(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".scope").unwrap_or(name);
    if stem.contains("conmon") {
        return None;
    }
    let id = stem.rsplit_once('-').map_or(stem, |(_, id)| id);
    let hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
    (id.len() == 64 && id.bytes().all(hex)).then_some(id)
}

/// A container found by its id or a prefix of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// Its full id.
    pub id: String,
    /// Its cgroup.
    pub cgroup: String,
}

/// The container whose id starts with `given` (a full id, a unique prefix, or a Kubernetes
/// `RUNTIME://ID`), found by its cgroup.
pub fn find_container(tree: &Tree, given: &str) -> Result<Container, SpecError> {
    let bad = |why: String| SpecError::BadContainer {
        id: given.to_owned(),
        why,
    };
    let prefix = given.rsplit_once("://").map_or(given, |(_, id)| id);
    let prefix = prefix.to_ascii_lowercase();
    if prefix.is_empty() || prefix.len() > 64 || !prefix.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad(
            "a container id is up to 64 hex digits (a unique prefix is enough)".to_owned(),
        ));
    }
    // Per id, its shallowest cgroup: a runtime may nest the container's processes below it.
    let mut found = std::collections::BTreeMap::<String, (usize, String)>::new();
    walk(tree, &mut |cg| {
        if let Some(id) = container_id_in(cg.name())
            && id.starts_with(&prefix)
        {
            let e = found
                .entry(id.to_owned())
                .or_insert((cg.depth, cg.path.clone()));
            if cg.depth < e.0 {
                *e = (cg.depth, cg.path.clone());
            }
        }
    })
    .map_err(|e| {
        bad(format!(
            "cannot read the cgroup v2 hierarchy ({}): {e}",
            tree.label
        ))
    })?;
    match found.len() {
        0 => Err(bad(format!(
            "no container with that id has a cgroup in the cgroup v2 hierarchy ({}): it is not running, or its runtime uses cgroup v1 only",
            tree.label
        ))),
        1 => {
            let (id, (_, cgroup)) = found.into_iter().next().expect("one");
            Ok(Container { id, cgroup })
        }
        n => {
            let ids: Vec<String> = found
                .keys()
                .take(SHOWN)
                .map(|id| id[..12].to_owned())
                .collect();
            Err(bad(format!(
                "the prefix names {n} containers ({}...): give more of the id",
                ids.join(", ")
            )))
        }
    }
}

fn walk(tree: &Tree, visit: &mut dyn FnMut(&Cgroup)) -> std::io::Result<()> {
    tree.walk(&[], MAX_DEPTH, visit)
}

/// The network namespace a container's processes are in, when it is not the agent's own
/// (`None`: it shares the agent's, `--network host`). Its first process that can still be
/// read names it; a container without processes has none to fault.
pub fn container_netns(tree: &Tree, c: &Container) -> Result<Option<u64>, SpecError> {
    let bad = |why: String| SpecError::BadContainer {
        id: c.id.clone(),
        why,
    };
    let pids = tree
        .pids(&c.cgroup)
        .map_err(|e| bad(format!("cannot list its processes ({}): {e}", c.cgroup)))?;
    let own = crate::sys::cgroup::own_netns()
        .map_err(|e| bad(format!("cannot read the agent's network namespace: {e}")))?;
    let netns = pids
        .iter()
        .find_map(|&pid| crate::sys::cgroup::netns_of(pid).ok())
        .ok_or_else(|| bad(format!("it has no running process (cgroup {})", c.cgroup)))?;
    Ok((netns != own).then_some(netns))
}

/// The interface of a container's own network namespace that a packet fault acts on, and its
/// other end in the agent's namespace, where the fault is attached: `(inner, host)` names. The
/// inner one is `iface` when given, else the namespace's only veth whose peer is the agent's.
/// Read from a thread that joined the namespace; nothing is changed.
pub fn container_veth(
    tree: &Tree,
    c: &Container,
    netns: u64,
    iface: Option<&str>,
) -> Result<(String, String), SpecError> {
    use crate::sys::link;
    let bad = |why: String| SpecError::BadContainer {
        id: c.id.clone(),
        why,
    };
    let pid = pid_in_netns(tree, &c.cgroup, netns)
        .map_err(|e| bad(format!("cannot enter its network namespace: {e}")))?;
    let inside = crate::sys::cgroup::in_netns_of(pid, netns, link::links)
        .and_then(|r| r)
        .map_err(|e| bad(format!("cannot list the interfaces of net:[{netns}]: {e}")))?;
    let outside =
        link::links().map_err(|e| bad(format!("cannot list the agent's interfaces: {e}")))?;
    let pairs = link::veth_pairs(&inside, &outside);
    let names = |v: &[(&link::Link, &link::Link)]| {
        v.iter()
            .map(|(i, _)| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen: Vec<_> = pairs
        .iter()
        .copied()
        .filter(|(i, _)| iface.is_none_or(|want| i.name == want))
        .collect();
    match (chosen.as_slice(), iface) {
        ([(inner, host)], _) => Ok((inner.name.clone(), host.name.clone())),
        ([], Some(want)) => Err(bad(format!(
            "its network namespace has no interface {want:?} with a veth peer in the agent's namespace (it has: {})",
            if pairs.is_empty() { "none".to_owned() } else { names(&pairs) }
        ))),
        ([], None) => Err(bad(
            "its network namespace has no veth whose other end is in the agent's namespace (macvlan, ipvlan, or a peer in another namespace): loss, shaping and DNS act on that other end; --reset and --refuse work there".to_owned(),
        )),
        (more, _) => Err(bad(format!(
            "its network namespace has {} interfaces with a veth peer here ({}): give --iface with the container's interface name",
            more.len(),
            names(more)
        ))),
    }
}

/// A process of the cgroup at `cgroup` (or below it) that is in network namespace `netns`: the
/// one whose namespace a fault enters. `NotFound` when none is left.
pub fn pid_in_netns(tree: &Tree, cgroup: &str, netns: u64) -> std::io::Result<u32> {
    tree.pids(cgroup)?
        .into_iter()
        .find(|&pid| crate::sys::cgroup::netns_of(pid).is_ok_and(|ns| ns == netns))
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no process of cgroup {cgroup} is in network namespace {netns} any more"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1e0c6a9b2d4e5f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f";

    #[test]
    fn unit_names_follow_systemctl() {
        assert_eq!(unit_name("nginx").expect("bare"), "nginx.service");
        assert_eq!(unit_name("nginx.service").expect("full"), "nginx.service");
        assert_eq!(
            unit_name("getty@tty1").expect("template"),
            "getty@tty1.service"
        );
        assert_eq!(
            unit_name("session-3.scope").expect("scope"),
            "session-3.scope"
        );
        for bad in ["", "a/b", "../x", "nginx.timer", "x y", ".service"] {
            assert!(unit_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn container_ids_are_read_from_every_runtime_s_cgroup_names() {
        for name in [
            format!("docker-{ID}.scope"),
            format!("cri-containerd-{ID}.scope"),
            format!("crio-{ID}.scope"),
            format!("libpod-{ID}.scope"),
            ID.to_owned(),
        ] {
            assert_eq!(container_id_in(&name), Some(ID), "{name}");
        }
        for name in [
            format!("libpod-conmon-{ID}.scope"),
            format!("crio-conmon-{ID}.scope"),
            "system.slice".to_owned(),
            format!("docker-{}.scope", &ID[..63]),
            format!("docker-{}.scope", ID.to_ascii_uppercase()),
        ] {
            assert_eq!(container_id_in(&name), None, "{name}");
        }
    }
}
