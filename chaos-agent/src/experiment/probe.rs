//! Running one check of a probe: an HTTP request, a TCP connect, a DNS query, a command, a
//! pressure file. Each is bounded by the probe's timeout and yields a [`Check`].

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::spec::{HttpProbe, ProbeSpec};

/// The most of an HTTP answer read (a health endpoint's, not a download).
const MAX_BODY: usize = 1 << 20;

/// One check's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// Whether it passed (an answer as expected, within the latency budget).
    pub ok: bool,
    /// How long it took.
    pub latency: Duration,
    /// Why it failed.
    pub error: Option<String>,
}

/// `(host, port, path)` of a plain `http://` URL.
pub fn parse_http_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs (plain HTTP/1.1)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{url:?}: bad port {p:?}"))?,
        ),
        _ => (authority, 80),
    };
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
        path.to_owned(),
    ))
}

/// Runs one check of `p`.
pub async fn check(p: &ProbeSpec) -> Check {
    let t0 = Instant::now();
    let result = match tokio::time::timeout(p.timeout, run(p)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(p.timeout)
        )),
    };
    let latency = t0.elapsed();
    match result {
        Ok(()) => match p.latency_budget {
            Some(b) if latency > b => Check {
                ok: false,
                latency,
                error: Some(format!(
                    "took {:.1} ms, over the {} budget",
                    latency.as_secs_f64() * 1e3,
                    humantime::format_duration(b)
                )),
            },
            _ => Check {
                ok: true,
                latency,
                error: None,
            },
        },
        Err(e) => Check {
            ok: false,
            latency,
            error: Some(e),
        },
    }
}

async fn run(p: &ProbeSpec) -> Result<(), String> {
    if let Some(h) = &p.http {
        return http(h).await;
    }
    if let Some(t) = &p.tcp {
        return tokio::net::TcpStream::connect(t.address)
            .await
            .map(drop)
            .map_err(|e| format!("connect {}: {e}", t.address));
    }
    if let Some(d) = &p.dns {
        return dns(&d.name, d.server).await;
    }
    if let Some(q) = &p.promql {
        return promql(q).await;
    }
    if let Some(c) = &p.command {
        let status = tokio::process::Command::new(&c.argv[0])
            .args(&c.argv[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .status()
            .await
            .map_err(|e| format!("{}: {e}", c.argv[0]))?;
        return if status.success() {
            Ok(())
        } else {
            Err(format!("{} exited with {status}", c.argv[0]))
        };
    }
    if let Some(psi) = &p.psi {
        let text = tokio::fs::read_to_string(&psi.file)
            .await
            .map_err(|e| format!("{}: {e}", psi.file.display()))?;
        let line = if psi.full { "full " } else { "some " };
        let avg10: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("avg10=")))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{}: no {line}avg10", psi.file.display()))?;
        return if avg10 < psi.below {
            Ok(())
        } else {
            Err(format!(
                "{line}avg10 {avg10:.2}% is not below {}%",
                psi.below
            ))
        };
    }
    Err("no probe kind".to_owned())
}

/// One HTTP/1.1 request (`Connection: close`): the status and the body (de-chunked).
async fn fetch(method: &str, url: &str) -> Result<(u16, String), String> {
    let (host, port, path) = parse_http_url(url)?;
    let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: chaos-agent-probe\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    (&mut s)
        .take(MAX_BODY as u64)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| format!("receive: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "no HTTP status line".to_owned())?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .replace(' ', "")
            .starts_with("transfer-encoding:chunked")
    });
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    ))
}

/// The body of a `Transfer-Encoding: chunked` message.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

async fn http(h: &HttpProbe) -> Result<(), String> {
    let (status, body) = fetch(&h.method, &h.url).await?;
    if status != h.status {
        return Err(format!("status {status}, wanted {}", h.status));
    }
    if let Some(want) = &h.body_contains
        && !body.contains(want.as_str())
    {
        return Err(format!("the body lacks {want:?}"));
    }
    Ok(())
}

/// `%XX` for every byte but the unreserved ones (RFC 3986).
fn urlencode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The value of an instant query's answer: the first series of a vector, or a scalar.
fn promql_value(body: &str) -> Result<f64, String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("not a Prometheus answer: {e}"))?;
    if v["status"] != "success" {
        return Err(format!(
            "Prometheus: {}",
            v["error"].as_str().unwrap_or("not a success")
        ));
    }
    let data = &v["data"];
    let sample = match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .and_then(|r| r.first())
            .map(|s| &s["value"])
            .ok_or_else(|| "the query returned no series".to_owned())?,
        Some("scalar") => &data["result"],
        other => {
            return Err(format!(
                "a {other:?} result: give an instant vector or a scalar"
            ));
        }
    };
    sample[1]
        .as_str()
        .and_then(|x| x.parse().ok())
        .ok_or_else(|| format!("no value in {sample}"))
}

async fn promql(q: &super::spec::PromqlProbe) -> Result<(), String> {
    let url = format!(
        "{}/api/v1/query?query={}",
        q.url.trim_end_matches('/'),
        urlencode(&q.query)
    );
    let (status, body) = fetch("GET", &url).await?;
    if status != 200 {
        return Err(format!("Prometheus answered {status}: {}", body.trim()));
    }
    let v = promql_value(&body)?;
    if let Some(min) = q.min
        && v < min
    {
        return Err(format!("{} = {v}, below {min}", q.query));
    }
    if let Some(max) = q.max
        && v > max
    {
        return Err(format!("{} = {v}, above {max}", q.query));
    }
    Ok(())
}

/// A type-A query for `name` over UDP; passes on NOERROR with at least one answer.
async fn dns(name: &str, server: std::net::SocketAddr) -> Result<(), String> {
    let id: u16 = rand_id();
    let q = query(id, name)?;
    let bind = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| e.to_string())?;
    sock.connect(server)
        .await
        .map_err(|e| format!("{server}: {e}"))?;
    sock.send(&q).await.map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 1500];
    loop {
        let n = sock
            .recv(&mut buf)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        if n < 12 || u16::from_be_bytes([buf[0], buf[1]]) != id {
            continue;
        }
        let rcode = buf[3] & 0x0f;
        let answers = u16::from_be_bytes([buf[6], buf[7]]);
        return match (rcode, answers) {
            (0, 0) => Err("NOERROR without an answer".to_owned()),
            (0, _) => Ok(()),
            (2, _) => Err("SERVFAIL".to_owned()),
            (3, _) => Err("NXDOMAIN".to_owned()),
            (r, _) => Err(format!("rcode {r}")),
        };
    }
}

fn rand_id() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (t ^ (t >> 16)) as u16
}

/// A DNS query message: header (recursion desired), one question, type A, class IN.
fn query(id: u16, name: &str) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..=63).contains(l))
            .ok_or_else(|| format!("{name:?} is not a DNS name"))?;
        q.push(len);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls() {
        assert_eq!(
            parse_http_url("http://10.0.0.2:8080/health"),
            Ok(("10.0.0.2".to_owned(), 8080, "/health".to_owned()))
        );
        assert_eq!(
            parse_http_url("http://svc.local"),
            Ok(("svc.local".to_owned(), 80, "/".to_owned()))
        );
        assert_eq!(
            parse_http_url("http://[fd00::2]:81/x?y=1"),
            Ok(("fd00::2".to_owned(), 81, "/x?y=1".to_owned()))
        );
        for bad in ["https://a/", "ftp://a", "http://:80/", "http://a:x/"] {
            assert!(parse_http_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prometheus_answers_and_http_bodies() {
        assert_eq!(
            urlencode("sum(x{a=\"b\"}) > 1"),
            "sum%28x%7Ba%3D%22b%22%7D%29%20%3E%201"
        );
        let vector = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.5,"0.25"]}]}}"#;
        assert_eq!(promql_value(vector), Ok(0.25));
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"3"]}}"#;
        assert_eq!(promql_value(scalar), Ok(3.0));
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(promql_value(empty).is_err_and(|e| e.contains("no series")));
        let bad = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert!(promql_value(bad).is_err_and(|e| e.contains("parse error")));
        assert_eq!(dechunk("4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"), "Wikipedia");
    }

    #[test]
    fn dns_queries_are_well_formed() {
        let q = query(0x1234, "example.com.").expect("query");
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(&q[12..], b"\x07example\x03com\x00\x00\x01\x00\x01");
        assert!(query(1, "a..b").is_err());
    }

    #[tokio::test]
    async fn checks_pass_fail_and_time_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
        });
        let probe = |http: Option<HttpProbe>, tcp: Option<std::net::SocketAddr>| ProbeSpec {
            name: "p".to_owned(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            latency_budget: None,
            http,
            tcp: tcp.map(|address| super::super::spec::TcpProbe { address }),
            dns: None,
            command: None,
            psi: None,
            promql: None,
        };
        let http = |body: &str, status| HttpProbe {
            url: format!("http://{addr}/health"),
            method: "GET".to_owned(),
            status,
            body_contains: Some(body.to_owned()),
        };
        assert!(check(&probe(Some(http("ok", 200)), None)).await.ok);
        let c = check(&probe(Some(http("nope", 200)), None)).await;
        assert!(!c.ok && c.error.as_deref().is_some_and(|e| e.contains("lacks")));
        let c = check(&probe(Some(http("ok", 204)), None)).await;
        assert!(!c.ok && c.error.as_deref().is_some_and(|e| e.contains("status 200")));
        assert!(check(&probe(None, Some(addr))).await.ok);
        // A port nothing listens on (just released).
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        assert!(!check(&probe(None, Some(free))).await.ok);
        let mut slow = probe(None, None);
        slow.command = Some(super::super::spec::CommandProbe {
            argv: vec!["sleep".to_owned(), "2".to_owned()],
        });
        let c = check(&slow).await;
        assert!(!c.ok && c.latency < Duration::from_secs(1), "{c:?}");
    }
}
