//! `--dest-file` / `--src-file` (`cli::parse_prefix_list`): a list that parses has one prefix
//! per line that is neither blank nor a comment, each the value `--dest` would give for that
//! line; written back one per line it parses to the same list. A refusal names the origin and
//! the line.
#![no_main]

use chaos_agent::cli::{parse_cidr, parse_prefix_list};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(text) = chaos_agent_fuzz::text(data) else {
        return;
    };
    let entries: Vec<&str> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|e| !e.is_empty())
        .collect();
    match parse_prefix_list(text, "list.txt") {
        Ok(nets) => {
            assert_eq!(nets.len(), entries.len());
            for (net, entry) in nets.iter().zip(&entries) {
                assert_eq!(parse_cidr(entry).ok().as_ref(), Some(net), "{entry:?}");
            }
            let shown: String = nets.iter().map(|n| format!("{n}\n")).collect();
            assert_eq!(parse_prefix_list(&shown, "again").ok(), Some(nets));
        }
        Err(e) => {
            let line = e
                .message
                .strip_prefix("list.txt:")
                .expect("the error names the file");
            let (n, _) = line.split_once(": ").expect("and the line");
            let n: usize = n.parse().expect("a line number");
            assert!(n >= 1 && n <= text.lines().count(), "line {n}");
        }
    }
});
