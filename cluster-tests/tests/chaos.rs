//! Chaos under steady traffic: a pair and a witness as real processes, and a seeded
//! random sequence of kill -9 and restart of any member, A↔B partitions and heals, and
//! witness isolation. Checked throughout: no request fails on a node that is serving;
//! after every heal or restart the sticky sessions agree through both proxies within a
//! second; nothing replicated is lost when every member restarts at the end.
//!
//! The default run lasts 60 s (part of the test command); `TANDEM_CHAOS_SECS=600` makes
//! the long run, `TANDEM_CHAOS_SEED` replays a sequence.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_cluster_tests::*;

fn spec() -> Spec {
    Spec {
        proxies: 2,
        witness: true,
        body: "[[cluster]]\nname = \"c\"\nbalancer = \"random\"\nendpoints = [{backends}]\n\
               sticky = { mode = \"learned\", on = \"header:x-session\", idle_timeout = \"10m\" }\n\n\
               [[route]]\nname = \"r\"\ncluster = \"c\"\n"
            .into(),
        // Snapshots often, so restarts and catch-ups go through them.
        ha_extra: "snapshot_every = 100\n".into(),
    }
}

/// Sessions the checks follow.
const WATCHED: u32 = 30;

/// How long until every watched session answers the same through both proxies.
async fn sessions_agree(c: &Cluster, within: Duration) -> Result<Duration, String> {
    let t = Instant::now();
    loop {
        let mut a = Client::connect(c.node(1).http).await.map_err(|e| e.to_string())?;
        let mut b = Client::connect(c.node(2).http).await.map_err(|e| e.to_string())?;
        let mut split = 0;
        for s in 0..WATCHED {
            let h = [("x-session", format!("s{s}"))];
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (x, y) = (a.get("/", &h).await?, b.get("/", &h).await?);
            if x.1 != y.1 {
                split += 1;
            }
        }
        if split == 0 {
            return Ok(t.elapsed());
        }
        if t.elapsed() > within {
            return Err(format!("{split}/{WATCHED} sessions split {within:?} after the event"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pair_survives_kills_restarts_and_partitions_under_traffic() {
    let (secs, seed) = chaos_secs_and_seed(0x007a_4de4);
    bounded(secs + 180, async {
        let mut c = Cluster::start(spec(), 3).await;
        let witness = c.witness.unwrap();
        let targets = Arc::new(Mutex::new(vec![c.node(1).http, c.node(2).http]));
        // New sessions appear throughout (2,000 keys), so bindings are made during every event.
        let traffic = Traffic::start(targets.clone(), 150, 2_000);
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut events = Vec::new();
        let mut worst = Duration::ZERO;
        let end = Instant::now() + Duration::from_secs(secs);
        sessions_agree(&c, Duration::from_secs(5)).await.unwrap();
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(rng.u64(300..1500))).await;
            let what = rng.u8(0..4);
            let event = match what {
                // kill -9 of a proxy (taken out of traffic first, as a front LB would),
                // back after a while.
                0 => {
                    let id = rng.u64(1..=2);
                    let addr = c.node(id).http;
                    targets.lock().unwrap().retain(|a| *a != addr);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    c.node_mut(id).kill();
                    tokio::time::sleep(Duration::from_millis(rng.u64(500..3000))).await;
                    c.node_mut(id).start();
                    targets.lock().unwrap().push(addr);
                    format!("kill -9 and restart of proxy {id}")
                }
                // An A↔B partition (both still reach the witness), then the heal.
                1 => {
                    c.partition(1, 2);
                    tokio::time::sleep(Duration::from_millis(rng.u64(500..3000))).await;
                    c.heal(1, 2);
                    "A↔B partition and heal".to_string()
                }
                // The witness is cut off from both, then back.
                2 => {
                    c.isolate(witness);
                    tokio::time::sleep(Duration::from_millis(rng.u64(500..3000))).await;
                    c.heal_all();
                    "witness isolated and back".to_string()
                }
                // The witness dies and restarts.
                _ => {
                    c.node_mut(witness).kill();
                    tokio::time::sleep(Duration::from_millis(rng.u64(500..3000))).await;
                    c.node_mut(witness).start();
                    "witness kill -9 and restart".to_string()
                }
            };
            // After every event: one truth for the sessions within a second of the group
            // having a leader again.
            c.wait_for_leader(Duration::from_secs(10)).await;
            let took = sessions_agree(&c, Duration::from_secs(1))
                .await
                .unwrap_or_else(|e| panic!("after {event}: {e}"));
            worst = worst.max(took);
            events.push(format!("{event}: sessions agreed in {took:?}"));
        }
        let (ok, failed, failures) = traffic.stop().await;
        eprintln!(
            "{} events in {secs} s (seed {seed}):\n  {}",
            events.len(),
            events.join("\n  ")
        );
        eprintln!("traffic: {ok} ok, {failed} failed; slowest convergence {worst:?}");
        assert_eq!(failed, 0, "{failures:?}");

        // Every member restarts: what was replicated is all still there.
        let tables_before = c.node(1).view()["tables"].clone();
        for id in 1..=witness {
            c.node_mut(id).kill();
        }
        for id in 1..=witness {
            c.node_mut(id).start();
        }
        c.wait_for_leader(Duration::from_secs(20)).await;
        // A member that restarted behind the others catches up from the leader first.
        for id in 1..=witness {
            let t = Instant::now();
            let mut got = c.node(id).view()["tables"].clone();
            while got["sticky"] != tables_before["sticky"] && t.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                got = c.node(id).view()["tables"].clone();
            }
            assert_eq!(
                got["sticky"], tables_before["sticky"],
                "node {id} after the full restart"
            );
        }
        sessions_agree(&c, Duration::from_secs(2)).await.unwrap();
    })
    .await;
}
