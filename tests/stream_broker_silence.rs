//! The stream sink when the broker goes silent with its connections open (RabbitMQ 4's node
//! stopped with SIGSTOP by `scripts/rabbitmq4.sh pause`, as behind a network that drops
//! packets) while nothing is in flight, so no confirm timeout can notice: with
//! `?heartbeat=2`, walrelay's publishing connection ends after two silent heartbeats plus
//! 5 s, and once the node goes on, the change committed meanwhile arrives exactly once.
//!
//! A binary of its own: the pause stops every connection to the node, which the other stream
//! tests would take for failures of their own.

mod common;

use std::time::Duration;

use common::stream::*;
use common::*;

const T: Duration = Duration::from_secs(120);

fn broker(how: &'static str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq4.sh");
    let out = std::process::Command::new(script)
        .arg(how)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{how} of RabbitMQ 4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Resumes the node however the test ends: a stopped node would fail every later test.
struct Resume;

impl Drop for Resume {
    fn drop(&mut self) {
        broker("resume");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_broker_ends_the_connection_and_nothing_is_lost_or_repeated() {
    let (pg, db) = (PgCluster::start(), unique("app"));
    let client = pg.create_db(&db).await;
    client
        .batch_execute("CREATE TABLE a (id int PRIMARY KEY)")
        .await
        .unwrap();
    let (slot, stream) = (unique("slot"), unique("st"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = stream_config(dir.path(), &pg.url(&db), &slot, &stream, &["public.a"]);
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains(STREAM_URL));
    let url = format!("{STREAM_URL}?heartbeat=2");
    std::fs::write(&cfg, text.replace(STREAM_URL, &url)).unwrap();
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;
    client
        .execute("INSERT INTO a VALUES (1)", &[])
        .await
        .unwrap();
    read_at_least(&stream, 1).await;

    // Nothing in flight, so no confirm timeout can notice: only the heartbeats can.
    let paused = Resume;
    broker("pause");
    relay
        .wait_log("no frame from the broker", Duration::from_secs(40))
        .await;
    client
        .execute("INSERT INTO a VALUES (2)", &[])
        .await
        .unwrap();
    drop(paused);

    read_at_least(&stream, 2).await;
    // Time for a duplicate to arrive, if the broker kept a replay.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ids: Vec<i64> = read_at_least(&stream, 2)
        .await
        .iter()
        .map(|(_, m)| body(m)["new"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2], "each change once, in order");
    drop(relay);
    let _ = env().await.delete_stream(&stream).await;
}
