//! "Record the position, then report it": the only path by which a flush position reaches
//! PostgreSQL. The position file (`service.state_file`) is written before the server hears of
//! a position, so a slot that is later found behind it proves changes were skipped.

use crate::error::RunError;
use crate::lsn::Lsn;
use crate::position_file::PositionFile;
use crate::source::replication::ReplicationStream;

/// Owns the position file and the last position reported to the server.
pub(crate) struct Reporter {
    file: Option<PositionFile>,
    reported: Lsn,
}

impl Reporter {
    /// `reported` is where the slot stands when the session starts.
    pub(crate) fn new(file: Option<PositionFile>, reported: Lsn) -> Reporter {
        Reporter { file, reported }
    }

    /// The last flush position the server was told.
    pub(crate) fn reported(&self) -> Lsn {
        self.reported
    }

    /// Records `flush`, then sends a standby status update (`received` as the write position).
    pub(crate) async fn report(
        &mut self,
        stream: &mut ReplicationStream,
        received: Lsn,
        flush: Lsn,
        reply_requested: bool,
    ) -> Result<(), RunError> {
        if let Some(f) = self.file.as_mut() {
            f.store(flush)
                .map_err(|e| RunError::PositionFile(e.to_string()))?;
        }
        stream.send_status(received, flush, reply_requested).await?;
        if flush > self.reported {
            self.reported = flush;
            crate::failpoint::hit("status.after_send");
        }
        Ok(())
    }
}
