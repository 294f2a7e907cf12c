//! L4 listeners: TCP echo with PROXY v2 to the backend, TLS passthrough routed by SNI
//! (including a ClientHello split across packets), connect retry on refusal, PROXY
//! protocol accepted from a trusted front, TLS termination and origination, and bulk
//! transfers both ways with half-close through a small copy buffer.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;
use crate::pki::Pki;

/// A TCP backend: optionally expects a PROXY header (and answers `src=<addr>\n` first),
/// then echoes with a `name:` prefix on the first write.
async fn echo_backend(name: &'static str, expect_proxy: bool) -> SocketAddr {
    tcp_backend(move |mut s| async move {
        if expect_proxy {
            let mut buf = [0u8; 256];
            let n = s.peek(&mut buf).await.unwrap();
            let (len, addrs) = tandem_proxy::proxy_protocol::parse(&buf[..n]).unwrap().unwrap();
            let mut sink = vec![0u8; len];
            s.read_exact(&mut sink).await.unwrap();
            let (src, _) = addrs.unwrap();
            s.write_all(format!("src={src}\n").as_bytes()).await.unwrap();
        }
        let mut buf = [0u8; 4096];
        loop {
            let n = match s.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = s.shutdown().await;
                    return;
                }
                Ok(n) => n,
            };
            let mut out = format!("{name}:").into_bytes();
            out.extend_from_slice(&buf[..n]);
            if s.write_all(&out).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// A TLS echo backend answering `name:` + data.
async fn tls_echo_backend(name: &'static str, cfg: Arc<rustls::ServerConfig>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(s).await else { return };
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let mut out = format!("{name}:").into_bytes();
                    out.extend_from_slice(&buf[..n]);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A TCP listener that terminates TLS: the backend gets the plain bytes, a second
/// connection resumes the session, and a client that is not TLS is counted and closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_listener_terminates_tls_and_resumes_sessions() {
    bounded(30, async {
        let pki = Pki::new();
        let cert = pki.leaf("l4", &["l4.test"], false);
        let live = echo_backend("echo", false).await;
        let body = format!(
            "[[cluster]]\nname = \"tcp\"\nendpoints = [{{ address = \"{live}\" }}]\n\n\
[[cluster]]\nname = \"unused\"\nendpoints = [{{ address = \"{live}\" }}]\n\n[[route]]\nname = \"r\"\ncluster = \"unused\"\n"
        );
        let listener = format!(
            "protocol = \"tcp\"\ncluster = \"tcp\"\ntls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}",
            cert.0.display(),
            cert.1.display()
        );
        let proxy = Proxy::start_with(&body, &listener);
        let client = pki.client(&[], None);
        for (round, kind) in [(0, rustls::HandshakeKind::Full), (1, rustls::HandshakeKind::Resumed)] {
            let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("l4.test").unwrap();
            let mut s = tokio_rustls::TlsConnector::from(client.clone())
                .connect(name, tcp)
                .await
                .unwrap();
            s.write_all(b"hello").await.unwrap();
            let mut line = vec![0u8; 64];
            let n = s.read(&mut line).await.unwrap();
            assert_eq!(&line[..n], b"echo:hello", "round {round}");
            assert_eq!(s.get_ref().1.handshake_kind(), Some(kind), "round {round}");
        }
        let mut plain = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut rest = Vec::new();
        let _ = plain.read_to_end(&mut rest).await;
        let failures = "tandem_listener_tls_handshake_failures_total{listener=\"web\"}";
        let t = std::time::Instant::now();
        while proxy.metric(failures) < 1.0 {
            assert!(t.elapsed() < Duration::from_secs(2), "the failed handshake was not counted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(proxy.metric("tandem_listener_tls_handshakes_total{listener=\"web\"}"), 2.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_with_proxy_v2_and_retry_on_refusal() {
    bounded(30, async {
        let live = echo_backend("echo", true).await;
        let dead = format!("127.0.0.1:{}", free_port());
        let body = format!(
            "[[cluster]]\nname = \"tcp\"\nproxy_protocol = \"v2\"\nendpoints = [{{ address = \"{dead}\" }}, {{ address = \"{live}\" }}]\n\n\
[[cluster]]\nname = \"unused\"\nendpoints = [{{ address = \"{live}\" }}]\n\n[[route]]\nname = \"r\"\ncluster = \"unused\"\n"
        );
        let proxy = Proxy::start_with(&body, "protocol = \"tcp\"\ncluster = \"tcp\"\nidle_timeout = \"2s\"");
        for _ in 0..6 {
            let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
            let me = s.local_addr().unwrap();
            let mut line = vec![0u8; 64];
            let n = s.read(&mut line).await.unwrap();
            assert_eq!(String::from_utf8_lossy(&line[..n]), format!("src={me}\n"), "backend sees the true client");
            s.write_all(b"hello").await.unwrap();
            let n = s.read(&mut line).await.unwrap();
            assert_eq!(&line[..n], b"echo:hello");
            // Half-close: the client is done writing; the backend sees EOF and closes.
            s.shutdown().await.unwrap();
            let n = s.read(&mut line).await.unwrap();
            assert_eq!(n, 0);
        }
        assert!(proxy.metric("tandem_listener_tcp_connections_total{listener=\"web\"}") >= 6.0);
        assert!(proxy.metric(&format!("tandem_endpoint_connect_failures_total{{cluster=\"tcp\",endpoint=\"{dead}\"}}")) >= 1.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough_is_routed_by_sni_even_when_the_hello_is_split() {
    bounded(30, async {
        let pki = Pki::new();
        let a = pki.leaf("a", &["a.test"], false);
        let b = pki.leaf("b", &["b.test", "*.b.test"], false);
        let ba = tls_echo_backend("A", pki.server(&a)).await;
        let bb = tls_echo_backend("B", pki.server(&b)).await;
        let body = format!(
            "[[cluster]]\nname = \"a\"\nendpoints = [{{ address = \"{ba}\" }}]\n\n[[cluster]]\nname = \"b\"\nendpoints = [{{ address = \"{bb}\" }}]\n\n\
[[route]]\nname = \"r\"\ncluster = \"a\"\n"
        );
        let proxy = Proxy::start_with(
            &body,
            "protocol = \"tcp\"\ncluster = \"a\"\nsni_routes = [{ server_names = [\"b.test\", \"*.b.test\"], cluster = \"b\" }]",
        );
        let addr = proxy.addr;
        let cfg = pki.client(&[], None);
        // Blocking rustls client: the ClientHello goes out in two pieces 50 ms apart.
        let result = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for (sni, split) in [("b.test", true), ("x.b.test", false), ("a.test", true)] {
                let mut sock = std::net::TcpStream::connect(addr).unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
                let mut conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
                let mut hello = Vec::new();
                conn.write_tls(&mut hello).unwrap();
                if split {
                    sock.write_all(&hello[..7]).unwrap();
                    std::thread::sleep(Duration::from_millis(50));
                    sock.write_all(&hello[7..]).unwrap();
                } else {
                    sock.write_all(&hello).unwrap();
                }
                let mut tls = rustls::StreamOwned::new(conn, sock);
                tls.write_all(b"ping").unwrap();
                let mut buf = [0u8; 64];
                let n = tls.read(&mut buf).unwrap();
                out.push((sni, String::from_utf8_lossy(&buf[..n]).into_owned()));
            }
            out
        })
        .await
        .unwrap();
        assert_eq!(result[0], ("b.test", "B:ping".to_string()));
        assert_eq!(result[1], ("x.b.test", "B:ping".to_string()));
        assert_eq!(result[2], ("a.test", "A:ping".to_string()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_from_a_trusted_front_sets_the_client_address() {
    bounded(30, async {
        let b = Backend::start("b").await;
        let body = format!("[[cluster]]\nname = \"c\"\nendpoints = [{{ address = \"{}\" }}]\n\n[[route]]\nname = \"r\"\ncluster = \"c\"\n", b.addr);
        let proxy = Proxy::start_with(&body, "proxy_protocol_from = [\"127.0.0.0/8\"]");
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let src: SocketAddr = "198.51.100.23:40000".parse().unwrap();
        let mut req = tandem_proxy::proxy_protocol::encode_v2(src, proxy.addr);
        req.extend_from_slice(b"GET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(&req).await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.contains("x-forwarded-for: 198.51.100.23"), "{resp}");
        // v1 too.
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"PROXY TCP4 192.0.2.99 127.0.0.1 1234 80\r\nGET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.contains("x-forwarded-for: 192.0.2.99"), "{resp}");
        // A trusted source that sends no header is refused and counted.
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp).await;
        assert!(resp.is_empty());
        assert!(proxy.metric("tandem_listener_malformed_requests_total{listener=\"web\"}") >= 1.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_origination_to_an_upstream() {
    bounded(30, async {
        let pki = Pki::new();
        let up = pki.leaf("up", &["upstream.test"], false);
        // An HTTPS backend (hyper over rustls).
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server(&up));
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { continue };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(s).await else { return };
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"over tls\n"))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tls), svc).await;
                });
            }
        });
        let body = format!(
            "[[cluster]]\nname = \"c\"\nendpoints = [{{ address = \"{addr}\" }}]\ntls = {{ sni = \"upstream.test\", ca = \"{}\" }}\n\n[[route]]\nname = \"r\"\ncluster = \"c\"\n",
            pki.ca_pem.display()
        );
        let proxy = Proxy::start(&body);
        let mut c = Client::h1(proxy.addr).await;
        for _ in 0..3 {
            let r = c.get("x", "/", &[]).await.unwrap();
            assert_eq!((r.status, r.body.as_str()), (200, "over tls\n"));
        }
        // A wrong server name fails verification: 502, not a silent plaintext fallback.
        let body = body.replace("sni = \"upstream.test\"", "sni = \"impostor.test\"");
        proxy.rewrite(&body);
        proxy.reload_by_signal().await;
        let mut c = Client::h1(proxy.addr).await;
        assert_eq!(c.get("x", "/", &[]).await.unwrap().status, 502);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_filter_sees_changes_and_refuses_tcp_data() {
    tokio::task::spawn_blocking(crate::wasm::modules).await.unwrap();
    bounded(30, async {
        let live = echo_backend("echo", false).await;
        let body = format!(
            "{}[[cluster]]\nname = \"tcp\"\nendpoints = [{{ address = \"{live}\" }}]\n",
            crate::wasm::filter(
                "tap",
                "tcp_tap",
                r#"config = { deny_prefix = "EVIL", greeting = "hello " }"#
            ),
        );
        let proxy = Proxy::start_with(
            &body,
            "protocol = \"tcp\"\ncluster = \"tcp\"\nidle_timeout = \"2s\"\nfilters = [\"tap\"]",
        );
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"world").await.unwrap();
        let mut buf = vec![0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&buf[..n]),
            "echo:hello world",
            "greeting prepended upstream"
        );
        s.write_all(b"again").await.unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"echo:again");
        s.shutdown().await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 0);

        // Refused by the filter: closed without reaching the backend.
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"EVIL payload").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "connection closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let m = |name: &str| {
            proxy.metric(&format!(
                "tandem_wasm_metric{{filter=\"tap\",name=\"{name}\",type=\"counter\"}}"
            ))
        };
        assert_eq!(m("connections_refused"), 1.0);
        assert!(m("bytes_downstream") >= 22.0);
        assert!(m("bytes_upstream") >= 26.0);
    })
    .await;
}

/// A backend that reads until the client half-closes, answers with the byte count it
/// saw and its own `len`-byte pattern, then closes.
async fn sink_then_source_backend(len: usize) -> SocketAddr {
    tcp_backend(move |mut s| async move {
        let mut seen = Vec::new();
        if s.read_to_end(&mut seen).await.is_err() {
            return;
        }
        let ok = seen.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8);
        let mut out = format!("{} {ok}\n", seen.len()).into_bytes();
        out.extend((0..len).map(|i| (i % 241) as u8));
        let _ = s.write_all(&out).await;
        let _ = s.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_transfers_both_ways_arrive_whole_with_a_small_buffer() {
    bounded(60, async {
        const LEN: usize = 4 << 20;
        let be = sink_then_source_backend(LEN).await;
        let body = format!(
            "[[cluster]]\nname = \"tcp\"\nendpoints = [{{ address = \"{be}\" }}]\n\n\
[[cluster]]\nname = \"unused\"\nendpoints = [{{ address = \"{be}\" }}]\n\n[[route]]\nname = \"r\"\ncluster = \"unused\"\n"
        );
        let proxy = Proxy::start_with(&body, "protocol = \"tcp\"\ncluster = \"tcp\"\ntcp_buffer_bytes = 3000");
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let addr = proxy.addr;
            tasks.push(tokio::spawn(async move {
                let s = tokio::net::TcpStream::connect(addr).await.unwrap();
                let (mut r, mut w) = s.into_split();
                let writer = tokio::spawn(async move {
                    let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
                    for chunk in data.chunks(100_000) {
                        w.write_all(chunk).await.unwrap();
                    }
                    w.shutdown().await.unwrap();
                });
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                writer.await.unwrap();
                let nl = got.iter().position(|&b| b == b'\n').expect("a count line");
                assert_eq!(std::str::from_utf8(&got[..nl]).unwrap(), format!("{LEN} true"));
                let rest = &got[nl + 1..];
                assert_eq!(rest.len(), LEN);
                assert!(rest.iter().enumerate().all(|(i, b)| *b == (i % 241) as u8), "bytes in order");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Counted when each connection ends, just after the client saw it end.
        let metric = "tandem_listener_tcp_received_bytes_total{listener=\"web\"}";
        for _ in 0..50 {
            if proxy.metric(metric) >= (3 * LEN) as f64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        assert_eq!(proxy.metric(metric), (3 * LEN) as f64);
    })
    .await;
}
