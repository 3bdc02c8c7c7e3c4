//! A user-space twin of the kernel's DNS response check (`chaos-ebpf/src/dns.rs`,
//! `inspect_inner`, `label_step`, `key_step`, `load_upto`), step for step: the same bounds, the
//! same 256-byte window into the message, the same masks. The `dns_wire` target compares it with
//! `chaos_common::dns::wire_name_key`, the twin the agent's own tests use, so that the two cannot
//! drift apart on what counts as a question and what key it gets.

use chaos_common::dns::{HEADER_LEN, MAX_LABEL, MAX_LABELS, NAME_KEY_BYTES};

/// What the programs make of a packet's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not a response with a question to judge (a query, another opcode, a TCP segment without
    /// payload): DNS faults do not apply.
    NotResponse,
    /// A response the parser cannot read within its bounds: passed untouched, counted.
    Unparsed,
    /// A response with one question the parser read.
    Question {
        /// The reversed name key (`chaos_common::dns`).
        key: Vec<u8>,
        /// The question's type.
        qtype: u16,
        /// Offset just past the question (name, type and class) from the payload's start.
        qend: usize,
    },
}

/// The per-CPU scratch memory's stale bytes: the kernel never clears it between packets, so
/// nothing may depend on what lies past the bytes a packet loaded.
const STALE: u8 = 0xa5;

/// The programs' check of an L4 payload: UDP (the DNS message) or TCP (a segment starting with
/// the 2-byte length of the message, RFC 1035 4.2.2).
#[must_use]
pub fn inspect(payload: &[u8], tcp: bool) -> Verdict {
    let len = payload.len();
    let off = if tcp {
        if len == 0 {
            // SYN, ACK, FIN: no message here.
            return Verdict::NotResponse;
        }
        2
    } else {
        0
    };
    let Some(h) = payload.get(off..off + HEADER_LEN) else {
        return Verdict::Unparsed;
    };
    // QR = 1 (a response), opcode 0 (QUERY).
    if h[2] & 0x80 == 0 || (h[2] >> 3) & 0x0f != 0 {
        return Verdict::NotResponse;
    }
    if u16::from_be_bytes([h[4], h[5]]) != 1 {
        return Verdict::Unparsed;
    }
    let name_off = off + HEADER_LEN;
    // load_upto(name_off, raw, 256).
    let mut raw = [STALE; 256];
    if name_off >= len {
        return Verdict::Unparsed;
    }
    let n = (len - name_off).min(256);
    let n = ((n - 1) & 255) + 1;
    raw[..n].copy_from_slice(&payload[name_off..name_off + n]);
    let loaded = n;
    // label_step, at most MAX_LABELS times.
    let mut starts = [0u8; MAX_LABELS];
    let (mut pos, mut labels) = (0usize, 0usize);
    let mut state = 0;
    for _ in 0..MAX_LABELS {
        if pos >= loaded || pos >= 255 {
            state = 2;
            break;
        }
        let l = usize::from(raw[pos & 0xff]);
        if l == 0 {
            state = 1;
            break;
        }
        if l > MAX_LABEL || labels >= MAX_LABELS {
            state = 2;
            break;
        }
        starts[labels & 0x7f] = pos as u8;
        labels += 1;
        pos += 1 + l;
    }
    if state != 1 {
        return Verdict::Unparsed;
    }
    let wire = pos + 1;
    let Some(tc) = payload.get(name_off + wire..name_off + wire + 4) else {
        return Verdict::Unparsed;
    };
    let qtype = u16::from_be_bytes([tc[0], tc[1]]);
    let qend = off + HEADER_LEN + wire + 4;
    // key_step, at most NAME_KEY_BYTES times.
    let mut key = [STALE; NAME_KEY_BYTES];
    let mut out = 0usize;
    if labels > 0 {
        let (mut label, mut j, mut finished) = (labels - 1, 0usize, false);
        for _ in 0..NAME_KEY_BYTES {
            let start = usize::from(starts[label & 0x7f]);
            let l = usize::from(raw[start & 0xff]);
            let b = if j == 0 {
                l as u8
            } else {
                let c = raw[(start + j) & 0xff];
                if c.wrapping_sub(b'A') < 26 {
                    c | 0x20
                } else {
                    c
                }
            };
            key[out & 0xff] = b;
            out += 1;
            if j >= l {
                if label == 0 {
                    finished = true;
                    break;
                }
                label -= 1;
                j = 0;
            } else {
                j += 1;
            }
        }
        if !finished {
            return Verdict::Unparsed;
        }
    }
    Verdict::Question {
        key: key[..out].to_vec(),
        qtype,
        qend,
    }
}

/// A response message for `name` (presentation form) of type `qtype`: header with QR set and
/// one question, the name in wire form as written (case kept), class IN.
#[must_use]
pub fn response(name: &str, qtype: u16) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&wire_name(name));
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

/// `name` (presentation form, a trailing dot allowed) in wire form: length-prefixed labels and
/// the root's zero byte. Labels are taken as they are (the caller checked them).
#[must_use]
pub fn wire_name(name: &str) -> Vec<u8> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut w = Vec::with_capacity(name.len() + 2);
    if !name.is_empty() {
        for label in name.split('.') {
            w.push(label.len() as u8);
            w.extend_from_slice(label.as_bytes());
        }
    }
    w.push(0);
    w
}
