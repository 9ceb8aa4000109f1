//! One test scene: a private cluster with a fresh database holding a schema, an exchange with a
//! queue bound to `#`, a unique slot and a config file, set key by key, then started.
//! [`Setup`] varies what a test needs: server settings, another binding (or no queue at all),
//! the broker reached through a proxy, a queue on a private node, or the stream sink on
//! RabbitMQ 4 instead of an exchange ([`Scene::stream`]). The chaos bed is a scene too.

use std::path::PathBuf;

use super::*;

pub struct Scene {
    pub pg: PgCluster,
    pub db: String,
    pub client: tokio_postgres::Client,
    pub exchange: String,
    queue: Option<TestQueue>,
    /// The stream walrelay publishes to, for a scene with the stream sink.
    stream: Option<String>,
    pub slot: String,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// RabbitMQ 4, used by a stream scene for as long as it lives.
    _rabbitmq4: Option<super::rabbitmq4::Use>,
}

/// Where walrelay publishes.
#[derive(Clone, Copy)]
pub enum Sink<'a> {
    /// An exchange on the AMQP broker (`Setup::amqp_url`).
    Exchange,
    /// A stream on RabbitMQ 4, with these extra `[stream]` keys (one per line); the scene
    /// uses RabbitMQ 4 shared with other tests.
    Stream(&'a str),
    /// The same, for a test that stops, pauses or restarts RabbitMQ 4: the scene holds the
    /// node alone.
    StreamAlone(&'a str),
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
    /// The broker the test queue lives on, and its arguments (a quorum queue, say).
    pub queue_on: &'a str,
    pub queue_args: FieldTable,
    /// An exchange (the default) or a stream.
    pub sink: Sink<'a>,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            conf: &[],
            consumer: Consumer::Bound("#"),
            amqp_url: amqp_url(),
            queue_on: amqp_url(),
            queue_args: FieldTable::new(),
            sink: Sink::Exchange,
        }
    }
}

impl Scene {
    /// A scene whose config includes `include` (TOML strings, written as given).
    pub async fn new(schema: &str, include: &[&str]) -> Scene {
        Scene::with(schema, include, Setup::default()).await
    }

    /// A scene whose config publishes `include` to a new stream on RabbitMQ 4, with `extra`
    /// `[stream]` keys (one per line). No exchange, no queue: read with `common::stream`.
    pub async fn stream(schema: &str, include: &[&str], extra: &str) -> Scene {
        let setup = Setup {
            sink: Sink::Stream(extra),
            ..Setup::default()
        };
        Scene::with(schema, include, setup).await
    }

    /// [`Scene::stream`] for a test that stops, pauses or restarts RabbitMQ 4: the scene holds
    /// the node alone (other tests using it wait).
    pub async fn stream_alone(schema: &str, include: &[&str], extra: &str) -> Scene {
        let setup = Setup {
            sink: Sink::StreamAlone(extra),
            ..Setup::default()
        };
        Scene::with(schema, include, setup).await
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
        let slot = unique("slot");
        let dir = tempfile::tempdir().unwrap();
        let (queue, stream, rabbitmq4, config) = match setup.sink {
            Sink::Exchange => {
                // The binding of the queue, if there is a queue.
                let binding = match setup.consumer {
                    Consumer::Bound(b) => Some(Some(b)),
                    Consumer::Unbound => Some(None),
                    Consumer::Absent => None,
                };
                let queue = match binding {
                    Some(b) => {
                        Some(TestQueue::on(setup.queue_on, &exchange, b, setup.queue_args).await)
                    }
                    None => None,
                };
                let config = write_config(
                    dir.path(),
                    &pg.url(&db),
                    setup.amqp_url,
                    &slot,
                    &exchange,
                    include,
                    "",
                );
                (queue, None, None, config)
            }
            Sink::Stream(extra) | Sink::StreamAlone(extra) => {
                let rabbitmq4 = match setup.sink {
                    Sink::StreamAlone(_) => super::rabbitmq4::alone().await,
                    _ => super::rabbitmq4::shared().await,
                };
                let stream = unique("st");
                let config = super::stream::stream_config_with(
                    dir.path(),
                    &pg.url(&db),
                    &slot,
                    &stream,
                    include,
                    extra,
                );
                (None, Some(stream), Some(rabbitmq4), config)
            }
        };
        Scene {
            pg,
            db,
            client,
            exchange,
            queue,
            stream,
            slot,
            dir,
            config,
            _rabbitmq4: rabbitmq4,
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

    /// The stream walrelay publishes to (panics for a scene with an exchange).
    pub fn stream_name(&self) -> &str {
        self.stream
            .as_deref()
            .expect("this scene publishes to an exchange (Sink::Exchange)")
    }

    /// Points the config at `url` instead of RabbitMQ 4's plain stream port.
    pub fn use_stream_url(&self, url: &str) {
        self.edit(super::stream::STREAM_URL, url);
    }

    /// Replaces `from` (which must be there) by `to` in the config.
    pub fn edit(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(from), "{from:?} is not in the config");
        std::fs::write(&self.config, text.replace(from, to)).unwrap();
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
