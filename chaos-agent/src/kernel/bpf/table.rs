//! The fault table's bookkeeping in userspace: which map entries a fault's filters set, kept
//! as a mirror of the kernel's maps so that adding or removing one fault writes only the entries
//! whose value changes.
//!
//! Pure logic: the writes go to a [`TableSink`], which `datapath` implements over the real maps
//! and the tests over a `BTreeMap`. The layout the programs read is in `chaos_common::table`.
//!
//! Prefix tries: the kernel's LPM lookup returns only the longest stored prefix that contains
//! the address, so the value stored for a prefix is the union of the faults of *every* listed
//! prefix containing it (itself included). A fault listing `10.0.0.0/8` next to another listing
//! `10.1.0.0/16` makes the `/16` entry carry both, and an address in `10.1.0.0/16` matches both
//! faults with one lookup.

use std::collections::{BTreeMap, HashMap};

use chaos_common::{
    Bitmap, Globals, PORT_BLOCK_SIZE, PORT_BLOCKS, PROTO_CLASS_ICMP, PROTO_CLASS_OTHER,
    PROTO_CLASS_TCP, PROTO_CLASS_UDP, PROTO_CLASSES, PortEntry,
};
use ipnet::IpNet;

use super::dns_table::{DnsTable, NameWrite, TypeWrite};

/// `Rules::protos` bits.
pub const PROTO_TCP: u32 = 1 << 0;
/// UDP.
pub const PROTO_UDP: u32 = 1 << 1;
/// ICMP and `ICMPv6`.
pub const PROTO_ICMP: u32 = 1 << 2;

/// One fault's filters, as the table needs them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// `PROTO_*` bits; 0 = every protocol (including those without a class of their own).
    pub protos: u32,
    /// Source prefixes (empty: every source).
    pub src: Vec<IpNet>,
    /// Destination prefixes (empty: every destination).
    pub dst: Vec<IpNet>,
    /// Source port ranges, inclusive (empty: every port, and packets without ports).
    pub sports: Vec<(u16, u16)>,
    /// Destination port ranges.
    pub dports: Vec<(u16, u16)>,
    /// Ports whose packets this fault never touches.
    pub protected: Vec<(u16, u16)>,
    /// A DNS answer fault: it acts on DNS responses only, filtered by the two lists below.
    pub dns: bool,
    /// Question name suffixes, as `chaos_common::dns::name_key` writes them (empty: every name).
    pub dns_names: Vec<Vec<u8>>,
    /// Query types (empty: every type).
    pub dns_types: Vec<u16>,
    /// The cgroup v2 id the fault is scoped to (its subtree), if any.
    pub cgroup: Option<u64>,
}

/// Which prefix trie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Trie {
    /// Source IPv4.
    Src4,
    /// Destination IPv4.
    Dst4,
    /// Source IPv6.
    Src6,
    /// Destination IPv6.
    Dst6,
}

impl Trie {
    const ALL: [Self; 4] = [Self::Src4, Self::Dst4, Self::Src6, Self::Dst6];

    fn index(self) -> usize {
        self as usize
    }

    /// Address width in bits.
    #[must_use]
    pub fn bits(self) -> u8 {
        match self {
            Self::Src4 | Self::Dst4 => 32,
            Self::Src6 | Self::Dst6 => 128,
        }
    }

    fn of(net: &IpNet, source: bool) -> Self {
        match (net, source) {
            (IpNet::V4(_), true) => Self::Src4,
            (IpNet::V4(_), false) => Self::Dst4,
            (IpNet::V6(_), true) => Self::Src6,
            (IpNet::V6(_), false) => Self::Dst6,
        }
    }
}

/// A prefix: the address as an integer (host order, right-aligned in a `u128`: an IPv4
/// address is its 32-bit value) with the host bits cleared, and its length.
pub type Prefix = (u128, u8);

fn prefix_of(net: &IpNet) -> Prefix {
    match net.trunc() {
        IpNet::V4(n) => (u128::from(u32::from(n.addr())), n.prefix_len()),
        IpNet::V6(n) => (u128::from(n.addr()), n.prefix_len()),
    }
}

/// The mask of the first `len` of `bits` bits.
fn mask(len: u8, bits: u8) -> u128 {
    if len == 0 {
        0
    } else {
        let all = if bits == 128 {
            u128::MAX
        } else {
            (1u128 << bits) - 1
        };
        all & !((1u128 << (bits - len)) - 1)
    }
}

/// Where the table's writes go. Each call sets one kernel entry to its new value.
pub trait TableSink {
    /// The error of a write.
    type Error;
    /// `CHAOS_GLOBALS[0]`.
    fn globals(&mut self, g: &Globals) -> Result<(), Self::Error>;
    /// `CHAOS_PORTS[port]`.
    fn port(&mut self, port: u16, e: &PortEntry) -> Result<(), Self::Error>;
    /// `CHAOS_PORT_BLKS[block]`.
    fn block(&mut self, block: u32, e: &PortEntry) -> Result<(), Self::Error>;
    /// A trie entry: `Some` inserts or replaces, `None` deletes.
    fn prefix(&mut self, trie: Trie, p: Prefix, v: Option<&Bitmap>) -> Result<(), Self::Error>;
    /// A `CHAOS_DNS_NAMES` entry (a reversed name key).
    fn dns_name(&mut self, key: &[u8], v: Option<&Bitmap>) -> Result<(), Self::Error>;
    /// A `CHAOS_DNS_TYPES` entry.
    fn dns_type(&mut self, qtype: u16, v: Option<&Bitmap>) -> Result<(), Self::Error>;
    /// A `CHAOS_CGROUPS` entry.
    fn cgroup(&mut self, id: u64, v: Option<&Bitmap>) -> Result<(), Self::Error>;
}

/// Why a fault does not fit the table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The trie would hold more entries than its capacity.
    #[error(
        "the {trie:?} prefix table would hold {needed} entries, more than its capacity of {capacity} (all faults together); nothing applied"
    )]
    TrieFull {
        /// Which trie.
        trie: Trie,
        /// Entries it would hold.
        needed: usize,
        /// Its capacity.
        capacity: usize,
    },
    /// A DNS table would hold more entries than its capacity.
    #[error(
        "the DNS {what} table would hold {needed} entries, more than its capacity of {capacity} (all faults together); nothing applied"
    )]
    DnsFull {
        /// `name` or `type`.
        what: &'static str,
        /// Entries it would hold.
        needed: usize,
        /// Its capacity.
        capacity: usize,
    },
    /// Faults are scoped to more cgroups at once than the table holds.
    #[error(
        "faults would be scoped to more than {capacity} cgroups at once (all faults together); nothing applied"
    )]
    CgroupsFull {
        /// Its capacity.
        capacity: usize,
    },
}

#[derive(Debug)]
struct PrefixTrie {
    /// Faults that listed each prefix.
    own: BTreeMap<Prefix, Bitmap>,
    /// What the kernel holds for each listed prefix: the union of `own` over its ancestors.
    stored: BTreeMap<Prefix, Bitmap>,
    /// How many listed prefixes have each length: the ancestor walk skips absent lengths.
    lens: [u32; 129],
}

impl Default for PrefixTrie {
    fn default() -> Self {
        Self {
            own: BTreeMap::new(),
            stored: BTreeMap::new(),
            lens: [0; 129],
        }
    }
}

impl PrefixTrie {
    /// The value a prefix must store: the faults of every listed prefix containing it.
    fn union_of_ancestors(&self, p: Prefix, bits: u8) -> Bitmap {
        let mut v = Bitmap::EMPTY;
        for len in 0..=p.1 {
            if self.lens[usize::from(len)] == 0 {
                continue;
            }
            if let Some(b) = self.own.get(&(p.0 & mask(len, bits), len)) {
                v = v.or(b);
            }
        }
        v
    }

    /// Listed prefixes inside `p` (itself included).
    fn within(&self, p: Prefix, bits: u8) -> Vec<Prefix> {
        let span = if p.1 == 0 {
            if bits == 128 {
                u128::MAX
            } else {
                (1u128 << bits) - 1
            }
        } else {
            !mask(p.1, bits) & mask(bits, bits)
        };
        let end = p.0 | span;
        self.stored
            .range((p.0, 0)..=(end, u8::MAX))
            .filter(|((_, len), _)| *len >= p.1)
            .map(|(k, _)| *k)
            .collect()
    }
}

/// A slot's entries in the port tables, remembered so that removal clears exactly them.
#[derive(Debug, Default)]
struct PortMarks {
    ports: Vec<u16>,
    blocks: Vec<u32>,
}

/// Which field of a [`PortEntry`].
#[derive(Clone, Copy)]
enum PortField {
    Src,
    Dst,
    Protect,
}

fn field(e: &mut PortEntry, f: PortField) -> &mut Bitmap {
    match f {
        PortField::Src => &mut e.src,
        PortField::Dst => &mut e.dst,
        PortField::Protect => &mut e.protect,
    }
}

/// The exact ports and whole blocks covering `lo..=hi`.
fn cover(lo: u16, hi: u16) -> (Vec<u16>, Vec<u32>) {
    let (mut ports, mut blocks) = (Vec::new(), Vec::new());
    let (lo, hi) = (u32::from(lo.min(hi)), u32::from(lo.max(hi)));
    let mut p = lo;
    while p <= hi {
        if p % PORT_BLOCK_SIZE == 0 && p + PORT_BLOCK_SIZE - 1 <= hi {
            blocks.push(p / PORT_BLOCK_SIZE);
            p += PORT_BLOCK_SIZE;
        } else {
            ports.push(p as u16);
            p += 1;
        }
    }
    (ports, blocks)
}

/// The mirror of the kernel's fault table (all dimensions but the hooks).
#[derive(Debug)]
pub struct Table {
    globals: Globals,
    ports: HashMap<u16, PortEntry>,
    blocks: Vec<PortEntry>,
    tries: [PrefixTrie; 4],
    rules: HashMap<u32, Rules>,
    marks: HashMap<u32, PortMarks>,
    dns: DnsTable,
    /// cgroup id -> the faults scoped to it, as `CHAOS_CGROUPS` holds it.
    cgroups: BTreeMap<u64, Bitmap>,
    trie_capacity: usize,
}

impl Default for Table {
    fn default() -> Self {
        Self::new(chaos_common::MAX_TRIE_ENTRIES as usize)
    }
}

impl Table {
    /// An empty table whose tries hold at most `trie_capacity` entries each.
    #[must_use]
    pub fn new(trie_capacity: usize) -> Self {
        Self {
            globals: Globals::default(),
            ports: HashMap::new(),
            blocks: vec![PortEntry::default(); PORT_BLOCKS as usize],
            tries: Default::default(),
            rules: HashMap::new(),
            marks: HashMap::new(),
            dns: DnsTable::default(),
            cgroups: BTreeMap::new(),
            trie_capacity,
        }
    }

    /// The faults in the table.
    #[must_use]
    pub fn slots(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.rules.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Entries of a trie (for tests and the bench).
    #[must_use]
    pub fn trie_len(&self, trie: Trie) -> usize {
        self.tries[trie.index()].stored.len()
    }

    /// Checks that `rules` fit next to what is there; changes nothing.
    pub fn check(&self, rules: &Rules) -> Result<(), TableError> {
        for trie in Trie::ALL {
            let t = &self.tries[trie.index()];
            let nets = rules
                .src
                .iter()
                .map(|n| (n, true))
                .chain(rules.dst.iter().map(|n| (n, false)));
            let mut new: Vec<Prefix> = nets
                .filter(|(n, s)| Trie::of(n, *s) == trie)
                .map(|(n, _)| prefix_of(n))
                .filter(|p| !t.stored.contains_key(p))
                .collect();
            new.sort_unstable();
            new.dedup();
            let needed = t.stored.len() + new.len();
            if needed > self.trie_capacity {
                return Err(TableError::TrieFull {
                    trie,
                    needed,
                    capacity: self.trie_capacity,
                });
            }
        }
        if let Some(id) = rules.cgroup
            && !self.cgroups.contains_key(&id)
            && self.cgroups.len() >= chaos_common::MAX_CGROUPS as usize
        {
            return Err(TableError::CgroupsFull {
                capacity: chaos_common::MAX_CGROUPS as usize,
            });
        }
        let (names, types) = self.dns.needed(&rules.dns_names, &rules.dns_types);
        for (what, needed, capacity) in [
            ("name", names, chaos_common::dns::MAX_NAME_ENTRIES),
            ("type", types, chaos_common::dns::MAX_TYPE_ENTRIES),
        ] {
            let capacity = capacity as usize;
            if needed > capacity {
                return Err(TableError::DnsFull {
                    what,
                    needed,
                    capacity,
                });
            }
        }
        Ok(())
    }

    /// Adds fault `slot` with its filters, writing every entry that changes. The caller checks
    /// [`Table::check`] first; if a write fails, [`Table::remove`] of the slot restores the
    /// kernel to the table without it.
    pub fn add<S: TableSink>(
        &mut self,
        slot: u32,
        rules: &Rules,
        sink: &mut S,
    ) -> Result<(), S::Error> {
        self.rules.insert(slot, rules.clone());
        // Globals: protocol classes and the "no filter" sets.
        let g = &mut self.globals;
        let classes: &[usize] = if rules.protos == 0 {
            &[
                PROTO_CLASS_TCP,
                PROTO_CLASS_UDP,
                PROTO_CLASS_ICMP,
                PROTO_CLASS_OTHER,
            ]
        } else {
            &[]
        };
        for &c in classes {
            g.proto[c].insert(slot);
        }
        for (bit, class) in [
            (PROTO_TCP, PROTO_CLASS_TCP),
            (PROTO_UDP, PROTO_CLASS_UDP),
            (PROTO_ICMP, PROTO_CLASS_ICMP),
        ] {
            if rules.protos & bit != 0 {
                g.proto[class].insert(slot);
            }
        }
        if rules.src.is_empty() {
            g.src_any.insert(slot);
        }
        if rules.dst.is_empty() {
            g.dst_any.insert(slot);
        }
        if rules.sports.is_empty() {
            g.sport_any.insert(slot);
        }
        if rules.dports.is_empty() {
            g.dport_any.insert(slot);
        }
        let cgroup = match rules.cgroup {
            None => {
                g.cgroup_any.insert(slot);
                None
            }
            Some(id) => {
                let e = self.cgroups.entry(id).or_default();
                e.insert(slot);
                Some((id, Some(*e)))
            }
        };
        let g = &mut self.globals;
        if rules.dns {
            g.dns.insert(slot);
            if rules.dns_names.is_empty() {
                g.dns_name_any.insert(slot);
            }
            if rules.dns_types.is_empty() {
                g.dns_type_any.insert(slot);
            }
        }
        // Ports.
        let mut marks = PortMarks::default();
        let mut dirty_ports: Vec<u16> = Vec::new();
        let mut dirty_blocks: Vec<u32> = Vec::new();
        for (ranges, f) in [
            (&rules.sports, PortField::Src),
            (&rules.dports, PortField::Dst),
            (&rules.protected, PortField::Protect),
        ] {
            for &(lo, hi) in ranges {
                let (ports, blocks) = cover(lo, hi);
                for p in ports {
                    field(self.ports.entry(p).or_default(), f).insert(slot);
                    marks.ports.push(p);
                    dirty_ports.push(p);
                }
                for b in blocks {
                    field(&mut self.blocks[b as usize], f).insert(slot);
                    marks.blocks.push(b);
                    dirty_blocks.push(b);
                }
            }
        }
        marks.ports.sort_unstable();
        marks.ports.dedup();
        marks.blocks.sort_unstable();
        marks.blocks.dedup();
        self.marks.insert(slot, marks);
        // Prefixes: own bits first, then every stored entry inside a new prefix.
        let mut dirty: Vec<(Trie, Prefix)> = Vec::new();
        for (nets, source) in [(&rules.src, true), (&rules.dst, false)] {
            for net in nets {
                let trie = Trie::of(net, source);
                let p = prefix_of(net);
                let t = &mut self.tries[trie.index()];
                let own = t.own.entry(p).or_default();
                if own.is_empty() {
                    t.lens[usize::from(p.1)] += 1;
                }
                own.insert(slot);
                t.stored.entry(p).or_default();
                dirty.push((trie, p));
            }
        }
        let mut updates: Vec<(Trie, Prefix, Bitmap)> = Vec::new();
        for (trie, p) in &dirty {
            let t = &mut self.tries[trie.index()];
            for e in t.within(*p, trie.bits()) {
                let v = t.union_of_ancestors(e, trie.bits());
                if t.stored.get(&e) != Some(&v) || e == *p {
                    t.stored.insert(e, v);
                    updates.push((*trie, e, v));
                }
            }
        }
        updates.sort_unstable_by_key(|(t, p, _)| (*t, *p));
        updates.dedup_by_key(|(t, p, _)| (*t, *p));
        let dns = self.dns.add(slot, &rules.dns_names, &rules.dns_types);
        self.flush(sink, &dirty_ports, &dirty_blocks, &updates, &dns, cgroup)
    }

    /// Removes fault `slot` (whatever part of it was written), writing every entry that changes.
    /// Removing a slot that is not there writes nothing.
    pub fn remove<S: TableSink>(&mut self, slot: u32, sink: &mut S) -> Result<(), S::Error> {
        let Some(rules) = self.rules.remove(&slot) else {
            return Ok(());
        };
        let g = &mut self.globals;
        for c in 0..PROTO_CLASSES {
            g.proto[c].remove(slot);
        }
        for b in [
            &mut g.src_any,
            &mut g.dst_any,
            &mut g.sport_any,
            &mut g.dport_any,
            &mut g.dns,
            &mut g.dns_name_any,
            &mut g.dns_type_any,
            &mut g.cgroup_any,
        ] {
            b.remove(slot);
        }
        let cgroup = rules.cgroup.and_then(|id| {
            let e = self.cgroups.get_mut(&id)?;
            e.remove(slot);
            if e.is_empty() {
                self.cgroups.remove(&id);
                Some((id, None))
            } else {
                Some((id, Some(*e)))
            }
        });
        let marks = self.marks.remove(&slot).unwrap_or_default();
        for p in &marks.ports {
            if let Some(e) = self.ports.get_mut(p) {
                e.src.remove(slot);
                e.dst.remove(slot);
                e.protect.remove(slot);
            }
        }
        for b in &marks.blocks {
            let e = &mut self.blocks[*b as usize];
            e.src.remove(slot);
            e.dst.remove(slot);
            e.protect.remove(slot);
        }
        let mut touched: Vec<(Trie, Prefix)> = Vec::new();
        for (nets, source) in [(&rules.src, true), (&rules.dst, false)] {
            for net in nets {
                let trie = Trie::of(net, source);
                let p = prefix_of(net);
                let t = &mut self.tries[trie.index()];
                if let Some(own) = t.own.get_mut(&p)
                    && own.contains(slot)
                {
                    own.remove(slot);
                    if own.is_empty() {
                        t.own.remove(&p);
                        t.lens[usize::from(p.1)] -= 1;
                    }
                }
                touched.push((trie, p));
            }
        }
        let mut updates: Vec<(Trie, Prefix, Bitmap)> = Vec::new();
        let mut deletes: Vec<(Trie, Prefix)> = Vec::new();
        for (trie, p) in &touched {
            let t = &mut self.tries[trie.index()];
            for e in t.within(*p, trie.bits()) {
                if !t.own.contains_key(&e) {
                    t.stored.remove(&e);
                    deletes.push((*trie, e));
                    continue;
                }
                let v = t.union_of_ancestors(e, trie.bits());
                if t.stored.get(&e) != Some(&v) {
                    t.stored.insert(e, v);
                    updates.push((*trie, e, v));
                }
            }
        }
        deletes.sort_unstable();
        deletes.dedup();
        for (trie, p) in deletes {
            sink.prefix(trie, p, None)?;
        }
        updates.sort_unstable_by_key(|(t, p, _)| (*t, *p));
        updates.dedup_by_key(|(t, p, _)| (*t, *p));
        let dns = self.dns.remove(slot, &rules.dns_names, &rules.dns_types);
        self.flush(sink, &marks.ports, &marks.blocks, &updates, &dns, cgroup)?;
        // Entries no fault uses any more leave the mirror (the kernel keeps a zeroed value).
        self.ports.retain(|_, e| *e != PortEntry::default());
        Ok(())
    }

    fn flush<S: TableSink>(
        &self,
        sink: &mut S,
        ports: &[u16],
        blocks: &[u32],
        prefixes: &[(Trie, Prefix, Bitmap)],
        dns: &(Vec<NameWrite>, Vec<TypeWrite>),
        cgroup: Option<(u64, Option<Bitmap>)>,
    ) -> Result<(), S::Error> {
        // Narrowing dimensions (ports, prefixes) before the globals: on add, the globals are
        // what admits the new slot on its unfiltered dimensions, and a packet must not see the
        // slot admitted before its filters are in place.
        let mut ports = ports.to_vec();
        ports.sort_unstable();
        ports.dedup();
        for p in ports {
            let e = self.ports.get(&p).copied().unwrap_or_default();
            sink.port(p, &e)?;
        }
        let mut blocks = blocks.to_vec();
        blocks.sort_unstable();
        blocks.dedup();
        for b in blocks {
            sink.block(b, &self.blocks[b as usize])?;
        }
        for (trie, p, v) in prefixes {
            sink.prefix(*trie, *p, Some(v))?;
        }
        for (key, v) in &dns.0 {
            sink.dns_name(key, v.as_ref())?;
        }
        for (t, v) in &dns.1 {
            sink.dns_type(*t, v.as_ref())?;
        }
        if let Some((id, v)) = cgroup {
            sink.cgroup(id, v.as_ref())?;
        }
        sink.globals(&self.globals)
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    /// The kernel's maps as the tests see them.
    #[derive(Default)]
    struct Mem {
        globals: Globals,
        ports: BTreeMap<u16, PortEntry>,
        blocks: BTreeMap<u32, PortEntry>,
        tries: BTreeMap<(Trie, Prefix), Bitmap>,
        names: BTreeMap<Vec<u8>, Bitmap>,
        types: BTreeMap<u16, Bitmap>,
        cgroups: BTreeMap<u64, Bitmap>,
        writes: usize,
    }

    impl TableSink for Mem {
        type Error = ();
        fn globals(&mut self, g: &Globals) -> Result<(), ()> {
            self.globals = *g;
            self.writes += 1;
            Ok(())
        }
        fn port(&mut self, port: u16, e: &PortEntry) -> Result<(), ()> {
            self.ports.insert(port, *e);
            self.writes += 1;
            Ok(())
        }
        fn block(&mut self, block: u32, e: &PortEntry) -> Result<(), ()> {
            self.blocks.insert(block, *e);
            self.writes += 1;
            Ok(())
        }
        fn prefix(&mut self, trie: Trie, p: Prefix, v: Option<&Bitmap>) -> Result<(), ()> {
            match v {
                Some(v) => self.tries.insert((trie, p), *v),
                None => self.tries.remove(&(trie, p)),
            };
            self.writes += 1;
            Ok(())
        }
        fn dns_name(&mut self, key: &[u8], v: Option<&Bitmap>) -> Result<(), ()> {
            match v {
                Some(v) => self.names.insert(key.to_vec(), *v),
                None => self.names.remove(key),
            };
            self.writes += 1;
            Ok(())
        }
        fn dns_type(&mut self, qtype: u16, v: Option<&Bitmap>) -> Result<(), ()> {
            match v {
                Some(v) => self.types.insert(qtype, *v),
                None => self.types.remove(&qtype),
            };
            self.writes += 1;
            Ok(())
        }

        fn cgroup(&mut self, id: u64, v: Option<&Bitmap>) -> Result<(), ()> {
            match v {
                Some(v) => self.cgroups.insert(id, *v),
                None => self.cgroups.remove(&id),
            };
            self.writes += 1;
            Ok(())
        }
    }

    impl Mem {
        /// What the program computes for a packet (ports `None` = no ports), minus the hook.
        fn classify(
            &self,
            proto: usize,
            src: IpAddr,
            dst: IpAddr,
            ports: Option<(u16, u16)>,
        ) -> Bitmap {
            let g = &self.globals;
            let mut m = g.proto[proto];
            let port = |p: u16| {
                let mut e = self.ports.get(&p).copied().unwrap_or_default();
                let b = self
                    .blocks
                    .get(&(u32::from(p) / PORT_BLOCK_SIZE))
                    .copied()
                    .unwrap_or_default();
                e.src = e.src.or(&b.src);
                e.dst = e.dst.or(&b.dst);
                e.protect = e.protect.or(&b.protect);
                e
            };
            match ports {
                Some((s, d)) => {
                    m = m
                        .and(&port(s).src.or(&g.sport_any))
                        .and(&port(d).dst.or(&g.dport_any));
                    m = m.and_not(&port(s).protect.or(&port(d).protect));
                }
                None => m = m.and(&g.sport_any).and(&g.dport_any),
            }
            let lpm = |addr: IpAddr, source: bool| {
                let (trie, a) = match addr {
                    IpAddr::V4(a) => (
                        if source { Trie::Src4 } else { Trie::Dst4 },
                        u128::from(u32::from(a)),
                    ),
                    IpAddr::V6(a) => (if source { Trie::Src6 } else { Trie::Dst6 }, u128::from(a)),
                };
                let bits = trie.bits();
                (0..=bits)
                    .rev()
                    .find_map(|len| self.tries.get(&(trie, (a & mask(len, bits), len))))
                    .copied()
                    .unwrap_or_default()
            };
            m = m.and(&lpm(src, true).or(&g.src_any));
            m.and(&lpm(dst, false).or(&g.dst_any))
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// A fault that filters on destination prefixes only.
    fn dst_rules(v: &[&str]) -> Rules {
        Rules {
            dst: nets(v),
            ..Rules::default()
        }
    }

    /// A fault that filters on source prefixes only.
    fn src_rules(v: &[&str]) -> Rules {
        Rules {
            src: nets(v),
            ..Rules::default()
        }
    }

    #[test]
    fn masks() {
        assert_eq!(mask(0, 32), 0);
        assert_eq!(mask(8, 32), 0xff00_0000);
        assert_eq!(mask(32, 32), 0xffff_ffff);
        assert_eq!(mask(128, 128), u128::MAX);
        assert_eq!(cover(22, 22), (vec![22], vec![]));
        let (p, b) = cover(250, 1030);
        assert_eq!(b, vec![1, 2, 3]);
        assert_eq!(p.len(), 6 + 7);
        let (p, b) = cover(0, 65535);
        assert!(p.is_empty());
        assert_eq!(b.len(), 256);
    }

    #[test]
    fn nested_prefixes_of_different_faults_both_match() {
        let (mut t, mut k) = (Table::default(), Mem::default());
        t.add(1, &dst_rules(&["10.0.0.0/8"]), &mut k).unwrap();
        t.add(2, &dst_rules(&["10.1.0.0/16"]), &mut k).unwrap();
        let any = ip("192.0.2.1");
        let both = k.classify(PROTO_CLASS_UDP, any, ip("10.1.2.3"), Some((1, 2)));
        assert!(both.contains(1) && both.contains(2));
        let one = k.classify(PROTO_CLASS_UDP, any, ip("10.2.0.1"), Some((1, 2)));
        assert!(one.contains(1) && !one.contains(2));
        assert!(
            k.classify(PROTO_CLASS_UDP, any, ip("11.0.0.1"), None)
                .is_empty()
        );
        // Removing the wider one leaves the narrower exact, and vice versa.
        t.remove(1, &mut k).unwrap();
        let m = k.classify(PROTO_CLASS_UDP, any, ip("10.1.2.3"), None);
        assert!(!m.contains(1) && m.contains(2));
        assert!(
            k.classify(PROTO_CLASS_UDP, any, ip("10.2.0.1"), None)
                .is_empty()
        );
        t.add(1, &dst_rules(&["10.0.0.0/8"]), &mut k).unwrap();
        t.remove(2, &mut k).unwrap();
        let m = k.classify(PROTO_CLASS_UDP, any, ip("10.1.2.3"), None);
        assert!(m.contains(1) && !m.contains(2));
        assert_eq!(k.tries.len(), 1);
        t.remove(1, &mut k).unwrap();
        assert!(k.tries.is_empty());
        assert_eq!(k.globals, Globals::default());
    }

    #[test]
    fn a_narrower_prefix_added_later_inherits_the_wider_ones() {
        let (mut t, mut k) = (Table::default(), Mem::default());
        t.add(7, &src_rules(&["2001:db8::/32"]), &mut k).unwrap();
        t.add(9, &src_rules(&["2001:db8:1::/48", "::/0"]), &mut k)
            .unwrap();
        let m = k.classify(
            PROTO_CLASS_TCP,
            ip("2001:db8:1::5"),
            ip("::1"),
            Some((5, 6)),
        );
        assert!(m.contains(7) && m.contains(9));
        let m = k.classify(PROTO_CLASS_TCP, ip("2001:db9::5"), ip("::1"), Some((5, 6)));
        assert!(!m.contains(7) && m.contains(9));
        // An IPv4 packet matches neither: both filter sources, in IPv6 only.
        assert!(
            k.classify(PROTO_CLASS_TCP, ip("10.0.0.1"), ip("10.0.0.2"), None)
                .is_empty()
        );
    }

    #[test]
    #[expect(
        clippy::many_single_char_names,
        reason = "t(able), k(ernel), a/b addresses, m(atch)"
    )]
    fn protocols_ports_and_protection() {
        let (mut t, mut k) = (Table::default(), Mem::default());
        let web = Rules {
            protos: PROTO_TCP,
            dports: vec![(443, 443), (8000, 8999)],
            protected: vec![(22, 22)],
            ..Rules::default()
        };
        t.add(0, &web, &mut k).unwrap();
        t.add(
            200,
            &Rules {
                protos: PROTO_ICMP,
                ..Rules::default()
            },
            &mut k,
        )
        .unwrap();
        t.add(255, &Rules::default(), &mut k).unwrap();
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        let m = k.classify(PROTO_CLASS_TCP, a, b, Some((40000, 443)));
        assert!(m.contains(0) && !m.contains(200) && m.contains(255));
        assert!(
            k.classify(PROTO_CLASS_TCP, a, b, Some((40000, 8500)))
                .contains(0)
        );
        assert!(
            !k.classify(PROTO_CLASS_TCP, a, b, Some((40000, 9000)))
                .contains(0)
        );
        assert!(
            !k.classify(PROTO_CLASS_UDP, a, b, Some((40000, 443)))
                .contains(0)
        );
        // Protected: the SSH port on either side takes the packet away from slot 0 only.
        let m = k.classify(PROTO_CLASS_TCP, a, b, Some((22, 443)));
        assert!(!m.contains(0) && m.contains(255));
        let m = k.classify(PROTO_CLASS_ICMP, a, b, None);
        assert!(m.contains(200) && m.contains(255) && !m.contains(0));
        assert!(k.classify(PROTO_CLASS_OTHER, a, b, None).contains(255));
        t.remove(0, &mut k).unwrap();
        assert!(
            k.ports
                .values()
                .all(|e| !e.dst.contains(0) && !e.protect.contains(0))
        );
        assert!(k.blocks.values().all(|e| !e.dst.contains(0)));
    }

    #[test]
    fn wide_port_ranges_cost_blocks_not_ports() {
        let (mut t, mut k) = (Table::default(), Mem::default());
        t.add(
            3,
            &Rules {
                dports: vec![(1024, 65535)],
                ..Rules::default()
            },
            &mut k,
        )
        .unwrap();
        assert_eq!(k.ports.len(), 0);
        assert_eq!(k.blocks.len(), 252);
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        assert!(
            k.classify(PROTO_CLASS_UDP, a, b, Some((1, 1024)))
                .contains(3)
        );
        assert!(
            k.classify(PROTO_CLASS_UDP, a, b, Some((1, 65535)))
                .contains(3)
        );
        assert!(
            !k.classify(PROTO_CLASS_UDP, a, b, Some((1, 1023)))
                .contains(3)
        );
    }

    #[test]
    fn capacity_is_checked_before_anything_is_written() {
        let mut t = Table::new(3);
        let mut k = Mem::default();
        t.add(1, &dst_rules(&["10.0.0.0/8", "10.1.0.0/16"]), &mut k)
            .unwrap();
        let more = Rules {
            dst: nets(&["10.0.0.0/8", "192.0.2.0/24", "198.51.100.0/24"]),
            ..Rules::default()
        };
        assert!(matches!(
            t.check(&more),
            Err(TableError::TrieFull {
                needed: 4,
                capacity: 3,
                ..
            })
        ));
        // IPv6 prefixes have a trie of their own.
        assert!(
            t.check(&dst_rules(&["2001:db8::/32", "10.0.0.0/8"]))
                .is_ok()
        );
    }

    #[test]
    fn many_prefixes_write_each_entry_once() {
        let (mut t, mut k) = (Table::default(), Mem::default());
        let many: Vec<IpNet> = (0..16_384u32)
            .map(|i| {
                IpNet::V4(
                    ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24)
                        .unwrap(),
                )
            })
            .collect();
        t.add(
            5,
            &Rules {
                dst: many,
                ..Rules::default()
            },
            &mut k,
        )
        .unwrap();
        assert_eq!(k.tries.len(), 16_384);
        // Every prefix once, plus the globals.
        assert_eq!(k.writes, 16_385);
        let last = k.classify(PROTO_CLASS_UDP, ip("192.0.2.1"), ip("10.63.255.7"), None);
        assert!(last.contains(5));
        assert!(
            k.classify(PROTO_CLASS_UDP, ip("192.0.2.1"), ip("10.64.0.1"), None)
                .is_empty()
        );
        t.remove(5, &mut k).unwrap();
        assert!(k.tries.is_empty());
    }
}
