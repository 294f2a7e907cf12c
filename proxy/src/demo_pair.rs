//! The VIP part of `tandem demo`: where the machine allows it (root, `ip netns`), two
//! Tandem nodes and a witness in their own network namespaces on one bridge, sharing a
//! floating VIP fenced through their Raft group, and a client namespace to reach it from.
//! Each node runs its own demo backends, named after the node, so the answer shows which
//! node holds the VIP. Everything is torn down when the demo stops.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Namespace name prefix (`tandem-demo-sw`, `-a`, `-b`, `-w`, `-c`).
pub const NS_PREFIX: &str = "tandem-demo-";
/// The demo VIP.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 100);

const MEMBERS: [(&str, &str, u32); 3] = [("a", "10.99.0.1", 150), ("b", "10.99.0.2", 100), ("w", "10.99.0.3", 0)];

/// Why the VIP pair is not part of this demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoPairError {
    /// Not root, or network namespaces cannot be created here.
    #[error("needs root and network namespaces (`ip netns add` failed: {0})")]
    NoNamespaces(String),
    /// A step of the setup failed.
    #[error("{0}")]
    Setup(String),
}

/// The running pair; dropping it stops the processes and removes the namespaces.
pub struct DemoPair {
    /// Where configurations, certificates and logs are.
    pub dir: PathBuf,
    children: Vec<Child>,
}

fn ns(n: &str) -> String {
    format!("{NS_PREFIX}{n}")
}

fn ip(args: &[&str]) -> Result<(), DemoPairError> {
    let out = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .output()
        .map_err(|e| DemoPairError::Setup(format!("ip: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DemoPairError::Setup(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Kills whatever runs in the demo namespaces and removes them (left by a killed demo).
fn clean() {
    for n in ["a", "b", "w", "c", "sw"] {
        let name = ns(n);
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
    }
}

impl DemoPair {
    /// Builds the namespaces and starts backends, nodes and the witness.
    pub fn start() -> Result<DemoPair, DemoPairError> {
        clean();
        let probe = Command::new("ip")
            .args(["netns", "add", &ns("sw")])
            .output()
            .map_err(|e| DemoPairError::NoNamespaces(e.to_string()))?;
        if !probe.status.success() {
            return Err(DemoPairError::NoNamespaces(
                String::from_utf8_lossy(&probe.stderr).trim().to_string(),
            ));
        }
        let dir = std::env::temp_dir().join(format!("tandem-demo-{}", std::process::id()));
        let mut pair = DemoPair {
            dir: dir.clone(),
            children: Vec::new(),
        };
        std::fs::create_dir_all(&dir).map_err(|e| DemoPairError::Setup(format!("{}: {e}", dir.display())))?;
        let sw = ns("sw");
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        let hosts = MEMBERS.iter().map(|(n, a, _)| (*n, *a)).chain([("c", "10.99.0.10")]);
        for (n, addr) in hosts {
            let name = ns(n);
            let port = format!("p{n}");
            ip(&["netns", "add", &name])?;
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &name,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &name, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ip(&["-n", &name, "link", "set", "eth0", "up"])?;
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
        }
        crate::control::ctl::write_lab_certs(&dir.join("certs"), &["a".into(), "b".into(), "w".into()], &[], None)
            .map_err(|e| DemoPairError::Setup(format!("certificates: {e}")))?;
        for (n, _, prio) in MEMBERS {
            let cfg = dir.join(format!("{n}.toml"));
            let text = if n == "w" {
                format!("[log]\nlevel = \"warn\"\n{}", ha_section(&dir, n))
            } else {
                node_config(&dir, n, prio)
            };
            std::fs::write(&cfg, text).map_err(|e| DemoPairError::Setup(format!("{}: {e}", cfg.display())))?;
            if n == "w" {
                pair.spawn(n, "witness", &["witness", "-c", &cfg.display().to_string()])?;
            } else {
                let backends: Vec<String> = crate::demo::DEMO_BACKENDS
                    .iter()
                    .map(|(b, addr)| format!("{b}-{n}={addr}"))
                    .collect();
                let mut args = vec!["backend".to_string()];
                args.extend(backends);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                pair.spawn(n, &format!("backend-{n}"), &args)?;
                pair.spawn(n, &format!("node-{n}"), &["run", "-c", &cfg.display().to_string()])?;
            }
        }
        Ok(pair)
    }

    fn spawn(&mut self, n: &str, label: &str, args: &[&str]) -> Result<(), DemoPairError> {
        let exe = std::env::current_exe().map_err(|e| DemoPairError::Setup(e.to_string()))?;
        let log = std::fs::File::create(self.dir.join(format!("{label}.log")))
            .map_err(|e| DemoPairError::Setup(e.to_string()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns(n)])
            .arg(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| DemoPairError::Setup(format!("{label}: {e}")))?;
        self.children.push(child);
        Ok(())
    }

    /// Waits until the client namespace gets an answer through the VIP.
    pub fn wait_ready(limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            let ok = Command::new("ip")
                .args(["netns", "exec", &ns("c"), "curl", "-sf", "--max-time", "0.5"])
                .arg(format!("http://{VIP}:8080/"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// What to try, for the banner.
    pub fn banner(&self) -> String {
        let exe = std::env::current_exe().map_or_else(|_| "tandem".into(), |p| p.display().to_string());
        [
            "  VIP pair: nodes A (priority 150) and B (100) and a witness, each in a network".to_string(),
            format!(
                "            namespace {NS_PREFIX}a|b|w on one bridge, share {VIP} (VRRPv3 fenced by a Raft lease):"
            ),
            format!(
                "            ip netns exec {NS_PREFIX}c curl -s http://{VIP}:8080/   ('backend alpha-a': A holds it)"
            ),
            format!("            ip netns exec {NS_PREFIX}a {exe} ctl maintenance on    (A hands it to B: '…-b')"),
            format!("            ip netns exec {NS_PREFIX}a {exe} ctl maintenance off   (A takes it back)"),
            format!("            ip netns exec {NS_PREFIX}b {exe} ctl status            (VIP state, lease counters)"),
            format!("            configurations and logs: {}", self.dir.display()),
        ]
        .join("\n")
    }
}

impl Drop for DemoPair {
    fn drop(&mut self) {
        // SIGTERM first: the master releases its VIP with priority 0 and drains.
        for c in &self.children {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for c in &mut self.children {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        clean();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ha_section(dir: &Path, n: &str) -> String {
    let id = match n {
        "a" => 1,
        "b" => 2,
        _ => 3,
    };
    let certs = dir.join("certs");
    format!(
        "[ha]\nnode_id = {id}\ndata_dir = \"{}\"\ntls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}\n\
         peers = [{{ id = 1, address = \"10.99.0.1:7946\" }}, {{ id = 2, address = \"10.99.0.2:7946\" }}, {{ id = 3, address = \"10.99.0.3:7946\", witness = true }}]\n",
        dir.join(format!("ha-{n}")).display(),
        certs.join("ca.pem").display(),
        certs.join(format!("{n}.pem")).display(),
        certs.join(format!("{n}.key")).display(),
    )
}

fn node_config(dir: &Path, n: &str, prio: u32) -> String {
    let endpoints: Vec<String> = crate::demo::DEMO_BACKENDS
        .iter()
        .map(|(_, a)| format!("{{ address = \"{a}\" }}"))
        .collect();
    format!(
        "[server]\nworkers = 1\ndrain_timeout = \"2s\"\nmaintenance_handover = \"500ms\"\n\
         [log]\nlevel = \"warn\"\naccess_log = \"off\"\n\
         [[listener]]\nname = \"web\"\nlisten = \"{VIP}:8080\"\n\
         [[cluster]]\nname = \"demo\"\nendpoints = [{}]\n\
         health_check = {{ path = \"/healthz\", interval = \"1s\" }}\n\
         [[route]]\nname = \"all\"\ncluster = \"demo\"\n\
         [[vip]]\nname = \"web\"\ninterface = \"eth0\"\nvrid = 51\npriority = {prio}\naddresses = [\"{VIP}/24\"]\n\
         track_clusters = [\"demo\"]\n{}",
        endpoints.join(", "),
        ha_section(dir, n)
    )
}
