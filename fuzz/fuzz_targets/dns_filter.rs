//! The DNS fault's filters as the CLI and the API take them; the first byte picks which:
//! - even: `--dns-type` (`faults::dns::DnsType`): a type that parses prints a form (mnemonic or
//!   `TYPEnnn`) that parses back to the same type, case-insensitively, also as a JSON string;
//! - odd: `--dns-domain` (comma-separated here, one fault's list): a list that validates gives
//!   every domain a name key of at most 254 bytes; its keys are sorted and deduplicated, empty
//!   only for no filter or the root; case does not change them; a suffix of a domain, taken at a
//!   label boundary, has a key that is a prefix of the domain's; the section round-trips as
//!   JSON.
#![no_main]

use chaos_agent::faults::dns::{DnsAnswer, DnsSpec, DnsType};
use chaos_common::dns::name_key;
use libfuzzer_sys::fuzz_target;

fn key(d: &str) -> Vec<u8> {
    let (k, n) = name_key(d).expect("a validated domain has a key");
    k[..n].to_vec()
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Some(s) = chaos_agent_fuzz::text(rest) else {
        return;
    };
    if which % 2 == 0 {
        let t = match s.parse::<DnsType>() {
            Ok(t) => t,
            Err(e) => return chaos_agent_fuzz::assert_one_line(&e.to_string()),
        };
        let shown = t.to_string();
        assert_eq!(shown.parse::<DnsType>().ok(), Some(t), "{s:?} -> {shown}");
        assert_eq!(shown.to_ascii_lowercase().parse::<DnsType>().ok(), Some(t));
        let json = serde_json::to_string(&t).expect("serialises");
        assert_eq!(
            serde_json::from_str::<DnsType>(&json).ok(),
            Some(t),
            "{json}"
        );
        return;
    }
    let spec = DnsSpec {
        answer: DnsAnswer::Servfail,
        domains: s.split(',').map(str::to_owned).collect(),
        types: Vec::new(),
        rate: None,
        port: None,
    };
    if let Err(e) = spec.validate() {
        return chaos_agent_fuzz::assert_one_line(&e.to_string());
    }
    let keys = spec.name_keys();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "keys sorted and unique"
    );
    for d in &spec.domains {
        let k = key(d);
        assert!(k.len() <= 254, "{d:?}: key of {} bytes", k.len());
        assert_eq!(
            key(&d.to_ascii_uppercase()),
            k,
            "{d:?}: case changes the key"
        );
        if d != "." && !spec.domains.iter().any(|x| x == ".") {
            assert!(keys.contains(&k), "{d:?} has no key among the fault's");
        }
        // Every label-aligned suffix of the domain is a prefix of its key.
        let bare = d.strip_suffix('.').unwrap_or(d);
        let mut rest = bare;
        while let Some((_, suffix)) = rest.split_once('.') {
            assert!(
                k.starts_with(&key(suffix)),
                "{suffix:?} is a suffix of {d:?}"
            );
            rest = suffix;
        }
    }
    chaos_agent_fuzz::assert_json_round_trip(&spec, "dns section");
});
