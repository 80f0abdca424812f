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

/// Envoy's response flags, as the access log shows them (`-`: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ResponseFlag {
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
}

impl ResponseFlag {
    pub(super) fn as_str(self) -> &'static str {
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
        }
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
        }
    }
}
