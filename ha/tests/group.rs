//! A three-member group (pair + witness) on loopback with mutual TLS: replication,
//! losing a member, restart and catch-up, persistence, and refusal of foreign peers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tandem_ha::{Change, HaConfig, HaNode, Peer, PeerTls};

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem: PathBuf,
}

fn ca(dir: &Path, name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let issuer = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let pem = dir.join(format!("{name}.pem"));
    std::fs::write(&pem, issuer.pem()).unwrap();
    Ca { issuer, pem }
}

fn node_tls(dir: &Path, ca: &Ca, file: &str) -> PeerTls {
    node_tls_named(dir, ca, file, &["tandem-peer"])
}

/// A member certificate with the DNS names `names`.
fn node_tls_named(dir: &Path, ca: &Ca, file: &str, names: &[&str]) -> PeerTls {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, file);
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    let (c, k) = (dir.join(format!("{file}.pem")), dir.join(format!("{file}.key")));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    PeerTls::new(ca.pem.clone(), c, k)
}

/// Members 1..=n on free loopback ports.
fn peers(n: u64) -> Vec<Peer> {
    (1..=n)
        .map(|id| Peer {
            id,
            address: free_addr(),
        })
        .collect()
}

/// A free loopback address for a node the test starts. `bind(:0)` would hand out a
/// port from the kernel's ephemeral range (32768+), where another test's outgoing
/// connection can take it between this check and the node's bind (it did: `AddrInUse`).
/// Below that range only binds compete; a counter keeps this binary's parallel tests
/// apart and the process id spreads runs.
fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % 22_000;
    loop {
        let port = 10_000 + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % 22_000;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
            return l.local_addr().unwrap();
        }
    }
}

fn verdict(endpoint: &str, healthy: bool, at: u64) -> Change {
    Change::Verdict {
        cluster: "api".into(),
        endpoint: endpoint.into(),
        healthy,
        observed_at_ms: at,
    }
}

async fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < within, "{what} did not happen within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn has(n: &HaNode, endpoint: &str, healthy: bool) -> bool {
    n.tables
        .read()
        .unwrap()
        .verdicts
        .get(&("api".to_string(), endpoint.to_string()))
        .is_some_and(|v| v.healthy == healthy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_and_witness_replicate_survive_a_loss_and_catch_up() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path(), "group-ca");
        let peers: Vec<Peer> = peers(3);
        let cfg = |id: u64| {
            let mut c = HaConfig::new(
                id,
                peers.clone(),
                dir.path().join(format!("data-{id}")),
                node_tls(dir.path(), &ca, &format!("node-{id}")),
            );
            c.snapshot_every = 20;
            c
        };
        let mut nodes: Vec<Option<HaNode>> = Vec::new();
        for id in 1..=3 {
            nodes.push(Some(HaNode::start(cfg(id)).await.unwrap()));
        }
        let n = |nodes: &Vec<Option<HaNode>>, i: usize| -> bool { nodes[i].as_ref().unwrap().leader().is_some() };
        eventually("a leader", Duration::from_secs(10), || (0..3).all(|i| n(&nodes, i))).await;

        // A verdict published on node 2 reaches every member.
        let t = Instant::now();
        nodes[1].as_ref().unwrap().publish(verdict("10.0.0.1:80", false, 1));
        eventually("replication", Duration::from_secs(5), || {
            (0..3).all(|i| has(nodes[i].as_ref().unwrap(), "10.0.0.1:80", false))
        })
        .await;
        eprintln!("verdict replicated to all three in {:?}", t.elapsed());

        // The witness (3) dies: the pair still replicates.
        nodes[2].take().unwrap().shutdown().await;
        nodes[0].as_ref().unwrap().publish(verdict("10.0.0.2:80", false, 2));
        eventually("replication without the witness", Duration::from_secs(10), || {
            has(nodes[0].as_ref().unwrap(), "10.0.0.2:80", false)
                && has(nodes[1].as_ref().unwrap(), "10.0.0.2:80", false)
        })
        .await;

        // Many batches while it is away force a snapshot; it restarts and catches up.
        for k in 0..60u64 {
            nodes[0]
                .as_ref()
                .unwrap()
                .publish(verdict(&format!("10.1.0.{k}:80"), k % 2 == 0, 10 + k));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        nodes[2] = Some(HaNode::start(cfg(3)).await.unwrap());
        eventually("catch-up", Duration::from_secs(10), || {
            let a = nodes[0].as_ref().unwrap().tables.read().unwrap().clone();
            let c = nodes[2].as_ref().unwrap().tables.read().unwrap().clone();
            a.verdicts.len() == 62 && a == c
        })
        .await;

        // All three restart: the tables survive from disk.
        for slot in nodes.iter_mut() {
            slot.take().unwrap().shutdown().await;
        }
        let mut again = Vec::new();
        for id in 1..=3 {
            again.push(HaNode::start(cfg(id)).await.unwrap());
        }
        eventually("tables after a full restart", Duration::from_secs(10), || {
            again.iter().all(|n| n.tables.read().unwrap().verdicts.len() == 62)
        })
        .await;
        for n in again {
            n.shutdown().await;
        }
    })
    .await
    .expect("test bounded in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_foreign_certificate_cannot_join_or_read() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let good = ca(dir.path(), "good-ca");
        let evil = ca(dir.path(), "evil-ca");
        let peers: Vec<Peer> = peers(2);
        let n1 = HaNode::start(HaConfig::new(
            1,
            peers.clone(),
            dir.path().join("d1"),
            node_tls(dir.path(), &good, "n1"),
        ))
        .await
        .unwrap();
        // Node 2 holds a certificate from another CA (and trusts that CA).
        let n2 = HaNode::start(HaConfig::new(
            2,
            peers.clone(),
            dir.path().join("d2"),
            node_tls(dir.path(), &evil, "n2"),
        ))
        .await
        .unwrap();
        n1.publish(verdict("10.9.9.9:80", false, 1));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            n2.tables.read().unwrap().verdicts.is_empty(),
            "the impostor learned nothing"
        );
        let refused = n1.peer_stats.refused.load(std::sync::atomic::Ordering::Relaxed)
            + n2.peer_stats.refused.load(std::sync::atomic::Ordering::Relaxed);
        assert!(refused > 0, "the handshakes between them were refused and counted");
        // Without its partner node 1 has no quorum: nothing is committed, nothing blocks.
        assert!(n1.tables.read().unwrap().verdicts.is_empty());
        n1.shutdown().await;
        n2.shutdown().await;
    })
    .await
    .expect("test bounded in time");
}

fn refused(n: &HaNode) -> u64 {
    use std::sync::atomic::Ordering::Relaxed;
    n.peer_stats.refused.load(Relaxed) + n.peer_stats.wrong_identity.load(Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_the_group_ca_without_the_peer_name_is_refused() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path(), "shared-ca");
        let peers: Vec<Peer> = peers(2);
        // The same CA also signs certificates for another service: such a certificate
        // is not a member's. Its holder takes id 1, so it is the one that forms the group
        // and campaigns: its connections reach the member, which must refuse them.
        let other = node_tls_named(dir.path(), &ca, "web", &["www.example.com"]);
        let n1 = HaNode::start(HaConfig::new(1, peers.clone(), dir.path().join("d1"), other))
            .await
            .unwrap();
        let n2 = HaNode::start(HaConfig::new(
            2,
            peers.clone(),
            dir.path().join("d2"),
            node_tls(dir.path(), &ca, "n2"),
        ))
        .await
        .unwrap();
        n2.publish(verdict("10.9.9.8:80", false, 1));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            n1.tables.read().unwrap().verdicts.is_empty(),
            "the outsider learned nothing"
        );
        assert!(
            n2.tables.read().unwrap().verdicts.is_empty(),
            "no quorum with an outsider"
        );
        assert!(refused(&n2) > 0, "the member refused and counted the outsider");
        n1.shutdown().await;
        n2.shutdown().await;
    })
    .await
    .expect("test bounded in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_verify_node_id_a_member_cannot_speak_for_another() {
    tokio::time::timeout(Duration::from_secs(40), async {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path(), "id-ca");
        let peers: Vec<Peer> = peers(3);
        let tls = |file: &str, names: &[&str]| {
            let mut t = node_tls_named(dir.path(), &ca, file, names);
            t.verify_node_id = true;
            t
        };
        let cfg = |id: u64, t: PeerTls| HaConfig::new(id, peers.clone(), dir.path().join(format!("v{id}")), t);
        let n1 = HaNode::start(cfg(1, tls("v1", &["tandem-peer", "node1.tandem-peer"])))
            .await
            .unwrap();
        let n2 = HaNode::start(cfg(2, tls("v2", &["tandem-peer", "node2.tandem-peer"])))
            .await
            .unwrap();
        // Node 3 runs with a stolen copy of node 1's identity.
        let n3 = HaNode::start(cfg(3, tls("v3", &["tandem-peer", "node1.tandem-peer"])))
            .await
            .unwrap();
        eventually("1 and 2 form the group", Duration::from_secs(15), || {
            n1.leader().is_some() && n1.leader() == n2.leader()
        })
        .await;
        n2.publish(verdict("10.9.9.7:80", false, 1));
        eventually("1 and 2 replicate", Duration::from_secs(10), || {
            has(&n1, "10.9.9.7:80", false) && has(&n2, "10.9.9.7:80", false)
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            n3.tables.read().unwrap().verdicts.is_empty(),
            "the impostor learned nothing"
        );
        let wrong = [&n1, &n2]
            .iter()
            .map(|n| n.peer_stats.wrong_identity.load(std::sync::atomic::Ordering::Relaxed))
            .sum::<u64>();
        assert!(
            wrong > 0 || refused(&n3) > 0,
            "the impostor's requests were refused and counted"
        );
        for n in [n1, n2, n3] {
            n.shutdown().await;
        }
    })
    .await
    .expect("test bounded in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_without_quorum_are_proposed_on_heal() {
    tokio::time::timeout(Duration::from_secs(40), async {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path(), "heal-ca");
        let peers: Vec<Peer> = peers(3);
        let cfg = |id: u64| {
            HaConfig::new(
                id,
                peers.clone(),
                dir.path().join(format!("h{id}")),
                node_tls(dir.path(), &ca, &format!("h{id}")),
            )
        };
        // Node 2 alone: no quorum. Its change waits in the buffer; nothing blocks.
        let n2 = HaNode::start(cfg(2)).await.unwrap();
        n2.publish(verdict("10.7.0.1:80", false, 5));
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(n2.tables.read().unwrap().verdicts.is_empty());
        // The others arrive: the buffered change is committed everywhere.
        let n1 = HaNode::start(cfg(1)).await.unwrap();
        let n3 = HaNode::start(cfg(3)).await.unwrap();
        eventually("the buffered change after heal", Duration::from_secs(20), || {
            [&n1, &n2, &n3].iter().all(|n| has(n, "10.7.0.1:80", false))
        })
        .await;
        for n in [n1, n2, n3] {
            n.shutdown().await;
        }
    })
    .await
    .expect("test bounded in time");
}

/// The members' tables, equal?
fn same_tables(nodes: &[&HaNode]) -> bool {
    let first = nodes[0].tables.read().unwrap().clone();
    nodes.iter().all(|n| *n.tables.read().unwrap() == first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_far_behind_catches_up_by_snapshot_and_the_group_keeps_going() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path(), "snap-ca");
        let peers: Vec<Peer> = peers(3);
        let cfg = |id: u64| {
            let mut c = HaConfig::new(
                id,
                peers.clone(),
                dir.path().join(format!("s{id}")),
                node_tls(dir.path(), &ca, &format!("s{id}")),
            );
            c.snapshot_every = 50;
            // One log entry per change: hundreds of entries in a second.
            c.sync_interval = Duration::from_millis(1);
            c
        };
        let mut nodes: Vec<Option<HaNode>> = Vec::new();
        for id in 1..=3 {
            nodes.push(Some(HaNode::start(cfg(id)).await.unwrap()));
        }
        eventually("a leader", Duration::from_secs(10), || {
            nodes.iter().all(|n| n.as_ref().unwrap().leader().is_some())
        })
        .await;
        let mut k = 0u64;
        // Twice: first a follower is down while hundreds of entries (several snapshots)
        // go by, then the leader itself.
        for round in 0..2 {
            let leader = nodes[0].as_ref().unwrap().leader().unwrap();
            let down = if round == 0 {
                (1..=3u64).find(|id| *id != leader).unwrap()
            } else {
                leader
            };
            let i = (down - 1) as usize;
            nodes[i].take().unwrap().shutdown().await;
            let alive: Vec<usize> = (0..3).filter(|j| *j != i).collect();
            eventually("a leader among the others", Duration::from_secs(10), || {
                alive.iter().all(|j| {
                    let n = nodes[*j].as_ref().unwrap();
                    n.leader().is_some_and(|l| l != down)
                })
            })
            .await;
            for _ in 0..300 {
                k += 1;
                let n = nodes[alive[(k % 2) as usize]].as_ref().unwrap();
                n.publish(verdict(
                    &format!("10.2.{}.{}:80", k / 250, k % 250),
                    k.is_multiple_of(3),
                    k,
                ));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let want = k as usize;
            eventually("the others applied everything", Duration::from_secs(20), || {
                alive
                    .iter()
                    .all(|j| nodes[*j].as_ref().unwrap().tables.read().unwrap().verdicts.len() >= want)
            })
            .await;
            let built: u64 = alive
                .iter()
                .map(|j| nodes[*j].as_ref().unwrap().snapshots_built())
                .sum();
            assert!(built >= 2, "round {round}: snapshots were built ({built})");
            nodes[i] = Some(HaNode::start(cfg(down)).await.unwrap());
            eventually("the returning member caught up", Duration::from_secs(20), || {
                let all: Vec<&HaNode> = nodes.iter().map(|n| n.as_ref().unwrap()).collect();
                all[i].tables.read().unwrap().verdicts.len() >= want && same_tables(&all)
            })
            .await;
            // And the group still replicates.
            k += 1;
            nodes[i]
                .as_ref()
                .unwrap()
                .publish(verdict("10.3.0.1:80", round == 0, k));
            eventually("replication after the catch-up", Duration::from_secs(10), || {
                nodes
                    .iter()
                    .all(|n| has(n.as_ref().unwrap(), "10.3.0.1:80", round == 0))
            })
            .await;
        }
        for n in nodes.into_iter().flatten() {
            n.shutdown().await;
        }
    })
    .await
    .expect("test bounded in time");
}

/// Measurement (bench/README.md): how long a new member (a wiped node back under a new
/// id) takes to catch up by snapshot with 10k and 100k sticky bindings in the tables.
/// `cargo test --release -p tandem-ha --test group catch_up_time -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn catch_up_time_by_snapshot() {
    for bindings in [10_000u64, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path(), "bench-ca");
        let mut peers: Vec<Peer> = peers(3);
        let cfg = |id: u64, peers: &[Peer]| {
            let mut c = HaConfig::new(
                id,
                peers.to_vec(),
                dir.path().join(format!("b{id}")),
                node_tls(dir.path(), &ca, &format!("b{id}")),
            );
            c.snapshot_every = 100;
            c.sync_interval = Duration::from_millis(1);
            c
        };
        let mut nodes: Vec<HaNode> = Vec::new();
        for id in 1..=3 {
            nodes.push(HaNode::start(cfg(id, &peers)).await.unwrap());
        }
        eventually("a leader", Duration::from_secs(10), || {
            nodes.iter().all(|n| n.leader().is_some())
        })
        .await;
        let leader = nodes[0].leader().unwrap();
        let l = &nodes[(leader - 1) as usize];
        let far = 4_000_000_000_000u64;
        for k in 0..bindings {
            l.publish(Change::StickyBind {
                key: k,
                endpoint: format!("10.0.{}.{}:8080", (k / 250) % 250, k % 250),
                at_ms: 1,
                expires_at_ms: far,
                replaces: None,
            });
        }
        eventually("all bindings committed", Duration::from_secs(120), || {
            l.tables.read().unwrap().sticky.len() as u64 == bindings
        })
        .await;
        // Entries after it (one per change) so snapshots cover everything and the log
        // is purged past where a new member would start.
        for k in 0..400u64 {
            l.publish(verdict(&format!("10.9.{}.{}:80", k / 200, k % 200), true, k));
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        eventually("the log purged", Duration::from_secs(20), || {
            l.raft.metrics().borrow().purged.is_some()
        })
        .await;
        // A new member, node 4: added as a learner, it catches up by snapshot.
        peers.push(Peer {
            id: 4,
            address: free_addr(),
        });
        let t = Instant::now();
        let newcomer = HaNode::start(cfg(4, &peers)).await.unwrap();
        let added = l
            .change_membership(tandem_ha::protocol::MembershipChange::Add {
                id: 4,
                address: peers[3].address.to_string(),
            })
            .await;
        assert!(added.is_ok(), "{added:?}");
        eventually("the new member caught up", Duration::from_secs(120), || {
            newcomer.tables.read().unwrap().sticky.len() as u64 == bindings
        })
        .await;
        let took = t.elapsed();
        eprintln!(
            "{bindings} bindings: a new member caught up in {took:?} ({} snapshot(s) installed, {} bytes)",
            newcomer.snapshots.installed.load(std::sync::atomic::Ordering::Relaxed),
            newcomer.snapshots.bytes.load(std::sync::atomic::Ordering::Relaxed)
        );
        newcomer.shutdown().await;
        for n in nodes {
            n.shutdown().await;
        }
    }
}

/// Each member keeps a link to each other one, checked by pings: a stopped member is
/// known to be out of reach within a ping timeout or two, a restarted one is reached
/// again, and lease calls go over the links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standing_links_say_which_members_answer() {
    use tandem_ha::link::{FRESH, PING_TIMEOUT};
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path(), "group-ca");
        let peers: Vec<Peer> = peers(3);
        let cfg = |id: u64| {
            HaConfig::new(
                id,
                peers.clone(),
                dir.path().join(format!("data-{id}")),
                node_tls(dir.path(), &ca, &format!("node-{id}")),
            )
        };
        let mut nodes = Vec::new();
        for id in 1..=3 {
            nodes.push(Some(HaNode::start(cfg(id)).await.unwrap()));
        }
        let fresh = |n: &HaNode, id: u64| n.network.links.heard(id).is_some_and(|d| d <= FRESH);
        eventually("every link fresh", Duration::from_secs(10), || {
            let n1 = nodes[0].as_ref().unwrap();
            let n2 = nodes[1].as_ref().unwrap();
            fresh(n1, 2) && fresh(n1, 3) && fresh(n2, 1) && fresh(n2, 3)
        })
        .await;
        // A member has no link to itself.
        assert!(nodes[0].as_ref().unwrap().network.links.heard(1).is_none());
        eventually("a leader", Duration::from_secs(10), || {
            nodes[0].as_ref().unwrap().leader().is_some()
        })
        .await;

        // Lease calls from a follower go over the link: a few milliseconds each.
        let follower = (0..3)
            .find(|&i| nodes[i].as_ref().unwrap().leader() != Some(i as u64 + 1))
            .unwrap();
        let client = nodes[follower].as_ref().unwrap().lease_client();
        let mut took = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let lease = client
                .acquire(7, 100, false, Duration::from_millis(500), Duration::from_secs(2))
                .await
                .unwrap();
            took.push(t.elapsed());
            assert!(lease.held_by(client.id(), tandem_ha::now_ms()));
        }
        took.sort();
        eprintln!(
            "lease renewal from a follower: median {:?}, max {:?}",
            took[10], took[19]
        );

        // Member 3 stops: 1 and 2 know it is out of reach soon after.
        let t = Instant::now();
        nodes[2].take().unwrap().shutdown().await;
        eventually("the stopped member's links stale", PING_TIMEOUT * 2 + FRESH * 2, || {
            !fresh(nodes[0].as_ref().unwrap(), 3) && !fresh(nodes[1].as_ref().unwrap(), 3)
        })
        .await;
        eprintln!("stopped member known out of reach after {:?}", t.elapsed());
        assert!(fresh(nodes[0].as_ref().unwrap(), 2), "the living member still answers");

        // It restarts: reached again.
        nodes[2] = Some(HaNode::start(cfg(3)).await.unwrap());
        eventually("links to the restarted member fresh", Duration::from_secs(5), || {
            fresh(nodes[0].as_ref().unwrap(), 3) && fresh(nodes[1].as_ref().unwrap(), 3)
        })
        .await;
        for n in nodes.into_iter().flatten() {
            n.shutdown().await;
        }
    })
    .await
    .expect("test bounded in time");
}

/// Keeps opening connections to `to` from 127.0.0.2 that never start a TLS handshake
/// (each holds a handshake slot until its timeout), until `stop`.
async fn stall_flood(to: SocketAddr, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> usize {
    let mut held = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for _ in 0..20 {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(200), s.connect(to)).await {
                held.push(c);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    held.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_filling_the_handshake_slots_do_not_keep_members_out() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path(), "group-ca");
        let peers: Vec<Peer> = peers(3);
        let cfg = |id: u64| {
            HaConfig::new(
                id,
                peers.clone(),
                dir.path().join(format!("data-{id}")),
                node_tls(dir.path(), &ca, &format!("node-{id}")),
            )
        };
        let mut nodes = Vec::new();
        for id in 1..=3 {
            nodes.push(Some(HaNode::start(cfg(id)).await.unwrap()));
        }
        eventually("a leader", Duration::from_secs(10), || {
            (0..3).all(|i| nodes[i].as_ref().unwrap().leader().is_some())
        })
        .await;
        // Every member's peer port flooded from another address (127.0.0.2) with
        // connections that never log in, more than the handshake slots.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let floods: Vec<_> = peers
            .iter()
            .map(|p| tokio::spawn(stall_flood(p.address, stop.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A member restarted now has no connection left: it must get in to catch up.
        nodes[2].take().unwrap().shutdown().await;
        nodes[0].as_ref().unwrap().publish(verdict("10.9.0.1:80", false, 1));
        nodes[2] = Some(HaNode::start(cfg(3)).await.unwrap());
        nodes[1].as_ref().unwrap().publish(verdict("10.9.0.2:80", false, 2));
        eventually(
            "replication to every member under the flood",
            Duration::from_secs(10),
            || {
                (0..3).all(|i| {
                    let n = nodes[i].as_ref().unwrap();
                    has(n, "10.9.0.1:80", false) && has(n, "10.9.0.2:80", false)
                })
            },
        )
        .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut opened = 0;
        for f in floods {
            opened += f.await.unwrap();
        }
        let refused: u64 = (0..3)
            .map(|i| {
                nodes[i]
                    .as_ref()
                    .unwrap()
                    .peer_stats
                    .over_capacity
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum();
        eprintln!("{opened} stalled connections opened; {refused} closed at accept");
        assert!(refused > 0, "the flood never filled the strangers' handshake slots");
        for n in nodes.into_iter().flatten() {
            n.shutdown().await;
        }
    })
    .await
    .expect("test bounded in time");
}
