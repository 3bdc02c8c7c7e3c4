//! Attaching the classifiers: tcx links where the kernel has them, netlink `cls_bpf` otherwise.

use aya::programs::links::LinkOrder;
use aya::programs::tc::{NlOptions, SchedClassifierLinkId, TcAttachOptions, TcHandle};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::util::KernelVersion;
use serde::{Deserialize, Serialize};

use super::EbpfError;
use crate::kernel::tc::Hook;

/// Priority of our `cls_bpf` filters on the netlink path (`0xC4A0`, "chaos"). Lower numbers run
/// first; the default priority tc(8) hands out starts at 49152 (0xC000), so filters that other
/// tools add without a priority run before ours at egress, which is where loss belongs (closest
/// to the wire).
pub const NETLINK_PRIORITY: u16 = 0xC4A0;

/// How to attach tc programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// tcx where the kernel has it (>= 6.6), netlink otherwise.
    #[default]
    Auto,
    /// tcx `bpf_link`s: detached by the kernel when the agent exits, even on SIGKILL.
    Tcx,
    /// clsact + `cls_bpf` over netlink (pre-6.6 kernels): outlives the agent, so the in-kernel
    /// deadline and the start-up reconciler clean up after a crash.
    Netlink,
}

impl AttachMode {
    /// Resolves `Auto` for the running kernel.
    #[must_use]
    pub fn resolve(self) -> Self {
        match self {
            Self::Auto => {
                if kernel_has_tcx() {
                    Self::Tcx
                } else {
                    Self::Netlink
                }
            }
            other => other,
        }
    }

    /// Name for messages.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Tcx => "tcx",
            Self::Netlink => "netlink",
        }
    }
}

/// Whether the running kernel supports tcx links (added in 6.6, `CONFIG_NET_XGRESS`).
#[must_use]
pub fn kernel_has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// Where a program was attached (kept for reporting; the link itself lives in the datapath).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedProgram {
    /// Interface name.
    pub ifname: String,
    /// Hook.
    pub hook: Hook,
    /// tcx or netlink.
    pub mode: AttachMode,
}

fn attach_type(hook: Hook) -> TcAttachType {
    match hook {
        Hook::Ingress => TcAttachType::Ingress,
        Hook::Egress => TcAttachType::Egress,
    }
}

/// Attaches the hook's classifier as a tcx link. Ingress goes first in the chain (it sees
/// packets as they arrive from the wire) and egress last (it sees them as they leave).
pub fn attach_tcx(
    prog: &mut SchedClassifier,
    ifname: &str,
    hook: Hook,
) -> Result<SchedClassifierLinkId, EbpfError> {
    let order = match hook {
        Hook::Ingress => LinkOrder::first(),
        Hook::Egress => LinkOrder::last(),
    };
    prog.attach_with_options(ifname, attach_type(hook), TcAttachOptions::TcxOrder(order))
        .map_err(|source| EbpfError::Attach {
            prog: hook.program(),
            ifname: ifname.to_owned(),
            direction: hook.as_str(),
            source: Box::new(source),
        })
}

/// Attaches the hook's classifier as a direct-action `cls_bpf` filter at our priority with the
/// given handle (chosen and journaled by the caller beforehand). Needs a clsact qdisc.
pub fn attach_netlink(
    prog: &mut SchedClassifier,
    ifname: &str,
    hook: Hook,
    handle: u32,
) -> Result<SchedClassifierLinkId, EbpfError> {
    let opts = NlOptions {
        priority: NETLINK_PRIORITY,
        handle: TcHandle::from(handle),
        classid: None,
    };
    prog.attach_with_options(ifname, attach_type(hook), TcAttachOptions::Netlink(opts))
        .map_err(|source| EbpfError::Attach {
            prog: hook.program(),
            ifname: ifname.to_owned(),
            direction: hook.as_str(),
            source: Box::new(source),
        })
}
