//! Envoy's response flags and the answers the proxy makes itself: for each way an exchange can
//! end early, the status, the text the client reads, the flag the access log shows, and the
//! stats it counts, in one table.

use std::borrow::Cow;

use crate::h1::ChunkedError;
use crate::stats::ClusterStats;

pub const OVERFLOW_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: overflow";
pub const CONNECT_FAIL_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure";
pub const RESET_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection termination";
pub const PROTOCOL_ERROR_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: protocol error";
pub const NO_HEALTHY_UPSTREAM_BODY: &str = "no healthy upstream";
pub const TIMEOUT_BODY: &str = "upstream request timeout";
pub const STREAM_IDLE_BODY: &str = "stream timeout";
pub const FAULT_ABORT_BODY: &str = "fault filter abort";
pub const NO_BACKEND_BODY: &str =
    "the route has no usable backend for this request (the HTTPRoute's status.parents says why)";

/// Envoy's response flags, as the access log shows them (`-`: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseFlag {
    None,
    /// `UO`: a pool limit refused the request.
    UpstreamOverflow,
    /// `UF`: no connection to upstream.
    UpstreamConnectionFailure,
    /// `UH`: the cluster has no endpoint (no pod ready behind the Service).
    NoHealthyUpstream,
    /// `UT`: no response head in time.
    UpstreamRequestTimeout,
    /// `UC`: upstream closed or reset before a response head.
    UpstreamConnectionTermination,
    /// `UPE`: upstream answered something that is not HTTP/1.x.
    UpstreamProtocolError,
    /// `UR`: upstream closed or broke mid-body.
    UpstreamRemoteReset,
    /// `DC`: the client went away.
    DownstreamConnectionTermination,
    /// `SI`: no byte moved either way for `--idle-timeout` (Envoy's stream idle timeout).
    StreamIdleTimeout,
    /// `DPE`: the client sent something that is not HTTP/1.x (a malformed chunked body).
    DownstreamProtocolError,
    /// `NR`: no route matched (404).
    NoRouteFound,
    /// `FI`: an `HTTPFault` aborted the request.
    FaultInjected,
}

impl ResponseFlag {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ResponseFlag::None => "-",
            ResponseFlag::UpstreamOverflow => "UO",
            ResponseFlag::UpstreamConnectionFailure => "UF",
            ResponseFlag::NoHealthyUpstream => "UH",
            ResponseFlag::UpstreamRequestTimeout => "UT",
            ResponseFlag::UpstreamConnectionTermination => "UC",
            ResponseFlag::UpstreamProtocolError => "UPE",
            ResponseFlag::UpstreamRemoteReset => "UR",
            ResponseFlag::DownstreamConnectionTermination => "DC",
            ResponseFlag::StreamIdleTimeout => "SI",
            ResponseFlag::DownstreamProtocolError => "DPE",
            ResponseFlag::NoRouteFound => "NR",
            ResponseFlag::FaultInjected => "FI",
        }
    }

    /// Where Envoy lists the flag when there are several (its `ALL_RESPONSE_STRINGS_FLAGS`
    /// order); `DI` comes at 10 and `URX` at 15.
    fn rank(self) -> u8 {
        match self {
            ResponseFlag::None => 0,
            ResponseFlag::NoHealthyUpstream => 2,
            ResponseFlag::UpstreamRequestTimeout => 3,
            ResponseFlag::UpstreamRemoteReset => 5,
            ResponseFlag::UpstreamConnectionFailure => 6,
            ResponseFlag::UpstreamConnectionTermination => 7,
            ResponseFlag::UpstreamOverflow => 8,
            ResponseFlag::NoRouteFound => 9,
            ResponseFlag::FaultInjected => 11,
            ResponseFlag::DownstreamConnectionTermination => 14,
            ResponseFlag::StreamIdleTimeout => 16,
            ResponseFlag::DownstreamProtocolError => 18,
            ResponseFlag::UpstreamProtocolError => 23,
        }
    }

    /// The access log's flags field: this flag with `DI` (a delay was injected) and `URX` (the
    /// route's retries ran out), comma-separated in Envoy's order.
    pub(crate) fn with(self, delayed: bool, retries_exhausted: bool) -> Cow<'static, str> {
        if !delayed && !retries_exhausted {
            return Cow::Borrowed(self.as_str());
        }
        let mut flags: Vec<(u8, &str)> = Vec::with_capacity(3);
        if self != ResponseFlag::None {
            flags.push((self.rank(), self.as_str()));
        }
        if delayed {
            flags.push((10, "DI"));
        }
        if retries_exhausted {
            flags.push((15, "URX"));
        }
        flags.sort_by_key(|f| f.0);
        Cow::Owned(flags.iter().map(|f| f.1).collect::<Vec<_>>().join(","))
    }
}

/// The answers the proxy makes itself (Envoy's texts and response flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Local {
    /// A pool limit refused the request: 503 with `x-envoy-overloaded: true` (`UO`).
    Overflow,
    /// No connection to upstream (`UF`).
    ConnectFailed,
    /// The cluster has no endpoint: 503 `no healthy upstream` (`UH`).
    NoHealthyUpstream,
    /// No response head within `--request-timeout` (`UT`).
    Timeout,
    /// Upstream closed or reset before a response head (`UC`).
    Reset,
    /// Upstream answered something that is not HTTP/1.x (`UPE`).
    ProtocolError,
    /// No byte moved either way for `--idle-timeout` before a response head: 408 (`SI`).
    StreamIdle,
    /// The client's chunked body is malformed: 400 naming the fault (`DPE`).
    BadBody(ChunkedError),
    /// No route matched: 404 (`NR`).
    NoRoute,
    /// The matched rule has nothing to send to (no backend, or every weight 0): 500.
    NoBackend,
    /// An `HTTPFault` abort, with its status: body `fault filter abort` (`FI`).
    FaultAbort(u16),
}

/// What a [`Local`] answer says and how the access log marks it.
pub(super) struct Reply {
    pub code: u16,
    pub reason: &'static str,
    pub body: Cow<'static, str>,
    pub flag: ResponseFlag,
    /// `x-envoy-overloaded: true`.
    pub overloaded: bool,
}

impl Local {
    pub(super) fn reply(self) -> Reply {
        let (code, reason, body, flag) = match self {
            Local::Overflow => (
                503,
                "Service Unavailable",
                Cow::Borrowed(OVERFLOW_BODY),
                ResponseFlag::UpstreamOverflow,
            ),
            Local::ConnectFailed => (
                503,
                "Service Unavailable",
                Cow::Borrowed(CONNECT_FAIL_BODY),
                ResponseFlag::UpstreamConnectionFailure,
            ),
            Local::NoHealthyUpstream => (
                503,
                "Service Unavailable",
                Cow::Borrowed(NO_HEALTHY_UPSTREAM_BODY),
                ResponseFlag::NoHealthyUpstream,
            ),
            Local::Timeout => (
                504,
                "Gateway Timeout",
                Cow::Borrowed(TIMEOUT_BODY),
                ResponseFlag::UpstreamRequestTimeout,
            ),
            Local::Reset => (
                503,
                "Service Unavailable",
                Cow::Borrowed(RESET_BODY),
                ResponseFlag::UpstreamConnectionTermination,
            ),
            Local::ProtocolError => (
                503,
                "Service Unavailable",
                Cow::Borrowed(PROTOCOL_ERROR_BODY),
                ResponseFlag::UpstreamProtocolError,
            ),
            Local::StreamIdle => (
                408,
                "Request Timeout",
                Cow::Borrowed(STREAM_IDLE_BODY),
                ResponseFlag::StreamIdleTimeout,
            ),
            Local::NoRoute => (
                404,
                "Not Found",
                Cow::Borrowed(""),
                ResponseFlag::NoRouteFound,
            ),
            Local::NoBackend => (
                500,
                "Internal Server Error",
                Cow::Borrowed(NO_BACKEND_BODY),
                ResponseFlag::None,
            ),
            Local::FaultAbort(code) => (
                code,
                hyper::StatusCode::from_u16(code)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("Fault"),
                Cow::Borrowed(FAULT_ABORT_BODY),
                ResponseFlag::FaultInjected,
            ),
            Local::BadBody(e) => (
                400,
                "Bad Request",
                Cow::Owned(format!(
                    "malformed chunked request body: {e} (expected hex chunk sizes, \
                     each line ended by CRLF, RFC 9112 §7.1)"
                )),
                ResponseFlag::DownstreamProtocolError,
            ),
        };
        Reply {
            code,
            reason,
            body,
            flag,
            overloaded: self == Local::Overflow,
        }
    }

    /// Counts the answer in the cluster's stats as Envoy does: its code as an upstream response
    /// code, except for an overflow, which never reached upstream.
    pub(super) fn count(self, st: &ClusterStats, code: u16) {
        match self {
            // Neither reached upstream.
            Local::Overflow => {}
            Local::NoHealthyUpstream => st.upstream_cx_none_healthy.inc(),
            Local::ConnectFailed => st.count_code(code),
            Local::Timeout => {
                st.upstream_rq_timeout.inc();
                st.count_code(code);
            }
            Local::Reset | Local::ProtocolError => {
                st.upstream_rq_rx_reset.inc();
                st.count_code(code);
            }
            // The request may have reached upstream, cut short: its connection is closed.
            Local::StreamIdle | Local::BadBody(_) => st.upstream_rq_tx_reset.inc(),
            // Answered before any cluster (the listener counts them).
            Local::NoRoute | Local::NoBackend | Local::FaultAbort(_) => {}
        }
    }
}
