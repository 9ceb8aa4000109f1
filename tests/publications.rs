//! Every publication shape PostgreSQL can send, against a real server: partitioned tables (via
//! the root and via the partitions, multi-level, partitions created, attached and detached
//! while streaming), FOR ALL TABLES and FOR TABLES IN SCHEMA with tables created later,
//! ALTER PUBLICATION while running, column lists and row filters, generated columns, replica
//! identities, renames, drops and multi-table truncates, odd identifiers, and changes of
//! tables the configuration does not mention (warned and counted, or stopped on).

use crate::common;

use std::time::Duration;

use common::scene::Scene;
use common::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

fn names(msgs: &[Received]) -> Vec<(String, String, String)> {
    msgs.iter()
        .map(|m| {
            (
                m.body["schema"].as_str().unwrap_or("").to_owned(),
                m.body["table"].as_str().unwrap_or("").to_owned(),
                m.body["op"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn n(schema: &str, table: &str, op: &str) -> (String, String, String) {
    (schema.into(), table.into(), op.into())
}

const PARTITIONED: &str = "CREATE TABLE m (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
     CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
     CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us') PARTITION BY RANGE (id);
     CREATE TABLE m_us_low PARTITION OF m_us FOR VALUES FROM (0) TO (100);
     CREATE TABLE m_us_high PARTITION OF m_us FOR VALUES FROM (100) TO (MAXVALUE);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_table_streams_under_its_root_through_the_publication_walrelay_creates() {
    let s = Scene::new(PARTITIONED, &["public.m"]).await;
    let mut relay = s.start_streaming().await;
    let via_root: bool = s
        .client
        .query_one(
            "SELECT pubviaroot FROM pg_publication WHERE pubname = $1",
            &[&s.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert!(via_root, "created with publish_via_partition_root");
    s.sql(
        "INSERT INTO m VALUES (1, 'eu', 0), (2, 'us', 0), (200, 'us', 0);
         UPDATE m SET v = 1 WHERE id = 1;",
    )
    .await;
    let got = s.queue().take(4, T).await;
    assert_eq!(
        names(&got),
        [
            n("public", "m", "insert"),
            n("public", "m", "insert"),
            n("public", "m", "insert"),
            n("public", "m", "update"),
        ]
    );
    assert_eq!(got[0].routing_key, "public.m.insert");
    assert_eq!(got[0].body["key"], json!({"id": 1, "region": "eu"}));
    assert_eq!(
        got[0].body["partition"],
        Value::Null,
        "PostgreSQL does not say which"
    );
    // Partitions created and attached while streaming; a detached one leaves the tree.
    s.sql(
        "CREATE TABLE m_asia PARTITION OF m FOR VALUES IN ('asia');
         CREATE TABLE m_af (id int NOT NULL, region text NOT NULL, v int);
         ALTER TABLE m ATTACH PARTITION m_af FOR VALUES IN ('af');
         INSERT INTO m VALUES (3, 'asia', 0), (4, 'af', 0);
         ALTER TABLE m DETACH PARTITION m_eu;
         INSERT INTO m_eu VALUES (5, 'eu', 0);
         INSERT INTO m VALUES (6, 'af', 0);",
    )
    .await;
    let got = s.queue().take(3, T).await;
    let ids: Vec<i64> = got
        .iter()
        .map(|m| m.body["key"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids,
        [3, 4, 6],
        "the detached partition is no longer published"
    );
    assert!(names(&got).iter().all(|x| x.1 == "m"));
    assert!(s.queue().drain(Duration::from_millis(500)).await.is_empty());
    assert!(!relay.log().contains("no filter.include pattern matches"));
    // `status` names nothing unmatched, `doctor` says how the table is named.
    let status = s.command(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(!text.contains("unmatched"), "{text}");
    relay.kill9();
    let doctor = s.command(&["doctor"]);
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        text.contains("public.m is partitioned") && text.contains("published under its own name"),
        "{text}"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_of_a_publication_without_via_root_are_mapped_to_their_root() {
    let s = Scene::new(PARTITIONED, &["public.m"]).await;
    s.sql(&format!("CREATE PUBLICATION {} FOR TABLE m", s.slot))
        .await;
    let relay = s.start_streaming().await;
    relay
        .wait_log("publishes partitions under their own names", T)
        .await;
    s.sql(
        "INSERT INTO m VALUES (1, 'eu', 0), (2, 'us', 0), (200, 'us', 0);
         UPDATE m SET v = 1 WHERE id = 200;
         DELETE FROM m WHERE id = 2;
         CREATE TABLE m_asia PARTITION OF m FOR VALUES IN ('asia');
         INSERT INTO m VALUES (3, 'asia', 0);",
    )
    .await;
    let got = s.queue().take(6, T).await;
    let seen: Vec<(String, String, Value)> = got
        .iter()
        .map(|m| {
            (
                m.body["table"].as_str().unwrap().to_owned(),
                m.routing_key.clone(),
                m.body["partition"]["table"].clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("m".into(), "public.m.insert".into(), json!("m_eu")),
            ("m".into(), "public.m.insert".into(), json!("m_us_low")),
            ("m".into(), "public.m.insert".into(), json!("m_us_high")),
            ("m".into(), "public.m.update".into(), json!("m_us_high")),
            ("m".into(), "public.m.delete".into(), json!("m_us_low")),
            ("m".into(), "public.m.insert".into(), json!("m_asia")),
        ]
    );
    assert_eq!(got[3].body["key"], json!({"id": 200, "region": "us"}));
    assert!(!relay.log().contains("no filter.include pattern matches"));
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn for_all_tables_and_tables_in_schema_stream_tables_created_later() {
    for shape in ["FOR ALL TABLES", "FOR TABLES IN SCHEMA public"] {
        let s = Scene::new(
            "CREATE TABLE a (id int PRIMARY KEY); CREATE SCHEMA other; CREATE TABLE other.x (id int PRIMARY KEY);",
            &["public.*"],
        )
        .await;
        s.sql(&format!("CREATE PUBLICATION {} {shape}", s.slot))
            .await;
        let relay = s.start_streaming().await;
        s.sql(
            "INSERT INTO a VALUES (1);
             CREATE TABLE later (id int PRIMARY KEY, note text);
             INSERT INTO later VALUES (1, 'first change');
             INSERT INTO other.x VALUES (1);
             INSERT INTO a VALUES (2);",
        )
        .await;
        let got = s.queue().take(3, T).await;
        assert_eq!(
            names(&got),
            [
                n("public", "a", "insert"),
                n("public", "later", "insert"),
                n("public", "a", "insert"),
            ],
            "{shape}"
        );
        assert_eq!(got[1].body["new"]["note"], "first change");
        if shape == "FOR ALL TABLES" {
            // other.x is published but not included: dropped loudly, never quietly.
            relay
                .wait_log("no filter.include pattern matches it", T)
                .await;
            assert!(relay.log().contains("other.x"));
            let port = relay.http_port().await;
            let (_, metrics) = http_get(port, "/metrics");
            assert_eq!(metric(&metrics, "walrelay_events_unmatched_total"), 1.0);
            let status = s.command(&["status"]);
            let text = String::from_utf8_lossy(&status.stdout);
            assert!(
                text.contains("unmatched") && text.contains("other.x"),
                "{text}"
            );
        }
        assert!(s.queue().drain(Duration::from_millis(300)).await.is_empty());
        drop(relay);
        s.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_publication_while_running_is_followed_without_a_restart() {
    let s = Scene::new(
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);",
        &["public.*"],
    )
    .await;
    s.sql(&format!("CREATE PUBLICATION {} FOR TABLE a", s.slot))
        .await;
    let relay = s.start_streaming().await;
    s.sql(&format!(
        "INSERT INTO a VALUES (1); INSERT INTO b VALUES (1);
         ALTER PUBLICATION {p} ADD TABLE b;
         INSERT INTO b VALUES (2);
         ALTER PUBLICATION {p} DROP TABLE a;
         INSERT INTO a VALUES (2); INSERT INTO b VALUES (3);",
        p = s.slot
    ))
    .await;
    let got = s.queue().take(3, T).await;
    let seen: Vec<(String, i64)> = got
        .iter()
        .map(|m| {
            (
                m.body["table"].as_str().unwrap().to_owned(),
                m.body["key"]["id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [("a".into(), 1), ("b".into(), 2), ("b".into(), 3)]);
    assert!(s.queue().drain(Duration::from_millis(500)).await.is_empty());
    assert!(!relay.log().contains("session ended"));
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_lists_row_filters_generated_columns_and_replica_identities() {
    let s = Scene::new(
        "CREATE TABLE t (id int PRIMARY KEY, a int, secret text, total int GENERATED ALWAYS AS (a * 2) STORED);
         CREATE TABLE ui (code text NOT NULL, tenant int NOT NULL, v int);
         CREATE UNIQUE INDEX ui_key ON ui (tenant, code);
         ALTER TABLE ui REPLICA IDENTITY USING INDEX ui_key;
         CREATE TABLE nothing_t (id int PRIMARY KEY, v int);
         ALTER TABLE nothing_t REPLICA IDENTITY NOTHING;",
        &["public.*"],
    )
    .await;
    let v18 = s.server_version().await >= 180_000;
    let with = if v18 {
        " WITH (publish_generated_columns = stored)"
    } else {
        ""
    };
    s.sql(&format!(
        "CREATE PUBLICATION {p} FOR TABLE t (id, a{gen}) WHERE (a > 0), ui{with};
         CREATE PUBLICATION {p}_ins FOR TABLE nothing_t WITH (publish = 'insert');",
        p = s.slot,
        gen = if v18 { ", total" } else { "" },
    ))
    .await;
    s.set("postgres", "publication", &format!("\"{}\"", s.slot));
    s.append("[[filter.table]]\nname = \"public.t\"\nwhere = \"new.a < 100\"\n");
    let doctor = s.command(&["doctor"]);
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        text.contains("public.t: the publication's column list publishes only (id, a")
            && text.contains(
                "public.t: the publication's row filter publishes only rows WHERE (a > 0)"
            )
            && text.contains("public.ui: key = replica identity index code, tenant"),
        "{text}"
    );
    let relay = s.start_streaming().await;
    s.sql(
        "INSERT INTO t VALUES (1, 5, 'x'), (2, 0, 'x'), (3, 500, 'x'), (4, 7, 'x');
         INSERT INTO ui VALUES ('A-1', 9, 0);
         UPDATE ui SET v = 1 WHERE code = 'A-1';
         UPDATE ui SET code = 'A-2' WHERE code = 'A-1';
         DELETE FROM ui WHERE code = 'A-2';",
    )
    .await;
    let got = s.queue().take(6, T).await;
    // The server's row filter drops id 2, walrelay's predicate id 3; the column list hides
    // `secret`; the generated column is published on 18 with publish_generated_columns.
    let expect_new = |id: i64, a: i64| {
        if v18 {
            json!({"id": id, "a": a, "total": a * 2})
        } else {
            json!({"id": id, "a": a})
        }
    };
    assert_eq!(got[0].body["new"], expect_new(1, 5));
    assert_eq!(got[1].body["new"], expect_new(4, 7));
    let generated: String = s
        .client
        .query_one("SELECT to_jsonb(t.total)::text FROM t WHERE id = 4", &[])
        .await
        .unwrap()
        .get(0);
    let generated: Value = serde_json::from_str(&generated).unwrap();
    if v18 {
        assert_eq!(got[1].body["new"]["total"], generated);
    }
    // USING INDEX without a primary key: the key is the index's columns, in table order.
    for m in &got[2..] {
        assert_eq!(m.body["table"], "ui");
    }
    assert_eq!(got[2].body["key"], json!({"code": "A-1", "tenant": 9}));
    assert_eq!(got[3].body["key"], json!({"code": "A-1", "tenant": 9}));
    assert_eq!(
        got[4].body["key"],
        json!({"code": "A-1", "tenant": 9}),
        "old key"
    );
    assert_eq!(got[4].body["new"]["code"], "A-2");
    assert_eq!(got[5].body["key"], json!({"code": "A-2", "tenant": 9}));
    assert!(s.queue().drain(Duration::from_millis(300)).await.is_empty());
    drop(relay);
    // REPLICA IDENTITY NOTHING: inserts still stream, keyed by the primary key.
    s.set("postgres", "publication", &format!("\"{}_ins\"", s.slot));
    s.set("postgres", "slot", &format!("\"{}_b\"", s.slot));
    let _relay = s.start_streaming().await;
    s.sql("INSERT INTO nothing_t VALUES (1, 1);").await;
    let got = s.queue().take(1, T).await;
    assert_eq!(got[0].body["key"], json!({"id": 1}));
    assert_eq!(got[0].body["old"], Value::Null);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renames_drops_and_truncates_of_several_tables() {
    let s = Scene::new(
        "CREATE TABLE parent (id serial PRIMARY KEY);
         CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent (id));
         CREATE TABLE doomed (id int PRIMARY KEY);",
        &["public.*"],
    )
    .await;
    s.sql(&format!("CREATE PUBLICATION {} FOR ALL TABLES", s.slot))
        .await;
    let _relay = s.start_streaming().await;
    s.sql(
        "INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1);
         ALTER TABLE child RENAME TO kid;
         INSERT INTO kid VALUES (2, 1);
         INSERT INTO doomed VALUES (1);
         DROP TABLE doomed;
         TRUNCATE parent, kid RESTART IDENTITY CASCADE;",
    )
    .await;
    let got = s.queue().take(6, T).await;
    assert_eq!(
        names(&got),
        [
            n("public", "parent", "insert"),
            n("public", "child", "insert"),
            n("public", "kid", "insert"),
            n("public", "doomed", "insert"),
            n("public", "parent", "truncate"),
            n("public", "kid", "truncate"),
        ]
    );
    for t in &got[4..] {
        assert_eq!(
            t.body["truncate"],
            json!({"cascade": true, "restart_identity": true})
        );
    }
    assert_ne!(got[4].message_id, got[5].message_id);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifiers_that_need_quoting_everywhere() {
    let long = "t".repeat(63);
    let s = Scene::new(
        &format!(
            "CREATE SCHEMA \"Odd Schema\";
             CREATE TABLE \"Odd Schema\".\"my.table\" (\"Id\" int PRIMARY KEY, \"the value\" text);
             CREATE TABLE public.\"Quote\"\"d\" (id int PRIMARY KEY);
             CREATE TABLE public.\"tåble\" (id int PRIMARY KEY);
             CREATE TABLE public.{long} (id int PRIMARY KEY);"
        ),
        &[
            "\"Odd Schema\".\"my.table\"",
            "public.\"Quote\"\"d\"",
            "public.tåble",
            &format!("public.{long}"),
        ],
    )
    .await;
    let _relay = s.start_streaming().await;
    s.sql(&format!(
        "INSERT INTO \"Odd Schema\".\"my.table\" VALUES (1, 'a.b');
         INSERT INTO public.\"Quote\"\"d\" VALUES (1);
         INSERT INTO public.\"tåble\" VALUES (1);
         INSERT INTO public.{long} VALUES (1);"
    ))
    .await;
    let got = s.queue().take(4, T).await;
    assert_eq!(
        names(&got),
        [
            n("Odd Schema", "my.table", "insert"),
            n("public", "Quote\"d", "insert"),
            n("public", "tåble", "insert"),
            n("public", &long, "insert"),
        ]
    );
    assert_eq!(got[0].routing_key, "Odd Schema.my%2Etable.insert");
    assert_eq!(got[0].body["key"], json!({"Id": 1}));
    assert_eq!(got[0].body["new"]["the value"], "a.b");
    assert_eq!(got[1].routing_key, "public.Quote\"d.insert");
    assert_eq!(got[2].routing_key, "public.tåble.insert");
    let header = |m: &Received, h: &str| m.header(h).unwrap_or_default();
    assert_eq!(header(&got[0], "table"), "my.table");
    assert_eq!(header(&got[0], "schema"), "Odd Schema");
    assert_eq!(header(&got[1], "table"), "Quote\"d");
    // A binding that names the escaped word matches exactly that table.
    let q = TestQueue::named(
        amqp_url(),
        &s.exchange,
        &unique("odd"),
        Some("Odd Schema.my%2Etable.*"),
        Default::default(),
    )
    .await;
    s.sql("INSERT INTO \"Odd Schema\".\"my.table\" VALUES (2, 'x'); INSERT INTO public.\"tåble\" VALUES (2);")
        .await;
    let only = q.take(1, T).await;
    assert_eq!(only[0].body["key"], json!({"Id": 2}));
    assert!(q.drain(Duration::from_millis(300)).await.is_empty());
    q.delete_queue().await;
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmatched_table_stops_walrelay_when_configured() {
    let s = Scene::new(
        "CREATE TABLE orders (id int PRIMARY KEY); CREATE TABLE stray (id int PRIMARY KEY);",
        &["public.orders"],
    )
    .await;
    s.sql(&format!(
        "CREATE PUBLICATION {} FOR TABLE orders, stray",
        s.slot
    ))
    .await;
    s.set("filter", "on_unmatched", "\"stop\"");
    let mut relay = s.start_streaming().await;
    s.sql("INSERT INTO orders VALUES (1);").await;
    s.queue().take(1, T).await;
    let before = slot_confirmed(&s.client, &s.slot).await;
    s.sql("INSERT INTO stray VALUES (1); INSERT INTO orders VALUES (2);")
        .await;
    let status = relay.wait_exit(T).await;
    assert!(!status.success());
    let log = relay.log();
    assert!(
        log.contains("a change of public.stray reached walrelay") && log.contains("filter.exclude"),
        "{log}"
    );
    assert!(s.queue().drain(Duration::from_millis(300)).await.is_empty());
    let after = slot_confirmed(&s.client, &s.slot).await;
    let stray_lsn = current_lsn(&s.client).await;
    assert!(
        after < stray_lsn && after >= before,
        "the slot holds the unmatched change"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlogged_tables_are_left_out_of_the_publication_and_doctor_says_why() {
    let s = Scene::new(
        "CREATE TABLE kept (id int PRIMARY KEY); CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY);",
        &["public.*"],
    )
    .await;
    let doctor = s.command(&["doctor"]);
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        text.contains("WARN postgres: public.scratch is UNLOGGED"),
        "{text}"
    );
    let relay = s.start_streaming().await;
    assert!(relay.log().contains("table is UNLOGGED"), "{}", relay.log());
    s.sql("INSERT INTO scratch VALUES (1); INSERT INTO kept VALUES (1);")
        .await;
    let got = s.queue().take(1, T).await;
    assert_eq!(got[0].body["table"], "kept");
    drop(relay);
    // Named exactly, an unlogged table stops the start with the remedy.
    s.set("filter", "include", "[\"public.scratch\"]");
    s.set("postgres", "publication", &format!("\"{}_2\"", s.slot));
    let mut relay = s.start();
    assert!(!relay.wait_exit(T).await.success());
    assert!(relay.log().contains("SET LOGGED"), "{}", relay.log());
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_catalog_connection_is_reopened_without_ending_the_session() {
    let s = Scene::new("CREATE TABLE a (id int PRIMARY KEY);", &["public.a"]).await;
    let relay = s.start_streaming().await;
    s.sql("INSERT INTO a VALUES (1);").await;
    s.queue().take(1, T).await;
    // An idle timeout or a proxy closes walrelay's plain SQL connection…
    let killed: i64 = s
        .client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND application_name = 'walrelay'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1, "walrelay keeps one catalog connection");
    // …and the next Relation message (after DDL) needs it.
    s.sql("ALTER TABLE a ADD COLUMN note text; INSERT INTO a VALUES (2, 'after');")
        .await;
    let got = s.queue().take(1, T).await;
    assert_eq!(got[0].body["new"], json!({"id": 2, "note": "after"}));
    assert!(!relay.log().contains("session ended"), "{}", relay.log());
    s.finish().await;
}
