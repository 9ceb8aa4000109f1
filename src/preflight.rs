//! What `walrelay run` checks on this machine before it touches PostgreSQL or RabbitMQ: the
//! HTTP port is bound, the position file is readable and its directory writable, and every CA
//! bundle the URLs name loads.
//!
//! Why first: `run` creates a publication and a replication slot on its first start, and a slot
//! retains WAL for as long as it exists. A process that created the slot and then stopped on a
//! taken port left a slot behind that nobody streams from (issue 28). Each of these checks
//! depends only on this machine, so each is settled before anything is created anywhere, and
//! `walrelay doctor` runs the same checks ([`check_files`], [`port_taken`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::Settings;
use crate::position_file::PositionFile;
use crate::source::params::SslMode;
use crate::tls::{self, TlsError, Verify};

/// A local precondition that does not hold; each names the configuration key to change.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PreflightError {
    #[error(
        "cannot listen on {addr} (http.listen): {source}; choose another address with http.listen or WALRELAY_HTTP_LISTEN (nothing was created in PostgreSQL or RabbitMQ)"
    )]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("service.state_file {}: {detail}", path.display())]
    StateFile { path: PathBuf, detail: String },
    #[error("{key}: {source}")]
    CaFile {
        key: &'static str,
        #[source]
        source: TlsError,
    },
}

/// Binds `http.listen` (when set) and checks the files: the listener to serve on, or the first
/// precondition that fails.
pub(crate) async fn check(
    settings: &Settings,
) -> Result<Option<tokio::net::TcpListener>, PreflightError> {
    let listener = match settings.service.http_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| PreflightError::Listen { addr, source })?,
        ),
        None => None,
    };
    check_files(settings)?;
    Ok(listener)
}

/// The position file and the CA bundles, without binding anything.
pub(crate) fn check_files(settings: &Settings) -> Result<(), PreflightError> {
    if let Some(path) = &settings.service.state_file {
        state_file(path)?;
    }
    let conn = &settings.source.conn;
    if matches!(conn.sslmode, SslMode::VerifyCa | SslMode::VerifyFull)
        && let Some(ca) = &conn.sslrootcert
    {
        ca_file("postgres.url sslrootcert", ca)?;
    }
    if let Some(ca) = &settings.sink.url.ca_file {
        ca_file("rabbitmq.url cacertfile", ca)?;
    }
    if let Some(ca) = settings
        .sink
        .stream
        .as_ref()
        .and_then(|s| s.url.ca_file.as_ref())
    {
        ca_file("stream.url cacertfile", ca)?;
    }
    Ok(())
}

/// True when something already listens on `addr`: binding it fails with "address in use".
pub(crate) async fn port_taken(addr: SocketAddr) -> Option<std::io::Error> {
    tokio::net::TcpListener::bind(addr).await.err()
}

/// The file parses when it exists, and its directory takes a new file (the position is
/// replaced by write, fsync, rename in that directory).
fn state_file(path: &Path) -> Result<(), PreflightError> {
    let err = |detail: String| PreflightError::StateFile {
        path: path.to_owned(),
        detail,
    };
    PositionFile::new(path)
        .load()
        .map_err(|e| err(format!("cannot read it: {e}")))?;
    let probe = path.with_extension("preflight");
    std::fs::write(&probe, b"")
        .map_err(|e| err(format!("its directory does not take a new file: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

fn ca_file(key: &'static str, path: &Path) -> Result<(), PreflightError> {
    tls::client_config(Verify::Full, Some(path))
        .map(|_| ())
        .map_err(|source| PreflightError::CaFile { key, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_must_parse_and_its_directory_take_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pos");
        state_file(&path).unwrap();
        assert!(!dir.path().join("pos.preflight").exists());
        std::fs::write(&path, "nonsense").unwrap();
        let e = state_file(&path).unwrap_err().to_string();
        assert!(e.contains("cannot read it"), "{e}");
        let missing = dir.path().join("no/such/dir/pos");
        let e = state_file(&missing).unwrap_err().to_string();
        assert!(e.contains("does not take a new file"), "{e}");
    }

    #[test]
    fn a_ca_file_that_does_not_load_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = ca_file("rabbitmq.url cacertfile", &empty)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("rabbitmq.url cacertfile: "), "{e}");
    }

    #[tokio::test]
    async fn a_taken_port_is_seen() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        assert!(port_taken(addr).await.is_some());
        drop(l);
        assert!(port_taken(addr).await.is_none());
    }
}
