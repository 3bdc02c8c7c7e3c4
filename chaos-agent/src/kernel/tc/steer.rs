//! The agent's steering tree: how a fault reaches only the packets the eBPF classifier picks.
//!
//! ```text
//! c4a0:  htb root, default class c4a0:1           (replaces the host's root; snapshot first)
//! ├── c4a0:1    htb class at link rate  -> leaf: the host's old leaf kind (untargeted traffic)
//! └── c4a0:N    htb class (N = 0x10 + slot) -> leaf c4a1+slot: netem / tbf  (targeted traffic)
//! ```
//! The classifier sets `skb->priority = c4a0:N` on matching packets; `htb_classify` honours
//! `skb->priority` before any filter, so no tc filters are needed. Classes are siblings at the
//! same priority and never borrow, so untargeted traffic is not shaped as long as the default
//! class's rate is at least the link's.

use super::client::Tc;
use super::encode::{HtbClassOptions, HtbOptions, Qdisc, tc_handle};
use super::error::TcError;
use super::snapshot::QdiscTree;
use super::{OUR_MAJOR, OUR_ROOT, TC_H_ROOT};

/// The class untargeted traffic goes to (`c4a0:1`).
pub const DEFAULT_CLASSID: u32 = OUR_ROOT | 1;
/// How many fault slots one device can carry.
pub const FAULT_SLOTS: u16 = 0x5e;

/// The class id of fault slot `slot` (`c4a0:10` + slot): the value the eBPF classifier writes
/// into `skb->priority`.
#[must_use]
pub const fn fault_classid(slot: u16) -> u32 {
    tc_handle(OUR_MAJOR, 0x10 + slot)
}

/// The handle of fault slot `slot`'s leaf qdisc (`c4a1:` + slot).
#[must_use]
pub const fn fault_leaf_handle(slot: u16) -> u32 {
    tc_handle(OUR_MAJOR + 1 + slot, 0)
}

/// HTB options for a class that must never be the bottleneck: bursts of 1 ms of traffic (at least
/// 64 KiB) so that timer granularity does not throttle fast links, and an explicit quantum so
/// the kernel does not derive (and warn about) a huge one from the rate.
fn unshaped(rate: u64) -> HtbClassOptions {
    let burst = u32::try_from((rate / 1000).max(64 * 1024)).unwrap_or(u32::MAX);
    HtbClassOptions {
        rate,
        ceil: Some(rate),
        burst: Some(burst),
        cburst: Some(burst),
        prio: 0,
        quantum: 64 * 1024,
    }
}

/// The leaf untargeted traffic had before the agent came: the root itself when it is a
/// classless qdisc, or the first non-default child of an `mq` root. `None` means HTB's default
/// (a pfifo) is as good as what was there (noqueue, `pfifo_fast`, kernel defaults).
#[must_use]
pub fn default_leaf_from(tree: &QdiscTree) -> Option<Qdisc> {
    const LEAF_KINDS: &[&str] = &["fq_codel", "fq", "sfq", "cake", "codel", "pfifo", "bfifo"];
    let root = tree.root()?;
    let leaf = if root.kind == "mq" {
        tree.qdiscs
            .iter()
            .find(|q| q.parent & 0xffff_0000 == root.handle && q.parent != TC_H_ROOT)?
    } else {
        root
    };
    LEAF_KINDS
        .contains(&leaf.kind.as_str())
        .then(|| Qdisc::Raw {
            kind: leaf.kind.clone(),
            options: leaf.options.clone(),
        })
}

impl Tc {
    /// Replaces the root of `ifindex` with the agent's HTB root and its default class (rate
    /// `link_rate`, bytes/s: pass the device speed or a generous upper bound), whose leaf is
    /// `default_leaf` (see [`default_leaf_from`]). Journal a restore of the snapshot *before*
    /// calling this: replacing the root destroys the host's tree.
    pub async fn install_steering_root(
        &self,
        ifindex: u32,
        link_rate: u64,
        default_leaf: Option<&Qdisc>,
    ) -> Result<(), TcError> {
        let htb = HtbOptions {
            default_class: DEFAULT_CLASSID & 0xffff,
            ..HtbOptions::default()
        };
        self.replace_qdisc(ifindex, TC_H_ROOT, OUR_ROOT, &Qdisc::Htb(htb))
            .await?;
        self.add_htb_class(ifindex, OUR_ROOT, DEFAULT_CLASSID, &unshaped(link_rate))
            .await?;
        if let Some(leaf) = default_leaf {
            // Same major as the agent: removed with the root, found by crash cleanup.
            let handle = tc_handle(OUR_MAJOR + FAULT_SLOTS + 1, 0);
            self.add_qdisc(ifindex, DEFAULT_CLASSID, handle, leaf)
                .await?;
        }
        Ok(())
    }

    /// Adds fault slot `slot` under the agent's root: a class that is unshaped (`rate: None`,
    /// `link_rate` bytes/s) or limited to `rate` bytes/s (the bandwidth fault where netem is
    /// missing), with `leaf` (netem, tbf, ...) as its qdisc. Returns the class id the classifier
    /// must write into `skb->priority`. Undo: [`Tc::remove_fault_slot`].
    pub async fn add_fault_slot(
        &self,
        ifindex: u32,
        slot: u16,
        link_rate: u64,
        rate: Option<u64>,
        leaf: Option<&Qdisc>,
    ) -> Result<u32, TcError> {
        if slot >= FAULT_SLOTS {
            return Err(TcError::InvalidParam {
                what: "fault slot",
                why: format!("{slot} is not below {FAULT_SLOTS}"),
            });
        }
        let classid = fault_classid(slot);
        let opts = rate.map_or_else(|| unshaped(link_rate), HtbClassOptions::rate);
        self.add_htb_class(ifindex, OUR_ROOT, classid, &opts)
            .await?;
        if let Some(leaf) = leaf
            && let Err(e) = self
                .add_qdisc(ifindex, classid, fault_leaf_handle(slot), leaf)
                .await
        {
            // Leave nothing half-built: the caller's undo may not have been journaled for a
            // step that failed.
            let _ = self.delete_class(ifindex, classid).await;
            return Err(e);
        }
        Ok(classid)
    }

    /// Removes fault slot `slot` (its leaf goes with the class). `false` if it was already gone.
    pub async fn remove_fault_slot(&self, ifindex: u32, slot: u16) -> Result<bool, TcError> {
        self.delete_class(ifindex, fault_classid(slot)).await
    }
}
