//! The certificate bootstrap against an API server (the test kit's double, over HTTP, with the
//! real kube client): two replicas starting at once end up with one Secret, the same serving pair
//! on disk, and the MutatingWebhookConfiguration's caBundle patched once.

mod support;

use base64::Engine as _;
use support::{MWCS, SECRETS};
use webhook::bootstrap::{self, BootstrapConfig};

fn config() -> BootstrapConfig {
    BootstrapConfig {
        bootstrap_certs: true,
        ..BootstrapConfig::default()
    }
}

#[tokio::test]
async fn two_replicas_agree_on_one_secret_and_patch_the_ca_bundle() {
    let api = support::api_with_webhook_configuration();

    let client = api.client();
    let cfg = config();
    let dir = std::env::temp_dir().join(kit::netns::unique_name("bootstrap"));
    let files = |n: u8| {
        (
            dir.join(format!("{n}/tls.crt")),
            dir.join(format!("{n}/tls.key")),
        )
    };
    let ((c1, k1), (c2, k2)) = (files(1), files(2));
    let (a, b) = tokio::join!(
        bootstrap::reconcile(&client, &cfg, &c1, &k1),
        bootstrap::reconcile(&client, &cfg, &c2, &k2),
    );
    a.unwrap();
    b.unwrap();

    // One Secret; both replicas serve its pair.
    let secret = api
        .object(&SECRETS.gvr, "trellis-system", "trellis-webhook-tls")
        .expect("the Secret was created");
    let field = |k: &str| {
        let b64 = secret["data"][k]
            .as_str()
            .unwrap_or_else(|| panic!("no {k}"));
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
        .unwrap()
    };
    for (cert, key) in [(&c1, &k1), (&c2, &k2)] {
        assert_eq!(std::fs::read_to_string(cert).unwrap(), field("tls.crt"));
        assert_eq!(std::fs::read_to_string(key).unwrap(), field("tls.key"));
    }
    // The caBundle is the Secret's CA.
    let mwc = api
        .object(&MWCS.gvr, "", "trellis-sidecar-injector")
        .unwrap();
    let bundle = mwc["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(bundle)
            .unwrap(),
        field("ca.crt").into_bytes()
    );
    // In step already: the next round patches nothing.
    let ca = field("ca.crt");
    assert_eq!(
        field("ca-bundle.crt"),
        ca,
        "stable: the caBundle trusts ca.crt alone"
    );
    assert_eq!(
        secret["metadata"]["annotations"]["trellis.dev/ca-rotation"],
        "stable"
    );
    assert_eq!(
        mwc["metadata"]["annotations"]["trellis.dev/ca-bundle-serial"],
        "1"
    );
    assert_eq!(
        bootstrap::ensure_ca_bundle(&client, &cfg, &ca, 1)
            .await
            .unwrap(),
        bootstrap::CaBundle::InPlace
    );
    let _ = std::fs::remove_dir_all(&dir);
}
