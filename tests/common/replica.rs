//! The convergence oracle: a consumer's copy of the streamed tables, kept in the source
//! database (one schema `replica_<schema>` per streamed schema, each table created `LIKE` the
//! original), built by applying every event in the order it was published, as a consumer that
//! keeps state would: `insert` and `read` replace the row at their key, `update` replaces the
//! row at its old key with the new one (columns listed in `unchanged_toast` keep the copy's
//! value), `delete` removes it, `truncate` empties the copy. Replays are harmless (each event
//! sets a row to a state). Then [`Replica::diff`] compares the copy with the table, row for row.
//!
//! `bulk` (a flood summary) and control events change nothing here: after a summarized flood
//! the copy is stale until a backfill follows, which is what the oracle is there to show.

use serde_json::Value;
use tokio_postgres::Client;

/// The consumer's copy; see the module's documentation.
pub struct Replica {
    applied: usize,
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
        Replica { applied: 0 }
    }

    /// Applies one event body.
    pub async fn apply(&mut self, client: &Client, event: &Value) {
        let op = event["op"].as_str().expect("an op");
        if !matches!(op, "insert" | "read" | "update" | "delete" | "truncate") {
            return;
        }
        let copy = copy_of(
            event["schema"].as_str().expect("a schema"),
            event["table"].as_str().expect("a table"),
        );
        let exec = |sql: String, param: String| async move {
            client
                .execute(&sql, &[&param])
                .await
                .unwrap_or_else(|e| panic!("{sql} with {param}: {e}"))
        };
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
        if !key.is_null() {
            exec(
                format!(
                    "DELETE FROM {copy} r USING jsonb_populate_record(NULL::{copy}, $1::text::jsonb) k WHERE {matches}"
                ),
                key.to_string(),
            )
            .await;
        }
        if op != "delete" {
            let mut row = base.unwrap_or_else(|| Value::Object(Default::default()));
            let new = event["new"].as_object().expect("a new row");
            let merged = row.as_object_mut().expect("a row is an object");
            for (c, v) in new {
                merged.insert(c.clone(), v.clone());
            }
            exec(
                format!(
                    "INSERT INTO {copy} SELECT * FROM jsonb_populate_record(NULL::{copy}, $1::text::jsonb)"
                ),
                row.to_string(),
            )
            .await;
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
        loop {
            match queue.get().await {
                Some(m) => self.apply(client, &m.body).await,
                None => {
                    let (missing, extra) = self.diff(client, table).await;
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
