//! `walrelay tail` outlives a broker restart: it reconnects, subscribes again and goes on
//! printing, on a named queue (nothing printed twice, nothing missed) and on its temporary
//! queue (the events from its new subscription on). The broker is a private node the test
//! restarts with `kill -9`, so the shared broker other tests use is left alone.

use crate::common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::broker::Broker;
use common::scene::{Consumer, Scene, Setup};
use common::*;

const T: Duration = Duration::from_secs(90);

/// A `walrelay tail` child with its stdout and stderr in files.
struct Tail {
    child: Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl Tail {
    fn start(config: &Path, dir: &Path, name: &str, args: &[&str]) -> Tail {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let child = Command::new(env!("CARGO_BIN_EXE_walrelay"))
            .arg("tail")
            .args(args)
            .arg("--config")
            .arg(config)
            .env_remove("AMQP_URL")
            .env_remove("DATABASE_URL")
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Tail { child, out, err }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// The key ids of the printed events, in order.
    fn ids(&self) -> Vec<i64> {
        self.stdout()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(_, body)| serde_json::from_str::<serde_json::Value>(body).ok())
            .filter_map(|v| v["key"]["id"].as_i64())
            .collect()
    }

    async fn wait_stderr(&self, needle: &str, times: usize) {
        wait_for(&format!("tail to say {needle:?} {times}x"), T, || async {
            (self.stderr().matches(needle).count() >= times).then_some(())
        })
        .await;
    }

    async fn wait_ids(&self, want: &[i64]) {
        wait_for(&format!("tail to print ids {want:?}"), T, || async {
            (self.ids() == want).then_some(())
        })
        .await;
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_reconnects_when_the_broker_restarts() {
    let broker = Broker::start(&[]).await;
    let url = broker.url();
    let s = Scene::with(
        "CREATE TABLE a (id int PRIMARY KEY);",
        &["public.a"],
        Setup {
            consumer: Consumer::Absent,
            amqp_url: &url,
            ..Setup::default()
        },
    )
    .await;
    let dir = s.dir.path();
    let queue = unique("tailq");
    let mut named = Tail::start(
        &s.config,
        dir,
        "named",
        &["--queue", &queue, "--binding", "#", "--ack"],
    );
    named.wait_stderr("consuming queue", 1).await;
    let mut temporary = Tail::start(&s.config, dir, "temporary", &[]);
    temporary
        .wait_stderr("consuming a temporary queue", 1)
        .await;
    let relay = s.start_streaming().await;
    s.sql("INSERT INTO a VALUES (1), (2), (3);").await;
    named.wait_ids(&[1, 2, 3]).await;
    temporary.wait_ids(&[1, 2, 3]).await;

    // A hard restart: no close frames, the node comes back on the same data directory (the
    // durable queue and the exchange survive, the temporary queue does not).
    broker.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.boot().await;
    named.wait_stderr("connection lost", 1).await;
    temporary.wait_stderr("connection lost", 1).await;
    named.wait_stderr("consuming queue", 2).await;
    temporary
        .wait_stderr("consuming a temporary queue", 2)
        .await;
    assert!(named.alive() && temporary.alive());
    assert!(
        temporary
            .stderr()
            .contains("events published until then are not shown"),
        "{}",
        temporary.stderr()
    );

    s.sql("INSERT INTO a VALUES (4), (5), (6);").await;
    named.wait_ids(&[1, 2, 3, 4, 5, 6]).await;
    temporary.wait_ids(&[1, 2, 3, 4, 5, 6]).await;
    assert!(named.alive() && temporary.alive());
    drop(relay);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_fails_at_once_when_it_never_connected() {
    let s = Scene::new("CREATE TABLE a (id int PRIMARY KEY);", &["public.a"]).await;
    let url = format!("\"amqp://guest:wrong@{}/%2f\"", amqp_addr());
    s.set("rabbitmq", "url", &url);
    let started = std::time::Instant::now();
    let out = s.command(&["tail", "--count", "1"]);
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect"), "{err}");
    s.finish().await;
}
