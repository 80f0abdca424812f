use super::*;

fn limits(cx: Option<u32>, pending: Option<u32>, rq: Option<u32>) -> Limits {
    Limits {
        max_connections: cx,
        max_pending_requests: pending,
        max_requests: rq,
        max_requests_per_connection: None,
    }
}

type P = Pool<u32, &'static str>;

fn admit(p: &mut P, w: &'static str) -> Admit<u32> {
    p.admit(|_| true, || w).0
}

#[test]
fn unlimited_opens_connections_then_reuses_idle() {
    let mut p: P = Pool::new(Limits::default());
    assert_eq!(admit(&mut p, "a"), Admit::Connect);
    assert_eq!(admit(&mut p, "b"), Admit::Connect);
    assert_eq!(p.state().connections, 2);
    assert_eq!(p.release(7, true), None);
    assert_eq!(admit(&mut p, "c"), Admit::Use(7));
    assert!(!p.cx_open() && !p.rq_open() && !p.rq_pending_open());
    assert_eq!(p.remaining_cx(), None);
}

#[test]
fn connection_limit_then_pending_then_overflow() {
    let mut p: P = Pool::new(limits(Some(2), Some(1), None));
    assert_eq!(admit(&mut p, "a"), Admit::Connect);
    assert_eq!(p.remaining_cx(), Some(1));
    assert_eq!(admit(&mut p, "b"), Admit::Connect);
    assert!(p.cx_open());
    let (a, notes) = p.admit(|_| true, || "c");
    assert_eq!(a, Admit::Queued(0));
    assert!(notes.cx_overflow);
    assert!(p.rq_pending_open());
    assert_eq!(p.remaining_pending(), Some(0));
    let (a, notes) = p.admit(|_| true, || "d");
    assert_eq!(a, Admit::Overflow(Overflow::Pending));
    assert!(notes.cx_overflow);
    assert_eq!(
        p.state(),
        PoolState {
            connections: 2,
            idle: 0,
            pending: 1,
            requests: 2
        }
    );
}

#[test]
fn zero_pending_overflows_at_once() {
    let mut p: P = Pool::new(limits(Some(1), Some(0), None));
    assert_eq!(admit(&mut p, "a"), Admit::Connect);
    assert_eq!(admit(&mut p, "b"), Admit::Overflow(Overflow::Pending));
}

#[test]
fn release_hands_connection_to_first_waiter_fifo() {
    let mut p: P = Pool::new(limits(Some(1), Some(5), None));
    assert_eq!(admit(&mut p, "a"), Admit::Connect);
    assert_eq!(admit(&mut p, "w1"), Admit::Queued(0));
    assert_eq!(admit(&mut p, "w2"), Admit::Queued(1));
    assert_eq!(p.release(1, true), Some(("w1", Grant::Use(1))));
    assert_eq!(p.state().requests, 1);
    assert_eq!(p.release(1, true), Some(("w2", Grant::Use(1))));
    assert_eq!(p.release(1, true), None);
    assert_eq!(
        p.state(),
        PoolState {
            connections: 1,
            idle: 1,
            pending: 0,
            requests: 0
        }
    );
    assert!(p.cx_open(), "an idle connection still counts");
}

#[test]
fn retired_connection_lets_waiter_connect() {
    // max requests per connection is enforced by the caller releasing with reusable = false.
    let mut p: P = Pool::new(limits(Some(1), Some(1), None));
    assert_eq!(admit(&mut p, "a"), Admit::Connect);
    assert_eq!(admit(&mut p, "w"), Admit::Queued(0));
    assert_eq!(p.release(1, false), Some(("w", Grant::Connect)));
    assert_eq!(p.state().connections, 1);
    assert_eq!(p.state().requests, 1);
    assert_eq!(p.release(2, false), None);
    assert_eq!(p.state(), PoolState::default());
    assert!(!p.cx_open());
}

#[test]
fn cancel_leaves_queue_without_leaking() {
    let mut p: P = Pool::new(limits(Some(1), Some(2), None));
    assert_eq!(admit(&mut p, "a"), Admit::Connect);
    assert_eq!(admit(&mut p, "w1"), Admit::Queued(0));
    assert_eq!(admit(&mut p, "w2"), Admit::Queued(1));
    assert!(p.rq_pending_open());
    assert!(p.cancel(0));
    assert!(!p.cancel(0), "second cancel is a no-op");
    assert!(!p.rq_pending_open());
    assert_eq!(p.state().pending, 1);
    assert_eq!(p.release(1, true), Some(("w2", Grant::Use(1))));
    assert!(
        !p.cancel(1),
        "already granted: the caller must give the grant back"
    );
    assert_eq!(p.release(1, true), None);
    assert_eq!(p.state().requests, 0);
}

#[test]
fn connect_failure_frees_slot_for_waiter() {
    let mut p: P = Pool::new(limits(Some(1), Some(1), None));
    assert_eq!(admit(&mut p, "a"), Admit::Connect);
    assert_eq!(admit(&mut p, "w"), Admit::Queued(0));
    assert_eq!(p.connect_failed(), Some(("w", Grant::Connect)));
    assert_eq!(p.connect_failed(), None);
    assert_eq!(p.state(), PoolState::default());
}

#[test]
fn max_requests_gate() {
    let mut p: P = Pool::new(limits(None, None, Some(2)));
    assert_eq!(admit(&mut p, "a"), Admit::Connect);
    assert_eq!(admit(&mut p, "b"), Admit::Connect);
    assert!(p.rq_open());
    assert_eq!(p.remaining_rq(), Some(0));
    assert_eq!(admit(&mut p, "c"), Admit::Overflow(Overflow::Requests));
    assert_eq!(p.release(1, true), None);
    assert!(!p.rq_open());
    assert_eq!(admit(&mut p, "d"), Admit::Use(1));
}

#[test]
fn closed_idle_connections_are_skipped_and_forgotten() {
    let mut p: P = Pool::new(limits(Some(2), None, None));
    assert_eq!(admit(&mut p, "a"), Admit::Connect);
    assert_eq!(admit(&mut p, "b"), Admit::Connect);
    p.release(1, true);
    p.release(2, true);
    // 2 is on top but dead; 1 is used.
    assert_eq!(p.admit(|c| *c != 2, || "c").0, Admit::Use(1));
    assert_eq!(p.state().connections, 1);
    p.release(1, true);
    assert_eq!(p.remove_idle(|c| *c == 1), Some((1, None)));
    assert_eq!(p.remove_idle(|c| *c == 1), None);
    assert_eq!(p.state(), PoolState::default());
}

#[test]
fn idle_close_lets_waiter_connect() {
    let mut p: P = Pool::new(limits(Some(1), Some(1), Some(1)));
    assert_eq!(admit(&mut p, "a"), Admit::Connect);
    assert_eq!(admit(&mut p, "b"), Admit::Overflow(Overflow::Requests));
    assert_eq!(p.release(1, true), None);
    assert_eq!(p.remove_idle(|c| *c == 1), Some((1, None)));
    assert_eq!(admit(&mut p, "c"), Admit::Connect);
}

#[test]
fn tcp_connections_share_the_connection_limit() {
    let mut p: P = Pool::new(limits(Some(2), Some(1), None));
    assert!(p.open_tcp());
    assert!(p.open_tcp());
    assert!(!p.open_tcp());
    assert!(p.cx_open());
    assert_eq!(admit(&mut p, "w"), Admit::Queued(0));
    assert_eq!(p.close_tcp(), Some(("w", Grant::Connect)));
    assert_eq!(p.close_tcp(), None);
    assert_eq!(p.state().connections, 1);
}

#[test]
fn gauges_return_to_zero_after_load() {
    let mut p: P = Pool::new(limits(Some(3), Some(1), None));
    let mut held = Vec::new();
    let mut queued = Vec::new();
    let mut overflow = 0;
    for i in 0..20 {
        match admit(&mut p, "w") {
            Admit::Connect => held.push(i),
            Admit::Queued(id) => queued.push(id),
            Admit::Overflow(_) => overflow += 1,
            Admit::Use(_) => unreachable!(),
        }
    }
    assert_eq!((held.len(), queued.len(), overflow), (3, 1, 16));
    let mut grants = 0;
    for c in held {
        if p.release(c, false).is_some() {
            grants += 1;
        }
    }
    assert_eq!(grants, 1);
    assert_eq!(p.release(99, false), None);
    assert_eq!(p.state(), PoolState::default());
    assert!(!p.cx_open() && !p.rq_pending_open() && !p.rq_open());
}

#[test]
fn a_request_for_one_host_takes_its_idle_connection_or_trades_another_hosts() {
    use super::Idle;
    // Connections are numbered: odd ones to host A, even ones to host B.
    let host_a = |c: &u32| if c % 2 == 1 { Idle::Take } else { Idle::Skip };
    let host_b = |c: &u32| {
        if c.is_multiple_of(2) {
            Idle::Take
        } else {
            Idle::Skip
        }
    };
    let mut p: P = Pool::new(Limits {
        max_connections: Some(2),
        ..Limits::default()
    });
    assert_eq!(p.admit_for(host_a, || "a").0, Admit::Connect);
    assert_eq!(p.admit_for(host_a, || "a").0, Admit::Connect);
    assert_eq!(p.release(1, true), None);
    assert_eq!(p.release(3, true), None);
    // B has nothing idle and no room: the oldest of A's idle connections makes way.
    assert_eq!(p.admit_for(host_b, || "b").0, Admit::Connect);
    assert_eq!(p.state().connections, 2);
    assert_eq!(p.state().idle, 1);
    // A still finds its remaining one.
    assert_eq!(p.admit_for(host_a, || "a").0, Admit::Use(3));
    // Nothing idle, no room: B waits.
    assert_eq!(p.admit_for(host_b, || "b2").0, Admit::Queued(0));
}
