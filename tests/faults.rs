//! Failure tests: the slot never passes an unconfirmed message, `kill -9` loses nothing and
//! replays with identical ids, an unroutable message holds the position until a binding exists.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::scene::{Consumer, Scene, Setup};
use common::*;

const T: Duration = Duration::from_secs(90);

/// The end LSN of the last commit: the current WAL position right after it.
async fn commit_and_lsn(client: &tokio_postgres::Client, sql: &str) -> u64 {
    client.batch_execute(sql).await.unwrap();
    current_lsn(client).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_never_passes_a_message_the_broker_has_not_confirmed() {
    let proxy = proxy::Proxy::start(&amqp_addr()).await;
    let amqp_via_proxy = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    // A long confirm timeout: the held confirm must not end the session during the check.
    let s = Scene::with(
        "CREATE TABLE items (id int PRIMARY KEY, payload text)",
        &["public.items"],
        Setup {
            consumer: Consumer::Bound("#"),
            amqp_url: &amqp_via_proxy,
            ..Setup::default()
        },
    )
    .await;
    let (client, queue, slot, cfg) = (&s.client, s.queue(), &s.slot, s.config.clone());
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("confirm_timeout_ms = 5000", "confirm_timeout_ms = 60000");
    std::fs::write(&cfg, text).unwrap();
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;
    let first = commit_and_lsn(client, "INSERT INTO items VALUES (1, 'a')").await;
    wait_for("first commit confirmed", T, || async {
        (slot_confirmed(client, slot).await >= first).then_some(())
    })
    .await;

    // Withhold the broker's answers: publishes reach RabbitMQ, confirms do not reach walrelay.
    proxy.hold_replies();
    let before = slot_confirmed(client, slot).await;
    client
        .batch_execute("INSERT INTO items VALUES (2, 'b')")
        .await
        .unwrap();
    let held_commit = current_lsn(client).await;
    let delivered = queue.take(2, T).await; // the broker has the message...
    assert_eq!(delivered[1].body["new"]["id"], 2);
    // ...but without its confirm the slot must stay before that commit, for several status intervals.
    for _ in 0..20 {
        let pos = slot_confirmed(client, slot).await;
        assert!(
            pos < held_commit,
            "slot moved to {pos:x} past unconfirmed commit ending {held_commit:x}"
        );
        assert!(pos >= before, "slot went backwards");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.release();
    wait_for("held commit confirmed after release", T, || async {
        (slot_confirmed(client, slot).await >= held_commit).then_some(())
    })
    .await;
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_and_replays_with_identical_ids() {
    let s = Scene::with(
        "CREATE TABLE items (id int PRIMARY KEY, payload text)",
        &["public.items"],
        Setup::default(),
    )
    .await;
    let (client, queue, slot, cfg) = (&s.client, s.queue(), &s.slot, s.config.clone());
    let mut relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;

    // 300 transactions of 10 rows; kill walrelay while they stream, then restart it.
    let writer = {
        let url = s.url();
        tokio::spawn(async move {
            let c = connect(&url).await;
            for tx in 0..300 {
                let rows: Vec<String> = (0..10)
                    .map(|i| format!("({}, 'tx{tx}')", tx * 10 + i))
                    .collect();
                c.batch_execute(&format!("INSERT INTO items VALUES {}", rows.join(",")))
                    .await
                    .unwrap();
            }
        })
    };
    let mut seen = Vec::new();
    seen.extend(queue.take(200, T).await);
    relay.kill9();
    let confirmed_at_kill = slot_confirmed(client, slot).await;
    writer.await.unwrap();
    let relay2 = Relay::start(&cfg);
    relay2.wait_log("streaming", T).await;
    let end = current_lsn(client).await;
    wait_for("restarted relay confirms everything", T, || async {
        (slot_confirmed(client, slot).await >= end).then_some(())
    })
    .await;
    seen.extend(queue.drain_all(Duration::from_secs(1)).await);

    // Nothing lost.
    let ids: BTreeSet<i64> = seen
        .iter()
        .map(|m| m.body["new"]["id"].as_i64().unwrap())
        .collect();
    let missing: Vec<i64> = (0..3000).filter(|i| !ids.contains(i)).collect();
    assert!(missing.is_empty(), "lost rows: {missing:?}");
    // Duplicates carry identical ids and bodies, and only for transactions not confirmed at the kill.
    let mut by_id: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
    for m in &seen {
        by_id.entry(m.message_id.clone()).or_default().push(m);
    }
    let mut duplicated = 0;
    for copies in by_id.values().filter(|c| c.len() > 1) {
        duplicated += 1;
        assert!(
            copies.iter().all(|c| c.body == copies[0].body),
            "replayed copies differ: {:?}",
            copies[0].message_id
        );
        let lsn: walrelay::lsn::Lsn = copies[0].body["commit_lsn"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            lsn.0 >= confirmed_at_kill,
            "transaction at {lsn} was confirmed before the kill but replayed"
        );
    }
    assert_eq!(by_id.len(), 3000, "every change has one distinct id");
    // Per table, first deliveries are in commit order.
    let mut firsts = BTreeSet::new();
    let mut last = 0u64;
    for m in &seen {
        if firsts.insert(m.message_id.clone()) {
            let lsn: walrelay::lsn::Lsn = m.body["commit_lsn"].as_str().unwrap().parse().unwrap();
            assert!(lsn.0 >= last, "first deliveries out of commit order");
            last = lsn.0;
        }
    }
    eprintln!(
        "kill -9 run: {} messages received, {} ids duplicated, confirmed at kill {confirmed_at_kill:x}",
        seen.len(),
        duplicated
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_message_holds_the_slot_until_a_binding_exists() {
    let s = Scene::with(
        "CREATE TABLE items (id int PRIMARY KEY, payload text)",
        &["public.items"],
        Setup {
            consumer: Consumer::Unbound,
            ..Setup::default()
        },
    )
    .await;
    let (client, queue, slot, exchange, cfg) =
        (&s.client, s.queue(), &s.slot, &s.exchange, s.config.clone());
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;
    let start = slot_confirmed(client, slot).await;
    client
        .batch_execute("INSERT INTO items VALUES (1, 'nobody listens')")
        .await
        .unwrap();
    let commit = current_lsn(client).await;
    relay.wait_log("unroutable", T).await;
    let log = relay.log();
    assert!(
        log.contains(&format!("exchange \"{exchange}\"")) && log.contains("public.items.insert"),
        "error names exchange and key"
    );
    for _ in 0..10 {
        let pos = slot_confirmed(client, slot).await;
        assert!(pos < commit, "slot passed an unroutable message");
        assert!(pos >= start);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    queue.bind("public.items.*").await;
    let got = queue.take(1, T).await;
    assert_eq!(got[0].body["new"]["payload"], "nobody listens");
    wait_for("slot passes the commit once delivered", T, || async {
        (slot_confirmed(client, slot).await >= commit).then_some(())
    })
    .await;
    s.finish().await;
}

/// RabbitMQ answers an unroutable `mandatory` message with `basic.return` and then `basic.ack`
/// for the same delivery tag, while routed messages around it are acked too. The return must be
/// matched to its own message: the error names exactly that event, what was published before
/// it counts as delivered, and the slot stays before its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_return_among_routed_messages_is_matched_to_its_own_event() {
    let s = Scene::with(
        "CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY)",
        &["public.items", "public.other"],
        Setup {
            consumer: Consumer::Bound("public.items.*"),
            ..Setup::default()
        },
    )
    .await;
    let (client, queue) = (&s.client, s.queue());
    let relay = Relay::start(&s.config);
    relay.wait_log("streaming", T).await;
    // One transaction, one window: events 0-2 routed, 3 unroutable, 4-5 routed.
    client
        .batch_execute(
            "BEGIN; INSERT INTO items VALUES (1), (2), (3); INSERT INTO other VALUES (1);
             INSERT INTO items VALUES (4), (5); COMMIT;",
        )
        .await
        .unwrap();
    let commit = current_lsn(client).await;
    relay.wait_log("returned unroutable", T).await;
    let got = queue.take(3, T).await;
    let lsn = got[0].body["commit_lsn"].as_str().unwrap().to_owned();
    let log = relay.log();
    let line = log
        .lines()
        .find(|l| l.contains("returned unroutable"))
        .unwrap();
    assert!(
        line.contains(&format!("message {lsn}:3 ")) && line.contains("public.other.insert"),
        "the error names the returned event ({lsn}:3), not a neighbour: {line}"
    );
    assert!(
        s.confirmed().await < commit,
        "slot passed the returned message"
    );
    // Bound, the whole transaction is delivered (0-2 again: at least once, same ids).
    queue.bind("public.other.*").await;
    wait_for("slot past the transaction", T, || async {
        (s.confirmed().await >= commit).then_some(())
    })
    .await;
    let rest = queue.drain_all(Duration::from_millis(500)).await;
    let ids: BTreeSet<String> = got
        .iter()
        .chain(&rest)
        .map(|m| m.message_id.clone())
        .collect();
    let want: BTreeSet<String> = (0..6).map(|i| format!("{lsn}:{i}")).collect();
    assert_eq!(ids, want, "every event of the transaction, by id");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_a_restart_replays_nothing() {
    let s = Scene::with(
        "CREATE TABLE items (id int PRIMARY KEY, payload text)",
        &["public.items"],
        Setup::default(),
    )
    .await;
    let (client, queue, slot, cfg) = (&s.client, s.queue(), &s.slot, s.config.clone());
    let mut relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;
    client
        .batch_execute("INSERT INTO items SELECT g, 'x' FROM generate_series(1, 500) g")
        .await
        .unwrap();
    queue.take(500, T).await;
    let status = relay
        .terminate(Duration::from_secs(20))
        .expect("walrelay exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", relay.log());
    assert!(relay.log().contains("shut down cleanly"));
    // The slot survives shutdown and a restart sends nothing already confirmed.
    assert!(slot_confirmed(client, slot).await > 0, "slot kept");
    let relay2 = Relay::start(&cfg);
    relay2.wait_log("streaming", T).await;
    client
        .batch_execute("INSERT INTO items VALUES (9999, 'after')")
        .await
        .unwrap();
    let got = queue.take(1, T).await;
    assert_eq!(
        got[0].body["new"]["id"], 9999,
        "first message after restart is the new row, not a replay"
    );
    assert!(queue.drain(Duration::from_millis(500)).await.is_empty());
    s.finish().await;
}
