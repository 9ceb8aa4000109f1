//! Config tests: defaults, overrides, and errors that name the key.

use super::*;

const MINIMAL: &str = r#"
[postgres]
url = "postgres://walrelay:s3cret-canary@db:5432/app"
tables = ["public.orders", "public.users"]
[rabbitmq]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
"#;

fn err(text: &str, env: &[(&str, &str)]) -> ConfigError {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    from_str_with_env(text, &env).unwrap_err()
}

#[test]
fn minimal_file_gets_defaults() {
    let s = from_str_with_env(MINIMAL, &[]).unwrap();
    assert_eq!(s.slot, "walrelay");
    assert_eq!(s.publication, "walrelay");
    assert_eq!(s.sink.exchange, "walrelay");
    assert_eq!(s.tables.len(), 2);
    assert_eq!(s.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
    assert_eq!(s.postgres.dbname, "app");
}

#[test]
fn environment_overrides_urls_and_keys() {
    let env = vec![
        (
            "DATABASE_URL".to_string(),
            "postgres://other@h2/db2?sslmode=disable".to_string(),
        ),
        ("WALRELAY_POSTGRES_SLOT".to_string(), "slot_two".to_string()),
        (
            "WALRELAY_RABBITMQ_MAX_IN_FLIGHT".to_string(),
            "77".to_string(),
        ),
    ];
    let s = from_str_with_env(MINIMAL, &env).unwrap();
    assert_eq!(s.postgres.host, "h2");
    assert_eq!(s.slot, "slot_two");
    assert_eq!(s.max_in_flight, 77);
}

#[test]
fn errors_name_the_key() {
    assert_eq!(
        err(
            "[postgres]\nslot = \"x\"\n[rabbitmq]\nurl = \"amqp://h\"",
            &[]
        )
        .key,
        "postgres.url"
    );
    let e = err(&format!("{MINIMAL}\n[service]\nlog_format = \"xml\""), &[]);
    assert_eq!(e.key, "service.log_format");
    let e = err(&MINIMAL.replace("[rabbitmq]", "slott = 1\n[rabbitmq]"), &[]);
    assert!(e.message.contains("slott"), "{e}");
    let e = err(&MINIMAL.replace("[rabbitmq]", "slot = 5\n[rabbitmq]"), &[]);
    assert!(e.message.contains("invalid type"), "{e}");
    let e = err(MINIMAL, &[("WALRELAY_POSTGRES_SLOT", "Bad-Slot")]);
    assert_eq!(e.key, "postgres.slot");
    let e = err(&MINIMAL.replace("public.users", "users"), &[]);
    assert_eq!(e.key, "postgres.tables");
    let e = err(
        &format!("{MINIMAL}routing_key = \"{{schema}}.{{tbl}}\"\n"),
        &[],
    );
    assert_eq!(e.key, "rabbitmq.routing_key");
    let e = err(MINIMAL, &[("AMQP_URL", "http://x")]);
    assert_eq!(e.key, "rabbitmq.url");
}

#[test]
fn secrets_never_appear_in_debug_or_errors() {
    let s = from_str_with_env(MINIMAL, &[]).unwrap();
    assert!(!format!("{s:?}").contains("s3cret-canary"));
    let e = err(&MINIMAL.replace("db:5432", "db:notaport"), &[]);
    assert!(!e.to_string().contains("s3cret-canary"), "{e}");
}
