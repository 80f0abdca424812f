//! The pod sandbox: Trellis end to end on one machine, with network namespaces playing the pods and
//! this crate playing the API server and the kubelet.
//!
//! A [`Mesh`](mesh::Mesh) is one "node": a network namespace holding a bridge, a real `webhook
//! serve` in its own namespace with a certificate from `certs/make-certs.sh`, and pods made from the
//! Deployments in `manifests/demo/`. Each pod template is sent to the webhook as an AdmissionReview
//! over HTTPS, the returned JSON patch is applied, and [`kubelet`] runs the result: `proxyinit` with
//! exactly the injected command and args as root, then `proxy` with the injected args and env as uid
//! 1337, its postStart hook (`proxy wait-ready`), and the app. [`scenarios`] drive real traffic
//! through it and check what a user would check; the tests and `make demo` run the same scenarios.
//!
//! Everything made (namespaces, processes, temporary files) is removed on drop, so also when a test
//! panics, and by [`cleanup::all`] when the demo is interrupted.
#![forbid(unsafe_code)]

pub mod admission;
pub mod bins;
pub mod cleanup;
pub mod kubelet;
pub mod load;
pub mod manifests;
pub mod mesh;
pub mod scenarios;
pub mod services;
pub mod session;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use kit::http::{Client, Response};
use kit::netns::Netns;

/// The uid/gid the Trellis image runs as when a container sets none (the Dockerfile's `USER`).
pub const IMAGE_USER: u32 = 65532;

/// How long the harness's own HTTP calls may take (probes, `/stats`, admin calls, reviews).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTP exchange from inside `ns` (the node: the kubelet's probes, `curl` to a sidecar's
/// admin port), on the kit's client; with `tls`, HTTPS to that server name trusting only that CA.
pub fn call(
    ns: &Netns,
    tls: Option<(&str, &[u8])>,
    method: &str,
    addr: SocketAddr,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<Response> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let what = format!("{method} {scheme}://{addr}{path} from {}", ns.name);
    kit::block_on(async {
        let exchange = async {
            let mut to = Client::to(addr).netns(ns);
            if let Some((name, ca)) = tls {
                to = to.tls(name, ca);
            }
            to.connect().await?.request(method, path, body).await
        };
        match tokio::time::timeout(HTTP_TIMEOUT, exchange).await {
            Ok(r) => r.map_err(anyhow::Error::from),
            Err(_) => Err(anyhow::anyhow!("no answer within {HTTP_TIMEOUT:?}")),
        }
    })
    .context(what)
}

/// Raw bytes to `addr` from inside `ns`, then everything the server answers until it closes
/// (or [`HTTP_TIMEOUT`]): for requests no HTTP client would send.
pub fn raw(ns: &Netns, addr: SocketAddr, bytes: &[u8]) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let what = format!("raw bytes to {addr} from {}", ns.name);
    let sock = ns.socket_for(addr).with_context(|| what.clone())?;
    kit::block_on(async {
        let exchange = async {
            let mut s = tokio::net::TcpSocket::from_std_stream(sock)
                .connect(addr)
                .await?;
            s.write_all(bytes).await?;
            let mut all = Vec::new();
            s.read_to_end(&mut all).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&all).into_owned())
        };
        match tokio::time::timeout(HTTP_TIMEOUT, exchange).await {
            Ok(r) => r.map_err(anyhow::Error::from),
            Err(_) => Err(anyhow::anyhow!("not closed within {HTTP_TIMEOUT:?}")),
        }
    })
    .context(what)
}

/// `GET path` from inside `ns`.
pub fn get(ns: &Netns, addr: SocketAddr, path: &str) -> anyhow::Result<Response> {
    call(ns, None, "GET", addr, path, Vec::new())
}
