//! `[tls]`: listener, certificates (loaded and checked here), timeouts.

use std::time::Duration;

use toml::Spanned;

use super::Checker;
use crate::config::raw::RawTls;
use crate::config::{Certificate, ConfigError, TlsConfig};

/// `[tls]`; a certificate that does not load is reported and left out.
pub(super) fn tls(check: &Checker, raw: &RawTls) -> TlsConfig {
    let listen = raw
        .listen
        .as_ref()
        .and_then(|l| check.keep(check.addr(l, "tls.listen")));
    let mut certificates = Vec::with_capacity(1 + raw.certificates.len());
    certificates.extend(check.keep(certificate(check, &raw.cert, &raw.key, "tls", Vec::new())));
    for extra in &raw.certificates {
        let c = extra.get_ref();
        let mut names = Vec::new();
        if let Some(list) = &c.server_names {
            for name in list.get_ref() {
                let lower = name.trim().to_ascii_lowercase();
                let bare = lower.strip_prefix("*.").unwrap_or(&lower);
                if bare.is_empty() || bare.contains('*') || bare.contains(':') || bare.contains('/')
                {
                    check.report(
                        list.span(),
                        "tls.certificates.server_names",
                        format!("`{name}` is not a server name"),
                        Some("write \"chat.example.com\" or \"*.example.com\"".into()),
                    );
                    continue;
                }
                names.push(lower);
            }
        }
        certificates.extend(check.keep(certificate(
            check,
            &c.cert,
            &c.key,
            "tls.certificates",
            names,
        )));
    }
    TlsConfig {
        listen,
        certificates,
        handshake_timeout: check.duration(
            &raw.handshake_timeout,
            "tls.handshake_timeout",
            Duration::from_secs(10),
        ),
        reload_interval: check.duration(
            &raw.reload_interval,
            "tls.reload_interval",
            Duration::from_secs(10),
        ),
    }
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
