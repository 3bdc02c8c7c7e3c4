//! The async rtnetlink client.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::tc::TcMessage;

use super::encode::{
    HtbClassOptions, Qdisc, class_del_message, filter_del_message, htb_class_message,
    ifb_link_message, mirred_redirect_filter_message, qdisc_del_message, qdisc_message,
};
use super::error::{TcError, module_for_kind};
use super::snapshot::TcObject;
use super::{OUR_MAJOR, TC_H_ROOT};

/// An rtnetlink connection for traffic control. Cheap to clone; the connection task runs on the
/// tokio runtime that created it and ends when every clone is dropped.
#[derive(Debug, Clone)]
pub struct Tc {
    pub(super) handle: rtnetlink::Handle,
    /// A plain socket in the same namespace for dumps (see `dump.rs` for why).
    dump_sock: Arc<Mutex<netlink_sys::Socket>>,
}

/// How a create request treats an existing object.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Fail with EEXIST (`tc ... add`).
    Add,
    /// Create or replace (`tc ... replace`).
    Replace,
}

impl Mode {
    fn flags(self) -> u16 {
        match self {
            Self::Add => NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            Self::Replace => NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        }
    }
}

/// The runtime the connection task will run on; an error rather than tokio's panic when the
/// caller forgot to provide one.
fn current_runtime() -> Result<tokio::runtime::Handle, TcError> {
    tokio::runtime::Handle::try_current().map_err(|e| TcError::Connect {
        source: std::io::Error::other(e),
    })
}

/// Errnos that mean "the object is already gone" for deletes, which undo records treat as success.
fn is_gone(errno: i32) -> bool {
    // ENOENT: no such qdisc/class/filter/link; EINVAL: deleting the default root (handle 0:),
    // which is what remains once ours is gone; ENODEV: the device itself is gone.
    matches!(errno, libc::ENOENT | libc::EINVAL | libc::ENODEV)
}

impl Tc {
    /// Opens an rtnetlink socket in the calling thread's network namespace and spawns its
    /// connection task. Must run inside a tokio runtime.
    pub fn new() -> Result<Self, TcError> {
        let rt = current_runtime()?;
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|source| TcError::Connect { source })?;
        let dump_sock = super::dump::open().map_err(|source| TcError::Connect { source })?;
        rt.spawn(conn);
        Ok(Self {
            handle,
            dump_sock: Arc::new(Mutex::new(dump_sock)),
        })
    }

    /// Opens an rtnetlink socket in the network namespace at `netns` (e.g. `/run/netns/NAME` or
    /// `/proc/PID/ns/net`) without moving the caller: a short-lived thread enters the namespace
    /// and creates the socket, which stays bound to that namespace for its whole life, and the
    /// connection task runs on the caller's tokio runtime. `setns` is per thread, so doing it on
    /// a runtime worker would move unrelated tasks into the namespace.
    pub fn in_netns(netns: &std::path::Path) -> Result<Self, TcError> {
        let rt = current_runtime()?;
        let spawner = rt.clone();
        let path = netns.to_owned();
        let made = std::thread::spawn(move || {
            // The socket registers with the reactor when created, so the thread needs the
            // runtime's context.
            let _guard = rt.enter();
            let file = std::fs::File::open(&path)?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let (conn, handle, _) = rtnetlink::new_connection()?;
            Ok::<_, std::io::Error>((conn, handle, super::dump::open()?))
        })
        .join();
        let (conn, handle, dump_sock) = match made {
            Ok(Ok(pair)) => pair,
            Ok(Err(source)) => return Err(TcError::Connect { source }),
            Err(_) => {
                return Err(TcError::Connect {
                    source: std::io::Error::other("netns helper thread panicked"),
                });
            }
        };
        spawner.spawn(conn);
        Ok(Self {
            handle,
            dump_sock: Arc::new(Mutex::new(dump_sock)),
        })
    }

    /// Sends a request that expects only an ACK.
    /// Sends a delete request; `false` if the object was already gone (see [`is_gone`]), so that
    /// undo records stay idempotent.
    pub(super) async fn delete(
        &self,
        op: &'static str,
        ifindex: u32,
        msg: RouteNetlinkMessage,
    ) -> Result<bool, TcError> {
        match self
            .ack(op, ifindex, "", msg, NLM_F_REQUEST | NLM_F_ACK)
            .await
        {
            Ok(()) => Ok(true),
            Err(TcError::Netlink { errno, .. }) if is_gone(errno) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn ack(
        &self,
        op: &'static str,
        ifindex: u32,
        kind: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), TcError> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        let mut resp = self
            .handle
            .clone()
            .request(req)
            .map_err(|source| TcError::Request {
                op,
                ifindex,
                source,
            })?;
        while let Some(m) = resp.next().await {
            if let NetlinkPayload::Error(e) = m.payload
                && e.code.is_some()
            {
                return Err(TcError::Netlink {
                    op,
                    ifindex,
                    kind: kind.to_owned(),
                    errno: e.raw_code().abs(),
                });
            }
        }
        Ok(())
    }

    /// The index of device `ifname`.
    pub async fn ifindex(&self, ifname: &str) -> Result<u32, TcError> {
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(ifname.to_owned()));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetLink(msg));
        req.header.flags = NLM_F_REQUEST;
        let op = "get link";
        let mut resp = self
            .handle
            .clone()
            .request(req)
            .map_err(|source| TcError::Request {
                op,
                ifindex: 0,
                source,
            })?;
        while let Some(m) = resp.next().await {
            match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                    return Ok(l.header.index);
                }
                NetlinkPayload::Error(e) if e.code.is_some() => break,
                _ => {}
            }
        }
        Err(TcError::NoSuchDevice {
            ifname: ifname.to_owned(),
        })
    }

    async fn put_qdisc(
        &self,
        op: &'static str,
        mode: Mode,
        ifindex: u32,
        parent: u32,
        handle: u32,
        q: &Qdisc,
    ) -> Result<(), TcError> {
        let msg = qdisc_message(ifindex, parent, handle, q)?;
        let res = self
            .ack(
                op,
                ifindex,
                q.kind(),
                RouteNetlinkMessage::NewQueueDiscipline(msg),
                mode.flags(),
            )
            .await;
        match res {
            // ENOENT means either "unknown kind" or "no such parent"; only the former is a
            // missing module, so look the parent up before blaming the kernel.
            Err(TcError::Netlink {
                errno: libc::ENOENT,
                ..
            }) if self.parent_exists(ifindex, parent).await => Err(TcError::QdiscUnsupported {
                op,
                ifindex,
                kind: q.kind().to_owned(),
                module: module_for_kind(q.kind()),
            }),
            other => other,
        }
    }

    async fn parent_exists(&self, ifindex: u32, parent: u32) -> bool {
        if parent == TC_H_ROOT || parent == super::TC_H_CLSACT {
            return true;
        }
        let major = parent & 0xffff_0000;
        self.qdiscs(ifindex)
            .await
            .is_ok_and(|qs| qs.iter().any(|q| q.handle == major))
    }

    /// Sends a prepared qdisc message with `tc qdisc add` semantics (snapshot replay).
    pub async fn add_qdisc_message(
        &self,
        ifindex: u32,
        kind: &str,
        msg: TcMessage,
    ) -> Result<(), TcError> {
        self.ack(
            "add qdisc",
            ifindex,
            kind,
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            Mode::Add.flags(),
        )
        .await
    }

    /// Adds qdisc `q` (`tc qdisc add`): fails with EEXIST if one with that handle exists.
    /// A missing qdisc module is reported as [`TcError::QdiscUnsupported`].
    pub async fn add_qdisc(
        &self,
        ifindex: u32,
        parent: u32,
        handle: u32,
        q: &Qdisc,
    ) -> Result<(), TcError> {
        self.put_qdisc("add qdisc", Mode::Add, ifindex, parent, handle, q)
            .await
    }

    /// Creates or replaces the qdisc at `parent` (`tc qdisc replace`). Replacing a root grafts the
    /// new qdisc and destroys the old tree, so snapshot it first.
    pub async fn replace_qdisc(
        &self,
        ifindex: u32,
        parent: u32,
        handle: u32,
        q: &Qdisc,
    ) -> Result<(), TcError> {
        self.put_qdisc("replace qdisc", Mode::Replace, ifindex, parent, handle, q)
            .await
    }

    /// Deletes the qdisc at `parent` with `handle` (0 = whatever is there). Returns `false` if
    /// there was nothing to delete, so undo records can be idempotent.
    pub async fn delete_qdisc(
        &self,
        ifindex: u32,
        parent: u32,
        handle: u32,
    ) -> Result<bool, TcError> {
        let msg = qdisc_del_message(ifindex, parent, handle);
        self.delete(
            "delete qdisc",
            ifindex,
            RouteNetlinkMessage::DelQueueDiscipline(msg),
        )
        .await
    }

    /// Adds an HTB class (`tc class add ... htb`).
    pub async fn add_htb_class(
        &self,
        ifindex: u32,
        parent: u32,
        classid: u32,
        o: &HtbClassOptions,
    ) -> Result<(), TcError> {
        let msg = htb_class_message(ifindex, parent, classid, o)?;
        self.ack(
            "add class",
            ifindex,
            "htb",
            RouteNetlinkMessage::NewTrafficClass(msg),
            Mode::Add.flags(),
        )
        .await
    }

    /// Creates or changes an HTB class (`tc class replace ... htb`).
    pub async fn replace_htb_class(
        &self,
        ifindex: u32,
        parent: u32,
        classid: u32,
        o: &HtbClassOptions,
    ) -> Result<(), TcError> {
        let msg = htb_class_message(ifindex, parent, classid, o)?;
        self.ack(
            "replace class",
            ifindex,
            "htb",
            RouteNetlinkMessage::NewTrafficClass(msg),
            Mode::Replace.flags(),
        )
        .await
    }

    /// Sends a prepared class message with `tc class add` semantics (snapshot replay).
    pub async fn add_class_message(&self, msg: TcMessage) -> Result<(), TcError> {
        let ifindex = msg.header.index as u32;
        self.ack(
            "add class",
            ifindex,
            "",
            RouteNetlinkMessage::NewTrafficClass(msg),
            Mode::Add.flags(),
        )
        .await
    }

    /// Deletes class `classid`; `false` if it was already gone.
    pub async fn delete_class(&self, ifindex: u32, classid: u32) -> Result<bool, TcError> {
        let msg = class_del_message(ifindex, classid);
        self.delete(
            "delete class",
            ifindex,
            RouteNetlinkMessage::DelTrafficClass(msg),
        )
        .await
    }

    /// Adds a match-all u32 filter at `prio` under `parent` that redirects every packet to the
    /// egress of `target_ifindex` (ingress -> IFB). See
    /// [`super::mirred_redirect_filter_message`] for `parent`.
    pub async fn add_mirred_redirect(
        &self,
        ifindex: u32,
        parent: u32,
        prio: u16,
        target_ifindex: u32,
    ) -> Result<(), TcError> {
        let msg = mirred_redirect_filter_message(ifindex, parent, prio, target_ifindex);
        self.ack(
            "add mirred filter",
            ifindex,
            "u32",
            RouteNetlinkMessage::NewTrafficFilter(msg),
            Mode::Add.flags(),
        )
        .await
    }

    /// Deletes the filters at `prio` under `parent`; `false` if there were none.
    pub async fn delete_filter(
        &self,
        ifindex: u32,
        parent: u32,
        prio: u16,
    ) -> Result<bool, TcError> {
        let msg = filter_del_message(ifindex, parent, prio);
        self.delete(
            "delete filter",
            ifindex,
            RouteNetlinkMessage::DelTrafficFilter(msg),
        )
        .await
    }

    /// Creates IFB device `name` (`ip link add NAME type ifb`), brings it up (an IFB that is down
    /// drops what is redirected to it) and returns its index.
    pub async fn create_ifb(&self, name: &str) -> Result<u32, TcError> {
        let msg = ifb_link_message(name);
        self.ack(
            "create ifb",
            0,
            name,
            RouteNetlinkMessage::NewLink(msg),
            Mode::Add.flags(),
        )
        .await?;
        let ifindex = self.ifindex(name).await?;
        let mut up = LinkMessage::default();
        up.header.index = ifindex;
        up.header.flags = netlink_packet_route::link::LinkFlags::Up;
        up.header.change_mask = netlink_packet_route::link::LinkFlags::Up;
        self.ack(
            "set ifb up",
            ifindex,
            name,
            RouteNetlinkMessage::SetLink(up),
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .await?;
        Ok(ifindex)
    }

    /// Deletes device `name`; `false` if it did not exist.
    pub async fn delete_link(&self, name: &str) -> Result<bool, TcError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self
            .ack(
                "delete link",
                0,
                name,
                RouteNetlinkMessage::DelLink(msg),
                NLM_F_REQUEST | NLM_F_ACK,
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(TcError::Netlink {
                errno: libc::ENODEV | libc::ENOENT,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every qdisc of `ifindex`, in the kernel's dump order.
    pub async fn qdiscs(&self, ifindex: u32) -> Result<Vec<TcObject>, TcError> {
        self.raw_dump("dump qdiscs", super::dump::RTM_GETQDISC, ifindex)
            .await
    }

    /// Every class of `ifindex`.
    pub async fn classes(&self, ifindex: u32) -> Result<Vec<TcObject>, TcError> {
        self.raw_dump("dump classes", super::dump::RTM_GETTCLASS, ifindex)
            .await
    }

    async fn raw_dump(
        &self,
        op: &'static str,
        request: u16,
        ifindex: u32,
    ) -> Result<Vec<TcObject>, TcError> {
        let sock = Arc::clone(&self.dump_sock);
        // Blocking socket: keep it off the runtime's worker threads.
        let res = tokio::task::spawn_blocking(move || {
            // A poisoned lock only means another dump panicked mid-way; the socket is still
            // usable because every dump matches replies by its own sequence number.
            let sock = sock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            super::dump::dump(&sock, request, ifindex)
        })
        .await;
        match res {
            Ok(Ok(objs)) => Ok(objs),
            Ok(Err(e)) => Err(TcError::Dump {
                op,
                ifindex,
                source: e,
            }),
            Err(join) => Err(TcError::Dump {
                op,
                ifindex,
                source: std::io::Error::other(join),
            }),
        }
    }

    /// The agent's root qdisc on `ifindex` (handle major [`OUR_MAJOR`] at the root), if one is
    /// there: what crash cleanup must remove.
    pub async fn find_ours(&self, ifindex: u32) -> Result<Option<TcObject>, TcError> {
        Ok(self
            .qdiscs(ifindex)
            .await?
            .into_iter()
            .find(|q| q.parent == TC_H_ROOT && (q.handle >> 16) as u16 == OUR_MAJOR))
    }
}
