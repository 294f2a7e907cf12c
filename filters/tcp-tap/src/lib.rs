//! A network (L4) filter: counts bytes each way in metrics, refuses connections whose
//! first bytes start with a configured prefix, and can prepend a greeting to the first
//! data sent upstream.
//!
//! ```json
//! { "deny_prefix": "EVIL", "greeting": "hello " }
//! ```

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, PeerType};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    deny_prefix: Option<String>,
    greeting: Option<String>,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { config: Rc::new(Config::default()), metrics: (0, 0, 0) }));
}}

struct Root {
    config: Rc<Config>,
    metrics: (u32, u32, u32),
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        self.metrics = (
            hostcalls::define_metric(MetricType::Counter, "bytes_downstream").unwrap_or(0),
            hostcalls::define_metric(MetricType::Counter, "bytes_upstream").unwrap_or(0),
            hostcalls::define_metric(MetricType::Counter, "connections_refused").unwrap_or(0),
        );
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        match tandem_sdk::json_config(self.get_plugin_configuration(), |_: &Config| Ok(())) {
            Some(c) => {
                self.config = Rc::new(c);
                true
            }
            None => false,
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }

    fn create_stream_context(&self, _: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(Tap {
            config: self.config.clone(),
            metrics: self.metrics,
            first: true,
        }))
    }
}

struct Tap {
    config: Rc<Config>,
    metrics: (u32, u32, u32),
    first: bool,
}

impl Context for Tap {}

impl StreamContext for Tap {
    fn on_downstream_data(&mut self, size: usize, _eos: bool) -> Action {
        let _ = hostcalls::increment_metric(self.metrics.0, size as i64);
        if self.first && size > 0 {
            self.first = false;
            let data = self.get_downstream_data(0, size).unwrap_or_default();
            if let Some(p) = &self.config.deny_prefix {
                if data.starts_with(p.as_bytes()) {
                    let _ = hostcalls::increment_metric(self.metrics.2, 1);
                    self.close_downstream();
                    return Action::Pause;
                }
            }
            if let Some(g) = &self.config.greeting {
                self.set_downstream_data(0, 0, g.as_bytes());
            }
        }
        Action::Continue
    }

    fn on_upstream_data(&mut self, size: usize, _eos: bool) -> Action {
        let _ = hostcalls::increment_metric(self.metrics.1, size as i64);
        Action::Continue
    }

    fn on_downstream_close(&mut self, _peer: PeerType) {}
}
