//! RabbitMQ Streams on RabbitMQ 4 (`scripts/rabbitmq4.sh`, started by the test command): what
//! the stream sink will rely on, proven against the broker before the sink exists. A named
//! producer sending walrelay's publishing ids (`walrelay::sink::stream::publishing_id`) has its
//! replays dropped by the broker, so a consumer reading from `first` sees every change once,
//! across a producer restart, an epoch change and a huge transaction's tail.

use std::time::Duration;

use futures_util::StreamExt;
use rabbitmq_stream_client::Environment;
use rabbitmq_stream_client::types::{Message, OffsetSpecification};
use walrelay::lsn::Lsn;
use walrelay::sink::stream::publishing_id::{INDEX_BITS, Origin, producer_name, publishing_id};

/// RabbitMQ 4's stream port, as `scripts/rabbitmq4.sh` sets it.
const STREAM_PORT: u16 = 5553;

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// Changes as (commit LSN, index): three ordinary transactions, one in the next epoch, and the
/// two changes around the index limit of a huge one (its tail goes to a producer of its own).
fn changes() -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    for lsn in [0x1_6B37_4D48u64, 0x1_6B37_4DA0, 0x1_6B38_0000] {
        v.extend((0..5).map(|i| (lsn, i)));
    }
    let huge = 0x1_7000_0000u64;
    v.extend([(huge, (1 << INDEX_BITS) - 1), (huge, 1 << INDEX_BITS)]);
    v.extend((0..3).map(|i| ((1u64 << 40) + 0x28, i)));
    v
}

/// Publishes `changes` in order, one named producer per sequence, each message confirmed.
async fn publish(env: &Environment, stream: &str, origin: &Origin, changes: &[(u64, u64)]) {
    let mut producers = std::collections::HashMap::new();
    for &(lsn, index) in changes {
        let pid = publishing_id(Lsn(lsn), index);
        let name = producer_name(origin, &pid.sequence);
        if !producers.contains_key(&name) {
            let p = env.producer().name(&name).build(stream).await.unwrap();
            producers.insert(name.clone(), p);
        }
        let body = format!("{}:{index}", Lsn(lsn));
        let message = Message::builder().body(body).publishing_id(pid.id).build();
        let status = producers
            .get_mut(&name)
            .unwrap()
            .send_with_confirm(message)
            .await
            .unwrap();
        assert!(
            status.confirmed(),
            "{name} {}: {:?}",
            pid.id,
            status.status()
        );
    }
    for (_, p) in producers {
        p.close().await.unwrap();
    }
}

/// Every body in the stream, from `first`, until it is quiet.
async fn read_all(env: &Environment, stream: &str) -> Vec<String> {
    let mut consumer = env
        .consumer()
        .offset(OffsetSpecification::First)
        .build(stream)
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await {
        let d = d.unwrap();
        got.push(String::from_utf8(d.message().data().unwrap().to_vec()).unwrap());
    }
    let _ = consumer.handle().close().await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_drops_replays_of_walrelay_publishing_ids() {
    let _rabbitmq4 = crate::common::rabbitmq4::shared().await;
    let env = Environment::builder()
        .host("127.0.0.1")
        .port(STREAM_PORT)
        .build()
        .await
        .expect("RabbitMQ 4's stream port (scripts/rabbitmq4.sh start)");
    let stream = unique("dedup");
    env.stream_creator().create(&stream).await.unwrap();
    let origin = Origin {
        slot: "walrelay".into(),
        system_id: "7412345678901234567".into(),
        timeline: 1,
        rules: "0badf00d".into(),
    };
    let all = changes();
    // A first session publishes up to the second transaction, then "crashes".
    publish(&env, &stream, &origin, &all[..8]).await;
    // The next session replays from the slot's confirmed position (the first transaction's
    // end) to the end: new producers, same names, same ids.
    publish(&env, &stream, &origin, &all[5..]).await;
    // And a replay of everything, as after a restore of the position file.
    publish(&env, &stream, &origin, &all).await;
    let want: Vec<String> = all
        .iter()
        .map(|&(lsn, i)| format!("{}:{i}", Lsn(lsn)))
        .collect();
    assert_eq!(
        read_all(&env, &stream).await,
        want,
        "each change once, in order"
    );

    // Another server (or a restored one on a new timeline) reusing the same LSNs is not
    // mistaken for a replay.
    let other = Origin {
        timeline: 2,
        ..origin.clone()
    };
    publish(&env, &stream, &other, &all[..5]).await;
    assert_eq!(read_all(&env, &stream).await.len(), want.len() + 5);
    env.delete_stream(&stream).await.unwrap();
}
