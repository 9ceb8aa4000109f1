//! One test scene: a private cluster with a fresh database holding a schema, an exchange with a
//! queue bound to `#`, a unique slot and a config file, set key by key, then started.
//! [`Setup`] varies what a test needs: server settings, another binding (or no queue at all),
//! the broker reached through a proxy.

use std::path::PathBuf;

use super::*;

pub struct Scene {
    pub pg: PgCluster,
    pub db: String,
    pub client: tokio_postgres::Client,
    pub exchange: String,
    queue: Option<TestQueue>,
    pub slot: String,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

/// The queue a scene's test reads.
pub enum Consumer<'a> {
    /// The exchange and a queue bound with this key.
    Bound(&'a str),
    /// The exchange and a queue without a binding (messages are unroutable until one exists).
    Unbound,
    /// Neither exchange nor queue: a test of what walrelay does without them.
    Absent,
}

/// How a scene differs from the default one.
pub struct Setup<'a> {
    /// `postgresql.conf` lines for the cluster.
    pub conf: &'a [&'a str],
    /// The test's consumer: a queue bound to `#` by default.
    pub consumer: Consumer<'a>,
    /// The broker URL walrelay is given (a proxy's, say); the test queue uses the broker.
    pub amqp_url: &'a str,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            conf: &[],
            consumer: Consumer::Bound("#"),
            amqp_url: amqp_url(),
        }
    }
}

impl Scene {
    /// A scene whose config includes `include` (TOML strings, written as given).
    pub async fn new(schema: &str, include: &[&str]) -> Scene {
        Scene::with(schema, include, Setup::default()).await
    }

    /// A scene set up as `setup` says.
    pub async fn with(schema: &str, include: &[&str], setup: Setup<'_>) -> Scene {
        let pg = PgCluster::start_with(setup.conf);
        let db = unique("app");
        let client = pg.create_db(&db).await;
        client
            .batch_execute(schema)
            .await
            .unwrap_or_else(|e| panic!("{schema}: {e}"));
        let exchange = unique("ex");
        let queue = match setup.consumer {
            Consumer::Bound(b) => Some(TestQueue::new(&exchange, Some(b)).await),
            Consumer::Unbound => Some(TestQueue::new(&exchange, None).await),
            Consumer::Absent => None,
        };
        let slot = unique("slot");
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            &pg.url(&db),
            setup.amqp_url,
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

    /// Writes the config anew for `include`, with `extra` TOML after the `[filter]` header.
    pub fn rewrite(&self, include: &[&str], extra: &str) -> PathBuf {
        let amqp = std::fs::read_to_string(&self.config)
            .unwrap()
            .lines()
            .skip_while(|l| l.trim() != "[rabbitmq]")
            .find_map(|l| {
                l.strip_prefix("url = ")
                    .map(|v| v.trim_matches('"').to_owned())
            })
            .expect("the config names rabbitmq.url");
        write_config(
            self.dir.path(),
            &self.url(),
            &amqp,
            &self.slot,
            &self.exchange,
            include,
            extra,
        )
    }

    /// The slot's confirmed position (0 when it does not exist).
    pub async fn confirmed(&self) -> u64 {
        slot_confirmed(&self.client, &self.slot).await
    }

    /// The current WAL insert position.
    pub async fn lsn(&self) -> u64 {
        current_lsn(&self.client).await
    }

    /// The test queue (panics for a scene set up without one).
    pub fn queue(&self) -> &TestQueue {
        self.queue
            .as_ref()
            .expect("this scene has no queue (Consumer::Absent)")
    }

    /// The database URL, as walrelay is given it.
    pub fn url(&self) -> String {
        self.pg.url(&self.db)
    }

    /// Deletes the scene's queue and exchange from the shared broker.
    pub async fn finish(self) {
        if let Some(q) = self.queue {
            q.delete().await;
        }
    }

    /// Runs a walrelay subcommand (`status`, `doctor`, …) against this scene's config.
    pub fn command(&self, args: &[&str]) -> std::process::Output {
        walrelay(&self.config, args)
    }
}
