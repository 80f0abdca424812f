//! Test support: the real TLS webhook server on a random port, and a real HTTPS client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
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

/// One keep-alive HTTPS connection that trusts `ca_pem` only.
pub struct Client {
    sender: http1::SendRequest<Full<Bytes>>,
    pub peer_cert: Vec<u8>,
}

impl Client {
    pub async fn connect(addr: SocketAddr, ca_pem: &str) -> Result<Client, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let tls = connector
            .connect(ServerName::try_from(HOST).unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let peer_cert = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        let (sender, conn) = http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Client { sender, peer_cert })
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", HOST)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes()
            .to_vec();
        Ok((status, body))
    }
}

pub fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(rel)
}
