//! Exercises the host's proxy-wasm ABI the way an Envoy filter would, using only the
//! plain `proxy-wasm` crate (no Tandem SDK), and reports what it saw so tests can assert
//! it. Paths:
//!
//! - `/abi/headers`: header maps, properties, filter state, shared data with CAS,
//!   queues, metrics, logging, time, buffers, foreign functions, gRPC refusals,
//!   effective context — answered locally with one `name: ok|FAIL …` line per check;
//! - `/abi/callout`: pauses, `http_call`s the `backend` cluster, answers locally with
//!   the callout's status and body (from the async callback);
//! - `/abi/resume`: pauses, `http_call`s, then adds a header and resumes the request;
//! - `/abi/late`: passes the request; pauses the response headers, `http_call`s, then
//!   adds `x-late-callout-status` and resumes the response;
//! - `/abi/body`: buffers the request body to its end and upper-cases it; appends a
//!   line to the response body;
//! - `/abi/grpc`: a gRPC trailers-only local reply;
//! - `/abi/reset`: resets the stream;
//! - `/abi/counters`: ticks and queue deliveries seen so far.
//!
//! Every response gets `x-abi-response: 1` and `x-abi-request-path` (the request's
//! `:path`, read back in the response phase), response trailers get `x-abi-trailer`
//! (naming the `grpc-status` seen); every completed stream bumps the metric `logged`
//! in `on_log`, and `logged_with_request` when the request's `:path` header and
//! `request.path` property are still readable there (as in Envoy).

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, GrpcStatusCode, LogLevel, MetricType, Status};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { queue: 0, logged: 0, logged_with_request: 0 }));
}}

struct Root {
    queue: u32,
    logged: u32,
    logged_with_request: u32,
}

fn bump(key: &str, by: u64) {
    for _ in 0..32 {
        let (v, cas) = hostcalls::get_shared_data(key).unwrap_or((None, None));
        let n = v
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        match hostcalls::set_shared_data(key, Some((n + by).to_string().as_bytes()), cas) {
            Err(Status::CasMismatch) => continue,
            _ => return,
        }
    }
}

fn read_counter(key: &str) -> u64 {
    hostcalls::get_shared_data(key)
        .ok()
        .and_then(|(v, _)| v)
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        self.queue = self.register_shared_queue("probe-q");
        self.logged = hostcalls::define_metric(MetricType::Counter, "logged").unwrap_or(0);
        self.logged_with_request = hostcalls::define_metric(MetricType::Counter, "logged_with_request").unwrap_or(0);
        self.set_tick_period(Duration::from_millis(50));
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        // A configuration of "refuse" is rejected (tests the host's handling).
        self.get_plugin_configuration().as_deref() != Some(b"refuse")
    }

    fn on_tick(&mut self) {
        bump("ticks", 1);
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(_)) = self.dequeue_shared_queue(queue_id) {
            bump("queued", 1);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe {
            id: context_id,
            path: String::new(),
            logged: self.logged,
            logged_with_request: self.logged_with_request,
        }))
    }
}

struct Probe {
    id: u32,
    path: String,
    logged: u32,
    logged_with_request: u32,
}

struct Report(Vec<String>);

impl Report {
    fn check(&mut self, name: &str, ok: bool, detail: impl std::fmt::Debug) {
        if ok {
            self.0.push(format!("{name}: ok"));
        } else {
            self.0.push(format!("{name}: FAIL {detail:?}"));
        }
    }
}

fn i64_of(v: &Option<Vec<u8>>) -> Option<i64> {
    Some(i64::from_le_bytes(v.as_ref()?.get(..8)?.try_into().ok()?))
}

impl Probe {
    fn headers_report(&mut self) -> String {
        let mut r = Report(Vec::new());
        let all = self.get_http_request_headers();
        let has = |k: &str| all.iter().any(|(n, _)| n == k);
        r.check(
            "pseudo_headers",
            has(":method") && has(":path") && has(":authority") && has(":scheme") && !has("host"),
            &all,
        );
        r.check(
            "get_header",
            self.get_http_request_header("x-probe").as_deref() == Some("1"),
            self.get_http_request_header("x-probe"),
        );
        r.check("missing_header", self.get_http_request_header("x-nope").is_none(), ());
        self.add_http_request_header("x-added", "a");
        self.add_http_request_header("x-added", "b");
        self.set_http_request_header("x-probe", Some("2"));
        self.remove_http_request_header("x-remove-me");
        let now = self.get_http_request_headers();
        let added: Vec<_> = now
            .iter()
            .filter(|(k, _)| k == "x-added")
            .map(|(_, v)| v.as_str())
            .collect();
        r.check("add_header", added == ["a", "b"], &added);
        r.check(
            "replace_header",
            self.get_http_request_header("x-probe").as_deref() == Some("2"),
            (),
        );
        r.check(
            "remove_header",
            self.get_http_request_header("x-remove-me").is_none(),
            (),
        );
        let mut map: Vec<(String, String)> = self.get_http_request_headers();
        map.push(("x-map".into(), "1".into()));
        self.set_http_request_headers(map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect());
        r.check(
            "set_map",
            self.get_http_request_header("x-map").as_deref() == Some("1"),
            (),
        );
        r.check(
            "get_map_bytes",
            self.get_http_request_headers_bytes().len() == self.get_http_request_headers().len(),
            (),
        );
        // Properties, Envoy encoding.
        let prop = |p: Vec<&str>| self.get_property(p).map(|b| b.to_vec());
        let s = |v: Option<Vec<u8>>| v.map(|b| String::from_utf8_lossy(&b).into_owned());
        r.check(
            "request.path",
            s(prop(vec!["request", "path"])).as_deref() == Some("/abi/headers?q=1"),
            s(prop(vec!["request", "path"])),
        );
        r.check(
            "request.url_path",
            s(prop(vec!["request", "url_path"])).as_deref() == Some("/abi/headers"),
            (),
        );
        r.check(
            "request.method",
            s(prop(vec!["request", "method"])).as_deref() == Some("GET"),
            (),
        );
        r.check(
            "request.protocol",
            s(prop(vec!["request", "protocol"])).as_deref() == Some("HTTP/1.1"),
            (),
        );
        r.check(
            "request.id",
            prop(vec!["request", "id"]).is_some_and(|v| !v.is_empty()),
            (),
        );
        r.check(
            "request.time",
            i64_of(&prop(vec!["request", "time"])).is_some_and(|t| t > 1_600_000_000_000_000_000),
            (),
        );
        r.check(
            "request.headers",
            prop(vec!["request", "headers"]).is_some_and(|v| v.len() > 4),
            (),
        );
        r.check(
            "source.address",
            s(prop(vec!["source", "address"])).is_some_and(|a| a.starts_with("127.0.0.1:")),
            s(prop(vec!["source", "address"])),
        );
        r.check(
            "source.port",
            i64_of(&prop(vec!["source", "port"])).is_some_and(|p| p > 0),
            (),
        );
        r.check(
            "destination.port",
            i64_of(&prop(vec!["destination", "port"])).is_some_and(|p| p > 0),
            (),
        );
        r.check("connection.id", i64_of(&prop(vec!["connection", "id"])).is_some(), ());
        r.check("connection.mtls", prop(vec!["connection", "mtls"]) == Some(vec![0]), ());
        r.check(
            "plugin_name",
            s(prop(vec!["plugin_name"])).as_deref() == Some("abi"),
            s(prop(vec!["plugin_name"])),
        );
        r.check(
            "plugin_root_id",
            s(prop(vec!["plugin_root_id"])).as_deref() == Some("probe-root"),
            (),
        );
        r.check("route_name", s(prop(vec!["route_name"])).as_deref() == Some("abi"), ());
        r.check("unknown_property", prop(vec!["no", "such"]).is_none(), ());
        self.set_property(vec!["filter", "state"], Some(b"kept"));
        r.check(
            "set_property",
            s(prop(vec!["filter", "state"])).as_deref() == Some("kept"),
            (),
        );
        // Shared data with CAS.
        let key = format!("abi-{}", self.id);
        r.check(
            "shared_set",
            hostcalls::set_shared_data(&key, Some(b"v1"), None).is_ok(),
            (),
        );
        let (v, cas) = self.get_shared_data(&key);
        r.check(
            "shared_get",
            v.as_deref() == Some(b"v1") && cas.is_some_and(|c| c != 0),
            (&v, cas),
        );
        let stale = cas.map(|c| c.wrapping_add(1000));
        r.check(
            "shared_cas_mismatch",
            self.set_shared_data(&key, Some(b"v2"), stale) == Err(Status::CasMismatch),
            (),
        );
        r.check(
            "shared_cas_ok",
            self.set_shared_data(&key, Some(b"v2"), cas).is_ok(),
            (),
        );
        r.check("shared_missing", self.get_shared_data("abi-never-set").0.is_none(), ());
        // Queues.
        let q = self.resolve_shared_queue("abi", "probe-q");
        r.check("queue_resolve", q.is_some(), q);
        r.check(
            "queue_resolve_missing",
            self.resolve_shared_queue("abi", "nope").is_none(),
            (),
        );
        if let Some(q) = q {
            r.check("queue_enqueue", self.enqueue_shared_queue(q, Some(b"item")).is_ok(), ());
        }
        // Metrics.
        let c = hostcalls::define_metric(MetricType::Counter, "probe_counter");
        let g = hostcalls::define_metric(MetricType::Gauge, "probe_gauge");
        let h = hostcalls::define_metric(MetricType::Histogram, "probe_histogram");
        if let (Ok(c), Ok(g), Ok(h)) = (c, g, h) {
            let before = hostcalls::get_metric(c).unwrap_or(0);
            let _ = hostcalls::increment_metric(c, 2);
            r.check("metric_counter", hostcalls::get_metric(c).ok() == Some(before + 2), ());
            r.check(
                "metric_counter_negative",
                hostcalls::increment_metric(c, -1) == Err(Status::BadArgument),
                (),
            );
            let _ = hostcalls::record_metric(g, 42);
            r.check("metric_gauge", hostcalls::get_metric(g).ok() == Some(42), ());
            r.check("metric_histogram", hostcalls::record_metric(h, 7).is_ok(), ());
        } else {
            r.check("metric_define", false, (c, g, h));
        }
        // Logging, time, buffers.
        r.check("log", hostcalls::log(LogLevel::Info, "abi probe log line").is_ok(), ());
        r.check("log_level", hostcalls::get_log_level().is_ok(), ());
        let t = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        r.check("current_time", t > 1_600_000_000, t);
        let cfg = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX);
        r.check(
            "plugin_config",
            matches!(&cfg, Ok(Some(b)) if b.as_slice() == b"probe-config"),
            &cfg,
        );
        let vm = hostcalls::get_buffer(BufferType::VmConfiguration, 0, usize::MAX);
        r.check(
            "vm_config",
            matches!(&vm, Ok(Some(b)) if b.as_slice() == b"probe-vm"),
            &vm,
        );
        // Foreign functions.
        let clusters = self.call_foreign_function("tandem.clusters", None);
        r.check(
            "foreign_function",
            matches!(&clusters, Ok(Some(b)) if String::from_utf8_lossy(b).lines().any(|l| l == "backend")),
            &clusters,
        );
        r.check(
            "foreign_unknown",
            self.call_foreign_function("no.such.function", None) == Err(Status::NotFound),
            (),
        );
        // A gRPC call to a cluster that does not speak HTTP/2 is refused with a status,
        // not a crash.
        r.check(
            "grpc_call_refused",
            self.dispatch_grpc_call("backend", "svc", "M", vec![], None, Duration::from_secs(1))
                .is_err(),
            (),
        );
        r.check(
            "grpc_cancel_not_found",
            hostcalls::cancel_grpc_call(12345) == Err(Status::NotFound),
            (),
        );
        // Effective context.
        r.check(
            "effective_context",
            hostcalls::set_effective_context(self.id).is_ok(),
            (),
        );
        r.check(
            "effective_context_unknown",
            hostcalls::set_effective_context(0x7fff_fff0) == Err(Status::BadArgument),
            (),
        );
        let _ = hostcalls::set_effective_context(self.id);
        // http_call argument checks.
        r.check(
            "http_call_unknown_cluster",
            self.dispatch_http_call(
                "no-such-cluster",
                vec![(":method", "GET"), (":path", "/"), (":authority", "x")],
                None,
                vec![],
                Duration::from_secs(1),
            ) == Err(Status::BadArgument),
            (),
        );
        r.check(
            "http_call_missing_pseudo",
            self.dispatch_http_call(
                "backend",
                vec![(":method", "GET")],
                None,
                vec![],
                Duration::from_secs(1),
            ) == Err(Status::BadArgument),
            (),
        );
        r.0.join("\n") + "\n"
    }

    fn callout(&self) -> Action {
        match self.dispatch_http_call(
            "backend",
            vec![
                (":method", "GET"),
                (":path", "/headers"),
                (":authority", "callout.test"),
                ("x-from", "abi"),
            ],
            None,
            vec![],
            Duration::from_secs(2),
        ) {
            Ok(_) => Action::Pause,
            Err(e) => {
                self.send_http_response(500, vec![], Some(format!("dispatch failed: {e:?}\n").as_bytes()));
                Action::Pause
            }
        }
    }
}

impl Context for Probe {
    fn on_http_call_response(&mut self, _token: u32, num_headers: usize, body_size: usize, _: usize) {
        let status = self.get_http_call_response_header(":status").unwrap_or_default();
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        if self.path.starts_with("/abi/resume") {
            self.set_http_request_header("x-callout-status", Some(&status));
            self.set_http_request_header(":path", Some("/headers"));
            self.resume_http_request();
            return;
        }
        if self.path.starts_with("/abi/late") {
            self.set_http_response_header("x-late-callout-status", Some(&status));
            self.resume_http_response();
            return;
        }
        self.send_http_response(
            200,
            vec![
                ("x-callout-status", &status),
                ("x-callout-headers", &num_headers.to_string()),
            ],
            Some(&body),
        );
    }
}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _: usize, eos: bool) -> Action {
        self.path = self.get_http_request_header(":path").unwrap_or_default();
        let path = self.path.split('?').next().unwrap_or("").to_string();
        match path.as_str() {
            "/abi/headers" => {
                let report = self.headers_report();
                self.send_http_response(200, vec![("content-type", "text/plain")], Some(report.as_bytes()));
                Action::Pause
            }
            "/abi/callout" | "/abi/resume" => self.callout(),
            "/abi/body" => {
                self.set_http_request_header("content-length", None);
                self.set_http_request_header(":path", Some("/echo"));
                self.set_http_request_header("x-headers-eos", Some(if eos { "1" } else { "0" }));
                Action::Continue
            }
            "/abi/grpc" => {
                self.send_grpc_response(GrpcStatusCode::Unauthenticated, Some("no token"), vec![]);
                Action::Pause
            }
            "/abi/reset" => {
                self.reset_http_request();
                Action::Pause
            }
            "/abi/counters" => {
                let body = format!("ticks={}\nqueued={}\n", read_counter("ticks"), read_counter("queued"));
                self.send_http_response(200, vec![], Some(body.as_bytes()));
                Action::Pause
            }
            _ => Action::Continue,
        }
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        if !self.path.starts_with("/abi/body") {
            return Action::Continue;
        }
        if !eos {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        let upper = body.to_ascii_uppercase();
        self.set_http_request_body(0, size, &upper);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.set_http_response_header("x-abi-response", Some("1"));
        let request_path = self.get_http_request_header(":path").unwrap_or_default();
        self.set_http_response_header("x-abi-request-path", Some(&request_path));
        let code = self
            .get_property(vec!["response", "code"])
            .and_then(|v| Some(i64::from_le_bytes(v.get(..8)?.try_into().ok()?)));
        let status = self
            .get_http_response_header(":status")
            .and_then(|s| s.parse::<i64>().ok());
        self.set_http_response_header(
            "x-abi-code-matches",
            Some(if code.is_some() && code == status { "1" } else { "0" }),
        );
        if self.path.starts_with("/abi/body") {
            self.set_http_response_header("content-length", None);
        }
        if self.path.starts_with("/abi/late") {
            return self.callout();
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        if !self.path.starts_with("/abi/body") {
            return Action::Continue;
        }
        if !eos {
            return Action::Pause;
        }
        self.set_http_response_body(size, 0, b"-- seen by abi\n");
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _: usize) -> Action {
        let status = self.get_http_response_trailer("grpc-status").unwrap_or_default();
        self.add_http_response_trailer("x-abi-trailer", &format!("seen grpc-status {status}"));
        Action::Continue
    }

    fn on_log(&mut self) {
        let _ = hostcalls::increment_metric(self.logged, 1);
        let header = self.get_http_request_header(":path");
        let property = self.get_property(vec!["request", "path"]);
        if header.is_some_and(|p| !p.is_empty()) && property.is_some_and(|p| !p.is_empty()) {
            let _ = hostcalls::increment_metric(self.logged_with_request, 1);
        }
    }
}
