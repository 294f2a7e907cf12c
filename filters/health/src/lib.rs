//! Deep health verdicts: probes a real path on every endpoint of a cluster and judges
//! the answer's status, body and latency — more than "the port answers" — then reports
//! each endpoint healthy or unhealthy through Tandem's verdict module (the same one the
//! built-in active checks feed, shared with the pair). Runs on worker 0 only, so a node
//! probes once per interval. It needs no route: list it under `[[filter]]` only.
//!
//! ```json
//! { "cluster": "api", "path": "/healthz", "authority": "api.internal",
//!   "interval_ms": 1000, "timeout_ms": 500, "expect_status": 200,
//!   "expect_body": "\"status\":\"ok\"", "max_latency_ms": 250, "fall": 2, "rise": 1 }
//! ```

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::LogLevel;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    cluster: String,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_authority")]
    authority: String,
    #[serde(default = "default_interval")]
    interval_ms: u64,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    #[serde(default = "default_status")]
    expect_status: u16,
    expect_body: Option<String>,
    max_latency_ms: Option<u64>,
    #[serde(default = "one")]
    fall: u32,
    #[serde(default = "one")]
    rise: u32,
}

fn default_path() -> String {
    "/healthz".into()
}
fn default_authority() -> String {
    "health-check".into()
}
fn default_interval() -> u64 {
    1000
}
fn default_timeout() -> u64 {
    500
}
fn default_status() -> u16 {
    200
}
fn one() -> u32 {
    1
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Health { config: None, pending: HashMap::new(), streak: HashMap::new() }));
}}

struct Health {
    config: Option<Config>,
    /// token → (endpoint, sent at)
    pending: HashMap<u32, (String, SystemTime)>,
    /// endpoint → (consecutive passes, consecutive failures, last verdict)
    streak: HashMap<String, (u32, u32, Option<bool>)>,
}

impl Health {
    fn judge(&mut self, addr: String, passed: bool, why: &str) {
        let Some(c) = &self.config else { return };
        let s = self.streak.entry(addr.clone()).or_insert((0, 0, None));
        if passed {
            s.0 += 1;
            s.1 = 0;
        } else {
            s.1 += 1;
            s.0 = 0;
        }
        let verdict = if s.0 >= c.rise {
            Some(true)
        } else if s.1 >= c.fall {
            Some(false)
        } else {
            None
        };
        if let Some(v) = verdict {
            if s.2 != Some(v) {
                log::info!(
                    "{} {addr}: {}{}",
                    c.cluster,
                    if v { "healthy" } else { "unhealthy: " },
                    if v { "" } else { why }
                );
            }
            s.2 = Some(v);
            if let Err(e) = tandem_sdk::report_health(&c.cluster, &addr, v) {
                log::warn!("cannot report health of {addr}: {e:?}");
            }
        }
    }
}

impl Context for Health {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _: usize) {
        let Some((addr, sent)) = self.pending.remove(&token) else {
            return;
        };
        let Some(c) = &self.config else { return };
        if num_headers == 0 {
            return self.judge(addr, false, "no answer");
        }
        let status = self
            .get_http_call_response_header(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        if status != c.expect_status {
            return self.judge(addr, false, "unexpected status");
        }
        if let Some(want) = c.expect_body.clone() {
            let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
            if !String::from_utf8_lossy(&body).contains(&want) {
                return self.judge(addr, false, "unexpected body");
            }
        }
        if let Some(max) = c.max_latency_ms {
            let took = self.get_current_time().duration_since(sent).unwrap_or_default();
            if took > Duration::from_millis(max) {
                return self.judge(addr, false, "too slow");
            }
        }
        self.judge(addr, true, "")
    }
}

impl RootContext for Health {
    fn on_configure(&mut self, _: usize) -> bool {
        let Some(c) = tandem_sdk::json_config::<Config>(self.get_plugin_configuration(), |_| Ok(())) else {
            return false;
        };
        // Once per node: only worker 0 probes.
        if tandem_sdk::worker_id().unwrap_or(0) == 0 {
            self.set_tick_period(Duration::from_millis(c.interval_ms.max(50)));
        }
        self.config = Some(c);
        true
    }

    fn on_tick(&mut self) {
        let Some(c) = &self.config else { return };
        let endpoints = match tandem_sdk::cluster_endpoints(&c.cluster) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("endpoints of {}: {e:?}", c.cluster);
                return;
            }
        };
        let (path, authority, timeout) = (c.path.clone(), c.authority.clone(), c.timeout_ms);
        let cluster = c.cluster.clone();
        for e in endpoints {
            if self.pending.values().any(|(a, _)| *a == e.address) {
                continue;
            }
            let upstream = tandem_sdk::endpoint_upstream(&cluster, &e.address);
            let sent = self.get_current_time();
            match self.dispatch_http_call(
                &upstream,
                vec![(":method", "GET"), (":path", &path), (":authority", &authority)],
                None,
                vec![],
                Duration::from_millis(timeout),
            ) {
                Ok(token) => {
                    self.pending.insert(token, (e.address, sent));
                }
                Err(err) => log::warn!("probe of {} not sent: {err:?}", e.address),
            }
        }
    }
}
