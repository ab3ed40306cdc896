//! Loading certificate chains and keys from PEM files, with errors that name the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject, SectionKind};
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
    /// The key is of a kind the provider cannot sign with, or the key file is malformed: a
    /// broken PEM block, an encrypted key, a block other than the key, more than one key (the
    /// reason is then a [`rustls::Error::General`] that says which block and line).
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
    /// The certificate file cannot be parsed: a malformed PEM block, a block that is not a
    /// certificate (a private key, say), or a certificate whose DER does not parse.
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

/// One `-----BEGIN …-----` … `-----END …-----` block of a PEM file.
struct Block {
    /// The label, e.g. `CERTIFICATE` or `PRIVATE KEY`.
    label: String,
    /// The line of the BEGIN line, from 1.
    line: usize,
    /// The decoded contents, for the labels rustls knows; `None` for any other label.
    der: Option<(SectionKind, Vec<u8>)>,
    /// An RFC 1421 `Proc-Type: 4,ENCRYPTED` header: a legacy encrypted key.
    encrypted: bool,
}

impl Block {
    /// "block 2 (`PRIVATE KEY`, line 21)", for messages.
    fn describe(&self, index: usize) -> String {
        format!("block {} (`{}`, line {})", index + 1, self.label, self.line)
    }

    fn is_private_key(&self) -> bool {
        matches!(
            self.der,
            Some((
                SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey,
                _
            ))
        )
    }

    fn is_encrypted_key(&self) -> bool {
        self.encrypted || self.label == "ENCRYPTED PRIVATE KEY"
    }
}

/// Splits a PEM file into its blocks, strictly: a BEGIN line without its END (or an END without
/// its BEGIN, or with another label), a malformed BEGIN or END line, or contents that are not
/// base64 is an error that says which block and line. Text outside the blocks is allowed, as
/// RFC 7468 allows it (`openssl` writes `subject=` and `Bag Attributes` lines there).
///
/// rustls' own PEM reader is lenient where this must not be: it skips blocks with labels it does
/// not know and, when a BEGIN line follows an unfinished block, drops that block silently.
fn blocks(pem: &[u8]) -> Result<Vec<Block>, String> {
    let text_of = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let mut blocks = Vec::new();
    // The open block: its label, line and byte offset.
    let mut open: Option<(String, usize, usize)> = None;
    let mut offset = 0;
    // Lines end in LF, CRLF or (as rustls also accepts) a lone CR.
    for (index, physical) in pem.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let mut start = offset;
        offset += physical.len() + 1;
        for raw in physical.split(|&b| b == b'\r') {
            let line_start = start;
            start += raw.len() + 1;
            let line = raw.trim_ascii_end();
            if let Some(rest) = line.strip_prefix(b"-----BEGIN ") {
                let Some(label) = rest.strip_suffix(b"-----") else {
                    return Err(format!(
                        "line {number}: malformed BEGIN line `{}`",
                        text_of(line)
                    ));
                };
                if let Some((open_label, open_line, _)) = &open {
                    return Err(format!(
                        "the `{open_label}` block of line {open_line} has no END line before the \
                         next BEGIN line (line {number})"
                    ));
                }
                open = Some((text_of(label), number, line_start));
            } else if let Some(rest) = line.strip_prefix(b"-----END ") {
                let Some(label) = rest.strip_suffix(b"-----") else {
                    return Err(format!(
                        "line {number}: malformed END line `{}`",
                        text_of(line)
                    ));
                };
                let label = text_of(label);
                let Some((open_label, open_line, block_start)) = open.take() else {
                    return Err(format!(
                        "line {number}: `-----END {label}-----` without a BEGIN line"
                    ));
                };
                if open_label != label {
                    return Err(format!(
                        "the `{open_label}` block of line {open_line} ends with \
                         `-----END {label}-----` (line {number})"
                    ));
                }
                let end = (line_start + raw.len()).min(pem.len());
                let section = &pem[block_start..end];
                let encrypted = section
                    .windows(b"Proc-Type: 4,ENCRYPTED".len())
                    .any(|w| w == b"Proc-Type: 4,ENCRYPTED");
                let der = match <(SectionKind, Vec<u8>)>::from_pem_slice(section) {
                    Ok(decoded) => Some(decoded),
                    // A label rustls does not know: its reader skips the block.
                    Err(pem::Error::NoItemsFound) => None,
                    Err(_) if encrypted => None,
                    Err(e) => {
                        return Err(format!(
                            "block {} (`{label}`, line {open_line}) is malformed: {e}",
                            blocks.len() + 1
                        ));
                    }
                };
                blocks.push(Block {
                    label,
                    line: open_line,
                    der,
                    encrypted,
                });
            }
        }
    }
    if let Some((label, line, _)) = open {
        return Err(format!(
            "the `{label}` block of line {line} has no END line (is the file truncated?)"
        ));
    }
    Ok(blocks)
}

/// The certificates of a PEM file with the line each starts on. The file must hold
/// CERTIFICATE blocks and nothing else: any other block, and a private key above all, is an
/// error rather than skipped.
fn read_certs(path: &Path) -> Result<Vec<(CertificateDer<'static>, usize)>, CertError> {
    let parse_error = |reason: String| CertError::Parse {
        path: path.to_owned(),
        reason,
    };
    let pem = read(path)?;
    let mut certs = Vec::new();
    for (index, block) in blocks(&pem).map_err(parse_error)?.into_iter().enumerate() {
        match block.der {
            Some((SectionKind::Certificate, der)) => {
                certs.push((CertificateDer::from(der), block.line));
            }
            _ if block.is_private_key() || block.is_encrypted_key() => {
                return Err(parse_error(format!(
                    "{} is a private key, and a certificate file must hold only CERTIFICATE \
                     blocks (the chain, leaf first): keep the key in its own file, named by `key`",
                    block.describe(index)
                )));
            }
            _ => {
                return Err(parse_error(format!(
                    "{} is not a certificate; a certificate file must hold only CERTIFICATE \
                     blocks (the chain, leaf first)",
                    block.describe(index)
                )));
            }
        }
    }
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads all certificates of a PEM file. Every block must be a well-formed CERTIFICATE block:
/// a malformed block, or one of another kind (a private key, say), is an error naming the file
/// and the block, not skipped.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    Ok(read_certs(path)?.into_iter().map(|(der, _)| der).collect())
}

/// Reads the one private key of a PEM file. Besides the key, the file may hold only the
/// `EC PARAMETERS` block that `openssl ecparam -genkey` writes before it.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let bad = |reason: String| CertError::BadKey {
        path: path.to_owned(),
        source: rustls::Error::General(reason),
    };
    let pem = read(path)?;
    let blocks = blocks(&pem).map_err(bad)?;
    if let Some((index, block)) = blocks
        .iter()
        .enumerate()
        .find(|(_, b)| b.is_encrypted_key())
    {
        return Err(bad(format!(
            "{} is encrypted; switchboard needs the key unencrypted (`openssl pkey -in {} -out \
             <new file>` decrypts it)",
            block.describe(index),
            path.display()
        )));
    }
    let keys: Vec<usize> = (0..blocks.len())
        .filter(|&i| blocks[i].is_private_key())
        .collect();
    let Some(&first) = keys.first() else {
        return Err(CertError::NoKey {
            path: path.to_owned(),
        });
    };
    if let Some((index, block)) = blocks
        .iter()
        .enumerate()
        .find(|(_, b)| !b.is_private_key() && b.label != "EC PARAMETERS")
    {
        return Err(bad(format!(
            "{} is not a private key; a key file must hold exactly one private key and nothing \
             else",
            block.describe(index)
        )));
    }
    if keys.len() > 1 {
        let lines: Vec<String> = keys.iter().map(|&i| blocks[i].line.to_string()).collect();
        return Err(bad(format!(
            "the file holds {} private keys (lines {}); a key file must hold exactly one",
            keys.len(),
            lines.join(", ")
        )));
    }
    let key = blocks
        .into_iter()
        .nth(first)
        .and_then(|b| b.der)
        .and_then(|(kind, der)| PrivateKeyDer::from_pem(kind, der));
    key.ok_or_else(|| CertError::NoKey {
        path: path.to_owned(),
    })
}

/// Loads a chain and its key and checks that they belong together. Every certificate of the
/// chain must parse, so a broken intermediate is found here rather than by clients.
pub fn load_certified_key(
    cert: &Path,
    key: &Path,
) -> Result<(Arc<CertifiedKey>, CertInfo), CertError> {
    let chain = read_certs(cert)?;
    let info = inspect(&chain[0].0, cert)?;
    for (index, (der, line)) in chain.iter().enumerate().skip(1) {
        if let Err(e) = x509_parser::parse_x509_certificate(der.as_ref()) {
            return Err(CertError::Parse {
                path: cert.to_owned(),
                reason: format!("certificate {} of the chain (line {line}): {e}", index + 1),
            });
        }
    }
    let chain: Vec<_> = chain.into_iter().map(|(der, _)| der).collect();
    let private = load_key(key)?;
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
