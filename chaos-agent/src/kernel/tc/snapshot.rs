//! Snapshot and exact restore of a device's qdisc tree.
//!
//! The host's qdiscs are not ours: before the agent replaces a root it dumps every qdisc and
//! class of the device into a [`QdiscTree`] (stored in the crash journal), and on revert
//! [`Tc::restore`] puts that tree back and proves it by re-dumping and comparing.
//!
//! Objects with handle `0:` are the kernel's own: the default root (`noqueue`, `pfifo_fast`,
//! `mq`) reappears by itself when the root is deleted, and `mq`'s per-queue children are created
//! by `mq`. They are never recreated, only compared.

use std::collections::HashSet;

use netlink_packet_core::DefaultNla;
use netlink_packet_route::tc::TcAttribute;
use serde::{Deserialize, Serialize};

use super::client::Tc;
use super::encode::{Qdisc, raw_class_message};
use super::error::{NotRestorable, TcError, TcHandleFmt};
use super::raw::iter_attrs;
use super::{OUR_MAJOR, TC_H_CLSACT, TC_H_ROOT};

/// One dumped qdisc or class: everything needed to recreate it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcObject {
    /// Kind, e.g. "htb".
    pub kind: String,
    /// Handle (qdisc) or class id.
    pub handle: u32,
    /// Parent handle/class id (`TC_H_ROOT` for roots and top-level classes).
    pub parent: u32,
    /// Raw `TCA_OPTIONS` value as dumped.
    #[serde(with = "hex_opt")]
    pub options: Option<Vec<u8>>,
    /// Whether a size table (`TCA_STAB`) was attached; its data is not dumped.
    pub has_stab: bool,
    /// Other attributes replayed on creation: `(type, value)` of the shared block indexes.
    pub extra: Vec<(u16, Vec<u8>)>,
}

impl TcObject {
    /// The object with fields that are counters rather than configuration zeroed, for comparing
    /// a tree before and after a restore.
    #[must_use]
    pub fn normalized(&self) -> Self {
        let mut o = self.clone();
        if o.kind == "htb"
            && let Some(opts) = o.options.as_mut()
        {
            zero_htb_direct_pkts(opts);
        }
        o
    }

    fn describe(&self) -> String {
        format!(
            "{} {} parent {}",
            self.kind,
            TcHandleFmt(self.handle),
            TcHandleFmt(self.parent)
        )
    }
}

/// htb's `TCA_HTB_INIT` reports `direct_pkts`, a packet counter, in the configuration struct
/// (`struct tc_htb_glob { version, rate2quantum, defcls, debug, direct_pkts }`).
fn zero_htb_direct_pkts(opts: &mut [u8]) {
    if let Some(start) = htb_init_offset(opts) {
        opts[start + 16..start + 20].fill(0);
    }
}

/// Every qdisc and class of one device, as dumped over netlink. Serialisable: it is stored in
/// the crash journal so that a restarted agent can restore the host's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QdiscTree {
    /// Device index.
    pub ifindex: u32,
    /// Qdiscs in dump order.
    pub qdiscs: Vec<TcObject>,
    /// Classes in dump order.
    pub classes: Vec<TcObject>,
}

impl QdiscTree {
    /// The root qdisc, if the dump had one.
    #[must_use]
    pub fn root(&self) -> Option<&TcObject> {
        self.qdiscs.iter().find(|q| q.parent == TC_H_ROOT)
    }

    /// The first difference between two trees, ignoring order, counters and the clsact/ingress
    /// qdisc: that one belongs to the eBPF attach path, whose own undo record removes it if the
    /// agent created it (and only then), so a restore neither compares nor re-creates it. (A
    /// snapshot taken while a loss fault's clsact existed would otherwise bring it back after
    /// that fault's undo had removed it, depending on the order journals are replayed in.)
    #[must_use]
    pub fn diff(&self, other: &Self) -> Option<String> {
        let norm = |objs: &[TcObject]| {
            let mut v: Vec<TcObject> = objs
                .iter()
                .filter(|o| o.parent != TC_H_CLSACT && !is_ephemeral(o))
                .map(TcObject::normalized)
                .collect();
            v.sort_by(|a, b| (a.parent, a.handle, &a.kind).cmp(&(b.parent, b.handle, &b.kind)));
            v
        };
        for (what, a, b) in [
            ("qdisc", norm(&self.qdiscs), norm(&other.qdiscs)),
            ("class", norm(&self.classes), norm(&other.classes)),
        ] {
            for x in &a {
                if !b.contains(x) {
                    return Some(
                        match b
                            .iter()
                            .find(|y| y.handle == x.handle && y.parent == x.parent)
                        {
                            Some(_) => format!("{what} {} has different options", x.describe()),
                            None => format!("{what} {} is missing", x.describe()),
                        },
                    );
                }
            }
            if let Some(y) = b.iter().find(|y| !a.contains(y)) {
                return Some(format!("unexpected {what} {}", y.describe()));
            }
        }
        None
    }
}

/// Qdisc kinds whose dumped options we can send back to recreate them exactly.
const REPLAYABLE_QDISCS: &[&str] = &[
    "noqueue",
    "pfifo_fast",
    "pfifo",
    "bfifo",
    "pfifo_head_drop",
    "mq",
    "htb",
    "tbf",
    "prio",
    "fq",
    "fq_codel",
    "codel",
    "sfq",
    "netem",
    "clsact",
    "ingress",
];
/// Class kinds that exist implicitly once their qdisc exists (per-queue/per-band classes, and
/// the single class through which tbf and netem hold their child qdisc).
const IMPLICIT_CLASSES: &[&str] = &["mq", "prio", "multiq", "mqprio", "tbf", "netem"];
/// Class kinds that are really flows: dumped only while the flow has packets queued, so they
/// come and go with traffic and are neither restored nor compared.
const EPHEMERAL_CLASSES: &[&str] = &["fq_codel", "sfq", "cake", "fq_pie", "fq"];

fn is_ephemeral(c: &TcObject) -> bool {
    EPHEMERAL_CLASSES.contains(&c.kind.as_str())
}

/// Whether [`Tc::restore`] can recreate `tree` exactly; the first reason it cannot otherwise.
/// Callers refuse to touch such a device unless the operator passed `--force`.
pub fn is_faithfully_restorable(tree: &QdiscTree) -> Result<(), NotRestorable> {
    let class_ids: HashSet<u32> = tree.classes.iter().map(|c| c.handle).collect();
    let qdisc_ids: HashSet<u32> = tree.qdiscs.iter().map(|q| q.handle).collect();
    for q in &tree.qdiscs {
        let handle = TcHandleFmt(q.handle);
        if q.has_stab {
            return Err(NotRestorable::SizeTable {
                kind: q.kind.clone(),
                handle,
            });
        }
        // Handle 0: objects are the kernel's defaults and come back by themselves.
        if q.handle != 0 && !REPLAYABLE_QDISCS.contains(&q.kind.as_str()) {
            return Err(NotRestorable::UnknownQdiscKind {
                kind: q.kind.clone(),
                handle,
            });
        }
        if q.kind == "netem" && netem_has_jitter(q.options.as_deref()) {
            return Err(NotRestorable::NetemDistribution { handle });
        }
        if q.parent != TC_H_ROOT && q.parent != TC_H_CLSACT && !class_ids.contains(&q.parent) {
            return Err(NotRestorable::Orphan {
                what: "qdisc",
                handle,
                parent: TcHandleFmt(q.parent),
            });
        }
    }
    for c in tree.classes.iter().filter(|c| !is_ephemeral(c)) {
        let handle = TcHandleFmt(c.handle);
        if c.kind != "htb" && !IMPLICIT_CLASSES.contains(&c.kind.as_str()) {
            return Err(NotRestorable::UnknownClassKind {
                kind: c.kind.clone(),
                handle,
            });
        }
        let parent_ok =
            c.parent == TC_H_ROOT || class_ids.contains(&c.parent) || qdisc_ids.contains(&c.parent);
        if !parent_ok {
            return Err(NotRestorable::Orphan {
                what: "class",
                handle,
                parent: TcHandleFmt(c.parent),
            });
        }
    }
    Ok(())
}

/// Whether a dumped netem has jitter (the `tc_netem_qopt.jitter` field or `TCA_NETEM_JITTER64`).
fn netem_has_jitter(opts: Option<&[u8]>) -> bool {
    let Some(o) = opts else { return false };
    let jitter32 = o.get(20..24).is_some_and(|b| b != [0, 0, 0, 0]);
    let jitter64 = o
        .get(24..)
        .is_some_and(|rest| iter_attrs(rest).any(|(k, v)| k == 11 && v.iter().any(|b| *b != 0)));
    jitter32 || jitter64
}

impl Tc {
    /// Dumps every qdisc and class of `ifindex`.
    pub async fn snapshot(&self, ifindex: u32) -> Result<QdiscTree, TcError> {
        Ok(QdiscTree {
            ifindex,
            qdiscs: self.qdiscs(ifindex).await?,
            classes: self.classes(ifindex).await?,
        })
    }

    /// Puts `tree` back on its device: deletes the agent's root (which also removes everything
    /// the agent hung below it), recreates the snapshot's non-default qdiscs and classes parent
    /// first, then re-dumps and fails with [`TcError::RestoreMismatch`] if the result differs.
    ///
    /// Refuses trees that [`is_faithfully_restorable`] rejects unless `force`, and a root that is
    /// neither the agent's nor the snapshot's ([`TcError::ForeignRoot`]). Idempotent: restoring
    /// an already restored tree does nothing.
    pub async fn restore(&self, tree: &QdiscTree, force: bool) -> Result<(), TcError> {
        let ifindex = tree.ifindex;
        if !force {
            is_faithfully_restorable(tree)
                .map_err(|reason| TcError::NotRestorable { ifindex, reason })?;
        }
        let now = self.snapshot(ifindex).await?;
        if tree.diff(&now).is_none() {
            return Ok(());
        }
        if let Some(root) = now.root() {
            let ours = (root.handle >> 16) as u16 == OUR_MAJOR;
            let default = root.handle == 0;
            let snapshot_root = tree
                .root()
                .is_some_and(|r| r.normalized() == root.normalized());
            if ours {
                self.delete_qdisc(ifindex, TC_H_ROOT, 0).await?;
            } else if !default && !snapshot_root {
                return Err(TcError::ForeignRoot {
                    ifindex,
                    found: format!("{} {}", root.kind, TcHandleFmt(root.handle)),
                });
            }
        }
        self.replay(tree).await?;
        let after = self.snapshot(ifindex).await?;
        match tree.diff(&after) {
            None => Ok(()),
            Some(diff) => Err(TcError::RestoreMismatch { ifindex, diff }),
        }
    }

    /// Creates the snapshot's objects that are missing, in dependency order.
    async fn replay(&self, tree: &QdiscTree) -> Result<(), TcError> {
        let ifindex = tree.ifindex;
        let now = self.qdiscs(ifindex).await?;
        let mut present: HashSet<u32> = HashSet::from([TC_H_ROOT, TC_H_CLSACT]);
        // A qdisc's implicit classes (mq's queues, prio's bands) exist as soon as it does.
        let implicit = |major: u32| -> Vec<u32> {
            tree.classes
                .iter()
                .filter(|c| {
                    IMPLICIT_CLASSES.contains(&c.kind.as_str()) && c.handle & 0xffff_0000 == major
                })
                .map(|c| c.handle)
                .collect()
        };
        let mut pending_q: Vec<&TcObject> = Vec::new();
        for q in tree.qdiscs.iter().filter(|q| q.parent != TC_H_CLSACT) {
            let there = now.iter().any(|n| n.normalized() == q.normalized());
            if there || q.handle == 0 {
                present.insert(q.handle);
                present.extend(implicit(q.handle));
            } else {
                pending_q.push(q);
            }
        }
        let mut pending_c: Vec<&TcObject> =
            tree.classes.iter().filter(|c| c.kind == "htb").collect();
        loop {
            let before = pending_q.len() + pending_c.len();
            let mut i = 0;
            while i < pending_q.len() {
                let q = pending_q[i];
                if present.contains(&q.parent) {
                    self.create_qdisc(ifindex, q).await?;
                    present.insert(q.handle);
                    present.extend(implicit(q.handle));
                    pending_q.remove(i);
                } else {
                    i += 1;
                }
            }
            let mut i = 0;
            while i < pending_c.len() {
                let c = pending_c[i];
                // Top-level HTB classes are dumped with parent TC_H_ROOT but created under
                // their qdisc.
                let parent = if c.parent == TC_H_ROOT {
                    c.handle & 0xffff_0000
                } else {
                    c.parent
                };
                if present.contains(&parent) {
                    let msg =
                        raw_class_message(ifindex, parent, c.handle, &c.kind, c.options.clone());
                    self.add_class_message(msg).await?;
                    present.insert(c.handle);
                    pending_c.remove(i);
                } else {
                    i += 1;
                }
            }
            let after = pending_q.len() + pending_c.len();
            if after == 0 {
                return Ok(());
            }
            if after == before {
                let stuck = pending_q
                    .first()
                    .or(pending_c.first())
                    .map_or_else(String::new, |o| o.describe());
                return Err(TcError::RestoreMismatch {
                    ifindex,
                    diff: format!("cannot place {stuck}: its parent never appeared"),
                });
            }
        }
    }

    async fn create_qdisc(&self, ifindex: u32, q: &TcObject) -> Result<(), TcError> {
        let spec = match q.kind.as_str() {
            "clsact" => Qdisc::Clsact,
            "ingress" => Qdisc::Ingress,
            kind => Qdisc::Raw {
                kind: kind.to_owned(),
                options: q.options.clone().map(|o| replayable_options(kind, o)),
            },
        };
        if q.extra.is_empty() {
            return self.add_qdisc(ifindex, q.parent, q.handle, &spec).await;
        }
        let mut msg = super::encode::qdisc_message(ifindex, q.parent, q.handle, &spec)?;
        for (kind, value) in &q.extra {
            msg.attributes
                .push(TcAttribute::Other(DefaultNla::new(*kind, value.clone())));
        }
        self.add_qdisc_message(ifindex, q.kind.as_str(), msg).await
    }
}

/// Dumped options made acceptable for creation: htb dumps `version` as `HTB_VER` (0x30011,
/// "3.17") but `htb_init` insists on `HTB_VER >> 16` (3), and its `direct_pkts` is a counter.
fn replayable_options(kind: &str, mut opts: Vec<u8>) -> Vec<u8> {
    if kind == "htb" {
        zero_htb_direct_pkts(&mut opts);
        if let Some(start) = htb_init_offset(&opts) {
            opts[start..start + 4].copy_from_slice(&3u32.to_ne_bytes());
        }
    }
    opts
}

/// Offset of the `TCA_HTB_INIT` value in htb's options.
fn htb_init_offset(opts: &[u8]) -> Option<usize> {
    let mut off = 0usize;
    for (kind, v) in iter_attrs(opts) {
        if kind & 0x3fff == 2 && v.len() >= 20 {
            return Some(off + 4);
        }
        off += (v.len() + 4 + 3) & !3;
    }
    None
}

/// Serialises optional bytes as a hex string (compact and greppable in the journal).
mod hex_opt {
    use std::fmt::Write as _;

    use serde::{Deserialize, Deserializer, Serializer};

    #[expect(
        clippy::ref_option,
        reason = "serde's `with` passes the field by reference"
    )]
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_none(),
            Some(bytes) => {
                let mut out = String::with_capacity(bytes.len() * 2);
                for b in bytes {
                    let _ = write!(out, "{b:02x}");
                }
                s.serialize_some(&out)
            }
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let Some(s) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        // Bytes, not `str` slices nor `from_str_radix`: a multi-byte character would put a
        // slice boundary inside it (a panic at start-up over one bad journal file, found by
        // fuzzing), and `from_str_radix` takes a leading `+`.
        let hex = s.as_bytes();
        if hex.len() % 2 != 0 || !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(serde::de::Error::custom(
                "options are not an even-length string of hex digits",
            ));
        }
        let nibble = |b: u8| match b {
            b'0'..=b'9' => b - b'0',
            _ => (b | 0x20) - b'a' + 10,
        };
        Ok(Some(
            hex.chunks_exact(2)
                .map(|p| nibble(p[0]) << 4 | nibble(p[1]))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(kind: &str, handle: u32, parent: u32, options: Option<Vec<u8>>) -> TcObject {
        TcObject {
            kind: kind.into(),
            handle,
            parent,
            options,
            has_stab: false,
            extra: Vec::new(),
        }
    }

    fn htb_init(version: u32, direct_pkts: u32) -> Vec<u8> {
        let mut a = super::super::raw::Attrs::new();
        a.attr(
            2,
            &super::super::raw::u32s(&[version, 10, 1, 0, direct_pkts]),
        )
        .u32(5, 1000);
        a.into_bytes()
    }

    fn tree(qdiscs: Vec<TcObject>, classes: Vec<TcObject>) -> QdiscTree {
        QdiscTree {
            ifindex: 7,
            qdiscs,
            classes,
        }
    }

    #[test]
    fn default_and_known_trees_are_restorable() {
        assert_eq!(
            is_faithfully_restorable(&tree(vec![obj("noqueue", 0, TC_H_ROOT, None)], vec![])),
            Ok(())
        );
        // mq 0: with kernel-made children of any kind, plus a user child under queue 1.
        let t = tree(
            vec![
                obj("mq", 0, TC_H_ROOT, Some(vec![])),
                obj("pfifo_fast", 0, 1, None),
                obj("tbf", 0x0011_0000, 2, None),
            ],
            vec![obj("mq", 1, TC_H_ROOT, None), obj("mq", 2, TC_H_ROOT, None)],
        );
        assert_eq!(is_faithfully_restorable(&t), Ok(()));
    }

    #[test]
    fn unreplayable_trees_are_refused() {
        let t = tree(vec![obj("cbs", 0x0001_0000, TC_H_ROOT, None)], vec![]);
        assert!(matches!(
            is_faithfully_restorable(&t),
            Err(NotRestorable::UnknownQdiscKind { .. })
        ));
        let mut stab = obj("tbf", 0x0001_0000, TC_H_ROOT, None);
        stab.has_stab = true;
        assert!(matches!(
            is_faithfully_restorable(&tree(vec![stab], vec![])),
            Err(NotRestorable::SizeTable { .. })
        ));
        // netem with jitter: qopt.jitter (6th u32) non-zero.
        let netem = super::super::raw::u32s(&[1000, 1000, 0, 0, 0, 156_250]);
        let t = tree(
            vec![obj("netem", 0x0001_0000, TC_H_ROOT, Some(netem))],
            vec![],
        );
        assert!(matches!(
            is_faithfully_restorable(&t),
            Err(NotRestorable::NetemDistribution { .. })
        ));
        let t = tree(
            vec![obj("htb", 0x0001_0000, TC_H_ROOT, None)],
            vec![obj("hfsc", 0x0001_0001, TC_H_ROOT, None)],
        );
        assert!(matches!(
            is_faithfully_restorable(&t),
            Err(NotRestorable::UnknownClassKind { .. })
        ));
        let t = tree(vec![obj("tbf", 0x0002_0000, 0x0001_0005, None)], vec![]);
        let err = is_faithfully_restorable(&t).unwrap_err();
        assert_eq!(
            err.to_string(),
            "qdisc 2: has parent 1:5 which is not in the snapshot"
        );
    }

    #[test]
    fn diff_ignores_counters_order_and_foreign_clsact() {
        let a = tree(
            vec![obj(
                "htb",
                0x0001_0000,
                TC_H_ROOT,
                Some(htb_init(0x0003_0011, 0)),
            )],
            vec![],
        );
        let b = tree(
            vec![
                obj("clsact", 0xffff_0000, TC_H_CLSACT, Some(vec![])),
                obj(
                    "htb",
                    0x0001_0000,
                    TC_H_ROOT,
                    Some(htb_init(0x0003_0011, 42)),
                ),
            ],
            vec![obj("fq_codel", 0x0001_0003, 0x0001_0000, None)],
        );
        assert_eq!(a.diff(&b), None);
        // Nor the other way round: a snapshot taken with a clsact equals the tree without it.
        let with_clsact = tree(
            vec![
                obj("clsact", 0xffff_0000, TC_H_CLSACT, Some(vec![])),
                a.qdiscs[0].clone(),
            ],
            vec![],
        );
        assert_eq!(with_clsact.diff(&a), None);
        let c = tree(
            vec![obj(
                "htb",
                0x0001_0000,
                TC_H_ROOT,
                Some(htb_init(0x0003_0011, 0)),
            )],
            vec![],
        );
        let mut changed = c.clone();
        changed.qdiscs[0].options = Some(htb_init(0x0003_0011, 0).into_iter().rev().collect());
        assert_eq!(
            c.diff(&changed).as_deref(),
            Some("qdisc htb 1: parent root has different options")
        );
        assert_eq!(
            c.diff(&tree(vec![], vec![])).as_deref(),
            Some("qdisc htb 1: parent root is missing")
        );
    }

    #[test]
    fn htb_options_are_made_replayable() {
        let o = replayable_options("htb", htb_init(0x0003_0011, 9));
        assert_eq!(o, htb_init(3, 0));
    }

    #[test]
    fn tree_round_trips_through_json() {
        let mut q = obj("tbf", 0xc4a0_0000, TC_H_ROOT, Some(vec![0xde, 0xad, 0x01]));
        q.extra.push((13, vec![1, 0, 0, 0]));
        let t = tree(vec![q, obj("noqueue", 0, TC_H_ROOT, None)], vec![]);
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains("\"options\":\"dead01\""), "{json}");
        assert_eq!(serde_json::from_str::<QdiscTree>(&json).unwrap(), t);
    }
    #[test]
    fn options_that_are_not_hex_digits_are_refused_without_a_panic() {
        let parse = |opts: &str| {
            let json = format!(
                r#"{{"kind":"tbf","handle":1,"parent":2,"options":"{opts}","has_stab":false,"extra":[]}}"#
            );
            serde_json::from_str::<TcObject>(&json).map(|o| o.options)
        };
        assert_eq!(parse("DEad01").unwrap(), Some(vec![0xde, 0xad, 0x01]));
        // A two-byte character at an even length (the fuzzer's find), a sign, odd lengths.
        for bad in ["0\u{41a}a", "+f", "0g", "abc"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("hex digits"), "{bad:?}: {e}");
        }
    }
}
