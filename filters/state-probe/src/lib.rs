//! Route metadata and filter state as Envoy filters use them, for the tests: with
//! configuration `writer` it reads the route's metadata into request headers and hands
//! the `x-user` header to later filters through Envoy's `set_envoy_filter_state` foreign
//! function (and `proxy_set_property`); with `reader` it reads both back into headers.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { writer: false }));
}}

struct Root {
    writer: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        self.writer = self.get_plugin_configuration().as_deref() == Some(b"writer");
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe { writer: self.writer }))
    }
}

struct Probe {
    writer: bool,
}

/// Envoy's `SetEnvoyFilterStateArguments { path = 1; value = 2; span = 3 }`.
fn filter_state_message(path: &str, value: &str) -> Vec<u8> {
    let mut m = vec![0x0a, path.len() as u8];
    m.extend_from_slice(path.as_bytes());
    m.extend_from_slice(&[0x12, value.len() as u8]);
    m.extend_from_slice(value.as_bytes());
    m.extend_from_slice(&[0x18, 1]);
    m
}

fn text(v: Option<Vec<u8>>) -> String {
    v.map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|| "none".into())
}

impl Context for Probe {}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if self.writer {
            // A namespace with dots in it is one path segment.
            let greeting = self.get_property(vec![
                "route_metadata",
                "filter_metadata",
                "envoy.filters.http.lua",
                "greeting",
            ]);
            self.set_http_request_header("x-greeting", Some(&text(greeting)));
            let limit = self
                .get_property(vec!["metadata", "filter_metadata", "tandem", "limit"])
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(i64::from_le_bytes);
            self.set_http_request_header("x-limit", Some(&format!("{limit:?}")));
            let flags = self.get_property(vec!["xds", "route_metadata", "filter_metadata", "tandem", "flags"]);
            self.set_http_request_header("x-flags", Some(&text(flags)));
            let nested = self.get_property(vec!["route_metadata", "filter_metadata", "envoy", "filters"]);
            self.set_http_request_header("x-nested", Some(&text(nested)));
            let user = self.get_http_request_header("x-user").unwrap_or_default();
            let msg = filter_state_message("tandem.example.user", &user);
            let set = self.call_foreign_function("set_envoy_filter_state", Some(&msg));
            self.set_http_request_header("x-state-set", Some(if set.is_ok() { "ok" } else { "failed" }));
            self.set_property(vec!["plain.key"], Some(b"plain-value"));
        } else {
            let user = self.get_property(vec!["tandem.example.user"]);
            self.set_http_request_header("x-state-user", Some(&text(user)));
            let via = self.get_property(vec!["filter_state", "tandem.example.user"]);
            self.set_http_request_header("x-state-via", Some(&text(via)));
            let plain = self.get_property(vec!["plain.key"]);
            self.set_http_request_header("x-plain", Some(&text(plain)));
            let split = self.get_property(vec!["plain", "key"]);
            self.set_http_request_header("x-plain-split", Some(&text(split)));
        }
        Action::Continue
    }
}
