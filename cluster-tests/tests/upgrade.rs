//! README's "Upgrading a pair", followed step by step under traffic: maintenance on, a
//! graceful stop and a start of the (new) binary, maintenance off, one node at a time,
//! the witness last. Clients follow the nodes that are ready, as a VIP would move.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_cluster_tests::*;

fn spec() -> Spec {
    Spec {
        proxies: 2,
        witness: true,
        body: "[[cluster]]\nname = \"c\"\nbalancer = \"random\"\nendpoints = [{backends}]\n\
               sticky = { mode = \"learned\", on = \"header:x-session\", idle_timeout = \"10m\" }\n\n\
               [[route]]\nname = \"r\"\ncluster = \"c\"\n"
            .into(),
        ha_extra: String::new(),
    }
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_is_upgraded_one_node_at_a_time_without_a_failed_request() {
    bounded(240, async {
        let mut c = Cluster::start(spec(), 3).await;
        let witness = c.witness.unwrap();
        let targets = Arc::new(Mutex::new(vec![c.node(1).http, c.node(2).http]));
        let traffic = Traffic::start(targets.clone(), 200, 100);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sticky = |n: &Node| n.view()["tables"]["sticky"].as_u64().unwrap_or(0);
        let bound = sticky(c.node(1));
        assert!(bound > 0, "no session bound yet");

        for id in [1u64, 2] {
            let other = 3 - id;
            // 1. Maintenance on: the node says it is handing over, then stops being ready.
            let (status, body) = c.node(id).post("/maintenance?on=1").unwrap();
            assert_eq!(status, 200, "{body}");
            assert_eq!(json(&body)["maintenance"], true, "{body}");
            eventually(
                "the node reports not ready in maintenance",
                Duration::from_secs(5),
                || matches!(c.node(id).get("/ready"), Some((503, _))),
            )
            .await;
            // Clients move to the other node (the VIP's move, here done by the client).
            let addr = c.node(id).http;
            targets.lock().unwrap().retain(|a| *a != addr);
            eventually("in-flight requests finish", Duration::from_secs(5), || {
                c.node(id)
                    .get("/status")
                    .map(|(_, b)| json(&b)["connections"].as_u64() == Some(0))
                    .unwrap_or(true)
            })
            .await;
            // 2. Upgrade: a graceful stop, the new binary starts.
            c.node_mut(id).stop();
            c.node_mut(id).start();
            eventually("the restarted node is ready", Duration::from_secs(15), || {
                matches!(c.node(id).get("/ready"), Some((200, _)))
            })
            .await;
            // It has caught up with the group's state.
            let took = eventually("the restarted node holds the tables", Duration::from_secs(10), || {
                let v = c.node(id).view();
                v["voters"].as_array().is_some_and(|m| m.len() == 3)
                    && v["leader"].is_u64()
                    && sticky(c.node(id)) >= sticky(c.node(other)).min(bound)
                    && sticky(c.node(id)) > 0
            })
            .await;
            eprintln!("node {id}: caught up {took:?} after its restart");
            // 3. Maintenance off (a restarted process starts out of maintenance; off is
            //    still what the procedure says and must be harmless).
            let (status, body) = c.node(id).post("/maintenance?on=0").unwrap();
            assert_eq!(status, 200, "{body}");
            assert_eq!(json(&body)["phase"], "serving", "{body}");
            targets.lock().unwrap().push(addr);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // 4. The witness last.
        c.node_mut(witness).stop();
        c.node_mut(witness).start();
        eventually(
            "the group has a leader and three voters again",
            Duration::from_secs(15),
            || {
                let v = c.node(1).view();
                v["leader"].is_u64() && v["voters"].as_array().is_some_and(|m| m.len() == 3) && v["quorum"] == true
            },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (ok, failed, failures) = traffic.stop().await;
        eprintln!("upgrade of the pair under 200 req/s: {ok} requests ok, {failed} failed");
        assert_eq!(failed, 0, "{failures:?}");
        assert!(ok > 500, "too little traffic to judge: {ok}");
        // The sessions bound before the upgrade are all still bound, on both nodes.
        eventually("both nodes hold the same tables", Duration::from_secs(5), || {
            c.node(1).view()["tables"] == c.node(2).view()["tables"]
        })
        .await;
        assert!(sticky(c.node(1)) >= bound);
    })
    .await;
}
