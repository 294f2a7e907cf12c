//! The HTTP/1.1 upstream client against a scripted raw backend: every framing an
//! upstream may use (content-length, chunked with extensions and trailers, close-
//! delimited, bodiless HEAD/204/304), interim 1xx answers, heads and bodies split across
//! writes, malformed heads (502, the proxy keeps serving), connections closed by the
//! upstream while idle in the pool, idle pooled connections closed after their timeout
//! (and the worker's sweep asleep once nothing is open or pooled), and large bodies
//! streamed both ways.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// A proxy with one route to one cluster of the single endpoint `addr`.
fn proxy_in_front_of(addr: std::net::SocketAddr) -> Proxy {
    Proxy::start(&format!(
        "[[cluster]]\nname = \"up\"\nendpoints = [{{ address = \"{addr}\" }}]\n\n[[route]]\nname = \"all\"\ncluster = \"up\"\n"
    ))
}

/// A raw backend on a free port that serves each accepted connection with `serve` and
/// counts the connections.
async fn counting_backend<F, Fut>(serve: F) -> (std::net::SocketAddr, Arc<AtomicU64>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { continue };
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(serve(s));
        }
    });
    (addr, accepted)
}

/// A backend that answers each request with the script for its path and counts the
/// connections it accepted. It reads request heads only (no request bodies).
async fn scripted_backend() -> (std::net::SocketAddr, Arc<AtomicU64>) {
    counting_backend(|mut s: TcpStream| async move {
        let mut buf = Vec::new();
        loop {
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            buf.drain(..head_end);
            let path = head.split(' ').nth(1).unwrap_or("/").to_string();
            if !answer(&mut s, &path).await {
                return;
            }
        }
    })
    .await
}

/// Writes the scripted answer; false when the connection is to be closed.
async fn answer(s: &mut TcpStream, path: &str) -> bool {
    let parts: &[&[u8]] = match path {
        "/length" => &[b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nlength"],
        "/chunked" => &[
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-backend: raw\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
        ],
        "/split" => &[
            b"HTTP/1.1 200 OK\r\nContent-",
            b"Length: 10\r\n\r\n01234",
            b"56",
            b"789",
        ],
        "/split-chunked" => &[
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"3\r",
            b"\nabc\r\n",
            b"3\r\nd",
            b"ef\r\n0\r\n",
            b"\r\n",
        ],
        "/continue" => &[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ncontinue"],
        "/head" => &[b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"],
        "/nocontent" => &[b"HTTP/1.1 204 No Content\r\n\r\n"],
        "/malformed" => &[b"HTTP/1.1 2x0 Nope\r\n\r\n"],
        "/truncated" => &[b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"],
        "/bad-chunk" => &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n"],
        "/eof" => &[b"HTTP/1.0 200 OK\r\n\r\nuntil the end"],
        "/close" => &[b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nclose"],
        _ => &[b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"],
    };
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if s.write_all(p).await.is_err() {
            return false;
        }
    }
    !matches!(path, "/eof" | "/close" | "/truncated" | "/malformed" | "/bad-chunk")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_framing_arrives_intact_and_keeps_the_connection() {
    bounded(30, async {
        let (addr, accepted) = scripted_backend().await;
        let proxy = proxy_in_front_of(addr);
        let mut c = Client::h1(proxy.addr).await;
        let r = c.get("x", "/length", &[]).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "length"));
        let r = c.get("x", "/chunked", &[]).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "hello world"));
        assert_eq!(r.headers["x-backend"], "raw");
        let r = c.get("x", "/split", &[]).await.unwrap();
        assert_eq!(r.body, "0123456789");
        let r = c.get("x", "/split-chunked", &[]).await.unwrap();
        assert_eq!(r.body, "abcdef");
        let r = c.get("x", "/continue", &[]).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "continue"));
        let r = c.request("HEAD", "x", "/head", &[]).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, ""));
        assert_eq!(r.headers["content-length"], "100");
        let r = c.get("x", "/nocontent", &[]).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (204, ""));
        // Every answer above kept the upstream connection: one was ever opened.
        assert_eq!(accepted.load(Ordering::Relaxed), 1);

        // Close-delimited and `Connection: close` answers are whole, and their
        // connections are not reused.
        let r = c.get("x", "/eof", &[]).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "until the end"));
        let r = c.get("x", "/close", &[]).await.unwrap();
        assert_eq!(r.body, "close");
        let r = c.get("x", "/length", &[]).await.unwrap();
        assert_eq!(r.body, "length");
        assert_eq!(accepted.load(Ordering::Relaxed), 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_truncated_answers_fail_alone() {
    bounded(30, async {
        let (addr, _) = scripted_backend().await;
        let proxy = proxy_in_front_of(addr);
        let mut c = Client::h1(proxy.addr).await;
        let r = c.get("x", "/malformed", &[]).await.unwrap();
        assert_eq!(r.status, 502);
        assert_eq!(r.headers["x-tandem-error"], "upstream-reset");
        // The head was fine, the body ends early: the client sees a broken body.
        assert!(c.get("x", "/truncated", &[]).await.is_err());
        let mut c = Client::h1(proxy.addr).await;
        assert!(c.get("x", "/bad-chunk", &[]).await.is_err());
        let mut c = Client::h1(proxy.addr).await;
        let r = c.get("x", "/length", &[]).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "length"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_upstream_closed_while_idle_is_not_used() {
    bounded(30, async {
        // Answers once per connection, then closes it 100 ms later (a short keep-alive).
        let (addr, accepted) = counting_backend(|mut s: TcpStream| async move {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n").await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        })
        .await;
        let proxy = proxy_in_front_of(addr);
        let mut c = Client::h1(proxy.addr).await;
        for _ in 0..3 {
            let r = c.get("x", "/", &[]).await.unwrap();
            assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_connections_close_after_their_timeout_and_an_idle_worker_sleeps() {
    bounded(60, async {
        let b = Backend::start("b").await;
        let proxy = Proxy::start(&format!(
            "[[cluster]]\nname = \"up\"\nendpoints = [{{ address = \"{}\" }}]\npool_idle_timeout = \"1s\"\n\n\
[[route]]\nname = \"all\"\ncluster = \"up\"\n",
            b.addr
        ));
        let open = || proxy.metric("tandem_cluster_upstream_connections{cluster=\"up\"}");
        let pid = proxy.child.id();
        let workers = || thread_switches(pid, Some("worker-0"), true) + thread_switches(pid, Some("worker-1"), true);
        // The second round finds the workers asleep: the connection it pools must wake
        // the sweep, or it stays open for good.
        for round in 0..2 {
            {
                let mut c = Client::h1(proxy.addr).await;
                let r = c.get("x", "/", &[]).await.unwrap();
                assert_eq!((r.status, r.body.trim()), (200, "b"), "round {round}");
            }
            assert_eq!(open(), 1.0, "round {round}: the upstream connection");
            let t = std::time::Instant::now();
            while open() != 0.0 {
                assert!(
                    t.elapsed() < Duration::from_secs(4),
                    "round {round}: the pooled connection was not closed after its 1 s idle timeout"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Nothing open, nothing pooled: the sweep that closed it was the last. A
            // sweep once a second would wake each worker about twice per second.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let before = workers();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let woke = workers() - before;
            assert!(woke <= 2, "round {round}: idle workers woke {woke} times in 2 s");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_chunked_upload_and_its_echo_stream_through() {
    bounded(30, async {
        let backend = Backend::start("echo").await;
        let proxy = proxy_in_front_of(backend.addr);
        // 2 MiB sent chunked by a raw client in 64 KiB chunks.
        let block: Vec<u8> = (0..65536u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let writer = tokio::spawn(async move {
            for _ in 0..32 {
                s.write_all(format!("{:x}\r\n", block.len()).as_bytes()).await.unwrap();
                s.write_all(&block).await.unwrap();
                s.write_all(b"\r\n").await.unwrap();
            }
            s.write_all(b"0\r\n\r\n").await.unwrap();
            s
        });
        let mut s = writer.await.unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let body_start = loop {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&got[..body_start]).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("content-length: 2097152"), "{head}");
        while got.len() - body_start < 2 * 1024 * 1024 {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "body cut at {}", got.len() - body_start);
            got.extend_from_slice(&buf[..n]);
        }
        let body = &got[body_start..];
        assert_eq!(body.len(), 2 * 1024 * 1024);
        assert!(body.chunks(65536).all(|c| c[..26] == *b"abcdefghijklmnopqrstuvwxyz"));
    })
    .await;
}
