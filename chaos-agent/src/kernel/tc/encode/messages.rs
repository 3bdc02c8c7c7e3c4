//! The netlink messages: qdisc, class and filter add/delete (`TcMessage`) and IFB link creation
//! (`LinkMessage`), with the header and attribute layout iproute2 uses.

use netlink_packet_core::DefaultNla;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::{LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcHeader, TcMessage};

use super::super::error::TcError;
use super::super::raw::{Attrs, NLA_F_NESTED, u32s};
use super::super::{TC_H_CLSACT, TC_H_INGRESS_HANDLE};
use super::common::TCA_OPTIONS;
use super::htb::HtbClassOptions;
use super::qdisc::Qdisc;

/// A handle from major and minor (`TC_H_MAKE`).
#[must_use]
pub const fn tc_handle(major: u16, minor: u16) -> u32 {
    ((major as u32) << 16) | minor as u32
}

fn split(h: u32) -> TcHandle {
    TcHandle {
        major: (h >> 16) as u16,
        minor: (h & 0xffff) as u16,
    }
}

fn header(ifindex: u32, handle: u32, parent: u32, info: u32) -> TcHeader {
    TcHeader {
        family: AddressFamily::Unspec,
        index: ifindex as i32,
        handle: split(handle),
        parent: split(parent),
        info,
    }
}

fn with_kind_and_options(hdr: TcHeader, kind: &str, options: Option<Vec<u8>>) -> TcMessage {
    let mut attributes = vec![TcAttribute::Kind(kind.to_owned())];
    if let Some(o) = options {
        attributes.push(TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, o)));
    }
    TcMessage::from_parts(hdr, attributes)
}

/// The message for adding/replacing qdisc `q` with `handle` under `parent` on `ifindex`.
/// clsact and ingress always live at `ffff:` under `ffff:fff1`, whatever is passed.
pub fn qdisc_message(
    ifindex: u32,
    parent: u32,
    handle: u32,
    q: &Qdisc,
) -> Result<TcMessage, TcError> {
    let (parent, handle) = match q {
        Qdisc::Clsact | Qdisc::Ingress => (TC_H_CLSACT, TC_H_INGRESS_HANDLE),
        _ => (parent, handle),
    };
    Ok(with_kind_and_options(
        header(ifindex, handle, parent, 0),
        q.kind(),
        q.options()?,
    ))
}

/// The message for deleting the qdisc at `parent` (and `handle`, 0 = whatever is there).
#[must_use]
pub fn qdisc_del_message(ifindex: u32, parent: u32, handle: u32) -> TcMessage {
    TcMessage::from_parts(header(ifindex, handle, parent, 0), Vec::new())
}

/// The message for adding/replacing HTB class `classid` under `parent`.
pub fn htb_class_message(
    ifindex: u32,
    parent: u32,
    classid: u32,
    o: &HtbClassOptions,
) -> Result<TcMessage, TcError> {
    Ok(with_kind_and_options(
        header(ifindex, classid, parent, 0),
        "htb",
        Some(o.encode()?),
    ))
}

/// A class message from raw parts (snapshot replay).
#[must_use]
pub fn raw_class_message(
    ifindex: u32,
    parent: u32,
    classid: u32,
    kind: &str,
    options: Option<Vec<u8>>,
) -> TcMessage {
    with_kind_and_options(header(ifindex, classid, parent, 0), kind, options)
}

/// The message for deleting class `classid`.
#[must_use]
pub fn class_del_message(ifindex: u32, classid: u32) -> TcMessage {
    TcMessage::from_parts(header(ifindex, classid, 0, 0), Vec::new())
}

/// `ETH_P_ALL` in network byte order, as tc filters carry the protocol.
const ETH_P_ALL_BE: u16 = 0x0003u16.to_be();
// u32 / action / mirred constants.
const U32_SEL: u16 = 5;
const U32_ACT: u16 = 7;
const TC_U32_TERMINAL: u8 = 1;
const ACT_KIND: u16 = 1;
const ACT_OPTIONS: u16 = 2;
const MIRRED_PARMS: u16 = 2;
const TC_ACT_STOLEN: u32 = 4;
const TCA_EGRESS_REDIR: u32 = 1;

/// A u32 filter matching every packet (`match u32 0 0`) whose action redirects it to the egress
/// of `target_ifindex` (`action mirred egress redirect dev IFB`): the standard way to move a
/// device's ingress traffic onto an IFB, where egress qdiscs such as netem can act on it.
/// `parent` is `ffff:` for the ingress qdisc, `ffff:fff2` for clsact's ingress hook.
#[must_use]
pub fn mirred_redirect_filter_message(
    ifindex: u32,
    parent: u32,
    prio: u16,
    target_ifindex: u32,
) -> TcMessage {
    let info = (u32::from(prio) << 16) | u32::from(ETH_P_ALL_BE);
    let mut a = Attrs::new();
    a.nest(U32_ACT, |acts| {
        // Actions are a list nested by their order, starting at 1.
        acts.nest(1, |act| {
            act.attr(ACT_KIND, b"mirred\0");
            act.nest(ACT_OPTIONS | NLA_F_NESTED, |o| {
                // struct tc_mirred { index, capab, action, refcnt, bindcnt, eaction, ifindex }
                o.attr(
                    MIRRED_PARMS,
                    &u32s(&[0, 0, TC_ACT_STOLEN, 0, 0, TCA_EGRESS_REDIR, target_ifindex]),
                );
            });
        });
    });
    // struct tc_u32_sel { flags, offshift, nkeys, pad, offmask, off, offoff, hoff, hmask } + 1 key
    let mut sel = vec![TC_U32_TERMINAL, 0, 1, 0];
    sel.extend_from_slice(&[0u8; 12]);
    sel.extend_from_slice(&[0u8; 16]); // key { mask 0, val 0, off 0, offmask 0 }: matches all
    a.attr(U32_SEL, &sel);
    with_kind_and_options(
        header(ifindex, 0, parent, info),
        "u32",
        Some(a.into_bytes()),
    )
}

/// The message for deleting every filter of priority `prio` under `parent`.
#[must_use]
pub fn filter_del_message(ifindex: u32, parent: u32, prio: u16) -> TcMessage {
    let info = (u32::from(prio) << 16) | u32::from(ETH_P_ALL_BE);
    TcMessage::from_parts(header(ifindex, 0, parent, info), Vec::new())
}

/// `IFLA_INFO_KIND`.
const IFLA_INFO_KIND: u16 = 1;

/// The message for creating an IFB device called `name` (`ip link add NAME type ifb`).
#[must_use]
pub fn ifb_link_message(name: &str) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    // IFLA_INFO_KIND without the trailing NUL, as `ip` sends it (LinkInfo::Kind adds one; the
    // kernel accepts both, but byte equality with iproute2 is what the fixture test checks).
    msg.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Other(
            DefaultNla::new(IFLA_INFO_KIND, b"ifb".to_vec()),
        )]));
    msg
}
