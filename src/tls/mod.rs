//! TLS: termination for clients (rustls server with SNI, ALPN, certificate reload) and
//! re-encryption to backends (rustls client).
//!
//! The crypto provider is `ring`: it builds with nothing but the C compiler, where `aws-lc-rs`
//! (rustls' default) needs cmake. Only TLS 1.2 and 1.3 are offered.

pub mod certs;
pub mod client;
pub mod server;

use std::sync::Arc;

pub use certs::{CertError, CertInfo, load_certified_key};

/// The one crypto provider every rustls config here is built with.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 first, then 1.2; nothing older.
pub const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
