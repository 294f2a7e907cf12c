//! The standard `process_*` series (as every Prometheus client library exports them),
//! `tandem_build_info`, and certificate expiry: read from /proc and the configuration
//! at scrape time, off the request path.

use std::fmt::Write as _;

/// Appends `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
/// `process_threads` and `process_start_time_seconds`.
pub fn render_process(out: &mut String) {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as f64;
    if let Some(stat) = ProcStat::read() {
        gauge_line(
            out,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            (stat.utime + stat.stime) as f64 / ticks,
        );
        gauge_line(
            out,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            stat.vsize as f64,
        );
        gauge_line(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            stat.rss_pages as f64 * page,
        );
        gauge_line(
            out,
            "process_threads",
            "gauge",
            "Number of OS threads.",
            stat.threads as f64,
        );
        if let Some(boot) = boot_time() {
            gauge_line(
                out,
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                boot as f64 + stat.start_ticks as f64 / ticks,
            );
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge_line(
            out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds.count() as f64,
        );
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        gauge_line(
            out,
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            lim.rlim_cur as f64,
        );
    }
}

/// Appends `tandem_build_info{version=…} 1`.
pub fn render_build_info(out: &mut String) {
    crate::exposition::gauge(out, "tandem_build_info", "Tandem's version (the value is always 1).");
    let _ = writeln!(
        out,
        "tandem_build_info{{version=\"{}\",profile=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
}

/// Appends `tandem_tls_certificate_expiry_timestamp_seconds{used_by, path}` for every
/// certificate the node presents (listeners, peer transport).
pub fn render_certificates(out: &mut String, certs: &[crate::runtime::CertificateExpiry]) {
    if certs.is_empty() {
        return;
    }
    crate::exposition::gauge(
        out,
        "tandem_tls_certificate_expiry_timestamp_seconds",
        "When a certificate this node presents expires (notAfter, Unix seconds).",
    );
    for c in certs {
        let _ = writeln!(
            out,
            "tandem_tls_certificate_expiry_timestamp_seconds{{used_by=\"{}\",path=\"{}\"}} {}",
            escape(&c.used_by),
            escape(&c.path.display().to_string()),
            c.not_after
        );
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// One unlabelled series with its HELP and TYPE lines (`kind`: counter or gauge).
fn gauge_line(out: &mut String, name: &str, kind: &str, help: &str, v: f64) {
    if kind == "counter" {
        crate::exposition::counter(out, name, help);
    } else {
        crate::exposition::gauge(out, name, help);
    }
    let _ = writeln!(out, "{name} {v}");
}

/// The fields of /proc/self/stat used here.
struct ProcStat {
    utime: u64,
    stime: u64,
    threads: u64,
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

impl ProcStat {
    fn read() -> Option<ProcStat> {
        let text = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) is in parentheses and may hold spaces: fields are
        // counted after its closing parenthesis, which is field 3 ("state").
        let rest = &text[text.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let at = |n: usize| f.get(n - 3).and_then(|s| s.parse::<u64>().ok());
        Some(ProcStat {
            utime: at(14)?,
            stime: at(15)?,
            threads: at(20)?,
            start_ticks: at(22)?,
            vsize: at(23)?,
            rss_pages: at(24)?,
        })
    }
}

fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn process_series_are_present_and_plausible() {
        let mut out = String::new();
        super::render_process(&mut out);
        let value = |name: &str| -> f64 {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing in {out}"))
                .parse()
                .unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_threads") >= 1.0);
        let start = value("process_start_time_seconds");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(start <= now + 1.0 && start > now - 3600.0, "start {start} now {now}");
    }
}
