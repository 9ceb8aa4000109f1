//! Composite types that change under a running walrelay: a type created after the catalog was
//! read, an attribute added while streaming, and a backlog of values older than the catalog a
//! new process reads. None of them may stop walrelay for good or lose a change.

use crate::common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(90);

const SCHEMA: &str = "CREATE TYPE addr AS (street text, city text);
     CREATE TABLE people (id int PRIMARY KEY, a addr);";

/// `to_jsonb` of the row now, as a JSON value.
async fn to_jsonb(c: &tokio_postgres::Client, id: i32) -> serde_json::Value {
    let row = c
        .query_one(
            "SELECT to_jsonb(x)::text FROM people x WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    serde_json::from_str(row.get::<_, &str>(0)).unwrap()
}

/// A config streaming `public.people` to a fresh exchange with a queue bound to everything:
/// (its directory, kept alive by the caller; the config; the slot; the queue).
async fn scene(
    pg: &PgCluster,
    db: &str,
) -> (tempfile::TempDir, std::path::PathBuf, String, TestQueue) {
    let exchange = unique("ex");
    let queue = TestQueue::new(&exchange, Some("#")).await;
    let dir = tempfile::tempdir().unwrap();
    let slot = unique("slot");
    let cfg = write_config(
        dir.path(),
        &pg.url(db),
        amqp_url(),
        &slot,
        &exchange,
        &["public.people"],
        "",
    );
    (dir, cfg, slot, queue)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_created_or_altered_while_streaming_render_after_a_catalog_reload() {
    let (pg, db, c) = PgCluster::with_db(SCHEMA).await;
    let (_dir, cfg, slot, queue) = scene(&pg, &db).await;
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;

    c.batch_execute("INSERT INTO people VALUES (1, ROW('Main St 1', 'Oslo'))")
        .await
        .unwrap();
    // Confirmed before the type changes: otherwise the restart below would replay row 1,
    // which is then older than the catalog (the case of the next test).
    let first = current_lsn(&c).await;
    wait_for("row 1 confirmed", T, || async {
        (slot_confirmed(&c, &slot).await >= first).then_some(())
    })
    .await;
    // An attribute added while streaming: the new value has one more attribute.
    c.batch_execute(
        "ALTER TYPE addr ADD ATTRIBUTE zip text;
         INSERT INTO people VALUES (2, ROW('Elm 2', 'Bergen', '5003'))",
    )
    .await
    .unwrap();
    // A type created while streaming, in a new column of a published table.
    c.batch_execute(
        "CREATE TYPE point2 AS (x int, y int);
         ALTER TABLE people ADD COLUMN p point2;
         INSERT INTO people VALUES (3, ROW('Pine 3', 'Tromsø', NULL), ROW(1, -2))",
    )
    .await
    .unwrap();
    // Each catalog reload is a new session: a change published but not yet confirmed when it
    // ended comes again, with the same id.
    let got = queue.take_distinct(3, T).await;
    for (m, id) in got.iter().zip(1..) {
        assert_eq!(m.body["new"]["id"], id);
        let mut want = to_jsonb(&c, id).await;
        if id == 1 {
            // Decoded with the type as it was at commit: no zip, and no p column yet.
            want["a"].as_object_mut().unwrap().remove("zip");
            want.as_object_mut().unwrap().remove("p");
        }
        if id == 2 {
            want.as_object_mut().unwrap().remove("p");
        }
        assert_eq!(m.body["new"], want, "row {id}");
    }
    assert!(relay.log().contains("reading the types again"));
    assert!(!relay.log().contains("stopping"));
    queue.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_older_than_the_catalog_are_sent_as_text_not_stuck() {
    let (pg, db, c) = PgCluster::with_db(SCHEMA).await;
    let (_dir, cfg, _slot, queue) = scene(&pg, &db).await;
    let mut relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;
    relay.terminate(T).expect("walrelay stops on SIGTERM");

    // While walrelay is down: a value of the old shape, then the type grows, then a value of
    // the new shape. A new process reads today's catalog, older than neither.
    c.batch_execute(
        "INSERT INTO people VALUES (1, ROW('Main St 1', 'Oslo'));
         ALTER TYPE addr ADD ATTRIBUTE zip text;
         INSERT INTO people VALUES (2, ROW('Elm 2', 'Bergen', '5003'))",
    )
    .await
    .unwrap();
    let relay = Relay::start(&cfg);
    let got = queue.take_distinct(2, T).await;
    assert_eq!(got[0].body["new"]["id"], 1);
    assert_eq!(
        got[0].body["new"]["a"], "(\"Main St 1\",Oslo)",
        "the old value, as its text output"
    );
    assert_eq!(got[1].body["new"], to_jsonb(&c, 2).await);
    let log = relay.log();
    assert!(log.contains("reading the types again"), "{log}");
    assert!(log.contains("sent as text"), "{log}");
    let port = relay.http_port().await;
    let metrics = tokio::task::spawn_blocking(move || http_get(port, "/metrics").1)
        .await
        .unwrap();
    assert!(
        metrics.contains("walrelay_values_as_text_total 1"),
        "{metrics}"
    );
    queue.delete().await;
}
