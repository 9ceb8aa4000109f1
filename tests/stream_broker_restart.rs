//! The stream sink through broker restarts: RabbitMQ 4's node stops cleanly and starts again
//! (`scripts/rabbitmq4.sh restart`), then is killed with SIGKILL and started twice (`crash`:
//! confirms in flight are lost) while four writers commit; walrelay reconnects, and
//! the checker then reads the stream from offset `first`: nothing lost, no duplicate (the
//! deduplication state survives the restart with the stream), commit order per table.
//!
//! RabbitMQ 4 alone (`Scene::stream_alone`, `Bed::stream(true)`): the restart cuts every connection to the node, which the other
//! stream tests would take for failures of their own.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::checker::{self, History, Monitor};
use common::stream::*;
use common::*;

const T: Duration = Duration::from_secs(180);
const RECONNECTS: &str = "walrelay_reconnects_total{side=\"rabbitmq\"}";

/// `scripts/rabbitmq4.sh restart` (a clean stop and start) or `crash` (kill -9, then start).
fn bounce_broker(how: &'static str) {
    rabbitmq4(how);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_restarts_mid_stream_lose_nothing_and_duplicate_nothing() {
    // RabbitMQ 4 alone: the restarts would cut every other test's connections to it.
    let bed = common::bed::Bed::stream(true).await;
    let (client, slot, stream, cfg) = (
        &bed.client,
        bed.slot.clone(),
        bed.stream_name().to_owned(),
        &bed.config,
    );
    let relay = Relay::start(cfg);
    relay.wait_log("streaming", T).await;
    let monitor = Monitor::start(bed.url.clone(), slot.clone());
    let (stop, history) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Mutex::new(History::default())),
    );
    let writers = tokio::spawn(checker::workload(
        bed.url.clone(),
        bed.other_url.clone(),
        4,
        Arc::clone(&stop),
        Arc::clone(&history),
    ));
    let faults = ["restart", "crash", "crash"];
    let restarts = faults.len();
    let port = relay.http_port().await;
    for how in faults {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let before = metric(&http_get(port, "/metrics").1, RECONNECTS);
        tokio::task::spawn_blocking(move || bounce_broker(how))
            .await
            .unwrap();
        // walrelay notices, reconnects and streams again.
        wait_for("a reconnect to RabbitMQ after the restart", T, || async {
            let n = metric(&http_get(port, "/metrics").1, RECONNECTS);
            (n > before).then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    writers.await.unwrap();
    let end = current_lsn(client).await;
    wait_for("the slot past the workload", T, || async {
        (slot_confirmed(client, &slot).await >= end).then_some(())
    })
    .await;
    let replays = replays_of(&relay).await;
    let reconnects = metric(&http_get(port, "/metrics").1, RECONNECTS);
    drop(relay);

    // Everything confirmed is in the stream: read it from `first` until it stops growing.
    let (deliveries, consumer_stop) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(AtomicBool::new(false)),
    );
    let env = env().await;
    let consumer = tokio::spawn(consume_changes(
        env.clone(),
        stream.clone(),
        Arc::clone(&deliveries),
        Arc::clone(&consumer_stop),
    ));
    let mut last = usize::MAX;
    wait_for("the stream read to its end", T, || {
        let n = deliveries.lock().unwrap().len();
        let settled = n == last && n > 0;
        last = n;
        async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            settled.then_some(())
        }
    })
    .await;
    consumer_stop.store(true, Ordering::Relaxed);
    consumer.await.unwrap();
    let (max, backwards) = monitor.stop().await;
    let h = std::mem::take(&mut *history.lock().unwrap());
    let d = std::mem::take(&mut *deliveries.lock().unwrap());
    let v = checker::check(&h, &d, max, backwards);
    common::bed::report("stream broker restart+crash", &v, restarts);
    eprintln!(
        "chaos: stream broker restart+crash: reconnects={reconnects} replays_dropped_by_the_broker={replays}"
    );
    v.assert_safe();
    assert!(v.committed > 100, "{v:?}");
    assert_eq!(v.duplicated, 0, "the broker dropped every replay: {v:?}");
    assert!(
        reconnects >= restarts as f64,
        "each restart ended a session: {reconnects} reconnects"
    );
    let _ = env.delete_stream(&stream).await;
}
