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
/// and builds the configuration, with every problem found. With problems, the
/// configuration holds what could be built (placeholders elsewhere): enough for the
/// later steps to report their own problems in the same pass, never to run.
pub(crate) fn validate(
    source: &str,
    text: &str,
    lines: &LineIndex,
    file: ConfigFile,
    base: &std::path::Path,
    readable_by_others: bool,
) -> (Config, Vec<ConfigIssue>) {
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

    c.issues.sort_by_key(|i| (i.line, i.col));
    let config = Config {
        source: source.to_string(),
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
    };
    (config, c.issues)
}
