//! What a fault targets: an interface and direction, protocols, address prefixes and ports.
//! Resolved (the default-route interface, the scope's cgroup) and validated once, before
//! anything is applied.

pub mod pod;
pub mod scope;

use std::fmt;
use std::str::FromStr;

use chaos_common::names::MAX_PREFIXES;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::spec::SpecError;

/// Port ranges one fault may name per side (source or destination). The datapath's cost per
/// packet does not depend on it (a range is a few map entries); the bound keeps one request,
/// and its journal entry, of a bounded size.
pub const MAX_PORT_RANGES: usize = 4096;

/// Which way traffic flows through the interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Packets arriving on the interface.
    Ingress,
    /// Packets leaving through the interface.
    #[default]
    Egress,
    /// Both ways.
    Both,
}

impl Direction {
    /// Whether ingress traffic is affected.
    #[must_use]
    pub fn ingress(self) -> bool {
        matches!(self, Self::Ingress | Self::Both)
    }
    /// Whether egress traffic is affected.
    #[must_use]
    pub fn egress(self) -> bool {
        matches!(self, Self::Egress | Self::Both)
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
            Self::Both => "both",
        })
    }
}

/// An L4 protocol a fault can be limited to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP and `ICMPv6`.
    Icmp,
}

/// An inclusive port range, written `80` or `8000-8100`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port (inclusive).
    pub hi: u16,
}

impl FromStr for PortRange {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::BadPortRange {
            input: s.to_owned(),
        };
        let (lo, hi) = if let Some((a, b)) = s.split_once('-') {
            (
                a.trim().parse::<u16>().map_err(|_| bad())?,
                b.trim().parse::<u16>().map_err(|_| bad())?,
            )
        } else {
            let p = s.trim().parse::<u16>().map_err(|_| bad())?;
            (p, p)
        };
        if lo == 0 || lo > hi {
            return Err(bad());
        }
        Ok(Self { lo, hi })
    }
}

impl TryFrom<String> for PortRange {
    type Error = SpecError;
    fn try_from(s: String) -> Result<Self, SpecError> {
        s.parse()
    }
}

impl From<PortRange> for String {
    fn from(r: PortRange) -> Self {
        r.to_string()
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// Which packets a fault applies to. Every list that is empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Target {
    /// Interface; `None` means the interface of the default route (resolved at apply time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    /// Direction.
    pub direction: Direction,
    /// Protocols (empty: all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub protocols: Vec<Proto>,
    /// Source prefixes (empty: all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub src: Vec<IpNet>,
    /// Destination prefixes (empty: all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dst: Vec<IpNet>,
    /// Source ports (empty: all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sports: Vec<PortRange>,
    /// Destination ports (empty: all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dports: Vec<PortRange>,
    /// Fault protected traffic too (SSH, the agent's own ports). Off unless explicitly asked.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub include_protected: bool,
    /// Only the sockets (and connects) of processes in this cgroup v2 or below it: its path in
    /// the hierarchy, e.g. `/system.slice/nginx.service`. Set from `pid` at inject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Only the processes of this pid's cgroup (resolved into `cgroup` at inject).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Only the processes of this systemd unit (`NAME` or `NAME.service`): resolved into
    /// `cgroup` at inject, and kept to name the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Only the processes of this container: an id or unique prefix, the full id once resolved
    /// into `cgroup` (and `netns`) at inject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Only the processes of this Kubernetes pod, `NAMESPACE/NAME`: found at inject through
    /// the node's CRI socket and resolved as a container is (its cgroup, its network
    /// namespace), and kept to name the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// With `pod`: only this container of the pod, by its name in the pod spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_container: Option<String>,
    /// The id of the pod's sandbox when the fault was injected (set at inject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_sandbox: Option<String>,
    /// The cgroup of the pod's sandbox and its id (set at inject): the runtime removes it when
    /// the pod is deleted, which ends the fault (`target-gone`) even if the pod's own cgroup
    /// stays a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_cgroup: Option<(String, u64)>,
    /// The id of `cgroup` when the fault was injected (set at inject): a cgroup removed and
    /// made again under the same path is another target, and ends the fault (`target-gone`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// The network namespace (nsfs inode) of a `container` that has one of its own (set at
    /// inject): its connections are reset and its connects refused there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    /// For a packet fault on a `container` with a network namespace of its own: the
    /// container's interface (`eth0`) whose host-side veth is `iface` (set at inject). The
    /// fault acts there, on the whole namespace's traffic, and `direction` stays the
    /// container's: its egress arrives on `iface` (see [`Target::hook_direction`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_iface: Option<String>,
}

impl Target {
    /// Whether the fault is limited to the processes of a cgroup (given in any of its forms).
    #[must_use]
    pub fn scoped(&self) -> bool {
        self.cgroup.is_some()
            || self.pid.is_some()
            || self.unit.is_some()
            || self.container.is_some()
            || self.pod.is_some()
    }

    /// The direction as the hook on `iface` sees it. A container's interface is faulted on its
    /// host side, where what the container sends arrives and what it receives leaves.
    #[must_use]
    pub fn hook_direction(&self) -> Direction {
        match (&self.container_iface, self.direction) {
            (None, d) | (Some(_), d @ Direction::Both) => d,
            (Some(_), Direction::Egress) => Direction::Ingress,
            (Some(_), Direction::Ingress) => Direction::Egress,
        }
    }

    /// Whether packets are matched by their socket's cgroup: a scope on the agent's own
    /// network namespace. A container with a namespace of its own is matched by its interface
    /// instead (a packet crossing a veth has left its socket behind).
    #[must_use]
    pub fn by_socket_cgroup(&self) -> bool {
        self.scoped() && self.container_iface.is_none()
    }

    /// Whether anything names packets (an interface, prefixes, ports, protocols, a direction
    /// other than the default, protected ports): what faults on processes cannot take.
    #[must_use]
    pub fn names_packets(&self) -> bool {
        self.iface.is_some()
            || !self.src.is_empty()
            || !self.dst.is_empty()
            || !self.sports.is_empty()
            || !self.dports.is_empty()
            || !self.protocols.is_empty()
            || self.include_protected
            || self.direction != Direction::Egress
    }

    /// The cgroup of the processes this names, in one controller's hierarchy: `cgroup` as given
    /// (or as `--unit` / `--container` resolved it), `pid`'s from its `/proc/PID/cgroup` line
    /// for that hierarchy (v1 hierarchies have paths of their own). Never the hierarchy's root,
    /// whose limits or stressors would press every process of the host.
    pub fn cgroup_in(&self, h: &crate::kernel::cgroup::Hierarchy) -> Result<String, SpecError> {
        let path = if let Some(pid) = self.pid {
            let text = proc_cgroup(pid)?;
            h.cgroup_of(&text).ok_or_else(|| SpecError::BadPid {
                pid,
                why: format!(
                    "it is in no cgroup of the {} hierarchy ({})",
                    h.controller.as_str(),
                    h.version.as_str()
                ),
            })?
        } else {
            self.cgroup.clone().ok_or(SpecError::Inapplicable {
                what: "this fault needs the processes it acts on: --cgroup, --pid, --unit, --container or --pod",
            })?
        };
        if path.trim_matches('/').is_empty() {
            return Err(SpecError::BadLimit {
                what: "target",
                why: format!(
                    "{} is the root of the {} hierarchy ({}): a limit or stressor there would press every process of the host; name the workload's own cgroup",
                    self.scope_name().unwrap_or_default(),
                    h.controller.as_str(),
                    h.root.display()
                ),
            });
        }
        Ok(path)
    }

    /// The scope, as a user named it (for messages and the summary).
    #[must_use]
    pub fn scope_name(&self) -> Option<String> {
        if let Some(p) = &self.pod {
            Some(match &self.pod_container {
                Some(c) => format!("container {c} of pod {p}"),
                None => format!("pod {p}"),
            })
        } else if let Some(c) = &self.container {
            Some(format!("container {}", &c[..c.len().min(12)]))
        } else if let Some(u) = &self.unit {
            Some(format!("unit {u}"))
        } else if let Some(p) = self.pid {
            Some(format!("pid {p}"))
        } else {
            self.cgroup.as_ref().map(|c| format!("cgroup {c}"))
        }
    }
}

/// The text of `/proc/PID/cgroup`; a missing process is "no such process".
fn proc_cgroup(pid: u32) -> Result<String, SpecError> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|e| SpecError::BadPid {
        pid,
        why: if e.kind() == std::io::ErrorKind::NotFound {
            "no such process".to_owned()
        } else {
            e.to_string()
        },
    })
}

/// The cgroup v2 path of a process, from `/proc/PID/cgroup` (its `0::` line).
pub fn cgroup_of_pid(pid: u32) -> Result<String, SpecError> {
    let text = proc_cgroup(pid)?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .ok_or(SpecError::BadPid {
            pid,
            why: "it is in no cgroup v2 (no 0:: line in /proc/PID/cgroup)".to_owned(),
        })
}

/// The components of a cgroup path below the root, checked.
pub fn cgroup_components(path: &str) -> Result<Vec<&str>, SpecError> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let bad = path.len() > 4096
        || path.contains(|c: char| c == '\0' || c.is_control())
        || parts.contains(&"..")
        || parts.len() >= chaos_common::MAX_CGROUP_LEVEL as usize;
    if bad {
        return Err(SpecError::BadCgroupPath {
            path: path.to_owned(),
        });
    }
    Ok(parts)
}

impl Target {
    /// Checks what can be checked without the kernel: the interface name, and the number of
    /// port ranges and prefixes (each side and family has its own limit).
    pub fn validate(&self) -> Result<(), SpecError> {
        let t = self;
        if let Some(name) = &t.iface
            && (name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']))
        {
            return Err(SpecError::BadInterfaceName { name: name.clone() });
        }
        if let Some(path) = &t.cgroup {
            cgroup_components(path)?;
        }
        if let Some(p) = &t.pod {
            pod::parse(p)?;
        }
        if let Some(c) = &t.pod_container {
            pod::container_name(c)?;
        }
        for (what, list) in [("source port", &t.sports), ("destination port", &t.dports)] {
            if list.len() > MAX_PORT_RANGES {
                return Err(SpecError::TooManyPorts {
                    what,
                    max: MAX_PORT_RANGES,
                    got: list.len(),
                });
            }
        }
        let max = MAX_PREFIXES as usize;
        for (side, list) in [("source", &t.src), ("destination", &t.dst)] {
            for v6 in [false, true] {
                let what = match (side, v6) {
                    ("source", false) => "IPv4 source",
                    ("source", true) => "IPv6 source",
                    (_, false) => "IPv4 destination",
                    (_, true) => "IPv6 destination",
                };
                let n = list
                    .iter()
                    .filter(|n| matches!(n, IpNet::V6(_)) == v6)
                    .count();
                if n > max {
                    return Err(SpecError::TooManyPrefixes { what, max, got: n });
                }
            }
        }
        if (!t.sports.is_empty() || !t.dports.is_empty())
            && !t.protocols.is_empty()
            && t.protocols.iter().all(|p| *p == Proto::Icmp)
        {
            return Err(SpecError::PortsWithoutPortProtocol);
        }
        Ok(())
    }
}
