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

        let (status, body) = tandem_proxy::ctl::call(proxy.admin, None, "GET", "/status").unwrap();
        assert_eq!(status, 200);
        let s: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(s["ready"], true);
        assert_eq!(s["config"]["generation"], 1);
        assert_eq!(s["clusters"][0]["name"], "c");
        assert_eq!(s["clusters"][0]["balancer"], "least_request");
        let eps = s["clusters"][0]["endpoints"].as_array().unwrap();
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[1]["weight"], 2);
        let ok: u64 = eps.iter().map(|e| e["responses"][1].as_u64().unwrap()).sum();
        let err: u64 = eps.iter().map(|e| e["responses"][4].as_u64().unwrap()).sum();
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

        let (status, _) = tandem_proxy::ctl::call(proxy.admin, None, "GET", "/live").unwrap();
        assert_eq!(status, 200);
        let (status, page) = tandem_proxy::ctl::call(proxy.admin, None, "GET", "/").unwrap();
        assert_eq!(status, 200);
        assert!(page.contains(&a.addr.to_string()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_is_enforced() {
    bounded(30, async {
        let a = Backend::start("a").await;
        let proxy = Proxy::start_full(
            &format!("[[cluster]]\nname = \"c\"\nendpoints = [{{ address = \"{}\" }}]\n\n[[route]]\nname = \"r\"\ncluster = \"c\"\n", a.addr),
            "",
            "token = \"s3cret-token-0123456789\"",
        );
        let (status, _) = tandem_proxy::ctl::call(proxy.admin, None, "GET", "/status").unwrap();
        assert_eq!(status, 401);
        let (status, _) = tandem_proxy::ctl::call(proxy.admin, Some("wrong"), "GET", "/status").unwrap();
        assert_eq!(status, 401);
        let (status, _) = tandem_proxy::ctl::call(proxy.admin, Some("s3cret-token-0123456789"), "GET", "/status").unwrap();
        assert_eq!(status, 200);
    })
    .await;
}
