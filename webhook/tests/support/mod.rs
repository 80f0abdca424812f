//! Test support: the real TLS webhook server on a random port, and the kit's HTTPS client to it.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kit::apiserver::{Gvr, ResourceDef};
use kit::http::Client;
use webhook::bootstrap::{dns_names, generate, write_files, CertBundle};
use webhook::server::{router, serve, AppState, ServeLimits};
use webhook::tls::ReloadingCert;
use webhook::InjectorConfig;

pub const HOST: &str = "trellis-webhook.trellis-system.svc";

pub struct Server {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub bundle: CertBundle,
    pub state: Arc<AppState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "trellis-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub async fn start(tag: &str, reload: Duration) -> Server {
    start_with(tag, reload, ServeLimits::default()).await
}

/// [`start`] with the server's limits given (short timeouts, small caps).
pub async fn start_with(tag: &str, reload: Duration, limits: ServeLimits) -> Server {
    let dir = temp_dir(tag);
    let bundle = generate(&dns_names("trellis-webhook", "trellis-system")).unwrap();
    write_files(&bundle, &dir.join("tls.crt"), &dir.join("tls.key")).unwrap();
    let cert = ReloadingCert::load(&dir.join("tls.crt"), &dir.join("tls.key")).unwrap();
    cert.watch(reload);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState::with_limits(InjectorConfig::default(), &limits);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let app = router(state.clone());
    tokio::spawn(async move {
        serve(listener, cert, app, &limits, async {
            let _ = rx.await;
        })
        .await
        .unwrap()
    });
    Server {
        addr,
        dir,
        bundle,
        state,
        shutdown: Some(tx),
    }
}

/// One keep-alive HTTPS connection to the server, trusting `ca_pem` only.
pub async fn connect(addr: SocketAddr, ca_pem: &str) -> Result<Client, kit::Error> {
    Client::to(addr)
        .tls(HOST, ca_pem.as_bytes())
        .connect()
        .await
}

pub fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(rel)
}

/// A raw TLS stream to the server (no HTTP on top), offering `alpn` protocols, trusting `ca_pem`.
pub async fn tls_stream(
    addr: SocketAddr,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(HOST.try_into().unwrap(), tcp)
        .await
}

/// Secrets, for the certificate bootstrap.
pub const SECRETS: ResourceDef = ResourceDef {
    gvr: Gvr {
        group: "",
        version: "v1",
        plural: "secrets",
    },
    kind: "Secret",
    namespaced: true,
    status: false,
};
/// MutatingWebhookConfigurations, for the caBundle.
pub const MWCS: ResourceDef = ResourceDef {
    gvr: Gvr {
        group: "admissionregistration.k8s.io",
        version: "v1",
        plural: "mutatingwebhookconfigurations",
    },
    kind: "MutatingWebhookConfiguration",
    namespaced: false,
    status: false,
};

/// An API server double that serves Secrets and MutatingWebhookConfigurations besides its
/// defaults, holding `trellis-sidecar-injector` as `kubectl apply -k manifests/` creates it (the
/// certificate bootstrap's world).
pub fn api_with_webhook_configuration() -> kit::apiserver::ApiServer {
    use kit::apiserver::{ApiServer, Options, DEFAULT_RESOURCES};
    use serde::Deserialize as _;
    let mut resources = DEFAULT_RESOURCES.to_vec();
    resources.extend([SECRETS, MWCS]);
    let api = ApiServer::with_options(Options {
        resources,
        ..Options::default()
    })
    .unwrap();
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../manifests/mutatingwebhookconfiguration.yaml"),
    )
    .unwrap();
    let mwc = serde_json::Value::deserialize(serde_yaml::Deserializer::from_str(&text)).unwrap();
    api.create(&mwc).unwrap();
    api
}

/// A `webhook serve` process started by [`serve_binary`]; killed on drop if still running.
pub struct Binary {
    pub child: Child,
    pub bundle: CertBundle,
    pub dir: PathBuf,
    /// Where it answered `/healthz`.
    pub addr: SocketAddr,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free TCP port on every address (bound on the unspecified address and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the real binary (`webhook serve`) with a fresh certificate, `args`, and `kubeconfig`
/// as its `KUBECONFIG` (none: no API server), none of the `TRELLIS_*` settings of the calling
/// environment; waits (at most 10 s) until `/healthz` answers on `probe`.
pub async fn serve_binary(
    tag: &str,
    kubeconfig: Option<&str>,
    args: &[String],
    probe: SocketAddr,
) -> Binary {
    let dir = temp_dir(tag);
    let bundle = generate(&dns_names("trellis-webhook", "trellis-system")).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    write_files(&bundle, &cert, &key).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_webhook"));
    cmd.arg("serve")
        .arg(format!("--tls-cert={}", cert.display()))
        .arg(format!("--tls-key={}", key.display()))
        .args(args)
        .env_remove("KUBECONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TRELLIS_") {
            cmd.env_remove(name);
        }
    }
    if let Some(kubeconfig) = kubeconfig {
        let kc = dir.join("kubeconfig");
        std::fs::write(&kc, kubeconfig).unwrap();
        cmd.env("KUBECONFIG", &kc);
    }
    let child = cmd.spawn().expect("the webhook binary runs");
    let s = Binary {
        child,
        bundle,
        dir,
        addr: probe,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = connect(probe, &s.bundle.ca_pem).await {
            if c.get("/healthz").await.is_ok_and(|r| r.status == 200) {
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "webhook on {probe} never answered /healthz"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
