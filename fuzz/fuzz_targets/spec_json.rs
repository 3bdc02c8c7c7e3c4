//! A fault spec as JSON (the API's body, the client's request, the journal's `spec`): whatever
//! parses keeps the invariants of `chaos_agent_fuzz::spec::check`, and a valid spec keeps those
//! of `check_valid` (TTL within the maximum, probabilities in range, its kernel configuration
//! encodes, it fits an empty fault table, it serialises back to JSON that parses to the same
//! spec).
#![no_main]

use chaos_agent::faults::FaultSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<FaultSpec>(data) else {
        return;
    };
    chaos_agent_fuzz::spec::check(&spec);
});
