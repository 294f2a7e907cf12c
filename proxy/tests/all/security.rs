//! Tandem under attack from the same network, over raw sockets: host-routing bypasses
//! (HTTP/1.1 and h2), floods of the admin and peer ports, client faults that must not be
//! blamed on backends, upstream framing tricks, and browser-driven admin calls.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// Sends `bytes` on a fresh connection and reads until the peer closes (or `wait`).
async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(resp: &str) -> u16 {
    resp.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Two virtual hosts, each on its own backend: `www.test` and `admin.test`.
async fn two_hosts() -> (Proxy, Backend, Backend) {
    let www = Backend::start("www").await;
    let adm = Backend::start("admin").await;
    let p = Proxy::start(&format!(
        "[[cluster]]\nname = \"www\"\nendpoints = [{{ address = \"{}\" }}]\n\n[[cluster]]\nname = \"adm\"\nendpoints = [{{ address = \"{}\" }}]\n\n\
         [[route]]\nname = \"www\"\nhosts = [\"www.test\"]\ncluster = \"www\"\n\n[[route]]\nname = \"adm\"\nhosts = [\"admin.test\"]\ncluster = \"adm\"\n",
        www.addr, adm.addr
    ));
    (p, www, adm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_authority_per_request_over_http1() {
    bounded(30, async {
        let (p, www, adm) = two_hosts().await;
        let w = Duration::from_secs(3);
        // Absolute-form: the target's authority is the request's, whatever Host says;
        // it is routed, forwarded (Host and X-Forwarded-Host) and logged as www.test.
        let r = raw(
            p.addr,
            b"GET http://www.test/headers HTTP/1.1\r\nHost: admin.test\r\nConnection: close\r\n\r\n",
            w,
        )
        .await;
        assert_eq!(status_of(&r), 200, "{r}");
        assert!(r.contains("x-backend: www"), "{r}");
        assert!(r.contains("\nhost: www.test\n"), "{r}");
        assert!(r.contains("x-forwarded-host: www.test"), "{r}");
        assert!(!r.contains("admin.test"), "{r}");
        assert_eq!(adm.hits(), 0);

        // Two Host headers, none, or an invalid one: 400 and the connection closes.
        for (what, req) in [
            (
                "two Host headers",
                &b"GET /headers HTTP/1.1\r\nHost: www.test\r\nHost: admin.test\r\n\r\n"[..],
            ),
            ("no Host", b"GET /headers HTTP/1.1\r\n\r\n"),
            ("Host with a path", b"GET /headers HTTP/1.1\r\nHost: www.test/x\r\n\r\n"),
            (
                "Host with userinfo",
                b"GET /headers HTTP/1.1\r\nHost: admin.test@www.test\r\n\r\n",
            ),
            (
                "absolute-form with userinfo",
                b"GET http://admin.test@www.test/headers HTTP/1.1\r\nHost: www.test\r\n\r\n",
            ),
            (
                "absolute-form without Host",
                b"GET http://www.test/headers HTTP/1.1\r\n\r\n",
            ),
        ] {
            let r = raw(p.addr, req, w).await;
            assert_eq!(status_of(&r), 400, "{what}: {r}");
            assert!(r.to_ascii_lowercase().contains("connection: close"), "{what}: {r}");
        }
        assert_eq!((www.hits(), adm.hits()), (1, 0));
        // HTTP/1.0 may omit Host (no route matches it here).
        let r = raw(p.addr, b"GET /headers HTTP/1.0\r\n\r\n", w).await;
        assert_eq!(status_of(&r), 404, "{r}");
        assert!(p.metric("tandem_listener_malformed_requests_total{listener=\"web\"}") >= 6.0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let log = p.access_log();
        assert!(log.contains("\"authority\":\"www.test\""), "{log}");
        assert_eq!(log.matches("\"reason\":\"bad-request\"").count(), 6, "{log}");
    })
    .await;
}

/// HTTP/1.0 may omit Host, but the HTTP/1.1 request upstream must carry one (nginx
/// answers 400 without): it gets the cluster's name, and no X-Forwarded-Host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_request_without_host_goes_upstream_with_the_clusters_name() {
    bounded(30, async {
        let b = Backend::start("b").await;
        let p = Proxy::start(&one_route_to_cluster("shop", b.addr));
        let r = raw(p.addr, b"GET /headers HTTP/1.0\r\n\r\n", Duration::from_secs(3)).await;
        assert_eq!(status_of(&r), 200, "{r}");
        assert!(r.contains("GET /headers HTTP/1.1\n"), "{r}");
        assert!(r.contains("\nhost: shop\n"), "{r}");
        assert!(!r.contains("x-forwarded-host"), "{r}");
        // A client's own Host is kept.
        let r = raw(
            p.addr,
            b"GET /headers HTTP/1.0\r\nHost: a.test\r\n\r\n",
            Duration::from_secs(3),
        )
        .await;
        assert!(r.contains("\nhost: a.test\n"), "{r}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_authority_per_request_over_h2() {
    bounded(30, async {
        let (p, www, adm) = two_hosts().await;
        let mut c = Client::h2(p.addr).await;
        // :authority and host agree (any case): served.
        let r = c.get("www.test", "/headers", &[("host", "WWW.test")]).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        // They differ: refused, never routed by one and forwarded with the other.
        let mut c = Client::h2(p.addr).await;
        let r = c.get("www.test", "/headers", &[("host", "admin.test")]).await.unwrap();
        assert_eq!(r.status, 400, "{r:?}");
        assert!(r.body.contains(":authority and host"), "{r:?}");
        assert_eq!((www.hits(), adm.hits()), (1, 0));
    })
    .await;
}

/// Opens up to `n` connections to `addr` (each within 200 ms) and keeps them open.
async fn flood(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            v.push(s);
        }
    }
    v
}

/// Lets the test process hold thousands of sockets.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    assert!(
        lim.rlim_max >= 12_000,
        "the flood test opens 10,000 sockets; raise the hard open-file limit (ulimit -Hn is {})",
        lim.rlim_max
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooded_control_ports_do_not_stop_the_data_plane() {
    bounded(120, async {
        raise_fd_limit();
        let pki = crate::pki::Pki::new();
        let data = tempfile::tempdir().unwrap();
        let (cert, key) = pki.leaf("node1", &["tandem-peer"], false);
        let peer_port = free_port();
        let b = Backend::start("b").await;
        let p = Proxy::start(&format!(
            "[[cluster]]\nname = \"c\"\nendpoints = [{{ address = \"{}\" }}]\n\n[[route]]\nname = \"r\"\ncluster = \"c\"\n\n\
             [ha]\nnode_id = 1\ndata_dir = \"{}\"\ntls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}\npeers = [{{ id = 1, address = \"127.0.0.1:{peer_port}\" }}]\n",
            b.addr,
            data.path().join("ha").display(),
            pki.ca_pem.display(),
            cert.display(),
            key.display(),
        ));
        let peer: SocketAddr = format!("127.0.0.1:{peer_port}").parse().unwrap();
        let t = Instant::now();
        let (admin_conns, peer_conns) = tokio::join!(flood(p.admin, 5000), flood(peer, 5000));
        eprintln!(
            "flood: {} admin and {} peer connections opened in {:?}",
            admin_conns.len(),
            peer_conns.len(),
            t.elapsed()
        );
        assert!(admin_conns.len() >= 4000 && peer_conns.len() >= 4000);
        // Normal traffic goes on while every flooding connection is still open.
        let (counts, failed) = load(p.addr, "x", "/", 400, 8, &[]).await;
        assert_eq!((failed, counts.get("b").copied()), (0, Some(400)));
        drop(admin_conns);
        drop(peer_conns);
        // The admin port serves again once the flood is gone, and says what it refused.
        let t = Instant::now();
        let metrics = loop {
            if let Ok((200, m)) = tandem_proxy::control::ctl::call(p.admin, None, "GET", "/metrics") {
                break m;
            }
            assert!(t.elapsed() < Duration::from_secs(15), "admin did not recover");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let value = |name: &str| -> f64 {
            metrics
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        assert!(value("tandem_admin_connections_refused_total") > 1000.0);
        assert!(value("tandem_ha_peer_refused_total{reason=\"capacity\"}") > 1000.0);
        let (counts, failed) = load(p.addr, "x", "/", 100, 4, &[]).await;
        assert_eq!((failed, counts.get("b").copied()), (0, Some(100)));
    })
    .await;
}

/// A cluster whose one endpoint would be ejected after 3 gateway errors in a row.
async fn guarded_backend() -> (Proxy, Backend) {
    let b = Backend::start("b").await;
    let p = Proxy::start_with(
        &format!(
            "[[cluster]]\nname = \"c\"\nendpoints = [{{ address = \"{}\" }}]\noutlier_detection = {{ consecutive_gateway_errors = 3, consecutive_5xx = 3, max_ejection_percent = 100 }}\n\n[[route]]\nname = \"r\"\ncluster = \"c\"\n",
            b.addr
        ),
        "request_body_timeout = \"1s\"",
    );
    (p, b)
}

fn endpoint_state(p: &Proxy) -> String {
    let s: serde_json::Value = serde_json::from_str(
        &tandem_proxy::control::ctl::call(p.admin, None, "GET", "/status")
            .unwrap()
            .1,
    )
    .unwrap();
    s["clusters"][0]["endpoints"][0]["state"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_faults_are_not_blamed_on_the_backend() {
    bounded(60, async {
        let (p, b) = guarded_backend().await;
        let w = Duration::from_secs(3);
        // Six invalid chunked uploads: 400 each, the endpoint stays healthy.
        for _ in 0..6 {
            let r = raw(
                p.addr,
                b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
                w,
            )
            .await;
            assert_eq!(status_of(&r), 400, "{r}");
        }
        // Six aborted uploads: the client leaves half-way (logged as 499).
        for _ in 0..6 {
            let mut s = TcpStream::connect(p.addr).await.unwrap();
            s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nfirst part")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(s);
        }
        // Six stalled uploads: 408 after request_body_timeout.
        for _ in 0..6 {
            let t = Instant::now();
            let r = raw(
                p.addr,
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b",
                Duration::from_secs(5),
            )
            .await;
            assert_eq!(status_of(&r), 408, "{r}");
            assert!(t.elapsed() >= Duration::from_millis(900), "{:?}", t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // No active checks: "unknown" takes traffic; an ejection would read "ejected".
        assert_eq!(endpoint_state(&p), "unknown");
        let r = Client::h1(p.addr).await.get("x", "/", &[]).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "b\n"));
        assert_eq!(
            p.metric("tandem_endpoint_responses_total{cluster=\"c\",endpoint=") as u64,
            0
        );
        assert_eq!(p.metric("tandem_listener_client_aborts_total{listener=\"web\"}"), 6.0);
        assert_eq!(
            p.metric("tandem_listener_request_body_timeouts_total{listener=\"web\"}"),
            6.0
        );
        let log = p.access_log();
        assert_eq!(log.matches("\"status\":499").count(), 6, "{log}");
        assert_eq!(log.matches("\"reason\":\"client-abort\"").count(), 6, "{log}");
        assert_eq!(log.matches("\"status\":408").count(), 6, "{log}");
        let _ = b;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_outlasts_the_route_timeout() {
    bounded(60, async {
        let (p, _b) = guarded_backend().await;
        // 20 s of upload (a chunk every 500 ms) against the default 15 s route timeout;
        // the route timeout starts when the body is complete.
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let t = Instant::now();
        let mut sent = 0;
        while t.elapsed() < Duration::from_secs(20) {
            s.write_all(b"a\r\n0123456789\r\n").await.unwrap();
            sent += 10;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        s.write_all(b"0\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let r = String::from_utf8_lossy(&out);
        assert_eq!(status_of(&r), 200, "{r}");
        assert!(
            r.contains(&"0123456789".repeat(sent / 10)),
            "the echo carries the whole body"
        );
    })
    .await;
}

/// A raw backend answering every request with `answer`.
async fn answering(answer: &'static [u8]) -> SocketAddr {
    tcp_backend(move |mut s: TcpStream| async move {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_framing_tricks_are_refused() {
    bounded(30, async {
        // Both framings: 502 (not an empty 200), the connection is not reused.
        let both = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").await;
        let p = Proxy::start(&format!(
            "[[cluster]]\nname = \"c\"\nendpoints = [{{ address = \"{both}\" }}]\noutlier_detection = {{ consecutive_gateway_errors = 0, consecutive_5xx = 0 }}\n\n[[route]]\nname = \"r\"\ncluster = \"c\"\n"
        ));
        let mut c = Client::h1(p.addr).await;
        for _ in 0..2 {
            let r = c.get("x", "/", &[]).await.unwrap();
            assert_eq!(r.status, 502, "{r:?}");
        }
        assert_eq!(p.metric("tandem_endpoint_connections_opened_total{cluster=\"c\""), 2.0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(p.access_log().contains("\"status\":502"));

        // A head over 64 KiB that arrives in one piece: 502.
        let big: &'static [u8] = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\n{}Content-Length: 2\r\n\r\nok",
                format!("x-filler: {}\r\n", "a".repeat(1000)).repeat(70)
            )
            .into_bytes()
            .into_boxed_slice(),
        );
        let big = answering(big).await;
        // A body broken off after its head: counted apart from the 2xx it began as.
        let cut = tcp_backend(|mut s: TcpStream| async move {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly a little").await;
        })
        .await;
        p.rewrite(&format!(
            "[[cluster]]\nname = \"big\"\nendpoints = [{{ address = \"{big}\" }}]\n\n[[cluster]]\nname = \"cut\"\nendpoints = [{{ address = \"{cut}\" }}]\n\n\
             [[route]]\nname = \"big\"\npath_prefix = \"/big\"\ncluster = \"big\"\n\n[[route]]\nname = \"cut\"\ncluster = \"cut\"\n"
        ));
        p.reload_by_signal().await;
        let r = Client::h1(p.addr).await.get("x", "/big", &[]).await.unwrap();
        assert_eq!(r.status, 502, "{r:?}");
        let r = Client::h1(p.addr).await.get("x", "/cut", &[]).await;
        assert!(r.is_err(), "the client sees the break: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(p.metric("tandem_endpoint_response_body_resets_total{cluster=\"cut\""), 1.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_cannot_drive_the_admin_api() {
    bounded(30, async {
        let b = Backend::start("b").await;
        let p = Proxy::start(&one_route_to(b.addr));
        let w = Duration::from_secs(3);
        let admin = p.admin;
        let cases: Vec<(&str, String, u16)> = vec![
            // A cross-site form post (no custom header possible).
            (
                "form post",
                format!("POST /drain HTTP/1.1\r\nHost: {admin}\r\nOrigin: http://evil.example\r\nContent-Length: 0\r\n\r\n"),
                403,
            ),
            (
                "fetch metadata",
                format!("POST /drain HTTP/1.1\r\nHost: {admin}\r\nSec-Fetch-Site: cross-site\r\nX-Tandem-Admin: 1\r\nContent-Length: 0\r\n\r\n"),
                403,
            ),
            (
                "no admin header",
                format!("POST /maintenance HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\n\r\n"),
                403,
            ),
            // A DNS-rebinding page addresses the admin API by its own name.
            ("rebound read", "GET /status HTTP/1.1\r\nHost: evil.example:9900\r\n\r\n".to_string(), 403),
            ("plain read", format!("GET /ready HTTP/1.1\r\nHost: {admin}\r\n\r\n"), 200),
            ("localhost read", "GET /live HTTP/1.1\r\nHost: localhost\r\n\r\n".to_string(), 200),
        ];
        for (what, req, want) in cases {
            let r = raw(admin, req.as_bytes(), w).await;
            assert_eq!(status_of(&r), want, "{what}: {r}");
        }
        assert_eq!(p.metric("tandem_admin_requests_refused_total"), 4.0);
        // Still serving: nothing above drained it.
        assert_eq!(Client::h1(p.addr).await.get("x", "/", &[]).await.unwrap().status, 200);
        // tandem ctl's calls are accepted.
        let (status, _) = tandem_proxy::control::ctl::call(admin, None, "POST", "/maintenance?on=0").unwrap();
        assert_eq!(status, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_directory_of_another_user_is_not_used() {
    bounded(60, async {
        if !crate::common::is_root("a cache directory owned by another user") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let foreign = dir.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
        let module = crate::wasm::module("noop");
        let cfg = dir.path().join("t.toml");
        std::fs::write(
            &cfg,
            format!(
                "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n[[filter]]\nname = \"noop\"\npath = \"{}\"\n\n[[cluster]]\nname = \"c\"\nendpoints = [{{ address = \"127.0.0.1:1\" }}]\n\n[[route]]\nname = \"r\"\ncluster = \"c\"\nfilters = [\"noop\"]\n",
                module
            ),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(["check", "-c"])
            .arg(&cfg)
            .env("TANDEM_WASM_CACHE", &foreign)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("owned by uid 65534"), "{stderr}");
        assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 0, "nothing was written there");
    })
    .await;
}
