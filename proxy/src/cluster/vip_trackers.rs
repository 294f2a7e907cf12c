//! What moves a VIP's priority besides its configuration (keepalived's trackers):
//! clusters without a usable endpoint, interfaces down, failing scripts, processes not
//! running and the integers of tracked files. Evaluated every [`EVERY`] on the VRRP
//! thread; scripts and the process table scan run on threads of their own, so a slow
//! one never delays an advert.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_ha::vip::router::{TrackProcess, TrackScript, VipConfig};

/// How often the priority is recomputed.
pub const EVERY: Duration = Duration::from_millis(100);

/// Whether `cfg` tracks anything.
pub fn any(cfg: &VipConfig) -> bool {
    !cfg.track_clusters.is_empty()
        || !cfg.track_interfaces.is_empty()
        || !cfg.track_scripts.is_empty()
        || !cfg.track_files.is_empty()
        || !cfg.track_processes.is_empty()
}

/// Keeps `tx` at the priority in use: the configured one, lowered by `track_weight`
/// while a tracked cluster has no endpoint that takes traffic and again while a tracked
/// interface is down, by each failing script's weight, plus each tracked file's integer;
/// within 1–254 (an owner's 255 stays).
pub async fn track(cfg: VipConfig, shared: Arc<crate::shared::Shared>, tx: tokio::sync::watch::Sender<u8>) {
    let scripts: Vec<(u8, Arc<AtomicBool>)> = cfg
        .track_scripts
        .iter()
        .map(|s| (s.weight, start_script(&cfg.name, s.clone())))
        .chain(start_processes(&cfg.name, &cfg.track_processes))
        .collect();
    loop {
        let rt = shared.runtime.load();
        let now = crate::clock::now_ns();
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

/// How often the process table is scanned for tracked processes.
const PROCESS_SCAN_EVERY: Duration = Duration::from_millis(200);

/// Watches the tracked processes on one thread: (weight, missing) per process, where
/// missing means fewer than its quorum have run for its whole `delay`.
fn start_processes(vip: &str, tracked: &[TrackProcess]) -> Vec<(u8, Arc<AtomicBool>)> {
    if tracked.is_empty() {
        return Vec::new();
    }
    if std::fs::metadata("/proc/1").is_err() {
        tracing::warn!(
            vip = %vip,
            "/proc shows only this user's processes (hidepid; systemd's ProtectProc=invisible): a tracked process \
             of another user counts as not running. Add a drop-in with ProtectProc=default (README, Floating VIPs)"
        );
    }
    let flags: Vec<Arc<AtomicBool>> = tracked.iter().map(|_| Arc::new(AtomicBool::new(false))).collect();
    let out = tracked.iter().map(|t| t.weight).zip(flags.iter().cloned()).collect();
    let (vip, tracked) = (vip.to_string(), tracked.to_vec());
    let spawned = std::thread::Builder::new().name("track-process".into()).spawn(move || {
        // Since when each process's count has disagreed with its flag.
        let mut since: Vec<Option<Instant>> = vec![None; tracked.len()];
        loop {
            let table = processes();
            for (i, t) in tracked.iter().enumerate() {
                let running = table.iter().filter(|p| p.matches(t)).count() as u32;
                let missing = running < t.quorum;
                if missing == flags[i].load(Relaxed) {
                    since[i] = None;
                    continue;
                }
                let at = *since[i].get_or_insert_with(Instant::now);
                if at.elapsed() >= t.delay {
                    flags[i].store(missing, Relaxed);
                    since[i] = None;
                    if missing {
                        tracing::warn!(vip = %vip, process = %t.name, running, quorum = t.quorum, weight = t.weight, "tracked process not running: priority lowered");
                    } else {
                        tracing::info!(vip = %vip, process = %t.name, running, "tracked process running again: priority restored");
                    }
                }
            }
            std::thread::sleep(PROCESS_SCAN_EVERY);
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the process tracker's thread");
    }
    out
}

/// One process of the table: its name and its command line.
struct Process {
    comm: String,
    cmdline: String,
}

impl Process {
    fn matches(&self, t: &TrackProcess) -> bool {
        if t.full_command {
            self.cmdline.starts_with(&t.name) && self.cmdline[t.name.len()..].chars().next().is_none_or(|c| c == ' ')
        } else {
            self.comm == t.name
        }
    }
}

/// Every process's name and command line from `/proc` (zombies and kernel threads,
/// which have no command line, are left out).
fn processes() -> Vec<Process> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let name = e.file_name();
        if !name.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let base = e.path();
        let Ok(raw) = std::fs::read(base.join("cmdline")) else {
            continue;
        };
        if raw.is_empty() {
            continue;
        }
        let cmdline = String::from_utf8_lossy(raw.strip_suffix(&[0]).unwrap_or(&raw)).replace('\0', " ");
        let comm = std::fs::read_to_string(base.join("comm"))
            .map(|c| c.trim_end().to_string())
            .unwrap_or_default();
        out.push(Process { comm, cmdline });
    }
    out
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
    fn a_process_is_found_by_its_name_or_the_start_of_its_command_line() {
        let mut child = std::process::Command::new("sleep").arg("7.25").spawn().unwrap();
        let track = |name: &str, full_command: bool| TrackProcess {
            name: name.into(),
            full_command,
            quorum: 1,
            weight: 10,
            delay: Duration::ZERO,
        };
        let t = Instant::now();
        let count = |t: &TrackProcess| processes().iter().filter(|p| p.matches(t)).count();
        while count(&track("sleep 7.25", true)) == 0 {
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "the child's command line is not seen"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(count(&track("sleep", false)) >= 1);
        assert_eq!(
            count(&track("sleep 7.2", true)),
            0,
            "a prefix ends at an argument boundary"
        );
        assert_eq!(count(&track("sleep 7.25", false)), 0, "a name is not a command line");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(count(&track("sleep 7.25", true)), 0);
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
