//! A routed network-namespace lab for anycast tests: a router namespace running BIRD 2
//! with ECMP (Linux multipath routes, hashed on the 5-tuple), up to three Tandem nodes
//! each peering with it by BGP through its own BIRD, a client namespace and a server
//! namespace with the backends every node balances over. Everything is created and torn
//! down by the lab; traffic stays inside its namespaces.
//!
//! ```text
//!  client 10.66.100.2 ── r ── 10.66.1.2 n1   (anycast 10.99.1.10 on lo, AS 65001)
//!                        │ ── 10.66.2.2 n2
//!                        │ ── 10.66.3.2 n3
//!  server 10.66.200.2 ───┘   (router AS 65000; backends b1…b4 on :9101…9104)
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::lab::ip;

/// The anycast service address every node announces.
pub const ANYCAST: &str = "10.99.1.10";

/// The lab.
pub struct BgpLab {
    tag: String,
    dir: PathBuf,
    /// Processes the lab started, by label (`bird-r`, `bird-n1`, `node-n1`, `backends`).
    pub children: Vec<(String, Child)>,
}

/// Whether BIRD 2 is installed (`bird` and `birdc`).
pub fn has_bird() -> bool {
    Command::new("bird")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
        && Path::new("/usr/sbin/birdc").exists()
}

impl BgpLab {
    /// Builds the namespaces and links and starts the router's BIRD and the backends;
    /// `None` (after saying why) when the test cannot run here. `bfd` lists the nodes
    /// whose session the router also watches with BFD (100 ms × 3).
    pub fn new(dir: &Path, bfd: &[u32]) -> Option<BgpLab> {
        if !crate::can_run(has_bird(), "BIRD 2 is not installed (apt-get install bird2)") {
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let tag = format!("{}{}", std::process::id() % 10000, N.fetch_add(1, Ordering::Relaxed));
        let mut lab = BgpLab {
            tag,
            dir: dir.to_path_buf(),
            children: Vec::new(),
        };
        if !crate::can_run(
            ip(&["netns", "add", &lab.ns("r")]),
            "network namespaces cannot be created here (needs root / CAP_NET_ADMIN)",
        ) {
            return None;
        }
        let r = lab.ns("r");
        for n in ["c", "s", "n1", "n2", "n3"] {
            assert!(ip(&["netns", "add", &lab.ns(n)]));
        }
        lab.sysctl("r", "net.ipv4.ip_forward=1");
        // Flows, not hosts, are spread: the 5-tuple decides the next hop.
        lab.sysctl("r", "net.ipv4.fib_multipath_hash_policy=1");
        let mut links = vec![("c", "10.66.100".to_string()), ("s", "10.66.200".to_string())];
        for k in 1..=3 {
            links.push((["n1", "n2", "n3"][k - 1], format!("10.66.{k}")));
        }
        for (n, net) in &links {
            let ns = lab.ns(n);
            assert!(ip(&[
                "-n", &r, "link", "add", n, "type", "veth", "peer", "name", "eth0", "netns", &ns
            ]));
            assert!(ip(&["-n", &r, "addr", "add", &format!("{net}.1/24"), "dev", n]));
            assert!(ip(&["-n", &r, "link", "set", n, "up"]));
            assert!(ip(&["-n", &ns, "addr", "add", &format!("{net}.2/24"), "dev", "eth0"]));
            assert!(ip(&["-n", &ns, "link", "set", "eth0", "up"]));
            assert!(ip(&["-n", &ns, "link", "set", "lo", "up"]));
            assert!(ip(&["-n", &ns, "route", "add", "default", "via", &format!("{net}.1")]));
        }
        assert!(ip(&["-n", &r, "link", "set", "lo", "up"]));
        lab.router_bird(bfd);
        lab.spawn_tandem(
            "s",
            "backends",
            &[
                "backend",
                "b1=10.66.200.2:9101",
                "b2=10.66.200.2:9102",
                "b3=10.66.200.2:9103",
                "b4=10.66.200.2:9104",
            ],
        );
        Some(lab)
    }

    /// The name of namespace `n` (r, c, s, n1, n2, n3) of this lab.
    pub fn ns(&self, n: &str) -> String {
        format!("tdb{n}{}", self.tag)
    }

    fn sysctl(&self, n: &str, kv: &str) {
        let ok = Command::new("ip")
            .args(["netns", "exec", &self.ns(n), "sysctl", "-qw", kv])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "sysctl {kv} in {n}");
    }

    fn router_bird(&mut self, bfd: &[u32]) {
        let mut conf = String::from(
            "router id 10.66.0.254;\nprotocol device { scan time 1; }\n\
             protocol kernel { ipv4 { import none; export all; }; merge paths on; }\n\
             protocol bfd { interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }\n\
             template bgp tier { local as 65000; hold time 3; keepalive time 1; connect retry time 1; error wait time 1, 5; ipv4 { import all; export none; }; }\n",
        );
        for k in 1..=3u32 {
            let with_bfd = if bfd.contains(&k) { " bfd on;" } else { "" };
            conf.push_str(&format!(
                "protocol bgp n{k} from tier {{ neighbor 10.66.{k}.2 as 65001;{with_bfd} }}\n"
            ));
        }
        self.start_bird("r", &conf);
    }

    fn start_bird(&mut self, n: &str, conf: &str) {
        let path = self.dir.join(format!("bird-{n}.conf"));
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(n), "bird", "-f", "-c"])
            .arg(&path)
            .arg("-s")
            .arg(self.bird_socket(n))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.children.push((format!("bird-{n}"), child));
    }

    /// BIRD's control socket for namespace `n`.
    pub fn bird_socket(&self, n: &str) -> PathBuf {
        self.dir.join(format!("bird-{n}.ctl"))
    }

    /// `birdc` in namespace `n`: its output.
    pub fn birdc(&self, n: &str, args: &[&str]) -> String {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(self.bird_socket(n))
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts node `k` (1–3): its BIRD (peering with the router, exporting only what
    /// Tandem's fragment holds; BFD when `bfd`) and Tandem with `anycast_extra` keys for
    /// its `[[anycast]]` (replacing the defaults `track_clusters = ["app"]` and
    /// `hold_down = "1s"` when it names them) and `more` appended to its configuration.
    pub fn start_node(&mut self, k: u32, bfd: bool, anycast_extra: &str, more: &str) {
        let n = format!("n{k}");
        let fragment = self.dir.join(format!("{n}-anycast.conf"));
        if !self.children.iter().any(|(l, _)| l == &format!("bird-{n}")) {
            // BIRD reads the fragment at start: it exists (empty) before Tandem writes it.
            std::fs::write(&fragment, "").unwrap();
            let bfd_proto = if bfd {
                "protocol bfd { interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }\n"
            } else {
                ""
            };
            let conf = format!(
                "router id 10.66.{k}.2;\nprotocol device {{ scan time 1; }}\ninclude \"{}\";\n{bfd_proto}\
                 protocol bgp uplink {{ local as 65001; neighbor 10.66.{k}.1 as 65000; hold time 3; keepalive time 1; connect retry time 1; error wait time 1, 5;{} \
                 ipv4 {{ import none; export where proto = \"tandem_anycast\"; }}; }}\n",
                fragment.display(),
                if bfd { " bfd on;" } else { "" }
            );
            self.start_bird(&n, &conf);
        }
        // Defaults the extra keys may replace.
        let mut defaults = String::new();
        for (key, line) in [
            ("track_clusters", "track_clusters = [\"app\"]\n"),
            ("hold_down", "hold_down = \"1s\"\n"),
        ] {
            if !anycast_extra.contains(key) {
                defaults.push_str(line);
            }
        }
        let config = format!(
            "[server]\nworkers = 1\ndrain_timeout = \"2s\"\nmaintenance_handover = \"1s\"\n\
             [admin]\nlisten = \"127.0.0.1:9900\"\n[log]\nlevel = \"warn\"\n\
             [[listener]]\nname = \"web\"\nlisten = \"0.0.0.0:8080\"\n\
             [[cluster]]\nname = \"app\"\nbalancer = \"maglev\"\nhash_on = \"header:x-session\"\n\
             endpoints = [{{ address = \"10.66.200.2:9101\" }}, {{ address = \"10.66.200.2:9102\" }}, {{ address = \"10.66.200.2:9103\" }}, {{ address = \"10.66.200.2:9104\" }}]\n\
             [[route]]\nname = \"all\"\ncluster = \"app\"\n\
             [bgp]\nfragment = \"{}\"\ncontrol_socket = \"{}\"\n\
             [[anycast]]\nname = \"web\"\naddresses = [\"{ANYCAST}/32\"]\n{defaults}{anycast_extra}\n{more}\n",
            fragment.display(),
            self.bird_socket(&n).display(),
        );
        let path = self.dir.join(format!("{n}.toml"));
        std::fs::write(&path, config).unwrap();
        self.spawn_tandem(&n, &format!("node-{n}"), &["run", "-c", path.to_str().unwrap()]);
    }

    /// The `[ha]` section of node `k`: the three nodes are the voters of one Raft
    /// group (peer traffic on port 7946, routed through the router), with lab
    /// certificates in the lab's directory.
    pub fn ha_section(&self, k: u32) -> String {
        let certs = self.dir.join("certs");
        if !certs.join("ca.pem").exists() {
            assert!(Command::new(crate::tandem_bin())
                .args(["ctl", "cluster", "certs", "--members", "n1,n2,n3", "--out"])
                .arg(&certs)
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success());
        }
        format!(
            "[ha]\nnode_id = {k}\ndata_dir = \"{}\"\ntls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}\n\
             peers = [{{ id = 1, address = \"10.66.1.2:7946\" }}, {{ id = 2, address = \"10.66.2.2:7946\" }}, {{ id = 3, address = \"10.66.3.2:7946\" }}]\n",
            self.dir.join(format!("ha-n{k}")).display(),
            certs.join("ca.pem").display(),
            certs.join(format!("n{k}.pem")).display(),
            certs.join(format!("n{k}.key")).display(),
        )
    }

    /// Starts `tandem ARGS` in namespace `n`.
    pub fn spawn_tandem(&mut self, n: &str, label: &str, args: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(n)])
            .arg(crate::tandem_bin())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.children.push((label.to_string(), child));
    }

    /// kill -9 of `label` (what a crash leaves).
    pub fn kill9(&mut self, label: &str) {
        let i = self.children.iter().position(|(l, _)| l == label).unwrap();
        let (_, mut c) = self.children.remove(i);
        let _ = Command::new("kill").args(["-9", &c.id().to_string()]).status();
        let _ = c.wait();
    }

    /// The next hops the router's kernel uses for the anycast address (node numbers).
    pub fn next_hops(&self) -> Vec<u32> {
        let out = Command::new("ip")
            .args(["-n", &self.ns("r"), "route", "show", &format!("{ANYCAST}/32")])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut hops: Vec<u32> = (1..=3u32)
            .filter(|k| text.contains(&format!("via 10.66.{k}.2 ")))
            .collect();
        hops.sort_unstable();
        hops
    }

    /// Waits until the router routes the anycast address over exactly `want`; how long
    /// that took.
    pub fn wait_next_hops(&self, want: &[u32], limit: Duration) -> Duration {
        let t = Instant::now();
        loop {
            if self.next_hops() == want {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < limit,
                "router's next hops for {ANYCAST} are {:?}, not {want:?}, after {limit:?}:\n{}",
                self.next_hops(),
                self.birdc("r", &["show", "protocols"])
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `tandem ctl --json ARGS` against node `n`'s admin API.
    pub fn ctl(&self, n: &str, args: &[&str]) -> serde_json::Value {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(n)])
            .arg(crate::tandem_bin())
            .args(["ctl", "--json", "--admin", "127.0.0.1:9900"])
            .args(args)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Cuts node `n` off silently (every packet on its link dropped, no link-down the
    /// router could see): what a node that lost power or hung looks like to the router.
    pub fn silence(&self, n: &str, on: bool) {
        if on {
            self.nft(
                n,
                "table inet tandem_lab_silence {\n chain i { type filter hook input priority -10; iifname \"eth0\" drop; }\n chain o { type filter hook output priority -10; oifname \"eth0\" drop; }\n}\n",
            );
        } else {
            self.nft(n, "delete table inet tandem_lab_silence\n");
        }
    }

    /// Runs an nft script in namespace `n`.
    pub fn nft(&self, n: &str, script: &str) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(n), "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft runs (apt-get install nftables)");
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "nft in {n}: {script}");
    }

    /// Runs `f` on a new thread inside namespace `n` (its sockets live there).
    pub fn thread_in<T: Send + 'static>(
        &self,
        n: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        crate::lab::thread_in_netns(&self.ns(n), f)
    }
}

impl Drop for BgpLab {
    fn drop(&mut self) {
        // Every process inside the namespaces at once (nodes, their guards, BIRDs).
        for n in ["n1", "n2", "n3", "s", "c", "r"] {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.ns(n)]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
        }
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in ["n1", "n2", "n3", "s", "c", "r"] {
            ip(&["netns", "del", &self.ns(n)]);
        }
    }
}
