//! Value fidelity: every built-in type, with edge values, compared with what PostgreSQL's own
//! `to_jsonb()` gives for the same row in a session with walrelay's settings.

use crate::common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

/// (column type, typical value, edge value) — the third row of the table is all NULL.
const COLUMNS: &[(&str, &str, &str)] = &[
    ("smallint", "-32768", "32767"),
    ("integer", "42", "-2147483648"),
    ("bigint", "9223372036854775807", "-1"),
    ("numeric", "123.4500", "'NaN'"),
    (
        "numeric(30,10)",
        "-0.0000000001",
        "99999999999999999999.9999999999",
    ),
    ("real", "3.14", "'-Infinity'"),
    ("double precision", "1e100", "1.5e-7"),
    ("double precision", "'-0'", "'NaN'"),
    ("boolean", "true", "false"),
    (
        "text",
        "'plain'",
        "E'quote\" backslash\\\\ newline\\n tab\\t bell\\x07 unicode é ✓'",
    ),
    ("varchar(10)", "'short'", "''"),
    ("char(5)", "'ab'", "'abcde'"),
    ("\"char\"", "'x'", "'y'"),
    ("name", "'a_name'", "'B'"),
    ("bytea", "'\\xdeadbeef'", "''"),
    ("date", "'2024-02-29'", "'0044-03-15 BC'"),
    ("date", "'infinity'", "'-infinity'"),
    ("time", "'13:14:15.123456'", "'24:00:00'"),
    ("timetz", "'13:14:15+05:30'", "'00:00:00-03'"),
    (
        "timestamp",
        "'2024-02-29 13:14:15.5'",
        "'0044-03-15 12:00:00 BC'",
    ),
    ("timestamp", "'infinity'", "'-infinity'"),
    (
        "timestamptz",
        "'2024-02-29 13:14:15.000001+02'",
        "'1900-01-01 00:00:00+00'",
    ),
    ("timestamptz", "'infinity'", "'0044-03-15 12:00:00+00 BC'"),
    (
        "interval",
        "'1 year 2 months 3 days 04:05:06.7'",
        "'-1 day'",
    ),
    (
        "uuid",
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
        "'00000000-0000-0000-0000-000000000000'",
    ),
    (
        "json",
        "'{\"b\": 1, \"a\": [true, null, 1.50]}'",
        "'\"just a string\"'",
    ),
    ("jsonb", "'{\"b\": 1, \"a\": [true, null, 1.50]}'", "'[]'"),
    ("inet", "'192.168.0.1/24'", "'::1'"),
    ("cidr", "'10.0.0.0/8'", "'2001:db8::/32'"),
    ("macaddr", "'08:00:2b:01:02:03'", "'ff:ff:ff:ff:ff:ff'"),
    (
        "macaddr8",
        "'08:00:2b:01:02:03:04:05'",
        "'00:00:00:00:00:00:00:00'",
    ),
    ("money", "'1234.56'", "'-0.01'"),
    ("bit(4)", "B'1010'", "B'0000'"),
    ("varbit", "B'1'", "B''"),
    ("point", "'(1,2)'", "'(-1.5,1e10)'"),
    ("line", "'{1,2,3}'", "'{0,1,0}'"),
    ("lseg", "'[(0,0),(1,1)]'", "'[(1,2),(3,4)]'"),
    ("box", "'(1,1),(0,0)'", "'(3,4),(1,2)'"),
    ("path", "'[(0,0),(1,1)]'", "'((0,0),(1,1),(2,0))'"),
    ("polygon", "'((0,0),(1,1),(1,0))'", "'((0,0))'"),
    ("circle", "'<(1,2),3>'", "'<(0,0),0.5>'"),
    ("tsvector", "'a fat cat'", "''"),
    ("tsquery", "'fat & rat'", "'!a'"),
    ("xml", "'<a>1</a>'", "'<b x=\"y\"/>'"),
    ("int4range", "'[1,10)'", "'empty'"),
    ("numrange", "'(1.5,2.5]'", "'(,)'"),
    (
        "tstzrange",
        "'[2024-01-01 00:00+00,2024-02-01 00:00+00)'",
        "'empty'",
    ),
    (
        "daterange",
        "'[2024-01-01,2024-02-01)'",
        "'[2024-01-01,infinity)'",
    ),
    ("int4multirange", "'{[1,3), [5,7)}'", "'{}'"),
    ("pg_lsn", "'16/B374D848'", "'0/0'"),
    ("oid", "12345", "4294967295"),
    ("integer[]", "'{1,2,NULL,4}'", "'{}'"),
    ("integer[]", "'{{1,2},{3,4}}'", "'[2:3]={7,8}'"),
    (
        "text[]",
        "'{\"a b\",\"q\\\"x\",NULL,\"NULL\",plain,\"\"}'",
        "ARRAY['back\\slash', 'comma,', '{brace}']",
    ),
    ("numeric[]", "'{1.50,NaN,-0}'", "'{}'"),
    ("double precision[]", "'{1e100,Infinity,-0}'", "'{1.5e-7}'"),
    ("boolean[]", "'{t,f,NULL}'", "'{}'"),
    (
        "jsonb[]",
        "ARRAY['{\"k\": [1, 2]}'::jsonb, 'null'::jsonb]",
        "'{}'",
    ),
    ("json[]", "ARRAY['{\"k\":  1}'::json]", "'{}'"),
    (
        "timestamptz[]",
        "ARRAY['2024-02-29 13:14:15+02'::timestamptz, 'infinity']",
        "'{}'",
    ),
    ("date[]", "'{2024-01-01,NULL}'", "'{}'"),
    (
        "box[]",
        "ARRAY['(1,1),(0,0)'::box, '(3,3),(2,2)'::box]",
        "'{}'",
    ),
    ("uuid[]", "'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'", "'{}'"),
    ("positive_int", "5", "2147483647"),
    ("positive_int[]", "'{1,2}'", "'{}'"),
    ("mood", "'happy'", "'sad'"),
    ("mood[]", "'{happy,sad}'", "'{}'"),
];

/// The settings walrelay sets on its replication connection (see `source::SESSION_SETTINGS`).
const ORACLE_SETTINGS: &str = "SET DateStyle = 'ISO, MDY'; SET TimeZone = 'UTC'; SET IntervalStyle = 'iso_8601'; \
     SET extra_float_digits = 3; SET bytea_output = 'hex';";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_builtin_type_renders_like_to_jsonb() {
    assert_eq!(
        walrelay::source::SESSION_SETTINGS
            .iter()
            .filter(|(k, _)| ORACLE_SETTINGS.contains(&format!("SET {k} =")))
            .count(),
        5,
        "the oracle must use the same settings as walrelay"
    );
    let pg = PgCluster::start();
    let db = unique("types");
    let client = pg.create_db(&db).await;
    let cols: Vec<String> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (ty, _, _))| format!("c{i} {ty}"))
        .collect();
    client
        .batch_execute(&format!(
            "CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
             CREATE TYPE mood AS ENUM ('happy', 'sad');
             CREATE TABLE everything (id int PRIMARY KEY, {});",
            cols.join(", ")
        ))
        .await
        .unwrap();
    let exchange = unique("ex");
    let queue = TestQueue::new(&exchange, Some("#")).await;
    let slot = unique("slot");
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        cfg_dir.path(),
        &pg.url(&db),
        amqp_url(),
        &slot,
        &exchange,
        &["public.everything"],
        "",
    );
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;

    let typical: Vec<&str> = COLUMNS.iter().map(|c| c.1).collect();
    let edge: Vec<&str> = COLUMNS.iter().map(|c| c.2).collect();
    let nulls: Vec<&str> = COLUMNS.iter().map(|_| "NULL").collect();
    for (id, values) in [(1, typical), (2, edge), (3, nulls)] {
        client
            .batch_execute(&format!(
                "INSERT INTO everything VALUES ({id}, {})",
                values.join(", ")
            ))
            .await
            .unwrap_or_else(|e| panic!("inserting row {id}: {e}"));
    }
    let got = queue.take(3, T).await;

    client.batch_execute(ORACLE_SETTINGS).await.unwrap();
    let mut mismatches = Vec::new();
    for (m, id) in got.iter().zip(1..) {
        let row = client
            .query_one(
                "SELECT to_jsonb(e)::text FROM everything e WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        let oracle: serde_json::Value = serde_json::from_str(&row.get::<_, String>(0)).unwrap();
        for (i, (ty, _, _)) in COLUMNS.iter().enumerate() {
            let col = format!("c{i}");
            if m.body["new"][&col] != oracle[&col] {
                mismatches.push(format!(
                    "row {id} {ty}: walrelay {} vs to_jsonb {}",
                    m.body["new"][&col], oracle[&col]
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    queue.delete().await;
}
