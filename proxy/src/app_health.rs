//! The app-health listener (port 15020, Istio's `/app-health/`): where the kubelet's rewritten
//! probes land.
//!
//! Why it exists: a probe that went through the inbound capture counted against the app's pool,
//! so under exactly the overload `max-connections` exists for, the kubelet's liveness probe got a
//! 503 and the kubelet restarted a healthy pod; and a `tcpSocket` probe always succeeded, because
//! the capture listener accepted the connection even with the app down. The webhook therefore
//! rewrites each `httpGet`, `tcpSocket` and `grpc` probe to `GET /app-health/<container>/<kind>`
//! here, and hands the originals over ([`config::probes`]). This module runs the original probe
//! directly against the app, outside every pool, limit and stat of the data path:
//!
//! - `httpGet`: the original path and headers, over a fresh HTTP/1.1 connection; the app's status
//!   is passed through. `HTTPS` is not verified, as the kubelet does not verify it either; this
//!   build has no TLS client in the data plane, so an `HTTPS` probe is checked as a TCP connect to
//!   the app's port (a gap, said in the answer's body);
//! - `tcpSocket`: a real connect to the app's port: 200 if it completes, 503 if not;
//! - `grpc`: `grpc.health.v1.Health/Check` over HTTP/2: 200 when the answer is `SERVING`, 503
//!   otherwise.
//!
//! Every wait is bounded by the probe's `timeoutSeconds`, and a body read by [`MAX_BODY`].
//! An unknown container or kind answers 404 naming it.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use config::probes::{Action, AppProbe, AppProbes, ProbeKind, Scheme, PATH_PREFIX};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

/// Most bytes of an app's answer read (the kubelet reads 10 KiB of an HTTP probe's body).
pub const MAX_BODY: usize = 10 * 1024;

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub status: StatusCode,
    pub body: String,
}

impl Verdict {
    fn new(status: StatusCode, body: impl Into<String>) -> Verdict {
        Verdict {
            status,
            body: body.into(),
        }
    }
}

/// Serves `/app-health/<container>/<kind>` on `listener` until the process ends.
pub async fn serve(probes: Arc<AppProbes>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let probes = probes.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let probes = probes.clone();
                async move { Ok::<_, Infallible>(answer(&probes, req.uri().path()).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(probes: &AppProbes, path: &str) -> Response<Full<Bytes>> {
    let v = match route(probes, path) {
        Ok((container, kind, probe)) => {
            let v = run(probe).await;
            if !v.status.is_success() {
                tracing::debug!(%container, %kind, status = %v.status, body = %v.body, "app probe failed");
            }
            v
        }
        Err(v) => v,
    };
    Response::builder()
        .status(v.status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(v.body)))
        .expect("valid response")
}

/// Which probe a path names, or the 404 that says why none.
fn route<'a>(
    probes: &'a AppProbes,
    path: &'a str,
) -> Result<(&'a str, ProbeKind, &'a AppProbe), Verdict> {
    let not_found = |what: String| Err(Verdict::new(StatusCode::NOT_FOUND, what));
    let Some(rest) = path.strip_prefix(PATH_PREFIX) else {
        return not_found(format!(
            "no such path {path:?}: probes are served at {PATH_PREFIX}<container>/livez|readyz|startupz\n"
        ));
    };
    let Some((container, kind)) = rest.split_once('/') else {
        return not_found(format!(
            "no probe kind in {path:?}: livez, readyz or startupz\n"
        ));
    };
    let Some(kind) = ProbeKind::parse(kind) else {
        return not_found(format!(
            "unknown probe kind {kind:?}: livez, readyz or startupz\n"
        ));
    };
    match probes.get(container, kind) {
        Some(p) => Ok((container, kind, p)),
        None => not_found(format!(
            "no {kind} probe for container {container:?} was handed to the proxy\n"
        )),
    }
}

/// Runs one original probe against the app, bounded by its timeout.
pub async fn run(probe: &AppProbe) -> Verdict {
    let timeout = probe.timeout();
    match tokio::time::timeout(timeout, run_unbounded(probe)).await {
        Ok(v) => v,
        Err(_) => Verdict::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "probe timed out after {}\n",
                config::format_duration(timeout)
            ),
        ),
    }
}

fn target(host: Option<&str>, port: u16) -> String {
    match host {
        Some(h) => match h.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port).to_string(),
            Err(_) => format!("{h}:{port}"),
        },
        None => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port).to_string(),
    }
}

async fn run_unbounded(probe: &AppProbe) -> Verdict {
    let unavailable = |what: String| Verdict::new(StatusCode::SERVICE_UNAVAILABLE, what + "\n");
    match probe.action() {
        Action::TcpSocket(t) => {
            let to = target(t.host.as_deref(), t.port);
            match TcpStream::connect(&to).await {
                Ok(_) => Verdict::new(StatusCode::OK, format!("connected to {to}\n")),
                Err(e) => unavailable(format!("connect to {to}: {e}")),
            }
        }
        Action::HttpGet(h) => {
            let to = target(h.host.as_deref(), h.port);
            let stream = match TcpStream::connect(&to).await {
                Ok(s) => s,
                Err(e) => return unavailable(format!("connect to {to}: {e}")),
            };
            if h.scheme == Scheme::Https {
                return Verdict::new(
                    StatusCode::OK,
                    format!("connected to {to} (HTTPS probes are checked as a TCP connect)\n"),
                );
            }
            let (mut send, conn) =
                match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                    Ok(c) => c,
                    Err(e) => return unavailable(format!("HTTP to {to}: {e}")),
                };
            tokio::spawn(conn);
            let mut req = Request::get(h.path.as_str());
            let mut has_host = false;
            let mut has_agent = false;
            for hd in &h.http_headers {
                has_host |= hd.name.eq_ignore_ascii_case("host");
                has_agent |= hd.name.eq_ignore_ascii_case("user-agent");
                req = req.header(hd.name.as_str(), hd.value.as_str());
            }
            if !has_host {
                req = req.header("host", to.as_str());
            }
            if !has_agent {
                req = req.header("user-agent", "kube-probe/trellis");
            }
            let req = match req.body(Full::new(Bytes::new())) {
                Ok(r) => r,
                Err(e) => return unavailable(format!("bad probe request: {e}")),
            };
            let resp = match send.send_request(req).await {
                Ok(r) => r,
                Err(e) => return unavailable(format!("HTTP to {to}: {e}")),
            };
            let status = resp.status();
            // The body is read (bounded) so the app sees a complete exchange, and echoed.
            let body = match Limited::new(resp.into_body(), MAX_BODY).collect().await {
                Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                Err(_) => String::new(),
            };
            Verdict::new(status, body)
        }
        Action::Grpc(g) => {
            let to = target(None, g.port);
            let stream = match TcpStream::connect(&to).await {
                Ok(s) => s,
                Err(e) => return unavailable(format!("connect to {to}: {e}")),
            };
            match grpc_check(stream, g.service.as_deref().unwrap_or("")).await {
                Ok(1) => Verdict::new(StatusCode::OK, "SERVING\n"),
                Ok(n) => unavailable(format!("grpc health: status {n} (not SERVING)")),
                Err(e) => unavailable(format!("grpc health at {to}: {e}")),
            }
        }
    }
}

/// `grpc.health.v1.Health/Check`: the `ServingStatus` number the app answered.
async fn grpc_check(stream: TcpStream, service: &str) -> Result<u64, String> {
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::post("http://localhost/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "kube-probe/trellis")
        .body(Full::new(grpc_frame(&health_request(service))))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::OK {
        return Err(format!("HTTP status {}", resp.status()));
    }
    let head_status = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let collected = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(head_status);
    match grpc_status.as_deref() {
        Some("0") => {}
        Some(code) => return Err(format!("grpc-status {code}")),
        None => return Err("no grpc-status".into()),
    }
    let body = collected.to_bytes();
    if body.len() < 5 {
        return Err("empty answer".into());
    }
    health_status(&body[5..]).ok_or_else(|| "malformed HealthCheckResponse".into())
}

/// `HealthCheckRequest { service = 1 }`, protobuf-encoded.
fn health_request(service: &str) -> Vec<u8> {
    if service.is_empty() {
        return Vec::new();
    }
    let mut out = vec![0x0a];
    varint(service.len() as u64, &mut out);
    out.extend_from_slice(service.as_bytes());
    out
}

/// The 5-byte gRPC message prefix (not compressed, length) and the message.
fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    Bytes::from(out)
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn read_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut n = 0u64;
    for (i, b) in buf.iter().enumerate().take(10) {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((n, i + 1));
        }
    }
    None
}

/// `HealthCheckResponse.status` (field 1, varint); absent is 0, `UNKNOWN`.
fn health_status(mut msg: &[u8]) -> Option<u64> {
    let mut status = 0;
    while !msg.is_empty() {
        let (key, n) = read_varint(msg)?;
        msg = &msg[n..];
        match key & 7 {
            0 => {
                let (v, n) = read_varint(msg)?;
                msg = &msg[n..];
                if key >> 3 == 1 {
                    status = v;
                }
            }
            2 => {
                let (len, n) = read_varint(msg)?;
                let end = n.checked_add(usize::try_from(len).ok()?)?;
                msg = msg.get(end..)?;
            }
            _ => return None,
        }
    }
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn probes(json: &str) -> AppProbes {
        json.parse().unwrap()
    }

    /// An app that answers every HTTP/1 request with `status` and echoes the request head.
    async fn http_app(status: u16) -> (u16, tokio::task::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                n += s.read(&mut buf[n..]).await.unwrap();
            }
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
            s.write_all(resp.as_bytes()).await.unwrap();
            head
        });
        (port, task)
    }

    #[tokio::test]
    async fn http_probe_passes_the_apps_status_path_and_headers_through() {
        for status in [200u16, 503, 404] {
            let (port, app) = http_app(status).await;
            let p = probes(&format!(
                r#"{{"app":{{"livez":{{"httpGet":{{"port":{port},"path":"/healthz?x=1","httpHeaders":[{{"name":"X-Probe","value":"yes"}}]}}}}}}}}"#
            ));
            let resp = answer(&p, "/app-health/app/livez").await;
            assert_eq!(resp.status().as_u16(), status);
            let head = app.await.unwrap();
            assert!(head.starts_with("GET /healthz?x=1 HTTP/1.1\r\n"), "{head}");
            assert!(head.to_ascii_lowercase().contains("x-probe: yes"), "{head}");
        }
    }

    #[tokio::test]
    async fn tcp_probe_fails_when_nothing_listens_and_succeeds_when_something_does() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let p = probes(&format!(
            r#"{{"app":{{"readyz":{{"tcpSocket":{{"port":{port}}}}}}}}}"#
        ));
        assert_eq!(answer(&p, "/app-health/app/readyz").await.status(), 200);
        drop(l);
        assert_eq!(answer(&p, "/app-health/app/readyz").await.status(), 503);
    }

    #[tokio::test]
    async fn a_silent_app_is_bounded_by_the_probe_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let _hold = tokio::spawn(async move {
            let (_s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let p = probes(&format!(
            r#"{{"app":{{"livez":{{"httpGet":{{"port":{port}}},"timeoutSeconds":1}}}}}}"#
        ));
        let started = std::time::Instant::now();
        let resp = answer(&p, "/app-health/app/livez").await;
        assert_eq!(resp.status(), 503);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn unknown_container_or_kind_is_404_naming_it() {
        let p = probes(r#"{"app":{"livez":{"tcpSocket":{"port":1}}}}"#);
        for (path, needle) in [
            ("/app-health/web/livez", "\"web\""),
            ("/app-health/app/readyz", "readyz"),
            ("/app-health/app/alive", "\"alive\""),
            ("/healthz", "\"/healthz\""),
        ] {
            let resp = answer(&p, path).await;
            assert_eq!(resp.status(), 404, "{path}");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(String::from_utf8_lossy(&body).contains(needle), "{path}");
        }
    }

    #[test]
    fn health_messages_encode_and_decode() {
        assert_eq!(health_request(""), Vec::<u8>::new());
        assert_eq!(health_request("ab"), vec![0x0a, 2, b'a', b'b']);
        assert_eq!(&grpc_frame(&[1, 2])[..], &[0, 0, 0, 0, 2, 1, 2]);
        assert_eq!(health_status(&[0x08, 0x01]), Some(1));
        assert_eq!(health_status(&[0x08, 0x02]), Some(2));
        assert_eq!(health_status(&[]), Some(0));
        assert_eq!(health_status(&[0x08]), None);
    }
}
