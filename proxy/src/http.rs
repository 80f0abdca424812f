//! The HTTP/1.1 path: one hyper server connection per downstream connection; each request goes
//! through its cluster's pool to a pooled hyper client connection, bodies streamed both ways.

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hyper::body::Body as _;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::access_log::{AccessLog, Entry};
use crate::body::{ResponseBody, UpstreamBody};
use crate::cluster::{AcquireError, Cluster, Lease};
use crate::drain::Drain;
use crate::stats::{ClusterStats, ListenerStats};

pub const OVERFLOW_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: overflow";
pub const CONNECT_FAIL_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure";
pub const RESET_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection termination";
pub const TIMEOUT_BODY: &str = "upstream request timeout";

/// Settings shared by the connections of one listener.
pub struct HttpCtx {
    pub listener: Arc<ListenerStats>,
    pub request_timeout: Duration,
    /// A client connection waiting for a request head longer than this is closed.
    pub idle_timeout: Duration,
    /// Append the client address to `x-forwarded-for` (inbound and gateway).
    pub add_forwarded_for: bool,
    pub access_log: Option<AccessLog>,
    pub drain: Drain,
}

/// Serves one downstream connection until it closes, or until drain asks it to finish.
pub async fn serve(io: TcpStream, peer: SocketAddr, cluster: Arc<Cluster>, ctx: Arc<HttpCtx>) {
    let drain = ctx.drain.clone();
    let svc_ctx = ctx.clone();
    let svc =
        hyper::service::service_fn(move |req| handle(svc_ctx.clone(), cluster.clone(), peer, req));
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        // Bounds both slow request heads and idle keep-alive connections.
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(ctx.idle_timeout)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => { if let Err(e) = r { tracing::debug!(error = %e, "downstream connection error") } }
        _ = drain.signaled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

fn local_reply(status: StatusCode, body: &'static str, overloaded: bool) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if overloaded {
        h.insert(
            HeaderName::from_static("x-envoy-overloaded"),
            HeaderValue::from_static("true"),
        );
    }
    r
}

async fn handle(
    ctx: Arc<HttpCtx>,
    cluster: Arc<Cluster>,
    peer: SocketAddr,
    mut req: Request<hyper::body::Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let start = Instant::now();
    ctx.listener.downstream_rq_total.inc();
    ctx.listener.downstream_rq_active.inc();

    let headers = req.headers_mut();
    if !headers.contains_key("x-request-id") {
        headers.insert(HeaderName::from_static("x-request-id"), request_id());
    }
    if ctx.add_forwarded_for {
        append_forwarded_for(headers, peer);
    }
    let upgrade = is_upgrade(headers);
    if !upgrade {
        strip_hop_by_hop(headers);
    }

    let received = ctx.access_log.as_ref().map(|_| Arc::new(AtomicU64::new(0)));
    let mut tail = Tail {
        ctx: ctx.clone(),
        stats: cluster.stats.clone(),
        start,
        log: None,
        received: received.clone(),
        lease: None,
        code: 0,
        sent: 0,
        upstream_ms: None,
        done: false,
    };
    if ctx.access_log.is_some() {
        tail.log = Some(Box::new(Entry {
            start: Some(SystemTime::now()),
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().to_string(), |p| p.to_string()),
            protocol: version_str(req.version()),
            xff: req.headers().get("x-forwarded-for").cloned(),
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
            request_id: req.headers().get("x-request-id").cloned(),
            authority: req.headers().get(header::HOST).cloned(),
            upstream_host: Some(cluster.addr),
            ..Entry::default()
        }));
    }

    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let up_req = Request::from_parts(
        parts,
        UpstreamBody::new(body, cluster.stats.clone(), received),
    );

    let exchange = async {
        let mut up_req = up_req;
        let mut attempts = 0;
        loop {
            let mut lease = cluster.acquire().await?;
            match lease.sender().try_send_request(up_req).await {
                Ok(r) => {
                    cluster.stats.upstream_rq_total.inc();
                    return Ok::<_, AcquireError>((lease, Ok(r)));
                }
                Err(mut e) => match e.take_message() {
                    // Not written at all (the pooled connection closed under us): safe to
                    // send again on another connection, whatever the method.
                    Some(r) if attempts < 2 => {
                        attempts += 1;
                        cluster.stats.upstream_rq_retry.inc();
                        up_req = r;
                    }
                    _ => {
                        cluster.stats.upstream_rq_total.inc();
                        return Ok((lease, Err(e.into_error())));
                    }
                },
            }
        }
    };
    let st = &cluster.stats;
    let (lease, resp) = match tokio::time::timeout(ctx.request_timeout, exchange).await {
        Err(_) => {
            st.upstream_rq_timeout.inc();
            st.count_code(504);
            return Ok(tail.local(
                local_reply(StatusCode::GATEWAY_TIMEOUT, TIMEOUT_BODY, false),
                "UT",
            ));
        }
        Ok(Err(AcquireError::Overflow)) => {
            return Ok(tail.local(
                local_reply(StatusCode::SERVICE_UNAVAILABLE, OVERFLOW_BODY, true),
                "UO",
            ));
        }
        Ok(Err(AcquireError::ConnectFailed)) => {
            st.count_code(503);
            return Ok(tail.local(
                local_reply(StatusCode::SERVICE_UNAVAILABLE, CONNECT_FAIL_BODY, false),
                "UF",
            ));
        }
        Ok(Ok((_lease, Err(e)))) => {
            tracing::debug!(cluster = %cluster.name, error = %e, "upstream reset before headers");
            st.upstream_rq_rx_reset.inc();
            st.count_code(503);
            return Ok(tail.local(
                local_reply(StatusCode::SERVICE_UNAVAILABLE, RESET_BODY, false),
                "UC",
            ));
        }
        Ok(Ok((lease, Ok(resp)))) => (lease, resp),
    };
    let mut resp = resp;
    let status = resp.status();
    st.count_code(status.as_u16());
    tail.code = status.as_u16();
    tail.upstream_ms = Some(start.elapsed().as_millis() as u64);

    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(down) = downstream_upgrade {
            let up = hyper::upgrade::on(&mut resp);
            let (parts, _) = resp.into_parts();
            tokio::spawn(async move {
                let _lease = lease; // the tunnel holds its connection until it ends
                if let (Ok(d), Ok(u)) = (down.await, up.await) {
                    let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                    if let Ok((a, b)) = tokio::io::copy_bidirectional(&mut d, &mut u).await {
                        tail.received_add(a);
                        tail.sent(b);
                    }
                }
                tail.complete();
            });
            return Ok(Response::from_parts(parts, ResponseBody::empty()));
        }
    }

    strip_hop_by_hop(resp.headers_mut());
    tail.lease = Some(lease);
    let (mut parts, body) = resp.into_parts();
    // Like Envoy: the client hears HTTP/1.1 whatever the upstream spoke.
    parts.version = Version::HTTP_11;
    Ok(Response::from_parts(
        parts,
        ResponseBody::Upstream {
            inner: body,
            tail: Some(tail),
        },
    ))
}

/// The end of one request: releases its connection, counts, logs. Dropped before `complete`
/// means the client went away (`DC`).
pub struct Tail {
    ctx: Arc<HttpCtx>,
    stats: Arc<ClusterStats>,
    start: Instant,
    log: Option<Box<Entry>>,
    received: Option<Arc<AtomicU64>>,
    lease: Option<Lease>,
    code: u16,
    sent: u64,
    upstream_ms: Option<u64>,
    done: bool,
}

impl Tail {
    pub fn sent(&mut self, n: u64) {
        self.sent += n;
        self.stats.upstream_cx_rx_bytes_total.add(n);
    }

    fn received_add(&mut self, n: u64) {
        if let Some(r) = &self.received {
            r.fetch_add(n, Relaxed);
        }
    }

    fn local(mut self, r: Response<ResponseBody>, flags: &'static str) -> Response<ResponseBody> {
        self.code = r.status().as_u16();
        self.sent = r.body().size_hint().exact().unwrap_or(0);
        self.finish(flags);
        r
    }

    /// The response was delivered in full: the connection may be reused.
    pub fn complete(mut self) {
        if let Some(l) = self.lease.as_mut() {
            l.done();
        }
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        self.stats.upstream_rq_time.record_ms(ms);
        self.finish("-");
    }

    /// The upstream reset mid-response.
    pub fn upstream_reset(mut self) {
        self.stats.upstream_rq_rx_reset.inc();
        self.finish("UR");
    }

    /// The client went away mid-response.
    pub fn downstream_gone(mut self) {
        self.stats.upstream_rq_tx_reset.inc();
        self.finish("DC");
    }

    fn finish(&mut self, flags: &'static str) {
        if self.done {
            return;
        }
        self.done = true;
        self.lease = None;
        self.ctx.listener.downstream_rq_active.dec();
        if let (Some(log), Some(mut e)) = (&self.ctx.access_log, self.log.take()) {
            e.code = self.code;
            e.flags = flags;
            e.bytes_sent = self.sent;
            e.bytes_received = self.received.as_ref().map_or(0, |r| r.load(Relaxed));
            e.duration_ms = self.start.elapsed().as_millis() as u64;
            e.upstream_time_ms = self.upstream_ms;
            log.log(*e);
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        if !self.done {
            self.finish("DC");
        }
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/?",
    }
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Removes connection-scoped headers (RFC 9110 §7.6.1): each side manages its own connection.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    if let Some(c) = h.get(header::CONNECTION) {
        let named: Vec<HeaderName> = c
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for n in named {
            if n != header::TRANSFER_ENCODING && n != header::CONTENT_LENGTH {
                h.remove(n);
            }
        }
    }
    for n in [
        header::CONNECTION,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
    ] {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

fn append_forwarded_for(h: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip().to_canonical().to_string();
    let v = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&v) {
        h.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x5eed);
        h.finish() | 1
    });
}

fn next_u64() -> u64 {
    RNG.with(|r| {
        // xorshift64*: fast, good enough for request ids (not for secrets).
        let mut x = r.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// A random UUID (version 4 layout) for `x-request-id`.
pub fn request_id() -> HeaderValue {
    let (a, b) = (next_u64(), next_u64());
    let a = (a & !0xf000) | 0x4000;
    let b = (b & !(0xc << 60)) | (0x8 << 60);
    let s = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    );
    HeaderValue::from_str(&s).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_shaped_and_distinct() {
        let a = request_id();
        let b = request_id();
        assert_ne!(a, b);
        let s = a.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-foo"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-bar", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-bar"));
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "10.0.0.1:5".parse().unwrap());
        append_forwarded_for(&mut h, "[::ffff:10.0.0.2]:5".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2");
    }

    #[test]
    fn upgrade_detection() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!is_upgrade(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(is_upgrade(&h));
    }
}
