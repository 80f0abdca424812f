//! Matching is a pure function of the head: each Gateway API match condition, first-hit order,
//! weights, and the head rewrites.

use std::net::SocketAddr;

use config::api::{
    HeaderModifier, PathMatch, PathModifier, RouteMatch, Routes, Rule as ApiRule, StringMatch,
    ValueMatch, WeightedBackend,
};
use config::Limits;

use super::*;
use crate::cluster::Timeouts;
use crate::stats::Registry;

fn clusters(n: usize) -> Vec<Arc<Cluster>> {
    let registry = Registry::default();
    (0..n)
        .map(|i| {
            let addr: SocketAddr = format!("10.0.0.{}:80", i + 1).parse().unwrap();
            Cluster::new(
                format!("c{i}"),
                addr,
                Limits::default(),
                Timeouts {
                    connect: Duration::from_secs(1),
                    idle: Duration::from_secs(1),
                },
                &registry,
            )
        })
        .collect()
}

fn rule(source: &str, backend: usize) -> ApiRule {
    ApiRule {
        source: source.into(),
        backends: vec![WeightedBackend { backend, weight: 1 }],
        ..ApiRule::default()
    }
}

fn m(rule: usize) -> RouteMatch {
    RouteMatch {
        rule,
        ..RouteMatch::default()
    }
}

fn head(line: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut h = format!("{line} HTTP/1.1\r\n");
    for (n, v) in headers {
        h.push_str(&format!("{n}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// The source of the rule the head picks, or "NR"; the same whether the view scans the head or
/// takes the codec's word for where its parts are.
fn pick(t: &Table, line: &str, headers: &[(&str, &str)]) -> String {
    let h = head(line, headers);
    let source = |v: View| t.pick(&v).map_or("NR".into(), |p| p.rule.source.clone());
    let scanned = source(View::of(&h));
    // The codec refuses a head without a host.
    let mut with_host = headers.to_vec();
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        with_host.push(("host", "svc"));
    }
    let (written, req, lines) = written(&head(line, &with_host));
    assert_eq!(
        source(View::of_request(&written, &req, &lines)),
        scanned,
        "{line} {headers:?}"
    );
    scanned
}

/// The head as the codec writes it upstream (an `x-request-id` added), and what it says of it.
fn written(h: &[u8]) -> (Vec<u8>, crate::h1::Request, crate::h1::Lines) {
    let mut out = Vec::new();
    let opts = crate::h1::RequestOpts {
        forwarded_for: Some(b"10.0.0.9"),
        log: false,
    };
    let mut lines = crate::h1::Lines::default();
    let req = crate::h1::parse_request_indexed(h, &opts, &mut out, &mut lines)
        .unwrap()
        .unwrap();
    (out, req, lines)
}

fn table(matches: Vec<RouteMatch>, rules: Vec<ApiRule>, backends: usize) -> Table {
    let routes = Routes {
        matches,
        rules,
        backends: vec![],
    };
    Table::new(&routes, &clusters(backends)).unwrap()
}

#[test]
fn a_view_splits_method_path_query_and_headers() {
    let h = head(
        "GET /a/b?x=1&y=two",
        &[("Host", "svc"), ("End-User", " jason ")],
    );
    let v = View::of(&h);
    assert_eq!(v.method, b"GET");
    assert_eq!(v.path, b"/a/b");
    assert_eq!(v.query, b"x=1&y=two");
    assert_eq!(v.header(b"end-user"), Some(&b"jason"[..]));
    assert_eq!(v.header(b"host"), Some(&b"svc"[..]));
    assert_eq!(v.header(b"absent"), None);
    assert_eq!(v.query(b"y"), Some(&b"two"[..]));
    assert_eq!(v.query(b"z"), None);
}

#[test]
fn a_prefix_matches_whole_path_elements_only() {
    let t = table(
        vec![RouteMatch {
            path: Some(PathMatch::Prefix("/foo/".into())),
            ..m(0)
        }],
        vec![rule("foo", 0)],
        1,
    );
    assert_eq!(pick(&t, "GET /foo", &[]), "foo");
    assert_eq!(pick(&t, "GET /foo/", &[]), "foo");
    assert_eq!(pick(&t, "GET /foo/bar?q=1", &[]), "foo");
    assert_eq!(pick(&t, "GET /foobar", &[]), "NR");
    assert_eq!(pick(&t, "GET /", &[]), "NR");
}

#[test]
fn exact_regex_method_header_and_query_conditions_all_must_hold() {
    let t = table(
        vec![
            RouteMatch {
                path: Some(PathMatch::Exact("/login".into())),
                method: Some("POST".into()),
                ..m(0)
            },
            RouteMatch {
                headers: vec![ValueMatch {
                    name: "End-User".into(),
                    value: StringMatch::Exact("jason".into()),
                }],
                query: vec![ValueMatch {
                    name: "v".into(),
                    value: StringMatch::Regex("[0-9]+".into()),
                }],
                ..m(1)
            },
            RouteMatch {
                path: Some(PathMatch::Regex("/api/v[12]/.*".into())),
                ..m(2)
            },
            RouteMatch {
                headers: vec![ValueMatch {
                    name: "user-agent".into(),
                    value: StringMatch::Regex(".*Chrome.*".into()),
                }],
                ..m(3)
            },
        ],
        vec![
            rule("login", 0),
            rule("jason", 0),
            rule("api", 0),
            rule("chrome", 0),
        ],
        1,
    );
    assert_eq!(pick(&t, "POST /login", &[]), "login");
    assert_eq!(pick(&t, "GET /login", &[]), "NR", "method must match");
    assert_eq!(pick(&t, "POST /login/x", &[]), "NR", "exact is exact");
    assert_eq!(pick(&t, "GET /x?v=12", &[("end-user", "jason")]), "jason");
    assert_eq!(pick(&t, "GET /x?v=1a", &[("end-user", "jason")]), "NR");
    assert_eq!(pick(&t, "GET /x?v=12", &[("end-user", "json")]), "NR");
    assert_eq!(pick(&t, "GET /api/v2/items", &[]), "api");
    assert_eq!(
        pick(&t, "GET /x/api/v2/items", &[]),
        "NR",
        "a regex matches the whole path"
    );
    assert_eq!(
        pick(
            &t,
            "GET /",
            &[("User-Agent", "Mozilla/5.0 Chrome/120.0 Safari")]
        ),
        "chrome"
    );
    assert_eq!(pick(&t, "GET /", &[("User-Agent", "curl/8.5")]), "NR");
}

#[test]
fn the_first_match_in_the_given_order_wins() {
    // The control plane sorted them: the specific one first, the catch-all last.
    let t = table(
        vec![
            RouteMatch {
                headers: vec![ValueMatch {
                    name: "end-user".into(),
                    value: StringMatch::Exact("jason".into()),
                }],
                ..m(0)
            },
            m(1),
        ],
        vec![rule("v2", 1), rule("v1", 0)],
        2,
    );
    assert_eq!(pick(&t, "GET /reviews/0", &[("end-user", "jason")]), "v2");
    assert_eq!(pick(&t, "GET /reviews/0", &[("end-user", "bob")]), "v1");
    assert_eq!(pick(&t, "GET /reviews/0", &[]), "v1");
}

#[test]
fn weights_split_requests_in_proportion() {
    let t = table(
        vec![m(0)],
        vec![ApiRule {
            source: "split".into(),
            backends: vec![
                WeightedBackend {
                    backend: 0,
                    weight: 90,
                },
                WeightedBackend {
                    backend: 1,
                    weight: 10,
                },
                WeightedBackend {
                    backend: 2,
                    weight: 0,
                },
            ],
            ..ApiRule::default()
        }],
        3,
    );
    let mut counts = [0u32; 3];
    for _ in 0..10_000 {
        let c = t.rules[0].backend().unwrap();
        counts[c.name[1..].parse::<usize>().unwrap()] += 1;
    }
    // Binomial(10000, 0.1): mean 1000, sd 30; ±6 sd.
    assert!((820..=1180).contains(&counts[1]), "{counts:?}");
    assert_eq!(counts[2], 0, "weight 0 is never chosen");
    assert_eq!(counts[0] + counts[1], 10_000);
}

#[test]
fn the_share_of_invalid_backends_has_none() {
    // Gateway API: requests that would have gone to an invalid backendRef get 500, the others
    // are not given more than their share.
    let t = table(
        vec![m(0), m(1)],
        vec![
            ApiRule {
                source: "half".into(),
                backends: vec![WeightedBackend {
                    backend: 0,
                    weight: 50,
                }],
                invalid_weight: 50,
                ..ApiRule::default()
            },
            ApiRule {
                source: "all".into(),
                invalid_weight: 1,
                ..ApiRule::default()
            },
        ],
        1,
    );
    let none = (0..10_000)
        .filter(|_| t.rules[0].backend().is_none())
        .count();
    // Binomial(10000, 0.5): mean 5000, sd 50; ±6 sd.
    assert!((4700..=5300).contains(&none), "{none}");
    assert!((0..100).all(|_| t.rules[1].backend().is_none()));
}

#[test]
fn a_rule_without_a_backend_or_weight_has_none() {
    let t = table(
        vec![m(0), m(1)],
        vec![
            ApiRule {
                source: "none".into(),
                ..ApiRule::default()
            },
            ApiRule {
                source: "zero".into(),
                backends: vec![WeightedBackend {
                    backend: 0,
                    weight: 0,
                }],
                ..ApiRule::default()
            },
        ],
        1,
    );
    assert!(t.rules[0].backend().is_none());
    assert!(t.rules[1].backend().is_none());
}

#[test]
fn a_bad_answer_is_refused_with_what_is_wrong() {
    let routes = Routes {
        matches: vec![RouteMatch {
            path: Some(PathMatch::Regex("(".into())),
            ..m(0)
        }],
        rules: vec![rule("default/r#0", 0)],
        backends: vec![],
    };
    let e = Table::new(&routes, &clusters(1)).err().unwrap().to_string();
    assert!(e.starts_with("default/r#0: a regular expression"), "{e}");
    let e = Table::new(&routes, &[]).err().unwrap().to_string();
    assert!(e.contains("backend #0"), "{e}");
}

#[test]
fn roll_holds_its_odds() {
    assert!(roll(1_000_000));
    assert!(!roll(0));
    let hits = (0..10_000).filter(|_| roll(500_000)).count();
    // Binomial(10000, 0.5): sd 50; ±6 sd.
    assert!((4700..=5300).contains(&hits), "{hits}");
}

#[test]
fn head_edits_set_add_remove_and_retarget() {
    let h = head(
        "GET /old?q=1",
        &[("host", "reviews"), ("x-drop", "1"), ("x-keep", "a")],
    );
    let out = edit_head(
        &h,
        Some(b"/new?q=1"),
        &HeaderModifier {
            set: vec![("host".into(), "reviews-v2".into())],
            add: vec![("x-keep".into(), "b".into())],
            remove: vec!["X-Drop".into()],
        },
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "GET /new?q=1 HTTP/1.1\r\nx-keep: a\r\nhost: reviews-v2\r\nx-keep: b\r\n\r\n"
    );
    let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    let out = edit_head(
        resp,
        None,
        &HeaderModifier {
            add: vec![("x-route".into(), "v1".into())],
            ..HeaderModifier::default()
        },
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-route: v1\r\n\r\n"
    );
}

#[test]
fn prefix_rewrites_follow_gateway_api_examples() {
    let full = PathModifier::ReplaceFullPath("/v2/status".into());
    assert_eq!(new_path(&full, b"/anything", b"", None), b"/v2/status");
    let to = |p: &str| PathModifier::ReplacePrefixMatch(p.into());
    let cases: [(&str, &str, &str, &str); 7] = [
        ("/foo", "/bar", "/foo", "/bar"),
        ("/foo", "/bar", "/foo/", "/bar/"),
        ("/foo", "/bar", "/foo/x", "/bar/x"),
        ("/foo", "/", "/foo/x", "/x"),
        ("/foo", "/", "/foo", "/"),
        ("/foo", "/bar/", "/foo/x", "/bar/x"),
        ("/", "/bar", "/x", "/bar/x"),
    ];
    for (prefix, with, path, want) in cases {
        let got = new_path(&to(with), path.as_bytes(), b"", Some(prefix.as_bytes()));
        assert_eq!(
            String::from_utf8(got).unwrap(),
            want,
            "{prefix} -> {with} on {path}"
        );
    }
    assert_eq!(
        new_path(&to("/bar"), b"/foo/x", b"a=1", Some(b"/foo")),
        b"/bar/x?a=1"
    );
}

#[test]
fn many_header_matches_and_many_lines_read_the_same_either_way() {
    // Twelve distinct names (more than one pass indexes), each match wanting one of them.
    let names: Vec<String> = (0..12).map(|i| format!("x-h{i}")).collect();
    let matches = names
        .iter()
        .enumerate()
        .map(|(i, n)| RouteMatch {
            headers: vec![ValueMatch {
                name: n.clone(),
                value: StringMatch::Exact("yes".into()),
            }],
            ..m(i)
        })
        .collect();
    let rules = (0..12).map(|i| rule(&format!("r{i}"), 0)).collect();
    let t = table(matches, rules, 1);
    for i in [0, 7, 8, 11] {
        let want = format!("X-H{i}");
        assert_eq!(
            pick(&t, "GET /", &[("host", "a"), (&want, "yes")]),
            format!("r{i}")
        );
    }
    assert_eq!(pick(&t, "GET /", &[("host", "a"), ("x-h3", "no")]), "NR");
    // The lines the proxy adds are found too.
    let (w, req, lines) = written(&head("GET /", &[("host", "a")]));
    let v = View::of_request(&w, &req, &lines);
    assert_eq!(v.header(b"x-forwarded-for"), Some(&b"10.0.0.9"[..]));
    assert_eq!(v.header(b"x-request-id").map(<[u8]>::len), Some(36));
    assert_eq!(v.header(b"host"), Some(&b"a"[..]));
    // Forty lines: more than the codec remembers, so the view scans.
    let filler: Vec<(String, String)> = (0..40).map(|i| (format!("f{i}"), "v".into())).collect();
    let mut hs: Vec<(&str, &str)> = filler.iter().map(|(n, v)| (&n[..], &v[..])).collect();
    hs.insert(0, ("host", "a"));
    hs.push(("x-h9", "yes"));
    assert_eq!(pick(&t, "GET /", &hs), "r9");
    let (w, req, lines) = written(&head("GET /", &hs));
    assert!(lines.get().is_none());
    assert_eq!(
        View::of_request(&w, &req, &lines).header(b"x-h9"),
        Some(&b"yes"[..])
    );
}

#[test]
fn the_hash_key_is_a_header_a_cookie_or_the_client() {
    use crate::balancer::stable_hash;
    use config::api::HashOn;
    let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-User: jason \r\n\
                 Cookie: theme=dark; session=s1\r\n\r\n";
    let peer = "10.0.0.7:4000".parse().unwrap();
    let key = |on: &HashOn| {
        hash_key(
            on,
            |n| View::of(head).header(n.as_bytes()).into_iter(),
            peer,
        )
    };
    let on_header = |n: &str| key(&HashOn::Header(n.into()));
    // Header names in any case; the value trimmed.
    assert_eq!(on_header("x-user"), Some(stable_hash(b"jason")));
    assert_eq!(on_header("X-USER"), Some(stable_hash(b"jason")));
    assert_eq!(on_header("absent"), None);
    let cookie = |n: &str| {
        key(&HashOn::Cookie {
            name: n.into(),
            ttl_ms: None,
        })
    };
    assert_eq!(cookie("session"), Some(stable_hash(b"s1")));
    assert_eq!(cookie("theme"), Some(stable_hash(b"dark")));
    assert_eq!(cookie("other"), None);
    assert_eq!(key(&HashOn::SourceIp), Some(stable_hash(b"10.0.0.7")));
    // A cookie split over several values (HTTP/2 may send each crumb as its own field).
    let crumbs: [&[u8]; 2] = [b"theme=dark", b"session=s2"];
    let on = HashOn::Cookie {
        name: "session".into(),
        ttl_ms: None,
    };
    assert_eq!(
        hash_key(&on, |_| crumbs.into_iter(), peer),
        Some(stable_hash(b"s2"))
    );
}

#[test]
fn a_redirect_location_follows_gateway_api() {
    use config::api::Redirect;
    let redirect = |scheme: Option<&str>, hostname: Option<&str>, port: Option<u16>| Redirect {
        scheme: scheme.map(Into::into),
        hostname: hostname.map(Into::into),
        path: None,
        port,
        status: 302,
    };
    let at = |r: &Redirect, host: &str| location(r, "http", host.as_bytes(), b"/a/b", b"x=1", None);
    // Nothing set: the request's own host, port, path and query.
    assert_eq!(
        at(&redirect(None, None, None), "web:8080"),
        "http://web:8080/a/b?x=1"
    );
    // The well-known port of the scheme is not written.
    assert_eq!(
        at(&redirect(None, None, None), "web:80"),
        "http://web/a/b?x=1"
    );
    // A new scheme without a port: its well-known port, so none written.
    assert_eq!(
        at(&redirect(Some("https"), None, None), "web:8080"),
        "https://web/a/b?x=1"
    );
    // A port set is written unless it is the scheme's own.
    assert_eq!(
        at(
            &redirect(Some("https"), Some("example.com"), Some(8443)),
            "web:8080"
        ),
        "https://example.com:8443/a/b?x=1"
    );
    assert_eq!(
        at(&redirect(Some("https"), None, Some(443)), "web"),
        "https://web/a/b?x=1"
    );
    // The request's scheme when the filter sets none; IPv6 literals keep their brackets.
    assert_eq!(
        location(
            &redirect(None, None, None),
            "https",
            b"[::1]:443",
            b"/",
            b"",
            None
        ),
        "https://[::1]/"
    );
    // The path modifier, the query kept.
    let mut r = redirect(None, Some("new"), None);
    r.path = Some(PathModifier::ReplacePrefixMatch("/v2".into()));
    assert_eq!(
        location(&r, "http", b"old", b"/v1/x", b"q=2", Some(b"/v1")),
        "http://new/v2/x?q=2"
    );
}

#[test]
fn a_shadow_host_keeps_its_port() {
    assert_eq!(shadow_host(b"reviews:9080"), b"reviews-shadow:9080");
    assert_eq!(shadow_host(b"reviews"), b"reviews-shadow");
}
