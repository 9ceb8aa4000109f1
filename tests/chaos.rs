//! The fault-injection suite: a continuous random workload, faults injected while it runs, and
//! the checker's verdict (lost = 0, unexpected = 0, duplicates with identical ids, per-table
//! commit order, the slot never going backwards). The fast subset runs in `scripts/test.sh`;
//! `WALRELAY_CHAOS_LONG=1` lengthens every run (more kills, bigger transactions).
//! Each test prints one `chaos:` line with its figures (collected in docs/reliability.md).

use crate::common;

use std::time::Duration;

use common::bed::{Bed, T, long, report, verdict};
use common::checker::{self, Monitor, Run};
use common::proxy::Proxy;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steady_state_is_exactly_once_in_commit_order() {
    let bed = Bed::new(&[]).await;
    let relay = Relay::start(&bed.config(amqp_url()));
    relay.wait_log("streaming", T).await;
    let monitor = Monitor::start(bed.url.clone(), bed.slot.clone());
    let run = Run::start(&bed.url, &bed.other_url, bed.queue(), 4);
    tokio::time::sleep(Duration::from_secs(if long() { 60 } else { 4 })).await;
    let v = verdict(&bed, run, monitor).await;
    report("steady", &v, 0);
    v.assert_safe();
    assert_eq!(v.duplicated, 0, "no faults, no duplicates");
    assert!(v.committed > 100, "{v:?}");
    assert!(bed.slot_lsn().await >= current_lsn(&bed.client).await - 1024 * 1024);
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_at_random_moments_loses_nothing() {
    let bed = Bed::new(&[]).await;
    let cfg = bed.config(amqp_url());
    let mut relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;
    let monitor = Monitor::start(bed.url.clone(), bed.slot.clone());
    let run = Run::start(&bed.url, &bed.other_url, bed.queue(), 4);
    let kills = if long() { 20 } else { 5 };
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..kills {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(200 + seed % 800)).await;
        relay.kill9();
        relay = Relay::start(&cfg);
        relay.wait_log("streaming", T).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let v = verdict(&bed, run, monitor).await;
    report("kill -9", &v, kills);
    v.assert_safe();
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crashes_at_the_seams_lose_nothing() {
    let bed = Bed::new(&[]).await;
    let cfg = bed.config(amqp_url());
    // The slot exists before the workload starts (changes before it are not ours to deliver).
    let mut first = Relay::start(&cfg);
    first.wait_log("streaming", T).await;
    first.kill9();
    let monitor = Monitor::start(bed.url.clone(), bed.slot.clone());
    let run = Run::start(&bed.url, &bed.other_url, bed.queue(), 3);
    let mut crashes = 0;
    for seam in [
        "publish.before_confirm",
        "confirm.before_status",
        "status.after_send",
    ] {
        let mut relay = Relay::start_env(&cfg, &[("WALRELAY_FAILPOINT", &format!("{seam}:40"))]);
        let status = relay.wait_exit(T).await;
        assert!(!status.success(), "{seam}: the failpoint aborts");
        assert!(relay.log().contains(&format!("failpoint {seam} reached")));
        crashes += 1;
    }
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let v = verdict(&bed, run, monitor).await;
    report("seams", &v, crashes);
    v.assert_safe();
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_transaction_that_commits_while_walrelay_is_down_is_delivered() {
    let bed = Bed::new(&[]).await;
    let cfg = bed.config(amqp_url());
    let mut relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;
    let mut long_client = connect(&bed.url).await;
    let long_tx = long_client.transaction().await.unwrap();
    long_tx
        .batch_execute("INSERT INTO t0 SELECT g, 0, 'long' FROM generate_series(1, 100) g")
        .await
        .unwrap();
    // A short transaction commits and is confirmed while the long one is open.
    bed.client
        .batch_execute("INSERT INTO t1 VALUES (1, 0, 'short')")
        .await
        .unwrap();
    let short = bed.queue().take(1, T).await;
    assert_eq!(short[0].body["table"], "t1");
    let after_short = current_lsn(&bed.client).await;
    wait_for("slot past the short transaction", T, || async {
        (bed.slot_lsn().await >= after_short).then_some(())
    })
    .await;
    relay.kill9();
    long_tx
        .batch_execute("INSERT INTO t0 SELECT g, 0, 'long' FROM generate_series(101, 200) g")
        .await
        .unwrap();
    long_tx.commit().await.unwrap();
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;
    let got = bed.queue().take(200, T).await;
    let mut ids: Vec<i64> = got
        .iter()
        .map(|m| m.body["key"]["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200);
    assert!(
        bed.queue()
            .drain(Duration::from_millis(500))
            .await
            .is_empty(),
        "the short one is not replayed"
    );
    eprintln!("chaos: interleaved long/short across a restart: 200 + 1 delivered, 0 lost");
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_transaction_killed_midway_is_replayed_whole_with_the_same_ids() {
    let bed = Bed::new(&[]).await;
    let cfg = bed.config(amqp_url());
    let mut relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;
    let rows: i64 = if long() { 1_000_000 } else { 100_000 };
    bed.client
        .batch_execute(&format!(
            "INSERT INTO t2 SELECT g, 0, repeat('x', 100) FROM generate_series(1, {rows}) g"
        ))
        .await
        .unwrap();
    let deliveries = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consumer = tokio::spawn(checker::consume(
        bed.queue().url.clone(),
        bed.queue().queue.clone(),
        std::sync::Arc::clone(&deliveries),
        std::sync::Arc::clone(&stop),
    ));
    // Debug builds relay a few thousand events a second: allow for the long variant's size.
    let budget = T + Duration::from_secs(rows as u64 / 1000);
    wait_for("~40% delivered", budget, || async {
        (deliveries.lock().unwrap().len() as i64 >= rows * 4 / 10).then_some(())
    })
    .await;
    let pid = relay.child.id();
    let rss_first = peak_rss_kib(pid);
    relay.kill9();
    let at_kill = deliveries.lock().unwrap().len();
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;
    wait_for("every row delivered", budget * 3, || async {
        let d = deliveries.lock().unwrap();
        let distinct: std::collections::HashSet<i64> = d.iter().map(|x| x.change.1).collect();
        (distinct.len() as i64 == rows).then_some(())
    })
    .await;
    let rss_second = peak_rss_kib(relay.child.id());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    consumer.await.unwrap();
    let d = std::mem::take(&mut *deliveries.lock().unwrap());
    let mut by_change = std::collections::HashMap::new();
    for x in d.iter() {
        let id = by_change
            .entry(x.change.clone())
            .or_insert(x.message_id.clone());
        assert_eq!(*id, x.message_id, "a replayed change keeps its id");
    }
    eprintln!(
        "chaos: {rows}-row transaction killed after {at_kill} deliveries: {} deliveries, {} distinct, peak RSS {rss_first} KiB / {rss_second} KiB",
        d.len(),
        by_change.len()
    );
    assert_eq!(by_change.len() as i64, rows);
    assert!(rss_second < 96 * 1024, "peak RSS {rss_second} KiB");
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_unavailable_for_three_sender_timeouts_holds_the_slot_then_delivers() {
    let bed = Bed::new(&["wal_sender_timeout = 2s"]).await;
    let proxy = Proxy::start(&amqp_addr()).await;
    let amqp = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let relay = Relay::start(&bed.config(&amqp));
    relay.wait_log("streaming", T).await;
    let monitor = Monitor::start(bed.url.clone(), bed.slot.clone());
    let run = Run::start(&bed.url, &bed.other_url, bed.queue(), 3);
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.set_down(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = bed.slot_lsn().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during = bed.slot_lsn().await;
    assert_eq!(
        held, during,
        "the slot must not advance while the broker is down"
    );
    proxy.set_down(false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let v = verdict(&bed, run, monitor).await;
    report("broker down 3x wal_sender_timeout", &v, 1);
    v.assert_safe();
    assert!(
        !bed.pg
            .log()
            .contains("terminating walsender process due to replication timeout")
    );
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_confirms_under_a_2s_sender_timeout_cause_no_walsender_timeout() {
    let bed = Bed::new(&["wal_sender_timeout = 2s"]).await;
    let proxy = Proxy::start(&amqp_addr()).await;
    let amqp = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let relay = Relay::start(&bed.config(&amqp));
    relay.wait_log("streaming", T).await;
    let monitor = Monitor::start(bed.url.clone(), bed.slot.clone());
    let run = Run::start(&bed.url, &bed.other_url, bed.queue(), 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.hold_replies();
    tokio::time::sleep(Duration::from_secs(6)).await;
    proxy.release();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let v = verdict(&bed, run, monitor).await;
    report("confirms held 3x wal_sender_timeout", &v, 1);
    v.assert_safe();
    let log = bed.pg.log();
    assert!(
        !log.contains("terminating walsender process due to replication timeout"),
        "walsender timed out: keepalives were not answered under back-pressure"
    );
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blackholed_postgres_link_is_noticed_and_recovered() {
    let bed = Bed::new(&[]).await;
    let proxy = Proxy::start(&format!("127.0.0.1:{}", bed.pg.port)).await;
    let url_via_proxy = bed
        .url
        .replace(&format!(":{}/", bed.pg.port), &format!(":{}/", proxy.port));
    let cfg = write_config(
        bed.dir.path(),
        &url_via_proxy,
        amqp_url(),
        &bed.slot,
        &bed.exchange,
        &["public.t0", "public.t1", "public.t2"],
        "",
    );
    config_set(&cfg, "postgres", "receive_timeout_ms", "2000");
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;
    let monitor = Monitor::start(bed.url.clone(), bed.slot.clone());
    let run = Run::start(&bed.url, &bed.other_url, bed.queue(), 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Server → walrelay goes silent, no RST: only walrelay's own timeout can notice.
    proxy.hold_replies();
    let start = std::time::Instant::now();
    relay
        .wait_log("presumed dead", Duration::from_secs(10))
        .await;
    let noticed = start.elapsed();
    assert!(
        noticed < Duration::from_secs(5),
        "noticed after {noticed:?}"
    );
    proxy.sever_all();
    proxy.release();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v = verdict(&bed, run, monitor).await;
    report(
        &format!("blackholed PG link (noticed in {noticed:?})"),
        &v,
        1,
    );
    v.assert_safe();
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_crash_and_restart_mid_stream_loses_nothing() {
    // A crash must not lose acknowledged commits on the server itself, or the checker would
    // blame walrelay for PostgreSQL's asynchronous commit (the harness turns it off for speed).
    let bed = Bed::new(&["synchronous_commit = on"]).await;
    let relay = Relay::start(&bed.config(amqp_url()));
    relay.wait_log("streaming", T).await;
    let monitor = Monitor::start(bed.url.clone(), bed.slot.clone());
    let run = Run::start(&bed.url, &bed.other_url, bed.queue(), 3);
    tokio::time::sleep(Duration::from_secs(1)).await;
    bed.pg.pg_ctl_stop("immediate");
    tokio::time::sleep(Duration::from_millis(500)).await;
    bed.pg.pg_ctl_start();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v = verdict(&bed, run, monitor).await;
    report("postgres crash (immediate stop) and restart", &v, 1);
    // Transactions whose COMMIT had no answer are "unknown": delivered or not, both are fine.
    // The slot may step back: PostgreSQL persists its position at checkpoints only.
    v.assert_safe_allowing_backwards();
    assert!(relay.log().contains("session ended; retrying"));
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fast_shutdown_is_not_held_up_while_the_broker_is_down() {
    let bed = Bed::new(&[]).await;
    let proxy = Proxy::start(&amqp_addr()).await;
    let amqp = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let relay = Relay::start(&bed.config(&amqp));
    relay.wait_log("streaming", T).await;
    bed.client
        .batch_execute("INSERT INTO t0 VALUES (1, 0, 'x')")
        .await
        .unwrap();
    proxy.set_down(true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = std::time::Instant::now();
    bed.pg.pg_ctl_stop("fast");
    let took = start.elapsed();
    eprintln!("chaos: pg_ctl stop -m fast with the broker down took {took:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    drop(relay);
    bed.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_published_tables_advance_the_slot_but_never_past_a_held_change() {
    let bed = Bed::new(&[]).await;
    let proxy = Proxy::start(&amqp_addr()).await;
    let amqp = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let relay = Relay::start(&bed.config(&amqp));
    relay.wait_log("streaming", T).await;
    let other = connect(&bed.other_url).await;
    // Only unpublished tables and another database write: the slot still advances.
    let start = bed.slot_lsn().await;
    for _ in 0..20 {
        bed.client
            .batch_execute("INSERT INTO unpub SELECT g, 0, repeat('x', 500) FROM generate_series(1, 500) g ON CONFLICT (id) DO UPDATE SET v = unpub.v + 1")
            .await
            .unwrap();
        other
            .batch_execute("INSERT INTO noise SELECT FROM generate_series(1, 2000)")
            .await
            .unwrap();
    }
    let written = current_lsn(&bed.client).await;
    wait_for("slot to follow unpublished WAL", T, || async {
        (bed.slot_lsn().await >= written).then_some(())
    })
    .await;
    assert!(bed.slot_lsn().await > start);
    // A published change whose confirm is held: heavy unpublished WAL must not carry the slot past it.
    proxy.hold_replies();
    let before_held = current_lsn(&bed.client).await;
    bed.client
        .batch_execute("INSERT INTO t0 VALUES (42, 0, 'held')")
        .await
        .unwrap();
    let held_commit = current_lsn(&bed.client).await;
    for _ in 0..20 {
        other
            .batch_execute("INSERT INTO noise SELECT FROM generate_series(1, 2000)")
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = bed.slot_lsn().await;
    assert!(
        during < held_commit,
        "slot {during:X} passed the held change (commit before {held_commit:X})"
    );
    assert!(during <= before_held + 64 * 1024);
    proxy.release();
    let got = bed.queue().take(1, T).await;
    assert_eq!(got[0].body["key"]["id"], 42);
    let end = current_lsn(&bed.client).await;
    wait_for("slot past everything once released", T, || async {
        (bed.slot_lsn().await >= end).then_some(())
    })
    .await;
    eprintln!(
        "chaos: idle published tables: slot followed {} KiB of unpublished WAL; held change blocked it",
        (written - start) / 1024
    );
    bed.finish().await;
}
