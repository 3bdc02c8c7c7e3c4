//! The scalar CLI values, each through the parser clap calls for it; the first byte picks the
//! parser, the rest is the value:
//! - 0: `--ttl`, `--delay`, `--jitter`, `extend --by` (humantime): the display form parses back
//!   to the same duration (the journal and the API carry durations in that form);
//! - 1: `--max-ttl` (`cli::parse_max_ttl`): accepted exactly when humantime accepts it and it is
//!   in (0, 7 days];
//! - 2: `--dest` / `--src` (`cli::parse_cidr`): the display form parses back to the same
//!   prefix; a bare address is a host prefix;
//! - 3: `--dport` / `--sport` (`PortRange`): 1 <= lo <= hi, display and JSON round trips;
//! - 4: probabilities and fractions (`parse_probability_arg`, `parse_fraction_arg`,
//!   `parse_fraction`): in range and finite, and the three agree on the value;
//! - 5: fault ids (`show`, `stop`, `extend`): display round trip.
//!
//! Every refusal of the agent's own parsers is one line.
#![no_main]

use chaos_agent::cli::{parse_cidr, parse_max_ttl};
use chaos_agent::engine::FaultId;
use chaos_agent::spec::{
    MAX_TTL_CEILING, parse_fraction, parse_fraction_arg, parse_probability_arg,
};
use chaos_agent::target::PortRange;
use libfuzzer_sys::fuzz_target;

/// A refusal is one line (clap prints it after the value; the CLI's `error:` line).
fn one_line(e: &str) {
    chaos_agent_fuzz::assert_one_line(e);
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Some(s) = chaos_agent_fuzz::text(rest) else {
        return;
    };
    match which % 6 {
        0 => {
            if let Ok(d) = humantime::parse_duration(s) {
                let shown = humantime::format_duration(d).to_string();
                assert_eq!(
                    humantime::parse_duration(&shown).ok(),
                    Some(d),
                    "{s:?} -> {shown}"
                );
            }
        }
        1 => {
            let plain = humantime::parse_duration(s).ok();
            match parse_max_ttl(s) {
                Ok(d) => {
                    assert_eq!(plain, Some(d));
                    assert!(!d.is_zero() && d <= MAX_TTL_CEILING);
                }
                Err(e) => {
                    assert!(
                        plain.is_none_or(|d| d.is_zero() || d > MAX_TTL_CEILING),
                        "{e}"
                    );
                    one_line(&e);
                }
            }
        }
        2 => {
            let got = parse_cidr(s);
            if let Err(e) = &got {
                one_line(e);
            }
            if let Ok(net) = got {
                let shown = net.to_string();
                assert_eq!(parse_cidr(&shown).ok(), Some(net), "{s:?} -> {shown}");
                if s.parse::<std::net::IpAddr>().is_ok() {
                    assert_eq!(net.prefix_len(), net.max_prefix_len());
                }
            }
        }
        3 => {
            let got = s.parse::<PortRange>();
            if let Err(e) = &got {
                one_line(&e.to_string());
            }
            if let Ok(r) = got {
                assert!(r.lo >= 1 && r.lo <= r.hi, "{r:?}");
                assert_eq!(r.to_string().parse::<PortRange>().ok(), Some(r));
                let json = serde_json::to_string(&r).expect("serialises");
                assert_eq!(serde_json::from_str::<PortRange>(&json).ok(), Some(r));
            }
        }
        4 => {
            let v = parse_fraction(s);
            if let Some(v) = v {
                assert!(v.is_finite());
            }
            let frac = parse_fraction_arg(s);
            let prob = parse_probability_arg(s);
            for e in [&frac, &prob].into_iter().filter_map(|r| r.as_ref().err()) {
                one_line(e);
            }
            if let Ok(p) = prob {
                assert!(p > 0.0 && p <= 1.0);
                assert_eq!(frac, Ok(p));
            }
            if let Ok(f) = frac {
                assert!((0.0..=1.0).contains(&f));
                assert_eq!(v, Some(f));
                assert_eq!(prob.is_ok(), f > 0.0);
            } else {
                assert!(v.is_none_or(|v| !(0.0..=1.0).contains(&v)));
            }
        }
        _ => {
            if let Ok(id) = s.parse::<FaultId>() {
                let shown = id.to_string();
                assert_eq!(shown.parse::<FaultId>().ok(), Some(id));
                assert_eq!(shown.len(), 10);
            }
        }
    }
});
