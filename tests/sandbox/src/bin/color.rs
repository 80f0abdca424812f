//! `color`: the demo app of App Mesh's connection-pool walkthrough. It answers its colour on
//! `--listen` (`GET /?delay_ms=N` waits N ms first, to hold connections open) and `ok` on
//! `--health-listen` `/healthz`. It knows nothing about the mesh. Each answer names the pod that
//! served it in `x-pod` (`$POD_NAME`), so a client can count how its requests were spread.
//! `POST /fail?on=1` on the health port makes it answer 500 to every app request (and
//! `?on=0` heals it): a misbehaving pod for the outlier-detection demo. `?on=alternate` fails
//! every other request (a flaky pod, for retries). `POST /slow?ms=N` adds N ms to every app
//! answer (a slow mirror target). A request's body (up to 1 MiB) is read before it is answered.
//! On SIGTERM (or SIGINT) it stops accepting, lets the requests in flight finish (for at most
//! 5 s) and exits 0.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "color",
    about = "Answers its colour over HTTP (the Trellis demo app)"
)]
struct Args {
    /// The colour to answer.
    #[arg(long, env = "COLOR")]
    color: String,
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    #[arg(long, env = "HEALTH_LISTEN", default_value = "0.0.0.0:8081")]
    health_listen: SocketAddr,
    /// Sent back as `x-pod` (the downward API's `metadata.name`).
    #[arg(long, env = "POD_NAME", default_value = "")]
    pod_name: String,
}

/// What every answer carries: the colour and the pod's name; and whether to fail.
#[derive(Clone, Copy)]
struct Me {
    color: &'static str,
    pod: &'static str,
    /// 0: healthy; 1: every request fails; 2: every other request fails.
    failing: &'static std::sync::atomic::AtomicU8,
    served: &'static std::sync::atomic::AtomicU64,
    /// Milliseconds added to every app answer.
    slow_ms: &'static std::sync::atomic::AtomicU64,
}

/// The most of a request body the app reads.
const MAX_BODY: usize = 1 << 20;

/// The longest delay a request may ask for.
const MAX_DELAY: Duration = Duration::from_secs(60);

async fn answer(me: Me, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    use std::sync::atomic::Ordering::Relaxed;
    if req.uri().path() == "/healthz" {
        return text(200, "ok\n".into(), me.pod);
    }
    if req.uri().path() == "/fail" && req.method() == hyper::Method::POST {
        let mode = match req.uri().query().unwrap_or("") {
            "on=0" => 0,
            "on=alternate" => 2,
            _ => 1,
        };
        me.failing.store(mode, Relaxed);
        return text(200, format!("failing: {mode}\n"), me.pod);
    }
    if req.uri().path() == "/slow" && req.method() == hyper::Method::POST {
        let ms = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            .min(MAX_DELAY.as_millis() as u64);
        me.slow_ms.store(ms, Relaxed);
        return text(200, format!("slow: {ms} ms\n"), me.pod);
    }
    let (parts, body) = req.into_parts();
    // Read as an app does (a body past the limit is left unread; the connection then closes).
    let _ = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, MAX_BODY)).await;
    let slow = me.slow_ms.load(Relaxed);
    if slow > 0 {
        tokio::time::sleep(Duration::from_millis(slow)).await;
    }
    let n = me.served.fetch_add(1, Relaxed);
    match me.failing.load(Relaxed) {
        1 => return text(500, "failing on purpose\n".into(), me.pod),
        2 if n.is_multiple_of(2) => {
            return text(500, "failing every other request\n".into(), me.pod)
        }
        _ => {}
    }
    let delay = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.strip_prefix("delay_ms="))
        .find_map(|v| v.parse::<u64>().ok());
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms).min(MAX_DELAY)).await;
    }
    text(200, format!("{}\n", me.color), me.pod)
}

fn text(status: u16, body: String, pod: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .header("x-pod", pod)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// Accepts until `stop` fires, then returns; each connection is watched by `graceful`, so that
/// SIGTERM can let the requests in flight finish.
async fn serve(
    listener: TcpListener,
    me: Me,
    graceful: std::sync::Arc<GracefulShutdown>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let svc = hyper::service::service_fn(move |req| async move {
            Ok::<_, Infallible>(answer(me, req).await)
        });
        let conn =
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// How long SIGTERM waits for requests in flight (a `delay_ms` may ask for up to a minute; the
/// kubelet's grace period is 30 s by default).
const DRAIN: Duration = Duration::from_secs(5);

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let color: &'static str = Box::leak(args.color.into_boxed_str());
    let me = Me {
        color,
        pod: Box::leak(args.pod_name.into_boxed_str()),
        failing: Box::leak(Box::new(std::sync::atomic::AtomicU8::new(0))),
        served: Box::leak(Box::new(std::sync::atomic::AtomicU64::new(0))),
        slow_ms: Box::leak(Box::new(std::sync::atomic::AtomicU64::new(0))),
    };
    let main = TcpListener::bind(args.listen).await?;
    let health = TcpListener::bind(args.health_listen).await?;
    eprintln!(
        "color {color}: listening on {} (health on {})",
        args.listen, args.health_listen
    );
    // Registered before anything is served: a SIGTERM from then on is never the default (ignored
    // as PID 1, fatal otherwise).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let graceful = std::sync::Arc::new(GracefulShutdown::new());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let servers = [
        tokio::spawn(serve(health, me, graceful.clone(), stop.clone())),
        tokio::spawn(serve(main, me, graceful.clone(), stop)),
    ];
    let signal = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    };
    // Stop accepting (the listeners close when the accept loops return), let the connections
    // finish the requests they have (idle keep-alive connections close at once), then exit 0.
    let _ = stop_tx.send(true);
    for s in servers {
        let _ = s.await;
    }
    let graceful = std::sync::Arc::into_inner(graceful).expect("the accept loops have returned");
    let drained = tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_ok();
    eprintln!(
        "color {color}: {signal}: {}",
        if drained {
            "requests in flight finished, exiting"
        } else {
            "requests still in flight after the drain period, exiting"
        }
    );
    Ok(())
}
