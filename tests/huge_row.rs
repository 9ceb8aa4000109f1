//! A 200 MB row: with the default `max_message_bytes` walrelay stops, naming the table and the
//! size, and holds the slot; with the limit raised (and a broker whose `max_message_size`
//! allows it) the row is delivered whole. Peak memory is reported for docs/reliability.md.

use crate::common;

use std::time::Duration;

use common::broker::Broker;
use common::*;

const T: Duration = Duration::from_secs(180);
const SIZE: usize = 200_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_row_is_refused_loudly_then_delivered_whole_once_allowed() {
    let broker = Broker::start(&["max_message_size = 268435456"]).await;
    let (pg, db, client) =
        PgCluster::with_db("CREATE TABLE big (id int PRIMARY KEY, body text)").await;
    let exchange = unique("ex");
    let q = TestQueue::on(&broker.url(), &exchange, Some("#"), FieldTable::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let slot = unique("slot");
    let cfg = write_config(
        dir.path(),
        &pg.url(&db),
        &broker.url(),
        &slot,
        &exchange,
        &["public.big"],
        "",
    );

    let mut relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;
    client
        .execute(
            &format!("INSERT INTO big VALUES (1, repeat('x', {SIZE}))"),
            &[],
        )
        .await
        .unwrap();
    let held = current_lsn(&client).await;
    let status = relay.wait_exit(T).await;
    assert!(!status.success());
    let log = relay.log();
    assert!(
        log.contains("public.big") && log.contains("max_message_bytes"),
        "{log}"
    );
    assert!(
        slot_confirmed(&client, &slot).await < held,
        "the slot passed the refused row"
    );
    assert!(
        q.get().await.is_none(),
        "nothing may be published past the limit"
    );

    config_set(&cfg, "rabbitmq", "max_message_bytes", "268435456");
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;
    let row = wait_for("the 200 MB row", T, || async { q.get().await }).await;
    assert_eq!(row.body["new"]["body"].as_str().map(str::len), Some(SIZE));
    wait_for("the slot past the row", T, || async {
        (slot_confirmed(&client, &slot).await >= held).then_some(())
    })
    .await;
    let rss = peak_rss_kib(relay.child.id());
    eprintln!(
        "chaos: 200 MB row delivered; walrelay peak RSS {} MiB",
        rss / 1024
    );
    assert!(rss < 2 * 1024 * 1024, "peak RSS {rss} KiB for a 200 MB row");
    q.delete().await;
}
