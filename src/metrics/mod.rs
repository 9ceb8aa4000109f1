//! Prometheus metrics: one [`Metrics`] per process, shared as `Arc`, registered under the
//! `walrelay_` prefix and served by the `http` module at `/metrics`.
//!
//! Labels are low-cardinality by construction: `op` (five values), `reason`, `policy`,
//! `trigger`, `side`, `kind` (fixed sets), and `table` only for tables named exactly in the
//! configuration (everything else is counted as `table="other"`). No row value, URL or secret
//! is ever a label.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

mod heal;
mod stream;
mod text;

pub use heal::{HealMetrics, RESYNC_CAUSES};
pub use stream::StreamMetrics;
pub use text::openmetrics_to_text;

/// A label set of static keys and values.
pub type Labels1 = [(&'static str, &'static str); 1];
pub type Labels2 = [(&'static str, &'static str); 2];
/// The slot's name: a series that is absent until it is known.
pub type SlotLabel = [(&'static str, String); 1];
/// A broker node, `host:port` from the configuration.
pub type NodeLabel = [(&'static str, String); 1];
/// `op` and `table` (the table name is shared: it comes from the configuration).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct OpTable {
    pub op: &'static str,
    pub table: std::sync::Arc<str>,
}

/// Everything walrelay measures.
pub struct Metrics {
    pub registry: Registry,
    /// Broker-confirmed events, by op and table.
    pub events_published: Family<OpTable, Counter>,
    /// Bytes of confirmed event bodies.
    pub bytes_published: Counter,
    /// Changes the filter did not publish, by reason (table, op, predicate, noop).
    pub events_filtered: Family<Labels1, Counter>,
    /// Changes of relations that no `include` pattern matches and no `exclude` names: dropped
    /// (with a warning per relation) or, with `filter.on_unmatched = "stop"`, never reached.
    pub events_unmatched: Counter,
    /// Values of altered composite types sent as their text output (see `docs/events.md`).
    pub values_as_text: Counter,
    /// Flood transactions, by trigger (max_changes, marker, origin).
    pub flood_transactions: Family<Labels1, Counter>,
    /// Changes of flood transactions, by the policy applied (skip, summarize, reroute, publish).
    pub flood_events: Family<Labels1, Counter>,
    /// Seconds from `basic.publish` to the broker's confirm.
    pub publish_confirm_seconds: Histogram,
    /// Seconds from the transaction's commit in Postgres to the broker's confirm.
    pub commit_confirm_seconds: Histogram,
    /// Messages published and not yet confirmed.
    pub in_flight: Gauge,
    /// The LSN confirmed to Postgres (flush position), as a number.
    pub confirmed_lsn: Gauge<u64, AtomicU64>,
    /// The server's WAL end, from the latest keepalive or data message.
    pub server_wal_end: Gauge<u64, AtomicU64>,
    /// Server WAL end minus the confirmed LSN.
    pub lag_bytes: Gauge<u64, AtomicU64>,
    /// WAL the slot retains (`pg_current_wal_lsn() - restart_lsn`), sampled over SQL.
    pub slot_retained_wal_bytes: Gauge<i64, AtomicI64>,
    /// The WAL budget: how much more WAL may be written before the slot is invalidated
    /// (`safe_wal_size`), and the limit (`max_slot_wal_keep_size`); absent when unlimited.
    pub slot_safe_wal_bytes: Family<SlotLabel, Gauge<i64, AtomicI64>>,
    pub slot_wal_keep_size_bytes: Family<SlotLabel, Gauge<i64, AtomicI64>>,
    /// 1 for the RabbitMQ node walrelay publishes through (`host:port`), 0 for the other
    /// nodes of `rabbitmq.url`, all 0 between sessions.
    pub broker_connected: Family<NodeLabel, Gauge>,
    /// 1 while a transaction is being received.
    pub transactions_in_progress: Gauge,
    /// Sessions restarted after a transient error, by side (postgres, rabbitmq).
    pub reconnects: Family<Labels1, Counter>,
    /// Errors by side (postgres, rabbitmq, filter, walrelay) and kind (transient, permanent).
    pub errors: Family<Labels2, Counter>,
    /// 1 while RabbitMQ has blocked the connection (resource alarm).
    pub broker_blocked: Gauge,
    /// Unix time (seconds) of the last message from the server.
    pub last_server_message: Gauge<f64, AtomicU64>,
    /// 1 while replication is streaming.
    pub streaming: Gauge,
    /// Round trip of the heartbeat message, from `pg_logical_emit_message` to its confirm.
    pub heartbeat_seconds: Gauge<f64, AtomicU64>,
    /// Backfill rows read in chunks, rows dropped because the stream carried a newer state
    /// of them, chunks confirmed; the active backfill's state.
    pub backfill_read: Counter,
    pub backfill_superseded: Counter,
    pub backfill_chunks: Counter,
    pub backfill_running: Gauge,
    pub backfill_rows_remaining: Gauge,
    /// The stream sink's own counters (`walrelay_stream_*`).
    pub stream: StreamMetrics,
    /// Resyncs and dead letters (`walrelay_resyncs_total`, `_events_dead_lettered_total`).
    pub heal: HealMetrics,
    /// Events confirmed since start, for the progress log line (not exported: the exported
    /// counters have labels).
    pub progress_events: AtomicU64,
    /// Transactions received since start, for the progress log line.
    pub progress_transactions: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Which of `nodes` is in use (`None`: none, between sessions).
    pub fn broker_node(&self, nodes: &[String], in_use: Option<usize>) {
        for (i, n) in nodes.iter().enumerate() {
            self.broker_connected
                .get_or_create(&[("node", n.clone())])
                .set(i64::from(Some(i) == in_use));
        }
    }

    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("walrelay");
        let m = Metrics {
            events_published: Family::default(),
            bytes_published: Counter::default(),
            events_filtered: Family::default(),
            events_unmatched: Counter::default(),
            values_as_text: Counter::default(),
            flood_transactions: Family::default(),
            flood_events: Family::default(),
            // 0.5 ms .. ~65 s
            publish_confirm_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 18)),
            commit_confirm_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            in_flight: Gauge::default(),
            confirmed_lsn: Gauge::default(),
            server_wal_end: Gauge::default(),
            lag_bytes: Gauge::default(),
            slot_retained_wal_bytes: Gauge::default(),
            slot_safe_wal_bytes: Family::default(),
            slot_wal_keep_size_bytes: Family::default(),
            broker_connected: Family::default(),
            transactions_in_progress: Gauge::default(),
            reconnects: Family::default(),
            errors: Family::default(),
            broker_blocked: Gauge::default(),
            last_server_message: Gauge::default(),
            streaming: Gauge::default(),
            heartbeat_seconds: Gauge::default(),
            backfill_read: Counter::default(),
            backfill_superseded: Counter::default(),
            backfill_chunks: Counter::default(),
            backfill_running: Gauge::default(),
            backfill_rows_remaining: Gauge::default(),
            stream: Default::default(),
            heal: Default::default(),
            progress_events: AtomicU64::new(0),
            progress_transactions: AtomicU64::new(0),
            registry: Registry::default(),
        };
        // The Prometheus convention for build information: a gauge of 1 with the version as a
        // label (`walrelay_build_info`). OpenMetrics' `info` type would be the same sample,
        // but the Prometheus text format, and so `promtool check metrics`, does not know it.
        let build: Family<Labels1, Gauge> = Family::default();
        build
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register("build_info", "walrelay version (always 1)", build);
        let r = &mut registry;
        r.register(
            "events_published",
            "Events confirmed by the broker",
            m.events_published.clone(),
        );
        r.register(
            "bytes_published",
            "Bytes of event bodies confirmed by the broker",
            m.bytes_published.clone(),
        );
        r.register(
            "events_filtered",
            "Changes not published by the filter, by reason",
            m.events_filtered.clone(),
        );
        r.register(
            "events_unmatched",
            "Changes of tables that no filter.include pattern matches and no filter.exclude names (dropped with a warning)",
            m.events_unmatched.clone(),
        );
        r.register(
            "values_as_text",
            "Composite values sent as their text output because the type was altered before walrelay read them",
            m.values_as_text.clone(),
        );
        r.register(
            "flood_transactions",
            "Transactions treated as floods, by trigger",
            m.flood_transactions.clone(),
        );
        r.register(
            "flood_events",
            "Changes of flood transactions, by policy applied",
            m.flood_events.clone(),
        );
        r.register(
            "publish_confirm_seconds",
            "Time from publish to broker confirm",
            m.publish_confirm_seconds.clone(),
        );
        r.register(
            "commit_confirm_seconds",
            "Time from Postgres commit to broker confirm (end-to-end freshness)",
            m.commit_confirm_seconds.clone(),
        );
        r.register(
            "in_flight_messages",
            "Messages published and not yet confirmed",
            m.in_flight.clone(),
        );
        r.register(
            "confirmed_flush_lsn",
            "LSN confirmed to Postgres as flushed",
            m.confirmed_lsn.clone(),
        );
        r.register(
            "server_wal_end_lsn",
            "Latest WAL end reported by the server",
            m.server_wal_end.clone(),
        );
        r.register(
            "replication_lag_bytes",
            "Server WAL end minus the confirmed LSN",
            m.lag_bytes.clone(),
        );
        r.register(
            "slot_retained_wal_bytes",
            "WAL retained by the slot (current WAL LSN minus restart_lsn)",
            m.slot_retained_wal_bytes.clone(),
        );
        r.register(
            "slot_safe_wal_bytes",
            "WAL that may still be written before the slot is invalidated (safe_wal_size)",
            m.slot_safe_wal_bytes.clone(),
        );
        r.register(
            "slot_wal_keep_size_bytes",
            "The server's max_slot_wal_keep_size (absent when unlimited)",
            m.slot_wal_keep_size_bytes.clone(),
        );
        r.register(
            "broker_connected",
            "1 for the RabbitMQ node (host:port of rabbitmq.url) walrelay publishes through, 0 for the others",
            m.broker_connected.clone(),
        );
        r.register(
            "transactions_in_progress",
            "1 while a transaction is being received",
            m.transactions_in_progress.clone(),
        );
        r.register(
            "reconnects",
            "Sessions restarted after a transient error, by side",
            m.reconnects.clone(),
        );
        r.register("errors", "Errors by side and kind", m.errors.clone());
        r.register(
            "broker_blocked",
            "1 while RabbitMQ blocks the connection",
            m.broker_blocked.clone(),
        );
        r.register(
            "last_server_message_timestamp_seconds",
            "Unix time of the last message from Postgres",
            m.last_server_message.clone(),
        );
        r.register(
            "streaming",
            "1 while replication is streaming",
            m.streaming.clone(),
        );
        r.register(
            "backfill_rows",
            "Backfill rows read in chunks (published as read events unless superseded or filtered)",
            m.backfill_read.clone(),
        );
        r.register(
            "backfill_superseded_rows",
            "Backfill rows not published because a change of the same key streamed during their chunk",
            m.backfill_superseded.clone(),
        );
        r.register(
            "backfill_chunks",
            "Backfill chunks confirmed by the broker and recorded",
            m.backfill_chunks.clone(),
        );
        r.register(
            "backfill_running",
            "1 while a backfill runs",
            m.backfill_running.clone(),
        );
        r.register(
            "backfill_rows_remaining",
            "Rows the running backfill still has to read (from the planner's estimate)",
            m.backfill_rows_remaining.clone(),
        );
        // Families with known label sets are exported at 0 from the start, so alerts and
        // dashboards work on a fresh instance (Prometheus: avoid missing metrics).
        for reason in ["excluded", "op", "predicate", "noop"] {
            let _ = m.events_filtered.get_or_create(&[("reason", reason)]);
        }
        for policy in ["skip", "summarize", "reroute", "publish"] {
            let _ = m.flood_events.get_or_create(&[("policy", policy)]);
        }
        for trigger in ["max_changes", "marker", "origin"] {
            let _ = m.flood_transactions.get_or_create(&[("trigger", trigger)]);
        }
        for side in ["postgres", "rabbitmq"] {
            let _ = m.reconnects.get_or_create(&[("side", side)]);
        }
        for side in ERROR_SIDES {
            for kind in ["transient", "permanent"] {
                let _ = m.errors.get_or_create(&[("side", side), ("kind", kind)]);
            }
        }
        m.stream.register(&mut registry);
        m.heal.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// The metrics of a service with these settings: the heartbeat gauge exists only when
    /// heartbeats are on (a 0 would read as a perfect round trip).
    pub fn for_heartbeats(heartbeats: bool) -> Metrics {
        let mut m = Metrics::new();
        if heartbeats {
            m.registry.register(
                "heartbeat_round_trip_seconds",
                "Last heartbeat's time from pg_logical_emit_message to walrelay decoding it",
                m.heartbeat_seconds.clone(),
            );
        }
        m
    }

    /// The Prometheus text exposition (format 0.0.4): what a scraper gets unless it asks for
    /// OpenMetrics, and what `promtool check metrics` reads. Same samples as [`Self::render`];
    /// a counter's `HELP`/`TYPE` lines name its `_total` sample, and there is no `# EOF`.
    pub fn render_text(&self) -> String {
        openmetrics_to_text(&self.render())
    }

    /// The OpenMetrics exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Counts a change dropped by a rule, by reason.
    pub fn filtered(&self, reason: &'static str) {
        self.events_filtered
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    pub fn flood_events(&self, policy: &'static str, n: u64) {
        self.flood_events
            .get_or_create(&[("policy", policy)])
            .inc_by(n);
    }

    pub fn error(&self, side: &'static str, kind: &'static str) {
        self.errors
            .get_or_create(&[("side", side), ("kind", kind)])
            .inc();
    }

    pub fn touch_server(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_server_message.set(now);
    }
}

/// The `side` label values of `walrelay_errors_total`: which part failed (`error::Side` maps
/// onto these; a unit test there keeps both lists equal).
pub const ERROR_SIDES: [&str; 4] = ["postgres", "rabbitmq", "filter", "walrelay"];
