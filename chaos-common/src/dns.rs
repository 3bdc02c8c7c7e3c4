//! DNS answer faults: what the programs and the agent agree on.
//!
//! The programs match a response's question name against the faults' domain suffixes with one
//! longest-prefix lookup in an LPM trie (`CHAOS_DNS_NAMES`). For that, a name is written
//! *reversed*, label by label from the root, each label as its length byte followed by its
//! bytes in ASCII lower case: `A.Example.com` becomes `\x03com\x07example\x01a`. A suffix of a
//! name, taken at a label boundary, is then a byte prefix of its key, and only then: a length
//! byte precedes every label, so `example.com` (`\x03com\x07example`) is a prefix of
//! `a.example.com`'s key but not of `badexample.com`'s (`\x03com\x0abadexample`). Lower-casing
//! both sides makes the match case-insensitive, as DNS names are (RFC 4343), which also covers
//! resolvers that randomise the case of their queries (0x20 encoding).

/// Bytes of key data in `CHAOS_DNS_NAMES` (the LPM trie's maximum). A name on the wire is at
/// most 255 bytes with its root label; its reversed key drops the root's zero byte.
pub const NAME_KEY_BYTES: usize = 256;
/// Longest name on the wire (RFC 1035 2.3.4), root label included.
pub const MAX_NAME_WIRE: usize = 255;
/// Longest label.
pub const MAX_LABEL: usize = 63;
/// Labels a name can have (one byte of length plus at least one byte each, within 255).
pub const MAX_LABELS: usize = 128;
/// Capacity of the name trie (all faults together).
pub const MAX_NAME_ENTRIES: u32 = 16_384;
/// Capacity of the query type table (all faults together).
pub const MAX_TYPE_ENTRIES: u32 = 1024;
/// Domain suffixes one fault may list.
pub const MAX_DOMAINS_PER_FAULT: usize = 1024;
/// Query types one fault may list.
pub const MAX_TYPES_PER_FAULT: usize = 64;

/// `FaultSlot::dns`: answer with rcode `SERVFAIL` (2).
pub const DNS_ACT_SERVFAIL: u32 = 2;
/// `FaultSlot::dns`: answer with rcode `NXDOMAIN` (3).
pub const DNS_ACT_NXDOMAIN: u32 = 3;
/// `FaultSlot::dns`: answer with rcode `REFUSED` (5).
pub const DNS_ACT_REFUSED: u32 = 5;
/// `FaultSlot::dns`: drop the answer, so that the client times out.
pub const DNS_ACT_DROP: u32 = 0x100;
/// `FaultSlot::dns`: the rcode bits (the low 4 bits of the header's flags).
pub const DNS_RCODE_MASK: u32 = 0xf;

/// Bytes of the DNS header.
pub const HEADER_LEN: usize = 12;

/// Why a domain cannot be a filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameError {
    /// An empty label (`a..b`, or a leading dot).
    EmptyLabel,
    /// A label over 63 bytes.
    LabelTooLong,
    /// The name is over 255 bytes on the wire.
    NameTooLong,
}

/// The reversed key of `name` (presentation form, a trailing dot allowed, `.` or empty = the
/// root, which every name has as a suffix): its bytes and their number. Lower-cases ASCII;
/// other bytes are kept as they are.
pub fn name_key(name: &str) -> Result<([u8; NAME_KEY_BYTES], usize), NameError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut key = [0u8; NAME_KEY_BYTES];
    if name.is_empty() {
        return Ok((key, 0));
    }
    // On the wire: one length byte per label, the labels, and the root's zero byte.
    let wire = name.len() + 2;
    if wire > MAX_NAME_WIRE {
        return Err(NameError::NameTooLong);
    }
    let mut n = 0;
    for label in name.split('.').rev() {
        if label.is_empty() {
            return Err(NameError::EmptyLabel);
        }
        if label.len() > MAX_LABEL {
            return Err(NameError::LabelTooLong);
        }
        key[n] = label.len() as u8;
        n += 1;
        for b in label.bytes() {
            key[n] = b.to_ascii_lowercase();
            n += 1;
        }
    }
    Ok((key, n))
}

/// The reversed key of a name in wire form (length-prefixed labels ending in the root's zero
/// byte, no compression: a question's name is never compressed): the user-space twin of what
/// the programs build, for tests and fuzzing. `None` where the programs pass the message
/// untouched (a label over 63 bytes, a compression pointer, no root label within 255 bytes).
#[must_use]
pub fn wire_name_key(wire: &[u8]) -> Option<([u8; NAME_KEY_BYTES], usize, usize)> {
    let mut starts = [0usize; MAX_LABELS];
    let mut labels = 0;
    let mut pos = 0;
    loop {
        let len = usize::from(*wire.get(pos)?);
        if len == 0 {
            break;
        }
        if len > MAX_LABEL || labels == MAX_LABELS {
            return None;
        }
        starts[labels] = pos;
        labels += 1;
        pos += 1 + len;
        if pos >= MAX_NAME_WIRE {
            return None;
        }
    }
    let wire_len = pos + 1;
    let mut key = [0u8; NAME_KEY_BYTES];
    let mut n = 0;
    for &s in starts[..labels].iter().rev() {
        let len = usize::from(wire[s]);
        key[n] = wire[s];
        for (i, b) in wire.get(s + 1..=s + len)?.iter().enumerate() {
            key[n + 1 + i] = b.to_ascii_lowercase();
        }
        n += 1 + len;
    }
    Some((key, n, wire_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Vec<u8> {
        let (k, n) = name_key(s).unwrap();
        k[..n].to_vec()
    }

    #[test]
    fn keys_are_reversed_length_prefixed_lower_case() {
        assert_eq!(key("A.Example.com"), b"\x03com\x07example\x01a");
        assert_eq!(key("example.com."), b"\x03com\x07example");
        assert!(key(".").is_empty() && key("").is_empty());
    }

    #[test]
    fn suffixes_are_label_aligned_prefixes() {
        let suffix = key("example.com");
        assert!(key("a.example.com").starts_with(&suffix));
        assert!(key("EXAMPLE.COM").starts_with(&suffix));
        assert!(!key("badexample.com").starts_with(&suffix));
        assert!(!key("example.com.evil").starts_with(&suffix));
    }

    #[test]
    fn bad_names() {
        assert_eq!(name_key("a..b"), Err(NameError::EmptyLabel));
        assert_eq!(name_key(".a"), Err(NameError::EmptyLabel));
        assert_eq!(name_key(&"x".repeat(64)), Err(NameError::LabelTooLong));
        let long = ["a".repeat(63).as_str(); 4].join(".");
        assert_eq!(long.len() + 2, 257);
        assert_eq!(name_key(&long), Err(NameError::NameTooLong));
        assert!(name_key(&long[2..]).is_ok());
    }

    #[test]
    fn wire_twin_agrees() {
        let wire = b"\x01A\x07ExAmple\x03com\x00\x00\x01\x00\x01";
        let (k, n, len) = wire_name_key(wire).unwrap();
        assert_eq!(&k[..n], key("a.example.com").as_slice());
        assert_eq!(len, 15);
        assert!(wire_name_key(b"\xc0\x0c").is_none(), "compression pointer");
        assert!(wire_name_key(b"\x03com").is_none(), "no root label");
    }
}
