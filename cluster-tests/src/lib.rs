//! The harness for multi-node tests: real `tandem` processes (proxies and a witness) on
//! loopback whose peer traffic runs through [`Link`]s the test can cut and heal (a
//! partition without root), demo backends in process, and small HTTP helpers.
//! Everything is bounded in time and torn down on drop (processes killed, data removed).
//! [`lab`] is the network-namespace lab for VIP and failover tests (root only).

#![warn(missing_docs)]

pub mod bgp_lab;
pub mod lab;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The `tandem` binary of this workspace's release build (built once if missing).
pub fn tandem_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let bin = root.join("target/release/tandem");
        if !bin.exists() {
            let ok = Command::new(env!("CARGO"))
                .args(["build", "--release", "-p", "tandem-proxy", "--bin", "tandem"])
                .current_dir(&root)
                .status()
                .expect("cargo runs");
            assert!(ok.success(), "building the tandem binary failed");
        }
        bin
    })
    .clone()
}

/// Whether a test that needs something this machine may lack (`ok` false: `why`) goes
/// on. Without it the test fails with the reason, unless `TANDEM_TEST_ALLOW_SKIP=1` says
/// to skip: then it logs `SKIPPED` (and appends to `$TANDEM_TEST_SKIP_LOG`, which
/// `./run-tests` lists at the end) and returns false. A skip is never a silent pass.
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

/// A chaos run's length in seconds and its seed: `TANDEM_CHAOS_SECS` (default 60) and
/// `TANDEM_CHAOS_SEED` (default `seed`, so a run is reproducible unless told otherwise).
pub fn chaos_secs_and_seed(seed: u64) -> (u64, u64) {
    let var = |name: &str| std::env::var(name).ok().and_then(|s| s.parse().ok());
    (
        var("TANDEM_CHAOS_SECS").unwrap_or(60),
        var("TANDEM_CHAOS_SEED").unwrap_or(seed),
    )
}

/// Whether `tool` runs here (`tool --version` or `-V` starts).
pub fn has_tool(tool: &str, version_flag: &str) -> bool {
    Command::new(tool)
        .arg(version_flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

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

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A one-way peer link: a relay from a listening port to a member's peer port. Cut,
/// it stops moving bytes (a blackhole: new connections are accepted and held, what is
/// sent waits, as packets do on a cut network); healed, it moves them again.
pub struct Link {
    /// Where the link listens (the address the sending member is configured with).
    pub listen: SocketAddr,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Link {
    /// A link to `target`.
    pub async fn start(target: SocketAddr) -> Link {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = l.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let c = cut.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((down, _)) = l.accept().await else { continue };
                let c = c.clone();
                tokio::spawn(async move {
                    while c.load(Relaxed) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    let Ok(up) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = up.set_nodelay(true);
                    let _ = down.set_nodelay(true);
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::select! {
                        _ = pump(dr, uw, c.clone()) => {}
                        _ = pump(ur, dw, c) => {}
                    }
                });
            }
        });
        Link { listen, cut, task }
    }

    /// Stops moving bytes.
    pub fn cut(&self) {
        self.cut.store(true, Relaxed);
    }

    /// Moves bytes again.
    pub fn heal(&self) {
        self.cut.store(false, Relaxed);
    }
}

async fn pump(mut r: tokio::net::tcp::OwnedReadHalf, mut w: tokio::net::tcp::OwnedWriteHalf, cut: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while cut.load(Relaxed) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A demo backend in this process (see `tandem_proxy::demo::serve_backend`).
pub struct Backend {
    /// Its address.
    pub addr: SocketAddr,
    /// Its behaviour switches (status, delay) and counters.
    pub state: Arc<tandem_proxy::demo::BackendState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Starts backend `name` on a free port.
    pub async fn start(name: &str) -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let state = Arc::new(tandem_proxy::demo::BackendState {
            name: name.to_string(),
            ..Default::default()
        });
        let task = tokio::spawn(tandem_proxy::demo::serve_backend(l, state.clone()));
        Backend { addr, state, task }
    }

    /// Makes every later request (not /healthz) answer `status` (0 = 200).
    pub fn set_status(&self, status: u64) {
        self.state.status.store(status, Relaxed);
    }
}

/// What a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A proxy (`tandem run`).
    Proxy,
    /// A witness (`tandem witness`).
    Witness,
}

/// One member: its files, ports and process.
pub struct Node {
    /// Node id.
    pub id: u64,
    /// Proxy or witness.
    pub role: Role,
    /// Its HTTP listener (proxies).
    pub http: SocketAddr,
    /// Its admin API.
    pub admin: SocketAddr,
    /// Its real peer address.
    pub peer: SocketAddr,
    config: PathBuf,
    data: PathBuf,
    child: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Node {
    /// Starts (or restarts) the process and waits for its admin API.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} runs already", self.id);
        let sub = if self.role == Role::Proxy { "run" } else { "witness" };
        let child = Command::new(tandem_bin())
            .args([sub, "-c"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t = Instant::now();
        while !matches!(self.get("/live"), Some((200, _))) {
            assert!(t.elapsed() < Duration::from_secs(15), "node {} did not start", self.id);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A graceful stop (SIGTERM, as `systemctl stop`): waits up to 20 s for the process
    /// to drain and exit, then kills it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while matches!(c.try_wait(), Ok(None)) && t.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether its process runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Removes its Raft data (a wiped disk).
    pub fn wipe(&self) {
        let _ = std::fs::remove_dir_all(&self.data);
    }

    /// An admin GET: (status, body), or None when it does not answer.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        tandem_proxy::control::ctl::call(self.admin, None, "GET", path).ok()
    }

    /// An admin POST.
    pub fn post(&self, path: &str) -> Option<(u16, String)> {
        tandem_proxy::control::ctl::call(self.admin, None, "POST", path).ok()
    }

    /// Its `/cluster` view (Null when it does not answer).
    pub fn view(&self) -> serde_json::Value {
        self.get("/cluster")
            .and_then(|(_, b)| serde_json::from_str(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// One metric value from its `/metrics` (exact name with labels).
    pub fn metric(&self, line_start: &str) -> Option<f64> {
        let (_, m) = self.get("/metrics")?;
        m.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

/// How to lay out a group.
pub struct Spec {
    /// Number of proxies (ids 1..=n).
    pub proxies: u64,
    /// Add a witness (the next id).
    pub witness: bool,
    /// Clusters and routes for every proxy (`{backends}` is replaced by the endpoint list).
    pub body: String,
    /// `[ha]` extra keys (e.g. `sync_interval = "20ms"`).
    pub ha_extra: String,
}

/// A group of members on loopback with cuttable peer links between them.
pub struct Cluster {
    /// Members by id (index = id − 1).
    pub nodes: Vec<Node>,
    /// Peer links: (from, to) → link.
    pub links: HashMap<(u64, u64), Link>,
    /// The backends every proxy balances over.
    pub backends: Vec<Backend>,
    dir: tempfile::TempDir,
    certs: PathBuf,
    spec_body: String,
    ha_extra: String,
    /// The witness's id, if there is one.
    pub witness: Option<u64>,
}

impl Cluster {
    /// Starts `spec`'s members (links first, then every process) and waits for a leader
    /// that every member knows.
    pub async fn start(spec: Spec, backends: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let total = spec.proxies + u64::from(spec.witness);
        // Certificates for up to seven members (later ones join by membership change).
        let members: Vec<String> = (1..=7).map(|i| format!("m{i}")).collect();
        let ok = Command::new(tandem_bin())
            .args(["ctl", "cluster", "certs", "--members", &members.join(","), "--out"])
            .arg(&certs)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
        let mut bs = Vec::new();
        for i in 0..backends {
            bs.push(Backend::start(&format!("b{}", i + 1)).await);
        }
        let mut c = Cluster {
            nodes: Vec::new(),
            links: HashMap::new(),
            backends: bs,
            dir,
            certs,
            spec_body: spec.body,
            ha_extra: spec.ha_extra,
            witness: spec.witness.then_some(total),
        };
        let ids: Vec<u64> = (1..=total).collect();
        let peers: Vec<(u64, SocketAddr)> = ids.iter().map(|i| (*i, loopback(free_port()))).collect();
        for (from, _) in &peers {
            for (to, addr) in &peers {
                if from != to {
                    c.links.insert((*from, *to), Link::start(*addr).await);
                }
            }
        }
        for (id, peer) in &peers {
            let role = if spec.witness && *id == total {
                Role::Witness
            } else {
                Role::Proxy
            };
            let node = c.make_node(*id, role, *peer, &peers);
            c.nodes.push(node);
        }
        for n in &mut c.nodes {
            n.start();
        }
        c.wait_for_leader(Duration::from_secs(20)).await;
        c
    }

    /// The config of member `id` (peers as it reaches them: through links).
    fn make_node(&self, id: u64, role: Role, peer: SocketAddr, peers: &[(u64, SocketAddr)]) -> Node {
        let http = loopback(free_port());
        let admin = loopback(free_port());
        let data = self.dir.path().join(format!("data-{id}"));
        let list: Vec<String> = peers
            .iter()
            .map(|(i, a)| {
                let addr = if *i == id {
                    *a
                } else {
                    self.links.get(&(id, *i)).map_or(*a, |l| l.listen)
                };
                let w = if self.witness == Some(*i) {
                    ", witness = true"
                } else {
                    ""
                };
                format!("{{ id = {i}, address = \"{addr}\"{w} }}")
            })
            .collect();
        let m = format!("m{id}");
        let ha = format!(
            "[ha]\nnode_id = {id}\ndata_dir = \"{}\"\nsync_interval = \"20ms\"\n{}\ntls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}\npeers = [{}]\n",
            data.display(),
            self.ha_extra,
            self.certs.join("ca.pem").display(),
            self.certs.join(format!("{m}.pem")).display(),
            self.certs.join(format!("{m}.key")).display(),
            list.join(", ")
        );
        let text = match role {
            Role::Proxy => {
                let endpoints: Vec<String> = self
                    .backends
                    .iter()
                    .map(|b| format!("{{ address = \"{}\" }}", b.addr))
                    .collect();
                let body = self.spec_body.replace("{backends}", &endpoints.join(", "));
                format!(
                    "[server]\nworkers = 1\ndrain_timeout = \"1s\"\n\n[admin]\nlisten = \"{admin}\"\n\n[log]\nlevel = \"warn\"\naccess_log = \"off\"\n\n[[listener]]\nname = \"web\"\nlisten = \"{http}\"\n\n{body}\n\n{ha}"
                )
            }
            Role::Witness => format!("[admin]\nlisten = \"{admin}\"\n\n[log]\nlevel = \"warn\"\n\n{ha}"),
        };
        let config = self.dir.path().join(format!("node{id}.toml"));
        std::fs::write(&config, text).unwrap();
        Node {
            id,
            role,
            http,
            admin,
            peer,
            config,
            data,
            child: None,
        }
    }

    /// Member `id`.
    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    /// Member `id`, mutable (to kill, restart, wipe).
    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Cuts both directions between `a` and `b`.
    pub fn partition(&self, a: u64, b: u64) {
        self.links[&(a, b)].cut();
        self.links[&(b, a)].cut();
    }

    /// Heals both directions between `a` and `b`.
    pub fn heal(&self, a: u64, b: u64) {
        self.links[&(a, b)].heal();
        self.links[&(b, a)].heal();
    }

    /// Cuts every link of `a`.
    pub fn isolate(&self, a: u64) {
        for ((x, y), l) in &self.links {
            if *x == a || *y == a {
                l.cut();
            }
        }
    }

    /// Heals every link.
    pub fn heal_all(&self) {
        for l in self.links.values() {
            l.heal();
        }
    }

    /// Waits until every running member names the same leader.
    pub async fn wait_for_leader(&self, within: Duration) -> u64 {
        let t = Instant::now();
        loop {
            let leaders: Vec<Option<u64>> = self
                .nodes
                .iter()
                .filter(|n| n.running())
                .map(|n| n.view()["leader"].as_u64())
                .collect();
            if let Some(Some(l)) = leaders.first() {
                if leaders.iter().all(|x| *x == Some(*l)) {
                    return *l;
                }
            }
            assert!(t.elapsed() < within, "no common leader within {within:?}: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Adds member `id` (a proxy) to the running group: writes its config (it reaches
    /// the others directly), starts it, and asks `via` to add it.
    pub async fn add_proxy(&mut self, id: u64, via: u64) -> Result<(), String> {
        let mut peers: Vec<(u64, SocketAddr)> = self.nodes.iter().map(|n| (n.id, n.peer)).collect();
        let peer = loopback(free_port());
        peers.push((id, peer));
        let mut node = self.make_node(id, Role::Proxy, peer, &peers);
        node.start();
        let addr = node.peer;
        assert_eq!(self.nodes.len() as u64, id - 1, "node ids are contiguous");
        self.nodes.push(node);
        match self.node(via).post(&format!("/cluster/add?id={id}&address={addr}")) {
            Some((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }

    /// The backends' names, for answers.
    pub fn backend_names(&self) -> Vec<String> {
        self.backends.iter().map(|b| b.state.name.clone()).collect()
    }

    /// The directory the group's files live in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A keep-alive HTTP/1.1 client of one proxy.
pub struct Client {
    tx: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    addr: SocketAddr,
}

impl Client {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let s = TcpStream::connect(addr).await?;
        let (tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(Client { tx, addr })
    }

    /// GET `path` with `headers`: (status, body); reconnects once if the connection is gone.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String), String> {
        for attempt in 0..2 {
            let mut b = hyper::Request::get(path).header("host", "x");
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            let req = b.body(http_body_util::Empty::new()).unwrap();
            let sent = async {
                self.tx.ready().await?;
                self.tx.send_request(req).await
            }
            .await;
            match sent {
                Ok(resp) => {
                    use http_body_util::BodyExt;
                    let status = resp.status().as_u16();
                    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
                    return Ok((status, String::from_utf8_lossy(&body).into_owned()));
                }
                Err(e) if attempt == 0 => {
                    let _ = e;
                    *self = Client::connect(self.addr).await.map_err(|e| e.to_string())?;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        unreachable!()
    }
}

/// Steady traffic through some proxies: `rps` requests per second spread over them,
/// each request with a session header drawn from `sessions`. Counts what it saw.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    /// Requests answered 2xx.
    pub ok: Arc<AtomicU64>,
    /// Requests that failed (transport error or 5xx).
    pub failed: Arc<AtomicU64>,
    /// Failures with their time and reason, for the test's message.
    pub failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    /// Starts traffic to `targets` (which may change: the closure picks one per request).
    pub fn start(targets: Arc<Mutex<Vec<SocketAddr>>>, rps: u64, sessions: u64) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        let workers = 4u64;
        for w in 0..workers {
            let (stop, ok, failed, failures, targets) = (
                stop.clone(),
                ok.clone(),
                failed.clone(),
                failures.clone(),
                targets.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(workers as f64 / rps as f64));
                let mut clients: HashMap<SocketAddr, Client> = HashMap::new();
                let mut rng = fastrand::Rng::with_seed(w);
                let t0 = Instant::now();
                while !stop.load(Relaxed) {
                    tick.tick().await;
                    let list = targets.lock().unwrap().clone();
                    if list.is_empty() {
                        continue;
                    }
                    let target = list[rng.usize(0..list.len())];
                    let session = format!("s{}", rng.u64(0..sessions.max(1)));
                    let c = match clients.get_mut(&target) {
                        Some(c) => c,
                        None => match Client::connect(target).await {
                            Ok(c) => clients.entry(target).or_insert(c),
                            Err(e) => {
                                failed.fetch_add(1, Relaxed);
                                failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("{:?} connect {target}: {e}", t0.elapsed()));
                                continue;
                            }
                        },
                    };
                    match c.get("/", &[("x-session", &session)]).await {
                        Ok((s, _)) if s < 500 => {
                            ok.fetch_add(1, Relaxed);
                        }
                        r => {
                            failed.fetch_add(1, Relaxed);
                            clients.remove(&target);
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{:?} {target}: {r:?}", t0.elapsed()));
                        }
                    }
                }
            }));
        }
        Traffic {
            stop,
            ok,
            failed,
            failures,
            tasks,
        }
    }

    /// Stops and waits for the workers.
    pub async fn stop(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Relaxed);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        (
            self.ok.load(Relaxed),
            self.failed.load(Relaxed),
            self.failures.lock().unwrap().clone(),
        )
    }
}

/// Polls `f` every 10 ms until it holds; returns how long that took, or panics after
/// `within` with `what`.
pub async fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    loop {
        if f() {
            return t.elapsed();
        }
        assert!(t.elapsed() < within, "{what} did not happen within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Bounds a test body in time.
pub async fn bounded<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test exceeded its time bound")
}
