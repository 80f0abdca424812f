//! The end of one request, accounted for once however the exchange ends: the listener's request
//! gauges, the cluster's timing, and the access log entry with its byte counts and flag.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use super::flags::ResponseFlag;
use super::HttpCtx;
use crate::access_log::Entry;
use crate::idle::Activity;
use crate::stats::ClusterStats;

/// The end of one request: counts, logs, releases the request slot. Dropped before `finish`
/// means the exchange was abandoned (`DC`).
pub(super) struct Finish<'a> {
    pub ctx: &'a HttpCtx,
    pub stats: &'a ClusterStats,
    pub start: Instant,
    pub log: Option<Box<Entry>>,
    pub code: u16,
    /// Request body payload bytes received from the client.
    pub received: Count,
    /// Response body payload bytes sent to the client.
    pub sent: Count,
    /// The status of the response head sent on to the client (0: none yet).
    pub code_sent: AtomicU16,
    /// Milliseconds to the response head, plus one (0: none).
    pub upstream_ms: Count,
    /// When body bytes last moved either way (the stream idle timeout).
    pub activity: Activity,
    /// An `HTTPFault` delayed the request (`DI`).
    pub delayed: bool,
    /// The route's retries ran out (`URX`).
    pub retries_exhausted: bool,
    /// From the end of the request to the response head (this try's share, with a route).
    pub timeout: std::time::Duration,
    /// The route's `ResponseHeaderModifier`.
    pub response_headers: Option<&'a config::api::HeaderModifier>,
    done: bool,
}

impl<'a> Finish<'a> {
    /// A request starts: counted on its listener now, and again by whichever end it meets.
    pub(super) fn start(
        ctx: &'a HttpCtx,
        stats: &'a ClusterStats,
        start: Instant,
        log: Option<Box<Entry>>,
    ) -> Finish<'a> {
        ctx.listener.http.downstream_rq_total.inc();
        ctx.listener.http.downstream_rq_active.inc();
        Finish {
            ctx,
            stats,
            start,
            log,
            code: 0,
            received: Count::default(),
            sent: Count::default(),
            code_sent: AtomicU16::new(0),
            upstream_ms: Count::default(),
            activity: Activity::since(start),
            delayed: false,
            retries_exhausted: false,
            timeout: ctx.request_timeout,
            response_headers: None,
            done: false,
        }
    }

    /// The route's retries ran out: flag `URX`, `upstream_rq_retry_limit_exceeded`.
    pub(super) fn retries_ran_out(&mut self) {
        self.retries_exhausted = true;
        self.stats.upstream_rq_retry_limit_exceeded.inc();
    }

    /// The response was delivered in full.
    pub(super) fn complete(mut self) {
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        self.stats.upstream_rq_time.record_ms(ms);
        self.finish(ResponseFlag::None);
    }

    /// The client went away; `upstream` if its request had reached upstream.
    pub(super) fn client_gone(mut self, upstream: bool) {
        if upstream {
            self.stats.upstream_rq_tx_reset.inc();
        }
        self.finish(ResponseFlag::DownstreamConnectionTermination);
    }

    pub(super) fn finish(&mut self, flag: ResponseFlag) {
        if self.done {
            return;
        }
        self.done = true;
        self.ctx.listener.http.downstream_rq_active.dec();
        if let (Some(log), Some(mut e)) = (&self.ctx.access_log, self.log.take()) {
            e.code = self.code;
            e.flags = flag.with(self.delayed, self.retries_exhausted);
            e.bytes_sent = self.sent.get();
            e.bytes_received = self.received.get();
            e.duration_ms = self.start.elapsed().as_millis() as u64;
            e.upstream_time_ms = self.upstream_ms.get().checked_sub(1);
            log.log(*e);
        }
    }
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.finish(ResponseFlag::DownstreamConnectionTermination);
        }
    }
}

/// A byte count written by one task (and read by it at the end): plain loads and stores.
#[derive(Default)]
pub(super) struct Count(AtomicU64);

impl Count {
    pub(super) fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    pub(super) fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}
