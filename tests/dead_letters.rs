//! Poison rows set aside by rule, never dropped: with `rabbitmq.on_oversized` and
//! `on_unroutable` = "dead_letter", a row over `max_message_bytes` arrives as a claim check in
//! its place, and a row no queue is bound for arrives on the dead-letter exchange with the
//! routing key and exchange it was meant for; the rows after them arrive, the slot moves, and
//! both are counted. (With the default, "stop", the refusals suite shows the stream held.)

use std::time::Duration;

use crate::common;

use common::scene::{Consumer, Scene, Setup};
use common::*;

const T: Duration = Duration::from_secs(60);

/// The sum of `walrelay_events_dead_lettered_total` samples with this reason.
fn dead_lettered(metrics: &str, reason: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("walrelay_events_dead_lettered_total{")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_and_an_unroutable_row_are_set_aside_and_the_stream_goes_on() {
    let s = Scene::with(
        "CREATE TABLE orders (id int PRIMARY KEY, note text);
         CREATE TABLE audit (id int PRIMARY KEY);",
        &["public.orders", "public.audit"],
        Setup {
            consumer: Consumer::Bound("public.orders.#"),
            ..Setup::default()
        },
    )
    .await;
    let dlx = unique("dlx");
    let dead = TestQueue::new(&dlx, Some("#")).await;
    s.set("rabbitmq", "max_message_bytes", "4096");
    s.set("rabbitmq", "on_oversized", "\"dead_letter\"");
    s.set("rabbitmq", "on_unroutable", "\"dead_letter\"");
    s.set("rabbitmq", "dead_letter_exchange", &format!("{dlx:?}"));
    let relay = s.start_streaming().await;
    s.sql("INSERT INTO orders VALUES (1, 'small')").await;
    s.sql("INSERT INTO orders VALUES (2, repeat('x', 10000))")
        .await;
    s.sql("INSERT INTO audit VALUES (1)").await;
    s.sql("INSERT INTO orders VALUES (3, 'after')").await;
    let end = s.lsn().await;

    let got = s.queue().take(3, T).await;
    let ids: Vec<i64> = got
        .iter()
        .map(|m| m.body["key"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3], "in order, the claim check in its place");
    let claim = &got[1].body;
    assert_eq!(claim["oversized"], true, "{claim}");
    assert!(claim["size"].as_u64().unwrap() > 10_000, "{claim}");
    assert!(
        claim.get("new").is_none(),
        "no row in a claim check: {claim}"
    );
    assert_eq!(claim["op"], "insert");

    let letters = dead.take(1, T).await;
    let letter = &letters[0];
    assert_eq!(letter.body["table"], "audit");
    assert_eq!(letter.routing_key, "public.audit.insert");
    assert_eq!(
        letter.header("x-walrelay-original-routing-key").as_deref(),
        Some("public.audit.insert")
    );
    assert_eq!(
        letter.header("x-walrelay-original-exchange").as_deref(),
        Some(s.exchange.as_str())
    );
    assert_eq!(
        letter.header("x-walrelay-dead-letter").as_deref(),
        Some("unroutable")
    );

    wait_for("the slot past the last row", T, || async {
        (s.confirmed().await >= end).then_some(())
    })
    .await;
    let port = relay.http_port().await;
    let metrics = http_get(port, "/metrics").1;
    assert_eq!(dead_lettered(&metrics, "oversized"), 1.0, "{metrics}");
    assert_eq!(dead_lettered(&metrics, "unroutable"), 1.0, "{metrics}");
    let log = relay.log();
    assert!(log.contains("replaced by a claim check"), "{log}");
    assert!(log.contains("went to the dead-letter exchange"), "{log}");
    assert!(!log.contains("xxxxxxxxxx"), "no row value in the log");
    drop(relay);
    dead.delete_queue().await;
    s.finish().await;
}

/// A dead-letter exchange that routes nothing holds the stream like any unroutable message,
/// naming that exchange, and a binding there lets it go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_exchange_without_a_binding_holds_the_stream_naming_it() {
    let s = Scene::with(
        "CREATE TABLE audit (id int PRIMARY KEY);",
        &["public.audit"],
        Setup {
            consumer: Consumer::Bound("nothing.here"),
            ..Setup::default()
        },
    )
    .await;
    let dlx = unique("dlx");
    let dead = TestQueue::new(&dlx, None).await;
    s.set("rabbitmq", "on_unroutable", "\"dead_letter\"");
    s.set("rabbitmq", "dead_letter_exchange", &format!("{dlx:?}"));
    let relay = s.start_streaming().await;
    s.sql("INSERT INTO audit VALUES (1)").await;
    let end = s.lsn().await;
    relay
        .wait_log(&format!("returned unroutable by exchange \"{dlx}\""), T)
        .await;
    assert!(s.confirmed().await < end, "held");
    dead.bind("#").await;
    let letters = dead.take(1, T).await;
    assert_eq!(letters[0].body["table"], "audit");
    wait_for("the slot past the row", T, || async {
        (s.confirmed().await >= end).then_some(())
    })
    .await;
    drop(relay);
    dead.delete_queue().await;
    s.finish().await;
}
