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
    let a = c.acquire(None).await.unwrap();
    {
        let mut b = pin!(c.acquire(None));
        assert!(poll_once(b.as_mut()).is_pending());
        assert_eq!(state(&c).pending, 1);
        assert_eq!(c.stats.upstream_rq_pending_active.get(), 1);
        // Third request: queue full.
        assert_eq!(c.acquire(None).await.err(), Some(AcquireError::Overflow));
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
    let mut a = c.acquire(None).await.unwrap();
    let mut b = Box::pin(c.acquire(None));
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
    let again = c.acquire(None).await.unwrap();
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
    assert_eq!(
        c.acquire(None).await.err(),
        Some(AcquireError::ConnectFailed)
    );
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
    let lease = busy.acquire(None).await.unwrap();
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

fn endpoints(addrs: &[SocketAddr]) -> Vec<Endpoint> {
    addrs.iter().map(|a| (*a, None)).collect()
}

#[tokio::test]
async fn a_service_cluster_balances_each_request_and_pools_per_host() {
    let hosts = [upstream().await, upstream().await, upstream().await];
    let c = cluster(hosts[0], 10, 10);
    c.update(
        &endpoints(&hosts),
        config::api::Balancer::RoundRobin,
        None,
        Limits::default(),
    );
    let mut seen = std::collections::HashMap::new();
    for _ in 0..9 {
        let mut l = c.acquire(None).await.unwrap();
        *seen.entry(l.host().addr).or_insert(0) += 1;
        l.done(true);
    }
    assert!(hosts.iter().all(|h| seen[h] == 3), "{seen:?}");
    // One connection per host, each reused.
    assert_eq!(c.stats.upstream_cx_total.get(), 3);
    assert_eq!(state(&c).idle, 3);
    assert_eq!(c.stats.membership_total.get(), 3);
}

#[tokio::test]
async fn a_host_that_leaves_has_its_idle_connections_closed_and_gets_no_more_requests() {
    let hosts = [upstream().await, upstream().await];
    let c = cluster(hosts[0], 10, 10);
    c.update(
        &endpoints(&hosts),
        config::api::Balancer::RoundRobin,
        None,
        Limits::default(),
    );
    for _ in 0..2 {
        c.acquire(None).await.unwrap().done(true);
    }
    assert_eq!(state(&c).idle, 2);
    // A request in flight to the leaving host finishes; its connection is then closed.
    let mut held = c.acquire(None).await.unwrap();
    let leaving = held.host().addr;
    let staying = *hosts.iter().find(|h| **h != leaving).unwrap();
    c.update(
        &endpoints(&[staying]),
        config::api::Balancer::RoundRobin,
        None,
        Limits::default(),
    );
    assert_eq!(
        state(&c).idle,
        1,
        "the leaving host's idle connection closed"
    );
    held.done(true);
    drop(held);
    assert_eq!(state(&c).idle, 1, "nor kept after its request");
    for _ in 0..5 {
        let l = c.acquire(None).await.unwrap();
        assert_eq!(l.host().addr, staying);
    }
    c.update(
        &[],
        config::api::Balancer::RoundRobin,
        None,
        Limits::default(),
    );
    assert_eq!(c.acquire(None).await.err(), Some(AcquireError::NoHost));
}

#[tokio::test]
async fn consecutive_errors_eject_a_host_until_its_time_is_over() {
    let hosts = [upstream().await, upstream().await];
    let c = cluster(hosts[0], 10, 10);
    c.update(
        &endpoints(&hosts),
        config::api::Balancer::RoundRobin,
        Some(config::api::Outlier {
            consecutive_5xx: Some(2),
            consecutive_gateway_errors: None,
            interval_ms: 1000,
            base_ejection_time_ms: 300,
            max_ejection_percent: 50,
        }),
        Limits::default(),
    );
    let bad = hosts[1];
    let mut n = 0;
    while c.stats.outlier_ejections_active.get() == 0 {
        let mut l = c.acquire(None).await.unwrap();
        let code = if l.host().addr == bad { 500 } else { 200 };
        l.report(Outcome::Status(code));
        l.done(true);
        n += 1;
        assert!(n < 10, "not ejected after {n} requests");
    }
    assert_eq!(c.stats.outlier_ejections_enforced_5xx.get(), 1);
    for _ in 0..10 {
        assert_ne!(c.acquire(None).await.unwrap().host().addr, bad);
    }
    let mut listing = String::new();
    c.describe(&mut listing);
    assert!(
        listing.contains(&format!("t::{bad}::health_flags::/failed_outlier_check")),
        "{listing}"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(c.stats.outlier_ejections_active.get(), 0);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(c.acquire(None).await.unwrap().host().addr);
    }
    assert!(seen.contains(&bad), "returned after its ejection time");
}
