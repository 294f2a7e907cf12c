//! Retries, retry budgets and circuit breakers with backends that fail.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

/// `clients` concurrent clients, each sending sequential requests for `secs`;
/// returns (requests sent, non-2xx answers).
async fn steady(addr: std::net::SocketAddr, method: &'static str, clients: usize, secs: f64) -> (usize, usize) {
    let sent = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (sent, bad) = (sent.clone(), bad.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::h1(addr).await;
            while Instant::now() < deadline {
                sent.fetch_add(1, Ordering::Relaxed);
                match c.request(method, "x", "/", &[]).await {
                    Ok(r) if r.status < 300 => {}
                    Ok(_) => {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        bad.fetch_add(1, Ordering::Relaxed);
                        c = Client::h1(addr).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (sent.load(Ordering::Relaxed), bad.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_caps_upstream_attempts_when_everything_fails() {
    bounded(60, async {
        let bs = [Backend::start("b0").await, Backend::start("b1").await, Backend::start("b2").await];
        for b in &bs {
            *b.status.lock().unwrap() = 503;
            *b.delay.lock().unwrap() = Duration::from_millis(5);
        }
        let eps: Vec<String> = bs.iter().map(|b| format!("{{ address = \"{}\" }}", b.addr)).collect();
        let body = format!(
            "[[cluster]]\nname = \"c\"\nendpoints = [{}]\nretry_budget = {{ budget_percent = 20, min_retry_concurrency = 2 }}\n\n\
[[route]]\nname = \"r\"\ncluster = \"c\"\nretry_on = [\"5xx\"]\nmax_retries = 2\nretry_backoff = \"1ms\"\nretry_backoff_max = \"2ms\"\n",
            eps.join(", ")
        );
        let proxy = Proxy::start(&body);
        let (requests, failed) = steady(proxy.addr, "GET", 20, 2.0).await;
        assert_eq!(failed, requests, "every request fails in the end");
        let attempts: u64 = bs.iter().map(|b| b.hits()).sum();
        let ratio = attempts as f64 / requests as f64;
        // Without a budget this would be 3.0 (two retries per request).
        assert!(ratio <= 1.2 + 2.0 / 20.0 + 0.05, "attempts per request {ratio:.3} ({attempts}/{requests})");
        assert!(ratio > 1.0, "some retries happen: {ratio}");
        assert!(proxy.metric("tandem_cluster_retry_budget_exhausted_total{cluster=\"c\"}") > 0.0);

        // Non-idempotent requests are never retried.
        let before: u64 = bs.iter().map(|b| b.hits()).sum();
        let (requests, _) = steady(proxy.addr, "POST", 4, 0.5).await;
        let attempts: u64 = bs.iter().map(|b| b.hits()).sum::<u64>() - before;
        assert_eq!(attempts as usize, requests, "POST must not be retried");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_go_to_another_endpoint_and_hide_one_failure() {
    bounded(30, async {
        let bad = Backend::start("bad").await;
        *bad.status.lock().unwrap() = 503;
        let good = Backend::start("good").await;
        let body = format!(
            "[[cluster]]\nname = \"c\"\nendpoints = [{{ address = \"{}\" }}, {{ address = \"{}\" }}]\n\n\
[[route]]\nname = \"r\"\ncluster = \"c\"\nretry_on = [\"retriable-status\"]\nretriable_statuses = [503]\nmax_retries = 1\n",
            bad.addr, good.addr
        );
        let proxy = Proxy::start(&body);
        let mut c = Client::h1(proxy.addr).await;
        for _ in 0..50 {
            let r = c.get("x", "/", &[]).await.unwrap();
            assert_eq!((r.status, r.body.as_str()), (200, "good\n"));
        }
        // A retry never returns to the endpoint that just failed.
        assert!(bad.hits() > 0 && bad.hits() <= 50);
        assert_eq!(good.hits(), 50);
        // A body is replayed on the retry.
        let r = c.request("PUT", "x", "/", &[]).await.unwrap();
        assert_eq!(r.status, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_overflow_is_answered_at_once_with_503() {
    bounded(30, async {
        let b = Backend::start("b").await;
        *b.delay.lock().unwrap() = Duration::from_millis(600);
        let body = format!(
            "[[cluster]]\nname = \"c\"\nendpoints = [{{ address = \"{}\" }}]\ncircuit_breakers = {{ max_requests = 2 }}\n\n[[route]]\nname = \"r\"\ncluster = \"c\"\n",
            b.addr
        );
        let proxy = Proxy::start(&body);
        let mut tasks = Vec::new();
        for i in 0..6 {
            let addr = proxy.addr;
            tasks.push(tokio::spawn(async move {
                if i >= 2 {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                let t = Instant::now();
                let r = Client::h1(addr).await.get("x", "/", &[]).await.unwrap();
                (r, t.elapsed())
            }));
        }
        let mut ok = 0;
        let mut overflow = 0;
        for t in tasks {
            let (r, took) = t.await.unwrap();
            match r.status {
                200 => ok += 1,
                503 => {
                    overflow += 1;
                    assert_eq!(r.headers["x-tandem-overflow"], "max_requests");
                    assert!(took < Duration::from_millis(200), "overflow must be immediate: {took:?}");
                }
                s => panic!("unexpected {s}"),
            }
        }
        assert_eq!((ok, overflow), (2, 4));
        assert_eq!(proxy.metric("tandem_cluster_breaker_overflows_total{cluster=\"c\",limit=\"max_requests\"}"), 4.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_retries_a_slow_endpoint_elsewhere() {
    bounded(30, async {
        let slow = Backend::start("slow").await;
        *slow.delay.lock().unwrap() = Duration::from_millis(1000);
        let fast = Backend::start("fast").await;
        let body = format!(
            "[[cluster]]\nname = \"c\"\nendpoints = [{{ address = \"{}\" }}, {{ address = \"{}\" }}]\n\n\
[[route]]\nname = \"r\"\ncluster = \"c\"\ntimeout = \"2s\"\nper_try_timeout = \"150ms\"\nretry_on = [\"timeout\"]\nmax_retries = 1\n",
            slow.addr, fast.addr
        );
        let proxy = Proxy::start(&body);
        let mut c = Client::h1(proxy.addr).await;
        for _ in 0..6 {
            let t = Instant::now();
            let r = c.get("x", "/", &[]).await.unwrap();
            assert_eq!((r.status, r.body.as_str()), (200, "fast\n"));
            assert!(t.elapsed() < Duration::from_millis(600));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_requests_release_their_in_flight_counts() {
    bounded(30, async {
        let b = Backend::start("b").await;
        *b.delay.lock().unwrap() = Duration::from_millis(400);
        let body = format!(
            "[[cluster]]\nname = \"c\"\nendpoints = [{{ address = \"{}\" }}]\n\n[[route]]\nname = \"r\"\ncluster = \"c\"\ntimeout = \"250ms\"\n\n\
[[route]]\nname = \"long\"\npath_prefix = \"/long\"\ncluster = \"c\"\n",
            b.addr
        );
        let proxy = Proxy::start(&body);
        // Clients that give up mid-request, and requests the route timeout cuts off.
        for _ in 0..5 {
            let addr = proxy.addr;
            let t = tokio::spawn(async move { Client::h1(addr).await.get("x", "/long", &[]).await });
            tokio::time::sleep(Duration::from_millis(100)).await;
            t.abort();
        }
        let mut c = Client::h1(proxy.addr).await;
        for _ in 0..3 {
            assert_eq!(c.get("x", "/", &[]).await.unwrap().status, 504);
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(proxy.metric("tandem_cluster_active_requests{cluster=\"c\"}"), 0.0);
        assert_eq!(proxy.metric(&format!("tandem_endpoint_active_requests{{cluster=\"c\",endpoint=\"{}\"}}", b.addr)), 0.0);
    })
    .await;
}
