//! Broker faults on a RabbitMQ node the test starts itself (`common::broker`): `stop_app` and
//! `kill -9` for 3 × `wal_sender_timeout`, a crash with confirms pending on a durable classic
//! and on a quorum queue, and a memory alarm. Each ends with the checker's verdict. A broker
//! node takes 5–20 s to boot and recover, so two variants are `#[ignore]`d in the default suite
//! and run by the long command (`-- --include-ignored`).

use crate::common;

use std::time::Duration;

use common::bed::{Bed, T, report, verdict};
use common::broker::Broker;
use common::checker::{Monitor, Run};
use common::proxy::Proxy;
use common::*;

const SENDER_TIMEOUT: &str = "wal_sender_timeout = 2s";
const WALSENDER_TIMEOUT_LOG: &str = "terminating walsender process due to replication timeout";

/// A bed whose queue is on `broker`, walrelay running against it (through `via` if given).
async fn setup(broker: &Broker, args: FieldTable, via: Option<&Proxy>) -> (Bed, Relay) {
    let bed = Bed::on(&[SENDER_TIMEOUT], &broker.url(), args).await;
    let amqp = match via {
        Some(p) => format!("amqp://guest:guest@127.0.0.1:{}/%2f", p.port),
        None => broker.url(),
    };
    let relay = Relay::start(&bed.config(&amqp));
    relay.wait_log("streaming", T).await;
    (bed, relay)
}

fn quorum() -> FieldTable {
    queue_args(&[("x-queue-type", text("quorum"))])
}

/// Runs the workload, calls `fault` (which returns once the broker is back), and checks the
/// verdict and that no walsender timed out.
async fn outage<F, Fut>(name: &str, bed: &Bed, relay: &Relay, fault: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let monitor = Monitor::start(bed.url.clone(), bed.slot.clone());
    let run = Run::start(&bed.url, &bed.other_url, bed.queue(), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = std::time::Instant::now();
    fault().await;
    eprintln!("chaos: {name}: fault and recovery took {:?}", t.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = std::time::Instant::now();
    let v = verdict(bed, run, monitor).await;
    eprintln!("chaos: {name}: verdict took {:?}", t.elapsed());
    report(name, &v, 1);
    v.assert_safe();
    assert!(!bed.pg.log().contains(WALSENDER_TIMEOUT_LOG));
    let rss = peak_rss_kib(relay.child.id());
    eprintln!("chaos: {name}: walrelay peak RSS {rss} KiB");
    assert!(rss < 96 * 1024, "peak RSS {rss} KiB");
}

/// Asserts the slot does not move for 3 × `wal_sender_timeout` (after a settling moment in
/// which confirms that were already on the wire may still land).
async fn slot_held_for_three_sender_timeouts(bed: &Bed) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = bed.slot_lsn().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        held,
        bed.slot_lsn().await,
        "the slot advanced while the broker was down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_stop_app_for_three_sender_timeouts_loses_nothing() {
    let broker = Broker::start(&[]).await;
    let (bed, relay) = setup(&broker, FieldTable::default(), None).await;
    outage(
        "broker stop_app 3x wal_sender_timeout",
        &bed,
        &relay,
        || async {
            broker.stop_app();
            slot_held_for_three_sender_timeouts(&bed).await;
            broker.start_app().await;
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long variant: run with -- --include-ignored (see docs/reliability.md)"]
async fn broker_kill_9_for_three_sender_timeouts_loses_nothing() {
    let broker = Broker::start(&[]).await;
    let (bed, relay) = setup(&broker, FieldTable::default(), None).await;
    outage(
        "broker kill -9 3x wal_sender_timeout",
        &bed,
        &relay,
        || async {
            broker.kill9();
            slot_held_for_three_sender_timeouts(&bed).await;
            broker.boot().await;
        },
    )
    .await;
}

/// Publishes reach the broker but its confirms are withheld by a proxy; then the broker is
/// killed, so every message in the window is in an unknown state when it comes back.
async fn crash_with_confirms_pending(name: &str, args: FieldTable) {
    let broker = Broker::start(&[]).await;
    let proxy = Proxy::start(&format!("127.0.0.1:{}", broker.port)).await;
    let (bed, relay) = setup(&broker, args, Some(&proxy)).await;
    outage(name, &bed, &relay, || async {
        proxy.hold_replies();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let held = bed.slot_lsn().await;
        broker.kill9();
        // Cut first: the confirms the broker sent before dying are dropped with the
        // connection, so walrelay never learns of them (releasing first would deliver them).
        proxy.sever_all();
        proxy.release();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            held,
            bed.slot_lsn().await,
            "the slot passed unconfirmed messages"
        );
        broker.boot().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_crash_with_confirms_pending_on_a_classic_queue_loses_nothing() {
    crash_with_confirms_pending(
        "broker crash, confirms pending, classic",
        FieldTable::default(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long variant: run with -- --include-ignored (see docs/reliability.md)"]
async fn broker_crash_with_confirms_pending_on_a_quorum_queue_loses_nothing() {
    crash_with_confirms_pending("broker crash, confirms pending, quorum", quorum()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_memory_alarm_blocks_publishing_but_not_keepalives() {
    let broker = Broker::start(&[]).await;
    let (bed, relay) = setup(&broker, FieldTable::default(), None).await;
    outage(
        "broker memory alarm 2x wal_sender_timeout",
        &bed,
        &relay,
        || async {
            broker.ctl(&["set_vm_memory_high_watermark", "0"]);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let held = bed.slot_lsn().await;
            tokio::time::sleep(Duration::from_secs(4)).await;
            assert_eq!(
                held,
                bed.slot_lsn().await,
                "the slot advanced during the alarm"
            );
            assert!(
                relay.log().contains("blocked"),
                "walrelay did not notice the broker blocking it"
            );
            broker.ctl(&["set_vm_memory_high_watermark", "0.4"]);
        },
    )
    .await;
}
