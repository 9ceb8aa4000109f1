//! Event body tests: every op, every replica identity shape, TOAST markers.

use super::*;
use crate::pgoutput::Column;
use serde_json::{Value, json};

fn rel(identity: ReplicaIdentity, key_flags: [bool; 3]) -> Arc<Relation> {
    let col = |name: &str, oid, is_key| Column {
        name: name.into(),
        is_key,
        type_oid: oid,
        type_modifier: -1,
    };
    Arc::new(Relation {
        oid: 1,
        schema: "public".into(),
        name: "users".into(),
        replica_identity: identity,
        columns: vec![
            col("id", 23, key_flags[0]),
            col("name", 25, key_flags[1]),
            col("bio", 25, key_flags[2]),
        ],
    })
}

const TX: TxContext = TxContext {
    commit_lsn: Lsn(0x1_0000_0010),
    xid: Some(42),
    commit_time_us: Some(1_500_000),
};

/// The identity of `rel` when the catalog says its primary key is `pk` (none: no key).
fn ident(rel: &Relation, pk: &[&str]) -> TableIdentity {
    let facts = crate::schema::RelationFacts {
        keys: if pk.is_empty() {
            Vec::new()
        } else {
            vec![crate::schema::KeyCandidate {
                source: crate::schema::KeySource::PrimaryKey,
                columns: pk.iter().map(|c| (*c).to_owned()).collect(),
            }]
        },
        ..Default::default()
    };
    TableIdentity::resolve(rel, Some(&facts))
}

fn body(rel: &Arc<Relation>, change: RowChange<'_>) -> Value {
    body_keyed(rel, &["id"], change)
}

fn body_keyed(rel: &Arc<Relation>, pk: &[&str], change: RowChange<'_>) -> Value {
    let table = ident(rel, pk);
    let out = row_event_body(
        &TX,
        &event_id(TX.commit_lsn, 3),
        rel,
        &table,
        &change,
        None,
        &TypeRegistry::builtin(),
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(v["id"], "1/10:3");
    // The recorded key span is exactly the `key` object.
    match out.key {
        Some(span) => {
            let k: Value = serde_json::from_slice(&out.body[span]).unwrap();
            assert_eq!(k, v["key"]);
        }
        None => assert!(v["key"].is_null()),
    }
    v
}

fn tuple<'a>(d: Vec<Datum<'a>>) -> TupleData<'a> {
    TupleData { columns: d }
}

#[test]
fn insert_has_key_and_new() {
    let r = rel(ReplicaIdentity::Default, [true, false, false]);
    let new = tuple(vec![Datum::Text(b"7"), Datum::Text(b"ann"), Datum::Null]);
    let v = body(&r, RowChange::Insert { new: &new });
    assert_eq!(
        v,
        json!({"id": "1/10:3", "op": "insert", "schema": "public", "table": "users",
               "partition": null, "commit_lsn": "1/10", "xid": 42, "commit_time": "2000-01-01T00:00:01.5+00:00",
               "key": {"id": 7}, "old": null, "new": {"id": 7, "name": "ann", "bio": null},
               "unchanged_toast": []})
    );
}

#[test]
fn update_with_unchanged_key_and_toast() {
    let r = rel(ReplicaIdentity::Default, [true, false, false]);
    let new = tuple(vec![
        Datum::Text(b"7"),
        Datum::Text(b"bob"),
        Datum::UnchangedToast,
    ]);
    let v = body(
        &r,
        RowChange::Update {
            old: None,
            new: &new,
        },
    );
    assert_eq!(v["key"], json!({"id": 7}));
    assert_eq!(v["old"], json!({"id": 7}));
    assert_eq!(
        v["new"],
        json!({"id": 7, "name": "bob"}),
        "unchanged TOAST is left out, not null"
    );
    assert_eq!(v["unchanged_toast"], json!(["bio"]));
}

#[test]
fn update_that_changes_the_key_reports_the_old_key() {
    let r = rel(ReplicaIdentity::Default, [true, false, false]);
    let old = OldTuple::Key(tuple(vec![Datum::Text(b"7"), Datum::Null, Datum::Null]));
    let new = tuple(vec![Datum::Text(b"8"), Datum::Text(b"bob"), Datum::Null]);
    let v = body(
        &r,
        RowChange::Update {
            old: Some(&old),
            new: &new,
        },
    );
    assert_eq!(v["key"], json!({"id": 7}));
    assert_eq!(v["old"], json!({"id": 7}));
    assert_eq!(v["new"]["id"], json!(8));
}

#[test]
fn full_identity_delete_has_the_whole_old_row() {
    let r = rel(ReplicaIdentity::Full, [true, true, true]);
    let old = OldTuple::Full(tuple(vec![
        Datum::Text(b"7"),
        Datum::Text(b"ann"),
        Datum::Text(b"hi"),
    ]));
    let v = body(&r, RowChange::Delete { old: &old });
    assert_eq!(v["old"], json!({"id": 7, "name": "ann", "bio": "hi"}));
    assert_eq!(v["new"], Value::Null);
    assert_eq!(v["op"], "delete");
    assert_eq!(
        v["key"],
        json!({"id": 7}),
        "the key is the primary key, not every column"
    );
}

#[test]
fn full_identity_update_keys_by_the_old_primary_key() {
    let r = rel(ReplicaIdentity::Full, [true, true, true]);
    let old = OldTuple::Full(tuple(vec![
        Datum::Text(b"7"),
        Datum::Text(b"ann"),
        Datum::Text(b"hi"),
    ]));
    let new = tuple(vec![Datum::Text(b"8"), Datum::Text(b"ann"), Datum::Null]);
    let v = body(
        &r,
        RowChange::Update {
            old: Some(&old),
            new: &new,
        },
    );
    assert_eq!(v["key"], json!({"id": 7}));
    assert_eq!(v["new"]["id"], json!(8));
    // Without any key in the catalog, FULL gives no key at all (not every column).
    let v = body_keyed(&r, &[], RowChange::Delete { old: &old });
    assert_eq!(v["key"], Value::Null);
    assert_eq!(v["old"]["name"], "ann");
}

#[test]
fn a_partition_names_its_root_and_itself() {
    let r = rel(ReplicaIdentity::Default, [true, false, false]);
    let facts = crate::schema::RelationFacts {
        root: Some(crate::schema::QualifiedName {
            schema: "sales".into(),
            name: "people".into(),
        }),
        ..Default::default()
    };
    let table = TableIdentity::resolve(&r, Some(&facts));
    let (_, b) = truncate_event_body(&TX, 0, &table, false, false);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["schema"], "sales");
    assert_eq!(v["table"], "people");
    assert_eq!(
        v["partition"],
        json!({"schema": "public", "table": "users"})
    );
}

#[test]
fn nothing_identity_has_no_key_and_no_old() {
    let r = rel(ReplicaIdentity::Nothing, [false, false, false]);
    let new = tuple(vec![Datum::Text(b"7"), Datum::Text(b"x"), Datum::Null]);
    let v = body_keyed(
        &r,
        &[],
        RowChange::Update {
            old: None,
            new: &new,
        },
    );
    assert_eq!(v["key"], Value::Null);
    assert_eq!(v["old"], Value::Null);
}

#[test]
fn column_count_mismatch_and_bad_values_are_errors() {
    let r = rel(ReplicaIdentity::Default, [true, false, false]);
    let short = tuple(vec![Datum::Text(b"7")]);
    assert!(matches!(
        row_event_body(
            &TX,
            &event_id(TX.commit_lsn, 0),
            &r,
            &ident(&r, &["id"]),
            &RowChange::Insert { new: &short },
            None,
            &TypeRegistry::builtin()
        ),
        Err(EventError::ColumnCount { .. })
    ));
    let bad = tuple(vec![Datum::Text(b"7"), Datum::Text(b"\xff"), Datum::Null]);
    let err = row_event_body(
        &TX,
        &event_id(TX.commit_lsn, 0),
        &r,
        &ident(&r, &["id"]),
        &RowChange::Insert { new: &bad },
        None,
        &TypeRegistry::builtin(),
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("public.users column name"),
        "{err}"
    );
}

#[test]
fn truncate_and_message_bodies() {
    let r = rel(ReplicaIdentity::Default, [true, false, false]);
    let (_, b) = truncate_event_body(&TX, 0, &ident(&r, &["id"]), true, false);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["op"], "truncate");
    assert_eq!(
        v["truncate"],
        json!({"cascade": true, "restart_identity": false})
    );
    let (_, b) = message_event_body(&TX, 1, "app", b"\xff\x00", true);
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["content"], "\\xff00");
    assert_eq!(v["schema"], Value::Null);
    assert_eq!(v["prefix"], "app");
}

#[test]
fn masked_columns_vanish_from_every_image() {
    let r = rel(ReplicaIdentity::Full, [true, false, false]);
    let new = tuple(vec![
        Datum::Text(b"7"),
        Datum::Text(b"ann"),
        Datum::UnchangedToast,
    ]);
    let old = tuple(vec![
        Datum::Text(b"7"),
        Datum::Text(b"bob"),
        Datum::Text(b"x"),
    ]);
    let change = RowChange::Update {
        old: Some(&OldTuple::Full(old)),
        new: &new,
    };
    let mask = [true, false, false];
    let table = ident(&r, &["id"]);
    let out = row_event_body(
        &TX,
        &event_id(TX.commit_lsn, 0),
        &r,
        &table,
        &change,
        Some(&mask[..]),
        &TypeRegistry::builtin(),
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&out.body).unwrap();
    for image in ["old", "new"] {
        let cols: Vec<&String> = v[image].as_object().unwrap().keys().collect();
        assert_eq!(cols, ["id"], "{image}: {v}");
    }
    assert_eq!(v["unchanged_toast"], serde_json::json!([]));
}

#[test]
fn bulk_body() {
    let r = rel(ReplicaIdentity::Default, [true, false, false]);
    let s = BulkSummary {
        reason: "marker",
        inserts: 2,
        updates: 3,
        first_key: Some("{\"id\":1}".into()),
        ..Default::default()
    };
    let (id, b) = bulk_event_body(&TX, 5, &ident(&r, &["id"]), &s);
    assert_eq!(id, "1/10:5");
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["op"], "bulk");
    assert_eq!(v["bulk"]["reason"], "marker");
    assert_eq!(v["bulk"]["counts"]["update"], 3);
    assert_eq!(v["bulk"]["total"], 5);
    assert_eq!(v["bulk"]["first_key"]["id"], 1);
    assert!(v["bulk"]["last_key"].is_null());
}

#[test]
fn event_ids_are_the_lsn_and_the_decimal_index() {
    for (lsn, index) in [
        (0, 0),
        (0x16_B374_D848, 7),
        (u64::MAX, u64::MAX),
        (1 << 32, 10),
        (0xF, 1_000_000),
    ] {
        assert_eq!(
            event_id(Lsn(lsn), index),
            format!("{}:{index}", Lsn(lsn)),
            "{lsn:#x} {index}"
        );
    }
}
