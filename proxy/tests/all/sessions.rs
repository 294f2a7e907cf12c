//! Sticky sessions (signed cookie, learned) and rate limits.

use std::time::{Duration, Instant};

use crate::common::*;

fn three(bs: &[Backend; 3], extra: &str, route_extra: &str) -> String {
    let eps: Vec<String> = bs.iter().map(|b| format!("{{ address = \"{}\" }}", b.addr)).collect();
    format!(
        "[[cluster]]\nname = \"c\"\nbalancer = \"round_robin\"\nendpoints = [{}]\n{extra}\n\n[[route]]\nname = \"r\"\ncluster = \"c\"\n{route_extra}\n",
        eps.join(", ")
    )
}

fn set_cookie(r: &Resp) -> Option<String> {
    r.headers
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_cookie_pins_a_client_and_moves_it_when_its_endpoint_fails() {
    bounded(30, async {
        let bs = [Backend::start("b0").await, Backend::start("b1").await, Backend::start("b2").await];
        let proxy = Proxy::start(&three(
            &bs,
            "sticky = { mode = \"cookie\", secret = \"0123456789abcdef-pair-secret\" }\nhealth_check = { interval = \"100ms\", timeout = \"80ms\", rise = 1, fall = 1 }",
            "",
        ));
        let mut c = Client::h1(proxy.addr).await;
        let first = c.get("x", "/", &[]).await.unwrap();
        let cookie = set_cookie(&first).expect("a sticky cookie is set");
        assert!(cookie.starts_with("tandem_sticky="), "{cookie}");
        let pinned = first.body.trim().to_string();
        for _ in 0..20 {
            let r = c.get("x", "/", &[("cookie", &cookie)]).await.unwrap();
            assert_eq!(r.body.trim(), pinned);
            assert!(set_cookie(&r).is_none(), "no new cookie while the binding holds");
        }
        // A forged cookie is ignored and replaced.
        let forged = format!("tandem_sticky={}", cookie.split_once('=').unwrap().1.replace('A', "B"));
        let r = c.get("x", "/", &[("cookie", &forged)]).await.unwrap();
        assert!(set_cookie(&r).is_some());
        // The pinned endpoint dies: the client moves, gets a new cookie, and stays.
        let victim = bs.iter().find(|b| b.name == pinned).unwrap();
        victim.kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = c.get("x", "/", &[("cookie", &cookie)]).await.unwrap();
        assert_eq!(r.status, 200);
        assert_ne!(r.body.trim(), pinned);
        let moved = r.body.trim().to_string();
        let cookie2 = set_cookie(&r).expect("re-bound with a new cookie");
        for _ in 0..10 {
            assert_eq!(c.get("x", "/", &[("cookie", &cookie2)]).await.unwrap().body.trim(), moved);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learned_bindings_keep_each_session_on_one_endpoint() {
    bounded(30, async {
        let bs = [
            Backend::start("b0").await,
            Backend::start("b1").await,
            Backend::start("b2").await,
        ];
        let proxy = Proxy::start(&three(
            &bs,
            "sticky = { mode = \"learned\", on = \"header:x-session\", idle_timeout = \"10m\" }",
            "",
        ));
        let mut seen = std::collections::HashSet::new();
        for s in 0..12 {
            let session = format!("s{s}");
            let mut c = Client::h1(proxy.addr).await;
            let first = c.get("x", "/", &[("x-session", &session)]).await.unwrap().body;
            for _ in 0..8 {
                // Different connections, both workers: same endpoint.
                let mut c2 = Client::h1(proxy.addr).await;
                assert_eq!(c2.get("x", "/", &[("x-session", &session)]).await.unwrap().body, first);
            }
            seen.insert(first);
        }
        assert_eq!(seen.len(), 3, "sessions spread over the endpoints");
        assert_eq!(proxy.metric("tandem_sticky_bindings"), 12.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after() {
    bounded(30, async {
        let bs = [
            Backend::start("b0").await,
            Backend::start("b1").await,
            Backend::start("b2").await,
        ];
        let proxy = Proxy::start(&three(
            &bs,
            "",
            "rate_limit = { requests = 50, per = \"1s\", key = \"header:x-api-key\" }",
        ));
        let mut c = Client::h1(proxy.addr).await;
        let started = Instant::now();
        let (mut ok, mut limited) = (0, 0);
        let mut last = None;
        for _ in 0..200 {
            let r = c.get("x", "/", &[("x-api-key", "tenant-a")]).await.unwrap();
            match r.status {
                200 => ok += 1,
                429 => {
                    limited += 1;
                    last = Some(r);
                }
                s => panic!("{s}"),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the burst fits in one window"
        );
        assert_eq!((ok, limited), (50, 150));
        let r = last.unwrap();
        assert_eq!(r.headers["retry-after"], "1");
        assert_eq!(r.headers["ratelimit-limit"], "50");
        assert_eq!(r.headers["ratelimit-remaining"], "0");
        assert_eq!(r.headers["x-tandem-error"], "rate-limited");
        // Another key has its own allowance.
        assert_eq!(c.get("x", "/", &[("x-api-key", "tenant-b")]).await.unwrap().status, 200);
        assert_eq!(proxy.metric("tandem_route_rate_limited_total{route=\"r\"}"), 150.0);
        let hits: u64 = bs.iter().map(|b| b.hits()).sum();
        assert_eq!(hits, 51, "refused requests never reach a backend");
    })
    .await;
}
