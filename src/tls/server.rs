//! TLS termination: certificate choice by SNI, the handshake with its timeout and metrics, and
//! certificate reload from disk.
//!
//! The certificates live in an [`ArcSwap`] snapshot read by each handshake; one reload task is
//! the only writer. New handshakes use the new certificate, established connections keep
//! theirs, and a file that does not load keeps the old certificate (logged and counted).
//! Choice by SNI: an exact name, then a wildcard (`*.example.com` covers exactly one more label,
//! as a certificate wildcard does), then the default certificate, also for clients without SNI.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::{Certificate, TlsConfig};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// The certificates by name, as one immutable snapshot.
#[derive(Debug)]
struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `"example.com"` for `*.example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl CertStore {
    fn build(certs: &[(Vec<String>, Arc<CertifiedKey>)]) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        // Later entries never override earlier ones: file order decides.
        for (names, key) in certs {
            for name in names {
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard
                        .entry(suffix.to_owned())
                        .or_insert_with(|| key.clone()),
                    None => exact.entry(name.clone()).or_insert_with(|| key.clone()),
                };
            }
        }
        CertStore {
            exact,
            wildcard,
            default: certs[0].1.clone(),
        }
    }

    fn lookup(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni else {
            return self.default.clone();
        };
        let name = name.to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return key.clone();
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(key) = self.wildcard.get(parent)
        {
            return key.clone();
        }
        self.default.clone()
    }
}

/// rustls' hook for choosing a certificate per handshake.
#[derive(Debug)]
struct SniResolver {
    store: ArcSwap<CertStore>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.store.load().lookup(hello.server_name()))
    }
}

/// What a TLS listener needs per connection.
pub struct TlsTerminator {
    acceptor: TlsAcceptor,
    resolver: Arc<SniResolver>,
    /// Milliseconds; a reload may change it.
    handshake_timeout_ms: std::sync::atomic::AtomicU64,
    metrics: Metrics,
}

/// A finished handshake.
pub struct Accepted {
    /// The decrypted stream.
    pub stream: TlsStream<TcpStream>,
    /// The client chose HTTP/2 by ALPN.
    pub h2: bool,
}

fn names_of(cert: &Certificate) -> Vec<String> {
    if cert.server_names.is_empty() {
        cert.info.names.clone()
    } else {
        cert.server_names.clone()
    }
}

impl TlsTerminator {
    /// Builds the rustls server for `config`; certificates are already loaded by validation.
    pub fn new(config: &TlsConfig, metrics: Metrics) -> Result<Self, rustls::Error> {
        let certs = served(config, &metrics);
        let resolver = Arc::new(SniResolver {
            store: ArcSwap::from_pointee(CertStore::build(&certs)),
        });
        let mut server = rustls::ServerConfig::builder_with_provider(super::provider())
            .with_protocol_versions(super::VERSIONS)?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Resumption: a session cache for TLS 1.2 ids and tickets for both versions.
        server.session_storage = ServerSessionMemoryCache::new(16 * 1024);
        server.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(TlsTerminator {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            resolver,
            handshake_timeout_ms: std::sync::atomic::AtomicU64::new(
                config.handshake_timeout.as_millis() as u64,
            ),
            metrics,
        })
    }

    /// Serves the certificates (and handshake timeout) of a reloaded config from the next
    /// handshake on; established connections keep theirs.
    pub fn replace(&self, config: &TlsConfig) {
        let certs = served(config, &self.metrics);
        self.handshake_timeout_ms.store(
            config.handshake_timeout.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.resolver
            .store
            .store(Arc::new(CertStore::build(&certs)));
    }

    /// Runs the handshake within the timeout. A client that speaks plain HTTP to this port gets
    /// a short 400 that says so, then the connection is closed. `None`: nothing to serve.
    pub async fn accept(&self, stream: TcpStream) -> Option<Accepted> {
        let started = Instant::now();
        let timeout = Duration::from_millis(
            self.handshake_timeout_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let deadline = tokio::time::Instant::now() + timeout;
        let record = |outcome: &str, version: &str| {
            self.metrics
                .tls_handshakes_total
                .with_label_values(&[outcome, version])
                .inc();
        };
        let mut first = [0u8; 1];
        match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
            Ok(Ok(1)) if first[0] == 0x16 => {}
            Ok(Ok(1)) => {
                record("plain_http", "none");
                refuse_plain_http(stream).await;
                return None;
            }
            Ok(_) => {
                record("error", "none");
                return None;
            }
            Err(_) => {
                record("timeout", "none");
                return None;
            }
        }
        let tls = match tokio::time::timeout_at(deadline, self.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                record("error", "none");
                return None;
            }
            Err(_) => {
                record("timeout", "none");
                return None;
            }
        };
        let session = tls.get_ref().1;
        let version = match session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "other",
        };
        let alpn = match session.alpn_protocol() {
            Some(b"h2") => "h2",
            Some(b"http/1.1") => "http/1.1",
            Some(_) => "other",
            None => "none",
        };
        record("ok", version);
        self.metrics
            .tls_handshake_duration_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.tls_alpn_total.with_label_values(&[alpn]).inc();
        Some(Accepted {
            h2: alpn == "h2",
            stream: tls,
        })
    }

    /// Re-reads certificate files whose modification time or size changed, every
    /// `reload_interval`, until shutdown: one [`CertWatcher::check`] per interval. The only
    /// writer of the certificate snapshot besides [`TlsTerminator::replace`].
    pub async fn watch(self: Arc<Self>, config: TlsConfig, shutdown: Shutdown) {
        let mut watcher = self.watcher(&config);
        let mut ticks = tokio::time::interval(config.reload_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.stop_token().cancelled() => return,
            }
            watcher.check();
        }
    }

    /// The reload logic of [`TlsTerminator::watch`] without its timer, for the certificates of
    /// `config` as they are on disk now.
    pub fn watcher(self: &Arc<Self>, config: &TlsConfig) -> CertWatcher {
        let certs = config
            .certificates
            .iter()
            .map(|c| {
                let now = stamp(&c.cert, &c.key);
                Watched {
                    cert: c.clone(),
                    seen: now,
                    loaded: now,
                }
            })
            .collect();
        CertWatcher {
            terminator: self.clone(),
            certs,
        }
    }
}

/// Watches certificate files and reloads them into a [`TlsTerminator`], one
/// [`check`](CertWatcher::check) at a time ([`TlsTerminator::watch`] checks once per
/// `reload_interval`).
///
/// A pair is reloaded only once its files have stopped changing: seen changed at one check and
/// unchanged at the next. A renewal writes two files one after the other (certbot and most
/// scripts write the key, then the certificate), and loading between the two writes would pair
/// the new key with the old certificate: a mismatch, logged as an error, on every normal
/// renewal. Waiting costs one interval.
pub struct CertWatcher {
    terminator: Arc<TlsTerminator>,
    certs: Vec<Watched>,
}

/// One cert/key pair under watch.
struct Watched {
    cert: Certificate,
    /// The files' stamp at the previous check.
    seen: Option<Stamp>,
    /// The stamp of the files last loaded, or last tried.
    loaded: Option<Stamp>,
}

/// What one [`CertWatcher::check`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checked {
    /// Pairs whose files changed since the previous check: reloaded at the next check if they
    /// stay as they are.
    pub settling: usize,
    /// Pairs reloaded.
    pub reloaded: usize,
    /// Pairs whose reload failed; they keep their previous certificate.
    pub failed: usize,
}

impl CertWatcher {
    /// Looks at every pair's files once: notes the ones that changed, reloads the ones that
    /// changed before the previous check and not since, and publishes the new certificates for
    /// the next handshakes. Each reload is counted in `switchboard_tls_cert_reloads_total`.
    pub fn check(&mut self) -> Checked {
        let metrics = &self.terminator.metrics;
        let mut checked = Checked::default();
        for watched in &mut self.certs {
            let now = stamp(&watched.cert.cert, &watched.cert.key);
            if now != watched.seen {
                watched.seen = now;
                if now != watched.loaded {
                    checked.settling += 1;
                    tracing::debug!(cert = %watched.cert.cert.display(), "certificate files changed; reloading once they stay unchanged for one interval");
                }
                continue;
            }
            if now == watched.loaded {
                continue;
            }
            watched.loaded = now;
            let cert = &mut watched.cert;
            let label = cert.cert.display().to_string();
            match super::load_certified_key(&cert.cert, &cert.key) {
                Ok((loaded, info)) => {
                    cert.loaded = loaded;
                    cert.info = info;
                    set_expiry(metrics, cert);
                    metrics
                        .tls_cert_reloads_total
                        .with_label_values(&[label.as_str(), "ok"])
                        .inc();
                    tracing::info!(cert = %label, names = ?names_of(cert), not_after = cert.info.not_after, "certificate reloaded");
                    checked.reloaded += 1;
                }
                Err(e) => {
                    metrics
                        .tls_cert_reloads_total
                        .with_label_values(&[label.as_str(), "error"])
                        .inc();
                    tracing::error!(cert = %label, error = %e, "certificate reload failed; keeping the previous certificate");
                    checked.failed += 1;
                }
            }
        }
        if checked.reloaded > 0 {
            let snapshot: Vec<_> = self
                .certs
                .iter()
                .map(|w| (names_of(&w.cert), w.cert.loaded.clone()))
                .collect();
            self.terminator
                .resolver
                .store
                .store(Arc::new(CertStore::build(&snapshot)));
        }
        checked
    }
}

/// What identifies a version of a cert/key pair on disk (following symlinks, as certbot and
/// Kubernetes secret mounts swap them).
type Stamp = [(Option<SystemTime>, u64); 2];

fn stamp(cert: &Path, key: &Path) -> Option<Stamp> {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    Some([one(cert)?, one(key)?])
}

/// The certificates of `config` with the names they are chosen for; publishes their expiry.
fn served(config: &TlsConfig, metrics: &Metrics) -> Vec<(Vec<String>, Arc<CertifiedKey>)> {
    for cert in &config.certificates {
        set_expiry(metrics, cert);
    }
    config
        .certificates
        .iter()
        .map(|c| (names_of(c), c.loaded.clone()))
        .collect()
}

fn set_expiry(metrics: &Metrics, cert: &Certificate) {
    metrics
        .tls_cert_not_after_seconds
        .with_label_values(&[cert.cert.display().to_string().as_str()])
        .set(cert.info.not_after);
}

/// Answers a plain-HTTP request on the TLS port with 400, then closes after reading what the
/// client sent (so the close is a FIN, not a reset that could destroy the answer).
async fn refuse_plain_http(mut stream: TcpStream) {
    const BODY: &str = "This port speaks HTTPS. Use https:// (or wss://).\n";
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut total = 0;
        while let Ok(n) = stream.read(&mut sink).await {
            total += n;
            if n == 0 || total > 64 * 1024 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}
