//! Tests of rule resolution per relation, admission and predicates (the flood guard's are in flood_tests.rs).

use std::sync::Arc;

use super::*;
use crate::pgoutput::{Column, ReplicaIdentity, TupleData};
use crate::schema::RelationFacts;

pub(crate) fn rel(name: &str, identity: ReplicaIdentity) -> Arc<Relation> {
    let col = |n: &str, key| Column {
        name: n.into(),
        is_key: key || identity == ReplicaIdentity::Full,
        type_oid: 25,
        type_modifier: -1,
    };
    Arc::new(Relation {
        oid: name.len() as u32,
        schema: "public".into(),
        name: name.into(),
        replica_identity: identity,
        columns: vec![col("id", true), col("status", false), col("secret", false)],
    })
}

pub(crate) fn settings(toml_rules: &str, flood: &str) -> FilterSettings {
    let text = format!(
        "[postgres]\nurl = \"postgres://u@h/db\"\n[rabbitmq]\nurl = \"amqp://h\"\n[flood]\n{flood}\n{toml_rules}"
    );
    crate::config::from_str_with_env(&text, &[])
        .unwrap_or_else(|e| panic!("{e}"))
        .filter
}

/// The catalog's facts: the primary key is `id`.
pub(crate) fn pk() -> RelationFacts {
    RelationFacts {
        keys: vec![crate::schema::KeyCandidate {
            source: crate::schema::KeySource::PrimaryKey,
            columns: vec!["id".into()],
        }],
        ..Default::default()
    }
}

pub(crate) fn routing() -> RoutingTemplate {
    RoutingTemplate::parse("{schema}.{table}.{op}").unwrap()
}

#[test]
fn include_exclude_and_first_matching_rule() {
    let s = settings(
        "[filter]\ninclude = [\"public.*\"]\nexclude = [\"audit_*\"]\n\
         [[filter.table]]\nname = \"public.orders\"\nops = [\"insert\"]\n\
         [[filter.table]]\nname = \"public.*\"\nops = [\"delete\"]\n",
        "",
    );
    assert!(s.included("public", "orders"));
    assert!(!s.included("public", "audit_log"));
    assert!(!s.included("other", "orders"));
    let v = s
        .view(
            &rel("orders", ReplicaIdentity::Default),
            Some(&pk()),
            &routing(),
        )
        .unwrap();
    assert_eq!(v.admit(Op::Insert, None), Admit::Publish);
    assert_eq!(v.admit(Op::Delete, None), Admit::Drop(Dropped::Op));
    let v = s
        .view(
            &rel("users", ReplicaIdentity::Default),
            Some(&pk()),
            &routing(),
        )
        .unwrap();
    assert_eq!(v.admit(Op::Delete, None), Admit::Publish);
    let v = s
        .view(
            &rel("audit_log", ReplicaIdentity::Default),
            Some(&pk()),
            &routing(),
        )
        .unwrap();
    assert_eq!(v.admit(Op::Insert, None), Admit::Drop(Dropped::Excluded));
    // Not excluded, not included: unmatched (warned about and counted, never quietly).
    let v = s
        .view(&rel_in("other", "orders"), Some(&pk()), &routing())
        .unwrap();
    assert_eq!(v.admit(Op::Insert, None), Admit::Unmatched);
}

fn rel_in(schema: &str, name: &str) -> Arc<Relation> {
    let mut r = (*rel(name, ReplicaIdentity::Default)).clone();
    r.schema = schema.into();
    Arc::new(r)
}

#[test]
fn a_partition_is_filtered_by_its_root_or_its_own_name() {
    let root = |schema: &str, name: &str| RelationFacts {
        root: Some(crate::schema::QualifiedName {
            schema: schema.into(),
            name: name.into(),
        }),
        ..pk()
    };
    let s = settings(
        "[filter]\ninclude = [\"public.m\"]\n[[filter.table]]\nname = \"public.m\"\nops = [\"insert\"]\n",
        "",
    );
    let v = s
        .view(
            &rel("m_eu", ReplicaIdentity::Default),
            Some(&root("public", "m")),
            &routing(),
        )
        .unwrap();
    assert_eq!(v.admit(Op::Insert, None), Admit::Publish);
    assert_eq!(
        v.admit(Op::Delete, None),
        Admit::Drop(Dropped::Op),
        "the root's rule applies"
    );
    assert_eq!(
        (v.table.schema.as_str(), v.table.name.as_str()),
        ("public", "m")
    );
    assert_eq!(&*v.metric_table, "public.m");
    assert_eq!(v.route(Op::Insert, None), "public.m.insert");
    // Excluding the partition by its own name drops it even though the root is included.
    let s = settings(
        "[filter]\ninclude = [\"public.m\"]\nexclude = [\"m_us\"]\n",
        "",
    );
    let v = s
        .view(
            &rel("m_us", ReplicaIdentity::Default),
            Some(&root("public", "m")),
            &routing(),
        )
        .unwrap();
    assert_eq!(v.admit(Op::Insert, None), Admit::Drop(Dropped::Excluded));
    // Included by the partition's own name only: published, under the root's name.
    let s = settings("[filter]\ninclude = [\"public.m_eu\"]\n", "");
    let v = s
        .view(
            &rel("m_eu", ReplicaIdentity::Default),
            Some(&root("public", "m")),
            &routing(),
        )
        .unwrap();
    assert_eq!(v.admit(Op::Insert, None), Admit::Publish);
    assert_eq!(v.table.name, "m");
}

#[test]
fn rules_that_cannot_apply_are_errors_naming_the_column() {
    let s = settings(
        "[[filter.table]]\nname = \"orders\"\nignore = [\"id\"]\n",
        "",
    );
    let e = s
        .view(
            &rel("orders", ReplicaIdentity::Default),
            Some(&pk()),
            &routing(),
        )
        .unwrap_err();
    assert!(
        e.message.contains("\"id\"") && e.table == "public.orders",
        "{e}"
    );
    // Under FULL the key is still the primary key: it cannot be hidden, other columns can.
    assert!(
        s.view(
            &rel("orders", ReplicaIdentity::Full),
            Some(&pk()),
            &routing()
        )
        .is_err()
    );
    let hide_status = settings(
        "[[filter.table]]\nname = \"orders\"\nignore = [\"status\"]\n",
        "",
    );
    let v = hide_status
        .view(
            &rel("orders", ReplicaIdentity::Full),
            Some(&pk()),
            &routing(),
        )
        .unwrap();
    assert_eq!(v.mask, Some(vec![true, false, true]));
    let s = settings(
        "[[filter.table]]\nname = \"orders\"\nignore = [\"nope\"]\n",
        "",
    );
    assert!(
        s.view(
            &rel("orders", ReplicaIdentity::Default),
            Some(&pk()),
            &routing()
        )
        .is_err()
    );
    let s = settings(
        "[[filter.table]]\nname = \"orders\"\nwhere = \"new.nope == 1\"\n",
        "",
    );
    assert!(
        s.view(
            &rel("orders", ReplicaIdentity::Default),
            Some(&pk()),
            &routing()
        )
        .is_err()
    );
    let s = settings(
        "[[filter.table]]\nname = \"orders\"\nrouting_key = \"{key.status}\"\n",
        "",
    );
    let e = s
        .view(
            &rel("orders", ReplicaIdentity::Default),
            Some(&pk()),
            &routing(),
        )
        .unwrap_err();
    assert!(e.message.contains("status"), "{e}");
    let s = settings(
        "[[filter.table]]\nname = \"orders\"\ncolumns = [\"id\", \"status\"]\n",
        "",
    );
    let v = s
        .view(
            &rel("orders", ReplicaIdentity::Default),
            Some(&pk()),
            &routing(),
        )
        .unwrap();
    assert_eq!(v.mask, Some(vec![true, true, false]));
}

#[test]
fn predicates_and_noop_updates() {
    let s = settings(
        "[[filter.table]]\nname = \"orders\"\nwhere = \"new.status == 'paid'\"\nskip_noop_updates = true\nignore = [\"secret\"]\n",
        "",
    );
    let v = s
        .view(
            &rel("orders", ReplicaIdentity::Full),
            Some(&pk()),
            &routing(),
        )
        .unwrap();
    let t = |vals: [&'static str; 3]| TupleData {
        columns: vals
            .iter()
            .map(|v| crate::pgoutput::Datum::Text(v.as_bytes()))
            .collect(),
    };
    let paid = t(["1", "paid", "a"]);
    let open = t(["1", "open", "a"]);
    let paid_new_secret = t(["1", "paid", "b"]);
    let row = |new, old| predicate::RowView {
        op: "update",
        new,
        old,
    };
    assert_eq!(
        v.admit(Op::Insert, Some(&row(Some(&open), None))),
        Admit::Drop(Dropped::Predicate)
    );
    assert_eq!(
        v.admit(Op::Update, Some(&row(Some(&paid), Some(&open)))),
        Admit::Publish
    );
    // Only the ignored column changed: a no-op for consumers.
    assert_eq!(
        v.admit(Op::Update, Some(&row(Some(&paid_new_secret), Some(&paid)))),
        Admit::Drop(Dropped::Noop)
    );
    // Without an old image a no-op cannot be proven: published.
    assert_eq!(
        v.admit(Op::Update, Some(&row(Some(&paid), None))),
        Admit::Publish
    );
}
