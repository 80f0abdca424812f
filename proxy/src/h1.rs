//! HTTP/1.x on the wire, for the forwarding path. Pure: no I/O.
//!
//! A request or response head is parsed in place with `httparse` and written out again with only
//! what a proxy must change: hop-by-hop headers (RFC 9110 §7.6.1) dropped, `x-forwarded-for`
//! appended, `x-request-id` added, the version set to HTTP/1.1, and `connection` set for the hop
//! it is sent on. Everything else (names as the client spelled them, order, bodies and their
//! framing) passes through unchanged. [`Chunked`] follows a chunked body byte by byte, so the
//! proxy knows where a message ends without decoding it (or decodes it for an HTTP/1.0 client).

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

/// Why a head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Malformed: answered 400 (a response: treated as an upstream protocol error).
    Bad(&'static str),
    /// Over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] lines: 431.
    TooLarge,
    /// Well-formed but not proxied: 405.
    Unsupported(&'static str),
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::Bad(why) => write!(f, "malformed HTTP/1 head: {why}"),
            HeadError::TooLarge => write!(
                f,
                "HTTP/1 head over {MAX_HEAD} bytes or {MAX_HEADERS} header lines"
            ),
            HeadError::Unsupported(why) => write!(f, "{why}"),
        }
    }
}

/// A request head, as far as forwarding needs it.
#[derive(Debug)]
pub struct Request {
    /// Bytes of the head in the input (the body starts there).
    pub head_len: usize,
    pub body: Framing,
    pub http10: bool,
    /// The client wants the connection kept after this exchange.
    pub keep_alive: bool,
    /// `Connection: upgrade` with an `Upgrade` header: a 101 turns the connection into a tunnel.
    pub upgrade: bool,
    /// `Expect: 100-continue`: the proxy answers `100 Continue` itself once upstream is ready
    /// (Envoy's default), and does not forward the expectation.
    pub expect_continue: bool,
    /// `HEAD`: the response has no body whatever its headers say.
    pub head_method: bool,
    /// Safe to send again on another connection if the first one closed before answering:
    /// an idempotent method (RFC 9110 §9.2.2) and no body.
    pub replayable: bool,
    /// What the access log shows, when it is on.
    pub log: Option<Box<LogFields>>,
}

/// Request fields for the access log, as forwarded.
#[derive(Debug, Default, Clone)]
pub struct LogFields {
    pub method: String,
    pub path: String,
    pub protocol: &'static str,
    pub xff: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub authority: Option<String>,
}

/// What the proxy adds to a request on its way upstream.
pub struct RequestOpts<'a> {
    /// The client's address, appended to `x-forwarded-for` (inbound and gateway listeners).
    pub forwarded_for: Option<&'a [u8]>,
    /// Fill [`Request::log`].
    pub log: bool,
}

/// Names the proxy looks at; everything else is passed through without a second look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
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
struct ConnectionTokens<'b> {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
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

    /// `name` was listed in `connection` (framing headers can never be).
    fn names(&self, name: &str, k: Known) -> bool {
        !matches!(k, Known::ContentLength | Known::TransferEncoding)
            && self.named[..self.n_named]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// What the framing headers of a message say.
#[derive(Default)]
struct FramingHeaders {
    length: Option<u64>,
    transfer_encoding: bool,
    /// The last transfer coding is `chunked`.
    chunked: bool,
}

impl FramingHeaders {
    fn content_length(&mut self, v: &[u8]) -> Result<(), HeadError> {
        // A list of identical values is allowed (RFC 9110 §8.6); anything else is refused.
        for t in v.split(|&b| b == b',') {
            let t = t.trim_ascii();
            if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::Bad("content-length is not a number"));
            }
            let n: u64 = std::str::from_utf8(t)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(HeadError::Bad("content-length is not a number"))?;
            if self.length.is_some_and(|l| l != n) {
                return Err(HeadError::Bad("conflicting content-length values"));
            }
            self.length = Some(n);
        }
        Ok(())
    }

    fn transfer_encoding(&mut self, v: &[u8]) {
        self.transfer_encoding = true;
        if let Some(last) = tokens(v).last() {
            self.chunked = last.eq_ignore_ascii_case(b"chunked");
        }
    }
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A complete head's length; `None` while incomplete.
fn complete(
    parsed: Result<httparse::Status<usize>, httparse::Error>,
    buffered: usize,
) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) if buffered >= MAX_HEAD => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(e) => Err(HeadError::Bad(bad_reason(e))),
    }
}

/// What the first pass over a head's headers found.
struct Seen<'b> {
    conn: ConnectionTokens<'b>,
    framing: FramingHeaders,
    upgrade: bool,
    expect_continue: bool,
    request_id: bool,
}

/// Classifies every header name into `kinds` and reads the ones that shape forwarding.
fn first_pass<'b>(
    headers: &[httparse::Header<'b>],
    kinds: &mut [Known; MAX_HEADERS],
) -> Result<Seen<'b>, HeadError> {
    let mut seen = Seen {
        conn: ConnectionTokens::default(),
        framing: FramingHeaders::default(),
        upgrade: false,
        expect_continue: false,
        request_id: false,
    };
    for (h, kind) in headers.iter().zip(kinds.iter_mut()) {
        *kind = known(h.name);
        match *kind {
            Known::Connection => seen.conn.add(h.value),
            Known::ContentLength => seen.framing.content_length(h.value)?,
            Known::TransferEncoding => seen.framing.transfer_encoding(h.value),
            Known::Upgrade => seen.upgrade = true,
            Known::Expect => seen.expect_continue = h.value.eq_ignore_ascii_case(b"100-continue"),
            Known::XRequestId => seen.request_id = true,
            _ => {}
        }
    }
    Ok(seen)
}

const IDEMPOTENT: [&str; 6] = ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"];

/// Parses a request head at the start of `buf` and writes the head to send upstream to `out`.
/// `Ok(None)`: the head is not complete yet.
pub fn parse_request(
    buf: &[u8],
    opts: &RequestOpts,
    out: &mut Vec<u8>,
) -> Result<Option<Request>, HeadError> {
    let mut storage = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut storage,
    );
    let Some(head_len) = complete(parsed, buf.len())? else {
        return Ok(None);
    };
    let method = req.method.unwrap_or("");
    let path = req.path.unwrap_or("");
    let http10 = req.version == Some(0);
    if method == "CONNECT" {
        return Err(HeadError::Unsupported("CONNECT is not proxied"));
    }

    // First pass: what the headers say. Each name is classified once; the second pass reads
    // the kinds back.
    let mut kinds = [Known::Other; MAX_HEADERS];
    let Seen {
        conn,
        framing,
        upgrade: has_upgrade,
        expect_continue,
        request_id: has_request_id,
    } = first_pass(req.headers, &mut kinds)?;
    let body = if framing.transfer_encoding {
        if framing.length.is_some() {
            return Err(HeadError::Bad(
                "both transfer-encoding and content-length (a smuggling risk)",
            ));
        }
        if http10 || !framing.chunked {
            return Err(HeadError::Bad("transfer-encoding must end in chunked"));
        }
        Framing::Chunked
    } else {
        match framing.length {
            Some(0) | None => Framing::Empty,
            Some(n) => Framing::Length(n),
        }
    };
    let keep_alive = if http10 {
        conn.keep_alive && !conn.close
    } else {
        !conn.close
    };
    let upgrade = has_upgrade && conn.upgrade && !http10;
    let expect_continue = expect_continue && !http10;

    // Second pass: the head for upstream.
    let start = out.len();
    out.reserve(head_len + 128);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut log = opts.log.then(|| {
        Box::new(LogFields {
            method: method.to_string(),
            path: path.to_string(),
            protocol: if http10 { "HTTP/1.0" } else { "HTTP/1.1" },
            ..LogFields::default()
        })
    });
    let mut xff: Vec<&[u8]> = Vec::new();
    for (h, &k) in req.headers.iter().zip(kinds.iter()) {
        let keep = match k {
            Known::Connection | Known::KeepAlive | Known::ProxyConnection | Known::Te => false,
            Known::Upgrade => upgrade,
            Known::Expect => !expect_continue,
            Known::XForwardedFor if opts.forwarded_for.is_some() || log.is_some() => {
                xff.push(h.value);
                opts.forwarded_for.is_none()
            }
            _ => !(conn.n_named > 0 && conn.names(h.name, k)),
        };
        if let Some(l) = log.as_deref_mut() {
            let v = || Some(String::from_utf8_lossy(h.value).into_owned());
            match k {
                Known::Host => l.authority = v(),
                Known::UserAgent => l.user_agent = v(),
                Known::XRequestId => l.request_id = v(),
                _ => {}
            }
        }
        if keep {
            push_header(out, h.name.as_bytes(), h.value);
        }
    }
    if upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    if !has_request_id {
        let id = request_id();
        push_header(out, b"x-request-id", &id);
        if let Some(l) = log.as_deref_mut() {
            l.request_id = Some(String::from_utf8_lossy(&id).into_owned());
        }
    }
    let xff_at = out.len();
    if let Some(ip) = opts.forwarded_for {
        out.extend_from_slice(b"x-forwarded-for: ");
        for v in xff.iter().filter(|v| !v.trim_ascii().is_empty()) {
            out.extend_from_slice(v.trim_ascii());
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(ip);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(l) = log.as_deref_mut() {
        if opts.forwarded_for.is_some() {
            let line = &out[xff_at + b"x-forwarded-for: ".len()..out.len() - 2];
            l.xff = Some(String::from_utf8_lossy(line).into_owned());
        } else if !xff.is_empty() {
            let joined: Vec<_> = xff.iter().map(|v| String::from_utf8_lossy(v)).collect();
            l.xff = Some(joined.join(", "));
        }
    }
    out.extend_from_slice(b"\r\n");
    debug_assert!(out.len() > start);
    Ok(Some(Request {
        head_len,
        body,
        http10,
        keep_alive,
        upgrade,
        expect_continue,
        head_method: method == "HEAD",
        replayable: body == Framing::Empty && IDEMPOTENT.contains(&method),
        log,
    }))
}

fn bad_reason(e: httparse::Error) -> &'static str {
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

/// A response head, as far as forwarding needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub head_len: usize,
    pub status: u16,
    /// As it arrives from upstream.
    pub body: Framing,
    /// A 1xx other than 101: a final response follows.
    pub interim: bool,
    /// The upstream connection may carry another request once this body is done.
    pub upstream_reusable: bool,
    /// The client's connection is kept after this response (`connection: close` was written
    /// otherwise, for an HTTP/1.1 client).
    pub keep_alive: bool,
    /// The body is chunked but the client speaks HTTP/1.0: it is decoded and the connection
    /// closed to end it.
    pub decode_chunked: bool,
}

/// What the downstream side of one exchange allows.
#[derive(Debug, Clone, Copy)]
pub struct ResponseOpts {
    pub head_method: bool,
    pub upgrade: bool,
    pub http10_client: bool,
    /// The client wants, and the proxy allows, keeping the connection.
    pub keep_alive: bool,
}

/// Parses a response head at the start of `buf` and writes the head to send downstream to `out`
/// (nothing for a `100 Continue`: the proxy answers expectations itself). `Ok(None)`: not
/// complete yet.
pub fn parse_response(
    buf: &[u8],
    opts: &ResponseOpts,
    out: &mut Vec<u8>,
) -> Result<Option<Response>, HeadError> {
    let mut storage = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut storage,
    );
    let Some(head_len) = complete(parsed, buf.len())? else {
        return Ok(None);
    };
    let status = resp.code.unwrap_or(0);
    let http10 = resp.version == Some(0);
    let mut kinds = [Known::Other; MAX_HEADERS];
    let Seen { conn, framing, .. } = first_pass(resp.headers, &mut kinds)?;
    let interim = (100..200).contains(&status) && status != 101;
    let body = if status == 101 {
        if !opts.upgrade {
            return Err(HeadError::Bad(
                "101 Switching Protocols without an upgrade request",
            ));
        }
        Framing::Upgrade
    } else if interim || opts.head_method || status == 204 || status == 304 {
        Framing::Empty
    } else if framing.transfer_encoding {
        if framing.length.is_some() {
            return Err(HeadError::Bad("both transfer-encoding and content-length"));
        }
        if framing.chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match framing.length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    let upstream_reusable = body != Framing::Close
        && body != Framing::Upgrade
        && !conn.close
        && (!http10 || conn.keep_alive);
    let decode_chunked = body == Framing::Chunked && opts.http10_client;
    let keep_alive = opts.keep_alive && body != Framing::Close && !decode_chunked;
    let mut r = Response {
        head_len,
        status,
        body,
        interim,
        upstream_reusable,
        keep_alive,
        decode_chunked,
    };
    if interim {
        // Interim responses are forwarded to HTTP/1.1 clients, except 100 (see above).
        r.keep_alive = opts.keep_alive;
        if status == 100 || opts.http10_client {
            return Ok(Some(r));
        }
    }

    out.reserve(head_len + 32);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(status).as_slice());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (h, &k) in resp.headers.iter().zip(kinds.iter()) {
        let keep = match k {
            Known::Connection | Known::KeepAlive | Known::ProxyConnection | Known::Te => false,
            Known::Upgrade => body == Framing::Upgrade,
            Known::TransferEncoding => !decode_chunked,
            _ => !(conn.n_named > 0 && conn.names(h.name, k)),
        };
        if keep {
            push_header(out, h.name.as_bytes(), h.value);
        }
    }
    if body == Framing::Upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if !interim {
        if !keep_alive && !opts.http10_client {
            out.extend_from_slice(b"connection: close\r\n");
        } else if keep_alive && opts.http10_client {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(r))
}

fn itoa3(n: u16) -> [u8; 3] {
    let n = n.min(999);
    [
        b'0' + (n / 100) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]
}

/// A reply the proxy makes itself, `text/plain`.
pub fn local_reply(
    out: &mut Vec<u8>,
    status: u16,
    reason: &str,
    body: &str,
    overloaded: bool,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&itoa3(status));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    if overloaded {
        out.extend_from_slice(b"x-envoy-overloaded: true\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// Where a chunked body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    #[default]
    Size,
    /// After the size: extensions or whitespace, up to CR.
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    Trailer,
    TrailerLine,
    EndLf,
    Done,
}

/// Follows a chunked body (RFC 9112 §7.1) as its bytes go by.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    /// Bytes in the current trailer section (bounded like a head).
    trailer_bytes: usize,
}

/// One [`Chunked::scan`] step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    /// Input bytes that belong to the body.
    pub consumed: usize,
    /// Payload bytes among them (what the body carries, without the framing).
    pub payload: u64,
    /// The body ended with the last consumed byte.
    pub done: bool,
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Reads body bytes from `input`, stopping at the end of the body. With `decode`, the
    /// payload is appended to it.
    pub fn scan(
        &mut self,
        input: &[u8],
        mut decode: Option<&mut Vec<u8>>,
    ) -> Result<Scanned, &'static str> {
        use ChunkState::*;
        let mut i = 0;
        let mut payload = 0u64;
        while i < input.len() && self.state != Done {
            let b = input[i];
            match self.state {
                Size => match (b as char).to_digit(16) {
                    Some(d) => {
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err("chunk size too large");
                        }
                        self.size = self.size * 16 + d as u64;
                    }
                    None if self.digits == 0 => return Err("chunk size missing"),
                    None if b == b'\r' => self.state = SizeLf,
                    None if b == b';' || b == b' ' || b == b'\t' => self.state = Ext,
                    None => return Err("invalid chunk size"),
                },
                Ext => match b {
                    b'\r' => self.state = SizeLf,
                    b'\n' => return Err("bare LF in chunk extension"),
                    _ => {}
                },
                SizeLf => {
                    if b != b'\n' {
                        return Err("chunk size line not ended by CRLF");
                    }
                    self.digits = 0;
                    self.state = if self.size == 0 { Trailer } else { Data };
                }
                Data => {
                    let n = (self.size as usize).min(input.len() - i);
                    if let Some(d) = decode.as_deref_mut() {
                        d.extend_from_slice(&input[i..i + n]);
                    }
                    payload += n as u64;
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => {
                    if b != b'\r' {
                        return Err("chunk data not followed by CRLF");
                    }
                    self.state = DataLf;
                }
                DataLf => {
                    if b != b'\n' {
                        return Err("chunk data not followed by CRLF");
                    }
                    self.state = Size;
                }
                Trailer => {
                    self.state = if b == b'\r' { EndLf } else { TrailerLine };
                }
                TrailerLine => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_HEAD {
                        return Err("trailers too large");
                    }
                    if b == b'\n' {
                        self.state = Trailer;
                    }
                }
                EndLf => {
                    if b != b'\n' {
                        return Err("chunked body not ended by CRLF");
                    }
                    self.state = Done;
                }
                Done => unreachable!(),
            }
            i += 1;
        }
        Ok(Scanned {
            consumed: i,
            payload,
            done: self.state == Done,
        })
    }
}

/// How much of a message body is still to come.
#[derive(Debug)]
pub enum Body {
    Done,
    Length(u64),
    Chunked(Chunked),
    /// Until the connection closes.
    UntilClose,
}

impl Body {
    pub fn new(f: Framing) -> Body {
        match f {
            Framing::Empty | Framing::Upgrade | Framing::Length(0) => Body::Done,
            Framing::Length(n) => Body::Length(n),
            Framing::Chunked => Body::Chunked(Chunked::default()),
            Framing::Close => Body::UntilClose,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, Body::Done)
    }

    /// Takes the body's bytes from the front of `data`: how many belong to it and how much
    /// payload they carry. With `decode` (chunked only), the payload is appended to it.
    pub fn take(
        &mut self,
        data: &[u8],
        decode: Option<&mut Vec<u8>>,
    ) -> Result<(usize, u64), &'static str> {
        let (n, payload) = match self {
            Body::Done => return Ok((0, 0)),
            Body::Length(left) => {
                let n = (*left).min(data.len() as u64);
                *left -= n;
                if *left == 0 {
                    *self = Body::Done;
                }
                (n as usize, n)
            }
            Body::Chunked(c) => {
                let s = c.scan(data, decode)?;
                if s.done {
                    *self = Body::Done;
                }
                (s.consumed, s.payload)
            }
            Body::UntilClose => (data.len(), data.len() as u64),
        };
        Ok((n, payload))
    }
}

thread_local! {
    static RNG: std::cell::Cell<u64> = std::cell::Cell::new({
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

/// A random UUID (version 4 layout) for `x-request-id`, hex-encoded by hand.
pub fn request_id() -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let a = (next_u64() & !0xf000) | 0x4000;
    let b = (next_u64() & !(0xc << 60)) | (0x8 << 60);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_be_bytes());
    bytes[8..].copy_from_slice(&b.to_be_bytes());
    let mut out = [b'-'; 36];
    // Where each byte's two digits go: 8-4-4-4-12.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    for (byte, at) in bytes.iter().zip(AT) {
        out[at] = HEX[(byte >> 4) as usize];
        out[at + 1] = HEX[(byte & 0xf) as usize];
    }
    out
}

#[cfg(test)]
mod tests;
