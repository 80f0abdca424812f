//! Idle timeouts for what carries bytes for a long time: opaque TCP connections, upgraded
//! (`101`) tunnels, and HTTP streams whose bodies are still moving. Envoy's tcp_proxy
//! `idle_timeout` and stream idle timeout: when no byte moves in either direction for
//! `--idle-timeout`, the connection or stream ends, so a peer that goes quiet cannot hold a pool
//! slot forever.
//!
//! An [`Activity`] is touched where bytes move; [`Activity::expired`] sleeps until the last touch
//! is `idle` old. Nothing is armed until the first touch, so a short request costs no timer.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// When bytes last moved, as milliseconds since `base`.
pub struct Activity {
    base: Instant,
    /// `NEVER` until the first touch.
    last_ms: AtomicU64,
}

const NEVER: u64 = u64::MAX;

impl Activity {
    /// Counts from `base` (a time the caller already read, so creating one reads no clock).
    pub fn since(base: Instant) -> Activity {
        Activity {
            base,
            last_ms: AtomicU64::new(NEVER),
        }
    }

    /// Bytes moved now.
    pub fn touch(&self) {
        // Only one task touches an activity: a load and a store, no read-modify-write.
        self.last_ms
            .store(self.base.elapsed().as_millis() as u64, Relaxed);
    }

    /// Whether anything was touched yet (before that, [`Activity::expired`] need not be polled).
    pub fn touched(&self) -> bool {
        self.last_ms.load(Relaxed) != NEVER
    }

    /// Resolves once nothing was touched for `idle` (counting from `base` if never touched).
    pub async fn expired(&self, idle: Duration) {
        loop {
            let last = match self.last_ms.load(Relaxed) {
                NEVER => 0,
                ms => ms,
            };
            let deadline = self.base + Duration::from_millis(last) + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

impl Activity {
    /// [`Activity::expired`], for a connection that is idle only while `busy()` is false (it has
    /// no stream open): an expiry while busy counts as a touch, so the timer re-arms for another
    /// `idle` (one check per idle timeout, no work per stream). Must be polled by the task that
    /// touches, as the I/O's own touches are.
    pub async fn expired_unless(&self, idle: Duration, busy: impl Fn() -> bool) {
        loop {
            self.expired(idle).await;
            if !busy() {
                return;
            }
            self.touch();
        }
    }
}

/// A stream that touches `activity` whenever bytes pass, and counts the bytes it read.
/// `A` is how it reaches the activity: borrowed (`&Activity`), or shared (`Arc<Activity>`) where
/// the stream must be `'static` (an upstream HTTP/2 connection's).
pub struct Tracked<S, A> {
    io: S,
    activity: A,
    pub read: u64,
}

impl<S, A: std::ops::Deref<Target = Activity>> Tracked<S, A> {
    pub fn new(io: S, activity: A) -> Self {
        Tracked {
            io,
            activity,
            read: 0,
        }
    }
}

impl<S: AsyncRead + Unpin, A: std::ops::Deref<Target = Activity> + Unpin> AsyncRead
    for Tracked<S, A>
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read += n as u64;
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin, A: std::ops::Deref<Target = Activity> + Unpin> AsyncWrite
    for Tracked<S, A>
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How a [`copy_until_idle`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both sides closed (or one failed).
    Closed,
    /// No byte moved for the idle timeout.
    Idle,
}

/// Copies both ways until both sides close, or until no byte moved for `idle`. Returns how it
/// ended and the bytes read from `a` and from `b`.
pub async fn copy_until_idle<A, B>(a: &mut A, b: &mut B, idle: Duration) -> (Ended, u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::since(Instant::now());
    activity.touch();
    let mut ta = Tracked::new(a, &activity);
    let mut tb = Tracked::new(b, &activity);
    let ended = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut ta, &mut tb) => Ended::Closed,
        _ = activity.expired(idle) => Ended::Idle,
    };
    (ended, ta.read, tb.read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_quiet_tunnel_ends_after_the_idle_timeout_a_busy_one_does_not() {
        let (mut a, mut a_peer) = tokio::io::duplex(64);
        let (mut b, mut b_peer) = tokio::io::duplex(64);
        let idle = Duration::from_secs(1);
        let copy = tokio::spawn(async move { copy_until_idle(&mut a, &mut b, idle).await });
        // Bytes every 100 ms for 2 s keep it open, twice the idle timeout.
        for _ in 0..20 {
            a_peer.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            b_peer.read_exact(&mut got).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!copy.is_finished(), "ended while bytes were moving");
        let quiet = Instant::now();
        let (ended, from_a, from_b) = copy.await.unwrap();
        assert_eq!((ended, from_a, from_b), (Ended::Idle, 80, 0));
        assert!(quiet.elapsed() >= Duration::from_millis(500));
    }

    #[tokio::test]
    async fn expiry_counts_from_the_last_touch() {
        let act = Activity::since(Instant::now());
        assert!(!act.touched());
        tokio::time::sleep(Duration::from_millis(120)).await;
        act.touch();
        assert!(act.touched());
        let t = Instant::now();
        act.expired(Duration::from_millis(100)).await;
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(80), "{waited:?}");
    }
}
