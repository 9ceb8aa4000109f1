//! The dead-letter rules of the publish loop, against the scripted sink in paused time: an
//! oversized event becomes a claim check in its place; a returned event's copy goes to the
//! dead-letter exchange and the position waits for that copy's confirm; with the rules off,
//! both still end the session.

use amqprs::BasicProperties;

use super::tests::{ended, event, rig, rig_with};
use crate::error::RunError;
use crate::event::{Event, Op, Outbound};
use crate::lsn::Lsn;
use crate::sink::{DeadLetters, ReturnedMessage, Signal, SinkError};

fn big(id: &str, commit: u64) -> Outbound {
    let body = serde_json::json!({"id": id, "op": "insert", "schema": "public", "table": "t",
        "key": {"id": 1}, "new": {"id": 1, "blob": "x".repeat(4000)}});
    Outbound::Event(Event {
        id: id.to_owned(),
        op: Op::Insert,
        schema: "public".into(),
        table: "t".into(),
        commit_lsn: Lsn(commit),
        commit_time_us: None,
        routing_key: "public.t.insert".into(),
        key_hash: None,
        exchange: None,
        metric_table: std::sync::Arc::from("public.t"),
        body: body.to_string().into_bytes(),
    })
}

fn returned(id: &str) -> Signal {
    let mut properties = BasicProperties::default();
    properties.with_message_id(id);
    Signal::Returned {
        message_id: Some(id.into()),
        exchange: "x".into(),
        routing_key: "public.t.insert".into(),
        reply: "312 NO_ROUTE".into(),
        message: Some(Box::new(ReturnedMessage {
            properties,
            body: b"{}".to_vec(),
        })),
    }
}

#[tokio::test(start_paused = true)]
async fn an_oversized_event_is_a_claim_check_in_its_place_or_a_stop() {
    let r = rig_with(
        10,
        DeadLetters {
            oversized: true,
            unroutable_to: None,
        },
    );
    r.send(big("a", 0x80)).await;
    r.send(event("b", 0x80)).await;
    r.send(Outbound::Position(Lsn(0x100))).await;
    r.settle().await;
    assert_eq!(
        r.published(),
        ["a", "b"],
        "the claim check keeps the event's id and place"
    );
    r.ack(2, true);
    r.settle().await;
    assert_eq!(r.position(), Lsn(0x100));

    let r = rig(10);
    r.send(big("a", 0x80)).await;
    let ended = ended(r.task).await;
    assert!(
        matches!(ended, Err(RunError::Sink(SinkError::Oversized { .. }))),
        "{:?}",
        ended.err()
    );
}

#[tokio::test(start_paused = true)]
async fn a_returned_event_settles_with_its_dead_letter_copy() {
    let r = rig_with(
        10,
        DeadLetters {
            oversized: false,
            unroutable_to: Some("dlx".into()),
        },
    );
    r.send(event("a", 0x80)).await;
    r.send(Outbound::Position(Lsn(0x100))).await;
    r.send(event("b", 0x180)).await;
    r.send(Outbound::Position(Lsn(0x200))).await;
    r.settle().await;
    r.answers.send(returned("a")).unwrap();
    r.ack(2, true);
    r.settle().await;
    assert_eq!(r.published(), ["a", "b", "dlx:a"]);
    assert_eq!(
        r.position(),
        Lsn(0x10),
        "nothing moves before the dead-letter copy is confirmed (b waits behind a)"
    );
    r.ack(3, false);
    r.settle().await;
    assert_eq!(r.position(), Lsn(0x200));
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_exchange_that_routes_nothing_ends_the_session_naming_it() {
    let r = rig_with(
        10,
        DeadLetters {
            oversized: false,
            unroutable_to: Some("dlx".into()),
        },
    );
    r.send(event("a", 0x80)).await;
    r.send(Outbound::Position(Lsn(0x100))).await;
    r.settle().await;
    r.answers.send(returned("a")).unwrap();
    r.ack(1, false);
    r.settle().await;
    // The copy comes back too.
    r.answers.send(returned("a")).unwrap();
    r.ack(2, false);
    let ended = ended(r.task).await;
    assert!(
        matches!(ended, Err(RunError::Sink(SinkError::Unroutable { ref exchange, .. })) if exchange == "dlx"),
        "{:?}",
        ended.err()
    );
    assert_eq!(*r.acked.borrow(), Lsn(0x10), "the start: nothing confirmed");
}
