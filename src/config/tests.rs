//! Config tests: defaults, overrides, and errors that name the key.

use super::*;

const MINIMAL: &str = r#"
[filter]
include = ["public.orders", "public.users"]
[postgres]
url = "postgres://walrelay:s3cret-canary@db:5432/app"
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
    assert_eq!(s.source.slot, "walrelay");
    assert_eq!(s.source.publication, "walrelay");
    assert_eq!(s.sink.exchange, "walrelay");
    assert_eq!(s.filter.include.len(), 2);
    assert!(s.filter.rules.is_empty());
    assert_eq!(s.filter.flood.policy, crate::filter::FloodPolicy::Publish);
    assert!(!s.filter.counts_changes());
    assert_eq!(s.sink.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
    assert_eq!(s.source.conn.dbname, "app");
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
    assert_eq!(s.source.conn.host, "h2");
    assert_eq!(s.source.slot, "slot_two");
    assert_eq!(s.sink.max_in_flight, 77);
}

#[test]
fn wrong_types_name_the_full_key_and_its_line_and_never_the_value() {
    let text = format!("{MINIMAL}[service]\nshutdown_timeout_ms = \"ten\"\n");
    let e = err(&text, &[]);
    assert_eq!(
        e.to_string(),
        "config key service.shutdown_timeout_ms (line 9): expected milliseconds as a non-negative integer, found a string"
    );
    let e = err(
        &MINIMAL.replace("[rabbitmq]\n", "[rabbitmq]\nmax_in_flight = -5\n"),
        &[],
    );
    assert_eq!(e.key, "rabbitmq.max_in_flight");
    assert_eq!(e.line, Some(7));
    assert!(e.message.contains("negative"), "{e}");
    // A secret in a mistyped value is never echoed.
    let e = err(
        &MINIMAL.replace(
            "[rabbitmq]\n",
            "[rabbitmq]\ndeclare_exchange = \"s3cret-canary\"\n",
        ),
        &[],
    );
    assert!(!e.to_string().contains("canary"), "{e}");
    assert_eq!(e.key, "rabbitmq.declare_exchange");
    // Keys in arrays of tables have their index.
    let e = err(
        &format!(
            "{MINIMAL}[[filter.table]]\nname = \"a\"\n[[filter.table]]\nname = \"b\"\npartitions = \"8\"\n"
        ),
        &[],
    );
    assert_eq!(
        (e.key.as_str(), e.line),
        ("filter.table[1].partitions", Some(12)),
        "{e}"
    );
    // Errors found after parsing have their line too.
    let e = err(&format!("{MINIMAL}[service]\nlog_format = \"xml\"\n"), &[]);
    assert_eq!((e.key.as_str(), e.line), ("service.log_format", Some(9)));
    // Unknown keys name themselves.
    let e = err(
        &MINIMAL.replace("[rabbitmq]\n", "[rabbitmq]\nexchnage = \"x\"\n"),
        &[],
    );
    assert_eq!(
        (e.key.as_str(), e.line),
        ("rabbitmq.exchnage", Some(7)),
        "{e}"
    );
}

#[test]
fn environment_errors_name_the_variable() {
    let e = err(MINIMAL, &[("WALRELAY_SERVICE_SHUTDOWN_TIMEOUT_MS", "ten")]);
    assert_eq!(e.key, "service.shutdown_timeout_ms");
    assert!(
        e.message.starts_with(
            "from environment variable WALRELAY_SERVICE_SHUTDOWN_TIMEOUT_MS: expected"
        ),
        "{e}"
    );
    assert_eq!(e.line, None);
    let e = err(MINIMAL, &[("WALRELAY_POSTGRES_SLOTT", "x")]);
    assert!(
        e.message.contains("WALRELAY_POSTGRES_SLOTT") && e.message.contains("slott"),
        "{e}"
    );
    let e = err(MINIMAL, &[("WALRELAY_NOPE_X", "1")]);
    assert_eq!(e.key, "WALRELAY_NOPE_X");
    assert!(e.message.contains("unknown environment variable"), "{e}");
    let e = err(MINIMAL, &[("WALRELAY_SLOT", "x")]);
    assert_eq!(e.key, "WALRELAY_SLOT");
    // The binary's own variables are not overrides.
    for var in ["WALRELAY_LOG", "WALRELAY_CONFIG", "WALRELAY_LOG_FORMAT"] {
        assert!(
            from_str_with_env(MINIMAL, &[(var.into(), "x".into())]).is_ok(),
            "{var}"
        );
    }
    // A value the environment set is reported as the environment's, without a file line.
    let e = err(MINIMAL, &[("WALRELAY_POSTGRES_SLOT", "Bad-Slot")]);
    assert!(e.message.contains("WALRELAY_POSTGRES_SLOT"), "{e}");
    assert_eq!(e.line, None);
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
    assert_eq!((e.key.as_str(), e.line), ("postgres.slot", Some(6)), "{e}");
    assert_eq!(e.message, "expected a string, found an integer");
    let e = err(MINIMAL, &[("WALRELAY_POSTGRES_SLOT", "Bad-Slot")]);
    assert_eq!(e.key, "postgres.slot");
    let e = err(&MINIMAL.replace("public.users", "a.b.c"), &[]);
    assert_eq!(e.key, "filter.include");
    let e = err(
        &format!("{MINIMAL}routing_key = \"{{schema}}.{{tbl}}\"\n"),
        &[],
    );
    assert_eq!(e.key, "rabbitmq.routing_key");
    let e = err(MINIMAL, &[("AMQP_URL", "http://x")]);
    assert_eq!(e.key, "rabbitmq.url");
    // A duplicate key is a syntax error; it still names the key and its line.
    let e = err(
        &format!("{MINIMAL}exchange = \"a\"\nexchange = \"b\"\n"),
        &[],
    );
    assert_eq!(
        (e.key.as_str(), e.line),
        ("rabbitmq.exchange", Some(9)),
        "{e}"
    );
    // A broken value is located by line, never quoted: it could hold a password.
    let e = err(
        &MINIMAL.replace("s3cret-canary@db:5432/app\"", "s3cret-canary@db:5432/app"),
        &[],
    );
    assert!(
        e.line == Some(5) && !e.to_string().contains("s3cret"),
        "{e}"
    );
}

#[test]
fn secrets_never_appear_in_debug_or_errors() {
    let s = from_str_with_env(MINIMAL, &[]).unwrap();
    assert!(!format!("{s:?}").contains("s3cret-canary"));
    let e = err(&MINIMAL.replace("db:5432", "db:notaport"), &[]);
    assert!(!e.to_string().contains("s3cret-canary"), "{e}");
}

#[test]
fn filter_and_flood_sections() {
    let text = format!(
        "{MINIMAL}
[flood]
max_changes = 1000
marker_prefix = \"walrelay\"
origins = [\"bulk_loader\"]
policy = \"summarize\"
reroute_exchange = \"slow\"
[[filter.table]]
name = \"public.orders\"
ops = [\"insert\", \"update\"]
ignore = [\"card\"]
where = \"new.status == 'paid'\"
skip_noop_updates = true
exchange = \"orders\"
routing_key = \"orders.{{op}}.{{key.id}}.{{partition}}\"
partitions = 8
flood_policy = \"reroute\"
"
    );
    let s = from_str_with_env(&text, &[]).unwrap();
    let r = &s.filter.rules[0];
    assert!(r.ops.contains(crate::event::Op::Update) && !r.ops.contains(crate::event::Op::Delete));
    assert_eq!(r.partitions, Some(8));
    assert_eq!(s.filter.flood.max_changes, Some(1000));
    assert!(s.filter.counts_changes());
    assert_eq!(s.sink.extra_exchanges, ["orders", "slow"]);
    // Environment overrides reach the new sections too.
    let s = from_str_with_env(&text, &[("WALRELAY_FLOOD_MAX_CHANGES".into(), "5".into())]).unwrap();
    assert_eq!(s.filter.flood.max_changes, Some(5));
}

#[test]
fn filter_errors_name_the_key() {
    let table =
        |body: &str| format!("{MINIMAL}\n[[filter.table]]\nname = \"public.orders\"\n{body}\n");
    let cases = [
        ("ops = [\"upsert\"]", "filter.table[0].ops"),
        ("ops = []", "filter.table[0].ops"),
        ("where = \"new.a +\"", "filter.table[0].where"),
        ("where = \"size(new.a) > 1\"", "filter.table[0].where"),
        ("partitions = 0", "filter.table[0].partitions"),
        (
            "routing_key = \"{partition}\"",
            "filter.table[0].routing_key",
        ),
        ("routing_key = \"{key}\"", "filter.table[0].routing_key"),
        (
            "columns = [\"a\"]\nignore = [\"a\"]",
            "filter.table[0].ignore",
        ),
        ("flood_policy = \"drop\"", "filter.table[0].flood_policy"),
        ("flood_policy = \"reroute\"", "flood.reroute_exchange"),
        ("max_changes = 0", "filter.table[0].max_changes"),
    ];
    for (body, key) in cases {
        let e = err(&table(body), &[]);
        assert_eq!(e.key, key, "{body}: {e}");
    }
    let e = err(
        &format!("{MINIMAL}\n[[filter.table]]\nops = [\"insert\"]\n"),
        &[],
    );
    assert_eq!(e.key, "filter.table[0].name");
    let e = err(&format!("{MINIMAL}routing_key = \"{{partition}}\"\n"), &[]);
    assert_eq!(e.key, "rabbitmq.routing_key");
    let e = err(&format!("{MINIMAL}\n[flood]\nmax_changes = 0\n"), &[]);
    assert_eq!(e.key, "flood.max_changes");
}

#[test]
fn stream_partitions_make_a_super_stream_within_limits() {
    let stream = |extra: &str| {
        format!(
            "[filter]\ninclude = [\"public.a\"]\n[postgres]\nurl = \"postgres://u@db/app\"\n\
             [stream]\nurl = \"rabbitmq-stream://guest:guest@127.0.0.1:5552/%2f\"\nstream = \"orders\"\n{extra}"
        )
    };
    let s = from_str_with_env(&stream("partitions = 8\n"), &[]).unwrap();
    assert_eq!(s.sink.stream.as_ref().unwrap().partitions, Some(8));
    assert_eq!(s.sink.exchange, "orders");
    let plain = from_str_with_env(&stream(""), &[]).unwrap();
    assert_eq!(plain.sink.stream.unwrap().partitions, None);
    for bad in ["partitions = 0\n", "partitions = 257\n"] {
        let e = err(&stream(bad), &[]);
        assert_eq!(e.key, "stream.partitions", "{bad}: {e}");
    }
}
