//! What both roles share about a head: the limits, how a head is parsed and refused, which header
//! names the proxy looks at, what `connection` and the framing headers say, and the second pass
//! that writes a head on to the next hop with the hop-by-hop headers (RFC 9110 §7.6.1) removed.
//! [`super::request`] and [`super::response`] add only what their role decides differently.

use std::mem::MaybeUninit;

/// The most header lines a head may have (hyper's and Envoy's default is 100).
pub const MAX_HEADERS: usize = 100;
/// The largest head accepted, in bytes (Envoy's default `max_request_headers_kb` is 60).
pub const MAX_HEAD: usize = 60 * 1024;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    Close,
    /// A `101 Switching Protocols`: the connection becomes a tunnel.
    Upgrade,
}

/// Why a head was refused, one variant per refusal. The text is what a refused client reads in
/// the body of its 400, 431 or 405 (see [`HeadError::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not HTTP/1.x syntax, as `httparse` found it.
    #[error("malformed HTTP/1 head: {}", syntax_reason(.0))]
    Syntax(httparse::Error),
    /// `content-length` with something other than digits.
    #[error("malformed HTTP/1 head: content-length is not a number")]
    ContentLengthNotANumber,
    /// `content-length` values that disagree (identical repeats are allowed, RFC 9110 §8.6).
    #[error("malformed HTTP/1 head: conflicting content-length values")]
    ConflictingContentLengths,
    /// A request with both `transfer-encoding` and `content-length`: the two ends of a hop could
    /// disagree on where the body ends (request smuggling, RFC 9112 §6.3).
    #[error("malformed HTTP/1 head: both transfer-encoding and content-length (a smuggling risk)")]
    RequestLengthAndTransferEncoding,
    /// A request whose last transfer coding is not `chunked` (or an HTTP/1.0 request with one):
    /// its end could not be found (RFC 9112 §6.3).
    #[error("malformed HTTP/1 head: transfer-encoding must end in chunked")]
    TransferEncodingNotChunked,
    /// A request with codings besides `chunked` (`gzip, chunked`), or `transfer-encoding` given
    /// twice: only plain `chunked` is forwarded, as Envoy and nginx do (501, RFC 9112 §6.1).
    #[error("transfer-encoding other than a single `chunked` is not implemented")]
    TransferEncodingUnsupported,
    /// A request without `host` (RFC 9112 §3.2; an HTTP/1.0 one too, as it goes on as HTTP/1.1).
    #[error("malformed HTTP/1 head: no host header")]
    MissingHost,
    /// More than one `host` header (RFC 9112 §3.2).
    #[error("malformed HTTP/1 head: more than one host header")]
    DuplicateHost,
    /// A method with lower-case letters: methods are case-sensitive (RFC 9110 §9.1) and every
    /// registered one is upper case, so `get` is a client bug, not `GET`.
    #[error("malformed HTTP/1 head: the method has lower-case letters (methods are case-sensitive: GET, not get)")]
    LowercaseMethod,
    /// A response with both `transfer-encoding` and `content-length`.
    #[error("malformed HTTP/1 head: both transfer-encoding and content-length")]
    ResponseLengthAndTransferEncoding,
    /// A `101` to a request that did not ask to upgrade.
    #[error("malformed HTTP/1 head: 101 Switching Protocols without an upgrade request")]
    UnrequestedUpgrade,
    /// Over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] lines.
    #[error("HTTP/1 head over {} bytes or {} header lines", MAX_HEAD, MAX_HEADERS)]
    TooLarge,
    /// `CONNECT`: well-formed, but tunnels are not proxied.
    #[error("CONNECT is not proxied")]
    Connect,
}

impl HeadError {
    /// The status and reason a refused request is answered with.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            HeadError::TooLarge => (431, "Request Header Fields Too Large"),
            HeadError::Connect => (405, "Method Not Allowed"),
            HeadError::TransferEncodingUnsupported => (501, "Not Implemented"),
            _ => (400, "Bad Request"),
        }
    }
}

fn syntax_reason(e: &httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status line",
        httparse::Error::Token => "invalid method or token",
        httparse::Error::Version => "not HTTP/1.0 or HTTP/1.1",
        httparse::Error::TooManyHeaders => "too many headers",
    }
}

/// Room for a head's headers, left uninitialised: `httparse` fills only what it finds.
pub(super) type HeaderStorage<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS];

#[inline]
pub(super) const fn header_storage<'b>() -> HeaderStorage<'b> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// A request or a response, as `httparse` parses it.
pub(super) trait Message<'h, 'b> {
    fn parse_into(
        &mut self,
        buf: &'b [u8],
        storage: &'h mut HeaderStorage<'b>,
    ) -> httparse::Result<usize>;
}

impl<'h, 'b> Message<'h, 'b> for httparse::Request<'h, 'b> {
    #[inline]
    fn parse_into(
        &mut self,
        buf: &'b [u8],
        storage: &'h mut HeaderStorage<'b>,
    ) -> httparse::Result<usize> {
        httparse::ParserConfig::default().parse_request_with_uninit_headers(self, buf, storage)
    }
}

impl<'h, 'b> Message<'h, 'b> for httparse::Response<'h, 'b> {
    #[inline]
    fn parse_into(
        &mut self,
        buf: &'b [u8],
        storage: &'h mut HeaderStorage<'b>,
    ) -> httparse::Result<usize> {
        httparse::ParserConfig::default().parse_response_with_uninit_headers(self, buf, storage)
    }
}

/// Parses the head at the start of `buf` into `msg`: its length once complete, `None` while not.
#[inline]
pub(super) fn parse<'h, 'b>(
    msg: &mut impl Message<'h, 'b>,
    buf: &'b [u8],
    storage: &'h mut HeaderStorage<'b>,
) -> Result<Option<usize>, HeadError> {
    match msg.parse_into(buf, storage) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(e) => Err(HeadError::Syntax(e)),
    }
}

/// Names the proxy looks at; everything else is passed through without a second look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Known {
    Connection,
    KeepAlive,
    ProxyConnection,
    Te,
    Upgrade,
    ContentLength,
    TransferEncoding,
    Expect,
    XRequestId,
    XForwardedFor,
    Host,
    /// Sent with `upgrade: h2c`, which is never forwarded.
    Http2Settings,
    UserAgent,
    Other,
}

fn known(name: &str) -> Known {
    let b = name.as_bytes();
    let Some(&first) = b.first() else {
        return Known::Other;
    };
    let is = |s: &str| name.eq_ignore_ascii_case(s);
    // Length and first letter pick at most two candidates; most names stop there.
    match (b.len(), first | 0x20) {
        (2, b't') if is("te") => Known::Te,
        (4, b'h') if is("host") => Known::Host,
        (6, b'e') if is("expect") => Known::Expect,
        (7, b'u') if is("upgrade") => Known::Upgrade,
        (10, b'c') if is("connection") => Known::Connection,
        (10, b'k') if is("keep-alive") => Known::KeepAlive,
        (10, b'u') if is("user-agent") => Known::UserAgent,
        (12, b'x') if is("x-request-id") => Known::XRequestId,
        (14, b'h') if is("http2-settings") => Known::Http2Settings,
        (14, b'c') if is("content-length") => Known::ContentLength,
        (15, b'x') if is("x-forwarded-for") => Known::XForwardedFor,
        (16, b'p') if is("proxy-connection") => Known::ProxyConnection,
        (17, b't') if is("transfer-encoding") => Known::TransferEncoding,
        _ => Known::Other,
    }
}

/// Comma-separated tokens of a header value, trimmed, empty ones skipped.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').filter_map(|t| {
        let t = t.trim_ascii();
        (!t.is_empty()).then_some(t)
    })
}

/// What the `connection` headers of a message say.
#[derive(Default)]
pub(super) struct ConnectionTokens<'b> {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// Other headers named as hop-by-hop (kept to a few; more is unheard of).
    named: [&'b [u8]; 8],
    n_named: usize,
}

impl<'b> ConnectionTokens<'b> {
    fn add(&mut self, value: &'b [u8]) {
        for t in tokens(value) {
            if t.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if t.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else if self.n_named < self.named.len() {
                self.named[self.n_named] = t;
                self.n_named += 1;
            }
        }
    }

    /// `name` was listed in `connection` (framing headers and `host` can never be: the next hop
    /// needs them whatever the client says; dropping `host` made the head one the next hop
    /// refuses, found by fuzzing).
    #[inline]
    fn names(&self, name: &str, k: Known) -> bool {
        !matches!(
            k,
            Known::ContentLength | Known::TransferEncoding | Known::Host
        ) && self.named[..self.n_named]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
    }

    /// The rule both roles share: hop-by-hop headers stay on their hop, `upgrade` goes on only
    /// when the next hop is being upgraded too, and so do the headers `connection` names.
    #[inline]
    fn forwards(&self, name: &str, k: Known, upgrading: bool) -> bool {
        match k {
            Known::Connection | Known::KeepAlive | Known::ProxyConnection | Known::Te => false,
            Known::Upgrade => upgrading,
            _ => !(self.n_named > 0 && self.names(name, k)),
        }
    }
}

/// What the framing headers of a message say.
#[derive(Default)]
pub(super) struct FramingHeaders {
    pub length: Option<u64>,
    /// `content-length` came as a list (`3, 3`) or on several lines: the next hop gets one value.
    pub length_repeated: bool,
    pub transfer_encoding: bool,
    /// The last transfer coding is `chunked`.
    pub chunked: bool,
    /// More than one transfer coding, or more than one `transfer-encoding` line.
    pub codings_besides_chunked: bool,
}

impl FramingHeaders {
    fn content_length(&mut self, v: &[u8]) -> Result<(), HeadError> {
        // A list of identical values is allowed (RFC 9110 §8.6), and sent on as one value;
        // anything else is refused.
        self.length_repeated |= self.length.is_some() || v.contains(&b',');
        for t in v.split(|&b| b == b',') {
            let t = t.trim_ascii();
            if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::ContentLengthNotANumber);
            }
            let n: u64 = std::str::from_utf8(t)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(HeadError::ContentLengthNotANumber)?;
            if self.length.is_some_and(|l| l != n) {
                return Err(HeadError::ConflictingContentLengths);
            }
            self.length = Some(n);
        }
        Ok(())
    }

    fn transfer_encoding(&mut self, v: &[u8]) {
        let mut n = 0;
        for t in tokens(v) {
            n += 1;
            self.chunked = t.eq_ignore_ascii_case(b"chunked");
        }
        self.codings_besides_chunked |= self.transfer_encoding || n > 1;
        self.transfer_encoding = true;
    }
}

/// What the first pass over a head's headers found.
pub(super) struct Seen<'b> {
    pub conn: ConnectionTokens<'b>,
    pub framing: FramingHeaders,
    pub upgrade: bool,
    /// `upgrade` offers `h2c`, which is never forwarded (Envoy strips it too).
    pub upgrade_h2c: bool,
    pub expect_continue: bool,
    pub request_id: bool,
    /// `host` lines.
    pub hosts: u8,
}

/// The first pass: classifies every header name into `kinds` (so the second pass reads them
/// back instead of comparing names again) and reads the ones that shape forwarding.
pub(super) fn first_pass<'b>(
    headers: &[httparse::Header<'b>],
    kinds: &mut [Known; MAX_HEADERS],
) -> Result<Seen<'b>, HeadError> {
    let mut seen = Seen {
        conn: ConnectionTokens::default(),
        framing: FramingHeaders::default(),
        upgrade: false,
        upgrade_h2c: false,
        expect_continue: false,
        request_id: false,
        hosts: 0,
    };
    for (h, kind) in headers.iter().zip(kinds.iter_mut()) {
        *kind = known(h.name);
        match *kind {
            Known::Connection => seen.conn.add(h.value),
            Known::ContentLength => seen.framing.content_length(h.value)?,
            Known::TransferEncoding => seen.framing.transfer_encoding(h.value),
            Known::Upgrade => {
                seen.upgrade = true;
                seen.upgrade_h2c |= tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"h2c"));
            }
            Known::Host => seen.hosts = seen.hosts.saturating_add(1),
            Known::Expect => seen.expect_continue = h.value.eq_ignore_ascii_case(b"100-continue"),
            Known::XRequestId => seen.request_id = true,
            _ => {}
        }
    }
    Ok(seen)
}

/// The second pass: writes the headers that go on to the next hop, then `connection: upgrade`
/// if the hop is `upgrading`. `role` sees each header first and decides for the few its role
/// treats differently (`Some(keep)`); the others follow the shared rule. A repeated
/// `content-length` goes on as one value.
#[inline]
#[allow(clippy::too_many_arguments)]
pub(super) fn write_headers<'b>(
    out: &mut Vec<u8>,
    headers: &[httparse::Header<'b>],
    kinds: &[Known; MAX_HEADERS],
    conn: &ConnectionTokens<'_>,
    framing: &FramingHeaders,
    upgrading: bool,
    mut role: impl FnMut(&httparse::Header<'b>, Known) -> Option<bool>,
    lines: &mut impl Mark,
) {
    for (h, &k) in headers.iter().zip(kinds.iter()) {
        let keep = match role(h, k) {
            Some(keep) => keep,
            None => conn.forwards(h.name, k, upgrading),
        };
        if keep && !(k == Known::ContentLength && framing.length_repeated) {
            lines.mark(out.len());
            push_header(out, h.name.as_bytes(), h.value);
        }
    }
    if let (true, Some(n)) = (framing.length_repeated, framing.length) {
        lines.mark(out.len());
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(n.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if upgrading {
        lines.mark(out.len());
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
}

/// Told where each header line written starts.
pub(super) trait Mark {
    fn mark(&mut self, at: usize);
}

/// A response's lines are not needed again.
impl Mark for () {
    #[inline]
    fn mark(&mut self, _: usize) {}
}

/// How many header lines [`Lines`] remembers.
const LINES: usize = 32;

/// Where each header line of a written request head starts, so that the router reads a header
/// per route match without scanning for line ends. Only the first [`LINES`] are kept; a head
/// with more is read by scanning.
#[derive(Debug, Clone, Default)]
pub struct Lines {
    at: [u16; LINES],
    n: u8,
    overflow: bool,
}

impl Lines {
    /// Every line's start, in order, unless there were too many to keep.
    pub fn get(&self) -> Option<&[u16]> {
        (!self.overflow).then(|| &self.at[..usize::from(self.n)])
    }
}

impl Mark for Lines {
    #[inline]
    fn mark(&mut self, at: usize) {
        match (self.at.get_mut(usize::from(self.n)), u16::try_from(at)) {
            (Some(slot), Ok(at)) => {
                *slot = at;
                self.n += 1;
            }
            _ => self.overflow = true,
        }
    }
}

// Inlined (like the other small helpers here) because the roles that call them per header live
// in other modules, which may land in other codegen units: a call per header line shows in
// `make bench-instructions`.
#[inline]
pub(super) fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `HTTP/1.1 <status> <reason>\r\n`, for forwarded responses and local replies alike.
#[inline]
pub(super) fn status_line(out: &mut Vec<u8>, status: u16, reason: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&itoa3(status));
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

#[inline]
fn itoa3(n: u16) -> [u8; 3] {
    let n = n.min(999);
    [
        b'0' + (n / 100) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]
}
