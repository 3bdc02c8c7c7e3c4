//! Feeding fuzzed datagrams to the agent's own netlink dump parser
//! (`chaos_agent::kernel::tc::dump::dump`), which reads qdisc and class dumps straight off a
//! socket: here the socket is one end of a Unix datagram socket pair, and the other end holds
//! the datagrams the "kernel" sends.
//!
//! The parser keeps only messages carrying its request's sequence number, which changes on
//! every call; so the sequence numbers in the input are relative: a message's `nlmsg_seq` is
//! rewritten to `seq + given` (0 = this dump's), as far as the input's own lengths allow the
//! harness to find the headers. A final `NLMSG_DONE` is always queued, so a dump that never
//! ends cannot hang the fuzzer.

use std::io;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use chaos_agent::kernel::tc::TcObject;
use chaos_agent::kernel::tc::dump;

/// Datagrams one dump may get before its `NLMSG_DONE` (the socket pair queues at most
/// `net.unix.max_dgram_qlen`, 10 by default, and a full queue must not block the harness).
pub const MAX_FRAMES: usize = 8;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDR: usize = 16;

/// The sequence number the parser's next request carries: its counter starts at 1 and only the
/// harness calls it in a fuzz process.
static NEXT_SEQ: AtomicU32 = AtomicU32::new(1);

/// Splits fuzz input into datagrams: each is a little-endian `u16` length and that many bytes
/// (the last one takes what is left).
#[must_use]
pub fn frames(mut data: &[u8], max: usize) -> (Vec<&[u8]>, &[u8]) {
    let mut out = Vec::new();
    while out.len() < max && data.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([data[0], data[1]]));
        let rest = &data[2..];
        let take = len.min(rest.len());
        out.push(&rest[..take]);
        data = &rest[take..];
    }
    (out, data)
}

fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn send(fd: &OwnedFd, bytes: &[u8]) -> bool {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid descriptor and a buffer of `bytes.len()` bytes.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(n).is_ok_and(|n| n == bytes.len())
}

/// Rewrites the sequence numbers of the messages the harness can find in `frame`.
fn relative_seq(frame: &mut [u8], seq: u32) {
    let mut off = 0usize;
    while off + NLMSG_HDR <= frame.len() {
        let len = u32::from_ne_bytes(frame[off..off + 4].try_into().unwrap_or_default()) as usize;
        if len < NLMSG_HDR || off + len > frame.len() {
            return;
        }
        let given = u32::from_ne_bytes(frame[off + 8..off + 12].try_into().unwrap_or_default());
        frame[off + 8..off + 12].copy_from_slice(&seq.wrapping_add(given).to_ne_bytes());
        off += (len + 3) & !3;
    }
}

fn done(seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(20);
    m.extend_from_slice(&20u32.to_ne_bytes());
    m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
    m.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&0i32.to_ne_bytes());
    m
}

/// Runs the agent's dump of `request` (`RTM_GETQDISC` or `RTM_GETTCLASS`) for `ifindex` over
/// `frames` followed by `NLMSG_DONE`. `None` if the harness could not queue them.
pub fn run_dump(request: u16, ifindex: u32, frames: &[&[u8]]) -> Option<io::Result<Vec<TcObject>>> {
    let seq = NEXT_SEQ.fetch_add(1, Ordering::Relaxed);
    let (ours, theirs) = socket_pair().expect("socketpair");
    for f in frames.iter().take(MAX_FRAMES) {
        let mut f = f.to_vec();
        relative_seq(&mut f, seq);
        // An empty datagram is a real datagram too (recv returns 0).
        if !send(&theirs, &f) {
            return None;
        }
    }
    if !send(&theirs, &done(seq)) {
        return None;
    }
    // A harness bug (a sequence number it got wrong) must fail the run, not hang it.
    let timeout = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: a valid descriptor and a `timeval` of the size given.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&ours),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    // SAFETY: `ours` is an open socket; the netlink Socket takes it over and closes it.
    let sock =
        unsafe { netlink_sys::Socket::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(ours)) };
    let got = dump::dump(&sock, request, ifindex);
    if let Err(e) = &got {
        assert_ne!(
            e.kind(),
            io::ErrorKind::WouldBlock,
            "the dump never saw its NLMSG_DONE"
        );
    }
    // The request the parser sent must carry the sequence number the harness assumed, or every
    // message would have been skipped for the wrong reason.
    let mut req = [0u8; 64];
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid descriptor and a 64-byte buffer.
    let n = unsafe {
        libc::recv(
            theirs.as_raw_fd(),
            req.as_mut_ptr().cast(),
            req.len(),
            libc::MSG_DONTWAIT,
        )
    };
    assert_eq!(n, 36, "the dump request is nlmsghdr + tcmsg");
    assert_eq!(
        u32::from_ne_bytes(req[8..12].try_into().unwrap_or_default()),
        seq,
        "harness out of step with the parser's sequence numbers"
    );
    assert_eq!(u16::from_ne_bytes([req[4], req[5]]), request);
    Some(got)
}
