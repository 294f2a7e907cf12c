//! Routing, weighted splits, header handling and protocols through a real proxy.

use crate::common::*;

fn cluster(name: &str, addrs: &[std::net::SocketAddr], extra: &str) -> String {
    let eps: Vec<String> = addrs.iter().map(|a| format!("{{ address = \"{a}\" }}")).collect();
    format!(
        "[[cluster]]\nname = \"{name}\"\n{extra}\nendpoints = [{}]\n\n",
        eps.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_path_header_and_method() {
    bounded(30, async {
        let api = Backend::start("api").await;
        let admin = Backend::start("admin").await;
        let canary = Backend::start("canary").await;
        let post = Backend::start("post").await;
        let other = Backend::start("other").await;
        let body = format!(
            "{}{}{}{}{}\
[[route]]\nname = \"admin-exact\"\nhosts = [\"api.example.com\"]\npath_exact = \"/admin\"\ncluster = \"admin\"\n\n\
[[route]]\nname = \"canary\"\nhosts = [\"api.example.com\"]\nheaders = [{{ name = \"x-canary\", exact = \"1\" }}]\ncluster = \"canary\"\n\n\
[[route]]\nname = \"post\"\nhosts = [\"api.example.com\"]\nmethods = [\"POST\"]\ncluster = \"post\"\n\n\
[[route]]\nname = \"api\"\nhosts = [\"api.example.com\", \"*.api.example.com\"]\npath_prefix = \"/v1/\"\ncluster = \"api\"\n\n\
[[route]]\nname = \"regex\"\nhosts = [\"*.example.com\"]\npath_regex = \"/items/[0-9]+\"\ncluster = \"other\"\n",
            cluster("api", &[api.addr], ""),
            cluster("admin", &[admin.addr], ""),
            cluster("canary", &[canary.addr], ""),
            cluster("post", &[post.addr], ""),
            cluster("other", &[other.addr], ""),
        );
        let proxy = Proxy::start(&body);
        let mut c = Client::h1(proxy.addr).await;
        // (method, host, path, extra headers, expected route)
        type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
        let cases: &[Case] = &[
            ("GET", "api.example.com", "/admin", &[], Some("admin")),
            ("GET", "api.example.com:8080", "/admin", &[("x-canary", "1")], Some("admin")),
            ("GET", "api.example.com", "/v1/users", &[("x-canary", "1")], Some("canary")),
            ("POST", "api.example.com", "/v1/users", &[], Some("post")),
            ("GET", "API.EXAMPLE.COM", "/v1/users", &[], Some("api")),
            ("GET", "eu.api.example.com", "/v1/users", &[], Some("api")),
            ("GET", "api.example.com", "/v2/users", &[], None),
            ("GET", "shop.example.com", "/items/12", &[], Some("other")),
            ("GET", "shop.example.com", "/items/abc", &[], None),
            ("GET", "example.org", "/v1/users", &[], None),
        ];
        for (method, host, path, headers, want) in cases {
            let r = c.request(method, host, path, headers).await.unwrap();
            match want {
                Some(name) => {
                    assert_eq!(r.status, 200, "{method} {host}{path}");
                    assert_eq!(r.body.trim(), *name, "{method} {host}{path}");
                }
                None => {
                    assert_eq!(r.status, 404, "{method} {host}{path}");
                    assert_eq!(r.headers["x-tandem-error"], "no-route");
                }
            }
        }
        assert_eq!(proxy.metric("tandem_no_route_total"), 3.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_is_within_three_percent_over_10k_requests() {
    bounded(60, async {
        let stable = Backend::start("stable").await;
        let canary = Backend::start("canary").await;
        let body = format!(
            "{}{}[[route]]\nname = \"split\"\nclusters = [{{ name = \"stable\", weight = 95 }}, {{ name = \"canary\", weight = 5 }}]\n",
            cluster("stable", &[stable.addr], ""),
            cluster("canary", &[canary.addr], ""),
        );
        let proxy = Proxy::start(&body);
        let (counts, failed) = load(proxy.addr, "x", "/", 10_000, 8, &[]).await;
        assert_eq!(failed, 0);
        let total: usize = counts.values().sum();
        assert_eq!(total, 10_000);
        let share = counts["canary"] as f64 / total as f64;
        assert!((share - 0.05).abs() <= 0.03, "canary share {share}");
        let share = counts["stable"] as f64 / total as f64;
        assert!((share - 0.95).abs() <= 0.03, "stable share {share}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_request_id_and_header_rules() {
    bounded(30, async {
        let b = Backend::start("b").await;
        let body = format!(
            "{}[[route]]\nname = \"r\"\ncluster = \"b\"\n\
request_headers = {{ add = [{{ name = \"x-env\", value = \"prod\" }}], set = [{{ name = \"x-team\", value = \"core\" }}], remove = [\"x-secret\"] }}\n\
response_headers = {{ set = [{{ name = \"x-served-by\", value = \"tandem\" }}], remove = [\"x-backend\"] }}\n",
            cluster("b", &[b.addr], "")
        );
        let proxy = Proxy::start(&body);
        let mut c = Client::h1(proxy.addr).await;
        let r = c
            .get(
                "app.local",
                "/headers",
                &[
                    ("x-secret", "s"),
                    ("x-team", "other"),
                    ("x-forwarded-for", "203.0.113.9"),
                    ("connection", "keep-alive, x-drop-me"),
                    ("x-drop-me", "1"),
                    ("te", "trailers"),
                ],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let seen = r.body.to_lowercase();
        assert!(seen.contains("x-env: prod"), "{seen}");
        assert!(seen.contains("x-team: core"), "{seen}");
        assert!(!seen.contains("x-team: other"), "{seen}");
        assert!(!seen.contains("x-secret"), "{seen}");
        assert!(!seen.contains("x-drop-me"), "{seen}");
        assert!(!seen.contains("\nte:"), "{seen}");
        assert!(seen.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1"), "{seen}");
        assert!(seen.contains("x-forwarded-proto: http"), "{seen}");
        assert!(seen.contains("x-forwarded-host: app.local"), "{seen}");
        assert!(seen.contains("host: app.local"), "{seen}");
        // A request id was generated, sent upstream and returned.
        let id = r.headers["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(id.len(), 36);
        assert!(seen.contains(&format!("x-request-id: {id}")));
        // Response rules and hop-by-hop stripping.
        assert_eq!(r.headers["x-served-by"], "tandem");
        assert!(!r.headers.contains_key("x-backend"));
        assert!(!r.headers.contains_key("x-hop"), "header named in upstream Connection must be stripped");
        // A client-provided id is kept.
        let r = c.get("app.local", "/headers", &[("x-request-id", "abc-123")]).await.unwrap();
        assert_eq!(r.headers["x-request-id"], "abc-123");
        assert!(r.body.contains("x-request-id: abc-123"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_and_forwarded_headers_follow_the_server_settings() {
    bounded(30, async {
        let b = Backend::start("b").await;
        let body = format!(
            "[[cluster]]\nname = \"c\"\nendpoints = [{{ address = \"{}\" }}]\n\n[[route]]\nname = \"r\"\ncluster = \"c\"\n",
            b.addr
        );
        // Only X-Forwarded-For, and request ids only when the client sent one.
        let p = Proxy::start_server(&body, "", "", "request_id = \"keep\"\nforwarded_headers = [\"for\"]");
        let mut c = Client::h1(p.addr).await;
        let r = c.get("app.local", "/headers", &[]).await.unwrap();
        let seen = r.body.to_lowercase();
        assert!(seen.contains("x-forwarded-for: 127.0.0.1"), "{seen}");
        assert!(!seen.contains("x-forwarded-proto") && !seen.contains("x-forwarded-host"), "{seen}");
        assert!(!seen.contains("x-request-id") && !r.headers.contains_key("x-request-id"), "{seen}");
        let r = c.get("app.local", "/headers", &[("x-request-id", "abc-123")]).await.unwrap();
        assert_eq!(r.headers["x-request-id"], "abc-123");
        assert!(r.body.contains("x-request-id: abc-123"));
        drop(p);
        // Off: nothing added, nothing returned; a client's id passes as any header.
        let p = Proxy::start_server(&body, "", "", "request_id = \"off\"\nforwarded_headers = []");
        let mut c = Client::h1(p.addr).await;
        let r = c.get("app.local", "/headers", &[("x-request-id", "abc-123")]).await.unwrap();
        let seen = r.body.to_lowercase();
        assert!(!seen.contains("x-forwarded"), "{seen}");
        assert!(seen.contains("x-request-id: abc-123"), "{seen}");
        assert!(!r.headers.contains_key("x-request-id"));
        let r = c.get("app.local", "/headers", &[]).await.unwrap();
        assert!(!r.body.to_lowercase().contains("x-request-id"), "{}", r.body);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_downstream_and_upstream() {
    bounded(30, async {
        let b = Backend::start("grpc-ish").await;
        let body = format!(
            "{}[[route]]\nname = \"r\"\ncluster = \"h2\"\n",
            cluster("h2", &[b.addr], "protocol = \"h2c\"")
        );
        let proxy = Proxy::start(&body);
        // h2c prior knowledge downstream, h2c upstream.
        let mut c = Client::h2(proxy.addr).await;
        let mut ids = std::collections::HashSet::new();
        for _ in 0..20 {
            let r = c.get("svc.local", "/headers", &[]).await.unwrap();
            assert_eq!(r.status, 200);
            assert!(
                r.body.starts_with("GET http://svc.local/headers HTTP/2.0"),
                "{}",
                r.body
            );
            // Request ids go out as never-indexed HPACK literals, both ways.
            let id = r.headers["x-request-id"].to_str().unwrap().to_string();
            assert_eq!(id.len(), 36);
            assert!(r.body.contains(&format!("x-request-id: {id}")), "{}", r.body);
            ids.insert(id);
        }
        assert_eq!(ids.len(), 20, "every request gets its own id");
        // HTTP/1.1 downstream to the same h2c upstream.
        let mut c = Client::h1(proxy.addr).await;
        let r = c.get("svc.local", "/headers", &[]).await.unwrap();
        assert!(r.body.contains("HTTP/2.0"), "{}", r.body);
        // One multiplexed upstream connection per worker at most.
        assert!(
            proxy.metric(&format!(
                "tandem_endpoint_connections_opened_total{{cluster=\"h2\",endpoint=\"{}\"}}",
                b.addr
            )) <= 2.0
        );
    })
    .await;
}
