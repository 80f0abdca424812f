//! The async layer around the pool: queue waiters, cancellation races, give-backs.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};

use super::*;

async fn upstream() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

fn cluster(addr: SocketAddr, cx: u32, pending: u32) -> Arc<Cluster> {
    Cluster::new(
        "t".into(),
        addr,
        Limits {
            max_connections: Some(cx),
            max_pending_requests: Some(pending),
            ..Limits::default()
        },
        Timeouts {
            connect: Duration::from_secs(5),
            idle: Duration::from_secs(60),
        },
        &Registry::default(),
    )
}

fn state(c: &Cluster) -> crate::pool::PoolState {
    c.pool.lock().unwrap().state()
}

fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    let waker = std::task::Waker::noop();
    f.poll(&mut Context::from_waker(waker))
}

#[tokio::test]
async fn queued_waiter_cancelled_leaves_no_trace() {
    let c = cluster(upstream().await, 1, 1);
    let a = c.acquire().await.unwrap();
    {
        let mut b = pin!(c.acquire());
        assert!(poll_once(b.as_mut()).is_pending());
        assert_eq!(state(&c).pending, 1);
        assert_eq!(c.stats.upstream_rq_pending_active.get(), 1);
        // Third request: queue full.
        assert_eq!(c.acquire().await.err(), Some(AcquireError::Overflow));
    } // b dropped while queued
    assert_eq!(state(&c).pending, 0);
    assert_eq!(c.stats.upstream_rq_cancelled.get(), 1);
    drop(a); // not marked done: the connection is closed
    assert_eq!(state(&c), crate::pool::PoolState::default());
    assert_eq!(c.stats.circuit_breakers_snapshot(), (0, 0, 0));
}

#[tokio::test]
async fn waiter_dropped_after_its_grant_gives_it_back() {
    let c = cluster(upstream().await, 1, 1);
    let mut a = c.acquire().await.unwrap();
    let mut b = Box::pin(c.acquire());
    assert!(poll_once(b.as_mut()).is_pending());
    // A finishes cleanly: its connection is handed to B's channel...
    a.done(true);
    drop(a);
    assert_eq!(state(&c).pending, 0);
    assert_eq!(state(&c).requests, 1);
    // ...but B goes away before it ever looks: the connection must return to the pool.
    drop(b);
    assert_eq!(
        state(&c),
        crate::pool::PoolState {
            connections: 1,
            idle: 1,
            pending: 0,
            requests: 0
        }
    );
    // And it is reused.
    let again = c.acquire().await.unwrap();
    assert_eq!(c.stats.upstream_cx_total.get(), 1);
    drop(again);
}

#[tokio::test]
async fn connect_failure_frees_the_slot() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let c = cluster(dead, 1, 0);
    assert_eq!(c.acquire().await.err(), Some(AcquireError::ConnectFailed));
    assert_eq!(c.stats.upstream_cx_connect_fail.get(), 1);
    assert_eq!(state(&c), crate::pool::PoolState::default());
}

#[tokio::test]
async fn idle_clusters_are_forgotten_past_the_cap() {
    let registry = Registry::default();
    let clusters = Clusters::default();
    let addr = upstream().await;
    let make = |name: String| {
        let r = &registry;
        move || {
            Cluster::new(
                name,
                addr,
                Limits::default(),
                Timeouts {
                    connect: Duration::from_secs(5),
                    idle: Duration::from_secs(60),
                },
                r,
            )
        }
    };
    let busy = clusters.get_or_create("busy", &registry, make("busy".into()));
    let lease = busy.acquire().await.unwrap();
    for i in 1..MAX_IDLE_CLUSTERS {
        let n = format!("idle{i}");
        clusters.get_or_create(&n, &registry, make(n.clone()));
    }
    assert_eq!(clusters.len(), MAX_IDLE_CLUSTERS);
    clusters.get_or_create("new", &registry, make("new".into()));
    // Only the busy one and the new one are left, in the map and in the stats.
    assert_eq!(clusters.len(), 2);
    assert_eq!(
        registry.cluster_names(),
        vec!["busy".to_string(), "new".to_string()]
    );
    drop(lease);
}
