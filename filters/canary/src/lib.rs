//! Canary router: sends a request to the canary cluster when it carries a header, a
//! cookie, or falls in a percentage (decided from a hash of a sticky key so a client
//! stays on one side), through Tandem's `tandem.upstream.cluster` property.
//!
//! ```json
//! { "cluster": "api-canary", "header": "x-canary", "cookie": "canary",
//!   "percent": 5, "sticky_on": "x-user-id", "mark_response": true }
//! ```

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    cluster: String,
    /// A request with this header (any value but "0"/"false") goes to the canary.
    header: Option<String>,
    /// A request with this cookie set to "1"/"true"/"always" goes to the canary;
    /// "0"/"never" keeps it off.
    cookie: Option<String>,
    /// Percentage of the remaining requests.
    #[serde(default)]
    percent: f64,
    /// Header whose value decides the percentage bucket (else x-request-id).
    sticky_on: Option<String>,
    /// Add `x-canary: 1|0` to responses.
    #[serde(default)]
    mark_response: bool,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| tandem_sdk::JsonRoot::<Config>::boxed());
}}

impl tandem_sdk::JsonFilter for Config {
    fn check(&self) -> Result<(), &'static str> {
        if (0.0..=100.0).contains(&self.percent) {
            Ok(())
        } else {
            Err("percent must be within 0..=100")
        }
    }

    fn http_context(config: Rc<Config>, _: u32) -> Box<dyn HttpContext> {
        Box::new(Canary { config, chosen: false })
    }
}

struct Canary {
    config: Rc<Config>,
    chosen: bool,
}

/// FNV-1a, stable across builds.
fn bucket(key: &[u8]) -> f64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % 10_000) as f64 / 100.0
}

fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

impl Canary {
    fn decide(&self) -> bool {
        let c = &self.config;
        if let Some(h) = &c.header {
            if let Some(v) = self.get_http_request_header(h) {
                return !matches!(v.as_str(), "0" | "false");
            }
        }
        if let Some(name) = &c.cookie {
            if let Some(v) = self
                .get_http_request_header("cookie")
                .as_deref()
                .and_then(|h| cookie(h, name).map(str::to_string))
            {
                match v.as_str() {
                    "1" | "true" | "always" => return true,
                    "0" | "false" | "never" => return false,
                    _ => {}
                }
            }
        }
        if c.percent <= 0.0 {
            return false;
        }
        let key = c
            .sticky_on
            .as_deref()
            .and_then(|h| self.get_http_request_header_bytes(h))
            .or_else(|| self.get_http_request_header_bytes("x-request-id"))
            .unwrap_or_default();
        bucket(&key) < c.percent
    }
}

impl Context for Canary {}

impl HttpContext for Canary {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.chosen = self.decide();
        if self.chosen {
            if let Err(e) = tandem_sdk::route_to_cluster(&self.config.cluster) {
                log::warn!("cannot route to the canary: {e:?}");
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if self.config.mark_response {
            self.set_http_response_header("x-canary", Some(if self.chosen { "1" } else { "0" }));
        }
        Action::Continue
    }
}
