//! The interfaces of the calling thread's network namespace, read with one synchronous
//! `RTM_GETLINK` dump: what finding a container's host-side veth needs, from a thread that has
//! joined the container's namespace (a netlink socket belongs to the namespace it was created
//! in; `/sys/class/net` would still show the mount's).

use std::io;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

/// One interface, as far as pairing veths goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Its name.
    pub name: String,
    /// Its index in its namespace.
    pub index: u32,
    /// Whether it is one end of a veth pair.
    pub veth: bool,
    /// `IFLA_LINK`: for a veth, its peer's index (in the peer's namespace).
    pub peer: Option<u32>,
    /// `IFLA_LINK_NETNSID`: present when the peer lives in another namespace.
    pub peer_nsid: Option<i32>,
}

/// The interfaces of the calling thread's network namespace.
pub fn links() -> io::Result<Vec<Link>> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind_auto()?;
    s.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut msg = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(LinkMessage::default())),
    );
    msg.finalize();
    let mut req = vec![0; msg.buffer_len()];
    msg.serialize(&mut req);
    s.send(&req, 0)?;
    let mut out = Vec::new();
    // A dump's datagrams never exceed 32 KiB (see `kernel::sock_diag`).
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = s.recv(&mut &mut buf[..], 0)?;
        let mut off = 0;
        while off < n {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                    out.push(link_of(&l));
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(out),
                        Some(code) => Err(io::Error::from_raw_os_error(code.get().abs())),
                    };
                }
                _ => {}
            }
            off += (m.header.length as usize + 3) & !3;
            if m.header.length == 0 {
                break;
            }
        }
    }
}

fn link_of(l: &LinkMessage) -> Link {
    let mut link = Link {
        name: String::new(),
        index: l.header.index,
        veth: false,
        peer: None,
        peer_nsid: None,
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name.clone_from(n),
            LinkAttribute::Link(i) => link.peer = Some(*i),
            LinkAttribute::LinkNetNsId(id) => link.peer_nsid = Some(*id),
            LinkAttribute::LinkInfo(infos) => {
                link.veth = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            _ => {}
        }
    }
    link
}

/// The veths of a namespace whose other end lives in another one (`inside`, read in the
/// container's), each paired with its other end among `outside` (read in the agent's): the
/// two must name each other (`IFLA_LINK` both ways), so an end in a third namespace that only
/// happens to share an index is not taken for ours.
#[must_use]
pub fn veth_pairs<'a>(inside: &'a [Link], outside: &'a [Link]) -> Vec<(&'a Link, &'a Link)> {
    inside
        .iter()
        .filter(|l| l.veth && l.peer_nsid.is_some())
        .filter_map(|l| {
            outside
                .iter()
                .find(|o| {
                    o.veth
                        && o.peer_nsid.is_some()
                        && Some(o.index) == l.peer
                        && o.peer == Some(l.index)
                })
                .map(|o| (l, o))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn veth(name: &str, index: u32, peer: u32) -> Link {
        Link {
            name: name.to_owned(),
            index,
            veth: true,
            peer: Some(peer),
            peer_nsid: Some(0),
        }
    }

    #[test]
    fn a_pair_is_two_veths_that_name_each_other() {
        let lo = Link {
            name: "lo".to_owned(),
            index: 1,
            veth: false,
            peer: None,
            peer_nsid: None,
        };
        let inside = [lo.clone(), veth("eth0", 2, 9)];
        // Index 9 here names index 3 in its peer namespace: another pair, not ours.
        assert!(veth_pairs(&inside, &[lo.clone(), veth("vethX", 9, 3)]).is_empty());
        let outside = [lo, veth("vethA", 7, 4), veth("vethB", 9, 2)];
        let pairs = veth_pairs(&inside, &outside);
        assert_eq!(pairs.len(), 1);
        assert_eq!(
            (pairs[0].0.name.as_str(), pairs[0].1.name.as_str()),
            ("eth0", "vethB")
        );
    }

    #[test]
    fn this_namespace_s_interfaces_are_listed() {
        // Every namespace has loopback at index 1, and it is no veth.
        let all = links().expect("RTM_GETLINK dump");
        let lo = all.iter().find(|l| l.name == "lo").expect("lo listed");
        assert_eq!(lo.index, 1);
        assert!(!lo.veth);
    }
}
