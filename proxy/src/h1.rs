//! HTTP/1.x on the wire, for the forwarding path. Pure: no I/O.
//!
//! A request or response head is parsed in place with `httparse` and written out again with only
//! what a proxy must change: hop-by-hop headers (RFC 9110 §7.6.1) dropped, `x-forwarded-for`
//! appended, `x-request-id` added, the version set to HTTP/1.1, and `connection` set for the hop
//! it is sent on. Everything else (names as the client spelled them, order, bodies and their
//! framing) passes through unchanged. [`chunked::Chunked`] follows a chunked body byte by byte, so the
//! proxy knows where a message ends without decoding it (or decodes it for an HTTP/1.0 client).
//!
//! Split by concern and role, as hyper's `proto/h1` and pingora's `http/v1` are: `head` (what
//! both roles share: limits, refusals, header classification, the two passes), `request`,
//! `response`, `chunked`, `body`, `local_reply`.

mod body;
mod chunked;
mod head;
mod local_reply;
mod request;
mod response;

pub use body::Body;
#[cfg(test)]
use chunked::Chunked;
pub use chunked::ChunkedError;
pub use head::{Framing, HeadError, Lines};
#[cfg(test)]
use head::{MAX_HEAD, MAX_HEADERS};
pub use local_reply::local_reply;
pub use request::{parse_request, parse_request_indexed, Request, RequestOpts};
pub use response::{parse_response, Response, ResponseOpts};

#[cfg(test)]
mod tests;
