//! The CopyBoth replication stream: `START_REPLICATION`, XLogData and keepalive messages from
//! the server, standby status updates from us.
//!
//! Per PostgreSQL's streaming replication protocol: the server sends `w` (XLogData: start LSN,
//! WAL end, send time, payload) and `k` (keepalive: WAL end, send time, reply-requested flag);
//! we send `r` (write, flush, apply positions, clock, reply-requested). The *flush* position is
//! what the server stores as the slot's `confirmed_flush_lsn`. If no status update arrives for
//! `wal_sender_timeout`, the server drops the connection, so updates must keep flowing even
//! when the publishing side is back-pressured.

use bytes::{Buf, BufMut, Bytes};
use postgres_protocol::message::frontend;

use super::conn::Connection;
use super::error::{Broken, ServerError, SourceError};
use super::setup::{quote_ident, quote_literal};
use super::wire::Frame;
use crate::lsn::Lsn;

/// A message of the replication stream.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplMessage {
    /// WAL data: one pgoutput message.
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        data: Bytes,
    },
    /// The server's position and whether it wants an answer now.
    Keepalive { wal_end: Lsn, reply_requested: bool },
}

/// Microseconds since 2000-01-01, the protocol's clock.
fn pg_now_us() -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    unix - 946_684_800_000_000
}

/// An open replication stream.
pub struct ReplicationStream {
    conn: Connection,
}

impl ReplicationStream {
    /// Sends `START_REPLICATION` and waits for the server to switch to CopyBoth mode.
    pub async fn start(
        mut conn: Connection,
        slot: &str,
        start: Lsn,
        publication: &str,
    ) -> Result<ReplicationStream, SourceError> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (\"proto_version\" '1', \"publication_names\" {}, \"messages\" 'true')",
            quote_ident(slot),
            start,
            quote_literal(&quote_ident(publication)),
        );
        frontend::query(&sql, &mut conn.framed.write_buf)
            .map_err(|e| SourceError::Protocol(e.to_string()))?;
        conn.framed.flush().await?;
        loop {
            let f = conn.framed.read_frame().await?;
            match f.tag {
                b'W' => return Ok(ReplicationStream { conn }),
                b'N' => {}
                b'E' => {
                    let e = ServerError::parse(&f.body);
                    // On START_REPLICATION: the slot can no longer give changes (invalidated,
                    // dropped, its state gone).
                    if super::sqlstate::meaning(&e.code) == super::sqlstate::Meaning::SlotLost {
                        // 42704: it does not exist; 55000 / 58P01: it cannot give changes.
                        let broken = if e.code == "42704" {
                            Broken::Dropped
                        } else {
                            Broken::Invalidated
                        };
                        return Err(SourceError::SlotLost {
                            slot: slot.to_owned(),
                            problem: e.to_string(),
                            broken,
                        });
                    }
                    return Err(SourceError::Server(e));
                }
                t => {
                    return Err(SourceError::Protocol(format!(
                        "message {:?} after START_REPLICATION",
                        t as char
                    )));
                }
            }
        }
    }

    /// The next message. Cancel-safe.
    pub async fn next(&mut self) -> Result<ReplMessage, SourceError> {
        loop {
            let f = self.conn.framed.read_frame().await?;
            if let Some(msg) = classify(f) {
                return msg;
            }
        }
    }

    /// The next message if the bytes read so far hold it; `None` when the socket must be read
    /// first. Lets the replication loop take a run of buffered messages without arming a
    /// `select!` per message.
    pub fn buffered(&mut self) -> Option<Result<ReplMessage, SourceError>> {
        loop {
            match self.conn.framed.buffered_frame() {
                Ok(Some(f)) => {
                    if let Some(msg) = classify(f) {
                        return Some(msg);
                    }
                }
                Ok(None) => return None,
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// Sends a standby status update. `flush` becomes the slot's confirmed position.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        reply_requested: bool,
    ) -> Result<(), SourceError> {
        let mut msg = Vec::with_capacity(34);
        msg.put_u8(b'r');
        msg.put_u64(write.0.max(flush.0));
        msg.put_u64(flush.0);
        msg.put_u64(flush.0);
        msg.put_i64(pg_now_us());
        msg.put_u8(u8::from(reply_requested));
        frontend::CopyData::new(&msg[..])
            .map_err(|e| SourceError::Protocol(e.to_string()))?
            .write(&mut self.conn.framed.write_buf);
        self.conn.framed.flush().await?;
        Ok(())
    }

    /// Ends the session: Terminate makes the walsender exit cleanly.
    pub async fn close(self) {
        self.conn.close().await;
    }
}

/// What a frame of the replication stream is: a message, an error, or nothing (a notice).
fn classify(f: Frame) -> Option<Result<ReplMessage, SourceError>> {
    Some(match f.tag {
        b'd' => parse_copy_data(f.body),
        b'N' => {
            // PostgreSQL 18's pgoutput skips the changes it cannot match with a missing
            // publication and says so only in this WARNING: a gap, never a notice to ignore.
            let n = ServerError::parse(&f.body);
            if is_publication_missing(&n) {
                return Some(Err(publication_gap(n, true)));
            }
            tracing::debug!(notice = %n, "server notice on the replication stream");
            return None;
        }
        b'E' => {
            let e = ServerError::parse(&f.body);
            if is_publication_missing(&e) {
                Err(publication_gap(e, false))
            } else {
                Err(SourceError::Server(e))
            }
        }
        // A walsender ends COPY mode on a clean server shutdown (`pg_ctl stop -m fast`, a
        // failover's demotion): CopyDone, then CommandComplete and ReadyForQuery. The server
        // is going away, not refusing us: reconnect.
        b'c' => Err(SourceError::StreamEnded("CopyDone")),
        b'C' => Err(SourceError::StreamEnded("CommandComplete")),
        b'Z' => Err(SourceError::StreamEnded("ReadyForQuery")),
        t => Err(SourceError::Protocol(format!(
            "message {:?} in the replication stream",
            t as char
        ))),
    })
}

/// `publication "…" does not exist` (up to 17, an error with SQLSTATE 42704) or
/// `skipped loading publication "…"` (18, a warning; a walsender sends it with SQLSTATE 55000,
/// the SQL functions with 42704), met while decoding.
fn is_publication_missing(e: &ServerError) -> bool {
    (e.code == "42704" && e.message.contains("publication"))
        || e.message.starts_with("skipped loading publication")
}

fn publication_gap(e: ServerError, skipped: bool) -> SourceError {
    let publication = e.message.split('"').nth(1).unwrap_or_default().to_owned();
    SourceError::PublicationGap {
        publication,
        message: e.to_string(),
        skipped,
    }
}

fn parse_copy_data(mut body: Bytes) -> Result<ReplMessage, SourceError> {
    let short = |what: &str| SourceError::Protocol(format!("truncated {what} message"));
    if body.is_empty() {
        return Err(short("CopyData"));
    }
    match body.get_u8() {
        b'w' => {
            if body.len() < 24 {
                return Err(short("XLogData"));
            }
            let wal_start = Lsn(body.get_u64());
            let wal_end = Lsn(body.get_u64());
            let _send_time = body.get_i64();
            Ok(ReplMessage::XLogData {
                wal_start,
                wal_end,
                data: body,
            })
        }
        b'k' => {
            if body.len() < 17 {
                return Err(short("keepalive"));
            }
            let wal_end = Lsn(body.get_u64());
            let _send_time = body.get_i64();
            Ok(ReplMessage::Keepalive {
                wal_end,
                reply_requested: body.get_u8() == 1,
            })
        }
        t => Err(SourceError::Protocol(format!(
            "unknown replication message {:?}",
            t as char
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_xlogdata_and_keepalive() {
        let mut w = vec![b'w'];
        w.extend_from_slice(&1u64.to_be_bytes());
        w.extend_from_slice(&2u64.to_be_bytes());
        w.extend_from_slice(&3i64.to_be_bytes());
        w.extend_from_slice(b"B...");
        assert_eq!(
            parse_copy_data(Bytes::from(w)).unwrap(),
            ReplMessage::XLogData {
                wal_start: Lsn(1),
                wal_end: Lsn(2),
                data: Bytes::from_static(b"B...")
            }
        );
        let mut k = vec![b'k'];
        k.extend_from_slice(&9u64.to_be_bytes());
        k.extend_from_slice(&0i64.to_be_bytes());
        k.push(1);
        assert_eq!(
            parse_copy_data(Bytes::from(k)).unwrap(),
            ReplMessage::Keepalive {
                wal_end: Lsn(9),
                reply_requested: true
            }
        );
        assert!(parse_copy_data(Bytes::from_static(b"k\0\0")).is_err());
        assert!(parse_copy_data(Bytes::from_static(b"")).is_err());
        assert!(parse_copy_data(Bytes::from_static(b"x")).is_err());
    }

    fn frame(tag: u8, fields: &[(u8, &str)]) -> Frame {
        let mut body = Vec::new();
        for (code, value) in fields {
            body.push(*code);
            body.extend_from_slice(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        Frame {
            tag,
            body: Bytes::from(body),
        }
    }

    /// A missing publication is a gap whether PostgreSQL fails on it (up to 17) or skips the
    /// changes with a warning (18); other notices are ignored, other errors stay errors.
    #[test]
    fn a_missing_publication_is_a_gap_as_error_and_as_warning() {
        let error = frame(
            b'E',
            &[
                (b'V', "ERROR"),
                (b'C', "42704"),
                (b'M', "publication \"p\" does not exist"),
            ],
        );
        assert!(matches!(
            classify(error),
            Some(Err(SourceError::PublicationGap { ref publication, skipped: false, .. })) if publication == "p"
        ));
        let warning = frame(
            b'N',
            &[
                (b'V', "WARNING"),
                (b'C', "55000"),
                (b'M', "skipped loading publication \"p\""),
            ],
        );
        assert!(matches!(
            classify(warning),
            Some(Err(SourceError::PublicationGap { skipped: true, .. }))
        ));
        let notice = frame(b'N', &[(b'V', "NOTICE"), (b'C', "00000"), (b'M', "hello")]);
        assert!(classify(notice).is_none());
        let other = frame(b'E', &[(b'V', "ERROR"), (b'C', "XX000"), (b'M', "boom")]);
        assert!(matches!(classify(other), Some(Err(SourceError::Server(_)))));
    }

    proptest::proptest! {
        /// Any CopyData payload is a message or an error, never a panic; the 'w' and 'k'
        /// prefixes make the interesting cases likely.
        #[test]
        fn any_copy_data_is_a_message_or_an_error(
            tag in proptest::sample::select(vec![b'w', b'k', b'x']),
            rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let mut body = vec![tag];
            body.extend_from_slice(&rest);
            let _ = parse_copy_data(Bytes::from(body));
        }
    }
}
