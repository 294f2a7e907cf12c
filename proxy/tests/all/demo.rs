//! `tandem demo`, the README's first command: the single proxy on loopback answers, and
//! where the machine allows network namespaces, the VIP pair (two nodes and a witness)
//! answers through its VIP, hands it over on maintenance and is torn down on stop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(ns: Option<&str>, url: &str) -> Option<String> {
    let mut cmd = match ns {
        Some(n) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", n, "curl"]);
            c
        }
        None => Command::new("curl"),
    };
    let out = cmd.args(["-sf", "--max-time", "1", url]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_for(ns: Option<&str>, url: &str, want: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Some(body) = get(ns, url).filter(|b| b.contains(want)) {
            return body;
        }
        assert!(
            start.elapsed() < limit,
            "{url} did not answer with {want} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_demo_serves_on_loopback_and_as_a_vip_pair() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_tandem"))
            .arg("demo")
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(None, "http://127.0.0.1:8080/", "backend", Duration::from_secs(20));
    let banner = || std::fs::read_to_string(log.path()).unwrap();
    let start = Instant::now();
    while !banner().contains("VIP pair") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no VIP pair line in the banner"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    if banner().contains("VIP pair: not started") {
        let why = banner()
            .lines()
            .find(|l| l.contains("not started"))
            .unwrap()
            .trim()
            .to_string();
        assert!(!crate::common::can_run(false, &format!("the demo's {why}")));
        return;
    }
    let vip = "http://10.99.0.100:8080/";
    wait_for(Some("tandem-demo-c"), vip, "-a", Duration::from_secs(20));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            "tandem-demo-a",
            env!("CARGO_BIN_EXE_tandem"),
            "ctl",
            "maintenance",
            "on",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("maintenance: yes") && said.contains("phase: handover"),
        "{said}"
    );
    wait_for(Some("tandem-demo-c"), vip, "-b", Duration::from_secs(5));

    // Ctrl-C: the demo stops its pair and removes the namespaces.
    let _ = Command::new("kill").args(["-INT", &demo.0.id().to_string()]).status();
    let start = Instant::now();
    while matches!(demo.0.try_wait(), Ok(None)) {
        assert!(start.elapsed() < Duration::from_secs(40), "the demo did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains("tandem-demo-"),
        "the demo left its namespaces behind"
    );
}
