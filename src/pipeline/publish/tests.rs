//! The publish loop alone, against a scripted [`Sink`] under paused time: the confirmed
//! position moves only over the confirmed prefix and never backwards, a nack or a return
//! ends the loop with the position before the message, the window bounds what is in flight,
//! a silent broker is a stall after `confirm_timeout`, and a closed input drains the window.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::PublishLoop;
use crate::checkpoint::AckTracker;
use crate::error::RunError;
use crate::event::{Event, Op, Outbound};
use crate::health::Health;
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::sink::{BatchLimits, BrokerState, Signal, Sink, SinkError};

const START: Lsn = Lsn(0x10);
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// A sink whose answers the test sends, and which records what was handed over.
pub(crate) struct Scripted {
    answers: mpsc::UnboundedReceiver<Signal>,
    published: Arc<Mutex<Vec<String>>>,
    state: watch::Receiver<BrokerState>,
}

impl Sink for Scripted {
    fn kind(&self) -> &'static str {
        "exchange"
    }

    fn destination(&self) -> &str {
        "x"
    }

    async fn publish(
        &mut self,
        event: &Event,
        _body: Vec<u8>,
        _count: usize,
    ) -> Result<(), SinkError> {
        self.published.lock().unwrap().push(event.id.clone());
        Ok(())
    }

    async fn dead_letter(
        &mut self,
        message: crate::sink::ReturnedMessage,
        to: &str,
        _exchange: &str,
        _routing_key: &str,
    ) -> Result<(), SinkError> {
        let id = message.properties.message_id().cloned().unwrap_or_default();
        self.published.lock().unwrap().push(format!("{to}:{id}"));
        Ok(())
    }

    async fn answer(&mut self) -> Signal {
        self.answers.recv().await.unwrap_or(Signal::Lost)
    }

    fn try_answer(&mut self) -> Option<Signal> {
        self.answers.try_recv().ok()
    }

    fn state(&self) -> watch::Receiver<BrokerState> {
        self.state.clone()
    }

    async fn close(self) {}
}

/// The test's side of a running loop.
pub(crate) struct Rig {
    pub(crate) items: mpsc::Sender<Outbound>,
    pub(crate) answers: mpsc::UnboundedSender<Signal>,
    published: Arc<Mutex<Vec<String>>>,
    pub(crate) acked: watch::Receiver<Lsn>,
    /// Every value the confirmed position took, in order.
    seen: Arc<Mutex<Vec<Lsn>>>,
    pub(crate) task: tokio::task::JoinHandle<Result<Scripted, RunError>>,
}

pub(crate) fn rig(max_in_flight: usize) -> Rig {
    rig_with(max_in_flight, crate::sink::DeadLetters::default())
}

/// A rig whose loop sets poison rows aside as `dead_letters` says (messages over 1 KiB are
/// oversized).
pub(crate) fn rig_with(max_in_flight: usize, dead_letters: crate::sink::DeadLetters) -> Rig {
    let (items, rx) = mpsc::channel(64);
    let (answers, answers_rx) = mpsc::unbounded_channel();
    let published = Arc::new(Mutex::new(Vec::new()));
    let (acked_tx, acked) = watch::channel(START);
    let (_state_tx, state) = watch::channel(BrokerState {
        open: true,
        blocked: false,
    });
    let sink = Scripted {
        answers: answers_rx,
        published: Arc::clone(&published),
        state,
    };
    let publish = PublishLoop {
        publisher: sink,
        rx,
        acked: acked_tx,
        tracker: AckTracker::new(START),
        max_in_flight,
        max_message_bytes: 1024,
        confirm_timeout: CONFIRM_TIMEOUT,
        metrics: Arc::new(Metrics::new()),
        health: Arc::new(Health::new(Duration::from_secs(1), CONFIRM_TIMEOUT)),
        batch: BatchLimits {
            max_events: 1,
            max_bytes: 1 << 20,
        },
        hold_warning: Duration::from_secs(3),
        alarms: None,
        refusal: None,
        dead_letters,
        due: Vec::new(),
        claim_next: false,
        told: Default::default(),
    };
    let seen = Arc::new(Mutex::new(vec![START]));
    let mut watch_seen = acked.clone();
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while watch_seen.changed().await.is_ok() {
            let v = *watch_seen.borrow();
            record.lock().unwrap().push(v);
        }
    });
    Rig {
        items,
        answers,
        published,
        acked,
        seen,
        task: tokio::spawn(publish.run()),
    }
}

/// How the loop ended, within 10 minutes of (paused) time: a loop that never ends fails the
/// test instead of hanging it.
pub(crate) async fn ended(
    task: tokio::task::JoinHandle<Result<Scripted, RunError>>,
) -> Result<Scripted, RunError> {
    tokio::time::timeout(Duration::from_secs(600), task)
        .await
        .expect("the publish loop did not end")
        .unwrap()
}

pub(crate) fn event(id: &str, commit: u64) -> Outbound {
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
        metric_table: Arc::from("other"),
        body: b"{}".to_vec(),
    })
}

impl Rig {
    pub(crate) async fn send(&self, item: Outbound) {
        self.items.send(item).await.unwrap();
    }

    pub(crate) fn ack(&self, tag: u64, multiple: bool) {
        self.answers.send(Signal::Ack { tag, multiple }).unwrap();
    }

    /// Lets the loop run until it is idle (paused time: nothing else moves the clock).
    pub(crate) async fn settle(&self) {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    pub(crate) fn position(&self) -> Lsn {
        *self.acked.borrow()
    }

    pub(crate) fn published(&self) -> Vec<String> {
        self.published.lock().unwrap().clone()
    }

    fn never_backwards(&self) {
        let seen = self.seen.lock().unwrap();
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_position_moves_only_over_the_confirmed_prefix() {
    let r = rig(10);
    // Transaction A: two events, ends at 0x100; B: one event, ends at 0x200.
    r.send(event("a1", 0x80)).await;
    r.send(event("a2", 0x80)).await;
    r.send(Outbound::Position(Lsn(0x100))).await;
    r.send(event("b1", 0x180)).await;
    r.send(Outbound::Position(Lsn(0x200))).await;
    r.settle().await;
    assert_eq!(r.published(), ["a1", "a2", "b1"]);
    assert_eq!(r.position(), START);
    // The second and third are confirmed, the first is not: nothing may move.
    r.ack(2, false);
    r.ack(3, false);
    r.settle().await;
    assert_eq!(r.position(), START, "moved past an unconfirmed message");
    // The first arrives: both transactions are whole.
    r.ack(1, false);
    r.settle().await;
    assert_eq!(r.position(), Lsn(0x200));
    r.never_backwards();
    drop(r.items);
    assert!(ended(r.task).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_multiple_ack_confirms_every_tag_up_to_it() {
    let r = rig(10);
    for (i, end) in [(1u64, 0x100u64), (2, 0x200), (3, 0x300)] {
        r.send(event(&format!("e{i}"), end - 1)).await;
        r.send(Outbound::Position(Lsn(end))).await;
    }
    r.settle().await;
    r.ack(2, true);
    r.settle().await;
    assert_eq!(r.position(), Lsn(0x200));
    r.ack(3, false);
    r.settle().await;
    assert_eq!(r.position(), Lsn(0x300));
    r.never_backwards();
}

#[tokio::test(start_paused = true)]
async fn a_nack_ends_the_loop_with_the_position_before_it() {
    let r = rig(10);
    r.send(event("a", 0x80)).await;
    r.send(Outbound::Position(Lsn(0x100))).await;
    r.send(event("b", 0x180)).await;
    r.send(Outbound::Position(Lsn(0x200))).await;
    r.settle().await;
    r.ack(1, false);
    r.answers
        .send(Signal::Nack {
            tag: 2,
            multiple: false,
        })
        .unwrap();
    let ended = ended(r.task).await;
    assert!(
        matches!(ended, Err(RunError::Sink(SinkError::Nacked { ref id, .. })) if id == "b"),
        "{:?}",
        ended.err()
    );
    assert_eq!(*r.acked.borrow(), Lsn(0x100));
}

#[tokio::test(start_paused = true)]
async fn a_returned_message_ends_the_loop_although_its_ack_follows() {
    let r = rig(10);
    r.send(event("a", 0x80)).await;
    r.send(Outbound::Position(Lsn(0x100))).await;
    r.settle().await;
    r.answers
        .send(Signal::Returned {
            message_id: Some("a".into()),
            exchange: "x".into(),
            routing_key: "public.t.insert".into(),
            reply: "312 NO_ROUTE".into(),
            message: None,
        })
        .unwrap();
    r.ack(1, false);
    let ended = ended(r.task).await;
    assert!(
        matches!(ended, Err(RunError::Sink(SinkError::Unroutable { ref id, .. })) if id == "a"),
        "{:?}",
        ended.err()
    );
    assert_eq!(
        *r.acked.borrow(),
        START,
        "a returned message counted as delivered"
    );
}

#[tokio::test(start_paused = true)]
async fn a_closed_channel_or_a_lost_connection_ends_the_loop() {
    for signal in [
        Signal::Closed {
            what: "channel",
            reply: "406 PRECONDITION_FAILED".into(),
        },
        Signal::Lost,
    ] {
        let r = rig(10);
        r.send(event("a", 0x80)).await;
        r.settle().await;
        r.answers.send(signal).unwrap();
        let ended = ended(r.task).await;
        assert!(
            matches!(
                ended,
                Err(RunError::Sink(SinkError::Closed { .. } | SinkError::Lost))
            ),
            "{:?}",
            ended.err()
        );
        assert_eq!(*r.acked.borrow(), START);
    }
}

#[tokio::test(start_paused = true)]
async fn the_window_bounds_what_is_in_flight() {
    let r = rig(2);
    for i in 1..=5 {
        r.send(event(&format!("e{i}"), 0x80)).await;
    }
    r.send(Outbound::Position(Lsn(0x100))).await;
    r.settle().await;
    assert_eq!(r.published(), ["e1", "e2"]);
    r.ack(1, false);
    r.settle().await;
    assert_eq!(r.published(), ["e1", "e2", "e3"]);
    r.ack(3, true);
    r.settle().await;
    assert_eq!(r.published().len(), 5);
    assert_eq!(r.position(), START, "the transaction is not whole yet");
    r.ack(5, true);
    r.settle().await;
    assert_eq!(r.position(), Lsn(0x100));
}

#[tokio::test(start_paused = true)]
async fn a_silent_broker_is_a_stall_after_confirm_timeout() {
    let r = rig(10);
    r.send(event("a", 0x80)).await;
    r.settle().await;
    let started = tokio::time::Instant::now();
    let ended = ended(r.task).await;
    assert!(
        matches!(
            ended,
            Err(RunError::Sink(SinkError::Stalled { in_flight: 1, .. }))
        ),
        "{:?}",
        ended.err()
    );
    assert_eq!(started.elapsed(), CONFIRM_TIMEOUT);
    assert_eq!(*r.acked.borrow(), START);
}

#[tokio::test(start_paused = true)]
async fn a_closed_input_drains_the_window_then_returns_the_sink() {
    let r = rig(10);
    r.send(event("a", 0x80)).await;
    r.send(Outbound::Position(Lsn(0x100))).await;
    let Rig {
        items,
        answers,
        acked,
        task,
        ..
    } = r;
    drop(items);
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert!(!task.is_finished(), "returned with a message in flight");
    answers
        .send(Signal::Ack {
            tag: 1,
            multiple: false,
        })
        .unwrap();
    let sink = ended(task).await;
    assert!(sink.is_ok());
    assert_eq!(*acked.borrow(), Lsn(0x100));
}
