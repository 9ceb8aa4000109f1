//! The flood guard's policies and the markers and origins that decide before any change.

use std::collections::VecDeque;
use std::sync::Arc;

use super::flood::{Candidate, FloodGuard};
use crate::event::Op;
use crate::event::Outbound;
use crate::event::{Event, TxContext};
use crate::filter::tests::{pk, rel, routing, settings};
use crate::filter::*;
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::pgoutput::ReplicaIdentity;

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
            key_hash: None,
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

/// `flood.then = "backfill"`: a summarized flood's bulk event announces the backfill and the
/// key range, and the guard hands the request over once (none without `then`, none for a
/// transaction that was not a flood).
#[test]
fn a_flood_then_backfill_asks_for_the_range_it_touched() {
    let m = Arc::new(Metrics::new());
    for (then, policy) in [
        ("backfill", "summarize"),
        ("backfill", "skip"),
        ("nothing", "summarize"),
    ] {
        let s = settings(
            "",
            &format!("max_changes = 10\npolicy = \"{policy}\"\nthen = \"{then}\""),
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
        run_tx(&mut g, &view, 5, &mut peak);
        assert!(g.take_backfills().is_empty(), "not a flood: no backfill");
        let big = run_tx(&mut g, &view, 50, &mut peak);
        let asked = g.take_backfills();
        if then == "nothing" {
            assert!(asked.is_empty());
            let v: serde_json::Value = serde_json::from_slice(&big[0].body).unwrap();
            assert!(v["bulk"]["backfill"].is_null(), "{v}");
            continue;
        }
        assert_eq!(asked.len(), 1, "{policy}");
        assert_eq!(asked[0].table.name, "orders");
        assert_eq!(
            asked[0].where_clause.as_deref(),
            Some("\"id\" BETWEEN 0 AND 49")
        );
        assert!(g.take_backfills().is_empty(), "handed over once");
        if policy == "summarize" {
            let v: serde_json::Value = serde_json::from_slice(&big[0].body).unwrap();
            let b = &v["bulk"]["backfill"];
            assert_eq!(b["where"], "\"id\" BETWEEN 0 AND 49", "{v}");
            assert_eq!(
                (b["key"].as_str(), b["from"].as_i64(), b["to"].as_i64()),
                (Some("id"), Some(0), Some(49))
            );
        }
    }
}
