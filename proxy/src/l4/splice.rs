//! Copying bytes both ways between two streams, as an L4 proxy does (and an upgraded
//! HTTP connection): half-close passed on, an idle timeout, an optional maximum age,
//! and (for filtered connections) the bytes passed through the filters' callbacks.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Copies both ways, reading up to `buffer` bytes at once in each direction, until both
/// directions are done (a half-close is passed on and the other direction continues),
/// the connection is idle for `idle`, or it is older than `max_age`. Returns (bytes
/// client→upstream, bytes upstream→client).
pub(crate) async fn splice<A, B>(a: A, b: B, buffer: usize, idle: Duration, max_age: Option<Duration>) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let last = Rc::new(Cell::new(Instant::now()));
    let mut a = Active {
        io: a,
        last: last.clone(),
    };
    let mut b = Active {
        io: b,
        last: last.clone(),
    };
    let born = Instant::now();
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, buffer, buffer);
    tokio::pin!(copy);
    loop {
        let idle_at = last.get() + idle;
        let deadline = max_age.map_or(idle_at, |m| idle_at.min(born + m));
        tokio::select! {
            r = &mut copy => return r.unwrap_or((0, 0)),
            _ = tokio::time::sleep_until(deadline.into()) => {
                let now = Instant::now();
                if max_age.is_some_and(|m| now >= born + m) || now >= last.get() + idle {
                    return (0, 0);
                }
            }
        }
    }
}

/// Like [`splice`], with the listener's network filters seeing (and possibly changing,
/// holding or refusing) the bytes each way.
pub(crate) async fn splice_filtered<A, B>(
    a: A,
    b: B,
    mut chain: crate::wasm::l4::NetChain,
    idle: Duration,
    max_age: Option<Duration>,
) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    use crate::wasm::l4::Data;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let mut abuf = vec![0u8; 16 << 10];
    let mut bbuf = vec![0u8; 16 << 10];
    let (mut a_open, mut b_open) = (true, true);
    let (mut up, mut down) = (0u64, 0u64);
    let born = Instant::now();
    let mut last = Instant::now();
    loop {
        if !a_open && !b_open {
            break;
        }
        let deadline = max_age.map_or(last + idle, |m| (last + idle).min(born + m));
        // (to upstream?, outcome, eos)
        let (to_upstream, outcome, eos) = tokio::select! {
            r = ar.read(&mut abuf), if a_open => {
                let n = r.unwrap_or(0);
                last = Instant::now();
                (true, chain.on_data(false, &abuf[..n], n == 0), n == 0)
            }
            r = br.read(&mut bbuf), if b_open => {
                let n = r.unwrap_or(0);
                last = Instant::now();
                (false, chain.on_data(true, &bbuf[..n], n == 0), n == 0)
            }
            (from_upstream, d) = chain.resumed(), if chain.is_waiting() => (!from_upstream, d, false),
            _ = tokio::time::sleep_until(deadline.into()) => break,
        };
        match outcome {
            Data::Close => break,
            Data::Hold => {}
            Data::Forward(bytes) if !bytes.is_empty() => {
                let written = if to_upstream {
                    up += bytes.len() as u64;
                    bw.write_all(&bytes).await
                } else {
                    down += bytes.len() as u64;
                    aw.write_all(&bytes).await
                };
                if written.is_err() {
                    break;
                }
            }
            Data::Forward(_) => {}
        }
        if eos {
            if to_upstream {
                let _ = bw.shutdown().await;
                a_open = false;
                chain.on_close(false, 2);
            } else {
                let _ = aw.shutdown().await;
                b_open = false;
                chain.on_close(true, 2);
            }
        }
    }
    (up, down)
}

/// Records the time of the last byte moved in either direction.
struct Active<T> {
    io: T,
    last: Rc<Cell<Instant>>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.set(Instant::now());
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
