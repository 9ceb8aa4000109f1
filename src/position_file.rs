//! The position file (`service.state_file`): the last confirmed LSN walrelay reported, kept
//! across restarts so that a slot advanced by someone else *while walrelay was down* is noticed.
//!
//! Write-ahead: the file is replaced (write, fsync, rename) *before* a new position is sent to
//! Postgres, so the slot can never legitimately be ahead of the file. At start, a slot whose
//! `confirmed_flush_lsn` is beyond the file's position was moved by someone else (advanced,
//! dropped and recreated), and changes in between were never published: walrelay stops.
//! Hot standby instances must share the file (only the instance holding the slot writes it).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::lsn::Lsn;

/// The file and the last position written to it.
#[derive(Debug)]
pub(crate) struct PositionFile {
    path: PathBuf,
    written: Option<Lsn>,
}

impl PositionFile {
    pub(crate) fn new(path: &Path) -> PositionFile {
        PositionFile {
            path: path.to_owned(),
            written: None,
        }
    }

    /// The stored position; `None` when the file does not exist yet.
    pub(crate) fn load(&mut self) -> std::io::Result<Option<Lsn>> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                let lsn = text.trim().parse::<Lsn>().map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: {e}", self.path.display()),
                    )
                })?;
                self.written = Some(lsn);
                Ok(Some(lsn))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Durably records `lsn` if it is beyond what the file holds.
    pub(crate) fn store(&mut self, lsn: Lsn) -> std::io::Result<()> {
        if self.written.is_some_and(|w| w >= lsn) {
            return Ok(());
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{lsn}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        self.written = Some(lsn);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_only_forward_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pos");
        let mut f = PositionFile::new(&path);
        assert_eq!(f.load().unwrap(), None);
        f.store(Lsn(0x10)).unwrap();
        f.store(Lsn(0x08)).unwrap();
        let mut g = PositionFile::new(&path);
        assert_eq!(g.load().unwrap(), Some(Lsn(0x10)));
        std::fs::write(&path, "garbage").unwrap();
        assert!(PositionFile::new(&path).load().is_err());
    }
}
