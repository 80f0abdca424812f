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
//! Frames are the `h2` crate's, driven directly: one task per downstream connection drives it and
//! its streams, one task per upstream connection drives that, and each stream is one future, in its
//! downstream connection's task, that does all of the stream's work (admission, picking a
//! connection, the request head, pumping the request body up and the answer and its trailers back,
//! the log line), with no task, channel or copy of a frame between the two sides. A connection and
//! its streams so live on one worker, as Envoy's do. Bodies stream with flow control end to end (a
//! body moves only as the receiving side's window opens, and the sending side's window is given
//! back as it is read, so a slow reader on one stream holds back only that stream), trailers pass
//! through, and nothing is buffered whole: a stream holds at most one frame in passage (and, until
//! its answer's head, up to [`KEEP_LIMIT`] of its request body for a resend, which its mirrors'
//! copies then share until they have gone). Routes and per-stream balancing use the same
//! [`Upstream`] as HTTP/1: [`route`] picks a stream's cluster and rule (HTTPRoute and GRPCRoute
//! alike), and the rule's fault, redirect (its status and `location`, no body), timeouts, URL
//! rewrite, header modifiers, retries and mirrors apply as on HTTP/1; a mirror copies a stream with
//! a body as soon as that body has been read whole, up to [`KEEP_LIMIT`] (see [`Mirrors`]). A
//! cluster with a consistent hash takes each stream's key (a header, a cookie, the client's
//! address) as HTTP/1 takes a request's.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::client::SendRequest;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Request, Response, StatusCode};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::access_log::{AccessLog, Entry};
use crate::cluster::Cluster;
use crate::gather::{self, Link};
use crate::host::{Active, Host};
use crate::http::flags::{
    ResponseFlag, CONNECT_FAIL_BODY, FAULT_ABORT_BODY, NO_BACKEND_BODY, NO_HEALTHY_UPSTREAM_BODY,
    OVERFLOW_BODY, TIMEOUT_BODY,
};
use crate::http::HttpCtx;
use crate::idle::Activity;
use crate::outlier::Outcome;
use crate::router::{self, Picked, Rule, Table, Upstream, View};
use crate::stats::ListenerStats;
use config::api::{HashOn, HeaderModifier, Redirect, Retry, Rewrite};

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};

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
    send: SendRequest<Bytes>,
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

/// A stream open on an upstream connection, counted in the connection's open streams until
/// dropped: when the answer's body ends, or the stream is reset or fails. A connection with a
/// stream open is not idle, however long no byte moves (the stream is bounded by the request
/// timeout instead), as Envoy counts its idle timeout only without streams.
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

/// A stream waiting for a slot in its cluster. Dropped without having taken it (its wait timed
/// out, or the client reset the stream), it gives back a slot handed to it meanwhile, which
/// would otherwise stay taken for good.
struct Waiting<'c> {
    rx: oneshot::Receiver<()>,
    cluster: &'c Arc<Cluster>,
}

impl Waiting<'_> {
    /// Whether the slot came by `deadline`.
    async fn until(mut self, deadline: tokio::time::Instant) -> bool {
        matches!(
            tokio::time::timeout_at(deadline, &mut self.rx).await,
            Ok(Ok(()))
        )
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.rx.close();
        if self.rx.try_recv().is_ok() {
            self.cluster.h2.release();
            self.cluster.sync_gauges();
        }
    }
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
    /// going away, or it closed. Its streams finish on it.
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

/// A downstream connection, shared by its streams.
struct Downconn {
    up: Upstream,
    ctx: Arc<HttpCtx>,
    /// The client's address (a consistent hash may be taken over it).
    peer: SocketAddr,
    /// The client's address as `x-forwarded-for` wants it (where the listener adds it),
    /// formatted once per connection (a stream's copy is a counted reference).
    client_ip: Option<HeaderValue>,
    /// Streams open on it (what its idle timer checks).
    open: AtomicU32,
}

/// A downstream stream open: in its connection's open streams, and in the listener's
/// `downstream_rq_active`, until its future ends (its answer's body ended, or it was reset). A
/// connection with a stream open is not idle, however long no byte moves.
struct Downstream(Arc<Downconn>);

impl Downstream {
    fn new(conn: &Arc<Downconn>) -> Downstream {
        conn.open.fetch_add(1, Relaxed);
        conn.ctx.listener.http.downstream_rq_active.inc();
        Downstream(conn.clone())
    }
}

impl Drop for Downstream {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
        self.0.ctx.listener.http.downstream_rq_active.dec();
    }
}

/// Envoy's flag for an upstream answer cut off by `e`: `UR` when the upstream sent RST_STREAM,
/// `UC` when its connection went away (GOAWAY, a connection error, the socket closed).
fn reset_flag(e: &h2::Error) -> ResponseFlag {
    if e.is_reset() && e.is_remote() {
        ResponseFlag::UpstreamRemoteReset
    } else {
        ResponseFlag::UpstreamConnectionTermination
    }
}

/// Serves one downstream HTTP/2 connection until it closes.
pub async fn serve(io: TcpStream, peer: SocketAddr, up: Upstream, ctx: Arc<HttpCtx>) {
    let idle = ctx.idle_timeout;
    let drain = ctx.drain.clone();
    let conn = Arc::new(Downconn {
        up,
        client_ip: ctx
            .add_forwarded_for
            .then(|| HeaderValue::try_from(peer.ip().to_canonical().to_string()).ok())
            .flatten(),
        ctx,
        peer,
        open: AtomicU32::new(0),
    });
    let activity = Activity::since(Instant::now());
    let mut builder = h2::server::Builder::new();
    builder
        // A CONTINUATION flood or a header list past this costs the sender its connection.
        .max_header_list_size(64 * 1024)
        .max_concurrent_streams(MAX_DOWNSTREAM_STREAMS)
        // Windows of 1 MiB (the stream's and the connection's), a send buffer of 400 KiB per
        // stream, and at most 1024 streams this side reset for the client's errors: what the
        // proxy had from hyper, whose defaults these are.
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 20)
        .max_send_buffer_size(400 * 1024)
        .max_local_error_reset_streams(Some(1024));
    let (read, gather) = gather::split(io, &activity);
    // Every write of a turn of this task goes out in one syscall.
    gather
        .around(async {
            let handshake = builder.handshake::<_, Bytes>(Link {
                read,
                gather: &gather,
            });
            drive(handshake, &conn, &activity, idle, &drain, peer).await;
        })
        .await;
}

/// Drives a downstream connection from its handshake until it closes.
async fn drive<T, H>(
    handshake: H,
    conn: &Arc<Downconn>,
    activity: &Activity,
    idle: std::time::Duration,
    drain: &crate::drain::SideDrain,
    peer: SocketAddr,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    H: Future<Output = Result<h2::server::Connection<T, Bytes>, h2::Error>>,
{
    // No stream open and no byte either way for the idle timeout, or a drain: GOAWAY, then the
    // open streams get one more idle timeout to finish.
    let mut idled = pin!(activity.expired_unless(idle, || conn.open.load(Relaxed) > 0));
    let mut drained = pin!(drain.signaled());
    // A drain does not cut the handshake short: a caller that connects during it is served the
    // streams it sent with its preface (h2's graceful GOAWAY counts as processed what arrives
    // before its PING comes back), then the connection closes.
    let mut h2 = tokio::select! {
        r = handshake => match r {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "HTTP/2 handshake failed");
                return;
            }
        },
        () = &mut idled => return,
    };
    let mut grace = pin!(tokio::time::sleep(idle));
    let mut shut = pin!(drain.closed());
    let mut closing = false;
    // Told to leave before its first stream: a caller that connected during the drain is
    // served that stream (its GOAWAY goes as the stream comes in, as HTTP/1's
    // `connection: close` goes with the answer), rather than refused at once.
    let (mut served, mut leave_after_first) = (false, false);
    // The connection's streams, driven by this task (a connection and its streams live on one
    // worker, as Envoy's do): no task spawned per stream, and what a stream hands h2 is
    // written in the same turn, by the connection's poll that follows.
    let mut streams = FuturesUnordered::new();
    let ended = loop {
        tokio::select! {
            // The streams first, so that what they send goes out with the connection's poll
            // below; the connection before the timers: they only matter when it waits.
            biased;
            Some(()) = streams.next(), if !streams.is_empty() => {}
            s = h2.accept() => match s {
                Some(Ok((req, respond))) => {
                    served = true;
                    let opened = Downstream::new(conn);
                    // Boxed: the set then holds a pointer, not the stream's whole state (some
                    // 4 KiB), and polling it moves nothing.
                    streams.push(Box::pin(stream(req, respond, opened)));
                    if leave_after_first && !closing {
                        closing = true;
                        goaway(&mut h2, grace.as_mut(), idle);
                    }
                }
                Some(Err(e)) => break Some(e),
                None => break None,
            },
            () = &mut idled, if !closing => {
                closing = true;
                goaway(&mut h2, grace.as_mut(), idle);
            }
            () = &mut drained, if !closing && !leave_after_first => {
                if served {
                    closing = true;
                    goaway(&mut h2, grace.as_mut(), idle);
                } else {
                    leave_after_first = true;
                }
            }
            // The drain time is over: no more waiting for a first stream.
            () = &mut shut, if !closing => {
                closing = true;
                goaway(&mut h2, grace.as_mut(), idle);
            }
            () = &mut grace, if closing => break None,
        }
    };
    if let Some(e) = ended {
        tracing::debug!(%peer, error = %e, "HTTP/2 connection ended");
    }
    // The connection is gone (closed, failed, or its grace ran out): the streams still open learn
    // it from their h2 handles and end (each writes its log line, gives back its slot).
    drop(h2);
    while streams.next().await.is_some() {}
}

/// Tells the client to leave (GOAWAY, graceful: streams it sent before it learns of it are still
/// served); its open streams then get one more idle timeout to finish.
fn goaway<T>(
    h2: &mut h2::server::Connection<T, Bytes>,
    grace: Pin<&mut tokio::time::Sleep>,
    idle: std::time::Duration,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    h2.graceful_shutdown();
    grace.reset(tokio::time::Instant::now() + idle);
}

/// Streams one client connection may have open at once (each is a future's worth of state).
const MAX_DOWNSTREAM_STREAMS: u32 = 1024;

/// The cluster a stream goes to, and the route rule that picked it: the destination's own, or
/// the one its routes pick (HTTPRoute and GRPCRoute match on the stream's method, path, query
/// and headers, then the rule's weights). A rule with a `RequestRedirect` answers with it
/// whatever its backends (as on HTTP/1): no cluster. `table` holds the routes while the rule is
/// used.
fn route<'t>(
    up: &Upstream,
    table: &'t mut Option<Arc<Table>>,
    req: &Request<()>,
) -> Result<(Option<Arc<Cluster>>, Option<Picked<'t>>), Local> {
    match up {
        Upstream::Cluster(c) => Ok((Some(c.clone()), None)),
        Upstream::Routed { default, routes } => {
            *table = routes.get();
            match table.as_deref() {
                None => Ok((Some(default.clone().ok_or(Local::NoRoute)?), None)),
                Some(t) => {
                    let head = head_of(req);
                    let picked = t.pick(&View::of(&head)).ok_or(Local::NoRoute)?;
                    let cluster = match picked.rule.redirect {
                        Some(_) => None,
                        None => Some(picked.rule.backend().cloned().ok_or(Local::NoBackend)?),
                    };
                    Ok((cluster, Some(picked)))
                }
            }
        }
    }
}

/// A rule's `RequestRedirect` for a stream: its `Location` ([`router::location`], as HTTP/1
/// builds it) from the stream's `:scheme`, `:authority` (else `host`) and `:path`.
fn redirect(req: &Request<()>, r: &Redirect, prefix: Option<&[u8]>) -> Local {
    let uri = req.uri();
    let host = uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| req.headers().get(hyper::header::HOST).map(|v| v.as_bytes()))
        .unwrap_or_default();
    let (path, query) = uri
        .path_and_query()
        .map_or(("/", ""), |p| (p.path(), p.query().unwrap_or("")));
    let scheme = uri.scheme_str().unwrap_or("http");
    let location = router::location(r, scheme, host, path.as_bytes(), query.as_bytes(), prefix);
    match HeaderValue::try_from(location) {
        Ok(v) => Local::Redirect(r.status, v),
        // Not reachable: the parts were valid header bytes, and the filter's were checked.
        Err(e) => {
            tracing::debug!(error = %e, "a redirect's Location is no header value");
            Local::NoBackend
        }
    }
}

/// Sends a route's redirect: `:status` the filter's, `location`, no body (the headers end the
/// stream), as HTTP/1 answers one. The body bytes sent: none.
fn send_redirect(
    respond: &mut SendResponse<Bytes>,
    status: StatusCode,
    location: HeaderValue,
) -> u64 {
    let mut r = Response::new(());
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::LOCATION, location);
    if let Err(e) = respond.send_response(r, true) {
        tracing::debug!(error = %e, "HTTP/2 redirect not sent: the client's stream is gone");
    }
    0
}

/// The consistent-hash key of a stream ([`router::hash_key`], as HTTP/1 takes it): read from its
/// header map (a cookie may come as several fields; `host` is `:authority`), no copy made.
fn hash_key(on: &HashOn, req: &Request<()>, peer: SocketAddr) -> Option<u64> {
    router::hash_key(
        on,
        |name| {
            let authority = req
                .uri()
                .authority()
                .filter(|_| name.eq_ignore_ascii_case("host"))
                .map(|a| a.as_str().as_bytes());
            authority.into_iter().chain(
                req.headers()
                    .get_all(name)
                    .iter()
                    .map(HeaderValue::as_bytes),
            )
        },
        peer,
    )
}

/// A rule's `URLRewrite` on a stream's head: `:authority` (and `host`, if the client sent one)
/// from `hostname`, `:path` from the path modifier (`prefix`: what the rule's path match
/// matched).
fn rewrite(req: &mut Request<()>, rw: &Rewrite, prefix: Option<&[u8]>) {
    let uri = req.uri().clone();
    let mut parts = uri.into_parts();
    if let Some(host) = &rw.hostname {
        if let Ok(a) = host.parse::<hyper::http::uri::Authority>() {
            parts.authority = Some(a);
        }
        if let Ok(v) = HeaderValue::from_str(host) {
            if let Some(h) = req.headers_mut().get_mut(hyper::header::HOST) {
                *h = v;
            }
        }
    }
    if let Some(m) = &rw.path {
        let (path, query) = parts
            .path_and_query
            .as_ref()
            .map_or(("/", ""), |p| (p.path(), p.query().unwrap_or("")));
        let target = router::new_path(m, path.as_bytes(), query.as_bytes(), prefix);
        if let Ok(pq) = hyper::http::uri::PathAndQuery::try_from(target) {
            parts.path_and_query = Some(pq);
        }
    }
    if let Ok(u) = hyper::Uri::from_parts(parts) {
        *req.uri_mut() = u;
    }
}

/// A rule's `RequestHeaderModifier` or `ResponseHeaderModifier` on a stream's headers, in
/// HTTP/1's order: set (replacing), add (appending), remove. Names and values were checked when
/// the routes were compiled; one that does not parse is skipped.
fn edit(h: &mut HeaderMap, m: &HeaderModifier) {
    let parsed = |(n, v): &(String, String)| {
        Some((
            HeaderName::from_bytes(n.as_bytes()).ok()?,
            HeaderValue::from_str(v).ok()?,
        ))
    };
    for (n, v) in m.set.iter().filter_map(parsed) {
        h.insert(n, v);
    }
    for (n, v) in m.add.iter().filter_map(parsed) {
        h.append(n, v);
    }
    for n in &m.remove {
        h.remove(n.as_str());
    }
}

/// A stream's head as [`crate::h1`] would write it (`host` from `:authority`), for the router:
/// bounded by the connection's header list limit.
fn head_of<B>(req: &Request<B>) -> Vec<u8> {
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

/// One stream, start to end, in its connection's task: forwarded, answered, logged when its
/// answer ends.
async fn stream(req: Request<RecvStream>, mut respond: SendResponse<Bytes>, opened: Downstream) {
    let conn = &*opened.0;
    let ctx = &*conn.ctx;
    let grpc = is_grpc(&req);
    ctx.listener.http.downstream_rq_total.inc();
    let mut log = ctx
        .access_log
        .as_ref()
        .map(|l| Logged::new(l.clone(), &req));
    let (head, body) = req.into_parts();
    // The request body, when there is one, read as it goes up.
    let mut upload = (!body.is_end_stream()).then(|| Source::new(body, true));
    let mut marks = Marks::default();
    let forwarded = {
        let mut fwd = pin!(forward(head, &mut upload, conn, &mut marks));
        poll_fn(|cx| match fwd.as_mut().poll(cx) {
            Poll::Ready(r) => Poll::Ready(Some(r)),
            // The client reset the stream (or its connection ended) before the answer's head:
            // nothing to answer; dropping the upstream stream resets it (CANCEL).
            Poll::Pending => respond.poll_reset(cx).map(|_| None),
        })
        .await
    };
    let Some(forwarded) = forwarded else { return };
    let received = |upload: &Option<Source>| upload.as_ref().map_or(0, |s| s.moved);
    let Forwarded {
        resp,
        response_headers,
        slot,
        host,
        mut up,
    } = match forwarded {
        Ok(f) => f,
        Err(what) => {
            let (status, grpc_status, text, flag) = what.answer();
            let (sent, code) = match what {
                Local::Redirect(_, location) => (
                    send_redirect(&mut respond, status, location),
                    status.as_u16(),
                ),
                _ => (
                    local(
                        &mut respond,
                        grpc,
                        status,
                        grpc_status,
                        text,
                        what == Local::Overflow,
                    ),
                    if grpc { 200 } else { status.as_u16() },
                ),
            };
            if let Some(mut l) = log {
                l.entry.code = code;
                l.entry.flags = flag.with(marks.delayed, marks.exhausted);
                l.entry.bytes_received = received(&upload);
                l.done(sent);
            }
            return;
        }
    };
    let (mut parts, body) = resp.into_parts();
    if let Some(m) = &response_headers {
        edit(&mut parts.headers, m);
    }
    if let Some(l) = &mut log {
        l.entry.code = parts.status.as_u16();
        l.entry.upstream_host = Some(host);
        if marks.delayed || marks.exhausted {
            l.entry.flags = ResponseFlag::None.with(marks.delayed, marks.exhausted);
        }
    }
    let end = body.is_end_stream();
    // The stream's slot goes with the upstream's end: here, for an answer without a body (a
    // gRPC trailers-only one), before its head goes on.
    let mut slot = (!end).then_some(slot);
    let mut down = match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/2 answer not sent: the client's stream is gone");
            return;
        }
    };
    let mut sent = 0;
    if !end {
        let mut answer = Source::new(body, false);
        answer.hold = slot.take();
        // The answer's body and trailers back, and what is left of the request's body up,
        // until the answer ends.
        let relayed = poll_fn(|cx| {
            if let (Some(src), Some(to)) = (&mut upload, &mut up) {
                match src.pump(to, cx) {
                    Poll::Pending => {}
                    Poll::Ready(Ok(())) => up = None,
                    // The client's side of the stream failed: the answer cannot reach it.
                    Poll::Ready(Err(Broke::From(_))) => return Poll::Ready(Err(None)),
                    // The upstream stream failed: its answer says how.
                    Poll::Ready(Err(Broke::To)) => up = None,
                }
            }
            match answer.pump(&mut down, cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(())) => return Poll::Ready(Ok(())),
                Poll::Ready(Err(Broke::From(e))) => return Poll::Ready(Err(Some(e))),
                Poll::Ready(Err(Broke::To)) => return Poll::Ready(Err(None)),
            }
            // The client reset the stream while the answer waits for upstream bytes.
            down.poll_reset(cx).map(|_| Err(None))
        })
        .await;
        sent = answer.moved;
        // Cut off mid-answer: the upstream reset the stream (`UR`), or its connection ended
        // (`UC`), as the HTTP/1 path flags an answer cut short; the client's stream is reset
        // with the upstream's reason.
        if let Err(Some(e)) = relayed {
            if let Some(s) = &answer.hold {
                s.0.stats.upstream_rq_rx_reset.inc();
            }
            if let Some(l) = &mut log {
                l.entry.flags = reset_flag(&e).with(marks.delayed, marks.exhausted);
            }
            let reason = e
                .reason()
                .filter(|r| *r != h2::Reason::NO_ERROR)
                .unwrap_or(h2::Reason::INTERNAL_ERROR);
            down.send_reset(reason);
        }
    }
    if let Some(mut l) = log {
        l.entry.bytes_received = received(&upload);
        l.done(sent);
    }
}

/// The answers the proxy makes itself on the HTTP/2 path.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// A route's `HTTPFault` abort, with its status (`FI`).
    FaultAbort(u16),
    /// A route's `RequestRedirect`: its status and `Location` (no flag).
    Redirect(u16, HeaderValue),
}

impl Local {
    /// HTTP status, gRPC status, text, and Envoy's response flag.
    fn answer(&self) -> (StatusCode, u16, &'static str, ResponseFlag) {
        const RESET: &str = "upstream connect error or disconnect/reset before headers. \
                             reset reason: remote reset";
        use ResponseFlag as F;
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        match self {
            Local::NoRoute => (StatusCode::NOT_FOUND, 12, "no route", F::NoRouteFound),
            // gRPC: UNAVAILABLE, as GRPCRoute asks of an invalid backend.
            Local::NoBackend => (
                StatusCode::INTERNAL_SERVER_ERROR,
                14,
                NO_BACKEND_BODY,
                F::None,
            ),
            Local::Overflow => (unavailable, 14, OVERFLOW_BODY, F::UpstreamOverflow),
            Local::NoHealthyUpstream => (
                unavailable,
                14,
                NO_HEALTHY_UPSTREAM_BODY,
                F::NoHealthyUpstream,
            ),
            Local::ConnectFailed => (
                unavailable,
                14,
                CONNECT_FAIL_BODY,
                F::UpstreamConnectionFailure,
            ),
            Local::Reset => (unavailable, 14, RESET, F::UpstreamRemoteReset),
            Local::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                4,
                TIMEOUT_BODY,
                F::UpstreamRequestTimeout,
            ),
            Local::FaultAbort(code) => (
                StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                grpc_status_of(*code),
                FAULT_ABORT_BODY,
                F::FaultInjected,
            ),
            // Answered with its status as it is, also to gRPC (as HTTP/1 answers).
            Local::Redirect(code, _) => (
                StatusCode::from_u16(*code).unwrap_or(StatusCode::FOUND),
                grpc_status_of(*code),
                "",
                F::None,
            ),
        }
    }
}

/// The gRPC status for an HTTP status the proxy answers with (a fault's abort), as gRPC's
/// HTTP-to-gRPC mapping and Envoy have it: 400 INTERNAL, 401 UNAUTHENTICATED, 403
/// PERMISSION_DENIED, 404 UNIMPLEMENTED, 429 and 502-504 UNAVAILABLE, any other UNKNOWN.
fn grpc_status_of(http: u16) -> u16 {
    match http {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

/// What the access log adds to a stream's flag: a route's fault delayed it (`DI`), its route's
/// retries ran out (`URX`).
#[derive(Default)]
struct Marks {
    delayed: bool,
    exhausted: bool,
}

/// A stream forwarded: the upstream's answer head and body, the stream's slot, the host, and
/// the upstream side of the request body while it is still going up.
struct Forwarded {
    resp: Response<RecvStream>,
    /// The rule's `ResponseHeaderModifier`, for the answer's head.
    response_headers: Option<HeaderModifier>,
    slot: Slot,
    host: SocketAddr,
    up: Option<SendStream<Bytes>>,
}

/// Admits the stream to its cluster, picks a host and a connection, and sends it (its body
/// read from `upload`, kept there for a resend until the answer's head): the upstream's
/// answer head.
async fn forward(
    head: hyper::http::request::Parts,
    upload: &mut Option<Source>,
    conn: &Downconn,
    marks: &mut Marks,
) -> Result<Forwarded, Local> {
    let ctx = &*conn.ctx;
    let mut routed = Request::from_parts(head, ());
    let mut table = None;
    let (cluster, picked) = route(&conn.up, &mut table, &routed).inspect_err(|e| {
        if *e == Local::NoRoute {
            ctx.listener.http.no_route.inc();
        }
    })?;
    // The rule's filters, as HTTP/1 applies them: a fault first (a delay is not counted in the
    // route's timeout, as Envoy's fault filter runs before the router's timer), then a redirect
    // (the answer), else the rewrite and the request header edits, then the mirrors' copies
    // (of the stream as rewritten); the response header edits go with the answer.
    let (mut timeout, mut backend_timeout, mut response_headers) =
        (ctx.request_timeout, None, None);
    let mut retry = None;
    if let Some(Picked { rule: r, prefix }) = picked {
        if let Some(f) = &r.fault {
            if let Some(d) = router::fault_delay(f, &ctx.listener.http) {
                marks.delayed = true;
                tokio::time::sleep(d).await;
            }
            if let Some(status) = router::fault_abort(f, &ctx.listener.http) {
                return Err(Local::FaultAbort(status));
            }
        }
        if let Some(to) = &r.redirect {
            ctx.listener.http.rq_redirect.inc();
            return Err(redirect(&routed, to, prefix));
        }
        if let Some(rw) = &r.rewrite {
            rewrite(&mut routed, rw, prefix);
        }
        if let Some(m) = &r.request_headers {
            edit(routed.headers_mut(), m);
        }
        // Without a body, the copies go at once (as HTTP/1's do); with one, as its end is read.
        if let Some(m) = Mirrors::rolled(r, &routed, conn) {
            match upload.as_mut() {
                None => m.send(&[], None),
                Some(u) => u.mirrors = Some(m),
            }
        }
        response_headers = r.response_headers.clone();
        timeout = r.timeout.unwrap_or(timeout);
        backend_timeout = r.backend_timeout;
        retry = r.retry.as_ref();
    }
    // Only a redirect's rule picks no cluster, and it has answered above.
    let Some(cluster) = cluster else {
        return Err(Local::NoBackend);
    };
    // The route's timeout (else `--request-timeout`) covers the whole wait for the answer's
    // head: admission, connection, every try.
    let deadline = tokio::time::Instant::now() + timeout;
    let st = &cluster.stats;
    let limits = cluster.limits();
    let admit = cluster
        .h2
        .admit(limits.max_requests, limits.max_pending_requests);
    if !admitted(&cluster, admit, deadline).await {
        return Err(Local::Overflow);
    }
    let mut slot = Slot(cluster.clone(), None, None);
    let lb = cluster.lb();
    let head = upstream_request(routed, conn);
    // A consistent hash's key, per stream; nothing read for a cluster that does not hash.
    let key = lb
        .balancer
        .hash_on()
        .and_then(|on| hash_key(on, &head, conn.peer));
    let mut head = Some(head);
    // The route's retries: another try (another host, as the balancer picks) on a listed status,
    // a reset, a connection failure or a try's own timeout, while `attempts` and the cluster's
    // `maxRetries` allow and the request body was kept whole (up to `KEEP_LIMIT`, as HTTP/1
    // keeps a request body).
    let mut tries_left = retry.map_or(0, |r| r.attempts);
    let mut token = None;
    loop {
        let until =
            backend_timeout.map_or(deadline, |t| deadline.min(tokio::time::Instant::now() + t));
        let last = tries_left == 0;
        let tried = try_once(
            &cluster, &lb, key, &limits, &mut slot, &mut head, last, upload, until,
        )
        .await;
        let retryable = retry.is_some_and(|r| match &tried {
            Ok((resp, _, _)) => r.codes.contains(&retry_code(resp)),
            Err(Local::ConnectFailed | Local::Reset) => true,
            // A try's own timeout, the route's still running.
            Err(Local::Timeout) => tokio::time::Instant::now() < deadline,
            Err(_) => false,
        });
        if retryable {
            if tries_left == 0 {
                if retry.is_some_and(|r| r.attempts > 0) {
                    marks.exhausted = true;
                    st.upstream_rq_retry_limit_exceeded.inc();
                }
            } else if let Some(t) = cluster.try_retry() {
                if upload.as_mut().is_none_or(Source::rewind) {
                    token = Some(t);
                    tries_left -= 1;
                    st.upstream_rq_retry.inc();
                    // Dropping a try's answer resets its stream (CANCEL).
                    drop(tried);
                    if !backoff(retry, deadline).await {
                        st.upstream_rq_timeout.inc();
                        return Err(Local::Timeout);
                    }
                    continue;
                }
            }
        }
        if token.take().is_some() && !retryable && tried.is_ok() {
            st.upstream_rq_retry_success.inc();
        }
        // No resend once the answer's head is in: what was kept for one goes, unless the
        // mirrors still wait for the body's end.
        if let Some(u) = upload.as_mut().filter(|u| u.mirrors.is_none()) {
            u.kept = None;
        }
        return tried.map(|(resp, up, host)| Forwarded {
            resp,
            response_headers,
            slot,
            host,
            up,
        });
    }
}

/// Whether a stream that asked `cluster` for a slot (`admit`) has one: at once, or handed to it
/// while it waited, by `deadline`. One that has none (refused, or its wait ran out) is counted
/// in `upstream_rq_pending_overflow`; the gauges follow.
async fn admitted(cluster: &Arc<Cluster>, admit: Admit, deadline: tokio::time::Instant) -> bool {
    let st = &cluster.stats;
    let admitted = match admit {
        Admit::Go => {
            cluster.sync_gauges();
            true
        }
        Admit::Wait(rx) => {
            st.upstream_rq_pending_total.inc();
            cluster.sync_gauges();
            Waiting { rx, cluster }.until(deadline).await
        }
        Admit::Overflow => false,
    };
    if !admitted {
        st.upstream_rq_pending_overflow.inc();
    }
    admitted
}

/// The copies of a stream owed to its rule's mirrors (`RequestMirror`, GRPCRoute's mirror) whose
/// share rolled. A copy needs the request body whole: a stream without one is copied at once
/// (as HTTP/1 copies), one with a body as soon as its end has been read ([`Source`] holds the
/// copies until then, and keeps the frames, up to [`KEEP_LIMIT`], also past the answer's head:
/// a client-streaming call whose server answers first is copied too). Each copy goes on its own
/// task over the mirror's HTTP/2 pool ([`shadow`]), counted `rq_mirrored` once admitted there;
/// one that cannot go (a larger body; a body whose end never came, the stream reset or its
/// upstream gone first; the mirror's pool past its limits, at once or after waiting) is counted
/// `rq_mirror_dropped`.
struct Mirrors {
    listener: Arc<ListenerStats>,
    to: Vec<Arc<Cluster>>,
    /// The copies' head: the stream's as it goes upstream, `-shadow` on its host.
    head: Option<Request<()>>,
}

impl Mirrors {
    /// The mirrors of `rule` whose share rolls for the stream `req` (`None`, with nothing
    /// allocated, for a rule without mirrors).
    fn rolled(rule: &Rule, req: &Request<()>, conn: &Downconn) -> Option<Mirrors> {
        if rule.mirrors.is_empty() {
            return None;
        }
        let to: Vec<_> = rule
            .mirrors
            .iter()
            .filter(|(_, share)| router::roll(*share))
            .map(|(c, _)| c.clone())
            .collect();
        if to.is_empty() {
            return None;
        }
        Some(Mirrors {
            listener: conn.ctx.listener.clone(),
            to,
            head: shadow_head(upstream_request(copy(req), conn)),
        })
    }

    /// Sends the copies: `data` (the body's frames, counted references) and `trailers`.
    fn send(mut self, data: &[Bytes], trailers: Option<&HeaderMap>) {
        let Some(head) = self.head.take() else {
            return;
        };
        for cluster in std::mem::take(&mut self.to) {
            let limits = cluster.limits();
            let admit = cluster
                .h2
                .admit(limits.max_requests, limits.max_pending_requests);
            if let Admit::Overflow = admit {
                cluster.stats.upstream_rq_pending_overflow.inc();
                self.listener.http.rq_mirror_dropped.inc();
                continue;
            }
            tokio::spawn(shadow(
                self.listener.clone(),
                cluster,
                admit,
                copy(&head),
                data.to_vec(),
                trailers.cloned(),
            ));
        }
    }
}

impl Drop for Mirrors {
    fn drop(&mut self) {
        self.listener
            .http
            .rq_mirror_dropped
            .add(self.to.len() as u64);
    }
}

/// A mirror's copy of a stream's head: `:authority` (and `host`, if the client sent one) with
/// `-shadow` appended to the host name ([`router::shadow_host`], as HTTP/1 marks its copies).
/// `None` when that makes no valid authority (an IPv6 literal's brackets).
fn shadow_head(mut req: Request<()>) -> Option<Request<()>> {
    if let Some(a) = req.uri().authority() {
        let shadow = router::shadow_host(a.as_str().as_bytes());
        let mut parts = req.uri().clone().into_parts();
        parts.authority = Some(hyper::http::uri::Authority::try_from(shadow).ok()?);
        *req.uri_mut() = hyper::Uri::from_parts(parts).ok()?;
    }
    if let Some(h) = req.headers_mut().get_mut(hyper::header::HOST) {
        *h = HeaderValue::try_from(router::shadow_host(h.as_bytes())).ok()?;
    }
    Some(req)
}

/// One mirrored copy, on its own task: admitted to the mirror's cluster as a stream is (`admit`
/// was asked when the copy was made), sent on a pooled connection to the host its balancer
/// picks, its answer read and thrown away; all within [`router::MIRROR_TIMEOUT`], after which
/// it is given up (its stream reset). The client's stream never waits for it. The body (at most
/// [`KEEP_LIMIT`]) is handed to h2 whole, which sends it as the mirror's window opens.
async fn shadow(
    listener: Arc<ListenerStats>,
    cluster: Arc<Cluster>,
    admit: Admit,
    req: Request<()>,
    data: Vec<Bytes>,
    trailers: Option<HeaderMap>,
) {
    let deadline = tokio::time::Instant::now() + router::MIRROR_TIMEOUT;
    let copied = async {
        // Counted once it has its slot: a copy whose wait for one ran out is dropped.
        if !admitted(&cluster, admit, deadline).await {
            listener.http.rq_mirror_dropped.inc();
            return;
        }
        listener.http.rq_mirrored.inc();
        let st = &cluster.stats;
        let mut slot = Slot(cluster.clone(), None, None);
        let (lb, limits) = (cluster.lb(), cluster.limits());
        let Some(host) = lb.pick_host(None) else {
            st.upstream_cx_none_healthy.inc();
            return;
        };
        slot.1 = Some(Active::new(host.clone()));
        let Ok((mut send, open)) = upstream_connection(&cluster, &host, &limits, &lb).await else {
            return;
        };
        slot.2 = Some(open);
        if poll_fn(|cx| send.poll_ready(cx)).await.is_err() {
            return;
        }
        st.upstream_rq_total.inc();
        let bodiless = data.is_empty() && trailers.is_none();
        let Ok((answer, mut up)) = send.send_request(req, bodiless) else {
            return;
        };
        let frames = data.len();
        for (i, d) in data.into_iter().enumerate() {
            if up
                .send_data(d, i + 1 == frames && trailers.is_none())
                .is_err()
            {
                return;
            }
        }
        if let Some(t) = trailers {
            if up.send_trailers(t).is_err() {
                return;
            }
        }
        let Ok(resp) = answer.await else {
            st.upstream_rq_rx_reset.inc();
            return;
        };
        st.count_code(resp.status().as_u16());
        let mut body = resp.into_body();
        while let Some(Ok(d)) = body.data().await {
            let _ = body.flow_control().release_capacity(d.len());
        }
        let _ = body.trailers().await;
    };
    if tokio::time::timeout_at(deadline, copied).await.is_err() {
        tracing::debug!(cluster = %cluster.name, "a mirrored copy was given up after its time");
    }
}

/// The status a route's retry `codes` are compared with: the answer's, or for a trailers-only
/// gRPC answer with `grpc-status: 14` (UNAVAILABLE: what a sidecar's overflow or a failed
/// connection gives a gRPC call), 503.
fn retry_code(resp: &Response<RecvStream>) -> u16 {
    let code = resp.status().as_u16();
    let unavailable = || {
        resp.body().is_end_stream()
            && resp.headers().get("grpc-status").map(|v| v.as_bytes()) == Some(&b"14"[..])
    };
    if code == 200 && unavailable() {
        503
    } else {
        code
    }
}

/// Waits out a retry's back-off ([`router::retry_backoff`], as HTTP/1 does); false when the
/// route's deadline comes first.
async fn backoff(retry: Option<&Retry>, deadline: tokio::time::Instant) -> bool {
    let wake = tokio::time::Instant::now() + router::retry_backoff(retry);
    tokio::time::sleep_until(wake.min(deadline)).await;
    wake <= deadline
}

/// One try of a stream (a route's retry makes another): a host, a connection, the stream sent
/// (and sent again, at most [`MAX_RESENDS`] times, while the upstream refuses it unprocessed),
/// until the answer's head or `until`. Each try's outcome is counted and reported to outlier
/// detection and the host's counters, as for HTTP/1. `head` is copied for each send, and given
/// away on the `last` try's last resend.
#[allow(clippy::too_many_arguments)]
async fn try_once(
    cluster: &Arc<Cluster>,
    lb: &Arc<crate::cluster::Lb>,
    key: Option<u64>,
    limits: &config::Limits,
    slot: &mut Slot,
    head: &mut Option<Request<()>>,
    last: bool,
    upload: &mut Option<Source>,
    until: tokio::time::Instant,
) -> Result<(Response<RecvStream>, Option<SendStream<Bytes>>, SocketAddr), Local> {
    let st = &cluster.stats;
    let Some(host) = lb.pick_host(key) else {
        st.upstream_cx_none_healthy.inc();
        return Err(Local::NoHealthyUpstream);
    };
    slot.1 = Some(Active::new(host.clone()));
    let (mut send, open) = upstream_connection(cluster, &host, limits, lb).await?;
    slot.2 = Some(open);
    let mut resends = 0;
    // A stream the upstream refused unprocessed (GOAWAY below it, REFUSED_STREAM), or one that
    // never left because its connection was closing, goes again on another connection.
    let sent = loop {
        st.upstream_rq_total.inc();
        // The head is kept while another send may follow (a copy of counted references to
        // the header bytes).
        let req = if last && resends == MAX_RESENDS {
            head.take().expect("the head, until the last send")
        } else {
            copy(head.as_ref().expect("the head"))
        };
        let tried = tokio::time::timeout_at(until, attempt(&mut send, req, upload)).await;
        let (e, unsent) = match tried {
            Ok(Ok(sent)) => break Ok(Ok(sent)),
            Err(elapsed) => break Err(elapsed),
            Ok(Err(failed)) => failed,
        };
        let again = resends < MAX_RESENDS
            && (unsent || refused(&e))
            && upload.as_mut().is_none_or(Source::rewind);
        if !again {
            break Ok(Err(e));
        }
        tracing::debug!(cluster = %cluster.name, error = %e, "stream refused unprocessed: sent again");
        if let Some(open) = slot.2.take() {
            cluster.h2.forget(&open.0);
        }
        resends += 1;
        st.upstream_rq_retry.inc();
        let (s, open) = upstream_connection(cluster, &host, limits, lb).await?;
        (send, slot.2) = (s, Some(open));
    };
    // Outlier detection and the host's counters see each try's outcome, as for HTTP/1.
    match sent {
        Ok(Ok((resp, up))) => {
            let code = resp.status().as_u16();
            st.count_code(code);
            cluster.report(lb, &host, Outcome::Status(code));
            Ok((resp, up, host.addr))
        }
        Ok(Err(e)) => {
            tracing::debug!(cluster = %cluster.name, error = %e, "upstream stream reset");
            st.upstream_rq_rx_reset.inc();
            cluster.report(lb, &host, Outcome::ConnectFailed);
            Err(Local::Reset)
        }
        Err(_) => {
            st.upstream_rq_timeout.inc();
            host.rq_timeout.fetch_add(1, Relaxed);
            cluster.report(lb, &host, Outcome::Status(504));
            Err(Local::Timeout)
        }
    }
}

/// One attempt at a stream on an upstream connection: the head goes, the body (if any) is
/// pumped up while the answer's head is awaited. The answer's head and the upstream side of
/// the body, if still going; or the error and whether the stream never left.
async fn attempt(
    send: &mut SendRequest<Bytes>,
    req: Request<()>,
    upload: &mut Option<Source>,
) -> Result<(Response<RecvStream>, Option<SendStream<Bytes>>), (h2::Error, bool)> {
    if let Err(e) = poll_fn(|cx| send.poll_ready(cx)).await {
        return Err((e, true));
    }
    let (mut answer, to) = send
        .send_request(req, upload.is_none())
        .map_err(|e| (e, true))?;
    let mut up = upload.is_some().then_some(to);
    poll_fn(|cx| {
        if let Poll::Ready(r) = Pin::new(&mut answer).poll(cx) {
            return Poll::Ready(r.map(|resp| (resp, up.take())).map_err(|e| (e, false)));
        }
        if let (Some(src), Some(to)) = (upload.as_mut(), up.as_mut()) {
            match src.pump(to, cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(())) => up = None,
                // The client's side failed: the upstream stream is cancelled, and its answer
                // says so.
                Poll::Ready(Err(Broke::From(_))) => {
                    to.send_reset(h2::Reason::CANCEL);
                    up = None;
                }
                // The upstream stream failed: its answer says how.
                Poll::Ready(Err(Broke::To)) => up = None,
            }
        }
        Poll::Pending
    })
    .await
}

/// Times a stream refused unprocessed is sent again (Istio's default retry policy makes 2
/// attempts on `refused-stream`).
const MAX_RESENDS: u32 = 2;

/// Whether the upstream refused a stream without processing it, so that it can go again
/// (RFC 9113 §8.7): the stream was above a graceful GOAWAY's last stream id (or sent after
/// it), or was reset with REFUSED_STREAM.
fn refused(e: &h2::Error) -> bool {
    let reason = e.reason();
    e.is_remote()
        && ((e.is_go_away() && reason == Some(h2::Reason::NO_ERROR))
            || (e.is_reset() && reason == Some(h2::Reason::REFUSED_STREAM)))
}

/// The request body bytes kept for a resend (a gRPC unary call's message, a form), or for a
/// mirror's copy; HTTP/1 keeps as much (`http::read_body`).
pub(crate) const KEEP_LIMIT: usize = 64 * 1024;

/// What of a request body went up, kept for a resend: an upstream may refuse a stream it never
/// processed (a GOAWAY whose last stream id is below it, or REFUSED_STREAM; RFC 9113 §8.7 says
/// such a request can be retried safely), and by then part of the body may have gone. The
/// frames' `Bytes` are counted references, not copies; past [`KEEP_LIMIT`] nothing is kept and
/// the stream cannot go again. Istio's default retry policy (`refused-stream`) and Envoy's
/// `x-envoy-retry-on: refused-stream` do the same.
#[derive(Default)]
struct Kept {
    data: Vec<Bytes>,
    len: usize,
    trailers: Option<HeaderMap>,
    whole: bool,
}

/// How a pump stopped short.
enum Broke {
    /// The side read from failed (with its error).
    From(h2::Error),
    /// The side written to failed or went away.
    To,
}

/// One side of a stream, read to be written to the other: its body's frames, then its
/// trailers, with flow control (a frame is read only when the last one has gone, and the
/// reading side's window is given back as frames are read).
struct Source {
    from: RecvStream,
    /// The frame read, what of it has not gone yet (waiting for window).
    buf: Bytes,
    /// Kept frames to send first, last first (those of a refused attempt).
    replay: Vec<Bytes>,
    replay_trailers: Option<HeaderMap>,
    /// `from` has ended (its end seen, its trailers taken).
    ended: bool,
    /// Body bytes read.
    moved: u64,
    /// What went, kept for a resend while one can follow (request bodies, until the answer).
    kept: Option<Kept>,
    /// Given back once the end has come from `from`, before the last frame goes to `to` (an
    /// answer's stream slot: free by the time the client has the whole answer).
    hold: Option<Slot>,
    /// A request body's mirrors, sent what was kept once the body's end has been read.
    mirrors: Option<Mirrors>,
}

impl Source {
    fn new(from: RecvStream, keep: bool) -> Source {
        Source {
            from,
            buf: Bytes::new(),
            replay: Vec::new(),
            replay_trailers: None,
            ended: false,
            moved: 0,
            kept: keep.then(|| Kept {
                whole: true,
                ..Kept::default()
            }),
            hold: None,
            mirrors: None,
        }
    }

    /// Starts again from the first byte, for a resend: false when more went than was kept.
    fn rewind(&mut self) -> bool {
        let Some(k) = &mut self.kept else {
            return false;
        };
        if !k.whole {
            return false;
        }
        // What went (in order) goes first, then what was still to replay from an earlier
        // attempt (`replay` pops from its end).
        let mut replay = std::mem::take(&mut self.replay);
        replay.extend(std::mem::take(&mut k.data).into_iter().rev());
        self.replay = replay;
        if let Some(t) = k.trailers.take() {
            self.replay_trailers = Some(t);
        }
        k.len = 0;
        self.buf = Bytes::new();
        true
    }

    /// The body's end has been read (and `kept` has all of it that was kept): the mirrors'
    /// copies go, unless more went than was kept (then they are dropped, and counted so).
    fn mirror(&mut self) {
        if let Some(m) = self.mirrors.take() {
            if let Some(k) = self.kept.as_ref().filter(|k| k.whole) {
                m.send(&k.data, k.trailers.as_ref());
            }
        }
    }

    /// Keeps `data` for a resend, while one can follow and the kept stay under the limit.
    fn keep(&mut self, data: &Bytes) {
        let Some(k) = &mut self.kept else { return };
        if !k.whole {
            return;
        }
        k.len += data.len();
        if k.len > KEEP_LIMIT {
            k.whole = false;
            k.data = Vec::new();
        } else {
            k.data.push(data.clone());
        }
    }

    /// Moves frames from `from` to `to` as `to`'s window allows, until the end (trailers
    /// included) has gone.
    fn pump(
        &mut self,
        to: &mut SendStream<Bytes>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Broke>> {
        loop {
            if !self.buf.is_empty() {
                let mut room = to.capacity();
                if room == 0 {
                    to.reserve_capacity(self.buf.len());
                    room = to.capacity();
                    if room == 0 {
                        match std::task::ready!(to.poll_capacity(cx)) {
                            Some(Ok(n)) => room = n,
                            Some(Err(_)) | None => return Poll::Ready(Err(Broke::To)),
                        }
                        if room == 0 {
                            continue;
                        }
                    }
                }
                let chunk = self.buf.split_to(room.min(self.buf.len()));
                let end = self.buf.is_empty()
                    && self.replay.is_empty()
                    && !self.ended
                    && self.from.is_end_stream();
                if end {
                    self.hold = None;
                }
                to.send_data(chunk, end).map_err(|_| Broke::To)?;
                if end {
                    self.ended = true;
                    self.mirror();
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if let Some(d) = self.replay.pop() {
                self.keep(&d);
                to.reserve_capacity(d.len());
                self.buf = d;
                continue;
            }
            if !self.ended {
                match std::task::ready!(self.from.poll_data(cx)) {
                    Some(Ok(d)) => {
                        let n = d.len();
                        self.moved += n as u64;
                        // Given back as read: the one frame in passage is what this stream holds.
                        let _ = self.from.flow_control().release_capacity(n);
                        if n > 0 {
                            self.keep(&d);
                            to.reserve_capacity(n);
                            self.buf = d;
                        }
                        continue;
                    }
                    Some(Err(e)) => return Poll::Ready(Err(Broke::From(e))),
                    None => {
                        let trailers =
                            std::task::ready!(self.from.poll_trailers(cx)).map_err(Broke::From)?;
                        self.ended = true;
                        self.replay_trailers = trailers;
                    }
                }
            }
            self.hold = None;
            let sent = match self.replay_trailers.take() {
                Some(t) => {
                    // Request trailers are rare: copied only then, while a resend can follow.
                    if let Some(k) = &mut self.kept {
                        k.trailers = Some(t.clone());
                    }
                    to.send_trailers(t)
                }
                None => to.send_data(Bytes::new(), true),
            };
            self.mirror();
            return Poll::Ready(sent.map_err(|_| Broke::To));
        }
    }
}

/// A connection to `host` for a stream (see [`connection`]); a failure is counted and told to
/// outlier detection, and answers `UF`.
async fn upstream_connection(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    limits: &config::Limits,
    lb: &Arc<crate::cluster::Lb>,
) -> Result<(SendRequest<Bytes>, Open), Local> {
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
    fn new<B>(log: AccessLog, req: &Request<B>) -> Logged {
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
) -> std::io::Result<(SendRequest<Bytes>, Open)> {
    let addr = host.addr;
    // Takes a stream on connection `i`, retiring it at its last.
    let take = |s: &mut StreamsInner, i: usize| {
        let c = &mut s.conns[i];
        c.streams += 1;
        if limits
            .max_requests_per_connection
            .is_some_and(|m| c.streams >= m)
        {
            let c = s.conns.swap_remove(i);
            let open = Open::new(&c.open);
            return (c.send, open);
        }
        (c.send.clone(), Open::new(&c.open))
    };
    // An open one to this host with room for a stream under the peer's limit, or past
    // `max_connections` the least busy open one (this host's first). A connection leaves the
    // pool when its task ends.
    let existing = || {
        let mut s = cluster.h2.lock();
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

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout")
}

/// Opens an upstream HTTP/2 connection (connect and handshake within the cluster's connect
/// timeout) and spawns the task that drives it. That task closes it when no stream has been
/// open on it (`streams`) and no byte has moved for the cluster's idle timeout, as an idle
/// pooled HTTP/1 connection is closed (`upstream_cx_idle_timeout`), and takes it out of the
/// pool when it ends. The connection is handed out once the peer's SETTINGS have come (within
/// the connect timeout), and its task keeps `max` at the peer's
/// `SETTINGS_MAX_CONCURRENT_STREAMS` (unlimited when not sent).
async fn open(
    cluster: &Arc<Cluster>,
    host: SocketAddr,
    streams: Arc<AtomicU32>,
    max: Arc<AtomicU32>,
) -> std::io::Result<SendRequest<Bytes>> {
    let (connect, idle) = (cluster.connect_timeout(), cluster.idle_timeout());
    let tcp = tokio::time::timeout(connect, TcpStream::connect(host))
        .await
        .map_err(|_| timed_out())??;
    let _ = tcp.set_nodelay(true);
    let (tx, rx) = oneshot::channel();
    let st = cluster.stats.clone();
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        let activity = Activity::since(Instant::now());
        let (read, gather) = gather::split(tcp, &activity);
        // Every write of a turn of this task goes out in one syscall.
        gather
            .around(async {
                let io = Link {
                    read,
                    gather: &gather,
                };
                let started = Instant::now();
                let mut builder = h2::client::Builder::new();
                builder
                    // The stream limit before the peer's first SETTINGS: a value no peer sends, so that
                    // the SETTINGS are seen to have come when it changes (h2 then takes their
                    // SETTINGS_MAX_CONCURRENT_STREAMS, or unlimited when absent).
                    .initial_max_send_streams(BEFORE_SETTINGS)
                    // Windows of 2 MiB (a stream's) and 5 MiB (the connection's), a send buffer of
                    // 1 MiB per stream, no push: what the proxy had from hyper, whose defaults these are.
                    .initial_window_size(2 << 20)
                    .initial_connection_window_size(5 << 20)
                    .max_send_buffer_size(1 << 20)
                    .max_header_list_size(16 * 1024)
                    .max_local_error_reset_streams(Some(1024))
                    .enable_push(false);
                let handshake = builder.handshake::<_, Bytes>(io);
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
                let mut conn = pin!(conn);
                // Drives the connection, copying the peer's stream limit out after each turn (a load
                // and a store), and saying once its SETTINGS have come.
                let settled = AtomicBool::new(false);
                let mut run = poll_fn(|cx| {
                    let r = conn.as_mut().poll(cx);
                    let peer_max = conn.max_concurrent_send_streams();
                    if peer_max != BEFORE_SETTINGS {
                        max.store(u32::try_from(peer_max).unwrap_or(u32::MAX), Relaxed);
                        settled.store(true, Relaxed);
                    }
                    r
                });
                // Until the SETTINGS come (on loopback, in the first turn or so).
                let settings = poll_fn(|cx| match Pin::new(&mut run).poll(cx) {
                    Poll::Ready(r) => Poll::Ready(Some(r)),
                    Poll::Pending if settled.load(Relaxed) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
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
                // (Were the stream that opened it gone, the connection closes, having no handle.)
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
                if let Some(c) = weak.upgrade() {
                    c.h2.forget(&streams);
                    if counted.is_some() {
                        c.h2.conns_open.fetch_sub(1, Relaxed);
                        c.sync_gauges();
                    }
                }
            })
            .await;
    });
    rx.await
        .map_err(|_| std::io::Error::other("the connection's task ended"))?
}

/// The request as it goes upstream: the client appended to `x-forwarded-for` where the
/// listener says so. Hop-by-hop headers (RFC 9113 §8.2.2) cannot be there: h2 refuses a
/// stream that carries them.
fn upstream_request(mut req: Request<()>, conn: &Downconn) -> Request<()> {
    if let Some(ip) = &conn.client_ip {
        forwarded_for(req.headers_mut(), ip);
    }
    req
}

/// Adds the client's address to `x-forwarded-for`: appended to the value the client sent when
/// that is text, else in its place.
fn forwarded_for(headers: &mut HeaderMap, ip: &HeaderValue) {
    use hyper::header::Entry;
    match headers.entry(HeaderName::from_static("x-forwarded-for")) {
        Entry::Vacant(e) => {
            e.insert(ip.clone());
        }
        Entry::Occupied(mut e) => {
            let joined = e.get().to_str().ok().and_then(|v| {
                let mut b = Vec::with_capacity(v.len() + 2 + ip.len());
                b.extend_from_slice(v.as_bytes());
                b.extend_from_slice(b", ");
                b.extend_from_slice(ip.as_bytes());
                HeaderValue::from_maybe_shared(Bytes::from(b)).ok()
            });
            e.insert(joined.unwrap_or_else(|| ip.clone()));
        }
    }
}

/// A copy of a request head (counted references to its bytes; the header map's tables are
/// allocated anew).
fn copy(r: &Request<()>) -> Request<()> {
    let mut c = Request::new(());
    *c.method_mut() = r.method().clone();
    *c.uri_mut() = r.uri().clone();
    *c.version_mut() = r.version();
    *c.headers_mut() = r.headers().clone();
    c
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Sends an answer the proxy makes: for gRPC a trailers-only response (`grpc-status` in the
/// headers, HTTP 200, no body), as Envoy sends; else `status` with `text`. The body bytes sent.
fn local(
    respond: &mut SendResponse<Bytes>,
    grpc: bool,
    status: StatusCode,
    grpc_status: u16,
    text: &'static str,
    overloaded: bool,
) -> u64 {
    let mut r = Response::new(());
    let h = r.headers_mut();
    if grpc {
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
    } else {
        h.insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        h.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(text.len()));
        *r.status_mut() = status;
    }
    if overloaded {
        r.headers_mut().insert(
            HeaderName::from_static("x-envoy-overloaded"),
            HeaderValue::from_static("true"),
        );
    }
    match respond.send_response(r, grpc) {
        Ok(mut body) if !grpc => {
            // A few bytes: buffered by h2 until the window has room.
            let _ = body.send_data(Bytes::from_static(text.as_bytes()), true);
            text.len() as u64
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_added_to_x_forwarded_for() {
        let ip = HeaderValue::from_static("10.0.0.7");
        fn xff(h: &HeaderMap) -> Vec<String> {
            h.get_all("x-forwarded-for")
                .iter()
                .map(|v| v.to_str().unwrap_or("?").to_string())
                .collect()
        }
        let mut h = HeaderMap::new();
        forwarded_for(&mut h, &ip);
        assert_eq!(xff(&h), ["10.0.0.7"]);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        forwarded_for(&mut h, &ip);
        assert_eq!(xff(&h), ["1.2.3.4, 10.0.0.7"]);
        // Not text: replaced.
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_bytes(b"\xff").unwrap());
        forwarded_for(&mut h, &ip);
        assert_eq!(xff(&h), ["10.0.0.7"]);
    }

    fn cluster() -> Arc<Cluster> {
        Cluster::new(
            "t".into(),
            "127.0.0.1:9".parse().unwrap(),
            config::Limits::default(),
            crate::cluster::Timeouts {
                connect: std::time::Duration::from_secs(1),
                idle: std::time::Duration::from_secs(60),
            },
            &crate::stats::Registry::default(),
        )
    }

    /// With `max-requests` 1, one stream admitted and a second waiting: the second's receiver.
    fn second_waits(c: &Cluster) -> oneshot::Receiver<()> {
        assert!(matches!(c.h2.admit(Some(1), Some(1)), Admit::Go));
        let Admit::Wait(rx) = c.h2.admit(Some(1), Some(1)) else {
            panic!("the second stream should wait");
        };
        rx
    }

    /// A slot handed to a waiter whose wait ends (timed out, or the stream reset) just as it
    /// comes is given back, not lost.
    #[tokio::test]
    async fn a_slot_handed_to_a_waiter_that_gave_up_is_given_back() {
        let c = cluster();
        let rx = second_waits(&c);
        let waiting = Waiting { rx, cluster: &c };
        // The first stream ends: its slot goes to the waiter...
        c.h2.release();
        assert_eq!(c.h2.state(), (1, 0));
        // ...which gave up before taking it.
        drop(waiting);
        assert_eq!(c.h2.state(), (0, 0));
    }

    /// A waiter that takes its slot keeps it.
    #[tokio::test]
    async fn a_waiter_that_takes_its_slot_keeps_it() {
        let c = cluster();
        let rx = second_waits(&c);
        c.h2.release();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        assert!(Waiting { rx, cluster: &c }.until(deadline).await);
        assert_eq!(c.h2.state(), (1, 0));
    }

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    /// A stream's hash key comes from its header map as HTTP/1's comes from its head: a
    /// header in any case, trimmed; a cookie in any of its fields; `host` as `:authority`.
    #[test]
    fn a_streams_hash_key_reads_its_headers_cookies_and_authority() {
        use crate::balancer::stable_hash;
        let peer = "10.0.0.7:4000".parse().unwrap();
        let req = request(
            "http://reviews:9080/x",
            &[
                ("x-user", "jason"),
                ("cookie", "theme=dark"),
                ("cookie", "session=s1"),
            ],
        );
        let header = |n: &str| hash_key(&HashOn::Header(n.into()), &req, peer);
        assert_eq!(header("x-user"), Some(stable_hash(b"jason")));
        assert_eq!(header("X-User"), Some(stable_hash(b"jason")));
        assert_eq!(header("host"), Some(stable_hash(b"reviews:9080")));
        assert_eq!(header("absent"), None);
        let cookie = HashOn::Cookie {
            name: "session".into(),
            ttl_ms: None,
        };
        assert_eq!(hash_key(&cookie, &req, peer), Some(stable_hash(b"s1")));
        assert_eq!(
            hash_key(&HashOn::SourceIp, &req, peer),
            Some(stable_hash(b"10.0.0.7"))
        );
    }

    /// A mirror's copy names its host `-shadow`, in `:authority` and in `host`, port kept.
    #[test]
    fn a_shadow_head_marks_authority_and_host() {
        let req = request("http://reviews:9080/x?a=1", &[("host", "reviews:9080")]);
        let c = shadow_head(req).unwrap();
        assert_eq!(c.uri().to_string(), "http://reviews-shadow:9080/x?a=1");
        assert_eq!(c.headers()["host"], "reviews-shadow:9080");
    }

    /// A redirect's `Location` from the stream's scheme, authority, path and query.
    #[test]
    fn a_streams_redirect_is_built_from_its_pseudo_headers() {
        let req = request("http://reviews:9080/old/page?x=1", &[]);
        let to = Redirect {
            scheme: None,
            hostname: None,
            path: Some(config::api::PathModifier::ReplacePrefixMatch("/new".into())),
            port: None,
            status: 301,
        };
        assert_eq!(
            redirect(&req, &to, Some(b"/old")),
            Local::Redirect(
                301,
                HeaderValue::from_static("http://reviews:9080/new/page?x=1")
            )
        );
    }
}
