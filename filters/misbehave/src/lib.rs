//! A deliberately broken filter for tests: the request header `x-misbehave` picks how
//! it fails in `on_request_headers` — `loop` (never returns), `alloc` (allocates past
//! any cap), `trap` (unreachable), `oob` (hands the host an out-of-bounds pointer),
//! `panic` (a Rust panic, as a buggy filter would). Anything else passes.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root));
}}

struct Root;
impl Context for Root {}
impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Misbehave))
    }
}

struct Misbehave;
impl Context for Misbehave {}
impl HttpContext for Misbehave {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        match self.get_http_request_header("x-misbehave").as_deref() {
            Some("loop") => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Some("alloc") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Some("trap") => core::arch::wasm32::unreachable(),
            Some("oob") => unsafe {
                proxy_log(2, 0xFFFF_FF00usize as *const u8, 4096);
            },
            Some("panic") => panic!("misbehave: panic in on_request_headers"),
            _ => {}
        }
        self.set_http_request_header("x-misbehave-passed", Some("1"));
        Action::Continue
    }
}
