//! What moves a VIP's priority besides its configuration (keepalived's trackers):
//! clusters without a usable endpoint, interfaces down, failing scripts and the integers
//! of tracked files. Evaluated every [`EVERY`] on the VRRP thread; scripts run on
//! threads of their own, so a slow one never delays an advert.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_ha::vip::router::{TrackScript, VipConfig};

/// How often the priority is recomputed.
pub const EVERY: Duration = Duration::from_millis(100);

/// Whether `cfg` tracks anything.
pub fn any(cfg: &VipConfig) -> bool {
    !cfg.track_clusters.is_empty()
        || !cfg.track_interfaces.is_empty()
        || !cfg.track_scripts.is_empty()
        || !cfg.track_files.is_empty()
}

/// Keeps `tx` at the priority in use: the configured one, lowered by `track_weight`
/// while a tracked cluster has no endpoint that takes traffic and again while a tracked
/// interface is down, by each failing script's weight, plus each tracked file's integer;
/// within 1–254 (an owner's 255 stays).
pub async fn track(cfg: VipConfig, shared: Arc<crate::control::Shared>, tx: tokio::sync::watch::Sender<u8>) {
    let scripts: Vec<(u8, Arc<AtomicBool>)> = cfg
        .track_scripts
        .iter()
        .map(|s| (s.weight, start_script(&cfg.name, s.clone())))
        .collect();
    loop {
        let rt = shared.runtime.load();
        let now = crate::balancer::p2c_ewma::now_ns();
        let cluster_down = cfg.track_clusters.iter().any(|name| {
            rt.cluster_named(name)
                .is_some_and(|c| !c.endpoints.iter().any(|e| e.stats.health.eligible(now)))
        });
        let interface_down = cfg.track_interfaces.iter().any(|i| !tandem_ha::vip::net::link_up(i));
        let mut p = i64::from(cfg.priority);
        for (down, weight) in [(cluster_down, cfg.track_weight), (interface_down, cfg.track_weight)] {
            if down {
                p -= i64::from(weight);
            }
        }
        for (weight, failing) in &scripts {
            if failing.load(Relaxed) {
                p -= i64::from(*weight);
            }
        }
        for f in &cfg.track_files {
            p += file_value(f);
        }
        let p = if cfg.priority == 255 {
            255
        } else {
            p.clamp(1, 254) as u8
        };
        tx.send_if_modified(|cur| std::mem::replace(cur, p) != p);
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// The integer in a tracked file (keepalived's `track_file`, weight 1): 0 when the file is
/// missing or holds no integer.
fn file_value(path: &Path) -> i64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse::<i64>().ok())
        .unwrap_or(0)
        .clamp(-254, 254)
}

/// Runs `script` every `interval` on a thread of its own; the flag says whether it is
/// failing (`fall` failures in a row; good again after `rise` successes). It starts good.
fn start_script(vip: &str, script: TrackScript) -> Arc<AtomicBool> {
    let failing = Arc::new(AtomicBool::new(false));
    let flag = failing.clone();
    let vip = vip.to_string();
    let spawned = std::thread::Builder::new().name("track-script".into()).spawn(move || {
        let (mut good_run, mut bad_run) = (0u32, 0u32);
        loop {
            let started = Instant::now();
            if run_once(&script) {
                good_run += 1;
                bad_run = 0;
                if flag.load(Relaxed) && good_run >= script.rise {
                    flag.store(false, Relaxed);
                    tracing::info!(vip = %vip, command = %script.command, "track script succeeds again: priority restored");
                }
            } else {
                bad_run += 1;
                good_run = 0;
                if !flag.load(Relaxed) && bad_run >= script.fall {
                    flag.store(true, Relaxed);
                    tracing::warn!(vip = %vip, command = %script.command, weight = script.weight, "track script failing: priority lowered");
                }
            }
            std::thread::sleep(script.interval.saturating_sub(started.elapsed()));
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a track script's thread");
    }
    failing
}

/// One run: `/bin/sh -c COMMAND` in a process group of its own, killed (the whole group)
/// after `timeout`; whether it exited with status 0.
fn run_once(script: &TrackScript) -> bool {
    use std::os::unix::process::CommandExt;
    let child = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&script.command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn();
    let Ok(mut child) = child else { return false };
    let deadline = Instant::now() + script.timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                // SAFETY: signals the group this child leads; no memory is touched.
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                let _ = child.wait();
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(command: &str, timeout_ms: u64) -> TrackScript {
        TrackScript {
            command: command.into(),
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(timeout_ms),
            rise: 1,
            fall: 1,
            weight: 50,
        }
    }

    #[test]
    fn a_script_succeeds_by_exit_status_and_a_slow_one_is_killed_as_a_failure() {
        assert!(run_once(&script("exit 0", 1000)));
        assert!(!run_once(&script("exit 3", 1000)));
        let t = Instant::now();
        assert!(!run_once(&script("sleep 5; exit 0", 200)));
        assert!(t.elapsed() < Duration::from_secs(2), "the slow script was not killed");
    }

    #[test]
    fn a_tracked_file_adds_its_integer() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("weight");
        assert_eq!(file_value(&f), 0, "missing");
        std::fs::write(&f, "-60\n").unwrap();
        assert_eq!(file_value(&f), -60);
        std::fs::write(&f, "junk").unwrap();
        assert_eq!(file_value(&f), 0);
    }
}
