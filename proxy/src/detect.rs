//! Protocol detection: peek (never consume) the first bytes. An HTTP/1.x request line gets the
//! HTTP path; anything else, including HTTP/2's preface and protocols where the server speaks
//! first (nothing arrives before the timeout), is proxied as opaque TCP.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Opaque,
}

const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];

/// Classifies a prefix: `Some` once decided, `None` if more bytes are needed.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    let mut maybe = false;
    for m in METHODS {
        if buf.len() >= m.len() {
            if buf.starts_with(m) {
                return Some(Protocol::Http1);
            }
        } else if m.starts_with(buf) {
            maybe = true;
        }
    }
    if maybe {
        None
    } else {
        Some(Protocol::Opaque)
    }
}

pub async fn detect(stream: &TcpStream, timeout: Duration) -> Protocol {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 16];
    let mut last = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return Protocol::Opaque,
        };
        if n == 0 {
            return Protocol::Opaque;
        }
        if let Some(p) = classify(&buf[..n]) {
            return p;
        }
        // A partial method token: wait a little for more (peek returns at once while data waits).
        if n == last && Instant::now() >= deadline {
            return Protocol::Opaque;
        }
        last = n;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_prefixes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"POST /x"), Some(Protocol::Http1));
        assert_eq!(classify(b"PO"), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"\x16\x03\x01"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GETX"), Some(Protocol::Opaque));
        assert_eq!(classify(b""), None);
    }
}
