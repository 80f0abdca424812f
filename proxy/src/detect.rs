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
    let mut buf = [0u8; 16];
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
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"POST /x"), Some(Protocol::Http1));
        assert_eq!(classify(b"PO"), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"\x16\x03\x01"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GETX"), Some(Protocol::Opaque));
        assert_eq!(classify(b""), None);
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
