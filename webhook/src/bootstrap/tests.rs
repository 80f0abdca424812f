use super::*;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use rustls::client::danger::ServerCertVerifier as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

#[test]
fn generated_chain_verifies_for_the_service_names() {
    let dns = dns_names("trellis-webhook", "trellis-system");
    assert_eq!(dns[0], "trellis-webhook.trellis-system.svc");
    assert_eq!(dns[1], "trellis-webhook.trellis-system.svc.cluster.local");
    let b = generate(&dns).unwrap();
    let ca = CertificateDer::from_pem_slice(b.ca_pem.as_bytes()).unwrap();
    let leaf = CertificateDer::from_pem_slice(b.cert_pem.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    for name in &dns[..2] {
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from(name.as_str()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(verifier
        .verify_server_cert(
            &leaf,
            &[],
            &ServerName::try_from("evil.example").unwrap(),
            &[],
            UnixTime::now()
        )
        .is_err());
    // Two runs make two different CAs (nothing is cached or fixed).
    assert_ne!(generate(&dns).unwrap().ca_pem, b.ca_pem);
}

fn mwc(bundles: &[Option<&str>]) -> MutatingWebhookConfiguration {
    let webhooks: Vec<Value> = bundles
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut cc = json!({ "service": { "name": "trellis-webhook", "namespace": "trellis-system", "path": "/mutate" } });
            if let Some(b) = b {
                cc["caBundle"] = json!(base64::engine::general_purpose::STANDARD.encode(b));
            }
            json!({ "name": format!("w{i}.trellis.dev"), "clientConfig": cc, "admissionReviewVersions": ["v1"], "sideEffects": "None" })
        })
        .collect();
    serde_json::from_value(
        json!({ "metadata": { "name": "trellis-sidecar-injector" }, "webhooks": webhooks }),
    )
    .unwrap()
}

#[test]
fn ca_bundle_patch_only_touches_drifted_webhooks() {
    assert_eq!(ca_bundle_patch(&mwc(&[Some("CA"), Some("CA")]), "CA"), None);
    let patch = ca_bundle_patch(&mwc(&[Some("CA"), None, Some("OLD")]), "CA").unwrap();
    let v = serde_json::to_value(&patch).unwrap();
    let paths: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/webhooks/1/name",
            "/webhooks/1/clientConfig/caBundle",
            "/webhooks/2/name",
            "/webhooks/2/clientConfig/caBundle"
        ]
    );
    let mut doc = serde_json::to_value(mwc(&[Some("CA"), None, Some("OLD")])).unwrap();
    json_patch::patch(&mut doc, &patch).unwrap();
    let fixed: MutatingWebhookConfiguration = serde_json::from_value(doc).unwrap();
    assert_eq!(
        ca_bundle_patch(&fixed, "CA"),
        None,
        "after the patch nothing drifts"
    );
}

/// A tiny stand-in for the API server: Secrets in one namespace and one webhook configuration.
#[derive(Default)]
struct Fake {
    secret: Mutex<Option<Value>>,
    mwc: Mutex<Value>,
    creates: Mutex<u32>,
    /// GETs of the secret answered 404 regardless, to make two replicas race on create.
    blind_gets: Mutex<u32>,
}

fn not_found() -> (StatusCode, Json<Value>) {
    (
        StatusCode::NOT_FOUND,
        Json(
            json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found" }),
        ),
    )
}

async fn fake_api(fake: Arc<Fake>) -> String {
    let app = Router::new()
        .route(
            "/api/v1/namespaces/{ns}/secrets/{name}",
            get(|State(f): State<Arc<Fake>>, Path((_ns, _name)): Path<(String, String)>| async move {
                {
                    let mut blind = f.blind_gets.lock().unwrap();
                    if *blind > 0 {
                        *blind -= 1;
                        return not_found();
                    }
                }
                match f.secret.lock().unwrap().clone() {
                    Some(s) => (StatusCode::OK, Json(s)),
                    None => not_found(),
                }
            }),
        )
        .route(
            "/api/v1/namespaces/{ns}/secrets",
            axum::routing::post(|State(f): State<Arc<Fake>>, Json(body): Json<Value>| async move {
                let mut s = f.secret.lock().unwrap();
                if s.is_some() {
                    return (
                        StatusCode::CONFLICT,
                        Json(json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409, "message": "exists" })),
                    );
                }
                *f.creates.lock().unwrap() += 1;
                *s = Some(body.clone());
                (StatusCode::CREATED, Json(body))
            }),
        )
        .route(
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}",
            get(|State(f): State<Arc<Fake>>| async move { Json(f.mwc.lock().unwrap().clone()) }).patch(
                |State(f): State<Arc<Fake>>, body: axum::body::Bytes| async move {
                    let patch: json_patch::Patch = serde_json::from_slice(&body).unwrap();
                    let mut doc = f.mwc.lock().unwrap();
                    json_patch::patch(&mut doc, &patch).unwrap();
                    Json(doc.clone())
                },
            ),
        )
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn client(url: &str) -> kube::Client {
    let config = kube::Config::new(url.parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn config() -> BootstrapConfig {
    BootstrapConfig {
        bootstrap_certs: true,
        ..BootstrapConfig::default()
    }
}

#[tokio::test]
async fn two_replicas_racing_agree_on_one_secret_and_the_ca_bundle_follows() {
    let fake = Arc::new(Fake::default());
    *fake.mwc.lock().unwrap() = serde_json::to_value(mwc(&[None])).unwrap();
    *fake.blind_gets.lock().unwrap() = 2; // both replicas see "missing"
    let url = fake_api(fake.clone()).await;
    let (c1, c2) = (client(&url), client(&url));
    let cfg = config();
    let (a, b) = tokio::join!(ensure_secret(&c1, &cfg), ensure_secret(&c2, &cfg));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b, "the loser adopts the winner's certificate");
    assert_eq!(*fake.creates.lock().unwrap(), 1);

    let dir = std::env::temp_dir().join(format!("trellis-bootstrap-{}", std::process::id()));
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    reconcile(&c1, &cfg, &cert, &key).await.unwrap();
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), a.cert_pem);
    assert_eq!(std::fs::read_to_string(&key).unwrap(), a.key_pem);
    crate::tls::ReloadingCert::load(&cert, &key).expect("the written pair serves");
    let patched: MutatingWebhookConfiguration =
        serde_json::from_value(fake.mwc.lock().unwrap().clone()).unwrap();
    assert_eq!(
        ca_bundle_patch(&patched, &a.ca_pem),
        None,
        "caBundle now holds the Secret's CA"
    );

    // Drift: someone re-applies the manifests and wipes the caBundle; the next round repairs it.
    *fake.mwc.lock().unwrap() = serde_json::to_value(mwc(&[None])).unwrap();
    assert!(ensure_ca_bundle(&c2, &cfg, &a.ca_pem).await.unwrap());
    assert!(
        !ensure_ca_bundle(&c2, &cfg, &a.ca_pem).await.unwrap(),
        "no patch when nothing drifted"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn an_incomplete_secret_is_reported_not_overwritten() {
    let fake = Arc::new(Fake::default());
    *fake.secret.lock().unwrap() = Some(
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "trellis-webhook-tls" }, "data": {} }),
    );
    let url = fake_api(fake.clone()).await;
    let err = ensure_secret(&client(&url), &config())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("trellis-system/trellis-webhook-tls") && err.contains("tls.key"),
        "{err}"
    );
    assert_eq!(*fake.creates.lock().unwrap(), 0);
}
