//! Aborting established TCP connections with `sock_diag` `SOCK_DESTROY`, what `ss -K` does: the
//! kernel calls `tcp_abort()` on the socket, so its owner's next call fails with `ECONNABORTED`
//! and the peer receives a RST (`ECONNRESET`). No packet has to flow for it to act, unlike a RST
//! forged in the datapath, and it needs no eBPF (`bpf_sock_destroy()` is 6.5+ and out of aya
//! 0.14's reach).
//!
//! Everything here is synchronous and acts in the network namespace of the calling thread (a
//! netlink socket belongs to the namespace it was created in): the caller runs it on a blocking
//! thread that has `setns`-ed into the target namespace. Destroying needs `CAP_NET_ADMIN` over
//! that namespace and a kernel built with `CONFIG_INET_DIAG_DESTROY`.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable,
};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_TCP, SockDiagDestroy, SockDiagMessage,
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags},
};
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};

/// Receive buffer for one datagram. The kernel sizes a dump's datagrams after the reader's
/// buffer but never beyond 32 KiB (`netlink_recvmsg` caps `max_recvmsg_len`), so one this big
/// always holds a whole one; a larger one is still detected (`MSG_TRUNC`) rather than misread.
const RECV_BUF: usize = 64 * 1024;

/// One TCP socket as the kernel's dump names it: everything a `SOCK_DESTROY` needs to name that
/// very socket again (family, ports, addresses, bound interface and cookie).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TcpSocket {
    /// Local address and port. An `AF_INET6` socket talking IPv4 (a dual-stack listener's child,
    /// or a v6 socket connected to `::ffff:a.b.c.d`) keeps its IPv4-mapped IPv6 address, as the
    /// kernel reports it: the family of the socket, not of the traffic, is what names it
    /// (`Ipv6Addr::to_ipv4_mapped` recovers the IPv4 address).
    pub local: SocketAddr,
    /// Remote address and port (IPv4-mapped as `local` is).
    pub remote: SocketAddr,
    /// Kernel TCP state (`TCP_ESTABLISHED` = 1, ... `TCP_LAST_ACK` = 9; see [`state_name`]).
    pub state: u8,
    /// The interface the socket is bound to (`SO_BINDTODEVICE`), 0 if none: the kernel's lookup
    /// matches on it, so it must be sent back as dumped.
    pub ifindex: u32,
    /// The socket's cookie (`SO_COOKIE`, `bpf_get_socket_cookie`): unique for the boot, never
    /// reused. A destroy carries it so that a new socket that took the same 4-tuple is not hit.
    pub cookie: u64,
    /// Inode of the socket's file (0 for a socket no process holds, such as an unaccepted
    /// child): `/proc/<pid>/fd` links to `socket:[inode]`, which maps sockets to processes.
    pub inode: u32,
    /// Owner uid.
    pub uid: u32,
    /// The cgroup v2 id of the process that created the socket (`INET_DIAG_CGROUP_ID`, Linux
    /// 5.9; an accepted connection inherits its listener's), the id `bpf_skb_cgroup_id` sees
    /// on its packets. `None` when the kernel does not report it.
    pub cgroup: Option<u64>,
}

impl TcpSocket {
    /// `AF_INET` or `AF_INET6`, from the address the kernel reported.
    #[must_use]
    pub fn family(&self) -> u8 {
        if self.local.is_ipv4() {
            AF_INET
        } else {
            AF_INET6
        }
    }
}

impl fmt::Display for TcpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} {} (cookie {:#x})",
            self.local,
            self.remote,
            state_name(self.state),
            self.cookie
        )
    }
}

/// The name `ss` prints for a kernel TCP state.
#[must_use]
pub fn state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTAB",
        2 => "SYN-SENT",
        3 => "SYN-RECV",
        4 => "FIN-WAIT-1",
        5 => "FIN-WAIT-2",
        6 => "TIME-WAIT",
        7 => "CLOSE",
        8 => "CLOSE-WAIT",
        9 => "LAST-ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "UNKNOWN",
    }
}

/// What can go wrong talking `NETLINK_SOCK_DIAG`. Each names the operation, so that the message
/// alone tells an operator what failed.
#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    /// The netlink socket could not be opened, bound or connected.
    #[error("open NETLINK_SOCK_DIAG socket: {source}")]
    Socket {
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// Sending the request or receiving the reply failed.
    #[error("{op}: netlink I/O: {source}")]
    Io {
        /// The operation, e.g. "dump `AF_INET` TCP sockets".
        op: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The kernel's reply could not be parsed.
    #[error("{op}: unparseable reply from the kernel: {reason}")]
    Parse {
        /// The operation.
        op: String,
        /// What was wrong.
        reason: String,
    },
    /// The kernel refused the request.
    #[error("{op}: {}", io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The operation.
        op: String,
        /// Positive errno.
        errno: i32,
    },
    /// The kernel has no TCP `sock_diag` at all (`ENOENT` for the dump).
    #[error(
        "{op}: this kernel has no TCP socket diagnostics (CONFIG_INET_DIAG and \
         CONFIG_INET_TCP_DIAG, modules inet_diag and tcp_diag)"
    )]
    NoTcpDiag {
        /// The operation.
        op: String,
    },
    /// A scoped reset met a socket whose cgroup the kernel does not report.
    #[error(
        "this kernel does not report the cgroup of a socket ({socket}; INET_DIAG_CGROUP_ID, Linux 5.9): a reset cannot be scoped to processes"
    )]
    NoSocketCgroup {
        /// The socket, as [`TcpSocket`] displays.
        socket: String,
    },
    /// The kernel was built without `CONFIG_INET_DIAG_DESTROY` (`EOPNOTSUPP`).
    #[error(
        "destroy {socket}: this kernel cannot destroy sockets (CONFIG_INET_DIAG_DESTROY is off)"
    )]
    DestroyUnsupported {
        /// The socket, as [`TcpSocket`] displays.
        socket: String,
    },
}

impl SockDiagError {
    /// The positive errno of a kernel refusal, if this error is one.
    #[must_use]
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { errno, .. } => Some(*errno),
            Self::NoTcpDiag { .. } => Some(libc::ENOENT),
            Self::DestroyUnsupported { .. } => Some(libc::EOPNOTSUPP),
            _ => None,
        }
    }
}

/// The states whose sockets carry (or are about to carry) data, where an abort is a connection
/// reset: not LISTEN (a server, not a connection), not TIME-WAIT or CLOSE (nothing to reset).
fn data_states() -> StateFlags {
    StateFlags::ESTABLISHED
        | StateFlags::SYN_SENT
        | StateFlags::SYN_RECV
        | StateFlags::FIN_WAIT1
        | StateFlags::FIN_WAIT2
        | StateFlags::CLOSE_WAIT
        | StateFlags::LAST_ACK
}

/// The TCP sockets of the calling thread's network namespace, both families, in the states that
/// carry data (ESTABLISHED, SYN-SENT, SYN-RECV, FIN-WAIT-1/2, CLOSE-WAIT, LAST-ACK).
pub fn tcp_sockets() -> Result<Vec<TcpSocket>, SockDiagError> {
    let diag = Diag::open()?;
    let mut all = Vec::new();
    for family in [AF_INET, AF_INET6] {
        let op = format!("dump {} TCP sockets", family_name(family));
        match diag.exchange(&dump_request(family), &op) {
            Ok(sockets) => all.extend(sockets),
            Err(SockDiagError::Kernel { op, errno }) if errno == libc::ENOENT => {
                return Err(SockDiagError::NoTcpDiag { op });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(all)
}

/// Aborts `s` (`SOCK_DESTROY`): its owner's next call fails with `ECONNABORTED`, the peer gets a
/// RST. `Ok(false)` if that socket is gone already: the kernel answers `ENOENT` both when no
/// socket has its 4-tuple any more and when one has but with another cookie (a new connection
/// that reused the ports, which is left alone). `ESTALE`, the cookie check's own errno, which
/// the lookup turns into `ENOENT` today, means the same.
pub fn destroy(s: &TcpSocket) -> Result<bool, SockDiagError> {
    let op = format!("destroy {s}");
    let result = Diag::open()?.exchange(&destroy_request(s), &op);
    destroy_outcome(result, s)
}

/// Maps the kernel's answer to a destroy onto [`destroy`]'s result.
fn destroy_outcome(
    result: Result<Vec<TcpSocket>, SockDiagError>,
    s: &TcpSocket,
) -> Result<bool, SockDiagError> {
    match result {
        Ok(_) => Ok(true),
        Err(SockDiagError::Kernel { errno, .. })
            if errno == libc::ENOENT || errno == libc::ESTALE =>
        {
            Ok(false)
        }
        Err(SockDiagError::Kernel { errno, .. }) if errno == libc::EOPNOTSUPP => {
            Err(SockDiagError::DestroyUnsupported {
                socket: s.to_string(),
            })
        }
        Err(e) => Err(e),
    }
}

fn family_name(family: u8) -> &'static str {
    if family == AF_INET {
        "AF_INET"
    } else {
        "AF_INET6"
    }
}

/// `SOCK_DIAG_BY_FAMILY` dump of one family's TCP sockets in [`data_states`].
fn dump_request(family: u8) -> Vec<u8> {
    let req = InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: data_states(),
        socket_id: if family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        },
    };
    serialize(
        SockDiagMessage::InetRequest(req),
        NLM_F_REQUEST | NLM_F_DUMP,
    )
}

/// `SOCK_DESTROY` of exactly `s`, as `ss -K` sends it (states 0: the kernel's exact lookup
/// ignores them). `NLM_F_ACK` makes success visible: without it only a failure is answered.
fn destroy_request(s: &TcpSocket) -> Vec<u8> {
    let socket_id = SocketId {
        source_port: s.local.port(),
        destination_port: s.remote.port(),
        source_address: s.local.ip(),
        destination_address: s.remote.ip(),
        interface_id: s.ifindex,
        cookie: cookie_bytes(s.cookie),
    };
    let req = InetRequest {
        family: s.family(),
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::empty(),
        socket_id,
    };
    serialize(
        SockDiagDestroy::new(SockDiagMessage::InetRequest(req)),
        NLM_F_REQUEST | NLM_F_ACK,
    )
}

/// The kernel's `__u32 idiag_cookie[2]`, low word first, each in host order (what
/// `sock_diag_save_cookie` writes and `sock_diag_check_cookie` compares).
fn cookie_bytes(cookie: u64) -> [u8; 8] {
    let mut b = [0; 8];
    b[..4].copy_from_slice(&(cookie as u32).to_ne_bytes());
    b[4..].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
    b
}

fn cookie_of(b: [u8; 8]) -> u64 {
    let lo = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    let hi = u32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
    u64::from(hi) << 32 | u64::from(lo)
}

/// One netlink message carrying `payload`. Every exchange has its own socket, so the sequence
/// number only has to be non-zero.
fn serialize<M: NetlinkSerializable>(payload: M, flags: u16) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// `INET_DIAG_CGROUP_ID` of `linux/inet_diag.h` (5.9), which the crate does not name.
const INET_DIAG_CGROUP_ID: u16 = 21;

/// The [`TcpSocket`] a dump entry describes.
fn socket_of(r: &InetResponse) -> TcpSocket {
    use netlink_packet_core::Nla as _;
    let h = &r.header;
    let id = &h.socket_id;
    let cgroup = r.nlas.iter().find_map(|nla| match nla {
        netlink_packet_sock_diag::inet::nlas::Nla::Other(a)
            if a.kind() == INET_DIAG_CGROUP_ID && a.value_len() == 8 =>
        {
            let mut b = [0; 8];
            a.emit_value(&mut b);
            Some(u64::from_ne_bytes(b))
        }
        _ => None,
    });
    TcpSocket {
        cgroup,
        local: SocketAddr::new(id.source_address, id.source_port),
        remote: SocketAddr::new(id.destination_address, id.destination_port),
        state: h.state,
        ifindex: id.interface_id,
        cookie: cookie_of(id.cookie),
        inode: h.inode,
        uid: h.uid,
    }
}

/// Parses one datagram of replies, appending the sockets it lists to `out`. True when the
/// exchange is over: `NLMSG_DONE` ends a dump (`NLM_F_MULTI` parts before it), an
/// `NLMSG_ERROR` with code 0 acknowledges a request; a non-zero code, in either, is the
/// kernel's refusal.
fn parse_datagram(buf: &[u8], op: &str, out: &mut Vec<TcpSocket>) -> Result<bool, SockDiagError> {
    let kernel = |code: i32| SockDiagError::Kernel {
        op: op.to_owned(),
        errno: code.abs(),
    };
    let mut off = 0;
    while off < buf.len() {
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[off..]).map_err(|e| {
            SockDiagError::Parse {
                op: op.to_owned(),
                reason: e.to_string(),
            }
        })?;
        match msg.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                out.push(socket_of(&r));
            }
            NetlinkPayload::Done(d) if d.code != 0 => return Err(kernel(d.code)),
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) => {
                return match e.code {
                    None => Ok(true),
                    Some(code) => Err(kernel(code.get())),
                };
            }
            NetlinkPayload::Overrun(_) => {
                return Err(SockDiagError::Parse {
                    op: op.to_owned(),
                    reason: "NLMSG_OVERRUN: the kernel dropped part of the reply".into(),
                });
            }
            // NLMSG_NOOP, and requests the kernel never sends to us.
            _ => {}
        }
        // The length is at least a header's (checked by `deserialize`); messages are 4-aligned.
        off += (msg.header.length as usize + 3) & !3;
    }
    Ok(false)
}

/// A `NETLINK_SOCK_DIAG` socket of the calling thread's network namespace.
struct Diag(Socket);

impl Diag {
    fn open() -> Result<Self, SockDiagError> {
        let socket = |source| SockDiagError::Socket { source };
        let mut s = Socket::new(NETLINK_SOCK_DIAG).map_err(socket)?;
        s.bind_auto().map_err(socket)?;
        s.connect(&netlink_sys::SocketAddr::new(0, 0))
            .map_err(socket)?;
        Ok(Self(s))
    }

    /// Sends `request` and reads replies until the exchange is over (see [`parse_datagram`]).
    fn exchange(&self, request: &[u8], op: &str) -> Result<Vec<TcpSocket>, SockDiagError> {
        let io = |source| SockDiagError::Io {
            op: op.to_owned(),
            source,
        };
        self.0.send(request, 0).map_err(io)?;
        let mut buf = vec![0; RECV_BUF];
        let mut out = Vec::new();
        loop {
            // MSG_TRUNC: the datagram's real length, so that a truncated one is an error.
            let n = self
                .0
                .recv(&mut &mut buf[..], libc::MSG_TRUNC)
                .map_err(io)?;
            if n > buf.len() {
                return Err(SockDiagError::Parse {
                    op: op.to_owned(),
                    reason: format!("a {n}-byte datagram does not fit the {RECV_BUF}-byte buffer"),
                });
            }
            if parse_datagram(&buf[..n], op, &mut out)? {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn v4_socket() -> TcpSocket {
        TcpSocket {
            local: "10.1.0.1:40000".parse().unwrap(),
            remote: "10.1.0.2:5000".parse().unwrap(),
            state: 1,
            ifindex: 0,
            cookie: 0x1122_3344_5566_7788,
            inode: 4242,
            uid: 0,
            cgroup: None,
        }
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_ne_bytes([b[off], b[off + 1]])
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
    }

    /// `struct inet_diag_sockid` as the kernel lays it out (uapi `linux/inet_diag.h`).
    fn sockid(
        sport: u16,
        dport: u16,
        src: [u8; 16],
        dst: [u8; 16],
        ifindex: u32,
        cookie: [u32; 2],
    ) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
        b.extend_from_slice(&src);
        b.extend_from_slice(&dst);
        b.extend_from_slice(&ifindex.to_ne_bytes());
        b.extend_from_slice(&cookie[0].to_ne_bytes());
        b.extend_from_slice(&cookie[1].to_ne_bytes());
        b
    }

    fn nlmsg(kind: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(16 + payload.len() as u32).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&7u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(payload);
        while b.len() % 4 != 0 {
            b.push(0);
        }
        b
    }

    /// `struct inet_diag_msg` plus an `INET_DIAG_SHUTDOWN` attribute, as a dump sends it.
    fn diag_msg(family: u8, state: u8, id: &[u8], uid: u32, inode: u32) -> Vec<u8> {
        let mut b = vec![family, state, 0, 0];
        b.extend_from_slice(id);
        for v in [0u32, 0, 0, uid, inode] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(&[5, 0, 8, 0, 0, 0, 0, 0]);
        b
    }

    #[test]
    fn dump_request_is_an_inet_diag_req_v2_for_the_data_states() {
        let b = dump_request(AF_INET6);
        assert_eq!(b.len(), 16 + 8 + 48);
        assert_eq!(u32_at(&b, 0), 72);
        assert_eq!(u16_at(&b, 4), 20, "SOCK_DIAG_BY_FAMILY");
        assert_eq!(u16_at(&b, 6), 0x301, "NLM_F_REQUEST | NLM_F_DUMP");
        assert_eq!(
            &b[16..20],
            &[10, 6, 0, 0],
            "AF_INET6, IPPROTO_TCP, no extensions"
        );
        // ESTABLISHED 1, SYN_SENT 2, SYN_RECV 3, FIN_WAIT1 4, FIN_WAIT2 5, CLOSE_WAIT 8,
        // LAST_ACK 9; not TIME_WAIT 6, CLOSE 7, LISTEN 10, CLOSING 11.
        assert_eq!(u32_at(&b, 20), 0b11_0011_1110);
        assert!(b[24..].iter().all(|&x| x == 0), "wildcard socket id");
    }

    #[test]
    fn destroy_request_names_the_socket_by_4_tuple_and_cookie() {
        let s = v4_socket();
        let b = destroy_request(&s);
        assert_eq!(b.len(), 72);
        assert_eq!(u16_at(&b, 4), 21, "SOCK_DESTROY");
        assert_eq!(u16_at(&b, 6), 0x5, "NLM_F_REQUEST | NLM_F_ACK");
        assert_eq!(&b[16..20], &[2, 6, 0, 0]);
        assert_eq!(u32_at(&b, 20), 0, "states");
        let mut src = [0; 16];
        src[..4].copy_from_slice(&[10, 1, 0, 1]);
        let mut dst = [0; 16];
        dst[..4].copy_from_slice(&[10, 1, 0, 2]);
        let want = sockid(40000, 5000, src, dst, 0, [0x5566_7788, 0x1122_3344]);
        assert_eq!(&b[24..], want.as_slice());
    }

    #[test]
    fn a_v4_mapped_socket_is_destroyed_as_af_inet6_with_its_mapped_addresses() {
        let s = TcpSocket {
            local: "[::ffff:10.1.0.2]:5000".parse().unwrap(),
            remote: "[::ffff:10.1.0.1]:40000".parse().unwrap(),
            ..v4_socket()
        };
        let b = destroy_request(&s);
        assert_eq!(b[16], 10, "AF_INET6");
        assert_eq!(
            &b[28..44],
            &Ipv4Addr::new(10, 1, 0, 2).to_ipv6_mapped().octets()
        );
        assert_eq!(
            &b[44..60],
            &Ipv4Addr::new(10, 1, 0, 1).to_ipv6_mapped().octets()
        );
    }

    #[test]
    fn a_multipart_dump_parses_into_sockets_until_done() {
        let mut src = [0; 16];
        src[..4].copy_from_slice(&[10, 1, 0, 1]);
        let mut dst = [0; 16];
        dst[..4].copy_from_slice(&[10, 1, 0, 2]);
        let v4 = sockid(40000, 5000, src, dst, 3, [0x5566_7788, 0x1122_3344]);
        let mapped_local = Ipv4Addr::new(10, 1, 0, 2).to_ipv6_mapped();
        let mapped_remote = Ipv4Addr::new(10, 1, 0, 1).to_ipv6_mapped();
        let v6 = sockid(
            5001,
            40001,
            mapped_local.octets(),
            mapped_remote.octets(),
            0,
            [9, 0],
        );
        let multi = 2; // NLM_F_MULTI
        // The first carries its creator's cgroup (INET_DIAG_CGROUP_ID, a u64 attribute).
        let mut with_cgroup = diag_msg(2, 1, &v4, 1000, 77);
        with_cgroup.extend_from_slice(&[12, 0, 21, 0]);
        with_cgroup.extend_from_slice(&0x4242_u64.to_ne_bytes());
        let mut first = nlmsg(20, multi, &with_cgroup);
        first.extend(nlmsg(20, multi, &diag_msg(10, 8, &v6, 0, 0)));
        let done = nlmsg(3, multi, &0i32.to_ne_bytes());

        let mut out = Vec::new();
        assert!(
            !parse_datagram(&first, "dump", &mut out).unwrap(),
            "not over yet"
        );
        assert!(parse_datagram(&done, "dump", &mut out).unwrap());
        assert_eq!(
            out,
            [
                TcpSocket {
                    local: "10.1.0.1:40000".parse().unwrap(),
                    remote: "10.1.0.2:5000".parse().unwrap(),
                    state: 1,
                    ifindex: 3,
                    cookie: 0x1122_3344_5566_7788,
                    inode: 77,
                    uid: 1000,
                    cgroup: Some(0x4242),
                },
                TcpSocket {
                    local: SocketAddr::new(IpAddr::V6(mapped_local), 5001),
                    remote: SocketAddr::new(IpAddr::V6(mapped_remote), 40001),
                    state: 8,
                    ifindex: 0,
                    cookie: 9,
                    inode: 0,
                    uid: 0,
                    cgroup: None,
                },
            ]
        );
        assert_eq!(out[1].family(), AF_INET6);
        // The cookie goes back to the kernel exactly as it came.
        assert_eq!(cookie_bytes(out[0].cookie), v4[40..48]);
    }

    #[test]
    fn acks_errors_and_failed_dumps_end_the_exchange() {
        let mut out = Vec::new();
        let request = destroy_request(&v4_socket());
        let reply = |code: i32| {
            let mut p = code.to_ne_bytes().to_vec();
            p.extend_from_slice(&request);
            nlmsg(2, 0, &p)
        };
        assert!(parse_datagram(&reply(0), "destroy", &mut out).unwrap());
        let err = parse_datagram(&reply(-libc::EPERM), "destroy x", &mut out).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EPERM));
        assert_eq!(
            err.to_string(),
            format!("destroy x: {}", io::Error::from_raw_os_error(libc::EPERM))
        );
        let done = nlmsg(3, 2, &(-libc::ENOBUFS).to_ne_bytes());
        let err = parse_datagram(&done, "dump", &mut out).unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENOBUFS));
        assert!(out.is_empty());
        let truncated = &reply(0)[..10];
        assert!(matches!(
            parse_datagram(truncated, "destroy", &mut out),
            Err(SockDiagError::Parse { .. })
        ));
    }

    #[test]
    fn destroy_outcomes_distinguish_gone_from_unsupported() {
        let s = v4_socket();
        let refused = |errno| {
            Err(SockDiagError::Kernel {
                op: "destroy".into(),
                errno,
            })
        };
        assert!(destroy_outcome(Ok(Vec::new()), &s).unwrap());
        assert!(!destroy_outcome(refused(libc::ENOENT), &s).unwrap());
        assert!(!destroy_outcome(refused(libc::ESTALE), &s).unwrap());
        let e = destroy_outcome(refused(libc::EOPNOTSUPP), &s).unwrap_err();
        assert!(matches!(e, SockDiagError::DestroyUnsupported { .. }));
        assert_eq!(
            e.to_string(),
            "destroy 10.1.0.1:40000 -> 10.1.0.2:5000 ESTAB (cookie 0x1122334455667788): \
             this kernel cannot destroy sockets (CONFIG_INET_DIAG_DESTROY is off)"
        );
        assert_eq!(
            destroy_outcome(refused(libc::EPERM), &s)
                .unwrap_err()
                .errno(),
            Some(libc::EPERM)
        );
    }
}
