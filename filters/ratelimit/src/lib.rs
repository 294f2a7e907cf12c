//! Per-key rate limiter on proxy-wasm shared data (fixed window, compare-and-swap so
//! every worker's copy counts into one window). Over the limit: 429 with
//! `Retry-After` and `RateLimit-*` headers. With a `prefix` equal to the filter's
//! `shared_prefix`, windows are replicated to the pair.
//!
//! ```json
//! { "requests": 100, "period_s": 60, "key": "header:x-api-key", "prefix": "rl/" }
//! ```
//! `key` is `header:NAME` or `source` (client IP); requests without the header share
//! the key "-".

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel, Status};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    requests: u64,
    #[serde(default = "default_period")]
    period_s: u64,
    #[serde(default = "default_key")]
    key: String,
    #[serde(default)]
    prefix: String,
}

fn default_period() -> u64 {
    1
}
fn default_key() -> String {
    "source".into()
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| tandem_sdk::JsonRoot::<Config>::boxed());
}}

impl tandem_sdk::JsonFilter for Config {
    fn check(&self) -> Result<(), &'static str> {
        if self.requests > 0 && self.period_s > 0 && (self.key == "source" || self.key.starts_with("header:")) {
            Ok(())
        } else {
            Err("requests and period_s must be > 0; key is \"source\" or \"header:NAME\"")
        }
    }

    fn http_context(config: Rc<Config>, _: u32) -> Box<dyn HttpContext> {
        Box::new(Limit {
            config,
            remaining: None,
        })
    }
}

struct Limit {
    config: Rc<Config>,
    remaining: Option<(u64, u64)>,
}

fn decode(v: &[u8]) -> (u64, u64) {
    if v.len() != 16 {
        return (0, 0);
    }
    (
        u64::from_le_bytes(v[..8].try_into().unwrap_or_default()),
        u64::from_le_bytes(v[8..].try_into().unwrap_or_default()),
    )
}

impl Limit {
    fn key(&self) -> String {
        let c = &self.config;
        let who = match c.key.strip_prefix("header:") {
            Some(h) => self.get_http_request_header(h).unwrap_or_else(|| "-".into()),
            None => self
                .get_property(vec!["source", "address"])
                .map(|a| {
                    let a = String::from_utf8_lossy(&a).into_owned();
                    a.rsplit_once(':').map_or(a.clone(), |(ip, _)| ip.to_string())
                })
                .unwrap_or_else(|| "-".into()),
        };
        format!("{}ratelimit:{who}", c.prefix)
    }

    /// Counts this request; returns (count in window, seconds until the window ends).
    fn take(&self, key: &str, now: u64) -> Option<(u64, u64)> {
        let period = self.config.period_s;
        let window = now - now % period;
        for _ in 0..16 {
            let (value, cas) = self.get_shared_data(key);
            let (w, n) = value.as_deref().map(decode).unwrap_or((0, 0));
            let n = if w == window { n + 1 } else { 1 };
            let mut next = window.to_le_bytes().to_vec();
            next.extend_from_slice(&n.to_le_bytes());
            match self.set_shared_data(key, Some(&next), cas) {
                Ok(()) => return Some((n, window + period - now)),
                Err(Status::CasMismatch) => continue,
                Err(e) => {
                    log::warn!("shared data: {e:?}");
                    return None;
                }
            }
        }
        None
    }
}

impl Context for Limit {}

impl HttpContext for Limit {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let now = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let key = self.key();
        let Some((n, reset)) = self.take(&key, now) else {
            return Action::Continue;
        };
        let limit = self.config.requests;
        if n > limit {
            let (limit_s, reset_s) = (limit.to_string(), reset.max(1).to_string());
            self.send_http_response(
                429,
                vec![
                    ("retry-after", reset_s.as_str()),
                    ("ratelimit-limit", limit_s.as_str()),
                    ("ratelimit-remaining", "0"),
                    ("ratelimit-reset", reset_s.as_str()),
                ],
                Some(b"rate limit exceeded\n"),
            );
            return Action::Pause;
        }
        self.remaining = Some((limit - n, reset));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if let Some((left, reset)) = self.remaining {
            self.set_http_response_header("ratelimit-limit", Some(&self.config.requests.to_string()));
            self.set_http_response_header("ratelimit-remaining", Some(&left.to_string()));
            self.set_http_response_header("ratelimit-reset", Some(&reset.max(1).to_string()));
        }
        Action::Continue
    }
}
