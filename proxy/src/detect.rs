//! Protocol detection: peek (never consume) the first bytes. What starts like an HTTP/1 request
//! line gets the HTTP path, where the codec judges it (a malformed line gets 400, never a raw
//! tunnel past the proxy's checks). HTTP/2's prior-knowledge preface gets the HTTP/2 path
//! ([`crate::http2`]). Anything else, including TLS and protocols where the server speaks first
//! (nothing arrives before the timeout), is proxied as opaque TCP.
//!
//! "Starts like a request line" (RFC 9112 §3): optional empty lines (§2.2), then a method token
//! followed by a space. Upper-case tokens are methods whatever they are (`PROPFIND`, `PURGE`,
//! `M-SEARCH`); a token with lower case is taken as a (wrong) method only when a request target
//! follows (`/` or `*`), so that text protocols such as memcached's `get key` stay opaque.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (its connection preface).
    Http2,
    Opaque,
}

/// HTTP/2's prior-knowledge preface begins with a token and a space too.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
/// Longer than any registered method (`UPDATEREDIRECTREF` has 17 letters).
const MAX_METHOD: usize = 24;
/// Bytes peeked: room for a few stray empty lines before the method.
const PEEK: usize = 64;

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Classifies a prefix: `Some` once decided, `None` if more bytes are needed. Only the first
/// [`PEEK`] bytes count, as only those are peeked: what follows cannot change the answer.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    let buf = &buf[..buf.len().min(PEEK)];
    let Some(start) = buf.iter().position(|&b| b != b'\r' && b != b'\n') else {
        // Only empty lines so far.
        return (buf.len() >= PEEK).then_some(Protocol::Opaque);
    };
    let b = &buf[start..];
    let n = b.len().min(H2_PREFACE.len());
    if b[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    let token = b.iter().take_while(|&&c| is_tchar(c)).count();
    if token == b.len() {
        return (token > MAX_METHOD).then_some(Protocol::Opaque);
    }
    if token == 0 || token > MAX_METHOD {
        return Some(Protocol::Opaque);
    }
    let method = &b[..token];
    let upper = !method.iter().any(u8::is_ascii_lowercase);
    match (b[token], upper) {
        // `GET\t/`: a method, wrongly delimited; the codec refuses it.
        (b' ' | b'\t', true) => Some(Protocol::Http1),
        (b' ', false) => match b.get(token + 1) {
            None => None,
            Some(b'/' | b'*') => Some(Protocol::Http1),
            Some(_) => Some(Protocol::Opaque),
        },
        _ => Some(Protocol::Opaque),
    }
}

/// What the first bytes (or their absence) said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Is(Protocol),
    /// Nothing (or only part of a method) arrived before the timeout.
    Silent,
    /// The client closed (or failed) before sending anything.
    Closed,
}

pub async fn detect(stream: &TcpStream, timeout: Duration) -> Detected {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; PEEK];
    let mut last = 0;
    // Backs off, so that a client stalling mid-method costs little while it waits.
    let mut pause = Duration::from_millis(1);
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => return Detected::Closed,
            Err(_) => return Detected::Silent,
        };
        if n == 0 {
            return Detected::Closed;
        }
        if let Some(p) = classify(&buf[..n]) {
            return Detected::Is(p);
        }
        // A partial method token: wait a little for more (peek returns at once while data waits).
        if n == last && Instant::now() >= deadline {
            return Detected::Silent;
        }
        last = n;
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_prefixes() {
        use Protocol::{Http1, Http2, Opaque};
        for (input, want) in [
            (&b"GET / HTTP/1.1\r\n"[..], Some(Http1)),
            (b"POST /x", Some(Http1)),
            (b"PO", None),
            (b"GE", None),
            (b"", None),
            // Any upper-case token is a method.
            (b"PROPFIND /dav HTTP/1.1", Some(Http1)),
            (b"PURGE /cache", Some(Http1)),
            (b"M-SEARCH * HTTP/1.1", Some(Http1)),
            (b"BREW ", Some(Http1)),
            // Wrong request lines are HTTP, for the codec to refuse with 400.
            (b"get / HTTP/1.1", Some(Http1)),
            (b"Get /", Some(Http1)),
            (b"get * HTTP/1.1", Some(Http1)),
            (b"GET\t/ HTTP/1.1", Some(Http1)),
            (b"get ", None),
            // Empty lines before the request line are skipped (RFC 9112 §2.2).
            (b"\r\n\r\nGET / HTTP/1.1", Some(Http1)),
            (b"\r\n", None),
            (&[b'\n'; PEEK], Some(Opaque)),
            // Not HTTP/1.
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Http2)),
            (b"PRI * HTTP/2", None),
            (b"\x16\x03\x01", Some(Opaque)),
            (b"GETX", None),
            (b"get key\r\n", Some(Opaque)),
            (b"x\r\n", Some(Opaque)),
            (b"SSH-2.0-OpenSSH_9.6\r\n", Some(Opaque)),
            (b"*1\r\n$4\r\nPING\r\n", Some(Opaque)),
            (b"{\"json\": 1}", Some(Opaque)),
            (&[b'A'; MAX_METHOD + 1], Some(Opaque)),
            // Found by `make fuzz`: past the peeked bytes nothing counts.
            (&[&[b'\n'; PEEK][..], b"1"].concat()[..], Some(Opaque)),
        ] {
            assert_eq!(
                classify(input),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[tokio::test]
    async fn a_stalled_method_token_times_out_as_silent() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        c.write_all(b"GE").await.unwrap();
        assert_eq!(
            detect(&s, Duration::from_millis(200)).await,
            Detected::Silent
        );
        c.write_all(b"T / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(
            detect(&s, Duration::from_secs(10)).await,
            Detected::Is(Protocol::Http1)
        );
        drop(c);
        let (s2, _) = {
            let _c2 = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            l.accept().await.unwrap()
        };
        assert_eq!(detect(&s2, Duration::from_secs(10)).await, Detected::Closed);
    }
}
