//! The health thread: one prober task per (cluster, endpoint) with an active check,
//! staggered across the interval; the success-rate sweep; and drain bookkeeping. It
//! follows reloads by comparing the runtime generation, starting and stopping probers
//! for what changed. Runs on its own thread so probes never compete with requests. In
//! a pair it ticks every 20 ms; a single node sleeps until its next sweep, a reload or
//! an operator's drain, and ticks every 200 ms only while a drain is going on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::now_ns;
use crate::config::HealthCheckConfig;
use crate::health::verdict::{self, EjectReason, Source, Target, Verdict};
use crate::shared::Shared;
use crate::stats::EndpointStats;

/// Starts the health thread.
pub(crate) fn start(shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new().name("health".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "health runtime failed");
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, run(shared));
    })?;
    Ok(())
}

/// The health thread's tick in a pair: peers' verdicts and rate-limit counts are
/// adopted within one tick.
const PAIR_TICK: Duration = Duration::from_millis(20);

/// How often a single node looks at its draining endpoints while any is draining. With
/// none, it sleeps until its next sweep, a reload or an operator's drain.
const DRAIN_TICK: Duration = Duration::from_millis(200);

/// How often idle sticky bindings and rate-limit keys are forgotten.
const IDLE_SWEEP_EVERY: Duration = Duration::from_secs(5);

type ProberKey = (Arc<str>, SocketAddr);

struct Prober {
    config: HealthCheckConfig,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct SweepState {
    last_ns: u64,
    /// (total responses, 5xx responses) at the last sweep, per endpoint.
    seen: HashMap<SocketAddr, (u64, u64)>,
}

async fn run(shared: Arc<Shared>) {
    let mut generation = 0;
    let mut probers: HashMap<ProberKey, Prober> = HashMap::new();
    let mut sweeps: HashMap<Arc<str>, SweepState> = HashMap::new();
    let mut tick = tokio::time::interval(PAIR_TICK);
    let mut adopted: HashMap<(String, String), u64> = HashMap::new();
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reloaded = shared.reloaded.subscribe();
    let mut last_sweep = tokio::time::Instant::now();
    // When the next pass is due on a single node (now, for the first one).
    let mut next = last_sweep;
    loop {
        if shared.pair.is_some() {
            tick.tick().await;
        } else {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = reloaded.changed() => {}
                _ = shared.health_wake.notified() => {}
            }
        }
        let rt = shared.runtime.load_full();
        if let Some(pair) = &shared.pair {
            adopt_peer_verdicts(pair, &rt, &mut adopted);
            crate::pair::sync_rate_limits(pair, &shared.stats.limiters());
        }
        if last_sweep.elapsed() >= IDLE_SWEEP_EVERY {
            last_sweep = tokio::time::Instant::now();
            // Every 5 s: forget idle sticky bindings and rate-limit keys.
            let idle = rt
                .clusters
                .iter()
                .filter_map(|c| match &c.sticky {
                    Some(crate::config::StickyConfig::Learned { idle, .. }) => Some(*idle),
                    _ => None,
                })
                .max()
                .unwrap_or(Duration::from_secs(1800));
            shared.sticky.sweep(idle);
            for l in shared.stats.limiters() {
                l.sweep();
            }
        }
        if rt.generation != generation {
            generation = rt.generation;
            sync_probers(&rt, shared.pair.as_ref(), &mut probers);
        }
        let sweep_due = sweep_success_rate(&rt, shared.pair.as_deref(), &mut sweeps);
        let draining = track_drains(&shared, &rt);
        // A single node sleeps until the next thing it has to do.
        let now = tokio::time::Instant::now();
        next = last_sweep + IDLE_SWEEP_EVERY;
        if let Some(due) = sweep_due {
            next = next.min(now + Duration::from_nanos(due.saturating_sub(now_ns())));
        }
        if draining {
            next = next.min(now + DRAIN_TICK);
        }
    }
}

fn sync_probers(
    rt: &crate::runtime::Runtime,
    pair: Option<&Arc<crate::pair::Pair>>,
    probers: &mut HashMap<ProberKey, Prober>,
) {
    let mut wanted: HashMap<ProberKey, (HealthCheckConfig, Arc<EndpointStats>, usize, usize)> = HashMap::new();
    for c in &rt.clusters {
        let Some(hc) = &c.health_check else { continue };
        let mut hc = hc.clone();
        hc.uneject = c.outlier.as_ref().is_some_and(|o| o.uneject_on_active_check);
        let n = c.endpoints.len();
        for (i, e) in c.endpoints.iter().enumerate() {
            wanted.insert((c.name.clone(), e.address), (hc.clone(), e.stats.clone(), i, n));
        }
    }
    probers.retain(|key, p| {
        let keep = wanted.get(key).is_some_and(|(hc, ..)| *hc == p.config);
        if !keep {
            p.task.abort();
        }
        keep
    });
    for (key, (hc, stats, i, n)) in wanted {
        if probers.contains_key(&key) {
            continue;
        }
        let (cluster, addr) = key.clone();
        let task = tokio::task::spawn_local(prober(cluster, addr, hc.clone(), stats, (i, n), pair.cloned()));
        probers.insert(key, Prober { config: hc, task });
    }
}

/// Probes one endpoint forever: staggered start, interval plus jitter, rise/fall.
async fn prober(
    cluster: Arc<str>,
    addr: SocketAddr,
    hc: HealthCheckConfig,
    stats: Arc<EndpointStats>,
    (i, n): (usize, usize),
    pair: Option<Arc<crate::pair::Pair>>,
) {
    let target_addr = SocketAddr::new(addr.ip(), hc.port.unwrap_or(addr.port()));
    let jitter = |hc: &HealthCheckConfig| {
        if hc.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(fastrand::u64(0..hc.jitter.as_nanos() as u64))
        }
    };
    // Stagger: endpoint i of n starts i/n of the way into the interval.
    let offset = hc.interval.mul_f64(i as f64 / n.max(1) as f64);
    tokio::time::sleep(offset + jitter(&hc)).await;
    let (mut passes, mut fails) = (0u32, 0u32);
    let h = &stats.health;
    loop {
        let result = crate::health::probe::probe(target_addr, &hc.kind, hc.timeout).await;
        let target = Target {
            cluster: &cluster,
            address: addr,
            pair: pair.as_deref(),
        };
        match result {
            Ok(()) => {
                h.checks_passed.fetch_add(1, Relaxed);
                passes += 1;
                fails = 0;
                if passes >= hc.rise && h.active.load(Relaxed) != crate::health::HEALTHY {
                    verdict::apply(h, Verdict::Healthy, Source::ActiveCheck, target, None, 0, 0);
                }
                if hc.uneject && h.is_ejected(now_ns()) {
                    verdict::apply(h, Verdict::Uneject, Source::ActiveCheck, target, None, 0, 0);
                }
            }
            Err(e) => {
                h.checks_failed.fetch_add(1, Relaxed);
                fails += 1;
                passes = 0;
                tracing::debug!(cluster = &*cluster, endpoint = %addr, error = %e, "health check failed");
                if fails >= hc.fall && h.active.load(Relaxed) != crate::health::UNHEALTHY {
                    verdict::apply(h, Verdict::Unhealthy, Source::ActiveCheck, target, None, 0, 0);
                }
            }
        }
        tokio::time::sleep(hc.interval + jitter(&hc)).await;
    }
}

/// Adopts verdicts other members published: an unhealthy one at once (this node keeps
/// probing and recovers only through its own passing checks); a healthy one only for
/// clusters this node does not probe itself, when `adopt_peer_recovery` is on.
fn adopt_peer_verdicts(
    pair: &crate::pair::Pair,
    rt: &crate::runtime::Runtime,
    adopted: &mut HashMap<(String, String), u64>,
) {
    let Ok(tables) = pair.tables.read() else { return };
    for ((cluster, endpoint), v) in &tables.verdicts {
        if v.reporter == pair.id {
            continue;
        }
        let key = (cluster.clone(), endpoint.clone());
        if adopted.get(&key).is_some_and(|seen| *seen >= v.observed_at_ms) {
            continue;
        }
        adopted.insert(key, v.observed_at_ms);
        let Some(c) = rt.cluster_named(cluster) else { continue };
        let Ok(addr) = endpoint.parse::<SocketAddr>() else {
            continue;
        };
        let Some(i) = c.endpoint_index(addr) else { continue };
        let target = Target {
            cluster: &c.name,
            address: addr,
            pair: Some(pair),
        };
        let h = &c.endpoints[i].stats.health;
        if !v.healthy {
            verdict::apply(h, Verdict::Unhealthy, Source::Peer, target, None, 0, 0);
        } else if c.health_check.is_none() && pair.config.adopt_peer_recovery {
            verdict::apply(h, Verdict::Healthy, Source::Peer, target, None, 0, 0);
        }
    }
    // Passive ejections: the pair ejects a gray endpoint together, for what is left of
    // the reporter's ejection (within this cluster's max_ejection_percent).
    let now_ms = crate::pair::now_ms();
    for ((cluster, endpoint), e) in &tables.ejections {
        if e.reporter == pair.id || e.until_ms <= now_ms {
            continue;
        }
        let key = (format!("\0eject:{cluster}"), endpoint.clone());
        if adopted.get(&key).is_some_and(|seen| *seen >= e.observed_at_ms) {
            continue;
        }
        adopted.insert(key, e.observed_at_ms);
        let Some(c) = rt.cluster_named(cluster) else { continue };
        let Ok(addr) = endpoint.parse::<SocketAddr>() else {
            continue;
        };
        let Some(i) = c.endpoint_index(addr) else { continue };
        let now = now_ns();
        let ejected = c.endpoints.iter().filter(|x| x.stats.health.is_ejected(now)).count();
        verdict::apply(
            &c.endpoints[i].stats.health,
            Verdict::PeerEject(std::time::Duration::from_millis(e.until_ms - now_ms)),
            Source::Peer,
            Target {
                cluster: &c.name,
                address: addr,
                pair: Some(pair),
            },
            c.outlier.as_ref(),
            ejected,
            c.endpoints.len(),
        );
    }
}

/// Ejects endpoints whose success rate over the last interval is below
/// mean − factor × stdev of the endpoints with enough requests (Envoy's algorithm).
/// Returns when the next sweep is due (`now_ns`), if any cluster has one.
fn sweep_success_rate(
    rt: &crate::runtime::Runtime,
    pair: Option<&crate::pair::Pair>,
    sweeps: &mut HashMap<Arc<str>, SweepState>,
) -> Option<u64> {
    let now = now_ns();
    let mut due: Option<u64> = None;
    for c in &rt.clusters {
        let Some(o) = &c.outlier else { continue };
        if o.success_rate_min_hosts == 0 {
            continue;
        }
        let interval = o.interval.as_nanos() as u64;
        let st = sweeps.entry(c.name.clone()).or_default();
        if st.last_ns == 0 {
            st.last_ns = now;
        }
        let sweep_now = now.saturating_sub(st.last_ns) >= interval;
        if sweep_now {
            st.last_ns = now;
        }
        let at = st.last_ns + interval;
        due = Some(due.map_or(at, |d| d.min(at)));
        if !sweep_now {
            continue;
        }
        let mut rates = Vec::new();
        for (i, e) in c.endpoints.iter().enumerate() {
            let total: u64 = (1..=5).map(|k| e.stats.responses.get(k)).sum();
            let bad = e.stats.responses.get(5);
            let (pt, pb) = st.seen.insert(e.address, (total, bad)).unwrap_or((total, bad));
            let (dt, db) = (total.saturating_sub(pt), bad.saturating_sub(pb));
            if dt >= o.success_rate_min_requests && !e.stats.health.is_ejected(now) {
                rates.push((i, 1.0 - db as f64 / dt as f64));
            }
        }
        if rates.len() < o.success_rate_min_hosts {
            continue;
        }
        let mean = rates.iter().map(|r| r.1).sum::<f64>() / rates.len() as f64;
        let var = rates.iter().map(|r| (r.1 - mean).powi(2)).sum::<f64>() / rates.len() as f64;
        let threshold = mean - o.success_rate_stdev_factor * var.sqrt();
        for (i, rate) in rates {
            if rate < threshold {
                let e = &c.endpoints[i];
                let ejected = c.endpoints.iter().filter(|x| x.stats.health.is_ejected(now)).count();
                verdict::apply(
                    &e.stats.health,
                    Verdict::Eject(EjectReason::SuccessRate),
                    Source::Sweep,
                    Target {
                        cluster: &c.name,
                        address: e.address,
                        pair,
                    },
                    Some(o),
                    ejected,
                    c.endpoints.len(),
                );
            }
        }
    }
    due
}

/// Marks draining endpoints drained once nothing is in flight; warns when a drain
/// outlasts `drain_timeout`. Returns whether any drain is still going on.
fn track_drains(shared: &Shared, rt: &crate::runtime::Runtime) -> bool {
    let now = now_ns();
    let timeout = rt.config.server.drain_timeout.as_nanos() as u64;
    let mut going = false;
    let mut check = |cluster: &str, addr: SocketAddr, s: &EndpointStats| {
        let h = &s.health;
        if !h.draining.load(Relaxed) || h.drained_ns.load(Relaxed) != 0 {
            return;
        }
        let active = s.active.load(Relaxed);
        going |= active != 0;
        if active == 0 {
            h.drained_ns.store(now, Relaxed);
            tracing::info!(cluster, endpoint = %addr, "endpoint drained");
        } else if now.saturating_sub(h.drain_started_ns.load(Relaxed)) > timeout {
            tracing::warn!(cluster, endpoint = %addr, in_flight = active, "endpoint drain exceeded drain_timeout");
            h.drain_started_ns.store(now, Relaxed);
        }
    };
    for c in &rt.clusters {
        for e in &c.endpoints {
            check(&c.name, e.address, &e.stats);
        }
    }
    for r in shared.removed_endpoints().iter() {
        check(&r.cluster, r.address, &r.stats);
    }
    going
}
