//! External authorisation through a gRPC service, written as Envoy filters built with
//! the Rust SDK do it (the SDK's `grpc_auth_random` pattern): each request is paused
//! while a unary call asks the service, then resumed or denied. The service answers
//! with a message `allow` or anything else (deny); a call that fails (an error
//! status, a timeout, an unreachable service) answers `failure_status` with the gRPC
//! status and message in `x-authz-grpc-status` / `x-authz-grpc-message`, never a trap.
//!
//! A request with `x-authz-stream: N` instead opens a bidirectional stream to
//! `stream_method`, sends N messages `m1`…`mN`, half-closes, and answers with what came
//! back (one line per message) and the stream's metadata in headers: how a filter uses
//! streaming calls. With `x-authz-cancel` as well it cancels the stream when the server's
//! initial metadata arrives and lets the request go on (`x-authz: cancelled`).
//!
//! With `"via": "http"` the same check goes to an HTTP service instead (`POST /authz`
//! with the user in `x-user`; a 2xx answer allows): the two callouts side by side
//! (bench/wasm.py measures both).
//!
//! ```json
//! { "cluster": "authz", "service": "tandem.test.Authz", "method": "Check",
//!   "stream_method": "Stream", "timeout_ms": 500, "user_header": "x-user",
//!   "failure_status": 503, "via": "grpc" }
//! ```

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    cluster: String,
    service: String,
    #[serde(default = "default_method")]
    method: String,
    #[serde(default = "default_stream_method")]
    stream_method: String,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    #[serde(default = "default_user_header")]
    user_header: String,
    #[serde(default = "default_failure_status")]
    failure_status: u32,
    #[serde(default)]
    via: Via,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Via {
    #[default]
    Grpc,
    Http,
}

fn default_method() -> String {
    "Check".into()
}
fn default_stream_method() -> String {
    "Stream".into()
}
fn default_timeout() -> u64 {
    500
}
fn default_user_header() -> String {
    "x-user".into()
}
fn default_failure_status() -> u32 {
    503
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| tandem_sdk::JsonRoot::<Config>::boxed());
}}

impl tandem_sdk::JsonFilter for Config {
    fn http_context(config: Rc<Config>, _: u32) -> Box<dyn HttpContext> {
        Box::new(Authz {
            config,
            echoed: Vec::new(),
            initial: None,
            cancel: false,
        })
    }
}

struct Authz {
    config: Rc<Config>,
    /// Messages received on the stream.
    echoed: Vec<String>,
    /// `x-initial` of the stream's initial metadata.
    initial: Option<String>,
    /// Cancel the stream when the server's initial metadata arrives.
    cancel: bool,
}

impl Authz {
    fn fail(&self, status: u32) {
        let (code, message) = self.get_grpc_status();
        let code = code.to_string();
        let message = message.unwrap_or_default();
        self.send_http_response(
            self.config.failure_status,
            vec![
                ("x-authz-grpc-status", code.as_str()),
                ("x-authz-grpc-message", message.as_str()),
                ("x-authz-close-status", &status.to_string()),
            ],
            Some(b"authorisation service unavailable\n"),
        );
    }
}

impl HttpContext for Authz {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let c = &self.config;
        if let Some(n) = self.get_http_request_header("x-authz-stream") {
            let n: usize = n.parse().unwrap_or(1);
            let token = match self.open_grpc_stream(
                &c.cluster,
                &c.service,
                &c.stream_method,
                vec![("x-hello", b"from-filter")],
            ) {
                Ok(t) => t,
                Err(_) => {
                    self.send_http_response(500, vec![], Some(b"stream not opened\n"));
                    return Action::Pause;
                }
            };
            self.cancel = self.get_http_request_header("x-authz-cancel").is_some();
            for i in 1..=n {
                self.send_grpc_stream_message(token, Some(format!("m{i}").as_bytes()), i == n && !self.cancel);
            }
            return Action::Pause;
        }
        let user = self.get_http_request_header(&c.user_header).unwrap_or_default();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        if c.via == Via::Http {
            let sent = self.dispatch_http_call(
                &c.cluster,
                vec![
                    (":method", "POST"),
                    (":path", "/authz"),
                    (":authority", &c.cluster),
                    ("x-user", &user),
                ],
                Some(path.as_bytes()),
                vec![],
                Duration::from_millis(c.timeout_ms),
            );
            if sent.is_err() {
                self.send_http_response(500, vec![], Some(b"call not dispatched\n"));
            }
            return Action::Pause;
        }
        match self.dispatch_grpc_call(
            &c.cluster,
            &c.service,
            &c.method,
            vec![("x-user", user.as_bytes())],
            Some(path.as_bytes()),
            Duration::from_millis(c.timeout_ms),
        ) {
            Ok(_) => Action::Pause,
            Err(e) => {
                self.send_http_response(500, vec![], Some(format!("call not dispatched: {e:?}\n").as_bytes()));
                Action::Pause
            }
        }
    }
}

impl Context for Authz {
    fn on_http_call_response(&mut self, _token: u32, headers: usize, _body: usize, _trailers: usize) {
        let status = self.get_http_call_response_header(":status").unwrap_or_default();
        if headers > 0 && status.starts_with('2') {
            self.set_http_request_header("x-authz", Some("allowed"));
            self.resume_http_request();
        } else if headers > 0 {
            self.send_http_response(403, vec![("x-authz", "denied")], Some(b"denied\n"));
        } else {
            self.send_http_response(
                self.config.failure_status,
                vec![],
                Some(b"authorisation service unavailable\n"),
            );
        }
    }

    fn on_grpc_call_response(&mut self, _token: u32, status: u32, size: usize) {
        if status != 0 {
            return self.fail(status);
        }
        let answer = self.get_grpc_call_response_body(0, size).unwrap_or_default();
        if answer == b"allow" {
            self.set_http_request_header("x-authz", Some("allowed"));
            self.resume_http_request();
        } else {
            self.send_http_response(
                403,
                vec![("x-authz", "denied")],
                Some(b"denied by the authorisation service\n"),
            );
        }
    }

    fn on_grpc_stream_initial_metadata(&mut self, token: u32, _n: u32) {
        if self.cancel {
            // Given up once the server answered: nothing more is delivered for it.
            self.cancel_grpc_stream(token);
            self.set_http_request_header("x-authz", Some("cancelled"));
            self.resume_http_request();
            return;
        }
        self.initial = self
            .get_grpc_stream_initial_metadata_value("x-initial")
            .map(|v| String::from_utf8_lossy(&v).into_owned());
    }

    fn on_grpc_stream_message(&mut self, _token: u32, size: usize) {
        let m = self.get_grpc_stream_message(0, size).unwrap_or_default();
        self.echoed.push(String::from_utf8_lossy(&m).into_owned());
    }

    fn on_grpc_stream_trailing_metadata(&mut self, _token: u32, _n: u32) {
        if let Some(v) = self.get_grpc_stream_trailing_metadata_value("x-trailing") {
            self.initial = Some(format!(
                "{}|{}",
                self.initial.clone().unwrap_or_default(),
                String::from_utf8_lossy(&v)
            ));
        }
    }

    fn on_grpc_stream_close(&mut self, _token: u32, status: u32) {
        if status != 0 {
            return self.fail(status);
        }
        let body = self.echoed.join("\n") + "\n";
        let meta = self.initial.clone().unwrap_or_default();
        self.send_http_response(200, vec![("x-stream-metadata", meta.as_str())], Some(body.as_bytes()));
    }
}
