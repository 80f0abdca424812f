//! Certificate self-bootstrap, so that `kubectl apply -k manifests/` is the whole install, and CA
//! rotation with overlap, so that the API server never meets a serving certificate it does not trust.
//!
//! If Secret `trellis-webhook-tls` is missing, the webhook makes a CA and a serving certificate for
//! its Service and creates the Secret (create-if-absent: with two replicas, the first create wins and
//! the other adopts it). Every replica writes the Secret's current pair to the files the TLS server
//! serves, and keeps the caBundle of MutatingWebhookConfiguration `trellis-sidecar-injector` equal to
//! the Secret's *trusted* CAs, re-patching whenever it drifts (e.g. re-applied manifests wiped it).
//!
//! # Rotation
//!
//! The API server verifies the webhook with the caBundle it holds at the moment it calls. If a
//! replica swapped its serving pair and then patched the caBundle (or the other way round), every
//! call in between would fail its TLS handshake, and with `failurePolicy: Fail` pod creation with
//! it. So the Secret carries the rotation, and the replicas move it one step at a time:
//!
//! | phase (`trellis.dev/ca-rotation`) | caBundle (`ca-bundle.crt`) | served pair (`tls.crt`) | moves on when |
//! |---|---|---|---|
//! | `stable` | current CA | current | the pair is 2/3 through its validity (`renew-after`), or `trellis.dev/rotate` is set: a new CA and pair are made (`next-*`) |
//! | `trusting-next` | current CA + next CA | current | a replica finds the caBundle already holding both, in a round after the one that patched it |
//! | `serving-next` | old CA + new CA | new (was next) | every replica that reported recently serves the new certificate |
//! | `stable` | new CA | new | … |
//!
//! - Every phase change is a compare-and-swap: a replace carrying the `resourceVersion` the replica
//!   read. Two replicas that decide at once cannot both rotate; the loser gets 409 Conflict and
//!   looks again next round.
//! - Each replica reports the SHA-256 fingerprint of the certificate its TLS server serves (read
//!   from the server itself, not from the files) in an annotation of the Secret,
//!   `serving.trellis.dev/<pod name>: <fingerprint> <unix seconds>`. The Secret because the webhook
//!   may already write it (its own, by name, in RBAC) and no other object or verb is needed; a
//!   report is a merge patch with the `resourceVersion` precondition too, so it always describes the
//!   version it read. A replica refreshes its report every `--serving-report-ttl`/3; a report older
//!   than the TTL (a replica that went away) no longer counts, so a vanished replica delays the last
//!   step by at most the TTL, and it is dropped at the next phase change.
//! - The caBundle is patched with a JSON patch that `test`s the configuration's `resourceVersion`
//!   and stamps `trellis.dev/ca-bundle-serial`, a number that grows with every caBundle change. A
//!   replica whose Secret is older than the serial it finds leaves the caBundle alone, so a slow
//!   replica cannot put an old bundle back behind a rotation.
//! - A Secret from a Trellis without rotation (no `renew-after`) is rotated once, with overlap.
//!
//! The waiting between the steps is what makes it safe: the new CA is trusted before any replica
//! serves its certificate, and the old CA is trusted until no replica serves the old certificate.
//! What only a real cluster shows is how long the API server takes to pick up a caBundle change; a
//! round (`--bootstrap-interval`) passes between patching and switching, seconds at least.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

use crate::tls::{pem_fingerprint, ReloadingCert};

/// The CA that signed the served pair.
pub const CA_KEY: &str = "ca.crt";
pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";
/// Every CA the caBundle must hold (PEM, concatenated): `ca.crt`, plus the other CA mid-rotation.
pub const TRUSTED_KEY: &str = "ca-bundle.crt";
/// The next CA and pair, made at the start of a rotation and served once the caBundle trusts it.
pub const NEXT_CA_KEY: &str = "next-ca.crt";
pub const NEXT_CERT_KEY: &str = "next-tls.crt";
pub const NEXT_KEY_KEY: &str = "next-tls.key";
/// The Secret's rotation phase: `stable`, `trusting-next` or `serving-next`.
pub const PHASE_ANNOTATION: &str = "trellis.dev/ca-rotation";
/// Grows with every change of the trusted CAs; also stamped on the MutatingWebhookConfiguration.
pub const SERIAL_ANNOTATION: &str = "trellis.dev/ca-bundle-serial";
/// Unix seconds after which the current pair is renewed (2/3 of its validity).
pub const RENEW_AFTER_ANNOTATION: &str = "trellis.dev/renew-after";
/// Set (any value) to rotate now: `kubectl annotate secret … trellis.dev/rotate=now`.
pub const ROTATE_ANNOTATION: &str = "trellis.dev/rotate";
/// `serving.trellis.dev/<pod>: <sha256 hex> <unix seconds>`: what each replica serves.
pub const SERVING_PREFIX: &str = "serving.trellis.dev/";

#[derive(Debug, Clone, clap::Args)]
pub struct BootstrapConfig {
    /// Create the serving certificate Secret if missing, keep the webhook's caBundle patched, and
    /// rotate the CA with overlap before the certificate expires.
    #[arg(long, env = "TRELLIS_BOOTSTRAP_CERTS")]
    pub bootstrap_certs: bool,
    /// Namespace the webhook runs in.
    #[arg(long, env = "TRELLIS_NAMESPACE", default_value = "trellis-system")]
    pub namespace: String,
    /// Secret holding ca.crt, tls.crt and tls.key (and the rotation's state).
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
    /// How often the Secret and the caBundle are checked again (one rotation step per round at most).
    #[arg(long, env = "TRELLIS_BOOTSTRAP_INTERVAL", default_value = "60s", value_parser = config::parse::parse_duration)]
    pub bootstrap_interval: Duration,
    /// Validity of a generated CA and serving certificate; a new pair is rolled out after 2/3 of it.
    #[arg(long, env = "TRELLIS_CERT_VALIDITY", default_value = "8760h", value_parser = config::parse::parse_duration)]
    pub cert_validity: Duration,
    /// A replica's report of the certificate it serves counts this long (refreshed every third of
    /// it); a replica gone for longer no longer holds back the end of a rotation. Keep it at least
    /// three bootstrap intervals.
    #[arg(long, env = "TRELLIS_SERVING_REPORT_TTL", default_value = "300s", value_parser = config::parse::parse_duration)]
    pub serving_report_ttl: Duration,
    /// This replica's name in its serving report (the downward API's metadata.name); default: $HOSTNAME.
    #[arg(long, env = "TRELLIS_POD_NAME")]
    pub pod_name: Option<String>,
}

impl Default for BootstrapConfig {
    /// The flags' own defaults (bootstrap off), read from the clap attributes.
    fn default() -> Self {
        config::args::clap_defaults()
    }
}

impl BootstrapConfig {
    /// The name this replica reports under: `--pod-name`, else the host name (a pod's name).
    pub fn reporter(&self) -> String {
        let name = self
            .pod_name
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "webhook".into());
        // An annotation name is at most 63 characters.
        name.chars().take(63).collect()
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

/// The default validity of a generated pair (one year; renewed after eight months).
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Makes a fresh CA and a serving certificate for `dns` signed by it, valid [`DEFAULT_VALIDITY`].
pub fn generate(dns: &[String]) -> Result<CertBundle, rcgen::Error> {
    generate_valid_for(dns, DEFAULT_VALIDITY)
}

/// Makes a fresh CA and a serving certificate for `dns` signed by it, both valid from an hour ago
/// (clock skew) until `validity` from now. Each rotation makes a new CA, so the CA needs no longer life.
pub fn generate_valid_for(dns: &[String], validity: Duration) -> Result<CertBundle, rcgen::Error> {
    let now = time::OffsetDateTime::now_utc();
    let not_after = now + validity;
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
    ca.not_after = not_after;
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
    params.not_after = not_after;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertBundle {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Where a rotation stands (annotation [`PHASE_ANNOTATION`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The caBundle trusts the current CA only.
    Stable,
    /// The caBundle is being given the next CA; the current pair is still served.
    TrustingNext,
    /// The new pair is served; the caBundle keeps the old CA until every replica serves the new one.
    ServingNext,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Stable => "stable",
            Phase::TrustingNext => "trusting-next",
            Phase::ServingNext => "serving-next",
        }
    }

    fn parse(s: &str) -> Option<Phase> {
        [Phase::Stable, Phase::TrustingNext, Phase::ServingNext]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

/// What a replica last said it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub fingerprint: String,
    /// Unix seconds.
    pub at: u64,
}

/// The rotation state kept in the Secret: what it serves, what the caBundle trusts, and the reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub phase: Phase,
    pub current: CertBundle,
    /// Present in [`Phase::TrustingNext`] only.
    pub next: Option<CertBundle>,
    /// The caBundle, PEM: the current CA, plus the other one mid-rotation.
    pub trusted: String,
    pub serial: u64,
    /// Unix seconds; 0 when unknown (a Secret from before rotation), which means due now.
    pub renew_after: u64,
    /// [`ROTATE_ANNOTATION`] is set.
    pub forced: bool,
    /// Keyed by pod name.
    pub serving: BTreeMap<String, Report>,
}

/// One step of a rotation, decided by [`Rotation::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Stable and due: make the next pair and trust its CA next to the current one.
    Begin,
    /// The caBundle trusts both CAs: serve the next pair.
    Switch,
    /// Every live replica serves the new pair: trust its CA alone.
    Finish,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("Secret {secret} lacks {key} (it needs {CA_KEY}, {CERT_KEY} and {KEY_KEY}): delete it to have it re-created")]
    Missing { secret: String, key: &'static str },
    #[error("Secret {secret}: annotation {PHASE_ANNOTATION} is {value:?} (expected stable, trusting-next or serving-next)")]
    BadPhase { secret: String, value: String },
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Rotation {
    /// A fresh Secret's state: stable, serial 1, renewed after 2/3 of `validity` from `now`.
    pub fn new(current: CertBundle, now: u64, validity: Duration) -> Rotation {
        Rotation {
            phase: Phase::Stable,
            trusted: current.ca_pem.clone(),
            current,
            next: None,
            serial: 1,
            renew_after: renew_after(now, validity),
            forced: false,
            serving: BTreeMap::new(),
        }
    }

    /// Reads the state from a Secret; a Secret written before rotation existed reads as stable,
    /// trusting its `ca.crt`, serial 0 and due.
    pub fn from_secret(secret: &Secret) -> Result<Rotation, SecretError> {
        let name = match &secret.metadata.namespace {
            Some(ns) => format!(
                "{ns}/{}",
                secret.metadata.name.as_deref().unwrap_or_default()
            ),
            None => secret.metadata.name.clone().unwrap_or_default(),
        };
        let empty = BTreeMap::new();
        let data = secret.data.as_ref().unwrap_or(&empty);
        let get = |k: &str| {
            data.get(k)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
        };
        let need = |k: &'static str| {
            get(k).ok_or_else(|| SecretError::Missing {
                secret: name.clone(),
                key: k,
            })
        };
        let current = CertBundle {
            ca_pem: need(CA_KEY)?,
            cert_pem: need(CERT_KEY)?,
            key_pem: need(KEY_KEY)?,
        };
        let annotations = secret.metadata.annotations.clone().unwrap_or_default();
        let phase = match annotations.get(PHASE_ANNOTATION) {
            None => Phase::Stable,
            Some(v) => Phase::parse(v).ok_or_else(|| SecretError::BadPhase {
                secret: name.clone(),
                value: v.clone(),
            })?,
        };
        let next = if phase == Phase::TrustingNext {
            Some(CertBundle {
                ca_pem: need(NEXT_CA_KEY)?,
                cert_pem: need(NEXT_CERT_KEY)?,
                key_pem: need(NEXT_KEY_KEY)?,
            })
        } else {
            None
        };
        let number = |k: &str| {
            annotations
                .get(k)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let serving = annotations
            .iter()
            .filter_map(|(k, v)| {
                let pod = k.strip_prefix(SERVING_PREFIX)?;
                let (fp, at) = v.split_once(' ')?;
                Some((
                    pod.to_string(),
                    Report {
                        fingerprint: fp.to_string(),
                        at: at.trim().parse().ok()?,
                    },
                ))
            })
            .collect();
        Ok(Rotation {
            phase,
            trusted: get(TRUSTED_KEY).unwrap_or_else(|| current.ca_pem.clone()),
            current,
            next,
            serial: number(SERIAL_ANNOTATION),
            renew_after: number(RENEW_AFTER_ANNOTATION),
            forced: annotations.contains_key(ROTATE_ANNOTATION),
            serving,
        })
    }

    /// Writes the state into `secret`, keeping its other metadata (and its resourceVersion, which
    /// makes a replace of it a compare-and-swap).
    pub fn write_into(&self, secret: &mut Secret) {
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        let mut put = |k: &str, v: Option<&String>| match v {
            Some(v) => {
                data.insert(k.to_string(), ByteString(v.as_bytes().to_vec()));
            }
            None => {
                data.remove(k);
            }
        };
        put(CA_KEY, Some(&self.current.ca_pem));
        put(CERT_KEY, Some(&self.current.cert_pem));
        put(KEY_KEY, Some(&self.current.key_pem));
        put(TRUSTED_KEY, Some(&self.trusted));
        put(NEXT_CA_KEY, self.next.as_ref().map(|n| &n.ca_pem));
        put(NEXT_CERT_KEY, self.next.as_ref().map(|n| &n.cert_pem));
        put(NEXT_KEY_KEY, self.next.as_ref().map(|n| &n.key_pem));
        let annotations = secret
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new);
        annotations.retain(|k, _| !k.starts_with(SERVING_PREFIX) && k != ROTATE_ANNOTATION);
        annotations.insert(PHASE_ANNOTATION.into(), self.phase.as_str().into());
        annotations.insert(SERIAL_ANNOTATION.into(), self.serial.to_string());
        annotations.insert(RENEW_AFTER_ANNOTATION.into(), self.renew_after.to_string());
        if self.forced {
            annotations.insert(ROTATE_ANNOTATION.into(), "true".into());
        }
        for (pod, r) in &self.serving {
            annotations.insert(
                format!("{SERVING_PREFIX}{pod}"),
                format!("{} {}", r.fingerprint, r.at),
            );
        }
    }

    fn to_secret(&self, name: &str, namespace: &str) -> Secret {
        let mut secret = Secret {
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
            ..Default::default()
        };
        self.write_into(&mut secret);
        secret
    }

    /// Whether `pod` must (re)write its report: it says something else, or a third of the TTL passed.
    pub fn report_due(&self, pod: &str, fingerprint: &str, now: u64, ttl: Duration) -> bool {
        match self.serving.get(pod) {
            Some(r) => {
                r.fingerprint != fingerprint
                    || now.saturating_sub(r.at).saturating_mul(3) >= ttl.as_secs()
            }
            None => true,
        }
    }

    /// The next step, if one is due. `ca_bundle_in_place`: the caBundle already equalled
    /// [`Rotation::trusted`] when this round read it (no patch was needed), so the API server has
    /// had at least a round to learn it.
    pub fn step(&self, now: u64, ca_bundle_in_place: bool, ttl: Duration) -> Option<Step> {
        match self.phase {
            Phase::Stable => (self.forced || now >= self.renew_after).then_some(Step::Begin),
            Phase::TrustingNext => ca_bundle_in_place.then_some(Step::Switch),
            Phase::ServingNext => {
                let want = pem_fingerprint(&self.current.cert_pem)?;
                let mut live = self.live_reports(now, ttl).peekable();
                live.peek()?;
                live.all(|r| r.fingerprint == want).then_some(Step::Finish)
            }
        }
    }

    fn live_reports(&self, now: u64, ttl: Duration) -> impl Iterator<Item = &Report> {
        self.serving
            .values()
            .filter(move |r| r.at.saturating_add(ttl.as_secs()) >= now)
    }

    /// The state after `step` (pure: the caller makes `next` for [`Step::Begin`]). Reports older
    /// than the TTL are dropped.
    pub fn advance(
        mut self,
        step: Step,
        now: u64,
        next: Option<CertBundle>,
        validity: Duration,
        ttl: Duration,
    ) -> Rotation {
        self.serving
            .retain(|_, r| r.at.saturating_add(ttl.as_secs()) >= now);
        match step {
            Step::Begin => {
                let next = next.expect("Step::Begin needs the next pair");
                self.trusted = format!("{}{}", ensure_newline(&self.current.ca_pem), next.ca_pem);
                self.next = Some(next);
                self.phase = Phase::TrustingNext;
                self.serial += 1;
                self.forced = false;
                // The new pair's clock starts now.
                self.renew_after = renew_after(now, validity);
            }
            Step::Switch => {
                if let Some(next) = self.next.take() {
                    self.current = next;
                }
                self.phase = Phase::ServingNext;
            }
            Step::Finish => {
                self.trusted = self.current.ca_pem.clone();
                self.phase = Phase::Stable;
                self.serial += 1;
            }
        }
        self
    }
}

fn ensure_newline(pem: &str) -> String {
    if pem.ends_with('\n') {
        pem.to_string()
    } else {
        format!("{pem}\n")
    }
}

fn renew_after(now: u64, validity: Duration) -> u64 {
    now.saturating_add(validity.as_secs().saturating_mul(2) / 3)
}

/// The serial stamped on a MutatingWebhookConfiguration (0 when absent).
pub fn ca_bundle_serial(mwc: &MutatingWebhookConfiguration) -> u64 {
    mwc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SERIAL_ANNOTATION))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The JSON patch that sets every webhook's caBundle to `trusted` and stamps `serial`, or `None`
/// when all already match. It `test`s the configuration's resourceVersion (and each entry's name),
/// so a concurrent edit fails the patch instead of being overwritten.
pub fn ca_bundle_patch(
    mwc: &MutatingWebhookConfiguration,
    trusted: &str,
    serial: u64,
) -> Option<json_patch::Patch> {
    let webhooks = mwc.webhooks.as_deref().unwrap_or_default();
    let want = trusted.as_bytes();
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
    if ops.is_empty() && ca_bundle_serial(mwc) == serial {
        return None;
    }
    if mwc.metadata.annotations.is_some() {
        ops.push(json!({
            "op": "add",
            "path": format!("/metadata/annotations/{}", SERIAL_ANNOTATION.replace('~', "~0").replace('/', "~1")),
            "value": serial.to_string(),
        }));
    } else {
        ops.push(json!({
            "op": "add",
            "path": "/metadata/annotations",
            "value": { SERIAL_ANNOTATION: serial.to_string() },
        }));
    }
    if let Some(rv) = &mwc.metadata.resource_version {
        ops.insert(
            0,
            json!({ "op": "test", "path": "/metadata/resourceVersion", "value": rv }),
        );
    }
    Some(serde_json::from_value(Value::Array(ops)).expect("well-formed patch"))
}

/// The outcome of [`ensure_ca_bundle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaBundle {
    /// It already held exactly the trusted CAs.
    InPlace,
    /// It was patched now.
    Patched,
    /// The configuration carries a newer serial than this replica's Secret: left alone.
    Stale,
    /// Another writer changed the configuration between the read and the patch; next round again.
    Raced,
}

/// Gets the Secret, creating it first if it does not exist; a lost create race adopts the winner's.
pub async fn ensure_secret(
    client: &kube::Client,
    cfg: &BootstrapConfig,
) -> anyhow::Result<CertBundle> {
    let secret = get_or_create_secret(client, cfg).await?;
    Ok(Rotation::from_secret(&secret)?.current)
}

async fn get_or_create_secret(
    client: &kube::Client,
    cfg: &BootstrapConfig,
) -> anyhow::Result<Secret> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    if let Some(existing) = secrets.get_opt(&cfg.tls_secret).await? {
        return Ok(existing);
    }
    let bundle = generate_valid_for(&dns_names(&cfg.service, &cfg.namespace), cfg.cert_validity)?;
    let fresh = Rotation::new(bundle, unix_now(), cfg.cert_validity);
    match secrets
        .create(
            &PostParams::default(),
            &fresh.to_secret(&cfg.tls_secret, &cfg.namespace),
        )
        .await
    {
        Ok(created) => {
            tracing::info!(secret = %cfg.tls_secret, "created the serving certificate Secret");
            Ok(created)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(secrets.get(&cfg.tls_secret).await?),
        Err(e) => Err(e.into()),
    }
}

/// Patches the MutatingWebhookConfiguration's caBundle to `trusted` (PEM) if it differs, unless
/// it carries a serial newer than `serial`.
pub async fn ensure_ca_bundle(
    client: &kube::Client,
    cfg: &BootstrapConfig,
    trusted: &str,
    serial: u64,
) -> anyhow::Result<CaBundle> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mwc = api.get(&cfg.webhook_configuration).await?;
    if ca_bundle_serial(&mwc) > serial {
        return Ok(CaBundle::Stale);
    }
    let Some(patch) = ca_bundle_patch(&mwc, trusted, serial) else {
        return Ok(CaBundle::InPlace);
    };
    match api
        .patch(
            &cfg.webhook_configuration,
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => {}
        // A `test` failed (422) or a conflict (409): someone wrote between the read and the patch.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 422 => {
            tracing::debug!("caBundle changed under the patch: {}", e.message);
            return Ok(CaBundle::Raced);
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(configuration = %cfg.webhook_configuration, serial, "caBundle patched");
    Ok(CaBundle::Patched)
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

/// One replica's bootstrap: where it writes its pair, and (once serving) the certificate it serves.
#[derive(Clone)]
pub struct Replica {
    pub client: kube::Client,
    pub cfg: BootstrapConfig,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The TLS server's certificate: reloaded right after the files change, and the source of
    /// the fingerprint this replica reports. Without it (before the server starts) the files'
    /// certificate is reported, which the server loads at start.
    pub served: Option<Arc<ReloadingCert>>,
}

impl Replica {
    /// One round: Secret → files → report → caBundle → at most one rotation step, and if a step
    /// was taken, the same again with the new state (so its files and caBundle follow at once).
    pub async fn reconcile(&self) -> anyhow::Result<()> {
        let cfg = &self.cfg;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &cfg.namespace);
        let pod = cfg.reporter();
        let mut secret = get_or_create_secret(&self.client, cfg).await?;
        for _ in 0..4 {
            let mut rotation = Rotation::from_secret(&secret)?;
            write_files(&rotation.current, &self.cert, &self.key)?;
            let fingerprint = match &self.served {
                Some(served) => {
                    if let Err(e) = served.reload() {
                        tracing::warn!("keeping the current serving certificate: {e}");
                    }
                    served.fingerprint()
                }
                None => pem_fingerprint(&rotation.current.cert_pem).unwrap_or_default(),
            };
            let now = unix_now();
            if rotation.report_due(&pod, &fingerprint, now, cfg.serving_report_ttl) {
                // Conditional on the version read: a report always describes that version.
                let patch = json!({ "metadata": {
                    "resourceVersion": secret.metadata.resource_version,
                    "annotations": { format!("{SERVING_PREFIX}{pod}"): format!("{fingerprint} {now}") },
                }});
                match secrets
                    .patch(
                        &cfg.tls_secret,
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    Ok(s) => secret = s,
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        secret = secrets.get(&cfg.tls_secret).await?;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
                rotation = Rotation::from_secret(&secret)?;
            }
            let ca_bundle =
                ensure_ca_bundle(&self.client, cfg, &rotation.trusted, rotation.serial).await?;
            if matches!(ca_bundle, CaBundle::Stale | CaBundle::Raced) {
                return Ok(());
            }
            let Some(step) =
                rotation.step(now, ca_bundle == CaBundle::InPlace, cfg.serving_report_ttl)
            else {
                return Ok(());
            };
            let next = match step {
                Step::Begin => Some(generate_valid_for(
                    &dns_names(&cfg.service, &cfg.namespace),
                    cfg.cert_validity,
                )?),
                _ => None,
            };
            let advanced =
                rotation.advance(step, now, next, cfg.cert_validity, cfg.serving_report_ttl);
            let mut updated = secret.clone();
            advanced.write_into(&mut updated);
            // A replace carrying the resourceVersion read: compare-and-swap.
            match secrets
                .replace(&cfg.tls_secret, &PostParams::default(), &updated)
                .await
            {
                Ok(s) => {
                    tracing::info!(
                        secret = %cfg.tls_secret,
                        ?step,
                        phase = advanced.phase.as_str(),
                        serial = advanced.serial,
                        "CA rotation moved on"
                    );
                    secret = s;
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    tracing::debug!(?step, "another replica changed the Secret first");
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Runs [`Replica::reconcile`] every `bootstrap_interval`, for as long as the task lives.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(self.cfg.bootstrap_interval).await;
                if let Err(e) = self.reconcile().await {
                    tracing::warn!("certificate reconcile failed: {e:#}");
                }
            }
        })
    }
}

/// One round for a replica that is not serving yet (see [`Replica::reconcile`]).
pub async fn reconcile(
    client: &kube::Client,
    cfg: &BootstrapConfig,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<()> {
    Replica {
        client: client.clone(),
        cfg: cfg.clone(),
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        served: None,
    }
    .reconcile()
    .await
}

/// Runs [`reconcile`] until it first succeeds (retrying with backoff), so the files exist before
/// the server starts. Then start the rounds with [`Replica::spawn`], giving it the served certificate.
pub async fn run_until_first_success(
    client: &kube::Client,
    cfg: &BootstrapConfig,
    cert: &Path,
    key: &Path,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        match reconcile(client, cfg, cert, key).await {
            Ok(()) => break,
            Err(e) => {
                tracing::error!("certificate bootstrap failed (retrying in {backoff:?}): {e:#}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests;
