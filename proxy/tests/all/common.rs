//! Shared test fixtures: in-process backends, a spawned `tandem` process, and a small
//! HTTP/1.1 + h2c client over real sockets. Everything is bounded in time.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A free loopback port for a process the test starts.
///
/// Taken below the kernel's ephemeral range (32768+), so no outgoing connection or
/// `bind(:0)` of another test can take it between this check and the process's bind;
/// a per-process counter keeps the tests of one binary apart, and the process id
/// spreads binaries that run at the same time.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % SPAN) as u16;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
}

/// A config body with one cluster `c` on backend `b` and one route `r` to it.
pub fn one_route_to(b: SocketAddr) -> String {
    one_route_to_cluster("c", b)
}

/// A config body with one cluster `name` on backend `b` and one route `r` to it.
pub fn one_route_to_cluster(name: &str, b: SocketAddr) -> String {
    one_route_to_endpoints(name, &[b])
}

/// A config body with one cluster `name` on backends `bs` and one route `r` to it.
pub fn one_route_to_endpoints(name: &str, bs: &[SocketAddr]) -> String {
    let eps: Vec<String> = bs.iter().map(|b| format!("{{ address = \"{b}\" }}")).collect();
    format!(
        "[[cluster]]\nname = \"{name}\"\nendpoints = [{}]\n\n[[route]]\nname = \"r\"\ncluster = \"{name}\"\n",
        eps.join(", ")
    )
}

/// An in-process HTTP backend that answers with its name after `delay`.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    /// Requests other than /healthz.
    pub hits: Arc<AtomicU64>,
    /// /healthz requests.
    pub health_hits: Arc<AtomicU64>,
    pub delay: Arc<Mutex<Duration>>,
    pub status: Arc<Mutex<u16>>,
    task: tokio::task::JoinHandle<()>,
    kill: tokio::sync::watch::Sender<bool>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Backend {
    /// Starts a backend on a free port.
    pub async fn start(name: &str) -> Backend {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name).await
    }

    /// Starts a backend on `addr`.
    pub async fn start_on(addr: SocketAddr, name: &str) -> Backend {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let health_hits = Arc::new(AtomicU64::new(0));
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let status = Arc::new(Mutex::new(200u16));
        let (kill, killed) = tokio::sync::watch::channel(false);
        let (h, hh, d, s, n) = (
            hits.clone(),
            health_hits.clone(),
            delay.clone(),
            status.clone(),
            name.to_string(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (h, hh, d, s, n) = (h.clone(), hh.clone(), d.clone(), s.clone(), n.clone());
                let mut killed = killed.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<Incoming>| {
                        let (h, hh, d, s, n) = (h.clone(), hh.clone(), d.clone(), s.clone(), n.clone());
                        async move {
                            if req.uri().path() == "/healthz" {
                                hh.fetch_add(1, Ordering::Relaxed);
                                let _ = req.into_body().collect().await;
                                return Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                                    b"ok\n",
                                ))));
                            }
                            h.fetch_add(1, Ordering::Relaxed);
                            let delay = *d.lock().unwrap();
                            let status = *s.lock().unwrap();
                            let mut q: HashMap<String, String> = HashMap::new();
                            if let Some(qs) = req.uri().query() {
                                for p in qs.split('&') {
                                    if let Some((k, v)) = p.split_once('=') {
                                        q.insert(k.into(), v.into());
                                    }
                                }
                            }
                            let mut head = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
                            for (k, v) in req.headers() {
                                head.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
                            }
                            let path = req.uri().path().to_string();
                            let received = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let extra = q.get("delay_ms").and_then(|v| v.parse().ok()).unwrap_or(0);
                            let total = delay + Duration::from_millis(extra);
                            if !total.is_zero() {
                                tokio::time::sleep(total).await;
                            }
                            let body = match path.as_str() {
                                "/headers" => head,
                                "/echo" => String::from_utf8_lossy(&received).into_owned(),
                                _ => format!("{n}\n"),
                            };
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                            *resp.status_mut() = hyper::StatusCode::from_u16(
                                q.get("status").and_then(|v| v.parse().ok()).unwrap_or(status),
                            )
                            .unwrap();
                            resp.headers_mut().insert("x-backend", n.parse().unwrap());
                            resp.headers_mut().insert("connection", "x-hop".parse().unwrap());
                            resp.headers_mut().insert("x-hop", "1".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = killed.wait_for(|k| *k) => {}
                    }
                });
            }
        });
        Backend {
            addr,
            name: name.into(),
            hits,
            health_hits,
            delay,
            status,
            task,
            kill,
        }
    }

    /// Stops accepting and closes every open connection (like a killed process).
    pub fn kill(&self) {
        self.task.abort();
        let _ = self.kill.send(true);
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

/// A running `tandem` process, killed on drop.
pub struct Proxy {
    pub child: Child,
    head: String,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config: tempfile::NamedTempFile,
    pub stdout_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config text with `{listen}` and `{admin}` placeholders filled.
pub fn render(template: &str, listen: SocketAddr, admin: SocketAddr) -> String {
    template
        .replace("{listen}", &listen.to_string())
        .replace("{admin}", &admin.to_string())
}

impl Proxy {
    /// Starts tandem with `body` (listener/admin sections are generated; `body` holds
    /// clusters and routes, and may use `{listen}`), and waits until /ready.
    pub fn start(body: &str) -> Proxy {
        Self::start_with(body, "")
    }

    /// Like `start`, with extra `[[listener]]` keys in `listener_extra`.
    pub fn start_with(body: &str, listener_extra: &str) -> Proxy {
        Self::start_full(body, listener_extra, "")
    }

    /// Like `start_with`, with extra `[admin]` keys in `admin_extra`.
    pub fn start_full(body: &str, listener_extra: &str, admin_extra: &str) -> Proxy {
        Self::start_server(body, listener_extra, admin_extra, "")
    }

    /// Like `start_full`, with extra `[server]` keys in `server_extra`.
    pub fn start_server(body: &str, listener_extra: &str, admin_extra: &str, server_extra: &str) -> Proxy {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        let head = format!(
            "[server]\nworkers = 2\ndrain_timeout = \"3s\"\n{server_extra}\n\n[admin]\nlisten = \"{admin}\"\n{admin_extra}\n\n[log]\nlevel = \"warn\"\naccess_log = \"{}\"\n\n[[listener]]\nname = \"web\"\nlisten = \"{listen}\"\n{listener_extra}\n\n",
            log.display(),
        );
        let text = format!("{head}{}", render(body, listen, admin));
        let mut config = tempfile::NamedTempFile::new().unwrap();
        config.write_all(text.as_bytes()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(["run", "-c"])
            .arg(config.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let p = Proxy {
            child,
            head,
            addr: listen,
            admin,
            config,
            stdout_path: log,
            _dir: dir,
        };
        p.wait_ready();
        p
    }

    fn wait_ready(&self) {
        // Generous: a loaded two-core machine runs several of these at once.
        let deadline = Instant::now() + Duration::from_secs(20);
        let token = self.head.split("token = \"").nth(1).and_then(|t| t.split('"').next());
        while Instant::now() < deadline {
            if let Ok((200, _)) = tandem_proxy::control::ctl::call(self.admin, token, "GET", "/ready") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("tandem did not become ready");
    }

    /// Rewrites the config file body (same listener/admin); send SIGHUP to apply.
    pub fn rewrite(&self, body: &str) {
        let new = format!("{}{}", self.head, render(body, self.addr, self.admin));
        std::fs::write(self.config.path(), new).unwrap();
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Sends SIGHUP and waits (up to 15 s) until the reload it causes is counted, ok or
    /// failed: a loaded machine may take longer than any fixed sleep to get to it.
    pub async fn reload_by_signal(&self) {
        let count = |p: &Proxy| {
            p.metric("tandem_reloads_total{result=\"ok\"}") + p.metric("tandem_reloads_total{result=\"failed\"}")
        };
        let before = count(self);
        self.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(15);
        while count(self) <= before {
            assert!(Instant::now() < deadline, "SIGHUP was not acted on within 15 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the process exits by itself, at most until `deadline`; its status
    /// must say success.
    pub async fn exits_cleanly_by(&mut self, deadline: Instant) {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status:?}");
                return;
            }
            assert!(Instant::now() < deadline, "did not exit after drain");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn metrics(&self) -> String {
        tandem_proxy::control::ctl::call(self.admin, None, "GET", "/metrics")
            .unwrap()
            .1
    }

    /// POSTs `path` to the admin API without a token: (status, body).
    pub fn admin_post(&self, path: &str) -> (u16, String) {
        tandem_proxy::control::ctl::call(self.admin, None, "POST", path).unwrap()
    }

    /// Value of one metric line (exact name with labels).
    pub fn metric(&self, line_start: &str) -> f64 {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {line_start} not found"))
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }
}

/// A keep-alive HTTP/1.1 (or h2c) client connection.
pub struct Client {
    h1: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
    h2: Option<hyper::client::conn::http2::SendRequest<Empty<Bytes>>>,
    pub addr: SocketAddr,
}

/// A response with its body read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Client {
    pub async fn h1(addr: SocketAddr) -> Client {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
        tokio::spawn(conn);
        Client {
            h1: Some(tx),
            h2: None,
            addr,
        }
    }

    pub async fn h2(addr: SocketAddr) -> Client {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client {
            h1: None,
            h2: Some(tx),
            addr,
        }
    }

    pub async fn get(&mut self, host: &str, path: &str, headers: &[(&str, &str)]) -> Result<Resp, hyper::Error> {
        self.request("GET", host, path, headers).await
    }

    pub async fn request(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Resp, hyper::Error> {
        let mut b = hyper::Request::builder().method(method);
        if self.h2.is_some() {
            b = b.uri(format!("http://{host}{path}"));
        } else {
            b = b.uri(path).header("host", host);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Empty::new()).unwrap();
        let resp = if let Some(tx) = self.h1.as_mut() {
            tx.ready().await?;
            tx.send_request(req).await?
        } else {
            let tx = self.h2.as_mut().unwrap();
            tx.ready().await?;
            tx.send_request(req).await?
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// Sends `n` GETs over `conns` keep-alive connections; returns the body counts and
/// the number of failures (non-2xx or transport errors).
pub async fn load(
    addr: SocketAddr,
    host: &str,
    path: &str,
    n: usize,
    conns: usize,
    headers: &[(&str, &str)],
) -> (HashMap<String, usize>, usize) {
    let per = n / conns;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let host = host.to_string();
        let path = path.to_string();
        let headers: Vec<(String, String)> = headers.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        tasks.push(tokio::spawn(async move {
            let mut counts: HashMap<String, usize> = HashMap::new();
            let mut failed = 0;
            let mut c = Client::h1(addr).await;
            let hv: Vec<(&str, &str)> = headers.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            for _ in 0..per {
                match c.get(&host, &path, &hv).await {
                    Ok(r) if r.status < 300 => *counts.entry(r.body.trim().to_string()).or_default() += 1,
                    Ok(r) => {
                        // Said in the failing test's output, so a flaky count has a reason.
                        eprintln!("load: {path} answered {}: {}", r.status, r.body.trim());
                        failed += 1;
                    }
                    Err(e) => {
                        eprintln!("load: {path} failed: {e}");
                        failed += 1;
                        c = Client::h1(addr).await;
                    }
                }
            }
            (counts, failed)
        }));
    }
    let mut total: HashMap<String, usize> = HashMap::new();
    let mut failed = 0;
    for t in tasks {
        let (c, f) = t.await.unwrap();
        failed += f;
        for (k, v) in c {
            *total.entry(k).or_default() += v;
        }
    }
    (total, failed)
}

/// Bounds a test body in time.
/// A raw TCP backend on a free loopback port: each accepted connection is handed to
/// `serve` on a task of its own.
pub async fn tcp_backend<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { continue };
            tokio::spawn(serve(s));
        }
    });
    addr
}

pub async fn bounded<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test exceeded its time bound")
}

/// Says whether a test can run here; when it cannot (`ok` false) the test fails with
/// `why` unless `TANDEM_TEST_ALLOW_SKIP=1` (or the older `TANDEM_TEST_SKIP_PRIVILEGED=1`)
/// explicitly allows skipping. A skip is said on stderr and appended to the file named by
/// `$TANDEM_TEST_SKIP_LOG`, which `./run-tests` prints in its summary: a skip is never
/// silently a pass.
pub fn can_run(ok: bool, why: &str) -> bool {
    if ok {
        return true;
    }
    let allowed = ["TANDEM_TEST_ALLOW_SKIP", "TANDEM_TEST_SKIP_PRIVILEGED"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty() && x != "0"));
    assert!(
        allowed,
        "{why}. ./run-tests installs what the tests need; run as root, or set TANDEM_TEST_ALLOW_SKIP=1 to skip this test"
    );
    let test = std::thread::current().name().unwrap_or("?").to_string();
    eprintln!("SKIPPED {test}: {why}");
    if let Some(log) = std::env::var_os("TANDEM_TEST_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
    false
}

/// Whether `tool` runs here (`tool --version` or `-V` starts).
pub fn has_tool(tool: &str, version_flag: &str) -> bool {
    std::process::Command::new(tool)
        .arg(version_flag)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

/// Whether this process runs as root; see [`can_run`] for what happens when not.
pub fn is_root(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    can_run(root, &format!("{what} needs root"))
}

/// Context switches so far of the proxy's threads named `thread` (all threads: `None`);
/// `voluntary_only` leaves out preemptions, which a busy test machine adds.
pub fn thread_switches(pid: u32, thread: Option<&str>, voluntary_only: bool) -> u64 {
    let mut total = 0;
    let mut found = false;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if thread.is_some_and(|t| comm.trim() != t) {
            continue;
        }
        found = true;
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        total += status
            .lines()
            .filter(|l| l.starts_with("voluntary_ctxt_switches:") || (!voluntary_only && l.starts_with("nonvoluntary")))
            .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
            .sum::<u64>();
    }
    assert!(found, "the proxy (pid {pid}) has no thread {thread:?}");
    total
}
