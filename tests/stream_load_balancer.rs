//! The stream sink when the address the broker advertises for a stream's leader cannot be
//! reached from walrelay — RabbitMQ behind a load balancer, or in a container whose port is
//! mapped (the broker advertises the container's host name). RabbitMQ 4 is restarted with
//! `stream.advertised_host` set to a name that does not resolve:
//! - without `stream.load_balancer`, `walrelay doctor` fails naming the advertised address
//!   and the key, and walrelay says the same each time it retries; nothing is published and
//!   the slot stays before the change;
//! - with `stream.load_balancer = true`, the change is published through the URL's address
//!   and `walrelay tail` (the client's load-balancer mode) reads it.
//!
//! RabbitMQ 4 alone (`Scene::stream_alone`, `Bed::stream(true)`): the restarts end every connection to the node, which the other
//! stream tests would take for failures of their own.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::scene::Scene;
use common::stream::*;
use common::*;

const T: Duration = Duration::from_secs(120);
const NOWHERE: &str = "walrelay-advertised.invalid";

/// `scripts/rabbitmq4.sh start` with `extra` appended to the node's configuration (a node
/// running with other lines is restarted).
fn rabbitmq4_with(extra: &str) {
    rabbitmq4_env("start", &[("WALRELAY_RABBITMQ4_EXTRA_CONF", extra)]);
}

/// Puts the usual configuration back however the test ends.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        rabbitmq4_with("");
    }
}

fn walrelay(args: &[&str], cfg: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(args)
        .arg("--config")
        .arg(cfg)
        .env_remove("AMQP_URL")
        .env_remove("WALRELAY_TEST_AMQP_URL")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_advertised_leader_is_named_and_load_balancer_mode_publishes() {
    // The scene holds RabbitMQ 4 alone first; the usual configuration comes back before it
    // lets go (dropped in reverse order).
    let s = Scene::stream_alone("CREATE TABLE a (id int PRIMARY KEY)", &["public.a"], "").await;
    let _restore = Restore;
    rabbitmq4_with(&format!("stream.advertised_host = {NOWHERE}"));
    let (client, slot, cfg) = (&s.client, &s.slot, &s.config);

    let doctor = walrelay(&["doctor"], cfg);
    let report = String::from_utf8_lossy(&doctor.stdout).to_string();
    assert!(
        report.contains(&format!("FAIL stream: the node advertises {NOWHERE}:5553"))
            && report.contains("stream.load_balancer = true"),
        "{report}"
    );

    let mut relay = Relay::start(cfg);
    relay.wait_log("streaming", T).await;
    client
        .execute("INSERT INTO a VALUES (1)", &[])
        .await
        .unwrap();
    let end = current_lsn(client).await;
    relay
        .wait_log(
            &format!("is at {NOWHERE}:5553, the address the broker advertises"),
            T,
        )
        .await;
    assert!(
        relay.log().contains("set stream.load_balancer = true"),
        "{}",
        relay.log()
    );
    assert!(slot_confirmed(client, slot).await < end, "the slot moved");
    relay.terminate(T);

    // Through the URL's address.
    s.edit(
        "max_age_secs = 3600\n",
        "max_age_secs = 3600\nload_balancer = true\n",
    );
    let doctor = walrelay(&["doctor"], cfg);
    let report = String::from_utf8_lossy(&doctor.stdout).to_string();
    assert!(
        report.contains("ok   stream: stream.load_balancer: publishing connections go through"),
        "{report}"
    );
    let relay = Relay::start(cfg);
    wait_for("the slot past the change", T, || async {
        (slot_confirmed(client, slot).await >= end).then_some(())
    })
    .await;
    let tail = walrelay(
        &[
            "tail",
            "--offset",
            "first",
            "--count",
            "1",
            "--idle-timeout-secs",
            "20",
        ],
        cfg,
    );
    let out = String::from_utf8_lossy(&tail.stdout).to_string();
    assert!(
        tail.status.success() && out.starts_with("public.a.insert ") && out.contains("\"id\":1"),
        "tail: {out} {}",
        String::from_utf8_lossy(&tail.stderr)
    );
    assert!(
        !relay.log().contains("session ended"),
        "the load balancer mode's session failed: {}",
        relay.log()
    );
    drop(relay);
}
