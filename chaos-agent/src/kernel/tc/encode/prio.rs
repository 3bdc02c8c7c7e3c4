//! prio: strict priority bands.

use serde::{Deserialize, Serialize};

use super::super::raw::Attrs;
use super::common::TCA_OPTIONS;

/// prio qdisc options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrioOptions {
    /// Number of bands (2..=16).
    pub bands: u32,
    /// Band for each of the 16 `skb->priority` values (`TC_PRIO_*`).
    pub priomap: [u8; 16],
}

impl Default for PrioOptions {
    fn default() -> Self {
        // The kernel's (and pfifo_fast's) default map.
        Self {
            bands: 3,
            priomap: [1, 2, 2, 2, 1, 2, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1],
        }
    }
}

impl PrioOptions {
    /// The `TCA_OPTIONS` payload: `struct tc_prio_qopt` then an empty compat nest, as
    /// iproute2's `addattr_nest_compat` writes it.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut a = Attrs::new();
        a.raw(&self.bands.to_ne_bytes())
            .raw(&self.priomap)
            .attr(TCA_OPTIONS, &[]);
        a.into_bytes()
    }
}
