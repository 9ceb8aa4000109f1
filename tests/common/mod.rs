//! Test harness: a private PostgreSQL cluster per test (initdb into a temp dir, logical
//! replication on, a free port), the local RabbitMQ, and walrelay run as a child process so a
//! test can `kill -9` it. Waits are conditions with timeouts, never fixed sleeps.
//!
//! By concern: [`cluster`] (PostgreSQL), [`queue`] (a consumer on RabbitMQ), [`relay`] (the
//! walrelay process and its config), [`observe`] (HTTP, metrics, memory), [`scene`] (all of
//! them set up for one test, with an exchange or a stream), [`bed`] (the chaos suites' scene),
//! [`broker`] (a private RabbitMQ node), [`rabbitmq4`] (the shared RabbitMQ 4 node, taken
//! shared or alone), [`stream`] (stream consumers), [`proxy`] (a fault-injecting TCP proxy), [`replica`] (the convergence oracle: a consumer's
//! copy built from the events, compared with the tables),
//! [`checker`] (the at-least-once checker of the chaos suite).
#![allow(unreachable_pub)]

pub mod bed;
pub mod broker;
pub mod checker;
pub mod cluster;
pub mod observe;
pub mod proxy;
pub mod queue;
pub mod rabbitmq4;
pub mod relay;
pub mod replica;
pub mod scene;
pub mod stream;

use std::net::TcpListener;
use std::time::{Duration, Instant};

pub use cluster::*;
pub use observe::*;
pub use queue::*;
pub use relay::*;

/// The broker the tests use: the system's RabbitMQ, or `WALRELAY_TEST_AMQP_URL` (e.g. RabbitMQ 4
/// on 5673, as `scripts/rabbitmq-matrix.sh` runs the AMQP tests).
pub fn amqp_url() -> &'static str {
    static URL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        std::env::var("WALRELAY_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
    });
    &URL
}

/// `host:port` of that broker's AMQP listener (for the fault-injecting proxies).
pub fn amqp_addr() -> String {
    let u = walrelay::sink::AmqpUrl::parse(amqp_url()).expect("an AMQP URL");
    format!("{}:{}", u.host, u.port)
}

/// A unique name for this test's objects.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` until it returns Some or `timeout` passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
