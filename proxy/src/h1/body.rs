//! A message body as the relay sees it: how much of it is still to come, whatever its framing,
//! so each connection is handed back (or closed) at the right byte.

use super::chunked::{Chunked, ChunkedError};
use super::head::Framing;

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
    ) -> Result<(usize, u64), ChunkedError> {
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
