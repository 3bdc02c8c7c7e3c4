//! Experiments the daemon starts by itself: recurring ones (`[[experiments.schedule]]`, cron
//! syntax with optional seconds, a random jitter, in a time zone) and monkey mode
//! (`[experiments.monkey]`: at each tick, with a probability, one experiment picked from a pool,
//! only inside allowed windows and never in a blackout, and only when none is running).
//!
//! Both go through [`super::daemon::Experiments::start`], so a scheduled run is checked and
//! recorded exactly like one posted to the API.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::daemon::Experiments;
use crate::engine::{EngineConfig, Requester};

/// `[experiments]` of the daemon's configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentsConfig {
    /// Recurring experiments.
    pub schedule: Vec<Schedule>,
    /// Random experiments within windows.
    pub monkey: Option<Monkey>,
}

/// `[[experiments.schedule]]`: run `file` whenever `cron` matches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// The experiment file.
    pub file: PathBuf,
    /// `MIN HOUR DOM MON DOW`, or with a leading seconds field (`*/30 * * * * *`).
    pub cron: String,
    /// Start up to this much later, at random (so that a fleet does not start at once).
    #[serde(default, with = "humantime_serde")]
    pub jitter: Duration,
    /// The time zone the expression is read in (IANA name).
    #[serde(default = "utc")]
    pub tz: String,
}

/// `[experiments.monkey]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Monkey {
    /// The experiment files to pick from.
    pub pool: Vec<PathBuf>,
    /// The chance, at each tick inside a window, that one is started.
    pub probability: f64,
    /// Time between two draws.
    #[serde(default = "default_tick", with = "humantime_serde")]
    pub tick: Duration,
    /// When it may act (at least one).
    pub windows: Vec<Window>,
    /// When it must not, whatever the windows say.
    #[serde(default)]
    pub blackouts: Vec<Window>,
}

fn default_tick() -> Duration {
    Duration::from_mins(1)
}

fn utc() -> String {
    "UTC".to_owned()
}

fn all_days() -> Vec<String> {
    ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .map(str::to_owned)
        .to_vec()
}

/// Days and a time of day in a time zone: `from` inclusive, `to` exclusive; `from` after `to`
/// spans midnight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// `mon` .. `sun` (default: every day); the day `from` falls on.
    #[serde(default = "all_days")]
    pub days: Vec<String>,
    /// `09:00`.
    pub from: String,
    /// `17:30`.
    pub to: String,
    /// IANA time zone (`Europe/Berlin`; default `UTC`).
    #[serde(default = "utc")]
    pub tz: String,
}

/// `HH:MM` as minutes of the day.
fn minutes(s: &str) -> Result<u32, String> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected HH:MM"))?;
    match (h.parse::<u32>(), m.parse::<u32>()) {
        (Ok(h), Ok(m)) if h < 24 && m < 60 && m.to_string().len() <= 2 => Ok(h * 60 + m),
        _ => Err(format!("{s:?}: expected HH:MM, 00:00 to 23:59")),
    }
}

fn weekday(s: &str) -> Result<jiff::civil::Weekday, String> {
    use jiff::civil::Weekday as W;
    Ok(match s.to_ascii_lowercase().as_str() {
        "mon" | "monday" => W::Monday,
        "tue" | "tuesday" => W::Tuesday,
        "wed" | "wednesday" => W::Wednesday,
        "thu" | "thursday" => W::Thursday,
        "fri" | "friday" => W::Friday,
        "sat" | "saturday" => W::Saturday,
        "sun" | "sunday" => W::Sunday,
        _ => return Err(format!("{s:?} is not a day (mon .. sun)")),
    })
}

fn zone(name: &str) -> Result<jiff::tz::TimeZone, String> {
    jiff::tz::TimeZone::get(name).map_err(|e| format!("time zone {name:?}: {e}"))
}

impl Window {
    fn check(&self) -> Result<(), String> {
        minutes(&self.from)?;
        minutes(&self.to)?;
        zone(&self.tz)?;
        if self.days.is_empty() {
            return Err("a window with no days".to_owned());
        }
        for d in &self.days {
            weekday(d)?;
        }
        if self.from == self.to {
            return Err(format!("from {} equals to: an empty window", self.from));
        }
        Ok(())
    }

    /// Whether `t` falls in the window (an unparsable window contains nothing: validation
    /// refuses those at start-up).
    #[must_use]
    pub fn contains(&self, t: jiff::Timestamp) -> bool {
        let (Ok(from), Ok(to), Ok(tz)) = (minutes(&self.from), minutes(&self.to), zone(&self.tz))
        else {
            return false;
        };
        let z = t.to_zoned(tz);
        let now = u32::from(z.hour().unsigned_abs()) * 60 + u32::from(z.minute().unsigned_abs());
        let day_ok =
            |d: jiff::civil::Weekday| self.days.iter().any(|x| weekday(x).is_ok_and(|w| w == d));
        if from < to {
            day_ok(z.weekday()) && (from..to).contains(&now)
        } else {
            // Across midnight: after `from` on an allowed day, or before `to` the day after one.
            (now >= from && day_ok(z.weekday())) || (now < to && day_ok(z.weekday().previous()))
        }
    }
}

fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    croner::Cron::new(expr)
        .with_seconds_optional()
        .parse()
        .map_err(|e| format!("cron {expr:?}: {e}"))
}

/// Whether `cron`, read in `tz`, matches the second `t`.
fn cron_matches(cron: &croner::Cron, tz: &jiff::tz::TimeZone, t: jiff::Timestamp) -> bool {
    let offset = tz.to_offset(t).seconds();
    let (Some(utc), Some(off)) = (
        chrono::DateTime::from_timestamp(t.as_second(), 0),
        chrono::FixedOffset::east_opt(offset),
    ) else {
        return false;
    };
    cron.is_time_matching(&utc.with_timezone(&off))
        .unwrap_or(false)
}

impl ExperimentsConfig {
    /// Checks the expressions, the windows and that every file is an experiment.
    pub fn check(&self) -> Result<(), String> {
        let file = |f: &PathBuf| {
            super::ExperimentSpec::from_file(f)
                .map(drop)
                .map_err(|e| e.to_string())
        };
        for s in &self.schedule {
            parse_cron(&s.cron)?;
            zone(&s.tz)?;
            file(&s.file)?;
        }
        if let Some(m) = &self.monkey {
            if !(0.0..=1.0).contains(&m.probability) {
                return Err(format!(
                    "experiments.monkey.probability {} is not in [0, 1]",
                    m.probability
                ));
            }
            if m.tick < Duration::from_secs(1) {
                return Err("experiments.monkey.tick is below 1s".to_owned());
            }
            if m.pool.is_empty() || m.windows.is_empty() {
                return Err(
                    "experiments.monkey needs a pool and at least one window (it never acts outside them)"
                        .to_owned(),
                );
            }
            for f in &m.pool {
                file(f)?;
            }
            for w in m.windows.iter().chain(&m.blackouts) {
                w.check()?;
            }
        }
        Ok(())
    }

    /// Whether there is anything to run.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.schedule.is_empty() && self.monkey.is_none()
    }
}

/// A random number in [0, 1) (`RandomState` is seeded from the OS per instance).
fn random() -> f64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(jiff::Timestamp::now().as_nanosecond() as u64);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Starts `file` through the daemon, logging what came of it.
fn start(experiments: &Experiments, file: &PathBuf, cfg: &EngineConfig, why: &str) {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(event = "experiment_skipped", file = %file.display(), error = %e, why, "scheduled experiment not started");
            return;
        }
    };
    match experiments.start(&text, cfg, Requester::me()) {
        Ok(run) => {
            tracing::info!(event = "experiment_scheduled", id = %run.id, file = %file.display(), why, "scheduled experiment started");
        }
        Err(e) => {
            tracing::warn!(event = "experiment_skipped", file = %file.display(), error = %e, why, "scheduled experiment not started");
        }
    }
}

/// Runs the schedules and the monkey until `stop`; `cfg` gives the engine's configuration
/// at each start (it may be reloaded).
pub async fn run(
    conf: ExperimentsConfig,
    experiments: Arc<Experiments>,
    cfg: impl Fn() -> EngineConfig + Send + Sync + 'static,
    stop: CancellationToken,
) {
    let cfg = Arc::new(cfg);
    let schedules: Vec<(Schedule, croner::Cron, jiff::tz::TimeZone)> = conf
        .schedule
        .iter()
        .filter_map(|s| Some((s.clone(), parse_cron(&s.cron).ok()?, zone(&s.tz).ok()?)))
        .collect();
    let mut last_draw: Option<jiff::Timestamp> = None;
    let mut last_second = jiff::Timestamp::now().as_second();
    loop {
        // Wake at each second's start.
        let now = jiff::Timestamp::now();
        let to_next = 1_000_000_000 - i64::from(now.subsec_nanosecond());
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_nanos(to_next.unsigned_abs())) => {}
        }
        let now = jiff::Timestamp::now();
        let second = now.as_second();
        if second == last_second {
            continue;
        }
        last_second = second;
        let Ok(t) = jiff::Timestamp::from_second(second) else {
            continue;
        };
        for (s, cron, tz) in &schedules {
            if !cron_matches(cron, tz, t) {
                continue;
            }
            let delay = s.jitter.mul_f64(random());
            let (experiments, cfg, file, stop) = (
                experiments.clone(),
                cfg.clone(),
                s.file.clone(),
                stop.clone(),
            );
            let why = format!("schedule {:?}", s.cron);
            tokio::spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(delay) => start(&experiments, &file, &cfg(), &why),
                }
            });
        }
        if let Some(m) = &conf.monkey {
            let due = last_draw.is_none_or(|l| {
                now.duration_since(l)
                    .unsigned_abs()
                    .saturating_add(Duration::from_millis(500))
                    >= m.tick
            });
            if !due {
                continue;
            }
            last_draw = Some(now);
            let open = m.windows.iter().any(|w| w.contains(now));
            let blackout = m.blackouts.iter().any(|w| w.contains(now));
            if !open || blackout || experiments.running() > 0 {
                tracing::debug!(event = "monkey_tick", open, blackout, "monkey does nothing");
                continue;
            }
            let draw = random();
            if draw < m.probability {
                let pick = ((random() * m.pool.len() as f64) as usize).min(m.pool.len() - 1);
                start(&experiments, &m.pool[pick], &cfg(), "monkey");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn windows_by_day_time_and_zone() {
        let business = Window {
            days: ["mon", "tue", "wed", "thu", "fri"]
                .map(str::to_owned)
                .to_vec(),
            from: "09:00".to_owned(),
            to: "17:00".to_owned(),
            tz: "Europe/Berlin".to_owned(),
        };
        business.check().expect("valid");
        // Monday 2026-12-07: 08:30 UTC is 09:30 in Berlin (CET, +1).
        assert!(business.contains(at("2026-12-07T08:30:00Z")));
        assert!(
            !business.contains(at("2026-12-07T07:59:00Z")),
            "08:59 Berlin"
        );
        assert!(
            !business.contains(at("2026-12-07T16:00:00Z")),
            "17:00 Berlin: exclusive"
        );
        assert!(!business.contains(at("2026-12-06T10:00:00Z")), "a Sunday");
        // Summer time (+2): 07:30 UTC is 09:30 in Berlin.
        assert!(business.contains(at("2026-07-06T07:30:00Z")));
        let night = Window {
            days: vec!["fri".to_owned()],
            from: "22:00".to_owned(),
            to: "02:00".to_owned(),
            tz: "UTC".to_owned(),
        };
        assert!(night.contains(at("2026-12-11T23:00:00Z")), "Friday night");
        assert!(night.contains(at("2026-12-12T01:00:00Z")), "into Saturday");
        assert!(
            !night.contains(at("2026-12-13T01:00:00Z")),
            "Sunday's early hours"
        );
        for bad in ["24:00", "9", "09:60", "ab:cd"] {
            let w = Window {
                from: bad.to_owned(),
                ..night.clone()
            };
            assert!(w.check().is_err(), "{bad}");
        }
        assert!(
            Window {
                tz: "Mars/Olympus".to_owned(),
                ..night.clone()
            }
            .check()
            .is_err()
        );
    }

    #[test]
    fn cron_in_a_zone_with_optional_seconds() {
        let berlin = zone("Europe/Berlin").expect("tz");
        let nine = parse_cron("0 9 * * mon-fri").expect("cron");
        assert!(cron_matches(&nine, &berlin, at("2026-12-07T08:00:00Z")));
        assert!(!cron_matches(&nine, &berlin, at("2026-12-07T09:00:00Z")));
        assert!(
            !cron_matches(&nine, &berlin, at("2026-12-07T08:00:01Z")),
            "second 0 only"
        );
        let every3 = parse_cron("*/3 * * * * *").expect("cron");
        let utc = zone("UTC").expect("utc");
        assert!(cron_matches(&every3, &utc, at("2026-12-07T08:00:03Z")));
        assert!(!cron_matches(&every3, &utc, at("2026-12-07T08:00:04Z")));
        assert!(parse_cron("61 * * * *").is_err());
        let r = random();
        assert!((0.0..1.0).contains(&r));
    }
}
