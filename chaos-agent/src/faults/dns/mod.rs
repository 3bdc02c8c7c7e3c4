//! The DNS answer fault type: responses to matching questions are rewritten in the kernel into
//! valid messages with a failing rcode (`SERVFAIL`, `NXDOMAIN`, `REFUSED`), or dropped so that
//! the client times out. The spec, its validation and flags are here; the kernel side is the
//! fault's slot (`faults::packet`) plus the name and type dimensions of the fault table, and the
//! parser and rewriter in `chaos-ebpf/src/dns.rs`.

mod args;
mod spec;

use chaos_common::{F_DNS, FaultSlot, probability_to_threshold};

pub use args::DnsArgs;
pub use spec::{DEFAULT_PORT, DnsAnswer, DnsSpec, DnsType};

impl DnsSpec {
    /// Writes the fault into its datapath slot: what to do with a matching answer, and the
    /// fraction of matching answers to do it to.
    pub fn configure(&self, slot: &mut FaultSlot) {
        slot.flags |= F_DNS;
        slot.dns = self.answer.code();
        slot.loss_threshold = probability_to_threshold(self.rate.unwrap_or(1.0));
    }
}
