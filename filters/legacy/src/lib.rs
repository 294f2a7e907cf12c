//! A filter built with proxy-wasm SDK 0.1 (ABI 0.1.0): adds `x-legacy: <config>` to
//! requests and `x-legacy-abi: 0.1.0` to responses. Keeps hosts honest about 0.1.0.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use proxy_wasm_01 as proxy_wasm;

#[no_mangle]
pub fn _start() {
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { tag: String::new() }) });
}

struct Root {
    tag: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        self.tag = self
            .get_configuration()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Legacy { tag: self.tag.clone() }))
    }
}

struct Legacy {
    tag: String,
}

impl Context for Legacy {}

impl HttpContext for Legacy {
    fn on_http_request_headers(&mut self, _: usize) -> Action {
        self.set_http_request_header("x-legacy", Some(&self.tag));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize) -> Action {
        self.set_http_response_header("x-legacy-abi", Some("0.1.0"));
        Action::Continue
    }
}
