//! A network-namespace lab for VIP and failover tests: a switch namespace holding a
//! bridge, node namespaces a and b (each a `tandem` process with a demo backend), a
//! witness namespace w and a client namespace c, on 10.77.0.0/24. Everything is created
//! and torn down by the lab; traffic stays inside its namespaces.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The lab's IPv4 VIP (VRID 51, on eth0 of a and b).
pub const VIP: &str = "10.77.0.100";

/// The namespaces of one test.
pub struct Lab {
    tag: String,
    /// Processes the lab started, by label (`node-a`, `backend-a`, `witness`, …).
    pub children: Vec<(String, Child)>,
    /// When set, each process's stderr is appended to `DIR/LABEL.log` instead of the
    /// test's (a long run keeps its nodes' logs for the diagnosis of a failure).
    pub log_dir: Option<std::path::PathBuf>,
}

/// Runs `ip ARGS` quietly; whether it succeeded.
pub fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `arping` (iputils) runs here: the fencing tests count the MACs answering ARP
/// for the VIP with it.
pub fn has_arping() -> bool {
    crate::has_tool("arping", "-V")
}

/// Runs `f` on a new thread that has entered network namespace `ns` (by name).
pub fn thread_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns with a namespace file this thread holds open; it moves only the
        // calling thread.
        let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

impl Lab {
    /// Builds sw-TAG (bridge), a-TAG, b-TAG, c-TAG; `None` when namespaces cannot be
    /// created here (no CAP_NET_ADMIN).
    pub fn new() -> Option<Lab> {
        static N: AtomicU32 = AtomicU32::new(0);
        let tag = format!("{}{}", std::process::id() % 10000, N.fetch_add(1, Ordering::Relaxed));
        let lab = Lab {
            tag,
            children: Vec::new(),
            log_dir: None,
        };
        if !ip(&["netns", "add", &lab.ns("sw")]) {
            return None;
        }
        for n in ["a", "b", "c", "w"] {
            assert!(ip(&["netns", "add", &lab.ns(n)]));
        }
        let sw = lab.ns("sw");
        assert!(ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]));
        assert!(ip(&["-n", &sw, "link", "set", "br0", "up"]));
        for (n, addr) in [
            ("a", "10.77.0.1/24"),
            ("b", "10.77.0.2/24"),
            ("c", "10.77.0.10/24"),
            ("w", "10.77.0.3/24"),
        ] {
            let ns = lab.ns(n);
            let port = format!("p{n}");
            assert!(ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns
            ]));
            assert!(ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"]));
            assert!(ip(&["-n", &ns, "addr", "add", addr, "dev", "eth0"]));
            // IPv6: no duplicate address detection, so link-local addresses work at once.
            let _ = Command::new("ip")
                .args(["netns", "exec", &ns, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0"])
                .status();
            assert!(ip(&["-n", &ns, "link", "set", "eth0", "up"]));
            assert!(ip(&["-n", &ns, "link", "set", "lo", "up"]));
        }
        Some(lab)
    }

    /// `Lab::new`, saying why the test is skipped when it cannot run here.
    pub fn or_skip() -> Option<Lab> {
        let lab = Lab::new();
        if !crate::can_run(
            lab.is_some(),
            "network namespaces cannot be created here (needs root / CAP_NET_ADMIN)",
        ) {
            return None;
        }
        lab
    }

    /// A lab with node A (priority 150) and node B (100) running, A serving the VIP.
    pub fn pair(dir: &std::path::Path) -> Option<Lab> {
        let mut lab = Lab::or_skip()?;
        lab.node(dir, "a", 150);
        lab.node(dir, "b", 100);
        lab.wait_for("node-a", Duration::from_secs(10));
        Some(lab)
    }

    /// The name of namespace `n` (a, b, c, w, sw) of this lab.
    pub fn ns(&self, n: &str) -> String {
        format!("tdm{n}{}", self.tag)
    }

    /// Starts `tandem ARGS` inside namespace `n`.
    pub fn spawn(&mut self, n: &str, label: &str, args: &[&str]) {
        let stderr = match &self.log_dir {
            Some(d) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(d.join(format!("{label}.log")))
                    .unwrap(),
            ),
            None => Stdio::inherit(),
        };
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(n)])
            .arg(crate::tandem_bin())
            .args(args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        self.children.push((label.to_string(), child));
    }

    /// SIGTERM to `label`; its exit status (killed if it has not exited by `limit`).
    pub fn term(&mut self, label: &str, limit: Duration) -> std::process::ExitStatus {
        let i = self.children.iter().position(|(l, _)| l == label).unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &self.children[i].1.id().to_string()])
            .status();
        self.wait_exit(label, limit)
    }

    /// The exit status of `label` (killed if it has not exited by `limit`).
    pub fn wait_exit(&mut self, label: &str, limit: Duration) -> std::process::ExitStatus {
        let i = self.children.iter().position(|(l, _)| l == label).unwrap();
        let (_, mut c) = self.children.remove(i);
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Ok(Some(st)) = c.try_wait() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        c.wait().unwrap()
    }

    /// kill -9 of `label` (no cleanup of any kind: what a crash leaves).
    pub fn kill9(&mut self, label: &str) {
        let i = self.children.iter().position(|(l, _)| l == label).unwrap();
        let (_, mut c) = self.children.remove(i);
        let _ = Command::new("kill").args(["-9", &c.id().to_string()]).status();
        let _ = c.wait();
    }

    /// Starts keepalived as node `n` (VRRPv3, same VRID and VIP) with a demo backend
    /// on the VIP's port.
    pub fn keepalived(&mut self, dir: &std::path::Path, n: &str, prio: u32) {
        self.keepalived_speaking(dir, n, prio, 3, "0.1");
    }

    /// `keepalived` with VRRP `version` (2 or 3) and `advert_int` (seconds).
    pub fn keepalived_speaking(&mut self, dir: &std::path::Path, n: &str, prio: u32, version: u32, advert_int: &str) {
        let cfg = dir.join(format!("keepalived-{n}.conf"));
        std::fs::write(
            &cfg,
            format!(
                "global_defs {{\n  vrrp_version {version}\n  script_user root\n}}\nvrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {prio}\n  advert_int {advert_int}\n  notify_master \"{}\"\n  virtual_ipaddress {{\n    {VIP}/24\n  }}\n}}\n",
                dir.join(format!("count-{n}.sh")).display()
            ),
        )
        .unwrap();
        // Each transition to master appends a line to `n-master.log`.
        let script = dir.join(format!("count-{n}.sh"));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho master >> {}\n",
                dir.join(format!("{n}-master.log")).display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let ns = self.ns(n);
        let pid = |k: &str| dir.join(format!("{n}-{k}.pid")).display().to_string();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "keepalived", "-n", "-l", "-P", "-f"])
            .arg(&cfg)
            .args(["-p", &pid("main"), "-r", &pid("vrrp"), "-c", &pid("check")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push((format!("keepalived-{n}"), child));
        self.spawn(
            n,
            &format!("backend-{n}"),
            &["backend", &format!("node-{n}=0.0.0.0:8080")],
        );
    }

    /// Cuts (or restores) the A↔B path; both still reach the client.
    pub fn partition(&self, on: bool) {
        let sw = self.ns("sw");
        let v = if on { "on" } else { "off" };
        for port in ["pa", "pb"] {
            assert!(Command::new("bridge")
                .args(["-n", &sw, "link", "set", "dev", port, "isolated", v])
                .status()
                .unwrap()
                .success());
        }
    }

    /// Starts node `n` (priority `prio`) with its own demo backend answering `node-n`.
    pub fn node(&mut self, dir: &std::path::Path, n: &str, prio: u32) {
        self.node_with(dir, n, prio, "", "");
    }

    /// Like `node`, with extra keys for its `[[cluster]]` and `[[vip]]`.
    pub fn node_with(&mut self, dir: &std::path::Path, n: &str, prio: u32, cluster_extra: &str, vip_extra: &str) {
        let config = Lab::node_config(prio, cluster_extra, "", vip_extra, "");
        self.start_node(dir, n, &config);
    }

    /// A node's configuration: one worker, admin on 127.0.0.1:9900 in its namespace,
    /// listener `web` on the VIP's port 8080 and route `all` to its demo backend
    /// (127.0.0.1:9101), `[[vip]] web` (VRID 51, priority `prio`, 2 s address
    /// lifetime); `*_extra` are more keys for the cluster, the route and the VIP, `more`
    /// is appended (more listeners, routes, an `[ha]` section).
    pub fn node_config(prio: u32, cluster_extra: &str, route_extra: &str, vip_extra: &str, more: &str) -> String {
        format!(
            "[server]\nworkers = 1\ndrain_timeout = \"1s\"\nmaintenance_handover = \"500ms\"\n[admin]\nlisten = \"127.0.0.1:9900\"\n[log]\nlevel = \"warn\"\n\
[[listener]]\nname = \"web\"\nlisten = \"{VIP}:8080\"\n\
[[cluster]]\nname = \"local\"\n{cluster_extra}\nendpoints = [{{ address = \"127.0.0.1:9101\" }}]\n\
[[route]]\nname = \"all\"\ncluster = \"local\"\n{route_extra}\n\
[[vip]]\nname = \"web\"\ninterface = \"eth0\"\nvrid = 51\npriority = {prio}\naddresses = [\"{VIP}/24\"]\naddress_lifetime = \"2s\"\ngarp_refresh = \"1s\"\n{vip_extra}\n{more}\n"
        )
    }

    /// Writes node `n`'s configuration and starts it, with its demo backend answering
    /// `node-n` on 127.0.0.1:9101 (started once).
    pub fn start_node(&mut self, dir: &std::path::Path, n: &str, config: &str) {
        let cfg = dir.join(format!("{n}.toml"));
        std::fs::write(&cfg, config).unwrap();
        if !self.children.iter().any(|(l, _)| l == &format!("backend-{n}")) {
            self.spawn(
                n,
                &format!("backend-{n}"),
                &["backend", &format!("node-{n}=127.0.0.1:9101")],
            );
        }
        self.spawn(n, &format!("node-{n}"), &["run", "-c", cfg.to_str().unwrap()]);
    }

    /// What the client gets from the VIP (`None`: nothing within a second).
    pub fn client_get(&self) -> Option<String> {
        self.client_get_within("1")
    }

    /// What the client gets from the VIP within `secs` (curl's `--max-time`).
    pub fn client_get_within(&self, secs: &str) -> Option<String> {
        self.client_get_from(VIP, secs)
    }

    /// What the client gets from `vip`:8080 within `secs`.
    pub fn client_get_from(&self, vip: &str, secs: &str) -> Option<String> {
        let host = if vip.contains(':') {
            format!("[{vip}]")
        } else {
            vip.to_string()
        };
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns("c"), "curl", "-gs", "--max-time", secs])
            .arg(format!("http://{host}:8080/"))
            .output()
            .ok()?;
        let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !body.is_empty()).then_some(body)
    }

    /// Waits until the client reaches `want` through the VIP; returns how long it took.
    pub fn wait_for(&self, want: &str, limit: Duration) -> Duration {
        self.wait_for_at(VIP, want, limit)
    }

    /// Waits until the client reaches `want` through `vip`; returns how long it took.
    pub fn wait_for_at(&self, vip: &str, want: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            // Short attempts: one stuck on the old holder's MAC must not hide the new one.
            if self.client_get_from(vip, "0.05").is_some_and(|b| b.contains(want)) {
                return start.elapsed();
            }
            assert!(start.elapsed() < limit, "{vip} did not reach {want} within {limit:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The distinct MACs that answer one broadcast ARP request for the VIP, seen from the
    /// client (waits up to 1 s for a second answer).
    pub fn arp_macs(&self) -> std::collections::BTreeSet<String> {
        // Without the tool every sample would read as "no MAC answers".
        assert!(has_arping(), "arping is not installed (Debian iputils-arping)");
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns("c"),
                "arping",
                "-b",
                "-c",
                "2",
                "-w",
                "1",
                "-I",
                "eth0",
                VIP,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("reply from"))
            .filter_map(|l| Some(l.split('[').nth(1)?.split(']').next()?.to_string()))
            .collect()
    }

    /// The `[ha]` section of member `n` (a = 1, b = 2, witness w = 3), with lab
    /// certificates in `dir/certs`.
    pub fn ha_section(&self, dir: &std::path::Path, n: &str) -> String {
        let certs = dir.join("certs");
        if !certs.join("ca.pem").exists() {
            assert!(Command::new(crate::tandem_bin())
                .args(["ctl", "cluster", "certs", "--members", "a,b,w", "--out"])
                .arg(&certs)
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success());
        }
        let id = match n {
            "a" => 1,
            "b" => 2,
            _ => 3,
        };
        format!(
            "[ha]\nnode_id = {id}\ndata_dir = \"{}\"\nsync_interval = \"20ms\"\ntls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}\npeers = [{{ id = 1, address = \"10.77.0.1:7946\" }}, {{ id = 2, address = \"10.77.0.2:7946\" }}, {{ id = 3, address = \"10.77.0.3:7946\", witness = true }}]\n",
            dir.join(format!("ha-{n}")).display(),
            certs.join("ca.pem").display(),
            certs.join(format!("{n}.pem")).display(),
            certs.join(format!("{n}.key")).display(),
        )
    }

    /// Starts the witness in namespace w.
    pub fn witness(&mut self, dir: &std::path::Path) {
        let cfg = dir.join("w.toml");
        std::fs::write(&cfg, format!("[log]\nlevel = \"warn\"\n{}", self.ha_section(dir, "w"))).unwrap();
        self.spawn("w", "witness", &["witness", "-c", cfg.to_str().unwrap()]);
    }

    /// Starts node `n` as a fenced member of the pair's Raft group.
    pub fn fenced_node(&mut self, dir: &std::path::Path, n: &str, prio: u32, vip_extra: &str) {
        let extra = format!("{vip_extra}\n{}", self.ha_section(dir, n));
        self.node_with(dir, n, prio, "", &extra);
    }

    /// A counter from node `n`'s metrics (`name{labels}` exactly as exposed).
    pub fn metric(&self, n: &str, series: &str) -> u64 {
        self.ctl(n, &["metrics"])
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Whether node `n`'s eth0 carries the VIP.
    pub fn holds_vip(&self, n: &str) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.ns(n), "-4", "addr", "show", "dev", "eth0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&format!("{VIP}/"))
    }

    /// `tandem ctl --json ARGS` against node `n`'s admin API; its output.
    pub fn ctl(&self, n: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(n)])
            .arg(crate::tandem_bin())
            .args(["ctl", "--json", "--admin", "127.0.0.1:9900"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a new thread that has entered namespace `n`: the sockets it opens
    /// live there (a client in c, an admin call to 127.0.0.1 in a or b).
    pub fn thread_in<T: Send + 'static>(
        &self,
        n: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        thread_in_netns(&self.ns(n), f)
    }

    /// Adds a second segment: bridge br1 in the switch namespace and eth1 in a, b and c
    /// on 10.78.0.0/24 (.1, .2, .10), switch ports q{n}.
    pub fn second_link(&self) {
        let sw = self.ns("sw");
        assert!(ip(&["-n", &sw, "link", "add", "br1", "type", "bridge"]));
        assert!(ip(&["-n", &sw, "link", "set", "br1", "up"]));
        for (n, addr) in [("a", "10.78.0.1/24"), ("b", "10.78.0.2/24"), ("c", "10.78.0.10/24")] {
            let ns = self.ns(n);
            let port = format!("q{n}");
            assert!(ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth1", "netns", &ns
            ]));
            assert!(ip(&["-n", &sw, "link", "set", &port, "master", "br1", "up"]));
            assert!(ip(&["-n", &ns, "addr", "add", addr, "dev", "eth1"]));
            assert!(ip(&["-n", &ns, "link", "set", "eth1", "up"]));
        }
    }

    /// Whether node `n`'s interface `dev` carries address `addr`.
    pub fn holds(&self, n: &str, dev: &str, addr: &str) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.ns(n), "addr", "show", "dev", dev])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&format!("{addr}/"))
    }

    /// Takes member `n`'s switch port down (it reaches nobody) or back up.
    pub fn port_down(&self, n: &str, down: bool) {
        let port = format!("p{n}");
        let state = if down { "down" } else { "up" };
        assert!(ip(&["-n", &self.ns("sw"), "link", "set", &port, state]));
    }

    /// `tandem release-vips -c DIR/n.toml` in n's namespace: what the systemd unit's
    /// `ExecStopPost` does after the proxy ended, however it ended.
    pub fn release_vips(&self, dir: &std::path::Path, n: &str) {
        let ok = Command::new("ip")
            .args(["netns", "exec", &self.ns(n)])
            .arg(crate::tandem_bin())
            .args(["release-vips", "-c"])
            .arg(dir.join(format!("{n}.toml")))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "release-vips in {n}");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in ["a", "b", "c", "w", "sw"] {
            ip(&["netns", "del", &self.ns(n)]);
        }
    }
}
