//! The convergence oracle: a consumer's copy of the streamed tables, kept in the source
//! database (one schema `replica_<schema>` per streamed schema, each table created `LIKE` the
//! original), built by applying every event in the order it was published, as a consumer that
//! keeps state would: `insert` and `read` replace the row at their key, `update` replaces the
//! row at its old key with the new one (columns listed in `unchanged_toast` keep the copy's
//! value), `delete` removes it, `truncate` empties the copy. Replays are harmless (each event
//! sets a row to a state). Then [`Replica::diff`] compares the copy with the table, row for row.
//!
//! `bulk` (a flood summary) changes nothing here: after a summarized flood the copy is stale
//! until a backfill follows, which is what the oracle is there to show.
//!
//! A `stream_gap` control event (a resync: changes were lost from the stream), and a `bulk`
//! event that announces a backfill (`flood.then = "backfill"`), start a sweep of their tables
//! (of the bulk's key range), as docs/events.md tells consumers: every key an event sets from
//! then on is kept, and at the table's next `backfill_finished` the copy's rows (in the range)
//! no event set since are deleted: rows deleted where no event will ever name them.

use serde_json::Value;
use tokio_postgres::Client;

/// The consumer's copy; see the module's documentation.
pub struct Replica {
    applied: usize,
    /// Tables under a sweep (`schema.table`), with the keys events set since their gap.
    sweeps: std::collections::HashMap<String, Sweep>,
}

/// A sweep under way: the keys set since it began, and the key range it covers (all rows
/// when `None`).
#[derive(Default)]
struct Sweep {
    seen: Vec<serde_json::Map<String, Value>>,
    range: Option<(String, i64, i64)>,
}

/// `"name"`, quoted for SQL.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The copy of `schema.table`.
fn copy_of(schema: &str, table: &str) -> String {
    format!("{}.{}", ident(&format!("replica_{schema}")), ident(table))
}

impl Replica {
    /// Creates an empty copy of each of `tables` (`schema.table`, unquoted).
    pub async fn new(client: &Client, tables: &[&str]) -> Replica {
        for t in tables {
            let (schema, table) = t.split_once('.').expect("schema.table");
            let (space, copy) = (ident(&format!("replica_{schema}")), copy_of(schema, table));
            let original = format!("{}.{}", ident(schema), ident(table));
            client
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {space}; CREATE TABLE {copy} (LIKE {original} INCLUDING ALL);"
                ))
                .await
                .unwrap_or_else(|e| panic!("replica of {t}: {e}"));
        }
        Replica {
            applied: 0,
            sweeps: Default::default(),
        }
    }

    /// Applies one event body.
    pub async fn apply(&mut self, client: &Client, event: &Value) {
        let op = event["op"].as_str().expect("an op");
        if op == "control" {
            return self.control(client, event).await;
        }
        if op == "bulk" && event["bulk"]["backfill"].is_object() {
            let b = &event["bulk"]["backfill"];
            let range = match (b["key"].as_str(), b["from"].as_i64(), b["to"].as_i64()) {
                (Some(k), Some(from), Some(to)) => Some((k.to_owned(), from, to)),
                _ => None,
            };
            let table = format!(
                "{}.{}",
                event["schema"].as_str().unwrap_or_default(),
                event["table"].as_str().unwrap_or_default()
            );
            self.sweeps.insert(
                table,
                Sweep {
                    seen: Vec::new(),
                    range,
                },
            );
            return;
        }
        if !matches!(op, "insert" | "read" | "update" | "delete" | "truncate") {
            return;
        }
        let table = format!(
            "{}.{}",
            event["schema"].as_str().unwrap_or_default(),
            event["table"].as_str().unwrap_or_default()
        );
        if let (Some(Sweep { seen, .. }), Value::Object(key), Some(new)) = (
            self.sweeps.get_mut(&table),
            &event["key"],
            event["new"].as_object(),
        ) {
            // The key the row has after the event (an update may change it).
            seen.push(
                key.keys()
                    .map(|c| (c.clone(), new.get(c).cloned().unwrap_or(Value::Null)))
                    .collect(),
            );
        }
        let copy = copy_of(
            event["schema"].as_str().expect("a schema"),
            event["table"].as_str().expect("a table"),
        );
        if op == "truncate" {
            client
                .batch_execute(&format!("TRUNCATE {copy}"))
                .await
                .unwrap();
            self.applied += 1;
            return;
        }
        // The row the event names: by its key (the old one for update and delete), through
        // the key's index; a table without a key matches the whole old row.
        let key = match (&event["key"], op) {
            (Value::Object(k), _) => Value::Object(k.clone()),
            (_, "insert" | "read") => Value::Null,
            _ => event["old"].clone(),
        };
        let matches = match &key {
            Value::Object(k) => k
                .keys()
                .map(|c| format!("r.{c} = k.{c}", c = ident(c)))
                .collect::<Vec<_>>()
                .join(" AND "),
            _ => "to_jsonb(r) = $1::text::jsonb".to_owned(),
        };
        let from = format!("{copy} r, jsonb_populate_record(NULL::{copy}, $1::text::jsonb) k");
        // What the copy holds for the row now (for columns an update left out of `new`).
        let base = if op == "update" && !key.is_null() {
            client
                .query_opt(
                    &format!("SELECT to_jsonb(r)::text FROM {from} WHERE {matches}"),
                    &[&key.to_string()],
                )
                .await
                .unwrap()
                .map(|row| serde_json::from_str::<Value>(row.get::<_, &str>(0)).unwrap())
        } else {
            None
        };
        // The delete and the insert in one round trip (literals, not parameters): a copy is
        // rebuilt from tens of thousands of events in some tests.
        let literal = |v: &Value| format!("'{}'", v.to_string().replace('\'', "''"));
        // The copy needs no flush to disk per event (a commit's fsync was most of its cost).
        let mut sql = String::from("BEGIN; SET LOCAL synchronous_commit = off;");
        if !key.is_null() {
            sql.push_str(&format!(
                "DELETE FROM {copy} r USING jsonb_populate_record(NULL::{copy}, {}::jsonb) k WHERE {};",
                literal(&key),
                matches.replace("$1::text::jsonb", &format!("{}::jsonb", literal(&key)))
            ));
        }
        if op != "delete" {
            let mut row = base.unwrap_or_else(|| Value::Object(Default::default()));
            let new = event["new"].as_object().expect("a new row");
            let merged = row.as_object_mut().expect("a row is an object");
            for (c, v) in new {
                merged.insert(c.clone(), v.clone());
            }
            sql.push_str(&format!(
                "INSERT INTO {copy} SELECT * FROM jsonb_populate_record(NULL::{copy}, {}::jsonb);",
                literal(&row)
            ));
        }
        sql.push_str("COMMIT;");
        client
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        self.applied += 1;
    }

    /// `stream_gap` starts a sweep of its tables; a sweeping table's `backfill_finished` ends
    /// it, deleting the copy's rows that no event set since the gap.
    async fn control(&mut self, client: &Client, event: &Value) {
        match event["kind"].as_str() {
            Some("stream_gap") => {
                for t in event["gap"]["tables"].as_array().expect("the gap's tables") {
                    let t = t.as_str().expect("schema.table").to_owned();
                    self.sweeps.insert(t, Sweep::default());
                }
            }
            Some("backfill_finished") => {
                let table = format!(
                    "{}.{}",
                    event["schema"].as_str().unwrap_or_default(),
                    event["table"].as_str().unwrap_or_default()
                );
                let Some(Sweep { seen, range }) = self.sweeps.remove(&table) else {
                    return;
                };
                let (schema, name) = table.split_once('.').expect("schema.table");
                let copy = copy_of(schema, name);
                // The keys seen, as text, for a lookup per row (the key's columns are those of
                // the keys seen: every key of a table has the same).
                let columns: Vec<String> = seen
                    .first()
                    .map(|k| k.keys().cloned().collect())
                    .unwrap_or_default();
                let project = |row: &Value| -> String {
                    let m: serde_json::Map<String, Value> = columns
                        .iter()
                        .map(|c| (c.clone(), row.get(c).cloned().unwrap_or(Value::Null)))
                        .collect();
                    Value::Object(m).to_string()
                };
                let seen_keys: std::collections::HashSet<String> = seen
                    .iter()
                    .map(|k| Value::Object(k.clone()).to_string())
                    .collect();
                let rows = client
                    .query(&format!("SELECT to_jsonb(r)::text FROM {copy} r"), &[])
                    .await
                    .unwrap();
                for row in rows {
                    let text: &str = row.get(0);
                    let value: Value = serde_json::from_str(text).unwrap();
                    let outside = range.as_ref().is_some_and(|(k, from, to)| {
                        value[k.as_str()]
                            .as_i64()
                            .is_none_or(|v| v < *from || v > *to)
                    });
                    let kept = outside || seen_keys.contains(&project(&value));
                    if !kept {
                        client
                            .execute(
                                &format!(
                                    "DELETE FROM {copy} r WHERE to_jsonb(r) = $1::text::jsonb"
                                ),
                                &[&text],
                            )
                            .await
                            .unwrap();
                    }
                }
            }
            _ => {}
        }
        self.applied += 1;
    }

    /// Rows of `schema.table` the copy lacks, and rows of the copy the table lacks (each as
    /// `to_jsonb` text): both empty when the copy has converged.
    pub async fn diff(&self, client: &Client, table: &str) -> (Vec<String>, Vec<String>) {
        let (schema, name) = table.split_once('.').expect("schema.table");
        let original = format!("{}.{}", ident(schema), ident(name));
        let copy = copy_of(schema, name);
        let rows = |a: String, b: String| async move {
            client
                .query(
                    &format!(
                        "SELECT to_jsonb(t)::text FROM {a} t EXCEPT ALL SELECT to_jsonb(t)::text FROM {b} t ORDER BY 1"
                    ),
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        };
        (
            rows(original.clone(), copy.clone()).await,
            rows(copy, original).await,
        )
    }

    /// Applies what `queue` delivers until the copy equals `table` (checked whenever the queue
    /// is empty), or panics with the difference after `timeout`. Returns the events applied.
    pub async fn follow(
        &mut self,
        client: &Client,
        queue: &super::TestQueue,
        table: &str,
        timeout: std::time::Duration,
    ) -> usize {
        let deadline = std::time::Instant::now() + timeout;
        let before = self.applied;
        // A full comparison costs as much as thousands of events on a big table: it runs when
        // the queue is empty, and after an event only once the previous one is a while ago.
        let mut compared: Option<(std::time::Instant, std::time::Duration)> = None;
        loop {
            match queue.get().await {
                Some(m) => self.apply(client, &m.body).await,
                None => {
                    if let Some((at, took)) = compared
                        && at.elapsed() < (took * 4).max(std::time::Duration::from_millis(50))
                        && std::time::Instant::now() < deadline
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                        continue;
                    }
                    let start = std::time::Instant::now();
                    let (missing, extra) = self.diff(client, table).await;
                    compared = Some((std::time::Instant::now(), start.elapsed()));
                    if missing.is_empty() && extra.is_empty() {
                        return self.applied - before;
                    }
                    if std::time::Instant::now() > deadline {
                        self.assert_converged(client, table).await;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Panics with the differing rows unless the copy equals the table.
    pub async fn assert_converged(&self, client: &Client, table: &str) {
        let (missing, extra) = self.diff(client, table).await;
        assert!(
            missing.is_empty() && extra.is_empty(),
            "the consumer's copy of {table} differs after {} events: {} rows missing or stale {:?}, {} rows extra {:?}",
            self.applied,
            missing.len(),
            &missing[..missing.len().min(5)],
            extra.len(),
            &extra[..extra.len().min(5)]
        );
    }
}
