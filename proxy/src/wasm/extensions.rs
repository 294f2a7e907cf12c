//! Tandem's foreign functions (`proxy_call_foreign_function`), the documented way a
//! filter reaches beyond the proxy-wasm ABI without a private import:
//!
//! - `tandem.cluster_endpoints(cluster)`: one line per endpoint,
//!   `address\tstate\tweight\tactive\tewma_us\n`, state being healthy, unhealthy,
//!   unknown, ejected, draining or drained;
//! - `tandem.report_health("cluster\taddress\thealthy|unhealthy")`: a health verdict fed
//!   to the same verdict module as the built-in active checks (and shared with the pair);
//! - `tandem.clusters()`: the cluster names, one per line;
//! - `set_envoy_filter_state(SetEnvoyFilterStateArguments)`: Envoy's own foreign
//!   function, with its protobuf argument (`path` = 1, `value` = 2, `span` = 3): sets
//!   filter state for the request's other filters, which read it with
//!   `get_property(["PATH"])` (or `["filter_state", "PATH"]`). The life span is not
//!   needed here: a request's filter state ends with the request.

use std::sync::atomic::Ordering::Relaxed;

use tandem_abi::{foreign, HealthReport};

use super::abi::status;
use super::state::HostState;

/// Runs foreign function `name`; `Err` is the status for the guest.
pub fn call(st: &mut HostState, name: &str, args: &[u8]) -> Result<Vec<u8>, i32> {
    if name == "set_envoy_filter_state" {
        let a = filter_state_args(args).ok_or(status::BAD_ARGUMENT)?;
        return match super::properties::set_filter_state(st, a.path, a.value.to_vec()) {
            status::OK => Ok(Vec::new()),
            s => Err(s),
        };
    }
    let worker = st.worker.upgrade().ok_or(status::INTERNAL_FAILURE)?;
    let rt = worker.runtime();
    match name {
        foreign::CLUSTERS => Ok(rt
            .clusters
            .iter()
            .fold(String::new(), |mut s, c| {
                tandem_abi::write_cluster(&mut s, &c.name);
                s
            })
            .into_bytes()),
        foreign::CLUSTER_ENDPOINTS => {
            let want = std::str::from_utf8(args).map_err(|_| status::BAD_ARGUMENT)?;
            let c = rt.clusters.iter().find(|c| &*c.name == want).ok_or(status::NOT_FOUND)?;
            let now = crate::clock::now_ns();
            let mut out = String::new();
            for e in &c.endpoints {
                tandem_abi::write_endpoint(
                    &mut out,
                    e.address,
                    e.stats.health.state(now),
                    e.weight,
                    e.stats.active.load(Relaxed),
                    (e.stats.ewma.get() / 1000.0) as u64,
                );
            }
            Ok(out.into_bytes())
        }
        foreign::REPORT_HEALTH => {
            let text = std::str::from_utf8(args).map_err(|_| status::BAD_ARGUMENT)?;
            let report = HealthReport::decode(text).ok_or(status::BAD_ARGUMENT)?;
            let addr: std::net::SocketAddr = report.address.parse().map_err(|_| status::BAD_ARGUMENT)?;
            let verdict = if report.healthy {
                crate::health::verdict::Verdict::Healthy
            } else {
                crate::health::verdict::Verdict::Unhealthy
            };
            let c = rt
                .clusters
                .iter()
                .find(|c| &*c.name == report.cluster)
                .ok_or(status::NOT_FOUND)?;
            let e = c
                .endpoints
                .iter()
                .find(|e| e.address == addr)
                .ok_or(status::NOT_FOUND)?;
            let pair = worker.pair();
            crate::health::verdict::apply(
                &e.stats.health,
                verdict,
                crate::health::verdict::Source::Filter,
                crate::health::verdict::Target {
                    cluster: &c.name,
                    address: addr,
                    pair: pair.as_deref(),
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

/// The fields of Envoy's `SetEnvoyFilterStateArguments` message.
#[derive(Debug, PartialEq, Eq)]
pub struct FilterStateArgs<'a> {
    /// The filter state key.
    pub path: &'a [u8],
    /// The value (a string in Envoy's message).
    pub value: &'a [u8],
}

fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Decodes a `SetEnvoyFilterStateArguments` protobuf (unknown fields skipped); `None`
/// when it is malformed or has no path.
pub fn filter_state_args(b: &[u8]) -> Option<FilterStateArgs<'_>> {
    let (mut path, mut value) = (None, &b""[..]);
    let mut at = 0;
    while at < b.len() {
        let tag = varint(b, &mut at)?;
        match tag & 7 {
            0 => {
                varint(b, &mut at)?;
            }
            1 => at = at.checked_add(8).filter(|&e| e <= b.len())?,
            5 => at = at.checked_add(4).filter(|&e| e <= b.len())?,
            2 => {
                let len = usize::try_from(varint(b, &mut at)?).ok()?;
                let end = at.checked_add(len).filter(|&e| e <= b.len())?;
                match tag >> 3 {
                    1 => path = Some(&b[at..end]),
                    2 => value = &b[at..end],
                    _ => {}
                }
                at = end;
            }
            _ => return None,
        }
    }
    Some(FilterStateArgs {
        path: path.filter(|p| !p.is_empty())?,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_s_filter_state_arguments_decode_and_malformed_ones_are_refused() {
        // path "k", value "v1", span 1 (request), and an unknown fixed32 field 9.
        let msg = [0x0a, 1, b'k', 0x12, 2, b'v', b'1', 0x18, 1, 0x4d, 1, 2, 3, 4];
        assert_eq!(
            filter_state_args(&msg),
            Some(FilterStateArgs {
                path: b"k",
                value: b"v1"
            })
        );
        assert_eq!(filter_state_args(&[0x12, 1, b'v']), None, "no path");
        assert_eq!(filter_state_args(&[0x0a, 5, b'k']), None, "length past the end");
        assert_eq!(filter_state_args(&[0x0a, 0xff]), None, "truncated varint");
        assert_eq!(filter_state_args(&[0x0b]), None, "wire type 3");
    }
}
