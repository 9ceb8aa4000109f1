//! `rabbitmq.url` as a list of a cluster's nodes: walrelay starts when the first node is
//! unreachable (and `walrelay doctor` names it), and when the node it publishes through goes away it moves to the next one at
//! once instead of retrying the lost one, losing nothing. Two proxies in front of one broker
//! stand for two nodes (scripts/rabbitmq-cluster.sh is the real cluster, issue 31).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common;

use common::proxy::Proxy;
use common::scene::Scene;
use common::*;

const T: Duration = Duration::from_secs(60);

fn node_list(urls: &[String]) -> String {
    let quoted: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_first_node_is_passed_over_and_named() {
    let s = Scene::new("CREATE TABLE t (id int PRIMARY KEY);", &["public.t"]).await;
    let dead_port = free_port();
    let dead = format!("amqp://guest:guest@127.0.0.1:{dead_port}/%2f");
    s.set(
        "rabbitmq",
        "url",
        &node_list(&[dead, amqp_url().to_owned()]),
    );
    let doctor = s.command(&["doctor"]);
    let text = String::from_utf8_lossy(&doctor.stdout).into_owned();
    assert!(
        text.contains(&format!(
            "node 127.0.0.1:{dead_port} of rabbitmq.url is unreachable"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("node {}: cluster ", amqp_addr())) && text.contains("RabbitMQ 3."),
        "{text}"
    );
    let relay = s.start_streaming().await;
    s.sql("INSERT INTO t VALUES (1)").await;
    let got = s.queue().take(1, T).await;
    assert_eq!(got[0].body["key"]["id"], 1);
    let metrics = http_get(relay.http_port().await, "/metrics").1;
    let live = amqp_addr();
    assert_eq!(
        metric(
            &metrics,
            &format!("walrelay_broker_connected{{node=\"{live}\"}}")
        ),
        1.0,
        "{metrics}"
    );
    drop(relay);
    s.finish().await;
}

/// The node in use goes away under steady inserts: the next session connects through the
/// other node at once; every row arrives (replays keep their ids), and the longest gap
/// between deliveries is a few seconds, not the lost node's downtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_node_in_use_moves_to_the_next_node_at_once() {
    let (a, b) = (
        Proxy::start(&amqp_addr()).await,
        Proxy::start(&amqp_addr()).await,
    );
    let url = |p: &Proxy| format!("amqp://guest:guest@127.0.0.1:{}/%2f", p.port);
    let s = Scene::new("CREATE TABLE t (id int PRIMARY KEY);", &["public.t"]).await;
    s.set("rabbitmq", "url", &node_list(&[url(&a), url(&b)]));
    s.set("service", "reconnect_min_ms", "200");
    let relay = s.start_streaming().await;
    let writer = {
        let client = connect(&s.url()).await;
        tokio::spawn(async move {
            for id in 1..=300 {
                client
                    .batch_execute(&format!("INSERT INTO t VALUES ({id})"))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.set_down(true);
    let lost_at = Instant::now();
    let mut seen = BTreeSet::new();
    let mut last = Instant::now();
    let mut longest = Duration::ZERO;
    let deadline = Instant::now() + T;
    while seen.len() < 300 {
        assert!(
            Instant::now() < deadline,
            "missing rows: got {}",
            seen.len()
        );
        match s.queue().get().await {
            Some(m) => {
                let now = Instant::now();
                if now > lost_at {
                    longest = longest.max(now - last.max(lost_at));
                }
                last = now;
                seen.insert(m.body["key"]["id"].as_i64().unwrap());
            }
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    writer.await.unwrap();
    assert_eq!(seen, (1..=300).collect::<BTreeSet<i64>>());
    assert!(
        longest < Duration::from_secs(5),
        "the longest gap after the node went away was {longest:?}"
    );
    let log = relay.log();
    assert!(
        log.contains("publishing through another RabbitMQ node"),
        "{log}"
    );
    let metrics = http_get(relay.http_port().await, "/metrics").1;
    let node = |p: &Proxy| format!("walrelay_broker_connected{{node=\"127.0.0.1:{}\"}}", p.port);
    assert_eq!(metric(&metrics, &node(&b)), 1.0, "{metrics}");
    assert_eq!(metric(&metrics, &node(&a)), 0.0, "{metrics}");
    eprintln!("broker nodes: node in use lost, longest delivery gap {longest:?}, 300 of 300 rows");
    drop(relay);
    s.finish().await;
}
