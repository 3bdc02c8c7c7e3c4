//! The invariants of a fault spec, however it arrived (API body, CLI flags, journal file).

use std::time::Duration;

use chaos_agent::faults::FaultSpec;
use chaos_agent::faults::flap::MIN_PHASE;
use chaos_agent::faults::shape::netem;
use chaos_agent::kernel::bpf::table::Table;
use chaos_agent::kernel::tc::HtbClassOptions;
use chaos_agent::spec::{Limits, MAX_LABEL_BYTES, MAX_TTL_CEILING, SpecError};
use chaos_agent::target::{MAX_PORT_RANGES, PortRange};

/// The limits the daemon starts with (`max_ttl` 1 h).
#[must_use]
pub fn default_limits() -> Limits {
    Limits::default()
}

/// The loosest limits a configuration can ask for (anything above is cut to the ceiling).
#[must_use]
pub fn loosest_limits() -> Limits {
    Limits {
        max_ttl: Duration::MAX,
    }
}

/// Validates `spec` under the default and the loosest limits and checks what validation
/// promises. Returns whether it is valid under the default limits.
///
/// - the limits only bound the TTL: valid under the loosest limits means valid under the
///   default ones, or refused there for its TTL alone;
/// - a valid spec keeps every bound the engine and the kernel rely on (see [`check_valid`]).
pub fn check(spec: &FaultSpec) -> bool {
    // Summaries are printed for refused specs too (`--dry-run`, logs).
    let _ = spec.summary();
    let _ = spec.kind();
    let loose = spec.validate(&loosest_limits());
    let default = spec.validate(&default_limits());
    for e in [&loose, &default]
        .into_iter()
        .filter_map(|r| r.as_ref().err())
    {
        crate::assert_one_line(&e.to_string());
    }
    match (&loose, &default) {
        (Ok(()), Ok(())) | (Err(_), Err(_)) => {}
        (Ok(()), Err(SpecError::TtlTooLong { .. })) => {
            assert!(spec.ttl > default_limits().max_ttl);
        }
        (Ok(()), Err(e)) => panic!("valid under the loosest limits, refused under 1h for {e:?}"),
        (Err(e), Ok(())) => panic!("valid under 1h, refused under the loosest limits: {e:?}"),
    }
    if loose.is_ok() {
        check_valid(spec, &loosest_limits());
    }
    if default.is_ok() {
        check_valid(spec, &default_limits());
    }
    default.is_ok()
}

/// What a spec that passed `validate(limits)` must satisfy, and what the engine then does with
/// it without checking again (the conversions into kernel configuration) must not refuse.
pub fn check_valid(spec: &FaultSpec, limits: &Limits) {
    assert!(!spec.ttl.is_zero(), "ttl 0 validated");
    assert!(
        spec.ttl <= limits.effective_max_ttl() && spec.ttl <= MAX_TTL_CEILING,
        "ttl {:?} above the maximum",
        spec.ttl
    );
    // The kernel deadline is `now + ttl` in u64 nanoseconds.
    assert!(u64::try_from(spec.ttl.as_nanos()).is_ok());
    if let Some(label) = &spec.label {
        assert!(label.len() <= MAX_LABEL_BYTES && !label.chars().any(char::is_control));
    }
    let t = &spec.target;
    if let Some(name) = &t.iface {
        assert!(!name.is_empty() && name.len() <= 15 && !name.contains(['/', ' ', '\0']));
    }
    assert!(t.sports.len() <= MAX_PORT_RANGES && t.dports.len() <= MAX_PORT_RANGES);
    for r in t.sports.iter().chain(&t.dports) {
        assert!(r.lo >= 1 && r.lo <= r.hi, "port range {r:?}");
    }
    let prob =
        |v: f64, zero: bool| v.is_finite() && v <= 1.0 && if zero { v >= 0.0 } else { v > 0.0 };
    let mut effect = false;
    if let Some(loss) = &spec.loss {
        effect = true;
        match &loss.model {
            None => assert!(prob(loss.probability, false)),
            Some(ge) => {
                assert!(prob(ge.p, false) && prob(ge.r, false));
                assert!(prob(ge.loss_bad, true) && prob(ge.loss_good, true));
                let m = ge.mean_loss();
                assert!((0.0..=1.0 + 1e-12).contains(&m), "mean loss {m}");
            }
        }
        let _ = loss.summary();
    }
    if let Some(sh) = &spec.shape {
        effect |= !sh.is_empty();
        let minute = Duration::from_mins(1);
        assert!(sh.delay.is_none_or(|d| d <= minute) && sh.jitter.is_none_or(|d| d <= minute));
        for v in [sh.correlation, sh.corrupt, sh.duplicate, sh.reorder]
            .into_iter()
            .flatten()
        {
            assert!(prob(v, true), "shaping probability {v}");
        }
        // What the engine builds from a valid spec: none of it may refuse the spec now.
        let opts = netem::netem_options(sh);
        if let Err(e) = opts.encode() {
            panic!("a valid shape spec's netem options do not encode: {e}");
        }
        assert!(
            (1000..=1_000_000).contains(&opts.limit),
            "netem limit {}",
            opts.limit
        );
        let _ = netem::fq_options(sh);
        let _ = netem::edt_delay(sh);
        for (netem_ok, fq) in [(true, true), (true, false), (false, true), (false, false)] {
            let _ = netem::choose_backend(sh, t.direction, netem_ok, fq);
        }
        if let Some(rate) = sh.rate {
            assert!(rate.bytes_per_sec() >= 1);
            if let Err(e) = HtbClassOptions::rate(rate.bytes_per_sec()).encode() {
                panic!("a valid rate {rate} does not encode as an HTB class: {e}");
            }
        }
        let _ = sh.summary();
    }
    if let Some(dns) = &spec.dns {
        assert!(!effect, "a DNS fault validated with loss or shaping");
        effect = true;
        if let Some(r) = dns.rate {
            assert!(prob(r, false));
        }
        assert_ne!(dns.port(), 0);
        let keys = dns.name_keys();
        assert!(
            keys.windows(2).all(|w| w[0] < w[1]),
            "name keys sorted, deduplicated"
        );
        assert!(keys.iter().all(|k| !k.is_empty() && k.len() < 255));
        let any_root = dns.domains.iter().any(|d| d == "." || d.is_empty());
        assert_eq!(keys.is_empty(), dns.domains.is_empty() || any_root);
        let codes = dns.type_codes();
        assert!(codes.windows(2).all(|w| w[0] < w[1]));
        let _ = dns.summary();
    }
    assert!(effect, "a spec without an effect validated");
    if let Some(flap) = &spec.flap {
        assert!(flap.on >= MIN_PHASE && flap.off >= MIN_PHASE && flap.period() <= spec.ttl);
        check_phases(flap, spec.ttl);
    }
    // The slot and the fault table's rules: a valid spec fits an empty table.
    let ttl_ns = spec.ttl.as_nanos() as u64;
    let slot = chaos_agent::faults::packet::fault_slot(spec, ttl_ns, 0);
    assert_eq!(slot.expires_at_ns, ttl_ns);
    let protected = [PortRange { lo: 22, hi: 22 }];
    let rules = chaos_agent::faults::packet::rules(spec, &protected);
    if let Err(e) = Table::default().check(&rules) {
        panic!("a valid spec does not fit an empty fault table: {e}");
    }
    let _ = chaos_agent::faults::conflict(spec, spec);
    assert!(!spec.summary().is_empty());
    check_round_trip(spec);
}

/// The phases of a duty cycle over the whole TTL: never a zero or over-long remaining time.
pub fn check_phases(flap: &chaos_agent::faults::flap::Flap, ttl: Duration) {
    let steps = 7u32;
    for i in 0..=steps {
        let at = ttl.mul_f64(f64::from(i) / f64::from(steps));
        let p = flap.phase(at);
        assert!(p.active_phases >= 1);
        assert!(!p.remaining.is_zero(), "zero remaining at {at:?} of {flap}");
        let phase_len = if p.active { flap.on } else { flap.off };
        assert!(p.remaining <= phase_len, "{p:?} at {at:?} of {flap}");
    }
}

/// A spec serialises to JSON (compact, as the API and client send it, and pretty, as the journal
/// stores it) that parses back to the same spec.
pub fn check_round_trip(spec: &FaultSpec) {
    crate::assert_json_round_trip(spec, "fault spec");
}
