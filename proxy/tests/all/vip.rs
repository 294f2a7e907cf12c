//! Floating VIPs in real network namespaces: a switch namespace holding a bridge, node A
//! and node B (each a `tandem` process with a demo backend), and a client namespace.
//! Everything is created and torn down by the test; traffic stays inside.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const VIP: &str = "10.77.0.100";

/// The namespaces of one test.
struct Lab {
    tag: String,
    children: Vec<(String, Child)>,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `arping` (iputils) runs here: the fencing tests count the MACs answering ARP
/// for the VIP with it.
fn has_arping() -> bool {
    crate::common::has_tool("arping", "-V")
}

impl Lab {
    /// Builds sw-TAG (bridge), a-TAG, b-TAG, c-TAG; `None` when namespaces cannot be
    /// created here (no CAP_NET_ADMIN).
    fn new() -> Option<Lab> {
        static N: AtomicU32 = AtomicU32::new(0);
        let tag = format!("{}{}", std::process::id() % 10000, N.fetch_add(1, Ordering::Relaxed));
        let lab = Lab {
            tag,
            children: Vec::new(),
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
    fn or_skip() -> Option<Lab> {
        let lab = Lab::new();
        if !crate::common::can_run(
            lab.is_some(),
            "network namespaces cannot be created here (needs root / CAP_NET_ADMIN)",
        ) {
            return None;
        }
        lab
    }

    /// A lab with node A (priority 150) and node B (100) running, A serving the VIP.
    fn pair(dir: &std::path::Path) -> Option<Lab> {
        let mut lab = Lab::or_skip()?;
        lab.node(dir, "a", 150);
        lab.node(dir, "b", 100);
        lab.wait_for("node-a", Duration::from_secs(10));
        Some(lab)
    }

    fn ns(&self, n: &str) -> String {
        format!("tdm{n}{}", self.tag)
    }

    /// Starts `tandem ARGS` inside namespace `n`.
    fn spawn(&mut self, n: &str, label: &str, args: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(n), env!("CARGO_BIN_EXE_tandem")])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.children.push((label.to_string(), child));
    }

    /// SIGTERM to `label`; its exit status (killed if it has not exited by `limit`).
    fn term(&mut self, label: &str, limit: Duration) -> std::process::ExitStatus {
        let i = self.children.iter().position(|(l, _)| l == label).unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &self.children[i].1.id().to_string()])
            .status();
        self.wait_exit(label, limit)
    }

    /// The exit status of `label` (killed if it has not exited by `limit`).
    fn wait_exit(&mut self, label: &str, limit: Duration) -> std::process::ExitStatus {
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

    fn kill9(&mut self, label: &str) {
        let i = self.children.iter().position(|(l, _)| l == label).unwrap();
        let (_, mut c) = self.children.remove(i);
        let _ = Command::new("kill").args(["-9", &c.id().to_string()]).status();
        let _ = c.wait();
    }

    /// Starts keepalived as node `n` (VRRPv3, same VRID and VIP) with a demo backend
    /// on the VIP's port.
    fn keepalived(&mut self, dir: &std::path::Path, n: &str, prio: u32) {
        let cfg = dir.join(format!("keepalived-{n}.conf"));
        std::fs::write(
            &cfg,
            format!(
                "global_defs {{\n  vrrp_version 3\n  script_user root\n}}\nvrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {prio}\n  advert_int 0.1\n  notify_master \"{}\"\n  virtual_ipaddress {{\n    {VIP}/24\n  }}\n}}\n",
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
    fn partition(&self, on: bool) {
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
    fn node(&mut self, dir: &std::path::Path, n: &str, prio: u32) {
        self.node_with(dir, n, prio, "", "");
    }

    /// Like `node`, with extra keys for its `[[cluster]]` and `[[vip]]`.
    fn node_with(&mut self, dir: &std::path::Path, n: &str, prio: u32, cluster_extra: &str, vip_extra: &str) {
        self.start_node(
            dir,
            n,
            &format!(
                "[server]\nworkers = 1\ndrain_timeout = \"1s\"\nmaintenance_handover = \"500ms\"\n[admin]\nlisten = \"127.0.0.1:9900\"\n[log]\nlevel = \"warn\"\n\
[[listener]]\nname = \"web\"\nlisten = \"{VIP}:8080\"\n\
[[cluster]]\nname = \"local\"\n{cluster_extra}\nendpoints = [{{ address = \"127.0.0.1:9101\" }}]\n\
[[route]]\nname = \"all\"\ncluster = \"local\"\n\
[[vip]]\nname = \"web\"\ninterface = \"eth0\"\nvrid = 51\npriority = {prio}\naddresses = [\"{VIP}/24\"]\naddress_lifetime = \"2s\"\ngarp_refresh = \"1s\"\n{vip_extra}\n"
            ),
        );
    }

    /// Writes node `n`'s configuration and starts it, with its demo backend answering
    /// `node-n` on 127.0.0.1:9101 (started once).
    fn start_node(&mut self, dir: &std::path::Path, n: &str, config: &str) {
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
    fn client_get(&self) -> Option<String> {
        self.client_get_within("1")
    }

    /// What the client gets from the VIP within `secs` (curl's `--max-time`).
    fn client_get_within(&self, secs: &str) -> Option<String> {
        self.client_get_from(VIP, secs)
    }

    /// What the client gets from `vip`:8080 within `secs`.
    fn client_get_from(&self, vip: &str, secs: &str) -> Option<String> {
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
    fn wait_for(&self, want: &str, limit: Duration) -> Duration {
        self.wait_for_at(VIP, want, limit)
    }

    /// Waits until the client reaches `want` through `vip`; returns how long it took.
    fn wait_for_at(&self, vip: &str, want: &str, limit: Duration) -> Duration {
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
    fn arp_macs(&self) -> std::collections::BTreeSet<String> {
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
    fn ha_section(&self, dir: &std::path::Path, n: &str) -> String {
        let certs = dir.join("certs");
        if !certs.join("ca.pem").exists() {
            assert!(Command::new(env!("CARGO_BIN_EXE_tandem"))
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
    fn witness(&mut self, dir: &std::path::Path) {
        let cfg = dir.join("w.toml");
        std::fs::write(&cfg, format!("[log]\nlevel = \"warn\"\n{}", self.ha_section(dir, "w"))).unwrap();
        self.spawn("w", "witness", &["witness", "-c", cfg.to_str().unwrap()]);
    }

    /// Starts node `n` as a fenced member of the pair's Raft group.
    fn fenced_node(&mut self, dir: &std::path::Path, n: &str, prio: u32, vip_extra: &str) {
        let extra = format!("{vip_extra}\n{}", self.ha_section(dir, n));
        self.node_with(dir, n, prio, "", &extra);
    }

    /// A counter from node `n`'s metrics (`name{labels}` exactly as exposed).
    fn metric(&self, n: &str, series: &str) -> u64 {
        self.ctl(n, &["metrics"])
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    }

    fn holds_vip(&self, n: &str) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.ns(n), "-4", "addr", "show", "dev", "eth0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&format!("{VIP}/"))
    }

    fn ctl(&self, n: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(n),
                env!("CARGO_BIN_EXE_tandem"),
                "ctl",
                "--json",
                "--admin",
                "127.0.0.1:9900",
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
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

#[test]
fn election_failover_on_kill_preemption_and_maintenance() {
    let Some(mut lab) = Lab::or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    lab.node(dir.path(), "a", 150);
    lab.node(dir.path(), "b", 100);

    // Election by priority: A holds the VIP, B does not.
    lab.wait_for("node-a", Duration::from_secs(10));
    assert!(lab.holds_vip("a"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!lab.holds_vip("b"), "only the master holds the VIP");

    // kill -9 of the master: the backup takes over well under a second after
    // Master_Down (3 × 100 ms + skew).
    let mut trials = Vec::new();
    for round in 0..10 {
        lab.kill9("node-a");
        let took = lab.wait_for("node-b", Duration::from_secs(5));
        trials.push(took);
        // The dead holder's VIP expires from its NIC by itself (2 s lifetime).
        let gone = Instant::now();
        while lab.holds_vip("a") {
            assert!(
                gone.elapsed() < Duration::from_secs(4),
                "round {round}: the killed node's VIP lingers"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The higher-priority node returns and preempts.
        lab.node(dir.path(), "a", 150);
        lab.wait_for("node-a", Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !lab.holds_vip("b"),
            "round {round}: B released the VIP after A returned"
        );
    }
    let mut sorted = trials.clone();
    sorted.sort();
    eprintln!(
        "kill -9 → first success through the backup, 10 trials: min {:?} median {:?} max {:?}",
        sorted[0], sorted[5], sorted[9]
    );
    for t in &trials {
        assert!(*t < Duration::from_millis(1500), "failover took {t:?}");
    }

    // Maintenance: A releases with priority 0; B takes over at once; off → A again.
    let out = lab.ctl("a", &["maintenance", "on"]);
    assert!(out.contains("\"maintenance\":true"), "{out}");
    let took = lab.wait_for("node-b", Duration::from_secs(2));
    eprintln!("maintenance on → served by B after {took:?}");
    // The released addresses stay 250 ms past the priority-0 advert, then go.
    let t = Instant::now();
    while lab.holds_vip("a") {
        assert!(t.elapsed() < Duration::from_secs(2), "A kept the VIP in maintenance");
        std::thread::sleep(Duration::from_millis(20));
    }
    lab.ctl("a", &["maintenance", "off"]);
    lab.wait_for("node-a", Duration::from_secs(5));
    let status = lab.ctl("a", &["status"]);
    assert!(status.contains("\"syn_gate_closed\":false"), "{status}");

    let deadline = Instant::now() + Duration::from_secs(3);
    while !lab
        .ctl("a", &["metrics"])
        .contains("tandem_vip_state{vip=\"web\",vrid=\"51\"} 2")
    {
        assert!(Instant::now() < deadline, "A does not report master");
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = lab.ctl("a", &["metrics"]);
    assert!(
        metrics.contains("tandem_vip_events_total{vip=\"web\",event=\"became_master\"} 2"),
        "{metrics}"
    );
    let status = lab.ctl("b", &["status"]);
    assert!(status.contains("\"state\":\"backup\""), "{status}");
}

#[test]
fn partition_heal_converges_on_one_holder_within_a_second() {
    if !crate::common::can_run(has_arping(), "arping is not installed (Debian package iputils-arping)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(lab) = Lab::pair(dir.path()) else { return };
    let mut heals = Vec::new();
    for round in 0..4 {
        lab.partition(true);
        // Without a third vote both sides become master (documented); B takes the VIP.
        let t = Instant::now();
        while !lab.holds_vip("b") {
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "B never took over during the partition"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        if round == 0 {
            // Both answer ARP for the VIP (what the witness prevents).
            assert_eq!(
                lab.arp_macs().len(),
                2,
                "two holders answer during an unfenced partition"
            );
        }
        // B's takeover GARPs reach the client: it now talks to B.
        std::thread::sleep(Duration::from_millis(300));
        lab.partition(false);
        heals.push(lab.wait_for("node-a", Duration::from_secs(5)));
        let t = Instant::now();
        while lab.holds_vip("b") {
            assert!(t.elapsed() < Duration::from_secs(2), "B kept the VIP after the heal");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    eprintln!("heal → client on the one remaining holder: {heals:?}");
    for h in &heals {
        assert!(*h < Duration::from_secs(1), "heal took {h:?}");
    }
}

#[test]
fn malformed_and_foreign_adverts_are_dropped_and_counted() {
    let Some(mut lab) = Lab::or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    lab.node(dir.path(), "a", 150);
    lab.wait_for("node-a", Duration::from_secs(10));
    // From the client: TTL 1, a bad checksum, another VRID (valid), priority 255 with a
    // bad checksum — none may move the VIP.
    let script = r#"
import socket, struct
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b)//2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
def advert(vrid, prio, bad=False):
    m = bytes([0x31, vrid, prio, 1, 0, 10, 0, 0]) + socket.inet_aton('10.77.0.100')
    ph = socket.inet_aton('10.77.0.10') + socket.inet_aton('224.0.0.18') + struct.pack('!BBH', 0, 112, len(m))
    c = csum(ph + m) ^ (0x1234 if bad else 0)
    return m[:6] + struct.pack('!H', c) + m[8:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton('10.77.0.10'))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
s.sendto(advert(51, 200), ('224.0.0.18', 0))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
s.sendto(advert(51, 255, bad=True), ('224.0.0.18', 0))
s.sendto(advert(52, 200), ('224.0.0.18', 0))
"#;
    let ok = Command::new("ip")
        .args(["netns", "exec", &lab.ns("c"), "python3", "-c", script])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    std::thread::sleep(Duration::from_millis(300));
    let m = lab.ctl("a", &["metrics"]);
    for reason in ["ttl", "checksum", "vrid"] {
        let line = format!("tandem_vip_adverts_dropped_total{{vip=\"web\",reason=\"{reason}\"}} 1");
        assert!(m.contains(&line), "{reason}: {m}");
    }
    assert!(
        m.contains("tandem_vip_state{vip=\"web\",vrid=\"51\"} 2"),
        "still master: {m}"
    );
    assert!(lab.holds_vip("a"));
}

#[test]
fn interoperates_with_keepalived_both_ways() {
    if !crate::common::can_run(
        crate::common::has_tool("keepalived", "--version"),
        "keepalived is not installed (Debian package keepalived)",
    ) {
        return;
    }
    let Some(mut lab) = Lab::or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    lab.keepalived(dir.path(), "b", 100);
    lab.wait_for("node-b", Duration::from_secs(10));
    // Tandem with the higher priority preempts keepalived.
    lab.node(dir.path(), "a", 150);
    lab.wait_for("node-a", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!lab.holds_vip("b"), "keepalived yielded to the higher priority");
    // Tandem dies: keepalived takes over.
    lab.kill9("node-a");
    let took = lab.wait_for("node-b", Duration::from_secs(5));
    eprintln!("tandem killed → keepalived serving after {took:?}");
    // Tandem returns and takes the VIP back; its maintenance releases to keepalived at once.
    lab.node(dir.path(), "a", 150);
    lab.wait_for("node-a", Duration::from_secs(10));
    lab.ctl("a", &["maintenance", "on"]);
    let took = lab.wait_for("node-b", Duration::from_secs(3));
    eprintln!("tandem maintenance → keepalived serving after {took:?}");
    lab.ctl("a", &["maintenance", "off"]);
    lab.wait_for("node-a", Duration::from_secs(5));
    let status = lab.ctl("a", &["status"]);
    assert!(status.contains("\"syn_gate_closed\":false"), "{status}");
}

/// A keep-alive client over one socket that never retries a request. With `honour` 1 it
/// closes the socket after a response that says `Connection: close` and opens a new one
/// for the next request (as HTTP/1.1 asks); with 0 it never looks at it: it sends the
/// next request on the same socket and reconnects only after one failed. Prints
/// `OK FAILED`.
const KEEP_ALIVE_CLIENT: &str = r#"
import socket, sys
host, port, n, honour = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
req = b"GET /?delay_ms=1 HTTP/1.1\r\nHost: vip\r\n\r\n"
ok = failed = 0
s = f = None
for i in range(n):
    fresh = s is None
    try:
        if s is None:
            s = socket.create_connection((host, port), timeout=4)
            f = s.makefile("rb")
        s.sendall(req)
        status = f.readline()
        if not status:
            raise IOError("closed")
        length = 0
        close = False
        while True:
            line = f.readline()
            if not line:
                raise IOError("closed")
            if line in (b"\r\n", b"\n"):
                break
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
            if k.strip().lower() == b"connection" and v.strip().lower() == b"close":
                close = True
        if len(f.read(length)) < length:
            raise IOError("short body")
        if b" 200 " in status:
            ok += 1
        else:
            failed += 1
        if close and honour:
            s.close()
            s = f = None
    except Exception as e:
        failed += 1
        if honour:
            sys.stderr.write("keep-alive client, request %d (%s connection): %r\n" % (i, "new" if fresh else "reused", e))
        try:
            s.close()
        except Exception:
            pass
        s = f = None
print(ok, failed)
"#;

/// Two threads, each opening a new connection per request (the client most exposed
/// to the moment the VIP moves: some connection is always being set up), for `secs`.
/// Prints "ok failed" and one line per failure.
const FRESH_CLIENT: &str = r#"
import socket, sys, threading, time
host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
req = b"GET /?delay_ms=1 HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n"
ok, failed = [0], []
lock = threading.Lock()
def run():
    end = time.time() + secs
    while time.time() < end:
        try:
            s = socket.create_connection((host, port), timeout=4)
            s.sendall(req)
            data = b""
            while True:
                b = s.recv(4096)
                if not b:
                    break
                data += b
            s.close()
            if not data.startswith(b"HTTP/1.1 200 "):
                raise IOError("answer: %r" % data[:40])
            with lock:
                ok[0] += 1
        except Exception as e:
            with lock:
                failed.append(repr(e))
ts = [threading.Thread(target=run) for _ in range(2)]
for t in ts: t.start()
for t in ts: t.join()
print(ok[0], len(failed))
for f in failed: print(f)
"#;

/// The clients of a handover test, started together in the client namespace.
struct HandoverLoad {
    curl: Child,
    naive: Child,
    strict: Child,
    fresh: Child,
}

impl HandoverLoad {
    /// Keep-alive clients that honour Connection: close: curl (reuses its connection for
    /// the URLs given, reconnects when asked to close, and retries a request whose reused
    /// connection died; 1,500 requests, ~3 s) and a strict one that never retries; a
    /// naive one that ignores it (reconnecting only after a request failed on its
    /// connection; each such failure is counted); and two threads opening a new
    /// connection per request for 2.5 s.
    fn start(lab: &Lab, dir: &std::path::Path) -> HandoverLoad {
        let url = format!("http://{VIP}:8080/?delay_ms=1");
        let mut args = vec![
            "netns".to_string(),
            "exec".into(),
            lab.ns("c"),
            "curl".into(),
            "-s".into(),
        ];
        for _ in 0..1500 {
            args.extend([
                "-o".into(),
                "/dev/null".into(),
                "-w".into(),
                "%{http_code}\\n".into(),
                url.clone(),
            ]);
        }
        let curl = Command::new("ip").args(&args).stdout(Stdio::piped()).spawn().unwrap();
        let python = |name: &str, script: &str, args: &[&str]| {
            let path = dir.join(name);
            std::fs::write(&path, script).unwrap();
            Command::new("ip")
                .args(["netns", "exec", &lab.ns("c"), "python3"])
                .arg(&path)
                .args([VIP, "8080"])
                .args(args)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let naive = python("naive.py", KEEP_ALIVE_CLIENT, &["1500", "0"]);
        let strict = python("strict.py", KEEP_ALIVE_CLIENT, &["1500", "1"]);
        let fresh = python("fresh.py", FRESH_CLIENT, &["2.5"]);
        HandoverLoad {
            curl,
            naive,
            strict,
            fresh,
        }
    }

    /// Waits for the clients and asserts that none that follows `Connection: close`
    /// lost a request, and that the naive one kept being served.
    fn assert_nothing_lost(self, what: &str) {
        let out = self.curl.wait_with_output().unwrap();
        let codes = String::from_utf8_lossy(&out.stdout);
        let total = codes.lines().count();
        let failed = codes.lines().filter(|c| *c != "200").count();
        eprintln!("{what} under keep-alive load: {total} requests, {failed} failed");
        for (i, c) in codes.lines().enumerate().filter(|(_, c)| *c != "200") {
            eprintln!("  request {i} of 1500: status {c} (000 = no HTTP answer: curl could not connect or the connection dropped)");
        }
        let naive = String::from_utf8_lossy(&self.naive.wait_with_output().unwrap().stdout).to_string();
        let (ok, bad) = naive.trim().split_once(' ').expect("naive client output");
        eprintln!("{what}, naive keep-alive client (ignores Connection: close): {ok} succeeded, {bad} failed");
        assert!(
            ok.parse::<u32>().unwrap() > 1000,
            "the naive client stopped being served: {naive}"
        );
        let strict = String::from_utf8_lossy(&self.strict.wait_with_output().unwrap().stdout).to_string();
        eprintln!("{what}, keep-alive client that never retries: {strict}");
        assert_eq!(
            strict.trim().split_once(' ').map(|(_, bad)| bad),
            Some("0"),
            "a keep-alive request failed ({what}): {strict}"
        );
        let fresh = String::from_utf8_lossy(&self.fresh.wait_with_output().unwrap().stdout).to_string();
        eprintln!("{what}, a new connection per request (2 threads): {fresh}");
        let (ok, bad) = fresh
            .lines()
            .next()
            .and_then(|l| l.split_once(' '))
            .expect("fresh client output");
        assert!(ok.parse::<u32>().unwrap() > 100, "{fresh}");
        assert_eq!(bad, "0", "new connections failed while the VIP moved ({what}): {fresh}");
        assert_eq!(total, 1500);
        assert_eq!(failed, 0, "requests failed during the handover ({what})");
    }
}

#[test]
fn maintenance_under_keep_alive_load_loses_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let Some(lab) = Lab::pair(dir.path()) else { return };
    std::thread::sleep(Duration::from_millis(300));
    let load = HandoverLoad::start(&lab, dir.path());
    std::thread::sleep(Duration::from_millis(700));
    let out = lab.ctl("a", &["maintenance", "on"]);
    assert!(out.contains("\"maintenance\":true"), "{out}");
    load.assert_nothing_lost("maintenance");
    std::thread::sleep(Duration::from_millis(400));
    assert!(lab.holds_vip("b") && !lab.holds_vip("a"), "the VIP moved to B");
    let status = lab.ctl("a", &["status"]);
    assert!(status.contains("\"maintenance\":true"), "{status}");
    assert!(status.contains("\"syn_gate_closed\":true"), "{status}");
}

/// Stops the master under load (`how` does it and returns its exit status) and asserts
/// that no client lost a request and that B holds the VIP.
fn stop_master_under_load(what: &str, how: impl FnOnce(&mut Lab) -> std::process::ExitStatus) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut lab) = Lab::pair(dir.path()) else { return };
    std::thread::sleep(Duration::from_millis(300));
    let load = HandoverLoad::start(&lab, dir.path());
    std::thread::sleep(Duration::from_millis(700));
    let exited = how(&mut lab);
    load.assert_nothing_lost(what);
    assert!(exited.success(), "A did not exit cleanly: {exited:?}");
    assert!(lab.holds_vip("b") && !lab.holds_vip("a"), "the VIP moved to B");
}

#[test]
fn sigterm_of_the_master_under_load_hands_over_without_losing_a_request() {
    stop_master_under_load("SIGTERM of the master", |lab| {
        lab.term("node-a", Duration::from_secs(5))
    });
}

#[test]
fn ctl_drain_of_the_master_under_load_hands_over_as_sigterm_does() {
    stop_master_under_load("`tandem ctl drain` of the master", |lab| {
        let out = lab.ctl("a", &["drain"]);
        assert!(out.contains("\"draining\":true"), "{out}");
        lab.wait_exit("node-a", Duration::from_secs(5))
    });
}

#[test]
fn tracking_a_cluster_moves_the_vip_when_its_endpoints_fail() {
    let Some(mut lab) = Lab::or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    // Two failures in a row mark the backend down: a killed one fails at once (refused),
    // while one slow probe on a busy machine does not move the VIP.
    let check = "health_check = { path = \"/healthz\", interval = \"150ms\", timeout = \"150ms\", fall = 2, rise = 1 }";
    lab.node_with(
        dir.path(),
        "a",
        150,
        check,
        "track_clusters = [\"local\"]\ntrack_weight = 100",
    );
    lab.node(dir.path(), "b", 100);
    lab.wait_for("node-a", Duration::from_secs(10));
    // A's only backend dies: its priority drops to 50 and B (100) takes over.
    lab.kill9("backend-a");
    let took = lab.wait_for("node-b", Duration::from_secs(5));
    eprintln!("tracked cluster down → served by B after {took:?}");
    let t = Instant::now();
    loop {
        let m = lab.ctl("a", &["metrics"]);
        if m.contains("tandem_vip_priority{vip=\"web\"} 50") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "A's priority did not drop: {m}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // It comes back: A returns to 150 and preempts.
    lab.spawn("a", "backend-a", &["backend", "node-a=127.0.0.1:9101"]);
    lab.wait_for("node-a", Duration::from_secs(5));
}

#[test]
fn active_active_each_node_holds_its_own_vip_and_covers_the_other() {
    let Some(mut lab) = Lab::or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    // A second VIP (VRID 52) with the priorities the other way round.
    let second = |prio: u32| {
        format!(
            "\n[[vip]]\nname = \"api\"\ninterface = \"eth0\"\nvrid = 52\npriority = {prio}\naddresses = [\"10.77.0.101/24\"]\n\
             [[listener]]\nname = \"api\"\nlisten = \"10.77.0.101:8080\"\n"
        )
    };
    lab.node_with(dir.path(), "a", 150, "", &second(100));
    lab.node_with(dir.path(), "b", 100, "", &second(150));
    let wait = |lab: &Lab, vip: &str, want: &str| lab.wait_for_at(vip, want, Duration::from_secs(10));
    wait(&lab, VIP, "node-a");
    wait(&lab, "10.77.0.101", "node-b");
    // A dies: B holds both.
    lab.kill9("node-a");
    let took = wait(&lab, VIP, "node-b");
    assert!(lab
        .client_get_from("10.77.0.101", "1")
        .is_some_and(|b| b.contains("node-b")));
    eprintln!("active-active: A killed → B serves both VIPs after {took:?}");
    // A returns: it takes its own VIP back and leaves B's alone.
    lab.node_with(dir.path(), "a", 150, "", &second(100));
    wait(&lab, VIP, "node-a");
    std::thread::sleep(Duration::from_millis(300));
    assert!(lab
        .client_get_from("10.77.0.101", "1")
        .is_some_and(|b| b.contains("node-b")));
    let status = lab.ctl("a", &["status"]);
    assert!(
        status.contains("\"vrid\":52") && status.contains("\"vrid\":51"),
        "{status}"
    );
}

#[test]
fn ipv6_vip_elects_fails_over_and_is_announced_by_neighbour_advertisement() {
    let Some(mut lab) = Lab::or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    const VIP6: &str = "fd77::100";
    // The client has an address on the VIP's prefix; the nodes advertise from their
    // link-local addresses to ff02::12.
    assert!(ip(&[
        "-n",
        &lab.ns("c"),
        "addr",
        "add",
        "fd77::10/64",
        "dev",
        "eth0",
        "nodad"
    ]));
    let node = |lab: &mut Lab, n: &str, prio: u32| {
        lab.start_node(
            dir.path(),
            n,
            &format!(
                "[server]\nworkers = 1\ndrain_timeout = \"1s\"\n[log]\nlevel = \"warn\"\naccess_log = \"off\"\n\
                 [[listener]]\nname = \"web6\"\nlisten = \"[{VIP6}]:8080\"\n\
                 [[cluster]]\nname = \"local\"\nendpoints = [{{ address = \"127.0.0.1:9101\" }}]\n\
                 [[route]]\nname = \"all\"\ncluster = \"local\"\n\
                 [[vip]]\nname = \"web6\"\ninterface = \"eth0\"\nvrid = 61\npriority = {prio}\naddresses = [\"{VIP6}/64\"]\naddress_lifetime = \"2s\"\n"
            ),
        );
    };
    let wait = |lab: &Lab, want: &str, limit: Duration| lab.wait_for_at(VIP6, want, limit);
    node(&mut lab, "a", 150);
    node(&mut lab, "b", 100);
    wait(&lab, "node-a", Duration::from_secs(10));
    let on_b = || {
        let out = Command::new("ip")
            .args(["-n", &lab.ns("b"), "-6", "addr", "show", "dev", "eth0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&format!("{VIP6}/"))
    };
    assert!(!on_b(), "only the master holds the IPv6 VIP");
    // kill -9 of the master: B takes over and its neighbour advertisement moves the
    // client, which still has A's MAC cached.
    let mut trials = Vec::new();
    for _ in 0..3 {
        lab.kill9("node-a");
        trials.push(wait(&lab, "node-b", Duration::from_secs(5)));
        node(&mut lab, "a", 150);
        wait(&lab, "node-a", Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("IPv6 VIP: kill -9 → first success through B, 3 trials: {trials:?}");
    let m = lab.ctl("b", &["metrics"]);
    assert!(
        m.contains("tandem_vip_events_total{vip=\"web6\",event=\"became_master\"} 3"),
        "{m}"
    );
}

/// B's `became_master` count.
fn became_master(lab: &Lab, n: &str) -> u64 {
    let m = lab.ctl(n, &["metrics"]);
    m.lines()
        .find(|l| l.starts_with("tandem_vip_events_total{vip=\"web\",event=\"became_master\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Drops `pct` % of the VRRP packets crossing the lab's bridge (0 removes the rule).
fn set_advert_loss(lab: &Lab, pct: u32) {
    let sw = lab.ns("sw");
    let nft = |rule: &str| {
        Command::new("ip")
            .args(["netns", "exec", &sw, "nft", rule])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    nft("delete table bridge lossy");
    if pct == 0 {
        return;
    }
    for rule in [
        "add table bridge lossy".to_string(),
        "add chain bridge lossy loss { type filter hook forward priority 0 ; }".to_string(),
        format!("add rule bridge lossy loss ether type ip ip protocol 112 numgen random mod 100 < {pct} drop"),
    ] {
        assert!(nft(&rule), "nft {rule}");
    }
}

#[test]
fn lossy_adverts_cause_fewer_false_takeovers_than_keepalived() {
    let tools = crate::common::has_tool("nft", "--version") && crate::common::has_tool("keepalived", "--version");
    if !crate::common::can_run(
        tools,
        "nft or keepalived is not installed (Debian packages nftables, keepalived)",
    ) {
        return;
    }
    // Side by side for the same 30 s windows: a Tandem pair with default timers and a
    // keepalived pair with 100 ms adverts, each on its own lossy bridge.
    let tdir = tempfile::tempdir().unwrap();
    let Some(tandem) = Lab::pair(tdir.path()) else { return };
    let kdir = tempfile::tempdir().unwrap();
    let Some(mut keep) = Lab::or_skip() else { return };
    keep.keepalived(kdir.path(), "a", 150);
    keep.keepalived(kdir.path(), "b", 100);
    keep.wait_for("node-a", Duration::from_secs(10));
    let keepalived_masters = || {
        std::fs::read_to_string(kdir.path().join("b-master.log"))
            .map(|s| s.lines().count() as u64)
            .unwrap_or(0)
    };
    let mut rows = Vec::new();
    for pct in [10, 30] {
        set_advert_loss(&tandem, pct);
        set_advert_loss(&keep, pct);
        let (t0, k0) = (became_master(&tandem, "b"), keepalived_masters());
        std::thread::sleep(Duration::from_secs(30));
        let (t, k) = (became_master(&tandem, "b") - t0, keepalived_masters() - k0);
        eprintln!("{pct}% VRRP loss for 30 s: false takeovers Tandem (defaults) {t}, keepalived (100 ms adverts) {k}");
        rows.push((pct, t, k));
    }
    set_advert_loss(&tandem, 0);
    for (pct, t, k) in rows {
        assert!(t <= k.max(1), "{pct}% loss: Tandem {t} false takeovers, keepalived {k}");
    }
    // The lossy link never moved the service for good.
    assert!(tandem.client_get().is_some_and(|b| b.contains("node-a")));
}

#[test]
fn a_witness_fences_the_vip_during_a_partition() {
    if !crate::common::can_run(has_arping(), "arping is not installed (Debian package iputils-arping)") {
        return;
    }
    let Some(mut lab) = Lab::or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    lab.witness(dir.path());
    lab.fenced_node(dir.path(), "a", 150, "on_no_quorum = \"hold\"");
    lab.fenced_node(dir.path(), "b", 100, "on_no_quorum = \"hold\"");
    lab.wait_for("node-a", Duration::from_secs(15));
    let refused = |lab: &Lab| lab.metric("b", "tandem_vip_events_total{vip=\"web\",event=\"lease_refused\"}");

    // A↔B cut, both still reach the witness and the client: B's Master_Down fires over
    // and over, the group refuses it the lease A keeps renewing, and only A answers.
    lab.partition(true);
    let start = Instant::now();
    let mut arp_checks = 0;
    while start.elapsed() < Duration::from_secs(4) {
        assert!(!lab.holds_vip("b"), "B took the VIP while A holds the lease");
        let macs = lab.arp_macs();
        assert_eq!(macs.len(), 1, "not exactly one holder answers ARP: {macs:?}");
        arp_checks += 1;
    }
    assert!(refused(&lab) > 0, "B never asked for the lease");
    assert!(lab.client_get().is_some_and(|b| b.contains("node-a")));
    eprintln!(
        "partition A↔B with the witness, 4 s: {arp_checks} ARP samples with one MAC, B refused the lease {} times",
        refused(&lab)
    );
    lab.partition(false);

    // kill -9 of the master: B takes over once A's lease has run out.
    let mut trials = Vec::new();
    for round in 0..5 {
        std::thread::sleep(Duration::from_millis(500));
        lab.kill9("node-a");
        trials.push(lab.wait_for("node-b", Duration::from_secs(5)));
        // A returns with the higher priority: B yields the lease and A preempts.
        lab.fenced_node(dir.path(), "a", 150, "on_no_quorum = \"hold\"");
        lab.wait_for("node-a", Duration::from_secs(15));
        let t = Instant::now();
        while lab.holds_vip("b") {
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "round {round}: B kept the VIP after yielding"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    trials.sort();
    eprintln!(
        "fenced kill -9 → first success through B, 5 trials: min {:?} median {:?} max {:?}",
        trials[0], trials[2], trials[4]
    );
    assert!(lab.metric("b", "tandem_vip_events_total{vip=\"web\",event=\"lease_yielded\"}") >= 1);

    // Without the witness and with A↔B cut there is no quorum: with on_no_quorum =
    // "hold" B stays backup and A keeps serving.
    std::thread::sleep(Duration::from_millis(500));
    lab.kill9("witness");
    lab.partition(true);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert!(
            !lab.holds_vip("b"),
            "B took over without quorum under on_no_quorum = \"hold\""
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(lab.client_get().is_some_and(|b| b.contains("node-a")));
    assert!(lab.metric("b", "tandem_vip_events_total{vip=\"web\",event=\"no_quorum\"}") > 0);
    lab.partition(false);
}

#[test]
fn release_vips_removes_a_dead_nodes_addresses() {
    // What the systemd unit's ExecStopPost runs after the proxy ended, however it ended.
    let Some(lab) = Lab::or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("a.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[listener]]\nname = \"web\"\nlisten = \"{VIP}:8080\"\n[[cluster]]\nname = \"local\"\nendpoints = [{{ address = \"127.0.0.1:9101\" }}]\n[[route]]\nname = \"all\"\ncluster = \"local\"\n\
             [[vip]]\nname = \"web\"\ninterface = \"eth0\"\nvrid = 51\npriority = 150\naddresses = [\"{VIP}/24\"]\n"
        ),
    )
    .unwrap();
    assert!(ip(&[
        "-n",
        &lab.ns("a"),
        "addr",
        "add",
        &format!("{VIP}/24"),
        "dev",
        "eth0"
    ]));
    assert!(lab.holds_vip("a"));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("a"),
            env!("CARGO_BIN_EXE_tandem"),
            "release-vips",
            "-c",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("released {VIP}/24 from eth0")));
    assert!(!lab.holds_vip("a"), "the VIP is still on the interface");
}
