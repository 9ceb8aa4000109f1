//! Observability checked by the ecosystem's own tool: a live walrelay's `/metrics`, after some
//! traffic, passes `promtool check metrics`; the alert rules shipped in `deploy/prometheus/`
//! pass `promtool check rules` and query only metrics walrelay exports.

use crate::common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::scene::{Scene, Setup};
use common::*;

fn promtool() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let p = home.join(".cache/walrelay/tools/bin/promtool");
    assert!(
        p.exists(),
        "{} is missing: scripts/test.sh installs it (scripts/tools.sh)",
        p.display()
    );
    p
}

/// `promtool check metrics` on `text`: (passed, output).
fn check_metrics(text: &str) -> (bool, String) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_pass_promtool_and_the_rules_query_only_exported_metrics() {
    // A WAL limit, so the slot's WAL budget is exported (absent without one).
    let s = Scene::with(
        "CREATE TABLE t (id int PRIMARY KEY);",
        &["public.t"],
        Setup {
            conf: &["max_slot_wal_keep_size = 64MB"],
            ..Setup::default()
        },
    )
    .await;
    s.set("service", "heartbeat_interval_ms", "500");
    s.set("service", "probe_interval_ms", "500");
    let relay = s.start_streaming().await;
    s.sql("INSERT INTO t SELECT generate_series(1, 50); DELETE FROM t WHERE id <= 10;")
        .await;
    s.queue().take(60, Duration::from_secs(30)).await;
    let port = relay.http_port().await;
    // The counter moves when the broker's confirm arrives, which can be after the consumer
    // already holds the message: wait for it rather than read it once.
    let inserts = "walrelay_events_published_total{op=\"insert\",table=\"public.t\"}";
    let text = wait_for(
        "the insert counter to reach 50",
        Duration::from_secs(30),
        || async {
            let (_, text) = http_get(port, "/metrics");
            (metric(&text, inserts) >= 50.0 && text.contains("walrelay_slot_safe_wal_bytes{"))
                .then_some(text)
        },
    )
    .await;
    // A slot that keeps up has about the whole budget (safe_wal_size counts from the current
    // WAL segment, so it may pass the limit by a segment).
    let slot = format!("{{slot=\"{}\"}}", s.slot);
    let (safe, keep) = (
        metric(&text, &format!("walrelay_slot_safe_wal_bytes{slot}")),
        metric(&text, &format!("walrelay_slot_wal_keep_size_bytes{slot}")),
    );
    assert_eq!(keep, 64.0 * 1024.0 * 1024.0, "{text}");
    assert!(safe > keep / 2.0, "{safe} of {keep}");
    let (ok, out) = check_metrics(&text);
    assert!(ok, "promtool check metrics:\n{out}");
    // promtool can fail: a counter without the _total suffix is a lint error.
    let (ok, _) = check_metrics("# HELP bad A counter.\n# TYPE bad counter\nbad 1\n");
    assert!(!ok, "the check can fail");

    let rules = "deploy/prometheus/walrelay-rules.yml";
    let out = Command::new(promtool())
        .args(["check", "rules", rules])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let names = exported_metric_names(&text);
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(rules).unwrap()).unwrap();
    let mut used = BTreeSet::new();
    for group in doc["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            used.extend(queried_metric_names(rule["expr"].as_str().unwrap()));
        }
    }
    assert!(used.len() >= 6, "{used:?}");
    let unknown: Vec<_> = used.difference(&names).collect();
    assert!(
        unknown.is_empty(),
        "rules query unknown metrics {unknown:?}"
    );
    // The metrics reference shows every alert of the file.
    let doc = std::fs::read_to_string("docs/metrics.md").unwrap();
    for group in serde_yaml::from_str::<serde_yaml::Value>(&std::fs::read_to_string(rules).unwrap())
        .unwrap()["groups"]
        .as_sequence()
        .unwrap()
    {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            assert!(doc.contains(name), "docs/metrics.md does not list {name}");
        }
    }
    s.finish().await;
}
