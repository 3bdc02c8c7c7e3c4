//! `--flap ON/OFF` and the spec's `flap` (`faults::flap::Flap`): a cycle that parses prints a
//! form that parses back to the same cycle (also as its JSON string); one that validates for a
//! TTL a spec can have (at most 7 days) has both phases of at least 10 ms and a period within the TTL, its phases over the TTL
//! never have zero or over-long remaining times, and its slot fields agree with it.
#![no_main]

use std::time::Duration;

use chaos_agent::faults::flap::{Flap, MIN_PHASE};
use chaos_agent::spec::MAX_TTL_CEILING;
use chaos_common::FaultSlot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(s) = chaos_agent_fuzz::text(data) else {
        return;
    };
    let f = match s.parse::<Flap>() {
        Ok(f) => f,
        Err(e) => return chaos_agent_fuzz::assert_one_line(&e.to_string()),
    };
    let shown = f.to_string();
    assert_eq!(shown.parse::<Flap>().ok(), Some(f), "{s:?} -> {shown}");
    let json = serde_json::to_string(&f).expect("serialises");
    assert_eq!(serde_json::from_str::<Flap>(&json).ok(), Some(f), "{json}");
    let _ = f.phase(Duration::MAX);
    // The TTLs a valid spec can have (`FaultSpec::validate` bounds the TTL before the cycle).
    let ttls = [
        Duration::from_secs(1),
        Duration::from_mins(5),
        MAX_TTL_CEILING,
        f.period(),
    ];
    for ttl in ttls.into_iter().filter(|t| *t <= MAX_TTL_CEILING) {
        match f.validate(ttl) {
            Ok(()) => {
                assert!(f.on >= MIN_PHASE && f.off >= MIN_PHASE && f.period() <= ttl);
                chaos_agent_fuzz::spec::check_phases(&f, ttl);
                let mut slot = FaultSlot::default();
                f.configure(&mut slot, 1);
                assert!(slot.flap_on_ns > 0 && slot.flap_on_ns < slot.flap_period_ns);
            }
            Err(e) => chaos_agent_fuzz::assert_one_line(&e.to_string()),
        }
    }
});
