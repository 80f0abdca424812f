//! Shutdown: SIGTERM or `/quitquitquit` flips the process to draining (listeners stop accepting,
//! `/ready` answers 503, `server.live` reads 0); in-flight connections finish, up to the drain time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

#[derive(Clone)]
pub struct Drain(Arc<Inner>);

struct Inner {
    draining: watch::Sender<bool>,
    active: AtomicUsize,
    idle: Notify,
}

impl Default for Drain {
    fn default() -> Self {
        Drain(Arc::new(Inner {
            draining: watch::channel(false).0,
            active: AtomicUsize::new(0),
            idle: Notify::new(),
        }))
    }
}

impl Drain {
    pub fn start(&self) {
        self.0.draining.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.0.draining.borrow()
    }

    /// Resolves once draining has started.
    pub async fn signaled(&self) {
        let mut rx = self.0.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Counts a connection as in flight until the guard drops.
    pub fn track(&self) -> Tracked {
        self.0.active.fetch_add(1, Ordering::AcqRel);
        Tracked(self.clone())
    }

    pub fn active(&self) -> usize {
        self.0.active.load(Ordering::Acquire)
    }

    /// Resolves when no tracked connection is left.
    pub async fn idle(&self) {
        loop {
            let notified = self.0.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

pub struct Tracked(Drain);

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.0 .0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0 .0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_tracked_connections() {
        let d = Drain::default();
        assert!(!d.is_draining());
        let t = d.track();
        d.start();
        d.signaled().await;
        assert!(d.is_draining());
        let d2 = d.clone();
        let h = tokio::spawn(async move { d2.idle().await });
        tokio::task::yield_now().await;
        assert!(!h.is_finished());
        drop(t);
        h.await.unwrap();
        assert_eq!(d.active(), 0);
    }
}
