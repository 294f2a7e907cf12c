//! The access log: one line per request. The request path only fills an
//! [`AccessRecord`] (cheap clones of shared buffers) and hands it to a bounded channel;
//! a dedicated thread formats and writes. When the writer falls behind, lines are
//! dropped and counted rather than slowing requests.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::{AccessLogTarget, LogFormat};
use crate::stats::StatsRegistry;

/// What is known about a finished request.
#[derive(Debug)]
pub struct AccessRecord {
    /// Wall-clock start.
    pub time: SystemTime,
    /// X-Request-Id.
    pub request_id: Option<http::HeaderValue>,
    /// Client address.
    pub client: SocketAddr,
    /// Method.
    pub method: http::Method,
    /// Host / :authority.
    pub authority: Option<http::HeaderValue>,
    /// Request target.
    pub uri: http::Uri,
    /// HTTP version.
    pub version: http::Version,
    /// Status sent.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// Time to upstream response headers (None when no upstream answered).
    pub upstream_time: Option<Duration>,
    /// Start to last byte (or abort).
    pub duration: Duration,
    /// Route name.
    pub route: Option<Arc<str>>,
    /// Cluster name.
    pub cluster: Option<Arc<str>>,
    /// Endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Upstream attempts made.
    pub attempts: u32,
    /// Termination reason: `ok`, or why it failed (`no-route`, `timeout`, …).
    pub reason: &'static str,
    /// gRPC status from the response headers or trailers.
    pub grpc_status: Option<u16>,
    /// The error underneath an upstream failure (`connection refused`, the HTTP parse
    /// error, the TLS alert), when there was one.
    pub error: Option<Box<str>>,
}

/// What the writer thread receives: records, and the operator's "reopen the file"
/// (SIGUSR1, after logrotate moved it).
#[derive(Debug)]
enum Message {
    /// Boxed from the request's start: the request path moves it from stage to stage
    /// (an allocation per logged request, where the record inline cost every request
    /// 400 bytes more to move, logged or not).
    Record(Box<AccessRecord>),
    Reopen,
}

/// Sender side, cloned into every worker.
#[derive(Clone, Debug)]
pub struct AccessLog {
    tx: Option<SyncSender<Message>>,
    stats: Arc<StatsRegistry>,
}

/// Where lines go; a file can be reopened under its path.
enum Sink {
    Stream(Box<dyn Write + Send>),
    File(std::path::PathBuf, std::fs::File),
}

impl Sink {
    fn open(path: &std::path::Path) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stream(w) => w,
            Sink::File(_, f) => f,
        }
    }
}

impl AccessLog {
    /// Starts the writer thread for `target` (or a no-op log for `Off`). The error of a
    /// file that cannot be opened names the file.
    pub fn start(target: &AccessLogTarget, format: LogFormat, stats: Arc<StatsRegistry>) -> std::io::Result<AccessLog> {
        let out = match target {
            AccessLogTarget::Off => return Ok(AccessLog { tx: None, stats }),
            AccessLogTarget::Stdout => Sink::Stream(Box::new(std::io::stdout())),
            AccessLogTarget::Stderr => Sink::Stream(Box::new(std::io::stderr())),
            AccessLogTarget::File(p) => Sink::File(p.clone(), Sink::open(p)?),
        };
        let (tx, rx) = sync_channel(16 * 1024);
        let writer_stats = stats.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx, out, format, writer_stats))?;
        Ok(AccessLog { tx: Some(tx), stats })
    }

    /// Whether records are wanted (lets the request path skip building one).
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues a record without blocking.
    pub fn log(&self, rec: Box<AccessRecord>) {
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_)) = tx.try_send(Message::Record(rec)) {
                self.stats
                    .process
                    .access_log_dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Asks the writer to close the file and open its path again (after logrotate
    /// renamed it); lines queued before are written to the old file. Waits for room in
    /// the queue: called from the control thread, never from the request path.
    pub fn reopen(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Message::Reopen);
        }
    }
}

fn writer(rx: Receiver<Message>, mut out: Sink, format: LogFormat, stats: Arc<StatsRegistry>) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut line = String::with_capacity(512);
    while let Ok(msg) = rx.recv() {
        let mut next = Some(msg);
        while let Some(msg) = next {
            match msg {
                Message::Record(rec) => {
                    line.clear();
                    match format {
                        LogFormat::Json => json_line(&mut line, &rec),
                        LogFormat::Text => text_line(&mut line, &rec),
                    }
                    buf.extend_from_slice(line.as_bytes());
                    if buf.len() >= 64 * 1024 {
                        let _ = out.writer().write_all(&buf);
                        buf.clear();
                    }
                }
                Message::Reopen => {
                    let _ = out.writer().write_all(&buf);
                    buf.clear();
                    reopen(&mut out, &stats);
                }
            }
            next = rx.try_recv().ok();
        }
        let _ = out.writer().write_all(&buf);
        buf.clear();
        let _ = out.writer().flush();
    }
}

/// Reopens a file sink under its path; on failure keeps writing to the open file
/// (nothing is lost) and says why.
fn reopen(out: &mut Sink, stats: &StatsRegistry) {
    let Sink::File(path, file) = out else { return };
    let _ = file.flush();
    match Sink::open(path) {
        Ok(f) => {
            *file = f;
            stats
                .process
                .access_log_reopens
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(path = %path.display(), "access log reopened");
        }
        Err(e) => {
            stats
                .process
                .access_log_reopen_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!("access log: cannot reopen ({e}); still writing to the file open before");
        }
    }
}

fn json_line(out: &mut String, r: &AccessRecord) {
    use std::fmt::Write as _;
    let s = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| "\"\"".into());
    let _ = writeln!(
        out,
        "{{\"time\":\"{}\",\"request_id\":{},\"client\":\"{}\",\"method\":{},\"authority\":{},\"path\":{},\"protocol\":\"{:?}\",\"status\":{},\"bytes\":{},\"upstream_ms\":{},\"duration_ms\":{:.3},\"route\":{},\"cluster\":{},\"endpoint\":{},\"attempts\":{},\"reason\":\"{}\",\"grpc_status\":{},\"error\":{}}}",
        humantime::format_rfc3339_millis(r.time),
        s(r.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("")),
        r.client,
        s(r.method.as_str()),
        r.authority.as_ref().and_then(|a| a.to_str().ok()).map_or("null".into(), s),
        s(r.uri.path_and_query().map_or("/", |p| p.as_str())),
        r.version,
        r.status,
        r.bytes,
        r.upstream_time.map_or("null".into(), |d| format!("{:.3}", d.as_secs_f64() * 1e3)),
        r.duration.as_secs_f64() * 1e3,
        r.route.as_deref().map_or("null".into(), s),
        r.cluster.as_deref().map_or("null".into(), s),
        r.endpoint.map_or("null".into(), |e| format!("\"{e}\"")),
        r.attempts,
        r.reason,
        r.grpc_status.map_or("null".into(), |g| g.to_string()),
        r.error.as_deref().map_or("null".into(), s),
    );
}

/// The text format's last field: ` error="…"` after a failure with a cause, else nothing.
struct ErrorSuffix<'a>(Option<&'a str>);

impl std::fmt::Display for ErrorSuffix<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(e) => write!(f, " error={e:?}"),
            None => Ok(()),
        }
    }
}

fn text_line(out: &mut String, r: &AccessRecord) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "{} {} {} \"{} {} {:?}\" {} {} {:.3}ms {} {} {} {} {}{}",
        humantime::format_rfc3339_millis(r.time),
        r.client,
        r.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
        r.method,
        r.uri.path_and_query().map_or("/", |p| p.as_str()),
        r.version,
        r.status,
        r.bytes,
        r.duration.as_secs_f64() * 1e3,
        r.route.as_deref().unwrap_or("-"),
        r.cluster.as_deref().unwrap_or("-"),
        r.endpoint.map_or("-".into(), |e| e.to_string()),
        r.attempts,
        r.reason,
        ErrorSuffix(r.error.as_deref()),
    );
}
