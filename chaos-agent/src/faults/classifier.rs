//! The eBPF classifier every packet fault uses: one tc program per direction that matches the
//! fault's targets, drops (loss: Bernoulli or Gilbert-Elliott) and steers matching packets into
//! a shaping class by `skb->priority` (see `netem.rs`), and lets everything through once the
//! kernel-side deadline passes.

use chaos_common::{
    F_ARMED, F_DST_FILTER, F_EDT, F_EGRESS, F_EGRESS_WIRE_DROP, F_INGRESS, F_L3_DEVICE, F_LOSS_GE,
    F_SEEDED, F_SRC_FILTER, F_STEER, FaultConfig, MAX_PORT_RANGES, PROTO_ICMP, PROTO_TCP,
    PROTO_UDP, PortSet, probability_to_threshold,
};

use super::{ActiveFault, ApplyCtx, FaultError};
use crate::ebpf::netlink::{self, Hook};
use crate::ebpf::{AttachMode, Counters, TcProgram, attach::NETLINK_PRIORITY};
use crate::engine::undo::Undo;
use crate::spec::{FaultSpec, PortRange, Proto};

/// A classifier in force (loss and/or steering).
#[derive(Debug)]
pub struct ClassifierFault {
    prog: TcProgram,
    mode: AttachMode,
    shaping: Option<&'static str>,
}

impl ActiveFault for ClassifierFault {
    fn backend(&self) -> String {
        match self.shaping {
            Some(s) => format!("ebpf/{} + {s}", self.mode.as_str()),
            None => format!("ebpf/{}", self.mode.as_str()),
        }
    }

    fn counters(&self) -> Option<Counters> {
        self.prog.counters().ok()
    }

    fn set_expiry(&mut self, expires_at_mono_ns: u64) -> Result<(), FaultError> {
        let mut cfg = self.prog.config()?;
        cfg.expires_at_ns = expires_at_mono_ns;
        Ok(self.prog.set_config(&cfg)?)
    }

    fn disarm(&mut self) -> Result<(), FaultError> {
        let mut cfg = self.prog.config()?;
        cfg.flags &= !F_ARMED;
        Ok(self.prog.set_config(&cfg)?)
    }
}

/// The hooks a spec needs.
#[must_use]
pub fn hooks(spec: &FaultSpec) -> Vec<Hook> {
    let d = spec.target.direction;
    let mut v = Vec::new();
    if d.ingress() {
        v.push(Hook::Ingress);
    }
    if d.egress() {
        v.push(Hook::Egress);
    }
    v
}

fn port_set(ranges: &[PortRange]) -> PortSet {
    let mut set = PortSet::default();
    for (slot, r) in set
        .ranges
        .iter_mut()
        .zip(ranges.iter().take(MAX_PORT_RANGES))
    {
        *slot = chaos_common::PortRange { lo: r.lo, hi: r.hi };
    }
    set.len = ranges.len().min(MAX_PORT_RANGES) as u32;
    set
}

/// Converts a validated spec into the kernel's view of it.
#[must_use]
pub fn fault_config(
    spec: &FaultSpec,
    protected: &[PortRange],
    expires_at_mono_ns: u64,
) -> FaultConfig {
    let t = &spec.target;
    let mut flags = F_ARMED | F_EGRESS_WIRE_DROP;
    if t.direction.ingress() {
        flags |= F_INGRESS;
    }
    if t.direction.egress() {
        flags |= F_EGRESS;
    }
    if !t.src.is_empty() {
        flags |= F_SRC_FILTER;
    }
    if !t.dst.is_empty() {
        flags |= F_DST_FILTER;
    }
    if spec.seed.is_some() {
        flags |= F_SEEDED;
    }
    let mut cfg = FaultConfig {
        expires_at_ns: expires_at_mono_ns,
        protos: t.protocols.iter().fold(0, |acc, p| {
            acc | match p {
                Proto::Tcp => PROTO_TCP,
                Proto::Udp => PROTO_UDP,
                Proto::Icmp => PROTO_ICMP,
            }
        }),
        sports: port_set(&t.sports),
        dports: port_set(&t.dports),
        protected_ports: if t.include_protected {
            PortSet::default()
        } else {
            port_set(protected)
        },
        ..FaultConfig::default()
    };
    if let Some(loss) = &spec.loss {
        match &loss.model {
            None => cfg.loss_threshold = probability_to_threshold(loss.probability),
            Some(ge) => {
                flags |= F_LOSS_GE;
                cfg.ge_p = probability_to_threshold(ge.p);
                cfg.ge_r = probability_to_threshold(ge.r);
                cfg.ge_loss_bad = probability_to_threshold(ge.loss_bad);
                cfg.loss_threshold = probability_to_threshold(ge.loss_good);
            }
        }
    }
    cfg.flags = flags;
    cfg
}

/// Makes sure a clsact qdisc exists, recording that we created it (netlink attach path, and the
/// mirred redirect of ingress shaping).
pub async fn ensure_clsact(ctx: &mut ApplyCtx<'_>) -> Result<(), FaultError> {
    let journal = crate::engine::journal_of(ctx.txn);
    if netlink::has_clsact(ctx.nl, ctx.ifindex).await? {
        // Shared with earlier faults of ours: whichever fault is reverted last removes it.
        if journal.is_owned("clsact", &ctx.ifname) {
            ctx.txn.record(Undo::Clsact {
                ifname: ctx.ifname.clone(),
            })?;
        }
        return Ok(());
    }
    journal.mark_owned("clsact", &ctx.ifname)?;
    ctx.txn.record(Undo::Clsact {
        ifname: ctx.ifname.clone(),
    })?;
    netlink::add_clsact(&ctx.ifname)?;
    Ok(())
}

/// What the classifier does to matching packets for a shaping fault: steer them into a class
/// (`skb->priority`), and/or give them a later departure time (EDT), plus the backend's name.
#[derive(Clone, Copy, Debug)]
pub struct Steering {
    /// Value written into `skb->priority` (`F_STEER`); `None` for EDT, whose fq root does not
    /// classify.
    pub classid: Option<u32>,
    /// Egress departure-time delay (`F_EDT`).
    pub edt: Option<super::netem::EdtDelay>,
    /// Backend name for reports (`netem`, `htb`, `edt`).
    pub backend: &'static str,
}

impl Steering {
    /// Sets the flags and fields the programs need for this shaping.
    pub fn configure(&self, cfg: &mut FaultConfig) {
        if let Some(classid) = self.classid {
            cfg.flags |= F_STEER;
            cfg.steer_priority = classid;
        }
        if let Some(e) = self.edt {
            cfg.flags |= F_EDT;
            cfg.edt_delay_us = e.delay_us;
            cfg.edt_jitter_us = e.jitter_us;
        }
    }
}

/// Loads, configures and attaches the classifier.
pub async fn apply(
    spec: &FaultSpec,
    ctx: &mut ApplyCtx<'_>,
    steering: Option<Steering>,
) -> Result<ClassifierFault, FaultError> {
    // Loading changes nothing visible: until attached, the programs die with our fds.
    let mut prog = TcProgram::load()?;
    let mut cfg = fault_config(spec, ctx.protected_ports, ctx.expires_at_mono_ns);
    if crate::sys::is_l3_device(&ctx.ifname) {
        cfg.flags |= F_L3_DEVICE;
    }
    if let Some(s) = steering {
        s.configure(&mut cfg);
    }
    prog.set_config(&cfg)?;
    prog.add_prefixes(&spec.target.src, true)?;
    prog.add_prefixes(&spec.target.dst, false)?;
    if let Some(seed) = spec.seed {
        prog.seed_rng(seed)?;
    }
    if ctx.attach_mode == AttachMode::Netlink {
        ensure_clsact(ctx).await?;
    }
    for hook in hooks(spec) {
        match ctx.attach_mode {
            AttachMode::Netlink => {
                let handle = ctx.id.raw();
                ctx.txn.record(Undo::NetlinkFilter {
                    ifname: ctx.ifname.clone(),
                    hook,
                    priority: NETLINK_PRIORITY,
                    handle,
                })?;
                prog.attach_netlink(&ctx.ifname, hook, handle)?;
            }
            AttachMode::Tcx | AttachMode::Auto => {
                ctx.txn.record(Undo::TcxLink {
                    ifname: ctx.ifname.clone(),
                    hook,
                })?;
                prog.attach_tcx(&ctx.ifname, hook)?;
            }
        }
    }
    Ok(ClassifierFault {
        prog,
        mode: ctx.attach_mode,
        shaping: steering.map(|s| s.backend),
    })
}

/// Dry-run description.
#[must_use]
pub fn plan(
    spec: &FaultSpec,
    ifname: &str,
    mode: AttachMode,
    protected: &[PortRange],
) -> Vec<String> {
    let mut out = Vec::new();
    let cfg = fault_config(spec, protected, 0);
    if mode == AttachMode::Netlink {
        out.push(format!("ensure clsact qdisc on {ifname} (created only if absent; removed on revert if we created it)"));
    }
    for hook in hooks(spec) {
        let how = match (hook, mode) {
            (Hook::Egress, _) => "drop = redirect to ifindex 0 (the sender sees wire loss)",
            (Hook::Ingress, _) => "drop = TC_ACT_SHOT",
        };
        out.push(format!(
            "attach {} on {ifname} {} via {} ({how})",
            hook.program(),
            hook.as_str(),
            mode.as_str()
        ));
    }
    out.push(format!(
        "config: loss threshold {:#010x}{}, protocols {:#x}, {} sport / {} dport ranges, {} src / {} dst prefixes, protected ports {}",
        cfg.loss_threshold,
        if cfg.flags & F_LOSS_GE != 0 { " (Gilbert-Elliott)" } else { "" },
        cfg.protos,
        cfg.sports.len,
        cfg.dports.len,
        spec.target.src.len(),
        spec.target.dst.len(),
        if spec.target.include_protected {
            "none (--include-protected)".to_owned()
        } else {
            protected.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
        }
    ));
    out.push(format!(
        "kernel deadline: now + {} (the programs pass everything after it)",
        humantime::format_duration(spec.ttl)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_spec() {
        let spec: FaultSpec = serde_json::from_str(
            r#"{"ttl":"10s","loss":{"probability":1.0},"target":{"direction":"both","protocols":["udp"],"dst":["10.0.0.0/8"],"dports":["53","8000-8100"]},"seed":7}"#,
        )
        .unwrap();
        let cfg = fault_config(&spec, &["22".parse().unwrap()], 99);
        assert_eq!(cfg.loss_threshold, u32::MAX);
        assert_eq!(cfg.expires_at_ns, 99);
        assert_eq!(cfg.protos, PROTO_UDP);
        assert_eq!(
            cfg.flags & (F_INGRESS | F_EGRESS | F_DST_FILTER | F_SEEDED | F_ARMED),
            F_INGRESS | F_EGRESS | F_DST_FILTER | F_SEEDED | F_ARMED
        );
        assert_eq!(cfg.flags & F_SRC_FILTER, 0);
        assert_eq!(cfg.dports.len, 2);
        assert_eq!(
            cfg.dports.ranges[1],
            chaos_common::PortRange { lo: 8000, hi: 8100 }
        );
        assert_eq!(cfg.protected_ports.len, 1);
    }

    #[test]
    fn edt_steering_sets_the_delay_and_no_class() {
        let mut cfg = FaultConfig::default();
        let edt = super::super::netem::EdtDelay {
            delay_us: 100_000,
            jitter_us: 20,
        };
        Steering {
            classid: None,
            edt: Some(edt),
            backend: "edt",
        }
        .configure(&mut cfg);
        assert_eq!(
            (
                cfg.flags & (F_EDT | F_STEER),
                cfg.edt_delay_us,
                cfg.edt_jitter_us
            ),
            (F_EDT, 100_000, 20)
        );
        let mut cfg = FaultConfig::default();
        Steering {
            classid: Some(0xc4a0_0010),
            edt: None,
            backend: "netem",
        }
        .configure(&mut cfg);
        assert_eq!(
            (cfg.flags & (F_EDT | F_STEER), cfg.steer_priority),
            (F_STEER, 0xc4a0_0010)
        );
    }

    #[test]
    fn include_protected_clears_the_set() {
        let spec: FaultSpec = serde_json::from_str(
            r#"{"ttl":"10s","loss":{"probability":0.5},"target":{"include_protected":true}}"#,
        )
        .unwrap();
        assert_eq!(
            fault_config(&spec, &["22".parse().unwrap()], 0)
                .protected_ports
                .len,
            0
        );
    }
}
