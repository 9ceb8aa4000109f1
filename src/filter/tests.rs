//! Tests of rule resolution per relation, admission, and the flood guard's decisions.

use std::collections::VecDeque;

use super::flood::{Candidate, FloodGuard};
use super::*;
use crate::event::Outbound;
use crate::event::{Event, TxContext};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::pgoutput::{Column, ReplicaIdentity, TupleData};
use crate::source::catalog::RelationFacts;

fn rel(name: &str, identity: ReplicaIdentity) -> Arc<Relation> {
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

fn settings(toml_rules: &str, flood: &str) -> FilterSettings {
    let text = format!(
        "[postgres]\nurl = \"postgres://u@h/db\"\n[rabbitmq]\nurl = \"amqp://h\"\n[flood]\n{flood}\n{toml_rules}"
    );
    crate::config::from_str_with_env(&text, &[])
        .unwrap_or_else(|e| panic!("{e}"))
        .filter
}

/// The catalog's facts: the primary key is `id`.
fn pk() -> RelationFacts {
    RelationFacts {
        keys: vec![crate::source::catalog::KeyCandidate {
            source: crate::source::catalog::KeySource::PrimaryKey,
            columns: vec!["id".into()],
        }],
        ..Default::default()
    }
}

fn routing() -> RoutingTemplate {
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
        root: Some(crate::source::catalog::QualifiedName {
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

fn candidate(view: &Arc<TableView>, index: u64) -> Candidate {
    let key = format!("{{\"id\":{index}}}");
    let body = format!("{{\"key\":{key}}}").into_bytes();
    Candidate {
        event: Event {
            id: format!("0/10:{index}"),
            op: Op::Update,
            schema: view.rel.schema.clone(),
            table: view.rel.name.clone(),
            commit_lsn: Lsn(0x10),
            commit_time_us: Some(0),
            routing_key: format!("public.{}.update", view.rel.name),
            exchange: None,
            metric_table: Arc::from("public.orders"),
            body,
        },
        view: Some(Arc::clone(view)),
        index,
        key: Some(7..7 + key.len()),
    }
}

const TX: TxContext = TxContext {
    commit_lsn: Lsn(0x10),
    xid: Some(9),
    commit_time_us: Some(0),
};

fn run_tx(guard: &mut FloodGuard, view: &Arc<TableView>, n: u64, peak: &mut usize) -> Vec<Event> {
    let mut out = VecDeque::new();
    let mut sent = Vec::new();
    guard.begin(true);
    for i in 0..n {
        guard.offer(candidate(view, i), &mut out);
        *peak = (*peak).max(out.len() + guard.held());
        // The replication loop forwards pending items before reading more.
        sent.extend(out.drain(..));
    }
    guard.commit(&TX, &mut out);
    sent.extend(out);
    sent.into_iter()
        .filter_map(|o| match o {
            Outbound::Event(e) => Some(e),
            Outbound::Position(_) => None,
        })
        .collect()
}

#[test]
fn flood_policies() {
    let m = Arc::new(Metrics::new());
    for (policy, expect) in [
        ("skip", 0),
        ("summarize", 1),
        ("reroute", 50),
        ("publish", 50),
    ] {
        let s = settings(
            "",
            &format!("max_changes = 10\npolicy = \"{policy}\"\nreroute_routing_prefix = \"slow.\""),
        );
        let view = Arc::new(
            s.view(
                &rel("orders", ReplicaIdentity::Default),
                Some(&pk()),
                &routing(),
            )
            .unwrap(),
        );
        let mut g = FloodGuard::new(s.flood.clone(), s.counts_changes(), Arc::clone(&m));
        let mut peak = 0;
        // A small transaction passes whole, at commit.
        let small = run_tx(&mut g, &view, 10, &mut peak);
        assert_eq!(peak, 10, "{policy}: held until commit");
        assert_eq!(small.len(), 10, "{policy}");
        assert!(small.iter().all(|e| e.op == Op::Update));
        // 50 changes > 10: a flood. Memory held never exceeds the limit.
        let mut peak = 0;
        let big = run_tx(&mut g, &view, 50, &mut peak);
        assert!(peak <= 11, "{policy}: peak {peak}");
        match policy {
            "summarize" => {
                assert_eq!(big.len(), 1);
                let v: serde_json::Value = serde_json::from_slice(&big[0].body).unwrap();
                assert_eq!(v["bulk"]["counts"]["update"], 50);
                assert_eq!(v["bulk"]["first_key"]["id"], 0);
                assert_eq!(v["bulk"]["last_key"]["id"], 49);
                assert_eq!(v["bulk"]["reason"], "max_changes");
                assert_eq!(big[0].id, "0/10:0");
                assert_eq!(big[0].routing_key, "public.orders.bulk");
            }
            "reroute" => assert!(
                big.iter()
                    .all(|e| e.routing_key.starts_with("slow.public."))
            ),
            _ => {}
        }
        assert_eq!(big.len(), expect, "{policy}");
    }
    let text = m.render();
    assert!(
        text.contains("walrelay_flood_transactions_total{trigger=\"max_changes\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("walrelay_flood_events_total{policy=\"skip\"} 50"),
        "{text}"
    );
}

#[test]
fn markers_and_origins_decide_before_any_change() {
    let m = Arc::new(Metrics::new());
    let s = settings(
        "",
        "marker_prefix = \"walrelay\"\norigins = [\"loader\"]\npolicy = \"skip\"",
    );
    assert!(!s.counts_changes());
    let view = Arc::new(
        s.view(
            &rel("orders", ReplicaIdentity::Default),
            Some(&pk()),
            &routing(),
        )
        .unwrap(),
    );
    let mut g = FloodGuard::new(s.flood.clone(), false, m);
    let mut out = VecDeque::new();
    g.begin(true);
    assert!(!g.marker("other", &mut out));
    g.offer(candidate(&view, 0), &mut out);
    assert_eq!(out.len(), 1, "not counting: changes pass straight through");
    g.commit(&TX, &mut out);
    out.clear();
    g.begin(true);
    assert!(g.marker("walrelay", &mut out));
    g.offer(candidate(&view, 1), &mut out);
    g.commit(&TX, &mut out);
    assert!(out.is_empty());
    g.begin(true);
    g.origin("loader", &mut out);
    g.offer(candidate(&view, 1), &mut out);
    g.commit(&TX, &mut out);
    assert!(out.is_empty());
    g.begin(true);
    g.origin("someone_else", &mut out);
    g.offer(candidate(&view, 1), &mut out);
    g.commit(&TX, &mut out);
    assert_eq!(out.len(), 1);
}
