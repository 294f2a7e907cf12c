//! Tandem's extensions to proxy-wasm as they travel between host and guest: the names
//! of the properties and foreign functions, and the text records their arguments and
//! answers are made of. The host (`tandem-proxy`) and the guest SDK (`tandem-sdk`)
//! both encode and decode through this crate, so the two sides cannot drift apart.
//! It has no dependencies and builds for `wasm32-wasip1` as for the host.
//!
//! Records are tab-separated fields, one record per line.

#![no_std]
#![warn(missing_docs, unreachable_pub)]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::{self, Write};

/// Property names (`get_property` / `set_property` paths joined by `.`).
pub mod property {
    /// Set by a filter: the cluster (by name) its request goes to.
    pub const UPSTREAM_CLUSTER: &str = "tandem.upstream.cluster";
    /// Set by a filter: the endpoint (`ip:port`, within its cluster) of its request's
    /// first attempt.
    pub const UPSTREAM_ENDPOINT: &str = "tandem.upstream.endpoint";
    /// Read by a filter: this worker's number, an `i64` little-endian.
    pub const WORKER_ID: &str = "tandem.worker_id";
    /// Read by a filter: this node's id in the pair, an `i64` little-endian.
    pub const NODE_ID: &str = "tandem.node_id";
}

/// Foreign function names (`proxy_call_foreign_function`).
pub mod foreign {
    /// No argument; answers the cluster names, one per line.
    pub const CLUSTERS: &str = "tandem.clusters";
    /// Argument: a cluster name; answers one [`crate::Endpoint`] record per line.
    pub const CLUSTER_ENDPOINTS: &str = "tandem.cluster_endpoints";
    /// Argument: one [`crate::HealthReport`] record; answers nothing.
    pub const REPORT_HEALTH: &str = "tandem.report_health";
}

/// An endpoint's state as the host reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    /// Passing checks.
    Healthy,
    /// Failing checks.
    Unhealthy,
    /// Not checked (or not yet).
    Unknown,
    /// Ejected by outlier detection.
    Ejected,
    /// Being drained by the operator.
    Draining,
    /// Drained.
    Drained,
}

impl EndpointState {
    /// Every state, in the order status pages and metrics list them.
    pub const ALL: [EndpointState; 6] = [
        EndpointState::Healthy,
        EndpointState::Unhealthy,
        EndpointState::Unknown,
        EndpointState::Ejected,
        EndpointState::Draining,
        EndpointState::Drained,
    ];

    /// The state's name on the wire (and on status pages and metrics).
    pub const fn name(self) -> &'static str {
        match self {
            EndpointState::Healthy => "healthy",
            EndpointState::Unhealthy => "unhealthy",
            EndpointState::Unknown => "unknown",
            EndpointState::Ejected => "ejected",
            EndpointState::Draining => "draining",
            EndpointState::Drained => "drained",
        }
    }

    /// The state named `s`; an unknown name (a newer host) reads as `Unknown`.
    pub fn parse(s: &str) -> EndpointState {
        EndpointState::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .unwrap_or(EndpointState::Unknown)
    }

    /// Whether the balancer would send new requests there.
    pub fn takes_traffic(self) -> bool {
        matches!(self, EndpointState::Healthy | EndpointState::Unknown)
    }
}

/// One endpoint of a cluster with its live figures: a `tandem.cluster_endpoints` record,
/// `address\tstate\tweight\tactive\tewma_us`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `ip:port`.
    pub address: String,
    /// Health.
    pub state: EndpointState,
    /// Configured weight.
    pub weight: u32,
    /// Requests in flight (all workers).
    pub active: u64,
    /// Peak-EWMA latency, microseconds.
    pub ewma_us: u64,
}

/// Appends one endpoint record to `out` (the host's side; no intermediate value).
pub fn write_endpoint(
    out: &mut String,
    address: impl fmt::Display,
    state: EndpointState,
    weight: u32,
    active: u64,
    ewma_us: u64,
) {
    let _ = writeln!(out, "{address}\t{}\t{weight}\t{active}\t{ewma_us}", state.name());
}

/// Parses a `tandem.cluster_endpoints` answer; malformed lines are skipped.
pub fn parse_endpoints(text: &str) -> Vec<Endpoint> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some(Endpoint {
                address: f.next()?.to_string(),
                state: EndpointState::parse(f.next()?),
                weight: f.next()?.parse().ok()?,
                active: f.next()?.parse().ok()?,
                ewma_us: f.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// Appends one cluster name to a `tandem.clusters` answer.
pub fn write_cluster(out: &mut String, name: &str) {
    out.push_str(name);
    out.push('\n');
}

/// The cluster names of a `tandem.clusters` answer.
pub fn parse_clusters(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
}

/// A filter's health verdict on one endpoint: the `tandem.report_health` argument,
/// `cluster\taddress\thealthy|unhealthy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthReport<'a> {
    /// The cluster's name.
    pub cluster: &'a str,
    /// The endpoint's `ip:port`.
    pub address: &'a str,
    /// The verdict.
    pub healthy: bool,
}

impl<'a> HealthReport<'a> {
    /// The record as sent.
    pub fn encode(&self) -> String {
        let verdict = if self.healthy { "healthy" } else { "unhealthy" };
        let mut s = String::with_capacity(self.cluster.len() + self.address.len() + 12);
        let _ = write!(s, "{}\t{}\t{verdict}", self.cluster, self.address);
        s
    }

    /// The record received; `None` when it has not three fields or the verdict is
    /// neither `healthy` nor `unhealthy`.
    pub fn decode(text: &'a str) -> Option<HealthReport<'a>> {
        let mut it = text.trim_end().split('\t');
        let (cluster, address, verdict) = (it.next()?, it.next()?, it.next()?);
        let healthy = match verdict {
            "healthy" => true,
            "unhealthy" => false,
            _ => return None,
        };
        Some(HealthReport {
            cluster,
            address,
            healthy,
        })
    }
}

/// The upstream name that sends an `http_call` (or gRPC call) to one endpoint of a
/// cluster, whatever its state: `cluster@ip:port`.
pub fn endpoint_upstream(cluster: &str, address: &str) -> String {
    let mut s = String::with_capacity(cluster.len() + address.len() + 1);
    s.push_str(cluster);
    s.push('@');
    s.push_str(address);
    s
}

/// Splits a call's upstream name into its cluster and, for `cluster@ip:port`, the
/// pinned endpoint's address.
pub fn split_upstream(name: &str) -> (&str, Option<&str>) {
    match name.split_once('@') {
        Some((c, a)) => (c, Some(a)),
        None => (name, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_records_round_trip_and_bad_lines_are_skipped() {
        let mut out = String::new();
        write_endpoint(&mut out, "127.0.0.1:1", EndpointState::Healthy, 1, 0, 250);
        write_endpoint(&mut out, "127.0.0.1:2", EndpointState::Ejected, 3, 7, 0);
        out.push_str("bad\n");
        let e = parse_endpoints(&out);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].state, EndpointState::Healthy);
        assert_eq!((e[1].weight, e[1].active), (3, 7));
        assert!(!e[1].state.takes_traffic());
        assert_eq!(EndpointState::parse("from-a-newer-host"), EndpointState::Unknown);
    }

    #[test]
    fn health_reports_and_upstream_names_round_trip() {
        let r = HealthReport {
            cluster: "api",
            address: "10.0.0.1:80",
            healthy: false,
        };
        assert_eq!(HealthReport::decode(&r.encode()), Some(r));
        assert_eq!(HealthReport::decode("api\t10.0.0.1:80\tmaybe"), None);
        assert_eq!(HealthReport::decode("api\t10.0.0.1:80"), None);
        assert_eq!(
            split_upstream(&endpoint_upstream("api", "10.0.0.1:80")),
            ("api", Some("10.0.0.1:80"))
        );
        assert_eq!(split_upstream("api"), ("api", None));
        let mut list = String::new();
        write_cluster(&mut list, "a");
        write_cluster(&mut list, "b");
        assert_eq!(parse_clusters(&list).collect::<Vec<_>>(), ["a", "b"]);
    }
}
