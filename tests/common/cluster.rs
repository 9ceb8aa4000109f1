//! A private PostgreSQL cluster per test: initdb into a temp dir as `postgres`, logical
//! replication on, a free port; stopped (immediately) when dropped. Plus the SQL helpers the
//! tests share (connect, slot position, current WAL position).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{free_port, unique};

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// The PostgreSQL binaries: `WALRELAY_PG_BIN` (set by `scripts/pg-matrix.sh` to another major
/// version) or the Debian packages.
pub fn pg_bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("WALRELAY_PG_BIN") {
        return Path::new(&dir).join(name);
    }
    for dir in [
        "/usr/lib/postgresql/15/bin",
        "/usr/lib/postgresql/16/bin",
        "/usr/lib/postgresql/17/bin",
    ] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// Runs a PostgreSQL binary, as the `postgres` user when we are root (initdb refuses root).
fn pg_command(name: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_bin(name));
        c
    } else {
        Command::new(pg_bin(name))
    }
}

/// A throwaway PostgreSQL cluster with `wal_level=logical`, stopped on drop.
pub struct PgCluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl PgCluster {
    pub fn start() -> PgCluster {
        Self::start_with(&[])
    }

    pub fn start_with(extra_conf: &[&str]) -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("walrelay-pg")
            .tempdir()
            .unwrap();
        if is_root() {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
        }
        let data = dir.path().join("data");
        let out = pg_command("initdb")
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .output()
            .expect("initdb (install postgresql)");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             wal_level = logical\nmax_wal_senders = 10\nmax_replication_slots = 10\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nshared_buffers = 64MB\n",
            dir.path().display()
        );
        for line in extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).unwrap();
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).unwrap();
        let cluster = PgCluster { dir, port };
        cluster.pg_ctl_start();
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn pg_ctl_start(&self) {
        let out = pg_command("pg_ctl")
            .args(["-D"])
            .arg(self.data())
            .args(["-w", "-t", "60", "-l"])
            .arg(self.dir.path().join("server.log"))
            .arg("start")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server: `mode` is smart, fast or immediate (immediate = crash).
    pub fn pg_ctl_stop(&self, mode: &str) {
        let _ = pg_command("pg_ctl")
            .args(["-D"])
            .arg(self.data())
            .args(["-w", "-t", "60", "-m", mode, "stop"])
            .output();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Replaces pg_hba.conf and reloads the server.
    pub fn set_hba(&self, hba: &str) {
        std::fs::write(self.data().join("pg_hba.conf"), hba).unwrap();
        let out = pg_command("pg_ctl")
            .args(["-D"])
            .arg(self.data())
            .arg("reload")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl reload: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// A cluster with one fresh database holding `schema`: the start of most tests.
    pub async fn with_db(schema: &str) -> (PgCluster, String, tokio_postgres::Client) {
        let pg = PgCluster::start();
        let db = unique("app");
        let client = pg.create_db(&db).await;
        client.batch_execute(schema).await.unwrap();
        (pg, db, client)
    }

    /// Creates a database and returns a client connected to it.
    pub async fn create_db(&self, db: &str) -> tokio_postgres::Client {
        let admin = connect(&self.url("postgres")).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
        connect(&self.url(db)).await
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.pg_ctl_stop("immediate");
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to test postgres");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The slot's confirmed position as a number (0 when missing).
pub async fn slot_confirmed(client: &tokio_postgres::Client, slot: &str) -> u64 {
    let row = client
        .query_opt(
            "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    row.and_then(|r| r.get::<_, Option<i64>>(0)).unwrap_or(0) as u64
}

/// The slot's `wal_status` (`reserved`, `extended`, `unreserved`, `lost`); panics without the
/// slot.
pub async fn slot_wal_status(client: &tokio_postgres::Client, slot: &str) -> String {
    client
        .query_one(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap_or_else(|e| panic!("slot {slot}: {e}"))
        .get(0)
}

pub async fn current_lsn(client: &tokio_postgres::Client) -> u64 {
    let row = client
        .query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint", &[])
        .await
        .unwrap();
    row.get::<_, i64>(0) as u64
}
