//! DNS test harness: a real server (dnsmasq) serving a small zone inside a namespace, real
//! clients (`dig`, libc's `getaddrinfo` through `getent`, and a small wire-format client of our
//! own that checks every byte of an answer), the receiver's checksum counters (`nstat`), and
//! the tools of the flapping tests: a sampler that resolves on a fixed cadence, a UDP probe
//! stream, and the comparison of observed phase edges with an `ON/OFF` schedule.
//!
//! None of it shares code with the agent: the wire client here is written from RFC 1035, not
//! from the agent's parser, so that a rewrite the agent gets wrong in the same way on both
//! sides still fails.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{NetNs, in_netns};

// ---------------------------------------------------------------------------------------------
// Wire format (RFC 1035 4.1), parsed strictly.

/// Header flag: this is a response.
pub const QR: u16 = 0x8000;
/// Header flag: authoritative answer.
pub const AA: u16 = 0x0400;
/// Header flag: truncated.
pub const TC: u16 = 0x0200;
/// Header flag: recursion desired.
pub const RD: u16 = 0x0100;
/// Header flag: recursion available.
pub const RA: u16 = 0x0080;

/// Rcode `NOERROR`.
pub const NOERROR: u8 = 0;
/// Rcode `SERVFAIL`.
pub const SERVFAIL: u8 = 2;
/// Rcode `NXDOMAIN`.
pub const NXDOMAIN: u8 = 3;
/// Rcode `REFUSED`.
pub const REFUSED: u8 = 5;

/// The numeric value of a query type's mnemonic (`A`, `AAAA`, `SRV`, ...; case-insensitive,
/// `TYPEnnn` too). Panics on an unknown name: a test typo, not a finding.
#[must_use]
pub fn qtype(name: &str) -> u16 {
    let up = name.to_ascii_uppercase();
    match up.as_str() {
        "A" => 1,
        "NS" => 2,
        "CNAME" => 5,
        "SOA" => 6,
        "PTR" => 12,
        "HINFO" => 13,
        "MX" => 15,
        "TXT" => 16,
        "AAAA" => 28,
        "SRV" => 33,
        "NAPTR" => 35,
        "OPT" => 41,
        "DS" => 43,
        "RRSIG" => 46,
        "DNSKEY" => 48,
        "HTTPS" => 65,
        "SVCB" => 64,
        "CAA" => 257,
        "ANY" => 255,
        _ => up
            .strip_prefix("TYPE")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unknown query type {name:?}")),
    }
}

/// The mnemonic of an rcode (`NOERROR`, `SERVFAIL`, ...), as dig prints it.
#[must_use]
pub fn rcode_name(rcode: u8) -> String {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("RESERVED{n}"),
    }
}

/// The rcode of a `--dns` action (`servfail`, `nxdomain`, `refused`).
#[must_use]
pub fn rcode_of(action: &str) -> u8 {
    match action.to_ascii_lowercase().as_str() {
        "noerror" => NOERROR,
        "servfail" => SERVFAIL,
        "nxdomain" => NXDOMAIN,
        "refused" => REFUSED,
        other => panic!("no rcode for {other:?}"),
    }
}

/// A query: header with one question, optionally an EDNS(0) OPT record.
#[must_use]
pub fn build_query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&RD.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(&u16::from(edns).to_be_bytes());
    m.extend_from_slice(&encode_name(name));
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    if edns {
        // Root name, type OPT, class = UDP payload size 1232, ttl 0 (ext rcode, version, DO),
        // no options.
        m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    }
    m
}

/// A name in wire form, the case of every letter kept (`ExAmPlE.test` stays so).
#[must_use]
pub fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        assert!(label.len() <= 63, "label {label:?} over 63 bytes");
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// One question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// The name, as sent (case kept), without the trailing dot.
    pub name: String,
    /// Query type.
    pub qtype: u16,
    /// Query class.
    pub qclass: u16,
}

/// One resource record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rr {
    /// Owner name.
    pub name: String,
    /// Type.
    pub rtype: u16,
    /// Class (for OPT: the UDP payload size).
    pub class: u16,
    /// TTL.
    pub ttl: u32,
    /// The record's data, as on the wire (names inside may be compressed).
    pub rdata: Vec<u8>,
}

impl Rr {
    /// The address of an A or AAAA record.
    #[must_use]
    pub fn addr(&self) -> Option<IpAddr> {
        match (self.rtype, self.rdata.len()) {
            (1, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(&self.rdata[..]).ok()?)),
            (28, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(&self.rdata[..]).ok()?)),
            _ => None,
        }
    }
}

/// A message that parsed completely: every count honoured, every name and record inside its
/// bounds, nothing left over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Transaction id.
    pub id: u16,
    /// The header's flags word (QR, opcode, AA, TC, RD, RA, Z, rcode).
    pub flags: u16,
    /// QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT as in the header.
    pub counts: [u16; 4],
    /// The question section.
    pub questions: Vec<Question>,
    /// The answer section.
    pub answers: Vec<Rr>,
    /// The authority section.
    pub authority: Vec<Rr>,
    /// The additional section.
    pub additional: Vec<Rr>,
    /// Offset just past the question section.
    pub question_end: usize,
    /// Length of the whole message.
    pub len: usize,
}

impl Message {
    /// The 4-bit rcode of the header.
    #[must_use]
    pub fn rcode(&self) -> u8 {
        (self.flags & 0xf) as u8
    }
    /// The opcode.
    #[must_use]
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }
    /// Whether a header flag (`QR`, `AA`, ...) is set.
    #[must_use]
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
    /// Addresses in the answer section.
    #[must_use]
    pub fn addrs(&self) -> Vec<IpAddr> {
        self.answers.iter().filter_map(Rr::addr).collect()
    }
    /// Whether the message is what a rewrite to an error rcode must produce: a response with
    /// that rcode, the question intact and nothing after it (all other counts zero, the
    /// message ending right after the question).
    #[must_use]
    pub fn is_bare_error(&self, rcode: u8) -> bool {
        self.has(QR)
            && self.rcode() == rcode
            && self.counts == [1, 0, 0, 0]
            && self.len == self.question_end
    }
}

fn be16(m: &[u8], at: usize) -> Result<u16, String> {
    m.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| format!("16-bit field at {at} past the end ({} bytes)", m.len()))
}

/// Reads a (possibly compressed) name at `at`; returns it and the offset after it in place.
fn read_name(m: &[u8], at: usize) -> Result<(String, usize), String> {
    let mut labels: Vec<String> = Vec::new();
    let mut pos = at;
    let mut end = None;
    let mut jumps = 0;
    let mut wire_len = 0usize;
    loop {
        let len = *m
            .get(pos)
            .ok_or_else(|| format!("name at {at} runs past the end"))?;
        match len & 0xc0 {
            0x00 => {
                if len == 0 {
                    wire_len += 1;
                    if wire_len > 255 {
                        return Err(format!("name at {at} is over 255 bytes"));
                    }
                    return Ok((labels.join("."), end.unwrap_or(pos + 1)));
                }
                let l = usize::from(len);
                let bytes = m
                    .get(pos + 1..pos + 1 + l)
                    .ok_or_else(|| format!("label at {pos} runs past the end"))?;
                wire_len += 1 + l;
                let mut s = String::new();
                for &b in bytes {
                    if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                        s.push(char::from(b));
                    } else {
                        let _ = write!(s, "\\{b:03}");
                    }
                }
                labels.push(s);
                pos += 1 + l;
            }
            0xc0 => {
                let target = usize::from(be16(m, pos)? & 0x3fff);
                if target >= pos {
                    return Err(format!(
                        "compression pointer at {pos} points forward to {target}"
                    ));
                }
                jumps += 1;
                if jumps > 64 {
                    return Err(format!("compression loop in the name at {at}"));
                }
                end.get_or_insert(pos + 2);
                pos = target;
            }
            _ => return Err(format!("reserved label type {len:#x} at {pos}")),
        }
    }
}

fn read_rr(m: &[u8], at: usize) -> Result<(Rr, usize), String> {
    let (name, pos) = read_name(m, at)?;
    let rtype = be16(m, pos)?;
    let class = be16(m, pos + 2)?;
    let ttl = u32::from(be16(m, pos + 4)?) << 16 | u32::from(be16(m, pos + 6)?);
    let rdlen = usize::from(be16(m, pos + 8)?);
    let start = pos + 10;
    let rdata = m
        .get(start..start + rdlen)
        .ok_or_else(|| format!("rdata of {rdlen} bytes at {start} runs past the end"))?
        .to_vec();
    if matches!((rtype, rdlen), (1, n) if n != 4) || matches!((rtype, rdlen), (28, n) if n != 16) {
        return Err(format!("type {rtype} record with {rdlen} bytes of rdata"));
    }
    Ok((
        Rr {
            name,
            rtype,
            class,
            ttl,
            rdata,
        },
        start + rdlen,
    ))
}

/// Parses a whole message strictly: a short header, a count that promises more records than
/// there are, a name out of bounds, a forward compression pointer, a malformed A/AAAA record,
/// or bytes left after the last record are all errors.
pub fn parse_message(m: &[u8]) -> Result<Message, String> {
    if m.len() < 12 {
        return Err(format!("{} bytes: shorter than a header", m.len()));
    }
    let id = be16(m, 0)?;
    let flags = be16(m, 2)?;
    let counts = [be16(m, 4)?, be16(m, 6)?, be16(m, 8)?, be16(m, 10)?];
    let mut pos = 12;
    let mut questions = Vec::new();
    for i in 0..counts[0] {
        let (name, p) = read_name(m, pos).map_err(|e| format!("question {i}: {e}"))?;
        let qtype = be16(m, p).map_err(|e| format!("question {i}: {e}"))?;
        let qclass = be16(m, p + 2).map_err(|e| format!("question {i}: {e}"))?;
        questions.push(Question {
            name,
            qtype,
            qclass,
        });
        pos = p + 4;
    }
    let question_end = pos;
    let mut sections: [Vec<Rr>; 3] = Default::default();
    for (s, section) in sections.iter_mut().enumerate() {
        for i in 0..counts[s + 1] {
            let (rr, p) = read_rr(m, pos).map_err(|e| {
                format!(
                    "{} record {i}: {e}",
                    ["answer", "authority", "additional"][s]
                )
            })?;
            section.push(rr);
            pos = p;
        }
    }
    if pos != m.len() {
        return Err(format!(
            "{} bytes after the last record (message {} bytes, records end at {pos})",
            m.len() - pos,
            m.len()
        ));
    }
    let [answers, authority, additional] = sections;
    Ok(Message {
        id,
        flags,
        counts,
        questions,
        answers,
        authority,
        additional,
        question_end,
        len: m.len(),
    })
}

/// What one query got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response that parsed, with the transaction id and question of the query.
    Reply(Message),
    /// A response with our id that did not parse, or did not echo our question: why, and the
    /// bytes.
    Malformed(String, Vec<u8>),
    /// Nothing within the timeout.
    Timeout,
    /// The transport failed (connection refused, reset, ...).
    Error(String),
}

impl Outcome {
    /// The rcode of a reply, `None` for anything else.
    #[must_use]
    pub fn rcode(&self) -> Option<u8> {
        match self {
            Self::Reply(m) => Some(m.rcode()),
            _ => None,
        }
    }
    /// The reply, or a panic naming what came instead.
    #[must_use]
    pub fn reply(&self) -> &Message {
        match self {
            Self::Reply(m) => m,
            other => panic!("expected a well-formed reply, got {other:?}"),
        }
    }
}

/// Checks a response against its query: the id, QR, the opcode, and the question echoed byte
/// for byte (the case of the name included).
fn check_reply(raw: &[u8], id: u16, name: &str, qt: u16) -> Outcome {
    match parse_message(raw) {
        Err(e) => Outcome::Malformed(e, raw.to_vec()),
        Ok(m) => {
            let want = Question {
                name: name.trim_end_matches('.').to_owned(),
                qtype: qt,
                qclass: 1,
            };
            if m.id != id {
                Outcome::Malformed(format!("id {} for query {id}", m.id), raw.to_vec())
            } else if !m.has(QR) || m.opcode() != 0 {
                Outcome::Malformed(format!("flags {:#06x}", m.flags), raw.to_vec())
            } else if m.questions != [want.clone()] {
                Outcome::Malformed(
                    format!("question {:?}, asked {want:?}", m.questions),
                    raw.to_vec(),
                )
            } else {
                Outcome::Reply(m)
            }
        }
    }
}

/// A UDP DNS client bound inside a namespace (a socket keeps the namespace it was made in, so
/// the client is used from any thread).
#[derive(Debug)]
pub struct Client {
    sock: UdpSocket,
    /// The server.
    pub server: SocketAddr,
    next_id: u16,
    /// Send an EDNS(0) OPT record with each query.
    pub edns: bool,
}

/// `ip:port` or `[ip6]:port` from an address and a port.
#[must_use]
pub fn sockaddr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("server address"), port)
}

impl Client {
    /// A client in `ns` for `server:port`.
    #[must_use]
    pub fn new(ns: &NetNs, server: &str, port: u16) -> Self {
        static CLIENTS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let server = sockaddr(server, port);
        let sock = in_netns(ns, move || {
            let local: SocketAddr = if server.is_ipv4() {
                "0.0.0.0:0".parse().expect("addr")
            } else {
                "[::]:0".parse().expect("addr")
            };
            let s = UdpSocket::bind(local).expect("bind client");
            s.connect(server).expect("connect client");
            s
        });
        // Ids differ between clients, so a late answer to another client's query never fits.
        let n = CLIENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let next_id = (std::process::id() as u16).rotate_left(8) ^ n.wrapping_mul(0x1000);
        Self {
            sock,
            server,
            next_id,
            edns: false,
        }
    }

    /// Queries [`PROBE_NAME`] until the server answers it (panics after `limit`). The first
    /// packet between two fresh namespaces can wait a second for IPv6 neighbour discovery
    /// (their link-local addresses are still tentative); a test's first query should not.
    pub fn wait_ready(&mut self, limit: Duration) {
        let t0 = Instant::now();
        while self
            .query(PROBE_NAME, "A", Duration::from_millis(250))
            .rcode()
            != Some(NOERROR)
        {
            assert!(
                t0.elapsed() < limit,
                "{} does not answer {PROBE_NAME} after {limit:?}",
                self.server
            );
        }
    }

    /// One query; waits up to `timeout` for the answer with its id (late answers to earlier
    /// queries are discarded).
    pub fn query(&mut self, name: &str, qtype_name: &str, timeout: Duration) -> Outcome {
        let qt = qtype(qtype_name);
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        let q = build_query(id, name, qt, self.edns);
        if let Err(e) = self.sock.send(&q) {
            return Outcome::Error(format!("send: {e}"));
        }
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Outcome::Timeout;
            }
            self.sock
                .set_read_timeout(Some(left))
                .expect("set_read_timeout");
            match self.sock.recv(&mut buf) {
                Ok(n) if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) != id => {}
                Ok(n) => return check_reply(&buf[..n], id, name, qt),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Outcome::Timeout;
                }
                Err(e) => return Outcome::Error(format!("recv: {e}")),
            }
        }
    }
}

/// One query over TCP (RFC 7766 framing) from `ns`.
#[must_use]
pub fn tcp_query(
    ns: &NetNs,
    server: &str,
    port: u16,
    name: &str,
    qtype_name: &str,
    timeout: Duration,
) -> Outcome {
    let addr = sockaddr(server, port);
    let qt = qtype(qtype_name);
    let id = 0x7c00 ^ (std::process::id() as u16);
    let q = build_query(id, name, qt, false);
    let name = name.to_owned();
    in_netns(ns, move || {
        let deadline = Instant::now() + timeout;
        let mut s = match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Outcome::Timeout,
            Err(e) => return Outcome::Error(format!("connect: {e}")),
        };
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        if let Err(e) = s.write_all(&framed) {
            return Outcome::Error(format!("write: {e}"));
        }
        // Reads exactly `buf.len()` bytes; what went wrong instead, if anything.
        let mut read = |buf: &mut [u8]| -> Option<Outcome> {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Some(Outcome::Timeout);
            }
            s.set_read_timeout(Some(left)).expect("set_read_timeout");
            s.read_exact(buf).err().map(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Outcome::Timeout,
                _ => Outcome::Error(format!("read: {e}")),
            })
        };
        let mut len = [0u8; 2];
        if let Some(o) = read(&mut len) {
            return o;
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if let Some(o) = read(&mut msg) {
            return o;
        }
        check_reply(&msg, id, &name, qt)
    })
}

// ---------------------------------------------------------------------------------------------
// dnsmasq.

/// The records a [`Dnsmasq`] serves, as dnsmasq options.
#[derive(Clone, Debug, Default)]
pub struct Zone {
    args: Vec<String>,
}

impl Zone {
    /// A zone for which the server is authoritative (`--local=/DOMAIN/`): a name under it with
    /// no record gets `NXDOMAIN` (not a forward: the server has no upstream).
    #[must_use]
    pub fn new(domain: &str) -> Self {
        Self {
            args: vec![format!("--local=/{domain}/")],
        }
    }
    /// An A and/or AAAA record for exactly `name` (`--host-record`).
    #[must_use]
    pub fn host(mut self, name: &str, v4: Option<&str>, v6: Option<&str>) -> Self {
        let mut a = format!("--host-record={name}");
        for ip in [v4, v6].into_iter().flatten() {
            a.push(',');
            a.push_str(ip);
        }
        self.args.push(a);
        self
    }
    /// An address for `domain` and every name under it (`--address=/DOMAIN/IP`).
    #[must_use]
    pub fn address(mut self, domain: &str, ip: &str) -> Self {
        self.args.push(format!("--address=/{domain}/{ip}"));
        self
    }
    /// An SRV record (`--srv-host=_svc._proto.NAME,TARGET,PORT,PRIORITY,WEIGHT`).
    #[must_use]
    pub fn srv(mut self, name: &str, target: &str, port: u16, priority: u16, weight: u16) -> Self {
        self.args.push(format!(
            "--srv-host={name},{target},{port},{priority},{weight}"
        ));
        self
    }
    /// A TXT record (`--txt-record`).
    #[must_use]
    pub fn txt(mut self, name: &str, text: &str) -> Self {
        self.args.push(format!("--txt-record={name},\"{text}\""));
        self
    }
    /// An MX record (`--mx-host`).
    #[must_use]
    pub fn mx(mut self, name: &str, host: &str, preference: u16) -> Self {
        self.args
            .push(format!("--mx-host={name},{host},{preference}"));
        self
    }
    /// The dnsmasq options of the records.
    #[must_use]
    pub fn args(&self) -> &[String] {
        &self.args
    }
}

/// The name every [`Dnsmasq`] answers, to tell when it is up.
pub const PROBE_NAME: &str = "ready.probe.chaos";
/// The address it has.
pub const PROBE_ADDR: &str = "192.0.2.53";

/// A dnsmasq inside a namespace, serving a [`Zone`] on the given addresses only
/// (`--bind-interfaces`), killed on drop. Every query it answers is logged, so a test can tell
/// a failure the server sent from one made on the way.
#[derive(Debug)]
pub struct Dnsmasq {
    child: Child,
    /// The addresses it listens on.
    pub listen: Vec<String>,
    /// Its port.
    pub port: u16,
    log: Arc<Mutex<String>>,
}

impl Dnsmasq {
    /// Starts dnsmasq in `ns` on `listen` (IPv4 and/or IPv6 addresses that are already
    /// configured there, `127.0.0.53` and `::1` included) and waits until each address answers
    /// a query. Panics with dnsmasq's output if it exits or does not answer within 20 s.
    #[must_use]
    pub fn start(ns: &NetNs, listen: &[&str], port: u16, zone: &Zone) -> Self {
        let mut cmd = ns.command("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--user=root",
            "--group=root",
            "--cache-size=0",
            "--log-queries",
            "--log-facility=-",
            &format!("--port={port}"),
            &format!("--host-record={PROBE_NAME},{PROBE_ADDR}"),
        ]);
        for ip in listen {
            cmd.arg(format!("--listen-address={ip}"));
        }
        cmd.args(zone.args());
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dnsmasq");
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("dnsmasq log")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut me = Self {
            child,
            listen: listen.iter().map(|s| (*s).to_owned()).collect(),
            port,
            log,
        };
        let limit = Duration::from_secs(if crate::in_vm() { 60 } else { 20 });
        for ip in listen {
            let mut c = Client::new(ns, ip, port);
            let t0 = Instant::now();
            loop {
                if c.query(PROBE_NAME, "A", Duration::from_millis(200)).rcode() == Some(NOERROR) {
                    break;
                }
                if let Some(st) = me.child.try_wait().expect("try_wait dnsmasq") {
                    // Let the log thread catch up with its last words.
                    std::thread::sleep(Duration::from_millis(100));
                    panic!("dnsmasq exited ({st}): {}", me.log());
                }
                assert!(
                    t0.elapsed() < limit,
                    "dnsmasq does not answer on {ip}:{port} after {limit:?}: {}",
                    me.log()
                );
            }
        }
        me
    }

    /// Its log so far (stderr: start-up lines and one `query[TYPE] NAME from IP` per query).
    #[must_use]
    pub fn log(&self) -> String {
        self.log.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// How many queries for `name` (case-insensitive) it has logged.
    #[must_use]
    pub fn queries_for(&self, name: &str) -> usize {
        count_queries(&self.log(), name)
    }

    /// Its pid.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Queries for `name` in a dnsmasq `--log-queries` log (`... query[A] www.example.test from
/// 10.90.0.1`).
#[must_use]
pub fn count_queries(log: &str, name: &str) -> usize {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    log.lines()
        .filter(|l| l.contains("query["))
        .filter(|l| {
            l.split_whitespace()
                .skip_while(|w| !w.starts_with("query["))
                .nth(1)
                .is_some_and(|n| n.to_ascii_lowercase() == name)
        })
        .count()
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- dnsmasq log (last 40 lines) ---");
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// dig.

/// What `dig` printed about one query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DigReply {
    /// `status:` of the header line (`NOERROR`, `SERVFAIL`, ...), if dig got an answer.
    pub status: Option<String>,
    /// The header's flags (`qr`, `aa`, `rd`, `ra`, ...).
    pub flags: Vec<String>,
    /// QUERY, ANSWER, AUTHORITY, ADDITIONAL counts of the header.
    pub counts: Option<[u16; 4]>,
    /// Records of the answer section, one line each.
    pub answers: Vec<String>,
    /// Lines where dig reports a problem with the answer: `Warning`, `malformed`, `bad packet`,
    /// `mismatch`, `unexpected`, `FORMERR`, `error` (timeouts are not counted here).
    pub problems: Vec<String>,
    /// dig said no server could be reached (every try timed out).
    pub timed_out: bool,
    /// Exit status (9: no reply).
    pub exit: i32,
    /// Everything dig printed.
    pub raw: String,
}

/// Parses dig's default output.
#[must_use]
pub fn parse_dig(text: &str, exit: i32) -> DigReply {
    let mut r = DigReply {
        exit,
        raw: text.to_owned(),
        ..DigReply::default()
    };
    let mut in_answer = false;
    for line in text.lines() {
        let l = line.trim();
        if let Some(h) = l.strip_prefix(";; ->>HEADER<<-") {
            r.status = h
                .split(',')
                .find_map(|f| f.trim().strip_prefix("status:"))
                .map(|s| s.trim().to_owned());
        } else if let Some(f) = l.strip_prefix(";; flags:") {
            let (flags, counts) = f.split_once(';').unwrap_or((f, ""));
            r.flags = flags.split_whitespace().map(str::to_owned).collect();
            let mut c = [0u16; 4];
            let mut found = 0;
            for part in counts.split(',') {
                if let Some((k, v)) = part.split_once(':') {
                    let i = match k.trim() {
                        "QUERY" => 0,
                        "ANSWER" => 1,
                        "AUTHORITY" => 2,
                        "ADDITIONAL" => 3,
                        _ => continue,
                    };
                    if let Ok(n) = v.trim().parse() {
                        c[i] = n;
                        found += 1;
                    }
                }
            }
            if found == 4 {
                r.counts = Some(c);
            }
        } else if l == ";; ANSWER SECTION:" {
            in_answer = true;
            continue;
        } else if l.is_empty() || l.starts_with(";;") {
            in_answer = false;
        }
        if in_answer && !l.is_empty() && !l.starts_with(';') {
            r.answers.push(l.to_owned());
        }
        let low = l.to_ascii_lowercase();
        if l.starts_with(";; ->>HEADER<<-") || l.starts_with(";; flags:") {
            // "status: NOERROR" is not an error.
        } else if low.contains("timed out") || low.contains("no servers could be reached") {
            r.timed_out = true;
        } else if l.starts_with(";;")
            && [
                "warning",
                "malformed",
                "bad packet",
                "mismatch",
                "unexpected",
                "formerr",
                "error",
            ]
            .iter()
            .any(|w| low.contains(w))
        {
            r.problems.push(l.to_owned());
        }
    }
    r
}

/// `dig @server -p port NAME TYPE` from `ns`, one try of `timeout_s` seconds; `extra` are
/// further options (`+tcp`, `+noedns`, ...).
#[must_use]
pub fn dig(
    ns: &NetNs,
    server: &str,
    port: u16,
    name: &str,
    qtype_name: &str,
    timeout_s: u32,
    extra: &[&str],
) -> DigReply {
    let out = ns
        .command("dig")
        .arg(format!("@{server}"))
        .args(["-p", &port.to_string(), name, qtype_name])
        .args([
            &format!("+time={timeout_s}"),
            "+tries=1",
            "+retry=0",
            "+nostats",
            "+nocookie",
        ])
        .args(extra)
        .output()
        .expect("run dig");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    parse_dig(&text, out.status.code().unwrap_or(-1))
}

// ---------------------------------------------------------------------------------------------
// getaddrinfo (glibc, through getent).

/// A namespace's resolver configuration: `/etc/netns/NS/resolv.conf` naming the given servers
/// and `/etc/netns/NS/nsswitch.conf` with `hosts: dns`, which `ip netns exec` bind-mounts over
/// `/etc`'s for the commands it runs there. Removed on drop.
#[derive(Debug)]
pub struct ResolvConf {
    dir: PathBuf,
}

impl ResolvConf {
    /// Points `ns`'s libc resolver at `servers` (one try, `timeout` seconds each: a dropped
    /// answer costs that long).
    #[must_use]
    pub fn new(ns: &NetNs, servers: &[&str], timeout_s: u32) -> Self {
        let dir = PathBuf::from("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&dir).expect("mkdir /etc/netns/NS");
        let mut conf = String::new();
        for s in servers {
            let _ = writeln!(conf, "nameserver {s}");
        }
        let _ = writeln!(conf, "options timeout:{timeout_s} attempts:1 ndots:1");
        std::fs::write(dir.join("resolv.conf"), conf).expect("write resolv.conf");
        std::fs::write(dir.join("nsswitch.conf"), "hosts: dns\n").expect("write nsswitch.conf");
        // `ip netns exec` can only bind over files that exist (the VM guest has no resolv.conf).
        for f in ["resolv.conf", "nsswitch.conf"] {
            let p = PathBuf::from("/etc").join(f);
            if !p.exists() {
                let _ = std::fs::write(&p, "");
            }
        }
        Self { dir }
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Which `getaddrinfo` family to ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `AF_INET` (`getent ahostsv4`: A queries only).
    V4,
    /// `AF_INET6` (`getent ahostsv6`: AAAA queries only).
    V6,
}

/// What `getaddrinfo` answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gai {
    /// The addresses (deduplicated, in order).
    Addrs(Vec<IpAddr>),
    /// It failed: getent's exit code (2: not found, which is how getent reports every
    /// getaddrinfo error) and stderr.
    Failed(i32, String),
}

/// Parses `getent ahosts*` output (`ADDR  STREAM name`, `ADDR  DGRAM`, `ADDR  RAW`).
#[must_use]
pub fn parse_getent(text: &str) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for a in text
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
    {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// glibc's `getaddrinfo(name)` in `ns` (with a [`ResolvConf`] in place), run by `getent`.
/// A trailing dot is added, so no search domain is tried.
#[must_use]
pub fn getaddrinfo(ns: &NetNs, name: &str, family: Family) -> Gai {
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    let db = match family {
        Family::V4 => "ahostsv4",
        Family::V6 => "ahostsv6",
    };
    let out = ns
        .command("getent")
        .args([db, &fqdn])
        .output()
        .expect("run getent");
    let code = out.status.code().unwrap_or(-1);
    if code == 0 {
        Gai::Addrs(parse_getent(&String::from_utf8_lossy(&out.stdout)))
    } else {
        Gai::Failed(code, String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

// ---------------------------------------------------------------------------------------------
// nstat and ethtool.

/// Parses `nstat -a` output (`#kernel`, then `Name value rate`).
#[must_use]
pub fn parse_nstat(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.parse().ok()?))
        })
        .collect()
}

/// The kernel's SNMP counters in `ns` (`nstat -asz`: absolute, history untouched, zeros too).
#[must_use]
pub fn nstat(ns: &NetNs) -> BTreeMap<String, u64> {
    parse_nstat(&ns.sh("nstat -asz"))
}

/// UDP datagrams the namespace's stack dropped for a bad checksum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CsumErrors {
    /// `UdpInCsumErrors`.
    pub udp: u64,
    /// `Udp6InCsumErrors`.
    pub udp6: u64,
}

/// `UdpInCsumErrors` and `Udp6InCsumErrors` of `ns`.
#[must_use]
pub fn udp_csum_errors(ns: &NetNs) -> CsumErrors {
    let c = nstat(ns);
    let get = |k: &str| {
        *c.get(k)
            .unwrap_or_else(|| panic!("nstat has no {k}: {c:?}"))
    };
    CsumErrors {
        udp: get("UdpInCsumErrors"),
        udp6: get("Udp6InCsumErrors"),
    }
}

/// The Internet checksum (RFC 1071) of `data`, folded, not complemented.
fn ones_sum(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// The UDP checksum of a datagram (`udp`: header with a zero checksum, then the payload).
#[must_use]
pub fn udp_checksum(src: IpAddr, dst: IpAddr, udp: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(udp.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
        }
        _ => panic!("mixed families {src} -> {dst}"),
    }
    let c = !(ones_sum(udp, ones_sum(&pseudo, 0)) as u16);
    if c == 0 { 0xffff } else { c }
}

/// Sends one UDP datagram with a wrong checksum from `from` (`src`, an address of it) to
/// `dst:dport` through a raw socket, which the kernel neither checksums nor offloads: the
/// receiving stack must count it in `Udp(6)InCsumErrors`. The control that shows a zero count
/// in a test means something.
pub fn send_bad_udp_checksum(from: &NetNs, src: &str, dst: &str, dport: u16) {
    let (src, dst): (IpAddr, IpAddr) = (src.parse().expect("src"), dst.parse().expect("dst"));
    let mut udp = Vec::new();
    udp.extend_from_slice(&40_053u16.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&12u16.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(b"csum");
    let good = udp_checksum(src, dst, &udp);
    let bad: u16 = if good == 0x1234 { 0x4321 } else { 0x1234 };
    udp[6..8].copy_from_slice(&bad.to_be_bytes());
    in_netns(from, move || {
        use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
        let family = if dst.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = unsafe { libc::socket(family, libc::SOCK_RAW, libc::IPPROTO_UDP) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let sa = nix::sys::socket::SockaddrStorage::from(SocketAddr::new(dst, 0));
        // SAFETY: udp outlives the call; sa is a valid sockaddr of its own length.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                udp.as_ptr().cast(),
                udp.len(),
                0,
                nix::sys::socket::SockaddrLike::as_ptr(&sa),
                nix::sys::socket::SockaddrLike::len(&sa),
            )
        };
        assert_eq!(
            n,
            udp.len() as isize,
            "raw sendto: {}",
            std::io::Error::last_os_error()
        );
    });
}

/// Turns an interface's transmit checksum offload on or off (`ethtool -K IF tx on|off`).
/// Off, the sender's stack computes every UDP checksum in full, and the receiver's stack checks
/// it (on a veth, an offloaded checksum is never computed nor verified: `CHECKSUM_PARTIAL`
/// travels as is, and a rewrite that breaks it would go unseen).
pub fn set_tx_checksum(ns: &NetNs, ifname: &str, on: bool) {
    ns.sh(&format!(
        "ethtool -K {ifname} tx {} >/dev/null",
        if on { "on" } else { "off" }
    ));
}

/// Whether transmit checksum offload is on (`ethtool -k IF`).
#[must_use]
pub fn tx_checksum(ns: &NetNs, ifname: &str) -> bool {
    ns.sh(&format!("ethtool -k {ifname}"))
        .lines()
        .find_map(|l| l.trim().strip_prefix("tx-checksumming:"))
        .is_some_and(|v| v.trim().starts_with("on"))
}

// ---------------------------------------------------------------------------------------------
// Flapping: samplers and schedules.

/// One resolution of a [`Sampler`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// When the query was sent.
    pub at: Instant,
    /// The answer's rcode; `None`: no well-formed answer within the timeout.
    pub rcode: Option<u8>,
}

/// Resolves one name on a fixed cadence in a thread of its own, recording `(send time,
/// rcode)`; started before a fault is injected so the first edge is seen too.
#[derive(Debug)]
pub struct Sampler {
    handle: std::thread::JoinHandle<Vec<Sample>>,
    /// When the first query was sent.
    pub start: Instant,
}

impl Sampler {
    /// Queries `name`/`qtype` at `server:port` from `ns` every `every` for `duration`; each
    /// query waits at most `every - 5 ms` for its answer.
    #[must_use]
    pub fn start(
        ns: &NetNs,
        server: &str,
        port: u16,
        name: &str,
        qtype_name: &str,
        every: Duration,
        duration: Duration,
    ) -> Self {
        let mut client = Client::new(ns, server, port);
        let (name, qt) = (name.to_owned(), qtype_name.to_owned());
        let start = Instant::now();
        let wait = every.saturating_sub(Duration::from_millis(5));
        let handle = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut i = 0u32;
            loop {
                let due = start + every * i;
                if due > start + duration {
                    break;
                }
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let at = Instant::now();
                let rcode = match client.query(&name, &qt, wait) {
                    Outcome::Reply(m) => Some(m.rcode()),
                    _ => None,
                };
                out.push(Sample { at, rcode });
                i += 1;
            }
            out
        });
        Self { handle, start }
    }

    /// Waits for the run to end and returns its samples.
    #[must_use]
    pub fn finish(self) -> Vec<Sample> {
        self.handle.join().expect("sampler thread")
    }
}

/// Sends one sequence-numbered datagram from `from` to `dst:port` (a receiver bound in `to`)
/// every `every` for `duration`; returns each datagram's send time and whether it arrived.
#[must_use]
pub fn udp_probe_stream(
    from: &NetNs,
    to: &NetNs,
    dst: &str,
    port: u16,
    every: Duration,
    duration: Duration,
) -> Vec<(Instant, bool)> {
    let addr = sockaddr(dst, port);
    let rx = in_netns(to, move || {
        UdpSocket::bind(addr).expect("bind probe receiver")
    });
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let tx = in_netns(from, move || {
        let local: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().expect("addr")
        } else {
            "[::]:0".parse().expect("addr")
        };
        let s = UdpSocket::bind(local).expect("bind probe sender");
        s.connect(addr).expect("connect probe sender");
        s
    });
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    let receiver = std::thread::spawn(move || {
        let mut seen = std::collections::BTreeSet::new();
        let mut buf = [0u8; 64];
        let mut idle_since: Option<Instant> = None;
        loop {
            match rx.recv(&mut buf) {
                Ok(n) if n >= 4 => {
                    seen.insert(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
                    idle_since = None;
                }
                _ => {
                    if flag.load(std::sync::atomic::Ordering::Relaxed) {
                        let t = *idle_since.get_or_insert_with(Instant::now);
                        if t.elapsed() > Duration::from_millis(200) {
                            break;
                        }
                    }
                }
            }
        }
        seen
    });
    let start = Instant::now();
    let mut sent = Vec::new();
    let mut seq = 0u32;
    loop {
        let due = start + every * seq;
        if due > start + duration {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        sent.push(Instant::now());
        let mut payload = [0u8; 32];
        payload[..4].copy_from_slice(&seq.to_be_bytes());
        tx.send(&payload).expect("send probe");
        seq += 1;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = receiver.join().expect("probe receiver");
    sent.into_iter()
        .enumerate()
        .map(|(i, t)| (t, seen.contains(&(i as u32))))
        .collect()
}

/// A change of state between two consecutive samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    /// Midway between the last sample before and the first after.
    pub at: Instant,
    /// The fault became active (true) or went to rest.
    pub to_active: bool,
    /// Half the gap between the two samples: the edge is somewhere within `at` +/- this.
    pub half_gap: Duration,
}

/// The edges in a series of `(time, active)` samples.
#[must_use]
pub fn edges(samples: &[(Instant, bool)]) -> Vec<Edge> {
    samples
        .windows(2)
        .filter(|w| w[0].1 != w[1].1)
        .map(|w| {
            let half = (w[1].0 - w[0].0) / 2;
            Edge {
                at: w[0].0 + half,
                to_active: w[1].1,
                half_gap: half,
            }
        })
        .collect()
}

/// The edges a `--flap ON/OFF` fault with `ttl` has, as offsets from its start: active at 0,
/// resting at ON, active again at ON + OFF, ..., and resting at the TTL if it is active then.
#[must_use]
pub fn flap_schedule(on: Duration, off: Duration, ttl: Duration) -> Vec<(Duration, bool)> {
    let mut out = vec![(Duration::ZERO, true)];
    let period = on + off;
    let mut k = 0u32;
    loop {
        let rest = period * k + on;
        if rest >= ttl {
            out.push((ttl, false));
            break;
        }
        out.push((rest, false));
        let act = period * (k + 1);
        if act >= ttl {
            break;
        }
        out.push((act, true));
        k += 1;
    }
    out
}

/// Observed edges set against a schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeReport {
    /// Signed error of each edge (observed - scheduled) in ms, in schedule order.
    pub errors_ms: Vec<f64>,
    /// The largest absolute error.
    pub max_abs_ms: f64,
}

/// Pairs each observed edge with the scheduled one (`t0` + offset) in order: both lists must
/// have the same length and directions. Returns why not otherwise, listing both.
pub fn compare_edges(
    observed: &[Edge],
    t0: Instant,
    schedule: &[(Duration, bool)],
) -> Result<EdgeReport, String> {
    let describe = || {
        let obs: Vec<String> = observed
            .iter()
            .map(|e| {
                format!(
                    "{}{:.0}ms",
                    if e.to_active { "+" } else { "-" },
                    signed_ms(e.at, t0)
                )
            })
            .collect();
        let sch: Vec<String> = schedule
            .iter()
            .map(|(d, a)| format!("{}{}ms", if *a { "+" } else { "-" }, d.as_millis()))
            .collect();
        format!("observed edges {obs:?} (+ active, - rest, ms after t0); scheduled {sch:?}")
    };
    if observed.len() != schedule.len()
        || observed
            .iter()
            .zip(schedule)
            .any(|(o, (_, a))| o.to_active != *a)
    {
        return Err(describe());
    }
    let errors_ms: Vec<f64> = observed
        .iter()
        .zip(schedule)
        .map(|(o, (d, _))| signed_ms(o.at, t0) - d.as_secs_f64() * 1000.0)
        .collect();
    let max_abs_ms = errors_ms.iter().fold(0.0f64, |m, e| m.max(e.abs()));
    Ok(EdgeReport {
        errors_ms,
        max_abs_ms,
    })
}

/// `a - b` in ms, signed.
#[must_use]
pub fn signed_ms(a: Instant, b: Instant) -> f64 {
    if a >= b {
        (a - b).as_secs_f64() * 1000.0
    } else {
        -((b - a).as_secs_f64() * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response as dnsmasq builds it: www.example.test A 10.1.2.3, compressed owner name.
    fn answer(id: u16) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&(QR | AA | RD | RA).to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 0]);
        m.extend_from_slice(&encode_name("www.example.test"));
        m.extend_from_slice(&[0, 1, 0, 1]);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 1, 2, 3]);
        m
    }

    #[test]
    fn query_is_encoded_with_case_kept() {
        let q = build_query(0x1234, "ExAmPlE.test.", 28, false);
        assert_eq!(&q[..12], &[0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&q[12..], b"\x07ExAmPlE\x04test\x00\x00\x1c\x00\x01");
        let e = build_query(1, "a", 1, true);
        assert_eq!(e[11], 1, "ARCOUNT 1 with EDNS");
        let m = parse_message(&e).expect("our query parses");
        assert_eq!(m.additional[0].rtype, 41);
        assert_eq!(m.additional[0].class, 1232);
    }

    #[test]
    fn parses_an_answer_with_compression() {
        let m = parse_message(&answer(7)).expect("parse");
        assert_eq!(m.id, 7);
        assert_eq!(m.rcode(), NOERROR);
        assert!(m.has(QR) && m.has(AA) && m.has(RA));
        assert_eq!(m.counts, [1, 1, 0, 0]);
        assert_eq!(m.questions[0].name, "www.example.test");
        assert_eq!(m.answers[0].name, "www.example.test");
        assert_eq!(m.addrs(), vec!["10.1.2.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(m.question_end, 12 + 18 + 4);
        assert!(!m.is_bare_error(NOERROR), "has an answer");
    }

    #[test]
    fn a_bare_error_is_recognised_and_anything_else_is_not() {
        let mut m = answer(9);
        m.truncate(12 + 18 + 4);
        m[3] = (m[3] & 0xf0) | SERVFAIL;
        m[7] = 0;
        let p = parse_message(&m).expect("parse");
        assert!(p.is_bare_error(SERVFAIL));
        assert!(!p.is_bare_error(NXDOMAIN));
        // The count zeroed but the record left in place: trailing bytes.
        let mut left = answer(9);
        left[7] = 0;
        let e = parse_message(&left).unwrap_err();
        assert!(e.contains("16 bytes after the last record"), "{e}");
        // The record cut but the count kept: runs past the end.
        let mut cut = answer(9);
        cut.truncate(12 + 18 + 4);
        assert!(parse_message(&cut).unwrap_err().contains("answer record 0"));
    }

    #[test]
    fn rejects_what_a_careless_rewrite_could_leave() {
        assert!(parse_message(&[0; 11]).is_err(), "short header");
        let mut fwd = answer(1);
        fwd[34] = 0xc0;
        fwd[35] = 40;
        assert!(
            parse_message(&fwd).unwrap_err().contains("points forward"),
            "forward pointer"
        );
        let mut bad_a = answer(1);
        let n = bad_a.len();
        bad_a[n - 5] = 3; // rdlength 3 for an A record: then 1 byte is left over
        assert!(parse_message(&bad_a).is_err());
        let mut label = answer(1);
        label[12] = 0x80;
        assert!(
            parse_message(&label)
                .unwrap_err()
                .contains("reserved label type")
        );
    }

    #[test]
    fn check_reply_wants_our_id_and_question_byte_for_byte() {
        let raw = answer(5);
        assert!(matches!(
            check_reply(&raw, 5, "www.example.test", 1),
            Outcome::Reply(_)
        ));
        assert!(matches!(
            check_reply(&raw, 6, "www.example.test", 1),
            Outcome::Malformed(..)
        ));
        assert!(matches!(
            check_reply(&raw, 5, "WWW.example.test", 1),
            Outcome::Malformed(..)
        ));
        assert!(matches!(
            check_reply(&raw, 5, "www.example.test", 28),
            Outcome::Malformed(..)
        ));
    }

    #[test]
    fn qtypes_and_rcodes_by_name() {
        assert_eq!(qtype("a"), 1);
        assert_eq!(qtype("AAAA"), 28);
        assert_eq!(qtype("srv"), 33);
        assert_eq!(qtype("TYPE65280"), 65280);
        assert_eq!(rcode_name(3), "NXDOMAIN");
        assert_eq!(rcode_of("refused"), REFUSED);
    }

    const DIG_SERVFAIL: &str = "\n; <<>> DiG 9.18.49-1~deb12u3-Debian <<>> @10.90.0.2 -p 53 www.example.test A +time=2 +tries=1\n; (1 server found)\n;; global options: +cmd\n;; Got answer:\n;; ->>HEADER<<- opcode: QUERY, status: SERVFAIL, id: 4242\n;; flags: qr aa rd ra; QUERY: 1, ANSWER: 0, AUTHORITY: 0, ADDITIONAL: 0\n\n;; QUESTION SECTION:\n;www.example.test.\t\tIN\tA\n\n";

    #[test]
    fn dig_header_counts_and_answers() {
        let r = parse_dig(DIG_SERVFAIL, 0);
        assert_eq!(r.status.as_deref(), Some("SERVFAIL"));
        assert_eq!(r.flags, ["qr", "aa", "rd", "ra"]);
        assert_eq!(r.counts, Some([1, 0, 0, 0]));
        assert!(r.answers.is_empty() && r.problems.is_empty() && !r.timed_out);
        let ok = ";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1\n;; flags: qr aa rd ra; QUERY: 1, ANSWER: 2, AUTHORITY: 0, ADDITIONAL: 1\n\n;; OPT PSEUDOSECTION:\n; EDNS: version: 0, flags:; udp: 1232\n;; QUESTION SECTION:\n;www.example.test.\t\tIN\tA\n\n;; ANSWER SECTION:\nwww.example.test.\t0\tIN\tA\t10.90.0.100\nwww.example.test.\t0\tIN\tA\t10.90.0.101\n\n";
        let r = parse_dig(ok, 0);
        assert_eq!(r.counts, Some([1, 2, 0, 1]));
        assert!(
            r.problems.is_empty(),
            "NOERROR is no error: {:?}",
            r.problems
        );
        assert_eq!(r.answers.len(), 2);
        assert!(r.answers[1].ends_with("10.90.0.101"));
    }

    #[test]
    fn dig_problems_and_timeouts() {
        let bad = ";; Warning: Message parser reports malformed message packet.\n;; WARNING: recursion requested but not available\n;; Got bad packet: unexpected end of input\n";
        let r = parse_dig(bad, 0);
        assert_eq!(r.problems.len(), 3, "{:?}", r.problems);
        assert!(r.status.is_none());
        let t =
            ";; communications error to 10.90.0.2#53: timed out\n;; no servers could be reached\n";
        let r = parse_dig(t, 9);
        assert!(r.timed_out);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.exit, 9);
    }

    #[test]
    fn udp_checksums_match_known_values() {
        // 10.0.0.1:53 -> 10.0.0.2:40000, payload "hi": 0xe6f8, summed by hand (RFC 1071).
        let mut udp = vec![0, 53, 0x9c, 0x40, 0, 10, 0, 0, b'h', b'i'];
        let c = udp_checksum(
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            &udp,
        );
        assert_eq!(c, 0xe6f8);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
        // Verifying: the sum over pseudo-header and datagram, checksum included, is all ones.
        let mut pseudo = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 17, 0, 10];
        pseudo.extend_from_slice(&udp);
        assert_eq!(ones_sum(&pseudo, 0), 0xffff);
        let c6 = udp_checksum("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap(), &udp);
        assert_ne!(c6, 0);
    }

    #[test]
    fn nstat_and_getent_output() {
        let n = "#kernel\nUdpInDatagrams                  12                 0.0\nUdpInCsumErrors                 0                  0.0\nUdp6InCsumErrors                3                  0.0\n";
        let c = parse_nstat(n);
        assert_eq!(c["UdpInCsumErrors"], 0);
        assert_eq!(c["Udp6InCsumErrors"], 3);
        assert_eq!(c.len(), 3);
        let g = "10.90.0.100     STREAM www.example.test\n10.90.0.100     DGRAM  \n10.90.0.100     RAW    \nfd00:5a::64     STREAM \n";
        assert_eq!(
            parse_getent(g),
            vec![
                "10.90.0.100".parse::<IpAddr>().unwrap(),
                "fd00:5a::64".parse().unwrap()
            ]
        );
    }

    #[test]
    fn dnsmasq_query_log_is_counted_by_name() {
        let log = "dnsmasq[1]: started\ndnsmasq[1]: query[A] www.example.test from 10.90.0.1\ndnsmasq[1]: config www.example.test is 10.90.0.100\ndnsmasq[1]: query[AAAA] WWW.Example.test from 10.90.0.1\ndnsmasq[1]: query[A] a.www.example.test from 10.90.0.1\n";
        assert_eq!(count_queries(log, "www.example.test."), 2);
    }

    #[test]
    fn schedule_of_a_flap() {
        let ms = Duration::from_millis;
        // 1s/1.5s for 5.5 s: the deadline cuts the third active phase.
        assert_eq!(
            flap_schedule(ms(1000), ms(1500), ms(5500)),
            vec![
                (ms(0), true),
                (ms(1000), false),
                (ms(2500), true),
                (ms(3500), false),
                (ms(5000), true),
                (ms(5500), false)
            ]
        );
        // The deadline inside a rest: no edge at it.
        assert_eq!(
            flap_schedule(ms(1000), ms(1000), ms(3500)),
            vec![
                (ms(0), true),
                (ms(1000), false),
                (ms(2000), true),
                (ms(3000), false)
            ]
        );
    }

    #[test]
    fn edges_are_compared_with_the_schedule() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Samples every 50 ms from -100 ms: active from 0 to 1000, then resting.
        let samples: Vec<(Instant, bool)> = (0..40)
            .map(|i| {
                let at = t0 + ms(50 * i);
                (at, (2..22).contains(&i))
            })
            .collect();
        let e = edges(&samples);
        assert_eq!(e.len(), 2);
        assert!(e[0].to_active && !e[1].to_active);
        assert_eq!(e[0].half_gap, ms(25));
        // Schedule relative to t0 + 100 ms (the sample index 2).
        let start = t0 + ms(100);
        let r = compare_edges(&e, start, &[(ms(0), true), (ms(1000), false)]).expect("match");
        assert_eq!(r.errors_ms.len(), 2);
        assert!((r.errors_ms[0] + 25.0).abs() < 1e-6, "{r:?}");
        assert!((r.max_abs_ms - 25.0).abs() < 1e-6, "{r:?}");
        let err = compare_edges(&e, start, &[(ms(0), true)]).unwrap_err();
        assert!(err.contains("+-25ms") && err.contains("scheduled"), "{err}");
    }
}
