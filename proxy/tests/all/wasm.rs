//! proxy-wasm filters: modules built from `filters/` during the test run, loaded by a
//! real `tandem` process, exercised through real requests.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::*;

/// Builds every crate of `filters/` for wasm32-wasip1 (once per test run) and returns
/// the directory holding the `.wasm` files.
pub fn modules() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        // The toolchain file names the target; make sure it is installed.
        let _ = Command::new("rustup")
            .args(["target", "add", "wasm32-wasip1"])
            .current_dir(&root)
            .status();
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--target", "wasm32-wasip1", "--manifest-path"])
            .arg(root.join("filters/Cargo.toml"))
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building filters/ for wasm32-wasip1 failed");
        root.join("filters/target/wasm32-wasip1/release")
    })
    .clone()
}

/// The path of module `name` (`abi_probe`, `headers`, …).
pub fn module(name: &str) -> String {
    modules().join(format!("{name}.wasm")).display().to_string()
}

/// A `[[filter]]` section.
pub fn filter(name: &str, module_name: &str, extra: &str) -> String {
    format!(
        "[[filter]]\nname = \"{name}\"\npath = \"{}\"\n{extra}\n\n",
        module(module_name)
    )
}

pub fn cluster(name: &str, addrs: &[std::net::SocketAddr], extra: &str) -> String {
    let eps: Vec<String> = addrs.iter().map(|a| format!("{{ address = \"{a}\" }}")).collect();
    format!(
        "[[cluster]]\nname = \"{name}\"\n{extra}\nendpoints = [{}]\n\n",
        eps.join(", ")
    )
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-S", "-i", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    (head.to_lowercase(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abi_probe_exercises_every_host_function() {
    let dir = tokio::task::spawn_blocking(modules).await.unwrap();
    assert!(dir.join("abi_probe.wasm").exists());
    bounded(60, async {
        let b = Backend::start("backend").await;
        let body = format!(
            "{}{}[[route]]\nname = \"abi\"\ncluster = \"backend\"\nfilters = [\"abi\"]\n",
            filter(
                "abi",
                "abi_probe",
                "root_id = \"probe-root\"\nconfig = \"probe-config\"\nvm_config = \"probe-vm\""
            ),
            cluster("backend", &[b.addr], ""),
        );
        let proxy = Proxy::start(&body);
        let mut c = Client::h1(proxy.addr).await;

        let r = c
            .get(
                "abi.test",
                "/abi/headers?q=1",
                &[("x-probe", "1"), ("x-remove-me", "1")],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let lines: Vec<&str> = r.body.lines().collect();
        assert!(lines.len() >= 45, "{}", r.body);
        let failed: Vec<&&str> = lines.iter().filter(|l| !l.ends_with(": ok")).collect();
        assert!(failed.is_empty(), "failed checks: {failed:#?}");

        // A plain request: its head, lent to the upstream exchange, is readable again in
        // the response phase (as it was sent).
        let r = c.get("abi.test", "/plain?x=1", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.headers["x-abi-request-path"], "/plain?x=1");

        // Pause, http_call, local answer from the callout callback.
        let r = c.get("abi.test", "/abi/callout", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.headers["x-callout-status"], "200");
        assert!(r.body.contains("GET /headers"), "{}", r.body);
        assert!(r.body.contains("x-from: abi"), "{}", r.body);

        // Pause, http_call, change headers (and :path) and resume upstream.
        let r = c.get("abi.test", "/abi/resume", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.starts_with("GET /headers"), "{}", r.body);
        assert!(r.body.contains("x-callout-status: 200"), "{}", r.body);
        assert_eq!(r.headers["x-abi-response"], "1");
        assert_eq!(r.headers["x-abi-code-matches"], "1");
        assert_eq!(r.headers["x-abi-request-path"], "/headers");

        // Response headers paused for a callout, changed and resumed.
        let r = c.get("abi.test", "/abi/late", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.headers["x-late-callout-status"], "200");
        assert_eq!(r.headers["x-abi-response"], "1");
        assert_eq!(r.headers["x-abi-request-path"], "/abi/late");

        // Buffered request body rewritten, response body appended to.
        let (head, body) = curl(&[
            "--data-binary",
            "hello body",
            &format!("http://{}/abi/body", proxy.addr),
        ]);
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(body, "HELLO BODY-- seen by abi\n");

        // gRPC trailers-only local reply.
        let r = c.get("abi.test", "/abi/grpc", &[]).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["grpc-status"], "16");
        assert_eq!(r.headers["content-type"], "application/grpc");
        assert_eq!(r.headers["grpc-message"], "no token");

        // Resetting the stream fails the request.
        let r = c.get("abi.test", "/abi/reset", &[]).await;
        if let Ok(r) = r {
            assert_eq!(r.status, 503);
        }
        let mut c = Client::h1(proxy.addr).await;

        // A client that leaves while its request is upstream: the stream still ends
        // with on_log, which still reads the request (counted below).
        {
            let mut gone = Client::h1(proxy.addr).await;
            let r = tokio::time::timeout(
                Duration::from_millis(300),
                gone.get("abi.test", "/plain?delay_ms=1500", &[]),
            )
            .await;
            assert!(r.is_err(), "the slow answer came early");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;

        // Ticks and queue deliveries happen on the root context.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let r = c.get("abi.test", "/abi/counters", &[]).await.unwrap();
        let ticks: u64 = r
            .body
            .lines()
            .find_map(|l| l.strip_prefix("ticks="))
            .unwrap()
            .parse()
            .unwrap();
        let queued: u64 = r
            .body
            .lines()
            .find_map(|l| l.strip_prefix("queued="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(ticks >= 2, "{}", r.body);
        assert!(queued >= 1, "{}", r.body);

        // on_log ran for finished streams; guest metrics reach /metrics.
        let m = proxy.metrics();
        let logged = proxy.metric("tandem_wasm_metric{filter=\"abi\",name=\"logged\",type=\"counter\"}");
        assert!(logged >= 5.0, "{m}");
        // Every finished stream could still read its request in on_log: answered
        // locally, reset, buffered, paused for a callout, or proxied.
        let with_request =
            proxy.metric("tandem_wasm_metric{filter=\"abi\",name=\"logged_with_request\",type=\"counter\"}");
        assert_eq!(with_request, logged, "{m}");
        assert!(
            m.contains("tandem_wasm_metric{filter=\"abi\",name=\"probe_gauge\",type=\"gauge\"} 42"),
            "{m}"
        );
        assert_eq!(
            proxy.metric("tandem_wasm_events_total{filter=\"abi\",event=\"trap\"}"),
            0.0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_guests_fail_their_request_per_policy() {
    tokio::task::spawn_blocking(modules).await.unwrap();
    bounded(90, async {
        let b = Backend::start("backend").await;
        let limits = "cpu_limit = \"100ms\"\nmemory_limit_mb = 16";
        let body = format!(
            "{}{}{}\
[[route]]\nname = \"closed\"\npath_prefix = \"/closed\"\ncluster = \"backend\"\nfilters = [\"bad-closed\"]\n\n\
[[route]]\nname = \"open\"\npath_prefix = \"/open\"\ncluster = \"backend\"\nfilters = [\"bad-open\"]\n\n\
[[route]]\nname = \"plain\"\ncluster = \"backend\"\n",
            filter("bad-closed", "misbehave", limits),
            filter(
                "bad-open",
                "misbehave",
                &format!("{limits}\nfailure_policy = \"fail_open\"")
            ),
            cluster("backend", &[b.addr], ""),
        );
        let proxy = Proxy::start(&body);
        // Other traffic keeps flowing while guests misbehave.
        let addr = proxy.addr;
        let background = tokio::spawn(async move { load(addr, "x", "/plain", 400, 2, &[]).await });
        for mode in ["loop", "alloc", "trap", "oob", "panic"] {
            let mut c = Client::h1(proxy.addr).await;
            let r = c.get("x", "/closed", &[("x-misbehave", mode)]).await.unwrap();
            assert_eq!(r.status, 503, "{mode}: {}", r.body);
            assert_eq!(r.headers["x-tandem-error"], "filter-failure", "{mode}");
            let r = c.get("x", "/open", &[("x-misbehave", mode)]).await.unwrap();
            assert_eq!(r.status, 200, "{mode}: {}", r.body);
            assert_eq!(r.body.trim(), "backend");
            // A fresh instance serves the next request.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let r = c.get("x", "/closed", &[]).await.unwrap();
            assert_eq!(r.status, 200, "{mode} then a good request: {}", r.body);
        }
        let (_, failed) = background.await.unwrap();
        assert_eq!(failed, 0, "requests on a route without the filter failed");
        let ev = |f: &str, e: &str| proxy.metric(&format!("tandem_wasm_events_total{{filter=\"{f}\",event=\"{e}\"}}"));
        assert!(ev("bad-closed", "deadline") >= 1.0);
        assert!(ev("bad-closed", "memory_fault") >= 1.0);
        assert!(ev("bad-closed", "trap") >= 3.0);
        assert!(ev("bad-closed", "failed_closed") >= 5.0);
        assert!(ev("bad-open", "failed_open") >= 5.0);
        assert!(ev("bad-closed", "instance") >= 6.0);
        // The hoarding guest's peak is in the gauge, though its instance was replaced
        // at once: every growth it was allowed counts, the refused one does not.
        let mib = proxy.metric("tandem_wasm_instance_memory_bytes{filter=\"bad-closed\"}") / (1 << 20) as f64;
        assert!(
            (12.0..=16.0).contains(&mib),
            "memory gauge {mib} MiB under a 16 MiB cap"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_filter() {
    tokio::task::spawn_blocking(modules).await.unwrap();
    bounded(30, async {
        let b = Backend::start("backend").await;
        let cfg = r#"config = { request = { set = { x-env = "prod" }, add = { x-via = "tandem" }, remove = ["x-debug"] }, response = { set = { x-frame-options = "DENY" }, remove = ["x-backend"] } }"#;
        let body = format!(
            "{}{}[[route]]\nname = \"r\"\ncluster = \"backend\"\nfilters = [\"hdr\"]\n",
            filter("hdr", "headers", cfg),
            cluster("backend", &[b.addr], ""),
        );
        let proxy = Proxy::start(&body);
        for mut c in [Client::h1(proxy.addr).await, Client::h2(proxy.addr).await] {
            let r = c.get("h.test", "/headers", &[("x-debug", "1"), ("x-env", "dev")]).await.unwrap();
            assert_eq!(r.status, 200);
            assert!(r.body.contains("x-env: prod\n"), "{}", r.body);
            assert!(!r.body.contains("x-env: dev"), "{}", r.body);
            assert!(r.body.contains("x-via: tandem\n"), "{}", r.body);
            assert!(!r.body.contains("x-debug"), "{}", r.body);
            assert_eq!(r.headers["x-frame-options"], "DENY");
            assert!(!r.headers.contains_key("x-backend"));
        }
    })
    .await;
}

fn jwt(secret: &[u8], claims: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let head = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = b64.encode(claims.as_bytes());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let sig = ring::hmac::sign(&key, format!("{head}.{body}").as_bytes());
    format!("{head}.{body}.{}", b64.encode(sig.as_ref()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_and_jwt_auth_filters() {
    tokio::task::spawn_blocking(modules).await.unwrap();
    bounded(30, async {
        let b = Backend::start("backend").await;
        let body = format!(
            "{}{}{}\
[[route]]\nname = \"keys\"\npath_prefix = \"/keys\"\ncluster = \"backend\"\nfilters = [\"keys\"]\n\n\
[[route]]\nname = \"jwt\"\ncluster = \"backend\"\nfilters = [\"jwt\"]\n",
            filter(
                "keys",
                "auth",
                r#"config = { mode = "api_key", keys = ["k-one", "k-two"] }"#
            ),
            filter(
                "jwt",
                "auth",
                r#"config = { mode = "jwt", secret = "s3cret", issuer = "https://id.test", audience = "api" }"#
            ),
            cluster("backend", &[b.addr], ""),
        );
        let proxy = Proxy::start(&body);
        let mut c = Client::h1(proxy.addr).await;
        let r = c.get("a", "/keys/headers", &[]).await.unwrap();
        assert_eq!(r.status, 401);
        assert!(r.headers["www-authenticate"].to_str().unwrap().starts_with("ApiKey"));
        let r = c.get("a", "/keys/headers", &[("x-api-key", "wrong")]).await.unwrap();
        assert_eq!(r.status, 401);
        let r = c.get("a", "/keys/headers", &[("x-api-key", "k-two")]).await.unwrap();
        assert_eq!(r.status, 200);
        assert!(
            !r.body.contains("x-api-key"),
            "the key is not passed upstream: {}",
            r.body
        );
        assert_eq!(b.hits(), 1);

        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let good = jwt(
            b"s3cret",
            &format!(
                r#"{{"sub":"alice","iss":"https://id.test","aud":["api"],"exp":{}}}"#,
                now + 600
            ),
        );
        let r = c
            .get(
                "a",
                "/headers",
                &[
                    ("authorization", &format!("Bearer {good}")),
                    ("x-auth-subject", "mallory"),
                ],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains("x-auth-subject: alice\n"), "{}", r.body);
        assert!(!r.body.contains("mallory"));
        let cases = [
            (
                jwt(
                    b"s3cret",
                    &format!(
                        r#"{{"sub":"a","iss":"https://id.test","aud":"api","exp":{}}}"#,
                        now - 600
                    ),
                ),
                "expired",
            ),
            (
                jwt(
                    b"other",
                    &format!(
                        r#"{{"sub":"a","iss":"https://id.test","aud":"api","exp":{}}}"#,
                        now + 600
                    ),
                ),
                "bad signature",
            ),
            (
                jwt(
                    b"s3cret",
                    &format!(r#"{{"sub":"a","iss":"https://evil","aud":"api","exp":{}}}"#, now + 600),
                ),
                "wrong issuer",
            ),
            (
                jwt(
                    b"s3cret",
                    &format!(
                        r#"{{"sub":"a","iss":"https://id.test","aud":"web","exp":{}}}"#,
                        now + 600
                    ),
                ),
                "wrong audience",
            ),
            ("not.a.jwt".to_string(), "bad header"),
        ];
        for (token, why) in cases {
            let r = c
                .get("a", "/headers", &[("authorization", &format!("Bearer {token}"))])
                .await
                .unwrap();
            assert_eq!(r.status, 401, "{why}");
            assert!(r.body.contains(why), "{why}: {}", r.body);
        }
        let r = c.get("a", "/headers", &[]).await.unwrap();
        assert_eq!(r.status, 401);
        assert_eq!(b.hits(), 2, "refused requests never reach the upstream");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_filter_routes_by_header_cookie_and_percentage() {
    tokio::task::spawn_blocking(modules).await.unwrap();
    bounded(30, async {
        let stable = Backend::start("stable").await;
        let canary = Backend::start("canary").await;
        let body = format!(
            "{}{}{}[[route]]\nname = \"r\"\ncluster = \"stable\"\nfilters = [\"canary\"]\n",
            filter(
                "canary",
                "canary",
                r#"config = { cluster = "canary", header = "x-canary", cookie = "canary", percent = 30, sticky_on = "x-user", mark_response = true }"#
            ),
            cluster("stable", &[stable.addr], ""),
            cluster("canary", &[canary.addr], ""),
        );
        let proxy = Proxy::start(&body);
        let mut c = Client::h1(proxy.addr).await;
        let r = c.get("c", "/", &[("x-canary", "1"), ("x-user", "u1")]).await.unwrap();
        assert_eq!(r.body.trim(), "canary");
        assert_eq!(r.headers["x-canary"], "1");
        let r = c.get("c", "/", &[("x-canary", "0"), ("cookie", "canary=1")]).await.unwrap();
        assert_eq!(r.body.trim(), "stable", "the header decides first");
        let r = c.get("c", "/", &[("cookie", "a=b; canary=1")]).await.unwrap();
        assert_eq!(r.body.trim(), "canary");
        let r = c.get("c", "/", &[("cookie", "canary=never")]).await.unwrap();
        assert_eq!(r.body.trim(), "stable");
        // Percentage by user: each user always lands on the same side; about 30 % canary.
        let mut on_canary = 0;
        for u in 0..200 {
            let user = format!("user-{u}");
            let first = c.get("c", "/", &[("x-user", &user)]).await.unwrap().body;
            let again = c.get("c", "/", &[("x-user", &user)]).await.unwrap().body;
            assert_eq!(first, again, "{user} is sticky");
            if first.trim() == "canary" {
                on_canary += 1;
            }
        }
        assert!((30..=90).contains(&on_canary), "{on_canary}/200 on the canary");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_filter_counts_across_workers() {
    tokio::task::spawn_blocking(modules).await.unwrap();
    bounded(30, async {
        let b = Backend::start("backend").await;
        let body = format!(
            "{}{}[[route]]\nname = \"r\"\ncluster = \"backend\"\nfilters = [\"rl\"]\n",
            filter(
                "rl",
                "ratelimit",
                r#"config = { requests = 5, period_s = 3600, key = "header:x-api-key" }"#
            ),
            cluster("backend", &[b.addr], ""),
        );
        let proxy = Proxy::start(&body);
        // Many connections, so both workers count into the one window.
        let mut ok = 0;
        let mut limited = 0;
        for _ in 0..12 {
            let mut c = Client::h1(proxy.addr).await;
            let r = c.get("r", "/", &[("x-api-key", "alice")]).await.unwrap();
            match r.status {
                200 => {
                    ok += 1;
                    assert!(r.headers.contains_key("ratelimit-remaining"));
                }
                429 => {
                    limited += 1;
                    assert!(r.headers.contains_key("retry-after"));
                    assert_eq!(r.headers["ratelimit-remaining"], "0");
                }
                s => panic!("status {s}"),
            }
        }
        assert_eq!((ok, limited), (5, 7));
        let mut c = Client::h1(proxy.addr).await;
        let r = c.get("r", "/", &[("x-api-key", "bob")]).await.unwrap();
        assert_eq!(r.status, 200, "another key has its own window");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_affinity_filter_pins_tenants_to_live_endpoints() {
    tokio::task::spawn_blocking(modules).await.unwrap();
    bounded(30, async {
        let a = Backend::start("a").await;
        let b = Backend::start("b").await;
        let c3 = Backend::start("c").await;
        let body = format!(
            "{}{}[[route]]\nname = \"r\"\ncluster = \"api\"\nfilters = [\"aff\"]\n",
            filter(
                "aff",
                "affinity",
                r#"config = { header = "x-tenant", cluster = "api", mark_response = true }"#
            ),
            cluster("api", &[a.addr, b.addr, c3.addr], "balancer = \"round_robin\""),
        );
        let proxy = Proxy::start(&body);
        let mut c = Client::h1(proxy.addr).await;
        let mut owner = std::collections::HashMap::new();
        for t in 0..30 {
            let tenant = format!("tenant-{t}");
            let first = c.get("x", "/", &[("x-tenant", &tenant)]).await.unwrap();
            for _ in 0..3 {
                let again = c.get("x", "/", &[("x-tenant", &tenant)]).await.unwrap();
                assert_eq!(again.body, first.body, "{tenant} moved");
            }
            owner.insert(tenant, first.body.trim().to_string());
        }
        let used: std::collections::HashSet<_> = owner.values().collect();
        assert_eq!(used.len(), 3, "tenants spread over every endpoint: {owner:?}");
        // Drain one endpoint: only its tenants move.
        let drained = b.addr;
        let (code, _) = proxy.admin_post(&format!("/endpoints/drain?cluster=api&address={drained}"));
        assert_eq!(code, 200);
        for (tenant, was) in &owner {
            let now = c
                .get("x", "/", &[("x-tenant", tenant)])
                .await
                .unwrap()
                .body
                .trim()
                .to_string();
            if was == "b" {
                assert_ne!(now, "b", "{tenant} still on the drained endpoint");
            } else {
                assert_eq!(&now, was, "{tenant} moved though its endpoint is live");
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_health_filter_reports_verdicts() {
    tokio::task::spawn_blocking(modules).await.unwrap();
    bounded(40, async {
        let good = Backend::start("good").await;
        let bad = Backend::start("bad").await;
        let body = format!(
            "{}{}[[route]]\nname = \"r\"\ncluster = \"api\"\n",
            filter(
                "deep",
                "health",
                r#"config = { cluster = "api", path = "/probe", interval_ms = 100, timeout_ms = 300, expect_body = "good", max_latency_ms = 200 }"#
            ),
            cluster("api", &[good.addr, bad.addr], "balancer = \"round_robin\""),
        );
        let proxy = Proxy::start(&body);
        // `bad` answers 200 but with the wrong body: the filter condemns it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = tandem_proxy::control::ctl::call(proxy.admin, None, "GET", "/status").unwrap().1;
            if s.contains("\"unhealthy\"") && s.contains("\"healthy\"") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no verdicts: {s}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (counts, failed) = load(proxy.addr, "x", "/", 40, 2, &[]).await;
        assert_eq!(failed, 0);
        assert_eq!(counts.get("good"), Some(&40), "{counts:?}");
        // Slow answers fail the latency bound.
        *good.delay.lock().unwrap() = Duration::from_millis(250);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = tandem_proxy::control::ctl::call(proxy.admin, None, "GET", "/status").unwrap().1;
            if !s.contains("\"healthy\"") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "slow endpoint still healthy: {s}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_changed_module_under_load_loses_nothing() {
    tokio::task::spawn_blocking(modules).await.unwrap();
    bounded(60, async {
        let b = Backend::start("backend").await;
        let v = |n: u32, module_name: &str| {
            format!(
                "{}{}[[route]]\nname = \"r\"\ncluster = \"backend\"\nfilters = [\"f\"]\n",
                filter(
                    "f",
                    module_name,
                    &format!("config = {{ response = {{ set = {{ x-version = \"{n}\" }} }} }}")
                ),
                cluster("backend", &[b.addr], ""),
            )
        };
        let proxy = Proxy::start(&v(1, "headers"));
        let addr = proxy.addr;
        let traffic = tokio::spawn(async move { load(addr, "x", "/", 3000, 4, &[]).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        proxy.rewrite(&v(2, "headers"));
        proxy.reload_by_signal().await;
        let mut c = Client::h1(proxy.addr).await;
        assert_eq!(c.get("x", "/", &[]).await.unwrap().headers["x-version"], "2");
        // A different module under the same filter name.
        let noop = v(3, "noop").replace("config = { response = { set = { x-version = \"3\" } } }", "");
        proxy.rewrite(&noop);
        proxy.reload_by_signal().await;
        let (counts, failed) = traffic.await.unwrap();
        assert_eq!(failed, 0, "{counts:?}");
        assert_eq!(counts.get("backend"), Some(&3000));
        let r = Client::h1(proxy.addr).await.get("x", "/", &[]).await.unwrap();
        assert!(!r.headers.contains_key("x-version"), "the new module serves");
    })
    .await;
}

#[test]
fn bad_filters_are_configuration_errors() {
    modules();
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| -> (bool, String) {
        let p = dir.path().join("t.toml");
        std::fs::write(&p, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(["check", "-c"])
            .arg(&p)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let base = "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:1\"\n\n[[cluster]]\nname = \"c\"\nendpoints = [{ address = \"127.0.0.1:2\" }]\n\n";
    let (ok, out) = check(&format!(
        "{base}{}[[route]]\nname = \"r\"\ncluster = \"c\"\nfilters = [\"abi\"]\n",
        filter("abi", "abi_probe", "config = \"refuse\"")
    ));
    assert!(!ok);
    assert!(
        out.contains("filter[0]") && out.contains("refused its configuration"),
        "{out}"
    );
    let (ok, out) = check(&format!(
        "{base}{}[[route]]\nname = \"r\"\ncluster = \"c\"\nfilters = [\"hdrs\"]\n",
        filter("hdr", "headers", "sha256 = \"00ff\"")
    ));
    assert!(!ok);
    assert!(
        out.contains("filter[0].sha256") && out.contains("pin sha256 = \""),
        "{out}"
    );
    assert!(
        out.contains("route[0].filters[0]") && out.contains("did you mean `hdr`"),
        "{out}"
    );
    let (ok, out) = check(&format!(
        "{base}[[filter]]\nname = \"x\"\npath = \"/nonexistent.wasm\"\nfailure_policy = \"sometimes\"\n"
    ));
    assert!(!ok);
    assert!(
        out.contains("filter[0].path") && out.contains("/nonexistent.wasm"),
        "{out}"
    );
    assert!(
        out.contains("filter[0].failure_policy") && out.contains("fail_open"),
        "{out}"
    );
    // A pinned, valid module passes.
    let sha = tandem_proxy::wasm_engine::sha256_hex(&std::fs::read(module("headers")).unwrap());
    let (ok, out) = check(&format!(
        "{base}{}[[route]]\nname = \"r\"\ncluster = \"c\"\nfilters = [\"hdr\"]\n",
        filter("hdr", "headers", &format!("sha256 = \"{sha}\""))
    ));
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abi_0_1_0_modules_still_run() {
    tokio::task::spawn_blocking(modules).await.unwrap();
    bounded(30, async {
        let b = Backend::start("backend").await;
        let body = format!(
            "{}{}[[route]]\nname = \"r\"\ncluster = \"backend\"\nfilters = [\"old\"]\n",
            filter("old", "legacy", "config = \"tagged\""),
            cluster("backend", &[b.addr], ""),
        );
        let proxy = Proxy::start(&body);
        let mut c = Client::h1(proxy.addr).await;
        let r = c.get("l", "/headers", &[]).await.unwrap();
        assert_eq!(r.status, 200);
        assert!(r.body.contains("x-legacy: tagged\n"), "{}", r.body);
        assert_eq!(r.headers["x-legacy-abi"], "0.1.0");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_through_a_filter_keeps_its_body_and_trailers() {
    tokio::task::spawn_blocking(modules).await.unwrap();
    bounded(30, async {
        let b = crate::protocols::special_backend().await;
        let body = format!(
            "{}[[cluster]]\nname = \"grpc\"\nprotocol = \"h2c\"\nendpoints = [{{ address = \"{b}\" }}]\n\n[[route]]\nname = \"grpc\"\ncluster = \"grpc\"\nfilters = [\"abi\"]\n",
            filter("abi", "abi_probe", "config = \"probe-config\"\nvm_config = \"probe-vm\""),
        );
        let proxy = Proxy::start(&body);
        let s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let (mut tx, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(s),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        for (path, want) in [("/pkg.Svc/Stream", "0"), ("/pkg.Svc/Fail", "14")] {
            let req = http::Request::post(format!("http://svc.local{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(b"\0\0\0\0\x02hi")))
                .unwrap();
            tx.ready().await.unwrap();
            let resp = tx.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-abi-response"], "1");
            let collected = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
            let trailers = collected.trailers().cloned().expect("trailers reach the client");
            assert_eq!(trailers["grpc-status"], want);
            assert_eq!(trailers["x-abi-trailer"], format!("seen grpc-status {want}").as_str());
            assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x03one\0\0\0\0\x03two");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_metadata_and_filter_state_reach_filters_as_envoy_exposes_them() {
    tokio::task::spawn_blocking(modules).await.unwrap();
    bounded(30, async {
        let b = Backend::start("backend").await;
        let body = format!(
            "{}{}{}[[route]]\nname = \"meta\"\ncluster = \"backend\"\nfilters = [\"writer\", \"reader\"]\nmetadata = {{ \"envoy.filters.http.lua\" = {{ greeting = \"hi\" }}, tandem = {{ limit = 42, flags = [\"a\", \"b\"] }}, envoy = {{ filters = \"not-the-dotted-one\" }} }}\n",
            filter("writer", "state_probe", "config = \"writer\""),
            filter("reader", "state_probe", "config = \"reader\""),
            cluster("backend", &[b.addr], ""),
        );
        let proxy = Proxy::start(&body);
        let mut c = Client::h1(proxy.addr).await;
        let r = c.get("m.test", "/headers", &[("x-user", "alice")]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        for want in [
            "x-greeting: hi\n",
            "x-limit: Some(42)\n",
            "x-flags: [\"a\",\"b\"]\n",
            // `envoy.filters.http.lua` is one segment: ["envoy", "filters"] is another key.
            "x-nested: not-the-dotted-one\n",
            "x-state-set: ok\n",
            // The second filter reads what the first set, by both paths.
            "x-state-user: alice\n",
            "x-state-via: alice\n",
            "x-plain: plain-value\n",
            "x-plain-split: none\n",
        ] {
            assert!(r.body.contains(want), "missing {want:?} in\n{}", r.body);
        }
        // Filter state lives as long as its request.
        let r = c.get("m.test", "/headers", &[]).await.unwrap();
        assert!(!r.body.contains("alice"), "{}", r.body);
    })
    .await;
}

/// The epoch thread sleeps while no guest runs (a node whose filters are idle is not
/// woken 100 times a second; the whole idle process wakes a few times a second), and a
/// callback that runs past its CPU limit right after that sleep wakes it and is still
/// stopped near its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_epoch_thread_sleeps_while_no_guest_runs_and_still_stops_a_runaway() {
    tokio::task::spawn_blocking(modules).await.unwrap();
    bounded(60, async {
        let b = Backend::start("backend").await;
        let body = format!(
            "{}{}[[route]]\nname = \"r\"\ncluster = \"backend\"\nfilters = [\"bad\"]\n",
            filter("bad", "misbehave", "cpu_limit = \"100ms\""),
            cluster("backend", &[b.addr], ""),
        );
        let proxy = Proxy::start(&body);
        let pid = proxy.child.id();
        let mut c = Client::h1(proxy.addr).await;
        for round in 0..2 {
            let r = c.get("x", "/", &[]).await.unwrap();
            assert_eq!(r.status, 200, "round {round}: {}", r.body);
            // Awake while guests ran; asleep about a second after the last one.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            let (before, all_before) = (thread_switches(pid, Some("wasm-epoch"), false), thread_switches(pid, None, true));
            tokio::time::sleep(Duration::from_secs(1)).await;
            let woke = thread_switches(pid, Some("wasm-epoch"), false) - before;
            let all = thread_switches(pid, None, true) - all_before;
            assert!(woke <= 2, "round {round}: the epoch thread woke {woke} times in 1 s with no guest running");
            // The whole idle process: its health tick and a worker's timers, not 175 as
            // when the epoch ticked and the health thread and workers polled.
            assert!(all <= 40, "round {round}: the idle proxy's threads woke {all} times in 1 s");
            let t = std::time::Instant::now();
            let r = c.get("x", "/", &[("x-misbehave", "loop")]).await.unwrap();
            let took = t.elapsed();
            assert_eq!(r.status, 503, "round {round}: {}", r.body);
            assert_eq!(r.headers["x-tandem-error"], "filter-failure");
            assert!(took < Duration::from_secs(2), "round {round}: a 100 ms limit stopped the loop after {took:?}");
            eprintln!("round {round}: loop stopped after {took:?}; idle, the epoch thread woke {woke} times in 1 s, all threads {all}");
        }
        let deadlines = proxy.metric("tandem_wasm_events_total{filter=\"bad\",event=\"deadline\"}");
        assert_eq!(deadlines, 2.0);
    })
    .await;
}
