//! CA rotation with overlap, against the test kit's API server double: two replicas, each with its
//! own TLS server and its own bootstrap loop, rotate a certificate valid for seconds twice. A
//! client that, like the API server, trusts exactly the caBundle the MutatingWebhookConfiguration
//! holds at that moment handshakes with both replicas every 50 ms throughout; not one handshake
//! may fail.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use kit::apiserver::ApiServer;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use support::{MWCS, SECRETS};
use webhook::bootstrap::{self, BootstrapConfig, Replica};
use webhook::tls::{pem_fingerprint, ReloadingCert};

const SERVER_NAME: &str = "trellis-webhook.trellis-system.svc";

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// The caBundle of the configuration's first webhook, as the API server would read it now.
fn ca_bundle(api: &ApiServer) -> Vec<u8> {
    let mwc = api
        .object(&MWCS.gvr, "", "trellis-sidecar-injector")
        .unwrap();
    mwc["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .map(b64)
        .unwrap_or_default()
}

fn secret(api: &ApiServer) -> Value {
    api.object(&SECRETS.gvr, "trellis-system", "trellis-webhook-tls")
        .expect("the Secret exists")
}

fn field(secret: &Value, key: &str) -> String {
    String::from_utf8(b64(secret["data"][key].as_str().unwrap())).unwrap()
}

fn annotation(secret: &Value, key: &str) -> String {
    secret["metadata"]["annotations"][key]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// One TLS handshake trusting exactly the CAs in `bundle` (PEM). Returns what went wrong, if anything.
async fn handshake(addr: SocketAddr, bundle: &[u8]) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle) {
        roots
            .add(cert.map_err(|e| format!("caBundle: {e}"))?)
            .map_err(|e| format!("caBundle: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    connector
        .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
        .await
        .map(drop)
        .map_err(|e| format!("handshake: {e}"))
}

/// A replica's TLS server: the webhook's own certificate resolver, handshakes only.
async fn serve(cert: Arc<ReloadingCert>) -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cert.server_config()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_rotate_twice_and_no_handshake_fails() {
    let api = Arc::new(support::api_with_webhook_configuration());

    let dir = std::env::temp_dir().join(kit::netns::unique_name("rotation"));
    let mut addrs = Vec::new();
    let mut replicas = Vec::new();
    let mut loops = Vec::new();
    for n in 1..=2 {
        // Certificates valid 6 s (renewed after 4 s), rounds every 200 ms, reports live 3 s.
        let cfg = BootstrapConfig {
            bootstrap_certs: true,
            bootstrap_interval: Duration::from_millis(200),
            cert_validity: Duration::from_secs(6),
            serving_report_ttl: Duration::from_secs(3),
            pod_name: Some(format!("trellis-webhook-{n}")),
            ..BootstrapConfig::default()
        };
        let (cert, key) = (
            dir.join(format!("{n}/tls.crt")),
            dir.join(format!("{n}/tls.key")),
        );
        let client = api.client();
        // As `webhook serve` starts: a first round, then the server, then the rounds.
        bootstrap::run_until_first_success(&client, &cfg, &cert, &key).await;
        let served = ReloadingCert::load(&cert, &key).unwrap();
        served.watch(Duration::from_millis(100));
        addrs.push(serve(Arc::clone(&served)).await);
        replicas.push(Arc::clone(&served));
        loops.push(
            Replica {
                client,
                cfg,
                cert,
                key,
                served: Some(served),
            }
            .spawn(),
        );
    }
    let first_ca = field(&secret(&api), "ca.crt");
    assert_eq!(ca_bundle(&api), first_ca.as_bytes());

    // The API server's view: every 50 ms, the caBundle as it is now, against both replicas.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let bundles_seen = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let prober = {
        let (api, stop, ok, failures, bundles_seen, addrs) = (
            Arc::clone(&api),
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failures),
            Arc::clone(&bundles_seen),
            addrs.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for (i, addr) in addrs.iter().enumerate() {
                    let bundle = ca_bundle(&api);
                    {
                        let mut seen = bundles_seen.lock().unwrap();
                        if seen.last() != Some(&bundle) {
                            seen.push(bundle.clone());
                        }
                    }
                    match handshake(*addr, &bundle).await {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.lock().unwrap().push(format!(
                            "replica {}: {e} (caBundle holds {} CAs)",
                            i + 1,
                            CertificateDer::pem_slice_iter(&bundle).count()
                        )),
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // Two full rotations: serial 1 (created) → 3 → 5, back to stable each time.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = secret(&api);
        let serial: u64 = annotation(&s, "trellis.dev/ca-bundle-serial")
            .parse()
            .unwrap_or(0);
        if serial >= 5 && annotation(&s, "trellis.dev/ca-rotation") == "stable" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no two rotations within 60 s: serial {serial}, phase {:?}, failures {:?}",
            annotation(&s, "trellis.dev/ca-rotation"),
            failures.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Keep probing a little after the last step.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    prober.await.unwrap();
    for l in &loops {
        l.abort();
    }

    let failures = failures.lock().unwrap().clone();
    let ok = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {} handshakes failed: {failures:#?}",
        failures.len(),
        ok + failures.len()
    );
    assert!(ok >= 100, "only {ok} handshakes: the prober barely ran");

    // The caBundle went one CA → two → one → two → one, never skipping the overlap.
    let seen: Vec<usize> = bundles_seen
        .lock()
        .unwrap()
        .iter()
        .map(|b| CertificateDer::pem_slice_iter(b).count())
        .collect();
    assert_eq!(seen, [1, 2, 1, 2, 1], "caBundle sizes over time");

    // Completed: the old CA is gone, the caBundle is the Secret's (new) CA alone, and both
    // replicas serve the Secret's certificate, which that CA verifies.
    let s = secret(&api);
    let ca = field(&s, "ca.crt");
    assert_ne!(ca, first_ca);
    assert_eq!(ca_bundle(&api), ca.as_bytes());
    assert_eq!(field(&s, "ca-bundle.crt"), ca);
    let want = pem_fingerprint(&field(&s, "tls.crt")).unwrap();
    for (i, served) in replicas.iter().enumerate() {
        assert_eq!(
            served.fingerprint(),
            want,
            "replica {} serves the new certificate",
            i + 1
        );
        handshake(addrs[i], ca.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("replica {}: {e}", i + 1));
        let old = handshake(addrs[i], first_ca.as_bytes()).await;
        assert!(
            old.is_err(),
            "replica {} still verifies with the first CA",
            i + 1
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
