//! `--rate` and the spec's `shape.rate` (`faults::shape::Rate`): a rate that parses is within
//! [8 bit/s, 4 Tbit/s]; its display form parses back to the same rate, and so does its JSON
//! string; units are case-insensitive; and it encodes as the HTB class the fault builds.
#![no_main]

use chaos_agent::faults::shape::Rate;
use chaos_agent::kernel::tc::HtbClassOptions;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(s) = chaos_agent_fuzz::text(data) else {
        return;
    };
    let r = match s.parse::<Rate>() {
        Ok(r) => r,
        Err(e) => return chaos_agent_fuzz::assert_one_line(&e.to_string()),
    };
    assert!(
        (8..=4_000_000_000_000).contains(&r.bits_per_sec),
        "{s:?} -> {r:?}"
    );
    let shown = r.to_string();
    assert_eq!(shown.parse::<Rate>().ok(), Some(r), "{s:?} -> {shown}");
    assert_eq!(
        s.to_ascii_uppercase().parse::<Rate>().ok(),
        Some(r),
        "{s:?} in capitals"
    );
    let json = serde_json::to_string(&r).expect("serialises");
    assert_eq!(serde_json::from_str::<Rate>(&json).ok(), Some(r), "{json}");
    if let Err(e) = HtbClassOptions::rate(r.bytes_per_sec()).encode() {
        panic!("rate {r} does not encode: {e}");
    }
});
