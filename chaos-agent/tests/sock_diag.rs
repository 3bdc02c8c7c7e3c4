//! Connection resets with `sock_diag` `SOCK_DESTROY`, end to end: real TCP connections between two
//! network namespaces joined by a veth pair, listed and aborted with `kernel::sock_diag` from a
//! thread inside one of them, and judged from outside the mechanism: by the errno each end's
//! next call gets (the aborted end `ECONNABORTED`, the peer `ECONNRESET` from the RST), by
//! traffic on the connections that must survive, and by `ss -tn` in the namespace. Runs as root
//! (`cargo xtask test`, serially) and in the Debian 6.1 VM.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};

use chaos_agent::kernel::sock_diag::{self, SockDiagError, TcpSocket};
use chaos_testing::{Feature, NetNs, Rules, VethPair, in_netns, require_all, skip};

/// Root for the namespaces, `ip` for the veth pair, `ss` for the independent view.
fn can_run(test: &str) -> bool {
    require_all(
        test,
        &[Feature::Root, Feature::Tool("ip"), Feature::Tool("ss")],
    )
}

fn sockets(ns: &NetNs) -> Vec<TcpSocket> {
    in_netns(ns, sock_diag::tcp_sockets).expect("tcp_sockets")
}

/// The listed socket with exactly this local and remote address.
fn find(list: &[TcpSocket], local: SocketAddr, remote: SocketAddr) -> TcpSocket {
    list.iter()
        .find(|s| s.local == local && s.remote == remote)
        .unwrap_or_else(|| panic!("no socket {local} -> {remote} in {list:#?}"))
        .clone()
}

/// `destroy(s)` inside `ns`; `None` (and the test skipped) on a kernel without
/// `CONFIG_INET_DIAG_DESTROY`. Both kernels of the suite's profiles have it (the host's 6.18
/// and Debian's 6.1 config say `=y`), so under their rules it is a failure instead.
fn destroy(test: &str, ns: &NetNs, s: &TcpSocket) -> Option<bool> {
    let s = s.clone();
    match in_netns(ns, move || sock_diag::destroy(&s)) {
        Ok(destroyed) => Some(destroyed),
        Err(e @ SockDiagError::DestroyUnsupported { .. }) => {
            let rules = Rules::current();
            assert!(
                rules.must_have.is_empty(),
                "{test}: {e} ({}): the suite's kernels have it",
                rules.source
            );
            skip(test, &e.to_string());
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

/// The errno of the next read, which must fail.
fn read_errno(s: &mut TcpStream) -> i32 {
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(n) => panic!("read returned {n} bytes instead of failing"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("read failed without an errno: {e}")),
    }
}

fn errno_name(errno: i32) -> String {
    format!("{errno} ({})", std::io::Error::from_raw_os_error(errno))
}

/// A round trip on a connection: client to server and back.
fn echo(client: &mut TcpStream, server: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 4];
    client.write_all(b"ping").expect(what);
    server.read_exact(&mut buf).expect(what);
    assert_eq!(&buf, b"ping", "{what}");
    server.write_all(b"pong").expect(what);
    client.read_exact(&mut buf).expect(what);
    assert_eq!(&buf, b"pong", "{what}");
}

/// `(local, peer)` of each TCP socket `ss -tn` lists in `ns` (established and the other
/// connected states), as `ss` prints them.
fn ss_pairs(ns: &NetNs) -> Vec<(String, String)> {
    ns.sh("ss -tnH")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5).then(|| (f[3].to_owned(), f[4].to_owned()))
        })
        .collect()
}

fn ss_lists(ns: &NetNs, local: SocketAddr, remote: SocketAddr) -> bool {
    ss_pairs(ns).contains(&(local.to_string(), remote.to_string()))
}

#[test]
fn destroy_aborts_one_ipv4_connection_and_leaves_the_other() {
    let test = "destroy_aborts_one_ipv4_connection_and_leaves_the_other";
    if !can_run(test) {
        return;
    }
    let pair = VethPair::new(161);
    let l1 = chaos_testing::tcp_listen(&pair.b, &format!("{}:5001", pair.b_ip));
    let l2 = chaos_testing::tcp_listen(&pair.b, &format!("{}:5002", pair.b_ip));
    let (mut c1, mut s1) = chaos_testing::tcp_connect(&pair.a, &format!("{}:5001", pair.b_ip), &l1);
    let (mut c2, mut s2) = chaos_testing::tcp_connect(&pair.a, &format!("{}:5002", pair.b_ip), &l2);
    let one = (c1.local_addr().unwrap(), c1.peer_addr().unwrap());
    let two = (c2.local_addr().unwrap(), c2.peer_addr().unwrap());

    // Both connections are listed in the client's namespace with their 4-tuples, as `ss` lists
    // them; the listeners are in the other namespace, and none of what is listed listens.
    let list = sockets(&pair.a);
    let first = find(&list, one.0, one.1);
    let second = find(&list, two.0, two.1);
    for s in [&first, &second] {
        assert_eq!(s.state, 1, "ESTABLISHED: {s}");
        assert_eq!(s.ifindex, 0, "not bound to a device: {s}");
        assert_ne!(s.cookie, 0, "the dump assigns a cookie: {s}");
        assert_ne!(s.inode, 0, "a socket this process holds has an inode: {s}");
        assert!(ss_lists(&pair.a, s.local, s.remote), "ss lacks {s}");
    }
    assert_ne!(first.cookie, second.cookie);
    assert_eq!(list.len(), 2, "only the two connections: {list:#?}");

    // The cookie pins the socket: the same 4-tuple with another cookie is not it.
    let impostor = TcpSocket {
        cookie: first.cookie ^ 1,
        ..first.clone()
    };
    let Some(destroyed) = destroy(test, &pair.a, &impostor) else {
        return;
    };
    assert!(!destroyed, "a wrong cookie destroyed {first}");
    echo(
        &mut c1,
        &mut s1,
        "the first connection after a wrong-cookie destroy",
    );

    assert_eq!(
        destroy(test, &pair.a, &first),
        Some(true),
        "destroy {first}"
    );
    let local = read_errno(&mut c1);
    assert_eq!(
        local,
        libc::ECONNABORTED,
        "the aborted end's read: {}",
        errno_name(local)
    );
    assert!(
        c1.write_all(b"more").is_err(),
        "a write after the abort succeeded"
    );
    let peer = read_errno(&mut s1);
    assert_eq!(
        peer,
        libc::ECONNRESET,
        "the peer's read (a RST): {}",
        errno_name(peer)
    );

    echo(
        &mut c2,
        &mut s2,
        "the second connection after the first's abort",
    );
    assert!(!ss_lists(&pair.a, one.0, one.1), "ss still lists {first}");
    assert!(ss_lists(&pair.a, two.0, two.1), "ss lost {second}");
    let after = sockets(&pair.a);
    assert_eq!(
        after,
        std::slice::from_ref(&second),
        "only the second is left"
    );

    // Gone already: not an error.
    assert_eq!(destroy(test, &pair.a, &first), Some(false), "destroy again");
}

#[test]
fn ipv6_and_ipv4_mapped_sockets_are_listed_and_destroyed() {
    let test = "ipv6_and_ipv4_mapped_sockets_are_listed_and_destroyed";
    if !can_run(test) {
        return;
    }
    let pair = VethPair::new(162);
    // A dual-stack listener: its IPv4 connections are AF_INET6 sockets with mapped addresses.
    let listener = chaos_testing::tcp_listen(&pair.b, "[::]:5003");
    let (mut c4, mut s4) =
        chaos_testing::tcp_connect(&pair.a, &format!("{}:5003", pair.b_ip), &listener);
    let (mut c6, mut s6) =
        chaos_testing::tcp_connect(&pair.a, &format!("[{}]:5003", pair.b_ip6), &listener);

    // The server's end of the IPv4 connection is reported with IPv4-mapped addresses, as the
    // socket itself reports them; the client's end (an AF_INET socket) with plain IPv4 ones.
    let (s4_local, s4_peer) = (s4.local_addr().unwrap(), s4.peer_addr().unwrap());
    assert!(
        matches!(s4_local, SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_some()),
        "the dual-stack listener's child is not v4-mapped: {s4_local}"
    );
    let server_side = sockets(&pair.b);
    let mapped = find(&server_side, s4_local, s4_peer);
    let v6 = find(
        &server_side,
        s6.local_addr().unwrap(),
        s6.peer_addr().unwrap(),
    );
    assert_eq!(
        server_side.len(),
        2,
        "the listener is not listed: {server_side:#?}"
    );
    assert!(
        ss_lists(&pair.b, mapped.local, mapped.remote),
        "ss lacks {mapped}"
    );
    let client_side = sockets(&pair.a);
    let c4_sock = find(
        &client_side,
        c4.local_addr().unwrap(),
        c4.peer_addr().unwrap(),
    );
    assert!(c4_sock.local.is_ipv4(), "{c4_sock}");

    // Destroying the mapped socket (an AF_INET6 request with mapped addresses) aborts the
    // server's end; the IPv4 client gets the RST.
    let Some(destroyed) = destroy(test, &pair.b, &mapped) else {
        return;
    };
    assert!(destroyed, "destroy {mapped}");
    let local = read_errno(&mut s4);
    assert_eq!(
        local,
        libc::ECONNABORTED,
        "mapped server end: {}",
        errno_name(local)
    );
    let peer = read_errno(&mut c4);
    assert_eq!(peer, libc::ECONNRESET, "IPv4 client: {}", errno_name(peer));
    echo(
        &mut c6,
        &mut s6,
        "the IPv6 connection after the mapped one's abort",
    );

    // And a plain IPv6 connection, from the client's side.
    let c6_sock = find(
        &sockets(&pair.a),
        c6.local_addr().unwrap(),
        c6.peer_addr().unwrap(),
    );
    assert_eq!(
        destroy(test, &pair.a, &c6_sock),
        Some(true),
        "destroy {c6_sock}"
    );
    let local = read_errno(&mut c6);
    assert_eq!(
        local,
        libc::ECONNABORTED,
        "IPv6 client: {}",
        errno_name(local)
    );
    let peer = read_errno(&mut s6);
    assert_eq!(
        peer,
        libc::ECONNRESET,
        "IPv6 server end: {}",
        errno_name(peer)
    );
    assert_eq!(
        destroy(test, &pair.b, &v6),
        Some(false),
        "the RST closed {v6}"
    );
    assert!(sockets(&pair.a).is_empty(), "client sockets left");
    assert!(ss_pairs(&pair.b).is_empty(), "ss lists server sockets left");
}
