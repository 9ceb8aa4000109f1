//! `scripts/demo.sh` in its interactive mode, as a newcomer runs it: it cannot fail silently.
//! A taken port stops it within seconds with walrelay's own error and the log kept; with
//! 9187 taken (postgres_exporter's default) it picks another port and says which; Ctrl-C
//! removes everything it made, the exchange on the shared broker included.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use amqprs::channel::ExchangeDeclareArguments;
use common::*;

/// The interactive demo as a child, its output in files.
struct Demo {
    child: Child,
    dir: tempfile::TempDir,
}

impl Demo {
    fn start(env: &[(&str, &str)]) -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("bash")
            .arg("scripts/demo.sh")
            .env("WALRELAY_BIN", env!("CARGO_BIN_EXE_walrelay"))
            .env_remove("DATABASE_URL")
            .env_remove("WALRELAY_HTTP_LISTEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("out")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("err")).unwrap())
            .spawn()
            .unwrap();
        Demo { child, dir }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("err")).unwrap_or_default()
    }

    async fn wait_stderr(&self, needle: &str, timeout: Duration) {
        wait_for(&format!("the demo to say {needle:?}"), timeout, || async {
            self.stderr().contains(needle).then_some(())
        })
        .await;
    }

    async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "the demo did not exit within {timeout:?}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The word after `prefix` in the demo's stderr.
    fn said(&self, prefix: &str) -> String {
        let err = self.stderr();
        let rest = err
            .split(prefix)
            .nth(1)
            .unwrap_or_else(|| panic!("{prefix:?} not in:\n{err}"));
        // `say` prints in bold: the escape that ends it follows the last word.
        let word = rest.split_whitespace().next().unwrap();
        word.split('\x1b').next().unwrap().to_owned()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
    }
}

/// Whether the exchange exists on the shared broker (a passive declare).
async fn exchange_exists(name: &str) -> bool {
    let url = walrelay::sink::AmqpUrl::parse(amqp_url()).unwrap();
    let (link, _) = walrelay::sink::Link::open(&url, "demo test", Duration::from_secs(10))
        .await
        .unwrap();
    let ch = link.channel().await.unwrap();
    let passive = ExchangeDeclareArguments::new(name, "topic")
        .passive(true)
        .finish();
    let exists = ch.exchange_declare(passive).await.is_ok();
    link.close().await;
    exists
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_stops_the_demo_within_seconds_with_walrelays_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let mut demo = Demo::start(&[("WALRELAY_HTTP_LISTEN", &listen)]);
    demo.wait_stderr("starting walrelay", Duration::from_secs(120))
        .await;
    let started = Instant::now();
    let status = demo.wait_exit(Duration::from_secs(30)).await;
    let err = demo.stderr();
    assert!(!status.success(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        err.contains("demo FAILED: walrelay stopped")
            && err.contains(&format!("cannot listen on {listen} (http.listen)")),
        "{err}"
    );
    // The log outlives the demo's temporary directory.
    let kept = demo.said("logs kept in ");
    let log = std::fs::read_to_string(format!("{kept}/walrelay.log")).unwrap();
    assert!(log.contains("cannot listen on"), "{log}");
    let _ = std::fs::remove_dir_all(kept);
    let name = demo.said("exchange, slot and publication of this run: ");
    assert!(
        !exchange_exists(&name).await,
        "exchange {name} was left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_9187_taken_the_demo_picks_a_port_streams_and_removes_everything_on_ctrl_c() {
    // Held for the whole run, as postgres_exporter would (already taken is as good).
    let _exporter = std::net::TcpListener::bind("127.0.0.1:9187").ok();
    let mut demo = Demo::start(&[]);
    demo.wait_stderr("events below", Duration::from_secs(180))
        .await;
    let err = demo.stderr();
    assert!(err.contains("port 9187 is taken"), "{err}");
    let metrics = demo.said("metrics: ");
    assert!(!metrics.contains(":9187/"), "{metrics}");
    let name = demo.said("exchange, slot and publication of this run: ");
    let workdir = demo
        .said("starting walrelay (log: ")
        .trim_end_matches(')')
        .trim_end_matches("/walrelay.log")
        .to_owned();
    // Events arrive, and /metrics answers on the port it printed.
    wait_for("events from the demo", Duration::from_secs(60), || async {
        demo.stdout()
            .contains("public.orders.insert ")
            .then_some(())
    })
    .await;
    let port: u16 = metrics
        .trim_start_matches("http://")
        .split(['/', ':'])
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let (code, body) = http_get(port, "/metrics");
    assert_eq!(code, 200);
    assert!(body.contains("walrelay_events_published_total"), "{body}");
    assert!(exchange_exists(&name).await);

    // Ctrl-C: everything goes, the exchange on the broker too.
    let _ = Command::new("kill")
        .args(["-INT", &demo.child.id().to_string()])
        .status();
    demo.wait_exit(Duration::from_secs(60)).await;
    assert!(
        !std::path::Path::new(&workdir).exists(),
        "{workdir} is still there"
    );
    assert!(
        !exchange_exists(&name).await,
        "exchange {name} was left behind"
    );
    assert!(!demo.stderr().contains("FAILED"), "{}", demo.stderr());
}
