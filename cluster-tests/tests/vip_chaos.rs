//! Chaos with floating VIPs, in network namespaces: a fenced pair (A priority 150, B 100)
//! and a witness, a seeded random sequence of kill -9 and restart of either proxy (the
//! systemd unit's `release-vips` runs after each kill, as `ExecStopPost` does), A↔B
//! partitions and heals, the witness cut off or killed, under steady traffic from a
//! client namespace. Checked throughout:
//!
//! - never two VIP holders: A's and B's interfaces are sampled every few milliseconds
//!   (A, B, A again: two holders only when B held it between two samples of A holding it);
//! - the VIP answers again within 5 s after every event;
//! - the cluster rate limit (200/s, cluster scope, 300/s offered to each proxy directly):
//!   what is admitted over every 5 s block (one starting each second) in which a proxy
//!   was in touch with a working group throughout (its `/cluster` `in_touch`, sampled
//!   every 100 ms, and in the second before) stays within ±5 % of it. Blocks with an
//!   election (after the witness, or a proxy that led, died or was cut off) are
//!   reported, not checked.
//!
//! A maintenance handover keeps the old holder's addresses 250 ms past its priority-0
//! advert on purpose (in-flight packets are answered); it is not part of this run.
//!
//! In the test command (60 s). Since a node counts itself out of touch while its own
//! changes wait for a commit and trusts its peers' counts only after half a second in
//! touch after a start, thirteen runs with different seeds stayed within ±5 % (worst
//! block +4.9 %) with no sample of two holders. On a failure the test prints when each
//! interface was sampled, both nodes' `/cluster` and `/status` and their log tails, or
//! per second what A and B admitted and how each saw the group. `cargo test --release
//! -p tandem-cluster-tests --test vip_chaos -- --nocapture` prints the figures;
//! `TANDEM_CHAOS_SECS=600` makes the long run, `TANDEM_CHAOS_SEED` replays a sequence.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_cluster_tests::lab::{Lab, VIP};
use tandem_cluster_tests::*;

/// The cluster-scope limit of route `limited`, per second.
const LIMIT: u64 = 200;
/// Requests per second offered to each proxy's own address (both above the limit, so a
/// proxy left alone still fills it).
const OFFERED: u64 = 300;
/// Length of the blocks the rate limit is checked over.
const BLOCK_MS: u64 = 5_000;
/// A block starts every this often.
const BLOCK_STEP_MS: u64 = 1_000;

/// Node `n`'s configuration: the lab's VIP setup, fenced by the group, plus listener
/// `direct` on every address (port 8081) whose route is rate limited for the pair.
fn config(lab: &Lab, dir: &std::path::Path, n: &str) -> String {
    let prio = if n == "a" { 150 } else { 100 };
    let more = format!(
        "[[listener]]\nname = \"direct\"\nlisten = \"0.0.0.0:8081\"\n\n\
         [[route]]\nname = \"limited\"\nlisteners = [\"direct\"]\ncluster = \"local\"\n\
         rate_limit = {{ requests = {LIMIT}, per = \"1s\", key = \"route\", scope = \"cluster\" }}\n\n{}",
        lab.ha_section(dir, n)
    );
    // At info, so the VIP router's transitions are in the logs a failure prints.
    Lab::node_config(prio, "", "listeners = [\"web\"]", "on_no_quorum = \"hold\"", &more)
        .replace("level = \"warn\"", "level = \"info\"")
}

fn start(lab: &mut Lab, dir: &std::path::Path, n: &str) {
    let c = config(lab, dir, n);
    lab.start_node(dir, n, &c);
}

/// Admissions (ms since `t0`, and 0 for A or 1 for B) of fixed-rate traffic to both
/// proxies' own addresses, from the client namespace, until `stop`.
fn rate_traffic(lab: &Lab, t0: Instant, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<(u64, u8)>> {
    lab.thread_in("c", move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for (which, node) in [(0u8, "10.77.0.1:8081"), (1, "10.77.0.2:8081")] {
                // Two connections per proxy, each half the offered rate.
                for _ in 0..2 {
                    let stop = stop.clone();
                    let addr: std::net::SocketAddr = node.parse().unwrap();
                    tasks.push(tokio::spawn(async move {
                        let mut admitted = Vec::new();
                        let mut tick = tokio::time::interval(Duration::from_secs_f64(2.0 / OFFERED as f64));
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        let mut client: Option<Client> = None;
                        while !stop.load(Relaxed) {
                            tick.tick().await;
                            if client.is_none() {
                                let c = tokio::time::timeout(Duration::from_millis(300), Client::connect(addr)).await;
                                match c {
                                    Ok(Ok(c)) => client = Some(c),
                                    _ => {
                                        tokio::time::sleep(Duration::from_millis(50)).await;
                                        continue;
                                    }
                                }
                            }
                            let c = client.as_mut().unwrap();
                            match tokio::time::timeout(Duration::from_secs(1), c.get("/", &[])).await {
                                Ok(Ok((200, _))) => admitted.push((t0.elapsed().as_millis() as u64, which)),
                                Ok(Ok(_)) => {}
                                _ => client = None,
                            }
                        }
                        admitted
                    }));
                }
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all.sort_unstable();
            all
        })
    })
}

/// One look at a node's view of the group: ms since the start, whether it was in touch
/// (`None`: its admin API did not answer), the leader it named.
type Sample = (u64, Option<bool>, Option<u64>);

/// Samples (ms since `t0`, whether node `n` is in touch with a working group: its
/// `in_touch`, the leader heard within three heartbeats; `None` when its admin API does
/// not answer: the process is down or starting; and the leader it names) every 100 ms
/// until `stop`.
fn quorum_samples(lab: &Lab, n: &str, t0: Instant, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Sample>> {
    lab.thread_in(n, move || {
        let admin: std::net::SocketAddr = "127.0.0.1:9900".parse().unwrap();
        let mut out = Vec::new();
        while !stop.load(Relaxed) {
            let v = tandem_proxy::control::ctl::call(admin, None, "GET", "/cluster")
                .ok()
                .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok());
            let q = v.as_ref().and_then(|v| v["in_touch"].as_bool());
            let leader = v.as_ref().and_then(|v| v["leader"].as_u64());
            out.push((t0.elapsed().as_millis() as u64, q, leader));
            std::thread::sleep(Duration::from_millis(100));
        }
        out
    })
}

/// Watches A's and B's interfaces until `stop`; returns (samples, moments two held the VIP).
/// The first time two held it, what both said about the group and their VIP (the
/// watch's diagnosis).
fn holder_watch(lab: &Lab, t0: Instant, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, Vec<u64>, String)> {
    let (a, b) = (lab.ns("a"), lab.ns("b"));
    let logs = lab.log_dir.clone();
    std::thread::spawn(move || {
        let tail = |label: &str| {
            let Some(d) = &logs else { return String::new() };
            let text = std::fs::read_to_string(d.join(format!("{label}.log"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().filter(|l| !l.contains("tandem_proxy::access")).collect();
            lines[lines.len().saturating_sub(25)..].join("\n")
        };
        let view = |ns: &str| {
            let mut out = String::new();
            for what in ["cluster", "status"] {
                let o = std::process::Command::new("ip")
                    .args(["netns", "exec", ns])
                    .arg(tandem_bin())
                    .args(["ctl", "--json", "--admin", "127.0.0.1:9900", what])
                    .output()
                    .unwrap();
                out.push_str(&String::from_utf8_lossy(&o.stdout));
                out.push('\n');
            }
            out
        };
        let mut diagnosis = String::new();
        let mut samples_at = String::new();
        let (na, nb) = (a.clone(), b.clone());
        let name = |ns: &String| {
            if *ns == na {
                "A"
            } else if *ns == nb {
                "B"
            } else {
                "?"
            }
        };
        let holds = |ns: &str| {
            let out = std::process::Command::new("ip")
                .args(["-n", ns, "-4", "addr", "show", "dev", "eth0"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains(&format!("{VIP}/"))
        };
        let (mut samples, mut both) = (0u64, Vec::new());
        let mut flip = false;
        while !stop.load(Relaxed) {
            // x, y, x: both held it at y's sample when x held it before and after.
            let (x, y) = if flip { (&b, &a) } else { (&a, &b) };
            flip = !flip;
            let wall = || chrono_like(std::time::SystemTime::now());
            let w1 = wall();
            if holds(x) && {
                let w2 = wall();
                holds(y) && {
                    let w3 = wall();
                    holds(x) && {
                        samples_at = format!("{} held at {w1} and {w3}, {} at {w2}", name(x), name(y));
                        true
                    }
                }
            } {
                both.push(t0.elapsed().as_millis() as u64);
                if diagnosis.is_empty() {
                    diagnosis = format!(
                        "{samples_at}\nA:\n{}\nB:\n{}\nA's log:\n{}\nB's log:\n{}",
                        view(&a),
                        view(&b),
                        tail("node-a"),
                        tail("node-b")
                    );
                }
            }
            samples += 1;
        }
        (samples, both, diagnosis)
    })
}

/// Wall-clock time of day as the nodes' logs print it (UTC, `HH:MM:SS.micros`).
fn chrono_like(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
    let s = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_micros()
    )
}

/// `TANDEM_CHAOS_SECS=600` makes the long form, `TANDEM_CHAOS_SEED=N` another sequence.
/// Seed 5352222 once showed two holders for ~14 ms: A's link to the witness still lagged
/// ~1 s after a witness cut had healed when an A↔B cut began, and A, hearing no member,
/// kept the VIPs past its lease while B and the witness granted it to B. A holder now
/// keeps the VIPs without a lease only when the others are known down (refused, and no
/// member's report heard them), never on silence.
#[test]
fn fenced_vips_never_have_two_holders_and_the_rate_limit_holds_under_chaos() {
    chaos(5.0);
}

/// One chaos run; rate-limit blocks must be within `tolerance` percent of the limit.
fn chaos(tolerance: f64) {
    let (secs, seed) = chaos_secs_and_seed(0x0051_ab1e);
    // Declared before the lab, so the processes stop before their data goes.
    let dir = tempfile::tempdir().unwrap();
    let Some(mut lab) = Lab::or_skip() else { return };
    let dir = dir.path();
    lab.log_dir = Some(dir.to_path_buf());
    lab.witness(dir);
    start(&mut lab, dir, "a");
    start(&mut lab, dir, "b");
    lab.wait_for("node-a", Duration::from_secs(15));

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = rate_traffic(&lab, t0, stop.clone());
    let quorum = [
        quorum_samples(&lab, "a", t0, stop.clone()),
        quorum_samples(&lab, "b", t0, stop.clone()),
    ];
    let holders = holder_watch(&lab, t0, stop.clone());

    let mut rng = fastrand::Rng::with_seed(seed);
    let mut events: Vec<(u64, String)> = Vec::new();
    let mut back = Vec::new();
    let end = t0 + Duration::from_secs(secs);
    std::thread::sleep(Duration::from_secs(3));
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(rng.u64(500..2000)));
        let at = t0.elapsed().as_millis() as u64;
        let outage = Duration::from_millis(rng.u64(500..3000));
        let event = match rng.u8(0..5) {
            0 | 1 => {
                let n = if rng.bool() { "a" } else { "b" };
                lab.kill9(&format!("node-{n}"));
                lab.release_vips(dir, n);
                std::thread::sleep(outage);
                start(&mut lab, dir, n);
                format!("kill -9 of {n}, back after {outage:?}")
            }
            2 => {
                lab.partition(true);
                std::thread::sleep(outage);
                lab.partition(false);
                format!("A↔B partition for {outage:?}")
            }
            3 => {
                lab.port_down("w", true);
                std::thread::sleep(outage);
                lab.port_down("w", false);
                format!("witness cut off for {outage:?}")
            }
            _ => {
                lab.kill9("witness");
                std::thread::sleep(outage);
                lab.witness(dir);
                format!("kill -9 of the witness, back after {outage:?}")
            }
        };
        // The VIP answers again (from whichever node holds it).
        let took = lab.wait_for("node-", Duration::from_secs(5));
        back.push(took);
        events.push((at, format!("{event}; VIP answered {took:?} after")));
    }
    // Everyone back, then the checks.
    lab.wait_for("node-a", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Relaxed);
    let admitted = traffic.join().unwrap();
    let [qa, qb] = quorum.map(|q| q.join().unwrap());
    let (samples, both, diagnosis) = holders.join().unwrap();
    let elapsed = t0.elapsed().as_millis() as u64;

    eprintln!("{} events in {secs} s (seed {seed}):", events.len());
    for (at, e) in &events {
        eprintln!("  {:>6.1} s  {e}", *at as f64 / 1000.0);
    }
    eprintln!(
        "VIP holders: {samples} samples of A and B, {} with two holders",
        both.len()
    );
    assert!(
        both.is_empty(),
        "two VIP holders at (ms) {both:?}; when it began:\n{diagnosis}"
    );

    // Rate: every full 5 s block after the first 3 s in which the group had a quorum
    // throughout: at every sample (and in the second before the block) some proxy was
    // in a quorum (a restarting proxy is not, while the other one is). Blocks with an
    // election, after the witness died or was cut off, are reported, not checked.
    let quorum_throughout = |from: u64, to: u64| {
        let mut by_time: std::collections::BTreeMap<u64, bool> = std::collections::BTreeMap::new();
        for (t, q, _) in qa.iter().chain(qb.iter()) {
            let slot = by_time.entry(*t / 100).or_insert(false);
            *slot |= *q == Some(true);
        }
        by_time
            .range((from.saturating_sub(1_000)) / 100..=to / 100)
            .all(|(_, any)| *any)
    };
    let mut checked = Vec::new();
    let mut worst: f64 = 0.0;
    let mut block = 3_000;
    // Blocks start every second (they overlap), so a quorate stretch of five seconds
    // between two witness events is checked wherever it falls.
    while block + BLOCK_MS <= elapsed.saturating_sub(500) {
        let n = admitted
            .iter()
            .filter(|(t, _)| (block..block + BLOCK_MS).contains(t))
            .count() as f64;
        let per_sec = n * 1000.0 / BLOCK_MS as f64;
        let quorate = quorum_throughout(block, block + BLOCK_MS);
        let dev = (per_sec - LIMIT as f64) / LIMIT as f64 * 100.0;
        eprintln!(
            "  {:>5.1}–{:>5.1} s: {per_sec:.1}/s admitted ({dev:+.1} %){}",
            block as f64 / 1000.0,
            (block + BLOCK_MS) as f64 / 1000.0,
            if quorate {
                ""
            } else {
                "  (no quorum for a while: not checked)"
            }
        );
        if quorate {
            worst = if dev.abs() > worst.abs() { dev } else { worst };
            checked.push((block, per_sec));
        }
        block += BLOCK_STEP_MS;
    }
    back.sort();
    eprintln!(
        "rate limit {LIMIT}/s: {} blocks checked, worst {worst:+.1} %; VIP back after events: median {:?} max {:?}",
        checked.len(),
        back[back.len() / 2],
        back[back.len() - 1]
    );
    // Witness events (two in five) each bring an election, so many blocks are not
    // checked; at least one must be.
    assert!(!checked.is_empty(), "no block in touch throughout to check");
    // Per second and node around a block out of bounds (what A and B each admitted).
    let per_second = |block: u64| {
        let mut out = String::new();
        for sec in (block / 1000).saturating_sub(2)..(block + BLOCK_MS) / 1000 + 2 {
            let count = |n: u8| admitted.iter().filter(|(t, w)| *w == n && *t / 1000 == sec).count();
            // In touch and the leader named, per 100 ms sample: "1" node 1 in touch,
            // "1?" naming node 1 out of touch, "-" not answering.
            let view = |q: &[Sample]| {
                q.iter()
                    .filter(|(t, _, _)| *t / 1000 == sec)
                    .map(|(_, touch, leader)| match (touch, leader) {
                        (None, _) => "-".to_string(),
                        (Some(true), Some(l)) => l.to_string(),
                        (Some(_), l) => format!("{}?", l.map_or("_".into(), |l| l.to_string())),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            out.push_str(&format!(
                "  {sec:>3} s: A {:>3} B {:>3}   A's view {}   B's view {}\n",
                count(0),
                count(1),
                view(&qa),
                view(&qb)
            ));
        }
        out
    };
    for (block, per_sec) in checked {
        assert!(
            (per_sec - LIMIT as f64).abs() <= LIMIT as f64 * tolerance / 100.0,
            "{per_sec:.1}/s admitted in the 5 s from {:.1} s (limit {LIMIT}/s); per second:\n{}",
            block as f64 / 1000.0,
            per_second(block)
        );
    }
}
