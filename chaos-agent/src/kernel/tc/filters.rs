//! The clsact hooks and our `cls_bpf` filters, on the tc client.
//!
//! On kernels without tcx (< 6.6), the datapath's programs are attached as direct-action
//! `cls_bpf` filters under a clsact qdisc. Those filters are not owned by a file descriptor, so
//! they outlive the agent: these methods find and remove them, and only ever touch filters that
//! carry our program names. (Attaching itself goes through aya, which owns the program fds.)

use futures::TryStreamExt as _;
use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption};

use super::{TC_H_CLSACT, TC_H_INGRESS_HANDLE, Tc, TcError};
use chaos_common::names;

/// Direction of a tc hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// tc ingress.
    Ingress,
    /// tc egress.
    Egress,
}

impl Hook {
    /// Both hooks.
    pub const ALL: [Self; 2] = [Self::Ingress, Self::Egress];

    /// Name for messages and metrics labels.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }

    /// The datapath program attached at this hook.
    #[must_use]
    pub fn program(self) -> &'static str {
        match self {
            Self::Ingress => names::PROG_TC_INGRESS,
            Self::Egress => names::PROG_TC_EGRESS,
        }
    }

    /// clsact's parent for this hook's filters (`ffff:fff2` / `ffff:fff3`).
    fn parent(self) -> TcHandle {
        TcHandle {
            major: 0xffff,
            minor: match self {
                Self::Ingress => TcHandle::MIN_INGRESS,
                Self::Egress => TcHandle::MIN_EGRESS,
            },
        }
    }
}

/// One of our `cls_bpf` filters, as found in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OurFilter {
    /// Hook.
    pub hook: Hook,
    /// Filter priority.
    pub priority: u16,
    /// Filter handle.
    pub handle: u32,
    /// The program name the filter carries (`TCA_BPF_NAME`).
    pub name: String,
}

fn filter_name(msg: &TcMessage) -> Option<String> {
    let mut is_bpf = false;
    let mut name = None;
    for attr in &msg.attributes {
        match attr {
            TcAttribute::Kind(k) => is_bpf = k == "bpf",
            TcAttribute::Options(opts) => {
                for o in opts {
                    if let TcOption::Bpf(TcFilterBpfOption::ProgName(n)) = o {
                        name = Some(n.clone());
                    }
                }
            }
            _ => {}
        }
    }
    if is_bpf { name } else { None }
}

fn is_ours(name: &str) -> bool {
    // aya names the filter after the program; tc(8) would write "file.o:[section]".
    name == names::PROG_TC_INGRESS || name == names::PROG_TC_EGRESS
}

/// Errnos of a dump or delete that mean "nothing there": no clsact (EINVAL), no such filter
/// (ENOENT), the device is gone (ENODEV).
fn is_gone(code: i32) -> bool {
    let code = code.abs();
    code == libc::ENOENT || code == libc::ENODEV || code == libc::EINVAL
}

fn request_error(op: &'static str, ifindex: u32, source: rtnetlink::Error) -> TcError {
    match source {
        rtnetlink::Error::NetlinkError(e) => TcError::Netlink {
            op,
            ifindex,
            kind: String::new(),
            errno: e.raw_code().abs(),
        },
        source => TcError::Request {
            op,
            ifindex,
            source,
        },
    }
}

impl Tc {
    /// (bpf program name, priority, handle) of every filter at a hook. Empty when there is no
    /// clsact.
    async fn filters(
        &self,
        ifindex: u32,
        hook: Hook,
    ) -> Result<Vec<(Option<String>, u16, u32)>, TcError> {
        let req = self.handle.traffic_filter(ifindex as i32).get();
        let req = match hook {
            Hook::Ingress => req.ingress(),
            Hook::Egress => req.egress(),
        };
        let mut out = Vec::new();
        let mut stream = req.execute();
        loop {
            match stream.try_next().await {
                Ok(Some(msg)) => {
                    // Dumps include one "chain" entry per priority without a handle: skip those.
                    let h = u32::from(msg.header.handle.major) << 16
                        | u32::from(msg.header.handle.minor);
                    if h == 0 {
                        continue;
                    }
                    out.push((filter_name(&msg), (msg.header.info >> 16) as u16, h));
                }
                Ok(None) => break,
                Err(rtnetlink::Error::NetlinkError(e)) if is_gone(e.raw_code()) => break,
                Err(source) => return Err(request_error("list tc filters", ifindex, source)),
            }
        }
        Ok(out)
    }

    /// Every `cls_bpf` filter of ours on the interface (both hooks).
    pub async fn our_bpf_filters(&self, ifindex: u32) -> Result<Vec<OurFilter>, TcError> {
        let mut out = Vec::new();
        for hook in Hook::ALL {
            for (name, priority, handle) in self.filters(ifindex, hook).await? {
                if let Some(name) = name.filter(|n| is_ours(n)) {
                    out.push(OurFilter {
                        hook,
                        priority,
                        handle,
                        name,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Deletes the filter at (hook, priority, handle) if, and only if, it is one of ours.
    /// Returns whether a filter was deleted.
    pub async fn delete_our_bpf_filter(
        &self,
        ifindex: u32,
        hook: Hook,
        priority: u16,
        filter_handle: u32,
    ) -> Result<bool, TcError> {
        let found = self
            .filters(ifindex, hook)
            .await?
            .into_iter()
            .any(|(name, p, h)| {
                p == priority && h == filter_handle && name.as_deref().is_some_and(is_ours)
            });
        if !found {
            return Ok(false);
        }
        let mut msg = TcMessage::with_index(ifindex as i32);
        msg.header.parent = hook.parent();
        msg.header.handle = filter_handle.into();
        // tcm_info = priority << 16 | protocol (ETH_P_ALL, big endian), as aya attached it.
        msg.header.info = u32::from(priority) << 16 | u32::from((libc::ETH_P_ALL as u16).to_be());
        self.delete(
            "delete tc filter",
            ifindex,
            RouteNetlinkMessage::DelTrafficFilter(msg),
        )
        .await
    }

    /// Whether the interface has a clsact qdisc.
    pub async fn has_clsact(&self, ifindex: u32) -> Result<bool, TcError> {
        Ok(self
            .qdiscs(ifindex)
            .await?
            .iter()
            .any(|q| q.parent == TC_H_CLSACT && q.kind == "clsact"))
    }

    /// Adds a clsact qdisc (fails with EEXIST if one is there).
    pub async fn add_clsact(&self, ifindex: u32) -> Result<(), TcError> {
        self.add_qdisc(
            ifindex,
            TC_H_CLSACT,
            TC_H_INGRESS_HANDLE,
            &super::Qdisc::Clsact,
        )
        .await
    }

    /// Deletes the clsact qdisc if no filter at all is left on it. Returns whether it was deleted.
    pub async fn delete_clsact_if_unused(&self, ifindex: u32) -> Result<bool, TcError> {
        if !self.has_clsact(ifindex).await? {
            return Ok(false);
        }
        for hook in Hook::ALL {
            if !self.filters(ifindex, hook).await?.is_empty() {
                return Ok(false);
            }
        }
        self.delete_qdisc(ifindex, TC_H_CLSACT, TC_H_INGRESS_HANDLE)
            .await
    }

    /// Every interface (index, name) in the client's namespace (for the leftover sweep).
    pub async fn links(&self) -> Result<Vec<(u32, String)>, TcError> {
        use netlink_packet_route::link::LinkAttribute;
        let mut out = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(l) = links
            .try_next()
            .await
            .map_err(|source| request_error("list links", 0, source))?
        {
            let name = l
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            out.push((l.header.index, name));
        }
        Ok(out)
    }

    /// Sends a prepared qdisc request with `NLM_F_CREATE | NLM_F_EXCL` and deletes what it
    /// created: `Ok` if the kernel has the kind (it accepted, or rejected only the empty
    /// options), `Err` with the errno otherwise (ENOENT: unknown kind). For `doctor`'s probes in
    /// a throwaway namespace.
    pub async fn probe_qdisc(&self, ifindex: u32, msg: TcMessage) -> Result<(), i32> {
        use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
        let kind = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                TcAttribute::Kind(k) => Some(k.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let added = self
            .ack(
                "probe qdisc",
                ifindex,
                &kind,
                RouteNetlinkMessage::NewQueueDiscipline(msg.clone()),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            )
            .await;
        match added {
            Ok(()) => {
                let _ = self
                    .delete(
                        "probe qdisc",
                        ifindex,
                        RouteNetlinkMessage::DelQueueDiscipline(msg),
                    )
                    .await;
                Ok(())
            }
            Err(TcError::Netlink { errno, .. }) => Err(errno),
            Err(_) => Err(libc::EIO),
        }
    }
}
