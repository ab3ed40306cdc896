//! TLS to backends: one rustls client configuration per upstream, trusting either a given CA
//! file or the system's roots, and checking the configured server name.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;

use super::CertError;

/// Builds the client configuration for an upstream's `tls = { … }`.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, CertError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in super::certs::load_certs(path)? {
                roots.add(cert).map_err(|e| CertError::Parse {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
        }
    }
    Ok(client_config_with_roots(roots))
}

/// A client configuration trusting exactly `roots`.
pub fn client_config_with_roots(roots: RootCertStore) -> Arc<rustls::ClientConfig> {
    let config = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(super::VERSIONS)
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}
