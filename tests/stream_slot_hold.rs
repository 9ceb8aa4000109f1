//! The LSN contract on the stream sink, seen from PostgreSQL: while RabbitMQ 4 is stopped
//! (SIGSTOP by `scripts/rabbitmq4.sh pause`) with a change published and not confirmed,
//! walrelay keeps sending status updates, and the slot stays before that change; once the
//! broker goes on, the slot moves past it and the stream holds each change once.
//!
//! RabbitMQ 4 alone (`Scene::stream_alone`, `Bed::stream(true)`): the pause stops every connection to the node, which the other stream
//! tests would take for failures of their own.

use crate::common;

use std::time::{Duration, Instant};

use common::scene::Scene;
use common::stream::*;
use common::*;

const T: Duration = Duration::from_secs(120);

/// Resumes the node however the test ends: a stopped node would fail every later test.
struct Resume;

impl Drop for Resume {
    fn drop(&mut self) {
        rabbitmq4("resume");
    }
}

/// When walrelay's last status update reached the server (`pg_stat_replication.reply_time`,
/// microseconds since the epoch), 0 when no walsender serves `slot`.
async fn last_reply_us(client: &tokio_postgres::Client, slot: &str) -> i64 {
    client
        .query_opt(
            "SELECT (extract(epoch FROM r.reply_time) * 1e6)::bigint FROM pg_stat_replication r \
             JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .and_then(|r| r.get::<_, Option<i64>>(0))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_slot_holds_before_an_unconfirmed_change_while_status_updates_go_on() {
    let s = Scene::stream_alone("CREATE TABLE a (id int PRIMARY KEY)", &["public.a"], "").await;
    let (client, stream, slot) = (&s.client, s.stream_name(), &s.slot);
    // Long enough that neither the confirm timeout nor the heartbeats end the session while
    // the broker is stopped: the slot is watched with walrelay connected.
    s.edit("confirm_timeout_ms = 5000", "confirm_timeout_ms = 60000");
    let relay = Relay::start(&s.config);
    relay.wait_log("streaming", T).await;
    client
        .execute("INSERT INTO a VALUES (1)", &[])
        .await
        .unwrap();
    let first = current_lsn(client).await;
    read_at_least(stream, 1).await;
    wait_for("the slot past the first change", T, || async {
        (slot_confirmed(client, slot).await >= first).then_some(())
    })
    .await;

    let paused = Resume;
    rabbitmq4("pause");
    client
        .execute("INSERT INTO a VALUES (2)", &[])
        .await
        .unwrap();
    let second = current_lsn(client).await;
    // For 4 s (twenty status intervals): status updates keep arriving, the slot stays put.
    let replies_before = last_reply_us(client, slot).await;
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(4) {
        let confirmed = slot_confirmed(client, slot).await;
        assert!(
            confirmed < second,
            "the slot moved to {confirmed:X} past the unconfirmed change (ends {second:X})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let replies_after = last_reply_us(client, slot).await;
    assert!(
        replies_after > replies_before && replies_before > 0,
        "walrelay sent no status update while the broker was stopped ({replies_before} -> {replies_after}): the check above saw nothing"
    );
    drop(paused);

    wait_for("the slot past the second change", T, || async {
        (slot_confirmed(client, slot).await >= second).then_some(())
    })
    .await;
    assert_eq!(
        ids_settled(stream, 2).await,
        [1, 2],
        "each change once, in order"
    );
    drop(relay);
    let _ = env().await.delete_stream(stream).await;
}
