//! The grants block of docs/operations.md ("The role and its grants"), applied as written to a
//! fresh role on a hardened server (CONNECT on the database and USAGE on `public` revoked from
//! PUBLIC): `walrelay doctor` passes and a backfill rebuilds the table with exactly those
//! grants; with any one line left out, doctor names that line, and `walrelay backfill` refuses
//! in the foreground naming the grant it lacks, recording nothing.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(90);

/// The SQL statements of the block, one per line, as the doc gives them.
fn block() -> Vec<String> {
    let doc = std::fs::read_to_string("docs/operations.md").unwrap();
    let start = doc
        .find("<!-- grants:")
        .expect("the grants block is marked");
    let rest = &doc[start..];
    let open = rest.find("```sql\n").expect("a sql block follows the mark") + 7;
    let close = rest[open..].find("```").unwrap() + open;
    rest[open..close]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("--"))
        .map(str::to_owned)
        .collect()
}

/// A fresh database `app` (owned by role `app`, one table of 40 rows), hardened (before
/// PostgreSQL 15 the database's owner does not own `public`: it is given its schema back), with `lines`
/// applied by the superuser; any earlier `walrelay` role and database are dropped first.
async fn prepare(pg: &PgCluster, lines: &[String]) {
    let admin = connect(&pg.url("postgres")).await;
    // One statement per call: DROP and CREATE DATABASE refuse to run in a transaction.
    for sql in [
        "DROP DATABASE IF EXISTS app WITH (FORCE)",
        "DROP ROLE IF EXISTS walrelay",
        "DO $$ BEGIN CREATE ROLE app LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "CREATE DATABASE app OWNER app",
    ] {
        admin
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}: {:?}", e.as_db_error()));
    }
    let app = connect(&pg.url("app")).await;
    app.batch_execute(
        "REVOKE CONNECT ON DATABASE app FROM PUBLIC;
         REVOKE ALL ON SCHEMA public FROM PUBLIC;
         GRANT ALL ON SCHEMA public TO app;
         CREATE TABLE public.orders (id int PRIMARY KEY, status text NOT NULL, total numeric(10,2));
         ALTER TABLE public.orders OWNER TO app;
         INSERT INTO public.orders SELECT i, 'new', i * 1.25 FROM generate_series(1, 40) i;",
    )
    .await
    .unwrap();
    let sql = lines.join("\n");
    app.batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}: {:?}", e.as_db_error()));
}

/// A config for walrelay's role on database `app`.
fn config(pg: &PgCluster, dir: &std::path::Path, slot: &str, exchange: &str) -> std::path::PathBuf {
    let url = pg.url("app").replace("postgres@", "walrelay:change-me@");
    let path = write_config(
        dir,
        &url,
        amqp_url(),
        slot,
        exchange,
        &["public.orders"],
        "",
    );
    config_set(&path, "postgres", "publication", "\"walrelay\"");
    path
}

/// What doctor says with `line` left out of the block.
fn needle(line: &str) -> String {
    if line.starts_with("CREATE ROLE") {
        return "lacks REPLICATION".to_owned();
    }
    line.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_grants_are_exactly_enough_and_doctor_names_each_one() {
    let lines = block();
    assert!(
        lines.len() >= 8 && lines[0].starts_with("CREATE ROLE walrelay LOGIN REPLICATION"),
        "{lines:?}"
    );
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let exchange = unique("ex");
    let queue = TestQueue::new(&exchange, Some("#")).await;
    let slot = unique("slot");
    let cfg = config(&pg, dir.path(), &slot, &exchange);

    // Each line left out (the publication's three lines are the owner's, not walrelay's grants).
    let grants: Vec<&String> = lines
        .iter()
        .filter(|l| !l.starts_with("SET ROLE") && !l.starts_with("RESET ROLE"))
        .filter(|l| !l.starts_with("CREATE PUBLICATION"))
        .collect();
    for left_out in &grants {
        let variant: Vec<String> = lines
            .iter()
            .filter_map(|l| {
                if l == *left_out {
                    // The role itself stays, without the privilege its line gives.
                    l.starts_with("CREATE ROLE")
                        .then(|| l.replace("LOGIN REPLICATION", "LOGIN"))
                } else {
                    Some(l.clone())
                }
            })
            .collect();
        prepare(&pg, &variant).await;
        let out = walrelay(&cfg, &["doctor"]);
        let text = String::from_utf8_lossy(&out.stdout).replace('"', "");
        let want = needle(left_out);
        let flagged = text
            .lines()
            .filter(|l| l.starts_with("FAIL") || l.starts_with("WARN"))
            .any(|l| l.contains(&want));
        assert!(
            flagged,
            "without `{left_out}`, doctor does not say {want:?}:\n{text}"
        );
        if left_out.starts_with("GRANT SELECT") {
            // The backfill refuses in the foreground, naming the grant, and records nothing.
            let out = walrelay(&cfg, &["backfill", "public.orders"]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{err}");
            assert!(
                err.contains("cannot backfill public.orders")
                    && err
                        .replace('"', "")
                        .contains("GRANT SELECT ON public.orders TO walrelay")
                    && err.contains("nothing was recorded"),
                "{err}"
            );
            let app = connect(&pg.url("app")).await;
            let recorded: bool = app
                .query_one("SELECT to_regclass('walrelay.backfill') IS NOT NULL", &[])
                .await
                .unwrap()
                .get(0);
            assert!(!recorded, "a request was recorded");
        }
    }

    // The whole block: doctor passes, no warning asks for a grant, and a backfill rebuilds the
    // table on a consumer.
    prepare(&pg, &lines).await;
    let out = walrelay(&cfg, &["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("WARN") && l.contains("GRANT")),
        "{text}"
    );
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;
    let out = walrelay(&cfg, &["backfill", "public.orders"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app = connect(&pg.url("app")).await;
    app.batch_execute("UPDATE public.orders SET status = 'paid' WHERE id % 7 = 0")
        .await
        .unwrap();
    let mut replica: BTreeMap<i64, serde_json::Value> = BTreeMap::new();
    let want: BTreeMap<i64, serde_json::Value> = app
        .query("SELECT id, to_jsonb(o)::text FROM public.orders o", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let row: String = r.get(1);
            (
                i64::from(r.get::<_, i32>(0)),
                serde_json::from_str(&row).unwrap(),
            )
        })
        .collect();
    let mut finished = false;
    let started = std::time::Instant::now();
    while !(finished && replica == want) {
        assert!(
            started.elapsed() < T,
            "the consumer's copy never equalled the table: {} of {} rows, finished: {finished}",
            replica.len(),
            want.len()
        );
        while let Some(m) = queue.get().await {
            match m.body["op"].as_str().unwrap_or("") {
                "read" | "insert" | "update" => {
                    let id = m.body["new"]["id"].as_i64().unwrap();
                    replica.insert(id, m.body["new"].clone());
                }
                "control" if m.body["kind"] == "backfill_finished" => finished = true,
                _ => {}
            }
        }
    }
    drop(relay);
    let admin = connect(&pg.url("postgres")).await;
    let _ = admin
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await;
    queue.delete().await;
}
