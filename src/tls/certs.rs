//! Loading certificate chains and keys from PEM files, with errors that name the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// What the leaf certificate says about itself: for `switchboard check`, SNI defaults and the
/// expiry metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// DNS names from the subjectAltName extension (lower case).
    pub names: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub not_after: i64,
    /// Expiry as text, for people.
    pub not_after_text: String,
}

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The file has no PEM certificate.
    #[error("{path} contains no PEM certificate")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The file has no PEM private key.
    #[error("{path} contains no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key is of a kind the provider cannot sign with, or is malformed.
    #[error("{path}: unusable private key: {source}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// The key does not belong to the certificate.
    #[error("the key in {key} does not match the certificate in {cert}")]
    Mismatch {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
    },
    /// The leaf certificate cannot be parsed.
    #[error("{path}: the certificate cannot be parsed: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads all certificates of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Loads a chain and its key and checks that they belong together.
pub fn load_certified_key(
    cert: &Path,
    key: &Path,
) -> Result<(Arc<CertifiedKey>, CertInfo), CertError> {
    let chain = load_certs(cert)?;
    let key_pem = read(key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| CertError::NoKey {
        path: key.to_owned(),
    })?;
    let provider = super::provider();
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|source| CertError::BadKey {
            path: key.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(CertError::Mismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            });
        }
    }
    let info = inspect(&certified.cert[0], cert)?;
    Ok((Arc::new(certified), info))
}

/// Reads the names and expiry of a DER certificate.
pub fn inspect(der: &CertificateDer<'_>, path: &Path) -> Result<CertInfo, CertError> {
    let parse_error = |reason: String| CertError::Parse {
        path: path.to_owned(),
        reason,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| parse_error(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    Ok(CertInfo {
        names,
        not_after: cert.validity().not_after.timestamp(),
        not_after_text: cert.validity().not_after.to_string(),
    })
}
