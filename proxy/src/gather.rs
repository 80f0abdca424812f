//! One write per turn for an HTTP/2 connection.
//!
//! The `h2` codec flushes its socket whenever its own buffer fills, which a DATA frame of 256
//! bytes or more does at once (it keeps such a payload aside, to write it after the frame's
//! head), and once more when it has nothing left to send. So every answer with a body of that
//! size cost a `write` of its own, and on a connection carrying many streams most of the proxy's
//! time went to the syscalls (and the loopback delivery they do). Here the connection's writes are
//! gathered in a buffer of ours instead, and [`Gather::around`], which wraps the task that drives
//! the connection, sends what was gathered once each time the task has run: the frames of every
//! stream that the task's turn (and the stream tasks that ran before it) produced go in one
//! `write`, as HAProxy and nginx send what an event-loop pass produced.
//!
//! Bounded: at most [`LIMIT`] bytes wait; a write past that first sends what waits and holds the
//! writer (h2's back-pressure) while the socket is full. A connection with nothing to send holds
//! no buffer: an emptied one goes back to a small per-thread free list.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::idle::{Activity, Tracked};

/// Bytes that may wait to be sent; a write past this sends them first.
pub const LIMIT: usize = 64 * 1024;
/// The size a buffer starts at (a turn's worth, commonly), and the largest kept for reuse.
const SIZE: usize = 16 * 1024;
/// Free buffers kept per thread.
const KEEP: usize = 64;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A connection's write side with what waits to go on it. Shared by the connection's I/O
/// ([`Link`], inside the h2 codec) and [`Gather::around`], which sends.
pub struct Gather<'a> {
    out: Mutex<Out>,
    activity: &'a Activity,
}

struct Out {
    half: OwnedWriteHalf,
    buf: Vec<u8>,
    /// How much of `buf` has gone.
    sent: usize,
    /// The socket failed: every later write says so.
    failed: Option<io::ErrorKind>,
}

impl Out {
    fn waiting(&self) -> usize {
        self.buf.len() - self.sent
    }

    fn push(&mut self, data: &[u8]) {
        if self.buf.capacity() == 0 {
            self.buf = FREE
                .with(|f| f.borrow_mut().pop())
                .unwrap_or_else(|| Vec::with_capacity(SIZE));
        }
        self.buf.extend_from_slice(data);
    }

    fn fail(&mut self, e: io::Error) -> io::Error {
        self.failed = Some(e.kind());
        e
    }

    /// Sends what waits; `Pending` (the task woken when the socket has room) while it is full.
    fn poll_send(&mut self, cx: &mut Context<'_>, activity: &Activity) -> Poll<io::Result<()>> {
        if let Some(k) = self.failed {
            return Poll::Ready(Err(k.into()));
        }
        while self.sent < self.buf.len() {
            match ready!(Pin::new(&mut self.half).poll_write(cx, &self.buf[self.sent..])) {
                Ok(0) => return Poll::Ready(Err(self.fail(io::ErrorKind::WriteZero.into()))),
                Ok(n) => {
                    self.sent += n;
                    activity.touch();
                }
                Err(e) => return Poll::Ready(Err(self.fail(e))),
            }
        }
        self.sent = 0;
        let mut buf = std::mem::take(&mut self.buf);
        if buf.capacity() == SIZE {
            buf.clear();
            FREE.with(|f| {
                let mut f = f.borrow_mut();
                if f.len() < KEEP {
                    f.push(buf);
                }
            });
        }
        Poll::Ready(Ok(()))
    }

    /// Makes room for `n` more bytes: sends what waits when they would pass [`LIMIT`]. `Ok(true)`
    /// when `n` is itself that large and should go straight to the socket.
    fn poll_room(
        &mut self,
        n: usize,
        cx: &mut Context<'_>,
        activity: &Activity,
    ) -> Poll<io::Result<bool>> {
        if let Some(k) = self.failed {
            return Poll::Ready(Err(k.into()));
        }
        if self.waiting() + n <= LIMIT {
            return Poll::Ready(Ok(false));
        }
        ready!(self.poll_send(cx, activity))?;
        Poll::Ready(Ok(n >= LIMIT))
    }
}

/// Splits `tcp` into its read side (touching `activity` as bytes come) and a [`Gather`] for its
/// writes; [`Link`] joins them again as the I/O the h2 codec drives.
pub fn split(
    tcp: TcpStream,
    activity: &Activity,
) -> (Tracked<OwnedReadHalf, &Activity>, Gather<'_>) {
    let (read, write) = tcp.into_split();
    (
        Tracked::new(read, activity),
        Gather {
            out: Mutex::new(Out {
                half: write,
                buf: Vec::new(),
                sent: 0,
                failed: None,
            }),
            activity,
        },
    )
}

impl Gather<'_> {
    fn lock(&self) -> MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` (what drives the connection), sending what it wrote after each of its turns. A
    /// send that fails is kept, for the connection's next write to report.
    pub async fn around<F: Future>(&self, f: F) -> F::Output {
        let mut f = pin!(f);
        poll_fn(|cx| {
            let r = f.as_mut().poll(cx);
            let mut out = self.lock();
            if out.waiting() > 0 {
                let _ = out.poll_send(cx, self.activity);
            }
            r
        })
        .await
    }
}

/// A connection's I/O for the h2 codec: reads straight from the socket, writes gathered. Must be
/// driven inside [`Gather::around`], which sends the writes (its `poll_flush` leaves them to it).
pub struct Link<'g, 'a> {
    pub read: Tracked<OwnedReadHalf, &'a Activity>,
    pub gather: &'g Gather<'a>,
}

impl AsyncRead for Link<'_, '_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Link<'_, '_> {
    /// One slice of [`Self::poll_write_vectored`].
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let g = self.gather;
        let mut out = g.lock();
        let n = bufs.iter().map(|b| b.len()).sum();
        if ready!(out.poll_room(n, cx, g.activity))? {
            let r = Pin::new(&mut out.half).poll_write_vectored(cx, bufs);
            if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
                g.activity.touch();
            }
            return r;
        }
        for b in bufs {
            out.push(b);
        }
        Poll::Ready(Ok(n))
    }

    /// True: h2 then hands a frame's head and its payload over together, and both are gathered.
    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Left to [`Gather::around`], at the end of the task's turn; only a failure is told here.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.gather.lock().failed {
            Some(k) => Poll::Ready(Err(k.into())),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let g = self.gather;
        let mut out = g.lock();
        ready!(out.poll_send(cx, g.activity))?;
        Pin::new(&mut out.half).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn a_turns_writes_go_together_at_its_end() {
        let (ours, mut peer) = pair().await;
        let activity = Activity::since(Instant::now());
        let (read, gather) = split(ours, &activity);
        let mut link = Link {
            read,
            gather: &gather,
        };
        let mut got = [0u8; 64];
        gather
            .around(async {
                link.write_all(b"one ").await.unwrap();
                link.write_all(b"two ").await.unwrap();
                link.flush().await.unwrap();
                link.write_all(b"three").await.unwrap();
                // Still this turn: nothing has gone yet.
                assert!(peer.try_read(&mut got).is_err());
                assert!(!activity.touched());
                tokio::task::yield_now().await;
                // The turn ended: all of it went, in one write.
                assert_eq!(gather.lock().waiting(), 0);
            })
            .await;
        assert!(activity.touched());
        let n = peer.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"one two three");
    }

    #[tokio::test]
    async fn at_most_the_limit_waits_and_a_full_socket_holds_the_writer() {
        let (ours, peer) = pair().await;
        let activity = Activity::since(Instant::now());
        let (read, gather) = split(ours, &activity);
        let mut link = Link {
            read,
            gather: &gather,
        };
        let chunk = vec![7u8; 10_000];
        let mut written = 0usize;
        // The peer reads nothing: writes are taken until the socket's buffers and LIMIT are
        // full, then the writer is held.
        let held = gather
            .around(async {
                loop {
                    let w = tokio::time::timeout(
                        std::time::Duration::from_millis(300),
                        link.write_all(&chunk),
                    )
                    .await;
                    assert!(gather.lock().waiting() <= LIMIT);
                    match w {
                        Ok(r) => {
                            r.unwrap();
                            written += chunk.len();
                        }
                        Err(_) => return true,
                    }
                    assert!(written < 64 << 20, "the writer was never held");
                }
            })
            .await;
        assert!(held);
        // What was taken all arrives once the peer reads, the shutdown sending what waits.
        gather
            .around(async {
                let reader = tokio::spawn(async move {
                    let mut peer = peer;
                    let mut all = Vec::new();
                    peer.read_to_end(&mut all).await.unwrap();
                    all.len()
                });
                link.shutdown().await.unwrap();
                let got = reader.await.unwrap();
                assert!(got >= written, "{got} of {written}");
            })
            .await;
    }

    #[tokio::test]
    async fn a_failed_send_is_told_to_the_next_write() {
        let (ours, peer) = pair().await;
        let activity = Activity::since(Instant::now());
        let (read, gather) = split(ours, &activity);
        let mut link = Link {
            read,
            gather: &gather,
        };
        drop(peer);
        let failed = gather
            .around(async {
                for _ in 0..1000 {
                    if link.write_all(b"x").await.is_err() || link.flush().await.is_err() {
                        return true;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                false
            })
            .await;
        assert!(failed);
    }
}
