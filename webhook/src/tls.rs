//! The serving certificate, re-read from disk when it changes (a rotated Secret), with no restart
//! and no dropped connections: established connections keep their session, new handshakes get the
//! new certificate. A file that fails to parse is logged and the previous certificate kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found (expected a file starting with -----BEGIN CERTIFICATE-----)")]
    NoCert { path: PathBuf },
    #[error("{path}: no usable PEM private key found: {detail}")]
    BadKey { path: PathBuf, detail: String },
}

/// Certificate and key, watched on disk.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    state: RwLock<(Vec<u8>, Arc<CertifiedKey>)>,
}

impl ReloadingCert {
    /// Loads the pair now; fails if it cannot be used (at start-up there is nothing to fall back on).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let (raw, key) = read_pair(cert_path, key_path)?;
        Ok(Arc::new(ReloadingCert {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            state: RwLock::new((raw, key)),
        }))
    }

    /// Re-reads the files; swaps in the new pair if it changed and is valid. Returns whether it swapped.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (raw, key) = read_pair(&self.cert_path, &self.key_path)?;
        let mut state = self.state.write().expect("not poisoned");
        if state.0 == raw {
            return Ok(false);
        }
        *state = (raw, key);
        Ok(true)
    }

    /// Polls the files every `interval` for the life of the process.
    pub fn watch(self: &Arc<Self>, interval: Duration) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match me.reload() {
                    Ok(true) => {
                        tracing::info!(cert = %me.cert_path.display(), "serving certificate reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!("keeping the current serving certificate: {e}"),
                }
            }
        });
    }

    /// The SHA-256 fingerprint (lowercase hex) of the leaf certificate served right now: what this
    /// replica reports during a CA rotation (see [`crate::bootstrap`]).
    pub fn fingerprint(&self) -> String {
        let state = self.state.read().expect("not poisoned");
        fingerprint(state.1.cert.first().map_or(&[][..], |c| c.as_ref()))
    }

    pub fn server_config(self: &Arc<Self>) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.state.read().expect("not poisoned").1))
    }
}

fn read_pair(cert_path: &Path, key_path: &Path) -> Result<(Vec<u8>, Arc<CertifiedKey>), TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            path: cert_path.to_owned(),
        });
    }
    let bad_key = |detail: String| TlsError::BadKey {
        path: key_path.to_owned(),
        detail,
    };
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad_key(e.to_string()))?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| bad_key(e.to_string()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|e| bad_key(format!("the key does not match the certificate: {e}")))?;
    let mut raw = cert_pem;
    raw.extend_from_slice(&key_pem);
    Ok((raw, Arc::new(certified)))
}

/// SHA-256 of a DER certificate, lowercase hex (as `openssl x509 -fingerprint -sha256`, without colons).
pub fn fingerprint(der: &[u8]) -> String {
    // rustls keeps ring's hash module private; a TLS 1.3 suite's hash provider is the same SHA-256.
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let hash = suite
        .tls13()
        .expect("a TLS 1.3 suite")
        .common
        .hash_provider
        .hash(der);
    hash.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The fingerprint of the first certificate in a PEM text, if there is one.
pub fn pem_fingerprint(pem: &str) -> Option<String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .find_map(Result::ok)
        .map(|c| fingerprint(c.as_ref()))
}
