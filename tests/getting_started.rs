//! Runs `docs/getting-started.md`'s "your own database" path as written, then its "to a
//! RabbitMQ stream instead" section: their shell blocks are extracted from the Markdown and
//! run in order against a throwaway cluster, the local RabbitMQ and RabbitMQ 4's stream port
//! (for the doc's 5552), until `walrelay tail` prints the events. Only three things differ from a reader's
//! machine, and they are explicit here: the cluster's port (the doc's `localhost:5432`), a
//! `sudo` that runs its command as is (the suite already runs as the cluster's owner), and the
//! blocks the doc marks `<!-- test: skip … -->` (the server restart, `cargo install`).

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::stream;
use common::*;

/// One shell block of the section and how the doc marks it.
struct Block {
    code: String,
    mark: Option<String>,
}

fn blocks(doc: &str, section: &str) -> Vec<Block> {
    let start = doc.find(section).expect("the section exists");
    let rest = &doc[start + section.len()..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    let mut out = Vec::new();
    let mut mark = None;
    let mut lines = rest[..end].lines();
    while let Some(line) = lines.next() {
        if let Some(m) = line
            .trim()
            .strip_prefix("<!-- test: ")
            .and_then(|m| m.strip_suffix("-->"))
        {
            mark = Some(m.trim().to_owned());
        } else if line.trim() == "```sh" {
            let code: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            out.push(Block {
                code: code.join("\n"),
                mark: mark.take(),
            });
        }
    }
    out
}

fn shell(code: &str, dir: &Path, env: &[(String, String)]) -> Command {
    let mut c = Command::new("bash");
    c.args(["-euo", "pipefail", "-c", code])
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("DATABASE_URL")
        .env_remove("AMQP_URL");
    c
}

fn rabbitmqadmin_delete_queue() {
    let _ = Command::new("rabbitmqadmin")
        .args(["delete", "queue", "name=orders"])
        .output();
}

/// Runs the shell blocks of `section` in order with `env`, each with `replace`'s pairs
/// substituted; returns what the last block printed and the walrelay started in the
/// background, if any.
fn run_section(
    doc: &str,
    section: &str,
    work: &Path,
    env: &[(String, String)],
    replace: &[(&str, String)],
) -> (String, Option<std::process::Child>) {
    let steps = blocks(doc, section);
    let mut relay: Option<std::process::Child> = None;
    let log = work.join(format!("walrelay-{}.log", &section[3..4]));
    let mut printed = String::new();
    for (i, step) in steps.iter().enumerate() {
        let code = replace
            .iter()
            .fold(step.code.clone(), |code, (from, to)| code.replace(from, to));
        match step.mark.as_deref() {
            Some(m) if m.starts_with("skip") => continue,
            Some("background") => {
                let child = shell(&code, work, env)
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log).unwrap())
                    .spawn()
                    .unwrap();
                relay = Some(child);
                let start = Instant::now();
                while !std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("streaming")
                {
                    assert!(
                        start.elapsed() < Duration::from_secs(60),
                        "walrelay did not stream: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Some(other) => panic!("unknown test mark {other:?}"),
            None => {
                let out = shell(&code, work, env).output().unwrap();
                assert!(
                    out.status.success(),
                    "{section}, block {i} failed:\n{code}\n--- stdout\n{}\n--- stderr\n{}\n--- walrelay log\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                if code.contains("walrelay doctor") {
                    let text = String::from_utf8_lossy(&out.stdout);
                    assert!(
                        text.lines().any(|l| l.starts_with("ok "))
                            && !text.lines().any(|l| l.starts_with("FAIL")),
                        "the doc says no doctor line says FAIL:\n{text}"
                    );
                }
                printed = String::from_utf8_lossy(&out.stdout).into_owned();
            }
        }
    }
    (printed, relay)
}

/// The two events a section's last block printed (after psql's own INSERT/UPDATE lines).
fn events(printed: &str) -> Vec<&str> {
    printed
        .lines()
        .filter(|l| l.starts_with("public."))
        .collect()
}

fn stop(relay: Option<std::process::Child>) {
    if let Some(mut r) = relay {
        let _ = Command::new("kill")
            .args(["-TERM", &r.id().to_string()])
            .status();
        let _ = r.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_own_database_path_works_as_written() {
    let _rabbitmq4 = common::rabbitmq4::shared().await;
    let doc = std::fs::read_to_string("docs/getting-started.md").unwrap();
    assert!(
        blocks(&doc, "## 3. Your own database").len() >= 7
            && blocks(&doc, "## 4. To a RabbitMQ stream instead").len() >= 3,
        "the sections' shell blocks are where the test looks for them"
    );
    let pg = PgCluster::start();
    let work = tempfile::tempdir().unwrap();
    // `sudo [-u user] cmd…` runs cmd as is: the suite is the cluster's owner (or root).
    let shim = work.path().join("bin");
    std::fs::create_dir(&shim).unwrap();
    std::fs::write(
        shim.join("sudo"),
        "#!/bin/sh\nif [ \"$1\" = -u ]; then shift 2; fi\nexec \"$@\"\n",
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(shim.join("sudo"))
        .status()
        .unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_walrelay")).parent().unwrap();
    let path = format!(
        "{}:{}:{}",
        shim.display(),
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env: Vec<(String, String)> = [
        ("PATH", path),
        ("PGHOST", "127.0.0.1".to_owned()),
        ("PGPORT", pg.port.to_string()),
        ("PGUSER", "postgres".to_owned()),
        // Any free port for /metrics: another process may hold the default.
        ("WALRELAY_HTTP_LISTEN", "127.0.0.1:0".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    rabbitmqadmin_delete_queue();
    let _ = stream::env().await.delete_stream("orders").await;
    let pg_address = ("localhost:5432", format!("127.0.0.1:{}", pg.port));
    let (printed, relay) = run_section(
        &doc,
        "## 3. Your own database",
        work.path(),
        &env,
        std::slice::from_ref(&pg_address),
    );
    let lines = events(&printed);
    assert_eq!(lines.len(), 2, "{printed}");
    assert!(lines[0].starts_with("public.orders.insert {"), "{printed}");
    assert!(lines[1].starts_with("public.orders.update {"), "{printed}");
    assert!(lines[1].contains("\"status\":\"paid\""), "{printed}");

    // Section 4, the stream sink, next to it: RabbitMQ 4's stream port for the doc's 5552.
    let (printed, stream_relay) = run_section(
        &doc,
        "## 4. To a RabbitMQ stream instead",
        work.path(),
        &env,
        &[pg_address, ("localhost:5552", "127.0.0.1:5553".to_owned())],
    );
    let lines = events(&printed);
    assert_eq!(lines.len(), 2, "{printed}");
    assert!(lines[0].starts_with("public.orders.insert {"), "{printed}");
    assert!(lines[0].contains("\"id\":2"), "{printed}");
    assert!(lines[1].contains("\"status\":\"shipped\""), "{printed}");
    stop(stream_relay);
    stop(relay);
    rabbitmqadmin_delete_queue();
    let _ = stream::env().await.delete_stream("orders").await;
}
