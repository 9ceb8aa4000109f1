//! What can be checked of the Docker artifacts without a Docker engine: the compose file parses
//! and references files that exist, walrelay's environment in it forms a valid configuration,
//! the Dockerfile builds the way the tests build and runs the way operators need (non-root,
//! exec-form entrypoint, readiness HEALTHCHECK), and the Grafana dashboard only queries metrics
//! walrelay really exports. Plus the no-Docker demo, run in its `--check` mode.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_yaml::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn compose() -> Value {
    serde_yaml::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is valid YAML")
}

#[test]
fn compose_file_parses_and_references_existing_files() {
    let c = compose();
    let services = c["services"].as_mapping().expect("services");
    for name in [
        "postgres",
        "rabbitmq",
        "walrelay",
        "loadgen",
        "consumer",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "service {name} is missing");
    }
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        assert!(
            svc.get("image").is_some() || svc.get("build").is_some(),
            "{name}: needs an image or a build"
        );
        for v in svc["volumes"].as_sequence().into_iter().flatten() {
            let src = v.as_str().unwrap().split(':').next().unwrap();
            assert!(
                src.starts_with("./"),
                "{name}: bind-mount {src} should be relative"
            );
            assert!(Path::new(src).exists(), "{name}: {src} does not exist");
        }
        for dep in svc["depends_on"]
            .as_mapping()
            .map(|m| m.keys().cloned().collect::<Vec<_>>())
            .or_else(|| svc["depends_on"].as_sequence().cloned())
            .unwrap_or_default()
        {
            assert!(
                services.contains_key(&dep),
                "{name} depends on unknown {dep:?}"
            );
        }
    }
    let build = &c["services"]["walrelay"]["build"];
    assert!(Path::new(build["dockerfile"].as_str().unwrap()).exists());
    assert_eq!(build["context"].as_str(), Some("."));
    // The standby demo (--scale) needs the port unpublished.
    assert!(c["services"]["walrelay"].get("ports").is_none());
}

#[test]
fn compose_environment_makes_a_valid_walrelay_config() {
    let c = compose();
    let env: Vec<(String, String)> = c["services"]["walrelay"]["environment"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_owned(),
                v.as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut env_with_image = env.clone();
    // Set by the Dockerfile.
    env_with_image.push(("WALRELAY_HTTP_LISTEN".into(), "0.0.0.0:9187".into()));
    let s = walrelay::config::from_str_with_env(&read("docker/walrelay.toml"), &env_with_image)
        .expect("docker/walrelay.toml + compose environment is a valid config");
    assert_eq!(s.source.conn.host, "postgres");
    assert_eq!(s.service.http_listen.unwrap().port(), 9187);
    // RabbitMQ's definitions bind the demo queue to the exchange walrelay publishes to.
    let defs: serde_json::Value =
        serde_json::from_str(&read("docker/rabbitmq/definitions.json")).unwrap();
    assert_eq!(defs["bindings"][0]["source"], s.sink.exchange.as_str());
    assert_eq!(defs["exchanges"][0]["type"], "topic");
    // Prometheus scrapes the port walrelay listens on.
    let prom: Value = serde_yaml::from_str(&read("docker/prometheus/prometheus.yml")).unwrap();
    assert_eq!(
        prom["scrape_configs"][0]["dns_sd_configs"][0]["port"].as_u64(),
        Some(9187)
    );
    // The consumer runs a real subcommand of the image.
    let cmd: Vec<String> = c["services"]["consumer"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(&cmd)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "walrelay {cmd:?} --help failed");
}

#[test]
fn dockerfile_builds_like_the_tests_and_runs_as_operators_need() {
    let df = read("docker/Dockerfile");
    assert!(
        df.contains("cargo build --release --locked --bin walrelay"),
        "the image builds with the lock file, as scripts/test.sh does"
    );
    assert!(read("scripts/test.sh").contains("--locked"));
    for line in df
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        for src in line
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .split_last()
            .unwrap()
            .1
        {
            assert!(
                Path::new(src).exists(),
                "Dockerfile copies {src}, which does not exist"
            );
            let ignored = read(".dockerignore");
            assert!(
                !ignored
                    .lines()
                    .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                    .any(|l| src
                        .trim_end_matches('/')
                        .starts_with(l.trim_end_matches('/'))),
                ".dockerignore excludes {src}, which the Dockerfile copies"
            );
        }
    }
    let entry = df.lines().find(|l| l.starts_with("ENTRYPOINT")).unwrap();
    let exec: Vec<String> =
        serde_json::from_str(entry.trim_start_matches("ENTRYPOINT").trim()).expect("exec form");
    assert_eq!(exec, ["/usr/local/bin/walrelay"]);
    let user = df.lines().rfind(|l| l.starts_with("USER ")).unwrap();
    assert!(!user.contains(" 0") && !user.contains("root"), "{user}");
    assert!(df.contains("HEALTHCHECK") && df.contains("\"ready\""));
    // The builder's toolchain is at least the crate's rust-version.
    let want = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let have = df
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .unwrap()
        .split('-')
        .next()
        .unwrap()
        .to_owned();
    let v = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap()).collect() };
    assert!(v(&have) >= v(&want), "rust:{have} < rust-version {want}");
}

#[test]
fn dashboard_queries_only_metrics_walrelay_exports() {
    // Families print only once they have a labelled child: give each one (those with known
    // label sets have them from the start).
    let m = walrelay::metrics::Metrics::for_heartbeats(true);
    m.filtered("excluded");
    m.flood_events("skip", 1);
    m.error("postgres", "transient");
    m.reconnects.get_or_create(&[("side", "postgres")]).inc();
    m.flood_transactions
        .get_or_create(&[("trigger", "marker")])
        .inc();
    m.events_published
        .get_or_create(&walrelay::metrics::OpTable {
            op: "insert",
            table: std::sync::Arc::from("other"),
        })
        .inc();
    let exported = common::exported_metric_names(&m.render());
    let dash: serde_json::Value =
        serde_json::from_str(&read("deploy/kubernetes/walrelay-dashboard.json")).unwrap();
    let mut used = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            used.extend(common::queried_metric_names(t["expr"].as_str().unwrap()));
        }
    }
    assert!(used.len() >= 10, "{used:?}");
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "dashboard queries unknown metrics {unknown:?}; exported: {exported:?}"
    );
    // And the metrics reference documents every exported metric.
    let doc = read("docs/metrics.md");
    for name in &exported {
        let base = ["_total", "_bucket", "_count", "_sum", "_info"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            doc.contains(base),
            "docs/metrics.md does not mention {base}"
        );
    }
}

#[test]
fn the_demo_script_runs_end_to_end_in_check_mode() {
    let out = Command::new("bash")
        .args(["scripts/demo.sh", "--check"])
        .env("WALRELAY_BIN", env!("CARGO_BIN_EXE_walrelay"))
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo --check failed:\n{stdout}\n{stderr}"
    );
    assert!(stderr.contains("demo check passed: 10 events"), "{stderr}");
    assert!(stdout.contains("public.orders.bulk"), "{stdout}");
}
