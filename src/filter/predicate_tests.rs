//! Tests of predicate compilation and evaluation on hand-built rows.

use super::*;
use crate::pgoutput::{Column, ReplicaIdentity};

fn rel() -> Relation {
    let col = |name: &str, key| Column {
        name: name.into(),
        is_key: key,
        type_oid: 25,
        type_modifier: -1,
    };
    Relation {
        oid: 1,
        schema: "public".into(),
        name: "orders".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            col("id", true),
            col("status", false),
            col("amount", false),
            col("paid", false),
            col("note", false),
        ],
    }
}

fn row<'a>(vals: [Option<&'a str>; 5]) -> TupleData<'a> {
    TupleData {
        columns: vals
            .iter()
            .map(|v| match v {
                Some("TOAST") => Datum::UnchangedToast,
                Some(s) => Datum::Text(s.as_bytes()),
                None => Datum::Null,
            })
            .collect(),
    }
}

fn eval(src: &str, new: Option<&TupleData<'_>>, old: Option<&TupleData<'_>>) -> bool {
    let p = Predicate::compile(src)
        .unwrap_or_else(|e| panic!("{src}: {e}"))
        .bind(&rel())
        .unwrap();
    p.eval(&RowView {
        op: if old.is_some() { "update" } else { "insert" },
        new,
        old,
    })
}

#[test]
fn compares_text_numbers_booleans_and_null() {
    let r = row([Some("1"), Some("paid"), Some("10.50"), Some("t"), None]);
    let r = Some(&r);
    assert!(eval("new.status == 'paid'", r, None));
    assert!(!eval("new.status == 'open'", r, None));
    assert!(eval("new.status != 'open'", r, None));
    assert!(eval("new.amount > 10", r, None));
    assert!(eval("new.amount >= 10.5 && new.amount < 11", r, None));
    assert!(!eval("new.amount > 100", r, None));
    assert!(eval("new.amount > -1", r, None));
    assert!(eval("new.paid", r, None));
    assert!(eval("new.paid == true", r, None));
    assert!(!eval("!new.paid", r, None));
    assert!(eval("new.note == null", r, None));
    assert!(!eval("new.note != null", r, None));
    assert!(!eval("new.note == 'x'", r, None));
    assert!(!eval("new.note > 1", r, None));
    assert!(eval("new.status in ['paid', 'refunded']", r, None));
    assert!(!eval("new.status in ['open']", r, None));
    assert!(eval(
        "new.status.startsWith('pa') && new.status.endsWith('id')",
        r,
        None
    ));
    assert!(eval("new.status.contains('ai')", r, None));
    assert!(eval("new[\"status\"] == 'paid'", r, None));
    assert!(eval("op == 'insert'", r, None));
    assert!(eval("true", r, None));
    // Numbers compare numerically, not as text: "10.50" == 10.5 and "9" < "10".
    assert!(eval("new.amount == 10.5", r, None));
}

#[test]
fn old_image_and_missing_values() {
    let new = row([
        Some("1"),
        Some("paid"),
        Some("10"),
        Some("t"),
        Some("TOAST"),
    ]);
    let old = row([
        Some("1"),
        Some("open"),
        Some("10"),
        Some("f"),
        Some("TOAST"),
    ]);
    assert!(eval(
        "old.status != new.status && new.status == 'paid'",
        Some(&new),
        Some(&old)
    ));
    assert!(eval("old.amount == new.amount", Some(&new), Some(&old)));
    // Without an old image, old columns are null.
    assert!(eval("old.status == null", Some(&new), None));
    // An unchanged TOAST value is not null, but its content is unknown.
    assert!(eval("new.note != null", Some(&new), None));
    assert!(!eval("new.note == null", Some(&new), None));
    assert!(!eval("new.note == 'x'", Some(&new), None));
    assert!(!eval("new.note.startsWith('x')", Some(&new), None));
}

#[test]
fn rejects_what_it_cannot_evaluate() {
    for bad in [
        "new.status ==",
        "new.amount + 1 > 2",
        "size(new.status) > 2",
        "user.name == 'x'",
        "status == 'x'",
        "new.status in new.other",
        "new.status in [new.other]",
        "'a'",
        "new.status.matches('x')",
        "new.status.startsWith(new.other)",
    ] {
        assert!(Predicate::compile(bad).is_err(), "{bad} should not compile");
    }
    let p = Predicate::compile("new.nope == 1").unwrap();
    let err = p.bind(&rel()).unwrap_err();
    assert!(
        err.contains("nope") && err.contains("public.orders"),
        "{err}"
    );
    assert_eq!(
        Predicate::compile("new.status == 'x' || old.amount > 1")
            .unwrap()
            .columns(),
        vec!["status".to_owned(), "amount".to_owned()]
    );
}

#[test]
fn a_predicate_on_new_only_lets_deletes_pass_and_row_reads_the_deleted_row() {
    let only_new = Predicate::compile("new.active").unwrap();
    assert!(!only_new.applies_to_deletes());
    for src in [
        "old.active",
        "row.active",
        "op == 'delete' || new.active",
        "new.a == old.a",
    ] {
        assert!(
            Predicate::compile(src).unwrap().applies_to_deletes(),
            "{src}"
        );
    }
    let r = rel();
    let p = Predicate::compile("row.status == 'x'")
        .unwrap()
        .bind(&r)
        .unwrap();
    let t = row([Some("1"), Some("x"), None, None, None]);
    let deleted = RowView {
        op: "delete",
        new: None,
        old: Some(&t),
    };
    assert!(p.eval(&deleted), "row is the old row of a delete");
    let inserted = RowView {
        op: "insert",
        new: Some(&t),
        old: None,
    };
    assert!(p.eval(&inserted), "row is the new row of an insert");
}
