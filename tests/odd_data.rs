//! Odd data, end to end: enums, domains, ranges, composites (nested, in arrays, with quotes and
//! NULLs), hstore, arrays of them, citext, NaN and infinities, and a 1,600-column table render
//! exactly as `to_jsonb()`; invalid UTF-8 from a `SQL_ASCII` database stops walrelay
//! with a clear error instead of publishing garbage or skipping the row.

use crate::common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(90);

async fn stream(pg: &PgCluster, db: &str, tables: &[&str]) -> (Relay, TestQueue) {
    let exchange = unique("ex");
    let queue = TestQueue::new(&exchange, Some("#")).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &pg.url(db),
        amqp_url(),
        &unique("slot"),
        &exchange,
        tables,
        "",
    );
    // Keep the config alive with the relay.
    let relay = Relay::start(&cfg);
    std::mem::forget(dir);
    (relay, queue)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_types_and_a_1600_column_table_match_to_jsonb() {
    let pg = PgCluster::start();
    let db = unique("app");
    let c = pg.create_db(&db).await;
    let wide_cols: Vec<String> = (1..1600).map(|i| format!("c{i} int")).collect();
    c.batch_execute(&format!(
        "CREATE EXTENSION hstore; CREATE EXTENSION citext;
         CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE DOMAIN posint AS int CHECK (VALUE > 0);
         CREATE DOMAIN taglist AS text[];
         CREATE TYPE point2 AS (x float8, y float8);
         CREATE TYPE labelled AS (label text, at point2, tags text[], ok bool, seen timestamptz);
         CREATE TABLE odd (id int PRIMARY KEY, m mood, ma mood[], p posint, t taglist,
           r int4range, ra int4range[], tr tstzrange, h hstore, ci citext,
           f float8, fa float8[], n numeric, na numeric[], c labelled, ca point2[], hs hstore[]);
         CREATE TABLE wide (id int PRIMARY KEY, {});",
        wide_cols.join(", ")
    ))
    .await
    .unwrap();
    let (relay, queue) = stream(&pg, &db, &["public.odd", "public.wide"]).await;
    relay.wait_log("streaming", T).await;
    c.batch_execute(
        "INSERT INTO odd VALUES
          (1, 'happy', '{sad,ok}', 7, '{a,\"b c\"}', '[1,5)', '{\"[1,2)\",empty}',
           '[2024-01-01 00:00+00,infinity)', 'a=>1, \"b c\"=>NULL', 'MiXeD', 'NaN', '{Infinity,-Infinity,0.1}',
           'NaN', '{1.50,NaN}',
           ROW('say \"hi\", (ok)', ROW(1.5, 'NaN')::point2, '{x,\"y z\"}', true, '2024-05-06 07:08:09+02')::labelled,
           ARRAY[ROW(1,2)::point2, NULL, ROW(NULL, -0.5)::point2],
           ARRAY['k=>v'::hstore, '\"q\\\"k\"=>\"back\\\\slash\"'::hstore]),
          (2, NULL, '{}', NULL, '{}', 'empty', NULL, NULL, '', '', '-Infinity', NULL, '1e-20', NULL,
           ROW('', NULL, '{}', NULL, NULL)::labelled, '{}', NULL)",
    )
    .await
    .unwrap();
    let vals: Vec<String> = (1..1600).map(|i| i.to_string()).collect();
    c.batch_execute(&format!("INSERT INTO wide VALUES (1, {})", vals.join(", ")))
        .await
        .unwrap();
    let got = queue.take(3, T).await;
    for m in &got {
        let table = m.body["table"].as_str().unwrap();
        let id = m.body["new"]["id"].as_i64().unwrap() as i32;
        let row = c
            .query_one(
                &format!("SELECT to_jsonb(x)::text FROM {table} x WHERE id = $1"),
                &[&id],
            )
            .await
            .unwrap();
        let expected: serde_json::Value = serde_json::from_str(&row.get::<_, String>(0)).unwrap();
        let new = m.body["new"].clone();
        if table == "odd" && id == 1 {
            // Not vacuous: these are objects, not the text output.
            assert_eq!(new["h"], serde_json::json!({"a": "1", "b c": null}));
            assert_eq!(new["c"]["at"]["y"], "NaN");
            assert_eq!(new["c"]["label"], "say \"hi\", (ok)");
        }
        assert_eq!(new, expected, "{table} row {id} differs from to_jsonb");
    }
    assert_eq!(got[2].body["new"].as_object().unwrap().len(), 1600);
    queue.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_from_a_sql_ascii_database_stops_with_a_clear_error() {
    let pg = PgCluster::start();
    let admin = connect(&pg.url("postgres")).await;
    let db = unique("ascii");
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {db} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        ))
        .await
        .unwrap();
    let c = connect(&pg.url(&db)).await;
    c.batch_execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        .await
        .unwrap();
    let (mut relay, queue) = stream(&pg, &db, &["public.notes"]).await;
    relay.wait_log("streaming", T).await;
    // The raw byte 0xFF, which SQL_ASCII stores as is.
    c.batch_execute("INSERT INTO notes VALUES (2, E'caf\\xff')")
        .await
        .unwrap();
    // walrelay's sessions use client_encoding UTF8, so PostgreSQL itself refuses to send it:
    // a permanent error, with the server's message, and the slot stays before the row.
    let status = relay.wait_exit(T).await;
    assert!(!status.success());
    let log = relay.log();
    assert!(
        log.contains("invalid byte sequence for encoding \"UTF8\": 0xff"),
        "{log}"
    );
    assert!(
        queue.drain(Duration::from_millis(300)).await.is_empty(),
        "nothing half-rendered was published"
    );
    queue.delete().await;
}
