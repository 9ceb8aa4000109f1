//! Unit tests of the transform stage: decoded pgoutput messages in, outbound items out. They
//! prove, without a server, the accounting rule (every change is published, dropped by a rule
//! and counted, or warned about and counted), partition naming and row keys.

use super::*;
use crate::event::Event;
use crate::event::routing::RoutingTemplate;
use crate::pgoutput::{Begin, Column, Commit, Datum, OldTuple, ReplicaIdentity, TupleData};
use crate::schema::{KeyCandidate, KeySource, QualifiedName};
use serde_json::{Value, json};

fn transform(filter_toml: &str) -> (Transform, Arc<Metrics>) {
    let text = format!(
        "[postgres]\nurl = \"postgres://u@h/db\"\n[rabbitmq]\nurl = \"amqp://h\"\n{filter_toml}"
    );
    let settings = crate::config::from_str_with_env(&text, &[]).unwrap_or_else(|e| panic!("{e}"));
    let metrics = Arc::new(Metrics::new());
    let t = Transform::new(
        TransformSettings {
            routing: RoutingTemplate::parse("{schema}.{table}.{op}").unwrap(),
            publish_messages: false,
            session: "test-session".into(),
            control_prefix: Some("_walrelay.control".into()),
            backfill_events: true,
            schema_events: true,
            filter: Arc::new(settings.filter),
        },
        TypeRegistry::builtin(),
        None,
        Arc::clone(&metrics),
    );
    (t, metrics)
}

fn relation(oid: u32, schema: &str, name: &str, identity: ReplicaIdentity) -> Relation {
    let col = |n: &str, key: bool| Column {
        name: n.into(),
        is_key: key || identity == ReplicaIdentity::Full,
        type_oid: 23,
        type_modifier: -1,
    };
    Relation {
        oid,
        schema: schema.into(),
        name: name.into(),
        replica_identity: identity,
        columns: vec![col("id", true), col("balance", false)],
    }
}

fn facts(root: Option<(&str, &str)>) -> RelationFacts {
    RelationFacts {
        root: root.map(|(s, n)| QualifiedName {
            schema: s.into(),
            name: n.into(),
        }),
        keys: vec![KeyCandidate {
            source: KeySource::PrimaryKey,
            columns: vec!["id".into()],
        }],
        unlogged: false,
    }
}

/// Runs one transaction of `changes` and returns every event it yields (positions dropped).
fn run_tx(t: &mut Transform, lsn: u64, changes: Vec<Message<'_>>) -> Vec<Event> {
    let mut out = VecDeque::new();
    let begin = Begin {
        final_lsn: Lsn(lsn),
        commit_time_us: 0,
        xid: 7,
    };
    t.apply(Message::Begin(begin), Lsn(lsn), &mut out).unwrap();
    for m in changes {
        t.apply(m, Lsn(lsn), &mut out).unwrap();
    }
    let commit = Commit {
        commit_lsn: Lsn(lsn),
        end_lsn: Lsn(lsn + 8),
        commit_time_us: 0,
    };
    t.apply(Message::Commit(commit), Lsn(lsn), &mut out)
        .unwrap();
    assert!(
        matches!(out.back(), Some(Outbound::Position(p)) if *p == Lsn(lsn + 8)),
        "every transaction ends with its end position"
    );
    out.into_iter()
        .filter_map(|o| match o {
            Outbound::Event(e) => Some(e),
            Outbound::Position(_) => None,
        })
        .collect()
}

fn row<'a>(id: &'a [u8], balance: &'a [u8]) -> TupleData<'a> {
    TupleData {
        columns: vec![Datum::Text(id), Datum::Text(balance)],
    }
}

fn insert(oid: u32, id: &'static [u8]) -> Message<'static> {
    Message::Insert {
        relation_oid: oid,
        new: row(id, b"0"),
    }
}

fn body(e: &Event) -> Value {
    serde_json::from_slice(&e.body).unwrap()
}

#[test]
fn every_change_is_published_dropped_by_a_rule_or_counted_as_unmatched() {
    let (mut t, m) = transform(
        "[filter]\ninclude = [\"public.orders\", \"public.m\"]\nexclude = [\"public.audit\"]\n\
         [[filter.table]]\nname = \"public.orders\"\nops = [\"insert\"]\n",
    );
    let tables = [
        (1, "orders", None),
        (2, "audit", None),
        (3, "m_eu", Some(("public", "m"))),
        (4, "stray", None),
        (5, "m_other", Some(("public", "other_root"))),
    ];
    for (oid, name, root) in tables {
        t.learn(oid, Some(facts(root)));
        let mut out = VecDeque::new();
        let rel = relation(oid, "public", name, ReplicaIdentity::Default);
        t.apply(Message::Relation(rel), Lsn(1), &mut out).unwrap();
        assert!(out.is_empty());
    }
    let mut changes = Vec::new();
    for oid in 1..=5 {
        changes.push(insert(oid, b"1"));
        changes.push(Message::Delete {
            relation_oid: oid,
            old: OldTuple::Key(row(b"1", b"0")),
        });
    }
    let total = changes.len() as u64;
    let events = run_tx(&mut t, 0x100, changes);
    let names: Vec<(String, &str)> = events
        .iter()
        .map(|e| (format!("{}.{}", e.schema, e.table), e.op.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("public.orders".to_owned(), "insert"),
            ("public.m".to_owned(), "insert"),
            ("public.m".to_owned(), "delete"),
        ]
    );
    let filtered =
        |reason: &'static str| m.events_filtered.get_or_create(&[("reason", reason)]).get();
    assert_eq!(filtered("op"), 1, "the orders delete, by its rule");
    assert_eq!(filtered("excluded"), 2, "audit, by filter.exclude");
    assert_eq!(m.events_unmatched.get(), 4, "stray and m_other");
    assert_eq!(
        events.len() as u64 + filtered("op") + filtered("excluded") + m.events_unmatched.get(),
        total,
        "every change ends somewhere visible"
    );
    // Ids count every change, filtered or not.
    assert_eq!(events[1].id, "0/100:4");
}

#[test]
fn unmatched_stops_when_configured() {
    let (mut t, m) = transform("[filter]\ninclude = [\"public.m\"]\non_unmatched = \"stop\"\n");
    t.learn(3, Some(facts(Some(("public", "other")))));
    let mut out = VecDeque::new();
    let rel = relation(3, "public", "o_eu", ReplicaIdentity::Default);
    t.apply(Message::Relation(rel), Lsn(1), &mut out).unwrap();
    let begin = Begin {
        final_lsn: Lsn(0x200),
        commit_time_us: 0,
        xid: 1,
    };
    t.apply(Message::Begin(begin), Lsn(1), &mut out).unwrap();
    let err = t.apply(insert(3, b"1"), Lsn(1), &mut out).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("public.o_eu") && text.contains("public.other"),
        "{text}"
    );
    assert!(matches!(err, TransformError::Unmatched { .. }));
    assert_eq!(m.events_unmatched.get(), 0, "nothing was dropped");
}

#[test]
fn a_partition_is_published_under_its_root_with_its_own_name_in_the_envelope() {
    let (mut t, _) = transform("[filter]\ninclude = [\"public.m\"]\n");
    t.learn(3, Some(facts(Some(("public", "m")))));
    let mut out = VecDeque::new();
    let rel = relation(3, "public", "m_eu", ReplicaIdentity::Default);
    t.apply(Message::Relation(rel), Lsn(1), &mut out).unwrap();
    let events = run_tx(&mut t, 0x300, vec![insert(3, b"5")]);
    assert_eq!(events[0].routing_key, "public.m.insert");
    let b = body(&events[0]);
    assert_eq!(
        (b["schema"].as_str(), b["table"].as_str()),
        (Some("public"), Some("m"))
    );
    assert_eq!(b["partition"], json!({"schema": "public", "table": "m_eu"}));
    assert_eq!(b["key"], json!({"id": 5}));
}

#[test]
fn under_full_identity_every_update_of_a_row_has_the_same_key_and_partition() {
    let (mut t, _) = transform(
        "[[filter.table]]\nname = \"public.acct\"\npartitions = 8\nrouting_key = \"{table}.{op}.p{partition}.{key.id}\"\n",
    );
    t.learn(9, Some(facts(None)));
    let mut out = VecDeque::new();
    let rel = relation(9, "public", "acct", ReplicaIdentity::Full);
    t.apply(Message::Relation(rel), Lsn(1), &mut out).unwrap();
    let balances: [&[u8]; 4] = [b"0", b"10", b"20", b"30"];
    let mut changes = Vec::new();
    for w in balances.windows(2) {
        changes.push(Message::Update {
            relation_oid: 9,
            old: Some(OldTuple::Full(row(b"1", w[0]))),
            new: row(b"1", w[1]),
        });
    }
    changes.push(Message::Delete {
        relation_oid: 9,
        old: OldTuple::Full(row(b"1", b"30")),
    });
    let events = run_tx(&mut t, 0x400, changes);
    assert_eq!(events.len(), 4);
    let first = &events[0].routing_key;
    assert!(
        first.starts_with("acct.update.p") && first.ends_with(".1"),
        "{first}"
    );
    for e in &events {
        assert_eq!(body(e)["key"], json!({"id": 1}), "{}", e.routing_key);
        let partition = |rk: &str| rk.split('.').nth(2).map(str::to_owned);
        assert_eq!(partition(&e.routing_key), partition(first));
    }
}

#[test]
fn an_update_that_changes_the_key_is_keyed_and_routed_by_the_old_key() {
    let (mut t, _) =
        transform("[[filter.table]]\nname = \"public.acct\"\nrouting_key = \"{table}.{key.id}\"\n");
    t.learn(9, Some(facts(None)));
    let mut out = VecDeque::new();
    let rel = relation(9, "public", "acct", ReplicaIdentity::Default);
    t.apply(Message::Relation(rel), Lsn(1), &mut out).unwrap();
    let events = run_tx(
        &mut t,
        0x500,
        vec![Message::Update {
            relation_oid: 9,
            old: Some(OldTuple::Key(TupleData {
                columns: vec![Datum::Text(b"1"), Datum::Null],
            })),
            new: row(b"2", b"10"),
        }],
    );
    let b = body(&events[0]);
    assert_eq!(b["key"], json!({"id": 1}));
    assert_eq!(b["new"]["id"], json!(2));
    assert_eq!(events[0].routing_key, "acct.1");
}

#[test]
fn a_relation_the_catalog_lost_is_keyed_by_its_replica_identity() {
    let (mut t, _) = transform("");
    t.learn(9, None);
    let mut out = VecDeque::new();
    let rel = relation(9, "public", "gone", ReplicaIdentity::Default);
    t.apply(Message::Relation(rel), Lsn(1), &mut out).unwrap();
    let events = run_tx(&mut t, 0x600, vec![insert(9, b"3")]);
    assert_eq!(body(&events[0])["key"], json!({"id": 3}));
    assert_eq!(body(&events[0])["partition"], Value::Null);
}

#[test]
fn a_replayed_transaction_is_counted_once() {
    let toml = "[filter]\ninclude = [\"public.orders\"]\nexclude = [\"public.audit\"]\n";
    let (mut first, m) = transform(toml);
    let run = |t: &mut Transform| {
        for (oid, name) in [(1, "orders"), (2, "audit")] {
            t.learn(oid, Some(facts(None)));
            let mut out = VecDeque::new();
            let rel = relation(oid, "public", name, ReplicaIdentity::Default);
            t.apply(Message::Relation(rel), Lsn(1), &mut out).unwrap();
        }
        run_tx(
            t,
            0x700,
            vec![insert(2, b"1"), insert(1, b"1"), insert(2, b"2")],
        )
    };
    assert_eq!(run(&mut first).len(), 1);
    let excluded = || {
        m.events_filtered
            .get_or_create(&[("reason", "excluded")])
            .get()
    };
    assert_eq!(excluded(), 2);
    // The session failed before the confirm: the next one replays the same transaction.
    let mut second = Transform::new(
        first.settings.clone(),
        TypeRegistry::builtin(),
        None,
        Arc::clone(&m),
    )
    .counted(first.seen());
    assert_eq!(
        run(&mut second).len(),
        1,
        "the event itself is published again"
    );
    assert_eq!(excluded(), 2, "the drops are not counted twice");
    // A later transaction counts.
    run_tx(&mut second, 0x800, vec![insert(2, b"3")]);
    assert_eq!(excluded(), 3);
}

fn watermark(kind: crate::backfill::MarkKind, chunk: i64, session: &str) -> Vec<u8> {
    crate::backfill::Mark {
        session: session.into(),
        backfill: 9,
        chunk,
        kind,
        schema: "public".into(),
        table: "orders".into(),
        where_clause: None,
        rows: 0,
    }
    .to_json()
    .into_bytes()
}

fn message<'a>(lsn: u64, content: &'a [u8]) -> Message<'a> {
    Message::Message(crate::pgoutput::LogicalMessage {
        transactional: true,
        lsn: Lsn(lsn),
        prefix: crate::backfill::PREFIX,
        content,
    })
}

#[test]
fn a_chunk_is_published_at_its_high_mark_without_the_rows_changed_since_its_low_mark() {
    use crate::backfill::MarkKind;
    let (mut t, m) = transform("[filter]\ninclude = [\"public.orders\"]\n");
    t.learn(1, Some(facts(None)));
    let mut out = VecDeque::new();
    let rel = relation(1, "public", "orders", ReplicaIdentity::Default);
    t.apply(Message::Relation(rel.clone()), Lsn(1), &mut out)
        .unwrap();
    let low = watermark(MarkKind::Low, 0, "test-session");
    let started = run_tx(&mut t, 100, vec![message(100, &low)]);
    assert_eq!(started.len(), 1, "backfill_started");
    assert_eq!(started[0].routing_key, "_walrelay.control.backfill_started");
    assert_eq!(body(&started[0])["kind"], "backfill_started");
    // Row 2 changes between the marks: the stream has its newer state.
    let change = run_tx(&mut t, 200, vec![insert(1, b"2")]);
    assert_eq!(change.len(), 1);
    t.offer_chunk(crate::backfill::Chunk {
        backfill: 9,
        chunk: 0,
        rel: Arc::new(rel),
        facts: Some(facts(None)),
        rows: vec![
            vec![Some("1".into()), Some("10".into())],
            vec![Some("2".into()), Some("20".into())],
            vec![Some("3".into()), None],
        ],
    });
    let high = watermark(MarkKind::High, 0, "test-session");
    let reads = run_tx(&mut t, 300, vec![message(300, &high)]);
    let keys: Vec<Value> = reads.iter().map(|e| body(e)["key"]["id"].clone()).collect();
    assert_eq!(keys, [json!(1), json!(3)], "row 2 is superseded");
    let b = body(&reads[0]);
    assert_eq!(b["op"], "read");
    assert_eq!(b["new"], json!({"id": 1, "balance": 10}));
    assert_eq!(b["old"], Value::Null);
    assert_eq!(reads[0].routing_key, "public.orders.read");
    assert_eq!(reads[0].id, crate::backfill::read_id(9, "{\"id\":1}"));
    assert_eq!(body(&reads[1])["new"]["balance"], Value::Null);
    assert_eq!(
        t.take_chunk_ends(),
        [(9, 0, Lsn(308))],
        "the worker learns where the chunk ends"
    );
    assert_eq!(m.backfill_superseded.get(), 1);
    // Another session's marks are replayed from the slot: skipped, nothing published.
    let old = watermark(MarkKind::High, 5, "an-earlier-session");
    assert!(run_tx(&mut t, 400, vec![message(400, &old)]).is_empty());
}

#[test]
fn backfilled_rows_of_a_table_the_filter_no_longer_includes_are_counted_not_dropped_quietly() {
    use crate::backfill::MarkKind;
    let (mut t, m) = transform("[filter]\ninclude = [\"public.other\"]\n");
    let rel = relation(1, "public", "orders", ReplicaIdentity::Default);
    let low = watermark(MarkKind::Low, 0, "test-session");
    run_tx(&mut t, 100, vec![message(100, &low)]);
    t.offer_chunk(crate::backfill::Chunk {
        backfill: 9,
        chunk: 0,
        rel: Arc::new(rel),
        facts: Some(facts(None)),
        rows: vec![vec![Some("1".into()), Some("10".into())]],
    });
    let high = watermark(MarkKind::High, 0, "test-session");
    assert!(run_tx(&mut t, 200, vec![message(200, &high)]).is_empty());
    assert_eq!(m.events_unmatched.get(), 1);
}
