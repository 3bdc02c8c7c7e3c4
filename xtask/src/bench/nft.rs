//! nftables as the reference: the same drop done by a rule on namespace A's output hook. The
//! table lives only in A (and goes with it), and is deleted on drop as well.

use std::process::Command;

use anyhow::{Context as _, bail};

use super::net::{Timed, run_in_a};

const TABLE: &str = "chaosbench";
const CHAIN: &str = "out";

/// Whether `nft` runs at all (the Debian package `nftables`).
pub fn available() -> anyhow::Result<()> {
    match Command::new("nft").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => bail!("`nft --version` failed ({})", o.status),
        Err(e) => {
            bail!("nft not found ({e}): apt-get install nftables (or run without --no-setup)")
        }
    }
}

fn nft(args: &[&str]) -> anyhow::Result<Timed> {
    let mut c = Command::new("nft");
    c.args(args);
    run_in_a(c)
}

/// `table inet chaosbench` with an output chain in namespace A; deleted on drop.
#[derive(Debug)]
pub struct NftTable {
    table: &'static str,
}

impl NftTable {
    pub fn create() -> anyhow::Result<Self> {
        available()?;
        // A leftover of an interrupted run cannot exist (A is created fresh), but be idempotent.
        let _ = nft(&["delete", "table", "inet", TABLE]);
        nft(&["add", "table", "inet", TABLE])?;
        let t = Self { table: TABLE };
        nft(&[
            "add",
            "chain",
            "inet",
            TABLE,
            CHAIN,
            "{ type filter hook output priority 0 ; policy accept ; }",
        ])?;
        Ok(t)
    }

    /// `nft add rule inet chaosbench out RULE`; returns the rule's handle and the timing.
    pub fn add_rule(&self, rule: &str) -> anyhow::Result<(u64, Timed)> {
        let t = nft(&[
            "--echo", "--handle", "add", "rule", "inet", self.table, CHAIN, rule,
        ])?;
        let out = t.stdout();
        let handle = out
            .split("# handle ")
            .nth(1)
            .and_then(|h| h.split_whitespace().next())
            .and_then(|h| h.parse().ok())
            .with_context(|| format!("no rule handle in `nft --echo --handle` output {out:?}"))?;
        Ok((handle, t))
    }

    /// `nft delete rule inet chaosbench out handle H`.
    pub fn delete_rule(&self, handle: u64) -> anyhow::Result<Timed> {
        nft(&[
            "delete",
            "rule",
            "inet",
            self.table,
            CHAIN,
            "handle",
            &handle.to_string(),
        ])
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = nft(&["delete", "table", "inet", self.table]);
    }
}
