//! Downstream protections: malformed and oversized requests, slowloris, idle
//! keep-alive, per-connection request cap, connection cap. Others keep being served.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

fn body_for(b: &Backend) -> String {
    format!(
        "[[cluster]]\nname = \"c\"\nendpoints = [{{ address = \"{}\" }}]\n\n[[route]]\nname = \"r\"\ncluster = \"c\"\n",
        b.addr
    )
}

/// Reads until EOF (or 5 s); returns what arrived and whether the peer closed.
async fn read_all(s: &mut TcpStream) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_get_400_and_431_and_close() {
    bounded(30, async {
        let b = Backend::start("b").await;
        let proxy = Proxy::start_with(&body_for(&b), "max_header_bytes = 16384");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"GET / HTTP/1.1\r\nHost x\r\n\r\n".to_vec(), "400"),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(),
                "400",
            ),
            (b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "400"),
            (
                [
                    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec(),
                    vec![b'a'; 40_000],
                    b"\r\n\r\n".to_vec(),
                ]
                .concat(),
                "431",
            ),
        ];
        for (req, want) in cases {
            let mut s = TcpStream::connect(proxy.addr).await.unwrap();
            s.write_all(&req).await.unwrap();
            let (resp, closed) = read_all(&mut s).await;
            assert!(
                resp.starts_with(&format!("HTTP/1.1 {want}")),
                "want {want}, got {resp:?}"
            );
            assert!(closed, "connection should be closed after {want}");
            // A well-formed client is served meanwhile.
            let mut c = Client::h1(proxy.addr).await;
            assert_eq!(c.get("x", "/", &[]).await.unwrap().status, 200);
        }
        // The counters are bumped when a rejected connection's task ends, which may be
        // just after the client saw the close.
        let counted = |p: &Proxy| {
            (
                p.metric("tandem_listener_malformed_requests_total{listener=\"web\"}"),
                p.metric("tandem_listener_oversized_requests_total{listener=\"web\"}"),
            )
        };
        let t = Instant::now();
        while counted(&proxy) != (3.0, 1.0) && t.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (malformed, oversized) = counted(&proxy);
        assert!(malformed >= 3.0, "malformed {malformed}");
        assert_eq!(oversized, 1.0);
        assert_eq!(b.hits(), 4, "bad requests must never reach the backend");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_time_out_while_others_are_served() {
    bounded(30, async {
        let b = Backend::start("b").await;
        let proxy = Proxy::start_with(&body_for(&b), "header_read_timeout = \"1s\"");
        // A client that never sends anything and one that trickles a header.
        let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
        let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        let started = Instant::now();
        let trickle = tokio::spawn(async move {
            for _ in 0..40 {
                if slow.write_all(b"a").await.is_err() {
                    return (started.elapsed(), true);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let (_, closed) = read_all(&mut slow).await;
            (started.elapsed(), closed)
        });
        // Meanwhile requests are served promptly.
        let mut c = Client::h1(proxy.addr).await;
        for _ in 0..10 {
            let t = Instant::now();
            assert_eq!(c.get("x", "/", &[]).await.unwrap().status, 200);
            assert!(t.elapsed() < Duration::from_millis(500));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (_, closed) = read_all(&mut silent).await;
        assert!(closed, "silent connection must be closed");
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "silent closed after {:?}",
            started.elapsed()
        );
        let (elapsed, closed) = trickle.await.unwrap();
        assert!(closed, "trickling connection must be closed");
        assert!(
            elapsed < Duration::from_millis(3000),
            "trickle closed after {elapsed:?}"
        );
        assert!(proxy.metric("tandem_listener_header_timeouts_total{listener=\"web\"}") >= 2.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_and_request_cap_close_connections() {
    bounded(30, async {
        let b = Backend::start("b").await;
        let proxy = Proxy::start_with(
            &body_for(&b),
            "idle_timeout = \"400ms\"\nmax_requests_per_connection = 3",
        );
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let mut got = String::new();
        for i in 0..3 {
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            let r = String::from_utf8_lossy(&buf[..n]).to_lowercase();
            assert!(r.starts_with("http/1.1 200"), "{r}");
            assert_eq!(r.contains("connection: close"), i == 2, "request {i}: {r}");
            got.push_str(&r);
        }
        let (_, closed) = read_all(&mut s).await;
        assert!(closed, "connection must close after max_requests_per_connection");

        // Idle keep-alive.
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0);
        let t = Instant::now();
        let (_, closed) = read_all(&mut s).await;
        assert!(closed);
        let idle = t.elapsed();
        assert!(
            idle >= Duration::from_millis(300) && idle < Duration::from_millis(2000),
            "closed after {idle:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_the_excess() {
    bounded(30, async {
        let b = Backend::start("b").await;
        let proxy = Proxy::start_with(&body_for(&b), "max_connections = 2");
        let mut c1 = Client::h1(proxy.addr).await;
        let mut c2 = Client::h1(proxy.addr).await;
        assert_eq!(c1.get("x", "/", &[]).await.unwrap().status, 200);
        assert_eq!(c2.get("x", "/", &[]).await.unwrap().status, 200);
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (resp, closed) = read_all(&mut s).await;
        assert!(
            closed && resp.is_empty(),
            "third connection must be closed unanswered: {resp:?}"
        );
        assert_eq!(
            proxy.metric("tandem_listener_connections_refused_total{listener=\"web\"}"),
            1.0
        );
        drop(c1);
        // Once one closes, a new one is accepted.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut c3 = Client::h1(proxy.addr).await;
        assert_eq!(c3.get("x", "/", &[]).await.unwrap().status, 200);
        assert_eq!(c2.get("x", "/", &[]).await.unwrap().status, 200);
    })
    .await;
}

/// `tandem_listener_connections_accepted_total` of the test listener.
fn accepted(p: &Proxy) -> f64 {
    p.metric("tandem_listener_connections_accepted_total{listener=\"web\"}")
}

/// Waits up to `limit` for `accepted(p)` to reach `n`; how long that took.
async fn until_accepted(p: &Proxy, n: f64, limit: Duration) -> Duration {
    let t = Instant::now();
    while accepted(p) < n {
        assert!(t.elapsed() < limit, "{} accepted after {limit:?}, not {n}", accepted(p));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.elapsed()
}

/// With `defer_accept`, the kernel hands a connection over once its first bytes arrive;
/// one that stays silent is handed over after about a second, and then times out like
/// any. Without it, a connection is taken at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_listener_takes_a_connection_once_its_first_bytes_arrive() {
    bounded(30, async {
        let b = Backend::start("b").await;
        let eager = Proxy::start(&body_for(&b));
        let _silent = TcpStream::connect(eager.addr).await.unwrap();
        until_accepted(&eager, 1.0, Duration::from_secs(2)).await;
        drop(eager);

        let proxy = Proxy::start_with(&body_for(&b), "defer_accept = true\nheader_read_timeout = \"1s\"");
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(accepted(&proxy), 0.0, "taken before its first bytes");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        assert_eq!(accepted(&proxy), 1.0);

        // A silent one: the kernel hands it over after the deferral, and the head
        // deadline closes it.
        let mut quiet = TcpStream::connect(proxy.addr).await.unwrap();
        let waited = until_accepted(&proxy, 2.0, Duration::from_secs(10)).await;
        assert!(waited >= Duration::from_millis(800), "handed over after {waited:?}");
        let (rest, closed) = read_all(&mut quiet).await;
        assert!(closed, "a silent connection stayed open: {rest:?}");
    })
    .await;
}

/// A keep-alive connection to `addr` whose first request was answered.
async fn answered_keep_alive(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    s
}

/// Sends the start of a request head, then a byte every 100 ms, until the proxy closes
/// the connection; returns how long that took. Panics if the request is answered or
/// the connection is still open after `give_up`.
async fn trickle_head_until_cut(slow: &mut TcpStream, give_up: Duration) -> Duration {
    let mut buf = [0u8; 1024];
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let started = Instant::now();
    loop {
        if slow.write_all(b"a").await.is_err() {
            return started.elapsed();
        }
        match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => panic!("the trickled request was answered"),
            Err(_) => {}
        }
        assert!(started.elapsed() < give_up, "trickling head not cut within {give_up:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_trickling_head_is_cut_but_an_idle_keepalive_connection_is_not() {
    bounded(30, async {
        let b = Backend::start("b").await;
        let proxy = Proxy::start_with(&body_for(&b), "header_read_timeout = \"500ms\"\nidle_timeout = \"5s\"");
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut buf = [0u8; 1024];

        // Idle for three head periods between two requests: still served (the head
        // deadline runs only once a head has started to arrive).
        let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
        idle.write_all(get).await.unwrap();
        let n = idle.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        idle.write_all(get).await.unwrap();
        let n = idle.read(&mut buf).await.unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "an idle keep-alive connection was closed at the head timeout"
        );

        // A second request whose head trickles in is cut within two head periods.
        let mut slow = answered_keep_alive(proxy.addr).await;
        let closed_after = trickle_head_until_cut(&mut slow, Duration::from_secs(4)).await;
        assert!(
            closed_after >= Duration::from_millis(400) && closed_after < Duration::from_millis(1600),
            "cut after {closed_after:?}"
        );
        assert!(proxy.metric("tandem_listener_header_timeouts_total{listener=\"web\"}") >= 1.0);
    })
    .await;
}

/// The head deadline of a later request holds whatever else the connection's deadlines
/// do: with a head period longer than the idle release's, a trickling head is cut
/// within two head periods, not at the (much later) idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_trickling_head_is_cut_at_the_head_deadline_not_the_idle_one() {
    bounded(30, async {
        let b = Backend::start("b").await;
        let proxy = Proxy::start_with(
            &body_for(&b),
            "header_read_timeout = \"1500ms\"\nidle_timeout = \"20s\"",
        );
        // Right after a response, and after an idle spell long enough for a release.
        for pause in [Duration::ZERO, Duration::from_millis(1200)] {
            let mut slow = answered_keep_alive(proxy.addr).await;
            tokio::time::sleep(pause).await;
            let closed_after = trickle_head_until_cut(&mut slow, Duration::from_secs(6)).await;
            assert!(
                closed_after >= Duration::from_millis(1300) && closed_after < Duration::from_millis(3600),
                "cut after {closed_after:?} (pause {pause:?})"
            );
        }
        assert!(proxy.metric("tandem_listener_header_timeouts_total{listener=\"web\"}") >= 2.0);
    })
    .await;
}
