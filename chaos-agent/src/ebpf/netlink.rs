//! The netlink side of the pre-tcx attach path: clsact and our `cls_bpf` filters.
//!
//! On kernels without tcx (< 6.6), tc programs are attached as `cls_bpf` filters under a clsact
//! qdisc. Those filters are not owned by a file descriptor, so they outlive the agent: these
//! functions find and remove them, and only ever touch filters that carry our program names.

use futures::TryStreamExt as _;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption};
use rtnetlink::Handle;

use super::EbpfError;
use crate::sys;
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

    /// The program attached at this hook.
    #[must_use]
    pub fn program(self) -> &'static str {
        match self {
            Self::Ingress => names::PROG_TC_INGRESS,
            Self::Egress => names::PROG_TC_EGRESS,
        }
    }

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

/// A netlink route connection (runs on the current tokio runtime).
pub fn connect() -> Result<Handle, EbpfError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(EbpfError::Socket)?;
    tokio::spawn(conn);
    Ok(handle)
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

/// Every `cls_bpf` filter of ours on the interface (both hooks).
pub async fn our_filters(handle: &Handle, ifindex: u32) -> Result<Vec<OurFilter>, EbpfError> {
    let mut out = Vec::new();
    for hook in Hook::ALL {
        for (name, prio, h) in filters(handle, ifindex, hook).await? {
            if let Some(name) = name.filter(|n| is_ours(n)) {
                out.push(OurFilter {
                    hook,
                    priority: prio,
                    handle: h,
                    name,
                });
            }
        }
    }
    Ok(out)
}

/// (bpf name, priority, handle) of every filter at a hook. Empty when there is no clsact.
async fn filters(
    handle: &Handle,
    ifindex: u32,
    hook: Hook,
) -> Result<Vec<(Option<String>, u16, u32)>, EbpfError> {
    let req = handle.traffic_filter(ifindex as i32).get();
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
                let h =
                    u32::from(msg.header.handle.major) << 16 | u32::from(msg.header.handle.minor);
                if h == 0 {
                    continue;
                }
                out.push((filter_name(&msg), (msg.header.info >> 16) as u16, h));
            }
            Ok(None) => break,
            // No clsact (EINVAL) or the device vanished: there is nothing to list.
            Err(rtnetlink::Error::NetlinkError(e)) if is_gone(e.raw_code()) => break,
            Err(source) => {
                return Err(EbpfError::Netlink {
                    op: "list tc filters",
                    ifname: ifindex.to_string(),
                    source: Box::new(source),
                });
            }
        }
    }
    Ok(out)
}

fn is_gone(code: i32) -> bool {
    let code = code.abs();
    code == libc::ENOENT || code == libc::ENODEV || code == libc::EINVAL
}

/// Whether the interface has a clsact qdisc.
pub async fn has_clsact(handle: &Handle, ifindex: u32) -> Result<bool, EbpfError> {
    let mut stream = handle.qdisc().get().index(ifindex as i32).execute();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(|source| EbpfError::Netlink {
            op: "list qdiscs",
            ifname: ifindex.to_string(),
            source: Box::new(source),
        })?
    {
        if msg.header.index == ifindex as i32
            && msg.header.parent == TcHandle::CLSACT
            && msg
                .attributes
                .iter()
                .any(|a| matches!(a, TcAttribute::Kind(k) if k == "clsact"))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Adds a clsact qdisc (fails with EEXIST if one is there).
pub fn add_clsact(ifname: &str) -> Result<(), EbpfError> {
    aya::programs::tc::qdisc_add_clsact(ifname).map_err(|e| EbpfError::Attach {
        prog: "clsact",
        ifname: ifname.to_owned(),
        direction: "both",
        source: Box::new(e.into()),
    })
}

/// Deletes the clsact qdisc if no filter at all is left on it. Returns whether it was deleted.
pub async fn delete_clsact_if_unused(handle: &Handle, ifindex: u32) -> Result<bool, EbpfError> {
    if !has_clsact(handle, ifindex).await? {
        return Ok(false);
    }
    for hook in Hook::ALL {
        if !filters(handle, ifindex, hook).await?.is_empty() {
            return Ok(false);
        }
    }
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = TcHandle::CLSACT;
    msg.header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    msg.attributes.push(TcAttribute::Kind("clsact".to_owned()));
    match request_ack(handle, RouteNetlinkMessage::DelQueueDiscipline(msg)).await {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(e)) if is_gone(e.raw_code()) => Ok(false),
        Err(source) => Err(EbpfError::Netlink {
            op: "delete clsact",
            ifname: ifindex.to_string(),
            source: Box::new(source),
        }),
    }
}

/// Sends one request and waits for its acknowledgement.
pub async fn request_ack(
    handle: &Handle,
    msg: RouteNetlinkMessage,
) -> Result<(), rtnetlink::Error> {
    request_ack_flags(handle, msg, 0).await
}

/// Sends one request with extra `NLM_F_*` flags (e.g. create/excl) and waits for its ack.
pub async fn request_ack_flags(
    handle: &Handle,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> Result<(), rtnetlink::Error> {
    use futures::StreamExt as _;
    use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut handle = handle.clone();
    let mut response = handle.request(req)?;
    while let Some(m) = response.next().await {
        if let NetlinkPayload::Error(e) = m.payload
            && e.code.is_some()
        {
            return Err(rtnetlink::Error::NetlinkError(e));
        }
    }
    Ok(())
}

/// Deletes the filter at (hook, priority, handle) if, and only if, it is one of ours.
/// Returns whether a filter was deleted.
pub async fn delete_our_filter(
    handle: &Handle,
    ifindex: u32,
    hook: Hook,
    priority: u16,
    filter_handle: u32,
) -> Result<bool, EbpfError> {
    let found = filters(handle, ifindex, hook)
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
    match request_ack(handle, RouteNetlinkMessage::DelTrafficFilter(msg)).await {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(e)) if is_gone(e.raw_code()) => Ok(false),
        Err(source) => Err(EbpfError::Netlink {
            op: "delete tc filter",
            ifname: ifindex.to_string(),
            source: Box::new(source),
        }),
    }
}

/// Every interface index on the host (for the leftover sweep).
pub async fn all_ifindexes(handle: &Handle) -> Result<Vec<(u32, String)>, EbpfError> {
    use netlink_packet_route::link::LinkAttribute;
    let mut out = Vec::new();
    let mut links = handle.link().get().execute();
    while let Some(l) = links
        .try_next()
        .await
        .map_err(|source| EbpfError::Netlink {
            op: "list links",
            ifname: "*".to_owned(),
            source: Box::new(source),
        })?
    {
        let name = l
            .attributes
            .iter()
            .find_map(|a| {
                if let LinkAttribute::IfName(n) = a {
                    Some(n.clone())
                } else {
                    None
                }
            })
            .unwrap_or_default();
        out.push((l.header.index, name));
    }
    Ok(out)
}

/// Resolves an interface name, mapping a missing one to a clear error.
pub fn ifindex(ifname: &str) -> Result<u32, sys::SysError> {
    sys::ifindex(ifname)
}
