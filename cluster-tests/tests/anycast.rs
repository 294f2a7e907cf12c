//! Anycast in real network namespaces (see [`tandem_cluster_tests::bgp_lab`]): three
//! Tandem nodes announce one service address through their BIRD to a router that
//! spreads flows over them by ECMP. Spread, planned withdrawal (maintenance), a crashed
//! proxy, a silent node (BGP hold timer vs BFD), a node joining, and hold-down against
//! flapping health. Figures are printed for the closing note.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_cluster_tests::bgp_lab::{BgpLab, ANYCAST};
use tandem_cluster_tests::Client;

/// One request a session made: when it started (since the traffic began), whether it
/// succeeded, and the backend that answered.
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    end: Duration,
    ok: bool,
    backend: String,
}

/// Keep-alive sessions in the client namespace, each sending `GET /` with its own
/// `x-session` every 20 ms over its own connection (reconnecting, as HTTP clients do,
/// when a kept-alive connection turns out to be gone).
struct Sessions {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Vec<Sample>>>>,
    thread: std::thread::JoinHandle<()>,
    t0: Instant,
}

impl Sessions {
    fn start(lab: &BgpLab, sessions: usize) -> Sessions {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(vec![Vec::new(); sessions]));
        let t0 = Instant::now();
        let (s, l) = (stop.clone(), log.clone());
        let thread = lab.thread_in("c", move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let target: SocketAddr = format!("{ANYCAST}:8080").parse().unwrap();
                let mut tasks = Vec::new();
                for i in 0..sessions {
                    let (stop, log) = (s.clone(), l.clone());
                    tasks.push(tokio::spawn(async move {
                        let key = format!("session-{i}");
                        let mut client: Option<Client> = None;
                        while !stop.load(Relaxed) {
                            let at = t0.elapsed();
                            let outcome = tokio::time::timeout(Duration::from_secs(2), async {
                                if client.is_none() {
                                    client = Some(Client::connect(target).await.map_err(|e| e.to_string())?);
                                }
                                client.as_mut().unwrap().get("/", &[("x-session", &key)]).await
                            })
                            .await;
                            let sample = match outcome {
                                Ok(Ok((200, body))) => Sample {
                                    at,
                                    end: t0.elapsed(),
                                    ok: true,
                                    backend: body.trim().to_string(),
                                },
                                other => {
                                    client = None;
                                    let _ = other;
                                    Sample {
                                        at,
                                        end: t0.elapsed(),
                                        ok: false,
                                        backend: String::new(),
                                    }
                                }
                            };
                            log.lock().unwrap()[i].push(sample);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        });
        Sessions { stop, log, thread, t0 }
    }

    /// Time since the traffic began.
    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    fn stop(self) -> Vec<Vec<Sample>> {
        self.stop.store(true, Relaxed);
        self.thread.join().unwrap();
        Arc::try_unwrap(self.log).unwrap().into_inner().unwrap()
    }
}

fn failures(log: &[Vec<Sample>], from: Duration) -> Vec<Duration> {
    let mut f: Vec<Duration> = log
        .iter()
        .flatten()
        .filter(|s| !s.ok && s.at >= from)
        .map(|s| s.at)
        .collect();
    f.sort();
    f
}

/// How long after `cut` the last disrupted request ended: one started in `[cut, to)`
/// that failed or took longer than 200 ms (a retransmitted SYN, a reset and retry, a
/// request stuck on a silent node). Zero when none was disrupted.
fn disrupted_for(log: &[Vec<Sample>], cut: Duration, to: Duration) -> Duration {
    log.iter()
        .flatten()
        .filter(|x| x.at >= cut && x.at < to && (!x.ok || x.end - x.at > Duration::from_millis(200)))
        .map(|x| x.end - cut)
        .max()
        .unwrap_or_default()
}

fn total(log: &[Vec<Sample>]) -> usize {
    log.iter().map(Vec::len).sum()
}

/// Each session's backend: the one that answered most of its requests.
fn backend_of(log: &[Vec<Sample>], from: Duration, to: Duration) -> Vec<Option<String>> {
    log.iter()
        .map(|s| {
            let mut n: HashMap<&str, usize> = HashMap::new();
            for x in s.iter().filter(|x| x.ok && x.at >= from && x.at < to) {
                *n.entry(&x.backend).or_default() += 1;
            }
            n.into_iter().max_by_key(|(_, c)| *c).map(|(b, _)| b.to_string())
        })
        .collect()
}

/// Requests each node's listener has answered.
fn served(lab: &BgpLab, n: &str) -> u64 {
    lab.ctl(n, &["status"])["listeners"][0]["requests"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn an_anycast_tier_spreads_drains_fails_over_and_holds_down() {
    let dir = tempfile::tempdir().unwrap();
    // The router watches n1 with BFD; n2 and n3 with the BGP hold timer (3 s) only.
    let Some(mut lab) = BgpLab::new(dir.path(), &[1]) else {
        return;
    };
    lab.start_node(1, true, "", "");
    lab.start_node(2, false, "", "");
    lab.start_node(3, false, "", "");
    let up = lab.wait_next_hops(&[1, 2, 3], Duration::from_secs(20));
    eprintln!("three nodes announced and routed by ECMP {up:?} after start");

    // Spread: 60 sessions over three nodes, and one backend per session whichever node
    // its flow lands on (the same maglev table on every node).
    let before: Vec<u64> = ["n1", "n2", "n3"].iter().map(|n| served(&lab, n)).collect();
    let traffic = Sessions::start(&lab, 60);
    std::thread::sleep(Duration::from_secs(3));
    let spread: Vec<u64> = ["n1", "n2", "n3"]
        .iter()
        .zip(&before)
        .map(|(n, b)| served(&lab, n) - b)
        .collect();
    let all: u64 = spread.iter().sum();
    eprintln!("spread over n1, n2, n3: {spread:?} of {all} requests");
    for (k, s) in spread.iter().enumerate() {
        assert!(
            *s * 10 > all,
            "node n{} served {s} of {all}: ECMP does not spread",
            k + 1
        );
    }

    // Planned withdrawal: maintenance on n2 drains its clients, then withdraws; no
    // request fails.
    let t_maint = traffic.now();
    let ns2 = lab.ns("n2");
    let waiting = std::thread::spawn(move || {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns2])
            .arg(tandem_cluster_tests::tandem_bin())
            .args([
                "ctl",
                "--admin",
                "127.0.0.1:9900",
                "maintenance",
                "on",
                "--wait",
                "--timeout",
                "10s",
            ])
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    });
    let took = lab.wait_next_hops(&[1, 3], Duration::from_secs(5));
    eprintln!("maintenance on n2: route withdrawn {took:?} after the command (1 s handover)");
    let (ok, said) = waiting.join().unwrap();
    assert!(
        ok && said.contains("no client connection left"),
        "ctl maintenance on --wait: {said}"
    );
    eprintln!(
        "`tandem ctl maintenance on --wait` said: {}",
        said.lines().last().unwrap_or("")
    );
    assert!(said.contains("phase: handover"), "{said}");
    std::thread::sleep(Duration::from_secs(1));
    let status = lab.ctl("n2", &["status"]);
    assert_eq!(status["anycast"]["groups"][0]["announced"], false, "{status}");
    assert_eq!(status["anycast"]["groups"][0]["reason"], "maintenance", "{status}");
    let page = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("n2"),
            "curl",
            "-s",
            "--max-time",
            "2",
            "http://127.0.0.1:9900/",
        ])
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&page.stdout);
    assert!(
        page.contains("<table id=anycast>") && page.contains("withdrawn</td><td>maintenance"),
        "status page: {page}"
    );
    let text = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.ns("n2")])
        .arg(tandem_cluster_tests::tandem_bin())
        .args(["ctl", "--admin", "127.0.0.1:9900", "status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("ANYCAST") && text.contains("maintenance"),
        "ctl status: {text}"
    );
    let during = served(&lab, "n2");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(served(&lab, "n2"), during, "a withdrawn node still gets requests");
    lab.ctl("n2", &["maintenance", "off"]);
    lab.wait_next_hops(&[1, 2, 3], Duration::from_secs(5));
    let t_back = traffic.now();
    std::thread::sleep(Duration::from_secs(1));
    let t_after_maint = traffic.now();

    // Crash of a proxy: kill -9 of Tandem on n3; its guard withdraws the route at once.
    let t_kill = traffic.now();
    lab.kill9("node-n3");
    let took_kill = lab.wait_next_hops(&[1, 2], Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(2));
    let t_after_kill = traffic.now();
    // The node comes back (joins): announced after its hold-down.
    lab.start_node(3, false, "", "");
    let took_join = lab.wait_next_hops(&[1, 2, 3], Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    let t_after_join = traffic.now();

    // A silent node: n1 (BFD) then n2 (hold timer 3 s).
    let t_silent_bfd = traffic.now();
    lab.silence("n1", true);
    let took_bfd = lab.wait_next_hops(&[2, 3], Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(2));
    let t_after_bfd = traffic.now();
    lab.silence("n1", false);
    lab.wait_next_hops(&[1, 2, 3], Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(1));
    let t_silent_hold = traffic.now();
    lab.silence("n2", true);
    let took_hold = lab.wait_next_hops(&[1, 3], Duration::from_secs(8));
    std::thread::sleep(Duration::from_secs(2));
    let t_after_hold = traffic.now();
    lab.silence("n2", false);
    let log = traffic.stop();

    let maint_failed = failures(&log, t_maint)
        .into_iter()
        .filter(|t| *t < t_after_maint)
        .count();
    let maint_disrupted = disrupted_for(&log, t_maint, t_after_maint);
    let kill_failed: Vec<Duration> = failures(&log, t_kill)
        .into_iter()
        .filter(|t| *t < t_after_kill)
        .collect();
    let join_failed = failures(&log, t_after_kill)
        .into_iter()
        .filter(|t| *t < t_after_join)
        .count();
    let bfd_failed: Vec<Duration> = failures(&log, t_silent_bfd)
        .into_iter()
        .filter(|t| *t < t_after_bfd)
        .collect();
    let hold_failed: Vec<Duration> = failures(&log, t_silent_hold)
        .into_iter()
        .filter(|t| *t < t_after_hold)
        .collect();
    eprintln!("{} requests in all", total(&log));
    eprintln!(
        "maintenance on n2: {maint_failed} failed requests; the last disrupted request ended {maint_disrupted:?} after the command"
    );
    eprintln!(
        "kill -9 of Tandem on n3: route withdrawn after {took_kill:?}; {} failed requests; the last disrupted request ended {:?} after the kill",
        kill_failed.len(),
        disrupted_for(&log, t_kill, t_after_kill)
    );
    eprintln!("n3 rejoined: announced after {took_join:?}; {join_failed} failed requests");
    eprintln!(
        "silent node with BFD (100 ms × 3): route gone after {took_bfd:?}; {} failed requests; the last disrupted request ended {:?} after the cut",
        bfd_failed.len(),
        disrupted_for(&log, t_silent_bfd, t_after_bfd)
    );
    eprintln!(
        "silent node with the BGP hold timer (3 s): route gone after {took_hold:?}; {} failed requests; the last disrupted request ended {:?} after the cut",
        hold_failed.len(),
        disrupted_for(&log, t_silent_hold, t_after_hold)
    );
    // Sessions that keep their backend across the join and each failover.
    let base = backend_of(&log, Duration::ZERO, t_maint);
    for (what, from, to) in [
        ("n2 back from maintenance", t_back, t_after_maint),
        ("n3 gone", t_kill + Duration::from_millis(500), t_after_kill),
        ("n3 joined", t_after_join - Duration::from_secs(1), t_after_join),
        ("n1 silent", t_after_bfd - Duration::from_secs(1), t_after_bfd),
    ] {
        let now = backend_of(&log, from, to);
        let kept = base.iter().zip(&now).filter(|(a, b)| a.is_some() && a == b).count();
        eprintln!("{what}: {kept} of {} sessions kept their backend", base.len());
        assert!(
            kept * 100 >= base.len() * 99,
            "{what}: only {kept} of {} sessions kept their backend",
            base.len()
        );
    }

    assert_eq!(maint_failed, 0, "a planned withdrawal failed requests");
    assert!(
        took_kill < Duration::from_secs(1),
        "a crashed proxy's route lingered {took_kill:?}"
    );
    assert!(took_bfd < Duration::from_secs(1), "BFD took {took_bfd:?}");
    assert_eq!(join_failed, 0, "a node joining failed requests");
}

#[test]
fn flapping_health_does_not_flap_the_route() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut lab) = BgpLab::new(dir.path(), &[]) else {
        return;
    };
    // n1 also tracks a canary backend in its namespace, checked every 100 ms; its route
    // is announced only after 2 s of health.
    lab.spawn_tandem("n1", "canary", &["backend", "canary=127.0.0.1:9201"]);
    lab.start_node(
        1,
        false,
        "track_clusters = [\"app\", \"canary\"]\nhold_down = \"2s\"",
        "[[cluster]]\nname = \"canary\"\nendpoints = [{ address = \"127.0.0.1:9201\" }]\n\
         health_check = { kind = \"tcp\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1 }\n",
    );
    lab.start_node(2, false, "", "");
    lab.wait_next_hops(&[1, 2], Duration::from_secs(20));
    let changes = |lab: &BgpLab| {
        let g = lab.ctl("n1", &["status"])["anycast"]["groups"][0].clone();
        (g["announcements"].as_u64().unwrap(), g["withdrawals"].as_u64().unwrap())
    };
    let (a0, w0) = changes(&lab);
    // The canary fails and recovers every 300 ms for 5 s.
    lab.nft(
        "n1",
        "table inet flap {\n chain o { type filter hook output priority 0; }\n}\n",
    );
    let mut hop_changes = 0;
    let mut last = lab.next_hops();
    let t = Instant::now();
    let mut failing = false;
    let mut toggled = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if toggled.elapsed() >= Duration::from_millis(300) {
            failing = !failing;
            toggled = Instant::now();
            if failing {
                lab.nft("n1", "add rule inet flap o tcp dport 9201 reject with tcp reset\n");
            } else {
                lab.nft("n1", "flush chain inet flap o\n");
            }
        }
        let hops = lab.next_hops();
        if hops != last {
            hop_changes += 1;
            last = hops;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    lab.nft("n1", "flush chain inet flap o\n");
    let (a1, w1) = changes(&lab);
    eprintln!(
        "5 s of canary health flapping every 300 ms: {} withdrawal(s), {} announcement(s), {hop_changes} change(s) of the router's next hops",
        w1 - w0,
        a1 - a0
    );
    assert_eq!(w1 - w0, 1, "one withdrawal for the whole flapping");
    assert_eq!(a1 - a0, 0, "no announcement while it flaps");
    assert!(hop_changes <= 1, "the router's route changed {hop_changes} times");
    // Stable again: announced after the hold-down.
    let back = lab.wait_next_hops(&[1, 2], Duration::from_secs(6));
    eprintln!("canary steady again: re-announced after {back:?} (hold-down 2 s)");
    assert!(
        back >= Duration::from_millis(1800),
        "announced before the hold-down: {back:?}"
    );
}

#[test]
fn the_shipped_bird_configurations_parse() {
    if !tandem_cluster_tests::can_run(
        tandem_cluster_tests::bgp_lab::has_bird(),
        "BIRD 2 is not installed (apt-get install bird2)",
    ) {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/anycast");
    let dir = tempfile::tempdir().unwrap();
    let fragment = dir.path().join("fragment.conf");
    // What Tandem writes while announcing: it must parse inside the node's file, and the
    // shipped example shows exactly that.
    let written =
        tandem_proxy::cluster::anycast::bird::fragment("tandem_anycast", &[("10.99.1.10".parse().unwrap(), 32)]);
    assert_eq!(
        written,
        std::fs::read_to_string(root.join("tandem-anycast.conf.example")).unwrap()
    );
    std::fs::write(&fragment, written).unwrap();
    for name in [
        "bird-node1.conf",
        "bird-node2.conf",
        "bird-node3.conf",
        "bird-router.conf",
    ] {
        let text = std::fs::read_to_string(root.join(name)).unwrap();
        let conf = dir.path().join(name);
        std::fs::write(
            &conf,
            text.replace("/etc/bird/tandem-anycast.conf", fragment.to_str().unwrap()),
        )
        .unwrap();
        let out = std::process::Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&conf)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn a_node_that_loses_its_quorum_withdraws() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut lab) = BgpLab::new(dir.path(), &[]) else {
        return;
    };
    for k in 1..=3 {
        let ha = lab.ha_section(k);
        lab.start_node(k, false, "withdraw_on_no_quorum = true", &ha);
    }
    let up = lab.wait_next_hops(&[1, 2, 3], Duration::from_secs(30));
    eprintln!("three members of one group announced after {up:?}");
    // n1 is cut from the group's peer traffic only: it still serves and still peers with
    // the router, but it cannot tell whether its shared state is current.
    lab.nft(
        "n1",
        "table inet cut {\n chain i { type filter hook input priority -10; tcp dport 7946 drop; tcp sport 7946 drop; }\n chain o { type filter hook output priority -10; tcp dport 7946 drop; tcp sport 7946 drop; }\n}\n",
    );
    let withdrawals = |lab: &BgpLab, n: &str| lab.ctl(n, &["status"])["anycast"]["groups"][0]["withdrawals"].as_u64();
    let t = Instant::now();
    lab.wait_next_hops(&[2, 3], Duration::from_secs(15));
    let took = t.elapsed();
    let g = lab.ctl("n1", &["status"])["anycast"]["groups"][0].clone();
    assert_eq!(g["reason"], "no quorum", "{g}");
    eprintln!("n1 cut from its group: route withdrawn after {took:?}; n2 and n3 (a quorum) keep theirs");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lab.next_hops(), vec![2, 3], "the members with a quorum stay announced");
    // Not even for a moment while they elected a new leader.
    assert_eq!(withdrawals(&lab, "n2"), Some(0));
    assert_eq!(withdrawals(&lab, "n3"), Some(0));
    lab.nft("n1", "delete table inet cut\n");
    let back = lab.wait_next_hops(&[1, 2, 3], Duration::from_secs(20));
    eprintln!("n1 back in touch: announced again after {back:?}");
}
