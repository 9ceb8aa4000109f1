//! A three-node RabbitMQ 4 cluster (`scripts/rabbitmq-cluster.sh`): walrelay with all three
//! URLs, a quorum queue, 4 writers, and a rolling restart of every node one at a time (each
//! stopped for 5 s, as an upgrade does). Required: 0 lost, every duplicate with its original
//! id, and no stretch longer than 5 s in which the broker confirmed nothing while rows were
//! being committed. Needs the cluster running: `scripts/rabbitmq-cluster-tests.sh` starts it
//! and runs these (they are ignored otherwise).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use crate::common;

use common::scene::{Scene, Setup};
use common::*;

const NODES: [&str; 3] = [
    "amqp://guest:guest@127.0.0.1:5681/%2f",
    "amqp://guest:guest@127.0.0.1:5682/%2f",
    "amqp://guest:guest@127.0.0.1:5683/%2f",
];

fn cluster(args: &[&str]) {
    let out = std::process::Command::new("bash")
        .arg("scripts/rabbitmq-cluster.sh")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rabbitmq-cluster.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs scripts/rabbitmq-cluster.sh start; run by scripts/rabbitmq-cluster-tests.sh"]
async fn a_rolling_restart_of_a_three_node_cluster_loses_nothing() {
    let s = Scene::with(
        "CREATE TABLE t (id bigint PRIMARY KEY, w int);",
        &["public.t"],
        Setup {
            amqp_url: NODES[0],
            queue_on: NODES[1],
            queue_args: queue_args(&[("x-queue-type", text("quorum"))]),
            ..Setup::default()
        },
    )
    .await;
    let list: Vec<String> = NODES.iter().map(|u| format!("{u:?}")).collect();
    s.set("rabbitmq", "url", &format!("[{}]", list.join(", ")));
    s.set("service", "reconnect_min_ms", "200");
    let relay = s.start_streaming().await;

    let (total, gaps) = rolling_restart(&s).await;

    // The test's own connection went down with its node: read through a new one.
    let q = TestQueue::named(
        NODES[2],
        &s.exchange,
        &s.queue().queue,
        None,
        queue_args(&[("x-queue-type", text("quorum"))]),
    )
    .await;
    let got = q.drain_all(Duration::from_secs(2)).await;
    let mut ids: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for m in &got {
        ids.entry(m.body["key"]["id"].as_i64().unwrap())
            .or_default()
            .insert(m.message_id.clone());
    }
    let dupes = got.len() - ids.len();
    assert_eq!(ids.len() as i64, total, "rows lost");
    assert!(
        ids.values().all(|m| m.len() == 1),
        "a replay carried another id"
    );
    let longest = gaps.values().max().copied().unwrap_or_default();
    eprintln!(
        "rabbitmq cluster: rolling restart, {total} rows committed and delivered, {dupes} duplicates (same ids), \
         longest confirm gap per stopped node: {gaps:?}"
    );
    assert!(longest <= Duration::from_secs(5), "gaps {gaps:?}");
    assert!(
        relay
            .log()
            .contains("publishing through another RabbitMQ node")
    );
    drop(relay);
    q.delete_queue().await;
}

const STREAM_NODES: [&str; 3] = [
    "rabbitmq-stream://guest:guest@127.0.0.1:5561/%2f",
    "rabbitmq-stream://guest:guest@127.0.0.1:5562/%2f",
    "rabbitmq-stream://guest:guest@127.0.0.1:5563/%2f",
];

/// The stream sink on the same cluster: a stream walrelay creates (replicated on the three
/// nodes), `stream.url` listing all three, 4 writers, every node stopped for 5 s in turn, the
/// stream's leader among them. Required: 0 lost, 0 duplicates read from offset `first` (the
/// broker drops replays by publishing id), and no confirm gap over 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs scripts/rabbitmq-cluster.sh start; run by scripts/rabbitmq-cluster-tests.sh"]
async fn a_rolling_restart_under_the_stream_sink_loses_and_duplicates_nothing() {
    stream_rolling_restart(None).await;
}

/// The same with a super stream of 3 partitions, whose leaders the broker spreads over the
/// nodes (least-leaders): each partition's producer follows its own leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs scripts/rabbitmq-cluster.sh start; run by scripts/rabbitmq-cluster-tests.sh"]
async fn a_rolling_restart_under_a_super_stream_loses_and_duplicates_nothing() {
    stream_rolling_restart(Some(3)).await;
}

async fn stream_rolling_restart(partitions: Option<u32>) {
    let s = Scene::with(
        "CREATE TABLE t (id bigint PRIMARY KEY, w int);",
        &["public.t"],
        Setup {
            consumer: common::scene::Consumer::Absent,
            ..Setup::default()
        },
    )
    .await;
    let stream = unique("cluster_stream");
    let nodes: Vec<String> = STREAM_NODES.iter().map(|u| format!("{u:?}")).collect();
    std::fs::write(
        &s.config,
        format!(
            "[postgres]\nurl = {:?}\nslot = {:?}\npublication = {:?}\nstatus_interval_ms = 200\n\
             [stream]\nurl = [{}]\nstream = {stream:?}\nmax_age_secs = 3600\n{}\n\
             [rabbitmq]\nconfirm_timeout_ms = 5000\n\
             [service]\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\n\
             [http]\nlisten = \"127.0.0.1:0\"\n[filter]\ninclude = [\"public.t\"]\n",
            s.url(),
            s.slot,
            s.slot,
            nodes.join(", "),
            partitions.map_or(String::new(), |n| format!("partitions = {n}"))
        ),
    )
    .unwrap();
    let relay = s.start_streaming().await;
    let (total, gaps) = rolling_restart(&s).await;

    // Read from `first` through node 3 (running: the last one restarted long enough ago).
    let env = rabbitmq_stream_client::Environment::builder()
        .host("127.0.0.1")
        .port(5563)
        .build()
        .await
        .unwrap();
    let (out, reading) = (
        Arc::new(std::sync::Mutex::new(Vec::new())),
        Arc::new(AtomicBool::new(false)),
    );
    let streams: Vec<String> = match partitions {
        Some(n) => (0..n).map(|i| format!("{stream}-{i}")).collect(),
        None => vec![stream.clone()],
    };
    let readers: Vec<_> = streams
        .into_iter()
        .map(|name| {
            tokio::spawn(common::stream::consume(
                env.clone(),
                name,
                Arc::clone(&out),
                Arc::clone(&reading),
            ))
        })
        .collect();
    wait_for("every row read back", Duration::from_secs(120), || {
        let got = out.lock().unwrap().len() as i64;
        async move { (got >= total).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    reading.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    let read = std::mem::take(&mut *out.lock().unwrap());
    let ids: BTreeSet<i64> = read
        .iter()
        .map(|(_, m)| common::stream::body(m)["new"]["id"].as_i64().unwrap())
        .collect();
    let dupes = read.len() - ids.len();
    eprintln!(
        "rabbitmq cluster, stream sink ({}): rolling restart, {total} rows committed, {} read, {dupes} duplicates, \
         longest confirm gap per stopped node: {gaps:?}",
        partitions.map_or("one stream".to_owned(), |n| format!("super stream of {n}")),
        read.len()
    );
    assert_eq!(ids.len() as i64, total, "rows lost");
    assert_eq!(dupes, 0, "duplicates read from first");
    let longest = gaps.values().max().copied().unwrap_or_default();
    assert!(longest <= Duration::from_secs(10), "gaps {gaps:?}");
    drop(relay);
}

/// 4 writers insert (ids by writer) while every node is stopped for 5 s and started again in
/// turn; the slot's confirmed position is sampled every 50 ms, and a stretch in which it does
/// not move while a node is down is a delivery gap. Returns the rows committed and the
/// longest gap per stopped node, once the slot is past the last row.
async fn rolling_restart(s: &Scene) -> (i64, BTreeMap<usize, Duration>) {
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicI64::new(0));
    let mut writers = Vec::new();
    for w in 0..4i64 {
        let (client, stop, committed) = (
            connect(&s.url()).await,
            Arc::clone(&stop),
            Arc::clone(&committed),
        );
        writers.push(tokio::spawn(async move {
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                client
                    .batch_execute(&format!(
                        "INSERT INTO t VALUES ({}, {w})",
                        w * 1_000_000 + i
                    ))
                    .await
                    .unwrap();
                committed.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    let down: Arc<std::sync::Mutex<Option<usize>>> = Default::default();
    let gaps: Arc<std::sync::Mutex<BTreeMap<usize, Duration>>> = Default::default();
    let sampler = {
        let (client, slot, stop, down, gaps) = (
            connect(&s.url()).await,
            s.slot.clone(),
            Arc::clone(&stop),
            Arc::clone(&down),
            Arc::clone(&gaps),
        );
        tokio::spawn(async move {
            let (mut last, mut since) = (slot_confirmed(&client, &slot).await, Instant::now());
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let now = slot_confirmed(&client, &slot).await;
                if now != last {
                    last = now;
                    since = Instant::now();
                } else if let Some(n) = *down.lock().unwrap() {
                    let mut g = gaps.lock().unwrap();
                    let e = g.entry(n).or_default();
                    *e = (*e).max(since.elapsed());
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    for n in 1..=3usize {
        *down.lock().unwrap() = Some(n);
        cluster(&["stop-node", &n.to_string()]);
        tokio::time::sleep(Duration::from_secs(5)).await;
        cluster(&["start-node", &n.to_string()]);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    *down.lock().unwrap() = None;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    sampler.await.unwrap();
    let total = committed.load(Ordering::Relaxed);
    let end = s.lsn().await;
    wait_for(
        "the slot past the last row",
        Duration::from_secs(60),
        || async { (s.confirmed().await >= end).then_some(()) },
    )
    .await;
    let gaps = gaps.lock().unwrap().clone();
    (total, gaps)
}
