//! A Jepsen-style checker for walrelay: a workload that records every change it commits, a
//! consumer that records every delivery, a monitor that samples the slot's confirmed position,
//! and a verdict: lost, unexpected, recovered, duplicated (with identical ids), per-table order.
//!
//! Changes are identified by (table, id, version): inserts have version 0, each update bumps
//! it. Each writer owns its own id range, so it knows every version it wrote.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amqprs::channel::{BasicAckArguments, BasicConsumeArguments, BasicQosArguments};
use walrelay::sink::{AmqpUrl, Link};

use super::{TestQueue, connect};

/// The published tables of the workload; `unpub` is deliberately not published.
pub const TABLES: [&str; 3] = ["t0", "t1", "t2"];

pub const SCHEMA: &str = "CREATE TABLE t0 (id bigint PRIMARY KEY, v int NOT NULL, pad text);
     CREATE TABLE t1 (id bigint PRIMARY KEY, v int NOT NULL, pad text);
     CREATE TABLE t2 (id bigint PRIMARY KEY, v int NOT NULL, pad text);
     CREATE TABLE unpub (id bigint PRIMARY KEY, v int NOT NULL, pad text);";

/// A change as (table, id, version).
pub type Change = (String, i64, i32);

/// What a transaction's COMMIT returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
    Unknown,
}

/// Everything the workload did.
#[derive(Default)]
pub struct History {
    /// Per transaction: its changes, outcome and an upper bound of its commit's end LSN.
    pub txs: Vec<(Vec<Change>, Outcome, u64)>,
}

/// One delivery as the consumer saw it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub change: Change,
    pub message_id: String,
    pub commit_lsn: u64,
}

/// Runs `writers` concurrent writers until `stop`, each committing small random transactions
/// (10% rolled back) over the published tables, the unpublished table and a second database.
pub async fn workload(
    url: String,
    other_db_url: String,
    writers: usize,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
) {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (url, other, stop, history) = (
            url.clone(),
            other_db_url.clone(),
            Arc::clone(&stop),
            Arc::clone(&history),
        );
        tasks.push(tokio::spawn(async move {
            let mut client = connect(&url).await;
            let mut other_client = connect(&other).await;
            let mut versions: HashMap<(usize, i64), i32> = HashMap::new();
            let mut next_id = (w as i64 + 1) * 1_000_000_000;
            let mut rng = (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut rand = move |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            while !stop.load(Ordering::Relaxed) {
                let rollback = rand(10) == 0;
                let rows = 1 + rand(5) as usize;
                let mut changes = Vec::new();
                let mut pending_versions = Vec::new();
                if client.is_closed() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    match reconnect(&url).await {
                        Some(c) => client = c,
                        None => continue,
                    }
                }
                let Ok(tx) = client.transaction().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let mut failed = false;
                for _ in 0..rows {
                    let t = rand(3) as usize;
                    let existing: Vec<i64> = versions
                        .keys()
                        .filter(|(tt, _)| *tt == t)
                        .map(|(_, id)| *id)
                        .take(50)
                        .collect();
                    let r = if !existing.is_empty() && rand(3) == 0 {
                        let id = existing[rand(existing.len() as u64) as usize];
                        let v = pending_versions
                            .iter()
                            .rev()
                            .find(|(k, _)| *k == (t, id))
                            .map(|(_, v)| *v)
                            .unwrap_or(versions[&(t, id)])
                            + 1;
                        pending_versions.push(((t, id), v));
                        changes.push((TABLES[t].to_owned(), id, v));
                        tx.execute(
                            &format!("UPDATE {} SET v = $2 WHERE id = $1", TABLES[t]),
                            &[&id, &v],
                        )
                        .await
                    } else {
                        next_id += 1;
                        pending_versions.push(((t, next_id), 0));
                        changes.push((TABLES[t].to_owned(), next_id, 0));
                        tx.execute(
                            &format!("INSERT INTO {} VALUES ($1, 0, 'x')", TABLES[t]),
                            &[&next_id],
                        )
                        .await
                    };
                    if r.is_err() {
                        failed = true;
                        break;
                    }
                    let _ = tx
                        .execute(
                            "INSERT INTO unpub VALUES ($1, 0, 'noise') ON CONFLICT DO NOTHING",
                            &[&(next_id + 500_000_000)],
                        )
                        .await;
                }
                let outcome = if failed || rollback {
                    let _ = tx.rollback().await;
                    Outcome::Failed
                } else {
                    match tx.commit().await {
                        Ok(()) => Outcome::Ok,
                        Err(e) if e.is_closed() || e.as_db_error().is_none() => Outcome::Unknown,
                        Err(_) => Outcome::Failed,
                    }
                };
                if outcome == Outcome::Ok {
                    for (k, v) in &pending_versions {
                        versions.insert(*k, *v);
                    }
                }
                let bound = if outcome == Outcome::Failed {
                    0
                } else {
                    // An upper bound of the commit's end; unknown if the server just went away.
                    client
                        .query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint", &[])
                        .await
                        .map_or(u64::MAX, |r| r.get::<_, i64>(0) as u64)
                };
                history.lock().unwrap().txs.push((changes, outcome, bound));
                // WAL in another database that nobody publishes.
                if other_client.is_closed() {
                    if let Some(c) = reconnect(&other).await {
                        other_client = c;
                    }
                } else {
                    let _ = other_client
                        .batch_execute("INSERT INTO noise SELECT FROM generate_series(1, 5)")
                        .await;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Connects, or `None` while the server is down.
async fn reconnect(url: &str) -> Option<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(client)
}

/// Consumes the queue (manual acks) into `out` until `stop`, reconnecting whenever the broker
/// goes away (unacked deliveries then come again: counted as duplicates, never as lost).
pub async fn consume(
    url: String,
    queue: String,
    out: Arc<Mutex<Vec<Delivery>>>,
    stop: Arc<AtomicBool>,
) {
    let url = AmqpUrl::parse(&url).expect("an AMQP URL");
    while !stop.load(Ordering::Relaxed) {
        // Bounded, like every connect to a broker that may be down (see common::broker).
        let Ok((link, _signals)) = Link::open(&url, "checker", Duration::from_secs(2)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let _ = consume_session(&link, &queue, &out, &stop).await;
        link.close().await;
    }
}

async fn consume_session(
    link: &Link,
    queue: &str,
    out: &Mutex<Vec<Delivery>>,
    stop: &AtomicBool,
) -> Result<(), String> {
    let err = |e: amqprs::error::Error| e.to_string();
    let ch = link.channel().await.map_err(|e| e.to_string())?;
    ch.basic_qos(BasicQosArguments::new(0, 500, false))
        .await
        .map_err(err)?;
    let (_tag, mut consumer) = ch
        .basic_consume_rx(
            BasicConsumeArguments::new(queue, "checker")
                .manual_ack(true)
                .finish(),
        )
        .await
        .map_err(err)?;
    // Acks go out every ACK_EVERY deliveries (`multiple`) or when the queue is quiet: awaiting
    // one ack per message made the consumer, not walrelay, the bottleneck of the big runs.
    const ACK_EVERY: usize = 100;
    let mut unacked: Option<u64> = None;
    let mut pending = 0usize;
    let ack = |tag| ch.basic_ack(BasicAckArguments::new(tag, true));
    while !stop.load(Ordering::Relaxed) {
        let next = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
        let m = match next {
            Err(_) => {
                if let Some(last) = unacked.take() {
                    ack(last).await.map_err(err)?;
                    pending = 0;
                }
                continue;
            }
            Ok(Some(m)) => m,
            // The channel or connection is gone: reconnect (unacked deliveries come again).
            Ok(None) => return Ok(()),
        };
        let (Some(deliver), Some(content)) = (m.deliver, m.content) else {
            continue;
        };
        let body: serde_json::Value = serde_json::from_slice(&content).unwrap();
        let id = body["key"]["id"].as_i64().unwrap();
        let v = body["new"]["v"].as_i64().unwrap() as i32;
        let lsn = parse_lsn(body["commit_lsn"].as_str().unwrap());
        out.lock().unwrap().push(Delivery {
            change: (body["table"].as_str().unwrap().to_owned(), id, v),
            message_id: body["id"].as_str().unwrap().to_owned(),
            commit_lsn: lsn,
        });
        pending += 1;
        if pending >= ACK_EVERY {
            ack(deliver.delivery_tag()).await.map_err(err)?;
            pending = 0;
            unacked = None;
        } else {
            unacked = Some(deliver.delivery_tag());
        }
    }
    if let Some(last) = unacked {
        ack(last).await.map_err(err)?;
    }
    Ok(())
}

pub fn parse_lsn(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// Samples the slot's confirmed_flush_lsn; records the highest value and any step backwards.
pub struct Monitor {
    pub max: Arc<AtomicU64>,
    pub backwards: Arc<Mutex<Vec<(u64, u64)>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    pub fn start(url: String, slot: String) -> Monitor {
        let max = Arc::new(AtomicU64::new(0));
        let backwards = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, b, s) = (Arc::clone(&max), Arc::clone(&backwards), Arc::clone(&stop));
        let task = tokio::spawn(async move {
            let mut client: Option<tokio_postgres::Client> = None;
            let mut last = 0u64;
            while !s.load(Ordering::Relaxed) {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                        .await
                        .ok()
                        .map(|(c, conn)| {
                            tokio::spawn(conn);
                            c
                        });
                }
                if let Some(c) = &client
                    && let Ok(rows) = c
                        .query(
                            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                            &[&slot],
                        )
                        .await
                    && let Some(Some(v)) = rows.first().map(|r| r.get::<_, Option<String>>(0))
                {
                    let lsn = parse_lsn(&v);
                    if lsn < last {
                        b.lock().unwrap().push((last, lsn));
                    }
                    last = lsn;
                    m.fetch_max(lsn, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
        Monitor {
            max,
            backwards,
            stop,
            task,
        }
    }

    pub async fn stop(self) -> (u64, Vec<(u64, u64)>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let b = self.backwards.lock().unwrap().clone();
        (self.max.load(Ordering::Relaxed), b)
    }
}

/// The verdict.
#[derive(Debug, Default)]
pub struct Verdict {
    pub committed: usize,
    pub delivered: usize,
    pub lost: Vec<Change>,
    pub unexpected: Vec<Change>,
    pub recovered: usize,
    pub duplicated: usize,
    pub id_mismatch: Vec<Change>,
    pub order_violations: Vec<String>,
    /// Lost changes of transactions the slot had already passed (the worst kind).
    pub passed_unconfirmed: usize,
    pub backwards: Vec<(u64, u64)>,
}

impl Verdict {
    pub fn assert_safe(&self) {
        self.assert_safe_allowing_backwards();
        assert!(
            self.backwards.is_empty(),
            "the slot went backwards: {:?}",
            self.backwards
        );
    }

    /// For a PostgreSQL crash: the server persists a slot's confirmed position only at
    /// checkpoints, so after a crash it restarts from an older one (replay, never loss).
    pub fn assert_safe_allowing_backwards(&self) {
        assert!(
            self.lost.is_empty()
                && self.unexpected.is_empty()
                && self.id_mismatch.is_empty()
                && self.order_violations.is_empty(),
            "checker found violations: {self:#?}"
        );
    }
}

/// Compares what was committed with what was delivered.
pub fn check(
    history: &History,
    deliveries: &[Delivery],
    slot_max: u64,
    backwards: Vec<(u64, u64)>,
) -> Verdict {
    let mut v = Verdict {
        backwards,
        delivered: deliveries.len(),
        ..Default::default()
    };
    let mut ids: HashMap<&Change, &str> = HashMap::new();
    let mut seen: HashSet<&Change> = HashSet::new();
    let mut last_lsn: HashMap<&str, u64> = HashMap::new();
    for d in deliveries {
        match ids.get(&d.change) {
            Some(id) => {
                v.duplicated += 1;
                if *id != d.message_id {
                    v.id_mismatch.push(d.change.clone());
                }
            }
            None => {
                ids.insert(&d.change, &d.message_id);
                // First deliveries of a table come in commit order.
                let prev = last_lsn.entry(d.change.0.as_str()).or_default();
                if d.commit_lsn < *prev {
                    v.order_violations.push(format!(
                        "{:?} at commit {:X} after commit {:X}",
                        d.change, d.commit_lsn, prev
                    ));
                }
                *prev = (*prev).max(d.commit_lsn);
            }
        }
        seen.insert(&d.change);
    }
    let mut allowed: HashSet<&Change> = HashSet::new();
    for (changes, outcome, bound) in &history.txs {
        match outcome {
            Outcome::Ok => {
                v.committed += changes.len();
                let missing: Vec<&Change> = changes.iter().filter(|c| !seen.contains(c)).collect();
                if !missing.is_empty() && slot_max >= *bound {
                    v.passed_unconfirmed += missing.len();
                }
                v.lost.extend(missing.into_iter().cloned());
                allowed.extend(changes.iter());
            }
            Outcome::Unknown => {
                v.recovered += changes.iter().filter(|c| seen.contains(c)).count();
                allowed.extend(changes.iter());
            }
            Outcome::Failed => {}
        }
    }
    v.unexpected = seen
        .iter()
        .filter(|c| !allowed.contains(*c))
        .map(|c| (*c).clone())
        .collect();
    v
}

/// The pieces of one chaos run.
pub struct Run {
    pub stop: Arc<AtomicBool>,
    pub history: Arc<Mutex<History>>,
    pub deliveries: Arc<Mutex<Vec<Delivery>>>,
    writers: tokio::task::JoinHandle<()>,
    consumer_stop: Arc<AtomicBool>,
    consumer: tokio::task::JoinHandle<()>,
}

impl Run {
    /// Starts the workload and the consumer.
    pub fn start(url: &str, other_url: &str, queue: &TestQueue, writers: usize) -> Run {
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(History::default()));
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let consumer_stop = Arc::new(AtomicBool::new(false));
        let w = tokio::spawn(workload(
            url.to_owned(),
            other_url.to_owned(),
            writers,
            Arc::clone(&stop),
            Arc::clone(&history),
        ));
        let c = tokio::spawn(consume(
            queue.url.clone(),
            queue.queue.clone(),
            Arc::clone(&deliveries),
            Arc::clone(&consumer_stop),
        ));
        Run {
            stop,
            history,
            deliveries,
            writers: w,
            consumer_stop,
            consumer: c,
        }
    }

    /// Stops writing; returns once the consumer has everything committed (or `timeout`).
    pub async fn finish(self, timeout: Duration) -> (History, Vec<Delivery>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.writers.await;
        let expected: HashSet<Change> = self
            .history
            .lock()
            .unwrap()
            .txs
            .iter()
            .filter(|t| t.1 == Outcome::Ok)
            .flat_map(|t| t.0.iter().cloned())
            .collect();
        let start = std::time::Instant::now();
        loop {
            let got: HashSet<Change> = self
                .deliveries
                .lock()
                .unwrap()
                .iter()
                .map(|d| d.change.clone())
                .collect();
            if expected.is_subset(&got) || start.elapsed() > timeout {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A little longer, to catch stragglers (duplicates, unexpected).
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.consumer_stop.store(true, Ordering::Relaxed);
        let _ = self.consumer.await;
        let h = std::mem::take(&mut *self.history.lock().unwrap());
        let d = std::mem::take(&mut *self.deliveries.lock().unwrap());
        (h, d)
    }

    pub fn committed_so_far(&self) -> usize {
        self.history.lock().unwrap().txs.len()
    }
}
