//! What a configuration's files become before a runtime can be compiled: each TLS
//! listener's server config, each upstream TLS client config, each filter's compiled
//! module, and the certificates' expiry dates. Built once per configuration taken (the
//! daemon's start, a reload, `tandem check`); every problem is reported at once, at the
//! line and key its [`Anchor`](crate::config::Anchor) kept.

use std::sync::Arc;

use crate::config::{Config, ConfigIssue};
use crate::tls::TlsError;
use crate::wasm_engine::{LoadedModule, ModuleError};

/// The loaded and compiled material of one configuration, in the configuration's order.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// Per listener: its TLS server configs, if it terminates TLS.
    pub(crate) listener_tls: Vec<Option<Arc<crate::tls::ServerTls>>>,
    /// Per cluster: its TLS client config, if it speaks TLS to its endpoints.
    pub(crate) cluster_tls: Vec<Option<Arc<rustls::ClientConfig>>>,
    /// Per filter: its compiled module.
    pub(crate) modules: Vec<Arc<LoadedModule>>,
    /// Certificates this node presents, with when each expires (for the expiry gauge).
    pub certificates: Vec<CertificateExpiry>,
    /// Legal but probably unintended situations found while building (e.g. no disk
    /// cache for compiled filters).
    pub warnings: Vec<ConfigIssue>,
}

/// A certificate this node presents and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateExpiry {
    /// Where it is used: `listener/NAME` or `ha`.
    pub used_by: String,
    /// The certificate file.
    pub path: std::path::PathBuf,
    /// notAfter, Unix seconds.
    pub not_after: i64,
}

impl Artifacts {
    /// Loads every certificate and key, and loads, pins and compiles every filter
    /// module `config` names. Any problem refuses the configuration; all are returned.
    pub fn build(config: &Config) -> Result<Artifacts, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let mut warnings = Vec::new();
        let listener_tls = config
            .listeners
            .iter()
            .map(|l| {
                let t = l.tls.as_ref()?;
                crate::tls::server_config(t)
                    .map(Arc::new)
                    .map_err(|e| issues.push(listener_tls_issue(l, &e)))
                    .ok()
            })
            .collect();
        let cluster_tls = config
            .clusters
            .iter()
            .map(|c| {
                let t = c.tls.as_ref()?;
                crate::tls::client_config(t)
                    .map_err(|e| {
                        issues.push(
                            c.tls_at
                                .issue(e.to_string(), "check the CA and client certificate files"),
                        )
                    })
                    .ok()
            })
            .collect();
        if let (Some(f), Err(why)) = (config.filters.first(), crate::wasm_engine::cache()) {
            warnings.push(f.path_at.issue(
                format!("compiled filters are not cached on disk ({why}); every start compiles them"),
                "give Tandem a cache directory of its own: TANDEM_WASM_CACHE, or systemd's CacheDirectory=tandem",
            ));
        }
        let modules = config
            .filters
            .iter()
            .filter_map(|f| match crate::wasm_engine::load(&f.path, f.sha256.as_deref()) {
                Ok(m) => Some(Arc::new(m)),
                Err(e) => {
                    issues.push(module_issue(f, &e));
                    None
                }
            })
            .collect();
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Artifacts {
            listener_tls,
            cluster_tls,
            modules,
            certificates: certificates(config),
            warnings,
        })
    }
}

/// A listener's certificate problem, at the certificate it concerns when the error
/// names one of its files.
fn listener_tls_issue(l: &crate::config::ListenerConfig, e: &TlsError) -> ConfigIssue {
    let text = e.to_string();
    let names = |p: &std::path::Path| text.contains(&*p.to_string_lossy());
    let at = l
        .tls
        .iter()
        .flat_map(|t| t.certificates.iter())
        .zip(&l.tls_at.certificates)
        .find(|((cert, key), _)| names(cert) || names(key))
        .map_or(&l.tls_at.section, |(_, at)| at);
    let hint = match e {
        TlsError::Unreadable { .. } => {
            "check the path (relative paths start at the config file's directory) and permissions"
        }
        TlsError::Empty { .. } => {
            "the file must hold PEM blocks (-----BEGIN CERTIFICATE----- / -----BEGIN PRIVATE KEY-----)"
        }
        TlsError::Mismatch { .. } => "pair each certificate with the key it was issued for",
        TlsError::Validity { .. } => "renew the certificate",
        TlsError::Rustls(_) => "check the certificate and key formats",
    };
    at.issue(text, hint)
}

/// A filter module that cannot be read, does not match its pin, or does not compile.
fn module_issue(f: &crate::config::FilterConfig, e: &ModuleError) -> ConfigIssue {
    match e {
        ModuleError::Pin { actual, .. } => f.sha256_at.issue(
            e.to_string(),
            &format!("if this module is the one you mean to run, pin sha256 = \"{actual}\""),
        ),
        ModuleError::Read { .. } => f.path_at.issue(
            e.to_string(),
            "build the filter (cargo build --target wasm32-wasip1 --release) or fix the path",
        ),
        ModuleError::Compile { .. } => f.path_at.issue(
            e.to_string(),
            "point at a .wasm module built for wasm32-wasip1 with the proxy-wasm SDK",
        ),
    }
}

/// The certificates this node presents (listeners, the pair's peer TLS) and when each
/// expires.
fn certificates(config: &Config) -> Vec<CertificateExpiry> {
    let listeners = config.listeners.iter().flat_map(|l| {
        l.tls
            .iter()
            .flat_map(|t| t.certificates.iter())
            .map(move |(cert, _)| (format!("listener/{}", l.name), cert))
    });
    let ha = config.ha.iter().map(|h| ("ha".to_string(), &h.group.tls.cert));
    listeners
        .chain(ha)
        .filter_map(|(used_by, path)| {
            Some(CertificateExpiry {
                used_by,
                path: path.clone(),
                not_after: crate::tls::not_after(path)?,
            })
        })
        .collect()
}
