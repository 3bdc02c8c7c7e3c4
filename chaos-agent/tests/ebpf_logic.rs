//! The kernel programs' decision logic, run by the kernel itself on hand-crafted packets.
//!
//! The tests load `chaos_agent::EBPF_OBJECT` (so the verifier has to accept both programs; a
//! loaded object is reused with its maps reset, see [`POOL`]), fill the maps through aya and run
//! a program with `BPF_PROG_TEST_RUN`, which executes it on a synthetic skb built from our bytes
//! and returns the verdict (and the `__sk_buff` afterwards). No interface is touched. Needs root
//! (`CAP_BPF` + `CAP_NET_ADMIN`); run with
//! `cargo test -p chaos-agent --test ebpf_logic -- --test-threads=1`.
#![allow(
    clippy::missing_panics_doc,
    reason = "test helpers panic with context by design"
)]

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, PerCpuArray, PerCpuValues, lpm_trie::Key},
    programs::SchedClassifier,
};
use chaos_common::{
    Counter, Dir, F_ARMED, F_DST_FILTER, F_EDT, F_EGRESS, F_EGRESS_WIRE_DROP, F_INGRESS,
    F_L3_DEVICE, F_LOSS_GE, F_SEEDED, F_SRC_FILTER, F_STEER, FaultConfig, PROTO_ICMP, PROTO_TCP,
    PROTO_UDP, PortRange, PortSet, counter_index, names, probability_to_threshold,
};

const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;

// ---------------------------------------------------------------------------------------------
// BPF_PROG_TEST_RUN (aya 0.14 has no wrapper)

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// `union bpf_attr`'s `test` member (uapi `linux/bpf.h`, unchanged since 5.10 apart from
/// appended fields). The kernel rejects non-zero bytes past the fields it knows, so the trailing
/// padding must be zero.
#[repr(C, align(8))]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    /// Explicit: Rust leaves implicit trailing padding uninitialised, and the kernel answers
    /// EINVAL when the bytes after the last field it knows are not zero.
    _pad: u32,
}

/// `struct __sk_buff` as 48 `u32`s (192 bytes on 6.x). `bpf_ctx_finish` fails with ENOSPC if
/// `ctx_out` is shorter than the kernel's struct, so we pass the whole thing.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct SkBuffCtx([u32; 48]);

impl SkBuffCtx {
    /// Index of `priority` (after `len`, `pkt_type`, `mark`, `queue_mapping`, `protocol`,
    /// `vlan_present`, `vlan_tci`, `vlan_proto`).
    const PRIORITY: usize = 8;

    /// Index of `tstamp` (a `__u64` at byte 152: after `data_meta` comes the 8-byte
    /// `flow_keys` pointer at 144).
    const TSTAMP: usize = 38;

    fn priority(&self) -> u32 {
        self.0[Self::PRIORITY]
    }

    fn tstamp(&self) -> u64 {
        u64::from(self.0[Self::TSTAMP]) | (u64::from(self.0[Self::TSTAMP + 1]) << 32)
    }

    fn with_tstamp(ts: u64) -> Self {
        let mut c = Self([0; 48]);
        c.0[Self::TSTAMP] = ts as u32;
        c.0[Self::TSTAMP + 1] = (ts >> 32) as u32;
        c
    }
}

/// Result of one `BPF_PROG_TEST_RUN`.
struct RunOut {
    retval: i32,
    /// Average ns per run as measured by the kernel.
    duration: u32,
    ctx: SkBuffCtx,
}

/// Sample sizes shrink tenfold in the VM guest (TCG runs programs ~10x slower); every bound
/// below is computed from the sample size, so the checks stay as strict in sigma terms.
fn scaled(n: u32) -> u32 {
    if std::env::var_os("CHAOS_VM").is_some() {
        (n / 10).max(1000)
    } else {
        n
    }
}

fn test_run(prog_fd: i32, data: &[u8], ctx_in: &SkBuffCtx, repeat: u32) -> RunOut {
    let mut ctx_out = SkBuffCtx([0; 48]);
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: data.len() as u32,
        data_in: data.as_ptr() as u64,
        repeat,
        ctx_size_in: size_of::<SkBuffCtx>() as u32,
        ctx_size_out: size_of::<SkBuffCtx>() as u32,
        ctx_in: std::ptr::from_ref(ctx_in) as u64,
        ctx_out: std::ptr::from_mut(&mut ctx_out) as u64,
        ..TestRunAttr::default()
    };
    // SAFETY: attr points to valid memory of the declared size; data/ctx buffers outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            std::ptr::from_mut(&mut attr),
            size_of::<TestRunAttr>(),
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    RunOut {
        retval: attr.retval as i32,
        duration: attr.duration,
        ctx: ctx_out,
    }
}

/// Pins the calling thread to CPU 0: per-CPU state (seeded PRNG, GE chain, counters slot) must
/// not change under a test that checks sequences.
fn pin_to_cpu0() {
    // SAFETY: plain syscall on a zeroed, then initialised, cpu_set_t.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set),
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---------------------------------------------------------------------------------------------
// Loaded object

struct Harness {
    /// Always `Some` until `drop` hands the object back to [`POOL`].
    ebpf: Option<Ebpf>,
}

/// Loaded objects no test is using. Loading means verifying two ~2,600-instruction programs,
/// which takes a second or more under the VM's TCG; a test (or a harness of a test) that finds
/// an object here resets its maps instead, which is what a fresh load would give it. A pool
/// rather than one shared object: some tests hold two harnesses at once, and the host may run
/// tests in parallel.
static POOL: std::sync::Mutex<Vec<Ebpf>> = std::sync::Mutex::new(Vec::new());

/// Empties an LPM trie of the object.
fn clear<K: aya::Pod>(ebpf: &mut Ebpf, map: &str) {
    let mut t: LpmTrie<&mut MapData, K, u8> =
        LpmTrie::try_from(ebpf.map_mut(map).expect("trie")).expect("lpm");
    let keys: Vec<Key<K>> = t.keys().map(|k| k.expect("trie key")).collect();
    for k in &keys {
        t.remove(k).expect("remove prefix");
    }
}

/// The maps of the object, in the state a fresh load leaves them: every entry zero, tries
/// empty.
fn reset_maps(ebpf: &mut Ebpf) {
    let mut config: Array<&mut MapData, FaultConfig> =
        Array::try_from(ebpf.map_mut(names::MAP_CONFIG).expect("config map")).expect("array");
    config
        .set(0, FaultConfig::default(), 0)
        .expect("reset config");
    let n = aya::util::nr_cpus().expect("nr_cpus");
    let mut counters: PerCpuArray<&mut MapData, u64> =
        PerCpuArray::try_from(ebpf.map_mut(names::MAP_COUNTERS).expect("counters")).expect("pca");
    for i in 0..counters.len() {
        counters
            .set(i, PerCpuValues::try_from(vec![0u64; n]).expect("values"), 0)
            .expect("reset counter");
    }
    let mut rng: PerCpuArray<&mut MapData, u64> =
        PerCpuArray::try_from(ebpf.map_mut(names::MAP_RNG).expect("rng")).expect("pca");
    rng.set(0, PerCpuValues::try_from(vec![0u64; n]).expect("values"), 0)
        .expect("reset rng");
    let mut ge: PerCpuArray<&mut MapData, u32> =
        PerCpuArray::try_from(ebpf.map_mut(names::MAP_GE_STATE).expect("ge")).expect("pca");
    ge.set(0, PerCpuValues::try_from(vec![0u32; n]).expect("values"), 0)
        .expect("reset ge");
    clear::<[u8; 4]>(ebpf, names::MAP_SRC_V4);
    clear::<[u8; 4]>(ebpf, names::MAP_DST_V4);
    clear::<[u8; 16]>(ebpf, names::MAP_SRC_V6);
    clear::<[u8; 16]>(ebpf, names::MAP_DST_V6);
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(ebpf) = self.ebpf.take() {
            POOL.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(ebpf);
        }
    }
}

impl Harness {
    /// An object with both programs verified and loaded, and maps as a fresh load has them
    /// (counters at zero): from the pool if one is free, else loaded now.
    fn new() -> Self {
        pin_to_cpu0();
        let pooled = POOL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let ebpf = if let Some(mut ebpf) = pooled {
            reset_maps(&mut ebpf);
            ebpf
        } else {
            let mut ebpf = EbpfLoader::new()
                .load(chaos_agent::EBPF_OBJECT)
                .expect("load object");
            for name in [names::PROG_TC_INGRESS, names::PROG_TC_EGRESS] {
                let prog: &mut SchedClassifier = ebpf
                    .program_mut(name)
                    .unwrap_or_else(|| panic!("program {name} missing"))
                    .try_into()
                    .expect("sched_cls");
                prog.load()
                    .unwrap_or_else(|e| panic!("verifier rejected {name}: {e:?}"));
            }
            ebpf
        };
        Self { ebpf: Some(ebpf) }
    }

    fn obj(&self) -> &Ebpf {
        self.ebpf.as_ref().expect("object")
    }

    fn obj_mut(&mut self) -> &mut Ebpf {
        self.ebpf.as_mut().expect("object")
    }

    fn with(cfg: &FaultConfig) -> Self {
        let mut h = Self::new();
        h.set_config(cfg);
        h
    }

    fn set_config(&mut self, cfg: &FaultConfig) {
        let mut a: Array<&mut MapData, FaultConfig> = Array::try_from(
            self.obj_mut()
                .map_mut(names::MAP_CONFIG)
                .expect("config map"),
        )
        .expect("array");
        a.set(0, cfg, 0).expect("set config");
    }

    fn add_v4(&mut self, map: &str, len: u32, addr: [u8; 4]) {
        let mut t: LpmTrie<&mut MapData, [u8; 4], u8> =
            LpmTrie::try_from(self.obj_mut().map_mut(map).expect("trie")).expect("lpm");
        t.insert(&Key::new(len, addr), 1, 0).expect("insert");
    }

    fn add_v6(&mut self, map: &str, len: u32, addr: [u8; 16]) {
        let mut t: LpmTrie<&mut MapData, [u8; 16], u8> =
            LpmTrie::try_from(self.obj_mut().map_mut(map).expect("trie")).expect("lpm");
        t.insert(&Key::new(len, addr), 1, 0).expect("insert");
    }

    /// Seeds every CPU's PRNG slot with `seed`.
    fn seed(&mut self, seed: u64) {
        let n = aya::util::nr_cpus().expect("nr_cpus");
        let mut a: PerCpuArray<&mut MapData, u64> =
            PerCpuArray::try_from(self.obj_mut().map_mut(names::MAP_RNG).expect("rng"))
                .expect("pca");
        a.set(0, PerCpuValues::try_from(vec![seed; n]).expect("values"), 0)
            .expect("seed");
    }

    fn prog_fd(&self, dir: Dir) -> i32 {
        let name = match dir {
            Dir::Ingress => names::PROG_TC_INGRESS,
            Dir::Egress => names::PROG_TC_EGRESS,
        };
        let prog: &SchedClassifier = self
            .obj()
            .program(name)
            .expect("program")
            .try_into()
            .expect("sched_cls");
        prog.fd().expect("fd").as_fd().as_raw_fd()
    }

    fn run_full(&self, dir: Dir, pkt: &[u8], repeat: u32) -> RunOut {
        test_run(self.prog_fd(dir), pkt, &SkBuffCtx([0; 48]), repeat)
    }

    fn run(&self, dir: Dir, pkt: &[u8]) -> i32 {
        self.run_full(dir, pkt, 1).retval
    }

    /// Sum over CPUs.
    fn counter(&self, dir: Dir, c: Counter) -> u64 {
        let a: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.obj().map(names::MAP_COUNTERS).expect("counters"))
                .expect("pca");
        a.get(&counter_index(dir, c), 0).expect("get").iter().sum()
    }

    /// All six counters of a direction, in `Counter` order.
    fn counters(&self, dir: Dir) -> [u64; 6] {
        [
            Counter::Seen,
            Counter::Matched,
            Counter::Dropped,
            Counter::Steered,
            Counter::Protected,
            Counter::Expired,
        ]
        .map(|c| self.counter(dir, c))
    }
}

/// An armed config for both directions that never expires, matches everything, drops nothing.
fn base() -> FaultConfig {
    FaultConfig {
        flags: F_ARMED | F_INGRESS | F_EGRESS,
        expires_at_ns: u64::MAX,
        ..FaultConfig::default()
    }
}

fn drop_all() -> FaultConfig {
    FaultConfig {
        loss_threshold: u32::MAX,
        ..base()
    }
}

fn ports(ranges: &[(u16, u16)]) -> PortSet {
    let mut s = PortSet {
        len: ranges.len() as u32,
        ..PortSet::default()
    };
    for (slot, &(lo, hi)) in s.ranges.iter_mut().zip(ranges) {
        *slot = PortRange { lo, hi };
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Packet builders (checksums are irrelevant to the programs and left zero)

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_ARP: u16 = 0x0806;

const A: [u8; 4] = [10, 1, 2, 3];
const B: [u8; 4] = [192, 168, 7, 9];

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>()
        .expect("v6 literal")
        .octets()
}

enum L4 {
    Tcp(u16, u16),
    Udp(u16, u16),
    Icmp,
    /// Arbitrary protocol number and bytes.
    Raw(u8, Vec<u8>),
}

impl L4 {
    /// (protocol number for `v6` or not, header + a little payload)
    fn bytes(&self, is_v6: bool) -> (u8, Vec<u8>) {
        match self {
            L4::Tcp(s, d) => {
                let mut b = vec![0u8; 20];
                b[..2].copy_from_slice(&s.to_be_bytes());
                b[2..4].copy_from_slice(&d.to_be_bytes());
                b[12] = 5 << 4; // data offset
                b.extend_from_slice(b"tcp payload");
                (6, b)
            }
            L4::Udp(s, d) => {
                let mut b = vec![0u8; 8];
                b[..2].copy_from_slice(&s.to_be_bytes());
                b[2..4].copy_from_slice(&d.to_be_bytes());
                b.extend_from_slice(b"udp payload");
                let len = b.len() as u16;
                b[4..6].copy_from_slice(&len.to_be_bytes());
                (17, b)
            }
            L4::Icmp => {
                // Echo request; for ICMPv6 type 128.
                let mut b = vec![if is_v6 { 128 } else { 8 }, 0, 0, 0, 0, 1, 0, 1];
                b.extend_from_slice(b"ping");
                (if is_v6 { 58 } else { 1 }, b)
            }
            L4::Raw(p, b) => (*p, b.clone()),
        }
    }
}

fn eth(ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

fn eth_vlan(tpid: u16, vid: u16, ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

/// IPv4 header (+ `opt_words` words of NOP options) with `frag` as the raw flags/offset field.
fn ipv4_raw(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    frag: u16,
    opt_words: u8,
    payload: &[u8],
) -> Vec<u8> {
    let ihl = 5 + opt_words;
    let mut h = vec![0u8; usize::from(ihl) * 4];
    h[0] = 0x40 | ihl;
    let total = (h.len() + payload.len()) as u16;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    for b in &mut h[20..] {
        *b = 1; // NOP option
    }
    h.extend_from_slice(payload);
    h
}

fn pkt4(src: [u8; 4], dst: [u8; 4], l4: &L4) -> Vec<u8> {
    let (proto, body) = l4.bytes(false);
    eth(ETH_P_IP, &ipv4_raw(src, dst, proto, 0, 0, &body))
}

/// An IPv6 extension header: (its protocol number, its bytes without the next-header byte set).
fn ext(kind: u8, len_field: u8) -> (u8, Vec<u8>) {
    let size = match kind {
        51 => (usize::from(len_field) + 2) * 4,
        44 => 8,
        _ => (usize::from(len_field) + 1) * 8,
    };
    let mut b = vec![0u8; size];
    if kind != 44 {
        b[1] = len_field;
    }
    (kind, b)
}

/// IPv6 packet with the given extension headers (next-header fields are chained here).
fn pkt6_ext(src: [u8; 16], dst: [u8; 16], exts: &[(u8, Vec<u8>)], l4: &L4) -> Vec<u8> {
    let (proto, body) = l4.bytes(true);
    let mut chain = Vec::new();
    for (i, (_, bytes)) in exts.iter().enumerate() {
        let mut b = bytes.clone();
        b[0] = exts.get(i + 1).map_or(proto, |e| e.0);
        chain.extend_from_slice(&b);
    }
    chain.extend_from_slice(&body);
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(chain.len() as u16).to_be_bytes());
    h[6] = exts.first().map_or(proto, |e| e.0);
    h[7] = 64;
    h[8..24].copy_from_slice(&src);
    h[24..40].copy_from_slice(&dst);
    h.extend_from_slice(&chain);
    eth(ETH_P_IPV6, &h)
}

fn pkt6(src: [u8; 16], dst: [u8; 16], l4: &L4) -> Vec<u8> {
    pkt6_ext(src, dst, &[], l4)
}

/// IPv6 fragment header with `offset` (in 8-byte units) and the M flag.
fn frag6(offset: u16, more: bool) -> (u8, Vec<u8>) {
    let (k, mut b) = ext(44, 0);
    let field = (offset << 3) | u16::from(more);
    b[2..4].copy_from_slice(&field.to_be_bytes());
    b[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    (k, b)
}

fn arp() -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    a.extend_from_slice(&A);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&B);
    eth(ETH_P_ARP, &a)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn verifier_accepts_both_programs_and_reports_size_and_cost() {
    let h = Harness::with(&drop_all());
    for (dir, name) in [
        (Dir::Ingress, names::PROG_TC_INGRESS),
        (Dir::Egress, names::PROG_TC_EGRESS),
    ] {
        let prog: &SchedClassifier = h.obj().program(name).expect("p").try_into().expect("cls");
        let info = prog.info().expect("info");
        let xlated = info.size_translated().expect("xlated");
        println!(
            "{name}: id {} xlated {xlated} bytes = {} insns, jited {} bytes, verifier processed {:?} insns",
            info.id(),
            xlated / 8,
            info.size_jitted(),
            info.verified_instruction_count()
        );
        let bpftool = std::process::Command::new("bpftool")
            .args(["-j", "prog", "show", "id", &info.id().to_string()])
            .output();
        if let Ok(o) = bpftool {
            println!("bpftool: {}", String::from_utf8_lossy(&o.stdout).trim());
        }
        assert!(xlated > 0);
        // Cost: the kernel's own per-run average over many runs of the same packet.
        let n = scaled(1_000_000);
        let hit = h.run_full(dir, &pkt4(A, B, &L4::Tcp(40_000, 80)), n);
        println!("{name}: matched TCP/IPv4 + drop: {} ns/run", hit.duration);
        let v6 = pkt6_ext(
            v6("2001:db8::1"),
            v6("2001:db8::2"),
            &[ext(0, 0), ext(43, 1), ext(60, 0)],
            &L4::Udp(5353, 53),
        );
        let hit6 = h.run_full(dir, &v6, n);
        println!(
            "{name}: matched UDP/IPv6 + 3 ext headers + drop: {} ns/run",
            hit6.duration
        );
        let miss = h.run_full(dir, &arp(), n);
        println!("{name}: ARP (parsed, not IP): {} ns/run", miss.duration);
    }
    let mut h = Harness::new();
    h.set_config(&FaultConfig::default());
    let idle = h.run_full(
        Dir::Ingress,
        &pkt4(A, B, &L4::Tcp(40_000, 80)),
        scaled(1_000_000),
    );
    println!("chaos_tc_in unarmed: {} ns/run", idle.duration);
}

#[test]
fn probability_one_drops_every_matching_packet() {
    let mut h = Harness::with(&drop_all());
    let p = pkt4(A, B, &L4::Tcp(40_000, 80));
    for _ in 0..100 {
        assert_eq!(h.run(Dir::Ingress, &p), TC_ACT_SHOT);
        assert_eq!(
            h.run(Dir::Egress, &p),
            TC_ACT_SHOT,
            "egress without wire drop"
        );
    }
    h.set_config(&FaultConfig {
        flags: drop_all().flags | F_EGRESS_WIRE_DROP,
        ..drop_all()
    });
    for _ in 0..100 {
        assert_eq!(h.run(Dir::Egress, &p), TC_ACT_REDIRECT, "egress wire drop");
        // Wire drop is an egress concept: ingress still drops with SHOT.
        assert_eq!(h.run(Dir::Ingress, &p), TC_ACT_SHOT);
    }
    assert_eq!(h.counters(Dir::Ingress), [200, 200, 200, 0, 0, 0]);
    assert_eq!(h.counters(Dir::Egress), [200, 200, 200, 0, 0, 0]);
}

#[test]
fn probability_zero_never_drops() {
    let h = Harness::with(&base());
    let p = pkt4(A, B, &L4::Udp(1000, 2000));
    for _ in 0..1000 {
        assert_eq!(h.run(Dir::Ingress, &p), TC_ACT_UNSPEC);
        assert_eq!(h.run(Dir::Egress, &p), TC_ACT_UNSPEC);
    }
    assert_eq!(h.counters(Dir::Ingress), [1000, 1000, 0, 0, 0, 0]);
}

#[test]
fn unarmed_or_other_direction_passes_uncounted() {
    let p = pkt4(A, B, &L4::Tcp(40_000, 80));
    // Never written: the array entry is all zeroes.
    let mut h = Harness::new();
    assert_eq!(h.run(Dir::Ingress, &p), TC_ACT_UNSPEC);
    assert_eq!(h.run(Dir::Egress, &p), TC_ACT_UNSPEC);
    // Everything but F_ARMED.
    h.set_config(&FaultConfig {
        flags: drop_all().flags & !F_ARMED,
        ..drop_all()
    });
    assert_eq!(h.run(Dir::Ingress, &p), TC_ACT_UNSPEC);
    // Ingress only: egress passes.
    h.set_config(&FaultConfig {
        flags: F_ARMED | F_INGRESS,
        ..drop_all()
    });
    assert_eq!(h.run(Dir::Egress, &p), TC_ACT_UNSPEC);
    assert_eq!(h.run(Dir::Ingress, &p), TC_ACT_SHOT);
    // Egress only.
    h.set_config(&FaultConfig {
        flags: F_ARMED | F_EGRESS,
        ..drop_all()
    });
    assert_eq!(h.run(Dir::Ingress, &p), TC_ACT_UNSPEC);
    assert_eq!(h.run(Dir::Egress, &p), TC_ACT_SHOT);
    assert_eq!(h.counters(Dir::Ingress), [1, 1, 1, 0, 0, 0]);
    assert_eq!(h.counters(Dir::Egress), [1, 1, 1, 0, 0, 0]);
}

#[test]
fn expired_deadline_passes_and_counts() {
    let p = pkt4(A, B, &L4::Tcp(40_000, 80));
    let mut h = Harness::with(&FaultConfig {
        expires_at_ns: monotonic_ns() + 60_000_000_000,
        ..drop_all()
    });
    assert_eq!(
        h.run(Dir::Ingress, &p),
        TC_ACT_SHOT,
        "deadline in the future"
    );
    h.set_config(&FaultConfig {
        expires_at_ns: monotonic_ns() - 1,
        ..drop_all()
    });
    for _ in 0..10 {
        assert_eq!(h.run(Dir::Ingress, &p), TC_ACT_UNSPEC);
        assert_eq!(h.run(Dir::Egress, &p), TC_ACT_UNSPEC);
    }
    assert_eq!(h.counters(Dir::Ingress), [11, 1, 1, 0, 0, 10]);
    assert_eq!(h.counters(Dir::Egress), [10, 0, 0, 0, 0, 10]);
    // A deadline that passes while the program is attached (the agent is not involved).
    h.set_config(&FaultConfig {
        expires_at_ns: monotonic_ns() + 50_000_000,
        ..drop_all()
    });
    assert_eq!(h.run(Dir::Ingress, &p), TC_ACT_SHOT);
    std::thread::sleep(std::time::Duration::from_millis(60));
    assert_eq!(h.run(Dir::Ingress, &p), TC_ACT_UNSPEC);
}

#[test]
fn protocol_filter() {
    let tcp4 = pkt4(A, B, &L4::Tcp(1, 2));
    let udp4 = pkt4(A, B, &L4::Udp(1, 2));
    let icmp4 = pkt4(A, B, &L4::Icmp);
    let (x, y) = (v6("2001:db8::1"), v6("2001:db8::2"));
    let tcp6 = pkt6(x, y, &L4::Tcp(1, 2));
    let udp6 = pkt6(x, y, &L4::Udp(1, 2));
    let icmp6 = pkt6(x, y, &L4::Icmp);
    // Cross-family protocol numbers: ICMPv6 over IPv4 and ICMP over IPv6 are not "ICMP".
    let icmp6_in_v4 = pkt4(A, B, &L4::Raw(58, vec![128, 0, 0, 0]));
    let icmp4_in_v6 = pkt6(x, y, &L4::Raw(1, vec![8, 0, 0, 0]));
    let gre4 = pkt4(A, B, &L4::Raw(47, vec![0; 8]));
    let all = [
        &tcp4,
        &udp4,
        &icmp4,
        &tcp6,
        &udp6,
        &icmp6,
        &icmp6_in_v4,
        &icmp4_in_v6,
        &gre4,
    ];

    let cases: [(u32, [bool; 9]); 5] = [
        (
            PROTO_TCP,
            [true, false, false, true, false, false, false, false, false],
        ),
        (
            PROTO_UDP,
            [false, true, false, false, true, false, false, false, false],
        ),
        (
            PROTO_ICMP,
            [false, false, true, false, false, true, false, false, false],
        ),
        (
            PROTO_TCP | PROTO_UDP,
            [true, true, false, true, true, false, false, false, false],
        ),
        (0, [true; 9]),
    ];
    for (protos, expect) in cases {
        let h = Harness::with(&FaultConfig {
            protos,
            ..drop_all()
        });
        for (i, (p, want)) in all.iter().zip(expect).enumerate() {
            let want = if want { TC_ACT_SHOT } else { TC_ACT_UNSPEC };
            assert_eq!(
                h.run(Dir::Ingress, p),
                want,
                "protos {protos:#x} packet #{i}"
            );
        }
    }
}

#[test]
fn ipv4_cidr_filters() {
    let mut h = Harness::with(&FaultConfig {
        flags: drop_all().flags | F_SRC_FILTER,
        ..drop_all()
    });
    h.add_v4(names::MAP_SRC_V4, 16, [10, 1, 0, 0]);
    h.add_v4(names::MAP_SRC_V4, 32, [172, 16, 0, 5]);
    let t = L4::Tcp(1, 2);
    assert_eq!(
        h.run(Dir::Ingress, &pkt4([10, 1, 200, 3], B, &t)),
        TC_ACT_SHOT
    );
    assert_eq!(
        h.run(Dir::Ingress, &pkt4([172, 16, 0, 5], B, &t)),
        TC_ACT_SHOT
    );
    assert_eq!(
        h.run(Dir::Ingress, &pkt4([172, 16, 0, 6], B, &t)),
        TC_ACT_UNSPEC
    );
    assert_eq!(
        h.run(Dir::Ingress, &pkt4([10, 2, 0, 1], B, &t)),
        TC_ACT_UNSPEC
    );
    // The destination is not looked at by a source filter.
    assert_eq!(
        h.run(Dir::Ingress, &pkt4(B, [10, 1, 0, 1], &t)),
        TC_ACT_UNSPEC
    );
    // IPv6 packets look in the (empty) IPv6 trie: no match.
    assert_eq!(
        h.run(
            Dir::Ingress,
            &pkt6(v6("::ffff:10.1.0.1"), v6("2001:db8::2"), &t)
        ),
        TC_ACT_UNSPEC
    );

    // Source and destination together.
    h.set_config(&FaultConfig {
        flags: drop_all().flags | F_SRC_FILTER | F_DST_FILTER,
        ..drop_all()
    });
    h.add_v4(names::MAP_DST_V4, 24, [192, 168, 7, 0]);
    assert_eq!(
        h.run(Dir::Egress, &pkt4([10, 1, 0, 9], [192, 168, 7, 200], &t)),
        TC_ACT_SHOT
    );
    assert_eq!(
        h.run(Dir::Egress, &pkt4([10, 1, 0, 9], [192, 168, 8, 1], &t)),
        TC_ACT_UNSPEC
    );
    assert_eq!(
        h.run(Dir::Egress, &pkt4([10, 9, 0, 9], [192, 168, 7, 1], &t)),
        TC_ACT_UNSPEC
    );
}

#[test]
fn ipv6_cidr_filters() {
    let mut h = Harness::with(&FaultConfig {
        flags: drop_all().flags | F_DST_FILTER,
        ..drop_all()
    });
    h.add_v6(names::MAP_DST_V6, 48, v6("2001:db8:1::"));
    let t = L4::Udp(1, 2);
    let s = v6("fd00::1");
    assert_eq!(
        h.run(Dir::Egress, &pkt6(s, v6("2001:db8:1:ffff::9"), &t)),
        TC_ACT_SHOT
    );
    assert_eq!(
        h.run(Dir::Egress, &pkt6(s, v6("2001:db8:2::9"), &t)),
        TC_ACT_UNSPEC
    );
    // IPv4 packets use the (empty) IPv4 trie.
    assert_eq!(h.run(Dir::Egress, &pkt4(A, B, &t)), TC_ACT_UNSPEC);

    h.set_config(&FaultConfig {
        flags: drop_all().flags | F_SRC_FILTER,
        ..drop_all()
    });
    h.add_v6(names::MAP_SRC_V6, 128, v6("fd00::1"));
    assert_eq!(
        h.run(Dir::Ingress, &pkt6(s, v6("2001:db8:2::9"), &t)),
        TC_ACT_SHOT
    );
    assert_eq!(
        h.run(Dir::Ingress, &pkt6(v6("fd00::2"), v6("2001:db8:1::9"), &t)),
        TC_ACT_UNSPEC
    );
}

#[test]
fn port_ranges() {
    let h = Harness::with(&FaultConfig {
        sports: ports(&[(1000, 1999), (3000, 3000)]),
        dports: ports(&[(80, 80), (8000, 8100)]),
        ..drop_all()
    });
    let cases = [
        (1000, 80, true),
        (1999, 8100, true),
        (3000, 8000, true),
        (2000, 80, false),
        (999, 80, false),
        (3001, 80, false),
        (1500, 81, false),
        (1500, 8101, false),
    ];
    for (s, d, hit) in cases {
        let want = if hit { TC_ACT_SHOT } else { TC_ACT_UNSPEC };
        assert_eq!(
            h.run(Dir::Ingress, &pkt4(A, B, &L4::Tcp(s, d))),
            want,
            "tcp {s}->{d}"
        );
        assert_eq!(
            h.run(Dir::Ingress, &pkt4(A, B, &L4::Udp(s, d))),
            want,
            "udp {s}->{d}"
        );
        let p6 = pkt6(v6("fd00::1"), v6("fd00::2"), &L4::Tcp(s, d));
        assert_eq!(h.run(Dir::Egress, &p6), want, "tcp6 {s}->{d}");
    }
    // A port filter never matches a packet without ports.
    assert_eq!(h.run(Dir::Ingress, &pkt4(A, B, &L4::Icmp)), TC_ACT_UNSPEC);
    // Only destination ports set: any source port.
    let h = Harness::with(&FaultConfig {
        dports: ports(&[(53, 53)]),
        ..drop_all()
    });
    assert_eq!(
        h.run(Dir::Ingress, &pkt4(A, B, &L4::Udp(65_535, 53))),
        TC_ACT_SHOT
    );
    assert_eq!(
        h.run(Dir::Ingress, &pkt4(A, B, &L4::Udp(53, 54))),
        TC_ACT_UNSPEC
    );
}

#[test]
fn ipv4_options_shift_the_l4_header() {
    let h = Harness::with(&FaultConfig {
        dports: ports(&[(443, 443)]),
        ..drop_all()
    });
    let (proto, body) = L4::Tcp(40_000, 443).bytes(false);
    let with_opts = eth(ETH_P_IP, &ipv4_raw(A, B, proto, 0, 3, &body));
    assert_eq!(h.run(Dir::Ingress, &with_opts), TC_ACT_SHOT);
    // The same bytes read at a fixed 20-byte offset would be NOP options (0x0101 = 257).
    let (proto, body) = L4::Tcp(40_000, 444).bytes(false);
    let with_opts = eth(ETH_P_IP, &ipv4_raw(A, B, proto, 0, 3, &body));
    assert_eq!(h.run(Dir::Ingress, &with_opts), TC_ACT_UNSPEC);
}

#[test]
fn protected_ports_are_never_faulted() {
    let mut h = Harness::with(&FaultConfig {
        protected_ports: ports(&[(22, 22), (9100, 9101)]),
        ..drop_all()
    });
    assert_eq!(
        h.run(Dir::Ingress, &pkt4(A, B, &L4::Tcp(50_000, 22))),
        TC_ACT_UNSPEC
    );
    assert_eq!(
        h.run(Dir::Egress, &pkt4(A, B, &L4::Tcp(22, 50_000))),
        TC_ACT_UNSPEC
    );
    assert_eq!(
        h.run(Dir::Egress, &pkt4(A, B, &L4::Udp(9101, 1))),
        TC_ACT_UNSPEC
    );
    let p6 = pkt6(v6("fd00::1"), v6("fd00::2"), &L4::Tcp(50_000, 9100));
    assert_eq!(h.run(Dir::Ingress, &p6), TC_ACT_UNSPEC);
    assert_eq!(
        h.run(Dir::Ingress, &pkt4(A, B, &L4::Tcp(50_000, 23))),
        TC_ACT_SHOT
    );
    assert_eq!(h.counters(Dir::Ingress), [3, 1, 1, 0, 2, 0]);
    assert_eq!(h.counters(Dir::Egress), [2, 0, 0, 0, 2, 0]);
    // Protected wins over an explicit port filter that selects the port.
    h.set_config(&FaultConfig {
        dports: ports(&[(22, 22)]),
        protected_ports: ports(&[(22, 22)]),
        ..drop_all()
    });
    assert_eq!(
        h.run(Dir::Ingress, &pkt4(A, B, &L4::Tcp(50_000, 22))),
        TC_ACT_UNSPEC
    );
    // Protection is checked only for matched packets: an unmatched one is not counted.
    assert_eq!(
        h.run(Dir::Ingress, &pkt4(A, B, &L4::Tcp(22, 80))),
        TC_ACT_UNSPEC
    );
    assert_eq!(h.counter(Dir::Ingress, Counter::Protected), 3);
}

/// UDP header bytes that, read as ports, are 8080 -> 22: a non-first fragment starting with them
/// must neither match a port filter nor count as protected.
fn fake_ports_payload() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&8080u16.to_be_bytes());
    b.extend_from_slice(&22u16.to_be_bytes());
    b.extend_from_slice(&[0xab; 32]);
    b
}

#[test]
fn ipv4_fragments() {
    const MF: u16 = 0x2000;
    let (proto, body) = L4::Udp(8080, 22).bytes(false);
    let first = eth(ETH_P_IP, &ipv4_raw(A, B, proto, MF, 0, &body));
    let middle = eth(
        ETH_P_IP,
        &ipv4_raw(A, B, 17, MF | 0xb9, 0, &fake_ports_payload()),
    );
    let last = eth(ETH_P_IP, &ipv4_raw(A, B, 17, 370, 0, &fake_ports_payload()));

    // Port filter 8080: the first fragment has the UDP header and matches; the others do not.
    let h = Harness::with(&FaultConfig {
        sports: ports(&[(8080, 8080)]),
        ..drop_all()
    });
    assert_eq!(h.run(Dir::Ingress, &first), TC_ACT_SHOT);
    assert_eq!(h.run(Dir::Ingress, &middle), TC_ACT_UNSPEC);
    assert_eq!(h.run(Dir::Ingress, &last), TC_ACT_UNSPEC);

    // No port filter but 22 protected: the first fragment is protected; the non-first ones have
    // no ports (their payload's "22" is not read), so they match and are dropped.
    let h = Harness::with(&FaultConfig {
        protos: PROTO_UDP,
        protected_ports: ports(&[(22, 22)]),
        ..drop_all()
    });
    assert_eq!(h.run(Dir::Ingress, &first), TC_ACT_UNSPEC);
    assert_eq!(h.run(Dir::Ingress, &middle), TC_ACT_SHOT);
    assert_eq!(h.run(Dir::Ingress, &last), TC_ACT_SHOT);
    assert_eq!(h.counters(Dir::Ingress), [3, 2, 2, 0, 1, 0]);
}

#[test]
fn ipv6_fragments_and_extension_headers() {
    let (x, y) = (v6("2001:db8::1"), v6("2001:db8::2"));
    let h = Harness::with(&FaultConfig {
        sports: ports(&[(8080, 8080)]),
        protos: PROTO_UDP,
        ..drop_all()
    });
    let udp = L4::Udp(8080, 22);
    let first = pkt6_ext(x, y, &[frag6(0, true)], &udp);
    let middle = pkt6_ext(
        x,
        y,
        &[frag6(100, true)],
        &L4::Raw(17, fake_ports_payload()),
    );
    let last = pkt6_ext(
        x,
        y,
        &[frag6(200, false)],
        &L4::Raw(17, fake_ports_payload()),
    );
    assert_eq!(h.run(Dir::Egress, &first), TC_ACT_SHOT);
    assert_eq!(h.run(Dir::Egress, &middle), TC_ACT_UNSPEC);
    assert_eq!(h.run(Dir::Egress, &last), TC_ACT_UNSPEC);

    // Every extension header kind, in one chain, before the fragment header.
    let chain = [
        ext(0, 0),
        ext(43, 2),
        ext(51, 4),
        ext(60, 1),
        frag6(0, true),
    ];
    assert_eq!(
        h.run(Dir::Egress, &pkt6_ext(x, y, &chain, &udp)),
        TC_ACT_SHOT
    );
    let chain = [ext(0, 0), ext(60, 0), frag6(7, false)];
    let non_first = pkt6_ext(x, y, &chain, &L4::Raw(17, fake_ports_payload()));
    assert_eq!(h.run(Dir::Egress, &non_first), TC_ACT_UNSPEC);
    // Six extension headers are walked; a seventh hides the L4 header (no ports: no match).
    let six = [
        ext(0, 0),
        ext(60, 0),
        ext(43, 0),
        ext(60, 0),
        ext(51, 1),
        ext(60, 0),
    ];
    assert_eq!(h.run(Dir::Egress, &pkt6_ext(x, y, &six, &udp)), TC_ACT_SHOT);
    let seven = [
        ext(0, 0),
        ext(60, 0),
        ext(43, 0),
        ext(60, 0),
        ext(51, 1),
        ext(60, 0),
        ext(60, 0),
    ];
    assert_eq!(
        h.run(Dir::Egress, &pkt6_ext(x, y, &seven, &udp)),
        TC_ACT_UNSPEC
    );

    // Without a port filter, non-first fragments match by protocol (from the fragment header).
    let h = Harness::with(&FaultConfig {
        protos: PROTO_UDP,
        protected_ports: ports(&[(22, 22)]),
        ..drop_all()
    });
    assert_eq!(
        h.run(Dir::Egress, &first),
        TC_ACT_UNSPEC,
        "protected by its dport 22"
    );
    assert_eq!(h.run(Dir::Egress, &middle), TC_ACT_SHOT);
    assert_eq!(h.run(Dir::Egress, &last), TC_ACT_SHOT);
    assert_eq!(h.counters(Dir::Egress), [3, 2, 2, 0, 1, 0]);
}

#[test]
fn non_ip_and_truncated_packets_pass() {
    let h = Harness::with(&drop_all());
    assert_eq!(h.run(Dir::Ingress, &arp()), TC_ACT_UNSPEC);
    assert_eq!(h.run(Dir::Egress, &arp()), TC_ACT_UNSPEC);
    // LLDP
    assert_eq!(h.run(Dir::Egress, &eth(0x88CC, &[0; 40])), TC_ACT_UNSPEC);
    // An IPv4 header with IHL 4 (< 20 bytes), and one with a bad version nibble. (A frame too
    // short for an IPv4 header cannot be tested: BPF_PROG_TEST_RUN rejects it with EINVAL.)
    let mut short_ihl = pkt4(A, B, &L4::Tcp(1, 2));
    short_ihl[14] = 0x44;
    assert_eq!(h.run(Dir::Ingress, &short_ihl), TC_ACT_UNSPEC);
    let mut bad = pkt4(A, B, &L4::Tcp(1, 2));
    bad[14] = 0x65;
    assert_eq!(h.run(Dir::Ingress, &bad), TC_ACT_UNSPEC);
    // IPv4 header only, TCP header cut off: matches without ports (no port filter here)...
    let cut = eth(ETH_P_IP, &ipv4_raw(A, B, 6, 0, 0, &[]));
    assert_eq!(h.run(Dir::Ingress, &cut), TC_ACT_SHOT);
    // ... and an IHL pointing past the end of the frame leaves no ports to read either.
    let mut long_ihl = pkt4(A, B, &L4::Tcp(1, 2));
    long_ihl[14] = 0x4f;
    let h2 = Harness::with(&FaultConfig {
        dports: ports(&[(2, 2)]),
        ..drop_all()
    });
    assert_eq!(h2.run(Dir::Ingress, &long_ihl), TC_ACT_UNSPEC);
    assert_eq!(
        h2.run(Dir::Ingress, &pkt4(A, B, &L4::Tcp(1, 2))),
        TC_ACT_SHOT
    );
    assert_eq!(h.counters(Dir::Ingress), [4, 1, 1, 0, 0, 0]);
}

#[test]
fn vlan_tagged_packets_match() {
    let h = Harness::with(&FaultConfig {
        dports: ports(&[(80, 80)]),
        ..drop_all()
    });
    let (proto, body) = L4::Tcp(40_000, 80).bytes(false);
    let l3 = ipv4_raw(A, B, proto, 0, 0, &body);
    assert_eq!(
        h.run(Dir::Ingress, &eth_vlan(0x8100, 42, ETH_P_IP, &l3)),
        TC_ACT_SHOT
    );
    assert_eq!(
        h.run(Dir::Ingress, &eth_vlan(0x88A8, 7, ETH_P_IP, &l3)),
        TC_ACT_SHOT
    );
    let p6 = pkt6(v6("fd00::1"), v6("fd00::2"), &L4::Tcp(40_000, 80));
    assert_eq!(
        h.run(Dir::Ingress, &eth_vlan(0x8100, 42, ETH_P_IPV6, &p6[14..])),
        TC_ACT_SHOT
    );
    let (proto, body) = L4::Tcp(40_000, 81).bytes(false);
    let other = ipv4_raw(A, B, proto, 0, 0, &body);
    assert_eq!(
        h.run(Dir::Ingress, &eth_vlan(0x8100, 42, ETH_P_IP, &other)),
        TC_ACT_UNSPEC
    );
    // ARP in a VLAN is still not IP.
    assert_eq!(
        h.run(Dir::Ingress, &eth_vlan(0x8100, 42, ETH_P_ARP, &arp()[14..])),
        TC_ACT_UNSPEC
    );
}

#[test]
fn steering_sets_priority() {
    let class = 0xC4A0_0002;
    let mut h = Harness::with(&FaultConfig {
        flags: base().flags | F_STEER,
        steer_priority: class,
        protos: PROTO_TCP,
        ..base()
    });
    let out = h.run_full(Dir::Egress, &pkt4(A, B, &L4::Tcp(1, 2)), 1);
    assert_eq!(out.retval, TC_ACT_UNSPEC);
    assert_eq!(out.ctx.priority(), class);
    // Not matched: priority untouched.
    let out = h.run_full(Dir::Egress, &pkt4(A, B, &L4::Udp(1, 2)), 1);
    assert_eq!((out.retval, out.ctx.priority()), (TC_ACT_UNSPEC, 0));
    assert_eq!(h.counters(Dir::Egress), [2, 1, 0, 1, 0, 0]);
    // A dropped packet is not steered.
    h.set_config(&FaultConfig {
        flags: base().flags | F_STEER,
        steer_priority: class,
        loss_threshold: u32::MAX,
        ..base()
    });
    let out = h.run_full(Dir::Ingress, &pkt4(A, B, &L4::Tcp(1, 2)), 1);
    assert_eq!((out.retval, out.ctx.priority()), (TC_ACT_SHOT, 0));
    assert_eq!(h.counter(Dir::Ingress, Counter::Steered), 0);
}

fn drop_sequence(seed: u64, n: usize) -> Vec<bool> {
    let mut h = Harness::with(&FaultConfig {
        flags: base().flags | F_SEEDED,
        loss_threshold: probability_to_threshold(0.5),
        ..base()
    });
    h.seed(seed);
    let p = pkt4(A, B, &L4::Udp(1, 2));
    (0..n)
        .map(|_| h.run(Dir::Ingress, &p) == TC_ACT_SHOT)
        .collect()
}

#[test]
fn seeded_prng_is_reproducible() {
    let a = drop_sequence(42, 1000);
    let b = drop_sequence(42, 1000);
    let c = drop_sequence(43, 1000);
    assert_eq!(a, b, "same seed, same drop sequence");
    assert_ne!(a, c, "another seed, another sequence");
    let drops = a.iter().filter(|&&d| d).count();
    assert!((400..=600).contains(&drops), "p=0.5 seeded: {drops}/1000");
    // Unseeded slot (0) falls back to a fixed state instead of xorshift's all-zero fixed point.
    let z = drop_sequence(0, 1000);
    let drops = z.iter().filter(|&&d| d).count();
    assert!(
        (400..=600).contains(&drops),
        "slot 0 fallback: {drops}/1000"
    );
}

/// Drop count for `n` single runs at probability `p`, checked against a 5-sigma binomial bound.
fn check_bernoulli(h: &Harness, p: f64, n: u32) -> f64 {
    let pkt = pkt4(A, B, &L4::Tcp(1, 2));
    let dropped = (0..n)
        .filter(|_| h.run(Dir::Ingress, &pkt) == TC_ACT_SHOT)
        .count() as u64;
    assert_eq!(h.counter(Dir::Ingress, Counter::Dropped), dropped);
    let drops = dropped as f64;
    let n = f64::from(n);
    let (mean, sigma) = (n * p, (n * p * (1.0 - p)).sqrt());
    println!(
        "p={p}: {drops}/{n} = {:.4} (expected {mean}, sigma {sigma:.1})",
        drops / n
    );
    assert!(
        (drops - mean).abs() <= 5.0 * sigma,
        "{drops} drops, expected {mean} +- 5*{sigma:.1}"
    );
    drops / n
}

#[test]
fn bernoulli_rate_within_binomial_bound() {
    let cfg = FaultConfig {
        loss_threshold: probability_to_threshold(0.3),
        ..base()
    };
    check_bernoulli(&Harness::with(&cfg), 0.3, scaled(20_000));
    let mut h = Harness::with(&FaultConfig {
        flags: cfg.flags | F_SEEDED,
        ..cfg
    });
    h.seed(0x0123_4567_89ab_cdef);
    check_bernoulli(&h, 0.3, scaled(20_000));
}

#[test]
fn gilbert_elliott_average_loss_is_stationary_value() {
    let (p, r, loss_bad, loss_good): (f64, f64, f64, f64) = (0.05, 0.30, 0.90, 0.01);
    let pi_bad = p / (p + r);
    let expected = pi_bad * loss_bad + (1.0 - pi_bad) * loss_good;
    // Variance of the sample mean of a Markov-modulated Bernoulli sequence: the per-packet
    // variance plus the state autocorrelation, which decays as lambda^k with lambda = 1-p-r.
    let lambda = 1.0 - p - r;
    let n = scaled(400_000);
    let var1 = expected * (1.0 - expected)
        + 2.0 * pi_bad * (1.0 - pi_bad) * (loss_bad - loss_good).powi(2) * lambda / (1.0 - lambda);
    let sigma = (var1 / f64::from(n)).sqrt();
    for seeded in [false, true] {
        let mut h = Harness::with(&FaultConfig {
            flags: base().flags | F_LOSS_GE | if seeded { F_SEEDED } else { 0 },
            loss_threshold: probability_to_threshold(loss_good),
            ge_p: probability_to_threshold(p),
            ge_r: probability_to_threshold(r),
            ge_loss_bad: probability_to_threshold(loss_bad),
            ..base()
        });
        h.seed(7);
        // `repeat` runs the program n times in one syscall (same CPU: one GE chain).
        h.run_full(Dir::Ingress, &pkt4(A, B, &L4::Udp(1, 2)), n);
        let seen = h.counter(Dir::Ingress, Counter::Matched);
        let dropped = h.counter(Dir::Ingress, Counter::Dropped) as f64;
        assert_eq!(seen, u64::from(n));
        let rate = dropped / f64::from(n);
        println!("GE seeded={seeded}: loss {rate:.4}, stationary {expected:.4}, sigma {sigma:.4}");
        assert!(
            (rate - expected).abs() <= 5.0 * sigma,
            "GE loss {rate:.4} vs {expected:.4} +- 5*{sigma:.4}"
        );
    }
}

#[test]
fn counters_equal_what_was_sent() {
    let mut h = Harness::with(&FaultConfig {
        flags: drop_all().flags | F_DST_FILTER | F_EGRESS_WIRE_DROP,
        protos: PROTO_TCP | PROTO_UDP,
        protected_ports: ports(&[(22, 22)]),
        ..drop_all()
    });
    h.add_v4(names::MAP_DST_V4, 8, [192, 0, 0, 0]);
    let hit = pkt4(A, B, &L4::Tcp(1, 2));
    let miss_dst = pkt4(A, [10, 0, 0, 1], &L4::Tcp(1, 2));
    let miss_proto = pkt4(A, B, &L4::Icmp);
    let protected = pkt4(A, B, &L4::Tcp(22, 2));
    let mut sent = [0u64; 6];
    for (pkt, n, matched, protected_) in [
        (&hit, 37u64, true, false),
        (&miss_dst, 11, false, false),
        (&miss_proto, 5, false, false),
        (&protected, 3, true, true),
        (&arp(), 2, false, false),
    ] {
        for _ in 0..n {
            h.run(Dir::Ingress, pkt);
            h.run(Dir::Egress, pkt);
        }
        sent[0] += n;
        if matched && !protected_ {
            sent[1] += n;
            sent[2] += n;
        }
        if protected_ {
            sent[4] += n;
        }
    }
    assert_eq!(h.counters(Dir::Ingress), sent);
    assert_eq!(h.counters(Dir::Egress), sent);
    // Also with `repeat` (one syscall, many runs).
    h.run_full(Dir::Ingress, &hit, 1000);
    assert_eq!(h.counter(Dir::Ingress, Counter::Dropped), sent[2] + 1000);
}

#[test]
fn headerless_l3_devices() {
    // wireguard/tun: the frame starts with the IP header. Source 8.0.0.1 puts 0x0800 where an
    // Ethernet parser would look for the ethertype, so without F_L3_DEVICE the packet would be
    // misparsed (the "IPv4 header" would start inside the real one).
    let (proto, body) = L4::Tcp(40_000, 443).bytes(false);
    let raw4 = ipv4_raw([8, 0, 0, 1], B, proto, 0, 0, &body);
    let raw6 = pkt6(v6("2001:db8::1"), v6("2001:db8::2"), &L4::Udp(1, 443))[14..].to_vec();
    let cfg = FaultConfig {
        flags: drop_all().flags | F_L3_DEVICE,
        dports: ports(&[(443, 443)]),
        ..drop_all()
    };
    let mut h = Harness::with(&cfg);
    assert_eq!(h.run(Dir::Ingress, &raw4), TC_ACT_SHOT);
    assert_eq!(h.run(Dir::Egress, &raw6), TC_ACT_SHOT);
    let (proto, body) = L4::Tcp(40_000, 444).bytes(false);
    assert_eq!(
        h.run(Dir::Ingress, &ipv4_raw([8, 0, 0, 1], B, proto, 0, 0, &body)),
        TC_ACT_UNSPEC
    );
    // Not IP (version nibble 0).
    assert_eq!(h.run(Dir::Ingress, &[0u8; 40]), TC_ACT_UNSPEC);
    // The same bytes on an Ethernet device do not match.
    h.set_config(&FaultConfig {
        flags: drop_all().flags,
        ..cfg
    });
    assert_eq!(h.run(Dir::Ingress, &raw4), TC_ACT_UNSPEC);
}

/// EDT delay (`F_EDT`): the egress program writes `skb->tstamp = max(tstamp, now) + delay +
/// U[-j, +j]`; read back through `ctx_out`. `bpf_ktime_get_ns` is `CLOCK_MONOTONIC`, so the
/// kernel's "now" lies between our clock readings before and after each run.
#[test]
fn edt_departure_time_within_delay_and_jitter_bounds() {
    const DELAY_US: u64 = 100_000;
    const JITTER_US: u64 = 20_000;
    let edt = |delay_us: u64, jitter_us: u64| FaultConfig {
        flags: base().flags | F_EDT,
        edt_delay_us: delay_us as u32,
        edt_jitter_us: jitter_us as u32,
        protos: PROTO_TCP,
        ..base()
    };
    let mut h = Harness::with(&edt(DELAY_US, JITTER_US));
    let p = pkt4(A, B, &L4::Tcp(40_000, 80));
    let n = 2000u32;
    let (mut lo, mut hi, mut sum) = (u64::MAX, 0u64, 0f64);
    for _ in 0..n {
        let before = monotonic_ns();
        let out = h.run_full(Dir::Egress, &p, 1);
        let after = monotonic_ns();
        assert_eq!(out.retval, TC_ACT_UNSPEC, "EDT must not end the tc chain");
        let ts = out.ctx.tstamp();
        assert!(
            ts >= before + (DELAY_US - JITTER_US) * 1000
                && ts <= after + (DELAY_US + JITTER_US) * 1000,
            "tstamp {ts} outside [{before} + 80 ms, {after} + 120 ms]"
        );
        let added_us = (ts - before) / 1000;
        lo = lo.min(added_us);
        hi = hi.max(added_us);
        sum += added_us as f64;
    }
    let mean = sum / f64::from(n);
    // Uniform on [80, 120] ms: sd = 20 ms / sqrt(3) = 11.5 ms, so the mean of 2000 draws is
    // within 5 standard errors (1.3 ms) of 100 ms, and both ends of the range are reached.
    println!("EDT 100 ms +/- 20 ms over {n} runs: added {lo}..{hi} us, mean {mean:.0} us");
    assert!(
        (mean - DELAY_US as f64).abs() < 1300.0,
        "mean added delay {mean} us"
    );
    assert!(
        lo < 81_000 && hi > 119_000,
        "jitter range not covered: {lo}..{hi} us"
    );
    assert_eq!(
        h.counters(Dir::Egress),
        [u64::from(n), u64::from(n), 0, u64::from(n), 0, 0]
    );

    // Unmatched (UDP): tstamp untouched.
    let out = h.run_full(Dir::Egress, &pkt4(A, B, &L4::Udp(1, 2)), 1);
    assert_eq!((out.retval, out.ctx.tstamp()), (TC_ACT_UNSPEC, 0));

    // Ingress never sets a departure time (no qdisc there honours it).
    let out = h.run_full(Dir::Ingress, &p, 1);
    assert_eq!((out.retval, out.ctx.tstamp()), (TC_ACT_UNSPEC, 0));
    assert_eq!(h.counters(Dir::Ingress), [1, 1, 0, 0, 0, 0]);

    // Without jitter: exact. A departure time already in the future (TCP pacing) is the base,
    // never moved earlier; one in the past, or implausibly far ahead (another clock), is not.
    h.set_config(&edt(DELAY_US, 0));
    let ahead = monotonic_ns() + 5_000_000_000;
    let out = test_run(
        h.prog_fd(Dir::Egress),
        &p,
        &SkBuffCtx::with_tstamp(ahead),
        1,
    );
    assert_eq!(
        out.ctx.tstamp(),
        ahead + DELAY_US * 1000,
        "pacing departure time must be kept as base"
    );
    for stale in [1, monotonic_ns() + 3_600_000_000_000] {
        let before = monotonic_ns();
        let out = test_run(
            h.prog_fd(Dir::Egress),
            &p,
            &SkBuffCtx::with_tstamp(stale),
            1,
        );
        let after = monotonic_ns();
        let ts = out.ctx.tstamp();
        assert!(
            ts >= before + DELAY_US * 1000 && ts <= after + DELAY_US * 1000,
            "stale {stale} -> {ts}"
        );
    }

    // Jitter larger than the delay: clamped, never before "now".
    h.set_config(&edt(1_000, 50_000));
    for _ in 0..200 {
        let before = monotonic_ns();
        let ts = h.run_full(Dir::Egress, &p, 1).ctx.tstamp();
        assert!(
            ts >= before && ts <= monotonic_ns() + 51_000_000,
            "{ts} vs {before}"
        );
    }

    // A dropped packet gets no departure time and is not counted as steered.
    let h = Harness::with(&FaultConfig {
        loss_threshold: u32::MAX,
        ..edt(DELAY_US, 0)
    });
    let out = h.run_full(Dir::Egress, &p, 1);
    assert_eq!((out.retval, out.ctx.tstamp()), (TC_ACT_SHOT, 0));
    assert_eq!(h.counter(Dir::Egress, Counter::Steered), 0);
}
