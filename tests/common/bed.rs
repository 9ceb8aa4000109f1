//! The chaos test bed: a [`Scene`] with the checker's schema (tables t0–t2) and a second,
//! unpublished database, a queue on a broker (the shared one, or a private node) or a stream on
//! RabbitMQ 4, and the verdict helpers that every fault scenario ends with.

use std::time::Duration;

use super::checker::{self, Monitor, Run, SCHEMA};
use super::scene::{Scene, Setup, Sink};
use super::*;

pub const T: Duration = Duration::from_secs(120);

/// `WALRELAY_CHAOS_LONG=1` selects the long variants.
pub fn long() -> bool {
    std::env::var("WALRELAY_CHAOS_LONG").is_ok_and(|v| v == "1")
}

/// A scene with the workload's schema and a second, unpublished database (its writes are
/// the noise the slot must skip).
pub struct Bed {
    pub scene: Scene,
    /// The published database's URL.
    pub url: String,
    pub other_url: String,
}

impl std::ops::Deref for Bed {
    type Target = Scene;
    fn deref(&self) -> &Scene {
        &self.scene
    }
}

const TABLES: [&str; 3] = ["public.t0", "public.t1", "public.t2"];

impl Bed {
    /// A bed whose queue lives on the shared broker.
    pub async fn new(conf: &[&str]) -> Bed {
        Bed::on(conf, amqp_url(), FieldTable::default()).await
    }

    /// A bed whose queue (declared with `queue_args`) lives on the broker at `amqp`.
    pub async fn on(conf: &[&str], amqp: &str, queue_args: FieldTable) -> Bed {
        let setup = Setup {
            conf,
            amqp_url: amqp,
            queue_on: amqp,
            queue_args,
            ..Setup::default()
        };
        Bed::with(setup).await
    }

    /// A bed publishing to a stream on RabbitMQ 4 (its scene's config); `alone` for a test
    /// that stops or restarts the node.
    pub async fn stream(alone: bool) -> Bed {
        let sink = if alone {
            Sink::StreamAlone("")
        } else {
            Sink::Stream("")
        };
        Bed::with(Setup {
            sink,
            ..Setup::default()
        })
        .await
    }

    async fn with(setup: Setup<'_>) -> Bed {
        let scene = Scene::with(SCHEMA, &TABLES, setup).await;
        let other = unique("other");
        scene
            .pg
            .create_db(&other)
            .await
            .batch_execute("CREATE TABLE noise ()")
            .await
            .unwrap();
        Bed {
            url: scene.url(),
            other_url: scene.pg.url(&other),
            scene,
        }
    }

    /// A config for this bed (tables t0–t2) publishing to `amqp`; adjust with `config_set`.
    pub fn config(&self, amqp: &str) -> std::path::PathBuf {
        write_config(
            self.dir.path(),
            &self.url,
            amqp,
            &self.slot,
            &self.exchange,
            &TABLES,
            "",
        )
    }

    /// Deletes the bed's queue and exchange from its broker.
    pub async fn finish(self) {
        self.scene.finish().await;
    }

    pub async fn slot_lsn(&self) -> u64 {
        slot_confirmed(&self.client, &self.slot).await
    }
}

pub fn report(name: &str, v: &checker::Verdict, faults: usize) {
    eprintln!(
        "chaos: {name}: faults={faults} committed={} delivered={} lost={} unexpected={} recovered={} duplicated={} id_mismatch={} order_violations={} passed_unconfirmed={} backwards={}",
        v.committed,
        v.delivered,
        v.lost.len(),
        v.unexpected.len(),
        v.recovered,
        v.duplicated,
        v.id_mismatch.len(),
        v.order_violations.len(),
        v.passed_unconfirmed,
        v.backwards.len()
    );
}

pub async fn verdict(bed: &Bed, run: Run, monitor: Monitor) -> checker::Verdict {
    let (history, deliveries) = run.finish(T).await;
    // Let the slot catch up before the monitor stops (a fresh connection: the server may
    // have restarted under the test's own).
    let client = connect(&bed.url).await;
    let last = current_lsn(&client).await;
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while slot_confirmed(&client, &bed.slot).await < last {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let (max, backwards) = monitor.stop().await;
    checker::check(&history, &deliveries, max, backwards)
}
