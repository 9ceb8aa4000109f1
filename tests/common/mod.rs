//! Test harness: a private PostgreSQL cluster per test (initdb into a temp dir, logical
//! replication on, a free port), the local RabbitMQ, and walrelay run as a child process so a
//! test can `kill -9` it. Waits are conditions with timeouts, never fixed sleeps.
#![allow(dead_code)]

pub mod bed;
pub mod broker;
pub mod checker;
pub mod proxy;
pub mod scene;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A unique name for this test's objects.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// The PostgreSQL binaries: `WALRELAY_PG_BIN` (set by `scripts/pg-matrix.sh` to another major
/// version) or the Debian packages.
fn pg_bin(name: &str) -> PathBuf {
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

pub async fn current_lsn(client: &tokio_postgres::Client) -> u64 {
    let row = client
        .query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint", &[])
        .await
        .unwrap();
    row.get::<_, i64>(0) as u64
}

/// Polls `check` until it returns Some or `timeout` passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A queue bound to an exchange on the local RabbitMQ, drained with basic.get.
pub struct TestQueue {
    pub channel: Channel,
    pub conn: Connection,
    pub exchange: String,
    pub queue: String,
    pub url: String,
}

/// A message as a consumer sees it.
#[derive(Debug, Clone)]
pub struct Received {
    pub routing_key: String,
    pub message_id: String,
    pub body: serde_json::Value,
    pub properties: BasicProperties,
}

impl TestQueue {
    /// Declares `exchange` (durable topic) and a queue bound with `binding` (None: no binding).
    pub async fn new(exchange: &str, binding: Option<&str>) -> TestQueue {
        TestQueue::on(AMQP_URL, exchange, binding, FieldTable::default()).await
    }

    /// Like `new`, on the broker at `url`, with queue arguments (e.g. `x-queue-type`).
    pub async fn on(
        url: &str,
        exchange: &str,
        binding: Option<&str>,
        args: FieldTable,
    ) -> TestQueue {
        TestQueue::named(url, exchange, &format!("{exchange}_q"), binding, args).await
    }

    /// A queue of its own name on `exchange` (several queues on one exchange).
    pub async fn named(
        url: &str,
        exchange: &str,
        queue: &str,
        binding: Option<&str>,
        args: FieldTable,
    ) -> TestQueue {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = conn.create_channel().await.unwrap();
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let queue = queue.to_owned();
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .unwrap();
        let q = TestQueue {
            channel,
            conn,
            exchange: exchange.to_owned(),
            queue,
            url: url.to_owned(),
        };
        if let Some(b) = binding {
            q.bind(b).await;
        }
        q
    }

    pub async fn bind(&self, key: &str) {
        self.channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    pub async fn unbind(&self, key: &str) {
        self.channel
            .queue_unbind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                key.into(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// Takes one message if any.
    pub async fn get(&self) -> Option<Received> {
        let msg = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()?;
        let body: serde_json::Value =
            serde_json::from_slice(&msg.delivery.data).expect("message body is JSON");
        Some(Received {
            routing_key: msg.delivery.routing_key.to_string(),
            message_id: msg
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            body,
            properties: msg.delivery.properties.clone(),
        })
    }

    /// Collects messages until `n` arrived (panics after `timeout`).
    pub async fn take(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let mut got = Vec::new();
        let start = Instant::now();
        while got.len() < n {
            match self.get().await {
                Some(m) => got.push(m),
                None => {
                    assert!(
                        start.elapsed() < timeout,
                        "timed out: got {} of {n} messages",
                        got.len()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        got
    }

    /// Collects messages until `n` distinct ids arrived (panics after `timeout`) and returns
    /// the first delivery of each, in order. A replay (at-least-once, e.g. across a session
    /// restart) must carry the same id and body as the first delivery.
    pub async fn take_distinct(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let mut first: Vec<Received> = Vec::new();
        let start = Instant::now();
        while first.len() < n {
            match self.get().await {
                Some(m) => match first.iter().find(|f| f.message_id == m.message_id) {
                    Some(f) => assert_eq!(f.body, m.body, "a replay differs from the original"),
                    None => first.push(m),
                },
                None => {
                    assert!(
                        start.elapsed() < timeout,
                        "timed out: got {} of {n} distinct messages",
                        first.len()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        first
    }

    /// Drains until the queue stays empty for `quiet`.
    pub async fn drain(&self, quiet: Duration) -> Vec<Received> {
        let mut got = Vec::new();
        let mut last = Instant::now();
        while last.elapsed() < quiet {
            match self.get().await {
                Some(m) => {
                    got.push(m);
                    last = Instant::now();
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        got
    }

    pub async fn delete(self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self
            .channel
            .exchange_delete(self.exchange.as_str().into(), Default::default())
            .await;
    }
}

/// A running walrelay process with its own config file; killed on drop.
pub struct Relay {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub log_path: PathBuf,
}

/// Writes a config file for this test.
pub fn write_config(
    dir: &Path,
    pg_url: &str,
    amqp_url: &str,
    slot: &str,
    exchange: &str,
    tables: &[&str],
    extra: &str,
) -> PathBuf {
    let tables: Vec<String> = tables.iter().map(|t| format!("{t:?}")).collect();
    let text = format!(
        "[postgres]\nurl = {pg_url:?}\nslot = {slot:?}\npublication = {slot:?}\nstatus_interval_ms = 200\n\
         [rabbitmq]\nurl = {amqp_url:?}\nexchange = {exchange:?}\nconfirm_timeout_ms = 5000\n\
         [service]\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\nshutdown_timeout_ms = 5000\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\
         [filter]\ninclude = [{}]\n{extra}",
        tables.join(", ")
    );
    let path = dir.join("walrelay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Sets `key = value` (a TOML value, e.g. `"2000"` or `"true"`) in `[section]` of a config file
/// from `write_config`: replaces the key if the section has it, else adds it under the header.
pub fn config_set(path: &Path, section: &str, key: &str, value: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let header = format!("[{section}]");
    let start = lines
        .iter()
        .position(|l| l.trim() == header)
        .unwrap_or_else(|| panic!("no {header} in {}", path.display()));
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with('['))
        .map_or(lines.len(), |i| start + 1 + i);
    let line = format!("{key} = {value}");
    let prefix = format!("{key} =");
    match lines[start + 1..end]
        .iter()
        .position(|l| l.starts_with(&prefix))
    {
        Some(i) => lines[start + 1 + i] = line,
        None => lines.insert(start + 1, line),
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

impl Relay {
    pub fn start(config: &Path) -> Relay {
        Relay::start_env(config, &[])
    }

    /// Starts walrelay with extra environment variables (e.g. a failpoint).
    pub fn start_env(config: &Path, env: &[(&str, &str)]) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("walrelay.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_walrelay"))
            .args(["run", "--config"])
            .arg(config)
            .env("WALRELAY_LOG", "walrelay=debug,info")
            .env_remove("DATABASE_URL")
            .env_remove("AMQP_URL")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Relay {
            child,
            dir,
            log_path,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The port of the HTTP endpoint (walrelay logs it; configs listen on port 0).
    pub async fn http_port(&self) -> u16 {
        let log_path = self.log_path.clone();
        wait_for(
            "the HTTP endpoint's address in the log",
            Duration::from_secs(30),
            || {
                let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                async move {
                    let line = text.lines().find(|l| l.contains("serving /metrics"))?;
                    let addr = line.split("listen=").nth(1)?.split_whitespace().next()?;
                    addr.rsplit(':').next()?.parse().ok()
                }
            },
        )
        .await
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "walrelay did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) {
        let log_path = self.log_path.clone();
        wait_for(&format!("walrelay log line {needle:?}"), timeout, || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            async move { text.contains(needle).then_some(()) }
        })
        .await;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- walrelay log ----\n{}", self.log());
        }
    }
}

/// A plain HTTP GET on 127.0.0.1: (status code, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of a Prometheus sample (`name{labels}`), or 0 when absent.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The peak resident set (VmHWM) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The sample names an exposition (OpenMetrics or Prometheus text) defines, from its `# TYPE`
/// lines: a counter's `_total`, a histogram's `_bucket`, `_count` and `_sum`.
pub fn exported_metric_names(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .flat_map(|l| {
            let mut it = l.split_whitespace();
            let (name, kind) = (it.next().unwrap().to_owned(), it.next().unwrap());
            match kind {
                "counter" if name.ends_with("_total") => vec![name],
                "counter" => vec![format!("{name}_total")],
                "histogram" => ["_bucket", "_count", "_sum"]
                    .iter()
                    .map(|s| format!("{name}{s}"))
                    .collect(),
                "info" => vec![format!("{name}_info")],
                _ => vec![name],
            }
        })
        .collect()
}

/// The `walrelay_…` metric names a PromQL expression queries.
pub fn queried_metric_names(expr: &str) -> Vec<String> {
    expr.match_indices("walrelay_")
        .map(|(i, _)| {
            expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}
