//! Types shared by the kernel programs (`chaos-ebpf`) and the agent (`chaos-agent`).
//!
//! Every type that crosses the user/kernel boundary is `#[repr(C)]`, has no `bool` and no
//! implicit padding, and carries a compile-time size assert: a layout change that is not made on
//! both sides at once fails the build instead of corrupting a map.
#![cfg_attr(not(test), no_std)]

pub mod counters;
pub mod dns;
pub mod names;
pub mod table;

pub use counters::*;
pub use table::*;
