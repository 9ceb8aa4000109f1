//! A summarized flood has a way back too (`flood.then = "backfill"`): after a 20,000-row
//! migration that also deletes rows, with writers still changing the table, the `bulk` event
//! announces a backfill of the key range the flood touched, walrelay records it before the
//! slot passes the flood, and a consumer's copy built from every event (sweeping the range as
//! docs/events.md says) ends equal to the table.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common;

use common::replica::Replica;
use common::scene::Scene;
use common::*;

const T: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summarized_flood_then_backfill_converges_under_writers() {
    let s = Scene::new(
        "CREATE TABLE orders (id bigint PRIMARY KEY, status text, note text);",
        &["public.orders"],
    )
    .await;
    s.append("[flood]\nmax_changes = 5000\npolicy = \"summarize\"\nthen = \"backfill\"");
    let mut copy = Replica::new(&s.client, &["public.orders"]).await;
    let relay = s.start_streaming().await;
    // 20,000 rows in transactions under the limit: published one by one.
    for chunk in 0..40 {
        s.sql(&format!(
            "INSERT INTO orders SELECT g, 'new', 'n' FROM generate_series({}, {}) g",
            chunk * 500 + 1,
            chunk * 500 + 500
        ))
        .await;
    }
    copy.follow(&s.client, s.queue(), "public.orders", T).await;

    // Writers keep changing rows inside and beyond the flood's range.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, stop) = (connect(&s.url()).await, Arc::clone(&stop));
        tokio::spawn(async move {
            let mut i: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = (i * 7919) % 20_000 + 1;
                let sql = match i % 3 {
                    0 => format!("UPDATE orders SET status = 'writer {i}' WHERE id = {id}"),
                    1 => format!("DELETE FROM orders WHERE id = {id}"),
                    _ => format!("INSERT INTO orders VALUES ({}, 'late', 'l')", 30_000 + i),
                };
                client
                    .batch_execute(&sql)
                    .await
                    .expect("a writer's statement");
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            i
        })
    };
    let started = Instant::now();
    s.sql(
        "BEGIN;
         UPDATE orders SET status = 'migrated', note = note || '!' WHERE id <= 20000;
         DELETE FROM orders WHERE id % 97 = 0 AND id <= 20000;
         COMMIT;",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let statements = writer.await.unwrap();
    let applied = copy.follow(&s.client, s.queue(), "public.orders", T).await;
    let requested: i64 = s
        .client
        .query_one(
            "SELECT count(*) FROM walrelay.backfill WHERE kind = 'flood' AND where_clause LIKE '\"id\" BETWEEN 1 AND %'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(requested, 1, "one backfill of the flood's key range");
    let log = relay.log();
    assert!(
        log.contains("flood committed: backfilling the rows it touched"),
        "{log}"
    );
    eprintln!(
        "flood then backfill: 20,000-row update and 206 deletes summarized, {statements} writer statements, \
         {applied} events after it, copy equal {:.1} s after the flood's commit",
        started.elapsed().as_secs_f64()
    );
    drop(relay);
    s.finish().await;
}
