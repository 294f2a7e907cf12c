//! Framing for everything that crosses between nodes and onto disk: a 4-byte big-endian
//! length, then a bincode 2 (serde) body. Frames over 64 MiB are refused.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted.
pub const MAX_FRAME: usize = 64 << 20;

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

/// Decodes a bincode 2 body.
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, WireError> {
    bincode::serde::decode_from_slice(b, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| WireError::Decode(e.to_string()))
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
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    decode(&body)
}
