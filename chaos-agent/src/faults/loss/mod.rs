//! The loss fault type: drops matching packets with a probability (Bernoulli) or in bursts
//! (Gilbert-Elliott), in the eBPF datapath. Its spec and flags are here; the kernel side is the
//! fault's slot (`faults::packet`), which needs no qdisc.

mod args;
mod spec;

pub use args::LossArgs;
pub use spec::{GilbertElliott, LossSpec};
