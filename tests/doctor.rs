//! `walrelay doctor` fails wherever `run` would fail at setup, with the same remedy: a role
//! that may not create the publication, a table that does not exist, a table the publication
//! does not hold, and a routing key nothing is bound to (where `run` would hold the stream,
//! and `/readyz` says why).

use crate::common;

use std::time::Duration;

use common::scene::Scene;
use common::*;

const T: Duration = Duration::from_secs(60);

/// Runs doctor; returns (passed, stdout).
fn doctor(s: &Scene) -> (bool, String) {
    let out = s.command(&["doctor"]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Starts walrelay and waits for it to stop; returns its log.
async fn run_fails(s: &Scene) -> String {
    let mut relay = s.start();
    let status = relay.wait_exit(T).await;
    assert!(!status.success(), "{}", relay.log());
    relay.log()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_owns_no_table_fails_doctor_as_it_fails_run() {
    let s = Scene::new(
        "CREATE ROLE owner_role; CREATE TABLE orders (id int PRIMARY KEY); ALTER TABLE orders OWNER TO owner_role;
         CREATE ROLE relay_role LOGIN REPLICATION;",
        &["public.orders"],
    )
    .await;
    let url = s.pg.url(&s.db).replace("postgres@", "relay_role@");
    s.set("postgres", "url", &format!("{url:?}"));
    let (passed, text) = doctor(&s);
    assert!(!passed, "{text}");
    assert!(
        text.contains("FAIL postgres: publication")
            && text.contains("this role may not create it")
            && text.contains("does not own public.orders")
            && text.contains("Ask the tables' owner to run: CREATE PUBLICATION"),
        "{text}"
    );
    let log = run_fails(&s).await;
    assert!(
        log.contains("Ask the tables' owner to run: CREATE PUBLICATION"),
        "{log}"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_and_an_unpublished_table_fail_doctor_as_they_fail_run() {
    let s = Scene::new(
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);",
        &["public.a", "public.nope"],
    )
    .await;
    let (passed, text) = doctor(&s);
    assert!(!passed);
    assert!(
        text.contains("public.nope") && text.contains("does not exist"),
        "{text}"
    );
    let log = run_fails(&s).await;
    assert!(
        log.contains("public.nope") && log.contains("does not exist"),
        "{log}"
    );
    // The publication exists without b: named exactly, b must be added, and both say how.
    s.sql(&format!("CREATE PUBLICATION {} FOR TABLE a", s.slot))
        .await;
    s.set("filter", "include", "[\"public.a\", \"public.b\"]");
    let (passed, text) = doctor(&s);
    assert!(!passed, "{text}");
    let remedy = format!(
        "ALTER PUBLICATION \"{}\" ADD TABLE \"public\".\"b\"",
        s.slot
    );
    assert!(text.contains(&remedy), "{text}");
    let log = run_fails(&s).await;
    assert!(log.contains(&remedy), "{log}");
    // A misspelled name in an existing publication's config is told apart from an unpublished one.
    s.set("filter", "include", "[\"public.a\", \"public.bb\"]");
    let (passed, text) = doctor(&s);
    assert!(!passed);
    assert!(
        text.contains("public.bb") && text.contains("does not exist in this database"),
        "{text}"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbound_routing_key_fails_doctor_and_readyz_names_it() {
    let s = Scene::new("CREATE TABLE a (id int PRIMARY KEY);", &["public.a"]).await;
    // Only deletes are bound: inserts would be unroutable.
    s.queue().unbind("#").await;
    s.queue().bind("*.*.delete").await;
    let (passed, text) = doctor(&s);
    assert!(!passed, "{text}");
    assert!(
        text.contains("public.a.insert") && text.contains("would be unroutable"),
        "{text}"
    );
    // What a backfill would publish is unbound too: said as warnings, before any backfill.
    assert!(
        text.contains("WARN rabbitmq: a backfill would hold the stream")
            && text.contains("public.a.read")
            && text.contains("_walrelay.control.backfill_started"),
        "{text}"
    );
    s.set("control", "schema_events", "true");
    let (_, text) = doctor(&s);
    assert!(
        text.contains("FAIL rabbitmq: control.schema_events is on")
            && text.contains("_walrelay.control.schema_changed"),
        "{text}"
    );
    s.set("control", "schema_events", "false");
    let relay = s.start_streaming().await;
    let port = relay.http_port().await;
    s.sql("INSERT INTO a VALUES (1);").await;
    let body = wait_for("readyz to name the unroutable message", T, || async {
        let (code, body) = http_get(port, "/readyz");
        (code == 503 && body.contains("unroutable")).then_some(body)
    })
    .await;
    assert!(!body.contains("not connected to RabbitMQ"), "{body}");
    s.queue().bind("#").await;
    let got = s.queue().take_distinct(1, T).await;
    assert_eq!(got[0].body["key"]["id"], 1);
    s.finish().await;
}

/// Counts the scene's slot and publication in PostgreSQL.
async fn created(s: &Scene) -> (i64, i64) {
    let row = s
        .client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1), \
                    (SELECT count(*) FROM pg_publication WHERE pubname = $1)",
            &[&s.slot],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_or_an_unusable_state_file_stops_run_before_it_creates_anything() {
    let s = Scene::new("CREATE TABLE a (id int PRIMARY KEY);", &["public.a"]).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    s.set("http", "listen", &format!("\"{addr}\""));
    let (passed, text) = doctor(&s);
    assert!(!passed, "{text}");
    assert!(
        text.contains(&format!(
            "FAIL walrelay: http.listen {addr} cannot be bound"
        )) && text.contains("another program holds it"),
        "{text}"
    );
    let started = std::time::Instant::now();
    let log = run_fails(&s).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        log.contains(&format!("cannot listen on {addr} (http.listen)"))
            && log.contains("nothing was created"),
        "{log}"
    );
    assert_eq!(
        created(&s).await,
        (0, 0),
        "a slot or publication was created"
    );

    // The same for a position file whose directory does not exist.
    drop(taken);
    let missing = s.dir.path().join("no-such-dir/position");
    s.set(
        "service",
        "state_file",
        &format!("{:?}", missing.display().to_string()),
    );
    let (passed, text) = doctor(&s);
    assert!(!passed, "{text}");
    assert!(
        text.contains(&format!("http.listen {addr} is free"))
            && text.contains("FAIL walrelay: service.state_file"),
        "{text}"
    );
    let log = run_fails(&s).await;
    assert!(
        log.contains("service.state_file") && log.contains("does not take a new file"),
        "{log}"
    );
    assert_eq!(
        created(&s).await,
        (0, 0),
        "a slot or publication was created"
    );

    // With both fixed, walrelay creates them and streams.
    std::fs::create_dir(missing.parent().unwrap()).unwrap();
    let (passed, text) = doctor(&s);
    assert!(passed, "{text}");
    let relay = s.start_streaming().await;
    assert_eq!(created(&s).await, (1, 1));
    drop(relay);
    s.finish().await;
}

/// A request to the test broker's management API as guest (an administrator); the status code.
fn management(method: &str, path: &str, body: &str) -> u16 {
    use std::io::{Read, Write};
    let port = if amqp_url().contains(":5673/") {
        15673
    } else {
        15672
    };
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_the_rabbitmq_users_permissions_and_the_api_users_tags() {
    let s = Scene::new("CREATE TABLE a (id int PRIMARY KEY);", &["public.a"]).await;
    let user = unique("wruser");
    let mport = if amqp_url().contains(":5673/") {
        15673
    } else {
        15672
    };
    assert!(
        management(
            "PUT",
            &format!("/api/users/{user}"),
            r#"{"password":"pw","tags":""}"#
        ) < 300
    );
    let permit = |configure: &str| {
        let body = format!(
            r#"{{"configure":"{configure}","write":"^{}$","read":"^$"}}"#,
            s.exchange
        );
        assert!(management("PUT", &format!("/api/permissions/%2F/{user}"), &body) < 300);
    };
    permit("^$");
    s.set(
        "rabbitmq",
        "url",
        &format!("\"amqp://{user}:pw@{}/%2f\"", amqp_addr()),
    );
    s.set(
        "rabbitmq",
        "management_url",
        &format!("\"http://guest:guest@127.0.0.1:{mport}\""),
    );
    let (passed, text) = doctor(&s);
    assert!(!passed, "{text}");
    assert!(
        text.contains(&format!(
            "FAIL rabbitmq: user {user} lacks the configure permission on exchange \"{}\"",
            s.exchange
        )) && text.contains("give")
            && text.contains("the configure permission on it"),
        "{text}"
    );
    permit(&format!("^{}$", s.exchange));
    let (passed, text) = doctor(&s);
    assert!(passed, "{text}");
    assert!(
        text.contains(&format!(
            "ok   rabbitmq: user {user} may declare and publish to exchange \"{}\"",
            s.exchange
        )) && text.contains("walrelay may declare it (configure permission)"),
        "{text}"
    );
    // The permissions docs/operations.md gives are enough to stream.
    let relay = s.start_streaming().await;
    s.sql("INSERT INTO a VALUES (7);").await;
    let got = s.queue().take_distinct(1, T).await;
    assert_eq!(got[0].body["key"]["id"], 7);
    drop(relay);
    // The API read with walrelay's own user: without a tag it may not use the API at all,
    // with `management` it may, but the alarm check needs `monitoring`.
    s.set(
        "rabbitmq",
        "management_url",
        &format!("\"http://{user}:pw@127.0.0.1:{mport}\""),
    );
    let (_, text) = doctor(&s);
    assert!(text.contains("refused /api/whoami"), "{text}");
    management(
        "PUT",
        &format!("/api/users/{user}"),
        r#"{"password":"pw","tags":"management"}"#,
    );
    let (_, text) = doctor(&s);
    assert!(
        text.contains(&format!(
            "WARN rabbitmq: management API user {user} has the tags [management]"
        )) && text.contains("needs the monitoring tag"),
        "{text}"
    );
    management("DELETE", &format!("/api/users/{user}"), "");
    s.finish().await;
}

/// `rabbitmq.management_url` over https: RabbitMQ 4 of `scripts/rabbitmq4.sh` serves its
/// management API with TLS on 15674 (a certificate for localhost signed by the script's test
/// CA). doctor reads bindings through it with the certificate checked, and refuses it without
/// the CA (the certificate is verified, never trusted blindly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reads_the_management_api_over_https() {
    let _rabbitmq4 = common::rabbitmq4::shared().await;
    let ca = common::stream::rabbitmq4_ca();
    let rmq4 = "amqp://guest:guest@127.0.0.1:5673/%2f";
    let s = Scene::with(
        "CREATE TABLE a (id int PRIMARY KEY);",
        &["public.a"],
        common::scene::Setup {
            consumer: common::scene::Consumer::Absent,
            amqp_url: rmq4,
            ..Default::default()
        },
    )
    .await;
    let queue = TestQueue::on(rmq4, &s.exchange, Some("#"), FieldTable::new()).await;
    s.set(
        "rabbitmq",
        "management_url",
        &format!("\"https://guest:guest@localhost:15674?cacertfile={ca}\""),
    );
    let (passed, text) = doctor(&s);
    assert!(passed, "{text}");
    assert!(
        text.contains("every routing key is bound")
            && text.contains("management API user guest has the administrator tag"),
        "{text}"
    );
    // Without the CA the system roots do not know the test CA: refused, and said.
    s.set(
        "rabbitmq",
        "management_url",
        "\"https://guest:guest@localhost:15674\"",
    );
    let (_, text) = doctor(&s);
    assert!(
        text.contains("management API at https://localhost:15674")
            && !text.contains("every routing key is bound"),
        "{text}"
    );
    queue.delete().await;
    s.finish().await;
}

/// After an unroutable message the stream resumes as soon as a binding appears, not at the
/// next doubling retry (the reconnect delay here is 20 s): at once with the management API
/// telling that the binding appeared, within `UNROUTABLE_WAIT_MAX` (5 s) without it. While
/// held, `walrelay status` says why, as `/readyz` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_added_after_an_unroutable_message_is_used_within_seconds() {
    let s = Scene::new("CREATE TABLE a (id int PRIMARY KEY);", &["public.a"]).await;
    s.queue().unbind("#").await;
    s.set("service", "reconnect_min_ms", "20000");
    s.set("service", "reconnect_max_ms", "60000");
    let port = free_port();
    s.set("http", "listen", &format!("\"127.0.0.1:{port}\""));
    for (api, within) in [
        (true, Duration::from_secs(4)),
        (false, Duration::from_secs(9)),
    ] {
        if !api {
            // A management API that nobody serves: walrelay cannot see the binding appear.
            s.set(
                "rabbitmq",
                "management_url",
                &format!("\"http://guest:guest@127.0.0.1:{}\"", free_port()),
            );
        }
        let relay = s.start_streaming().await;
        let id = if api { 1 } else { 2 };
        s.sql(&format!("INSERT INTO a VALUES ({id});")).await;
        wait_for("readyz to name the unroutable message", T, || async {
            let (code, body) = http_get(port, "/readyz");
            (code == 503 && body.contains("unroutable")).then_some(())
        })
        .await;
        let out = s.command(&["status"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("HELD: not streaming") && text.contains("returned unroutable"),
            "{text}"
        );
        // Well into the 20 s delay, the operator binds a queue.
        tokio::time::sleep(Duration::from_secs(1)).await;
        s.queue().bind("#").await;
        let bound = std::time::Instant::now();
        let got = s.queue().take_distinct(1, T).await;
        assert_eq!(got[0].body["key"]["id"], id);
        assert!(
            bound.elapsed() < within,
            "api: {api}: the binding was used after {:?}",
            bound.elapsed()
        );
        wait_for("status to say streaming", T, || async {
            let out = s.command(&["status"]);
            String::from_utf8_lossy(&out.stdout)
                .contains(&format!("streaming (http://127.0.0.1:{port}/readyz)"))
                .then_some(())
        })
        .await;
        // A clean stop confirms the position: the next round sees no replay of this one.
        let mut relay = relay;
        assert!(relay.terminate(T).is_some_and(|st| st.success()));
        s.queue().unbind("#").await;
    }
    s.finish().await;
}
