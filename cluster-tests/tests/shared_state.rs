//! The pair's shared state under routine operations, with real processes on loopback:
//! a gray backend ejected together, partitions that heal within a second, sticky
//! sessions with one truth across restarts and concurrent first requests, and members
//! added, removed and replaced under load.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_cluster_tests::*;

/// Three demo backends, learned stickiness on `x-session`, passive ejection after three
/// 5xx in a row (one endpoint at most).
fn body() -> String {
    "[[cluster]]\nname = \"c\"\nbalancer = \"random\"\nendpoints = [{backends}]\n\
     sticky = { mode = \"learned\", on = \"header:x-session\", idle_timeout = \"10m\" }\n\
     outlier_detection = { consecutive_5xx = 3, consecutive_gateway_errors = 0, base_ejection_time = \"1s\", max_ejection_percent = 34 }\n\n\
     [[route]]\nname = \"r\"\ncluster = \"c\"\nretry_on = [\"5xx\"]\nmax_retries = 0\n"
        .to_string()
}

fn pair_with_witness() -> Spec {
    Spec {
        proxies: 2,
        witness: true,
        body: body(),
        ha_extra: String::new(),
    }
}

/// The state of `endpoint` in the first cluster of a proxy's /status.
fn state(n: &Node, endpoint: std::net::SocketAddr) -> String {
    let Some((_, s)) = n.get("/status") else {
        return "down".into();
    };
    let s: serde_json::Value = serde_json::from_str(&s).unwrap();
    s["clusters"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == endpoint.to_string())
        .map(|e| e["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outlier_ejected_by_one_node_is_honoured_by_the_other_within_200ms() {
    bounded(120, async {
        let c = Cluster::start(pair_with_witness(), 3).await;
        let mut lags = Vec::new();
        // Each backend in turn goes gray for real traffic that only A carries.
        for (trial, ep) in [0usize, 1, 2].into_iter().enumerate() {
            let gray = c.backends[ep].addr;
            c.backends[ep].set_status(503);
            let mut a = Client::connect(c.node(1).http).await.unwrap();
            let t = Instant::now();
            let mut i = 0;
            while state(c.node(1), gray) != "ejected" {
                i += 1;
                let _ = a.get("/", &[("x-trial", &format!("{trial}-{i}"))]).await;
                assert!(t.elapsed() < Duration::from_secs(10), "A never ejected backend {ep}");
            }
            let lag = eventually("B honours A's ejection", Duration::from_secs(2), || {
                state(c.node(2), gray) == "ejected"
            })
            .await;
            eprintln!("trial {trial}: B ejected the gray backend {lag:?} after A did");
            lags.push(lag);
            // B sends it nothing while the ejection lasts.
            let hits = || c.backends[ep].state.hits.load(std::sync::atomic::Ordering::Relaxed);
            let before = hits();
            let mut b = Client::connect(c.node(2).http).await.unwrap();
            for _ in 0..20 {
                assert_eq!(b.get("/", &[]).await.unwrap().0, 200);
            }
            assert_eq!(hits(), before, "B still sent requests to the ejected backend");
            // The backend recovers; the (short) ejection ends on both before the next.
            c.backends[ep].set_status(0);
            eventually("the ejection ends on both", Duration::from_secs(10), || {
                state(c.node(1), gray) != "ejected" && state(c.node(2), gray) != "ejected"
            })
            .await;
        }
        let worst = lags.iter().max().copied().unwrap_or_default();
        eprintln!("ejection shared in {lags:?} (worst {worst:?})");
        assert!(
            worst <= Duration::from_millis(200),
            "an ejection took {worst:?} to reach the peer"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_partition_heals_replication_is_back_within_a_second() {
    bounded(180, async {
        let c = Cluster::start(pair_with_witness(), 3).await;
        let mut heals = Vec::new();
        for trial in 0..10 {
            // Node 1 loses every link for 2 s while both proxies keep serving sessions.
            c.isolate(1);
            let mut a = Client::connect(c.node(1).http).await.unwrap();
            let (s, _) = a.get("/", &[("x-session", &format!("cut-{trial}"))]).await.unwrap();
            assert_eq!(s, 200, "A serves from its local view during the cut");
            tokio::time::sleep(Duration::from_secs(2)).await;
            c.heal_all();
            let healed = Instant::now();
            // A's binding made during the cut, and one made after the heal, are the same
            // through both nodes (one truth, whichever commit came first) and nothing of
            // A's is left pending: within a second.
            let key_cut = format!("cut-{trial}");
            let key_after = format!("after-{trial}");
            let _ = a.get("/", &[("x-session", &key_after)]).await.unwrap();
            let mut b = Client::connect(c.node(2).http).await.unwrap();
            let t = Instant::now();
            loop {
                let pending = c.node(1).view()["pending_changes"].as_u64().unwrap_or(1);
                let mut same = true;
                for k in [&key_cut, &key_after] {
                    let (_, x) = a.get("/", &[("x-session", k)]).await.unwrap();
                    let (_, y) = b.get("/", &[("x-session", k)]).await.unwrap();
                    same &= x == y;
                }
                if pending == 0 && same {
                    break;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(5),
                    "trial {trial}: no replication 5 s after the heal"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let took = healed.elapsed();
            eprintln!("trial {trial}: replication back {took:?} after the heal");
            heals.push(took);
        }
        heals.sort();
        eprintln!(
            "heal to replication: p50 {:?}, max {:?}",
            heals[heals.len() / 2],
            heals[heals.len() - 1]
        );
        assert!(heals[heals.len() - 1] <= Duration::from_secs(1), "{heals:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_sessions_have_one_truth_across_restarts_and_concurrent_first_requests() {
    bounded(180, async {
        let mut c = Cluster::start(pair_with_witness(), 3).await;
        // Concurrent first requests of 200 sessions through both nodes at once.
        let (a, b) = (c.node(1).http, c.node(2).http);
        let first = |addr, from: u32| async move {
            let mut cl = Client::connect(addr).await.unwrap();
            let mut out = Vec::new();
            for s in from..from + 200 {
                out.push(cl.get("/", &[("x-session", &format!("s{s}"))]).await.unwrap().1);
            }
            out
        };
        let (ra, rb) = tokio::join!(first(a, 0), first(b, 0));
        let split_at_once = ra.iter().zip(&rb).filter(|(x, y)| x != y).count();
        eprintln!("concurrent first requests: {split_at_once}/200 sessions answered by two backends at first");
        // Within one replication round every session has one backend through both.
        let t = Instant::now();
        let converged = loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (ra, rb) = tokio::join!(first(a, 0), first(b, 0));
            let split = ra.iter().zip(&rb).filter(|(x, y)| x != y).count();
            if split == 0 {
                break t.elapsed();
            }
            assert!(t.elapsed() < Duration::from_secs(3), "{split}/200 sessions still split after 3 s");
        };
        eprintln!("concurrent first requests converged within {converged:?}");

        // A restarted node serves at once, before it caught up; its view converges on
        // the committed bindings (new sessions were bound through A while it was away).
        c.node_mut(2).kill();
        let before = first(a, 200).await;
        c.node_mut(2).start();
        let restarted = Instant::now();
        let early = first(b, 200).await;
        let split_early = before.iter().zip(&early).filter(|(x, y)| x != y).count();
        let t = Instant::now();
        let after = loop {
            let rb = first(b, 200).await;
            let split = before.iter().zip(&rb).filter(|(x, y)| x != y).count();
            if split == 0 {
                break t.elapsed();
            }
            assert!(t.elapsed() < Duration::from_secs(5), "{split}/200 sessions split 5 s after the restart");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        eprintln!(
            "restarted B: {split_early}/200 new sessions answered elsewhere at first; all matched A's {after:?} later ({:?} after the restart)",
            restarted.elapsed()
        );
        // And they stay together, through both nodes.
        let (ra, rb) = tokio::join!(first(a, 200), first(b, 200));
        assert_eq!(ra, rb);
        assert_eq!(ra, before);
        assert!(after <= Duration::from_secs(2), "{after:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_removed_and_replaced_under_load() {
    bounded(240, async {
        let mut c = Cluster::start(pair_with_witness(), 3).await;
        let targets = Arc::new(Mutex::new(vec![c.node(1).http, c.node(2).http]));
        let traffic = Traffic::start(targets.clone(), 200, 50);
        tokio::time::sleep(Duration::from_secs(1)).await;

        // A third proxy joins (learner, then voter) and takes traffic.
        c.add_proxy(4, 1).await.expect("node 4 added");
        let voters = |n: &Node| -> Vec<u64> {
            n.view()["voters"]
                .as_array()
                .map(|v| v.iter().filter_map(|x| x.as_u64()).collect())
                .unwrap_or_default()
        };
        eventually("node 4 votes", Duration::from_secs(20), || {
            voters(c.node(1)) == vec![1, 2, 3, 4]
        })
        .await;
        targets.lock().unwrap().push(c.node(4).http);
        eventually("node 4 holds the tables", Duration::from_secs(10), || {
            c.node(4).view()["tables"]["sticky"].as_u64() == c.node(1).view()["tables"]["sticky"].as_u64()
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;

        // It leaves again: taken out of traffic first, then out of the group.
        targets.lock().unwrap().retain(|a| *a != c.node(4).http);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, body) = c.node(2).post("/cluster/remove?id=4").unwrap();
        assert_eq!(status, 200, "{body}");
        eventually("node 4 removed", Duration::from_secs(10), || {
            voters(c.node(1)) == vec![1, 2, 3]
        })
        .await;
        c.node_mut(4).kill();

        // Node 2's disk is wiped; it comes back as node 5 and replaces node 2.
        targets.lock().unwrap().retain(|a| *a != c.node(2).http);
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.node_mut(2).kill();
        c.node(2).wipe();
        c.add_proxy(5, 1).await.expect("node 5 added");
        let (status, body) = c.node(1).post("/cluster/remove?id=2").unwrap();
        assert_eq!(status, 200, "{body}");
        eventually("5 replaced 2", Duration::from_secs(20), || {
            voters(c.node(1)) == vec![1, 3, 5]
        })
        .await;
        targets.lock().unwrap().push(c.node(5).http);
        tokio::time::sleep(Duration::from_secs(2)).await;
        // State converges: node 5 holds what node 1 holds, and replicates.
        eventually("node 5's tables equal node 1's", Duration::from_secs(10), || {
            c.node(5).view()["tables"] == c.node(1).view()["tables"]
        })
        .await;
        let (ok, failed, failures) = traffic.stop().await;
        eprintln!("membership changes under load: {ok} requests ok, {failed} failed");
        assert_eq!(failed, 0, "{failures:?}");
        assert!(ok > 1000);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_down_for_several_snapshots_catches_up_under_traffic() {
    bounded(180, async {
        let mut spec = pair_with_witness();
        // Snapshots every 20 entries, so a member away for seconds is behind the log.
        spec.ha_extra = "snapshot_every = 20\n".into();
        let mut c = Cluster::start(spec, 3).await;
        let witness = c.witness.unwrap();
        let targets = Arc::new(Mutex::new(vec![c.node(1).http, c.node(2).http]));
        // New sessions all the time: every one is a binding to replicate.
        let traffic = Traffic::start(targets.clone(), 200, 1_000_000);
        // First a proxy, then the leader (the witness) is down for 4 s.
        for down in [2, witness] {
            let addr = c.node(down).http;
            targets.lock().unwrap().retain(|a| *a != addr);
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.node_mut(down).kill();
            let others: Vec<u64> = (1..=witness).filter(|i| *i != down).collect();
            let applied = |n: &Node| n.view()["last_applied"].as_u64().unwrap_or(0);
            let before: u64 = others.iter().map(|i| applied(c.node(*i))).max().unwrap();
            tokio::time::sleep(Duration::from_secs(4)).await;
            let during: u64 = others.iter().map(|i| applied(c.node(*i))).max().unwrap();
            assert!(
                during > before + 40,
                "the group kept replicating while {down} was down ({before} → {during})"
            );
            c.node_mut(down).start();
            if down != witness {
                targets.lock().unwrap().push(addr);
            }
            let t = Instant::now();
            eventually("the member caught up by snapshot", Duration::from_secs(15), || {
                let v = c.node(down).view();
                v["snapshots_installed"].as_u64().unwrap_or(0) >= 1 && applied(c.node(down)) >= during
            })
            .await;
            eprintln!(
                "member {down} caught up by snapshot {:?} after its restart",
                t.elapsed()
            );
        }
        let (ok, failed, failures) = traffic.stop().await;
        assert_eq!(failed, 0, "{failures:?}");
        // Quiet now: every member holds the same tables.
        eventually("equal tables everywhere", Duration::from_secs(10), || {
            let t1 = c.node(1).view()["tables"].clone();
            (2..=witness).all(|i| c.node(i).view()["tables"] == t1)
        })
        .await;
        eprintln!("{ok} requests during the catch-ups, none failed");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_returns_to_the_witness_after_it_was_away() {
    bounded(150, async {
        let mut c = Cluster::start(pair_with_witness(), 3).await;
        let witness = c.witness.unwrap();
        let targets = Arc::new(Mutex::new(vec![c.node(1).http, c.node(2).http]));
        let traffic = Traffic::start(targets.clone(), 200, 1_000_000);
        assert_eq!(c.wait_for_leader(Duration::from_secs(10)).await, witness);
        let term = |c: &Cluster| c.node(1).view()["term"].as_u64().unwrap_or(0);
        let mut took = Vec::new();
        for round in 0..4 {
            c.node_mut(witness).kill();
            eventually("a proxy leads", Duration::from_secs(10), || {
                let l = c.node(1).view()["leader"].as_u64();
                l.is_some() && l != Some(witness) && l == c.node(2).view()["leader"].as_u64()
            })
            .await;
            let proxy = c.node(1).view()["leader"].as_u64().unwrap();
            c.node_mut(witness).start();
            let before = term(&c);
            let t = Instant::now();
            eventually("the witness leads again", Duration::from_secs(15), || {
                c.nodes.iter().all(|n| n.view()["leader"].as_u64() == Some(witness))
            })
            .await;
            took.push(t.elapsed());
            eprintln!(
                "round {round}: proxy {proxy} led; the witness leads again {:?} after its restart (term {before} → {})",
                t.elapsed(),
                term(&c)
            );
        }
        let (ok, failed, failures) = traffic.stop().await;
        assert_eq!(failed, 0, "{failures:?}");
        eprintln!("{ok} requests, none failed; handbacks took {took:?}");
    })
    .await;
}
