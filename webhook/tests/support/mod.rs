//! Test support: the real TLS webhook server on a random port, and the kit's HTTPS client to it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kit::http::Client;
use webhook::bootstrap::{dns_names, generate, write_files, CertBundle};
use webhook::server::{router, serve, AppState};
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
    let dir = temp_dir(tag);
    let bundle = generate(&dns_names("trellis-webhook", "trellis-system")).unwrap();
    write_files(&bundle, &dir.join("tls.crt"), &dir.join("tls.key")).unwrap();
    let cert = ReloadingCert::load(&dir.join("tls.crt"), &dir.join("tls.key")).unwrap();
    cert.watch(reload);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState::new(InjectorConfig::default());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let app = router(state.clone());
    tokio::spawn(async move {
        serve(listener, cert, app, async {
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
