//! Header rules: set, add and remove request and response headers.
//!
//! Configuration (JSON):
//! ```json
//! { "request":  { "set": {"x-env": "prod"}, "add": {"x-via": "tandem"}, "remove": ["x-debug"] },
//!   "response": { "set": {"x-frame-options": "DENY"}, "remove": ["server"] } }
//! ```

use std::collections::BTreeMap;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rules {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    request: Rules,
    #[serde(default)]
    response: Rules,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| tandem_sdk::JsonRoot::<Config>::boxed());
}}

impl tandem_sdk::JsonFilter for Config {
    fn http_context(config: Rc<Config>, _: u32) -> Box<dyn HttpContext> {
        Box::new(Headers { config })
    }
}

struct Headers {
    config: Rc<Config>,
}

impl Context for Headers {}

impl HttpContext for Headers {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let r = &self.config.request;
        for name in &r.remove {
            self.remove_http_request_header(name);
        }
        for (k, v) in &r.set {
            self.set_http_request_header(k, Some(v));
        }
        for (k, v) in &r.add {
            self.add_http_request_header(k, v);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let r = &self.config.response;
        for name in &r.remove {
            self.remove_http_response_header(name);
        }
        for (k, v) in &r.set {
            self.set_http_response_header(k, Some(v));
        }
        for (k, v) in &r.add {
            self.add_http_response_header(k, v);
        }
        Action::Continue
    }
}
