//! Traffic control over rtnetlink: the qdiscs, classes, filters and IFB devices the latency /
//! bandwidth faults are built from, and an exact snapshot/restore of a device's qdisc tree.
//!
//! - [`encode`]: typed options (netem, tbf, htb, prio, fq, clsact, ingress) and message builders
//!   whose bytes equal what iproute2's `tc` sends (tested against captured fixtures).
//! - [`Tc`]: an async client over one rtnetlink socket that sends those messages.
//! - [`Tc::install_steering_root`] / [`Tc::add_fault_slot`]: the agent's HTB root whose classes
//!   the eBPF classifier selects through `skb->priority` (layout in `steer.rs`).
//! - [`QdiscTree`]: a serialisable snapshot (kept in the crash journal) that [`Tc::restore`]
//!   replays, and [`is_faithfully_restorable`] vets.
//!
//! Everything the agent creates uses handle major [`OUR_MAJOR`] (`c4a0:`), so that a restarted
//! agent can recognise its own root with [`Tc::find_ours`].

mod client;
mod dist;
pub mod dump;
mod encode;
mod error;
mod filters;
pub mod raw;
mod snapshot;
mod steer;

#[cfg(test)]
mod fixture_tests;

pub use client::Tc;
pub use dist::Distribution;
pub use encode::{
    FqOptions, HtbClassOptions, HtbOptions, NetemLoss, NetemOptions, NetemRate, NetemSlot,
    PrioOptions, Qdisc, TbfLimit, TbfOptions, class_del_message, filter_del_message,
    htb_class_message, ifb_link_message, mirred_redirect_filter_message, netem_limit,
    qdisc_del_message, qdisc_message, raw_class_message, tc_handle,
};
pub use error::{NotRestorable, TcError, TcHandleFmt, module_for_kind};
pub use filters::{Hook, OurFilter};
pub use snapshot::{QdiscTree, TcObject, is_faithfully_restorable};
pub use steer::{
    DEFAULT_CLASSID, FAULT_SLOTS, default_leaf_from, fault_classid, fault_leaf_handle,
};

/// Handle major of every qdisc the agent creates (`c4a0:`), see docs/design.md.
pub const OUR_MAJOR: u16 = 0xC4A0;
/// The agent's root qdisc handle, `c4a0:`.
pub const OUR_ROOT: u32 = (OUR_MAJOR as u32) << 16;
/// `TC_H_ROOT`: the parent of a device's root qdisc.
pub const TC_H_ROOT: u32 = 0xFFFF_FFFF;
/// `TC_H_CLSACT` / `TC_H_INGRESS`: the parent of the clsact and ingress qdiscs.
pub const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
/// The handle of the clsact / ingress qdisc, `ffff:`.
pub const TC_H_INGRESS_HANDLE: u32 = 0xFFFF_0000;
/// clsact's ingress hook, the parent of ingress filters under clsact (`ffff:fff2`).
pub const TC_H_CLSACT_INGRESS: u32 = 0xFFFF_FFF2;
