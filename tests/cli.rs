//! The binary's answers to a user's mistakes: a config value of the wrong type names the key's
//! full path and line without echoing the value, exits 2 and ends its line; a server without
//! TLS under the default sslmode says what to do.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn a_wrong_type_names_the_key_and_line_and_never_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walrelay.toml");
    for (line, expect) in [
        (
            "shutdown_timeout_ms = \"s3cret-canary\"",
            "config key service.shutdown_timeout_ms (line 7): expected milliseconds as a non-negative integer, found a string\n",
        ),
        (
            "reconnect_min_ms = -5",
            "config key service.reconnect_min_ms (line 7): expected milliseconds as a non-negative integer, found a negative number\n",
        ),
    ] {
        std::fs::write(
            &path,
            format!(
                "[postgres]\nurl = \"postgres://u@h/db\"\n[rabbitmq]\nurl = \"amqp://h\"\n\
                 [filter]\n[service]\n{line}\n"
            ),
        )
        .unwrap();
        let out = walrelay(&path, &["check-config"]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.ends_with(expect), "{err:?}");
        assert!(!err.contains("canary"), "{err}");
    }
    // An unknown WALRELAY_ variable names the variable, not the file.
    std::fs::write(
        &path,
        "[postgres]\nurl = \"postgres://u@h/db\"\n[rabbitmq]\nurl = \"amqp://h\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["check-config", "--config"])
        .arg(&path)
        .env("WALRELAY_SERVICE_SHUTDOWN_TIMEOUT", "10")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("WALRELAY_SERVICE_SHUTDOWN_TIMEOUT") && err.contains("unknown key"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_tls_under_the_default_sslmode_says_what_to_do() {
    let (pg, db, _client) = PgCluster::with_db("CREATE TABLE t (id int PRIMARY KEY);").await;
    let dir = tempfile::tempdir().unwrap();
    let url = pg.url(&db).replace("?sslmode=disable", "");
    let cfg = write_config(
        dir.path(),
        &url,
        amqp_url(),
        &unique("slot"),
        &unique("ex"),
        &["public.t"],
        "",
    );
    let mut relay = Relay::start(&cfg);
    let status = relay.wait_exit(Duration::from_secs(60)).await;
    assert!(!status.success());
    let log = relay.log();
    assert!(
        log.contains("sslmode=verify-full (the default) requires it")
            && log.contains("add sslmode=disable to postgres.url"),
        "{log}"
    );
    let doctor = walrelay(&cfg, &["doctor"]);
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(text.contains("sslmode=disable"), "{text}");
}

#[test]
fn check_config_show_prints_the_effective_configuration_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walrelay.toml");
    std::fs::write(
        &path,
        "[postgres]\nurl = \"postgres://u:s3cret-canary@h/db\"\n[rabbitmq]\nurl = \"amqp://h\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["check-config", "--show", "--config"])
        .arg(&path)
        .env("WALRELAY_POSTGRES_SLOT", "from_env")
        .env("AMQP_URL", "amqp://guest:another-canary@broker:5672/%2f")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("slot = \"from_env\""), "{text}");
    assert!(text.contains("postgres://u:redacted@h/db"), "{text}");
    assert!(
        text.contains("amqp://guest:redacted@broker:5672/%2f"),
        "{text}"
    );
    assert!(!text.contains("canary"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_line_shows_walrelay_working() {
    let s = common::scene::Scene::new("CREATE TABLE t (id int PRIMARY KEY);", &["public.t"]).await;
    s.set("service", "progress_interval_ms", "300");
    let relay = s.start_streaming().await;
    s.sql("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);")
        .await;
    s.queue().take(2, Duration::from_secs(30)).await;
    // Each line counts what happened since the previous one: the sums cover both changes.
    let sum = |log: &str, field: &str| -> u64 {
        log.lines()
            .filter(|l| l.contains(" progress "))
            .filter_map(|l| {
                let v = l.split(&format!("{field}=")).nth(1)?;
                v.split(' ').next()?.parse::<u64>().ok()
            })
            .sum()
    };
    wait_for(
        "progress lines counting both",
        Duration::from_secs(30),
        || {
            let log = relay.log();
            // One simple query, one transaction (more may come from tables nobody publishes).
            let done = sum(&log, "events") == 2 && sum(&log, "transactions") >= 1;
            async move { done.then_some(()) }
        },
    )
    .await;
    s.finish().await;
}
