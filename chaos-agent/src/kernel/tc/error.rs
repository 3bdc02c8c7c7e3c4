//! Errors of the traffic-control layer.

use std::fmt;

/// The loadable module that provides a qdisc kind, for error messages that tell the operator what
/// to install. The kernel names qdisc modules `sch_<kind>`, except the two that share `sch_ingress`.
#[must_use]
pub fn module_for_kind(kind: &str) -> String {
    match kind {
        "clsact" | "ingress" => "sch_ingress".to_owned(),
        other => format!("sch_{other}"),
    }
}

/// Why a snapshot cannot be replayed exactly (see [`super::is_faithfully_restorable`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotRestorable {
    /// A qdisc kind whose dumped options we do not know how to replay.
    #[error("qdisc {kind} {handle} has options we cannot replay")]
    UnknownQdiscKind {
        /// Qdisc kind.
        kind: String,
        /// Handle as `maj:min`.
        handle: TcHandleFmt,
    },
    /// A class kind we cannot recreate.
    #[error("class {kind} {handle} cannot be recreated")]
    UnknownClassKind {
        /// Class kind.
        kind: String,
        /// Class id as `maj:min`.
        handle: TcHandleFmt,
    },
    /// The kernel dumps only the header of a size table (`stab`), not its data.
    #[error("qdisc {kind} {handle} has a size table (stab), which the kernel does not dump")]
    SizeTable {
        /// Qdisc kind.
        kind: String,
        /// Handle as `maj:min`.
        handle: TcHandleFmt,
    },
    /// netem never dumps its delay distribution table, so a jittered netem may have had a custom
    /// one that we cannot know.
    #[error("netem {handle} has jitter; its delay distribution table is not dumped by the kernel")]
    NetemDistribution {
        /// Handle as `maj:min`.
        handle: TcHandleFmt,
    },
    /// An object's parent is not part of the snapshot (a corrupt or partial dump).
    #[error("{what} {handle} has parent {parent} which is not in the snapshot")]
    Orphan {
        /// "qdisc" or "class".
        what: &'static str,
        /// Handle as `maj:min`.
        handle: TcHandleFmt,
        /// Parent as `maj:min`.
        parent: TcHandleFmt,
    },
}

/// A tc handle printed the way `tc` prints it (`c4a0:1`, `root`, `ffff:fff1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcHandleFmt(pub u32);

impl fmt::Display for TcHandleFmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == super::TC_H_ROOT {
            return f.write_str("root");
        }
        let (maj, min) = (self.0 >> 16, self.0 & 0xffff);
        if min == 0 {
            write!(f, "{maj:x}:")
        } else {
            write!(f, "{maj:x}:{min:x}")
        }
    }
}

/// Everything that can go wrong in `tc`. Fields name the operation and the object so that an
/// operator can act on the message alone.
#[derive(Debug, thiserror::Error)]
pub enum TcError {
    /// Opening the rtnetlink socket failed.
    #[error("open rtnetlink socket: {source}")]
    Connect {
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel has no such qdisc kind (adding it returned ENOENT while its parent exists).
    #[error(
        "{op} on ifindex {ifindex}: the kernel has no {kind} qdisc: module {module} is missing. \
         Load it with `modprobe {module}` (on Debian/Ubuntu it ships in the stock kernel package or \
         linux-modules-extra-$(uname -r))"
    )]
    QdiscUnsupported {
        /// Operation, e.g. "add qdisc".
        op: &'static str,
        /// Device index.
        ifindex: u32,
        /// Qdisc kind, e.g. "netem".
        kind: String,
        /// Kernel module that provides it, e.g. `sch_netem`.
        module: String,
    },
    /// The kernel refused a request.
    #[error("{op} {kind} on ifindex {ifindex}: {}", std::io::Error::from_raw_os_error(*errno))]
    Netlink {
        /// Operation, e.g. "add class".
        op: &'static str,
        /// Device index (0 when the request is not about a device).
        ifindex: u32,
        /// Object kind or name the request was about.
        kind: String,
        /// Positive errno.
        errno: i32,
    },
    /// The request could not be sent or the reply could not be read.
    #[error("{op} on ifindex {ifindex}: netlink request failed: {source}")]
    Request {
        /// Operation.
        op: &'static str,
        /// Device index.
        ifindex: u32,
        /// The rtnetlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// Reading a qdisc or class dump failed.
    #[error("{op} on ifindex {ifindex}: {source}")]
    Dump {
        /// Operation.
        op: &'static str,
        /// Device index.
        ifindex: u32,
        /// The socket or parse error.
        #[source]
        source: std::io::Error,
    },
    /// No device has that name.
    #[error("no network device named {ifname}")]
    NoSuchDevice {
        /// The name looked up.
        ifname: String,
    },
    /// A parameter cannot be encoded (out of range, or a combination netem rejects).
    #[error("invalid {what}: {why}")]
    InvalidParam {
        /// Which parameter.
        what: &'static str,
        /// Why.
        why: String,
    },
    /// The snapshot cannot be replayed exactly and `force` was not given.
    #[error("qdisc tree of ifindex {ifindex} cannot be restored faithfully: {reason}")]
    NotRestorable {
        /// Device index.
        ifindex: u32,
        /// The first reason found.
        reason: NotRestorable,
    },
    /// After a restore, the re-dumped tree differs from the snapshot.
    #[error("qdisc tree of ifindex {ifindex} differs from the snapshot after restore: {diff}")]
    RestoreMismatch {
        /// Device index.
        ifindex: u32,
        /// Human-readable first difference.
        diff: String,
    },
    /// The device's root is neither ours nor the snapshot's: someone else changed it meanwhile,
    /// and replacing their work would destroy it.
    #[error(
        "root qdisc {found} of ifindex {ifindex} is neither the agent's nor the snapshot's; not touching it"
    )]
    ForeignRoot {
        /// Device index.
        ifindex: u32,
        /// The root found, e.g. "tbf 1:".
        found: String,
    },
}

impl TcError {
    /// The positive errno of a kernel refusal, if this error is one.
    #[must_use]
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Netlink { errno, .. } => Some(*errno),
            Self::QdiscUnsupported { .. } => Some(libc::ENOENT),
            _ => None,
        }
    }
}
