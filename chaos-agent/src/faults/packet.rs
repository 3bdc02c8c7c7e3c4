//! The eBPF classifier every packet fault uses: a slot in the agent's shared fault table
//! (`ebpf::datapath`) that matches the fault's targets, drops (loss: Bernoulli or
//! Gilbert-Elliott) and steers matching packets into a shaping class by `skb->priority` (see
//! `netem.rs`), and does nothing once the kernel-side deadline passes.

use chaos_common::{F_EDT, F_EGRESS_WIRE_DROP, F_LOSS_GE, F_SEEDED, F_STEER, FaultSlot};

use super::FaultSpec;
use super::{ActiveFault, ApplyCtx, FaultError};
use crate::kernel::bpf::table::{PROTO_ICMP, PROTO_TCP, PROTO_UDP, Rules};
use crate::kernel::bpf::{AttachMode, Counters, Datapath, attach::NETLINK_PRIORITY};
use crate::kernel::tc::Hook;
use crate::target::{PortRange, Proto};
use crate::txn::undo::Undo;

/// A classifier slot in force (loss and/or steering).
#[derive(Debug)]
pub struct ClassifierFault {
    dp: Datapath,
    slot: u32,
    mode: AttachMode,
    /// A refuse fault: on the cgroup connect hook, not on tc.
    connect: bool,
    /// Ingress of a fault scoped to processes: on the socket-ingress hook, not on tc.
    sock_ingress: bool,
    /// Whether it is on tc hooks at all.
    tc: bool,
    shaping: Option<&'static str>,
}

impl ActiveFault for ClassifierFault {
    fn backend(&self) -> String {
        if self.connect {
            return "ebpf/cgroup-connect".to_owned();
        }
        if self.sock_ingress {
            return if self.tc {
                format!("ebpf/{} + cgroup-ingress", self.mode.as_str())
            } else {
                "ebpf/cgroup-ingress".to_owned()
            };
        }
        match self.shaping {
            Some(s) => format!("ebpf/{} + {s}", self.mode.as_str()),
            None => format!("ebpf/{}", self.mode.as_str()),
        }
    }

    fn counters(&self) -> Option<Counters> {
        self.dp.counters(self.slot).ok()
    }

    fn set_expiry(&mut self, expires_at_mono_ns: u64) -> Result<(), FaultError> {
        Ok(self.dp.set_expiry(self.slot, expires_at_mono_ns)?)
    }

    fn disarm(&mut self) -> Result<(), FaultError> {
        Ok(self.dp.disarm(self.slot)?)
    }
}

/// The tc hooks a spec needs (none for a refuse fault, which acts on `connect()`; no ingress
/// one for a fault scoped to processes, which acts there on the socket-ingress hook).
#[must_use]
pub fn hooks(spec: &FaultSpec) -> Vec<Hook> {
    let d = spec.target.hook_direction();
    let mut v = Vec::new();
    if spec.refuse.is_some() {
        return v;
    }
    if d.ingress() && !spec.target.by_socket_cgroup() {
        v.push(Hook::Ingress);
    }
    if d.egress() {
        v.push(Hook::Egress);
    }
    v
}

/// Whether a spec acts on what the processes of its scope receive: tc ingress runs before the
/// socket lookup, so this is the cgroup program that runs as their sockets take a packet.
#[must_use]
pub fn socket_ingress(spec: &FaultSpec) -> bool {
    spec.refuse.is_none()
        && spec.target.by_socket_cgroup()
        && spec.target.hook_direction().ingress()
}

fn ranges(r: &[PortRange]) -> Vec<(u16, u16)> {
    r.iter().map(|r| (r.lo, r.hi)).collect()
}

/// The spec's filters as the fault table takes them.
#[must_use]
pub fn rules(spec: &FaultSpec, protected: &[PortRange]) -> Rules {
    let t = &spec.target;
    let mut r = Rules {
        protos: t.protocols.iter().fold(0, |acc, p| {
            acc | match p {
                Proto::Tcp => PROTO_TCP,
                Proto::Udp => PROTO_UDP,
                Proto::Icmp => PROTO_ICMP,
            }
        }),
        src: t.src.clone(),
        dst: t.dst.clone(),
        sports: ranges(&t.sports),
        dports: ranges(&t.dports),
        protected: if t.include_protected {
            Vec::new()
        } else {
            ranges(protected)
        },
        dns: false,
        dns_names: Vec::new(),
        dns_types: Vec::new(),
        // Resolved to an id at apply ([`apply`]): a path names a directory, the kernel an inode.
        cgroup: None,
    };
    if let Some(d) = &spec.dns {
        // Answers come from the server's port, over UDP or TCP: the source port is the
        // dimension that finds them (`--sport` overrides, `--dport` still narrows to clients).
        r.dns = true;
        if r.protos == 0 {
            r.protos = PROTO_UDP | PROTO_TCP;
        }
        r.protos &= PROTO_UDP | PROTO_TCP;
        if r.sports.is_empty() {
            r.sports = vec![(d.port(), d.port())];
        }
        r.dns_names = d.name_keys();
        r.dns_types = d.type_codes();
    }
    if spec.refuse.is_some() && r.protos == 0 {
        r.protos = PROTO_UDP | PROTO_TCP;
    }
    r
}

/// The fault's parameters as its slot holds them (unarmed: the datapath arms it last).
#[must_use]
pub fn fault_slot(spec: &FaultSpec, expires_at_mono_ns: u64, started_at_mono_ns: u64) -> FaultSlot {
    let mut flags = F_EGRESS_WIRE_DROP;
    if spec.seed.is_some() {
        flags |= F_SEEDED;
    }
    let mut cfg = FaultSlot {
        expires_at_ns: expires_at_mono_ns,
        ..FaultSlot::default()
    };
    cfg.flags = flags;
    if let Some(loss) = &spec.loss {
        loss.configure(&mut cfg);
    }
    if let Some(dns) = &spec.dns {
        dns.configure(&mut cfg);
    }
    if let Some(refuse) = &spec.refuse {
        refuse.configure(&mut cfg);
    }
    if let Some(flap) = &spec.flap {
        flap.configure(&mut cfg, started_at_mono_ns);
    }
    cfg
}

/// Makes sure a clsact qdisc exists, recording that we created it (netlink attach path, and the
/// mirred redirect of ingress shaping).
pub async fn ensure_clsact(ctx: &mut ApplyCtx<'_>) -> Result<(), FaultError> {
    let journal = ctx.txn.journal().clone();
    if ctx.tc.has_clsact(ctx.ifindex).await? {
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
    ctx.tc.add_clsact(ctx.ifindex).await?;
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
    pub edt: Option<super::shape::netem::EdtDelay>,
    /// Backend name for reports (`netem`, `htb`, `edt`).
    pub backend: &'static str,
}

impl Steering {
    /// Sets the flags and fields the programs need for this shaping.
    pub fn configure(&self, cfg: &mut FaultSlot) {
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

/// Writes the fault into the agent's fault table and joins it to its hooks (attaching the
/// programs to a hook that has no fault yet).
pub async fn apply(
    spec: &FaultSpec,
    ctx: &mut ApplyCtx<'_>,
    steering: Option<Steering>,
) -> Result<ClassifierFault, FaultError> {
    // Loading (once per agent) changes nothing visible: until attached, the programs die with
    // our fds. The slot is only reserved here; its undo is journaled before it is written.
    // The clsact first (netlink path): its undo runs last, once our filters are gone.
    let refuse = spec.refuse.is_some();
    let sock_ingress = socket_ingress(spec);
    let tc_hooks = hooks(spec);
    if ctx.attach_mode == AttachMode::Netlink && !tc_hooks.is_empty() {
        ensure_clsact(ctx).await?;
    }
    // Refuse faults act in the agent's network namespace (where its interfaces are), or in
    // the scope's container's own.
    let netns_cookie = if refuse {
        Some(
            refuse_netns_cookie(&spec.target).map_err(|source| crate::sys::SysError::Read {
                path: "the network namespace cookie (SO_NETNS_COOKIE, Linux 5.14)".to_owned(),
                source,
            })?,
        )
    } else {
        None
    };
    let dp = ctx.dp.clone();
    let slot = dp.alloc_slot()?;
    // The slot and every hook it will join, journaled in one write before any of them changes
    // the kernel (each undo is idempotent, so a step recorded but never taken costs nothing).
    let steps = std::iter::once(Undo::BpfSlot { slot })
        .chain(tc_hooks.iter().map(|&hook| Undo::BpfHook {
            slot,
            ifname: ctx.ifname.clone(),
            hook,
            mode: ctx.attach_mode,
            priority: NETLINK_PRIORITY,
            handle: dp.handle(),
        }))
        .chain(netns_cookie.map(|netns_cookie| Undo::BpfConnect {
            slot,
            netns_cookie,
            handle: dp.handle(),
        }))
        .chain(sock_ingress.then(|| Undo::BpfSocketIngress {
            slot,
            ifname: ctx.ifname.clone(),
            handle: dp.handle(),
        }));
    if let Err(e) = ctx.txn.record_all(steps) {
        dp.release_slot(slot)?;
        return Err(e.into());
    }
    let mut cfg = fault_slot(spec, ctx.expires_at_mono_ns, ctx.started_at_mono_ns);
    if let Some(s) = steering {
        s.configure(&mut cfg);
    }
    let mut r = rules(spec, ctx.protected_ports);
    if let Some(path) = spec
        .target
        .cgroup
        .as_ref()
        .filter(|_| spec.target.by_socket_cgroup())
    {
        match cgroup_id(path) {
            // The cgroup resolved at inject, not one made again under its path since.
            Ok(id) if spec.target.cgroup_id.is_none_or(|resolved| resolved == id) => {
                r.cgroup = Some(id);
            }
            Ok(_) => {
                dp.release_slot(slot)?;
                return Err(FaultError::Scope(crate::spec::SpecError::NoSuchCgroup {
                    path: path.clone(),
                    why: "it was removed and made again since the inject resolved it".to_owned(),
                }));
            }
            Err(e) => {
                dp.release_slot(slot)?;
                return Err(e);
            }
        }
    }
    dp.install(slot, &r, &cfg, spec.seed)?;
    for &hook in &tc_hooks {
        dp.join_hook(slot, ctx.ifindex, &ctx.ifname, hook, ctx.attach_mode)?;
    }
    if let Some(cookie) = netns_cookie {
        dp.join_connect(slot, cookie)?;
    }
    if sock_ingress {
        dp.join_socket_ingress(slot, ctx.ifindex)?;
    }
    if spec.flap.is_some() {
        // The first active phase starts when the fault can act, i.e. now that its hooks are
        // attached: an attach waits for an RCU grace period, which under load took ~300 ms
        // that would otherwise have been cut from the first phase.
        dp.write_slot(slot, |c| c.start_ns = crate::sys::monotonic_ns())?;
    }
    Ok(ClassifierFault {
        dp,
        slot,
        mode: ctx.attach_mode,
        connect: refuse,
        sock_ingress,
        tc: !tc_hooks.is_empty(),
        shaping: steering.map(|s| s.backend),
    })
}

/// The cookie of the network namespace a refuse fault acts in: the agent's, or that of the
/// scope's container when it has one of its own (read from a thread that joined it).
fn refuse_netns_cookie(t: &crate::target::Target) -> std::io::Result<u64> {
    let (Some(netns), Some(cgroup)) = (t.netns, &t.cgroup) else {
        return crate::sys::netns_cookie();
    };
    let tree = crate::sys::cgroup::Tree::open()?;
    let pid = crate::target::scope::pid_in_netns(&tree, cgroup, netns)?;
    crate::sys::cgroup::in_netns_of(pid, netns, crate::sys::netns_cookie)?
}

/// The id of the cgroup v2 at `path` (the fault's scope).
fn cgroup_id(path: &str) -> Result<u64, FaultError> {
    let parts = crate::target::cgroup_components(path).map_err(FaultError::Scope)?;
    crate::sys::cgroup_id(&parts).map_err(|e| {
        FaultError::Scope(crate::spec::SpecError::NoSuchCgroup {
            path: path.to_owned(),
            why: e.to_string(),
        })
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
    let cfg = fault_slot(spec, 0, 0);
    let r = rules(spec, protected);
    if let Some(refuse) = &spec.refuse {
        out.push(format!(
            "join the connect hook of this network namespace: {} and {} on the cgroup v2 root {} (attached if no refuse fault is there yet; every process's connect() runs them, they act in this namespace only)",
            chaos_common::names::PROG_CONNECT4,
            chaos_common::names::PROG_CONNECT6,
            crate::sys::cgroup2_root().map_or_else(|| "(none mounted: the inject would fail)".to_owned(), |p| p.display().to_string()),
        ));
        out.push(format!(
            "connect() to {} ports {} over {} fails with {}{}",
            if spec.target.dst.is_empty() {
                "any address".to_owned()
            } else {
                format!("{} prefixes", spec.target.dst.len())
            },
            if spec.target.dports.is_empty() {
                "any".to_owned()
            } else {
                spec.target
                    .dports
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            },
            match r.protos {
                p if p == PROTO_TCP => "TCP",
                p if p == PROTO_UDP => "UDP",
                _ => "TCP and UDP",
            },
            refuse.errno.as_str(),
            refuse
                .rate
                .map(|p| format!(" for a fraction {p} of them"))
                .unwrap_or_default(),
        ));
    } else if mode == AttachMode::Netlink && !hooks(spec).is_empty() {
        out.push(format!("ensure clsact qdisc on {ifname} (created only if absent; removed on revert if we created it)"));
    }
    if socket_ingress(spec) {
        out.push(format!(
            "join the socket-ingress hook of {ifname}: {} (cgroup_skb ingress) on the cgroup v2 root {} (attached if no such fault is there yet; it runs as a socket takes a packet, so it sees the receiving process's cgroup) (drop = the socket never gets the packet)",
            chaos_common::names::PROG_SOCK_INGRESS,
            crate::sys::cgroup2_root().map_or_else(|| "(none mounted: the inject would fail)".to_owned(), |p| p.display().to_string()),
        ));
    }
    for hook in hooks(spec) {
        let how = match (hook, mode) {
            (Hook::Egress, _) => "drop = redirect to ifindex 0 (the sender sees wire loss)",
            (Hook::Ingress, _) => "drop = TC_ACT_SHOT",
        };
        out.push(format!(
            "join {} on {ifname} {} (attached via {} if no other fault is there) ({how})",
            hook.program(),
            hook.as_str(),
            mode.as_str()
        ));
    }
    out.push(format!(
        "fault table slot: loss threshold {:#010x}{}, protocols {:#x}, {} sport / {} dport ranges, {} src / {} dst prefixes, protected ports {}",
        cfg.loss_threshold,
        if cfg.flags & F_LOSS_GE != 0 { " (Gilbert-Elliott)" } else { "" },
        r.protos,
        r.sports.len(),
        r.dports.len(),
        spec.target.src.len(),
        spec.target.dst.len(),
        if spec.target.include_protected {
            "none (--include-protected)".to_owned()
        } else {
            protected.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
        }
    ));
    if let Some(d) = &spec.dns {
        out.push(format!(
            "DNS: answers from port {} over UDP and TCP, {} for questions under {} of type {}, rate {}; TCP answers are dropped, unparsable ones pass (counted)",
            d.port(),
            d.answer.as_str(),
            if d.domains.is_empty() { "any name".to_owned() } else { d.domains.join(", ") },
            if d.types.is_empty() {
                "any".to_owned()
            } else {
                d.types.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            },
            d.rate.unwrap_or(1.0)
        ));
    }
    if let Some(f) = &spec.flap {
        out.push(format!(
            "duty cycle: active {} then resting {}, from inject to the deadline (computed in the kernel)",
            humantime::format_duration(f.on),
            humantime::format_duration(f.off)
        ));
    }
    if let Some(inner) = &spec.target.container_iface {
        out.push(format!(
            "every packet through the container's {inner}, whichever of its namespace's processes sends or receives it (a packet crossing the veth leaves its socket behind, so the host side cannot tell them apart): its {} is {ifname}'s {}",
            spec.target.direction,
            spec.target.hook_direction()
        ));
    } else if let Some(path) = &spec.target.cgroup {
        out.push(match cgroup_id(path) {
            Ok(id) => format!(
                "only sockets and connects of processes in cgroup {path} (id {id}) and below it{}",
                spec.target
                    .netns
                    .map(|ns| format!(", in the container's network namespace (net:[{ns}])"))
                    .unwrap_or_default()
            ),
            Err(e) => format!("cgroup scope: {e} (the inject would fail)"),
        });
    }
    out.push(format!(
        "kernel deadline: now + {} (the slot does nothing after it)",
        humantime::format_duration(spec.ttl)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_and_rules_from_spec() {
        let spec: FaultSpec = serde_json::from_str(
            r#"{"ttl":"10s","loss":{"probability":1.0},"target":{"direction":"both","protocols":["udp"],"dst":["10.0.0.0/8"],"dports":["53","8000-8100"]},"seed":7}"#,
        )
        .unwrap();
        let cfg = fault_slot(&spec, 99, 0);
        assert_eq!(cfg.loss_threshold, u32::MAX);
        assert_eq!(cfg.expires_at_ns, 99);
        assert_eq!(cfg.flags & F_SEEDED, F_SEEDED);
        let r = rules(&spec, &["22".parse().unwrap()]);
        assert_eq!(r.protos, PROTO_UDP);
        assert!(r.src.is_empty());
        assert_eq!(r.dst.len(), 1);
        assert_eq!(r.dports, vec![(53, 53), (8000, 8100)]);
        assert_eq!(r.protected, vec![(22, 22)]);
    }

    #[test]
    fn edt_steering_sets_the_delay_and_no_class() {
        let mut cfg = FaultSlot::default();
        let edt = super::super::shape::netem::EdtDelay {
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
        let mut cfg = FaultSlot::default();
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
        assert!(rules(&spec, &["22".parse().unwrap()]).protected.is_empty());
    }
}

#[cfg(test)]
mod dns_tests {
    use super::*;

    #[test]
    fn dns_rules_find_answers_by_source_port() {
        let spec: FaultSpec = serde_json::from_str(
            r#"{"ttl":"10s","dns":{"answer":"servfail","domains":["Example.test"],"types":["A"]},"target":{"direction":"ingress"}}"#,
        )
        .unwrap();
        let r = rules(&spec, &[]);
        assert!(r.dns);
        assert_eq!(r.protos, PROTO_UDP | PROTO_TCP);
        assert_eq!(r.sports, vec![(53, 53)]);
        assert_eq!(r.dns_names, vec![b"\x04test\x07example".to_vec()]);
        assert_eq!(r.dns_types, vec![1]);
        let cfg = fault_slot(&spec, 1, 0);
        assert_eq!(cfg.flags & chaos_common::F_DNS, chaos_common::F_DNS);
        assert_eq!(cfg.dns, chaos_common::dns::DNS_ACT_SERVFAIL);
        assert_eq!(cfg.loss_threshold, u32::MAX);
    }
}
