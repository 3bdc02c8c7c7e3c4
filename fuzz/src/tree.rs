//! The invariants of a qdisc tree snapshot, however it arrived (a netlink dump, a journal file).

use chaos_agent::kernel::tc::{
    Qdisc, QdiscTree, TC_H_ROOT, default_leaf_from, is_faithfully_restorable, qdisc_message,
};
use chaos_agent::txn::undo::Undo;

/// What the agent does with a snapshot before it trusts it (decide whether it can be restored,
/// pick the leaf untargeted traffic keeps, compare it with a later dump, journal it) must not
/// panic, and the comparison and the journal must be faithful:
/// - a tree never differs from itself, nor from itself with its counters zeroed;
/// - zeroing counters is idempotent;
/// - the leaf kept for untargeted traffic is the dumped object, options byte for byte;
/// - the journal's JSON of the tree (inside its undo record) parses back to the same tree.
pub fn check(tree: &QdiscTree) {
    if let Err(e) = is_faithfully_restorable(tree) {
        let _ = e.to_string();
    }
    assert_eq!(tree.diff(tree), None, "a tree differs from itself");
    let normalized = QdiscTree {
        ifindex: tree.ifindex,
        qdiscs: tree.qdiscs.iter().map(|o| o.normalized()).collect(),
        classes: tree.classes.iter().map(|o| o.normalized()).collect(),
    };
    for o in normalized.qdiscs.iter().chain(&normalized.classes) {
        assert_eq!(&o.normalized(), o, "normalized() is not idempotent");
    }
    assert_eq!(
        tree.diff(&normalized),
        None,
        "counters zeroed make a difference"
    );
    assert_eq!(
        normalized.diff(tree),
        None,
        "counters zeroed make a difference"
    );
    if let Some(root) = tree.root() {
        assert_eq!(root.parent, TC_H_ROOT);
    }
    if let Some(leaf) = default_leaf_from(tree) {
        let Qdisc::Raw { kind, options } = &leaf else {
            panic!("the default leaf is not a replayed object: {leaf:?}");
        };
        assert!(
            tree.qdiscs
                .iter()
                .any(|q| &q.kind == kind && &q.options == options),
            "the default leaf {kind} is not one of the dumped qdiscs"
        );
        let _ = qdisc_message(tree.ifindex.max(1), 0xc4a0_0001, 0xc5a1_0000, &leaf);
    }
    let undo = Undo::RestoreQdisc {
        ifname: "eth0".to_owned(),
        tree: Box::new(tree.clone()),
        force: false,
    };
    crate::assert_json_round_trip(&undo, "journaled qdisc tree");
}
