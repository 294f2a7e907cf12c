//! WebSocket (HTTP/1.1 Upgrade), CONNECT tunnels and gRPC-style HTTP/2 exchanges with
//! trailers, grpc-status accounting and grpc-timeout.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// A body made of fixed frames (data and trailers).
struct Frames(VecDeque<Frame<Bytes>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// A backend that switches to an echo on Upgrade and CONNECT, and speaks gRPC-ish h2.
pub(crate) async fn special_backend() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { continue };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|mut req: hyper::Request<Incoming>| async move {
                    let upgrade = req.headers().contains_key("upgrade") || req.method() == http::Method::CONNECT;
                    if upgrade {
                        let on = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            let Ok(up) = on.await else { return };
                            let mut io = TokioIo::new(up);
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = io.read(&mut buf).await {
                                if n == 0 || io.write_all(&[b"echo:", &buf[..n]].concat()).await.is_err() {
                                    return;
                                }
                            }
                        });
                        let mut r = hyper::Response::new(Frames(VecDeque::new()));
                        if req.method() != http::Method::CONNECT {
                            *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
                            r.headers_mut().insert("upgrade", "websocket".parse().unwrap());
                            r.headers_mut().insert("connection", "Upgrade".parse().unwrap());
                        }
                        return Ok::<_, Infallible>(r);
                    }
                    let path = req.uri().path().to_string();
                    if path == "/plain" {
                        let frames = VecDeque::from(vec![Frame::data(Bytes::from_static(b"plain"))]);
                        return Ok(hyper::Response::new(Frames(frames)));
                    }
                    let slow = req.headers().contains_key("x-slow");
                    let _ = req.into_body().collect().await;
                    if slow {
                        tokio::time::sleep(Duration::from_millis(800)).await;
                    }
                    let status = if path.ends_with("Fail") { "14" } else { "0" };
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", status.parse().unwrap());
                    trailers.insert("grpc-message", "done".parse().unwrap());
                    let frames = VecDeque::from(vec![
                        Frame::data(Bytes::from_static(b"\0\0\0\0\x03one")),
                        Frame::data(Bytes::from_static(b"\0\0\0\0\x03two")),
                        Frame::trailers(trailers),
                    ]);
                    let mut r = hyper::Response::new(Frames(frames));
                    r.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    Ok(r)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_connect_are_tunnelled_both_ways() {
    bounded(30, async {
        let b = special_backend().await;
        let body = one_route_to(b);
        let proxy = Proxy::start(&body);
        // WebSocket handshake, then raw bytes both ways.
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            .await
            .unwrap();
        let mut head = vec![0u8; 1024];
        let n = s.read(&mut head).await.unwrap();
        let head = String::from_utf8_lossy(&head[..n]).to_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("upgrade: websocket"), "{head}");
        for msg in [&b"hello"[..], b"world"] {
            s.write_all(msg).await.unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], [b"echo:", msg].concat().as_slice());
        }
        drop(s);
        // CONNECT tunnel.
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n").await.unwrap();
        let mut head = vec![0u8; 1024];
        let n = s.read(&mut head).await.unwrap();
        assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));
        s.write_all(b"select 1").await.unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"echo:select 1");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let log = proxy.access_log();
        assert!(log.contains("\"reason\":\"upgraded\""), "{log}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_streams_keep_their_trailers_and_status_is_counted() {
    bounded(30, async {
        let b = special_backend().await;
        let body = format!(
            "[[cluster]]\nname = \"grpc\"\nprotocol = \"h2c\"\nendpoints = [{{ address = \"{b}\" }}]\n\n[[route]]\nname = \"grpc\"\ncluster = \"grpc\"\ntimeout = \"5s\"\n"
        );
        let proxy = Proxy::start(&body);
        let s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s)).await.unwrap();
        tokio::spawn(conn);
        let call = |path: &'static str, slow: bool| {
            let mut b = http::Request::post(format!("http://svc.local{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers");
            if slow {
                b = b.header("x-slow", "1").header("grpc-timeout", "150m");
            }
            b.body(http_body_util::Full::new(Bytes::from_static(b"\0\0\0\0\x02hi"))).unwrap()
        };
        for (path, want) in [("/pkg.Svc/Stream", "0"), ("/pkg.Svc/Fail", "14")] {
            tx.ready().await.unwrap();
            let resp = tx.send_request(call(path, false)).await.unwrap();
            assert_eq!(resp.status(), 200);
            let collected = resp.into_body().collect().await.unwrap();
            let trailers = collected.trailers().cloned().expect("trailers reach the client");
            assert_eq!(trailers["grpc-status"], want);
            assert_eq!(trailers["grpc-message"], "done");
            assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x03one\0\0\0\0\x03two");
        }
        // grpc-timeout shortens the deadline: 150 ms, not the route's 5 s.
        let t = Instant::now();
        tx.ready().await.unwrap();
        let resp = tx.send_request(call("/pkg.Svc/Stream", true)).await.unwrap();
        assert_eq!(resp.status(), 504);
        assert!(t.elapsed() < Duration::from_millis(600), "{:?}", t.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(proxy.metric("tandem_route_grpc_responses_total{route=\"grpc\",grpc_status=\"0\"}"), 1.0);
        assert_eq!(proxy.metric("tandem_route_grpc_responses_total{route=\"grpc\",grpc_status=\"14\"}"), 1.0);
        let log = proxy.access_log();
        assert!(log.contains("\"grpc_status\":14"), "{log}");
    })
    .await;
}

/// Reads until `want` has arrived, the peer closed or 3 s passed; returns the bytes and
/// whether the peer closed.
async fn read_until(s: &mut tokio::net::TcpStream, want: usize) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(3);
    while out.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    (out, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_bytes_choose_http1_or_h2c_however_they_arrive() {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    bounded(30, async {
        let b = Backend::start("b").await;
        let body = format!(
            "[[cluster]]\nname = \"c\"\nendpoints = [{{ address = \"{}\" }}]\n\n[[route]]\nname = \"r\"\ncluster = \"c\"\n",
            b.addr
        );
        let proxy = Proxy::start_with(&body, "header_read_timeout = \"1s\"");
        let pause = || tokio::time::sleep(Duration::from_millis(50));

        // HTTP/1.1 whose first byte is also the preface's, sent apart from the rest.
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"P").await.unwrap();
        pause().await;
        s.write_all(b"OST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
            .await
            .unwrap();
        let (got, _) = read_until(&mut s, 12).await;
        assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
        drop(s);

        // The preface in three pieces opens HTTP/2: the server's SETTINGS frame answers.
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        for part in [&PREFACE[..3], &PREFACE[3..20], &PREFACE[20..]] {
            s.write_all(part).await.unwrap();
            pause().await;
        }
        s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
        let (got, _) = read_until(&mut s, 9).await;
        assert!(got.len() >= 9 && got[3] == 4 && got[4] == 0, "not a SETTINGS frame: {got:?}");
        drop(s);

        // Half a preface and then silence is cut at the header deadline.
        let before = proxy.metric("tandem_listener_header_timeouts_total{listener=\"web\"}");
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(&PREFACE[..10]).await.unwrap();
        let t = Instant::now();
        let (got, closed) = read_until(&mut s, 1).await;
        assert!(closed && got.is_empty(), "{got:?}");
        assert!(t.elapsed() < Duration::from_millis(2500), "closed after {:?}", t.elapsed());
        let after = proxy.metric("tandem_listener_header_timeouts_total{listener=\"web\"}");
        assert_eq!(after, before + 1.0);

        // A listener without h2c reads the preface as a malformed HTTP/1.1 request and
        // closes (hyper answers nothing to it), counting it.
        let h1_only = Proxy::start_with(&body, "http2 = false");
        let mut s = tokio::net::TcpStream::connect(h1_only.addr).await.unwrap();
        s.write_all(PREFACE).await.unwrap();
        s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
        let (got, closed) = read_until(&mut s, 1).await;
        assert!(closed && got.is_empty(), "{got:?}");
        assert_eq!(h1_only.metric("tandem_listener_malformed_requests_total{listener=\"web\"}"), 1.0);
    })
    .await;
}

/// Reads from `s` until `end` has arrived `times` times (or 3 s pass).
async fn read_to(s: &mut tokio::net::TcpStream, end: &[u8], times: usize) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(3);
    while out.windows(end.len()).filter(|w| *w == end).count() < times {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request the special backend answers with a small chunked body.
const GET_PLAIN: &[u8] = b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n";

const RELEASES: &str = "tandem_listener_idle_releases_total{listener=\"web\"}";
const PARKED: &str = "tandem_listener_connections_parked{listener=\"web\"}";

/// The line of `/proc/{pid}/{file}` that starts with `key`, its first field after it.
fn proc_field(pid: u32, file: &str, key: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("/proc/{pid}/{file} has no `{key}` line (Linux 5.0 or later needed)"));
    line[key.len()..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// An idle connection's few records would keep whole 2 MiB huge pages resident, so no
/// memory of the process is backed by transparent huge pages: the kernel is told not to
/// (`THP_enabled` 0) and mimalloc does not ask for them, even
/// after a few hundred connections grew the heap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_keeps_its_memory_out_of_transparent_huge_pages() {
    bounded(30, async {
        let b = special_backend().await;
        let proxy = Proxy::start(&one_route_to(b));
        let pid = proxy.child.id();
        assert_eq!(proc_field(pid, "status", "THP_enabled:"), "0");
        let mut open = Vec::new();
        for _ in 0..300 {
            let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
            s.write_all(GET_PLAIN).await.unwrap();
            let r = read_to(&mut s, b"0\r\n\r\n", 1).await;
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            open.push(s);
        }
        assert_eq!(proc_field(pid, "smaps_rollup", "AnonHugePages:"), "0");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_give_their_buffers_back_and_keep_serving() {
    bounded(30, async {
        let b = special_backend().await;
        let body = one_route_to(b);
        let proxy = Proxy::start(&body);
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(GET_PLAIN).await.unwrap();
        let r = read_to(&mut s, b"0\r\n\r\n", 1).await;
        assert!(r.starts_with("HTTP/1.1 200") && r.contains("plain"), "{r}");
        assert_eq!(proxy.metric(RELEASES), 0.0, "released while busy");

        // Idle: the connection gives its buffers back, once, and stays open, parked in
        // its worker's lot.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert_eq!(proxy.metric(RELEASES), 1.0);
        assert_eq!(proxy.metric(PARKED), 1.0);
        // Two pipelined requests in one write wake it; both are answered.
        s.write_all(&[GET_PLAIN, GET_PLAIN].concat()).await.unwrap();
        let r = read_to(&mut s, b"0\r\n\r\n", 2).await;
        assert_eq!(r.matches("HTTP/1.1 200").count(), 2, "{r}");
        assert_eq!(proxy.metric(PARKED), 0.0, "a woken connection left the lot");

        // Released again, then a request head that arrives in two pieces far apart:
        // bytes between messages are a head on its way, not an idle connection.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert_eq!(proxy.metric(RELEASES), 2.0);
        s.write_all(b"GET /plain HTTP/1.1\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(1300)).await;
        s.write_all(b"Host: x\r\n\r\n").await.unwrap();
        let r = read_to(&mut s, b"0\r\n\r\n", 1).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert_eq!(proxy.metric(RELEASES), 2.0, "released with a head on its way");

        // A released connection still upgrades: the tunnel gets the byte stream.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert_eq!(proxy.metric(RELEASES), 3.0);
        s.write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            .await
            .unwrap();
        let head = read_to(&mut s, b"\r\n\r\n", 1).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        s.write_all(b"hello").await.unwrap();
        let echo = read_to(&mut s, b"hello", 1).await;
        assert_eq!(echo, "echo:hello");
        drop(s);

        // A connection released while idle still closes at idle_timeout.
        let quick = Proxy::start_with(&body, "idle_timeout = \"1s\"");
        let mut s = tokio::net::TcpStream::connect(quick.addr).await.unwrap();
        s.write_all(GET_PLAIN).await.unwrap();
        read_to(&mut s, b"0\r\n\r\n", 1).await;
        let t = Instant::now();
        let (rest, closed) = read_until(&mut s, 1).await;
        assert!(closed && rest.is_empty(), "{rest:?}");
        assert!(
            t.elapsed() < Duration::from_millis(2500),
            "closed after {:?}",
            t.elapsed()
        );
        assert_eq!(quick.metric(RELEASES), 1.0);
        assert_eq!(quick.metric(PARKED), 0.0, "a closed connection left the lot");
    })
    .await;
}

const ACTIVE: &str = "tandem_listener_connections_active{listener=\"web\"}";

/// A released connection waits for its next bytes outside the task that served it (in
/// its worker's lot) while that task ends: it must still count as open (drain waits for it, and
/// `max_connections` counts it), and drain must close it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_counts_as_open_and_closes_at_once_on_drain() {
    bounded(30, async {
        let b = special_backend().await;
        let body = one_route_to(b);
        let mut proxy = Proxy::start(&body);
        let mut parked = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let mut other = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        for s in [&mut parked, &mut other] {
            s.write_all(GET_PLAIN).await.unwrap();
            let r = read_to(s, b"0\r\n\r\n", 1).await;
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        }
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert_eq!(proxy.metric(RELEASES), 2.0);
        assert_eq!(proxy.metric(ACTIVE), 2.0, "parked connections are open");
        assert_eq!(proxy.metric(PARKED), 2.0);
        // One wakes, is served by a new task, and parks again; the other closes.
        other.write_all(GET_PLAIN).await.unwrap();
        let r = read_to(&mut other, b"0\r\n\r\n", 1).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        drop(other);
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert_eq!(
            proxy.metric(ACTIVE),
            1.0,
            "a closed parked connection is no longer counted"
        );
        assert_eq!(proxy.metric(PARKED), 1.0);

        // Drain closes the parked connection at once, and with nothing left counted open
        // the process exits well before the 30 s drain deadline.
        let t = Instant::now();
        proxy.signal("TERM");
        let (rest, closed) = read_until(&mut parked, 1).await;
        assert!(closed && rest.is_empty(), "{rest:?}");
        assert!(t.elapsed() < Duration::from_secs(2), "closed after {:?}", t.elapsed());
        proxy.exits_cleanly_by(t + Duration::from_secs(5)).await;
    })
    .await;
}

/// A connection parked in its worker's lot keeps only what it needs to come back as
/// itself: after each idle spell its next request still carries the client address its
/// PROXY header gave. In maintenance a parked connection closes once idle for half the
/// handover: not at once, and not only at its idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_comes_back_as_itself_and_closes_in_maintenance() {
    bounded(30, async {
        let b = Backend::start("b").await;
        let proxy = Proxy::start_server(
            &one_route_to(b.addr),
            "proxy_protocol_from = [\"127.0.0.0/8\"]",
            "",
            "maintenance_handover = \"6s\"",
        );
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"PROXY TCP4 192.0.2.99 127.0.0.1 1234 80\r\n")
            .await
            .unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
        let (closed_tx, mut closed) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = conn.await;
            let _ = closed_tx.send(Instant::now());
        });
        for round in 1..=2 {
            let req = hyper::Request::get("/headers")
                .header("host", "x")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let r = send.send_request(req).await.unwrap();
            let text = r.into_body().collect().await.unwrap().to_bytes();
            let text = String::from_utf8_lossy(&text);
            assert!(text.contains("x-forwarded-for: 192.0.2.99"), "round {round}: {text}");
            tokio::time::sleep(Duration::from_millis(1300)).await;
            assert_eq!(proxy.metric(PARKED), 1.0, "round {round}");
            assert_eq!(proxy.metric(RELEASES), round as f64);
        }

        // Idle for about 1.3 s when maintenance begins: it closes at 3 s idle.
        let t = Instant::now();
        assert_eq!(proxy.admin_post("/maintenance?on=1").0, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            closed.try_recv().is_err(),
            "closed before it was idle for half the handover"
        );
        let at = closed.await.unwrap();
        assert!(at - t < Duration::from_secs(4), "closed after {:?}", at - t);
        assert_eq!(proxy.metric(PARKED), 0.0);
        assert_eq!(proxy.metric(ACTIVE), 0.0);
        assert_eq!(proxy.admin_post("/maintenance?on=0").0, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_mid_message_keeps_its_buffers_however_long_it_waits() {
    bounded(30, async {
        // An upstream that streams its answer with a long pause, and an HTTP/2 one that
        // answers a POST at once and leaves its body open.
        let slow = tcp_backend(|mut s| async move {
            let _ = read_to(&mut s, b"\r\n\r\n", 1).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                .await;
            tokio::time::sleep(Duration::from_millis(1300)).await;
            let _ = s.write_all(b"4\r\nlast\r\n0\r\n\r\n").await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
        let early = tcp_backend(|s| async move {
            let svc = hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
                let answer = if req.uri().path() == "/smuggled" {
                    "smuggled"
                } else {
                    "early"
                };
                // HTTP/2 is full duplex: the request body stays open (unread) while the
                // answer is already complete.
                let body = req.into_body();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    drop(body);
                });
                Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(Bytes::from(answer))))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc)
                .await;
        })
        .await;
        let body = format!(
            "[[cluster]]\nname = \"slow\"\nendpoints = [{{ address = \"{slow}\" }}]\n\n\
             [[cluster]]\nname = \"early\"\nprotocol = \"h2c\"\nendpoints = [{{ address = \"{early}\" }}]\n\n\
             [[route]]\nname = \"s\"\ncluster = \"slow\"\npath_prefix = \"/slow\"\n\n\
             [[route]]\nname = \"e\"\ncluster = \"early\"\n"
        );
        let proxy = Proxy::start(&body);

        // A response whose body pauses: the connection is mid-message, not idle.
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let r = read_to(&mut s, b"0\r\n\r\n", 1).await;
        assert!(r.contains("first") && r.contains("last"), "{r}");
        assert_eq!(proxy.metric(RELEASES), 0.0, "released mid-response");
        drop(s);

        // A request body that pauses after its upstream answered: what follows the pause
        // is still that body, never a new request.
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
        let head = format!(
            "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            10 + smuggled.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(b"0123456789").await.unwrap();
        let r = read_to(&mut s, b"early", 1).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert_eq!(proxy.metric(RELEASES), 0.0, "released mid-request-body");
        s.write_all(smuggled).await.unwrap();
        let r = read_to(&mut s, b"smuggled", 1).await;
        assert!(!r.contains("smuggled"), "the body's bytes were read as a request: {r}");
    })
    .await;
}
