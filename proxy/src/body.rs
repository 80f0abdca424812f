//! Streaming bodies: nothing is buffered whole. The request body to the upstream counts bytes; the
//! response body to the client carries the request's [`Tail`], which releases the pooled
//! connection, records stats and writes the access log when the response ends (or is cut off).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::http::Tail;
use crate::stats::ClusterStats;

/// The client's request body on its way upstream.
pub struct UpstreamBody {
    inner: Incoming,
    stats: Arc<ClusterStats>,
    /// Bytes received from the client, for the access log.
    received: Option<Arc<AtomicU64>>,
}

impl UpstreamBody {
    pub fn new(
        inner: Incoming,
        stats: Arc<ClusterStats>,
        received: Option<Arc<AtomicU64>>,
    ) -> Self {
        UpstreamBody {
            inner,
            stats,
            received,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                let n = d.len() as u64;
                this.stats.upstream_cx_tx_bytes_total.add(n);
                if let Some(r) = &this.received {
                    r.fetch_add(n, Relaxed);
                }
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the client receives: a local reply, or the upstream's streamed response.
pub enum ResponseBody {
    Full(Option<Bytes>),
    Upstream { inner: Incoming, tail: Option<Tail> },
}

impl ResponseBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(b.into()))
    }
    pub fn empty() -> Self {
        ResponseBody::Full(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ResponseBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Upstream { inner, tail } => {
                let r = Pin::new(&mut *inner).poll_frame(cx);
                match &r {
                    Poll::Ready(Some(Ok(f))) => {
                        if let (Some(d), Some(t)) = (f.data_ref(), tail.as_mut()) {
                            t.sent(d.len() as u64);
                        }
                        if inner.is_end_stream() {
                            if let Some(t) = tail.take() {
                                t.complete();
                            }
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(t) = tail.take() {
                            t.complete();
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        if let Some(t) = tail.take() {
                            t.upstream_reset();
                        }
                    }
                    Poll::Pending => {}
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(b) => b.is_none(),
            ResponseBody::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ResponseBody::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let ResponseBody::Upstream { inner, tail } = self {
            if let Some(t) = tail.take() {
                // An empty body (HEAD, 204, 304) may never be polled: that is a clean end.
                if inner.is_end_stream() {
                    t.complete();
                } else {
                    t.downstream_gone();
                }
            }
        }
    }
}
