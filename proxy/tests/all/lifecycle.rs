//! Reload (SIGHUP and admin) and graceful stop (SIGTERM) under load.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

fn routed_to(cluster: &str, a: &Backend, b: &Backend) -> String {
    format!(
        "[[cluster]]\nname = \"old\"\nendpoints = [{{ address = \"{}\" }}]\n\n[[cluster]]\nname = \"new\"\nendpoints = [{{ address = \"{}\" }}]\n\n[[route]]\nname = \"r\"\ncluster = \"{cluster}\"\n",
        a.addr, b.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_changed_route_without_failing_a_request() {
    bounded(60, async {
        let old = Backend::start("old").await;
        let new = Backend::start("new").await;
        let proxy = Proxy::start(&routed_to("old", &old, &new));
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicUsize::new(0));
        let total = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (stop, failures, total, addr) = (stop.clone(), failures.clone(), total.clone(), proxy.addr);
            tasks.push(tokio::spawn(async move {
                let mut c = Client::h1(addr).await;
                while !stop.load(Ordering::Relaxed) {
                    match c.get("x", "/?delay_ms=2", &[]).await {
                        Ok(r) if r.status == 200 => {}
                        other => {
                            eprintln!("failed: {other:?}");
                            failures.fetch_add(1, Ordering::Relaxed);
                            c = Client::h1(addr).await;
                        }
                    }
                    total.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.rewrite(&routed_to("new", &old, &new));
        proxy.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut c = Client::h1(proxy.addr).await;
            if c.get("x", "/", &[]).await.unwrap().body.trim() == "new" {
                break;
            }
            assert!(Instant::now() < deadline, "reload not applied");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(failures.load(Ordering::Relaxed), 0);
        assert!(total.load(Ordering::Relaxed) > 100);
        assert!(old.hits() > 0 && new.hits() > 0);
        assert_eq!(proxy.metric("tandem_config_generation "), 2.0);
        assert_eq!(proxy.metric("tandem_reloads_total{result=\"ok\"}"), 1.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_is_refused_and_the_old_one_keeps_serving() {
    bounded(30, async {
        let old = Backend::start("old").await;
        let new = Backend::start("new").await;
        let proxy = Proxy::start(&routed_to("old", &old, &new));
        proxy.rewrite(&routed_to("missing", &old, &new));
        proxy.reload_by_signal().await;
        let mut c = Client::h1(proxy.addr).await;
        for _ in 0..10 {
            let r = c.get("x", "/", &[]).await.unwrap();
            assert_eq!((r.status, r.body.trim()), (200, "old"));
        }
        assert_eq!(proxy.metric("tandem_reloads_total{result=\"failed\"}"), 1.0);
        // The admin reload call returns the precise error.
        let (status, body) = proxy.admin_post("/reload");
        assert_eq!(status, 400);
        assert!(
            body.contains("route[0].cluster") && body.contains("`missing`"),
            "{body}"
        );
        // Fixing the file and reloading through the admin API works.
        proxy.rewrite(&routed_to("new", &old, &new));
        let (status, body) = proxy.admin_post("/reload");
        assert_eq!(status, 200, "{body}");
        assert_eq!(c.get("x", "/", &[]).await.unwrap().body.trim(), "new");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    bounded(30, async {
        let b = Backend::start("b").await;
        let mut proxy = Proxy::start(&one_route_to(b.addr));
        let addr = proxy.addr;
        let inflight = tokio::spawn(async move {
            let mut c = Client::h1(addr).await;
            c.get("x", "/?delay_ms=800", &[]).await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        proxy.signal("TERM");
        tokio::time::sleep(Duration::from_millis(200)).await;
        // New connections are no longer accepted.
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "listener should be closed while draining"
        );
        let r = inflight.await.unwrap().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["connection"], "close");
        proxy.exits_cleanly_by(Instant::now() + Duration::from_secs(5)).await;
    })
    .await;
}

/// `tandem ctl reload` (what `systemctl reload` runs) exits non-zero with the file's
/// errors when it is refused; a restart-only change is reported until it is reverted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_reload_fails_visibly_and_forgets_a_reverted_listener_change() {
    bounded(30, async {
        let old = Backend::start("old").await;
        let new = Backend::start("new").await;
        let proxy = Proxy::start(&routed_to("old", &old, &new));
        let ctl_reload = || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
                .args(["ctl", "--admin", &proxy.admin.to_string(), "reload"])
                .output()
                .unwrap();
            (
                out.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        };
        proxy.rewrite(&routed_to("missing", &old, &new));
        let (ok, said) = ctl_reload();
        assert!(!ok, "a refused reload must fail: {said}");
        assert!(said.contains("route[0].cluster") && said.contains("missing"), "{said}");

        proxy.rewrite(&routed_to("new", &old, &new));
        let original = std::fs::read_to_string(proxy.config.path()).unwrap();
        let changed = original.replacen("[[listener]]\n", "[[listener]]\nidle_timeout = \"7s\"\n", 1);
        std::fs::write(proxy.config.path(), &changed).unwrap();
        let (ok, said) = ctl_reload();
        assert!(ok, "{said}");
        assert!(said.contains("restart_required_for: listeners"), "{said}");
        std::fs::write(proxy.config.path(), &original).unwrap();
        let (ok, said) = ctl_reload();
        assert!(ok, "{said}");
        assert!(
            said.contains("restart_required_for: \n") || !said.contains("listeners"),
            "{said}"
        );
    })
    .await;
}

/// logrotate moves the file, then SIGUSR1: later lines go to a new file at the path,
/// earlier ones stay in the moved file, none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_access_log_after_rotation() {
    bounded(30, async {
        let b = Backend::start("b").await;
        let proxy = Proxy::start(&one_route_to(b.addr));
        let mut c = Client::h1(proxy.addr).await;
        for i in 0..5 {
            assert_eq!(c.get("x", &format!("/before-{i}"), &[]).await.unwrap().status, 200);
        }
        let lines = |p: &std::path::Path, what: &str| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(what))
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while lines(&proxy.stdout_path, "/before-") < 5 {
            assert!(Instant::now() < deadline, "lines not written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rotated = proxy.stdout_path.with_extension("log.1");
        std::fs::rename(&proxy.stdout_path, &rotated).unwrap();
        proxy.signal("USR1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while proxy.metric("tandem_access_log_reopens_total") < 1.0 {
            assert!(Instant::now() < deadline, "SIGUSR1 did not reopen the log");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for i in 0..5 {
            assert_eq!(c.get("x", &format!("/after-{i}"), &[]).await.unwrap().status, 200);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while lines(&proxy.stdout_path, "/after-") < 5 {
            assert!(Instant::now() < deadline, "no lines in the reopened file");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(lines(&rotated, "/before-"), 5);
        assert_eq!(lines(&rotated, "/after-"), 0);
        assert_eq!(lines(&proxy.stdout_path, "/before-"), 0);
    })
    .await;
}
