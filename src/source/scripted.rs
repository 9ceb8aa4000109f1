//! A scripted PostgreSQL walsender for unit tests of the loops: it listens on loopback, accepts
//! one connection (trust authentication), answers `START_REPLICATION` with CopyBoth, then sends
//! the XLogData and keepalives a test gives it and reports every standby status update it
//! receives. Real sockets and our real framing; only the server is a script.

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::params::{ConnParams, SslMode};
use crate::lsn::Lsn;

/// A standby status update as the server received it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Status {
    pub(crate) write: Lsn,
    pub(crate) flush: Lsn,
    pub(crate) reply_requested: bool,
    /// When it arrived (the test clock: paused time in the loop tests).
    pub(crate) at: tokio::time::Instant,
}

/// What the script sends next.
pub(crate) enum Send {
    /// XLogData carrying one pgoutput message.
    XLogData {
        start: Lsn,
        end: Lsn,
        data: Vec<u8>,
    },
    Keepalive {
        wal_end: Lsn,
        reply_requested: bool,
    },
}

/// The test's side of the server.
pub(crate) struct Scripted {
    pub(crate) params: ConnParams,
    pub(crate) send: mpsc::UnboundedSender<Send>,
    pub(crate) statuses: mpsc::UnboundedReceiver<Status>,
}

/// Starts the server; connect to `params` (a replication connection), then start streaming.
pub(crate) async fn start() -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (send, mut script) = mpsc::unbounded_channel::<Send>();
    let (status_tx, statuses) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        // The startup message has no tag: its length, then the protocol version and pairs.
        while buf.len() < 4 || buf.len() < (&buf[..4]).get_u32() as usize {
            if sock.read_buf(&mut buf).await.unwrap() == 0 {
                return;
            }
        }
        let len = (&buf[..4]).get_u32() as usize;
        buf.advance(len);
        let mut out = Vec::new();
        message(&mut out, b'R', &0i32.to_be_bytes());
        message(&mut out, b'Z', b"I");
        sock.write_all(&out).await.unwrap();
        loop {
            tokio::select! {
                next = script.recv() => {
                    let Some(next) = next else { return };
                    let mut body = Vec::new();
                    match next {
                        Send::XLogData { start, end, data } => {
                            body.put_u8(b'w');
                            body.put_u64(start.0);
                            body.put_u64(end.0);
                            body.put_i64(0);
                            body.extend_from_slice(&data);
                        }
                        Send::Keepalive { wal_end, reply_requested } => {
                            body.put_u8(b'k');
                            body.put_u64(wal_end.0);
                            body.put_i64(0);
                            body.put_u8(u8::from(reply_requested));
                        }
                    }
                    let mut out = Vec::new();
                    message(&mut out, b'd', &body);
                    if sock.write_all(&out).await.is_err() {
                        return;
                    }
                }
                read = sock.read_buf(&mut buf) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return;
                    }
                    while let Some((tag, body)) = frame(&mut buf) {
                        match tag {
                            // START_REPLICATION: CopyBoth, no columns.
                            b'Q' => {
                                let mut out = Vec::new();
                                message(&mut out, b'W', &[0, 0, 0]);
                                if sock.write_all(&out).await.is_err() {
                                    return;
                                }
                            }
                            b'd' if body.first() == Some(&b'r') && body.len() >= 34 => {
                                let mut b = &body[1..];
                                let write = Lsn(b.get_u64());
                                let flush = Lsn(b.get_u64());
                                let _apply = b.get_u64();
                                let _time = b.get_i64();
                                let reply_requested = b.get_u8() == 1;
                                let _ = status_tx.send(Status {
                                    write,
                                    flush,
                                    reply_requested,
                                    at: tokio::time::Instant::now(),
                                });
                            }
                            b'X' => return,
                            _ => {}
                        }
                    }
                }
            }
        }
    });
    let mut params = ConnParams::from_url(&format!(
        "postgres://walrelay@127.0.0.1:{port}/app?sslmode=disable"
    ))
    .unwrap();
    params.sslmode = SslMode::Disable;
    Scripted {
        params,
        send,
        statuses,
    }
}

/// A tagged message of the protocol.
fn message(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_u32(body.len() as u32 + 4);
    out.extend_from_slice(body);
}

/// Cuts one whole tagged message from `buf`.
fn frame(buf: &mut BytesMut) -> Option<(u8, Vec<u8>)> {
    if buf.len() < 5 {
        return None;
    }
    let len = (&buf[1..5]).get_u32() as usize;
    if buf.len() < 1 + len {
        return None;
    }
    let tag = buf[0];
    let body = buf[5..1 + len].to_vec();
    buf.advance(1 + len);
    Some((tag, body))
}

/// pgoutput's Begin and Commit of an empty transaction ending at `end`.
pub(crate) fn empty_transaction(commit: Lsn, end: Lsn, xid: u32) -> [Vec<u8>; 2] {
    let mut begin = vec![b'B'];
    begin.put_u64(commit.0);
    begin.put_i64(0);
    begin.put_u32(xid);
    let mut commit_msg = vec![b'C', 0];
    commit_msg.put_u64(commit.0);
    commit_msg.put_u64(end.0);
    commit_msg.put_i64(0);
    [begin, commit_msg]
}
