//! Cancel-safe framing of the PostgreSQL wire protocol over TCP or TLS.
//!
//! Bytes are read into a buffer owned by the connection; a frame is cut from the buffer only
//! when it is complete. `read_frame` can therefore be cancelled inside `select!` at any point
//! without losing a partial message (the failure mode of `read_exact` in a select loop).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The largest frame we accept. PostgreSQL's messages are at most 1 GiB of data plus headers;
/// anything claiming more is corrupt and must not make us allocate.
const MAX_FRAME_BYTES: usize = (1 << 30) + (1 << 20);

/// How far ahead of the bytes received the buffer may grow for an incomplete frame.
const RESERVE_AHEAD: usize = 1 << 20;

/// A TCP stream, encrypted or not.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One backend message: its type byte and body (without the length word).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// Errors of the framing layer.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("I/O error on the PostgreSQL connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("PostgreSQL closed the connection")]
    Closed,
    #[error("PostgreSQL sent a message of type {tag:?} claiming {len} bytes")]
    BadLength { tag: char, len: i64 },
}

/// A framed connection: the stream plus the read buffer that makes reads cancel-safe.
pub struct Framed {
    stream: Stream,
    read_buf: BytesMut,
    pub(crate) write_buf: BytesMut,
}

impl Framed {
    pub fn new(stream: Stream) -> Self {
        Framed {
            stream,
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: BytesMut::new(),
        }
    }

    /// Cuts one complete frame from the buffer, if there is one.
    pub fn try_frame(buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let tag = buf[0];
        let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        if len < 4 || len as usize > MAX_FRAME_BYTES {
            return Err(WireError::BadLength {
                tag: tag as char,
                len: len.into(),
            });
        }
        let total = 1 + len as usize;
        if buf.len() < total {
            // Grow towards the frame, but never on the length word's word alone: a corrupt
            // length (up to 1 GiB passes the check above) must not allocate before bytes arrive.
            buf.reserve((total - buf.len()).min(RESERVE_AHEAD));
            return Ok(None);
        }
        let mut frame = buf.split_to(total);
        frame.advance(5);
        Ok(Some(Frame {
            tag,
            body: frame.freeze(),
        }))
    }

    /// Reads the next frame. Cancel-safe: dropping the future loses no bytes.
    pub async fn read_frame(&mut self) -> Result<Frame, WireError> {
        loop {
            if let Some(frame) = Self::try_frame(&mut self.read_buf)? {
                return Ok(frame);
            }
            if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                return Err(WireError::Closed);
            }
        }
    }

    /// The next frame if the read buffer already holds all of it; reads nothing.
    pub fn buffered_frame(&mut self) -> Result<Option<Frame>, WireError> {
        Self::try_frame(&mut self.read_buf)
    }

    /// Sends everything in the write buffer. Not cancel-safe: call it outside `select!` arms.
    pub async fn flush(&mut self) -> Result<(), WireError> {
        let buf = self.write_buf.split();
        self.stream.write_all(&buf).await?;
        self.stream.flush().await?;
        Ok(())
    }

    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

#[cfg(test)]
#[path = "wire_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_only_when_complete() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[b'Z', 0, 0, 0, 5]);
        assert_eq!(Framed::try_frame(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"I");
        buf.extend_from_slice(&[b'C', 0, 0]);
        let f = Framed::try_frame(&mut buf).unwrap().unwrap();
        assert_eq!((f.tag, &f.body[..]), (b'Z', &b"I"[..]));
        assert_eq!(
            Framed::try_frame(&mut buf).unwrap(),
            None,
            "partial header stays buffered"
        );
        assert_eq!(buf.len(), 3);
    }

    #[test]
    fn absurd_lengths_are_errors() {
        let mut buf = BytesMut::from(&[b'd', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            Framed::try_frame(&mut buf),
            Err(WireError::BadLength { .. })
        ));
        let mut buf = BytesMut::from(&[b'd', 0, 0, 0, 2][..]);
        assert!(matches!(
            Framed::try_frame(&mut buf),
            Err(WireError::BadLength { .. })
        ));
    }
}
