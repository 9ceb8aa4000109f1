//! The stream sink when the broker goes silent with its connections open (RabbitMQ 4's node
//! stopped with SIGSTOP by `scripts/rabbitmq4.sh pause`, as behind a network that drops
//! packets) while nothing is in flight, so no confirm timeout can notice: with
//! `?heartbeat=2`, walrelay's publishing connection ends after two silent heartbeats plus
//! 5 s, and once the node goes on, the change committed meanwhile arrives exactly once.
//!
//! RabbitMQ 4 alone (`Scene::stream_alone`, `Bed::stream(true)`): the pause stops every connection to the node, which the other stream
//! tests would take for failures of their own.

use crate::common;

use std::time::Duration;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_broker_ends_the_connection_and_nothing_is_lost_or_repeated() {
    let s = Scene::stream_alone("CREATE TABLE a (id int PRIMARY KEY)", &["public.a"], "").await;
    let (client, stream, cfg) = (&s.client, s.stream_name(), &s.config);
    s.use_stream_url(&format!("{STREAM_URL}?heartbeat=2"));
    let relay = Relay::start(cfg);
    relay.wait_log("streaming", T).await;
    client
        .execute("INSERT INTO a VALUES (1)", &[])
        .await
        .unwrap();
    read_at_least(stream, 1).await;

    // Nothing in flight, so no confirm timeout can notice: only the heartbeats can.
    let paused = Resume;
    rabbitmq4("pause");
    relay
        .wait_log("no frame from the broker", Duration::from_secs(40))
        .await;
    client
        .execute("INSERT INTO a VALUES (2)", &[])
        .await
        .unwrap();
    drop(paused);

    assert_eq!(
        ids_settled(stream, 2).await,
        [1, 2],
        "each change once, in order"
    );
    drop(relay);
    let _ = env().await.delete_stream(stream).await;
}
