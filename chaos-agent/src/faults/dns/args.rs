//! The DNS fault's command-line flags (flattened into `chaos-agent inject`).

use super::{DnsAnswer, DnsSpec, DnsType};

/// DNS answer flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "DNS answers")]
pub struct DnsArgs {
    /// Fault DNS answers from the server port: rewrite them to this rcode (a valid message
    /// with no records) or drop them. Answers over TCP are dropped. The direction defaults to
    /// ingress here (answers arriving, also on `lo`); use `--direction egress` for answers a
    /// DNS server on this host sends.
    #[arg(id = "dns_answer", long = "dns", value_enum, value_name = "ANSWER")]
    pub answer: Option<DnsAnswer>,
    /// Only questions for this name or names under it (repeatable; label-aligned,
    /// case-insensitive: `example.com` matches `a.Example.com`, not `badexample.com`).
    #[arg(id = "dns_domains", long = "dns-domain", value_name = "SUFFIX")]
    pub domains: Vec<String>,
    /// Only questions of this type (repeatable): A, AAAA, SRV, TXT, MX, ... or `TYPEnnn`.
    #[arg(id = "dns_types", long = "dns-type", value_name = "TYPE")]
    pub types: Vec<DnsType>,
    /// Fault this fraction of the matching answers, in (0, 1] (`0.3` or `30%`).
    #[arg(id = "dns_rate", long = "dns-rate", value_name = "P", value_parser = crate::spec::parse_probability_arg)]
    pub rate: Option<f64>,
    /// The DNS server's port, which answers come from (default 53).
    #[arg(id = "dns_port", long = "dns-port", value_name = "PORT")]
    pub port: Option<u16>,
}

impl DnsArgs {
    /// The spec section the flags ask for; an error if a DNS filter is given without `--dns`.
    pub fn to_spec(&self) -> Result<Option<DnsSpec>, String> {
        let Some(answer) = self.answer else {
            if !self.domains.is_empty()
                || !self.types.is_empty()
                || self.rate.is_some()
                || self.port.is_some()
            {
                return Err(
                    "--dns-domain, --dns-type, --dns-rate and --dns-port need --dns ANSWER"
                        .to_owned(),
                );
            }
            return Ok(None);
        };
        Ok(Some(DnsSpec {
            answer,
            domains: self.domains.clone(),
            types: self.types.clone(),
            rate: self.rate,
            port: self.port,
        }))
    }
}
