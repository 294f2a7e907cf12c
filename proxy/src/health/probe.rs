//! One active probe: an HTTP/1.1 request on a fresh connection (judged by status and,
//! optionally, a body substring) or a TCP connect with an optional send/expect.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::CheckKind;

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProbeError {
    /// No connection.
    #[error("connect failed: {0}")]
    Connect(String),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// An answer that does not pass.
    #[error("{0}")]
    Failed(String),
}

/// Probes `addr` once with `kind` within `timeout`.
pub(crate) async fn probe(addr: SocketAddr, kind: &CheckKind, timeout: Duration) -> Result<(), ProbeError> {
    match tokio::time::timeout(timeout, run(addr, kind)).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout),
    }
}

async fn run(addr: SocketAddr, kind: &CheckKind) -> Result<(), ProbeError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| ProbeError::Connect(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    match kind {
        CheckKind::Tcp { send, expect } => {
            if let Some(s) = send {
                stream
                    .write_all(s)
                    .await
                    .map_err(|e| ProbeError::Failed(format!("send: {e}")))?;
            }
            if let Some(want) = expect {
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                while !contains(&got, want) {
                    let n = stream
                        .read(&mut buf)
                        .await
                        .map_err(|e| ProbeError::Failed(format!("read: {e}")))?;
                    if n == 0 || got.len() > 64 * 1024 {
                        return Err(ProbeError::Failed("reply did not contain the expected bytes".into()));
                    }
                    got.extend_from_slice(&buf[..n]);
                }
            }
            Ok(())
        }
        CheckKind::Http {
            method,
            path,
            host,
            expected,
            body_contains,
        } => {
            let (mut tx, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| ProbeError::Failed(e.to_string()))?;
            let driver = tokio::task::spawn_local(conn);
            let host = host.clone().unwrap_or_else(|| addr.to_string());
            let req = http::Request::builder()
                .method(method.clone())
                .uri(path.as_str())
                .header(http::header::HOST, host)
                .header(http::header::USER_AGENT, "tandem-health-check")
                .header(http::header::CONNECTION, "close")
                .body(Empty::new())
                .map_err(|e| ProbeError::Failed(e.to_string()))?;
            let result = async {
                let resp = tx
                    .send_request(req)
                    .await
                    .map_err(|e| ProbeError::Failed(e.to_string()))?;
                let status = resp.status().as_u16();
                if !expected.iter().any(|(a, b)| (*a..=*b).contains(&status)) {
                    return Err(ProbeError::Failed(format!("status {status}")));
                }
                if let Some(needle) = body_contains {
                    let body = Limited::new(resp.into_body(), 64 * 1024)
                        .collect()
                        .await
                        .map_err(|e| ProbeError::Failed(format!("body: {e}")))?
                        .to_bytes();
                    if !contains(&body, needle.as_bytes()) {
                        return Err(ProbeError::Failed(format!("body lacks {needle:?}")));
                    }
                }
                Ok(())
            }
            .await;
            driver.abort();
            result
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}
