//! The shaping fault type: delay, jitter, bandwidth, corruption, duplication and reordering.
//! The fault's eBPF slot (`faults::packet`) steers matching packets into an agent-owned qdisc
//! (netem, HTB) or stamps their departure time (EDT); `netem` builds those qdiscs.

mod args;
pub mod netem;
mod spec;

pub use args::ShapeArgs;
pub use spec::{JitterDistribution, Rate, ShapeSpec, ShapingBackend};
