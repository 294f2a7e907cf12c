//! Test certificates: a CA, server certificates and a client certificate, written as PEM
//! files into a temporary directory.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    pub ca_pem: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "Tandem Test CA");
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        Pki { dir, ca, ca_pem }
    }

    /// Issues a leaf for `names` (CN = first name); returns (cert path, key path).
    pub fn leaf(&self, file: &str, names: &[&str], client: bool) -> (PathBuf, PathBuf) {
        self.leaf_with(file, names, client, |_| {})
    }

    pub fn leaf_with(
        &self,
        file: &str,
        names: &[&str],
        client: bool,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        if client {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        tweak(&mut p);
        let cert = p.signed_by(&key, &self.ca).unwrap();
        let c = self.dir.path().join(format!("{file}.pem"));
        let k = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// A rustls client config trusting this CA, offering `alpn`, optionally with a
    /// client certificate.
    pub fn client(&self, alpn: &[&str], cert: Option<&(PathBuf, PathBuf)>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in tandem_proxy::tls::load_certs(&self.ca_pem).unwrap() {
            roots.add(c).unwrap();
        }
        let b = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut cfg = match cert {
            Some((c, k)) => {
                let chain = tandem_proxy::tls::load_certs(c).unwrap();
                let key = rustls_pki_types::PrivateKeyDer::from_pem_file(k).unwrap();
                b.with_client_auth_cert(chain, key).unwrap()
            }
            None => b.with_no_client_auth(),
        };
        cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        Arc::new(cfg)
    }

    /// A rustls server config for `cert` (for TLS backends in tests).
    pub fn server(&self, cert: &(PathBuf, PathBuf)) -> Arc<rustls::ServerConfig> {
        let chain = tandem_proxy::tls::load_certs(&cert.0).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&cert.1).unwrap();
        Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        )
    }
}

use rustls_pki_types::pem::PemObject;

/// The DNS names in a peer certificate.
pub fn names_of(der: &rustls_pki_types::CertificateDer<'_>) -> Vec<String> {
    let (_, x) = x509_parser::parse_x509_certificate(der).unwrap();
    x.subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}
