//! Accepting a TLS connection on a terminating listener. The ClientHello's first read
//! happens here rather than in rustls, so the listener's config can be chosen from it
//! ([`ServerTls`]: fewer tickets when the client offers a session). The bytes read are
//! handed to the session as they are: no extra syscall, nothing read twice.

use std::io;

use tokio_rustls::server::TlsStream;
use tokio_rustls::{Accept, TlsAcceptor};

use super::client_hello::offers_session;
use super::ServerTls;
use crate::send_batch::BatchedStream;

/// The first read's size: a ClientHello with a post-quantum key share and a ticket is
/// under 2 KiB. A longer one is read on by rustls (and gets the full config).
const FIRST_READ: usize = 4096;

/// Runs the TLS handshake on `stream` with the config its ClientHello calls for.
/// Unbounded in time: callers give it the listener's `header_read_timeout`.
pub(crate) async fn accept(mut stream: BatchedStream, tls: &ServerTls) -> io::Result<TlsStream<BatchedStream>> {
    loop {
        stream.readable().await?;
        match start(stream, tls) {
            Ok(handshake) => return handshake.await,
            Err((s, e)) if e.kind() == io::ErrorKind::WouldBlock => stream = s,
            Err((_, e)) => return Err(e),
        }
    }
}

/// Reads what has arrived of the ClientHello, picks the config and starts the
/// handshake with those bytes already in the session. A function of its own so the
/// read buffer lives on the stack, never in the connection's task.
fn start(stream: BatchedStream, tls: &ServerTls) -> Result<Accept<BatchedStream>, (BatchedStream, io::Error)> {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); FIRST_READ];
    let first = match stream.try_read_uninit(&mut buf) {
        Ok([]) => return Err((stream, io::ErrorKind::UnexpectedEof.into())),
        Ok(first) => first,
        Err(e) => return Err((stream, e)),
    };
    let config = if offers_session(first) { &tls.resumed } else { &tls.full };
    Ok(TlsAcceptor::from(config.clone()).accept_with(stream, |session| {
        let mut rest = first;
        while !rest.is_empty() {
            match session.read_tls(&mut rest) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // An error stays in the session: the handshake sends its alert and fails.
        let _ = session.process_new_packets();
    }))
}
