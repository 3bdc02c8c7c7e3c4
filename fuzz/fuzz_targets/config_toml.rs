//! The daemon's TOML configuration (`config::Config::parse`, what `run` and `config check`
//! load): a configuration that parses keeps the bounds validation promises (TTLs in
//! (0, 7 days] with the default within the maximum, 1 to 256 faults, an absolute socket path, a
//! token file for a TCP listener), protects its own ports, and serialises back to TOML that
//! parses to the same configuration.
#![no_main]

use std::path::Path;

use chaos_agent::config::Config;
use chaos_agent::spec::MAX_TTL_CEILING;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(text) = chaos_agent_fuzz::text(data) else {
        return;
    };
    let cfg = match Config::parse(text, Path::new("config.toml")) {
        Ok(cfg) => cfg,
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.starts_with("config.toml"), "{shown}");
            assert!(!shown.contains('\n'), "not one line: {shown}");
            return;
        }
    };
    let l = &cfg.limits;
    assert!(!l.max_ttl.is_zero() && l.max_ttl <= MAX_TTL_CEILING);
    assert!(!l.default_ttl.is_zero() && l.default_ttl <= l.max_ttl);
    assert!((1..=chaos_common::MAX_FAULTS as usize).contains(&l.max_faults));
    assert!(cfg.api.socket.is_absolute());
    assert!(cfg.api.tcp_listen.is_none() || cfg.api.tcp_token_file.is_some());
    let protected = cfg.protected_ports();
    assert!(protected.len() <= chaos_agent::target::MAX_PORT_RANGES);
    for r in &l.protected_ports {
        assert!(protected.contains(r));
    }
    let covered = |port: u16| port == 0 || protected.iter().any(|r| r.lo <= port && port <= r.hi);
    if cfg.metrics.enabled {
        assert!(
            covered(cfg.metrics.listen.port()),
            "metrics port not protected"
        );
    }
    if let Some(a) = cfg.api.tcp_listen {
        assert!(covered(a.port()), "API port not protected");
    }
    let engine = cfg.engine_config();
    assert_eq!(engine.limits.max_ttl, l.max_ttl);
    let shown = toml::to_string(&cfg).expect("a configuration serialises");
    match Config::parse(&shown, Path::new("again.toml")) {
        Ok(back) => assert_eq!(back, cfg, "{shown}"),
        Err(e) => panic!("serialised configuration does not parse: {e}\n{shown}"),
    }
});
