//! The app's original probes, as the webhook hands them to the proxy (`TRELLIS_APP_PROBES`, or
//! `--app-probes`), and the paths on the proxy's app-health port that replace them.
//!
//! The webhook rewrites each `httpGet`, `tcpSocket` and `grpc` probe of an app container to an
//! `httpGet` on [`crate::defaults::APP_HEALTH_PORT`] at `/app-health/<container>/<kind>`; the proxy
//! answers that path by running the original probe directly against the app, outside every pool,
//! so a saturated pool never fails a probe and a TCP probe fails when the app is down.
//!
//! The JSON form is a map from container name to a map from probe kind to the probe, each probe
//! in the Kubernetes shape (one of `httpGet`, `tcpSocket`, `grpc`, plus `timeoutSeconds`), with
//! named ports already resolved to numbers:
//!
//! ```json
//! {"app": {"livez": {"httpGet": {"path": "/healthz", "port": 8080}, "timeoutSeconds": 1},
//!          "readyz": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 3}}}
//! ```
//!
//! Parsing validates everything the proxy relies on; an error names the container, the probe
//! and the field.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The environment variable the webhook sets on the proxy container.
pub const ENV: &str = "TRELLIS_APP_PROBES";
/// The first segment of every rewritten probe's path.
pub const PATH_PREFIX: &str = "/app-health/";
/// Most probes one pod can hand over (3 kinds for each of at most 256 containers).
const MAX_PROBES: usize = 3 * 256;

/// Which of a container's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// `livenessProbe`.
    Livez,
    /// `readinessProbe`.
    Readyz,
    /// `startupProbe`.
    Startupz,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 3] = [ProbeKind::Livez, ProbeKind::Readyz, ProbeKind::Startupz];

    /// The last segment of the rewritten path.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Livez => "livez",
            ProbeKind::Readyz => "readyz",
            ProbeKind::Startupz => "startupz",
        }
    }

    /// The container field the probe sits in.
    pub fn field(self) -> &'static str {
        match self {
            ProbeKind::Livez => "livenessProbe",
            ProbeKind::Readyz => "readinessProbe",
            ProbeKind::Startupz => "startupProbe",
        }
    }

    pub fn parse(s: &str) -> Option<ProbeKind> {
        ProbeKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The path the kubelet calls on the app-health port for this container's probe.
pub fn path(container: &str, kind: ProbeKind) -> String {
    format!("{PATH_PREFIX}{container}/{kind}")
}

/// Every original probe of the pod, by container and kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AppProbes(pub BTreeMap<String, BTreeMap<ProbeKind, AppProbe>>);

/// One original probe, its named port resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppProbe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocket>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<Grpc>,
    /// The probe's `timeoutSeconds` (Kubernetes' default is 1): every wait of the probe is bounded
    /// by it.
    #[serde(default = "one")]
    pub timeout_seconds: u32,
}

fn one() -> u32 {
    1
}

/// What an [`AppProbe`] does, once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    HttpGet(&'a HttpGet),
    TcpSocket(&'a TcpSocket),
    Grpc(&'a Grpc),
}

impl AppProbe {
    /// The one action of a validated probe.
    pub fn action(&self) -> Action<'_> {
        match (&self.http_get, &self.tcp_socket, &self.grpc) {
            (Some(h), _, _) => Action::HttpGet(h),
            (None, Some(t), _) => Action::TcpSocket(t),
            (None, None, Some(g)) => Action::Grpc(g),
            (None, None, None) => unreachable!("validated: a probe has one action"),
        }
    }

    /// The probe's timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds.into())
    }
}

/// An `httpGet` probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGet {
    pub port: u16,
    #[serde(default = "root")]
    pub path: String,
    #[serde(default)]
    pub scheme: Scheme,
    /// Connect here instead of 127.0.0.1 (the kubelet's default is the pod IP; in the pod,
    /// loopback reaches the same app).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<Header>,
}

fn root() -> String {
    "/".into()
}

/// `HTTP` or `HTTPS` (the kubelet does not verify the app's certificate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Scheme {
    #[default]
    Http,
    Https,
}

/// One header of an `httpGet` probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// A `tcpSocket` probe: a connect that completes is success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpSocket {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A `grpc` probe: `grpc.health.v1.Health/Check`, success when the answer is `SERVING`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grpc {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// Why a probes document was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProbesError {
    #[error("{ENV} is not a JSON map of container -> probe kind -> probe: {source}")]
    Json {
        #[source]
        source: serde_json::Error,
    },
    #[error("{ENV} has {count} probes; at most {MAX_PROBES} are accepted")]
    TooMany { count: usize },
    #[error("{ENV}: container name {name:?} is not a Kubernetes container name (a DNS label: lowercase letters, digits and `-`, at most 63)")]
    Container { name: String },
    #[error("{ENV}: {container}/{kind}: {problem}")]
    Probe {
        container: String,
        kind: ProbeKind,
        problem: String,
    },
}

impl FromStr for AppProbes {
    type Err = ProbesError;

    fn from_str(s: &str) -> Result<AppProbes, ProbesError> {
        let probes: AppProbes =
            serde_json::from_str(s).map_err(|source| ProbesError::Json { source })?;
        probes.validate()?;
        Ok(probes)
    }
}

impl fmt::Display for AppProbes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_json::to_string(self).map_err(|_| fmt::Error)?)
    }
}

impl AppProbes {
    pub fn is_empty(&self) -> bool {
        self.0.values().all(BTreeMap::is_empty)
    }

    /// The probe behind `/app-health/<container>/<kind>`.
    pub fn get(&self, container: &str, kind: ProbeKind) -> Option<&AppProbe> {
        self.0.get(container)?.get(&kind)
    }

    /// Adds one probe (the webhook builds the document this way).
    pub fn insert(&mut self, container: &str, kind: ProbeKind, probe: AppProbe) {
        self.0
            .entry(container.to_string())
            .or_default()
            .insert(kind, probe);
    }

    /// Everything the proxy relies on: valid container names, exactly one action per probe, ports
    /// from 1, a path starting with `/`, header names that are HTTP tokens and values without
    /// line breaks, a timeout of at least one second.
    pub fn validate(&self) -> Result<(), ProbesError> {
        let count: usize = self.0.values().map(BTreeMap::len).sum();
        if count > MAX_PROBES {
            return Err(ProbesError::TooMany { count });
        }
        for (container, probes) in &self.0 {
            if !is_dns_label(container) {
                return Err(ProbesError::Container {
                    name: container.clone(),
                });
            }
            for (kind, probe) in probes {
                probe.check().map_err(|problem| ProbesError::Probe {
                    container: container.clone(),
                    kind: *kind,
                    problem,
                })?;
            }
        }
        Ok(())
    }
}

impl AppProbe {
    fn check(&self) -> Result<(), String> {
        let actions = [
            self.http_get.is_some(),
            self.tcp_socket.is_some(),
            self.grpc.is_some(),
        ];
        if actions.iter().filter(|a| **a).count() != 1 {
            return Err("a probe needs exactly one of httpGet, tcpSocket and grpc".into());
        }
        if self.timeout_seconds == 0 {
            return Err("timeoutSeconds must be at least 1".into());
        }
        let port = match self.action() {
            Action::HttpGet(h) => {
                if !h.path.starts_with('/') || h.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    return Err(format!(
                        "httpGet.path {:?} must start with `/` and hold no spaces or control characters",
                        h.path
                    ));
                }
                for hd in &h.http_headers {
                    if hd.name.is_empty() || !hd.name.bytes().all(is_token) {
                        return Err(format!(
                            "httpGet.httpHeaders: {:?} is not an HTTP header name",
                            hd.name
                        ));
                    }
                    if hd.value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                        return Err(format!(
                            "httpGet.httpHeaders: the value of {} holds a line break or NUL",
                            hd.name
                        ));
                    }
                }
                check_host(h.host.as_deref())?;
                h.port
            }
            Action::TcpSocket(t) => {
                check_host(t.host.as_deref())?;
                t.port
            }
            Action::Grpc(g) => g.port,
        };
        if port == 0 {
            return Err("port must be from 1 to 65535".into());
        }
        Ok(())
    }
}

fn check_host(host: Option<&str>) -> Result<(), String> {
    match host {
        Some(h) if h.is_empty() || h.bytes().any(|b| b <= b' ' || b == b'/' || b == 0x7f) => {
            Err(format!("host {h:?} is not a host name or IP address"))
        }
        _ => Ok(()),
    }
}

/// RFC 9110 `tchar`.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 1123 label, as Kubernetes requires of container names.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_defaults() {
        let text = r#"{"app":{"livez":{"httpGet":{"port":8080,"path":"/healthz","httpHeaders":[{"name":"X-Probe","value":"1"}]},"timeoutSeconds":2},
                        "readyz":{"tcpSocket":{"port":8080}}},
                       "grpc-side":{"startupz":{"grpc":{"port":9090,"service":"echo"}}}}"#;
        let p: AppProbes = text.parse().unwrap();
        let live = p.get("app", ProbeKind::Livez).unwrap();
        assert_eq!(live.timeout(), Duration::from_secs(2));
        let Action::HttpGet(h) = live.action() else {
            panic!("httpGet expected")
        };
        assert_eq!(
            (h.port, h.path.as_str(), h.scheme),
            (8080, "/healthz", Scheme::Http)
        );
        let ready = p.get("app", ProbeKind::Readyz).unwrap();
        assert_eq!(ready.timeout_seconds, 1, "Kubernetes' default timeout");
        assert!(matches!(ready.action(), Action::TcpSocket(t) if t.port == 8080));
        assert!(matches!(
            p.get("grpc-side", ProbeKind::Startupz).unwrap().action(),
            Action::Grpc(g) if g.service.as_deref() == Some("echo")
        ));
        assert!(p.get("app", ProbeKind::Startupz).is_none());
        assert!(p.get("other", ProbeKind::Livez).is_none());
        let again: AppProbes = p.to_string().parse().unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn paths_name_container_and_kind() {
        assert_eq!(path("app", ProbeKind::Livez), "/app-health/app/livez");
        assert_eq!(path("web", ProbeKind::Startupz), "/app-health/web/startupz");
        for k in ProbeKind::ALL {
            assert_eq!(ProbeKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(ProbeKind::parse("healthz"), None);
    }

    #[test]
    fn bad_documents_name_what_is_wrong() {
        for (text, needle) in [
            ("not json", "is not a JSON map"),
            (r#"{"app":{"alivez":{"tcpSocket":{"port":1}}}}"#, "alivez"),
            (r#"{"App":{"livez":{"tcpSocket":{"port":1}}}}"#, "\"App\""),
            (
                r#"{"app":{"livez":{"timeoutSeconds":1}}}"#,
                "app/livez: a probe needs exactly one",
            ),
            (
                r#"{"app":{"readyz":{"tcpSocket":{"port":1},"grpc":{"port":2}}}}"#,
                "app/readyz: a probe needs exactly one",
            ),
            (
                r#"{"app":{"livez":{"tcpSocket":{"port":0}}}}"#,
                "port must be from 1",
            ),
            (r#"{"app":{"livez":{"tcpSocket":{"port":70000}}}}"#, "70000"),
            (
                r#"{"app":{"livez":{"tcpSocket":{"port":1},"timeoutSeconds":0}}}"#,
                "timeoutSeconds",
            ),
            (
                r#"{"app":{"livez":{"httpGet":{"port":1,"path":"healthz"}}}}"#,
                "\"healthz\"",
            ),
            (
                r#"{"app":{"livez":{"httpGet":{"port":1,"httpHeaders":[{"name":"a b","value":"x"}]}}}}"#,
                "\"a b\" is not an HTTP header name",
            ),
            (
                r#"{"app":{"livez":{"httpGet":{"port":1,"httpHeaders":[{"name":"x","value":"a\r\nb: c"}]}}}}"#,
                "line break",
            ),
            (
                r#"{"app":{"livez":{"httpGet":{"port":1,"scheme":"FTP"}}}}"#,
                "FTP",
            ),
            (r#"{"app":{"livez":{"exec":{"command":["true"]}}}}"#, "exec"),
        ] {
            let err = text.parse::<AppProbes>().unwrap_err().to_string();
            assert!(err.contains(ENV), "{text}: {err}");
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn container_names_are_dns_labels() {
        assert!(is_dns_label("app"));
        assert!(is_dns_label("grpc-echo-2"));
        for bad in ["", "-a", "a-", "A", "a/b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad:?}");
        }
    }
}
