//! A request body that can be sent again: an upstream may refuse a stream it never processed
//! (a GOAWAY whose last stream id is below it, or REFUSED_STREAM; RFC 9113 §8.7 says such a
//! request can be retried safely), and by then hyper has taken the body. [`Replay`] keeps what
//! it hands hyper (clones of the frames' `Bytes`: counted references, no copy) up to
//! [`KEEP_LIMIT`], and gives the frames and the rest of the downstream body back when hyper
//! drops it, so the stream can go again on another connection. Istio's default retry policy
//! (`refused-stream`) and Envoy's `x-envoy-retry-on: refused-stream` do the same.
//!
//! Keeping stops, and what was kept is freed, once the stream has its answer (the receiver of
//! the rescue is gone) or past the limit: memory stays bounded by [`KEEP_LIMIT`] per stream
//! waiting for its head.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;

/// The request body bytes kept for a resend (a gRPC unary call's message, a form).
pub const KEEP_LIMIT: usize = 64 * 1024;

/// What a dropped [`Replay`] gives back: the frames sent so far and the body's rest.
pub struct Rescued {
    sent: Vec<Frame<Bytes>>,
    rest: Option<Incoming>,
    /// False when more than [`KEEP_LIMIT`] went: then the request cannot go again.
    whole: bool,
}

impl Rescued {
    /// The body to send again, when all that was sent was kept.
    pub fn replay(self) -> Option<Replay> {
        self.whole.then(|| Replay {
            pending: self.sent.into(),
            rest: self.rest,
            kept: Vec::new(),
            kept_len: 0,
            whole: true,
            back: None,
        })
    }
}

/// The body of a request on its way upstream.
pub struct Replay {
    /// Frames to send first (those of an earlier attempt).
    pending: VecDeque<Frame<Bytes>>,
    rest: Option<Incoming>,
    kept: Vec<Frame<Bytes>>,
    kept_len: usize,
    whole: bool,
    /// Where the rescue goes when hyper drops the body; `None` once no resend can follow.
    back: Option<oneshot::Sender<Rescued>>,
}

impl Replay {
    /// `body`, kept for a resend whose rescue goes to the returned receiver.
    pub fn new(body: Incoming) -> (Replay, oneshot::Receiver<Rescued>) {
        let (tx, rx) = oneshot::channel();
        let r = Replay {
            pending: VecDeque::new(),
            rest: Some(body),
            kept: Vec::new(),
            kept_len: 0,
            whole: true,
            back: Some(tx),
        };
        (r, rx)
    }

    /// Whether no rescue is armed (a body given back after a resend).
    pub fn is_disarmed(&self) -> bool {
        self.back.is_none()
    }

    /// Arms a replayed body for one more resend.
    pub fn rearm(&mut self) -> oneshot::Receiver<Rescued> {
        let (tx, rx) = oneshot::channel();
        self.back = Some(tx);
        rx
    }

    fn keep(&mut self, frame: &Frame<Bytes>) {
        let Some(back) = &self.back else { return };
        if back.is_closed() || !self.whole {
            self.kept = Vec::new();
            return;
        }
        let copy = if let Some(d) = frame.data_ref() {
            self.kept_len += d.len();
            Frame::data(d.clone())
        } else if let Some(t) = frame.trailers_ref() {
            Frame::trailers(t.clone())
        } else {
            return;
        };
        if self.kept_len > KEEP_LIMIT {
            self.whole = false;
            self.kept = Vec::new();
        } else {
            self.kept.push(copy);
        }
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        if let Some(back) = self.back.take() {
            let mut sent = std::mem::take(&mut self.kept);
            sent.extend(self.pending.drain(..));
            let _ = back.send(Rescued {
                sent,
                rest: self.rest.take(),
                whole: self.whole,
            });
        }
    }
}

impl Body for Replay {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let next = match this.pending.pop_front() {
            Some(f) => Poll::Ready(Some(Ok(f))),
            None => match &mut this.rest {
                Some(b) => Pin::new(b).poll_frame(cx),
                None => Poll::Ready(None),
            },
        };
        if let Poll::Ready(Some(Ok(f))) = &next {
            this.keep(f);
        }
        next
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.rest.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let queued: u64 = self
            .pending
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        let rest = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint());
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + queued);
        if let Some(u) = rest.upper() {
            hint.set_upper(u + queued);
        }
        hint
    }
}
