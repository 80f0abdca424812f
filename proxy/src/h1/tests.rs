//! The codec: what is rewritten, what passes through untouched, how bodies are delimited.

use super::*;

fn req(raw: &str, xff: Option<&str>) -> (Result<Option<Request>, HeadError>, String) {
    let mut out = Vec::new();
    let opts = RequestOpts {
        forwarded_for: xff.map(str::as_bytes),
        log: true,
    };
    let r = parse_request(raw.as_bytes(), &opts, &mut out);
    (r, String::from_utf8(out).unwrap())
}

fn ok_req(raw: &str, xff: Option<&str>) -> (Request, String) {
    let (r, out) = req(raw, xff);
    (r.unwrap().unwrap(), out)
}

#[test]
fn connection_cannot_remove_host_or_framing_headers() {
    // Found by fuzzing: `connection: host` dropped the host header, so the next hop got a head
    // it must refuse.
    let raw = "POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 2\r\n\
               Connection: keep-alive, Host, Content-Length, X-Hop\r\nX-Hop: 1\r\n\r\nhi";
    let (r, out) = ok_req(raw, None);
    assert_eq!(r.body, Framing::Length(2));
    assert!(out.contains("Host: app\r\n"), "{out}");
    assert!(out.contains("Content-Length: 2\r\n"), "{out}");
    assert!(!out.contains("X-Hop"), "{out}");
}

#[test]
fn request_head_is_forwarded_with_only_the_proxy_changes() {
    let raw =
        "GET /a?b=1 HTTP/1.1\r\nHost: app\r\nX-Custom:  v \r\nConnection: keep-alive, X-Hop\r\n\
               X-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: x\r\n\
               X-Forwarded-For: 1.2.3.4\r\nx-request-id: mine\r\n\r\nBODY";
    let (r, out) = ok_req(raw, Some("10.0.0.9"));
    assert_eq!(r.head_len, raw.len() - 4);
    assert_eq!(
        out,
        "GET /a?b=1 HTTP/1.1\r\nHost: app\r\nX-Custom: v\r\nx-request-id: mine\r\n\
         x-forwarded-for: 1.2.3.4, 10.0.0.9\r\n\r\n"
    );
    assert!(r.keep_alive && !r.http10 && !r.upgrade && r.replayable);
    assert_eq!(r.body, Framing::Empty);
    let log = r.log.unwrap();
    assert_eq!(log.method, "GET");
    assert_eq!(log.path, "/a?b=1");
    assert_eq!(log.authority.as_deref(), Some("app"));
    assert_eq!(log.request_id.as_deref(), Some("mine"));
    assert_eq!(log.xff.as_deref(), Some("1.2.3.4, 10.0.0.9"));
}

#[test]
fn request_id_is_added_and_forwarded_for_set_when_absent() {
    let (r, out) = ok_req("GET / HTTP/1.1\r\nhost: a\r\n\r\n", Some("127.0.0.1"));
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "4");
    assert_eq!(r.log.unwrap().request_id.as_deref(), Some(id));
    assert!(out.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"));
    // Outbound (no client address added): x-forwarded-for passes as it came, or not at all.
    let (_, out) = ok_req(
        "GET / HTTP/1.1\r\nhost: h\r\nx-forwarded-for: 1.1.1.1\r\n\r\n",
        None,
    );
    assert_eq!(out.matches("x-forwarded-for").count(), 1);
    assert!(out.contains("x-forwarded-for: 1.1.1.1\r\n"));
    let (_, out) = ok_req("GET / HTTP/1.1\r\nhost: h\r\n\r\n", None);
    assert!(!out.contains("forwarded"));
}

#[test]
fn upgrade_requests_keep_their_upgrade_headers() {
    let (r, out) = ok_req(
        "GET /ws HTTP/1.1\r\nhost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nx-request-id: i\r\n\r\n",
        None,
    );
    assert!(r.upgrade);
    assert_eq!(
        out,
        "GET /ws HTTP/1.1\r\nhost: h\r\nUpgrade: websocket\r\nx-request-id: i\r\nconnection: upgrade\r\n\r\n"
    );
    // h2c is never offered upstream (the proxy speaks HTTP/1.1 there), nor its settings.
    let (r, out) = ok_req(
        "GET / HTTP/1.1\r\nhost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
         HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        None,
    );
    assert!(!r.upgrade);
    let lower = out.to_ascii_lowercase();
    assert!(
        !lower.contains("upgrade") && !lower.contains("http2-settings"),
        "{out}"
    );
    let (_, out) = ok_req(
        "GET / HTTP/1.1\r\nhost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AA\r\n\r\n",
        None,
    );
    assert!(
        !out.to_ascii_lowercase().contains("http2-settings"),
        "{out}"
    );
    // An Upgrade header without Connection: upgrade is just hop-by-hop noise.
    let (r, out) = ok_req("GET / HTTP/1.1\r\nhost: h\r\nUpgrade: h2c\r\n\r\n", None);
    assert!(!r.upgrade);
    assert!(!out.to_ascii_lowercase().contains("upgrade"));
}

#[test]
fn expect_100_continue_is_answered_by_the_proxy_not_forwarded() {
    let (r, out) = ok_req(
        "POST /sink HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
        None,
    );
    assert!(r.expect_continue);
    assert_eq!(r.body, Framing::Length(5));
    assert!(!r.replayable);
    assert!(!out.contains("expect"));
    assert!(out.contains("content-length: 5\r\n"));
}

#[test]
fn request_framing() {
    let (r, _) = ok_req(
        "POST / HTTP/1.1\r\nhost: h\r\nTransfer-Encoding: Chunked\r\n\r\n",
        None,
    );
    assert_eq!(r.body, Framing::Chunked);
    let (r, _) = ok_req(
        "PUT / HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n",
        None,
    );
    assert_eq!(r.body, Framing::Empty);
    assert!(r.replayable);
    // Identical content-length values are allowed, and go on as one value.
    let (r, out) = ok_req(
        "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 7, 7\r\ncontent-length: 7\r\nx: y\r\n\r\n",
        None,
    );
    assert_eq!(r.body, Framing::Length(7));
    assert_eq!(out.matches("content-length").count(), 1, "{out}");
    assert!(out.contains("\r\ncontent-length: 7\r\n"), "{out}");
    let (_, out) = ok_req(
        "POST / HTTP/1.1\r\nhost: h\r\nContent-Length: 7\r\n\r\n",
        None,
    );
    assert!(out.contains("\r\nContent-Length: 7\r\n"), "{out}");
    let refused = [
        (
            "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            HeadError::RequestLengthAndTransferEncoding,
            "both transfer-encoding and content-length (a smuggling risk)",
        ),
        (
            "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            HeadError::ConflictingContentLengths,
            "conflicting content-length values",
        ),
        (
            "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: -1\r\n\r\n",
            HeadError::ContentLengthNotANumber,
            "content-length is not a number",
        ),
        (
            "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: +5\r\n\r\n",
            HeadError::ContentLengthNotANumber,
            "content-length is not a number",
        ),
        (
            "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            HeadError::TransferEncodingNotChunked,
            "transfer-encoding must end in chunked",
        ),
        (
            "POST / HTTP/1.0\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n",
            HeadError::TransferEncodingNotChunked,
            "transfer-encoding must end in chunked",
        ),
        (
            "GET / HTTP/1.1\r\nhost: h\r\nbad header line\r\n\r\n",
            HeadError::Syntax(httparse::Error::HeaderName),
            "invalid header name",
        ),
        (
            "GET / HTTP/2.0\r\n\r\n",
            HeadError::Syntax(httparse::Error::Version),
            "not HTTP/1.0 or HTTP/1.1",
        ),
    ];
    for (raw, refusal, why) in refused {
        let e = req(raw, None).0.unwrap_err();
        assert_eq!(e, refusal, "{raw:?}");
        // What the client reads in its 400.
        assert_eq!(e.status(), (400, "Bad Request"), "{raw:?}");
        assert_eq!(e.to_string(), format!("malformed HTTP/1 head: {why}"));
    }
    // Codings besides chunked, or transfer-encoding twice: 501, as Envoy and nginx answer.
    for raw in [
        "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: identity, chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked, chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n",
    ] {
        let e = req(raw, None).0.unwrap_err();
        assert_eq!(e, HeadError::TransferEncodingUnsupported, "{raw:?}");
        assert_eq!(e.status(), (501, "Not Implemented"), "{raw:?}");
    }
}

#[test]
fn request_lines_and_host() {
    let refused = [
        (
            "GET / HTTP/1.1\r\n\r\n",
            HeadError::MissingHost,
            "no host header",
        ),
        (
            "GET / HTTP/1.1\r\nhost: a\r\nHost: b\r\n\r\n",
            HeadError::DuplicateHost,
            "more than one host header",
        ),
        (
            "GET / HTTP/1.0\r\nhost: a\r\nhost: a\r\n\r\n",
            HeadError::DuplicateHost,
            "more than one host header",
        ),
        (
            "get / HTTP/1.1\r\nhost: a\r\n\r\n",
            HeadError::LowercaseMethod,
            "the method has lower-case letters (methods are case-sensitive: GET, not get)",
        ),
        (
            "GET\t/ HTTP/1.1\r\nhost: a\r\n\r\n",
            HeadError::Syntax(httparse::Error::Token),
            "invalid method or token",
        ),
    ];
    for (raw, refusal, why) in refused {
        let e = req(raw, None).0.unwrap_err();
        assert_eq!(e, refusal, "{raw:?}");
        assert_eq!(e.status(), (400, "Bad Request"), "{raw:?}");
        assert_eq!(e.to_string(), format!("malformed HTTP/1 head: {why}"));
    }
    // HTTP/1.0 needs a host too (it goes on as HTTP/1.1); any upper-case token is a method; empty
    // lines before the request line are skipped (RFC 9112 §2.2) and counted in the head.
    let e = req("GET / HTTP/1.0\r\n\r\n", None).0.unwrap_err();
    assert_eq!(e, HeadError::MissingHost);
    let (_, out) = ok_req("PROPFIND /dav HTTP/1.1\r\nhost: a\r\n\r\n", None);
    assert!(out.starts_with("PROPFIND /dav HTTP/1.1\r\n"));
    let raw = "\r\n\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n";
    let (r, out) = ok_req(raw, None);
    assert_eq!(r.head_len, raw.len());
    assert!(out.starts_with("GET / HTTP/1.1\r\nhost: a\r\n"));
}

#[test]
fn connection_persistence_by_version() {
    let (r, _) = ok_req("GET / HTTP/1.0\r\nhost: h\r\n\r\n", None);
    assert!(r.http10 && !r.keep_alive);
    assert_eq!(r.log.unwrap().protocol, "HTTP/1.0");
    let (r, out) = ok_req(
        "GET / HTTP/1.0\r\nhost: h\r\nConnection: keep-alive\r\n\r\n",
        None,
    );
    assert!(r.keep_alive);
    // Upstream always hears HTTP/1.1 (and keeps its pooled connection).
    assert!(out.starts_with("GET / HTTP/1.1\r\n"));
    assert!(!out.contains("onnection"));
    let (r, _) = ok_req(
        "GET / HTTP/1.1\r\nhost: h\r\nConnection: close\r\n\r\n",
        None,
    );
    assert!(!r.keep_alive);
}

#[test]
fn partial_oversized_and_unsupported_heads() {
    assert!(req("GET / HTTP/1.1\r\nhost: a\r\n", None)
        .0
        .unwrap()
        .is_none());
    let long = format!("GET /{} HTTP/1.1\r\nhost: h\r\n", "a".repeat(MAX_HEAD));
    assert_eq!(req(&long, None).0.unwrap_err(), HeadError::TooLarge);
    assert_eq!(HeadError::TooLarge.status().0, 431);
    let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: v\r\n")).collect();
    let raw = format!("GET / HTTP/1.1\r\nhost: h\r\n{many}\r\n");
    assert_eq!(req(&raw, None).0.unwrap_err(), HeadError::TooLarge);
    let connect = req("CONNECT a:443 HTTP/1.1\r\nhost: h\r\n\r\n", None)
        .0
        .unwrap_err();
    assert_eq!(connect, HeadError::Connect);
    assert_eq!(connect.status().0, 405);
}

fn resp(raw: &str, opts: ResponseOpts) -> (Result<Option<Response>, HeadError>, String) {
    let mut out = Vec::new();
    let r = parse_response(raw.as_bytes(), &opts, &mut out);
    (r, String::from_utf8(out).unwrap())
}

const KEEP: ResponseOpts = ResponseOpts {
    head_method: false,
    upgrade: false,
    http10_client: false,
    keep_alive: true,
};

#[test]
fn response_head_is_forwarded_without_hop_by_hop_headers() {
    let (r, out) = resp(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
         Server: app\r\n\r\nok",
        KEEP,
    );
    let r = r.unwrap().unwrap();
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: app\r\n\r\n"
    );
    assert_eq!((r.status, r.body), (200, Framing::Length(2)));
    assert!(r.upstream_reusable && r.keep_alive && !r.interim);
}

#[test]
fn response_connection_header_follows_the_clients_hop() {
    // The client asked to close: say so.
    let o = ResponseOpts {
        keep_alive: false,
        ..KEEP
    };
    let (r, out) = resp("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", o);
    assert!(!r.unwrap().unwrap().keep_alive);
    assert!(out.ends_with("connection: close\r\n\r\n"));
    // Upstream's close is its own business: the client keeps its connection.
    let (r, out) = resp(
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        KEEP,
    );
    let r = r.unwrap().unwrap();
    assert!(!r.upstream_reusable && r.keep_alive);
    assert!(!out.contains("close"));
    // A body delimited by the close of the connection ends the client's connection too.
    let (r, out) = resp("HTTP/1.0 200 OK\r\n\r\nall of it", KEEP);
    let r = r.unwrap().unwrap();
    assert_eq!(r.body, Framing::Close);
    assert!(!r.upstream_reusable && !r.keep_alive);
    assert!(out.ends_with("connection: close\r\n\r\n"));
    // An HTTP/1.0 client that asked for keep-alive is told it got it.
    let o10 = ResponseOpts {
        http10_client: true,
        ..KEEP
    };
    let (_, out) = resp("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", o10);
    assert!(out.ends_with("connection: keep-alive\r\n\r\n"));
    // Chunked cannot go to an HTTP/1.0 client: decoded, and the close ends it.
    let (r, out) = resp("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", o10);
    let r = r.unwrap().unwrap();
    assert!(r.decode_chunked && !r.keep_alive && r.upstream_reusable);
    assert!(!out.contains("chunked"));
}

#[test]
fn responses_without_a_body() {
    let head = ResponseOpts {
        head_method: true,
        ..KEEP
    };
    let (r, _) = resp("HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n", head);
    assert_eq!(r.unwrap().unwrap().body, Framing::Empty);
    for s in ["204 No Content", "304 Not Modified"] {
        let (r, _) = resp(&format!("HTTP/1.1 {s}\r\n\r\n"), KEEP);
        let r = r.unwrap().unwrap();
        assert_eq!(r.body, Framing::Empty);
        assert!(r.upstream_reusable);
    }
}

#[test]
fn interim_responses() {
    // 100 is the proxy's own business (it answered the expectation itself).
    let (r, out) = resp("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", KEEP);
    let r = r.unwrap().unwrap();
    assert!(r.interim);
    assert_eq!(r.head_len, 25);
    assert_eq!(out, "");
    // Others go on to HTTP/1.1 clients.
    let (r, out) = resp("HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n", KEEP);
    assert!(r.unwrap().unwrap().interim);
    assert_eq!(out, "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n");
    // A 101 nobody asked for is a protocol error; an asked-for one keeps its headers.
    let (r, _) = resp(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
        KEEP,
    );
    assert_eq!(r.unwrap_err(), HeadError::UnrequestedUpgrade);
    let up = ResponseOpts {
        upgrade: true,
        ..KEEP
    };
    let (r, out) = resp(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        up,
    );
    assert_eq!(r.unwrap().unwrap().body, Framing::Upgrade);
    assert_eq!(
        out,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nconnection: upgrade\r\n\r\n"
    );
}

#[test]
fn malformed_responses_are_errors() {
    for (raw, refusal) in [
        (
            "HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            HeadError::ContentLengthNotANumber,
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
            HeadError::ResponseLengthAndTransferEncoding,
        ),
        (
            "HTTP/1.1 2000 OK\r\n\r\n",
            HeadError::Syntax(httparse::Error::Status),
        ),
        (
            "SSH-2.0-OpenSSH\r\n\r\n",
            HeadError::Syntax(httparse::Error::Version),
        ),
    ] {
        assert_eq!(resp(raw, KEEP).0.unwrap_err(), refusal, "{raw:?}");
        assert!(refusal.to_string().starts_with("malformed HTTP/1 head: "));
    }
}

#[test]
fn local_replies() {
    let mut out = Vec::new();
    local_reply(
        &mut out,
        503,
        "Service Unavailable",
        "overflow",
        true,
        false,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 8\r\n\
         x-envoy-overloaded: true\r\n\r\noverflow"
    );
}

const CHUNKED: &[u8] =
    b"5;ext=1\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: t\r\n\r\nNEXT";

#[test]
fn chunked_bodies_end_at_the_right_byte_however_they_are_split() {
    let end = CHUNKED.len() - 4;
    for split in 0..end {
        let mut c = Chunked::default();
        let a = c.scan(&CHUNKED[..split], None).unwrap();
        assert_eq!(a.consumed, split);
        assert!(!a.done);
        let b = c.scan(&CHUNKED[split..], None).unwrap();
        assert_eq!(split + b.consumed, end, "split at {split}");
        assert!(b.done && c.is_done());
        assert_eq!(a.payload + b.payload, 31);
    }
    // Byte by byte, decoding.
    let mut c = Chunked::default();
    let mut out = Vec::new();
    let mut used = 0;
    for b in CHUNKED {
        if c.is_done() {
            break;
        }
        used += c
            .scan(std::slice::from_ref(b), Some(&mut out))
            .unwrap()
            .consumed;
    }
    assert_eq!(used, end);
    assert_eq!(out, b"helloabcdefghijklmnopqrstuvwxyz");
}

#[test]
fn malformed_chunked_bodies_are_errors() {
    for (raw, refusal, why) in [
        (
            &b"x\r\n"[..],
            ChunkedError::SizeMissing,
            "chunk size missing",
        ),
        (
            b"5\r\nhelloX",
            ChunkedError::DataNotCrlf,
            "chunk data not followed by CRLF",
        ),
        (
            b"5\rX",
            ChunkedError::SizeLineNotCrlf,
            "chunk size line not ended by CRLF",
        ),
        (
            b"1000000000000000\r\n",
            ChunkedError::SizeTooLarge,
            "chunk size too large",
        ),
        (b"5-\r\n", ChunkedError::InvalidSize, "invalid chunk size"),
        (
            b"0\r\n\rX",
            ChunkedError::EndNotCrlf,
            "chunked body not ended by CRLF",
        ),
    ] {
        let e = Chunked::default().scan(raw, None).unwrap_err();
        assert_eq!(e, refusal, "{raw:?}");
        assert_eq!(e.to_string(), why, "{raw:?}");
    }
}

#[test]
fn body_takes_only_its_own_bytes() {
    let mut b = Body::new(Framing::Length(3));
    assert_eq!(b.take(b"ab", None).unwrap(), (2, 2));
    assert_eq!(b.take(b"cNEXT", None).unwrap(), (1, 1));
    assert!(b.is_done());
    assert_eq!(b.take(b"NEXT", None).unwrap(), (0, 0));
    let mut b = Body::new(Framing::Chunked);
    assert_eq!(b.take(CHUNKED, None).unwrap(), (CHUNKED.len() - 4, 31));
    assert!(b.is_done());
    let mut b = Body::new(Framing::Close);
    assert_eq!(b.take(b"anything", None).unwrap(), (8, 8));
    assert!(!b.is_done());
    assert!(Body::new(Framing::Length(0)).is_done());
    assert!(Body::new(Framing::Empty).is_done());
}
