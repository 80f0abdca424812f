//! Certificate self-bootstrap, so that `kubectl apply -k manifests/` is the whole install.
//!
//! If Secret `trellis-webhook-tls` is missing, the webhook makes a CA and a serving certificate for
//! its Service and creates the Secret (create-if-absent: with two replicas, the first create wins and
//! the other adopts it). It writes the pair to the files the TLS server watches, and keeps the
//! caBundle of MutatingWebhookConfiguration `trellis-sidecar-injector` equal to the Secret's CA,
//! re-patching whenever it drifts (e.g. re-applied manifests wiped it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{json, Value};

pub const CA_KEY: &str = "ca.crt";
pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";

#[derive(Debug, Clone, clap::Args)]
pub struct BootstrapConfig {
    /// Create the serving certificate Secret if missing and keep the webhook's caBundle patched.
    #[arg(long, env = "TRELLIS_BOOTSTRAP_CERTS")]
    pub bootstrap_certs: bool,
    /// Namespace the webhook runs in.
    #[arg(long, env = "TRELLIS_NAMESPACE", default_value = "trellis-system")]
    pub namespace: String,
    /// Secret holding ca.crt, tls.crt and tls.key.
    #[arg(
        long,
        env = "TRELLIS_TLS_SECRET",
        default_value = "trellis-webhook-tls"
    )]
    pub tls_secret: String,
    /// Service the API server calls; the certificate is issued for <service>.<namespace>.svc.
    #[arg(long, env = "TRELLIS_SERVICE", default_value = "trellis-webhook")]
    pub service: String,
    /// MutatingWebhookConfiguration whose caBundle is kept in step.
    #[arg(
        long,
        env = "TRELLIS_WEBHOOK_CONFIGURATION",
        default_value = "trellis-sidecar-injector"
    )]
    pub webhook_configuration: String,
    /// How often the Secret and the caBundle are checked again.
    #[arg(long, env = "TRELLIS_BOOTSTRAP_INTERVAL", default_value = "60s", value_parser = config::parse::parse_duration)]
    pub bootstrap_interval: Duration,
}

impl Default for BootstrapConfig {
    /// The flags' own defaults (bootstrap off), read from the clap attributes.
    fn default() -> Self {
        config::args::clap_defaults()
    }
}

/// A CA and the serving certificate it signed, PEM-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertBundle {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// The DNS names the API server may use for the webhook's Service.
pub fn dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

/// Makes a fresh CA (10 years) and a serving certificate for `dns` (5 years) signed by it.
pub fn generate(dns: &[String]) -> Result<CertBundle, rcgen::Error> {
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "trellis-webhook-ca");
    ca.distinguished_name
        .push(DnType::OrganizationName, "trellis");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + time::Duration::days(3650);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(dns.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, dns.first().cloned().unwrap_or_default());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(5 * 365);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertBundle {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

impl CertBundle {
    fn from_secret(secret: &Secret) -> Option<CertBundle> {
        let data = secret.data.as_ref()?;
        let get = |k: &str| {
            data.get(k)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
        };
        Some(CertBundle {
            ca_pem: get(CA_KEY)?,
            cert_pem: get(CERT_KEY)?,
            key_pem: get(KEY_KEY)?,
        })
    }

    fn to_secret(&self, name: &str, namespace: &str) -> Secret {
        let data: BTreeMap<String, ByteString> = [
            (CA_KEY, &self.ca_pem),
            (CERT_KEY, &self.cert_pem),
            (KEY_KEY, &self.key_pem),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                labels: Some(
                    [(
                        "app.kubernetes.io/part-of".to_string(),
                        "trellis".to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(data),
            ..Default::default()
        }
    }
}

/// The JSON patch that sets every webhook's caBundle to `ca_pem`, or `None` when all already match.
/// Each replace is guarded by a `test` of the array length, so a concurrent edit fails the patch
/// instead of writing to the wrong entry.
pub fn ca_bundle_patch(
    mwc: &MutatingWebhookConfiguration,
    ca_pem: &str,
) -> Option<json_patch::Patch> {
    let webhooks = mwc.webhooks.as_deref().unwrap_or_default();
    let want = ca_pem.as_bytes();
    let mut ops = Vec::new();
    for (i, wh) in webhooks.iter().enumerate() {
        if wh.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(want) {
            ops.push(
                json!({ "op": "test", "path": format!("/webhooks/{i}/name"), "value": wh.name }),
            );
            ops.push(json!({
                "op": "add",
                "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                "value": base64::engine::general_purpose::STANDARD.encode(want),
            }));
        }
    }
    (!ops.is_empty()).then(|| serde_json::from_value(Value::Array(ops)).expect("well-formed patch"))
}

/// Gets the Secret, creating it first if it does not exist; a lost create race adopts the winner's.
pub async fn ensure_secret(
    client: &kube::Client,
    cfg: &BootstrapConfig,
) -> anyhow::Result<CertBundle> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    if let Some(existing) = secrets.get_opt(&cfg.tls_secret).await? {
        return CertBundle::from_secret(&existing).ok_or_else(|| {
            anyhow::anyhow!(
                "Secret {}/{} lacks {CA_KEY}, {CERT_KEY} or {KEY_KEY}: delete it to have it re-created",
                cfg.namespace,
                cfg.tls_secret
            )
        });
    }
    let bundle = generate(&dns_names(&cfg.service, &cfg.namespace))?;
    match secrets
        .create(
            &PostParams::default(),
            &bundle.to_secret(&cfg.tls_secret, &cfg.namespace),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(secret = %cfg.tls_secret, "created the serving certificate Secret");
            Ok(bundle)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let winner = secrets.get(&cfg.tls_secret).await?;
            CertBundle::from_secret(&winner)
                .ok_or_else(|| anyhow::anyhow!("Secret {} is incomplete", cfg.tls_secret))
        }
        Err(e) => Err(e.into()),
    }
}

/// Patches the MutatingWebhookConfiguration's caBundle if it differs; returns whether it patched.
pub async fn ensure_ca_bundle(
    client: &kube::Client,
    cfg: &BootstrapConfig,
    ca_pem: &str,
) -> anyhow::Result<bool> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mwc = api.get(&cfg.webhook_configuration).await?;
    let Some(patch) = ca_bundle_patch(&mwc, ca_pem) else {
        return Ok(false);
    };
    api.patch(
        &cfg.webhook_configuration,
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await?;
    tracing::info!(configuration = %cfg.webhook_configuration, "caBundle patched");
    Ok(true)
}

/// Writes the serving pair where the TLS server reads it (only when it changed).
pub fn write_files(bundle: &CertBundle, cert: &PathBuf, key: &PathBuf) -> std::io::Result<()> {
    for (path, pem) in [(key, &bundle.key_pem), (cert, &bundle.cert_pem)] {
        if std::fs::read_to_string(path).ok().as_deref() != Some(pem.as_str()) {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // Write then rename, so the watcher never reads half a file.
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, pem)?;
            std::fs::rename(&tmp, path)?;
        }
    }
    Ok(())
}

/// One round: Secret → files → caBundle.
pub async fn reconcile(
    client: &kube::Client,
    cfg: &BootstrapConfig,
    cert: &PathBuf,
    key: &PathBuf,
) -> anyhow::Result<()> {
    let bundle = ensure_secret(client, cfg).await?;
    write_files(&bundle, cert, key)?;
    ensure_ca_bundle(client, cfg, &bundle.ca_pem).await?;
    Ok(())
}

/// Runs [`reconcile`] until it first succeeds (retrying with backoff), then every interval forever.
pub async fn run_until_first_success(
    client: kube::Client,
    cfg: BootstrapConfig,
    cert: PathBuf,
    key: PathBuf,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        match reconcile(&client, &cfg, &cert, &key).await {
            Ok(()) => break,
            Err(e) => {
                tracing::error!("certificate bootstrap failed (retrying in {backoff:?}): {e:#}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(cfg.bootstrap_interval).await;
            if let Err(e) = reconcile(&client, &cfg, &cert, &key).await {
                tracing::warn!("certificate reconcile failed: {e:#}");
            }
        }
    });
}

#[cfg(test)]
mod tests;
