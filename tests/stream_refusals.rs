//! What the stream sink refuses, loudly and without losing anything: a row whose message
//! cannot fit in a publish frame of the broker stops walrelay naming the event, its table and
//! both sizes, with the slot held before it, instead of reconnecting forever.

use crate::common;

use std::time::Duration;

use common::scene::Scene;
use common::stream::*;
use common::*;

const T: Duration = Duration::from_secs(120);

/// `rabbitmq.max_message_bytes` raised above what RabbitMQ's default stream `frame_max`
/// (1 MiB) holds: a 1.5 MB row passes walrelay's own limit but no frame can carry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_larger_than_the_brokers_frame_stops_walrelay_naming_it() {
    let s = Scene::stream(
        "CREATE TABLE big (id int PRIMARY KEY, v text)",
        &["public.big"],
        "",
    )
    .await;
    let (client, slot, stream, cfg) = (&s.client, &s.slot, s.stream_name(), &s.config);
    s.edit("[rabbitmq]\n", "[rabbitmq]\nmax_message_bytes = 2000000\n");
    let mut relay = Relay::start(cfg);
    relay.wait_log("streaming", T).await;
    client
        .execute("INSERT INTO big VALUES (1, 'small')", &[])
        .await
        .unwrap();
    let before = current_lsn(client).await;
    read_at_least(stream, 1).await;
    wait_for("the slot past the small row", T, || async {
        (slot_confirmed(client, slot).await >= before).then_some(())
    })
    .await;
    client
        .execute("INSERT INTO big VALUES (2, repeat('x', 1500000))", &[])
        .await
        .unwrap();
    let status = relay.wait_exit(T).await;
    assert!(!status.success(), "walrelay went on: {}", relay.log());
    let log = relay.log();
    assert!(
        log.contains("of public.big is") && log.contains("frame_max"),
        "the error names the table and the broker's limit: {log}"
    );
    assert!(
        !log.contains("session ended; retrying"),
        "a row that never fits is no reason to reconnect: {log}"
    );
    let confirmed = slot_confirmed(client, slot).await;
    let after = current_lsn(client).await;
    assert!(
        confirmed < after,
        "the slot moved past the row that was not published"
    );
    assert_eq!(
        read_at_least(stream, 1).await.len(),
        1,
        "nothing else published"
    );
    let _ = env().await.delete_stream(stream).await;
}
