//! `tandem demo` and `tandem backend`: demo backends that answer with their own name
//! (with `?delay_ms=` and `?status=` to play slow or failing), and the embedded demo
//! configuration that puts Tandem in front of three of them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// Addresses of the demo backends.
pub const DEMO_BACKENDS: [(&str, &str); 3] = [
    ("alpha", "127.0.0.1:9101"),
    ("beta", "127.0.0.1:9102"),
    ("gamma", "127.0.0.1:9103"),
];

/// The embedded demo configuration (also shipped as deploy/examples/demo.toml).
pub const DEMO_CONFIG: &str = include_str!("../../deploy/examples/demo.toml");

/// A demo backend's name and switchable behaviour.
#[derive(Debug, Default)]
pub struct BackendState {
    /// Its name (answered in the body and `x-backend`).
    pub name: String,
    /// Delay added to every request but /healthz (set with `/_control?delay_ms=N`).
    pub delay_ms: std::sync::atomic::AtomicU64,
    /// Status for every request but /healthz (0 = 200; `/_control?status=N`).
    pub status: std::sync::atomic::AtomicU64,
    /// Requests served, /healthz and /_ paths excluded (read with `/_stats`).
    pub hits: std::sync::atomic::AtomicU64,
    /// Status of /healthz (0 = 200; `/_control?healthz=N`).
    pub healthz: std::sync::atomic::AtomicU64,
}

/// Serves a demo backend on `listener` until the runtime stops.
///
/// - any path: `200 backend NAME`, header `x-backend: NAME`;
/// - `?delay_ms=N`: answers after N ms; `?status=N`: answers with status N;
/// - `/headers`: echoes the request head (for checking what the proxy sent);
/// - `/healthz`: `200 ok`, never delayed (a gray failure keeps it green);
/// - `/_control?delay_ms=N&status=N&healthz=N`: changes the behaviour of all later requests;
/// - `/_stats`: the number of requests served;
/// - a gRPC request (`content-type: application/grpc`, over h2c): one message back —
///   `allow` for a method named `Check` (what `filters/grpc-auth` asks), otherwise the
///   request's first message — and `grpc-status: 0` in the trailers.
pub async fn serve_backend(listener: tokio::net::TcpListener, state: Arc<BackendState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(state.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// A demo answer: plain, or a gRPC one with trailers.
type DemoBody = http_body_util::Either<
    Full<Bytes>,
    http_body_util::combinators::WithTrailers<
        Full<Bytes>,
        std::future::Ready<Option<Result<http::HeaderMap, Infallible>>>,
    >,
>;

/// A gRPC answer (see [`serve_backend`]).
async fn answer_grpc(state: Arc<BackendState>, req: Request<Incoming>) -> Response<DemoBody> {
    state.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let check = req.uri().path().ends_with("/Check");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message = if check {
        Bytes::from_static(b"allow")
    } else {
        let mut buf = bytes::BytesMut::from(&body[..]);
        crate::wasm::grpc::unframe(&mut buf)
            .ok()
            .and_then(|m| m.into_iter().next())
            .unwrap_or_default()
    };
    let framed = crate::wasm::grpc::frame(&message);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let body = Full::new(framed).with_trailers(std::future::ready(Some(Ok(trailers))));
    let mut resp = Response::new(http_body_util::Either::Right(body));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    resp
}

async fn answer(state: Arc<BackendState>, req: Request<Incoming>) -> Result<Response<DemoBody>, Infallible> {
    use std::sync::atomic::Ordering::Relaxed;
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return Ok(answer_grpc(state, req).await);
    }
    let name = state.name.as_str();
    let mut delay = state.delay_ms.load(Relaxed);
    let mut status = match state.status.load(Relaxed) {
        0 => 200u16,
        s => s as u16,
    };
    if let Some(q) = req.uri().query() {
        for pair in q.split('&') {
            match pair.split_once('=') {
                Some(("delay_ms", v)) => delay = v.parse().unwrap_or(0),
                Some(("status", v)) => status = v.parse().unwrap_or(200),
                _ => {}
            }
        }
    }
    let path = req.uri().path().to_string();
    if path == "/_control" {
        if let Some(q) = req.uri().query() {
            for pair in q.split('&') {
                match pair.split_once('=') {
                    Some(("delay_ms", v)) => state.delay_ms.store(v.parse().unwrap_or(0), Relaxed),
                    Some(("status", v)) => state.status.store(v.parse().unwrap_or(0), Relaxed),
                    Some(("healthz", v)) => state.healthz.store(v.parse().unwrap_or(0), Relaxed),
                    _ => {}
                }
            }
        }
        return Ok(Response::new(http_body_util::Either::Left(Full::new(Bytes::from(
            "ok\n",
        )))));
    }
    if path == "/_stats" {
        return Ok(Response::new(http_body_util::Either::Left(Full::new(Bytes::from(
            format!("{}\n", state.hits.load(Relaxed)),
        )))));
    }
    if path != "/healthz" {
        state.hits.fetch_add(1, Relaxed);
    }
    let body = if path == "/headers" {
        let mut s = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
        for (k, v) in req.headers() {
            s.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
        }
        Bytes::from(s)
    } else if path == "/healthz" {
        delay = 0;
        status = match state.healthz.load(Relaxed) {
            0 => 200,
            s => s as u16,
        };
        Bytes::from_static(b"ok\n")
    } else {
        Bytes::from(format!("backend {name}\n"))
    };
    // Consume the request body so keep-alive continues cleanly.
    let _ = req.into_body().collect().await;
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut resp = Response::new(http_body_util::Either::Left(Full::new(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    resp.headers_mut().insert(
        "x-backend",
        http::HeaderValue::from_str(name).unwrap_or(http::HeaderValue::from_static("?")),
    );
    Ok(resp)
}

/// Starts `backends` on a background multi-threaded runtime with `threads` threads.
/// Returns once all are bound.
pub fn spawn_backends(backends: Vec<(String, SocketAddr)>, threads: usize) -> std::io::Result<()> {
    let mut bound = Vec::new();
    for (name, addr) in backends {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        bound.push((name, l));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("backend")
        .enable_all()
        .build()?;
    std::thread::Builder::new().name("backends".into()).spawn(move || {
        rt.block_on(async move {
            for (name, l) in bound {
                match tokio::net::TcpListener::from_std(l) {
                    Ok(l) => {
                        let state = Arc::new(BackendState {
                            name,
                            ..Default::default()
                        });
                        tokio::spawn(serve_backend(l, state));
                    }
                    Err(e) => tracing::error!(error = %e, "backend listener failed"),
                }
            }
            std::future::pending::<()>().await;
        });
    })?;
    Ok(())
}
