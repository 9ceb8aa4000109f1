//! The super stream sink against RabbitMQ 4: with `stream.partitions`, each change goes to the
//! partition its key hash picks (the hash `{partition}` uses, computed here independently), a
//! key never leaves its partition, and per key the consumer sees every change once and in
//! commit order — through `kill -9`s, because each partition's broker drops the replays.
//! A super stream whose partition count differs from the config stops walrelay by name.

use crate::common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::scene::Scene;
use common::stream::*;
use common::*;

const T: Duration = Duration::from_secs(120);
const KEYS: i64 = 40;
const PARTITIONS: u32 = 3;

/// The documented partition of an integer key: FNV-1a 64 over its text and a 0xFF byte,
/// modulo the partition count (docs/operations.md, "Super streams").
fn partition_of_int_key(id: i64, n: u32) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.to_string().bytes().chain([0xFF]) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(n)) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_keep_their_partition_and_their_order_through_kill_9() {
    let s = Scene::stream(
        &format!(
            "CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL);
             INSERT INTO acct SELECT g, 0 FROM generate_series(1, {KEYS}) g;"
        ),
        &["public.acct"],
        &format!("partitions = {PARTITIONS}"),
    )
    .await;
    let (client, slot, stream, cfg) = (&s.client, &s.slot, s.stream_name().to_owned(), &s.config);
    let mut relay = Relay::start(cfg);
    relay.wait_log("streaming", T).await;

    // Writers: each transaction adds 1 to one to three keys, so a key's values are 1, 2, 3…
    let (stop, commits) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicI64::new(0)),
    );
    let writer = {
        let (url, stop, commits) = (s.url(), Arc::clone(&stop), Arc::clone(&commits));
        tokio::spawn(async move {
            let c = connect(&url).await;
            let mut seed = 0x9E37_79B9_7F4A_7C15u64;
            while !stop.load(Ordering::Relaxed) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let keys: Vec<i64> = (0..1 + seed % 3)
                    .map(|i| 1 + ((seed >> (8 * i)) % KEYS as u64) as i64)
                    .collect();
                let mut sql = String::from("BEGIN;");
                for k in &keys {
                    sql.push_str(&format!("UPDATE acct SET v = v + 1 WHERE id = {k};"));
                }
                sql.push_str("COMMIT;");
                c.batch_execute(&sql).await.unwrap();
                commits.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut replays = 0.0;
    for pause_ms in [700, 1100, 500] {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        replays += replays_of(&relay).await;
        relay.kill9();
        relay = Relay::start(cfg);
        relay.wait_log("streaming", T).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    replays += replays_of(&relay).await;
    // The rows' final values, then a TRUNCATE: it has no key and goes to every partition.
    let finals: HashMap<i64, i64> = client
        .query("SELECT id, v FROM acct", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (i64::from(r.get::<_, i32>(0)), i64::from(r.get::<_, i32>(1))))
        .collect();
    client.batch_execute("TRUNCATE acct").await.unwrap();
    let end = current_lsn(client).await;
    wait_for("the slot past the workload", T, || async {
        (slot_confirmed(client, slot).await >= end).then_some(())
    })
    .await;

    // Read every partition from `first`.
    let env = env().await;
    let want: usize = finals.values().map(|v| *v as usize).sum();
    let stop = Arc::new(AtomicBool::new(false));
    let outs: Vec<_> = (0..PARTITIONS)
        .map(|_| Arc::new(Mutex::new(Vec::new())))
        .collect();
    let readers: Vec<_> = outs
        .iter()
        .enumerate()
        .map(|(p, out)| {
            tokio::spawn(consume(
                env.clone(),
                format!("{stream}-{p}"),
                Arc::clone(out),
                Arc::clone(&stop),
            ))
        })
        .collect();
    let count = || outs.iter().map(|o| o.lock().unwrap().len()).sum::<usize>();
    wait_for("every committed change in the partitions", T, || {
        let n = count();
        async move { (n >= want + PARTITIONS as usize).then_some(()) }
    })
    .await;
    // A replay the broker failed to drop would arrive after the originals: give it time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    let mut seen: HashMap<i64, (usize, Vec<i64>)> = HashMap::new();
    let mut total = 0;
    for (p, out) in outs.iter().enumerate() {
        let out = out.lock().unwrap();
        let (last, changes) = out.split_last().expect("a partition with messages");
        assert_eq!(
            body(&last.1)["op"],
            "truncate",
            "partition {p} ends with the truncate"
        );
        for (_, m) in changes {
            let b = body(m);
            assert_eq!(b["op"], "update", "{b}");
            let id = b["key"]["id"].as_i64().unwrap();
            let v = b["new"]["v"].as_i64().unwrap();
            let entry = seen.entry(id).or_insert((p, Vec::new()));
            assert_eq!(entry.0, p, "key {id} in partitions {} and {p}", entry.0);
            entry.1.push(v);
            total += 1;
        }
    }
    let mut used = [0usize; PARTITIONS as usize];
    for (id, (p, values)) in &seen {
        assert_eq!(
            *p,
            partition_of_int_key(*id, PARTITIONS),
            "key {id} is not in the partition its documented hash picks"
        );
        used[*p] += 1;
        let expected: Vec<i64> = (1..=finals[id]).collect();
        assert_eq!(
            values, &expected,
            "key {id}: every change once, in commit order (no loss, no duplicate)"
        );
    }
    eprintln!(
        "super stream: partitions={PARTITIONS} keys_per_partition={used:?} transactions={} changes={want} delivered={total} replays_dropped_by_the_broker={replays}",
        commits.load(Ordering::Relaxed)
    );
    assert_eq!(total, want, "every committed change delivered exactly once");
    assert!(
        want > 200,
        "the workload wrote too little to prove anything: {want}"
    );
    assert!(
        used.iter().all(|n| *n > 0),
        "every partition holds keys: {used:?}"
    );
    assert!(
        replays > 0.0,
        "no session re-sent anything: the deduplication was not exercised"
    );

    // The doctor reports the super stream; a different partition count stops walrelay.
    let doctor = std::process::Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["doctor", "--config"])
        .arg(cfg)
        .env_remove("AMQP_URL")
        .env_remove("WALRELAY_TEST_AMQP_URL")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&doctor.stdout).to_string();
    assert!(
        report.contains(&format!(
            "ok   stream: super stream {stream:?} has {PARTITIONS} partitions: {stream}-0, {stream}-1, {stream}-2"
        )),
        "{report}"
    );
    assert!(
        report.contains("RabbitMQ 4."),
        "the server's version: {report}"
    );
    // `tail` reads every partition.
    let tail = std::process::Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["tail", "--offset", "first", "--count", "60", "--config"])
        .arg(cfg)
        .env_remove("AMQP_URL")
        .env_remove("WALRELAY_TEST_AMQP_URL")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&tail.stdout).to_string();
    assert_eq!(printed.lines().count(), 60, "{printed}");
    assert!(
        printed
            .lines()
            .all(|l| l.starts_with("public.acct.update {"))
    );
    assert!(
        String::from_utf8_lossy(&tail.stderr).contains(&format!("({PARTITIONS} partitions)")),
        "{}",
        String::from_utf8_lossy(&tail.stderr)
    );
    drop(relay);
    config_set(cfg, "stream", "partitions", "2");
    let mut wrong = Relay::start(cfg);
    let status = wrong.wait_exit(T).await;
    assert!(!status.success());
    let log = wrong.log();
    assert!(
        log.contains(&format!(
            "super stream \\\"{stream}\\\" has 3 partitions but stream.partitions = 2"
        )) || log.contains(&format!(
            "super stream \"{stream}\" has 3 partitions but stream.partitions = 2"
        )),
        "{log}"
    );
    let _ = env.delete_super_stream(&stream).await;
}
