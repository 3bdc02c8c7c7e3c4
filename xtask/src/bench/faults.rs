//! The measurements that need faults in the daemon: the rate and the program's cost with
//! non-matching faults, with one matching fault, with one fault of many prefixes; and nft's rate
//! for the same drop.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::Value;

use super::agent::{Daemon, TTL, cli, injected_id, loss_spec};
use super::net::FLOOD_PORT;
use super::nft::NftTable;
use super::report::{CostRow, RateRow, Results};
use super::{COST_WARMUP, COST_WINDOW, UNUSED_PORT_BASE, attempt, rate, rate_row, rss, stats};
use crate::demo::IF_A;

/// What a fault's counters must show once it is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    NoMatch,
    Drops,
}

/// The egress (matched, dropped) counters of a revert report.
fn egress_counters(report: &Value) -> (u64, u64) {
    let e = &report["counters"]["egress"];
    (
        e["matched"].as_u64().unwrap_or_default(),
        e["dropped"].as_u64().unwrap_or_default(),
    )
}

/// Measures the program's cost with the faults in place, then stops `id` (if given) and checks
/// its counters against `expect`.
fn cost_row(
    r: &mut Results,
    d: &Daemon,
    key: &str,
    label: &str,
    stop: Option<(&str, Expect)>,
) -> anyhow::Result<()> {
    let cost = attempt(r, &format!("cost: {label}"), || {
        stats::egress_cost(d.pid, COST_WARMUP, COST_WINDOW)
    })?;
    let mut counters = None;
    if let Some((id, expect)) = stop {
        counters = attempt(r, &format!("stop: {label}"), || {
            let (matched, dropped) = egress_counters(&d.api.stop(id)?);
            match expect {
                Expect::NoMatch if matched > 0 => {
                    bail!("the flow matched the fault {matched} times")
                }
                Expect::Drops if dropped == 0 => bail!("the fault dropped nothing"),
                _ => Ok((matched, dropped)),
            }
        })?;
    }
    if let Some(cost) = cost {
        r.costs.push(CostRow {
            key: key.to_owned(),
            label: label.to_owned(),
            cost,
            matched: counters.map(|c| c.0),
            dropped: counters.map(|c| c.1),
        });
    }
    Ok(())
}

/// 1, 16, 64, 256 faults on A's egress for UDP to ports the flow does not use, added
/// incrementally: rate and cost at each count.
pub(super) fn nonmatching(r: &mut Results, d: &Daemon, window: Duration) -> anyhow::Result<()> {
    let mut ids: Vec<String> = Vec::new();
    for k in [1_usize, 16, 64, 256] {
        let plural = if k == 1 { "" } else { "s" };
        let what = format!("inject up to {k} non-matching fault{plural}");
        let before = ids.len();
        let added = attempt(r, &what, || {
            let t0 = Instant::now();
            while ids.len() < k {
                let port = UNUSED_PORT_BASE + ids.len() as u16;
                ids.push(
                    d.api
                        .inject(&loss_spec(0.001, &[port.to_string()], &[], TTL))?,
                );
            }
            Ok(t0.elapsed())
        })?;
        let Some(took) = added else {
            break;
        };
        r.notes.push(format!(
            "API inject of faults {}..{k} (udp dport filter) with {before} already in: {:.2} ms each",
            before + 1,
            took.as_secs_f64() * 1e3 / (k - before) as f64
        ));
        let (key, label) = (
            format!("nonmatch_{k}"),
            format!("{k} non-matching fault{plural} (udp dport unused)"),
        );
        rate_row(r, &key, &label, window)?;
        if k == 64 {
            rss(r, d, "faults_64", "daemon, 64 faults")?;
        }
        if k == 256 {
            rss(r, d, "faults_256", "daemon, 256 faults")?;
        }
        cost_row(r, d, &key, &label, None)?;
    }
    if let Some(matched) = attempt(r, "stop the non-matching faults", || {
        let reports = d.api.stop_all()?;
        Ok(reports
            .iter()
            .map(|rep| egress_counters(rep).0)
            .sum::<u64>())
    })? && matched > 0
    {
        r.errors.push((
            "non-matching faults".to_owned(),
            format!("they matched {matched} packets of the flow"),
        ));
    }
    Ok(())
}

/// One fault that matches the flood: p = 0.001 (rate and cost, mostly passed) and p = 1 (cost of
/// matched and dropped).
pub(super) fn matching(r: &mut Results, d: &Daemon, window: Duration) -> anyhow::Result<()> {
    let port = [FLOOD_PORT.to_string()];
    for (p, key, label) in [
        (0.001, "match_p0.001", "1 matching fault, p = 0.001"),
        (
            1.0,
            "match_p1",
            "1 matching fault, p = 1 (every packet dropped)",
        ),
    ] {
        let Some(id) = attempt(r, &format!("inject: {label}"), || {
            d.api.inject(&loss_spec(p, &port, &[], TTL))
        })?
        else {
            continue;
        };
        if p < 1.0 {
            rate_row(r, key, label, window)?;
        }
        cost_row(r, d, key, label, Some((&id, Expect::Drops)))?;
    }
    Ok(())
}

/// The nft equivalent of one matching fault at p = 0.001, on A's output hook. Unlike a tc
/// program, the chain runs for every packet A sends: the reference path's packets (another
/// port) are evaluated by the rule too, which is part of what nft costs.
pub(super) fn nft_rate(r: &mut Results, window: Duration) -> anyhow::Result<()> {
    let rule = format!("udp dport {FLOOD_PORT} numgen random mod 1000 == 0 drop");
    let label = format!("nft: {rule}");
    if let Some(rate) = attempt(r, &format!("rate: {label}"), || {
        let table = NftTable::create()?;
        table.add_rule(&rule)?;
        let rate = rate(window);
        drop(table);
        rate
    })? {
        r.rates.push(RateRow {
            key: "nft_p0.001".to_owned(),
            label,
            rate,
        });
    }
    Ok(())
}

/// `n` distinct IPv4 prefixes (/24, /28, /32) spread over 10.0.0.0/8 outside 10.199.0.0/16 (the
/// bench's network), from a fixed seed: the trie gets the depth of a real block list and the
/// flow's destination walks it. With `inside`, the last is 10.199.0.0/24, which holds B.
fn prefix_list(n: usize, inside: bool) -> anyhow::Result<String> {
    let want = if inside { n - 1 } else { n };
    let mut seen = std::collections::HashSet::new();
    let mut out = String::new();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..want * 100 + 100 {
        if seen.len() == want {
            break;
        }
        // xorshift64: deterministic, so every run benches the same trie.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let addr = 0x0A00_0000 | (x as u32 & 0x00FF_FFFF);
        if (addr >> 16) & 0xFF == 199 {
            continue;
        }
        let len = [24_u32, 28, 32][(x >> 40) as usize % 3];
        let net = addr & (u32::MAX << (32 - len));
        if seen.insert((net, len)) {
            writeln!(out, "{}/{len}", Ipv4Addr::from(net))?;
        }
    }
    if seen.len() != want {
        bail!("generated only {} of {want} prefixes", seen.len());
    }
    if inside {
        out.push_str("10.199.0.0/24\n");
    }
    Ok(out)
}

/// One fault with 1, 1,000, 16,384 destination prefixes (`--dest-file`, through the CLI): the
/// flow outside all of them, then inside the last one at p = 1.
pub(super) fn prefixes(
    r: &mut Results,
    d: &Daemon,
    agent: &Path,
    work: &Path,
) -> anyhow::Result<()> {
    for n in [1_usize, 1000, 16_384] {
        for inside in [false, true] {
            let (side, expect) = if inside {
                ("inside", Expect::Drops)
            } else {
                ("outside", Expect::NoMatch)
            };
            let label = format!(
                "1 fault, {n} dst prefixes, flow {}",
                if inside {
                    "in the last (p = 1, dropped)"
                } else {
                    "outside all"
                }
            );
            let file = work.join(format!("prefixes-{n}-{side}.txt"));
            let Some((id, took)) = attempt(r, &format!("inject: {label}"), || {
                std::fs::write(&file, prefix_list(n, inside)?)?;
                let path = file.to_string_lossy();
                let t = cli(
                    agent,
                    d.socket(),
                    &[
                        "inject",
                        "--loss",
                        "1",
                        "--ttl",
                        TTL,
                        "--iface",
                        IF_A,
                        "--dest-file",
                        &path,
                    ],
                )?;
                Ok((injected_id(&t.stdout())?, t.end - t.start))
            })?
            else {
                continue;
            };
            if !inside {
                r.notes.push(format!(
                    "`chaos-agent inject --dest-file` ({n} prefixes) through the daemon: {:.1} ms",
                    took.as_secs_f64() * 1e3
                ));
            }
            if n == 16_384 && !inside {
                rss(
                    r,
                    d,
                    "prefixes_16384",
                    "daemon, 1 fault with 16,384 prefixes",
                )?;
            }
            let key = format!("prefixes_{n}_{side}");
            cost_row(r, d, &key, &label, Some((&id, expect)))?;
        }
    }
    Ok(())
}
