//! One test scene: a private cluster with a fresh database holding a schema, an exchange with a
//! queue bound to `#`, a unique slot and a config file, set key by key, then started.

use std::path::PathBuf;

use super::*;

pub struct Scene {
    pub pg: PgCluster,
    pub db: String,
    pub client: tokio_postgres::Client,
    pub exchange: String,
    pub queue: TestQueue,
    pub slot: String,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Scene {
    /// A scene whose config includes `include` (TOML strings, written as given).
    pub async fn new(schema: &str, include: &[&str]) -> Scene {
        let (pg, db, client) = PgCluster::with_db(schema).await;
        let exchange = unique("ex");
        let queue = TestQueue::new(&exchange, Some("#")).await;
        let slot = unique("slot");
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            &pg.url(&db),
            AMQP_URL,
            &slot,
            &exchange,
            include,
            "",
        );
        Scene {
            pg,
            db,
            client,
            exchange,
            queue,
            slot,
            dir,
            config,
        }
    }

    /// Sets `key = value` (a TOML value) in `[section]` of the config.
    pub fn set(&self, section: &str, key: &str, value: &str) -> &Scene {
        config_set(&self.config, section, key, value);
        self
    }

    /// Appends TOML (e.g. a `[[filter.table]]` block) to the config.
    pub fn append(&self, toml: &str) -> &Scene {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push('\n');
        text.push_str(toml);
        text.push('\n');
        std::fs::write(&self.config, text).unwrap();
        self
    }

    pub fn start(&self) -> Relay {
        Relay::start(&self.config)
    }

    /// Starts walrelay and waits until it streams.
    pub async fn start_streaming(&self) -> Relay {
        let relay = self.start();
        relay.wait_log("streaming", Duration::from_secs(60)).await;
        relay
    }

    pub async fn sql(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// `server_version_num`, e.g. 150019.
    pub async fn server_version(&self) -> u32 {
        let row = self
            .client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .unwrap();
        row.get::<_, i32>(0) as u32
    }

    /// Deletes the scene's queue and exchange from the shared broker.
    pub async fn finish(self) {
        self.queue.delete().await;
    }

    /// Runs a walrelay subcommand (`status`, `doctor`, …) against this scene's config.
    pub fn command(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_walrelay"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env_remove("DATABASE_URL")
            .env_remove("AMQP_URL")
            .output()
            .unwrap()
    }
}
