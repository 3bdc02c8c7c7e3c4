//! Qdisc and class dumps read straight off a netlink socket.
//!
//! Snapshots must not lose objects. netlink-proto drops (with only a log line) any message that
//! netlink-packet-route fails to decode, and re-emitting typed options (`fq_codel`, ...) is not
//! guaranteed to reproduce the kernel's bytes. A dump that silently missed a qdisc would make
//! the restore silently incomplete, and the after-restore comparison blind to it. So dumps use
//! a plain blocking socket and a minimal parser that keeps every message and the raw
//! `TCA_OPTIONS` bytes exactly as the kernel sent them.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::raw::iter_attrs;
use super::snapshot::TcObject;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
/// `RTM_GETQDISC`, `RTM_NEWQDISC`.
pub const RTM_GETQDISC: u16 = 38;
const RTM_NEWQDISC: u16 = 36;
/// `RTM_GETTCLASS`, `RTM_NEWTCLASS`.
pub const RTM_GETTCLASS: u16 = 42;
const RTM_NEWTCLASS: u16 = 40;

const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_STAB: u16 = 8;
const TCA_INGRESS_BLOCK: u16 = 13;
const TCA_EGRESS_BLOCK: u16 = 14;

/// Length of `struct nlmsghdr` and `struct tcmsg`.
const NLMSG_HDR: usize = 16;
const TCMSG: usize = 20;

/// Opens a route netlink socket for dumps in the calling thread's network namespace.
pub(crate) fn open() -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    Ok(s)
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed tc dump: {what}"),
    )
}

/// Dumps every qdisc (`RTM_GETQDISC`) or class (`RTM_GETTCLASS`) of `ifindex`.
pub fn dump(sock: &Socket, request: u16, ifindex: u32) -> io::Result<Vec<TcObject>> {
    static SEQ: AtomicU32 = AtomicU32::new(1);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let reply_type = if request == RTM_GETQDISC {
        RTM_NEWQDISC
    } else {
        RTM_NEWTCLASS
    };
    let mut req = Vec::with_capacity(NLMSG_HDR + TCMSG);
    req.extend_from_slice(&((NLMSG_HDR + TCMSG) as u32).to_ne_bytes());
    req.extend_from_slice(&request.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&seq.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    // struct tcmsg { family, pad1, pad2, ifindex, handle, parent, info }
    req.extend_from_slice(&[0u8; 4]);
    req.extend_from_slice(&ifindex.to_ne_bytes());
    req.extend_from_slice(&[0u8; 12]);
    sock.send(&req, 0)?;

    let mut out = Vec::new();
    // Dump datagrams are at most a few pages; 1 MiB leaves room for any kernel's choice.
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = sock.recv(&mut &mut buf[..], 0)?;
        let data = buf
            .get(..n)
            .ok_or_else(|| bad("datagram larger than buffer"))?;
        let mut off = 0usize;
        while off + NLMSG_HDR <= data.len() {
            let len = u32_at(data, off) as usize;
            let msg = data
                .get(off..off + len)
                .filter(|_| len >= NLMSG_HDR)
                .ok_or_else(|| bad("length"))?;
            off += (len + 3) & !3;
            if u32_at(msg, 8) != seq {
                continue;
            }
            match u16_at(msg, 4) {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = msg.get(16..20).map_or(0, |_| u32_at(msg, 16) as i32);
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                }
                t if t == reply_type => {
                    let tc = msg
                        .get(NLMSG_HDR..NLMSG_HDR + TCMSG)
                        .ok_or_else(|| bad("tcmsg"))?;
                    // The qdisc dump ignores tcm_ifindex without strict checking.
                    if u32_at(tc, 4) == ifindex {
                        out.push(parse(tc, &msg[NLMSG_HDR + TCMSG..]));
                    }
                }
                _ => {}
            }
        }
    }
}

fn parse(tc: &[u8], attrs: &[u8]) -> TcObject {
    let mut obj = TcObject {
        kind: String::new(),
        handle: u32_at(tc, 8),
        parent: u32_at(tc, 12),
        options: None,
        has_stab: false,
        extra: Vec::new(),
    };
    for (kind, value) in iter_attrs(attrs) {
        match kind & 0x3fff {
            TCA_KIND => {
                obj.kind = String::from_utf8_lossy(value).trim_end_matches('\0').into();
            }
            TCA_OPTIONS => obj.options = Some(value.to_vec()),
            TCA_STAB => obj.has_stab = true,
            TCA_INGRESS_BLOCK | TCA_EGRESS_BLOCK => obj.extra.push((kind, value.to_vec())),
            _ => {}
        }
    }
    obj
}
