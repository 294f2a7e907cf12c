//! Balancer behaviour against real backends.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_avoids_an_endpoint_50ms_slower_than_its_peers() {
    bounded(90, async {
        let a = Backend::start("fast-a").await;
        let b = Backend::start("fast-b").await;
        let slow = Backend::start("slow").await;
        *slow.delay.lock().unwrap() = Duration::from_millis(50);
        let body = format!(
            "[[cluster]]\nname = \"c\"\nbalancer = \"p2c_ewma\"\nendpoints = [{{ address = \"{}\" }}, {{ address = \"{}\" }}, {{ address = \"{}\" }}]\n\n[[route]]\nname = \"r\"\ncluster = \"c\"\n",
            a.addr, b.addr, slow.addr
        );
        let proxy = Proxy::start(&body);
        let (counts, failed) = load(proxy.addr, "x", "/", 4000, 16, &[]).await;
        assert_eq!(failed, 0);
        let total: usize = counts.values().sum();
        let slow_share = *counts.get("slow").unwrap_or(&0) as f64 / total as f64;
        assert!(slow_share < 0.10, "slow endpoint got {slow_share:.3} of requests: {counts:?}");
        assert!(counts["fast-a"] > 1000 && counts["fast-b"] > 1000, "{counts:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_and_maglev_keep_a_key_on_one_endpoint() {
    bounded(60, async {
        let bs = [Backend::start("b0").await, Backend::start("b1").await, Backend::start("b2").await];
        for balancer in ["ring_hash", "maglev"] {
            let eps: Vec<String> = bs.iter().map(|b| format!("{{ address = \"{}\" }}", b.addr)).collect();
            let body = format!(
                "[[cluster]]\nname = \"c\"\nbalancer = \"{balancer}\"\nhash_on = \"header:x-user\"\nendpoints = [{}]\n\n[[route]]\nname = \"r\"\ncluster = \"c\"\n",
                eps.join(", ")
            );
            let proxy = Proxy::start(&body);
            let mut seen_endpoints = std::collections::HashSet::new();
            for user in 0..30 {
                let u = format!("user-{user}");
                let (counts, failed) = load(proxy.addr, "x", "/", 20, 4, &[("x-user", &u)]).await;
                assert_eq!(failed, 0);
                assert_eq!(counts.len(), 1, "{balancer}: key {u} spread over {counts:?}");
                seen_endpoints.extend(counts.into_keys());
            }
            assert_eq!(seen_endpoints.len(), 3, "{balancer}: keys should use every endpoint");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_and_round_robin_through_the_proxy() {
    bounded(60, async {
        let a = Backend::start("a").await;
        let b = Backend::start("b").await;
        let body = format!(
            "[[cluster]]\nname = \"w\"\nbalancer = \"weighted\"\nendpoints = [{{ address = \"{}\", weight = 3 }}, {{ address = \"{}\", weight = 1 }}]\n\n[[route]]\nname = \"r\"\ncluster = \"w\"\n",
            a.addr, b.addr
        );
        let proxy = Proxy::start(&body);
        let (counts, failed) = load(proxy.addr, "x", "/", 4000, 8, &[]).await;
        assert_eq!(failed, 0);
        let share = counts["a"] as f64 / 4000.0;
        assert!((share - 0.75).abs() <= 0.02, "weighted share {share}");
    })
    .await;
}
