//! The way back from a broken stream (`walrelay resync`, `postgres.on_slot_lost = "resync"`):
//! for each way a slot breaks (invalidated, dropped while streaming, moved while walrelay was
//! down, a publication gap) and for a crash in the middle of a resync, a consumer's copy built
//! from every event in order (the convergence oracle, `common::replica`) ends equal to the
//! table, while writers keep changing it through the heal. Against a healthy slot the command
//! changes nothing, and a policy that could not bring a keyless table back is refused at start.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use crate::common;

use common::replica::Replica;
use common::scene::{Scene, Setup};
use common::*;

const T: Duration = Duration::from_secs(90);

/// Inserts, updates and deletes rows of `orders` until stopped; returns how many statements
/// committed. Ids go up from `first`.
struct Writers {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writers {
    async fn start(url: &str, first: i64) -> Writers {
        let client = connect(url).await;
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicI64::new(0));
        let (s, c) = (Arc::clone(&stop), Arc::clone(&committed));
        let task = tokio::spawn(async move {
            let mut id = first;
            while !s.load(Ordering::Relaxed) {
                let sql = match id % 4 {
                    3 => format!(
                        "UPDATE orders SET status = 'paid {id}' WHERE id = {}",
                        id - 2
                    ),
                    // Rows from before the test too: a row deleted inside a gap is named by no
                    // event, and only the sweep after stream_gap removes it from a copy.
                    2 => format!(
                        "DELETE FROM orders WHERE id IN ({}, {})",
                        id - 1,
                        id % 500 + 1
                    ),
                    _ => format!("INSERT INTO orders VALUES ({id}, 'new {id}')"),
                };
                client
                    .batch_execute(&sql)
                    .await
                    .expect("a writer's statement");
                c.fetch_add(1, Ordering::Relaxed);
                id += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Writers {
            stop,
            committed,
            task,
        }
    }

    async fn stop(self) -> i64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        self.committed.load(Ordering::Relaxed)
    }
}

/// Reads the queue until a `stream_gap` control event came, applying everything to `copy`
/// (the gap too: it starts the copy's sweep of its tables); returns the event.
async fn until_gap(s: &Scene, copy: &mut Replica) -> serde_json::Value {
    let deadline = Instant::now() + T;
    loop {
        assert!(Instant::now() < deadline, "no stream_gap event");
        match s.queue().get().await {
            Some(m) if m.body["kind"] == "stream_gap" => {
                copy.apply(&s.client, &m.body).await;
                return m.body;
            }
            Some(m) => copy.apply(&s.client, &m.body).await,
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Starts walrelay, backfills the table's rows that exist already, and builds a consumer's
/// copy from the events until it equals the table: the state before each break.
async fn streaming_copy(s: &Scene) -> (Relay, Replica) {
    let mut copy = Replica::new(&s.client, &["public.orders"]).await;
    let relay = s.start_streaming().await;
    let out = s.command(&["backfill", "public.orders"]);
    assert!(out.status.success(), "{}", stdout(&out));
    copy.follow(&s.client, s.queue(), "public.orders", T).await;
    (relay, copy)
}

fn stdout(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes WAL past `max_slot_wal_keep_size` (64MB) behind an inactive slot until it is lost.
async fn invalidate(s: &Scene) {
    for _ in 0..6 {
        s.sql("INSERT INTO junk SELECT repeat('x', 2000) FROM generate_series(1, 20000); SELECT pg_switch_wal(); CHECKPOINT;")
            .await;
        if slot_wal_status(&s.client, &s.slot).await == "lost" {
            return;
        }
    }
    panic!(
        "the slot was not invalidated: {}",
        slot_wal_status(&s.client, &s.slot).await
    );
}

const SCHEMA: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, status text);
     CREATE TABLE junk (v text);
     INSERT INTO orders SELECT g, 'old' FROM generate_series(1, 500) g;";

/// An invalidated slot, healed by hand: `walrelay` stops naming the command, `--dry-run`
/// prints the plan and changes nothing, `walrelay resync` records, repairs and announces, and
/// the restarted walrelay backfills; the copy equals the table, with writers active throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_is_resynced_by_the_command_and_the_copy_converges() {
    let s = Scene::with(
        SCHEMA,
        &["public.orders"],
        Setup {
            conf: &["max_slot_wal_keep_size = 64MB"],
            ..Setup::default()
        },
    )
    .await;
    let (mut relay, mut copy) = streaming_copy(&s).await;
    relay.kill9();

    let writers = Writers::start(&s.url(), 1000).await;
    invalidate(&s).await;
    let mut relay = s.start();
    assert!(!relay.wait_exit(T).await.success());
    assert!(relay.log().contains("walrelay resync"), "{}", relay.log());

    let plan = stdout(&s.command(&["resync", "--dry-run"]));
    assert!(
        plan.contains("slot_invalidated")
            && plan.contains("public.orders")
            && plan.contains("dry run"),
        "{plan}"
    );
    assert_eq!(
        slot_wal_status(&s.client, &s.slot).await,
        "lost",
        "a dry run changes nothing"
    );
    let started = Instant::now();
    let out = s.command(&["resync"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let relay = s.start_streaming().await;
    let gap = until_gap(&s, &mut copy).await;
    assert_eq!(gap["gap"]["cause"], "slot_invalidated", "{gap}");
    assert_eq!(gap["gap"]["tables"], serde_json::json!(["public.orders"]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let committed = writers.stop().await;
    let applied = copy.follow(&s.client, s.queue(), "public.orders", T).await;
    eprintln!(
        "resync: invalidated slot, by command: {committed} statements by writers, {applied} events after the gap, \
         copy equal {:.1} s after the resync began",
        started.elapsed().as_secs_f64()
    );
    drop(relay);
    s.finish().await;
}

/// The same loss met by a walrelay with `on_slot_lost = "resync"`: it heals by itself, counts
/// it in `walrelay_resyncs_total{cause}`, and keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_is_resynced_by_the_policy() {
    let s = Scene::with(
        SCHEMA,
        &["public.orders"],
        Setup {
            conf: &["max_slot_wal_keep_size = 64MB"],
            ..Setup::default()
        },
    )
    .await;
    s.set("postgres", "on_slot_lost", "\"resync\"");
    let (mut relay, mut copy) = streaming_copy(&s).await;
    relay.kill9();
    let writers = Writers::start(&s.url(), 1000).await;
    invalidate(&s).await;
    let started = Instant::now();
    let relay = s.start();
    let gap = until_gap(&s, &mut copy).await;
    assert_eq!(gap["gap"]["cause"], "slot_invalidated", "{gap}");
    let committed = writers.stop().await;
    let applied = copy.follow(&s.client, s.queue(), "public.orders", T).await;
    let healed = started.elapsed().as_secs_f64();
    let port = relay.http_port().await;
    let metrics = http_get(port, "/metrics").1;
    assert_eq!(
        metric(
            &metrics,
            "walrelay_resyncs_total{cause=\"slot_invalidated\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert!(relay.log().contains("resynced"), "{}", relay.log());
    eprintln!(
        "resync: invalidated slot, by policy: {committed} statements, {applied} events after the gap, copy equal after {healed:.1} s"
    );
    drop(relay);
    s.finish().await;
}

/// A slot dropped under a running walrelay (its walsender terminated, the slot dropped before
/// it reconnects): with the policy, the slot is created again and the copy converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_dropped_while_streaming_is_recreated_by_the_policy() {
    let s = Scene::new(SCHEMA, &["public.orders"]).await;
    s.set("postgres", "on_slot_lost", "\"resync\"");
    s.set("service", "reconnect_min_ms", "1000");
    let (relay, mut copy) = streaming_copy(&s).await;
    let writers = Writers::start(&s.url(), 1000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    wait_for("the slot dropped", T, || async {
        let r = s
            .client
            .batch_execute(&format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{0}' AND active;
                 SELECT pg_sleep(0.2);
                 SELECT pg_drop_replication_slot('{0}');",
                s.slot
            ))
            .await;
        r.is_ok().then_some(())
    })
    .await;
    let gap = until_gap(&s, &mut copy).await;
    assert_eq!(gap["gap"]["cause"], "slot_dropped", "{gap}");
    assert!(
        gap["gap"]["from_lsn"].is_string(),
        "the last confirmed position is known: {gap}"
    );
    let committed = writers.stop().await;
    let applied = copy.follow(&s.client, s.queue(), "public.orders", T).await;
    eprintln!(
        "resync: slot dropped while streaming: {committed} statements, {applied} events after the gap, copy equal after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(relay);
    s.finish().await;
}

/// A slot advanced by someone else while walrelay was down, seen through `state_file`: the
/// command accepts the new position (nothing to drop) and backfills what was skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_while_walrelay_was_down_is_resynced_with_the_state_file() {
    let s = Scene::new(SCHEMA, &["public.orders"]).await;
    let state = s.dir.path().join("position");
    s.set(
        "service",
        "state_file",
        &format!("{:?}", state.display().to_string()),
    );
    let (mut relay, mut copy) = streaming_copy(&s).await;
    relay.terminate(T).expect("walrelay stops on SIGTERM");
    s.sql("INSERT INTO orders VALUES (900, 'while down'); UPDATE orders SET status = 'moved' WHERE id < 10;")
        .await;
    s.sql(&format!(
        "SELECT pg_replication_slot_advance('{}', pg_current_wal_lsn())",
        s.slot
    ))
    .await;
    let mut relay = s.start();
    assert!(!relay.wait_exit(T).await.success());
    assert!(relay.log().contains("by someone else"), "{}", relay.log());
    let out = s.command(&["resync"]);
    let text = stdout(&out);
    assert!(
        out.status.success() && text.contains("slot_moved"),
        "{text}"
    );
    let relay = s.start_streaming().await;
    let gap = until_gap(&s, &mut copy).await;
    assert_eq!(gap["gap"]["cause"], "slot_moved");
    copy.follow(&s.client, s.queue(), "public.orders", T).await;
    drop(relay);
    s.finish().await;
}

/// A publication dropped and created again under a running walrelay with the policy: the gap
/// is recorded, the slot advanced past it, and the copy converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_gap_is_resynced_by_the_policy() {
    let s = Scene::new(SCHEMA, &["public.orders"]).await;
    s.set("postgres", "on_slot_lost", "\"resync\"");
    let (relay, mut copy) = streaming_copy(&s).await;
    let writers = Writers::start(&s.url(), 1000).await;
    s.sql(&format!(
        "DROP PUBLICATION {p};
         INSERT INTO orders VALUES (900, 'in the gap');
         UPDATE orders SET status = 'paid in the gap' WHERE id = 1;
         CREATE PUBLICATION {p} FOR TABLE orders WITH (publish_via_partition_root = true);",
        p = s.slot
    ))
    .await;
    let gap = until_gap(&s, &mut copy).await;
    assert_eq!(gap["gap"]["cause"], "publication_gap", "{gap}");
    let committed = writers.stop().await;
    copy.follow(&s.client, s.queue(), "public.orders", T).await;
    eprintln!("resync: publication gap, by policy: {committed} statements by writers, copy equal");
    drop(relay);
    s.finish().await;
}

/// `kill -9` in the middle of a resync (after the gap is recorded; after the slot is
/// repaired): the record stays pending, and the next `walrelay run` finishes it before it
/// streams; the copy converges either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_killed_midway_is_finished_by_the_next_start() {
    for point in ["resync.after_record", "resync.after_repair"] {
        let s = Scene::new(SCHEMA, &["public.orders"]).await;
        let (mut relay, mut copy) = streaming_copy(&s).await;
        relay.terminate(T).expect("walrelay stops on SIGTERM");
        s.sql(&format!(
            "SELECT pg_drop_replication_slot('{}'); INSERT INTO orders VALUES (900, 'lost');",
            s.slot
        ))
        .await;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_walrelay"))
            .args(["resync", "--config"])
            .arg(&s.config)
            .env("WALRELAY_FAILPOINT", point)
            .env_remove("DATABASE_URL")
            .env_remove("AMQP_URL")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{point}: the failpoint aborts");
        let pending: i64 = s
            .client
            .query_one(
                "SELECT count(*) FROM walrelay.resync WHERE state = 'pending'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(pending, 1, "{point}: the gap stays recorded");
        let plan = stdout(&s.command(&["resync", "--dry-run"]));
        assert!(plan.contains("would be resumed"), "{plan}");
        let relay = s.start_streaming().await;
        assert!(
            relay.log().contains("a resync was interrupted"),
            "{}",
            relay.log()
        );
        let gap = until_gap(&s, &mut copy).await;
        assert_eq!(gap["gap"]["cause"], "slot_dropped", "{point}: {gap}");
        copy.follow(&s.client, s.queue(), "public.orders", T).await;
        let done: i64 = s
            .client
            .query_one(
                "SELECT count(*) FROM walrelay.resync WHERE state = 'done'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(done, 1, "{point}: finished once");
        drop(relay);
        s.finish().await;
    }
}

/// Bad input: the command against a healthy slot says so and changes nothing; the policy with
/// a published table that has no key is refused at start, naming the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_slot_is_left_alone_and_a_keyless_table_refuses_the_policy() {
    let s = Scene::new(
        "CREATE TABLE orders (id bigint PRIMARY KEY, status text);
         CREATE TABLE events_log (at timestamptz, what text);",
        &["public.orders", "public.events_log"],
    )
    .await;
    let mut relay = s.start_streaming().await;
    s.sql("INSERT INTO orders VALUES (1, 'new')").await;
    relay.terminate(T).expect("walrelay stops on SIGTERM");
    let before = s.confirmed().await;
    let out = s.command(&["resync"]);
    let text = stdout(&out);
    assert!(
        out.status.success() && text.contains("is healthy"),
        "{text}"
    );
    assert_eq!(s.confirmed().await, before, "nothing moved");
    let records: i64 = s
        .client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'resync'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(records, 0, "nothing recorded");

    s.set("postgres", "on_slot_lost", "\"resync\"");
    let mut relay = s.start();
    assert!(!relay.wait_exit(T).await.success());
    let log = relay.log();
    assert!(
        log.contains("public.events_log") && log.contains("no primary key"),
        "{log}"
    );
    s.finish().await;
}
