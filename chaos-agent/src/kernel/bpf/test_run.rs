//! `BPF_PROG_TEST_RUN` (aya 0.14 has no wrapper): runs a loaded tc program on a packet built in
//! memory, on the loopback device of the caller's namespace, without attaching it anywhere.
//! `doctor` uses it to self-test the DNS rewrite on this kernel; the tests use it to check the
//! programs' decisions packet by packet.

use std::os::fd::RawFd;

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// `union bpf_attr`'s `test` member (uapi `linux/bpf.h`, unchanged since 5.10 apart from
/// appended fields). The kernel rejects non-zero bytes past the fields it knows, so the trailing
/// padding must be zero.
#[repr(C, align(8))]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    /// Explicit: Rust leaves implicit trailing padding uninitialised, and the kernel answers
    /// EINVAL when the bytes after the last field it knows are not zero.
    _pad: u32,
}

/// What one run gave.
#[derive(Debug)]
pub struct TestRun {
    /// The program's return value (its tc verdict).
    pub retval: i32,
    /// Average ns per run, as the kernel measured it.
    pub duration: u32,
    /// The packet as the program left it (rewritten, resized).
    pub data: Vec<u8>,
}

/// Runs program `prog_fd` `repeat` times on `data`. `ctx`, if given, is `struct __sk_buff` in
/// (its first bytes) and out (the kernel writes it back; it must be the kernel's whole size,
/// 192 bytes on 6.x, or the run fails with ENOSPC).
pub fn test_run(
    prog_fd: RawFd,
    data: &[u8],
    ctx: Option<(&[u8], &mut [u8])>,
    repeat: u32,
) -> std::io::Result<TestRun> {
    let mut out = vec![0u8; data.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: data.len() as u32,
        data_in: data.as_ptr() as u64,
        data_size_out: out.len() as u32,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    if let Some((ctx_in, ctx_out)) = ctx {
        attr.ctx_size_in = ctx_in.len() as u32;
        attr.ctx_in = ctx_in.as_ptr() as u64;
        attr.ctx_size_out = ctx_out.len() as u32;
        attr.ctx_out = ctx_out.as_mut_ptr() as u64;
    }
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; every buffer it points to
    // outlives the call and has the size declared.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            std::ptr::from_mut(&mut attr),
            size_of::<TestRunAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok(TestRun {
        retval: attr.retval as i32,
        duration: attr.duration,
        data: out,
    })
}

/// RFC 1071 one's complement sum of `b` (an odd length padded with a zero byte), folded to 16
/// bits: a header or segment with a right checksum sums to `0xffff`. For checking what a
/// program wrote, independently of how it computed it.
#[must_use]
pub fn ones_sum(b: &[u8]) -> u32 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        s += u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0));
        s = (s & 0xffff) + (s >> 16);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3's example bytes sum to 0xddf2.
        assert_eq!(
            ones_sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
        assert_eq!(ones_sum(&[0xff]), 0xff00, "odd length padded");
    }
}
