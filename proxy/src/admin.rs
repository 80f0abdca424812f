//! The admin API (Envoy's paths): `/ready`, `/server_info`, `/stats`, `/stats/prometheus`,
//! `/clusters`, `/config_dump`, `POST /logging?level=`, `POST /quitquitquit`.
//!
//! The admin port is never captured, so every pod that can route to this one reaches it. What
//! changes the proxy (every POST) or reveals its configuration (`/config_dump`) answers loopback
//! clients only, the containers of the pod itself, as Istio (admin on localhost) and Linkerd
//! (shutdown from localhost) do; anyone else gets 403. Reading health and stats stays open, so
//! Prometheus scrapes the pod IP.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Admin replies are small and whole.
type ResponseBody = http_body_util::Full<bytes::Bytes>;
use crate::Proxy;

pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let p = p.clone();
                async move { Ok::<_, Infallible>(guarded(&p, peer, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<ResponseBody> {
    reply(status, "text/plain; charset=UTF-8", body.into())
}

fn query_param<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

/// Whether `peer` may use `method path`: every POST and `/config_dump` are for loopback only.
pub fn allowed(peer: IpAddr, method: &Method, path: &str) -> bool {
    let local_only = method == Method::POST || path == "/config_dump";
    !local_only || peer.to_canonical().is_loopback()
}

fn guarded(p: &Proxy, peer: SocketAddr, req: Request<Incoming>) -> Response<ResponseBody> {
    if !allowed(peer.ip(), req.method(), req.uri().path()) {
        tracing::warn!(%peer, method = %req.method(), path = req.uri().path(), "admin: refused a non-loopback client");
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "{} {} is allowed from the pod itself only (127.0.0.1 or ::1), not from {}: \
                 use kubectl exec, or kubectl port-forward to the admin port\n",
                req.method(),
                req.uri().path(),
                peer.ip().to_canonical()
            ),
        );
    }
    route(p, req)
}

fn route(p: &Proxy, req: Request<Incoming>) -> Response<ResponseBody> {
    let live = !p.drain.is_draining();
    let state = if live { "LIVE" } else { "DRAINING" };
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/ready") => text(
            if live {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            format!("{state}\n"),
        ),
        (&Method::GET, "/server_info") => {
            let info = serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "state": state,
                "mode": p.mode,
                "uptime_current_epoch": format!("{}s", p.started.elapsed().as_secs()),
                "command_line_options": {
                    "concurrency": p.registry.concurrency.get(),
                    "drain_time": config::format_duration(p.config.drain_time),
                    "log_level": p.log_level(),
                },
            });
            reply(StatusCode::OK, "application/json", format!("{info:#}\n"))
        }
        (&Method::GET, "/stats") => {
            let mut body = p.registry.render_text();
            if let Some(f) = query_param(&req, "filter") {
                body = body
                    .lines()
                    .filter(|l| l.contains(f))
                    .map(|l| format!("{l}\n"))
                    .collect();
            }
            text(StatusCode::OK, body)
        }
        (&Method::GET, "/stats/prometheus") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            p.registry.render_prometheus(),
        ),
        (&Method::GET, "/clusters") => {
            let mut out = String::new();
            for c in p.clusters.all() {
                c.describe(&mut out);
            }
            text(StatusCode::OK, out)
        }
        (&Method::GET, "/config_dump") => {
            let c = &p.config;
            let clusters: Vec<_> = p
                .clusters
                .all()
                .iter()
                .map(|cl| {
                    serde_json::json!({
                        "name": cl.name,
                        "address": cl.addr.to_string(),
                        "circuit_breakers": cl.limits(),
                    })
                })
                .collect();
            let dump = serde_json::json!({
                "mode": p.mode,
                "args": config::Render::to_args(c),
                "admin_listen": c.admin_listen.to_string(),
                "inbound_capture_port": c.inbound_capture_port,
                "outbound_capture_port": c.outbound_capture_port,
                "inbound_limits": c.pools.inbound,
                "outbound_limits": c.pools.outbound,
                "connect_timeout": config::format_duration(c.connect_timeout),
                "request_timeout": config::format_duration(c.request_timeout),
                "drain_time": config::format_duration(c.drain_time),
                "opaque_ports": c.opaque_ports,
                "access_log": c.access_log,
                "gateway": p.gateway.as_ref().map(|(l, u)| serde_json::json!({"listen": l.to_string(), "upstream": u})),
                "clusters": clusters,
            });
            reply(StatusCode::OK, "application/json", format!("{dump:#}\n"))
        }
        (&Method::POST, "/logging") => match query_param(&req, "level") {
            Some(level) => match p.set_log_level(level) {
                Ok(()) => text(StatusCode::OK, format!("active loggers: level={level}\n")),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            },
            None => text(
                StatusCode::OK,
                format!("active loggers: level={}\n", p.log_level()),
            ),
        },
        (&Method::POST, "/quitquitquit") => {
            tracing::info!("draining: /quitquitquit");
            p.begin_drain();
            text(StatusCode::OK, "OK\n")
        }
        (&Method::GET, "/quitquitquit" | "/logging") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n")
        }
        (_, "/") => text(
            StatusCode::OK,
            "/ready /server_info /stats /stats/prometheus /clusters /config_dump POST /logging?level= POST /quitquitquit\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutating_and_revealing_endpoints_are_loopback_only() {
        let pod: IpAddr = "10.244.0.7".parse().unwrap();
        let lo4: IpAddr = "127.0.0.1".parse().unwrap();
        let lo6: IpAddr = "::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let mapped_pod: IpAddr = "::ffff:10.244.0.7".parse().unwrap();
        for path in ["/quitquitquit", "/logging", "/anything", "/stats"] {
            assert!(!allowed(pod, &Method::POST, path), "POST {path}");
            assert!(!allowed(mapped_pod, &Method::POST, path), "POST {path}");
            for lo in [lo4, lo6, mapped] {
                assert!(allowed(lo, &Method::POST, path), "POST {path} from {lo}");
            }
        }
        assert!(!allowed(pod, &Method::GET, "/config_dump"));
        assert!(allowed(lo4, &Method::GET, "/config_dump"));
        for path in [
            "/ready",
            "/stats",
            "/stats/prometheus",
            "/server_info",
            "/clusters",
            "/",
        ] {
            assert!(allowed(pod, &Method::GET, path), "GET {path}");
        }
    }
}
