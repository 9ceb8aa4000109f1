//! Every stop has a way back: what the server refuses or aborts heals without a restart.
//! A role that loses REPLICATION is named in `/readyz` and the log while walrelay retries, and
//! streams again once the grant is back; a walsender chosen as a deadlock victim (SQLSTATE
//! 40P01, forced for real against a REINDEX of a catalog index) ends a session, not walrelay.
//! In both, every row committed meanwhile arrives.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common;

use common::replica::Replica;
use common::scene::Scene;
use common::*;

const T: Duration = Duration::from_secs(60);

/// The keys the events name (every change carries its row's key).
fn ids(got: &[Received]) -> BTreeSet<i64> {
    got.iter()
        .map(|m| m.body["key"]["id"].as_i64().expect("a key"))
        .collect()
}

/// The oracle can fail: a copy that misses a row, or holds a stale one, differs, and one built
/// from the right events equals the table (unchanged TOAST columns kept from the copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_convergence_oracle_tells_a_stale_copy_from_a_converged_one() {
    let s = Scene::new(
        "CREATE TABLE o (id int PRIMARY KEY, status text, note text);
         INSERT INTO o VALUES (1, 'new', 'a'), (2, 'new', 'b');",
        &["public.o"],
    )
    .await;
    let mut copy = Replica::new(&s.client, &["public.o"]).await;
    let (missing, extra) = copy.diff(&s.client, "public.o").await;
    assert_eq!((missing.len(), extra.len()), (2, 0));
    for e in [
        serde_json::json!({"op": "read", "schema": "public", "table": "o", "key": {"id": 1},
            "new": {"id": 1, "status": "new", "note": "a"}}),
        serde_json::json!({"op": "insert", "schema": "public", "table": "o", "key": {"id": 2},
            "new": {"id": 2, "status": "old", "note": "b"}}),
        serde_json::json!({"op": "insert", "schema": "public", "table": "o", "key": {"id": 3},
            "new": {"id": 3, "status": "gone", "note": "c"}}),
    ] {
        copy.apply(&s.client, &e).await;
    }
    let (missing, extra) = copy.diff(&s.client, "public.o").await;
    assert_eq!(
        (missing.len(), extra.len()),
        (1, 2),
        "row 2 stale, row 3 extra"
    );
    // The update leaves `note` out (unchanged TOAST): the copy keeps its own.
    for e in [
        serde_json::json!({"op": "update", "schema": "public", "table": "o", "key": {"id": 2},
            "new": {"id": 2, "status": "new"}, "unchanged_toast": ["note"]}),
        serde_json::json!({"op": "delete", "schema": "public", "table": "o", "key": {"id": 3},
            "new": null}),
    ] {
        copy.apply(&s.client, &e).await;
    }
    copy.assert_converged(&s.client, "public.o").await;
    s.finish().await;
}

/// Reads the scene's queue until every id of `want` came; every id read is in `allowed` (a
/// row confirmed just before a session ended may come again: at least once). The events, in
/// the order they came.
async fn receive(
    s: &Scene,
    want: std::ops::RangeInclusive<i64>,
    allowed: std::ops::RangeInclusive<i64>,
) -> Vec<serde_json::Value> {
    let want: BTreeSet<i64> = want.collect();
    let mut seen = BTreeSet::new();
    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + T;
    while !seen.is_superset(&want) {
        assert!(
            std::time::Instant::now() < deadline,
            "missing {:?}",
            want.difference(&seen).collect::<Vec<_>>()
        );
        match s.queue().get().await {
            Some(m) => {
                events.push(m.body.clone());
                seen.extend(ids(&[m]));
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(seen.iter().all(|id| allowed.contains(id)), "{seen:?}");
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_loses_replication_is_named_and_streams_again_once_granted() {
    let s = Scene::new(
        "CREATE TABLE orders (id int PRIMARY KEY, status text, note text);
         CREATE ROLE relay_role LOGIN REPLICATION;
         GRANT SELECT ON orders TO relay_role;",
        &["public.orders"],
    )
    .await;
    // The publication as the grants block has it: made by the tables' owner.
    s.sql(&format!("CREATE PUBLICATION {} FOR TABLE orders", s.slot))
        .await;
    let url = s.url().replace("postgres@", "relay_role@");
    s.set("postgres", "url", &format!("{url:?}"));
    let mut relay = s.start_streaming().await;
    // A consumer that keeps a copy of the table, from the events alone.
    let mut copy = Replica::new(&s.client, &["public.orders"]).await;
    s.sql("INSERT INTO orders VALUES (1, 'new', 'first')").await;
    let first = s.queue().take(1, T).await;
    assert_eq!(ids(&first), BTreeSet::from([1]));
    copy.apply(&s.client, &first[0].body).await;

    s.sql(
        "ALTER ROLE relay_role NOREPLICATION;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE usename = 'relay_role' AND backend_type = 'walsender';",
    )
    .await;
    // Inserts, an update and a delete while walrelay is refused.
    s.sql(
        "INSERT INTO orders SELECT g, 'new', repeat('n', g) FROM generate_series(2, 11) g;
         UPDATE orders SET status = 'paid' WHERE id = 3;
         DELETE FROM orders WHERE id = 4;",
    )
    .await;
    let port = relay.http_port().await;
    let why = wait_for("/readyz to name the missing attribute", T, || async {
        let (code, body) = http_get(port, "/readyz");
        (code == 503 && body.contains("lacks the REPLICATION attribute")).then_some(body)
    })
    .await;
    assert!(
        !why.contains("unavailable"),
        "the symptom, not the cause: {why}"
    );
    relay.wait_log("ALTER ROLE <role> REPLICATION", T).await;
    let metrics = http_get(port, "/metrics").1;
    assert!(
        metric(
            &metrics,
            "walrelay_errors_total{side=\"postgres\",kind=\"refused\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        relay.child.try_wait().unwrap().is_none(),
        "walrelay exited: {}",
        relay.log()
    );

    s.sql("ALTER ROLE relay_role REPLICATION").await;
    let granted = std::time::Instant::now();
    // Every change committed meanwhile: the consumer's copy, built from the events alone,
    // equals the table.
    let applied = copy.follow(&s.client, s.queue(), "public.orders", T).await;
    eprintln!(
        "heal: REPLICATION revoked: 12 changes committed while refused, {applied} events applied, replica equal {} ms after the grant, no restart",
        granted.elapsed().as_millis()
    );
    wait_for("/readyz to be ready again", T, || async {
        (http_get(port, "/readyz").0 == 200).then_some(())
    })
    .await;
    assert!(
        relay.child.try_wait().unwrap().is_none(),
        "healed without a restart"
    );
    drop(relay);
    s.finish().await;
}

/// The deadlock: the walsender, decoding an insert after the publication catalog changed,
/// opens `pg_publication_rel` and waits for its index, which a session reindexes in an open
/// transaction; that session then asks for the table itself. The walsender waited first, so
/// its deadlock check runs first and it is the victim: `ERROR 40P01` on the replication
/// stream, as PostgreSQL's own regression workload (REINDEX of catalogs) met it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walsender_chosen_as_deadlock_victim_ends_a_session_not_walrelay() {
    // `elsewhere` is not streamed: a publication of it changes pg_publication_rel.
    let s = Scene::new(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE elsewhere (id int PRIMARY KEY);",
        &["public.t"],
    )
    .await;
    let mut relay = s.start_streaming().await;
    s.sql("INSERT INTO t VALUES (1)").await;
    assert_eq!(ids(&s.queue().take(1, T).await), BTreeSet::from([1]));
    // Opened now: a new backend reads pg_publication_rel while it starts.
    let locker = connect(&s.url()).await;
    let monitor = connect(&s.url()).await;
    let waiting = "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
                   WHERE a.backend_type = 'walsender' AND NOT l.granted";
    monitor.query_one(waiting, &[]).await.unwrap();
    // A change to pg_publication_rel: the walsender reads it again at the next change.
    s.sql("CREATE PUBLICATION unrelated FOR TABLE elsewhere")
        .await;
    locker
        .batch_execute("BEGIN; REINDEX INDEX pg_publication_rel_prrelid_prpubid_index;")
        .await
        .unwrap();
    s.sql("INSERT INTO t VALUES (2)").await;
    // Once the walsender waits for the index, and well within deadlock_timeout (1 s), the
    // locker closes the circle and waits until PostgreSQL breaks it.
    wait_for("the walsender to wait for the index", T, || async {
        let n: i64 = monitor.query_one(waiting, &[]).await.unwrap().get(0);
        (n > 0).then_some(())
    })
    .await;
    tokio::time::timeout(
        T,
        locker.batch_execute("LOCK TABLE pg_publication_rel IN ACCESS EXCLUSIVE MODE; COMMIT;"),
    )
    .await
    .expect("the deadlock was never broken")
    .expect("the locker was the victim: the walsender should have been (it waited first)");
    let broken = std::time::Instant::now();
    relay.wait_log("40P01", T).await;
    assert!(
        relay.log().contains("session ended; retrying"),
        "{}",
        relay.log()
    );
    s.sql("INSERT INTO t SELECT g FROM generate_series(3, 10) g")
        .await;
    receive(&s, 2..=10, 1..=10).await;
    eprintln!(
        "heal: walsender deadlock victim (40P01): committed=9, delivered=9, all in {} ms after the deadlock, no restart",
        broken.elapsed().as_millis()
    );
    assert!(
        relay.child.try_wait().unwrap().is_none(),
        "walrelay exited: {}",
        relay.log()
    );
    drop(relay);
    s.finish().await;
}

/// The WAL budget, before it is spent: a slot held behind an unconfirmed change while 60 MB of
/// WAL is written, under `max_slot_wal_keep_size = 64MB`. walrelay warns with the outage the
/// slot survives, `walrelay status` and `doctor` say the same, and once the broker confirms,
/// the slot moves and the warning is taken back; nothing is invalidated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_wal_budget_is_warned_and_said_by_status_and_doctor() {
    let proxy = common::proxy::Proxy::start(&amqp_addr()).await;
    let via_proxy = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let s = Scene::with(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE junk (v text);",
        &["public.t"],
        common::scene::Setup {
            conf: &["max_slot_wal_keep_size = 64MB"],
            amqp_url: &via_proxy,
            ..common::scene::Setup::default()
        },
    )
    .await;
    s.set("rabbitmq", "confirm_timeout_ms", "120000");
    s.set("service", "probe_interval_ms", "300");
    let relay = s.start_streaming().await;
    s.sql("INSERT INTO t VALUES (1)").await;
    receive(&s, 1..=1, 1..=1).await;
    let doctor = String::from_utf8_lossy(&s.command(&["doctor"]).stdout).into_owned();
    assert!(doctor.contains(": WAL budget: "), "{doctor}");

    // Confirms withheld: the slot stays before row 2 while the WAL grows past four fifths of
    // the limit (a table walrelay does not stream, so nothing else is in flight).
    proxy.hold_replies();
    s.sql("INSERT INTO t VALUES (2)").await;
    s.sql("INSERT INTO junk SELECT repeat('x', 2000) FROM generate_series(1, 30000)")
        .await;
    // The same rows make a little less WAL on some versions (14): write on in small steps
    // until the budget is under a fifth, well before it runs out.
    for _ in 0..8 {
        let safe: i64 = s
            .client
            .query_one(
                "SELECT safe_wal_size FROM pg_replication_slots WHERE slot_name = $1",
                &[&s.slot],
            )
            .await
            .unwrap()
            .get(0);
        if safe < 64 * 1024 * 1024 / 5 {
            break;
        }
        s.sql("INSERT INTO junk SELECT repeat('x', 2000) FROM generate_series(1, 1000)")
            .await;
    }
    relay.wait_log("the slot's WAL budget is low", T).await;
    let log = relay.log();
    assert!(
        log.contains("an outage of about") || log.contains("no WAL rate"),
        "{log}"
    );
    let status = String::from_utf8_lossy(&s.command(&["status"]).stdout).into_owned();
    assert!(
        status.contains("WAL budget") && status.contains("LOW:"),
        "{status}"
    );
    let doctor = String::from_utf8_lossy(&s.command(&["doctor"]).stdout).into_owned();
    assert!(doctor.contains("its WAL budget is low"), "{doctor}");
    let port = relay.http_port().await;
    let metrics = http_get(port, "/metrics").1;
    let sample = format!("walrelay_slot_safe_wal_bytes{{slot=\"{}\"}}", s.slot);
    assert!(
        metric(&metrics, &sample) < 64.0 * 1024.0 * 1024.0 / 5.0,
        "{metrics}"
    );

    // The broker answers again: the slot moves past row 2, and the budget recovers.
    proxy.release();
    receive(&s, 2..=2, 1..=2).await;
    relay.wait_log("the slot's WAL budget recovered", T).await;
    assert_ne!(slot_wal_status(&s.client, &s.slot).await, "lost");
    drop(relay);
    s.finish().await;
}

/// A publication dropped and created again while walrelay streams: PostgreSQL cannot decode
/// the changes written while it did not exist, so walrelay stops there, naming the cause and
/// the way back; the way back (`walrelay resync`, which finds the gap by decoding the slot's
/// backlog, advances the slot past it, announces it and backfills) brings a consumer's copy
/// back to the table's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_gap_stops_with_the_way_back_and_the_way_back_converges() {
    let s = Scene::new(
        "CREATE TABLE orders (id int PRIMARY KEY, status text);",
        &["public.orders"],
    )
    .await;
    let mut copy = Replica::new(&s.client, &["public.orders"]).await;
    let mut relay = s.start_streaming().await;
    s.sql("INSERT INTO orders VALUES (1, 'new')").await;
    copy.follow(&s.client, s.queue(), "public.orders", T).await;

    s.sql(&format!(
        "DROP PUBLICATION {p};
         INSERT INTO orders VALUES (2, 'in the gap');
         UPDATE orders SET status = 'paid' WHERE id = 1;
         CREATE PUBLICATION {p} FOR TABLE orders WITH (publish_via_partition_root = true);
         INSERT INTO orders VALUES (3, 'after');",
        p = s.slot
    ))
    .await;
    assert!(!relay.wait_exit(T).await.success());
    let log = relay.log();
    assert!(
        log.contains("is missing at a point of the WAL")
            && log.contains("`walrelay resync` advances the slot past it"),
        "{log}"
    );
    let (missing, _) = copy.diff(&s.client, "public.orders").await;
    assert!(
        !missing.is_empty(),
        "the copy is stale: nothing after the gap was published"
    );
    // A restart meets the same gap: the stop stays until someone acts.
    let mut again = s.start();
    assert!(!again.wait_exit(T).await.success());

    // The way back, as docs/operations.md gives it.
    let out = s.command(&["resync"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("publication_gap"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let relay = s.start_streaming().await;
    s.sql("INSERT INTO orders VALUES (4, 'later'); DELETE FROM orders WHERE id = 3;")
        .await;
    let applied = copy.follow(&s.client, s.queue(), "public.orders", T).await;
    eprintln!("heal: publication gap: way back converged after {applied} events");
    drop(relay);
    s.finish().await;
}
