//! The agent's one datapath: the tc programs loaded and verified once per process, attached
//! once per interface and direction, and the fault table in their maps.
//!
//! A packet fault is a slot: inject allocates one, writes its filters into the table
//! ([`super::table`]), its parameters into `CHAOS_SLOTS`, and sets its bit on the hooks it acts
//! on (attaching the program there if it is the first fault on that hook); stop does the reverse
//! and detaches a hook that no fault uses any more. Per-packet cost does not grow with the
//! number of faults or of their prefixes and ports.
//!
//! Every kernel change here is a step of the caller's transaction: the caller journals
//! [`crate::txn::undo::Undo::BpfSlot`] before [`Datapath::install`] and
//! [`crate::txn::undo::Undo::BpfHook`] before [`Datapath::join_hook`]; their undo is
//! [`Datapath::release_slot`], which also detaches the hooks it leaves empty.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuValues};
use aya::programs::cgroup_skb::{CgroupSkbAttachType, CgroupSkbLinkId};
use aya::programs::cgroup_sock_addr::CgroupSockAddrLinkId;
use aya::programs::tc::SchedClassifierLinkId;
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSockAddr, SchedClassifier};
use aya::{Ebpf, EbpfLoader};
use chaos_common::{
    Bitmap, COUNTERS_PER_DIR, Counter, Dir, F_ARMED, FaultSlot, Globals, HOOK_L3_DEVICE, HookEntry,
    MAX_FAULTS, MAX_HOOKS, PortEntry, connect_hook_key, counter_index, dns, hook_key, names,
    socket_ingress_hook_key,
};

use super::table::{Prefix, Rules, Table, TableSink, Trie};
use super::{AttachMode, Counters, DirCounters, EbpfError, map_error};
use crate::kernel::tc::Hook;

/// The maps the table's writes go to.
struct Sink {
    globals: Array<MapData, Globals>,
    ports: Array<MapData, PortEntry>,
    blocks: Array<MapData, PortEntry>,
    src4: LpmTrie<MapData, [u8; 4], Bitmap>,
    dst4: LpmTrie<MapData, [u8; 4], Bitmap>,
    src6: LpmTrie<MapData, [u8; 16], Bitmap>,
    dst6: LpmTrie<MapData, [u8; 16], Bitmap>,
    dns_names: LpmTrie<MapData, [u8; dns::NAME_KEY_BYTES], Bitmap>,
    dns_types: BpfHashMap<MapData, u32, Bitmap>,
    cgroups: BpfHashMap<MapData, u64, Bitmap>,
}

/// A trie operation whose "not there" is success (removing what is already gone).
fn absent_ok(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

impl TableSink for Sink {
    type Error = EbpfError;

    fn globals(&mut self, g: &Globals) -> Result<(), EbpfError> {
        self.globals
            .set(0, g, 0)
            .map_err(map_error("write", names::MAP_GLOBALS))
    }

    fn port(&mut self, port: u16, e: &PortEntry) -> Result<(), EbpfError> {
        self.ports
            .set(u32::from(port), e, 0)
            .map_err(map_error("write", names::MAP_PORTS))
    }

    fn block(&mut self, block: u32, e: &PortEntry) -> Result<(), EbpfError> {
        self.blocks
            .set(block, e, 0)
            .map_err(map_error("write", names::MAP_PORT_BLOCKS))
    }

    fn prefix(&mut self, trie: Trie, p: Prefix, v: Option<&Bitmap>) -> Result<(), EbpfError> {
        let len = u32::from(p.1);
        match trie {
            Trie::Src4 | Trie::Dst4 => {
                let (map, name) = if trie == Trie::Src4 {
                    (&mut self.src4, names::MAP_SRC_V4)
                } else {
                    (&mut self.dst4, names::MAP_DST_V4)
                };
                let key = Key::new(len, (p.0 as u32).to_be_bytes());
                match v {
                    Some(v) => map.insert(&key, v, 0).map_err(map_error("insert", name)),
                    None => absent_ok(map.remove(&key)).map_err(map_error("delete", name)),
                }
            }
            Trie::Src6 | Trie::Dst6 => {
                let (map, name) = if trie == Trie::Src6 {
                    (&mut self.src6, names::MAP_SRC_V6)
                } else {
                    (&mut self.dst6, names::MAP_DST_V6)
                };
                let key = Key::new(len, p.0.to_be_bytes());
                match v {
                    Some(v) => map.insert(&key, v, 0).map_err(map_error("insert", name)),
                    None => absent_ok(map.remove(&key)).map_err(map_error("delete", name)),
                }
            }
        }
    }

    fn dns_name(&mut self, key: &[u8], v: Option<&Bitmap>) -> Result<(), EbpfError> {
        let name = names::MAP_DNS_NAMES;
        let mut data = [0u8; dns::NAME_KEY_BYTES];
        let n = key.len().min(dns::NAME_KEY_BYTES);
        data[..n].copy_from_slice(&key[..n]);
        // n <= 256, so the bit count fits.
        let key = Key::new((n * 8) as u32, data);
        match v {
            Some(v) => self
                .dns_names
                .insert(&key, v, 0)
                .map_err(map_error("insert", name)),
            None => absent_ok(self.dns_names.remove(&key)).map_err(map_error("delete", name)),
        }
    }

    fn dns_type(&mut self, qtype: u16, v: Option<&Bitmap>) -> Result<(), EbpfError> {
        let name = names::MAP_DNS_TYPES;
        let key = u32::from(qtype);
        match v {
            Some(v) => self
                .dns_types
                .insert(key, v, 0)
                .map_err(map_error("insert", name)),
            None => absent_ok(self.dns_types.remove(&key)).map_err(map_error("delete", name)),
        }
    }

    fn cgroup(&mut self, id: u64, v: Option<&Bitmap>) -> Result<(), EbpfError> {
        let name = names::MAP_CGROUPS;
        match v {
            Some(v) => self
                .cgroups
                .insert(id, v, 0)
                .map_err(map_error("insert", name)),
            None => absent_ok(self.cgroups.remove(&id)).map_err(map_error("delete", name)),
        }
    }
}

/// An interface and direction the programs can be attached to.
pub type HookKey = (u32, Hook);

/// One hook in use.
#[derive(Debug)]
struct HookState {
    ifname: String,
    hook: Hook,
    entry: HookEntry,
    link: Option<(AttachMode, SchedClassifierLinkId)>,
    /// Kept attached with no fault on it (`datapath.keep_attached`): the last fault leaving
    /// takes the hook's entry out of the map (packets pass at the first lookup) but not the
    /// program, so the next fault there is map writes only.
    kept: bool,
}

/// A slot in use.
#[derive(Debug, Default)]
struct SlotState {
    /// Hooks the slot joined, with their packet count when it joined.
    hooks: Vec<(HookKey, u64)>,
    /// The network namespace (cookie) whose connect hook the slot joined, with the hook's
    /// count of connects then.
    connect: Option<(u64, u64)>,
    /// The interface (index) whose socket-ingress hook the slot joined, with the hook's count
    /// of packets then.
    sock_ingress: Option<(u32, u64)>,
}

/// The socket-ingress program of faults scoped to processes at ingress: loaded at the first
/// one, attached to the cgroup v2 root while any interface has one.
#[derive(Debug, Default)]
struct SockIngressState {
    /// Whether `chaos_sk_in` is loaded (verified).
    loaded: bool,
    /// Its link to the cgroup, while attached.
    link: Option<CgroupSkbLinkId>,
    /// The cgroup it is attached to (for messages).
    cgroup: Option<String>,
    /// Per interface index: the faults acting on what its sockets receive through it.
    ifaces: HashMap<u32, HookEntry>,
}

/// The connect programs of refuse faults: loaded at the first refuse fault, attached to the
/// cgroup v2 root while any network namespace has one.
#[derive(Debug, Default)]
struct ConnectState {
    /// Whether `chaos_conn4` / `chaos_conn6` are loaded (verified).
    loaded: bool,
    /// Their links to the cgroup, while attached: `bpf_link`s, which the kernel detaches when
    /// the agent's fds close, SIGKILL included.
    links: Vec<(&'static str, CgroupSockAddrLinkId)>,
    /// The cgroup they are attached to (for messages).
    cgroup: Option<String>,
    /// Per network namespace cookie: the refuse faults there.
    netns: HashMap<u64, HookEntry>,
}

/// What the loaded object holds.
struct Loaded {
    ebpf: Ebpf,
    hooks_map: BpfHashMap<MapData, u64, HookEntry>,
    hook_stats: PerCpuArray<MapData, u64>,
    counters: PerCpuArray<MapData, u64>,
    rng: PerCpuArray<MapData, u64>,
    ge: PerCpuArray<MapData, u32>,
    sink: Sink,
    table: Table,
    free_slots: VecDeque<u32>,
    slots: HashMap<u32, SlotState>,
    hooks: HashMap<HookKey, HookState>,
    connect: ConnectState,
    sock_ingress: SockIngressState,
    free_stats: VecDeque<u32>,
    nr_cpus: usize,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("slots", &self.slots)
            .field("hooks", &self.hooks)
            .finish_non_exhaustive()
    }
}

/// The agent's datapath (cheap to clone; every clone is the same datapath).
#[derive(Clone, Debug)]
pub struct Datapath {
    inner: Arc<Inner>,
}

struct Inner {
    /// The `cls_bpf` handle of this agent's filters (netlink attach path): one per process, so
    /// that two agents' filters on one interface never collide and a journal names exactly its
    /// own.
    handle: u32,
    state: Mutex<Option<Loaded>>,
    /// `CHAOS_SLOTS`, behind a lock of its own: the TTL watchdog disarms through it and must
    /// never wait behind an inject writing thousands of prefixes.
    slots: Mutex<Option<Array<MapData, FaultSlot>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(EbpfError::Missing(name))?;
    T::try_from(map).map_err(map_error("open", name))
}

fn per_cpu<T: aya::Pod + Clone>(
    values: Vec<T>,
    map: &'static str,
) -> Result<PerCpuValues<T>, EbpfError> {
    PerCpuValues::try_from(values).map_err(|e| EbpfError::Map {
        op: "build per-CPU values",
        map,
        source: Box::new(MapError::IoError(e)),
    })
}

impl Default for Datapath {
    fn default() -> Self {
        Self::new()
    }
}

impl Datapath {
    /// A datapath with nothing loaded yet: the object is loaded at the first fault (or by
    /// [`Datapath::load`], which the daemon calls at start so that inject is a map write).
    #[must_use]
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                handle: crate::txn::FaultId::random().raw(),
                state: Mutex::new(None),
                slots: Mutex::new(None),
            }),
        }
    }

    /// This agent's `cls_bpf` filter handle.
    #[must_use]
    pub fn handle(&self) -> u32 {
        self.inner.handle
    }

    /// Whether the programs are loaded.
    #[must_use]
    pub fn is_loaded(&self) -> bool {
        lock(&self.inner.state).is_some()
    }

    /// Loads and verifies the programs and creates the maps, once. Nothing is attached: if the
    /// agent dies now, the kernel frees everything with the file descriptors.
    pub fn load(&self) -> Result<(), EbpfError> {
        let mut state = lock(&self.inner.state);
        if state.is_some() {
            return Ok(());
        }
        let mut ebpf = EbpfLoader::new()
            .load(crate::EBPF_OBJECT)
            .map_err(|e| EbpfError::Load(Box::new(e)))?;
        for name in [names::PROG_TC_INGRESS, names::PROG_TC_EGRESS] {
            let started = std::time::Instant::now();
            let prog = program::<SchedClassifier>(&mut ebpf, name)?;
            prog.load().map_err(|source| EbpfError::Program {
                name,
                source: Box::new(source),
            })?;
            // What verification cost: the figure to watch when the programs grow.
            let insns = prog
                .info()
                .ok()
                .and_then(|i| i.verified_instruction_count());
            tracing::info!(
                program = name,
                verify_ms = started.elapsed().as_millis() as u64,
                verified_insns = insns,
                "program loaded"
            );
        }
        // The programs hold their maps; the agent takes its handles out of the object.
        let slots: Array<MapData, FaultSlot> = take(&mut ebpf, names::MAP_SLOTS)?;
        let loaded = Loaded {
            hooks_map: take(&mut ebpf, names::MAP_HOOKS)?,
            hook_stats: take(&mut ebpf, names::MAP_HOOK_STATS)?,
            counters: take(&mut ebpf, names::MAP_COUNTERS)?,
            rng: take(&mut ebpf, names::MAP_RNG)?,
            ge: take(&mut ebpf, names::MAP_GE_STATE)?,
            sink: Sink {
                globals: take(&mut ebpf, names::MAP_GLOBALS)?,
                ports: take(&mut ebpf, names::MAP_PORTS)?,
                blocks: take(&mut ebpf, names::MAP_PORT_BLOCKS)?,
                src4: take(&mut ebpf, names::MAP_SRC_V4)?,
                dst4: take(&mut ebpf, names::MAP_DST_V4)?,
                src6: take(&mut ebpf, names::MAP_SRC_V6)?,
                dst6: take(&mut ebpf, names::MAP_DST_V6)?,
                dns_names: take(&mut ebpf, names::MAP_DNS_NAMES)?,
                dns_types: take(&mut ebpf, names::MAP_DNS_TYPES)?,
                cgroups: take(&mut ebpf, names::MAP_CGROUPS)?,
            },
            ebpf,
            table: Table::default(),
            free_slots: (0..MAX_FAULTS).collect(),
            slots: HashMap::new(),
            hooks: HashMap::new(),
            connect: ConnectState::default(),
            sock_ingress: SockIngressState::default(),
            free_stats: (0..MAX_HOOKS).collect(),
            nr_cpus: aya::util::nr_cpus().unwrap_or(1),
        };
        *lock(&self.inner.slots) = Some(slots);
        *state = Some(loaded);
        Ok(())
    }

    fn with<T>(&self, f: impl FnOnce(&mut Loaded) -> Result<T, EbpfError>) -> Result<T, EbpfError> {
        self.load()?;
        let mut state = lock(&self.inner.state);
        let loaded = state.as_mut().ok_or(EbpfError::Missing("loaded object"))?;
        f(loaded)
    }

    /// Rewrites a slot's parameters in place (the watchdog's disarm and TTL extension, and
    /// tests that move a deadline).
    pub fn write_slot(&self, slot: u32, f: impl FnOnce(&mut FaultSlot)) -> Result<(), EbpfError> {
        let mut guard = lock(&self.inner.slots);
        let map = guard.as_mut().ok_or(EbpfError::Missing(names::MAP_SLOTS))?;
        let mut cfg = map
            .get(&slot, 0)
            .map_err(map_error("read", names::MAP_SLOTS))?;
        f(&mut cfg);
        map.set(slot, cfg, 0)
            .map_err(map_error("write", names::MAP_SLOTS))
    }

    /// Reserves a free slot (no kernel change). Slots are reused oldest-freed first, so that a
    /// packet still walking a just-freed slot never meets the next fault's parameters in it.
    pub fn alloc_slot(&self) -> Result<u32, EbpfError> {
        self.with(|l| {
            let slot = l.free_slots.pop_front().ok_or(EbpfError::SlotsFull {
                max: MAX_FAULTS as usize,
            })?;
            l.slots.insert(slot, SlotState::default());
            Ok(slot)
        })
    }

    /// Writes a fault into the table: filters, counters reset, per-CPU RNG and Gilbert-Elliott
    /// state, then its parameters, armed. It acts once it has joined a hook.
    pub fn install(
        &self,
        slot: u32,
        rules: &Rules,
        cfg: &FaultSlot,
        seed: Option<u64>,
    ) -> Result<(), EbpfError> {
        self.with(|l| {
            l.table.check(rules).map_err(EbpfError::Table)?;
            let n = l.nr_cpus;
            for dir in [Dir::Ingress, Dir::Egress] {
                for c in 0..COUNTERS_PER_DIR {
                    let idx = counter_index(slot, dir, Counter::Seen) + c;
                    l.counters
                        .set(idx, per_cpu(vec![0u64; n], names::MAP_COUNTERS)?, 0)
                        .map_err(map_error("reset", names::MAP_COUNTERS))?;
                }
            }
            l.ge.set(slot, per_cpu(vec![0u32; n], names::MAP_GE_STATE)?, 0)
                .map_err(map_error("reset", names::MAP_GE_STATE))?;
            let seeds: Vec<u64> = (0..n as u64)
                .map(|i| seed.map_or(0, |s| super::splitmix64(s.wrapping_add(i)).max(1)))
                .collect();
            l.rng
                .set(slot, per_cpu(seeds, names::MAP_RNG)?, 0)
                .map_err(map_error("seed", names::MAP_RNG))?;
            l.table.add(slot, rules, &mut l.sink)
        })?;
        let cfg = FaultSlot {
            flags: cfg.flags | F_ARMED,
            index: slot,
            ..*cfg
        };
        self.write_slot(slot, |c| *c = cfg)
    }

    /// Sets the slot's bit on a hook, attaching the programs there first if no fault of this
    /// agent uses it yet.
    pub fn join_hook(
        &self,
        slot: u32,
        ifindex: u32,
        ifname: &str,
        hook: Hook,
        mode: AttachMode,
    ) -> Result<(), EbpfError> {
        let l3 = crate::sys::is_l3_device(ifname);
        self.join(slot, ifindex, ifname, hook, l3, Some(mode))
    }

    /// [`Datapath::join_hook`] without attaching anything: the hook's entry is written, so the
    /// programs act on packets of `ifindex` when something runs them. For `BPF_PROG_TEST_RUN`
    /// (which runs a program on the loopback device, ifindex 1) and the bench.
    #[doc(hidden)]
    pub fn join_hook_unattached(
        &self,
        slot: u32,
        ifindex: u32,
        hook: Hook,
        l3_device: bool,
    ) -> Result<(), EbpfError> {
        self.join(slot, ifindex, "", hook, l3_device, None)
    }

    fn join(
        &self,
        slot: u32,
        ifindex: u32,
        ifname: &str,
        hook: Hook,
        l3_device: bool,
        attach: Option<AttachMode>,
    ) -> Result<(), EbpfError> {
        let handle = self.inner.handle;
        self.with(|l| {
            let key = (ifindex, hook);
            hook_state(l, key, ifname, l3_device)?;
            let seen_now = hook_seen(l, key);
            if let Some(s) = l.slots.get_mut(&slot)
                && !s.hooks.iter().any(|(k, _)| *k == key)
            {
                s.hooks.push((key, seen_now));
            }
            let h = l.hooks.get_mut(&key).ok_or(EbpfError::Missing("hook"))?;
            h.entry.faults.insert(slot);
            let entry = h.entry;
            l.hooks_map
                .insert(hook_key(ifindex, dir_of(hook)), entry, 0)
                .map_err(map_error("write", names::MAP_HOOKS))?;
            match attach {
                Some(mode) => attach_hook(l, key, mode, handle),
                None => Ok(()),
            }
        })
    }

    /// Attaches a hook's program with no fault on it, and keeps it attached until the datapath
    /// is dropped (`datapath.keep_attached`): a fault joining it later writes maps only, where
    /// the first fault on a hook would wait for the attach's RCU grace period. The hook has no
    /// entry in the hooks map while no fault is on it, so packets pass at the program's first
    /// lookup. tcx only: a `cls_bpf` filter would outlive the agent with nothing journaled.
    pub fn keep_hook(&self, ifindex: u32, ifname: &str, hook: Hook) -> Result<(), EbpfError> {
        let handle = self.inner.handle;
        self.with(|l| {
            let key = (ifindex, hook);
            hook_state(l, key, ifname, crate::sys::is_l3_device(ifname))?.kept = true;
            attach_hook(l, key, AttachMode::Tcx, handle)
        })
    }

    /// Releases every slot in use (tests reuse a loaded datapath this way).
    #[doc(hidden)]
    pub fn release_all(&self) -> Result<(), EbpfError> {
        let slots: Vec<u32> = lock(&self.inner.state)
            .as_ref()
            .map_or_else(Vec::new, |l| l.slots.keys().copied().collect());
        for slot in slots {
            self.release_slot(slot)?;
        }
        Ok(())
    }

    /// The raw fd of a hook's program (valid while the datapath lives), for
    /// `BPF_PROG_TEST_RUN`.
    #[doc(hidden)]
    pub fn program_fd(&self, hook: Hook) -> Result<i32, EbpfError> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        self.with(|l| {
            let prog = program::<SchedClassifier>(&mut l.ebpf, hook.program())?;
            let fd = prog.fd().map_err(|source| EbpfError::Program {
                name: hook.program(),
                source: Box::new(source),
            })?;
            Ok(fd.as_fd().as_raw_fd())
        })
    }

    /// Removes a slot from the table (disarmed first) and from any hook it is still on
    /// (normally its hook undos took it off already), detaches hooks left without faults and
    /// frees the slot. Idempotent: a slot that is not in use is left alone. Returns whether
    /// anything was removed.
    pub fn release_slot(&self, slot: u32) -> Result<bool, EbpfError> {
        if !self.is_loaded() {
            return Ok(false);
        }
        if !lock(&self.inner.state)
            .as_ref()
            .is_some_and(|l| l.slots.contains_key(&slot))
        {
            return Ok(false);
        }
        self.write_slot(slot, |c| *c = FaultSlot::default())?;
        self.with(|l| {
            let Some(state) = l.slots.get(&slot) else {
                return Ok(false);
            };
            let keys: Vec<HookKey> = state.hooks.iter().map(|(k, _)| *k).collect();
            let mut first_error = None;
            // And hooks left empty by an attach that failed before any fault was on them.
            let empty = l
                .hooks
                .iter()
                .filter(|(_, h)| h.entry.faults.is_empty())
                .map(|(k, _)| *k);
            let keys: Vec<HookKey> = keys.into_iter().chain(empty).collect();
            for key in keys {
                if let Err(e) = leave_hook(l, slot, key) {
                    first_error.get_or_insert(e);
                }
            }
            if let Err(e) = leave_connect(l, slot) {
                first_error.get_or_insert(e);
            }
            if let Err(e) = leave_socket_ingress(l, slot) {
                first_error.get_or_insert(e);
            }
            if let Err(e) = l.table.remove(slot, &mut l.sink) {
                first_error.get_or_insert(e);
            }
            if let Some(e) = first_error {
                // Kept in use, so that a retry (or the journal) can finish the job.
                return Err(e);
            }
            l.slots.remove(&slot);
            l.free_slots.push_back(slot);
            Ok(true)
        })
    }

    /// Joins a slot to the connect hook of the network namespace with `netns_cookie`: loads the
    /// connect programs at the first refuse fault and attaches them to the cgroup v2 root when
    /// no namespace has one yet.
    pub fn join_connect(&self, slot: u32, netns_cookie: u64) -> Result<(), EbpfError> {
        self.with(|l| {
            if !l.connect.loaded {
                load_connect(&mut l.ebpf)?;
                l.connect.loaded = true;
            }
            let key = connect_hook_key(netns_cookie);
            if !l.connect.netns.contains_key(&netns_cookie) {
                let stats = alloc_stats(l)?;
                l.connect.netns.insert(
                    netns_cookie,
                    HookEntry {
                        faults: Bitmap::EMPTY,
                        flags: 0,
                        stats,
                    },
                );
            }
            let seen_now = connect_seen(l, netns_cookie);
            if let Some(s) = l.slots.get_mut(&slot) {
                s.connect.get_or_insert((netns_cookie, seen_now));
            }
            let entry = l
                .connect
                .netns
                .get_mut(&netns_cookie)
                .ok_or(EbpfError::Missing("connect hook"))?;
            entry.faults.insert(slot);
            let entry = *entry;
            l.hooks_map
                .insert(key, entry, 0)
                .map_err(map_error("write", names::MAP_HOOKS))?;
            if l.connect.links.is_empty() {
                let (dir, cgroup) =
                    crate::sys::open_cgroup2_root().map_err(|_| EbpfError::NoCgroup2)?;
                for name in [names::PROG_CONNECT4, names::PROG_CONNECT6] {
                    let prog = program::<CgroupSockAddr>(&mut l.ebpf, name)?;
                    // A bpf_link (>= 5.7) is always "multi": the cgroup's other programs
                    // (systemd's, a CNI's) keep running, and ours runs for every descendant
                    // cgroup whatever they attach. The kernel refuses any attach flag on a
                    // cgroup link, so the mode must be `Single` (flags 0).
                    let id = prog
                        .attach(&dir, CgroupAttachMode::Single)
                        .map_err(|source| EbpfError::AttachCgroup {
                            prog: name,
                            cgroup: cgroup.clone(),
                            source: Box::new(source),
                        })?;
                    l.connect.links.push((name, id));
                }
                l.connect.cgroup = Some(cgroup);
            }
            Ok(())
        })
    }

    /// Joins a slot to the socket-ingress hook of interface `ifindex` (a fault scoped to
    /// processes, at ingress): loads `chaos_sk_in` at the first such fault and attaches it to
    /// the cgroup v2 root when no interface has one yet.
    pub fn join_socket_ingress(&self, slot: u32, ifindex: u32) -> Result<(), EbpfError> {
        self.with(|l| {
            if !l.sock_ingress.loaded {
                load_sock_ingress(&mut l.ebpf)?;
                l.sock_ingress.loaded = true;
            }
            if !l.sock_ingress.ifaces.contains_key(&ifindex) {
                let stats = alloc_stats(l)?;
                l.sock_ingress.ifaces.insert(
                    ifindex,
                    HookEntry {
                        faults: Bitmap::EMPTY,
                        flags: 0,
                        stats,
                    },
                );
            }
            let seen_now = sock_ingress_seen(l, ifindex);
            if let Some(s) = l.slots.get_mut(&slot) {
                s.sock_ingress.get_or_insert((ifindex, seen_now));
            }
            let entry = l
                .sock_ingress
                .ifaces
                .get_mut(&ifindex)
                .ok_or(EbpfError::Missing("socket-ingress hook"))?;
            entry.faults.insert(slot);
            let entry = *entry;
            l.hooks_map
                .insert(socket_ingress_hook_key(ifindex), entry, 0)
                .map_err(map_error("write", names::MAP_HOOKS))?;
            if l.sock_ingress.link.is_none() {
                let (dir, cgroup) =
                    crate::sys::open_cgroup2_root().map_err(|_| EbpfError::NoCgroup2)?;
                let name = names::PROG_SOCK_INGRESS;
                let prog = program::<CgroupSkb>(&mut l.ebpf, name)?;
                // A bpf_link, as for the connect programs: the cgroup's other programs keep
                // running, and the kernel detaches ours when the agent's fds close.
                let id = prog
                    .attach(&dir, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
                    .map_err(|source| EbpfError::AttachCgroup {
                        prog: name,
                        cgroup: cgroup.clone(),
                        source: Box::new(source),
                    })?;
                l.sock_ingress.link = Some(id);
                l.sock_ingress.cgroup = Some(cgroup);
            }
            Ok(())
        })
    }

    /// Loads (verifies) the socket-ingress program without attaching it (`doctor`, tests).
    pub fn load_socket_ingress_program(&self) -> Result<(), EbpfError> {
        self.with(|l| {
            if !l.sock_ingress.loaded {
                load_sock_ingress(&mut l.ebpf)?;
                l.sock_ingress.loaded = true;
            }
            Ok(())
        })
    }

    /// Takes a slot off its socket-ingress hook (the undo of
    /// [`Datapath::join_socket_ingress`]) and detaches the program once no interface has such
    /// a fault left. Returns whether it was detached.
    pub fn leave_socket_ingress(&self, slot: u32) -> Result<bool, EbpfError> {
        if !self.is_loaded() {
            return Ok(false);
        }
        self.with(|l| leave_socket_ingress(l, slot))
    }

    /// The cgroup the socket-ingress program is attached to, while it is.
    #[must_use]
    pub fn socket_ingress_cgroup(&self) -> Option<String> {
        lock(&self.inner.state)
            .as_ref()
            .and_then(|l| l.sock_ingress.cgroup.clone())
    }

    /// Loads (verifies) the connect programs without attaching them (`doctor`).
    pub fn load_connect_programs(&self) -> Result<(), EbpfError> {
        self.with(|l| {
            if !l.connect.loaded {
                load_connect(&mut l.ebpf)?;
                l.connect.loaded = true;
            }
            Ok(())
        })
    }

    /// Takes a slot off its connect hook (the undo of [`Datapath::join_connect`]) and detaches
    /// the connect programs once no namespace has a refuse fault left. Returns whether the
    /// programs were detached.
    pub fn leave_connect(&self, slot: u32) -> Result<bool, EbpfError> {
        if !self.is_loaded() {
            return Ok(false);
        }
        self.with(|l| leave_connect(l, slot))
    }

    /// The cgroup the connect programs are attached to, while they are (tests, status).
    #[must_use]
    pub fn connect_cgroup(&self) -> Option<String> {
        lock(&self.inner.state)
            .as_ref()
            .and_then(|l| l.connect.cgroup.clone())
    }

    /// Whether a journaled attachment is this agent's (its filter handle): a live agent
    /// releases its own through the refcount, a dead agent's is deleted.
    #[must_use]
    pub fn owns(&self, handle: u32) -> bool {
        handle == self.inner.handle
    }

    /// Takes a slot off a hook (the undo of [`Datapath::join_hook`]) and detaches the programs
    /// there if no fault is left on it. Returns whether the programs were detached.
    pub fn leave_hook(&self, slot: u32, ifname: &str, hook: Hook) -> Result<bool, EbpfError> {
        if !self.is_loaded() {
            return Ok(false);
        }
        self.with(|l| {
            let Some(key) = l
                .hooks
                .iter()
                .find(|(_, h)| h.hook == hook && h.ifname == ifname)
                .map(|(k, _)| *k)
            else {
                return Ok(false);
            };
            if let Some(s) = l.slots.get_mut(&slot) {
                s.hooks.retain(|(k, _)| *k != key);
            }
            leave_hook(l, slot, key)
        })
    }

    /// Disarms a slot at once (the fault stops acting; its entries go with its undo).
    pub fn disarm(&self, slot: u32) -> Result<(), EbpfError> {
        self.write_slot(slot, |c| c.flags &= !F_ARMED)
    }

    /// Moves a slot's kernel-side deadline.
    pub fn set_expiry(&self, slot: u32, expires_at_mono_ns: u64) -> Result<(), EbpfError> {
        self.write_slot(slot, |c| c.expires_at_ns = expires_at_mono_ns)
    }

    /// The slot's parameters as the kernel holds them.
    pub fn slot_config(&self, slot: u32) -> Result<FaultSlot, EbpfError> {
        let guard = lock(&self.inner.slots);
        let map = guard.as_ref().ok_or(EbpfError::Missing(names::MAP_SLOTS))?;
        map.get(&slot, 0)
            .map_err(map_error("read", names::MAP_SLOTS))
    }

    /// The slot's counters, summed over CPUs; `seen` is what its hooks' programs saw since it
    /// joined them.
    pub fn counters(&self, slot: u32) -> Result<Counters, EbpfError> {
        let state = lock(&self.inner.state);
        let l = state.as_ref().ok_or(EbpfError::Missing("loaded object"))?;
        let read = |dir: Dir, c: Counter| -> Result<u64, EbpfError> {
            let v = l
                .counters
                .get(&counter_index(slot, dir, c), 0)
                .map_err(map_error("read", names::MAP_COUNTERS))?;
            Ok(v.iter().sum())
        };
        let dir = |d: Dir| -> Result<DirCounters, EbpfError> {
            let hook = match d {
                Dir::Ingress => Hook::Ingress,
                Dir::Egress => Hook::Egress,
            };
            let seen = l.slots.get(&slot).map_or(0, |s| {
                let connects = match (s.connect, d) {
                    (Some((cookie, base)), Dir::Egress) => {
                        connect_seen(l, cookie).saturating_sub(base)
                    }
                    _ => 0,
                } + match (s.sock_ingress, d) {
                    (Some((ifindex, base)), Dir::Ingress) => {
                        sock_ingress_seen(l, ifindex).saturating_sub(base)
                    }
                    _ => 0,
                };
                s.hooks
                    .iter()
                    .filter(|((_, h), _)| *h == hook)
                    .map(|(k, base)| hook_seen(l, *k).saturating_sub(*base))
                    .sum::<u64>()
                    + connects
            });
            Ok(DirCounters {
                seen,
                matched: read(d, Counter::Matched)?,
                dropped: read(d, Counter::Dropped)?,
                steered: read(d, Counter::Steered)?,
                protected: read(d, Counter::Protected)?,
                expired: read(d, Counter::Expired)?,
                rewritten: read(d, Counter::Rewritten)?,
                unparsed: read(d, Counter::Unparsed)?,
                refused: read(d, Counter::Refused)?,
                reset: 0,
            })
        };
        Ok(Counters {
            ingress: dir(Dir::Ingress)?,
            egress: dir(Dir::Egress)?,
        })
    }

    /// Slots in use (for tests and the bench).
    #[must_use]
    pub fn slots_in_use(&self) -> usize {
        lock(&self.inner.state)
            .as_ref()
            .map_or(0, |l| l.slots.len())
    }

    /// Hooks attached, as (ifname, hook) (for tests and the bench).
    #[must_use]
    pub fn attached(&self) -> Vec<(String, Hook)> {
        lock(&self.inner.state).as_ref().map_or_else(Vec::new, |l| {
            let mut v: Vec<(String, Hook)> = l
                .hooks
                .values()
                .filter(|h| h.link.is_some())
                .map(|h| (h.ifname.clone(), h.hook))
                .collect();
            v.sort_by(|a, b| (&a.0, a.1.as_str()).cmp(&(&b.0, b.1.as_str())));
            v
        })
    }

    /// The kernel ids of the two programs, once loaded (tests check they are gone after exit).
    #[must_use]
    pub fn program_ids(&self) -> Vec<u32> {
        let mut state = lock(&self.inner.state);
        let Some(l) = state.as_mut() else {
            return Vec::new();
        };
        let mut ids: Vec<u32> = [names::PROG_TC_INGRESS, names::PROG_TC_EGRESS]
            .into_iter()
            .filter_map(|n| {
                program::<SchedClassifier>(&mut l.ebpf, n)
                    .ok()?
                    .info()
                    .ok()
                    .map(|i| i.id())
            })
            .collect();
        if l.sock_ingress.loaded {
            ids.extend(
                program::<CgroupSkb>(&mut l.ebpf, names::PROG_SOCK_INGRESS)
                    .ok()
                    .and_then(|p| p.info().ok())
                    .map(|i| i.id()),
            );
        }
        if l.connect.loaded {
            ids.extend(
                [names::PROG_CONNECT4, names::PROG_CONNECT6]
                    .into_iter()
                    .filter_map(|n| {
                        program::<CgroupSockAddr>(&mut l.ebpf, n)
                            .ok()?
                            .info()
                            .ok()
                            .map(|i| i.id())
                    }),
            );
        }
        ids
    }
}

fn dir_of(hook: Hook) -> Dir {
    match hook {
        Hook::Ingress => Dir::Ingress,
        Hook::Egress => Dir::Egress,
    }
}

/// A program of the object as its type (`SchedClassifier`, `CgroupSockAddr`).
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, EbpfError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(EbpfError::Missing(name))?
        .try_into()
        .map_err(|source| EbpfError::Program {
            name,
            source: Box::new(source),
        })
}

/// Loads (verifies) the two connect programs. A kernel whose verifier refuses them for
/// `bpf_set_retval` (before 6.1) gets the error that says so.
fn load_connect(ebpf: &mut Ebpf) -> Result<(), EbpfError> {
    for name in [names::PROG_CONNECT4, names::PROG_CONNECT6] {
        let started = std::time::Instant::now();
        let prog = program::<CgroupSockAddr>(ebpf, name)?;
        if let Err(source) = prog.load() {
            let text = format!("{source:?}");
            if text.contains("set_retval") || text.contains("unknown func") {
                return Err(EbpfError::NoSetRetval {
                    kernel: crate::sys::kernel_release(),
                });
            }
            return Err(EbpfError::Program {
                name,
                source: Box::new(source),
            });
        }
        let insns = prog
            .info()
            .ok()
            .and_then(|i| i.verified_instruction_count());
        tracing::info!(
            program = name,
            verify_ms = started.elapsed().as_millis() as u64,
            verified_insns = insns,
            "program loaded"
        );
    }
    Ok(())
}

/// The state of hook `key`, made (with a packet counter of its own, no fault and no link) if
/// the hook has none yet.
fn hook_state<'a>(
    l: &'a mut Loaded,
    key: HookKey,
    ifname: &str,
    l3_device: bool,
) -> Result<&'a mut HookState, EbpfError> {
    if !l.hooks.contains_key(&key) {
        let stats = alloc_stats(l)?;
        l.hooks.insert(
            key,
            HookState {
                ifname: ifname.to_owned(),
                hook: key.1,
                entry: HookEntry {
                    faults: Bitmap::EMPTY,
                    flags: if l3_device { HOOK_L3_DEVICE } else { 0 },
                    stats,
                },
                link: None,
                kept: false,
            },
        );
    }
    l.hooks.get_mut(&key).ok_or(EbpfError::Missing("hook"))
}

/// Attaches hook `key`'s program the way `mode` says, unless it is attached already.
fn attach_hook(
    l: &mut Loaded,
    key: HookKey,
    mode: AttachMode,
    handle: u32,
) -> Result<(), EbpfError> {
    let h = l.hooks.get(&key).ok_or(EbpfError::Missing("hook"))?;
    if h.link.is_some() {
        return Ok(());
    }
    let (ifname, hook) = (h.ifname.clone(), h.hook);
    let prog = program::<SchedClassifier>(&mut l.ebpf, hook.program())?;
    let id = match mode {
        AttachMode::Netlink => super::attach::attach_netlink(prog, &ifname, hook, handle)?,
        AttachMode::Tcx | AttachMode::Auto => super::attach::attach_tcx(prog, &ifname, hook)?,
    };
    l.hooks
        .get_mut(&key)
        .ok_or(EbpfError::Missing("hook"))?
        .link = Some((mode, id));
    Ok(())
}

/// Takes a free per-hook packet counter (tc hooks and connect hooks share them), zeroed.
fn alloc_stats(l: &mut Loaded) -> Result<u32, EbpfError> {
    let stats = l.free_stats.pop_front().ok_or(EbpfError::HooksFull {
        max: MAX_HOOKS as usize,
    })?;
    let zeroed = per_cpu(vec![0u64; l.nr_cpus], names::MAP_HOOK_STATS).and_then(|zeros| {
        l.hook_stats
            .set(stats, zeros, 0)
            .map_err(map_error("reset", names::MAP_HOOK_STATS))
    });
    if let Err(e) = zeroed {
        l.free_stats.push_back(stats);
        return Err(e);
    }
    Ok(stats)
}

/// Loads (verifies) the socket-ingress program.
fn load_sock_ingress(ebpf: &mut Ebpf) -> Result<(), EbpfError> {
    let name = names::PROG_SOCK_INGRESS;
    let started = std::time::Instant::now();
    let prog = program::<CgroupSkb>(ebpf, name)?;
    prog.load().map_err(|source| EbpfError::Program {
        name,
        source: Box::new(source),
    })?;
    tracing::info!(
        program = name,
        verify_ms = started.elapsed().as_millis() as u64,
        verified_insns = prog
            .info()
            .ok()
            .and_then(|i| i.verified_instruction_count()),
        "program loaded"
    );
    Ok(())
}

/// Packets the socket-ingress hook of an interface has seen, summed over CPUs.
fn sock_ingress_seen(l: &Loaded, ifindex: u32) -> u64 {
    let Some(e) = l.sock_ingress.ifaces.get(&ifindex) else {
        return 0;
    };
    l.hook_stats.get(&e.stats, 0).map_or(0, |v| v.iter().sum())
}

/// Clears `slot` from its socket-ingress hook; removes an interface's entry once empty and
/// detaches the program once no interface is left. Returns whether it was detached.
fn leave_socket_ingress(l: &mut Loaded, slot: u32) -> Result<bool, EbpfError> {
    let Some((ifindex, _)) = l.slots.get_mut(&slot).and_then(|s| s.sock_ingress.take()) else {
        return Ok(false);
    };
    let key = socket_ingress_hook_key(ifindex);
    if let Some(e) = l.sock_ingress.ifaces.get_mut(&ifindex) {
        e.faults.remove(slot);
        if e.faults.is_empty() {
            absent_ok(l.hooks_map.remove(&key)).map_err(map_error("delete", names::MAP_HOOKS))?;
            if let Some(e) = l.sock_ingress.ifaces.remove(&ifindex) {
                l.free_stats.push_back(e.stats);
            }
        } else {
            let entry = *e;
            l.hooks_map
                .insert(key, entry, 0)
                .map_err(map_error("write", names::MAP_HOOKS))?;
        }
    }
    if !l.sock_ingress.ifaces.is_empty() {
        return Ok(false);
    }
    let Some(id) = l.sock_ingress.link.take() else {
        return Ok(false);
    };
    let prog = program::<CgroupSkb>(&mut l.ebpf, names::PROG_SOCK_INGRESS)?;
    if let Err(source) = prog.detach(id) {
        tracing::debug!(error = %source, program = names::PROG_SOCK_INGRESS, "detach");
    }
    l.sock_ingress.cgroup = None;
    Ok(true)
}

/// Connects the connect hook of a namespace has seen, summed over CPUs.
fn connect_seen(l: &Loaded, netns_cookie: u64) -> u64 {
    let Some(e) = l.connect.netns.get(&netns_cookie) else {
        return 0;
    };
    l.hook_stats.get(&e.stats, 0).map_or(0, |v| v.iter().sum())
}

/// Clears `slot` from its connect hook; removes a namespace's entry once empty and detaches
/// the programs once no namespace is left. Returns whether they were detached.
fn leave_connect(l: &mut Loaded, slot: u32) -> Result<bool, EbpfError> {
    let Some((cookie, _)) = l.slots.get_mut(&slot).and_then(|s| s.connect.take()) else {
        return Ok(false);
    };
    let key = connect_hook_key(cookie);
    if let Some(e) = l.connect.netns.get_mut(&cookie) {
        e.faults.remove(slot);
        if e.faults.is_empty() {
            absent_ok(l.hooks_map.remove(&key)).map_err(map_error("delete", names::MAP_HOOKS))?;
            if let Some(e) = l.connect.netns.remove(&cookie) {
                l.free_stats.push_back(e.stats);
            }
        } else {
            let entry = *e;
            l.hooks_map
                .insert(key, entry, 0)
                .map_err(map_error("write", names::MAP_HOOKS))?;
        }
    }
    if !l.connect.netns.is_empty() || l.connect.links.is_empty() {
        return Ok(false);
    }
    for (name, id) in std::mem::take(&mut l.connect.links) {
        let prog = program::<CgroupSockAddr>(&mut l.ebpf, name)?;
        if let Err(source) = prog.detach(id) {
            tracing::debug!(error = %source, program = name, "detach");
        }
    }
    l.connect.cgroup = None;
    Ok(true)
}

/// Packets the hook's program has seen, summed over CPUs.
fn hook_seen(l: &Loaded, key: HookKey) -> u64 {
    let Some(h) = l.hooks.get(&key) else {
        return 0;
    };
    l.hook_stats
        .get(&h.entry.stats, 0)
        .map_or(0, |v| v.iter().sum())
}

/// Clears `slot` from a hook and detaches the hook if it is left empty. Returns whether it was
/// detached.
fn leave_hook(l: &mut Loaded, slot: u32, key: HookKey) -> Result<bool, EbpfError> {
    let Some(h) = l.hooks.get_mut(&key) else {
        return Ok(false);
    };
    h.entry.faults.remove(slot);
    let k = hook_key(key.0, dir_of(key.1));
    if !h.entry.faults.is_empty() {
        let entry = h.entry;
        return l
            .hooks_map
            .insert(k, entry, 0)
            .map(|()| false)
            .map_err(map_error("write", names::MAP_HOOKS));
    }
    // Last fault gone: the entry first (packets pass at the first lookup), then the program,
    // unless the hook is kept attached.
    absent_ok(l.hooks_map.remove(&k)).map_err(map_error("delete", names::MAP_HOOKS))?;
    if h.kept {
        return Ok(false);
    }
    if let Some((_, id)) = h.link.take() {
        let prog = program::<SchedClassifier>(&mut l.ebpf, key.1.program())?;
        if let Err(source) = prog.detach(id) {
            // Already gone (the interface was deleted): nothing is left to detach.
            tracing::debug!(error = %source, hook = key.1.as_str(), ifindex = key.0, "detach");
        }
    }
    if let Some(h) = l.hooks.remove(&key) {
        l.free_stats.push_back(h.entry.stats);
    }
    Ok(true)
}
