//! Read buffers that hold memory only while a connection has bytes in them.
//!
//! An idle keep-alive connection (downstream waiting for its next request, upstream waiting in
//! the pool) keeps no buffer: [`Buf::release`] returns it to a small per-thread free list, and the
//! next read takes one back. So a thousand idle connections cost their sockets, not 16 KiB each.

use std::cell::RefCell;
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The size a buffer starts at: a typical head and a good slice of a body in one read.
pub const SIZE: usize = 16 * 1024;
/// Buffers grow up to this size while a head does not fit (then the head is refused).
pub const MAX: usize = 64 * 1024;
/// Free buffers kept per thread.
const KEEP: usize = 64;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Bytes read and not yet consumed: `v[start..end]`.
#[derive(Default)]
pub struct Buf {
    v: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buf {
    pub const fn new() -> Self {
        Buf {
            v: Vec::new(),
            start: 0,
            end: 0,
        }
    }

    pub fn data(&self) -> &[u8] {
        &self.v[self.start..self.end]
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// No room left to read into, even after compaction.
    pub fn is_full(&self) -> bool {
        self.start == 0 && self.end == MAX
    }

    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.end - self.start);
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Gives the memory back if nothing is buffered.
    pub fn release(&mut self) {
        if self.is_empty() && self.v.capacity() > 0 {
            let v = std::mem::take(&mut self.v);
            if v.len() == SIZE {
                FREE.with(|f| {
                    let mut f = f.borrow_mut();
                    if f.len() < KEEP {
                        f.push(v);
                    }
                });
            }
        }
    }

    /// Makes room at the end: takes a buffer if there is none, moves unread bytes to the front,
    /// grows (up to [`MAX`]) when full.
    fn room(&mut self) -> io::Result<()> {
        if self.v.is_empty() {
            self.v = FREE
                .with(|f| f.borrow_mut().pop())
                .unwrap_or_else(|| vec![0; SIZE]);
        }
        if self.end < self.v.len() {
            return Ok(());
        }
        if self.start > 0 {
            self.v.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        } else if self.v.len() < MAX {
            self.v.resize((self.v.len() * 2).min(MAX), 0);
        } else {
            return Err(io::Error::other("read buffer full"));
        }
        Ok(())
    }

    /// One read: `Ok(0)` is end of stream.
    pub async fn read_from<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        r: &mut R,
    ) -> io::Result<usize> {
        self.room()?;
        let n = r.read(&mut self.v[self.end..]).await?;
        self.end += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_consumes_compacts_grows_and_releases() {
        let mut b = Buf::new();
        assert!(b.is_empty());
        let mut src: &[u8] = b"hello world";
        assert_eq!(b.read_from(&mut src).await.unwrap(), 11);
        assert_eq!(b.data(), b"hello world");
        b.consume(6);
        assert_eq!(b.data(), b"world");
        // Release keeps buffered bytes.
        b.release();
        assert_eq!(b.data(), b"world");
        b.consume(5);
        b.release();
        assert_eq!(b.v.capacity(), 0);

        // A head larger than SIZE grows the buffer, up to MAX and no further.
        let big = vec![b'x'; MAX + 10];
        let mut src: &[u8] = &big;
        let mut total = 0;
        loop {
            match b.read_from(&mut src).await {
                Ok(n) => total += n,
                Err(e) => {
                    assert_eq!(e.to_string(), "read buffer full");
                    break;
                }
            }
        }
        assert_eq!(total, MAX);
        assert!(b.is_full());
        // Consuming the front makes room again by compaction.
        b.consume(10);
        assert_eq!(b.read_from(&mut src).await.unwrap(), 10);
        assert_eq!(b.data().len(), MAX);
    }
}
