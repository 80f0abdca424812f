//! Test utilities: a slow-able HTTP app and the real `proxy` binary as a child process. The HTTP
//! client and the `/stats` matcher are the kit's ([`kit::http`], [`kit::stats`]).
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kit::http::get;
use kit::stats::Matcher;
use tokio::net::TcpListener;

/// A free loopback port (bound then released; the race is acceptable in tests).
pub fn free_addr() -> SocketAddr {
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Body of `n` zero bytes, streamed in 64 KiB chunks, never held whole.
pub struct Zeros(pub u64);
static ZEROS: [u8; 65536] = [0; 65536];
impl Body for Zeros {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.0 == 0 {
            return Poll::Ready(None);
        }
        let n = self.0.min(ZEROS.len() as u64);
        self.0 -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &ZEROS[..n as usize],
        )))))
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0)
    }
}

type AppBody = http_body_util::Either<Full<Bytes>, Zeros>;

fn query(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn app(mut req: Request<Incoming>) -> Result<Response<AppBody>, Infallible> {
    if let Some(ms) = query(&req, "delay_ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let full = |s: String| http_body_util::Either::Left(Full::new(Bytes::from(s)));
    match req.uri().path() {
        "/sink" => {
            let mut n = 0u64;
            let mut body = req.into_body();
            while let Some(f) = body.frame().await {
                match f {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => return Ok(Response::new(full("error".into()))),
                }
            }
            Ok(Response::new(full(n.to_string())))
        }
        "/big" => Ok(Response::new(http_body_util::Either::Right(Zeros(
            query(&req, "bytes").unwrap_or(0),
        )))),
        "/ws" => {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(u) = on.await {
                    let mut io = TokioIo::new(u);
                    let (mut r, mut w) = tokio::io::split(&mut io);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            let mut r = Response::new(full(String::new()));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            r.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            Ok(r)
        }
        _ => {
            // Echo what the proxy added, so tests can see it.
            let mut r = Response::new(full("ok".into()));
            for h in [
                "x-request-id",
                "x-forwarded-for",
                "connection",
                "keep-alive",
            ] {
                if let Some(v) = req.headers().get(h) {
                    r.headers_mut().insert(
                        format!("x-seen-{h}")
                            .parse::<hyper::header::HeaderName>()
                            .unwrap(),
                        v.clone(),
                    );
                }
            }
            Ok(r)
        }
    }
}

/// Starts the test app on an ephemeral port (on the current runtime).
pub async fn start_app() -> SocketAddr {
    start_app_on("127.0.0.1:0").await
}

pub async fn start_app_on(bind: &str) -> SocketAddr {
    start_app_with(TcpListener::bind(bind).await.unwrap())
}

/// Serves the test app on `l` (which may belong to another network namespace).
pub fn start_app_with(l: TcpListener) -> SocketAddr {
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), hyper::service::service_fn(app))
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// An upstream that reads a request and closes the connection with a TCP reset.
pub async fn start_resetter() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut s = s;
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                drop(s);
            });
        }
    });
    addr
}

/// The real `proxy` binary; killed on drop.
pub struct ProxyProc {
    pub child: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub stdout: PathBuf,
}

impl ProxyProc {
    /// `proxy gateway` in front of `upstream`, plus `args`; waits for `/ready`. A port picked by
    /// [`free_addr`] can be taken (as an ephemeral port) before the proxy binds it: then the
    /// proxy exits at once, and is started again on other ports.
    pub async fn gateway(upstream: SocketAddr, args: &[&str]) -> ProxyProc {
        let upstream = format!("--upstream={upstream}");
        let mut all = vec![upstream.as_str()];
        all.extend_from_slice(args);
        ProxyProc::gateway_with(&all).await
    }

    /// `proxy gateway` with `args` as they are (`--upstream` or `--gateway` among them).
    pub async fn gateway_with(args: &[&str]) -> ProxyProc {
        for _ in 0..5 {
            let listen = free_addr();
            let admin = free_addr();
            let stdout = std::env::temp_dir().join(format!(
                "trellis-proxy-test-{}-{}.log",
                std::process::id(),
                listen.port()
            ));
            let child = Command::new(env!("CARGO_BIN_EXE_proxy"))
                .arg("gateway")
                .arg(format!("--listen={listen}"))
                .arg(format!("--admin-listen={admin}"))
                .args(args)
                .env_remove("TRELLIS_LOG_LEVEL")
                .stdout(Stdio::from(std::fs::File::create(&stdout).unwrap()))
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn proxy");
            let mut p = ProxyProc {
                child,
                listen,
                admin,
                stdout,
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if get(p.admin, "/ready").await.is_ok_and(|r| r.status == 200) {
                    return p;
                }
                if p.child.try_wait().unwrap().is_some() {
                    break; // exited (a port was taken): try other ports
                }
                assert!(Instant::now() < deadline, "proxy never became ready");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("proxy exited at start five times");
    }

    /// Its `/stats`, to read and to match.
    pub fn stats(&self) -> Matcher<'static> {
        Matcher::new(self.admin)
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stdout);
    }
}

/// Reads until the peer closes (10 s at most); returns everything.
pub async fn read_to_close(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all))
        .await
        .expect("the proxy closed the connection")
        .unwrap();
    String::from_utf8(all).unwrap()
}

/// Waits (10 s at most) until `n` access log lines of `px` contain `needle`; returns them.
pub async fn wait_log_lines(px: &ProxyProc, needle: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = px.access_log();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} access log lines with {needle:?} in:\n{log}",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first access log line of `px` that contains `needle`, waiting for it (10 s at most).
pub async fn wait_log(px: &ProxyProc, needle: &str) -> String {
    wait_log_lines(px, needle, 1).await.swap_remove(0)
}

/// Peak resident memory of a process, in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The rules `proxyinit` writes into a fresh pod with its defaults, both families.
pub fn install_proxyinit_rules(pod: &kit::netns::Netns) {
    use proxyinit::rules::{self, Family, NatState};
    for family in [Family::V4, Family::V6] {
        let input = rules::apply_input(&proxyinit::Config::default(), family, &NatState::empty());
        pod.enter(move || proxyinit::apply::restore(proxyinit::Backend::Nft, family, &input))
            .unwrap()
            .unwrap_or_else(|e| panic!("{family:?} rules: {e}"));
    }
}

/// A tokio listener on `addr` inside `ns`.
pub fn listen_in(ns: &kit::netns::Netns, addr: &str) -> TcpListener {
    TcpListener::from_std(ns.listen(addr.parse().unwrap()).unwrap()).unwrap()
}

/// An HTTP/2 (prior knowledge) client connection to `to`, and the task driving it (done when
/// the connection closes).
pub async fn h2_client(
    to: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let s = tokio::net::TcpStream::connect(to).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    (send, tokio::spawn(conn))
}
