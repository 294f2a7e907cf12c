//! The admin API: readiness, status JSON, Prometheus metrics, token auth.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_reflect_traffic() {
    bounded(30, async {
        let a = Backend::start("a").await;
        let b = Backend::start("b").await;
        let proxy = Proxy::start(&format!(
            "[[cluster]]\nname = \"c\"\nbalancer = \"least_request\"\nendpoints = [{{ address = \"{}\" }}, {{ address = \"{}\", weight = 2 }}]\n\n[[route]]\nname = \"r\"\ncluster = \"c\"\n",
            a.addr, b.addr
        ));
        let (_, failed) = load(proxy.addr, "x", "/", 200, 4, &[]).await;
        assert_eq!(failed, 0);
        let mut c = Client::h1(proxy.addr).await;
        assert_eq!(c.get("x", "/?status=503", &[]).await.unwrap().status, 503);

        let (status, body) = tandem_proxy::control::ctl::call(proxy.admin, None, "GET", "/status").unwrap();
        assert_eq!(status, 200);
        let s: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(s["ready"], true);
        assert_eq!(s["config"]["generation"], 1);
        assert_eq!(s["clusters"][0]["name"], "c");
        assert_eq!(s["clusters"][0]["balancer"], "least_request");
        let eps = s["clusters"][0]["endpoints"].as_array().unwrap();
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[1]["weight"], 2);
        let ok: u64 = eps.iter().map(|e| e["responses"]["2xx"].as_u64().unwrap()).sum();
        let err: u64 = eps.iter().map(|e| e["responses"]["5xx"].as_u64().unwrap()).sum();
        assert_eq!((ok, err), (200, 1));
        assert_eq!(s["routes"][0]["name"], "r");

        assert_eq!(proxy.metric("tandem_route_responses_total{route=\"r\",code=\"2xx\"}"), 200.0);
        assert_eq!(proxy.metric("tandem_route_responses_total{route=\"r\",code=\"5xx\"}"), 1.0);
        assert_eq!(proxy.metric("tandem_route_latency_seconds_count{route=\"r\"}"), 201.0);
        assert_eq!(proxy.metric("tandem_cluster_active_requests{cluster=\"c\"}"), 0.0);
        let opened = proxy.metric(&format!("tandem_endpoint_connections_opened_total{{cluster=\"c\",endpoint=\"{}\"}}", a.addr))
            + proxy.metric(&format!("tandem_endpoint_connections_opened_total{{cluster=\"c\",endpoint=\"{}\"}}", b.addr));
        let reused = proxy.metric(&format!("tandem_endpoint_connections_reused_total{{cluster=\"c\",endpoint=\"{}\"}}", a.addr))
            + proxy.metric(&format!("tandem_endpoint_connections_reused_total{{cluster=\"c\",endpoint=\"{}\"}}", b.addr));
        assert_eq!(opened + reused, 201.0);
        assert!(opened <= 20.0, "keep-alive pool should reuse connections, opened {opened}");
        assert_eq!(proxy.metric("tandem_listener_requests_total{listener=\"web\"}"), 201.0);

        let (status, _) = tandem_proxy::control::ctl::call(proxy.admin, None, "GET", "/live").unwrap();
        assert_eq!(status, 200);
        let (status, page) = tandem_proxy::control::ctl::call(proxy.admin, None, "GET", "/").unwrap();
        assert_eq!(status, 200);
        assert!(page.contains(&a.addr.to_string()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_is_enforced() {
    bounded(30, async {
        let a = Backend::start("a").await;
        let proxy = Proxy::start_full(&one_route_to(a.addr), "", "token = \"s3cret-token-0123456789\"");
        let (status, _) = tandem_proxy::control::ctl::call(proxy.admin, None, "GET", "/status").unwrap();
        assert_eq!(status, 401);
        let (status, _) = tandem_proxy::control::ctl::call(proxy.admin, Some("wrong"), "GET", "/status").unwrap();
        assert_eq!(status, 401);
        let (status, _) =
            tandem_proxy::control::ctl::call(proxy.admin, Some("s3cret-token-0123456789"), "GET", "/status").unwrap();
        assert_eq!(status, 200);
    })
    .await;
}

/// The status page as an operator sees it: headless Chromium loads it, takes a
/// screenshot (kept as target/status-page.png), reports no console error, and the page
/// shows the phase, route rates and endpoints with who judged them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_in_a_browser_without_errors() {
    let browser = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| has_tool(b, "--version"));
    if !can_run(browser.is_some(), "chromium is not installed (Debian package chromium)") {
        return;
    }
    let browser = browser.unwrap();
    bounded(120, async {
        let a = Backend::start("a").await;
        let b = Backend::start("b").await;
        let proxy = Proxy::start(&format!(
            "[[cluster]]\nname = \"c\"\nendpoints = [{{ address = \"{}\" }}, {{ address = \"{}\" }}]\nhealth_check = {{ path = \"/healthz\", interval = \"200ms\" }}\n\n[[route]]\nname = \"r\"\ncluster = \"c\"\n",
            a.addr, b.addr
        ));
        let page = format!("http://{}/", proxy.admin);
        // A first view starts the rate samples; traffic; the browser's view a second later.
        let (status, _) = tandem_proxy::control::ctl::call(proxy.admin, None, "GET", "/").unwrap();
        assert_eq!(status, 200);
        let (_, failed) = load(proxy.addr, "x", "/", 200, 4, &[]).await;
        assert_eq!(failed, 0);
        let mut c = Client::h1(proxy.addr).await;
        assert_eq!(c.get("x", "/?status=500", &[]).await.unwrap().status, 500);
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;

        let dir = tempfile::tempdir().unwrap();
        let shot = dir.path().join("status.png");
        let run = |extra: Vec<String>| {
            let profile = dir.path().join("profile");
            let browser = browser.to_string();
            let page = page.clone();
            tokio::task::spawn_blocking(move || {
                std::process::Command::new("timeout")
                    .arg("60")
                    .arg(browser)
                    .args([
                        "--headless=new",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-dev-shm-usage",
                        "--no-first-run",
                        "--enable-logging=stderr",
                        "--v=0",
                        "--window-size=1280,1000",
                    ])
                    .arg(format!("--user-data-dir={}", profile.display()))
                    .args(extra)
                    .arg(page)
                    .output()
                    .unwrap()
            })
        };
        let out = run(vec![format!("--screenshot={}", shot.display())]).await.unwrap();
        let log = String::from_utf8_lossy(&out.stderr).to_string();
        let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot ({e}): {log}"));
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "screenshot of {} bytes", png.len());
        let keep = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/status-page.png");
        let _ = std::fs::write(keep, &png);
        let out = run(vec!["--dump-dom".into()]).await.unwrap();
        let dom = String::from_utf8_lossy(&out.stdout).to_string();
        let log = log + &String::from_utf8_lossy(&out.stderr);
        let console_errors: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
            .filter(|l| l.to_ascii_lowercase().contains("error") || l.contains("Uncaught"))
            .collect();
        assert!(console_errors.is_empty(), "console errors: {console_errors:?}");
        for needle in [
            "id=\"phase\"",
            "serving",
            "id=\"routes\"",
            "req/s",
            "id=\"endpoints\"",
            "decided by",
            &a.addr.to_string(),
            &b.addr.to_string(),
            "active",
        ] {
            assert!(dom.contains(needle), "the page lacks {needle}: {dom}");
        }
        // The route row has a rate (not the placeholder) and the 5xx share.
        let routes = &dom[dom.find("id=\"routes\"").unwrap()..];
        let row = &routes[routes.find("<td>r</td>").expect("route row")..];
        let row = &row[..row.find("</tr>").unwrap()];
        assert!(!row.contains("–"), "no rate yet: {row}");
        assert!(row.contains(" %"), "{row}");
    })
    .await;
}
