//! Shutdown: what the proxy does between SIGTERM (or `/quitquitquit`) and its exit.
//!
//! # Why not "stop accepting at once"
//! In a pod the kubelet sends SIGTERM to every container at the same moment. An app shutting down
//! gracefully still calls other services (it flushes a queue, deregisters, writes a last record);
//! its calls go through this proxy's outbound listener. A proxy that stops accepting on SIGTERM
//! fails them (Istio #7136, "Envoy shutting down before the thing it's wrapping"). Callers of the
//! pod, meanwhile, must be told to move away, without losing what they already sent.
//!
//! # The approach: keep serving, exit on zero connections (Istio's `EXIT_ON_ZERO_ACTIVE_CONNECTIONS`)
//! The two known answers are Istio's (the proxy keeps serving after SIGTERM and exits once it has no
//! connection left, after a minimum drain period) and Linkerd's `linkerd-await` (the app's
//! entrypoint is wrapped so that the proxy is told to quit when the app exits). We take Istio's:
//! it needs nothing from the app, its image or its command (`linkerd-await` must be in the image
//! and the command rewritten, which breaks images without a shell and apps whose command the
//! webhook does not know), and the kubelet's grace period stays the last word. Its known limit is
//! an app that is idle for a while and then calls out after the proxy has already exited; native
//! sidecars (below) have no such limit.
//!
//! # The timeline after SIGTERM ([`Plan::after_sigterm`])
//! - At once: `/ready` answers 503 and `server.live` reads 0 (the pod leaves its Services'
//!   endpoints), and the inbound (and gateway) listeners enter [`Phase::Leave`]: they keep
//!   accepting and serving, but every HTTP/1 response says `connection: close` and HTTP/2 clients
//!   get a GOAWAY (their open streams finish), so callers move to other pods.
//! - The outbound listener stays in [`Phase::Serve`]: the app's calls, new connections and new
//!   requests alike, are forwarded as before, keep-alive included.
//! - After `--drain-time`: inbound enters [`Phase::Close`] (stops accepting; idle keep-alive
//!   connections close; requests in flight finish). From then on the proxy exits as soon as no
//!   connection is left, inbound or outbound: the app has exited (the kernel closed its
//!   connections) or has nothing open.
//! - Bound: the proxy exits at the latest `--drain-max` (the pod's
//!   `terminationGracePeriodSeconds` as the webhook renders it; 30 s, the kubelet's default,
//!   otherwise) or `--drain-time` after SIGTERM, whichever is longer, closing what is left. The
//!   kubelet's SIGKILL at the pod's grace period bounds it too.
//!
//! `/quitquitquit` keeps its meaning ([`Plan::after_quit`]): the app (a Job, typically) says it is
//! done, so there is nothing to keep serving for: every listener stops accepting at once, requests
//! in flight finish within `--drain-time`. It also cuts a SIGTERM drain short. SIGINT does the same
//! (a person at a terminal wants the proxy gone).
//!
//! # Native sidecars
//! With `trellis.dev/native-sidecar: enabled` the proxy is a restartable init container, and the
//! kubelet sends it SIGTERM only once the app containers have exited. Then the outbound side has
//! nothing open, inbound has nothing to forward to: the proxy exits after `--drain-time`, with no
//! hook or timing from the webhook.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// Where one side's listeners are in a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// As before any signal.
    Serve,
    /// Still accepting and serving; HTTP/1 responses carry `connection: close`, HTTP/2 clients get
    /// a GOAWAY.
    Leave,
    /// No longer accepting; idle connections close, requests in flight finish.
    Close,
}

/// Which listeners: inbound (and a gateway's, which serves callers too), or outbound (the app's
/// own calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Inbound,
    Outbound,
}

/// The steps of a drain, counted from its signal: a pure function of `--drain-time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Inbound keeps accepting (telling callers to leave) this long; no exit before it, even
    /// with no connection left (Istio's minimum drain duration).
    pub inbound_open_for: Duration,
    /// Exit by this, whatever is left.
    pub at_most: Duration,
}

impl Plan {
    /// `drain_max`: `--drain-max`, the pod's grace period (30 s, the kubelet's default, unless
    /// the webhook rendered another).
    pub fn after_sigterm(drain_time: Duration, drain_max: Duration) -> Plan {
        Plan {
            inbound_open_for: drain_time,
            at_most: drain_time.max(drain_max),
        }
    }

    pub fn after_quit(drain_time: Duration) -> Plan {
        Plan {
            inbound_open_for: Duration::ZERO,
            at_most: drain_time,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    /// SIGTERM or `/quitquitquit` seen: `/ready` answers 503.
    draining: bool,
    /// `/quitquitquit` (or SIGINT) seen.
    quit: bool,
    inbound: Phase,
    outbound: Phase,
}

/// The process's drain state and its count of connections, shared by every listener.
#[derive(Clone)]
pub struct Drain(Arc<Inner>);

struct Inner {
    state: watch::Sender<State>,
    /// Connections open, by [`Side`].
    active: [AtomicUsize; 2],
    idle: Notify,
}

impl Default for Drain {
    fn default() -> Self {
        Drain(Arc::new(Inner {
            state: watch::channel(State {
                draining: false,
                quit: false,
                inbound: Phase::Serve,
                outbound: Phase::Serve,
            })
            .0,
            active: [AtomicUsize::new(0), AtomicUsize::new(0)],
            idle: Notify::new(),
        }))
    }
}

impl Drain {
    /// SIGTERM: not ready; inbound tells callers to leave; outbound serves on.
    pub fn terminate(&self) {
        self.0.state.send_modify(|s| {
            s.draining = true;
            s.inbound = s.inbound.max(Phase::Leave);
        });
    }

    /// The drain time is over: inbound stops accepting and closes its idle connections.
    pub fn close_inbound(&self) {
        self.0.state.send_modify(|s| s.inbound = Phase::Close);
    }

    /// `/quitquitquit`: every listener stops accepting at once.
    pub fn quit(&self) {
        self.0.state.send_modify(|s| {
            s.draining = true;
            s.quit = true;
            s.inbound = Phase::Close;
            s.outbound = Phase::Close;
        });
    }

    /// SIGTERM or `/quitquitquit` seen (`/ready` answers 503).
    pub fn is_draining(&self) -> bool {
        self.0.state.borrow().draining
    }

    /// Resolves once `/quitquitquit` (or [`quit`](Self::quit)) has been asked for.
    pub async fn quitting(&self) {
        let mut rx = self.0.state.subscribe();
        let _ = rx.wait_for(|s| s.quit).await;
    }

    /// The view of one side's listeners and connections.
    pub fn side(&self, side: Side) -> SideDrain {
        SideDrain {
            drain: self.clone(),
            side,
        }
    }

    pub fn phase(&self, side: Side) -> Phase {
        let s = self.0.state.borrow();
        match side {
            Side::Inbound => s.inbound,
            Side::Outbound => s.outbound,
        }
    }

    /// Counts a connection of `side` as open until the guard drops.
    pub fn track(&self, side: Side) -> Tracked {
        self.0.active[side as usize].fetch_add(1, Ordering::AcqRel);
        Tracked(self.clone(), side)
    }

    /// Connections open on `side`.
    pub fn active(&self, side: Side) -> usize {
        self.0.active[side as usize].load(Ordering::Acquire)
    }

    fn total(&self) -> usize {
        self.active(Side::Inbound) + self.active(Side::Outbound)
    }

    /// Resolves when no tracked connection is left, on either side.
    pub async fn idle(&self) {
        loop {
            let notified = self.0.idle.notified();
            if self.total() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One side's drain, as its listeners and connections see it.
#[derive(Clone)]
pub struct SideDrain {
    drain: Drain,
    side: Side,
}

impl SideDrain {
    pub fn phase(&self) -> Phase {
        self.drain.phase(self.side)
    }

    /// Clients are to be told to leave (`connection: close`, GOAWAY).
    pub fn is_draining(&self) -> bool {
        self.phase() >= Phase::Leave
    }

    /// Resolves once clients are to be told to leave (HTTP/2: GOAWAY).
    pub async fn signaled(&self) {
        self.until(Phase::Leave).await
    }

    /// Resolves once this side stops accepting and closes idle connections.
    pub async fn closed(&self) {
        self.until(Phase::Close).await
    }

    async fn until(&self, phase: Phase) {
        let mut rx = self.drain.0.state.subscribe();
        let side = self.side;
        let _ = rx
            .wait_for(|s| {
                let p = match side {
                    Side::Inbound => s.inbound,
                    Side::Outbound => s.outbound,
                };
                p >= phase
            })
            .await;
    }

    /// Counts a connection of this side as open until the guard drops.
    pub fn track(&self) -> Tracked {
        self.drain.track(self.side)
    }
}

pub struct Tracked(Drain, Side);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0 .0.active[self.1 as usize].fetch_sub(1, Ordering::AcqRel);
        if self.0.total() == 0 {
            self.0 .0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_connections_of_both_sides() {
        let d = Drain::default();
        assert!(!d.is_draining());
        let inbound = d.track(Side::Inbound);
        let outbound = d.side(Side::Outbound).track();
        d.terminate();
        assert!(d.is_draining());
        let d2 = d.clone();
        let h = tokio::spawn(async move { d2.idle().await });
        tokio::task::yield_now().await;
        assert!(!h.is_finished());
        drop(inbound);
        tokio::task::yield_now().await;
        assert!(!h.is_finished(), "an outbound connection is still open");
        drop(outbound);
        h.await.unwrap();
        assert_eq!(d.total(), 0);
    }

    #[tokio::test]
    async fn sigterm_tells_inbound_callers_to_leave_and_leaves_outbound_serving() {
        let d = Drain::default();
        let (inb, outb) = (d.side(Side::Inbound), d.side(Side::Outbound));
        assert_eq!((inb.phase(), outb.phase()), (Phase::Serve, Phase::Serve));
        d.terminate();
        assert_eq!((inb.phase(), outb.phase()), (Phase::Leave, Phase::Serve));
        assert!(inb.is_draining() && !outb.is_draining());
        inb.signaled().await;
        // Outbound is not told to leave by a SIGTERM, nor closed by the drain time's end.
        d.close_inbound();
        inb.closed().await;
        assert_eq!(outb.phase(), Phase::Serve);
        let waiting = tokio::time::timeout(Duration::from_millis(20), outb.signaled()).await;
        assert!(waiting.is_err(), "outbound must keep serving after SIGTERM");
        // A later SIGTERM never reopens inbound.
        d.terminate();
        assert_eq!(inb.phase(), Phase::Close);
    }

    #[tokio::test]
    async fn quit_closes_every_listener_at_once() {
        let d = Drain::default();
        d.quit();
        assert!(d.is_draining());
        d.quitting().await;
        d.side(Side::Outbound).closed().await;
        d.side(Side::Inbound).closed().await;
    }

    #[test]
    fn the_plans_are_bounded() {
        let s = Duration::from_secs;
        let p = Plan::after_sigterm(s(5), s(30));
        assert_eq!((p.inbound_open_for, p.at_most), (s(5), s(30)));
        // A pod's longer grace period (--drain-max) keeps the outbound side for the app longer.
        assert_eq!(Plan::after_sigterm(s(5), s(120)).at_most, s(120));
        // A drain time longer than the bound stretches it.
        let p = Plan::after_sigterm(s(45), s(30));
        assert_eq!(p.at_most, s(45));
        let q = Plan::after_quit(Duration::from_secs(5));
        assert_eq!(
            (q.inbound_open_for, q.at_most),
            (Duration::ZERO, Duration::from_secs(5))
        );
    }
}
