//! TLS with rustls: loading and checking certificate material (with clear errors for
//! unreadable, mismatched or expired files), SNI certificate selection, server configs
//! for listeners (ALPN, TLS 1.2/1.3, session tickets, optional client certificates) and
//! client configs for TLS to upstreams.
//!
//! Cipher policy: the `ring` provider's suites in the server's order of preference —
//! TLS 1.3 (TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256)
//! and, unless `min_version = "1.3"`, TLS 1.2 ECDHE with AES-GCM or ChaCha20-Poly1305
//! only (no CBC, no RSA key exchange, no SHA-1 signatures). Key exchange: X25519, P-256,
//! P-384; X25519 is aws-lc's (see [`kx_groups`]).
//!
//! [`client_hello`] reads a ClientHello before rustls does: its server name (TLS
//! passthrough) and whether it offers a session, which [`accept`] uses to pick between a
//! listener's two configs ([`ServerTls`]).

mod accept;
pub mod client_hello;

pub(crate) use accept::accept;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::ring as provider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS material could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    Unreadable {
        /// File.
        path: PathBuf,
        /// OS error.
        reason: String,
    },
    /// A file holds no usable PEM item.
    #[error("{path} contains no {what} in PEM form")]
    Empty {
        /// File.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
    },
    /// The key does not belong to the certificate.
    #[error("{key} does not match the certificate in {cert}")]
    Mismatch {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
    },
    /// The certificate is outside its validity period.
    #[error("certificate {path} {when}")]
    Validity {
        /// File.
        path: PathBuf,
        /// "expired on …" / "is not valid before …".
        when: String,
    },
    /// Anything rustls refused.
    #[error("{0}")]
    Rustls(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// When the first certificate of the PEM file at `path` stops being valid (Unix
/// seconds); `None` when it cannot be read or parsed. Feeds the expiry gauge.
pub fn not_after(path: &Path) -> Option<i64> {
    let chain = load_certs(path).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(chain.first()?.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Reads a PEM certificate chain.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::Empty {
        path: path.to_path_buf(),
        what: "private key",
    })
}

/// A certificate with the names it answers for.
#[derive(Debug)]
pub struct NamedCert {
    /// DNS names from the subject alternative names (lowercase; `*.x` wildcards kept).
    pub names: Vec<String>,
    /// The chain and key.
    pub key: Arc<CertifiedKey>,
}

/// Loads and checks one certificate/key pair: readable, PEM, key matches, in validity.
pub fn load_pair(cert: &Path, key: &Path) -> Result<NamedCert, TlsError> {
    let chain = load_certs(cert)?;
    let der_key = load_key(key)?;
    let signing = provider::sign::any_supported_type(&der_key)
        .map_err(|e| TlsError::Rustls(format!("{}: {e}", key.display())))?;
    let (names, not_before, not_after) = {
        let (_, x509) = x509_parser::parse_x509_certificate(&chain[0])
            .map_err(|e| TlsError::Rustls(format!("{}: {e}", cert.display())))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = x509.subject_alternative_name() {
            for n in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                    names.push(d.to_ascii_lowercase());
                }
            }
        }
        if names.is_empty() {
            if let Some(cn) = x509.subject().iter_common_name().next().and_then(|c| c.as_str().ok()) {
                names.push(cn.to_ascii_lowercase());
            }
        }
        (
            names,
            x509.validity().not_before.timestamp(),
            x509.validity().not_after.timestamp(),
        )
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let fmt = |t: i64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64))
    };
    if now > not_after {
        return Err(TlsError::Validity {
            path: cert.to_path_buf(),
            when: format!("expired on {}", fmt(not_after)),
        });
    }
    if now < not_before {
        return Err(TlsError::Validity {
            path: cert.to_path_buf(),
            when: format!("is not valid before {}", fmt(not_before)),
        });
    }
    let ck = CertifiedKey::new(chain, signing);
    if ck.keys_match().is_err() {
        return Err(TlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        });
    }
    Ok(NamedCert {
        names,
        key: Arc::new(ck),
    })
}

/// Picks a certificate by SNI: exact name, then wildcard, then the first (default).
#[derive(Debug)]
pub struct SniResolver {
    certs: Vec<NamedCert>,
}

impl SniResolver {
    /// The certificate for `sni` (None = default).
    pub fn pick(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.to_ascii_lowercase();
            if let Some(c) = self.certs.iter().find(|c| c.names.contains(&name)) {
                return Some(&c.key);
            }
            if let Some((_, parent)) = name.split_once('.') {
                let wildcard = format!("*.{parent}");
                if let Some(c) = self.certs.iter().find(|c| c.names.contains(&wildcard)) {
                    return Some(&c.key);
                }
            }
        }
        self.certs.first().map(|c| &c.key)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name()).cloned()
    }
}

/// Whether and how listeners ask for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Never.
    None,
    /// Verified if sent.
    Optional,
    /// Required; handshakes without a valid one fail.
    Required,
}

/// Everything a listener's TLS is built from (paths already resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// (certificate chain, key) files; the first is the default.
    pub certificates: Vec<(PathBuf, PathBuf)>,
    /// ALPN protocols offered, in preference order.
    pub alpn: Vec<String>,
    /// Refuse TLS 1.2.
    pub tls13_only: bool,
    /// CA bundle for client certificates.
    pub client_ca: Option<PathBuf>,
    /// Client certificate policy.
    pub client_auth: ClientAuth,
    /// Issue session tickets (stateless resumption); session-id resumption is always on.
    pub session_tickets: bool,
}

/// The process-wide ticket key, rotated by rustls (every 6 h); shared by every config so
/// tickets survive reloads.
fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, TlsError> {
    static T: OnceLock<Arc<dyn rustls::server::ProducesTickets>> = OnceLock::new();
    if let Some(t) = T.get() {
        return Ok(t.clone());
    }
    let t = provider::Ticketer::new().map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok(T.get_or_init(|| t).clone())
}

fn session_cache() -> Arc<dyn rustls::server::StoresServerSessions> {
    static C: OnceLock<Arc<rustls::server::ServerSessionMemoryCache>> = OnceLock::new();
    C.get_or_init(|| rustls::server::ServerSessionMemoryCache::new(16 * 1024))
        .clone()
}

/// The listeners' crypto: ring's suites with AES-128-GCM first in each family. Its
/// handshake hash is SHA-256, which ring runs on the CPU's SHA extensions; SHA-384
/// (the AES-256 suite's) has no fast path in ring on AMD processors and cost a tenth
/// of a full handshake there.
fn server_provider() -> rustls::crypto::CryptoProvider {
    use provider::cipher_suite as cs;
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: kx_groups(),
        ..provider::default_provider()
    }
}

/// The upstream side's crypto: ring's defaults with [`kx_groups`].
fn client_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::CryptoProvider {
        kx_groups: kx_groups(),
        ..provider::default_provider()
    }
}

/// The key-exchange groups of listeners and upstream TLS, in order of preference:
/// X25519 from aws-lc, P-256 and P-384 from ring. aws-lc's X25519 (s2n-bignum) makes a
/// key pair and the shared secret in about half of ring's time (44 against 73–86 µs on
/// this VM), and X25519 is what nearly every client offers first: it is the largest
/// share of a handshake's CPU. ring stays for everything else, where it is as fast
/// (P-256, ECDSA) or faster (AES-GCM).
fn kx_groups() -> Vec<&'static dyn rustls::crypto::SupportedKxGroup> {
    vec![
        rustls::crypto::aws_lc_rs::kx_group::X25519,
        provider::kx_group::SECP256R1,
        provider::kx_group::SECP384R1,
    ]
}

/// A terminating listener's server configs: alike but for the session tickets sent
/// once the handshake is done. After a full handshake the client gets two (a browser
/// opens connections in parallel and each may resume); after a resumption, one, as
/// OpenSSL (HAProxy, nginx) sends. Each ticket is three random draws, an AEAD seal and
/// a record on the wire: 2 to 3 % of a resumed handshake (bench/README.md). [`accept`]
/// picks one per connection from the ClientHello.
#[derive(Debug)]
pub struct ServerTls {
    /// For a ClientHello that offers no session to resume.
    pub full: Arc<rustls::ServerConfig>,
    /// For a ClientHello that offers one (`pre_shared_key`), resumed or not.
    pub resumed: Arc<rustls::ServerConfig>,
}

/// Tickets after a full TLS 1.3 handshake (when tickets are on).
const TICKETS_AFTER_FULL: usize = 2;
/// Tickets after a ClientHello that offered a session.
const TICKETS_AFTER_RESUMPTION: usize = 1;

/// Builds a listener's server configs from its settings, loading every file.
pub fn server_config(t: &ListenerTls) -> Result<ServerTls, TlsError> {
    let mut certs = Vec::new();
    for (c, k) in &t.certificates {
        certs.push(load_pair(c, k)?);
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if t.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(server_provider()))
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match (&t.client_ca, t.client_auth) {
        (Some(ca), ClientAuth::Optional | ClientAuth::Required) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in load_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| TlsError::Rustls(format!("{}: {e}", ca.display())))?;
            }
            let v =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider::default_provider()));
            let v = if t.client_auth == ClientAuth::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(v.build().map_err(|e| TlsError::Rustls(e.to_string()))?)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(SniResolver { certs }));
    cfg.ignore_client_order = true;
    cfg.alpn_protocols = t.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    cfg.session_storage = session_cache();
    if t.session_tickets {
        cfg.ticketer = ticketer()?;
        cfg.send_tls13_tickets = TICKETS_AFTER_FULL;
    } else {
        cfg.send_tls13_tickets = 0;
    }
    // The same resolver, verifier, session cache and ticket key: a ticket either config
    // issued resumes with both.
    let mut resumed = cfg.clone();
    resumed.send_tls13_tickets = cfg.send_tls13_tickets.min(TICKETS_AFTER_RESUMPTION);
    Ok(ServerTls {
        full: Arc::new(cfg),
        resumed: Arc::new(resumed),
    })
}

/// Everything an upstream TLS client is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Server name to send and verify (default: the endpoint IP).
    pub sni: Option<String>,
    /// CA bundle (None = the system's roots).
    pub ca: Option<PathBuf>,
    /// Client certificate and key, for upstreams that require one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// ALPN to offer (`h2` for gRPC).
    pub alpn: Vec<String>,
    /// Skip verification (labs only; logged as a warning).
    pub insecure_skip_verify: bool,
}

/// Builds a client config for TLS to upstreams.
pub fn client_config(t: &UpstreamTls) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match &t.ca {
        Some(ca) => {
            for c in load_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| TlsError::Rustls(format!("{}: {e}", ca.display())))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(client_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = if t.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider::default_provider())))
    } else {
        builder.with_root_certificates(roots)
    };
    let mut cfg = match &t.client_cert {
        Some((c, k)) => {
            let pair = load_pair(c, k)?;
            builder
                .with_client_auth_cert(pair.key.cert.clone(), load_key(k)?)
                .map_err(|e| TlsError::Rustls(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = t.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Accepts any server certificate (`insecure_skip_verify`); signatures are still checked.
#[derive(Debug)]
struct NoVerify(rustls::crypto::CryptoProvider);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The subject of a verified client certificate, as `CN=…, O=…` text.
pub fn subject_of(der: &CertificateDer<'_>) -> Option<String> {
    let (_, x509) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(x509.subject().to_string())
}
