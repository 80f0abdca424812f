//! The replies the proxy writes itself (refused heads, overflow, upstream failures): a
//! `text/plain` body saying what happened, in the shape Envoy gives them.

use super::head;

/// A reply the proxy makes itself, `text/plain`.
pub fn local_reply(
    out: &mut Vec<u8>,
    status: u16,
    reason: &str,
    body: &str,
    overloaded: bool,
    close: bool,
) {
    head::status_line(out, status, reason.as_bytes());
    out.extend_from_slice(b"content-type: text/plain\r\ncontent-length: ");
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
