//! A proxy's `/stats` (Envoy's text format, `name: value` per line), parsed in one place, and a
//! matcher in the manner of linkerd2-proxy's integration-test metrics matcher:
//!
//! ```ignore
//! Matcher::new(admin).metric("cluster.x.upstream_rq_503").eventually_eq(3).await;
//! ```
//!
//! Stats are updated off the request path, so a test asserts with a bounded retry rather than a
//! single read or a sleep; when the value never comes, the failure prints the whole `/stats` text
//! it last saw, which is what one needs to see why.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::http::Client;
use crate::netns::Netns;
use crate::Error;

/// One read of `/stats`.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    text: String,
    values: BTreeMap<String, String>,
}

impl Stats {
    pub fn parse(text: &str) -> Stats {
        Stats {
            text: text.to_string(),
            values: text
                .lines()
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect(),
        }
    }

    /// The value as shown (histograms are not numbers).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// A counter or gauge, if present and a number.
    pub fn value(&self, name: &str) -> Option<i64> {
        self.get(name)?.parse().ok()
    }

    /// A counter or gauge; 0 when absent (Envoy shows a cluster's stats only once it exists).
    pub fn num(&self, name: &str) -> u64 {
        self.value(name).map_or(0, |v| v.max(0) as u64)
    }

    pub fn has(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// The line as `/stats` shows it.
    pub fn line(&self, name: &str) -> String {
        match self.get(name) {
            Some(v) => format!("{name}: {v}"),
            None => format!("{name}: (absent)"),
        }
    }

    /// Stat names containing `part`.
    pub fn names_with(&self, part: &str) -> Vec<String> {
        self.values
            .keys()
            .filter(|k| k.contains(part))
            .cloned()
            .collect()
    }

    /// The highest value `name` took over `samples` (0 if none).
    pub fn highest(samples: &[Stats], name: &str) -> u64 {
        samples.iter().map(|s| s.num(name)).max().unwrap_or(0)
    }

    /// The text as read.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// How long one read of `/stats` may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Metric::eventually_eq`] waits by default: generous, a loaded CI machine is slow.
const DEADLINE: Duration = Duration::from_secs(20);
const INTERVAL: Duration = Duration::from_millis(50);

/// Reads a proxy's admin `/stats`, from here or from inside a namespace.
#[derive(Clone, Copy)]
pub struct Matcher<'a> {
    admin: SocketAddr,
    netns: Option<&'a Netns>,
    deadline: Duration,
}

impl<'a> Matcher<'a> {
    /// The admin listener at `admin`.
    pub fn new(admin: SocketAddr) -> Matcher<'a> {
        Matcher {
            admin,
            netns: None,
            deadline: DEADLINE,
        }
    }

    /// Read it from inside `ns` (e.g. `127.0.0.1:9901` of a pod).
    pub fn from_netns(mut self, ns: &'a Netns) -> Self {
        self.netns = Some(ns);
        self
    }

    /// How long the `eventually` assertions wait (20 s unless told).
    pub fn within(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// One `GET /stats`, which must answer 200.
    pub async fn fetch(&self) -> Result<Stats, Error> {
        let read = async {
            let mut to = Client::to(self.admin);
            if let Some(ns) = self.netns {
                to = to.netns(ns);
            }
            to.connect().await?.get("/stats").await
        };
        let r = tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .map_err(|_| Error::TimedOut {
                addr: self.admin,
                after: READ_TIMEOUT,
            })??;
        if r.status != 200 {
            return Err(Error::Status {
                method: "GET",
                path: "/stats".into(),
                addr: self.admin,
                status: r.status,
                body: r.body,
            });
        }
        Ok(Stats::parse(&r.body))
    }

    /// One read that must succeed (a test failure otherwise).
    pub async fn snapshot(&self) -> Stats {
        self.fetch()
            .await
            .unwrap_or_else(|e| panic!("reading /stats: {e:?}"))
    }

    /// A matcher for the stat `name`.
    pub fn metric(&self, name: impl Into<String>) -> Metric<'a> {
        Metric {
            matcher: *self,
            name: name.into(),
        }
    }
}

/// One stat of one proxy, to read or to wait for.
pub struct Metric<'a> {
    matcher: Matcher<'a>,
    name: String,
}

/// A stat that did not reach the wanted value in time: what was wanted, what was last seen, and
/// the whole `/stats` text it was seen in.
#[derive(Debug)]
pub struct Mismatch {
    pub name: String,
    pub wanted: String,
    pub last: Option<i64>,
    pub after: Duration,
    pub stats: Result<Stats, String>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last = self.last.map_or("(absent)".to_string(), |v| v.to_string());
        write!(
            f,
            "{}: wanted {} within {:?}, last saw {last}; ",
            self.name, self.wanted, self.after
        )?;
        match &self.stats {
            Ok(s) => write!(f, "the last /stats read was:\n{s}"),
            Err(e) => write!(f, "the last /stats read failed: {e}"),
        }
    }
}

impl Metric<'_> {
    /// Its value now; a test failure (printing `/stats`) when it is absent.
    pub async fn value(&self) -> i64 {
        let s = self.matcher.snapshot().await;
        s.value(&self.name)
            .unwrap_or_else(|| panic!("no stat {} in /stats:\n{s}", self.name))
    }

    /// Asserts its value now, with one read.
    pub async fn now_eq(&self, want: i64) {
        let s = self.matcher.snapshot().await;
        let got = s.value(&self.name);
        if got != Some(want) {
            panic!(
                "{}",
                Mismatch {
                    name: self.name.clone(),
                    wanted: want.to_string(),
                    last: got,
                    after: Duration::ZERO,
                    stats: Ok(s),
                }
            );
        }
    }

    /// Asserts that it reads `want` before the deadline, reading again every 50 ms.
    pub async fn eventually_eq(&self, want: i64) {
        if let Err(m) = self.wait_until(&want.to_string(), |v| v == want).await {
            panic!("{m}");
        }
    }

    /// Reads until `ok(value)` holds (returning that value) or the deadline passes; `wanted`
    /// describes `ok` for the error.
    pub async fn wait_until(
        &self,
        wanted: &str,
        ok: impl Fn(i64) -> bool,
    ) -> Result<i64, Mismatch> {
        let start = Instant::now();
        loop {
            let read = self.matcher.fetch().await;
            let last = read.as_ref().ok().and_then(|s| s.value(&self.name));
            if let Some(v) = last.filter(|v| ok(*v)) {
                return Ok(v);
            }
            if start.elapsed() >= self.matcher.deadline {
                return Err(Mismatch {
                    name: self.name.clone(),
                    wanted: wanted.to_string(),
                    last,
                    after: self.matcher.deadline,
                    stats: read.map_err(|e| format!("{e:?}")),
                });
            }
            tokio::time::sleep(INTERVAL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_text_is_read_line_by_line() {
        let s = Stats::parse(
            "cluster.10.214.0.11:8080.upstream_cx_active: 3\n\
             cluster.inbound_8080.circuit_breakers.default.cx_open: 1\n\
             cluster.inbound_8080.upstream_rq_time: P0(nan,0) P25(nan,1)\n",
        );
        assert_eq!(s.num("cluster.10.214.0.11:8080.upstream_cx_active"), 3);
        assert_eq!(
            s.num("cluster.inbound_8080.circuit_breakers.default.cx_open"),
            1
        );
        assert_eq!(s.num("cluster.inbound_8080.upstream_rq_time"), 0);
        assert_eq!(s.value("cluster.inbound_8080.upstream_rq_time"), None);
        assert_eq!(s.num("absent"), 0);
        assert!(!s.has("absent"));
        assert_eq!(s.line("absent"), "absent: (absent)");
        assert_eq!(s.names_with("10.214.0.11:8080").len(), 1);
        assert!(s.to_string().starts_with("cluster.10.214.0.11:8080"));
    }

    #[test]
    fn a_mismatch_shows_the_whole_stats_text() {
        let m = Mismatch {
            name: "a.b".into(),
            wanted: "3".into(),
            last: Some(2),
            after: Duration::from_secs(1),
            stats: Ok(Stats::parse("a.b: 2\nc.d: 7\n")),
        };
        let text = m.to_string();
        assert!(
            text.starts_with("a.b: wanted 3 within 1s, last saw 2;"),
            "{text}"
        );
        assert!(text.ends_with("a.b: 2\nc.d: 7\n"), "{text}");
    }
}
