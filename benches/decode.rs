//! Micro-benchmark of the per-change hot path: pgoutput decode, value rendering and envelope
//! encoding, for a narrow and a wide row (events per second per core).

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use walrelay::event::{RowChange, TableIdentity, TxContext, row_event_body};
use walrelay::lsn::Lsn;
use walrelay::pgoutput::{Column, Message, Relation, ReplicaIdentity};
use walrelay::value::TypeRegistry;

fn insert_message(values: &[&str]) -> Vec<u8> {
    let mut m = vec![b'I'];
    m.extend_from_slice(&16384u32.to_be_bytes());
    m.push(b'N');
    m.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for v in values {
        m.push(b't');
        m.extend_from_slice(&(v.len() as u32).to_be_bytes());
        m.extend_from_slice(v.as_bytes());
    }
    m
}

fn relation(types: &[u32]) -> Arc<Relation> {
    Arc::new(Relation {
        oid: 16384,
        schema: "public".into(),
        name: "orders".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: types
            .iter()
            .enumerate()
            .map(|(i, &t)| Column {
                name: format!("col_{i}"),
                is_key: i == 0,
                type_oid: t,
                type_modifier: -1,
            })
            .collect(),
    })
}

fn bench(c: &mut Criterion) {
    let types = TypeRegistry::builtin();
    let tx = TxContext {
        commit_lsn: Lsn(0x16_B374_D848),
        xid: Some(1234),
        commit_time_us: Some(800_000_000_000_000),
    };
    let narrow_vals = ["42", "paid", "19.99"];
    let narrow = (insert_message(&narrow_vals), relation(&[23, 25, 1700]));
    let wide_vals = [
        "42",
        "2026-11-22 10:00:00.123456+00",
        "customer@example.com",
        "19.99",
        "t",
        "{\"a\": 1}",
        "1e+100",
        "some longer descriptive text with \"quotes\"",
        "7",
        "2026-11-22",
    ];
    let wide = (
        insert_message(&wide_vals),
        relation(&[23, 1184, 25, 1700, 16, 3802, 701, 25, 20, 1082]),
    );
    let mut group = c.benchmark_group("decode_render_encode");
    group.throughput(Throughput::Elements(1));
    for (name, (msg, rel)) in [("narrow_3_cols", &narrow), ("wide_10_cols", &wide)] {
        // The catalog does not know these relations: keyed by their replica identity flags.
        let table = TableIdentity::resolve(rel, None);
        group.bench_function(name, |b| {
            b.iter(|| {
                let Ok(Message::Insert { new, .. }) = Message::parse(msg) else {
                    panic!("bench input")
                };
                let change = RowChange::Insert { new: &new };
                row_event_body(
                    &tx,
                    &walrelay::event::event_id(tx.commit_lsn, 0),
                    rel,
                    &table,
                    &change,
                    None,
                    &types,
                )
                .expect("renders")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
