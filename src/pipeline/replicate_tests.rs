//! The replication loop alone, against a scripted walsender (`source::scripted`) over a real
//! loopback socket, under paused time: status updates keep flowing while the forward channel
//! is full, and each carries the broker-confirmed position; a keepalive that asks for a reply
//! gets one at once; a server silent for `receive_timeout` ends the session, but a full channel
//! never reads as silence; shutdown ends the loop.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::position::Reporter;
use super::replicate::{Links, Replicator, Stop, Timing};
use crate::error::RunError;
use crate::event::Outbound;
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::source::catalog::Catalog;
use crate::source::replication::ReplicationStream;
use crate::source::scripted::{self, Send, Status};
use crate::source::{Connection, SourceError};
use crate::transform::{Transform, TransformSettings};
use crate::value::TypeRegistry;

const STATUS_INTERVAL: Duration = Duration::from_secs(1);
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);
const START: Lsn = Lsn(0x100);

/// A replicator on a scripted server, with the test's ends of its channels.
struct Rig {
    replicator: Replicator,
    server: scripted::Scripted,
    /// The publisher's end of the forward channel: never read unless a test drains it.
    forward: mpsc::Receiver<Outbound>,
    /// The publisher's confirmed position.
    acked: watch::Sender<Lsn>,
    _chunks: mpsc::Sender<crate::backfill::Chunk>,
}

async fn rig(capacity: usize) -> Rig {
    let server = scripted::start().await;
    let conn = Connection::connect(&server.params, true).await.unwrap();
    let stream = ReplicationStream::start(conn, "slot", START, "pub")
        .await
        .unwrap();
    let text = "[postgres]\nurl = \"postgres://u@h/db\"\n[rabbitmq]\nurl = \"amqp://h\"\n";
    let settings = crate::config::from_str_with_env(text, &[]).unwrap();
    let metrics = Arc::new(Metrics::new());
    let transform = Transform::new(
        TransformSettings {
            routing: settings.sink.routing_key.clone(),
            publish_messages: false,
            filter: Arc::new(settings.filter),
            session: "test".into(),
            control_prefix: None,
            backfill_events: false,
            schema_events: false,
        },
        TypeRegistry::builtin(),
        None,
        Arc::clone(&metrics),
    );
    let (tx, forward) = mpsc::channel(capacity);
    let (acked, acked_rx) = watch::channel(START);
    let (chunks_tx, chunks) = mpsc::channel(1);
    let (chunk_ends, _) = mpsc::unbounded_channel();
    let links = Links {
        tx,
        acked: acked_rx,
        chunks,
        chunk_ends,
    };
    let obs = super::Observers {
        metrics,
        health: Arc::new(crate::health::Health::new(STATUS_INTERVAL, RECEIVE_TIMEOUT)),
    };
    let timing = Timing {
        status_interval: STATUS_INTERVAL,
        receive_timeout: RECEIVE_TIMEOUT,
    };
    let replicator = Replicator::new(
        stream,
        Catalog::unconnected(&server.params, RECEIVE_TIMEOUT),
        transform,
        Reporter::new(None, START),
        links,
        &obs,
        timing,
    );
    Rig {
        replicator,
        server,
        forward,
        acked,
        _chunks: chunks_tx,
    }
}

impl Rig {
    /// Empty transactions, each of which becomes one `Position` item.
    fn transactions(&self, n: u64) {
        for i in 1..=n {
            let commit = Lsn(START.0 + i * 0x100);
            let end = Lsn(commit.0 + 0x10);
            for data in scripted::empty_transaction(commit, end, i as u32) {
                self.server
                    .send
                    .send(Send::XLogData {
                        start: commit,
                        end,
                        data,
                    })
                    .unwrap();
            }
        }
    }
}

/// The next status update the server receives.
async fn status(server: &mut scripted::Scripted) -> Status {
    tokio::time::timeout(Duration::from_secs(60), server.statuses.recv())
        .await
        .expect("no status update for a minute")
        .expect("the server ended")
}

#[tokio::test(start_paused = true)]
async fn status_updates_keep_flowing_while_the_forward_channel_is_full() {
    let mut r = rig(1).await;
    // Ten transactions for a channel of one that nobody reads: it fills at once.
    r.transactions(10);
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let mut replicator = r.replicator;
    let task = tokio::spawn(async move {
        let ended = replicator.run(&stop).await;
        (replicator, ended)
    });
    let first = status(&mut r.server).await;
    let mut last = first;
    for _ in 0..5 {
        last = status(&mut r.server).await;
    }
    // One update per interval, although the channel stayed full the whole time.
    let spent = last.at - first.at;
    assert!(
        spent >= STATUS_INTERVAL * 5 && spent <= STATUS_INTERVAL * 6,
        "{spent:?}"
    );
    assert_eq!(last.flush, START);
    // Well past receive_timeout with the channel full: waiting for room is not silence.
    tokio::time::sleep(RECEIVE_TIMEOUT * 2).await;
    assert!(
        !task.is_finished(),
        "a full channel was taken for a dead server"
    );
    // The publisher confirms: the next update carries it.
    r.acked.send_replace(Lsn(0x300));
    loop {
        let s = status(&mut r.server).await;
        if s.flush == Lsn(0x300) {
            assert!(s.write >= s.flush);
            break;
        }
        assert_eq!(s.flush, START);
    }
    // The publisher reads again: every transaction's position comes, in commit order.
    for i in 1..=10u64 {
        let item = tokio::time::timeout(Duration::from_secs(5), r.forward.recv())
            .await
            .expect("the loop stopped forwarding")
            .unwrap();
        let end = Lsn(START.0 + i * 0x100 + 0x10);
        assert!(
            matches!(item, Outbound::Position(p) if p == end),
            "item {i}"
        );
    }
    // Back to reading a quiet socket: the time spent waiting for room is not counted as
    // silence, so the session lives on until receive_timeout of real quiet.
    tokio::time::sleep(STATUS_INTERVAL * 3).await;
    assert!(
        !task.is_finished(),
        "waiting for room was counted as silence"
    );
    shutdown.trigger();
    let (replicator, ended) = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.unwrap(), Stop::Shutdown);
    assert!(replicator.pending.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_keepalive_that_asks_for_a_reply_is_answered_at_once() {
    let mut r = rig(16).await;
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let mut replicator = r.replicator;
    let task = tokio::spawn(async move { replicator.run(&stop).await });
    // The first timer tick reports at once; then the keepalive, half an interval later.
    status(&mut r.server).await;
    tokio::time::sleep(STATUS_INTERVAL / 2).await;
    let asked = tokio::time::Instant::now();
    r.server
        .send
        .send(Send::Keepalive {
            wal_end: Lsn(0x900),
            reply_requested: true,
        })
        .unwrap();
    let reply = status(&mut r.server).await;
    assert_eq!(reply.at, asked, "answered at the next timer, not at once");
    // Outside a transaction, the server's WAL end becomes a position to confirm.
    let item = tokio::time::timeout(Duration::from_secs(5), r.forward.recv())
        .await
        .unwrap();
    assert!(matches!(item, Some(Outbound::Position(p)) if p == Lsn(0x900)));
    shutdown.trigger();
    assert_eq!(task.await.unwrap().unwrap(), Stop::Shutdown);
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_ends_the_session_after_receive_timeout() {
    let mut r = rig(16).await;
    let shutdown = Shutdown::new();
    let mut replicator = r.replicator;
    let started = tokio::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(600), replicator.run(&shutdown))
        .await
        .expect("the loop never noticed the silence");
    assert!(
        matches!(ended, Err(RunError::Source(SourceError::Silent(_)))),
        "{ended:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited > RECEIVE_TIMEOUT && waited <= RECEIVE_TIMEOUT + STATUS_INTERVAL * 2,
        "{waited:?}"
    );
    // Quiet for more than an interval, it asked the server to answer before giving up.
    let mut asked = false;
    while let Ok(s) = r.server.statuses.try_recv() {
        asked |= s.reply_requested;
    }
    assert!(asked, "no status update asked for a reply");
}

/// The shutdown drain: the replication side has stopped; the publisher has one message in
/// flight. `Some(sink)` once it is confirmed, status updates flowing meanwhile; `None` exactly
/// at `shutdown_timeout` when it never is (it comes back from the slot on the next start).
#[tokio::test(start_paused = true)]
async fn shutdown_drains_confirms_within_the_timeout() {
    const TIMEOUT: Duration = Duration::from_secs(5);
    for confirmed in [true, false] {
        let mut r = rig(16).await;
        let p = super::publish::tests::rig(10);
        p.items
            .send(super::publish::tests::event("a", 0x80))
            .await
            .unwrap();
        p.items.send(Outbound::Position(Lsn(0x100))).await.unwrap();
        let super::publish::tests::Rig {
            items,
            answers,
            acked,
            task,
            ..
        } = p;
        drop(items);
        if confirmed {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let _ = answers.send(crate::sink::Signal::Ack {
                    tag: 1,
                    multiple: false,
                });
                // Kept until the loop is done with it.
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
        let started = tokio::time::Instant::now();
        let drained = super::session::drain(
            &mut r.replicator.stream,
            &mut r.replicator.reporter,
            task,
            &acked,
            START,
            TIMEOUT,
            STATUS_INTERVAL,
        )
        .await
        .unwrap();
        let waited = started.elapsed();
        let mut updates = 0;
        while r.server.statuses.try_recv().is_ok() {
            updates += 1;
        }
        if confirmed {
            assert!(drained.is_some());
            assert_eq!(*acked.borrow(), Lsn(0x100));
            assert!(
                waited >= Duration::from_secs(2) && waited < TIMEOUT,
                "{waited:?}"
            );
            assert!(updates >= 2, "{updates} status updates while draining");
        } else {
            assert!(drained.is_none());
            assert_eq!(waited, TIMEOUT);
            assert!(updates >= 5, "{updates} status updates while draining");
        }
    }
}
