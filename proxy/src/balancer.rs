//! Which host of a cluster takes a request (HTTP) or a connection (opaque TCP): least request by
//! the power of two choices (Envoy's default), round robin, random, or a consistent hash of a
//! header, a cookie or the client's address.
//!
//! Ejected hosts are skipped; if every host is ejected, all are used (Envoy's panic mode: better
//! a suspect host than none). No lock: the host counters are atomics, the round-robin cursor is
//! one atomic, and randomness comes from a per-thread generator.

use std::cell::Cell;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use config::api::{Balancer as Kind, HashOn};

use crate::host::Host;

#[derive(Debug, Default)]
pub struct Balancer {
    kind: Kind,
    cursor: AtomicUsize,
}

/// A fast per-thread generator (xorshift64*), seeded from the std hasher's random keys.
pub fn random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id()) | 1,
        );
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

fn mix(mut z: u64) -> u64 {
    // splitmix64's finaliser: spreads a key and a host address into an even score.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable hash of bytes (the same in every process), for hash keys.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    // FNV-1a: tiny, stable across processes and versions.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

impl Balancer {
    pub fn new(kind: Kind) -> Balancer {
        Balancer {
            kind,
            cursor: AtomicUsize::new(0),
        }
    }

    /// Envoy's name for it, as `/clusters` shows it.
    pub fn name(&self) -> &'static str {
        match &self.kind {
            Kind::LeastRequest => "LEAST_REQUEST",
            Kind::RoundRobin => "ROUND_ROBIN",
            Kind::Random => "RANDOM",
            Kind::ConsistentHash { .. } => "RING_HASH",
        }
    }

    /// What a consistent hash is taken over, if this balancer hashes.
    pub fn hash_on(&self) -> Option<&HashOn> {
        match &self.kind {
            Kind::ConsistentHash { on } => Some(on),
            _ => None,
        }
    }

    /// Picks a host. `any_ejected` lets the common case skip the health check of each host;
    /// `key` is the consistent-hash key (a hashing balancer without one picks at random).
    pub fn pick<'h>(
        &self,
        hosts: &'h [Arc<Host>],
        any_ejected: bool,
        key: Option<u64>,
        now: u64,
    ) -> Option<&'h Arc<Host>> {
        match hosts.len() {
            0 => return None,
            1 => return hosts.first(),
            _ => {}
        }
        if !any_ejected {
            return self.pick_among(hosts.len(), |i| &hosts[i], key);
        }
        let healthy: Vec<&Arc<Host>> = hosts.iter().filter(|h| !h.outlier.ejected(now)).collect();
        if healthy.is_empty() {
            return self.pick_among(hosts.len(), |i| &hosts[i], key);
        }
        self.pick_among(healthy.len(), |i| healthy[i], key)
    }

    fn pick_among<'h>(
        &self,
        n: usize,
        at: impl Fn(usize) -> &'h Arc<Host>,
        key: Option<u64>,
    ) -> Option<&'h Arc<Host>> {
        if n == 1 {
            return Some(at(0));
        }
        let i = match &self.kind {
            Kind::LeastRequest => {
                let r = random();
                let a = (r % n as u64) as usize;
                // A second, different index: an offset of 1..n from the first.
                let b = (a + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
                let (ha, hb) = (at(a), at(b));
                if hb.active.load(Relaxed) < ha.active.load(Relaxed) {
                    b
                } else {
                    a
                }
            }
            Kind::RoundRobin => self.cursor.fetch_add(1, Relaxed) % n,
            Kind::Random => (random() % n as u64) as usize,
            Kind::ConsistentHash { .. } => match key {
                // Rendezvous hashing: the host with the highest score for this key. A host
                // leaving moves only its own keys.
                Some(k) => (0..n)
                    .max_by_key(|&i| mix(k ^ host_hash(at(i))))
                    .unwrap_or(0),
                None => (random() % n as u64) as usize,
            },
        };
        Some(at(i))
    }
}

fn host_hash(h: &Host) -> u64 {
    let mut s = std::collections::hash_map::DefaultHasher::new();
    h.addr.hash(&mut s);
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::SocketAddr;

    fn hosts(n: u8) -> Vec<Arc<Host>> {
        (1..=n)
            .map(|i| {
                Arc::new(Host::new(
                    SocketAddr::from(([10, 0, 0, i], 80)),
                    Some(format!("pod-{i}")),
                ))
            })
            .collect()
    }

    fn spread(b: &Balancer, hs: &[Arc<Host>], n: usize) -> HashMap<SocketAddr, usize> {
        let mut m = HashMap::new();
        for _ in 0..n {
            *m.entry(b.pick(hs, false, None, 0).unwrap().addr)
                .or_default() += 1;
        }
        m
    }

    #[test]
    fn every_balancer_spreads_over_every_host() {
        let hs = hosts(3);
        for kind in [Kind::LeastRequest, Kind::RoundRobin, Kind::Random] {
            let m = spread(&Balancer::new(kind.clone()), &hs, 3000);
            assert_eq!(m.len(), 3, "{kind:?}: {m:?}");
            // Binomial(3000, 1/3) stays within ±150 of 1000 with overwhelming probability.
            assert!(
                m.values().all(|&c| (850..=1150).contains(&c)),
                "{kind:?}: {m:?}"
            );
        }
        let m = spread(&Balancer::new(Kind::RoundRobin), &hs, 300);
        assert!(m.values().all(|&c| c == 100), "{m:?}");
    }

    #[test]
    fn least_request_avoids_the_busy_host() {
        let hs = hosts(2);
        hs[0].active.store(5, Relaxed);
        let b = Balancer::default();
        for _ in 0..100 {
            assert_eq!(b.pick(&hs, false, None, 0).unwrap().addr, hs[1].addr);
        }
    }

    #[test]
    fn ejected_hosts_are_skipped_unless_all_are() {
        let hs = hosts(3);
        let d = crate::outlier::Detector::new(Some(config::api::Outlier {
            consecutive_5xx: Some(1),
            max_ejection_percent: 100,
            ..Default::default()
        }));
        let _ = d.record(&hs[0].outlier, crate::outlier::Outcome::Status(500), 3, 0);
        let b = Balancer::new(Kind::RoundRobin);
        for _ in 0..30 {
            assert_ne!(b.pick(&hs, true, None, 1).unwrap().addr, hs[0].addr);
        }
        for h in &hs[1..] {
            let _ = d.record(&h.outlier, crate::outlier::Outcome::Status(500), 3, 0);
        }
        let m: std::collections::HashSet<_> = (0..30)
            .map(|_| b.pick(&hs, true, None, 1).unwrap().addr)
            .collect();
        assert_eq!(m.len(), 3, "panic mode uses every host");
    }

    #[test]
    fn a_hash_key_sticks_and_a_host_leaving_moves_only_its_keys() {
        let hs = hosts(4);
        let b = Balancer::new(Kind::ConsistentHash {
            on: HashOn::Header("x-user".into()),
        });
        let keys: Vec<u64> = (0..400)
            .map(|i| stable_hash(format!("user-{i}").as_bytes()))
            .collect();
        let before: Vec<SocketAddr> = keys
            .iter()
            .map(|k| b.pick(&hs, false, Some(*k), 0).unwrap().addr)
            .collect();
        let again: Vec<SocketAddr> = keys
            .iter()
            .map(|k| b.pick(&hs, false, Some(*k), 0).unwrap().addr)
            .collect();
        assert_eq!(before, again);
        let fewer = &hs[..3];
        for (k, was) in keys.iter().zip(&before) {
            let now = b.pick(fewer, false, Some(*k), 0).unwrap().addr;
            if *was != hs[3].addr {
                assert_eq!(now, *was, "a key on a host that stayed moved");
            }
        }
        let used: std::collections::HashSet<_> = before.iter().collect();
        assert_eq!(used.len(), 4);
    }
}
