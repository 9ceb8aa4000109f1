//! Network faults on both links through the test proxy (`common::proxy`): latency and slow
//! bandwidth, a reset (RST) mid-stream, a message truncated mid-frame (FIN and RST), and a
//! blackholed broker link. Each fault must be noticed within a bound, never panic, and lose
//! nothing (the checker's verdict).

use crate::common;

use std::time::{Duration, Instant};

use common::bed::{Bed, T, report, verdict};
use common::checker::{Monitor, Run};
use common::proxy::{Cut, Proxy};
use common::*;

/// walrelay running with both links through a proxy.
struct Links {
    bed: Bed,
    pg: Proxy,
    mq: Proxy,
    relay: Relay,
}

/// `confirm_timeout_ms` bounds how long a silent broker goes unnoticed.
async fn links(confirm_timeout_ms: u64) -> Links {
    let bed = Bed::new(&["wal_sender_timeout = 5s"]).await;
    let pg = Proxy::start(&format!("127.0.0.1:{}", bed.pg.port)).await;
    let mq = Proxy::start(&amqp_addr()).await;
    let amqp = format!("amqp://guest:guest@127.0.0.1:{}/%2f", mq.port);
    let cfg = bed.config(&amqp);
    let url = bed
        .url
        .replace(&format!(":{}/", bed.pg.port), &format!(":{}/", pg.port));
    config_set(&cfg, "postgres", "url", &format!("{url:?}"));
    config_set(
        &cfg,
        "rabbitmq",
        "confirm_timeout_ms",
        &confirm_timeout_ms.to_string(),
    );
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;
    Links { bed, pg, mq, relay }
}

fn count(relay: &Relay, needle: &str) -> usize {
    relay.log().matches(needle).count()
}

const ENDED: &str = "session ended; retrying";

/// Waits until walrelay has ended one more session than `before`; returns how long it took.
async fn noticed(relay: &Relay, before: usize, bound: Duration) -> Duration {
    let start = Instant::now();
    while count(relay, ENDED) <= before {
        assert!(
            start.elapsed() < bound,
            "the fault was not noticed within {bound:?}: {}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

async fn finish(name: &str, l: Links, run: Run, monitor: Monitor) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let v = verdict(&l.bed, run, monitor).await;
    report(name, &v, 2);
    v.assert_safe();
    assert!(!l.relay.log().contains("panicked"), "{}", l.relay.log());
    l.bed.finish().await;
}

fn start_load(l: &Links) -> (Run, Monitor) {
    let monitor = Monitor::start(l.bed.url.clone(), l.bed.slot.clone());
    let run = Run::start(&l.bed.url, &l.bed.other_url, l.bed.queue(), 3);
    (run, monitor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn latency_and_slow_bandwidth_on_both_links_lose_nothing() {
    let l = links(5000).await;
    let (run, monitor) = start_load(&l);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for p in [&l.pg, &l.mq] {
        p.set_latency(Duration::from_millis(40));
        p.set_rate(256 * 1024);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    for p in [&l.pg, &l.mq] {
        p.set_latency(Duration::ZERO);
        p.set_rate(0);
    }
    assert_eq!(count(&l.relay, ENDED), 0, "a slow link is not a dead link");
    finish("40 ms latency + 256 KiB/s on both links", l, run, monitor).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reset_on_each_link_mid_stream_is_noticed_and_recovered() {
    let l = links(5000).await;
    let (run, monitor) = start_load(&l);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = count(&l.relay, ENDED);
    l.pg.reset_all();
    let pg = noticed(&l.relay, before, Duration::from_secs(5)).await;
    l.relay.wait_log("streaming", T).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = count(&l.relay, ENDED);
    l.mq.reset_all();
    let mq = noticed(&l.relay, before, Duration::from_secs(5)).await;
    eprintln!("chaos: RST noticed: postgres link {pg:?}, rabbitmq link {mq:?}");
    finish("RST on each link", l, run, monitor).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_truncated_mid_frame_on_each_link_is_an_error_not_a_panic() {
    let l = links(5000).await;
    let (run, monitor) = start_load(&l);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut times = Vec::new();
    for (proxy, how) in [
        (&l.pg, Cut::Fin),
        (&l.mq, Cut::Fin),
        (&l.pg, Cut::Reset),
        (&l.mq, Cut::Reset),
    ] {
        let before = count(&l.relay, ENDED);
        proxy.truncate_next(how);
        times.push(noticed(&l.relay, before, Duration::from_secs(8)).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("chaos: truncation noticed after {times:?}");
    finish(
        "truncated frames (FIN and RST) on each link",
        l,
        run,
        monitor,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blackholed_broker_link_is_noticed_within_the_confirm_timeout() {
    let l = links(2000).await;
    let (run, monitor) = start_load(&l);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = count(&l.relay, ENDED);
    // Everything through the broker proxy goes quiet, new connections included: the stalled
    // confirms end the session, and the reconnect's handshake must time out, not hang.
    l.mq.blackhole(true);
    let first = noticed(&l.relay, before, Duration::from_secs(6)).await;
    let held = l.bed.slot_lsn().await;
    let second = noticed(&l.relay, before + 1, Duration::from_secs(6)).await;
    assert_eq!(
        held,
        l.bed.slot_lsn().await,
        "the slot advanced while the broker was silent"
    );
    l.mq.blackhole(false);
    let log = l.relay.log();
    assert!(log.contains("no broker confirm"), "{log}");
    assert!(log.contains("no complete connection"), "{log}");
    eprintln!(
        "chaos: blackholed broker noticed after {first:?}; reconnect timed out after {second:?}"
    );
    finish("blackholed broker link", l, run, monitor).await;
}
