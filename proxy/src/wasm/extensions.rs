//! Tandem's foreign functions (`proxy_call_foreign_function`), the documented way a
//! filter reaches beyond the proxy-wasm ABI without a private import:
//!
//! - `tandem.cluster_endpoints(cluster)`: one line per endpoint,
//!   `address\tstate\tweight\tactive\tewma_us\n`, state being healthy, unhealthy,
//!   unknown, ejected, draining or drained;
//! - `tandem.report_health("cluster\taddress\thealthy|unhealthy")`: a health verdict fed
//!   to the same verdict module as the built-in active checks (and shared with the pair);
//! - `tandem.clusters()`: the cluster names, one per line.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use super::abi::status;
use super::state::HostState;

/// Runs foreign function `name`; `Err` is the status for the guest.
pub fn call(st: &mut HostState, name: &str, args: &[u8]) -> Result<Vec<u8>, i32> {
    let worker = st.worker.upgrade().ok_or(status::INTERNAL_FAILURE)?;
    let rt = worker.shared.runtime.load();
    match name {
        "tandem.clusters" => Ok(rt
            .clusters
            .iter()
            .fold(String::new(), |mut s, c| {
                s.push_str(&c.name);
                s.push('\n');
                s
            })
            .into_bytes()),
        "tandem.cluster_endpoints" => {
            let want = std::str::from_utf8(args).map_err(|_| status::BAD_ARGUMENT)?;
            let c = rt.clusters.iter().find(|c| &*c.name == want).ok_or(status::NOT_FOUND)?;
            let now = crate::balancer::p2c_ewma::now_ns();
            let mut out = String::new();
            for e in &c.endpoints {
                let _ = writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}",
                    e.address,
                    e.stats.health.state_name(now),
                    e.weight,
                    e.stats.active.load(Relaxed),
                    (e.stats.ewma.get() / 1000.0) as u64
                );
            }
            Ok(out.into_bytes())
        }
        "tandem.report_health" => {
            let text = std::str::from_utf8(args).map_err(|_| status::BAD_ARGUMENT)?;
            let mut it = text.trim_end().split('\t');
            let (Some(cluster), Some(addr), Some(verdict)) = (it.next(), it.next(), it.next()) else {
                return Err(status::BAD_ARGUMENT);
            };
            let addr: std::net::SocketAddr = addr.parse().map_err(|_| status::BAD_ARGUMENT)?;
            let verdict = match verdict {
                "healthy" => crate::health::verdict::Verdict::Healthy,
                "unhealthy" => crate::health::verdict::Verdict::Unhealthy,
                _ => return Err(status::BAD_ARGUMENT),
            };
            let c = rt
                .clusters
                .iter()
                .find(|c| &*c.name == cluster)
                .ok_or(status::NOT_FOUND)?;
            let e = c
                .endpoints
                .iter()
                .find(|e| e.address == addr)
                .ok_or(status::NOT_FOUND)?;
            crate::health::verdict::apply(
                &e.stats.health,
                verdict,
                crate::health::verdict::Source::Filter,
                crate::health::verdict::Target {
                    cluster: &c.name,
                    address: addr,
                },
                None,
                0,
                c.endpoints.len(),
            );
            Ok(Vec::new())
        }
        _ => Err(status::NOT_FOUND),
    }
}
