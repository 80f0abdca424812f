//! The HTTP/2 path (cleartext, prior knowledge, as gRPC speaks it): each downstream stream is
//! forwarded on its own over pooled upstream HTTP/2 connections, so the pool limits mean for
//! HTTP/2 what they mean for HTTP/1 (Envoy's, App Mesh's `http2`/`grpc` pools, Istio's
//! `http2MaxRequests`):
//! - `max-requests` bounds the streams in flight to a cluster; more wait, FIFO, while fewer than
//!   `max-pending-requests` wait; past that a stream is refused at once: 503 with
//!   `x-envoy-overloaded: true` (`UO`), or for gRPC a trailers-only answer with
//!   `grpc-status: 14` (UNAVAILABLE), as Envoy answers;
//! - `max-connections` bounds the upstream HTTP/2 connections. A stream goes on an open
//!   connection to its host that has room under the peer's `SETTINGS_MAX_CONCURRENT_STREAMS`;
//!   when all are saturated another is opened while under `max-connections` (as Envoy's pool
//!   does); past it, streams share the least busy open one (and beyond the peer's limit wait
//!   inside it).
//!
//! Frames are hyper's (the `h2` crate underneath): bodies stream with flow control end to end (a
//! slow reader on one stream holds back only that stream's window), trailers pass through, and
//! nothing is buffered whole. Routes and per-stream balancing use the same [`Upstream`] as
//! HTTP/1: the seam for GRPCRoute is [`cluster_for`], which picks a stream's cluster.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http2::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::access_log::{AccessLog, Entry};
use crate::cluster::Cluster;
use crate::host::{Active, Host};
use crate::http::flags::{
    CONNECT_FAIL_BODY, NO_BACKEND_BODY, NO_HEALTHY_UPSTREAM_BODY, OVERFLOW_BODY, TIMEOUT_BODY,
};
use crate::http::HttpCtx;
use crate::idle::{Activity, Tracked};
use crate::outlier::Outcome;
use crate::router::{Upstream, View};
use replay::Replay;

mod replay;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// What a stream's answer carries: the upstream's body, or one the proxy made.
type ReplyBody = Either<Relayed, Full<Bytes>>;

/// A cluster's HTTP/2 state: streams in flight, streams waiting, open connections.
#[derive(Default)]
pub struct Streams {
    inner: Mutex<StreamsInner>,
    /// Held while a connection is opened, so that streams arriving together share it rather
    /// than each opening one.
    connecting: tokio::sync::Mutex<()>,
    /// `active` and the waiters' count, copied out for the gauges: read with the cluster's pool
    /// lock held on the HTTP/1 path, which must not take this state's lock for it.
    seen: (AtomicU32, AtomicU32),
    /// Upstream HTTP/2 connections open (from handshake to close), for `upstream_cx_active`.
    conns_open: AtomicU32,
}

#[derive(Default)]
struct StreamsInner {
    active: u32,
    waiting: VecDeque<oneshot::Sender<()>>,
    conns: Vec<Upconn>,
}

/// A pooled upstream HTTP/2 connection.
struct Upconn {
    host: SocketAddr,
    send: SendRequest<Replay>,
    /// Streams it has been given.
    streams: u32,
    /// Streams open on it now (what its idle timer checks).
    open: Arc<AtomicU32>,
    /// The peer's `SETTINGS_MAX_CONCURRENT_STREAMS`, as its connection task last saw it.
    max: Arc<AtomicU32>,
}

impl Upconn {
    /// Whether the peer allows it another stream now.
    fn has_room(&self) -> bool {
        self.open.load(Relaxed) < self.max.load(Relaxed)
    }
}

/// A stream open on a connection (downstream or upstream), counted in the connection's open
/// streams until dropped: when the answer's body ends, or the stream is reset or fails. A
/// connection with a stream open is not idle, however long no byte moves (the stream is bounded
/// by the request timeout instead), as Envoy counts its idle timeout only without streams.
struct Open(Arc<AtomicU32>);

impl Open {
    fn new(n: &Arc<AtomicU32>) -> Open {
        n.fetch_add(1, Relaxed);
        Open(n.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// A stream's admission.
enum Admit {
    Go,
    Wait(oneshot::Receiver<()>),
    Overflow,
}

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, StreamsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admit(&self, max_requests: Option<u32>, max_pending: Option<u32>) -> Admit {
        let mut s = self.lock();
        let admit = if max_requests.is_none_or(|m| s.active < m) {
            s.active += 1;
            Admit::Go
        } else {
            s.waiting.retain(|w| !w.is_closed());
            if max_pending.is_none_or(|m| (s.waiting.len() as u64) < u64::from(m)) {
                let (tx, rx) = oneshot::channel();
                s.waiting.push_back(tx);
                Admit::Wait(rx)
            } else {
                Admit::Overflow
            }
        };
        self.copy_out(&s);
        admit
    }

    /// A stream ended: its slot goes to the first waiter still there, else it is freed.
    fn release(&self) {
        let mut s = self.lock();
        let mut handed = false;
        while let Some(w) = s.waiting.pop_front() {
            if w.send(()).is_ok() {
                handed = true;
                break;
            }
        }
        if !handed {
            s.active = s.active.saturating_sub(1);
        }
        self.copy_out(&s);
    }

    fn copy_out(&self, s: &StreamsInner) {
        self.seen.0.store(s.active, Relaxed);
        self.seen.1.store(s.waiting.len() as u32, Relaxed);
    }

    /// Streams in flight and waiting (two loads, no lock: for the gauges).
    pub fn state(&self) -> (u32, u32) {
        (self.seen.0.load(Relaxed), self.seen.1.load(Relaxed))
    }

    /// Takes the connection whose open streams `open` counts out of the pool: its peer is
    /// going away. Its streams finish on it.
    fn forget(&self, open: &Arc<AtomicU32>) {
        self.lock().conns.retain(|c| !Arc::ptr_eq(&c.open, open));
    }

    /// Upstream HTTP/2 connections open (a load, no lock: for the gauges).
    pub fn connections(&self) -> u32 {
        self.conns_open.load(Relaxed)
    }
}

/// A stream's slot in its cluster, given back when dropped (when the answer's body ends, or the
/// stream is reset); and, once a host is picked, its count of requests in flight there (what
/// least-request balancing compares); and once a connection is picked, the stream's place among
/// its open streams.
struct Slot(Arc<Cluster>, Option<Active>, Option<Open>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.h2.release();
        self.0.sync_gauges();
    }
}

/// The upstream's answer body, holding the stream's slot until it ends (and its log line).
pub struct Relayed {
    body: Incoming,
    sent: u64,
    log: Option<Logged>,
    _slot: Slot,
    /// The stream's place among its downstream connection's open streams.
    _open: Downstream,
}

/// A downstream stream open: in its connection's open streams, and in the listener's
/// `downstream_rq_active`, until its answer's body ends or it is reset.
struct Downstream(#[allow(dead_code)] Open, Arc<HttpCtx>);

impl Downstream {
    fn new(open: &Arc<AtomicU32>, ctx: &Arc<HttpCtx>) -> Downstream {
        ctx.listener.http.downstream_rq_active.inc();
        Downstream(Open::new(open), ctx.clone())
    }
}

impl Drop for Downstream {
    fn drop(&mut self) {
        self.1.listener.http.downstream_rq_active.dec();
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
        if let Some(l) = self.log.take() {
            l.done(self.sent);
        }
    }
}

impl Body for Relayed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.sent += d.len() as u64;
                }
            }
            // Cut off mid-answer: the upstream reset the stream (`UR`), or its connection
            // ended (`UC`), as the HTTP/1 path flags an answer cut short.
            Poll::Ready(Some(Err(e))) => {
                this._slot.0.stats.upstream_rq_rx_reset.inc();
                if let Some(l) = &mut this.log {
                    l.entry.flags = reset_flag(e).into();
                }
            }
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Envoy's flag for an upstream answer cut off by `e`: `UR` when the upstream sent RST_STREAM,
/// `UC` when its connection went away (GOAWAY, a connection error, the socket closed).
fn reset_flag(e: &hyper::Error) -> &'static str {
    match h2_error(e) {
        Some(h) if h.is_reset() && h.is_remote() => "UR",
        _ => "UC",
    }
}

/// Serves one downstream HTTP/2 connection until it closes.
pub async fn serve(io: TcpStream, peer: SocketAddr, up: Upstream, ctx: Arc<HttpCtx>) {
    let (idle, drain) = (ctx.idle_timeout, ctx.drain.clone());
    let open = Arc::new(AtomicU32::new(0));
    let streams = open.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let up = up.clone();
        let ctx = ctx.clone();
        let opened = Downstream::new(&streams, &ctx);
        // Boxed: hyper moves each stream's future into a task of its own, and this one is large
        // (callgrind: 70.7k -> 65.6k instructions per stream).
        Box::pin(async move {
            Ok::<_, std::convert::Infallible>(stream(req, peer, &up, &ctx, opened).await)
        })
    });
    let activity = Activity::since(std::time::Instant::now());
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        // A CONTINUATION flood or a header list past this costs the sender its connection.
        .max_header_list_size(64 * 1024)
        .max_concurrent_streams(MAX_DOWNSTREAM_STREAMS)
        .serve_connection(TokioIo::new(Tracked::new(io, &activity)), service);
    let mut conn = std::pin::pin!(conn);
    // No stream open and no byte either way for the idle timeout, or a drain: GOAWAY, then the
    // open streams get one more idle timeout to finish.
    let ended = tokio::select! {
        r = conn.as_mut() => Some(r),
        () = activity.expired_unless(idle, || open.load(Relaxed) > 0) => None,
        () = drain.signaled() => None,
    };
    let ended = match ended {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(idle, conn).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "HTTP/2 connection ended");
    }
}

/// Streams one client connection may have open at once (each is a task's worth of state).
const MAX_DOWNSTREAM_STREAMS: u32 = 1024;

/// The cluster a stream goes to: the destination's own, or the one its routes pick (HTTPRoute
/// matches on the stream's method, path, query and headers, then the rule's weights). This is
/// the seam for GRPCRoute. The rules' filters, timeouts and retries are HTTP/1's only so far.
fn cluster_for(up: &Upstream, req: &Request<Incoming>) -> Result<Arc<Cluster>, Local> {
    match up {
        Upstream::Cluster(c) => Ok(c.clone()),
        Upstream::Routed { default, routes } => match routes.get() {
            None => default.clone().ok_or(Local::NoRoute),
            Some(table) => {
                let head = head_of(req);
                let picked = table.pick(&View::of(&head)).ok_or(Local::NoRoute)?;
                picked.rule.backend().cloned().ok_or(Local::NoBackend)
            }
        },
    }
}

/// A stream's head as [`crate::h1`] would write it (`host` from `:authority`), for the router:
/// bounded by the connection's header list limit.
fn head_of(req: &Request<Incoming>) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(req.method().as_str().as_bytes());
    head.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(a) = req.uri().authority() {
        head.extend_from_slice(b"host: ");
        head.extend_from_slice(a.as_str().as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    for (name, value) in req.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Forwards one stream and returns its answer (logged when its body ends).
async fn stream(
    req: Request<Incoming>,
    peer: SocketAddr,
    up: &Upstream,
    ctx: &HttpCtx,
    opened: Downstream,
) -> Response<ReplyBody> {
    let grpc = is_grpc(&req);
    ctx.listener.http.downstream_rq_total.inc();
    let mut log = ctx
        .access_log
        .as_ref()
        .map(|l| Logged::new(l.clone(), &req));
    match forward(req, peer, up, ctx).await {
        Ok((resp, slot, host)) => {
            let (parts, body) = resp.into_parts();
            if let Some(l) = &mut log {
                l.entry.code = parts.status.as_u16();
                l.entry.upstream_host = Some(host);
            }
            let body = Relayed {
                body,
                sent: 0,
                log,
                _slot: slot,
                _open: opened,
            };
            Response::from_parts(parts, Either::Left(body))
        }
        Err(what) => {
            let (status, grpc_status, text, flag) = what.answer();
            let resp = local(grpc, status, grpc_status, text, what == Local::Overflow);
            if let Some(mut l) = log {
                l.entry.code = resp.status().as_u16();
                l.entry.flags = flag.into();
                l.done(if grpc { 0 } else { text.len() as u64 });
            }
            resp
        }
    }
}

/// The answers the proxy makes itself on the HTTP/2 path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Local {
    NoRoute,
    /// The matched rule's backend for this stream cannot be used (500).
    NoBackend,
    Overflow,
    NoHealthyUpstream,
    ConnectFailed,
    /// Upstream reset the stream, or its connection went away, before a response head.
    Reset,
    Timeout,
}

impl Local {
    /// HTTP status, gRPC status, text, and Envoy's response flag.
    fn answer(self) -> (StatusCode, u16, &'static str, &'static str) {
        const RESET: &str = "upstream connect error or disconnect/reset before headers. \
                             reset reason: remote reset";
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        match self {
            Local::NoRoute => (StatusCode::NOT_FOUND, 12, "no route", "NR"),
            Local::NoBackend => (StatusCode::INTERNAL_SERVER_ERROR, 2, NO_BACKEND_BODY, "-"),
            Local::Overflow => (unavailable, 14, OVERFLOW_BODY, "UO"),
            Local::NoHealthyUpstream => (unavailable, 14, NO_HEALTHY_UPSTREAM_BODY, "UH"),
            Local::ConnectFailed => (unavailable, 14, CONNECT_FAIL_BODY, "UF"),
            Local::Reset => (unavailable, 14, RESET, "UR"),
            Local::Timeout => (StatusCode::GATEWAY_TIMEOUT, 4, TIMEOUT_BODY, "UT"),
        }
    }
}

/// Admits the stream to its cluster, picks a host and a connection, and sends it: the
/// upstream's response head, with the stream's slot and the host.
async fn forward(
    req: Request<Incoming>,
    peer: SocketAddr,
    up: &Upstream,
    ctx: &HttpCtx,
) -> Result<(Response<Incoming>, Slot, SocketAddr), Local> {
    let cluster = cluster_for(up, &req).inspect_err(|e| {
        if *e == Local::NoRoute {
            ctx.listener.http.no_route.inc();
        }
    })?;
    let st = &cluster.stats;
    let limits = cluster.limits();
    let admitted = match cluster
        .h2
        .admit(limits.max_requests, limits.max_pending_requests)
    {
        Admit::Go => {
            cluster.sync_gauges();
            true
        }
        Admit::Wait(rx) => {
            st.upstream_rq_pending_total.inc();
            cluster.sync_gauges();
            matches!(
                tokio::time::timeout(ctx.request_timeout, rx).await,
                Ok(Ok(()))
            )
        }
        Admit::Overflow => false,
    };
    if !admitted {
        st.upstream_rq_pending_overflow.inc();
        return Err(Local::Overflow);
    }
    let mut slot = Slot(cluster.clone(), None, None);
    let lb = cluster.lb();
    let Some(host) = lb.pick_host(None) else {
        st.upstream_cx_none_healthy.inc();
        return Err(Local::NoHealthyUpstream);
    };
    slot.1 = Some(Active::new(host.clone()));
    let (mut send, open) = upstream_connection(&cluster, &host, &limits, &lb).await?;
    slot.2 = Some(open);
    let deadline = tokio::time::Instant::now() + ctx.request_timeout;
    let (head, body) = upstream_request(req, peer, ctx).into_parts();
    let (mut body, mut rescue) = Replay::new(body);
    let mut resends = 0;
    // A stream the upstream refused unprocessed (GOAWAY below it, REFUSED_STREAM), or one that
    // never left because its connection was closing, goes again on another connection.
    let sent = loop {
        st.upstream_rq_total.inc();
        let req = Request::from_parts(head.clone(), body);
        let tried = tokio::time::timeout_at(deadline, async {
            if let Err(e) = send.ready().await {
                return Err((e, Some(req)));
            }
            send.try_send_request(req).await.map_err(|mut e| {
                let unsent = e.take_message();
                (e.into_error(), unsent)
            })
        })
        .await;
        let (e, unsent) = match tried {
            Ok(Ok(resp)) => break Ok(Ok(resp)),
            Err(elapsed) => break Err(elapsed),
            Ok(Err(failed)) => failed,
        };
        if resends == MAX_RESENDS || (unsent.is_none() && !refused(&e)) {
            break Ok(Err(e));
        }
        let again = match unsent {
            Some(req) => Some(req.into_body()),
            None => match tokio::time::timeout_at(deadline, &mut rescue).await {
                Ok(Ok(r)) => r.replay(),
                _ => None,
            },
        };
        let Some(again) = again else {
            break Ok(Err(e));
        };
        tracing::debug!(cluster = %cluster.name, error = %e, "stream refused unprocessed: sent again");
        if let Some(open) = slot.2.take() {
            cluster.h2.forget(&open.0);
        }
        body = again;
        if body.is_disarmed() {
            rescue = body.rearm();
        }
        resends += 1;
        st.upstream_rq_retry.inc();
        let (s, open) = upstream_connection(&cluster, &host, &limits, &lb).await?;
        (send, slot.2) = (s, Some(open));
    };
    // Outlier detection and the host's counters see each stream's outcome, as for HTTP/1.
    match sent {
        Ok(Ok(resp)) => {
            let code = resp.status().as_u16();
            st.count_code(code);
            cluster.report(&lb, &host, Outcome::Status(code));
            Ok((resp, slot, host.addr))
        }
        Ok(Err(e)) => {
            tracing::debug!(cluster = %cluster.name, error = %e, "upstream stream reset");
            st.upstream_rq_rx_reset.inc();
            cluster.report(&lb, &host, Outcome::ConnectFailed);
            Err(Local::Reset)
        }
        Err(_) => {
            st.upstream_rq_timeout.inc();
            host.rq_timeout.fetch_add(1, Relaxed);
            cluster.report(&lb, &host, Outcome::Status(504));
            Err(Local::Timeout)
        }
    }
}

/// Times a stream refused unprocessed is sent again (Istio's default retry policy makes 2
/// attempts on `refused-stream`).
const MAX_RESENDS: u32 = 2;

/// Whether the upstream refused a stream without processing it, so that it can go again
/// (RFC 9113 §8.7): the stream was above a graceful GOAWAY's last stream id (or sent after
/// it), or was reset with REFUSED_STREAM.
fn refused(e: &hyper::Error) -> bool {
    h2_error(e).is_some_and(|h| {
        let reason = h.reason();
        h.is_remote()
            && ((h.is_go_away() && reason == Some(h2::Reason::NO_ERROR))
                || (h.is_reset() && reason == Some(h2::Reason::REFUSED_STREAM)))
    })
}

/// The `h2` error under a hyper error, if any.
fn h2_error(e: &hyper::Error) -> Option<&h2::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<h2::Error>() {
            return Some(h);
        }
        source = s.source();
    }
    None
}

/// A connection to `host` for a stream (see [`connection`]); a failure is counted and told to
/// outlier detection, and answers `UF`.
async fn upstream_connection(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    limits: &config::Limits,
    lb: &Arc<crate::cluster::Lb>,
) -> Result<(SendRequest<Replay>, Open), Local> {
    connection(cluster, host, limits).await.map_err(|e| {
        tracing::debug!(cluster = %cluster.name, host = %host.addr, error = %e, "HTTP/2 connect failed");
        cluster.stats.upstream_cx_connect_fail.inc();
        host.cx_connect_fail.fetch_add(1, Relaxed);
        cluster.report(lb, host, Outcome::ConnectFailed);
        Local::ConnectFailed
    })
}

/// A stream's access log line, written when the stream ends.
struct Logged {
    log: AccessLog,
    entry: Entry,
    start: Instant,
}

impl Logged {
    fn new(log: AccessLog, req: &Request<Incoming>) -> Logged {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        Logged {
            log,
            entry: Entry {
                start: Some(SystemTime::now()),
                method: req.method().as_str().to_string(),
                path: req
                    .uri()
                    .path_and_query()
                    .map_or_else(|| "/".into(), |p| p.as_str().to_string()),
                protocol: "HTTP/2",
                flags: "-".into(),
                xff: header("x-forwarded-for"),
                user_agent: header("user-agent"),
                request_id: header("x-request-id"),
                authority: req
                    .uri()
                    .authority()
                    .map(|a| a.as_str().to_string())
                    .or_else(|| header("host")),
                ..Entry::default()
            },
            start: Instant::now(),
        }
    }

    fn done(mut self, bytes_sent: u64) {
        self.entry.bytes_sent = bytes_sent;
        self.entry.duration_ms = self.start.elapsed().as_millis() as u64;
        self.log.log(self.entry);
    }
}

/// An open HTTP/2 connection to `host`: the one the cluster has, or a new one while under
/// `max_connections` (past it, any open one of the cluster's). A connection that has been given
/// `max-requests-per-connection` streams leaves the pool: it finishes those and closes.
async fn connection(
    cluster: &Arc<Cluster>,
    host: &Host,
    limits: &config::Limits,
) -> std::io::Result<(SendRequest<Replay>, Open)> {
    let addr = host.addr;
    // Takes a stream on connection `i`, retiring it at its last.
    let take = |s: &mut StreamsInner, i: usize| {
        let c = &mut s.conns[i];
        c.streams += 1;
        let send = (c.send.clone(), Open::new(&c.open));
        if limits
            .max_requests_per_connection
            .is_some_and(|m| c.streams >= m)
        {
            s.conns.swap_remove(i);
        }
        send
    };
    // An open one to this host with room for a stream under the peer's limit, or past
    // `max_connections` the least busy open one (this host's first).
    let existing = || {
        let mut s = cluster.h2.lock();
        s.conns.retain(|c| !c.send.is_closed());
        if let Some(i) = s.conns.iter().position(|c| c.host == addr && c.has_room()) {
            return Some(take(&mut s, i));
        }
        let full = limits
            .max_connections
            .is_some_and(|m| s.conns.len() as u64 >= u64::from(m));
        if full && !s.conns.is_empty() {
            cluster.stats.upstream_cx_overflow.inc();
            let i = (0..s.conns.len())
                .min_by_key(|&i| {
                    let c = &s.conns[i];
                    (c.host != addr, c.open.load(Relaxed))
                })
                .unwrap_or(0);
            return Some(take(&mut s, i));
        }
        None
    };
    if let Some(c) = existing() {
        return Ok(c);
    }
    let _opening = cluster.h2.connecting.lock().await;
    if let Some(c) = existing() {
        return Ok(c);
    }
    let open_streams = Arc::new(AtomicU32::new(0));
    let max = Arc::new(AtomicU32::new(0));
    let send = open(cluster, addr, open_streams.clone(), max.clone()).await?;
    host.cx_total.fetch_add(1, Relaxed);
    let mut s = cluster.h2.lock();
    s.conns.push(Upconn {
        host: addr,
        send,
        streams: 0,
        open: open_streams,
        max,
    });
    let last = s.conns.len() - 1;
    Ok(take(&mut s, last))
}

/// An upstream connection's stream limit until the peer's SETTINGS come (no peer can send it:
/// the setting is 32 bits).
const BEFORE_SETTINGS: usize = usize::MAX - 1;

/// Opens an upstream HTTP/2 connection (connect and handshake within the cluster's connect
/// timeout). Its task closes it when no stream has been open on it (`streams`) and no byte has
/// moved for the cluster's idle timeout, as an idle pooled HTTP/1 connection is closed
/// (`upstream_cx_idle_timeout`). The connection is handed out once the peer's SETTINGS have
/// come (within the connect timeout), and its task keeps `max` at the peer's
/// `SETTINGS_MAX_CONCURRENT_STREAMS` (unlimited when not sent).
async fn open(
    cluster: &Arc<Cluster>,
    host: SocketAddr,
    streams: Arc<AtomicU32>,
    max: Arc<AtomicU32>,
) -> std::io::Result<SendRequest<Replay>> {
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout");
    let (connect, idle) = (cluster.connect_timeout(), cluster.idle_timeout());
    let tcp = tokio::time::timeout(connect, TcpStream::connect(host))
        .await
        .map_err(|_| timed_out())??;
    let _ = tcp.set_nodelay(true);
    let (tx, rx) = oneshot::channel();
    let st = cluster.stats.clone();
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        let activity = Arc::new(Activity::since(Instant::now()));
        let started = Instant::now();
        // The stream limit before the peer's first SETTINGS: a value no peer sends, so that
        // the SETTINGS are seen to have come when it changes (h2 then takes their
        // SETTINGS_MAX_CONCURRENT_STREAMS, or unlimited when absent).
        let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_max_send_streams(BEFORE_SETTINGS)
            .handshake(TokioIo::new(Tracked::new(tcp, activity.clone())));
        let (send, conn) = match tokio::time::timeout(connect, handshake).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let _ = tx.send(Err(std::io::Error::other(e)));
                return;
            }
            Err(_) => {
                let _ = tx.send(Err(timed_out()));
                return;
            }
        };
        let mut conn = std::pin::pin!(conn);
        // Drives the connection, copying the peer's stream limit out after each turn (a load
        // and a store).
        let settled = std::sync::atomic::AtomicBool::new(false);
        let mut run = std::future::poll_fn(|cx| {
            let r = conn.as_mut().poll(cx);
            let peer_max = conn.current_max_send_streams();
            if peer_max != BEFORE_SETTINGS {
                max.store(u32::try_from(peer_max).unwrap_or(u32::MAX), Relaxed);
                settled.store(true, Relaxed);
            }
            r
        });
        // The SETTINGS are applied on hyper's own connection task: looked for each millisecond
        // (on loopback they come well within the first).
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(1));
        let settings = std::future::poll_fn(|cx| loop {
            if let Poll::Ready(r) = Pin::new(&mut run).poll(cx) {
                return Poll::Ready(Some(r));
            }
            if settled.load(Relaxed) {
                return Poll::Ready(None);
            }
            std::task::ready!(tick.poll_tick(cx));
        });
        let deadline = connect.saturating_sub(started.elapsed());
        match tokio::time::timeout(deadline, settings).await {
            Ok(None) => {}
            Ok(Some(r)) => {
                let e = match r {
                    Err(e) => std::io::Error::other(e),
                    Ok(()) => std::io::Error::other("closed before its SETTINGS"),
                };
                let _ = tx.send(Err(e));
                return;
            }
            Err(_) => {
                let _ = tx.send(Err(timed_out()));
                return;
            }
        }
        st.upstream_cx_total.inc();
        st.upstream_cx_http2_total.inc();
        // Counted open (`upstream_cx_active`) from here until the task ends.
        let counted = weak.upgrade().map(|c| {
            c.h2.conns_open.fetch_add(1, Relaxed);
            c.sync_gauges();
        });
        let _ = tx.send(Ok(send));
        tokio::select! {
            r = run => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            }
            () = activity.expired_unless(idle, || streams.load(Relaxed) > 0) => {
                st.upstream_cx_idle_timeout.inc();
            }
        }
        st.upstream_cx_destroy.inc();
        if let (Some(()), Some(c)) = (counted, weak.upgrade()) {
            c.h2.conns_open.fetch_sub(1, Relaxed);
            c.sync_gauges();
        }
    });
    rx.await
        .map_err(|_| std::io::Error::other("the connection's task ended"))?
}

/// The request as it goes upstream: hop-by-hop headers dropped (RFC 9113 §8.2.2), the client
/// appended to `x-forwarded-for` where the listener says so.
fn upstream_request(req: Request<Incoming>, peer: SocketAddr, ctx: &HttpCtx) -> Request<Incoming> {
    let (mut parts, body) = req.into_parts();
    for h in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        parts.headers.remove(h);
    }
    if ctx.add_forwarded_for {
        let ip = peer.ip().to_canonical().to_string();
        let value = match parts.headers.get("x-forwarded-for").map(|v| v.to_str()) {
            Some(Ok(v)) => format!("{v}, {ip}"),
            _ => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            parts.headers.insert("x-forwarded-for", v);
        }
    }
    Request::from_parts(parts, body)
}

fn is_grpc(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// An answer the proxy makes: for gRPC a trailers-only response (`grpc-status` in the headers,
/// HTTP 200, no body), as Envoy sends; else `status` with `text`.
fn local(
    grpc: bool,
    status: StatusCode,
    grpc_status: u16,
    text: &'static str,
    overloaded: bool,
) -> Response<ReplyBody> {
    let mut r = if grpc {
        let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
        let h = r.headers_mut();
        h.insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            HeaderName::from_static("grpc-status"),
            HeaderValue::from(grpc_status),
        );
        h.insert(
            HeaderName::from_static("grpc-message"),
            HeaderValue::from_static(text),
        );
        r
    } else {
        let mut r = Response::new(Either::Right(Full::new(Bytes::from_static(
            text.as_bytes(),
        ))));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        r
    };
    if overloaded {
        r.headers_mut().insert(
            HeaderName::from_static("x-envoy-overloaded"),
            HeaderValue::from_static("true"),
        );
    }
    r
}
