//! The fuzz targets' smoke run: each target of `tandem_proxy::fuzzing` over its seed
//! corpus in `fuzz/corpus/<target>/` and a few thousand deterministic mutations of it
//! (bit flips, byte changes, cuts, insertions, splices). The long, coverage-guided runs
//! are libFuzzer's (`fuzz/README.md`).

use std::path::PathBuf;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut v: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    v.sort();
    assert!(v.len() >= 3, "{target}: at least three seeds in {}", dir.display());
    v
}

/// One mutation of `input`, drawn from `rng`, possibly splicing in `other`.
fn mutate(rng: &mut fastrand::Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.usize(1..=4) {
        let len = v.len();
        match rng.u8(0..6) {
            0 if len > 0 => {
                let i = rng.usize(0..len);
                v[i] ^= 1 << rng.u8(0..8);
            }
            1 if len > 0 => {
                let i = rng.usize(0..len);
                v[i] = *rng
                    .choice(&[0u8, 0xff, b'\r', b'\n', b':', b' ', b'0', b'9', 0x7f, b';'])
                    .unwrap();
            }
            2 if len > 0 => v.truncate(rng.usize(0..len)),
            3 => {
                let i = rng.usize(0..=len);
                let n = rng.usize(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
                v.splice(i..i, bytes);
            }
            4 if !other.is_empty() => {
                let i = rng.usize(0..=len);
                let a = rng.usize(0..other.len());
                let b = rng.usize(a..=other.len());
                v.splice(i..i, other[a..b].iter().copied());
            }
            _ if len > 1 => {
                // Repeat a slice (long lines, many fields).
                let a = rng.usize(0..len);
                let b = rng.usize(a..len).min(a + 64);
                let piece = v[a..=b].to_vec();
                for _ in 0..rng.usize(1..8) {
                    v.extend_from_slice(&piece);
                }
            }
            _ => v.push(rng.u8(..)),
        }
    }
    v
}

#[test]
fn every_fuzz_target_survives_its_corpus_and_mutations() {
    for (name, target) in tandem_proxy::fuzzing::TARGETS {
        let seeds = seeds(name);
        // Configuration checks are slower per input than packet parsers.
        let rounds = if name == "config" { 30_000 } else { 200_000 };
        let mut rng = fastrand::Rng::with_seed(0x007a_4de3);
        let t = std::time::Instant::now();
        for s in &seeds {
            target(s);
        }
        for _ in 0..rounds {
            let a = &seeds[rng.usize(0..seeds.len())];
            let b = &seeds[rng.usize(0..seeds.len())];
            target(&mutate(&mut rng, a, b));
        }
        eprintln!(
            "{name}: {} seeds + {rounds} mutations in {:?}",
            seeds.len(),
            t.elapsed()
        );
    }
}

/// Writes the seeds that need Tandem's own encoders (peer frames, VRRP packets, PROXY
/// headers) into `fuzz/corpus/`. Run once when the formats change:
/// `cargo test --release -p tandem-proxy --test all fuzz::write_structured_seeds -- --ignored`.
#[test]
#[ignore]
fn write_structured_seeds() {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use tandem_ha::openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
    use tandem_ha::openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
    use tandem_ha::protocol::{Reply, Request};
    use tandem_ha::{Batch, Change};
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let frame = |v: &dyn erased::Enc| {
        let body = v.enc();
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&body);
        f
    };
    let batch = Batch {
        origin: 2,
        changes: vec![
            Change::Verdict {
                cluster: "api".into(),
                endpoint: "10.0.0.1:80".into(),
                healthy: false,
                observed_at_ms: 1_700_000_000_000,
            },
            Change::Sticky {
                key: 42,
                endpoint: "10.0.0.2:80".into(),
                expires_at_ms: 1_700_000_060_000,
            },
            Change::RateCount {
                key: 7,
                window_ms: 1_700_000_000_000,
                count: 12,
            },
            Change::Shared {
                key: "tenant:a".into(),
                value: Some(b"1".to_vec()),
            },
            Change::VipLease {
                vrid: 51,
                priority: 150,
                preempt: true,
                at_ms: 1_700_000_000_000,
                ttl_ms: 300,
            },
            Change::VipRelease { vrid: 51 },
        ],
    };
    let log_id = LogId::new(CommittedLeaderId::new(3, 1), 17);
    let entry = Entry::<tandem_ha::TypeConfig> {
        log_id,
        payload: EntryPayload::Normal(batch.clone()),
    };
    let vote = Vote::new(3, 1);
    write(
        "peer_frame",
        "vote",
        &frame(&Request::Vote(VoteRequest::new(vote, Some(log_id)))),
    );
    write(
        "peer_frame",
        "append",
        &frame(&Request::Append(AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id),
            entries: vec![entry.clone()],
            leader_commit: Some(log_id),
        })),
    );
    write("peer_frame", "propose", &frame(&Request::Propose(batch.clone())));
    write("peer_frame", "relay", &frame(&Request::Relay(batch)));
    write(
        "peer_frame",
        "vote-reply",
        &frame(&Reply::Vote(Ok(VoteResponse::new(vote, Some(log_id), true)))),
    );
    write(
        "peer_frame",
        "append-reply",
        &frame(&Reply::Append(Ok(AppendEntriesResponse::Success))),
    );
    write("peer_frame", "entry", &tandem_ha::wire::encode(&entry).unwrap());

    let (src, dst): (SocketAddr, SocketAddr) = ("192.0.2.7:51234".parse().unwrap(), "10.0.0.5:443".parse().unwrap());
    let (src6, dst6): (SocketAddr, SocketAddr) =
        ("[2001:db8::7]:51234".parse().unwrap(), "[fd00::5]:443".parse().unwrap());
    use tandem_proxy::proxy_protocol::{encode_v1, encode_v2};
    write("proxy_protocol", "v1-tcp4", &encode_v1(src, dst));
    write("proxy_protocol", "v1-tcp6", &encode_v1(src6, dst6));
    write("proxy_protocol", "v1-unknown", b"PROXY UNKNOWN\r\nGET / HTTP/1.1\r\n");
    write(
        "proxy_protocol",
        "v2-tcp4",
        &[encode_v2(src, dst), b"GET / HTTP/1.1\r\n".to_vec()].concat(),
    );
    write("proxy_protocol", "v2-tcp6", &encode_v2(src6, dst6));
    let mut local = encode_v2(src, dst);
    local[12] = 0x20; // LOCAL command, no addresses
    local[13] = 0;
    local[14..16].copy_from_slice(&0u16.to_be_bytes());
    local.truncate(16);
    write("proxy_protocol", "v2-local", &local);

    use tandem_ha::vip::packet::Advert;
    let a4 = Advert {
        vrid: 51,
        priority: 150,
        interval_cs: 2,
        addrs: vec![
            IpAddr::V4(Ipv4Addr::new(10, 99, 0, 100)),
            IpAddr::V4(Ipv4Addr::new(10, 99, 0, 101)),
        ],
    };
    let (s4, d4) = (Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(224, 0, 0, 18));
    let ip = |m: &[u8], ttl: u8| {
        let total = 20 + m.len();
        let mut p = vec![0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, ttl, 112, 0, 0];
        p.extend_from_slice(&s4.octets());
        p.extend_from_slice(&d4.octets());
        p.extend_from_slice(m);
        p
    };
    write("vrrp", "v4", &ip(&a4.encode(s4, d4), 255));
    write("vrrp", "v4-ttl64", &ip(&a4.encode(s4, d4), 64));
    let release = Advert {
        priority: 0,
        ..a4.clone()
    };
    write("vrrp", "v4-release", &ip(&release.encode(s4, d4), 255));
    let s6: std::net::Ipv6Addr = "fe80::1".parse().unwrap();
    let d6: std::net::Ipv6Addr = "ff02::12".parse().unwrap();
    let a6 = Advert {
        vrid: 52,
        priority: 100,
        interval_cs: 100,
        addrs: vec![IpAddr::V6("fd77::100".parse().unwrap())],
    };
    let mut v6 = s6.octets().to_vec();
    v6.extend_from_slice(&d6.octets());
    v6.push(255);
    v6.extend_from_slice(&a6.encode(s6, d6));
    write("vrrp", "v6", &v6);
}

/// Encoding through `wire` for a seed (requests and replies are different types).
mod erased {
    pub trait Enc {
        fn enc(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Enc for T {
        fn enc(&self) -> Vec<u8> {
            tandem_ha::wire::encode(self).unwrap()
        }
    }
}
