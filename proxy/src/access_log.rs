//! Envoy's default access log format, written to stdout by a background task so that the request
//! path only does a non-blocking channel send (entries are dropped, and counted, if it is full).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// One finished request. The codec fills the request's fields as it forwards the head
/// ([`crate::h1::Request::log`]); the exchange fills in the rest as it ends.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub start: Option<SystemTime>,
    pub method: String,
    pub path: String,
    pub protocol: &'static str,
    pub code: u16,
    /// Envoy's response flags, comma-separated in Envoy's order (`-`: none).
    pub flags: std::borrow::Cow<'static, str>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration_ms: u64,
    pub upstream_time_ms: Option<u64>,
    pub xff: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub authority: Option<String>,
    pub upstream_host: Option<SocketAddr>,
}

/// `[START_TIME] "METHOD PATH PROTOCOL" CODE FLAGS BYTES_RECEIVED BYTES_SENT DURATION UPSTREAM_TIME
/// "X-FORWARDED-FOR" "USER-AGENT" "X-REQUEST-ID" "AUTHORITY" "UPSTREAM_HOST"`, `-` for missing.
///
/// What a client sent is escaped ([`escaped`]), so a `"` or a control byte in a header cannot add
/// fields or lines to the log.
pub fn format(e: &Entry, out: &mut String) {
    out.push('[');
    write_time(e.start.unwrap_or(UNIX_EPOCH), out);
    out.push_str("] \"");
    escaped(&e.method, out);
    out.push(' ');
    escaped(&e.path, out);
    let _ = write!(
        out,
        " {}\" {} {} {} {} {} ",
        e.protocol, e.code, e.flags, e.bytes_received, e.bytes_sent, e.duration_ms
    );
    match e.upstream_time_ms {
        Some(t) => {
            let _ = write!(out, "{t}");
        }
        None => out.push('-'),
    }
    for v in [&e.xff, &e.user_agent, &e.request_id, &e.authority] {
        out.push_str(" \"");
        escaped(v.as_deref().unwrap_or("-"), out);
        out.push('"');
    }
    match e.upstream_host {
        Some(a) => {
            let _ = write!(out, " \"{a}\"");
        }
        None => out.push_str(" \"-\""),
    }
    out.push('\n');
}

/// Appends `s` with `"` and `\` backslash-escaped and control characters as `\xNN`: one field stays
/// one field, one entry one line.
fn escaped(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// RFC 3339 UTC with milliseconds, like Envoy: `2026-11-22T03:24:08.123Z`.
fn write_time(t: SystemTime, out: &mut String) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    );
}

#[derive(Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<Entry>,
    pub dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Starts the writer task (on the current runtime).
    pub fn spawn() -> AccessLog {
        let (tx, mut rx) = mpsc::channel::<Entry>(16 * 1024);
        tokio::spawn(async move {
            let mut out = tokio::io::stdout();
            let mut buf = String::new();
            while let Some(e) = rx.recv().await {
                buf.clear();
                format(&e, &mut buf);
                // Batch whatever else is already queued into one write.
                while buf.len() < 64 * 1024 {
                    match rx.try_recv() {
                        Ok(e) => format(&e, &mut buf),
                        Err(_) => break,
                    }
                }
                if out.write_all(buf.as_bytes()).await.is_err() {
                    return;
                }
                let _ = out.flush().await;
            }
        });
        AccessLog {
            tx,
            dropped: Arc::default(),
        }
    }

    pub fn log(&self, e: Entry) {
        if self.tx.try_send(e).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn envoy_default_format() {
        let e = Entry {
            start: Some(UNIX_EPOCH + Duration::from_millis(1_763_781_848_123)),
            method: "GET".into(),
            path: "/hello?x=1".into(),
            protocol: "HTTP/1.1",
            code: 503,
            flags: "UO".into(),
            bytes_received: 0,
            bytes_sent: 81,
            duration_ms: 0,
            upstream_time_ms: None,
            xff: None,
            user_agent: Some("curl/8.0".to_string()),
            request_id: Some("abc".to_string()),
            authority: Some("svc:8080".to_string()),
            upstream_host: Some("10.0.0.1:8080".parse().unwrap()),
        };
        let mut s = String::new();
        format(&e, &mut s);
        assert_eq!(
            s,
            "[2025-11-22T03:24:08.123Z] \"GET /hello?x=1 HTTP/1.1\" 503 UO 0 81 0 - \"-\" \"curl/8.0\" \"abc\" \"svc:8080\" \"10.0.0.1:8080\"\n"
        );
    }

    #[test]
    fn client_text_cannot_add_fields_or_lines() {
        let e = Entry {
            method: "GET".into(),
            path: "/a\"b".into(),
            protocol: "HTTP/1.1",
            user_agent: Some("x\" \"forged\" \"fields".into()),
            request_id: Some("a\\b\r\nfake line\u{7f}".into()),
            ..Entry::default()
        };
        let mut s = String::new();
        format(&e, &mut s);
        assert_eq!(s.lines().count(), 1, "{s}");
        assert!(
            s.contains(r#""GET /a\"b HTTP/1.1""#)
                && s.contains(r#""x\" \"forged\" \"fields""#)
                && s.contains(r#""a\\b\x0d\x0afake line\x7f""#),
            "{s}"
        );
        // Unescaped quotes delimit exactly the 6 quoted fields.
        let quotes = s
            .match_indices('"')
            .filter(|(i, _)| !s[..*i].ends_with('\\'))
            .count();
        assert_eq!(quotes, 12, "{s}");
    }
}
