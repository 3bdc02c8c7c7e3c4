//! DNS messages as the program's user-space twins parse them. The first byte picks the input:
//! - even: the rest is a UDP payload (and, after its 2-byte length, a TCP one). The kernel's
//!   response check, replayed by `dns_twin::inspect`, and
//!   `chaos_common::dns::wire_name_key` must agree: a response with one question gets a key
//!   exactly when `wire_name_key` reads its name and the type and class follow, and both build
//!   the same key; TCP is UDP after the 2-byte length; a name whose labels hold no dot and are
//!   UTF-8 has, in presentation form, the key `name_key` gives.
//! - odd: the rest is a domain. If `name_key` takes it, its wire form read by `wire_name_key`
//!   gives the same key and its own length back, in any case, and a response asking for it gets
//!   that key from the kernel's check.
#![no_main]

use chaos_agent_fuzz::dns_twin::{Verdict, inspect, response, wire_name};
use chaos_common::dns::{HEADER_LEN, name_key, wire_name_key};
use libfuzzer_sys::fuzz_target;

fn message(payload: &[u8]) {
    let udp = inspect(payload, false);
    let mut framed = (payload.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(payload);
    let tcp = inspect(&framed, true);
    match (&udp, &tcp) {
        (
            Verdict::Question { key, qtype, qend },
            Verdict::Question {
                key: k2,
                qtype: t2,
                qend: e2,
            },
        ) => assert!(key == k2 && qtype == t2 && qend + 2 == *e2, "TCP differs"),
        (a, b) => assert_eq!(a, b, "TCP differs from UDP"),
    }
    let header_ok = payload.len() >= HEADER_LEN
        && payload[2] & 0x80 != 0
        && (payload[2] >> 3) & 0x0f == 0
        && u16::from_be_bytes([payload[4], payload[5]]) == 1;
    if payload.len() < HEADER_LEN {
        assert_eq!(udp, Verdict::Unparsed);
        return;
    }
    if !header_ok {
        assert!(matches!(udp, Verdict::NotResponse | Verdict::Unparsed));
        return;
    }
    let wire = wire_name_key(&payload[HEADER_LEN..]);
    match (&udp, wire) {
        (Verdict::Question { key, qtype, qend }, Some((k, n, wire_len))) => {
            assert_eq!(
                key.as_slice(),
                &k[..n],
                "the kernel and wire_name_key build other keys"
            );
            assert_eq!(*qend, HEADER_LEN + wire_len + 4);
            let at = HEADER_LEN + wire_len;
            assert_eq!(*qtype, u16::from_be_bytes([payload[at], payload[at + 1]]));
            presentation(&payload[HEADER_LEN..HEADER_LEN + wire_len], key);
        }
        (Verdict::Unparsed, Some((_, _, wire_len))) => assert!(
            payload.len() < HEADER_LEN + wire_len + 4,
            "wire_name_key reads a name the kernel does not"
        ),
        (Verdict::Unparsed, None) => {}
        (v, w) => panic!("kernel {v:?}, wire_name_key {w:?}"),
    }
}

/// The presentation form of a wire name, where it has one `name_key` reads the same way.
fn presentation(wire: &[u8], key: &[u8]) {
    let mut labels = Vec::new();
    let mut pos = 0;
    while wire[pos] != 0 {
        let len = usize::from(wire[pos]);
        labels.push(&wire[pos + 1..=pos + len]);
        pos += 1 + len;
    }
    let Ok(labels) = labels
        .iter()
        .map(|l| std::str::from_utf8(l))
        .collect::<Result<Vec<&str>, _>>()
    else {
        return;
    };
    if labels.iter().any(|l| l.contains('.')) {
        return;
    }
    let name = labels.join(".");
    let (k, n) = name_key(&name).unwrap_or_else(|e| panic!("{name:?}: {e:?}"));
    assert_eq!(&k[..n], key, "{name:?}");
}

fn domain(d: &str) {
    let Ok((k, n)) = name_key(d) else {
        return;
    };
    for form in [d.to_owned(), d.to_ascii_uppercase(), d.to_ascii_lowercase()] {
        let w = wire_name(&form);
        let Some((k2, n2, len)) = wire_name_key(&w) else {
            panic!("{form:?}: name_key takes it, wire_name_key refuses {w:?}");
        };
        assert_eq!(&k2[..n2], &k[..n], "{form:?}");
        assert_eq!(len, w.len());
        let v = inspect(&response(&form, 28), false);
        assert_eq!(
            v,
            Verdict::Question {
                key: k[..n].to_vec(),
                qtype: 28,
                qend: HEADER_LEN + w.len() + 4,
            },
            "{form:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which % 2 == 0 {
        message(rest);
    } else if let Some(d) = chaos_agent_fuzz::text(rest) {
        domain(d);
    }
});
