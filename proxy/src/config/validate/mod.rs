//! Semantic checks: addresses parse, names are unique, references resolve, values are
//! in range. All problems are collected and reported at once. One file per section;
//! `checker.rs` holds what they share.

mod anycast;
mod checker;
mod cluster;
mod filter;
mod ha;
mod listener;
mod route;
mod server;
mod tls;
mod vip;

use checker::Checker;

use super::error::{ConfigIssue, LineIndex};
use super::model::ConfigFile;
use super::*;

/// Checks a parsed file section by section (the order the sections refer to each other)
/// and builds the configuration; every problem found, at once, otherwise.
pub(crate) fn validate(
    source: &str,
    text: &str,
    lines: &LineIndex,
    file: ConfigFile,
    base: &std::path::Path,
    readable_by_others: bool,
) -> Result<Config, Vec<ConfigIssue>> {
    let mut c = Checker {
        lines,
        issues: Vec::new(),
        warnings: Vec::new(),
        readable_by_others: readable_by_others.then_some(source),
        files: Vec::new(),
    };

    let server = server::server(&mut c, &file);
    let admin = server::admin(&mut c, &file);
    let log = server::log(&mut c, &file, text);
    let (listeners, listener_names) = listener::listeners(&mut c, &file, base);
    let (clusters, cluster_names) = cluster::clusters(&mut c, &file, base);
    listener::destinations(&mut c, &file, &cluster_names);
    let (filters, filter_names) = filter::filters(&mut c, &file, base);
    let routes = route::routes(&mut c, &file, &clusters, &listener_names, &cluster_names, &filter_names);
    let ha = file.ha.as_ref().and_then(|h| c.ha(h, base));
    let vips = vip::vips(&mut c, &file, base, &cluster_names);
    let bgp = anycast::bgp(&mut c, &file, base);
    let anycast = anycast::groups(&mut c, &file, &listeners, &cluster_names, &vips);

    if !c.issues.is_empty() {
        c.issues.sort_by_key(|i| (i.line, i.col));
        return Err(c.issues);
    }
    let mut certificates = Vec::new();
    for l in &listeners {
        for (cert, _) in l.tls.iter().flat_map(|t| t.certificates.iter()) {
            if let Some(not_after) = crate::tls::not_after(cert) {
                certificates.push(CertificateExpiry {
                    used_by: format!("listener/{}", l.name),
                    path: cert.clone(),
                    not_after,
                });
            }
        }
    }
    if let Some(h) = &ha {
        if let Some(not_after) = crate::tls::not_after(&h.group.tls.cert) {
            certificates.push(CertificateExpiry {
                used_by: "ha".into(),
                path: h.group.tls.cert.clone(),
                not_after,
            });
        }
    }
    Ok(Config {
        source: source.to_string(),
        certificates,
        hash: fnv1a(text.as_bytes()),
        server,
        admin,
        log,
        listeners,
        routes,
        clusters,
        warnings: c.warnings,
        files: c.files,
        ha,
        filters,
        vips,
        bgp,
        anycast,
    })
}
