//! `[tls]`: listener, certificates (loaded and checked here), timeouts.

use std::time::Duration;

use toml::Spanned;

use super::Checker;
use crate::config::raw::RawTls;
use crate::config::{Certificate, ConfigError, TlsConfig};

pub(super) fn tls(check: &Checker, raw: &RawTls) -> Result<TlsConfig, ConfigError> {
    let listen = match &raw.listen {
        Some(l) => Some(check.addr(l, "tls.listen")?),
        None => None,
    };
    let mut certificates = vec![certificate(check, &raw.cert, &raw.key, "tls", Vec::new())?];
    for extra in &raw.certificates {
        let c = extra.get_ref();
        let mut names = Vec::new();
        if let Some(list) = &c.server_names {
            for name in list.get_ref() {
                let lower = name.trim().to_ascii_lowercase();
                let bare = lower.strip_prefix("*.").unwrap_or(&lower);
                if bare.is_empty() || bare.contains('*') || bare.contains(':') || bare.contains('/')
                {
                    return check.error(
                        list.span(),
                        "tls.certificates.server_names",
                        format!("`{name}` is not a server name"),
                        Some("write \"chat.example.com\" or \"*.example.com\"".into()),
                    );
                }
                names.push(lower);
            }
        }
        certificates.push(certificate(
            check,
            &c.cert,
            &c.key,
            "tls.certificates",
            names,
        )?);
    }
    Ok(TlsConfig {
        listen,
        certificates,
        handshake_timeout: check.duration(
            &raw.handshake_timeout,
            "tls.handshake_timeout",
            Duration::from_secs(10),
        )?,
        reload_interval: check.duration(
            &raw.reload_interval,
            "tls.reload_interval",
            Duration::from_secs(10),
        )?,
    })
}

/// Loads one cert/key pair now, so a missing file or a mismatched key stops the start with the
/// line of the key at fault.
fn certificate(
    check: &Checker,
    cert: &Spanned<String>,
    key: &Spanned<String>,
    table: &str,
    server_names: Vec<String>,
) -> Result<Certificate, ConfigError> {
    use crate::tls::CertError;
    let cert_path = std::path::PathBuf::from(cert.get_ref());
    let key_path = std::path::PathBuf::from(key.get_ref());
    match crate::tls::load_certified_key(&cert_path, &key_path) {
        Ok((loaded, info)) => Ok(Certificate {
            server_names,
            cert: cert_path,
            key: key_path,
            loaded,
            info,
        }),
        Err(e) => {
            let (span, field, hint) = match &e {
                CertError::Read { path, .. } if *path == key_path => (
                    key.span(),
                    "key",
                    "check the path; relative paths start from the working directory",
                ),
                CertError::Read { .. } => (
                    cert.span(),
                    "cert",
                    "check the path; relative paths start from the working directory",
                ),
                CertError::NoCertificate { .. } | CertError::Parse { .. } => (
                    cert.span(),
                    "cert",
                    "the file must hold the PEM chain, leaf first",
                ),
                CertError::NoKey { .. } | CertError::BadKey { .. } => (
                    key.span(),
                    "key",
                    "the file must hold a PEM private key (PKCS#8, PKCS#1 or SEC1)",
                ),
                CertError::Mismatch { .. } => {
                    (key.span(), "key", "pair each certificate with its own key")
                }
            };
            check.error(
                span,
                &format!("{table}.{field}"),
                e.to_string(),
                Some(hint.to_owned()),
            )
        }
    }
}
