//! What the fuzz targets share: the invariants every valid fault spec keeps ([`spec`]), the
//! invariants of a dumped qdisc tree ([`tree`]), the feeding of fuzzed netlink datagrams to the
//! agent's dump parser ([`netlink`]) and a user-space twin of the kernel's DNS response check
//! ([`dns_twin`]). See README.md for the targets and how to run them.

pub mod dns_twin;
pub mod netlink;
pub mod spec;
pub mod tree;

/// The input as UTF-8, as the agent gets text: `read_to_string` (config, prefix files) and clap
/// (CLI values) refuse anything else before our parsers see it.
#[must_use]
pub fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Asserts that an error message is one line: the CLI prints it as its one `error:` line, the
/// daemon logs it in one line, and a value quoted in it must not split either.
pub fn assert_one_line(msg: &str) {
    assert!(!msg.is_empty(), "an empty message");
    assert!(!msg.contains(['\n', '\r']), "not one line: {msg:?}");
}

/// Asserts that `value` serialises to JSON, compact (the API, the client) and pretty (the
/// journal), that parses back to a value equal to it. Exactly equal, floats included: the workspace builds serde_json with `float_roundtrip`
/// (without it, `0.09090909090909091` came back as `0.09090909090909093`, found by fuzzing).
pub fn assert_json_round_trip<T>(value: &T, what: &str)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    for pretty in [false, true] {
        let json = if pretty {
            serde_json::to_string_pretty(value)
        } else {
            serde_json::to_string(value)
        }
        .unwrap_or_else(|e| panic!("{what} does not serialise: {e}"));
        let back: T = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("serialised {what} does not parse: {e}\n{json}"));
        assert!(
            &back == value,
            "{what} changed on a JSON round trip: {json}\n{back:?}\n{value:?}"
        );
    }
}
