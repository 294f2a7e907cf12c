//! gRPC callouts from a filter (`filters/grpc-auth`, built with the Rust SDK as Envoy
//! filters are): a gRPC service this test runs authorises, denies, fails and times out
//! unary calls, and echoes a bidirectional stream with metadata both ways.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::common::*;
use crate::wasm::{cluster, filter, modules};

/// A response body fed through a channel (a streaming gRPC answer).
struct ChanBody(tokio::sync::mpsc::Receiver<Frame<Bytes>>);

impl http_body::Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

use tandem_proxy::wasm::grpc::frame as grpc_frame;

fn trailers(status: u32, extra: &[(&'static str, &str)]) -> http::HeaderMap {
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", status.to_string().parse().unwrap());
    for (k, v) in extra {
        t.insert(*k, v.parse().unwrap());
    }
    t
}

/// Streams to `Hang` the client reset (see [`grpc_service`]).
static HANG_RESETS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A gRPC service over h2c: `tandem.test.Authz/Check` answers by the `x-user`
/// metadata (alice: "allow"; bob: "deny"; mallory: PERMISSION_DENIED trailers-only;
/// slow: answers after 3 s; broken: HTTP 503); `tandem.test.Authz/Hang` never answers
/// and counts resets in [`HANG_RESETS`]; `tandem.test.Authz/Stream` echoes every
/// message as `echo:M`, with `x-initial: hello-<x-hello>` and trailing `x-trailing: bye`.
/// With `tls`, h2 over TLS (ALPN h2).
async fn grpc_service(tls: Option<std::sync::Arc<rustls::ServerConfig>>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = tls.map(|mut cfg| {
        std::sync::Arc::make_mut(&mut cfg).alpn_protocols = vec![b"h2".to_vec()];
        tokio_rustls::TlsAcceptor::from(cfg)
    });
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
                    let path = req.uri().path().to_string();
                    let md = |k: &str| {
                        req.headers()
                            .get(k)
                            .map(|v| v.to_str().unwrap_or("").to_string())
                            .unwrap_or_default()
                    };
                    let (user, hello) = (md("x-user"), md("x-hello"));
                    let (tx, rx) = tokio::sync::mpsc::channel(16);
                    let mut resp = hyper::Response::new(ChanBody(rx));
                    resp.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    if path == "/tandem.test.Authz/Hang" {
                        // Never answers; counts the streams the client resets (hyper
                        // drops the response body then, closing the channel).
                        drop(req);
                        tokio::spawn(async move {
                            tx.closed().await;
                            HANG_RESETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        });
                        return Ok::<_, Infallible>(resp);
                    }
                    if path == "/tandem.test.Authz/Stream" {
                        resp.headers_mut()
                            .insert("x-initial", format!("hello-{hello}").parse().unwrap());
                        let mut body = req.into_body();
                        tokio::spawn(async move {
                            let mut buf = BytesMut::new();
                            while let Some(Ok(f)) = body.frame().await {
                                let Ok(d) = f.into_data() else { continue };
                                buf.extend_from_slice(&d);
                                while buf.len() >= 5 {
                                    let n = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                                    if buf.len() < 5 + n {
                                        break;
                                    }
                                    buf.advance(5);
                                    let m = buf.split_to(n);
                                    let echo = [&b"echo:"[..], &m].concat();
                                    let _ = tx.send(Frame::data(grpc_frame(&echo))).await;
                                }
                            }
                            let _ = tx.send(Frame::trailers(trailers(0, &[("x-trailing", "bye")]))).await;
                        });
                        return Ok::<_, Infallible>(resp);
                    }
                    let _ = req.into_body().collect().await;
                    match user.as_str() {
                        "mallory" => {
                            // Trailers-only: the status in the headers, no body.
                            resp.headers_mut().insert("grpc-status", "7".parse().unwrap());
                            resp.headers_mut().insert("grpc-message", "no%20way".parse().unwrap());
                            drop(tx);
                        }
                        "broken" => {
                            *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                            drop(tx);
                        }
                        _ => {
                            tokio::spawn(async move {
                                if user == "slow" {
                                    tokio::time::sleep(Duration::from_secs(3)).await;
                                }
                                let answer: &[u8] = if user == "alice" || user == "slow" {
                                    b"allow"
                                } else {
                                    b"deny"
                                };
                                let _ = tx.send(Frame::data(grpc_frame(answer))).await;
                                let _ = tx.send(Frame::trailers(trailers(0, &[]))).await;
                            });
                        }
                    }
                    Ok(resp)
                });
                let h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                match acceptor {
                    Some(a) => {
                        let Ok(s) = a.accept(s).await else { return };
                        let _ = h2.serve_connection(TokioIo::new(s), svc).await;
                    }
                    None => {
                        let _ = h2.serve_connection(TokioIo::new(s), svc).await;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callouts_authorise_deny_fail_time_out_and_stream_without_trapping() {
    tokio::task::spawn_blocking(modules).await.unwrap();
    bounded(60, async {
        let authz = grpc_service(None).await;
        let b = Backend::start("backend").await;
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let config = |cluster: &str| {
            format!(
                "config = '{{\"cluster\": \"{cluster}\", \"service\": \"tandem.test.Authz\", \"timeout_ms\": 300}}'"
            )
        };
        let body = format!(
            "{}{}{}{}{}[[route]]\nname = \"down\"\npath_prefix = \"/down\"\ncluster = \"backend\"\nfilters = [\"authz-down\"]\n\n[[route]]\nname = \"r\"\ncluster = \"backend\"\nfilters = [\"authz\"]\n",
            filter("authz", "grpc_auth", &config("authz")),
            filter("authz-down", "grpc_auth", &config("nobody")),
            cluster("authz", &[authz], "protocol = \"h2c\""),
            cluster("nobody", &[dead], "protocol = \"h2c\""),
            cluster("backend", &[b.addr], ""),
        );
        let proxy = Proxy::start(&body);
        let mut c = Client::h1(proxy.addr).await;

        // Allowed: the request goes on, with the header the filter set.
        let r = c.get("a.test", "/headers", &[("x-user", "alice")]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains("x-authz: allowed"), "{}", r.body);
        // Denied by the service's answer.
        let r = c.get("a.test", "/headers", &[("x-user", "bob")]).await.unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(r.headers["x-authz"], "denied");
        // Refused by the service's status (trailers-only), its message decoded.
        let r = c.get("a.test", "/headers", &[("x-user", "mallory")]).await.unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.headers["x-authz-grpc-status"], "7");
        assert_eq!(r.headers["x-authz-grpc-message"], "no way");
        // The server errs at the HTTP level: UNAVAILABLE.
        let r = c.get("a.test", "/headers", &[("x-user", "broken")]).await.unwrap();
        assert_eq!((r.status, r.headers["x-authz-grpc-status"].to_str().unwrap()), (503, "14"));
        // The call's 300 ms timeout: DEADLINE_EXCEEDED, well before the server answers.
        let t = std::time::Instant::now();
        let r = c.get("a.test", "/headers", &[("x-user", "slow")]).await.unwrap();
        assert_eq!((r.status, r.headers["x-authz-grpc-status"].to_str().unwrap()), (503, "4"));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // Nobody listens on the service's address: UNAVAILABLE.
        let r = c.get("a.test", "/down/x", &[("x-user", "alice")]).await.unwrap();
        assert_eq!((r.status, r.headers["x-authz-grpc-status"].to_str().unwrap()), (503, "14"));

        // A bidirectional stream: three messages out, three back, metadata both ways.
        let r = c.get("a.test", "/s", &[("x-authz-stream", "3")]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body, "echo:m1\necho:m2\necho:m3\n");
        assert_eq!(r.headers["x-stream-metadata"], "hello-from-filter|bye");

        // Still serving, nothing trapped, every call counted.
        let r = c.get("a.test", "/headers", &[("x-user", "alice")]).await.unwrap();
        assert_eq!(r.status, 200);
        let m = proxy.metrics();
        let count = |f: &str, ev: &str| {
            proxy.metric(&format!("tandem_wasm_events_total{{filter=\"{f}\",event=\"{ev}\"}}"))
        };
        assert_eq!(count("authz", "trap"), 0.0, "{m}");
        assert_eq!(count("authz", "grpc_call"), 7.0, "{m}");
        assert_eq!(count("authz", "grpc_failure"), 3.0, "{m}");
        assert_eq!(count("authz-down", "grpc_failure"), 1.0, "{m}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_backend_answers_the_authorisation_check_by_http_and_by_grpc() {
    tokio::task::spawn_blocking(modules).await.unwrap();
    bounded(30, async {
        // `tandem backend` (what bench/wasm.py uses as the authorisation service).
        let authz = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let a = l.local_addr().unwrap();
            drop(l);
            tandem_proxy::demo::spawn_backends(vec![("authz".into(), a)], 1).unwrap();
            a
        };
        let b = Backend::start("backend").await;
        let config = |via: &str| format!("config = '{{\"cluster\": \"authz-{via}\", \"service\": \"bench.Authz\", \"via\": \"{via}\"}}'");
        let body = format!(
            "{}{}{}{}{}[[route]]\nname = \"h\"\nhosts = [\"h.test\"]\ncluster = \"backend\"\nfilters = [\"by-http\"]\n\n[[route]]\nname = \"g\"\ncluster = \"backend\"\nfilters = [\"by-grpc\"]\n",
            filter("by-http", "grpc_auth", &config("http")),
            filter("by-grpc", "grpc_auth", &config("grpc")),
            cluster("authz-http", &[authz], ""),
            cluster("authz-grpc", &[authz], "protocol = \"h2c\""),
            cluster("backend", &[b.addr], ""),
        );
        let proxy = Proxy::start(&body);
        let mut c = Client::h1(proxy.addr).await;
        for host in ["h.test", "g.test"] {
            let r = c.get(host, "/headers", &[("x-user", "anyone")]).await.unwrap();
            assert_eq!(r.status, 200, "{host}: {}", r.body);
            assert!(r.body.contains("x-authz: allowed"), "{host}: {}", r.body);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callouts_go_over_tls_to_a_cluster_with_tls() {
    tokio::task::spawn_blocking(modules).await.unwrap();
    bounded(30, async {
        let pki = crate::pki::Pki::new();
        let cert = pki.leaf("authz", &["authz.test"], false);
        let authz = grpc_service(Some(pki.server(&cert))).await;
        let b = Backend::start("backend").await;
        let body = format!(
            "{}{}{}[[route]]\nname = \"r\"\ncluster = \"backend\"\nfilters = [\"authz\"]\n",
            filter(
                "authz",
                "grpc_auth",
                "config = '{\"cluster\": \"authz\", \"service\": \"tandem.test.Authz\"}'"
            ),
            cluster(
                "authz",
                &[authz],
                &format!(
                    "protocol = \"h2c\"\ntls = {{ sni = \"authz.test\", ca = \"{}\" }}",
                    pki.ca_pem.display()
                )
            ),
            cluster("backend", &[b.addr], ""),
        );
        let proxy = Proxy::start(&body);
        let mut c = Client::h1(proxy.addr).await;
        let r = c.get("a.test", "/headers", &[("x-user", "alice")]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains("x-authz: allowed"), "{}", r.body);
        let r = c.get("a.test", "/headers", &[("x-user", "bob")]).await.unwrap();
        assert_eq!(r.status, 403);
        let r = c.get("a.test", "/s", &[("x-authz-stream", "2")]).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "echo:m1\necho:m2\n"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_still_open_when_its_request_ends_or_cancelled_by_its_filter_is_reset() {
    tokio::task::spawn_blocking(modules).await.unwrap();
    bounded(30, async {
        let authz = grpc_service(None).await;
        let b = Backend::start("backend").await;
        let body = format!(
            "{}{}{}[[route]]\nname = \"r\"\ncluster = \"backend\"\nfilters = [\"authz\"]\n",
            filter(
                "authz",
                "grpc_auth",
                "config = '{\"cluster\": \"authz\", \"service\": \"tandem.test.Authz\", \"stream_method\": \"Hang\"}'"
            ),
            cluster("authz", &[authz], "protocol = \"h2c\""),
            cluster("backend", &[b.addr], ""),
        );
        let proxy = Proxy::start(&body);
        let before = HANG_RESETS.load(std::sync::atomic::Ordering::Relaxed);
        // The client gives up on a request whose filter waits on a stream that never
        // answers: the proxy drops the request, and the stream must go with it.
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, b"GET / HTTP/1.1\r\nHost: a.test\r\nx-authz-stream: 1\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(s);
        let t = std::time::Instant::now();
        while HANG_RESETS.load(std::sync::atomic::Ordering::Relaxed) == before {
            assert!(t.elapsed() < Duration::from_secs(5), "the stream outlived its request");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The filter cancels a stream itself (once the server answered) and lets its
        // request go on to a backend that takes 2 s: the server sees the reset while the
        // request is still in flight, the guest gets no callback for it (nothing traps).
        let before = HANG_RESETS.load(std::sync::atomic::Ordering::Relaxed);
        let addr = proxy.addr;
        let request = tokio::spawn(async move {
            let mut c = Client::h1(addr).await;
            c.get(
                "a.test",
                "/headers?delay_ms=2000",
                &[("x-authz-stream", "2"), ("x-authz-cancel", "1")],
            )
            .await
            .unwrap()
        });
        let t = std::time::Instant::now();
        while HANG_RESETS.load(std::sync::atomic::Ordering::Relaxed) == before {
            assert!(
                t.elapsed() < Duration::from_millis(1500),
                "the cancelled stream was not reset"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let r = request.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains("x-authz: cancelled"), "{}", r.body);
        let mut c = Client::h1(proxy.addr).await;
        let r = c.get("a.test", "/headers", &[("x-user", "alice")]).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            proxy.metric("tandem_wasm_events_total{filter=\"authz\",event=\"trap\"}"),
            0.0
        );
    })
    .await;
}
