//! The API's request parsing: the body of `POST /v1/faults` (a fault spec) and of
//! `POST /v1/faults/{id}/extend`, through the server's own `parse_json`, and the `{id}` of the
//! paths through its `parse_id`. The first byte picks which; the rest is the body or the path
//! segment.
//!
//! Invariants: an empty or all-whitespace body is refused; a body is accepted only if serde_json
//! takes it, to the same value, and a JSON object serde_json takes is accepted; every refusal is a 400 `invalid_request` with a one-line
//! message (the CLI prints it as its `error:` line); a created
//! spec with no TTL gets the default TTL and is then checked like any spec; an id round-trips
//! through its display form.
#![no_main]

use std::time::Duration;

use bytes::Bytes;
use chaos_agent::api::ExtendRequest;
use chaos_agent::api::server::{parse_id, parse_json};
use chaos_agent::faults::FaultSpec;
use libfuzzer_sys::fuzz_target;

fn refused(e: &chaos_agent::api::ApiError) {
    assert_eq!((e.status, e.code), (400, "invalid_request"), "{e:?}");
    assert!(!e.message.is_empty());
    // The CLI prints the message as its one `error:` line.
    chaos_agent_fuzz::assert_one_line(&e.message);
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let body = Bytes::copy_from_slice(rest);
    let blank = rest.iter().all(u8::is_ascii_whitespace);
    match which % 3 {
        0 => match parse_json::<FaultSpec>(&body, "fault spec") {
            Ok(mut spec) => {
                assert!(!blank);
                assert_eq!(
                    serde_json::from_slice::<FaultSpec>(rest).ok().as_ref(),
                    Some(&spec)
                );
                // The engine's `prepare`: a spec without a TTL gets the configured default.
                if spec.ttl.is_zero() {
                    spec.ttl = Duration::from_mins(5);
                }
                chaos_agent_fuzz::spec::check(&spec);
            }
            Err(e) => {
                refused(&e);
                let object = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
                assert!(
                    blank || !object || serde_json::from_slice::<FaultSpec>(rest).is_err(),
                    "a JSON object serde_json takes is refused: {}",
                    e.message
                );
            }
        },
        1 => match parse_json::<ExtendRequest>(&body, "extend request") {
            Ok(req) => {
                assert!(!blank);
                chaos_agent_fuzz::assert_json_round_trip(&req, "extend request");
            }
            Err(e) => refused(&e),
        },
        _ => {
            let Ok(segment) = std::str::from_utf8(rest) else {
                return;
            };
            match parse_id(segment) {
                Ok(id) => {
                    let shown = id.to_string();
                    assert!(shown.len() == 10 && shown.starts_with("f-"), "{shown}");
                    assert_eq!(parse_id(&shown).ok(), Some(id));
                }
                Err(e) => refused(&e),
            }
        }
    }
});
