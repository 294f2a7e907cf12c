//! Tenant affinity: requests of one tenant (a header) go to the same endpoint of the
//! cluster while it is healthy, chosen by rendezvous hashing over the live endpoints
//! (so when one leaves, only its tenants move). Uses Tandem's live endpoint list and
//! endpoint routing.
//!
//! ```json
//! { "header": "x-tenant", "cluster": "api" }
//! ```

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    header: String,
    cluster: String,
    /// Add `x-tandem-affinity: ip:port` to responses.
    #[serde(default)]
    mark_response: bool,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| tandem_sdk::JsonRoot::<Config>::boxed());
}}

impl tandem_sdk::JsonFilter for Config {
    fn http_context(config: Rc<Config>, _: u32) -> Box<dyn HttpContext> {
        Box::new(Affinity { config, chosen: None })
    }
}

struct Affinity {
    config: Rc<Config>,
    chosen: Option<String>,
}

fn score(tenant: &[u8], endpoint: &str, weight: u32) -> f64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in tenant.iter().chain([0u8].iter()).chain(endpoint.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    // Weighted rendezvous: -w / ln(u), u in (0, 1).
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight.max(1)) / u.ln()
}

impl Context for Affinity {}

impl HttpContext for Affinity {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(tenant) = self.get_http_request_header_bytes(&self.config.header) else {
            return Action::Continue;
        };
        let endpoints = match tandem_sdk::cluster_endpoints(&self.config.cluster) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("endpoints of {}: {e:?}", self.config.cluster);
                return Action::Continue;
            }
        };
        let best = endpoints.iter().filter(|e| e.state.takes_traffic()).max_by(|a, b| {
            score(&tenant, &a.address, a.weight)
                .partial_cmp(&score(&tenant, &b.address, b.weight))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        if let Some(e) = best {
            let _ = tandem_sdk::route_to_cluster(&self.config.cluster);
            let _ = tandem_sdk::route_to_endpoint(&e.address);
            self.chosen = Some(e.address.clone());
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if self.config.mark_response {
            if let Some(a) = &self.chosen {
                self.set_http_response_header("x-tandem-affinity", Some(a));
            }
        }
        Action::Continue
    }
}
