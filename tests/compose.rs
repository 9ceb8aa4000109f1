//! The demo's wiring (`docker-compose.yml`) exercised against the native services, as far as
//! no engine is needed: RabbitMQ's definitions are loaded (into a vhost of the test's own), the
//! walrelay service runs with its environment and mounted config, the consumer service runs its
//! command and prints the events, and Prometheus' scrape config passes `promtool check config`.

use crate::common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_yaml::Value;

const API: &str = "http://guest:guest@127.0.0.1:15672";

fn curl(method: &str, path: &str, body: Option<&str>) -> (bool, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-f", "-X", method, &format!("{API}{path}")]);
    if let Some(b) = body {
        c.args(["-H", "content-type: application/json", "-d", b]);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn service_env(compose: &Value, service: &str) -> Vec<(String, String)> {
    compose["services"][service]["environment"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.as_str().unwrap().to_owned(),
                        v.as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_wiring_runs_against_the_native_services() {
    let compose: Value =
        serde_yaml::from_str(&std::fs::read_to_string("docker-compose.yml").unwrap()).unwrap();
    // Prometheus' scrape config, by Prometheus' own checker.
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let promtool = home.join(".cache/walrelay/tools/bin/promtool");
    let out = Command::new(&promtool)
        .args(["check", "config", "docker/prometheus/prometheus.yml"])
        .output()
        .expect("promtool (scripts/tools.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // RabbitMQ's definitions, as the rabbitmq service loads them, into a vhost of our own.
    let vhost = unique("demo");
    assert!(curl("PUT", &format!("/api/vhosts/{vhost}"), Some("{}")).0);
    let defs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("docker/rabbitmq/definitions.json").unwrap())
            .unwrap();
    let mut defs = defs;
    for key in ["exchanges", "queues", "bindings", "permissions"] {
        for item in defs[key].as_array_mut().unwrap() {
            item["vhost"] = vhost.clone().into();
        }
    }
    // Only the vhost's own objects: users and vhosts are the broker's.
    let body = serde_json::json!({
        "exchanges": defs["exchanges"], "queues": defs["queues"], "bindings": defs["bindings"],
    });
    assert!(
        curl(
            "POST",
            &format!("/api/definitions/{vhost}"),
            Some(&body.to_string())
        )
        .0
    );

    // The walrelay service: its environment (URLs pointed at the native services) and config.
    let (pg, db, client) =
        PgCluster::with_db(&std::fs::read_to_string("docker/demo/schema.sql").unwrap()).await;
    let amqp = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");
    let mount = compose["services"]["walrelay"]["volumes"][0]
        .as_str()
        .unwrap();
    let config = mount.split(':').next().unwrap();
    let mut env = service_env(&compose, "walrelay");
    for (k, v) in env.iter_mut() {
        match k.as_str() {
            "DATABASE_URL" => *v = pg.url(&db),
            "AMQP_URL" => *v = amqp.clone(),
            _ => {}
        }
    }
    env.push(("WALRELAY_HTTP_LISTEN".into(), "127.0.0.1:0".into()));
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let relay = Relay::start_env(std::path::Path::new(config), &env_ref);
    relay.wait_log("streaming", Duration::from_secs(60)).await;

    // The consumer service's command, with its AMQP_URL.
    let cmd: Vec<String> = compose["services"]["consumer"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let mut consumer = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(&cmd)
        .args(["--count", "2"])
        .env("WALRELAY_CONFIG", config)
        .env("AMQP_URL", &amqp)
        .env("DATABASE_URL", pg.url(&db))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO customers (email, password_hash) VALUES ('new@example.com', 'secret-hash');
             INSERT INTO audit_log (note) VALUES ('not published');
             UPDATE orders SET status = 'paid' WHERE id = 1;",
        )
        .await
        .unwrap();
    let start = Instant::now();
    let output = loop {
        if let Some(_status) = consumer.try_wait().unwrap() {
            break consumer.wait_with_output().unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the consumer printed nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let printed = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 2, "{printed}");
    assert!(
        lines[0].starts_with("public.customers.insert "),
        "{printed}"
    );
    assert!(lines[1].starts_with("public.orders.update "), "{printed}");
    assert!(
        !printed.contains("secret-hash"),
        "the demo filter hides password_hash"
    );
    drop(relay);
    assert!(curl("DELETE", &format!("/api/vhosts/{vhost}"), None).0);
}
