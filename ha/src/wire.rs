//! Framing for everything that crosses between nodes and onto disk: a 4-byte big-endian
//! length, then a bincode 2 (serde) body. Frames over [`MAX_FRAME`] are refused, and a
//! frame's buffer grows with the bytes that actually arrive (never to the length a peer
//! claims up front), so a peer that announces a large frame and sends nothing costs
//! nothing.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted. The largest legitimate frames are snapshot chunks (openraft
/// sends them in 3 MiB pieces) and log batches (bounded by
/// `MAX_BATCH_CHANGES` (node.rs) changes per entry and a few entries per append).
pub const MAX_FRAME: usize = 16 << 20;

/// Bytes read at a time into a frame's buffer.
const READ_STEP: usize = 64 << 10;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Socket or file error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Bytes that do not decode.
    #[error("malformed frame: {0}")]
    Decode(String),
    /// A value that does not encode.
    #[error("cannot encode: {0}")]
    Encode(String),
    /// Length over [`MAX_FRAME`].
    #[error("frame of {0} bytes is too large")]
    TooLarge(usize),
}

/// Encodes `v` with bincode 2.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, WireError> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).map_err(|e| WireError::Encode(e.to_string()))
}

/// Decodes a bincode 2 body of at most [`MAX_FRAME`] bytes (a frame, a log entry).
/// The limit also bounds what a length field may claim, so bytes that announce a huge
/// collection are refused instead of allocated for.
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, WireError> {
    if b.len() > MAX_FRAME {
        return Err(WireError::TooLarge(b.len()));
    }
    bincode::serde::decode_from_slice(b, bincode::config::standard().with_limit::<MAX_FRAME>())
        .map(|(v, _)| v)
        .map_err(|e| WireError::Decode(e.to_string()))
}

/// Largest snapshot decoded (a snapshot travels in chunks, so it may exceed a frame).
pub const MAX_SNAPSHOT: usize = 1 << 30;

/// Decodes a snapshot (assembled from chunks, or read from disk) of at most
/// [`MAX_SNAPSHOT`] bytes, with what length fields may claim bounded the same way. The
/// value must take every byte (so a snapshot of another format version is refused
/// rather than half-read).
pub fn decode_snapshot<T: DeserializeOwned>(b: &[u8]) -> Result<T, WireError> {
    if b.len() > MAX_SNAPSHOT {
        return Err(WireError::TooLarge(b.len()));
    }
    let (v, used) = bincode::serde::decode_from_slice(b, bincode::config::standard().with_limit::<MAX_SNAPSHOT>())
        .map_err(|e| WireError::Decode(e.to_string()))?;
    if used != b.len() {
        return Err(WireError::Decode(format!("{} bytes left over", b.len() - used)));
    }
    Ok(v)
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, v: &T) -> Result<(), WireError> {
    let body = encode(v)?;
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge(body.len()));
    }
    w.write_all(&(body.len() as u32).to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(r: &mut R) -> Result<T, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    let mut body = Vec::with_capacity(len.min(READ_STEP));
    while body.len() < len {
        let want = (len - body.len()).min(READ_STEP);
        let n = (&mut *r).take(want as u64).read_to_end(&mut body).await?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
    decode(&body)
}

/// Splits a frame off the front of `buf`: `Ok(None)` while more bytes are needed. The
/// synchronous twin of [`read_frame`], for parsers that hold bytes already (and fuzzing).
pub fn split_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, WireError> {
    let Some(head) = buf.get(..4) else { return Ok(None) };
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(Some((decode(body)?, 4 + len)))
}
