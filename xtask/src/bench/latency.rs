//! How fast a fault acts: inject and stop through the daemon's API, its CLI and `nft`, dated by
//! the probe stream; and the cold start of a foreground inject.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::agent::{Daemon, TTL, cli, injected_id, loss_spec};
use super::net::PROBE_PORT;
use super::nft::NftTable;
use super::probe::Probe;
use super::report::{ColdStart, LatencyRow, Results};
use super::{HOLD, PROBE_INTERVAL, attempt};
use crate::demo::{DemoNet, IF_A, sleep_checked, wait_checked};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Injects and stops `n` times; each inject drops every probe packet (p = 1), so the probe's
/// gap dates the first drop and the first pass. Returns the row, or fails the measurement.
fn run_method<H>(
    probe: &Probe,
    key: &'static str,
    label: &str,
    n: u32,
    mut inject: impl FnMut() -> anyhow::Result<(Instant, Instant, H)>,
    mut stop: impl FnMut(H) -> anyhow::Result<(Instant, Instant)>,
) -> anyhow::Result<LatencyRow> {
    let mut row = LatencyRow {
        key,
        label: label.to_owned(),
        ..LatencyRow::default()
    };
    for _ in 0..n {
        probe.wait_flowing(Duration::from_secs(2))?;
        let (c0, c1, h) = inject()?;
        sleep_checked(HOLD)?;
        let (s0, s1) = stop(h)?;
        let gap = probe.wait_gap(probe.ns(c0), probe.ns(s1), Duration::from_secs(5))?;
        row.inject_rtt.push(ms(c1 - c0));
        row.stop_rtt.push(ms(s1 - s0));
        let (call, stop_call) = (probe.ns(c0), probe.ns(s0));
        match gap {
            // A gap that closed before the stop was not this fault's (natural loss).
            Some(g) if probe.sent_at(g.first_after) >= stop_call => {
                row.inject_effect
                    .push((probe.sent_at(g.first_lost) - call) as f64 / 1e6);
                row.stop_effect
                    .push((probe.sent_at(g.first_after) - stop_call) as f64 / 1e6);
            }
            _ => row.missed += 1,
        }
        // Let the path settle so that the next inject starts from a flowing stream.
        sleep_checked(Duration::from_millis(10))?;
    }
    Ok(row)
}

pub(super) fn latency(r: &mut Results, d: &Daemon, agent: &Path, n: u32) -> anyhow::Result<()> {
    // Bounded like every thread here: four methods at well under 200 ms an iteration.
    let max = Duration::from_mins(1) + Duration::from_millis(800) * n;
    let Some(probe) = attempt(r, "start the probe stream", || {
        Probe::start(PROBE_INTERVAL, max)
    })?
    else {
        return Ok(());
    };
    let port = PROBE_PORT.to_string();
    let spec = loss_spec(1.0, std::slice::from_ref(&port), &[], "30s");
    let api_inject = || -> anyhow::Result<(Instant, Instant, String)> {
        let t0 = Instant::now();
        let id = d.api.inject(&spec)?;
        Ok((t0, Instant::now(), id))
    };
    let api_stop = |id: String| -> anyhow::Result<(Instant, Instant)> {
        let t0 = Instant::now();
        d.api.stop(&id)?;
        Ok((t0, Instant::now()))
    };

    // The first fault on the hook: every inject attaches the program, every stop detaches it.
    let label = "API, first fault on the hook (attach)";
    if let Some(row) = attempt(r, &format!("latency: {label}"), || {
        run_method(&probe, "api_attach", label, n, api_inject, api_stop)
    })? {
        r.latency.push(row);
    }

    // A resident non-matching fault keeps the program attached: inject and stop are map writes.
    let resident = attempt(r, "inject the resident non-matching fault", || {
        d.api
            .inject(&loss_spec(0.001, &["40999".to_owned()], &[], TTL))
    })?;
    if let Some(resident) = resident {
        let label = "API, hook already attached";
        if let Some(row) = attempt(r, &format!("latency: {label}"), || {
            run_method(&probe, "api_attached", label, n, api_inject, api_stop)
        })? {
            r.latency.push(row);
        }
        attempt(r, "stop the resident fault", || d.api.stop(&resident))?;
    }

    let label = "CLI process, first fault (attach)";
    let sock = d.socket();
    if let Some(row) = attempt(r, &format!("latency: {label}"), || {
        run_method(
            &probe,
            "cli_attach",
            label,
            n,
            || {
                let t = cli(
                    agent,
                    sock,
                    &[
                        "inject", "--loss", "1", "--ttl", "30s", "--iface", IF_A, "--proto", "udp",
                        "--dport", &port,
                    ],
                )?;
                Ok((t.start, t.end, injected_id(&t.stdout())?))
            },
            |id| {
                let t = cli(agent, sock, &["stop", &id])?;
                Ok((t.start, t.end))
            },
        )
    })? {
        r.latency.push(row);
    }

    let label = "nft add rule / delete rule (process)";
    if let Some(row) = attempt(r, &format!("latency: {label}"), || {
        let table = NftTable::create()?;
        let rule = format!("udp dport {PROBE_PORT} drop");
        run_method(
            &probe,
            "nft",
            label,
            n,
            || {
                let (handle, t) = table.add_rule(&rule)?;
                Ok((t.start, t.end, handle))
            },
            |handle| {
                let t = table.delete_rule(handle)?;
                Ok((t.start, t.end))
            },
        )
    })? {
        r.latency.push(row);
    }
    attempt(r, "stop the probe stream", || probe.finish())?;
    Ok(())
}

/// Inject and stop through the API of a daemon that keeps the hook attached with no fault
/// (`datapath.keep_attached`): what the first fault on an interface costs when the attach's RCU
/// grace period is paid once, at start.
pub(super) fn kept(r: &mut Results, d: &Daemon, n: u32) -> anyhow::Result<()> {
    let max = Duration::from_secs(30) + Duration::from_millis(800) * n;
    let Some(probe) = attempt(r, "start the probe stream", || {
        Probe::start(PROBE_INTERVAL, max)
    })?
    else {
        return Ok(());
    };
    let port = PROBE_PORT.to_string();
    let spec = loss_spec(1.0, std::slice::from_ref(&port), &[], "30s");
    let label = "API, interface kept attached (keep_attached)";
    if let Some(row) = attempt(r, &format!("latency: {label}"), || {
        run_method(
            &probe,
            "api_kept",
            label,
            n,
            || {
                let t0 = Instant::now();
                let id = d.api.inject(&spec)?;
                Ok((t0, Instant::now(), id))
            },
            |id| {
                let t0 = Instant::now();
                d.api.stop(&id)?;
                Ok((t0, Instant::now()))
            },
        )
    })? {
        r.latency.push(row);
    }
    attempt(r, "stop the probe stream", || probe.finish())?;
    Ok(())
}

/// `chaos-agent inject --foreground --loss 1.0 --ttl 3s` with no daemon: the time from the spawn
/// to the first dropped probe packet (load, verify, attach) and to the last (the kernel-side
/// deadline).
pub(super) fn cold_start(net: &DemoNet, agent: &Path, work: &Path) -> anyhow::Result<ColdStart> {
    let probe = Probe::start(PROBE_INTERVAL, Duration::from_mins(1))?;
    probe.wait_flowing(Duration::from_secs(2))?;
    let mut c = net.a_command(agent);
    c.arg("--state-dir")
        .arg(work.join("foreground-state"))
        // No agent listens there: the CLI must run the fault itself.
        .arg("--socket")
        .arg(work.join("no-agent.sock"))
        .args([
            "inject",
            "--foreground",
            "--loss",
            "1.0",
            "--ttl",
            "3s",
            "--iface",
            IF_A,
            "--proto",
            "udp",
            "--dport",
            &PROBE_PORT.to_string(),
        ])
        .stdout(std::process::Stdio::null());
    let t_spawn = Instant::now();
    let status = wait_checked(c.spawn().context("spawn chaos-agent inject")?)?;
    if !status.success() {
        bail!("chaos-agent inject --foreground failed ({status})");
    }
    let spawn = probe.ns(t_spawn);
    let gap = probe
        .wait_gap(spawn, probe.ns(Instant::now()), Duration::from_secs(5))?
        .context("no probe packet was dropped after the inject")?;
    let after = |seq: u64| (probe.sent_at(seq) - spawn) as f64 / 1e6;
    let cold = ColdStart {
        first_drop_ms: after(gap.first_lost),
        last_drop_ms: after(gap.first_after - 1),
        dropped: gap.first_after - gap.first_lost,
    };
    probe.finish()?;
    Ok(cold)
}
