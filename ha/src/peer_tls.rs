//! The group's TLS: every member proves it is one (mutual TLS with the group's CA and,
//! optionally, a per-node name), and the rustls configurations for both sides.

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;

use crate::types::NodeId;

/// The DNS name every peer certificate carries by default (and that peers verify).
pub const PEER_NAME: &str = "tandem-peer";

/// Certificate files for peer traffic, and the identity peers must prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTls {
    /// CA that signs every member's certificate.
    pub ca: PathBuf,
    /// This node's certificate (with DNS name `name`).
    pub cert: PathBuf,
    /// This node's key.
    pub key: PathBuf,
    /// The DNS name every member's certificate carries ([`PEER_NAME`] by default).
    pub name: String,
    /// Also require `node<ID>.<name>` for the node id a peer speaks for.
    pub verify_node_id: bool,
}

impl PeerTls {
    /// Files with the default peer name and no node-id check.
    pub fn new(ca: PathBuf, cert: PathBuf, key: PathBuf) -> PeerTls {
        PeerTls {
            ca,
            cert,
            key,
            name: PEER_NAME.to_string(),
            verify_node_id: false,
        }
    }

    /// The name a certificate must carry to speak for node `id` (with `verify_node_id`).
    pub fn node_name(&self, id: NodeId) -> String {
        format!("node{id}.{}", self.name)
    }
}

/// Why TLS material for peers could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("peer TLS: {0}")]
pub struct PeerTlsError(String);

fn certs(p: &std::path::Path) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, PeerTlsError> {
    let v: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(p)
        .map_err(|e| PeerTlsError(format!("{}: {e}", p.display())))?
        .filter_map(Result::ok)
        .collect();
    if v.is_empty() {
        return Err(PeerTlsError(format!("{} holds no certificate", p.display())));
    }
    Ok(v)
}

fn key(p: &std::path::Path) -> Result<rustls_pki_types::PrivateKeyDer<'static>, PeerTlsError> {
    rustls_pki_types::PrivateKeyDer::from_pem_file(p).map_err(|e| PeerTlsError(format!("{}: {e}", p.display())))
}

fn roots(ca: &std::path::Path) -> Result<Arc<rustls::RootCertStore>, PeerTlsError> {
    let mut r = rustls::RootCertStore::empty();
    for c in certs(ca)? {
        r.add(c).map_err(|e| PeerTlsError(e.to_string()))?;
    }
    Ok(Arc::new(r))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The group's client-certificate check: the CA's signature (webpki), then the peer
/// name, which the CA alone does not prove (a CA may sign other certificates too).
#[derive(Debug)]
struct PeerCertVerifier {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    name: rustls_pki_types::ServerName<'static>,
}

impl rustls::server::danger::ClientCertVerifier for PeerCertVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        intermediates: &[rustls_pki_types::CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let ok = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, &self.name)?;
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Whether `cert` carries DNS name `name`.
pub(crate) fn cert_has_name(cert: &rustls_pki_types::CertificateDer<'_>, name: &str) -> bool {
    let Ok(server_name) = rustls_pki_types::ServerName::try_from(name) else {
        return false;
    };
    rustls::server::ParsedCertificate::try_from(cert)
        .is_ok_and(|p| rustls::client::verify_server_name(&p, &server_name).is_ok())
}

pub(crate) fn server_name(name: &str) -> Result<rustls_pki_types::ServerName<'static>, PeerTlsError> {
    rustls_pki_types::ServerName::try_from(name.to_string())
        .map_err(|_| PeerTlsError(format!("`{name}` is not a valid DNS name for peer certificates")))
}

impl PeerTls {
    /// Server side: client certificates required, signed by the CA and carrying the
    /// peer name.
    pub fn server(&self) -> Result<Arc<rustls::ServerConfig>, PeerTlsError> {
        let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&self.ca)?, provider())
            .build()
            .map_err(|e| PeerTlsError(e.to_string()))?;
        let verifier = Arc::new(PeerCertVerifier {
            inner,
            name: server_name(&self.name)?,
        });
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| PeerTlsError(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&self.cert)?, key(&self.key)?)
            .map_err(|e| PeerTlsError(e.to_string()))?;
        Ok(Arc::new(cfg))
    }

    /// Client side: the peer must present a CA-signed certificate with the peer name
    /// (or, with `verify_node_id`, the target's node name: see [`Network`]).
    pub fn client(&self) -> Result<Arc<rustls::ClientConfig>, PeerTlsError> {
        let roots = roots(&self.ca)?;
        let cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| PeerTlsError(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs(&self.cert)?, key(&self.key)?)
            .map_err(|e| PeerTlsError(e.to_string()))?;
        Ok(Arc::new(cfg))
    }
}
