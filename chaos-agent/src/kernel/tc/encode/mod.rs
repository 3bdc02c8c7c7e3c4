//! Typed qdisc/class/filter options and their encoders into netlink-packet-route messages.
//!
//! netlink-packet-route 0.34 has no types for netem, tbf, htb, prio or fq, so each encoder
//! builds the raw `TCA_OPTIONS` payload and sends it as one opaque attribute
//! (`TcAttribute::Other(DefaultNla)`). That also covers netem, whose `TCA_OPTIONS` starts with a
//! bare `struct tc_netem_qopt` and cannot be expressed as a list of attributes. Attribute order and
//! defaults follow iproute2 6.1 so that the fixture tests can compare bytes.
//!
//! One file per qdisc family ([`netem`], [`tbf`], [`htb`], [`prio`], [`fq`]), so that a new
//! qdisc's encoder is a file of its own; [`Qdisc`] (in `qdisc.rs`) names them all, clsact and
//! ingress included, and `messages.rs` wraps options into the qdisc/class/filter/link messages.
//! The attribute writer and the ratespec arithmetic they share are in `super::raw`; `common.rs`
//! holds the `TCA_OPTIONS` type and the parameter checks.

mod common;
mod fq;
mod htb;
mod messages;
mod netem;
mod prio;
mod qdisc;
mod tbf;

pub use fq::FqOptions;
pub use htb::{HtbClassOptions, HtbOptions};
pub use messages::{
    class_del_message, filter_del_message, htb_class_message, ifb_link_message,
    mirred_redirect_filter_message, qdisc_del_message, qdisc_message, raw_class_message, tc_handle,
};
pub use netem::{NetemLoss, NetemOptions, NetemRate, NetemSlot, netem_limit};
pub use prio::PrioOptions;
pub use qdisc::Qdisc;
pub use tbf::{TbfLimit, TbfOptions};
