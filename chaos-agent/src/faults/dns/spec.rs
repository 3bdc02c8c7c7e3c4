//! DNS answer faults: the spec section, its validation and summary.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use chaos_common::dns::{self as wire, NameError};
use serde::{Deserialize, Serialize};

use crate::spec::{SpecError, check_prob, trim_float};

/// The server port answers come from unless the spec names another.
pub const DEFAULT_PORT: u16 = 53;

/// What a matching answer becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DnsAnswer {
    /// rcode 2: the server failed (resolvers retry, then fail).
    Servfail,
    /// rcode 3: the name does not exist.
    Nxdomain,
    /// rcode 5: the server refuses to answer.
    Refused,
    /// No answer at all: the client times out and retries.
    Drop,
}

impl DnsAnswer {
    /// `FaultSlot::dns`.
    #[must_use]
    pub fn code(self) -> u32 {
        match self {
            Self::Servfail => wire::DNS_ACT_SERVFAIL,
            Self::Nxdomain => wire::DNS_ACT_NXDOMAIN,
            Self::Refused => wire::DNS_ACT_REFUSED,
            Self::Drop => wire::DNS_ACT_DROP,
        }
    }

    /// Lower-case name, as in the spec.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Servfail => "servfail",
            Self::Nxdomain => "nxdomain",
            Self::Refused => "refused",
            Self::Drop => "drop",
        }
    }
}

/// Query types by mnemonic (RFC 1035, 3596, 2782, 6891, 9460 and the IANA registry); any other
/// type can be given as `TYPEnnn` (RFC 3597).
const TYPES: &[(&str, u16)] = &[
    ("A", 1),
    ("NS", 2),
    ("CNAME", 5),
    ("SOA", 6),
    ("PTR", 12),
    ("HINFO", 13),
    ("MX", 15),
    ("TXT", 16),
    ("AAAA", 28),
    ("SRV", 33),
    ("NAPTR", 35),
    ("DS", 43),
    ("SSHFP", 44),
    ("RRSIG", 46),
    ("DNSKEY", 48),
    ("TLSA", 52),
    ("SVCB", 64),
    ("HTTPS", 65),
    ("ANY", 255),
    ("CAA", 257),
];

/// A query type, written as its mnemonic (`AAAA`) or `TYPEnnn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DnsType(pub u16);

impl FromStr for DnsType {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let up = s.trim().to_ascii_uppercase();
        if let Some(&(_, v)) = TYPES.iter().find(|(n, _)| *n == up) {
            return Ok(Self(v));
        }
        up.strip_prefix("TYPE")
            .and_then(|n| n.parse::<u16>().ok())
            .map(Self)
            .ok_or_else(|| SpecError::BadDnsType {
                input: s.to_owned(),
            })
    }
}

impl fmt::Display for DnsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match TYPES.iter().find(|(_, v)| *v == self.0) {
            Some((n, _)) => f.write_str(n),
            None => write!(f, "TYPE{}", self.0),
        }
    }
}

impl TryFrom<String> for DnsType {
    type Error = SpecError;
    fn try_from(s: String) -> Result<Self, SpecError> {
        s.parse()
    }
}

impl From<DnsType> for String {
    fn from(t: DnsType) -> Self {
        t.to_string()
    }
}

/// DNS answer fault section of a spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSpec {
    /// What matching answers become.
    pub answer: DnsAnswer,
    /// Only questions for these names or names under them (label-aligned, case-insensitive
    /// suffixes; empty: every name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// Only questions of these types (empty: every type).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<DnsType>,
    /// Fraction of matching answers to fault, in (0, 1] (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// The server's port, where answers come from (default 53).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl DnsSpec {
    /// Checks names, types, rate and port.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.domains.len() > wire::MAX_DOMAINS_PER_FAULT {
            return Err(SpecError::TooMany {
                what: "DNS domains",
                max: wire::MAX_DOMAINS_PER_FAULT,
                got: self.domains.len(),
            });
        }
        if self.types.len() > wire::MAX_TYPES_PER_FAULT {
            return Err(SpecError::TooMany {
                what: "DNS types",
                max: wire::MAX_TYPES_PER_FAULT,
                got: self.types.len(),
            });
        }
        for d in &self.domains {
            check_domain(d)?;
        }
        if let Some(r) = self.rate {
            check_prob("dns rate", r, false)?;
        }
        if self.port == Some(0) {
            return Err(SpecError::BadPortRange {
                input: "0".to_owned(),
            });
        }
        Ok(())
    }

    /// The server port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(DEFAULT_PORT)
    }

    /// The name filters as the fault table takes them (a listed root `.` means every name, so
    /// it is no filter).
    #[must_use]
    pub fn name_keys(&self) -> Vec<Vec<u8>> {
        if self.domains.iter().any(|d| d == "." || d.is_empty()) {
            return Vec::new();
        }
        let mut v: Vec<Vec<u8>> = self
            .domains
            .iter()
            .filter_map(|d| wire::name_key(d).ok().map(|(k, n)| k[..n].to_vec()))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The type filters.
    #[must_use]
    pub fn type_codes(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self.types.iter().map(|t| t.0).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// e.g. `dns servfail for example.com (A, AAAA) 30%`.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut s = format!("dns {}", self.answer.as_str());
        if !self.domains.is_empty() {
            s.push_str(" for ");
            s.push_str(&self.domains.join(","));
        }
        if !self.types.is_empty() {
            let t: Vec<String> = self.types.iter().map(ToString::to_string).collect();
            let _ = write!(s, " ({})", t.join(","));
        }
        if let Some(r) = self.rate {
            let _ = write!(s, " {}%", trim_float(r * 100.0));
        }
        if self.port() != DEFAULT_PORT {
            let _ = write!(s, " from port {}", self.port());
        }
        s
    }
}

/// A domain suffix: a DNS name in presentation form (a trailing dot allowed), with labels of
/// letters, digits, `-` and `_` (service labels such as `_sip._tcp`), each 1 to 63 bytes, the
/// whole at most 253 characters (255 bytes on the wire).
fn check_domain(d: &str) -> Result<(), SpecError> {
    let bad = |why: &str| SpecError::BadDomain {
        input: d.to_owned(),
        why: why.to_owned(),
    };
    if d == "." {
        return Ok(());
    }
    if d.is_empty() {
        return Err(bad("empty (use \".\" for every name)"));
    }
    if let Some(c) = d
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(bad(&format!(
            "{c:?} is not allowed (letters, digits, '-', '_' and '.' only; no wildcards: a domain matches every name under it)"
        )));
    }
    match wire::name_key(d) {
        Ok(_) => Ok(()),
        Err(NameError::EmptyLabel) => Err(bad("empty label")),
        Err(NameError::LabelTooLong) => Err(bad("a label is longer than 63 bytes")),
        Err(NameError::NameTooLong) => Err(bad("longer than 253 characters")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(domains: &[&str]) -> DnsSpec {
        DnsSpec {
            answer: DnsAnswer::Servfail,
            domains: domains.iter().map(|s| (*s).to_owned()).collect(),
            types: Vec::new(),
            rate: None,
            port: None,
        }
    }

    #[test]
    fn types_by_name_and_number() {
        assert_eq!("aaaa".parse::<DnsType>().unwrap(), DnsType(28));
        assert_eq!("SRV".parse::<DnsType>().unwrap(), DnsType(33));
        assert_eq!("TYPE65534".parse::<DnsType>().unwrap(), DnsType(65534));
        assert_eq!(DnsType(65534).to_string(), "TYPE65534");
        assert_eq!(DnsType(1).to_string(), "A");
        for bad in ["AAAAA", "TYPE", "TYPE70000", "", "A1"] {
            assert!(bad.parse::<DnsType>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn domains_are_checked() {
        assert!(
            spec(&["example.com", "a.b.", "_sip._tcp.example.com", "."])
                .validate()
                .is_ok()
        );
        for bad in [
            "",
            "a..b",
            ".a",
            "*.example.com",
            "exa mple.com",
            "ex\u{e9}.com",
            &"x".repeat(64),
        ] {
            assert!(spec(&[bad]).validate().is_err(), "{bad:?}");
        }
        let long = ["a".repeat(63).as_str(); 4].join(".");
        assert!(spec(&[&long]).validate().is_err());
    }

    #[test]
    fn keys_dedup_and_root_means_every_name() {
        let s = spec(&["Example.com", "example.com.", "b.test"]);
        assert_eq!(s.name_keys().len(), 2);
        assert!(spec(&["example.com", "."]).name_keys().is_empty());
    }

    #[test]
    fn rate_and_port() {
        let mut s = spec(&[]);
        s.rate = Some(0.0);
        assert!(s.validate().is_err());
        s.rate = Some(f64::NAN);
        assert!(s.validate().is_err());
        s.rate = Some(0.3);
        s.port = Some(5353);
        assert!(s.validate().is_ok());
        assert_eq!(s.summary(), "dns servfail 30% from port 5353");
    }

    #[test]
    fn json_rejects_unknown_fields_and_types() {
        assert!(serde_json::from_str::<DnsSpec>(r#"{"answer":"servfail","x":1}"#).is_err());
        assert!(serde_json::from_str::<DnsSpec>(r#"{"answer":"servfail","types":["B"]}"#).is_err());
        let s: DnsSpec =
            serde_json::from_str(r#"{"answer":"nxdomain","types":["A","TYPE99"]}"#).unwrap();
        assert_eq!(s.type_codes(), vec![1, 99]);
    }
}
