//! A minimal, fast HTTP/1.1 upstream for benchmarks: answers every request with `ok`.
//! `cargo run --release -p proxy --example bench_upstream -- 127.0.0.1:18080`

use std::convert::Infallible;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::Response;
use hyper_util::rt::TokioIo;

struct Ok2(Option<Bytes>);
impl Body for Ok2 {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18080".into());
    let l = tokio::net::TcpListener::bind(&addr).await?;
    loop {
        let (s, _) = l.accept().await?;
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, Infallible>(Response::new(Ok2(Some(Bytes::from_static(b"ok")))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}
