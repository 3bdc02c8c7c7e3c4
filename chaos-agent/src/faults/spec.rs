//! [`FaultSpec`]: the user-facing description of a fault, shared by the CLI, the API and the
//! journal. It is the registry of fault types in the wire format: one optional section per type
//! (`loss`, `shape`), each defined and validated in its own room under `faults/`. Validation
//! happens once, here; the fault types convert a valid spec into kernel configuration without
//! re-checking.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::dns::DnsSpec;
use super::limit::LimitSpec;
use super::loss::LossSpec;
use super::refuse::RefuseSpec;
use super::reset::ResetSpec;
use super::shape::ShapeSpec;
use super::stress::StressSpec;
use crate::spec::{Limits, SpecError};
use crate::target::Target;

/// A fault: what to do, to which packets, for how long.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// How long the fault lasts. Required; at most the configured maximum.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Which packets.
    #[serde(default)]
    pub target: Target,
    /// Packet loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<LossSpec>,
    /// Delay, jitter, rate, corruption, duplication, reordering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<ShapeSpec>,
    /// DNS answers rewritten to a failing rcode, or dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsSpec>,
    /// New `connect()`s to the target fail with an errno.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refuse: Option<RefuseSpec>,
    /// Established TCP connections are aborted (once, or every `every`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<ResetSpec>,
    /// Resource limits written into the target's cgroup (CPU, memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<LimitSpec>,
    /// Stressors run for the fault's life (CPU workers, held memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stress: Option<StressSpec>,
    /// An on/off duty cycle (`2s/3s`): the fault acts for ON, rests for OFF, until its TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flap: Option<super::flap::Flap>,
    /// Apply even if the interface's qdisc tree cannot be restored exactly afterwards.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Seed for reproducible randomness (per CPU; reproducible for one flow on one CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Free text for humans (experiment name...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl FaultSpec {
    /// Checks everything that can be checked without touching the kernel.
    pub fn validate(&self, limits: &Limits) -> Result<(), SpecError> {
        if self.ttl.is_zero() {
            return Err(SpecError::TtlZero);
        }
        let max = limits.effective_max_ttl();
        if self.ttl > max {
            return Err(SpecError::TtlTooLong { ttl: self.ttl, max });
        }
        if let Some(label) = &self.label {
            let control = label.chars().any(char::is_control);
            if label.len() > crate::spec::MAX_LABEL_BYTES || control {
                return Err(SpecError::BadLabel {
                    got: label.len(),
                    max: crate::spec::MAX_LABEL_BYTES,
                    control,
                });
            }
        }
        self.target.validate()?;
        self.check_scope()?;
        if let Some(flap) = &self.flap {
            flap.validate(self.ttl)?;
        }
        let mut effect = false;
        if let Some(loss) = &self.loss {
            loss.validate()?;
            effect = true;
        }
        if let Some(sh) = &self.shape {
            sh.validate(&self.target)?;
            effect |= !sh.is_empty();
        }
        if let Some(dns) = &self.dns {
            if effect {
                // One slot, one action: a DNS fault's probability is the fraction of answers.
                return Err(SpecError::Incompatible {
                    what: "a DNS fault cannot also carry loss or shaping",
                });
            }
            if !self.target.protocols.is_empty()
                && !self
                    .target
                    .protocols
                    .iter()
                    .any(|p| matches!(p, crate::target::Proto::Udp | crate::target::Proto::Tcp))
            {
                return Err(SpecError::Incompatible {
                    what: "a DNS fault acts on UDP and TCP answers, not on --proto icmp",
                });
            }
            dns.validate()?;
            effect = true;
        }
        if let Some(refuse) = &self.refuse {
            if effect {
                return Err(SpecError::Incompatible {
                    what: "a refuse fault acts on connect() calls, not on packets: it cannot also carry loss, shaping or DNS",
                });
            }
            self.check_refuse_target()?;
            refuse.validate()?;
            effect = true;
        }
        if let Some(reset) = &self.reset {
            if effect {
                return Err(SpecError::Incompatible {
                    what: "a reset fault aborts connections, it does not act on packets or connects: it cannot also carry loss, shaping, DNS or --refuse",
                });
            }
            self.check_reset_target()?;
            reset.validate(self.ttl)?;
            effect = true;
        }
        if let Some(limit) = &self.limit {
            if effect {
                return Err(SpecError::Incompatible {
                    what: "a limit fault changes cgroup values, not packets or connections: it cannot also carry loss, shaping, DNS, --refuse or --reset",
                });
            }
            self.check_limit_target()?;
            limit.validate()?;
            effect = true;
        }
        if let Some(stress) = &self.stress {
            if effect {
                return Err(SpecError::Incompatible {
                    what: "a stress fault runs stressors: it cannot also carry packet, connection or limit faults",
                });
            }
            self.check_stress_target(stress)?;
            stress.validate(self.ttl)?;
            effect = true;
        }
        if !effect {
            return Err(SpecError::NoEffect);
        }
        Ok(())
    }

    /// Stressors run in a cgroup of their own, or with `inside` below the target's.
    fn check_stress_target(&self, s: &StressSpec) -> Result<(), SpecError> {
        let t = &self.target;
        let why = if s.inside && !t.scoped() {
            Some(
                "--inside needs the cgroup to press from within: --cgroup, --pid, --unit or --container",
            )
        } else if !s.inside && t.scoped() {
            Some(
                "stressors run in a cgroup of their own: add --inside to run them below the target's cgroup",
            )
        } else if t.names_packets() {
            Some(
                "a stress fault runs processes: --iface, --src, --dest, --sport, --dport, --proto, --direction and --include-protected do not apply",
            )
        } else {
            None
        };
        why.map_or(Ok(()), |what| Err(SpecError::Inapplicable { what }))
    }

    /// A limit fault names processes (a cgroup), never packets.
    fn check_limit_target(&self) -> Result<(), SpecError> {
        let t = &self.target;
        let why = if !t.scoped() {
            Some(
                "a limit fault needs the processes to limit: --cgroup, --pid, --unit or --container",
            )
        } else if t.names_packets() {
            Some(
                "a limit fault acts on a cgroup's resources: --iface, --src, --dest, --sport, --dport, --proto, --direction and --include-protected do not apply",
            )
        } else {
            None
        };
        why.map_or(Ok(()), |what| Err(SpecError::Inapplicable { what }))
    }

    /// A fault scoped to a cgroup matches a packet by its socket's cgroup: on egress at tc, on
    /// ingress with a cgroup program that runs as the socket takes the packet (tc ingress runs
    /// before the socket lookup), which may only drop. A connect is matched by its process and
    /// a connection (reset) by the cgroup of the socket's creator.
    fn check_scope(&self) -> Result<(), SpecError> {
        let t = &self.target;
        if !t.scoped() {
            return Ok(());
        }
        // `cgroup` beside `unit` or `container` is their resolved form (checked at inject).
        let named = usize::from(t.pid.is_some())
            + usize::from(t.unit.is_some())
            + usize::from(t.container.is_some())
            + usize::from(t.pod.is_some())
            + usize::from(
                t.cgroup.is_some() && t.unit.is_none() && t.container.is_none() && t.pod.is_none(),
            );
        // A container (or pod) not resolved yet may turn out to have a network namespace of
        // its own, where its interface, not its sockets, is what the fault matches (any
        // direction).
        let unresolved_container =
            (t.container.is_some() || t.pod.is_some()) && t.cgroup_id.is_none();
        let why = if named > 1 {
            Some("--cgroup, --unit, --pid, --container and --pod each name the processes: give one")
        } else if t.pod_container.is_some() && t.pod.is_none() {
            Some("--pod-container names a container of the pod given with --pod")
        } else if t.direction.ingress()
            && self.reset.is_none()
            && t.by_socket_cgroup()
            && !unresolved_container
            && (self.shape.is_some() || self.dns.is_some())
        {
            Some(
                "what processes of a scope receive is seen with their socket only by a cgroup program, which can pass or drop but not delay, shape or rewrite: at ingress a scoped fault is loss; shaping and DNS act on their egress (--direction egress)",
            )
        } else if t.netns.is_some() && self.needs_interface() && t.container_iface.is_none() {
            Some(
                "this container's network namespace has no veth whose other end is in the agent's: loss, shaping and DNS act on that host-side end",
            )
        } else if t.container_iface.is_some() && (t.netns.is_none() || !self.needs_interface()) {
            Some(
                "a container interface names the host side of a container's own network namespace: it applies to loss, shaping and DNS only",
            )
        } else {
            None
        };
        why.map_or(Ok(()), |what| Err(SpecError::Inapplicable { what }))
    }

    /// A refuse fault sees a `connect()`: its destination, port and protocol, but no source
    /// yet and no packet direction.
    fn check_refuse_target(&self) -> Result<(), SpecError> {
        let t = &self.target;
        let why = if t.iface.is_some() {
            Some(
                "a refuse fault acts on connect() calls of every process in the agent's network namespace: --iface does not apply",
            )
        } else if !t.src.is_empty() || !t.sports.is_empty() {
            Some(
                "a refuse fault matches a connect() by its destination: --src and --sport do not apply (the source is not chosen yet)",
            )
        } else if t.direction != crate::target::Direction::Egress {
            Some("a refuse fault acts on outgoing connect() calls: --direction must be egress")
        } else if t
            .protocols
            .iter()
            .any(|p| matches!(p, crate::target::Proto::Icmp))
        {
            Some("a refuse fault acts on TCP and UDP connect() calls, not on --proto icmp")
        } else {
            None
        };
        why.map_or(Ok(()), |what| Err(SpecError::Inapplicable { what }))
    }

    /// A reset fault matches connections by their two ends, in the agent's namespace.
    fn check_reset_target(&self) -> Result<(), SpecError> {
        let t = &self.target;
        let why = if t.iface.is_some() {
            Some(
                "a reset fault acts on the TCP connections of the agent's network namespace: --iface does not apply",
            )
        } else if t.direction != crate::target::Direction::Egress {
            Some(
                "a reset fault matches a connection by its local (--src/--sport) and remote (--dest/--dport) ends: --direction does not apply",
            )
        } else if t
            .protocols
            .iter()
            .any(|p| !matches!(p, crate::target::Proto::Tcp))
        {
            Some("a reset fault aborts TCP connections: --proto udp and icmp do not apply")
        } else {
            None
        };
        why.map_or(Ok(()), |what| Err(SpecError::Inapplicable { what }))
    }

    /// Whether the fault acts on sockets (connects, connections) rather than on an
    /// interface's packets: it names no interface.
    #[must_use]
    pub fn acts_on_sockets(&self) -> bool {
        self.refuse.is_some() || self.reset.is_some()
    }

    /// Whether the fault acts on an interface's packets (and so names one).
    #[must_use]
    pub fn needs_interface(&self) -> bool {
        !self.acts_on_sockets() && self.limit.is_none() && self.stress.is_none()
    }

    /// The fault's kind, for metrics labels.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        if self.dns.is_some() {
            return "dns";
        }
        if self.refuse.is_some() {
            return "refuse";
        }
        if self.reset.is_some() {
            return "reset";
        }
        if self.limit.is_some() {
            return "limit";
        }
        if self.stress.is_some() {
            return "stress";
        }
        match (&self.loss, &self.shape) {
            (Some(_), Some(_)) => "loss+shape",
            (Some(_), None) => "loss",
            (None, Some(sh)) if sh.needs_netem() => "netem",
            (None, Some(_)) => "rate",
            (None, None) => "none",
        }
    }

    /// A short human summary, e.g. `loss 10% egress on eth0`.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(l) = &self.loss {
            parts.push(l.summary());
        }
        if let Some(sh) = &self.shape {
            parts.extend(sh.summary());
        }
        if let Some(d) = &self.dns {
            parts.push(d.summary());
        }
        if let Some(r) = &self.refuse {
            parts.push(r.summary());
        }
        if let Some(r) = &self.reset {
            parts.push(r.summary());
        }
        if let Some(l) = &self.limit {
            let scope = self.target.scope_name().unwrap_or_default();
            return format!("{} on {scope}", l.summary());
        }
        if let Some(s) = &self.stress {
            return match self.target.scope_name() {
                Some(scope) => format!("{} inside {scope}", s.summary()),
                None => format!("{} in a cgroup of its own", s.summary()),
            };
        }
        let iface = self.target.iface.as_deref().unwrap_or("<default route>");
        let flap = self
            .flap
            .map(|f| format!(", flapping {f}"))
            .unwrap_or_default();
        let scope = self
            .target
            .scope_name()
            .map(|c| format!(" for {c}"))
            .unwrap_or_default();
        if self.acts_on_sockets() {
            return format!(
                "{} in this network namespace{scope}{flap}",
                parts.join(" + ")
            );
        }
        if let Some(inner) = &self.target.container_iface {
            return format!(
                "{} {} on the container's {inner} (host side {iface}){scope}{flap}",
                parts.join(" + "),
                self.target.direction
            );
        }
        format!(
            "{} {} on {iface}{scope}{flap}",
            parts.join(" + "),
            self.target.direction
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::loss::GilbertElliott;
    use crate::faults::shape::Rate;
    use crate::target::PortRange;

    fn loss(p: f64) -> FaultSpec {
        FaultSpec {
            ttl: Duration::from_secs(30),
            target: Target::default(),
            loss: Some(LossSpec {
                probability: p,
                model: None,
            }),
            shape: None,
            dns: None,
            refuse: None,
            reset: None,
            limit: None,
            stress: None,
            flap: None,
            force: false,
            seed: None,
            label: None,
        }
    }

    #[test]
    fn port_ranges_parse() {
        assert_eq!(
            "80".parse::<PortRange>().unwrap(),
            PortRange { lo: 80, hi: 80 }
        );
        assert_eq!(
            "8000-8100".parse::<PortRange>().unwrap(),
            PortRange { lo: 8000, hi: 8100 }
        );
        for bad in ["0", "10-5", "70000", "a-b", "", "-5"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn probabilities_are_checked() {
        let l = Limits::default();
        assert!(loss(0.1).validate(&l).is_ok());
        assert!(loss(1.0).validate(&l).is_ok());
        for p in [0.0, -0.1, 1.01, f64::NAN] {
            assert!(
                matches!(loss(p).validate(&l), Err(SpecError::Probability { .. })),
                "{p}"
            );
        }
    }

    #[test]
    fn ttl_ceiling_and_labels() {
        let huge = Limits {
            max_ttl: Duration::from_secs(u64::MAX),
        };
        let mut s = loss(0.1);
        s.ttl = Duration::from_hours(600 * 365 * 24);
        assert!(matches!(
            s.validate(&huge),
            Err(SpecError::TtlTooLong { max, .. }) if max == crate::spec::MAX_TTL_CEILING
        ));
        s.ttl = Duration::from_secs(30);
        s.label = Some("x".repeat(crate::spec::MAX_LABEL_BYTES));
        assert!(s.validate(&Limits::default()).is_ok());
        s.label = Some("x".repeat(crate::spec::MAX_LABEL_BYTES + 1));
        assert!(matches!(
            s.validate(&Limits::default()),
            Err(SpecError::BadLabel { got: 257, .. })
        ));
        s.label = Some("game\nday".to_owned());
        let e = s
            .validate(&Limits::default())
            .expect_err("control character");
        assert!(e.to_string().contains("control characters"), "{e}");
    }

    #[test]
    fn ttl_is_bounded() {
        let l = Limits {
            max_ttl: Duration::from_mins(1),
        };
        let mut s = loss(0.5);
        s.ttl = Duration::ZERO;
        assert_eq!(s.validate(&l), Err(SpecError::TtlZero));
        s.ttl = Duration::from_secs(61);
        assert!(matches!(s.validate(&l), Err(SpecError::TtlTooLong { .. })));
    }

    #[test]
    fn rates_parse() {
        assert_eq!("1mbit".parse::<Rate>().unwrap().bits_per_sec, 1_000_000);
        assert_eq!("500kbit".parse::<Rate>().unwrap().bits_per_sec, 500_000);
        assert_eq!("125kbps".parse::<Rate>().unwrap().bits_per_sec, 1_000_000);
        assert_eq!("1.5gbit".parse::<Rate>().unwrap().to_string(), "1500mbit");
        for bad in ["", "fast", "1xbit", "0bit", "-1mbit"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn shaping_dependencies() {
        let l = Limits::default();
        let shape = |j: &str| -> FaultSpec {
            serde_json::from_str(&format!(r#"{{"ttl":"5s","shape":{j}}}"#)).unwrap()
        };
        assert!(
            shape(r#"{"delay":"100ms","jitter":"10ms","distribution":"normal"}"#)
                .validate(&l)
                .is_ok()
        );
        assert!(shape(r#"{"rate":"1mbit"}"#).validate(&l).is_ok());
        assert!(matches!(
            shape(r#"{"jitter":"10ms"}"#).validate(&l),
            Err(SpecError::Needs { .. })
        ));
        assert!(matches!(
            shape(r#"{"reorder":0.1}"#).validate(&l),
            Err(SpecError::Needs { .. })
        ));
        assert!(matches!(
            shape(r#"{"delay":"100ms","distribution":"pareto"}"#).validate(&l),
            Err(SpecError::Needs { .. })
        ));
        assert!(matches!(
            shape(r#"{"delay":"2m"}"#).validate(&l),
            Err(SpecError::DurationTooLong { .. })
        ));
        assert!(matches!(
            shape(r#"{"corrupt":1.5}"#).validate(&l),
            Err(SpecError::Probability { .. })
        ));
        assert_eq!(shape("{}").validate(&l), Err(SpecError::NoEffect));
    }

    #[test]
    fn edt_backend_is_delay_and_egress_only() {
        let l = Limits::default();
        let spec = |j: &str| -> FaultSpec { serde_json::from_str(j).unwrap() };
        let ok = spec(r#"{"ttl":"5s","shape":{"delay":"100ms","jitter":"5ms","backend":"edt"}}"#);
        assert!(ok.validate(&l).is_ok());
        // Round trip keeps the backend; auto is not written.
        assert!(
            serde_json::to_string(&ok)
                .unwrap()
                .contains(r#""backend":"edt""#)
        );
        let auto = spec(r#"{"ttl":"5s","shape":{"delay":"100ms"}}"#);
        assert!(!serde_json::to_string(&auto).unwrap().contains("backend"));
        for (shape, what) in [
            (
                r#"{"delay":"100ms","corrupt":0.1,"backend":"edt"}"#,
                "--corrupt",
            ),
            (
                r#"{"delay":"100ms","rate":"1mbit","backend":"edt"}"#,
                "--rate",
            ),
            (
                r#"{"delay":"100ms","jitter":"5ms","distribution":"normal","backend":"edt"}"#,
                "a non-uniform --distribution",
            ),
        ] {
            let s = spec(&format!(r#"{{"ttl":"5s","shape":{shape}}}"#));
            assert_eq!(
                s.validate(&l),
                Err(SpecError::EdtUnsupported { what }),
                "{shape}"
            );
        }
        for dir in ["ingress", "both"] {
            let s = spec(&format!(
                r#"{{"ttl":"5s","target":{{"direction":"{dir}"}},"shape":{{"delay":"10ms","backend":"edt"}}}}"#
            ));
            assert_eq!(s.validate(&l), Err(SpecError::EdtIngress));
        }
        for shape in [
            r#"{"rate":"1mbit","backend":"netem"}"#,
            r#"{"rate":"1mbit","backend":"edt"}"#,
        ] {
            let s = spec(&format!(r#"{{"ttl":"5s","shape":{shape}}}"#));
            assert!(
                matches!(s.validate(&l), Err(SpecError::Needs { .. })),
                "{shape}"
            );
        }
    }

    #[test]
    fn gemodel_parses() {
        let ge: GilbertElliott = "gemodel:5%,30%,90%,1%".parse().unwrap();
        assert!((ge.p - 0.05).abs() < 1e-9 && (ge.loss_good - 0.01).abs() < 1e-9);
        assert!((ge.mean_loss() - (0.05 / 0.35 * 0.9 + 0.30 / 0.35 * 0.01)).abs() < 1e-9);
        assert!("gemodel:0.1".parse::<GilbertElliott>().is_err());
        assert!("bernoulli:0.1".parse::<GilbertElliott>().is_err());
    }

    #[test]
    fn json_round_trip_and_unknown_fields() {
        let s = loss(0.25);
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<FaultSpec>(&j).unwrap(), s);
        assert!(
            serde_json::from_str::<FaultSpec>(r#"{"ttl":"1s","los":{"probability":0.1}}"#).is_err()
        );
    }

    #[test]
    fn a_container_s_own_namespace_takes_any_direction_on_its_host_side() {
        use crate::target::Direction;
        let limits = crate::spec::Limits::default();
        let mut s = loss(1.0);
        s.target.container = Some("3f1e0c6a9b2d".to_owned());
        s.target.direction = Direction::Ingress;
        // Not resolved yet: whether the container has a namespace of its own is not known.
        assert!(s.validate(&limits).is_ok());
        // Resolved to the host's network: matched by socket cgroup, where ingress is loss
        // only (a cgroup program sees the receiving socket, and may only drop).
        s.target.cgroup = Some("/machine.slice/libpod-x.scope".to_owned());
        s.target.cgroup_id = Some(7);
        assert!(s.validate(&limits).is_ok());
        let delayed: FaultSpec = serde_json::from_str(
            r#"{"ttl":"30s","shape":{"delay":"10ms"},"target":{"direction":"ingress","container":"3f1e0c6a9b2d","cgroup":"/c","cgroup_id":7}}"#,
        )
        .expect("spec");
        assert!(matches!(
            delayed.validate(&limits),
            Err(SpecError::Inapplicable { .. })
        ));
        // Resolved to its own namespace, faulted on the host-side veth: the container's
        // ingress is that veth's egress.
        s.target.netns = Some(4_026_532_000);
        s.target.container_iface = Some("eth0".to_owned());
        s.target.iface = Some("veth1".to_owned());
        assert!(s.validate(&limits).is_ok());
        assert!(!s.target.by_socket_cgroup());
        for (given, hook) in [
            (Direction::Ingress, Direction::Egress),
            (Direction::Egress, Direction::Ingress),
            (Direction::Both, Direction::Both),
        ] {
            s.target.direction = given;
            assert_eq!(s.target.hook_direction(), hook);
        }
        assert!(
            s.summary()
                .contains("on the container's eth0 (host side veth1)")
        );
        // Its own namespace but no host-side veth found: refused.
        s.target.container_iface = None;
        assert!(matches!(
            s.validate(&limits),
            Err(SpecError::Inapplicable { .. })
        ));
    }
}
