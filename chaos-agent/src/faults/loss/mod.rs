//! The loss fault type: drops matching packets with a probability (Bernoulli) or in bursts
//! (Gilbert-Elliott), in the eBPF datapath. Its spec and flags are here; the kernel side is the
//! fault's slot (`faults::packet`), which needs no qdisc.

mod args;
mod spec;

use chaos_common::{F_LOSS_GE, FaultSlot, probability_to_threshold};

pub use args::LossArgs;
pub use spec::{GilbertElliott, LossSpec};

impl LossSpec {
    /// Writes the loss into the fault's datapath slot: a Bernoulli threshold, or the
    /// Gilbert-Elliott transition and loss probabilities (`F_LOSS_GE`).
    pub fn configure(&self, slot: &mut FaultSlot) {
        match &self.model {
            None => slot.loss_threshold = probability_to_threshold(self.probability),
            Some(ge) => {
                slot.flags |= F_LOSS_GE;
                slot.ge_p = probability_to_threshold(ge.p);
                slot.ge_r = probability_to_threshold(ge.r);
                slot.ge_loss_bad = probability_to_threshold(ge.loss_bad);
                slot.loss_threshold = probability_to_threshold(ge.loss_good);
            }
        }
    }
}
