//! The HTTP/1.x forwarding path: one task per downstream connection drives both its socket and,
//! for each request, the pooled upstream connection its cluster leases to it.
//!
//! Heads are parsed in place and re-emitted by [`crate::h1`]; bodies are forwarded as they
//! arrive, their framing followed so each connection can be reused at the right byte. Nothing is
//! buffered whole (but a request body up to 64 KiB that a route's retry or mirror needs, read
//! into the client's buffer before the first try: see `read_body`) and nothing is copied between
//! tasks: a request costs one read and one write on each side when its head and body fit in a
//! segment. While it waits for upstream, the task keeps reading the client's side, so a client
//! that goes away cancels its request (`DC`), queued or in flight. Idle connections hold no
//! buffers (see [`crate::iobuf`]).
//!
//! Beside the exchange: `flags` (the answers the proxy makes itself and Envoy's response flags)
//! and `accounting` (what one request counts and logs, however it ends).

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::access_log::{AccessLog, Entry};
use crate::cluster::{AcquireError, Cluster, Lease};
use crate::drain::SideDrain;
use crate::h1::{self, Body, ChunkedError, Framing, HeadError, Request, RequestOpts, ResponseOpts};
use crate::http2::KEEP_LIMIT;
use crate::idle::Ended;
use crate::iobuf::Buf;
use crate::outlier::Outcome;
use crate::router::{self, Rule, Upstream, View};
use crate::stats::{ClusterStats, ListenerStats};
use config::api::{Redirect, Retry};

mod accounting;
pub(crate) mod flags;

use accounting::Finish;
use flags::{Local, ResponseFlag};

/// Settings shared by the connections of one listener.
pub struct HttpCtx {
    pub listener: Arc<ListenerStats>,
    pub request_timeout: Duration,
    /// A client connection waiting for a request head longer than this is closed.
    pub idle_timeout: Duration,
    /// Append the client address to `x-forwarded-for` (inbound and gateway).
    pub add_forwarded_for: bool,
    pub access_log: Option<AccessLog>,
    /// This listener's side of the drain: once it says leave, responses carry
    /// `connection: close`; once it says close, idle connections close.
    pub drain: SideDrain,
    /// Where requests that reach no cluster are counted (404 `NR`, a fault abort): never shown.
    pub nowhere: Arc<ClusterStats>,
}

/// Serves one downstream connection until it closes, or until drain asks it to finish.
pub async fn serve(io: TcpStream, peer: SocketAddr, up: Upstream, ctx: Arc<HttpCtx>) {
    // The client's address as `x-forwarded-for` wants it, formatted once per connection.
    let client_ip = ctx
        .add_forwarded_for
        .then(|| peer.ip().to_canonical().to_string().into_bytes());
    let mut d = Downstream {
        io,
        buf: Buf::new(),
    };
    // One timer per connection, re-armed for the idle wait and for each request: re-arming
    // moves it later, which needs no wake-up of the runtime's driver, unlike a new timer.
    let mut timer = Box::pin(tokio::time::sleep(ctx.idle_timeout));
    let drain = ctx.drain.clone();
    // Idle keep-alive connections stay open while callers are told to leave (their next
    // response says `connection: close`), and close when the listener stops accepting.
    let mut drained = pin!(drain.closed());
    // Where each header line of a request head starts, noted only while routes read them.
    let mut lines = h1::Lines::default();
    // The heads written for upstream and for the client: kept for the connection's next request
    // (a fresh pair per request cost two allocations), and dropped when a large head grew them.
    let mut up_head = Vec::new();
    let mut down_head = Vec::new();
    loop {
        up_head.clear();
        let routed = matches!(&up, Upstream::Routed { routes, .. } if routes.installed());
        let opts = RequestOpts {
            forwarded_for: client_ip.as_deref(),
            log: ctx.access_log.is_some(),
        };
        let next = tokio::select! {
            biased;
            r = d.read_head(&opts, &mut up_head, routed.then_some(&mut lines)) => r,
            _ = timer.as_mut() => return, // idle (or a head too slow): close
            _ = drained.as_mut(), if d.buf.is_empty() => return,
        };
        let req = match next {
            Ok(Some(req)) => req,
            Ok(None) => return, // closed between requests
            Err(e) => {
                tracing::debug!(%peer, error = %e, "refusing a malformed request");
                ctx.listener.http.downstream_cx_protocol_error.inc();
                let (code, reason) = e.status();
                let mut out = Vec::new();
                // The body says what was wrong with the head, and what is expected.
                let text = e.to_string();
                h1::local_reply(&mut out, code, reason, &text, false, true);
                if let Some(log) = &ctx.access_log {
                    // Envoy's line for a head it could not parse: `"- - -" 400 DPE`.
                    log.log(Entry {
                        start: Some(SystemTime::now()),
                        method: "-".into(),
                        path: "-".into(),
                        protocol: "-",
                        code,
                        flags: ResponseFlag::DownstreamProtocolError.as_str().into(),
                        bytes_sent: text.len() as u64,
                        ..Entry::default()
                    });
                }
                if d.io.write_all(&out).await.is_ok() {
                    linger_close(&mut d.io).await;
                }
                return;
            }
        };
        let keep = Exchange {
            ctx: &ctx,
            up: &up,
            lines: routed.then_some(&lines),
            timer: &mut timer,
            down_head: &mut down_head,
            peer,
        }
        .run(&mut d, req, &mut up_head)
        .await;
        if !keep || ctx.drain.is_draining() {
            return;
        }
        for head in [&mut up_head, &mut down_head] {
            if head.capacity() > KEPT_HEAD {
                *head = Vec::new();
            }
        }
        timer
            .as_mut()
            .reset(tokio::time::Instant::now() + ctx.idle_timeout);
    }
}

struct Downstream {
    io: TcpStream,
    buf: Buf,
}

impl Downstream {
    /// The next request head; `Ok(None)` if the client closed first. Between requests the
    /// connection holds no buffer.
    async fn read_head(
        &mut self,
        opts: &RequestOpts<'_>,
        out: &mut Vec<u8>,
        mut lines: Option<&mut h1::Lines>,
    ) -> Result<Option<Request>, HeadError> {
        loop {
            if !self.buf.is_empty() {
                out.clear();
                let data = self.buf.data();
                let parsed = match lines.as_deref_mut() {
                    Some(lines) => h1::parse_request_indexed(data, opts, out, lines)?,
                    None => h1::parse_request(data, opts, out)?,
                };
                if let Some(r) = parsed {
                    return Ok(Some(r));
                }
            } else {
                self.buf.release();
                if self.io.readable().await.is_err() {
                    return Ok(None);
                }
            }
            match self.buf.read_from(&mut self.io).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }
}

/// One request's trip: everything it needs from its connection.
struct Exchange<'a> {
    ctx: &'a Arc<HttpCtx>,
    up: &'a Upstream,
    /// The request head's line starts, on a connection with routes.
    lines: Option<&'a h1::Lines>,
    timer: &'a mut Pin<Box<Sleep>>,
    /// Where the response head is written for the client (empty; see [`KEPT_HEAD`]).
    down_head: &'a mut Vec<u8>,
    peer: SocketAddr,
}

/// A connection keeps its head buffers between requests up to this capacity.
const KEPT_HEAD: usize = 4096;

/// How the exchange with upstream ended before anything of a final response reached the client.
enum Early {
    Timeout,
    /// No byte moved either way for the idle timeout (the request body stalled, or upstream
    /// stopped taking it).
    Idle,
    /// The client's chunked body is malformed.
    BadBody(ChunkedError),
    /// Closed or reset before a response head; `silent` if not one byte came back.
    Reset {
        silent: bool,
    },
    Protocol(HeadError),
    /// The client went away.
    ClientGone,
    /// A status the route retries, and the retry is granted: nothing was relayed.
    Retry(u16),
}

/// How a response that reached the client ended.
enum Delivered {
    /// In full; `keep_alive` if the client's connection can carry another request.
    Complete { keep_alive: bool },
    /// `101 Switching Protocols` was sent on: the connections become a tunnel.
    Upgrade,
    /// Upstream closed or broke mid-body (`UR`).
    UpstreamReset,
    /// The client went away mid-body (`DC`).
    ClientGone,
    /// No byte moved either way for the idle timeout (`SI`).
    Idle,
    /// The client's chunked body turned out malformed after the response head (`DPE`).
    BadBody,
}

/// How the request body's side ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pump {
    /// The client closed.
    ClientGone,
    /// The client's chunked body is malformed.
    BadBody(ChunkedError),
    /// Upstream stopped taking the body (it may still answer).
    UpstreamStopped,
}

impl Exchange<'_> {
    /// Forwards one request and its response. True if the client's connection can be reused.
    async fn run(self, d: &mut Downstream, mut req: Request, up_head: &mut Vec<u8>) -> bool {
        let Exchange {
            ctx,
            up,
            lines,
            timer,
            down_head,
            peer,
        } = self;
        let start = Instant::now();
        // The codec filled in the request's fields; the rest are the exchange's.
        let log = req.log.take().map(|mut e| {
            e.start = Some(SystemTime::now());
            e
        });
        // Which route and which cluster (a connection to a Service with routes may send each
        // request elsewhere).
        let table;
        let mut route = None;
        let (cluster, refused) = match up {
            Upstream::Cluster(c) => (Some(c), None),
            Upstream::Routed { default, routes } => {
                table = routes.get();
                match &table {
                    None if default.is_none() => (None, Some(Local::NoRoute)),
                    None => (default.as_ref(), None),
                    Some(t) => match t.pick(&match lines {
                        Some(lines) => View::of_request(up_head, &req, lines),
                        None => View::of(up_head),
                    }) {
                        None => (None, Some(Local::NoRoute)),
                        Some(p) => {
                            let c = p.rule.backend();
                            let refused = (c.is_none() && p.rule.redirect.is_none())
                                .then_some(Local::NoBackend);
                            route = Some(p);
                            (c, refused)
                        }
                    },
                }
            }
        };
        let st = cluster.map_or(&*ctx.nowhere, |c| &*c.stats);
        let mut rq = Finish::start(ctx, st, start, log);
        d.buf.consume(req.head_len);
        let mut body = Body::new(req.body);
        timer
            .as_mut()
            .reset(tokio::time::Instant::from_std(start) + ctx.request_timeout);
        if let Some(what) = refused {
            if what == Local::NoRoute {
                ctx.listener.http.no_route.inc();
            }
            return rq.local(d, &body, &req, what).await;
        }
        let mut retry = None;
        let mut backend_timeout = None;
        // The body was waited for (see `read_body`): the request timeout starts after it.
        let mut restart = false;
        if let Some(p) = &route {
            let r = p.rule;
            if let Some(f) = &r.fault {
                if let Some(delay) = router::fault_delay(f, &ctx.listener.http) {
                    rq.delayed = true;
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = watch(&mut d.io, &mut d.buf) => {
                            rq.client_gone(false);
                            return false;
                        }
                    }
                }
                if let Some(status) = router::fault_abort(f, &ctx.listener.http) {
                    return rq.local(d, &body, &req, Local::FaultAbort(status)).await;
                }
            }
            if let Some(redirect) = &r.redirect {
                ctx.listener.http.rq_redirect.inc();
                return rq
                    .redirect(d, &body, &req, up_head, redirect, p.prefix)
                    .await;
            }
            if r.rewrite.is_some() || r.request_headers.is_some() {
                *up_head = rewrite(up_head, r, p.prefix);
            }
            // The copies to make (no allocation when none rolls).
            let copies: Vec<&Arc<Cluster>> = (r.mirrors.iter())
                .filter(|(_, share)| router::roll(*share))
                .map(|(mirror, _)| mirror)
                .collect();
            // A body to send again or to copy is read whole first, when it can be kept: the
            // first try then takes it from the client's buffer in one piece, into `up_head`,
            // where a retry finds it again.
            let whole = match req.body {
                Framing::Empty => Some(0),
                Framing::Length(_) | Framing::Chunked
                    if !copies.is_empty() || r.retry.is_some() =>
                {
                    // The route's clock starts once the request is whole (`restart`).
                    match read_body(ctx, d, &req, &mut restart).await {
                        Ok(whole) => whole,
                        Err(Some(what)) => return rq.local(d, &body, &req, what).await,
                        Err(None) => {
                            rq.client_gone(false);
                            return false;
                        }
                    }
                }
                _ => None,
            };
            for mirror in copies {
                mirror_request(ctx, mirror, up_head, whole.map(|n| &d.buf.data()[..n]));
            }
            rq.response_headers = r.response_headers.as_ref();
            if let Some(t) = r.timeout {
                rq.timeout = t;
            }
            // A request can be sent again if it has no body or its body was read whole.
            retry = r.retry.as_ref().filter(|_| whole.is_some());
            backend_timeout = r.backend_timeout;
        }
        let Some(cluster) = cluster else {
            // A redirect-only rule returned above; this is not reached.
            return rq.local(d, &body, &req, Local::NoBackend).await;
        };
        let st = &cluster.stats;
        let key = cluster.hash_on().and_then(|on| {
            router::hash_key(
                &on,
                |name| View::of(up_head).header(name.as_bytes()).into_iter(),
                peer,
            )
        });
        // The route's timeout covers every try; a delay is not counted (Envoy's fault filter
        // runs before the router's timer starts). Without either, the timer set above stands
        // (re-arming it costs a clock read and a timer-wheel move per request).
        let deadline = if restart || rq.delayed || rq.timeout != ctx.request_timeout {
            let deadline = tokio::time::Instant::now() + rq.timeout;
            timer.as_mut().reset(deadline);
            deadline
        } else {
            timer.deadline()
        };

        let mut attempts = 0;
        let mut tries_left = retry.map_or(0, |r| r.attempts);
        let mut retried = false;
        let mut token = None;
        let (mut lease, ended) = loop {
            let acquired = tokio::select! {
                biased;
                r = cluster.acquire(key) => r,
                _ = timer.as_mut() => {
                    return rq.local(d, &body, &req, Local::Timeout).await;
                }
                _ = watch(&mut d.io, &mut d.buf) => {
                    rq.client_gone(false);
                    return false;
                }
            };
            let mut lease = match acquired {
                Ok(l) => l,
                Err(e) => {
                    if e == AcquireError::ConnectFailed && retry.is_some() {
                        if tries_left > 0 {
                            if let Some(t) = cluster.try_retry() {
                                token = Some(t);
                                tries_left -= 1;
                                retried = true;
                                st.upstream_rq_retry.inc();
                                if !backoff(retry, d, timer).await {
                                    return rq.local(d, &body, &req, Local::Timeout).await;
                                }
                                continue;
                            }
                        } else {
                            rq.retries_ran_out();
                        }
                    }
                    let what = match e {
                        AcquireError::Overflow => Local::Overflow,
                        AcquireError::ConnectFailed => Local::ConnectFailed,
                        AcquireError::NoHost => Local::NoHealthyUpstream,
                    };
                    return rq.local(d, &body, &req, what).await;
                }
            };
            if let Some(e) = rq.log.as_mut() {
                e.upstream_host = Some(lease.host().addr);
            }
            let reused = lease.uses() > 1;
            if let Some(t) = backend_timeout {
                timer
                    .as_mut()
                    .reset(deadline.min(tokio::time::Instant::now() + t));
            }
            // A retryable status is not relayed while a try is left and `maxRetries` allows.
            let mut retry_on = |code: u16| {
                tries_left > 0
                    && retry.is_some_and(|r| r.codes.contains(&code))
                    && cluster.try_retry().map(|t| token = Some(t)).is_some()
            };
            let retry_on: Option<&mut (dyn FnMut(u16) -> bool + Send)> = match retry {
                Some(_) => Some(&mut retry_on),
                None => None,
            };
            let ended = forward(
                &mut lease, d, &req, up_head, &mut body, down_head, timer, &rq, retry_on,
            )
            .await;
            let failed = match &ended {
                Err(Early::Retry(code)) => Some(Outcome::Status(*code)),
                Err(Early::Reset { .. } | Early::Protocol(_)) => Some(Outcome::ConnectFailed),
                // A try's own timeout, the route's still running.
                Err(Early::Timeout) if tokio::time::Instant::now() < deadline => {
                    Some(Outcome::Status(504))
                }
                _ => None,
            };
            match ended {
                // The pooled connection had closed under us and nothing was answered: safe to
                // send again on another connection (no body, idempotent method).
                Err(Early::Reset { silent: true }) if reused && req.replayable && attempts < 2 => {
                    attempts += 1;
                    st.upstream_rq_retry.inc();
                    continue;
                }
                Err(Early::Retry(code)) => {
                    // `retry_on` took a token: this try ends here, unanswered.
                    st.upstream_rq_total.inc();
                    st.count_code(code);
                    lease.report(Outcome::Status(code));
                    drop(lease);
                    tries_left -= 1;
                }
                ended @ Err(Early::Reset { .. } | Early::Protocol(_) | Early::Timeout)
                    if retry.is_some() && failed.is_some() =>
                {
                    let again = tries_left > 0
                        && (token.is_some() || {
                            token = cluster.try_retry();
                            token.is_some()
                        });
                    if !again {
                        if tries_left == 0 {
                            rq.retries_ran_out();
                        }
                        break (lease, ended);
                    }
                    st.upstream_rq_total.inc();
                    if let Some(o) = failed {
                        lease.report(o);
                    }
                    drop(lease);
                    tries_left -= 1;
                }
                ended => break (lease, ended),
            }
            retried = true;
            st.upstream_rq_retry.inc();
            if !backoff(retry, d, timer).await {
                return rq.local(d, &body, &req, Local::Timeout).await;
            }
            timer.as_mut().reset(deadline);
        };
        drop(token);
        st.upstream_rq_total.inc();
        match &ended {
            Ok((code, ..)) => {
                lease.report(Outcome::Status(*code));
                if let Some(r) = retry {
                    if r.codes.contains(code) && tries_left == 0 && r.attempts > 0 {
                        rq.retries_ran_out();
                    } else if retried {
                        st.upstream_rq_retry_success.inc();
                    }
                }
            }
            Err(Early::Reset { .. } | Early::Protocol(_)) => lease.report(Outcome::ConnectFailed),
            Err(Early::Timeout) => {
                lease
                    .host()
                    .rq_timeout
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                lease.report(Outcome::Status(504));
            }
            Err(_) => {}
        }
        let (code, delivered, reusable) = match ended {
            Ok(d) => d,
            Err(early) => {
                // Nothing more will pass on that connection: free its pool slot before answering.
                drop(lease);
                return match early {
                    Early::Timeout => rq.local(d, &body, &req, Local::Timeout).await,
                    Early::Reset { .. } | Early::Retry(_) => {
                        tracing::debug!(cluster = %cluster.name, "upstream reset before headers");
                        rq.local(d, &body, &req, Local::Reset).await
                    }
                    Early::Protocol(e) => {
                        tracing::debug!(cluster = %cluster.name, error = %e, "upstream protocol error");
                        rq.local(d, &body, &req, Local::ProtocolError).await
                    }
                    Early::ClientGone => {
                        rq.client_gone(true);
                        false
                    }
                    Early::Idle => {
                        ctx.listener.http.downstream_rq_idle_timeout.inc();
                        rq.local(d, &body, &req, Local::StreamIdle).await
                    }
                    Early::BadBody(e) => {
                        tracing::debug!(error = %e, "malformed chunked request body");
                        ctx.listener.http.downstream_cx_protocol_error.inc();
                        rq.local(d, &body, &req, Local::BadBody(e)).await
                    }
                };
            }
        };
        rq.code = code;
        match delivered {
            Delivered::Complete { keep_alive } => {
                // Answered before the request body was all sent (an early 413, say): upstream
                // is mid-request on that connection, so it cannot be reused.
                lease.done(reusable && body.is_done());
                drop(lease);
                rq.complete();
                if !body.is_done() {
                    // The client may still be sending the body nobody will read.
                    linger_close(&mut d.io).await;
                }
                keep_alive && body.is_done()
            }
            Delivered::Upgrade => {
                if tunnel(d, lease.conn(), &rq).await == Ended::Idle {
                    ctx.listener.http.downstream_rq_idle_timeout.inc();
                    rq.finish(ResponseFlag::StreamIdleTimeout);
                } else {
                    rq.complete();
                }
                false
            }
            Delivered::UpstreamReset => {
                st.upstream_rq_rx_reset.inc();
                rq.finish(ResponseFlag::UpstreamRemoteReset);
                false
            }
            Delivered::ClientGone => {
                rq.client_gone(true);
                false
            }
            Delivered::Idle => {
                ctx.listener.http.downstream_rq_idle_timeout.inc();
                st.upstream_rq_tx_reset.inc();
                rq.finish(ResponseFlag::StreamIdleTimeout);
                false
            }
            Delivered::BadBody => {
                ctx.listener.http.downstream_cx_protocol_error.inc();
                st.upstream_rq_tx_reset.inc();
                rq.finish(ResponseFlag::DownstreamProtocolError);
                false
            }
        }
    }
}

/// Sends the request on `lease`'s connection and relays the response, the rest of the request
/// body flowing upstream meanwhile.
///
/// Two clocks bound it. The request timeout runs from the end of the request (Envoy's route
/// timeout: an upload is never cut for being slow) to the response head. The stream idle
/// timeout ends the exchange once no body byte moved either way for `--idle-timeout`; it is
/// armed only once a body is still moving after the first read, so a short exchange sets no
/// timer.
///
/// `retry_on` (a route with retries): a response status it accepts is not relayed but returned
/// as [`Early::Retry`].
// Each argument is a separate borrow of the exchange's state, held across awaits.
#[allow(clippy::too_many_arguments)]
async fn forward(
    lease: &mut Lease,
    d: &mut Downstream,
    req: &Request,
    up_head: &mut Vec<u8>,
    body: &mut Body,
    down_head: &mut Vec<u8>,
    timer: &mut Pin<Box<Sleep>>,
    rq: &Finish<'_>,
    mut retry_on: Option<&mut (dyn FnMut(u16) -> bool + Send)>,
) -> Result<(u16, Delivered, bool), Early> {
    let st = rq.stats;
    let up = lease.conn();
    // The head and what has arrived of the body, in one write.
    // (A request sent again had no body: the head is all there is.)
    let (n, payload) = body.take(d.buf.data(), None).map_err(Early::BadBody)?;
    up_head.extend_from_slice(&d.buf.data()[..n]);
    d.buf.consume(n);
    rq.received.add(payload);
    if up.io.write_all(up_head).await.is_err() {
        return Err(Early::Reset { silent: true });
    }
    st.upstream_cx_tx_bytes_total.add(up_head.len() as u64);
    if req.expect_continue && !body.is_done() {
        // The expectation was not forwarded: answer it now that upstream is ready.
        if d.io
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_err()
        {
            return Err(Early::ClientGone);
        }
    }

    let (mut dr, mut dw) = d.io.split();
    let (mut ur, mut uw) = up.io.split();
    let ubuf = &mut up.buf;
    let opts = ResponseOpts {
        head_method: req.head_method,
        upgrade: req.upgrade,
        http10_client: req.http10,
        keep_alive: req.keep_alive,
    };
    // Whether the request body has all gone upstream, as the response head is written: if not,
    // the client is told its connection will close.
    let body_sent = AtomicBool::new(body.is_done());
    // The request timeout (set at the exchange's start) counts only once the request is whole.
    let mut armed = body.is_done();
    // Polled even when the body is all sent: it then watches for the client going away.
    let mut pump_done = false;
    let mut pump = pin!(pump_body(
        &mut dr, &mut d.buf, &mut uw, body, &body_sent, rq
    ));
    let mut resp = pin!(async {
        let head = read_response(
            &mut ur,
            ubuf,
            &mut dw,
            &opts,
            &body_sent,
            &rq.ctx.drain,
            st,
            down_head,
        )
        .await?;
        if let Some(retry_on) = retry_on.as_mut() {
            if retry_on(head.status) {
                return Err(Early::Retry(head.status));
            }
        }
        rq.stats.count_code(head.status);
        relay_response(&mut ur, ubuf, &mut dw, head, down_head, rq).await
    });
    let mut idle = pin!(rq.activity.expired(rq.ctx.idle_timeout));
    let r = poll_fn(|cx| {
        if !pump_done {
            match pump.as_mut().poll(cx) {
                Poll::Ready(Pump::ClientGone) => return Poll::Ready(Err(Early::ClientGone)),
                Poll::Ready(Pump::BadBody(e)) => return Poll::Ready(Err(Early::BadBody(e))),
                Poll::Ready(Pump::UpstreamStopped) => pump_done = true,
                Poll::Pending => {}
            }
        }
        if !armed && body_sent.load(Relaxed) {
            armed = true;
            timer
                .as_mut()
                .reset(tokio::time::Instant::now() + rq.timeout);
        }
        if let Poll::Ready(r) = resp.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if armed && rq.code_sent.load(Relaxed) == 0 && timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(Early::Timeout));
        }
        if rq.activity.touched() && idle.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(Early::Idle));
        }
        Poll::Pending
    })
    .await;
    // After the response head, an early end is a cut-off response.
    match (r, rq.code_sent.load(Relaxed)) {
        (Err(Early::ClientGone), sent) if sent != 0 => Ok((sent, Delivered::ClientGone, false)),
        (Err(Early::Idle), sent) if sent != 0 => Ok((sent, Delivered::Idle, false)),
        (Err(Early::BadBody(_)), sent) if sent != 0 => Ok((sent, Delivered::BadBody, false)),
        (r, _) => r,
    }
}

/// Reads until a final response head, forwarding interim (1xx) ones. Returns the head (already
/// re-encoded for the client in `out`). Whether the client may keep its connection is decided as
/// the head goes out, so a request in flight when a drain starts is answered `connection: close`.
#[allow(clippy::too_many_arguments)]
async fn read_response<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    ur: &mut R,
    ubuf: &mut Buf,
    dw: &mut W,
    opts: &ResponseOpts,
    body_sent: &AtomicBool,
    drain: &SideDrain,
    st: &ClusterStats,
    out: &mut Vec<u8>,
) -> Result<h1::Response, Early> {
    let mut got_any = false;
    loop {
        if !ubuf.is_empty() {
            out.clear();
            let opts = ResponseOpts {
                keep_alive: opts.keep_alive && body_sent.load(Relaxed) && !drain.is_draining(),
                ..*opts
            };
            match h1::parse_response(ubuf.data(), &opts, out) {
                Ok(Some(r)) if r.interim => {
                    ubuf.consume(r.head_len);
                    st.upstream_cx_rx_bytes_total.add(r.head_len as u64);
                    if !out.is_empty() && dw.write_all(out).await.is_err() {
                        return Err(Early::ClientGone);
                    }
                    continue;
                }
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(e) => return Err(Early::Protocol(e)),
            }
        }
        match ubuf.read_from(ur).await {
            Ok(0) | Err(_) => return Err(Early::Reset { silent: !got_any }),
            Ok(_) => got_any = true,
        }
    }
}

/// Sends the response head and body on to the client. Returns the status, how it ended, and
/// whether the upstream connection can be reused.
async fn relay_response<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    ur: &mut R,
    ubuf: &mut Buf,
    dw: &mut W,
    head: h1::Response,
    out: &mut Vec<u8>,
    rq: &Finish<'_>,
) -> Result<(u16, Delivered, bool), Early> {
    let st = rq.stats;
    let code = head.status;
    if let Some(m) = rq.response_headers {
        *out = router::edit_head(out, None, m);
    }
    rq.code_sent.store(code, Relaxed);
    if rq.log.is_some() {
        // Only the access log shows it.
        rq.upstream_ms
            .add(rq.start.elapsed().as_millis() as u64 + 1);
    }
    ubuf.consume(head.head_len);
    st.upstream_cx_rx_bytes_total.add(head.head_len as u64);
    let mut body = Body::new(head.body);
    let decode = head.decode_chunked;
    if head.body == Framing::Upgrade {
        if dw.write_all(out).await.is_err() {
            return Ok((code, Delivered::ClientGone, false));
        }
        return Ok((code, Delivered::Upgrade, false));
    }
    // `out` holds the head: the body bytes already here join it, so a small response goes out in
    // one write; the rest is written as it comes. Decoding (for an HTTP/1.0 client) appends only
    // the payload to `out`, and `out` is what is written.
    loop {
        let taken = if decode {
            body.take(ubuf.data(), Some(&mut *out))
        } else {
            body.take(ubuf.data(), None)
        };
        let Ok((n, payload)) = taken else {
            tracing::debug!("malformed chunked response body");
            return Ok((code, Delivered::UpstreamReset, false));
        };
        let data = &ubuf.data()[..n];
        let w = if decode || !out.is_empty() {
            if !decode {
                out.extend_from_slice(data);
            }
            let w = dw.write_all(out).await;
            out.clear();
            w
        } else {
            dw.write_all(data).await
        };
        ubuf.consume(n);
        st.upstream_cx_rx_bytes_total.add(n as u64);
        rq.sent.add(payload);
        if w.is_err() {
            return Ok((code, Delivered::ClientGone, false));
        }
        if body.is_done() {
            break;
        }
        rq.activity.touch();
        match ubuf.read_from(ur).await {
            Ok(0) if matches!(body, Body::UntilClose) => break,
            Ok(0) | Err(_) => return Ok((code, Delivered::UpstreamReset, false)),
            Ok(_) => {}
        }
    }
    if decode {
        // The last chunk, for an HTTP/1.0 client, is the end of the connection.
        let _ = dw.flush().await;
    }
    // Bytes past the end of the response: the connection is out of step (Lease drops it).
    Ok((
        code,
        Delivered::Complete {
            keep_alive: head.keep_alive,
        },
        head.upstream_reusable,
    ))
}

/// Forwards what is left of the request body, then watches the client's side: returns only if
/// the client goes away (or upstream stops taking the body).
async fn pump_body<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    dr: &mut R,
    dbuf: &mut Buf,
    uw: &mut W,
    body: &mut Body,
    body_sent: &AtomicBool,
    rq: &Finish<'_>,
) -> Pump {
    while !body.is_done() {
        rq.activity.touch();
        match dbuf.read_from(dr).await {
            Ok(0) | Err(_) => return Pump::ClientGone,
            Ok(_) => {}
        }
        let (n, payload) = match body.take(dbuf.data(), None) {
            Ok(taken) => taken,
            Err(e) => return Pump::BadBody(e),
        };
        let w = uw.write_all(&dbuf.data()[..n]).await;
        dbuf.consume(n);
        if w.is_err() {
            return Pump::UpstreamStopped;
        }
        rq.stats.upstream_cx_tx_bytes_total.add(n as u64);
        rq.received.add(payload);
    }
    body_sent.store(true, Relaxed);
    watch(dr, dbuf).await;
    Pump::ClientGone
}

/// Resolves when the client closes its side. Bytes it sends meanwhile (a pipelined request) are
/// kept; once the buffer is full, nothing more is read.
async fn watch<R: AsyncRead + Unpin>(dr: &mut R, dbuf: &mut Buf) {
    loop {
        if dbuf.is_full() {
            return std::future::pending().await;
        }
        match dbuf.read_from(dr).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Writes out what `buf` holds; how many bytes that was.
async fn early(buf: &mut Buf, to: &mut TcpStream) -> std::io::Result<u64> {
    let n = buf.data().len();
    if n > 0 {
        to.write_all(buf.data()).await?;
        buf.consume(n);
    }
    Ok(n as u64)
}

/// After a `101`: bytes flow both ways until both sides close, or none moves for the idle
/// timeout.
async fn tunnel(d: &mut Downstream, up: &mut crate::cluster::Conn, rq: &Finish<'_>) -> Ended {
    let st = rq.stats;
    // Whatever arrived early on either side goes first.
    match early(&mut d.buf, &mut up.io).await {
        Ok(n) => {
            rq.received.add(n);
            st.upstream_cx_tx_bytes_total.add(n);
        }
        Err(_) => return Ended::Closed,
    }
    match early(&mut up.buf, &mut d.io).await {
        Ok(n) => {
            rq.sent.add(n);
            st.upstream_cx_rx_bytes_total.add(n);
        }
        Err(_) => return Ended::Closed,
    }
    d.buf.release();
    up.buf.release();
    let (ended, a, b) =
        crate::idle::copy_until_idle(&mut d.io, &mut up.io, rq.ctx.idle_timeout).await;
    rq.received.add(a);
    rq.sent.add(b);
    st.upstream_cx_tx_bytes_total.add(a);
    st.upstream_cx_rx_bytes_total.add(b);
    ended
}

/// Closes a connection whose client may still be sending (an unread body, a refused head):
/// stop writing, then read and discard for a moment. Closing with unread bytes would make the
/// kernel reset the connection, which can destroy the answer before the client reads it.
async fn linger_close(io: &mut TcpStream) {
    use tokio::io::AsyncReadExt;
    let _ = io.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut total = 0usize;
        while total < 1 << 20 {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

// Answering locally is the exchange's I/O, so it lives here; what it says and counts is the
// `flags` table, and the rest of its accounting is `Finish`'s.
impl Finish<'_> {
    /// Answers the client locally, counting it as Envoy does. The connection is kept only if
    /// the client wants it and no part of its request body is left unread.
    async fn local(mut self, d: &mut Downstream, body: &Body, req: &Request, what: Local) -> bool {
        let reply = what.reply();
        what.count(self.stats, reply.code);
        let keep = req.keep_alive && body.is_done() && !self.ctx.drain.is_draining();
        let mut out = Vec::with_capacity(160 + reply.body.len());
        h1::local_reply(
            &mut out,
            reply.code,
            reply.reason,
            &reply.body,
            reply.overloaded,
            !keep,
        );
        let ok = d.io.write_all(&out).await.is_ok();
        self.code = reply.code;
        self.sent.add(reply.body.len() as u64);
        self.finish(reply.flag);
        if ok && !body.is_done() {
            linger_close(&mut d.io).await;
        }
        ok && keep
    }
}

/// Waits a retry's backoff ([`router::retry_backoff`]: the route's, 25 ms when unset, jittered;
/// it does not grow per retry). False if the client went away or the route's time ran out.
async fn backoff(retry: Option<&Retry>, d: &mut Downstream, timer: &mut Pin<Box<Sleep>>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(router::retry_backoff(retry)) => true,
        _ = timer.as_mut() => false,
        _ = watch(&mut d.io, &mut d.buf) => false,
    }
}

/// The head after the rule's `URLRewrite` and `RequestHeaderModifier`.
fn rewrite(head: &[u8], rule: &Rule, prefix: Option<&[u8]>) -> Vec<u8> {
    let v = View::of(head);
    let mut edits = rule.request_headers.clone().unwrap_or_default();
    let mut target = None;
    if let Some(rw) = &rule.rewrite {
        if let Some(host) = &rw.hostname {
            edits.set.retain(|(n, _)| !n.eq_ignore_ascii_case("host"));
            edits.set.push(("host".into(), host.clone()));
        }
        target = rw
            .path
            .as_ref()
            .map(|m| router::new_path(m, v.path, v.query, prefix));
    }
    router::edit_head(head, target.as_deref(), &edits)
}

/// Reads a request body whole into the client's buffer, ahead of the exchange, so that it can be
/// copied to a mirror and sent again on a retry: `Ok(Some(n))` once its `n` bytes (as they came:
/// a chunked body with its framing) are all there, `Ok(None)` when it is larger than
/// [`KEEP_LIMIT`] (it then streams as usual, neither copied nor retried; a chunked body is known
/// to be larger only once that much of it came). A client that sent `Expect: 100-continue` is
/// answered `100 Continue` first. Waits between reads are bounded by the idle timeout
/// (`Err(Some)`: a 408 `SI`); a malformed chunked body is a 400 `DPE`, as when it streams;
/// `Err(None)`: the client went away. `waited`: whether a read was needed.
async fn read_body(
    ctx: &HttpCtx,
    d: &mut Downstream,
    req: &Request,
    waited: &mut bool,
) -> Result<Option<usize>, Option<Local>> {
    if matches!(req.body, Framing::Length(n) if n > KEEP_LIMIT as u64) {
        return Ok(None);
    }
    // Follows the body's framing over what has come, without consuming it.
    let mut probe = Body::new(req.body);
    let mut seen = 0;
    loop {
        let (n, _) = probe.take(&d.buf.data()[seen..], None).map_err(|e| {
            ctx.listener.http.downstream_cx_protocol_error.inc();
            Some(Local::BadBody(e))
        })?;
        seen += n;
        if probe.is_done() {
            return Ok(Some(seen));
        }
        if seen >= KEEP_LIMIT {
            return Ok(None);
        }
        if !*waited {
            *waited = true;
            if req.expect_continue
                && d.io
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await
                    .is_err()
            {
                return Err(None);
            }
        }
        match tokio::time::timeout(ctx.idle_timeout, d.buf.read_from(&mut d.io)).await {
            Ok(Ok(0) | Err(_)) => return Err(None),
            Ok(Ok(_)) => {}
            Err(_) => {
                ctx.listener.http.downstream_rq_idle_timeout.inc();
                return Err(Some(Local::StreamIdle));
            }
        }
    }
}

// A body kept whole fits the client's read buffer: `read_body` gives up at KEEP_LIMIT before
// the buffer can be full.
const _: () = assert!(KEEP_LIMIT <= crate::iobuf::MAX);

/// Sends a copy of a request (its head, and its body when it was read whole: `None` if it was
/// not) to a mirror, with `-shadow` appended to its host as Envoy does, and throws the answer
/// away. It runs on its own task, so a slow mirror never slows the client; the mirror's own pool
/// bounds how many copies are in flight. A copy is counted `rq_mirrored` once it has a
/// connection, `rq_mirror_dropped` when it cannot go (a body not kept; the mirror's pool full, or
/// no connection), as on HTTP/2.
fn mirror_request(ctx: &HttpCtx, cluster: &Arc<Cluster>, head: &[u8], body: Option<&[u8]>) {
    let http = &ctx.listener.http;
    let Some(body) = body else {
        http.rq_mirror_dropped.inc();
        return;
    };
    let v = View::of(head);
    let head_method = v.method == b"HEAD";
    let host = v
        .header(b"host")
        .map(|h| String::from_utf8_lossy(&router::shadow_host(h)).into_owned())
        .unwrap_or_default();
    let mut copy = router::edit_head(
        head,
        None,
        &config::api::HeaderModifier {
            set: vec![("host".into(), host)],
            ..Default::default()
        },
    );
    copy.extend_from_slice(body);
    let cluster = cluster.clone();
    let stats = ctx.listener.clone();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(router::MIRROR_TIMEOUT, async move {
            let Ok(mut lease) = cluster.acquire(None).await else {
                stats.http.rq_mirror_dropped.inc();
                return;
            };
            stats.http.rq_mirrored.inc();
            let reusable = {
                let up = lease.conn();
                if up.io.write_all(&copy).await.is_err() {
                    return;
                }
                discard_response(up, head_method).await
            };
            lease.done(reusable);
        })
        .await;
    });
}

/// Reads one response and throws it away; true if the connection can carry another request.
async fn discard_response(up: &mut crate::cluster::Conn, head_method: bool) -> bool {
    let opts = ResponseOpts {
        head_method,
        upgrade: false,
        http10_client: false,
        keep_alive: true,
    };
    let mut out = Vec::new();
    let head = loop {
        if !up.buf.is_empty() {
            out.clear();
            match h1::parse_response(up.buf.data(), &opts, &mut out) {
                Ok(Some(r)) if r.interim => {
                    up.buf.consume(r.head_len);
                    continue;
                }
                Ok(Some(r)) => break r,
                Ok(None) => {}
                Err(_) => return false,
            }
        }
        match up.buf.read_from(&mut up.io).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    };
    up.buf.consume(head.head_len);
    let mut body = Body::new(head.body);
    loop {
        let Ok((n, _)) = body.take(up.buf.data(), None) else {
            return false;
        };
        up.buf.consume(n);
        if body.is_done() {
            return head.upstream_reusable;
        }
        match up.buf.read_from(&mut up.io).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

impl Finish<'_> {
    /// Answers with a route's redirect: `Location` built from the request and the filter.
    async fn redirect(
        mut self,
        d: &mut Downstream,
        body: &Body,
        req: &Request,
        head: &[u8],
        r: &Redirect,
        prefix: Option<&[u8]>,
    ) -> bool {
        let v = View::of(head);
        let host = v.header(b"host").unwrap_or_default();
        let location = router::location(r, "http", host, v.path, v.query, prefix);
        let code = r.status;
        let reason = hyper::StatusCode::from_u16(code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Redirect");
        let keep = req.keep_alive && body.is_done() && !self.ctx.drain.is_draining();
        let mut out =
            format!("HTTP/1.1 {code} {reason}\r\nlocation: {location}\r\ncontent-length: 0\r\n");
        if !keep {
            out.push_str("connection: close\r\n");
        }
        out.push_str("\r\n");
        let ok = d.io.write_all(out.as_bytes()).await.is_ok();
        self.code = code;
        self.finish(ResponseFlag::None);
        if ok && !body.is_done() {
            linger_close(&mut d.io).await;
        }
        ok && keep
    }
}
