//! [`Qdisc`]: every kind the agent creates, with its options; clsact and ingress take none.

use super::super::error::TcError;
use super::fq::FqOptions;
use super::htb::HtbOptions;
use super::netem::NetemOptions;
use super::prio::PrioOptions;
use super::tbf::TbfOptions;

/// A qdisc to create, with its options.
#[derive(Debug, Clone, PartialEq)]
pub enum Qdisc {
    /// Network emulator.
    Netem(NetemOptions),
    /// Token bucket filter.
    Tbf(TbfOptions),
    /// Hierarchical token bucket.
    Htb(HtbOptions),
    /// Strict priority bands.
    Prio(PrioOptions),
    /// Fair queue (honours EDT timestamps).
    Fq(FqOptions),
    /// The clsact pseudo-qdisc (ingress and egress filter hooks).
    Clsact,
    /// The ingress pseudo-qdisc.
    Ingress,
    /// Any kind with options given as raw `TCA_OPTIONS` bytes (used to replay snapshots).
    Raw {
        /// Kind name.
        kind: String,
        /// Raw `TCA_OPTIONS` value.
        options: Option<Vec<u8>>,
    },
}

impl Qdisc {
    /// The kind name the kernel knows it by.
    #[must_use]
    pub fn kind(&self) -> &str {
        match self {
            Self::Netem(_) => "netem",
            Self::Tbf(_) => "tbf",
            Self::Htb(_) => "htb",
            Self::Prio(_) => "prio",
            Self::Fq(_) => "fq",
            Self::Clsact => "clsact",
            Self::Ingress => "ingress",
            Self::Raw { kind, .. } => kind,
        }
    }

    /// The `TCA_OPTIONS` value, if the kind takes one.
    pub fn options(&self) -> Result<Option<Vec<u8>>, TcError> {
        Ok(match self {
            Self::Netem(o) => Some(o.encode()?),
            Self::Tbf(o) => Some(o.encode()?),
            Self::Htb(o) => Some(o.encode()),
            Self::Prio(o) => Some(o.encode()),
            Self::Fq(o) => Some(o.encode()),
            Self::Clsact | Self::Ingress => None,
            Self::Raw { options, .. } => options.clone(),
        })
    }
}
