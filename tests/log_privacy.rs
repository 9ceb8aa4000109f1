//! No row value in any log line, on any failure path that logs: a canary value in a row, then
//! an unroutable message, a nack from a full queue, an oversized row and a broker connection
//! cut, each with the most verbose logging walrelay allows; the whole log is searched for the
//! canary as text and as the byte list a dependency would print.

use crate::common;

use std::time::Duration;

use common::proxy::Proxy;
use common::scene::Scene;
use common::*;

const T: Duration = Duration::from_secs(60);
const CANARY: &str = "canary-7f3e9a@example.com";

fn assert_no_canary(what: &str, log: &str) {
    assert!(!log.is_empty(), "{what}: empty log");
    assert!(
        !log.contains(CANARY),
        "{what}: the canary is in the log:\n{log}"
    );
    // As a dependency prints a body: the bytes of "canary-" in decimal.
    let bytes: Vec<String> = CANARY.bytes().take(7).map(|b| b.to_string()).collect();
    for sep in [", ", ","] {
        assert!(
            !log.contains(&bytes.join(sep)),
            "{what}: the canary's bytes are in the log"
        );
    }
}

fn verbose() -> [(&'static str, &'static str); 1] {
    [("WALRELAY_LOG", "trace")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_failure_path_logs_a_row_value() {
    let s = Scene::new(
        "CREATE TABLE users (id int PRIMARY KEY, email text, bio text);",
        &["public.users"],
    )
    .await;
    let insert =
        |id: i32| format!("INSERT INTO users VALUES ({id}, '{CANARY}', repeat('{CANARY}', 20));");

    // 1. Unroutable: nothing bound; walrelay retries and logs each attempt.
    s.queue().unbind("#").await;
    let relay = Relay::start_env(&s.config, &verbose());
    relay.wait_log("streaming", T).await;
    s.sql(&insert(1)).await;
    relay.wait_log("unroutable", T).await;
    wait_for("a second unroutable attempt", T, || {
        let n = relay.log().matches("unroutable").count();
        async move { (n >= 2).then_some(()) }
    })
    .await;
    assert_no_canary("unroutable", &relay.log());
    drop(relay);

    // 2. Nacked: a full queue that rejects publishes.
    let args = queue_args(&[
        ("x-max-length", FieldValue::I(0)),
        ("x-overflow", text("reject-publish")),
    ]);
    let full = TestQueue::named(amqp_url(), &s.exchange, &unique("full"), Some("#"), args).await;
    let relay = Relay::start_env(&s.config, &verbose());
    relay.wait_log("nacked", T).await;
    assert_no_canary("nacked", &relay.log());
    drop(relay);
    full.delete_queue().await;

    // 3. Oversized: the row is bigger than rabbitmq.max_message_bytes.
    s.queue().bind("#").await;
    s.set("rabbitmq", "max_message_bytes", "256");
    let mut relay = Relay::start_env(&s.config, &verbose());
    assert!(!relay.wait_exit(T).await.success());
    let log = relay.log();
    assert!(log.contains("max_message_bytes"), "{log}");
    assert_no_canary("oversized", &log);
    s.set("rabbitmq", "max_message_bytes", "16777216");

    // 4. The broker connection cut while messages are in flight.
    let proxy = Proxy::start(&amqp_addr()).await;
    s.set(
        "rabbitmq",
        "url",
        &format!("\"amqp://guest:guest@127.0.0.1:{}/%2f\"", proxy.port),
    );
    let relay = Relay::start_env(&s.config, &verbose());
    relay.wait_log("streaming", T).await;
    for id in 2..40 {
        s.sql(&insert(id)).await;
    }
    proxy.sever_all();
    relay.wait_log("session ended; retrying", T).await;
    let got = s.queue().take_distinct(39, T).await;
    assert_eq!(got.len(), 39, "every row arrives after the cut");
    assert!(got.iter().all(|m| m.body["new"]["email"] == CANARY));
    assert_no_canary("broker cut", &relay.log());
    s.finish().await;
}
