//! The node's floating VIPs: one VRRPv3 virtual router per `[[vip]]`, run on a
//! dedicated thread (never on a worker). The rest of the proxy sees their state and
//! counters, can put them in maintenance (release with priority 0 so the peer takes
//! over at once) and releases them first when the process stops.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tandem_ha::vip::router::{self, Control, VipConfig, VipStats};

/// The running virtual routers.
pub struct Vips {
    /// (settings, counters) per VIP.
    pub routers: Vec<(VipConfig, Arc<VipStats>)>,
    control: tokio::sync::watch::Sender<Control>,
    done: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    /// Whether the VIPs are fenced by leases of the pair's group.
    fenced: bool,
}

/// Starts every virtual router on the VIP thread. Errors (no interface, no privilege)
/// are logged per VIP; the proxy keeps serving. When the node is in a Raft group, its
/// VIPs are fenced by leases committed through it. None when no VIP is configured.
pub fn start(configs: &[VipConfig], shared: Arc<crate::shared::Shared>) -> std::io::Result<Option<Arc<Vips>>> {
    let fence = shared.pair.as_ref().map(|p| p.leases.clone());
    let fenced = fence.is_some();
    if configs.is_empty() {
        return Ok(None);
    }
    if let Err(e) = start_guard(configs) {
        tracing::warn!(error = %e, "VIP guard not started: after a crash the VIPs stay on the interface until their lifetime runs out or `tandem release-vips` runs");
    }
    let (control, rx) = tokio::sync::watch::channel(Control::Run);
    let routers: Vec<_> = configs
        .iter()
        .map(|c| (c.clone(), Arc::new(VipStats::default())))
        .collect();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let work = routers.clone();
    std::thread::Builder::new().name("vrrp".into()).spawn(move || {
        // Adverts must not wait behind busy workers: a late advert is a lost advert to the
        // peer. Raise this thread's priority when allowed (root or CAP_SYS_NICE).
        if !tandem_ha::raise_thread_priority() {
            tracing::debug!("VRRP thread keeps the default priority (no CAP_SYS_NICE)");
        }
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the VRRP runtime");
                return;
            }
        };
        rt.block_on(async move {
            let mut tasks = Vec::new();
            let mut groups = sync_groups(work.iter().map(|(c, _)| c));
            for (cfg, stats) in work {
                let sync = cfg
                    .sync_group
                    .as_ref()
                    .and_then(|g| groups.get_mut(g.as_str()))
                    .and_then(|members| members.pop());
                let (rx, fence) = (rx.clone(), fence.clone());
                let (prio_tx, prio_rx) = tokio::sync::watch::channel(cfg.priority);
                if crate::cluster::vip_trackers::any(&cfg) {
                    tokio::spawn(crate::cluster::vip_trackers::track(
                        cfg.clone(),
                        shared.clone(),
                        prio_tx,
                    ));
                }
                tasks.push(tokio::spawn(async move {
                    let name = cfg.name.clone();
                    if let Err(e) = router::run(cfg, stats, rx, prio_rx, fence, sync).await {
                        tracing::error!(vip = %name, error = %e, "virtual router stopped");
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
        let _ = done_tx.send(());
    })?;
    Ok(Some(Arc::new(Vips {
        routers,
        control,
        done: std::sync::Mutex::new(Some(done_rx)),
        fenced,
    })))
}

/// One member handle per VIP of each sync group, by group name (popped in any order:
/// members are interchangeable).
fn sync_groups<'a>(
    configs: impl Iterator<Item = &'a VipConfig>,
) -> std::collections::HashMap<String, Vec<tandem_ha::vip::sync_group::SyncMember>> {
    let mut sizes: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for c in configs {
        if let Some(g) = &c.sync_group {
            *sizes.entry(g.clone()).or_default() += 1;
        }
    }
    sizes
        .into_iter()
        .map(|(name, n)| {
            let g = tandem_ha::vip::sync_group::SyncGroup::new(&name, n);
            (name, (0..n).map(|i| g.member(i)).collect())
        })
        .collect()
}

impl Vips {
    /// Maintenance on: release every VIP with priority 0 and stay out; off: rejoin.
    pub fn set_maintenance(&self, on: bool) {
        let _ = self.control.send(if on { Control::Release } else { Control::Run });
    }

    /// Whether maintenance is on.
    pub fn in_maintenance(&self) -> bool {
        *self.control.borrow() == Control::Release
    }

    /// Whether this node is master of any VIP (holds addresses clients reach).
    pub fn holds_any(&self) -> bool {
        self.routers.iter().any(|(_, s)| s.is_master())
    }

    /// Releases every VIP (the peer takes over at once) and waits up to `limit`.
    pub fn stop(&self, limit: Duration) {
        let _ = self.control.send(Control::Stop);
        if let Some(rx) = self.done.lock().ok().and_then(|mut d| d.take()) {
            let _ = rx.recv_timeout(limit);
        }
    }

    /// JSON for `/status`.
    pub fn status_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.routers
                .iter()
                .map(|(c, s)| {
                    serde_json::json!({
                        "name": c.name,
                        "interface": c.interface,
                        "address_interface": c.address_interface(),
                        "vrrp_version": if c.version == tandem_ha::vip::packet::Version::V2 { 2 } else { 3 },
                        "sync_group": c.sync_group,
                        "vrid": c.vrid,
                        "priority": c.priority,
                        "addresses": c.addresses.iter().map(|(a, p)| format!("{a}/{p}")).collect::<Vec<_>>(),
                        "state": state_name(s.state.load(Relaxed)),
                        "priority_now": s.priority.load(Relaxed),
                        "maintenance": self.in_maintenance(),
                        "adverts_sent": s.adverts_sent.load(Relaxed),
                        "adverts_received": s.adverts_received.load(Relaxed),
                        "became_master": s.became_master.load(Relaxed),
                        "fenced": self.fenced,
                        "lease_refused": s.lease_refused.load(Relaxed),
                        "lease_lost": s.lease_lost.load(Relaxed),
                        "no_quorum": s.no_quorum.load(Relaxed),
                        "faults": s.faults.load(Relaxed),
                    })
                })
                .collect(),
        )
    }

    /// Appends the VIP families to a Prometheus exposition.
    pub fn render(&self, out: &mut String) {
        crate::exposition::gauge(
            out,
            "tandem_vip_state",
            "VRRP state per VIP (0 initialize, 1 backup, 2 master, 3 fault: interface down).",
        );
        for (c, s) in &self.routers {
            let _ = writeln!(
                out,
                "tandem_vip_state{{vip=\"{}\",vrid=\"{}\"}} {}",
                c.name,
                c.vrid,
                s.state.load(Relaxed)
            );
        }
        crate::exposition::gauge(
            out,
            "tandem_vip_priority",
            "Priority in use per VIP (lowered by tracking).",
        );
        for (c, s) in &self.routers {
            let _ = writeln!(
                out,
                "tandem_vip_priority{{vip=\"{}\"}} {}",
                c.name,
                s.priority.load(Relaxed)
            );
        }
        crate::exposition::counter(out, "tandem_vip_events_total", "VRRP events per VIP.");
        for (c, s) in &self.routers {
            for (ev, v) in [
                ("advert_sent", &s.adverts_sent),
                ("advert_received", &s.adverts_received),
                ("became_master", &s.became_master),
                ("garp", &s.garps),
                ("lease_refused", &s.lease_refused),
                ("lease_lost", &s.lease_lost),
                ("lease_yielded", &s.lease_yielded),
                ("no_quorum", &s.no_quorum),
                ("fault", &s.faults),
            ] {
                let _ = writeln!(
                    out,
                    "tandem_vip_events_total{{vip=\"{}\",event=\"{ev}\"}} {}",
                    c.name,
                    v.load(Relaxed)
                );
            }
        }
        crate::exposition::counter(
            out,
            "tandem_vip_adverts_dropped_total",
            "Malformed, foreign or refused adverts dropped, by reason.",
        );
        for (c, s) in &self.routers {
            for (i, reason) in router::DROP_REASONS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "tandem_vip_adverts_dropped_total{{vip=\"{}\",reason=\"{reason}\"}} {}",
                    c.name,
                    s.dropped[i].load(Relaxed)
                );
            }
        }
    }
}

/// Starts the VIP guard: a child process (`tandem guard-vips`) that waits on a pipe from
/// this process and removes every VIP address from its interface the moment the pipe
/// closes, that is when this process ends, however it ends (kill -9 and crashes
/// included). Without it a dead holder's kernel keeps answering ARP for the VIP until
/// the address lifetime runs out (seconds), while the peer already holds it.
fn start_guard(configs: &[VipConfig]) -> std::io::Result<()> {
    let mut args = vec![std::ffi::OsString::from("guard-vips")];
    for c in configs {
        for (a, p) in &c.addresses {
            args.push(format!("{}={a}/{p}", c.address_interface()).into());
        }
    }
    crate::cluster::guard::start(&args)
}

/// The guard's side (`tandem guard-vips IF=ADDR/PREFIX...`): waits until its standard
/// input closes, then removes each address. Signals that stop the proxy (a terminal's
/// Ctrl-C reaches the whole process group) are ignored: the guard ends only after its
/// work.
pub fn guard(vips: &[String]) -> std::process::ExitCode {
    let mut parsed = Vec::new();
    for spec in vips {
        let parsed_one = spec.split_once('=').and_then(|(iface, net)| {
            let (addr, prefix) = net.split_once('/')?;
            Some((
                iface.to_string(),
                addr.parse::<std::net::IpAddr>().ok()?,
                prefix.parse::<u8>().ok()?,
            ))
        });
        match parsed_one {
            Some(p) => parsed.push(p),
            None => {
                eprintln!("tandem guard-vips: `{spec}` is not INTERFACE=ADDRESS/PREFIX");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    crate::cluster::guard::wait_for_parent_exit();
    let mut failed = false;
    for (iface, addr, prefix) in parsed {
        let Some(index) = tandem_ha::vip::net::interface_index(&iface) else {
            continue;
        };
        if let Err(e) = tandem_ha::vip::net::remove_address(index, addr, prefix) {
            eprintln!("tandem guard-vips: {addr}/{prefix} on {iface}: {e}");
            failed = true;
        }
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

fn state_name(code: u8) -> &'static str {
    match code {
        3 => "fault",
        2 => "master",
        1 => "backup",
        _ => "initialize",
    }
}
