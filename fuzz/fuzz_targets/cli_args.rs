//! The command line as clap parses it (`chaos_agent::cli::Cli`), with every value parser in
//! its real wiring: `--ttl`, `--max-ttl`, `--dest`/`--src`, `--dport`/`--sport`, `--loss`,
//! `--loss-model`, `--delay`, `--rate`, `--flap`, `--dns-*`, fault ids, `extend --by`. The input
//! is the argument list, NUL-separated, after `chaos-agent`, through what `cli::parse_args` does
//! (`join_negative_values`, then clap).
//!
//! Invariants: a usage error is one `error:` line (`cli::usage_error_line`, what the CLI
//! prints); a parsed `inject` builds the spec `cli::inject` builds (the same fields; prefix
//! files are not read here) and that spec keeps the invariants of any spec; `--ttl` is not
//! zero, `--max-ttl` and `extend --by` are in (0, 7 days]; ids and `--by` round-trip through
//! their display forms.
#![no_main]

use std::ffi::OsString;

use chaos_agent::cli::{Cli, Command, join_negative_values, usage_error_line};
use chaos_agent::faults::FaultSpec;
use chaos_agent::spec::{Limits, MAX_TTL_CEILING};
use chaos_agent::target::{Direction, Target};
use clap::Parser as _;
use libfuzzer_sys::fuzz_target;

/// `cli::inject::spec_from_args` without the prefix files (reading fuzzed paths would read
/// anything, `/dev/zero` included).
fn spec_from_args(a: &chaos_agent::cli::InjectArgs) -> Option<FaultSpec> {
    let loss = a.loss.to_spec();
    let shape = a.shape.to_spec();
    let dns = a.dns.to_spec().ok()?;
    let refuse = a.refuse.to_spec();
    let reset = a.reset.to_spec();
    let limit = a.limit.to_spec();
    let stress = a.stress.to_spec();
    if loss.is_none()
        && shape.is_none()
        && dns.is_none()
        && refuse.is_none()
        && reset.is_none()
        && limit.is_none()
        && stress.is_none()
    {
        return None;
    }
    let direction = a.direction.unwrap_or(if dns.is_some() {
        Direction::Ingress
    } else {
        Direction::Egress
    });
    Some(FaultSpec {
        ttl: a.ttl.unwrap_or_default(),
        target: Target {
            iface: a.iface.clone(),
            direction,
            protocols: a.protocols.clone(),
            src: a.src.clone(),
            dst: a.dst.clone(),
            sports: a.sports.clone(),
            dports: a.dports.clone(),
            include_protected: a.include_protected,
            cgroup: a.cgroup.clone(),
            pid: a.pid,
            unit: None,
            container: None,
            ..Default::default()
        },
        loss,
        shape,
        dns,
        refuse,
        reset,
        limit,
        stress,
        flap: a.flap,
        force: a.force,
        seed: a.seed,
        label: a.label.clone(),
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `cli::parse_args`: negative values joined to their option, then clap; a usage error is
    // printed as one line.
    let args: Vec<OsString> = std::iter::once("chaos-agent")
        .chain(text.split('\0'))
        .map(OsString::from)
        .collect();
    let args = join_negative_values(args);
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                return;
            }
            let line = usage_error_line(&e, &args);
            assert!(line.starts_with("error: "), "{line:?}");
            chaos_agent_fuzz::assert_one_line(&line);
            return;
        }
    };
    match &cli.command {
        Command::Inject(a) => {
            assert!(!a.max_ttl.is_zero() && a.max_ttl <= MAX_TTL_CEILING);
            assert!(a.ttl.is_none_or(|t| !t.is_zero()), "--ttl 0 parsed");
            let Some(spec) = spec_from_args(a) else {
                return;
            };
            chaos_agent_fuzz::spec::check(&spec);
            let limits = Limits { max_ttl: a.max_ttl };
            if spec.validate(&limits).is_ok() {
                chaos_agent_fuzz::spec::check_valid(&spec, &limits);
            }
        }
        Command::Extend(a) => {
            assert!(
                !a.by.is_zero() && a.by <= MAX_TTL_CEILING,
                "--by {:?}",
                a.by
            );
            let shown = humantime::format_duration(a.by).to_string();
            assert_eq!(
                humantime::parse_duration(&shown).ok(),
                Some(a.by),
                "{shown}"
            );
            assert_eq!(a.id.to_string().parse().ok(), Some(a.id));
        }
        Command::Show(a) => assert_eq!(a.id.to_string().parse().ok(), Some(a.id)),
        Command::Stop(a) => {
            assert!(a.all != a.id.is_some(), "stop takes an id or --all");
        }
        _ => {}
    }
});
