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
    // Serial 0 is what an unstamped configuration carries.
    assert_eq!(
        ca_bundle_patch(&mwc(&[Some("CA"), Some("CA")]), "CA", 0),
        None
    );
    let patch = ca_bundle_patch(&mwc(&[Some("CA"), None, Some("OLD")]), "CA", 3).unwrap();
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
            "/webhooks/2/clientConfig/caBundle",
            "/metadata/annotations"
        ]
    );
    let mut doc = serde_json::to_value(mwc(&[Some("CA"), None, Some("OLD")])).unwrap();
    json_patch::patch(&mut doc, &patch).unwrap();
    let fixed: MutatingWebhookConfiguration = serde_json::from_value(doc).unwrap();
    assert_eq!(ca_bundle_serial(&fixed), 3);
    assert_eq!(
        ca_bundle_patch(&fixed, "CA", 3),
        None,
        "after the patch nothing drifts"
    );
    // A newer serial with the same bundle is stamped, guarded by the resourceVersion read.
    let mut doc = serde_json::to_value(&fixed).unwrap();
    doc["metadata"]["resourceVersion"] = json!("7");
    let fixed: MutatingWebhookConfiguration = serde_json::from_value(doc.clone()).unwrap();
    let v = serde_json::to_value(ca_bundle_patch(&fixed, "CA", 4).unwrap()).unwrap();
    assert_eq!(
        v,
        json!([
            { "op": "test", "path": "/metadata/resourceVersion", "value": "7" },
            { "op": "add", "path": "/metadata/annotations/trellis.dev~1ca-bundle-serial", "value": "4" },
        ])
    );
}

fn pair(validity_secs: u64) -> CertBundle {
    generate_valid_for(
        &dns_names("trellis-webhook", "trellis-system"),
        Duration::from_secs(validity_secs),
    )
    .unwrap()
}

fn fp(b: &CertBundle) -> String {
    pem_fingerprint(&b.cert_pem).unwrap()
}

fn report(fingerprint: &str, at: u64) -> Report {
    Report {
        fingerprint: fingerprint.into(),
        at,
    }
}

const TTL: Duration = Duration::from_secs(30);

#[test]
fn rotation_steps_overlap_the_two_cas() {
    let validity = Duration::from_secs(300);
    let old = pair(300);
    let new = pair(300);
    let s = Rotation::new(old.clone(), 1000, validity);
    assert_eq!((s.phase, s.serial, s.renew_after), (Phase::Stable, 1, 1200));
    assert_eq!(s.trusted, old.ca_pem);
    // Not due before 2/3 of the validity, unless forced.
    assert_eq!(s.step(1199, true, TTL), None);
    assert_eq!(s.step(1200, false, TTL), Some(Step::Begin));
    let forced = Rotation {
        forced: true,
        ..s.clone()
    };
    assert_eq!(forced.step(1001, true, TTL), Some(Step::Begin));

    // (1) Trust both; still serve the old pair.
    let s = s.advance(Step::Begin, 1200, Some(new.clone()), validity, TTL);
    assert_eq!(
        (s.phase, s.serial, s.renew_after),
        (Phase::TrustingNext, 2, 1400)
    );
    assert_eq!(s.current, old);
    assert_eq!(s.trusted, format!("{}{}", old.ca_pem, new.ca_pem));
    assert!(!s.forced);
    // Not while the caBundle was only just patched (or is behind).
    assert_eq!(s.step(1201, false, TTL), None);
    assert_eq!(s.step(1201, true, TTL), Some(Step::Switch));

    // (2) Serve the new pair; still trust both.
    let mut s = s.advance(Step::Switch, 1201, None, validity, TTL);
    assert_eq!((s.phase, s.serial), (Phase::ServingNext, 2));
    assert_eq!((&s.current, &s.next), (&new, &None));
    assert_eq!(s.trusted, format!("{}{}", old.ca_pem, new.ca_pem));
    // Nobody reported yet: wait.
    assert_eq!(s.step(1202, true, TTL), None);
    s.serving.insert("a".into(), report(&fp(&new), 1202));
    s.serving.insert("b".into(), report(&fp(&old), 1195));
    assert_eq!(
        s.step(1203, true, TTL),
        None,
        "b still serves the old certificate"
    );
    s.serving.insert("b".into(), report(&fp(&new), 1203));
    assert_eq!(s.step(1203, true, TTL), Some(Step::Finish));

    // (3) Trust the new CA alone.
    let s = s.advance(Step::Finish, 1204, None, validity, TTL);
    assert_eq!((s.phase, s.serial), (Phase::Stable, 3));
    assert_eq!(s.trusted, new.ca_pem);
    assert_eq!(s.step(1399, true, TTL), None);
    assert_eq!(s.step(1400, true, TTL), Some(Step::Begin));
}

#[test]
fn a_vanished_replica_holds_the_rotation_back_for_the_ttl_only() {
    let old = pair(300);
    let new = pair(300);
    let s = Rotation::new(old.clone(), 1000, Duration::from_secs(300)).advance(
        Step::Begin,
        1200,
        Some(new.clone()),
        Duration::from_secs(300),
        TTL,
    );
    let mut s = s.advance(Step::Switch, 1201, None, Duration::from_secs(300), TTL);
    s.serving.insert("a".into(), report(&fp(&new), 1210));
    s.serving.insert("gone".into(), report(&fp(&old), 1190));
    assert_eq!(
        s.step(1220, true, TTL),
        None,
        "gone's report is 30 s old: still counts"
    );
    assert_eq!(s.step(1221, true, TTL), Some(Step::Finish));
    let s = s.advance(Step::Finish, 1221, None, Duration::from_secs(300), TTL);
    assert_eq!(
        s.serving.keys().collect::<Vec<_>>(),
        ["a"],
        "stale reports are dropped"
    );
    // Reports are refreshed every third of the TTL, and at once when the certificate changes.
    assert!(!s.report_due("a", &fp(&new), 1219, TTL));
    assert!(s.report_due("a", &fp(&new), 1220, TTL));
    assert!(s.report_due("a", &fp(&old), 1211, TTL));
    assert!(s.report_due("b", &fp(&new), 1211, TTL));
}

#[test]
fn the_secret_round_trips_and_an_old_secret_reads_as_stable_and_due() {
    let old = pair(300);
    let new = pair(300);
    let s = Rotation::new(old.clone(), 1000, Duration::from_secs(300)).advance(
        Step::Begin,
        1200,
        Some(new),
        Duration::from_secs(300),
        TTL,
    );
    let mut with_reports = s.clone();
    with_reports
        .serving
        .insert("trellis-webhook-abc".into(), report("ff", 1200));
    let secret = with_reports.to_secret("trellis-webhook-tls", "trellis-system");
    assert_eq!(Rotation::from_secret(&secret).unwrap(), with_reports);
    let annotations = secret.metadata.annotations.clone().unwrap();
    assert_eq!(annotations[PHASE_ANNOTATION], "trusting-next");
    assert_eq!(
        annotations["serving.trellis.dev/trellis-webhook-abc"],
        "ff 1200"
    );

    // What a Trellis without rotation wrote: ca.crt, tls.crt, tls.key and nothing else.
    let mut legacy = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("trellis-webhook-tls".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    legacy.data = Some(
        [
            (CA_KEY, &old.ca_pem),
            (CERT_KEY, &old.cert_pem),
            (KEY_KEY, &old.key_pem),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect(),
    );
    let r = Rotation::from_secret(&legacy).unwrap();
    assert_eq!((r.phase, r.serial, r.renew_after), (Phase::Stable, 0, 0));
    assert_eq!(r.trusted, old.ca_pem);
    assert_eq!(r.step(5, true, TTL), Some(Step::Begin));
    // A rotation mid-way with its next pair missing is reported, not guessed at.
    let mut broken = s.to_secret("trellis-webhook-tls", "trellis-system");
    broken.data.as_mut().unwrap().remove(NEXT_KEY_KEY);
    let err = Rotation::from_secret(&broken).unwrap_err().to_string();
    assert!(err.contains("next-tls.key"), "{err}");
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
            })
            .patch(|State(f): State<Arc<Fake>>, body: axum::body::Bytes| async move {
                // A merge patch (the replica's serving report).
                let patch: Value = serde_json::from_slice(&body).unwrap();
                let mut s = f.secret.lock().unwrap();
                match s.as_mut() {
                    Some(doc) => {
                        json_patch::merge(doc, &patch);
                        (StatusCode::OK, Json(doc.clone()))
                    }
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
        ca_bundle_patch(&patched, &a.ca_pem, 1),
        None,
        "caBundle now holds the Secret's CA, stamped with its serial"
    );

    // Drift: someone re-applies the manifests and wipes the caBundle; the next round repairs it.
    *fake.mwc.lock().unwrap() = serde_json::to_value(mwc(&[None])).unwrap();
    assert_eq!(
        ensure_ca_bundle(&c2, &cfg, &a.ca_pem, 1).await.unwrap(),
        CaBundle::Patched
    );
    assert_eq!(
        ensure_ca_bundle(&c2, &cfg, &a.ca_pem, 1).await.unwrap(),
        CaBundle::InPlace,
        "no patch when nothing drifted"
    );
    // A replica whose Secret is older than the configuration's serial leaves it alone.
    assert_eq!(
        ensure_ca_bundle(&c2, &cfg, "OLD", 0).await.unwrap(),
        CaBundle::Stale
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
        err.contains("trellis-webhook-tls") && err.contains("tls.key"),
        "{err}"
    );
    assert_eq!(*fake.creates.lock().unwrap(), 0);
}
