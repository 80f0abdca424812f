//! The request role: a client's head parsed, judged (framing, persistence, upgrade, expectation)
//! and written out for upstream with what the proxy adds (`x-request-id`, `x-forwarded-for`).

use super::head::{self, Framing, HeadError, Known, Lines, Mark, Seen, MAX_HEADERS};
use crate::access_log::Entry;

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
    /// The access log's entry, its request fields filled as forwarded, when the log is on.
    pub log: Option<Box<Entry>>,
    /// Where, in the `out` the head was written to, its request target is: the router's view
    /// of the request without a second parse (with [`parse_request_indexed`]'s lines).
    pub target: std::ops::Range<usize>,
}

/// What the proxy adds to a request on its way upstream.
pub struct RequestOpts<'a> {
    /// The client's address, appended to `x-forwarded-for` (inbound and gateway listeners).
    pub forwarded_for: Option<&'a [u8]>,
    /// Fill [`Request::log`].
    pub log: bool,
}

const IDEMPOTENT: [&str; 6] = ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"];

/// Parses a request head at the start of `buf` and writes the head to send upstream to `out`.
/// `Ok(None)`: the head is not complete yet.
pub fn parse_request(
    buf: &[u8],
    opts: &RequestOpts,
    out: &mut Vec<u8>,
) -> Result<Option<Request>, HeadError> {
    parse(buf, opts, out, &mut ())
}

/// [`parse_request`], also noting in `lines` where each header line written starts (for a
/// router; a connection without routes does not pay for it).
pub fn parse_request_indexed(
    buf: &[u8],
    opts: &RequestOpts,
    out: &mut Vec<u8>,
    lines: &mut Lines,
) -> Result<Option<Request>, HeadError> {
    *lines = Lines::default();
    parse(buf, opts, out, lines)
}

#[inline(always)]
fn parse(
    buf: &[u8],
    opts: &RequestOpts,
    out: &mut Vec<u8>,
    lines: &mut impl Mark,
) -> Result<Option<Request>, HeadError> {
    let mut storage = head::header_storage();
    let mut req = httparse::Request::new(&mut []);
    let Some(head_len) = head::parse(&mut req, buf, &mut storage)? else {
        return Ok(None);
    };
    let method = req.method.unwrap_or("");
    let path = req.path.unwrap_or("");
    let http10 = req.version == Some(0);
    if method == "CONNECT" {
        return Err(HeadError::Connect);
    }
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(HeadError::LowercaseMethod);
    }

    let mut kinds = [Known::Other; MAX_HEADERS];
    let Seen {
        conn,
        framing,
        upgrade: has_upgrade,
        upgrade_h2c,
        expect_continue,
        request_id: has_request_id,
        hosts,
    } = head::first_pass(req.headers, &mut kinds)?;
    let body = if framing.transfer_encoding {
        if framing.length.is_some() {
            return Err(HeadError::RequestLengthAndTransferEncoding);
        }
        if http10 || !framing.chunked {
            return Err(HeadError::TransferEncodingNotChunked);
        }
        if framing.codings_besides_chunked {
            return Err(HeadError::TransferEncodingUnsupported);
        }
        Framing::Chunked
    } else {
        match framing.length {
            Some(0) | None => Framing::Empty,
            Some(n) => Framing::Length(n),
        }
    };
    // HTTP/1.0 may omit host, but the request goes on as HTTP/1.1, which must have one (Envoy
    // refuses HTTP/1.0 altogether by default).
    match hosts {
        0 => return Err(HeadError::MissingHost),
        1 => {}
        _ => return Err(HeadError::DuplicateHost),
    }
    let keep_alive = if http10 {
        conn.keep_alive && !conn.close
    } else {
        !conn.close
    };
    // `h2c` is not offered on: the proxy speaks HTTP/1.1 upstream (Envoy strips it too).
    let upgrade = has_upgrade && conn.upgrade && !http10 && !upgrade_h2c;
    let expect_continue = expect_continue && !http10;

    let start = out.len();
    out.reserve(head_len + 128);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    let target = out.len()..out.len() + path.len();
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut log = opts.log.then(|| {
        Box::new(Entry {
            method: method.to_string(),
            path: path.to_string(),
            protocol: if http10 { "HTTP/1.0" } else { "HTTP/1.1" },
            ..Entry::default()
        })
    });
    let mut xff: Vec<&[u8]> = Vec::new();
    head::write_headers(
        out,
        req.headers,
        &kinds,
        &conn,
        &framing,
        upgrade,
        |h, k| {
            if let Some(l) = log.as_deref_mut() {
                let v = || Some(String::from_utf8_lossy(h.value).into_owned());
                match k {
                    Known::Host => l.authority = v(),
                    Known::UserAgent => l.user_agent = v(),
                    Known::XRequestId => l.request_id = v(),
                    _ => {}
                }
            }
            match k {
                // The proxy answers the expectation itself.
                Known::Expect => Some(!expect_continue),
                Known::Http2Settings => Some(false),
                // Gathered to be written once, with the client's address appended (or for the log).
                Known::XForwardedFor if opts.forwarded_for.is_some() || log.is_some() => {
                    xff.push(h.value);
                    Some(opts.forwarded_for.is_none())
                }
                _ => None,
            }
        },
        lines,
    );
    if !has_request_id {
        let id = crate::request_id::generate();
        lines.mark(out.len());
        head::push_header(out, b"x-request-id", &id);
        if let Some(l) = log.as_deref_mut() {
            l.request_id = Some(String::from_utf8_lossy(&id).into_owned());
        }
    }
    let xff_at = out.len();
    if let Some(ip) = opts.forwarded_for {
        lines.mark(out.len());
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
        target,
    }))
}
