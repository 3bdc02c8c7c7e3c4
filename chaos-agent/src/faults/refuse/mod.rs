//! The refuse fault type: new `connect()`s (TCP, and UDP sockets that connect) to matching
//! destinations fail at once with a chosen errno, as if the dependency refused them or the
//! network had no route. The spec, validation and flags are here; the kernel side is a fault
//! table slot joined to the connect hook of the agent's network namespace (the cgroup
//! `connect4`/`connect6` programs in `chaos-ebpf/src/connect.rs`, attached to the cgroup v2
//! root by `kernel::bpf::Datapath::join_connect`).

mod args;
mod spec;

use chaos_common::{F_REFUSE, FaultSlot, probability_to_threshold};

pub use args::RefuseArgs;
pub use spec::{RefuseErrno, RefuseSpec};

impl RefuseSpec {
    /// Writes the fault into its datapath slot: the errno, and the fraction of matching
    /// connects refused.
    pub fn configure(&self, slot: &mut FaultSlot) {
        slot.flags |= F_REFUSE;
        slot.errno = self.errno.code();
        slot.loss_threshold = probability_to_threshold(self.rate.unwrap_or(1.0));
    }
}
