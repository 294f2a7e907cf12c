//! Active checks, passive ejection, slow start and drains against real backends.

use std::time::{Duration, Instant};

use crate::common::*;

fn status(proxy: &Proxy) -> serde_json::Value {
    serde_json::from_str(
        &tandem_proxy::control::ctl::call(proxy.admin, None, "GET", "/status")
            .unwrap()
            .1,
    )
    .unwrap()
}

fn endpoint_state(proxy: &Proxy, addr: std::net::SocketAddr) -> String {
    let s = status(proxy);
    for c in s["clusters"].as_array().unwrap() {
        for e in c["endpoints"].as_array().unwrap() {
            if e["address"] == addr.to_string() {
                return e["state"].as_str().unwrap().to_string();
            }
        }
    }
    panic!("endpoint {addr} not in status")
}

async fn wait_state(proxy: &Proxy, addr: std::net::SocketAddr, want: &str, within: Duration) -> Duration {
    let t = Instant::now();
    while t.elapsed() < within {
        if endpoint_state(proxy, addr) == want {
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{addr} did not become {want} within {within:?}; state {}",
        endpoint_state(proxy, addr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_goes_unhealthy_after_fall_and_ramps_back_after_rise() {
    bounded(60, async {
        let a = Backend::start("a").await;
        let b = Backend::start("b").await;
        let b_addr = b.addr;
        let body = format!(
            "[[cluster]]\nname = \"c\"\nbalancer = \"weighted\"\nslow_start = \"3s\"\nslow_start_min_weight_percent = 5\n\
endpoints = [{{ address = \"{}\" }}, {{ address = \"{b_addr}\" }}]\n\
health_check = {{ kind = \"http\", path = \"/healthz\", interval = \"100ms\", timeout = \"80ms\", rise = 2, fall = 3 }}\n\n\
[[route]]\nname = \"r\"\ncluster = \"c\"\nretry_on = [\"connect-failure\"]\n",
            a.addr
        );
        let proxy = Proxy::start(&body);
        wait_state(&proxy, b_addr, "healthy", Duration::from_secs(3)).await;

        b.kill();
        let probes_before = proxy.metric(&format!("tandem_endpoint_health_checks_total{{cluster=\"c\",endpoint=\"{b_addr}\",result=\"fail\"}}"));
        let took = wait_state(&proxy, b_addr, "unhealthy", Duration::from_secs(3)).await;
        let failed = proxy.metric(&format!("tandem_endpoint_health_checks_total{{cluster=\"c\",endpoint=\"{b_addr}\",result=\"fail\"}}")) - probes_before;
        assert_eq!(failed, 3.0, "unhealthy after exactly `fall` failed probes");
        assert!(took >= Duration::from_millis(150), "too fast: {took:?}");
        // Traffic avoids it.
        let (counts, failures) = load(proxy.addr, "x", "/", 200, 4, &[]).await;
        assert_eq!(failures, 0);
        assert_eq!(counts.get("b"), None);

        // Restart on the same address: healthy after `rise` passes, then a ramp.
        let b = Backend::start_on(b_addr, "b").await;
        wait_state(&proxy, b_addr, "healthy", Duration::from_secs(3)).await;
        let mut shares = Vec::new();
        for _ in 0..4 {
            let (counts, failures) = load(proxy.addr, "x", "/", 400, 4, &[]).await;
            assert_eq!(failures, 0);
            shares.push(*counts.get("b").unwrap_or(&0) as f64 / 400.0);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(shares[0] < 0.30, "first share should be small during slow start: {shares:?}");
        assert!(shares[3] > shares[0] + 0.1, "share should grow, not jump: {shares:?}");
        let w = proxy.metric(&format!("tandem_endpoint_weight_effective{{cluster=\"c\",endpoint=\"{b_addr}\"}}"));
        assert!(w > 0.5, "weight should be mostly restored: {w}");
        drop(b);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_real_traffic_with_green_healthz_is_ejected_passively() {
    bounded(60, async {
        let good1 = Backend::start("good1").await;
        let good2 = Backend::start("good2").await;
        let bad = Backend::start("bad").await;
        *bad.status.lock().unwrap() = 503;
        let body = format!(
            "[[cluster]]\nname = \"c\"\nbalancer = \"round_robin\"\n\
endpoints = [{{ address = \"{}\" }}, {{ address = \"{}\" }}, {{ address = \"{}\" }}]\n\
health_check = {{ interval = \"100ms\", timeout = \"80ms\" }}\n\
outlier_detection = {{ consecutive_5xx = 3, consecutive_gateway_errors = 0, base_ejection_time = \"30s\" }}\n\n\
[[route]]\nname = \"r\"\ncluster = \"c\"\n",
            good1.addr, good2.addr, bad.addr
        );
        let proxy = Proxy::start(&body);
        wait_state(&proxy, bad.addr, "healthy", Duration::from_secs(3)).await;
        let mut c = Client::h1(proxy.addr).await;
        let mut errors = 0;
        for _ in 0..60 {
            if c.get("x", "/", &[]).await.unwrap().status != 200 {
                errors += 1;
            }
        }
        assert_eq!(bad.hits(), 3, "ejected after exactly 3 consecutive 5xx");
        assert_eq!(errors, 3);
        assert_eq!(endpoint_state(&proxy, bad.addr), "ejected");
        assert!(
            bad.health_hits.load(std::sync::atomic::Ordering::Relaxed) > 0,
            "its /healthz kept passing"
        );
        // Still ejected after more passing probes (no early return on a green healthz).
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(endpoint_state(&proxy, bad.addr), "ejected");
        assert_eq!(
            proxy.metric(&format!(
                "tandem_endpoint_ejections_total{{cluster=\"c\",endpoint=\"{}\",reason=\"consecutive_5xx\"}}",
                bad.addr
            )),
            1.0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ejection_percent_is_honoured_and_ejection_time_expires() {
    bounded(60, async {
        let bs = [Backend::start("b0").await, Backend::start("b1").await, Backend::start("b2").await, Backend::start("b3").await];
        for b in &bs {
            *b.status.lock().unwrap() = 500;
        }
        let eps: Vec<String> = bs.iter().map(|b| format!("{{ address = \"{}\" }}", b.addr)).collect();
        let body = format!(
            "[[cluster]]\nname = \"c\"\npanic_threshold = 0\nendpoints = [{}]\n\
outlier_detection = {{ consecutive_5xx = 2, consecutive_gateway_errors = 0, max_ejection_percent = 50, base_ejection_time = \"700ms\" }}\n\n\
[[route]]\nname = \"r\"\ncluster = \"c\"\n",
            eps.join(", ")
        );
        let proxy = Proxy::start(&body);
        let mut c = Client::h1(proxy.addr).await;
        for _ in 0..40 {
            c.get("x", "/", &[]).await.unwrap();
        }
        let ejected = || {
            let s = status(&proxy);
            s["clusters"][0]["endpoints"].as_array().unwrap().iter().filter(|e| e["state"] == "ejected").count()
        };
        assert_eq!(ejected(), 2, "at most 50% of 4 endpoints ejected");
        let refused: f64 = bs
            .iter()
            .map(|b| proxy.metric(&format!("tandem_endpoint_ejections_total{{cluster=\"c\",endpoint=\"{}\",reason=\"refused_max_percent\"}}", b.addr)))
            .sum();
        assert!(refused >= 1.0);
        // Ejection time passes; the endpoints come back on their own.
        for b in &bs {
            *b.status.lock().unwrap() = 200;
        }
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(ejected(), 0);
        let (counts, failures) = load(proxy.addr, "x", "/", 400, 4, &[]).await;
        assert_eq!(failures, 0);
        assert_eq!(counts.len(), 4, "all four serve again: {counts:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_endpoint_finishes_in_flight_and_takes_nothing_new() {
    bounded(60, async {
        let a = Backend::start("a").await;
        let b = Backend::start("b").await;
        let proxy = Proxy::start(&one_route_to_endpoints("c", &[a.addr, b.addr]));
        // Slow requests in flight on both endpoints.
        let mut inflight = Vec::new();
        for _ in 0..4 {
            let addr = proxy.addr;
            inflight.push(tokio::spawn(async move {
                Client::h1(addr).await.get("x", "/?delay_ms=800", &[]).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(b.hits() >= 1);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args([
                "ctl",
                "--admin",
                &proxy.admin.to_string(),
                "endpoint",
                "drain",
                "c",
                &b.addr.to_string(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(endpoint_state(&proxy, b.addr), "draining");
        let b_before = b.hits();
        let (counts, failures) = load(proxy.addr, "x", "/", 100, 4, &[]).await;
        assert_eq!(failures, 0);
        assert_eq!(counts.get("b"), None, "no new requests to a draining endpoint");
        assert_eq!(b.hits(), b_before);
        for t in inflight {
            assert_eq!(t.await.unwrap().unwrap().status, 200, "in-flight requests complete");
        }
        wait_state(&proxy, b.addr, "drained", Duration::from_secs(2)).await;
        let s = status(&proxy);
        assert!(s["clusters"][0]["endpoints"][1]["drained_seconds_ago"].is_number());
        // Back in rotation.
        proxy.admin_post(&format!("/endpoints/undrain?cluster=c&address={}", b.addr));
        let (counts, _) = load(proxy.addr, "x", "/", 100, 4, &[]).await;
        assert!(counts.contains_key("b"));

        // An endpoint removed by reload drains too: its in-flight request completes.
        let slow = {
            let addr = proxy.addr;
            tokio::spawn(async move {
                let mut c = Client::h1(addr).await;
                let mut out = Vec::new();
                for _ in 0..2 {
                    out.push(c.get("x", "/?delay_ms=600", &[]).await.map(|r| r.status));
                }
                out
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        proxy.rewrite(&one_route_to(a.addr));
        proxy.signal("HUP");
        let statuses = slow.await.unwrap();
        assert!(statuses.iter().all(|s| matches!(s, Ok(200))), "{statuses:?}");
        let t = Instant::now();
        loop {
            let s = status(&proxy);
            let removed = s["removed_endpoints"].as_array().unwrap();
            if removed.len() == 1 && removed[0]["state"] == "drained" {
                assert_eq!(removed[0]["address"], b.addr.to_string());
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(3), "{s}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// A single node's health thread sleeps while it has nothing to do (no drain going on,
/// its next sweep seconds away) instead of ticking, and an operator's drain wakes it:
/// an endpoint with nothing in flight is marked drained at once, not at the next sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_single_node_health_thread_sleeps_and_a_drain_wakes_it() {
    bounded(60, async {
        let a = Backend::start("a").await;
        let b = Backend::start("b").await;
        let proxy = Proxy::start(&one_route_to_endpoints("c", &[a.addr, b.addr]));
        let pid = proxy.child.id();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = thread_switches(pid, Some("health"), true);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let woke = thread_switches(pid, Some("health"), true) - before;
        // A 5 s sweep may fall in the window (about two switches per wake-up); a 200 ms
        // tick would be about twenty.
        assert!(woke <= 4, "the idle health thread woke {woke} times in 2 s");
        proxy.admin_post(&format!("/endpoints/drain?cluster=c&address={}", b.addr));
        wait_state(&proxy, b.addr, "drained", Duration::from_secs(1)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_rate_outlier_is_ejected_by_the_sweep() {
    bounded(60, async {
        let bs = [
            Backend::start("b0").await,
            Backend::start("b1").await,
            Backend::start("b2").await,
            Backend::start("b3").await,
            Backend::start("b4").await,
        ];
        let eps: Vec<String> = bs.iter().map(|b| format!("{{ address = \"{}\" }}", b.addr)).collect();
        let body = format!(
            "[[cluster]]\nname = \"c\"\nendpoints = [{}]\n\
outlier_detection = {{ consecutive_5xx = 0, consecutive_gateway_errors = 0, interval = \"1s\", success_rate_min_requests = 20, success_rate_min_hosts = 3, success_rate_stdev_factor = 1.0 }}\n\n\
[[route]]\nname = \"r\"\ncluster = \"c\"\n",
            eps.join(", ")
        );
        let proxy = Proxy::start(&body);
        // b0 fails every 2nd request: never 5 in a row, but a far worse success rate.
        let flaky = bs[0].addr;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let toggler = {
            let status = bs[0].status.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut bad = false;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    bad = !bad;
                    *status.lock().unwrap() = if bad { 500 } else { 200 };
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            })
        };
        let t = Instant::now();
        while endpoint_state(&proxy, flaky) != "ejected" {
            load(proxy.addr, "x", "/", 200, 4, &[]).await;
            assert!(t.elapsed() < Duration::from_secs(10), "success-rate outlier not ejected");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        toggler.await.unwrap();
        assert_eq!(proxy.metric(&format!("tandem_endpoint_ejections_total{{cluster=\"c\",endpoint=\"{flaky}\",reason=\"success_rate\"}}")), 1.0);
        for b in &bs[1..] {
            assert_eq!(endpoint_state(&proxy, b.addr), "unknown", "healthy peers stay in rotation");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_checks_with_send_and_expect() {
    bounded(30, async {
        // A line server answering PONG to PING, and one answering nonsense.
        async fn line_server(reply: &'static [u8]) -> std::net::SocketAddr {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(async move {
                loop {
                    let Ok((mut s, _)) = l.accept().await else { continue };
                    tokio::spawn(async move {
                        let mut buf = [0u8; 64];
                        if s.read(&mut buf).await.unwrap_or(0) > 0 {
                            let _ = s.write_all(reply).await;
                        }
                    });
                }
            });
            addr
        }
        let good = line_server(b"+PONG\r\n").await;
        let bad = line_server(b"-ERR\r\n").await;
        let body = format!(
            "[[cluster]]\nname = \"c\"\nendpoints = [{{ address = \"{good}\" }}, {{ address = \"{bad}\" }}]\n\
health_check = {{ kind = \"tcp\", send = \"PING\\r\\n\", expect = \"PONG\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1 }}\n\n\
[[route]]\nname = \"r\"\ncluster = \"c\"\n"
        );
        let proxy = Proxy::start(&body);
        wait_state(&proxy, good, "healthy", Duration::from_secs(3)).await;
        wait_state(&proxy, bad, "unhealthy", Duration::from_secs(3)).await;
    })
    .await;
}
