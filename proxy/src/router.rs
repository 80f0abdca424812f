//! The router: per request, which route and which backend. It exists because a connection no
//! longer means one cluster: with HTTPRoutes on a Service (or a gateway), each request on the
//! same connection may go to a different Service, be delayed, aborted, redirected, rewritten,
//! mirrored, timed and retried differently.
//!
//! A [`Table`] is compiled from the control plane's [`Routes`] once per update (regexes built,
//! backends resolved to clusters), and swapped into a [`RouteSlot`] that every connection of that
//! destination reads per request, so a route change applies to the next request of a kept-alive
//! connection. The control plane has sorted the matches by Gateway API precedence; matching here
//! is first-hit ([`Table::pick`]), a pure function of the request's head.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use config::api::{
    Fault, HashOn, HeaderModifier, PathMatch, PathModifier, Redirect, Retry, Rewrite, Routes,
    StringMatch,
};
use regex::bytes::Regex;

use crate::cluster::Cluster;
use crate::stats::HttpStats;

/// Where the requests of a connection go.
#[derive(Clone)]
pub enum Upstream {
    /// All to one cluster (an original destination, inbound, a gateway's `--upstream`).
    Cluster(Arc<Cluster>),
    /// Per request, by the routes of the destination (or gateway). Without a route table,
    /// `default` (the Service's own cluster) takes every request; with neither, 404 `NR`.
    Routed {
        default: Option<Arc<Cluster>>,
        routes: Arc<RouteSlot>,
    },
}

impl Upstream {
    /// The cluster that takes a connection as opaque TCP.
    pub fn tcp_cluster(&self) -> Option<&Arc<Cluster>> {
        match self {
            Upstream::Cluster(c) => Some(c),
            Upstream::Routed { default, .. } => default.as_ref(),
        }
    }
}

/// Where a destination's current route table lives; written by discovery, read per request.
#[derive(Default)]
pub struct RouteSlot {
    /// Set once a table has been installed: a destination without routes pays one load.
    has: AtomicBool,
    table: RwLock<Option<Arc<Table>>>,
}

impl RouteSlot {
    /// Whether a table is installed (one load, no lock).
    pub fn installed(&self) -> bool {
        self.has.load(Relaxed)
    }

    pub fn get(&self) -> Option<Arc<Table>> {
        if !self.installed() {
            return None;
        }
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, table: Option<Arc<Table>>) {
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        self.has.store(table.is_some(), Relaxed);
        *t = table;
    }
}

/// A route table, ready to match.
pub struct Table {
    matches: Vec<Match>,
    pub rules: Vec<Rule>,
    /// The distinct header names the matches ask for (lower-case), in first-use order: the
    /// first [`INDEXED`] are found in one pass over a request's header lines.
    header_names: Vec<Box<[u8]>>,
    /// For each byte a header line can start with, which of the first [`INDEXED`] names start
    /// with it, in either case (bit `i`: name `i`): most lines are none of them, and one load
    /// says so.
    first: Box<[u8; 256]>,
}

/// How many distinct header names one pass over the header lines finds (more are looked up
/// one by one).
const INDEXED: usize = 8;

struct Match {
    rule: usize,
    path: Option<Path>,
    method: Option<Box<[u8]>>,
    /// Index into [`Table::header_names`], and the value wanted.
    headers: Vec<(usize, Value)>,
    query: Vec<(Box<[u8]>, Value)>,
}

enum Path {
    Exact(Box<[u8]>),
    /// Without a trailing `/` (except the root), matched element-wise.
    Prefix(Box<[u8]>),
    Regex(Regex),
}

enum Value {
    Exact(Box<[u8]>),
    Regex(Regex),
}

/// What a rule does with the requests it gets.
pub struct Rule {
    pub source: String,
    backends: Vec<(Arc<Cluster>, u32)>,
    /// The weight of `backends`, and that plus the invalid backends' (answered 500).
    valid_weight: u64,
    total_weight: u64,
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
    pub mirrors: Vec<(Arc<Cluster>, u32)>,
    pub fault: Option<Fault>,
    pub timeout: Option<Duration>,
    pub backend_timeout: Option<Duration>,
    pub retry: Option<Retry>,
}

/// A route match that picked a rule: the rule, and the prefix its path match matched (for
/// `ReplacePrefixMatch`).
pub struct Picked<'t> {
    pub rule: &'t Rule,
    pub prefix: Option<&'t [u8]>,
}

/// Why a table could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{0}: a regular expression that does not compile: {1}")]
    Regex(String, regex::Error),
    #[error("{0}: refers to backend #{1}, which the answer does not have")]
    Backend(String, usize),
    #[error("a match refers to rule #{0}, which the answer does not have")]
    Rule(usize),
}

impl Table {
    /// Builds a table; `cluster` gives the cluster of each of `routes.backends`, in order.
    pub fn new(routes: &Routes, clusters: &[Arc<Cluster>]) -> Result<Table, TableError> {
        let backend = |source: &str, i: usize| {
            clusters
                .get(i)
                .cloned()
                .ok_or_else(|| TableError::Backend(source.to_string(), i))
        };
        let mut rules = Vec::with_capacity(routes.rules.len());
        for r in &routes.rules {
            let backends = r
                .backends
                .iter()
                .map(|b| Ok((backend(&r.source, b.backend)?, b.weight)))
                .collect::<Result<Vec<_>, TableError>>()?;
            let mirrors = r
                .mirrors
                .iter()
                .map(|m| Ok((backend(&r.source, m.backend)?, m.per_million)))
                .collect::<Result<Vec<_>, TableError>>()?;
            rules.push(Rule {
                source: r.source.clone(),
                valid_weight: backends.iter().map(|b| u64::from(b.1)).sum(),
                total_weight: backends.iter().map(|b| u64::from(b.1)).sum::<u64>()
                    + u64::from(r.invalid_weight),
                backends,
                request_headers: r.request_headers.clone(),
                response_headers: r.response_headers.clone(),
                redirect: r.redirect.clone(),
                rewrite: r.rewrite.clone(),
                mirrors,
                fault: r.fault.clone(),
                timeout: r.timeout_ms.map(Duration::from_millis),
                backend_timeout: r.backend_timeout_ms.map(Duration::from_millis),
                retry: r.retry.clone(),
            });
        }
        let mut matches = Vec::with_capacity(routes.matches.len());
        let mut header_names: Vec<Box<[u8]>> = Vec::new();
        for m in &routes.matches {
            let Some(rule) = rules.get(m.rule) else {
                return Err(TableError::Rule(m.rule));
            };
            let regex = |re: &str| {
                Regex::new(&format!("^(?:{re})$"))
                    .map_err(|e| TableError::Regex(rule.source.clone(), e))
            };
            let value = |v: &StringMatch| -> Result<Value, TableError> {
                Ok(match v {
                    StringMatch::Exact(s) => Value::Exact(s.as_bytes().into()),
                    StringMatch::Regex(re) => Value::Regex(regex(re)?),
                })
            };
            matches.push(Match {
                rule: m.rule,
                path: match &m.path {
                    None => None,
                    Some(PathMatch::Exact(p)) => Some(Path::Exact(p.as_bytes().into())),
                    Some(PathMatch::Prefix(p)) => {
                        let p = p.as_bytes();
                        let p = if p.len() > 1 {
                            p.strip_suffix(b"/").unwrap_or(p)
                        } else {
                            p
                        };
                        // `/` matches every path: no condition at all.
                        (p != b"/").then(|| Path::Prefix(p.into()))
                    }
                    Some(PathMatch::Regex(re)) => Some(Path::Regex(regex(re)?)),
                },
                method: m.method.as_ref().map(|s| s.as_bytes().into()),
                headers: m
                    .headers
                    .iter()
                    .map(|h| {
                        let name = h.name.to_ascii_lowercase().into_bytes();
                        let at = match header_names.iter().position(|n| **n == *name) {
                            Some(at) => at,
                            None => {
                                header_names.push(name.into());
                                header_names.len() - 1
                            }
                        };
                        Ok((at, value(&h.value)?))
                    })
                    .collect::<Result<_, TableError>>()?,
                query: m
                    .query
                    .iter()
                    .map(|q| Ok((q.name.as_bytes().into(), value(&q.value)?)))
                    .collect::<Result<_, TableError>>()?,
            });
        }
        let mut first = Box::new([0u8; 256]);
        for (i, name) in header_names.iter().take(INDEXED).enumerate() {
            if let Some(&b) = name.first() {
                first[usize::from(b.to_ascii_lowercase())] |= 1 << i;
                first[usize::from(b.to_ascii_uppercase())] |= 1 << i;
            }
        }
        Ok(Table {
            matches,
            rules,
            header_names,
            first,
        })
    }

    /// The first match the request satisfies (`None`: no route, 404 `NR`).
    pub fn pick(&self, req: &View) -> Option<Picked<'_>> {
        let mut headers = Headers {
            view: req,
            table: self,
            found: [None; INDEXED],
            filled: false,
        };
        self.matches
            .iter()
            .find(|m| m.matches(req, &mut headers))
            .map(|m| Picked {
                rule: &self.rules[m.rule],
                prefix: match &m.path {
                    Some(Path::Prefix(p)) => Some(&p[..]),
                    None => Some(b"/"),
                    _ => None,
                },
            })
    }
}

/// The header values a request's matches ask for: found in one pass over the header lines, the
/// first time a match needs one (rules decided by path or method alone never pay for it).
struct Headers<'t, 'v, 'h> {
    view: &'v View<'h>,
    table: &'t Table,
    found: [Option<&'h [u8]>; INDEXED],
    filled: bool,
}

impl<'h> Headers<'_, '_, 'h> {
    fn get(&mut self, at: usize) -> Option<&'h [u8]> {
        let names = &self.table.header_names;
        if at >= INDEXED {
            return self.view.header(&names[at]);
        }
        if !self.filled {
            self.filled = true;
            self.view.headers(
                &names[..names.len().min(INDEXED)],
                &self.table.first,
                &mut self.found,
            );
        }
        self.found[at]
    }
}

impl Match {
    fn matches(&self, req: &View, headers: &mut Headers) -> bool {
        if let Some(m) = &self.method {
            if **m != *req.method {
                return false;
            }
        }
        let path = match &self.path {
            None => true,
            Some(Path::Exact(p)) => **p == *req.path,
            Some(Path::Prefix(p)) => {
                req.path.starts_with(p) && matches!(req.path.get(p.len()), None | Some(b'/'))
            }
            Some(Path::Regex(re)) => re.is_match(req.path),
        };
        if !path {
            return false;
        }
        self.headers
            .iter()
            .all(|(at, v)| headers.get(*at).is_some_and(|got| v.matches(got)))
            && self
                .query
                .iter()
                .all(|(name, v)| req.query(name).is_some_and(|got| v.matches(got)))
    }
}

impl Value {
    fn matches(&self, got: &[u8]) -> bool {
        match self {
            Value::Exact(want) => **want == *got,
            Value::Regex(re) => re.is_match(got),
        }
    }
}

impl Rule {
    /// A backend by weight (`None`: the rule has none, or all weights are 0: 500).
    /// The share of the invalid backends (`invalid_weight`) gets `None` too.
    pub fn backend(&self) -> Option<&Arc<Cluster>> {
        if self.total_weight == 0 {
            return None;
        }
        if let [(only, _)] = &self.backends[..] {
            if self.total_weight == self.valid_weight {
                return Some(only);
            }
        }
        let mut at = crate::balancer::random() % self.total_weight;
        self.backends.iter().find_map(|(c, w)| {
            if at < u64::from(*w) {
                Some(c)
            } else {
                at -= u64::from(*w);
                None
            }
        })
    }
}

/// True with probability `per_million` / 1,000,000.
pub fn roll(per_million: u32) -> bool {
    per_million >= 1_000_000 || (crate::balancer::random() % 1_000_000) < u64::from(per_million)
}

/// A rule's fault delay for one request: rolled on its share, counted in
/// `fault_delays_injected`, how long to hold the request (Envoy's fault filter delays first,
/// then rolls its abort: [`fault_abort`]). HTTP/1 and HTTP/2 roll the same way.
pub fn fault_delay(f: &Fault, http: &HttpStats) -> Option<Duration> {
    let d = f.delay.as_ref().filter(|d| roll(d.per_million))?;
    http.fault_delays_injected.inc();
    Some(Duration::from_millis(d.delay_ms))
}

/// A rule's fault abort for one request: rolled on its share, counted in
/// `fault_aborts_injected`, the status to answer with (`FI`).
pub fn fault_abort(f: &Fault, http: &HttpStats) -> Option<u16> {
    let a = f.abort.as_ref().filter(|a| roll(a.per_million))?;
    http.fault_aborts_injected.inc();
    Some(a.status)
}

/// How long to wait before a route's retry: its `backoff_ms` (25 ms, Envoy's base interval,
/// when unset), jittered between half and all of it. HTTP/1 and HTTP/2 wait the same.
pub fn retry_backoff(retry: Option<&Retry>) -> Duration {
    let base = retry.and_then(|r| r.backoff_ms).unwrap_or(25).max(1);
    Duration::from_millis(base / 2 + crate::balancer::random() % (base / 2 + 1))
}

/// A request as routing sees it: views into the head the proxy is about to send upstream.
pub struct View<'h> {
    pub method: &'h [u8],
    /// The path without its query.
    pub path: &'h [u8],
    /// After `?`, without it (empty if none).
    pub query: &'h [u8],
    /// The header lines, each ending in CRLF (the blank line excluded).
    headers: &'h [u8],
    /// Where each line of `headers` starts (offsets into the head), when the codec said.
    lines: Option<(&'h [u8], &'h [u16])>,
}

impl<'h> View<'h> {
    /// Reads a head as [`crate::h1`] writes it: `METHOD SP TARGET SP HTTP/1.1 CRLF`, then
    /// `name: value CRLF` lines, then CRLF.
    pub fn of(head: &'h [u8]) -> View<'h> {
        let line_end = memchr::memchr(b'\n', head).map_or(head.len(), |i| i + 1);
        let line = head[..line_end].trim_ascii_end();
        // h1 writes every request line as HTTP/1.1; any other version is cut at the last space.
        let line = match line.strip_suffix(b" HTTP/1.1") {
            Some(l) => l,
            None => line
                .iter()
                .rposition(|b| *b == b' ')
                .map_or(line, |i| &line[..i]),
        };
        let (method, target) = match memchr::memchr(b' ', line) {
            Some(sp) => (&line[..sp], &line[sp + 1..]),
            None => (line, &line[line.len()..]),
        };
        View::with(head, method, target, line_end, None)
    }

    /// The view of a head the codec has just written (`req` says where its parts are): no
    /// scanning for the request line's parts or for header line ends.
    pub fn of_request(
        head: &'h [u8],
        req: &crate::h1::Request,
        lines: &'h crate::h1::Lines,
    ) -> View<'h> {
        let (start, end) = (req.target.start, req.target.end);
        let Some(target) = head.get(start..end) else {
            return View::of(head);
        };
        let method = &head[..start.saturating_sub(1)];
        let line_end = end + b" HTTP/1.1\r\n".len();
        View::with(head, method, target, line_end, lines.get())
    }

    fn with(
        head: &'h [u8],
        method: &'h [u8],
        target: &'h [u8],
        line_end: usize,
        lines: Option<&'h [u16]>,
    ) -> View<'h> {
        let (path, query) = match memchr::memchr(b'?', target) {
            Some(q) => (&target[..q], &target[q + 1..]),
            None => (target, &target[target.len()..]),
        };
        let rest = head.get(line_end..).unwrap_or_default();
        let headers = rest.strip_suffix(b"\r\n").unwrap_or(rest);
        View {
            method,
            path,
            query,
            headers,
            lines: lines.map(|l| (&head[..line_end + headers.len()], l)),
        }
    }

    /// Calls `f` with each header line (CRLF included) whose first byte `wanted` accepts,
    /// until `f` returns true.
    #[inline]
    fn each_line(&self, wanted: impl Fn(u8) -> bool, mut f: impl FnMut(&'h [u8]) -> bool) {
        if let Some((head, starts)) = self.lines {
            for (i, &at) in starts.iter().enumerate() {
                let at = usize::from(at);
                if !head.get(at).is_some_and(|b| wanted(*b)) {
                    continue;
                }
                let end = starts.get(i + 1).map_or(head.len(), |&n| usize::from(n));
                if f(head.get(at..end).unwrap_or_default()) {
                    return;
                }
            }
            return;
        }
        let mut rest = self.headers;
        while !rest.is_empty() {
            let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
            let (line, next) = rest.split_at(end);
            rest = next;
            if wanted(line[0]) && f(line) {
                return;
            }
        }
    }

    /// The first value of a header (`name` in any case), trimmed. Only a line's start is
    /// compared (h1 has refused whitespace before a colon).
    pub fn header(&self, name: &[u8]) -> Option<&'h [u8]> {
        let first = *name.first()?;
        let mut found = None;
        self.each_line(
            |b| b.eq_ignore_ascii_case(&first),
            |line| {
                found = value_of(line, name);
                found.is_some()
            },
        );
        found
    }

    /// The first value of each of `names` (lower-case, at most [`INDEXED`]) into `found`, in
    /// one pass; `first` says which names start with a byte (see [`Table::first`]).
    fn headers(
        &self,
        names: &[Box<[u8]>],
        first: &[u8; 256],
        found: &mut [Option<&'h [u8]>; INDEXED],
    ) {
        self.each_line(
            |b| first[usize::from(b)] != 0,
            |line| {
                let mut which = line.first().map_or(0, |b| first[usize::from(*b)]);
                while which != 0 {
                    let i = which.trailing_zeros() as usize;
                    which &= which - 1;
                    if found[i].is_none() {
                        found[i] = names.get(i).and_then(|name| value_of(line, name));
                    }
                }
                false
            },
        );
    }

    /// The first value of a query parameter (not percent-decoded).
    fn query(&self, name: &[u8]) -> Option<&'h [u8]> {
        if self.query.is_empty() {
            return None;
        }
        self.query.split(|b| *b == b'&').find_map(|kv| {
            let (k, v) = match kv.iter().position(|b| *b == b'=') {
                Some(eq) => (&kv[..eq], &kv[eq + 1..]),
                None => (kv, &kv[kv.len()..]),
            };
            (k == name).then_some(v)
        })
    }
}

/// The value of a `name: value CRLF` line, if it is `name`'s (compared in any case).
#[inline]
fn value_of<'h>(line: &'h [u8], name: &[u8]) -> Option<&'h [u8]> {
    (line.get(name.len()) == Some(&b':') && line[..name.len()].eq_ignore_ascii_case(name))
        .then(|| line[name.len() + 1..].trim_ascii())
}

/// A `host` header's name and port (`[v6]` literals keep their brackets; no port: `None`).
pub fn split_host(host: &[u8]) -> (&[u8], Option<&[u8]>) {
    match host.iter().rposition(|b| *b == b':') {
        Some(i) if !host.ends_with(b"]") => (&host[..i], Some(&host[i + 1..])),
        _ => (host, None),
    }
}

/// Rewrites a head (request or response, as [`crate::h1`] wrote it): a new request target if
/// `target` is given, then the header edits. The first line is kept otherwise.
pub fn edit_head(head: &[u8], target: Option<&[u8]>, edits: &HeaderModifier) -> Vec<u8> {
    let line_end = memchr::memchr(b'\n', head).map_or(head.len(), |p| p + 1);
    let mut out = Vec::with_capacity(head.len() + 64);
    match target {
        Some(t) => {
            let line = &head[..line_end];
            let mut parts = line.splitn(3, |b| *b == b' ');
            out.extend_from_slice(parts.next().unwrap_or_default());
            out.push(b' ');
            out.extend_from_slice(t);
            out.push(b' ');
            let _ = parts.next();
            out.extend_from_slice(parts.next().unwrap_or(b"HTTP/1.1\r\n"));
        }
        None => out.extend_from_slice(&head[..line_end]),
    }
    // Every line of a header that is set (replaced) or removed goes; the others stay.
    let dropped = edits.set.iter().map(|(n, _)| n).chain(&edits.remove);
    View::of(head).each_line(
        |_| true,
        |line| {
            if !dropped
                .clone()
                .any(|n| value_of(line, n.as_bytes()).is_some())
            {
                out.extend_from_slice(line);
            }
            false
        },
    );
    for (n, v) in edits.set.iter().chain(&edits.add) {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A mirror's copy's host (`host`, or on HTTP/2 `:authority`): `-shadow` appended to the host
/// name, the port kept (`reviews:9080` becomes `reviews-shadow:9080`), as Envoy marks a shadow.
pub fn shadow_host(host: &[u8]) -> Vec<u8> {
    let (name, port) = split_host(host);
    let mut out = Vec::with_capacity(host.len() + 7);
    out.extend_from_slice(name);
    out.extend_from_slice(b"-shadow");
    if let Some(port) = port {
        out.push(b':');
        out.extend_from_slice(port);
    }
    out
}

/// How long a mirrored copy may take, all told (waiting for the mirror's pool, connecting,
/// sending, reading the answer to throw it away), before it is given up. HTTP/1 and HTTP/2 alike.
pub const MIRROR_TIMEOUT: Duration = Duration::from_secs(15);

/// The `Location` of a rule's `RequestRedirect`, by Gateway API's rules: the filter's scheme,
/// else the request's (`scheme`); its hostname, else the name of the request's `host` (HTTP/1)
/// or `:authority` (HTTP/2); its port, else none when it sets a scheme (that scheme's
/// well-known port), else the request's; a port that is its scheme's well-known one (`http`
/// 80, `https` 443) is not written. The path after the filter's path modifier (`prefix`: what
/// the rule's path match matched), else the request's; the query is kept. HTTP/1 and HTTP/2
/// answer with the same.
pub fn location(
    r: &Redirect,
    scheme: &str,
    host: &[u8],
    path: &[u8],
    query: &[u8],
    prefix: Option<&[u8]>,
) -> String {
    let (name, port) = split_host(host);
    let port = port.and_then(|p| std::str::from_utf8(p).ok());
    let scheme = r.scheme.as_deref().unwrap_or(scheme);
    let name = r.hostname.as_deref().map_or_else(
        || String::from_utf8_lossy(name).into_owned(),
        str::to_string,
    );
    // Gateway API: a new scheme without a port means that scheme's well-known port.
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => port.and_then(|p| p.parse::<u16>().ok()),
    }
    .filter(|p| !matches!((scheme, *p), ("http", 80) | ("https", 443)));
    let path = match &r.path {
        Some(m) => new_path(m, path, query, prefix),
        None => {
            let mut p = path.to_vec();
            if !query.is_empty() {
                p.push(b'?');
                p.extend_from_slice(query);
            }
            p
        }
    };
    let mut location = format!("{scheme}://{name}");
    if let Some(p) = port {
        location.push_str(&format!(":{p}"));
    }
    location.push_str(&String::from_utf8_lossy(&path));
    location
}

/// The consistent-hash key of a request: a header's value (trimmed), a cookie's value, or the
/// client's address (`peer`). `values` gives a header's values in order, by lower-case name
/// (HTTP/1 reads its head; HTTP/2 its header map, where a cookie may come as several fields, and
/// `host` is `:authority`). `None` (the header or cookie is absent) balances the request at
/// random.
pub fn hash_key<'h, V>(on: &HashOn, values: impl FnOnce(&str) -> V, peer: SocketAddr) -> Option<u64>
where
    V: Iterator<Item = &'h [u8]>,
{
    let bytes = match on {
        HashOn::SourceIp => {
            return Some(crate::balancer::stable_hash(
                peer.ip().to_canonical().to_string().as_bytes(),
            ))
        }
        HashOn::Header(name) => values(name).next()?.trim_ascii(),
        HashOn::Cookie { name, .. } => values("cookie").find_map(|line| {
            line.split(|b| *b == b';').find_map(|kv| {
                let kv = kv.trim_ascii();
                let eq = kv.iter().position(|b| *b == b'=')?;
                (&kv[..eq] == name.as_bytes()).then(|| &kv[eq + 1..])
            })
        })?,
    };
    Some(crate::balancer::stable_hash(bytes))
}

/// The request target after a rule's `URLRewrite` or `RequestRedirect` path: `prefix` is what
/// the rule's path match matched.
pub fn new_path(m: &PathModifier, path: &[u8], query: &[u8], prefix: Option<&[u8]>) -> Vec<u8> {
    let mut out = match m {
        PathModifier::ReplaceFullPath(p) => p.as_bytes().to_vec(),
        PathModifier::ReplacePrefixMatch(p) => {
            let matched = prefix.filter(|pre| path.starts_with(pre)).unwrap_or(b"");
            let matched = if matched == b"/" { &b""[..] } else { matched };
            // Element-wise, so what is left is empty or starts with `/`.
            let rest = &path[matched.len()..];
            let mut out = p.trim_end_matches('/').as_bytes().to_vec();
            out.extend_from_slice(rest);
            if out.is_empty() {
                out.push(b'/');
            }
            out
        }
    };
    if !query.is_empty() {
        out.push(b'?');
        out.extend_from_slice(query);
    }
    out
}

#[cfg(test)]
mod tests;
