//! `loadgen`: a small fortio-like HTTP/1.1 load client for the sandbox (`loadgen URL -c 30 -n 300`):
//! `-c` keep-alive connections send `-n` requests in all, as fast as answers come (fortio's
//! `-qps 0`). Prints one JSON line: status counts, `x-envoy-overloaded` responses, bodies, errors.
//! Requests are GETs, or with `--body-bytes N` POSTs of an N-byte body (`Content-Length`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "HTTP/1.1 load: C connections, N requests, a JSON summary"
)]
struct Args {
    /// `http://IP:PORT/path?query`
    url: String,
    /// Concurrent connections.
    #[arg(short = 'c', default_value_t = 1)]
    c: u32,
    /// Requests in all.
    #[arg(short = 'n', default_value_t = 1)]
    n: u32,
    /// Give up on one request after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
    /// A new connection for every request (`connection: close`), like a client without pooling.
    #[arg(long)]
    new_connections: bool,
    /// Count the answers by this response header's value (`x-pod`: which pod served each).
    #[arg(long)]
    count_header: Option<String>,
    /// A request header, `name: value` (repeatable); a `user-agent` replaces loadgen's own.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// POST a body of this many bytes (`Content-Length`) with each request, not a GET.
    #[arg(long)]
    body_bytes: Option<usize>,
}

#[derive(Default, serde::Serialize)]
struct Summary {
    requests: u64,
    codes: BTreeMap<u16, u64>,
    overloaded: u64,
    errors: u64,
    bodies: BTreeMap<String, u64>,
    /// Answers by the `--count-header` value (`-` when absent), at most 64 values.
    by_header: BTreeMap<String, u64>,
    first_error: Option<String>,
    /// Answered requests' durations: the median and the slowest, in milliseconds.
    p50_ms: u64,
    max_ms: u64,
    #[serde(skip)]
    durations: Vec<u64>,
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn one(
    sender: &mut Sender,
    host: &str,
    path: &str,
    close: bool,
    count_header: Option<&str>,
    headers: &[(String, String)],
    body: Option<&Bytes>,
) -> Result<(u16, bool, bool, String, String), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let method = if body.is_some() { "POST" } else { "GET" };
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    if !headers.iter().any(|(n, _)| n == "user-agent") {
        req = req.header("user-agent", "loadgen");
    }
    for (n, v) in headers {
        req = req.header(n.as_str(), v.as_str());
    }
    if close {
        req = req.header("connection", "close");
    }
    let req = req
        .body(Full::new(body.cloned().unwrap_or_default()))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let overloaded = resp
        .headers()
        .get("x-envoy-overloaded")
        .is_some_and(|v| v == "true");
    let close = resp
        .headers()
        .get("connection")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let counted = count_header
        .and_then(|h| resp.headers().get(h))
        .map_or("-".to_string(), |v| {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        });
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let mut text = String::from_utf8_lossy(&body).trim().to_string();
    text.truncate(100);
    Ok((status, overloaded, close, text, counted))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rest = args
        .url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("only http:// URLs: {}", args.url))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    };
    let addr: SocketAddr = tokio::net::lookup_host(&host)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{host} resolves to nothing"))?;
    let left = Arc::new(AtomicI64::new(args.n.into()));
    let summary = Arc::new(Mutex::new(Summary::default()));
    let timeout = Duration::from_secs(args.timeout_s);
    let new_connections = args.new_connections;
    let count_header: Option<Arc<str>> = args.count_header.map(Arc::from);
    let headers: Arc<Vec<(String, String)>> = Arc::new(
        args.headers
            .iter()
            .map(|h| {
                let (n, v) = h
                    .split_once(':')
                    .ok_or_else(|| anyhow::anyhow!("-H {h}: expected `name: value`"))?;
                Ok((n.trim().to_ascii_lowercase(), v.trim().to_string()))
            })
            .collect::<anyhow::Result<_>>()?,
    );
    let body: Option<Bytes> = args
        .body_bytes
        .map(|n| (0..n).map(|i| b'a' + (i % 26) as u8).collect());
    let mut workers = Vec::new();
    for _ in 0..args.c.max(1) {
        let (left, summary, host, path, count_header, headers, body) = (
            left.clone(),
            summary.clone(),
            host.clone(),
            path.clone(),
            count_header.clone(),
            headers.clone(),
            body.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut sender: Option<Sender> = None;
            while left.fetch_sub(1, Ordering::SeqCst) > 0 {
                if sender.as_ref().is_none_or(|s| s.is_closed()) {
                    sender = None;
                }
                let started = std::time::Instant::now();
                let result = tokio::time::timeout(timeout, async {
                    if sender.is_none() {
                        sender = Some(connect(addr).await?);
                    }
                    one(
                        sender.as_mut().expect("connected"),
                        &host,
                        &path,
                        new_connections,
                        count_header.as_deref(),
                        &headers,
                        body.as_ref(),
                    )
                    .await
                })
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
                let mut s = summary.lock().expect("summary");
                s.requests += 1;
                match result {
                    Ok((status, overloaded, close, body, counted)) => {
                        s.durations.push(started.elapsed().as_millis() as u64);
                        if count_header.is_some()
                            && (s.by_header.len() < 64 || s.by_header.contains_key(&counted))
                        {
                            *s.by_header.entry(counted).or_default() += 1;
                        }
                        *s.codes.entry(status).or_default() += 1;
                        s.overloaded += u64::from(overloaded);
                        if s.bodies.len() < 10 || s.bodies.contains_key(&body) {
                            *s.bodies.entry(body).or_default() += 1;
                        }
                        if close || new_connections {
                            sender = None;
                        }
                    }
                    Err(e) => {
                        s.errors += 1;
                        s.first_error.get_or_insert(e);
                        sender = None;
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let mut s = summary.lock().expect("summary");
    s.durations.sort_unstable();
    s.p50_ms = s.durations.get(s.durations.len() / 2).copied().unwrap_or(0);
    s.max_ms = s.durations.last().copied().unwrap_or(0);
    println!("{}", serde_json::to_string(&*s)?);
    Ok(())
}
