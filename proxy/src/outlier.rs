//! Outlier detection, Envoy's consecutive-error detectors: a host that answers
//! `consecutive_5xx` 5xx in a row (or `consecutive_gateway_errors` 502/503/504, resets and connect
//! failures in a row) is ejected from balancing for `base_ejection_time` times the number of times
//! it has been ejected, while no more than `max_ejection_percent` of the hosts are out (one may
//! always be). Each `interval` a host spends back in service takes one off its ejection count.
//!
//! No clock of its own and no I/O: the caller passes `now` (ms, [`crate::host::now_ms`]) and
//! schedules the return of an ejected host; the state is atomics, so recording an outcome on the
//! request path takes no lock.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use config::api::Outlier;

/// Envoy's default cap on one ejection's length (`max_ejection_time`).
pub const MAX_EJECTION_MS: u64 = 300_000;

/// How a request to a host ended, as far as outlier detection cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    /// The connection could not be made, or closed before a response: a gateway error.
    ConnectFailed,
}

impl Outcome {
    fn is_5xx(self) -> bool {
        match self {
            Outcome::Status(s) => s >= 500,
            Outcome::ConnectFailed => true,
        }
    }
    fn is_gateway_error(self) -> bool {
        match self {
            Outcome::Status(s) => matches!(s, 502..=504),
            Outcome::ConnectFailed => true,
        }
    }
}

/// Which detector ejected a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Consecutive5xx,
    ConsecutiveGateway,
}

/// One host's detector state.
#[derive(Debug, Default)]
pub struct HostState {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// Times ejected, less one per interval spent in service since.
    ejections: AtomicU32,
    /// Ejected until this time (ms); 0 while in service.
    ejected_until: AtomicU64,
    /// When it last came back into service (ms), for the decay of `ejections`.
    returned_at: AtomicU64,
}

impl HostState {
    pub fn ejected(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Relaxed);
        until != 0 && now < until
    }

    /// Ejected and not yet returned (the cluster's timer returns it).
    pub fn is_out(&self) -> bool {
        self.ejected_until.load(Relaxed) != 0
    }

    pub fn ejection_count(&self) -> u32 {
        self.ejections.load(Relaxed)
    }
}

/// An ejection to carry out: the host is out until `until` (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub reason: Reason,
    pub until: u64,
}

/// A cluster's detector: its settings and how many of its hosts are out.
#[derive(Debug, Default)]
pub struct Detector {
    config: Option<Outlier>,
    ejected: AtomicU32,
}

impl Detector {
    pub fn new(config: Option<Outlier>) -> Detector {
        Detector {
            config,
            ejected: AtomicU32::new(0),
        }
    }

    pub fn config(&self) -> Option<&Outlier> {
        self.config.as_ref()
    }

    pub fn enabled(&self) -> bool {
        self.config.is_some()
    }

    /// Hosts out now (`outlier_detection.ejections_active`).
    pub fn ejected_now(&self) -> u32 {
        self.ejected.load(Relaxed)
    }

    /// Records one outcome for `host`, one of `hosts` hosts. Returns the ejection to carry out, if
    /// this outcome completes a run of errors and the ejection cap allows it; `Err(reason)` if the
    /// cap refused it (Envoy's `ejections_overflow`).
    pub fn record(
        &self,
        host: &HostState,
        outcome: Outcome,
        hosts: usize,
        now: u64,
    ) -> Result<Option<Ejection>, Reason> {
        let Some(cfg) = &self.config else {
            return Ok(None);
        };
        let run = |counter: &AtomicU32, hit: bool| {
            if hit {
                counter.fetch_add(1, Relaxed) + 1
            } else {
                // A store only when needed: most answers are fine and the counter already 0.
                if counter.load(Relaxed) != 0 {
                    counter.store(0, Relaxed);
                }
                0
            }
        };
        let n5 = run(&host.consecutive_5xx, outcome.is_5xx());
        let ngw = run(&host.consecutive_gateway, outcome.is_gateway_error());
        let reason = if cfg.consecutive_5xx.is_some_and(|m| m > 0 && n5 >= m) {
            Reason::Consecutive5xx
        } else if cfg
            .consecutive_gateway_errors
            .is_some_and(|m| m > 0 && ngw >= m)
        {
            Reason::ConsecutiveGateway
        } else {
            return Ok(None);
        };
        if host.is_out() {
            return Ok(None);
        }
        // At most max_ejection_percent of the hosts, but one may always be ejected.
        let out = self.ejected.load(Relaxed) as u64;
        if out > 0 && (out + 1) * 100 > cfg.max_ejection_percent as u64 * hosts as u64 {
            host.consecutive_5xx.store(0, Relaxed);
            host.consecutive_gateway.store(0, Relaxed);
            return Err(reason);
        }
        let interval = cfg.interval_ms.max(1);
        let decayed = (now.saturating_sub(host.returned_at.load(Relaxed)) / interval) as u32;
        let times = host.ejections.load(Relaxed).saturating_sub(decayed) + 1;
        let until = now
            + cfg
                .base_ejection_time_ms
                .saturating_mul(times as u64)
                .min(MAX_EJECTION_MS.max(cfg.base_ejection_time_ms))
                .max(1);
        // Two requests may complete the run at once: one ejects.
        if host
            .ejected_until
            .compare_exchange(0, until, Relaxed, Relaxed)
            .is_err()
        {
            return Ok(None);
        }
        host.ejections.store(times, Relaxed);
        host.consecutive_5xx.store(0, Relaxed);
        host.consecutive_gateway.store(0, Relaxed);
        self.ejected.fetch_add(1, Relaxed);
        Ok(Some(Ejection { reason, until }))
    }

    /// Returns an ejected host to service (its ejection time is over, or it left the cluster).
    pub fn restore(&self, host: &HostState, now: u64) {
        if host.ejected_until.swap(0, Relaxed) != 0 {
            host.returned_at.store(now, Relaxed);
            self.ejected.fetch_sub(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(c5xx: u32, gw: Option<u32>, percent: u32) -> Detector {
        Detector::new(Some(Outlier {
            consecutive_5xx: Some(c5xx),
            consecutive_gateway_errors: gw,
            interval_ms: 1_000,
            base_ejection_time_ms: 15_000,
            max_ejection_percent: percent,
        }))
    }

    #[test]
    fn a_run_of_5xx_ejects_and_a_success_breaks_the_run() {
        let d = cfg(3, None, 100);
        let h = HostState::default();
        for s in [500, 503] {
            assert_eq!(d.record(&h, Outcome::Status(s), 3, 0), Ok(None));
        }
        assert_eq!(d.record(&h, Outcome::Status(200), 3, 0), Ok(None));
        for _ in 0..2 {
            assert_eq!(d.record(&h, Outcome::Status(500), 3, 0), Ok(None));
        }
        let e = d.record(&h, Outcome::Status(500), 3, 100).unwrap().unwrap();
        assert_eq!(e.reason, Reason::Consecutive5xx);
        assert_eq!(e.until, 15_100);
        assert!(h.ejected(15_099) && !h.ejected(15_100));
        assert_eq!(d.ejected_now(), 1);
        // Already out: more errors do not eject again.
        for _ in 0..5 {
            assert_eq!(d.record(&h, Outcome::Status(500), 3, 200), Ok(None));
        }
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_and_decays_in_service() {
        let d = cfg(1, None, 100);
        let h = HostState::default();
        let e1 = d.record(&h, Outcome::Status(500), 2, 0).unwrap().unwrap();
        assert_eq!(e1.until, 15_000);
        d.restore(&h, 15_000);
        assert_eq!(d.ejected_now(), 0);
        // Failing again at once: twice the base time.
        let e2 = d
            .record(&h, Outcome::Status(500), 2, 15_000)
            .unwrap()
            .unwrap();
        assert_eq!(e2.until, 15_000 + 30_000);
        d.restore(&h, 45_000);
        // Ten intervals in service take the count back to zero: the base time again.
        let e3 = d
            .record(&h, Outcome::Status(500), 2, 45_000 + 10_000)
            .unwrap()
            .unwrap();
        assert_eq!(e3.until, 55_000 + 15_000);
    }

    #[test]
    fn gateway_errors_count_connect_failures_but_not_500() {
        let d = Detector::new(Some(Outlier {
            consecutive_5xx: None,
            consecutive_gateway_errors: Some(2),
            ..Outlier::default()
        }));
        let h = HostState::default();
        assert_eq!(d.record(&h, Outcome::Status(500), 5, 0), Ok(None));
        assert_eq!(d.record(&h, Outcome::Status(500), 5, 0), Ok(None));
        assert_eq!(d.record(&h, Outcome::ConnectFailed, 5, 0), Ok(None));
        let e = d.record(&h, Outcome::Status(503), 5, 0).unwrap().unwrap();
        assert_eq!(e.reason, Reason::ConsecutiveGateway);
    }

    #[test]
    fn the_cap_allows_one_then_holds_to_the_percentage() {
        // 10% of 3 hosts: one may be ejected, a second may not.
        let d = cfg(1, None, 10);
        let (a, b) = (HostState::default(), HostState::default());
        assert!(d.record(&a, Outcome::Status(500), 3, 0).unwrap().is_some());
        assert_eq!(
            d.record(&b, Outcome::Status(500), 3, 0),
            Err(Reason::Consecutive5xx)
        );
        // 50% of 4: two may be out.
        let d = cfg(1, None, 50);
        let hs: Vec<HostState> = (0..3).map(|_| HostState::default()).collect();
        assert!(d
            .record(&hs[0], Outcome::Status(500), 4, 0)
            .unwrap()
            .is_some());
        assert!(d
            .record(&hs[1], Outcome::Status(500), 4, 0)
            .unwrap()
            .is_some());
        assert!(d.record(&hs[2], Outcome::Status(500), 4, 0).is_err());
    }

    #[test]
    fn off_without_a_config() {
        let d = Detector::new(None);
        let h = HostState::default();
        for _ in 0..100 {
            assert_eq!(d.record(&h, Outcome::Status(500), 1, 0), Ok(None));
        }
    }
}
