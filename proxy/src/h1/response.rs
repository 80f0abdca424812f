//! The response role: upstream's head parsed, its framing judged for the exchange it answers
//! (HEAD, 1xx, 101, 204/304, an HTTP/1.0 client), and written out for the client with the
//! `connection` header of the client's hop.

use super::head::{self, Framing, HeadError, Known, Seen, MAX_HEADERS};

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
    let mut storage = head::header_storage();
    let mut resp = httparse::Response::new(&mut []);
    let Some(head_len) = head::parse(&mut resp, buf, &mut storage)? else {
        return Ok(None);
    };
    let status = resp.code.unwrap_or(0);
    let http10 = resp.version == Some(0);
    let mut kinds = [Known::Other; MAX_HEADERS];
    let Seen { conn, framing, .. } = head::first_pass(resp.headers, &mut kinds)?;
    let interim = (100..200).contains(&status) && status != 101;
    let body = if status == 101 {
        if !opts.upgrade {
            return Err(HeadError::UnrequestedUpgrade);
        }
        Framing::Upgrade
    } else if interim || opts.head_method || status == 204 || status == 304 {
        Framing::Empty
    } else if framing.transfer_encoding {
        if framing.length.is_some() {
            return Err(HeadError::ResponseLengthAndTransferEncoding);
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
    head::status_line(out, status, resp.reason.unwrap_or("").as_bytes());
    let upgrading = body == Framing::Upgrade;
    head::write_headers(
        out,
        resp.headers,
        &kinds,
        &conn,
        &framing,
        upgrading,
        |_, k| {
            // A chunked body decoded for an HTTP/1.0 client is no longer chunked.
            (k == Known::TransferEncoding).then_some(!decode_chunked)
        },
        &mut (),
    );
    if !upgrading && !interim {
        if !keep_alive && !opts.http10_client {
            out.extend_from_slice(b"connection: close\r\n");
        } else if keep_alive && opts.http10_client {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(r))
}
