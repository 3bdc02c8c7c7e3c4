//! The guest's serial console: [`ConsoleFilter`] makes it clean text, [`Outcome`] parses its
//! lines (init.sh's `VM-*` markers, libtest's `test result:` and `test NAME ... FAILED` lines,
//! kernel fault markers).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Console markers of a kernel that is no longer trustworthy.
const KERNEL_FAULTS: &[&str] = &[
    "Kernel panic",
    "BUG:",
    "Oops",
    "general protection fault",
    "kernel BUG at",
];

#[derive(Debug, Default)]
pub(super) struct Outcome {
    /// From QEMU's start to /init's first line.
    pub(super) boot: Option<Duration>,
    pub(super) guest: Duration,
    pub(super) timed_out: bool,
    pub(super) kernel_fault: Option<String>,
    /// (binaries passed, binaries failed) from the guest's verdict line.
    pub(super) verdict: Option<(u64, u64)>,
    /// Totals of libtest's `test result:` lines (a skipped test is among the passed here).
    pub(super) passed: u64,
    pub(super) failed: u64,
    /// Passes per binary, from its `test result:` line.
    pub(super) passed_by_bin: BTreeMap<String, u64>,
    /// `binary::test` of each test libtest reported `FAILED`.
    pub(super) failed_tests: BTreeSet<String>,
    /// `binary::test` -> (runs that passed, runs that failed), over every round.
    pub(super) per_test: BTreeMap<String, (u32, u32)>,
    /// Per binary, a test whose `test NAME ... ` line ended in its own output (`MEASURED ...`):
    /// its `ok` or `FAILED` comes on a line of its own.
    pending: BTreeMap<String, String>,
    /// The guest's `VM-SKIP skip|part binary::test: why` lines without `VM-SKIP ` (chaos-testing's
    /// skip records), in order.
    pub(super) skip_records: Vec<String>,
    /// Binaries that failed without a `test result:` line (crashed, aborted).
    pub(super) crashed_bins: Vec<String>,
    /// Binaries started and not ended, with whether they printed a `test result:` line yet.
    pub(super) running: BTreeMap<String, bool>,
    pub(super) module_failures: Vec<String>,
    /// `BINARY PID CMDLINE` of each process a binary left behind (init.sh's `VM-LEAK`), killed
    /// by the guest; each leaking binary counts as one failure.
    pub(super) leaks: Vec<String>,
}

impl Outcome {
    /// Failed tests: libtest's totals, plus, for a binary that crashed or was still running at
    /// the end (no `test result:` line), the tests it reported `FAILED` (at least one for a
    /// crash), so that a timed-out run does not read "0 failed" above its failures.
    pub(super) fn failed_total(&self) -> u64 {
        let unreported = |bin: &str| {
            self.failed_tests
                .iter()
                .filter(|t| t.split_once("::").is_some_and(|(b, _)| b == bin))
                .count() as u64
        };
        let crashed: u64 = self
            .crashed_bins
            .iter()
            .map(|c| unreported(c.split_whitespace().next().unwrap_or_default()).max(1))
            .sum();
        let running: u64 = self.running.keys().map(|b| unreported(b)).sum();
        let leaking: BTreeSet<&str> = self
            .leaks
            .iter()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        self.failed + crashed + running + leaking.len() as u64
    }

    /// The tests that skipped, each once (its reasons joined), leaving out a test that failed
    /// after its skip and any skip of a binary that reported no passes (it crashed before its
    /// `test result:` line, so its skips are in no count to take them from); then the tests
    /// that went on without a part (among the passed).
    pub(super) fn skipped(&self) -> crate::test::Skips {
        let (whole, parts) = crate::test::parse_skips(self.skip_records.iter().map(String::as_str));
        let mut left = self.passed_by_bin.clone();
        let mut out = Vec::new();
        for (name, why) in whole {
            if self.failed_tests.contains(&name) {
                continue;
            }
            let bin = name.split_once("::").map_or(name.as_str(), |(b, _)| b);
            match left.get_mut(bin) {
                Some(n) if *n > 0 => *n -= 1,
                _ => continue,
            }
            out.push((name, why));
        }
        (out, parts)
    }

    pub(super) fn line(&mut self, line: &str, since_start: Duration) {
        // Anywhere in the line: the firmware's "Booting from ROM.." has no newline.
        if line.contains("VM-INIT") {
            self.boot.get_or_insert(since_start);
        } else if let Some(bin) = line.strip_prefix("VM-TEST-BIN ") {
            self.running.insert(bin.trim().to_owned(), false);
        } else if let Some(rest) = line.strip_prefix("VM-TEST-BIN-FAIL ") {
            let bin = rest.split_whitespace().next().unwrap_or_default();
            if !self.running.get(bin).copied().unwrap_or(false) {
                self.crashed_bins.push(rest.trim().to_owned());
            }
        } else if let Some(bin) = line.strip_prefix("VM-TEST-BIN-END ") {
            self.running.remove(bin.trim());
        } else if let Some(rest) = line.strip_prefix("VM-SKIP ") {
            self.skip_records.push(rest.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("VM-LEAK ") {
            self.leaks.push(rest.trim().to_owned());
        } else if let Some(m) = line.strip_prefix("VM-MODULE-FAIL ") {
            self.module_failures.push(m.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("VM-VERDICT ") {
            let field = |k: &str| {
                rest.split_whitespace()
                    .find_map(|f| f.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
            };
            self.verdict = field("pass").zip(field("fail"));
        } else if let Some((bin, rest)) = line.split_once("| ")
            && let Some(has_result) = self.running.get_mut(bin)
        {
            // A line of a test binary, "loss| test result: ok. 3 passed; 0 failed; 1 ignored;
            // 0 measured; 0 filtered out; finished in 0.1s" or "loss| test x ... FAILED <2.0s>".
            let rest = rest.trim_start();
            if let Some(rest) = rest.strip_prefix("test result: ") {
                *has_result = true;
                for part in rest.split(';') {
                    let mut words = part.split_whitespace().rev();
                    let (Some(what), Some(n)) = (words.next(), words.next()) else {
                        continue;
                    };
                    let n: u64 = n.parse().unwrap_or(0);
                    match what {
                        "passed" => {
                            self.passed += n;
                            *self.passed_by_bin.entry(bin.to_owned()).or_default() += n;
                        }
                        "failed" => self.failed += n,
                        _ => {}
                    }
                }
            } else if let Some((test, outcome)) = rest
                .strip_prefix("test ")
                .and_then(|r| r.split_once(" ... "))
            {
                let name = format!("{bin}::{test}");
                self.pending.remove(bin);
                if !self.outcome(&name, outcome) {
                    self.pending.insert(bin.to_owned(), name);
                }
            } else if let Some(name) = self.pending.get(bin).cloned()
                && self.outcome(&name, rest)
            {
                self.pending.remove(bin);
            }
        } else if self.kernel_fault.is_none() && is_kernel_fault(line) {
            self.kernel_fault = Some(line.trim().to_owned());
        }
    }
}

impl Outcome {
    /// Counts `outcome` (`ok <1.2s>`, `FAILED <1.2s>`) for test `name`; false if it is neither.
    fn outcome(&mut self, name: &str, outcome: &str) -> bool {
        let failed = outcome.starts_with("FAILED");
        if !failed && !outcome.starts_with("ok") {
            return false;
        }
        let runs = self.per_test.entry(name.to_owned()).or_default();
        if failed {
            runs.1 += 1;
            self.failed_tests.insert(name.to_owned());
        } else {
            runs.0 += 1;
        }
        true
    }
}

/// A kernel message (optionally after its `[ secs.usecs]` stamp) that starts with a fault marker.
fn is_kernel_fault(line: &str) -> bool {
    let msg = line.trim_start();
    let msg = match msg.strip_prefix('[').and_then(|r| r.split_once(']')) {
        Some((stamp, rest)) if stamp.trim().parse::<f64>().is_ok() => rest.trim_start(),
        _ => msg,
    };
    KERNEL_FAULTS.iter().any(|m| msg.starts_with(m))
}

/// Turns the serial console into clean UTF-8 text. It drops terminal escape sequences (`SeaBIOS`
/// and the kernel send "reset terminal" and "clear screen", which would wipe the user's
/// terminal and glue themselves to the guest's first line) and control characters other than
/// newline and tab, and replaces invalid UTF-8: whoever reads our stdout line by line as text
/// (`cargo xtask test`) must not choke on what a kernel or a test wrote to the console.
#[derive(Debug, Default)]
pub(super) struct ConsoleFilter {
    /// 0: text, 1: after ESC, 2: inside a CSI sequence (ESC [ ... final byte).
    state: u8,
    /// Bytes of a UTF-8 sequence cut by the end of the previous chunk.
    partial: Vec<u8>,
}

impl ConsoleFilter {
    pub(super) fn filter(&mut self, chunk: &[u8]) -> String {
        let mut bytes = std::mem::take(&mut self.partial);
        for &b in chunk {
            self.state = match (self.state, b) {
                (0, 0x1b) => 1,
                (0, b'\n' | b'\t' | 0x20..=0x7e | 0x80..) => {
                    bytes.push(b);
                    0
                }
                (1, b'[') => 2,
                // Other control characters, an ESC pair's second byte, a CSI's final byte.
                (2, 0x40..=0x7e) | (0 | 1, _) => 0,
                (s, _) => s,
            };
        }
        let mut out = String::with_capacity(bytes.len());
        let mut rest = bytes.as_slice();
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    break;
                }
                Err(e) => {
                    let (valid, tail) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    if let Some(n) = e.error_len() {
                        out.push(char::REPLACEMENT_CHARACTER);
                        rest = &tail[n..];
                    } else {
                        self.partial = tail.to_vec();
                        break;
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_and_guest_lines() {
        let mut o = Outcome::default();
        for l in [
            "Booting from ROM..VM-INIT kernel 6.1.0-56-amd64",
            "VM-TEST-BIN lib-chaos_agent",
            "VM-TEST-BIN kernel_features",
            "lib-chaos_agent| test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.1s",
            "VM-TEST-BIN-END lib-chaos_agent",
            "kernel_features| test result: FAILED. 5 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
            "VM-TEST-BIN crashy",
            "VM-TEST-BIN-FAIL kernel_features rc=101",
            "VM-TEST-BIN-END kernel_features",
            // Not a binary's line: a kernel message or a binary that is not running.
            "other| test result: ok. 9 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
            "crashy| thread 'main' panicked",
            "VM-TEST-BIN-FAIL crashy rc=134",
            "VM-TEST-BIN-END crashy",
            "VM-TEST-BIN hung",
            "hung| test a ... FAILED <1.0s>",
            "hung| test b ... FAILED <1.0s>",
            "VM-VERDICT pass=1 fail=2",
        ] {
            o.line(l, Duration::from_secs(8));
        }
        assert_eq!((o.passed, o.failed), (8, 2));
        // + crashy (no FAILED line: one) + hung's two, still running at the end.
        assert_eq!(o.failed_total(), 5);
        assert_eq!(o.skipped(), (vec![], vec![]));
        assert_eq!(o.crashed_bins, ["crashy rc=134"]);
        assert_eq!(o.running.keys().collect::<Vec<_>>(), ["hung"]);
        assert_eq!(o.verdict, Some((1, 2)));
        assert_eq!(o.boot, Some(Duration::from_secs(8)));
    }

    #[test]
    fn a_binary_that_leaves_processes_behind_counts_once_as_failed() {
        let mut o = Outcome::default();
        for l in [
            "VM-TEST-BIN stress",
            "stress| test result: ok. 6 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
            "VM-LEAK stress 3101 sleep 600",
            "VM-LEAK stress 3102 sh -c x",
            "VM-TEST-BIN-FAIL stress rc=97",
            "VM-TEST-BIN-END stress",
        ] {
            o.line(l, Duration::ZERO);
        }
        assert_eq!(o.passed, 6);
        assert_eq!(o.failed_total(), 1);
        assert_eq!(o.leaks, ["stress 3101 sleep 600", "stress 3102 sh -c x"]);
    }

    #[test]
    fn repeated_rounds_count_each_test_s_runs() {
        let mut o = Outcome::default();
        for round in 0..3 {
            o.line("VM-TEST-BIN netem", Duration::ZERO);
            o.line("netem| test delay_median ... ok <2.0s>", Duration::ZERO);
            o.line(
                if round == 1 {
                    "netem| test jitter_spread ... FAILED <3.0s>"
                } else {
                    "netem| test jitter_spread ... ok <3.0s>"
                },
                Duration::ZERO,
            );
            o.line("VM-TEST-BIN-END netem", Duration::ZERO);
        }
        o.line("VM-TEST-BIN netem", Duration::ZERO);
        o.line(
            "netem| test edt_delay ... MEASURED median 101.0 ms",
            Duration::ZERO,
        );
        o.line("netem| ok <13.0s>", Duration::ZERO);
        o.line(
            "netem| test edt_late ... MEASURED 2 ms late",
            Duration::ZERO,
        );
        o.line("netem| FAILED <1.0s>", Duration::ZERO);
        assert_eq!(o.per_test["netem::edt_delay"], (1, 0));
        assert_eq!(o.per_test["netem::edt_late"], (0, 1));
        assert!(o.failed_tests.contains("netem::edt_late"));
        assert_eq!(o.per_test["netem::delay_median"], (3, 0));
        assert_eq!(o.per_test["netem::jitter_spread"], (2, 1));
        assert!(o.failed_tests.contains("netem::jitter_spread"));
    }

    #[test]
    fn skips_are_counted_once_and_never_for_failures() {
        let mut o = Outcome::default();
        for l in [
            "VM-TEST-BIN loss",
            "loss| test sigkill_on_tcx ... ok <0.1s>",
            "loss| test skips_then_fails ... FAILED <0.3s>",
            "loss| test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 3 filtered out",
            "VM-SKIP skip loss::sigkill_on_tcx: missing tcx links (>= 6.6); required on: host",
            "VM-SKIP skip loss::skips_then_fails: this kernel has x",
            "VM-SKIP skip loss::sigkill_on_tcx: missing tcx links (>= 6.6); required on: host",
            "VM-SKIP part loss::other: the dig checks: dig is not installed",
            "VM-TEST-BIN-END loss",
            "VM-TEST-BIN crashy",
            "VM-SKIP skip crashy::t: no result line, so no pass to take it from",
            "VM-TEST-BIN-FAIL crashy rc=134",
            "VM-TEST-BIN-END crashy",
        ] {
            o.line(l, Duration::from_secs(1));
        }
        let (whole, parts) = o.skipped();
        assert_eq!(
            whole,
            [(
                "loss::sigkill_on_tcx".to_owned(),
                "missing tcx links (>= 6.6); required on: host".to_owned()
            )]
        );
        assert_eq!(
            parts,
            [(
                "loss::other".to_owned(),
                "the dig checks: dig is not installed".to_owned()
            )]
        );
        assert!(o.failed_tests.contains("loss::skips_then_fails"));
    }

    #[test]
    fn console_filter_drops_escapes_across_chunks() {
        let mut f = ConsoleFilter::default();
        let mut out = f.filter(b"\x1bc\x1b[?7l\x1b[2");
        out += &f.filter(b"JVM-INIT x\r\n");
        assert_eq!(out, "VM-INIT x\n");
        // A multi-byte character cut between chunks survives; invalid bytes and BEL do not.
        let dash = "\u{2014}".as_bytes();
        let mut out = f.filter(&[b"a\x07".as_slice(), &dash[..1]].concat());
        out += &f.filter(&[&dash[1..], b"\xffb\n".as_slice()].concat());
        assert_eq!(out, "a\u{2014}\u{fffd}b\n");
    }

    #[test]
    fn kernel_fault_markers() {
        assert!(is_kernel_fault(
            "[   12.345678] BUG: kernel NULL pointer dereference, address: 0"
        ));
        assert!(is_kernel_fault(
            "Kernel panic - not syncing: Attempted to kill init!"
        ));
        assert!(is_kernel_fault(
            "[    1.000000] Oops: 0002 [#1] PREEMPT SMP NOPTI"
        ));
        assert!(!is_kernel_fault("test bug_fix_works ... ok"));
        assert!(!is_kernel_fault(
            "thread 'x' panicked at src/lib.rs: BUG: nope"
        ));
    }
}
